#!/usr/bin/env python3
"""Does the test broker keep what it acknowledged across restarts? (docs/reliability.md, issue 6)

A plain confluent-kafka idempotent producer (acks=all, ficus's batching settings) writes continuously to a local
noida-db broker while the broker is stopped (SIGTERM) and started again 6 times; then a consumer reads the topic and
the script counts messages whose delivery was acknowledged but that are not in the topic. No ficus involved: a
non-zero count means the broker loses acknowledged writes, which explains the chaos suite's losses with broker stops.
Usage: scripts/broker-durability.sh
"""
import sys, os, time, subprocess, uuid, socket, signal, glob, tempfile, threading
from confluent_kafka import Producer, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
noida = glob.glob(os.path.join(ROOT, ".venv/noida/lib/python*/site-packages/noida_db/noida-db"))[0]
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
data = tempfile.mkdtemp()
def start():
    p = subprocess.Popen([noida, "start", "--only", "kafka", "--kafka-port", str(port), "--data-dir", data], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); return p
        except OSError: time.sleep(0.1)
def stop(p):
    os.killpg(p.pid, signal.SIGTERM); p.wait(20)
brokers = f"127.0.0.1:{port}"
b = start()
adm = AdminClient({"bootstrap.servers": brokers})
for f in adm.create_topics([NewTopic("t", 1, 1)]).values(): f.result()
acked = set(); failed = []
def cb(err, msg):
    if err is None: acked.add(msg.value())
    else: failed.append(str(err))
p = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all", "linger.ms": 1, "message.timeout.ms": 0,
              "compression.type": "lz4", "batch.size": 1000000, "queue.buffering.max.kbytes": 8192})
stopflag = threading.Event()
def produce():
    i = 0
    while not stopflag.is_set():
        try:
            p.produce("t", (str(i) + "x" * 300).encode(), key=str(i % 2000).encode(), callback=cb); i += 1
        except BufferError:
            p.poll(0.01)
        if i % 100 == 0: p.poll(0)
    return i
res = {}
t = threading.Thread(target=lambda: res.setdefault("n", produce())); t.start()
for k in range(6):
    time.sleep(1.5)
    stop(b); time.sleep(1); b = start()
stopflag.set(); t.join()
p.flush(120)
print("produced", len(acked) + len(failed), "acked", len(acked), "failed", len(failed), set(failed))
c = Consumer({"bootstrap.servers": brokers, "group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest"})
c.assign([TopicPartition("t", 0, 0)])
seen = set(); end = time.time() + 20
while time.time() < end:
    m = c.poll(0.2)
    if m is not None and not m.error(): seen.add(m.value())
lost = acked - seen
print("read", len(seen), "acked but missing", len(lost), "-> the broker", "LOSES" if lost else "kept", "acknowledged writes")
c.close(); stop(b); os._exit(0)
