#!/usr/bin/env bash
# Overload: goodput and deadline misses as the requests in flight grow from what
# saturates the server to 100× that — a thundering herd of gates after a partition
# heals. ridegate (embedded default, pinned to one core) with `ridegate load` on the
# other core, card taps with 10% exits, every call with a 200 ms deadline; then the same
# levels in memory (`--ephemeral`), whose rate at 64 in flight is bound by CPU alone,
# not by the durable default's commit wait. The load tool backs off as a gate should
# (ridegate_gate::Backoff: the server's grpc-retry-pushback-ms plus jitter after a
# refusal, a growing random pause after timeouts; PUSHBACK=0: it sends again at once,
# as ghz does). Then the same levels from
# h2load, a client far cheaper per call than the load tool that never waits: the
# server's goodput, refusals and CPU per refusal from its own counters.
#
#   bench/overload.sh                               # part of bench/run.sh, or alone
#   BEFORE=/path/to/older/ridegate bench/overload.sh  # and an older build, same run
#   INFLIGHT="64 600 6000" ROUNDS=5 bench/overload.sh
#   SERVER_QUOTA=0.5 bench/overload.sh              # servers get half a core (a cgroup)
#
# SERVER_QUOTA gives every server a share of its core (CFS quota, 10 ms periods), so
# the load tool has more CPU than the server it loads: a herd that can outrun the
# server, as thousands of real gates can. Without it, at 10,000 in flight the load tool
# saturates its own core and lags, and its own slowness throttles the herd.
#
# Writes its table into BENCHMARKS.md between the "bench/overload.sh" markers.
# Needs: cargo, h2load (nghttp2-client), jq, taskset, curl.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
. bench/section.sh

ROUNDS=${ROUNDS:-3}
SECS=${SECS:-8}
RIDERS=${RIDERS:-100000}
INFLIGHT=${INFLIGHT:-"64 1000 4000 10000"}
TIMEOUT=${TIMEOUT:-200ms}
MAX_CONNS=${MAX_CONNS:-200}   # connections the load spreads over (as in issue 14's table)
PUSHBACK=${PUSHBACK:-1}
PROBE_RPS=${PROBE_RPS:-200}   # taps/s of the one gate measured amid the herd
SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
BEFORE=${BEFORE:-}
SERVER_QUOTA=${SERVER_QUOTA:-}
OUT=${OUT:-BENCHMARKS.md}

[ "$SECS" -ge 4 ] || { echo "bench/overload.sh: SECS must be at least 4 (the probe gate runs SECS-2)" >&2; exit 2; }
for n in $INFLIGHT; do
  [ "$n" -le "$MAX_CONNS" ] || [ $(( n % MAX_CONNS )) -eq 0 ] ||
    { echo "bench/overload.sh: each of INFLIGHT must be at most MAX_CONNS ($MAX_CONNS) or a multiple of it (h2load's -m)" >&2; exit 2; }
done
[[ "$TIMEOUT" =~ ^[0-9]+ms$ ]] || { echo "bench/overload.sh: TIMEOUT must be in milliseconds, as 200ms" >&2; exit 2; }
[ -z "$SERVER_QUOTA" ] || [[ "$SERVER_QUOTA" =~ ^(0\.[0-9]*[1-9][0-9]*|1(\.0*)?)$ ]] ||
  { echo "bench/overload.sh: SERVER_QUOTA must be a share of a core, above 0 and at most 1, as 0.5" >&2; exit 2; }
need() { command -v "$1" >/dev/null || { echo "bench/overload.sh needs $1: $2" >&2; exit 2; }; }
need h2load "apt-get install -y nghttp2-client"
need jq "apt-get install -y jq"
need taskset "apt-get install -y util-linux"
need curl "apt-get install -y curl"

cargo build --release --quiet
B=$PWD/target/release/ridegate
WORK=$(mktemp -d /tmp/ridegate-overload.XXXXXX)
PIDS=()
CGROUP=
cleanup() {
  for p in ${PIDS[@]+"${PIDS[@]}"}; do kill "$p" 2>/dev/null || true; done
  if [ -n "$CGROUP" ]; then sleep 0.5; rmdir "$CGROUP" 2>/dev/null || true; fi
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
trap cleanup EXIT
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
median() { sort -g | awk '{a[NR]=$1} END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }

# With SERVER_QUOTA: a cgroup whose CPU quota is that share of a core, in 10 ms periods
# (cgroup v2's cpu.max, or v1's cpu controller); every server is moved into it.
if [ -n "$SERVER_QUOTA" ]; then
  quota_us=$(awk -v q="$SERVER_QUOTA" 'BEGIN { printf "%d", q * 10000 }')
  quota_set=false
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    CGROUP=/sys/fs/cgroup/ridegate-overload.$$
    mkdir "$CGROUP" 2>/dev/null && [ -f "$CGROUP/cpu.max" ] &&
      echo "$quota_us 10000" >"$CGROUP/cpu.max" && quota_set=true
  elif [ -d /sys/fs/cgroup/cpu ]; then
    CGROUP=/sys/fs/cgroup/cpu/ridegate-overload.$$
    mkdir "$CGROUP" 2>/dev/null && echo 10000 >"$CGROUP/cpu.cfs_period_us" &&
      echo "$quota_us" >"$CGROUP/cpu.cfs_quota_us" && quota_set=true
  fi
  # Never run unthrottled while the table says throttled.
  $quota_set ||
    { echo "bench/overload.sh: SERVER_QUOTA needs a writable cgroup CPU controller under /sys/fs/cgroup" >&2; exit 2; }
fi

# start NAME BINARY ARGS... : a server on the server core; sets ADDR, ADMIN and PID.
start() {
  local name=$1; shift
  rm -f "$WORK/$name.ready"
  taskset -c "$SERVER_CORE" "$@" --ready-file "$WORK/$name.ready" 2>"$WORK/$name.log" &
  PID=$!
  PIDS+=("$PID")
  [ -z "$CGROUP" ] || echo "$PID" >"$CGROUP/cgroup.procs"
  for _ in $(seq 1 1200); do
    [ -s "$WORK/$name.ready" ] && break
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/$name.log" >&2; exit 1; }
    sleep 0.05
  done
  ADDR=$(jq -r .addr "$WORK/$name.ready")
  ADMIN=$(jq -r '.admin // empty' "$WORK/$name.ready")
}

# shed ADMIN: the shed counters by kind, as "kind=n ..." (empty for a build without them)
shed() {
  [ -n "$1" ] || return 0
  curl -s "http://$1/metrics" | awk -F'[{}"= ]+' '/^ridegate_shed_calls_total\{/ { printf "%s=%s ", $3, $4 }
    /^ridegate_answers_late_total / { printf "late=%s ", $2 }'
}

# counters ADMIN: "decisions refusals late" summed from the server's metrics
counters() {
  curl -fsS "http://$1/metrics" | awk '/^ridegate_decisions_total\{/ { d += $NF } /^ridegate_shed_calls_total\{/ { s += $NF }
    /^ridegate_answers_late_total / { l = $NF } END { printf "%d %d %d\n", d, s, l }'
}

# cpu_ticks PID: the process's user + system CPU, in clock ticks
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# herd NAME N : h2load at N in flight against ridegate; the server's counters around it
herd() {
  local name=$1 n=$2
  local conns=$(( n < MAX_CONNS ? n : MAX_CONNS ))
  snapshot >"$WORK/$name.before"
  taskset -c "$LOAD_CORE" h2load -D "$SECS" -c "$conns" -m $(( n / conns )) -t 1 -d "$WORK/body.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' -H "grpc-timeout: ${TIMEOUT%ms}m" \
    "http://$RG_ADDR/ridegate.v1.Gate/Authorize" >"$WORK/$name.txt" 2>&1
  snapshot >"$WORK/$name.after"
  sleep 1
}

# snapshot: ridegate's counters, its CPU ticks and the time, on one line
snapshot() {
  local c
  c=$(counters "$RG_ADMIN") && [ -n "$c" ] || { echo "bench/overload.sh: cannot read ridegate's metrics" >&2; exit 1; }
  echo "$c $(cpu_ticks "$RG_PID") $(date +%s.%N)"
}

# herd_fields NAME: ok_per_s refused_per_s late cpu_us_per_s, over the time between the
# two snapshots (fields: decisions refusals late ticks time, before then after)
herd_fields() {
  paste -d' ' "$WORK/$1.before" "$WORK/$1.after" | awk -v hz="$(getconf CLK_TCK)" \
    '{ secs = $10 - $5; printf "%.1f %.1f %d %.1f\n", ($6 - $1) / secs, ($7 - $2) / secs, $8 - $3, ($9 - $4) * 1e6 / hz / secs }'
}

# run NAME ADDR PID ADMIN N : one timed run at N in flight
run() {
  local name=$1 addr=$2 pid=$3 admin=$4 n=$5
  local conns=$(( n < MAX_CONNS ? n : MAX_CONNS ))
  local extra=()
  [ "$PUSHBACK" = 1 ] || extra+=(--ignore-pushback)
  local before after
  before=$(shed "$admin")
  taskset -c "$LOAD_CORE" "$B" load "$addr" --population "$WORK/pop" --mix cards --exits 0.1 --yellow 0 --red 0 \
    --unlinked 0 --forged 0 -z "${SECS}s" -c "$n" --connections "$conns" -t "$TIMEOUT" --server-pid "$pid" \
    -O json -o "$WORK/$name.json" ${extra[@]+"${extra[@]}"} 2>>"$WORK/load.log" &
  local herd=$!
  PIDS+=("$herd")
  # One gate amid the herd: a process of its own, so that what it times is the server's
  # answer and not the herd tool's own backlog.
  sleep 1
  taskset -c "$LOAD_CORE" "$B" load "$addr" --population "$WORK/pop" --mix cards --exits 0.1 --yellow 0 --red 0 \
    --unlinked 0 --forged 0 -z "$((SECS - 2))s" -c 4 --connections 4 -r "$PROBE_RPS" -t "$TIMEOUT" \
    -O json -o "$WORK/$name.probe.json" ${extra[@]+"${extra[@]}"} 2>>"$WORK/load.log" || true
  wait "$herd" || true
  after=$(shed "$admin")
  echo "$before" >"$WORK/$name.shed-before"; echo "$after" >"$WORK/$name.shed-after"
  sleep 1   # let the server settle between runs
}

# fields FILE: ok_per_s p99_ms deadline_exceeded resource_exhausted other_errors slowest_ms tool_lag_max_ms
fields() {
  jq -r '(.statusCodeDistribution.OK // 0) as $ok
    | [ ($ok / (.total / 1e9)),
        ((.latencyDistribution // [] | map(select(.percentage == 99)) | .[0].latency // 0) / 1e6),
        (.statusCodeDistribution.DeadlineExceeded // 0),
        (.statusCodeDistribution.ResourceExhausted // 0),
        (.count - $ok - (.statusCodeDistribution.DeadlineExceeded // 0) - (.statusCodeDistribution.ResourceExhausted // 0)),
        ((.slowest // 0) / 1e6),
        ((.clientLag.max // 0) / 1e6) ] | @tsv' "$1"
}

# shed_delta NAME KIND: how many of KIND the server shed during run NAME
shed_delta() {
  local b a
  b=$(tr ' ' '\n' <"$WORK/$1.shed-before" | awk -F= -v k="$2" '$1 == k {print $2}')
  a=$(tr ' ' '\n' <"$WORK/$1.shed-after" | awk -F= -v k="$2" '$1 == k {print $2}')
  echo $(( ${a:-0} - ${b:-0} ))
}

log "population: $RIDERS riders"
"$B" load-setup --out "$WORK/pop" --riders "$RIDERS" >/dev/null
"$B" load --write-body "$WORK/body.bin"

start baseline "$B" baseline --listen 127.0.0.1:0
BASE_ADDR=$ADDR BASE_PID=$PID
start ridegate "$B" serve --config "$WORK/pop/ridegate.toml" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --data-dir "$WORK/data"
RG_ADDR=$ADDR RG_PID=$PID RG_ADMIN=$ADMIN
taskset -c "$LOAD_CORE" "$B" load "$RG_ADDR" --population "$WORK/pop" --mix cards -n 100000 -c 64 >/dev/null 2>>"$WORK/load.log"
# The same in memory (--ephemeral): the card rate against the empty handler as the issue
# quoted it, before durable state was the default.
start mem "$B" serve --config "$WORK/pop/ridegate.toml" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --ephemeral
MEM_ADDR=$ADDR MEM_PID=$PID MEM_ADMIN=$ADMIN
taskset -c "$LOAD_CORE" "$B" load "$MEM_ADDR" --population "$WORK/pop" --mix cards -n 100000 -c 64 >/dev/null 2>>"$WORK/load.log"
SERVERS=(rg mem)
if [ -n "$BEFORE" ]; then
  start before "$BEFORE" serve --config "$WORK/pop/ridegate.toml" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --data-dir "$WORK/data-before"
  OLD_ADDR=$ADDR OLD_PID=$PID OLD_ADMIN=$ADMIN
  taskset -c "$LOAD_CORE" "$B" load "$OLD_ADDR" --population "$WORK/pop" --mix cards -n 100000 -c 64 >/dev/null 2>>"$WORK/load.log"
  SERVERS+=(old)
fi

first=${INFLIGHT%% *}
PAIRED=$(echo ${INFLIGHT#"$first"}); PAIRED=${PAIRED:-$first}   # the levels judged against the first
BESIDE=${PAIRED%% *}   # the first-level run of each round that the whole-run figures use
for r in $(seq 1 "$ROUNDS"); do
  log "round $r"
  # The empty handler at 64 in flight with h2load: the stack's own ceiling.
  taskset -c "$LOAD_CORE" h2load -D "$SECS" -c 64 -m 1 -t 1 -d "$WORK/body.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' "http://$BASE_ADDR/ridegate.v1.Gate/Authorize" \
    >"$WORK/h2load-$r.txt" 2>&1
  run "base-$r" "$BASE_ADDR" "$BASE_PID" "" "${INFLIGHT%% *}"
  # Each level beside a run at the first level on the same server, the pair's order and
  # the servers' alternating round by round: this machine's speed drifts by minutes, so
  # a level is judged against the run next to it.
  for n in $PAIRED; do
    order=("${SERVERS[@]}"); [ $((r % 2)) -eq 0 ] && order=($(printf '%s\n' "${SERVERS[@]}" | tac))
    for s in "${order[@]}"; do
      pair=("$s-$first-$r-$n $first")
      if [ "$n" != "$first" ]; then
        if [ $((r % 2)) -eq 0 ]; then pair=("$s-$n-$r $n" "${pair[0]}"); else pair+=("$s-$n-$r $n"); fi
      fi
      for one in "${pair[@]}"; do
        read -r name level <<<"$one"
        case $s in
          rg) run "$name" "$RG_ADDR" "$RG_PID" "$RG_ADMIN" "$level" ;;
          mem) run "$name" "$MEM_ADDR" "$MEM_PID" "$MEM_ADMIN" "$level" ;;
          old) run "$name" "$OLD_ADDR" "$OLD_PID" "$OLD_ADMIN" "$level" ;;
        esac
      done
    done
  done
  for n in $INFLIGHT; do herd "herd-$n-$r" "$n"; done
done

# runs SERVER N: the runs at level N (at the first level: every run beside another level)
runs() {
  local r m
  for r in $(seq 1 "$ROUNDS"); do
    if [ "$2" = "$first" ]; then for m in $PAIRED; do echo "$1-$first-$r-$m"; done; else echo "$1-$2-$r"; fi
  done
}
# ok_per_cpu RUN: OK answers per second of the server's CPU
ok_per_cpu() { jq -r '(.statusCodeDistribution.OK // 0) / ((.serverCpuPerRequestMicros // 0) * .count / 1e6 + 1e-9)' "$WORK/$1.json"; }
table() { # SERVER LABEL
  local s=$1 label=$2
  for n in $INFLIGHT; do
    local ok ratio cpu_ratio p99 slowest lag dl late re other exits_shed entries_shed run
    ok=$(for run in $(runs "$s" "$n"); do fields "$WORK/$run.json" | cut -f1; done | median)
    ratio=1; cpu_ratio=1
    if [ "$n" != "$first" ]; then
      ratio=$(for r in $(seq 1 "$ROUNDS"); do
        awk -v a="$(fields "$WORK/$s-$n-$r.json" | cut -f1)" -v b="$(fields "$WORK/$s-$first-$r-$n.json" | cut -f1)" 'BEGIN{print (b > 0 ? a/b : 0)}'
      done | median)
      cpu_ratio=$(for r in $(seq 1 "$ROUNDS"); do
        awk -v a="$(ok_per_cpu "$s-$n-$r")" -v b="$(ok_per_cpu "$s-$first-$r-$n")" 'BEGIN{print (b > 0 ? a/b : 0)}'
      done | median)
    fi
    p99=$(for run in $(runs "$s" "$n"); do fields "$WORK/$run.json" | cut -f2; done | median)
    slowest=$(for run in $(runs "$s" "$n"); do fields "$WORK/$run.json" | cut -f6; done | sort -g | tail -1)
    lag=$(for run in $(runs "$s" "$n"); do fields "$WORK/$run.json" | cut -f7; done | sort -g | tail -1)
    dl=$(for run in $(runs "$s" "$n"); do fields "$WORK/$run.json" | cut -f3; done | awk '{s+=$1} END {print s+0}')
    re=$(for run in $(runs "$s" "$n"); do fields "$WORK/$run.json" | cut -f4; done | awk '{s+=$1} END {print s+0}')
    other=$(for run in $(runs "$s" "$n"); do fields "$WORK/$run.json" | cut -f5; done | awk '{s+=$1} END {print s+0}')
    exits_shed=0; entries_shed=0; late=0
    for run in $(runs "$s" "$n"); do
      exits_shed=$(( exits_shed + $(shed_delta "$run" exit) ))
      entries_shed=$(( entries_shed + $(shed_delta "$run" card_entry) + $(shed_delta "$run" at_capacity) ))
      late=$(( late + $(shed_delta "$run" late) ))
    done
    grep -q "late=" "$WORK/$(runs "$s" "$n" | head -1).shed-after" || late="n/a"   # a build without the counter
    printf '| %s | %s | %.0f | %.2f | %.2f | %.1f ms | %.0f ms | %s | %s | %.0f ms | %s | %s | %s / %s |\n' \
      "$label" "$n" "$ok" "$ratio" "$cpu_ratio" "$p99" "$slowest" "$dl" "$late" "$lag" "$re" "$other" "$exits_shed" "$entries_shed"
  done
}

# probe_table SERVER LABEL: what one gate amid the herd saw, summed over rounds
probe_table() {
  local s=$1 label=$2
  for n in $INFLIGHT; do
    local files=() run f
    for run in $(runs "$s" "$n"); do
      f="$WORK/$run.probe.json"
      [ -s "$f" ] && files+=("$f")
    done
    [ "${#files[@]}" -gt 0 ] || { echo "| $label | $n | (the probe gate wrote no report) |"; continue; }
    jq -rs --arg build "$label" --arg n "$n" --arg asked "$(( PROBE_RPS * (SECS - 2) * ${#files[@]} ))" '
      (map(.statusCodeDistribution.OK // 0) | add) as $ok
      | (map(.count) | add) as $count
      | (map(.statusCodeDistribution.ResourceExhausted // 0) | add) as $refused
      | (map(.statusCodeDistribution.DeadlineExceeded // 0) | add) as $missed
      | (map(.slowest // 0) | max / 1e6) as $slowest
      | (map(.clientLag.max // 0) | max / 1e6) as $lag
      | "| \($build) | \($n) | \($asked) | \($count) | \($ok) | \($refused) | \($missed) | \($count - $ok - $refused - $missed) | \($slowest | floor) ms | \($lag | floor) ms |"' \
      "${files[@]}" || echo "| $label | $n | (the probe gate's reports could not be read) |"
  done
}

# herd_table: h2load's levels, medians over rounds. A refusal's CPU: the server's CPU
# per second beyond what its decisions cost at the first level (no refusals there),
# over the refusals per second.
herd_table() {
  for n in $INFLIGHT; do
    local ok ratio refused late busy cost
    ok=$(for r in $(seq 1 "$ROUNDS"); do herd_fields "herd-$n-$r" | cut -d' ' -f1; done | median)
    ratio=$(for r in $(seq 1 "$ROUNDS"); do
      paste -d' ' <(herd_fields "herd-$n-$r") <(herd_fields "herd-$first-$r") | awk '{ print ($5 > 0 ? $1 / $5 : 0) }'
    done | median)
    refused=$(for r in $(seq 1 "$ROUNDS"); do herd_fields "herd-$n-$r" | cut -d' ' -f2; done | median)
    late=$(for r in $(seq 1 "$ROUNDS"); do herd_fields "herd-$n-$r" | cut -d' ' -f3; done | awk '{s+=$1} END {print s+0}')
    busy=$(for r in $(seq 1 "$ROUNDS"); do herd_fields "herd-$n-$r" | awk '{ print $4 / 1e4 }'; done | median)
    cost=$(for r in $(seq 1 "$ROUNDS"); do
      paste -d' ' <(herd_fields "herd-$n-$r") <(herd_fields "herd-$first-$r") |
        awk '$2 > 0 && $5 > 0 { print ($4 - $1 * $8 / $5) / $2 }'
    done | median)
    printf '| %s | %.0f | %.2f | %.0f | %s | %.0f %% | %s |\n' "$n" "$ok" "$ratio" "$refused" "$late" "$busy" \
      "$(awk -v c="$cost" 'BEGIN { if (c == "nan") print "—"; else if (c < 0) print "< 0 (noise)"; else printf "%.1f µs", c }')"
  done
}

H2_RPS=$(for r in $(seq 1 "$ROUNDS"); do awk '/finished in/ {print $4}' "$WORK/h2load-$r.txt"; done | median)
BASE_RATIO=$(for r in $(seq 1 "$ROUNDS"); do
  awk -v a="$(fields "$WORK/rg-$first-$r-$BESIDE.json" | cut -f1)" -v b="$(awk '/finished in/ {print $4}' "$WORK/h2load-$r.txt")" 'BEGIN{print a/b}'
done | median)
# ratio_to_base NAME SUFFIX: NAME-r-SUFFIX's OK/s over the empty handler's under the same load tool, per round, median
ratio_to_base() {
  for r in $(seq 1 "$ROUNDS"); do
    awk -v a="$(fields "$WORK/$1-$r$2.json" | cut -f1)" -v b="$(fields "$WORK/base-$r.json" | cut -f1)" 'BEGIN{print (b > 0 ? a/b : 0)}'
  done | median
}
MEM_RATIO=$(for r in $(seq 1 "$ROUNDS"); do
  awk -v a="$(fields "$WORK/mem-$first-$r-$BESIDE.json" | cut -f1)" -v b="$(awk '/finished in/ {print $4}' "$WORK/h2load-$r.txt")" 'BEGIN{print a/b}'
done | median)
{
  echo "<!-- bench/overload.sh: begin -->"
  echo "### Overload (\`bench/overload.sh\`)"
  echo
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ): server on core $SERVER_CORE${SERVER_QUOTA:+ with a CPU quota of $SERVER_QUOTA of it}, \`ridegate load\` on core $LOAD_CORE; card taps (10% exits),"
  echo "deadline $TIMEOUT, up to $MAX_CONNS connections; $ROUNDS rounds of ${SECS} s, servers alternating; medians over rounds."
  echo "The load tool backs off as a gate should: $([ "$PUSHBACK" = 1 ] && echo 'yes (ridegate_gate::Backoff)' || echo 'no (ghz-like)'). *Ratio*: OK answers/s over the"
  echo "same server's in a run at $first in flight beside it (the pair's order alternating), median over rounds. *OK per"
  echo "server CPU*: the same ratio for OK answers per second of the server's CPU time, which the load tool's own lag does"
  echo "not move (the machine's speed still does). p99 and slowest are of OK answers (decided calls)."
  echo "Deadline misses: calls the client gave up on at its deadline. Answered late: answers the server had ready only after"
  echo "the caller's deadline, timed from when the call came off its connection (ridegate_answers_late_total). Load tool's"
  echo "lag: how late its own tasks were woken, worst of the rounds (its core busy; a call it timed late may not have been)."
  echo "Shed: exits / entries the server refused."
  echo
  echo "| build | in flight | OK answers/s | ratio | OK per server CPU, ratio | p99 | slowest | deadline misses | answered late (server) | load tool's lag (max) | RESOURCE_EXHAUSTED | other errors | shed exits / entries |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  table rg "this build"
  table mem "this build, in memory"
  [ -n "$BEFORE" ] && table old "before ($(basename "$(dirname "$BEFORE")")/$(basename "$BEFORE"))"
  echo
  echo "One gate amid the herd: a second \`ridegate load\` process on the load core (4 workers, $PROBE_RPS taps/s, the"
  echo "same deadline, $([ "$PUSHBACK" = 1 ] && echo "backing off as the herd does" || echo "resending at once as the herd does")), summed over rounds."
  echo "*Asked*: taps it would have sent unrefused; *sent*: taps it sent (a refused worker backs off,"
  echo "and stops if the hint runs past the end). *Slowest*: its slowest OK answer; *lag*: how late its own tasks were woken."
  echo
  echo "| build | herd in flight | asked | sent | OK | refused (RESOURCE_EXHAUSTED) | deadline misses | other | slowest | lag |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  probe_table rg "this build"
  probe_table mem "this build, in memory"
  [ -n "$BEFORE" ] && probe_table old "before"
  echo
  echo "A herd that never waits: h2load (no request id, so every copy is decided afresh; the same card each time) at"
  echo "the same levels against this build, from the server's own counters. *Refusal*: server CPU a refusal cost,"
  echo "beyond what the decisions cost at $first in flight, per refusal."
  echo
  echo "*Decided/s*: the server's decisions, each an OK answer to the client unless answered late (the card is a green rider's)."
  echo
  echo "| in flight | decided/s | ratio | refused/s | answered late (server) | server busy | CPU per refusal |"
  echo "|---|---|---|---|---|---|---|"
  herd_table
  echo
  printf -- "- card taps at %s in flight: %.0f OK/s, %.2f of the empty handler under h2load (%.0f req/s) in the same run.\n" \
    "$first" "$(for r in $(seq 1 "$ROUNDS"); do fields "$WORK/rg-$first-$r-$BESIDE.json" | cut -f1; done | median)" "$BASE_RATIO" "$H2_RPS"
  printf -- "- the same in memory (\`--ephemeral\`): %.0f OK/s, %.2f of the empty handler.\n" \
    "$(for r in $(seq 1 "$ROUNDS"); do fields "$WORK/mem-$first-$r-$BESIDE.json" | cut -f1; done | median)" "$MEM_RATIO"
  printf -- "- with the same client on both sides (\`ridegate load\` at %s in flight against the empty handler: %.0f OK/s):\n" \
    "$first" "$(for r in $(seq 1 "$ROUNDS"); do fields "$WORK/base-$r.json" | cut -f1; done | median)"
  printf -- "  card taps %.2f of it on the durable default, %.2f in memory; the load tool reaches %.2f of h2load on the empty handler.\n" \
    "$(ratio_to_base "rg-$first" "-$BESIDE")" "$(ratio_to_base "mem-$first" "-$BESIDE")" \
    "$(for r in $(seq 1 "$ROUNDS"); do
         awk -v a="$(fields "$WORK/base-$r.json" | cut -f1)" -v b="$(awk '/finished in/ {print $4}' "$WORK/h2load-$r.txt")" 'BEGIN{print a/b}'
       done | median)"
  echo
  echo "<!-- bench/overload.sh: end -->"
} >"$WORK/section.md"

write_section overload.sh "$WORK/section.md" "$OUT"
cat "$WORK/section.md"
log "written to $OUT (raw runs in $WORK)"
