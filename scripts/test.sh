#!/usr/bin/env bash
# The test command: formatting, lints, then every test (unit, property and
# end-to-end with real FFmpeg, SQLite and gRPC on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build binaries (the end-to-end tests run them)"
cargo build --workspace --bins --locked
echo "== cargo test"
cargo test --workspace --locked
