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
    ContainerRecreateRequest, ContainerRecreateRequestSpec, FailurePolicy, HttpGetAction,
    LABEL_NODE_NAME, LABEL_POD_UID, LABEL_ROLLING_RESTART, RollingRestartSpec, ShutdownAction,
    WorkloadKind,
};

/// The longest duration a request may ask for (deadlines, grace periods, readiness waits).
pub const MAX_DURATION_SECONDS: i64 = 24 * 60 * 60;
/// The longest a finished request may be kept before its TTL deletes it.
pub const MAX_TTL_SECONDS: i64 = 30 * 24 * 60 * 60;
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
    #[error("spec.containers[{index}].shutdown: set exec or httpGet, not both")]
    ShutdownExecAndHttpGet { index: usize },
    #[error("spec.containers[{index}].shutdown: set exec or httpGet")]
    ShutdownWithoutAction { index: usize },
    #[error("spec.containers[{index}].shutdown.exec.command is empty")]
    ShutdownCommandEmpty { index: usize },
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
            InvalidRequest::DuplicateContainers { .. } => "duplicate_container",
            InvalidRequest::UnknownFailurePolicy => "unknown_value",
            InvalidRequest::DurationOutOfRange { value, .. } if *value < 0 => "negative_duration",
            InvalidRequest::DurationOutOfRange { .. } => "duration_out_of_range",
            InvalidRequest::ShutdownExecAndHttpGet { .. }
            | InvalidRequest::ShutdownWithoutAction { .. }
            | InvalidRequest::ShutdownCommandEmpty { .. }
            | InvalidRequest::UnknownNamedPort { .. }
            | InvalidRequest::InvalidPort { .. }
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
    if spec.containers.is_empty() {
        return Err(InvalidRequest::NoContainers);
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
            check_shutdown(index, action)?;
        }
    }
    Ok(())
}

/// A request's shutdown action that is one complete action.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CheckedShutdown<'a> {
    /// The command to run in the container (not empty).
    Exec(&'a [String]),
    /// The HTTP GET to send (its port and scheme are checked against the pod).
    HttpGet(&'a HttpGetAction),
}

/// Checks the shutdown action of `spec.containers[index]`: `exec` with a command, or `httpGet`.
pub fn check_shutdown(
    index: usize,
    action: &ShutdownAction,
) -> Result<CheckedShutdown<'_>, InvalidRequest> {
    match (&action.exec, &action.http_get) {
        (Some(_), Some(_)) => Err(InvalidRequest::ShutdownExecAndHttpGet { index }),
        (None, None) => Err(InvalidRequest::ShutdownWithoutAction { index }),
        (Some(exec), None) if exec.command.is_empty() => {
            Err(InvalidRequest::ShutdownCommandEmpty { index })
        }
        (Some(exec), None) => Ok(CheckedShutdown::Exec(&exec.command)),
        (None, Some(http)) => Ok(CheckedShutdown::HttpGet(http)),
    }
}

fn check_durations(spec: &ContainerRecreateRequestSpec) -> Result<(), InvalidRequest> {
    let strategy = spec.strategy.clone().unwrap_or_default();
    let fields: [(&'static str, Option<i64>, i64, i64); 5] = [
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
    ];
    for (field, value, min, max) in fields {
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
            http_get_scheme(http, found.container())?;
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
        "HTTP" | "http" => Ok("http"),
        "HTTPS" | "https" => Ok("https"),
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
    #[error("spec.strategy.{0} (use a count ≥ 1 or a percentage such as \"25%\")")]
    MaxUnavailable(InvalidMaxUnavailable),
    #[error("spec.activeDeadlineSeconds must be at least 1, not {0}")]
    ActiveDeadline(i64),
    #[error("spec.strategy.{field} must not be negative, not {value}")]
    Negative { field: &'static str, value: i32 },
    #[error("spec.strategy.order.role.key is empty")]
    NoRoleKey,
    #[error("spec.containers names {0:?} twice")]
    DuplicateContainer(String),
    #[error("spec.shutdown names container {0:?}, which is not in spec.containers")]
    ShutdownForUnlistedContainer(String),
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
            let percent: usize = s
                .strip_suffix('%')
                .and_then(|p| p.trim().parse().ok())
                .ok_or_else(|| InvalidMaxUnavailable::NotANumber(s.clone()))?;
            if percent == 0 || percent > 100 {
                return Err(InvalidMaxUnavailable::PercentOutOfRange(s.clone()));
            }
            Ok(((total * percent) / 100).max(1))
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
    if let Some(deadline) = spec.active_deadline_seconds
        && deadline < 1
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
    if let Some(role) = spec.strategy.order.as_ref().and_then(|o| o.role.as_ref())
        && role.key.is_empty()
    {
        return Err(InvalidRollout::NoRoleKey);
    }
    let mut seen = BTreeSet::new();
    for name in &spec.containers {
        if !seen.insert(name) {
            return Err(InvalidRollout::DuplicateContainer(name.clone()));
        }
    }
    for shutdown in &spec.shutdown {
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
