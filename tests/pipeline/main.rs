//! End-to-end tests: a real PostgreSQL 15 cluster, a real Kafka-protocol broker, and the real `ficus` binary.
//! Each test uses its own database, slot and topic prefix. One test binary; a module per capability.

#[path = "../support/mod.rs"]
mod support;

mod chaos;
mod core;
mod faults;
mod ops;
mod rules;
mod secrets;
mod snapshot;

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
        let extra = if extra.contains("snapshot:") { extra.to_string() } else { format!("snapshot:\n  mode: never\n{extra}") };
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
        let (dir, path) = Self::dir_config(config);
        let mut f = Ficus { child: None, log: dir.path().join("ficus.log"), dir };
        f.spawn_with(&path);
        f
    }

    pub(crate) fn spawn_with(&mut self, path: &std::path::Path) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(ficus_bin())
            .args(["run", "--config"])
            .arg(path)
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

pub(crate) fn check(config: &str) -> (i32, String) {
    let (_dir, path) = Ficus::dir_config(config);
    let out = Command::new(ficus_bin()).args(["check", "--config"]).arg(&path).output().unwrap();
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
            .query_opt("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&self.prefix])
            .await
            .unwrap()
            .and_then(|r| r.get(0))
    }

    /// Waits until the slot confirmed everything written so far (so Kafka holds it all).
    pub(crate) async fn wait_confirmed_now(&self, f: &Ficus) {
        self.wait_confirmed_now_within(f, WAIT).await
    }

    pub(crate) async fn wait_confirmed_now_within(&self, f: &Ficus, timeout: Duration) {
        let target = self.current_lsn().await;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.confirmed_flush().await {
                if lsn(&c) >= lsn(&target) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "confirmed_flush_lsn never reached {target}:\n{}", f.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(crate) async fn current_lsn(&self) -> String {
        let client = self.pg.client(&self.db).await;
        client.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0)
    }
}

pub(crate) fn lsn(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

pub(crate) const WAIT: Duration = Duration::from_secs(60);
