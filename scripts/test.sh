#!/usr/bin/env bash
# The test command: formatting, lints, then every test (unit, property,
# store conformance on SQLite and Postgres, end-to-end with real FFmpeg and
# gRPC on loopback), then the end-to-end suite again with Postgres as the
# masters' database. Starts (and stops) a throwaway Postgres server.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
scripts/check-observability.sh
echo "== build binaries (the end-to-end tests run them)"
cargo build --workspace --bins --locked

pgdir=$(mktemp -d)
trap 'scripts/pg.sh stop "$pgdir"; rm -rf "$pgdir"' EXIT
FFLEET_TEST_POSTGRES=$(scripts/pg.sh start "$pgdir")
export FFLEET_TEST_POSTGRES
echo "== test Postgres at $FFLEET_TEST_POSTGRES"

echo "== cargo test (masters on SQLite)"
cargo test --workspace --locked
echo "== end-to-end tests again, masters on Postgres"
# The same cargo invocation as above, so nothing is rebuilt (a -p selection
# resolves features differently and recompiles dozens of crates); the
# unit tests rerun too, in seconds.
FFLEET_IT_BACKEND=postgres cargo test --workspace --locked -- \
  --skip store_suite --skip multi_master
echo "== load-test smoke run: ffleet-load quick (results in target/load-results)"
pg_args=()
command -v psql >/dev/null 2>&1 && pg_args=(--postgres "$FFLEET_TEST_POSTGRES")
target/debug/ffleet-load quick --out target/load-results "${pg_args[@]}"
