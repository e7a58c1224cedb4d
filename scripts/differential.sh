#!/usr/bin/env bash
# Long runs of the differential test (tests/pipeline/differential.rs): ficus against PostgreSQL's test_decoding on a
# generated schema and workload, for random seeds. CI runs two fixed seeds with 150 steps; this runs more.
# Usage: scripts/differential.sh [runs (default 10)] [steps per run (default 2000)]
# A failure prints its seed; rerun it with FICUS_DIFF_SEED=<seed> FICUS_DIFF_STEPS=<steps> scripts/test.sh --test pipeline differential
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
steps=${2:-2000}
bash scripts/install-test-deps.sh
export FICUS_NOIDA="${FICUS_NOIDA:-$PWD/.venv/noida/bin/noida-db}"
cargo build --locked --tests --bins
for _ in $(seq "$runs"); do
    seed=$(( (RANDOM << 15 | RANDOM) + 3 ))
    echo "differential: seed $seed, $steps steps"
    FICUS_DIFF_SEED=$seed FICUS_DIFF_STEPS=$steps cargo test --locked --test pipeline -- differential --nocapture
done
echo "differential: $runs runs passed"
