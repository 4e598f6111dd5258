//! Table preparation: before a flush writes, its Iceberg table exists (created with its namespace on first use)
//! and has every column of the schema versions the flush's rows were captured with. One module, called by the
//! flush job once per flush (`claim::FlushJob::prepared`), so no stage creates or evolves tables on the side.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use iceberg::spec::TableMetadataBuildResult;
use iceberg::table::Table;
use iceberg::{ErrorKind, TableCreation, TableIdent};
use philotes_schemas::TableSchema;

use super::partition::{self, PartitionError, PartitionField};
use super::{committed_position, evolve, GuardedCatalog};
use crate::changelog::{self, SchemaError};
use crate::mirror::MirrorLayout;
use crate::position::{Lsn, Position};
use crate::table_id::TableId;

/// Commits a metadata change the iceberg crate cannot make itself (a column's type, a partition spec) with our
/// own compare-and-set: IcebergCommit's catalog session does it (`iceberg_commit::CommitCatalog`).
#[async_trait::async_trait]
pub trait CommitMetadata: Send + Sync + std::fmt::Debug {
    /// Makes `built` (a change of `base`'s metadata that adds no snapshot) the table's state, only if the table
    /// is still at `base`; a lost race is an error of kind `CatalogCommitConflicts`.
    async fn commit_metadata(&self, base: &Table, built: TableMetadataBuildResult) -> Result<(), iceberg::Error>;
}

/// A flush's Iceberg table, made ready.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// The table exists with every column the flush's schema versions need.
    Ready {
        /// The table as loaded: every slice is built in its current schema, and IcebergCommit opens the flush's
        /// writer on it (it reloads before committing).
        table: Box<Table>,
        /// The last position Iceberg has (older claimed changes are not written again).
        committed: Option<Position>,
        /// A mirror table's key and working schema (`None`: a changelog table).
        mirror: Option<Arc<MirrorLayout>>,
        /// Every schema version of the table, its columns under the names of the Iceberg fields that hold them
        /// (a renamed column's older versions write the renamed field).
        versions: HashMap<i32, Arc<TableSchema>>,
    },
    /// The table cannot take these changes (an incompatible schema change): it stops with this reason.
    Stopped(String),
}

/// The Iceberg tables of one pipeline: how they are loaded, created and evolved.
#[derive(Debug)]
pub struct Tables {
    pipeline: String,
    catalog: Arc<GuardedCatalog>,
    /// Where changes the crate cannot make (a column's type, a partition spec) are committed.
    commits: Arc<dyn CommitMetadata>,
}

impl Tables {
    /// The tables of `pipeline` in `catalog`, whose metadata changes of our own go through `commits`.
    pub fn new(pipeline: &str, catalog: Arc<GuardedCatalog>, commits: Arc<dyn CommitMetadata>) -> Self {
        Self { pipeline: pipeline.to_string(), catalog, commits }
    }

    /// Commits `built` (a change of `base`'s metadata that adds no snapshot) and loads the table as it is then.
    /// A commit that lost the race is a conflict, retried like any other.
    pub async fn commit_metadata(&self, base: &Table, built: TableMetadataBuildResult) -> Result<Table, iceberg::Error> {
        self.commits.commit_metadata(base, built).await?;
        self.catalog.inner().load_table(base.identifier()).await
    }

    /// Makes `ident` ready for rows of `source` written with the schema versions `used` (each with the LSN of its
    /// first change in the flush), out of every version of the table, `versions`, and reads its committed
    /// position; `mirror` asks for the mirror layout instead of the changelog one, `partition` is the spec the
    /// table is created with (or given as its new default spec). The newest version the flush writes makes a new
    /// table and names a mirror's key. A catalog or warehouse failure is an error (retried); a schema the table
    /// cannot follow (or a mirror table without a usable key, a table made in the other layout, a partition spec
    /// its columns cannot take) is [`Prepared::Stopped`].
    pub async fn prepare(
        &self,
        ident: &TableIdent,
        source: &TableId,
        versions: &BTreeMap<i32, Arc<TableSchema>>,
        used: &[(i32, Lsn)],
        mirror: bool,
        partition: &[PartitionField],
    ) -> Result<Prepared, iceberg::Error> {
        let stopped = |e: SchemaError| {
            let reason = format!("{source}: {e}");
            tracing::error!(reason = %reason, "table stopped");
            Ok(Prepared::Stopped(reason))
        };
        let refused = |e: PartitionError| {
            let reason = format!("{source}: {e}");
            tracing::error!(reason = %reason, "table stopped");
            Ok(Prepared::Stopped(reason))
        };
        let Some(latest) = versions.values().next_back() else {
            return Err(iceberg::Error::new(ErrorKind::Unexpected, format!("{source} has no schema version")));
        };
        if mirror {
            if let Err(e) = crate::mirror::check_key(latest) {
                return stopped(e);
            }
        }
        // A new table is made from the newest version the flush writes (a later one may have changed since).
        let newest_used = used.iter().map(|(n, _)| *n).max().and_then(|n| versions.get(&n)).unwrap_or(latest);
        let table = match self.load_or_create(ident, newest_used, mirror, partition).await {
            Err(Failure::Schema(e) | Failure::Version(evolve::Refused { error: e, .. })) => return stopped(e),
            Err(Failure::Partition(e)) => return refused(e),
            Err(Failure::Catalog(e)) => return Err(e),
            Ok(table) => table,
        };
        if let Err(e) = crate::mirror::check_mode(&table, mirror) {
            return stopped(e);
        }
        let numbers: Vec<i32> = used.iter().map(|(n, _)| *n).collect();
        let (table, named) = match self.evolve(table, versions, &numbers).await {
            Err(Failure::Catalog(e)) => return Err(e),
            Err(Failure::Schema(e)) => return stopped(e),
            Err(Failure::Partition(e)) => return refused(e),
            Err(Failure::Version(refused)) => {
                let at = used.iter().find(|(n, _)| *n == refused.version).map_or(Lsn::ZERO, |(_, lsn)| *lsn);
                let reason = format!(
                    "{source}: {} (schema version {}, first change at LSN {at}). The table is stopped; its changes \
                     wait in the buffer. Make the Iceberg table able to take them (e.g. drop it to have it made again \
                     from the new schema, or change the column back on the source), then: philotes resume FILE --table {source}",
                    refused.error, refused.version
                );
                tracing::error!(reason = %reason, "table stopped");
                return Ok(Prepared::Stopped(reason));
            }
            Ok(evolved) => evolved,
        };
        let table = match self.partition(table, partition, mirror).await? {
            Err(e) => return refused(e),
            Ok(table) => table,
        };
        // A mirror keys on the key of the version the flush writes, which must be the key the table was made with.
        let newest = numbers.iter().max().and_then(|n| named.get(n)).cloned().unwrap_or_else(|| latest.clone());
        let (table, mirror) = match mirror.then(|| MirrorLayout::new(&table, &newest)).transpose() {
            Err(e) => return stopped(e),
            Ok(None) => (table, None),
            Ok(Some(layout)) => match self.check_mirror_key(table, &layout.key).await? {
                Ok(table) => (table, Some(Arc::new(layout))),
                Err(reason) => {
                    let reason = format!("{source}: {reason}; philotes resume FILE --table {source} once the Iceberg table is made again (drop it)");
                    tracing::error!(reason = %reason, "table stopped");
                    return Ok(Prepared::Stopped(reason));
                }
            },
        };
        let committed = committed_position(&table, &self.pipeline);
        Ok(Prepared::Ready { committed, table: Box::new(table), mirror, versions: named })
    }

    /// Checks that a mirror table still keys on the field ids `key` (table property [`MIRROR_KEY`], recorded when
    /// the table is made, or here for a table made before it was kept): equality deletes by another key would
    /// miss the rows written under the old one. `Ok(Err(reason))` when the key changed.
    async fn check_mirror_key(&self, table: Table, key: &[i32]) -> Result<Result<Table, String>, iceberg::Error> {
        let wanted = key.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
        let names = |ids: &str| {
            let schema = table.metadata().current_schema();
            ids.split(',')
                .map(|id| id.parse().ok().and_then(|id| schema.name_by_field_id(id)).unwrap_or("?").to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match table.metadata().properties().get(MIRROR_KEY) {
            Some(recorded) if *recorded == wanted => Ok(Ok(table)),
            Some(recorded) => Ok(Err(format!(
                "the mirror's key changed from ({}) to ({}); a mirror table keeps the key it was made with",
                names(recorded),
                names(&wanted)
            ))),
            None => {
                let location = table.metadata_location_result()?.to_string();
                let built = table
                    .metadata()
                    .clone()
                    .into_builder(Some(location))
                    .set_properties(HashMap::from([(MIRROR_KEY.to_string(), wanted)]))?
                    .build()?;
                Ok(Ok(self.commit_metadata(&table, built).await?))
            }
        }
    }

    /// Loads the table, creating it (and its namespace) from `latest` when missing, in the mirror layout when
    /// `mirror`, partitioned by `partition`.
    async fn load_or_create(
        &self,
        ident: &TableIdent,
        latest: &TableSchema,
        mirror: bool,
        partition: &[PartitionField],
    ) -> Result<Table, Failure> {
        let catalog = self.catalog.inner();
        match catalog.load_table(ident).await {
            Ok(table) => return Ok(table),
            Err(e) if !is_not_found(&e) => return Err(e.into()),
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
        let (schema, mode) = if mirror {
            (crate::mirror::mirror_schema(latest)?, crate::mirror::MIRROR)
        } else {
            (changelog::changelog_schema(latest)?, crate::mirror::CHANGELOG)
        };
        let spec = partition::unbound_spec(&ident.to_string(), partition, &schema).map_err(Failure::Partition)?;
        let mut properties = table_properties(&self.pipeline);
        properties.insert(crate::mirror::MODE_PROPERTY.to_string(), mode.to_string());
        if mirror {
            let key = crate::mirror::key_field_ids(&schema, latest)?;
            properties.insert(MIRROR_KEY.to_string(), key.iter().map(i32::to_string).collect::<Vec<_>>().join(","));
        }
        let latest_only = BTreeMap::from([(0, Arc::new(latest.clone()))]);
        if let Ok(plan) = evolve::plan(&schema, None, &latest_only, &[]) {
            properties.extend(plan.source_columns.map(|record| (evolve::SOURCE_COLUMNS.to_string(), record)));
        }
        let creation = TableCreation::builder()
            .name(ident.name().to_string())
            .schema(schema)
            .partition_spec(spec)
            .properties(properties)
            .build();
        match catalog.create_table(&namespace, creation).await {
            Ok(table) => {
                tracing::info!(table = %ident, "created iceberg table");
                Ok(table)
            }
            // Another flusher may have created it a moment ago.
            Err(e) => catalog.load_table(ident).await.map_err(|_| Failure::Catalog(e)),
        }
    }

    /// Evolves the table's schema for rows of the versions `used` ([`evolve::plan`]: added columns, renames,
    /// promotions), in one metadata commit of our own with the [`evolve::SOURCE_COLUMNS`] record, under the
    /// flush's lease, before any row is written. Returns the table and every version under its Iceberg names.
    async fn evolve(
        &self,
        table: Table,
        versions: &BTreeMap<i32, Arc<TableSchema>>,
        used: &[i32],
    ) -> Result<(Table, HashMap<i32, Arc<TableSchema>>), Failure> {
        let metadata = table.metadata();
        let recorded = metadata.properties().get(evolve::SOURCE_COLUMNS).map(String::as_str);
        let plan = evolve::plan(metadata.current_schema(), recorded, versions, used).map_err(Failure::Version)?;
        if plan.schema.is_none() && plan.source_columns.is_none() {
            return Ok((table, plan.versions));
        }
        let location = table.metadata_location_result()?.to_string();
        let mut builder = metadata.clone().into_builder(Some(location));
        if let Some(schema) = plan.schema {
            builder = builder.add_current_schema(schema)?;
        }
        if let Some(record) = plan.source_columns {
            builder = builder.set_properties(HashMap::from([(evolve::SOURCE_COLUMNS.to_string(), record)]))?;
        }
        let table = self.commit_metadata(&table, builder.build()?).await?;
        crate::fault::hit(crate::fault::AFTER_SCHEMA_COMMIT);
        if !plan.changes.is_empty() {
            tracing::info!(table = %table.identifier(), changes = %plan.changes.join(", "), "evolved the iceberg table's schema");
        }
        Ok((table, plan.versions))
    }
}

/// Why a step of the preparation failed: the catalog (retried) or the schema (the table stops).
enum Failure {
    Catalog(iceberg::Error),
    Schema(SchemaError),
    /// A version whose rows the table cannot take.
    Version(evolve::Refused),
    /// A partition spec the table's columns cannot take.
    Partition(PartitionError),
}

impl From<iceberg::Error> for Failure {
    fn from(e: iceberg::Error) -> Self {
        Failure::Catalog(e)
    }
}

impl From<SchemaError> for Failure {
    fn from(e: SchemaError) -> Self {
        Failure::Schema(e)
    }
}

/// Whether loading failed because the table is not there (both catalogs say so with this kind).
fn is_not_found(e: &iceberg::Error) -> bool {
    e.kind() == ErrorKind::TableNotFound
}

/// Table property of a mirror table: the field ids of the key its equality deletes use (`1,3`).
pub const MIRROR_KEY: &str = "philotes.mirror-key";

/// Table properties of every table philotes creates.
pub fn table_properties(pipeline: &str) -> HashMap<String, String> {
    HashMap::from([
        // Exactly once: the crate's own retry would re-apply an append on a newer table; we retry ourselves.
        ("commit.retry.num-retries".to_string(), "0".to_string()),
        ("write.parquet.compression-codec".to_string(), "zstd".to_string()),
        ("philotes.pipeline".to_string(), pipeline.to_string()),
    ])
}
