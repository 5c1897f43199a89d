//! The coordinator's one error policy: where a failed call to the Kubernetes API — by a
//! controller, the report API, leader election, a watch or the Event recorder — becomes a log
//! line, a `relaunch_coordinator_errors_total{kind}` count and a retry. Call sites return their
//! errors here instead of logging them.

use std::fmt::Display;
use std::time::Duration;

use crate::error::ClusterError;
use crate::metrics::Metrics;

/// How soon a controller runs again after a failed call (the request controller still holds
/// the same action on the same versions back for its own retry interval).
pub const RETRY_AFTER_ERROR: Duration = Duration::from_secs(5);

/// When what failed is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The object changed since it was read: the watch brings the new version, which wakes the
    /// controller, and the decision is taken again on it.
    OnChange,
    /// Through kube's watcher back-off (watches re-establish themselves).
    Backoff,
    /// After this long.
    After(Duration),
}

impl Retry {
    /// How soon the controller should run again for this retry, if a timer is needed.
    pub fn delay(self) -> Option<Duration> {
        match self {
            Retry::After(delay) => Some(delay),
            Retry::OnChange | Retry::Backoff => None,
        }
    }
}

/// Turns `error`, met while doing `action` (e.g. "writing rollout status") on `object` (e.g.
/// "RollingRestart ns/name"), into a log line and a count, and says when to retry.
pub fn error_policy(
    metrics: &Metrics,
    action: &str,
    object: &dyn Display,
    error: &ClusterError,
) -> Retry {
    let kind = error.kind();
    metrics.errors.with_label_values(&[kind]).inc();
    match error {
        // Losing a race is how optimistic concurrency works, not a problem: not worth a warning.
        ClusterError::Conflict(_) => {
            tracing::debug!(%object, kind, "{action}: the object changed meanwhile; deciding again");
            Retry::OnChange
        }
        // Expected for a moment after stepping down; the controllers are being stopped.
        ClusterError::NotLeading => {
            tracing::info!(%object, kind, "{action}: not sent, this replica no longer leads");
            Retry::OnChange
        }
        ClusterError::Watch(e) => {
            tracing::warn!(resource = %object, kind, error = %e, "watch failed; retrying with back-off");
            Retry::Backoff
        }
        // Nothing to retry: the object is left out until a version of it can be read.
        ClusterError::InvalidObject { .. } => {
            tracing::warn!(kind, "cannot read an object; leaving it out: {error}");
            Retry::OnChange
        }
        _ => {
            tracing::warn!(%object, kind, error = %error, "{action} failed; will retry");
            Retry::After(RETRY_AFTER_ERROR)
        }
    }
}
