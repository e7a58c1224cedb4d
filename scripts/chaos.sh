#!/usr/bin/env bash
# The full chaos suite (docs/reliability.md): >= 100k changes over 2000 keys, paced over the fault window, while ficus
# is SIGKILLed >= 20 times and PostgreSQL crash-restarted, the slot's walsender terminated and the broker paused
# KILLS/4 times each, in a seeded order; prints the seed, the schedule and the figures (changes, events expected/seen,
# lost, duplicated, order violations, per fault kind the injections with writes unconfirmed). CI runs a short version
# of the same test with fixed seeds. A printed seed replays the same schedule and workload.
# Usage: scripts/chaos.sh [at_least_once|exactly_once] [STEPS] [KILLS] [SEED]   (SEED: random when absent)
# Faults: FICUS_CHAOS_FAULTS=kill,walsender,pg,pause (default) — add ,broker for broker stops; the test broker loses
# acknowledged writes when it restarts under load (scripts/broker-durability.sh, docs/reliability.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh >/dev/null
export FICUS_NOIDA="${FICUS_NOIDA:-$PWD/.venv/noida/bin/noida-db}"
mode="${1:-at_least_once}"
case "$mode" in at_least_once|exactly_once) ;; *) echo "usage: $0 [at_least_once|exactly_once] [STEPS] [KILLS] [SEED]" >&2; exit 2 ;; esac
# 105k steps: about 1 in 20 is a delete of a key that does not exist (no change), so >= 100k changes are written.
export FICUS_CHAOS_CHANGES="${2:-105000}" FICUS_CHAOS_KILLS="${3:-20}"
export FICUS_CHAOS_SEED="${4:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}"
echo "chaos: seed $FICUS_CHAOS_SEED (replay: $0 $mode $FICUS_CHAOS_CHANGES $FICUS_CHAOS_KILLS $FICUS_CHAOS_SEED)" >&2
exec cargo test --locked --test pipeline "chaos::chaos_$mode" -- --nocapture
