//! `philotes snapshot FILE --table T…`: the checks before a table's existing rows are copied again.
//!
//! The verb only records a request (`philotes.snapshots`, a `pending` row of the next run); the running capture
//! picks it up. So everything that would make the request useless is refused here, per table, with a message
//! that names the table and the fix: a table the pipeline does not capture (checked against the file, before
//! any connection), and, on the source, a table that does not exist, is not a table, is a partition, would not
//! be published (keyless), or that the pipeline's role cannot read. One refused table never stops the others.

use std::path::Path;

use philotes_stages::report;
use philotes_stages::source::setup::{self, excluded_from_all, PublishedTables};
use tokio_postgres::Client;

use crate::config::TableId;

/// Why a table's snapshot was not requested.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `--table` is not a table name.
    #[error("--table {text}: {reason}")]
    BadName {
        /// What was given.
        text: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The file's `source.postgres.tables` does not list the table.
    #[error(
        "{table} is not one of the pipeline's tables: source.postgres.tables in {file} lists {listed}; \
         add it there (and restart the capture) before asking for its snapshot"
    )]
    NotInPipeline {
        /// The table.
        table: TableId,
        /// The pipeline file.
        file: String,
        /// The tables the file lists.
        listed: String,
    },
    /// `tables: all` never takes this table (philotes' own, or the SQL catalog's).
    #[error(
        "{table} is not one of the pipeline's tables: source.postgres.tables: all in {file} leaves out philotes' \
         own schema and the SQL catalog's tables"
    )]
    NotInAll {
        /// The table.
        table: TableId,
        /// The pipeline file.
        file: String,
    },
    /// No relation of that name on the source.
    #[error("{table} does not exist on the source database {source_db}")]
    Missing {
        /// The table.
        table: TableId,
        /// `host:port/db` of the source.
        source_db: String,
    },
    /// A view, a sequence, a foreign table….
    #[error("{table} is not a table on the source (relkind {kind:?}): only tables and partitioned tables are captured")]
    NotATable {
        /// The relation.
        table: TableId,
        /// `pg_class.relkind`.
        kind: char,
    },
    /// A partition: its changes arrive under its root, and so must its rows.
    #[error("{table} is a partition of {root}: its rows are captured under the root; ask for the snapshot of {root}")]
    Partition {
        /// The partition.
        table: TableId,
        /// Its root.
        root: String,
    },
    /// The capture never publishes the table (it has no usable replica identity).
    #[error("{table} is not captured: {reason}")]
    NotCaptured {
        /// The table.
        table: TableId,
        /// Why, with the fix.
        reason: String,
    },
    /// The pipeline's source role cannot read the table.
    #[error("the source role {role} cannot SELECT {table}, so its rows cannot be read: GRANT SELECT ON {table} TO {role}")]
    NoSelect {
        /// The table.
        table: TableId,
        /// The role philotes connects as.
        role: String,
    },
    /// The source answered the check with an error (no USAGE on the schema, say).
    #[error("checking {table} on the source database: {cause}")]
    Check {
        /// The table.
        table: TableId,
        /// The server's answer, with every cause.
        cause: String,
    },
}

/// Parses `--table` as the pipeline file's `tables` entries are parsed (`schema.table`, unqualified meaning
/// `public`, quoted parts) and checks that the file captures it. Needs no connection.
pub fn captured(tables: &PublishedTables, file: &Path, text: &str) -> Result<TableId, Refusal> {
    let table = TableId::parse(text).map_err(|reason| Refusal::BadName { text: text.to_string(), reason })?;
    let file = file.display().to_string();
    match tables {
        PublishedTables::All if excluded_from_all(&table.schema, &table.name) => Err(Refusal::NotInAll { table, file }),
        PublishedTables::All => Ok(table),
        PublishedTables::Listed(listed) if listed.contains(&table) => Ok(table),
        PublishedTables::Listed(listed) => Err(Refusal::NotInPipeline {
            table,
            file,
            listed: listed.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// Checks on the source that `table` can be snapshotted: it exists, is an ordinary or partitioned table (not a
/// partition), has a replica identity the capture publishes, and the session's role may SELECT it.
/// `source_db` names the source in messages (`host:port/db`).
pub async fn check_source(source: &Client, source_db: &str, table: &TableId) -> Result<(), Refusal> {
    let check = |e: &(dyn std::error::Error + 'static)| Refusal::Check { table: table.clone(), cause: report::chain(e) };
    let found = setup::table_by_name(source, &table.schema, &table.name).await.map_err(|e| check(&e))?;
    let Some(found) = found else {
        return Err(Refusal::Missing { table: table.clone(), source_db: source_db.to_string() });
    };
    if !matches!(found.kind, 'r' | 'p') {
        return Err(Refusal::NotATable { table: table.clone(), kind: found.kind });
    }
    if let Some(root) = found.partition_of {
        return Err(Refusal::Partition { table: table.clone(), root });
    }
    if let Some(reason) = found.keyless {
        return Err(Refusal::NotCaptured { table: table.clone(), reason });
    }
    let row = source
        .query_one("SELECT has_table_privilege($1::oid, 'SELECT'), current_user::text", &[&found.relid])
        .await
        .map_err(|e| check(&e))?;
    if row.get::<_, bool>(0) {
        Ok(())
    } else {
        Err(Refusal::NoSelect { table: table.clone(), role: row.get(1) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(names: &[&str]) -> PublishedTables {
        PublishedTables::Listed(names.iter().map(|n| TableId::parse(n).expect("name")).collect())
    }

    #[test]
    fn a_listed_table_is_captured_in_any_spelling_the_file_accepts() {
        let tables = listed(&["public.orders", "\"my schema\".\"t.dot\""]);
        let file = Path::new("p.yaml");
        assert_eq!(captured(&tables, file, "orders"), Ok(TableId::new("public", "orders")));
        assert_eq!(captured(&tables, file, "\"public\".orders"), Ok(TableId::new("public", "orders")));
        assert_eq!(captured(&tables, file, "\"my schema\".\"t.dot\""), Ok(TableId::new("my schema", "t.dot")));
    }

    #[test]
    fn a_table_the_file_does_not_list_is_refused_naming_it_the_key_and_the_file() {
        let message = captured(&listed(&["public.orders"]), Path::new("p.yaml"), "public.items").unwrap_err().to_string();
        assert!(message.starts_with("public.items is not one of the pipeline's tables"), "{message}");
        assert!(message.contains("source.postgres.tables in p.yaml lists public.orders"), "{message}");
    }

    #[test]
    fn tables_all_takes_any_user_table_but_never_philotes_own_or_the_catalogs() {
        let file = Path::new("p.yaml");
        assert_eq!(captured(&PublishedTables::All, file, "s.anything"), Ok(TableId::new("s", "anything")));
        for own in ["philotes.segments", "public.iceberg_tables"] {
            let message = captured(&PublishedTables::All, file, own).unwrap_err().to_string();
            assert!(message.contains("source.postgres.tables: all in p.yaml leaves out"), "{message}");
        }
    }

    #[test]
    fn a_name_that_does_not_parse_is_refused_with_the_parser_reason() {
        let message = captured(&PublishedTables::All, Path::new("p.yaml"), "a.b.c").unwrap_err().to_string();
        assert!(message.starts_with("--table a.b.c: expected schema.table"), "{message}");
    }
}
