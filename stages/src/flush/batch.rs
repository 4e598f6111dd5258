//! ArrowBatch: a part of a claim → one Arrow RecordBatch in the Iceberg table's current schema.
//!
//! The first part of a claim creates the table on first use and adds new columns; every part reads its
//! segments' payloads on the lease's connection and drops every change that Iceberg already has (its snapshot
//! summary records the last committed position): the repair after a crash between the Iceberg commit and the
//! buffer checkpoint.

use std::sync::Arc;

use iceberg::spec::Schema;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{ErrorKind, NamespaceIdent, TableCreation, TableIdent};
use philotes_engine::{Emitter, Stage, StageError};
use philotes_schemas::TableSchema;

use arrow::array::RecordBatch;

use super::catalog::{committed_position, GuardedCatalog};
use super::claim::{Claim, Part, Prepared};
use super::{table_properties, FlushPart, FlushSettings, TargetFn};
use crate::arrow_batch::{self, ArrowBatchError, RejectedRow};
use crate::position::Position;
use crate::segment::{self, SegmentEvent};
use crate::store::dead_letters::DeadLetter;
use crate::store::watermarks::{self, ClaimedSegment};

/// The stage's name in metrics, spans and YAML (`stages.arrow_batch`).
pub const NAME: &str = arrow_batch::NAME;

/// Why a batch could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The catalog or warehouse failed (retried).
    #[error("arrow_batch: iceberg catalog: {0}")]
    Catalog(#[from] iceberg::Error),
    /// A segment does not decode.
    #[error("arrow_batch: {0}")]
    Segment(#[from] segment::SegmentError),
    /// A segment names a schema version the buffer does not have.
    #[error("arrow_batch: {table}: segment {segment} uses schema version {version}, which philotes.schemas does not have")]
    MissingVersion {
        /// The table.
        table: String,
        /// The segment id.
        segment: i64,
        /// The version.
        version: i32,
    },
    /// The rows cannot be written into the table (an incompatible schema change): the table stops.
    #[error("{0}")]
    Schema(#[from] ArrowBatchError),
    /// The buffer database failed while reading payloads (the flusher restarts on a lost connection).
    #[error("arrow_batch: buffer database: {0}")]
    Sql(#[from] tokio_postgres::Error),
    /// Claimed segments are no longer in the buffer: only someone deleting them by hand does that.
    #[error("arrow_batch: {expected} claimed segments, but the buffer holds only {found} of them")]
    SegmentsGone {
        /// Segments claimed.
        expected: usize,
        /// Segments read.
        found: usize,
    },
}

impl BatchError {
    /// Whether the buffer connection was lost (the flusher restarts).
    pub fn is_connection(&self) -> bool {
        matches!(self, BatchError::Sql(e) if crate::capture::connection_lost(e))
    }
}

/// The ArrowBatch stage.
pub struct ArrowBatch {
    pipeline: String,
    catalog: Arc<GuardedCatalog>,
    target: TargetFn,
}

impl ArrowBatch {
    /// A stage for the flusher of `settings`.
    pub fn new(settings: &FlushSettings, catalog: Arc<GuardedCatalog>) -> Self {
        Self { pipeline: settings.pipeline.clone(), catalog, target: settings.target.clone() }
    }

    /// Loads the table, creating it (and its namespace) from `latest` when missing.
    async fn table(&self, ident: &TableIdent, latest: &TableSchema) -> Result<Table, BatchError> {
        let catalog = self.catalog.inner();
        match catalog.load_table(ident).await {
            Ok(table) => return Ok(table),
            Err(e) if e.kind() != ErrorKind::TableNotFound && !e.to_string().contains("not found") && !e.to_string().contains("does not exist") => {
                return Err(e.into())
            }
            Err(_) => {}
        }
        let namespace = ident.namespace().clone();
        if !catalog.namespace_exists(&namespace).await? {
            if let Err(e) = catalog.create_namespace(&namespace, Default::default()).await {
                // Another flusher may have created it a moment ago.
                if !catalog.namespace_exists(&namespace).await? {
                    return Err(e.into());
                }
            }
        }
        let schema = arrow_batch::changelog_schema(latest)?;
        let creation = TableCreation::builder()
            .name(ident.name().to_string())
            .schema(schema)
            .properties(table_properties(&self.pipeline))
            .build();
        match catalog.create_table(&namespace, creation).await {
            Ok(table) => {
                tracing::info!(table = %ident, "created iceberg table");
                Ok(table)
            }
            Err(e) => catalog.load_table(ident).await.map_err(|_| BatchError::Catalog(e)),
        }
    }

    /// Adds the columns of `versions` the table lacks.
    async fn evolve(&self, mut table: Table, versions: &[&Arc<TableSchema>]) -> Result<Table, BatchError> {
        for version in versions {
            let missing = arrow_batch::missing_columns(table.metadata().current_schema(), version)?;
            if missing.is_empty() {
                continue;
            }
            let tx = Transaction::new(&table);
            let mut action = tx.update_schema();
            for (name, field_type) in &missing {
                action = action.add_column(iceberg::transaction::AddColumn::optional(name, field_type.clone()));
            }
            let tx = action.apply(tx)?;
            table = tx.commit(self.catalog.inner().as_ref()).await?;
            tracing::info!(table = %table.identifier(), columns = ?missing.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                "added columns to the iceberg table");
        }
        Ok(table)
    }

    /// Makes the claim's Iceberg table ready (created, every used schema version's columns added) and reads its
    /// committed position; once per claim, by the first part that gets here.
    async fn prepare(&self, claim: &Claim, ident: &TableIdent) -> Result<Prepared, BatchError> {
        let source = source_table(claim);
        let mut used = Vec::new();
        for s in &claim.segments {
            let version = version_of(claim, s)?;
            if !used.iter().any(|v: &&Arc<TableSchema>| Arc::ptr_eq(v, version)) {
                used.push(version);
            }
        }
        let latest = claim.versions.iter().max_by_key(|(v, _)| **v).map(|(_, s)| s.clone());
        let Some(latest) = latest else {
            return Err(BatchError::MissingVersion { table: source, segment: claim.segments[0].id, version: 0 });
        };
        let stopped = |e: ArrowBatchError| {
            let reason = format!("{source}: {e}");
            tracing::error!(reason = %reason, "table stopped");
            Ok(Prepared::Stopped(reason))
        };
        let table = match self.table(ident, &latest).await {
            Err(BatchError::Schema(e)) => return stopped(e),
            other => other?,
        };
        let table = match self.evolve(table, &used).await {
            Err(BatchError::Schema(e)) => return stopped(e),
            other => other?,
        };
        let committed = committed_position(&table, &self.pipeline);
        Ok(Prepared::Ready { committed, table: Box::new(table) })
    }

    fn ident(&self, claim: &Claim) -> TableIdent {
        let lease = &claim.lease.lease;
        let target = (self.target)(&lease.source_schema, &lease.source_table);
        TableIdent::new(NamespaceIdent::new(target.namespace), target.name)
    }
}

/// `schema.table` of the claimed source table.
fn source_table(claim: &Claim) -> String {
    format!("{}.{}", claim.lease.lease.source_schema, claim.lease.lease.source_table)
}

/// The schema version a claimed segment was written with.
fn version_of<'c>(claim: &'c Claim, segment: &ClaimedSegment) -> Result<&'c Arc<TableSchema>, BatchError> {
    claim.versions.get(&segment.schema_version).ok_or_else(|| BatchError::MissingVersion {
        table: source_table(claim),
        segment: segment.id,
        version: segment.schema_version,
    })
}

/// A part's rows and the changes left out of them.
pub(crate) struct Built {
    /// The rows to write, if any.
    pub batch: Option<RecordBatch>,
    /// The changes left out.
    pub rejected: Vec<RejectedRow>,
}

/// Reads the segments `segments` of `claim` (a part) and builds their batch in `schema`, leaving out what
/// Iceberg already has (changes up to `committed`). IcebergCommit calls it too, to write a flush again.
pub(crate) async fn build_part(
    claim: &Claim,
    segments: &[ClaimedSegment],
    schema: &Schema,
    committed: Option<Position>,
) -> Result<Built, BatchError> {
    let ids: Vec<i64> = segments.iter().map(|s| s.id).collect();
    let started = std::time::Instant::now();
    let payloads = watermarks::payloads(&**claim.lease.client, &ids).await?;
    let read = started.elapsed();
    let found = payloads.iter().filter(|(id, _)| segments.iter().any(|s| s.id == *id)).count();
    if found != ids.len() {
        return Err(BatchError::SegmentsGone { expected: ids.len(), found });
    }
    // The usual case: nothing here is in Iceberg yet. Each segment's changes go from its payload straight into
    // the Arrow builders (no owned values). A segment this path cannot take (unchanged TOAST values, which
    // earlier images of the whole part may fill; a change to reject; an interval or array) sends the part down
    // the general path below.
    if committed.is_none_or(|c| segments.iter().all(|s| s.first > c)) {
        let rows = segments.iter().map(|s| usize::try_from(s.events).unwrap_or(0)).sum();
        let mut builder: Option<arrow_batch::BatchBuilder> = None;
        let mut streamed = true;
        for (id, payload) in payloads.iter() {
            let Some(s) = segments.iter().find(|s| s.id == id) else { continue };
            let version = version_of(claim, s)?;
            let builder = match &mut builder {
                Some(builder) => builder,
                None => builder.insert(arrow_batch::BatchBuilder::from_payload(schema, rows, version, payload)?),
            };
            if !builder.append_payload(schema, version, payload)? {
                streamed = false;
                break;
            }
        }
        if streamed {
            let output = match builder {
                Some(builder) => Some(builder.finish()?),
                None => None,
            };
            tracing::debug!(flush = claim.id, first_segment = ids[0], segments = ids.len(), read_ms = read.as_millis() as u64,
                decode_and_build_ms = (started.elapsed() - read).as_millis() as u64, "part built");
            return Ok(match output {
                Some(output) => Built {
                    batch: (output.batch.num_rows() > 0).then_some(output.batch),
                    rejected: output.rejected,
                },
                None => Built { batch: None, rejected: Vec::new() },
            });
        }
    }
    // Changes Iceberg already has are not written again. Their dead letters, though, were never stored: a
    // segment's dead letters are stored by the checkpoint that deletes it, and it is still here.
    let mut groups: Vec<(Arc<TableSchema>, Vec<SegmentEvent>)> = Vec::with_capacity(ids.len());
    let mut already: Vec<(Arc<TableSchema>, Vec<SegmentEvent>)> = Vec::new();
    for (id, payload) in payloads.iter() {
        let Some(s) = segments.iter().find(|s| s.id == id) else { continue };
        let version = version_of(claim, s)?;
        let mut events = segment::decode(payload)?;
        if let Some(c) = committed.filter(|c| s.first <= *c) {
            let (old, new): (Vec<_>, Vec<_>) = events.into_iter().partition(|e| e.position() <= c);
            if !old.is_empty() {
                already.push((version.clone(), old));
            }
            events = new;
        }
        if !events.is_empty() {
            groups.push((version.clone(), events));
        }
    }
    let decoded = started.elapsed();
    let mut rejected = Vec::new();
    if !already.is_empty() {
        tracing::info!(table = %source_table(claim),
            changes = already.iter().map(|(_, e)| e.len()).sum::<usize>(),
            "claimed changes are already in iceberg (a flush crashed before its checkpoint): not writing them again");
        rejected.extend(arrow_batch::build_batch(schema, &already)?.rejected);
    }
    let batch = if groups.is_empty() {
        None
    } else {
        let output = arrow_batch::build_batch(schema, &groups)?;
        rejected.extend(output.rejected);
        (output.batch.num_rows() > 0).then_some(output.batch)
    };
    tracing::debug!(flush = claim.id, first_segment = ids[0], segments = ids.len(), read_ms = read.as_millis() as u64,
        decode_ms = (decoded - read).as_millis() as u64, build_ms = (started.elapsed() - decoded).as_millis() as u64, "part built");
    Ok(Built { batch, rejected })
}


impl Stage for ArrowBatch {
    type In = Part;
    type Out = FlushPart;

    async fn process(&mut self, part: &Part, out: &mut Emitter<FlushPart>) -> Result<(), StageError> {
        let claim = &part.claim;
        let lease = &claim.lease.lease;
        let table = self.ident(claim);
        let mut flush_part =
            FlushPart { claim: claim.clone(), index: part.index, last: part.is_last(), table, batch: None, rejected: Vec::new(), stopped: None };
        let prepared = claim.prepared.get_or_try_init(|| self.prepare(claim, &flush_part.table)).await;
        let built = match prepared {
            Ok(Prepared::Ready { table, committed }) => {
                build_part(claim, part.segments(), table.metadata().current_schema(), *committed).await
            }
            Ok(Prepared::Stopped(reason)) => {
                flush_part.stopped = Some(reason.clone());
                out.emit(flush_part);
                return Ok(());
            }
            Err(e) => Err(e),
        };
        match built {
            Ok(built) => {
                flush_part.batch = built.batch;
                flush_part.rejected = built
                    .rejected
                    .into_iter()
                    .map(|r| DeadLetter {
                        stage: NAME.to_string(),
                        table: Some((lease.source_schema.clone(), lease.source_table.clone())),
                        commit_lsn: Some(r.position.commit_lsn),
                        seq: Some(r.position.seq),
                        reason: r.reason,
                        payload: r.rendering,
                    })
                    .collect();
                out.emit(flush_part);
                Ok(())
            }
            Err(BatchError::Catalog(e)) => {
                let failure = format!(
                    "preparing iceberg table {} (source {}.{}): {}",
                    flush_part.table, lease.source_schema, lease.source_table, crate::report::chain(&e)
                );
                tracing::warn!(error = %failure, "iceberg catalog or warehouse unavailable; retrying with backoff");
                claim.lease.record_failure(&failure).await;
                Err(StageError::retryable(BatchError::Catalog(e)))
            }
            Err(BatchError::Schema(e)) => {
                // Only this table stops: its lease row records why, the other tables flow on.
                let reason = format!("{}.{}: {e}", lease.source_schema, lease.source_table);
                tracing::error!(reason = %reason, "table stopped");
                flush_part.stopped = Some(reason);
                out.emit(flush_part);
                Ok(())
            }
            Err(e) => Err(StageError::fatal(e)),
        }
    }
}
