//! Ephemeral PostgreSQL clusters: `initdb` into a temp dir, `pg_ctl start` on a free port with `wal_level=logical`.
//!
//! Guarantees: a cluster listens on 127.0.0.1 only, with its own socket dir; it is stopped (`-m immediate`) and its
//! directory removed on `Drop`, or — for [`TestPostgres::shared`] — by a watchdog when the test process exits. As root
//! the server runs as the `postgres` user (PostgreSQL refuses root). Authentication over TCP: the superuser
//! `postgres` is trusted (unless [`PgOptions::superuser_password`] is set); every other role needs its password
//! (scram-sha-256), so wrong-password tests fail the way they would in production.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::watchdog::Watchdog;
use super::{install_test_deps, is_root, sh_quote, tail, tmp_base};

/// Settings every test cluster gets; [`PgOptions::setting`] overrides them (later lines of `postgresql.conf` win).
const DEFAULT_SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "127.0.0.1"),
    ("wal_level", "logical"),
    ("fsync", "off"),
    ("max_replication_slots", "64"),
    ("max_wal_senders", "64"),
    ("wal_sender_timeout", "60s"),
];

const START_TIMEOUT_SECS: u32 = 60;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Options for [`TestPostgres::start_with`].
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    settings: Vec<(String, String)>,
    hba: Vec<String>,
    superuser_password: Option<String>,
}

impl PgOptions {
    /// A server setting, written to `postgresql.conf` (so `ALTER SYSTEM` can still override it, as in production).
    /// E.g. `.setting("wal_level", "replica")` for a negative test.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Extra `pg_hba.conf` lines, placed before the defaults (the first matching line wins).
    pub fn hba<S: Into<String>>(mut self, lines: impl IntoIterator<Item = S>) -> Self {
        self.hba.extend(lines.into_iter().map(Into::into));
        self
    }

    /// Gives the superuser `postgres` a password and requires it over TCP (scram-sha-256).
    pub fn superuser_password(mut self, password: impl Into<String>) -> Self {
        self.superuser_password = Some(password.into());
        self
    }
}

/// An ephemeral PostgreSQL cluster. See the module docs for its guarantees.
pub struct TestPostgres {
    bin: PathBuf,
    root: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    logfile: PathBuf,
    port: u16,
    superuser_password: Option<String>,
    shared: bool,
    watchdog: Option<Watchdog>,
}

impl TestPostgres {
    /// The cluster shared by every test of this test process; each test creates its own database in it
    /// ([`super::unique_db`] + [`TestPostgres::create_database`]). Stopped and removed when the process exits.
    pub fn shared() -> &'static TestPostgres {
        static SHARED: OnceLock<TestPostgres> = OnceLock::new();
        SHARED.get_or_init(|| {
            let mut pg = TestPostgres::start_with(PgOptions::default());
            pg.shared = true;
            pg
        })
    }

    /// A dedicated cluster with the default settings (for tests that restart or reconfigure the server).
    pub fn start() -> TestPostgres {
        TestPostgres::start_with(PgOptions::default())
    }

    /// A dedicated cluster with extra settings, `pg_hba.conf` lines or a superuser password.
    pub fn start_with(opts: PgOptions) -> TestPostgres {
        let mut pg = TestPostgres::empty(&opts);
        pg.initdb(&opts);
        pg.start_on_free_port();
        pg
    }

    /// A physical standby of this (dedicated, running) cluster, from the same binaries: a base backup with
    /// `pg_backup_start`/a file copy/`pg_backup_stop` (no `pg_basebackup` needed), streaming through the physical slot
    /// `slot` (created here, reserving WAL), `hot_standby_feedback = on`; `opts` adds settings (e.g.
    /// `sync_replication_slots = on`). The copy leaves out the primary's `synchronized_standby_slots` (it names the
    /// standby's own slot, which does not exist once the standby is promoted).
    pub fn start_standby(&self, slot: &str, opts: PgOptions) -> TestPostgres {
        self.assert_dedicated("start_standby");
        let standby = TestPostgres::empty(&opts);
        let label = block_on(async {
            let client = self.client("postgres").await;
            let create = client.execute("SELECT pg_create_physical_replication_slot($1, true)", &[&slot]).await;
            create.unwrap_or_else(|e| self.fail(&format!("create physical slot {slot}: {e}")));
            let version: i32 =
                client.query_one("SELECT current_setting('server_version_num')::int", &[]).await.unwrap().get(0);
            // Named pg_start_backup/pg_stop_backup before 15.
            let (start, stop) = if version >= 150_000 {
                ("pg_backup_start('ficus-standby', true)", "pg_backup_stop(true)")
            } else {
                ("pg_start_backup('ficus-standby', true, false)", "pg_stop_backup(false, true)")
            };
            client.execute(&format!("SELECT {start}"), &[]).await.expect("start the base backup");
            let out = Command::new("cp").arg("-a").arg(&self.data).arg(&standby.data).output().expect("run cp");
            assert!(out.status.success(), "copying the data directory: {}", output_text(&out));
            let row =
                client.query_one(&format!("SELECT labelfile FROM {stop}"), &[]).await.expect("stop the base backup");
            row.get::<_, String>(0)
        });
        for name in ["postmaster.pid", "postmaster.opts"] {
            let _ = std::fs::remove_file(standby.data.join(name));
        }
        for dir in ["pg_wal", "pg_replslot"] {
            for entry in std::fs::read_dir(standby.data.join(dir)).expect("read the copy").flatten() {
                if entry.path().is_file() {
                    let _ = std::fs::remove_file(entry.path());
                } else if dir == "pg_replslot" {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        std::fs::write(standby.data.join("backup_label"), label).expect("write backup_label");
        std::fs::write(standby.data.join("standby.signal"), "").expect("write standby.signal");
        let auto = standby.data.join("postgresql.auto.conf");
        let text = std::fs::read_to_string(&auto).unwrap_or_default();
        let kept: Vec<&str> = text.lines().filter(|l| !l.contains("synchronized_standby_slots")).collect();
        std::fs::write(&auto, kept.join("\n") + "\n").expect("write postgresql.auto.conf");
        let mut conf = String::from("\n# ficus test harness: standby\n");
        let conninfo = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port);
        let settings = [
            ("primary_conninfo".to_string(), conninfo),
            ("primary_slot_name".to_string(), slot.to_string()),
            ("hot_standby_feedback".to_string(), "on".to_string()),
        ];
        for (name, value) in settings.into_iter().chain(opts.settings.iter().cloned()) {
            conf.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
        }
        let conf_path = standby.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).expect("read postgresql.conf");
        text.push_str(&conf);
        std::fs::write(&conf_path, text).expect("write postgresql.conf");
        if is_root() {
            let (uid, gid) = postgres_user();
            for f in ["backup_label", "standby.signal", "postgresql.auto.conf", "postgresql.conf"] {
                std::os::unix::fs::chown(standby.data.join(f), Some(uid), Some(gid)).expect("chown");
            }
        }
        let mut standby = standby;
        standby.start_on_free_port();
        standby
    }

    /// Promotes a standby (`pg_ctl promote -w`): it ends recovery and accepts writes.
    pub fn promote(&self) {
        self.assert_dedicated("promote");
        let out = self.run_pg(
            "pg_ctl",
            &["promote".into(), "-w".into(), "-t".into(), "60".into(), "-D".into(), self.data.display().to_string()],
        );
        if !out.status.success() {
            self.fail(&format!("pg_ctl promote failed: {}", output_text(&out)));
        }
    }

    /// A cluster with its directories and watchdog, no data directory yet, not started.
    fn empty(opts: &PgOptions) -> TestPostgres {
        let bin = pg_bin();
        let root = tempfile::Builder::new()
            .prefix("ficus-pg-")
            .tempdir_in(tmp_base())
            .expect("create a temp dir for the test cluster")
            .keep();
        let data = root.join("data");
        let sock = root.join("sock");
        let logfile = root.join("postgres.log");
        std::fs::create_dir(&sock).expect("create the socket dir");

        // Armed before initdb, so that whatever fails below, the directory (and any server) goes away.
        let stop = pg_user_command_line(
            &bin.join("pg_ctl"),
            &["stop", "-D", &data.display().to_string(), "-m", "immediate", "-w", "-t", "30"],
        );
        let watchdog = Watchdog::spawn(&format!("{stop}; rm -rf {}", sh_quote(&root.display().to_string())));
        let pg = TestPostgres {
            bin,
            root,
            data,
            sock,
            logfile,
            port: 0,
            superuser_password: opts.superuser_password.clone(),
            shared: false,
            watchdog: Some(watchdog),
        };
        if is_root() {
            let (uid, gid) = postgres_user();
            for dir in [&pg.root, &pg.sock] {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", dir.display()));
            }
        }
        pg
    }

    fn start_on_free_port(&mut self) {
        // Another process may grab the port between free_port() and the server's bind: retry with a new one.
        for attempt in 1..=3 {
            self.port = super::free_port();
            match self.pg_ctl_start() {
                Ok(()) => return,
                Err(out) if attempt < 3 && self.log().contains("could not bind") => {
                    eprintln!("test cluster: port {} taken, retrying: {out}", self.port);
                }
                Err(out) => self.fail(&format!("pg_ctl start failed on port {}: {out}", self.port)),
            }
        }
        unreachable!()
    }

    fn initdb(&self, opts: &PgOptions) {
        let mut args: Vec<String> =
            ["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C", "--no-instructions", "-D"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        args.push(self.data.display().to_string());
        if let Some(pw) = &opts.superuser_password {
            let pwfile = self.root.join("pwfile");
            std::fs::write(&pwfile, format!("{pw}\n")).expect("write pwfile");
            if is_root() {
                let (uid, gid) = postgres_user();
                std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).expect("chown pwfile");
            }
            args.push(format!("--pwfile={}", pwfile.display()));
        }
        let out = self.run_pg("initdb", &args);
        if !out.status.success() {
            self.fail(&format!("initdb failed: {}", output_text(&out)));
        }

        let tcp_superuser = if opts.superuser_password.is_some() { "scram-sha-256" } else { "trust" };
        let mut hba: Vec<String> = opts.hba.clone();
        hba.extend([
            "local all all trust".to_string(),
            "local replication all trust".to_string(),
            format!("host all postgres 127.0.0.1/32 {tcp_superuser}"),
            format!("host replication postgres 127.0.0.1/32 {tcp_superuser}"),
            "host all all 127.0.0.1/32 scram-sha-256".to_string(),
            "host replication all 127.0.0.1/32 scram-sha-256".to_string(),
        ]);
        std::fs::write(self.data.join("pg_hba.conf"), hba.join("\n") + "\n").expect("write pg_hba.conf");

        let mut conf = String::from("\n# ficus test harness\n");
        let settings =
            DEFAULT_SETTINGS.iter().map(|(k, v)| (k.to_string(), v.to_string())).chain(opts.settings.iter().cloned());
        for (name, value) in settings {
            conf.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
        }
        let conf_path = self.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).expect("read postgresql.conf");
        text.push_str(&conf);
        std::fs::write(&conf_path, text).expect("write postgresql.conf");
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let opts = format!("-p {} -k {}", self.port, sh_quote(&self.sock.display().to_string()));
        let out = self.run_pg(
            "pg_ctl",
            &[
                "start".into(),
                "-w".into(),
                "-t".into(),
                START_TIMEOUT_SECS.to_string(),
                "-D".into(),
                self.data.display().to_string(),
                "-l".into(),
                self.logfile.display().to_string(),
                "-o".into(),
                opts,
            ],
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(output_text(&out))
        }
    }

    /// Runs a PostgreSQL program as the `postgres` user when we are root, in the cluster's directory.
    fn run_pg(&self, program: &str, args: &[String]) -> Output {
        let exe = self.bin.join(program);
        let mut cmd = if is_root() {
            let mut c = Command::new(runuser());
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args)
            .current_dir(&self.root)
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", exe.display()))
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "test cluster in {}: {what}\n--- PostgreSQL log (tail) ---\n{}",
            self.root.display(),
            tail(&self.logfile, 40)
        )
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The whole server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.logfile).unwrap_or_default()
    }

    /// A URL for `user` with `password` (percent-encoded) to database `db`, TLS disabled.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{}?sslmode=disable",
            encode(user),
            encode(password),
            self.port,
            encode(db)
        )
    }

    /// A URL for the superuser `postgres` to database `db` (with its password when one was set).
    pub fn superuser_url(&self, db: &str) -> String {
        match &self.superuser_password {
            Some(pw) => self.url("postgres", pw, db),
            None => format!("postgres://postgres@127.0.0.1:{}/{}?sslmode=disable", self.port, encode(db)),
        }
    }

    /// A superuser connection to `db`; its connection task runs on the current tokio runtime.
    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(self.port).user("postgres").dbname(db).connect_timeout(CONNECT_TIMEOUT);
        if let Some(pw) = &self.superuser_password {
            config.password(pw);
        }
        let connect = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(tokio_postgres::NoTls));
        let (client, connection) = match connect.await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => self.fail(&format!("connect to database {db:?}: {}", describe(&e))),
            Err(_) => self.fail(&format!("connect to database {db:?}: no answer within {CONNECT_TIMEOUT:?}")),
        };
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// Runs `sql` (one or more statements) in `db` as the superuser; panics with the server's message on error.
    pub async fn execute(&self, db: &str, sql: &str) {
        let client = self.client(db).await;
        if let Err(e) = client.batch_execute(sql).await {
            panic!("SQL failed in database {db:?}: {}\n--- SQL ---\n{sql}", describe(&e));
        }
    }

    /// Creates database `name` (usable from sync and async code: it runs on a private runtime and thread).
    pub fn create_database(&self, name: &str) {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        block_on(async { self.execute("postgres", &sql).await });
    }

    /// Drops every replication slot of database `db` (terminating the walsenders still using them), within about
    /// 10 s. Best effort and never panics: it runs from `Drop` guards, also while a failed test unwinds. Slots left
    /// behind would pin WAL for the rest of the run and use up `max_replication_slots`.
    pub fn drop_slots_of(&self, db: &str) {
        let db = db.to_string();
        block_on(async move {
            let mut config = tokio_postgres::Config::new();
            config
                .host("127.0.0.1")
                .port(self.port)
                .user("postgres")
                .dbname("postgres")
                .connect_timeout(CONNECT_TIMEOUT);
            if let Some(pw) = &self.superuser_password {
                config.password(pw);
            }
            let Ok(Ok((client, conn))) =
                tokio::time::timeout(CONNECT_TIMEOUT, config.connect(tokio_postgres::NoTls)).await
            else {
                return;
            };
            tokio::spawn(conn);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                let _ = client
                    .execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active_pid IS NOT NULL", &[&db])
                    .await;
                let _ = client
                    .execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active", &[&db])
                    .await;
                match client.query_one("SELECT count(*) FROM pg_replication_slots WHERE database = $1", &[&db]).await {
                    Ok(row) if row.get::<_, i64>(0) > 0 => tokio::time::sleep(Duration::from_millis(100)).await,
                    _ => return,
                }
            }
        });
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: no shutdown checkpoint, like a crash). Dedicated
    /// clusters only.
    pub fn stop_immediate(&self) {
        self.assert_dedicated("stop_immediate");
        let out = self.run_pg(
            "pg_ctl",
            &[
                "stop".into(),
                "-D".into(),
                self.data.display().to_string(),
                "-m".into(),
                "immediate".into(),
                "-w".into(),
                "-t".into(),
                "30".into(),
            ],
        );
        if !out.status.success() {
            self.fail(&format!("pg_ctl stop failed: {}", output_text(&out)));
        }
    }

    /// Starts the stopped server again on the same port and data directory (URLs stay valid). Dedicated clusters
    /// only.
    pub fn start_again(&self) {
        self.assert_dedicated("start_again");
        if let Err(out) = self.pg_ctl_start() {
            self.fail(&format!("pg_ctl start (again) failed on port {}: {out}", self.port));
        }
    }

    /// [`stop_immediate`](Self::stop_immediate) then [`start_again`](Self::start_again): a crash and recovery.
    pub fn restart_immediate(&self) {
        self.stop_immediate();
        self.start_again();
    }

    fn assert_dedicated(&self, what: &str) {
        assert!(!self.shared, "{what} on the shared cluster would break other tests: use TestPostgres::start()");
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.fire(Duration::from_secs(60));
        }
    }
}

/// Runs `fut` to completion on a private current-thread runtime in a scoped thread, so it works whether or not the
/// caller is inside a tokio runtime (blocking that caller meanwhile).
fn block_on<F: Future + Send>(fut: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|s| {
        let handle = s.spawn(|| {
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime").block_on(fut)
        });
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// The PostgreSQL server binaries: `FICUS_PG_BIN`; else `FICUS_PG_VERSION` (14–18, from `scripts/install-pg.sh`,
/// installed on first use); else `/usr/lib/postgresql/15/bin` (installing it if missing).
fn pg_bin() -> PathBuf {
    static VERSIONED: OnceLock<Option<PathBuf>> = OnceLock::new();
    let versioned = VERSIONED.get_or_init(|| {
        let version = std::env::var("FICUS_PG_VERSION").ok().filter(|v| !v.is_empty())?;
        let out = Command::new("bash")
            .arg(super::manifest_dir().join("scripts/install-pg.sh"))
            .arg(&version)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run scripts/install-pg.sh {version}: {e}"));
        assert!(out.status.success(), "scripts/install-pg.sh {version} failed: {}", output_text(&out));
        Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    });
    let bin = match (std::env::var_os("FICUS_PG_BIN"), versioned) {
        (Some(bin), _) => PathBuf::from(bin),
        (None, Some(bin)) => bin.clone(),
        (None, None) => PathBuf::from("/usr/lib/postgresql/15/bin"),
    };
    if !bin.join("initdb").exists() {
        install_test_deps();
    }
    assert!(
        bin.join("initdb").exists() && bin.join("pg_ctl").exists(),
        "PostgreSQL server binaries not found in {} (set FICUS_PG_BIN, or run scripts/install-test-deps.sh as root)",
        bin.display()
    );
    bin
}

/// uid and gid of the `postgres` user (needed when running as root).
fn postgres_user() -> (u32, u32) {
    static USER: OnceLock<(u32, u32)> = OnceLock::new();
    *USER.get_or_init(|| {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let ids = passwd.lines().find(|l| l.starts_with("postgres:")).and_then(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
        });
        ids.expect(
            "running as root, but there is no `postgres` user to run PostgreSQL as: run scripts/install-test-deps.sh",
        )
    })
}

fn runuser() -> &'static str {
    ["/usr/sbin/runuser", "/sbin/runuser"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("runuser")
}

/// A `sh` command line running `exe args` as the `postgres` user when root, with its output discarded.
fn pg_user_command_line(exe: &Path, args: &[&str]) -> String {
    let mut parts = Vec::new();
    if is_root() {
        parts.extend([runuser().to_string(), "-u".into(), "postgres".into(), "--".into()]);
    }
    parts.push(exe.display().to_string());
    parts.extend(args.iter().map(|a| a.to_string()));
    let line: Vec<String> = parts.iter().map(|p| sh_quote(p)).collect();
    // `cd /`: the postgres user may not be allowed into the directory the test process runs in.
    format!("(cd / && {}) >/dev/null 2>&1", line.join(" "))
}

fn output_text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)).trim().to_string()
}

/// The server's message, detail and hint for a database error; the error chain otherwise.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code());
        if let Some(d) = db.detail() {
            s.push_str(&format!("\nDETAIL: {d}"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!("\nHINT: {h}"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    s
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
