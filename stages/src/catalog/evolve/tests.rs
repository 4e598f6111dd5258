//! The evolution's decisions on versions with attnums: renames, drops, re-adds, records, other relations.

use std::collections::BTreeMap;
use std::sync::Arc;

use iceberg::spec::Schema;
use philotes_schemas::{oids, ColumnSchema, PgType, ReplicaIdentity, TableSchema};

use super::{plan, Evolution, SOURCE_COLUMNS};
use crate::changelog::changelog_schema;

const RELID: u32 = 16384;

fn col(name: &str, attnum: i16, pg_type: PgType) -> ColumnSchema {
    ColumnSchema { name: name.into(), pg_type, type_oid: oids::INT4, type_modifier: -1, part_of_key: attnum == 1, attnum: Some(attnum) }
}

fn version(relid: u32, columns: Vec<ColumnSchema>) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        schema: "public".into(),
        table: "t".into(),
        columns,
        replica_identity: ReplicaIdentity::Default,
        primary_key: Vec::new(),
        relid: Some(relid),
    })
}

fn numbered(versions: &[Arc<TableSchema>]) -> BTreeMap<i32, Arc<TableSchema>> {
    versions.iter().zip(1..).map(|(v, n)| (n, v.clone())).collect()
}

/// The table made from `versions[0]` with its record, as `Tables::load_or_create` makes it.
fn created(first: &Arc<TableSchema>) -> (Schema, String) {
    let schema = changelog_schema(first).expect("schema");
    let plan = plan(&schema, None, &numbered(std::slice::from_ref(first)), &[]).expect("plan");
    assert!(plan.schema.is_none(), "a new table needs nothing");
    (schema, plan.source_columns.expect("a record"))
}

/// Evolves step by step, a flush per version: the schema and record after the last.
fn flush_each(versions: &[Arc<TableSchema>]) -> (Schema, String, Evolution) {
    let (mut schema, mut record) = created(&versions[0]);
    let all = numbered(versions);
    let mut last = None;
    for n in 1..=versions.len() as i32 {
        let step = plan(&schema, Some(&record), &all, &[n]).expect("evolves");
        if let Some(s) = &step.schema {
            schema = s.clone();
        }
        if let Some(r) = &step.source_columns {
            record = r.clone();
        }
        last = Some(step);
    }
    (schema, record, last.expect("a version"))
}

fn names(schema: &Schema) -> Vec<(i32, String)> {
    schema.as_struct().fields().iter().filter(|f| !f.name.starts_with('_')).map(|f| (f.id, f.name.clone())).collect()
}

#[test]
fn a_new_table_records_which_field_holds_which_attnum() {
    let (_, record) = created(&version(RELID, vec![col("id", 1, PgType::Int4), col("note", 3, PgType::Text)]));
    assert_eq!(record, "16384/1=1,16384/3=2");
    assert_eq!(SOURCE_COLUMNS, "philotes.source-columns");
}

#[test]
fn a_renamed_column_renames_its_field_and_older_versions_write_it() {
    let v1 = version(RELID, vec![col("id", 1, PgType::Int4), col("a", 2, PgType::Text)]);
    let v2 = version(RELID, vec![col("id", 1, PgType::Int4), col("b", 2, PgType::Text)]);
    let v3 = version(RELID, vec![col("id", 1, PgType::Int4), col("c", 2, PgType::Text)]);
    let (schema, _, last) = flush_each(&[v1, v2, v3]);
    assert_eq!(names(&schema), [(1, "id".to_string()), (2, "c".to_string())], "same id, newest name");
    for n in 1..=3 {
        assert_eq!(last.versions[&n].columns[1].name, "c", "version {n} writes the renamed field");
    }
    // Two renames between flushes (v1 rows, then v3 rows) end in the same place.
    let v1 = version(RELID, vec![col("id", 1, PgType::Int4), col("a", 2, PgType::Text)]);
    let (schema0, record) = created(&v1);
    let v3 = version(RELID, vec![col("id", 1, PgType::Int4), col("c", 2, PgType::Text)]);
    let step = plan(&schema0, Some(&record), &numbered(&[v1.clone(), v3]), &[2]).expect("evolves");
    assert_eq!(names(step.schema.as_ref().expect("renamed")), [(1, "id".to_string()), (2, "c".to_string())]);
    assert_eq!(step.changes, ["renamed a → c"]);
    assert!(step.source_columns.is_none(), "the record is unchanged");
}

#[test]
fn a_dropped_column_keeps_its_field_and_a_re_added_name_gets_a_new_one() {
    let v1 = version(RELID, vec![col("id", 1, PgType::Int4), col("x", 2, PgType::Text)]);
    let v2 = version(RELID, vec![col("id", 1, PgType::Int4)]);
    let v3 = version(RELID, vec![col("id", 1, PgType::Int4), col("x", 3, PgType::Int4)]);
    let (schema, record, last) = flush_each(&[v1, v2.clone(), v3]);
    let fields = names(&schema);
    assert!(fields.contains(&(2, "x__dropped".to_string())), "{fields:?}");
    let new_x = schema.as_struct().field_by_name("x").expect("x");
    assert!(new_x.id > 2, "a new field id: {}", new_x.id);
    assert!(record.contains(&format!("16384/3={}", new_x.id)) && record.contains("16384/2=2"), "{record}");
    assert_eq!(last.versions[&1].columns[1].name, "x__dropped", "the old rows' column follows its field");
    assert_eq!(last.versions[&3].columns[1].name, "x");
    // A flush of the version without x changes nothing further.
    let again = plan(&schema, Some(&record), &last.versions.iter().map(|(n, v)| (*n, v.clone())).collect(), &[3]).expect("plan");
    assert!(again.schema.is_none() && again.source_columns.is_none(), "{:?}", again.changes);
    let _ = v2;
}

#[test]
fn a_rename_onto_a_dropped_columns_name_moves_the_dropped_one_aside() {
    let v1 = version(RELID, vec![col("id", 1, PgType::Int4), col("a", 2, PgType::Text), col("b", 3, PgType::Text)]);
    let v2 = version(RELID, vec![col("id", 1, PgType::Int4), col("b", 3, PgType::Text)]);
    let v3 = version(RELID, vec![col("id", 1, PgType::Int4), col("a", 3, PgType::Text)]);
    let (schema, _, _) = flush_each(&[v1, v2, v3]);
    assert_eq!(names(&schema), [(1, "id".to_string()), (2, "a__dropped".to_string()), (3, "a".to_string())]);
}

#[test]
fn a_table_made_again_under_the_same_name_matches_fields_by_name() {
    let old = version(RELID, vec![col("id", 1, PgType::Int4), col("a", 2, PgType::Text)]);
    let (schema, record) = created(&old);
    // The new relation's attnum 2 is another column: the record of the old relation does not apply.
    let new = version(RELID + 1, vec![col("id", 1, PgType::Int4), col("z", 2, PgType::Text), col("a", 3, PgType::Text)]);
    let step = plan(&schema, Some(&record), &numbered(&[old, new]), &[2]).expect("plan");
    let after = step.schema.expect("z added");
    assert_eq!(after.as_struct().field_by_name("a").map(|f| f.id), Some(2), "a keeps its field");
    assert!(after.as_struct().field_by_name("z").is_some_and(|f| f.id > 2));
    assert_eq!(step.source_columns.as_deref(), Some(format!("16385/1=1,16385/2={},16385/3=2", after.as_struct().field_by_name("z").unwrap().id).as_str()));
}

#[test]
fn versions_without_attnums_match_by_name_and_join_the_record_later() {
    let mut legacy = version(RELID, vec![col("id", 1, PgType::Int4), col("a", 2, PgType::Text)]).as_ref().clone();
    legacy.relid = None;
    legacy.columns.iter_mut().for_each(|c| c.attnum = None);
    let legacy = Arc::new(legacy);
    let schema = changelog_schema(&legacy).expect("schema");
    let step = plan(&schema, None, &numbered(std::slice::from_ref(&legacy)), &[1]).expect("plan");
    assert!(step.schema.is_none() && step.source_columns.is_none());
    // The first version with attnums adopts the fields by name, then renames follow the record.
    let v2 = version(RELID, vec![col("id", 1, PgType::Int4), col("a", 2, PgType::Text)]);
    let v3 = version(RELID, vec![col("id", 1, PgType::Int4), col("b", 2, PgType::Text)]);
    let all = numbered(&[legacy, v2, v3]);
    let step = plan(&schema, None, &all, &[2]).expect("plan");
    assert!(step.schema.is_none());
    let record = step.source_columns.expect("recorded");
    let step = plan(&schema, Some(&record), &all, &[3]).expect("plan");
    assert_eq!(names(step.schema.as_ref().expect("renamed")), [(1, "id".to_string()), (2, "b".to_string())]);
    assert_eq!(step.versions[&1].columns[1].name, "b", "the legacy version's a is the renamed field");
}

#[test]
fn a_flush_of_several_versions_adds_each_new_column_under_its_own_name() {
    // A retry's flush may hold rows of several versions: here x (added, then dropped) and y (added after).
    let v1 = version(RELID, vec![col("id", 1, PgType::Int4)]);
    let v2 = version(RELID, vec![col("id", 1, PgType::Int4), col("x", 2, PgType::Text)]);
    let v3 = version(RELID, vec![col("id", 1, PgType::Int4), col("y", 3, PgType::Int4)]);
    let (schema, record) = created(&v1);
    let step = plan(&schema, Some(&record), &numbered(&[v1, v2, v3]), &[2, 3]).expect("plan");
    let after = step.schema.expect("two columns added");
    let x = after.as_struct().field_by_name("x").expect("x");
    let y = after.as_struct().field_by_name("y").expect("y");
    assert_eq!((x.field_type.to_string(), y.field_type.to_string()), ("string".to_string(), "int".to_string()));
    assert_eq!(step.versions[&2].columns[1].name, "x");
    assert_eq!(step.versions[&3].columns[1].name, "y");
}
