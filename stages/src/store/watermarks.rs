//! `philotes.table_watermarks` and the flusher's side of `philotes.segments`: the per-table lease
//! (`FOR UPDATE SKIP LOCKED`), the claimable segments, and the checkpoint that deletes them.
//!
//! Every function here runs on the lease's connection, inside the transaction the claim opened; the lease is
//! the row lock, so a flusher that dies releases it by its connection ending.

use std::time::Duration;

use tokio_postgres::types::PgLsn;
use tokio_postgres::GenericClient;

use super::{lsn, pg_lsn};
use crate::table_id::TableId;
use crate::position::{Lsn, Position};

/// Creates the lease rows of tables that have segments but no row yet (first flush of a table). New rows sort
/// first (`-infinity`), so a new table is flushed at once.
pub async fn register_tables(client: &impl GenericClient, pipeline: &str) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO philotes.table_watermarks (pipeline, source_schema, source_table, updated_at)
             SELECT DISTINCT pipeline, source_schema, source_table, '-infinity'::timestamptz
             FROM philotes.segments WHERE pipeline = $1
             ON CONFLICT DO NOTHING",
            &[&pipeline],
        )
        .await
}

/// A table whose lease this transaction holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The table.
    pub table: TableId,
    /// The pipeline's checkpoint when claimed: only segments at or below it are complete.
    pub checkpoint: Lsn,
    /// The last position this table's watermark records as committed to Iceberg.
    pub watermark: Option<Position>,
}

/// Locks one table that is due: it has complete segments, and either `max_events` changes wait or the oldest
/// of them was committed on the source at least `interval` ago while its last flush started at least half an
/// `interval` ago, or its snapshot just finished (its last chunk is complete and not flushed yet: a snapshot's
/// last rows land at once, not an `interval` later). Ageing by the changes' commit time (not by the last flush)
/// bounds a change's wait for its flush by `interval`, whatever the capture's own delay; the half-interval spacing
/// keeps a capture catching up from turning into a stream of tiny commits. Tables locked by other flushers are
/// skipped. Call inside a transaction.
pub async fn claim(
    client: &impl GenericClient,
    pipeline: &str,
    interval: Duration,
    max_events: i64,
) -> Result<Option<Lease>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            &format!(
                "{WAITING}
                 SELECT w.source_schema, w.source_table, cp.commit_lsn, w.last_lsn, w.last_seq
                 FROM waiting q JOIN philotes.table_watermarks w USING (pipeline, source_schema, source_table), cp
                 WHERE w.error IS NULL
                   AND (q.events >= $3
                        OR (q.oldest <= now() - make_interval(secs => $2)
                            AND w.updated_at <= now() - make_interval(secs => $2 / 2))
                        OR EXISTS (SELECT 1 FROM philotes.snapshots sn
                                   WHERE sn.pipeline = w.pipeline AND sn.source_schema = w.source_schema
                                     AND sn.source_table = w.source_table AND sn.state = 'done'
                                     AND sn.snapshot_lsn <= cp.commit_lsn
                                     AND (w.last_lsn IS NULL OR sn.snapshot_lsn > w.last_lsn)))
                 ORDER BY w.updated_at
                 LIMIT 1
                 FOR UPDATE OF w SKIP LOCKED"
            ),
            &[&pipeline, &interval.as_secs_f64(), &max_events],
        )
        .await?;
    Ok(row.map(|r| {
        let last_lsn: Option<PgLsn> = r.get(3);
        let last_seq: Option<i64> = r.get(4);
        Lease {
            table: TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            checkpoint: lsn(r.get(2)),
            watermark: match (last_lsn, last_seq) {
                (Some(l), Some(s)) => Some(Position::new(lsn(l), u64::try_from(s).unwrap_or(0))),
                _ => None,
            },
        }
    }))
}

/// Per table of pipeline `$1`: its complete segments' changes and the source commit time of the oldest of them
/// (the enqueue time when that is earlier, or unknown: a source clock ahead of the buffer's never delays a flush).
const WAITING: &str = "WITH cp AS (SELECT commit_lsn FROM philotes.checkpoints WHERE pipeline = $1),
     waiting AS (
        SELECT s.pipeline, s.source_schema, s.source_table, sum(s.events) AS events,
               min(least(s.oldest_commit_ts, s.created_at)) AS oldest
        FROM philotes.segments s, cp
        WHERE s.pipeline = $1 AND s.last_lsn <= cp.commit_lsn
        GROUP BY s.pipeline, s.source_schema, s.source_table)";

/// How long until a table becomes due by age (see [`claim`]); `None` when no complete segment waits. A flusher
/// with nothing due sleeps this long (bounded by its poll), so a flush starts when it is due, not up to a poll
/// later.
pub async fn until_due(client: &impl GenericClient, pipeline: &str, interval: Duration) -> Result<Option<Duration>, tokio_postgres::Error> {
    let row = client
        .query_one(
            &format!(
                "{WAITING}
                 SELECT extract(epoch FROM min(greatest(q.oldest + make_interval(secs => $2),
                                                        w.updated_at + make_interval(secs => $2 / 2))) - clock_timestamp())::float8
                 FROM waiting q JOIN philotes.table_watermarks w USING (pipeline, source_schema, source_table)
                 WHERE w.error IS NULL"
            ),
            &[&pipeline, &interval.as_secs_f64()],
        )
        .await?;
    Ok(row.get::<_, Option<f64>>(0).map(|seconds| Duration::from_secs_f64(seconds.max(0.0))))
}

/// One claimed segment (its payload is read later, slice by slice: [`payloads`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedSegment {
    /// Queue id (deleted at checkpoint).
    pub id: i64,
    /// Schema version of its rows.
    pub schema_version: i32,
    /// First change.
    pub first: Position,
    /// Last change.
    pub last: Position,
    /// How many changes.
    pub events: i32,
    /// W3C traceparent of the capture span that enqueued it (traces on), for the flush span's link.
    pub trace_context: Option<String>,
}

/// The leased table's oldest complete segments: those that start before `max_events` changes are reached (so at
/// least one, and at most one segment's worth past the limit).
pub async fn segments(
    client: &impl GenericClient,
    pipeline: &str,
    lease: &Lease,
    max_events: i64,
) -> Result<Vec<ClaimedSegment>, tokio_postgres::Error> {
    // The cut at `max_events` happens in SQL; payloads are not read here but by the ArrowBatch workers, slice by
    // slice, so reading the next slice overlaps with building and writing the previous one.
    let rows = client
        .query(
            "WITH ordered AS (
                 SELECT id, sum(events) OVER (ORDER BY first_lsn, first_seq, id) - events AS before
                 FROM philotes.segments
                 WHERE pipeline = $1 AND source_schema = $2 AND source_table = $3 AND last_lsn <= $4 AND retry IS NULL)
             SELECT s.id, s.schema_version, s.first_lsn, s.first_seq, s.last_lsn, s.last_seq, s.events, s.trace_context
             FROM ordered o JOIN philotes.segments s ON s.id = o.id
             WHERE o.before < $5
             ORDER BY s.first_lsn, s.first_seq, s.id",
            &[&pipeline, &lease.table.schema, &lease.table.name, &pg_lsn(lease.checkpoint), &max_events],
        )
        .await?;
    let taken = rows
        .iter()
        .map(claimed)
        .collect();
    Ok(taken)
}

/// The leased table's oldest retry (`philotes dead-letters retry`): its token and every segment it enqueued for the
/// table, or `None` when it has none waiting. A retry is flushed as a job of its own, all or nothing.
pub async fn retry_segments(
    client: &impl GenericClient,
    pipeline: &str,
    lease: &Lease,
) -> Result<Option<(String, Vec<ClaimedSegment>)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "WITH oldest AS (SELECT retry FROM philotes.segments
                             WHERE pipeline = $1 AND source_schema = $2 AND source_table = $3 AND retry IS NOT NULL
                               AND last_lsn <= $4
                             ORDER BY id LIMIT 1)
             SELECT s.id, s.schema_version, s.first_lsn, s.first_seq, s.last_lsn, s.last_seq, s.events, s.trace_context, s.retry
             FROM philotes.segments s JOIN oldest o ON s.retry = o.retry
             WHERE s.pipeline = $1 AND s.source_schema = $2 AND s.source_table = $3
             ORDER BY s.first_lsn, s.first_seq, s.id",
            &[&pipeline, &lease.table.schema, &lease.table.name, &pg_lsn(lease.checkpoint)],
        )
        .await?;
    let Some(token) = rows.first().map(|r| r.get::<_, String>(8)) else { return Ok(None) };
    let taken = rows
        .iter()
        .map(claimed)
        .collect();
    Ok(Some((token, taken)))
}

/// A claimed segment from a row of `id, schema_version, first_lsn, first_seq, last_lsn, last_seq, events,
/// trace_context, …`.
fn claimed(r: &tokio_postgres::Row) -> ClaimedSegment {
    ClaimedSegment {
        id: r.get(0),
        schema_version: r.get(1),
        first: Position::new(lsn(r.get(2)), u64::try_from(r.get::<_, i64>(3)).unwrap_or(0)),
        last: Position::new(lsn(r.get(4)), u64::try_from(r.get::<_, i64>(5)).unwrap_or(0)),
        events: r.get(6),
        trace_context: r.get(7),
    }
}

/// The MessagePack payloads of some claimed segments, kept in the rows they arrived in (no copy).
#[derive(Debug)]
pub struct Payloads(Vec<tokio_postgres::Row>);

impl Payloads {
    /// Each segment's id and payload, in position order.
    pub fn iter(&self) -> impl Iterator<Item = (i64, &[u8])> {
        self.0.iter().map(|r| (r.get(0), r.get(1)))
    }
}

/// Reads the payloads of the segments `ids` (claimed by this lease), in position order.
pub async fn payloads(client: &impl GenericClient, ids: &[i64]) -> Result<Payloads, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id, payload FROM philotes.segments WHERE id = ANY($1) ORDER BY first_lsn, first_seq, id",
            &[&ids],
        )
        .await?;
    Ok(Payloads(rows))
}

/// The checkpoint of a flush: deletes the flushed segments and moves the table's watermark. Call in the lease's
/// transaction, after the Iceberg commit, then commit.
pub async fn checkpoint(
    client: &impl GenericClient,
    pipeline: &str,
    lease: &Lease,
    segment_ids: &[i64],
    committed: Option<Position>,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute("DELETE FROM philotes.segments WHERE id = ANY($1)", &[&segment_ids])
        .await?;
    let (last_lsn, last_seq) = match committed.or(lease.watermark) {
        Some(p) => (Some(pg_lsn(p.commit_lsn)), Some(i64::try_from(p.seq).unwrap_or(i64::MAX))),
        None => (None, None),
    };
    // A flush that got here succeeded: a failure recorded while it was retried is over (one statement, no extra
    // round trip on the hot path).
    client
        .execute(
            "WITH over AS (DELETE FROM philotes.table_failures
                           WHERE pipeline = $1 AND source_schema = $2 AND source_table = $3)
             UPDATE philotes.table_watermarks SET last_lsn = $4, last_seq = $5, updated_at = now()
             WHERE pipeline = $1 AND source_schema = $2 AND source_table = $3",
            &[&pipeline, &lease.table.schema, &lease.table.name, &last_lsn, &last_seq],
        )
        .await?;
    Ok(())
}

/// Records that the leased table's flush failed and is being retried (`philotes status` shows it until the next
/// successful [`checkpoint`]). Call on a session of its own, outside the lease's transaction: the row is not the
/// lease's, and the lease's transaction only commits once the flush succeeds.
pub async fn record_failure(
    client: &impl GenericClient,
    pipeline: &str,
    table: &TableId,
    error: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO philotes.table_failures (pipeline, source_schema, source_table, error)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (pipeline, source_schema, source_table)
             DO UPDATE SET error = excluded.error, updated_at = now()",
            &[&pipeline, &table.schema, &table.name, &error],
        )
        .await?;
    Ok(())
}

/// Stops a table: it is not claimed again until someone clears `error` (after fixing the cause). Call in the
/// lease's transaction, then commit.
pub async fn stop(client: &impl GenericClient, pipeline: &str, lease: &Lease, reason: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE philotes.table_watermarks SET error = $4, updated_at = now()
             WHERE pipeline = $1 AND source_schema = $2 AND source_table = $3",
            &[&pipeline, &lease.table.schema, &lease.table.name, &reason],
        )
        .await?;
    Ok(())
}

/// One table's flush state, for `philotes status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableWatermark {
    /// Source schema.
    pub source_schema: String,
    /// Source table.
    pub source_table: String,
    /// Last position committed to Iceberg.
    pub committed: Option<Position>,
    /// Why the table stopped, if it did.
    pub error: Option<String>,
    /// Why its flush keeps failing while it is retried, if it does.
    pub failing: Option<Failing>,
}

/// A table whose flush keeps failing while it is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failing {
    /// The last failure.
    pub error: String,
    /// Since when it fails (RFC 3339, UTC).
    pub since: String,
}

/// Every table's watermark, for `philotes status`.
pub async fn all(client: &impl GenericClient, pipeline: &str) -> Result<Vec<TableWatermark>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT w.source_schema, w.source_table, w.last_lsn, w.last_seq, w.error, f.error,
                    to_char(f.since AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
             FROM philotes.table_watermarks w
             LEFT JOIN philotes.table_failures f USING (pipeline, source_schema, source_table)
             WHERE w.pipeline = $1 ORDER BY w.source_schema, w.source_table",
            &[&pipeline],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TableWatermark {
            source_schema: r.get(0),
            source_table: r.get(1),
            committed: match (r.get::<_, Option<PgLsn>>(2), r.get::<_, Option<i64>>(3)) {
                (Some(l), Some(s)) => Some(Position::new(lsn(l), u64::try_from(s).unwrap_or(0))),
                _ => None,
            },
            error: r.get(4),
            failing: r.get::<_, Option<String>>(5).zip(r.get::<_, Option<String>>(6)).map(|(error, since)| Failing { error, since }),
        })
        .collect())
}

/// Stops a table before any of its segments is claimed (the capture found a column it cannot map): the row is
/// created when missing; a reason already there is kept. Its changes wait in the buffer until the stop is cleared.
pub async fn stop_table(
    client: &impl GenericClient,
    pipeline: &str,
    table: &TableId,
    reason: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO philotes.table_watermarks (pipeline, source_schema, source_table, error, updated_at)
             VALUES ($1, $2, $3, $4, '-infinity')
             ON CONFLICT (pipeline, source_schema, source_table)
             DO UPDATE SET error = coalesce(philotes.table_watermarks.error, excluded.error)",
            &[&pipeline, &table.schema, &table.name, &reason],
        )
        .await?;
    Ok(())
}

/// Clears a stopped table's reason (`philotes resume`): flushers claim it again and write what waited in the
/// buffer. Returns the reason it had, `None` when the table was not stopped (or is unknown).
pub async fn resume(
    client: &impl GenericClient,
    pipeline: &str,
    table: &TableId,
) -> Result<Option<String>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "UPDATE philotes.table_watermarks w SET error = NULL, updated_at = '-infinity'
             FROM (SELECT error FROM philotes.table_watermarks
                   WHERE pipeline = $1 AND source_schema = $2 AND source_table = $3 AND error IS NOT NULL FOR UPDATE) old
             WHERE w.pipeline = $1 AND w.source_schema = $2 AND w.source_table = $3
             RETURNING old.error",
            &[&pipeline, &table.schema, &table.name],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Takes one table's lease for maintenance (compaction, snapshot expiry): the same row lock a flusher's claim
/// holds, so no flush of the table runs while it is held, and a flush that holds it is waited for, up to
/// `wait` (then the server answers `lock_not_available`, SQLSTATE 55P03). Call inside a transaction and end it
/// to release the lease; nothing in the row is changed, so the flush schedule is not disturbed. Returns whether
/// the table has a lease row at all (none: it was never flushed).
pub async fn lock_for_maintenance(
    client: &impl GenericClient,
    pipeline: &str,
    table: &TableId,
    wait: Duration,
) -> Result<bool, tokio_postgres::Error> {
    // SET LOCAL takes no parameters; the value is our own number of milliseconds, never text from a user.
    client.batch_execute(&format!("SET LOCAL lock_timeout = {}", wait.as_millis().max(1))).await?;
    let row = client
        .query_opt(
            "SELECT 1 FROM philotes.table_watermarks
             WHERE pipeline = $1 AND source_schema = $2 AND source_table = $3
             FOR UPDATE",
            &[&pipeline, &table.schema, &table.name],
        )
        .await?;
    Ok(row.is_some())
}
