#!/usr/bin/env bash
# Step 2 of benches/postgres.sh (event to counter at a fixed RATE for 20 s, on a fresh mock
# cluster with `meter ingest` and `meter aggregate`) for one BACKEND (postgres or sqlite), with the
# aggregator's /metrics read every 0.25 s into OUT/poll, so that benches/timeline.py can say where
# in the run the latency is: events counted, batches, their mean duration and the event-to-counter
# p50/p99 of each interval, and the run's p99 whole and after its first 1 s and 5 s.
#   BACKEND=postgres OUT=/tmp/tl-pg benches/timeline.sh && python3 benches/timeline.py /tmp/tl-pg/poll 4
# SLOWLOG=MS has the Postgres server log every statement of at least MS ms (0: all, with their
# durations) into OUT/server.log; PERF=1 records `perf record -a -g` over the first PERF_SECONDS (1.5) s of the
# load into OUT/perf.data.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-20000}
BACKEND=${BACKEND:-postgres}
OUT=${OUT:-/tmp/meter-timeline}
source benches/lib.sh
meter_bin
dir=$(mktemp -d /tmp/meter-timeline.XXXXXX)
chmod 755 "$dir"  # the Postgres server runs as `postgres` and keeps its data under it
trap stop_all_and_postgres EXIT
rm -rf "$OUT"; mkdir -p "$OUT"
if [ "$BACKEND" = postgres ]; then
  pg=$(METER_PG_FSYNC=on deploy/postgres.sh "$dir/pg" "${PG_PORT:-18793}")
  if [ -n "${SLOWLOG:-}" ]; then
    psql -q "$pg" -c "ALTER SYSTEM SET log_min_duration_statement = $SLOWLOG" \
      -c "ALTER SYSTEM SET log_autovacuum_min_duration = 0" -c "SELECT pg_reload_conf()" >/dev/null
  fi
  name="bench_$(date +%s%N)"
  psql -q "$pg" -c "CREATE DATABASE $name" >/dev/null
  state="${pg%/postgres}/$name"
  $BIN migrate --state "$state" --data-dir "$dir/migrate" >/dev/null 2>&1
else
  state=sqlite
fi
export METER__LOG__PARTITIONS=8 METER__BOOTSTRAP_ADMIN_KEY=false
start kafka dev kafka --partitions 8
export METER__LOG__URL="kafka://$(address kafka)"
d="$dir/d"; mkdir -p "$d"
key=$($BIN keys create --role admin --data-dir "$d" --state "$state" 2>/dev/null)
METER__STATE__URL="$state" start ing ingest --data-dir "$d" --listen 127.0.0.1:0
METER__STATE__URL="$state" start agg aggregate --data-dir "$d" --listen 127.0.0.1:0
aurl=$(address agg)
until [ "$(owned "$aurl")" = 8 ]; do sleep 0.1; done
(
  while true; do
    echo "T $(date +%s.%N)"
    curl -s "$aurl/metrics" |
      grep -E '^meter_aggregator_(event_to_counter_seconds_bucket|batch_duration_seconds_(sum|count)|events_total)' || true
    sleep 0.25
  done
) >"$OUT/poll" &
poller=$!
if [ -n "${PERF:-}" ]; then (perf record -a -g -F 999 -o "$OUT/perf.data" -- sleep "${PERF_SECONDS:-1.5}" >/dev/null 2>&1 &); fi
$BIN loadgen --url "$(address ing)" --key "$key" --id-prefix tl --rate "$RATE" --events $((RATE * 20)) \
  --tenants 1000 --batch 100 --concurrency 32 >"$OUT/loadgen.out" 2>/dev/null
sleep 1.5
kill "$poller"
if [ -f "$dir/pg/server.log" ]; then cp "$dir/pg/server.log" "$OUT/"; fi
head -2 "$OUT/loadgen.out"
