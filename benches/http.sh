#!/usr/bin/env bash
# Step 1 of benches/kafka.sh alone, longer and builds side by side: `meter ingest` over HTTP
# against the HTTP baseline (`meter dev http-baseline`: parse with serde_json and produce with
# meter's producer; no key, no validation, no answer body), each on a fresh `meter dev kafka` mock
# cluster (8 partitions), the same load generator (1,000 tenants each sending all five codes,
# batches of 100, 32 in flight). Each server is first warmed up with 50,000 events; then EVENTS
# events are timed, and the server's CPU over them is read from /proc. In each of ROUNDS rounds,
# each build of BINS (default BIN) runs the baseline (always BASELINE's, default the first build),
# then its `meter ingest`. Prints events/s and CPU µs per event of both, and their ratios.
# kafka.sh's step 1 sends its EVENTS (300,000 there) in about half a second: too short to tell
# builds apart on a machine shared with other work; this sends 1,500,000 by default.
# PIN=1 puts the servers on core 1 and the load generator and mock brokers on core 0, so that the
# server's CPU is the limit and the load generator's share the same in every run. PERF=1 records
# each server (`perf record --call-graph dwarf`) into PERF_OUT.baseline.N and PERF_OUT.ingest.N,
# N counting the runs (PERF_OUT defaults to /tmp/meter-http.perf).
#   BINS="/tmp/meter-a /tmp/meter-b" ROUNDS=3 PIN=1 benches/http.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-1500000}
ROUNDS=${ROUNDS:-3}
source benches/lib.sh
[ -n "${BINS:-}" ] || meter_bin
BINS=${BINS:-$BIN}
LOADGEN=${LOADGEN:-${BINS%% *}}
BASELINE=${BASELINE:-${BINS%% *}}
PERF_OUT=${PERF_OUT:-/tmp/meter-http.perf}
dir=$(mktemp -d /tmp/meter-http.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
server=""; load=""
if [ -n "${PIN:-}" ]; then server="taskset -c 1"; load="taskset -c 0"; fi
rate() { echo "$1" | sed -n 's/^[^=]*= \([0-9]*\) events\/s.*/\1/p'; }
common=(--tenants 1000 --batch 100 --concurrency 32 --partitions 8)
hz=$(getconf CLK_TCK)
# measure KIND NAME URL KEY PREFIX: warms the server started as NAME up, then sends EVENTS events
# and writes "events/s CPU-µs-per-event" for them to $dir/NAME.result; fails, saying why, if the
# load generator does, or if not every event was acknowledged.
measure() {
  local pid t0 t1 out acked recording=""
  pid=$(cat "$dir/$2.pid")
  $load "$LOADGEN" loadgen --url "$3" --key "$4" --id-prefix "$5-warm" --events 50000 "${common[@]}" >"$dir/$2.warm" 2>&1 ||
    { echo "the warm-up of $2 failed: $(tail -3 "$dir/$2.warm")" >&2; return 1; }
  if [ -n "${PERF:-}" ]; then
    perf record -F 499 --call-graph dwarf,16384 -o "$PERF_OUT.$1.$n" -p "$pid" >/dev/null 2>&1 &
    recording=$!
    sleep 0.5
  fi
  t0=$(cpu_ticks "$pid")
  out=$($load "$LOADGEN" loadgen --url "$3" --key "$4" --id-prefix "$5" --events "$EVENTS" "${common[@]}" 2>&1) ||
    { echo "the load generator failed against $2: $(echo "$out" | tail -3)" >&2; return 1; }
  t1=$(cpu_ticks "$pid")
  if [ -n "$recording" ]; then kill -INT "$recording"; wait "$recording" || true; fi
  acked=$(echo "$out" | sed -n 's/^events: \([0-9]*\) acknowledged.*/\1/p')
  [ "$acked" = "$EVENTS" ] || { echo "$2 acknowledged ${acked:-no} events of $EVENTS: $(echo "$out" | tail -3)" >&2; return 1; }
  echo "$(rate "$out") $(awk -v c=$((t1 - t0)) -v hz="$hz" -v n="$EVENTS" 'BEGIN { printf "%.2f", c / hz / n * 1e6 }')" >"$dir/$2.result"
}
# stop NAME...: stops processes started by `start`.
stop() {
  local name
  for name in "$@"; do
    kill -TERM "$(cat "$dir/$name.pid")" 2>/dev/null || true
    wait "$(cat "$dir/$name.pid")" 2>/dev/null || true
  done
}
n=0
for r in $(seq "$ROUNDS"); do
  for b in $BINS; do
    n=$((n + 1))
    BIN="$load $BASELINE" start "kb$n" dev kafka --partitions 8
    BIN="$server $BASELINE" start "base$n" dev http-baseline --kafka "$(address "kb$n")" --partitions 8 --listen 127.0.0.1:0
    measure baseline "base$n" "$(address "base$n")" unused "base$n"
    read -r base_rate base_cpu <"$dir/base$n.result"
    stop "base$n" "kb$n"
    BIN="$load $b" start "ki$n" dev kafka --partitions 8
    mkdir -p "$dir/d$n"
    key=$("$b" keys create --role admin --data-dir "$dir/d$n" 2>"$dir/keys$n.err") ||
      { echo "meter keys create failed: $(cat "$dir/keys$n.err")" >&2; exit 1; }
    METER__LOG__URL="kafka://$(address "ki$n")" METER__LOG__PARTITIONS=8 METER__BOOTSTRAP_ADMIN_KEY=false \
      BIN="$server $b" start "ingest$n" ingest --data-dir "$dir/d$n" --listen 127.0.0.1:0
    measure ingest "ingest$n" "$(address "ingest$n")" "$key" "http$n"
    read -r http_rate http_cpu <"$dir/ingest$n.result"
    stop "ingest$n" "ki$n"
    awk -v r="$r" -v b="$b" -v br="$base_rate" -v bc="$base_cpu" -v hr="$http_rate" -v hc="$http_cpu" 'BEGIN {
      printf "round %d %s: baseline %d events/s (%.2f CPU µs/event); meter ingest %d events/s (%.2f CPU µs/event); HTTP / baseline %.2f; CPU per event %.2f x the baseline\n",
        r, b, br, bc, hr, hc, hr / br, hc / bc }'
  done
done
