#!/usr/bin/env bash
# Disk use of the embedded default's dedup state under a steady load, for several horizons:
# a release `meter serve` with ingest.dedup_horizon set short (lateness 10s, max_future 5s),
# `meter loadgen --rate RATE --random-ids` for ROUNDS horizons, and every half horizon the
# bytes of the log's id state (tables `ids*`) and of the store's (`seen*`), read with SQLite's
# dbstat, beside the sizes of the two files. Prints a Markdown table.
#   HORIZONS="20s 40s 80s" RATE=5000 ROUNDS=4 benches/dedup_disk.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-5000}
ROUNDS=${ROUNDS:-4}
source benches/lib.sh
meter_bin
state_kb() {
  python3 - "$1" "$2" <<'PY'
import sqlite3, sys
c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=30)
n = c.execute("SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name GLOB ?", (sys.argv[2],)).fetchone()[0]
print(n // 1024)
PY
}
echo "| horizon | seconds | events sent (at RATE) | log ids KiB | store seen KiB | usage.db KiB | events.db KiB |"
echo "|---|---:|---:|---:|---:|---:|---:|"
pid=""; dir=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; [ -n "$dir" ] && rm -rf "$dir"' EXIT
for h in ${HORIZONS:-20s 40s 80s}; do
  secs=${h%s}
  dir=$(mktemp -d)
  METER__INGEST__LATENESS=10s METER__INGEST__MAX_FUTURE=5s METER__INGEST__DEDUP_HORIZON="$h" \
    serve_embedded "$dir" "$dir"
  # Five seconds of events per loadgen run, each run's stamped when it starts (the lateness
  # window is short), until the last sample.
  (
    end=$(($(date +%s) + secs * ROUNDS + 5))
    while [ "$(date +%s)" -lt "$end" ]; do
      $BIN loadgen --url "$url" --key "$key" --events $((RATE * 5)) --tenants 100 --batch 100 --concurrency 8 \
        --rate "$RATE" --random-ids >/dev/null 2>>"$dir/load.err"
    done
  ) &
  load=$!
  start=$(date +%s)
  for i in $(seq 1 $((ROUNDS * 2))); do
    sleep $((secs / 2))
    t=$(($(date +%s) - start))
    echo "| $h | $t | $((t * RATE)) | $(state_kb "$dir/events.db" 'ids*') | $(state_kb "$dir/usage.db" 'seen*') |" \
      "$(($(stat -c %s "$dir/usage.db") / 1024)) | $(($(stat -c %s "$dir/events.db") / 1024)) |"
  done
  pkill -P "$load" 2>/dev/null || true; kill "$load" 2>/dev/null || true; wait "$load" 2>/dev/null || true
  grep -m1 "failed" "$dir/load.err" >&2 || true
  kill "$pid"; wait "$pid" || true; pid=""
  rm -rf "$dir"
done
