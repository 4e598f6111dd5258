//! Property tests of the order guarantees over random worker counts, queue sizes, delays and fan-outs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use philotes_engine::{Flow, Mode, StageOptions};
use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Collect, Jitter, Keyed, KeyedJitter};

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a test runtime")
}

fn fanout(n: u64) -> u64 {
    n % 3
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, max_shrink_iters: 64, ..ProptestConfig::default() })]

    #[test]
    fn ordered_mode_keeps_input_order_for_any_pool_shape(
        workers in 1usize..9,
        queue in 0usize..9,
        max_ms in 0u64..4,
        items in 0u64..600,
        seed in any::<u64>(),
        downstream_workers in 1usize..4,
    ) {
        let received = Arc::new(Mutex::new(Vec::new()));
        paused_runtime().block_on(async {
            Flow::from_stream(futures::stream::iter(0..items))
                .stage("first", StageOptions::new(workers, queue).mode(Mode::Ordered), |w| {
                    Jitter { fanout, ..Jitter::new(seed, w, max_ms) }
                })
                .stage("second", StageOptions::new(downstream_workers, queue).mode(Mode::Ordered), |w| {
                    Jitter::new(seed ^ 1, w, max_ms)
                })
                .sink("collect", StageOptions::new(1, queue), |_| Collect::new(&received))
                .run(CancellationToken::new())
                .await
        }).expect("flow runs");
        let expected: Vec<u64> = (0..items).flat_map(|n| std::iter::repeat_n(n, fanout(n) as usize)).collect();
        prop_assert_eq!(&*received.lock().unwrap(), &expected);
    }

    #[test]
    fn keyed_mode_keeps_per_key_order_for_any_pool_shape(
        workers in 1usize..9,
        queue in 0usize..9,
        max_ms in 0u64..4,
        keys in 1u64..12,
        inputs in prop::collection::vec(0u64..12, 0..600),
        seed in any::<u64>(),
    ) {
        let mut next: BTreeMap<u64, u64> = BTreeMap::new();
        let inputs: Vec<Keyed> = inputs
            .into_iter()
            .map(|k| {
                let key = k % keys;
                let seq = next.entry(key).or_default();
                *seq += 1;
                (key, *seq - 1)
            })
            .collect();
        let received = Arc::new(Mutex::new(Vec::new()));
        paused_runtime().block_on(async {
            Flow::from_stream(futures::stream::iter(inputs))
                .stage("keyed", StageOptions::new(workers, queue), |w| KeyedJitter(Jitter::new(seed, w, max_ms)))
                .sink("collect", StageOptions::new(1, queue), |_| Collect::new(&received))
                .run(CancellationToken::new())
                .await
        }).expect("flow runs");
        let mut per_key: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (key, seq) in received.lock().unwrap().iter() {
            per_key.entry(*key).or_default().push(*seq);
        }
        for (key, count) in next {
            let seqs = per_key.remove(&key).unwrap_or_default();
            prop_assert!(seqs.iter().copied().eq(0..count), "key {} out of order: {:?}", key, seqs);
        }
        prop_assert!(per_key.is_empty());
    }
}
