#!/usr/bin/env bash
# Checks whether the local test broker (noida-db) keeps acknowledged writes across restarts under load — no ficus
# involved. See scripts/broker_durability.py and docs/reliability.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh >/dev/null
if [ ! -x .venv/bench/bin/python ]; then
    python3 -m venv .venv/bench
    .venv/bench/bin/pip install -q confluent-kafka matplotlib
fi
exec .venv/bench/bin/python scripts/broker_durability.py "$@"
