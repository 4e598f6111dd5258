//! `philotes dead-letters FILE retry [ID…]`: enqueues dead letters' changes again once their cause is fixed,
//! exactly once.
//!
//! In one buffer transaction, each retried change becomes a segment of its own marked with a retry token (one
//! per retry and table, `philotes.segments.retry`), and its dead letter is deleted: a crash leaves both or
//! neither. A change SchemaResolve could not convert is kept raw and converted again here, with the types of the
//! table's newest schema version (the user may have changed the column's type); if it still fails, it becomes a
//! new dead letter with the reason, in the same transaction. A change ArrowBatch refused is enqueued as it was;
//! if Iceberg still cannot hold it, the flush dead-letters it again.
//!
//! A retried change sits behind the table's watermark, which filters every normal flush. Flushers claim a retry
//! as a job of its own ([`crate::claim`]), write it without the position filter, and commit a snapshot whose
//! summary carries the token ([`crate::catalog::SUMMARY_RETRY`]) and the table's unchanged position; the
//! checkpoint deletes its segments and leaves the watermark where it was. A flush killed between the Iceberg
//! commit and that checkpoint is claimed again, finds the token in the table's history and only deletes the
//! segments: the same two atomic steps, with the token in the place of the position.
//!
//! Mirror tables are refused: an old change applied now could overwrite a newer version of its key (or bring
//! back a deleted row), and the table keeps no history to tell.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::position::Position;
use crate::resolve::{convert_again, TableVersion};
use crate::segment::{self, SegmentEvent};
use crate::store::dead_letters::{self, DeadLetter, RetryLetter};
use crate::store::schemas as schema_store;
use crate::store::segments::{self, SegmentRow};
use crate::table_id::TableId;

/// Why a retry did nothing.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// The buffer database failed (nothing was retried).
    #[error("buffer database: {0}")]
    Sql(#[from] tokio_postgres::Error),
    /// Some named dead letters cannot be retried; none was (one line per letter).
    #[error("nothing retried:\n{}", .0.join("\n"))]
    Refused(Vec<String>),
    /// A stored change or schema version does not decode.
    #[error("dead letter {id}: {reason}")]
    Corrupt {
        /// The dead letter.
        id: i64,
        /// Why.
        reason: String,
    },
}

/// What a retry did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RetryReport {
    /// Enqueued again: the flushers write them.
    pub retried: Vec<Retried>,
    /// Converted again and still failing: each is a new dead letter.
    pub failed_again: Vec<FailedAgain>,
    /// Left as they are (only when no ids were named): why each cannot be retried.
    pub kept: Vec<Kept>,
}

/// A dead letter enqueued again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Retried {
    /// The dead letter (deleted).
    pub id: i64,
    /// Its table.
    pub table: String,
    /// Its position (`lsn#seq`).
    pub position: String,
    /// The segment that holds it now.
    pub segment: i64,
}

/// A dead letter whose change still cannot be converted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailedAgain {
    /// The dead letter retried (deleted).
    pub id: i64,
    /// The new dead letter.
    pub new_id: i64,
    /// Why, now.
    pub reason: String,
}

/// A dead letter that cannot be retried.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Kept {
    /// The dead letter.
    pub id: i64,
    /// Why not.
    pub why: String,
}

/// Retries the pipeline's dead letters `ids` (every retryable one when `None`) in one buffer transaction.
/// Named ids that do not exist or cannot be retried refuse the whole retry; without ids, such letters are kept
/// and reported. `is_mirror` says whether a table is written in `mode: mirror`.
pub async fn retry(
    client: &mut Client,
    pipeline: &str,
    ids: Option<&[i64]>,
    is_mirror: impl Fn(&TableId) -> bool,
) -> Result<RetryReport, RetryError> {
    let tx = client.transaction().await?;
    let letters = dead_letters::for_retry(&tx, pipeline, ids).await?;
    let mut report = RetryReport::default();
    let mut refused = Vec::new();
    if let Some(ids) = ids {
        for id in ids.iter().filter(|id| !letters.iter().any(|l| l.id == **id)) {
            refused.push(format!("dead letter {id}: pipeline {pipeline} has no dead letter with this id"));
        }
    }
    let mut retryable = Vec::new();
    for letter in letters {
        match why_not(&letter, &is_mirror) {
            None => retryable.push(letter),
            Some(why) if ids.is_some() => refused.push(format!("dead letter {}: {why}", letter.id)),
            Some(why) => report.kept.push(Kept { id: letter.id, why }),
        }
    }
    if !refused.is_empty() {
        return Err(RetryError::Refused(refused));
    }
    let mut tokens: HashMap<TableId, String> = HashMap::new();
    let mut versions: HashMap<TableId, Vec<TableVersion>> = HashMap::new();
    let mut done = Vec::with_capacity(retryable.len());
    for RetryLetter { id, letter } in retryable {
        let (Some(table), Some(stored)) = (letter.table.clone(), letter.event.clone()) else { continue };
        let corrupt = |reason: String| RetryError::Corrupt { id, reason };
        let event: SegmentEvent = segment::decode(&stored.payload)
            .map_err(|e| corrupt(e.to_string()))?
            .into_iter()
            .next()
            .ok_or_else(|| corrupt("its change is empty".into()))?;
        let (version, event) = if stored.raw {
            if !versions.contains_key(&table) {
                versions.insert(table.clone(), table_versions(&tx, pipeline, &table, id).await?);
            }
            let known = &versions[&table];
            let from = known.iter().find(|v| v.version == stored.schema_version);
            let (Some(from), Some(newest)) = (from, known.last()) else {
                return Err(corrupt(format!("schema version {} of {table} is not in philotes.schemas", stored.schema_version)));
            };
            match convert_again(&event, &from.schema, newest) {
                Ok(converted) => (newest.version, converted),
                Err(reason) => {
                    let new_id = dead_letters::insert(&tx, pipeline, &DeadLetter { reason: reason.clone(), ..letter }).await?;
                    report.failed_again.push(FailedAgain { id, new_id, reason });
                    done.push(id);
                    continue;
                }
            }
        } else {
            (stored.schema_version, event)
        };
        if !tokens.contains_key(&table) {
            tokens.insert(table.clone(), segments::new_retry_token(&tx).await?);
        }
        let token = &tokens[&table];
        let position = Position::new(event.commit_lsn, event.seq);
        let payload = segment::encode(std::slice::from_ref(&event)).map_err(|e| corrupt(e.to_string()))?;
        let row = SegmentRow {
            source_schema: table.schema.clone(),
            source_table: table.name.clone(),
            schema_version: version,
            first: position,
            last: position,
            events: 1,
            bytes: i32::try_from(payload.len()).unwrap_or(i32::MAX),
            payload,
            trace_context: None,
            // Not counted in the true lag: a retried change's age is how long it waited as a dead letter, not how
            // far behind the pipeline is.
            oldest_commit_ts: None,
        };
        let segment = segments::insert_retry(&tx, pipeline, &row, token).await?;
        report.retried.push(Retried { id, table: table.to_string(), position: position.to_string(), segment });
        done.push(id);
    }
    dead_letters::drop(&tx, pipeline, Some(&done)).await?;
    tx.commit().await?;
    Ok(report)
}

/// Why a dead letter cannot be retried, `None` when it can.
fn why_not(letter: &RetryLetter, is_mirror: &impl Fn(&TableId) -> bool) -> Option<String> {
    let Some(table) = &letter.letter.table else {
        return Some("it names no table".into());
    };
    if letter.letter.event.is_none() {
        return Some(
            "it keeps no change to retry (stored by a philotes before retries existed, or a value that is not UTF-8); \
             drop it once you have looked at it"
                .into(),
        );
    }
    if is_mirror(table) {
        return Some(format!(
            "table {table} is written in mode mirror, where an old change could overwrite a newer version of its key \
             or bring a deleted row back; retry is for changelog tables"
        ));
    }
    None
}

/// Every schema version of `table`, oldest first.
async fn table_versions(
    client: &impl tokio_postgres::GenericClient,
    pipeline: &str,
    table: &TableId,
    id: i64,
) -> Result<Vec<TableVersion>, RetryError> {
    let rows = schema_store::versions(client, pipeline, &table.schema, &table.name).await?;
    rows.into_iter()
        .map(|row| {
            let schema = row
                .schema()
                .map_err(|e| RetryError::Corrupt { id, reason: format!("schema version {} of {table}: {e}", row.version) })?;
            Ok(TableVersion { schema, version: row.version })
        })
        .collect()
}
