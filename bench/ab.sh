#!/usr/bin/env bash
# Two ridegate builds against each other on card taps, alternating round by round, each
# round also measuring the baseline server: the "before and after" of a change, same run.
#
#   bench/ab.sh BEFORE_BIN AFTER_BIN          # e.g. a release binary built from an older commit
#   ROUNDS=5 SECS=8 bench/ab.sh A B
#
# Both binaries must accept `serve --config FILE --listen ADDR --ready-file FILE`; BEFORE_ARGS
# and AFTER_ARGS add flags to each (e.g. AFTER_ARGS="--admin-listen 127.0.0.1:0 --ephemeral").
# The load tool, the population and the baseline come from AFTER_BIN. Servers are pinned to
# one core, the load tool to the other. Prints a Markdown table.
set -euo pipefail
export LC_ALL=C
[ $# -eq 2 ] || { echo "usage: bench/ab.sh BEFORE_BIN AFTER_BIN" >&2; exit 2; }
A=$(realpath "$1") B=$(realpath "$2")
ROUNDS=${ROUNDS:-5} SECS=${SECS:-6} RIDERS=${RIDERS:-100000} C=${C:-64} CONNS=${CONNS:-64}
SERVER_CORE=${SERVER_CORE:-0} LOAD_CORE=${LOAD_CORE:-1}
command -v jq >/dev/null || { echo "bench/ab.sh needs jq" >&2; exit 2; }
WORK=$(mktemp -d /tmp/ridegate-ab.XXXXXX)
PIDS=()
cleanup() { for p in ${PIDS[@]+"${PIDS[@]}"}; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
median() { sort -g | awk '{a[NR]=$1} END { if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }

# start NAME ARGS...: a server pinned to the server core; sets ADDR and PID.
start() {
  local name=$1; shift
  rm -f "$WORK/$name.ready"
  taskset -c "$SERVER_CORE" "$@" --ready-file "$WORK/$name.ready" 2>"$WORK/$name.log" &
  PID=$!; PIDS+=("$PID")
  for _ in $(seq 1 1200); do
    [ -s "$WORK/$name.ready" ] && break
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/$name.log" >&2; exit 1; }
    sleep 0.05
  done
  ADDR=$(jq -r .addr "$WORK/$name.ready")
}

# run NAME ADDR PID: one timed card-tap run; prints rps and p99 (µs).
run() {
  taskset -c "$LOAD_CORE" "$B" load "$2" --population "$WORK/pop" --mix cards -z "${SECS}s" -c "$C" \
    --connections "$CONNS" --exits 0 --yellow 0 --red 0 --unlinked 0 --forged 0 -O json -o "$WORK/$1.json" 2>>"$WORK/load.log"
  jq -r '[.rps, (.latencyDistribution[] | select(.percentage==99) | .latency/1000)] | @tsv' "$WORK/$1.json"
}

"$B" load-setup --out "$WORK/pop" --riders "$RIDERS" >/dev/null
start baseline "$B" baseline --listen 127.0.0.1:0
BASE=$ADDR
# shellcheck disable=SC2086 # the extra flags are words
start before "$A" serve --config "$WORK/pop/ridegate.toml" --listen 127.0.0.1:0 ${BEFORE_ARGS:-}
BEFORE=$ADDR
# shellcheck disable=SC2086
start after "$B" serve --config "$WORK/pop/ridegate.toml" --listen 127.0.0.1:0 ${AFTER_ARGS:-}
AFTER=$ADDR
# Warm both: every link and status read once.
for addr in "$BEFORE" "$AFTER"; do
  taskset -c "$LOAD_CORE" "$B" load "$addr" --population "$WORK/pop" --mix cards -n 100000 -c 64 >/dev/null 2>>"$WORK/load.log"
done
: >"$WORK/rounds.tsv"
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then order="base before after"; else order="after before base"; fi
  declare -A got=()
  for who in $order; do
    case $who in base) addr=$BASE ;; before) addr=$BEFORE ;; after) addr=$AFTER ;; esac
    got[$who]=$(run "$who-$r" "$addr" "$who")
  done
  printf '%s\t%s\t%s\n' "${got[base]}" "${got[before]}" "${got[after]}" >>"$WORK/rounds.tsv"
done
# columns: base_rps base_p99 before_rps before_p99 after_rps after_p99
m() { cut -f"$1" "$WORK/rounds.tsv" | median; }
r() { awk -F'\t' -v a="$1" -v b="$2" '{print $a/$b}' "$WORK/rounds.tsv" | median; }
echo "| build | card taps/s (median of $ROUNDS) | p99 | vs baseline (median of per-round ratios) |"
echo "|---|---|---|---|"
printf '| baseline (empty handler) | %.0f | %.0f µs | 1 |\n' "$(m 1)" "$(m 2)"
printf '| before (%s) | %.0f | %.0f µs | %.3f |\n' "$A" "$(m 3)" "$(m 4)" "$(r 3 1)"
printf '| after (%s) | %.0f | %.0f µs | %.3f |\n' "$B" "$(m 5)" "$(m 6)" "$(r 5 1)"
printf '\nafter / before, median of per-round ratios: taps/s %.3f, p99 %.3f\n' "$(r 5 3)" "$(r 6 4)"
