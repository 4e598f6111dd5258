//! What happens after a failed attempt: retry after a backoff, dead-letter, or stop. [`crate::StageError::action`]
//! decides; this module carries it out, the same way for every worker and for the source.

use std::sync::Arc;

use crate::dead_letter::{DeadLetter, DeadLetterHandler};
use crate::error::{Action, FlowError, StageError};
use crate::options::RetryPolicy;
use crate::report::StageStats;
use crate::telemetry::StageMetrics;

/// After a failure that did not stop the flow: try the same thing again, or skip it (it was dead-lettered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    Retry,
    Skip,
}

/// Everything one stage needs to act on its failures.
#[derive(Clone)]
pub(crate) struct Failures {
    pub(crate) stage: Arc<str>,
    pub(crate) retry: RetryPolicy,
    pub(crate) metrics: Arc<StageMetrics>,
    pub(crate) stats: Arc<StageStats>,
    pub(crate) dead_letters: Arc<dyn DeadLetterHandler>,
}

impl Failures {
    /// Acts on failed attempt number `attempt` (1-based). `render` gives the dead-letter rendering of what failed;
    /// `None` means it cannot be dead-lettered (a start or close hook), so a bad-item error there stops the flow.
    /// A retry waits here for its backoff before returning.
    pub(crate) async fn handle(
        &self,
        error: StageError,
        attempt: u32,
        render: Option<&(dyn Fn() -> String + Sync)>,
    ) -> Result<Next, FlowError> {
        self.metrics.error(error.kind());
        let stage = self.stage.to_string();
        match (error.action(), render) {
            (Action::Retry, _) if attempt < self.retry.max_attempts => {
                let wait = self.retry.delay(attempt);
                tracing::warn!(stage = %stage, attempt, ?wait, error = %crate::chain::error_chain(&error), "retrying");
                StageStats::add(&self.stats.retries, 1);
                tokio::time::sleep(wait).await;
                Ok(Next::Retry)
            }
            (Action::Retry, _) => {
                Err(FlowError::RetriesExhausted { stage, attempts: attempt, cause: error.into_cause() })
            }
            (Action::DeadLetter, Some(render)) => {
                let letter = DeadLetter { stage: stage.clone(), reason: error.to_string(), item: render() };
                self.dead_letters.handle(letter).await.map_err(|cause| FlowError::DeadLetter { stage, cause })?;
                StageStats::add(&self.stats.dead_letters, 1);
                Ok(Next::Skip)
            }
            (Action::DeadLetter, None) | (Action::Stop, _) => {
                Err(FlowError::Fatal { stage, cause: error.into_cause() })
            }
            (Action::Restart, _) => Err(FlowError::SessionLost { stage, cause: error.into_cause() }),
        }
    }
}
