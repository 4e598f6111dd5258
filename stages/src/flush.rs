//! The flusher role: Claim → ArrowBatch → IcebergCommit → Checkpoint, exactly once, any number of processes.
//!
//! - [`crate::claim`]: the source. Takes one table's lease and that table's oldest complete segments as a
//!   [`FlushJob`](crate::claim::job::FlushJob), handed out as slices of about 50k changes.
//! - [`crate::arrow_batch`]: each slice → one Arrow RecordBatch (the job prepares its Iceberg table first,
//!   [`crate::catalog::table`]). CPU-heavy, its own pool, ordered.
//! - [`crate::iceberg_commit`]: keyed by job, writes each slice into the job's Parquet writer as it arrives and,
//!   with the last slice, commits one snapshot carrying `philotes.last-lsn`/`philotes.last-seq`, guarded so it
//!   lands only on the table state it checked.
//! - [`crate::checkpoint`]: in the lease's transaction, deletes the flushed segments, moves the watermark,
//!   stores dead letters; commits.
//!
//! The stages share nothing but the job; this role assembles them.

use std::sync::Arc;
use std::time::Duration;

use philotes_engine::{Flow, FlowError, Mode, RetryPolicy, StageOptions};
use tokio_postgres::Config;
use tokio_util::sync::CancellationToken;

use crate::arrow_batch::{ArrowBatch, NAME as ARROW_BATCH};
use crate::catalog::table::Tables;
use crate::catalog::{self, CatalogSettings, GuardedCatalog};
use crate::checkpoint::{Checkpoint, NAME as CHECKPOINT};
use crate::claim::failures::FailureLog;
use crate::claim::{self, Claim, ClaimSettings, TargetFn};
use crate::iceberg_commit::{CommitCatalog, IcebergCommit, NAME as ICEBERG_COMMIT};

/// Everything a flusher needs, from the pipeline file.
#[derive(Clone)]
pub struct FlushSettings {
    /// The pipeline name.
    pub pipeline: String,
    /// The buffer database.
    pub buffer: Config,
    /// The catalog and warehouse.
    pub catalog: CatalogSettings,
    /// Source table → Iceberg table.
    pub target: TargetFn,
    /// Concurrent flushes (leases held at once) in this process (`flush.workers`).
    pub workers: usize,
    /// ArrowBatch's pool (`stages.arrow_batch`); the role sets its mode (ordered) and retry.
    pub arrow_batch: StageOptions,
    /// IcebergCommit's pool (`stages.iceberg_commit`); the role sets its mode (keyed by flush) and retry.
    pub iceberg_commit: StageOptions,
    /// Checkpoint's pool (`stages.checkpoint`).
    pub checkpoint: StageOptions,
    /// Changes per flush (at least one segment).
    pub max_events: i64,
    /// A table with fewer than `max_events` changes waiting is flushed once its last flush is this old.
    pub interval: Duration,
    /// Parquet target file size.
    pub target_file_size: usize,
    /// Backoff for catalog/warehouse errors and restarts.
    pub retry: RetryPolicy,
}

impl std::fmt::Debug for FlushSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlushSettings")
            .field("pipeline", &self.pipeline)
            .field("workers", &self.workers)
            .field("max_events", &self.max_events)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// Why the flusher stopped.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// The buffer connection pool could not be built.
    #[error("buffer connection pool: {0}")]
    Pool(#[from] deadpool_postgres::BuildError),
    /// The catalog could not be reached or used.
    #[error("iceberg catalog: {0}")]
    Catalog(#[from] iceberg::Error),
    /// The SQL catalog's URL does not parse as a PostgreSQL connection string.
    #[error("iceberg SQL catalog url: {0}")]
    CatalogUrl(#[from] tokio_postgres::Error),
    /// A stage stopped the flow.
    #[error(transparent)]
    Flow(#[from] FlowError),
}

impl FlushError {
    /// Whether the shutdown stopped a stage that was waiting to retry (a catalog outage, say).
    pub fn is_interrupted(&self) -> bool {
        matches!(self, FlushError::Flow(e) if e.is_interrupted())
    }

    /// Whether a restart may succeed: a catalog not reachable yet, or a session a stage lost.
    pub fn is_restartable(&self) -> bool {
        match self {
            FlushError::Pool(_) | FlushError::Catalog(_) => true,
            FlushError::CatalogUrl(_) => false,
            FlushError::Flow(e) => e.is_session_lost(),
        }
    }
}

/// Runs the flusher until `cancel` fires (it drains the flushes in flight) or an error that a restart cannot
/// mend.
pub async fn run(settings: &FlushSettings, cancel: CancellationToken) -> Result<(), FlushError> {
    crate::supervise::restart_on_failure("flusher restarting: its leases are released, the buffer keeps every change", settings.retry, &cancel, FlushError::is_restartable, FlushError::is_interrupted, || {
        run_once(settings, &cancel)
    })
    .await
}

async fn run_once(settings: &FlushSettings, cancel: &CancellationToken) -> Result<(), FlushError> {
    let mut buffer = settings.buffer.clone();
    if buffer.get_application_name().is_none() {
        // Who holds which lease shows in pg_stat_activity (an `idle in transaction` session per lease).
        buffer.application_name(format!("philotes_{} flusher {}", settings.pipeline, std::process::id()));
    }
    let pool = claim::pool(&buffer, settings.workers)?;
    let catalog = Arc::new(GuardedCatalog::new(catalog::connect(&settings.catalog).await?));
    // Mirror tables commit their row deltas themselves (the crate cannot): the SQL catalog's compare-and-set or a
    // REST catalog's commit request.
    let commit_catalog = Arc::new(CommitCatalog::new(&settings.catalog)?);
    let retry = RetryPolicy { max_attempts: u32::MAX, ..settings.retry };
    let claim = Claim::new(
        ClaimSettings {
            pipeline: settings.pipeline.clone(),
            interval: settings.interval,
            max_events: settings.max_events,
            target: settings.target.clone(),
            tables: Arc::new(Tables::new(&settings.pipeline, catalog.clone(), commit_catalog.clone())),
            builder: Arc::new(ArrowBatch),
            failures: Arc::new(FailureLog::new(&settings.pipeline, &settings.buffer)),
        },
        pool,
    );
    // ArrowBatch is ordered so a job's slices reach IcebergCommit in position order; IcebergCommit is keyed by
    // job so all slices of one job meet in one writer. Queues of a few slices let the next slices be read and
    // built while the previous one is written.
    let flow = Flow::from_source(claim)
        .stage(ARROW_BATCH, settings.arrow_batch.clone().mode(Mode::Ordered).retry(retry), |_| ArrowBatch)
        .stage(ICEBERG_COMMIT, settings.iceberg_commit.clone().mode(Mode::Keyed).retry(retry), {
            let (pipeline, catalog, file_size) = (settings.pipeline.clone(), catalog.clone(), settings.target_file_size);
            move |_| IcebergCommit::new(&pipeline, catalog.clone(), file_size, commit_catalog.clone())
        })
        .sink(CHECKPOINT, settings.checkpoint.clone().mode(Mode::Unordered), {
            let pipeline = settings.pipeline.clone();
            move |_| Checkpoint::new(&pipeline)
        });
    flow.run(cancel.clone()).await?;
    Ok(())
}
