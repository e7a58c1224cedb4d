# Sourced by scripts/latency.sh and scripts/bench.sh: .venv/bench, a venv with confluent-kafka (the latency
# consumer, the streaming probe's producer), matplotlib (the plots) and psycopg2 (the streaming probe's replication
# client), created once; a package added later is installed into an existing venv.
if [ ! -x .venv/bench/bin/python ]; then
    python3 -m venv .venv/bench
fi
if ! .venv/bench/bin/python -c 'import confluent_kafka, matplotlib, psycopg2' 2>/dev/null; then
    .venv/bench/bin/pip install -q confluent-kafka matplotlib psycopg2-binary
fi
