//! Enqueue: groups typed changes into segments and writes them to `philotes.segments` with COPY, together with
//! the pipeline's source checkpoint, **in one Postgres transaction**; only then is the LSN published to the
//! source to be confirmed to the slot (DESIGN.md, the first atomic step).
//!
//! A segment holds consecutive changes of one table under one schema version and is cut at `max_events` or
//! `max_bytes`. Committed transactions are made durable when the oldest waiting change is `max_age` old or
//! enough bytes wait. A transaction too large for memory spills: its full segments are written in their own
//! buffer transactions *above* the checkpoint (flushers never claim those), and its last part is written with
//! the new checkpoint. A capture that restarts deletes segments above its checkpoint first.

mod builder;

use std::sync::Arc;
use std::time::{Duration, Instant};

use philotes_engine::{Emitter, Stage, StageError};
use tokio_postgres::{Client, Config};

use crate::position::{Lsn, Position};
use crate::resolve::{EncodedRows, Resolved};
use crate::source::DurableSender;
use crate::store::checkpoints::{self, Checkpoint};
use crate::snapshot::{ChunkDone, ChunkFate};
use crate::store::dead_letters::{self, DeadLetter};
use crate::store::snapshots;
use crate::store::segments::{self, SegmentRow};
use crate::telemetry;
use builder::SegmentBuilder;

/// The stage's name in metrics, spans and YAML (`stages.enqueue`).
pub const NAME: &str = "enqueue";

/// Segment bounds (YAML `buffer.segment`) and the spill bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnqueueLimits {
    /// Changes per segment.
    pub max_events: usize,
    /// Encoded bytes per segment.
    pub max_bytes: usize,
    /// How long a committed change may wait in memory before it is written.
    pub max_age: Duration,
    /// Bytes of full segments of an open transaction held in memory before they spill into the buffer.
    pub spill_bytes: usize,
}

/// Why Enqueue failed; every case ends the capture flow, whose supervisor restarts from the checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The buffer database failed (connection lost, or a statement refused).
    #[error("enqueue: buffer database: {0}")]
    Sql(#[from] tokio_postgres::Error),
    /// A segment could not be encoded.
    #[error("enqueue: {0}")]
    Segment(#[from] crate::segment::SegmentError),
    /// A change arrived outside a transaction: the stream is broken.
    #[error("enqueue: a change at {0} arrived outside a transaction")]
    OutsideTransaction(Lsn),
    /// Used before `start` connected it.
    #[error("enqueue: not started")]
    NotStarted,
}

/// A lost buffer connection restarts the capture from its checkpoint; the rest stops the pipeline.
impl From<EnqueueError> for StageError {
    fn from(error: EnqueueError) -> Self {
        match error {
            EnqueueError::Sql(e) => crate::store::stage_error(e, |e| Box::new(EnqueueError::Sql(e))),
            other => StageError::fatal(other),
        }
    }
}

/// Counts the changes of segments just written, per table.
fn record_enqueued(rows: &[SegmentRow]) {
    let metrics = telemetry::metrics();
    for row in rows {
        let events = u64::try_from(row.events).unwrap_or(0);
        let table = telemetry::table(&crate::table_id::TableId::new(row.source_schema.clone(), row.source_table.clone()));
        metrics.events_enqueued.add(events, &table);
        metrics.cdc_events_read.add(events, &table);
    }
}

/// The Enqueue stage: one instance per pipeline (order matters).
pub struct Enqueue {
    pipeline: String,
    config: Config,
    /// Connected in `start`.
    buffer: Option<Client>,
    limits: EnqueueLimits,
    durable: DurableSender,
    /// Open segments per table.
    /// One per table with changes not yet cut (a short list: a linear search beats hashing two strings).
    building: Vec<SegmentBuilder>,
    /// Full segments not written yet.
    full: Vec<SegmentRow>,
    full_bytes: usize,
    rejected: Vec<DeadLetter>,
    /// Snapshot chunks whose progress is written with the next checkpoint.
    chunks: Vec<ChunkDone>,
    open: Option<Lsn>,
    /// Whether the open transaction had a change or a dead letter for us.
    open_changed: bool,
    /// The last transaction seen complete, not yet durable.
    committed: Option<Checkpoint>,
    /// When the oldest change not yet durable arrived.
    oldest: Option<Instant>,
    building_bytes: usize,
}

impl Enqueue {
    /// A stage writing to the buffer database at `config` for `pipeline`, publishing durable LSNs on `durable`.
    pub fn new(pipeline: &str, config: Config, limits: EnqueueLimits, durable: DurableSender) -> Self {
        Self {
            pipeline: pipeline.to_string(),
            config,
            buffer: None,
            limits,
            durable,
            building: Vec::new(),
            full: Vec::new(),
            full_bytes: 0,
            rejected: Vec::new(),
            chunks: Vec::new(),
            open: None,
            open_changed: false,
            committed: None,
            oldest: None,
            building_bytes: 0,
        }
    }

    /// Writes on `client`, an open buffer session (the capture's, which holds the pipeline's capture lock),
    /// instead of connecting in `start`.
    pub fn with_connection(mut self, client: Client) -> Self {
        self.buffer = Some(client);
        self
    }

    /// Turns the builder at `index` into a full segment (it stays, empty, for the table's next changes).
    fn cut(&mut self, index: usize) -> Result<(), EnqueueError> {
        let builder = &mut self.building[index];
        self.building_bytes -= builder.bytes();
        if let Some(row) = builder.finish()? {
            self.full_bytes += row.payload.len();
            self.full.push(row);
        }
        Ok(())
    }

    fn add(&mut self, table: &Arc<crate::resolve::TableVersion>, event: &crate::segment::SegmentEvent) -> Result<(), EnqueueError> {
        let index = self.builder_for(table)?;
        self.building_bytes += self.building[index].push(event)?;
        self.added(index, event.commit_ts)
    }

    /// [`add`](Self::add) of a change already encoded.
    fn add_encoded(&mut self, rows: &EncodedRows, position: Position, bytes: &[u8]) -> Result<(), EnqueueError> {
        let index = self.builder_for(&rows.table)?;
        self.building_bytes += self.building[index].push_encoded(position, rows.commit_ts, bytes);
        self.added(index, rows.commit_ts)
    }

    /// The index of the builder of `table`'s changes at its version (a new version cuts the older one's segment).
    fn builder_for(&mut self, table: &Arc<crate::resolve::TableVersion>) -> Result<usize, EnqueueError> {
        let found = self
            .building
            .iter()
            .position(|b| b.table.schema.table == table.schema.table && b.table.schema.schema == table.schema.schema);
        Ok(match found {
            Some(index) => {
                if self.building[index].table.version != table.version {
                    // A new schema version starts a new segment.
                    self.cut(index)?;
                    self.building[index].table = table.clone();
                }
                index
            }
            None => {
                self.building.push(SegmentBuilder::new(table.clone()));
                self.building.len() - 1
            }
        })
    }

    /// A change went into builder `index`: cuts its segment when full.
    fn added(&mut self, index: usize, commit_ts: i64) -> Result<(), EnqueueError> {
        self.oldest.get_or_insert_with(Instant::now);
        telemetry::capture_holds(commit_ts);
        let builder = &self.building[index];
        if builder.len() >= self.limits.max_events || builder.bytes() >= self.limits.max_bytes {
            self.cut(index)?;
        }
        Ok(())
    }

    fn due(&self) -> bool {
        self.oldest.is_some_and(|t| t.elapsed() >= self.limits.max_age)
            || self.full_bytes + self.building_bytes >= self.limits.max_bytes
            || self.full.len() >= 16
            // A snapshot reader waits for its chunk before it reads the next.
            || !self.chunks.is_empty()
    }

    /// Writes the full segments of an open transaction, above the checkpoint (no checkpoint change).
    async fn spill(&mut self) -> Result<(), EnqueueError> {
        let buffer = self.buffer.as_mut().ok_or(EnqueueError::NotStarted)?;
        let tx = buffer.transaction().await?;
        segments::append(&tx, &self.pipeline, &self.full).await?;
        tx.commit().await?;
        record_enqueued(&self.full);
        tracing::debug!(segments = self.full.len(), bytes = self.full_bytes, "spilled part of an open transaction");
        self.full.clear();
        self.full_bytes = 0;
        Ok(())
    }

    /// Writes everything held (no transaction may be open) with the checkpoint of the last complete
    /// transaction, in one buffer transaction; then publishes its end LSN.
    async fn make_durable(&mut self) -> Result<(), EnqueueError> {
        let Some(checkpoint) = self.committed else { return Ok(()) };
        for index in 0..self.building.len() {
            self.cut(index)?;
        }
        self.building.clear();
        let buffer = self.buffer.as_mut().ok_or(EnqueueError::NotStarted)?;
        let tx = buffer.transaction().await?;
        segments::append(&tx, &self.pipeline, &self.full).await?;
        for letter in &self.rejected {
            dead_letters::insert(&tx, &self.pipeline, letter).await?;
        }
        for chunk in &self.chunks {
            snapshots::advance(&tx, &self.pipeline, &chunk.progress).await?;
        }
        checkpoints::save(&tx, &self.pipeline, checkpoint).await?;
        tx.commit().await?;
        for chunk in self.chunks.drain(..) {
            telemetry::metrics().snapshot_rows.add(chunk.rows_enqueued, &telemetry::table(&chunk.progress.table));
            chunk.ack.send(ChunkFate::Durable);
        }
        record_enqueued(&self.full);
        telemetry::dead_lettered(&self.rejected);
        for letter in self.rejected.iter().filter_map(|l| l.table.as_ref()) {
            // Read from the source too, though it went to the dead letters instead of the buffer.
            telemetry::metrics().cdc_events_read.add(1, &telemetry::table(letter));
        }
        telemetry::capture_durable();
        let metrics = telemetry::metrics();
        metrics.checkpoint_lsn.record(checkpoint.commit_lsn.as_u64(), &[]);
        metrics.cdc_last_checkpoint_lsn.record(checkpoint.commit_lsn.as_u64(), &[]);
        self.full.clear();
        self.full_bytes = 0;
        self.rejected.clear();
        self.committed = None;
        self.oldest = None;
        self.durable.send_replace(checkpoint.end_lsn);
        Ok(())
    }
}

impl Enqueue {
    async fn item(&mut self, item: &Resolved) -> Result<(), EnqueueError> {
        match item {
            Resolved::Begin { commit_lsn } => {
                self.open = Some(*commit_lsn);
                self.open_changed = false;
            }
            Resolved::Change { table, event } => {
                self.open_changed = true;
                if self.open.is_none() {
                    return Err(EnqueueError::OutsideTransaction(event.commit_lsn));
                }
                self.add(table, event)?;
                if self.full_bytes >= self.limits.spill_bytes {
                    self.spill().await?;
                }
            }
            Resolved::Rows(rows) => {
                self.open_changed = true;
                if self.open.is_none() {
                    return Err(EnqueueError::OutsideTransaction(rows.rows.first().map_or(Lsn::ZERO, |(p, _)| p.commit_lsn)));
                }
                for (position, bytes) in rows.iter() {
                    self.add_encoded(rows, position, bytes)?;
                    if self.full_bytes >= self.limits.spill_bytes {
                        self.spill().await?;
                    }
                }
            }
            Resolved::SnapshotDone(chunk) => {
                self.open_changed = true;
                self.oldest.get_or_insert_with(Instant::now);
                self.chunks.push(chunk.as_ref().clone());
            }
            Resolved::Rejected(letter) => {
                self.open_changed = true;
                self.oldest.get_or_insert_with(Instant::now);
                self.rejected.push(letter.clone());
            }
            Resolved::Commit { commit_lsn, end_lsn } => {
                self.open = None;
                // `committed` is set at every other commit, so `None` means everything before this transaction is
                // durable; and this one had no change (none held, none spilled).
                if self.committed.is_none() && !std::mem::take(&mut self.open_changed) {
                    // Nothing of ours in it and nothing waiting: the slot may pass it without a checkpoint write.
                    // A write here would itself be WAL that a `FOR ALL TABLES` publication sends back to us.
                    self.durable.send_replace(*end_lsn);
                    return Ok(());
                }
                self.committed = Some(Checkpoint { commit_lsn: *commit_lsn, end_lsn: *end_lsn });
                // A transaction without changes for us still moves the checkpoint (so the slot advances).
                self.oldest.get_or_insert_with(Instant::now);
                if self.due() {
                    self.make_durable().await?;
                }
            }
        }
        Ok(())
    }
}

impl Stage for Enqueue {
    type In = Vec<Resolved>;
    type Out = ();

    async fn start(&mut self) -> Result<(), StageError> {
        if self.buffer.is_none() {
            self.buffer =
                Some(crate::store::connect(&self.config).await.map_err(EnqueueError::Sql)?);
        }
        Ok(())
    }

    async fn process(&mut self, items: &Vec<Resolved>, _out: &mut Emitter<()>) -> Result<(), StageError> {
        // Any failure here leaves the buffer as its last commit left it; the capture supervisor restarts from
        // the checkpoint (deleting spilled parts above it), which is the one recovery that is always right.
        for item in items {
            self.item(item).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, _out: &mut Emitter<()>) -> Result<(), StageError> {
        if self.open.is_none() {
            self.make_durable().await?;
        }
        Ok(())
    }

    fn flush_interval(&self) -> Option<Duration> {
        Some(self.limits.max_age)
    }
}
