//! Clean shutdown (docs/guarantees.md): on SIGTERM or SIGINT ficus stops reading, waits for Kafka to acknowledge
//! what it handed over (up to 30 s), sends a final status update, writes the final checkpoint and exits 0 — so a
//! restart repeats nothing. Tested with the changes still unacknowledged when the signal arrives: the broker is
//! paused (SIGSTOP) while they are written and resumed only after the signal.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{ConsumedMessage, TestKafka};
use crate::{get, lsn, read_all_confirmed, values, wait_for_status, Ficus, Setup, WAIT};

/// Ids of the raw change events in `msgs`, in topic order.
fn ids(msgs: &[ConsumedMessage]) -> Vec<i64> {
    values(msgs).iter().map(|e| e["after"]["id"].as_i64().expect("after.id")).collect()
}

/// `/status`'s count of changes ficus received for `public.t` (counted when routed, before Kafka acknowledges).
fn changes_received(port: u16) -> Option<u64> {
    let (_, body) = get(port, "/status")?;
    serde_json::from_str::<Value>(&body).ok()?["tables"]["public.t"]["changes"].as_u64()
}

async fn signal_with_unacknowledged_changes_then_restart_repeats_nothing(name: &str, signal: &str) {
    let s = Setup::new(name, "CREATE TABLE t (id int PRIMARY KEY, v int)").await;
    // A broker of its own: this test pauses it.
    let kafka = TestKafka::start_dedicated();
    let topic = s.topic("public", "t");
    let cfg = Ficus::config(&s.pg.superuser_url(&s.db), &["public.t"], &s.prefix, &kafka.brokers(), "");
    let (mut f, port) = Ficus::start_with_health(&cfg);
    wait_for_status(port, "/readyz", 200, &|| f.log());
    // One change through first: the topic exists and the producer is connected, so what follows waits only for
    // acknowledgements.
    s.sql("INSERT INTO t VALUES (0, 0)").await;
    assert_eq!(ids(&read_all_confirmed(s.pg, &s.db, &s.prefix, &kafka, &f, &topic, false).await), [0]);

    kafka.pause();
    const TXNS: i64 = 10;
    const ROWS: i64 = 50;
    for t in 0..TXNS {
        s.sql(&format!("INSERT INTO t SELECT g, {t} FROM generate_series({}, {}) g", t * ROWS + 1, (t + 1) * ROWS))
            .await;
    }
    let written = s.current_lsn().await;
    let total = (TXNS * ROWS + 1) as u64;
    // ficus has all of them (handed to librdkafka), and none is acknowledged: the slot did not move past them.
    let deadline = Instant::now() + WAIT;
    while changes_received(port) != Some(total) {
        assert!(
            Instant::now() < deadline,
            "ficus never received the changes: {:?}\n{}",
            changes_received(port),
            f.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let confirmed = s.confirmed_flush().await.unwrap();
    assert!(lsn(&confirmed) < lsn(&written), "confirmed {confirmed} while the broker is paused");

    f.signal(signal);
    // ficus waits for Kafka: still running a while later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(f.is_running(), "ficus exited before Kafka acknowledged the changes:\n{}", f.log());
    kafka.resume();
    let status = f.wait(WAIT);
    assert_eq!(status.code(), Some(0), "{signal}: a clean shutdown exits 0:\n{}", f.log());

    // Everything it had is in Kafka, once; the slot and the checkpoint cover all of it.
    let msgs = kafka.read_to_end(&topic, WAIT).await;
    let expected: Vec<i64> = (0..=TXNS * ROWS).collect();
    assert_eq!(ids(&msgs), expected, "{}", f.log());
    let last_commit = values(&msgs).last().unwrap()["source"]["commitLsn"].as_str().unwrap().to_string();
    let confirmed = s.confirmed_flush().await.unwrap();
    assert!(
        lsn(&confirmed) >= lsn(&last_commit),
        "final status update: slot at {confirmed}, last commit at {last_commit}"
    );
    let cp = f.checkpoint(&s.prefix).expect("final checkpoint");
    assert!(
        lsn(cp["lsn"].as_str().unwrap()) >= lsn(&last_commit),
        "final checkpoint {cp}, last commit at {last_commit}"
    );

    // The restart resumes after them: nothing is published twice.
    let port = f.restart_with_health(port);
    wait_for_status(port, "/readyz", 200, &|| f.log());
    s.sql("INSERT INTO t VALUES (100000, 0)").await;
    let msgs = read_all_confirmed(s.pg, &s.db, &s.prefix, &kafka, &f, &topic, false).await;
    let expected: Vec<i64> = (0..=TXNS * ROWS).chain([100000]).collect();
    assert_eq!(ids(&msgs), expected, "{}", f.log());
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_unacknowledged_changes_flushes_confirms_and_exits_zero() {
    signal_with_unacknowledged_changes_then_restart_repeats_nothing("shutdown_term", "-TERM").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_with_unacknowledged_changes_flushes_confirms_and_exits_zero() {
    signal_with_unacknowledged_changes_then_restart_repeats_nothing("shutdown_int", "-INT").await;
}
