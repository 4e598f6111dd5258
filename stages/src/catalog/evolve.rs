//! Schema evolution of a flush's Iceberg table ([`plan`]): what the table's schema must become to hold the rows
//! of the flush's source schema versions, and under which Iceberg name each version's columns are written.
//!
//! Source columns are followed by attribute number (`pg_attribute.attnum`, kept in each version by
//! SchemaResolve), so a renamed column renames its Iceberg field (same field id: old files stay readable under
//! the new name) instead of starting a new one. Which field holds which attnum is kept in the table property
//! [`SOURCE_COLUMNS`] (`relid/attnum=field id,…`), written in the same metadata commit as the schema; a table
//! without it (made before, or by another tool) is matched by name once, then recorded.
//!
//! - A new column is a new optional field (a fresh id).
//! - A type the Iceberg spec can widen is promoted: int→long, float→double, decimal(P,S)→decimal(P',S), P' > P,
//!   also as a list's element type (nested ids kept). A type whose Iceberg type stays the same needs nothing.
//! - A dropped column keeps its field, optional, NULL from then on. If a live column later takes its name (a
//!   re-added column of the same name, a rename onto it), the live one gets a new field under that name and the
//!   dropped one's field is renamed `<name>__dropped` (then `__dropped_2`, …): Iceberg names are unique.
//! - Any other type change is an error for the version that brought it, and so is a narrowed type (bigint →
//!   integer) while the table still has the wider one: the table stops. A table made again from the new
//!   version takes it.
//!
//! Types are taken from the versions the flush writes only (an older version's column of another type was
//! written by an earlier flush, or the Iceberg table was made again since); names from every version up to the
//! newest it writes (a rename in between still renames).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use iceberg::spec::{ListType, NestedField, NestedFieldRef, Schema, Type};
use philotes_schemas::{iceberg_type, ColumnSchema, IcebergType, TableSchema};

use crate::changelog::schema::check_reserved;
use crate::changelog::{iceberg_spec_type, philotes_type, type_name, SchemaError, CHANGELOG_COLUMNS};

/// Table property: which field holds which source column (`relid/attnum=field id`, comma separated).
pub const SOURCE_COLUMNS: &str = "philotes.source-columns";

/// A source column across versions: its relation and attnum, or its name in versions recorded without attnums.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum ColumnKey {
    Attnum(u32, i16),
    Name(String),
}

fn key_of(version: &TableSchema, column: &ColumnSchema) -> ColumnKey {
    key_in(version.relid, column)
}

fn key_in(relid: Option<u32>, column: &ColumnSchema) -> ColumnKey {
    match (relid, column.attnum) {
        (Some(relid), Some(attnum)) => ColumnKey::Attnum(relid, attnum),
        _ => ColumnKey::Name(column.name.clone()),
    }
}

/// What a flush's table must become, and how its versions' columns are named there.
#[derive(Debug)]
pub struct Evolution {
    /// The new current schema (same ids for kept fields), or `None` when the table already has what it needs.
    pub schema: Option<Schema>,
    /// The new value of [`SOURCE_COLUMNS`], or `None` when it stays.
    pub source_columns: Option<String>,
    /// What changes, for the log (`renamed a → b`, `promoted n: int → long`, `added c`).
    pub changes: Vec<String>,
    /// Every version given, its columns renamed to the Iceberg fields that hold them (a column with no field
    /// yet keeps its name).
    pub versions: HashMap<i32, Arc<TableSchema>>,
}

/// A version whose rows the table cannot take.
#[derive(Debug)]
pub struct Refused {
    /// The version.
    pub version: i32,
    /// Why.
    pub error: SchemaError,
}

/// Plans the evolution of a table whose current schema is `current` and [`SOURCE_COLUMNS`] property
/// `recorded`, for a flush writing rows of the versions `used`; `versions` is every version of the table.
pub fn plan(
    current: &Schema,
    recorded: Option<&str>,
    versions: &BTreeMap<i32, Arc<TableSchema>>,
    used: &[i32],
) -> Result<Evolution, Refused> {
    let upto = used.iter().copied().max().unwrap_or_else(|| versions.keys().copied().max().unwrap_or(0));
    for &n in used {
        if let Some(version) = versions.get(&n) {
            check_reserved(version).map_err(|error| Refused { version: n, error })?;
        }
    }
    // Every source column up to `upto`, in order of first appearance, with the names it had (oldest first).
    let mut keys: Vec<ColumnKey> = Vec::new();
    let mut names: HashMap<ColumnKey, Vec<String>> = HashMap::new();
    for version in versions.range(..=upto).map(|(_, v)| v) {
        for column in &version.columns {
            let key = key_of(version, column);
            let had = names.entry(key.clone()).or_insert_with(|| {
                keys.push(key.clone());
                Vec::new()
            });
            if had.last() != Some(&column.name) {
                had.push(column.name.clone());
            }
        }
    }
    let newest = versions.get(&upto);
    let live: HashSet<ColumnKey> = newest.map(|v| v.columns.iter().map(|c| key_of(v, c)).collect()).unwrap_or_default();
    let relid = newest.and_then(|v| v.relid);

    // Which field holds each column: as recorded (same relation), else the field of its name.
    let fields = current.as_struct().fields();
    let field_ids: HashSet<i32> = fields.iter().map(|f| f.id).collect();
    let stored: BTreeMap<ColumnKey, i32> = parse(recorded.unwrap_or(""))
        .into_iter()
        .filter(|(key, id)| matches!(key, ColumnKey::Attnum(r, _) if Some(*r) == relid) && field_ids.contains(id))
        .collect();
    let mut field_of: HashMap<ColumnKey, i32> = HashMap::new();
    let mut taken: HashSet<i32> = HashSet::new();
    for key in &keys {
        if let Some(&id) = stored.get(key) {
            field_of.insert(key.clone(), id);
            taken.insert(id);
        }
    }
    // Only columns of the table's relation now: those of a relation dropped since hold no field of theirs.
    for key in &keys {
        if !matches!(key, ColumnKey::Attnum(r, _) if Some(*r) == relid) || field_of.contains_key(key) {
            continue;
        }
        let adopted = names[key].iter().rev().find_map(|name| {
            let field = current.as_struct().field_by_name(name)?;
            (!taken.contains(&field.id) && !CHANGELOG_COLUMNS.contains(&name.as_str())).then_some(field.id)
        });
        if let Some(id) = adopted {
            field_of.insert(key.clone(), id);
            taken.insert(id);
        }
    }
    // A column of a version without attnums: the field of the attnum that had its name, else its name's field.
    for key in keys.iter().filter(|k| matches!(k, ColumnKey::Name(_))) {
        let ColumnKey::Name(name) = key else { continue };
        let by_attnum = keys
            .iter()
            .filter(|k| matches!(k, ColumnKey::Attnum(..)))
            .find(|k| names[*k].contains(name))
            .and_then(|k| field_of.get(k).copied());
        let by_name = current.as_struct().field_by_name(name).map(|f| f.id);
        if let Some(id) = by_attnum.or(by_name) {
            field_of.insert(key.clone(), id);
        }
    }

    // Types, from the versions written: promote where Iceberg allows, refuse the rest; new columns get a type.
    let mut promoted: HashMap<i32, IcebergType> = HashMap::new();
    let mut added: Vec<(ColumnKey, IcebergType)> = Vec::new();
    for &n in used {
        let Some(version) = versions.get(&n) else { continue };
        for column in &version.columns {
            let key = key_of(version, column);
            let wanted = iceberg_type(&column.pg_type);
            let refused = |have: String| Refused {
                version: n,
                error: SchemaError::IncompatibleType {
                    table: version.qualified_name(),
                    column: column.name.clone(),
                    old_type: have,
                    new_type: format!("{wanted} ({})", column.pg_type),
                },
            };
            match field_of.get(&key) {
                Some(id) => {
                    let field = current.field_by_id(*id).expect("a field of the current schema");
                    let Some(have) = promoted.get(id).cloned().or_else(|| philotes_type(&field.field_type)) else {
                        return Err(refused(type_name(&field.field_type)));
                    };
                    if wanted.can_become(&have) {
                        // An older version's narrower rows fit; a source column narrowed since the previous
                        // version (bigint → integer, a smaller numeric) does not pass unnoticed.
                        let previous = versions.range(..n).rev().find_map(|(_, v)| {
                            v.columns.iter().find(|c| key_of(v, c) == key).map(|c| iceberg_type(&c.pg_type))
                        });
                        match previous {
                            Some(previous) if previous != wanted && wanted.can_become(&previous) && have != wanted => {
                                return Err(refused(previous.to_string()));
                            }
                            _ => continue,
                        }
                    }
                    if !have.can_become(&wanted) {
                        return Err(refused(have.to_string()));
                    }
                    promoted.insert(*id, wanted);
                }
                None => match added.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, have)) if wanted.can_become(have) => {}
                    Some((_, have)) if have.can_become(&wanted) => *have = wanted,
                    Some((_, have)) => return Err(refused(have.to_string())),
                    None => added.push((key, wanted)),
                },
            }
        }
    }

    // Names: fields no column holds keep theirs; live columns take their newest name; a dropped column whose
    // name a live one took moves aside.
    let holder: HashMap<i32, &ColumnKey> = field_of.iter().filter(|(k, _)| matches!(k, ColumnKey::Attnum(..))).map(|(k, id)| (*id, k)).collect();
    let mut claimed: HashSet<String> =
        fields.iter().filter(|f| !holder.contains_key(&f.id)).map(|f| f.name.clone()).collect();
    let newest_name = |key: &ColumnKey| names[key].last().cloned().unwrap_or_default();
    let mut name_of: HashMap<i32, String> = HashMap::new();
    let mut new_name_of: HashMap<ColumnKey, String> = HashMap::new();
    for key in keys.iter().filter(|k| live.contains(*k) && matches!(k, ColumnKey::Attnum(..))) {
        let name = unique(newest_name(key), &claimed);
        claimed.insert(name.clone());
        match field_of.get(key) {
            Some(id) => {
                name_of.insert(*id, name);
            }
            None if added.iter().any(|(k, _)| k == key) => {
                new_name_of.insert(key.clone(), name);
            }
            None => {}
        }
    }
    for key in keys.iter().filter(|k| !live.contains(*k) && matches!(k, ColumnKey::Attnum(..))) {
        let Some(id) = field_of.get(key) else { continue };
        let name = newest_name(key);
        let name = if claimed.contains(&name) { unique(format!("{name}__dropped"), &claimed) } else { name };
        claimed.insert(name.clone());
        name_of.insert(*id, name);
    }

    // The new schema: every field in place (renamed, promoted), then the new ones.
    let mut changes = Vec::new();
    let mut new_fields: Vec<NestedFieldRef> = Vec::with_capacity(fields.len() + added.len());
    for field in fields {
        let mut field = field.as_ref().clone();
        if let Some(name) = name_of.get(&field.id).filter(|n| **n != field.name) {
            changes.push(format!("renamed {} → {name}", field.name));
            field.name = name.clone();
        }
        if let Some(to) = promoted.get(&field.id) {
            changes.push(format!("promoted {}: {} → {to}", field.name, type_name(&field.field_type)));
            field.field_type = Box::new(promote(&field.field_type, to));
        }
        new_fields.push(Arc::new(field));
    }
    let mut next_id = current.highest_field_id();
    for (key, ty) in &added {
        // A live column's name was chosen above; another (a version without attnums, or a column the newest
        // version written dropped) takes its newest name, or a free variant of it.
        let name = match new_name_of.remove(key) {
            Some(name) => name,
            None => unique(newest_name(key), &claimed),
        };
        claimed.insert(name.clone());
        next_id += 1;
        let id = next_id;
        let field_type = iceberg_spec_type(ty, &mut next_id);
        changes.push(format!("added {name} {ty}"));
        field_of.insert(key.clone(), id);
        new_fields.push(Arc::new(NestedField::optional(id, &name, field_type)));
    }
    let schema = if changes.is_empty() {
        None
    } else {
        let schema = Schema::builder()
            .with_schema_id(current.schema_id())
            .with_identifier_field_ids(current.identifier_field_ids())
            .with_fields(new_fields)
            .build()
            .map_err(|e| Refused { version: upto, error: e.into() })?;
        Some(schema)
    };

    // The record of which field holds which column, and each version under the names the table has now.
    let mut record: BTreeMap<ColumnKey, i32> = stored;
    record.extend(field_of.iter().filter(|(k, _)| matches!(k, ColumnKey::Attnum(..))).map(|(k, id)| (k.clone(), *id)));
    let formatted = format(&record);
    let source_columns = (recorded != Some(formatted.as_str()) && !record.is_empty()).then_some(formatted);
    let final_names: HashMap<i32, String> = schema
        .as_ref()
        .unwrap_or(current)
        .as_struct()
        .fields()
        .iter()
        .map(|f| (f.id, f.name.clone()))
        .collect();
    let versions = versions
        .iter()
        .map(|(n, version)| {
            let renamed = version.columns.iter().any(|c| {
                field_of.get(&key_of(version, c)).and_then(|id| final_names.get(id)).is_some_and(|name| *name != c.name)
            });
            if !renamed {
                return (*n, version.clone());
            }
            let mut version = version.as_ref().clone();
            for column in &mut version.columns {
                let key = key_in(version.relid, column);
                if let Some(name) = field_of.get(&key).and_then(|id| final_names.get(id)) {
                    if let Some(key_at) = version.primary_key.iter_mut().find(|k| **k == column.name) {
                        *key_at = name.clone();
                    }
                    column.name = name.clone();
                }
            }
            (*n, Arc::new(version))
        })
        .collect();
    Ok(Evolution { schema, source_columns, changes, versions })
}

/// `name`, or `name_2`, `name_3`, … : the first not in `claimed`.
fn unique(name: String, claimed: &HashSet<String>) -> String {
    if !claimed.contains(&name) {
        return name;
    }
    (2..).map(|n| format!("{name}_{n}")).find(|n| !claimed.contains(n)).expect("some suffix is free")
}

/// `ty` promoted to `to`, nested field ids kept (a list's element).
fn promote(ty: &Type, to: &IcebergType) -> Type {
    match (ty, to) {
        (Type::List(list), IcebergType::List(element)) => {
            let e = &list.element_field;
            Type::List(ListType::new(Arc::new(NestedField::list_element(e.id, promote(&e.field_type, element), e.required))))
        }
        _ => iceberg_spec_type(to, &mut 0),
    }
}

fn parse(text: &str) -> BTreeMap<ColumnKey, i32> {
    text.split(',')
        .filter_map(|entry| {
            let (column, id) = entry.trim().split_once('=')?;
            let (relid, attnum) = column.split_once('/')?;
            Some((ColumnKey::Attnum(relid.parse().ok()?, attnum.parse().ok()?), id.parse().ok()?))
        })
        .collect()
}

fn format(record: &BTreeMap<ColumnKey, i32>) -> String {
    record
        .iter()
        .filter_map(|(key, id)| match key {
            ColumnKey::Attnum(relid, attnum) => Some(format!("{relid}/{attnum}={id}")),
            ColumnKey::Name(_) => None,
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests;
