//! The flusher role: Claim → ArrowBatch → IcebergCommit → Checkpoint, exactly once, any number of processes.
//!
//! - [`claim`]: the source. Takes one table's lease (`FOR UPDATE SKIP LOCKED` on its watermark row, in a
//!   transaction on a pooled connection) and that table's oldest complete segments, and hands them out as
//!   parts of about 50k changes. The lease is held until the checkpoint commits; a flusher that dies releases
//!   it by its connection ending.
//! - [`batch`] (`arrow_batch`): for the first part of a flush, loads or creates the Iceberg table and adds new
//!   columns; for every part, reads its segments' payloads, drops changes Iceberg already has (the repair after
//!   a crash between the two commits) and builds one Arrow RecordBatch. CPU-heavy, its own pool, ordered, so
//!   the next parts are read and built while IcebergCommit writes the previous one.
//! - [`commit`] (`iceberg_commit`): keyed by flush, writes each part into the flush's Parquet writer as it
//!   arrives and, with the last part, commits one snapshot carrying `philotes.last-lsn`/`philotes.last-seq`,
//!   guarded so it lands only on the table state it checked; conflicts and unreachable catalogs are retried
//!   with backoff (a flush whose writing failed is written again from the buffer: the lease holds it).
//! - [`checkpoint`]: in the lease's transaction, deletes the flushed segments, moves the watermark, stores dead
//!   letters; commits.

pub mod batch;
pub mod catalog;
pub mod checkpoint;
pub mod claim;
pub mod commit;
pub mod failures;
mod dictionary;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use philotes_engine::{Flow, FlowError, Mode, RetryPolicy, StageOptions};
use tokio_postgres::Config;
use tokio_util::sync::CancellationToken;

use crate::capture::connection_lost;
use crate::position::Position;
use crate::store::dead_letters::DeadLetter;
use crate::store::watermarks::Lease;
use catalog::{CatalogSettings, GuardedCatalog};

/// Where a source table goes in Iceberg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableTarget {
    /// Namespace (one level).
    pub namespace: String,
    /// Table name.
    pub name: String,
}

/// Maps a source `(schema, table)` to its Iceberg table (YAML `sink.iceberg.namespace` / `tables`).
pub type TargetFn = Arc<dyn Fn(&str, &str) -> TableTarget + Send + Sync>;

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
    /// A table with fewer changes waiting is flushed once its last flush is this old.
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

/// A leased table: the pooled connection whose open transaction holds the lock, and what it locked. Dropping
/// the last reference returns the connection to the pool, which rolls back whatever is still open.
pub struct LeaseHandle {
    /// The connection in the lease's transaction.
    pub client: deadpool_postgres::Object,
    /// The leased table.
    pub lease: Lease,
    /// Where a failing flush of it is recorded for `philotes status`.
    pub failures: Arc<failures::FailureLog>,
}

impl LeaseHandle {
    /// Records that this table's flush failed with `error` and is retried (shown by `philotes status` until the
    /// next successful flush).
    pub async fn record_failure(&self, error: &str) {
        self.failures.record(&self.lease.source_schema, &self.lease.source_table, error).await;
    }
}

impl std::fmt::Debug for LeaseHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{} (checkpoint {})", self.lease.source_schema, self.lease.source_table, self.lease.checkpoint)
    }
}

/// One built part of a flush, from ArrowBatch to IcebergCommit.
#[derive(Debug, Clone)]
pub struct FlushPart {
    /// The flush (lease, segments, last position).
    pub claim: Arc<claim::Claim>,
    /// The part's place in the flush.
    pub index: usize,
    /// Whether it is the flush's last part (the commit comes with it).
    pub last: bool,
    /// The Iceberg table.
    pub table: iceberg::TableIdent,
    /// The part's rows, `None` when there are none to write (Iceberg already has them, or all were rejected).
    pub batch: Option<arrow::array::RecordBatch>,
    /// The part's changes left out, with their reasons.
    pub rejected: Vec<DeadLetter>,
    /// The table cannot take these changes (an incompatible schema change): the whole flush stops the table
    /// with this reason, recorded on its lease row; nothing is written or deleted.
    pub stopped: Option<String>,
}

/// What the Checkpoint stage needs.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The lease (and its transaction).
    pub lease: Arc<LeaseHandle>,
    /// Segments to delete.
    pub segment_ids: Vec<i64>,
    /// The table's position in Iceberg after the commit.
    pub position: Position,
    /// Dead letters to store.
    pub rejected: Vec<DeadLetter>,
    /// Stop the table with this reason instead (see [`FlushPart::stopped`]).
    pub stopped: Option<String>,
}

/// Why the flusher stopped.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// The buffer database failed while preparing.
    #[error("buffer database: {0}")]
    Buffer(#[from] tokio_postgres::Error),
    /// The connection pool could not be built.
    #[error("buffer connection pool: {0}")]
    Pool(String),
    /// The catalog could not be reached or used.
    #[error("iceberg catalog: {0}")]
    Catalog(#[from] iceberg::Error),
    /// A stage stopped the flow.
    #[error(transparent)]
    Flow(#[from] FlowError),
}

impl FlushError {
    /// Whether a restart may succeed (a lost buffer connection).
    pub fn is_restartable(&self) -> bool {
        match self {
            FlushError::Buffer(e) => connection_lost(e),
            FlushError::Pool(_) | FlushError::Catalog(_) => true,
            FlushError::Flow(FlowError::Fatal { cause, .. } | FlowError::RetriesExhausted { cause, .. }) => {
                cause.downcast_ref::<tokio_postgres::Error>().is_some_and(connection_lost)
                    || cause.downcast_ref::<claim::ClaimError>().is_some_and(claim::ClaimError::is_connection)
                    || cause.downcast_ref::<batch::BatchError>().is_some_and(batch::BatchError::is_connection)
                    || cause.downcast_ref::<commit::CommitError>().is_some_and(commit::CommitError::is_connection)
                    || cause.downcast_ref::<checkpoint::CheckpointError>().is_some_and(checkpoint::CheckpointError::is_connection)
            }
            FlushError::Flow(_) => false,
        }
    }
}

/// Runs the flusher until `cancel` fires (it drains the flushes in flight) or an error that a restart cannot
/// mend.
pub async fn run(settings: &FlushSettings, cancel: CancellationToken) -> Result<(), FlushError> {
    crate::supervise::restart_on_failure("flusher restarting: its leases are released, the buffer keeps every change", settings.retry, &cancel, FlushError::is_restartable, || {
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
    let retry = RetryPolicy { max_attempts: u32::MAX, ..settings.retry };
    let source = claim::ClaimSource::new(settings, pool);
    // ArrowBatch is ordered so a flush's parts reach IcebergCommit in position order; IcebergCommit is keyed by
    // flush so all parts of one flush meet in one writer. Queues of a few parts let the next parts be read and
    // built while the previous one is written.
    let flow = Flow::from_source(source)
        .stage(
            batch::NAME,
            settings.arrow_batch.clone().mode(Mode::Ordered).retry(retry),
            {
                let (catalog, settings) = (catalog.clone(), settings.clone());
                move |_| batch::ArrowBatch::new(&settings, catalog.clone())
            },
        )
        .stage(
            commit::NAME,
            settings.iceberg_commit.clone().mode(Mode::Keyed).retry(retry),
            {
                let (catalog, settings) = (catalog.clone(), settings.clone());
                move |_| commit::IcebergCommit::new(&settings, catalog.clone())
            },
        )
        .sink(
            checkpoint::NAME,
            settings.checkpoint.clone().mode(Mode::Unordered),
            {
                let pipeline = settings.pipeline.clone();
                move |_| checkpoint::Checkpoint::new(&pipeline)
            },
        );
    flow.run(cancel.clone()).await?;
    Ok(())
}

/// Table properties of every table philotes creates.
pub(crate) fn table_properties(pipeline: &str) -> HashMap<String, String> {
    HashMap::from([
        // Exactly once: the crate's own retry would re-apply an append on a newer table; we retry ourselves.
        ("commit.retry.num-retries".to_string(), "0".to_string()),
        ("write.parquet.compression-codec".to_string(), "zstd".to_string()),
        ("philotes.pipeline".to_string(), pipeline.to_string()),
    ])
}
