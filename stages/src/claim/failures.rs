//! What `philotes status` shows of a table whose flush keeps failing while it is retried.
//!
//! A flush that fails on the catalog or the warehouse is retried with backoff, without end and without stopping
//! the table (the buffer keeps its changes). Without a record, status would only say "not flushed yet" while the
//! log repeats the cause. [`FailureLog`] writes the cause into `philotes.table_failures` on a session of its own
//! (the lease's transaction holds the table's watermark row and commits only when the flush succeeds); the
//! successful checkpoint deletes it.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::{Client, Config};

use crate::store::{self, watermarks};
use crate::table_id::TableId;

/// How long recording a failure may take: the flush is failing already, this must not hold its retry up.
const RECORD_TIMEOUT: Duration = Duration::from_secs(5);

/// One flusher process's writer of `philotes.table_failures`, shared by its workers.
pub struct FailureLog {
    pipeline: String,
    buffer: Config,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for FailureLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FailureLog({})", self.pipeline)
    }
}

impl FailureLog {
    /// A log for `pipeline` in the buffer database `buffer`; it connects on its first failure.
    pub fn new(pipeline: &str, buffer: &Config) -> Self {
        Self { pipeline: pipeline.to_string(), buffer: buffer.clone(), client: Mutex::new(None) }
    }

    /// Records `error` as the table's current failure. Best effort: when the buffer cannot take it either, the
    /// flush's own error says so, so a failure here is only logged at debug level.
    pub async fn record(&self, table: &TableId, error: &str) {
        let recorded = tokio::time::timeout(RECORD_TIMEOUT, async {
            let mut client = self.client.lock().await;
            if client.as_ref().is_none_or(Client::is_closed) {
                *client = Some(store::connect(&self.buffer).await?);
            }
            let Some(session) = client.as_ref() else { return Ok(()) };
            watermarks::record_failure(session, &self.pipeline, table, error).await
        })
        .await;
        match recorded {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %crate::report::chain(&e), "could not record a table's flush failure"),
            Err(_) => tracing::debug!("recording a table's flush failure timed out"),
        }
    }
}
