#!/usr/bin/env bash
# CPU seconds of each thread of a release `meter serve` on the embedded default, once the
# aggregator has counted every event one `meter loadgen` run sent (time-ordered ids, 100 events
# per request, 32 in flight): the HTTP workers, the log writer, the aggregator and the
# checkpointers apart, where benches/ingest.sh gives only their sum.
#   EVENTS=300000 TENANTS=10000 benches/threads.sh
# BIN runs another build; LOADGEN (default BIN) is the build whose load generator sends the events.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-300000}
TENANTS=${TENANTS:-1}
if [ -z "${BIN:-}" ]; then
  cargo build --release -q
  BIN=target/release/meter
fi
LOADGEN=${LOADGEN:-$BIN}
dir=$(mktemp -d)
key=$($BIN keys create --role admin --data-dir "$dir" 2>/dev/null)
METER__BOOTSTRAP_ADMIN_KEY=false RUST_LOG=warn $BIN serve --data-dir "$dir" --listen 127.0.0.1:0 >"$dir/out" 2>"$dir/err" &
pid=$!
for _ in $(seq 100); do grep -q listening "$dir/out" && break; sleep 0.1; done
url=$(sed -n 's/^meter listening on //p' "$dir/out")
$LOADGEN loadgen --url "$url" --key "$key" --events "$EVENTS" --tenants "$TENANTS" --batch 100 --concurrency 32 2>/dev/null | head -1
caught_up=""
for _ in $(seq 3000); do
  m=$(curl -fsS "$url/metrics" 2>/dev/null || true)
  took=$(echo "$m" | awk '/^meter_log_appended_events_total/ { s += $2 } END { printf "%d", s }')
  seen=$(echo "$m" | awk '/^meter_aggregator_events_total/ { s += $2 } END { printf "%d", s }')
  if [ "$took" -gt 0 ] && [ "$seen" -ge "$took" ]; then caught_up=1; break; fi
  sleep 0.2
done
[ -n "$caught_up" ] || echo "warning: after 10 minutes the aggregator had counted $seen of $took events" >&2
sleep 0.5
hz=$(getconf CLK_TCK)
# Threads by name (the kernel keeps 15 characters of it), CPU seconds summed over those that share one.
for t in /proc/$pid/task/*; do
  printf '%s %s\n' "$(tr ' ' '_' <"$t/comm")" "$(awk '{ print $14 + $15 }' "$t/stat")"
done | awk -v hz="$hz" '{ s[$1] += $2 } END { for (k in s) printf "%s=%.2f ", k, s[k] / hz; print "" }'
kill "$pid"; wait "$pid" || true
rm -rf "$dir"
