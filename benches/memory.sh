#!/usr/bin/env bash
# The embedded default's memory under a steady load with nothing scraping /metrics (as where no
# Prometheus is set up): `meter serve` on a fresh data directory, `loadgen --rate RATE` for
# DURATION seconds (TENANTS tenants, 100 events a request, 32 in flight), and the server's RSS
# read from /proc every EVERY seconds. /metrics is read once, after the last sample, to check
# that every event taken was counted. Prints one row per sample and the least-squares slope of
# RSS after WARM seconds, in MB a minute and bytes an event taken. METER__* settings in the
# environment reach the server (a short METER__INGEST__DEDUP_HORIZON, say).
#   RATE=30000 DURATION=300 benches/memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-30000}
DURATION=${DURATION:-300}
EVERY=${EVERY:-30}
WARM=${WARM:-60}
TENANTS=${TENANTS:-1000}
source benches/lib.sh
meter_bin
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; sleep 1; rm -rf "$dir"' EXIT
mkdir -p "$dir/data"
serve_embedded "$dir/data" "$dir"
"$BIN" loadgen --url "$url" --key "$key" --id-prefix mem --tenants "$TENANTS" --batch 100 --concurrency 32 \
  --rate "$RATE" --duration "$DURATION" >"$dir/loadgen.out" 2>"$dir/loadgen.err" &
lg=$!
t0=$(date +%s)
echo "seconds,rss_mb"
for i in $(seq 1 $((DURATION / EVERY))); do
  wait_s=$(( t0 + i * EVERY - $(date +%s) ))
  if [ "$wait_s" -gt 0 ]; then sleep "$wait_s"; fi
  echo "$((i * EVERY)),$(awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status")"
done | tee "$dir/rss.csv"
wait "$lg" || { echo "the load generator failed:" >&2; tail -5 "$dir/loadgen.err" >&2; exit 1; }
wait_counted "$url"
python3 - "$dir/rss.csv" "$WARM" "$took" "$DURATION" <<'PY'
import sys
rows = [tuple(map(float, l.split(","))) for l in open(sys.argv[1]) if l[0].isdigit()]
warm, took, duration = float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
pts = [(s, r) for s, r in rows if s >= warm]
n = len(pts); mx = sum(s for s, _ in pts) / n; my = sum(r for _, r in pts) / n
slope = sum((s - mx) * (r - my) for s, r in pts) / sum((s - mx) ** 2 for s, _ in pts)  # MB per second
per_event = slope * 1e6 / (took / duration)
print(f"events taken and counted {took}; RSS after {warm:.0f} s: {min(r for _, r in pts):.1f}-{max(r for _, r in pts):.1f} MB, "
      f"slope {slope * 60:+.1f} MB/min, {per_event:+.1f} bytes an event taken")
PY
