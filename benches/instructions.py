#!/usr/bin/env python3
"""CPU instructions per request through h3gate, per protocol, counted by
callgrind (deterministic: other load on the machine does not change them).

    benches/instructions.py                  # build, count, print
    benches/instructions.py --check          # ... and compare with benches/instructions.baseline
    benches/instructions.py --update         # ... and write benches/instructions.baseline
    benches/instructions.py --repo /tmp/wt-before --check   # count another checkout
    benches/instructions.py > counts.txt; benches/instructions.py --compare counts.txt   # later, again

Only the gateway runs under `valgrind --tool=callgrind` (built with
`--profile callgrind`, single-threaded runtime: TOKIO_WORKER_THREADS=1); the
upstream (examples/bench_upstream.rs) and the clients (curl for HTTP/1.1 and
HTTP/2, aioquic for HTTP/3) run natively. Start-up is not counted
(`--instr-atstart=no`, instrumentation switched on once the gateway is ready).
The configuration is the benchmarks' "auth + limits + metrics" one
(benches/load.sh, variant full).

Per protocol and request kind (a non-streamed chat completion; a streamed
one of 20 chunks 5 ms apart), after one warm-up connection: a connection of
W+N requests (counted: B), then one of W requests (counted: A), each one
keep-alive connection, each counted over a window of the same length (a
multiple of the gateway's 5 s timer period). Instructions per request =
(B - A) / N: the handshake, the close and the timers cancel.

Exit status: 0 fine; 1 a count grew by more than --tolerance percent
(--check); 2 not comparable (toolchain or Cargo.lock differ from the
baseline's) or a usage error; 3 the measurement itself failed.
"""
import argparse
import asyncio
import glob
import hashlib
import json
import math
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

SELF = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BASELINE = os.path.join(SELF, "benches", "instructions.baseline")
PROTOCOLS = ("h1", "h2", "h3")
KINDS = ("chat", "stream")
STREAM_CHUNKS = 20
# Upstream chunks this far apart, so that the gateway (slowed down ~50x by
# callgrind) handles each one on its own rather than whatever happened to
# arrive together: that is what a model's token stream looks like, and it
# keeps the count from depending on timing.
STREAM_INTERVAL_MS = 5
MODEL = "gpt-4o-mini"
BODIES = {
    "chat": json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Say hello"}],
                        "max_tokens": 16}, separators=(",", ":")),
    "stream": json.dumps({"model": MODEL, "stream": True,
                          "messages": [{"role": "user", "content": "Say hello"}],
                          "max_tokens": 16}, separators=(",", ":")),
}
# Everything that runs under valgrind gets the same environment, whatever the caller's.
GATEWAY_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "TOKIO_WORKER_THREADS": "1",
               "LANG": "C", "LC_ALL": "C"}


def ensure_aioquic():
    """Re-runs under the test suite's venv (which has aioquic) when needed."""
    try:
        import aioquic  # noqa: F401
        return
    except ImportError:
        pass
    venv = os.path.join(SELF, "target", "sdk-venv")
    venv_py = os.path.join(venv, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(venv) or os.environ.get("H3GATE_INSTR_REEXEC"):
        sys.exit("aioquic is missing from target/sdk-venv: "
                 f"{venv_py} -m pip install -r tests/sdk/requirements.txt")
    if not os.path.exists(venv_py):
        log("creating target/sdk-venv (tests/sdk/requirements.txt)")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([venv_py, "-m", "pip", "install", "-q", "-r",
                        os.path.join(SELF, "tests", "sdk", "requirements.txt")], check=True)
    os.environ["H3GATE_INSTR_REEXEC"] = "1"
    os.execv(venv_py, [venv_py, os.path.abspath(__file__)] + sys.argv[1:])


def log(msg):
    print(f"[instructions] {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout.strip()


# ---------------------------------------------------------------- build + identity

def callgrind_profile():
    """[profile.callgrind] of this script's own Cargo.toml, as `cargo --config`
    arguments: the same profile for a checkout whose Cargo.toml predates it."""
    import tomllib
    with open(os.path.join(SELF, "Cargo.toml"), "rb") as f:
        prof = tomllib.load(f).get("profile", {}).get("callgrind")
    if not prof:
        sys.exit(f"no [profile.callgrind] in {SELF}/Cargo.toml")
    args = []
    for k, v in sorted(prof.items()):
        args += ["--config", f"profile.callgrind.{k}={json.dumps(v)}"]
    return prof, args


def build(repo, target_dir):
    prof, cfg = callgrind_profile()
    cmd = ["cargo", "build", "--locked", "--profile", "callgrind", *cfg,
           "--bin", "h3gate", "--example", "bench_upstream"]
    env = dict(os.environ, CARGO_TARGET_DIR=target_dir)
    log(f"building in {repo} ({' '.join(f'{k}={v}' for k, v in sorted(prof.items()))}) -> {target_dir}/callgrind")
    t0 = time.time()
    r = subprocess.run(cmd, cwd=repo, env=env)
    if r.returncode != 0:
        sys.exit(3)
    log(f"build done in {time.time() - t0:.0f}s")
    return prof


def identity(repo, prof):
    rustc = run(["rustc", "-V"], cwd=repo)  # honours the checkout's rust-toolchain file, if any
    with open(os.path.join(repo, "Cargo.lock"), "rb") as f:
        lock = hashlib.sha256(f.read()).hexdigest()
    try:
        commit = run(["git", "rev-parse", "HEAD"], cwd=repo)
        dirty = run(["git", "status", "--porcelain", "--untracked-files=no", "--", "src", "Cargo.toml",
                     "Cargo.lock", "vendor", "examples/bench_upstream.rs"], cwd=repo)
        if dirty:
            commit += "+modified"
    except (subprocess.CalledProcessError, FileNotFoundError):
        commit = "unknown"
    # What is compiled into the gateway: its normal and build dependencies with
    # versions, sources and features (a dev-dependency added to Cargo.lock does
    # not change the binary, so it does not make two counts incomparable).
    tree = run(["cargo", "tree", "--locked", "-e", "normal,build", "--prefix", "none",
                "--format", "{p} {f}", "-p", "h3gate"], cwd=repo)
    tree = sorted({re.sub(r" \(/[^)]*\)", "", line) for line in tree.splitlines() if line.strip()})
    deps = hashlib.sha256("\n".join(tree).encode()).hexdigest()
    return {
        "rustc": rustc,
        "gateway_deps_sha256": deps,
        "cargo_lock_sha256": lock,
        "commit": commit,
        "profile": "callgrind: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(prof.items())),
        "valgrind": run(["valgrind", "--version"]),
    }


# ---------------------------------------------------------------- processes

def free_port():
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(100):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()
            t.close()
    raise RuntimeError("no free port")


def wait_port(port, timeout, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


CONFIG = """[server]
listen = "127.0.0.1:{gw}"
[tls]
cert = "{w}/certs/cert.pem"
key = "{w}/certs/key.pem"
[auth]
required = true
keys_file = "{w}/keys.json"
[rate_limit]
per_ip_rpm = 100000000
per_ip_burst = 1000000
[admission]
max_per_client = 0
[admin]
listen = "127.0.0.1:{admin}"
metrics = true
[log]
format = "json"
level = "warn"
[[providers]]
name = "up"
kind = "openai"
base_url = "http://127.0.0.1:{up}/v1"
[[routes]]
model = "*"
targets = ["up"]
"""


class Callgrind:
    """The gateway under callgrind, driven with callgrind_control."""

    def __init__(self, binary, config, work):
        self.work = work
        self.out = os.path.join(work, "callgrind.out")
        self.log = open(os.path.join(work, "gateway.log"), "w")
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={self.out}",
               "--vgdb=yes", "--trace-children=no", binary, "serve", "--config", config]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=GATEWAY_ENV,
                                     cwd=work)
        self.dumps = 0

    def control(self, *args):
        r = subprocess.run(["callgrind_control", *args, str(self.proc.pid)], text=True, capture_output=True,
                           timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"callgrind_control {' '.join(args)}: {r.stdout}{r.stderr}")
        return r.stdout

    def instrument(self):
        self.control("-i", "on")

    def zero(self):
        self.control("-z")

    def dump(self):
        """Dumps (and zeroes) the counters; returns the instructions since the last zero."""
        self.control("-d")
        self.dumps += 1
        # callgrind names the dumps <out>.<n>; wait for this one to be complete.
        path = f"{self.out}.{self.dumps}"
        for _ in range(600):
            if os.path.exists(path):
                with open(path) as f:
                    text = f.read()
                m = re.search(r"^totals:\s+(\d+)", text, re.M) or re.search(r"^summary:\s+(\d+)", text, re.M)
                if m:
                    return int(m.group(1))
            time.sleep(0.05)
        raise RuntimeError(f"no complete dump {path}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------- clients

class Clients:
    def __init__(self, port, ca, key):
        self.port, self.ca, self.key = port, ca, key
        self.url = f"https://localhost:{port}/v1/chat/completions"

    def connection(self, proto, kind, n):
        """n requests of `kind` on one connection; raises unless every one succeeded."""
        if proto == "h3":
            statuses, bodies = asyncio.run(self._h3(kind, n))
        else:
            statuses, bodies = self._curl(proto, kind, n)
        bad = [s for s in statuses if s != 200]
        if len(statuses) != n or bad:
            raise RuntimeError(f"{proto} {kind}: {len(statuses)} answers of {n}, not 200: {bad[:5]}")
        for b in bodies:
            ok = (b.count(b"data: ") == STREAM_CHUNKS + 1 and b.rstrip().endswith(b"data: [DONE]")) \
                if kind == "stream" else b.startswith(b"{") and b"chat.completion" in b
            if not ok:
                raise RuntimeError(f"{proto} {kind}: unexpected body {b[:200]!r}")

    def _curl(self, proto, kind, n):
        # One curl, n URLs: one connection reused for all of them (checked: num_connects).
        fd, cfgpath = tempfile.mkstemp(suffix=".curl")
        with os.fdopen(fd, "w") as f:
            for i in range(n):
                f.write(f'url = "{self.url}"\noutput = "{cfgpath}.{i}"\n')
        flag = "--http1.1" if proto == "h1" else "--http2"
        cmd = ["curl", "-sS", flag, "--cacert", self.ca, "--connect-to", f"localhost:{self.port}:127.0.0.1:{self.port}",
               "-H", "content-type: application/json", "-H", f"authorization: Bearer {self.key}",
               "--data-binary", BODIES[kind], "-w", "%{http_code} %{num_connects} %{http_version}\\n",
               "-K", cfgpath]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        lines = r.stdout.split()
        codes = [int(x) for x in lines[0::3]]
        connects = sum(int(x) for x in lines[1::3])
        versions = set(lines[2::3])
        want = "1.1" if proto == "h1" else "2"
        bodies = []
        for i in range(n):
            p = f"{cfgpath}.{i}"
            if os.path.exists(p):
                with open(p, "rb") as f:
                    bodies.append(f.read())
                os.unlink(p)
        os.unlink(cfgpath)
        if r.returncode != 0:
            raise RuntimeError(f"curl failed ({r.returncode}): {r.stderr.strip()}")
        if connects != 1 or versions != {want}:
            raise RuntimeError(f"curl {proto}: {connects} connections, versions {versions} (want 1, {want})")
        return codes, bodies

    async def _h3(self, kind, n):
        from aioquic.asyncio.client import connect
        from aioquic.h3.connection import H3_ALPN
        from aioquic.quic.configuration import QuicConfiguration
        sys.path.insert(0, os.path.join(SELF, "tests", "sdk"))
        from h3client import Client  # the tests' aioquic client: one waiter per stream

        cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="localhost")
        cfg.load_verify_locations(self.ca)
        body = BODIES[kind].encode()
        headers = [(b":method", b"POST"), (b":scheme", b"https"),
                   (b":authority", f"localhost:{self.port}".encode()), (b":path", b"/v1/chat/completions"),
                   (b"content-type", b"application/json"),
                   (b"authorization", f"Bearer {self.key}".encode()),
                   (b"content-length", str(len(body)).encode())]
        statuses, bodies = [], []
        async with connect("127.0.0.1", self.port, configuration=cfg, create_protocol=Client) as c:
            for _ in range(n):
                sid = c._quic.get_next_available_stream_id()
                w = {"status": None, "body": b"", "done": asyncio.get_running_loop().create_future()}
                c.waiters[sid] = w
                c.h3.send_headers(sid, headers)
                c.h3.send_data(sid, body, end_stream=True)
                c.transmit()
                await asyncio.wait_for(w["done"], 60)
                del c.waiters[sid]
                statuses.append(w["status"])
                bodies.append(w["body"])
            c.close()
            await c.wait_closed()
        return statuses, bodies


# ---------------------------------------------------------------- measurement

# The gateway's periodic work: metrics upkeep every 5 s, the keys-file check
# every 0.5 s. A counted window lasts a whole number of these periods, the
# same for A and B, so both hold the same number of timer ticks and that work
# cancels in B - A (otherwise it would depend on how fast the machine was).
PERIOD = 5.0


def window(gw, connection, settle_s, length=None):
    """Counts one connection: zero, run it, let the gateway finish with the
    closed connection, wait until `length` seconds (default: the next whole
    PERIOD) after the zero, dump. Returns (instructions, length)."""
    gw.zero()
    t0 = time.monotonic()
    connection()
    time.sleep(settle_s)
    elapsed = time.monotonic() - t0
    if length is None:
        length = PERIOD * math.ceil(elapsed / PERIOD)
    elif elapsed > length:
        raise RuntimeError(f"window of {length}s overran ({elapsed:.1f}s)")
    time.sleep(max(0.0, t0 + length - time.monotonic()))
    return gw.dump(), length


def measure(repo, target_dir, n, warmup, protocols, kinds, settle_s):
    binary = os.path.join(target_dir, "callgrind", "h3gate")
    upstream_bin = os.path.join(target_dir, "callgrind", "examples", "bench_upstream")
    work = tempfile.mkdtemp(prefix="h3gate-instr-")
    procs = []
    gw = None
    try:
        run([binary, "certs", "--out", f"{work}/certs", "--host", "localhost", "--host", "127.0.0.1"])
        key = run([binary, "keys", "create", "--keys-file", f"{work}/keys.json", "--name", "bench",
                   "--rpm", "100000000", "--tpm", "2000000000"]).splitlines()[-1].strip()
        up, gwp, admin = free_port(), free_port(), free_port()
        upstream = subprocess.Popen([upstream_bin, f"127.0.0.1:{up}", str(STREAM_CHUNKS), str(STREAM_INTERVAL_MS)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(upstream)
        wait_port(up, 30, upstream)
        config = os.path.join(work, "h3gate.toml")
        with open(config, "w") as f:
            f.write(CONFIG.format(w=work, gw=gwp, admin=admin, up=up))
        t0 = time.time()
        gw = Callgrind(binary, config, work)
        wait_port(gwp, 300, gw.proc)
        wait_port(admin, 300, gw.proc)
        gw.instrument()
        log(f"gateway up under callgrind in {time.time() - t0:.0f}s (pid {gw.proc.pid}); "
            f"{warmup} + {warmup} + {warmup + n} requests per protocol and kind")
        clients = Clients(gwp, f"{work}/certs/ca.pem", key)
        results = {}
        for proto in protocols:
            for kind in kinds:
                t1 = time.time()
                clients.connection(proto, kind, warmup)  # warm-up: not counted
                time.sleep(settle_s)
                b, length = window(gw, lambda: clients.connection(proto, kind, warmup + n), settle_s)
                a, _ = window(gw, lambda: clients.connection(proto, kind, warmup), settle_s, length)
                per_req = (b - a) / n
                results[f"{proto}.{kind}"] = {"request": round(per_req)}
                log(f"{proto} {kind}: {per_req:,.0f} per request; A={a:,} B={b:,} ({length:.0f}s windows; "
                    f"{time.time() - t1:.0f}s)")
        return results
    finally:
        if gw is not None:
            gw.stop()
        for p in procs:
            p.terminate()
            p.wait()
        if os.environ.get("H3GATE_INSTR_KEEP"):
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- report + baseline

def figures(results, protocols, kinds):
    """name -> instructions per request, for each protocol and kind, and each
    kind's total over the three protocols (one request on each)."""
    out = {}
    for kind in kinds:
        for proto in protocols:
            out[f"{proto}.{kind}"] = results[f"{proto}.{kind}"]["request"]
        if tuple(protocols) == PROTOCOLS:
            out[f"total.{kind}"] = sum(results[f"{p}.{kind}"]["request"] for p in protocols)
    return out


def render(meta, figs, n, warmup):
    lines = ["# h3gate: CPU instructions per request in the gateway process (callgrind Ir),",
             "# by benches/instructions.py. <protocol>.<kind>; total = h1 + h2 + h3.",
             "# chat = non-streamed chat completion, stream = 20 SSE chunks 5 ms apart."]
    for k in ("commit", "rustc", "gateway_deps_sha256", "cargo_lock_sha256", "profile", "valgrind"):
        lines.append(f"{k}: {meta[k]}")
    lines.append(f"requests: {n} (+{warmup} per connection, 1 warm-up connection of {warmup})")
    lines.append(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    width = max(len(k) for k in figs)
    for k, v in figs.items():
        lines.append(f"{k:<{width}} {v:>12}")
    return "\n".join(lines) + "\n"


def parse(text):
    meta, figs = {}, {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = re.match(r"^([a-z_0-9]+): (.*)$", line)
        if m:
            meta[m.group(1)] = m.group(2)
            continue
        k, v = line.split()
        figs[k] = int(v)
    return meta, figs


def comparable(meta, bmeta):
    """None if counts of `meta` and the baseline's can be compared, else why not."""
    for k, what in (("rustc", "the toolchain"), ("gateway_deps_sha256", "the gateway's dependencies (Cargo.lock)"),
                    ("profile", "the build profile")):
        if bmeta.get(k) != meta[k]:
            return (f"NOT COMPARABLE: {what} differs from the baseline's ({k})\n"
                    f"  baseline: {bmeta.get(k)}\n  now:      {meta[k]}\n"
                    "Recount the baseline with this toolchain and Cargo.lock: check out the commit to "
                    "compare against and run benches/instructions.py --update there (or --repo it).")
    return None


def check(meta, figs, baseline_path, tolerance):
    with open(baseline_path) as f:
        bmeta, bfigs = parse(f.read())
    why = comparable(meta, bmeta)
    if why:
        print(why)
        return 2
    if bmeta.get("cargo_lock_sha256") != meta["cargo_lock_sha256"]:
        print("note: Cargo.lock differs from the baseline's, but not in what the gateway is built from")
    print(f"\ncompared with {os.path.relpath(baseline_path)} (commit {bmeta.get('commit')}), "
          f"tolerance +{tolerance}% on per-request counts:")
    worse = []
    for k, v in figs.items():
        if k not in bfigs:
            continue
        base = bfigs[k]
        pct = (v - base) / base * 100 if base else 0.0
        flag = ""
        if pct > tolerance:
            flag = "  GREW"
            worse.append(k)
        print(f"  {k:<14} {base:>10} -> {v:>10}  {pct:+6.2f}%{flag}")
    if worse:
        print(f"FAIL: grew by more than {tolerance}%: {', '.join(worse)}")
        return 1
    print("OK")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default=SELF, help="checkout to build and count (default: this one)")
    ap.add_argument("--target-dir", help="cargo target dir (default: REPO/target)")
    ap.add_argument("-n", "--requests", type=int, default=200, help="counted requests per protocol and kind")
    ap.add_argument("--warmup", type=int, default=20, help="requests per warm-up / reference connection")
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--settle", type=float, default=1.0, help="seconds after each connection before counting")
    ap.add_argument("--baseline", default=DEFAULT_BASELINE)
    ap.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                    help="an environment variable for the gateway (repeatable), e.g. "
                         "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 to count it with tracing on")
    ap.add_argument("--tolerance", type=float, default=5.0, help="percent growth --check accepts")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already built")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="compare with the baseline")
    g.add_argument("--update", action="store_true", help="write the baseline")
    g.add_argument("--compare", metavar="FILE",
                   help="compare counts saved earlier (this script's output) with the baseline, "
                        "without building or counting: the same exit status as --check")
    args = ap.parse_args()
    if args.compare:
        with open(args.compare) as f:
            meta, figs = parse(f.read())
        missing = [k for k in ("rustc", "gateway_deps_sha256", "profile") if k not in meta]
        if missing:
            print(f"{args.compare}: not this script's output (no {', '.join(missing)})")
            return 2
        meta.setdefault("cargo_lock_sha256", "")
        return check(meta, figs, args.baseline, args.tolerance)
    for kv in args.gateway_env:
        name, sep, value = kv.partition("=")
        if not sep or not name:
            sys.exit(f"--gateway-env wants NAME=VALUE, not {kv!r}")
        GATEWAY_ENV[name] = value

    protocols = [p for p in args.protocols.split(",") if p]
    kinds = [k for k in args.kinds.split(",") if k]
    if set(protocols) - set(PROTOCOLS) or set(kinds) - set(KINDS):
        ap.error(f"protocols are {PROTOCOLS}, kinds {KINDS}")
    if args.update and (tuple(protocols) != PROTOCOLS or tuple(kinds) != KINDS):
        ap.error("--update writes every protocol and kind")
    if "h3" in protocols:
        ensure_aioquic()
    for tool in ("valgrind", "callgrind_control", "curl", "cargo"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (valgrind: apt-get install -y valgrind)")
    repo = os.path.abspath(args.repo)
    target_dir = os.path.abspath(args.target_dir or os.path.join(repo, "target"))

    prof = callgrind_profile()[0]
    if not args.no_build:
        build(repo, target_dir)
    meta = identity(repo, prof)
    if args.check:
        with open(args.baseline) as f:
            bmeta, _ = parse(f.read())
        why = comparable(meta, bmeta)
        if why:  # refuse now rather than after minutes of counting
            print(why)
            return 2
    t0 = time.time()
    try:
        results = measure(repo, target_dir, args.requests, args.warmup, protocols, kinds, args.settle)
    except (RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        print(f"measurement failed: {e}", file=sys.stderr)
        return 3
    log(f"counted in {time.time() - t0:.0f}s")
    figs = figures(results, protocols, kinds)
    text = render(meta, figs, args.requests, args.warmup)
    print(text, end="")
    if args.update:
        with open(args.baseline, "w") as f:
            f.write(text)
        log(f"wrote {args.baseline}")
    if args.check:
        return check(meta, figs, args.baseline, args.tolerance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
