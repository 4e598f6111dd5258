//! The ArrowBatch stage: a slice of a flush job → one Arrow RecordBatch in the Iceberg table's current schema.
//!
//! The job prepares its Iceberg table once (the first slice here asks for it); every slice reads its segments'
//! payloads on the lease's connection and drops every change that Iceberg already has (its snapshot summary
//! records the last committed position): the repair after a crash between the Iceberg commit and the buffer
//! checkpoint. CPU-heavy, its own pool, ordered, so the next slices are read and built while IcebergCommit
//! writes the previous one. A mirror table's slices are built the same way, in its working schema (its columns
//! plus the changelog ones), with every update that carries an old key split into a delete and the update
//! ([`crate::mirror::split_updates`]).

use std::sync::Arc;

use async_trait::async_trait;
use iceberg::spec::Schema;
use philotes_engine::{Emitter, Stage, StageError};
use philotes_schemas::TableSchema;

use super::{build_batch, BatchBuilder, RejectedRow, NAME};
use crate::catalog::table::Prepared;
use crate::changelog::SchemaError;
use crate::claim::job::{BuildSlice, BuiltSlice, FlushJob, JobError, Slice, SliceRows};
use crate::position::Position;
use crate::segment::{self, SegmentEvent};
use crate::store::dead_letters::{DeadLetter, LetterEvent};

/// Why a slice could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ArrowBatchError {
    /// The job could not read the slice or name its schema version.
    #[error("arrow_batch: {0}")]
    Job(#[from] JobError),
    /// A segment does not decode.
    #[error("arrow_batch: {0}")]
    Segment(#[from] segment::SegmentError),
    /// The rows cannot be written into the table (an incompatible schema change): the table stops.
    #[error("{0}")]
    Schema(#[from] SchemaError),
}

/// Where every failure but a schema one goes (a schema failure stops the table instead: [`SliceRows::Stop`]).
impl From<ArrowBatchError> for StageError {
    fn from(error: ArrowBatchError) -> Self {
        match error {
            ArrowBatchError::Job(e) => e.into(),
            other => StageError::fatal(other),
        }
    }
}

/// The ArrowBatch stage.
#[derive(Debug, Default, Clone, Copy)]
pub struct ArrowBatch;

impl Stage for ArrowBatch {
    type In = Slice;
    type Out = BuiltSlice;

    fn parent_span(slice: &Slice) -> Option<&tracing::Span> {
        Some(&slice.job.span)
    }

    async fn process(&mut self, slice: &Slice, out: &mut Emitter<BuiltSlice>) -> Result<(), StageError> {
        let job = &slice.job;
        let rows = match job.prepared().await? {
            Prepared::Stopped(reason) => SliceRows::Stop(reason.clone()),
            Prepared::Ready { table, committed, mirror, .. } => {
                let schema = mirror.as_ref().map_or(table.metadata().current_schema(), |m| &m.working);
                ArrowBatch.build(job, slice.index, schema, job.filter(*committed)).await?
            }
        };
        out.emit(BuiltSlice { slice: slice.clone(), rows });
        Ok(())
    }
}

#[async_trait]
impl BuildSlice for ArrowBatch {
    async fn build(&self, job: &FlushJob, index: usize, schema: &Schema, committed: Option<Position>)
        -> Result<SliceRows, StageError> {
        match build_slice(job, index, schema, committed).await {
            Ok((batch, rejected)) => {
                let table = job.table();
                let rejected = rejected
                    .into_iter()
                    .map(|r| DeadLetter {
                        stage: NAME.to_string(),
                        table: Some(table.clone()),
                        commit_lsn: Some(r.position.commit_lsn),
                        seq: Some(r.position.seq),
                        reason: r.reason,
                        payload: r.rendering,
                        event: letter_event(job, &r.version, &r.event),
                    })
                    .collect();
                Ok(SliceRows::Write { batch, rejected })
            }
            Err(ArrowBatchError::Schema(e)) => {
                // Only this table stops: its lease row records why, the other tables flow on.
                let reason = format!("{}: {e}", job.table());
                tracing::error!(reason = %reason, "table stopped");
                Ok(SliceRows::Stop(reason))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A rejected change as its dead letter keeps it for a retry: a one-event segment and its schema version's
/// number. A mirror's update split in two is kept as the half that failed.
fn letter_event(job: &FlushJob, version: &Arc<TableSchema>, event: &SegmentEvent) -> Option<LetterEvent> {
    let schema_version = job.version_number(version)?;
    let payload = segment::encode(std::slice::from_ref(event)).ok()?;
    Some(LetterEvent { schema_version, payload, raw: false })
}

/// Reads slice `index` of `job` and builds its batch in `schema`, leaving out what Iceberg already has (changes
/// up to `committed`).
async fn build_slice(
    job: &FlushJob,
    index: usize,
    schema: &Schema,
    committed: Option<Position>,
) -> Result<(Option<arrow::array::RecordBatch>, Vec<RejectedRow>), ArrowBatchError> {
    let segments = job.slice(index);
    let started = std::time::Instant::now();
    let payloads = job.read(index).await?;
    let read = started.elapsed();
    let first_segment = segments.first().map_or(0, |s| s.id);
    // The usual case: nothing here is in Iceberg yet. Each segment's changes go from its payload straight into
    // the Arrow builders (no owned values). A segment this path cannot take (unchanged TOAST values, which
    // earlier images of the whole slice may fill; a change to reject; an interval or array) sends the slice
    // down the general path below.
    if committed.is_none_or(|c| segments.iter().all(|s| s.first > c)) {
        let rows = segments.iter().map(|s| usize::try_from(s.events).unwrap_or(0)).sum();
        let mut builder: Option<BatchBuilder> = None;
        let mut streamed = true;
        for (id, payload) in payloads.iter() {
            let Some(s) = segments.iter().find(|s| s.id == id) else { continue };
            let version = job.version(s)?;
            let builder = match &mut builder {
                Some(builder) => builder,
                None => builder.insert(BatchBuilder::from_payload(schema, rows, version, payload)?.mirror(job.mirror)),
            };
            if !builder.append_payload(schema, version, payload)? {
                streamed = false;
                break;
            }
        }
        if streamed {
            let output = builder.map(BatchBuilder::finish).transpose()?;
            tracing::debug!(flush = job.id, first_segment, segments = segments.len(), read_ms = read.as_millis() as u64,
                decode_and_build_ms = (started.elapsed() - read).as_millis() as u64, "slice built");
            return Ok(match output {
                Some(output) => ((output.batch.num_rows() > 0).then_some(output.batch), output.rejected),
                None => (None, Vec::new()),
            });
        }
    }
    // Changes Iceberg already has are not written again. Their dead letters, though, were never stored: a
    // segment's dead letters are stored by the checkpoint that deletes it, and it is still here.
    let mut groups: Vec<(Arc<TableSchema>, Vec<SegmentEvent>)> = Vec::with_capacity(segments.len());
    let mut already: Vec<(Arc<TableSchema>, Vec<SegmentEvent>)> = Vec::new();
    for (id, payload) in payloads.iter() {
        let Some(s) = segments.iter().find(|s| s.id == id) else { continue };
        let version = job.version(s)?;
        let mut events = segment::decode(payload)?;
        if job.mirror {
            events = crate::mirror::split_updates(events, version);
        }
        if let Some(c) = committed.filter(|c| s.first <= *c) {
            let (old, new): (Vec<_>, Vec<_>) = events.into_iter().partition(|e| e.position() <= c);
            if !old.is_empty() {
                already.push((version.clone(), old));
            }
            events = new;
        }
        if !events.is_empty() {
            groups.push((version.clone(), events));
        }
    }
    let decoded = started.elapsed();
    let mut rejected = Vec::new();
    if !already.is_empty() {
        tracing::info!(table = %job.table(),
            changes = already.iter().map(|(_, e)| e.len()).sum::<usize>(),
            "claimed changes are already in iceberg (a flush crashed before its checkpoint): not writing them again");
        rejected.extend(build_batch(schema, &already)?.rejected);
    }
    let batch = if groups.is_empty() {
        None
    } else {
        let output = build_batch(schema, &groups)?;
        rejected.extend(output.rejected);
        (output.batch.num_rows() > 0).then_some(output.batch)
    };
    tracing::debug!(flush = job.id, first_segment, segments = segments.len(), read_ms = read.as_millis() as u64,
        decode_ms = (decoded - read).as_millis() as u64, build_ms = (started.elapsed() - decoded).as_millis() as u64, "slice built");
    Ok((batch, rejected))
}
