//! The Iceberg catalog of a flusher, the guard that makes each commit exactly-once, and ([`table`]) the
//! preparation of the tables in it.
//!
//! `Transaction::commit` of the iceberg crate reloads the table before it commits and, when another commit
//! landed in between, silently re-applies the append on the newer table. For philotes that would write a flush
//! twice when two flushers race on one table (a flusher whose lease was lost but whose commit is still in
//! flight). [`GuardedCatalog`] closes that gap: while a commit of table T is guarded with the snapshot id the
//! flusher checked its position against, the reload inside the commit fails unless T's current snapshot is still
//! that one; between that reload and the catalog's compare-and-swap, the append's own `RefSnapshotIdMatch`
//! requirement fails the same way. So a commit lands only on the exact table state whose `philotes.last-lsn`
//! was checked (DESIGN.md, the second atomic step).

pub mod evolve;
pub mod partition;
pub mod table;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use iceberg::table::Table;
use iceberg::{
    Catalog, CatalogBuilder, Error, ErrorKind, Namespace, NamespaceIdent, Result, TableCommit, TableCreation,
    TableIdent,
};
use iceberg_catalog_rest::RestCatalogBuilder;
use iceberg_catalog_sql::SqlCatalogBuilder;
use iceberg_storage_opendal::OpenDalResolvingStorageFactory;

use crate::position::{Lsn, Position};

/// Snapshot summary key: the pipeline that wrote the snapshot.
pub const SUMMARY_PIPELINE: &str = "philotes.pipeline";
/// Snapshot summary key: commit LSN of the last change in the table after this snapshot (`16/B374D848`).
pub const SUMMARY_LAST_LSN: &str = "philotes.last-lsn";
/// Snapshot summary key: seq of that last change within its transaction.
pub const SUMMARY_LAST_SEQ: &str = "philotes.last-seq";
/// Snapshot summary key: the token of the retry (`philotes dead-letters retry`) whose changes this snapshot wrote.
/// A retry's changes are behind the watermark, so their position cannot say whether they are in the table; the
/// token can ([`has_retry`]).
pub const SUMMARY_RETRY: &str = "philotes.retry";

/// Which catalog and warehouse (YAML `sink.iceberg.catalog` / `warehouse`).
#[derive(Debug, Clone)]
pub enum CatalogSettings {
    /// The SQL catalog (tables `iceberg_tables`/`iceberg_namespace_properties`, as pyiceberg and Java's JDBC
    /// catalog lay them out) in a Postgres database.
    Sql {
        /// Catalog name: part of every row's key, so readers must use the same.
        name: String,
        /// `postgres://…` URL of the catalog database.
        uri: String,
        /// Warehouse location (`file:///…` or `s3://…`).
        warehouse: String,
        /// Extra properties (S3 settings).
        props: HashMap<String, String>,
    },
    /// An Iceberg REST catalog.
    Rest {
        /// Catalog name.
        name: String,
        /// The REST endpoint.
        uri: String,
        /// Warehouse property, when the server needs one.
        warehouse: Option<String>,
        /// Extra properties (token, credential, S3 settings).
        props: HashMap<String, String>,
    },
}

/// How long a flusher waits for the SQL catalog's database before it says why it cannot reach it (the crate's
/// own pool would wait 30 s and then say only "pool timed out while waiting for an open connection").
const CATALOG_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Advisory lock held while the SQL catalog's tables are created, so processes starting together on a fresh
/// catalog database do not race `CREATE TABLE IF NOT EXISTS` (which fails with a unique violation on `pg_type`
/// when two sessions create the same table at once). The bytes spell "philcat1".
const CATALOG_TABLES_LOCK: i64 = 0x7068_696c_6361_7431;

/// The SQL catalog's tables exactly as `iceberg-catalog-sql` 0.10 creates them (and pyiceberg and Java's JDBC
/// catalog read them), unqualified, so they land where the crate's own statements look (the search path).
const CATALOG_TABLES_DDL: &str = "
CREATE TABLE IF NOT EXISTS iceberg_tables (
    catalog_name VARCHAR(255) NOT NULL,
    table_namespace VARCHAR(255) NOT NULL,
    table_name VARCHAR(255) NOT NULL,
    metadata_location VARCHAR(1000),
    previous_metadata_location VARCHAR(1000),
    iceberg_type VARCHAR(5),
    PRIMARY KEY (catalog_name, table_namespace, table_name));
CREATE TABLE IF NOT EXISTS iceberg_namespace_properties (
    catalog_name VARCHAR(255) NOT NULL,
    namespace VARCHAR(255) NOT NULL,
    property_key VARCHAR(255),
    property_value VARCHAR(1000),
    PRIMARY KEY (catalog_name, namespace, property_key));";

/// Before the crate opens its pool: connects to the SQL catalog's database with a timeout, so an unreachable
/// database fails in seconds with its address and the real cause, and creates the catalog's tables under
/// [`CATALOG_TABLES_LOCK`] (the crate's own `CREATE TABLE IF NOT EXISTS` then finds them). A URI tokio-postgres
/// cannot parse is left to the crate, which reports it.
async fn prepare_sql_catalog(uri: &str) -> Result<()> {
    let Ok(mut config) = crate::store::tls::parse(uri, None) else { return Ok(()) };
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CATALOG_CONNECT_TIMEOUT);
    }
    let address = crate::store::describe(&config);
    let fail = |doing: &str, cause: String| {
        Error::new(ErrorKind::Unexpected, format!("SQL catalog database {address}: {doing}: {cause}")).with_retryable(true)
    };
    let client = match tokio::time::timeout(CATALOG_CONNECT_TIMEOUT, crate::store::connect(&config)).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return Err(fail("cannot connect", crate::report::chain(&e))),
        Err(_) => return Err(fail("cannot connect", format!("no answer within {CATALOG_CONNECT_TIMEOUT:?}"))),
    };
    client
        .batch_execute(&format!("BEGIN; SELECT pg_advisory_xact_lock({CATALOG_TABLES_LOCK}); {CATALOG_TABLES_DDL} COMMIT;"))
        .await
        .map_err(|e| fail("creating the catalog tables iceberg_tables and iceberg_namespace_properties", crate::report::chain(&e)))
}

/// Connects to the configured catalog.
pub async fn connect(settings: &CatalogSettings) -> Result<Arc<dyn Catalog>> {
    let storage = Arc::new(OpenDalResolvingStorageFactory::new());
    match settings {
        CatalogSettings::Sql { name, uri, warehouse, props } => {
            prepare_sql_catalog(uri).await?;
            let mut props = props.clone();
            props.entry("pool.max-connections".into()).or_insert_with(|| "4".into());
            let catalog = SqlCatalogBuilder::default()
                .uri(uri.clone())
                .warehouse_location(warehouse.clone())
                .with_storage_factory(storage)
                .load(name.clone(), props)
                .await?;
            Ok(Arc::new(catalog))
        }
        CatalogSettings::Rest { name, uri, warehouse, props } => {
            let mut props = props.clone();
            props.insert("uri".into(), uri.clone());
            if let Some(warehouse) = warehouse {
                props.insert("warehouse".into(), warehouse.clone());
            }
            let catalog = RestCatalogBuilder::default().with_storage_factory(storage).load(name.clone(), props).await?;
            Ok(Arc::new(catalog))
        }
    }
}

/// The summaries of `pipeline`'s snapshots in the table's history, newest first: the current snapshot and its
/// ancestors, walking back through the parents.
pub fn pipeline_summaries<'a>(table: &'a Table, pipeline: &'a str) -> impl Iterator<Item = &'a HashMap<String, String>> + 'a {
    let metadata = table.metadata();
    let mut snapshot = metadata.current_snapshot();
    std::iter::from_fn(move || {
        let current = snapshot?;
        snapshot = current.parent_snapshot_id().and_then(|id| metadata.snapshot_by_id(id));
        Some(&current.summary().additional_properties)
    })
    .filter(move |props| props.get(SUMMARY_PIPELINE).map(String::as_str) == Some(pipeline))
}

/// The last position a pipeline committed to `table`: the newest snapshot (walking back from the current one)
/// whose summary says it was written by `pipeline`.
pub fn committed_position(table: &Table, pipeline: &str) -> Option<Position> {
    pipeline_summaries(table, pipeline).find_map(|props| {
        let lsn: Lsn = props.get(SUMMARY_LAST_LSN)?.parse().ok()?;
        let seq: u64 = props.get(SUMMARY_LAST_SEQ)?.parse().ok()?;
        Some(Position::new(lsn, seq))
    })
}

/// Whether a snapshot of `pipeline` in the table's history (the current snapshot and its ancestors) wrote the
/// retry `token`: a flush of the retry that crashed before its buffer checkpoint is then only checkpointed.
pub fn has_retry(table: &Table, pipeline: &str, token: &str) -> bool {
    pipeline_summaries(table, pipeline).any(|props| props.get(SUMMARY_RETRY).map(String::as_str) == Some(token))
}

/// A catalog whose commits of a guarded table only land on the snapshot the guard names.
#[derive(Debug)]
pub struct GuardedCatalog {
    inner: Arc<dyn Catalog>,
    /// Table → the snapshot id (None: no snapshot yet) a commit in flight was checked against.
    guards: Mutex<HashMap<TableIdent, Option<i64>>>,
}

impl GuardedCatalog {
    /// Wraps a catalog.
    pub fn new(inner: Arc<dyn Catalog>) -> Self {
        Self { inner, guards: Mutex::new(HashMap::new()) }
    }

    /// From now until [`GuardedCatalog::unguard`], loads of `table` fail with a conflict unless its current
    /// snapshot is `expected`.
    pub fn guard(&self, table: &TableIdent, expected: Option<i64>) {
        if let Ok(mut guards) = self.guards.lock() {
            guards.insert(table.clone(), expected);
        }
    }

    /// Ends the guard of `table`.
    pub fn unguard(&self, table: &TableIdent) {
        if let Ok(mut guards) = self.guards.lock() {
            guards.remove(table);
        }
    }

    /// Loads a table without the guard (to read its current position).
    pub async fn load_unguarded(&self, table: &TableIdent) -> Result<Table> {
        self.inner.load_table(table).await
    }

    /// The wrapped catalog.
    pub fn inner(&self) -> &Arc<dyn Catalog> {
        &self.inner
    }
}

/// Whether an iceberg error is a commit conflict (another commit landed first): the kind both catalogs, the
/// crate's requirement checks and [`GuardedCatalog`] give it.
pub fn is_conflict(error: &Error) -> bool {
    error.kind() == ErrorKind::CatalogCommitConflicts
}

#[async_trait]
impl Catalog for GuardedCatalog {
    async fn list_namespaces(&self, parent: Option<&NamespaceIdent>) -> Result<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }
    async fn create_namespace(&self, namespace: &NamespaceIdent, properties: HashMap<String, String>) -> Result<Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }
    async fn get_namespace(&self, namespace: &NamespaceIdent) -> Result<Namespace> {
        self.inner.get_namespace(namespace).await
    }
    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        self.inner.namespace_exists(namespace).await
    }
    async fn update_namespace(&self, namespace: &NamespaceIdent, properties: HashMap<String, String>) -> Result<()> {
        self.inner.update_namespace(namespace, properties).await
    }
    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        self.inner.drop_namespace(namespace).await
    }
    async fn list_tables(&self, namespace: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        self.inner.list_tables(namespace).await
    }
    async fn create_table(&self, namespace: &NamespaceIdent, creation: TableCreation) -> Result<Table> {
        self.inner.create_table(namespace, creation).await
    }
    async fn load_table(&self, table: &TableIdent) -> Result<Table> {
        let loaded = self.inner.load_table(table).await?;
        let expected = self.guards.lock().ok().and_then(|g| g.get(table).copied());
        if let Some(expected) = expected {
            let current = loaded.metadata().current_snapshot_id();
            if current != expected {
                return Err(Error::new(
                    ErrorKind::CatalogCommitConflicts,
                    format!("table {table} moved from snapshot {expected:?} to {current:?} since its position was checked"),
                )
                .with_retryable(false));
            }
        }
        Ok(loaded)
    }
    async fn drop_table(&self, table: &TableIdent) -> Result<()> {
        self.inner.drop_table(table).await
    }
    async fn purge_table(&self, table: &TableIdent) -> Result<()> {
        self.inner.purge_table(table).await
    }
    async fn table_exists(&self, table: &TableIdent) -> Result<bool> {
        self.inner.table_exists(table).await
    }
    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> Result<()> {
        self.inner.rename_table(src, dest).await
    }
    async fn register_table(&self, table: &TableIdent, metadata_location: String) -> Result<Table> {
        self.inner.register_table(table, metadata_location).await
    }
    async fn update_table(&self, commit: TableCommit) -> Result<Table> {
        self.inner.update_table(commit).await
    }
}
