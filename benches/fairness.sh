#!/usr/bin/env bash
# Overload and fairness on the embedded default (issue 16). 100 tenants send 200 events/s each
# (one tenant's 20 events a request, 20,000 events/s in all, `loadgen --tenant-per-request`) for
# DURATION seconds: alone ("unloaded"), then while one more tenant, with its own key, floods
# FLOOD events/s (100 a request). Every tenant's quota is QUOTA events/s
# (`METER__INGEST__QUOTAS__DEFAULT__EVENTS_PER_SECOND`; QUOTA=0 sets none, to see the flood land).
# Each round starts a fresh `meter serve` for each run, alternating. Prints, per run, the others'
# request p50/p99 and failed requests, and the flooder's events acknowledged and requests answered
# other than 2xx (the 429s of its quota).
#   ROUNDS=3 DURATION=20 benches/fairness.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-3}
QUOTA=${QUOTA:-2000}
FLOOD=${FLOOD:-20000}
# The flood starts LEAD seconds before the others, so that its load generator has built its
# requests (before its clock starts) and is sending by then.
LEAD=${LEAD:-5}
# BIN runs another build instead of this one's; LOADGEN (default BIN) sends the events.
source benches/lib.sh
meter_bin
LOADGEN=${LOADGEN:-$BIN}
if [ "$QUOTA" != 0 ]; then export METER__INGEST__QUOTAS__DEFAULT__EVENTS_PER_SECOND=$QUOTA; fi
pid=""; dir=""; flood_pid=""
trap '[ -n "$flood_pid" ] && kill "$flood_pid" 2>/dev/null; [ -n "$pid" ] && kill "$pid" 2>/dev/null; [ -n "$dir" ] && rm -rf "$dir"' EXIT

# field NAME FILE: the number after "NAME" in a loadgen report.
field() { sed -n "s/.*$1 \([0-9.]*\).*/\1/p" "$2" | head -1; }

echo "quota $QUOTA events/s a tenant; 100 tenants × 200 events/s; flood $FLOOD events/s; $DURATION s a run"
echo "| round | run | others p50 ms | others p99 ms | others failed requests | flood events acknowledged | flood requests not 2xx |"
echo "|---|---|---:|---:|---:|---:|---:|"
for round in $(seq "$ROUNDS"); do
  for run in unloaded flooded; do
    dir=$(mktemp -d)
    serve_embedded "$dir" "$dir"
    flood_out="$dir/flood.out"
    : >"$flood_out"
    if [ "$run" = flooded ]; then
      flood_key=$("$BIN" keys create --role ingest --tenant flood-0000 --data-dir "$dir" 2>/dev/null)
      "$LOADGEN" loadgen --url "$url" --key "$flood_key" --id-prefix "flood$round" --tenants 1 \
        --tenant-prefix flood- --batch 100 --concurrency 32 --rate "$FLOOD" \
        --events $((FLOOD * (DURATION + LEAD + 1))) >"$flood_out" 2>"$dir/flood.err" &
      flood_pid=$!
      sleep "$LEAD"
    fi
    "$LOADGEN" loadgen --url "$url" --key "$key" --id-prefix "calm$round" --tenants 100 --tenant-per-request \
      --batch 20 --concurrency 32 --rate 20000 --events $((20000 * DURATION)) >"$dir/calm.out" 2>"$dir/calm.err" || true
    if [ -n "$flood_pid" ]; then wait "$flood_pid" || true; flood_pid=""; fi
    flood_acked=$(sed -n 's/^events: \([0-9]*\) acknowledged.*/\1/p' "$flood_out")
    flood_refused=$(sed -n 's/^errors: \([0-9]*\)/\1/p' "$flood_out")
    echo "| $round | $run | $(field p50 "$dir/calm.out") | $(field p99 "$dir/calm.out") | $(sed -n 's/^errors: //p' "$dir/calm.out") | ${flood_acked:--} | ${flood_refused:--} |"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    rm -rf "$dir"; dir=""
  done
done
