#!/usr/bin/env bash
# Commit -> Kafka latency at a steady load (issue #5): p50/p95/p99 and a PNG plot; see docs/benchmarks.md.
# Usage: scripts/latency.sh [--rate 5000] [--seconds 60] [--batch 100] [--png docs/latency.png]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh >/dev/null
cargo build --release --locked --bin ficus
source scripts/lib/bench-venv.sh
export FICUS_NOIDA="${FICUS_NOIDA:-$PWD/.venv/noida/bin/noida-db}"
exec .venv/bench/bin/python scripts/latency.py "$@"
