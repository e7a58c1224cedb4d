//! The `ficus dlq` command line: arguments, output formats and exit codes (0 done; 1 a runtime failure, or a replay
//! that left records failing; 2 what the command line or config must fix).

use std::io::Write as _;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::{list, parse_time, replay, show, Filter};
use crate::config::Config;
use crate::rules::Rules;

#[derive(Subcommand)]
pub enum DlqCommand {
    /// One line per DLQ record: partition/offset, time, rule, table, op, LSN, error (`--format json`: one object per
    /// line).
    List {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// One DLQ record whole: its headers, key and pretty-printed payload.
    Show {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        offset: i64,
        #[arg(long, default_value_t = 0)]
        partition: i32,
    },
    /// Runs the current rules on the DLQ'd changes (only the rule that failed, as `dlq-rule` names it) and publishes
    /// the events with the ids the live path gives them. Records that still fail stay in the DLQ and are reported
    /// (exit 1); nothing is sent to the DLQ again and nothing is deleted from it.
    Replay {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        filter: FilterArgs,
        /// Print the events instead of publishing them.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

#[derive(Args)]
pub struct Common {
    #[arg(long, short, env = "FICUS_CONFIG")]
    config: PathBuf,
}

#[derive(Args)]
pub struct FilterArgs {
    /// Only this rule: `Name` (every version) or `"Name vN"`.
    #[arg(long)]
    rule: Option<String>,
    /// Only records whose error contains this text (case-insensitive).
    #[arg(long)]
    error: Option<String>,
    /// Only records sent to the DLQ at or after this time: RFC 3339 or a duration ago (`90s`, `15m`, `2h`, `7d`).
    #[arg(long)]
    since: Option<String>,
    /// Only records sent to the DLQ before this time (same forms as --since).
    #[arg(long)]
    until: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

impl DlqCommand {
    /// The config file of the command.
    pub fn config(&self) -> &PathBuf {
        match self {
            DlqCommand::List { common, .. } | DlqCommand::Show { common, .. } | DlqCommand::Replay { common, .. } => {
                &common.config
            }
        }
    }
}

impl FilterArgs {
    fn filter(&self) -> Result<Filter, String> {
        let now = chrono::Utc::now().timestamp_millis();
        let time = |flag: &str, v: &Option<String>| {
            v.as_deref().map(|s| parse_time(s, now).map_err(|e| format!("--{flag}: {e}"))).transpose()
        };
        Ok(Filter {
            rule: self.rule.clone(),
            error: self.error.clone(),
            since_ms: time("since", &self.since)?,
            until_ms: time("until", &self.until)?,
        })
    }
}

/// Runs `command`; returns the exit code.
pub async fn run(command: DlqCommand, config: &Config, rules: &Rules) -> u8 {
    let filter = match &command {
        DlqCommand::List { filter, .. } | DlqCommand::Replay { filter, .. } => match filter.filter() {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        },
        DlqCommand::Show { .. } => Filter::default(),
    };
    let mut stdout = std::io::stdout().lock();
    match command {
        DlqCommand::List { format, .. } => match list(config, rules, &filter).await {
            Ok((entries, total)) => {
                for e in &entries {
                    let line = match format {
                        Format::Text => e.line(),
                        Format::Json => serde_json::to_string(e).unwrap_or_default(),
                    };
                    let _ = writeln!(stdout, "{line}");
                }
                eprintln!("{} of {total} records of {}", entries.len(), rules.dlq_topic());
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                e.exit_code()
            }
        },
        DlqCommand::Show { offset, partition, .. } => match show(config, rules, partition, offset).await {
            Ok(text) => {
                let _ = write!(stdout, "{text}");
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                e.exit_code()
            }
        },
        DlqCommand::Replay { dry_run, format, .. } => match replay(config, rules, &filter, dry_run).await {
            Ok(report) => {
                for r in &report {
                    let line = match format {
                        Format::Text => r.line(),
                        Format::Json => serde_json::to_string(r).unwrap_or_default(),
                    };
                    let _ = writeln!(stdout, "{line}");
                    if dry_run && format == Format::Text {
                        for e in &r.events {
                            let _ = writeln!(stdout, "{e}");
                        }
                    }
                }
                let settled = report.iter().filter(|r| r.settled()).count();
                let events: usize = report.iter().map(|r| r.events.len()).sum();
                let verb = if dry_run { "would publish" } else { "published" };
                eprintln!(
                    "{} records replayed from {}: {settled} settled ({verb} {events} events), {} not",
                    report.len(),
                    rules.dlq_topic(),
                    report.len() - settled
                );
                if settled < report.len() {
                    eprintln!(
                        "records that still fail stay in the DLQ (nothing was sent there again): fix the rule or the \
                         data, then replay again; replayed events keep their ids"
                    );
                    1
                } else {
                    0
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                e.exit_code()
            }
        },
    }
}
