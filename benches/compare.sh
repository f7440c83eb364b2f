#!/usr/bin/env bash
# h3gate against Caddy, the LiteLLM proxy and Portkey's gateway on the same
# upstream and load, next to a TLS relay that does no HTTP work (the floor any
# TLS proxy pays on that core); see benches/compare.py for what is measured.
#
#   benches/compare.sh [--quick] [--peers caddy,litellm,portkey] [--soak 600]
#
# Installs what it can and skips a peer that cannot be installed, saying so:
# Caddy from Debian's packages, LiteLLM (pinned 1.74.9) into a venv and
# Portkey's gateway (pinned 1.15.2) from npm, both under target/bench-peers.
# Needs oha (cargo install oha@1.16.0 --locked --features http3), taskset, python3.
set -uo pipefail
cd "$(dirname "$0")/.."
PEERS_DIR=${PEERS_DIR:-target/bench-peers}
export PEERS_DIR
mkdir -p "$PEERS_DIR"

command -v oha >/dev/null || { echo "oha not found: cargo install oha@1.16.0 --locked --features http3" >&2; exit 1; }
if ! command -v caddy >/dev/null; then
  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq caddy >/dev/null 2>&1 \
    && systemctl disable --now caddy >/dev/null 2>&1) || echo "could not install caddy" >&2
fi
pkill -x caddy 2>/dev/null   # the package's own service, if it started one
if [ ! -x "$PEERS_DIR/litellm/bin/litellm" ]; then
  (python3 -m venv "$PEERS_DIR/litellm" && \
    "$PEERS_DIR/litellm/bin/pip" install -q 'litellm[proxy]==1.74.9') >&2 || echo "could not install LiteLLM" >&2
fi
if [ ! -f "$PEERS_DIR/portkey/node_modules/@portkey-ai/gateway/build/start-server.js" ]; then
  (mkdir -p "$PEERS_DIR/portkey" && cd "$PEERS_DIR/portkey" && \
    npm install --silent --no-audit --no-fund @portkey-ai/gateway@1.15.2) >&2 || echo "could not install Portkey" >&2
fi
PY=target/sdk-venv/bin/python
if [ ! -x "$PY" ]; then
  python3 -m venv target/sdk-venv && "$PY" -m pip install -q -r tests/sdk/requirements.txt
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$PY" benches/compare.py "$@"
