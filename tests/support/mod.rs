//! Test support for integration tests: an ephemeral PostgreSQL cluster ([`TestPostgres`]), a Kafka-protocol broker
//! ([`TestKafka`]), a TCP fault proxy ([`FaultProxy`]) and the path of the `ficus` binary ([`ficus_bin`]).
//!
//! Use it from a test binary with `mod support;`. Guarantees:
//! - every wait has a timeout and panics with a message that says what did not happen (with the server's log tail);
//! - every cluster and broker is removed when its owner is dropped, and — for the per-process shared instances,
//!   which statics never drop — when the test process exits, however it exits (a [`watchdog::Watchdog`] notices the
//!   process is gone and stops the server, even after SIGKILL);
//! - names from [`unique_db`] and [`TestKafka::unique_topic`] never repeat within a process and are unlikely to repeat
//!   across runs, so tests sharing a cluster or an external broker do not see each other's data.
//!
//! Environment: `FICUS_PG_BIN` (PostgreSQL server binaries, default `/usr/lib/postgresql/15/bin`), `FICUS_NOIDA`
//! (the noida-db launcher, default `<crate>/.venv/noida/bin/noida-db`), `FICUS_TEST_KAFKA=host:port` (use an external
//! broker instead of noida-db for the shared broker), `FICUS_TEST_TMP` (where clusters live, default the system temp
//! dir). `scripts/install-test-deps.sh` installs what the defaults need.
#![allow(dead_code)]

mod kafka;
mod postgres;
mod proxy;
mod watchdog;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[allow(unused_imports)]
pub use kafka::{ConsumedMessage, TestKafka};
#[allow(unused_imports)]
pub use postgres::{PgOptions, TestPostgres};
#[allow(unused_imports)]
pub use proxy::{Direction, FaultProxy};
#[allow(unused_imports)]
pub(crate) use watchdog::Watchdog;

/// The `ficus` binary built for this test run.
pub fn ficus_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ficus"))
}

/// A database name unique in this process (lowercase, `[a-z0-9_]`, at most 63 bytes), starting with `prefix`.
pub fn unique_db(prefix: &str) -> String {
    let base: String =
        prefix.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).take(32).collect();
    let base = if base.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') { base } else { format!("d{base}") };
    format!("{base}_{}", unique_suffix('_'))
}

/// `<pid><sep><counter><sep><6 hex digits of the clock>`: unique within the process, and unlikely to repeat across runs
/// against the same external broker.
pub(crate) fn unique_suffix(sep: char) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}{sep}{n}{sep}{:06x}", std::process::id(), (nanos >> 10) & 0xff_ffff)
}

/// The crate root (where `Cargo.toml` and `scripts/` are).
pub(crate) fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A TCP port that was free a moment ago. Another process may take it before we bind it, so callers retry on a bind
/// failure with a new port.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
    listener.local_addr().expect("local_addr").port()
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) fn port_open(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Polls `ready` every 50 ms until it returns `Some`, or gives up after `timeout` with `None`.
pub(crate) fn wait_for<T>(timeout: Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = ready() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the test process runs as root (then PostgreSQL must run as the `postgres` user).
pub(crate) fn is_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| {
        // The second field of `Uid:` is the effective uid.
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)).map(|u| u == "0")
            })
            .unwrap_or(false)
    })
}

/// The directory under which test servers put their data: `FICUS_TEST_TMP`, else the system temp dir. Not the
/// repository: when the clone lives under `/root`, the `postgres` user could not reach it.
pub(crate) fn tmp_base() -> PathBuf {
    let base = std::env::var_os("FICUS_TEST_TMP").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).unwrap_or_else(|e| panic!("create {}: {e}", base.display()));
    base
}

/// The last `lines` lines of the file at `path` (empty if it cannot be read).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `s` quoted for `sh`.
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs `scripts/install-test-deps.sh` at most once per process (used when a dependency is missing).
pub(crate) fn install_test_deps() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let script = manifest_dir().join("scripts/install-test-deps.sh");
        eprintln!("test dependencies missing: running {}", script.display());
        let status = std::process::Command::new("bash")
            .arg(&script)
            .current_dir(manifest_dir())
            .stdin(std::process::Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => eprintln!("{} failed: {other:?}", script.display()),
        }
    });
}

/// xorshift64*: a small seeded generator, so that a printed seed reproduces a test's choices (chaos schedule,
/// differential workload).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// An index in `0..n`.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }
}
