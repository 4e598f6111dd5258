//! Shutdown by the cancellation token: the source stops, everything accepted is drained exactly once, then every
//! instance is flushed and closed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use philotes_engine::{Emitter, Flow, Mode, Stage, StageError, StageOptions};
use tokio_util::sync::CancellationToken;

use crate::helpers::{counting_source, Collect, Jitter};

/// Groups inputs into batches of up to `size`, flushed by age too; counts its hook calls.
struct Batch {
    size: usize,
    held: Vec<u64>,
    flushes: Arc<AtomicU64>,
    closes: Arc<AtomicU64>,
}

impl Stage for Batch {
    type In = u64;
    type Out = Vec<u64>;

    fn mode(&self) -> Mode {
        Mode::Keyed
    }

    fn key(item: &u64) -> u64 {
        item % 3
    }

    async fn process(&mut self, item: &u64, out: &mut Emitter<Vec<u64>>) -> Result<(), StageError> {
        self.held.push(*item);
        if self.held.len() >= self.size {
            out.emit(std::mem::take(&mut self.held));
        }
        Ok(())
    }

    fn flush_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(5))
    }

    async fn flush(&mut self, out: &mut Emitter<Vec<u64>>) -> Result<(), StageError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        if !self.held.is_empty() {
            out.emit(std::mem::take(&mut self.held));
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<(), StageError> {
        assert!(self.held.is_empty(), "close before the last flush");
        self.closes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_by_token_drains_every_accepted_item_exactly_once() {
    let taken = Arc::new(AtomicU64::new(0));
    let flushes = Arc::new(AtomicU64::new(0));
    let closes = Arc::new(AtomicU64::new(0));
    let received = Arc::new(Mutex::new(Vec::<Vec<u64>>::new()));
    let sink = Collect::new(&received);
    let sink_closes = Arc::clone(&sink.closed);
    let mut sinks = Some(sink);
    let cancel = CancellationToken::new();

    let flow = Flow::from_stream(counting_source(&taken))
        .stage("jitter", StageOptions::new(4, 8), |worker| Jitter::new(2, worker, 3))
        .stage("batch", StageOptions::new(3, 4), |_| Batch {
            size: 7,
            held: Vec::new(),
            flushes: Arc::clone(&flushes),
            closes: Arc::clone(&closes),
        })
        .sink("collect", StageOptions::new(1, 4), |_| sinks.take().expect("one sink worker"));
    let running = tokio::spawn(flow.run(cancel.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    cancel.cancel();
    let report = running.await.expect("flow task").expect("flow drains cleanly");

    let taken = taken.load(Ordering::SeqCst);
    assert!(taken > 100, "the flow barely ran: {taken} items");
    let mut items: Vec<u64> = received.lock().unwrap().iter().flatten().copied().collect();
    items.sort_unstable();
    assert!(items.iter().copied().eq(0..taken), "each accepted item must reach the sink exactly once");
    assert!(flushes.load(Ordering::SeqCst) >= 3, "every batch instance flushes at the end");
    assert_eq!(closes.load(Ordering::SeqCst), 3, "every batch instance closes");
    assert_eq!(sink_closes.load(Ordering::SeqCst), 1, "the sink closes");
    assert_eq!(report.stage("source").map(|s| s.items_out), Some(taken));
    assert_eq!(report.stage("jitter").map(|s| (s.items_in, s.items_out)), Some((taken, taken)));
}

#[tokio::test(start_paused = true)]
async fn a_batching_stage_flushes_a_quiet_batch_on_its_timer() {
    let received = Arc::new(Mutex::new(Vec::<Vec<u64>>::new()));
    let (tx, rx) = futures::channel::mpsc::unbounded::<u64>();
    let flow = Flow::from_stream(rx)
        .stage("batch", StageOptions::new(1, 4), |_| Batch {
            size: 100,
            held: Vec::new(),
            flushes: Arc::default(),
            closes: Arc::default(),
        })
        .sink("collect", StageOptions::new(1, 4), |_| Collect::new(&received));
    let running = tokio::spawn(flow.run(CancellationToken::new()));
    for n in 0..3 {
        tx.unbounded_send(n).expect("flow is running");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(*received.lock().unwrap(), vec![vec![0, 1, 2]], "the quiet batch must leave by age");
    drop(tx);
    running.await.expect("flow task").expect("flow ends with its source");
}
