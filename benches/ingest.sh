#!/usr/bin/env bash
# End-to-end ingest on the embedded default: a release `meter serve` and `meter loadgen` on this
# machine, 100 events per Lago batch request, 32 requests in flight, for 1, 10, 100 and 1000 tenants,
# with time-ordered ids (like ULIDs) and random ids (like UUIDv4). Prints a Markdown table.
#   EVENTS=300000 benches/ingest.sh
# PLAN=starter subscribes every tenant to that plan first (Starter's agent invocations are a
# hard limit, checked on every request); IDS and TENANTS choose the rows:
#   PLAN=starter IDS=ordered TENANTS="1 1000" benches/ingest.sh
# RATE paces the load generator at that many events/s (default: as fast as the server answers),
# where a commit carries few ids: at 20,000 random ids/s the dedup's moves go MOVE_CHUNK at a time.
#   RATE=20000 EVENTS=400000 IDS=random TENANTS=100 benches/ingest.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-300000}
# BIN runs another build (another commit's, side by side) instead of this one's; LOADGEN (default
# BIN) is the build whose load generator sends the events, the same for every build compared.
source benches/lib.sh
meter_bin
LOADGEN=${LOADGEN:-$BIN}
echo "| ids | tenants | events/s | request p50 ms | request p99 ms | server CPU µs/event |"
echo "|---|---:|---:|---:|---:|---:|"
PLAN=${PLAN:-}
pid=""; dir=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; [ -n "$dir" ] && rm -rf "$dir"' EXIT
for ids in ${IDS:-ordered random}; do
  for tenants in ${TENANTS:-1 10 100 1000}; do
    dir=$(mktemp -d)
    serve_embedded "$dir" "$dir"
    if [ -n "$PLAN" ]; then
      for t in $(seq 0 $((tenants - 1))); do
        printf '{"tenant": "tenant-%04d", "plan": "%s", "cycle": "monthly"}' "$t" "$PLAN" |
          curl -fsS -o /dev/null "$url/api/v1/subscriptions" -H "Authorization: Bearer $key" \
            -H 'Content-Type: application/json' --data-binary @-
      done
      # The plans reach ingest's hard limits within a second.
      sleep 2
    fi
    flag=""; [ "$ids" = random ] && flag="--random-ids"
    [ -n "${RATE:-}" ] && flag="$flag --rate $RATE"
    cpu0=$(awk '{print $14+$15}' /proc/$pid/stat)
    out=$($LOADGEN loadgen --url "$url" --key "$key" --events "$EVENTS" --tenants "$tenants" --batch 100 --concurrency 32 $flag 2>/dev/null)
    # Let the aggregator count every event the log took, so that its CPU is counted too (until
    # 2026-12-02 this slept 2 s, which left uncounted whatever it had not reached by then).
    wait_counted "$url" || true
    sleep 0.5
    cpu1=$(awk '{print $14+$15}' /proc/$pid/stat)
    kill "$pid"; wait "$pid" || true; pid=""
    rate=$(echo "$out" | sed -n 's/.*= \([0-9]*\) events\/s.*/\1/p')
    p50=$(echo "$out" | sed -n 's/.*p50 \([0-9.]*\).*/\1/p')
    p99=$(echo "$out" | sed -n 's/.*p99 \([0-9.]*\).*/\1/p')
    hz=$(getconf CLK_TCK)
    us=$(awk -v t=$((cpu1 - cpu0)) -v hz="$hz" -v n="$EVENTS" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
    echo "| $ids | $tenants | $rate | $p50 | $p99 | $us |"
    rm -rf "$dir"
  done
done
