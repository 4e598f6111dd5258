//! ArrowBatch: a claim → one Arrow RecordBatch in the Iceberg table's current schema.
//!
//! Creates the table on first use and adds new columns before building, and drops every claimed change that
//! Iceberg already has (its snapshot summary records the last committed position): the repair after a crash
//! between the Iceberg commit and the buffer checkpoint.

use std::sync::Arc;

use iceberg::spec::Schema;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{ErrorKind, NamespaceIdent, TableCreation, TableIdent};
use philotes_engine::{Emitter, Stage, StageError};
use philotes_schemas::TableSchema;

use super::catalog::{committed_position, GuardedCatalog};
use super::claim::Claim;
use super::{table_properties, Flush, FlushSettings, TargetFn};
use crate::arrow_batch::{self, ArrowBatchError};
use crate::segment::{self, SegmentEvent};
use crate::store::dead_letters::DeadLetter;

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

    async fn build(&self, claim: &Claim) -> Result<Flush, BatchError> {
        let lease = &claim.lease.lease;
        let source = format!("{}.{}", lease.source_schema, lease.source_table);
        let target = (self.target)(&lease.source_schema, &lease.source_table);
        let ident = TableIdent::new(NamespaceIdent::new(target.namespace.clone()), target.name.clone());
        let segment_ids: Vec<i64> = claim.segments.iter().map(|s| s.id).collect();
        let last = claim.segments.iter().map(|s| s.last).max().unwrap_or_default();

        let mut used = Vec::new();
        for s in &claim.segments {
            let version = claim.versions.get(&s.schema_version).ok_or_else(|| BatchError::MissingVersion {
                table: source.clone(),
                segment: s.id,
                version: s.schema_version,
            })?;
            if !used.iter().any(|v: &&Arc<TableSchema>| Arc::ptr_eq(v, version)) {
                used.push(version);
            }
        }
        let latest = claim.versions.iter().max_by_key(|(v, _)| **v).map(|(_, s)| s.clone());
        let Some(latest) = latest else {
            return Err(BatchError::MissingVersion { table: source, segment: segment_ids[0], version: 0 });
        };
        let table = self.table(&ident, &latest).await?;
        let table = self.evolve(table, &used).await?;
        let committed = committed_position(&table, &self.pipeline);

        // Changes Iceberg already has are not written again. Their dead letters, though, were never stored: a
        // segment's dead letters are stored by the checkpoint that deletes it, and it is still here.
        let mut groups: Vec<(Arc<TableSchema>, Vec<SegmentEvent>)> = Vec::with_capacity(claim.segments.len());
        let mut already: Vec<(Arc<TableSchema>, Vec<SegmentEvent>)> = Vec::new();
        for s in &claim.segments {
            let version = &claim.versions[&s.schema_version];
            let mut events = segment::decode(&s.payload)?;
            if let Some(c) = committed {
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
        let schema: &Schema = table.metadata().current_schema();
        let mut rejected_rows = Vec::new();
        if !already.is_empty() {
            tracing::info!(table = %ident, changes = already.iter().map(|(_, e)| e.len()).sum::<usize>(),
                "claimed changes are already in iceberg (a flush crashed before its checkpoint): not writing them again");
            rejected_rows.extend(arrow_batch::build_batch(schema, &already)?.rejected);
        }
        let batch = if groups.is_empty() {
            None
        } else {
            let output = arrow_batch::build_batch(schema, &groups)?;
            rejected_rows.extend(output.rejected);
            (output.batch.num_rows() > 0).then_some(output.batch)
        };
        let rejected: Vec<DeadLetter> = rejected_rows
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
        Ok(Flush { lease: claim.lease.clone(), table: ident, segment_ids, batch, last, rejected, stopped: None })
    }
}

impl Stage for ArrowBatch {
    type In = Claim;
    type Out = Flush;

    async fn process(&mut self, claim: &Claim, out: &mut Emitter<Flush>) -> Result<(), StageError> {
        match self.build(claim).await {
            Ok(flush) => {
                out.emit(flush);
                Ok(())
            }
            Err(BatchError::Catalog(e)) => {
                tracing::warn!(error = %e, "iceberg catalog or warehouse unavailable; retrying with backoff");
                Err(StageError::retryable(BatchError::Catalog(e)))
            }
            Err(BatchError::Schema(e)) => {
                // Only this table stops: its lease row records why, the other tables flow on.
                let lease = &claim.lease.lease;
                let reason = format!("{}.{}: {e}", lease.source_schema, lease.source_table);
                tracing::error!(reason = %reason, "table stopped");
                let target = (self.target)(&lease.source_schema, &lease.source_table);
                out.emit(Flush {
                    lease: claim.lease.clone(),
                    table: TableIdent::new(NamespaceIdent::new(target.namespace), target.name),
                    segment_ids: Vec::new(),
                    batch: None,
                    last: lease.watermark.unwrap_or_default(),
                    rejected: Vec::new(),
                    stopped: Some(reason),
                });
                Ok(())
            }
            Err(e) => Err(StageError::fatal(e)),
        }
    }
}
