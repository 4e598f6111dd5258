//! philotes-schemas: Postgres type → typed value → Arrow → Iceberg, and table schema versions.
//!
//! The flow for one column: the Relation message's type OID and `atttypmod` resolve to a [`PgType`]
//! ([`TypeResolver`]); each pgoutput text value parses into a [`Value`] ([`parse_text`]), which is what the
//! buffer stores (MessagePack); the flusher writes it as the column's Arrow type (the one the `iceberg` crate
//! derives from the column's Iceberg type) into the column's Iceberg type ([`iceberg_type`]). [`decide`] compares schema versions.
//! A field of a binary `COPY` (the snapshot's fast path) of a type [`has_binary`] names decodes with
//! [`parse_binary`] into the very `Value` [`parse_text`] gives for the type's text.
//!
//! # Type mapping
//!
//! | Postgres | `Value` | Arrow | Iceberg | edge values |
//! | --- | --- | --- | --- | --- |
//! | `boolean` | `Bool` | `Boolean` | `boolean` | |
//! | `smallint` | `Int16` | `Int32` | `int` | |
//! | `integer` | `Int32` | `Int32` | `int` | |
//! | `bigint` | `Int64` | `Int64` | `long` | |
//! | `real` | `Float32` | `Float32` | `float` | `NaN`, `±Infinity` kept as IEEE values |
//! | `double precision` | `Float64` | `Float64` | `double` | `NaN`, `±Infinity` kept as IEEE values |
//! | `numeric(p,s)`, needs ≤ 38 digits | `Numeric` (exact text) | `Decimal128(P,S)` | `decimal(P,S)` | P,S from p,s (¹); `NaN` → dead letter (²) |
//! | `numeric` unconstrained, or > 38 digits | `Numeric` (exact text) | `Utf8` | `string` | exact digits; `NaN`, `Infinity`, `-Infinity` as those words |
//! | `text`, `varchar(n)`, `char(n)`, `name`, `citext` | `Text` | `Utf8` | `string` | `char(n)` keeps its blank padding |
//! | `bytea` | `Bytes` | `LargeBinary` | `binary` | hex and escape output both parsed |
//! | `date` | `Date` (days since 1970) | `Date32` | `date` | `infinity` → 9999-12-31, `-infinity` → 0001-01-01; BC dates exact (proleptic Gregorian) |
//! | `time` | `Time` (µs) | `Time64(µs)` | `time` | `24:00:00` → dead letter (Iceberg times end at 23:59:59.999999) |
//! | `timestamp` | `Timestamp` (µs since 1970, wall clock) | `Timestamp(µs, None)` | `timestamp` | `infinity` → 9999-12-31 23:59:59.999999, `-infinity` → 0001-01-01 00:00:00; BC exact |
//! | `timestamptz` | `TimestampTz` (µs since 1970 UTC) | `Timestamp(µs, "+00:00")` | `timestamptz` | any session offset (`-08`, `+05:30`, `+05:53:28`) normalised to UTC; `±infinity` as `timestamp` |
//! | `interval` | `Interval { months, days, micros }` | `Struct(Int32, Int32, Int64)` | `struct<months: int, days: int, microseconds: long>` | fields kept apart (a month is not 30 days); PG 17 `±infinity` → all fields at max/min |
//! | `uuid` | `Uuid` (16 bytes) | `FixedSizeBinary(16)` | `uuid` | |
//! | `json`, `jsonb` | `Text` (as Postgres printed it) | `Utf8` | `string` | |
//! | `inet`, `cidr`, `macaddr`, `macaddr8` | `Text` | `Utf8` | `string` | |
//! | enum | `Text` (the label) | `Utf8` | `string` | |
//! | domain | as its base type (recursively, with the domain's typmod) | | | |
//! | `T[]` (one dimension) | `Array` (elements may be `Null`) | `List<element: T>` | `list<T>` (optional elements) | multi-dimensional or `[lo:hi]=` arrays → dead letter |
//! | anything else | — | — | — | [`UnsupportedType`] naming table, column and type; or, when the pipeline carries unmapped types as text, `Text` / `Utf8` / `string` ([`PgType::Unmapped`]) |
//!
//! NULL is [`Value::Null`] for every type; an unchanged TOAST value is [`Value::Unchanged`], never NULL.
//!
//! (¹) `numeric(p,s)` maps to the smallest decimal that holds every value exactly: `decimal(p,s)` for
//! `0 ≤ s ≤ p`; a negative scale (`numeric(5,-2)`) → `decimal(p−s,0)`; a scale above the precision
//! (`numeric(3,5)`) → `decimal(s,s)`; when that needs more than 38 digits, `string`.
//!
//! (²) A constrained numeric column can hold `NaN` (Postgres refuses infinities there); an Iceberg decimal
//! cannot. Such a row goes to the dead-letter table with the reason ([`decimal128_unscaled`]) rather than being
//! written with NULL or the whole column becoming a string.
//!
//! # Decisions
//!
//! - **Unconstrained numeric → `string`.** It is the only lossless choice: Postgres' unconstrained numeric has up
//!   to 131072 integer and 16383 fraction digits plus `NaN`/`±Infinity`, and its display scale (`1.50` ≠ `1.5` as
//!   text). `decimal(38, s)` would have to pick one scale for all rows and send every value that does not fit to
//!   the dead-letter table. Readers cast the string to the decimal they need. Declare `numeric(p,s)` to get a
//!   decimal column.
//! - **Infinities are sentinels at the ends of what every common reader holds:** `infinity` is 9999-12-31
//!   (23:59:59.999999 for timestamps), `-infinity` is 0001-01-01 (00:00:00), the range of Python's `datetime`,
//!   DuckDB, Spark and Trino. The type's own extremes (Debezium's choice, and philotes' before) made pyarrow's
//!   `to_pylist()` fail with "date value out of range". A real value equal to a sentinel is indistinguishable
//!   from infinity. Interval infinities keep every field at its max/min (plain integers, readable anywhere).
//! - **Arrow types follow the Iceberg types** exactly as the `iceberg` crate converts them, so `int2` is `Int32`,
//!   `bytea` is `LargeBinary` and `timestamptz` carries the zone `+00:00`.
//!
//! # Schema evolution
//!
//! Added columns are added; dropped columns stay, null from then on; a type change that keeps the Iceberg type
//! (smallint→integer, varchar(n)→text, json→jsonb) is recorded; a change that Iceberg can promote (integer or
//! smallint→bigint, real→double precision, numeric(p,s)→numeric(p',s) with p'≥p, the same for array elements) is
//! applied; anything else is an [`IncompatibleSchema`] error naming the column and the old and new types.

mod arrow;
mod binary;
mod civil;
mod error;
mod iceberg;
mod pg_type;
mod schema;
mod text;
mod value;

pub use crate::arrow::{decimal128_unscaled, iceberg_time_micros};
pub use crate::binary::{has_binary, parse_binary, parse_binary_borrowed, BinaryValue};
pub use crate::civil::{civil_from_days, days_from_civil};
pub use crate::error::{
    ConvertError, IncompatibleSchema, ParseError, TypeConflict, UnsupportedType,
};
pub use crate::iceberg::{
    decimal_for_numeric, iceberg_type, IcebergField, IcebergType, MAX_DECIMAL_PRECISION,
};
pub use crate::pg_type::{
    numeric_from_typmod, oids, CatalogType, PgType, TypeResolver, ATTNUMS_SQL, CATALOG_TYPES_SQL, PRIMARY_KEY_SQL,
};
pub use crate::schema::{
    decide, ColumnSchema, ReplicaIdentity, SchemaChange, SchemaDecision, TableSchema,
};
pub use crate::text::parse_text;
pub use crate::value::{
    current_date_sentinel, current_timestamp_sentinel, Interval, Value, DATE_NEG_INFINITY,
    DATE_POS_INFINITY, TIMESTAMP_NEG_INFINITY, TIMESTAMP_POS_INFINITY,
};
