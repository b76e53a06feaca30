#!/usr/bin/env bash
# What one counted id costs the Postgres server to record (issue 15's aim of half SQLite's events
# per CPU-second leaves the server about 3.7 µs an event for everything): benches/seen_floor.sql,
# ROUNDS times, on a private cluster with fsync on (deploy/postgres.sh), or on PG_URL; with the
# server's JIT off, as meter's connections run (PGOPTIONS="-c jit=on" to see it on).
#   ROUNDS=3 benches/seen_floor.sh
# SQL=benches/seen_partitions.sql runs that file instead: a lookup's cost by the number of arrival
# partitions it searches.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
export PGOPTIONS=${PGOPTIONS:--c jit=off}
if [ -z "${PG_URL:-}" ]; then
  dir=$(mktemp -d /tmp/meter-bench-seen.XXXXXX)
  chmod 755 "$dir"
  PG_URL=$(METER_PG_FSYNC=on deploy/postgres.sh "$dir/pg" "${PG_PORT:-18797}")
  trap 'kill -INT "$(cat "$dir/pg/pid")" 2>/dev/null || true' EXIT
fi
for r in $(seq "$ROUNDS"); do
  echo "round $r"
  psql -q "$PG_URL" -f "${SQL:-benches/seen_floor.sql}" 2>&1 | sed -n 's/^.*NOTICE:  //p'
done
