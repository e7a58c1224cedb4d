//! Exactly-once and source promises that need a real broker and server: a zombie instance is fenced; the broker
//! away longer than `wal_sender_timeout` keeps the replication connection and loses nothing; the stream resumes at a
//! checkpoint that is ahead of the slot, also when the server re-sends what lies between.

use std::time::{Duration, Instant};

use crate::support::{unique_db, FaultProxy, PgOptions, TestKafka, TestPostgres};
use crate::{read_all_confirmed, values, Ficus, Setup, WAIT};

fn exactly_once(config: &str) -> String {
    config.replace("kafka:\n", "kafka:\n  delivery: exactly_once\n")
}

/// The pid of the walsender serving `slot`, if one is active.
async fn walsender(pg: &TestPostgres, db: &str, slot: &str) -> Option<i32> {
    pg.client(db)
        .await
        .query_opt("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await
        .unwrap()
        .and_then(|r| r.get(0))
}

/// Two exactly_once instances on the same slot (so the same transactional.id): the older one, frozen in the middle
/// of a large source transaction (its Kafka transaction open with records in the topic), is fenced when the newer one
/// starts. Thawed, its next produce or commit fails with "fenced" and it exits 1; its records stay invisible to
/// read_committed consumers, which see every row exactly once (published by the newer instance).
#[tokio::test(flavor = "multi_thread")]
async fn a_zombie_instance_is_fenced_exits_1_and_its_open_transaction_stays_invisible() {
    // Small enough for the whole transaction to fit in the socket buffers while the old instance is frozen.
    const ROWS: i64 = 20_000;
    let s = Setup::new("zombie", "CREATE TABLE t (id int PRIMARY KEY)").await;
    let config = exactly_once(&s.config(&["public.t"]))
        .replace("  status_interval_secs: 1\n", "  status_interval_secs: 1\n  reconnect_max_delay_secs: 1\n");
    let topic = s.topic("public", "t");
    let mut old = Ficus::start(&config);
    old.wait_streaming();
    s.sql("INSERT INTO t VALUES (0)").await;
    s.wait_confirmed_now(&old).await;

    // Stopped as soon as its log shows the transaction begun (polled every 2 ms): the Kafka transaction is open, with
    // records produced into it. (noida-db, the test broker, appends a transaction's records to the log only at its
    // commit, so the high watermark cannot show them; a broker that appends them at once hides them from
    // read_committed instead — the assertions below hold for both.)
    let begun = |log: &str| log.matches("kafka transaction begun").count();
    let committed = |log: &str| log.matches("kafka transaction committed").count();
    // Under load the old instance may commit before the test stops it: then thaw it and try again with new rows.
    let mut inserted = 0;
    let mut visible_before = 1;
    for attempt in 1..=3 {
        s.wait_confirmed_now(&old).await;
        visible_before = s.kafka.read_to_end(&topic, WAIT).await.len();
        let (b0, c0) = (begun(&old.log()), committed(&old.log()));
        s.sql(&format!("INSERT INTO t SELECT generate_series({}, {})", inserted + 1, inserted + ROWS)).await;
        inserted += ROWS;
        let deadline = Instant::now() + WAIT;
        loop {
            let log = old.log();
            if begun(&log) > b0 {
                old.signal("-STOP");
                break;
            }
            assert!(Instant::now() < deadline, "the old instance never began the large transaction:\n{log}");
            std::thread::sleep(Duration::from_millis(2));
        }
        let log = old.log();
        if committed(&log) == c0 && begun(&log) == b0 + 1 {
            break;
        }
        assert!(attempt < 3, "the old instance committed before it was stopped, 3 times:\n{log}");
        eprintln!("zombie: attempt {attempt}: the old instance committed before it was stopped; again");
        old.signal("-CONT");
    }
    assert!(
        s.confirmed_flush().await < Some(s.current_lsn().await),
        "the old instance confirmed the large transaction already"
    );
    let visible = s.kafka.read_to_end(&topic, WAIT).await.len();
    assert_eq!(visible, visible_before, "the old instance's open transaction is visible to read_committed");

    // Its walsender goes (a network partition would end it after wal_sender_timeout); what it had sent — the rest of
    // the transaction and its commit — stays in the socket buffers. A second instance with its own state dir starts
    // on the same slot (so the same transactional.id), fences the first (init_transactions) and streams.
    let pid = walsender(s.pg, &s.db, &s.prefix).await.expect("the old instance's walsender");
    s.sql(&format!("SELECT pg_terminate_backend({pid})")).await;
    let deadline = Instant::now() + WAIT;
    while walsender(s.pg, &s.db, &s.prefix).await.is_some() {
        assert!(Instant::now() < deadline, "the old walsender did not go");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its state dir is a copy of the old one's (a failover onto the same volume). With an empty one it would refuse
    // to start when other databases wrote WAL meanwhile: the old instance confirmed idle positions past its last
    // Kafka checkpoint, and a start with only the Kafka checkpoint takes that for a gap (docs/reliability.md).
    let state = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(old.dir.path().join("state")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), state.path().join(entry.file_name())).unwrap();
    }
    let mut new = Ficus::start(&config.replace("STATE", &state.path().display().to_string()));
    new.wait_streaming();
    s.wait_confirmed_now(&new).await;

    // The zombie wakes up with the end of the transaction in its socket buffer: its commit is refused.
    old.signal("-CONT");
    let status = old.wait(WAIT);
    let log = old.log();

    assert_eq!(status.code(), Some(1), "the fenced instance did not exit 1:\n{log}");
    // ficus's own last words, not librdkafka's log lines.
    assert!(
        log.lines()
            .any(|l| l.contains("fenced: another ficus instance with the same slot (transactional.id) took over")),
        "the fenced instance did not say so:\n{log}"
    );

    // read_committed: every row exactly once, although the zombie's records are in the topic too.
    s.sql("INSERT INTO t VALUES (-1)").await;
    let msgs = s.read_all_confirmed(&new, &topic).await;
    let mut ids: Vec<i64> = values(&msgs).iter().map(|v| v["after"]["id"].as_i64().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (-1..=inserted).collect::<Vec<_>>(), "not every row exactly once:\n{}", new.log());
    eprintln!("zombie: fenced and exited 1; {} events read_committed, each row once", msgs.len());
    assert_eq!(new.terminate().code(), Some(0), "{}", new.log());
}

/// docs/configuration.md: status updates are sent every `status_interval_secs` and at once when the server asks.
/// With the broker frozen for three times `wal_sender_timeout` (5 s) while rows are written, ficus cannot confirm
/// anything, but must keep answering: the same walsender serves the slot before and after, the server never
/// times it out, and every row arrives once the broker is back.
#[tokio::test(flavor = "multi_thread")]
async fn the_broker_paused_longer_than_wal_sender_timeout_keeps_the_connection_and_loses_nothing() {
    let pg = TestPostgres::start_with(PgOptions::default().setting("wal_sender_timeout", "5s"));
    let kafka = TestKafka::start_dedicated();
    let db = unique_db("wst");
    pg.create_database(&db);
    pg.execute(&db, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let prefix = kafka.unique_topic("wst").replace('-', "_").to_lowercase();
    let topic = format!("{prefix}.public.t");
    // status_interval_secs 1 as in every test; the server asks for a reply every 2.5 s (wal_sender_timeout / 2).
    let mut f = Ficus::start(&Ficus::config(&pg.superuser_url(&db), &["public.t"], &prefix, &kafka.brokers(), ""));
    f.wait_streaming();
    pg.execute(&db, "INSERT INTO t VALUES (0)").await;
    crate::wait_slot_confirmed_now(&pg, &db, &prefix, &f, WAIT).await;
    let before = walsender(&pg, &db, &prefix).await.expect("a walsender");
    let confirmed_before: String = confirmed_flush(&pg, &db, &prefix).await;

    kafka.pause();
    let paused = Instant::now();
    let mut next = 1;
    while paused.elapsed() < Duration::from_secs(15) {
        pg.execute(&db, &format!("INSERT INTO t SELECT generate_series({next}, {})", next + 99)).await;
        next += 100;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let during = walsender(&pg, &db, &prefix).await;
    let confirmed_during: String = confirmed_flush(&pg, &db, &prefix).await;
    kafka.resume();

    let msgs = read_all_confirmed(&pg, &db, &prefix, &kafka, &f, &topic, false).await;
    let after = walsender(&pg, &db, &prefix).await;
    let mut ids: Vec<i64> = values(&msgs).iter().map(|v| v["after"]["id"].as_i64().unwrap()).collect();
    ids.sort_unstable();
    eprintln!(
        "broker paused {:.1} s (wal_sender_timeout 5 s): {} rows written during the pause, walsender {before} → {during:?} → \
         {after:?}, confirmed {confirmed_before} during the pause: {confirmed_during}",
        paused.elapsed().as_secs_f64(),
        next - 1
    );
    // The pause did hold changes back (otherwise it tested nothing), and nothing went past Kafka unconfirmed.
    assert_eq!(confirmed_during, confirmed_before, "the slot confirmed while the broker was frozen");
    assert_eq!(during, Some(before), "the walsender changed during the pause:\n{}\n{}", f.log(), pg.log());
    assert_eq!(after, Some(before), "the walsender changed after the pause:\n{}", f.log());
    assert!(!pg.log().contains("replication timeout"), "the server timed the walsender out:\n{}", pg.log());
    assert_eq!(ids, (0..next).collect::<Vec<_>>(), "rows lost or repeated:\n{}", f.log());
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

/// The stream resumes at the checkpoint, not at the slot: restarted with a checkpoint ahead of the slot's confirmed
/// position (a crash after the checkpoint was written, before PostgreSQL was told), nothing at or before the
/// checkpoint is published again and everything after it is. Five transactions lie between the slot and the
/// checkpoint.
#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_ahead_of_the_slot_is_where_the_stream_resumes() {
    resume_with_the_checkpoint_ahead_of_the_slot(false).await;
}

/// The same, with the server re-sending what the checkpoint covers: a proxy rewrites ficus's `START_REPLICATION`
/// to `0/0`, so PostgreSQL starts at the slot's confirmed position (behind the checkpoint) and sends the five
/// transactions again. PostgreSQL's own skip of commits before the requested start no longer applies: the
/// source's skip of transactions at or before the checkpoint (src/source.rs) is the only guard against
/// publishing them twice.
#[tokio::test(flavor = "multi_thread")]
async fn transactions_the_server_resends_behind_the_checkpoint_are_not_published_again() {
    resume_with_the_checkpoint_ahead_of_the_slot(true).await;
}

async fn resume_with_the_checkpoint_ahead_of_the_slot(server_resends: bool) {
    let s = Setup::new("ahead", "CREATE TABLE t (id int PRIMARY KEY)").await;
    let topic = s.topic("public", "t");
    let proxy = FaultProxy::start(s.pg.port()).await;
    let mut config = s.config(&["public.t"]);
    if server_resends {
        proxy.rewrite_start_replication_to_zero();
        let direct = format!("@127.0.0.1:{}/", s.pg.port());
        assert!(config.contains(&direct), "{config}");
        config = config.replace(&direct, &format!("@127.0.0.1:{}/", proxy.port));
    }
    let mut f = Ficus::start(&config);
    f.wait_streaming();
    s.sql("INSERT INTO t SELECT generate_series(1, 10)").await;
    s.wait_confirmed_now(&f).await;
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
    let slot_before = crate::lsn(&s.confirmed_flush().await.unwrap());

    // Written while ficus is down: the slot has not confirmed them; the checkpoint will say they were published.
    for i in 0..5 {
        s.sql(&format!("INSERT INTO t SELECT generate_series({}, {})", 11 + i * 10, 20 + i * 10)).await;
    }
    let ahead = s.current_lsn().await;
    s.sql("INSERT INTO t SELECT generate_series(61, 70)").await;
    let path = f.dir.path().join("state").join(format!("{}.checkpoint.json", s.prefix));
    let mut cp: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(crate::lsn(cp["lsn"].as_str().unwrap()) <= slot_before, "checkpoint {cp} ahead of the slot already");
    cp["lsn"] = serde_json::json!(ahead);
    std::fs::write(&path, serde_json::to_vec_pretty(&cp).unwrap()).unwrap();
    assert!(crate::lsn(&ahead) > slot_before);

    f.restart();
    f.wait_streaming();
    let msgs = s.read_all_confirmed(&f, &topic).await;
    let ids: Vec<i64> = values(&msgs).iter().map(|v| v["after"]["id"].as_i64().unwrap()).collect();
    let expected: Vec<i64> = (1..=10).chain(61..=70).collect();
    assert_eq!(ids, expected, "published again what the checkpoint covers, or lost what follows it:\n{}", f.log());
    if server_resends {
        // Both sessions went through the proxy; the second started at 0/0, i.e. at the slot, behind the checkpoint.
        assert!(proxy.rewrites() >= 2, "START_REPLICATION not rewritten:\n{}", f.log());
    }
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

/// exactly_once with one source transaction of 1,000,000 rows (far past the 16 MiB commit trigger): the triggers
/// fire only at a source commit, so it is one Kafka transaction; the topic holds every row exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_publishes_a_million_row_transaction_once_in_one_kafka_transaction() {
    const ROWS: i64 = 1_000_000;
    let s = Setup::new("eo_million", "CREATE TABLE t (id int PRIMARY KEY)").await;
    let topic = s.topic("public", "t");
    let mut f = Ficus::start(&exactly_once(&s.config(&["public.t"])));
    f.wait_streaming();
    let started = Instant::now();
    s.sql(&format!("INSERT INTO t SELECT generate_series(1, {ROWS})")).await;
    s.wait_confirmed_now_within(&f, Duration::from_secs(600)).await;
    let published = started.elapsed();
    let msgs = s.kafka.read_to_end(&topic, Duration::from_secs(600)).await;
    let mut ids: Vec<i64> = values(&msgs).iter().map(|v| v["after"]["id"].as_i64().unwrap()).collect();
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    assert_eq!(n, ids.len(), "{} duplicates", n - ids.len());
    assert_eq!(ids.len() as i64, ROWS, "rows missing");
    assert_eq!((ids[0], ids[ids.len() - 1]), (1, ROWS));
    // One Kafka transaction for the one source transaction (its commit log line names one source transaction).
    let log = f.log();
    let big: Vec<&str> =
        log.lines().filter(|l| l.contains("kafka transaction committed") && !l.contains("bytes=0")).collect();
    assert_eq!(big.len(), 1, "not one Kafka transaction:\n{}", big.join("\n"));
    assert!(big[0].contains("source_txns=1 "), "{}", big[0]);
    // The transaction streams through: ficus does not hold 1M records (~360 MB of payload) in memory.
    let rss = f.peak_rss_kib().expect("ficus's peak RSS");
    assert!(rss < 512 * 1024, "ficus peaked at {rss} KiB");
    eprintln!(
        "million: {ROWS} rows published and confirmed in {:.1} s, read back in {:.1} s; ficus peak RSS {:?} KiB; {}",
        published.as_secs_f64(),
        (started.elapsed() - published).as_secs_f64(),
        f.peak_rss_kib(),
        big[0]
    );
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

/// The slot's `confirmed_flush_lsn`.
async fn confirmed_flush(pg: &TestPostgres, db: &str, slot: &str) -> String {
    pg.client(db)
        .await
        .query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await
        .unwrap()
        .get(0)
}

/// exactly_once with a checkpoint topic that holds, under this slot's key, the checkpoint of another source (two
/// databases sharing one prefix and slot name): resuming from it would skip or repeat changes, so ficus stops with
/// exit 2 and says how to fix the config, before it publishes anything.
#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_of_another_source_in_the_checkpoint_topic_stops_with_exit_2() {
    use rdkafka::producer::FutureRecord;
    let s = Setup::new("foreign_cp", "CREATE TABLE t (id int PRIMARY KEY)").await;
    let kafka = TestKafka::shared();
    let checkpoints = format!("{}.checkpoints", s.prefix);
    kafka.create_topic(&checkpoints, 1).await;
    let foreign = serde_json::json!({"lsn": "FF/0", "systemId": "1", "database": "elsewhere", "slot": s.prefix});
    kafka
        .producer()
        .send(FutureRecord::to(&checkpoints).key(s.prefix.as_str()).payload(&foreign.to_string()), WAIT)
        .await
        .unwrap_or_else(|(e, _)| panic!("{e}"));
    s.sql("INSERT INTO t VALUES (1)").await;
    let mut f = Ficus::start(&exactly_once(&s.config(&["public.t"])));
    let status = f.wait(WAIT);
    assert_eq!(status.code(), Some(2), "{}", f.log());
    assert!(f.log().contains("holds a checkpoint for slot"), "{}", f.log());
    assert!(f.log().contains("kafka.checkpoint_topic"), "{}", f.log());
    assert!(kafka.read_to_end(&s.topic("public", "t"), Duration::from_secs(2)).await.is_empty());
}
