//! The `ficus` binary: parses arguments, loads the config, installs tracing and signal handlers, and maps the
//! result to an exit code (0 clean shutdown, 2 configuration or preflight error, 1 fatal runtime error).
//! Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use ficus::config::Config;
use ficus::pipeline::{self, Output, RunOptions};

#[derive(Parser)]
#[command(name = "ficus", version, about = "PostgreSQL logical replication → canonical events on Kafka")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Stream changes to Kafka until SIGTERM/SIGINT.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Benchmark aid: encode everything but publish nothing (changes are still confirmed to PostgreSQL).
        #[arg(long, hide = true)]
        null_sink: bool,
        /// Stream from a temporary slot and print the records the config produces (one JSON per line) instead of
        /// publishing them; confirms nothing and writes no checkpoint. For writing rules against a live database.
        #[arg(long, conflicts_with = "null_sink")]
        dry_run: bool,
    },
    /// Preflight report: what is wrong and how to fix it. Exit 2 on a blocking problem.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The event catalog: every event type and version with its topic, key, source and a JSON Schema of `data`.
    Catalog {
        #[arg(long, short)]
        config: PathBuf,
        /// Do not read column types from the database (column references are then typed `{}`).
        #[arg(long)]
        offline: bool,
        #[arg(long, value_enum, default_value_t = CatalogFormat::Markdown)]
        format: CatalogFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum CatalogFormat {
    Markdown,
    Json,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load(path: &PathBuf) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        t.cancel();
    });
    token
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(async_main()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(1)
        }
    }
}

/// glibc gives each allocating thread its own arena (up to 8 per core) and keeps freed memory in it: with the
/// tokio workers and librdkafka's threads that made peak RSS through a large transaction vary between 30 and
/// 80 MiB from run to run. Two arenas keep it low and repeatable at no measurable throughput cost
/// (docs/benchmarks.md). Must run before any thread starts. `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before other threads exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

async fn async_main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Run { config, null_sink, dry_run } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let output = match (null_sink, dry_run) {
                (true, _) => Output::Null,
                (_, true) => Output::DryRun,
                _ => Output::Kafka,
            };
            let options = RunOptions { output };
            match pipeline::run(config, options, shutdown_on_signals()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("error: {e}");
                    ExitCode::from(e.exit_code() as u8)
                }
            }
        }
        Command::Catalog { config, offline, format } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match ficus::catalog::build(&config, offline).await {
                Ok(entries) => {
                    match format {
                        CatalogFormat::Markdown => print!("{}", ficus::catalog::to_markdown(&entries)),
                        CatalogFormat::Json => {
                            println!("{}", serde_json::to_string_pretty(&ficus::catalog::to_json(&entries)).unwrap_or_default())
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Check { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let report = ficus::check::run(&config).await;
            print!("{report}");
            if report.is_blocking() {
                println!("blocking problems found: fix the lines marked ✗");
                ExitCode::from(2)
            } else {
                println!("ready to stream");
                ExitCode::SUCCESS
            }
        }
    }
}
