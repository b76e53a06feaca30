#!/usr/bin/env bash
# Disk use of the embedded default under a steady load: a release `meter serve` on an empty data
# directory and `meter loadgen --events $EVENTS --tenants $TENANTS --random-ids`, sampling the data
# directory every second during the run and for $AFTER seconds after it. Prints the throughput,
# the largest sample, the databases' size (main files, without their WALs) at the end, and the
# bound the embedded default keeps to: twice the databases plus 128 MiB, at the end and (the
# last column) at every sample, against the databases' size at that sample.
#   EVENTS=1000000 TENANTS=10000 benches/disk.sh
# BIN runs another build (another commit's, side by side) instead of this one's.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-1000000}
TENANTS=${TENANTS:-10000}
AFTER=${AFTER:-10}
source benches/lib.sh
meter_bin
dir=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
serve_embedded "$dir/data" "$dir"
used() { du -sb "$dir/data" | cut -f1; }
dbs() { find "$dir/data" -name '*.db' -printf '%s\n' | awk '{s += $1} END {print s}'; }
( while kill -0 "$pid" 2>/dev/null; do echo "$(used) $(dbs)" >>"$dir/samples"; sleep 1; done ) &
sampler=$!
out=$($BIN loadgen --url "$url" --key "$key" --events "$EVENTS" --tenants "$TENANTS" --batch 100 --concurrency 32 --random-ids 2>/dev/null)
sleep "$AFTER"
final=$(used)
databases=$(dbs)
kill "$pid"; wait "$pid" || true
kill "$sampler" 2>/dev/null || true
largest=$(cut -d' ' -f1 "$dir/samples" | sort -n | tail -1)
# Samples over their own bound (twice the databases at that moment plus 128 MiB).
over=$(awk '$1 > 2 * $2 + 128 * 1048576 { n++ } END { print n + 0 }' "$dir/samples")
samples=$(wc -l <"$dir/samples")
rate=$(echo "$out" | sed -n 's/.*= \([0-9]*\) events\/s.*/\1/p')
mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
bound=$((2 * databases + 128 * 1048576))
echo "| events/s | largest sample MiB | after the run MiB | databases MiB | bound MiB | within | samples over their own bound |"
echo "|---:|---:|---:|---:|---:|---|---:|"
echo "| $rate | $(mib "$largest") | $(mib "$final") | $(mib "$databases") | $(mib "$bound") | $([ "$largest" -le "$bound" ] && echo yes || echo NO) | $over of $samples |"
