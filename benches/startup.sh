#!/usr/bin/env bash
# Start-up of `meter serve` on a data directory that remembers many ids (embedded default).
# FILL (a `meter` binary; default this tree's release build) fills an empty data directory with
# EVENTS random-id events from one tenant through `meter loadgen`; then each build in BINS is
# started ROUNDS times on that directory, in turn, and timed from its launch to its "listening"
# line, with its resident memory read right after. Prints a Markdown table.
#   EVENTS=3000000 ROUNDS=3 BINS="/tmp/meter-a /tmp/meter-b" benches/startup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-3000000}
ROUNDS=${ROUNDS:-3}
if [ -z "${FILL:-}" ] || [ -z "${BINS:-}" ]; then
  cargo build --release -q
fi
FILL=${FILL:-target/release/meter}
BINS=${BINS:-target/release/meter}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
key=$($FILL keys create --role admin --data-dir "$dir" 2>/dev/null)

# Starts $1 on the data directory; sets `pid`, `url` and `took` (seconds to "listening").
start() {
  local t0 t1
  t0=$(date +%s.%N)
  METER__BOOTSTRAP_ADMIN_KEY=false RUST_LOG=warn "$1" serve --data-dir "$dir" --listen 127.0.0.1:0 >"$dir/out" 2>"$dir/err" &
  pid=$!
  for _ in $(seq 3000); do grep -q listening "$dir/out" && break; sleep 0.01; done
  t1=$(date +%s.%N)
  url=$(sed -n 's/^meter listening on //p' "$dir/out")
  [ -n "$url" ] || { echo "$1 did not start: $(cat "$dir/err")" >&2; exit 1; }
  took=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
}

start "$FILL"
$FILL loadgen --url "$url" --key "$key" --events "$EVENTS" --tenants 1 --batch 100 --concurrency 32 --random-ids >/dev/null 2>&1
sleep 2
kill "$pid"; wait "$pid" || true
echo "$EVENTS random ids from one tenant; files: $(du -sh "$dir" | cut -f1)"
if command -v sqlite3 >/dev/null; then
  for f in events usage; do
    echo "$f.db: $(sqlite3 "$dir/$f.db" "SELECT count(*) FROM sqlite_master WHERE name GLOB '*_g[0-9]*'") generations"
  done
fi
echo
echo "| round | build | to listening s | RSS MB |"
echo "|---:|---|---:|---:|"
for r in $(seq "$ROUNDS"); do
  for b in $BINS; do
    start "$b"
    rss=$(awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$pid/status")
    kill "$pid"; wait "$pid" || true
    echo "| $r | $b | $took | $rss |"
  done
done
