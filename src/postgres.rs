//! Opening Postgres connections from configured URLs (the connection task itself is spawned by
//! `philotes_stages::store::connect`, the one place that does).

use tokio_postgres::Client;

use crate::config::PostgresUrl;

/// Connects with the settings of `url`. TLS is not supported yet.
pub async fn connect(url: &PostgresUrl) -> Result<Client, tokio_postgres::Error> {
    philotes_stages::store::connect(url.config()).await
}
