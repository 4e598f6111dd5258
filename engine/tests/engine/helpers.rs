//! Stages, sinks and sources shared by the engine tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use philotes_engine::{Emitter, Mode, Stage, StageError};

/// Sleeps a random 0..=max_ms milliseconds (on the paused clock) or yields a random number of times, then
/// emits its input `fanout(item)` times; records which worker saw which key.
pub struct Jitter {
    pub rng: fastrand::Rng,
    pub max_ms: u64,
    pub worker: usize,
    pub fanout: fn(u64) -> u64,
    pub seen: Arc<Mutex<HashMap<u64, Vec<usize>>>>,
}

/// An input of the keyed tests: a key and the position of the input among those of its key.
pub type Keyed = (u64, u64);

impl Jitter {
    pub fn new(seed: u64, worker: usize, max_ms: u64) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed.wrapping_mul(31).wrapping_add(worker as u64)),
            max_ms,
            worker,
            fanout: |_| 1,
            seen: Arc::default(),
        }
    }

    pub async fn wait(&mut self) {
        if self.rng.bool() {
            let ms = self.rng.u64(0..=self.max_ms);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        } else {
            for _ in 0..self.rng.u8(0..4) {
                tokio::task::yield_now().await;
            }
        }
    }
}

impl Stage for Jitter {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, item: &u64, out: &mut Emitter<u64>) -> Result<(), StageError> {
        self.wait().await;
        for _ in 0..(self.fanout)(*item) {
            out.emit(*item);
        }
        Ok(())
    }
}

/// [`Jitter`] for keyed inputs, keyed by the first field.
pub struct KeyedJitter(pub Jitter);

impl Stage for KeyedJitter {
    type In = Keyed;
    type Out = Keyed;

    fn mode(&self) -> Mode {
        Mode::Keyed
    }

    fn key(item: &Keyed) -> u64 {
        item.0
    }

    async fn process(&mut self, item: &Keyed, out: &mut Emitter<Keyed>) -> Result<(), StageError> {
        let worker = self.0.worker;
        self.0.seen.lock().unwrap().entry(item.0).or_default().push(worker);
        self.0.wait().await;
        out.emit(*item);
        Ok(())
    }
}

/// A sink that keeps everything it receives, in arrival order.
pub struct Collect<T> {
    pub items: Arc<Mutex<Vec<T>>>,
    pub closed: Arc<AtomicU64>,
}

impl<T> Collect<T> {
    pub fn new(items: &Arc<Mutex<Vec<T>>>) -> Self {
        Self { items: Arc::clone(items), closed: Arc::default() }
    }
}

impl<T: std::fmt::Debug + Clone + Send + Sync + 'static> Stage for Collect<T> {
    type In = T;
    type Out = ();

    async fn process(&mut self, item: &T, _: &mut Emitter<()>) -> Result<(), StageError> {
        self.items.lock().unwrap().push(item.clone());
        Ok(())
    }

    async fn close(&mut self) -> Result<(), StageError> {
        self.closed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A sink that never finishes its first input: the end of the flow is stalled.
pub struct Stuck;

impl Stage for Stuck {
    type In = u64;
    type Out = ();

    async fn process(&mut self, _: &u64, _: &mut Emitter<()>) -> Result<(), StageError> {
        std::future::pending().await
    }
}

/// An endless source of 0, 1, 2, … that counts what it handed over.
pub fn counting_source(taken: &Arc<AtomicU64>) -> impl futures::Stream<Item = u64> + Send + Unpin + 'static {
    let taken = Arc::clone(taken);
    futures::stream::iter(0u64..).map(move |n| {
        taken.fetch_add(1, Ordering::SeqCst);
        n
    })
}

use futures::StreamExt as _;
