//! Row-delta commits against the real iceberg crate, a warehouse in a temporary folder and the SQL catalog in a
//! real PostgreSQL (testkit's cluster, one database per test); tables are read back with the crate's scan.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, Int32Array, RecordBatch, StringArray};
use futures::TryStreamExt;
use iceberg::arrow::{arrow_schema_to_schema, schema_to_arrow_schema};
use iceberg::spec::{
    DataContentType, DataFile, DataFileFormat, ManifestContentType, ManifestStatus, NestedField, Operation, PrimitiveType,
    Schema, Type,
};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::base_writer::equality_delete_writer::{EqualityDeleteFileWriterBuilder, EqualityDeleteWriterConfig};
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use iceberg::{Catalog, NamespaceIdent, TableCreation, TableIdent};
use parquet::file::properties::WriterProperties;
use philotes_testkit::TestDatabase;

use super::{commit_metadata_sql, commit_row_delta_sql, commit_sql, stage, stage_rewrite, RowDelta, RowDeltaError};
use crate::catalog::{CatalogSettings, SUMMARY_LAST_LSN, SUMMARY_LAST_SEQ};

pub(crate) const CATALOG: &str = "philotes";
/// Field id of the key column `id`.
const ID: i32 = 1;

/// One test's catalog database, warehouse folder and table `mirror.t` (`id int` required key, `v string`).
/// Shared with the maintenance tests (compaction and expiry commit through this module).
pub(crate) struct Fixture {
    pub(crate) db: TestDatabase,
    pub(crate) warehouse: PathBuf,
    pub(crate) catalog: Arc<dyn Catalog>,
    pub(crate) client: tokio_postgres::Client,
    pub(crate) ident: TableIdent,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.warehouse);
    }
}

impl Fixture {
    pub(crate) async fn new(hint: &str) -> Self {
        let db = philotes_testkit::shared().database(hint).expect("test database");
        let warehouse = std::env::temp_dir().join(format!("philotes-row-delta-{hint}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&warehouse);
        std::fs::create_dir_all(&warehouse).expect("warehouse folder");
        let settings = CatalogSettings::Sql {
            name: CATALOG.into(),
            uri: db.url(),
            warehouse: format!("file://{}", warehouse.display()),
            props: HashMap::new(),
        };
        let catalog = crate::catalog::connect(&settings).await.expect("SQL catalog");
        let namespace = NamespaceIdent::new("mirror".into());
        catalog.create_namespace(&namespace, HashMap::new()).await.expect("namespace");
        let schema = Schema::builder()
            .with_fields(vec![
                NestedField::required(ID, "id", Type::Primitive(PrimitiveType::Int)).into(),
                NestedField::optional(2, "v", Type::Primitive(PrimitiveType::String)).into(),
            ])
            .with_identifier_field_ids(vec![ID])
            .build()
            .expect("schema");
        let creation = TableCreation::builder().name("t".into()).schema(schema).build();
        catalog.create_table(&namespace, creation).await.expect("table");
        let client = db.connect().await.expect("catalog connection");
        Self { db, warehouse, catalog, client, ident: TableIdent::new(namespace, "t".into()) }
    }

    pub(crate) async fn load(&self) -> Table {
        self.catalog.load_table(&self.ident).await.expect("load table")
    }

    pub(crate) async fn commit(&self, base: &Table, delta: RowDelta) -> Result<Table, RowDeltaError> {
        commit_row_delta_sql(&self.client, CATALOG, base, delta).await
    }
}

/// A batch of the table's schema.
pub(crate) fn rows(table: &Table, rows: &[(i32, &str)]) -> RecordBatch {
    let schema = Arc::new(schema_to_arrow_schema(table.metadata().current_schema()).expect("arrow schema"));
    let ids = Int32Array::from_iter_values(rows.iter().map(|r| r.0));
    let values = StringArray::from_iter_values(rows.iter().map(|r| r.1));
    RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(values)]).expect("batch")
}

/// A file-name generator of its own per file, so files of two writers never collide.
fn names(prefix: &str) -> DefaultFileNameGenerator {
    DefaultFileNameGenerator::new(format!("{prefix}-{}", uuid::Uuid::new_v4()), None, DataFileFormat::Parquet)
}

/// A data file holding `data`, written with the crate's data-file writer.
pub(crate) async fn data_file(table: &Table, data: &[(i32, &str)]) -> DataFile {
    let parquet = ParquetWriterBuilder::new(WriterProperties::default(), table.metadata().current_schema().clone());
    let locations = DefaultLocationGenerator::new(table.metadata()).expect("locations");
    let rolling =
        RollingFileWriterBuilder::new_with_default_file_size(parquet, table.file_io().clone(), locations, names("data"));
    let mut writer = DataFileWriterBuilder::new(rolling).build(None).await.expect("data writer");
    writer.write(rows(table, data)).await.expect("write data");
    let mut files = writer.close().await.expect("close data writer");
    assert_eq!(files.len(), 1);
    files.remove(0)
}

/// An equality-delete file on `id` for `ids`, written with the crate's equality-delete writer.
pub(crate) async fn equality_delete(table: &Table, ids: &[i32]) -> DataFile {
    let schema = table.metadata().current_schema().clone();
    let config = EqualityDeleteWriterConfig::new(vec![ID], schema).expect("delete config");
    let delete_schema = arrow_schema_to_schema(config.projected_arrow_schema_ref()).expect("delete schema");
    let parquet = ParquetWriterBuilder::new(WriterProperties::default(), Arc::new(delete_schema));
    let locations = DefaultLocationGenerator::new(table.metadata()).expect("locations");
    let rolling = RollingFileWriterBuilder::new_with_default_file_size(
        parquet,
        table.file_io().clone(),
        locations,
        names("eq-delete"),
    );
    let mut writer = EqualityDeleteFileWriterBuilder::new(rolling, config).build(None).await.expect("delete writer");
    let keys: Vec<(i32, &str)> = ids.iter().map(|id| (*id, "")).collect();
    writer.write(rows(table, &keys)).await.expect("write deletes");
    let mut files = writer.close().await.expect("close delete writer");
    assert_eq!(files.len(), 1);
    files.remove(0)
}

/// The table's rows as the crate's scan reads them (deletes applied), by id.
pub(crate) async fn scan(table: &Table) -> Vec<(i32, String)> {
    let batches: Vec<RecordBatch> = table
        .scan()
        .build()
        .expect("scan")
        .to_arrow()
        .await
        .expect("arrow stream")
        .try_collect()
        .await
        .expect("read");
    let mut out = Vec::new();
    for batch in batches {
        let ids = batch.column_by_name("id").expect("id").as_any().downcast_ref::<Int32Array>().expect("int").clone();
        let values = batch.column_by_name("v").expect("v").as_any().downcast_ref::<StringArray>().expect("str").clone();
        for i in 0..batch.num_rows() {
            out.push((ids.value(i), if values.is_null(i) { String::new() } else { values.value(i).to_string() }));
        }
    }
    out.sort();
    out
}

pub(crate) fn owned(rows: &[(i32, &str)]) -> Vec<(i32, String)> {
    rows.iter().map(|(id, v)| (*id, (*v).to_string())).collect()
}

pub(crate) fn positions(lsn: &str, seq: u64) -> HashMap<String, String> {
    HashMap::from([(SUMMARY_LAST_LSN.to_string(), lsn.to_string()), (SUMMARY_LAST_SEQ.to_string(), seq.to_string())])
}

/// `properties` plus counts a caller must not be able to set (the commit computes them).
fn bogus_counts(mut properties: HashMap<String, String>) -> HashMap<String, String> {
    for (key, value) in [("added-records", "42"), ("total-records", "999"), ("deleted-data-files", "3")] {
        properties.insert(key.to_string(), value.to_string());
    }
    properties
}

/// The current snapshot's summary value for `key` (None when absent).
pub(crate) fn summary(table: &Table, key: &str) -> Option<String> {
    table.metadata().current_snapshot().expect("snapshot").summary().additional_properties.get(key).cloned()
}

fn summary_counts(table: &Table, keys: &[(&str, &str)]) {
    for (key, expected) in keys {
        assert_eq!(summary(table, key).as_deref(), Some(*expected), "summary {key}");
    }
}

const ROWS_A: [(i32, &str); 5] = [(1, "a1"), (2, "a2"), (3, "a3"), (4, "a4"), (5, "a5")];
const ROWS_B: [(i32, &str); 2] = [(3, "b3"), (6, "b6")];

/// Commits data file A (ids 1..=5), then data file B (ids 3, 6) with an equality delete of ids {3, 4}.
pub(crate) async fn commit_a_then_b_with_deletes(fx: &Fixture) -> (Table, Table) {
    let empty = fx.load().await;
    let a = data_file(&empty, &ROWS_A).await;
    let first = fx
        .commit(&empty, RowDelta { data_files: vec![a], properties: bogus_counts(positions("0/10", 1)), ..RowDelta::default() })
        .await
        .expect("first commit");
    let b = data_file(&first, &ROWS_B).await;
    let deletes = equality_delete(&first, &[3, 4]).await;
    let second = fx
        .commit(
            &first,
            RowDelta { data_files: vec![b], delete_files: vec![deletes], properties: positions("0/20", 7), ..RowDelta::default() },
        )
        .await
        .expect("second commit");
    (first, second)
}

#[tokio::test]
async fn row_delta_equality_deletes_hit_only_older_data_and_the_summary_counts_right() {
    let fx = Fixture::new("row_delta_eq").await;
    let (first, second) = commit_a_then_b_with_deletes(&fx).await;

    // The catalog points at the second commit, and the scan applies the deletes to A only: 3 comes from B.
    let loaded = fx.load().await;
    assert_eq!(loaded.metadata_location(), second.metadata_location());
    assert_eq!(scan(&loaded).await, owned(&[(1, "a1"), (2, "a2"), (3, "b3"), (5, "a5"), (6, "b6")]));
    assert_eq!(scan(&first).await, owned(&ROWS_A));

    let one = first.metadata().current_snapshot().expect("first snapshot").clone();
    let two = loaded.metadata().current_snapshot().expect("second snapshot").clone();
    assert_eq!(one.summary().operation, Operation::Append);
    assert_eq!(two.summary().operation, Operation::Overwrite);
    assert_eq!(one.sequence_number(), 1);
    assert_eq!(two.sequence_number(), 2);
    assert_eq!(two.parent_snapshot_id(), Some(one.snapshot_id()));
    assert_eq!(loaded.metadata().last_sequence_number(), 2);
    summary_counts(
        &first,
        &[("total-records", "5"), ("total-data-files", "1"), ("total-delete-files", "0"), ("added-records", "5")],
    );
    assert_eq!(summary(&first, "deleted-data-files"), None);
    summary_counts(
        &loaded,
        &[
            ("total-records", "7"),
            ("total-data-files", "2"),
            ("total-delete-files", "1"),
            ("total-equality-deletes", "2"),
            ("total-position-deletes", "0"),
            ("added-data-files", "1"),
            ("added-records", "2"),
            ("added-delete-files", "1"),
            ("added-equality-delete-files", "1"),
            ("added-equality-deletes", "2"),
            (SUMMARY_LAST_LSN, "0/20"),
            (SUMMARY_LAST_SEQ, "7"),
        ],
    );
    let size = |t: &Table| summary(t, "total-files-size").expect("total-files-size").parse::<u64>().expect("number");
    assert!(size(&loaded) > size(&first));

    // The parent's manifest is carried as it was; the new ones carry sequence number 2, and their entries
    // inherit it (written without one).
    let first_list = first.manifest_list_reader(&one).load().await.expect("first list");
    let second_list = loaded.manifest_list_reader(&two).load().await.expect("second list");
    assert_eq!(first_list.entries().len(), 1);
    assert_eq!(second_list.entries().len(), 3);
    assert!(second_list.entries().contains(&first_list.entries()[0]));
    let new: Vec<_> = second_list.entries().iter().filter(|m| m.added_snapshot_id == two.snapshot_id()).collect();
    assert_eq!(new.len(), 2);
    for manifest_file in new {
        assert_eq!(manifest_file.sequence_number, 2);
        let manifest = manifest_file.load_manifest(loaded.file_io()).await.expect("manifest");
        for entry in manifest.entries() {
            assert_eq!(entry.status(), ManifestStatus::Added);
            assert_eq!(entry.sequence_number(), Some(2));
            assert_eq!(entry.snapshot_id(), Some(two.snapshot_id()));
            if entry.content_type() == DataContentType::EqualityDeletes {
                assert_eq!(entry.data_file().equality_ids(), Some(vec![ID]));
            }
        }
    }
}

#[tokio::test]
async fn row_delta_on_a_stale_base_is_refused_and_leaves_the_first_commit_alone() {
    let fx = Fixture::new("row_delta_stale").await;
    let one = fx.load().await;
    let two = fx.load().await;
    let mine = data_file(&one, &[(1, "first")]).await;
    let theirs = data_file(&two, &[(1, "second")]).await;
    let committed = fx
        .commit(&one, RowDelta { data_files: vec![mine], properties: positions("0/10", 1), ..RowDelta::default() })
        .await
        .expect("first commit");

    let refused = fx
        .commit(&two, RowDelta { data_files: vec![theirs], properties: positions("0/10", 1), ..RowDelta::default() })
        .await;
    match refused {
        Err(RowDeltaError::StaleBase { table, base }) => {
            assert_eq!(table, fx.ident);
            assert_eq!(Some(base.as_str()), two.metadata_location());
        }
        other => panic!("expected a stale base, got {other:?}"),
    }
    let loaded = fx.load().await;
    assert_eq!(loaded.metadata_location(), committed.metadata_location());
    assert_eq!(loaded.metadata().snapshots().count(), 1);
    assert_eq!(scan(&loaded).await, owned(&[(1, "first")]));

    // Rebuilt on the new state, the second writer lands.
    let again = data_file(&loaded, &[(2, "second")]).await;
    let rebuilt = fx
        .commit(&loaded, RowDelta { data_files: vec![again], properties: positions("0/20", 1), ..RowDelta::default() })
        .await
        .expect("rebuilt commit");
    assert_eq!(scan(&rebuilt).await, owned(&[(1, "first"), (2, "second")]));
}

#[tokio::test]
async fn row_delta_remove_all_empties_the_table_and_zeroes_the_totals() {
    let fx = Fixture::new("row_delta_truncate").await;
    let (_, second) = commit_a_then_b_with_deletes(&fx).await;
    let old_files: Vec<String> = {
        let snapshot = second.metadata().current_snapshot().expect("snapshot");
        let list = second.manifest_list_reader(snapshot).load().await.expect("list");
        let mut paths = Vec::new();
        for m in list.entries() {
            for e in m.load_manifest(second.file_io()).await.expect("manifest").entries() {
                paths.push(e.file_path().to_string());
            }
        }
        paths.sort();
        paths
    };
    assert_eq!(old_files.len(), 3);

    let truncated = fx
        .commit(&second, RowDelta { remove_all: true, properties: positions("0/30", 1), ..RowDelta::default() })
        .await
        .expect("truncate");
    let loaded = fx.load().await;
    assert_eq!(loaded.metadata_location(), truncated.metadata_location());
    assert_eq!(scan(&loaded).await, Vec::new());
    let snapshot = loaded.metadata().current_snapshot().expect("snapshot").clone();
    assert_eq!(snapshot.summary().operation, Operation::Delete);
    summary_counts(
        &loaded,
        &[
            ("total-records", "0"),
            ("total-data-files", "0"),
            ("total-delete-files", "0"),
            ("total-equality-deletes", "0"),
            ("total-files-size", "0"),
            ("deleted-data-files", "2"),
            ("deleted-records", "7"),
            ("removed-delete-files", "1"),
            ("removed-equality-deletes", "2"),
            (SUMMARY_LAST_LSN, "0/30"),
        ],
    );
    // No parent manifest is carried; every old file appears once, as deleted, with its sequence numbers.
    let list = loaded.manifest_list_reader(&snapshot).load().await.expect("list");
    let mut removed = Vec::new();
    for m in list.entries() {
        assert_eq!(m.added_snapshot_id, snapshot.snapshot_id());
        for e in m.load_manifest(loaded.file_io()).await.expect("manifest").entries() {
            assert_eq!(e.status(), ManifestStatus::Deleted);
            assert!(matches!(e.sequence_number(), Some(1 | 2)));
            removed.push(e.file_path().to_string());
        }
    }
    removed.sort();
    assert_eq!(removed, old_files);

    // A truncate followed by inserts in one flush: the new rows are all the table has.
    let fresh = data_file(&loaded, &[(9, "after")]).await;
    let refilled = fx
        .commit(&loaded, RowDelta { remove_all: true, data_files: vec![fresh], ..RowDelta::default() })
        .await
        .expect("truncate and insert");
    assert_eq!(scan(&refilled).await, owned(&[(9, "after")]));
    summary_counts(&refilled, &[("total-records", "1"), ("total-data-files", "1"), ("total-delete-files", "0")]);
    assert_eq!(refilled.metadata().current_snapshot().expect("snapshot").summary().operation, Operation::Overwrite);
}

#[tokio::test]
async fn row_delta_refuses_a_data_file_given_as_a_delete_file() {
    let fx = Fixture::new("row_delta_invalid").await;
    let base = fx.load().await;
    let file = data_file(&base, &[(1, "x")]).await;
    let refused = stage(&base, RowDelta { delete_files: vec![file], ..RowDelta::default() }).await;
    assert!(matches!(refused, Err(RowDeltaError::Invalid { .. })), "{refused:?}");
    assert_eq!(fx.load().await.metadata_location(), base.metadata_location());
}

#[tokio::test]
async fn row_delta_rewrite_replaces_every_live_file_in_one_replace_snapshot() {
    let fx = Fixture::new("row_delta_rewrite").await;
    let (_, second) = commit_a_then_b_with_deletes(&fx).await;
    let rows = scan(&second).await;
    let borrowed: Vec<(i32, &str)> = rows.iter().map(|(id, v)| (*id, v.as_str())).collect();
    let compacted = data_file(&second, &borrowed).await;

    let staged = stage_rewrite(&second, vec![compacted], positions("0/20", 7)).await.expect("stage");
    // Manifests, the manifest list and the metadata JSON are written before the commit, nothing is visible yet.
    let written = staged.written_files().to_vec();
    assert_eq!(written.len(), 6, "three manifests of removed files, one of the new file, a list, a JSON: {written:?}");
    assert!(written.iter().any(|p| p.ends_with(".metadata.json")) && written.iter().any(|p| p.contains("/snap-")));
    for path in &written {
        assert!(second.file_io().exists(path).await.expect("exists"), "{path} is written");
    }
    assert_eq!(fx.load().await.metadata_location(), second.metadata_location());

    let committed = commit_sql(&fx.client, CATALOG, staged).await.expect("commit");
    let loaded = fx.load().await;
    assert_eq!(loaded.metadata_location(), committed.metadata_location());
    assert_eq!(scan(&loaded).await, rows);
    let snapshot = loaded.metadata().current_snapshot().expect("snapshot").clone();
    assert_eq!(snapshot.summary().operation, Operation::Replace);
    summary_counts(
        &loaded,
        &[
            ("total-data-files", "1"),
            ("total-delete-files", "0"),
            ("total-records", "5"),
            ("total-equality-deletes", "0"),
            ("added-data-files", "1"),
            ("deleted-data-files", "2"),
            ("removed-delete-files", "1"),
            (SUMMARY_LAST_LSN, "0/20"),
            (SUMMARY_LAST_SEQ, "7"),
        ],
    );
}

#[tokio::test]
async fn row_delta_metadata_commit_lands_only_on_its_base_and_leaves_no_file_when_refused() {
    let fx = Fixture::new("row_delta_metadata").await;
    let base = fx.load().await;
    let with_property = |table: &Table| {
        let location = table.metadata_location().expect("location").to_string();
        let properties = HashMap::from([("philotes.test".to_string(), "set".to_string())]);
        table.metadata().clone().into_builder(Some(location)).set_properties(properties).expect("property").build().expect("build").metadata
    };
    let metadata_files = || {
        let dir = fx.warehouse.join("mirror/t/metadata");
        std::fs::read_dir(dir).expect("metadata dir").filter(|e| {
            e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".metadata.json"))
        }).count()
    };
    // Another commit lands first: the change is refused and its JSON deleted again.
    let (_, moved) = commit_a_then_b_with_deletes(&fx).await;
    let files = metadata_files();
    let refused = commit_metadata_sql(&fx.client, CATALOG, &base, with_property(&base)).await;
    assert!(matches!(refused, Err(RowDeltaError::StaleBase { .. })), "{refused:?}");
    assert_eq!(metadata_files(), files, "the refused metadata JSON is deleted");
    assert_eq!(fx.load().await.metadata_location(), moved.metadata_location());

    // On the current state it lands, with the snapshots untouched.
    let committed = commit_metadata_sql(&fx.client, CATALOG, &moved, with_property(&moved)).await.expect("commit");
    let loaded = fx.load().await;
    assert_eq!(loaded.metadata_location(), committed.metadata_location());
    assert_eq!(loaded.metadata().properties().get("philotes.test").map(String::as_str), Some("set"));
    assert_eq!(loaded.metadata().current_snapshot_id(), moved.metadata().current_snapshot_id());
    assert_eq!(scan(&loaded).await, scan(&moved).await);
}

/// DuckDB 1.5.5's `iceberg_scan` (the venv `.ci/run` makes, or `PHILOTES_PYTHON`), offline with the extensions
/// from their PyPI packages: the rows of the table at `metadata_location`, one `id|v` line each, sorted.
pub(crate) fn duckdb_rows(metadata_location: &str) -> Vec<String> {
    let script = r#"
import pathlib, sys, duckdb, duckdb_extension_avro, duckdb_extension_iceberg
ext = lambda m, n: pathlib.Path(m.__file__).parent / "extensions" / f"v{duckdb.__version__}" / f"{n}.duckdb_extension"
con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
con.execute(f"LOAD '{ext(duckdb_extension_avro, 'avro')}'"); con.execute(f"LOAD '{ext(duckdb_extension_iceberg, 'iceberg')}'")
for id, v in con.sql(f"SELECT id, v FROM iceberg_scan('{sys.argv[1]}') ORDER BY id").fetchall():
    print(f"{id}|{v}")
"#;
    python_lines("DuckDB", script, &[metadata_location])
}

/// pyiceberg 0.12 (the venv `.ci/run` makes, or `PHILOTES_PYTHON`), through the SQL catalog in the fixture's
/// database: the rows of `mirror.t`, one `id|v` line each, sorted; `Err` with pyiceberg's message when it
/// refuses the table (it does not apply equality deletes).
pub(crate) fn pyiceberg_rows(fx: &Fixture) -> Result<Vec<String>, String> {
    let script = r#"
import sys
from pyiceberg.catalog.sql import SqlCatalog
uri = "postgresql+psycopg2://" + sys.argv[1][len("postgres://"):]
table = SqlCatalog(sys.argv[2], uri=uri).load_table(("mirror", "t"))
for row in sorted(table.scan().to_arrow().to_pylist(), key=lambda r: r["id"]):
    print(f"{row['id']}|{row['v']}")
"#;
    python_output(script, &[&fx.db.url(), CATALOG])
}

/// Runs `script` with the venv's Python and returns its output lines, failing the test when it fails.
fn python_lines(what: &str, script: &str, args: &[&str]) -> Vec<String> {
    python_output(script, args).unwrap_or_else(|stderr| panic!("{what} failed: {stderr}"))
}

/// Runs `script` with the venv's Python: its output lines, or its stderr when it fails. A missing Python fails
/// the test (never a skip).
fn python_output(script: &str, args: &[&str]) -> Result<Vec<String>, String> {
    let python = std::env::var("PHILOTES_PYTHON").unwrap_or_else(|_| "/var/tmp/philotes-venv/bin/python".into());
    let output = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {python} (make the venv with .ci/run or set PHILOTES_PYTHON): {e}"));
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).collect())
}

#[tokio::test]
async fn row_delta_is_read_the_same_by_duckdb() {
    let fx = Fixture::new("row_delta_duckdb").await;
    let (_, second) = commit_a_then_b_with_deletes(&fx).await;
    let location = second.metadata_location().expect("metadata location");
    assert_eq!(duckdb_rows(location), ["1|a1", "2|a2", "3|b3", "5|a5", "6|b6"]);
    let truncated = fx
        .commit(&second, RowDelta { remove_all: true, ..RowDelta::default() })
        .await
        .expect("truncate");
    assert_eq!(duckdb_rows(truncated.metadata_location().expect("metadata location")), Vec::<String>::new());
}

/// A partitioned table: the flush's writers give a data file per partition (default spec) and global equality
/// deletes (the table's unpartitioned spec); the commit writes a manifest per spec, and the deletes hit rows of
/// every partition. A data file without the default spec's partition values is refused.
#[tokio::test]
async fn row_delta_on_a_partitioned_table_writes_a_manifest_per_spec_and_global_deletes() {
    use iceberg::spec::{Transform, UnboundPartitionSpec};

    use crate::iceberg_commit::writer;

    let fx = Fixture::new("row_delta_partitioned").await;
    let table = fx.load().await;
    let location = table.metadata_location_result().expect("location").to_string();
    let spec = UnboundPartitionSpec::builder().add_partition_field(ID, "id_bucket", Transform::Bucket(2)).expect("field").build();
    let built = table.metadata().clone().into_builder(Some(location)).add_partition_spec(spec).expect("spec");
    let built = built.set_default_partition_spec(-1).expect("default").build().expect("metadata");
    let table = commit_metadata_sql(&fx.client, CATALOG, &table, built.metadata).await.expect("new spec");
    let partitioned = table.metadata().default_partition_spec_id();
    assert_ne!(partitioned, 0);

    let plain = data_file(&table, &[(1, "x")]).await;
    let refused = stage(&table, RowDelta { data_files: vec![plain], ..Default::default() }).await;
    assert!(matches!(&refused, Err(RowDeltaError::Invalid { reason, .. }) if reason.contains("carries 0 partition values")), "{refused:?}");

    let data: Vec<(i32, &str)> = (1..=8).map(|id| (id, "v")).collect();
    let mut writer = writer::open("test", &table, &rows(&table, &data), 1 << 20).await.expect("data writer");
    writer.write(rows(&table, &data)).await.expect("write");
    let files = writer.close().await.expect("close");
    assert!(files.len() > 1, "a file per bucket: {}", files.len());
    assert!(files.iter().all(|f| f.partition().fields().len() == 1));
    let first = fx.commit(&table, RowDelta { data_files: files, properties: positions("0/10", 1), ..Default::default() }).await.expect("data");

    let mut deletes = writer::open_equality_deletes("test", &first, &[ID], 1 << 20).await.expect("delete writer");
    let gone: Vec<(i32, &str)> = (1..=7).map(|id| (id, "")).collect();
    deletes.write(rows(&first, &gone)).await.expect("write deletes");
    let delete_files = deletes.close().await.expect("close deletes");
    assert!(delete_files.iter().all(|f| f.partition().fields().is_empty()), "global deletes");
    let second =
        fx.commit(&first, RowDelta { delete_files, properties: positions("0/20", 2), ..Default::default() }).await.expect("deletes");
    // Row 8 is in one bucket; the other bucket's rows are all deleted: the deletes hit both.
    assert_eq!(scan(&second).await, owned(&[(8, "v")]));

    let snapshot = second.metadata().current_snapshot().expect("snapshot").clone();
    let list = second.manifest_list_reader(&snapshot).load().await.expect("list");
    let specs: Vec<(ManifestContentType, i32)> = list.entries().iter().map(|m| (m.content, m.partition_spec_id)).collect();
    assert!(specs.contains(&(ManifestContentType::Data, partitioned)), "{specs:?}");
    assert!(specs.contains(&(ManifestContentType::Deletes, 0)), "{specs:?}");
}
