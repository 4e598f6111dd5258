//! Preparing the source over a plain SQL session: wal_level, the publication and the slot, created when missing.
//!
//! This is the one module that holds SQL against the *source* catalog. Identifiers from the pipeline file are
//! always quoted.

use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;

use super::SourceError;
use crate::position::Lsn;

/// Which tables the publication covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishedTables {
    /// `FOR ALL TABLES` (needs a superuser on the source).
    All,
    /// These `(schema, table)` pairs.
    Listed(Vec<(String, String)>),
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

/// Creates the publication when missing; when it exists for listed tables, adds the configured tables it lacks
/// (never removes any: another pipeline may share it). Returns whether anything changed.
pub async fn ensure_publication(client: &Client, name: &str, tables: &PublishedTables) -> Result<bool, SourceError> {
    if let PublishedTables::Listed(list) = tables {
        for (schema, table) in list {
            let qualified = format!("{}.{}", quote_ident(schema), quote_ident(table));
            let exists: Option<String> =
                client.query_one("SELECT to_regclass($1)::text", &[&qualified]).await?.get(0);
            if exists.is_none() {
                return Err(SourceError::NoSuchTable(format!("{schema}.{table}")));
            }
        }
    }
    let row = client
        .query_opt("SELECT puballtables FROM pg_publication WHERE pubname = $1", &[&name])
        .await?;
    match (row, tables) {
        (None, PublishedTables::All) => {
            client.batch_execute(&format!("CREATE PUBLICATION {} FOR ALL TABLES", quote_ident(name))).await?;
            Ok(true)
        }
        (None, PublishedTables::Listed(list)) => {
            client
                .batch_execute(&format!("CREATE PUBLICATION {} FOR TABLE {}", quote_ident(name), table_list(list)))
                .await?;
            Ok(true)
        }
        (Some(row), PublishedTables::Listed(list)) if !row.get::<_, bool>(0) => {
            let rows = client
                .query("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1", &[&name])
                .await?;
            let missing: Vec<(String, String)> = list
                .iter()
                .filter(|(s, t)| !rows.iter().any(|r| r.get::<_, &str>(0) == s && r.get::<_, &str>(1) == t))
                .cloned()
                .collect();
            if missing.is_empty() {
                return Ok(false);
            }
            client
                .batch_execute(&format!("ALTER PUBLICATION {} ADD TABLE {}", quote_ident(name), table_list(&missing)))
                .await?;
            Ok(true)
        }
        (Some(_), _) => Ok(false),
    }
}

fn table_list(list: &[(String, String)]) -> String {
    list.iter()
        .map(|(s, t)| format!("{}.{}", quote_ident(s), quote_ident(t)))
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
}

/// The slot's state, `None` when it does not exist.
pub async fn slot_status(client: &Client, slot: &str) -> Result<Option<SlotStatus>, SourceError> {
    let row = client
        .query_opt(
            "SELECT active, confirmed_flush_lsn, wal_status, pg_current_wal_lsn(),
                    (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint
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
    }))
}
