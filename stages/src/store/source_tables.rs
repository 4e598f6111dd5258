//! `philotes.source_tables`: the source tables a pipeline follows, by relation OID.
//!
//! A table's identity is the name it had when the pipeline first saw it; it names the table's segments, schema
//! versions, watermark and Iceberg table for good. A rename only moves `schema_now`/`table_now`, so the
//! changes of a renamed table keep flowing where they went before, and a restart finds the table by its OID.

use tokio_postgres::GenericClient;

/// One followed (or refused) source table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTable {
    /// `pg_class.oid` on the source: what pgoutput's Relation message carries.
    pub relid: u32,
    /// Identity: the schema when first seen.
    pub source_schema: String,
    /// Identity: the table name when first seen.
    pub source_table: String,
    /// The schema it has now.
    pub schema_now: String,
    /// The name it has now.
    pub table_now: String,
    /// Why the capture does not follow it (`None`: followed).
    pub problem: Option<String>,
}

impl SourceTable {
    /// Whether the table has another name now than its identity.
    pub fn renamed(&self) -> bool {
        self.source_schema != self.schema_now || self.source_table != self.table_now
    }
}

/// Every table recorded for the pipeline.
pub async fn list(client: &impl GenericClient, pipeline: &str) -> Result<Vec<SourceTable>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT relid, source_schema, source_table, schema_now, table_now, problem
             FROM philotes.source_tables WHERE pipeline = $1 ORDER BY source_schema, source_table",
            &[&pipeline],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| SourceTable {
            relid: r.get(0),
            source_schema: r.get(1),
            source_table: r.get(2),
            schema_now: r.get(3),
            table_now: r.get(4),
            problem: r.get(5),
        })
        .collect())
}

/// Records a table (or updates its current name and problem). The identity of a known OID never changes; an
/// identity whose OID was dropped on the source moves to the new OID (`replace_relid`), as a table dropped and
/// created again under its name keeps its Iceberg table.
pub async fn upsert(client: &impl GenericClient, pipeline: &str, table: &SourceTable) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO philotes.source_tables
                 (pipeline, relid, source_schema, source_table, schema_now, table_now, problem)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (pipeline, relid) DO UPDATE SET schema_now = excluded.schema_now,
                 table_now = excluded.table_now, problem = excluded.problem, updated_at = now()",
            &[
                &pipeline,
                &table.relid,
                &table.source_schema,
                &table.source_table,
                &table.schema_now,
                &table.table_now,
                &table.problem,
            ],
        )
        .await?;
    Ok(())
}

/// Moves an identity to another OID (its table was dropped and created again under the same name).
pub async fn replace_relid(
    client: &impl GenericClient,
    pipeline: &str,
    old: u32,
    new: u32,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE philotes.source_tables SET relid = $3, updated_at = now() WHERE pipeline = $1 AND relid = $2",
            &[&pipeline, &old, &new],
        )
        .await?;
    Ok(())
}
