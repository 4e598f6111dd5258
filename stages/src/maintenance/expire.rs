//! Snapshot expiry: removes a table's snapshots older than the retention from its metadata, then deletes the
//! files that only they referenced (manifest lists, manifests, data and delete files).
//!
//! The iceberg crate 0.10.1 has an expire action (`Transaction::expire_snapshots`, committable through
//! `Transaction::commit` and the SQL catalog's own compare-and-set), but it is not used: it cannot be told to
//! keep the snapshot the flush reads its position from, its commit silently plans again on a newer table
//! state, and it deletes no files. So the metadata change is written here (the crate's public
//! `TableMetadataBuilder::remove_snapshots`) and committed with the same compare-and-set as every other commit
//! of ours ([`row_delta::commit_metadata_sql`]).
//!
//! Kept, whatever their age: the current snapshot, the head of every branch and tag, and every snapshot on the
//! way from the current one back to the one carrying the pipeline's committed position (`philotes.last-lsn`):
//! [`committed_position`] walks that chain, and a gap in it would lose the position. Before committing, the
//! position of the new metadata is compared with the old one; a difference is never committed. Otherwise a
//! snapshot is kept when it is younger than the retention (Java's `expireOlderThan` with
//! `min-snapshots-to-keep` 1).
//!
//! A file is deleted only after the commit landed, and only when no kept snapshot reads it (it is not a live
//! entry of a manifest a kept snapshot lists); a table with `gc.enabled=false` is left alone. Not deleted:
//! old metadata JSON files (the metadata log keeps naming them), statistics files, and files of commits that
//! never landed (orphans: no snapshot ever referenced them).

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use iceberg::spec::{ManifestFile, TableMetadata};
use iceberg::table::Table;
use iceberg::{Runtime, TableIdent};

use super::{manifests, plural, MaintenanceCatalog, MaintenanceError, MAX_ATTEMPTS};
use crate::catalog::{committed_position, SUMMARY_LAST_LSN, SUMMARY_LAST_SEQ, SUMMARY_PIPELINE};
use crate::iceberg_commit::row_delta::RowDeltaError;

/// What an expiry did.
#[derive(Debug, Clone, Default)]
pub struct ExpireReport {
    /// Snapshots removed from the metadata.
    pub expired: usize,
    /// Snapshots the table keeps.
    pub kept: usize,
    /// Files deleted from the warehouse.
    pub deleted_files: usize,
    /// Files that could not be deleted (left as orphans; logged).
    pub failed_deletes: usize,
    /// The table has `gc.enabled=false`: nothing was expired.
    pub gc_disabled: bool,
    /// The retention applied.
    pub retention: Duration,
}

impl std::fmt::Display for ExpireReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let retention = self.retention.as_secs();
        let age = if retention.is_multiple_of(86_400) { format!("{}d", retention / 86_400) } else { format!("{retention}s") };
        if self.gc_disabled {
            return write!(f, "snapshots not expired (gc.enabled is false)");
        }
        if self.expired == 0 {
            return write!(f, "no snapshot to expire (older than {age}), {} kept", self.kept);
        }
        write!(
            f,
            "expired {} older than {age} ({} kept), deleted {}",
            plural(self.expired, "snapshot"),
            self.kept,
            plural(self.deleted_files, "file")
        )?;
        if self.failed_deletes > 0 {
            write!(f, " ({} could not be deleted, see the log)", self.failed_deletes)?;
        }
        Ok(())
    }
}

/// Expires the snapshots of `ident` older than `retention` (see the module doc for what is always kept) and
/// deletes the files no kept snapshot reads.
pub async fn expire(
    catalog: &MaintenanceCatalog,
    ident: &TableIdent,
    pipeline: &str,
    retention: Duration,
) -> Result<ExpireReport, MaintenanceError> {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let cutoff_ms = now_ms.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
    let mut report = ExpireReport { retention, ..ExpireReport::default() };
    for _ in 0..MAX_ATTEMPTS {
        let base = catalog.load(ident).await?;
        let metadata = base.metadata();
        let expired = plan(&base, pipeline, cutoff_ms)?;
        report.kept = metadata.snapshots().len() - expired.len();
        if expired.is_empty() {
            return Ok(report);
        }
        if !metadata.table_properties().map_err(MaintenanceError::iceberg(ident))?.gc_enabled {
            report.kept = metadata.snapshots().len();
            report.gc_disabled = true;
            return Ok(report);
        }
        let base_location = base.metadata_location_result().map_err(MaintenanceError::iceberg(ident))?.to_string();
        let new_metadata = metadata
            .clone()
            .into_builder(Some(base_location))
            .remove_snapshots(&expired)
            .build()
            .map_err(MaintenanceError::iceberg(ident))?
            .metadata;
        check_position(&base, &new_metadata, pipeline)?;
        let unreferenced = unreferenced_files(&base, &expired).await?;
        match catalog.commit_expiry(&base, new_metadata, &expired).await {
            Ok(_) => {
                report.expired = expired.len();
                for path in unreferenced {
                    match base.file_io().delete(&path).await {
                        Ok(()) => report.deleted_files += 1,
                        Err(e) => {
                            report.failed_deletes += 1;
                            tracing::warn!(table = %ident, file = %path, error = %crate::report::chain(&e),
                                "could not delete a file of an expired snapshot (left as an orphan)");
                        }
                    }
                }
                return Ok(report);
            }
            Err(MaintenanceError::Commit(RowDeltaError::StaleBase { .. })) => {
                tracing::info!(table = %ident, "snapshot expiry: another commit landed first; planning again");
            }
            Err(e) => return Err(e),
        }
    }
    Err(MaintenanceError::Contended { table: ident.clone(), attempts: MAX_ATTEMPTS })
}

/// The ids of the snapshots of `table` to expire: older than `cutoff_ms`, and neither the head of a ref nor on
/// the chain the committed position is read through.
fn plan(table: &Table, pipeline: &str, cutoff_ms: i64) -> Result<Vec<i64>, MaintenanceError> {
    let metadata = table.metadata();
    let mut keep = ref_heads(table)?;
    keep.extend(metadata.current_snapshot_id());
    // Back from the current snapshot to the first that names the pipeline's position (all of them if none does).
    let mut snapshot = metadata.current_snapshot();
    while let Some(current) = snapshot {
        keep.insert(current.snapshot_id());
        let props = &current.summary().additional_properties;
        let carries = props.get(SUMMARY_PIPELINE).map(String::as_str) == Some(pipeline)
            && props.contains_key(SUMMARY_LAST_LSN)
            && props.contains_key(SUMMARY_LAST_SEQ);
        if carries {
            break;
        }
        snapshot = current.parent_snapshot_id().and_then(|id| metadata.snapshot_by_id(id));
    }
    let mut expired: Vec<i64> = metadata
        .snapshots()
        .filter(|s| s.timestamp_ms() < cutoff_ms && !keep.contains(&s.snapshot_id()))
        .map(|s| s.snapshot_id())
        .collect();
    expired.sort_unstable();
    Ok(expired)
}

/// The snapshots branches and tags point at. The crate keeps a metadata's refs private, so they are read from
/// its JSON form (the spec's `refs`: name → `{"snapshot-id": …}`).
fn ref_heads(table: &Table) -> Result<HashSet<i64>, MaintenanceError> {
    let json = serde_json::to_value(table.metadata()).map_err(|e| MaintenanceError::Invariant {
        table: table.identifier().clone(),
        reason: format!("its metadata cannot be read back as JSON: {e}"),
    })?;
    let refs = json.get("refs").and_then(serde_json::Value::as_object);
    Ok(refs.into_iter().flatten().filter_map(|(_, r)| r.get("snapshot-id").and_then(serde_json::Value::as_i64)).collect())
}

/// Refuses metadata whose committed position differs from its base's (the flush would write changes twice).
fn check_position(base: &Table, metadata: &TableMetadata, pipeline: &str) -> Result<(), MaintenanceError> {
    let ident = base.identifier();
    let after = Table::builder()
        .identifier(ident.clone())
        .file_io(base.file_io().clone())
        .metadata(metadata.clone())
        .runtime(Runtime::try_current().map_err(MaintenanceError::iceberg(ident))?)
        .build()
        .map_err(MaintenanceError::iceberg(ident))?;
    let (before, after) = (committed_position(base, pipeline), committed_position(&after, pipeline));
    if before != after {
        return Err(MaintenanceError::Invariant {
            table: ident.clone(),
            reason: format!(
                "expiring snapshots would change the committed position of pipeline {pipeline} from {before:?} to \
                 {after:?}; nothing expired"
            ),
        });
    }
    Ok(())
}

/// The files of the `expired` snapshots of `table` that no other snapshot reads: their manifest lists, the
/// manifests only they list, and the data and delete files no kept manifest holds as live.
async fn unreferenced_files(table: &Table, expired: &[i64]) -> Result<Vec<String>, MaintenanceError> {
    let ident = table.identifier();
    let metadata = table.metadata();
    let mut kept_manifests: HashSet<String> = HashSet::new();
    let mut kept_files: HashSet<String> = HashSet::new();
    let mut expired_manifests: Vec<ManifestFile> = Vec::new();
    let mut candidates: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for snapshot in metadata.snapshots() {
        let is_expired = expired.contains(&snapshot.snapshot_id());
        if is_expired {
            candidates.push(snapshot.manifest_list().to_string());
        }
        for manifest in manifests(table, snapshot).await.map_err(MaintenanceError::iceberg(ident))? {
            if is_expired {
                if seen.insert(manifest.manifest_path.clone()) {
                    expired_manifests.push(manifest);
                }
            } else if kept_manifests.insert(manifest.manifest_path.clone()) {
                let loaded = manifest.load_manifest(table.file_io()).await.map_err(MaintenanceError::iceberg(ident))?;
                kept_files.extend(loaded.entries().iter().filter(|e| e.is_alive()).map(|e| e.file_path().to_string()));
            }
        }
    }
    for manifest in expired_manifests {
        if kept_manifests.contains(&manifest.manifest_path) {
            continue;
        }
        let loaded = manifest.load_manifest(table.file_io()).await.map_err(MaintenanceError::iceberg(ident))?;
        candidates.extend(loaded.entries().iter().map(|e| e.file_path().to_string()).filter(|p| !kept_files.contains(p)));
        candidates.push(manifest.manifest_path);
    }
    let mut unique = HashSet::new();
    candidates.retain(|p| unique.insert(p.clone()));
    Ok(candidates)
}
