//! The SQL of the buffer database, one module per table family of `migrations/` (schema `philotes`).
//!
//! Stages call these functions; no stage holds SQL of its own. Each function takes a `GenericClient`, so the
//! caller decides whether it runs inside a transaction (it must, where DESIGN.md's atomic steps say so).

pub mod checkpoints;
pub mod dead_letters;
pub mod pipelines;
pub mod schemas;
pub mod segments;
pub mod source_tables;
pub mod watermarks;

use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, Config, NoTls};

use crate::position::Lsn;

/// `pg_lsn` parameter from our LSN.
pub(crate) fn pg_lsn(lsn: Lsn) -> PgLsn {
    PgLsn::from(lsn.0)
}

/// Our LSN from a `pg_lsn` column.
pub(crate) fn lsn(value: PgLsn) -> Lsn {
    Lsn(u64::from(value))
}

/// Connects with `config` and drives the connection on the current runtime; a connection that breaks later
/// surfaces as an error on the client's next call. The one place that spawns tokio-postgres connection tasks.
///
/// TLS is not supported yet (`NoTls`): a server that requires it refuses the connection with a clear error.
pub async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}
