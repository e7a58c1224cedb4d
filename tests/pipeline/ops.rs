//! Operating ficus: the HTTP endpoints, metrics, readiness that follows the broker, and secrets kept out of sight.

use std::time::{Duration, Instant};

use crate::support::TestKafka;
use crate::{get, wait_for_status, Ficus, Setup, WAIT};

/// Value of the Prometheus sample whose line starts with `prefix` (name and labels).
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_report_metrics_status_and_readiness_that_follows_the_broker() {
    let s = Setup::new("ops_health", "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    let kafka = TestKafka::start_dedicated();
    // A role with a password: the password must never show in the logs or in /status.
    let secret = "s3cret-Pa55word";
    s.sql(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ops_user') THEN \
         CREATE ROLE ops_user LOGIN REPLICATION PASSWORD '{secret}'; END IF; END $$; \
         GRANT SELECT ON t TO ops_user;"
    ))
    .await;
    // Least privilege: the publication is created by the owner, ficus only uses it.
    s.sql(&format!("CREATE PUBLICATION \"{}\" FOR TABLE t", s.prefix)).await;
    let url = s.pg.url("ops_user", secret, &s.db);
    let events = format!(
        "events:\n  - {{name: RowAdded, table: public.t, on: insert, key: string(new.id), topic: {}.events}}\n",
        s.prefix
    );
    let cfg = Ficus::config(&url, &["public.t"], &s.prefix, &kafka.brokers(), &events);
    let (f, port) = Ficus::start_with_health(&cfg);
    let log = || f.log();
    assert_eq!(wait_for_status(port, "/healthz", 200, &log), "ok\n");
    wait_for_status(port, "/readyz", 200, &log);

    s.sql("INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c'); UPDATE t SET v = 'x' WHERE id = 1;").await;
    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        let (_, m) = get(port, "/metrics").unwrap();
        // Counted when routed; the latency once Kafka acknowledged the transactions.
        if sample(&m, "ficus_changes_received_total{table=\"public.t\",op=\"update\"}") == Some(1.0)
            && sample(&m, "ficus_commit_to_ack_seconds_count").is_some_and(|n| n >= 1.0)
        {
            break m;
        }
        assert!(Instant::now() < deadline, "metrics never counted the changes:\n{m}\n{}", f.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(sample(&metrics, "ficus_changes_received_total{table=\"public.t\",op=\"insert\"}"), Some(3.0));
    assert_eq!(sample(&metrics, "ficus_raw_events_total{table=\"public.t\"}"), Some(4.0));
    assert_eq!(sample(&metrics, "ficus_streaming"), Some(1.0));
    let events = format!("ficus_events_total{{event_type=\"RowAdded\",version=\"1\",topic=\"{}.events\"}}", s.prefix);
    assert_eq!(sample(&metrics, &events), Some(3.0), "{metrics}");
    assert!(metrics.contains("ficus_commit_to_ack_seconds_bucket{le=\"0.05\"}"), "{metrics}");

    let deadline = Instant::now() + WAIT;
    let status = loop {
        let (_, body) = get(port, "/status").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["tables"]["public.t"]["changes"] == 4 && v["lagBytes"].is_u64() && v["flushedLsn"].is_string() {
            break v;
        }
        assert!(Instant::now() < deadline, "status never showed the changes: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["slot"], s.prefix.as_str());
    assert_eq!(status["database"], s.db.as_str());
    assert_eq!(status["streaming"], true);
    assert_eq!(status["rules"][0]["name"], "RowAdded");
    assert_eq!(status["rules"][0]["events"], 3);
    assert!(status["lastEventTime"].as_str().unwrap().ends_with('Z'));

    // The broker goes away: not ready (with the reason); it comes back: ready again.
    kafka.stop();
    let body = wait_for_status(port, "/readyz", 503, &log);
    assert!(body.contains("Kafka"), "{body}");
    assert_eq!(get(port, "/healthz").unwrap().0, 200, "alive all along");
    kafka.start();
    wait_for_status(port, "/readyz", 200, &log);

    let everything = format!("{}{}{}", f.log(), get(port, "/status").unwrap().1, get(port, "/metrics").unwrap().1);
    assert!(!everything.contains(secret), "the password leaked");
}

/// WAL-bloat protection: a captured table that never changes while WAL is written elsewhere — by a table of the same
/// database that is not captured, or by another database of the cluster. PostgreSQL 15's walsender sends keepalives
/// with its position once it has caught up, and ficus confirms such positions when nothing is in flight, so the
/// slot's confirmed position follows the server's WAL and the retained WAL stays small (checked with the heartbeat
/// off, and with it on). With the heartbeat on, a second slot (test_decoding) in the captured database shows the
/// heartbeat's logical messages really are written there, about once per interval, and the slot's confirmed
/// position passes the latest of them: the heartbeat's transactions, which carry no records, are confirmed.
async fn idle_table_next_to_busy_writes(name: &str, heartbeat: u64, other_database: bool) {
    let s =
        Setup::new(name, "CREATE TABLE cap (id int PRIMARY KEY); CREATE TABLE busy (id serial PRIMARY KEY, pad text);")
            .await;
    let busy_db = if other_database {
        let db = crate::support::unique_db("ops_other");
        s.pg.create_database(&db);
        s.pg.execute(&db, "CREATE TABLE busy (id serial PRIMARY KEY, pad text)").await;
        db
    } else {
        s.db.clone()
    };
    let cfg = s.config(&["public.cap"]).replace(
        "  status_interval_secs: 1\n",
        &format!("  status_interval_secs: 1\n  heartbeat_interval_secs: {heartbeat}\n"),
    );
    // Sees every logical message written in the captured database from here on.
    let probe = format!("{}_probe", s.prefix);
    s.sql(&format!("SELECT pg_create_logical_replication_slot('{probe}', 'test_decoding')")).await;
    let (f, port) = Ficus::start_with_health(&cfg);
    wait_for_status(port, "/readyz", 200, &|| f.log());
    let before = s.current_lsn().await;
    for _ in 0..20 {
        s.pg.execute(&busy_db, "INSERT INTO busy (pad) SELECT repeat('x', 200) FROM generate_series(1, 2000)").await;
    }
    let after = s.current_lsn().await;
    let written = crate::lsn(&after) - crate::lsn(&before);
    assert!(written > 4 << 20, "the busy table wrote only {written} bytes of WAL");
    let deadline = Instant::now() + WAIT;
    loop {
        let confirmed = s.confirmed_flush().await.unwrap();
        if crate::lsn(&confirmed) >= crate::lsn(&after) {
            break;
        }
        assert!(Instant::now() < deadline, "confirmed_flush_lsn stuck at {confirmed}, WAL at {after}\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The slot lets the server recycle that WAL: what it retains ends up well below what was written.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = get(port, "/status").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["retainedWalBytes"].as_u64().is_some_and(|r| r < written / 2) {
            break;
        }
        assert!(Instant::now() < deadline, "retained WAL stays high: {v}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(!f.log().contains("heartbeat failed"), "{}", f.log());

    // The heartbeat's own messages, as the captured database's WAL holds them.
    let heartbeats = || async {
        let client = s.pg.client(&s.db).await;
        let rows = client
            .query(
                "SELECT lsn::text FROM pg_logical_slot_peek_changes($1, NULL, NULL) \
                 WHERE data LIKE 'message: transactional: 1 prefix: ficus.heartbeat,%'",
                &[&probe],
            )
            .await
            .unwrap();
        rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>()
    };
    if heartbeat == 0 {
        assert_eq!(heartbeats().await, Vec::<String>::new(), "heartbeat off, yet heartbeat messages were written");
        return;
    }
    // At least three (one a second): the loop keeps running, it did not write once and stop.
    let deadline = Instant::now() + WAIT;
    let seen = loop {
        let seen = heartbeats().await;
        if seen.len() >= 3 {
            break seen;
        }
        assert!(Instant::now() < deadline, "heartbeat messages in the captured database: {seen:?}\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let latest = seen.iter().max_by_key(|l| crate::lsn(l)).unwrap().clone();
    let deadline = Instant::now() + WAIT;
    loop {
        let confirmed = s.confirmed_flush().await.unwrap();
        if crate::lsn(&confirmed) > crate::lsn(&latest) {
            break;
        }
        assert!(Instant::now() < deadline, "slot stuck at {confirmed}, before the heartbeat at {latest}\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_captured_table_does_not_pin_wal_of_other_tables() {
    idle_table_next_to_busy_writes("ops_idle_table", 0, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_in_another_database_do_not_pin_wal_and_the_heartbeat_is_written_and_confirmed() {
    idle_table_next_to_busy_writes("ops_idle_db", 1, true).await;
}

/// A CA and a server certificate for `localhost` (not for 127.0.0.1), made with openssl, readable by the
/// PostgreSQL server (which runs as `postgres` when the tests run as root).
fn make_certs(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let (ca_key, ca, key, csr, crt) = (
        format!("{name}-ca.key"),
        format!("{name}-ca.pem"),
        format!("{name}-server.key"),
        format!("{name}-server.csr"),
        format!("{name}-server.pem"),
    );
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-days",
        "2",
        "-subj",
        "/CN=ficus test CA",
    ]);
    run(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &crt,
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join(&key), std::fs::Permissions::from_mode(0o600)).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        for f in [&key, &crt] {
            std::process::Command::new("chown")
                .args(["postgres:postgres", &dir.join(f).display().to_string()])
                .status()
                .unwrap();
        }
    }
    (dir.join(ca), dir.join(crt), dir.join(key))
}

/// TLS to PostgreSQL with `sslmode=verify-full` against a private CA, and SCRAM-SHA-256 — for both the control and
/// the replication connection. A certificate from another CA, or a host name the certificate does not name, is
/// refused (exit 2) with a message that says why.
#[tokio::test(flavor = "multi_thread")]
async fn tls_verify_full_with_a_private_ca_and_scram() {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ca, crt, key) = make_certs(dir.path(), "good");
    let (other_ca, _, _) = make_certs(dir.path(), "other");
    let pg = crate::support::TestPostgres::start_with(
        crate::support::PgOptions::default()
            .setting("ssl", "on")
            .setting("ssl_cert_file", crt.display().to_string())
            .setting("ssl_key_file", key.display().to_string())
            .hba(["hostssl all tls_user 127.0.0.1/32 scram-sha-256", "host all tls_user 127.0.0.1/32 reject"]),
    );
    let db = crate::support::unique_db("tls");
    pg.create_database(&db);
    pg.execute(
        &db,
        "CREATE TABLE t (id int PRIMARY KEY); SET password_encryption = 'scram-sha-256'; \
                     CREATE ROLE tls_user LOGIN REPLICATION SUPERUSER PASSWORD 'tls-s3cret';",
    )
    .await;
    let kafka = TestKafka::shared();
    let url = |host: &str, mode: &str, root: &std::path::Path| {
        format!(
            "postgres://tls_user:tls-s3cret@{host}:{}/{db}?sslmode={mode}&sslrootcert={}",
            pg.port(),
            root.display()
        )
    };
    // Unique per run: a fixed name would read a previous run's messages on an external broker.
    let prefix = &kafka.unique_topic("tls_ok").replace('-', "_").to_lowercase();
    let cfg = Ficus::config(&url("localhost", "verify-full", &ca), &["public.t"], prefix, &kafka.brokers(), "");
    let mut f = Ficus::start(&cfg);
    f.wait_streaming();
    pg.execute(&db, "INSERT INTO t VALUES (1)").await;
    let got = crate::read_all_confirmed(&pg, &db, prefix, kafka, &f, &format!("{prefix}.public.t"), false).await;
    assert_eq!(got.len(), 1, "{}", f.log());
    assert_eq!(f.terminate().code(), Some(0));
    assert!(!f.log().contains("tls-s3cret"));

    // Without TLS the server refuses the role (hostssl only); with the wrong CA or host name ficus refuses the server.
    for (u, why) in [
        (url("localhost", "verify-full", &other_ca), "invalid peer certificate"),
        (url("127.0.0.1", "verify-full", &ca), "invalid peer certificate"),
        (format!("postgres://tls_user:tls-s3cret@127.0.0.1:{}/{db}?sslmode=disable", pg.port()), "reject"),
    ] {
        let mut f = Ficus::start(&Ficus::config(&u, &["public.t"], "tls_bad", &kafka.brokers(), ""));
        let status = f.wait(WAIT);
        let log = f.log();
        assert_eq!(status.code(), Some(2), "{u}: {log}");
        assert!(log.to_lowercase().contains(why), "{u}: expected {why:?} in:\n{log}");
        eprintln!("refused as expected: {}", log.lines().find(|l| l.contains("ERROR")).unwrap_or(""));
        assert!(!log.contains("tls-s3cret"));
    }
    // verify-ca checks the chain but not the name: 127.0.0.1 is fine.
    let mut f = Ficus::start(&Ficus::config(
        &url("127.0.0.1", "verify-ca", &ca),
        &["public.t"],
        "tls_ca",
        &kafka.brokers(),
        "",
    ));
    f.wait_streaming();
    assert_eq!(f.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn status_counts_are_current_after_a_burst_without_a_later_change() {
    let s = Setup::new("status_fresh", "CREATE TABLE t (id int PRIMARY KEY)").await;
    let (f, port) = Ficus::start_with_health(&s.config(&["public.t"]));
    wait_for_status(port, "/readyz", 200, &|| f.log());
    // A burst, then silence: the last counts must reach /status without waiting for another change.
    for i in 0..50 {
        s.sql(&format!("INSERT INTO t VALUES ({i})")).await;
    }
    s.wait_confirmed_now(&f).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = get(port, "/status").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["tables"]["public.t"]["changes"] == 50 {
            break;
        }
        assert!(Instant::now() < deadline, "/status counts stale after the burst: {}", v["tables"]);
        std::thread::sleep(Duration::from_millis(100));
    }
}
