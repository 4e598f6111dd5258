//! A stage's worker pool, laid out by mode: *unordered* (workers share the queue), *ordered* (workers share the
//! queue, a sequencer restores input order), *keyed* (a dispatcher routes each input to the worker of its key).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{mpsc, Mutex};

use crate::edge::{EdgeReceiver, Envelope};
use crate::error::FlowError;
use crate::report::StageStats;
use crate::retry::Failures;
use crate::stage::{Mode, Stage};
use crate::worker::{Output, Sequenced, Worker, WorkerInput, WorkerOutput};

/// A task the flow spawns, with the stage it belongs to (to name it if it panics).
pub(crate) type Task = (Arc<str>, BoxFuture<'static, Result<(), FlowError>>);

/// The tasks of one stage: its workers, plus the sequencer (ordered) or the dispatcher (keyed).
pub(crate) fn stage_tasks<S: Stage>(
    instances: Vec<S>,
    mode: Mode,
    input: EdgeReceiver<S::In>,
    output: Output<S::Out>,
    failures: Failures,
) -> Vec<Task> {
    let name = Arc::clone(&failures.stage);
    let queue = Arc::clone(&input.shared);
    let mut tasks: Vec<Task> = Vec::with_capacity(instances.len() + 1);
    let spawn_worker = |tasks: &mut Vec<Task>, index, stage, input, output| {
        let worker = Worker { stage, index, input, output, queue: Arc::clone(&queue), failures: failures.clone() };
        tasks.push((Arc::clone(&name), worker.run().boxed()));
    };
    match mode {
        Mode::Ordered | Mode::Unordered => {
            let seq = Arc::new(AtomicU64::new(0));
            let rx = Arc::new(Mutex::new(input.rx));
            let worker_output = if mode == Mode::Ordered {
                let (tx, done) = mpsc::unbounded_channel();
                let sequencer = sequence(done, output, failures.clone());
                tasks.push((Arc::clone(&name), sequencer.boxed()));
                WorkerOutput::Sequenced { tx, seq: Arc::clone(&seq) }
            } else {
                WorkerOutput::Direct(output)
            };
            for (index, stage) in instances.into_iter().enumerate() {
                let input = WorkerInput::Shared { rx: Arc::clone(&rx), seq: Arc::clone(&seq) };
                spawn_worker(&mut tasks, index, stage, input, worker_output.clone());
            }
        }
        Mode::Keyed => {
            let mut senders = Vec::with_capacity(instances.len());
            for (index, stage) in instances.into_iter().enumerate() {
                let (tx, rx) = mpsc::unbounded_channel();
                senders.push(tx);
                spawn_worker(&mut tasks, index, stage, WorkerInput::Own(rx), WorkerOutput::Direct(output.clone()));
            }
            tasks.push((Arc::clone(&name), dispatch::<S>(input, senders, Arc::clone(&name)).boxed()));
        }
    }
    tasks
}

/// Ordered mode: releases outputs in input order. It holds at most the stage's bound of inputs, because every
/// input keeps its permit until its outputs have left from here.
async fn sequence<T>(
    mut done: mpsc::UnboundedReceiver<Sequenced<T>>,
    output: Output<T>,
    failures: Failures,
) -> Result<(), FlowError> {
    let mut next = 0u64;
    let mut waiting: BTreeMap<u64, Sequenced<T>> = BTreeMap::new();
    while let Some(finished) = done.recv().await {
        waiting.insert(finished.seq, finished);
        while let Some(ready) = waiting.remove(&next) {
            next += 1;
            let count = ready.items.len() as u64;
            for item in ready.items {
                output.send(item, &failures.stage).await?;
            }
            failures.metrics.items_out(count);
            StageStats::add(&failures.stats.items_out, count);
            // The input has left the stage: its room goes back upstream.
            drop(ready.permit);
        }
    }
    // Anything still waiting lacks an earlier position, which only a failed worker leaves behind; that worker's
    // error is what the flow reports.
    Ok(())
}

/// Keyed mode: routes each input to the worker of its key, in queue order.
async fn dispatch<S: Stage>(
    mut input: EdgeReceiver<S::In>,
    workers: Vec<mpsc::UnboundedSender<Envelope<S::In>>>,
    stage: Arc<str>,
) -> Result<(), FlowError> {
    let disconnected = || FlowError::Disconnected { stage: stage.to_string() };
    while let Some(envelope) = input.rx.recv().await {
        let worker = workers.get(spread(S::key(&envelope.item), workers.len())).ok_or_else(disconnected)?;
        worker.send(envelope).map_err(|_| disconnected())?;
    }
    Ok(())
}

/// The worker index of a key: mixed first (SplitMix64 finaliser) so that keys with a pattern (multiples of the
/// worker count, small table ids) still spread evenly.
fn spread(key: u64, workers: usize) -> usize {
    let mut mixed = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    mixed ^= mixed >> 31;
    // `workers` is at least 1 (checked when the flow is built) and the remainder is below it, so both casts are exact.
    (mixed % workers.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn keys_spread_over_every_worker() {
        for workers in [1, 2, 3, 8] {
            let mut seen = vec![0usize; workers];
            for key in 0..1000u64 {
                seen[spread(key * workers as u64, workers)] += 1;
            }
            assert!(seen.iter().all(|&count| count > 1000 / workers / 2), "{workers} workers: {seen:?}");
        }
    }
}
