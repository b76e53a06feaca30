#!/usr/bin/env bash
# The soak (issue 16): DURATION seconds (default 30 minutes) of mixed load at half of what the
# pipeline sustains, on the embedded default (BACKEND=embedded, one `meter serve`) or on Kafka +
# ClickHouse (BACKEND=kafka: `meter dev kafka` with 8 partitions, a private ClickHouse from
# deploy/clickhouse.sh, and `meter ingest`, `meter aggregate` and `meter sink` as processes of
# their own sharing one data directory).
#   - capacity: first, on a fresh set-up of the same kind, CAP_EVENTS events unpaced, timed until
#     counted; the soak sends half of that (RATE=N instead);
#   - ingest: `loadgen --duration`, TENANTS tenants, 100 events a request, 5 % of requests resent
#     byte for byte (each of their events must be counted once);
#   - reads: READS a second, usage reads and entitlement checks in turn, over the tenants;
#   - webhooks: an admin endpoint for every tenant's alerts on a local receiver that answers 500
#     to 10 % of deliveries (`benches/soak.py receiver`); every tenant is subscribed to
#     Professional first, so that entitlements answer and alerts come as usage crosses its marks;
#   - every EVERY seconds: each process's RSS and open files, the data directory's size and its
#     SQLite WAL files' (and ClickHouse's data directory's), events taken and counted,
#     deliveries; the load generator's p50/p99 in the same interval (`loadgen --csv`).
# At the end, once every event taken is counted (and, on Kafka, stored), every tenant's every
# meter is reconciled: what the load generator saw acknowledged (each event once) = the live
# counters = the store (the ClickHouse history, on Kafka); and every alert raised was delivered. Writes OUT/soak-BACKEND.csv and .png (plotted
# with matplotlib, installed from PyPI if missing) and prints the slopes and the reconciliation.
#   BACKEND=embedded DURATION=1800 benches/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BACKEND=${BACKEND:-embedded}
DURATION=${DURATION:-1800}
EVERY=${EVERY:-60}
TENANTS=${TENANTS:-1000}
READS=${READS:-20}
CAP_EVENTS=${CAP_EVENTS:-300000}
OUT=${OUT:-soak-out}
CH_PORT=${CH_PORT:-18923}
source benches/lib.sh
meter_bin
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q matplotlib >&2 || true
dir=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  for p in "$dir"/*.pid "$dir"/ch/pid; do if [ -f "$p" ]; then kill "$(cat "$p")" 2>/dev/null || true; fi; done
  for p in "$dir"/*.pid "$dir"/ch/pid; do
    if [ -f "$p" ]; then for _ in $(seq 100); do kill -0 "$(cat "$p")" 2>/dev/null || break; sleep 0.1; done; fi
  done
  rm -rf "$dir" || true
}
trap cleanup EXIT

# metric URL NAME [LABELS]: the sum of NAME's series at URL's /metrics (those matching LABELS).
metric() {
  { curl -fsS "$1/metrics" 2>/dev/null || true; } |
    awk -v m="$2" -v l="${3:-}" '$1 ~ "^"m"({|$)" && index($1, l) { s += $2 } END { printf "%d", s }'
}
# taken: events the log took (on Kafka, the ingest's new ones; duplicates within a request are not
# appended).
taken() {
  if [ "$BACKEND" = embedded ]; then metric "$url" meter_log_appended_events_total
  else metric "$url" meter_ingest_events_total 'outcome="new"'; fi
}
stop_all() {
  for p in "$dir"/*.pid; do kill "$(cat "$p")" 2>/dev/null || true; done
  for p in "$dir"/*.pid; do while kill -0 "$(cat "$p")" 2>/dev/null; do sleep 0.1; done; rm -f "$p"; done
}

# setup DATA: starts the set-up on data directory DATA; sets `url` (where events and reads go),
# `agg` (whose /metrics count), `key` (admin) and `procs` (names of the processes to sample).
setup() {
  local data=$1
  mkdir -p "$data"
  key=$("$BIN" keys create --role admin --data-dir "$data" 2>/dev/null)
  if [ "$BACKEND" = embedded ]; then
    export METER__BOOTSTRAP_ADMIN_KEY=false
    start meter serve --data-dir "$data" --listen 127.0.0.1:0
    url=$(address meter); agg=$url; procs="meter"
  else
    start broker dev kafka --partitions 8
    local db="soak$RANDOM"
    curl -fsS "$ch/" --data-binary "CREATE DATABASE $db" >/dev/null
    export METER__LOG__URL="kafka://$(address broker)" METER__LOG__PARTITIONS=8 METER__BOOTSTRAP_ADMIN_KEY=false \
      METER__STORE__URL="clickhouse://${ch#http://}/$db"
    "$BIN" migrate --data-dir "$data" >/dev/null
    start ingest ingest --data-dir "$data" --listen 127.0.0.1:0
    start aggregate aggregate --data-dir "$data" --listen 127.0.0.1:0
    start sink sink --data-dir "$data" --listen 127.0.0.1:0
    url=$(address ingest); agg=$(address aggregate); procs="ingest aggregate sink broker"
    # The clock starts once the aggregator and the sink own the partitions.
    for a in "$agg" "$(address sink)"; do
      for _ in $(seq 600); do [ "$(metric "$a" meter_aggregator_owned_partitions)" = 8 ] && break; sleep 0.1; done
      [ "$(metric "$a" meter_aggregator_owned_partitions)" = 8 ] || { echo "$a owns no partitions after 60 s" >&2; exit 1; }
    done
  fi
}

# counted_all: waits (up to 10 minutes) until the aggregator has counted every event the log
# took and, on Kafka, the sink has stored them.
counted_all() {
  local took seen stored
  for _ in $(seq 3000); do
    took=$(taken)
    seen=$(metric "$agg" meter_aggregator_events_total)
    stored=$seen
    [ "$BACKEND" = kafka ] && stored=$(metric "$(address sink)" meter_aggregator_events_total)
    [ "$took" -gt 0 ] && [ "$seen" -ge "$took" ] && [ "$stored" -ge "$took" ] && return 0
    sleep 0.2
  done
  echo "after 10 minutes: taken $took, counted $seen, stored $stored" >&2
  return 1
}

if [ "$BACKEND" = kafka ]; then
  ch=$(deploy/clickhouse.sh "$dir/ch" "$CH_PORT")
  procs_extra=clickhouse
fi

if [ -z "${RATE:-}" ]; then
  echo "== capacity: $CAP_EVENTS events unpaced on a fresh $BACKEND set-up, timed until counted"
  setup "$dir/cap"
  t0=$(date +%s.%N)
  "$BIN" loadgen --url "$url" --key "$key" --id-prefix cap --events "$CAP_EVENTS" --tenants "$TENANTS" \
    --batch 100 --concurrency 32 2>/dev/null | sed -n 1,2p
  counted_all
  RATE=$(echo "$CAP_EVENTS / ($(date +%s.%N) - $t0) / 2" | bc)
  echo "capacity $((RATE * 2)) events/s; the soak sends $RATE"
  stop_all
  rm -rf "$dir/cap"
fi

echo "== soak: $BACKEND, $RATE events/s for $DURATION s, $TENANTS tenants, $READS reads/s"
data="$dir/data"
setup "$data"
python3 benches/soak.py receiver "$dir/hooks" >"$dir/receiver.port" &
echo $! >"$dir/receiver.pid"
for _ in $(seq 50); do [ -s "$dir/receiver.port" ] && break; sleep 0.1; done
curl -fsS -H "authorization: Bearer $key" -H 'content-type: application/json' "$url/api/v1/webhooks" \
  -d "{\"url\": \"http://127.0.0.1:$(cat "$dir/receiver.port")/hook\"}" >/dev/null
echo "0 0 0" >"$dir/hooks"

# Every tenant on Professional before the load starts, so that its entitlements answer and its
# alerts come as its usage crosses 80, 90 and 100 % of each meter's included quantity.
for t in $(seq 0 $((TENANTS - 1))); do
  curl -fsS -H "authorization: Bearer $key" -H 'content-type: application/json' "$url/api/v1/subscriptions" \
    -d "$(printf '{"tenant": "tenant-%04d", "plan": "professional", "cycle": "monthly"}' "$t")" >/dev/null
done

# The sampler: one row every EVERY seconds, in step with the load generator's.
header="seconds"
for p in $procs ${procs_extra:-}; do header="$header,rss_mb_$p,fds_$p"; done
header="$header,data_bytes,wal_bytes"
[ "$BACKEND" = kafka ] && header="$header,clickhouse_bytes"
header="$header,events_taken,events_counted,alerts_raised,deliveries_accepted,deliveries_failed,alerts_delivered"
echo "$header" >"$dir/resources.csv"
# sample SECONDS: appends one row. Nothing in it may stop the sampler: files vanish while they
# are measured (ClickHouse merges its parts, SQLite drops its WAL).
size() { { du -sb "$1" 2>/dev/null || true; } | awk '{ print $1 + 0; exit }'; }
sample() {
  local row="$1" pid
  for p in $procs ${procs_extra:-}; do
    if [ "$p" = clickhouse ]; then pid=$(cat "$dir/ch/pid"); else pid=$(cat "$dir/$p.pid"); fi
    row="$row,$(awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status" 2>/dev/null),$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)"
  done
  row="$row,$(size "$data"),$({ find "$data" -name '*-wal' -printf '%s\n' 2>/dev/null || true; } | awk '{ s += $1 } END { printf "%d", s }')"
  if [ "$BACKEND" = kafka ]; then row="$row,$(size "$dir/ch/data")"; fi
  echo "$row,$(taken),$(metric "$agg" meter_aggregator_events_total),$(metric "$agg" meter_alerts_raised_total),$(tr ' ' ',' <"$dir/hooks")" \
    >>"$dir/resources.csv"
}
t_start=$(date +%s)
(
  set +e
  for i in $(seq 1 $((DURATION / EVERY))); do
    wait_s=$(( t_start + i * EVERY - $(date +%s) ))
    if [ "$wait_s" -gt 0 ]; then sleep "$wait_s"; fi
    sample $((i * EVERY)) || echo "sample at $((i * EVERY)) s failed" >&2
  done
) &
sampler=$!

"$BIN" loadgen --url "$url" --key "$key" --id-prefix soak --tenants "$TENANTS" --batch 100 --concurrency 32 \
  --rate "$RATE" --duration "$DURATION" --resend-percent 5 --reads-per-second "$READS" \
  --csv "$dir/loadgen.csv" --every "$EVERY" --acknowledged "$dir/acked.json" 2>"$dir/loadgen.err" ||
  { echo "the load generator failed (the rest is still measured):" >&2; grep -v '^loadgen: [0-9]' "$dir/loadgen.err" | tail -5 >&2; }
wait "$sampler" || true
counted_all
echo "counted: $(metric "$agg" meter_aggregator_events_total) of $(taken) taken"
# Deliveries still retrying (the receiver fails 10 %) get up to two minutes.
for _ in $(seq 120); do
  [ "$(cut -d' ' -f3 "$dir/hooks")" -ge "$(metric "$agg" meter_alerts_raised_total)" ] && break
  sleep 1
done
echo "alerts raised $(metric "$agg" meter_alerts_raised_total); distinct alerts delivered $(cut -d' ' -f3 "$dir/hooks")"
sample $(( $(date +%s) - t_start )) || echo "the last sample failed" >&2
METER_KEY=$key python3 benches/soak.py report "$OUT" "soak-$BACKEND" "$dir/loadgen.csv" "$dir/resources.csv" \
  "$dir/acked.json" "$url" store
