//! The SQL of the buffer database, one module per table family of `migrations/` (schema `philotes`).
//!
//! Stages call these functions; no stage holds SQL of its own. Each function takes a `GenericClient`, so the
//! caller decides whether it runs inside a transaction (it must, where DESIGN.md's atomic steps say so).

pub mod checkpoints;
pub mod dead_letters;
pub mod pipelines;
pub mod schemas;
pub mod segments;
pub mod snapshots;
pub mod source_tables;
pub mod tls;
pub mod watermarks;

use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, Config};

use crate::position::Lsn;

/// `pg_lsn` parameter from our LSN.
pub(crate) fn pg_lsn(lsn: Lsn) -> PgLsn {
    PgLsn::from(lsn.0)
}

/// Our LSN from a `pg_lsn` column.
pub(crate) fn lsn(value: PgLsn) -> Lsn {
    Lsn(u64::from(value))
}

/// The output settings every session philotes opens pins, whatever the server, database or role defaults say
/// (`ALTER DATABASE … SET DateStyle = 'SQL, DMY'` would otherwise change how a walsender prints every date,
/// `extra_float_digits = 0` would round every double). The values pgjdbc and Debezium pin, plus
/// `extra_float_digits = 3` (shortest exact float text since PostgreSQL 12). Used by the replication session
/// ([`crate::source::pgwire`]) and by every SQL session ([`connect`]): one definition for both.
pub const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("TimeZone", "UTC"),
    ("client_encoding", "UTF8"),
];

/// The startup `options` parameter that pins [`SESSION_SETTINGS`] (`-c name=value …`), after whatever options
/// the URL already has (a later `-c` wins, so ours hold even against the URL's).
///
/// Startup options reach the server only on a direct connection: PgBouncer refuses unknown startup parameters
/// unless told to ignore them (`ignore_startup_parameters = options`), and then the settings are lost silently.
/// Point the source at the server itself, not at a pooler (a pooler cannot carry a replication session anyway).
pub fn session_options(existing: Option<&str>) -> String {
    let pinned = SESSION_SETTINGS.iter().map(|(name, value)| format!("-c {name}={value}")).collect::<Vec<_>>().join(" ");
    match existing.map(str::trim) {
        Some(existing) if !existing.is_empty() => format!("{existing} {pinned}"),
        _ => pinned,
    }
}

/// `host:port/database` of a connection config, for messages (never the password or the other options).
pub fn describe(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(name)) => name.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config.get_dbname().or(config.get_user()).unwrap_or("postgres");
    format!("{host}:{port}/{database}")
}

/// Connects with `config` (plus the pinned [`SESSION_SETTINGS`]) and drives the connection on the current
/// runtime; a connection that breaks later surfaces as an error on the client's next call. The one place that
/// spawns tokio-postgres connection tasks.
///
/// TLS as the connection string's `sslmode`/`sslrootcert` say ([`tls`]; default `prefer`). A TLS settings
/// problem (an unreadable root certificate) is reported as a connection error naming the file.
pub async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let connector = tls::Tls::of(config).connector();
    let mut config = config.clone();
    config.options(session_options(config.get_options()));
    if config.get_application_name().is_none() {
        // Our sessions name themselves: a snapshot does not wait for philotes' own buffer transactions.
        config.application_name("philotes");
    }
    let (client, connection) = config.connect(connector).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %crate::report::chain(&e), "postgres connection ended");
        }
    });
    Ok(client)
}

/// A closed connection, a connection exception (SQLSTATE 08…) or an operator intervention (57…: the backend
/// was terminated, the server is shutting down): the session is lost, and a role that starts again from its
/// checkpoint may succeed. Every stage that talks to Postgres classifies its errors with this one test.
pub fn connection_lost(error: &tokio_postgres::Error) -> bool {
    match error.as_db_error() {
        None => true,
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08") || code.starts_with("57")
        }
    }
}

/// The engine's kind for a Postgres error of a stage: [`StageError::SessionLost`] when the connection is gone
/// (the role restarts from its checkpoint), fatal otherwise.
pub fn stage_error(error: tokio_postgres::Error, wrap: impl FnOnce(tokio_postgres::Error) -> philotes_engine::BoxError) -> philotes_engine::StageError {
    if connection_lost(&error) {
        philotes_engine::StageError::SessionLost(wrap(error))
    } else {
        philotes_engine::StageError::Fatal(wrap(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_options_pin_every_setting_after_the_urls_own() {
        assert_eq!(
            session_options(None),
            "-c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=3 -c bytea_output=hex -c TimeZone=UTC \
             -c client_encoding=UTF8"
        );
        assert!(session_options(Some("-c search_path=app")).starts_with("-c search_path=app -c DateStyle=ISO "));
        assert_eq!(session_options(Some("  ")), session_options(None));
    }
}
