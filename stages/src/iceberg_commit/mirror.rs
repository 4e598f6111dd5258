//! IcebergCommit for a mirror table: the flush's slices are kept until the last one, folded per key
//! ([`crate::mirror::fold`]), their unchanged TOAST values filled ([`crate::mirror::toast`]), written as one set
//! of data files and one of equality-delete files, and committed as one row delta ([`super::row_delta`]) whose
//! compare-and-set (the SQL catalog's, or a REST catalog's commit request with its requirements) lands only on the
//! table state the flush was checked against.
//!
//! Nothing is written ahead: a key's last image is known only at the flush's end. A commit that loses the
//! compare-and-set (another commit landed: only an operator's tool or `philotes compact` can do that while the
//! flusher holds the lease) is retried from the start on the new state, as any other conflict.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take};
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{DataFile, TableMetadataBuildResult};
use iceberg::table::Table;
use tokio::sync::Mutex;
use tokio_postgres::Config;

use super::row_delta::rest::RestCommitter;
use super::row_delta::{self, RowDelta, RowDeltaError};
use super::{writer, Committer, IcebergCommitError, Pending, Writer};
use crate::catalog::table::Prepared;
use crate::catalog::{CatalogSettings, SUMMARY_LAST_LSN, SUMMARY_LAST_SEQ, SUMMARY_PIPELINE};
use crate::claim::job::{FlushJob, Outcome, SliceRows};
use crate::fault;
use crate::mirror::{fold, toast, MirrorLayout};
use crate::position::Position;
use crate::telemetry;

/// A mirror flush's slices as ArrowBatch built them, kept for the commit.
pub(super) struct MirrorSlices {
    /// The table state they were built on (its current snapshot) and what it had committed.
    snapshot: Option<i64>,
    after: Option<Position>,
    /// The batches, in the table's working schema.
    batches: Vec<RecordBatch>,
}

/// Where a mirror flush's row delta is made visible: the SQL catalog's compare-and-set on its own database (one
/// session per flusher, opened on first use and again after it broke), or a REST catalog's commit request.
pub enum CommitCatalog {
    /// The SQL catalog's database.
    Sql(Box<SqlCatalogSession>),
    /// A REST catalog.
    Rest(Box<RestCommitter>),
}

/// The SQL catalog `name` (`iceberg_tables.catalog_name`) in the database `config` points at, and the session.
pub struct SqlCatalogSession {
    name: String,
    config: Config,
    client: Mutex<Option<tokio_postgres::Client>>,
}

impl CommitCatalog {
    /// The catalog `settings` name.
    pub fn new(settings: &CatalogSettings) -> Result<Self, tokio_postgres::Error> {
        Ok(match settings {
            CatalogSettings::Sql { name, uri, .. } => CommitCatalog::Sql(Box::new(SqlCatalogSession {
                name: name.clone(),
                config: crate::store::tls::parse_config(uri)?,
                client: Mutex::new(None),
            })),
            CatalogSettings::Rest { uri, warehouse, props, .. } => {
                CommitCatalog::Rest(Box::new(RestCommitter::new(uri, warehouse.clone(), props.clone())))
            }
        })
    }

    /// Makes `staged` visible, or says why not ([`RowDeltaError::StaleBase`]: another commit landed first).
    async fn commit(&self, staged: row_delta::StagedRowDelta) -> Result<(), IcebergCommitError> {
        match self {
            CommitCatalog::Sql(sql) => {
                let client = sql.session().await?;
                let session = client.as_ref().expect("connected by session()");
                row_delta::commit_sql(session, &sql.name, staged).await?;
            }
            CommitCatalog::Rest(rest) => rest.commit(staged).await?,
        }
        Ok(())
    }

    /// Commits a change of `base`'s metadata that adds no snapshot (a new schema, a new partition spec): `built`
    /// is `base.metadata().clone().into_builder(…)…build()`. The SQL catalog gets the new metadata JSON and its
    /// compare-and-set; a REST catalog gets `built`'s updates (the server writes the JSON). Either lands only if
    /// the table is still at `base` ([`RowDeltaError::StaleBase`] otherwise); load the table again afterwards.
    pub async fn commit_metadata(&self, base: &Table, built: TableMetadataBuildResult) -> Result<(), IcebergCommitError> {
        match self {
            CommitCatalog::Sql(sql) => {
                let client = sql.session().await?;
                let session = client.as_ref().expect("connected by session()");
                row_delta::commit_metadata_sql(session, &sql.name, base, built.metadata).await?;
            }
            CommitCatalog::Rest(rest) => rest.commit_updates(base, built.changes).await?,
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl crate::catalog::table::CommitMetadata for CommitCatalog {
    async fn commit_metadata(&self, base: &Table, built: TableMetadataBuildResult) -> Result<(), iceberg::Error> {
        CommitCatalog::commit_metadata(self, base, built).await.map_err(|e| {
            let kind = if e.is_conflict() { iceberg::ErrorKind::CatalogCommitConflicts } else { iceberg::ErrorKind::Unexpected };
            iceberg::Error::new(kind, crate::report::chain(&e))
        })
    }
}

impl SqlCatalogSession {
    /// The session, opened on first use and again after it broke.
    async fn session(&self) -> Result<tokio::sync::MutexGuard<'_, Option<tokio_postgres::Client>>, IcebergCommitError> {
        let mut client = self.client.lock().await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            *client = Some(crate::store::connect(&self.config).await.map_err(IcebergCommitError::CatalogDatabase)?);
        }
        Ok(client)
    }
}

impl std::fmt::Debug for CommitCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommitCatalog::Sql(sql) => write!(f, "SQL catalog {}", sql.name),
            CommitCatalog::Rest(_) => write!(f, "REST catalog"),
        }
    }
}

/// Keeps a built slice of a mirror flush for its commit (the first keeps the table state it was built on). If
/// that state cannot be had, nothing more is kept: the commit builds the flush again from the buffer.
pub(super) async fn keep(pending: &mut Pending, job: &FlushJob, batch: &RecordBatch) {
    if matches!(pending.writer, Writer::Unusable) {
        return;
    }
    if pending.mirror.is_none() {
        let Ok(Prepared::Ready { table, committed, .. }) = job.prepared().await else {
            pending.writer = Writer::Unusable;
            return;
        };
        pending.mirror = Some(MirrorSlices {
            snapshot: table.metadata().current_snapshot_id(),
            after: *committed,
            batches: Vec::new(),
        });
    }
    if let Some(kept) = &mut pending.mirror {
        kept.batches.push(batch.clone());
    }
}

impl Committer {
    /// Commits a mirror flush on `table` (loaded, its committed position `committed` checked to be before the
    /// flush's last change).
    pub(super) async fn commit_mirror(
        &self,
        job: &FlushJob,
        pending: &mut Pending,
        table: Table,
        committed: Option<Position>,
    ) -> Result<Outcome, IcebergCommitError> {
        let started = std::time::Instant::now();
        let latest = job.latest_version().map_err(|e| IcebergCommitError::Rebuild(e.into()))?;
        let layout = match MirrorLayout::new(&table, latest) {
            Ok(layout) => layout,
            Err(e) => return Ok(Outcome::Stopped(format!("{}: {e}", job.table()))),
        };
        let kept = pending.mirror.take().filter(|kept| {
            kept.after == committed && kept.snapshot == table.metadata().current_snapshot_id()
        });
        let batches = match kept {
            Some(kept) => kept.batches.iter().map(|b| writer::rows_after(b, committed)).collect::<Result<Vec<_>, _>>()?,
            None => {
                tracing::info!(table = %job.target, "building the mirror flush again from the buffer");
                let mut batches = Vec::new();
                for index in 0..job.slices.len() {
                    match job.build(index, &layout.working, committed).await.map_err(IcebergCommitError::Rebuild)? {
                        SliceRows::Stop(reason) => return Ok(Outcome::Stopped(reason)),
                        SliceRows::Write { batch, .. } => batches.extend(batch),
                    }
                }
                batches
            }
        };
        let working = Arc::new(schema_to_arrow_schema(&layout.working)?);
        let batch = concat_batches(&working, &batches)?;
        drop(batches);
        if batch.num_rows() == 0 {
            return Ok(self.written(job.last, pending));
        }

        let schema = table.metadata().current_schema();
        let target = Arc::new(schema_to_arrow_schema(schema)?);
        let key: Vec<usize> = layout
            .key
            .iter()
            .map(|id| schema.as_struct().fields().iter().position(|f| f.id == *id))
            .collect::<Option<_>>()
            .ok_or(IcebergCommitError::MissingColumn("a key column"))?;
        let folded = fold::fold(&batch, &key)?;
        let filled = toast::fill(&batch, &folded, &target, &key, &table).await?;
        for (row, column) in &filled.unknown {
            tracing::warn!(table = %job.table(), row, column = %column,
                "an unchanged TOAST value is in no earlier image and the key has no row in the Iceberg table \
                 (a row older than the pipeline, with snapshot: never?): written NULL");
        }
        let deletes = {
            let rows = UInt32Array::from(folded.deletes.clone());
            let columns = (0..target.fields().len()).map(|c| take(batch.column(c), &rows, None)).collect::<Result<_, _>>()?;
            RecordBatch::try_new(target.clone(), columns)?
        };
        let data_files = self.write_files(&table, &filled.rows, None).await?;
        let delete_files = self.write_files(&table, &deletes, Some(&layout.key)).await?;
        if data_files.is_empty() && delete_files.is_empty() && !folded.truncate {
            return Ok(self.written(job.last, pending));
        }
        fault::hit(fault::AFTER_PARQUET);
        let last = job.last;
        let (rows, deleted, files) = (filled.rows.num_rows() as u64, deletes.num_rows(), data_files.len() + delete_files.len());
        let properties = HashMap::from([
            (SUMMARY_PIPELINE.to_string(), self.pipeline.clone()),
            (SUMMARY_LAST_LSN.to_string(), last.commit_lsn.to_string()),
            (SUMMARY_LAST_SEQ.to_string(), last.seq.to_string()),
        ]);
        let delta = RowDelta { data_files, delete_files, remove_all: folded.truncate, properties };
        let staged = match row_delta::stage(&table, delta).await {
            Err(RowDeltaError::Invalid { reason, .. }) => {
                return Ok(Outcome::Stopped(format!("{}: mirror table {}: {reason}", job.table(), job.target)))
            }
            staged => staged?,
        };
        fault::delay_before_commit(&job.target.to_string()).await;
        self.commit_catalog.commit(staged).await?;
        fault::hit(fault::AFTER_ICEBERG_COMMIT);
        tracing::debug!(flush = job.id, changes = batch.num_rows(), rows, deletes = deleted, files,
            truncate = folded.truncate, commit_ms = started.elapsed().as_millis() as u64, "mirror flush committed");
        let attributes = telemetry::table(job.table());
        let metrics = telemetry::metrics();
        metrics.rows_written.add(rows, &attributes);
        metrics.files_written.add(files as u64, &attributes);
        metrics.snapshots.add(1, &attributes);
        metrics.commit_seconds.record(started.elapsed().as_secs_f64(), &attributes);
        metrics.cdc_events_processed.add(batch.num_rows() as u64, &attributes);
        metrics.cdc_batches_written.add(1, &attributes);
        let mut times = telemetry::CommitTimes::default();
        times.add(&batch);
        times.record(&attributes);
        Ok(self.written(last, pending))
    }

    /// Writes `rows` (the table's Arrow schema) as data files, or as equality-delete files on `key`.
    async fn write_files(&self, table: &Table, rows: &RecordBatch, key: Option<&[i32]>) -> Result<Vec<DataFile>, IcebergCommitError> {
        if rows.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let mut writer = match key {
            None => writer::open(&self.pipeline, table, rows, self.target_file_size).await?,
            Some(key) => writer::open_equality_deletes(&self.pipeline, table, key, self.target_file_size).await?,
        };
        writer.write(rows.clone()).await?;
        Ok(writer.close().await?)
    }
}
