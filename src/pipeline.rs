//! Pipeline assembly: from a validated [`PipelineConfig`] to the settings of each role's stages.
//!
//! The stages crate knows nothing of YAML; this module is where the file's keys meet the stages' settings.

use std::time::Duration;

use philotes_engine::RetryPolicy;
use philotes_stages::capture::CaptureSettings;
use philotes_stages::enqueue::EnqueueLimits;
use philotes_stages::source::setup::PublishedTables;

use crate::config::{PipelineConfig, StageName, TableSelection, UnmappedTypes};

/// How many full segments of one open transaction are held in memory before they spill into the buffer.
const SPILL_SEGMENTS: u64 = 4;

/// The capture role's settings.
pub fn capture_settings(config: &PipelineConfig) -> CaptureSettings {
    let source = &config.source.postgres;
    let segment = &config.buffer.segment;
    for stage in [StageName::Decode, StageName::SchemaResolve, StageName::Enqueue] {
        let pool = config.stages.get(stage);
        if pool.workers > 1 {
            tracing::warn!(stage = %stage, workers = pool.workers,
                "capture stages follow the replication stream's order and run one worker; `workers` is ignored");
        }
    }
    CaptureSettings {
        pipeline: config.pipeline.clone(),
        source: source.url.config().clone(),
        buffer: config.buffer.url.config().clone(),
        publication: source.publication.clone(),
        slot: source.slot.clone(),
        tables: match &source.tables {
            TableSelection::All => PublishedTables::All,
            TableSelection::Listed(list) => {
                PublishedTables::Listed(list.iter().map(|t| (t.schema.clone(), t.name.clone())).collect())
            }
        },
        carry_unmapped_as_text: source.unmapped_types == UnmappedTypes::Text,
        status_interval: source.status_interval,
        limits: EnqueueLimits {
            max_events: usize::try_from(segment.max_events).unwrap_or(usize::MAX),
            max_bytes: usize::try_from(segment.max_bytes).unwrap_or(usize::MAX),
            max_age: segment.max_age,
            spill_bytes: usize::try_from(segment.max_bytes.saturating_mul(SPILL_SEGMENTS)).unwrap_or(usize::MAX),
        },
        queue: config.stages.get(StageName::Decode).queue,
        restart: RetryPolicy { base: Duration::from_millis(200), cap: Duration::from_secs(30), max_attempts: u32::MAX },
    }
}
