//! The agent's one error policy: where an error its shell recovers from — a watch that failed,
//! a report or unready request the coordinator did not take, a container runtime call, a
//! journal file — becomes a log line, a `relaunch_agent_errors_total{kind}` count and a decision
//! to retry or give up. Call sites keep their own back-off; they do not log errors themselves.
//! (Errors that fail a container are told in the request's status instead.)

pub use crate::error::ShellError;
use crate::metrics::AgentMetrics;

/// What the call site does after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again, after the call site's back-off.
    Later,
    /// Do not try this again.
    Never,
}

/// Turns `error`, met doing what `what` says (e.g. "report not delivered"), into a log line and
/// a count, and says whether to retry.
pub fn error_policy(metrics: &AgentMetrics, what: &str, error: &ShellError) -> Retry {
    let kind = error.kind();
    metrics.errors.with_label_values(&[kind]).inc();
    if error.is_transient() {
        tracing::warn!(kind, "{what}: {error}");
        return Retry::Later;
    }
    // The coordinator refused for good: what was sent is lost, which needs a person.
    if kind == "coordinator_rejected" {
        tracing::error!(kind, "{what}, giving up: {error}");
    } else {
        tracing::warn!(kind, "{what}, giving up: {error}");
    }
    Retry::Never
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator_client::CoordinatorError;
    use crate::journal::JournalError;
    use prometheus::core::Collector;

    #[test]
    fn every_kind_is_known_and_counted_from_zero() {
        let metrics = AgentMetrics::unregistered().unwrap();
        let errors = [
            ShellError::Coordinator(CoordinatorError::Timeout(std::time::Duration::from_secs(1))),
            ShellError::Coordinator(CoordinatorError::Rejected {
                status: 403,
                message: String::new(),
            }),
            ShellError::Coordinator(CoordinatorError::BadUrl { url: "x".into() }),
            ShellError::Journal(JournalError::Write {
                path: "/x".into(),
                source: std::io::Error::other("full"),
            }),
        ];
        let series = metrics.errors.collect()[0].get_metric().len();
        assert_eq!(
            series,
            ShellError::KINDS.len(),
            "every kind shown from the start"
        );
        for error in &errors {
            assert!(ShellError::KINDS.contains(&error.kind()), "{error}");
        }
        let retries: Vec<Retry> = errors
            .iter()
            .map(|e| error_policy(&metrics, "test", e))
            .collect();
        assert_eq!(
            retries,
            [Retry::Later, Retry::Never, Retry::Never, Retry::Never]
        );
        assert_eq!(
            metrics
                .errors
                .with_label_values(&["coordinator_rejected"])
                .get(),
            1
        );
    }
}
