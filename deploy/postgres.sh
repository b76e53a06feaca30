#!/usr/bin/env bash
# Starts a private Postgres server (a cluster of its own) for development and tests, installing
# Debian's `postgresql` package when no server is installed. Prints the server's URL
# (postgres://meter:PASSWORD@127.0.0.1:PORT/postgres) on stdout.
#
#   deploy/postgres.sh DIR [PORT]
#
# The cluster keeps its data and log under DIR (created with a random password for the superuser
# `meter`, kept in DIR/password) and runs in the background; stop it with `kill $(cat DIR/pid)`.
# It listens on 127.0.0.1 only, with no unix socket, and never touches Debian's own cluster.
# Postgres refuses to run as root: as root, DIR is handed to the `postgres` user and the server
# runs as that user. `fsync=off` unless METER_PG_FSYNC=on (benchmarks). METER_PG_SETTINGS adds
# settings, space-separated NAME=VALUE (for example shared_preload_libraries=pg_stat_statements).
set -euo pipefail
dir=${1:?usage: deploy/postgres.sh DIR [PORT]}
port=${2:-18732}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
if [ -z "$(pg_bin)" ]; then
  echo "installing postgresql (Debian package)" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y postgresql >&2 \
    || { $sudo apt-get update >&2 && $sudo apt-get install -y postgresql >&2; }
fi
bin=$(pg_bin)

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ "$(id -u)" = 0 ]; then
  chown -R postgres:postgres "$dir"
  as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups)
  "${as_pg[@]}" test -x "$dir" \
    || { echo "the postgres user cannot reach $dir: every directory above it must be searchable (chmod o+x)" >&2; exit 1; }
else
  as_pg=()
fi
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "something already answers on port $port" >&2
  exit 1
fi
if [ ! -f "$dir/data/PG_VERSION" ]; then
  (umask 077; head -c 18 /dev/urandom | base64 | tr '+/' '-_' >"$dir/password")
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir/password"
  "${as_pg[@]}" "$bin/initdb" -D "$dir/data" -U meter --pwfile="$dir/password" --auth=scram-sha-256 \
    --locale=C --encoding=UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
    || { echo "initdb failed; see $dir/initdb.log" >&2; tail -20 "$dir/initdb.log" >&2; exit 1; }
fi
"${as_pg[@]}" "$bin/postgres" -D "$dir/data" -p "$port" -c listen_addresses=127.0.0.1 \
  -c unix_socket_directories= -c fsync="${METER_PG_FSYNC:-off}" -c max_connections=300 \
  $(for s in ${METER_PG_SETTINGS:-}; do printf -- '-c %s ' "$s"; done) >>"$dir/server.log" 2>&1 &
echo $! >"$dir/pid"
for _ in $(seq 1 300); do
  if "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
    echo "postgres://meter:$(cat "$dir/password")@127.0.0.1:$port/postgres"
    exit 0
  fi
  kill -0 "$(cat "$dir/pid")" 2>/dev/null || { echo "postgres exited; see $dir/server.log" >&2; tail -20 "$dir/server.log" >&2; exit 1; }
  sleep 0.1
done
echo "postgres did not answer on port $port within 30 s; see $dir/server.log" >&2
exit 1
