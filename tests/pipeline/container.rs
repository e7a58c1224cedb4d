//! What the container path relies on: `ficus healthcheck` (the image's HEALTHCHECK, no curl), and a checkpoint left
//! from another database — `docker compose down` + `up` with a fresh database next to the old state volume — stopping
//! ficus with a message that names the file to delete, after which it starts.

use std::process::Command;
use std::time::Duration;

use crate::support::{ficus_bin, free_port};
use crate::{wait_for_status, Ficus, Setup, STREAMING, WAIT};

/// `ficus healthcheck ARGS`: (exit code, stdout, stderr).
fn healthcheck(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(ficus_bin()).arg("healthcheck").args(args).output().expect("run ficus healthcheck");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_probes_the_health_listen_of_the_config() {
    let s = Setup::new("hc_probe", "CREATE TABLE t (id int PRIMARY KEY)").await;
    let (mut f, port) = Ficus::start_with_health(&s.config(&["public.t"]));
    wait_for_status(port, "/healthz", 200, &|| f.log());
    let config = f.dir.path().join("ficus.yaml");
    let config = config.to_str().unwrap();

    let (code, out, err) = healthcheck(&["--config", config]);
    assert_eq!((code, out.as_str()), (0, format!("healthy: http://127.0.0.1:{port}/healthz: 200\n").as_str()), "{err}");
    let url = format!("http://127.0.0.1:{port}/healthz");
    assert_eq!(healthcheck(&["--url", &url]).0, 0);
    // Another status than 200 is unhealthy.
    let (code, _, err) = healthcheck(&["--url", &format!("http://127.0.0.1:{port}/nothing-here")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("answered 404"), "{err}");

    // ficus stopped: nothing answers.
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
    let (code, out, err) = healthcheck(&["--config", config]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.starts_with(&format!("unhealthy: http://127.0.0.1:{port}/healthz: cannot connect")), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_without_health_listen_says_how_to_set_it() {
    let s = Setup::new("hc_unset", "CREATE TABLE t (id int PRIMARY KEY)").await;
    let (_dir, path) = Ficus::dir_config(&s.config(&["public.t"]));
    let (code, out, err) = healthcheck(&["--config", path.to_str().unwrap()]);
    // 1, not 2: Docker reserves exit code 2 of a HEALTHCHECK command.
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("health.listen is not set in"), "{err}");
    assert!(err.contains("listen: 0.0.0.0:8080"), "the fix: {err}");
    // A config that does not load is unhealthy too, with the config's own error.
    let (code, _, err) = healthcheck(&["--config", "/nonexistent/ficus.yaml"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/nonexistent/ficus.yaml"), "{err}");
}

#[test]
fn healthcheck_gives_up_on_a_listener_that_never_answers() {
    // Accepts connections (the kernel's backlog does) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let started = std::time::Instant::now();
    let (code, _, err) = healthcheck(&["--url", &format!("http://127.0.0.1:{port}/healthz"), "--timeout-secs", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no answer within 1000 ms"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    // Nothing listening at all.
    drop(silent);
    let (code, _, err) = healthcheck(&["--url", &format!("http://127.0.0.1:{}/healthz", free_port())]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot connect"), "{err}");
}

/// `docker compose down` + `up` with the database in a fresh volume and the state volume kept: the checkpoint belongs
/// to another database system. ficus refuses (exit 2) and names the file; deleting exactly that file lets it start.
#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_of_another_database_system_names_the_file_to_delete() {
    let s = Setup::new("cp_other_system", "CREATE TABLE t (id int PRIMARY KEY)").await;
    let mut f = Ficus::start(&s.config(&["public.t"]));
    f.wait_streaming();
    s.sql("INSERT INTO t VALUES (1)").await;
    s.wait_confirmed_now(&f).await;
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());

    // The checkpoint as another cluster (another system identifier) would have written it.
    let path = f.dir.path().join("state").join(format!("{}.checkpoint.json", s.prefix));
    let mut cp: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cp["systemId"] = "7000000000000000001".into();
    std::fs::write(&path, serde_json::to_vec_pretty(&cp).unwrap()).unwrap();

    f.restart();
    assert_eq!(f.wait(WAIT).code(), Some(2), "{}", f.log());
    let log = f.log();
    let message = log.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line:\n{log}"));
    assert!(message.contains("7000000000000000001"), "{message}");
    let delete = format!("delete {}", path.display());
    assert!(message.contains(&delete), "the message must say which file to delete ({delete}): {message}");

    // Doing exactly what it says: ficus starts again.
    std::fs::remove_file(&path).unwrap();
    f.restart();
    f.wait_for_log_count(STREAMING, 2, WAIT);
    s.sql("INSERT INTO t VALUES (2)").await;
    s.wait_confirmed_now(&f).await;
    let written = crate::support::wait_for(WAIT, || f.checkpoint(&s.prefix));
    assert!(written.is_some_and(|cp| cp["systemId"] != "7000000000000000001"), "{}", f.log());
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}
