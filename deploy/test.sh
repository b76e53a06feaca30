#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need, then runs formatting,
# lints and every test of the workspace (unit, contract, end to end).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
cargo --version
# A one-shot build gains nothing from incremental caches, which take gigabytes of disk.
export CARGO_INCREMENTAL=0
# A full disk fails the build deep in a compiler's output; say so first.
avail_kb=$(df -Pk . | awk 'NR==2 {print $4}')
echo "disk: $((avail_kb / 1024 / 1024)) GiB free"
if [ "$avail_kb" -lt $((4 * 1024 * 1024)) ]; then
  echo "warning: under 4 GiB free; a clean build and test run takes about 2 GiB of disk" >&2
fi
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

# SQLite and librdkafka (whose mock cluster the Kafka tests use) are compiled into the binary
# from their crates; the bundled librdkafka needs only gcc, g++ and make. The SDK compatibility
# test installs its pinned Python SDKs from PyPI into target/sdk-venv.
for tool in gcc g++ make python3 curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y build-essential python3-venv curl" >&2; exit 1; }
done

# Servers this script starts are stopped when it ends, however it ends.
ch_dir="" pg_dir=""
# A server still flushing while its directory is removed makes `rm` fail ("Directory not empty"):
# wait for each to exit (KILL after 30 s), and never let the cleanup change the suite's status.
# A server counts as running while its pid's command line names its directory: not a process that
# reused the pid, nor an exited server no one has reaped yet.
cleanup() {
  local rc=$? d pid i
  set +e
  serves() { grep -qF "$2" "/proc/$1/cmdline" 2>/dev/null; }
  for d in "$ch_dir" "$pg_dir"; do
    [ -n "$d" ] || continue
    pid=$(cat "$d/pid" 2>/dev/null)
    if [ -n "$pid" ] && serves "$pid" "$d"; then
      kill -INT "$pid" 2>/dev/null
      for i in $(seq 300); do serves "$pid" "$d" || break; sleep 0.1; done
      serves "$pid" "$d" && kill -KILL "$pid" 2>/dev/null
    fi
    for i in 1 2 3 4 5; do rm -rf "$d" 2>/dev/null && break; sleep 1; done
    [ -e "$d" ] && echo "warning: could not remove $d" >&2
  done
  exit "$rc"
}
trap cleanup EXIT

step "clickhouse"
# One server for the ClickHouse contract tests (Debian's package, installed when missing); the
# fault test starts servers of its own so that it can kill them.
if [ -z "${METER_TEST_CLICKHOUSE:-}" ]; then
  ch_dir=$(mktemp -d /tmp/meter-test-clickhouse.XXXXXX)
  METER_TEST_CLICKHOUSE=$(deploy/clickhouse.sh "$ch_dir" "${METER_TEST_CLICKHOUSE_PORT:-18723}")
  export METER_TEST_CLICKHOUSE
fi
echo "clickhouse $(curl -fsS "$METER_TEST_CLICKHOUSE/?query=SELECT%20version()") at $METER_TEST_CLICKHOUSE"

step "postgres"
# One private cluster for the Postgres contract tests (Debian's package, installed when missing),
# on its own port and data directory; tests that kill Postgres start clusters of their own.
if [ -z "${METER_TEST_POSTGRES:-}" ]; then
  pg_dir=$(mktemp -d /tmp/meter-test-postgres.XXXXXX)
  METER_TEST_POSTGRES=$(deploy/postgres.sh "$pg_dir" "${METER_TEST_POSTGRES_PORT:-18732}")
  export METER_TEST_POSTGRES
fi
echo "postgres at ${METER_TEST_POSTGRES%%:*}://${METER_TEST_POSTGRES#*@}"

step "chromium"
# The browser tests drive Debian's Chromium headless through chromedriver (WebDriver).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "installing chromium and chromium-driver (Debian packages)"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y chromium chromium-driver \
    || { $sudo apt-get update && $sudo apt-get install -y chromium chromium-driver; }
fi
/usr/bin/chromium --version

step "deploy"
# The Dockerfile, the compose file and the Kubernetes manifests, by their own validators.
deploy/validate.sh

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "test"
cargo test --workspace --locked
