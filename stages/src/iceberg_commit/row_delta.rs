//! A commit of our own for row deltas: new data files, new delete files and, for a TRUNCATE, the removal of
//! every live file, in one snapshot of a format-v2 table. The same commit carries a compaction's rewrite (every
//! live file replaced by new ones holding the same rows: operation `replace`, [`stage_rewrite`]) and
//! metadata-only changes such as the expiry of snapshots ([`commit_metadata_sql`]).
//!
//! The iceberg crate (0.10.1) writes equality-delete files but cannot commit them: its `TableCommit` builder and
//! `TransactionAction` are crate-private, and its only snapshot action, the fast append, refuses delete files.
//! So this module writes the commit with the crate's public spec writers, as its own snapshot producer does:
//! new manifests (entries with inherited sequence numbers), a manifest list carrying the parent's manifests
//! forward, the new metadata JSON ([`stage`]); then the catalog's compare-and-set ([`commit_sql`]).
//!
//! Exactly once (DESIGN.md, the second atomic step) rests on that compare-and-set: the new metadata names the
//! loaded table's metadata as its parent, and the catalog row moves to it only if it still points at that
//! metadata. So a commit lands only on the exact table state the caller loaded (and checked its
//! `philotes.last-lsn` against); otherwise [`RowDeltaError::StaleBase`] says so, nothing is visible, and the
//! caller rebuilds on the new state (new sequence number: equality deletes of the old attempt would hit the
//! wrong rows). Unlike the crate's `Transaction::commit`, nothing is re-applied on a newer table behind the
//! caller's back. The files of an attempt that did not land stay unreferenced in the warehouse.
//!
//! Catalogs: the SQL catalog (the `iceberg_tables` layout of `iceberg-catalog-sql`, pyiceberg and Java's JDBC
//! catalog) here, the REST catalog's commit request in [`rest`]. Not done: format v1/v3 tables.
//!
//! Partitioned tables: new files are in the table's default spec (their partition values say so), equality
//! deletes may be in its unpartitioned spec (global deletes); each spec gets its manifests. Files of older
//! specs stay in the manifests carried forward (or are removed, each in a manifest of its own spec).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use iceberg::spec::{
    DataContentType, DataFile, DataFileFormat, FormatVersion, ManifestContentType, ManifestFile, ManifestListWriter,
    ManifestWriter, ManifestWriterBuilder, Operation, PartitionSpec, Snapshot, SnapshotReference, SnapshotRetention,
    SnapshotSummaryCollector, Summary, TableMetadata, MAIN_BRANCH,
};
use iceberg::table::Table;
use iceberg::{MetadataLocation, Runtime, TableIdent};
use tokio_postgres::GenericClient;

/// The totals the commit keeps, each with the keys of what this snapshot added and removed (the spec's names).
const TOTALS: [(&str, &str, &str); 6] = [
    ("total-data-files", "added-data-files", "deleted-data-files"),
    ("total-delete-files", "added-delete-files", "removed-delete-files"),
    ("total-records", "added-records", "deleted-records"),
    ("total-files-size", "added-files-size", "removed-files-size"),
    ("total-position-deletes", "added-position-deletes", "removed-position-deletes"),
    ("total-equality-deletes", "added-equality-deletes", "removed-equality-deletes"),
];

/// Prefixes of the summary keys the commit computes (counts of this snapshot and totals).
const COMPUTED_PREFIXES: [&str; 6] = ["added-", "deleted-", "removed-", "total-", "changed-partition-count", "partitions."];

/// What one snapshot adds to, or removes from, a table.
#[derive(Debug, Clone, Default)]
pub struct RowDelta {
    /// New data files (content `Data`), already written to the table's data location.
    pub data_files: Vec<DataFile>,
    /// New delete files (content `EqualityDeletes` with the key columns' field ids as `equality_ids`, or
    /// `PositionDeletes`, accepted but not yet tested). They get this snapshot's sequence number, so equality
    /// deletes hit only strictly older data (position deletes also data of the same snapshot).
    pub delete_files: Vec<DataFile>,
    /// Remove every live data and delete file of the parent first (a TRUNCATE); the new files then are all the
    /// table has.
    pub remove_all: bool,
    /// Snapshot summary properties (`philotes.last-lsn`, …); keys of the counts and totals the commit computes
    /// (`added-*`, `deleted-*`, `removed-*`, `total-*`, partition summaries) are ignored.
    pub properties: HashMap<String, String>,
}

/// Why a row-delta commit failed.
#[derive(Debug, thiserror::Error)]
pub enum RowDeltaError {
    /// Another commit moved the table after it was loaded: nothing of this attempt is visible; load the table
    /// again and rebuild the delta on it.
    #[error("row delta on {table}: the catalog no longer points at {base} (another commit landed first)")]
    StaleBase {
        /// The table.
        table: TableIdent,
        /// The metadata location the attempt was built on.
        base: String,
    },
    /// The table or a file cannot take part in a row delta (a caller's mistake: retrying cannot help).
    #[error("row delta on {table}: {reason}")]
    Invalid {
        /// The table.
        table: TableIdent,
        /// What is wrong.
        reason: String,
    },
    /// Reading the table's manifests or writing the new ones, the manifest list or the metadata failed.
    #[error("row delta: {0}")]
    Iceberg(#[from] iceberg::Error),
    /// The REST catalog could not be reached or refused the commit for another reason than a conflict.
    #[error("row delta on {table}: REST catalog: {reason}")]
    Rest {
        /// The table.
        table: TableIdent,
        /// What happened.
        reason: String,
    },
    /// The SQL catalog's database refused or lost the compare-and-set.
    #[error("row delta on {table}: SQL catalog: {source}")]
    Catalog {
        /// The table.
        table: TableIdent,
        /// The database error.
        source: tokio_postgres::Error,
    },
}

/// A row delta whose files are all written (manifests, manifest list, metadata JSON) but that no reader sees
/// until a catalog's compare-and-set moves the table to it.
#[derive(Debug)]
pub struct StagedRowDelta {
    /// The table as it is once the commit lands (built before the compare-and-set, so nothing can fail after it).
    table: Table,
    base_location: String,
    location: String,
    snapshot_id: i64,
    written: Vec<String>,
}

impl StagedRowDelta {
    /// The table.
    pub fn identifier(&self) -> &TableIdent {
        self.table.identifier()
    }

    /// The new snapshot's id.
    pub fn snapshot_id(&self) -> i64 {
        self.snapshot_id
    }

    /// Where the new metadata JSON was written.
    pub fn metadata_location(&self) -> &str {
        &self.location
    }

    /// The metadata location the delta was built on (the compare-and-set's expected value).
    pub fn base_metadata_location(&self) -> &str {
        &self.base_location
    }

    /// The table's metadata after the commit.
    pub fn metadata(&self) -> &TableMetadata {
        self.table.metadata()
    }

    /// Every file [`stage`] wrote (manifests, manifest list, metadata JSON; not the caller's data and delete
    /// files): unreferenced once a compare-and-set refused the delta, so a caller may delete them then.
    pub fn written_files(&self) -> &[String] {
        &self.written
    }
}

/// Writes `delta` on `base` (the table as loaded from the catalog) as one new snapshot: its manifests, its
/// manifest list and the new metadata JSON, all under the table's `metadata/` folder. Nothing is visible yet.
///
/// The operation is `append` when only data files are added, `delete` when nothing is added but deletes or a
/// removal, `overwrite` otherwise (as Java's `RowDelta`).
pub async fn stage(base: &Table, delta: RowDelta) -> Result<StagedRowDelta, RowDeltaError> {
    stage_as(base, delta, None).await
}

/// Writes a rewrite of `base` as one new snapshot: every live data and delete file of `base` removed, `data_files`
/// (the same rows, deletes applied: a compaction) added, operation `replace` (the spec's "data and delete files
/// were added and removed without changing table data"; Java's `RewriteFiles`). Readers that follow only
/// appends and overwrites (incremental reads, Flink's streaming source) skip it, as they should: no row
/// changed. `properties` as for [`RowDelta::properties`]. Nothing is visible until a compare-and-set.
pub async fn stage_rewrite(
    base: &Table,
    data_files: Vec<DataFile>,
    properties: HashMap<String, String>,
) -> Result<StagedRowDelta, RowDeltaError> {
    let delta = RowDelta { data_files, delete_files: Vec::new(), remove_all: true, properties };
    stage_as(base, delta, Some(Operation::Replace)).await
}

/// [`stage`] with the snapshot's operation given (`None`: derived from the delta).
async fn stage_as(base: &Table, delta: RowDelta, operation: Option<Operation>) -> Result<StagedRowDelta, RowDeltaError> {
    let ident = base.identifier().clone();
    let invalid = |reason: String| RowDeltaError::Invalid { table: ident.clone(), reason };
    let metadata = base.metadata();
    if metadata.format_version() != FormatVersion::V2 {
        return Err(invalid(format!("format {} (only v2 tables are supported)", metadata.format_version())));
    }
    for file in &delta.data_files {
        if file.content_type() != DataContentType::Data {
            return Err(invalid(format!("{} is given as a data file but holds {:?}", file.file_path(), file.content_type())));
        }
    }
    for file in &delta.delete_files {
        match file.content_type() {
            DataContentType::EqualityDeletes if file.equality_ids().is_none_or(|ids| ids.is_empty()) => {
                return Err(invalid(format!("equality delete file {} has no equality ids", file.file_path())));
            }
            DataContentType::Data => {
                return Err(invalid(format!("{} is given as a delete file but holds data", file.file_path())));
            }
            _ => {}
        }
    }
    // Each new file is in the default spec, or (a global delete) in the table's unpartitioned one: the crate's
    // `DataFile` does not say which, its partition values do.
    let default_spec = metadata.default_partition_spec().clone();
    let unpartitioned = crate::catalog::partition::unpartitioned_spec_id(base).and_then(|id| metadata.partition_spec_by_id(id)).cloned();
    let spec_of = |file: &DataFile, data: bool| -> Result<Arc<PartitionSpec>, RowDeltaError> {
        let fields = file.partition().fields().len();
        if fields == default_spec.fields().len() {
            return Ok(default_spec.clone());
        }
        match &unpartitioned {
            Some(spec) if fields == 0 && !data => Ok(spec.clone()),
            _ => Err(invalid(format!(
                "{} carries {fields} partition values; the table's spec {} has {}",
                file.file_path(),
                default_spec.spec_id(),
                default_spec.fields().len()
            ))),
        }
    };
    let mut new_files: Vec<(ManifestContentType, Arc<PartitionSpec>, Vec<&DataFile>)> = Vec::new();
    for (files, content) in [(&delta.data_files, ManifestContentType::Data), (&delta.delete_files, ManifestContentType::Deletes)] {
        for file in files {
            let spec = spec_of(file, content == ManifestContentType::Data)?;
            match new_files.iter_mut().find(|(c, s, _)| *c == content && s.spec_id() == spec.spec_id()) {
                Some((_, _, group)) => group.push(file),
                None => new_files.push((content, spec, vec![file])),
            }
        }
    }
    let base_location = base.metadata_location_result()?.to_string();

    let snapshot_id = new_snapshot_id(metadata);
    let sequence_number = metadata.next_sequence_number();
    let commit = uuid::Uuid::new_v4();
    let schema = metadata.current_schema().clone();
    let mut manifests = ManifestNames { location: metadata.location().to_string(), commit, next: 0 };
    let mut collector = SnapshotSummaryCollector::default();
    let mut written = Vec::new();

    let parent = metadata.current_snapshot();
    let parent_manifests = match parent {
        Some(parent) => base.manifest_list_reader(parent).load().await?.entries().to_vec(),
        None => Vec::new(),
    };
    let mut list: Vec<ManifestFile> = Vec::new();
    if delta.remove_all {
        // Each parent manifest with live entries is rewritten with them as deleted, keeping their sequence
        // numbers (the spec's way to say which snapshot removed a file); the parent's manifests are not carried.
        for manifest_file in &parent_manifests {
            if !manifest_file.has_added_files() && !manifest_file.has_existing_files() {
                continue;
            }
            let manifest = manifest_file.load_manifest(base.file_io()).await?;
            let live: Vec<_> = manifest.entries().iter().filter(|e| e.is_alive()).cloned().collect();
            if live.is_empty() {
                continue;
            }
            let mut writer = manifests.writer(
                base,
                snapshot_id,
                manifest.metadata().partition_spec().clone(),
                *manifest.metadata().content(),
            )?;
            for entry in live {
                let Some(sequence) = entry.sequence_number() else {
                    return Err(invalid(format!("{} has no data sequence number", entry.file_path())));
                };
                collector.remove_file(entry.data_file(), schema.clone(), Arc::new(manifest.metadata().partition_spec().clone()));
                writer.add_delete_file(entry.data_file().clone(), sequence, entry.file_sequence_number)?;
            }
            list.push(writer.write_manifest_file().await?);
            written.push(list.last().map(|m| m.manifest_path.clone()).unwrap_or_default());
        }
    } else {
        list.extend(parent_manifests);
    }
    // One manifest per content and spec (a manifest holds the files of one spec).
    for (content, spec, files) in new_files {
        let mut writer = manifests.writer(base, snapshot_id, spec.as_ref().clone(), content)?;
        for file in files {
            collector.add_file(file, schema.clone(), spec.clone());
            // -1: the entry inherits the snapshot's sequence number from the manifest list (so a retried
            // commit on a newer base would not need its manifests rewritten).
            writer.add_file(file.clone(), -1)?;
        }
        list.push(writer.write_manifest_file().await?);
        written.push(list.last().map(|m| m.manifest_path.clone()).unwrap_or_default());
    }

    let derived = match (!delta.data_files.is_empty(), !delta.delete_files.is_empty() || delta.remove_all) {
        (true, true) => Operation::Overwrite,
        (false, true) => Operation::Delete,
        (_, false) => Operation::Append,
    };
    let operation = operation.unwrap_or(derived);
    let mut properties = delta.properties;
    // The counts are ours: a caller's `added-records` would otherwise feed into the totals.
    properties.retain(|key, _| !COMPUTED_PREFIXES.iter().any(|prefix| key.starts_with(prefix)));
    properties.extend(collector.build());
    update_totals(&mut properties, parent.map(|p| p.summary()), delta.remove_all);
    let summary = Summary { operation, additional_properties: properties };

    let list_path = format!("{}/metadata/snap-{snapshot_id}-0-{commit}.{}", metadata.location(), DataFileFormat::Avro);
    let output = base.file_io().new_output(&list_path)?.writer().await?;
    let mut list_writer = ManifestListWriter::v2(output, snapshot_id, metadata.current_snapshot_id(), sequence_number);
    list_writer.add_manifests(list.into_iter())?;
    list_writer.close().await?;
    written.push(list_path.clone());

    let timestamp_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .max(metadata.last_updated_ms());
    let snapshot = Snapshot::builder()
        .with_manifest_list(list_path)
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(metadata.current_snapshot_id())
        .with_sequence_number(sequence_number)
        .with_summary(summary)
        .with_schema_id(metadata.current_schema_id())
        .with_timestamp_ms(timestamp_ms)
        .build();
    let new_metadata = metadata
        .clone()
        .into_builder(Some(base_location.clone()))
        .add_snapshot(snapshot)?
        .set_ref(MAIN_BRANCH, SnapshotReference::new(snapshot_id, SnapshotRetention::branch(None, None, None)))?
        .build()?
        .metadata;
    let (table, location) = write_metadata(base, &base_location, new_metadata).await?;
    written.push(location.clone());
    Ok(StagedRowDelta { table, base_location, location, snapshot_id, written })
}

/// Writes `metadata` (built on `base`, whose metadata is at `base_location`) as the table's next metadata JSON;
/// nothing is visible yet. Returns the table as it is once a compare-and-set moves the catalog there, and where
/// the JSON was written.
async fn write_metadata(
    base: &Table,
    base_location: &str,
    metadata: TableMetadata,
) -> Result<(Table, String), RowDeltaError> {
    let location = MetadataLocation::from_str(base_location)?.with_next_version().with_new_metadata(&metadata);
    metadata.write_to(base.file_io(), &location).await?;
    let location = location.to_string();
    let table = Table::builder()
        .identifier(base.identifier().clone())
        .file_io(base.file_io().clone())
        .metadata(metadata)
        .metadata_location(location.clone())
        .runtime(Runtime::try_current()?)
        .build()?;
    Ok((table, location))
}

/// Makes a staged delta visible: the SQL catalog's compare-and-set moves the table's row to the staged metadata
/// only if it still points at the metadata the delta was built on. Runs on any client, so a caller may hold it
/// in a transaction of its own.
///
/// Returns the table as committed, or [`RowDeltaError::StaleBase`] when no row matched.
pub async fn commit_sql(
    client: &impl GenericClient,
    catalog_name: &str,
    staged: StagedRowDelta,
) -> Result<Table, RowDeltaError> {
    compare_and_set_sql(client, catalog_name, staged.table.identifier(), &staged.base_location, &staged.location).await?;
    Ok(staged.table)
}

/// Commits a change of `base`'s metadata that adds no snapshot (the expiry of snapshots): `metadata` (built
/// from `base.metadata().clone().into_builder(Some(base location))`) is written as the next metadata JSON and
/// the SQL catalog's compare-and-set moves the table there, only if it still points at `base`. On
/// [`RowDeltaError::StaleBase`] the JSON written is deleted again (no reader can know it).
pub async fn commit_metadata_sql(
    client: &impl GenericClient,
    catalog_name: &str,
    base: &Table,
    metadata: TableMetadata,
) -> Result<Table, RowDeltaError> {
    let base_location = base.metadata_location_result()?.to_string();
    let (table, location) = write_metadata(base, &base_location, metadata).await?;
    match compare_and_set_sql(client, catalog_name, base.identifier(), &base_location, &location).await {
        Ok(()) => Ok(table),
        Err(e) => {
            if matches!(e, RowDeltaError::StaleBase { .. }) {
                if let Err(cleanup) = base.file_io().delete(&location).await {
                    tracing::warn!(file = %location, error = %crate::report::chain(&cleanup), "could not delete an unused metadata file");
                }
            }
            Err(e)
        }
    }
}

/// The SQL catalog's compare-and-set, the statement `iceberg-catalog-sql` itself issues (pyiceberg and Java's
/// JDBC catalog issue the same): `ident`'s row moves from `base_location` to `location`, or
/// [`RowDeltaError::StaleBase`] when it no longer points at `base_location`.
async fn compare_and_set_sql(
    client: &impl GenericClient,
    catalog_name: &str,
    ident: &TableIdent,
    base_location: &str,
    location: &str,
) -> Result<(), RowDeltaError> {
    let namespace = ident.namespace().join(".");
    let updated = client
        .execute(
            "UPDATE iceberg_tables SET metadata_location = $1, previous_metadata_location = $2 \
             WHERE catalog_name = $3 AND table_name = $4 AND table_namespace = $5 \
               AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL) \
               AND metadata_location = $2",
            &[&location, &base_location, &catalog_name, &ident.name(), &namespace],
        )
        .await
        .map_err(|source| RowDeltaError::Catalog { table: ident.clone(), source })?;
    if updated == 0 {
        return Err(RowDeltaError::StaleBase { table: ident.clone(), base: base_location.to_string() });
    }
    Ok(())
}

/// [`stage`] then [`commit_sql`]: one row delta on `base` through the SQL catalog `catalog_name`.
pub async fn commit_row_delta_sql(
    client: &impl GenericClient,
    catalog_name: &str,
    base: &Table,
    delta: RowDelta,
) -> Result<Table, RowDeltaError> {
    commit_sql(client, catalog_name, stage(base, delta).await?).await
}

/// A Parquet data-file writer for rows of `table` set up exactly as the flush's (zstd, row-group bounds, no
/// dictionary for columns whose `first` rows are all distinct, rolling at `target_file_size`), for a commit of
/// this module that rewrites rows (a compaction). Files are named `philotes-{pipeline}-…`.
pub async fn data_writer(
    pipeline: &str,
    table: &Table,
    first: &arrow::array::RecordBatch,
    target_file_size: usize,
) -> Result<Box<dyn iceberg::writer::IcebergWriter>, RowDeltaError> {
    super::writer::open(pipeline, table, first, target_file_size).await.map_err(|e| match e {
        super::IcebergCommitError::Iceberg(e) => RowDeltaError::Iceberg(e),
        other => RowDeltaError::Invalid { table: table.identifier().clone(), reason: other.to_string() },
    })
}

/// Names of the commit's manifests: `metadata/{commit uuid}-m{n}.avro`, as the crate's snapshot producer names them.
struct ManifestNames {
    location: String,
    commit: uuid::Uuid,
    next: u32,
}

impl ManifestNames {
    /// A manifest writer for the next manifest of this commit.
    fn writer(
        &mut self,
        table: &Table,
        snapshot_id: i64,
        spec: PartitionSpec,
        content: ManifestContentType,
    ) -> Result<ManifestWriter, RowDeltaError> {
        let path = format!("{}/metadata/{}-m{}.{}", self.location, self.commit, self.next, DataFileFormat::Avro);
        self.next += 1;
        let output = table.file_io().new_output(path)?;
        let builder = ManifestWriterBuilder::new(output, Some(snapshot_id), table.metadata().current_schema().clone(), spec);
        Ok(match content {
            ManifestContentType::Data => builder.build_v2_data(),
            ManifestContentType::Deletes => builder.build_v2_deletes(),
        })
    }
}

/// A positive snapshot id no snapshot of the table has (random, as Java and the crate pick them, so two writers
/// racing on one table never pick the same id for different snapshots).
fn new_snapshot_id(metadata: &TableMetadata) -> i64 {
    loop {
        let (high, low) = uuid::Uuid::new_v4().as_u64_pair();
        let id = ((high ^ low) & (i64::MAX as u64)) as i64;
        if id != 0 && metadata.snapshot_by_id(id).is_none() {
            return id;
        }
    }
}

/// Sets the `total-*` summary keys from the parent's totals and this snapshot's `added-*`/`removed-*` keys, as
/// Java's `SnapshotSummary` does: a total the parent lacks stays unknown (absent) rather than wrong. After a
/// removal of everything, the totals are exactly what this snapshot added.
fn update_totals(properties: &mut HashMap<String, String>, parent: Option<&Summary>, remove_all: bool) {
    let count = |props: &HashMap<String, String>, key: &str| props.get(key).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    for (total, added, removed) in TOTALS {
        let previous = match (remove_all, parent) {
            (true, _) | (false, None) => Some(0),
            (false, Some(parent)) => parent.additional_properties.get(total).and_then(|v| v.parse::<u64>().ok()),
        };
        let removed = if remove_all { 0 } else { count(properties, removed) };
        match previous {
            Some(previous) => {
                let value = (previous + count(properties, added)).saturating_sub(removed);
                properties.insert(total.to_string(), value.to_string());
            }
            None => {
                properties.remove(total);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;

pub mod rest;
