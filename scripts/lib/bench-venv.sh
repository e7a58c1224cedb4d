# Sourced by scripts/latency.sh and scripts/bench.sh: .venv/bench, a venv with confluent-kafka (the latency
# consumer) and matplotlib (the plots), created once.
if [ ! -x .venv/bench/bin/python ]; then
    python3 -m venv .venv/bench
    .venv/bench/bin/pip install -q confluent-kafka matplotlib
fi
