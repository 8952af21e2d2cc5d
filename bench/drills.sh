#!/usr/bin/env bash
# The transport drills: clients that hold a server's resources without doing any work,
# against the release binary (embedded default, a load-setup population), while a probe
# taps once every 100 ms. For each drill: what the probe saw and the server's memory.
#
#   bench/drills.sh                    # all three, about 3 minutes
#   HOLD=45s RIDERS=1000000 bench/drills.sh
#   TIER=shared RIDERS=2000000 CACHE=500000 bench/drills.sh
#
# TIER=shared: the population lives in a Redis of the script's own (imported once, by a
# first server) and each drill's server is a shared-tier instance whose link and status
# caches hold at most CACHE entries each and keep them an hour. Before each drill a
# load of FILL card taps (default 2 × RIDERS, at most 1 M: the load tool sends at most
# 1 M distinct taps, riders drawn at random) fills both caches, so the memory read is
# the instance's worst case: caches full (the status cache's count is in the table),
# then the drill on top. Keep CACHE under about 0.8 M, or the caches cannot fill.
# MIRROR=0 turns off the instance's copy of the whole tier for offline gates
# (`[gate_state] shared`, on by default), to read what the caches alone cost.
# LINKS=cards imports only the riders' cards (one link and one status a rider: RIDERS=
# 10000000 is 10 M links and 10 M statuses).
#
# 1. idle:    1,100 TCP connections that never send a byte, the server under a
#             1,024 open-file limit (prlimit);
# 2. unread:  100 connections × 1,000 calls whose client never opens its receive window;
# 3. partial: 100 connections × 1,000 calls that declare a 1.9 MB message and send 64 KiB.
#
# Writes its table into BENCHMARKS.md between the "bench/drills.sh" markers.
# Needs: cargo, jq, prlimit (util-linux); for TIER=shared redis-server, redis-cli, python3.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
. bench/section.sh

HOLD=${HOLD:-30s}
RIDERS=${RIDERS:-100000}
OUT=${OUT:-BENCHMARKS.md}
TIER=${TIER:-embedded}
CACHE=${CACHE:-500000}
FILL=${FILL:-$(( 2 * RIDERS < 1000000 ? 2 * RIDERS : 1000000 ))}
MIRROR=${MIRROR:-1}
LINKS=${LINKS:-all}
case "$LINKS" in all|cards) ;; *) echo "bench/drills.sh: LINKS must be all or cards" >&2; exit 2;; esac
case "$TIER" in embedded|shared) ;; *) echo "bench/drills.sh: TIER must be embedded or shared" >&2; exit 2;; esac
case "$MIRROR" in 0|1) ;; *) echo "bench/drills.sh: MIRROR must be 0 or 1" >&2; exit 2;; esac
if [ "$TIER" = shared ]; then
  for tool in redis-server redis-cli python3; do
    command -v "$tool" >/dev/null ||
      { echo "bench/drills.sh needs $tool for TIER=shared: apt-get install -y redis-server python3" >&2; exit 2; }
  done
fi
command -v prlimit >/dev/null || { echo "bench/drills.sh needs prlimit: apt-get install -y util-linux" >&2; exit 2; }
command -v jq >/dev/null || { echo "bench/drills.sh needs jq: apt-get install -y jq" >&2; exit 2; }

cargo build --release --quiet
B=$PWD/target/release/ridegate
WORK=$(mktemp -d /tmp/ridegate-drills.XXXXXX)
PID= REDIS_PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null; true' EXIT
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

log "population: $RIDERS riders"
"$B" load-setup --out "$WORK/pop" --riders "$RIDERS" >/dev/null
CONFIG=$WORK/pop/ridegate.toml
SERVE_ARGS=(--data-dir "$WORK/data")
WARM=20000
if [ "$LINKS" = cards ]; then
  grep '^{"card"' "$WORK/pop/links.jsonl" >"$WORK/pop/cards.jsonl"
  mv "$WORK/pop/cards.jsonl" "$WORK/pop/links.jsonl"
fi
log "links: $(wc -l <"$WORK/pop/links.jsonl"), statuses: $(wc -l <"$WORK/pop/health.jsonl")"
if [ "$TIER" = shared ]; then
  REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
  REDIS_PID=$!
  SERVE_ARGS=(--redis "redis://127.0.0.1:$REDIS_PORT")
  # The population into Redis once, by a server that imports the setup's files.
  log "importing into Redis"
  "$B" serve --config "$CONFIG" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 "${SERVE_ARGS[@]}" \
    --log info 2>"$WORK/import.log" &
  PID=$!
  for _ in $(seq 1 24000); do
    grep -q "import landed" "$WORK/import.log" && break
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.05
  done
  grep -q "import landed" "$WORK/import.log" || { echo "bench/drills.sh: the import did not land (see $WORK/import.log)" >&2; exit 1; }
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
  log "imported: $(redis-cli -p "$REDIS_PORT" dbsize) keys, $(redis-cli -p "$REDIS_PORT" info memory | grep '^used_memory_human' | tr -d '\r')"
  # The drills' servers: no files to import, caches of CACHE entries kept an hour.
  CONFIG=$WORK/shared.toml
  awk '/^\[(links|health)\]$/ { skip = 1; next } /^\[/ { skip = 0 } !skip' "$WORK/pop/ridegate.toml" >"$CONFIG"
  printf '\n[redis]\nlink_cache_capacity = %s\nlink_cache_ttl = "1h"\n\n[health]\ncache_capacity = %s\ncache_ttl = "1h"\nmax_staleness = "1h"\n' \
    "$CACHE" "$CACHE" >>"$CONFIG"
  [ "$MIRROR" = 1 ] || printf '\n[gate_state]\nshared = false\n' >>"$CONFIG"
  WARM=$FILL
fi

# drill NAME ARGS... : a fresh server (1,024 open files at most), then the drill
drill() {
  local name=$1; shift
  rm -f "$WORK/$name.ready"
  rm -rf "$WORK/data"
  prlimit --nofile=1024:1024 "$B" serve --config "$CONFIG" --listen 127.0.0.1:0 \
    --admin-listen 127.0.0.1:0 "${SERVE_ARGS[@]}" --ready-file "$WORK/$name.ready" 2>"$WORK/$name.log" &
  PID=$!
  for _ in $(seq 1 1200); do [ -s "$WORK/$name.ready" ] && break; sleep 0.05; done
  local addr admin
  addr=$(jq -r .addr "$WORK/$name.ready"); admin=$(jq -r .admin "$WORK/$name.ready")
  # The population's links and statuses in memory first, as in service (shared tier:
  # the caches filled).
  "$B" load "$addr" --population "$WORK/pop" --mix cards -n "$WARM" -c 32 >/dev/null 2>&1
  curl -s "http://$admin/metrics" | awk '$1 == "ridegate_health_cache_entries" { print $2 }' >"$WORK/$name.cached"
  log "drill $name"
  "$B" drill "$@" "$addr" --hold "$HOLD" --server-pid "$PID" -o "$WORK/$name.json"
  curl -s "http://$admin/metrics" | grep -E '^ridegate_(connections|shed)' >"$WORK/$name.metrics" || true
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
}

drill idle idle -c 1100
drill unread unread -c 100 -s 1000
drill partial partial -c 100 -s 1000 --declare-bytes 1900000 --send-bytes 65536

row() {
  jq -r --arg name "$2" '[$name, .opened, .closedByServer, .callsStarted, .callsRefused,
      "\(.probesAnswered)/\(.probes)", (.probeMaxMs | floor), (.serverRssBeforeMib | floor),
      (.serverRssPeakMib | floor), (.serverRssAfterMib | floor)] | "| " + (map(tostring) | join(" | ")) + " |"' "$WORK/$1.json"
}
LINKS_HELD=$(wc -l <"$WORK/pop/links.jsonl"); STATUSES_HELD=$(wc -l <"$WORK/pop/health.jsonl")
if [ "$TIER" = shared ]; then
  SECTION=drills.sh-shared
  TITLE="Transport drills on the shared tier (\`TIER=shared bench/drills.sh\`)"
  SETUP="a shared-tier instance over Redis holding $LINKS_HELD links and $STATUSES_HELD statuses, its link and status caches at most $CACHE entries each, filled by $FILL card taps before each drill, $( [ "$MIRROR" = 1 ] && echo "with" || echo "without" ) its copy of the tier for offline gates"
else
  SECTION=drills.sh
  TITLE="Transport drills (\`bench/drills.sh\`)"
  SETUP="embedded default, $RIDERS riders"
fi
{
  echo "<!-- bench/$SECTION: begin -->"
  echo "### $TITLE"
  echo
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ): the release binary, $SETUP, open files limited to 1,024;"
  echo "each drill held $HOLD while a probe tapped every 100 ms (a new connection every 10th tap)."
  echo
  echo "| drill | connections opened | closed by the server | calls sent | refused at once | probes answered in 1 s | slowest probe (ms) | RSS before (MiB) | peak | after |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  row idle "1,100 idle TCP connections"
  row unread "100 × 1,000 calls never read"
  row partial "100 × 1,000 calls declaring 1.9 MB, sending 64 KiB"
  echo
  if [ "$TIER" = shared ]; then
    echo "- statuses cached when each drill began (idle, unread, partial): $(cat "$WORK/idle.cached"), $(cat "$WORK/unread.cached"), $(cat "$WORK/partial.cached")"
  fi
  for d in idle unread partial; do echo "- $d: $(tr '\n' ' ' <"$WORK/$d.metrics")"; done
  echo
  echo "<!-- bench/$SECTION: end -->"
} >"$WORK/section.md"

write_section "$SECTION" "$WORK/section.md" "$OUT"
cat "$WORK/section.md"
log "written to $OUT (raw results in $WORK)"
