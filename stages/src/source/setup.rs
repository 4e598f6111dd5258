//! Preparing the source over a plain SQL session: wal_level, the publication and the slot, created when missing.
//!
//! This is the one module that holds SQL against the *source* catalog. Identifiers from the pipeline file are
//! always quoted.

use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;

use super::SourceError;
use crate::position::Lsn;
use crate::table_id::TableId;

/// Which tables the pipeline captures (`source.postgres.tables`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishedTables {
    /// Every user table ([`user_tables`]), now and created later: philotes lists them in the publication
    /// itself (never `FOR ALL TABLES`, which would publish keyless tables and philotes' own), and adds new ones
    /// while it runs. An existing `FOR ALL TABLES` publication is used as it is.
    All,
    /// These tables, in the order written.
    Listed(Vec<TableId>),
}

impl PublishedTables {
    /// Whether `table` is captured.
    pub fn includes(&self, table: &TableId) -> bool {
        match self {
            PublishedTables::All => true,
            PublishedTables::Listed(tables) => tables.contains(table),
        }
    }
}

/// The slot as found (or created).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotState {
    /// `confirmed_flush_lsn`: the server will not send transactions that ended at or before it.
    pub confirmed_flush: Lsn,
    /// Whether this call created it (a new slot starts at the current WAL end).
    pub created: bool,
}

/// Quotes an SQL identifier (`"a""b"`), so names from the pipeline file are taken literally.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Refuses a source whose `wal_level` is not `logical`, with the fix in the message.
pub async fn check_wal_level(client: &Client) -> Result<(), SourceError> {
    let level: String = client.query_one("SHOW wal_level", &[]).await?.get(0);
    if level == "logical" {
        Ok(())
    } else {
        Err(SourceError::WalLevel(level))
    }
}

/// Names of the SQL catalog's own tables (iceberg-rust and pyiceberg): never user data, never captured by `all`.
pub const CATALOG_TABLES: [&str; 2] = ["iceberg_tables", "iceberg_namespace_properties"];

/// Whether `tables: all` leaves this table out: philotes' own schema (every pipeline's buffer and control
/// tables) and the SQL catalog's tables, which live in the source database when the buffer and catalog do.
pub fn excluded_from_all(schema: &str, table: &str) -> bool {
    schema == "philotes" || CATALOG_TABLES.contains(&table)
}

/// A source table as the catalog describes it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogTable {
    /// `pg_class.oid`.
    pub relid: u32,
    /// Its schema now.
    pub schema: String,
    /// Its name now.
    pub name: String,
    /// `r` table, `p` partitioned table, anything else is not a table.
    pub kind: char,
    /// The root of the partition tree it belongs to, when it is a partition.
    pub partition_of: Option<String>,
    /// Why the application's UPDATE and DELETE would fail once the table is published (`None`: it has a usable
    /// replica identity).
    pub keyless: Option<String>,
    /// Columns PostgreSQL computes (`GENERATED ALWAYS AS … STORED`): pgoutput in PostgreSQL 15 does not send them.
    pub generated: Vec<String>,
}

impl CatalogTable {
    /// `schema.table` as a person reads it (and the pipeline file takes it: quoted where a part needs it).
    pub fn qualified(&self) -> String {
        TableId::new(self.schema.clone(), self.name.clone()).to_string()
    }
}

const DESCRIBE_TABLES: &str = "
SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text,
       CASE WHEN c.relispartition THEN (SELECT rn.nspname || '.' || r.relname FROM pg_class r
            JOIN pg_namespace rn ON rn.oid = r.relnamespace WHERE r.oid = pg_partition_root(c.oid)) END,
       c.relreplident::text,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
       ARRAY(SELECT a.attname::text FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = 's'
             ORDER BY a.attnum)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace";

fn catalog_table(row: &tokio_postgres::Row) -> CatalogTable {
    let (schema, name): (String, String) = (row.get(1), row.get(2));
    let identity: String = row.get(5);
    let has_key: bool = row.get(6);
    let fix = format!(
        "give it a primary key, or run ALTER TABLE {}.{} REPLICA IDENTITY FULL",
        quote_ident(&schema),
        quote_ident(&name)
    );
    let keyless = match identity.as_str() {
        "d" if !has_key => Some(format!(
            "it has no primary key and REPLICA IDENTITY DEFAULT: once published, the application's UPDATE and DELETE \
             on it would fail; {fix}"
        )),
        "n" => Some(format!(
            "it has REPLICA IDENTITY NOTHING: once published, the application's UPDATE and DELETE on it would fail; {fix}"
        )),
        _ => None,
    };
    CatalogTable {
        relid: row.get(0),
        schema,
        name,
        kind: row.get::<_, String>(3).chars().next().unwrap_or(' '),
        partition_of: row.get(4),
        keyless,
        generated: row.get(7),
    }
}

/// The table with this OID, `None` when it no longer exists.
pub async fn table_by_oid(client: &Client, relid: u32) -> Result<Option<CatalogTable>, SourceError> {
    let row = client.query_opt(&format!("{DESCRIBE_TABLES} WHERE c.oid = $1"), &[&relid]).await?;
    Ok(row.as_ref().map(catalog_table))
}

/// The table with this name, `None` when there is none.
pub async fn table_by_name(client: &Client, schema: &str, table: &str) -> Result<Option<CatalogTable>, SourceError> {
    let qualified = format!("{}.{}", quote_ident(schema), quote_ident(table));
    let row = client
        .query_opt(&format!("{DESCRIBE_TABLES} WHERE c.oid = to_regclass($1)"), &[&qualified])
        .await?;
    Ok(row.as_ref().map(catalog_table))
}

/// Every user table `tables: all` means: ordinary and partitioned tables (partitions arrive under their root)
/// outside the system schemas, philotes' schema and the SQL catalog's tables.
pub async fn user_tables(client: &Client) -> Result<Vec<CatalogTable>, SourceError> {
    let rows = client
        .query(
            &format!(
                "{DESCRIBE_TABLES} WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
                   AND c.relpersistence = 'p'
                 ORDER BY n.nspname, c.relname"
            ),
            &[],
        )
        .await?;
    Ok(rows.iter().map(catalog_table).filter(|t| !excluded_from_all(&t.schema, &t.name)).collect())
}

/// The publication as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationState {
    /// `FOR ALL TABLES`: it sends every table (philotes' own included, which SchemaResolve leaves out).
    pub all_tables: bool,
    /// `publish_via_partition_root`.
    pub via_root: bool,
    /// The OIDs it sends (listed, or through `FOR TABLES IN SCHEMA`).
    pub members: Vec<u32>,
}

/// The publication, `None` when it does not exist.
pub async fn publication(client: &Client, name: &str) -> Result<Option<PublicationState>, SourceError> {
    let Some(row) = client
        .query_opt("SELECT oid, puballtables, pubviaroot FROM pg_publication WHERE pubname = $1", &[&name])
        .await?
    else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    // pg_publication_tables would list partitions instead of a root when pubviaroot is off (and the root would
    // look missing): membership is read from the catalog itself.
    let members = client
        .query(
            "SELECT prrelid FROM pg_publication_rel WHERE prpubid = $1
             UNION SELECT c.oid FROM pg_publication_namespace pn JOIN pg_class c ON c.relnamespace = pn.pnnspid
             WHERE pn.pnpubid = $1 AND c.relkind IN ('r', 'p')",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(Some(PublicationState { all_tables: row.get(1), via_root: row.get(2), members }))
}

/// Creates the publication for `tables`, sending partitions' changes under their root's name, and marks it as
/// `pipeline`'s ([`publication_marker`]), so `philotes drop` removes only a publication philotes made.
pub async fn create_publication(client: &Client, name: &str, tables: &[CatalogTable], pipeline: &str) -> Result<(), SourceError> {
    let list = if tables.is_empty() { String::new() } else { format!(" FOR TABLE {}", table_list(tables)) };
    client
        .batch_execute(&format!(
            "CREATE PUBLICATION {name}{list} WITH (publish_via_partition_root = true);
             COMMENT ON PUBLICATION {name} IS '{marker}'",
            name = quote_ident(name),
            marker = publication_marker(pipeline).replace('\'', "''"),
        ))
        .await?;
    Ok(())
}

/// The comment philotes puts on a publication it created for `pipeline`.
pub fn publication_marker(pipeline: &str) -> String {
    format!("created by philotes pipeline {pipeline}")
}

/// What [`drop_source`] did with the slot and the publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceDrop {
    /// Whether the slot existed (and is now dropped).
    pub slot_dropped: bool,
    /// Whether the publication was dropped; `Some(false)`: it exists but philotes did not create it (kept).
    pub publication_dropped: Option<bool>,
}

/// Whether a process streams from `slot` now.
pub async fn slot_active(client: &Client, slot: &str) -> Result<bool, SourceError> {
    let row = client.query_opt("SELECT active FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await?;
    Ok(row.is_some_and(|r| r.get::<_, bool>(0)))
}

/// Drops `pipeline`'s slot and, when philotes created it for this pipeline, its publication.
pub async fn drop_source(client: &Client, slot: &str, publication: &str, pipeline: &str) -> Result<SourceDrop, SourceError> {
    let slot_dropped = client
        .query_opt("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await?
        .is_some();
    let comment = client
        .query_opt("SELECT coalesce(obj_description(oid, 'pg_publication'), '') FROM pg_publication WHERE pubname = $1", &[&publication])
        .await?
        .map(|r| r.get::<_, String>(0));
    let publication_dropped = match comment {
        None => None,
        Some(comment) if comment == publication_marker(pipeline) => {
            client.batch_execute(&format!("DROP PUBLICATION {}", quote_ident(publication))).await?;
            Some(true)
        }
        Some(_) => Some(false),
    };
    Ok(SourceDrop { slot_dropped, publication_dropped })
}

/// Adds tables to an existing publication (never removes any: another pipeline may share it).
pub async fn add_to_publication(client: &Client, name: &str, tables: &[CatalogTable]) -> Result<(), SourceError> {
    if tables.is_empty() {
        return Ok(());
    }
    client
        .batch_execute(&format!("ALTER PUBLICATION {} ADD TABLE {}", quote_ident(name), table_list(tables)))
        .await?;
    Ok(())
}

/// Turns on `publish_via_partition_root`: without it a partitioned table's changes arrive under each
/// partition's name (or, for a listed root, not at all).
pub async fn publish_via_root(client: &Client, name: &str) -> Result<(), SourceError> {
    client
        .batch_execute(&format!("ALTER PUBLICATION {} SET (publish_via_partition_root = true)", quote_ident(name)))
        .await?;
    Ok(())
}

/// Whether the table holds any row (a table that joins a publication late had rows the stream never sent).
pub async fn has_rows(client: &Client, table: &CatalogTable) -> Result<bool, SourceError> {
    let sql = format!("SELECT EXISTS (SELECT 1 FROM {}.{})", quote_ident(&table.schema), quote_ident(&table.name));
    Ok(client.query_one(&sql, &[]).await?.get(0))
}

fn table_list(list: &[CatalogTable]) -> String {
    list.iter()
        .map(|t| format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Finds the logical slot or creates it (pgoutput). An invalidated slot (WAL removed past
/// `max_slot_wal_keep_size`) is a clear error with the way back.
pub async fn ensure_slot(client: &Client, slot: &str, pipeline: &str) -> Result<SlotState, SourceError> {
    let row = client
        .query_opt(
            "SELECT plugin::text, confirmed_flush_lsn, wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    if let Some(row) = row {
        let plugin: Option<String> = row.get(0);
        let confirmed: Option<PgLsn> = row.get(1);
        let wal_status: Option<String> = row.get(2);
        if wal_status.as_deref() == Some("lost") {
            return Err(SourceError::SlotInvalidated { slot: slot.to_string(), pipeline: pipeline.to_string() });
        }
        if plugin.as_deref() != Some("pgoutput") {
            return Err(SourceError::WrongPlugin {
                slot: slot.to_string(),
                plugin: plugin.unwrap_or_else(|| "none (a physical slot)".into()),
            });
        }
        return Ok(SlotState { confirmed_flush: confirmed.map_or(Lsn::ZERO, |l| Lsn(u64::from(l))), created: false });
    }
    // A statement of its own: pg_create_logical_replication_slot refuses to run inside a multi-statement batch.
    let row = client
        .query_one("SELECT lsn FROM pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot])
        .await?;
    let lsn: PgLsn = row.get(0);
    Ok(SlotState { confirmed_flush: Lsn(u64::from(lsn)), created: true })
}

/// The slot as `philotes status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotStatus {
    /// Whether a walsender streams from it now (a capture is running).
    pub active: bool,
    /// What the slot has confirmed: WAL before it may be removed.
    pub confirmed_flush: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost` (invalidated).
    pub wal_status: Option<String>,
    /// The source's current WAL position.
    pub current: Lsn,
    /// Bytes of WAL between the confirmed position and the current one: how far capture is behind.
    pub lag_bytes: Option<i64>,
    /// Bytes of WAL the slot keeps on the server (from its `restart_lsn`): what fills the source's disk.
    pub retained_bytes: Option<i64>,
    /// The server's `max_slot_wal_keep_size` in bytes (`None`: unlimited, -1).
    pub keep_size_bytes: Option<i64>,
}

/// The slot's state, `None` when it does not exist.
pub async fn slot_status(client: &Client, slot: &str) -> Result<Option<SlotStatus>, SourceError> {
    let row = client
        .query_opt(
            "SELECT active, confirmed_flush_lsn, wal_status, pg_current_wal_lsn(),
                    (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, (pg_current_wal_lsn() - restart_lsn)::bigint,
                    nullif(pg_size_bytes(current_setting('max_slot_wal_keep_size')), -1)
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| SlotStatus {
        active: r.get(0),
        confirmed_flush: r.get::<_, Option<PgLsn>>(1).map(|l| Lsn(u64::from(l))),
        wal_status: r.get(2),
        current: Lsn(u64::from(r.get::<_, PgLsn>(3))),
        lag_bytes: r.get(4),
        retained_bytes: r.get(5),
        keep_size_bytes: r.get(6),
    }))
}

/// The prefix of philotes' heartbeat messages (ignored by every consumer that does not know it).
pub const HEARTBEAT_PREFIX: &str = "philotes.heartbeat";

/// Writes one heartbeat: a transactional logical message in a transaction of its own.
pub async fn emit_heartbeat(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.execute("SELECT pg_logical_emit_message(true, $1, '')", &[&HEARTBEAT_PREFIX]).await?;
    Ok(())
}
