#!/usr/bin/env bash
# Mutual TLS against plaintext, same run: card taps through `ridegate load` as one gate
# (its certificate under mTLS, the same gate id in plaintext), alternating the two
# servers round by round, each pinned to one core and the load to the other; then the
# server CPU per handshake. Prints a Markdown section (for BENCHMARKS.md) on stdout.
#
# Needs: cargo, jq, taskset. Only means something on an otherwise idle machine.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}        # alternating plaintext/mTLS pairs
SECS=${SECS:-8}            # seconds per run
RIDERS=${RIDERS:-20000}
C=${C:-64}
CONNS=${CONNS:-4}
HANDSHAKES=${HANDSHAKES:-500}   # connections (one handshake and one tap each) per run
SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
GATE=L10-S07-G03

cargo build --release --quiet -p ridegate-tools
B=$PWD/target/release/ridegate
WORK=$(mktemp -d /tmp/ridegate-tls.XXXXXX)
PIDS=()
cleanup() { for p in ${PIDS[@]+"${PIDS[@]}"}; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

start() {   # start NAME ARGS... : sets ADDR and PID
  local name=$1; shift
  taskset -c "$SERVER_CORE" "$@" --ready-file "$WORK/$name.ready" 2>"$WORK/$name.log" &
  PID=$!; PIDS+=("$PID")
  for _ in $(seq 1 1200); do [ -s "$WORK/$name.ready" ] && break; sleep 0.05; done
  ADDR=$(jq -r .addr "$WORK/$name.ready")
}
median() { sort -g | awk '{a[NR]=$1} END { if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, clock ticks

"$B" load-setup --out "$WORK/pop" --riders "$RIDERS" >/dev/null 2>&1
for step in "ca" "server --ca $WORK/ca.pem --ca-key $WORK/ca.key.pem" \
            "gate --ca $WORK/ca.pem --ca-key $WORK/ca.key.pem --gate-id $GATE"; do
  # shellcheck disable=SC2086
  "$B" keys cert $step --out "$WORK" >/dev/null
done
TLS=(--tls-ca "$WORK/ca.pem" --tls-cert "$WORK/gate-$GATE.pem" --tls-key "$WORK/gate-$GATE.key.pem")

start plain "$B" serve --config "$WORK/pop/ridegate.toml" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --audit /dev/null
PLAIN=$ADDR PLAIN_PID=$PID
start mtls "$B" serve --config "$WORK/pop/ridegate.toml" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --audit /dev/null \
  --tls-cert "$WORK/server.pem" --tls-key "$WORK/server.key.pem" --tls-client-ca "$WORK/ca.pem"
MTLS=$ADDR MTLS_PID=$PID

run() {   # run NAME ADDR PID ARGS... : one timed run, JSON to $WORK/NAME.json
  local name=$1 addr=$2 pid=$3; shift 3
  taskset -c "$LOAD_CORE" "$B" load "$addr" --population "$WORK/pop" --mix cards --gate-id "$GATE" \
    -z "${SECS}s" -c "$C" --connections "$CONNS" --server-pid "$pid" -O json -o "$WORK/$name.json" "$@" 2>/dev/null
}
# Warm both: links and statuses cached as in service.
run warm-plain "$PLAIN" "$PLAIN_PID"; run warm-mtls "$MTLS" "$MTLS_PID" "${TLS[@]}"
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then run "plain-$r" "$PLAIN" "$PLAIN_PID"; run "mtls-$r" "$MTLS" "$MTLS_PID" "${TLS[@]}"
  else run "mtls-$r" "$MTLS" "$MTLS_PID" "${TLS[@]}"; run "plain-$r" "$PLAIN" "$PLAIN_PID"; fi
done
field() { jq -r "$2" "$WORK/$1.json"; }
p99() { field "$1" '[.latencyDistribution[] | select(.percentage == 99) | .latency][0] / 1000'; }
round2() { awk '{printf "%.2f", $1}'; }
RPS_RATIO=$(for r in $(seq 1 "$ROUNDS"); do awk -v a="$(field "mtls-$r" .rps)" -v b="$(field "plain-$r" .rps)" 'BEGIN{print a/b}'; done | median | round2)
P99_RATIO=$(for r in $(seq 1 "$ROUNDS"); do awk -v a="$(p99 "mtls-$r")" -v b="$(p99 "plain-$r")" 'BEGIN{print a/b}'; done | median | round2)
CPU_RATIO=$(for r in $(seq 1 "$ROUNDS"); do awk -v a="$(field "mtls-$r" .serverCpuPerRequestMicros)" -v b="$(field "plain-$r" .serverCpuPerRequestMicros)" 'BEGIN{print a/b}'; done | median | round2)
med() { for r in $(seq 1 "$ROUNDS"); do "$@" "$r"; done | median | awk '{printf "%.1f", $1}'; }
rps_of() { field "$1-$2" .rps; }
p99_of() { p99 "$1-$2"; }
cpu_of() { field "$1-$2" .serverCpuPerRequestMicros; }

# Handshakes: HANDSHAKES connections, one tap each; server CPU over the whole run
# (connecting included), less the same run in plaintext, per connection.
hs() {   # hs ADDR PID ARGS... : server CPU µs per connection+tap
  local addr=$1 pid=$2; shift 2
  local before after
  before=$(ticks "$pid")
  taskset -c "$LOAD_CORE" "$B" load "$addr" --population "$WORK/pop" --mix cards --gate-id "$GATE" \
    -n "$HANDSHAKES" -c "$HANDSHAKES" --connections "$HANDSHAKES" -O json -o /dev/null "$@" 2>/dev/null
  sleep 0.2
  after=$(ticks "$pid")
  awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$HANDSHAKES" 'BEGIN{print t / hz * 1e6 / n}'
}
HS_TLS=$(for r in $(seq 1 "$ROUNDS"); do hs "$MTLS" "$MTLS_PID" "${TLS[@]}"; done | median | awk '{printf "%.0f", $1}')
HS_PLAIN=$(for r in $(seq 1 "$ROUNDS"); do hs "$PLAIN" "$PLAIN_PID"; done | median | awk '{printf "%.0f", $1}')

cat <<MD
## Mutual TLS against plaintext

Run $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores with \`bench/tls.sh\` (ROUNDS=$ROUNDS, ${SECS}s runs,
$RIDERS riders, card taps as one gate \`$GATE\`, -c $C over $CONNS connections): two
\`ridegate serve\` on core $SERVER_CORE — plaintext, and mutual TLS (ECDSA P-256 certificates from
\`ridegate keys cert\`, the gate bound to its certificate) — alternating round by round, the
load on core $LOAD_CORE. Medians over rounds; ratios are the median of per-round mTLS / plaintext.

| | plaintext | mutual TLS | ratio (mTLS / plaintext) |
|---|---|---|---|
| requests/s | $(med rps_of plain) | $(med rps_of mtls) | $RPS_RATIO |
| p99 (µs) | $(med p99_of plain) | $(med p99_of mtls) | $P99_RATIO |
| server CPU per tap (µs) | $(med cpu_of plain) | $(med cpu_of mtls) | $CPU_RATIO |

Handshakes: $HANDSHAKES connections with one tap each, server CPU over the run per connection:
$HS_TLS µs with mutual TLS against $HS_PLAIN µs in plaintext, so a full mTLS handshake (client
certificate verified, gate id read) costs about $(awk -v a="$HS_TLS" -v b="$HS_PLAIN" 'BEGIN{printf "%.0f", a-b}') µs of server CPU: about
$(awk -v a="$HS_TLS" -v b="$HS_PLAIN" 'BEGIN{printf "%.0f", 1e6/(a-b)}') handshakes per second per core (gates hold their connections, so this is paid at
connect and reconnect, not per tap).
MD
