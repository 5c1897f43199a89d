//! What a request asks of its pod, checked against the pod spec before anything is touched
//! (the API's validation: refusals for what would not come back), and each container's
//! shutdown action and grace.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod, PodSpec};

use relaunch_api::containers::resolve_port;
use relaunch_api::validation::{self, CheckedShutdown, InvalidRequest};
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

/// A duration in whole seconds. The request's were checked (never negative); a negative pod
/// grace period, which the API server refuses, counts as unset.
fn seconds(value: Option<i64>) -> Option<Duration> {
    value
        .and_then(|v| u64::try_from(v).ok())
        .map(Duration::from_secs)
}

/// Checks `spec` against `pod` (the API's checks on the request and the pod spec, so a request
/// seen before admission is refused with admission's message) and resolves every container's
/// steps, or says why not.
pub fn plan(spec: &ContainerRecreateRequestSpec, pod: &Pod) -> Result<RequestPlan, InvalidRequest> {
    let no_spec = PodSpec::default();
    let pod_spec = pod.spec.as_ref().unwrap_or(&no_spec);
    validation::check_spec(spec)?;
    let checked = validation::check_containers(spec, pod_spec)?;
    let strategy = spec.strategy.clone().unwrap_or_default();
    let grace = seconds(strategy.termination_grace_period_seconds)
        .or(seconds(pod_spec.termination_grace_period_seconds))
        .unwrap_or(DEFAULT_GRACE);
    let unready_grace = seconds(strategy.unready_grace_period_seconds).filter(|d| !d.is_zero());
    let min_started = seconds(strategy.min_started_seconds.map(i64::from)).unwrap_or_default();

    let mut containers = Vec::new();
    for (index, (wanted, container)) in spec.containers.iter().zip(checked).enumerate() {
        let shutdown = match &wanted.shutdown {
            Some(action) => Some((
                ShutdownSource::Request,
                request_shutdown(index, action, container)?,
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
        active_deadline: seconds(spec.active_deadline_seconds),
    })
}

fn request_shutdown(
    index: usize,
    action: &ShutdownAction,
    container: &Container,
) -> Result<ShutdownStep, InvalidRequest> {
    let field = format!("spec.containers[{index}].shutdown");
    match validation::check_shutdown(&field, &container.name, action)? {
        CheckedShutdown::Exec(command) => Ok(ShutdownStep::Exec(command.to_vec())),
        CheckedShutdown::HttpGet(http) => http_target(http, container).map(ShutdownStep::HttpGet),
    }
}

fn http_target(http: &HttpGetAction, container: &Container) -> Result<HttpTarget, InvalidRequest> {
    let port = validation::http_get_port(http, container)?;
    let scheme = validation::http_get_scheme(http, container)?;
    Ok(HttpTarget {
        scheme: scheme.into(),
        // Always the pod's IP: a request's `host` is refused (it would let anyone who may create
        // requests send GETs from the node to any address), only a preStop hook keeps its host.
        host: None,
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
    fn a_request_naming_an_http_host_is_refused_so_the_agent_only_gets_the_pod() {
        let p = app_pod("Always");
        let s = spec(json!({"podName": "db-0", "containers": [
            {"name": "db", "shutdown": {"httpGet": {"port": 8123, "host": "127.0.0.1"}}},
        ]}));
        let refused = plan(&s, &p).unwrap_err();
        assert_eq!(refused.reason(), "bad_shutdown");
        assert!(
            refused.to_string().contains("httpGet.host: not supported"),
            "{refused}"
        );
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
