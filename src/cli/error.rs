//! Why a command failed, each as one line a person can act on.

use relaunch_api::validation::{InvalidRequest, InvalidRollout};

/// Where relaunch's manifests install it from (kustomize).
pub const INSTALL_HINT: &str = "kubectl apply -k manifests/base";

/// A failed command; `Display` is the one line printed after `error: `.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag or argument value that cannot work.
    #[error("{0}")]
    Usage(String),
    /// No usable kubeconfig, context or credentials.
    #[error("{0}")]
    Config(String),
    #[error("cannot reach the Kubernetes API server at {server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error(
        "the Kubernetes API server at {server} did not accept your credentials (401 Unauthorized); check your kubeconfig or log in again"
    )]
    Unauthorized { server: String },
    #[error("you are not allowed to {verb} {resource} {scope}")]
    Forbidden {
        verb: String,
        resource: String,
        /// `in namespace X` or `in all namespaces`.
        scope: String,
    },
    #[error(
        "relaunch is not installed in this cluster: the CRD {resource}.relaunch.dev was not found; install with {INSTALL_HINT}"
    )]
    NotInstalled { resource: String },
    #[error("{kind} {name} not found in namespace {namespace}")]
    NotFound {
        kind: String,
        name: String,
        namespace: String,
    },
    /// The request cannot work for this pod or workload (not scheduled, no such container, ...).
    #[error("{0}")]
    Invalid(String),
    /// A restart the coordinator would refuse (its admission checks).
    #[error("{}", request_message(.0))]
    InvalidRequest(#[from] InvalidRequest),
    /// A rollout the coordinator would fail at once (its validation).
    #[error("{0}")]
    InvalidRollout(#[from] InvalidRollout),
    /// The API server refused or failed a request for another reason.
    #[error("cannot {what}: {message}")]
    Api { what: String, message: String },
    /// The restart or rollout ended Failed.
    #[error("{0}")]
    Failed(String),
    /// The rollout paused (by a user, or because pods failed); the message says how to resume.
    #[error("{0}")]
    Paused(String),
    #[error("{0}")]
    TimedOut(String),
    #[error("{0}")]
    Interrupted(String),
    #[error("cannot write the output: {0}")]
    Output(String),
}

impl CliError {
    /// The process exit status: 1 for everything but interruption (130, as shells report
    /// SIGINT). Usage errors found by the argument parser exit 2 before reaching here.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Interrupted(_) => 130,
            _ => 1,
        }
    }
}

/// A refused restart in the plugin's words: the API's message, except where the plugin names
/// what to do in terms of its own command (`restart it` rather than `create the request`; the
/// pod's containers, for `-c`).
fn request_message(invalid: &InvalidRequest) -> String {
    match invalid {
        InvalidRequest::PodNotScheduled { pod } => {
            format!("pod {pod} is not scheduled to a node yet; restart it once it runs")
        }
        InvalidRequest::UnknownContainers {
            pod,
            names,
            recreatable,
        }
        | InvalidRequest::InitContainers {
            pod,
            names,
            recreatable,
        } => {
            let noun = if names.len() == 1 {
                "container"
            } else {
                "containers"
            };
            format!(
                "pod {pod} has no {noun} {} (its containers: {})",
                names.join(", "),
                recreatable.join(", ")
            )
        }
        other => other.to_string(),
    }
}

/// The innermost cause of an error chain: "Connection refused (os error 111)" rather than
/// "client error (Connect)".
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}
