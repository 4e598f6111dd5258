//! Claim: the flusher's source. Takes one due table's lease and its oldest complete segments.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use philotes_engine::{Source, StageError};
use philotes_schemas::TableSchema;
use tokio_postgres::{Config, NoTls};

use super::{FlushError, FlushSettings, LeaseHandle};
use crate::capture::connection_lost;
use crate::position::Position;
use crate::store::schemas as schema_store;
use crate::store::watermarks::{self, ClaimedSegment};

/// The name of the claim step in logs (the engine names the source stage `source`).
pub const NAME: &str = "claim";

/// A connection pool of `size` for leases; a connection handed back rolls back whatever it still has open, so
/// a lease abandoned mid-way (shutdown) is released.
pub fn pool(config: &Config, size: usize) -> Result<Pool, FlushError> {
    // The buffer sessions pin their output settings as every other session does (crate::store::connect).
    let mut config = config.clone();
    config.options(crate::store::session_options(config.get_options()));
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig { recycling_method: RecyclingMethod::Custom("ROLLBACK".into()) },
    );
    Pool::builder(manager).max_size(size.max(1)).build().map_err(|e| FlushError::Pool(e.to_string()))
}

/// One claimed flush, shared by its [`Part`]s: the lease, the segments and the schema versions their rows were
/// written with.
pub struct Claim {
    /// Names the flush in this process (the IcebergCommit workers are keyed by it).
    pub id: u64,
    /// The lease.
    pub lease: Arc<LeaseHandle>,
    /// The claimed segments, oldest first (without payloads).
    pub segments: Vec<ClaimedSegment>,
    /// Every schema version of the table (the segments use some of them).
    pub versions: HashMap<i32, Arc<TableSchema>>,
    /// The position of the last claimed change: what the snapshot summary records.
    pub last: Position,
    /// The segments of each part, in order.
    pub parts: Vec<Range<usize>>,
    /// The Iceberg table, made ready once by the first part that reaches ArrowBatch.
    pub(crate) prepared: tokio::sync::OnceCell<Prepared>,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "flush {} of {:?}: {} segments up to {}", self.id, self.lease, self.segments.len(), self.last)
    }
}

/// What ArrowBatch learnt about a claim's Iceberg table before building its first part.
#[derive(Debug, Clone)]
pub(crate) enum Prepared {
    /// The table exists with every column the claim's schema versions need.
    Ready {
        /// The table as loaded: every part is built in its current schema, and IcebergCommit opens the flush's
        /// writer on it (it reloads before committing).
        table: Box<iceberg::table::Table>,
        /// The last position Iceberg has (older claimed changes are not written again).
        committed: Option<Position>,
    },
    /// The table cannot take these changes: it stops with this reason.
    Stopped(String),
}

/// A slice of consecutive segments of a claim: the unit that ArrowBatch reads and builds and IcebergCommit
/// writes, so one table's flush keeps both cores busy (the next part is read and built while the previous one
/// is written). The snapshot is committed once, with the last part.
#[derive(Debug)]
pub struct Part {
    /// The flush it belongs to.
    pub claim: Arc<Claim>,
    /// Its place in the flush, from 0.
    pub index: usize,
    /// Which of the claim's segments.
    pub segments: Range<usize>,
}

impl Part {
    /// Whether this part ends its flush (IcebergCommit commits with it).
    pub fn is_last(&self) -> bool {
        self.index + 1 == self.claim.parts.len()
    }

    /// The part's segments.
    pub fn segments(&self) -> &[ClaimedSegment] {
        &self.claim.segments[self.segments.clone()]
    }
}

/// Cuts a claim's segments into parts of about [`PART_EVENTS`] changes (at least one segment each). The first
/// part holds a fifth of that, so the writer gets its first rows sooner (the pipeline fills faster).
fn cut_into_parts(segments: &[ClaimedSegment]) -> Vec<Range<usize>> {
    let part_events = crate::fault::part_events(PART_EVENTS);
    let mut parts = Vec::new();
    let (mut start, mut events) = (0, 0usize);
    for (i, s) in segments.iter().enumerate() {
        let n = usize::try_from(s.events).unwrap_or(0);
        let limit = if parts.is_empty() { part_events / 5 } else { part_events };
        if i > start && events + n > limit {
            parts.push(start..i);
            (start, events) = (i, 0);
        }
        events += n;
    }
    if start < segments.len() {
        parts.push(start..segments.len());
    }
    parts
}

/// Changes per part: big enough that a part's fixed costs (a query, a batch, a writer call) vanish, small enough
/// that reading, building and writing overlap and a part's memory stays warm in the allocator.
pub const PART_EVENTS: usize = 50_000;

/// Why a claim failed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The buffer database failed.
    #[error("claim: buffer database: {0}")]
    Sql(#[from] tokio_postgres::Error),
    /// No connection could be had.
    #[error("claim: buffer connection pool: {0}")]
    Pool(String),
    /// A stored schema version cannot be read.
    #[error("claim: schema version {version} of {table} cannot be read: {reason}")]
    Version {
        /// The table.
        table: String,
        /// The version.
        version: i32,
        /// Why.
        reason: String,
    },
}

impl ClaimError {
    /// Whether the buffer connection was lost (the flusher restarts).
    pub fn is_connection(&self) -> bool {
        match self {
            ClaimError::Sql(e) => connection_lost(e),
            ClaimError::Pool(_) => true,
            ClaimError::Version { .. } => false,
        }
    }
}

/// The Claim source.
pub struct ClaimSource {
    pipeline: String,
    pool: Pool,
    interval: Duration,
    max_events: i64,
    poll: Duration,
    last_registration: Option<Instant>,
    /// Parts of the current claim not yet handed out.
    pending: VecDeque<Part>,
    claims: u64,
    failures: Arc<super::failures::FailureLog>,
}

impl ClaimSource {
    /// A claimer over `pool` with the flush limits of `settings`.
    pub fn new(settings: &FlushSettings, pool: Pool) -> Self {
        Self {
            pipeline: settings.pipeline.clone(),
            pool,
            interval: settings.interval,
            max_events: settings.max_events.max(1),
            poll: (settings.interval / 10).clamp(Duration::from_millis(20), Duration::from_millis(200)),
            last_registration: None,
            pending: VecDeque::new(),
            claims: 0,
            failures: Arc::new(super::failures::FailureLog::new(&settings.pipeline, &settings.buffer)),
        }
    }

    /// One attempt: a lease and its segments cut into parts, or `None` when no table is due.
    async fn try_claim(&mut self) -> Result<Option<VecDeque<Part>>, ClaimError> {
        let client = self.pool.get().await.map_err(|e| ClaimError::Pool(e.to_string()))?;
        // New tables get their lease row now and then (cheap, and only when nothing was due).
        if self.last_registration.is_none_or(|t| t.elapsed() >= self.interval) {
            watermarks::register_tables(&**client, &self.pipeline).await?;
            self.last_registration = Some(Instant::now());
        }
        client.batch_execute("BEGIN").await?;
        let Some(lease) = watermarks::claim(&**client, &self.pipeline, self.interval, self.max_events).await? else {
            client.batch_execute("ROLLBACK").await?;
            return Ok(None);
        };
        let segments = watermarks::segments(&**client, &self.pipeline, &lease, self.max_events).await?;
        if segments.is_empty() {
            client.batch_execute("ROLLBACK").await?;
            return Ok(None);
        }
        let mut versions = HashMap::new();
        for row in schema_store::versions(&**client, &self.pipeline, &lease.source_schema, &lease.source_table).await? {
            let schema: TableSchema = rmp_serde::from_slice(&row.columns).map_err(|e| ClaimError::Version {
                table: format!("{}.{}", row.source_schema, row.source_table),
                version: row.version,
                reason: e.to_string(),
            })?;
            versions.insert(row.version, Arc::new(schema));
        }
        tracing::debug!(table = %format!("{}.{}", lease.source_schema, lease.source_table),
            segments = segments.len(), "claimed");
        let ranges = cut_into_parts(&segments);
        self.claims += 1;
        let claim = Arc::new(Claim {
            id: self.claims,
            lease: Arc::new(LeaseHandle { client, lease, failures: self.failures.clone() }),
            last: segments.iter().map(|s| s.last).max().unwrap_or_default(),
            segments,
            versions,
            parts: ranges.clone(),
            prepared: tokio::sync::OnceCell::new(),
        });
        Ok(Some(ranges.into_iter().enumerate().map(|(index, segments)| Part { claim: claim.clone(), index, segments }).collect()))
    }
}

impl Source for ClaimSource {
    type Item = Part;

    async fn next(&mut self) -> Result<Option<Part>, StageError> {
        loop {
            // The parts of a claim go out one by one (cancel safe: a part leaves the queue only when returned).
            if let Some(part) = self.pending.pop_front() {
                return Ok(Some(part));
            }
            match self.try_claim().await {
                Ok(Some(parts)) => self.pending = parts,
                Ok(None) => tokio::time::sleep(self.poll).await,
                // Fatal either way: a lost connection restarts the flusher (FlushError::is_restartable).
                Err(e) => return Err(StageError::fatal(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(events: i32) -> ClaimedSegment {
        ClaimedSegment { id: 0, schema_version: 1, first: Position::default(), last: Position::default(), events }
    }

    #[test]
    fn parts_hold_whole_segments_up_to_the_part_size() {
        let n = PART_EVENTS as i32;
        let segments: Vec<_> = [n / 10, n / 10, n / 2, n / 2, 1, n * 2, n / 4].into_iter().map(segment).collect();
        // The first part holds a fifth of a part; a segment bigger than a part is a part of its own; every
        // segment is in exactly one part, in order.
        assert_eq!(cut_into_parts(&segments), vec![0..2, 2..4, 4..5, 5..6, 6..7]);
        assert_eq!(cut_into_parts(&segments[..1]), vec![0..1]);
        assert!(cut_into_parts(&[]).is_empty());
    }
}
