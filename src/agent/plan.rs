//! What a request asks of its pod, checked against the pod spec before anything is touched:
//! refusals for what would not come back, and each container's shutdown action and grace.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, ContainerPort, LifecycleHandler, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use relaunch_api::{ContainerRecreateRequestSpec, FailurePolicy, HttpGetAction, ShutdownAction};

/// Grace when neither the request nor the pod sets one (the API's default).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// How one container is shut down gracefully before the stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShutdownStep {
    /// A command run in the container (CRI `ExecSync`).
    Exec(Vec<String>),
    /// An HTTP GET to the pod (or `host`).
    HttpGet(HttpTarget),
    /// The preStop `sleep` handler.
    Sleep(Duration),
}

/// A resolved HTTP GET: the named port already looked up in the container's ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// `http` or `https`.
    pub scheme: String,
    /// `host` of the action, else the pod IP (filled in when the pod has one).
    pub host: Option<String>,
    pub port: u16,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

/// Where a shutdown step came from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownSource {
    Request,
    PreStop,
}

/// Everything the state machine needs about one container, fixed for the request's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlan {
    pub name: String,
    pub shutdown: Option<(ShutdownSource, ShutdownStep)>,
    /// Shutdown plus stop must fit in this.
    pub grace: Duration,
    /// Hold the pod NotReady this long before the shutdown (None or zero: no unready step).
    pub unready_grace: Option<Duration>,
    pub min_started: Duration,
    /// Recreate even if the container has not started.
    pub force: bool,
}

/// The checked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPlan {
    pub containers: Vec<ContainerPlan>,
    pub ordered: bool,
    pub failure_policy: FailurePolicy,
    /// `activeDeadlineSeconds`.
    pub active_deadline: Option<Duration>,
}

/// Why a request is refused before anything is stopped. The text says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("spec.containers is empty: name at least one container of pod {pod}")]
    NoContainers { pod: String },
    #[error(
        "container {name} is listed more than once in spec.containers: list each container once"
    )]
    Duplicate { name: String },
    #[error(
        "pod {pod} has no container {name} (containers: {known}); only regular containers and restartable init containers (sidecars) can be recreated"
    )]
    UnknownContainer {
        pod: String,
        name: String,
        known: String,
    },
    #[error(
        "{name} is an init container that runs to completion, not a sidecar (restartPolicy: Always): it cannot be recreated in place"
    )]
    InitContainer { name: String },
    #[error(
        "pod {pod} has restartPolicy: Never: the kubelet would not start container {name} again after the stop; recreate the pod instead"
    )]
    RestartPolicyNever { pod: String, name: String },
    #[error(
        "pod {pod} has restartPolicy: OnFailure: a graceful exit 0 of container {name} would end it for good; only pods with restartPolicy: Always (or sidecars) can be recreated in place"
    )]
    RestartPolicyOnFailure { pod: String, name: String },
    #[error("{field} is {value}: it must not be negative")]
    Negative { field: String, value: i64 },
    #[error("shutdown of container {name}: {reason}")]
    BadShutdown { name: String, reason: String },
}

impl Refusal {
    /// A short label for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoContainers { .. } => "no_containers",
            Refusal::Duplicate { .. } => "duplicate_container",
            Refusal::UnknownContainer { .. } => "unknown_container",
            Refusal::InitContainer { .. } => "init_container",
            Refusal::RestartPolicyNever { .. } => "restart_policy_never",
            Refusal::RestartPolicyOnFailure { .. } => "restart_policy_on_failure",
            Refusal::Negative { .. } => "negative_duration",
            Refusal::BadShutdown { .. } => "bad_shutdown",
        }
    }
}

fn seconds(field: &str, value: Option<i64>) -> Result<Option<Duration>, Refusal> {
    match value {
        Some(v) if v < 0 => Err(Refusal::Negative {
            field: field.to_string(),
            value: v,
        }),
        Some(v) => Ok(Some(Duration::from_secs(v as u64))),
        None => Ok(None),
    }
}

/// Checks `spec` against `pod` and resolves every container's steps, or says why not.
pub fn plan(spec: &ContainerRecreateRequestSpec, pod: &Pod) -> Result<RequestPlan, Refusal> {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let pod_spec = pod.spec.clone().unwrap_or_default();
    let strategy = spec.strategy.clone().unwrap_or_default();
    if spec.containers.is_empty() {
        return Err(Refusal::NoContainers { pod: pod_name });
    }
    let active_deadline = seconds("spec.activeDeadlineSeconds", spec.active_deadline_seconds)?;
    let request_grace = seconds(
        "spec.strategy.terminationGracePeriodSeconds",
        strategy.termination_grace_period_seconds,
    )?;
    let pod_grace = seconds(
        "pod spec.terminationGracePeriodSeconds",
        pod_spec.termination_grace_period_seconds,
    )?;
    let grace = request_grace.or(pod_grace).unwrap_or(DEFAULT_GRACE);
    let unready_grace = seconds(
        "spec.strategy.unreadyGracePeriodSeconds",
        strategy.unready_grace_period_seconds,
    )?
    .filter(|d| !d.is_zero());
    let min_started = seconds(
        "spec.strategy.minStartedSeconds",
        strategy.min_started_seconds.map(i64::from),
    )?
    .unwrap_or_default();
    let policy = pod_spec.restart_policy.as_deref().unwrap_or("Always");

    let mut containers = Vec::new();
    for (i, wanted) in spec.containers.iter().enumerate() {
        if spec.containers[..i].iter().any(|c| c.name == wanted.name) {
            return Err(Refusal::Duplicate {
                name: wanted.name.clone(),
            });
        }
        let regular = pod_spec.containers.iter().find(|c| c.name == wanted.name);
        let init = pod_spec
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == wanted.name);
        let container = match (regular, init) {
            (Some(c), _) => {
                match policy {
                    "Never" => {
                        return Err(Refusal::RestartPolicyNever {
                            pod: pod_name,
                            name: wanted.name.clone(),
                        });
                    }
                    "OnFailure" => {
                        return Err(Refusal::RestartPolicyOnFailure {
                            pod: pod_name,
                            name: wanted.name.clone(),
                        });
                    }
                    _ => {}
                }
                c
            }
            // Native sidecars come back whatever the pod's restartPolicy is.
            (None, Some(c)) if c.restart_policy.as_deref() == Some("Always") => c,
            (None, Some(_)) => {
                return Err(Refusal::InitContainer {
                    name: wanted.name.clone(),
                });
            }
            (None, None) => {
                return Err(Refusal::UnknownContainer {
                    pod: pod_name,
                    name: wanted.name.clone(),
                    known: known_containers(
                        &pod_spec.containers,
                        pod_spec.init_containers.as_deref(),
                    ),
                });
            }
        };
        let shutdown = match &wanted.shutdown {
            Some(action) => Some((
                ShutdownSource::Request,
                request_shutdown(action, container).map_err(|reason| Refusal::BadShutdown {
                    name: wanted.name.clone(),
                    reason,
                })?,
            )),
            None => container
                .lifecycle
                .as_ref()
                .and_then(|l| l.pre_stop.as_ref())
                .and_then(|h| pre_stop(h, container))
                .map(|s| (ShutdownSource::PreStop, s)),
        };
        containers.push(ContainerPlan {
            name: wanted.name.clone(),
            shutdown,
            grace,
            unready_grace,
            min_started,
            force: strategy.force_recreate.unwrap_or(false),
        });
    }
    Ok(RequestPlan {
        containers,
        ordered: strategy.ordered_recreate.unwrap_or(false),
        failure_policy: strategy.failure_policy.unwrap_or_default(),
        active_deadline,
    })
}

fn known_containers(regular: &[Container], init: Option<&[Container]>) -> String {
    let names: Vec<&str> = regular
        .iter()
        .map(|c| c.name.as_str())
        .chain(
            init.into_iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"))
                .map(|c| c.name.as_str()),
        )
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn request_shutdown(
    action: &ShutdownAction,
    container: &Container,
) -> Result<ShutdownStep, String> {
    match (&action.exec, &action.http_get) {
        (Some(_), Some(_)) => Err("set either exec or httpGet, not both".into()),
        (None, None) => {
            Err("set exec or httpGet (or leave shutdown out to use the preStop hook)".into())
        }
        (Some(exec), None) if exec.command.is_empty() => Err("exec.command is empty".into()),
        (Some(exec), None) => Ok(ShutdownStep::Exec(exec.command.clone())),
        (None, Some(http)) => http_target(http, container).map(ShutdownStep::HttpGet),
    }
}

fn http_target(http: &HttpGetAction, container: &Container) -> Result<HttpTarget, String> {
    let ports = container.ports.as_deref().unwrap_or_default();
    let port = resolve_port(&http.port, ports).ok_or_else(|| match &http.port {
        IntOrString::String(name) => format!(
            "httpGet port {name:?} is not a port number and container {} has no port with that name",
            container.name
        ),
        IntOrString::Int(n) => format!("httpGet port {n} is not a valid port"),
    })?;
    let scheme = match http.scheme.as_deref().unwrap_or("HTTP") {
        "HTTP" | "http" => "http",
        "HTTPS" | "https" => "https",
        other => return Err(format!("httpGet scheme {other:?}: use HTTP or HTTPS")),
    };
    Ok(HttpTarget {
        scheme: scheme.into(),
        host: http.host.clone().filter(|h| !h.is_empty()),
        port,
        path: normalise_path(http.path.as_deref()),
        headers: http
            .http_headers
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
    })
}

/// The container's own preStop hook, run as the kubelet would; handlers we cannot run
/// (deprecated tcpSocket, unresolvable ports) are skipped like the kubelet skips them.
fn pre_stop(handler: &LifecycleHandler, container: &Container) -> Option<ShutdownStep> {
    if let Some(exec) = &handler.exec {
        return Some(ShutdownStep::Exec(exec.command.clone().unwrap_or_default()));
    }
    if let Some(http) = &handler.http_get {
        let ports = container.ports.as_deref().unwrap_or_default();
        let port = resolve_port(&http.port, ports)?;
        let scheme = if http.scheme.as_deref() == Some("HTTPS") {
            "https"
        } else {
            "http"
        };
        return Some(ShutdownStep::HttpGet(HttpTarget {
            scheme: scheme.into(),
            host: http.host.clone().filter(|h| !h.is_empty()),
            port,
            path: normalise_path(http.path.as_deref()),
            headers: http
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        }));
    }
    handler
        .sleep
        .as_ref()
        .map(|s| ShutdownStep::Sleep(Duration::from_secs(s.seconds.max(0) as u64)))
}

fn normalise_path(path: Option<&str>) -> String {
    match path {
        None | Some("") => "/".into(),
        Some(p) if p.starts_with('/') => p.into(),
        Some(p) => format!("/{p}"),
    }
}

/// A numeric port, or a named one looked up in the container's ports.
pub fn resolve_port(port: &IntOrString, ports: &[ContainerPort]) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok().filter(|p| *p > 0),
        IntOrString::String(name) => match name.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            Ok(_) => None,
            Err(_) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "db-0"}, "spec": spec})).unwrap()
    }

    fn spec(v: serde_json::Value) -> ContainerRecreateRequestSpec {
        serde_json::from_value(v).unwrap()
    }

    fn app_pod(policy: &str) -> Pod {
        pod(json!({
            "restartPolicy": policy,
            "terminationGracePeriodSeconds": 20,
            "initContainers": [
                {"name": "setup", "image": "x"},
                {"name": "proxy", "image": "x", "restartPolicy": "Always"},
            ],
            "containers": [{
                "name": "db", "image": "x",
                "ports": [{"name": "admin", "containerPort": 8123}],
                "lifecycle": {"preStop": {"exec": {"command": ["db", "stop"]}}},
            }, {"name": "exporter", "image": "x"}],
        }))
    }

    #[test]
    fn refuses_restart_policy_never_with_what_to_do() {
        let err = plan(
            &spec(json!({"podName": "db-0", "containers": [{"name": "db"}]})),
            &app_pod("Never"),
        )
        .unwrap_err();
        assert_eq!(err.reason(), "restart_policy_never");
        assert!(err.to_string().contains("restartPolicy: Never"), "{err}");
        assert!(
            err.to_string().contains("recreate the pod instead"),
            "{err}"
        );
    }

    #[test]
    fn refuses_on_failure_because_a_graceful_exit_would_end_the_container() {
        let err = plan(
            &spec(json!({"podName": "db-0", "containers": [{"name": "db"}]})),
            &app_pod("OnFailure"),
        )
        .unwrap_err();
        assert_eq!(err.reason(), "restart_policy_on_failure");
    }

    #[test]
    fn sidecars_are_allowed_whatever_the_pod_restart_policy() {
        for policy in ["Always", "OnFailure", "Never"] {
            let plan = plan(
                &spec(json!({"podName": "db-0", "containers": [{"name": "proxy"}]})),
                &app_pod(policy),
            )
            .unwrap();
            assert_eq!(plan.containers[0].name, "proxy");
        }
    }

    #[test]
    fn refuses_unknown_duplicate_and_init_containers() {
        let p = app_pod("Always");
        let err = plan(
            &spec(json!({"podName": "db-0", "containers": [{"name": "nope"}]})),
            &p,
        )
        .unwrap_err();
        assert_eq!(err.reason(), "unknown_container");
        assert!(err.to_string().contains("db, exporter, proxy"), "{err}");
        let err = plan(
            &spec(json!({"podName": "db-0", "containers": [{"name": "db"}, {"name": "db"}]})),
            &p,
        )
        .unwrap_err();
        assert_eq!(err.reason(), "duplicate_container");
        let err = plan(
            &spec(json!({"podName": "db-0", "containers": [{"name": "setup"}]})),
            &p,
        )
        .unwrap_err();
        assert_eq!(err.reason(), "init_container");
        let err = plan(&spec(json!({"podName": "db-0", "containers": []})), &p).unwrap_err();
        assert_eq!(err.reason(), "no_containers");
    }

    #[test]
    fn refuses_negative_durations() {
        let err = plan(
            &spec(json!({"podName": "db-0", "containers": [{"name": "db"}],
                "strategy": {"unreadyGracePeriodSeconds": -1}})),
            &app_pod("Always"),
        )
        .unwrap_err();
        assert_eq!(err.reason(), "negative_duration");
    }

    #[test]
    fn grace_comes_from_request_then_pod_then_default() {
        let p = app_pod("Always");
        let s = spec(json!({"podName": "db-0", "containers": [{"name": "db"}],
            "strategy": {"terminationGracePeriodSeconds": 7}}));
        assert_eq!(
            plan(&s, &p).unwrap().containers[0].grace,
            Duration::from_secs(7)
        );
        let s = spec(json!({"podName": "db-0", "containers": [{"name": "db"}]}));
        assert_eq!(
            plan(&s, &p).unwrap().containers[0].grace,
            Duration::from_secs(20)
        );
        let bare = pod(json!({"containers": [{"name": "db", "image": "x"}]}));
        assert_eq!(plan(&s, &bare).unwrap().containers[0].grace, DEFAULT_GRACE);
    }

    #[test]
    fn request_shutdown_overrides_pre_stop_and_resolves_named_ports() {
        let p = app_pod("Always");
        let s = spec(json!({"podName": "db-0", "containers": [
            {"name": "db", "shutdown": {"httpGet": {"port": "admin", "path": "shutdown"}}},
            {"name": "exporter"},
        ]}));
        let plan = plan(&s, &p).unwrap();
        assert_eq!(
            plan.containers[0].shutdown,
            Some((
                ShutdownSource::Request,
                ShutdownStep::HttpGet(HttpTarget {
                    scheme: "http".into(),
                    host: None,
                    port: 8123,
                    path: "/shutdown".into(),
                    headers: vec![],
                })
            ))
        );
        assert_eq!(plan.containers[1].shutdown, None);
        let s = spec(json!({"podName": "db-0", "containers": [{"name": "db"}]}));
        assert_eq!(
            super::plan(&s, &p).unwrap().containers[0].shutdown,
            Some((
                ShutdownSource::PreStop,
                ShutdownStep::Exec(vec!["db".into(), "stop".into()])
            ))
        );
    }

    #[test]
    fn refuses_unresolvable_named_port_and_ambiguous_action() {
        let p = app_pod("Always");
        let s = spec(json!({"podName": "db-0", "containers": [
            {"name": "db", "shutdown": {"httpGet": {"port": "nope"}}}]}));
        let err = plan(&s, &p).unwrap_err();
        assert_eq!(err.reason(), "bad_shutdown");
        assert!(err.to_string().contains("no port with that name"), "{err}");
        let s = spec(json!({"podName": "db-0", "containers": [
            {"name": "db", "shutdown": {"exec": {"command": ["x"]}, "httpGet": {"port": 1}}}]}));
        assert_eq!(plan(&s, &p).unwrap_err().reason(), "bad_shutdown");
    }

    #[test]
    fn pre_stop_sleep_is_a_shutdown_step() {
        let p = pod(json!({"containers": [{"name": "c", "image": "x",
            "lifecycle": {"preStop": {"sleep": {"seconds": 3}}}}]}));
        let s = spec(json!({"podName": "db-0", "containers": [{"name": "c"}]}));
        assert_eq!(
            plan(&s, &p).unwrap().containers[0].shutdown,
            Some((
                ShutdownSource::PreStop,
                ShutdownStep::Sleep(Duration::from_secs(3))
            ))
        );
    }
}
