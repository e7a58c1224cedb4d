#!/usr/bin/env bash
# The whole test suite: installs what the tests need (scripts/install-test-deps.sh: PostgreSQL 15, the noida-db
# test broker and the contract tests' Python clients, through apt-get/pip, only if missing), then runs every test
# target. Extra arguments go to
# `cargo test`, e.g. `scripts/test.sh --test pipeline -- --nocapture`.
# Environment: FICUS_TEST_KAFKA=host:port runs the tests against that broker instead of noida-db (e.g. Apache
# Kafka from docker/compose.yaml); FICUS_PG_BIN points at other PostgreSQL server binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh
export FICUS_NOIDA="${FICUS_NOIDA:-$PWD/.venv/noida/bin/noida-db}"

args=(--no-fail-fast)   # run every test binary and report all failures; the exit status is still non-zero
[ -f Cargo.lock ] && args+=(--locked)
# Every target unless the caller picked some (e.g. `--test pipeline`); cargo would otherwise take the union.
targets=(--all-targets)
for arg in "$@"; do
    case "$arg" in
        --) break ;;
        --lib | --bin | --bin=* | --bins | --test | --test=* | --tests | --example | --example=* | --examples | \
            --bench | --bench=* | --benches | --doc | --all-targets) targets=() ;;
    esac
done
# cargo test, not nextest: nextest runs each test in its own process, so every test would start its own
# PostgreSQL cluster and broker instead of sharing one per test binary.
exec cargo test "${args[@]}" "${targets[@]}" "$@"
