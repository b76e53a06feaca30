#!/usr/bin/env bash
# Ingest latency once the dedup horizon has passed (generations dropped all the while): `meter
# serve` on a fresh data directory with a 2-minute horizon (lateness 1 minute, max_future 1
# minute), `loadgen --rate RATE --duration DURATION` (1,000 tenants, 100 events a request, 32 in
# flight), the p50/p99 of every 30 s in OUT/TAG.csv, the run's totals in OUT/TAG.out, the server's
# log (the dedup state's seals, drops and pieces, with their times) in OUT/TAG.err and its CPU
# time in OUT/TAG.cpu.
#   BIN=/tmp/meter-x OUT=/tmp/horizon benches/horizon.sh x-1
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:?a tag for the output files}
RATE=${RATE:-30000}
DURATION=${DURATION:-300}
OUT=${OUT:-horizon-out}
source benches/lib.sh
meter_bin
mkdir -p "$OUT"
dir=$(mktemp -d)
trap '[ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; sleep 1; rm -rf "$dir"' EXIT
mkdir -p "$dir/data"
key=$("$BIN" keys create --role admin --data-dir "$dir/data" 2>/dev/null)
METER__INGEST__LATENESS=1m METER__INGEST__MAX_FUTURE=1m METER__INGEST__DEDUP_HORIZON=2m \
  METER__BOOTSTRAP_ADMIN_KEY=false RUST_LOG="warn,meter_sqlite::dedup=debug" \
  "$BIN" serve --data-dir "$dir/data" --listen 127.0.0.1:0 >"$dir/out" 2>"$OUT/$TAG.err" &
pid=$!
for _ in $(seq 100); do grep -q listening "$dir/out" && break; sleep 0.1; done
url=$(sed -n 's/^meter listening on //p' "$dir/out")
"$BIN" loadgen --url "$url" --key "$key" --id-prefix horizon --tenants 1000 --batch 100 --concurrency 32 \
  --rate "$RATE" --duration "$DURATION" --csv "$OUT/$TAG.csv" --every 30 >"$OUT/$TAG.out" 2>/dev/null
ps -o cputime= -p "$pid" >"$OUT/$TAG.cpu"
cat "$OUT/$TAG.out"
