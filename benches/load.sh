#!/usr/bin/env bash
# Load benchmark: h3gate in front of a zero-latency OpenAI-compatible
# upstream, driven by oha over HTTP/1.1, HTTP/2 and HTTP/3.
#
#   benches/load.sh [DURATION] [CONNECTIONS]        (defaults: 10s, 64)
#   VARIANTS="full noprotect nometrics" PROTOCOLS="h1 h2 h3" RUNS=3 benches/load.sh
#
# Variants: full = client key auth + per-address and per-key rate limits
# (high enough not to trigger) + metrics; noprotect = no auth, no limits,
# metrics on; nometrics = full without metrics. Runs alternate between
# variants so drift affects them alike.
#
# Needs: oha (cargo install oha@1.16.0 --locked --features http3), taskset. Loopback only.
# The gateway is pinned to CPU 0; upstream and load generator to CPU 1.
# Prints one line per (variant, protocol): median requests/s over RUNS runs.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${1:-10s}
CONNS=${2:-64}
RUNS=${RUNS:-3}
VARIANTS=${VARIANTS:-"full noprotect nometrics"}
PROTOCOLS=${PROTOCOLS:-"h1 h2 h3"}
UP_PORT=${UP_PORT:-18080}
GW_PORT=${GW_PORT:-18443}
ADMIN_PORT=${ADMIN_PORT:-18901}

command -v oha >/dev/null || { echo "oha not found: cargo install oha@1.16.0 --locked --features http3" >&2; exit 1; }
cargo build --release --locked --bin h3gate --example bench_upstream >&2
BIN=target/release/h3gate
UPSTREAM=target/release/examples/bench_upstream

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

"$BIN" certs --out "$WORK/certs" --host localhost --host 127.0.0.1 >&2
KEY=$("$BIN" keys create --keys-file "$WORK/keys.json" --name bench --rpm 100000000 --tpm 2000000000)
taskset -c 1 "$UPSTREAM" "127.0.0.1:$UP_PORT" >&2 &
PIDS+=($!)

write_config() { # $1 = variant
  local auth=true metrics=true ip_rpm=100000000
  case $1 in
    noprotect) auth=false; ip_rpm=0 ;;
    nometrics) metrics=false ;;
  esac
  cat > "$WORK/h3gate.toml" <<TOML
[server]
listen = "127.0.0.1:$GW_PORT"
[tls]
cert = "$WORK/certs/cert.pem"
key = "$WORK/certs/key.pem"
[auth]
required = $auth
keys_file = "$WORK/keys.json"
[rate_limit]
per_ip_rpm = $ip_rpm
per_ip_burst = 1000000
[admission]
max_per_client = 0
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
metrics = $metrics
[log]
format = "json"
level = "warn"
[[providers]]
name = "up"
kind = "openai"
base_url = "http://127.0.0.1:$UP_PORT/v1"
[[routes]]
model = "*"
targets = ["up"]
TOML
}

BODY='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}],"max_tokens":16}'
secs=${DURATION%s}

run_oha() { # $1 = protocol
  local flags=()
  case $1 in
    h1) flags=(--http-version 1.1) ;;
    h2) flags=(--http2) ;;
    h3) flags=(--http-version 3) ;;
  esac
  # Count successful requests over the load window (oha's HTTP/3 mode can
  # stall after the window, which would skew its own req/s).
  taskset -c 1 timeout $((secs + 60)) oha --no-tui --output-format json -z "$DURATION" -c "$CONNS" "${flags[@]}" \
    --cacert "$WORK/certs/ca.pem" -m POST -H 'content-type: application/json' -H "authorization: Bearer $KEY" -d "$BODY" \
    "https://localhost:$GW_PORT/v1/chat/completions" 2>/dev/null |
    python3 -c "import json,sys; d=json.load(sys.stdin); ok=d.get('statusCodeDistribution',{}).get('200',0); print(round(ok/$secs))"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A RESULTS
for run in $(seq "$RUNS"); do
  for variant in $VARIANTS; do
    write_config "$variant"
    taskset -c 0 "$BIN" serve --config "$WORK/h3gate.toml" 2>>"$WORK/gateway.log" &
    GW=$!
    PIDS+=($GW)
    for _ in $(seq 50); do curl -sf "http://127.0.0.1:$ADMIN_PORT/health" >/dev/null && break; sleep 0.1; done
    for proto in $PROTOCOLS; do
      RESULTS[$variant.$proto]+="$(run_oha "$proto") "
    done
    kill -TERM $GW; wait $GW 2>/dev/null || true
  done
done
for variant in $VARIANTS; do
  for proto in $PROTOCOLS; do
    r=${RESULTS[$variant.$proto]}
    echo "$variant $proto $(echo $r | tr ' ' '\n' | median) req/s (runs: $r)"
  done
done
