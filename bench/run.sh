#!/usr/bin/env bash
# ridegate's performance suite: ridegate against the baseline server (the same gRPC
# contract and stack, answering a constant at once), alternating round by round, the
# servers pinned to one core and the load tool to the other. Writes its tables into
# BENCHMARKS.md between the "bench/run.sh" markers.
#
#   bench/run.sh                  # everything (about 15 minutes on 2 cores)
#   ROUNDS=5 SECS=10 bench/run.sh # more rounds, longer runs
#   MEMORY=0 bench/run.sh         # skip the 10M + 10M memory measurement
#   OVERLOAD=0 DRILLS=0 bench/run.sh  # skip bench/overload.sh and bench/drills.sh
#
# Needs: cargo, h2load (nghttp2-client), jq, taskset (util-linux), redis-server.
# Not part of CI: it takes long and only means something on an otherwise idle machine.
set -euo pipefail
export LC_ALL=C   # decimal points for printf, sort and awk
cd "$(dirname "$0")/.."
. bench/section.sh

ROUNDS=${ROUNDS:-3}          # alternating baseline/ridegate pairs per scenario
SECS=${SECS:-8}              # seconds per run
RIDERS=${RIDERS:-100000}     # population (each: card, 3 ride accounts, ticket)
C=${C:-64}                   # concurrency
CONNS=${CONNS:-64}           # connections (gates hold one each)
SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
MEMORY=${MEMORY:-1}
OUT=${OUT:-BENCHMARKS.md}

need() { command -v "$1" >/dev/null || { echo "bench/run.sh needs $1: $2" >&2; exit 2; }; }
need h2load "apt-get install -y nghttp2-client"
need jq "apt-get install -y jq"
need taskset "apt-get install -y util-linux"
need redis-server "apt-get install -y redis-server"

cargo build --release --quiet
B=$PWD/target/release/ridegate
WORK=$(mktemp -d /tmp/ridegate-bench.XXXXXX)
PIDS=()
cleanup() { for p in ${PIDS[@]+"${PIDS[@]}"}; do kill "$p" 2>/dev/null || true; done; }
# stop PID: kill and wait, so the next server does not share the core with a dying one.
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
trap cleanup EXIT

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# start NAME CORE ARGS... : starts a process with --ready-file; sets ADDR and PID.
start() {
  local name=$1 core=$2; shift 2
  rm -f "$WORK/$name.ready"
  taskset -c "$core" "$@" --ready-file "$WORK/$name.ready" 2>"$WORK/$name.log" &
  PID=$!
  PIDS+=("$PID")
  for _ in $(seq 1 1200); do
    [ -s "$WORK/$name.ready" ] && break
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/$name.log" >&2; exit 1; }
    sleep 0.05
  done
  ADDR=$(jq -r .addr "$WORK/$name.ready")
}

median() { sort -g | awk '{a[NR]=$1} END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }

# load NAME ADDR PID ARGS... : one timed run of `ridegate load`, JSON to $WORK/NAME.json
load() {
  local name=$1 addr=$2 pid=$3; shift 3
  taskset -c "$LOAD_CORE" "$B" load "$addr" --population "$WORK/pop" -z "${SECS}s" -c "$C" \
    --connections "$CONNS" --server-pid "$pid" -O json -o "$WORK/$name.json" "$@" 2>>"$WORK/load.log"
}

# fields of a run: rps p50_us p99_us p999_us server_cpu_us deadline_misses errors
fields() {
  jq -r '[.rps, (.latencyDistribution[] | select(.percentage==50) | .latency/1000),
          (.latencyDistribution[] | select(.percentage==99) | .latency/1000),
          (.latencyDistribution[] | select(.percentage==99.9) | .latency/1000),
          (.serverCpuPerRequestMicros // 0), (.statusCodeDistribution.DeadlineExceeded // 0),
          ((.count) - (.statusCodeDistribution.OK // 0))] | @tsv' "$1"
}

# col N FILE...: median of column N over the runs
col() { local n=$1; shift; for f in "$@"; do fields "$f"; done | cut -f"$n" | median; }
sum_col() { local n=$1; shift; for f in "$@"; do fields "$f"; done | cut -f"$n" | awk '{s+=$1} END {print s+0}'; }

# scenario NAME RIDEGATE_ADDR RIDEGATE_PID LOAD_ARGS... : alternating rounds
scenario() {
  local name=$1 addr=$2 pid=$3; shift 3
  log "scenario $name"
  for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) -eq 1 ]; then
      load "$name-base-$r" "$BASE_ADDR" "$BASE_PID" "$@"; load "$name-rg-$r" "$addr" "$pid" "$@"
    else
      load "$name-rg-$r" "$addr" "$pid" "$@"; load "$name-base-$r" "$BASE_ADDR" "$BASE_PID" "$@"
    fi
    if [ -n "${CHECKS:-}" ]; then
      # The baseline again at ridegate's request rate: the stack's cost per request when
      # it batches as little as it does at ridegate's rate (fewer calls per wake-up).
      load "$name-matched-$r" "$BASE_ADDR" "$BASE_PID" "$@" -r "$(jq '.rps | floor' "$WORK/$name-rg-$r.json")"
      # The bare signature check, on the server's core, between this round's runs.
      taskset -c "$SERVER_CORE" "$B" load --population "$WORK/pop" --mix "$CHECKS" -n 3000 --checks-only \
        >"$WORK/$name-checks-$r.json" 2>>"$WORK/load.log"
    fi
  done
}

# row NAME LABEL: a Markdown row from a scenario's runs
row() {
  local name=$1 label=$2
  local rg=("$WORK/$name"-rg-*.json) base=("$WORK/$name"-base-*.json)
  local rps p50 p99 p999 cpu brps bp99 bcpu dl err
  rps=$(col 1 "${rg[@]}"); p50=$(col 2 "${rg[@]}"); p99=$(col 3 "${rg[@]}"); p999=$(col 4 "${rg[@]}")
  cpu=$(col 5 "${rg[@]}"); dl=$(sum_col 6 "${rg[@]}"); err=$(sum_col 7 "${rg[@]}")
  brps=$(col 1 "${base[@]}"); bp99=$(col 3 "${base[@]}"); bcpu=$(col 5 "${base[@]}")
  # The per-round ratios, then their median: only same-moment ratios mean anything.
  local ratios=() p99r=()
  for r in $(seq 1 "$ROUNDS"); do
    ratios+=("$(awk -v a="$(fields "$WORK/$name-rg-$r.json" | cut -f1)" -v b="$(fields "$WORK/$name-base-$r.json" | cut -f1)" 'BEGIN{print a/b}')")
    p99r+=("$(awk -v a="$(fields "$WORK/$name-rg-$r.json" | cut -f3)" -v b="$(fields "$WORK/$name-base-$r.json" | cut -f3)" 'BEGIN{print a/b}')")
  done
  local ratio p99ratio
  ratio=$(printf '%s\n' "${ratios[@]}" | median); p99ratio=$(printf '%s\n' "${p99r[@]}" | median)
  printf '| %s | %.0f | %.0f µs | %.0f µs | %.0f µs | %.1f µs | %.0f | %.0f µs | %.1f µs | %.2f | %.2f | %s | %s |\n' \
    "$label" "$rps" "$p50" "$p99" "$p999" "$cpu" "$brps" "$bp99" "$bcpu" "$ratio" "$p99ratio" "$dl" "$err"
  eval "RATIO_$name=$ratio P99RATIO_$name=$p99ratio P99_$name=$p99 CPU_$name=$cpu BCPU_$name=$bcpu DL_$name=$dl"
}

# The bare signature check of a scenario's codes (mean over their kinds, weighted by
# codes sent), measured on the server core each round; the median over rounds.
bare_check() {
  for f in "$WORK/$1"-checks-*.json; do
    jq '(map(.codes * .micros) | add) / (map(.codes) | add)' "$f"
  done | median
}

log "population: $RIDERS riders"
"$B" load-setup --out "$WORK/pop" --riders "$RIDERS" >/dev/null
SECRET=$(cat "$WORK/pop/secret")
CLEAN=(--exits 0 --yellow 0 --red 0 --unlinked 0 --forged 0)

start baseline "$SERVER_CORE" "$B" baseline --listen 127.0.0.1:0
BASE_ADDR=$ADDR BASE_PID=$PID

# 1. The load tool against h2load, both on the baseline.
"$B" load --write-body "$WORK/body.bin"
log "load tool vs h2load on the baseline"
[ $((C % CONNS)) -eq 0 ] || { echo "C ($C) must be a multiple of CONNS ($CONNS) for h2load's -m" >&2; exit 2; }
tool() {
  taskset -c "$LOAD_CORE" "$B" load "$BASE_ADDR" --mix cards -z "${SECS}s" -c "$C" --connections "$CONNS" -O json \
    -o "$WORK/tool-$1.json" 2>>"$WORK/load.log"
}
h2() {
  taskset -c "$LOAD_CORE" h2load -D "$SECS" -c "$CONNS" -m $((C / CONNS)) -t 1 -d "$WORK/body.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' "http://$BASE_ADDR/ridegate.v1.Gate/Authorize" \
    >"$WORK/h2load-$1.txt" 2>&1
}
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then tool "$r"; h2 "$r"; else h2 "$r"; tool "$r"; fi
done
TOOL_RPS=$(for r in $(seq 1 "$ROUNDS"); do jq .rps "$WORK/tool-$r.json"; done | median)
H2_RPS=$(for r in $(seq 1 "$ROUNDS"); do awk '/finished in/ {print $4}' "$WORK/h2load-$r.txt"; done | median)
TOOL_RATIOS=$(for r in $(seq 1 "$ROUNDS"); do
  awk -v a="$(jq .rps "$WORK/tool-$r.json")" -v b="$(awk '/finished in/ {print $4}' "$WORK/h2load-$r.txt")" 'BEGIN{print a/b}'
done | median)

# 2. Embedded ridegate: cards, ride codes (each form), the mixed population.
start ridegate "$SERVER_CORE" "$B" serve --config "$WORK/pop/ridegate.toml" --listen 127.0.0.1:0 \
  --data-dir "$WORK/data-embedded" \
  --admin-listen 127.0.0.1:0
RG_ADDR=$ADDR RG_PID=$PID
# One pass over the population first, so links and statuses are warm as in service.
taskset -c "$LOAD_CORE" "$B" load "$RG_ADDR" --population "$WORK/pop" --mix cards -n 100000 -c 64 >/dev/null 2>>"$WORK/load.log"
scenario cards "$RG_ADDR" "$RG_PID" --mix cards "${CLEAN[@]}"
CHECKS=codes scenario codes "$RG_ADDR" "$RG_PID" --mix codes "${CLEAN[@]}"
CHECKS=device-codes scenario device "$RG_ADDR" "$RG_PID" --mix device-codes "${CLEAN[@]}"
scenario mixed "$RG_ADDR" "$RG_PID"
stop "$RG_PID"

# 3. Statuses from the health platform (health-sim on the load core: it is the outside
#    world): every tap a cache miss at 5 ms, then the platform down.
sed '/^\[health\]/,/^$/d' "$WORK/pop/ridegate.toml" >"$WORK/platform.toml"
start sim "$LOAD_CORE" env RIDEGATE_IDENTITY_SECRET="$SECRET" "$B" health-sim --listen 127.0.0.1:0 \
  --riders "$RIDERS" --latency 5ms --log warn
SIM_ADDR=$ADDR SIM_PID=$PID
printf '[health]\ncache_capacity = 1000\n\n[health.platform]\nurl = "http://%s"\n' "$SIM_ADDR" >>"$WORK/platform.toml"
start ridegate-platform "$SERVER_CORE" "$B" serve --config "$WORK/platform.toml" --listen 127.0.0.1:0 \
  --data-dir "$WORK/data-platform" \
  --admin-listen 127.0.0.1:0
RG_ADDR=$ADDR RG_PID=$PID
scenario misses "$RG_ADDR" "$RG_PID" --mix cards "${CLEAN[@]}" -t 200ms
stop "$SIM_PID"
start sim-down "$LOAD_CORE" env RIDEGATE_IDENTITY_SECRET="$SECRET" "$B" health-sim --listen "$SIM_ADDR" \
  --riders 1 --down --log warn
scenario down "$RG_ADDR" "$RG_PID" --mix cards "${CLEAN[@]}" -t 200ms
stop "$RG_PID"

# 4. The shared tier: Redis on the server core.
REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 56379)
taskset -c "$SERVER_CORE" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
PIDS+=("$!")
sleep 0.5
start ridegate-redis "$SERVER_CORE" "$B" serve --config "$WORK/pop/ridegate.toml" --listen 127.0.0.1:0 \
  --admin-listen 127.0.0.1:0 --redis "redis://127.0.0.1:$REDIS_PORT"
RG_ADDR=$ADDR RG_PID=$PID
taskset -c "$LOAD_CORE" "$B" load "$RG_ADDR" --population "$WORK/pop" --mix cards -n 100000 -c 64 >/dev/null 2>>"$WORK/load.log"
scenario redis "$RG_ADDR" "$RG_PID" --mix cards "${CLEAN[@]}"
stop "$RG_PID"

# 5. Memory: 10M linked credentials and 10M statuses, embedded.
MEMORY_LINE="(skipped: MEMORY=0)"
if [ "$MEMORY" = 1 ]; then
  log "memory, 10M + 10M"
  MEMORY_LINE=$(cargo bench --quiet -p ridegate --bench memory -- embedded 10000000 2>/dev/null | grep '^embedded' || echo "(failed)")
fi

pass() { if awk "BEGIN{exit !($1)}"; then echo "met"; else echo "**missed**"; fi; }
{
  echo "<!-- bench/run.sh: begin -->"
  echo "### Server benchmarks (\`bench/run.sh\`)"
  echo
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores: servers pinned to core $SERVER_CORE, load on core $LOAD_CORE;"
  echo "$RIDERS riders; concurrency $C over $CONNS connections; $ROUNDS alternating rounds of ${SECS} s per side and"
  echo "scenario; medians over rounds. *Ratio* is the median of the per-round ridegate / baseline ratios (same moment)."
  echo "CPU is the server's user + system time per request (from /proc), loopback TCP included."
  echo
  echo "| scenario | ridegate req/s | p50 | p99 | p99.9 | CPU/req | baseline req/s | baseline p99 | baseline CPU/req | req/s ratio | p99 ratio | deadline misses | errors |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  row cards "card taps, cache hits (embedded)"
  row codes "issuer-signed ride codes"
  row device "phone-signed ride codes (offline form)"
  row mixed "mixed population (45% cards, 35% codes, 10% phone codes, 10% tickets; 10% exits, 2% yellow, 1% red, 1% unlinked, 0.5% forged)"
  row misses "cache misses, health-sim at 5 ms"
  row down "health platform down"
  row redis "card taps with Redis (shared tier)"
  echo
  BARE_CODES=$(bare_check codes); BARE_DEVICE=$(bare_check device)
  MCPU_codes=$(col 5 "$WORK"/codes-matched-*.json); MCPU_device=$(col 5 "$WORK"/device-matched-*.json)
  echo "Targets:"
  echo
  echo "- card taps: req/s ratio $RATIO_cards (target ≥ 0.80: $(pass "$RATIO_cards >= 0.8")); p99 ratio $P99RATIO_cards (target ≤ 1.5: $(pass "$P99RATIO_cards <= 1.5"))."
  code_target() { # LABEL CPU BASELINE_CPU MATCHED_CPU BARE
    printf -- "- %s: server CPU %.1f µs/req vs baseline %.1f + 1.2 × bare check %.1f = %.1f µs (%s); vs the baseline at ridegate's request rate, %.1f + 1.2 × %.1f = %.1f µs (%s).\n" \
      "$1" "$2" "$3" "$5" "$(awk "BEGIN{print $3 + 1.2 * $5}")" "$(pass "$2 <= $3 + 1.2 * $5")" \
      "$4" "$5" "$(awk "BEGIN{print $4 + 1.2 * $5}")" "$(pass "$2 <= $4 + 1.2 * $5")"
  }
  code_target "issuer-signed codes" "$CPU_codes" "$BCPU_codes" "$MCPU_codes" "$BARE_CODES"
  code_target "phone-signed codes" "$CPU_device" "$BCPU_device" "$MCPU_device" "$BARE_DEVICE"
  echo "  (bare check: the signature verification alone, measured on the server's core between rounds; the baseline"
  echo "  at ridegate's rate: the same requests sent with \`-r\` at the rate ridegate reached in that round)"
  printf -- "- platform down: p99 %.0f µs vs %.0f µs with it up (%s); deadline misses %s (%s).\n" \
    "$P99_down" "$P99_misses" "$(pass "$P99_down <= $P99_misses")" "$DL_down" "$(pass "$DL_down == 0")"
  echo "- memory: $MEMORY_LINE."
  printf -- "- load tool vs h2load on the baseline: %.0f vs %.0f req/s, ratio %.2f (target ≥ 0.90: %s).\n" \
    "$TOOL_RPS" "$H2_RPS" "$TOOL_RATIOS" "$(pass "$TOOL_RATIOS >= 0.9")"
  echo
  echo "<!-- bench/run.sh: end -->"
} >"$WORK/section.md"

write_section run.sh "$WORK/section.md" "$OUT"
cat "$WORK/section.md"
log "written to $OUT (raw runs in $WORK)"

# 6. Overload (64 to 10,000 calls in flight) and the transport drills: their own
#    scripts, each writing its own section of the same file.
if [ "${OVERLOAD:-1}" = 1 ]; then OUT=$OUT ROUNDS=$ROUNDS SECS=$SECS RIDERS=$RIDERS bench/overload.sh; fi
if [ "${DRILLS:-1}" = 1 ]; then OUT=$OUT RIDERS=$RIDERS bench/drills.sh; fi
