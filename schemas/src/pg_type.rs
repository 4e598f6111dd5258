//! Which Postgres type a column has: [`PgType`], decoded from the type OID and `atttypmod` that pgoutput's
//! Relation message carries, by a [`TypeResolver`] that knows the built-in types statically and learns enums,
//! domains and arrays of those from one catalog query on the source ([`CATALOG_TYPES_SQL`]).

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::UnsupportedType;

/// `VARHDRSZ`: Postgres adds it to the length or precision it stores in a typmod.
const VARHDRSZ: i32 = 4;
/// How deep domain-over-domain-over-array chains may go before the catalog is assumed to be cyclic or corrupt.
const MAX_TYPE_DEPTH: usize = 32;

/// A Postgres column type philotes knows how to carry. Domains resolve to their base type (recursively): their
/// values and mapping are the base type's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PgType {
    /// `boolean`.
    Bool,
    /// `smallint`.
    Int2,
    /// `integer`.
    Int4,
    /// `bigint`.
    Int8,
    /// `real`.
    Float4,
    /// `double precision`.
    Float8,
    /// `numeric(precision, scale)`; Postgres 15 allows a negative scale and a scale above the precision.
    Numeric {
        /// Total significant digits, 1–1000.
        precision: u16,
        /// Digits after the decimal point, -1000–1000.
        scale: i16,
    },
    /// `numeric` without a typmod: any number of digits, so no fixed-size decimal holds it.
    NumericUnconstrained,
    /// `text` (and extension text types such as `citext`).
    Text,
    /// `character varying(n)`; `None` without a length.
    Varchar(Option<u32>),
    /// `character(n)` (`bpchar`), blank-padded as Postgres prints it; `None` without a length.
    Char(Option<u32>),
    /// `name` (63-byte identifiers).
    Name,
    /// `bytea`.
    Bytea,
    /// `date`.
    Date,
    /// `time without time zone`.
    Time,
    /// `timestamp without time zone`.
    Timestamp,
    /// `timestamp with time zone`.
    TimestampTz,
    /// `interval`.
    Interval,
    /// `uuid`.
    Uuid,
    /// `json`, as the text the user stored.
    Json,
    /// `jsonb`, as Postgres normalises and prints it.
    Jsonb,
    /// `inet`.
    Inet,
    /// `cidr`.
    Cidr,
    /// `macaddr`.
    MacAddr,
    /// `macaddr8`.
    MacAddr8,
    /// A user enum, carried as its label.
    Enum {
        /// The enum type's name, schema-qualified outside `public`/`pg_catalog`.
        name: String,
    },
    /// A one-dimensional array of the element type.
    Array(Box<PgType>),
    /// A type with no mapping, carried as the text Postgres prints because the pipeline asked for it.
    Unmapped {
        /// The type's name, for the schema history and for humans.
        type_name: String,
    },
}

impl PgType {
    /// Whether values of this type are carried as [`Value::Text`](crate::Value::Text).
    pub fn is_text_like(&self) -> bool {
        matches!(
            self,
            PgType::Text
                | PgType::Varchar(_)
                | PgType::Char(_)
                | PgType::Name
                | PgType::Json
                | PgType::Jsonb
                | PgType::Inet
                | PgType::Cidr
                | PgType::MacAddr
                | PgType::MacAddr8
                | PgType::Enum { .. }
                | PgType::Unmapped { .. }
        )
    }

    /// The type of a built-in scalar OID with its typmod, or `None` when the OID is not a supported built-in.
    pub fn from_builtin(oid: u32, type_modifier: i32) -> Option<PgType> {
        let len = || (type_modifier >= VARHDRSZ).then(|| (type_modifier - VARHDRSZ) as u32);
        Some(match oid {
            oids::BOOL => PgType::Bool,
            oids::BYTEA => PgType::Bytea,
            oids::NAME => PgType::Name,
            oids::INT8 => PgType::Int8,
            oids::INT2 => PgType::Int2,
            oids::INT4 => PgType::Int4,
            oids::TEXT => PgType::Text,
            oids::JSON => PgType::Json,
            oids::FLOAT4 => PgType::Float4,
            oids::FLOAT8 => PgType::Float8,
            oids::MACADDR8 => PgType::MacAddr8,
            oids::MACADDR => PgType::MacAddr,
            oids::INET => PgType::Inet,
            oids::CIDR => PgType::Cidr,
            oids::BPCHAR => PgType::Char(len()),
            oids::VARCHAR => PgType::Varchar(len()),
            oids::DATE => PgType::Date,
            oids::TIME => PgType::Time,
            oids::TIMESTAMP => PgType::Timestamp,
            oids::TIMESTAMPTZ => PgType::TimestampTz,
            oids::INTERVAL => PgType::Interval,
            oids::NUMERIC => numeric_from_typmod(type_modifier),
            oids::UUID => PgType::Uuid,
            oids::JSONB => PgType::Jsonb,
            _ => return None,
        })
    }
}

/// Decodes `numeric`'s typmod: `((precision << 16) | (scale & 0x7ff)) + VARHDRSZ`, the scale an 11-bit signed
/// number since Postgres 15; `-1` (or anything below `VARHDRSZ`) means unconstrained.
pub fn numeric_from_typmod(type_modifier: i32) -> PgType {
    if type_modifier < VARHDRSZ {
        return PgType::NumericUnconstrained;
    }
    let raw = type_modifier - VARHDRSZ;
    let precision = ((raw >> 16) & 0xffff) as u16;
    let scale = (((raw & 0x7ff) ^ 1024) - 1024) as i16;
    PgType::Numeric { precision, scale }
}

impl fmt::Display for PgType {
    /// The name Postgres' `format_type` would print, so errors read like `\d` output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgType::Bool => f.write_str("boolean"),
            PgType::Int2 => f.write_str("smallint"),
            PgType::Int4 => f.write_str("integer"),
            PgType::Int8 => f.write_str("bigint"),
            PgType::Float4 => f.write_str("real"),
            PgType::Float8 => f.write_str("double precision"),
            PgType::Numeric { precision, scale } => write!(f, "numeric({precision},{scale})"),
            PgType::NumericUnconstrained => f.write_str("numeric"),
            PgType::Text => f.write_str("text"),
            PgType::Varchar(Some(n)) => write!(f, "character varying({n})"),
            PgType::Varchar(None) => f.write_str("character varying"),
            PgType::Char(Some(n)) => write!(f, "character({n})"),
            PgType::Char(None) => f.write_str("bpchar"),
            PgType::Name => f.write_str("name"),
            PgType::Bytea => f.write_str("bytea"),
            PgType::Date => f.write_str("date"),
            PgType::Time => f.write_str("time without time zone"),
            PgType::Timestamp => f.write_str("timestamp without time zone"),
            PgType::TimestampTz => f.write_str("timestamp with time zone"),
            PgType::Interval => f.write_str("interval"),
            PgType::Uuid => f.write_str("uuid"),
            PgType::Json => f.write_str("json"),
            PgType::Jsonb => f.write_str("jsonb"),
            PgType::Inet => f.write_str("inet"),
            PgType::Cidr => f.write_str("cidr"),
            PgType::MacAddr => f.write_str("macaddr"),
            PgType::MacAddr8 => f.write_str("macaddr8"),
            PgType::Enum { name } => f.write_str(name),
            PgType::Array(element) => write!(f, "{element}[]"),
            PgType::Unmapped { type_name } => write!(f, "{type_name} (as text)"),
        }
    }
}

/// OIDs of the built-in types, fixed by Postgres (`pg_type.dat`).
pub mod oids {
    /// `boolean`
    pub const BOOL: u32 = 16;
    /// `bytea`
    pub const BYTEA: u32 = 17;
    /// `name`
    pub const NAME: u32 = 19;
    /// `bigint`
    pub const INT8: u32 = 20;
    /// `smallint`
    pub const INT2: u32 = 21;
    /// `integer`
    pub const INT4: u32 = 23;
    /// `text`
    pub const TEXT: u32 = 25;
    /// `json`
    pub const JSON: u32 = 114;
    /// `real`
    pub const FLOAT4: u32 = 700;
    /// `double precision`
    pub const FLOAT8: u32 = 701;
    /// `macaddr8`
    pub const MACADDR8: u32 = 774;
    /// `macaddr`
    pub const MACADDR: u32 = 829;
    /// `inet`
    pub const INET: u32 = 869;
    /// `cidr`
    pub const CIDR: u32 = 650;
    /// `character(n)`
    pub const BPCHAR: u32 = 1042;
    /// `character varying(n)`
    pub const VARCHAR: u32 = 1043;
    /// `date`
    pub const DATE: u32 = 1082;
    /// `time`
    pub const TIME: u32 = 1083;
    /// `timestamp`
    pub const TIMESTAMP: u32 = 1114;
    /// `timestamptz`
    pub const TIMESTAMPTZ: u32 = 1184;
    /// `interval`
    pub const INTERVAL: u32 = 1186;
    /// `numeric`
    pub const NUMERIC: u32 = 1700;
    /// `uuid`
    pub const UUID: u32 = 2950;
    /// `jsonb`
    pub const JSONB: u32 = 3802;

    /// Built-in array types and their element types.
    pub const ARRAYS: &[(u32, u32)] = &[
        (1000, BOOL),
        (1001, BYTEA),
        (1003, NAME),
        (1016, INT8),
        (1005, INT2),
        (1007, INT4),
        (1009, TEXT),
        (199, JSON),
        (1021, FLOAT4),
        (1022, FLOAT8),
        (775, MACADDR8),
        (1040, MACADDR),
        (1041, INET),
        (651, CIDR),
        (1014, BPCHAR),
        (1015, VARCHAR),
        (1182, DATE),
        (1183, TIME),
        (1115, TIMESTAMP),
        (1185, TIMESTAMPTZ),
        (1187, INTERVAL),
        (1231, NUMERIC),
        (2951, UUID),
        (3807, JSONB),
    ];

    /// Names of common built-in types philotes does not map, so an error names them even without the catalog.
    pub const UNMAPPED_NAMES: &[(u32, &str)] = &[
        (18, "\"char\""),
        (26, "oid"),
        (142, "xml"),
        (600, "point"),
        (601, "lseg"),
        (602, "path"),
        (603, "box"),
        (604, "polygon"),
        (628, "line"),
        (718, "circle"),
        (790, "money"),
        (1266, "time with time zone"),
        (1560, "bit"),
        (1562, "bit varying"),
        (2970, "txid_snapshot"),
        (3220, "pg_lsn"),
        (3614, "tsvector"),
        (3615, "tsquery"),
        (3904, "int4range"),
        (3906, "numrange"),
        (3908, "tsrange"),
        (3910, "tstzrange"),
        (3912, "daterange"),
        (3926, "int8range"),
        (4072, "jsonpath"),
    ];
}

/// The primary key's column names of one relation (`$1`, an oid), in key order; no row without a primary key.
/// For a partitioned table this is its partitioned index, which each partition's key follows.
pub const PRIMARY_KEY_SQL: &str = "\
SELECT a.attname::text FROM pg_index i \
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.n";

/// The live columns of one relation (`$1`, an oid) and their attribute numbers: `attname` (text), `attnum`
/// (int2). A column keeps its attnum across renames and type changes; a dropped one's is never reused.
pub const ATTNUMS_SQL: &str = "\
SELECT attname::text, attnum FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped";

/// The catalog query whose rows feed [`TypeResolver::with_catalog`]: every type except table row types and
/// arrays of them (a few hundred rows), so that enums, domains, arrays of those and extension types resolve, and
/// every unsupported type has a name. Columns, in order: `oid` (oid), `schema` (text), `name` (text), `kind`
/// (text: `typtype`), `base_type` (oid: `typbasetype`), `type_modifier` (int4: `typtypmod`), `element_type` (oid:
/// `typelem`), `category` (text: `typcategory`).
pub const CATALOG_TYPES_SQL: &str = "\
SELECT t.oid AS oid, n.nspname::text AS schema, t.typname::text AS name, t.typtype::text AS kind, \
       t.typbasetype AS base_type, t.typtypmod AS type_modifier, t.typelem AS element_type, \
       t.typcategory::text AS category \
FROM pg_catalog.pg_type t \
JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem AND t.typcategory = 'A' \
WHERE t.typtype <> 'c' AND t.typtype <> 'p' AND coalesce(e.typtype, 'b') <> 'c'";

/// One row of [`CATALOG_TYPES_SQL`], as plain data (this crate does not talk to Postgres).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogType {
    /// `pg_type.oid`.
    pub oid: u32,
    /// The type's schema, to qualify names outside `pg_catalog` and `public`.
    pub schema: String,
    /// `pg_type.typname`.
    pub name: String,
    /// `typtype`: `b` base, `d` domain, `e` enum, `r` range, `m` multirange.
    pub kind: char,
    /// `typbasetype`: the type a domain is over, 0 otherwise.
    pub base_type: u32,
    /// `typtypmod`: a domain's typmod for its base type (`numeric(10,2)`), -1 otherwise.
    pub type_modifier: i32,
    /// `typelem`: an array's element type, 0 otherwise.
    pub element_type: u32,
    /// `typcategory`: `A` marks true array types (other types with a `typelem`, like `point`, are not arrays).
    pub category: char,
}

impl CatalogType {
    fn qualified_name(&self) -> String {
        match self.schema.as_str() {
            "pg_catalog" | "public" => self.name.clone(),
            schema => format!("{schema}.{}", self.name),
        }
    }
}

/// Maps a column's type OID and typmod to a [`PgType`]. Built once per pipeline start (and again after a Relation
/// message names an OID it does not know), shared read-only by the SchemaResolve workers.
#[derive(Debug, Clone, Default)]
pub struct TypeResolver {
    catalog: HashMap<u32, CatalogType>,
    carry_unmapped_as_text: bool,
}

impl TypeResolver {
    /// A resolver that knows the built-in types only. With `carry_unmapped_as_text`, a type without a mapping
    /// becomes [`PgType::Unmapped`] (values carried as the text Postgres prints) instead of an error.
    pub fn new(carry_unmapped_as_text: bool) -> Self {
        Self {
            catalog: HashMap::new(),
            carry_unmapped_as_text,
        }
    }

    /// Adds the rows of [`CATALOG_TYPES_SQL`]; a later row for the same OID replaces an earlier one.
    pub fn with_catalog(mut self, rows: impl IntoIterator<Item = CatalogType>) -> Self {
        self.catalog
            .extend(rows.into_iter().map(|row| (row.oid, row)));
        self
    }

    /// Whether the resolver knows this OID (built-in or from the catalog); an unknown OID in a Relation message is
    /// a cue to re-run the catalog query (a type created after start).
    pub fn knows(&self, oid: u32) -> bool {
        PgType::from_builtin(oid, -1).is_some()
            || oids::ARRAYS.iter().any(|(array, _)| *array == oid)
            || self.catalog.contains_key(&oid)
    }

    /// The type of column `column` of table `table` (qualified, for the error) with pgoutput's `type_oid` and
    /// `type_modifier` (`atttypmod`; for an array it is the element's).
    pub fn resolve(
        &self,
        table: &str,
        column: &str,
        type_oid: u32,
        type_modifier: i32,
    ) -> Result<PgType, UnsupportedType> {
        self.resolve_at(type_oid, type_modifier, 0)
            .or_else(|unmapped| {
                if self.carry_unmapped_as_text {
                    Ok(PgType::Unmapped {
                        type_name: self.type_name(type_oid),
                    })
                } else {
                    Err(UnsupportedType {
                        table: table.to_owned(),
                        column: column.to_owned(),
                        type_name: self.type_name(unmapped),
                        oid: unmapped,
                    })
                }
            })
    }

    /// Resolves recursively; on failure returns the OID of the innermost type without a mapping.
    fn resolve_at(&self, oid: u32, type_modifier: i32, depth: usize) -> Result<PgType, u32> {
        if depth > MAX_TYPE_DEPTH {
            return Err(oid);
        }
        if let Some(pg_type) = PgType::from_builtin(oid, type_modifier) {
            return Ok(pg_type);
        }
        if let Some((_, element)) = oids::ARRAYS.iter().find(|(array, _)| *array == oid) {
            return Ok(PgType::Array(Box::new(self.resolve_at(
                *element,
                type_modifier,
                depth + 1,
            )?)));
        }
        let Some(row) = self.catalog.get(&oid) else {
            return Err(oid);
        };
        match row.kind {
            'd' => {
                let modifier = if type_modifier >= 0 {
                    type_modifier
                } else {
                    row.type_modifier
                };
                self.resolve_at(row.base_type, modifier, depth + 1)
            }
            'e' => Ok(PgType::Enum {
                name: row.qualified_name(),
            }),
            'b' if row.category == 'A' && row.element_type != 0 => {
                let element = self.resolve_at(row.element_type, type_modifier, depth + 1);
                if self.carry_unmapped_as_text {
                    let element = element.unwrap_or_else(|inner| PgType::Unmapped {
                        type_name: self.type_name(inner),
                    });
                    Ok(PgType::Array(Box::new(element)))
                } else {
                    Ok(PgType::Array(Box::new(element?)))
                }
            }
            'b' if row.name == "citext" => Ok(PgType::Text),
            _ => Err(oid),
        }
    }

    /// The name of a type for messages: the catalog's, else the built-in table's, else `oid N`.
    pub fn type_name(&self, oid: u32) -> String {
        if let Some(row) = self.catalog.get(&oid) {
            return row.qualified_name();
        }
        if let Some(pg_type) = PgType::from_builtin(oid, -1) {
            return pg_type.to_string();
        }
        if let Some((_, name)) = oids::UNMAPPED_NAMES.iter().find(|(known, _)| *known == oid) {
            return (*name).to_owned();
        }
        format!("oid {oid}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog_row(
        oid: u32,
        name: &str,
        kind: char,
        base: u32,
        typmod: i32,
        elem: u32,
        cat: char,
    ) -> CatalogType {
        CatalogType {
            oid,
            schema: "public".into(),
            name: name.into(),
            kind,
            base_type: base,
            type_modifier: typmod,
            element_type: elem,
            category: cat,
        }
    }

    fn resolver(carry: bool) -> TypeResolver {
        TypeResolver::new(carry).with_catalog([
            catalog_row(16_400, "mood", 'e', 0, -1, 0, 'E'),
            catalog_row(16_401, "_mood", 'b', 0, -1, 16_400, 'A'),
            // domain money_amount as numeric(12,2); domain positive_amount over it
            catalog_row(
                16_402,
                "money_amount",
                'd',
                oids::NUMERIC,
                (12 << 16 | 2) + 4,
                0,
                'N',
            ),
            catalog_row(16_403, "positive_amount", 'd', 16_402, -1, 0, 'N'),
            catalog_row(16_404, "_positive_amount", 'b', 0, -1, 16_403, 'A'),
            catalog_row(16_405, "citext", 'b', 0, -1, 0, 'S'),
            catalog_row(16_406, "geometry", 'b', 0, -1, 0, 'U'),
            catalog_row(16_407, "_geometry", 'b', 0, -1, 16_406, 'A'),
            catalog_row(16_408, "loop", 'd', 16_408, -1, 0, 'N'),
        ])
    }

    #[test]
    fn numeric_typmods_decode_to_precision_and_scale() {
        assert_eq!(
            numeric_from_typmod((10 << 16 | 2) + 4),
            PgType::Numeric {
                precision: 10,
                scale: 2
            }
        );
        assert_eq!(numeric_from_typmod(-1), PgType::NumericUnconstrained);
        // numeric(5,-2): the scale is an 11-bit two's complement number
        assert_eq!(
            numeric_from_typmod((5 << 16 | (-2i32 & 0x7ff)) + 4),
            PgType::Numeric {
                precision: 5,
                scale: -2
            }
        );
    }

    #[test]
    fn varchar_and_char_lengths_come_from_the_typmod() {
        let r = TypeResolver::new(false);
        assert_eq!(
            r.resolve("t", "c", oids::VARCHAR, 24),
            Ok(PgType::Varchar(Some(20)))
        );
        assert_eq!(
            r.resolve("t", "c", oids::VARCHAR, -1),
            Ok(PgType::Varchar(None))
        );
        assert_eq!(
            r.resolve("t", "c", oids::BPCHAR, 7),
            Ok(PgType::Char(Some(3)))
        );
    }

    #[test]
    fn built_in_arrays_resolve_with_the_element_typmod() {
        let r = TypeResolver::new(false);
        assert_eq!(
            r.resolve("t", "c", 1231, (10 << 16 | 2) + 4),
            Ok(PgType::Array(Box::new(PgType::Numeric {
                precision: 10,
                scale: 2
            })))
        );
        assert_eq!(
            r.resolve("t", "c", 1007, -1),
            Ok(PgType::Array(Box::new(PgType::Int4)))
        );
    }

    #[test]
    fn enums_domains_and_their_arrays_resolve_from_the_catalog() {
        let r = resolver(false);
        assert_eq!(
            r.resolve("t", "c", 16_400, -1),
            Ok(PgType::Enum {
                name: "mood".into()
            })
        );
        assert_eq!(
            r.resolve("t", "c", 16_401, -1),
            Ok(PgType::Array(Box::new(PgType::Enum {
                name: "mood".into()
            })))
        );
        let amount = PgType::Numeric {
            precision: 12,
            scale: 2,
        };
        assert_eq!(r.resolve("t", "c", 16_403, -1), Ok(amount.clone()));
        assert_eq!(
            r.resolve("t", "c", 16_404, -1),
            Ok(PgType::Array(Box::new(amount)))
        );
        assert_eq!(r.resolve("t", "c", 16_405, -1), Ok(PgType::Text));
    }

    #[test]
    fn an_unsupported_type_is_an_error_naming_table_column_and_type() {
        let err = resolver(false)
            .resolve("public.places", "shape", 16_406, -1)
            .expect_err("unsupported");
        assert_eq!(err.oid, 16_406);
        let message = err.to_string();
        for part in ["public.places", "\"shape\"", "geometry", "16406"] {
            assert!(message.contains(part), "{message}");
        }
        let err = TypeResolver::new(false)
            .resolve("public.places", "at", 600, -1)
            .expect_err("unsupported");
        assert!(err.to_string().contains("point"), "{err}");
        let err = TypeResolver::new(false)
            .resolve("public.places", "x", 99_999, -1)
            .expect_err("unsupported");
        assert!(err.to_string().contains("oid 99999"), "{err}");
    }

    #[test]
    fn an_array_of_an_unsupported_type_names_the_element_type() {
        let err = resolver(false)
            .resolve("public.places", "shapes", 16_407, -1)
            .expect_err("unsupported");
        assert_eq!(err.type_name, "geometry");
    }

    #[test]
    fn an_unsupported_type_is_carried_as_text_when_asked() {
        let r = resolver(true);
        assert_eq!(
            r.resolve("t", "c", 16_406, -1),
            Ok(PgType::Unmapped {
                type_name: "geometry".into()
            })
        );
        assert_eq!(
            r.resolve("t", "c", 16_407, -1),
            Ok(PgType::Array(Box::new(PgType::Unmapped {
                type_name: "geometry".into()
            })))
        );
        assert_eq!(
            r.resolve("t", "c", 600, -1),
            Ok(PgType::Unmapped {
                type_name: "point".into()
            })
        );
    }

    #[test]
    fn a_cyclic_domain_is_an_error_not_a_stack_overflow() {
        assert!(resolver(false).resolve("t", "c", 16_408, -1).is_err());
    }

    #[test]
    fn types_print_as_postgres_names_them() {
        assert_eq!(
            PgType::Array(Box::new(PgType::Int4)).to_string(),
            "integer[]"
        );
        assert_eq!(
            PgType::Numeric {
                precision: 10,
                scale: 2
            }
            .to_string(),
            "numeric(10,2)"
        );
        assert_eq!(PgType::Varchar(Some(5)).to_string(), "character varying(5)");
    }
}
