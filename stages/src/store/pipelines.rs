//! `philotes.pipelines`: which pipelines use this buffer database, for `philotes status`.

use tokio_postgres::GenericClient;

/// Records that `pipeline` runs now (first time: created; later: last_seen moves).
pub async fn register(client: &impl GenericClient, pipeline: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO philotes.pipelines (name) VALUES ($1)
             ON CONFLICT (name) DO UPDATE SET last_seen = now()",
            &[&pipeline],
        )
        .await?;
    Ok(())
}
