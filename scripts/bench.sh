#!/usr/bin/env bash
# Throughput benchmark: ficus (null sink and end to end) vs pg_recvlogical vs in-server decode on one WAL.
# Prints a table and the targets; see docs/benchmarks.md.  Usage: scripts/bench.sh [--rows N] [--updates N] [--big-txn N] [--skip-kafka]
# Snapshot benchmark (ficus copying a 1M-row table vs COPY TO STDOUT): scripts/bench.sh snapshot [--rows N] [--chunk-size N] [--kafka]
# One large transaction, commit -> last event visible: scripts/bench.sh big-txn [--rows N] [--delivery exactly_once|at_least_once] [--reps N]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh >/dev/null
cargo build --release --locked --bin ficus
export FICUS_NOIDA="${FICUS_NOIDA:-$PWD/.venv/noida/bin/noida-db}"
if [ "${1:-}" = big-txn ]; then
  shift
  exec python3 scripts/big_txn_bench.py "$@"
fi
if [ "${1:-}" = snapshot ]; then
  shift
  exec python3 scripts/snapshot_bench.py "$@"
fi
exec python3 scripts/bench.py "$@"
