#!/usr/bin/env bash
# CPU seconds of each thread of a release `meter serve` on the embedded default, once the
# aggregator has counted every event one `meter loadgen` run sent (time-ordered ids, 100 events
# per request, 32 in flight): the HTTP workers, the log writer, the aggregator and the
# checkpointers apart, where benches/ingest.sh gives only their sum. Each figure is the thread's
# CPU since the server started; a thread that ended before the count (an idle tokio blocking-pool
# thread) is not in it: the last field, the process's own total, says how much that left out.
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
pid=""
trap '[ -n "$pid" ] && { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; }; rm -rf "$dir"' EXIT
key=$("$BIN" keys create --role admin --data-dir "$dir" 2>/dev/null)
METER__BOOTSTRAP_ADMIN_KEY=false RUST_LOG=warn "$BIN" serve --data-dir "$dir" --listen 127.0.0.1:0 >"$dir/out" 2>"$dir/err" &
pid=$!
for _ in $(seq 100); do grep -q listening "$dir/out" && break; sleep 0.1; done
url=$(sed -n 's/^meter listening on //p' "$dir/out")
[ -n "$url" ] || { echo "meter serve did not start: $(cat "$dir/err")" >&2; exit 1; }
out=$("$LOADGEN" loadgen --url "$url" --key "$key" --events "$EVENTS" --tenants "$TENANTS" --batch 100 --concurrency 32 2>"$dir/loadgen.err") ||
  { cat "$dir/loadgen.err" >&2; exit 1; }
echo "${out%%$'\n'*}"
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
# Threads by name (the kernel keeps 15 characters of it), CPU seconds summed over those that
# share one; utime and stime are the 12th and 13th fields after the name's closing parenthesis.
ticks() { sed 's/^.*) //' "$1" | awk '{ print $12 + $13 }'; }
{
  for t in /proc/"$pid"/task/*; do printf '%s %s\n' "$(tr ' ' '_' <"$t/comm")" "$(ticks "$t/stat")"; done
  printf 'process %s\n' "$(ticks /proc/"$pid"/stat)"
} | awk -v hz="$hz" '{ s[$1] += $2 } END { for (k in s) if (k != "process") printf "%s=%.2f ", k, s[k] / hz; printf "process=%.2f\n", s["process"] / hz }'
