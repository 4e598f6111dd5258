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
