//! `philotes.segments`: the durable queue. Capture appends with COPY (binary); flushers claim and delete.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{PgLsn, Type};
use tokio_postgres::{GenericClient, Transaction};

use super::{lsn, pg_lsn};
use crate::position::{Lsn, Position};

/// One segment: consecutive changes of one table under one schema version, MessagePack-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRow {
    /// Source schema of the table.
    pub source_schema: String,
    /// Source table name.
    pub source_table: String,
    /// The schema version (philotes.schemas) its rows were decoded with.
    pub schema_version: i32,
    /// Position of its first change.
    pub first: Position,
    /// Position of its last change.
    pub last: Position,
    /// Number of changes in it.
    pub events: i32,
    /// Size of `payload`.
    pub bytes: i32,
    /// The changes, MessagePack (`crate::segment`).
    pub payload: Vec<u8>,
    /// W3C traceparent of the span that enqueued it, to follow a change from WAL to snapshot.
    pub trace_context: Option<String>,
    /// Source commit time of its oldest change, µs since the Unix epoch (the true lag's reference);
    /// `None` for segments written before migration 0008.
    pub oldest_commit_ts: Option<i64>,
}

/// A segment read back, with its queue id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSegment {
    /// Queue order and identity.
    pub id: i64,
    /// The segment.
    pub row: SegmentRow,
}

/// The segment writer's COPY: its columns in order (the benchmark's buffer baseline copies into a table like
/// this one with the same statement, so the two never drift).
pub const COPY_IN: &str = "COPY philotes.segments (pipeline, source_schema, source_table, schema_version, first_lsn, \
    first_seq, last_lsn, last_seq, events, bytes, payload, trace_context, oldest_commit_ts) FROM STDIN (FORMAT binary)";

/// The types of [`COPY_IN`]'s columns, in its order.
pub const COPY_TYPES: [Type; 13] = [
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::PG_LSN,
    Type::INT8,
    Type::PG_LSN,
    Type::INT8,
    Type::INT4,
    Type::INT4,
    Type::BYTEA,
    Type::TEXT,
    Type::TIMESTAMPTZ,
];

/// µs since the Unix epoch as a time (what tokio-postgres binds to timestamptz).
fn system_time(micros: i64) -> SystemTime {
    let offset = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 { UNIX_EPOCH + offset } else { UNIX_EPOCH - offset }
}

/// The reverse of [`system_time`].
fn micros(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

fn seq(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Appends segments with one binary COPY, inside the caller's transaction (with the checkpoint, when the
/// transaction they finish is complete).
pub async fn append(tx: &Transaction<'_>, pipeline: &str, segments: &[SegmentRow]) -> Result<u64, tokio_postgres::Error> {
    if segments.is_empty() {
        return Ok(0);
    }
    let sink = tx.copy_in(COPY_IN).await?;
    let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
    pin_mut!(writer);
    for s in segments {
        writer
            .as_mut()
            .write(&[
                &pipeline,
                &s.source_schema,
                &s.source_table,
                &s.schema_version,
                &pg_lsn(s.first.commit_lsn),
                &seq(s.first.seq),
                &pg_lsn(s.last.commit_lsn),
                &seq(s.last.seq),
                &s.events,
                &s.bytes,
                &s.payload,
                &s.trace_context,
                &s.oldest_commit_ts.map(system_time),
            ])
            .await?;
    }
    writer.finish().await
}

/// A new retry token: marks the segments one retry enqueues for one table (migration 0009).
pub async fn new_retry_token(client: &impl GenericClient) -> Result<String, tokio_postgres::Error> {
    Ok(client.query_one("SELECT gen_random_uuid()::text", &[]).await?.get(0))
}

/// Enqueues a retried change (`philotes dead-letters retry`) as a segment marked with `retry`, a token of
/// [`new_retry_token`]: flushers write it although its position is behind the table's watermark, once. Call in
/// the retry's transaction, which also removes its dead letter.
pub async fn insert_retry(client: &impl GenericClient, pipeline: &str, segment: &SegmentRow, retry: &str) -> Result<i64, tokio_postgres::Error> {
    let s = segment;
    let row = client
        .query_one(
            "INSERT INTO philotes.segments (pipeline, source_schema, source_table, schema_version, first_lsn, first_seq,
                                            last_lsn, last_seq, events, bytes, payload, trace_context, retry)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
            &[
                &pipeline,
                &s.source_schema,
                &s.source_table,
                &s.schema_version,
                &pg_lsn(s.first.commit_lsn),
                &seq(s.first.seq),
                &pg_lsn(s.last.commit_lsn),
                &seq(s.last.seq),
                &s.events,
                &s.bytes,
                &s.payload,
                &s.trace_context,
                &retry,
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// Deletes segments above `checkpoint`: parts of a transaction whose end never reached the buffer. The capture
/// calls it before resuming, so the redelivered transaction is not doubled. Returns how many were deleted.
pub async fn delete_above(client: &impl GenericClient, pipeline: &str, checkpoint: Lsn) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM philotes.segments WHERE pipeline = $1 AND last_lsn > $2",
            &[&pipeline, &pg_lsn(checkpoint)],
        )
        .await
}

/// Every segment of the pipeline in queue order (tests and tools; flushers claim per table instead).
pub async fn all(client: &impl GenericClient, pipeline: &str) -> Result<Vec<StoredSegment>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id, source_schema, source_table, schema_version, first_lsn, first_seq, last_lsn, last_seq,
                    events, bytes, payload, trace_context, oldest_commit_ts
             FROM philotes.segments WHERE pipeline = $1 ORDER BY id",
            &[&pipeline],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| StoredSegment {
            id: r.get(0),
            row: SegmentRow {
                source_schema: r.get(1),
                source_table: r.get(2),
                schema_version: r.get(3),
                first: Position::new(lsn(r.get::<_, PgLsn>(4)), u64::try_from(r.get::<_, i64>(5)).unwrap_or(0)),
                last: Position::new(lsn(r.get::<_, PgLsn>(6)), u64::try_from(r.get::<_, i64>(7)).unwrap_or(0)),
                events: r.get(8),
                bytes: r.get(9),
                payload: r.get(10),
                trace_context: r.get(11),
                oldest_commit_ts: r.get::<_, Option<SystemTime>>(12).map(micros),
            },
        })
        .collect())
}

/// Buffer depth of a pipeline: segments, changes and payload bytes waiting.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Depth {
    /// Segments waiting.
    pub segments: i64,
    /// Changes in them.
    pub events: i64,
    /// Their payload bytes.
    pub bytes: i64,
    /// Seconds from the source commit of the oldest change waiting to now (the buffer's clock); `None` when
    /// nothing with a known commit time waits.
    pub oldest_commit_age_seconds: Option<f64>,
}

/// How much is waiting in the buffer for `pipeline`.
pub async fn depth(client: &impl GenericClient, pipeline: &str) -> Result<Depth, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT count(*), coalesce(sum(events), 0)::bigint, coalesce(sum(bytes), 0)::bigint,
                    extract(epoch FROM clock_timestamp() - min(oldest_commit_ts))::float8
             FROM philotes.segments WHERE pipeline = $1",
            &[&pipeline],
        )
        .await?;
    Ok(Depth { segments: row.get(0), events: row.get(1), bytes: row.get(2), oldest_commit_age_seconds: row.get(3) })
}
