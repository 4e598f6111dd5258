//! `philotes.checkpoints`: the source position of each pipeline, the last transaction fully enqueued.

use tokio_postgres::types::PgLsn;
use tokio_postgres::GenericClient;

use super::{lsn, pg_lsn};
use crate::position::Lsn;

/// The last source transaction that is entirely in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Its commit LSN: transactions at or below it are skipped when redelivered.
    pub commit_lsn: Lsn,
    /// Its end LSN: what the slot may be told is flushed.
    pub end_lsn: Lsn,
}

/// The pipeline's checkpoint, `None` before its first transaction.
pub async fn load(client: &impl GenericClient, pipeline: &str) -> Result<Option<Checkpoint>, tokio_postgres::Error> {
    let row = client
        .query_opt("SELECT commit_lsn, end_lsn FROM philotes.checkpoints WHERE pipeline = $1", &[&pipeline])
        .await?;
    Ok(row.map(|r| Checkpoint { commit_lsn: lsn(r.get::<_, PgLsn>(0)), end_lsn: lsn(r.get::<_, PgLsn>(1)) }))
}

/// Moves the checkpoint forward. Call it in the transaction that wrote the transaction's last segments.
pub async fn save(client: &impl GenericClient, pipeline: &str, checkpoint: Checkpoint) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO philotes.checkpoints (pipeline, commit_lsn, end_lsn) VALUES ($1, $2, $3)
             ON CONFLICT (pipeline) DO UPDATE SET commit_lsn = excluded.commit_lsn, end_lsn = excluded.end_lsn,
                                                  updated_at = now()",
            &[&pipeline, &pg_lsn(checkpoint.commit_lsn), &pg_lsn(checkpoint.end_lsn)],
        )
        .await?;
    Ok(())
}

/// Seconds since the pipeline's checkpoint was last written, `None` before the first one.
pub async fn age_seconds(client: &impl GenericClient, pipeline: &str) -> Result<Option<f64>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT extract(epoch FROM now() - updated_at)::float8 FROM philotes.checkpoints WHERE pipeline = $1",
            &[&pipeline],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}
