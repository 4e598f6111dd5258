//! Backpressure: a stalled end stalls the whole flow, with at most `queue + workers` inputs inside each stage.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use philotes_engine::{Emitter, Flow, Mode, Stage, StageError, StageOptions};
use tokio_util::sync::CancellationToken;

use crate::helpers::{counting_source, Collect, Jitter, Stuck};

#[tokio::test(start_paused = true)]
async fn a_stalled_sink_keeps_items_in_flight_within_the_configured_bound() {
    let taken = Arc::new(AtomicU64::new(0));
    let stages = [
        ("ordered", StageOptions::new(2, 3).mode(Mode::Ordered)),
        ("unordered", StageOptions::new(3, 1).mode(Mode::Unordered)),
        ("keyed", StageOptions::new(2, 2).mode(Mode::Keyed)),
    ];
    let sink = StageOptions::new(1, 2);
    // Each stage holds at most queue + workers inputs; the source holds the one it waits to hand over.
    let bound = 1 + stages.iter().map(|(_, o)| o.queue + o.workers).sum::<usize>() + sink.queue + sink.workers;

    let mut flow = Flow::from_stream(counting_source(&taken));
    for (name, options) in stages.clone() {
        flow = flow.stage(name, options, |worker| Jitter::new(1, worker, 2));
    }
    let flow = flow.sink("stuck", sink, |_| Stuck);
    let running = tokio::spawn(flow.run(CancellationToken::new()));
    // The paused clock only advances once every task is idle: after this, the flow has settled.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let in_flight = taken.load(Ordering::SeqCst) as usize; // nothing ever completes in the sink
    assert!(in_flight <= bound, "{in_flight} inputs in flight, bound {bound}");
    assert_eq!(in_flight, bound, "the flow should fill up to its bound, no further");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(taken.load(Ordering::SeqCst) as usize, bound, "a stalled flow must not keep reading");
    running.abort();
}

/// An ordered stage whose first input never finishes.
struct StuckFirst;

impl Stage for StuckFirst {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, item: &u64, out: &mut Emitter<u64>) -> Result<(), StageError> {
        if *item == 0 {
            std::future::pending::<()>().await;
        }
        out.emit(*item);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn ordered_mode_bounds_its_resequencing_buffer_behind_a_stuck_input() {
    let taken = Arc::new(AtomicU64::new(0));
    let received = Arc::new(Mutex::new(Vec::<u64>::new()));
    let options = StageOptions::new(4, 2).mode(Mode::Ordered);
    let bound = 1 + options.queue + options.workers;
    let flow = Flow::from_stream(counting_source(&taken))
        .stage("ordered", options, |_| StuckFirst)
        .sink("collect", StageOptions::new(1, 2), |_| Collect::new(&received));
    let running = tokio::spawn(flow.run(CancellationToken::new()));
    tokio::time::sleep(Duration::from_secs(5)).await;

    assert!(received.lock().unwrap().is_empty(), "nothing may overtake input 0");
    assert_eq!(taken.load(Ordering::SeqCst) as usize, bound);
    running.abort();
}
