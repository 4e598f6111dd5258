//! Restarting a role after a lost connection: the capture and the flusher both run *sessions* that end on any
//! error; a session that a restart can mend (a connection lost, a server restarted) is started again after a
//! capped exponential backoff, anything else stops the role.

use std::future::Future;
use std::time::{Duration, Instant};

use philotes_engine::RetryPolicy;
use tokio_util::sync::CancellationToken;

/// A session that ran at least this long starts the backoff over: an outage next week does not inherit this
/// week's waits.
const HEALTHY_SESSION: Duration = Duration::from_secs(60);

/// Runs `session` until it succeeds, `cancel` fires, or it fails in a way `restartable` says a restart cannot
/// mend. `message` is the log line of each restart (it names the role and what a restart means for it). A session
/// that `interrupted` says was stopped by the shutdown while it waited to retry ends the role cleanly: it resumes
/// from its checkpoint next time, as after any restart.
pub async fn restart_on_failure<E, F, Fut>(
    message: &str,
    policy: RetryPolicy,
    cancel: &CancellationToken,
    restartable: impl Fn(&E) -> bool,
    interrupted: impl Fn(&E) -> bool,
    mut session: F,
) -> Result<(), E>
where
    E: std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let mut attempt: u32 = 0;
    loop {
        let started = Instant::now();
        match session().await {
            Ok(()) => return Ok(()),
            Err(e) if restartable(&e) && !cancel.is_cancelled() => {
                attempt = if started.elapsed() > HEALTHY_SESSION { 1 } else { attempt.saturating_add(1) };
                let delay = policy.delay(attempt.min(30));
                tracing::warn!(error = %crate::report::chain(&e), attempt, delay_ms = delay.as_millis() as u64, "{message}");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = cancel.cancelled() => return Ok(()),
                }
            }
            Err(e) if cancel.is_cancelled() && interrupted(&e) => {
                tracing::info!(error = %crate::report::chain(&e), "shut down while retrying; the next start resumes from the checkpoint");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}
