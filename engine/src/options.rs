//! Per-stage settings the pipeline config provides: how many workers, how deep the queue, which mode, how to retry.

use std::time::Duration;

use crate::stage::Mode;

/// The largest `workers + queue` a stage may ask for; far above any sane setting, well below the semaphore limit.
pub const MAX_IN_FLIGHT: usize = 1 << 24;

/// How a stage runs: separate from the stage so that config (YAML) decides it without touching stage code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageOptions {
    /// How many instances of the stage run concurrently (at least 1).
    pub workers: usize,
    /// How many inputs may wait for a worker. At most `queue + workers` inputs are inside the stage at once
    /// (waiting, being processed, or processed and waiting to leave in order): the bound on its memory.
    pub queue: usize,
    /// Overrides the mode the stage declares ([`crate::Stage::mode`]); `None` keeps the stage's own.
    pub mode: Option<Mode>,
    /// How retryable errors are retried.
    pub retry: RetryPolicy,
}

impl Default for StageOptions {
    fn default() -> Self {
        Self { workers: 1, queue: 64, mode: None, retry: RetryPolicy::default() }
    }
}

impl StageOptions {
    /// `workers` instances fed by a queue of `queue` inputs; the stage's own mode, the default retry policy.
    pub fn new(workers: usize, queue: usize) -> Self {
        Self { workers, queue, ..Self::default() }
    }

    /// Overrides the stage's declared mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Replaces the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Every problem with these options, for a report that lists them all.
    pub(crate) fn problems(&self, stage: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.workers == 0 {
            problems.push(format!("stage `{stage}`: workers must be at least 1"));
        }
        if self.workers.saturating_add(self.queue) > MAX_IN_FLIGHT {
            problems.push(format!("stage `{stage}`: workers + queue must not exceed {MAX_IN_FLIGHT}"));
        }
        if self.retry.max_attempts == 0 {
            problems.push(format!("stage `{stage}`: retry.max_attempts must be at least 1"));
        }
        problems
    }
}

/// Capped exponential backoff: attempt `n` (1-based) that fails retryably waits `min(cap, base * 2^(n-1))`
/// before attempt `n + 1`; after `max_attempts` attempts the error becomes fatal. No jitter: one flow retries one
/// input at a time per worker, so there is no herd to spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first wait.
    pub base: Duration,
    /// The longest wait.
    pub cap: Duration,
    /// How many attempts in all, the first included; at least 1.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { base: Duration::from_millis(100), cap: Duration::from_secs(30), max_attempts: 10 }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_base_and_stops_at_cap() {
        let policy = RetryPolicy {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(100),
            max_attempts: 5,
        };
        let delays: Vec<u128> = (1..=6).map(|n| policy.delay(n).as_millis()).collect();
        assert_eq!(delays, vec![10, 20, 40, 80, 100, 100]);
        assert_eq!(policy.delay(200), Duration::from_millis(100));
    }

    #[test]
    fn options_report_every_problem() {
        let options = StageOptions {
            workers: 0,
            queue: MAX_IN_FLIGHT + 1,
            mode: None,
            retry: RetryPolicy { max_attempts: 0, ..RetryPolicy::default() },
        };
        assert_eq!(options.problems("decode").len(), 3);
        assert!(StageOptions::new(2, 8).problems("decode").is_empty());
    }
}
