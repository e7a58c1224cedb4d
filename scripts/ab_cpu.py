"""A/B of two ficus binaries on the same WAL: CPU per change (all threads, utime + stime from /proc) and drain rate,
null sink and end to end (→ broker), with the binaries alternated so that the VM's drift hits both alike.

One cluster, the core workload (bench.py's table and transactions), one slot per run created before the workload, so
every run decodes exactly the same WAL. Usage (through scripts/bench.sh, which builds nothing in this mode):

    scripts/bench.sh ab OLD_BINARY NEW_BINARY [--rows N] [--updates N] [--reps N] [--modes null,kafka,rules,rules-null,rules-minimal]

`rules-null` runs the rules on the null sink (their CPU without the producer and the broker); `rules-minimal` the
rules to the broker with `event_defaults.envelope_headers: minimal`. Prints, per mode and binary, min / median / max
of the CPU per change and of the rate, and the median ratio new/old.
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as core  # noqa: E402  (the core workload)
from lib.cluster import Cluster, start_broker, stop_broker  # noqa: E402
from lib.consumers import run_ficus  # noqa: E402


# Modes that run ficus with --null-sink (timed until sent, no broker needed).
NULL_SINK_MODES = ("null", "rules-null")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--updates", type=int, default=300_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--modes", default="null,kafka,rules")
    args = ap.parse_args()
    modes = args.modes.split(",")
    runs = [(mode, rep, which) for rep in range(args.reps) for mode in modes for which in ("old", "new")]
    # Alternate which binary goes first in each repetition.
    runs = [(m, r, w if r % 2 == 0 else ("new" if w == "old" else "old")) for m, r, w in runs]
    binaries = {"old": os.path.abspath(args.old), "new": os.path.abspath(args.new)}
    cluster = Cluster()
    broker = None
    try:
        cluster.psql("CREATE DATABASE bench", db="postgres")
        core.create_table(cluster)
        slots = [f"ab_{i}" for i in range(len(runs))]
        for s in slots:
            cluster.psql(f"SELECT pg_create_logical_replication_slot('{s}', 'pgoutput')")
        end = core.write_workload(cluster, args.rows, args.updates)
        changes = args.rows + args.updates
        if any(m not in NULL_SINK_MODES for m in modes):
            brokers, broker = start_broker()
        else:
            brokers = "127.0.0.1:9"
        results = {}
        for slot, (mode, rep, which) in zip(slots, runs):
            d = run_ficus(cluster, slot, end, brokers, mode in NULL_SINK_MODES, binaries[which],
                          rules=mode.startswith("rules"),
                          envelope_headers="minimal" if mode.endswith("-minimal") else None,
                          broker_pid=broker and broker.pid)
            secs = d.secs if mode in NULL_SINK_MODES else d.conf_secs
            cpu_us = d.client_cpu_s / changes * 1e6
            results.setdefault((mode, which), []).append((cpu_us, changes / secs))
            print(f"{mode:6} rep {rep + 1} {which}: {cpu_us:.2f} us/change, {changes / secs:,.0f} changes/s", flush=True)
    finally:
        cluster.stop()
        stop_broker(broker)
    print(f"\n{changes:,} changes per run; min / median / max over {args.reps} runs; rate until sent (null) or "
          "confirmed (kafka, rules)")
    for mode in modes:
        med = {}
        for which in ("old", "new"):
            cpu = sorted(c for c, _ in results[(mode, which)])
            rate = sorted(r for _, r in results[(mode, which)])
            med[which] = (statistics.median(cpu), statistics.median(rate))
            print(f"{mode:6} {which}: CPU {cpu[0]:.2f} / {statistics.median(cpu):.2f} / {cpu[-1]:.2f} us/change, "
                  f"rate {rate[0]:,.0f} / {statistics.median(rate):,.0f} / {rate[-1]:,.0f} changes/s")
        print(f"{mode:6} new/old: CPU {med['new'][0] / med['old'][0]:.2f}x, rate {med['new'][1] / med['old'][1]:.2f}x")


if __name__ == "__main__":
    main()
