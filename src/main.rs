//! The `philotes` command line: `run`, `validate`, `migrate`, `status`, `snapshot`, `resume`, `compact` (DESIGN.md,
//! "Running it").
//!
//! Thin by design: every verb loads the pipeline file through `philotes::config` and calls into the library;
//! `anyhow` lives here only, to add the context a person needs to act on an error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use philotes::config::{self, LogFormat, PipelineConfig};

/// mimalloc instead of glibc malloc: decoding and building batches allocate millions of short-lived values,
/// and glibc's mmap/trim thresholds made the kernel map fresh memory for every flush (measured: the decode of
/// 1M changes took about a third less time with memory reused).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Streams PostgreSQL row changes into Apache Iceberg tables, exactly once.
#[derive(Debug, Parser)]
#[command(name = "philotes", version, about, long_about = None)]
struct Cli {
    /// Log format; overrides `telemetry.log_format` of the pipeline file.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline: capture and flushers in one process, or one role of a scaled-out deployment.
    Run {
        /// The pipeline file.
        file: PathBuf,
        /// Which part of the pipeline this process runs.
        #[arg(long, value_enum, default_value_t = Role::All)]
        role: Role,
        /// Address of the /metrics endpoint; overrides `telemetry.metrics` (e.g. for a second process on a host).
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Check pipeline files and print every problem with its line, column and key; exits 1 on any problem.
    Validate {
        /// One or more pipeline files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Apply the control-schema migrations (schema `philotes`) to the pipeline's buffer database.
    Migrate {
        /// The pipeline file.
        file: PathBuf,
    },
    /// Resume tables that stopped (an unmappable column, a schema change Iceberg cannot follow) once the cause
    /// is fixed: their changes, kept in the buffer, flow again.
    Resume {
        /// The pipeline file.
        file: PathBuf,
        /// A stopped source table (`schema.table`, as `philotes status` names it); repeat for several.
        #[arg(long = "table", required = true)]
        tables: Vec<String>,
    },
    /// Copy the existing rows of tables again (online, while the pipeline runs): records the request for the
    /// running capture and returns; follow it with `philotes status`. Exits 1 if any table was refused.
    Snapshot {
        /// The pipeline file.
        file: PathBuf,
        /// A table of the pipeline (`schema.table`, as in `source.postgres.tables`); repeat for several.
        #[arg(long = "table", required = true)]
        tables: Vec<String>,
    },
    /// Compact the pipeline's Iceberg tables (their rows, deletes applied, into few large files in one snapshot)
    /// and expire snapshots older than `sink.iceberg.retention`, one table at a time under its flush lease.
    /// Prints a line per table. Exits 0 when every table was done, 2 when some were skipped (lease held too
    /// long, never flushed), 1 when one failed.
    Compact {
        /// The pipeline file.
        file: PathBuf,
        /// A source table of the pipeline (`schema.table`, as `philotes status` names it); repeat for several.
        /// Default: every table the pipeline has flushed.
        #[arg(long = "table")]
        tables: Vec<String>,
        /// Leave tables whose current snapshot reads fewer data + delete files alone. Default:
        /// `sink.iceberg.compaction.min_files`, else 2.
        #[arg(long)]
        min_files: Option<usize>,
        /// How long to wait for a flush that holds a table's lease before skipping the table (`30s`, `2m`).
        #[arg(long, default_value = "60s", value_parser = parse_wait)]
        wait: std::time::Duration,
    },
    /// Remove a pipeline from its source and buffer: the replication slot, the publication if philotes created
    /// it, and every row the pipeline has in the buffer database (changes not yet in Iceberg included). The
    /// Iceberg tables are kept. Without `--yes` it only says what it would remove. The pipeline must be stopped.
    Drop {
        /// The pipeline file.
        file: PathBuf,
        /// Really remove them.
        #[arg(long)]
        yes: bool,
    },
    /// List, show, retry or drop the changes that could not be converted (`philotes.dead_letters`).
    DeadLetters {
        /// The pipeline file.
        file: PathBuf,
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Show the pipeline's state: slot and replication lag, source checkpoint, buffer depth, dead letters. Exits 0
    /// when everything could be read, 2 when a part could not (it is marked and listed under errors).
    Status {
        /// The pipeline file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// What `philotes dead-letters FILE` does.
#[derive(Debug, Subcommand)]
enum DeadLetterAction {
    /// A line per dead letter: id, stage, table, position, reason (`--json`: every field).
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter, whole: the change as it was rendered, and why it was refused.
    Show {
        /// Its id (from `list`).
        id: i64,
    },
    /// Enqueues dead letters' changes again, once you fixed the cause (a column's type changed, philotes
    /// upgraded): each is written to Iceberg exactly once; one that still fails is dead-lettered again with the
    /// reason. No ids: every retryable dead letter. Tables in `mode: mirror` are refused.
    Retry {
        /// The ids to retry (all retryable ones when none is given).
        ids: Vec<i64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Deletes dead letters (after looking at them: they are the only record of those changes).
    Drop {
        /// The ids to delete.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<i64>,
        /// Delete every dead letter of the pipeline.
        #[arg(long)]
        all: bool,
    },
}

/// The roles of `philotes run --role` (DESIGN.md: one capture, many flushers on any hosts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    /// Capture and flushers in one process (the default and the quick start).
    All,
    /// The replication slot reader that fills the buffer; one active per pipeline.
    Capture,
    /// A buffer drainer that writes Iceberg; run as many as you like.
    Flusher,
}

fn main() -> ExitCode {
    let code = command(Cli::parse());
    // After the runtime is gone: the exporter sends what is left on its own thread, with a blocking client.
    philotes::telemetry::shutdown_traces();
    code
}

/// Runs the verb the command line names.
fn command(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("philotes: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Validate { files } => return validate(&files),
        Command::Migrate { file } => runtime.block_on(migrate(&file, cli.log_format)),
        Command::Run { file, role, metrics } => runtime.block_on(run(&file, role, metrics, cli.log_format)),
        Command::Status { file, json } => match runtime.block_on(status(&file, json, cli.log_format)) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Resume { file, tables } => runtime.block_on(resume(&file, &tables, cli.log_format)),
        Command::Drop { file, yes } => match runtime.block_on(drop_pipeline(&file, yes, cli.log_format)) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::DeadLetters { file, action } => match runtime.block_on(dead_letters(&file, action, cli.log_format)) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Snapshot { file, tables } => runtime.block_on(snapshot(&file, &tables, cli.log_format)),
        Command::Compact { file, tables, min_files, wait } => {
            match runtime.block_on(compact(&file, &tables, min_files, wait, cli.log_format)) {
                Ok(code) => return code,
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Every cause once: anyhow's `{:#}` would repeat what wrappers already printed of their source.
            eprintln!("philotes: {}", philotes_stages::report::join(e.chain().map(ToString::to_string)));
            ExitCode::FAILURE
        }
    }
}

/// `philotes validate FILE…`: "FILE: ok" or every problem of every file.
fn validate(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        match config::load(file) {
            Ok(_) => println!("{}: ok", file.display()),
            Err(e) => {
                failed = true;
                eprintln!("{e}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn load(file: &Path, log_format: Option<LogFormatArg>) -> anyhow::Result<PipelineConfig> {
    let config = config::load(file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let format = match log_format {
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Human) => LogFormat::Human,
        None => config.telemetry.log_format,
    };
    init_logging(format);
    Ok(config)
}

/// Logs (filtered by `RUST_LOG`) and, when an OTLP endpoint is set, spans exported over OTLP (filtered on their
/// own: the engine's spans are traced even though its logs are quiet).
fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn,philotes_engine=warn,sqlx=warn,opentelemetry=warn"));
    let logs = tracing_subscriber::fmt::layer().with_writer(philotes::progress::log_writer);
    let logs = match format {
        LogFormat::Human => logs.boxed(),
        LogFormat::Json => logs.json().boxed(),
    };
    let (traces, problem) = match philotes::telemetry::trace_layer() {
        Ok(layer) => (layer, None),
        Err(e) => (None, Some(e)),
    };
    // A second init (tests calling twice) is harmless: keep the first.
    let _ = tracing_subscriber::registry().with(logs.with_filter(filter)).with(traces).try_init();
    if let Some(e) = problem {
        tracing::warn!(error = %e, "traces are not exported");
    }
}

/// `philotes migrate FILE`: applies migrations to the buffer database named by the file.
async fn migrate(file: &Path, log_format: Option<LogFormatArg>) -> anyhow::Result<()> {
    let config = load(file, log_format)?;
    let mut client = philotes::postgres::connect(&config.buffer.url)
        .await
        .with_context(|| format!("connecting to the buffer database {}", config.buffer.url))?;
    let report = philotes::migrate::migrate(&mut client).await?;
    if report.applied.is_empty() {
        println!("buffer database is up to date ({} migrations)", report.total);
    } else {
        for name in &report.applied {
            println!("applied {name}");
        }
        println!("buffer database is up to date ({} migrations)", report.total);
    }
    Ok(())
}

/// `philotes resume FILE --table T…`: clears each table's stop; a table that is not stopped is an error.
async fn resume(file: &Path, tables: &[String], log_format: Option<LogFormatArg>) -> anyhow::Result<()> {
    let config = load(file, log_format)?;
    let client = philotes::postgres::connect(&config.buffer.url)
        .await
        .with_context(|| format!("connecting to the buffer database {}", config.buffer.url))?;
    for table in tables {
        let name = philotes::config::TableId::parse(table).map_err(|e| anyhow::anyhow!("--table {table}: {e}"))?;
        match philotes_stages::store::watermarks::resume(&client, &config.pipeline, &name).await? {
            Some(reason) => println!("{name}: resumed (it had stopped: {reason})"),
            None => anyhow::bail!("{name} is not stopped (see `philotes status {}`)", file.display()),
        }
    }
    Ok(())
}

/// `philotes drop FILE [--yes]`: refuses while a capture streams from the slot; without `--yes` says what it
/// would remove and exits 2.
async fn drop_pipeline(file: &Path, yes: bool, log_format: Option<LogFormatArg>) -> anyhow::Result<ExitCode> {
    use philotes_stages::source::setup;
    let config = load(file, log_format)?;
    let source = &config.source.postgres;
    let (pipeline, slot, publication) = (&config.pipeline, &source.slot, &source.publication);
    let source_client = philotes::postgres::connect(&source.url)
        .await
        .with_context(|| format!("connecting to the source database {}", source.url))?;
    if setup::slot_active(&source_client, slot).await? {
        eprintln!("a capture streams from slot {slot} now: stop every process of pipeline {pipeline} first");
        return Ok(ExitCode::FAILURE);
    }
    if !yes {
        println!(
            "would drop: replication slot {slot}, publication {publication} (if philotes created it), and every row of \
             pipeline {pipeline} in the buffer database {} (changes not yet in Iceberg included); the Iceberg tables \
             are kept. Run again with --yes to do it.",
            config.buffer.url
        );
        return Ok(ExitCode::from(2));
    }
    let dropped = setup::drop_source(&source_client, slot, publication, pipeline).await?;
    println!("replication slot {slot}: {}", if dropped.slot_dropped { "dropped" } else { "not there" });
    println!(
        "publication {publication}: {}",
        match dropped.publication_dropped {
            Some(true) => "dropped",
            Some(false) => "kept (philotes did not create it)",
            None => "not there",
        }
    );
    let mut buffer = philotes::postgres::connect(&config.buffer.url)
        .await
        .with_context(|| format!("connecting to the buffer database {}", config.buffer.url))?;
    let segments = philotes_stages::store::pipelines::forget(&mut buffer, pipeline).await?;
    println!("buffer: pipeline {pipeline} removed ({segments} segment{} not yet in Iceberg deleted)", if segments == 1 { "" } else { "s" });
    Ok(ExitCode::SUCCESS)
}

/// `philotes dead-letters FILE list|show ID|retry [ID…]|drop ID…|drop --all`; exits 1 when `show`, `retry` or
/// `drop` names an id the pipeline has no dead letter with (or, for `retry`, one it cannot retry).
async fn dead_letters(file: &Path, action: DeadLetterAction, log_format: Option<LogFormatArg>) -> anyhow::Result<ExitCode> {
    use philotes_stages::store::dead_letters as store;
    let config = load(file, log_format)?;
    let mut client = philotes::postgres::connect(&config.buffer.url)
        .await
        .with_context(|| format!("connecting to the buffer database {}", config.buffer.url))?;
    let pipeline = &config.pipeline;
    match action {
        DeadLetterAction::Retry { ids, json } => {
            // The retry needs migration 0009's columns; the buffer may still be on an older philotes' schema.
            philotes::migrate::migrate(&mut client).await?;
            let is_mirror = |table: &philotes_stages::table_id::TableId| config.iceberg_target(table).mode == philotes::config::TableMode::Mirror;
            let ids = (!ids.is_empty()).then_some(ids.as_slice());
            let report = match philotes_stages::retry::retry(&mut client, pipeline, ids, is_mirror).await {
                Ok(report) => report,
                Err(philotes_stages::retry::RetryError::Refused(lines)) => {
                    eprintln!("nothing retried:");
                    for line in lines {
                        eprintln!("  {line}");
                    }
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return Err(e.into()),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for r in &report.retried {
                    println!("{:>6}  {}  {}  enqueued again (segment {})", r.id, r.table, r.position, r.segment);
                }
                for f in &report.failed_again {
                    println!("{:>6}  still fails, dead letter {}: {}", f.id, f.new_id, f.reason);
                }
                for k in &report.kept {
                    println!("{:>6}  kept: {}", k.id, k.why);
                }
                let n = report.retried.len();
                println!(
                    "retried {n} dead letter{}; {} failed again; the flushers write them to Iceberg exactly once",
                    if n == 1 { "" } else { "s" },
                    report.failed_again.len()
                );
            }
        }
        DeadLetterAction::List { json: true } => println!("{}", serde_json::to_string_pretty(&store::list(&client, pipeline).await?)?),
        DeadLetterAction::List { json: false } => {
            let letters = store::list(&client, pipeline).await?;
            for l in &letters {
                let (table, position) = (l.table.as_deref().unwrap_or("-"), l.position.as_deref().unwrap_or("-"));
                println!("{:>6}  {}  {:<14}  {table}  {position}  {}", l.id, l.stored_at, l.stage, l.reason);
            }
            println!("{} dead letter{} in pipeline {pipeline}", letters.len(), if letters.len() == 1 { "" } else { "s" });
        }
        DeadLetterAction::Show { id } => match store::get(&client, pipeline, id).await? {
            Some(l) => {
                println!("id        {}\nstored    {}\nstage     {}", l.id, l.stored_at, l.stage);
                println!("table     {}\nposition  {}", l.table.as_deref().unwrap_or("-"), l.position.as_deref().unwrap_or("-"));
                println!("reason    {}\nchange    {}", l.reason, l.payload.as_deref().unwrap_or("-"));
                println!("retry     {}", if l.retryable { "possible (`retry ID` once the cause is fixed)" } else { "no: the change itself was not kept" });
            }
            None => {
                eprintln!("pipeline {pipeline} has no dead letter {id} (see `philotes dead-letters {} list`)", file.display());
                return Ok(ExitCode::FAILURE);
            }
        },
        DeadLetterAction::Drop { ids, all } => {
            let deleted = store::drop(&client, pipeline, (!all).then_some(ids.as_slice())).await?;
            println!("dropped {} dead letter{}", deleted.len(), if deleted.len() == 1 { "" } else { "s" });
            let missing: Vec<String> = ids.iter().filter(|id| !deleted.contains(id)).map(|id| id.to_string()).collect();
            if !all && !missing.is_empty() {
                eprintln!("pipeline {pipeline} has no dead letter {}", missing.join(", "));
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `philotes snapshot FILE --table T…`: checks each table (the file captures it; on the source it exists and the
/// pipeline's role can read it) and records a pending snapshot run for it; a refused table is reported and the
/// others are still requested. Returns once the requests are recorded: the running capture picks them up.
async fn snapshot(file: &Path, tables: &[String], log_format: Option<LogFormatArg>) -> anyhow::Result<()> {
    let config = load(file, log_format)?;
    let mut refused = Vec::new();
    // The file's own check first: a table the pipeline does not capture needs no connection.
    let mut wanted = Vec::new();
    for text in tables {
        match philotes::snapshot::captured(&config.source.postgres.tables, file, text) {
            Ok(table) => wanted.push(table),
            Err(e) => refused.push(e),
        }
    }
    if !wanted.is_empty() {
        let mut buffer = philotes::postgres::connect(&config.buffer.url)
            .await
            .with_context(|| format!("connecting to the buffer database {}", config.buffer.url))?;
        philotes::migrate::migrate(&mut buffer).await?;
        let source = philotes::postgres::connect(&config.source.postgres.url)
            .await
            .with_context(|| format!("connecting to the source database {}", config.source.postgres.url))?;
        let source_db = philotes_stages::store::describe(config.source.postgres.url.config());
        for table in wanted {
            if let Err(e) = philotes::snapshot::check_source(&source, &source_db, &table).await {
                refused.push(e);
                continue;
            }
            let run = philotes_stages::store::snapshots::request(&buffer, &config.pipeline, &table)
                .await
                .with_context(|| format!("recording the snapshot request of {table} in the buffer database"))?;
            println!("snapshot of {table} requested (run {run}); follow it with: philotes status {}", file.display());
        }
    }
    for refusal in &refused {
        eprintln!("philotes: {refusal}");
    }
    anyhow::ensure!(refused.is_empty(), "{} of {} tables refused, nothing requested for them", refused.len(), tables.len());
    Ok(())
}

/// `--wait`: a duration as the pipeline file writes them.
fn parse_wait(text: &str) -> Result<std::time::Duration, String> {
    config::units::parse_duration(text)
}

/// `philotes compact FILE [--table T…]`: maintenance of each table in turn, a line per table as it is done.
async fn compact(
    file: &Path,
    tables: &[String],
    min_files: Option<usize>,
    wait: std::time::Duration,
    log_format: Option<LogFormatArg>,
) -> anyhow::Result<ExitCode> {
    let config = load(file, log_format)?;
    let settings = philotes::compact::settings(&config, min_files, wait);
    let tally = philotes::compact::run(&settings, tables, |line| println!("{line}")).await?;
    Ok(if tally.failed > 0 {
        ExitCode::FAILURE
    } else if tally.skipped > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// `philotes status FILE`: prints everything it can read; exits 0 when the status is complete, 2 when a part could
/// not be read (the output then marks it and lists it under errors / `errors`), 1 when nothing could be tried
/// (the file is invalid).
async fn status(file: &Path, json: bool, log_format: Option<LogFormatArg>) -> anyhow::Result<ExitCode> {
    let config = load(file, log_format)?;
    let status = philotes::status::read(&config).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        println!("{status}");
    }
    Ok(if status.errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

/// `philotes run FILE`: migrates the buffer database, then runs the roles this process has until SIGINT or
/// SIGTERM, on which it drains what is in flight and writes the last checkpoint.
async fn run(
    file: &Path,
    role: Role,
    metrics: Option<std::net::SocketAddr>,
    log_format: Option<LogFormatArg>,
) -> anyhow::Result<()> {
    // Signals are taken over first, so a SIGTERM during start-up is a clean stop too, never the default kill.
    let cancel = tokio_util::sync::CancellationToken::new();
    cancel_on_signal(cancel.clone())?;
    let config = load(file, log_format)?;
    tracing::info!(pipeline = %config.pipeline, ?role, "starting");
    let mut buffer = philotes::postgres::connect(&config.buffer.url)
        .await
        .with_context(|| format!("connecting to the buffer database {}", config.buffer.url))?;
    let report = philotes::migrate::migrate(&mut buffer).await?;
    tracing::info!(applied = report.applied.len(), "buffer database migrated");
    drop(buffer);
    if cancel.is_cancelled() {
        tracing::info!("stopped before starting");
        return Ok(());
    }
    let metrics_addr = metrics.unwrap_or(config.telemetry.metrics);
    let readiness = philotes::telemetry::Readiness::default();
    match philotes::telemetry::serve_metrics(metrics_addr, &config.pipeline, readiness.clone(), cancel.clone()).await {
        Ok(()) => {
            let every = std::time::Duration::from_secs(5);
            tokio::spawn(philotes::telemetry::poll_status(config.clone(), every, role != Role::Flusher, readiness, cancel.clone()));
        }
        // Several processes of one pipeline on one host share the file: the second cannot bind the same port.
        Err(e) => tracing::warn!("{e}; this process runs without a metrics endpoint (pass --metrics ADDR to choose another)"),
    }
    // Snapshot progress (bars on a terminal, log lines otherwise) where the capture runs; it never fails the run.
    let progress = (role != Role::Flusher).then(|| tokio::spawn(philotes::progress::watch(config.clone(), cancel.clone())));
    let capture = async {
        if role == Role::Flusher {
            return Ok(());
        }
        let settings = philotes::pipeline::capture_settings(&config);
        let result = philotes_stages::capture::run(&settings, cancel.clone()).await;
        // One role failing stops the process: the other drains and stops too.
        cancel.cancel();
        result.context("capture")
    };
    let flusher = async {
        if role == Role::Capture {
            return Ok(());
        }
        let settings = philotes::pipeline::flush_settings(&config);
        // Periodic compaction beside the flushes (sink.iceberg.compaction); it ends with the flusher.
        let compaction = philotes::compact::periodic(&config, cancel.clone()).map(tokio::spawn);
        let result = philotes_stages::flush::run(&settings, cancel.clone()).await;
        cancel.cancel();
        if let Some(compaction) = compaction {
            let _ = compaction.await;
        }
        result.context("flusher")
    };
    let (captured, flushed) = tokio::join!(capture, flusher);
    if let Some(progress) = progress {
        // Both roles cancelled on their way out: the task clears its bars and ends.
        let _ = progress.await;
    }
    captured?;
    flushed?;
    tracing::info!("stopped");
    Ok(())
}

/// Fires `cancel` on SIGINT or SIGTERM: the pipeline drains and writes its last checkpoint, then exits. The
/// handlers are registered before this returns.
fn cancel_on_signal(cancel: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("shutting down: draining and writing the last checkpoint");
        cancel.cancel();
    });
    Ok(())
}
