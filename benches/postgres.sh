#!/usr/bin/env bash
# Issue 15's figures: the live counters on Postgres against SQLite, side by side in one run, on
# `meter dev kafka` mock clusters (8 partitions) and a private Postgres cluster with fsync on.
#   1. aggregator throughput: one backlog of EVENTS events (produced once with meter's producer,
#      `loadgen --direct-kafka`, 1,000 tenants each sending all five codes); then ROUNDS rounds,
#      each counting the whole backlog with a fresh consumer group and empty state, SQLite then
#      Postgres: events per CPU-second, the CPU being the aggregator's plus, on Postgres, the
#      Postgres server's (its processes and the backends it reaped); on Postgres also with the
#      round's own `VACUUM (ANALYZE)` after it, which autovacuum would otherwise run during a
#      later round;
#   2. event-to-counter p50/p99 at a fixed RATE events/s for 20 s, each backend on a fresh mock
#      cluster with `meter ingest` and `meter aggregate` (histogram
#      `meter_aggregator_event_to_counter_seconds`, bucket-interpolated), over the whole run and
#      over what was counted after its first 5 s (a fresh aggregator creates every counter in its
#      first batches);
#   3. 1, 2 and 3 aggregator processes on Postgres counting the backlog: wall events/s of what
#      they count once every process owns a partition.
#   EVENTS=300000 ROUNDS=3 RATE=20000 benches/postgres.sh
# BINS="A B" runs step 1 with each of these builds in turn, every round (side by side; BIN runs
# the rest). STATEMENTS=1 loads pg_stat_statements and prints, after step 1, the statements that
# took the server's time, summed over every round's database. PERF=DIR records each step-1
# aggregator while it counts (`perf record --call-graph dwarf`) into DIR/NAME-BACKEND.data, and
# on Postgres the server's processes into DIR/NAME-server.data.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-300000}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-20000}
source benches/lib.sh
meter_bin
dir=$(mktemp -d /tmp/meter-bench-pg.XXXXXX)
chmod 755 "$dir"  # the Postgres server runs as `postgres` and keeps its data under it
trap stop_all_and_postgres EXIT

pg_port=${PG_PORT:-18791}
if [ "${STATEMENTS:-0}" = 1 ]; then export METER_PG_SETTINGS="shared_preload_libraries=pg_stat_statements"; fi
pg=$(METER_PG_FSYNC=on deploy/postgres.sh "$dir/pg" "$pg_port")
pg_pid=$(cat "$dir/pg/pid")
hz=$(getconf CLK_TCK)
# CPU ticks of the Postgres server: the postmaster, its live children, and the children it reaped.
pg_ticks() {
  local t
  t=$(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$pg_pid/stat")
  for c in $(pgrep -P "$pg_pid"); do
    t=$((t + $(awk '{ print $14 + $15 }' "/proc/$c/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
fresh_db() {  # a new, migrated database; prints its URL (called in a subshell: named by the clock)
  local name; name="bench_$(date +%s%N)"
  psql -q "$pg" -c "CREATE DATABASE $name" >/dev/null || { echo "cannot create $name" >&2; exit 1; }
  local url="${pg%/postgres}/$name"
  $BIN migrate --state "$url" --data-dir "$dir/migrate" >/dev/null 2>&1 || { echo "cannot migrate $name" >&2; exit 1; }
  echo "$url"
}
stop() { local p; p=$(cat "$dir/$1.pid"); kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; }
export METER__LOG__PARTITIONS=8 METER__BOOTSTRAP_ADMIN_KEY=false

start kafka dev kafka --partitions 8
backlog=$(address kafka)
$BIN loadgen --direct-kafka "$backlog" --key unused --id-prefix backlog --events "$EVENTS" --tenants 1000 \
  --batch 100 --concurrency 32 --partitions 8 >/dev/null 2>&1
echo "== 1. aggregator counting a backlog of $EVENTS events (1,000 tenants, all five codes), $ROUNDS rounds"
run=0
count_backlog() {  # BACKEND STATE_URL: prints "events/s-wall events-per-CPU-second agg-CPU-s pg-CPU-s"
  run=$((run + 1))
  local name="agg$run"
  mkdir -p "$dir/$name"
  local p0; p0=$(pg_ticks)
  METER__LOG__URL="kafka://$backlog" METER__AGGREGATOR__GROUP="bench-$run" METER__STATE__URL="$2" \
    start "$name" aggregate --data-dir "$dir/$name" --listen 127.0.0.1:0
  local pid url; pid=$(cat "$dir/$name.pid"); url=$(address "$name")
  until [ "$(owned "$url")" = 8 ]; do sleep 0.05; done
  local t0 a0 c; t0=$(date +%s.%N); a0=$(cpu_ticks "$pid"); p0=$(pg_ticks)
  local perf=
  if [ -n "${PERF:-}" ]; then
    mkdir -p "$PERF"
    perf record -q -F 400 --call-graph dwarf -p "$pid" -o "$PERF/$name-$1.data" 2>/dev/null & perf=$!
    if [ "$1" = postgres ]; then  # and the server's processes (the aggregator's backends are up)
      perf record -q -F 400 -g -p "$(pgrep -d, -P "$pg_pid")" -o "$PERF/$name-server.data" 2>/dev/null & perf="$perf $!"
    fi
  fi
  while [ "$(counted "$url")" -lt "$EVENTS" ]; do sleep 0.05; done
  local t1 a1 p1; t1=$(date +%s.%N); a1=$(cpu_ticks "$pid"); p1=$(pg_ticks)
  for p in $perf; do kill -INT "$p"; wait "$p" || true; done
  [ "$1" = sqlite ] && p1=$p0
  stop "$name"
  # On Postgres, the round's own vacuum: what autovacuum would otherwise do later, in some other
  # round's window (each round's tables and ids cross its thresholds), done and timed now.
  local v=0
  if [ "$1" = postgres ]; then
    sleep 0.5  # the aggregator's backends reaped
    local v0; v0=$(pg_ticks)
    psql -q "$2" -c "VACUUM (ANALYZE)" >/dev/null
    sleep 0.5
    v=$(($(pg_ticks) - v0))
  fi
  awk -v n="$EVENTS" -v w="$(echo "$t1 - $t0" | bc)" -v a=$((a1 - a0)) -v p=$((p1 - p0)) -v v="$v" -v hz="$hz" -v b="$1" 'BEGIN {
    printf "%-8s %8.0f events/s wall, %8.0f events per CPU-second (aggregator %.2f CPU s + postgres %.2f CPU s)",
      b, n / w, n / ((a + p) / hz), a / hz, p / hz
    if (b == "postgres") printf "; with its vacuum (%.2f CPU s) %.0f", v / hz, n / ((a + p + v) / hz)
    printf "\n" }'
}
one_bin=$BIN
for r in $(seq "$ROUNDS"); do
  echo "round $r"
  for BIN in ${BINS:-$one_bin}; do
    [ -n "${BINS:-}" ] && echo "-- $BIN"
    count_backlog sqlite sqlite
    count_backlog postgres "$(fresh_db)"
  done
done
BIN=$one_bin
if [ "${STATEMENTS:-0}" = 1 ]; then
  psql -q "$pg" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
  psql "$pg" -c "SELECT round(sum(total_exec_time)::numeric) AS ms, sum(calls) AS calls, sum(rows) AS rows,
    round(sum(wal_bytes) / 1e6, 1) AS wal_mb, left(regexp_replace(query, '\s+', ' ', 'g'), 100) AS statement
    FROM pg_stat_statements GROUP BY query ORDER BY 1 DESC LIMIT 12"
fi

echo "== 2. event to counter at $RATE events/s for 20 s"
# buckets URL: the aggregator's event-to-counter histogram, a line "LE COUNT" per bucket.
buckets() {
  curl -s "$1/metrics" | awk '/^meter_aggregator_event_to_counter_seconds_bucket/ {
    match($0, /le="[^"]*"/); print substr($0, RSTART + 4, RLENGTH - 5), $2 }'
}
# quantiles Q...: from "LE COUNT" lines on stdin, each quantile in ms, interpolated in its bucket.
quantiles() {
  awk -v qs="$*" '{ n++; bound[n] = $1; count[n] = $2 }
    END {
      total = count[n]; k = split(qs, q, " "); out = ""
      if (total == 0) { print " (nothing counted)"; exit }
      for (j = 1; j <= k; j++) {
        want = q[j] * total; prev_b = 0; prev_c = 0; v = 0
        for (i = 1; i <= n; i++) if (count[i] >= want) {
          v = bound[i] == "+Inf" ? prev_b : prev_b + (bound[i] - prev_b) * (want - prev_c) / (count[i] - prev_c); break }
          else { prev_b = bound[i]; prev_c = count[i] }
        out = out sprintf(" p%s %.1f ms", substr(q[j] "00", 3, 2), v * 1000) }
      print out }'
}
latency() {  # BACKEND STATE_URL
  run=$((run + 1))
  local k="kafka$run" d="$dir/lat$run"
  mkdir -p "$d"
  start "$k" dev kafka --partitions 8
  export METER__LOG__URL="kafka://$(address "$k")"
  local key; key=$($BIN keys create --role admin --data-dir "$d" --state "$2" 2>/dev/null)
  METER__STATE__URL="$2" start "ing$run" ingest --data-dir "$d" --listen 127.0.0.1:0
  METER__STATE__URL="$2" start "lag$run" aggregate --data-dir "$d" --listen 127.0.0.1:0
  local aurl; aurl=$(address "lag$run")
  until [ "$(owned "$aurl")" = 8 ]; do sleep 0.1; done
  $BIN loadgen --url "$(address "ing$run")" --key "$key" --id-prefix "lat$run" --rate "$RATE" \
    --events $((RATE * 20)) --tenants 1000 --batch 100 --concurrency 32 >"$d/loadgen.out" 2>/dev/null &
  local lg=$!
  # The histogram 5 s into the load: what is counted after it is the aggregator warmed up (its
  # first batches meet every counter for the first time and create them).
  sleep 5
  buckets "$aurl" >"$d/at5s"
  wait "$lg"
  local sent; sent=$(head -1 "$d/loadgen.out")
  sleep 1
  buckets "$aurl" >"$d/end"
  printf '%-8s%s (%d events counted; loadgen: %s)\n' "$1" "$(quantiles 0.5 0.99 <"$d/end")" \
    "$(tail -1 "$d/end" | cut -d' ' -f2)" "$sent"
  if [ -s "$d/at5s" ] && [ "$(wc -l <"$d/at5s")" = "$(wc -l <"$d/end")" ]; then
    printf '%-8s after the first 5 s:%s\n' "$1" "$(paste -d' ' "$d/at5s" "$d/end" | awk '{ print $1, $4 - $2 }' | quantiles 0.99)"
  else
    printf '%-8s after the first 5 s: not measured (no histogram at 5 s)\n' "$1"
  fi
  stop "lag$run"; stop "ing$run"; stop "$k"
}
latency sqlite sqlite
latency postgres "$(fresh_db)"

echo "== 3. 1, 2 and 3 aggregators on Postgres counting the backlog of $EVENTS events"
export METER__LOG__URL="kafka://$backlog"
for k in 1 2 3; do
  run=$((run + 1))
  state=$(fresh_db)
  urls=()
  for i in $(seq "$k"); do
    mkdir -p "$dir/s$run-$i"
    METER__AGGREGATOR__GROUP="scale-$run" METER__STATE__URL="$state" \
      start "s$run-$i" aggregate --data-dir "$dir/s$run-$i" --listen 127.0.0.1:0
    urls+=("$(address "s$run-$i")")
  done
  total_owned() { local s=0; for u in "${urls[@]}"; do s=$((s + $(owned "$u"))); done; echo $s; }
  total_counted() { local s=0; for u in "${urls[@]}"; do s=$((s + $(counted "$u"))); done; echo $s; }
  every_one_owns() { for u in "${urls[@]}"; do [ "$(owned "$u")" -gt 0 ] || return 1; done; }
  # Every partition assigned, and to every process (the group settled).
  until [ "$(total_owned)" = 8 ] && every_one_owns; do sleep 0.1; done
  # The first process counts while the others join: only what is counted after the group
  # settled is timed.
  t0=$(date +%s.%N); p0=$(pg_ticks); before=$(total_counted)
  while [ "$(total_counted)" -lt "$EVENTS" ]; do sleep 0.05; done
  t1=$(date +%s.%N); p1=$(pg_ticks)
  for i in $(seq "$k"); do stop "s$run-$i"; done
  awk -v n=$((EVENTS - before)) -v w="$(echo "$t1 - $t0" | bc)" -v k="$k" -v p=$((p1 - p0)) -v hz="$hz" 'BEGIN {
    printf "%d aggregator(s): %8.0f events/s wall (%d events counted after the group settled; postgres %.2f CPU s of %.2f s wall)\n",
      k, n / w, n, p / hz, w }'
done
