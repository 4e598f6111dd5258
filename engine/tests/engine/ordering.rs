//! Order guarantees: ordered mode keeps input order whatever the worker count; keyed mode keeps per-key order and
//! spreads keys over workers.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use philotes_engine::{Flow, Mode, StageOptions};
use tokio_util::sync::CancellationToken;

use crate::helpers::{Collect, Jitter, Keyed, KeyedJitter};

const ITEMS: u64 = 100_000;

async fn ordered_run(workers: usize) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let report = Flow::from_stream(futures::stream::iter(0..ITEMS))
        .stage("jitter", StageOptions::new(workers, 16).mode(Mode::Ordered), |worker| Jitter::new(7, worker, 3))
        .sink("collect", StageOptions::new(1, 16), |_| Collect::new(&received))
        .run(CancellationToken::new())
        .await
        .expect("flow runs");
    let received = received.lock().unwrap();
    assert_eq!(received.len() as u64, ITEMS);
    assert!(received.iter().copied().eq(0..ITEMS), "outputs left out of input order");
    assert_eq!(report.stage("jitter").map(|s| s.items_out), Some(ITEMS));
}

#[tokio::test(start_paused = true)]
async fn ordered_mode_keeps_input_order_with_one_worker() {
    ordered_run(1).await;
}

#[tokio::test(start_paused = true)]
async fn ordered_mode_keeps_input_order_with_two_workers() {
    ordered_run(2).await;
}

#[tokio::test(start_paused = true)]
async fn ordered_mode_keeps_input_order_with_eight_workers() {
    ordered_run(8).await;
}

#[tokio::test(start_paused = true)]
async fn ordered_mode_keeps_input_order_when_inputs_emit_zero_to_three_outputs() {
    let received = Arc::new(Mutex::new(Vec::new()));
    Flow::from_stream(futures::stream::iter(0..5_000u64))
        .stage("explode", StageOptions::new(4, 4), |worker| Jitter { fanout: |n| n % 4, ..Jitter::new(3, worker, 2) })
        .sink("collect", StageOptions::new(1, 4), |_| Collect::new(&received))
        .run(CancellationToken::new())
        .await
        .expect("flow runs");
    let expected: Vec<u64> = (0..5_000u64).flat_map(|n| std::iter::repeat_n(n, (n % 4) as usize)).collect();
    assert_eq!(*received.lock().unwrap(), expected);
}

#[tokio::test(start_paused = true)]
async fn keyed_mode_keeps_per_key_order_and_spreads_keys_over_workers() {
    const KEYS: u64 = 16;
    const PER_KEY: u64 = 2_000;
    let inputs: Vec<Keyed> = (0..PER_KEY).flat_map(|seq| (0..KEYS).map(move |key| (key, seq))).collect();
    let received = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::default();
    Flow::from_stream(futures::stream::iter(inputs))
        .stage("keyed", StageOptions::new(4, 8), |worker| {
            KeyedJitter(Jitter { seen: Arc::clone(&seen), ..Jitter::new(11, worker, 3) })
        })
        .sink("collect", StageOptions::new(1, 8), |_| Collect::new(&received))
        .run(CancellationToken::new())
        .await
        .expect("flow runs");

    let mut per_key: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (key, seq) in received.lock().unwrap().iter() {
        per_key.entry(*key).or_default().push(*seq);
    }
    assert_eq!(per_key.len() as u64, KEYS);
    for (key, seqs) in &per_key {
        assert!(seqs.iter().copied().eq(0..PER_KEY), "key {key} lost its order");
    }
    let seen = seen.lock().unwrap();
    let mut used: HashSet<usize> = HashSet::new();
    for (key, workers) in seen.iter() {
        let distinct: HashSet<usize> = workers.iter().copied().collect();
        assert_eq!(distinct.len(), 1, "key {key} ran on several workers");
        used.extend(distinct);
    }
    assert_eq!(used.len(), 4, "keys did not spread over the workers");
}

#[tokio::test(start_paused = true)]
async fn unordered_mode_delivers_every_input_once() {
    let received = Arc::new(Mutex::new(Vec::new()));
    Flow::from_stream(futures::stream::iter(0..10_000u64))
        .stage("jitter", StageOptions::new(4, 8).mode(Mode::Unordered), |worker| Jitter::new(5, worker, 3))
        .sink("collect", StageOptions::new(2, 8).mode(Mode::Unordered), |_| Collect::new(&received))
        .run(CancellationToken::new())
        .await
        .expect("flow runs");
    let mut received = received.lock().unwrap().clone();
    assert!(!received.is_sorted(), "eight-way jitter should reorder something");
    received.sort_unstable();
    assert!(received.into_iter().eq(0..10_000u64));
}
