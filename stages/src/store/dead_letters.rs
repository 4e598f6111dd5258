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
