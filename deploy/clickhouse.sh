#!/usr/bin/env bash
# Starts a private ClickHouse server for development and tests, installing Debian's package when
# no `clickhouse-server` is on the PATH. Prints the server's URL (http://127.0.0.1:PORT) on stdout.
#
#   deploy/clickhouse.sh DIR [HTTP_PORT]
#
# The server keeps its data and logs under DIR and runs in the background; stop it with
# `kill $(cat DIR/pid)`. Debian's package is version 18.16; meter's SQL runs on it and on current
# releases.
set -euo pipefail
dir=${1:?usage: deploy/clickhouse.sh DIR [HTTP_PORT]}
port=${2:-18123}

if ! command -v clickhouse-server >/dev/null; then
  echo "installing clickhouse-server (Debian package)" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y clickhouse-server clickhouse-client >&2 \
    || { $sudo apt-get update >&2 && $sudo apt-get install -y clickhouse-server clickhouse-client >&2; }
fi

mkdir -p "$dir"/{data,tmp,user_files,format_schemas,log}
dir=$(cd "$dir" && pwd)
if curl -fsS "http://127.0.0.1:$port/ping" >/dev/null 2>&1; then
  echo "something already answers on port $port" >&2
  exit 1
fi
clickhouse-server --config-file=/etc/clickhouse-server/config.xml -- \
  --path="$dir/data/" --tmp_path="$dir/tmp/" --user_files_path="$dir/user_files/" \
  --format_schema_path="$dir/format_schemas/" \
  --http_port="$port" --tcp_port=$((port + 1)) --interserver_http_port=$((port + 2)) \
  --listen_host=127.0.0.1 --mark_cache_size=268435456 \
  --logger.log="$dir/log/server.log" --logger.errorlog="$dir/log/error.log" --logger.console=0 \
  >"$dir/log/stdout.log" 2>&1 &
echo $! >"$dir/pid"
for _ in $(seq 1 300); do
  if curl -fsS "http://127.0.0.1:$port/ping" >/dev/null 2>&1; then
    echo "http://127.0.0.1:$port"
    exit 0
  fi
  kill -0 "$(cat "$dir/pid")" 2>/dev/null || { echo "clickhouse-server exited; see $dir/log" >&2; tail -20 "$dir/log/error.log" >&2 || true; exit 1; }
  sleep 0.1
done
echo "clickhouse-server did not answer on port $port within 30 s; see $dir/log" >&2
exit 1
