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

/// Makes this session the one capture of `pipeline`: a session-level advisory lock, held until the session ends.
/// Returns `false` at once when another session holds it (a second capture of the same pipeline, or the
/// session of a previous attempt whose last buffer transaction the server has not finished yet).
pub async fn try_lock_capture(client: &impl GenericClient, pipeline: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT pg_try_advisory_lock(hashtext('philotes.capture'), hashtext($1))", &[&pipeline])
        .await?
        .get(0))
}

/// Like [`try_lock_capture`], but waits until the lock is free.
pub async fn lock_capture(client: &impl GenericClient, pipeline: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute("SELECT pg_advisory_lock(hashtext('philotes.capture'), hashtext($1))", &[&pipeline])
        .await?;
    Ok(())
}

/// Deletes everything `pipeline` has in the buffer database, in one transaction: its segments, checkpoint,
/// schema versions, watermarks and leases, dead letters, followed tables, failures, snapshot progress and its
/// registry row (`philotes drop`). Returns the segments deleted (changes not yet in Iceberg).
pub async fn forget(client: &mut tokio_postgres::Client, pipeline: &str) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let segments = tx.execute("DELETE FROM philotes.segments WHERE pipeline = $1", &[&pipeline]).await?;
    for table in ["checkpoints", "schemas", "table_watermarks", "dead_letters", "source_tables", "table_failures", "snapshots"] {
        tx.execute(&format!("DELETE FROM philotes.{table} WHERE pipeline = $1"), &[&pipeline]).await?;
    }
    tx.execute("DELETE FROM philotes.pipelines WHERE name = $1", &[&pipeline]).await?;
    tx.commit().await?;
    Ok(segments)
}
