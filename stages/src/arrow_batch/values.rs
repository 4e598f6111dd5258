//! [`Value`] → Arrow array builders, in the Arrow types `iceberg::arrow::schema_to_arrow_schema` gives (see the
//! mapping table of philotes-schemas).
//!
//! Two steps per row so that a rejected change leaves nothing half-appended: [`convert`] checks and converts each
//! value into a [`Cell`] (which can fail: numeric `NaN` into a decimal, `24:00:00`), then [`Builder::append`]
//! appends the row's cells (which cannot fail for cells made by `convert` for the same [`Kind`]).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, FixedSizeBinaryBuilder,
    Float32Builder, Float64Builder, Int32Builder, Int64Builder, LargeBinaryBuilder, ListArray,
    NullBufferBuilder, StringBuilder, StructArray, Time64MicrosecondBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, FieldRef, Fields, TimeUnit};
use arrow::error::ArrowError;
use philotes_schemas::{
    current_date_sentinel, current_timestamp_sentinel, decimal128_unscaled, iceberg_time_micros, Interval, Value,
};

use crate::segment::ValueRef;

/// What a target column holds, read off its Arrow type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Kind {
    Bool,
    Int32,
    Int64,
    Float32,
    Float64,
    Decimal {
        precision: u8,
        scale: u8,
    },
    Date,
    Time,
    Timestamp,
    TimestampTz,
    String,
    Binary,
    Fixed(i32),
    List(Box<Kind>),
    /// `struct<months: int, days: int, microseconds: long>`.
    Interval,
    /// A type philotes never writes (only NULLs can go there).
    Other,
}

impl Kind {
    pub(super) fn of(data_type: &DataType) -> Kind {
        match data_type {
            DataType::Boolean => Kind::Bool,
            DataType::Int32 => Kind::Int32,
            DataType::Int64 => Kind::Int64,
            DataType::Float32 => Kind::Float32,
            DataType::Float64 => Kind::Float64,
            DataType::Decimal128(precision, scale) => match u8::try_from(*scale) {
                Ok(scale) => Kind::Decimal {
                    precision: *precision,
                    scale,
                },
                Err(_) => Kind::Other,
            },
            DataType::Date32 => Kind::Date,
            DataType::Time64(TimeUnit::Microsecond) => Kind::Time,
            DataType::Timestamp(TimeUnit::Microsecond, None) => Kind::Timestamp,
            DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => Kind::TimestampTz,
            DataType::Utf8 => Kind::String,
            DataType::LargeBinary => Kind::Binary,
            DataType::FixedSizeBinary(len) => Kind::Fixed(*len),
            DataType::List(element) => Kind::List(Box::new(Kind::of(element.data_type()))),
            DataType::Struct(fields) if interval_positions(fields).is_some() => Kind::Interval,
            _ => Kind::Other,
        }
    }
}

/// Where `months`, `days` and `microseconds` sit in an interval struct's fields, if that is what it is.
fn interval_positions(fields: &Fields) -> Option<[usize; 3]> {
    let find = |name: &str, ty: DataType| {
        fields
            .iter()
            .position(|f| f.name() == name && *f.data_type() == ty)
    };
    let found = [
        find("months", DataType::Int32)?,
        find("days", DataType::Int32)?,
        find("microseconds", DataType::Int64)?,
    ];
    (fields.len() == 3).then_some(found)
}

/// One value, checked and converted for its column; borrows strings and bytes from the event.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cell<'a> {
    Null,
    Bool(bool),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    I128(i128),
    Str(&'a str),
    Bytes(&'a [u8]),
    Interval(Interval),
    List(Vec<Cell<'a>>),
}

/// `value` for a column of `kind`, or why it cannot be written there. Lossless widenings (an older version's
/// `integer` into a `long` column, `real` into `double`) are accepted; an [`Value::Unchanged`] must have been
/// resolved before.
pub(super) fn convert<'a>(value: &'a Value, kind: &Kind) -> Result<Cell<'a>, String> {
    let mismatch = || format!("{value} is not a value of the column's type");
    match (value, kind) {
        (Value::Interval(interval), Kind::Interval) => Ok(Cell::Interval(*interval)),
        (Value::Array(elements), Kind::List(element)) => Ok(Cell::List(
            elements
                .iter()
                .map(|e| convert(e, element))
                .collect::<Result<_, _>>()?,
        )),
        _ => match ValueRef::of(value) {
            Some(scalar) => convert_ref(scalar, kind).map_err(|e| e.unwrap_or_else(mismatch)),
            None => Err(mismatch()),
        },
    }
}

/// A scalar `value` for a column of `kind` (see [`convert`]); the error is `None` when the value is not of the
/// column's type at all (the caller names the value).
pub(super) fn convert_ref<'a>(value: ValueRef<'a>, kind: &Kind) -> Result<Cell<'a>, Option<String>> {
    Ok(match (value, kind) {
        (ValueRef::Null, _) => Cell::Null,
        (ValueRef::Bool(v), Kind::Bool) => Cell::Bool(v),
        (ValueRef::Int16(v), Kind::Int32) => Cell::I32(i32::from(v)),
        (ValueRef::Int32(v), Kind::Int32) => Cell::I32(v),
        (ValueRef::Int16(v), Kind::Int64) => Cell::I64(i64::from(v)),
        (ValueRef::Int32(v), Kind::Int64) => Cell::I64(i64::from(v)),
        (ValueRef::Int64(v), Kind::Int64) => Cell::I64(v),
        (ValueRef::Float32(v), Kind::Float32) => Cell::F32(v),
        (ValueRef::Float32(v), Kind::Float64) => Cell::F64(f64::from(v)),
        (ValueRef::Float64(v), Kind::Float64) => Cell::F64(v),
        (ValueRef::Numeric(text), Kind::Decimal { precision, scale }) => {
            Cell::I128(decimal128_unscaled(text, *precision, *scale).map_err(|e| Some(e.to_string()))?)
        }
        (ValueRef::Numeric(text) | ValueRef::Text(text), Kind::String) => Cell::Str(text),
        (ValueRef::Bytes(bytes), Kind::Binary) => Cell::Bytes(bytes),
        // Older builds wrote infinities as the type's extremes, which readers cannot hold: a segment such a build
        // left in the buffer is written with today's sentinels.
        (ValueRef::Date(days), Kind::Date) => Cell::I32(current_date_sentinel(days)),
        (ValueRef::Time(micros), Kind::Time) => {
            Cell::I64(iceberg_time_micros(micros).map_err(|e| Some(e.to_string()))?)
        }
        (ValueRef::Timestamp(micros), Kind::Timestamp) => Cell::I64(current_timestamp_sentinel(micros)),
        (ValueRef::TimestampTz(micros), Kind::TimestampTz) => Cell::I64(current_timestamp_sentinel(micros)),
        (ValueRef::Uuid(bytes), Kind::Fixed(16)) => Cell::Bytes(bytes),
        (ValueRef::Unchanged, _) => return Err(Some("an unchanged TOAST value was not resolved".into())),
        _ => return Err(None),
    })
}

/// The three fields of an interval struct column (boxed in [`Builder`]: it is the largest variant).
#[derive(Debug)]
pub(super) struct IntervalBuilder {
    fields: Fields,
    positions: [usize; 3],
    months: Int32Builder,
    days: Int32Builder,
    micros: Int64Builder,
    validity: NullBufferBuilder,
}

/// Appends cells of one column and makes its array, of exactly the target field's Arrow type.
#[derive(Debug)]
pub(super) enum Builder {
    Bool(BooleanBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    String(StringBuilder),
    Binary(LargeBinaryBuilder),
    Fixed(FixedSizeBinaryBuilder),
    List {
        /// The element field as the target has it (name `element`, field id metadata).
        element: FieldRef,
        offsets: Vec<i32>,
        validity: NullBufferBuilder,
        values: Box<Builder>,
    },
    Interval(Box<IntervalBuilder>),
    Nulls {
        data_type: DataType,
        len: usize,
    },
}

impl Builder {
    /// A builder for a column of this Arrow type, with room for `capacity` rows and, for a string or binary
    /// column, `bytes` bytes of values.
    pub(super) fn new(
        data_type: &DataType,
        capacity: usize,
        bytes: usize,
    ) -> Result<Builder, ArrowError> {
        Ok(match (Kind::of(data_type), data_type) {
            (Kind::Bool, _) => Builder::Bool(BooleanBuilder::with_capacity(capacity)),
            (Kind::Int32, _) => Builder::Int32(Int32Builder::with_capacity(capacity)),
            (Kind::Int64, _) => Builder::Int64(Int64Builder::with_capacity(capacity)),
            (Kind::Float32, _) => Builder::Float32(Float32Builder::with_capacity(capacity)),
            (Kind::Float64, _) => Builder::Float64(Float64Builder::with_capacity(capacity)),
            (Kind::Decimal { precision, scale }, _) => Builder::Decimal(
                Decimal128Builder::with_capacity(capacity)
                    .with_precision_and_scale(precision, scale as i8)?,
            ),
            (Kind::Date, _) => Builder::Date(Date32Builder::with_capacity(capacity)),
            (Kind::Time, _) => Builder::Time(Time64MicrosecondBuilder::with_capacity(capacity)),
            (Kind::Timestamp | Kind::TimestampTz, DataType::Timestamp(_, zone)) => {
                Builder::Timestamp(
                    TimestampMicrosecondBuilder::with_capacity(capacity)
                        .with_timezone_opt(zone.clone()),
                )
            }
            (Kind::String, _) => Builder::String(StringBuilder::with_capacity(capacity, bytes)),
            (Kind::Binary, _) => {
                Builder::Binary(LargeBinaryBuilder::with_capacity(capacity, bytes))
            }
            (Kind::Fixed(len), _) => {
                Builder::Fixed(FixedSizeBinaryBuilder::with_capacity(capacity, len))
            }
            (Kind::List(_), DataType::List(element)) => {
                let mut offsets = Vec::with_capacity(capacity + 1);
                offsets.push(0);
                Builder::List {
                    element: element.clone(),
                    offsets,
                    validity: NullBufferBuilder::new(capacity),
                    values: Box::new(Builder::new(element.data_type(), capacity, 0)?),
                }
            }
            (Kind::Interval, DataType::Struct(fields)) => {
                Builder::Interval(Box::new(IntervalBuilder {
                    fields: fields.clone(),
                    positions: interval_positions(fields).unwrap_or([0, 1, 2]),
                    months: Int32Builder::with_capacity(capacity),
                    days: Int32Builder::with_capacity(capacity),
                    micros: Int64Builder::with_capacity(capacity),
                    validity: NullBufferBuilder::new(capacity),
                }))
            }
            _ => Builder::Nulls {
                data_type: data_type.clone(),
                len: 0,
            },
        })
    }

    /// Appends one cell made by [`convert`] for this column's [`Kind`].
    pub(super) fn append(&mut self, cell: &Cell<'_>) -> Result<(), ArrowError> {
        match (self, cell) {
            (Builder::Bool(b), Cell::Bool(v)) => b.append_value(*v),
            (Builder::Int32(b), Cell::I32(v)) => b.append_value(*v),
            (Builder::Date(b), Cell::I32(v)) => b.append_value(*v),
            (Builder::Int64(b), Cell::I64(v)) => b.append_value(*v),
            (Builder::Float32(b), Cell::F32(v)) => b.append_value(*v),
            (Builder::Float64(b), Cell::F64(v)) => b.append_value(*v),
            (Builder::Decimal(b), Cell::I128(v)) => b.append_value(*v),
            (Builder::Time(b), Cell::I64(v)) => b.append_value(*v),
            (Builder::Timestamp(b), Cell::I64(v)) => b.append_value(*v),
            (Builder::String(b), Cell::Str(v)) => b.append_value(v),
            (Builder::Binary(b), Cell::Bytes(v)) => b.append_value(v),
            (Builder::Fixed(b), Cell::Bytes(v)) => b.append_value(v)?,
            (
                Builder::List {
                    offsets,
                    validity,
                    values,
                    ..
                },
                Cell::List(elements),
            ) => {
                for element in elements {
                    values.append(element)?;
                }
                let last = offsets.last().copied().unwrap_or(0);
                let next = i32::try_from(elements.len())
                    .ok()
                    .and_then(|n| last.checked_add(n))
                    .ok_or_else(|| {
                        ArrowError::ComputeError("list offsets overflow i32 in one batch".into())
                    })?;
                offsets.push(next);
                validity.append_non_null();
            }
            (Builder::Interval(b), Cell::Interval(v)) => {
                b.months.append_value(v.months);
                b.days.append_value(v.days);
                b.micros.append_value(v.micros);
                b.validity.append_non_null();
            }
            (builder, Cell::Null) => builder.append_null(),
            (builder, cell) => {
                return Err(ArrowError::InvalidArgumentError(format!(
                    "philotes bug: cell {cell:?} appended to a {} column",
                    builder.data_type_name()
                )))
            }
        }
        Ok(())
    }

    fn append_null(&mut self) {
        match self {
            Builder::Bool(b) => b.append_null(),
            Builder::Int32(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::Int64(b) => b.append_null(),
            Builder::Float32(b) => b.append_null(),
            Builder::Float64(b) => b.append_null(),
            Builder::Decimal(b) => b.append_null(),
            Builder::Time(b) => b.append_null(),
            Builder::Timestamp(b) => b.append_null(),
            Builder::String(b) => b.append_null(),
            Builder::Binary(b) => b.append_null(),
            Builder::Fixed(b) => b.append_null(),
            Builder::List {
                offsets, validity, ..
            } => {
                offsets.push(offsets.last().copied().unwrap_or(0));
                validity.append_null();
            }
            // The struct's fields are required: a NULL interval keeps zeros under its null bit.
            Builder::Interval(b) => {
                b.months.append_value(0);
                b.days.append_value(0);
                b.micros.append_value(0);
                b.validity.append_null();
            }
            Builder::Nulls { len, .. } => *len += 1,
        }
    }

    fn data_type_name(&self) -> &'static str {
        match self {
            Builder::Bool(_) => "boolean",
            Builder::Int32(_) => "int",
            Builder::Int64(_) => "long",
            Builder::Float32(_) => "float",
            Builder::Float64(_) => "double",
            Builder::Decimal(_) => "decimal",
            Builder::Date(_) => "date",
            Builder::Time(_) => "time",
            Builder::Timestamp(_) => "timestamp",
            Builder::String(_) => "string",
            Builder::Binary(_) => "binary",
            Builder::Fixed(_) => "fixed",
            Builder::List { .. } => "list",
            Builder::Interval(_) => "interval struct",
            Builder::Nulls { .. } => "unsupported",
        }
    }

    /// The column's array.
    pub(super) fn finish(self) -> Result<ArrayRef, ArrowError> {
        Ok(match self {
            Builder::Bool(mut b) => Arc::new(b.finish()),
            Builder::Int32(mut b) => Arc::new(b.finish()),
            Builder::Date(mut b) => Arc::new(b.finish()),
            Builder::Int64(mut b) => Arc::new(b.finish()),
            Builder::Float32(mut b) => Arc::new(b.finish()),
            Builder::Float64(mut b) => Arc::new(b.finish()),
            Builder::Decimal(mut b) => Arc::new(b.finish()),
            Builder::Time(mut b) => Arc::new(b.finish()),
            Builder::Timestamp(mut b) => Arc::new(b.finish()),
            Builder::String(mut b) => Arc::new(b.finish()),
            Builder::Binary(mut b) => Arc::new(b.finish()),
            Builder::Fixed(mut b) => Arc::new(b.finish()),
            Builder::List {
                element,
                offsets,
                mut validity,
                values,
            } => Arc::new(ListArray::try_new(
                element,
                OffsetBuffer::new(ScalarBuffer::from(offsets)),
                values.finish()?,
                validity.finish(),
            )?),
            Builder::Interval(mut b) => {
                let mut arrays: Vec<Option<ArrayRef>> = vec![None, None, None];
                arrays[b.positions[0]] = Some(Arc::new(b.months.finish()));
                arrays[b.positions[1]] = Some(Arc::new(b.days.finish()));
                arrays[b.positions[2]] = Some(Arc::new(b.micros.finish()));
                Arc::new(StructArray::try_new(
                    b.fields,
                    arrays.into_iter().flatten().collect(),
                    b.validity.finish(),
                )?)
            }
            Builder::Nulls { data_type, len } => arrow::array::new_null_array(&data_type, len),
        })
    }
}
