//! Why the coordinator cannot run (the errors that end the binary; errors it recovers from go
//! through [`crate::error_policy`]).

use std::net::SocketAddr;

/// Why the coordinator cannot run.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("the controllers stopped unexpectedly")]
    ControllersStopped,
}

/// Why a call to the Kubernetes API failed. Each variant is one `kind` label of
/// `relaunch_coordinator_errors_total` and says what to look at.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// 409: the object changed since it was read; the decision is taken again on fresh data.
    #[error("the object changed since it was read (409 Conflict)")]
    Conflict(kube::Error),
    /// 404: the object is gone.
    #[error("not found (404): {0}")]
    NotFound(kube::Error),
    /// 403: the coordinator's RBAC does not allow the call.
    #[error("forbidden (403), check the coordinator's RBAC: {0}")]
    Forbidden(kube::Error),
    /// 400 or 422: the API server refused what was sent (a CRD older than the coordinator?).
    #[error("refused as invalid, check that the installed CRDs match the coordinator: {0}")]
    Invalid(kube::Error),
    /// The API server did not answer in time (client timeout, 408, 504).
    #[error("the API server did not answer in time: {0}")]
    Timeout(kube::Error),
    /// Any other failure of the API server or of the connection to it.
    #[error("{0}")]
    Api(kube::Error),
    /// A watch failed; it is re-established with back-off.
    #[error("{0}")]
    Watch(kube::runtime::watcher::Error),
    /// Refused before it was sent: this replica no longer leads (it could not renew the Lease
    /// in time), so it writes nothing; the new leader decides again.
    #[error("not sent: this replica no longer leads")]
    NotLeading,
    /// An object a watch brought that the coordinator cannot read (a newer release's, or one
    /// written around the CRD schema): left out of the cache, the watch goes on.
    #[error("cannot read {resource} {name}: {error}")]
    InvalidObject {
        resource: &'static str,
        name: String,
        error: String,
    },
}

impl ClusterError {
    /// Every `kind` label, so the counters start at 0 and `increase()` sees the first error.
    pub const KINDS: [&'static str; 9] = [
        "conflict",
        "not_found",
        "forbidden",
        "invalid",
        "timeout",
        "api",
        "watch",
        "not_leading",
        "invalid_object",
    ];

    /// The `kind` label of `relaunch_coordinator_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClusterError::Conflict(_) => "conflict",
            ClusterError::NotFound(_) => "not_found",
            ClusterError::Forbidden(_) => "forbidden",
            ClusterError::Invalid(_) => "invalid",
            ClusterError::Timeout(_) => "timeout",
            ClusterError::Api(_) => "api",
            ClusterError::Watch(_) => "watch",
            ClusterError::NotLeading => "not_leading",
            ClusterError::InvalidObject { .. } => "invalid_object",
        }
    }

    /// Whether the object changed since it was read (or, for a creation, already exists).
    pub fn is_conflict(&self) -> bool {
        matches!(self, ClusterError::Conflict(_))
    }

    /// Whether the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClusterError::NotFound(_))
    }
}

impl From<kube::Error> for ClusterError {
    fn from(e: kube::Error) -> Self {
        let code = match &e {
            kube::Error::Api(status) => Some(status.code),
            _ => None,
        };
        match code {
            Some(409) => ClusterError::Conflict(e),
            Some(404) => ClusterError::NotFound(e),
            Some(403) => ClusterError::Forbidden(e),
            Some(400 | 422) => ClusterError::Invalid(e),
            Some(408 | 504) => ClusterError::Timeout(e),
            None if timed_out(&e) => ClusterError::Timeout(e),
            _ => ClusterError::Api(e),
        }
    }
}

/// Whether a client-side error is a timeout: kube's connect and read timeouts surface as an I/O
/// error of kind `TimedOut` or as tower's "request timed out" somewhere down the source chain.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(error) = next {
        let io_timeout = error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
        if io_timeout || error.to_string().contains("timed out") {
            return true;
        }
        next = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("x", "y").with_code(code),
        ))
    }

    #[test]
    fn api_errors_are_classified_by_status_code() {
        let kinds: Vec<&str> = [409, 404, 403, 422, 400, 504, 500]
            .into_iter()
            .map(|code| ClusterError::from(api_error(code)).kind())
            .collect();
        assert_eq!(
            kinds,
            [
                "conflict",
                "not_found",
                "forbidden",
                "invalid",
                "invalid",
                "timeout",
                "api"
            ]
        );
        assert!(ClusterError::from(api_error(409)).is_conflict());
        assert!(ClusterError::from(api_error(404)).is_not_found());
    }

    #[test]
    fn every_kind_is_initialised() {
        for code in [409, 404, 403, 422, 504, 500] {
            let kind = ClusterError::from(api_error(code)).kind();
            assert!(ClusterError::KINDS.contains(&kind), "{kind}");
        }
        assert!(ClusterError::KINDS.contains(&ClusterError::NotLeading.kind()));
    }

    #[test]
    fn a_client_timeout_is_a_timeout() {
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect");
        let e = kube::Error::Service(Box::new(io));
        assert_eq!(ClusterError::from(e).kind(), "timeout");
        let e = kube::Error::Service("connection refused".into());
        assert_eq!(ClusterError::from(e).kind(), "api");
    }
}
