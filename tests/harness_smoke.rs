//! Tests of the test harness itself (`tests/support`): if these fail on CI, the environment is broken, not ficus.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use support::{unique_db, PgOptions, TestKafka, TestPostgres};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn shared_postgres_is_logical_and_databases_are_private() {
    let pg = TestPostgres::shared();
    let db = unique_db("smoke");
    pg.create_database(&db);
    pg.execute(&db, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2);").await;
    let client = pg.client(&db).await;
    let level: String = client.query_one("SHOW wal_level", &[]).await.unwrap().get(0);
    assert_eq!(level, "logical");
    let n: i64 = client.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(n, 2);
    // A logical slot with pgoutput works (what ficus needs).
    let slot = db.clone();
    client.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot]).await.unwrap();
    client.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.unwrap();
    assert!(pg.superuser_url(&db).starts_with(&format!("postgres://postgres@127.0.0.1:{}/{db}", pg.port())));
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_other_than_the_superuser_need_their_password() {
    let pg = TestPostgres::shared();
    let db = unique_db("pw");
    pg.create_database(&db);
    let role = unique_db("role");
    pg.execute(&db, &format!("CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'p@ss word'")).await;
    let connect = |password: &str| {
        let url = pg.url(&role, password, &db);
        async move { tokio_postgres::connect(&url, tokio_postgres::NoTls).await.map(|_| ()) }
    };
    let err = connect("wrong").await.expect_err("wrong password accepted");
    assert!(err.to_string().contains("password") || format!("{err:?}").contains("password"), "{err:?}");
    connect("p@ss word").await.expect("right password refused");
}

#[tokio::test(flavor = "multi_thread")]
async fn dedicated_cluster_with_settings_restarts_and_is_removed_on_drop() {
    let pg =
        TestPostgres::start_with(PgOptions::default().setting("wal_level", "replica").superuser_password("s3cret"));
    let root: PathBuf = pg.data_dir().parent().unwrap().to_path_buf();
    let client = pg.client("postgres").await;
    let level: String = client.query_one("SHOW wal_level", &[]).await.unwrap().get(0);
    assert_eq!(level, "replica");
    assert!(pg.superuser_url("postgres").contains("postgres:s3cret@"));
    pg.execute("postgres", "CREATE TABLE survives (id int); INSERT INTO survives VALUES (7);").await;
    drop(client);
    pg.restart_immediate();
    let client = pg.client("postgres").await;
    let v: i32 = client.query_one("SELECT id FROM survives", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
    assert!(pg.log().contains("database system was interrupted"), "no crash recovery in the log:\n{}", pg.log());
    drop(client);
    let port = pg.port();
    drop(pg);
    assert!(!root.exists(), "{} left behind", root.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "server still listening on {port}");
}

#[tokio::test(flavor = "multi_thread")]
async fn produce_to_the_shared_broker_and_consume_it_back() {
    let kafka = TestKafka::shared();
    let topic = kafka.unique_topic("smoke");
    kafka.create_topic(&topic, 3).await;
    assert_eq!(kafka.partitions(&topic).await, vec![0, 1, 2]);
    let producer = kafka.producer();
    for i in 0..3 {
        let key = format!("k{i}");
        let payload = format!(r#"{{"n":{i}}}"#);
        let headers = OwnedHeaders::new()
            .insert(Header { key: "event-type", value: Some("Smoke") })
            .insert(Header { key: "n", value: Some(&i.to_string()) });
        producer
            .send(FutureRecord::to(&topic).key(&key).payload(&payload).headers(headers).partition(i), WAIT)
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    }
    let mut msgs = kafka.consume_all(&topic, 3, WAIT).await;
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    msgs.sort_by_key(|m| m.partition);
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m.partition, i as i32);
        assert_eq!(m.offset, 0);
        assert_eq!(m.key.as_deref(), Some(format!("k{i}").as_bytes()));
        assert_eq!(m.payload.as_deref(), Some(format!(r#"{{"n":{i}}}"#).as_bytes()));
        assert_eq!(
            m.headers,
            vec![("event-type".to_string(), b"Smoke".to_vec()), ("n".to_string(), i.to_string().into_bytes())]
        );
        assert!(m.timestamp.is_some());
    }
    assert_eq!(kafka.high_watermark(&topic).await, 3);
    // Never hangs: fewer messages than expected returns at the timeout, a missing topic too.
    assert_eq!(kafka.consume_all(&topic, 4, Duration::from_secs(2)).await.len(), 3);
    assert!(kafka.consume_all(&kafka.unique_topic("missing"), 1, Duration::from_secs(2)).await.is_empty());
}

/// `read_to_end` returns exactly what a topic holds, without a count to wait for: committed transactional records
/// (their commit markers count in the high watermark, yet it does not wait for them), not an aborted transaction's,
/// and it returns — without the records — while a transaction is still open; a missing topic reads as empty.
#[tokio::test(flavor = "multi_thread")]
async fn read_to_end_reads_exactly_what_is_committed() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let kafka = TestKafka::shared();
    let topic = kafka.unique_topic("read_to_end");
    assert!(kafka.read_to_end(&topic, WAIT).await.is_empty(), "a missing topic is empty");
    kafka.create_topic(&topic, 2).await;
    assert!(kafka.read_to_end(&topic, WAIT).await.is_empty(), "an empty topic is empty");
    let producer = kafka.producer();
    for i in 0..2 {
        let payload = format!("plain{i}");
        producer
            .send(FutureRecord::<str, _>::to(&topic).payload(&payload).partition(i), WAIT)
            .await
            .unwrap_or_else(|(e, _)| panic!("{e}"));
    }
    let txn = |id: &str| -> BaseProducer {
        let p: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", kafka.brokers())
            .set("transactional.id", format!("{id}-{topic}"))
            .create()
            .unwrap();
        p.init_transactions(WAIT).unwrap();
        p
    };
    let send = |p: &BaseProducer, payload: &str| {
        p.send(BaseRecord::<str, str>::to(&topic).payload(payload).partition(0)).unwrap();
        p.flush(WAIT).unwrap();
    };
    let committed = txn("committed");
    committed.begin_transaction().unwrap();
    send(&committed, "committed");
    committed.commit_transaction(WAIT).unwrap();
    let aborted = txn("aborted");
    aborted.begin_transaction().unwrap();
    send(&aborted, "aborted");
    aborted.abort_transaction(WAIT).unwrap();
    let payloads = |msgs: &[support::ConsumedMessage]| -> Vec<String> {
        msgs.iter().map(|m| String::from_utf8(m.payload.clone().unwrap()).unwrap()).collect()
    };
    let started = std::time::Instant::now();
    let msgs = kafka.read_to_end(&topic, WAIT).await;
    assert_eq!(payloads(&msgs), ["plain0", "committed", "plain1"], "(partition, offset) order, committed records only");
    assert!(started.elapsed() < Duration::from_secs(10), "waited {:?} for markers", started.elapsed());
    // A transaction left open: its record is not readable (read_committed) and the read still returns.
    let open = txn("open");
    open.begin_transaction().unwrap();
    send(&open, "open");
    let msgs = kafka.read_to_end(&topic, WAIT).await;
    assert_eq!(payloads(&msgs), ["plain0", "committed", "plain1"]);
    open.abort_transaction(WAIT).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn dedicated_broker_stops_and_starts() {
    let kafka = TestKafka::start_dedicated();
    let dir = kafka.data_dir().unwrap();
    let port: u16 = kafka.brokers().rsplit(':').next().unwrap().parse().unwrap();
    let topic = kafka.unique_topic("restart");
    kafka.create_topic(&topic, 1).await;
    let producer = kafka.producer();
    producer
        .send(FutureRecord::to(&topic).key("k").payload("before"), WAIT)
        .await
        .unwrap_or_else(|(e, _)| panic!("{e}"));
    kafka.stop();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    kafka.start();
    // A graceful stop saves noida-db's data: the topic and its message are back.
    let msgs = kafka.consume_all(&topic, 1, WAIT).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].payload.as_deref(), Some(&b"before"[..]));
    drop(kafka);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "broker still listening on {port}");
}

/// Runs in a child process (see below): starts the shared instances, prints where they live, and exits.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "helper for shared_instances_are_removed_when_the_test_process_exits"]
async fn helper_start_shared_instances_and_exit() {
    let pg = TestPostgres::shared();
    println!("PG_ROOT={}", pg.data_dir().parent().unwrap().display());
    println!("PG_PORT={}", pg.port());
    if let Some(dir) = TestKafka::shared().data_dir() {
        println!("KAFKA_ROOT={}", dir.parent().unwrap().display());
        println!("KAFKA_BROKERS={}", TestKafka::shared().brokers());
    }
}

#[test]
fn shared_instances_are_removed_when_the_test_process_exits() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "helper_start_shared_instances_and_exit", "--nocapture", "--test-threads=1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "helper failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let value = |name: &str| {
        // libtest prints `test <name> ... ` on the line of the first value.
        stdout.lines().find_map(|l| l.split_once(&format!("{name}=")).map(|(_, v)| v.trim().to_string()))
    };
    let pg_root = PathBuf::from(value("PG_ROOT").unwrap_or_else(|| panic!("no PG_ROOT in helper output:\n{stdout}")));
    let pg_port: u16 = value("PG_PORT").unwrap().parse().unwrap();
    let mut gone: Vec<(PathBuf, Option<String>)> = vec![(pg_root, Some(format!("127.0.0.1:{pg_port}")))];
    if let Some(root) = value("KAFKA_ROOT") {
        gone.push((PathBuf::from(root), value("KAFKA_BROKERS")));
    }
    for (dir, addr) in gone {
        let deadline = std::time::Instant::now() + WAIT;
        while dir.exists() || addr.as_ref().is_some_and(|a| std::net::TcpStream::connect(a.as_str()).is_ok()) {
            assert!(
                std::time::Instant::now() < deadline,
                "{} ({addr:?}) still there {WAIT:?} after the process exited",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The fault proxy forwards both ways; rewrites `START_REPLICATION … LOGICAL <lsn>` to `0/0` (and nothing else);
/// a cut drops one direction of the connections open at that moment only, and a new connection works.
#[tokio::test(flavor = "multi_thread")]
async fn fault_proxy_forwards_rewrites_and_cuts_one_direction() {
    use support::{Direction, FaultProxy};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // An echo server that also reports everything it received.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().port();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    seen_tx.send(buf[..n].to_vec()).unwrap();
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let proxy = FaultProxy::start(target).await;
    proxy.rewrite_start_replication_to_zero();
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    // A startup packet (untagged), then a START_REPLICATION query (tagged).
    let startup = [0u8, 0, 0, 8, 0, 3, 0, 0];
    let query = b"START_REPLICATION SLOT \"s\" LOGICAL 16/B374D848 (\"proto_version\" '1')\0";
    let mut wire = startup.to_vec();
    wire.push(b'Q');
    wire.extend_from_slice(&(query.len() as u32 + 4).to_be_bytes());
    wire.extend_from_slice(query);
    c.write_all(&wire).await.unwrap();
    let rewritten = b"START_REPLICATION SLOT \"s\" LOGICAL 0/0 (\"proto_version\" '1')\0";
    let mut received = Vec::new();
    while received.len() < startup.len() + 5 + rewritten.len() {
        received.extend(tokio::time::timeout(WAIT, seen.recv()).await.unwrap().unwrap());
    }
    assert_eq!(&received[..8], &startup);
    assert_eq!(&received[9..13], &(rewritten.len() as u32 + 4).to_be_bytes());
    assert_eq!(&received[13..], rewritten);
    assert_eq!(proxy.rewrites(), 1);
    let mut echo = vec![0u8; received.len()];
    c.read_exact(&mut echo).await.unwrap();
    assert_eq!(echo, received);

    // Cut server → client: the server still gets the bytes, the client gets nothing back.
    proxy.cut(Direction::ToClient);
    c.write_all(b"Q\0\0\0\x05x").await.unwrap();
    assert_eq!(tokio::time::timeout(WAIT, seen.recv()).await.unwrap().unwrap(), b"Q\0\0\0\x05x");
    let mut one = [0u8; 1];
    assert!(tokio::time::timeout(Duration::from_millis(300), c.read(&mut one)).await.is_err(), "the cut leaked");
    // A new connection is not cut (client → server is raw after a startup packet).
    let mut d = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    d.write_all(&startup).await.unwrap();
    let mut back = [0u8; 8];
    tokio::time::timeout(WAIT, d.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(back, startup);
    assert_eq!(proxy.connections(), 2);
    assert!(proxy.dropped() >= 6);
}
