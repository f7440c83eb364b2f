#!/usr/bin/env python3
"""What `[cluster]` costs: h3gate with its rate limits in memory (one node)
against the same gateway with them in Redis (shared by replicas).

    benches/cluster.py [--runs 3] [--rate 1000] [--rate-duration 10] [--duration 10]
                       [--protocols h1,h2,h3]

One gateway either way, in front of the zero-latency upstream, with client-key
auth and a key that has requests and tokens per minute and a concurrency cap
(high enough never to refuse), plus the per-address limit: each request
claims four limits. In memory that is one call to the GCRA buckets; with
`[cluster]` one call of the Lua script on Redis (Debian's redis-server on
loopback TCP, no persistence), and the lease's release and the token
correction go back in batches.

For each variant and protocol, interleaved (round 1 of each, round 2 of each,
...) so this shared machine's drift lands on both alike:
- p50/p99 at a fixed open-loop rate (oha -q with latency correction); the
  *added* latency is the Redis variant's median minus the memory variant's;
- requests/s at saturation (64 connections), median of the runs;
- the Redis round trip as the gateway times it
  (`h3gate_cluster_redis_seconds{op="rate_limit"}`, p50/p99 interpolated in
  its buckets), the script's own time on the server (INFO commandstats), and
  Redis calls per request served (one script call per request, plus the
  batched corrections).

The gateway runs on CPU 0; upstream, Redis and oha on CPU 1. Loopback only,
bounded in time. Needs oha (cargo install oha@1.16.0 --locked --features
http3), redis-server (apt-get install -y redis-server), taskset. Prints
Markdown.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (oha, start, stop, wait_ready, median)

ROOT = compare.ROOT
REDIS_PORT = 16379
BIN = os.path.join(ROOT, "target", "release")


def redis_cli(*args):
    return subprocess.run(["redis-cli", "-p", str(REDIS_PORT), *args], capture_output=True,
                          text=True, timeout=10).stdout


def write_config(work, certs, keys, cluster):
    cfg = os.path.join(work, f"h3gate-{'redis' if cluster else 'memory'}.toml")
    shared = ""
    if cluster:
        shared = f"""
[cluster]
redis_url = "redis://127.0.0.1:{REDIS_PORT}/0"
secret = "{os.urandom(32).hex()}"
"""
    with open(cfg, "w") as f:
        f.write(f"""
[server]
listen = "127.0.0.1:{compare.GW}"
[tls]
cert = "{certs}/cert.pem"
key = "{certs}/key.pem"
[auth]
required = true
keys_file = "{keys}"
[rate_limit]
per_ip_rpm = 100000000
per_ip_burst = 1000000
[admission]
max_per_client = 0
max_concurrent = 4096
[admin]
listen = "127.0.0.1:{compare.ADMIN}"
[log]
format = "json"
level = "warn"
{shared}
[[providers]]
name = "up"
kind = "openai"
base_url = "http://127.0.0.1:{compare.UP}/v1"
[[routes]]
model = "*"
targets = ["up"]
""")
    return cfg


def scrape():
    with urllib.request.urlopen(f"http://127.0.0.1:{compare.ADMIN}/metrics", timeout=5) as r:
        return r.read().decode()


def histogram(text, name, labels):
    """Cumulative buckets of one series: [(le, count)]."""
    out = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{") and labels in line:
            le = line.split('le="')[1].split('"')[0]
            out.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    return sorted(out)


def quantile(q, buckets):
    """histogram_quantile: linear within the bucket that holds q."""
    if not buckets or buckets[-1][1] == 0:
        return None
    rank, lo, below = q * buckets[-1][1], 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return lo
            return lo + (le - lo) * (rank - below) / max(n - below, 1e-9)
        lo, below = le, n
    return lo


def diff(after, before):
    return [(le, n - dict(before).get(le, 0.0)) for le, n in after]


def evalsha_stats():
    for line in redis_cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_evalsha:"):
            fields = dict(kv.split("=") for kv in line.split(":", 1)[1].split(","))
            return int(fields["calls"]), float(fields["usec"])
    return 0, 0.0


def one_round(t, proto, args, results):
    """A rate run and a saturation run of target `t` over `proto`."""
    rtt = lambda text, op: histogram(text, "h3gate_cluster_redis_seconds", f'op="{op}"')  # noqa: E731
    text = scrape()
    before, fixes0 = rtt(text, "rate_limit"), rtt(text, "rate_limit_correct")
    calls0, usec0 = evalsha_stats()
    r = compare.oha(t["url"], proto, t["headers"], t["ca"], args.rate_duration, conns=32,
                    rate=args.rate)
    calls1, usec1 = evalsha_stats()
    text = scrape()
    after, fixes1 = rtt(text, "rate_limit"), rtt(text, "rate_limit_correct")
    count = lambda b: b[-1][1] if b else 0.0  # noqa: E731
    row = results.setdefault((t["name"], proto), {"p50": [], "p99": [], "rps": [], "rtt50": [],
                                                   "rtt99": [], "script_us": [], "calls": [],
                                                   "fixes": []})
    if r:
        row["p50"].append(r["p50"])
        row["p99"].append(r["p99"])
        if t["name"] == "redis" and r["ok"]:
            d = diff(after, before)
            row["rtt50"].append((quantile(0.5, d) or 0) * 1000)
            row["rtt99"].append((quantile(0.99, d) or 0) * 1000)
            row["script_us"].append((usec1 - usec0) / max(calls1 - calls0, 1))
            row["calls"].append((count(after) - count(before)) / r["ok"])
            row["fixes"].append((count(fixes1) - count(fixes0)) / r["ok"])
    s = compare.oha(t["url"], proto, t["headers"], t["ca"], args.duration)
    if s:
        row["rps"].append(s["rps"])


def report(results, args):
    m = lambda xs: compare.median(xs) if xs else None  # noqa: E731
    f = lambda v, d=2: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    print(f"\n### `[cluster]` cost: {args.rate} req/s, {args.runs} interleaved runs\n")
    print("| protocol | p50 memory | p50 redis | **p50 added** | p99 memory | p99 redis | **p99 added** "
          "| redis round trip p50 / p99 | script on server | decisions / request "
          "| correction batches / request "
          "| saturation memory | saturation redis |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for proto in args.protocols:
        mem, red = results.get(("memory", proto), {}), results.get(("redis", proto), {})
        p50m, p50r, p99m, p99r = (m(mem.get("p50", [])), m(red.get("p50", [])),
                                  m(mem.get("p99", [])), m(red.get("p99", [])))
        added = lambda a, b: None if a is None or b is None else b - a  # noqa: E731
        print(f"| {proto} | {f(p50m)} ms | {f(p50r)} ms | {f(added(p50m, p50r))} ms | {f(p99m)} ms "
              f"| {f(p99r)} ms | {f(added(p99m, p99r))} ms "
              f"| {f(m(red.get('rtt50', [])), 3)} / {f(m(red.get('rtt99', [])), 3)} ms "
              f"| {f(m(red.get('script_us', [])), 1)} µs | {f(m(red.get('calls', [])), 3)} "
              f"| {f(m(red.get('fixes', [])), 3)} "
              f"| {f(m(mem.get('rps', [])), 0)} | {f(m(red.get('rps', [])), 0)} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--rate-duration", type=int, default=10)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--protocols", default="h1,h2,h3")
    args = ap.parse_args()
    args.protocols = args.protocols.split(",")
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "h3gate", "--example",
                    "bench_upstream"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp()
    certs, keys = os.path.join(work, "certs"), os.path.join(work, "keys.json")
    subprocess.run([f"{BIN}/h3gate", "certs", "--out", certs, "--host", "localhost", "--host",
                    "127.0.0.1"], check=True, capture_output=True)
    key = subprocess.run([f"{BIN}/h3gate", "keys", "create", "--keys-file", keys, "--name", "bench",
                          "--rpm", "100000000", "--tpm", "2000000000", "--max-concurrent", "100000"],
                         check=True, capture_output=True, text=True).stdout.strip()
    procs = [compare.start([f"{BIN}/examples/bench_upstream", f"127.0.0.1:{compare.UP}"], 1),
             compare.start(["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", "no"], 1)]
    results = {}
    try:
        time.sleep(0.5)
        for i in range(args.runs):
            for variant in ("memory", "redis"):
                cfg = write_config(work, certs, keys, variant == "redis")
                gw = compare.start([f"{BIN}/h3gate", "serve", "--config", cfg], 0)
                t = {"name": variant, "url": f"https://localhost:{compare.GW}/v1/chat/completions",
                     "ca": f"{certs}/ca.pem", "headers": {"authorization": f"Bearer {key}"}}
                try:
                    if not compare.wait_ready(t["url"], t["headers"], t["ca"]):
                        sys.exit(f"{variant}: the gateway did not answer")
                    for proto in args.protocols:
                        one_round(t, proto, args, results)
                finally:
                    compare.stop(gw)
            print(f"round {i + 1} of {args.runs} done", file=sys.stderr)
    finally:
        for p in procs:
            compare.stop(p)
    report(results, args)


if __name__ == "__main__":
    main()
