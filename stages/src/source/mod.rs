//! The replication source: pgoutput frames streamed from a logical replication slot, behind a trait of ours.
//!
//! The client crate (`pgwire-replication`, pinned: see notes/replication.md) is used in exactly one file,
//! [`pgwire`], so it can be swapped (e.g. for a client of our own that speaks proto v2 streaming) without
//! touching the stages. [`setup`] prepares the source (wal_level, publication, slot) over a plain SQL session.

pub mod clash;
pub mod follow;
pub mod pgwire;
pub mod setup;

use std::future::Future;

use bytes::Bytes;
use tokio::sync::watch;

use crate::position::Lsn;

/// Enqueue's side of the durability signal: it publishes the end LSN of the last transaction committed to the
/// buffer together with its checkpoint.
pub type DurableSender = watch::Sender<Lsn>;
/// The source's side: it confirms to the slot what it receives here, and nothing more.
pub type DurableReceiver = watch::Receiver<Lsn>;

/// A durability signal starting at `start` (the checkpoint's end LSN on startup).
pub fn durable_channel(start: Lsn) -> (DurableSender, DurableReceiver) {
    watch::channel(start)
}

/// One pgoutput message as the server sent it, with the WAL range of its XLogData frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// WAL position where the frame's data starts (0 for some mid-transaction messages).
    pub wal_start: Lsn,
    /// The server's WAL end when it sent the frame.
    pub wal_end: Lsn,
    /// The pgoutput message (tag byte first), ready for `decode::pgoutput::parse`.
    pub data: Bytes,
}

/// A stream of pgoutput frames from one slot, in WAL order, that can be told what is durable.
///
/// Called from one task only (the capture's source loop); not shared between workers.
pub trait ReplicationStream: Send {
    /// The next frame; `Ok(None)` when the server ended the stream cleanly. Keepalives are answered inside and
    /// never surface. An `Err` means the connection is gone: the capture restarts from its checkpoint.
    fn next_frame(&mut self) -> impl Future<Output = Result<Option<Frame>, SourceError>> + Send;

    /// Everything up to `end_lsn` is durable in the buffer: the slot may release that WAL. Never call it with
    /// more than what the buffer holds (the slot's `confirmed_flush_lsn` must never pass the buffer).
    /// Idempotent; a lower LSN than before is ignored.
    fn confirm(&mut self, end_lsn: Lsn);
}

/// What can go wrong with the source. [`SourceError::is_retryable`] decides between reconnecting and stopping.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The SQL session to the source failed (connect, query).
    #[error("source database: {0}")]
    Sql(#[from] tokio_postgres::Error),
    /// An SQL statement that prepares the source failed: what it was doing, and the server's answer.
    #[error("source database, {doing}: {source}")]
    Setup {
        /// What was being done (`creating or extending the publication "p"`).
        doing: String,
        /// The server's answer.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The replication connection failed or ended with an error.
    #[error("replication connection: {0}")]
    Replication(String),
    /// The source is not configured for logical replication.
    #[error("the source has wal_level = {0}; logical replication needs wal_level = logical (ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL)")]
    WalLevel(String),
    /// The slot lost WAL it needed (max_slot_wal_keep_size): its changes cannot be streamed any more.
    #[error("replication slot {slot} has been invalidated: the source removed WAL the slot still needed (max_slot_wal_keep_size was exceeded while philotes was behind or stopped). Changes in that WAL are lost to logical replication. To recover: drop the slot (SELECT pg_drop_replication_slot('{slot}')), delete the pipeline's checkpoint (DELETE FROM philotes.checkpoints WHERE pipeline = '{pipeline}'), and start again with `snapshot: initial` to reload the tables")]
    SlotInvalidated {
        /// The slot name.
        slot: String,
        /// The pipeline name.
        pipeline: String,
    },
    /// The slot exists but was made for another output plugin.
    #[error("replication slot {slot} uses the output plugin {plugin}; philotes needs pgoutput (drop the slot or pick another name)")]
    WrongPlugin {
        /// The slot name.
        slot: String,
        /// Its plugin.
        plugin: String,
    },
    /// A configured table does not exist on the source.
    #[error("table {0} does not exist on the source")]
    NoSuchTable(String),
    /// A listed table is a partition: its changes arrive under its partitioned root.
    #[error("table {table} is a partition of {root}: list {root} instead (the changes of every partition, attached now or later, arrive under it)")]
    PartitionListed {
        /// The listed partition.
        table: String,
        /// Its partitioned root.
        root: String,
    },
    /// A listed relation is not a table (a view, a sequence, a foreign table, …).
    #[error("{0} is not a table (logical replication publishes ordinary and partitioned tables only)")]
    NotATable(String),
    /// Two followed source tables would be written to one Iceberg table.
    #[error("{0}")]
    IcebergClash(Box<clash::IcebergClash>),
    /// The buffer database failed while recording the followed tables.
    #[error("buffer database: {0}")]
    Buffer(tokio_postgres::Error),
    /// The connection settings cannot be used for replication (e.g. a Unix socket path we cannot reach).
    #[error("source connection settings: {0}")]
    Settings(String),
}

impl SourceError {
    /// Says what was being done when an SQL error happened ("permission denied for database src" alone does not
    /// say that creating the publication needed it); other errors already say it.
    pub fn context(self, doing: impl Into<String>) -> Self {
        match self {
            SourceError::Sql(source) => SourceError::Setup { doing: doing.into(), source },
            other => other,
        }
    }

    /// Whether reconnecting may help (a dropped connection, a restarted server) rather than a person acting.
    pub fn is_retryable(&self) -> bool {
        match self {
            // A lost connection, or the server shutting down, restarting or terminating the session (08…, 57…).
            SourceError::Sql(e) | SourceError::Setup { source: e, .. } => crate::store::connection_lost(e),
            SourceError::Replication(_) => true,
            SourceError::WalLevel(_)
            | SourceError::SlotInvalidated { .. }
            | SourceError::WrongPlugin { .. }
            | SourceError::NoSuchTable(_)
            | SourceError::PartitionListed { .. }
            | SourceError::NotATable(_)
            | SourceError::IcebergClash(_)
            | SourceError::Settings(_) => false,
            SourceError::Buffer(e) => crate::store::connection_lost(e),
        }
    }
}

/// Most frames handed to the flow as one item: the engine's per-item work (queues, metrics, spans) is paid
/// once per batch, not once per change.
pub const MAX_FRAMES_PER_BATCH: usize = 1024;

/// Feeds a flow from a [`ReplicationStream`], in batches: it waits for one frame, then takes whatever else has
/// already arrived, up to [`MAX_FRAMES_PER_BATCH`]. Every stream error ends the flow (`Fatal`): a replication
/// session cannot be resumed mid-stream, so the capture supervisor reconnects and restarts from the checkpoint.
pub struct FrameSource<S> {
    stream: S,
    /// An error met while filling the last batch, reported on the next call (after that batch went out).
    pending: Option<SourceError>,
    ended: bool,
}

/// A source failure in a running flow: a lost session restarts the capture from its checkpoint
/// ([`SourceError::is_retryable`]), anything else stops it.
impl From<SourceError> for philotes_engine::StageError {
    fn from(error: SourceError) -> Self {
        if error.is_retryable() {
            Self::session_lost(error)
        } else {
            Self::fatal(error)
        }
    }
}

impl<S> FrameSource<S> {
    /// A source over `stream`.
    pub fn new(stream: S) -> Self {
        Self { stream, pending: None, ended: false }
    }
}

impl<S: ReplicationStream + 'static> philotes_engine::Source for FrameSource<S> {
    type Item = Vec<Frame>;

    async fn next(&mut self) -> Result<Option<Vec<Frame>>, philotes_engine::StageError> {
        if let Some(error) = self.pending.take() {
            return Err(error.into());
        }
        if self.ended {
            return Ok(None);
        }
        let Some(first) = self.stream.next_frame().await? else {
            return Ok(None);
        };
        let mut batch = Vec::with_capacity(64);
        batch.push(first);
        // Only frames that are already there: `now_or_never` drops a pending call, which is cancel safe.
        while batch.len() < MAX_FRAMES_PER_BATCH {
            match futures::FutureExt::now_or_never(self.stream.next_frame()) {
                Some(Ok(Some(frame))) => batch.push(frame),
                Some(Ok(None)) => {
                    self.ended = true;
                    break;
                }
                Some(Err(error)) => {
                    self.pending = Some(error);
                    break;
                }
                None => break,
            }
        }
        Ok(Some(batch))
    }
}
