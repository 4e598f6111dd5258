//! The snapshot's SQL against the source: a table's shape (columns as pgoutput describes them, its chunk key),
//! the watermarks, the wait for running transactions, and one chunk read with `COPY … TO STDOUT (FORMAT binary)`
//! into pgoutput's tuple form (so SchemaResolve types snapshot rows and streamed rows with the same code).
//!
//! Binary, because it costs the source and us much less than text (no output functions, no text parsing): a
//! column whose type philotes decodes from its binary form ([`has_binary`]) comes as [`ColumnData::Binary`];
//! any other column is selected as its output function's text (`format('%s', c)`, what pgoutput sends) and
//! comes as [`ColumnData::Text`]. The rows' values share the received buffers.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use philotes_schemas::{has_binary, parse_binary, PgType, Value};
use tokio_postgres::{Client, GenericClient};

use super::Watermark;
use crate::decode::{ColumnData, Relation, RelationColumn, ReplicaIdentity, TupleData};
use crate::position::Lsn;
use crate::source::setup::quote_ident;

/// How chunks are cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkKey {
    /// By these unique, non-null columns (the primary key, or the replica identity index): `(name, SQL type)`.
    Columns(Vec<(String, String)>),
    /// By ranges of heap blocks (a table without a primary key, whose replica identity is FULL).
    Ctid,
}

impl ChunkKey {
    /// The names stored in `philotes.snapshots.key_columns`.
    pub fn names(&self) -> Vec<String> {
        match self {
            ChunkKey::Columns(columns) => columns.iter().map(|(name, _)| name.clone()).collect(),
            ChunkKey::Ctid => vec!["ctid".to_string()],
        }
    }
}

/// A table as the snapshot reads it.
#[derive(Debug, Clone)]
pub struct TableShape {
    /// `schema.table` now (quoted), for the queries.
    pub quoted: String,
    /// `r` (table) or `p` (partitioned: read through its root, as its changes arrive).
    pub kind: char,
    /// The description pgoutput would send: published columns in attribute order, key flags per replica identity.
    pub relation: Relation,
    /// How chunks are cut.
    pub chunk_key: ChunkKey,
    /// The columns that identify a row in the table's changes (what a change touched is matched on).
    pub match_key: Vec<String>,
    /// `pg_class.reltuples` (`None`: never analyzed).
    pub estimate: Option<i64>,
    /// Whether the session's user may SELECT the table.
    pub readable: bool,
}

/// Describes the table with OID `relid` (`None`: it no longer exists). Run it in the chunk's transaction, so the
/// description and the rows agree.
pub async fn describe(client: &impl GenericClient, relid: u32) -> Result<Option<TableShape>, tokio_postgres::Error> {
    let Some(table) = client
        .query_opt(
            "SELECT n.nspname, c.relname, c.relkind::text, c.relreplident::text, c.reltuples::float8,
                    has_table_privilege(c.oid, 'SELECT')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[&relid],
        )
        .await?
    else {
        return Ok(None);
    };
    let (schema, name): (String, String) = (table.get(0), table.get(1));
    let kind = table.get::<_, String>(2).chars().next().unwrap_or('r');
    let identity = ReplicaIdentity::from_pgoutput(table.get::<_, String>(3).bytes().next().unwrap_or(b'd'))
        .unwrap_or(ReplicaIdentity::Default);
    let reltuples: f64 = table.get(4);
    // NULL when the table was dropped after the catalog scan found it (the function looks it up again).
    let Some(readable) = table.get::<_, Option<bool>>(5) else { return Ok(None) };
    // Generated columns are not published (PostgreSQL 15): leave them out, as pgoutput does.
    let columns = client
        .query(
            "SELECT a.attname, a.atttypid, a.atttypmod, format_type(a.atttypid, a.atttypmod),
                    coalesce((SELECT o FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY u(k, o)
                              WHERE i.indrelid = a.attrelid AND i.indisprimary AND u.k = a.attnum), 0)::int4,
                    coalesce((SELECT o FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY u(k, o)
                              WHERE i.indrelid = a.attrelid AND i.indisreplident AND u.k = a.attnum), 0)::int4
             FROM pg_attribute a
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
             ORDER BY a.attnum",
            &[&relid],
        )
        .await?;
    // Outside a transaction the two queries see two moments, and a table dropped between them would look keyless.
    // Still there after its columns were read, it was there for both.
    if client.query_opt("SELECT 1 FROM pg_class WHERE oid = $1", &[&relid]).await?.is_none() {
        return Ok(None);
    }
    let key_of = |position: usize| -> Vec<(i32, String, String)> {
        let mut key: Vec<(i32, String, String)> = columns
            .iter()
            .filter(|c| c.get::<_, i32>(position) > 0)
            .map(|c| (c.get::<_, i32>(position), c.get::<_, String>(0), c.get::<_, String>(3)))
            .collect();
        key.sort();
        key
    };
    let primary = key_of(4);
    let identity_index = key_of(5);
    let flagged = |name: &str| match identity {
        ReplicaIdentity::Full => true,
        ReplicaIdentity::Default => primary.iter().any(|(_, n, _)| n == name),
        ReplicaIdentity::Index => identity_index.iter().any(|(_, n, _)| n == name),
        ReplicaIdentity::Nothing => false,
    };
    let relation = Relation {
        id: relid,
        namespace: schema.clone(),
        name: name.clone(),
        replica_identity: identity,
        columns: columns
            .iter()
            .map(|c| RelationColumn {
                is_key: flagged(c.get(0)),
                name: c.get(0),
                type_oid: c.get(1),
                type_modifier: c.get(2),
            })
            .collect(),
    };
    let names = |key: &[(i32, String, String)]| key.iter().map(|(_, n, _)| n.clone()).collect::<Vec<_>>();
    // What identifies a row in the changes: the primary key where every change carries it (identity default or
    // full), the identity index's columns, or the whole row (identity full without a key).
    let match_key = match identity {
        ReplicaIdentity::Default | ReplicaIdentity::Full if !primary.is_empty() => names(&primary),
        ReplicaIdentity::Index => names(&identity_index),
        ReplicaIdentity::Full => relation.columns.iter().map(|c| c.name.clone()).collect(),
        _ => Vec::new(),
    };
    let ordered = if !primary.is_empty() { &primary } else { &identity_index };
    let chunk_key = if ordered.is_empty() {
        ChunkKey::Ctid
    } else {
        ChunkKey::Columns(ordered.iter().map(|(_, n, t)| (n.clone(), t.clone())).collect())
    };
    Ok(Some(TableShape {
        quoted: format!("{}.{}", quote_ident(&schema), quote_ident(&name)),
        kind,
        relation,
        chunk_key,
        match_key,
        estimate: (reltuples >= 0.0).then_some(reltuples as i64),
        readable,
    }))
}

/// An SQL string literal (`standard_conforming_strings` is on in every supported server).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Where a chunk of a key-ordered table starts and what it may not pass (its lane).
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyRange<'a> {
    /// The previous chunk's upper key (the whole key, text form); `None` for the lane's first chunk.
    pub after: Option<&'a [String]>,
    /// The lane starts after this value of the leading key column (`None`: the table's start).
    pub lower: Option<&'a str>,
    /// The lane ends at this value of the leading key column, inclusive (`None`: the table's end).
    pub upper: Option<&'a str>,
}

/// The COPY statement of a chunk: for a key-ordered table the `rows` first rows of `range`, for
/// [`ChunkKey::Ctid`] the heap blocks `blocks` (`None` as the end: to the table's end).
/// The key columns' text forms follow the table's columns in each row (see [`copy_rows`]).
pub fn chunk_copy(shape: &TableShape, range: KeyRange<'_>, rows: usize, blocks: Option<(u64, Option<u64>)>) -> String {
    let as_text = |name: &str| {
        let name = quote_ident(name);
        format!("CASE WHEN {name} IS NULL THEN NULL ELSE format('%s', {name}) END")
    };
    let mut columns: Vec<String> = shape
        .relation
        .columns
        .iter()
        .zip(binary_columns(&shape.relation))
        .map(|(c, binary)| if binary { quote_ident(&c.name) } else { as_text(&c.name) })
        .collect();
    columns.extend(key_sources(shape).into_iter().filter_map(|source| match source {
        KeySource::Printed(name) => Some(format!("format('%s', {})", quote_ident(&name))),
        KeySource::Column(..) => None,
    }));
    let columns = columns.join(", ");
    let only = if shape.kind == 'p' { "" } else { "ONLY " };
    let select = match &shape.chunk_key {
        ChunkKey::Columns(key) => {
            let names = key.iter().map(|(n, _)| quote_ident(n)).collect::<Vec<_>>().join(", ");
            let (lead, lead_type) = (quote_ident(&key[0].0), &key[0].1);
            let mut filters = Vec::new();
            match range.after {
                Some(values) if values.len() == key.len() => {
                    let values = key
                        .iter()
                        .zip(values)
                        .map(|((_, sql_type), value)| format!("{}::{sql_type}", literal(value)))
                        .collect::<Vec<_>>()
                        .join(", ");
                    filters.push(format!("({names}) > ({values})"));
                }
                _ => {
                    if let Some(lower) = range.lower {
                        filters.push(format!("{lead} > {}::{lead_type}", literal(lower)));
                    }
                }
            }
            if let Some(upper) = range.upper {
                filters.push(format!("{lead} <= {}::{lead_type}", literal(upper)));
            }
            let filter = if filters.is_empty() { String::new() } else { format!(" WHERE {}", filters.join(" AND ")) };
            format!("SELECT {columns} FROM {only}{}{filter} ORDER BY {names} LIMIT {rows}", shape.quoted)
        }
        ChunkKey::Ctid => {
            let (from, to) = blocks.unwrap_or((0, None));
            let upper = to.map(|to| format!(" AND ctid < '({to},0)'::tid")).unwrap_or_default();
            format!("SELECT {columns} FROM {only}{} WHERE ctid >= '({from},0)'::tid{upper}", shape.quoted)
        }
    };
    format!("COPY ({select}) TO STDOUT (FORMAT binary)")
}

/// Where the text form of a key column (for the next chunk's `WHERE`) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeySource {
    /// Rendered from the binary value of the row's column at this index (integers, text types, uuid: their
    /// text is what Postgres prints).
    Column(usize, PgType),
    /// Printed by the source: a `format('%s', k)` field after the row's columns.
    Printed(String),
}

/// The chunk key's columns, each with where its text comes from (none for [`ChunkKey::Ctid`]).
fn key_sources(shape: &TableShape) -> Vec<KeySource> {
    let ChunkKey::Columns(key) = &shape.chunk_key else { return Vec::new() };
    let binary = binary_columns(&shape.relation);
    key.iter()
        .map(|(name, _)| {
            let index = shape.relation.columns.iter().position(|c| &c.name == name);
            let rendered = index.and_then(|i| {
                let column = &shape.relation.columns[i];
                let pg_type = PgType::from_builtin(column.type_oid, column.type_modifier)?;
                let simple = matches!(pg_type, PgType::Int2 | PgType::Int4 | PgType::Int8 | PgType::Text | PgType::Varchar(_) | PgType::Name | PgType::Uuid);
                (binary[i] && simple).then_some(KeySource::Column(i, pg_type))
            });
            rendered.unwrap_or_else(|| KeySource::Printed(name.clone()))
        })
        .collect()
}

/// The text Postgres prints for a binary value of a [`KeySource::Column`] type.
fn key_text(pg_type: &PgType, bytes: &[u8]) -> Option<String> {
    Some(match parse_binary(pg_type, bytes).ok()? {
        Value::Int16(v) => v.to_string(),
        Value::Int32(v) => v.to_string(),
        Value::Int64(v) => v.to_string(),
        Value::Text(text) => text,
        Value::Uuid(v) => uuid::Uuid::from_bytes(v).hyphenated().to_string(),
        _ => return None,
    })
}

/// Which columns of `relation` are read in binary (in order): those of a built-in type with a binary decoder.
pub fn binary_columns(relation: &Relation) -> Vec<bool> {
    relation
        .columns
        .iter()
        .map(|c| PgType::from_builtin(c.type_oid, c.type_modifier).is_some_and(|t| has_binary(&t)))
        .collect()
}

/// The table's rows, counted up to `limit` (a bounded count for a table without an estimate).
pub async fn rows_up_to(client: &Client, shape: &TableShape, limit: i64) -> Result<i64, tokio_postgres::Error> {
    let only = if shape.kind == 'p' { "" } else { "ONLY " };
    let sql = format!("SELECT count(*) FROM (SELECT FROM {only}{} LIMIT {limit}) s", shape.quoted);
    Ok(client.query_one(&sql, &[]).await?.get(0))
}

/// Where to cut a table into `lanes` ranges read at once: ascending values of the leading key column (from its
/// minimum and maximum for integer keys, from its `pg_stats` histogram otherwise), or heap blocks for
/// [`ChunkKey::Ctid`]. Fewer (none: one lane) when the table gives nothing to cut on.
pub async fn split_points(client: &Client, shape: &TableShape, lanes: usize) -> Result<Vec<String>, tokio_postgres::Error> {
    if lanes < 2 {
        return Ok(Vec::new());
    }
    let cut = |low: i128, high: i128| -> Vec<String> {
        let mut points: Vec<i128> = (1..lanes as i128).map(|i| low + (high - low) * i / lanes as i128).filter(|p| *p >= low && *p < high).collect();
        points.dedup();
        points.iter().map(i128::to_string).collect()
    };
    let ChunkKey::Columns(key) = &shape.chunk_key else {
        return Ok(cut(0, i128::from(blocks(client, shape.relation.id).await?)));
    };
    let (lead, lead_type) = &key[0];
    let only = if shape.kind == 'p' { "" } else { "ONLY " };
    if matches!(lead_type.as_str(), "bigint" | "integer" | "smallint") {
        let column = quote_ident(lead);
        let row = client
            .query_one(&format!("SELECT min({column})::int8, max({column})::int8 FROM {only}{}", shape.quoted), &[])
            .await?;
        return Ok(match (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1)) {
            (Some(low), Some(high)) => cut(i128::from(low), i128::from(high)),
            _ => Vec::new(),
        });
    }
    let bounds: Vec<String> = client
        .query(
            "SELECT u.b FROM pg_stats s, unnest(s.histogram_bounds::text::text[]) WITH ORDINALITY AS u(b, i)
             WHERE s.schemaname = $1 AND s.tablename = $2 AND s.attname = $3 AND s.inherited = $4 ORDER BY u.i",
            &[&shape.relation.namespace, &shape.relation.name, lead, &(shape.kind == 'p')],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut points: Vec<String> = (1..lanes).filter_map(|i| bounds.get(bounds.len() * i / lanes).cloned()).collect();
    points.dedup();
    Ok(points)
}

/// The table's size in heap blocks now.
pub async fn blocks(client: &impl GenericClient, relid: u32) -> Result<u64, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT (pg_relation_size($1::oid) / current_setting('block_size')::int8)::int8", &[&relid])
        .await?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

/// A chunk's COPY stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The query failed.
    #[error(transparent)]
    Sql(#[from] tokio_postgres::Error),
    /// The stream is not the binary COPY format we asked for.
    #[error("the binary COPY stream is malformed: {0}")]
    Format(String),
}

/// A chunk as read: its rows, and the text form of the last row's key (where the next chunk starts).
#[derive(Debug, Default)]
pub struct ChunkRows {
    /// The rows, one value per column of the table's relation.
    pub rows: Vec<TupleData>,
    /// The last row's key values, as their output functions print them (`None`: no row, or a ctid chunk).
    pub last_key: Option<Vec<String>>,
}

/// Reads one chunk: runs `copy` (from [`chunk_copy`] of `shape`) and parses its binary rows into pgoutput
/// tuples whose values share the received buffers.
pub async fn copy_rows(client: &tokio_postgres::Transaction<'_>, shape: &TableShape, copy: &str) -> Result<ChunkRows, CopyError> {
    let stream = client.copy_out(copy).await?;
    futures::pin_mut!(stream);
    let sources = key_sources(shape);
    let printed = sources.iter().filter(|s| matches!(s, KeySource::Printed(_))).count();
    let mut parser = BinaryCopy::new(binary_columns(&shape.relation), printed);
    while let Some(data) = stream.next().await {
        parser.feed(data?).map_err(CopyError::Format)?;
    }
    let (rows, printed) = parser.finish().map_err(CopyError::Format)?;
    let Some(last) = rows.last().filter(|_| !sources.is_empty()) else { return Ok(ChunkRows { rows, last_key: None }) };
    let mut printed = printed.unwrap_or_default().into_iter();
    let last_key = sources
        .iter()
        .map(|source| match source {
            KeySource::Printed(_) => printed.next(),
            KeySource::Column(index, pg_type) => match last.get(*index) {
                Some(ColumnData::Binary(bytes)) => key_text(pg_type, bytes),
                _ => None,
            },
        })
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| CopyError::Format("the last row's key could not be read".into()))?;
    Ok(ChunkRows { rows, last_key: Some(last_key) })
}

/// The signature that opens a binary COPY stream.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Parses a binary COPY stream message by message: header, then per row a field count and per field a length
/// (-1: NULL) and its bytes, then -1. A message usually holds whole rows, which are sliced without a copy; a
/// row cut across messages is joined first.
#[derive(Debug)]
struct BinaryCopy {
    /// Per table column: read in binary (else as text).
    binary: Vec<bool>,
    /// Trailing text fields per row: the key's text forms.
    key_fields: usize,
    /// Bytes of a row not complete yet.
    pending: Bytes,
    header_done: bool,
    ended: bool,
    /// The rows so far.
    rows: Vec<TupleData>,
    /// The last row's key fields (length-prefixed, as in the stream).
    last_key: Option<Bytes>,
}

fn be_i16(bytes: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn be_i32(bytes: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

impl BinaryCopy {
    fn new(binary: Vec<bool>, key_fields: usize) -> Self {
        Self { binary, key_fields, pending: Bytes::new(), header_done: false, ended: false, rows: Vec::new(), last_key: None }
    }

    fn feed(&mut self, data: Bytes) -> Result<(), String> {
        let buf = if self.pending.is_empty() {
            data
        } else {
            let mut joined = BytesMut::with_capacity(self.pending.len() + data.len());
            joined.extend_from_slice(&self.pending);
            joined.extend_from_slice(&data);
            joined.freeze()
        };
        let mut at = 0;
        if !self.header_done {
            let Some(extension) = be_i32(&buf, SIGNATURE.len() + 4) else {
                self.pending = buf;
                return Ok(());
            };
            if !buf.starts_with(SIGNATURE) {
                return Err("no PGCOPY signature".into());
            }
            at = SIGNATURE.len() + 8 + usize::try_from(extension).map_err(|_| "negative header extension length")?;
            if buf.len() < at {
                self.pending = buf;
                return Ok(());
            }
            self.header_done = true;
        }
        let fields = self.binary.len() + self.key_fields;
        while !self.ended {
            let Some(count) = be_i16(&buf, at) else { break };
            if count == -1 {
                self.ended = true;
                at += 2;
                break;
            }
            if usize::try_from(count).ok() != Some(fields) {
                return Err(format!("a row has {count} fields, expected {fields}"));
            }
            // Is the row complete in this buffer? (Lengths only; the values are sliced below.)
            let mut end = at + 2;
            let mut complete = true;
            for _ in 0..fields {
                let Some(length) = be_i32(&buf, end) else {
                    complete = false;
                    break;
                };
                end += 4 + usize::try_from(length).unwrap_or(0);
                if end > buf.len() {
                    complete = false;
                    break;
                }
            }
            if !complete {
                break;
            }
            let mut row = Vec::with_capacity(self.binary.len());
            let mut field = at + 2;
            for binary in &self.binary {
                let length = be_i32(&buf, field).unwrap_or(-1);
                field += 4;
                row.push(match usize::try_from(length) {
                    Err(_) => ColumnData::Null,
                    Ok(length) => {
                        let bytes = buf.slice(field..field + length);
                        field += length;
                        if *binary {
                            ColumnData::Binary(bytes)
                        } else {
                            ColumnData::Text(bytes)
                        }
                    }
                });
            }
            self.rows.push(row);
            if self.key_fields > 0 {
                self.last_key = Some(buf.slice(field..end));
            }
            at = end;
        }
        self.pending = buf.slice(at..);
        Ok(())
    }

    /// The rows, and the last row's printed key fields.
    fn finish(self) -> Result<(Vec<TupleData>, Option<Vec<String>>), String> {
        if !self.ended || !self.pending.is_empty() {
            return Err("the stream ended inside a row or without its trailer".into());
        }
        let last_key = self.last_key.map(|fields| {
            let mut at = 0;
            (0..self.key_fields)
                .map(|_| {
                    let length = usize::try_from(be_i32(&fields, at).unwrap_or(0)).unwrap_or(0);
                    at += 4 + length;
                    String::from_utf8_lossy(fields.get(at - length..at).unwrap_or_default()).into_owned()
                })
                .collect()
        });
        Ok((self.rows, last_key))
    }
}

/// Writes a watermark into the WAL (not transactional: it takes its place in the stream at once); returns its LSN.
pub async fn emit(client: &Client, watermark: &Watermark) -> Result<Lsn, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT pg_logical_emit_message(false, $1, $2::bytea)::text",
            &[&super::MESSAGE_PREFIX, &watermark.encode()],
        )
        .await?;
    Ok(row.get::<_, String>(0).parse().unwrap_or(Lsn::ZERO))
}

/// The transactions running now (every xid that a snapshot taken now does not see, up to a new xid of ours):
/// after a low watermark, these are the ones whose commit record may precede it while they are not yet visible.
/// philotes' own sessions (application name `philotes…`: the buffer's and the catalog's transactions when they
/// share the source database, a flusher's lease held for seconds) never write a captured table: left out.
pub async fn running_transactions(client: &Client) -> Result<Vec<i64>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT pg_current_xact_id()::text::int8, pg_snapshot_xmax(pg_current_snapshot())::text::int8,
                    array(SELECT x::text::int8 FROM pg_snapshot_xip(pg_current_snapshot()) x),
                    array(SELECT backend_xid::text::int8 FROM pg_stat_activity
                          WHERE backend_xid IS NOT NULL AND application_name LIKE 'philotes%')",
            &[],
        )
        .await?;
    let (ours, xmax, mut running, own): (i64, i64, Vec<i64>, Vec<i64>) = (row.get(0), row.get(1), row.get(2), row.get(3));
    running.extend(xmax..ours);
    // pg_stat_activity shows 32-bit xids; the snapshot's are 64-bit (epoch in the high half).
    running.retain(|x| *x != ours && !own.contains(&(x & 0xFFFF_FFFF)));
    Ok(running)
}

/// How many of `xids` are still running (neither visible to a new snapshot nor aborted).
pub async fn still_running(client: &Client, xids: &[i64]) -> Result<i64, tokio_postgres::Error> {
    if xids.is_empty() {
        return Ok(0);
    }
    let row = client
        .query_one(
            "SELECT count(*) FROM unnest($1::int8[]) x
             WHERE NOT pg_visible_in_snapshot(x::text::xid8, pg_current_snapshot())
               AND pg_xact_status(x::text::xid8) IS DISTINCT FROM 'aborted'",
            &[&xids],
        )
        .await?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary COPY stream of `rows` (fields: `None` = NULL).
    fn stream(rows: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&4i32.to_be_bytes());
        out.extend_from_slice(b"ext!");
        for row in rows {
            out.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for field in row {
                match field {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(bytes) => {
                        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                        out.extend_from_slice(bytes);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    #[test]
    fn binary_rows_parse_whatever_the_message_boundaries() {
        let rows = vec![
            vec![Some(&[0u8, 0, 0, 7][..]), None, Some(&b"a\tb"[..]), Some(&b"7"[..])],
            vec![Some(&[0u8, 0, 0, 9][..]), Some(&b""[..]), None, Some(&b"9"[..])],
        ];
        let bytes = stream(&rows);
        // Every way of cutting the stream in two, and one byte per message.
        let cuts: Vec<Vec<usize>> = (0..=bytes.len()).map(|cut| vec![cut]).chain([(1..bytes.len()).collect()]).collect();
        for cut in cuts {
            let mut parser = BinaryCopy::new(vec![true, false, false], 1);
            let mut from = 0;
            for to in cut.into_iter().chain([bytes.len()]) {
                parser.feed(Bytes::copy_from_slice(&bytes[from..to])).expect("feed");
                from = to;
            }
            let (rows, last_key) = parser.finish().expect("complete");
            assert_eq!(
                rows,
                vec![
                    vec![ColumnData::Binary(Bytes::from_static(&[0, 0, 0, 7])), ColumnData::Null, ColumnData::Text(Bytes::from_static(b"a\tb"))],
                    vec![ColumnData::Binary(Bytes::from_static(&[0, 0, 0, 9])), ColumnData::Text(Bytes::new()), ColumnData::Null],
                ]
            );
            assert_eq!(last_key, Some(vec!["9".to_string()]));
        }
    }

    #[test]
    fn a_malformed_or_cut_binary_stream_is_an_error() {
        let mut parser = BinaryCopy::new(vec![true], 0);
        assert!(parser.feed(Bytes::from_static(b"NOTCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0")).is_err(), "no signature");
        let bytes = stream(&[vec![Some(&b"x"[..]), Some(&b"y"[..])]]);
        let mut parser = BinaryCopy::new(vec![true], 0);
        assert!(parser.feed(Bytes::from(bytes)).is_err(), "field count");
        let bytes = stream(&[vec![Some(&b"x"[..])]]);
        let mut parser = BinaryCopy::new(vec![true], 0);
        parser.feed(Bytes::copy_from_slice(&bytes[..bytes.len() - 3])).expect("a partial row waits");
        assert!(parser.finish().is_err(), "cut inside");
    }

    #[test]
    fn chunk_statements_start_after_the_last_key_in_key_order() {
        let shape = TableShape {
            quoted: "\"public\".\"t\"".into(),
            kind: 'r',
            relation: Relation {
                id: 1,
                namespace: "public".into(),
                name: "t".into(),
                replica_identity: ReplicaIdentity::Default,
                columns: vec![
                    RelationColumn { is_key: true, name: "a".into(), type_oid: 23, type_modifier: -1 },
                    RelationColumn { is_key: true, name: "b".into(), type_oid: 25, type_modifier: -1 },
                    RelationColumn { is_key: false, name: "c".into(), type_oid: 1007, type_modifier: -1 },
                ],
            },
            chunk_key: ChunkKey::Columns(vec![("a".into(), "integer".into()), ("b".into(), "text".into())]),
            match_key: vec!["a".into(), "b".into()],
            estimate: None,
            readable: true,
        };
        assert_eq!(binary_columns(&shape.relation), vec![true, true, false], "int4 and text in binary, int4[] as text");
        // The key's text is rendered from its binary values (int4, text): nothing printed after the columns.
        assert_eq!(key_sources(&shape), vec![KeySource::Column(0, PgType::Int4), KeySource::Column(1, PgType::Text)]);
        let select = "SELECT \"a\", \"b\", CASE WHEN \"c\" IS NULL THEN NULL ELSE format('%s', \"c\") END \
                      FROM ONLY \"public\".\"t\"";
        assert_eq!(
            chunk_copy(&shape, KeyRange::default(), 10, None),
            format!("COPY ({select} ORDER BY \"a\", \"b\" LIMIT 10) TO STDOUT (FORMAT binary)")
        );
        assert_eq!(
            chunk_copy(&shape, KeyRange { after: Some(&["3".into(), "it's".into()]), ..KeyRange::default() }, 10, None),
            format!(
                "COPY ({select} WHERE (\"a\", \"b\") > ('3'::integer, 'it''s'::text) ORDER BY \"a\", \"b\" LIMIT 10) \
                 TO STDOUT (FORMAT binary)"
            )
        );
        assert_eq!(
            chunk_copy(&shape, KeyRange { after: None, lower: Some("3"), upper: Some("9") }, 10, None),
            format!(
                "COPY ({select} WHERE \"a\" > '3'::integer AND \"a\" <= '9'::integer ORDER BY \"a\", \"b\" LIMIT 10) \
                 TO STDOUT (FORMAT binary)"
            )
        );
        assert_eq!(
            chunk_copy(&shape, KeyRange { after: Some(&["4".into(), "x".into()]), lower: Some("3"), upper: Some("9") }, 10, None),
            format!(
                "COPY ({select} WHERE (\"a\", \"b\") > ('4'::integer, 'x'::text) AND \"a\" <= '9'::integer \
                 ORDER BY \"a\", \"b\" LIMIT 10) TO STDOUT (FORMAT binary)"
            )
        );
        // A key whose text only the source prints (timestamptz) follows the columns.
        let mut printed = shape.clone();
        printed.relation.columns[0].type_oid = 1184;
        printed.chunk_key = ChunkKey::Columns(vec![("a".into(), "timestamp with time zone".into()), ("b".into(), "text".into())]);
        assert!(chunk_copy(&printed, KeyRange::default(), 10, None).contains("END, format('%s', \"a\") FROM ONLY"));
        let ctid = TableShape { chunk_key: ChunkKey::Ctid, ..shape };
        assert_eq!(
            chunk_copy(&ctid, KeyRange::default(), 10, Some((8, Some(16)))),
            "COPY (SELECT \"a\", \"b\", CASE WHEN \"c\" IS NULL THEN NULL ELSE format('%s', \"c\") END FROM ONLY \"public\".\"t\" \
             WHERE ctid >= '(8,0)'::tid AND ctid < '(16,0)'::tid) TO STDOUT (FORMAT binary)"
        );
    }

    #[test]
    fn key_values_render_as_postgres_prints_them() {
        assert_eq!(key_text(&PgType::Int8, &(-42i64).to_be_bytes()), Some("-42".into()));
        assert_eq!(key_text(&PgType::Int2, &7i16.to_be_bytes()), Some("7".into()));
        assert_eq!(key_text(&PgType::Int4, &[0, 0]), None, "wrong width");
        let uuid = [0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11];
        assert_eq!(key_text(&PgType::Uuid, &uuid), Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()));
        assert_eq!(key_text(&PgType::Text, "it's é".as_bytes()), Some("it's é".into()));
    }
}
