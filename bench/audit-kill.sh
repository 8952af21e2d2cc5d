#!/usr/bin/env bash
# The audit trail's SIGKILL loss bound, measured: ridegate (embedded, audit to a file)
# answers a bounded tap load from `ridegate load`, is killed with SIGKILL mid-run, and
# the taps the load tool saw answered (status OK) are compared with the lines in the
# audit file. Every answered tap should have a line but those of the last flush
# interval (5 ms). A negative figure means lines for taps decided and recorded whose
# answer the kill cut off (at most the concurrency). Usage:
# bench/audit-kill.sh [runs] [taps/s] [concurrency]; RIDEGATE_BIN picks the binary
# (default target/release/ridegate).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
rate=${2:-2000}
concurrency=${3:-4}
bin=${RIDEGATE_BIN:-target/release/ridegate}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
printf "%s\n" "run,rate,concurrency,answered,audit_lines,lost,lost_ms_at_rate"
for run in $(seq 1 "$runs"); do
  audit="$dir/audit-$run.jsonl"
  ready="$dir/ready-$run.json"
  RIDEGATE_LOG=warn "$bin" serve --listen 127.0.0.1:0 --audit "$audit" --ready-file "$ready" 2>"$dir/serve-$run.log" &
  server=$!
  for _ in $(seq 1 200); do [ -s "$ready" ] && break; sleep 0.05; done
  addr=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["addr"])' "$ready")
  "$bin" load "$addr" -r "$rate" -z 8s -c "$concurrency" -t 1s -O json -o "$dir/report-$run.json" >/dev/null 2>&1 &
  load=$!
  # Kill somewhere between 2 and 5 s into the run.
  sleep "$(python3 -c "import random; print(round(random.uniform(2, 5), 2))")"
  kill -9 "$server"
  wait "$server" 2>/dev/null || true
  wait "$load" || true
  answered=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["statusCodeDistribution"].get("OK", 0))' "$dir/report-$run.json")
  lines=$(wc -l <"$audit")
  lost=$((answered - lines))
  printf '%s\n' "$run,$rate,$concurrency,$answered,$lines,$lost,$(python3 -c "print(round(1000 * $lost / $rate, 1))")"
done
