//! Checkpoint: in the lease's Postgres transaction, delete the flushed segments, move the table's watermark and
//! store dead letters; then commit, which also releases the lease.

use philotes_engine::{Emitter, Stage, StageError};

use super::Committed;
use crate::capture::connection_lost;
use crate::fault;
use crate::store::{dead_letters, watermarks};

/// The stage's name in metrics, spans and YAML (`stages.checkpoint`).
pub const NAME: &str = "checkpoint";

/// Why the checkpoint failed (the flush is repaired on the next claim: Iceberg already has it).
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The buffer database failed.
    #[error("checkpoint: buffer database: {0}")]
    Sql(#[from] tokio_postgres::Error),
}

impl CheckpointError {
    /// Whether the lease's connection was lost (the flusher restarts).
    pub fn is_connection(&self) -> bool {
        match self {
            CheckpointError::Sql(e) => connection_lost(e),
        }
    }
}

/// The Checkpoint sink.
#[derive(Debug)]
pub struct Checkpoint {
    pipeline: String,
}

impl Checkpoint {
    /// A checkpoint stage for `pipeline`.
    pub fn new(pipeline: &str) -> Self {
        Self { pipeline: pipeline.to_string() }
    }

    async fn write(&self, item: &Committed) -> Result<(), CheckpointError> {
        let client = &**item.lease.client;
        if let Some(reason) = &item.stopped {
            watermarks::stop(client, &self.pipeline, &item.lease.lease, reason).await?;
            client.batch_execute("COMMIT").await?;
            return Ok(());
        }
        watermarks::checkpoint(client, &self.pipeline, &item.lease.lease, &item.segment_ids, Some(item.position)).await?;
        for letter in &item.rejected {
            dead_letters::insert(client, &self.pipeline, letter).await?;
        }
        fault::hit(fault::BEFORE_PG_COMMIT);
        client.batch_execute("COMMIT").await?;
        Ok(())
    }
}

impl Stage for Checkpoint {
    type In = Committed;
    type Out = ();

    async fn process(&mut self, item: &Committed, _out: &mut Emitter<()>) -> Result<(), StageError> {
        // The lease's transaction is gone with any error here, so retrying on this connection cannot help: the
        // flow stops and the flusher restarts; the next claim finds the changes in Iceberg and only deletes them.
        self.write(item).await.map_err(StageError::fatal)
    }
}
