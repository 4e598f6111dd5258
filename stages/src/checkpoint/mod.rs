//! Checkpoint: in the flush job's lease transaction, delete the flushed segments, move the table's watermark
//! and store dead letters (or stop the table); then commit, which also releases the lease.

use philotes_engine::{Emitter, Stage, StageError};

use crate::claim::job::{Committed, Outcome};
use crate::fault;
use crate::store::{dead_letters, watermarks};

/// The stage's name in metrics, spans and YAML (`stages.checkpoint`).
pub const NAME: &str = "checkpoint";

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

    async fn write(&self, item: &Committed) -> Result<(), tokio_postgres::Error> {
        let job = &item.job;
        let client = job.client();
        match &item.outcome {
            Outcome::Stopped(reason) => watermarks::stop(client, &self.pipeline, &job.lease, reason).await?,
            Outcome::Written { position, rejected } => {
                let segment_ids: Vec<i64> = job.segments.iter().map(|s| s.id).collect();
                // A retry's changes are behind the watermark: it stays where it is.
                let position = job.retry.is_none().then_some(*position);
                watermarks::checkpoint(client, &self.pipeline, &job.lease, &segment_ids, position).await?;
                for letter in rejected {
                    dead_letters::insert(client, &self.pipeline, letter).await?;
                }
                fault::hit(fault::BEFORE_PG_COMMIT);
            }
        }
        client.batch_execute("COMMIT").await?;
        if let Outcome::Written { rejected, .. } = &item.outcome {
            crate::telemetry::dead_lettered(rejected);
        }
        Ok(())
    }
}

/// Why the checkpoint failed (the flush is repaired on the next claim: Iceberg already has it).
#[derive(Debug, thiserror::Error)]
#[error("checkpoint: buffer database: {0}")]
pub struct CheckpointError(#[from] tokio_postgres::Error);

impl Stage for Checkpoint {
    type In = Committed;
    type Out = ();

    fn parent_span(item: &Committed) -> Option<&tracing::Span> {
        Some(&item.job.span)
    }

    async fn process(&mut self, item: &Committed, _out: &mut Emitter<()>) -> Result<(), StageError> {
        // The lease's transaction is gone with any error here, so retrying on this connection cannot help: the
        // flow stops (a lost connection restarts the flusher); the next claim finds the changes in Iceberg and
        // only deletes them.
        self.write(item).await.map_err(|e| crate::store::stage_error(e, |e| Box::new(CheckpointError(e))))
    }
}
