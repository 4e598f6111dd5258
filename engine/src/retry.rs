//! What happens after a failed attempt: retry after a backoff, or stop. [`crate::StageError::action`] decides;
//! this module carries it out, the same way for every worker and for the source.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::error::{Action, FlowError, StageError};
use crate::options::RetryPolicy;
use crate::report::StageStats;
use crate::telemetry::StageMetrics;

/// Everything one stage needs to act on its failures.
#[derive(Clone)]
pub(crate) struct Failures {
    pub(crate) stage: Arc<str>,
    pub(crate) retry: RetryPolicy,
    pub(crate) metrics: Arc<StageMetrics>,
    pub(crate) stats: Arc<StageStats>,
    /// The flow's shutdown: a backoff ends early when it fires (the input is then not processed).
    pub(crate) cancel: CancellationToken,
}

impl Failures {
    /// Acts on failed attempt number `attempt` (1-based): waits for the backoff and returns `Ok` when the same
    /// input is to be tried again; otherwise returns why the flow stops.
    pub(crate) async fn handle(&self, error: StageError, attempt: u32) -> Result<(), FlowError> {
        self.metrics.error(error.kind());
        let stage = self.stage.to_string();
        match error.action() {
            Action::Retry if attempt < self.retry.max_attempts => {
                let wait = self.retry.delay(attempt);
                tracing::warn!(stage = %stage, attempt, ?wait, error = %crate::chain::error_chain(&error), "retrying");
                StageStats::add(&self.stats.retries, 1);
                tokio::select! {
                    () = tokio::time::sleep(wait) => Ok(()),
                    // A shutdown does not wait for an outage to end: the role resumes from its checkpoint.
                    () = self.cancel.cancelled() => Err(FlowError::Interrupted { stage, cause: error.into_cause() }),
                }
            }
            Action::Retry => Err(FlowError::RetriesExhausted { stage, attempts: attempt, cause: error.into_cause() }),
            Action::Stop => Err(FlowError::Fatal { stage, cause: error.into_cause() }),
            Action::Restart => Err(FlowError::SessionLost { stage, cause: error.into_cause() }),
        }
    }
}
