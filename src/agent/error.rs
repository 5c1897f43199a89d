//! The errors the agent's shell recovers from, one enum over its boundaries (watches, the
//! coordinator, the container runtime, the journal); [`crate::error_policy`] turns them into
//! logs, metrics and retries.

use relaunch_cri::CriError;

use crate::coordinator_client::CoordinatorError;
use crate::journal::JournalError;

/// An error the agent's shell met.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// A watch failed; kube's watcher re-establishes it with back-off.
    #[error("{resource}: {source}")]
    Watch {
        resource: &'static str,
        source: kube::runtime::watcher::Error,
    },
    /// The coordinator did not take a report or an unready request.
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
    /// The container runtime did not answer as asked.
    #[error(transparent)]
    Runtime(#[from] CriError),
    /// A journal file could not be written or removed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// An object from a watch that does not deserialize (a newer release's, or garbage): it is
    /// left out of the agent's cache, and the watch goes on.
    #[error("{resource} {name}: {error}")]
    InvalidObject {
        resource: &'static str,
        name: String,
        error: String,
    },
    /// A request's worker panicked (a bug); its request was failed.
    #[error("the worker of request {request} panicked: {message}")]
    Worker { request: String, message: String },
}

impl ShellError {
    /// Every `kind` label, so the counters start at 0 and `increase()` sees the first error.
    pub const KINDS: [&'static str; 9] = [
        "watch",
        "coordinator_unavailable",
        "coordinator_rejected",
        "token",
        "config",
        "runtime",
        "journal",
        "worker",
        "invalid_object",
    ];

    /// The `kind` label of `relaunch_agent_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ShellError::Watch { .. } => "watch",
            ShellError::Coordinator(e) => match e {
                CoordinatorError::Unreachable(_)
                | CoordinatorError::Timeout(_)
                | CoordinatorError::Unavailable { .. } => "coordinator_unavailable",
                CoordinatorError::Rejected { .. } | CoordinatorError::Answer(_) => {
                    "coordinator_rejected"
                }
                CoordinatorError::Token { .. } => "token",
                CoordinatorError::BadUrl { .. } | CoordinatorError::Ca { .. } => "config",
            },
            ShellError::Runtime(_) => "runtime",
            ShellError::Journal(_) => "journal",
            ShellError::Worker { .. } => "worker",
            ShellError::InvalidObject { .. } => "invalid_object",
        }
    }

    /// Whether trying the same thing again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ShellError::Watch { .. } => true,
            ShellError::Coordinator(e) => e.is_transient(),
            // The shell observes the runtime again (or reconnects) after any error; a stop that
            // cannot succeed fails its container instead, told in the request's status.
            ShellError::Runtime(_) => true,
            // A file that could not be removed is removed on the scheduler's next turn; one that
            // could not be written is not written by trying again at once.
            ShellError::Journal(e) => matches!(e, JournalError::Remove { .. }),
            ShellError::Worker { .. } | ShellError::InvalidObject { .. } => false,
        }
    }
}
