#!/usr/bin/env bash
# The whole test suite: installs what the tests need (scripts/install-test-deps.sh: PostgreSQL 15, the noida-db
# test broker and the contract tests' Python clients, through apt-get/pip, only if missing), then runs every test
# target. Extra arguments go to
# `cargo test`, e.g. `scripts/test.sh --test pipeline -- --nocapture`.
# Environment: FICUS_TEST_KAFKA=host:port runs the tests against that broker instead of noida-db (e.g. Apache
# Kafka from docker/compose.yaml); FICUS_PG_BIN points at other PostgreSQL server binaries; FICUS_PG_VERSIONS lists
# the other major versions of the matrix (default "14 16 17 18"; empty for PostgreSQL 15 only).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh
export FICUS_NOIDA="${FICUS_NOIDA:-$PWD/.venv/noida/bin/noida-db}"

args=(--no-fail-fast)   # run every test binary and report all failures; the exit status is still non-zero
[ -f Cargo.lock ] && args+=(--locked)
# One build for every target, with the test-only crash points (tests/pipeline/crash_points.rs: the binary the
# pipeline tests run aborts where FAILPOINTS says). Release builds (`cargo build --release`) have none.
args+=(--features failpoints)
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
if [ $# -gt 0 ]; then
    exec cargo test "${args[@]}" "${targets[@]}" "$@"
fi
# The whole suite starts with the code's own checks: formatting (rustfmt.toml) and clippy with warnings as errors,
# over every target. Cheap next to the tests, and a red line here is found in a minute rather than after them.
status=0
cargo fmt --check || { echo "cargo fmt --check: run \`cargo fmt\` and commit the result"; status=1; }
cargo clippy "${args[@]:1}" --all-targets -- -D warnings || status=1
# The whole suite: every test on PostgreSQL 15 (Debian's), then the version matrix — the core, rules, snapshot,
# fault, lifecycle, differential, failover, standby-capture and version-specific tests on every other supported major
# version (binaries from scripts/install-pg.sh). FICUS_PG_VERSIONS narrows or empties the matrix (e.g. FICUS_PG_VERSIONS="17").
cargo test "${args[@]}" "${targets[@]}" || status=$?
for version in ${FICUS_PG_VERSIONS-14 16 17 18}; do
    echo "=== PostgreSQL $version: core, rules, snapshot, faults, lifecycle, differential, failover, standby, versions"
    # failover:: promotes a standby on 17+ (~20 s) and skips that part, with the reason, before 17; standby::
    # (capture from a standby, 20–40 s) captures on 16+ and checks the refusal before 16; versions:: skips the parts
    # a version lacks (virtual generated columns, idle_replication_slot_timeout: 18), with the reason.
    FICUS_PG_VERSION=$version cargo test "${args[@]}" --test pipeline -- \
        core:: rules:: snapshot:: faults:: lifecycle:: differential:: failover:: standby:: versions:: || status=$?
done
exit $status
