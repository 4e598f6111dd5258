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
    /// The change itself, so `philotes dead-letters retry` can enqueue it again (`None`: nothing to retry with).
    pub event: Option<LetterEvent>,
}

/// The change a dead letter keeps for a retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LetterEvent {
    /// The philotes.schemas version it was decoded with (its values follow that version's columns).
    pub schema_version: i32,
    /// One change as a segment holds it: the MessagePack of a one-event segment ([`crate::segment::encode`]).
    pub payload: Vec<u8>,
    /// The values are still as pgoutput sent them (text as `Text`, binary as `Bytes`): SchemaResolve could not
    /// convert them, a retry converts them again.
    pub raw: bool,
}

/// Stores one dead letter; returns its id.
pub async fn insert(client: &impl GenericClient, pipeline: &str, letter: &DeadLetter) -> Result<i64, tokio_postgres::Error> {
    let (schema, table) = match &letter.table {
        Some(t) => (Some(t.schema.as_str()), Some(t.name.as_str())),
        None => (None, None),
    };
    let seq = letter.seq.map(|s| i64::try_from(s).unwrap_or(i64::MAX));
    let event = letter.event.as_ref();
    let row = client
        .query_one(
            "INSERT INTO philotes.dead_letters (pipeline, stage, source_schema, source_table, commit_lsn, seq, reason, payload,
                                                schema_version, event, event_raw)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
            &[
                &pipeline,
                &letter.stage,
                &schema,
                &table,
                &letter.commit_lsn.map(pg_lsn),
                &seq,
                &letter.reason,
                &letter.payload,
                &event.map(|e| e.schema_version),
                &event.map(|e| e.payload.as_slice()),
                &event.is_some_and(|e| e.raw),
            ],
        )
        .await?;
    Ok(row.get(0))
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
    /// Whether it keeps its change, so `retry` can enqueue it again (not those stored before migration 0009).
    pub retryable: bool,
}

const SELECT_STORED: &str = "SELECT id, stage, source_schema || '.' || source_table, commit_lsn::text || '#' || seq::text, reason, payload,
            to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), event IS NOT NULL
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
        retryable: row.get(7),
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

/// A dead letter as a retry takes it: everything needed to enqueue its change again or to store it anew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryLetter {
    /// Its id.
    pub id: i64,
    /// The letter, with its change when it has one (stored before migration 0009: none).
    pub letter: DeadLetter,
}

/// The pipeline's dead letters with these ids (every one when `ids` is `None`), oldest first, locked until the
/// caller's transaction ends: two retries of one letter cannot both enqueue it.
pub async fn for_retry(client: &impl GenericClient, pipeline: &str, ids: Option<&[i64]>) -> Result<Vec<RetryLetter>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id, stage, source_schema, source_table, commit_lsn, seq, reason, coalesce(payload, ''),
                    schema_version, event, event_raw
             FROM philotes.dead_letters WHERE pipeline = $1 AND ($2::bigint[] IS NULL OR id = ANY($2))
             ORDER BY id FOR UPDATE",
            &[&pipeline, &ids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let table = match (r.get::<_, Option<String>>(2), r.get::<_, Option<String>>(3)) {
                (Some(schema), Some(name)) => Some(TableId::new(schema, name)),
                _ => None,
            };
            let event = match (r.get::<_, Option<i32>>(8), r.get::<_, Option<Vec<u8>>>(9)) {
                (Some(schema_version), Some(payload)) => Some(LetterEvent { schema_version, payload, raw: r.get(10) }),
                _ => None,
            };
            RetryLetter {
                id: r.get(0),
                letter: DeadLetter {
                    stage: r.get(1),
                    table,
                    commit_lsn: r.get::<_, Option<tokio_postgres::types::PgLsn>>(4).map(super::lsn),
                    seq: r.get::<_, Option<i64>>(5).map(|s| u64::try_from(s).unwrap_or(0)),
                    reason: r.get(6),
                    payload: r.get(7),
                    event,
                },
            }
        })
        .collect())
}
