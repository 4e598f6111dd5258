//! The capture role: prepares the source (wal_level, publication, slot), then runs
//! ReplicationSource ([`crate::source`]) → Decode ([`crate::decode`]) → SchemaResolve ([`crate::resolve`]) →
//! Enqueue ([`crate::enqueue`]) on the engine, and restarts from the checkpoint with backoff when a stage says
//! its session is lost (source, walsender or buffer connection).
//!
//! A restart is the same as a process restart, which is what makes it always right: segments above the
//! checkpoint (a transaction only partly enqueued) are deleted, the slot redelivers from its confirmed position,
//! and the decoder drops every transaction at or below the checkpoint.

use std::time::Duration;

use philotes_engine::{Flow, FlowError, RetryPolicy, StageOptions};
use tokio_postgres::Config;
use tokio_util::sync::CancellationToken;

use crate::decode::stage::{Decode, NAME as DECODE};
use crate::enqueue::{Enqueue, EnqueueLimits, NAME as ENQUEUE};
use crate::position::Lsn;
use crate::resolve::{SchemaResolve, NAME as SCHEMA_RESOLVE};
use crate::source::follow::{self, IcebergName};
use crate::source::pgwire::{PgwireStream, StreamSettings};
use crate::source::setup::{self, PublishedTables};
use crate::source::{durable_channel, FrameSource, SourceError};
use crate::store::{self, checkpoints, connection_lost, pipelines, segments};

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
    /// Standby status update period.
    pub status_interval: Duration,
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
        }
    }
}

/// Runs the capture until `cancel` fires (then drains and writes the last checkpoint) or a non-restartable
/// error occurs.
pub async fn run(settings: &CaptureSettings, cancel: CancellationToken) -> Result<(), CaptureError> {
    // Each restart resumes from the checkpoint, exactly as a process restart would.
    crate::supervise::restart_on_failure("capture lost a connection; restarting from the checkpoint", settings.restart, &cancel, CaptureError::is_restartable, CaptureError::is_interrupted, || {
        run_once(settings, &cancel)
    })
    .await
}

/// One capture session: prepare, resume from the checkpoint, stream until cancelled or broken.
async fn run_once(settings: &CaptureSettings, cancel: &CancellationToken) -> Result<(), CaptureError> {
    let source = store::connect(&settings.source)
        .await
        .map_err(|e| SourceError::Sql(e).context(format!("connecting to {}", store::describe(&settings.source))))?;
    setup::check_wal_level(&source).await.map_err(|e| e.context("reading wal_level"))?;
    let followed = {
        let buffer = store::connect(&settings.buffer).await?;
        follow::prepare(&source, &buffer, &settings.pipeline, &settings.publication, &settings.tables, &settings.iceberg_name)
            .await?
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
        tokio::spawn(async move {
            let Ok(buffer) = store::connect(&buffer_config).await else { return };
            loop {
                tokio::select! {
                    () = tokio::time::sleep(period) => {}
                    () = cancel.cancelled() => return,
                }
                if let Err(error) = follow::add_new_tables(&source, &buffer, &pipeline, &publication, &mut seen).await {
                    tracing::warn!(%error, "could not add new tables to the publication; trying again");
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
    let flow = Flow::from_source(FrameSource::new(stream))
        .stage(DECODE, settings.decode.clone(), move |_| Decode::resume_after(resume))
        .stage(SCHEMA_RESOLVE, settings.schema_resolve.clone(), {
            let (pipeline, source, buffer, carry) =
                (settings.pipeline.clone(), settings.source.clone(), settings.buffer.clone(), settings.carry_unmapped_as_text);
            let iceberg_name = settings.iceberg_name.clone();
            move |_| {
                SchemaResolve::new(&pipeline, source.clone(), buffer.clone(), followed.clone(), iceberg_name.clone(), carry)
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
    flow.run(cancel.clone()).await?;
    Ok(())
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
