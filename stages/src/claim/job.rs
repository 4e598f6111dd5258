//! The flush job: one claimed table's flush, made by Claim and shared by the stages after it. ArrowBatch,
//! IcebergCommit and Checkpoint take a job (or an item that holds one) and depend on it, never on each other:
//! it holds the lease's transaction, the claimed segments and their schema versions, prepares the Iceberg table
//! once, and reads its slices from the buffer again when IcebergCommit must write the flush again.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use iceberg::spec::Schema;
use iceberg::TableIdent;
use philotes_engine::StageError;
use philotes_schemas::TableSchema;
use tokio::sync::OnceCell;

use super::failures::FailureLog;
use crate::catalog::table::{Prepared, Tables};
use crate::catalog::partition::PartitionField;
use crate::position::{Lsn, Position};
use crate::store::dead_letters::DeadLetter;
use crate::store::watermarks::{self, ClaimedSegment, Lease, Payloads};
use crate::table_id::TableId;

/// One claimed flush.
pub struct FlushJob {
    /// Names the flush in this process (IcebergCommit's workers are keyed by it).
    pub id: u64,
    /// The Iceberg table the flush writes.
    pub target: TableIdent,
    /// Whether the table is a mirror (`mode: mirror`): IcebergCommit folds the flush per key.
    pub mirror: bool,
    /// The table's partition spec in the YAML (empty: unpartitioned).
    pub partition: Vec<PartitionField>,
    /// The lease: the table, its checkpoint and watermark.
    pub lease: Lease,
    /// The token of the retry (`philotes dead-letters retry`) whose segments this job holds, `None` for a normal
    /// flush. A retry's changes are behind the table's watermark: they are not filtered by position but written
    /// once by the token, which the snapshot summary records ([`crate::catalog::SUMMARY_RETRY`]).
    pub retry: Option<String>,
    /// The claimed segments, oldest first (without payloads).
    pub segments: Vec<ClaimedSegment>,
    /// The position of the last claimed change: what the snapshot summary records.
    pub last: Position,
    /// The segments of each slice, in order.
    pub slices: Vec<Range<usize>>,
    /// The pooled connection whose open transaction holds the lease. Dropping the job returns it to the pool,
    /// which rolls back whatever is still open (a flush abandoned mid-way releases its lease).
    pub(super) client: deadpool_postgres::Object,
    /// Every schema version of the table (the segments use some of them), as recorded.
    pub(super) versions: BTreeMap<i32, Arc<TableSchema>>,
    /// The Iceberg table made ready, once ([`FlushJob::prepared`]).
    pub(super) prepared: OnceCell<Prepared>,
    /// Prepares the Iceberg table.
    pub(super) tables: Arc<Tables>,
    /// Builds a slice again (ArrowBatch's builder).
    pub(super) builder: Arc<dyn BuildSlice>,
    /// Where a failing flush is recorded.
    pub(super) failures: Arc<FailureLog>,
    /// The flush's span (`Span::none()` with traces off): the parent of the stages' spans for this job, ended
    /// when the job is dropped after its checkpoint ([`crate::trace`]).
    pub span: tracing::Span,
}

impl std::fmt::Debug for FlushJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "flush {} of {} (checkpoint {}): {} segments up to {}",
            self.id, self.lease.table, self.lease.checkpoint, self.segments.len(), self.last)
    }
}

impl FlushJob {
    /// The source table.
    pub fn table(&self) -> &TableId {
        &self.lease.table
    }

    /// The session of the lease's transaction: Checkpoint commits on it.
    pub fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }

    /// The committed position that filters this job's changes: `committed` itself, or none for a retry (whose
    /// changes are all behind it and are written once by their token instead).
    pub fn filter(&self, committed: Option<Position>) -> Option<Position> {
        if self.retry.is_some() {
            None
        } else {
            committed
        }
    }

    /// The claimed segments of slice `index`.
    pub fn slice(&self, index: usize) -> &[ClaimedSegment] {
        self.slices.get(index).map_or(&[], |range| &self.segments[range.clone()])
    }

    /// The Iceberg table made ready for this flush (created, every used schema version's columns added) and its
    /// committed position; prepared once, by the first slice that asks. A catalog or warehouse failure is
    /// recorded for `philotes status` and retried with backoff.
    pub async fn prepared(&self) -> Result<&Prepared, StageError> {
        self.prepared
            .get_or_try_init(|| async {
                let mut used: Vec<(i32, Lsn)> = Vec::new();
                for s in &self.segments {
                    if !used.iter().any(|(n, _)| *n == s.schema_version) {
                        used.push((s.schema_version, s.first.commit_lsn));
                    }
                }
                match self.tables.prepare(&self.target, self.table(), &self.versions, &used, self.mirror, &self.partition).await {
                    Ok(prepared) => Ok(prepared),
                    Err(e) => {
                        let failure = format!("preparing iceberg table {} (source {}): {}", self.target, self.table(), crate::report::catalog_failure(&e));
                        tracing::warn!(error = %failure, "iceberg catalog or warehouse unavailable; retrying with backoff");
                        self.record_failure(&failure).await;
                        Err(StageError::retryable(e))
                    }
                }
            })
            .await
    }

    /// Every version, under the Iceberg names once the table is prepared (as recorded before).
    fn named(&self) -> Option<&HashMap<i32, Arc<TableSchema>>> {
        match self.prepared.get() {
            Some(Prepared::Ready { versions, .. }) => Some(versions),
            _ => None,
        }
    }

    /// The newest schema version this job's changes were written with (it names a mirror's key), its columns under
    /// their Iceberg names once the table is prepared.
    pub fn latest_version(&self) -> Result<&Arc<TableSchema>, JobError> {
        let newest = self.segments.iter().max_by_key(|s| s.schema_version).ok_or_else(|| JobError::MissingVersion {
            table: self.table().clone(),
            segment: 0,
            version: 0,
        })?;
        self.version(newest)
    }

    /// The schema version `segment`'s changes were written with, its columns under their Iceberg names once the
    /// table is prepared (a renamed column's older rows go to the renamed field).
    pub fn version(&self, segment: &ClaimedSegment) -> Result<&Arc<TableSchema>, JobError> {
        let n = segment.schema_version;
        self.named().and_then(|named| named.get(&n)).or_else(|| self.versions.get(&n)).ok_or_else(|| JobError::MissingVersion {
            table: self.table().clone(),
            segment: segment.id,
            version: n,
        })
    }

    /// The number of `version` (one of this job's, as [`FlushJob::version`] gave it).
    pub fn version_number(&self, version: &Arc<TableSchema>) -> Option<i32> {
        let named = self.named().into_iter().flatten();
        named.chain(self.versions.iter()).find(|(_, v)| Arc::ptr_eq(v, version)).map(|(n, _)| *n)
    }

    /// Reads the payloads of slice `index` from the buffer, on the lease's connection (as often as asked: the
    /// lease keeps the segments there until the checkpoint deletes them).
    pub async fn read(&self, index: usize) -> Result<Payloads, JobError> {
        let segments = self.slice(index);
        let ids: Vec<i64> = segments.iter().map(|s| s.id).collect();
        let payloads = watermarks::payloads(&**self.client, &ids).await?;
        let found = payloads.iter().filter(|(id, _)| ids.contains(id)).count();
        if found != ids.len() {
            return Err(JobError::SegmentsGone { expected: ids.len(), found });
        }
        Ok(payloads)
    }

    /// Builds slice `index` again in `schema`, leaving out what Iceberg has (changes up to `committed`): how
    /// IcebergCommit writes a flush again from the buffer, with ArrowBatch's builder but without ArrowBatch.
    pub async fn build(&self, index: usize, schema: &Schema, committed: Option<Position>) -> Result<SliceRows, StageError> {
        self.builder.build(self, index, schema, committed).await
    }

    /// Records that this table's flush failed with `error` and is retried (shown by `philotes status` until the
    /// next successful flush).
    pub async fn record_failure(&self, error: &str) {
        self.failures.record(&self.lease.table, error).await;
    }
}

/// Builds a slice's rows: ArrowBatch's builder, handed to every job by the flusher role.
#[async_trait]
pub trait BuildSlice: Send + Sync {
    /// The rows of slice `index` of `job` in `schema`, without the changes at or before `committed`.
    async fn build(&self, job: &FlushJob, index: usize, schema: &Schema, committed: Option<Position>)
        -> Result<SliceRows, StageError>;
}

/// Why a job cannot give what a stage asks of it.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The buffer database failed (a lost connection restarts the flusher).
    #[error("buffer database: {0}")]
    Sql(#[from] tokio_postgres::Error),
    /// A segment names a schema version the buffer does not have.
    #[error("{table}: segment {segment} uses schema version {version}, which philotes.schemas does not have")]
    MissingVersion {
        /// The table.
        table: TableId,
        /// The segment id.
        segment: i64,
        /// The version.
        version: i32,
    },
    /// Claimed segments are no longer in the buffer: only someone deleting them by hand does that.
    #[error("{expected} claimed segments, but the buffer holds only {found} of them")]
    SegmentsGone {
        /// Segments claimed.
        expected: usize,
        /// Segments read.
        found: usize,
    },
}

/// A lost buffer connection restarts the flusher (the lease is released with it); the rest stops it.
impl From<JobError> for StageError {
    fn from(error: JobError) -> Self {
        match error {
            JobError::Sql(e) => crate::store::stage_error(e, |e| Box::new(JobError::Sql(e))),
            other => StageError::fatal(other),
        }
    }
}

/// A slice of consecutive segments of a job: the unit ArrowBatch reads and builds and IcebergCommit writes, so
/// one table's flush keeps both cores busy (the next slice is read and built while the previous one is
/// written). The snapshot is committed once, with the last slice. Claim → ArrowBatch.
#[derive(Debug, Clone)]
pub struct Slice {
    /// The job it belongs to.
    pub job: Arc<FlushJob>,
    /// Its place in the job, from 0.
    pub index: usize,
}

impl Slice {
    /// Whether this slice ends its job (IcebergCommit commits with it).
    pub fn is_last(&self) -> bool {
        self.index + 1 == self.job.slices.len()
    }
}

/// What a slice comes to.
#[derive(Debug, Clone)]
pub enum SliceRows {
    /// Rows to write (`None` when Iceberg already has them all, or all were rejected) and the changes left out
    /// of them, with their reasons (stored as dead letters by the checkpoint that deletes their segments).
    Write {
        /// The rows.
        batch: Option<RecordBatch>,
        /// The changes left out.
        rejected: Vec<DeadLetter>,
    },
    /// The table cannot take these changes (an incompatible schema change): the whole job stops the table with
    /// this reason, recorded on its lease row; nothing is written or deleted.
    Stop(String),
}

/// A built slice. ArrowBatch → IcebergCommit.
#[derive(Debug, Clone)]
pub struct BuiltSlice {
    /// The slice.
    pub slice: Slice,
    /// Its rows.
    pub rows: SliceRows,
}

/// What a job came to in Iceberg. IcebergCommit → Checkpoint.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The job (its lease's transaction is where the checkpoint goes).
    pub job: Arc<FlushJob>,
    /// What to record.
    pub outcome: Outcome,
}

/// What the checkpoint records.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Iceberg holds the job's changes up to `position`: delete its segments, move the watermark, store the
    /// dead letters.
    Written {
        /// The table's position in Iceberg after the commit.
        position: Position,
        /// Dead letters to store.
        rejected: Vec<DeadLetter>,
    },
    /// Stop the table with this reason (see [`SliceRows::Stop`]).
    Stopped(String),
}
