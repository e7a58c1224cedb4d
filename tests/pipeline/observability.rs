//! Observability where operators look: the alert rules pass promtool (syntax and their unit tests), a real Prometheus
//! server loads them and scrapes a running ficus, and the counters alerts take `increase()` of exist from the start.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{self, Watchdog};
use crate::{get, wait_for_status, Ficus, Setup, WAIT};

fn rules_dir() -> PathBuf {
    support::manifest_dir().join("docs/prometheus")
}

/// `promtool` (Debian package prometheus; scripts/install-test-deps.sh installs it).
fn tool(name: &str) -> PathBuf {
    let found = |n: &str| {
        std::env::var_os("PATH")
            .and_then(|p| std::env::split_paths(&p).map(|d| d.join(n)).find(|f| f.is_file()))
            .or_else(|| Some(PathBuf::from("/usr/bin").join(n)).filter(|f| f.is_file()))
    };
    if found(name).is_none() {
        support::install_test_deps();
    }
    found(name).unwrap_or_else(|| {
        panic!("{name} not found: install Debian's prometheus package (scripts/install-test-deps.sh does)")
    })
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new(tool("promtool")).args(args).current_dir(rules_dir()).output().expect("run promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let text = promtool(&["check", "rules", "ficus.rules.yaml"]);
    assert!(text.contains("SUCCESS"), "{text}");
    let text = promtool(&["test", "rules", "ficus.rules.test.yaml"]);
    assert!(text.contains("SUCCESS"), "{text}");
    // Every alert of the rules file has a unit test.
    let rules = std::fs::read_to_string(rules_dir().join("ficus.rules.yaml")).unwrap();
    let tests = std::fs::read_to_string(rules_dir().join("ficus.rules.test.yaml")).unwrap();
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(tests.contains(&format!("alertname: {alert}\n")), "alert {alert} has no unit test");
    }
}

/// The metrics the alert rules and the dashboard use are the metrics ficus defines (src/metrics.rs), so a renamed
/// metric cannot leave an alert that silently never fires.
#[test]
fn rules_and_dashboard_use_only_metrics_ficus_exports() {
    let defined = std::fs::read_to_string(support::manifest_dir().join("src/metrics.rs")).unwrap();
    let defined: Vec<&str> = defined
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const ")?.split_once("= \"")?.1.strip_suffix("\";"))
        .collect();
    assert!(defined.contains(&"ficus_streaming"), "{defined:?}");
    for file in ["docs/prometheus/ficus.rules.yaml", "docs/grafana/ficus.json"] {
        let text = std::fs::read_to_string(support::manifest_dir().join(file)).unwrap();
        let mut used = 0;
        for (i, _) in text.match_indices("ficus_") {
            let name: String =
                text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
            let base = ["_bucket", "_count", "_sum"].iter().fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
            // Prose like "ficus_" followed by nothing is not a metric.
            if base.len() > "ficus_".len() {
                assert!(defined.contains(&base), "{file} uses {name}, which ficus does not export");
                used += 1;
            }
        }
        assert!(used > 5, "{file} uses {used} metrics");
    }
}

/// A Prometheus server on a free port, its config and data in a temp dir; killed (with its files removed) when
/// dropped, and by a watchdog if the test process dies first.
struct Prometheus {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    watchdog: Option<Watchdog>,
}

impl Prometheus {
    fn start(scrape_port: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: ['{}']\n\
                 scrape_configs:\n  - job_name: ficus\n    static_configs: [{{targets: ['127.0.0.1:{scrape_port}']}}]\n",
                rules_dir().join("ficus.rules.yaml").display()
            ),
        )
        .unwrap();
        let pidfile = dir.path().join("prometheus.pid");
        let watchdog = Watchdog::spawn(&format!(
            "p=$(cat {} 2>/dev/null); [ -n \"$p\" ] && kill -KILL $p 2>/dev/null; rm -rf {}",
            support::sh_quote(&pidfile.display().to_string()),
            support::sh_quote(&dir.path().display().to_string())
        ));
        let mut p = Prometheus { child: None, port: 0, dir, watchdog: Some(watchdog) };
        // free_port() was free a moment ago; another process may take it first: then retry on another.
        for attempt in 1..=3 {
            p.port = support::free_port();
            let log = std::fs::File::create(p.dir.path().join("prometheus.log")).unwrap();
            let mut child = Command::new(tool("prometheus"))
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", p.dir.path().join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{}", p.port))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn prometheus");
            std::fs::write(&pidfile, child.id().to_string()).unwrap();
            let ready = support::wait_for(WAIT, || match child.try_wait() {
                Ok(Some(status)) => Some(Err(status)),
                _ => get(p.port, "/-/ready").filter(|(code, _)| *code == 200).map(|_| Ok(())),
            });
            match ready {
                Some(Ok(())) => {
                    p.child = Some(child);
                    return p;
                }
                Some(Err(status)) if attempt < 3 => eprintln!("prometheus exited ({status}), retrying:\n{}", p.log()),
                other => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("prometheus never became ready ({other:?}):\n{}", p.log());
                }
            }
        }
        unreachable!()
    }

    fn log(&self) -> String {
        support::tail(&self.dir.path().join("prometheus.log"), 40)
    }

    /// `GET path` with HTTP/1.0 (no chunked answer): the parsed JSON body.
    fn api(&self, path: &str) -> Value {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    }

    /// The samples of an instant query: (labels, value).
    fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let v = self.api(&format!("/api/v1/query?query={}", encode(promql)));
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["metric"].clone(), r["value"][1].as_str().unwrap().parse().unwrap()))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.dir.path().join("prometheus.pid"));
        if let Some(w) = self.watchdog.take() {
            w.fire(Duration::from_secs(10));
        }
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn wait_query(prom: &Prometheus, promql: &str, ok: impl Fn(&[(Value, f64)]) -> bool, f: &Ficus) -> Vec<(Value, f64)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let result = prom.query(promql);
        if ok(&result) {
            return result;
        }
        assert!(Instant::now() < deadline, "{promql}: {result:?}\nprometheus:\n{}\nficus:\n{}", prom.log(), f.log());
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The line of `/metrics` for `series` (name and labels), if any.
fn metric_line<'a>(metrics: &'a str, series: &str) -> Option<&'a str> {
    metrics.lines().find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')))
}

/// `increase()` alerts (errors, reconnects, checkpoint failures) only see an increment from a series that existed
/// before it: ficus exports those counters at 0 from start-up, before anything went wrong.
#[tokio::test(flavor = "multi_thread")]
async fn error_and_reconnect_counters_are_exported_at_zero_from_the_start() {
    let s = Setup::new("obs_zero", "CREATE TABLE t (id int PRIMARY KEY)").await;
    let (f, port) = Ficus::start_with_health(&s.config(&["public.t"]));
    wait_for_status(port, "/readyz", 200, &|| f.log());
    let (_, metrics) = get(port, "/metrics").unwrap();
    for series in [
        "ficus_reconnects_total",
        "ficus_checkpoint_failures_total",
        "ficus_errors_total{kind=\"replication\"}",
        "ficus_errors_total{kind=\"delivery\"}",
        "ficus_errors_total{kind=\"checkpoint\"}",
        "ficus_errors_total{kind=\"rule\"}",
        "ficus_errors_total{kind=\"schema\"}",
        "ficus_errors_total{kind=\"config\"}",
    ] {
        assert_eq!(metric_line(&metrics, series), Some(format!("{series} 0").as_str()), "{series}:\n{metrics}");
    }
    assert!(!f.log().contains("reconnecting"), "{}", f.log());
}

/// A real Prometheus server (Debian's package) loads the alert rules, scrapes a running ficus every second, and
/// answers queries on its HTTP API with what ficus streamed.
#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_ficus_and_loads_the_alert_rules() {
    let s = Setup::new("obs_prometheus", "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    let (mut f, port) = Ficus::start_with_health(&s.config(&["public.t"]));
    wait_for_status(port, "/readyz", 200, &|| f.log());
    let prom = Prometheus::start(port);

    let up = wait_query(&prom, "up{job=\"ficus\"}", |r| r.first().is_some_and(|(_, v)| *v == 1.0), &f);
    assert_eq!(up.len(), 1, "{up:?}");
    s.sql("INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c'); UPDATE t SET v = 'x' WHERE id = 1;").await;
    let received = wait_query(
        &prom,
        "ficus_changes_received_total",
        |r| {
            r.iter().any(|(l, v)| l["op"] == "update" && *v > 0.0)
                && r.iter().any(|(l, v)| l["op"] == "insert" && *v > 0.0)
        },
        &f,
    );
    let inserts = received.iter().find(|(l, _)| l["op"] == "insert").unwrap();
    assert_eq!(inserts.0["table"], "public.t", "{received:?}");
    assert_eq!(inserts.1, 3.0, "{received:?}");
    // Streaming, nothing lost: the alerts have nothing to say; the counters they watch are there, at 0.
    wait_query(&prom, "ficus_streaming", |r| r.first().is_some_and(|(_, v)| *v == 1.0), &f);
    let errors = prom.query("ficus_errors_total");
    assert!(errors.len() >= 5 && errors.iter().all(|(_, v)| *v == 0.0), "{errors:?}");
    assert_eq!(prom.query("ficus_reconnects_total").first().map(|(_, v)| *v), Some(0.0));

    // The server loaded every rule of the file, and evaluates them without error.
    let deadline = Instant::now() + WAIT;
    loop {
        let rules = prom.api("/api/v1/rules");
        let group = &rules["data"]["groups"][0];
        let all = group["rules"].as_array().cloned().unwrap_or_default();
        let evaluated = !all.is_empty() && all.iter().all(|r| r["health"] == "ok");
        if evaluated {
            assert_eq!(group["name"], "ficus");
            let file = std::fs::read_to_string(rules_dir().join("ficus.rules.yaml")).unwrap();
            assert_eq!(all.len(), file.matches("- alert: ").count(), "{rules}");
            let firing: Vec<&Value> = all.iter().filter(|r| r["state"] == "firing").collect();
            assert!(firing.is_empty(), "alerts firing on a healthy ficus: {firing:?}");
            break;
        }
        assert!(Instant::now() < deadline, "rules not loaded or not healthy: {rules}\n{}", prom.log());
        std::thread::sleep(Duration::from_millis(500));
    }

    // Every query of the Grafana dashboard is valid PromQL for this server, and the throughput panel shows the changes.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(support::manifest_dir().join("docs/grafana/ficus.json")).unwrap(),
    )
    .unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap().replace("$instance", ".*").replace("$__rate_interval", "1m");
            let v = prom.api(&format!("/api/v1/query?query={}", encode(&expr)));
            assert_eq!(v["status"], "success", "panel {:?}: {expr}: {v}", panel["title"]);
            queries += 1;
        }
    }
    assert!(queries > 20, "{queries}");
    // A table's counters appear with its first change; the next changes make rate() > 0.
    s.sql("INSERT INTO t VALUES (4, 'd')").await;
    let changes = dashboard["panels"].as_array().unwrap().iter().find(|p| p["title"] == "Changes received").unwrap();
    let expr =
        changes["targets"][0]["expr"].as_str().unwrap().replace("$instance", ".*").replace("$__rate_interval", "1h");
    wait_query(&prom, &expr, |r| r.iter().any(|(l, v)| l["table"] == "public.t" && *v > 0.0), &f);

    drop(prom);
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

/// `/status` field `name` of the document on `port`.
fn status_field(port: u16, name: &str) -> Value {
    let (_, body) = get(port, "/status").unwrap_or_default();
    serde_json::from_str::<Value>(&body).map(|v| v[name].clone()).unwrap_or(Value::Null)
}

/// Waits until `/status` field `name` satisfies `ok`; returns it.
fn wait_status_field(port: u16, name: &str, ok: impl Fn(&Value) -> bool, f: &Ficus) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = status_field(port, name);
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "/status {name} never as expected: {v}\n{}", f.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// docs/operations.md: `receivedLsn` follows what the server sends; `lagSeconds` counts from the commit time of the
/// oldest transaction not yet acknowledged, from its BEGIN on — also while a large transaction is still streaming
/// (here: it is larger than the producer queue and the broker pauses, so ficus never reaches its COMMIT). The pause
/// is logged once at WARN with what to check, and its end once at INFO.
#[tokio::test(flavor = "multi_thread")]
async fn received_lsn_lag_during_a_large_transaction_and_a_broker_pause_are_reported() {
    let s = Setup::new("obs_lag", "CREATE TABLE t (id int PRIMARY KEY)").await;
    let kafka = support::TestKafka::start_dedicated();
    let cfg = Ficus::config(&s.pg.superuser_url(&s.db), &["public.t"], &s.prefix, &kafka.brokers(), "")
        .replace("properties: {linger.ms: 1}", "properties: {linger.ms: 1, queue.buffering.max.messages: 200}");
    let (mut f, port) = Ficus::start_with_health(&cfg);
    wait_for_status(port, "/readyz", 200, &|| f.log());

    s.sql("INSERT INTO t VALUES (0)").await;
    let written = crate::lsn(&s.current_lsn().await);
    wait_status_field(port, "receivedLsn", |v| v.as_str().is_some_and(|l| crate::lsn(l) >= written), &f);
    s.wait_confirmed_now(&f).await;
    wait_status_field(port, "lagSeconds", |v| v.as_f64() == Some(0.0), &f);

    kafka.pause();
    let paused = Instant::now();
    s.sql("INSERT INTO t SELECT g FROM generate_series(1, 3000) g").await;
    let lag = wait_status_field(port, "lagSeconds", |v| v.as_f64().is_some_and(|l| l >= 3.0), &f);
    assert!(lag.as_f64().unwrap() <= paused.elapsed().as_secs_f64() + 1.0, "{lag}");
    const STALLED: &str = "Kafka deliveries stalled";
    f.wait_for_log(STALLED, WAIT);
    // However long it lasts: said once.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(f.log().matches(STALLED).count(), 1, "{}", f.log());
    let not_ready = wait_for_status(port, "/readyz", 503, &|| f.log());
    assert!(not_ready.contains("Kafka"), "{not_ready}");

    kafka.resume();
    f.wait_for_log("Kafka deliveries resumed", WAIT);
    let got = crate::read_all_confirmed(s.pg, &s.db, &s.prefix, &kafka, &f, &s.topic("public", "t"), false).await;
    assert_eq!(got.len(), 3001, "{}", f.log());
    wait_status_field(port, "lagSeconds", |v| v.as_f64() == Some(0.0), &f);
    assert_eq!(f.log().matches(STALLED).count(), 1, "{}", f.log());
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

/// `--log-format json`: one JSON object per line, numbers as JSON numbers, no Rust `Debug` text (`Some(…)`, `None`)
/// in any field; a fatal error is printed once.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_numbers_as_numbers_and_a_fatal_error_once() {
    let s = Setup::new("obs_json", "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 50);")
        .await;
    let cfg = Ficus::config(
        &s.pg.superuser_url(&s.db),
        &["public.t"],
        &s.prefix,
        &s.kafka.brokers(),
        "snapshot:\n  mode: initial\n",
    );
    let spawn = |cfg: &str| {
        let (dir, path) = Ficus::dir_config(cfg);
        let log = dir.path().join("ficus.log");
        let child = std::process::Command::new(support::ficus_bin())
            .args(["--log-format", "json", "run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info,ficus=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Ficus { child: Some(child), dir, log }
    };
    let mut f = spawn(&cfg);
    f.wait_for_log("snapshot of table finished", WAIT);
    s.wait_snapshot_settled(&f).await;
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
    let lines: Vec<Value> =
        f.log().lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let find = |message: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line:\n{}", f.log()))
            .clone()
    };
    let started = find("snapshot of table started");
    assert!(started["fields"]["estimated_rows"].is_u64(), "{started}");
    let finished = find("snapshot of table finished");
    assert_eq!(finished["fields"]["rows"], 50, "{finished}");
    assert!(finished["fields"]["seconds"].is_number(), "{finished}");
    assert!(finished["fields"]["rows_per_second"].is_u64(), "{finished}");
    assert!(find("Kafka reachable")["fields"]["count"].is_u64());
    for line in &lines {
        for (name, value) in line["fields"].as_object().unwrap() {
            let text = value.as_str().unwrap_or_default();
            // The system identifier is a name, and larger than a JSON number can hold exactly: a string.
            let number_as_text = text.parse::<f64>().is_ok() && !["message", "system"].contains(&name.as_str());
            assert!(
                !(text.starts_with("Some(") || text == "None" || number_as_text),
                "field {name} = {value:?}: {line}"
            );
        }
    }

    // A fatal error (a table the database does not have): one line, JSON too.
    let mut f = spawn(&cfg.replace("tables: ['public.t']", "tables: ['public.missing']"));
    assert_eq!(f.wait(WAIT).code(), Some(2), "{}", f.log());
    let log = f.log();
    let errors: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let errors: Vec<&Value> = errors.iter().filter(|l| l["level"] == "ERROR").collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert_eq!(log.matches("preflight failed").count(), 1, "{log}");
}

/// `ficus run --dry-run` with the real instance's config, next to it: the dry run starts no HTTP server (the health
/// port is the real instance's), streams from its own temporary slot, and leaves the real instance alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_runs_beside_the_real_instance_with_the_same_config() {
    let s = Setup::new("obs_dry_beside", "CREATE TABLE t (id int PRIMARY KEY)").await;
    let (mut f, port) = Ficus::start_with_health(&s.config(&["public.t"]));
    wait_for_status(port, "/readyz", 200, &|| f.log());
    let config = std::fs::read_to_string(f.dir.path().join("ficus.yaml")).unwrap();
    let mut dry = crate::DryRun::start(&config).await;
    s.sql("INSERT INTO t VALUES (1)").await;
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&dry.stdout).unwrap_or_default().contains("insert") {
        assert!(Instant::now() < deadline, "the dry run printed nothing:\n{}", dry.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!dry.log().contains("health endpoints listening"), "{}", dry.log());
    assert_eq!(s.read_all_confirmed(&f, &s.topic("public", "t")).await.len(), 1, "{}", f.log());
    wait_for_status(port, "/readyz", 200, &|| f.log());
    let _ = dry.child.kill();
    let _ = dry.child.wait();
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}

/// Kafka down at start: one WARN with the fix, quiet retries (debug), one INFO when it answers, then streaming.
#[tokio::test(flavor = "multi_thread")]
async fn waiting_for_kafka_at_start_is_said_once_and_its_end_too() {
    let s = Setup::new("obs_wait_kafka", "CREATE TABLE t (id int PRIMARY KEY)").await;
    let kafka = support::TestKafka::start_dedicated();
    kafka.stop();
    let cfg = Ficus::config(&s.pg.superuser_url(&s.db), &["public.t"], &s.prefix, &kafka.brokers(), "");
    let mut f = Ficus::start(&cfg);
    f.wait_for_log("Kafka not reachable yet", WAIT);
    f.wait_for_log_count("Kafka still not reachable", 2, WAIT);
    let log = f.log();
    assert_eq!(log.matches("Kafka not reachable yet").count(), 1, "{log}");
    assert!(log.contains("check kafka.brokers"), "{log}");
    assert!(!log.contains(crate::STREAMING), "{log}");
    kafka.start();
    f.wait_streaming();
    let log = f.log();
    let reachable = log.lines().find(|l| l.contains("Kafka reachable")).unwrap_or_else(|| panic!("{log}"));
    assert!(reachable.contains(" INFO ") && reachable.contains("waited_secs="), "{reachable}");
    assert_eq!(log.matches("Kafka not reachable yet").count(), 1, "{log}");
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}
