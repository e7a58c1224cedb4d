//! The `ficus` binary: parses arguments, loads the config, installs tracing and signal handlers, and maps the
//! result to an exit code (0 clean shutdown, 2 configuration or preflight error, 1 fatal runtime error).
//! Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use ficus::config::Config;
use ficus::pipeline::{self, Output, RunOptions};
use ficus::rules::Rules;

/// mimalloc for every allocation of the process: with the crate feature `override` it defines `malloc`, `free` and
/// the rest for the whole binary, so the C code (librdkafka among it) and Rust's default allocator (which calls
/// `malloc`) both use it. Each record is allocated on the thread that produces it and freed on the one that handles
/// its acknowledgement; glibc's malloc served that pattern from locked arenas (its per-thread caches only help a
/// thread that frees what it allocates), which made allocation the largest cost of publishing (docs/benchmarks.md).
/// Not `#[global_allocator]`: the crate's allocator calls mimalloc's aligned entry point for every allocation, which
/// cost more than `malloc` for the 8- and 16-byte alignments Rust asks for.
extern crate mimalloc;

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
        #[arg(long, short, env = "FICUS_CONFIG")]
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
        #[arg(long, short, env = "FICUS_CONFIG")]
        config: PathBuf,
    },
    /// The event catalog: every event type and version with its topic, key, source and a JSON Schema of `data`.
    Catalog {
        #[arg(long, short, env = "FICUS_CONFIG")]
        config: PathBuf,
        /// Do not read column types from the database (column references are then typed `{}`).
        #[arg(long)]
        offline: bool,
        #[arg(long, value_enum, default_value_t = CatalogFormat::Markdown)]
        format: CatalogFormat,
        /// Schema evolution guard: compare with an earlier `ficus catalog --format json` instead of printing the
        /// catalog. Exit 2 when an event type keeps its version but its `data` changed incompatibly.
        #[arg(long, value_name = "PREVIOUS.json")]
        compare: Option<PathBuf>,
    },
    /// Re-snapshot one table while ficus runs: writes a request into the WAL that the instance streaming the
    /// configured slot takes up in stream order (at once if it runs, else when it starts). Exit 2 if the request is
    /// not valid or the slot does not exist; exit 1 if a lock held on the table outlasts the 5 s lock timeout.
    Backfill {
        #[arg(long, short, env = "FICUS_CONFIG")]
        config: PathBuf,
        /// `schema.table` (or `table` in `public`), one of `source.tables`.
        #[arg(long)]
        table: String,
        /// Only rows matching this SQL condition, e.g. `--where "created_at > now() - interval '7 days'"`.
        #[arg(long = "where")]
        filter: Option<String>,
    },
    /// Container liveness probe: GET /healthz on the address of `health.listen` in the config (or --url). Exit 0 when
    /// it answers 200 within the timeout, else 1 with the reason — also when `health.listen` is not set.
    Healthcheck {
        #[arg(long, short, env = "FICUS_CONFIG", required_unless_present = "url")]
        config: Option<PathBuf>,
        /// e.g. `http://127.0.0.1:8080/healthz` (then the config is not read).
        #[arg(long)]
        url: Option<String>,
        #[arg(long, default_value_t = 2)]
        timeout_secs: u64,
    },
    /// The dead-letter topic: list and show its records, replay them through the current rules once a rule is fixed.
    Dlq {
        #[command(subcommand)]
        command: ficus::dlq::cli::DlqCommand,
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
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| LogWriter).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// stderr, printed around the snapshot progress bars (when stderr is a terminal) so neither overwrites the other.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match ficus::snapshot::report::bars() {
            Some(bars) => bars.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Loads and validates the config, and compiles its rules: the one place they are compiled (every command and
/// every replication session shares them). Exit code 2 on any error, printed with the key to fix.
fn load(path: &std::path::Path) -> Result<(Config, Arc<Rules>), ExitCode> {
    let config = Config::load(path).map_err(config_error)?;
    let rules = Rules::compile(&config).map_err(config_error)?;
    Ok((config, Arc::new(rules)))
}

fn config_error(e: ficus::config::ConfigError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
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
        // Bounded shutdown, whatever is stuck (a statement waiting on a lock, an unanswering peer): the pipeline's own
        // bounds end it well within SHUTDOWN_DEADLINE; past it, or at a second signal, ficus exits at once. Nothing is
        // lost: PostgreSQL is confirmed only up to the durable checkpoint, and the next start resumes there.
        let why = tokio::select! {
            _ = tokio::time::sleep(SHUTDOWN_DEADLINE) => "the shutdown did not finish within 30 s",
            _ = term.recv() => "second SIGTERM",
            _ = int.recv() => "second SIGINT",
        };
        tracing::error!(
            "{why}: exiting now; changes after the last confirmed position are not confirmed and the next start \
             publishes them again"
        );
        std::process::exit(1);
    });
    token
}

/// `ficus healthcheck`: 0 when `/healthz` answers 200, else 1 (Docker reserves 2 for health checks).
async fn healthcheck(config: Option<&std::path::Path>, url: Option<&str>, timeout_secs: u64) -> ExitCode {
    let timeout = std::time::Duration::from_secs(timeout_secs.max(1));
    match ficus::healthcheck::run(config, url, timeout).await {
        Ok(report) => {
            println!("healthy: {report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::from(1)
        }
    }
}

/// The longest a SIGTERM/SIGINT takes to end the process (docs/guarantees.md).
const SHUTDOWN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

fn main() -> ExitCode {
    tune_allocator();
    // Test builds only (feature `failpoints`): the crash points named in FAILPOINTS (`name=return` aborts the
    // process there; `2*off->return` on the third pass) — see tests/pipeline/crash_points.rs.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(async_main()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(1)
        }
    }
}

/// mimalloc v3's `mi_option_e` values of the options [`tune_allocator`] sets.
const MI_OPTION_ARENA_EAGER_COMMIT: std::ffi::c_int = 4;
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// mimalloc's defaults traded memory for speed in a way this sidecar cannot afford: transparent huge pages on its
/// arenas (turned off at build time, crate feature `no_thp`) and freed pages returned to the OS only a second later
/// (`purge_delay` 1000 ms) took peak RSS over the benchmark's runs from 40 to 66–99 MiB. Without huge pages, a 10 ms
/// purge delay and arenas committed on demand, it stays at glibc's (docs/benchmarks.md). `MIMALLOC_PURGE_DELAY` and
/// `MIMALLOC_ARENA_EAGER_COMMIT` in the environment still win. Runs first thing in `main`, before any thread starts.
fn tune_allocator() {
    extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    for (option, env, value) in [
        (MI_OPTION_PURGE_DELAY, "MIMALLOC_PURGE_DELAY", 10),
        (MI_OPTION_ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT", 0),
    ] {
        if std::env::var_os(env).is_none() {
            // SAFETY: sets one of mimalloc's options (a valid `mi_option_e` value); no thread runs yet.
            unsafe { mi_option_set(option, value) };
        }
    }
}

async fn async_main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let path = match &cli.command {
        // The container probe reads only `health.listen` (or takes --url): it answers without compiling rules.
        Command::Healthcheck { config, url, timeout_secs } => {
            return healthcheck(config.as_deref(), url.as_deref(), *timeout_secs).await;
        }
        Command::Run { config, .. }
        | Command::Check { config }
        | Command::Catalog { config, .. }
        | Command::Backfill { config, .. } => config,
        Command::Dlq { command } => command.config(),
    };
    let (config, rules) = match load(path) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    match cli.command {
        // Answered above.
        Command::Healthcheck { .. } => ExitCode::from(1),
        Command::Run { null_sink, dry_run, .. } => {
            let output = match (null_sink, dry_run) {
                (true, _) => Output::Null,
                (_, true) => Output::DryRun,
                _ => Output::Kafka,
            };
            let options = RunOptions { output };
            // The pipeline runs as a task on the runtime's workers, not in this future, which `block_on` polls on
            // the main thread: there, every read of the replication socket took a worker that saw it ready and then
            // unparked the main thread (two context switches; ~40k/s at 50k changes/s), and every batch the source
            // handed to the route task woke another thread.
            let run = tokio::spawn(pipeline::run(config, rules, options, shutdown_on_signals()));
            let result = run.await.unwrap_or_else(|e| {
                std::panic::resume_unwind(e.try_into_panic().unwrap_or_else(|e| Box::new(e.to_string())))
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Once, through the log (JSON with --log-format json), not also on stderr beside it.
                    tracing::error!(exit_code = e.exit_code(), "{e}");
                    ExitCode::from(e.exit_code() as u8)
                }
            }
        }
        Command::Catalog { offline, compare: Some(previous), .. } => {
            match ficus::catalog::build(&config, &rules, offline).await {
                Ok(entries) => ExitCode::from(ficus::catalog::compare::run(&previous, &entries)),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Catalog { offline, format, .. } => match ficus::catalog::build(&config, &rules, offline).await {
            Ok(entries) => {
                match format {
                    CatalogFormat::Markdown => print!("{}", ficus::catalog::to_markdown(&entries)),
                    CatalogFormat::Json => {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&ficus::catalog::to_json(&entries)).unwrap_or_default()
                        )
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Backfill { table, filter, .. } => {
            match ficus::backfill::request(&config, &table, filter.as_deref()).await {
                Ok(message) => {
                    println!("{message}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Dlq { command } => ExitCode::from(ficus::dlq::cli::run(command, &config, &rules).await),
        Command::Check { .. } => {
            let report = ficus::check::run(&config, &rules).await;
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

#[cfg(test)]
mod tests {
    /// The option numbers `tune_allocator` sets are the options it names: mimalloc v3's defaults for them (the
    /// numbers shift between major versions of mimalloc), then the values set.
    #[test]
    fn the_allocator_options_set_are_the_ones_named() {
        extern "C" {
            fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
        }
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
            || std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_some()
        {
            return; // the environment's values win; nothing to compare
        }
        // SAFETY: reads mimalloc options by valid `mi_option_e` values.
        let get = |option| unsafe { mi_option_get(option) };
        let options = (super::MI_OPTION_PURGE_DELAY, super::MI_OPTION_ARENA_EAGER_COMMIT);
        assert_eq!(
            (get(options.0), get(options.1)),
            (1000, 2),
            "mimalloc v3's purge_delay and arena_eager_commit defaults"
        );
        super::tune_allocator();
        assert_eq!((get(options.0), get(options.1)), (10, 0));
    }
}
