//! Where inputs that cannot be processed go: the [`DeadLetterHandler`] the flow is given (philotes writes them to
//! `philotes.dead_letters`), so that one bad event never stops a pipeline and is never silently dropped.

use std::fmt;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::error::BoxError;

/// One input a stage rejected with [`crate::StageError::BadItem`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The stage that rejected it.
    pub stage: String,
    /// Why, as the stage's error renders it.
    pub reason: String,
    /// The input, as [`crate::Stage::render`] renders it (empty for a source error, `<flush>` for a flush).
    pub item: String,
}

/// Takes dead letters. Called by any worker of any stage, concurrently, once per rejected input; the input
/// counts as handled only when this returns `Ok`. An `Err` stops the flow (the item would otherwise be lost).
pub trait DeadLetterHandler: Send + Sync + 'static {
    /// Stores or reports one dead letter.
    fn handle(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), BoxError>>;
}

/// The default handler: logs each dead letter at `error` level. Not silent, but not durable either: a pipeline
/// that must keep them passes its own handler.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogDeadLetters;

impl DeadLetterHandler for LogDeadLetters {
    fn handle(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), BoxError>> {
        tracing::error!(stage = %letter.stage, reason = %letter.reason, item = %letter.item, "dead letter");
        futures::future::ready(Ok(())).boxed()
    }
}

/// A handler from a plain function (tests, or forwarding into a channel); infallible and synchronous.
pub struct DeadLetterFn<F>(pub F);

impl<F> fmt::Debug for DeadLetterFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeadLetterFn")
    }
}

impl<F> DeadLetterHandler for DeadLetterFn<F>
where
    F: Fn(DeadLetter) + Send + Sync + 'static,
{
    fn handle(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), BoxError>> {
        (self.0)(letter);
        futures::future::ready(Ok(())).boxed()
    }
}
