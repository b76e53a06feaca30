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

# The embedded default needs nothing installed: SQLite is compiled into the binary.
# Services that later backends test against (Kafka's mock cluster is in-process) are started here.

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "test"
cargo test --workspace --locked
