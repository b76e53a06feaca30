#!/usr/bin/env bash
# Step 2 of benches/kafka.sh alone, builds side by side: one backlog of EVENTS events (meter's
# producer, `loadgen --direct-kafka`, 1,000 tenants each sending all five codes, 8 partitions of a
# `meter dev kafka` mock cluster), then ROUNDS rounds in which each build of BINS (default BIN)
# counts the whole backlog with a fresh consumer group and an empty SQLite store, one after the
# other: wall time, the process's CPU and its aggregating thread's (`meter-aggregato`, which folds
# and writes each batch; the rest is librdkafka's threads and the HTTP server), as events per
# CPU-second. PERF=1 records the first build's first round (`perf record --call-graph dwarf`)
# into PERF_OUT (default /tmp/meter-aggregate.perf).
#   BINS="/tmp/meter-a /tmp/meter-b" ROUNDS=3 benches/aggregate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-600000}
ROUNDS=${ROUNDS:-3}
source benches/lib.sh
meter_bin
dir=$(mktemp -d /tmp/meter-aggregate.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
# thread_ticks PID NAME: the CPU ticks of the process's threads whose name contains NAME.
thread_ticks() {
  local t=0 d
  for d in /proc/"$1"/task/*; do
    if grep -q "$2" "$d/comm" 2>/dev/null; then t=$((t + $(awk '{ print $14 + $15 }' "$d/stat"))); fi
  done
  echo "$t"
}
start kafka dev kafka --partitions 8
bootstrap=$(address kafka)
export METER__LOG__URL="kafka://$bootstrap" METER__LOG__PARTITIONS=8 METER__BOOTSTRAP_ADMIN_KEY=false
${LOADGEN:-$BIN} loadgen --direct-kafka "$bootstrap" --key unused --id-prefix direct --events "$EVENTS" \
  --tenants 1000 --batch 100 --concurrency 32 --partitions 8 >/dev/null 2>&1
hz=$(getconf CLK_TCK)
n=0
for r in $(seq "$ROUNDS"); do
  for b in ${BINS:-$BIN}; do
    n=$((n + 1))
    mkdir -p "$dir/a$n"
    BIN=$b METER__AGGREGATOR__GROUP="g$n" start "agg$n" aggregate --data-dir "$dir/a$n" --listen 127.0.0.1:0
    pid=$(cat "$dir/agg$n.pid"); aurl=$(address "agg$n")
    until curl -s "$aurl/metrics" | grep -q '^meter_aggregator_owned_partitions{[^}]*} 8'; do sleep 0.05; done
    t0=$(date +%s.%N); ticks0=$(cpu_ticks "$pid"); th0=$(thread_ticks "$pid" meter-aggregato); before=$(counted "$aurl")
    if [ -n "${PERF:-}" ] && [ "$n" = 1 ]; then
      perf record -F 999 --call-graph dwarf,16384 -o "${PERF_OUT:-/tmp/meter-aggregate.perf}" -p "$pid" >/dev/null 2>&1 &
      perf_pid=$!
    fi
    while [ "$(counted "$aurl")" -lt "$EVENTS" ]; do sleep 0.05; done
    t1=$(date +%s.%N); ticks=$(($(cpu_ticks "$pid") - ticks0)); th=$(($(thread_ticks "$pid" meter-aggregato) - th0))
    if [ -n "${perf_pid:-}" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; perf_pid=""; fi
    awk -v b="$(basename "$b")" -v r="$r" -v n=$((EVENTS - before)) -v w="$(echo "$t1 - $t0" | bc)" \
      -v c="$ticks" -v th="$th" -v hz="$hz" 'BEGIN {
      printf "round %s %s: %d events in %.2f s wall; process %.2f CPU s = %.0f events per CPU-second; aggregating thread %.2f CPU s = %.0f per CPU-second\n",
        r, b, n, w, c / hz, n / (c / hz), th / hz, n / (th / hz) }'
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  done
done
