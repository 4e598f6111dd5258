//! Table preparation: before a flush writes, its Iceberg table exists (created with its namespace on first use)
//! and has every column of the schema versions the flush's rows were captured with. One module, called by the
//! flush job once per flush (`claim::FlushJob::prepared`), so no stage creates or evolves tables on the side.

use std::collections::HashMap;
use std::sync::Arc;

use iceberg::spec::TableMetadataBuildResult;
use iceberg::table::Table;
use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
use iceberg::{ErrorKind, TableCreation, TableIdent};
use philotes_schemas::TableSchema;

use super::partition::{self, PartitionError, PartitionField};
use super::{committed_position, GuardedCatalog};
use crate::iceberg_commit::CommitCatalog;
use crate::changelog::{self, SchemaError};
use crate::mirror::MirrorLayout;
use crate::position::Position;
use crate::table_id::TableId;

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
    commits: Arc<CommitCatalog>,
}

impl Tables {
    /// The tables of `pipeline` in `catalog`, whose metadata changes of our own go through `commits`.
    pub fn new(pipeline: &str, catalog: Arc<GuardedCatalog>, commits: Arc<CommitCatalog>) -> Self {
        Self { pipeline: pipeline.to_string(), catalog, commits }
    }

    /// Commits `built` (a change of `base`'s metadata that adds no snapshot) and loads the table as it is then.
    /// A commit that lost the race is a conflict, retried like any other.
    pub async fn commit_metadata(&self, base: &Table, built: TableMetadataBuildResult) -> Result<Table, iceberg::Error> {
        if let Err(e) = self.commits.commit_metadata(base, built).await {
            let kind = if e.is_conflict() { ErrorKind::CatalogCommitConflicts } else { ErrorKind::Unexpected };
            return Err(iceberg::Error::new(kind, crate::report::chain(&e)));
        }
        self.catalog.inner().load_table(base.identifier()).await
    }

    /// Makes `ident` ready for rows of `source` written with the schema versions `used` (`latest` is the
    /// newest version, which a new table is created from) and reads its committed position; `mirror` asks for
    /// the mirror layout instead of the changelog one, `partition` is the spec the table is created with (or
    /// given as its new default spec). A catalog or warehouse failure is an error (retried); a schema the table
    /// cannot follow (or a mirror table without a usable key, a table made in the other layout, a partition
    /// spec its columns cannot take) is [`Prepared::Stopped`].
    pub async fn prepare(
        &self,
        ident: &TableIdent,
        source: &TableId,
        latest: &TableSchema,
        used: &[&Arc<TableSchema>],
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
        if mirror {
            if let Err(e) = crate::mirror::check_key(latest) {
                return stopped(e);
            }
        }
        let table = match self.load_or_create(ident, latest, mirror, partition).await {
            Err(Failure::Schema(e)) => return stopped(e),
            Err(Failure::Partition(e)) => return refused(e),
            Err(Failure::Catalog(e)) => return Err(e),
            Ok(table) => table,
        };
        if let Err(e) = crate::mirror::check_mode(&table, mirror) {
            return stopped(e);
        }
        let table = match self.evolve(table, used).await {
            Err(Failure::Schema(e)) => return stopped(e),
            Err(Failure::Partition(e)) => return refused(e),
            Err(Failure::Catalog(e)) => return Err(e),
            Ok(table) => table,
        };
        let table = match self.partition(table, partition, mirror).await? {
            Err(e) => return refused(e),
            Ok(table) => table,
        };
        let mirror = match mirror.then(|| MirrorLayout::new(&table, latest)).transpose() {
            Err(e) => return stopped(e),
            Ok(layout) => layout.map(Arc::new),
        };
        let committed = committed_position(&table, &self.pipeline);
        Ok(Prepared::Ready { committed, table: Box::new(table), mirror })
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

    /// Adds the columns of `versions` the table lacks.
    async fn evolve(&self, mut table: Table, versions: &[&Arc<TableSchema>]) -> Result<Table, Failure> {
        for version in versions {
            let missing = changelog::missing_columns(table.metadata().current_schema(), version)?;
            if missing.is_empty() {
                continue;
            }
            let tx = Transaction::new(&table);
            let mut action = tx.update_schema();
            for (name, field_type) in &missing {
                action = action.add_column(AddColumn::optional(name, field_type.clone()));
            }
            let tx = action.apply(tx)?;
            table = tx.commit(self.catalog.inner().as_ref()).await?;
            tracing::info!(table = %table.identifier(), columns = ?missing.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                "added columns to the iceberg table");
        }
        Ok(table)
    }
}

/// Why a step of the preparation failed: the catalog (retried), the schema or the partition spec (the table
/// stops).
enum Failure {
    Catalog(iceberg::Error),
    Schema(SchemaError),
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

/// Table properties of every table philotes creates.
pub fn table_properties(pipeline: &str) -> HashMap<String, String> {
    HashMap::from([
        // Exactly once: the crate's own retry would re-apply an append on a newer table; we retry ourselves.
        ("commit.retry.num-retries".to_string(), "0".to_string()),
        ("write.parquet.compression-codec".to_string(), "zstd".to_string()),
        ("philotes.pipeline".to_string(), pipeline.to_string()),
    ])
}
