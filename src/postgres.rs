//! Opening Postgres connections from configured URLs, the one place that spawns tokio-postgres connection tasks.

use tokio_postgres::{Client, NoTls};

use crate::config::PostgresUrl;

/// Connects with the settings of `url` and drives the connection on the current runtime. A connection that
/// breaks later surfaces as an error on the client's next call.
///
/// TLS is not supported yet (`NoTls`): a URL with `sslmode=require` fails to connect with a clear error.
pub async fn connect(url: &PostgresUrl) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = url.config().connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}
