//! What a finished flow did, per stage: the counts a caller logs or asserts on after `Flow::run`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters a stage's tasks update while the flow runs.
#[derive(Debug, Default)]
pub(crate) struct StageStats {
    pub(crate) items_in: AtomicU64,
    pub(crate) items_out: AtomicU64,
    pub(crate) retries: AtomicU64,
}

impl StageStats {
    pub(crate) fn add(counter: &AtomicU64, count: u64) {
        counter.fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn report(&self, name: &str) -> StageReport {
        StageReport {
            name: name.to_owned(),
            items_in: self.items_in.load(Ordering::Relaxed),
            items_out: self.items_out.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

/// The outcome of a flow that ended cleanly (source exhausted, or shut down and drained).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowReport {
    /// The source first, then every stage in flow order, the sink last.
    pub stages: Vec<StageReport>,
}

impl FlowReport {
    /// The report of one stage by name.
    pub fn stage(&self, name: &str) -> Option<&StageReport> {
        self.stages.iter().find(|stage| stage.name == name)
    }
}

/// Counts of one stage over a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageReport {
    /// The stage name (`source` for the source).
    pub name: String,
    /// Inputs taken (for the source: items handed to the first stage).
    pub items_in: u64,
    /// Outputs forwarded downstream.
    pub items_out: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
}
