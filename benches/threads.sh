#!/usr/bin/env bash
# CPU seconds of each thread of a release `meter serve` on the embedded default, once the
# aggregator has counted every event one `meter loadgen` run sent (time-ordered ids, 100 events
# per request, 32 in flight): the HTTP workers, the log writer, the aggregator and the
# checkpointers apart, where benches/ingest.sh gives only their sum. Each figure is the thread's
# CPU since the server started; a thread that ended before the count (an idle tokio blocking-pool
# thread) is not in it: the last field, the process's own total, says how much that left out.
#   EVENTS=300000 TENANTS=10000 benches/threads.sh
# BIN runs another build; LOADGEN (default BIN) is the build whose load generator sends the events.
# The last line is the server's peak resident memory.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-300000}
TENANTS=${TENANTS:-1}
source benches/lib.sh
meter_bin
LOADGEN=${LOADGEN:-$BIN}
dir=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; }; rm -rf "$dir"' EXIT
serve_embedded "$dir" "$dir"
out=$("$LOADGEN" loadgen --url "$url" --key "$key" --events "$EVENTS" --tenants "$TENANTS" --batch 100 --concurrency 32 2>"$dir/loadgen.err") ||
  { cat "$dir/loadgen.err" >&2; exit 1; }
echo "${out%%$'\n'*}"
wait_counted "$url" || true
sleep 0.5
hz=$(getconf CLK_TCK)
# Threads by name (the kernel keeps 15 characters of it), CPU seconds summed over those that
# share one; utime and stime are the 12th and 13th fields after the name's closing parenthesis.
ticks() { sed 's/^.*) //' "$1" | awk '{ print $12 + $13 }'; }
{
  for t in /proc/"$pid"/task/*; do printf '%s %s\n' "$(tr ' ' '_' <"$t/comm")" "$(ticks "$t/stat")"; done
  printf 'process %s\n' "$(ticks /proc/"$pid"/stat)"
} | awk -v hz="$hz" '{ s[$1] += $2 } END { for (k in s) if (k != "process") printf "%s=%.2f ", k, s[k] / hz; printf "process=%.2f\n", s["process"] / hz }'
# The server's peak resident memory (the counters' cache grows with the tenants counted).
awk '/VmHWM/ { printf "peak RSS %d MB\n", $2 / 1024 }' /proc/"$pid"/status
