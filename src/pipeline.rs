//! Pipeline assembly: from a validated [`PipelineConfig`] to the settings of each role's stages.
//!
//! The stages crate knows nothing of YAML; this module is where the file's keys meet the stages' settings.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use philotes_engine::{RetryPolicy, StageOptions};
use philotes_stages::capture::CaptureSettings;
use philotes_stages::enqueue::EnqueueLimits;
use philotes_stages::catalog::CatalogSettings;
use philotes_stages::claim::TableTarget;
use philotes_stages::flush::FlushSettings;
use philotes_stages::load::LoadSettings;
use philotes_stages::snapshot::reader::SnapshotSettings;

use crate::config::{
    CatalogKind, PartitionField, PartitionTransform, PipelineConfig, SnapshotMode, StageName, TableId, TableMode, UnmappedTypes,
    DEFAULT_ARROW_BATCH_WORKERS, DEFAULT_CAPTURE_QUEUE,
};

/// How many full segments of one open transaction are held in memory before they spill into the buffer.
const SPILL_SEGMENTS: u64 = 4;

/// A stage's pool: what `stages.<stage>` sets, each key left out taking `workers`/`queue`. The file was
/// validated, so what it sets can apply (`workers: 1` on the capture stages, at most `flush.workers` commits).
fn stage_options(config: &PipelineConfig, stage: StageName, workers: usize, queue: usize) -> StageOptions {
    let set = config.stages.get(stage);
    StageOptions::new(set.workers.unwrap_or(workers), set.queue.unwrap_or(queue))
}

/// The capture role's settings.
pub fn capture_settings(config: &PipelineConfig) -> CaptureSettings {
    let source = &config.source.postgres;
    let segment = &config.buffer.segment;
    CaptureSettings {
        pipeline: config.pipeline.clone(),
        source: source.url.config().clone(),
        buffer: config.buffer.url.config().clone(),
        publication: source.publication.clone(),
        slot: source.slot.clone(),
        tables: source.tables.clone(),
        iceberg_name: {
            let targets = config.clone();
            Arc::new(move |table: &TableId| {
                let target = targets.iceberg_target(table);
                (target.namespace, target.name)
            })
        },
        carry_unmapped_as_text: source.unmapped_types == UnmappedTypes::Text,
        snapshot_initial: source.snapshot == SnapshotMode::Initial,
        snapshot: SnapshotSettings {
            chunk_rows: config.snapshot.chunk_rows,
            workers: config.snapshot.workers,
            ..SnapshotSettings::default()
        },
        status_interval: source.status_interval,
        heartbeat: source.heartbeat,
        limits: EnqueueLimits {
            max_events: usize::try_from(segment.max_events).unwrap_or(usize::MAX),
            max_bytes: usize::try_from(segment.max_bytes).unwrap_or(usize::MAX),
            max_age: segment.max_age,
            spill_bytes: usize::try_from(segment.max_bytes.saturating_mul(SPILL_SEGMENTS)).unwrap_or(usize::MAX),
        },
        decode: stage_options(config, StageName::Decode, 1, DEFAULT_CAPTURE_QUEUE),
        schema_resolve: stage_options(config, StageName::SchemaResolve, 1, DEFAULT_CAPTURE_QUEUE),
        enqueue: stage_options(config, StageName::Enqueue, 1, DEFAULT_CAPTURE_QUEUE),
        restart: RetryPolicy { base: Duration::from_millis(200), cap: Duration::from_secs(30), max_attempts: u32::MAX },
        load: {
            let flush = flush_settings(config);
            Some(LoadSettings {
                catalog: flush.catalog,
                target: flush.target,
                target_file_size: flush.target_file_size,
                direct: config.snapshot.direct,
            })
        },
    }
}

/// The flusher role's settings.
pub fn flush_settings(config: &PipelineConfig) -> FlushSettings {
    let iceberg = &config.sink.iceberg;
    let mut props = HashMap::new();
    if let Some(s3) = &iceberg.s3 {
        props.insert("s3.region".to_string(), s3.region.clone());
        if let Some(endpoint) = &s3.endpoint {
            props.insert("s3.endpoint".to_string(), endpoint.clone());
        }
        if let Some(key) = &s3.access_key_id {
            props.insert("s3.access-key-id".to_string(), key.expose().to_string());
        }
        if let Some(secret) = &s3.secret_access_key {
            props.insert("s3.secret-access-key".to_string(), secret.expose().to_string());
        }
        if let Some(token) = &s3.session_token {
            props.insert("s3.session-token".to_string(), token.expose().to_string());
        }
        props.insert("s3.path-style-access".to_string(), s3.path_style.to_string());
    }
    let warehouse = iceberg.warehouse.location();
    let catalog = match &iceberg.catalog.kind {
        CatalogKind::Sql { url } => CatalogSettings::Sql {
            name: iceberg.catalog.name.clone(),
            uri: url.expose().to_string(),
            warehouse,
            props,
        },
        CatalogKind::Rest { uri, warehouse: rest_warehouse, token, credential } => {
            if let Some(token) = token {
                props.insert("token".to_string(), token.expose().to_string());
            }
            if let Some(credential) = credential {
                props.insert("credential".to_string(), credential.expose().to_string());
            }
            CatalogSettings::Rest {
                name: iceberg.catalog.name.clone(),
                uri: uri.expose().to_string(),
                warehouse: Some(rest_warehouse.clone().unwrap_or(warehouse)),
                props,
            }
        }
    };
    let targets = config.clone();
    // A flush holds one lease from claim to checkpoint: `flush.workers` flushes at once. The queues hold enough
    // slices to keep every ArrowBatch worker and every flush busy.
    let leases = config.flush.workers;
    let arrow_workers = config.stages.get(StageName::ArrowBatch).workers.unwrap_or(DEFAULT_ARROW_BATCH_WORKERS);
    let slices = arrow_workers.max(leases);
    FlushSettings {
        pipeline: config.pipeline.clone(),
        buffer: config.buffer.url.config().clone(),
        catalog,
        target: Arc::new(move |table: &TableId| {
            let target = targets.iceberg_target(table);
            TableTarget {
                namespace: target.namespace,
                name: target.name,
                mirror: target.mode == TableMode::Mirror,
                partition: target.partition.iter().map(partition_field).collect(),
            }
        }),
        workers: leases,
        arrow_batch: stage_options(config, StageName::ArrowBatch, arrow_workers, slices),
        iceberg_commit: stage_options(config, StageName::IcebergCommit, leases, slices),
        checkpoint: stage_options(config, StageName::Checkpoint, leases, leases),
        max_events: i64::try_from(config.flush.max_events).unwrap_or(i64::MAX),
        interval: config.flush.interval,
        target_file_size: usize::try_from(iceberg.target_file_size).unwrap_or(usize::MAX),
        retry: RetryPolicy { base: Duration::from_millis(200), cap: Duration::from_secs(30), max_attempts: u32::MAX },
    }
}

/// A partition field of the YAML as the flusher's catalog module takes it.
fn partition_field(field: &PartitionField) -> philotes_stages::catalog::partition::PartitionField {
    use philotes_stages::catalog::partition::Transform;
    let transform = match field.transform {
        PartitionTransform::Identity => Transform::Identity,
        PartitionTransform::Year => Transform::Year,
        PartitionTransform::Month => Transform::Month,
        PartitionTransform::Day => Transform::Day,
        PartitionTransform::Hour => Transform::Hour,
        PartitionTransform::Bucket(n) => Transform::Bucket(n),
        PartitionTransform::Truncate(w) => Transform::Truncate(w),
    };
    philotes_stages::catalog::partition::PartitionField { column: field.column.clone(), transform }
}
