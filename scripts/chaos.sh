#!/usr/bin/env bash
# The full chaos suite (docs/reliability.md): >= 100k changes over 2000 keys while ficus is SIGKILLed >= 20 times,
# PostgreSQL crash-restarted, the broker stopped and the walsender terminated at random moments; prints the figures
# (changes, events expected/seen, lost, duplicated, order violations). CI runs a short version of the same test.
# Usage: scripts/chaos.sh [at_least_once|exactly_once] [STEPS] [KILLS] [SEED]
# Faults: FICUS_CHAOS_FAULTS=kill,walsender,pg (default) — add ,broker for broker stops; the test broker loses
# acknowledged writes when it restarts under load (scripts/broker-durability.sh, docs/reliability.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh >/dev/null
export FICUS_NOIDA="${FICUS_NOIDA:-$PWD/.venv/noida/bin/noida-db}"
mode="${1:-at_least_once}"
case "$mode" in at_least_once|exactly_once) ;; *) echo "usage: $0 [at_least_once|exactly_once] [STEPS] [KILLS] [SEED]" >&2; exit 2 ;; esac
# 105k steps: about 1 in 20 is a delete of a key that does not exist (no change), so >= 100k changes are written.
export FICUS_CHAOS_CHANGES="${2:-105000}" FICUS_CHAOS_KILLS="${3:-20}"
if [ -n "${4:-}" ]; then export FICUS_CHAOS_SEED="$4"; fi
exec cargo test --locked --test pipeline "chaos::chaos_$mode" -- --nocapture
