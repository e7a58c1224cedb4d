//! `ficus check`: the preflight as a report, one line per check, with the exact fix for each problem.
//!
//! It changes nothing in the database. Exit code 2 when a check blocks streaming (the CLI maps it).

use std::time::Duration;

use crate::config::conninfo::ConnInfo;
use crate::config::Config;
use crate::kafka;
pub(crate) mod key_columns;
pub mod preflight;
pub mod recovery;
pub mod report;
pub mod resume;
mod rule_lines;
pub mod standby;

pub use report::{CheckItem, Report, Status};

/// Runs every check; connection failures become failed lines rather than errors, so the report is always whole.
pub async fn run(config: &Config, rules: &crate::rules::Rules) -> Report {
    let mut report = Report::default();
    match ConnInfo::parse(&config.source.url) {
        Err(e) => report.items.push(fail("source.url", e.to_string(), None)),
        Ok(info) => match info.connect_control().await {
            Err(e) => report.items.push(fail(
                &format!("connect to {}", info.redacted()),
                e.to_string(),
                Some("check host, port, user and password (PGPASSWORD via ${...} in source.url)".into()),
            )),
            Ok((client, connection)) => {
                report.items.push(CheckItem {
                    status: Status::Ok,
                    title: format!("connect to {}", info.redacted()),
                    detail: String::new(),
                    fix: None,
                });
                match preflight::preflight(&client, config, rules).await {
                    Ok((r, catalog)) => {
                        report.items.extend(r.items.into_iter().map(standby_is_not_a_failure));
                        report.items.extend(resume::state_report(&client, &info, config, &catalog).await);
                        report.items.extend(standby::standby_lines(&info, &client, config).await);
                    }
                    Err(e) => report.items.push(fail("preflight", e.to_string(), None)),
                }
                report.items.extend(check_health_listen(config));
                drop(client);
                connection.abort();
            }
        },
    }
    report.items.push(check_kafka(config).await);
    report
}

/// A slot streamed by another live instance does not stop `ficus run`: it waits as a hot standby and takes over
/// when the other one stops. Said as such, not as a failure.
fn standby_is_not_a_failure(mut item: CheckItem) -> CheckItem {
    if item.status == Status::Fail
        && item.title.starts_with("replication slot ")
        && item.detail.contains("in use by another process")
    {
        item.status = Status::Warn;
        item.detail.push_str("; this instance would wait as a hot standby and take over when it stops");
        item.fix = Some("nothing to do for a standby; to take over now, stop the other instance".into());
    }
    item
}

/// `health.listen` must be free: `ficus run` exits 2 when it cannot listen.
fn check_health_listen(config: &Config) -> Option<CheckItem> {
    let addr = config.health.listen?;
    Some(match std::net::TcpListener::bind(addr) {
        Ok(_) => CheckItem {
            status: Status::Ok,
            title: "health.listen".into(),
            detail: format!("{addr} is free"),
            fix: None,
        },
        Err(e) => fail(
            "health.listen",
            format!("cannot listen on {addr}: {e}"),
            Some("choose a free port, or stop what listens there".into()),
        ),
    })
}

fn fail(title: &str, detail: String, fix: Option<String>) -> CheckItem {
    CheckItem { status: Status::Fail, title: title.to_string(), detail, fix }
}

async fn check_kafka(config: &Config) -> CheckItem {
    let title = format!("Kafka {}", config.kafka.brokers);
    let cc = kafka::client_config(&config.kafka);
    let result = tokio::task::spawn_blocking(move || -> Result<usize, String> {
        let producer: rdkafka::producer::BaseProducer = cc.create().map_err(|e| kafka::describe_error(&e))?;
        use rdkafka::producer::Producer;
        producer
            .client()
            .fetch_metadata(None, Duration::from_secs(5))
            .map(|m| m.brokers().len())
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match result {
        Ok(n) => CheckItem { status: Status::Ok, title, detail: format!("{n} broker(s) reachable"), fix: None },
        Err(e) => fail(
            &title,
            format!("not reachable: {e}"),
            Some(
                "check kafka.brokers and kafka.properties (security.protocol, sasl.*); ficus retries at run time"
                    .into(),
            ),
        ),
    }
}
