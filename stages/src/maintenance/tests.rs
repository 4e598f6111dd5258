//! Compaction and expiry against the real iceberg crate, a warehouse in a temporary folder and the SQL catalog in
//! a real PostgreSQL (the row-delta tests' fixture: table `mirror.t`, `id int` key, `v string`); tables are read
//! back with the crate's scan, with pyiceberg and with DuckDB.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use iceberg::spec::Operation;
use iceberg::table::Table;

use super::compact::{compact, compact_with, CompactOptions, CompactReport};
use super::expire::expire;
use super::{manifests, FileCounts, MaintenanceCatalog};
use crate::catalog::{committed_position, SUMMARY_PIPELINE};
use crate::iceberg_commit::row_delta::tests::{
    data_file, duckdb_rows, equality_delete, owned, positions, pyiceberg_rows, scan, summary, Fixture, CATALOG,
};
use crate::iceberg_commit::row_delta::RowDelta;
use crate::position::{Lsn, Position};

const PIPELINE: &str = "p";

/// The pipeline's position properties, as a flush writes them.
fn position(lsn: &str, seq: u64) -> HashMap<String, String> {
    let mut properties = positions(lsn, seq);
    properties.insert(SUMMARY_PIPELINE.to_string(), PIPELINE.to_string());
    properties
}

fn at(lsn: &str, seq: u64) -> Option<Position> {
    Some(Position::new(lsn.parse::<Lsn>().expect("lsn"), seq))
}

/// One commit of `data` and equality deletes of `deleted` on the table as it is now.
async fn commit(fx: &Fixture, data: &[(i32, &str)], deleted: &[i32], properties: HashMap<String, String>) -> Table {
    let base = fx.load().await;
    let data_files = if data.is_empty() { Vec::new() } else { vec![data_file(&base, data).await] };
    let delete_files = if deleted.is_empty() { Vec::new() } else { vec![equality_delete(&base, deleted).await] };
    fx.commit(&base, RowDelta { data_files, delete_files, remove_all: false, properties }).await.expect("commit")
}

/// Four flushes of a mirror table: 4 data files, 3 equality-delete files (updates of 3, 2 and deletes of 4, 1).
async fn mirror_table(fx: &Fixture) -> Vec<(i32, String)> {
    commit(fx, &[(1, "a1"), (2, "a2"), (3, "a3"), (4, "a4"), (5, "a5")], &[], position("0/10", 1)).await;
    commit(fx, &[(3, "b3"), (6, "b6")], &[3, 4], position("0/20", 3)).await;
    commit(fx, &[(7, "c7"), (8, "c8"), (9, "c9")], &[1], position("0/30", 2)).await;
    commit(fx, &[(2, "d2")], &[2], position("0/40", 4)).await;
    let expected = owned(&[(2, "d2"), (3, "b3"), (5, "a5"), (6, "b6"), (7, "c7"), (8, "c8"), (9, "c9")]);
    assert_eq!(scan(&fx.load().await).await, expected, "the crate applies the deletes");
    expected
}

async fn maintenance_catalog(fx: &Fixture) -> MaintenanceCatalog {
    MaintenanceCatalog::new(fx.catalog.clone(), fx.db.connect().await.expect("catalog connection"), CATALOG)
}

fn options(min_files: usize) -> CompactOptions {
    CompactOptions { pipeline: PIPELINE.into(), min_files, target_file_size: 512 << 20 }
}

/// `id|v` lines, as the Python readers print them.
fn lines(rows: &[(i32, String)]) -> Vec<String> {
    rows.iter().map(|(id, v)| format!("{id}|{v}")).collect()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> HashSet<String> {
    let mut out = HashSet::new();
    for entry in std::fs::read_dir(dir).expect("readable dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.insert(path.display().to_string());
        }
    }
    out
}

/// Paths of every file the table's snapshots read (live entries), manifest and manifest list, as local paths.
async fn referenced_files(table: &Table) -> HashSet<String> {
    let mut out = HashSet::new();
    for snapshot in table.metadata().snapshots() {
        out.insert(local(snapshot.manifest_list()));
        for manifest in manifests(table, snapshot).await.expect("manifests") {
            out.insert(local(&manifest.manifest_path));
            for entry in manifest.load_manifest(table.file_io()).await.expect("manifest").entries() {
                if entry.is_alive() {
                    out.insert(local(entry.file_path()));
                }
            }
        }
    }
    out
}

fn local(location: &str) -> String {
    location.strip_prefix("file://").unwrap_or(location).to_string()
}

/// Manifest lists (`snap-*.avro`) and metadata JSON files in the table's metadata folder.
fn metadata_folder(fx: &Fixture) -> (usize, usize) {
    let files = files_under(&fx.warehouse.join("mirror/t/metadata"));
    let lists = files.iter().filter(|f| f.contains("/snap-")).count();
    let json = files.iter().filter(|f| f.ends_with(".metadata.json")).count();
    (lists, json)
}

fn assert_compacted(report: &CompactReport, rows: u64) {
    let after = report.after.expect("compacted");
    assert_eq!((after.data, after.deletes), (1, 0), "{report}");
    assert_eq!(report.rows, rows, "{report}");
}

#[tokio::test]
async fn compaction_rewrites_deletes_away_into_one_file_that_pyiceberg_reads() {
    let fx = Fixture::new("compact_mirror").await;
    let expected = mirror_table(&fx).await;
    let catalog = maintenance_catalog(&fx).await;
    let before = fx.load().await;
    let refusal = pyiceberg_rows(&fx).expect_err("pyiceberg 0.12 refuses equality deletes");
    assert!(refusal.contains("equality delete"), "{refusal}");

    // Fewer files than min_files: left as it is.
    let skipped = compact(&catalog, &fx.ident, &options(8)).await.expect("compact");
    assert!(skipped.after.is_none(), "{skipped}");
    assert_eq!(skipped.before, FileCounts { data: 4, deletes: 3, bytes: skipped.before.bytes, records: 11 });
    assert_eq!(fx.load().await.metadata_location(), before.metadata_location());
    assert!(skipped.to_string().starts_with("not compacted (4 data files and 3 delete files, fewer than min_files 8)"), "{skipped}");

    let report = compact(&catalog, &fx.ident, &options(7)).await.expect("compact");
    assert_compacted(&report, 7);
    assert_eq!(report.attempts, 1);
    assert_eq!(report.position, at("0/40", 4));
    assert!(report.to_string().starts_with("compacted 4 data files and 3 delete files ("), "{report}");
    let loaded = fx.load().await;
    assert_eq!(scan(&loaded).await, expected);
    let snapshot = loaded.metadata().current_snapshot().expect("snapshot").clone();
    assert_eq!(snapshot.summary().operation, Operation::Replace);
    assert_eq!(snapshot.parent_snapshot_id(), before.metadata().current_snapshot_id());
    assert_eq!(summary(&loaded, SUMMARY_PIPELINE).as_deref(), Some(PIPELINE));
    assert_eq!(committed_position(&loaded, PIPELINE), at("0/40", 4));
    assert_eq!(FileCounts::of(&loaded).await.expect("counts"), report.after.expect("after"));
    assert_eq!(summary(&loaded, "total-records").as_deref(), Some("7"));

    // Independent readers: pyiceberg now reads it (no delete file left), DuckDB agrees.
    assert_eq!(pyiceberg_rows(&fx).expect("pyiceberg reads the compacted table"), lines(&expected));
    assert_eq!(duckdb_rows(loaded.metadata_location().expect("location")), lines(&expected));

    // A second run finds one file: nothing to do.
    let again = compact(&catalog, &fx.ident, &options(2)).await.expect("compact again");
    assert!(again.after.is_none(), "{again}");
}

#[tokio::test]
async fn compaction_raced_by_a_commit_builds_again_on_the_new_state_and_loses_no_row() {
    let fx = Fixture::new("compact_race").await;
    mirror_table(&fx).await;
    let catalog = maintenance_catalog(&fx).await;
    // Between the first attempt's staging and its compare-and-set, a flush lands: 10 inserted, 5 deleted.
    let racing = &fx;
    let mut hook = move |attempt: u32| -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            if attempt == 1 {
                commit(racing, &[(10, "e10")], &[5], position("0/50", 1)).await;
            }
        })
    };
    let report = compact_with(&catalog, &fx.ident, &options(2), &mut hook).await.expect("compact");
    assert_eq!(report.attempts, 2, "{report}");
    assert_compacted(&report, 7);
    assert_eq!(report.position, at("0/50", 1), "the position of the state it compacted");

    let loaded = fx.load().await;
    let expected = owned(&[(2, "d2"), (3, "b3"), (6, "b6"), (7, "c7"), (8, "c8"), (9, "c9"), (10, "e10")]);
    assert_eq!(scan(&loaded).await, expected);
    assert_eq!(committed_position(&loaded, PIPELINE), at("0/50", 1));
    assert_eq!(pyiceberg_rows(&fx).expect("pyiceberg"), lines(&expected));
    // The refused attempt left nothing behind: one compacted data file on disk, one manifest list per snapshot,
    // one metadata JSON per version.
    let data = files_under(&fx.warehouse.join("mirror/t/data"));
    let compacted: Vec<_> = data.iter().filter(|f| f.contains(&format!("/philotes-{PIPELINE}-"))).collect();
    assert_eq!(compacted.len(), 1, "{compacted:?}");
    assert!(referenced_files(&loaded).await.contains(compacted[0].as_str()));
    let (lists, json) = metadata_folder(&fx);
    assert_eq!(lists, loaded.metadata().snapshots().len());
    assert_eq!(json, loaded.metadata().metadata_log().len() + 1);
}

#[tokio::test]
async fn expire_removes_old_snapshots_and_exactly_the_files_only_they_read() {
    let fx = Fixture::new("expire_compacted").await;
    let expected = mirror_table(&fx).await;
    let catalog = maintenance_catalog(&fx).await;
    let old_files = referenced_files(&fx.load().await).await;

    // Within the retention: nothing goes.
    let kept = expire(&catalog, &fx.ident, PIPELINE, Duration::from_secs(7 * 86_400)).await.expect("expire");
    assert_eq!((kept.expired, kept.kept, kept.deleted_files), (0, 4, 0), "{kept}");
    assert_eq!(kept.to_string(), "no snapshot to expire (older than 7d), 4 kept");

    let report = compact(&catalog, &fx.ident, &options(2)).await.expect("compact");
    assert_compacted(&report, 7);
    let compacted = fx.load().await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let expired = expire(&catalog, &fx.ident, PIPELINE, Duration::ZERO).await.expect("expire");
    assert_eq!((expired.expired, expired.kept, expired.failed_deletes), (4, 1, 0), "{expired}");

    let loaded = fx.load().await;
    assert_eq!(loaded.metadata().snapshots().len(), 1);
    assert_eq!(loaded.metadata().current_snapshot_id(), compacted.metadata().current_snapshot_id());
    assert_eq!(scan(&loaded).await, expected);
    assert_eq!(committed_position(&loaded, PIPELINE), at("0/40", 4));
    assert_eq!(pyiceberg_rows(&fx).expect("pyiceberg"), lines(&expected));
    // Every data file, delete file, manifest and manifest list of the four old snapshots is gone from disk, and
    // nothing the compacted snapshot reads is.
    let now_referenced = referenced_files(&loaded).await;
    for file in old_files.difference(&now_referenced) {
        assert!(!Path::new(file).exists(), "{file} of an expired snapshot is deleted");
    }
    for file in &now_referenced {
        assert!(Path::new(file).exists(), "{file} of the kept snapshot is there");
    }
    assert_eq!(expired.deleted_files, old_files.difference(&now_referenced).count(), "{expired}");
    let data = files_under(&fx.warehouse.join("mirror/t/data"));
    assert_eq!(data.len(), 1, "only the compacted file is left: {data:?}");
    assert_eq!(metadata_folder(&fx).0, 1, "one manifest list");
}

#[tokio::test]
async fn expire_keeps_every_snapshot_back_to_the_one_carrying_the_position_and_the_files_they_read() {
    let fx = Fixture::new("expire_position").await;
    commit(&fx, &[(1, "a1"), (2, "a2")], &[], position("0/10", 1)).await;
    let second = commit(&fx, &[(3, "b3")], &[1], position("0/20", 2)).await;
    // A writer that does not carry the position (another tool) commits last.
    commit(&fx, &[(4, "c4")], &[], HashMap::new()).await;
    let catalog = maintenance_catalog(&fx).await;
    let before = fx.load().await;
    let rows = scan(&before).await;
    assert_eq!(committed_position(&before, PIPELINE), at("0/20", 2));

    tokio::time::sleep(Duration::from_millis(5)).await;
    let report = expire(&catalog, &fx.ident, PIPELINE, Duration::ZERO).await.expect("expire");
    assert_eq!((report.expired, report.kept), (1, 2), "only the snapshot before the position goes: {report}");
    let loaded = fx.load().await;
    assert!(loaded.metadata().snapshot_by_id(second.metadata().current_snapshot_id().expect("id")).is_some());
    assert_eq!(committed_position(&loaded, PIPELINE), at("0/20", 2));
    assert_eq!(scan(&loaded).await, rows);
    // The first snapshot's data file is still read by the kept ones: only its manifest list went.
    for file in referenced_files(&loaded).await {
        assert!(Path::new(&file).exists(), "{file} is still read and still there");
    }
    assert_eq!(report.deleted_files, 1, "{report}");
}

#[tokio::test]
async fn compaction_of_rows_older_than_a_new_column_writes_them_with_the_column_null() {
    use arrow::array::{Array, RecordBatch};
    use futures::TryStreamExt;
    use iceberg::spec::{PrimitiveType, Type};
    use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};

    let fx = Fixture::new("compact_new_column").await;
    let expected = mirror_table(&fx).await;
    // A flush added a column and failed before its data commit: the current snapshot has the older schema.
    let table = fx.load().await;
    let tx = Transaction::new(&table);
    let tx = tx.update_schema().add_column(AddColumn::optional("w", Type::Primitive(PrimitiveType::Long))).apply(tx).expect("add");
    let evolved = tx.commit(fx.catalog.as_ref()).await.expect("schema change");
    assert_ne!(evolved.metadata().current_snapshot().expect("snapshot").schema_id(), Some(evolved.metadata().current_schema_id()));

    let catalog = maintenance_catalog(&fx).await;
    let report = compact(&catalog, &fx.ident, &options(2)).await.expect("compact");
    assert_compacted(&report, 7);
    let loaded = fx.load().await;
    assert_eq!(loaded.metadata().current_snapshot().expect("snapshot").schema_id(), Some(loaded.metadata().current_schema_id()));
    assert_eq!(scan(&loaded).await, expected);
    let batches: Vec<RecordBatch> =
        loaded.scan().select(["w"]).build().expect("scan").to_arrow().await.expect("stream").try_collect().await.expect("read");
    let nulls: usize = batches.iter().map(|b| b.column(0).null_count()).sum();
    assert_eq!(nulls, 7, "every row predates the column");
    assert_eq!(pyiceberg_rows(&fx).expect("pyiceberg"), lines(&expected));
}

#[test]
fn compaction_reports_sizes_and_counts_for_a_person() {
    assert_eq!(super::human_bytes(512), "512 B");
    assert_eq!(super::human_bytes(43_213), "42.2 KiB");
    assert_eq!(super::human_bytes(3 << 30), "3.0 GiB");
    assert_eq!(super::plural(1, "data file"), "1 data file");
    assert_eq!(super::plural(0, "delete file"), "0 delete files");
}
