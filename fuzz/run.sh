#!/usr/bin/env bash
# Runs every cargo-fuzz target (or the ones named) for SECONDS each, one at
# a time, from the committed seeds (fuzz/seeds/TARGET) plus the local corpus
# (fuzz/corpus/TARGET, not committed), and prints executions per target.
# Exits non-zero at the first crash, leak or timeout; the input that caused
# it is in fuzz/artifacts/TARGET/.
#
#   cargo install cargo-fuzz@0.13.2 --locked
#   fuzz/run.sh 20                      # ~20 s per target (CI)
#   fuzz/run.sh 600 pipeline translate  # longer, chosen targets
#
# RUSTC_BOOTSTRAP=1 lets the stable toolchain build the sanitizer-
# instrumented targets. FUZZ_ARGS passes options to `cargo fuzz build/run`
# (e.g. `--target-dir DIR`).
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-20}"
shift || true
export RUSTC_BOOTSTRAP=1
# shellcheck disable=SC2086
read -r -a extra <<<"${FUZZ_ARGS:-}"
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

started=$(date +%s)
cargo fuzz build "${extra[@]}" >/dev/null
echo "fuzz: instrumented build $(( $(date +%s) - started )) s"

status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  dirs=("corpus/$t")
  [ -d "seeds/$t" ] && dirs+=("seeds/$t")
  flags=(-max_total_time="$secs" -timeout=25 -print_final_stats=1)
  [ -f "dicts/$t.dict" ] && flags+=(-dict="dicts/$t.dict")
  log="$(mktemp)"
  if cargo fuzz run "${extra[@]}" "$t" "${dirs[@]}" -- "${flags[@]}" >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    status=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  echo "fuzz: $t: ${execs:-?} executions in ${secs} s, corpus $(ls "corpus/$t" | wc -l) files: $result"
  if [ "$result" != ok ]; then
    grep -E "^(==[0-9]+==|thread '|panicked|SUMMARY|Test unit written|artifact_prefix)" "$log" | head -20 || true
    tail -30 "$log"
  fi
  rm -f "$log"
  [ "$status" -eq 0 ] || break
done
exit "$status"
