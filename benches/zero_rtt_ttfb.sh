#!/usr/bin/env bash
# Time to first byte of resumed HTTP/3 requests with and without 0-RTT,
# against HTTP/2 over TCP + TLS, with a delay on loopback: the gateway and the
# client run in a network namespace this script makes (root needed), whose
# loopback gets `tc netem delay` (each direction, so RTT = 2 × delay).
# Where the kernel has no netem (sch_netem), the client instead goes through
# a user-space relay that delays each packet/chunk the same way (benches/ttfb.py).
#
#   benches/zero_rtt_ttfb.sh [delay_ms=25] [runs=15]
set -euo pipefail
cd "$(dirname "$0")/.."
DELAY=${1:-25}
RUNS=${2:-15}
NS="h3gate-ttfb-$$"

cargo build --release --locked -q
PY=target/sdk-venv/bin/python
if [ ! -x "$PY" ]; then
  python3 -m venv target/sdk-venv
  "$PY" -m pip install -q --disable-pip-version-check -r tests/sdk/requirements.txt
fi

WORK=$(mktemp -d)
GW_PID=""
cleanup() {
  [ -n "$GW_PID" ] && kill "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$NS"
ip -n "$NS" link set lo up
MODE=netem
if ! tc -n "$NS" qdisc add dev lo root netem delay "${DELAY}ms" 2>/dev/null; then
  echo "netem is not available on this kernel (no sch_netem): using the user-space delay relay"
  MODE=relay
fi

cat >"$WORK/config.toml" <<TOML
[server]
listen = "127.0.0.1:8443"
[tls]
cert = "certs/cert.pem"
key = "certs/key.pem"
generate_dev_cert = true
dev_hosts = ["localhost"]
[quic]
zero_rtt = true
[auth]
required = false
[admin]
listen = "127.0.0.1:9901"
[log]
format = "json"
level = "error"
[[providers]]
name = "mock"
kind = "mock"
mock = { first_token_latency = "0s", completion_tokens = 1 }
[[routes]]
model = "*"
targets = ["mock"]
TOML

ip netns exec "$NS" target/release/h3gate serve --config "$WORK/config.toml" &
GW_PID=$!
for _ in $(seq 1 100); do
  [ -f "$WORK/certs/ca.pem" ] && ip netns exec "$NS" bash -c 'exec 3<>/dev/tcp/127.0.0.1/9901' 2>/dev/null && break
  sleep 0.1
done

echo "h3gate $(git describe --always --dirty 2>/dev/null || echo unknown), netem delay ${DELAY}ms each way"
ip netns exec "$NS" "$PY" benches/ttfb.py 127.0.0.1 8443 "$WORK/certs/ca.pem" "$((DELAY * 2))" "$RUNS" "$MODE"
