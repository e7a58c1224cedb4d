#!/usr/bin/env python3
"""Commit → Kafka latency of ficus at a steady load (issue #5): p50/p95/p99 and a plot.

A fresh PostgreSQL cluster and a local broker (or FICUS_TEST_KAFKA), ficus end to end with raw change events, and a
workload of `--rate` changes/s (transactions of `--batch` rows, evenly paced) for `--seconds`. A consumer reads every
event and computes, per event, broker timestamp − the source transaction's commit time (`source.commitTime`). The
topic is created with `message.timestamp.type=LogAppendTime` so the timestamp is the broker's append time; if the
broker ignores that, the producer's create time is used and the script says so. ficus's own
`ficus_commit_to_ack_seconds` histogram (commit → every record acknowledged) is read from /metrics as a cross-check.

Prints the figures next to the target (p99 ≤ 50 ms) and writes a PNG (latency over time + distribution).
Usage: scripts/latency.sh [--rate 5000] [--seconds 60] [--batch 100] [--png docs/latency.png]
"""

import argparse
import datetime
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import cluster as bench  # noqa: E402  (the cluster and broker helpers shared by the benchmarks)

from confluent_kafka import Consumer, TopicPartition, TIMESTAMP_LOG_APPEND_TIME  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402


def parse_ts(text):
    # "2026-11-22T08:00:00.123456Z"
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def workload(cluster, rate, batch, seconds, stop, writers=1):
    """Writes `rate` rows/s in transactions of `batch` rows through `writers` psql sessions (each `rate / writers`,
    paced evenly); returns the rows written. One session tops out at some 30-40k rows/s of 100-row transactions on
    the 2-core VM, so higher rates need more."""
    if writers == 1:
        return session(cluster, rate, batch, seconds, stop)
    rows = [0] * writers

    def run(i):
        rows[i] = session(cluster, rate / writers, batch, seconds, stop)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(rows)


def session(cluster, rate, batch, seconds, stop):
    """Writes `rate` rows/s in transactions of `batch` rows through one psql session, paced evenly."""
    psql = subprocess.Popen(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(cluster.port),
                             "-U", "postgres", "-d", "bench"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)
    interval = batch / rate
    start = time.monotonic()
    n = 0
    while not stop.is_set() and time.monotonic() - start < seconds:
        due = start + n * interval
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        psql.stdin.write(f"INSERT INTO lat (v) SELECT g FROM generate_series(1, {batch}) g;\n")
        psql.stdin.flush()
        n += 1
    psql.stdin.close()
    psql.wait()
    return n * batch


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * (len(sorted_values) - 1)))))
    return sorted_values[k]


def histogram_quantiles(metrics_text, name):
    """p50/p99 upper bounds from a Prometheus histogram's buckets."""
    buckets = []
    for line in metrics_text.splitlines():
        if line.startswith(name + "_bucket{le=\""):
            le = line.split("le=\"")[1].split("\"")[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return None, None, 0
    total = buckets[-1][1]
    q = lambda p: next(le for le, c in buckets if c >= p * total)  # noqa: E731
    return q(0.5), q(0.99), int(total)


def measure(rate, seconds, batch=100, warmup=5.0, binary=os.path.join(bench.ROOT, "target/release/ficus"), png=None,
            writers=1, kafka_properties=()):
    """One latency run (fresh cluster, broker and ficus) at `rate` changes/s; prints the figures, writes the plot to
    `png` (None: no plot) and returns them: the achieved rate, p50/p95/p99/max in ms, events consumed and expected.
    A `rate` the `writers` psql sessions cannot reach runs at their saturation (the achieved rate says what that was)."""
    # synchronous_commit stays on (PostgreSQL's default): with it off, committed WAL waits for the WAL writer
    # (wal_writer_delay, 200 ms) before the walsender may send it, which alone adds 0-200 ms to every event.
    cluster = bench.Cluster(synchronous_commit="on")
    broker = None
    ficus = None
    try:
        cluster.psql("CREATE DATABASE bench", db="postgres")
        cluster.psql("CREATE TABLE lat (id bigserial PRIMARY KEY, v int, ts timestamptz DEFAULT now())")
        # No trimmer: this script deletes what its consumer has read itself (below).
        brokers, broker = bench.start_broker(trim=False)
        topic = "lat.public.lat"
        admin = AdminClient({"bootstrap.servers": brokers})
        fs = admin.create_topics([NewTopic(topic, 1, 1, config={"message.timestamp.type": "LogAppendTime"})])
        for f in fs.values():
            try:
                f.result(10)
            except Exception as e:  # noqa: BLE001
                print(f"note: creating {topic} with LogAppendTime: {e}")

        state = tempfile.mkdtemp(prefix="ficus-latency-")
        port = bench.free_port()
        cfg = os.path.join(state, "ficus.yaml")
        with open(cfg, "w") as f:
            f.write(f"source:\n  url: {cluster.url()}\n  slot: lat\n  publication: lat\n  tables: [public.lat]\n"
                    f"  status_interval_secs: 1\nkafka:\n  brokers: {brokers}\n"
                    + ("  properties:\n" + "".join(f"    {k}: '{v}'\n" for k, v in kafka_properties)
                       if kafka_properties else "")
                    + f"state:\n  dir: {state}\n"
                    f"changes:\n  tables: ['*']\n  topic_prefix: lat\nhealth:\n  listen: 127.0.0.1:{port}\n")
        log = open(os.path.join(state, "log"), "w")
        ficus = subprocess.Popen([binary, "run", "--config", cfg], stdout=subprocess.DEVNULL, stderr=log,
                                 env={**os.environ, "RUST_LOG": "warn"})
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                    break
            except Exception:  # noqa: BLE001
                pass
            if time.monotonic() > deadline or ficus.poll() is not None:
                raise RuntimeError("ficus did not become ready; see " + os.path.join(state, "log"))
            time.sleep(0.2)

        # The consumer reads while the writers run and deletes what it has read (DeleteRecords) every half second.
        # The local broker keeps its whole log in one JSON file that it rewrites every second or two: left to grow
        # (~90 MB of JSON after 1M events), the rewrites cost it ever more CPU and pauses (its acknowledgements to
        # ficus stopped for up to 1.4 s at 50k/s). A real broker's cost per append does not grow with what it
        # retains, so the benchmark keeps the stand-in's log short (lib/cluster.py, start_trimmer). The consumer
        # only slices the commit time out of each value and keeps the broker's timestamp: parsing every event as
        # JSON cost the measuring process ~75% of a core at 50k events/s, taken from the two cores PostgreSQL, the
        # broker and ficus share.
        consumer = Consumer({"bootstrap.servers": brokers, "group.id": "latency", "auto.offset.reset": "earliest",
                             "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        consumer.subscribe([topic])
        raw = []  # (commit time text, broker timestamp in ms)
        ts_types = set()
        stop = threading.Event()
        result = {}

        def write():
            started = time.monotonic()
            result["rows"] = workload(cluster, rate, batch, seconds, stop, writers)
            result["secs"] = time.monotonic() - started
        writer = threading.Thread(target=write)
        t0 = time.time()
        writer.start()
        expected = None
        idle_since = None
        last_offset = -1
        deleted_at = time.monotonic()
        marker = b'"commitTime":"'
        while True:
            msgs = [m for m in consumer.consume(5000, 0.2) if not m.error()]
            if msgs:
                idle_since = None
                if len(ts_types) == 0:
                    ts_types.add(msgs[0].timestamp()[0])
                for m in msgs:
                    v = m.value()
                    k = v.find(marker) + len(marker)
                    raw.append((v[k:v.find(b'"', k)], m.timestamp()[1]))
                last_offset = msgs[-1].offset()
            elif not writer.is_alive():
                expected = result.get("rows", 0)
                idle_since = idle_since or time.monotonic()
                if len(raw) >= expected or time.monotonic() - idle_since > 30:
                    break
            if last_offset >= 0 and time.monotonic() - deleted_at > 0.5:
                admin.delete_records([TopicPartition(topic, 0, last_offset + 1)])
                deleted_at = time.monotonic()
        consumer.close()
        stamps = {}
        samples = []  # (commit time, latency s)
        for text, ts_ms in raw:
            commit = stamps.get(text)
            if commit is None:
                commit = stamps[text] = parse_ts(text.decode())
            samples.append((commit, ts_ms / 1000.0 - commit))
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

        steady = sorted(lat for commit, lat in samples if commit - t0 >= warmup)
        p50, p95, p99 = (percentile(steady, p) * 1000 for p in (50, 95, 99))
        worst = steady[-1] * 1000 if steady else float("nan")
        kind = "broker append time" if ts_types == {TIMESTAMP_LOG_APPEND_TIME} else "producer create time"
        h50, h99, hn = histogram_quantiles(metrics, "ficus_commit_to_ack_seconds")
        achieved = result["rows"] / result["secs"]
        print(f"workload: {expected} changes at {rate}/s (achieved {achieved:,.0f}/s) in transactions of {batch} "
              f"from {writers} session(s) for {seconds} s; "
              f"{len(samples)} events consumed, {len(steady)} after {warmup:.0f} s warm-up")
        print(f"commit -> {kind}: p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms")
        if h50 is not None:
            print(f"ficus_commit_to_ack_seconds ({hn} transactions, bucket upper bounds): p50 <= {h50 * 1000:.1f} ms, "
                  f"p99 <= {h99 * 1000:.1f} ms")
        print(f"target p99 <= 50 ms: {p99:.1f} ms {'MET' if p99 <= 50 else 'MISSED'}")
        if len(samples) < (expected or 0):
            print(f"WARNING: {expected - len(samples)} events not consumed")

        figures = {"rate": rate, "achieved_rate": achieved, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
                   "max_ms": worst, "events": len(samples), "expected": expected, "timestamp": kind}
        if png is None:
            return figures
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
            xs = [c - t0 for c, _ in samples]
            ys = [lat * 1000 for _, lat in samples]
            ax1.plot(xs, ys, ",", alpha=0.5)
            ax1.axhline(p99, color="red", linestyle="--", label=f"p99 {p99:.1f} ms")
            ax1.axhline(p50, color="green", linestyle="--", label=f"p50 {p50:.1f} ms")
            ax1.set_xlabel("commit time (s since start)")
            ax1.set_ylabel(f"commit -> {kind} (ms)")
            ax1.set_title(f"ficus latency at {rate} changes/s")
            ax1.legend()
            ax2.hist([v * 1000 for v in steady], bins=100)
            ax2.set_xlabel("latency (ms)")
            ax2.set_ylabel("events")
            ax2.set_yscale("log")
            ax2.set_title("distribution (after warm-up)")
            fig.tight_layout()
            fig.savefig(png, dpi=100)
            print(f"plot: {png}")
        except ImportError:
            print("matplotlib missing: no plot")
        return figures
    finally:
        if ficus:
            ficus.send_signal(signal.SIGTERM)
            try:
                ficus.wait(timeout=30)
            except subprocess.TimeoutExpired:
                ficus.kill()
        cluster.stop()
        bench.stop_broker(broker)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=5000, help="changes per second")
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--batch", type=int, default=100, help="rows per transaction")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds excluded at the start")
    ap.add_argument("--binary", default=os.path.join(bench.ROOT, "target/release/ficus"))
    ap.add_argument("--png", default=os.path.join(bench.ROOT, "docs/latency.png"))
    ap.add_argument("--writers", type=int, default=1, help="psql sessions sharing the rate")
    ap.add_argument("--kafka-property", action="append", default=[], metavar="KEY=VALUE",
                    help="a librdkafka property for ficus's producer (kafka.properties), e.g. linger.ms=1; repeatable")
    a = ap.parse_args()
    props = [tuple(p.split("=", 1)) for p in a.kafka_property]
    measure(a.rate, a.seconds, a.batch, a.warmup, a.binary, a.png, a.writers, props)


if __name__ == "__main__":
    sys.exit(main())
