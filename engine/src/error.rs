//! Errors of the engine: what a stage reports ([`StageError`]), what the engine does about it ([`Action`]),
//! and why a flow stopped ([`FlowError`]).

/// Any error a stage wraps; boxed so that stages keep their own error types.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What the engine does with a failed attempt; decided by [`StageError::action`] alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Try the same input again after a capped exponential backoff (fatal once the attempts run out).
    Retry,
    /// Stop the whole flow; `Flow::run` returns the error.
    Stop,
    /// Stop the whole flow as [`Action::Stop`] does, saying that the role may start it again from its last
    /// checkpoint (`Flow::run` returns [`FlowError::SessionLost`]).
    Restart,
}

/// An error a stage (or source) returns. The variant is the classification: stages map their own errors
/// into it (usually with `From`), and the engine never inspects the cause.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Transient (connection lost, catalog conflict): the same input is tried again.
    #[error("{0}")]
    Retryable(#[source] BoxError),
    /// An invariant is broken: the flow stops.
    #[error("{0}")]
    Fatal(#[source] BoxError),
    /// The session the stage works on is lost (a connection closed, a server restarted): retrying this input
    /// on it cannot help, so the flow stops and the role that runs it starts again from its checkpoint.
    #[error("{0}")]
    SessionLost(#[source] BoxError),
}

impl StageError {
    /// A transient failure; see [`StageError::Retryable`].
    pub fn retryable(cause: impl Into<BoxError>) -> Self {
        Self::Retryable(cause.into())
    }

    /// A failure that must stop the flow; see [`StageError::Fatal`].
    pub fn fatal(cause: impl Into<BoxError>) -> Self {
        Self::Fatal(cause.into())
    }

    /// A lost session; see [`StageError::SessionLost`].
    pub fn session_lost(cause: impl Into<BoxError>) -> Self {
        Self::SessionLost(cause.into())
    }

    /// The one place that decides what happens after this error.
    pub fn action(&self) -> Action {
        match self {
            Self::Retryable(_) => Action::Retry,
            Self::Fatal(_) => Action::Stop,
            Self::SessionLost(_) => Action::Restart,
        }
    }

    /// The value of the `kind` attribute on the errors counter.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Retryable(_) => "retryable",
            Self::Fatal(_) => "fatal",
            Self::SessionLost(_) => "session_lost",
        }
    }

    /// The wrapped cause, for reports that outlive the classification.
    pub fn into_cause(self) -> BoxError {
        match self {
            Self::Retryable(cause) | Self::Fatal(cause) | Self::SessionLost(cause) => cause,
        }
    }
}

/// Why [`crate::Flow::run`] failed. Every variant that comes from a stage names it.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// A stage (or the source) returned a fatal error.
    #[error("stage `{stage}` stopped the flow: {cause}")]
    Fatal {
        /// The stage that failed.
        stage: String,
        /// What it reported.
        #[source]
        cause: BoxError,
    },
    /// A stage (or the source) lost its session: the role may run the flow again from its checkpoint.
    #[error("stage `{stage}` lost its session: {cause}")]
    SessionLost {
        /// The stage that failed.
        stage: String,
        /// What it reported.
        #[source]
        cause: BoxError,
    },
    /// A retryable error kept failing until the retry policy gave up.
    #[error("stage `{stage}` gave up after {attempts} attempts: {cause}")]
    RetriesExhausted {
        /// The stage that failed.
        stage: String,
        /// How many attempts were made, the first included.
        attempts: u32,
        /// The last error.
        #[source]
        cause: BoxError,
    },
    /// The flow was shut down while a stage waited to retry an input: the input was not processed, and the role
    /// that runs the flow resumes from its checkpoint next time (nothing is lost).
    #[error("stage `{stage}` was retrying when the flow shut down: {cause}")]
    Interrupted {
        /// The stage that was retrying.
        stage: String,
        /// The error it was retrying.
        #[source]
        cause: BoxError,
    },
    /// A stage task panicked.
    #[error("stage `{stage}` panicked")]
    Panicked {
        /// The stage whose task panicked.
        stage: String,
    },
    /// A stage lost its downstream queue; only a consequence of another failure, which is reported instead.
    #[error("stage `{stage}` lost its downstream")]
    Disconnected {
        /// The stage that could not send.
        stage: String,
    },
    /// The flow was built wrong (zero workers, duplicate stage names); every problem is listed.
    #[error("invalid flow: {}", problems.join("; "))]
    Invalid {
        /// One line per problem.
        problems: Vec<String>,
    },
}

impl FlowError {
    /// The stage the error is about, when there is one.
    pub fn stage(&self) -> Option<&str> {
        match self {
            Self::Fatal { stage, .. }
            | Self::SessionLost { stage, .. }
            | Self::RetriesExhausted { stage, .. }
            | Self::Interrupted { stage, .. }
            | Self::Panicked { stage }
            | Self::Disconnected { stage } => Some(stage),
            Self::Invalid { .. } => None,
        }
    }

    /// Whether the role may run the flow again from its checkpoint ([`StageError::SessionLost`]).
    pub fn is_session_lost(&self) -> bool {
        matches!(self, Self::SessionLost { .. })
    }

    /// Whether the flow was shut down while a stage waited to retry ([`FlowError::Interrupted`]): a clean stop
    /// for a role whose shutdown was asked for.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, Self::Interrupted { .. })
    }

    /// Whether this error only follows from another one (and so should not be the one reported).
    pub(crate) fn is_secondary(&self) -> bool {
        matches!(self, Self::Disconnected { .. })
    }
}
