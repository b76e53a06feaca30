# Shared by the scripts in benches/: `source benches/lib.sh` once in the project's root.

# Sets BIN, the build to run: unless it is set already (another commit's build, side by side),
# this checkout's release build, built first.
meter_bin() {
  if [ -z "${BIN:-}" ]; then
    cargo build --release -q --bin meter
    BIN=target/release/meter
  fi
}

# Starts `$BIN serve` on the embedded default with data directory $1, its output in $2/out and
# $2/err, on a free port, with the environment the caller exported (METER__* settings); an admin
# key is made first. Sets `key`, `pid` and `url`; fails, showing the command's errors, if the key
# cannot be made or the server is not listening within 10 seconds.
serve_embedded() {
  key=$("$BIN" keys create --role admin --data-dir "$1" 2>"$2/keys.err") ||
    { echo "meter keys create failed: $(cat "$2/keys.err")" >&2; return 1; }
  METER__BOOTSTRAP_ADMIN_KEY=false RUST_LOG=warn "$BIN" serve --data-dir "$1" --listen 127.0.0.1:0 \
    >"$2/out" 2>"$2/err" &
  pid=$!
  for _ in $(seq 100); do grep -q listening "$2/out" && break; sleep 0.1; done
  url=$(sed -n 's/^meter listening on //p' "$2/out")
  [ -n "$url" ] || { echo "meter serve did not start: $(cat "$2/err")" >&2; return 1; }
}

# Waits, up to 10 minutes, until the aggregator of the server at $1 has counted every event its
# log took (both read from /metrics), so that a CPU figure taken next includes the counting. Sets
# `took` and `seen`; warns and returns 1 if it did not catch up.
wait_counted() {
  local m
  for _ in $(seq 3000); do
    m=$(curl -fsS "$1/metrics" 2>/dev/null || true)
    took=$(echo "$m" | awk '/^meter_log_appended_events_total/ { s += $2 } END { printf "%d", s }')
    seen=$(echo "$m" | awk '/^meter_aggregator_events_total/ { s += $2 } END { printf "%d", s }')
    if [ "$took" -gt 0 ] && [ "$seen" -ge "$took" ]; then return 0; fi
    sleep 0.2
  done
  echo "warning: after 10 minutes the aggregator had counted $seen of $took events; a CPU figure leaves out the rest" >&2
  return 1
}

# start NAME ARGS...: runs `$BIN ARGS` in the background, its output in $dir/NAME.out and .err
# and its pid in $dir/NAME.pid (the caller sets `dir`), and waits up to 30 s for its address line;
# exits, showing its errors, if none comes.
start() {
  local name=$1; shift
  RUST_LOG=warn $BIN "$@" >"$dir/$name.out" 2>"$dir/$name.err" &
  echo $! >"$dir/$name.pid"
  for _ in $(seq 300); do grep -qE 'bootstrap|listening' "$dir/$name.out" && return; sleep 0.1; done
  echo "$name did not start" >&2; cat "$dir/$name.err" >&2; exit 1
}

# address NAME: the address a process started by `start` printed (its URL, or a broker's
# bootstrap).
address() { sed -n 's/^meter listening on //p; s/^http baseline listening on //p; s/^kafka bootstrap: //p' "$dir/$1.out"; }

# The EXIT trap of a script with processes in the background and a private Postgres cluster in
# $dir/pg (deploy/postgres.sh): stops them, the cluster last, and removes $dir.
stop_all_and_postgres() {
  kill $(jobs -p) 2>/dev/null || true
  [ -f "$dir/pg/pid" ] && kill -INT "$(cat "$dir/pg/pid")" 2>/dev/null || true
  sleep 1
  rm -rf "$dir"
}

# counted URL: the events an aggregator at URL has taken in (counted and duplicates), from /metrics.
counted() { curl -s "$1/metrics" | awk '/^meter_aggregator_events_total/ { s += $2 } END { print s + 0 }'; }
# owned URL: the partitions an aggregator at URL owns, from /metrics.
owned() { curl -s "$1/metrics" | awk '/^meter_aggregator_owned_partitions/ { s += $2 } END { print s + 0 }'; }
# cpu_ticks PID: the user and system CPU ticks the process has used.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
