//! The whole `ficus check` report as a snapshot (insta, `tests/pipeline/snapshots/`): every line, status and fix
//! in order, so a change to what operators read is a reviewed diff. What differs between runs (database, prefix,
//! ports, temporary paths, the server's version, the shared cluster's WAL senders in use) is replaced by names.
//! The snapshot is PostgreSQL 15's (the default test server); other versions print other lines (failover slots
//! exist from 17), so there the test says it skipped.

use crate::Setup;

#[tokio::test(flavor = "multi_thread")]
async fn check_report_of_a_ready_source() {
    let s = Setup::new("check_report", "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    let version: String = s.pg.client(&s.db).await.query_one("SHOW server_version", &[]).await.unwrap().get(0);
    if !version.starts_with("15.") {
        eprintln!("check_report_of_a_ready_source: skipped, the snapshot is PostgreSQL 15's, this is {version}");
        return;
    }
    let (code, out) = crate::check(&s.config(&["public.t"]));
    assert_eq!(code, 0, "{out}");
    let short = version.split(' ').next().unwrap();
    let mut report = out
        .replace(&s.db, "<db>")
        .replace(&s.prefix, "<prefix>")
        .replace(&format!(":{}/", s.pg.port()), ":<pg-port>/")
        .replace(&s.kafka.brokers(), "<brokers>")
        .replace(&version, "<server_version>")
        .replace(short, "<version>");
    // Paths in a temporary directory, and the WAL senders other tests hold on the shared cluster.
    report = report
        .lines()
        .map(|line| {
            let line: Vec<String> = line
                .split(' ')
                .map(|word| match word.find("/state") {
                    Some(i) if word.starts_with("/") || word.starts_with("(/") => {
                        format!("{}<dir>{}", if word.starts_with('(') { "(" } else { "" }, &word[i..])
                    }
                    _ => word.to_string(),
                })
                .collect();
            let line = line.join(" ");
            match line.split_once("WAL senders: ") {
                Some((head, tail)) => format!("{head}WAL senders: <n>{}", &tail[tail.find(" of ").unwrap_or(0)..]),
                None => line,
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    insta::assert_snapshot!(report);
}
