//! `philotes compact FILE [--table T…]` and the periodic compaction of the flusher role
//! (`sink.iceberg.compaction`): from the pipeline file to [`philotes_stages::maintenance`], which takes each
//! table's flush lease, compacts the table (its rows, deletes applied, into new files in one `replace` snapshot)
//! and expires its snapshots older than `sink.iceberg.retention`.

use std::future::Future;
use std::time::Duration;

use philotes_stages::maintenance::{self, Maintenance, MaintenanceError, MaintenanceSettings, TableOutcome};
use tokio_util::sync::CancellationToken;

use crate::config::{PipelineConfig, TableId};

/// `--min-files` when neither the command line nor `sink.iceberg.compaction.min_files` says: a table of one data
/// file and no delete file is already compact, anything more is rewritten when asked for.
pub const DEFAULT_CLI_MIN_FILES: usize = 2;

/// What `philotes compact` found wrong before it could start.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// A `--table` that is not a table name.
    #[error("--table {text}: {reason}")]
    BadName {
        /// What was given.
        text: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The catalog or the buffer could not be reached.
    #[error(transparent)]
    Maintenance(#[from] MaintenanceError),
}

/// The maintenance settings of `config`: its pipeline, buffer, catalog and table names; `min_files` from the
/// command line, else `sink.iceberg.compaction.min_files`, else [`DEFAULT_CLI_MIN_FILES`].
pub fn settings(config: &PipelineConfig, min_files: Option<usize>, lease_wait: Duration) -> MaintenanceSettings {
    // The flusher's own settings, so the catalog, the warehouse's credentials and the table names are the flush's.
    let flush = crate::pipeline::flush_settings(config);
    let iceberg = &config.sink.iceberg;
    MaintenanceSettings {
        pipeline: flush.pipeline,
        buffer: flush.buffer,
        catalog: flush.catalog,
        target: flush.target,
        min_files: min_files.or(iceberg.compaction.as_ref().map(|c| c.min_files)).unwrap_or(DEFAULT_CLI_MIN_FILES),
        target_file_size: flush.target_file_size,
        retention: iceberg.retention,
        lease_wait,
    }
}

/// The periodic compaction the flusher role runs beside its flushes when `sink.iceberg.compaction` is set
/// (`None` otherwise): every `interval`, each table in turn under its lease. It ends when `cancel` fires.
pub fn periodic(config: &PipelineConfig, cancel: CancellationToken) -> Option<impl Future<Output = ()> + Send + 'static> {
    let compaction = config.sink.iceberg.compaction.as_ref()?;
    let settings = settings(config, Some(compaction.min_files), maintenance::DEFAULT_LEASE_WAIT);
    Some(maintenance::run_periodic(settings, compaction.interval, cancel))
}

/// How a `philotes compact` run went, for its exit code.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Tables compacted or found compact, and expired.
    pub done: usize,
    /// Tables skipped: their lease was held too long, or they were never flushed.
    pub skipped: usize,
    /// Tables whose maintenance failed.
    pub failed: usize,
}

/// Runs maintenance of `tables` (every flushed table of the pipeline when empty), one at a time, calling `line`
/// with a human line per table as it is done (`public.orders → lake.orders: compacted …`).
pub async fn run(settings: &MaintenanceSettings, tables: &[String], mut line: impl FnMut(String)) -> Result<Tally, CompactError> {
    let mut named = Vec::with_capacity(tables.len());
    for text in tables {
        named.push(TableId::parse(text).map_err(|reason| CompactError::BadName { text: text.clone(), reason })?);
    }
    let maintenance = Maintenance::connect(settings).await?;
    let tables = if named.is_empty() { maintenance.tables().await? } else { named };
    let mut tally = Tally::default();
    for table in tables {
        let target = maintenance.target(&table);
        let text = match maintenance.table(&table).await {
            Ok(outcome) => {
                match outcome {
                    TableOutcome::Done { .. } => tally.done += 1,
                    TableOutcome::Busy(_) | TableOutcome::NeverFlushed => tally.skipped += 1,
                }
                outcome.to_string()
            }
            Err(e) => {
                tally.failed += 1;
                format!("FAILED: {}", philotes_stages::report::chain(&e))
            }
        };
        line(format!("{table} → {target}: {text}"));
    }
    Ok(tally)
}
