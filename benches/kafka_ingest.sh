#!/usr/bin/env bash
# Ingest to a Kafka log beside meter's Kafka producer appending the same records directly, in one
# run against one `meter dev kafka` mock cluster on this machine. 100 events per request, 32 in
# flight, 1000 tenants. The direct run goes first, before `meter serve` starts, so that nothing
# else consumes; the HTTP run has serve's aggregator consuming on the same two cores.
#   EVENTS=200000 benches/kafka_ingest.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-200000}
cargo build --release -q
BIN=target/release/meter
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
RUST_LOG=warn $BIN dev kafka --partitions 4 >"$dir/kafka.out" 2>"$dir/kafka.err" &
for _ in $(seq 100); do grep -q bootstrap "$dir/kafka.out" && break; sleep 0.1; done
bootstrap=$(sed -n 's/^kafka bootstrap: //p' "$dir/kafka.out")
common=(--events "$EVENTS" --tenants 1000 --batch 100 --concurrency 32)
direct=$($BIN loadgen --direct-kafka "$bootstrap" --key unused --id-prefix direct "${common[@]}" 2>/dev/null)
key=$($BIN keys create --role admin --data-dir "$dir" 2>/dev/null)
METER__LOG__URL="kafka://$bootstrap" METER__BOOTSTRAP_ADMIN_KEY=false RUST_LOG=warn \
  $BIN serve --data-dir "$dir" --listen 127.0.0.1:0 >"$dir/out" 2>"$dir/err" &
for _ in $(seq 100); do grep -q listening "$dir/out" && break; sleep 0.1; done
url=$(sed -n 's/^meter listening on //p' "$dir/out")
http=$($BIN loadgen --url "$url" --key "$key" --id-prefix http "${common[@]}" 2>/dev/null)
rate() { echo "$1" | sed -n 's/.*= \([0-9]*\) events\/s.*/\1/p'; }
echo "direct (meter's Kafka producer, no HTTP): $(echo "$direct" | head -2 | tr '\n' ' ')"
echo "HTTP ingest to Kafka:                     $(echo "$http" | head -2 | tr '\n' ' ')"
awk -v h="$(rate "$http")" -v d="$(rate "$direct")" 'BEGIN { printf "ratio HTTP / direct: %.2f\n", h / d }'
