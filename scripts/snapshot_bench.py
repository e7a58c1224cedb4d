#!/usr/bin/env python3
"""Snapshot throughput (issue #4): ficus copying a 1M-row table vs `COPY (SELECT *) TO STDOUT`, in one run.

  COPY baseline      psql -c "COPY (SELECT * FROM snap) TO STDOUT" > /dev/null   (the server's fastest export)
  ficus null sink    `ficus run --null-sink` with snapshot.mode initial_only: chunked reads with watermarks, rows
                     decoded and encoded to raw change events (JSON), nothing published; until ficus exits 0
  ficus -> broker    the same, published to the Kafka-protocol broker (optional: --kafka)

Rates are rows/s over the wall time of the run (ficus: start to exit, including connecting and the final checkpoint).
Usage: scripts/bench.sh snapshot [--rows N] [--chunk-size N] [--kafka]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib.cluster import ROOT, Cluster, peak_rss_mib, start_broker, stop_broker  # noqa: E402

TARGET = 0.3


def create_table(cluster, rows):
    """The snapshotted table: `rows` rows of the core benchmark's 5-column shape, vacuumed and analyzed."""
    cluster.psql("CREATE TABLE snap (id int PRIMARY KEY, a text, b int, c float8, d timestamptz)")
    cluster.psql(f"INSERT INTO snap SELECT i, md5(i::text), i % 1000, i * 1.5, now() FROM generate_series(1, {rows}) i")
    cluster.psql("VACUUM ANALYZE snap")


def copy_baseline(cluster):
    start = time.monotonic()
    with open(os.devnull, "wb") as null:
        subprocess.run(["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", "-d", "bench",
                        "-c", "COPY (SELECT * FROM snap) TO STDOUT"], check=True, stdout=null)
    return time.monotonic() - start


def run_ficus(cluster, binary, slot, chunk_size, brokers, null_sink):
    state = tempfile.mkdtemp(prefix="ficus-snapbench-")
    cfg = os.path.join(state, "ficus.yaml")
    with open(cfg, "w") as f:
        f.write(f"source:\n  url: {cluster.url()}\n  slot: {slot}\n  publication: {slot}\n  tables: [public.snap]\n"
                f"kafka:\n  brokers: {brokers}\n"
                + (f"  properties: {{{os.environ['FICUS_BENCH_KAFKA_PROPERTIES']}}}\n"
                   if os.environ.get("FICUS_BENCH_KAFKA_PROPERTIES") else "")
                + f"state:\n  dir: {state}\nchanges:\n  tables: ['*']\n  topic_prefix: {slot}\n"
                f"snapshot:\n  mode: initial_only\n  chunk_size: {chunk_size}\n")
    args = [binary, "run", "--config", cfg] + (["--null-sink"] if null_sink else [])
    with open(os.path.join(state, "log"), "w") as log:
        start = time.monotonic()
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "RUST_LOG": "info"})
        rss = None
        while proc.poll() is None:
            rss = peak_rss_mib(proc.pid) or rss
            time.sleep(0.05)
        seconds = time.monotonic() - start
    text = open(os.path.join(state, "log")).read()
    shutil.rmtree(state, ignore_errors=True)
    if proc.returncode != 0 or "snapshot of table finished" not in text:
        sys.exit(f"ficus failed (exit {proc.returncode}):\n{text[-3000:]}")
    return seconds, rss


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--chunk-size", type=int, default=10_000)
    p.add_argument("--kafka", action="store_true", help="also snapshot into the broker")
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "ficus"))
    a = p.parse_args()
    binary = a.binary
    cluster = Cluster()
    broker = None
    try:
        cluster.psql("CREATE DATABASE bench", db="postgres")
        create_table(cluster, a.rows)
        copy_baseline(cluster)  # warm the cache
        results = {}
        copy_s = min(copy_baseline(cluster) for _ in range(3))
        results["COPY TO STDOUT"] = (a.rows / copy_s, copy_s, None)
        null_s, null_rss = min(run_ficus(cluster, binary, f"snapnull{i}", a.chunk_size, "127.0.0.1:1", True) for i in range(3))
        results["ficus null sink"] = (a.rows / null_s, null_s, null_rss)
        if a.kafka:
            brokers, broker = start_broker()
            k_s, k_rss = run_ficus(cluster, binary, "snapkafka", a.chunk_size, brokers, False)
            results["ficus -> broker"] = (a.rows / k_s, k_s, k_rss)
        print(f"\nsnapshot of {a.rows:,} rows (5 columns), chunk_size {a.chunk_size}, best of 3 (broker: 1 run)")
        print(f"{'':<18}{'rows/s':>12}{'seconds':>10}{'peak RSS MiB':>14}")
        for name, (rate, secs, rss) in results.items():
            print(f"{name:<18}{rate:>12,.0f}{secs:>10.2f}{(f'{rss:.1f}' if rss else '-'):>14}")
        ratio = results["ficus null sink"][0] / results["COPY TO STDOUT"][0]
        print(f"\ntarget ficus null sink >= {TARGET}x COPY: {ratio:.2f}x {'MET' if ratio >= TARGET else 'MISSED'}")
    finally:
        cluster.stop()
        stop_broker(broker)


if __name__ == "__main__":
    sys.exit(main())
