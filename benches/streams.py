#!/usr/bin/env python3
"""Many long-lived streams through one gateway core, and 1 MiB responses.

    benches/streams.py [--levels 1000,10000] [--chunks 200] [--bulk 50]

The load an edge carries: N streamed chat completions open at once, each
an SSE chunk every 100 ms (examples/bench_upstream, --chunks of them), from
examples/stream_load — 100 streams per connection, the connections spread
over 50 source addresses in 127.0.0.0/8, the per-address caps and the
admission limit raised for the run. For each level:

1. the harness alone, upstream direct over h2c (the validation: the client
   and the upstream on CPU 1 keep up, so what the later rows add is the
   target's);
2. the floor: a TLS relay that does no HTTP work (examples/tls_relay) on
   CPU 0, HTTP/2 over TLS;
3. h3gate on CPU 0 (client-key auth, rate limits, metrics on) over HTTP/2
   and over HTTP/3.

Each row: streams that completed, failed or stalled (a gap over 1 s), the
chunk gap p50/p99 and the hold (upstream send to client arrival) p50/p99
over the steady window (every stream open), the target's CPU per relayed
chunk and share of its core, its RSS. Then --bulk sequential 1 MiB
non-streamed responses over HTTP/2 and HTTP/3 on one connection
(throughput), and the gateway's UDP sends for ten of them counted with
strace (GSO in use when one sendmsg carries many datagrams). Prints
Markdown; loopback only, bounded in time.
"""
import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import h3gate_target, log, start, stop  # noqa: E402
from instructions import wait_port  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
UP, RELAY, GW, ADMIN = 18180, 18547, 18543, 18911
BIN = os.path.join(ROOT, "target", "release")


def gateway(work):
    """compare.py's h3gate (auth, limits, metrics on), on this script's ports,
    the admission limit raised for 10,000 streams: its command, CA
    directory and key."""
    t = h3gate_target(work, BIN, port=GW, admin=ADMIN, up=UP, up_slow=UP,
                      max_concurrent=20000, max_queue=20000)
    return t["cmd"], os.path.dirname(t["ca"]), t["headers"]["authorization"].split()[-1]


def load(url, proto, n, pid, certs, key, ramp, deadline, extra=()):
    cmd = ["taskset", "-c", "1", f"{BIN}/examples/stream_load", "--url", url, "--proto", proto,
           "--streams", str(n), "--per-conn", "100", "--sources", "50", "--ramp", str(ramp),
           "--deadline", str(deadline), "--ca", f"{certs}/ca.pem"]
    if pid:
        cmd += ["--pid", str(pid)]
    if key:
        cmd += ["--key", key]
    cmd += list(extra)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=deadline + 60)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-300:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def udp_sends(pid, url, certs, key, n=10):
    """sendmsg calls and datagram-equivalents of the gateway for n 1 MiB
    HTTP/3 responses (strace -c: counts, not timings)."""
    if not shutil.which("strace"):
        return "strace not installed (apt-get install strace)"
    out = os.path.join(tempfile.mkdtemp(), "strace.txt")
    tr = subprocess.Popen(["strace", "-f", "-c", "-e", "trace=sendmsg,sendmmsg", "-o", out,
                           "-p", str(pid)], stderr=subprocess.DEVNULL)
    time.sleep(1)
    r = load(url, "h3", 0, None, certs, key, 0, 60, ["--bulk", str(n), "--model", "bench-1mb"])
    tr.send_signal(signal.SIGINT)
    tr.wait(10)
    calls = 0
    with open(out) as f:
        for line in f:
            parts = line.split()
            if parts and parts[-1] in ("sendmsg", "sendmmsg"):
                calls += int(parts[3])
    mib = r.get("bytes", 0) / (1 << 20)
    per = calls / mib if mib else 0
    return (f"{calls} sendmsg calls for {mib:.0f} MiB of HTTP/3 responses: {per:.0f} per MiB "
            f"(~{(1 << 20) / 1452:.0f} datagrams per MiB at 1452 bytes; fewer calls than "
            f"datagrams means GSO batches them)")


def row(name, r):
    if "error" in r:
        return f"| {name} | error: {r['error']} |" + " |" * 10
    return (f"| {name} | {r['ok']}/{r['streams']} | {r['failed']} | {r['stalled']} | "
            f"{r['gap_p50_ms']:.1f} | {r['gap_p99_ms']:.1f} | {r['hold_p50_ms']:.2f} | "
            f"{r['hold_p99_ms']:.2f} | {r['chunks_per_s']:.0f} | "
            f"{r['cpu_per_chunk_us']:.1f} | {100 * r['cpu_share']:.0f}% | "
            f"{r['rss_peak_mb']:.0f} MB |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="1000,10000")
    ap.add_argument("--chunks", type=int, default=200, help="chunks per stream, 100 ms apart")
    ap.add_argument("--ramp", type=float, default=8.0, help="seconds over which streams open")
    ap.add_argument("--bulk", type=int, default=50, help="sequential 1 MiB responses per protocol")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-q", "--bin", "h3gate",
                        "--example", "bench_upstream", "--example", "tls_relay",
                        "--example", "stream_load"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="h3gate-streams-")
    gw_cmd, certs, key = gateway(work)
    stream_s = args.chunks / 10
    deadline = int(args.ramp + stream_s + 30)
    procs = []
    try:
        up = start([f"{BIN}/examples/bench_upstream", f"127.0.0.1:{UP}", str(args.chunks),
                    "100"], 1)
        relay = start([f"{BIN}/examples/tls_relay", f"127.0.0.1:{RELAY}", f"127.0.0.1:{UP}",
                       f"{certs}/cert.pem", f"{certs}/key.pem"], 0)
        gw = start(gw_cmd, 0)
        procs += [up, relay, gw]
        for p in (UP, RELAY, GW):
            wait_port(p, 60)
        time.sleep(1)
        results = []
        for n in [int(x) for x in args.levels.split(",") if x]:
            for name, url, proto, pid, k in [
                ("harness alone: upstream direct, h2c",
                 f"http://127.0.0.1:{UP}/v1/chat/completions", "h2c", up.pid, None),
                ("floor: TLS relay, HTTP/2", f"https://localhost:{RELAY}/v1/chat/completions",
                 "h2", relay.pid, None),
                ("h3gate, HTTP/2", f"https://localhost:{GW}/v1/chat/completions", "h2", gw.pid,
                 key),
                ("h3gate, HTTP/3", f"https://localhost:{GW}/v1/chat/completions", "h3", gw.pid,
                 key),
            ]:
                log(f"{n} streams: {name}")
                r = load(url, proto, n, pid, certs, key if k else None, args.ramp, deadline)
                log(json.dumps(r))
                results.append((n, name, r))
                time.sleep(3)
        bulk = []
        for proto in ("h2", "h3"):
            log(f"bulk {proto}")
            r = load(f"https://localhost:{GW}/v1/chat/completions", proto, 0, None, certs, key,
                     0, 120, ["--bulk", str(args.bulk), "--model", "bench-1mb"])
            log(json.dumps(r))
            bulk.append((proto, r))
        gso = udp_sends(gw.pid, f"https://localhost:{GW}/v1/chat/completions", certs, key)
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n_{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; target on CPU 0, upstream "
          f"and harness on CPU 1; {args.chunks} chunks 100 ms apart per stream, 100 streams per "
          f"connection over 50 source addresses, opened over {args.ramp:.0f} s; gaps and holds "
          f"over the steady window (every stream open)_\n")
    print("| streams, target | completed | failed | stalled (gap > 1 s) | gap p50 ms | gap p99 ms "
          "| hold p50 ms | hold p99 ms | chunks/s | target CPU µs per chunk | target core "
          "| target peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n, name, r in results:
        print(row(f"{n:,}, {name}", r))
    print("\n| 1 MiB responses, one connection | requests | MB/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for proto, r in bulk:
        if "error" in r:
            print(f"| h3gate, {proto} | error: {r['error']} | | | |")
        else:
            print(f"| h3gate, {proto} | {r['requests']} | {r['mb_per_s']:.0f} | "
                  f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    print(f"\nUDP sends: {gso}")


if __name__ == "__main__":
    main()
