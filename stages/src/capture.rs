//! The capture role: prepares the source (wal_level, publication, slot), then runs
//! ReplicationSource ([`crate::source`]) → Decode ([`crate::decode`]) → SchemaResolve ([`crate::resolve`]) →
//! Enqueue ([`crate::enqueue`]) on the engine, and restarts from the checkpoint with backoff when a stage says
//! its session is lost (source, walsender or buffer connection).
//!
//! A restart is the same as a process restart, which is what makes it always right: segments above the
//! checkpoint (a transaction only partly enqueued) are deleted, the slot redelivers from its confirmed position,
//! and the decoder drops every transaction at or below the checkpoint.

use std::sync::Arc;
use std::time::Duration;

use philotes_engine::{Flow, FlowError, RetryPolicy, StageOptions};
use tokio_postgres::Config;
use tokio_util::sync::CancellationToken;

use crate::decode::stage::{Decode, NAME as DECODE};
use crate::enqueue::{Enqueue, EnqueueLimits, NAME as ENQUEUE};
use crate::load::{ChunkLoader, LoadSettings};
use crate::position::Lsn;
use crate::resolve::{SchemaResolve, NAME as SCHEMA_RESOLVE};
use crate::source::follow::{self, IcebergName};
use crate::source::pgwire::{PgwireStream, StreamSettings};
use crate::source::setup::{self, PublishedTables};
use crate::source::{durable_channel, FrameSource, SourceError};
use crate::snapshot::reader::{Reader, ReaderExit, SnapshotSettings};
use crate::snapshot::Mailbox;
use crate::store::snapshots::{self, SnapshotState};
use crate::store::{self, checkpoints, connection_lost, pipelines, segments};
use crate::table_id::TableId;

/// Everything the capture needs, from the pipeline file.
#[derive(Clone)]
pub struct CaptureSettings {
    /// The pipeline name (checkpoint key, application name).
    pub pipeline: String,
    /// The source database.
    pub source: Config,
    /// The buffer database (already migrated).
    pub buffer: Config,
    /// The publication (created when missing).
    pub publication: String,
    /// The slot (created when missing).
    pub slot: String,
    /// The tables to capture.
    pub tables: PublishedTables,
    /// The Iceberg identifier (`namespace.table`) of a source table: two followed tables must never share one.
    pub iceberg_name: IcebergName,
    /// Carry columns of unmapped types as text instead of stopping.
    pub carry_unmapped_as_text: bool,
    /// `snapshot: initial`: a table followed for the first time has its existing rows read (`never`: not).
    pub snapshot_initial: bool,
    /// How snapshots read (`snapshot:`).
    pub snapshot: SnapshotSettings,
    /// Standby status update period.
    pub status_interval: Duration,
    /// How often a heartbeat message is written on the source (`source.postgres.heartbeat`; `None`: never), so
    /// the slot advances while the published tables are idle and other databases write WAL.
    pub heartbeat: Option<Duration>,
    /// Segment bounds.
    pub limits: EnqueueLimits,
    /// Decode's pool (`stages.decode`): one worker, it follows the stream's order; the queue is configurable.
    pub decode: StageOptions,
    /// SchemaResolve's pool (`stages.schema_resolve`): one worker, as Decode.
    pub schema_resolve: StageOptions,
    /// Enqueue's pool (`stages.enqueue`): one worker, as Decode.
    pub enqueue: StageOptions,
    /// Backoff between restarts after a lost connection.
    pub restart: RetryPolicy,
    /// Where snapshot chunks of changelog tables are written straight into Iceberg (`snapshot.direct`), and
    /// where a resumed lane looks for the markers of such chunks; `None`: no Iceberg access (every chunk goes
    /// through the buffer, and no marker is looked for).
    pub load: Option<LoadSettings>,
}

impl std::fmt::Debug for CaptureSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureSettings")
            .field("pipeline", &self.pipeline)
            .field("publication", &self.publication)
            .field("slot", &self.slot)
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

/// Why the capture stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The source cannot be used (wal_level, invalidated slot, missing table, …).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The buffer database failed while preparing.
    #[error("buffer database: {0}")]
    Buffer(#[from] tokio_postgres::Error),
    /// A stage stopped the flow.
    #[error(transparent)]
    Flow(#[from] FlowError),
    /// A snapshot was requested for tables the capture does not follow yet: it starts again following them.
    #[error("a snapshot was requested for tables not followed yet: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    Follow(Vec<TableId>),
}

impl CaptureError {
    /// Whether the shutdown stopped a stage that was waiting to retry.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, CaptureError::Flow(e) if e.is_interrupted())
    }

    /// Whether a restart from the checkpoint may succeed: a lost connection or a restarted server, not a
    /// misconfiguration or a broken invariant.
    pub fn is_restartable(&self) -> bool {
        match self {
            CaptureError::Source(e) => e.is_retryable(),
            CaptureError::Buffer(e) => connection_lost(e),
            // The stages said so when they failed (StageError::SessionLost).
            CaptureError::Flow(e) => e.is_session_lost(),
            CaptureError::Follow(_) => false,
        }
    }
}

/// Runs the capture until `cancel` fires (then drains and writes the last checkpoint) or a non-restartable
/// error occurs.
pub async fn run(settings: &CaptureSettings, cancel: CancellationToken) -> Result<(), CaptureError> {
    let heartbeat = settings.heartbeat.map(|every| {
        let (source, stop) = (settings.source.clone(), cancel.child_token());
        (tokio::spawn(heartbeat(source, every, stop.clone())), stop)
    });
    let result = run_capture(settings, cancel).await;
    if let Some((task, stop)) = heartbeat {
        stop.cancel();
        let _ = task.await;
    }
    result
}

/// Writes a heartbeat into the source's WAL every `every` until `stop` fires: a transaction of one
/// transactional logical message, which the capture sees as a transaction without changes for it, so the slot
/// confirms past it (without it, an idle published database keeps the slot where it is while other databases
/// of the server write WAL the slot then holds). A failure is logged and tried again at the next beat.
async fn heartbeat(source: Config, every: Duration, stop: CancellationToken) {
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = crate::store::connect(&source).await.inspect_err(|e| {
                tracing::debug!(error = %crate::report::chain(e), "heartbeat: cannot connect to the source; trying at the next beat");
            }).ok();
        }
        if let Some(session) = &client {
            if let Err(e) = setup::emit_heartbeat(session).await {
                tracing::debug!(error = %crate::report::chain(&e), "heartbeat failed; trying at the next beat");
                client = None;
            }
        }
    }
}

async fn run_capture(settings: &CaptureSettings, cancel: CancellationToken) -> Result<(), CaptureError> {
    // Tables a snapshot request made the capture follow, beyond the file's list (kept across restarts).
    let mut requested: Vec<TableId> = Vec::new();
    // The direct path's loader outlives the sessions: each new one first waits for the last one's chunks.
    let loader = settings.load.as_ref().map(|load| Arc::new(ChunkLoader::new(&settings.pipeline, settings.buffer.clone(), load)));
    loop {
        // Each restart resumes from the checkpoint, exactly as a process restart would.
        let result = crate::supervise::restart_on_failure("capture lost a connection; restarting from the checkpoint", settings.restart, &cancel, CaptureError::is_restartable, CaptureError::is_interrupted, || {
            run_once(settings, &cancel, &requested, &loader)
        })
        .await;
        match result {
            Err(CaptureError::Follow(tables)) if !cancel.is_cancelled() => {
                tracing::info!(tables = %tables.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    "restarting the capture to follow tables requested for a snapshot");
                requested.extend(tables);
            }
            Err(CaptureError::Follow(_)) => return Ok(()),
            other => return other,
        }
    }
}

/// The tables to follow: the file's, plus those a snapshot request names (`philotes snapshot` of a table added to
/// the file while the pipeline runs). A request for a table the source does not have fails alone.
async fn tables_to_follow(
    settings: &CaptureSettings,
    source: &tokio_postgres::Client,
    buffer: &tokio_postgres::Client,
    requested: &[TableId],
) -> Result<PublishedTables, CaptureError> {
    let PublishedTables::Listed(listed) = &settings.tables else { return Ok(PublishedTables::All) };
    let mut tables = listed.clone();
    for table in requested {
        if !tables.contains(table) {
            tables.push(table.clone());
        }
    }
    for request in snapshots::open(buffer, &settings.pipeline).await? {
        if tables.contains(&request.table) {
            continue;
        }
        if setup::table_by_name(source, &request.table.schema, &request.table.name).await?.is_some() {
            tables.push(request.table);
        } else {
            let reason = format!("table {} does not exist on the source", request.table);
            tracing::error!(table = %request.table, "snapshot not possible: {reason}");
            snapshots::fail(buffer, &settings.pipeline, &request.table, request.run, &reason).await?;
        }
    }
    Ok(PublishedTables::Listed(tables))
}

/// One capture session: prepare, resume from the checkpoint, stream until cancelled or broken.
async fn run_once(
    settings: &CaptureSettings,
    cancel: &CancellationToken,
    requested: &[TableId],
    loader: &Option<Arc<ChunkLoader>>,
) -> Result<(), CaptureError> {
    let source = store::connect(&settings.source)
        .await
        .map_err(|e| SourceError::Sql(e).context(format!("connecting to {}", store::describe(&settings.source))))?;
    setup::check_wal_level(&source).await.map_err(|e| e.context("reading wal_level"))?;
    let followed = {
        let buffer = store::connect(&settings.buffer).await?;
        let tables = tables_to_follow(settings, &source, &buffer, requested).await?;
        let followed =
            follow::prepare(&source, &buffer, &settings.pipeline, &settings.publication, &tables, &settings.iceberg_name)
                .await?;
        // A table followed for the first time has its existing rows read (`snapshot: initial`); with `never`
        // it is recorded as skipped, so a later switch of the file does not copy it by surprise.
        let identities: Vec<TableId> = followed.tables.values().cloned().collect();
        let state = if settings.snapshot_initial { SnapshotState::Pending } else { SnapshotState::Skipped };
        let added = snapshots::ensure(&buffer, &settings.pipeline, &identities, state).await?;
        if added > 0 && settings.snapshot_initial {
            tracing::info!(tables = added, "snapshot of the existing rows requested for tables followed for the first time");
        }
        followed
    };
    let slot = setup::ensure_slot(&source, &settings.slot, &settings.pipeline)
        .await
        .map_err(|e| e.context(format!("finding or creating the replication slot {}", setup::quote_ident(&settings.slot))))?;
    if slot.created {
        tracing::info!(slot = %settings.slot, lsn = %slot.confirmed_flush, "replication slot created");
    }
    // `tables: all` with a publication philotes lists itself: tables created from now on join it while the
    // capture runs (the session that prepared the source keeps doing so).
    let joiner = matches!(settings.tables, PublishedTables::All).then(|| {
        let (pipeline, publication, buffer_config) =
            (settings.pipeline.clone(), settings.publication.clone(), settings.buffer.clone());
        let mut seen: std::collections::HashSet<u32> =
            followed.tables.keys().chain(followed.refused.iter()).copied().collect();
        let (period, cancel) = (settings.status_interval, cancel.clone());
        let initial = settings.snapshot_initial;
        tokio::spawn(async move {
            let Ok(buffer) = store::connect(&buffer_config).await else { return };
            loop {
                tokio::select! {
                    () = tokio::time::sleep(period) => {}
                    () = cancel.cancelled() => return,
                }
                match follow::add_new_tables(&source, &buffer, &pipeline, &publication, &mut seen).await {
                    // Rows written before the table joined the publication are read by its snapshot.
                    Ok(added) if initial && !added.is_empty() => {
                        let added: Vec<TableId> = added.iter().map(|t| TableId::new(t.schema.clone(), t.name.clone())).collect();
                        if let Err(error) = snapshots::ensure(&buffer, &pipeline, &added, SnapshotState::Pending).await {
                            tracing::warn!(%error, "could not request the snapshot of new tables");
                        }
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "could not add new tables to the publication; trying again"),
                }
            }
        })
    });
    let _joiner = AbortOnDrop(joiner);

    // The buffer session that resumes is the one Enqueue writes on, and it holds the pipeline's capture lock for
    // as long as it lives. So no other capture (a second process, or this process's previous attempt whose last
    // COMMIT the server may still be running) can write while this one reads the checkpoint and deletes the
    // segments above it, and this one cannot delete a running capture's spilled segments.
    let buffer = store::connect(&settings.buffer).await?;
    if !pipelines::try_lock_capture(&buffer, &settings.pipeline).await? {
        tracing::warn!(pipeline = %settings.pipeline,
            "another capture of this pipeline holds the buffer (a second process, or the last session of this one \
             still ending): waiting for it to stop");
        tokio::select! {
            locked = pipelines::lock_capture(&buffer, &settings.pipeline) => locked?,
            () = cancel.cancelled() => return Ok(()),
        }
    }
    pipelines::register(&buffer, &settings.pipeline).await?;
    let checkpoint = checkpoints::load(&buffer, &settings.pipeline).await?;
    let resume = checkpoint.map(|c| c.commit_lsn);
    let deleted = segments::delete_above(&buffer, &settings.pipeline, resume.unwrap_or(Lsn::ZERO)).await?;
    if deleted > 0 {
        tracing::info!(segments = deleted, "deleted segments of a transaction that was only partly enqueued");
    }
    let mut buffer = Some(buffer);
    let start = checkpoint.map_or(Lsn::ZERO, |c| c.end_lsn);
    tracing::info!(pipeline = %settings.pipeline, checkpoint = ?resume.map(|l| l.to_string()), "capture starting");

    let (durable_tx, durable_rx) = durable_channel(start);
    let stream = PgwireStream::connect(
        &settings.source,
        &StreamSettings {
            pipeline: settings.pipeline.clone(),
            slot: settings.slot.clone(),
            publication: settings.publication.clone(),
            start,
            status_interval: settings.status_interval,
        },
        durable_rx,
    )
    .await?;

    let mut durable_tx = Some(durable_tx);
    // Nothing of the last session may still be committing when this one's lanes look for their markers.
    if let Some(loader) = loader {
        loader.settle().await;
    }
    let load = loader.clone().map(|l| l as Arc<dyn crate::snapshot::ChunkLoad>);
    let mailbox = Mailbox::default();
    let reader = Reader {
        pipeline: settings.pipeline.clone(),
        source: settings.source.clone(),
        buffer: settings.buffer.clone(),
        settings: settings.snapshot.clone(),
        mailbox: mailbox.clone(),
        requested: requested.to_vec(),
        load,
    };
    let flow = Flow::from_source(FrameSource::new(stream))
        .stage(DECODE, settings.decode.clone(), move |_| Decode::resume_after(resume))
        .stage(SCHEMA_RESOLVE, settings.schema_resolve.clone(), {
            let (pipeline, source, buffer, carry) =
                (settings.pipeline.clone(), settings.source.clone(), settings.buffer.clone(), settings.carry_unmapped_as_text);
            let iceberg_name = settings.iceberg_name.clone();
            move |_| {
                SchemaResolve::new(&pipeline, source.clone(), buffer.clone(), followed.clone(), iceberg_name.clone(), carry, mailbox.clone())
            }
        })
        .sink(ENQUEUE, settings.enqueue.clone(), {
            let (pipeline, buffer_config, limits) = (settings.pipeline.clone(), settings.buffer.clone(), settings.limits);
            move |_| {
                // One worker, so the factory runs once; a second call would get a sender that confirms nothing.
                let durable = durable_tx.take().unwrap_or_else(|| durable_channel(Lsn::ZERO).0);
                let enqueue = Enqueue::new(&pipeline, buffer_config.clone(), limits, durable);
                match buffer.take() {
                    Some(client) => enqueue.with_connection(client),
                    None => enqueue,
                }
            }
        });
    // The snapshot reader runs beside the flow, in this session: its chunks meet their watermarks in this
    // session's stream. A request for a table not followed yet ends the session (drained, checkpointed) and
    // starts it again following that table.
    let session = cancel.child_token();
    let flow = flow.run(session.clone());
    let reader = reader.run(session.clone());
    tokio::pin!(flow, reader);
    let mut follow = None;
    let result = loop {
        tokio::select! {
            result = &mut flow => break result,
            exit = &mut reader, if follow.is_none() => {
                follow = Some(exit);
                session.cancel();
            }
        }
    };
    result?;
    match follow {
        Some(ReaderExit::Follow(tables)) if !cancel.is_cancelled() => Err(CaptureError::Follow(tables)),
        _ => Ok(()),
    }
}

/// Ends the table-joining task with the capture session that started it.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}
