//! The pod status the kubelet reports (`generateAPIPodStatus`, `getPhase`, the condition
//! generators) and the strategic merge patch that brings the API's copy up to date.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{
    Container, ContainerState as ApiContainerState, ContainerStateRunning,
    ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition,
    PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Map, Value, json};

use super::plan::{is_sidecar, is_terminal, restart_policy};
use super::runtime::{Instance, PodRuntime};
use crate::TEST_IMAGE;
use relaunch_cri::ContainerState;

/// The pod conditions the kubelet owns; all others (readiness gates) belong to someone else.
pub const OWNED_CONDITIONS: [&str; 4] = [
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
];

/// The status fields the kubelet writes.
const OWNED_FIELDS: [&str; 10] = [
    "phase",
    "hostIP",
    "hostIPs",
    "podIP",
    "podIPs",
    "startTime",
    "qosClass",
    "conditions",
    "containerStatuses",
    "initContainerStatuses",
];

/// What the status is computed from besides the pod itself.
#[derive(Debug, Clone)]
pub struct StatusInputs<'a> {
    pub runtime: &'a PodRuntime,
    /// Readiness probe results by container ID; a container with a readiness probe and no
    /// result yet is not ready.
    pub probe_ready: &'a HashMap<String, bool>,
    /// Startup probe results by container ID: a container with a startup probe is not
    /// `started` (nor ready) until its probe succeeded.
    pub probe_started: &'a HashMap<String, bool>,
    /// Containers held back by crash-loop back-off, with the kubelet's message.
    pub back_off: &'a BTreeMap<String, String>,
    pub node_ip: Ipv4Addr,
    pub now: SystemTime,
}

/// The status the kubelet would report for `pod` now (only the fields it owns).
pub fn desired_status(pod: &Pod, inputs: &StatusInputs<'_>) -> PodStatus {
    let empty = Default::default();
    let spec = pod.spec.as_ref();
    let old = pod.status.as_ref();
    let old_statuses = |list: Option<&Vec<ContainerStatus>>| -> HashMap<String, ContainerStatus> {
        list.into_iter()
            .flatten()
            .map(|s| (s.name.clone(), s.clone()))
            .collect()
    };
    let old_init = old_statuses(old.and_then(|s| s.init_container_statuses.as_ref()));
    let old_regular = old_statuses(old.and_then(|s| s.container_statuses.as_ref()));
    let init_specs: &Vec<Container> = spec
        .and_then(|s| s.init_containers.as_ref())
        .unwrap_or(&empty);
    let regular_specs: &Vec<Container> = spec.map(|s| &s.containers).unwrap_or(&empty);

    let init_statuses: Vec<ContainerStatus> = init_specs
        .iter()
        .map(|c| {
            let mut s = container_status(c, inputs, old_init.get(&c.name), "PodInitializing");
            if !is_sidecar(c) {
                s.ready = is_completed(&s);
            }
            s
        })
        .collect();
    let initialized_now = init_specs
        .iter()
        .zip(&init_statuses)
        .all(|(c, s)| is_completed(s) || (is_sidecar(c) && s.started == Some(true)))
        || regular_specs
            .iter()
            .any(|c| inputs.runtime.newest(&c.name).is_some());
    let regular_waiting = if initialized_now {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let regular_statuses: Vec<ContainerStatus> = regular_specs
        .iter()
        .map(|c| container_status(c, inputs, old_regular.get(&c.name), regular_waiting))
        .collect();

    let phase = if is_terminal(pod) {
        old.and_then(|s| s.phase.clone()).unwrap_or_default()
    } else {
        phase(pod, init_specs, &init_statuses, &regular_statuses).to_string()
    };
    let completed = phase == "Succeeded";

    let mut conditions = Vec::new();
    let sandbox_ready = inputs.runtime.ready_sandbox().is_some();
    conditions.push(condition(
        "PodReadyToStartContainers",
        sandbox_ready,
        None,
        None,
    ));
    let incomplete: Vec<&str> = init_specs
        .iter()
        .zip(&init_statuses)
        .filter(|(c, s)| !(is_completed(s) || (is_sidecar(c) && s.started == Some(true))))
        .map(|(c, _)| c.name.as_str())
        .collect();
    conditions.push(if completed {
        condition("Initialized", true, Some("PodCompleted"), None)
    } else if initialized_now {
        condition("Initialized", true, None, None)
    } else {
        condition(
            "Initialized",
            false,
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            )),
        )
    });
    let unready: Vec<&str> = init_specs
        .iter()
        .zip(&init_statuses)
        .filter(|(c, _)| is_sidecar(c))
        .chain(regular_specs.iter().zip(&regular_statuses))
        .filter(|(_, s)| !s.ready)
        .map(|(c, _)| c.name.as_str())
        .collect();
    let containers_message = format!("containers with unready status: [{}]", unready.join(" "));
    let containers_ready = if completed {
        condition("ContainersReady", false, Some("PodCompleted"), None)
    } else if unready.is_empty() {
        condition("ContainersReady", true, None, None)
    } else {
        condition(
            "ContainersReady",
            false,
            Some("ContainersNotReady"),
            Some(containers_message.clone()),
        )
    };
    let ready = if completed {
        condition("Ready", false, Some("PodCompleted"), None)
    } else if !unready.is_empty() {
        condition(
            "Ready",
            false,
            Some("ContainersNotReady"),
            Some(containers_message),
        )
    } else {
        match unready_gate_message(pod) {
            Some(message) => condition(
                "Ready",
                false,
                Some("ReadinessGatesNotReady"),
                Some(message),
            ),
            None => condition("Ready", true, None, None),
        }
    };
    conditions.push(ready);
    conditions.push(containers_ready);
    for c in &mut conditions {
        c.last_transition_time = old
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
            .and_then(|o| o.last_transition_time.clone())
            .or_else(|| Some(time(inputs.now)));
    }

    let ip = inputs.node_ip.to_string();
    PodStatus {
        phase: Some(phase),
        host_ip: Some(ip.clone()),
        host_ips: Some(vec![HostIP { ip: ip.clone() }]),
        pod_ip: Some(ip.clone()),
        pod_ips: Some(vec![PodIP { ip }]),
        start_time: old
            .and_then(|s| s.start_time.clone())
            .or_else(|| Some(time(inputs.now))),
        qos_class: Some(qos_class(pod).to_string()),
        conditions: Some(conditions),
        container_statuses: Some(regular_statuses),
        init_container_statuses: (!init_specs.is_empty()).then_some(init_statuses),
        ..Default::default()
    }
}

/// The strategic merge patch (`{"status": ...}`) that turns the pod's current status into
/// `desired`, or `None` when nothing the kubelet owns differs. Removed fields are sent as `null`;
/// conditions others own are left out so the server's merge on `type` keeps them.
pub fn status_patch(pod: &Pod, desired: &PodStatus) -> Option<Value> {
    let current = owned_view(pod.status.as_ref());
    let desired = owned_view(Some(desired));
    let diff = diff(&current, &desired)?;
    Some(json!({ "status": diff }))
}

fn owned_view(status: Option<&PodStatus>) -> Value {
    let full = status
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or_else(|| json!({}));
    let mut view = Map::new();
    for field in OWNED_FIELDS {
        if let Some(value) = full.get(field) {
            view.insert(field.to_string(), value.clone());
        }
    }
    if let Some(Value::Array(conditions)) = view.get_mut("conditions") {
        conditions.retain(|c| {
            c.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| OWNED_CONDITIONS.contains(&t))
        });
    }
    Value::Object(view)
}

/// The merge key of the status lists the kubelet writes.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "conditions" => Some("type"),
        "containerStatuses" | "initContainerStatuses" => Some("name"),
        "hostIPs" | "podIPs" => Some("ip"),
        _ => None,
    }
}

/// A two-way strategic merge patch from `current` to `desired` (objects only).
fn diff(current: &Value, desired: &Value) -> Option<Value> {
    let (Value::Object(cur), Value::Object(want)) = (current, desired) else {
        return (current != desired).then(|| desired.clone());
    };
    let mut patch = Map::new();
    for (key, value) in want {
        match (cur.get(key), value) {
            (Some(old), new) if old == new => {}
            (Some(Value::Object(_)), Value::Object(_)) => {
                if let Some(d) = diff(&cur[key], value) {
                    patch.insert(key.clone(), d);
                }
            }
            (Some(Value::Array(old)), Value::Array(new)) if merge_key(key).is_some() => {
                let mk = merge_key(key).unwrap_or_default();
                if let Some(d) = diff_list(old, new, mk) {
                    patch.insert(key.clone(), d);
                }
            }
            _ => {
                patch.insert(key.clone(), value.clone());
            }
        }
    }
    for key in cur.keys() {
        if !want.contains_key(key) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    (!patch.is_empty()).then_some(Value::Object(patch))
}

fn diff_list(current: &[Value], desired: &[Value], key: &str) -> Option<Value> {
    let key_of = |v: &Value| v.get(key).cloned();
    let mut items = Vec::new();
    for want in desired {
        let Some(k) = key_of(want) else {
            continue;
        };
        match current.iter().find(|c| key_of(c).as_ref() == Some(&k)) {
            Some(old) => {
                if let Some(Value::Object(mut d)) = diff(old, want) {
                    d.insert(key.to_string(), k);
                    items.push(Value::Object(d));
                }
            }
            None => items.push(want.clone()),
        }
    }
    for old in current {
        if let Some(k) = key_of(old)
            && !desired.iter().any(|d| key_of(d).as_ref() == Some(&k))
        {
            items.push(json!({ key: k, "$patch": "delete" }));
        }
    }
    (!items.is_empty()).then_some(Value::Array(items))
}

/// One container's status (`convertToAPIContainerStatuses`).
fn container_status(
    container: &Container,
    inputs: &StatusInputs<'_>,
    old: Option<&ContainerStatus>,
    default_reason: &str,
) -> ContainerStatus {
    let instances: Vec<&Instance> = inputs.runtime.instances(&container.name);
    let Some(newest) = instances.first() else {
        return missing_container_status(container, old, default_reason);
    };
    let mut status = ContainerStatus {
        name: container.name.clone(),
        image: TEST_IMAGE.to_string(),
        image_id: newest.image_ref.clone(),
        container_id: Some(container_id(&newest.id)),
        restart_count: newest.attempt as i32,
        state: Some(state_of(newest)),
        last_state: Some(instances.get(1).map(|i| state_of(i)).unwrap_or_default()),
        ..Default::default()
    };
    let running = newest.state == ContainerState::Running;
    let started = running
        && match inputs.probe_started.get(&newest.id) {
            Some(started) => *started,
            None => container.startup_probe.is_none(),
        };
    status.started = Some(started);
    status.ready = started
        && match inputs.probe_ready.get(&newest.id) {
            Some(ready) => *ready,
            None => container.readiness_probe.is_none(),
        };
    if newest.state == ContainerState::Exited
        && let Some(message) = inputs.back_off.get(&container.name)
    {
        status.last_state = status.state.take();
        status.state = Some(ApiContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("CrashLoopBackOff".into()),
                message: Some(message.clone()),
            }),
            ..Default::default()
        });
    }
    status
}

/// A container with no instance in the runtime: not yet created, or removed by someone else
/// (then the kubelet reports `ContainerStatusUnknown` and counts a restart).
fn missing_container_status(
    container: &Container,
    old: Option<&ContainerStatus>,
    default_reason: &str,
) -> ContainerStatus {
    let waiting = ApiContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(default_reason.to_string()),
            message: None,
        }),
        ..Default::default()
    };
    let mut status = ContainerStatus {
        name: container.name.clone(),
        image: TEST_IMAGE.to_string(),
        image_id: String::new(),
        state: Some(waiting),
        last_state: Some(ApiContainerState::default()),
        started: Some(false),
        ..Default::default()
    };
    let Some(old) = old else {
        return status;
    };
    let old_state = old.state.clone().unwrap_or_default();
    if old_state.terminated.is_some() {
        return old.clone();
    }
    status.restart_count = old.restart_count;
    status.last_state = old.last_state.clone().or(status.last_state);
    if old_state.running.is_some() {
        status.restart_count += 1;
        status.last_state = Some(ApiContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 137,
                reason: Some("ContainerStatusUnknown".into()),
                message: Some(
                    "The container could not be located when the pod was terminated".into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    status
}

fn state_of(instance: &Instance) -> ApiContainerState {
    match instance.state {
        ContainerState::Running => ApiContainerState {
            running: Some(ContainerStateRunning {
                started_at: instance.started_at.map(time),
            }),
            ..Default::default()
        },
        ContainerState::Exited => {
            let reason = match instance.reason.as_str() {
                "" if instance.exit_code == 0 => "Completed",
                "" => "Error",
                r => r,
            };
            ApiContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: instance.exit_code,
                    reason: Some(reason.to_string()),
                    started_at: instance.started_at.map(time),
                    finished_at: instance.finished_at.map(time),
                    container_id: Some(container_id(&instance.id)),
                    ..Default::default()
                }),
                ..Default::default()
            }
        }
        ContainerState::Created | ContainerState::Unknown => ApiContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ContainerCreating".into()),
                message: None,
            }),
            ..Default::default()
        },
    }
}

fn is_completed(status: &ContainerStatus) -> bool {
    status
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .is_some_and(|t| t.exit_code == 0)
}

/// The pod phase (`getPhase`).
fn phase(
    pod: &Pod,
    init_specs: &[Container],
    init: &[ContainerStatus],
    regular: &[ContainerStatus],
) -> &'static str {
    let policy = restart_policy(pod);
    let mut pending_init = 0;
    let mut failed_init = 0;
    for (c, s) in init_specs.iter().zip(init) {
        let state = s.state.clone().unwrap_or_default();
        if is_sidecar(c) {
            if state.running.is_none() && !regular_started(regular) {
                pending_init += 1;
            }
            continue;
        }
        match (&state.running, &state.terminated, &state.waiting) {
            (_, Some(t), _) if t.exit_code == 0 => {}
            (_, Some(_), _) => failed_init += 1,
            (Some(_), _, _) => pending_init += 1,
            (_, _, Some(_)) => {
                let last_failed = s
                    .last_state
                    .as_ref()
                    .and_then(|l| l.terminated.as_ref())
                    .is_some_and(|t| t.exit_code != 0);
                if last_failed {
                    failed_init += 1;
                } else {
                    pending_init += 1;
                }
            }
            _ => pending_init += 1,
        }
    }
    if failed_init > 0 && policy == "Never" {
        return "Failed";
    }
    if (pending_init > 0 || failed_init > 0) && !regular_started(regular) {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in regular {
        let state = s.state.clone().unwrap_or_default();
        if state.running.is_some() {
            running += 1;
        } else if let Some(t) = &state.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s
            .last_state
            .as_ref()
            .is_some_and(|l| l.terminated.is_some())
        {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        if policy == "Always" {
            "Running"
        } else if stopped == succeeded {
            "Succeeded"
        } else if policy == "Never" {
            "Failed"
        } else {
            "Running"
        }
    } else {
        "Pending"
    }
}

fn regular_started(regular: &[ContainerStatus]) -> bool {
    regular.iter().any(|s| {
        s.container_id.is_some()
            || s.last_state
                .as_ref()
                .is_some_and(|l| l.terminated.is_some())
    })
}

/// Why the pod's readiness gates hold it NotReady, in the kubelet's words; `None` if all are True.
fn unready_gate_message(pod: &Pod) -> Option<String> {
    let gates = pod.spec.as_ref()?.readiness_gates.as_ref()?;
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    let messages: Vec<String> = gates
        .iter()
        .filter_map(|gate| {
            let found = conditions
                .into_iter()
                .flatten()
                .find(|c| c.type_ == gate.condition_type);
            match found {
                None => Some(format!(
                    "corresponding condition of pod readiness gate \"{}\" does not exist.",
                    gate.condition_type
                )),
                Some(c) if c.status != "True" => Some(format!(
                    "the status of pod readiness gate \"{}\" is not \"True\", but {}",
                    gate.condition_type, c.status
                )),
                Some(_) => None,
            }
        })
        .collect();
    (!messages.is_empty()).then(|| messages.join(", "))
}

fn qos_class(pod: &Pod) -> &'static str {
    let containers = pod.spec.iter().flat_map(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
    });
    let mut any = false;
    let mut guaranteed = true;
    for c in containers {
        let resources = c.resources.clone().unwrap_or_default();
        let requests = resources.requests.unwrap_or_default();
        let limits = resources.limits.unwrap_or_default();
        any |= !requests.is_empty() || !limits.is_empty();
        for r in ["cpu", "memory"] {
            let limit = limits.get(r);
            if limit.is_none() || requests.get(r).is_some_and(|q| Some(q) != limit) {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

fn condition(type_: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> PodCondition {
    PodCondition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.map(str::to_string),
        message,
        ..Default::default()
    }
}

/// `containerd://<id>`, as the kubelet reports container IDs.
pub fn container_id(id: &str) -> String {
    format!("containerd://{id}")
}

/// A CRI time as the API carries it: whole seconds.
fn time(t: SystemTime) -> Time {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    Time(
        k8s_openapi::jiff::Timestamp::from_second(secs)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::runtime::Sandbox;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    fn pod(spec: Value, status: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "db-0", "namespace": "default", "uid": "u1"},
            "spec": spec,
            "status": status,
        }))
        .unwrap()
    }

    fn instance(name: &str, attempt: u32, state: ContainerState, exit_code: i32) -> Instance {
        Instance {
            id: format!("{name}{attempt}"),
            sandbox_id: "sb".into(),
            pod_uid: "u1".into(),
            name: name.into(),
            attempt,
            state,
            created_at: Some(at(u64::from(attempt) * 10)),
            started_at: Some(at(u64::from(attempt) * 10 + 1)),
            finished_at: (state == ContainerState::Exited).then(|| at(u64::from(attempt) * 10 + 5)),
            exit_code,
            reason: if state == ContainerState::Exited {
                if exit_code == 0 { "Completed" } else { "Error" }.into()
            } else {
                String::new()
            },
            hash: "h".into(),
            image_ref: "sha256:abc".into(),
        }
    }

    fn runtime(containers: Vec<Instance>) -> PodRuntime {
        PodRuntime {
            sandboxes: vec![Sandbox {
                id: "sb".into(),
                pod_uid: "u1".into(),
                ready: true,
                created_at: Some(at(0)),
            }],
            containers,
        }
    }

    struct Case {
        probe_ready: HashMap<String, bool>,
        probe_started: HashMap<String, bool>,
        back_off: BTreeMap<String, String>,
    }

    impl Case {
        fn new() -> Self {
            Self {
                probe_ready: HashMap::new(),
                probe_started: HashMap::new(),
                back_off: BTreeMap::new(),
            }
        }
        fn status(&self, pod: &Pod, rt: &PodRuntime) -> PodStatus {
            desired_status(
                pod,
                &StatusInputs {
                    runtime: rt,
                    probe_ready: &self.probe_ready,
                    probe_started: &self.probe_started,
                    back_off: &self.back_off,
                    node_ip: Ipv4Addr::new(127, 0, 0, 2),
                    now: at(100),
                },
            )
        }
    }

    fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
    }

    use ContainerState::{Exited, Running};

    #[test]
    fn running_pod_without_probes_is_ready_and_reports_node_ip() {
        let p = pod(json!({"containers": [{"name": "db"}]}), json!({}));
        let s = Case::new().status(&p, &runtime(vec![instance("db", 0, Running, 0)]));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("127.0.0.2"));
        assert_eq!(s.host_ips.as_ref().unwrap()[0].ip, "127.0.0.2");
        assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "ContainersReady").status, "True");
        let c = &s.container_statuses.as_ref().unwrap()[0];
        assert!(c.ready);
        assert_eq!(c.started, Some(true));
        assert_eq!(c.container_id.as_deref(), Some("containerd://db0"));
        assert_eq!(c.image, TEST_IMAGE);
        assert_eq!(c.image_id, "sha256:abc");
        assert_eq!(
            c.state
                .as_ref()
                .unwrap()
                .running
                .as_ref()
                .unwrap()
                .started_at,
            Some(time(at(1)))
        );
        assert_eq!(s.start_time, Some(time(at(100))));
    }

    #[test]
    fn restarted_container_reports_last_state_and_restart_count() {
        let p = pod(json!({"containers": [{"name": "db"}]}), json!({}));
        let rt = runtime(vec![
            instance("db", 1, Running, 0),
            instance("db", 0, Exited, 143),
        ]);
        let s = Case::new().status(&p, &rt);
        let c = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(c.restart_count, 1);
        let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(last.exit_code, 143);
        assert_eq!(last.reason.as_deref(), Some("Error"));
        assert_eq!(last.container_id.as_deref(), Some("containerd://db0"));
        assert_eq!(last.finished_at, Some(time(at(5))));
    }

    #[test]
    fn back_off_shows_crash_loop_waiting_with_the_exit_as_last_state() {
        let p = pod(json!({"containers": [{"name": "db"}]}), json!({}));
        let rt = runtime(vec![
            instance("db", 1, Exited, 1),
            instance("db", 0, Exited, 1),
        ]);
        let mut case = Case::new();
        case.back_off.insert("db".into(), "back-off 10s".into());
        let s = case.status(&p, &rt);
        let c = &s.container_statuses.as_ref().unwrap()[0];
        let waiting = c.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
        assert_eq!(c.restart_count, 1);
        assert_eq!(
            c.last_state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .container_id
                .as_deref(),
            Some("containerd://db1")
        );
        assert!(!c.ready);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(
            cond(&s, "Ready").reason.as_deref(),
            Some("ContainersNotReady")
        );
        assert_eq!(
            cond(&s, "Ready").message.as_deref(),
            Some("containers with unready status: [db]")
        );
    }

    #[test]
    fn readiness_gate_holds_pod_not_ready_until_true() {
        let spec = json!({"containers": [{"name": "db"}],
                          "readinessGates": [{"conditionType": "relaunch.dev/ready"}]});
        let rt = runtime(vec![instance("db", 0, Running, 0)]);
        let missing = Case::new().status(&pod(spec.clone(), json!({})), &rt);
        assert_eq!(cond(&missing, "ContainersReady").status, "True");
        assert_eq!(cond(&missing, "Ready").status, "False");
        assert_eq!(
            cond(&missing, "Ready").reason.as_deref(),
            Some("ReadinessGatesNotReady")
        );
        let gate = |v: &str| json!({"conditions": [{"type": "relaunch.dev/ready", "status": v}]});
        let held = Case::new().status(&pod(spec.clone(), gate("False")), &rt);
        assert_eq!(cond(&held, "Ready").status, "False");
        let open = Case::new().status(&pod(spec, gate("True")), &rt);
        assert_eq!(cond(&open, "Ready").status, "True");
    }

    #[test]
    fn a_startup_probe_holds_started_and_ready_until_it_succeeds() {
        let p = pod(
            json!({"containers": [{"name": "db", "startupProbe": {"exec": {"command": ["true"]}}}]}),
            json!({}),
        );
        let rt = runtime(vec![instance("db", 0, Running, 0)]);
        let mut case = Case::new();
        let waiting = &case.status(&p, &rt).container_statuses.unwrap()[0];
        assert_eq!(waiting.started, Some(false));
        assert!(!waiting.ready);
        case.probe_started.insert("db0".into(), true);
        let started = &case.status(&p, &rt).container_statuses.unwrap()[0];
        assert_eq!(started.started, Some(true));
        assert!(started.ready, "no readiness probe: ready once started");
    }

    #[test]
    fn readiness_probe_result_decides_container_ready() {
        let p = pod(
            json!({"containers": [{"name": "db", "readinessProbe": {"exec": {"command": ["true"]}}}]}),
            json!({}),
        );
        let rt = runtime(vec![instance("db", 0, Running, 0)]);
        let mut case = Case::new();
        assert!(!case.status(&p, &rt).container_statuses.unwrap()[0].ready);
        case.probe_ready.insert("db0".into(), true);
        assert!(case.status(&p, &rt).container_statuses.unwrap()[0].ready);
        case.probe_ready.insert("db0".into(), false);
        assert!(!case.status(&p, &rt).container_statuses.unwrap()[0].ready);
    }

    #[test]
    fn phases_follow_restart_policy() {
        let spec = |policy: &str| json!({"restartPolicy": policy, "containers": [{"name": "a"}]});
        let exited = |code| runtime(vec![instance("a", 0, Exited, code)]);
        let phase = |policy: &str, rt: &PodRuntime| {
            Case::new()
                .status(&pod(spec(policy), json!({})), rt)
                .phase
                .unwrap()
        };
        assert_eq!(phase("Always", &runtime(vec![])), "Pending");
        assert_eq!(phase("Always", &exited(0)), "Running");
        assert_eq!(phase("OnFailure", &exited(0)), "Succeeded");
        assert_eq!(phase("OnFailure", &exited(1)), "Running");
        assert_eq!(phase("Never", &exited(1)), "Failed");
        assert_eq!(phase("Never", &exited(0)), "Succeeded");
        // A terminal phase sticks.
        let done = pod(spec("Never"), json!({"phase": "Failed"}));
        assert_eq!(
            Case::new().status(&done, &runtime(vec![])).phase.as_deref(),
            Some("Failed")
        );
    }

    #[test]
    fn init_containers_keep_pod_pending_and_not_initialized() {
        let spec = json!({"initContainers": [{"name": "setup"}, {"name": "proxy", "restartPolicy": "Always"}],
                          "containers": [{"name": "db"}]});
        let p = pod(spec, json!({}));
        let s = Case::new().status(&p, &runtime(vec![instance("setup", 0, Running, 0)]));
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(cond(&s, "Initialized").status, "False");
        assert_eq!(
            cond(&s, "Initialized").message.as_deref(),
            Some("containers with incomplete status: [setup proxy]")
        );
        let db = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            db.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("PodInitializing")
        );
        let rt = runtime(vec![
            instance("setup", 0, Exited, 0),
            instance("proxy", 0, Running, 0),
            instance("db", 0, Running, 0),
        ]);
        let s = Case::new().status(&p, &rt);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Initialized").status, "True");
        assert_eq!(cond(&s, "Ready").status, "True");
        let init = s.init_container_statuses.as_ref().unwrap();
        assert!(init[0].ready, "a completed init container is ready");
        assert!(init[1].ready && init[1].started == Some(true));
    }

    #[test]
    fn patch_is_empty_when_nothing_changed_and_keeps_foreign_conditions() {
        let spec = json!({"containers": [{"name": "db"}],
                          "readinessGates": [{"conditionType": "relaunch.dev/ready"}]});
        let rt = runtime(vec![instance("db", 0, Running, 0)]);
        let mut p = pod(
            spec,
            json!({"conditions": [{"type": "relaunch.dev/ready", "status": "True"}]}),
        );
        let desired = Case::new().status(&p, &rt);
        let patch = status_patch(&p, &desired).expect("first write");
        let conditions = patch["status"]["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 4);
        assert!(conditions.iter().all(|c| c["type"] != "relaunch.dev/ready"));

        // The server merged it: same status again needs no write.
        let mut merged = serde_json::to_value(&desired).unwrap();
        merged["conditions"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "relaunch.dev/ready", "status": "True"}));
        p.status = Some(serde_json::from_value(merged).unwrap());
        let again = Case::new().status(&p, &rt);
        assert_eq!(status_patch(&p, &again), None);
    }

    #[test]
    fn patch_nulls_the_old_state_and_keeps_transition_times_of_unchanged_conditions() {
        let p = pod(json!({"containers": [{"name": "db"}]}), json!({}));
        let running = Case::new().status(&p, &runtime(vec![instance("db", 0, Running, 0)]));
        let mut p2 = p.clone();
        p2.status = Some(running);
        let rt = runtime(vec![instance("db", 0, Exited, 0)]);
        let exited = Case::new().status(&p2, &rt);
        let patch = status_patch(&p2, &exited).unwrap();
        let item = &patch["status"]["containerStatuses"][0];
        assert_eq!(item["name"], "db");
        assert_eq!(item["state"]["running"], Value::Null);
        assert_eq!(item["state"]["terminated"]["exitCode"], 0);
        assert!(patch["status"].get("podIP").is_none());
        let ready_to_start = patch["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "PodReadyToStartContainers");
        assert!(!ready_to_start, "unchanged condition not sent");
    }

    #[test]
    fn removed_container_is_reported_unknown_with_a_counted_restart() {
        let p = pod(json!({"containers": [{"name": "db"}]}), json!({}));
        let running = Case::new().status(&p, &runtime(vec![instance("db", 2, Running, 0)]));
        let mut p2 = p.clone();
        p2.status = Some(running);
        let s = Case::new().status(&p2, &runtime(vec![]));
        let c = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(c.restart_count, 3);
        let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(last.reason.as_deref(), Some("ContainerStatusUnknown"));
        assert_eq!(last.exit_code, 137);
    }

    #[test]
    fn qos_class_from_resources() {
        let with = |res: Value| {
            pod(
                json!({"containers": [{"name": "a", "resources": res}]}),
                json!({}),
            )
        };
        assert_eq!(qos_class(&with(json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&with(json!({"requests": {"cpu": "1"}}))),
            "Burstable"
        );
        assert_eq!(
            qos_class(&with(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))),
            "Guaranteed"
        );
    }
}
