#!/usr/bin/env python3
"""h3gate against its peers, on the same upstream and the same load.

    benches/compare.sh [--quick] [--peers caddy,litellm,portkey] [--soak SECONDS]
                       [--stream-samples N]

(compare.sh installs the peers it can, then runs this.) For each target —
the upstream directly, h3gate (client-key auth, per-address and per-key rate
limits high enough not to trigger, metrics on), a TLS relay that does no HTTP
work at all (the floor: what any TLS proxy on this core adds), Caddy as a
plain reverse proxy, the LiteLLM proxy and Portkey's gateway — and each
protocol it speaks:

- requests/s at saturation (oha, 64 connections), median of RUNS runs;
- p50/p99/p99.9 at fixed open-loop rates (oha -q with latency correction),
  and the latency *added* over the upstream measured directly in the same
  rounds; the runs of the direct upstream, the floor, h3gate and Caddy are
  interleaved (round 1 of each, round 2 of each, ...) so drift in this shared
  machine's noise lands on all of them alike;
- CPU seconds per 1,000 requests of the target's processes (from /proc);
- RSS idle and peak;
- streaming: added time to first token and inter-chunk gap (20 chunks 10 ms
  apart, --stream-samples sequential requests), and whether the first
  chunk arrived before the upstream sent its last (no buffering);
- h3gate only: RSS with 1,000 concurrent streams, and an RSS soak.

The target runs on CPU 0; the upstream, oha and the Python clients on CPU 1
(taskset). Everything is on loopback and bounded in time. Prints Markdown.
"""
import argparse
import asyncio
import json
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PEERS = os.environ.get("PEERS_DIR", os.path.join(ROOT, "target", "bench-peers"))
UP, UP_SLOW, GW, CADDY, LITELLM, PORTKEY, RELAY, ADMIN = (18080, 18081, 18443, 18444, 18445, 18446,
                                                         18447, 18901)
GW_BEFORE, ADMIN_BEFORE = 18448, 18902
BODY = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}],"max_tokens":16}'
STREAM_BODY = ('{"model":"gpt-4o-mini","stream":true,'
               '"messages":[{"role":"user","content":"Say hello"}],"max_tokens":16}')
CHUNKS, CHUNK_MS = 20, 10
HZ = os.sysconf("SC_CLK_TCK")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --- processes ---------------------------------------------------------------

def tree(pid):
    """pid and all its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            pass
    return total / HZ


def rss_mb(pid, field="VmRSS"):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def start(cmd, cpu, env=None, cwd=None):
    return subprocess.Popen(["taskset", "-c", str(cpu)] + cmd, env=env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def stop(proc):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_ready(url, headers, ca, timeout=120):
    import urllib.request
    ctx = ssl.create_default_context(cafile=ca) if ca else None
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            req = urllib.request.Request(url, data=BODY.encode(), headers={
                "content-type": "application/json", **headers})
            with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
                if r.status == 200:
                    return True
        except Exception:
            time.sleep(0.5)
    return False


# --- load --------------------------------------------------------------------

def oha(url, proto, headers, ca, duration, conns=64, rate=None):
    cmd = ["taskset", "-c", "1", "oha", "--no-tui", "--output-format", "json",
           "-z", f"{duration}s", "-m", "POST", "-d", BODY, "-T", "application/json"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    if ca:
        cmd += ["--cacert", ca]
    if proto == "h2":
        cmd += ["--http2", "-c", "8", "-p", str(max(1, conns // 8))]
    elif proto == "h3":
        cmd += ["--http-version", "3", "-c", "8", "-p", str(max(1, conns // 8))]
    else:
        cmd += ["-c", str(conns)]
    if rate:
        cmd += ["-q", str(rate), "--latency-correction"]
    cmd.append(url)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
        r = json.loads(out)
    except (subprocess.TimeoutExpired, json.JSONDecodeError):
        return None
    ok = r.get("statusCodeDistribution", {}).get("200", 0)
    pct = r.get("latencyPercentiles", {})
    ms = lambda k: (pct.get(k) or 0) * 1000  # noqa: E731
    # Requests still in flight when the window closes are cancelled by oha
    # ("aborted due to deadline"): not failures.
    errors = {k: v for k, v in r.get("errorDistribution", {}).items() if "deadline" not in k}
    return {"ok": ok, "rps": ok / duration, "p50": ms("p50"), "p99": ms("p99"),
            "p999": ms("p99.9"), "errors": sum(errors.values())}


async def stream_once(client, url, headers):
    """TTFT and chunk gaps of one streamed request; whether the first chunk
    arrived before the upstream sent its last."""
    t0 = time.monotonic()
    first, arrivals, sent = None, [], []
    async with client.stream("POST", url, content=STREAM_BODY,
                             headers={"content-type": "application/json", **headers}) as r:
        assert r.status_code == 200, f"status {r.status_code}"
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            now = time.monotonic()
            if first is None:
                first = now - t0
                first_wall = time.time()
            arrivals.append(now)
            try:
                ts = json.loads(line[6:]).get("sent_us")
            except ValueError:
                ts = None
            if ts:
                sent.append(ts / 1e6)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    unbuffered = bool(sent) and first_wall < max(sent)
    return first, gaps, unbuffered


async def streaming(url, headers, ca, n):
    import httpx
    verify = ssl.create_default_context(cafile=ca) if ca else False
    ttft, gaps, unbuffered = [], [], 0
    async with httpx.AsyncClient(verify=verify, timeout=30) as client:
        await stream_once(client, url, headers)  # warm-up: connection setup not counted
        for _ in range(n):
            f, g, u = await stream_once(client, url, headers)
            ttft.append(f * 1000)
            gaps.extend(x * 1000 for x in g)
            unbuffered += u
    q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]  # noqa: E731
    return {"ttft_p50": q(ttft, 0.5), "ttft_p99": q(ttft, 0.99),
            "gap_p50": q(gaps, 0.5), "gap_p99": q(gaps, 0.99), "unbuffered": f"{unbuffered}/{n}"}


async def concurrent_streams(url, headers, ca, pid, n=1000):
    """n streams at once (a second upstream: 100 chunks 50 ms apart, so they
    overlap): the target's peak RSS."""
    import httpx
    verify = ssl.create_default_context(cafile=ca) if ca else False
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    peak = 0.0
    async with httpx.AsyncClient(verify=verify, timeout=60, limits=limits) as client:
        async def one():
            async with client.stream("POST", url, content=STREAM_BODY.replace(
                    '"gpt-4o-mini"', '"bench-slow"'),
                    headers={"content-type": "application/json", **headers}) as r:
                async for _ in r.aiter_bytes():
                    pass
                return r.status_code
        tasks = [asyncio.create_task(one()) for _ in range(n)]
        while not all(t.done() for t in tasks):
            peak = max(peak, rss_mb(pid))
            await asyncio.sleep(0.05)
        codes = [t.result() if not t.exception() else 0 for t in tasks]
    return peak, sum(c == 200 for c in codes)


# --- targets -----------------------------------------------------------------

def h3gate_target(work, bin_dir, exe=None, name="h3gate", port=GW, admin=ADMIN, up=UP,
                  up_slow=UP_SLOW, max_concurrent=4096, max_queue=None):
    """h3gate with auth + limits + metrics; `exe` another build of it (--before).
    benches/streams.py raises the admission limits and points it at its own
    upstream."""
    exe = exe or f"{bin_dir}/h3gate"
    certs = os.path.join(work, "certs")
    if not os.path.exists(os.path.join(certs, "ca.pem")):
        subprocess.run([f"{bin_dir}/h3gate", "certs", "--out", certs, "--host", "localhost",
                        "--host", "127.0.0.1"], check=True, capture_output=True)
    keys = os.path.join(work, f"keys-{port}.json")
    key = subprocess.run([f"{bin_dir}/h3gate", "keys", "create", "--keys-file", keys, "--name",
                          "bench", "--rpm", "100000000", "--tpm", "2000000000"],
                         check=True, capture_output=True, text=True).stdout.strip()
    queue = f"max_queue = {max_queue}" if max_queue else ""
    cfg = os.path.join(work, f"h3gate-{port}.toml")
    with open(cfg, "w") as f:
        f.write(f"""
[server]
listen = "127.0.0.1:{port}"
[tls]
cert = "{certs}/cert.pem"
key = "{certs}/key.pem"
[auth]
required = true
keys_file = "{keys}"
[rate_limit]
per_ip_rpm = 100000000
per_ip_burst = 1000000
[http]
# The 1,000-stream check opens 1,000 connections from 127.0.0.1 (the
# default cap is 256 per address); streams.py's QUIC connections come from
# 50 addresses, up to 100 from each.
max_connections_per_ip = 4096
[quic]
max_connections_per_ip = 4096
[admission]
max_per_client = 0
max_concurrent = {max_concurrent}
{queue}
[admin]
listen = "127.0.0.1:{admin}"
[log]
format = "json"
level = "warn"
[[providers]]
name = "up"
kind = "openai"
base_url = "http://127.0.0.1:{up}/v1"
[[providers]]
name = "slow"
kind = "openai"
base_url = "http://127.0.0.1:{up_slow}/v1"
[[routes]]
model = "bench-slow"
targets = ["slow"]
[[routes]]
model = "*"
targets = ["up"]
""")
    return {"name": name, "cmd": [exe, "serve", "--config", cfg],
            "url": f"https://localhost:{port}/v1/chat/completions", "ca": f"{certs}/ca.pem",
            "headers": {"authorization": f"Bearer {key}"}, "protocols": ["h1", "h2", "h3"]}


def relay_target(bin_dir, certs):
    """The floor: a TLS-terminating TCP relay that does no HTTP work
    (examples/tls_relay.rs) — what any TLS proxy on this core adds."""
    return {"name": "floor: TLS relay, no HTTP work",
            "cmd": [f"{bin_dir}/examples/tls_relay", f"127.0.0.1:{RELAY}", f"127.0.0.1:{UP}",
                    f"{certs}/cert.pem", f"{certs}/key.pem"],
            "url": f"https://localhost:{RELAY}/v1/chat/completions", "ca": f"{certs}/ca.pem",
            "headers": {}, "protocols": ["h1", "h2"]}


def caddy_target(work, certs):
    caddy = shutil.which("caddy")
    if not caddy:
        return None, "caddy not installed (apt-get install caddy)"
    cfg = os.path.join(work, "Caddyfile")
    with open(cfg, "w") as f:
        f.write(f"""{{
    admin off
    auto_https off
    servers {{
        protocols h1 h2 h3
    }}
}}
https://localhost:{CADDY} {{
    tls {certs}/cert.pem {certs}/key.pem
    reverse_proxy 127.0.0.1:{UP}
}}
""")
    env = dict(os.environ, HOME=work, XDG_DATA_HOME=work, XDG_CONFIG_HOME=work)
    return {"name": f"Caddy {caddy_version(caddy)} (reverse proxy)",
            "cmd": [caddy, "run", "--config", cfg, "--adapter", "caddyfile"], "env": env,
            "url": f"https://localhost:{CADDY}/v1/chat/completions", "ca": f"{certs}/ca.pem",
            "headers": {}, "protocols": ["h1", "h2", "h3"]}, None


def caddy_version(caddy):
    try:
        return subprocess.run([caddy, "version"], capture_output=True, text=True).stdout.split()[0]
    except (OSError, IndexError):
        return "?"


def litellm_target(work):
    exe = os.path.join(PEERS, "litellm", "bin", "litellm")
    if not os.path.exists(exe):
        return None, "LiteLLM not installed (pip install 'litellm[proxy]==1.74.9')"
    cfg = os.path.join(work, "litellm.yaml")
    with open(cfg, "w") as f:
        f.write(f"""model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:{UP}/v1
      api_key: bench-not-a-key
litellm_settings:
  drop_params: true
  telemetry: false
""")
    env = dict(os.environ, LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False",
               LITELLM_MODE="PRODUCTION")
    return {"name": "LiteLLM proxy 1.74.9", "env": env,
            "cmd": [exe, "--config", cfg, "--host", "127.0.0.1", "--port", str(LITELLM),
                    "--num_workers", "1"],
            "url": f"http://127.0.0.1:{LITELLM}/v1/chat/completions", "ca": None,
            "headers": {"authorization": "Bearer bench-not-a-key"}, "protocols": ["h1"]}, None


def portkey_target(work):
    root = os.path.join(PEERS, "portkey", "node_modules", "@portkey-ai", "gateway")
    entry = os.path.join(root, "build", "start-server.js")
    if not os.path.exists(entry):
        return None, "Portkey gateway not installed (npm install @portkey-ai/gateway)"
    version = json.load(open(os.path.join(root, "package.json"))).get("version", "?")
    return {"name": f"Portkey gateway {version}",
            "cmd": ["node", entry, f"--port={PORTKEY}", "--headless"],
            "url": f"http://127.0.0.1:{PORTKEY}/v1/chat/completions", "ca": None,
            "headers": {"authorization": "Bearer bench-not-a-key", "x-portkey-provider": "openai",
                        "x-portkey-custom-host": f"http://127.0.0.1:{UP}/v1"},
            "protocols": ["h1"]}, None


# --- the run -----------------------------------------------------------------

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def saturation(targets, args):
    """Requests/s at saturation, median of the runs. The runs are
    interleaved like the fixed-rate ones: run 1 of every target and
    protocol, then run 2, ... so that the shared machine's drift lands on
    all of them alike (one target's runs back to back had it land on one)."""
    runs = {}
    for _ in range(args.runs):
        for t in targets:
            pid = t.get("proc").pid if t.get("proc") else None
            for proto in t["protocols"]:
                c0 = cpu_seconds(pid) if pid else 0
                r = oha(t["url"], proto, t["headers"], t["ca"], args.duration)
                if r and pid:
                    r["cpu_per_1k"] = (cpu_seconds(pid) - c0) / max(r["ok"], 1) * 1000
                runs.setdefault((t["name"], proto), []).append(r)
    for t in targets:
        row = t["row"]
        for proto in t["protocols"]:
            ok = [r for r in runs[(t["name"], proto)] if r]
            row[f"{proto}.rps"] = median([r["rps"] for r in ok])
            row[f"{proto}.cpu"] = median([r.get("cpu_per_1k") for r in ok])
            each = ", ".join(str(round(r["rps"])) for r in ok)
            log(f"  {t['name']} {proto}: {row.get(f'{proto}.rps') or 0:.0f} req/s (runs: {each})")


def measure(t, args, results, saturate=True):
    """Everything but the fixed-rate latencies (see `latencies`); with
    `saturate=False`, the saturation figures were taken by `saturation`."""
    pid = t.get("proc").pid if t.get("proc") else None
    row = t["row"]
    if pid:
        row["rss_idle"] = rss_mb(pid)
    if saturate:
        saturation([t], args)
    try:
        row["stream"] = asyncio.run(streaming(t["url"], t["headers"], t["ca"], args.stream_samples))
    except Exception as e:  # a peer that cannot stream is reported, not fatal
        row["stream"] = {"failed": f"{type(e).__name__}: {e}"}
    if pid:
        row["rss_peak"] = rss_mb(pid, "VmHWM")
    results.append(row)
    return row


def latencies(targets, args, direct):
    """p50/p99/p99.9 at each fixed rate. The runs are interleaved: run 1 of
    every target and protocol, then run 2, ... so that drift in this shared
    machine's background noise lands on all of them alike; the upstream
    measured directly is part of every round, and *added* is each median
    minus the direct median of the same rounds."""
    for rate in args.rates:
        samples = {}
        for i in range(args.runs):
            for t in targets:
                for proto in t["protocols"]:
                    r = oha(t["url"], proto, t["headers"], t["ca"], args.rate_duration, conns=32,
                            rate=rate)
                    samples.setdefault((t["name"], proto), []).append(r)
            log(f"  {rate} req/s: round {i + 1} of {args.runs}")
        for t in targets:
            row = t["row"]
            for proto in t["protocols"]:
                rr = [r for r in samples[(t["name"], proto)] if r]
                for p in ("p50", "p99", "p999"):
                    row[f"{proto}.{rate}.{p}"] = median([r[p] for r in rr])
                row[f"{proto}.{rate}.errors"] = sum(r["errors"] for r in rr)
        for t in targets:
            if t is direct:
                continue
            for proto in t["protocols"]:
                for p in ("p50", "p99", "p999"):
                    v, base = t["row"].get(f"{proto}.{rate}.{p}"), direct["row"].get(f"h1.{rate}.{p}")
                    if v is not None and base is not None:
                        t["row"][f"{proto}.{rate}.{p}.added"] = v - base


def fmt(v, digits=2):
    return "–" if v is None else f"{v:.{digits}f}"


def report(results, args, skipped):
    direct = results[0]
    print(f"\n_{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; target on CPU 0, upstream + "
          f"load on CPU 1; saturation {args.duration}s x {args.runs} runs (median), fixed rates "
          f"{args.rate_duration}s x {args.runs}._\n")
    print("### Saturation (requests/s, higher is better) and CPU per 1,000 requests\n")
    print("| target | HTTP/1.1 req/s | HTTP/2 req/s | HTTP/3 req/s | CPU s/1k (h1) | RSS idle MB | RSS peak MB |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {fmt(r.get('h1.rps'), 0)} | {fmt(r.get('h2.rps'), 0)} | "
              f"{fmt(r.get('h3.rps'), 0)} | {fmt(r.get('h1.cpu'), 3)} | {fmt(r.get('rss_idle'), 1)} | "
              f"{fmt(r.get('rss_peak'), 1)} |")
    for rate in args.rates:
        print(f"\n### Latency at {rate} req/s, open loop (ms; added = minus the upstream direct)\n")
        print("| target | protocol | p50 | p99 | p99.9 | added p50 | added p99 | added p99.9 | errors |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in results:
            for proto in ("h1", "h2", "h3"):
                if f"{proto}.{rate}.p50" not in r:
                    continue
                g = lambda k: r.get(f"{proto}.{rate}.{k}")  # noqa: E731
                print(f"| {r['name']} | {proto} | {fmt(g('p50'))} | {fmt(g('p99'))} | {fmt(g('p999'))} | "
                      f"{fmt(g('p50.added'))} | {fmt(g('p99.added'))} | {fmt(g('p999.added'))} | "
                      f"{g('errors')} |")
    gw = next((r for r in results if r["name"] == "h3gate"), None)
    if gw:
        print("\n### Added p99: each target's divided by h3gate's (higher = h3gate adds less)\n")
        print("| target | " + " | ".join(f"{p} @ {rate}" for rate in args.rates for p in ("h1", "h2", "h3")) + " |")
        print("|---|" + "---|" * (3 * len(args.rates)))
        for r in results[1:]:
            if r is gw:
                continue
            cells = []
            for rate in args.rates:
                for proto in ("h1", "h2", "h3"):
                    a, b = r.get(f"{proto}.{rate}.p99.added"), gw.get(f"{proto}.{rate}.p99.added")
                    cells.append(f"{a / b:.1f}×" if a is not None and b and b > 0 else "–")
            print(f"| {r['name']} | " + " | ".join(cells) + " |")
    print(f"\n### Streaming ({CHUNKS} chunks {CHUNK_MS} ms apart, {args.stream_samples} sequential "
          "requests, HTTP/1.1; ms)\n")
    print("| target | TTFT p50 | TTFT p99 | added TTFT p99 | gap p50 | gap p99 | added gap p99 | first chunk before upstream's last |")
    print("|---|---|---|---|---|---|---|---|")
    d = direct["stream"]
    for r in results:
        s = r["stream"]
        if "failed" in s:
            print(f"| {r['name']} | streaming failed: {s['failed']} | | | | | | |")
            continue
        print(f"| {r['name']} | {fmt(s['ttft_p50'])} | {fmt(s['ttft_p99'])} | "
              f"{fmt(s['ttft_p99'] - d['ttft_p99'])} | {fmt(s['gap_p50'])} | {fmt(s['gap_p99'])} | "
              f"{fmt(s['gap_p99'] - d['gap_p99'])} | {s['unbuffered']} |")
    for s in skipped:
        print(f"\nSkipped: {s}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 run, 5 s: a smoke run")
    ap.add_argument("--peers", default="caddy,litellm,portkey")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rate-duration", type=int, default=10)
    ap.add_argument("--rates", default="100,1000,5000")
    ap.add_argument("--soak", type=int, default=0, help="h3gate RSS soak, seconds at 1,000 req/s")
    ap.add_argument("--streams", type=int, default=1000, help="concurrent streams for the RSS check")
    ap.add_argument("--before", metavar="BIN",
                    help="another h3gate binary measured beside this one (same config, same run)")
    ap.add_argument("--before-name", default="before", help="its label in the tables")
    ap.add_argument("--stream-samples", type=int, default=200,
                    help="sequential streamed requests per target (TTFT and gap percentiles)")
    args = ap.parse_args()
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    args.rates = [int(r) for r in args.rates.split(",") if r]
    if args.quick:
        args.runs, args.duration, args.rate_duration, args.stream_samples = 1, 5, 5, 30
    subprocess.run(["cargo", "build", "--release", "--locked", "-q", "--bin", "h3gate",
                    "--example", "bench_upstream", "--example", "tls_relay"], cwd=ROOT, check=True)
    bin_dir = os.path.join(ROOT, "target", "release")
    work = tempfile.mkdtemp(prefix="h3gate-compare-")
    procs, results, skipped = [], [], []
    try:
        up = start([f"{bin_dir}/examples/bench_upstream", f"127.0.0.1:{UP}", str(CHUNKS),
                    str(CHUNK_MS)], 1)
        procs.append(up)
        procs.append(start([f"{bin_dir}/examples/bench_upstream", f"127.0.0.1:{UP_SLOW}", "100",
                            "50"], 1))
        direct = {"name": "upstream, direct (no proxy)", "url": f"http://127.0.0.1:{UP}/v1/chat/completions",
                  "ca": None, "headers": {}, "protocols": ["h1"], "row": {"name": "upstream, direct (no proxy)"}}
        time.sleep(1)
        gw = h3gate_target(work, bin_dir)
        certs = os.path.join(work, "certs")
        # h3gate, the do-nothing TLS relay (the floor) and Caddy run side by
        # side (idle when not measured) so that their fixed-rate runs can be
        # interleaved; LiteLLM and Portkey (milliseconds, not fractions of
        # one) run alone afterwards.
        fast, slow = [relay_target(bin_dir, certs), gw], []
        if args.before:
            # Another build of h3gate (e.g. the commit before a change), the
            # same configuration on other ports, interleaved with the rest.
            fast.append(h3gate_target(work, bin_dir, exe=os.path.abspath(args.before),
                                      name=f"h3gate before ({args.before_name})",
                                      port=GW_BEFORE, admin=ADMIN_BEFORE))
        for peer in [p for p in args.peers.split(",") if p]:
            t, why = {"caddy": lambda: caddy_target(work, certs),
                      "litellm": lambda: litellm_target(work),
                      "portkey": lambda: portkey_target(work)}[peer]()
            if not t:
                skipped.append(why)
            else:
                (fast if peer == "caddy" else slow).append(t)
        log("measuring: upstream direct")
        measure(direct, args, results)
        running = []
        for t in fast:
            t["row"] = {"name": t["name"]}
            t["proc"] = start(t["cmd"], 0, env=t.get("env"))
            procs.append(t["proc"])
            if wait_ready(t["url"], t["headers"], t["ca"]):
                running.append(t)
            else:
                skipped.append(f"{t['name']}: did not become ready")
                stop(t["proc"])
        time.sleep(2)
        for t in running:
            t["row"]["rss_idle"] = rss_mb(t["proc"].pid)
        log("measuring: saturation, interleaved")
        saturation(running, args)
        for t in running:
            log(f"measuring: {t['name']}")
            measure(t, args, results, saturate=False)
        log("measuring: fixed rates, interleaved")
        latencies([direct] + running, args, direct)
        if gw in running:
            pid = gw["proc"].pid
            peak, ok = asyncio.run(concurrent_streams(gw["url"], gw["headers"], gw["ca"], pid,
                                                      args.streams))
            gw["row"]["streams_rss"] = (peak, ok)
            if args.soak:
                gw["row"]["soak"] = soak(gw, pid, args.soak)
        for t in running:
            stop(t["proc"])
        for t in slow:
            log(f"measuring: {t['name']}")
            t["row"] = {"name": t["name"]}
            t["proc"] = start(t["cmd"], 0, env=t.get("env"))
            procs.append(t["proc"])
            if not wait_ready(t["url"], t["headers"], t["ca"]):
                skipped.append(f"{t['name']}: did not become ready")
                stop(t["proc"])
                continue
            time.sleep(2)
            measure(t, args, results)
            latencies([t], args, direct)
            stop(t["proc"])
        report(results, args, skipped)
        gw_row = gw["row"]
        peak, ok = gw_row.get("streams_rss", (0, 0))
        print(f"\nh3gate with {args.streams} concurrent streams: peak RSS {peak:.1f} MB ({ok} of {args.streams} completed 200)")
        if "soak" in gw_row:
            s = gw_row["soak"]
            print(f"\nh3gate soak, {args.soak} s at 1,000 req/s: RSS start {s[0]:.1f} MB, "
                  f"after 1/4 {s[1]:.1f} MB, end {s[2]:.1f} MB, max {s[3]:.1f} MB")
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(work, ignore_errors=True)


def soak(t, pid, seconds):
    """RSS while oha holds 1,000 req/s for `seconds` (bounded)."""
    proc = subprocess.Popen(
        ["taskset", "-c", "1", "oha", "--no-tui", "--output-format", "json", "-z", f"{seconds}s",
         "-q", "1000", "-c", "32", "-m", "POST", "-d", BODY, "-T", "application/json", "--cacert",
         t["ca"], "-H", f"authorization: {t['headers']['authorization']}", t["url"]],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples, t0 = [], time.time()
    while proc.poll() is None and time.time() - t0 < seconds + 60:
        samples.append(rss_mb(pid))
        time.sleep(5)
    proc.kill()
    q = max(1, len(samples) // 4)
    return samples[0], samples[q], samples[-1], max(samples)


if __name__ == "__main__":
    main()
