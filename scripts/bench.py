#!/usr/bin/env python3
"""Throughput benchmark of the core pipeline against its baselines, all on one WAL in one run.

Workload (issue #2): 1M inserts + 500k updates on a 5-column table with REPLICA IDENTITY FULL, in transactions of
1000 rows. One slot per consumer is created *before* the workload, so every consumer decodes the same WAL:

  in-server decode   SELECT count(*) FROM pg_logical_slot_peek_binary_changes(...)   (no network, no client)
  pg_recvlogical     pgoutput to /dev/null                                            (the C baseline)
  ficus null sink    `ficus run --null-sink`: decode + encode JSON, publish nothing
  ficus → broker     `ficus run` end to end to the Kafka-protocol broker (FICUS_TEST_KAFKA or a local noida-db)
  … + rules          the same two, with business-event rules (RULES below) instead of raw change events (issue #3)

Rates are changes/s over the time until the consumer reached the workload's end LSN. CPU% of the walsender and of
the client process are sampled from /proc. Usage: scripts/bench.sh [--rows N] [--updates N] [--big-txn N] [--skip-kafka]
"""

import argparse
import json
import os
import sys
import time

from lib.cluster import ROOT, Cluster, lsn, start_broker, stop_broker  # (shared with the other benchmarks)
from lib.consumers import run_ficus, run_recvlogical


def create_table(cluster):
    """The core workload's table (issue #2): 5 columns, REPLICA IDENTITY FULL, and its publication."""
    cluster.psql("CREATE TABLE bench (id bigint PRIMARY KEY, name text, qty int, price float8, ts timestamptz); "
                 "ALTER TABLE bench REPLICA IDENTITY FULL; CREATE PUBLICATION bench FOR TABLE bench;")


def write_workload(cluster, rows, updates, batch=1000):
    """`rows` inserts, then `updates` updates of the first rows, in transactions of `batch` rows; returns the end
    LSN. 50 transactions per psql call, so the writer is not the bottleneck."""
    for lo in range(1, rows + 1, batch * 50):
        stmts = [f"INSERT INTO bench SELECT i, 'name ' || i, i % 100, i * 0.5, now() "
                 f"FROM generate_series({b}, {min(b + batch - 1, rows)}) i;"
                 for b in range(lo, min(lo + batch * 50, rows + 1), batch)]
        cluster.psql("".join(stmts))
    for lo in range(1, updates + 1, batch * 50):
        stmts = [f"UPDATE bench SET qty = qty + 1, ts = now() WHERE id BETWEEN {b} AND {min(b + batch - 1, updates)};"
                 for b in range(lo, min(lo + batch * 50, updates + 1), batch)]
        cluster.psql("".join(stmts))
    return lsn(cluster.psql("SELECT pg_current_wal_insert_lsn()"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--updates", type=int, default=500_000)
    ap.add_argument("--skip-kafka", action="store_true")
    ap.add_argument("--big-txn", type=int, default=1_000_000, help="rows in the single-transaction RSS run")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/ficus"))
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args()

    cluster = Cluster()
    broker = None
    try:
        cluster.psql("CREATE DATABASE bench", db="postgres")
        create_table(cluster)
        slots = ["s_peek", "s_recv", "s_recvbin", "s_null", "s_kafka", "s_null_rules", "s_kafka_rules"]
        for s in slots:
            cluster.psql(f"SELECT pg_create_logical_replication_slot('{s}', 'pgoutput')")
        t0 = time.monotonic()
        end = write_workload(cluster, a.rows, a.updates)
        changes = a.rows + a.updates
        print(f"workload: {a.rows} inserts + {a.updates} updates written in {time.monotonic() - t0:.1f}s", flush=True)

        results = {}
        t = time.monotonic()
        n = int(cluster.psql("SELECT count(*) FROM pg_logical_slot_peek_binary_changes('s_peek', NULL, NULL, "
                             "'proto_version', '1', 'publication_names', 'bench')"))
        secs = time.monotonic() - t
        results["in-server decode"] = (changes / secs, secs, secs, float("nan"), float("nan"), None)
        print(f"in-server decode: {n} messages in {secs:.2f}s", flush=True)

        secs, conf, w, c, rss, _ = run_recvlogical(cluster, "s_recv", end)
        results["pg_recvlogical"] = (changes / secs, secs, conf, w, c, rss)
        # pgoutput `binary` values (PG 14+): does sending binary instead of text lower the walsender's cost?
        secs, conf, w, c, rss, _ = run_recvlogical(cluster, "s_recvbin", end, binary_values=True)
        results["recvlogical binary"] = (changes / secs, secs, conf, w, c, rss)

        secs, conf, w, c, rss, _ = run_ficus(cluster, "s_null", end, "127.0.0.1:9", True, a.binary)
        results["ficus null sink"] = (changes / secs, secs, conf, w, c, rss)
        secs, conf, w, c, rss, _ = run_ficus(cluster, "s_null_rules", end, "127.0.0.1:9", True, a.binary, rules=True)
        results["null sink + rules"] = (changes / secs, secs, conf, w, c, rss)

        if not a.skip_kafka:
            brokers, broker = start_broker()
            secs, conf, w, c, rss, _ = run_ficus(cluster, "s_kafka", end, brokers, False, a.binary,
                                            broker_pid=broker.pid if broker else None)
            results["ficus -> broker"] = (changes / secs, secs, conf, w, c, rss)
            secs, conf, w, c, rss, _ = run_ficus(cluster, "s_kafka_rules", end, brokers, False, a.binary,
                                            broker_pid=broker.pid if broker else None, rules=True)
            results["broker + rules"] = (changes / secs, secs, conf, w, c, rss)

            # Peak RSS through one huge transaction (issue #2: <= 64 MiB), end to end to the broker.
            cluster.psql("CREATE TABLE big (id bigint PRIMARY KEY, name text, qty int, price float8, ts timestamptz); "
                         "CREATE PUBLICATION big FOR TABLE big;")
            # A slot cannot be created in a transaction that has written, hence a statement of its own.
            cluster.psql("SELECT pg_create_logical_replication_slot('s_big', 'pgoutput')")
            cluster.psql(f"INSERT INTO big SELECT i, md5(i::text), i % 100, i * 0.5, now() "
                         f"FROM generate_series(1, {a.big_txn}) i")
            big_end = lsn(cluster.psql("SELECT pg_current_wal_insert_lsn()"))
            secs, conf, w, c, rss, _ = run_ficus(cluster, "s_big", big_end, brokers, False, a.binary, table="big")
            results[f"1 txn of {a.big_txn // 1000}k rows"] = (a.big_txn / secs, secs, conf, w, c, rss)

        base = results["pg_recvlogical"][0]
        print(f"\n{'consumer':<20} {'changes/s':>10} {'sent s':>7} {'confirmed s':>11} {'vs recvlogical':>14} "
              f"{'walsender CPU':>13} {'client CPU':>10} {'peak RSS':>9}")
        for name, (rate, secs, conf, w, c, rss) in results.items():
            rss_s = f"{rss:.1f}MiB" if rss else "-"
            print(f"{name:<20} {rate:>10,.0f} {secs:>7.2f} {conf:>11.2f} {rate / base:>13.2f}x {w:>12.0f}% "
                  f"{c:>9.0f}% {rss_s:>9}")
        print("\nchanges/s = changes / seconds until the walsender sent the last change (the client drained it);")
        print("confirmed s = until the slot's confirmed_flush_lsn reached the end (ficus -> broker: Kafka acked it all).")
        print()
        null = results["ficus null sink"][0] / base
        print(f"target ficus null sink >= 1.1x pg_recvlogical: {null:.2f}x {'MET' if null >= 1.1 else 'MISSED'}")
        if "ficus -> broker" in results:
            # End to end is judged on the time until everything was acknowledged by Kafka and confirmed.
            e2e = changes / results["ficus -> broker"][2] / base
            print(f"target ficus -> broker (until confirmed) >= 0.85x pg_recvlogical: {e2e:.2f}x "
                  f"{'MET' if e2e >= 0.85 else 'MISSED'}")
        # Rules (issue #3): the same WAL through 4 rules (3 state transitions) vs raw passthrough, <= 25% cost.
        for raw_name, rules_name, col in (("ficus null sink", "null sink + rules", 0), ("ficus -> broker", "broker + rules", 2)):
            if raw_name in results and rules_name in results:
                raw_rate = changes / results[raw_name][col] if col else results[raw_name][0]
                rules_rate = changes / results[rules_name][col] if col else results[rules_name][0]
                cost = 1 - rules_rate / raw_rate
                print(f"target rules cost <= 25% ({rules_name} vs {raw_name}{', until confirmed' if col else ''}): "
                      f"{rules_rate:,.0f} vs {raw_rate:,.0f} changes/s = {100 * cost:.0f}% {'MET' if cost <= 0.25 else 'MISSED'}")
        for name, (_, _, _, _, _, rss) in results.items():
            if name.startswith("1 txn") and rss:
                print(f"target peak RSS through {name} <= 64 MiB: {rss:.1f} MiB {'MET' if rss <= 64 else 'MISSED'}")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({k: {"rate": v[0], "seconds_sent": v[1], "seconds_confirmed": v[2], "walsender_cpu": v[3],
                               "client_cpu": v[4], "peak_rss_mib": v[5]} for k, v in results.items()}, f, indent=2)
    finally:
        cluster.stop()
        stop_broker(broker)


if __name__ == "__main__":
    sys.exit(main())
