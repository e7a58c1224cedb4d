"""The consumers the throughput benchmarks run against one slot each: ficus (null sink or end to end, raw change
events or business-event rules), pg_recvlogical (PostgreSQL's own client, the baseline) and the pg_walstream peer
(scripts/peer, a Rust crate decoding every change, no sink). Each runs until the slot confirmed a given end LSN and
returns lib.cluster.Drain. Shared by bench.py and bench_all.py."""

import os
import shutil
import signal
import subprocess
import tempfile
import time

from lib.cluster import ROOT, wait_confirmed

# Issue #3's rules workload: three state-transition rules on updates, plus one rule for inserts so that every change
# yields at least one event, as the raw passthrough does. Every update evaluates all three `when`s.
RULES = """events:
  - name: ItemAdded
    table: public.bench
    on: insert
    key: string(new.id)
    topic: {slot}.items
    data: {{itemId: new.id, name: new.name, qty: new.qty, price: new.price, addedAt: new.ts}}
  - name: QtyIncreased
    table: public.bench
    on: update
    when: new.qty > old.qty
    key: string(new.id)
    topic: {slot}.items
    data: {{itemId: new.id, from: old.qty, to: new.qty, at: new.ts}}
  - name: QtyReachedTen
    table: public.bench
    on: update
    when: old.qty % 10 != 0 && new.qty % 10 == 0
    key: string(new.id)
    topic: {slot}.items
    data: {{itemId: new.id, qty: new.qty}}
  - name: PriceChanged
    table: public.bench
    on: update
    when: old.price != new.price
    key: string(new.id)
    topic: {slot}.items
    data: {{itemId: new.id, from: old.price, to: new.price}}
"""

# ficus logs this (info, target ficus::pipeline::session) once the replication stream started.
STREAMING_LINE = "streaming slot="
RUST_LOG = "warn,ficus::pipeline::session=info"


def ficus_config(cluster, slot, brokers, state, table="bench", rules=False, tables=None, delivery="at_least_once",
                 health=None, envelope_headers=None):
    """A ficus config capturing public.`table` (or every table of `tables`) through publication `table`;
    `health`: the `health.listen` address (for `/status`), none by default."""
    changes = "[]" if rules else "['*']"
    captured = ", ".join(tables or [f"public.{table}"])
    # FICUS_BENCH_KAFKA_PROPERTIES, e.g. "queue.buffering.max.kbytes: 2048, linger.ms: 5": kafka.properties for an
    # A/B of producer settings without a rebuild.
    props = os.environ.get("FICUS_BENCH_KAFKA_PROPERTIES")
    return (f"source:\n  url: {cluster.url()}\n  slot: {slot}\n  publication: {table}\n  tables: [{captured}]\n"
            f"  status_interval_secs: 1\nkafka:\n  brokers: {brokers}\n  delivery: {delivery}\n"
            + (f"  properties: {{{props}}}\n" if props else "")
            + (f"health:\n  listen: {health}\n" if health else "") +
            # Streaming only: the default `snapshot.mode: initial` would also copy the whole table, work the other
            # consumers of the same WAL do not do (snapshots have their own rows and snapshot_bench.py).
            f"snapshot:\n  mode: never\n"
            f"state:\n  dir: {state}\nchanges:\n  tables: {changes}\n  topic_prefix: {slot}\n"
            + (f"event_defaults:\n  envelope_headers: {envelope_headers}\n" if envelope_headers else "")
            + (RULES.format(slot=slot) if rules else ""))


def wait_streaming(proc, log_path, timeout=300):
    """Waits until ficus logged that it streams; returns the seconds since `proc` started polling here."""
    start = time.monotonic()
    while True:
        with open(log_path) as f:
            if STREAMING_LINE in f.read():
                return time.monotonic() - start
        if proc.poll() is not None:
            raise RuntimeError(f"ficus exited with {proc.returncode} before streaming; see {log_path}")
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"ficus did not stream within {timeout} s; see {log_path}")
        time.sleep(0.02)


def run_ficus(cluster, slot, end, brokers, null_sink, binary, table="bench", broker_pid=None, rules=False,
              tables=None, workload=None, info=None, envelope_headers=None):
    """Runs ficus on `slot` until the slot confirmed `end`; returns the Drain.

    `workload`: a function called once ficus streams, which writes the WAL and returns its end LSN (`end` is then
    ignored): the drain is then timed from the workload's commit. `info`: a dict that receives `to_streaming`, the
    seconds from starting ficus to its "streaming" log line (measured when `workload` or `tables` is given)."""
    state = tempfile.mkdtemp(prefix="ficus-bench-state-")
    cfg = os.path.join(state, "ficus.yaml")
    with open(cfg, "w") as f:
        f.write(ficus_config(cluster, slot, brokers, state, table, rules, tables, envelope_headers=envelope_headers))
    args = [binary, "run", "--config", cfg] + (["--null-sink"] if null_sink else [])
    # A profiler prefix, e.g. "perf record -e cpu-clock -g -o /tmp/p.data --": FICUS_BENCH_WRAP for the null-sink
    # run, FICUS_BENCH_WRAP_KAFKA for the end-to-end run.
    # FICUS_BENCH_WRAP_RULES and FICUS_BENCH_WRAP_RULES_KAFKA for the same two runs with rules.
    wrap_var = ("FICUS_BENCH_WRAP" + ("_RULES" if rules else "") + ("" if null_sink else "_KAFKA"))
    wrap = os.environ.get(wrap_var, "").split()
    if wrap and table == "bench":
        args = wrap + args
    log_path = os.path.join(state, "log")
    log = open(log_path, "w")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "RUST_LOG": RUST_LOG})
    try:
        if workload or tables:
            to_streaming = wait_streaming(proc, log_path)
            if info is not None:
                info["to_streaming"] = to_streaming
        if workload:
            end = workload()
        result = wait_confirmed(cluster, slot, end, proc, other_pid=broker_pid)
    except Exception:
        with open(log_path) as f:
            print(f"ficus log ({slot}):\n{f.read()[-3000:]}", flush=True)
        raise
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    shutil.rmtree(state, ignore_errors=True)
    return result


def drain(cmd, cluster, slot, end, timeout=1800):
    """Runs the client `cmd` until `slot` confirmed `end`, then stops it; returns the Drain."""
    client = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return wait_confirmed(cluster, slot, end, client, timeout=timeout)
    finally:
        client.terminate()
        client.wait()


def run_recvlogical(cluster, slot, end, binary_values=False, publication="bench"):
    opts = ["-o", "proto_version=1", "-o", f"publication_names={publication}"] + (
        ["-o", "binary=true"] if binary_values else [])
    return drain(["pg_recvlogical", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", "-d", "bench",
                  "--slot", slot, "--start", *opts, "-f", "/dev/null", "-F", "1", "-s", "1"], cluster, slot, end)


PEER = os.path.join(ROOT, "scripts/peer/target/release/walstream-peer")


def run_peer(cluster, slot, end, publication="bench", binary=PEER):
    """The pg_walstream peer (scripts/peer): protocol 1, text values, every change decoded and dropped."""
    return drain([binary, cluster.url(), slot, publication], cluster, slot, end, timeout=600)


def topic_messages(brokers, topic):
    """Messages on `topic` (sum of its partitions' high watermarks; exactly_once: committed ones and the commit
    markers' offsets), so a run that confirmed without publishing every row cannot pass for a fast one. None without
    confluent-kafka (scripts/bench.sh runs this in .venv/bench, which has it)."""
    try:
        from confluent_kafka import Consumer, TopicPartition
    except ImportError:
        return None
    c = Consumer({"bootstrap.servers": brokers, "group.id": "ficus-big-txn-bench", "isolation.level": "read_committed"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()
