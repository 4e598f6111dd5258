//! Claim: the flusher's source. Takes one due table's lease (`FOR UPDATE SKIP LOCKED` on its watermark row, in
//! a transaction on a pooled connection) and that table's oldest complete segments, and hands the flush job
//! out as slices of about [`SLICE_EVENTS`] changes. The lease is held until the checkpoint commits; a flusher
//! that dies releases it by its connection ending.

pub mod failures;
pub mod job;

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use iceberg::{NamespaceIdent, TableIdent};
use philotes_engine::{Source, StageError};
use tokio_postgres::Config;
use tracing::Instrument;

use crate::catalog::table::Tables;
use crate::store::schemas as schema_store;
use crate::store::watermarks::{self, ClaimedSegment};
use crate::table_id::TableId;
use failures::FailureLog;
use job::{BuildSlice, FlushJob, Slice};

/// Where a source table goes in Iceberg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableTarget {
    /// Namespace (one level).
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// `mode: mirror` (the table equals the source by key) rather than `changelog`.
    pub mirror: bool,
    /// The partition spec (`partition`; empty: unpartitioned).
    pub partition: Vec<crate::catalog::partition::PartitionField>,
}

/// Maps a source table to its Iceberg table (YAML `sink.iceberg.namespace` / `tables`).
pub type TargetFn = Arc<dyn Fn(&TableId) -> TableTarget + Send + Sync>;

/// The name of the claim step in logs (the engine names the source stage `source`).
pub const NAME: &str = "claim";

/// A connection pool of `size` for leases; a connection handed back rolls back whatever it still has open, so
/// a lease abandoned mid-way (shutdown) is released.
pub fn pool(config: &Config, size: usize) -> Result<Pool, deadpool_postgres::BuildError> {
    // The buffer sessions pin their output settings as every other session does (crate::store::connect).
    let connector = crate::store::tls::Tls::of(config).connector();
    let mut config = config.clone();
    config.options(crate::store::session_options(config.get_options()));
    let manager = Manager::from_config(
        config,
        connector,
        ManagerConfig { recycling_method: RecyclingMethod::Custom("ROLLBACK".into()) },
    );
    Pool::builder(manager).max_size(size.max(1)).build()
}

/// Cuts a job's segments into slices of about [`SLICE_EVENTS`] changes (at least one segment each). The first
/// slice holds a fifth of that, so the writer gets its first rows sooner (the pipeline fills faster).
fn cut_into_slices(segments: &[ClaimedSegment]) -> Vec<Range<usize>> {
    let slice_events = crate::fault::slice_events(SLICE_EVENTS);
    let mut slices = Vec::new();
    let (mut start, mut events) = (0, 0usize);
    for (i, s) in segments.iter().enumerate() {
        let n = usize::try_from(s.events).unwrap_or(0);
        let limit = if slices.is_empty() { slice_events / 5 } else { slice_events };
        if i > start && events + n > limit {
            slices.push(start..i);
            (start, events) = (i, 0);
        }
        events += n;
    }
    if start < segments.len() {
        slices.push(start..segments.len());
    }
    slices
}

/// Changes per slice: big enough that a slice's fixed costs (a query, a batch, a writer call) vanish, small
/// enough that reading, building and writing overlap and a slice's memory stays warm in the allocator.
pub const SLICE_EVENTS: usize = 50_000;

/// Why a claim failed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The buffer database failed.
    #[error("claim: buffer database: {0}")]
    Sql(#[from] tokio_postgres::Error),
    /// No connection could be had.
    #[error("claim: buffer connection pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A stored schema version cannot be read.
    #[error("claim: schema version {version} of {table} cannot be read: {reason}")]
    Version {
        /// The table.
        table: TableId,
        /// The version.
        version: i32,
        /// Why.
        reason: String,
    },
}

/// A lost buffer connection (or none to be had) restarts the flusher; an unreadable schema version stops it.
impl From<ClaimError> for StageError {
    fn from(error: ClaimError) -> Self {
        match error {
            ClaimError::Sql(e) => crate::store::stage_error(e, |e| Box::new(ClaimError::Sql(e))),
            ClaimError::Pool(e) => StageError::session_lost(ClaimError::Pool(e)),
            other => StageError::fatal(other),
        }
    }
}

/// How a flusher claims: its limits and what every job it makes is given.
#[derive(Clone)]
pub struct ClaimSettings {
    /// The pipeline.
    pub pipeline: String,
    /// A table with fewer than `max_events` changes waiting is flushed once its last flush is this old.
    pub interval: Duration,
    /// Changes per flush (at least one segment).
    pub max_events: i64,
    /// Source table → Iceberg table.
    pub target: TargetFn,
    /// The pipeline's Iceberg tables (each job prepares its own through it).
    pub tables: Arc<Tables>,
    /// ArrowBatch's builder, for jobs that must be written again.
    pub builder: Arc<dyn BuildSlice>,
    /// Where failing flushes are recorded.
    pub failures: Arc<FailureLog>,
}

/// The shortest sleep between two claims that found nothing due.
const MIN_WAIT: Duration = Duration::from_millis(5);

/// The Claim source.
pub struct Claim {
    settings: ClaimSettings,
    pool: Pool,
    poll: Duration,
    /// How long to sleep after a claim found nothing due: until the next table is due, at most `poll`.
    wait: Duration,
    last_registration: Option<Instant>,
    /// Slices of the current job not yet handed out.
    pending: VecDeque<Slice>,
    jobs: u64,
}

impl Claim {
    /// A claimer over `pool` (one connection per lease held).
    pub fn new(settings: ClaimSettings, pool: Pool) -> Self {
        let poll = (settings.interval / 10).clamp(Duration::from_millis(20), Duration::from_millis(200));
        Self { settings, pool, poll, wait: poll, last_registration: None, pending: VecDeque::new(), jobs: 0 }
    }

    /// One attempt: a lease and its segments cut into slices, or `None` when no table is due.
    async fn try_claim(&mut self) -> Result<Option<VecDeque<Slice>>, ClaimError> {
        let settings = &self.settings;
        let client = self.pool.get().await?;
        // New tables get their lease row now and then (cheap, and only when nothing was due).
        if self.last_registration.is_none_or(|t| t.elapsed() >= settings.interval) {
            watermarks::register_tables(&**client, &settings.pipeline).await?;
            self.last_registration = Some(Instant::now());
        }
        client.batch_execute("BEGIN").await?;
        let max_events = settings.max_events.max(1);
        let Some(lease) = watermarks::claim(&**client, &settings.pipeline, settings.interval, max_events).await? else {
            client.batch_execute("ROLLBACK").await?;
            self.wait = match watermarks::until_due(&**client, &settings.pipeline, settings.interval).await? {
                // Up to a poll (new segments may come due sooner), at least a few ms (no spinning).
                Some(due) => due.clamp(MIN_WAIT, self.poll),
                None => self.poll,
            };
            return Ok(None);
        };
        // The flush's span (traces on) from here to its checkpoint; this reading is its `claim` child.
        let span = crate::trace::flush_span(self.jobs + 1, &lease.table);
        let claiming = crate::trace::claim_span(&span);
        let target = (settings.target)(&lease.table);
        // A retry waiting for the table goes first, as a job of its own (never for a mirror, which `retry`
        // refuses: an old change must not overwrite a newer version of its key).
        let retry = match target.mirror {
            false => watermarks::retry_segments(&**client, &settings.pipeline, &lease).instrument(claiming.clone()).await?,
            true => None,
        };
        let (retry, segments) = match retry {
            Some((token, segments)) => (Some(token), segments),
            None => {
                let segments = watermarks::segments(&**client, &settings.pipeline, &lease, max_events);
                (None, segments.instrument(claiming.clone()).await?)
            }
        };
        let mut segments = segments;
        if segments.is_empty() {
            client.batch_execute("ROLLBACK").await?;
            return Ok(None);
        }
        // A flush writes one schema version: it ends where the next begins (a schema change then lands in a
        // commit of its own, and a version the table cannot take stops the table behind every earlier row). Not
        // a retry: its token names all its segments, which one commit writes.
        let boundary = segments.iter().position(|s| s.schema_version != segments[0].schema_version);
        if let Some(end) = boundary.filter(|_| retry.is_none()) {
            segments.truncate(end);
        }
        crate::trace::link_segments(&span, &segments);
        let mut versions = BTreeMap::new();
        let stored = schema_store::versions(&**client, &settings.pipeline, &lease.table.schema, &lease.table.name);
        for row in stored.instrument(claiming).await? {
            let schema = row.schema().map_err(|e| ClaimError::Version {
                table: TableId::new(row.source_schema.clone(), row.source_table.clone()),
                version: row.version,
                reason: e.to_string(),
            })?;
            versions.insert(row.version, Arc::new(schema));
        }
        tracing::debug!(table = %lease.table, segments = segments.len(), retry = retry.as_deref(), "claimed");
        self.jobs += 1;
        let slices = cut_into_slices(&segments);
        let count = slices.len();
        let job = Arc::new(FlushJob {
            id: self.jobs,
            target: TableIdent::new(NamespaceIdent::new(target.namespace), target.name),
            mirror: target.mirror,
            partition: target.partition,
            lease,
            retry,
            last: segments.iter().map(|s| s.last).max().unwrap_or_default(),
            segments,
            slices,
            client,
            versions,
            prepared: tokio::sync::OnceCell::new(),
            tables: settings.tables.clone(),
            builder: settings.builder.clone(),
            failures: settings.failures.clone(),
            span,
        });
        Ok(Some((0..count).map(|index| Slice { job: job.clone(), index }).collect()))
    }
}

impl Source for Claim {
    type Item = Slice;

    async fn next(&mut self) -> Result<Option<Slice>, StageError> {
        loop {
            // The slices of a job go out one by one (cancel safe: a slice leaves the queue only when returned).
            if let Some(slice) = self.pending.pop_front() {
                return Ok(Some(slice));
            }
            match self.try_claim().await? {
                Some(slices) => self.pending = slices,
                None => tokio::time::sleep(self.wait).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::Position;

    fn segment(events: i32) -> ClaimedSegment {
        ClaimedSegment { id: 0, schema_version: 1, first: Position::default(), last: Position::default(), events, trace_context: None }
    }

    #[test]
    fn slices_hold_whole_segments_up_to_the_slice_size() {
        let n = SLICE_EVENTS as i32;
        let segments: Vec<_> = [n / 10, n / 10, n / 2, n / 2, 1, n * 2, n / 4].into_iter().map(segment).collect();
        // The first slice holds a fifth of a slice; a segment bigger than a slice is a slice of its own; every
        // segment is in exactly one slice, in order.
        assert_eq!(cut_into_slices(&segments), vec![0..2, 2..4, 4..5, 5..6, 6..7]);
        assert_eq!(cut_into_slices(&segments[..1]), vec![0..1]);
        assert!(cut_into_slices(&[]).is_empty());
    }
}
