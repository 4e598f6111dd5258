//! A table's flush lease, taken for maintenance: the row lock on the table's `philotes.table_watermarks` row
//! that a flusher's claim holds from claim to checkpoint (`FOR UPDATE SKIP LOCKED`, [`crate::claim`]).
//!
//! Maintenance waits for it (a flush holds it for one flush), up to a bound, and then skips the table for this
//! round rather than queue behind a stuck flusher. While maintenance holds it, flushers skip the table (their
//! `SKIP LOCKED`), so its changes wait in the buffer until the lease is released: compaction of a big table
//! delays that table's flushes by its duration, never loses or reorders them. A maintenance process that dies
//! releases the lease by its connection ending, as a flusher does.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::MaintenanceError;
use crate::store::watermarks;
use crate::table_id::TableId;

/// A held lease: a transaction open on the maintenance's buffer session.
pub struct Lease<'c> {
    client: &'c Client,
}

/// What taking a lease found.
pub enum Taken<'c> {
    /// The lease is held until [`Lease::release`].
    Held(Lease<'c>),
    /// A flush held it for longer than the wait.
    Busy,
    /// The table has no lease row (never flushed).
    NoRow,
}

impl<'c> Lease<'c> {
    /// Takes `table`'s lease on `client` (which must not be in a transaction), waiting up to `wait`.
    pub async fn take(client: &'c Client, pipeline: &str, table: &TableId, wait: Duration) -> Result<Taken<'c>, MaintenanceError> {
        client.batch_execute("BEGIN").await.map_err(MaintenanceError::Buffer)?;
        let taken = match watermarks::lock_for_maintenance(client, pipeline, table, wait).await {
            Ok(true) => return Ok(Taken::Held(Lease { client })),
            Ok(false) => Taken::NoRow,
            Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => Taken::Busy,
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(MaintenanceError::Buffer(e));
            }
        };
        client.batch_execute("ROLLBACK").await.map_err(MaintenanceError::Buffer)?;
        Ok(taken)
    }

    /// Releases the lease (the transaction changed nothing: it is rolled back).
    pub async fn release(self) -> Result<(), tokio_postgres::Error> {
        self.client.batch_execute("ROLLBACK").await
    }
}
