#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need, then runs formatting,
# lints and every test of the workspace (unit, contract, end to end).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
cargo --version
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

# Nothing to install yet: SQLite and librdkafka (whose mock cluster the Kafka tests use) are
# compiled into the binary from their crates; the bundled librdkafka needs only gcc, g++ and make.
# The SDK compatibility test installs its pinned Python SDKs from PyPI into target/sdk-venv.
for tool in gcc g++ make python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y build-essential python3-venv" >&2; exit 1; }
done

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "test"
cargo test --workspace --locked
