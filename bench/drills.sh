#!/usr/bin/env bash
# The transport drills: clients that hold a server's resources without doing any work,
# against the release binary (embedded default, a load-setup population), while a probe
# taps once every 100 ms. For each drill: what the probe saw and the server's memory.
#
#   bench/drills.sh                    # all three, about 3 minutes
#   HOLD=45s RIDERS=1000000 bench/drills.sh
#
# 1. idle:    1,100 TCP connections that never send a byte, the server under a
#             1,024 open-file limit (prlimit);
# 2. unread:  100 connections × 1,000 calls whose client never opens its receive window;
# 3. partial: 100 connections × 1,000 calls that declare a 1.9 MB message and send 64 KiB.
#
# Writes its table into BENCHMARKS.md between the "bench/drills.sh" markers.
# Needs: cargo, jq, prlimit (util-linux).
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
. bench/section.sh

HOLD=${HOLD:-30s}
RIDERS=${RIDERS:-100000}
OUT=${OUT:-BENCHMARKS.md}
command -v prlimit >/dev/null || { echo "bench/drills.sh needs prlimit: apt-get install -y util-linux" >&2; exit 2; }
command -v jq >/dev/null || { echo "bench/drills.sh needs jq: apt-get install -y jq" >&2; exit 2; }

cargo build --release --quiet
B=$PWD/target/release/ridegate
WORK=$(mktemp -d /tmp/ridegate-drills.XXXXXX)
PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null || true' EXIT
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

"$B" load-setup --out "$WORK/pop" --riders "$RIDERS" >/dev/null

# drill NAME ARGS... : a fresh server (1,024 open files at most), then the drill
drill() {
  local name=$1; shift
  rm -f "$WORK/$name.ready"
  prlimit --nofile=1024:1024 "$B" serve --config "$WORK/pop/ridegate.toml" --listen 127.0.0.1:0 \
    --admin-listen 127.0.0.1:0 --data-dir "$WORK/data-$name" --ready-file "$WORK/$name.ready" 2>"$WORK/$name.log" &
  PID=$!
  for _ in $(seq 1 1200); do [ -s "$WORK/$name.ready" ] && break; sleep 0.05; done
  local addr admin
  addr=$(jq -r .addr "$WORK/$name.ready"); admin=$(jq -r .admin "$WORK/$name.ready")
  # The population's links and statuses in memory first, as in service.
  "$B" load "$addr" --population "$WORK/pop" --mix cards -n 20000 -c 32 >/dev/null 2>&1
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
{
  echo "<!-- bench/drills.sh: begin -->"
  echo "### Transport drills (\`bench/drills.sh\`)"
  echo
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ): the release binary, embedded default, $RIDERS riders, open files limited to 1,024;"
  echo "each drill held $HOLD while a probe tapped every 100 ms (a new connection every 10th tap)."
  echo
  echo "| drill | connections opened | closed by the server | calls sent | refused at once | probes answered in 1 s | slowest probe (ms) | RSS before (MiB) | peak | after |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  row idle "1,100 idle TCP connections"
  row unread "100 × 1,000 calls never read"
  row partial "100 × 1,000 calls declaring 1.9 MB, sending 64 KiB"
  echo
  for d in idle unread partial; do echo "- $d: $(tr '\n' ' ' <"$WORK/$d.metrics")"; done
  echo
  echo "<!-- bench/drills.sh: end -->"
} >"$WORK/section.md"

write_section drills.sh "$WORK/section.md" "$OUT"
cat "$WORK/section.md"
log "written to $OUT (raw results in $WORK)"
