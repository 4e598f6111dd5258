//! SchemaResolve: keeps the relation cache, turns pgoutput text values into typed [`Value`]s, numbers schema
//! versions per table and records new ones in `philotes.schemas`.
//!
//! One instance per pipeline (the relation cache follows the stream's order). A value that cannot be converted
//! does not stop anything: the change becomes a [`Resolved::Rejected`] dead letter that Enqueue stores in the
//! same buffer transaction as the neighbouring segments, so a redelivered transaction does not dead-letter it twice.

mod convert;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use philotes_engine::{Emitter, Stage, StageError};
use philotes_schemas::{CatalogType, ColumnSchema, TableSchema, TypeResolver, CATALOG_TYPES_SQL};
use tokio_postgres::{Client, Config};

use crate::decode::{ChangeEvent, Decoded, Relation};
use crate::position::Lsn;
use crate::segment::SegmentEvent;
use crate::store::dead_letters::DeadLetter;
use crate::store::schemas::{self as schema_store, SchemaVersionRow};

/// The stage's name in metrics, spans and YAML (`stages.schema_resolve`).
pub const NAME: &str = "schema_resolve";

/// One version of a table's schema, shared by every change decoded with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableVersion {
    /// The columns and their types.
    pub schema: TableSchema,
    /// 1, 2, … per table (philotes.schemas).
    pub version: i32,
}

/// What SchemaResolve hands to Enqueue, in stream order.
#[derive(Debug, Clone)]
pub enum Resolved {
    /// A transaction starts.
    Begin {
        /// Its commit LSN.
        commit_lsn: Lsn,
    },
    /// A typed change of a table the pipeline captures.
    Change {
        /// The table and the schema version its values follow.
        table: Arc<TableVersion>,
        /// The change, ready for a segment.
        event: SegmentEvent,
    },
    /// A change that could not be converted; stored as a dead letter, the pipeline goes on.
    Rejected(DeadLetter),
    /// The transaction is complete.
    Commit {
        /// Its commit LSN.
        commit_lsn: Lsn,
        /// What the slot may release once it is durable.
        end_lsn: Lsn,
    },
}

/// Why SchemaResolve could not go on.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The source or buffer database failed.
    #[error("schema_resolve: {0}")]
    Sql(#[from] tokio_postgres::Error),
    /// A column type philotes cannot map (and the pipeline does not carry unmapped types as text).
    #[error("{0} (set `source.postgres.unmapped_types: text` to carry such columns as text)")]
    Unsupported(#[from] philotes_schemas::UnsupportedType),
    /// A change names a relation the stream never described: the stream is broken.
    #[error("a change of relation {0} arrived before its Relation message")]
    UnknownRelation(u32),
    /// Used before `start` connected it.
    #[error("schema_resolve: not started")]
    NotStarted,
    /// Binary values were not requested.
    #[error("a binary column value arrived, but the stream was opened in text mode")]
    Binary,
    /// A stored schema version cannot be read.
    #[error("stored schema version of {table} cannot be read: {reason}")]
    StoredVersion {
        /// The table.
        table: String,
        /// Why.
        reason: String,
    },
}

/// Which tables to keep: `None` = all the publication sends.
pub type TableFilter = Option<HashSet<(String, String)>>;

/// SchemaResolve's settings and connections.
pub struct SchemaResolve {
    pipeline: String,
    source_config: Config,
    buffer_config: Config,
    /// Connected in `start`: the source for its type catalog, the buffer for schema versions.
    clients: Option<(Client, Client)>,
    filter: TableFilter,
    resolver: TypeResolver,
    carry_unmapped_as_text: bool,
    /// Relation id → the table version of its last Relation message (`None`: a table not captured).
    relations: HashMap<u32, Option<Arc<TableVersion>>>,
    /// (schema, table) → newest version known, from philotes.schemas and this session.
    latest: HashMap<(String, String), Arc<TableVersion>>,
    open: Option<Lsn>,
}

impl SchemaResolve {
    /// A stage for `pipeline` that will connect to the source (type catalog) and the buffer (schema versions).
    pub fn new(pipeline: &str, source: Config, buffer: Config, filter: TableFilter, carry_unmapped_as_text: bool) -> Self {
        Self {
            pipeline: pipeline.to_string(),
            source_config: source,
            buffer_config: buffer,
            clients: None,
            filter,
            resolver: TypeResolver::new(carry_unmapped_as_text),
            carry_unmapped_as_text,
            relations: HashMap::new(),
            latest: HashMap::new(),
            open: None,
        }
    }

    async fn load_catalog(&mut self) -> Result<(), ResolveError> {
        let (source, _) = self.clients.as_ref().ok_or(ResolveError::NotStarted)?;
        let rows = source.query(CATALOG_TYPES_SQL, &[]).await?;
        let types = rows.iter().map(|r| CatalogType {
            oid: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            kind: first_char(r.get(3)),
            base_type: r.get(4),
            type_modifier: r.get(5),
            element_type: r.get(6),
            category: first_char(r.get(7)),
        });
        self.resolver = TypeResolver::new(self.carry_unmapped_as_text).with_catalog(types.collect::<Vec<_>>());
        Ok(())
    }

    async fn load_versions(&mut self) -> Result<(), ResolveError> {
        let (_, buffer) = self.clients.as_ref().ok_or(ResolveError::NotStarted)?;
        for row in schema_store::latest(buffer, &self.pipeline).await? {
            let table = format!("{}.{}", row.source_schema, row.source_table);
            let schema: TableSchema = rmp_serde::from_slice(&row.columns)
                .map_err(|e| ResolveError::StoredVersion { table, reason: e.to_string() })?;
            self.latest.insert((row.source_schema, row.source_table), Arc::new(TableVersion { schema, version: row.version }));
        }
        Ok(())
    }

    async fn relation(&mut self, relation: &Relation) -> Result<(), ResolveError> {
        let key = (relation.namespace.clone(), relation.name.clone());
        if self.filter.as_ref().is_some_and(|f| !f.contains(&key)) {
            self.relations.insert(relation.id, None);
            return Ok(());
        }
        if relation.columns.iter().any(|c| !self.resolver.knows(c.type_oid)) {
            // A type created after start (a new enum, a domain): read the catalog again.
            self.load_catalog().await?;
        }
        let qualified = format!("{}.{}", relation.namespace, relation.name);
        let mut columns = Vec::with_capacity(relation.columns.len());
        for c in &relation.columns {
            columns.push(ColumnSchema {
                name: c.name.clone(),
                pg_type: self.resolver.resolve(&qualified, &c.name, c.type_oid, c.type_modifier)?,
                type_oid: c.type_oid,
                type_modifier: c.type_modifier,
                part_of_key: c.is_key,
            });
        }
        let schema = TableSchema {
            schema: relation.namespace.clone(),
            table: relation.name.clone(),
            columns,
            replica_identity: relation.replica_identity,
        };
        let version = match self.latest.get(&key) {
            Some(current) if current.schema == schema => current.clone(),
            current => {
                let version = Arc::new(TableVersion { schema, version: current.map_or(1, |c| c.version + 1) });
                let row = SchemaVersionRow {
                    source_schema: key.0.clone(),
                    source_table: key.1.clone(),
                    version: version.version,
                    columns: rmp_serde::to_vec(&version.schema).map_err(|e| ResolveError::StoredVersion {
                        table: qualified.clone(),
                        reason: e.to_string(),
                    })?,
                    description: describe(&version.schema),
                };
                // Recorded at once (idempotent): a segment must never name a version the buffer does not have.
                let (_, buffer) = self.clients.as_ref().ok_or(ResolveError::NotStarted)?;
                schema_store::insert(buffer, &self.pipeline, &row, self.open.unwrap_or(Lsn::ZERO)).await?;
                tracing::info!(table = %qualified, version = version.version, columns = %row.description, "new schema version");
                self.latest.insert(key, version.clone());
                version
            }
        };
        self.relations.insert(relation.id, Some(version));
        Ok(())
    }

    fn change(&self, change: &ChangeEvent) -> Result<Option<Resolved>, ResolveError> {
        let Some(entry) = self.relations.get(&change.relation_id) else {
            return Err(ResolveError::UnknownRelation(change.relation_id));
        };
        let Some(table) = entry else { return Ok(None) };
        Ok(Some(match convert::event(table, change) {
            Ok(event) => Resolved::Change { table: table.clone(), event },
            Err(convert::ConvertFailure::Binary) => return Err(ResolveError::Binary),
            Err(convert::ConvertFailure::Value(reason)) => Resolved::Rejected(DeadLetter {
                stage: NAME.to_string(),
                table: Some((table.schema.schema.clone(), table.schema.table.clone())),
                commit_lsn: Some(change.commit_lsn),
                seq: Some(change.seq),
                reason,
                payload: convert::render(change),
            }),
        }))
    }
}

fn first_char(text: String) -> char {
    text.chars().next().unwrap_or(' ')
}

/// `id integer key, name text, …`: the column list for the record and the log.
fn describe(schema: &TableSchema) -> String {
    schema
        .columns
        .iter()
        .map(|c| format!("{} {}{}", c.name, c.pg_type, if c.part_of_key { " key" } else { "" }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Connection loss is for the capture supervisor (it restarts from the checkpoint); the rest stops the pipeline.
fn stage_error(error: ResolveError) -> StageError {
    StageError::fatal(error)
}

impl Stage for SchemaResolve {
    type In = Vec<Decoded>;
    type Out = Vec<Resolved>;

    async fn start(&mut self) -> Result<(), StageError> {
        let source = crate::store::connect(&self.source_config).await.map_err(|e| stage_error(e.into()))?;
        let buffer = crate::store::connect(&self.buffer_config).await.map_err(|e| stage_error(e.into()))?;
        self.clients = Some((source, buffer));
        self.load_catalog().await.map_err(stage_error)?;
        self.load_versions().await.map_err(stage_error)
    }

    async fn process(&mut self, items: &Vec<Decoded>, out: &mut Emitter<Vec<Resolved>>) -> Result<(), StageError> {
        let mut resolved = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Decoded::Begin { commit_lsn, .. } => {
                    self.open = Some(*commit_lsn);
                    resolved.push(Resolved::Begin { commit_lsn: *commit_lsn });
                }
                Decoded::Relation(relation) => self.relation(relation).await.map_err(stage_error)?,
                Decoded::Change(change) => {
                    if let Some(change) = self.change(change).map_err(stage_error)? {
                        resolved.push(change);
                    }
                }
                Decoded::Commit { commit_lsn, end_lsn, .. } => {
                    self.open = None;
                    resolved.push(Resolved::Commit { commit_lsn: *commit_lsn, end_lsn: *end_lsn });
                }
                Decoded::Origin { .. } | Decoded::Type(_) | Decoded::Message { .. } => {}
            }
        }
        if !resolved.is_empty() {
            out.emit(resolved);
        }
        Ok(())
    }
}
