//! Which source tables the capture follows, by relation OID: the pipeline's `tables` resolved against the
//! source catalog, the publication kept in step with them, and each table's identity recorded in
//! `philotes.source_tables`.
//!
//! Why OIDs: pgoutput's Relation message names a table by its OID and its *current* name. Following names lost
//! every change after `ALTER TABLE … RENAME`, and a restart then failed on the missing name after the slot had
//! moved past those changes. A table keeps the identity it had when first seen (its segments, schema versions,
//! watermark and Iceberg table keep that name); a rename is a warning, in the log and in `philotes status`.
//!
//! What is never published: a partition on its own (its changes arrive under the partitioned root, through
//! `publish_via_partition_root`), a keyless table (publishing it would make the application's UPDATE and DELETE
//! fail: it is refused by name, the other tables go on, and it is checked again at every start), and, for
//! `tables: all`, philotes' own schema and the SQL catalog's tables.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio_postgres::Client;

use super::setup::{self, CatalogTable, PublishedTables};
use super::SourceError;
use crate::store::source_tables::{self, SourceTable};
use crate::table_id::TableId;

/// The Iceberg namespace and table a source table's identity is written to, for the clash check.
pub type IcebergName = Arc<dyn Fn(&TableId) -> super::clash::IcebergIdent + Send + Sync>;

/// What the capture follows after [`prepare`].
#[derive(Debug, Clone, Default)]
pub struct Followed {
    /// Relation OID → identity, for every followed table.
    pub tables: HashMap<u32, TableId>,
    /// The relation OIDs refused (keyless, identity taken): SchemaResolve never places their changes.
    pub refused: HashSet<u32>,
    /// `tables: all`: a relation the stream names for the first time is a new table to follow.
    pub all: bool,
}

/// Resolves the pipeline's tables, creates or extends the publication, records identities and refusals.
pub async fn prepare(
    source: &Client,
    buffer: &Client,
    pipeline: &str,
    publication: &str,
    tables: &PublishedTables,
    iceberg_name: &IcebergName,
) -> Result<Followed, SourceError> {
    let known = source_tables::list(buffer, pipeline).await.map_err(SourceError::Buffer)?;
    let mut candidates: Vec<(CatalogTable, TableId)> = Vec::new();
    let mut refused: Vec<(CatalogTable, TableId, String)> = Vec::new();
    match tables {
        PublishedTables::Listed(list) => {
            for TableId { schema, name: table } in list {
                let mut identity = TableId::new(schema.clone(), table.clone());
                let row = known.iter().find(|k| k.source_schema == *schema && k.source_table == *table);
                let by_oid = match row {
                    Some(k) => setup::table_by_oid(source, k.relid).await?,
                    None => None,
                };
                if let Some(now) = &by_oid {
                    if (now.schema.as_str(), now.name.as_str()) != (schema.as_str(), table.as_str()) {
                        if let Some(other) = setup::table_by_name(source, schema, table).await? {
                            tracing::warn!(listed = %TableId::new(schema.clone(), table.clone()), other_oid = other.relid, followed = %now.qualified(),
                                "the listed name now belongs to another table, which is not captured; the pipeline follows \
                                 the table first seen under that name (renamed since)");
                        }
                    }
                }
                let now = match by_oid {
                    Some(now) => now,
                    None => {
                        let now = setup::table_by_name(source, schema, table)
                            .await?
                            .ok_or_else(|| SourceError::NoSuchTable(format!("{schema}.{table}")))?;
                        if let Some(k) = row {
                            tracing::warn!(table = %format!("{schema}.{table}"), old_oid = k.relid, new_oid = now.relid,
                                "the table was dropped and created again; its changes go on into the same Iceberg table");
                            source_tables::replace_relid(buffer, pipeline, k.relid, now.relid)
                                .await
                                .map_err(SourceError::Buffer)?;
                        }
                        // The file names a followed table by its new name: it keeps its first name (and Iceberg table).
                        if let Some(k) = known.iter().find(|k| k.relid == now.relid) {
                            identity = TableId::new(k.source_schema.clone(), k.source_table.clone());
                        }
                        now
                    }
                };
                if let Some(root) = &now.partition_of {
                    return Err(SourceError::PartitionListed { table: now.qualified(), root: root.clone() });
                }
                if !matches!(now.kind, 'r' | 'p') {
                    return Err(SourceError::NotATable(now.qualified()));
                }
                candidates.push((now, identity));
            }
        }
        PublishedTables::All => {
            for now in setup::user_tables(source).await? {
                let identity = match known.iter().find(|k| k.relid == now.relid) {
                    Some(k) => TableId::new(k.source_schema.clone(), k.source_table.clone()),
                    None => TableId::new(now.schema.clone(), now.name.clone()),
                };
                let holder = known.iter().find(|k| {
                    k.relid != now.relid && k.source_schema == identity.schema && k.source_table == identity.name
                });
                if let Some(holder) = holder {
                    if setup::table_by_oid(source, holder.relid).await?.is_some() {
                        let reason = format!(
                            "another table (oid {}) follows the name {} into Iceberg since before a rename; this \
                             table cannot take it: rename it, or map it with sink.iceberg.tables and a new pipeline",
                            holder.relid, identity
                        );
                        refused.push((now, identity, reason));
                        continue;
                    }
                    source_tables::replace_relid(buffer, pipeline, holder.relid, now.relid)
                        .await
                        .map_err(SourceError::Buffer)?;
                }
                candidates.push((now, identity));
            }
        }
    }

    let state = setup::publication(source, publication).await?;
    let members: HashSet<u32> = state.as_ref().map(|s| s.members.iter().copied().collect()).unwrap_or_default();
    let all_tables = state.as_ref().is_some_and(|s| s.all_tables);
    let mut followed: Vec<(CatalogTable, TableId)> = Vec::new();
    for (table, identity) in candidates {
        match table.keyless.clone() {
            Some(reason) if !all_tables && !members.contains(&table.relid) => {
                refused.push((table, identity, format!("not added to publication {publication}: {reason}")));
            }
            Some(reason) => {
                tracing::error!(table = %table.qualified(), publication,
                    "the publication already sends this table, so the application's UPDATE and DELETE on it fail: {reason}");
                followed.push((table, identity));
            }
            None => followed.push((table, identity)),
        }
    }
    check_clashes(followed.iter().map(|(_, identity)| identity), iceberg_name)?;

    let missing: Vec<CatalogTable> =
        followed.iter().filter(|(t, _)| !members.contains(&t.relid)).map(|(t, _)| t.clone()).collect();
    let partitioned = followed.iter().any(|(t, _)| t.kind == 'p');
    match &state {
        None => {
            setup::create_publication(source, publication, &missing, pipeline).await.map_err(|e| context(e, publication))?;
            tracing::info!(publication, tables = missing.len(), "publication created");
        }
        Some(state) => {
            if partitioned && !state.via_root {
                tracing::warn!(publication,
                    "turning on publish_via_partition_root, so the changes of partitioned tables arrive under their root");
                setup::publish_via_root(source, publication).await.map_err(|e| context(e, publication))?;
            }
            if !state.all_tables && !missing.is_empty() {
                setup::add_to_publication(source, publication, &missing).await.map_err(|e| context(e, publication))?;
                tracing::info!(publication, tables = missing.len(), "publication extended");
            }
        }
    }

    for (table, identity) in &followed {
        if (table.schema.as_str(), table.name.as_str()) != (identity.schema.as_str(), identity.name.as_str()) {
            tracing::warn!(table = %identity, now = %table.qualified(),
                "the table was renamed; its changes keep flowing into the same Iceberg table");
        }
        if !table.generated.is_empty() {
            tracing::warn!(table = %table.qualified(), columns = %table.generated.join(", "),
                "generated columns are not replicated (PostgreSQL 15 does not publish them): they are missing in Iceberg");
        }
        record(buffer, pipeline, table, identity, None).await?;
    }
    for (table, identity, reason) in &refused {
        tracing::error!(table = %table.qualified(), "table not captured: {reason}");
        record(buffer, pipeline, table, identity, Some(reason.clone())).await?;
    }
    Ok(Followed {
        tables: followed.into_iter().map(|(t, identity)| (t.relid, identity)).collect(),
        refused: refused.into_iter().map(|(t, _, _)| t.relid).collect(),
        all: matches!(tables, PublishedTables::All),
    })
}

/// For `tables: all` with a publication philotes lists itself: adds the user tables created since `followed`
/// was read (keyless ones refused and recorded), so they join while the pipeline runs. Returns the tables added.
///
/// A table's rows written before it joined the publication are not in the stream: when it already holds rows,
/// that is said in the log.
pub async fn add_new_tables(
    source: &Client,
    buffer: &Client,
    pipeline: &str,
    publication: &str,
    seen: &mut HashSet<u32>,
) -> Result<Vec<CatalogTable>, SourceError> {
    let Some(state) = setup::publication(source, publication).await? else { return Ok(Vec::new()) };
    if state.all_tables {
        return Ok(Vec::new());
    }
    let mut added = Vec::new();
    for table in setup::user_tables(source).await? {
        if !seen.insert(table.relid) || state.members.contains(&table.relid) {
            continue;
        }
        let identity = TableId::new(table.schema.clone(), table.name.clone());
        if let Some(reason) = &table.keyless {
            let reason = format!("not added to publication {publication}: {reason}");
            tracing::error!(table = %table.qualified(), "new table not captured: {reason}");
            record(buffer, pipeline, &table, &identity, Some(reason)).await?;
            continue;
        }
        setup::add_to_publication(source, publication, std::slice::from_ref(&table))
            .await
            .map_err(|e| context(e, publication))?;
        if setup::has_rows(source, &table).await? {
            tracing::warn!(table = %table.qualified(),
                "new table joined the publication with rows already in it: rows written before it joined are not \
                 in the stream");
        } else {
            tracing::info!(table = %table.qualified(), "new table joined the publication");
        }
        added.push(table);
    }
    Ok(added)
}

/// Refuses two identities that resolve to one Iceberg table (compared case-insensitively, as catalogs do).
pub fn check_clashes<'a>(identities: impl Iterator<Item = &'a TableId>, iceberg_name: &IcebergName) -> Result<(), SourceError> {
    match super::clash::iceberg_clashes(identities, |t| iceberg_name(t)).into_iter().next() {
        Some(clash) => Err(SourceError::IcebergClash(Box::new(clash))),
        None => Ok(()),
    }
}

async fn record(
    buffer: &Client,
    pipeline: &str,
    table: &CatalogTable,
    identity: &TableId,
    problem: Option<String>,
) -> Result<(), SourceError> {
    let row = SourceTable {
        relid: table.relid,
        source_schema: identity.schema.clone(),
        source_table: identity.name.clone(),
        schema_now: table.schema.clone(),
        table_now: table.name.clone(),
        problem,
    };
    source_tables::upsert(buffer, pipeline, &row).await.map_err(SourceError::Buffer)
}

/// Says what was being done when the source refused a publication change (e.g. a missing privilege).
fn context(error: SourceError, publication: &str) -> SourceError {
    error.context(format!("creating or extending the publication {}", setup::quote_ident(publication)))
}
