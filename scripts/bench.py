#!/usr/bin/env python3
"""Throughput benchmark of the core pipeline against its baselines, all on one WAL in one run.

Workload (issue #2): 1M inserts + 500k updates on a 5-column table with REPLICA IDENTITY FULL, in transactions of
1000 rows. One slot per consumer is created *before* the workload, so every consumer decodes the same WAL:

  in-server decode   SELECT count(*) FROM pg_logical_slot_peek_binary_changes(...)   (no network, no client)
  pg_recvlogical     pgoutput to /dev/null                                            (the C baseline)
  ficus null sink    `ficus run --null-sink`: decode + encode JSON, publish nothing
  ficus → broker     `ficus run` end to end to the Kafka-protocol broker (FICUS_TEST_KAFKA or a local noida-db)

Rates are changes/s over the time until the consumer reached the workload's end LSN. CPU% of the walsender and of
the client process are sampled from /proc. Usage: scripts/bench.sh [--rows N] [--updates N] [--skip-kafka]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ficus-bench-")
        os.chmod(self.dir, 0o777)
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(as_pg([f"{PGBIN}/initdb", "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8",
                              "--locale=C", "-D", self.data]), check=True, stdout=subprocess.DEVNULL)
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c wal_level=logical -c fsync=off "
                "-c max_replication_slots=10 -c max_wal_senders=10 -c shared_buffers=512MB -c max_wal_size=4GB "
                "-c synchronous_commit=off")
        subprocess.run(as_pg([f"{PGBIN}/pg_ctl", "-w", "-D", self.data, "-l", os.path.join(self.dir, "log"),
                              "-o", opts, "start"]), check=True, stdout=subprocess.DEVNULL)

    def url(self, db="bench"):
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}?sslmode=disable"

    def psql(self, sql, db="bench"):
        out = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                              "-p", str(self.port), "-U", "postgres", "-d", db, "-c", sql],
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def stop(self):
        subprocess.run(as_pg([f"{PGBIN}/pg_ctl", "-D", self.data, "-m", "immediate", "stop"]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)


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


def wait_confirmed(cluster, slot, end, proc, timeout=1800):
    """Polls the slot until confirmed_flush_lsn >= end; returns (seconds, walsender cpu%, client cpu%, rss)."""
    start = time.monotonic()
    ws = walsender_pid(cluster, slot)
    ws0, cl0 = cpu_ticks(ws) if ws else None, cpu_ticks(proc.pid)
    ws_last, cl_last, rss = ws0, cl0, None
    while True:
        conf = cluster.psql(f"SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'")
        t = cpu_ticks(ws) if ws else None
        ws_last = t if t is not None else ws_last
        c = cpu_ticks(proc.pid)
        cl_last = c if c is not None else cl_last
        rss = peak_rss_mib(proc.pid) or rss
        if conf and lsn(conf) >= end:
            break
        if proc.poll() is not None:
            raise RuntimeError(f"consumer exited early with {proc.returncode}")
        if time.monotonic() - start > timeout:
            raise RuntimeError("timeout")
        time.sleep(0.02)
    secs = time.monotonic() - start
    wcpu = 100.0 * (ws_last - ws0) / TICK / secs if ws0 is not None and ws_last is not None else float("nan")
    ccpu = 100.0 * (cl_last - cl0) / TICK / secs if cl0 is not None and cl_last is not None else float("nan")
    return secs, wcpu, ccpu, rss


def ficus_config(cluster, slot, brokers, state):
    return (f"source:\n  url: {cluster.url()}\n  slot: {slot}\n  publication: bench\n  tables: [public.bench]\n"
            f"  status_interval_secs: 1\nkafka:\n  brokers: {brokers}\n"
            f"state:\n  dir: {state}\nchanges:\n  tables: ['*']\n  topic_prefix: {slot}\n")


def run_ficus(cluster, slot, end, brokers, null_sink, binary):
    state = tempfile.mkdtemp(prefix="ficus-bench-state-")
    cfg = os.path.join(state, "ficus.yaml")
    with open(cfg, "w") as f:
        f.write(ficus_config(cluster, slot, brokers, state))
    args = [binary, "run", "--config", cfg] + (["--null-sink"] if null_sink else [])
    log = open(os.path.join(state, "log"), "w")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "RUST_LOG": "warn"})
    try:
        result = wait_confirmed(cluster, slot, end, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    shutil.rmtree(state, ignore_errors=True)
    return result


def start_broker():
    if os.environ.get("FICUS_TEST_KAFKA"):
        return os.environ["FICUS_TEST_KAFKA"], None
    noida = os.environ.get("FICUS_NOIDA", os.path.join(ROOT, ".venv/noida/bin/noida-db"))
    port = free_port()
    data = tempfile.mkdtemp(prefix="ficus-bench-kafka-")
    proc = subprocess.Popen([noida, "start", "--only", "kafka", "--kafka-port", str(port), "--data-dir", data],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return f"127.0.0.1:{port}", proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("broker did not start")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--updates", type=int, default=500_000)
    ap.add_argument("--skip-kafka", action="store_true")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/ficus"))
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args()

    cluster = Cluster()
    broker = None
    try:
        cluster.psql("CREATE DATABASE bench", db="postgres")
        cluster.psql("CREATE TABLE bench (id bigint PRIMARY KEY, name text, qty int, price float8, ts timestamptz); "
                     "ALTER TABLE bench REPLICA IDENTITY FULL; CREATE PUBLICATION bench FOR TABLE bench;")
        slots = ["s_peek", "s_recv", "s_null", "s_kafka"]
        for s in slots:
            cluster.psql(f"SELECT pg_create_logical_replication_slot('{s}', 'pgoutput')")
        t0 = time.monotonic()
        batch = 1000
        for lo in range(1, a.rows + 1, batch * 50):
            stmts = [f"INSERT INTO bench SELECT i, 'name ' || i, i % 100, i * 0.5, now() "
                     f"FROM generate_series({b}, {min(b + batch - 1, a.rows)}) i;"
                     for b in range(lo, min(lo + batch * 50, a.rows + 1), batch)]
            cluster.psql("".join(stmts))
        for lo in range(1, a.updates + 1, batch * 50):
            stmts = [f"UPDATE bench SET qty = qty + 1, ts = now() WHERE id BETWEEN {b} AND {min(b + batch - 1, a.updates)};"
                     for b in range(lo, min(lo + batch * 50, a.updates + 1), batch)]
            cluster.psql("".join(stmts))
        end = lsn(cluster.psql("SELECT pg_current_wal_lsn()"))
        changes = a.rows + a.updates
        print(f"workload: {a.rows} inserts + {a.updates} updates written in {time.monotonic() - t0:.1f}s", flush=True)

        results = {}
        t = time.monotonic()
        n = int(cluster.psql("SELECT count(*) FROM pg_logical_slot_peek_binary_changes('s_peek', NULL, NULL, "
                             "'proto_version', '1', 'publication_names', 'bench')"))
        secs = time.monotonic() - t
        results["in-server decode"] = (changes / secs, secs, float("nan"), float("nan"), None)
        print(f"in-server decode: {n} messages in {secs:.2f}s", flush=True)

        recv = subprocess.Popen(["pg_recvlogical", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres",
                                 "-d", "bench", "--slot", "s_recv", "--start", "-o", "proto_version=1",
                                 "-o", "publication_names=bench", "-f", "/dev/null", "-F", "1", "-s", "1"],
                                stderr=subprocess.DEVNULL)
        try:
            secs, w, c, rss = wait_confirmed(cluster, "s_recv", end, recv)
        finally:
            recv.terminate()
            recv.wait()
        results["pg_recvlogical"] = (changes / secs, secs, w, c, rss)

        secs, w, c, rss = run_ficus(cluster, "s_null", end, "127.0.0.1:9", True, a.binary)
        results["ficus null sink"] = (changes / secs, secs, w, c, rss)

        if not a.skip_kafka:
            brokers, broker = start_broker()
            secs, w, c, rss = run_ficus(cluster, "s_kafka", end, brokers, False, a.binary)
            results["ficus -> broker"] = (changes / secs, secs, w, c, rss)

        base = results["pg_recvlogical"][0]
        print(f"\n{'consumer':<18} {'changes/s':>11} {'seconds':>8} {'vs recvlogical':>15} {'walsender CPU':>14} "
              f"{'client CPU':>11} {'peak RSS':>9}")
        for name, (rate, secs, w, c, rss) in results.items():
            rss_s = f"{rss:.1f}MiB" if rss else "-"
            print(f"{name:<18} {rate:>11,.0f} {secs:>8.2f} {rate / base:>14.2f}x {w:>13.0f}% {c:>10.0f}% {rss_s:>9}")
        targets = [("ficus null sink", 1.1), ("ficus -> broker", 0.85)]
        print()
        for name, target in targets:
            if name in results:
                ratio = results[name][0] / base
                print(f"target {name} >= {target}x pg_recvlogical: {ratio:.2f}x {'MET' if ratio >= target else 'MISSED'}")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({k: {"rate": v[0], "seconds": v[1], "walsender_cpu": v[2], "client_cpu": v[3],
                               "peak_rss_mib": v[4]} for k, v in results.items()}, f, indent=2)
    finally:
        cluster.stop()
        if broker:
            broker.terminate()


if __name__ == "__main__":
    sys.exit(main())
