//! `philotes status`: what a person (or a script, with `--json`) needs to know about a running pipeline —
//! slot lag, source checkpoint, buffer depth, dead letters.

use philotes_stages::source::setup::{self, SlotStatus};
use philotes_stages::store::{self, checkpoints, dead_letters, segments, source_tables, watermarks};
use serde::Serialize;

use crate::config::{PipelineConfig, TableName};

/// A snapshot of a pipeline's state.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The pipeline name.
    pub pipeline: String,
    /// The slot name.
    pub slot: String,
    /// Whether the slot exists.
    pub slot_exists: bool,
    /// Whether a capture streams from it now.
    pub slot_active: bool,
    /// The slot's confirmed position.
    pub slot_confirmed_lsn: Option<String>,
    /// `reserved` … `lost`.
    pub slot_wal_status: Option<String>,
    /// The source's current WAL position.
    pub source_current_lsn: Option<String>,
    /// WAL bytes the capture is behind.
    pub replication_lag_bytes: Option<i64>,
    /// Commit LSN of the last transaction fully in the buffer.
    pub checkpoint_lsn: Option<String>,
    /// Seconds since the checkpoint was last written (how stale the buffer's view of the source is).
    pub checkpoint_age_seconds: Option<f64>,
    /// Segments waiting in the buffer.
    pub buffer_segments: i64,
    /// Changes waiting in the buffer.
    pub buffer_events: i64,
    /// Payload bytes waiting in the buffer.
    pub buffer_bytes: i64,
    /// Changes that could not be converted.
    pub dead_letters: i64,
    /// Per table: the last position committed to Iceberg, and why it stopped if it did.
    pub tables: Vec<TableStatus>,
}

/// One table's flush state.
#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    /// `schema.table` at the source.
    pub table: String,
    /// Last position in Iceberg (`lsn#seq`), `None` before its first flush.
    pub committed: Option<String>,
    /// Set when the table stopped (an incompatible schema change, an unmappable column): the reason.
    pub error: Option<String>,
    /// The table's name on the source now, when it was renamed (it keeps flowing under its first name).
    pub renamed_to: Option<String>,
    /// Why the capture does not follow the table (a keyless table it refused to publish).
    pub problem: Option<String>,
}

/// Adds what the capture knows of each table (renames, refusals) to the flush states; a refused table that
/// never flowed gets a line of its own.
fn add_source_tables(tables: &mut Vec<TableStatus>, followed: Vec<source_tables::SourceTable>) {
    for row in followed {
        let renamed_to = row.renamed().then(|| TableName { schema: row.schema_now, name: row.table_now }.to_string());
        let name = TableName { schema: row.source_schema, name: row.source_table }.to_string();
        match tables.iter_mut().find(|t| t.table == name) {
            Some(table) => {
                table.renamed_to = renamed_to;
                table.problem = row.problem;
            }
            None => tables.push(TableStatus { table: name, committed: None, error: None, renamed_to, problem: row.problem }),
        }
    }
}

/// Why status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The buffer database failed.
    #[error("buffer database: {0}")]
    Buffer(#[from] tokio_postgres::Error),
    /// The source failed.
    #[error(transparent)]
    Source(#[from] philotes_stages::source::SourceError),
}

/// Reads the pipeline's state from the source and the buffer.
pub async fn read(config: &PipelineConfig) -> Result<Status, StatusError> {
    let source = store::connect(config.source.postgres.url.config())
        .await
        .map_err(philotes_stages::source::SourceError::Sql)?;
    let slot: Option<SlotStatus> = setup::slot_status(&source, &config.source.postgres.slot).await?;
    let buffer = store::connect(config.buffer.url.config()).await?;
    let migrated: bool = buffer
        .query_one("SELECT to_regclass('philotes.checkpoints') IS NOT NULL", &[])
        .await?
        .get(0);
    let (checkpoint, depth, dead, tables, followed) = if migrated {
        (
            checkpoints::load(&buffer, &config.pipeline).await?,
            segments::depth(&buffer, &config.pipeline).await?,
            dead_letters::count(&buffer, &config.pipeline).await?,
            watermarks::all(&buffer, &config.pipeline).await?,
            source_tables::list(&buffer, &config.pipeline).await?,
        )
    } else {
        (None, segments::Depth::default(), 0, Vec::new(), Vec::new())
    };
    Ok(Status {
        pipeline: config.pipeline.clone(),
        slot: config.source.postgres.slot.clone(),
        slot_exists: slot.is_some(),
        slot_active: slot.as_ref().is_some_and(|s| s.active),
        slot_confirmed_lsn: slot.as_ref().and_then(|s| s.confirmed_flush).map(|l| l.to_string()),
        slot_wal_status: slot.as_ref().and_then(|s| s.wal_status.clone()),
        source_current_lsn: slot.as_ref().map(|s| s.current.to_string()),
        replication_lag_bytes: slot.as_ref().and_then(|s| s.lag_bytes),
        checkpoint_lsn: checkpoint.map(|c| c.commit_lsn.to_string()),
        checkpoint_age_seconds: if migrated { checkpoints::age_seconds(&buffer, &config.pipeline).await? } else { None },
        buffer_segments: depth.segments,
        buffer_events: depth.events,
        buffer_bytes: depth.bytes,
        dead_letters: dead,
        tables: {
            let mut tables = tables
                .into_iter()
                .map(|t| TableStatus {
                    // As the pipeline file writes it (`public."t.dot"`), so it can be pasted back.
                    table: TableName { schema: t.source_schema, name: t.source_table }.to_string(),
                    committed: t.committed.map(|p| p.to_string()),
                    error: t.error,
                    renamed_to: None,
                    problem: None,
                })
                .collect();
            add_source_tables(&mut tables, followed);
            tables
        },
    })
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        writeln!(f, "pipeline     {}", self.pipeline)?;
        if self.slot_exists {
            writeln!(
                f,
                "slot         {} ({}, wal {})",
                self.slot,
                if self.slot_active { "streaming" } else { "idle" },
                or_none(&self.slot_wal_status)
            )?;
            writeln!(
                f,
                "  confirmed  {}   source at {}   lag {}",
                or_none(&self.slot_confirmed_lsn),
                or_none(&self.source_current_lsn),
                self.replication_lag_bytes.map_or_else(|| "-".into(), human_bytes)
            )?;
        } else {
            writeln!(f, "slot         {} (not created yet: `philotes run` creates it)", self.slot)?;
        }
        writeln!(f, "checkpoint   {}", or_none(&self.checkpoint_lsn))?;
        writeln!(
            f,
            "buffer       {} segments, {} changes, {}",
            self.buffer_segments,
            self.buffer_events,
            human_bytes(self.buffer_bytes)
        )?;
        write!(f, "dead letters {}", self.dead_letters)?;
        for table in &self.tables {
            let state = match (&table.problem, &table.error, &table.committed) {
                (Some(problem), _, _) => format!("NOT CAPTURED: {problem}"),
                (None, Some(error), _) => format!("STOPPED: {error}"),
                (None, None, Some(position)) => format!("in iceberg up to {position}"),
                (None, None, None) => "not flushed yet".to_string(),
            };
            write!(f, "\ntable        {}  {state}", table.table)?;
            if let Some(now) = &table.renamed_to {
                write!(f, "\n  renamed    on the source to {now} (its changes keep flowing into the same Iceberg table)")?;
            }
        }
        Ok(())
    }
}

fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
