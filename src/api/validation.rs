//! Whether a ContainerRecreateRequest or a RollingRestart is valid: one set of checks per
//! resource, each with one typed error whose message is what users see (`status.message`, the
//! `Refused` Event, the plugin's `error:` line).
//!
//! The coordinator's admission runs every request check ([`validate_request`]); the agent
//! repeats the checks that need only the request and the pod spec ([`check_spec`],
//! [`check_containers`]) before it touches anything, so a request it sees before admission did
//! is refused with the same message; the plugin runs admission's checks before it creates a
//! request. Rollouts are checked by the rollout controller and by the plugin
//! ([`validate_rollout_name`], [`validate_rollout`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::containers::{RecreatableContainers, RestartPolicy, resolve_port};
use crate::{
    ContainerRecreateRequest, ContainerRecreateRequestSpec, ContainerRecreateRequestStrategy,
    FailurePolicy, HttpGetAction, LABEL_NODE_NAME, LABEL_POD_UID, LABEL_ROLLING_RESTART,
    RollingRestartSpec, ShutdownAction, WorkloadKind,
};
use crate::{OrdinalOrder, RolloutFailurePolicy};

/// The longest duration a request may ask for (deadlines, grace periods, readiness waits).
pub const MAX_DURATION_SECONDS: i64 = 24 * 60 * 60;
/// The longest a finished request may be kept before its TTL deletes it.
pub const MAX_TTL_SECONDS: i64 = 30 * 24 * 60 * 60;
/// Most containers one request (or one rollout's `containers` and `shutdown`) may name.
pub const MAX_CONTAINERS: usize = 16;
/// Most arguments of a shutdown command, and the longest argument.
pub const MAX_COMMAND_ARGS: usize = 32;
pub const MAX_COMMAND_ARG_LENGTH: usize = 1024;
/// Longest `httpGet.path`.
pub const MAX_HTTP_PATH_LENGTH: usize = 1024;
/// Most `httpGet.httpHeaders`, the longest header name and value.
pub const MAX_HEADERS: usize = 16;
pub const MAX_HEADER_NAME_LENGTH: usize = 256;
pub const MAX_HEADER_VALUE_LENGTH: usize = 1024;
/// Longest `order.role.key` (a label key: a 253-character prefix, `/`, a 63-character name),
/// most values in `order.role.first` and in `last`.
pub const MAX_ROLE_KEY_LENGTH: usize = 317;
pub const MAX_ROLE_VALUES: usize = 16;
/// Longest label value (an `order.role` value).
pub const MAX_LABEL_VALUE_LENGTH: usize = 63;
/// A DNS label (RFC 1123), as container names are: at most 63 characters.
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A DNS subdomain (RFC 1123), as pod and workload names are: at most 253 characters.
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// An HTTP header name (an RFC 9110 token).
pub const HTTP_HEADER_NAME_PATTERN: &str = "^[-A-Za-z0-9!#$%&'*+.^_`|~]+$";
/// A `maxUnavailable` percentage: 1% to 100%.
pub const MAX_UNAVAILABLE_PERCENT_PATTERN: &str = "^0*([1-9][0-9]?|100)%$";

/// Longest RollingRestart name: it is the value of label `relaunch.dev/rolling-restart` on the
/// requests the rollout creates, and label values are at most 63 characters.
pub const MAX_ROLLOUT_NAME_LENGTH: usize = 63;

/// Why a ContainerRecreateRequest cannot be carried out. The message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    #[error("spec.podName is empty")]
    NoPodName,
    #[error("spec.containers is empty: name at least one container to recreate")]
    NoContainers,
    /// A name that is not of its kind's form (a DNS label or subdomain).
    #[error("{field}: {name:?} is not a valid {kind}")]
    InvalidName {
        field: String,
        name: String,
        kind: NameKind,
    },
    #[error("{field} has {count} items; at most {max} are allowed")]
    TooMany {
        field: String,
        count: usize,
        max: usize,
    },
    #[error("{field} is {length} characters long; at most {max} are allowed")]
    TooLong {
        field: String,
        length: usize,
        max: usize,
    },
    #[error("spec.containers names a container more than once: {}", .names.join(", "))]
    DuplicateContainers { names: Vec<String> },
    #[error("{field}: must be between {min} and {max} seconds, got {value}")]
    DurationOutOfRange {
        field: &'static str,
        value: i64,
        min: i64,
        max: i64,
    },
    #[error(
        "spec.strategy.failurePolicy: a value this version of relaunch does not know (use Fail or Ignore, or upgrade relaunch)"
    )]
    UnknownFailurePolicy,
    /// `field`: where the shutdown action is (`spec.containers[0].shutdown`, `spec.shutdown[0]`).
    #[error("{field}: set exec or httpGet, not both")]
    ShutdownExecAndHttpGet { field: String },
    #[error("{field}: set exec or httpGet")]
    ShutdownWithoutAction { field: String },
    #[error("{field}.exec.command is empty")]
    ShutdownCommandEmpty { field: String },
    #[error(
        "{field}.httpGet.host: not supported: the agent sends the GET to the pod's IP; remove host"
    )]
    HttpGetHost { field: String },
    #[error("{field}.httpGet.httpHeaders[{index}].name {name:?} is not a valid HTTP header name")]
    InvalidHeaderName {
        field: String,
        index: usize,
        name: String,
    },
    #[error("pod {pod} not found in namespace {namespace}")]
    PodNotFound { pod: String, namespace: String },
    #[error("pod {pod} is being deleted")]
    PodBeingDeleted { pod: String },
    #[error("pod {pod} is not scheduled to a node yet; create the request once it runs")]
    PodNotScheduled { pod: String },
    #[error("pod {pod} is {phase}, not Running; only containers of a running pod can be recreated")]
    PodNotRunning { pod: String, phase: String },
    /// Names that are no container of the pod (`recreatable`: what can be recreated, sorted).
    #[error("{}", no_such_containers(.pod, .names, .recreatable))]
    UnknownContainers {
        pod: String,
        names: Vec<String>,
        recreatable: Vec<String>,
    },
    /// Names that are all init containers that run to completion, not native sidecars.
    #[error("{}", no_such_containers(.pod, .names, .recreatable))]
    InitContainers {
        pod: String,
        names: Vec<String>,
        recreatable: Vec<String>,
    },
    #[error(
        "label {LABEL_POD_UID}={labelled} does not match pod {pod} (UID {uid}): the pod was replaced"
    )]
    PodReplaced {
        pod: String,
        labelled: String,
        uid: String,
    },
    #[error(
        "label {LABEL_NODE_NAME}={labelled} does not match pod {pod}, which runs on node {node}"
    )]
    WrongNode {
        pod: String,
        labelled: String,
        node: String,
    },
    #[error(
        "pod {pod} has restartPolicy: Never: the kubelet would not start container {container} again after the stop; recreate the pod instead"
    )]
    RestartPolicyNever { pod: String, container: String },
    #[error(
        "pod {pod} has restartPolicy: OnFailure: a graceful exit 0 of container {container} would end it for good; only pods with restartPolicy: Always (or sidecars) can be recreated in place"
    )]
    RestartPolicyOnFailure { pod: String, container: String },
    #[error(
        "shutdown of container {container}: httpGet port {port:?} is not a port number and container {container} has no port with that name"
    )]
    UnknownNamedPort { container: String, port: String },
    #[error("shutdown of container {container}: httpGet port {port} is not a valid port")]
    InvalidPort { container: String, port: i32 },
    #[error(
        "shutdown of container {container}: httpGet port {port:?} is neither a port number nor a port name (at most 15 lower-case letters, digits and '-', with a letter)"
    )]
    InvalidPortName { container: String, port: String },
    #[error("shutdown of container {container}: httpGet scheme {scheme:?}: use HTTP or HTTPS")]
    InvalidScheme { container: String, scheme: String },
}

fn no_such_containers(pod: &str, names: &[String], recreatable: &[String]) -> String {
    format!(
        "pod {pod} has no container {} (it has: {}; init containers other than native sidecars cannot be recreated)",
        names.join(", "),
        recreatable.join(", ")
    )
}

impl InvalidRequest {
    /// A short label for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            InvalidRequest::NoPodName => "no_pod_name",
            InvalidRequest::NoContainers => "no_containers",
            InvalidRequest::InvalidName { .. } => "invalid_name",
            InvalidRequest::TooMany { .. } => "too_many",
            InvalidRequest::TooLong { .. } => "too_long",
            InvalidRequest::DuplicateContainers { .. } => "duplicate_container",
            InvalidRequest::UnknownFailurePolicy => "unknown_value",
            InvalidRequest::DurationOutOfRange { value, .. } if *value < 0 => "negative_duration",
            InvalidRequest::DurationOutOfRange { .. } => "duration_out_of_range",
            InvalidRequest::ShutdownExecAndHttpGet { .. }
            | InvalidRequest::ShutdownWithoutAction { .. }
            | InvalidRequest::ShutdownCommandEmpty { .. }
            | InvalidRequest::UnknownNamedPort { .. }
            | InvalidRequest::InvalidPort { .. }
            | InvalidRequest::InvalidPortName { .. }
            | InvalidRequest::HttpGetHost { .. }
            | InvalidRequest::InvalidHeaderName { .. }
            | InvalidRequest::InvalidScheme { .. } => "bad_shutdown",
            InvalidRequest::PodNotFound { .. } => "pod_not_found",
            InvalidRequest::PodBeingDeleted { .. } => "pod_being_deleted",
            InvalidRequest::PodNotScheduled { .. } => "pod_not_scheduled",
            InvalidRequest::PodNotRunning { .. } => "pod_not_running",
            InvalidRequest::UnknownContainers { .. } => "unknown_container",
            InvalidRequest::InitContainers { .. } => "init_container",
            InvalidRequest::PodReplaced { .. } => "pod_replaced",
            InvalidRequest::WrongNode { .. } => "wrong_node",
            InvalidRequest::RestartPolicyNever { .. } => "restart_policy_never",
            InvalidRequest::RestartPolicyOnFailure { .. } => "restart_policy_on_failure",
        }
    }
}

/// Admission: every check, in the order docs/api.md lists them; the first that fails is the
/// error. `pod` is the request's pod (None: it does not exist). Valid: the labels the request
/// still needs so the right agent sees it (empty when it has them).
pub fn validate_request(
    request: &ContainerRecreateRequest,
    pod: Option<&Pod>,
) -> Result<BTreeMap<String, String>, InvalidRequest> {
    let spec = &request.spec;
    check_spec(spec)?;
    let pod_name = spec.pod_name.clone();
    let Some(pod) = pod else {
        return Err(InvalidRequest::PodNotFound {
            pod: pod_name,
            namespace: request.metadata.namespace.clone().unwrap_or_default(),
        });
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(InvalidRequest::PodBeingDeleted { pod: pod_name });
    }
    let no_spec = PodSpec::default();
    let pod_spec = pod.spec.as_ref().unwrap_or(&no_spec);
    let Some(node) = pod_spec.node_name.clone().filter(|n| !n.is_empty()) else {
        return Err(InvalidRequest::PodNotScheduled { pod: pod_name });
    };
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Unknown".into());
    if phase != "Running" {
        return Err(InvalidRequest::PodNotRunning {
            pod: pod_name,
            phase,
        });
    }
    check_container_names(spec, pod_spec)?;
    let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
    let labels = request.metadata.labels.clone().unwrap_or_default();
    if let Some(labelled) = labels.get(LABEL_POD_UID)
        && *labelled != pod_uid
    {
        return Err(InvalidRequest::PodReplaced {
            pod: pod_name,
            labelled: labelled.clone(),
            uid: pod_uid,
        });
    }
    if let Some(labelled) = labels.get(LABEL_NODE_NAME)
        && *labelled != node
    {
        return Err(InvalidRequest::WrongNode {
            pod: pod_name,
            labelled: labelled.clone(),
            node,
        });
    }
    check_containers_come_back(spec, pod_spec)?;
    let mut missing = BTreeMap::new();
    if !labels.contains_key(LABEL_NODE_NAME) {
        missing.insert(LABEL_NODE_NAME.to_string(), node);
    }
    if !labels.contains_key(LABEL_POD_UID) {
        missing.insert(LABEL_POD_UID.to_string(), pod_uid);
    }
    Ok(missing)
}

/// The checks that need only the request: a pod named, containers named once each, durations
/// in range, each shutdown action one complete action.
pub fn check_spec(spec: &ContainerRecreateRequestSpec) -> Result<(), InvalidRequest> {
    if spec.pod_name.is_empty() {
        return Err(InvalidRequest::NoPodName);
    }
    check_name("spec.podName", &spec.pod_name, NameKind::Pod)?;
    if spec.containers.is_empty() {
        return Err(InvalidRequest::NoContainers);
    }
    check_count("spec.containers", spec.containers.len(), MAX_CONTAINERS)?;
    for (index, c) in spec.containers.iter().enumerate() {
        check_name(
            &format!("spec.containers[{index}].name"),
            &c.name,
            NameKind::Container,
        )?;
    }
    let mut seen = HashSet::new();
    let mut duplicates: Vec<String> = Vec::new();
    for c in &spec.containers {
        if !seen.insert(c.name.as_str()) && !duplicates.contains(&c.name) {
            duplicates.push(c.name.clone());
        }
    }
    if !duplicates.is_empty() {
        return Err(InvalidRequest::DuplicateContainers { names: duplicates });
    }
    check_durations(spec)?;
    if spec.strategy.as_ref().and_then(|s| s.failure_policy) == Some(FailurePolicy::Unknown) {
        return Err(InvalidRequest::UnknownFailurePolicy);
    }
    for (index, c) in spec.containers.iter().enumerate() {
        if let Some(action) = &c.shutdown {
            check_shutdown(
                &format!("spec.containers[{index}].shutdown"),
                &c.name,
                action,
            )?;
        }
    }
    Ok(())
}

/// The kinds of names a request or rollout holds, each with the form the API server requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A pod or workload name: a DNS subdomain.
    Pod,
    Workload,
    /// A container name: a DNS label.
    Container,
}

impl std::fmt::Display for NameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameKind::Pod => "pod name (a DNS subdomain: at most 253 lower-case letters, digits, '-' and '.')",
            NameKind::Workload => "workload name (a DNS subdomain: at most 253 lower-case letters, digits, '-' and '.')",
            NameKind::Container => "container name (a DNS label: at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit)",
        })
    }
}

/// Whether `name` is a DNS label: 1–63 of `a-z`, `0-9`, `-`, starting and ending alphanumeric
/// ([`DNS_LABEL_PATTERN`]).
pub fn is_dns_label(name: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = name.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= 63
                && alnum(*first)
                && alnum(*last)
                && bytes.iter().all(|c| alnum(*c) || *c == b'-')
        }
        _ => false,
    }
}

/// Whether `name` is a DNS subdomain: at most 253 characters, DNS labels joined by `.`
/// ([`DNS_SUBDOMAIN_PATTERN`]; the pattern bounds no label, so neither does this).
pub fn is_dns_subdomain(name: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    name.len() <= 253
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            match (bytes.first(), bytes.last()) {
                (Some(first), Some(last)) => {
                    alnum(*first) && alnum(*last) && bytes.iter().all(|c| alnum(*c) || *c == b'-')
                }
                _ => false,
            }
        })
}

fn check_name(field: &str, name: &str, kind: NameKind) -> Result<(), InvalidRequest> {
    let valid = match kind {
        NameKind::Pod | NameKind::Workload => is_dns_subdomain(name),
        NameKind::Container => is_dns_label(name),
    };
    if valid {
        return Ok(());
    }
    Err(InvalidRequest::InvalidName {
        field: field.into(),
        name: name.into(),
        kind,
    })
}

fn check_count(field: &str, count: usize, max: usize) -> Result<(), InvalidRequest> {
    if count <= max {
        return Ok(());
    }
    Err(InvalidRequest::TooMany {
        field: field.into(),
        count,
        max,
    })
}

/// The API server counts characters (code points), not bytes.
fn check_length(field: &str, text: &str, max: usize) -> Result<(), InvalidRequest> {
    let length = text.chars().count();
    if length <= max {
        return Ok(());
    }
    Err(InvalidRequest::TooLong {
        field: field.into(),
        length,
        max,
    })
}

/// Whether `name` is an HTTP header name (an RFC 9110 token, [`HTTP_HEADER_NAME_PATTERN`]).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-!#$%&'*+.^_`|~".contains(&c))
}

/// Whether a string `httpGet.port` is a port: a number written as a string (1–65535, as
/// `resolve_port` reads it) or a port name.
fn is_port_string(port: &str) -> bool {
    if (1..=5).contains(&port.len()) && port.bytes().all(|c| c.is_ascii_digit()) {
        return port.parse::<i32>().is_ok_and(|p| (1..=65535).contains(&p));
    }
    is_port_name(port)
}

/// Whether `name` can name a container port (an IANA service name: at most 15 of `a-z`, `0-9`
/// and `-`, with a letter, starting and ending alphanumeric).
fn is_port_name(name: &str) -> bool {
    name.len() <= 15 && is_dns_label(name) && name.bytes().any(|c| c.is_ascii_lowercase())
}

/// A request's shutdown action that is one complete action.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CheckedShutdown<'a> {
    /// The command to run in the container (not empty).
    Exec(&'a [String]),
    /// The HTTP GET to send (its port and scheme are checked against the pod).
    HttpGet(&'a HttpGetAction),
}

/// Checks the shutdown action at `field` (`spec.containers[0].shutdown`, a rollout's
/// `spec.shutdown[0]`) for `container`: `exec` with a command, or `httpGet` to the pod's IP,
/// within the schema's bounds. The port is checked against the container's ports later
/// ([`http_get_port`]).
pub fn check_shutdown<'a>(
    field: &str,
    container: &str,
    action: &'a ShutdownAction,
) -> Result<CheckedShutdown<'a>, InvalidRequest> {
    let field = field.to_string();
    match (&action.exec, &action.http_get) {
        (Some(_), Some(_)) => Err(InvalidRequest::ShutdownExecAndHttpGet { field }),
        (None, None) => Err(InvalidRequest::ShutdownWithoutAction { field }),
        (Some(exec), None) if exec.command.is_empty() => {
            Err(InvalidRequest::ShutdownCommandEmpty { field })
        }
        (Some(exec), None) => {
            check_count(
                &format!("{field}.exec.command"),
                exec.command.len(),
                MAX_COMMAND_ARGS,
            )?;
            for (i, arg) in exec.command.iter().enumerate() {
                check_length(
                    &format!("{field}.exec.command[{i}]"),
                    arg,
                    MAX_COMMAND_ARG_LENGTH,
                )?;
            }
            Ok(CheckedShutdown::Exec(&exec.command))
        }
        (None, Some(http)) => {
            check_http_get(&field, container, http)?;
            Ok(CheckedShutdown::HttpGet(http))
        }
    }
}

fn check_http_get(
    field: &str,
    container: &str,
    http: &HttpGetAction,
) -> Result<(), InvalidRequest> {
    if http.host.is_some() {
        return Err(InvalidRequest::HttpGetHost {
            field: field.into(),
        });
    }
    match &http.port {
        IntOrString::Int(port) if !(1..=65535).contains(port) => {
            return Err(InvalidRequest::InvalidPort {
                container: container.into(),
                port: *port,
            });
        }
        IntOrString::String(name) if !is_port_string(name) => {
            return Err(InvalidRequest::InvalidPortName {
                container: container.into(),
                port: name.clone(),
            });
        }
        _ => {}
    }
    if let Some(scheme) = &http.scheme
        && !matches!(scheme.as_str(), "HTTP" | "HTTPS")
    {
        return Err(InvalidRequest::InvalidScheme {
            container: container.into(),
            scheme: scheme.clone(),
        });
    }
    if let Some(path) = &http.path {
        check_length(&format!("{field}.httpGet.path"), path, MAX_HTTP_PATH_LENGTH)?;
    }
    let headers = format!("{field}.httpGet.httpHeaders");
    check_count(&headers, http.http_headers.len(), MAX_HEADERS)?;
    for (index, header) in http.http_headers.iter().enumerate() {
        if !is_header_name(&header.name) {
            return Err(InvalidRequest::InvalidHeaderName {
                field: field.into(),
                index,
                name: header.name.clone(),
            });
        }
        check_length(
            &format!("{headers}[{index}].name"),
            &header.name,
            MAX_HEADER_NAME_LENGTH,
        )?;
        check_length(
            &format!("{headers}[{index}].value"),
            &header.value,
            MAX_HEADER_VALUE_LENGTH,
        )?;
    }
    Ok(())
}

fn check_durations(spec: &ContainerRecreateRequestSpec) -> Result<(), InvalidRequest> {
    let fields: [(&'static str, Option<i64>, i64, i64); 2] = [
        (
            "spec.activeDeadlineSeconds",
            spec.active_deadline_seconds,
            1,
            MAX_DURATION_SECONDS,
        ),
        (
            "spec.ttlSecondsAfterFinished",
            spec.ttl_seconds_after_finished.map(i64::from),
            0,
            MAX_TTL_SECONDS,
        ),
    ];
    check_ranges(&fields)?;
    check_strategy_durations(Strategy::Request, spec.strategy.as_ref())
}

/// Where a recreate strategy is: a request's `spec.strategy`, a rollout's `spec.recreateStrategy`.
#[derive(Clone, Copy)]
enum Strategy {
    Request,
    Rollout,
}

fn check_strategy_durations(
    at: Strategy,
    strategy: Option<&ContainerRecreateRequestStrategy>,
) -> Result<(), InvalidRequest> {
    let Some(strategy) = strategy else {
        return Ok(());
    };
    let fields: [(&'static str, Option<i64>, i64, i64); 3] = match at {
        Strategy::Request => [
            (
                "spec.strategy.terminationGracePeriodSeconds",
                strategy.termination_grace_period_seconds,
                0,
                MAX_DURATION_SECONDS,
            ),
            (
                "spec.strategy.unreadyGracePeriodSeconds",
                strategy.unready_grace_period_seconds,
                0,
                MAX_DURATION_SECONDS,
            ),
            (
                "spec.strategy.minStartedSeconds",
                strategy.min_started_seconds.map(i64::from),
                0,
                MAX_DURATION_SECONDS,
            ),
        ],
        Strategy::Rollout => [
            (
                "spec.recreateStrategy.terminationGracePeriodSeconds",
                strategy.termination_grace_period_seconds,
                0,
                MAX_DURATION_SECONDS,
            ),
            (
                "spec.recreateStrategy.unreadyGracePeriodSeconds",
                strategy.unready_grace_period_seconds,
                0,
                MAX_DURATION_SECONDS,
            ),
            (
                "spec.recreateStrategy.minStartedSeconds",
                strategy.min_started_seconds.map(i64::from),
                0,
                MAX_DURATION_SECONDS,
            ),
        ],
    };
    check_ranges(&fields)
}

fn check_ranges(fields: &[(&'static str, Option<i64>, i64, i64)]) -> Result<(), InvalidRequest> {
    for &(field, value, min, max) in fields {
        if let Some(value) = value
            && !(min..=max).contains(&value)
        {
            return Err(InvalidRequest::DurationOutOfRange {
                field,
                value,
                min,
                max,
            });
        }
    }
    Ok(())
}

/// The checks against the pod spec: every named container can be recreated
/// ([`RecreatableContainers`]), the kubelet will start it again after the stop, and its
/// shutdown action can be carried out. Valid: the named containers' specs, in request order.
pub fn check_containers<'a>(
    spec: &ContainerRecreateRequestSpec,
    pod_spec: &'a PodSpec,
) -> Result<Vec<&'a Container>, InvalidRequest> {
    check_container_names(spec, pod_spec)?;
    check_containers_come_back(spec, pod_spec)
}

fn check_container_names(
    spec: &ContainerRecreateRequestSpec,
    pod_spec: &PodSpec,
) -> Result<(), InvalidRequest> {
    let recreatable = RecreatableContainers::of(pod_spec);
    let unknown: Vec<String> = spec
        .containers
        .iter()
        .map(|c| c.name.clone())
        .filter(|n| !recreatable.contains(n))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let pod = spec.pod_name.clone();
    let mut have: Vec<String> = recreatable.names().into_iter().map(String::from).collect();
    have.sort_unstable();
    if unknown
        .iter()
        .all(|n| recreatable.is_plain_init_container(n))
    {
        return Err(InvalidRequest::InitContainers {
            pod,
            names: unknown,
            recreatable: have,
        });
    }
    Err(InvalidRequest::UnknownContainers {
        pod,
        names: unknown,
        recreatable: have,
    })
}

/// The second half of [`check_containers`], run by admission after the label checks; the
/// names are known to be recreatable by then.
fn check_containers_come_back<'a>(
    spec: &ContainerRecreateRequestSpec,
    pod_spec: &'a PodSpec,
) -> Result<Vec<&'a Container>, InvalidRequest> {
    let recreatable = RecreatableContainers::of(pod_spec);
    let mut checked = Vec::new();
    for wanted in &spec.containers {
        let Some(found) = recreatable.get(&wanted.name) else {
            return Err(InvalidRequest::UnknownContainers {
                pod: spec.pod_name.clone(),
                names: vec![wanted.name.clone()],
                recreatable: recreatable.names().into_iter().map(String::from).collect(),
            });
        };
        let (pod, container) = (spec.pod_name.clone(), wanted.name.clone());
        match recreatable.restart_policy(&wanted.name) {
            RestartPolicy::Never => {
                return Err(InvalidRequest::RestartPolicyNever { pod, container });
            }
            RestartPolicy::OnFailure => {
                return Err(InvalidRequest::RestartPolicyOnFailure { pod, container });
            }
            RestartPolicy::Always => {}
        }
        if let Some(http) = wanted.shutdown.as_ref().and_then(|s| s.http_get.as_ref()) {
            http_get_port(http, found.container())?;
        }
        checked.push(found.container());
    }
    Ok(checked)
}

/// The port an httpGet shutdown action of `container` goes to: a number, or the name of one of
/// the container's ports.
pub fn http_get_port(http: &HttpGetAction, container: &Container) -> Result<u16, InvalidRequest> {
    let ports = container.ports.as_deref().unwrap_or_default();
    resolve_port(&http.port, ports).ok_or_else(|| match &http.port {
        IntOrString::String(name) => InvalidRequest::UnknownNamedPort {
            container: container.name.clone(),
            port: name.clone(),
        },
        IntOrString::Int(n) => InvalidRequest::InvalidPort {
            container: container.name.clone(),
            port: *n,
        },
    })
}

/// The scheme of an httpGet shutdown action of `container`: `http` (the default) or `https`.
pub fn http_get_scheme(
    http: &HttpGetAction,
    container: &Container,
) -> Result<&'static str, InvalidRequest> {
    match http.scheme.as_deref().unwrap_or("HTTP") {
        "HTTP" => Ok("http"),
        "HTTPS" => Ok("https"),
        other => Err(InvalidRequest::InvalidScheme {
            container: container.name.clone(),
            scheme: other.into(),
        }),
    }
}

/// Why a RollingRestart cannot go on; it ends Failed with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRollout {
    #[error(
        "metadata.name is {length} characters long; a RollingRestart's name becomes the value of label {LABEL_ROLLING_RESTART} on its requests, which allows at most {MAX_ROLLOUT_NAME_LENGTH}: create it again with a shorter name"
    )]
    NameTooLong { length: usize },
    #[error("spec.target needs a workloadRef (kind and name) or a pod selector")]
    NoTarget,
    /// Exec actions while the API server does not authorize them like `kubectl exec` (the
    /// coordinator's message says what to install).
    #[error("{0}")]
    ExecNotAuthorized(String),
    #[error("spec.target takes a workloadRef or a selector, not both")]
    TwoTargets,
    #[error(
        "spec.target.workloadRef.kind {kind:?} is not supported; use one of {}",
        known_kinds()
    )]
    UnsupportedKind { kind: String },
    #[error("spec.target.workloadRef.name is empty")]
    NoWorkloadName,
    #[error(
        "spec.recreateStrategy.failurePolicy: a value this version of relaunch does not know (use Fail or Ignore, or upgrade relaunch)"
    )]
    UnknownFailurePolicy,
    #[error(
        "spec.strategy.failurePolicy: a value this version of relaunch does not know (use Pause, Continue or Abort, or upgrade relaunch)"
    )]
    UnknownRolloutFailurePolicy,
    #[error(
        "spec.strategy.order.ordinal: a value this version of relaunch does not know (use OrdinalDescending or OrdinalAscending, or upgrade relaunch)"
    )]
    UnknownOrdinalOrder,
    #[error("spec.strategy.{0} (use a count ≥ 1 or a percentage such as \"25%\")")]
    MaxUnavailable(InvalidMaxUnavailable),
    #[error(
        "spec.activeDeadlineSeconds must be between 1 and {MAX_DURATION_SECONDS} seconds, not {0}"
    )]
    ActiveDeadline(i64),
    #[error("spec.strategy.{field} must not be negative, not {value}")]
    Negative { field: &'static str, value: i32 },
    #[error("spec.strategy.order.role.key is empty")]
    NoRoleKey,
    #[error("spec.containers names {0:?} twice")]
    DuplicateContainer(String),
    #[error("spec.shutdown names container {0:?}, which is not in spec.containers")]
    ShutdownForUnlistedContainer(String),
    #[error("spec.shutdown names container {0:?} twice")]
    DuplicateShutdown(String),
    /// A name, a bound or a shutdown action that would be refused in each request.
    #[error("{0}")]
    Spec(#[from] InvalidRequest),
    /// A container the rollout names is not one of a target pod's recreatable containers.
    #[error(
        "container {container:?} is not in pod {pod} (its containers: {}); fix spec.containers or spec.shutdown",
        .recreatable.join(", ")
    )]
    ContainerNotInPod {
        container: String,
        pod: String,
        recreatable: Vec<String>,
    },
    #[error("the target's selector is invalid")]
    InvalidSelector,
    /// A target pod whose containers to restart (all its regular ones, when `spec.containers`
    /// names none) are more than one request may name.
    #[error(
        "pod {pod} has {count} containers to restart; one request recreates at most {MAX_CONTAINERS}: name at most {MAX_CONTAINERS} in spec.containers"
    )]
    TooManyContainersInPod { pod: String, count: usize },
}

fn known_kinds() -> String {
    let kinds: Vec<&str> = WorkloadKind::ALL.iter().map(WorkloadKind::as_str).collect();
    kinds.join(", ")
}

/// Why a `maxUnavailable` does not say how many pods.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMaxUnavailable {
    #[error("maxUnavailable must be at least 1, not {0}")]
    TooSmall(i32),
    #[error("maxUnavailable {0:?} is neither a number nor a percentage like \"25%\"")]
    NotANumber(String),
    #[error("maxUnavailable {0:?} must be between 1% and 100%")]
    PercentOutOfRange(String),
}

/// `maxUnavailable` as a number of pods out of `total`: a count ≥ 1, or a percentage (1–100%)
/// of `total` rounded down, but at least one pod (as StatefulSet `maxUnavailable` does).
pub fn resolve_max_unavailable(
    value: &IntOrString,
    total: usize,
) -> Result<usize, InvalidMaxUnavailable> {
    match value {
        IntOrString::Int(n) => usize::try_from(*n)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or(InvalidMaxUnavailable::TooSmall(*n)),
        IntOrString::String(s) => {
            // Digits and `%`, as MAX_UNAVAILABLE_PERCENT_PATTERN (no spaces, no sign).
            let digits = s
                .strip_suffix('%')
                .filter(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
                .ok_or_else(|| InvalidMaxUnavailable::NotANumber(s.clone()))?;
            let percent: usize = digits
                .parse()
                .ok()
                .filter(|p| (1..=100).contains(p))
                .ok_or_else(|| InvalidMaxUnavailable::PercentOutOfRange(s.clone()))?;
            Ok((total.saturating_mul(percent) / 100).max(1))
        }
    }
}

/// Checks a rollout's name.
pub fn validate_rollout_name(name: &str) -> Result<(), InvalidRollout> {
    if name.len() > MAX_ROLLOUT_NAME_LENGTH {
        return Err(InvalidRollout::NameTooLong { length: name.len() });
    }
    Ok(())
}

/// Checks what can be checked of a rollout without the cluster.
pub fn validate_rollout(spec: &RollingRestartSpec) -> Result<(), InvalidRollout> {
    match (&spec.target.workload_ref, &spec.target.selector) {
        (None, None) => return Err(InvalidRollout::NoTarget),
        (Some(_), Some(_)) => return Err(InvalidRollout::TwoTargets),
        (Some(w), None) => {
            if let WorkloadKind::Unknown(kind) = &w.kind {
                return Err(InvalidRollout::UnsupportedKind { kind: kind.clone() });
            }
            if w.name.is_empty() {
                return Err(InvalidRollout::NoWorkloadName);
            }
            check_name("spec.target.workloadRef.name", &w.name, NameKind::Workload)?;
        }
        (None, Some(_)) => {}
    }
    if let Some(max) = &spec.strategy.max_unavailable {
        resolve_max_unavailable(max, 100).map_err(InvalidRollout::MaxUnavailable)?;
    }
    // It is copied into every request the rollout creates, which could not be written.
    if spec
        .recreate_strategy
        .as_ref()
        .and_then(|s| s.failure_policy)
        == Some(FailurePolicy::Unknown)
    {
        return Err(InvalidRollout::UnknownFailurePolicy);
    }
    // Values of a newer release: refused rather than guessed.
    if spec.strategy.failure_policy == Some(RolloutFailurePolicy::Unknown) {
        return Err(InvalidRollout::UnknownRolloutFailurePolicy);
    }
    if spec.strategy.order.as_ref().and_then(|o| o.ordinal) == Some(OrdinalOrder::Unknown) {
        return Err(InvalidRollout::UnknownOrdinalOrder);
    }
    if let Some(deadline) = spec.active_deadline_seconds
        && !(1..=MAX_DURATION_SECONDS).contains(&deadline)
    {
        return Err(InvalidRollout::ActiveDeadline(deadline));
    }
    let non_negative = [
        ("partition", spec.strategy.partition),
        ("minReadySeconds", spec.strategy.min_ready_seconds),
        ("maxFailures", spec.strategy.max_failures),
    ];
    for (field, value) in non_negative {
        if let Some(value) = value
            && value < 0
        {
            return Err(InvalidRollout::Negative { field, value });
        }
    }
    if let Some(ready) = spec.strategy.min_ready_seconds {
        check_ranges(&[(
            "spec.strategy.minReadySeconds",
            Some(i64::from(ready)),
            0,
            MAX_DURATION_SECONDS,
        )])?;
    }
    if let Some(role) = spec.strategy.order.as_ref().and_then(|o| o.role.as_ref()) {
        if role.key.is_empty() {
            return Err(InvalidRollout::NoRoleKey);
        }
        check_length(
            "spec.strategy.order.role.key",
            &role.key,
            MAX_ROLE_KEY_LENGTH,
        )?;
        for (list, values) in [("first", &role.first), ("last", &role.last)] {
            let field = format!("spec.strategy.order.role.{list}");
            check_count(&field, values.len(), MAX_ROLE_VALUES)?;
            for (i, value) in values.iter().enumerate() {
                check_length(&format!("{field}[{i}]"), value, MAX_LABEL_VALUE_LENGTH)?;
            }
        }
    }
    check_count("spec.containers", spec.containers.len(), MAX_CONTAINERS)?;
    let mut seen = BTreeSet::new();
    for (index, name) in spec.containers.iter().enumerate() {
        check_name(
            &format!("spec.containers[{index}]"),
            name,
            NameKind::Container,
        )?;
        if !seen.insert(name) {
            return Err(InvalidRollout::DuplicateContainer(name.clone()));
        }
    }
    check_strategy_durations(Strategy::Rollout, spec.recreate_strategy.as_ref())?;
    check_count("spec.shutdown", spec.shutdown.len(), MAX_CONTAINERS)?;
    let mut seen = BTreeSet::new();
    for (index, shutdown) in spec.shutdown.iter().enumerate() {
        let field = format!("spec.shutdown[{index}]");
        check_name(
            &format!("{field}.container"),
            &shutdown.container,
            NameKind::Container,
        )?;
        if !seen.insert(&shutdown.container) {
            return Err(InvalidRollout::DuplicateShutdown(
                shutdown.container.clone(),
            ));
        }
        check_shutdown(&field, &shutdown.container, &shutdown.action)?;
        if !spec.containers.is_empty() && !spec.containers.contains(&shutdown.container) {
            return Err(InvalidRollout::ShutdownForUnlistedContainer(
                shutdown.container.clone(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RoleOrder;
    use crate::{
        ContainerRecreateRequestContainer, ContainerRecreateRequestSpec,
        ContainerRecreateRequestStrategy, ExecAction, ShutdownAction,
    };
    use k8s_openapi::api::core::v1::{Container, PodStatus};

    fn pod() -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("db-0".into()),
                namespace: Some("default".into()),
                uid: Some("pod-uid-1".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-1".into()),
                containers: vec![
                    Container {
                        name: "db".into(),
                        ..Default::default()
                    },
                    Container {
                        name: "exporter".into(),
                        ..Default::default()
                    },
                ],
                init_containers: Some(vec![
                    Container {
                        name: "setup".into(),
                        ..Default::default()
                    },
                    Container {
                        name: "proxy".into(),
                        restart_policy: Some("Always".into()),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            }),
        }
    }

    fn crr(containers: &[&str]) -> ContainerRecreateRequest {
        let mut crr = ContainerRecreateRequest::new(
            "r",
            ContainerRecreateRequestSpec {
                pod_name: "db-0".into(),
                containers: containers
                    .iter()
                    .map(|n| ContainerRecreateRequestContainer {
                        name: n.to_string(),
                        shutdown: None,
                    })
                    .collect(),
                ..Default::default()
            },
        );
        crr.metadata.namespace = Some("default".into());
        crr
    }

    fn refused(a: Result<BTreeMap<String, String>, InvalidRequest>) -> String {
        match a {
            Err(invalid) => invalid.to_string(),
            Ok(labels) => panic!("expected a refusal, got the labels {labels:?}"),
        }
    }

    #[test]
    fn valid_request_gets_node_and_pod_uid_labels() {
        let a = validate_request(&crr(&["db"]), Some(&pod()));
        let Ok(labels) = a else {
            panic!("refused: {a:?}")
        };
        assert_eq!(labels[LABEL_NODE_NAME], "node-1");
        assert_eq!(labels[LABEL_POD_UID], "pod-uid-1");
    }

    #[test]
    fn labels_already_set_are_not_added_again() {
        let mut r = crr(&["db"]);
        r.metadata.labels = Some(BTreeMap::from([
            (LABEL_NODE_NAME.to_string(), "node-1".to_string()),
            (LABEL_POD_UID.to_string(), "pod-uid-1".to_string()),
        ]));
        assert_eq!(validate_request(&r, Some(&pod())), Ok(BTreeMap::new()));
    }

    #[test]
    fn native_sidecar_can_be_recreated_but_not_a_plain_init_container() {
        assert!(validate_request(&crr(&["proxy"]), Some(&pod())).is_ok());
        let message = refused(validate_request(&crr(&["setup"]), Some(&pod())));
        assert!(message.contains("has no container setup"), "{message}");
    }

    #[test]
    fn missing_pod_is_refused() {
        assert_eq!(
            refused(validate_request(&crr(&["db"]), None)),
            "pod db-0 not found in namespace default"
        );
    }

    #[test]
    fn unscheduled_pod_is_refused() {
        let mut p = pod();
        p.spec.as_mut().unwrap().node_name = None;
        let message = refused(validate_request(&crr(&["db"]), Some(&p)));
        assert!(message.contains("not scheduled"), "{message}");
    }

    #[test]
    fn pod_not_running_is_refused() {
        let mut p = pod();
        p.status.as_mut().unwrap().phase = Some("Pending".into());
        let message = refused(validate_request(&crr(&["db"]), Some(&p)));
        assert!(message.contains("is Pending, not Running"), "{message}");
    }

    #[test]
    fn pod_being_deleted_is_refused() {
        let mut p = pod();
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::UNIX_EPOCH,
        ));
        let message = refused(validate_request(&crr(&["db"]), Some(&p)));
        assert!(message.contains("being deleted"), "{message}");
    }

    #[test]
    fn unknown_containers_are_named() {
        let message = refused(validate_request(
            &crr(&["db", "nope", "gone"]),
            Some(&pod()),
        ));
        assert!(message.contains("has no container nope, gone"), "{message}");
        assert!(message.contains("db, exporter, proxy"), "{message}");
    }

    #[test]
    fn duplicate_containers_are_refused() {
        let message = refused(validate_request(
            &crr(&["db", "db", "exporter"]),
            Some(&pod()),
        ));
        assert_eq!(
            message,
            "spec.containers names a container more than once: db"
        );
    }

    #[test]
    fn empty_containers_are_refused() {
        let message = refused(validate_request(&crr(&[]), Some(&pod())));
        assert!(message.contains("spec.containers is empty"), "{message}");
    }

    #[test]
    fn negative_and_absurd_durations_are_refused_by_field() {
        type Set = fn(&mut ContainerRecreateRequest);
        let cases: [(&str, Set); 7] = [
            ("spec.activeDeadlineSeconds", |r| {
                r.spec.active_deadline_seconds = Some(-1)
            }),
            ("spec.activeDeadlineSeconds", |r| {
                r.spec.active_deadline_seconds = Some(0)
            }),
            ("spec.ttlSecondsAfterFinished", |r| {
                r.spec.ttl_seconds_after_finished = Some(-5)
            }),
            ("spec.strategy.terminationGracePeriodSeconds", |r| {
                r.spec.strategy = Some(ContainerRecreateRequestStrategy {
                    termination_grace_period_seconds: Some(-1),
                    ..Default::default()
                })
            }),
            ("spec.strategy.unreadyGracePeriodSeconds", |r| {
                r.spec.strategy = Some(ContainerRecreateRequestStrategy {
                    unready_grace_period_seconds: Some(MAX_DURATION_SECONDS + 1),
                    ..Default::default()
                })
            }),
            ("spec.strategy.minStartedSeconds", |r| {
                r.spec.strategy = Some(ContainerRecreateRequestStrategy {
                    min_started_seconds: Some(-3),
                    ..Default::default()
                })
            }),
            ("spec.activeDeadlineSeconds", |r| {
                r.spec.active_deadline_seconds = Some(i64::MAX)
            }),
        ];
        for (field, set) in cases {
            let mut r = crr(&["db"]);
            set(&mut r);
            let message = refused(validate_request(&r, Some(&pod())));
            assert!(message.starts_with(field), "{field}: {message}");
        }
    }

    #[test]
    fn reasonable_durations_are_accepted() {
        let mut r = crr(&["db"]);
        r.spec.active_deadline_seconds = Some(600);
        r.spec.ttl_seconds_after_finished = Some(0);
        r.spec.strategy = Some(ContainerRecreateRequestStrategy {
            termination_grace_period_seconds: Some(30),
            unready_grace_period_seconds: Some(5),
            min_started_seconds: Some(10),
            ..Default::default()
        });
        assert!(validate_request(&r, Some(&pod())).is_ok());
    }

    #[test]
    fn empty_shutdown_command_is_refused() {
        let mut r = crr(&["db"]);
        r.spec.containers[0].shutdown = Some(ShutdownAction {
            exec: Some(ExecAction { command: vec![] }),
            http_get: None,
        });
        assert_eq!(
            refused(validate_request(&r, Some(&pod()))),
            "spec.containers[0].shutdown.exec.command is empty"
        );
    }

    #[test]
    fn replaced_pod_is_refused() {
        let mut r = crr(&["db"]);
        r.metadata.labels = Some(BTreeMap::from([(
            LABEL_POD_UID.to_string(),
            "older-uid".to_string(),
        )]));
        let message = refused(validate_request(&r, Some(&pod())));
        assert!(message.contains("the pod was replaced"), "{message}");
    }

    #[test]
    fn wrong_node_label_is_refused() {
        let mut r = crr(&["db"]);
        r.metadata.labels = Some(BTreeMap::from([(
            LABEL_NODE_NAME.to_string(),
            "node-9".to_string(),
        )]));
        let message = refused(validate_request(&r, Some(&pod())));
        assert!(message.contains("runs on node node-1"), "{message}");
    }

    #[test]
    fn a_pod_whose_containers_would_not_come_back_is_refused() {
        for (policy, says) in [
            (
                "Never",
                "pod db-0 has restartPolicy: Never: the kubelet would not start container db again after the stop; recreate the pod instead",
            ),
            ("OnFailure", "pod db-0 has restartPolicy: OnFailure"),
        ] {
            let mut p = pod();
            p.spec.as_mut().unwrap().restart_policy = Some(policy.into());
            let message = refused(validate_request(&crr(&["db"]), Some(&p)));
            assert!(message.starts_with(says), "{policy}: {message}");
            assert!(
                validate_request(&crr(&["proxy"]), Some(&p)).is_ok(),
                "{policy}: a native sidecar always comes back"
            );
        }
    }

    #[test]
    fn an_http_shutdown_to_a_port_the_container_lacks_is_refused() {
        let mut r = crr(&["db"]);
        r.spec.containers[0].shutdown = Some(ShutdownAction {
            exec: None,
            http_get: Some(crate::HttpGetAction {
                port: IntOrString::String("admin".into()),
                ..Default::default()
            }),
        });
        assert_eq!(
            refused(validate_request(&r, Some(&pod()))),
            "shutdown of container db: httpGet port \"admin\" is not a port number and container db has no port with that name"
        );
        r.spec.containers[0].shutdown = Some(ShutdownAction {
            exec: None,
            http_get: Some(crate::HttpGetAction {
                port: IntOrString::Int(8080),
                scheme: Some("TCP".into()),
                ..Default::default()
            }),
        });
        assert_eq!(
            refused(validate_request(&r, Some(&pod()))),
            "shutdown of container db: httpGet scheme \"TCP\": use HTTP or HTTPS"
        );
    }

    #[test]
    fn the_pod_spec_checks_tell_a_plain_init_container_from_an_unknown_one() {
        let spec = pod().spec.unwrap();
        let init = check_containers(&crr(&["setup"]).spec, &spec).unwrap_err();
        assert_eq!(init.reason(), "init_container");
        assert!(
            init.to_string().contains("has no container setup"),
            "{init}"
        );
        let unknown = check_containers(&crr(&["setup", "nope"]).spec, &spec).unwrap_err();
        assert_eq!(unknown.reason(), "unknown_container");
        let checked = check_containers(&crr(&["proxy", "db"]).spec, &spec).unwrap();
        let names: Vec<&str> = checked.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["proxy", "db"]);
    }

    fn sts_spec() -> RollingRestartSpec {
        RollingRestartSpec {
            target: crate::RolloutTarget {
                workload_ref: Some(crate::WorkloadRef {
                    kind: WorkloadKind::StatefulSet,
                    name: "db".into(),
                }),
                selector: None,
            },
            ..Default::default()
        }
    }

    #[test]
    fn bad_specs_say_what_to_fix() {
        let mut spec = sts_spec();
        assert_eq!(validate_rollout(&spec), Ok(()));
        spec.target.workload_ref = None;
        assert!(
            validate_rollout(&spec)
                .unwrap_err()
                .to_string()
                .contains("workloadRef")
        );
        spec = sts_spec();
        spec.target.workload_ref.as_mut().unwrap().kind = WorkloadKind::from("CronJob");
        assert!(
            validate_rollout(&spec)
                .unwrap_err()
                .to_string()
                .contains("StatefulSet, Deployment")
        );
        spec = sts_spec();
        spec.strategy.max_unavailable = Some(IntOrString::Int(0));
        assert!(
            validate_rollout(&spec)
                .unwrap_err()
                .to_string()
                .contains("at least 1")
        );
        spec.strategy.max_unavailable = Some(IntOrString::String("150%".into()));
        assert!(
            validate_rollout(&spec)
                .unwrap_err()
                .to_string()
                .contains("between 1% and 100%")
        );
        spec = sts_spec();
        spec.strategy.partition = Some(-1);
        assert!(
            validate_rollout(&spec)
                .unwrap_err()
                .to_string()
                .contains("partition")
        );
        spec = sts_spec();
        spec.strategy.partition = Some(3);
        assert_eq!(validate_rollout(&spec), Ok(()));
        spec.strategy.order = Some(crate::RolloutOrder {
            ordinal: None,
            role: Some(RoleOrder::default()),
        });
        assert!(
            validate_rollout(&spec)
                .unwrap_err()
                .to_string()
                .contains("role.key")
        );
    }

    #[test]
    fn names_bounds_and_http_targets_are_checked_as_the_schema_checks_them() {
        let refused_spec = |spec: &ContainerRecreateRequestSpec| match check_spec(spec) {
            Err(invalid) => invalid.to_string(),
            Ok(()) => panic!("accepted: {spec:?}"),
        };
        let mut r = crr(&["db"]);
        r.spec.pod_name = "DB_0".into();
        assert!(
            refused_spec(&r.spec).starts_with("spec.podName: \"DB_0\" is not a valid pod name")
        );
        let r = crr(&["db", "Exporter"]);
        assert!(refused_spec(&r.spec).starts_with("spec.containers[1].name: \"Exporter\""));
        let names: Vec<String> = (0..=MAX_CONTAINERS).map(|i| format!("c{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(
            refused_spec(&crr(&names).spec),
            "spec.containers has 17 items; at most 16 are allowed"
        );
        let http = |edit: fn(&mut HttpGetAction)| {
            let mut r = crr(&["db"]);
            let mut action = HttpGetAction {
                port: IntOrString::Int(8080),
                ..Default::default()
            };
            edit(&mut action);
            r.spec.containers[0].shutdown = Some(ShutdownAction {
                exec: None,
                http_get: Some(action),
            });
            r.spec
        };
        assert!(check_spec(&http(|_| {})).is_ok());
        assert!(check_spec(&http(|h| h.port = IntOrString::String("admin".into()))).is_ok());
        assert_eq!(
            refused_spec(&http(|h| h.host = Some("127.0.0.1".into()))),
            "spec.containers[0].shutdown.httpGet.host: not supported: the agent sends the GET to the pod's IP; remove host"
        );
        assert!(refused_spec(&http(|h| h.port = IntOrString::Int(70000))).contains("70000"));
        assert!(
            refused_spec(&http(|h| h.port = IntOrString::String("Admin_Port".into())))
                .contains("neither a port number nor a port name")
        );
        assert!(
            refused_spec(&http(|h| h.scheme = Some("http".into()))).contains("use HTTP or HTTPS")
        );
        assert!(
            refused_spec(&http(|h| {
                h.http_headers = vec![crate::HttpHeader {
                    name: "bad header".into(),
                    value: String::new(),
                }]
            }))
            .contains("not a valid HTTP header name")
        );
        let mut r = crr(&["db"]);
        r.spec.containers[0].shutdown = Some(ShutdownAction {
            exec: Some(ExecAction {
                command: vec!["x".repeat(MAX_COMMAND_ARG_LENGTH + 1)],
            }),
            http_get: None,
        });
        assert_eq!(
            refused_spec(&r.spec),
            "spec.containers[0].shutdown.exec.command[0] is 1025 characters long; at most 1024 are allowed"
        );
    }

    #[test]
    fn a_rollouts_shutdown_actions_and_recreate_strategy_are_checked_as_each_request_would_be() {
        let mut spec = sts_spec();
        spec.shutdown = vec![crate::ContainerShutdown {
            container: "db".into(),
            action: ShutdownAction::default(),
        }];
        assert_eq!(
            validate_rollout(&spec).unwrap_err().to_string(),
            "spec.shutdown[0]: set exec or httpGet"
        );
        spec.shutdown[0].action.exec = Some(ExecAction {
            command: vec!["stop".into()],
        });
        assert_eq!(validate_rollout(&spec), Ok(()));
        spec.shutdown.push(spec.shutdown[0].clone());
        assert_eq!(
            validate_rollout(&spec).unwrap_err().to_string(),
            "spec.shutdown names container \"db\" twice"
        );
        spec = sts_spec();
        spec.recreate_strategy = Some(ContainerRecreateRequestStrategy {
            termination_grace_period_seconds: Some(-1),
            ..Default::default()
        });
        assert!(
            validate_rollout(&spec)
                .unwrap_err()
                .to_string()
                .starts_with("spec.recreateStrategy.terminationGracePeriodSeconds")
        );
        spec = sts_spec();
        spec.active_deadline_seconds = Some(MAX_DURATION_SECONDS + 1);
        assert!(validate_rollout(&spec).is_err());
        for (value, ok) in [
            ("1%", true),
            ("100%", true),
            ("007%", true),
            ("0%", false),
            ("101%", false),
            (" 5%", false),
            ("5", false),
        ] {
            let checked = resolve_max_unavailable(&IntOrString::String(value.into()), 10);
            assert_eq!(checked.is_ok(), ok, "{value}: {checked:?}");
        }
    }

    #[test]
    fn a_name_too_long_for_a_label_value_is_refused_with_what_to_fix() {
        assert_eq!(validate_rollout_name(&"r".repeat(63)), Ok(()));
        let message = validate_rollout_name(&"r".repeat(64))
            .unwrap_err()
            .to_string();
        assert!(message.contains("64 characters"), "{message}");
        assert!(message.contains("at most 63"), "{message}");
        assert!(message.contains("shorter name"), "{message}");
    }

    #[test]
    fn max_unavailable_resolves_counts_and_percentages() {
        assert_eq!(resolve_max_unavailable(&IntOrString::Int(2), 6), Ok(2));
        assert_eq!(
            resolve_max_unavailable(&IntOrString::String("50%".into()), 6),
            Ok(3)
        );
        assert_eq!(
            resolve_max_unavailable(&IntOrString::String("10%".into()), 6),
            Ok(1)
        );
        assert!(resolve_max_unavailable(&IntOrString::Int(0), 6).is_err());
        assert!(resolve_max_unavailable(&IntOrString::String("150%".into()), 6).is_err());
        assert!(resolve_max_unavailable(&IntOrString::String("many".into()), 6).is_err());
    }
}
