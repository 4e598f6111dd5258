//! Segment events → one `RecordBatch` in the table's current Iceberg schema (the changelog row rules of the
//! module docs): projection of each schema version by column name, unchanged-TOAST filling, rejected rows.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::Schema as ArrowSchema;
use arrow::record_batch::RecordBatch;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::Schema;
use philotes_schemas::{TableSchema, Value};

use super::values::{convert, convert_ref, Builder, Cell, Kind};
use super::{BatchOutput, RejectedRow};
use crate::changelog::{check_column, type_name, SchemaError, CHANGELOG_COLUMNS, COMMIT_TS, LSN, OP, SEQ,
    UNCHANGED, XID,
};
use crate::op::Op;
use crate::segment::{self, FieldValue, SegmentEvent, ValueRef};

/// Longest rendering of one value in a rejected row (a megabyte of JSON helps nobody in a dead letter).
const RENDERED_VALUE_CHARS: usize = 80;

/// One record batch in `target` (the table's current Iceberg schema; the Arrow schema is
/// `iceberg::arrow::schema_to_arrow_schema(target)`, so field ids match), from consecutive segments of one
/// table, each with the schema version its rows were written with, in position order.
///
/// Columns are matched by name: a target column the row's version lacks is NULL; a version column the target
/// lacks is [`SchemaError::ColumnNotInTarget`] (evolve the table first, `crate::catalog::evolve`, and name the
/// version's columns as the table does); a version column whose type the target column cannot hold is the error
/// the evolution would give.
pub fn build_batch<E: AsRef<[SegmentEvent]>>(
    target: &Schema,
    segments: &[(Arc<TableSchema>, E)],
) -> Result<BatchOutput, SchemaError> {
    let rows = segments.iter().map(|(_, events)| events.as_ref().len()).sum();
    let mut builder = BatchBuilder::new(target, rows, segments)?;
    builder.append(target, segments)?;
    builder.finish()
}

/// Whether a change carries an unchanged TOAST value (which an earlier image in the batch may fill).
pub fn has_unchanged(event: &SegmentEvent) -> bool {
    [&event.old, &event.new]
        .into_iter()
        .flatten()
        .any(|row| row.iter().any(|v| matches!(v, Value::Unchanged)))
}

/// A record batch built from segments given a few at a time, so a caller can decode one segment, append it
/// and drop it while its values are still in the CPU's cache. Unchanged TOAST values are filled from earlier
/// images within one [`BatchBuilder::append`] call only: a caller with such values appends them all at once
/// (as [`build_batch`] does).
pub struct BatchBuilder {
    arrow_schema: Arc<ArrowSchema>,
    layout: Layout,
    builders: Vec<Builder>,
    rejected: Vec<RejectedRow>,
    /// Mirror mode: an update with an old image is not this builder's to take from a payload (it must be split,
    /// [`crate::mirror::split_updates`]).
    mirror: bool,
}

impl BatchBuilder {
    /// Builders for `rows` rows in `target`; the bytes of string and binary values are estimated from
    /// `sample` (some of the batch's segments), scaled to `rows`, so the builders rarely grow by copying.
    pub fn new<E: AsRef<[SegmentEvent]>>(
        target: &Schema,
        rows: usize,
        sample: &[(Arc<TableSchema>, E)],
    ) -> Result<Self, SchemaError> {
        let arrow_schema = Arc::new(schema_to_arrow_schema(target)?);
        let layout = Layout::new(target, &arrow_schema)?;
        let mut bytes = vec![0usize; layout.kinds.len()];
        let mut sampled = 0usize;
        for (version, events) in sample {
            // A version the target cannot take fails in `append`, with its error.
            let Ok(plan) = Plan::new(version, target, &layout) else { break };
            for event in events.as_ref() {
                sampled += 1;
                let image = event.new.as_deref().or(event.old.as_deref()).unwrap_or_default();
                add_bytes(&mut bytes, &plan, image.iter().filter_map(ValueRef::of));
            }
        }
        Self::sized(arrow_schema, layout, rows, bytes, sampled)
    }

    /// As [`BatchBuilder::new`], the bytes estimated from one segment's payload (written with `version`).
    pub fn from_payload(
        target: &Schema,
        rows: usize,
        version: &TableSchema,
        payload: &[u8],
    ) -> Result<Self, SchemaError> {
        let arrow_schema = Arc::new(schema_to_arrow_schema(target)?);
        let layout = Layout::new(target, &arrow_schema)?;
        let mut bytes = vec![0usize; layout.kinds.len()];
        let mut sampled = 0usize;
        if let Ok(plan) = Plan::new(version, target, &layout) {
            // A payload this cannot read leaves the estimate at what was read (a guess either way).
            let _ = segment::read_events(payload, |event| {
                sampled += 1;
                add_bytes(&mut bytes, &plan, event.new.or(event.old).unwrap_or_default().iter().copied());
                true
            });
        }
        Self::sized(arrow_schema, layout, rows, bytes, sampled)
    }

    fn sized(
        arrow_schema: Arc<ArrowSchema>,
        layout: Layout,
        rows: usize,
        mut bytes: Vec<usize>,
        sampled: usize,
    ) -> Result<Self, SchemaError> {
        if sampled > 0 && sampled < rows {
            // A little room above the estimate: a builder that must grow copies what it holds.
            for b in &mut bytes {
                *b = (*b as f64 * rows as f64 / sampled as f64 * 1.05) as usize;
            }
        }
        bytes[layout.op] = rows;
        let builders = arrow_schema
            .fields()
            .iter()
            .zip(&bytes)
            .map(|(f, &bytes)| Builder::new(f.data_type(), rows, bytes))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { arrow_schema, layout, builders, rejected: Vec::new(), mirror: false })
    }

    /// For a mirror table's flush: [`BatchBuilder::append_payload`] leaves updates with an old image to the
    /// general path, which the caller gives split updates.
    pub fn mirror(mut self, mirror: bool) -> Self {
        self.mirror = mirror;
        self
    }

    /// Appends the changes of one segment straight from its payload, without owned values. `Ok(false)` when
    /// this path cannot take the segment: an unchanged TOAST value (an earlier image may fill it), an interval
    /// or array, a change that is to be rejected, a payload in another form. Rows may then be half appended:
    /// the caller throws this builder away and builds the slice with [`build_batch`], which gives the same
    /// rows for every segment this path takes.
    pub fn append_payload(
        &mut self,
        target: &Schema,
        version: &TableSchema,
        payload: &[u8],
    ) -> Result<bool, SchemaError> {
        let plan = Plan::new(version, target, &self.layout)?;
        let (layout, builders) = (&self.layout, &mut self.builders);
        let columns = version.columns.len();
        let mirror = self.mirror;
        let mut cells = vec![Cell::Null; layout.kinds.len()];
        let mut usable = true;
        let mut failure = None;
        let read = segment::read_events(payload, |event| {
            let taken = match event.op {
                Op::Insert | Op::Update | Op::Read => event.new.map(|image| (event.op, image)),
                Op::Delete => event.old.map(|image| (Op::Delete, image)),
                Op::Truncate => Some((Op::Truncate, &[][..])),
            };
            let unchanged = [event.old, event.new].into_iter().flatten().flatten().any(|v| *v == ValueRef::Unchanged);
            let split = mirror && event.op == Op::Update && event.old.is_some();
            let (Some((op, image)), false, false) = (taken, unchanged, split) else {
                usable = false;
                return false;
            };
            if op != Op::Truncate && image.len() != columns {
                usable = false;
                return false;
            }
            let key_only = op == Op::Delete && event.old_is_full != Some(true);
            let known = known_cells(&plan, op, key_only, image, &mut cells, |value, _, i| {
                convert_ref(*value, &layout.kinds[i])
            });
            let position = (event.commit_lsn.as_u64(), event.seq);
            if known.is_err() || changelog_cells(layout, &mut cells, op, position, event.commit_ts, event.xid).is_err() {
                usable = false;
                return false;
            }
            cells[layout.unchanged] = Cell::Null;
            for (builder, cell) in builders.iter_mut().zip(&cells) {
                if let Err(e) = builder.append(cell) {
                    failure = Some(e);
                    return false;
                }
            }
            true
        });
        if let Some(e) = failure {
            return Err(e.into());
        }
        Ok(read.is_some() && usable)
    }

    /// Appends a snapshot chunk's rows as `r` changes at `lsn` (`_seq` = the row's index), straight from the rows
    /// as read: `typed` gives each row's values in the version's column order, borrowed from the read where it
    /// can (text and bytes), so no segment is encoded and decoded on the way. `Ok(Err(reason))`: a row cannot be
    /// typed or written here (the caller sends the chunk down the path that stores dead letters); rows may then
    /// be half appended, and the builder is to be thrown away.
    pub fn append_reads<'r, R>(
        &mut self,
        target: &Schema,
        version: &TableSchema,
        rows: &'r [R],
        lsn: u64,
        commit_ts: i64,
        mut typed: impl FnMut(&'r R, &mut Vec<FieldValue<'r>>) -> Result<(), String>,
    ) -> Result<Result<(), String>, SchemaError> {
        let plan = Plan::new(version, target, &self.layout)?;
        let (layout, builders) = (&self.layout, &mut self.builders);
        let mut fields = Vec::with_capacity(version.columns.len());
        for (seq, row) in rows.iter().enumerate() {
            fields.clear();
            if let Err(reason) = typed(row, &mut fields) {
                return Ok(Err(reason));
            }
            if fields.len() != version.columns.len() {
                return Ok(Err(format!("a row has {} values but {} has {} columns", fields.len(), version.qualified_name(), version.columns.len())));
            }
            let mut cells = vec![Cell::Null; layout.kinds.len()];
            let known = known_cells(&plan, Op::Read, false, &fields, &mut cells, |value, j, i| {
                let cell = match value {
                    FieldValue::Borrowed(v) => convert_ref(*v, &layout.kinds[i])
                        .map_err(|e| e.unwrap_or_else(|| "the value is not of the column's type".to_string())),
                    FieldValue::Owned(v) => convert(v, &layout.kinds[i]),
                };
                cell.map_err(|e| format!("column {}: {e}", version.columns[j].name))
            });
            if let Err(reason) = known {
                return Ok(Err(reason));
            }
            if let Err(reason) = changelog_cells(layout, &mut cells, Op::Read, (lsn, seq as u64), commit_ts, 0) {
                return Ok(Err(reason));
            }
            cells[layout.unchanged] = Cell::Null;
            for (builder, cell) in builders.iter_mut().zip(&cells) {
                builder.append(cell)?;
            }
        }
        Ok(Ok(()))
    }

    /// Appends the rows of `segments` (consecutive, in position order, after those appended before).
    pub fn append<E: AsRef<[SegmentEvent]>>(
        &mut self,
        target: &Schema,
        segments: &[(Arc<TableSchema>, E)],
    ) -> Result<(), SchemaError> {
        let layout = &self.layout;
        let needs_history = segments.iter().any(|(_, events)| events.as_ref().iter().any(has_unchanged));
        let mut history = History {
            enabled: needs_history,
            images: HashMap::new(),
        };
        // Per-row scratch, reused: what is known of each column of the row's version, and the target's cells.
        let mut slots = Vec::new();
        let mut cells = vec![Cell::Null; layout.kinds.len()];
        for (version, events) in segments {
            let plan = Plan::new(version, target, layout)?;
            cells.fill(Cell::Null);
            for event in events.as_ref() {
                match fill_row(layout, &plan, &mut history, event, &mut slots, &mut cells) {
                    Ok(()) => {
                        for (builder, cell) in self.builders.iter_mut().zip(&cells) {
                            builder.append(cell)?;
                        }
                    }
                    Err(reason) => self.rejected.push(RejectedRow {
                        position: event.position(),
                        reason,
                        rendering: render(version, event),
                        event: event.clone(),
                        version: version.clone(),
                    }),
                }
            }
        }
        Ok(())
    }

    /// The batch and the changes left out of it.
    pub fn finish(self) -> Result<BatchOutput, SchemaError> {
        let columns = self
            .builders
            .into_iter()
            .map(Builder::finish)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BatchOutput {
            batch: RecordBatch::try_new(self.arrow_schema, columns)?,
            rejected: self.rejected,
        })
    }
}

/// Adds the bytes of each string and binary value of one row (in the version's column order) to its target
/// column's count.
fn add_bytes<'v>(bytes: &mut [usize], plan: &Plan<'_>, row: impl Iterator<Item = ValueRef<'v>>) {
    for (&i, value) in plan.target_of.iter().zip(row) {
        bytes[i] += match value {
            ValueRef::Text(v) | ValueRef::Numeric(v) => v.len(),
            ValueRef::Bytes(v) => v.len(),
            _ => 0,
        };
    }
}

/// The target's columns: what each holds, and where the changelog columns are.
struct Layout {
    kinds: Vec<Kind>,
    /// Each column's Iceberg type, for rejection reasons.
    type_names: Vec<String>,
    op: usize,
    lsn: usize,
    commit_ts: usize,
    xid: usize,
    seq: usize,
    unchanged: usize,
}

impl Layout {
    fn new(target: &Schema, arrow_schema: &ArrowSchema) -> Result<Layout, SchemaError> {
        let kinds: Vec<Kind> = arrow_schema
            .fields()
            .iter()
            .map(|f| Kind::of(f.data_type()))
            .collect();
        let find = |column: &'static str, kind: Kind, expected: &'static str| {
            let found = arrow_schema.index_of(column).ok();
            match found {
                Some(i) if kinds[i] == kind => Ok(i),
                _ => Err(SchemaError::ChangelogColumn {
                    column,
                    expected,
                    found: match target.as_struct().field_by_name(column) {
                        Some(field) => type_name(&field.field_type),
                        None => "no such column".into(),
                    },
                }),
            }
        };
        Ok(Layout {
            op: find(OP, Kind::String, "string")?,
            lsn: find(LSN, Kind::Int64, "long")?,
            commit_ts: find(COMMIT_TS, Kind::TimestampTz, "timestamptz")?,
            xid: find(XID, Kind::Int64, "long")?,
            seq: find(SEQ, Kind::Int64, "long")?,
            unchanged: find(
                UNCHANGED,
                Kind::List(Box::new(Kind::String)),
                "list<string>",
            )?,
            type_names: target
                .as_struct()
                .fields()
                .iter()
                .map(|f| type_name(&f.field_type))
                .collect(),
            kinds,
        })
    }
}

/// One schema version onto the target: the target column of each of its columns, and its key columns.
struct Plan<'a> {
    version: &'a TableSchema,
    target_of: Vec<usize>,
    key: Vec<usize>,
}

impl<'a> Plan<'a> {
    fn new(
        version: &'a TableSchema,
        target: &Schema,
        layout: &Layout,
    ) -> Result<Self, SchemaError> {
        let fields = target.as_struct().fields();
        let mut target_of = Vec::with_capacity(version.columns.len());
        for column in &version.columns {
            let position = fields.iter().position(|f| f.name == column.name);
            let reserved = CHANGELOG_COLUMNS.contains(&column.name.as_str());
            let Some(i) = position.filter(|_| !reserved) else {
                return Err(if reserved {
                    SchemaError::ReservedColumn {
                        table: version.qualified_name(),
                        column: column.name.clone(),
                    }
                } else {
                    SchemaError::ColumnNotInTarget {
                        table: version.qualified_name(),
                        column: column.name.clone(),
                    }
                });
            };
            check_column(version, column, &fields[i].field_type)?;
            debug_assert!(i < layout.kinds.len());
            target_of.push(i);
        }
        let key = (0..version.columns.len())
            .filter(|&j| version.columns[j].part_of_key)
            .collect();
        Ok(Plan {
            version,
            target_of,
            key,
        })
    }
}

/// What the batch knows of one column of one row.
#[derive(Debug, Clone, Copy)]
enum Slot<'a> {
    /// This value (`None`: NULL).
    Known(Option<&'a Value>),
    /// Not known here (an unfilled unchanged TOAST value, or a column the change's version lacks).
    Unknown,
}

/// The latest image of each primary key seen so far in the batch, by target column; kept only when some change
/// of the batch has an unchanged TOAST value.
struct History<'a> {
    enabled: bool,
    images: HashMap<Vec<u8>, Vec<Slot<'a>>>,
}

/// The key of a row: each key column's name and value, encoded; `None` when the version has no key or a key
/// value is itself unknown.
fn row_key<'a>(plan: &Plan<'_>, value: impl Fn(usize) -> Slot<'a>) -> Option<Vec<u8>> {
    if plan.key.is_empty() {
        return None;
    }
    let mut key = Vec::new();
    for &j in &plan.key {
        let value = match value(j) {
            Slot::Known(Some(Value::Unchanged)) | Slot::Unknown => return None,
            Slot::Known(v) => v.unwrap_or(&Value::Null),
        };
        rmp_serde::encode::write(&mut key, &(&plan.version.columns[j].name, value)).ok()?;
    }
    Some(key)
}

/// The cells of one change, or why it cannot be written (then it is rejected, and nothing is appended).
fn fill_row<'a>(
    layout: &Layout,
    plan: &Plan<'a>,
    history: &mut History<'a>,
    event: &'a SegmentEvent,
    slots: &mut Vec<Slot<'a>>,
    cells: &mut [Cell<'a>],
) -> Result<(), String> {
    let columns = &plan.version.columns;
    let op = event.op;
    let image = match op {
        Op::Insert | Op::Update | Op::Read => event.new.as_deref(),
        Op::Delete => event.old.as_deref(),
        Op::Truncate => Some(&[][..]),
    };
    let image = image.ok_or_else(|| format!("a {} change without its row image", op.as_str()))?;
    let old = event
        .old
        .as_deref()
        .filter(|old| old.len() == columns.len());
    if op != Op::Truncate && image.len() != columns.len() {
        return Err(format!(
            "the row has {} values but its schema version of {} has {} columns",
            image.len(),
            plan.version.qualified_name(),
            columns.len()
        ));
    }
    let key_only = op == Op::Delete && event.old_is_full != Some(true);
    let own_old = old.filter(|_| op != Op::Delete && event.old_is_full == Some(true));
    // The previous image of this row: under the old key when the change carries one (the key may change).
    let lookup_key = match (history.enabled, old) {
        // A truncate has no row: nothing to look up (its image is empty).
        (false, _) => None,
        _ if op == Op::Truncate => None,
        (true, Some(old)) => row_key(plan, |j| Slot::Known(Some(&old[j]))),
        (true, None) => row_key(plan, |j| Slot::Known(Some(&image[j]))),
    };
    let previous = lookup_key.as_ref().and_then(|key| history.images.get(key));

    let column_error = |j: usize, i: usize, reason: String| {
        format!(
            "column \"{}\" (Iceberg {}): {reason}",
            columns[j].name, layout.type_names[i]
        )
    };
    if !history.enabled {
        // No change of the batch has an unchanged TOAST value: every value is known as it is. Every column of
        // the version is written (the target columns it lacks stay NULL from the start of the segment).
        known_cells(plan, op, key_only, image, cells, |value, j, i| {
            convert(value, &layout.kinds[i]).map_err(|reason| column_error(j, i, reason))
        })?;
        changelog_cells(layout, cells, op, (event.commit_lsn.as_u64(), event.seq), event.commit_ts, event.xid)?;
        cells[layout.unchanged] = Cell::Null;
        return Ok(());
    }
    // Some value is unknown until filled: start the row from NULLs.
    cells.fill(Cell::Null);

    slots.clear();
    let mut unchanged: Vec<Cell<'a>> = Vec::new();
    for (j, value) in image.iter().enumerate() {
        let slot = match value {
            _ if key_only && !columns[j].part_of_key => Slot::Known(None),
            Value::Null => Slot::Known(None),
            Value::Unchanged => {
                let from_old = own_old
                    .map(|old| &old[j])
                    .filter(|v| !matches!(v, Value::Unchanged));
                match (from_old, previous.map(|image| image[plan.target_of[j]])) {
                    (Some(v), _) => Slot::Known(Some(v).filter(|v| !v.is_null())),
                    (None, Some(Slot::Known(v))) => Slot::Known(v),
                    (None, _) => {
                        unchanged.push(Cell::Str(&columns[j].name));
                        Slot::Unknown
                    }
                }
            }
            v => Slot::Known(Some(v)),
        };
        slots.push(slot);
    }

    if history.enabled {
        match op {
            Op::Truncate => history.images.clear(),
            Op::Delete => {
                if let Some(key) = &lookup_key {
                    history.images.remove(key);
                }
            }
            _ => {
                let new_key = row_key(plan, |j| slots[j]);
                if let Some(key) = lookup_key.filter(|key| Some(key) != new_key.as_ref()) {
                    history.images.remove(&key);
                }
                if let Some(key) = new_key {
                    let mut known = vec![Slot::Unknown; layout.kinds.len()];
                    for (j, slot) in slots.iter().enumerate() {
                        known[plan.target_of[j]] = *slot;
                    }
                    history.images.insert(key, known);
                }
            }
        }
    }

    for (j, slot) in slots.iter().enumerate() {
        let i = plan.target_of[j];
        if let Slot::Known(Some(value)) = slot {
            cells[i] =
                convert(value, &layout.kinds[i]).map_err(|reason| column_error(j, i, reason))?;
        }
    }
    changelog_cells(layout, cells, op, (event.commit_lsn.as_u64(), event.seq), event.commit_ts, event.xid)?;
    cells[layout.unchanged] = if unchanged.is_empty() {
        Cell::Null
    } else {
        Cell::List(unchanged)
    };
    Ok(())
}

/// The source columns' cells of a row whose every value is known as it is (no unchanged TOAST value): NULL
/// where a key-only image has no value and everywhere for a truncate; `convert(value, j, i)` makes the cell of
/// version column `j` in target column `i`.
fn known_cells<'s, 'a, V, E>(
    plan: &Plan<'_>,
    op: Op,
    key_only: bool,
    image: &'s [V],
    cells: &mut [Cell<'a>],
    mut convert: impl FnMut(&'s V, usize, usize) -> Result<Cell<'a>, E>,
) -> Result<(), E> {
    if op == Op::Truncate {
        for &i in &plan.target_of {
            cells[i] = Cell::Null;
        }
    }
    for (j, value) in image.iter().enumerate() {
        let i = plan.target_of[j];
        cells[i] = if key_only && !plan.version.columns[j].part_of_key { Cell::Null } else { convert(value, j, i)? };
    }
    Ok(())
}

/// The changelog cells but `_unchanged`: op, position (commit LSN, seq), commit time, transaction id.
fn changelog_cells(
    layout: &Layout,
    cells: &mut [Cell<'_>],
    op: Op,
    (lsn, seq): (u64, u64),
    commit_ts: i64,
    xid: u32,
) -> Result<(), String> {
    let long = |what: &str, n: u64| {
        i64::try_from(n)
            .map(Cell::I64)
            .map_err(|_| format!("{what} {n} does not fit an Iceberg long"))
    };
    cells[layout.op] = Cell::Str(op.as_str());
    cells[layout.lsn] = long("commit LSN", lsn)?;
    cells[layout.commit_ts] = Cell::I64(commit_ts);
    cells[layout.xid] = Cell::I64(i64::from(xid));
    cells[layout.seq] = long("seq", seq)?;
    Ok(())
}

/// A change for a person: kind, table, transaction, position, and its old and new rows, each value cut short.
fn render(version: &TableSchema, event: &SegmentEvent) -> String {
    let row = |values: &[Value]| {
        let values: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(j, value)| {
                let name = version.columns.get(j).map_or("?", |c| c.name.as_str());
                let mut text = value.to_string();
                if let Some((cut, _)) = text.char_indices().nth(RENDERED_VALUE_CHARS) {
                    text.truncate(cut);
                    text.push('…');
                }
                format!("{name}={text}")
            })
            .collect();
        format!("({})", values.join(", "))
    };
    let mut out = format!(
        "{} on {} (xid {}, position {})",
        event.op.as_str(),
        version.qualified_name(),
        event.xid,
        event.position()
    );
    if let Some(old) = &event.old {
        let kind = if event.old_is_full == Some(true) {
            "old row"
        } else {
            "old key"
        };
        out.push_str(&format!(" {kind} {}", row(old)));
    }
    if let Some(new) = &event.new {
        out.push_str(&format!(" new row {}", row(new)));
    }
    out
}
