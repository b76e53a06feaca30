#!/usr/bin/env bash
# The Kafka figures of BENCHMARKS.md, in one run against `meter dev kafka` mock clusters (8
# partitions) on this machine (a second one for step 1's baseline only):
#   1. ingest: meter's Kafka producer appending parsed events directly (`loadgen --direct-kafka`);
#      the HTTP baseline (`meter dev http-baseline`: axum, serde_json into the log's event type,
#      the same producer and settings; no key, no validation, no answer body), on a mock cluster
#      of its own so that its events stay out of the backlog below; then `meter ingest` over HTTP;
#      the same events, batching (100 per request) and concurrency (32) in all three. The figures
#      are HTTP / baseline and HTTP / direct;
#   2. aggregator: `meter aggregate` counts the backlog both runs left in the topic; events/s of
#      wall time, and per core (events over the process's CPU seconds);
#   3. event-to-counter latency: a fresh `meter aggregate` while `loadgen --rate` sends half of the
#      slower stage's rate for 20 s; p50/p99 from its histogram `meter_aggregator_event_to_counter_seconds`,
#      over the 20 s and over the first 10 s, and the mock broker's CPU in each half (see step 3).
#   EVENTS=500000 benches/kafka.sh      (RATE=N sets the rate of step 3 instead)
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-500000}  # the mock keeps ~5 MB per partition: 2 × EVENTS must fit in 8 of them
# BIN runs another build (another commit's, side by side) instead of this one's; LOADGEN (default
# BIN) is the build whose load generator sends the events, the same for every build compared.
source benches/lib.sh
meter_bin
LOADGEN=${LOADGEN:-$BIN}
# BASELINE (default BIN) is the build whose `dev http-baseline` runs step 1's baseline, so that a
# build older than the baseline can be measured against the same one.
BASELINE=${BASELINE:-$BIN}
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT

rate() { echo "$1" | sed -n 's/^[^=]*= \([0-9]*\) events\/s.*/\1/p'; }

start kafka dev kafka --partitions 8
bootstrap=$(address kafka)
export METER__LOG__URL="kafka://$bootstrap" METER__LOG__PARTITIONS=8 METER__BOOTSTRAP_ADMIN_KEY=false
common=(--events "$EVENTS" --tenants 1000 --batch 100 --concurrency 32 --partitions 8)

echo "== 1. ingest, $EVENTS events"
direct=$($LOADGEN loadgen --direct-kafka "$bootstrap" --key unused --id-prefix direct "${common[@]}" 2>/dev/null)
start kafka2 dev kafka --partitions 8
BIN=$BASELINE start baseline dev http-baseline --kafka "$(address kafka2)" --partitions 8 --listen 127.0.0.1:0
baseline=$($LOADGEN loadgen --url "$(address baseline)" --key unused --id-prefix base "${common[@]}" 2>/dev/null)
for name in baseline kafka2; do
  kill -TERM "$(cat "$dir/$name.pid")" 2>/dev/null || true; wait "$(cat "$dir/$name.pid")" 2>/dev/null || true
done
key=$($BIN keys create --role admin --data-dir "$dir" 2>/dev/null)
start ingest ingest --data-dir "$dir" --listen 127.0.0.1:0
url=$(address ingest)
http=$($LOADGEN loadgen --url "$url" --key "$key" --id-prefix http "${common[@]}" 2>/dev/null)
echo "direct (meter's Kafka producer, no HTTP): $(echo "$direct" | head -2 | tr '\n' ' ')"
echo "HTTP baseline (parse and produce only):   $(echo "$baseline" | head -2 | tr '\n' ' ')"
echo "HTTP ingest to Kafka (meter ingest):      $(echo "$http" | head -2 | tr '\n' ' ')"
awk -v h="$(rate "$http")" -v b="$(rate "$baseline")" -v d="$(rate "$direct")" \
  'BEGIN { printf "ratio HTTP / baseline: %.2f; HTTP / direct: %.2f; baseline / direct: %.2f\n", h / b, h / d, b / d }'

echo "== 2. aggregator on the backlog of $((2 * EVENTS)) events"
start agg aggregate --data-dir "$dir" --listen 127.0.0.1:0
pid=$(cat "$dir/agg.pid"); aurl=$(address agg)
# The clock starts once the group has given it the partitions.
until curl -s "$aurl/metrics" | grep -q '^meter_aggregator_owned_partitions{[^}]*} 8'; do sleep 0.05; done
t0=$(date +%s.%N); ticks0=$(cpu_ticks "$pid"); before=$(counted "$aurl")
while [ "$(counted "$aurl")" -lt $((2 * EVENTS)) ]; do sleep 0.1; done
t1=$(date +%s.%N); ticks=$(( $(cpu_ticks "$pid") - ticks0 )); hz=$(getconf CLK_TCK)
aggregated=$(awk -v n=$((2 * EVENTS - before)) -v w="$(echo "$t1 - $t0" | bc)" -v c="$ticks" -v hz="$hz" 'BEGIN {
  printf "counted %d events in %.2f s wall = %.0f events/s; %.2f CPU s = %.0f events/s per core\n", n, w, n / w, c / hz, n / (c / hz) }')
echo "$aggregated"
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true

# The pipeline's maximum is its slower stage, measured alone above.
slowest=$(rate "$http"); agg_rate=$(rate "$aggregated")
[ "$agg_rate" -lt "$slowest" ] && slowest=$agg_rate
half=${RATE:-$(( slowest / 2 ))}
echo "== 3. event-to-counter latency at $half events/s (half the slower stage, $slowest) for 20 s"
start agg2 aggregate --data-dir "$dir" --listen 127.0.0.1:0
aurl=$(address agg2)
until curl -s "$aurl/metrics" | grep -q '^meter_aggregator_owned_partitions{[^}]*} 8'; do sleep 0.2; done
# librdkafka's mock broker finds a fetch's offset by walking the partition's message sets from
# the oldest ("FIXME: Maintain an index"), so its CPU grows with every set produced: sampled
# below for each half of the 20 s, with the percentiles of the first half, before it dominates.
kafka_pid=$(cat "$dir/kafka.pid"); agg_pid=$(cat "$dir/agg2.pid"); hz=$(getconf CLK_TCK)
k0=$(cpu_ticks "$kafka_pid"); a0=$(cpu_ticks "$agg_pid"); t0=$(date +%s.%N)
( sleep 10; curl -s "$aurl/metrics" >"$dir/half.metrics"; cpu_ticks "$kafka_pid" >"$dir/half.ticks" ) &
sampler=$!
paced=$($LOADGEN loadgen --url "$url" --key "$key" --id-prefix paced --rate "$half" --events $((half * 20)) \
  --tenants 1000 --batch 100 --concurrency 32 2>/dev/null)
k2=$(cpu_ticks "$kafka_pid"); a2=$(cpu_ticks "$agg_pid"); t2=$(date +%s.%N); wait "$sampler"
echo "$paced" | head -2
# percentiles WHAT < metrics: p50 and p99 of event to counter, bucket-interpolated.
percentiles() {
  awk -v what="$1" '
  /^meter_aggregator_event_to_counter_seconds_bucket/ {
    match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5); n++; bound[n] = le; count[n] = $2 }
  END {
    total = count[n]
    for (q = 1; q <= 2; q++) {
      want = (q == 1 ? 0.5 : 0.99) * total; prev_b = 0; prev_c = 0
      for (i = 1; i <= n; i++) if (count[i] >= want) {
        v = bound[i] == "+Inf" ? prev_b : prev_b + (bound[i] - prev_b) * (want - prev_c) / (count[i] - prev_c); break }
        else { prev_b = bound[i]; prev_c = count[i] }
      printf "event to counter p%s%s: %.1f ms (bucket-interpolated, %d events)\n", (q == 1 ? "50" : "99"), what, v * 1000, total }
  }'
}
curl -s "$aurl/metrics" | percentiles ""
percentiles " over the first 10 s" <"$dir/half.metrics"
awk -v a="$k0" -v b="$(cat "$dir/half.ticks")" -v c="$k2" -v hz="$hz" 'BEGIN {
  printf "mock broker CPU: %.0f%% of a core in the first 10 s, %.0f%% in the last 10 s\n", (b - a) / hz * 10, (c - b) / hz * 10 }'
awk -v a="$a0" -v b="$a2" -v hz="$hz" -v w="$(echo "$t2 - $t0" | bc)" 'BEGIN {
  printf "aggregator CPU: %.0f%% of a core\n", (b - a) / hz / w * 100 }'
