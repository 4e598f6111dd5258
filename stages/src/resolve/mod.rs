//! SchemaResolve: keeps the relation cache, turns pgoutput text values into typed [`Value`]s, numbers schema
//! versions per table and records new ones in `philotes.schemas`.
//!
//! One instance per pipeline (the relation cache follows the stream's order). A value that cannot be converted
//! does not stop anything: the change becomes a [`Resolved::Rejected`] dead letter that Enqueue stores in the
//! same buffer transaction as the neighbouring segments, so a redelivered transaction does not dead-letter it twice.

pub mod convert;

pub use convert::convert_again;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use philotes_engine::{Emitter, Stage, StageError};
use philotes_schemas::{
    CatalogType, ColumnSchema, PgType, ReplicaIdentity, TableSchema, TypeResolver, ATTNUMS_SQL, CATALOG_TYPES_SQL,
    PRIMARY_KEY_SQL,
};
use tokio_postgres::{Client, Config};

use crate::decode::{ChangeEvent, Decoded, Relation};
use crate::position::Lsn;
use crate::segment::SegmentEvent;
use crate::op::Op;
use crate::snapshot::window::Windows;
use crate::snapshot::{ChunkDone, ChunkFate, DirectRows, Mailbox, Watermark};
use crate::source::follow::{self, Followed, IcebergName};
use crate::table_id::TableId;
use crate::source::setup;
use crate::store::dead_letters::{DeadLetter, LetterEvent};
use crate::store::schemas::{self as schema_store, SchemaVersionRow};
use crate::store::source_tables::{self, SourceTable};
use crate::store::watermarks;

/// The stage's name in metrics, spans and YAML (`stages.schema_resolve`).
pub const NAME: &str = "schema_resolve";

pub use crate::segment::{EncodedRows, TableVersion};

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
    /// Snapshot rows typed and encoded at once (a chunk whose window saw no change of its table): each an `r`
    /// change, ready for a segment as it is.
    Rows(Box<EncodedRows>),
    /// A change that could not be converted; stored as a dead letter, the pipeline goes on.
    Rejected(DeadLetter),
    /// A snapshot chunk's progress. A chunk is a transaction of its own at its high watermark (Begin, its
    /// `r` changes, this, Commit), so Enqueue writes the progress with the rows and the checkpoint.
    SnapshotDone(Box<ChunkDone>),
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
    /// A change names a relation the stream never described: the stream is broken.
    #[error("a change of relation {0} arrived before its Relation message")]
    UnknownRelation(u32),
    /// The stream sends a table the pipeline cannot place; the capture stops before its position is confirmed.
    #[error("{0}")]
    Unplaced(String),
    /// Used before `start` connected it.
    #[error("schema_resolve: not started")]
    NotStarted,
    /// Binary values were not requested.
    #[error("a binary column value arrived, but the stream was opened in text mode")]
    Binary,
    /// A change could not be written in its segment form (should not happen for our own types).
    #[error("schema_resolve: {0}")]
    Encode(String),
    /// A stored schema version cannot be read.
    #[error("stored schema version of {table} cannot be read: {reason}")]
    StoredVersion {
        /// The table.
        table: String,
        /// Why.
        reason: String,
    },
}

/// SchemaResolve's settings and connections.
pub struct SchemaResolve {
    pipeline: String,
    source_config: Config,
    buffer_config: Config,
    /// Connected in `start`: the source for its type catalog, the buffer for schema versions.
    clients: Option<(Client, Client)>,
    /// The tables followed, by relation OID, with the identity they keep across renames.
    followed: Followed,
    /// Where each identity goes in Iceberg (a table joining `tables: all` must not share another's).
    iceberg_name: IcebergName,
    /// Relation OID → the name its last Relation message carried (a change of it is a rename).
    current: HashMap<u32, TableId>,
    /// Relations sent but not listed, already warned about.
    ignored: HashSet<u32>,
    resolver: TypeResolver,
    carry_unmapped_as_text: bool,
    /// Relation id → the table version of its last Relation message (`None`: a table not captured).
    relations: HashMap<u32, Option<Arc<TableVersion>>>,
    /// (schema, table) → newest version known, from philotes.schemas and this session.
    latest: HashMap<TableId, Arc<TableVersion>>,
    open: Option<Lsn>,
    /// Snapshot chunks read and waiting for their high watermark.
    mailbox: Mailbox,
    /// The keys changed since each chunk's low watermark.
    windows: Windows,
    /// Encoded bytes per row of the last snapshot chunk, to size the next one's buffer once.
    row_bytes: usize,
}

impl SchemaResolve {
    /// A stage for `pipeline` that will connect to the source (type catalog) and the buffer (schema versions).
    pub fn new(
        pipeline: &str,
        source: Config,
        buffer: Config,
        followed: Followed,
        iceberg_name: IcebergName,
        carry_unmapped_as_text: bool,
        mailbox: Mailbox,
    ) -> Self {
        Self {
            pipeline: pipeline.to_string(),
            source_config: source,
            buffer_config: buffer,
            clients: None,
            followed,
            iceberg_name,
            current: HashMap::new(),
            ignored: HashSet::new(),
            resolver: TypeResolver::new(carry_unmapped_as_text),
            carry_unmapped_as_text,
            relations: HashMap::new(),
            latest: HashMap::new(),
            open: None,
            mailbox,
            windows: Windows::default(),
            row_bytes: 256,
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
            let table = TableId::new(row.source_schema, row.source_table);
            let schema: TableSchema = rmp_serde::from_slice(&row.columns)
                .map_err(|e| ResolveError::StoredVersion { table: table.to_string(), reason: e.to_string() })?;
            self.latest.insert(table, Arc::new(TableVersion { schema, version: row.version }));
        }
        Ok(())
    }

    /// The identity a relation's changes are recorded under, `None` for a relation the pipeline does not
    /// capture. A relation it cannot place stops the capture (before its transaction is confirmed).
    async fn place(&mut self, relation: &Relation) -> Result<Option<TableId>, ResolveError> {
        let now = TableId::new(relation.namespace.clone(), relation.name.clone());
        if let Some(identity) = self.followed.tables.get(&relation.id).cloned() {
            if self.current.get(&relation.id) != Some(&now) {
                if now != identity {
                    tracing::warn!(table = %identity, now = %now,
                        "the table was renamed; its changes keep flowing into the same Iceberg table");
                    self.record(relation.id, &identity, &now).await?;
                }
                self.current.insert(relation.id, now);
            }
            return Ok(Some(identity));
        }
        if self.followed.refused.contains(&relation.id) {
            return Ok(None);
        }
        let qualified = now.to_string();
        if !self.followed.all {
            if self.followed.tables.values().any(|identity| *identity == now) {
                return Err(ResolveError::Unplaced(format!(
                    "the stream sends a table named {qualified} (oid {}), but the pipeline follows another table of \
                     that name: it was dropped or renamed and a new one took its name. Restart the pipeline to follow \
                     the table listed now",
                    relation.id
                )));
            }
            if self.ignored.insert(relation.id) {
                tracing::warn!(table = %qualified, "the publication sends a table the pipeline does not list: its changes are ignored");
            }
            return Ok(None);
        }
        if setup::excluded_from_all(&now.schema, &now.name) {
            return Ok(None);
        }
        // A table that joined `tables: all` after start: its identity may already be recorded (by the capture
        // that added it to the publication, under the name it had then).
        let (_, buffer) = self.clients.as_ref().ok_or(ResolveError::NotStarted)?;
        let identity = source_tables::list(buffer, &self.pipeline)
            .await?
            .into_iter()
            .find(|t| t.relid == relation.id)
            .map_or_else(|| now.clone(), |t| TableId::new(t.source_schema, t.source_table));
        if self.followed.tables.values().any(|taken| *taken == identity) {
            return Err(ResolveError::Unplaced(format!(
                "the stream sends a new table {qualified} (oid {}), but another followed table keeps that name since a \
                 rename; rename the new table, or capture it with its own pipeline",
                relation.id
            )));
        }
        follow::check_clashes(self.followed.tables.values().chain(std::iter::once(&identity)), &self.iceberg_name)
            .map_err(|e| ResolveError::Unplaced(e.to_string()))?;
        tracing::info!(table = %qualified, "new table followed");
        self.record(relation.id, &identity, &now).await?;
        self.followed.tables.insert(relation.id, identity.clone());
        self.current.insert(relation.id, now);
        Ok(Some(identity))
    }

    /// Records a followed table's identity and current name (for restarts and `philotes status`).
    async fn record(&self, relid: u32, identity: &TableId, now: &TableId) -> Result<(), ResolveError> {
        let (_, buffer) = self.clients.as_ref().ok_or(ResolveError::NotStarted)?;
        let row = SourceTable {
            relid,
            source_schema: identity.schema.clone(),
            source_table: identity.name.clone(),
            schema_now: now.schema.clone(),
            table_now: now.name.clone(),
            problem: None,
        };
        source_tables::upsert(buffer, &self.pipeline, &row).await?;
        Ok(())
    }

    /// A column type philotes cannot map stops its table only: the values are carried as text into the buffer,
    /// where they wait (flushers skip a stopped table) until the operator chooses.
    async fn stop_table(&self, key: &TableId, unmappable: &mut [philotes_schemas::UnsupportedType]) -> Result<(), ResolveError> {
        let (source, buffer) = self.clients.as_ref().ok_or(ResolveError::NotStarted)?;
        for column in unmappable.iter_mut() {
            if column.type_name.starts_with("oid ") {
                // A type the catalog query does not load (a composite, a range): ask the source for its name.
                let row = source.query_one("SELECT format_type($1, NULL)", &[&column.oid]).await?;
                if let Some(name) = row.get::<_, Option<String>>(0) {
                    column.type_name = name;
                }
            }
        }
        let columns = unmappable
            .iter()
            .map(|c| format!("\"{}\" ({})", c.column, c.type_name))
            .collect::<Vec<_>>()
            .join(", ");
        let reason = format!(
            "column {columns} has a type philotes cannot map to an Iceberg type. The table is stopped; its changes \
             wait in the buffer. Set source.postgres.unmapped_types: text (to write such columns as strings) or \
             change the column's type, then resume the table: philotes resume FILE --table {key}",
        );
        tracing::error!(table = %key, "{reason}");
        watermarks::stop_table(buffer, &self.pipeline, key, &reason).await?;
        Ok(())
    }

    async fn relation(&mut self, relation: &Relation) -> Result<(), ResolveError> {
        let Some(key) = self.place(relation).await? else {
            self.relations.insert(relation.id, None);
            return Ok(());
        };
        let version = self.version_of(key, relation, self.open.unwrap_or(Lsn::ZERO)).await?;
        self.relations.insert(relation.id, Some(version));
        Ok(())
    }

    /// The schema version of `key` that `relation` describes: the newest one when it has the same columns,
    /// otherwise a new one, recorded in `philotes.schemas` at `at`.
    async fn version_of(&mut self, key: TableId, relation: &Relation, at: Lsn) -> Result<Arc<TableVersion>, ResolveError> {
        if relation.columns.iter().any(|c| !self.resolver.knows(c.type_oid)) {
            // A type created after start (a new enum, a domain): read the catalog again.
            self.load_catalog().await?;
        }
        let qualified = key.to_string();
        let mut columns = Vec::with_capacity(relation.columns.len());
        let mut unmappable = Vec::new();
        for c in &relation.columns {
            let pg_type = match self.resolver.resolve(&qualified, &c.name, c.type_oid, c.type_modifier) {
                Ok(pg_type) => pg_type,
                Err(unsupported) => {
                    let type_name = unsupported.type_name.clone();
                    unmappable.push(unsupported);
                    PgType::Unmapped { type_name }
                }
            };
            columns.push(ColumnSchema {
                name: c.name.clone(),
                pg_type,
                type_oid: c.type_oid,
                type_modifier: c.type_modifier,
                part_of_key: c.is_key,
                attnum: None,
            });
        }
        self.number_columns(relation.id, &key, &mut columns).await?;
        if !unmappable.is_empty() {
            self.stop_table(&key, &mut unmappable).await?;
        }
        // Under FULL the key flags mark every column; the primary key says which of them identify a row.
        let primary_key = if relation.replica_identity == ReplicaIdentity::Full {
            let (source, _) = self.clients.as_ref().ok_or(ResolveError::NotStarted)?;
            source.query(PRIMARY_KEY_SQL, &[&relation.id]).await?.iter().map(|r| r.get(0)).collect()
        } else {
            Vec::new()
        };
        let schema = TableSchema {
            schema: key.schema.clone(),
            table: key.name.clone(),
            columns,
            replica_identity: relation.replica_identity,
            primary_key,
            relid: Some(relation.id),
        };
        let version = match self.latest.get(&key) {
            Some(current) if current.schema == schema => current.clone(),
            current => {
                let version = Arc::new(TableVersion { schema, version: current.map_or(1, |c| c.version + 1) });
                let row = SchemaVersionRow {
                    source_schema: key.schema.clone(),
                    source_table: key.name.clone(),
                    version: version.version,
                    columns: rmp_serde::to_vec(&version.schema).map_err(|e| ResolveError::StoredVersion {
                        table: qualified.clone(),
                        reason: e.to_string(),
                    })?,
                    description: describe(&version.schema),
                };
                // Recorded at once (idempotent): a segment must never name a version the buffer does not have.
                let (_, buffer) = self.clients.as_ref().ok_or(ResolveError::NotStarted)?;
                schema_store::insert(buffer, &self.pipeline, &row, at).await?;
                tracing::info!(table = %qualified, version = version.version, columns = %row.description, "new schema version");
                self.latest.insert(key, version.clone());
                version
            }
        };
        Ok(version)
    }

    /// Gives each column of a new Relation message of `key` (relation `relid`) its attnum, which pgoutput does not
    /// send: a column the newest version has under the same name (same relation) keeps that one; another is
    /// looked up by name in the source catalog now (a renamed or added column). The catalog is read as it is now,
    /// not as it was when the message was written: a column renamed twice, or renamed and then dropped, while the
    /// capture was behind gets no attnum, and is then matched by name (a rename read as a drop and an add).
    async fn number_columns(&self, relid: u32, key: &TableId, columns: &mut [ColumnSchema]) -> Result<(), ResolveError> {
        let latest = self.latest.get(key).map(|v| &v.schema).filter(|v| v.relid == Some(relid));
        let mut unknown = false;
        for column in columns.iter_mut() {
            column.attnum = latest.and_then(|v| v.column(&column.name)).and_then(|c| c.attnum);
            unknown |= column.attnum.is_none();
        }
        if unknown {
            let (source, _) = self.clients.as_ref().ok_or(ResolveError::NotStarted)?;
            let catalog: HashMap<String, i16> =
                source.query(ATTNUMS_SQL, &[&relid]).await?.iter().map(|r| (r.get(0), r.get(1))).collect();
            for column in columns.iter_mut().filter(|c| c.attnum.is_none()) {
                column.attnum = catalog.get(&column.name).copied();
            }
        }
        // Two columns can never share an attnum; if the catalog moved on so far that they seem to, trust neither.
        let mut seen = HashMap::new();
        for (i, column) in columns.iter().enumerate() {
            if let Some(attnum) = column.attnum {
                seen.entry(attnum).or_insert_with(Vec::new).push(i);
            }
        }
        for (attnum, at) in seen.into_iter().filter(|(_, at)| at.len() > 1) {
            tracing::warn!(table = %key, attnum, "two columns map to one attribute number; matching them by name");
            for i in at {
                columns[i].attnum = None;
            }
        }
        Ok(())
    }

    /// A snapshot watermark of this pipeline at `lsn`: a low one opens its chunk's window; a high one turns the
    /// chunk the reader left in the mailbox into a transaction of `r` changes at `lsn`, less the rows that
    /// changed inside the window.
    async fn watermark(&mut self, lsn: Lsn, watermark: Watermark, out: &mut Vec<Resolved>) -> Result<(), ResolveError> {
        if !watermark.high {
            self.windows.open(watermark.table(), watermark.lane, watermark.chunk, watermark.key);
            return Ok(());
        }
        // Not in the mailbox: a chunk of an earlier session, or one its reader gave up (it is read again).
        let Some(mut read) = self.mailbox.take(watermark.chunk) else {
            self.windows.close(&watermark.table(), watermark.chunk, &[], Vec::new());
            return Ok(());
        };
        let version = self.version_of(read.table.clone(), &read.relation, lsn).await?;
        let rows = read.rows.len();
        let progress = read.progress(lsn);
        let mut rejected = Vec::new();
        let letter = |change: &ChangeEvent, reason: String| DeadLetter {
            stage: NAME.to_string(),
            table: Some(read.table.clone()),
            commit_lsn: Some(lsn),
            seq: Some(change.seq),
            reason,
            payload: convert::render(change),
            event: letter_event(&version, change),
        };
        let read_change = |seq: usize, row: crate::decode::TupleData| ChangeEvent {
            commit_lsn: lsn,
            xid: 0,
            commit_ts: read.read_at,
            relation_id: read.relation.id,
            op: Op::Read,
            old: None,
            new: Some(row),
            seq: seq as u64,
        };
        let kept = match self.windows.untouched(&read.table, watermark.chunk) {
            None => {
                read.ack.send(ChunkFate::Dropped);
                return Ok(());
            }
            // No change of the table between the watermarks: every row stays, encoded straight from its fields.
            Some(true) => {
                self.windows.close(&read.table, watermark.chunk, &[], Vec::new());
                // Straight into Iceberg, as read: typed while the loader builds its batch, off the stream's path.
                if let Some(direct) = read.direct.take() {
                    direct.hand_over(DirectRows::Read { table: version, rows: read.rows, commit_ts: read.read_at }, progress, read.ack);
                    return Ok(());
                }
                let mut encoded = EncodedRows {
                    table: version.clone(),
                    commit_ts: read.read_at,
                    bytes: Vec::with_capacity(rows * (self.row_bytes + self.row_bytes / 8)),
                    rows: Vec::with_capacity(rows),
                };
                let mut head = SegmentEvent {
                    op: Op::Read,
                    commit_lsn: lsn,
                    seq: 0,
                    xid: 0,
                    commit_ts: read.read_at,
                    old_is_full: None,
                    old: None,
                    new: Some(Vec::new()),
                };
                for (seq, row) in read.rows.into_iter().enumerate() {
                    let start = encoded.bytes.len();
                    head.seq = seq as u64;
                    crate::segment::write_event_head(&mut encoded.bytes, &head).map_err(|e| ResolveError::Encode(e.to_string()))?;
                    match convert::encode_row(&version, &row, &mut encoded.bytes) {
                        Ok(()) => encoded.rows.push((head.position(), encoded.bytes.len())),
                        Err(failure) => {
                            encoded.bytes.truncate(start);
                            match failure {
                                convert::ConvertFailure::Binary => return Err(ResolveError::Binary),
                                convert::ConvertFailure::Value(reason) => rejected.push(letter(&read_change(seq, row), reason)),
                            }
                        }
                    }
                }
                self.row_bytes = encoded.bytes.len().checked_div(encoded.rows.len()).unwrap_or(self.row_bytes).max(16);
                Kept::Encoded(encoded)
            }
            Some(false) => {
                let mut events = Vec::with_capacity(rows);
                for (seq, row) in read.rows.into_iter().enumerate() {
                    let change = read_change(seq, row);
                    match convert::event(&version, &change) {
                        Ok(event) => events.push(event),
                        Err(convert::ConvertFailure::Binary) => return Err(ResolveError::Binary),
                        Err(convert::ConvertFailure::Value(reason)) => rejected.push(letter(&change, reason)),
                    }
                }
                let Some(kept) = self.windows.close(&read.table, watermark.chunk, &version.schema.columns, events) else {
                    read.ack.send(ChunkFate::Dropped);
                    return Ok(());
                };
                if let Some(direct) = read.direct.take() {
                    // Dead letters are stored with the chunk's progress in one buffer transaction, which only the
                    // buffer path has. Not this chunk, though: the lane's chunk before it may still be in flight,
                    // and a lane's progress moves in order. It is read again, through the buffer once nothing of
                    // its lane is in flight.
                    if let Some(letter) = rejected.first() {
                        direct.loader.refuse(&progress.table, &letter.reason);
                        read.ack.send(ChunkFate::Dropped);
                        return Ok(());
                    }
                    direct.hand_over(DirectRows::Typed { table: version.clone(), events: kept }, progress, read.ack);
                    return Ok(());
                }
                Kept::Events(kept)
            }
        };
        out.push(Resolved::Begin { commit_lsn: lsn });
        let rows_enqueued = match kept {
            Kept::Encoded(encoded) => {
                let count = encoded.rows.len() as u64;
                if count > 0 {
                    out.push(Resolved::Rows(Box::new(encoded)));
                }
                count
            }
            Kept::Events(events) => {
                // Sized once: a chunk is tens of thousands of rows, and growing by doubling copies them.
                out.reserve(events.len() + rejected.len() + 3);
                let count = events.len() as u64;
                out.extend(events.into_iter().map(|event| Resolved::Change { table: version.clone(), event }));
                count
            }
        };
        out.extend(rejected.into_iter().map(Resolved::Rejected));
        out.push(Resolved::SnapshotDone(Box::new(ChunkDone {
            progress,
            rows_enqueued,
            ack: read.ack,
        })));
        out.push(Resolved::Commit { commit_lsn: lsn, end_lsn: lsn });
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
                table: Some(TableId::new(table.schema.schema.clone(), table.schema.table.clone())),
                commit_lsn: Some(change.commit_lsn),
                seq: Some(change.seq),
                reason,
                payload: convert::render(change),
                event: letter_event(table, change),
            }),
        }))
    }
}

/// A chunk's rows that stay: encoded at once, or typed (when the window's keys must be matched first).
enum Kept {
    Encoded(EncodedRows),
    Events(Vec<SegmentEvent>),
}

/// The change a dead letter keeps for a retry: raw (as pgoutput sent it) with the version it was decoded with.
fn letter_event(version: &TableVersion, change: &ChangeEvent) -> Option<LetterEvent> {
    let payload = crate::segment::encode(&[convert::raw(change)?]).ok()?;
    Some(LetterEvent { schema_version: version.version, payload, raw: true })
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

/// A lost buffer or source connection restarts the capture from its checkpoint; the rest stops the pipeline.
fn stage_error(error: ResolveError) -> StageError {
    match error {
        ResolveError::Sql(e) => crate::store::stage_error(e, |e| Box::new(ResolveError::Sql(e))),
        other => StageError::fatal(other),
    }
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
                        if self.windows.any() {
                            if let Resolved::Change { table, event } = &change {
                                self.windows.record(&table.schema.schema, &table.schema.table, &table.schema.columns, event);
                            }
                        }
                        resolved.push(change);
                    }
                }
                Decoded::Message { commit_lsn: None, message } => {
                    if let Some(watermark) = Watermark::decode(&message.prefix, &message.content, &self.pipeline) {
                        self.watermark(message.lsn, watermark, &mut resolved).await.map_err(stage_error)?;
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
