//! Errors of the CRI client, each one a reason an operator can act on.

use std::path::PathBuf;
use std::time::Duration;

/// What went wrong talking to the container runtime. Every variant names the socket.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// Nothing exists at the socket path.
    #[error(
        "no CRI socket at {path}: is the container runtime running on this node? (set --cri-socket to its socket)"
    )]
    SocketMissing { path: PathBuf },

    /// The path exists but does not speak the CRI gRPC API.
    #[error("{path} is not a CRI runtime socket: {detail}")]
    NotCriRuntime { path: PathBuf, detail: String },

    /// The process may not open the socket.
    #[error(
        "permission denied opening CRI socket {path}: run as root or grant access to the socket"
    )]
    PermissionDenied { path: PathBuf },

    /// The runtime does not accept connections or dropped them (stopped, restarting, overloaded).
    #[error("container runtime at {path} is unavailable: {detail}")]
    Unavailable { path: PathBuf, detail: String },

    /// None of the well-known sockets answered.
    #[error("no CRI runtime found; tried {tried}; set --cri-socket to the runtime's socket")]
    NoRuntimeFound { tried: String },

    /// The container (or sandbox) does not exist in the runtime.
    #[error("container {id} not found in the runtime at {path}")]
    NotFound { path: PathBuf, id: String },

    /// The runtime did not answer in time.
    #[error("CRI {method} on {path} did not answer within {after:?}")]
    DeadlineExceeded {
        path: PathBuf,
        method: &'static str,
        after: Duration,
    },

    /// An exec'd command ran past its timeout; the runtime killed it.
    #[error(
        "command in container {id} did not finish within {timeout:?} and was killed (runtime at {path})"
    )]
    ExecTimedOut {
        path: PathBuf,
        id: String,
        timeout: Duration,
    },

    /// Any other error the runtime returned.
    #[error("CRI {method} on {path} failed ({code:?}): {message}")]
    Runtime {
        path: PathBuf,
        method: &'static str,
        code: tonic::Code,
        message: String,
    },
}

impl CriError {
    /// A short, stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            CriError::SocketMissing { .. } => "socket_missing",
            CriError::NotCriRuntime { .. } => "not_cri_runtime",
            CriError::PermissionDenied { .. } => "permission_denied",
            CriError::Unavailable { .. } => "unavailable",
            CriError::NoRuntimeFound { .. } => "no_runtime_found",
            CriError::NotFound { .. } => "not_found",
            CriError::DeadlineExceeded { .. } => "deadline_exceeded",
            CriError::ExecTimedOut { .. } => "exec_timed_out",
            CriError::Runtime { .. } => "runtime_error",
        }
    }

    /// True when retrying later may succeed (the runtime is restarting or slow).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CriError::Unavailable { .. } | CriError::DeadlineExceeded { .. }
        )
    }
}

/// Walks an error's source chain for the underlying I/O error, if any.
pub(crate) fn io_error_in<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a std::io::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        current = e.source();
    }
    None
}

/// Maps an I/O error from opening the socket to the reason a person can act on.
pub(crate) fn from_connect_io(path: &std::path::Path, io: &std::io::Error) -> CriError {
    use std::io::ErrorKind;
    let path = path.to_path_buf();
    match io.kind() {
        ErrorKind::NotFound => CriError::SocketMissing { path },
        ErrorKind::PermissionDenied => CriError::PermissionDenied { path },
        ErrorKind::ConnectionRefused => CriError::Unavailable {
            path,
            detail: "connection refused (runtime stopped?)".into(),
        },
        _ => CriError::Unavailable {
            path,
            detail: io.to_string(),
        },
    }
}
