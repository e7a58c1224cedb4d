"""Shared helpers of the benchmark scripts: a throwaway PostgreSQL cluster, the test broker, CPU and RSS readings
from /proc, and waiting for a slot to confirm a position. Imported by bench.py, latency.py and snapshot_bench.py."""

import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PGBIN = "/usr/lib/postgresql/15/bin"
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def as_pg(cmd):
    return (["runuser", "-u", "postgres", "--"] + cmd) if os.geteuid() == 0 else cmd


class Cluster:
    def __init__(self, synchronous_commit="off"):
        self.dir = tempfile.mkdtemp(prefix="ficus-bench-")
        os.chmod(self.dir, 0o777)
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(as_pg([f"{PGBIN}/initdb", "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8",
                              "--locale=C", "-D", self.data]), check=True, stdout=subprocess.DEVNULL)
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c wal_level=logical -c fsync=off "
                "-c max_replication_slots=32 -c max_wal_senders=10 -c shared_buffers=512MB -c max_wal_size=4GB "
                f"-c synchronous_commit={synchronous_commit}")
        subprocess.run(as_pg([f"{PGBIN}/pg_ctl", "-w", "-D", self.data, "-l", os.path.join(self.dir, "log"),
                              "-o", opts, "start"]), check=True, stdout=subprocess.DEVNULL)

    def url(self, db="bench"):
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}?sslmode=disable"

    def psql(self, sql, db="bench"):
        out = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                              "-p", str(self.port), "-U", "postgres", "-d", db, "-c", sql],
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def session(self, db="bench"):
        """A [`Session`]: one psql process for many queries (a poll loop that started psql for each query cost ~14%
        of this 2-core machine at 50 polls/s, CPU taken from the consumer being measured)."""
        return Session(self, db)

    def stop(self):
        subprocess.run(as_pg([f"{PGBIN}/pg_ctl", "-D", self.data, "-m", "immediate", "stop"]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)


class Session:
    """One long-lived psql reading queries from a pipe; `query(sql)` returns what `Cluster.psql` would."""
    END = "__ficus_bench_end__"

    def __init__(self, cluster, db):
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                                      "-p", str(cluster.port), "-U", "postgres", "-d", db],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True,
                                     bufsize=1)

    def query(self, sql):
        self.proc.stdin.write(f"{sql};\n\\echo {self.END}\n")
        self.proc.stdin.flush()
        lines = []
        while True:
            line = self.proc.stdout.readline()
            if not line:  # psql exited: ON_ERROR_STOP after an error
                self.err.seek(0)
                raise RuntimeError(f"psql: {self.err.read().strip()}")
            if line.rstrip("\n") == self.END:
                return "\n".join(lines).strip()
            lines.append(line.rstrip("\n"))

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=10)
        self.err.close()


def lsn(text):
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def group_cpu_ticks(pgid):
    """CPU ticks of every process in process group `pgid` (the broker's wrapper and its server)."""
    total = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid:
                    total += int(fields[11]) + int(fields[12])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    return total


def peak_rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return None


def walsender_pid(cluster, slot):
    for _ in range(200):
        pid = cluster.psql(f"SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{slot}'")
        if pid:
            return int(pid)
        time.sleep(0.05)
    return None


# What wait_confirmed measured: seconds until sent and until confirmed, walsender and client CPU% while streaming,
# the client's peak RSS (MiB), and the client's CPU seconds (all its threads) from its start until confirmed.
Drain = collections.namedtuple("Drain", "secs conf_secs walsender_cpu client_cpu rss client_cpu_s")


def wait_confirmed(cluster, slot, end, proc, timeout=1800, other_pid=None):
    """Polls until the walsender sent `end` and the slot's confirmed_flush_lsn reached it.

    Returns a Drain. "Sent" is when
    the walsender handed the last byte to the socket: the client cannot lag it by more than the socket buffers, so
    it measures how fast the client drains the stream independently of how often each client reports its flush
    position. "Confirmed" adds the client's acknowledgement delay (for ficus: Kafka acks + the status update).
    """
    start = time.monotonic()
    ws = walsender_pid(cluster, slot)
    ws0, cl0 = cpu_ticks(ws) if ws else None, cpu_ticks(proc.pid)
    # A third process whose CPU matters (the local broker): it shares the machine's cores.
    ot0 = group_cpu_ticks(other_pid) if other_pid else None
    session = cluster.session()
    try:
        return _poll_confirmed(session, slot, end, proc, timeout, other_pid, start, ws, ws0, cl0, ot0)
    finally:
        session.close()


def _poll_confirmed(session, slot, end, proc, timeout, other_pid, start, ws, ws0, cl0, ot0):
    ws_last, cl_last, ot_last, rss, sent_at = ws0, cl0, ot0, None, None
    while True:
        row = session.query("SELECT coalesce(r.sent_lsn::text, ''), coalesce(s.confirmed_flush_lsn::text, '') "
                            "FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid "
                            f"WHERE s.slot_name = '{slot}'")
        sent, conf = row.split("|")
        now = time.monotonic()
        t = cpu_ticks(ws) if ws else None
        ws_last = t if t is not None else ws_last
        c = cpu_ticks(proc.pid)
        cl_last = c if c is not None else cl_last
        rss = peak_rss_mib(proc.pid) or rss
        if other_pid:
            o = group_cpu_ticks(other_pid)
            ot_last = o if o is not None else ot_last
        if sent_at is None and ((sent and lsn(sent) >= end) or (conf and lsn(conf) >= end)):
            sent_at = now
            # CPU over the streaming phase only, not the idle wait for the last confirmation.
            ws_sent, cl_sent, ot_sent = ws_last, cl_last, ot_last
        if conf and lsn(conf) >= end:
            break
        if proc.poll() is not None:
            raise RuntimeError(f"consumer exited early with {proc.returncode}")
        if now - start > timeout:
            raise RuntimeError("timeout")
        time.sleep(0.02)
    secs = sent_at - start
    conf_secs = time.monotonic() - start
    wcpu = 100.0 * (ws_sent - ws0) / TICK / secs if ws0 is not None and ws_sent is not None else float("nan")
    ccpu = 100.0 * (cl_sent - cl0) / TICK / secs if cl0 is not None and cl_sent is not None else float("nan")
    if other_pid and ot0 is not None and ot_sent is not None:
        print(f"  ({slot}: broker CPU {100.0 * (ot_sent - ot0) / TICK / secs:.0f}% while streaming)", flush=True)
    # /proc/<pid>/stat counts every thread of the process; the last sample is at (or just before) the confirmation.
    return Drain(secs, conf_secs, wcpu, ccpu, rss, cl_last / TICK if cl_last is not None else float("nan"))


def start_broker(trim=os.environ.get("FICUS_BENCH_BROKER_TRIM", "1") != "0"):
    """A fresh local broker (or FICUS_TEST_KAFKA's, left alone): `(bootstrap servers, process)`. With `trim`, a
    thread deletes what it holds as it arrives (start_trimmer)."""
    if os.environ.get("FICUS_TEST_KAFKA"):
        return os.environ["FICUS_TEST_KAFKA"], None
    noida = os.environ.get("FICUS_NOIDA", os.path.join(ROOT, ".venv/noida/bin/noida-db"))
    # The launcher is a Python wrapper around a bundled server binary; run the binary itself so that stopping it
    # (and measuring its CPU) reaches the real server.
    import glob
    bundled = glob.glob(os.path.join(os.path.dirname(os.path.dirname(noida)), "lib/python*/site-packages/noida_db/noida-db"))
    if bundled:
        noida = bundled[0]
    port = free_port()
    data = tempfile.mkdtemp(prefix="ficus-bench-kafka-")
    # Own session: the wrapper starts the server as a child, and both are stopped (and measured) as a group.
    proc = subprocess.Popen([noida, "start", "--only", "kafka", "--kafka-port", str(port), "--data-dir", data],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # The broker's log directory goes with it (stop_broker): a full benchmark run writes tens of GB there.
    proc.data_dir = data
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            brokers = f"127.0.0.1:{port}"
            proc.trimmer = start_trimmer(brokers) if trim else None
            return brokers, proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("broker did not start")


TRIM_INTERVAL = 0.5


def start_trimmer(brokers):
    """Deletes (DeleteRecords) every record below each partition's high watermark every TRIM_INTERVAL seconds.

    The local broker keeps its whole log in one JSON file (`kafka.json`) that it rewrites every second or two, and
    each rewrite costs it CPU in proportion to what it holds (~90 MB of JSON after 1M small events) and stops it
    answering produce requests meanwhile: its cost per record grows with the records it retains, a real broker's does
    not. The benchmarks measure ficus, so they keep the stand-in's log short. High watermarks are unaffected (row
    checks that count a topic's messages still see every one). FICUS_BENCH_BROKER_TRIM=0 turns this off; without
    confluent-kafka (outside .venv/bench) it is off."""
    try:
        from confluent_kafka import Consumer, TopicPartition
        from confluent_kafka.admin import AdminClient
    except ImportError:
        return None
    import threading
    stop = threading.Event()

    def run():
        admin = AdminClient({"bootstrap.servers": brokers})
        consumer = Consumer({"bootstrap.servers": brokers, "group.id": "ficus-bench-trimmer"})
        trimmed = {}
        try:
            while not stop.wait(TRIM_INTERVAL):
                try:
                    topics = consumer.list_topics(timeout=5).topics
                    marks = []
                    for name, meta in topics.items():
                        if name.startswith("__"):
                            continue
                        for p in meta.partitions:
                            high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=5)[1]
                            if high > trimmed.get((name, p), 0):
                                marks.append(TopicPartition(name, p, high))
                    if marks:
                        for tp, f in admin.delete_records(marks).items():
                            f.result(10)
                            trimmed[(tp.topic, tp.partition)] = tp.offset
                except Exception:  # noqa: BLE001  (a topic being created, the broker stopping: try again)
                    pass
        finally:
            consumer.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.stop = stop
    return thread


def stop_broker(broker):
    """Stops a broker from start_broker() and its child processes, and removes its data (None: an external broker,
    left alone)."""
    if not broker:
        return
    if getattr(broker, "trimmer", None):
        broker.trimmer.stop.set()
        broker.trimmer.join(timeout=15)
    try:
        _stop_broker_processes(broker)
    finally:
        shutil.rmtree(getattr(broker, "data_dir", ""), ignore_errors=True)


def _stop_broker_processes(broker):
    try:
        os.killpg(broker.pid, signal.SIGTERM)
        broker.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(broker.pid, signal.SIGKILL)
            broker.wait()
        except ProcessLookupError:
            pass
