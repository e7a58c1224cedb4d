#!/usr/bin/env python3
"""One large source transaction: where the time goes between its COMMIT and its last event being visible.

The question behind it (issue 19, "large transactions before commit"): would streaming in-progress transactions
(pgoutput protocol v2 `streaming`) pay off? Without it the walsender decodes a transaction only once it committed,
so a 1M-row transaction's first event can leave PostgreSQL only after the whole transaction was decoded (and spilled
to disk beyond `logical_decoding_work_mem`). Streaming could at best hide the part of the time that passes before
ficus receives the first change; the rest (sending, encoding, producing, the Kafka commit) remains.

A fresh cluster (`synchronous_commit=on`), the local broker, ficus end to end with raw change events in the given
delivery mode (`exactly_once`: the events become visible to read_committed consumers with the Kafka commit, and
ficus's flushed position — `/status` `flushedLsn` — moves only after that commit; `at_least_once`: after Kafka
acknowledged every event). Then one `INSERT … SELECT generate_series(1, N)` in one transaction. From the moment the
COMMIT returned, `/status` is polled every 20 ms:

  first received   ficus's `receivedLsn` passed the position before the transaction: the first change arrived
  all received     `receivedLsn` reached the commit's end
  visible          `flushedLsn` reached the commit's end (exactly_once: committed in Kafka, read_committed sees it)

Usage: scripts/bench.sh big-txn [--rows 1000000] [--delivery exactly_once|at_least_once] [--reps 3]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib.cluster import ROOT, Cluster, free_port, lsn, peak_rss_mib, start_broker, stop_broker  # noqa: E402
from lib.consumers import ficus_config, topic_messages  # noqa: E402


def status(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=1) as r:
            return json.load(r)
    except OSError:
        return None


def lsn_of(s, key):
    v = (s or {}).get(key)
    return lsn(v) if v else 0


def run(cluster, brokers, binary, rows, delivery, rep, write=None):
    """One repetition; `write(cluster, table)` runs the transaction (default: one INSERT … SELECT of `rows`)."""
    slot = f"big_{delivery}_{rep}"
    table = f"big_{rep}_{delivery}"
    cluster.psql(f"CREATE TABLE {table} (id bigint PRIMARY KEY, name text, qty int, price float8, ts timestamptz); "
                 f"CREATE PUBLICATION {table} FOR TABLE {table};")
    state = tempfile.mkdtemp(prefix="ficus-bigtxn-")
    port = free_port()
    with open(os.path.join(state, "ficus.yaml"), "w") as f:
        f.write(ficus_config(cluster, slot, brokers, state, table, delivery=delivery, health=f"127.0.0.1:{port}"))
    proc = subprocess.Popen([binary, "run", "--config", os.path.join(state, "ficus.yaml")],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(state, "log"), "w"),
                            env={**os.environ, "RUST_LOG": "warn"})
    try:
        deadline = time.monotonic() + 60
        while not (status(port) or {}).get("flushedLsn"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ficus did not start: {open(os.path.join(state, 'log')).read()[-2000:]}")
            time.sleep(0.1)
        time.sleep(1)
        before = lsn(cluster.psql("SELECT pg_current_wal_insert_lsn()"))
        if write:
            write(cluster, table)
        else:
            cluster.psql(f"INSERT INTO {table} SELECT i, md5(i::text), i % 100, i * 0.5, now() "
                         f"FROM generate_series(1, {rows}) i")
        committed = time.monotonic()
        end = lsn(cluster.psql("SELECT pg_current_wal_insert_lsn()"))
        first = all_received = visible = None
        rss = None
        while visible is None:
            s = status(port)
            now = time.monotonic() - committed
            received = lsn_of(s, "receivedLsn")
            if first is None and received > before:
                first = now
            if all_received is None and received >= end:
                all_received = now
            if lsn_of(s, "flushedLsn") >= end:
                visible = now
                # `receivedLsn` is published with the route task's counts (at most 4 times a second), so a small
                # transaction can be flushed before it shows; nothing is received later than it is visible.
                first = visible if first is None else first
                all_received = visible if all_received is None else all_received
            rss = peak_rss_mib(proc.pid) or rss
            if proc.poll() is not None:
                raise RuntimeError(f"ficus exited: {open(os.path.join(state, 'log')).read()[-2000:]}")
            if now > 1800:
                raise RuntimeError("timeout")
            time.sleep(0.02)
        return {"first_received": first, "all_received": all_received, "visible": visible, "peak_rss_mib": rss,
                "events": topic_messages(brokers, f"{slot}.public.{table}")}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        shutil.rmtree(state, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--delivery", default="exactly_once", choices=["exactly_once", "at_least_once"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/ficus"))
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args()
    cluster = Cluster(synchronous_commit="on")
    broker = None
    results = []
    try:
        cluster.psql("CREATE DATABASE bench", db="postgres")
        brokers, broker = start_broker()
        for rep in range(a.reps):
            r = run(cluster, brokers, a.binary, a.rows, a.delivery, rep)
            results.append(r)
            print(f"rep {rep}: commit -> first change received {r['first_received']:.2f} s, all received "
                  f"{r['all_received']:.2f} s, visible ({a.delivery}) {r['visible']:.2f} s, "
                  f"peak RSS {r['peak_rss_mib']:.1f} MiB, messages on the topic {r['events']}", flush=True)
            if r["events"] is not None and r["events"] < a.rows:
                raise RuntimeError(f"only {r['events']} of {a.rows} rows reached the topic")
    finally:
        cluster.stop()
        stop_broker(broker)
    print(f"\n{a.rows:,} rows in one transaction, {a.delivery}, {a.reps} runs (min / median / max):")
    for key, label in (("first_received", "commit -> first change received"),
                       ("all_received", "commit -> last change received"), ("visible", "commit -> last event visible")):
        xs = sorted(r[key] for r in results)
        print(f"  {label:<34} {xs[0]:6.2f} / {xs[len(xs) // 2]:6.2f} / {xs[-1]:6.2f} s")
    xs = sorted(r["first_received"] / r["visible"] for r in results)
    print(f"  share of the wait spent before the first change arrived (the walsender decoding): "
          f"{100 * xs[len(xs) // 2]:.0f}% (median)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
