#!/usr/bin/env bash
# Snapshot benchmark: ficus copying a 1M-row table (null sink, optionally the broker) vs COPY TO STDOUT, one run.
# Prints a table and the target; see docs/benchmarks.md.  Usage: scripts/snapshot-bench.sh [--rows N] [--chunk-size N] [--kafka]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh >/dev/null
cargo build --release --locked --bin ficus
export FICUS_NOIDA="${FICUS_NOIDA:-$PWD/.venv/noida/bin/noida-db}"
exec python3 scripts/snapshot_bench.py "$@"
