//! End-to-end tests: a real PostgreSQL 15 cluster, a real Kafka-protocol broker, and the real `ficus` binary.
//! Each test uses its own database, slot and topic prefix. One test binary; a module per capability.

#[path = "../support/mod.rs"]
mod support;

mod chaos;
mod check_output;
mod container;
mod contract;
mod core;
mod crash_points;
mod differential;
mod dlq;
mod evolution;
mod exactly_once;
mod example;
mod failover;
mod faults;
mod keys;
mod lifecycle;
mod observability;
mod ops;
mod partition;
mod rules;
mod secrets;
mod shutdown;
mod snapshot;
mod standby;
mod transactions;
mod versions;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{ficus_bin, unique_db, TestKafka, TestPostgres};

/// A `ficus` process with its config and state in a temp dir; killed on drop.
pub(crate) struct Ficus {
    child: Option<Child>,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Ficus {
    /// A config for `tables`. Unless `extra` has a `snapshot:` section, the initial snapshot is off: tests of other
    /// capabilities write right after "streaming", and a concurrent copy of the same rows would add `read` events
    /// (tests/pipeline/snapshot.rs covers the default).
    pub(crate) fn config(db_url: &str, tables: &[&str], prefix: &str, brokers: &str, extra: &str) -> String {
        let tables: Vec<String> = tables.iter().map(|t| format!("'{}'", t.replace('\'', "''"))).collect();
        let extra =
            if extra.contains("snapshot:") { extra.to_string() } else { format!("snapshot:\n  mode: never\n{extra}") };
        format!(
            "source:\n  url: {db_url}\n  slot: {prefix}\n  publication: {prefix}\n  tables: [{}]\n  status_interval_secs: 1\n\
             kafka:\n  brokers: {brokers}\n  properties: {{linger.ms: 1}}\n\
             state:\n  dir: STATE\n  checkpoint_interval_ms: 100\n\
             changes:\n  tables: ['*']\n  topic_prefix: {prefix}\n{extra}",
            tables.join(", ")
        )
    }

    pub(crate) fn dir_config(config: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ficus.yaml");
        let state = dir.path().join("state");
        std::fs::write(&path, config.replace("STATE", &state.display().to_string())).unwrap();
        (dir, path)
    }

    pub(crate) fn start(config: &str) -> Ficus {
        Self::start_with_env(config, &[])
    }

    /// [`Ficus::start`] with extra environment variables for this first run only ([`Ficus::restart`] drops them).
    pub(crate) fn start_with_env(config: &str, env: &[(&str, &str)]) -> Ficus {
        let (dir, path) = Self::dir_config(config);
        let mut f = Ficus { child: None, log: dir.path().join("ficus.log"), dir };
        f.spawn_env(&path, env);
        f
    }

    pub(crate) fn spawn_with(&mut self, path: &std::path::Path) {
        self.spawn_env(path, &[]);
    }

    fn spawn_env(&mut self, path: &std::path::Path, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(ficus_bin())
            .args(["run", "--config"])
            .arg(path)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,ficus=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ficus");
        self.child = Some(child);
    }

    pub(crate) fn restart(&mut self) {
        let path = self.dir.path().join("ficus.yaml");
        self.spawn_with(&path);
    }

    /// Starts ficus on `config` plus its health endpoints on a free port, and waits until they listen: returns the
    /// port. `config` must not have a `health:` section.
    pub(crate) fn start_with_health(config: &str) -> (Ficus, u16) {
        let port = support::free_port();
        let mut f = Ficus::start(&format!("{config}health:\n  listen: 127.0.0.1:{port}\n"));
        let port = f.wait_health_listening(port, 0);
        (f, port)
    }

    /// [`Ficus::restart`] for an instance with health endpoints on `port`; returns the port they listen on.
    pub(crate) fn restart_with_health(&mut self, port: u16) -> u16 {
        let before = self.log().matches(&listening(port)).count();
        self.restart();
        self.wait_health_listening(port, before)
    }

    /// Waits until this process logged that its health endpoints listen on `port` (the log is appended to across
    /// restarts: `before` lines were there already). `free_port()` only says the port was free a moment ago: when
    /// another process took it first, ficus exits ("Address already in use"); then the config moves to a new free
    /// port and ficus starts again, up to 3 times. Returns the port in use.
    pub(crate) fn wait_health_listening(&mut self, mut port: u16, mut before: usize) -> u16 {
        for attempt in 1..=3 {
            let deadline = Instant::now() + WAIT;
            loop {
                // The structured line names the address, so another process answering on the port cannot fool it.
                if self.log().matches(&listening(port)).count() > before {
                    return port;
                }
                if !self.is_running() {
                    break;
                }
                assert!(Instant::now() < deadline, "health endpoints never listened on {port}:\n{}", self.log());
                std::thread::sleep(Duration::from_millis(50));
            }
            let log = self.log();
            assert!(attempt < 3 && log.contains("in use"), "ficus exited before listening on {port}:\n{log}");
            eprintln!("health port {port} was taken; retrying on another one");
            let path = self.dir.path().join("ficus.yaml");
            let new = support::free_port();
            let text = std::fs::read_to_string(&path).unwrap();
            let text: Vec<String> = text
                .lines()
                .map(|l| match l.trim_start().strip_prefix(&format!("listen: 127.0.0.1:{port}")) {
                    Some(rest) if !rest.starts_with(|c: char| c.is_ascii_digit()) => {
                        l.replace(&format!(":{port}"), &format!(":{new}"))
                    }
                    _ => l.to_string(),
                })
                .collect();
            std::fs::write(&path, text.join("\n") + "\n").unwrap();
            port = new;
            before = self.log().matches(&listening(port)).count();
            self.spawn_with(&path);
        }
        unreachable!()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub(crate) fn signal(&self, sig: &str) {
        Command::new("kill").args([sig, &self.pid().to_string()]).status().unwrap();
    }

    pub(crate) fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("ficus did not exit within {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process is still running (not reaped).
    pub(crate) fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// SIGTERM and wait for the exit (60 s). Callers assert the exit code: 0 is a clean shutdown.
    pub(crate) fn terminate(&mut self) -> ExitStatus {
        self.signal("-TERM");
        self.wait(Duration::from_secs(60))
    }

    pub(crate) fn sigkill(&mut self) {
        self.signal("-KILL");
        self.wait(Duration::from_secs(10));
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn checkpoint(&self, slot: &str) -> Option<Value> {
        let text = std::fs::read(self.dir.path().join("state").join(format!("{slot}.checkpoint.json"))).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Waits until ficus logged that its replication stream runs ([`STREAMING`]); with a health listener, waiting
    /// for `/readyz` (see [`wait_for_status`]) is the alternative.
    pub(crate) fn wait_streaming(&self) {
        self.wait_for_log(STREAMING, WAIT)
    }

    /// Waits until the log contains `needle`.
    pub(crate) fn wait_for_log(&self, needle: &str, timeout: Duration) {
        self.wait_for_log_count(needle, 1, timeout)
    }

    /// Waits until the log contains `needle` at least `count` times.
    pub(crate) fn wait_for_log_count(&self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.log().matches(needle).count() < count {
            if Instant::now() > deadline {
                panic!("ficus log never showed {needle:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for Ficus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The log line of health endpoints listening on 127.0.0.1:`port`.
fn listening(port: u16) -> String {
    format!("health endpoints listening addr=127.0.0.1:{port}\n")
}

/// `ficus run --dry-run` on `config`, stdout and stderr in files of its temp dir; returns once it streams.
pub(crate) struct DryRun {
    pub child: Child,
    pub stdout: PathBuf,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl DryRun {
    pub(crate) async fn start(config: &str) -> DryRun {
        let (dir, path) = Ficus::dir_config(config);
        let stdout = dir.path().join("stdout.jsonl");
        let log = dir.path().join("stderr.log");
        let mut child = Command::new(ficus_bin())
            .args(["run", "--dry-run", "--config"])
            .arg(&path)
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + WAIT;
        let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
        while !read_log().contains(STREAMING) {
            assert!(Instant::now() < deadline && child.try_wait().unwrap().is_none(), "no streaming:\n{}", read_log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        DryRun { child, stdout, log, _dir: dir }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self._dir.path().join("state")
    }
}

pub(crate) fn check(config: &str) -> (i32, String) {
    command(config, &["check"], &[])
}

/// `ficus backfill --table <table>` on `config`: exit code, stdout and stderr.
pub(crate) fn backfill(config: &str, table: &str) -> (i32, String) {
    command(config, &["backfill"], &["--table", table])
}

/// `ficus <subcommand> --config <config> <args>` to its end: exit code, stdout and stderr.
fn command(config: &str, subcommand: &[&str], args: &[&str]) -> (i32, String) {
    let (_dir, path) = Ficus::dir_config(config);
    let out = Command::new(ficus_bin()).args(subcommand).arg("--config").arg(&path).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

pub(crate) fn values(msgs: &[support::ConsumedMessage]) -> Vec<Value> {
    msgs.iter().map(|m| serde_json::from_slice(m.payload.as_deref().expect("payload")).unwrap()).collect()
}

pub(crate) fn header<'a>(m: &'a support::ConsumedMessage, name: &str) -> Option<&'a str> {
    m.headers.iter().find(|(k, _)| k == name).map(|(_, v)| std::str::from_utf8(v).unwrap())
}

pub(crate) struct Setup {
    pub pg: &'static TestPostgres,
    pub kafka: &'static TestKafka,
    pub db: String,
    pub prefix: String,
}

/// Drops the test's replication slots (ficus's and any other in its database) when the test ends, passed or failed:
/// see [`TestPostgres::drop_slots_of`]. Declared before the `Ficus` it serves, a `Setup` is dropped after it.
impl Drop for Setup {
    fn drop(&mut self) {
        self.pg.drop_slots_of(&self.db);
    }
}

impl Setup {
    pub(crate) async fn new(name: &str, ddl: &str) -> Setup {
        let pg = TestPostgres::shared();
        let kafka = TestKafka::shared();
        let db = unique_db(name);
        pg.create_database(&db);
        pg.execute(&db, ddl).await;
        Setup { pg, kafka, db, prefix: kafka.unique_topic(name).replace('-', "_").to_lowercase() }
    }

    pub(crate) fn config(&self, tables: &[&str]) -> String {
        Ficus::config(&self.pg.superuser_url(&self.db), tables, &self.prefix, &self.kafka.brokers(), "")
    }

    pub(crate) fn topic(&self, schema: &str, table: &str) -> String {
        format!("{}.{}.{}", self.prefix, schema, table).replace(' ', "_")
    }

    pub(crate) async fn sql(&self, sql: &str) {
        self.pg.execute(&self.db, sql).await;
    }

    pub(crate) async fn confirmed_flush(&self) -> Option<String> {
        let client = self.pg.client(&self.db).await;
        client
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.prefix],
            )
            .await
            .unwrap()
            .and_then(|r| r.get(0))
    }

    /// Waits until the slot confirmed everything written so far (so Kafka holds it all).
    #[allow(dead_code)] // for tests that need the confirmation without reading a topic
    pub(crate) async fn wait_confirmed_now(&self, f: &Ficus) {
        self.wait_confirmed_now_within(f, WAIT).await
    }

    pub(crate) async fn wait_confirmed_now_within(&self, f: &Ficus, timeout: Duration) {
        wait_slot_confirmed_now(self.pg, &self.db, &self.prefix, f, timeout).await
    }

    /// Everything ficus published to `topic` so far, exactly — the helper to assert on topics with.
    ///
    /// Waits until the slot confirmed the server's current WAL position (so Kafka holds every change committed
    /// before this call: the invariant of docs/guarantees.md), then reads every partition of `topic` to its end as of
    /// that moment (read_committed) and returns the whole list in (partition, offset) order. Compare the whole list:
    /// a duplicate, a spurious event or a second snapshot pass makes it longer, unlike "wait for n messages".
    /// No fixed wait: it returns as soon as ficus confirmed. Snapshot rows are not WAL changes: after an initial
    /// snapshot or a backfill, call [`Setup::wait_snapshot_settled`] first. Panics (with ficus's log) when the slot does not
    /// catch up within [`WAIT`] or the topic does not exist; [`Setup::read_all_confirmed_or_empty`] is for topics
    /// that may legitimately stay empty.
    pub(crate) async fn read_all_confirmed(&self, f: &Ficus, topic: &str) -> Vec<support::ConsumedMessage> {
        read_all_confirmed(self.pg, &self.db, &self.prefix, self.kafka, f, topic, false).await
    }

    /// Waits until ficus's checkpoint lists no snapshot job, i.e. Kafka acknowledged every chunk of the initial
    /// snapshot or backfill. "snapshot of table finished" is logged when a copy ends, which may be before its last
    /// chunks are acknowledged; call this before [`Setup::read_all_confirmed`] when a topic gets `read` events.
    pub(crate) async fn wait_snapshot_settled(&self, f: &Ficus) {
        let deadline = Instant::now() + WAIT;
        while f
            .checkpoint(&self.prefix)
            .is_none_or(|cp| cp["snapshot"]["jobs"].as_array().is_some_and(|j| !j.is_empty()))
        {
            assert!(
                Instant::now() < deadline,
                "the snapshot never settled: {:?}\n{}",
                f.checkpoint(&self.prefix),
                f.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// [`Setup::read_all_confirmed`] for a topic that may not exist (e.g. a DLQ that must stay empty): empty then.
    pub(crate) async fn read_all_confirmed_or_empty(&self, f: &Ficus, topic: &str) -> Vec<support::ConsumedMessage> {
        read_all_confirmed(self.pg, &self.db, &self.prefix, self.kafka, f, topic, true).await
    }

    /// Waits until `slot` (another instance's, in this test's database) confirmed the server's current WAL position.
    pub(crate) async fn wait_slot_confirmed_now(&self, slot: &str, f: &Ficus) {
        wait_slot_confirmed_now(self.pg, &self.db, slot, f, WAIT).await
    }

    pub(crate) async fn current_lsn(&self) -> String {
        let client = self.pg.client(&self.db).await;
        client.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0)
    }
}

/// Waits until `slot` confirmed the server's current WAL position (`pg_current_wal_lsn()` when called), so Kafka
/// holds everything committed before the call. PostgreSQL 15's walsender sends keepalives with its position once it
/// caught up, so this also returns when other databases of the cluster keep writing.
pub(crate) async fn wait_slot_confirmed_now(pg: &TestPostgres, db: &str, slot: &str, f: &Ficus, timeout: Duration) {
    let client = pg.client(db).await;
    let target: String = client.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    wait_slot_confirmed(&client, slot, &target, f, timeout).await
}

/// Waits until `slot` (read through `client`: the server the slot lives on) confirmed `target`.
pub(crate) async fn wait_slot_confirmed(
    client: &tokio_postgres::Client,
    slot: &str,
    target: &str,
    f: &Ficus,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let confirmed: Option<String> = client
            .query_opt("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .unwrap()
            .and_then(|r| r.get(0));
        if confirmed.as_deref().is_some_and(|c| lsn(c) >= lsn(target)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "slot {slot}: confirmed_flush_lsn {confirmed:?} never reached {target}:\n{}",
            f.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`Setup::read_all_confirmed`] for any cluster, database and slot (tests with their own PostgreSQL). With
/// `may_be_empty`, a topic that does not exist reads as empty instead of failing the test.
pub(crate) async fn read_all_confirmed(
    pg: &TestPostgres,
    db: &str,
    slot: &str,
    kafka: &TestKafka,
    f: &Ficus,
    topic: &str,
    may_be_empty: bool,
) -> Vec<support::ConsumedMessage> {
    wait_slot_confirmed_now(pg, db, slot, f, WAIT).await;
    if !may_be_empty {
        // The topic is created with its first message, which Kafka acknowledged before the slot confirmed it; give
        // the metadata a moment to show it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while kafka.partitions(topic).await.is_empty() {
            assert!(
                Instant::now() < deadline,
                "topic {topic} does not exist after slot {slot} confirmed everything:\n{}",
                f.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    kafka.read_to_end(topic, WAIT).await
}

/// `GET path` on `port`: (status code, body).
pub(crate) fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

pub(crate) fn wait_for_status(port: u16, path: &str, want: u16, log: &dyn Fn() -> String) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some((code, body)) = get(port, path) {
            if code == want {
                return body;
            }
        }
        assert!(Instant::now() < deadline, "{path} never answered {want}; last {:?}\n{}", get(port, path), log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn lsn(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// The structured log line ficus writes when a replication stream starts (`streaming slot=… lsn=…`). Tests wait for
/// this, not for the bare word "streaming", which other lines may contain too.
pub(crate) const STREAMING: &str = "ficus::pipeline::session: streaming slot=";

/// The slot guard: once a test's `Setup` is gone, its database has no replication slot left — also when ficus was
/// killed a moment before (its walsender may still hold the slot) and for slots the test made itself.
#[tokio::test(flavor = "multi_thread")]
async fn setup_drops_the_slots_of_its_database() {
    let s = Setup::new("slot_guard", "CREATE TABLE t (id int PRIMARY KEY)").await;
    let (pg, db) = (s.pg, s.db.clone());
    s.sql(&format!("SELECT pg_create_logical_replication_slot('{}_extra', 'test_decoding')", s.prefix)).await;
    let f = Ficus::start(&s.config(&["public.t"]));
    f.wait_streaming();
    drop(f);
    drop(s);
    let client = pg.client(&db).await;
    let left: Vec<String> = client
        .query("SELECT slot_name::text FROM pg_replication_slots WHERE database = $1", &[&db])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(left.is_empty(), "slots left behind: {left:?}");
}

/// The health-port retry of the harness: a port taken by another process makes ficus exit; the harness moves the
/// config to a new port and ficus comes up there.
#[tokio::test(flavor = "multi_thread")]
async fn a_taken_health_port_is_retried_with_another() {
    let s = Setup::new("health_port", "CREATE TABLE t (id int PRIMARY KEY)").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut f = Ficus::start(&format!("{}health:\n  listen: 127.0.0.1:{port}\n", s.config(&["public.t"])));
    let used = f.wait_health_listening(port, 0);
    assert_ne!(used, port);
    wait_for_status(used, "/readyz", 200, &|| f.log());
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
    drop(taken);
}
