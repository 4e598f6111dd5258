//! The migrator: applies the numbered SQL files of `migrations/` to the buffer database, in order, once.
//!
//! Migrations are embedded in the binary (a flusher on another host needs no checkout). Each run takes a
//! transaction-scoped advisory lock, so two processes starting at once apply each file exactly once; every
//! applied file is recorded with a checksum, so a file edited after it landed is refused instead of silently
//! diverging between databases.

use tokio_postgres::Client;

/// One embedded migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The number the file name starts with; applied in ascending order.
    pub version: i32,
    /// The file name, for the record and the reader.
    pub name: &'static str,
    /// The SQL text.
    pub sql: &'static str,
}

/// Every file of `migrations/`, in order. A unit test checks this list against the directory.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_control_schema.sql",
        sql: include_str!("../migrations/0001_control_schema.sql"),
    },
    Migration {
        version: 2,
        name: "0002_buffer.sql",
        sql: include_str!("../migrations/0002_buffer.sql"),
    },
    Migration {
        version: 3,
        name: "0003_segment_payload_lz4.sql",
        sql: include_str!("../migrations/0003_segment_payload_lz4.sql"),
    },
    Migration {
        version: 4,
        name: "0004_source_tables.sql",
        sql: include_str!("../migrations/0004_source_tables.sql"),
    },
    Migration {
        version: 5,
        name: "0005_table_failures.sql",
        sql: include_str!("../migrations/0005_table_failures.sql"),
    },
    Migration {
        version: 6,
        name: "0006_snapshots.sql",
        sql: include_str!("../migrations/0006_snapshots.sql"),
    },
    Migration {
        version: 7,
        name: "0007_snapshot_lanes.sql",
        sql: include_str!("../migrations/0007_snapshot_lanes.sql"),
    },
    Migration {
        version: 8,
        name: "0008_segment_commit_ts.sql",
        sql: include_str!("../migrations/0008_segment_commit_ts.sql"),
    },
    Migration {
        version: 9,
        name: "0009_dead_letter_retry.sql",
        sql: include_str!("../migrations/0009_dead_letter_retry.sql"),
    },
];

/// The advisory lock that serialises concurrent migrators ("philotes" in ASCII).
const MIGRATE_LOCK_KEY: i64 = 0x7068_696c_6f74_6573;

const CREATE_RECORD_TABLE: &str = "CREATE SCHEMA IF NOT EXISTS philotes;
CREATE TABLE IF NOT EXISTS philotes.schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)";

/// What a migrate run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// File names applied by this run (empty when the database was up to date).
    pub applied: Vec<&'static str>,
    /// How many migrations the database has now.
    pub total: usize,
}

/// Why migrating failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The database refused a statement (or the connection broke).
    #[error("migration {name}: {source}")]
    Sql {
        /// The migration being applied, or `bookkeeping` for the record table.
        name: String,
        /// The database error.
        source: tokio_postgres::Error,
    },
    /// A file that was applied before has changed since.
    #[error("migration {name} was edited after it was applied (checksum {recorded} in the database, {embedded} in this binary): add a new migration instead of editing a landed one")]
    Edited {
        /// The file name.
        name: String,
        /// The checksum in `philotes.schema_migrations`.
        recorded: String,
        /// The checksum of the embedded text.
        embedded: String,
    },
    /// The database has migrations this binary does not know: it is older than the schema.
    #[error("the buffer database has migration {version} ({name}) that this philotes binary does not know: upgrade philotes")]
    Unknown {
        /// The recorded version.
        version: i32,
        /// The recorded name.
        name: String,
    },
}

fn sql_err(name: &str) -> impl FnOnce(tokio_postgres::Error) -> MigrateError + '_ {
    move |source| MigrateError::Sql { name: name.to_string(), source }
}

/// Applies every migration the database does not have yet, in one transaction. Idempotent: a second run
/// applies nothing. Safe to run from several processes at once.
pub async fn migrate(client: &mut Client) -> Result<MigrateReport, MigrateError> {
    apply(client, MIGRATIONS).await
}

/// [`migrate`] over an explicit list (tests use it to check the edited/unknown guards).
pub async fn apply(client: &mut Client, migrations: &[Migration]) -> Result<MigrateReport, MigrateError> {
    let tx = client.transaction().await.map_err(sql_err("bookkeeping"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK_KEY])
        .await
        .map_err(sql_err("bookkeeping"))?;
    tx.batch_execute(CREATE_RECORD_TABLE).await.map_err(sql_err("bookkeeping"))?;
    let rows = tx
        .query("SELECT version, name, checksum FROM philotes.schema_migrations ORDER BY version", &[])
        .await
        .map_err(sql_err("bookkeeping"))?;
    let mut report = MigrateReport::default();
    for row in &rows {
        let (version, name, recorded): (i32, String, String) = (row.get(0), row.get(1), row.get(2));
        let Some(known) = migrations.iter().find(|m| m.version == version) else {
            return Err(MigrateError::Unknown { version, name });
        };
        let embedded = checksum(known.sql);
        if recorded != embedded {
            return Err(MigrateError::Edited { name, recorded, embedded });
        }
    }
    for migration in migrations {
        if rows.iter().any(|r| r.get::<_, i32>(0) == migration.version) {
            continue;
        }
        tx.batch_execute(migration.sql).await.map_err(sql_err(migration.name))?;
        tx.execute(
            "INSERT INTO philotes.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&migration.version, &migration.name, &checksum(migration.sql)],
        )
        .await
        .map_err(sql_err(migration.name))?;
        report.applied.push(migration.name);
    }
    tx.commit().await.map_err(sql_err("bookkeeping"))?;
    report.total = migrations.len();
    Ok(report)
}

/// FNV-1a 64 of the file text: stable across Rust versions and machines (std's hasher is not).
fn checksum(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_migrations_is_embedded_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("migrations/ exists")
            .map(|e| e.expect("readable entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, embedded, "add every new migrations/*.sql file to MIGRATIONS");
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{} is numbered out of sequence", m.name);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)), "{} does not start with its number", m.name);
            let on_disk = std::fs::read_to_string(format!("{dir}/{}", m.name)).expect("file readable");
            assert_eq!(on_disk, m.sql);
        }
    }

    #[test]
    fn checksum_is_stable() {
        assert_eq!(checksum(""), "cbf29ce484222325");
        assert_eq!(checksum("a"), "af63dc4c8601ec8c");
    }
}
