//! Unit tests of the ArrowBatch module: schemas, evolution, row rules, and every type of the mapping table.

use std::sync::Arc;

use arrow::array::{
    Array, BooleanArray, Date32Array, Decimal128Array, FixedSizeBinaryArray, Float32Array,
    Float64Array, Int32Array, Int64Array, LargeBinaryArray, ListArray, StringArray, StructArray,
    Time64MicrosecondArray, TimestampMicrosecondArray,
};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{PrimitiveType, Schema, Type};
use parquet::arrow::PARQUET_FIELD_ID_META_KEY;
use philotes_schemas::{
    iceberg_type, ColumnSchema, IcebergType, Interval, PgType, ReplicaIdentity,
    TableSchema, Value, DATE_NEG_INFINITY, DATE_POS_INFINITY, TIMESTAMP_NEG_INFINITY,
    TIMESTAMP_POS_INFINITY,
};

use super::*;
pub(super) use crate::changelog::*;
use crate::position::{Lsn, Position};
use crate::catalog::evolve;
use crate::segment::SegmentEvent;

mod perf;
mod rows;
mod schema;
mod types;

const LSN_OF_TX: u64 = 0x16_B374_D848;
const COMMIT_TS_OF_TX: i64 = 1_700_000_000_123_456;

fn col(name: &str, pg_type: PgType, part_of_key: bool) -> ColumnSchema {
    ColumnSchema {
        name: name.into(),
        pg_type,
        type_oid: 0,
        type_modifier: -1,
        part_of_key,
        attnum: None,
    }
}

/// `current` evolved for rows of `used`, the last of `versions` (numbered 1, 2, …): the schema the table has then.
fn evolved(current: &Schema, versions: &[&Arc<TableSchema>]) -> Result<Schema, SchemaError> {
    let all: std::collections::BTreeMap<i32, Arc<TableSchema>> =
        versions.iter().zip(1..).map(|(v, n)| (n, (*v).clone())).collect();
    let plan = evolve::plan(current, None, &all, &[versions.len() as i32]).map_err(|refused| refused.error)?;
    Ok(plan.schema.unwrap_or_else(|| current.clone()))
}

fn table(columns: Vec<ColumnSchema>) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        schema: "public".into(),
        table: "t".into(),
        columns,
        replica_identity: ReplicaIdentity::Default,
        primary_key: Vec::new(),
        relid: None,
    })
}

fn event(
    op: char,
    seq: u64,
    old: Option<(bool, Vec<Value>)>,
    new: Option<Vec<Value>>,
) -> SegmentEvent {
    SegmentEvent {
        op: crate::op::Op::from_code(op).expect("an _op code"),
        commit_lsn: Lsn(LSN_OF_TX),
        seq,
        xid: 731,
        commit_ts: COMMIT_TS_OF_TX,
        old_is_full: old.as_ref().map(|(full, _)| *full),
        old: old.map(|(_, values)| values),
        new,
    }
}

fn insert(seq: u64, new: Vec<Value>) -> SegmentEvent {
    event('I', seq, None, Some(new))
}

fn update(seq: u64, new: Vec<Value>) -> SegmentEvent {
    event('U', seq, None, Some(new))
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn numeric(p: u16, s: i16) -> PgType {
    PgType::Numeric {
        precision: p,
        scale: s,
    }
}

/// `id int4 (key), body text, n numeric(10,2)`.
fn simple() -> Arc<TableSchema> {
    table(vec![
        col("id", PgType::Int4, true),
        col("body", PgType::Text, false),
        col("n", numeric(10, 2), false),
    ])
}

fn build(target: &Schema, segments: Vec<(Arc<TableSchema>, Vec<SegmentEvent>)>) -> BatchOutput {
    build_batch(target, &segments).expect("the batch builds")
}

fn array<'b, T: 'static>(batch: &'b RecordBatch, name: &str) -> &'b T {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("column {name} has another array type"))
}

fn strings(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
    array::<StringArray>(batch, name)
        .iter()
        .map(|v| v.map(str::to_owned))
        .collect()
}

fn ints(batch: &RecordBatch, name: &str) -> Vec<Option<i32>> {
    array::<Int32Array>(batch, name).iter().collect()
}

fn unchanged_lists(batch: &RecordBatch) -> Vec<Option<Vec<String>>> {
    let lists = array::<ListArray>(batch, UNCHANGED);
    (0..lists.len())
        .map(|row| {
            lists.is_valid(row).then(|| {
                let names = lists.value(row);
                let names = names
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("strings");
                names
                    .iter()
                    .map(|n| n.expect("no null names").to_owned())
                    .collect()
            })
        })
        .collect()
}

/// Every type of philotes-schemas' mapping table.
fn every_type() -> Arc<TableSchema> {
    let types = [
        ("bool", PgType::Bool),
        ("int2", PgType::Int2),
        ("int4", PgType::Int4),
        ("int8", PgType::Int8),
        ("float4", PgType::Float4),
        ("float8", PgType::Float8),
        ("dec", numeric(10, 2)),
        ("dec_neg_scale", numeric(5, -2)),
        ("num", PgType::NumericUnconstrained),
        ("num_wide", numeric(50, 10)),
        ("text", PgType::Text),
        ("varchar", PgType::Varchar(Some(5))),
        ("char", PgType::Char(Some(3))),
        ("name", PgType::Name),
        ("bytea", PgType::Bytea),
        ("date", PgType::Date),
        ("time", PgType::Time),
        ("ts", PgType::Timestamp),
        ("tstz", PgType::TimestampTz),
        ("interval", PgType::Interval),
        ("uuid", PgType::Uuid),
        ("json", PgType::Json),
        ("jsonb", PgType::Jsonb),
        ("inet", PgType::Inet),
        ("cidr", PgType::Cidr),
        ("macaddr", PgType::MacAddr),
        ("macaddr8", PgType::MacAddr8),
        (
            "mood",
            PgType::Enum {
                name: "mood".into(),
            },
        ),
        (
            "point",
            PgType::Unmapped {
                type_name: "point".into(),
            },
        ),
        ("int4s", PgType::Array(Box::new(PgType::Int4))),
        ("texts", PgType::Array(Box::new(PgType::Text))),
        ("decs", PgType::Array(Box::new(numeric(10, 2)))),
        ("intervals", PgType::Array(Box::new(PgType::Interval))),
    ];
    let mut columns = vec![col("id", PgType::Int8, true)];
    columns.extend(types.into_iter().map(|(name, ty)| col(name, ty, false)));
    table(columns)
}

fn all_field_ids(ty: &Type, ids: &mut Vec<i32>) {
    match ty {
        Type::Primitive(_) => {}
        Type::List(list) => {
            ids.push(list.element_field.id);
            all_field_ids(&list.element_field.field_type, ids);
        }
        Type::Struct(s) => {
            for f in s.fields() {
                ids.push(f.id);
                all_field_ids(&f.field_type, ids);
            }
        }
        Type::Map(_) => unreachable!("philotes writes no maps"),
    }
}
