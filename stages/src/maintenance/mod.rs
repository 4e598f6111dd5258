//! Table maintenance: compaction ([`compact`]) and snapshot expiry ([`expire`]) of a pipeline's Iceberg
//! tables, one table at a time, each under the table's flush lease ([`lease`]); run by `philotes compact` and,
//! with `sink.iceberg.compaction` set, every `interval` beside the flusher role ([`run_periodic`]).
//!
//! Why it exists: a flush writes a few files per commit, and a mirror table piles up equality-delete files that
//! every reader applies again on every read (and pyiceberg cannot apply at all). Compaction rewrites a table's
//! rows, deletes applied, into few large files in one `replace` snapshot; expiry drops snapshots past the
//! retention and deletes the files only they referenced.
//!
//! Exactly once is not at stake in the rows (a rewrite changes none) but in the position: the flush learns what
//! Iceberg already has from the newest snapshot carrying `philotes.last-lsn` ([`committed_position`]). So the
//! compaction snapshot carries its base's position, and expiry never removes a snapshot on the way from the
//! current one to the one carrying the position: losing it would make the next flush write changes twice.
//! Every commit here is a compare-and-set on the exact table state it was built on
//! ([`crate::iceberg_commit::row_delta`]): a commit that lands in between makes the work start again from the
//! new state. The lease only avoids that wasted work; the compare-and-set is what makes it safe.
//!
//! Commits go through the SQL catalog's compare-and-set (its `UPDATE iceberg_tables`) or a REST catalog's
//! commit request (`row_delta::rest`), both landing only on the table state read.

pub mod compact;
pub mod expire;
pub mod lease;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use iceberg::spec::{DataContentType, ManifestFile, SnapshotRef, TableMetadata};
use iceberg::table::Table;
use iceberg::{Catalog, NamespaceIdent, TableIdent, TableUpdate};
use tokio_postgres::Config;
use tokio_util::sync::CancellationToken;

use crate::catalog::{self, CatalogSettings};
use crate::claim::TargetFn;
use crate::iceberg_commit::row_delta::rest::RestCommitter;
use crate::iceberg_commit::row_delta::{self, RowDeltaError, StagedRowDelta};
use crate::store::watermarks;
use crate::table_id::TableId;
use compact::{CompactOptions, CompactReport};
use expire::ExpireReport;
use lease::Lease;

/// How many times a compaction or an expiry is built again after another commit landed first, before it gives
/// up for this round (a table flushed without a lease, by a flusher of another version, say).
pub const MAX_ATTEMPTS: u32 = 5;

/// How long a table's lease is waited for when a flush holds it, before the table is skipped for this round.
/// A flush holds it for one flush (seconds); a minute means a flusher is stuck or the table very busy.
pub const DEFAULT_LEASE_WAIT: Duration = Duration::from_secs(60);

/// Why maintenance of a table failed.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    /// Loading, reading or writing the table failed.
    #[error("iceberg table {table}: {source}")]
    Iceberg {
        /// The table.
        table: TableIdent,
        /// The crate's error (boxed: it is big, and every result here carries this type).
        source: Box<iceberg::Error>,
    },
    /// Connecting to the catalog failed.
    #[error("iceberg catalog: {0}")]
    Catalog(iceberg::Error),
    /// Arrow could not bring the table's rows into its current schema.
    #[error("iceberg table {table}: rows of an older schema: {source}")]
    Arrow {
        /// The table.
        table: TableIdent,
        /// Arrow's error.
        source: arrow::error::ArrowError,
    },
    /// The commit failed for another reason than a newer table state.
    #[error(transparent)]
    Commit(#[from] RowDeltaError),
    /// Other commits kept landing first.
    #[error("iceberg table {table}: another commit landed first {attempts} times in a row; try again later")]
    Contended {
        /// The table.
        table: TableIdent,
        /// Attempts made.
        attempts: u32,
    },
    /// The change would break what the flush relies on (never committed).
    #[error("iceberg table {table}: {reason}")]
    Invariant {
        /// The table.
        table: TableIdent,
        /// What would break.
        reason: String,
    },
    /// The buffer database (the lease) failed.
    #[error("buffer database: {0}")]
    Buffer(tokio_postgres::Error),
    /// The SQL catalog's database could not be reached.
    #[error("SQL catalog database: {0}")]
    CatalogDatabase(tokio_postgres::Error),
}

impl MaintenanceError {
    fn iceberg(table: &TableIdent) -> impl FnOnce(iceberg::Error) -> Self + '_ {
        move |source| MaintenanceError::Iceberg { table: table.clone(), source: Box::new(source) }
    }
}

/// A catalog that maintenance can commit to: the catalog (to load tables) and where commits go: a session on
/// the SQL catalog's database (for the compare-and-set) with the catalog's name (part of every
/// `iceberg_tables` row), or a REST catalog's commit request.
pub struct MaintenanceCatalog {
    catalog: Arc<dyn Catalog>,
    commits: Commits,
}

enum Commits {
    Sql { client: tokio_postgres::Client, name: String },
    Rest(Box<RestCommitter>),
}

impl MaintenanceCatalog {
    /// Connects to the configured catalog.
    pub async fn connect(settings: &CatalogSettings) -> Result<Self, MaintenanceError> {
        let catalog = catalog::connect(settings).await.map_err(MaintenanceError::Catalog)?;
        match settings {
            CatalogSettings::Sql { name, uri, .. } => {
                let config: Config = crate::store::tls::parse_config(uri).map_err(MaintenanceError::CatalogDatabase)?;
                let client = crate::store::connect(&config).await.map_err(MaintenanceError::CatalogDatabase)?;
                Ok(Self::new(catalog, client, name))
            }
            CatalogSettings::Rest { uri, warehouse, props, .. } => Ok(Self {
                catalog,
                commits: Commits::Rest(Box::new(RestCommitter::new(uri, warehouse.clone(), props.clone()))),
            }),
        }
    }

    /// From parts already connected (`client` on the SQL catalog `name`'s database).
    pub fn new(catalog: Arc<dyn Catalog>, client: tokio_postgres::Client, name: &str) -> Self {
        Self { catalog, commits: Commits::Sql { client, name: name.to_string() } }
    }

    async fn load(&self, table: &TableIdent) -> Result<Table, MaintenanceError> {
        self.catalog.load_table(table).await.map_err(MaintenanceError::iceberg(table))
    }

    /// Makes a staged rewrite visible; the table as committed.
    async fn commit(&self, staged: StagedRowDelta) -> Result<Table, MaintenanceError> {
        match &self.commits {
            Commits::Sql { client, name } => Ok(row_delta::commit_sql(client, name, staged).await?),
            Commits::Rest(rest) => {
                let ident = staged.identifier().clone();
                rest.commit(staged).await?;
                self.load(&ident).await
            }
        }
    }

    /// Commits `new_metadata` (built on `base` without the snapshots `expired`).
    async fn commit_expiry(&self, base: &Table, new_metadata: TableMetadata, expired: &[i64]) -> Result<(), MaintenanceError> {
        match &self.commits {
            Commits::Sql { client, name } => {
                row_delta::commit_metadata_sql(client, name, base, new_metadata).await?;
            }
            Commits::Rest(rest) => {
                rest.commit_updates(base, vec![TableUpdate::RemoveSnapshots { snapshot_ids: expired.to_vec() }]).await?;
            }
        }
        Ok(())
    }
}

/// The files a table's current snapshot reads: its live data and delete files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileCounts {
    /// Live data files.
    pub data: usize,
    /// Live delete files (equality and position).
    pub deletes: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Rows in the data files (before deletes).
    pub records: u64,
}

impl FileCounts {
    /// Data and delete files.
    pub fn files(&self) -> usize {
        self.data + self.deletes
    }

    /// What `table`'s current snapshot reads (nothing without a snapshot).
    pub async fn of(table: &Table) -> Result<Self, iceberg::Error> {
        let mut counts = Self::default();
        let Some(snapshot) = table.metadata().current_snapshot() else { return Ok(counts) };
        for manifest in manifests(table, snapshot).await? {
            for entry in manifest.load_manifest(table.file_io()).await?.entries() {
                if !entry.is_alive() {
                    continue;
                }
                counts.bytes += entry.file_size_in_bytes();
                match entry.content_type() {
                    DataContentType::Data => {
                        counts.data += 1;
                        counts.records += entry.record_count();
                    }
                    _ => counts.deletes += 1,
                }
            }
        }
        Ok(counts)
    }
}

/// The manifests of `snapshot`'s manifest list.
async fn manifests(table: &Table, snapshot: &SnapshotRef) -> Result<Vec<ManifestFile>, iceberg::Error> {
    Ok(table.manifest_list_reader(snapshot).load().await?.entries().to_vec())
}

/// What maintenance needs from the pipeline file.
#[derive(Clone)]
pub struct MaintenanceSettings {
    /// The pipeline (its snapshots' `philotes.pipeline`, its lease rows).
    pub pipeline: String,
    /// The buffer database (the leases).
    pub buffer: Config,
    /// The catalog and warehouse.
    pub catalog: CatalogSettings,
    /// Source table → Iceberg table.
    pub target: TargetFn,
    /// Tables with fewer live data + delete files are not compacted.
    pub min_files: usize,
    /// Parquet target file size of the rewritten files (`sink.iceberg.target_file_size`).
    pub target_file_size: usize,
    /// Snapshots older than this are expired (`sink.iceberg.retention`).
    pub retention: Duration,
    /// How long a lease held by a flush is waited for.
    pub lease_wait: Duration,
}

impl std::fmt::Debug for MaintenanceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaintenanceSettings")
            .field("pipeline", &self.pipeline)
            .field("min_files", &self.min_files)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

/// What maintenance did to one table.
#[derive(Debug, Clone)]
pub enum TableOutcome {
    /// Compacted (or found not worth it) and expired.
    Done {
        /// The compaction.
        compact: CompactReport,
        /// The expiry.
        expire: ExpireReport,
    },
    /// A flush held the lease longer than the wait: nothing done, try again.
    Busy(Duration),
    /// The table has no lease row: it was never flushed, so it has no Iceberg table of this pipeline yet.
    NeverFlushed,
}

impl std::fmt::Display for TableOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableOutcome::Done { compact, expire } => write!(f, "{compact}; {expire}"),
            TableOutcome::Busy(wait) => {
                write!(f, "skipped: a flush held the table's lease for {}s; try again", wait.as_secs())
            }
            TableOutcome::NeverFlushed => write!(f, "skipped: never flushed (no Iceberg table of this pipeline yet)"),
        }
    }
}

/// Maintenance of one pipeline's tables: its catalog and a buffer session for the leases.
pub struct Maintenance {
    settings: MaintenanceSettings,
    catalog: MaintenanceCatalog,
    buffer: tokio_postgres::Client,
}

impl Maintenance {
    /// Connects to the catalog and the buffer database.
    pub async fn connect(settings: &MaintenanceSettings) -> Result<Self, MaintenanceError> {
        let catalog = MaintenanceCatalog::connect(&settings.catalog).await?;
        let mut buffer = settings.buffer.clone();
        if buffer.get_application_name().is_none() {
            // Who holds a lease shows in pg_stat_activity.
            buffer.application_name(format!("philotes_{} maintenance {}", settings.pipeline, std::process::id()));
        }
        let buffer = crate::store::connect(&buffer).await.map_err(MaintenanceError::Buffer)?;
        Ok(Self { settings: settings.clone(), catalog, buffer })
    }

    /// Every table of the pipeline that has been flushed (has a lease row), in name order.
    pub async fn tables(&self) -> Result<Vec<TableId>, MaintenanceError> {
        let rows = watermarks::all(&self.buffer, &self.settings.pipeline).await.map_err(MaintenanceError::Buffer)?;
        Ok(rows.into_iter().map(|w| TableId::new(w.source_schema, w.source_table)).collect())
    }

    /// The Iceberg table of source table `table`.
    pub fn target(&self, table: &TableId) -> TableIdent {
        let target = (self.settings.target)(table);
        TableIdent::new(NamespaceIdent::new(target.namespace), target.name)
    }

    /// Takes `table`'s lease (waiting for a flush that holds it), compacts, expires, and releases the lease.
    pub async fn table(&self, table: &TableId) -> Result<TableOutcome, MaintenanceError> {
        let settings = &self.settings;
        let lease = match Lease::take(&self.buffer, &settings.pipeline, table, settings.lease_wait).await? {
            lease::Taken::Held(lease) => lease,
            lease::Taken::Busy => return Ok(TableOutcome::Busy(settings.lease_wait)),
            lease::Taken::NoRow => return Ok(TableOutcome::NeverFlushed),
        };
        let result = self.under_lease(table).await;
        // A release that fails leaves the lease to the connection's end; the work is committed or not either way.
        if let Err(e) = lease.release().await {
            tracing::warn!(%table, error = %crate::report::chain(&e), "releasing the maintenance lease failed");
        }
        result
    }

    async fn under_lease(&self, table: &TableId) -> Result<TableOutcome, MaintenanceError> {
        let settings = &self.settings;
        let ident = self.target(table);
        let options = CompactOptions {
            pipeline: settings.pipeline.clone(),
            min_files: settings.min_files,
            target_file_size: settings.target_file_size,
        };
        let compact = compact::compact(&self.catalog, &ident, &options).await?;
        let expire = expire::expire(&self.catalog, &ident, &settings.pipeline, settings.retention).await?;
        Ok(TableOutcome::Done { compact, expire })
    }
}

/// Runs maintenance of every table of the pipeline every `interval` (the first round one `interval` after the
/// start), one table at a time, until `cancel` fires. Never fails: a round that fails is logged and the next
/// round tries again (the flush goes on either way). A compaction cut off by `cancel` commits nothing.
pub async fn run_periodic(settings: MaintenanceSettings, interval: Duration, cancel: CancellationToken) {
    tracing::info!(interval_s = interval.as_secs(), min_files = settings.min_files,
        retention_s = settings.retention.as_secs(), "table compaction and snapshot expiry run periodically");
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            result = round(&settings) => if let Err(e) = result {
                tracing::warn!(error = %crate::report::chain(&e), "table maintenance round failed; next round in {}s", interval.as_secs());
            },
        }
    }
}

/// One round over every table.
async fn round(settings: &MaintenanceSettings) -> Result<(), MaintenanceError> {
    let maintenance = Maintenance::connect(settings).await?;
    for table in maintenance.tables().await? {
        let target = maintenance.target(&table);
        match maintenance.table(&table).await {
            Ok(outcome) => tracing::info!(%table, iceberg = %target, "maintenance: {outcome}"),
            Err(e) => tracing::warn!(%table, iceberg = %target, error = %crate::report::chain(&e), "maintenance failed"),
        }
    }
    Ok(())
}

/// `bytes` for a person: `512 B`, `3.1 KiB`, `2.0 MiB`, `1.5 GiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `n thing` or `n things`.
fn plural(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}
