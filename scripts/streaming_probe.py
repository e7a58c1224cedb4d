#!/usr/bin/env python3
"""What streaming in-progress transactions would give a large transaction (issue 19, item 5), measured with a
prototype consumer next to ficus on the same cluster, broker and transaction.

ficus does not request pgoutput's `streaming` option (docs/postgres-versions.md, "Large transactions", says why: a
streamed transaction's changes arrive before its commit LSN and commit time exist, and ficus's events carry both).
To know what it would buy, this script measures both ways with one prototype client and ficus itself:

  ficus           ficus end to end, exactly_once (its `/status` flushedLsn moves after the Kafka commit)
  probe, off      a minimal Python client (psycopg2 replication + confluent-kafka's transactional producer): protocol
                  2 without streaming; each change's raw pgoutput bytes become one record, Begin/Commit open and commit
                  a Kafka transaction
  probe, on       the same client with `streaming 'on'`: a streamed transaction's changes go into a Kafka transaction
                  opened at its first Stream Start, committed at its Stream Commit (aborted at its Stream Abort)

The probe does none of ficus's work (no decoding of values, no events, no checkpoint), so it is an optimistic
stand-in for the client side; what it shows is where the time goes when the walsender streams during the
transaction. Every figure is from the moment the writing session's COMMIT returned:

  last change received    the client holds the transaction's last change (streaming: usually before the commit)
  visible                 the Kafka commit returned (read_committed consumers see every row)

Two transaction shapes, 1M rows each by default: `statement` (one INSERT … SELECT, ~3 s) and `batches` (100
INSERTs of 1% each with a pause between them: a batch job that runs for ~15 s). Each topic must hold every row.

Usage: scripts/bench.sh streaming-probe [--rows 1000000] [--reps 3] [--shapes statement,batches]
"""

import argparse
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib.cluster import ROOT, Cluster, start_broker, stop_broker  # noqa: E402
from lib.consumers import topic_messages  # noqa: E402
import big_txn_bench  # noqa: E402


# --- the prototype client (runs as a child process: `streaming_probe.py --child ...`) -------------------------------

def child(url, slot, publication, brokers, topic, streaming):
    """Streams `slot`, produces every change of a transaction into one Kafka transaction, and prints a JSON line per
    committed source transaction: {"rows", "first", "last", "visible"} (time.monotonic(), comparable across processes
    on Linux)."""
    import psycopg2
    import psycopg2.extras
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": brokers, "transactional.id": f"probe-{slot}",
                         "compression.type": "lz4", "linger.ms": 5})
    producer.init_transactions()
    conn = psycopg2.connect(url, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    cur = conn.cursor()
    options = {"proto_version": "2", "publication_names": publication}
    if streaming:
        options["streaming"] = "on"
    cur.start_replication(slot_name=slot, decode=False, options=options)
    state = {"open": False, "rows": 0, "first": None, "last": None, "xid": None, "since_poll": 0}

    def begin(now):
        if not state["open"]:
            producer.begin_transaction()
            state.update(open=True, rows=0, first=now)

    def commit(end_lsn):
        producer.commit_transaction()
        visible = time.monotonic()
        print(json.dumps({"rows": state["rows"], "first": state["first"], "last": state["last"], "visible": visible,
                          "end_lsn": end_lsn}), flush=True)
        state.update(open=False, xid=None)

    def change(payload, now):
        while True:
            try:
                producer.produce(topic, payload)
                break
            except BufferError:
                # librdkafka's queue is full: serve delivery reports until it has room (backpressure).
                producer.poll(0.05)
        state["rows"] += 1
        state["last"] = now
        state["since_poll"] += 1
        if state["since_poll"] >= 1000:
            producer.poll(0)
            state["since_poll"] = 0

    def consume(msg):
        payload = msg.payload
        tag = payload[0:1]
        now = time.monotonic()
        if tag == b"B":
            begin(now)
        elif tag == b"C":
            (end_lsn,) = struct.unpack_from(">Q", payload, 10)
            commit(end_lsn)
            msg.cursor.send_feedback(flush_lsn=end_lsn)
        elif tag == b"S":
            (xid,) = struct.unpack_from(">I", payload, 1)
            if state["xid"] not in (None, xid):
                raise SystemExit("the probe handles one streamed transaction at a time")
            state["xid"] = xid
            begin(now)
        elif tag == b"c":
            (end_lsn,) = struct.unpack_from(">Q", payload, 14)
            commit(end_lsn)
            msg.cursor.send_feedback(flush_lsn=end_lsn)
        elif tag == b"A":
            xid, subxid = struct.unpack_from(">II", payload, 1)
            if xid != subxid:
                raise SystemExit("a subtransaction aborted: the probe cannot take its rows back")
            producer.abort_transaction()
            state.update(open=False, xid=None)
        elif tag in (b"I", b"U", b"D"):
            change(payload, now)

    cur.consume_stream(consume)


# --- the driver -----------------------------------------------------------------------------------------------------

def write_transaction(cluster, table, rows, shape):
    """Runs one transaction of `rows` inserts; returns time.monotonic() when its COMMIT returned."""
    select = "SELECT i, md5(i::text), i % 100, i * 0.5, now() FROM generate_series({lo}, {hi}) i"
    if shape == "statement":
        script = f"INSERT INTO {table} {select.format(lo=1, hi=rows)};"
    else:
        step = max(1, rows // 100)
        parts = [f"INSERT INTO {table} {select.format(lo=lo, hi=min(rows, lo + step - 1))}; SELECT pg_sleep(0.1);"
                 for lo in range(1, rows + 1, step)]
        script = "BEGIN;\n" + "\n".join(parts) + "\nCOMMIT;"
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(cluster.port),
                    "-U", "postgres", "-d", "bench"], input=script, text=True, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic()


def make_table(cluster, table):
    cluster.psql(f"CREATE TABLE {table} (id bigint PRIMARY KEY, name text, qty int, price float8, ts timestamptz); "
                 f"CREATE PUBLICATION {table} FOR TABLE {table};")


def run_probe(cluster, brokers, rows, shape, streaming, rep):
    name = f"probe_{shape}_{'on' if streaming else 'off'}_{rep}"
    make_table(cluster, name)
    cluster.psql(f"SELECT pg_create_logical_replication_slot('{name}', 'pgoutput')")
    topic = f"{name}.rows"
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", cluster.url(), name, name, brokers,
                             topic, "on" if streaming else "off"], stdout=subprocess.PIPE, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(json.loads(line) for line in proc.stdout), daemon=True)
    reader.start()
    try:
        time.sleep(2)
        committed = write_transaction(cluster, name, rows, shape)
        deadline = time.monotonic() + 600
        while not any(line["rows"] >= rows for line in lines):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the probe ended or timed out: exit {proc.poll()}")
            time.sleep(0.02)
        line = next(line for line in lines if line["rows"] >= rows)
        return {"last_received": line["last"] - committed, "visible": line["visible"] - committed,
                "events": topic_messages(brokers, topic)}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        cluster.psql(f"SELECT pg_drop_replication_slot('{name}')")


def run_ficus(cluster, brokers, binary, rows, shape, rep):
    """ficus end to end, exactly_once (scripts/big_txn_bench.py's run, with this script's transaction shapes)."""
    r = big_txn_bench.run(cluster, brokers, binary, rows, "exactly_once", f"{shape}_{rep}",
                          write=lambda c, table: write_transaction(c, table, rows, shape))
    return {"last_received": r["all_received"], "visible": r["visible"], "events": r["events"]}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        url, slot, publication, brokers, topic, streaming = sys.argv[2:8]
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        return child(url, slot, publication, brokers, topic, streaming == "on")
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--shapes", default="statement,batches")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/ficus"))
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args()
    cluster = Cluster(synchronous_commit="on")
    broker = None
    results = {}
    try:
        cluster.psql("CREATE DATABASE bench", db="postgres")
        brokers, broker = start_broker()
        for shape in a.shapes.split(","):
            for rep in range(a.reps):
                for label, go in (("ficus (no streaming)", lambda: run_ficus(cluster, brokers, a.binary, a.rows, shape, rep)),
                                  ("probe, streaming off", lambda: run_probe(cluster, brokers, a.rows, shape, False, rep)),
                                  ("probe, streaming on", lambda: run_probe(cluster, brokers, a.rows, shape, True, rep))):
                    r = go()
                    if r["events"] is not None and r["events"] < a.rows:
                        raise RuntimeError(f"{label}: only {r['events']} of {a.rows} rows reached the topic")
                    results.setdefault((shape, label), []).append(r)
                    print(f"{shape} rep {rep} {label}: last change received {r['last_received']:.2f} s, visible "
                          f"{r['visible']:.2f} s after the commit, {r['events']} messages", flush=True)
    finally:
        cluster.stop()
        stop_broker(broker)
    print(f"\n{a.rows:,} rows in one transaction, commit -> (min / median / max of {a.reps}):")
    print(f"| shape | consumer | last change received | last event visible (read_committed) |")
    print("|---|---|---:|---:|")
    for (shape, label), rs in results.items():
        cells = []
        for key in ("last_received", "visible"):
            xs = sorted(r[key] for r in rs)
            cells.append(f"{xs[0]:.2f} / **{xs[len(xs) // 2]:.2f}** / {xs[-1]:.2f} s")
        print(f"| {shape} | {label} | {cells[0]} | {cells[1]} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({f"{s}/{l}": rs for (s, l), rs in results.items()}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
