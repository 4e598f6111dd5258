//! Snapshots: the rows a table already has, read in chunks between two watermarks in the WAL (DESIGN.md,
//! "Snapshots"; the technique of Netflix's DBLog, Debezium's and Flink CDC's incremental snapshots).
//!
//! Per chunk (a key range of `chunk_rows` rows) the reader ([`reader`]) writes a *low watermark* message into the
//! WAL, waits until every transaction that was running then has ended, reads the chunk, hands it to the
//! [`Mailbox`] and writes a *high watermark*. The capture's stream carries both messages in WAL order among the
//! changes: SchemaResolve types the chunk when its high watermark passes, the Watermark stage drops from it every
//! key that a change touched between the two watermarks (that change, or a later one, carries the row's newer
//! state), and Enqueue writes the rest as `_op = 'r'` changes at the high watermark's position, with the chunk's
//! progress and the checkpoint, in one buffer transaction. So the latest image per key in the changelog equals
//! the source, whatever the writers do meanwhile, and a killed capture resumes at the next chunk.
//!
//! Why the wait after the low watermark: a transaction's commit record can be in the WAL (so in the stream
//! *before* the low watermark) while the transaction is still invisible to a new snapshot (its backend has not
//! left the proc array yet: an fsync, a synchronous standby). The chunk would miss its change and overwrite it.
//! Waiting for the transactions running at the low watermark closes that gap, as PostgreSQL's own slot creation does.

pub mod read;
pub mod reader;
pub mod window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::decode::{Relation, TupleData};
use crate::segment::{SegmentEvent, TableVersion};
use crate::store::snapshots::ChunkProgress;
use crate::table_id::TableId;

/// The prefix of our `pg_logical_emit_message` watermarks.
pub const MESSAGE_PREFIX: &str = "philotes.snapshot";

/// A watermark's payload (MessagePack in the message's content). Every pipeline's slot sees every message of
/// the database: `pipeline` says whose it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// The pipeline that wrote it.
    pub pipeline: String,
    /// The chunk (unique per capture session).
    pub chunk: u64,
    /// Low (before the read) or high (after).
    pub high: bool,
    /// The table's identity (schema).
    pub schema: String,
    /// The table's identity (name).
    pub table: String,
    /// The columns that identify a row in the table's changes (the primary key, or the replica identity).
    pub key: Vec<String>,
    /// The lane (key range) the chunk was read in: one chunk per lane is in flight (0 in watermarks written
    /// before lanes existed).
    #[serde(default)]
    pub lane: i32,
}

impl Watermark {
    /// The message content.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).unwrap_or_default()
    }

    /// Our watermark of `pipeline` from a logical message, `None` for anything else.
    pub fn decode(prefix: &str, content: &[u8], pipeline: &str) -> Option<Self> {
        if prefix != MESSAGE_PREFIX {
            return None;
        }
        let watermark: Watermark = rmp_serde::from_slice(content).ok()?;
        (watermark.pipeline == pipeline).then_some(watermark)
    }

    /// The table it belongs to.
    pub fn table(&self) -> TableId {
        TableId::new(self.schema.clone(), self.table.clone())
    }
}

/// A new chunk id: unique within the process, and across restarts (seeded by the clock).
pub fn next_chunk_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = || {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64) << 8
    };
    let _ = NEXT.compare_exchange(0, seed(), Ordering::Relaxed, Ordering::Relaxed);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What became of a chunk handed to the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkFate {
    /// Not yet known.
    Waiting,
    /// Enqueued with its progress (or committed to Iceberg and its progress moved): read the next one.
    Durable,
    /// Handed to the direct path, which writes it in the background: read the next one; the final fate
    /// (`Durable` or `Dropped`) follows on the same ack.
    Handed,
    /// The stream could not place it (no low watermark was seen in this session): read it again.
    Dropped,
}

/// The reader's wait for its chunk; cloned along the chunk through the stages to Enqueue, which says
/// [`ChunkFate::Durable`] after the commit that holds it.
#[derive(Debug, Clone)]
pub struct Ack(Arc<watch::Sender<ChunkFate>>);

impl Ack {
    /// An ack and the receiver the reader waits on.
    pub fn new() -> (Self, watch::Receiver<ChunkFate>) {
        let (tx, rx) = watch::channel(ChunkFate::Waiting);
        (Ack(Arc::new(tx)), rx)
    }

    /// Tells the reader what became of its chunk.
    pub fn send(&self, fate: ChunkFate) {
        self.0.send_replace(fate);
    }
}

/// One chunk as read, waiting in the [`Mailbox`] for its high watermark.
#[derive(Debug, Clone)]
pub struct ReadChunk {
    /// The table's identity.
    pub table: TableId,
    /// The snapshot run it belongs to (`philotes.snapshots.run`).
    pub run: i32,
    /// The lane it was read in.
    pub lane: i32,
    /// The table's description when the chunk was read, as pgoutput would send it (columns in the rows' order).
    pub relation: Relation,
    /// The rows, in pgoutput's text form.
    pub rows: Vec<TupleData>,
    /// The chunk's upper key (text form): where the next chunk starts.
    pub last_key: Option<Vec<String>>,
    /// Whether the chunk reached the table's end.
    pub done: bool,
    /// When it was read, µs since the Unix epoch (the `_commit_ts` of its rows).
    pub read_at: i64,
    /// Says when it is durable.
    pub ack: Ack,
    /// Set when the chunk is written straight into Iceberg rather than through the buffer.
    pub direct: Option<Direct>,
}

/// Where chunks of tables whose snapshot is written straight into Iceberg go (`snapshot.direct`): the loader of
/// the capture role (`crate::load`), seen here only through what the reader and SchemaResolve ask of it.
#[async_trait::async_trait]
pub trait ChunkLoad: Send + Sync {
    /// Whether `table`'s chunks go to the loader (else through the buffer).
    fn takes(&self, table: &TableId) -> bool;
    /// Whether `table` can hold markers of chunks the loader committed.
    fn may_hold_markers(&self, table: &TableId) -> bool;
    /// The progress of `run`'s `lane` chunk read after `after`, if its commit landed (its progress then did not
    /// move: the capture was killed in between); `Err`: the catalog could not be read.
    async fn landed(&self, table: &TableId, run: i32, lane: i32, after: Option<&[String]>) -> Result<Option<ChunkProgress>, String>;
    /// Writes `chunk` in the background; its ack says how that ended.
    fn hand_over(self: Arc<Self>, chunk: DirectChunk);
    /// Sends `table`'s chunks through the buffer from now on.
    fn refuse(&self, table: &TableId, reason: &str);
}

impl ReadChunk {
    /// The progress the chunk makes once durable, at its high watermark `lsn` (its rows as read, before the rows
    /// a change replaced were dropped).
    pub fn progress(&self, lsn: crate::position::Lsn) -> ChunkProgress {
        ChunkProgress {
            table: self.table.clone(),
            run: self.run,
            lane: self.lane,
            last_key: self.last_key.clone(),
            rows: self.rows.len() as i64,
            done: self.done,
            lsn,
        }
    }
}

/// How a chunk goes straight into Iceberg: the loader, and the lane's key before the chunk (its marker names it).
#[derive(Clone)]
pub struct Direct {
    /// Writes and commits it.
    pub loader: Arc<dyn ChunkLoad>,
    /// The lane's key before the chunk.
    pub after: Option<Vec<String>>,
    /// The lane's chunk before this one, while it is still being written: this one commits only after it is
    /// durable (and is dropped if it is dropped), so a lane's chunks land and move its progress in order.
    pub previous: Option<watch::Receiver<ChunkFate>>,
}

impl Direct {
    /// Hands the chunk to the loader: its reader may read the next one, and the final fate follows on `ack`.
    pub fn hand_over(self, rows: DirectRows, progress: ChunkProgress, ack: Ack) {
        ack.send(ChunkFate::Handed);
        self.loader.clone().hand_over(DirectChunk { rows, progress, after: self.after, previous: self.previous, ack });
    }
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct").field("after", &self.after).finish_non_exhaustive()
    }
}

/// A chunk's rows, `r` changes at its high watermark.
pub enum DirectRows {
    /// Typed (a chunk whose window saw changes of its table: the rows it keeps), each an `r` change.
    Typed {
        /// The table and the schema version the rows follow.
        table: Arc<TableVersion>,
        /// The changes.
        events: Vec<SegmentEvent>,
    },
    /// As read (a chunk whose window saw no change of its table, the common case): typed while the batch is
    /// built, each text or byte value borrowed from its field.
    Read {
        /// The table and the schema version the rows follow.
        table: Arc<TableVersion>,
        /// The rows, in the version's column order.
        rows: Vec<TupleData>,
        /// When they were read (their `_commit_ts`).
        commit_ts: i64,
    },
}

impl DirectRows {
    /// How many rows.
    pub fn len(&self) -> usize {
        match self {
            DirectRows::Typed { events, .. } => events.len(),
            DirectRows::Read { rows, .. } => rows.len(),
        }
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The table and the schema version the rows follow.
    pub fn table(&self) -> &Arc<TableVersion> {
        match self {
            DirectRows::Typed { table, .. } => table,
            DirectRows::Read { table, .. } => table,
        }
    }
}

/// A chunk handed over at its high watermark.
pub struct DirectChunk {
    /// Its rows.
    pub rows: DirectRows,
    /// The progress it makes.
    pub progress: ChunkProgress,
    /// The lane's key before it.
    pub after: Option<Vec<String>>,
    /// The lane's chunk before it, if still in flight: this one commits only once that one is durable.
    pub previous: Option<tokio::sync::watch::Receiver<ChunkFate>>,
    /// Told [`ChunkFate::Durable`] once the progress moved, [`ChunkFate::Dropped`] when the chunk is to be read
    /// again (through the buffer if the loader refused it).
    pub ack: Ack,
}

/// Chunks read and not yet met by their high watermark in the stream, by chunk id. The reader puts a chunk here
/// *before* it writes the high watermark, so SchemaResolve always finds it there.
#[derive(Debug, Clone, Default)]
pub struct Mailbox(Arc<Mutex<HashMap<u64, ReadChunk>>>);

impl Mailbox {
    /// Leaves a chunk for its high watermark.
    pub fn put(&self, chunk: u64, read: ReadChunk) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(chunk, read);
    }

    /// Takes the chunk a high watermark names (`None`: not read by this session).
    pub fn take(&self, chunk: u64) -> Option<ReadChunk> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&chunk)
    }
}

/// What is enqueued with a chunk: its progress (written with the checkpoint) and the reader's ack.
#[derive(Debug, Clone)]
pub struct ChunkDone {
    /// The progress row's move.
    pub progress: crate::store::snapshots::ChunkProgress,
    /// Rows enqueued (the chunk's rows less those a change replaced).
    pub rows_enqueued: u64,
    /// Told once the buffer transaction holding the chunk committed.
    pub ack: Ack,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watermark_is_ours_only_with_our_prefix_and_pipeline() {
        let w = Watermark {
            pipeline: "orders".into(),
            chunk: 7,
            high: true,
            schema: "public".into(),
            table: "t".into(),
            key: vec!["id".into()],
            lane: 1,
        };
        let bytes = w.encode();
        assert_eq!(Watermark::decode(MESSAGE_PREFIX, &bytes, "orders"), Some(w.clone()));
        assert_eq!(Watermark::decode(MESSAGE_PREFIX, &bytes, "other"), None);
        assert_eq!(Watermark::decode("someone.else", &bytes, "orders"), None);
        assert_eq!(Watermark::decode(MESSAGE_PREFIX, b"garbage", "orders"), None);
        // A watermark written before lanes existed (no `lane`) still decodes, as lane 0.
        let old = rmp_serde::to_vec(&("orders", 7u64, true, "public", "t", vec!["id"])).expect("encode");
        assert_eq!(Watermark::decode(MESSAGE_PREFIX, &old, "orders"), Some(Watermark { lane: 0, ..w }));
    }

    #[test]
    fn chunk_ids_are_unique() {
        let a = next_chunk_id();
        let b = next_chunk_id();
        assert_ne!(a, b);
    }
}
