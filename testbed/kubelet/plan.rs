//! What one pod sync must do (the kubelet's `computePodActions`), decided from the pod spec and
//! the runtime alone.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod};

use super::backoff::{BackoffTable, backoff_key};
use super::runtime::{Instance, PodRuntime};
use relaunch_cri::ContainerState;

/// One container instance to create and start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartContainer {
    pub name: String,
    pub init: bool,
    /// The new instance's restartCount; `None` when no earlier instance exists (the shell then
    /// counts the container's log files, as the kubelet does).
    pub restart_count: Option<u32>,
}

/// The actions of one pod sync, in the order the shell performs them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodPlan {
    pub create_sandbox: bool,
    /// Started in this order; a non-restartable init container is always last.
    pub start: Vec<StartContainer>,
    /// Running containers to stop (sidecars of a finished pod, everything of a terminal pod).
    pub kill: Vec<String>,
    /// Older exited instances to remove (the newest exited one stays for `lastState`).
    pub remove: Vec<String>,
    /// Containers held back by crash-loop back-off: name → the kubelet's message.
    pub back_off: BTreeMap<String, String>,
}

/// Whether a container that exited with `exit_code` is restarted under `policy`.
pub fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// The pod's restartPolicy, `Always` when unset.
pub fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

/// A native sidecar: an init container with `restartPolicy: Always`.
pub fn is_sidecar(container: &Container) -> bool {
    container.restart_policy.as_deref() == Some("Always")
}

/// True once the pod's phase is Succeeded or Failed; nothing is started again.
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Decides the next actions for `pod`. Records restarts in `backoff`.
pub fn plan_pod(
    pod: &Pod,
    runtime: &PodRuntime,
    backoff: &mut BackoffTable,
    now: SystemTime,
) -> PodPlan {
    let mut plan = PodPlan {
        remove: older_exited(runtime),
        ..Default::default()
    };
    let Some(spec) = pod.spec.as_ref() else {
        return plan;
    };
    if is_terminal(pod) {
        plan.kill = runtime.running().map(|c| c.id.clone()).collect();
        return plan;
    }
    plan.create_sandbox = runtime.ready_sandbox().is_none();
    let policy = restart_policy(pod);
    let mut restart = |c: &Container, exited: &Instance, init: bool, plan: &mut PodPlan| {
        let key = backoff_key(
            pod.metadata.name.as_deref().unwrap_or_default(),
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.uid.as_deref().unwrap_or_default(),
            &c.name,
            &exited.hash,
        );
        let finished = exited.finished_at.unwrap_or(now);
        match backoff.waiting(&key, finished, now) {
            Some(period) => {
                plan.back_off.insert(
                    c.name.clone(),
                    format!(
                        "back-off {} restarting failed container={} pod={}_{}({})",
                        go_duration(period),
                        c.name,
                        pod.metadata.name.as_deref().unwrap_or_default(),
                        pod.metadata.namespace.as_deref().unwrap_or_default(),
                        pod.metadata.uid.as_deref().unwrap_or_default(),
                    ),
                );
            }
            None => {
                backoff.restarted(&key, finished, now);
                plan.start.push(StartContainer {
                    name: c.name.clone(),
                    init,
                    restart_count: Some(exited.attempt + 1),
                });
            }
        }
    };

    let mut initialized = true;
    let mut init_failed = false;
    for c in spec.init_containers.iter().flatten() {
        let sidecar = is_sidecar(c);
        match runtime.newest(&c.name) {
            None => {
                plan.start.push(StartContainer {
                    name: c.name.clone(),
                    init: true,
                    restart_count: None,
                });
                if !sidecar {
                    initialized = false;
                    break;
                }
            }
            Some(i) if i.state == ContainerState::Exited => {
                if sidecar {
                    restart(c, i, true, &mut plan);
                } else if i.exit_code != 0 {
                    initialized = false;
                    if policy == "Never" {
                        init_failed = true;
                    } else {
                        restart(c, i, true, &mut plan);
                    }
                    break;
                }
            }
            Some(i) if i.state == ContainerState::Running && sidecar => {}
            // Running (or stuck in creation): the next one waits.
            Some(_) => {
                if !sidecar {
                    initialized = false;
                    break;
                }
            }
        }
    }

    let mut finished = !spec.containers.is_empty();
    if initialized {
        for c in &spec.containers {
            match runtime.newest(&c.name) {
                None => {
                    finished = false;
                    plan.start.push(StartContainer {
                        name: c.name.clone(),
                        init: false,
                        restart_count: None,
                    });
                }
                Some(i) if i.state == ContainerState::Exited => {
                    if should_restart(policy, i.exit_code) {
                        finished = false;
                        restart(c, i, false, &mut plan);
                    }
                }
                Some(_) => finished = false,
            }
        }
    } else {
        finished = false;
    }
    if finished || init_failed {
        // Nothing regular will run again: the kubelet stops the sidecars and starts nothing.
        let sidecars: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| is_sidecar(c))
            .map(|c| c.name.as_str())
            .collect();
        plan.start.retain(|s| !sidecars.contains(&s.name.as_str()));
        plan.back_off
            .retain(|name, _| !sidecars.contains(&name.as_str()));
        plan.kill = runtime
            .running()
            .filter(|c| sidecars.contains(&c.name.as_str()))
            .map(|c| c.id.clone())
            .collect();
    }
    plan
}

/// Exited instances older than the newest exited instance of the same container.
fn older_exited(runtime: &PodRuntime) -> Vec<String> {
    let mut kept: Vec<&str> = Vec::new();
    let mut remove = Vec::new();
    for c in &runtime.containers {
        if c.state != ContainerState::Exited {
            continue;
        }
        if kept.contains(&c.name.as_str()) {
            remove.push(c.id.clone());
        } else {
            kept.push(&c.name);
        }
    }
    remove
}

/// The restartCount of a container with no runtime instance, from its log files `<n>.log`
/// (the kubelet's `calcRestartCountByLogDir`): one more than the highest, else 0.
pub fn restart_count_from_logs<'a>(file_names: impl IntoIterator<Item = &'a str>) -> u32 {
    file_names
        .into_iter()
        .filter_map(|n| n.strip_suffix(".log")?.parse::<u32>().ok())
        .max()
        .map_or(0, |n| n + 1)
}

/// A duration as Go prints it (`10s`, `1m20s`, `5m0s`), for messages that match the kubelet's.
pub fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let millis = d.subsec_millis();
    if secs == 0 && millis > 0 {
        return format!("{millis}ms");
    }
    let frac = if millis > 0 {
        format!(".{millis:03}").trim_end_matches('0').to_string()
    } else {
        String::new()
    };
    match (secs / 3600, (secs % 3600) / 60, secs % 60) {
        (0, 0, s) => format!("{s}{frac}s"),
        (0, m, s) => format!("{m}m{s}{frac}s"),
        (h, m, s) => format!("{h}h{m}m{s}{frac}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::backoff::CrashLoopBackoff;
    use crate::kubelet::runtime::Sandbox;
    use serde_json::json;
    use std::time::UNIX_EPOCH;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "db-0", "namespace": "default", "uid": "u1"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn sandbox() -> Sandbox {
        Sandbox {
            id: "sb".into(),
            pod_uid: "u1".into(),
            ready: true,
            created_at: Some(at(0)),
        }
    }

    fn instance(name: &str, attempt: u32, state: ContainerState, exit_code: i32) -> Instance {
        Instance {
            id: format!("{name}-{attempt}"),
            sandbox_id: "sb".into(),
            pod_uid: "u1".into(),
            name: name.into(),
            attempt,
            state,
            created_at: Some(at(u64::from(attempt))),
            started_at: Some(at(u64::from(attempt))),
            finished_at: (state == ContainerState::Exited).then(|| at(u64::from(attempt) + 1)),
            exit_code,
            reason: String::new(),
            hash: "h".into(),
            image_ref: "sha256:x".into(),
        }
    }

    fn runtime(mut containers: Vec<Instance>) -> PodRuntime {
        containers.sort_by_key(|c| std::cmp::Reverse(c.attempt));
        PodRuntime {
            sandboxes: vec![sandbox()],
            containers,
        }
    }

    fn table() -> BackoffTable {
        BackoffTable::new(CrashLoopBackoff::default())
    }

    fn names(plan: &PodPlan) -> Vec<&str> {
        plan.start.iter().map(|s| s.name.as_str()).collect()
    }

    use ContainerState::{Exited, Running};

    #[test]
    fn new_pod_gets_a_sandbox_and_all_regular_containers() {
        let p = pod(json!({"containers": [{"name": "db"}, {"name": "metrics"}]}));
        let plan = plan_pod(&p, &PodRuntime::default(), &mut table(), at(0));
        assert!(plan.create_sandbox);
        assert_eq!(names(&plan), ["db", "metrics"]);
        assert_eq!(plan.start[0].restart_count, None);
    }

    #[test]
    fn init_containers_run_one_at_a_time_and_sidecars_start_then_next_proceeds() {
        let p = pod(json!({
            "initContainers": [
                {"name": "setup"},
                {"name": "proxy", "restartPolicy": "Always"},
                {"name": "migrate"},
            ],
            "containers": [{"name": "db"}],
        }));
        let mut t = table();
        let plan = plan_pod(&p, &runtime(vec![]), &mut t, at(0));
        assert_eq!(names(&plan), ["setup"]);

        let rt = runtime(vec![instance("setup", 0, Running, 0)]);
        assert!(plan_pod(&p, &rt, &mut t, at(0)).start.is_empty());

        let rt = runtime(vec![instance("setup", 0, Exited, 0)]);
        assert_eq!(
            names(&plan_pod(&p, &rt, &mut t, at(0))),
            ["proxy", "migrate"]
        );

        let rt = runtime(vec![
            instance("setup", 0, Exited, 0),
            instance("proxy", 0, Running, 0),
            instance("migrate", 0, Exited, 0),
        ]);
        assert_eq!(names(&plan_pod(&p, &rt, &mut t, at(0))), ["db"]);
    }

    #[test]
    fn failed_init_container_is_retried_unless_policy_never() {
        let spec = |policy: &str| {
            pod(
                json!({"restartPolicy": policy, "initContainers": [{"name": "setup"}],
                       "containers": [{"name": "db"}]}),
            )
        };
        let rt = runtime(vec![instance("setup", 0, Exited, 1)]);
        let plan = plan_pod(&spec("Always"), &rt, &mut table(), at(5));
        assert_eq!(names(&plan), ["setup"]);
        assert_eq!(plan.start[0].restart_count, Some(1));
        let plan = plan_pod(&spec("Never"), &rt, &mut table(), at(5));
        assert!(plan.start.is_empty());
    }

    #[test]
    fn restart_policy_decides_which_exits_restart() {
        for (policy, exit_code, restarts) in [
            ("Always", 0, true),
            ("Always", 1, true),
            ("OnFailure", 0, false),
            ("OnFailure", 137, true),
            ("Never", 1, false),
            ("Never", 0, false),
        ] {
            let p = pod(json!({"restartPolicy": policy, "containers": [{"name": "db"}]}));
            let rt = runtime(vec![instance("db", 2, Exited, exit_code)]);
            let plan = plan_pod(&p, &rt, &mut table(), at(10));
            assert_eq!(
                !plan.start.is_empty(),
                restarts,
                "{policy} exit {exit_code}"
            );
            if restarts {
                assert_eq!(plan.start[0].restart_count, Some(3));
            }
        }
    }

    #[test]
    fn second_crash_within_window_backs_off_then_restarts() {
        let p = pod(json!({"containers": [{"name": "db"}]}));
        let mut t = table();
        // First exit (finished at 1): immediate restart.
        let rt = runtime(vec![instance("db", 0, Exited, 1)]);
        assert_eq!(names(&plan_pod(&p, &rt, &mut t, at(1))), ["db"]);
        // Second exit (finished at 2): wait 10 s.
        let rt = runtime(vec![
            instance("db", 0, Exited, 1),
            instance("db", 1, Exited, 1),
        ]);
        let plan = plan_pod(&p, &rt, &mut t, at(3));
        assert!(plan.start.is_empty());
        assert_eq!(
            plan.back_off["db"],
            "back-off 10s restarting failed container=db pod=db-0_default(u1)"
        );
        assert_eq!(plan.remove, ["db-0"], "the older exited instance goes");
        let plan = plan_pod(&p, &rt, &mut t, at(12));
        assert_eq!(names(&plan), ["db"]);
        assert_eq!(plan.start[0].restart_count, Some(2));
    }

    #[test]
    fn keeps_the_newest_exited_instance_and_the_running_one() {
        let rt = runtime(vec![
            instance("db", 3, Running, 0),
            instance("db", 2, Exited, 0),
            instance("db", 1, Exited, 0),
            instance("db", 0, Exited, 0),
            instance("metrics", 0, Exited, 0),
        ]);
        assert_eq!(older_exited(&rt), ["db-1", "db-0"]);
    }

    #[test]
    fn finished_pod_stops_its_sidecars_and_terminal_pod_stops_everything() {
        let p = pod(json!({"restartPolicy": "OnFailure",
            "initContainers": [{"name": "proxy", "restartPolicy": "Always"}],
            "containers": [{"name": "job"}]}));
        let rt = runtime(vec![
            instance("proxy", 0, Running, 0),
            instance("job", 0, Exited, 0),
        ]);
        let plan = plan_pod(&p, &rt, &mut table(), at(5));
        assert_eq!(plan.kill, ["proxy-0"]);
        assert!(plan.start.is_empty());

        let mut done = pod(json!({"containers": [{"name": "db"}]}));
        done.status = Some(serde_json::from_value(json!({"phase": "Failed"})).unwrap());
        let rt = runtime(vec![instance("db", 0, Running, 0)]);
        let plan = plan_pod(&done, &rt, &mut table(), at(5));
        assert_eq!(plan.kill, ["db-0"]);
        assert!(plan.start.is_empty() && !plan.create_sandbox);
    }

    #[test]
    fn exited_sidecar_restarts_even_under_never() {
        let p = pod(json!({"restartPolicy": "Never",
            "initContainers": [{"name": "proxy", "restartPolicy": "Always"}],
            "containers": [{"name": "db"}]}));
        let rt = runtime(vec![
            instance("proxy", 0, Exited, 0),
            instance("db", 0, Running, 0),
        ]);
        assert_eq!(names(&plan_pod(&p, &rt, &mut table(), at(5))), ["proxy"]);
    }

    #[test]
    fn restart_count_comes_from_log_files_when_no_instance_is_left() {
        assert_eq!(restart_count_from_logs([]), 0);
        assert_eq!(
            restart_count_from_logs(["0.log", "3.log", "x.log", "2.log.gz"]),
            4
        );
    }

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_secs(80)), "1m20s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
    }
}
