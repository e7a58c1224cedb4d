//! A Kafka-protocol broker for tests: noida-db (PyPI, in memory) on a free port, or an external broker.
//!
//! Guarantees: [`TestKafka::shared`] is one broker per test process — `FICUS_TEST_KAFKA=host:port` when set, else a
//! noida-db that a watchdog stops when the process exits; [`TestKafka::start_dedicated`] is always a private noida-db
//! that can be stopped and started (fault tests) and is stopped and removed on `Drop`. noida-db serves from memory and
//! saves its data to its data dir on a graceful stop, so a stopped and started broker still has its topics and
//! messages. Every helper here returns or panics within its timeout.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::watchdog::Watchdog;
use super::{install_test_deps, manifest_dir, port_open, sh_quote, tail, tmp_base, unique_suffix, wait_for};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// One message read back by [`TestKafka::read_to_end`] or [`TestKafka::consume_all`].
#[derive(Clone, Debug)]
pub struct ConsumedMessage {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// In order; a header with a null value has an empty value here.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Milliseconds since the epoch, when the message has a timestamp.
    pub timestamp: Option<i64>,
}

/// A broker for tests. See the module docs.
pub struct TestKafka {
    brokers: String,
    /// `None` for an external broker.
    noida: Option<Mutex<Noida>>,
    shared: bool,
}

impl TestKafka {
    /// The broker shared by every test of this process: `FICUS_TEST_KAFKA` if set, else a noida-db.
    pub fn shared() -> &'static TestKafka {
        static SHARED: OnceLock<TestKafka> = OnceLock::new();
        SHARED.get_or_init(|| match std::env::var("FICUS_TEST_KAFKA") {
            Ok(brokers) if !brokers.trim().is_empty() => {
                TestKafka { brokers: brokers.trim().to_string(), noida: None, shared: true }
            }
            _ => {
                let mut k = TestKafka::start_dedicated();
                k.shared = true;
                k
            }
        })
    }

    /// A private noida-db broker (even when `FICUS_TEST_KAFKA` is set), for tests that stop and start it.
    pub fn start_dedicated() -> TestKafka {
        let noida = Noida::start();
        TestKafka { brokers: format!("127.0.0.1:{}", noida.port), noida: Some(Mutex::new(noida)), shared: false }
    }

    /// `bootstrap.servers` for clients.
    pub fn brokers(&self) -> String {
        self.brokers.clone()
    }

    /// A topic name unique in this process and unlikely to repeat across runs: `<prefix>-<pid>-<n>-<hex>`, made of
    /// `[A-Za-z0-9_-]` only (so `.replace('-', "_")` of it is also a valid slot name when `prefix` is lowercase).
    pub fn unique_topic(&self, prefix: &str) -> String {
        let base: String = prefix
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
            .take(24)
            .collect();
        format!("{base}-{}", unique_suffix('-'))
    }

    /// Stops the broker (SIGTERM, then SIGKILL after 10 s) and waits until its port is closed. Dedicated only.
    pub fn stop(&self) {
        self.dedicated("stop").lock().unwrap().stop();
    }

    /// Freezes the broker (SIGSTOP): connections stay open but nothing is answered, like a long GC pause or a
    /// network stall. Dedicated only.
    pub fn pause(&self) {
        self.dedicated("pause").lock().unwrap().signal("-STOP");
    }

    /// Thaws a paused broker (SIGCONT). Dedicated only.
    pub fn resume(&self) {
        self.dedicated("resume").lock().unwrap().signal("-CONT");
    }

    /// Starts the stopped broker again on the same port, with the data it saved when stopped. Dedicated only.
    pub fn start(&self) {
        self.dedicated("start").lock().unwrap().spawn_and_wait().unwrap_or_else(|e| panic!("restart the broker: {e}"));
    }

    fn dedicated(&self, what: &str) -> &Mutex<Noida> {
        assert!(!self.shared, "{what} on the shared broker would break other tests: use TestKafka::start_dedicated()");
        self.noida.as_ref().expect("dedicated brokers are noida-db")
    }

    /// The noida-db data directory (`None` for an external broker).
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.noida.as_ref().map(|n| n.lock().unwrap().root.join("data"))
    }

    /// The broker's log so far (empty for an external broker).
    pub fn log(&self) -> String {
        self.noida
            .as_ref()
            .map(|n| std::fs::read_to_string(n.lock().unwrap().logfile()).unwrap_or_default())
            .unwrap_or_default()
    }

    /// A producer for this broker (`message.timeout.ms` 30 s).
    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("message.timeout.ms", "30000")
            .create()
            .expect("create a test producer")
    }

    /// Creates `name` with `partitions` partitions (replication factor 1) and waits until it is visible.
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &self.brokers).create().expect("create an admin client");
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT)).request_timeout(Some(ADMIN_TIMEOUT));
        let result = tokio::time::timeout(ADMIN_TIMEOUT + Duration::from_secs(5), admin.create_topics([&topic], &opts))
            .await
            .unwrap_or_else(|_| {
                panic!("create topic {name}: no answer from {} within {ADMIN_TIMEOUT:?}", self.brokers)
            });
        match result {
            Ok(results) => {
                for r in results {
                    if let Err((t, code)) = r {
                        panic!("create topic {t}: {code:?}");
                    }
                }
            }
            Err(e) => panic!("create topic {name}: {e}"),
        }
        let deadline = tokio::time::Instant::now() + ADMIN_TIMEOUT;
        while self.partitions(name).await.len() < partitions as usize {
            assert!(
                tokio::time::Instant::now() < deadline,
                "topic {name} not visible in metadata within {ADMIN_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The partition ids of `topic` (empty when it does not exist, or the broker did not answer in time).
    pub async fn partitions(&self, topic: &str) -> Vec<i32> {
        let topic = topic.to_string();
        self.with_consumer(move |c| {
            let Ok(md) = c.fetch_metadata(Some(&topic), METADATA_TIMEOUT) else { return Vec::new() };
            md.topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect()
        })
        .await
    }

    /// The sum of the partitions' high watermarks of `topic` (0 when it does not exist). With transactions this
    /// counts the commit/abort markers too.
    pub async fn high_watermark(&self, topic: &str) -> i64 {
        let partitions = self.partitions(topic).await;
        let topic = topic.to_string();
        self.with_consumer(move |c| {
            partitions
                .iter()
                .map(|p| {
                    c.fetch_watermarks(&topic, *p, METADATA_TIMEOUT)
                        .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"))
                        .1
                })
                .sum()
        })
        .await
    }

    /// Reads `topic` from the beginning of every partition (read_committed) until `expected` messages were read or
    /// `timeout` elapsed, and returns what it read. Never hangs; waits for the topic to appear within the same
    /// timeout. Pass `usize::MAX` to read everything that arrives within `timeout`.
    pub async fn consume_all(&self, topic: &str, expected: usize, timeout: Duration) -> Vec<ConsumedMessage> {
        self.consume_all_with(topic, expected, timeout, "read_committed").await
    }

    /// [`consume_all`](Self::consume_all) with an explicit `isolation.level` (`read_uncommitted` shows records of
    /// open and aborted transactions: for diagnostics).
    pub async fn consume_all_with(
        &self,
        topic: &str,
        expected: usize,
        timeout: Duration,
        isolation: &str,
    ) -> Vec<ConsumedMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        if expected == 0 {
            return out;
        }
        let partitions = loop {
            let p = self.partitions(topic).await;
            if !p.is_empty() {
                break p;
            }
            if tokio::time::Instant::now() >= deadline {
                eprintln!("consume_all: topic {topic} did not appear within {timeout:?}");
                return out;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let consumer = self.consumer_from_start(topic, &partitions, isolation, false);
        while out.len() < expected {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Err(_) => break,
                Ok(Ok(m)) => out.push(consumed(&m)),
                Ok(Err(e)) => {
                    eprintln!("consume_all {topic}: {e} (retrying)");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        out
    }

    /// Everything in `topic` right now, exactly: reads every partition from the beginning (read_committed) up to its
    /// end as of this call and returns the messages in (partition, offset) order — no count to guess, so duplicates
    /// and unexpected messages stay visible. Empty when the topic does not exist. Panics if a partition cannot be
    /// read to its end within `timeout`.
    ///
    /// "The end" is where librdkafka reports end-of-partition: for read_committed that is the last stable offset, so
    /// commit/abort markers and aborted records are never waited for (with transactions the high watermark counts
    /// the markers, so counting messages up to it would wait forever). Messages appended after this call started
    /// (offset at or past the high watermark measured at the start) are left out, so the answer is a snapshot.
    ///
    /// This alone does not know whether ficus has published everything yet: use `Setup::read_all_confirmed`, which
    /// first waits until the slot confirmed the server's current WAL position.
    pub async fn read_to_end(&self, topic: &str, timeout: Duration) -> Vec<ConsumedMessage> {
        let partitions = self.partitions(topic).await;
        if partitions.is_empty() {
            return Vec::new();
        }
        let high: std::collections::BTreeMap<i32, i64> = {
            let (topic, partitions) = (topic.to_string(), partitions.clone());
            self.with_consumer(move |c| {
                partitions
                    .iter()
                    .map(|p| {
                        let (_, high) = c
                            .fetch_watermarks(&topic, *p, METADATA_TIMEOUT)
                            .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"));
                        (*p, high)
                    })
                    .collect()
            })
            .await
        };
        let consumer = self.consumer_from_start(topic, &partitions, "read_committed", true);
        // A partition with nothing below its high watermark has nothing to wait for.
        let mut open: std::collections::BTreeSet<i32> = high.iter().filter(|(_, h)| **h > 0).map(|(p, _)| *p).collect();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while !open.is_empty() {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Err(_) => panic!(
                    "read_to_end {topic}: partitions {open:?} not read to their end (high watermarks {high:?}) within \
                     {timeout:?}; read {} messages",
                    out.len()
                ),
                Ok(Ok(m)) => {
                    if m.offset() >= high[&m.partition()] {
                        // Appended after the call started: not part of the snapshot; this partition is done.
                        open.remove(&m.partition());
                        continue;
                    }
                    if m.offset() + 1 >= high[&m.partition()] {
                        open.remove(&m.partition());
                    }
                    out.push(consumed(&m));
                }
                Ok(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    open.remove(&p);
                }
                Ok(Err(e)) => {
                    eprintln!("read_to_end {topic}: {e} (retrying)");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        out.sort_by_key(|m| (m.partition, m.offset));
        out
    }

    /// A consumer assigned to `partitions` of `topic` from the beginning (manual assignment: no group join to wait
    /// for); with `eof`, it reports reaching the end of a partition as `KafkaError::PartitionEOF`.
    fn consumer_from_start(&self, topic: &str, partitions: &[i32], isolation: &str, eof: bool) -> StreamConsumer {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("ficus-test-{}", unique_suffix('-')))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", isolation)
            .set("enable.partition.eof", eof.to_string())
            .set("fetch.wait.max.ms", "100")
            .create()
            .expect("create a test consumer");
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition_offset(topic, *p, Offset::Beginning).expect("partition offset");
        }
        consumer.assign(&tpl).expect("assign partitions");
        consumer
    }

    /// Runs `f` with a fresh `BaseConsumer` on a blocking thread (metadata calls block).
    async fn with_consumer<T: Send + 'static>(&self, f: impl FnOnce(&BaseConsumer) -> T + Send + 'static) -> T {
        let brokers = self.brokers.clone();
        tokio::task::spawn_blocking(move || {
            let c: BaseConsumer =
                ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("create a metadata consumer");
            f(&c)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

/// A copy of a message received by a test consumer.
fn consumed(m: &rdkafka::message::BorrowedMessage<'_>) -> ConsumedMessage {
    ConsumedMessage {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        headers: m
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec).unwrap_or_default())).collect())
            .unwrap_or_default(),
        timestamp: m.timestamp().to_millis(),
    }
}

impl Drop for TestKafka {
    fn drop(&mut self) {
        if let Some(n) = self.noida.take() {
            let mut n = n.into_inner().unwrap_or_else(|p| p.into_inner());
            // Stop (and reap) our child first; the watchdog then only removes the directory.
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = std::fs::remove_file(n.root.join("noida.pid"));
            if let Some(w) = n.watchdog.take() {
                w.fire(Duration::from_secs(30));
            }
        }
    }
}

/// A noida-db process serving only Kafka on 127.0.0.1:`port`, data and log in `root`.
struct Noida {
    exe: PathBuf,
    root: PathBuf,
    port: u16,
    child: Option<Child>,
    watchdog: Option<Watchdog>,
}

impl Noida {
    fn start() -> Noida {
        let exe = noida_exe();
        let root = tempfile::Builder::new()
            .prefix("ficus-kafka-")
            .tempdir_in(tmp_base())
            .expect("temp dir for the broker")
            .keep();
        std::fs::create_dir(root.join("data")).expect("create the broker's data dir");
        // The pid file always names the running broker (or is absent), so the watchdog stops the right process.
        let pidfile = sh_quote(&root.join("noida.pid").display().to_string());
        let script = format!(
            "p=$(cat {pidfile} 2>/dev/null); if [ -n \"$p\" ]; then kill -TERM $p 2>/dev/null; i=0; \
             while kill -0 $p 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; kill -KILL $p 2>/dev/null; fi; \
             rm -rf {}",
            sh_quote(&root.display().to_string())
        );
        let mut noida = Noida { exe, watchdog: Some(Watchdog::spawn(&script)), root, port: 0, child: None };
        // Another process may take the port between free_port() and noida-db's bind: retry with a new one.
        for attempt in 1..=3 {
            noida.port = super::free_port();
            match noida.spawn_and_wait() {
                Ok(()) => return noida,
                Err(e) if attempt < 3 => eprintln!("test broker on port {} failed ({e}), retrying", noida.port),
                Err(e) => panic!("{e}\n--- noida-db log (tail) ---\n{}", tail(&noida.logfile(), 40)),
            }
        }
        unreachable!()
    }

    fn logfile(&self) -> PathBuf {
        self.root.join("noida.log")
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "the broker is already running");
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.logfile()).expect("open the broker log");
        let mut child = Command::new(&self.exe)
            .args(["start", "--only", "kafka", "--host", "127.0.0.1", "--kafka-port"])
            .arg(self.port.to_string())
            .arg("--data-dir")
            .arg(self.root.join("data"))
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.exe.display()))?;
        std::fs::write(self.root.join("noida.pid"), child.id().to_string()).expect("write the broker pid file");
        let ready = wait_for(READY_TIMEOUT, || match child.try_wait() {
            Ok(Some(status)) => {
                Some(Err(format!("noida-db exited with {status} before listening on port {}", self.port)))
            }
            _ if port_open(self.port) => Some(Ok(())),
            _ => None,
        });
        let result = match ready {
            None => Err(format!("noida-db did not listen on port {} within {READY_TIMEOUT:?}", self.port)),
            // Someone else may have been listening on the port: make sure ours is still alive.
            Some(Ok(())) => {
                std::thread::sleep(Duration::from_millis(100));
                match child.try_wait() {
                    Ok(Some(status)) => {
                        Err(format!("noida-db exited with {status} right after start on port {}", self.port))
                    }
                    _ => Ok(()),
                }
            }
            Some(Err(e)) => Err(e),
        };
        match result {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(self.root.join("noida.pid"));
                Err(format!("{e}\n--- noida-db log (tail) ---\n{}", tail(&self.logfile(), 20)))
            }
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").args([sig, &child.id().to_string()]).status();
        }
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("sh").arg("-c").arg(format!("kill -TERM {}", child.id())).status();
        if wait_for(Duration::from_secs(10), || child.try_wait().ok().flatten()).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.root.join("noida.pid"));
        // The port must be free again before a start() binds it.
        if wait_for(Duration::from_secs(10), || (!port_open(self.port)).then_some(())).is_none() {
            panic!("port {} still accepts connections after stopping noida-db", self.port);
        }
    }
}

/// The noida-db server binary. The `noida-db` launcher from PyPI is a Python script that runs the bundled binary as
/// a child process, so stopping the launcher would orphan the broker: run the bundled binary directly.
fn noida_exe() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let launcher = std::env::var_os("FICUS_NOIDA")
            .map(PathBuf::from)
            .unwrap_or_else(|| manifest_dir().join(".venv/noida/bin/noida-db"));
        if !launcher.exists() {
            install_test_deps();
        }
        assert!(
            launcher.exists(),
            "noida-db (the test broker) not found at {}: run scripts/install-test-deps.sh, set FICUS_NOIDA to the \
             noida-db launcher, or set FICUS_TEST_KAFKA=host:port to use a running broker",
            launcher.display()
        );
        bundled_binary(&launcher).unwrap_or(launcher)
    })
    .clone()
}

fn bundled_binary(launcher: &Path) -> Option<PathBuf> {
    let python = launcher.parent()?.join("python3");
    let out = Command::new(python)
        .args(["-c", "import noida_db, os; print(os.path.join(os.path.dirname(noida_db.__file__), 'noida-db'))"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    if !out.status.success() || !path.is_file() {
        return None;
    }
    // The launcher sets the executable bit before each run; pip may not have.
    let mut perms = std::fs::metadata(&path).ok()?.permissions();
    if perms.mode() & 0o111 != 0o111 {
        perms.set_mode(0o755);
        std::fs::set_permissions(&path, perms).ok()?;
    }
    Some(path)
}
