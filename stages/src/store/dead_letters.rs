//! `philotes.dead_letters`: changes that could not be converted, with the reason; the pipeline goes on.

use tokio_postgres::GenericClient;

use super::pg_lsn;
use crate::position::Lsn;
use crate::table_id::TableId;

/// One change that a stage could not process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The stage that gave up on it.
    pub stage: String,
    /// The source table, when known.
    pub table: Option<TableId>,
    /// Its commit LSN, when known.
    pub commit_lsn: Option<Lsn>,
    /// Its seq within the transaction, when known.
    pub seq: Option<u64>,
    /// Why it could not be processed (names column and type where it can).
    pub reason: String,
    /// The change, rendered for a person.
    pub payload: String,
}

/// Stores one dead letter.
pub async fn insert(client: &impl GenericClient, pipeline: &str, letter: &DeadLetter) -> Result<(), tokio_postgres::Error> {
    let (schema, table) = match &letter.table {
        Some(t) => (Some(t.schema.as_str()), Some(t.name.as_str())),
        None => (None, None),
    };
    let seq = letter.seq.map(|s| i64::try_from(s).unwrap_or(i64::MAX));
    client
        .execute(
            "INSERT INTO philotes.dead_letters (pipeline, stage, source_schema, source_table, commit_lsn, seq, reason, payload)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[&pipeline, &letter.stage, &schema, &table, &letter.commit_lsn.map(pg_lsn), &seq, &letter.reason, &letter.payload],
        )
        .await?;
    Ok(())
}

/// How many dead letters the pipeline has (for status and tests).
pub async fn count(client: &impl GenericClient, pipeline: &str) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT count(*) FROM philotes.dead_letters WHERE pipeline = $1", &[&pipeline])
        .await?
        .get(0))
}

/// A stored dead letter, as `philotes dead-letters` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredDeadLetter {
    /// Its id (what `show` and `drop` take).
    pub id: i64,
    /// The stage that gave up on it.
    pub stage: String,
    /// The source table (`schema.table`), when known.
    pub table: Option<String>,
    /// Its position (`lsn#seq`), when known.
    pub position: Option<String>,
    /// Why.
    pub reason: String,
    /// The change, rendered for a person.
    pub payload: Option<String>,
    /// When it was stored (RFC 3339, UTC).
    pub stored_at: String,
}

const SELECT_STORED: &str = "SELECT id, stage, source_schema || '.' || source_table, commit_lsn::text || '#' || seq::text, reason, payload,
            to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
     FROM philotes.dead_letters WHERE pipeline = $1";

fn stored(row: &tokio_postgres::Row) -> StoredDeadLetter {
    StoredDeadLetter {
        id: row.get(0),
        stage: row.get(1),
        table: row.get(2),
        position: row.get(3),
        reason: row.get(4),
        payload: row.get(5),
        stored_at: row.get(6),
    }
}

/// The pipeline's dead letters, oldest first.
pub async fn list(client: &impl GenericClient, pipeline: &str) -> Result<Vec<StoredDeadLetter>, tokio_postgres::Error> {
    let rows = client.query(&format!("{SELECT_STORED} ORDER BY id"), &[&pipeline]).await?;
    Ok(rows.iter().map(stored).collect())
}

/// One dead letter of the pipeline, `None` when it has none with that id.
pub async fn get(client: &impl GenericClient, pipeline: &str, id: i64) -> Result<Option<StoredDeadLetter>, tokio_postgres::Error> {
    let row = client.query_opt(&format!("{SELECT_STORED} AND id = $2"), &[&pipeline, &id]).await?;
    Ok(row.as_ref().map(stored))
}

/// Deletes the pipeline's dead letters with these ids (every one when `ids` is `None`); returns the ids deleted.
pub async fn drop(client: &impl GenericClient, pipeline: &str, ids: Option<&[i64]>) -> Result<Vec<i64>, tokio_postgres::Error> {
    let rows = match ids {
        Some(ids) => {
            client
                .query("DELETE FROM philotes.dead_letters WHERE pipeline = $1 AND id = ANY($2) RETURNING id", &[&pipeline, &ids])
                .await?
        }
        None => client.query("DELETE FROM philotes.dead_letters WHERE pipeline = $1 RETURNING id", &[&pipeline]).await?,
    };
    let mut deleted: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    deleted.sort_unstable();
    Ok(deleted)
}
