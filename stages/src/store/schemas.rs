//! `philotes.schemas`: the schema versions of each source table, as SchemaResolve recorded them.

use tokio_postgres::GenericClient;

use super::pg_lsn;
use crate::position::Lsn;

/// One recorded version of a table's columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaVersionRow {
    /// Source schema.
    pub source_schema: String,
    /// Source table.
    pub source_table: String,
    /// 1, 2, … per table.
    pub version: i32,
    /// MessagePack of `philotes_schemas::TableSchema`.
    pub columns: Vec<u8>,
    /// Human-readable column list.
    pub description: String,
}

impl SchemaVersionRow {
    /// The recorded columns, decoded.
    pub fn schema(&self) -> Result<philotes_schemas::TableSchema, rmp_serde::decode::Error> {
        rmp_serde::from_slice(&self.columns)
    }
}

/// The newest version of every table of the pipeline.
pub async fn latest(client: &impl GenericClient, pipeline: &str) -> Result<Vec<SchemaVersionRow>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT DISTINCT ON (source_schema, source_table) source_schema, source_table, version, columns, description
             FROM philotes.schemas WHERE pipeline = $1
             ORDER BY source_schema, source_table, version DESC",
            &[&pipeline],
        )
        .await?;
    Ok(rows.iter().map(row_to_version).collect())
}

/// Every version of one table, oldest first (flushers project older versions onto the newest).
pub async fn versions(
    client: &impl GenericClient,
    pipeline: &str,
    schema: &str,
    table: &str,
) -> Result<Vec<SchemaVersionRow>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT source_schema, source_table, version, columns, description FROM philotes.schemas
             WHERE pipeline = $1 AND source_schema = $2 AND source_table = $3 ORDER BY version",
            &[&pipeline, &schema, &table],
        )
        .await?;
    Ok(rows.iter().map(row_to_version).collect())
}

fn row_to_version(r: &tokio_postgres::Row) -> SchemaVersionRow {
    SchemaVersionRow {
        source_schema: r.get(0),
        source_table: r.get(1),
        version: r.get(2),
        columns: r.get(3),
        description: r.get(4),
    }
}

/// Records a new version; a version recorded before (a restart that saw the same Relation again) is kept.
pub async fn insert(
    client: &impl GenericClient,
    pipeline: &str,
    version: &SchemaVersionRow,
    first_lsn: Lsn,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO philotes.schemas (pipeline, source_schema, source_table, version, columns, description, first_lsn)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &[
                &pipeline,
                &version.source_schema,
                &version.source_table,
                &version.version,
                &version.columns,
                &version.description,
                &pg_lsn(first_lsn),
            ],
        )
        .await?;
    Ok(())
}
