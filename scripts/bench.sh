#!/usr/bin/env bash
# Throughput benchmark: ficus (null sink and end to end) vs pg_recvlogical vs in-server decode on one WAL.
# Prints a table and the targets; see docs/benchmarks.md.  Usage: scripts/bench.sh [--rows N] [--updates N] [--big-txn N] [--skip-kafka]
# Snapshot benchmark (ficus copying a 1M-row table vs COPY TO STDOUT): scripts/bench.sh snapshot [--rows N] [--chunk-size N] [--kafka]
# One large transaction, commit -> last event visible: scripts/bench.sh big-txn [--rows N] [--delivery exactly_once|at_least_once] [--reps N]
# What streaming in-progress transactions would give (a prototype client next to ficus, issue 19):
#   scripts/bench.sh streaming-probe [--rows N] [--reps N] [--shapes statement,batches]
# The full suite of issue 16 (every target, 3 repetitions, one table; ~25 min, --quick ~5 min):
#   scripts/bench.sh all [--reps 3] [--quick] [--only ROWS] [--json FILE]
# A/B of two binaries on one WAL, CPU per change and rate, alternated (builds nothing):
#   scripts/bench.sh ab OLD_BINARY NEW_BINARY [--rows N] [--updates N] [--reps N] [--modes null,kafka,rules,rules-null,rules-minimal]
# FICUS_BENCH_BINARY=path/to/ficus: use that binary and skip the release build (e.g. on a shared machine).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh >/dev/null
export FICUS_NOIDA="${FICUS_NOIDA:-$PWD/.venv/noida/bin/noida-db}"
# Every mode runs in the bench venv: with its confluent-kafka, the local broker's log is trimmed as records arrive
# (scripts/lib/cluster.py, start_trimmer); without it the stand-in broker's cost grows with its log.
source scripts/lib/bench-venv.sh
if [ "${1:-}" = ab ]; then
  shift
  exec .venv/bench/bin/python scripts/ab_cpu.py "$@"
fi
if [ -n "${FICUS_BENCH_BINARY:-}" ]; then
  binary=(--binary "$FICUS_BENCH_BINARY")
else
  cargo build --release --locked --bin ficus
  binary=()
fi
case "${1:-}" in
  snapshot)
    shift
    exec .venv/bench/bin/python scripts/snapshot_bench.py "${binary[@]}" "$@" ;;
  big-txn)
    shift
    exec .venv/bench/bin/python scripts/big_txn_bench.py "${binary[@]}" "$@" ;;
  streaming-probe)
    shift
    exec .venv/bench/bin/python scripts/streaming_probe.py "${binary[@]}" "$@" ;;
  all)
    shift
    # The pg_walstream peer (row 13): its own crate and lock file, outside ficus's dependency graph.
    (cd scripts/peer && CARGO_TARGET_DIR=target cargo build --release --locked --quiet) ||
      echo "warning: the pg_walstream peer did not build; row 13 is left out" >&2
    exec .venv/bench/bin/python scripts/bench_all.py "${binary[@]}" "$@" ;;
esac
exec .venv/bench/bin/python scripts/bench.py "${binary[@]}" "$@"
