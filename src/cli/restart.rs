//! `kubectl relaunch restart pod/NAME`: one ContainerRecreateRequest, checked against the pod
//! before it is created, and followed until it ends with `--wait`.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use kube::api::{Api, PostParams};

use super::error::CliError;
use super::parse;
use super::progress::{seconds, short_id};
use super::session::{Call, PODS, REQUESTS, Session};
use super::wait::{View, follow};
use relaunch_api::containers::RecreatableContainers;
use relaunch_api::validation::validate_request;
use relaunch_api::{
    ContainerRecreatePhase, ContainerRecreateRequest, ContainerRecreateRequestStrategy,
    ContainerRecreateState, ExecAction, RecreatePhase, ShutdownAction,
};

/// After this long without any status, the wait says the coordinator may not be running.
const NO_STATUS_HINT_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, clap::Args)]
pub struct RestartArgs {
    /// The pod: pod/NAME (or just NAME).
    #[arg(value_name = "pod/NAME")]
    pub pod: String,
    /// A container to restart; repeat for several (default: all regular containers of the pod).
    #[arg(short = 'c', long = "container", value_name = "CONTAINER")]
    pub containers: Vec<String>,
    /// Graceful shutdown command, run as `sh -c CMD` in each restarted container instead of its
    /// preStop hook (the image needs a shell), e.g. "clickhouse-client -q 'SYSTEM SHUTDOWN'".
    #[arg(long, value_name = "CMD")]
    pub shutdown_exec: Option<String>,
    /// Time for the shutdown command plus the stop, then SIGKILL (e.g. 30s, 2m; default: the
    /// pod's terminationGracePeriodSeconds).
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    pub grace: Option<Duration>,
    /// Hold the pod NotReady this long before the shutdown, so traffic drains (needs the
    /// relaunch.dev/ready readiness gate on the pod).
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    pub unready_grace: Option<Duration>,
    /// Wait and show progress until the restart ends; exit 0 only if it succeeded.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: stop waiting after this long (the restart goes on), exit non-zero.
    #[arg(long, value_name = "DURATION", value_parser = parse::duration, requires = "wait")]
    pub timeout: Option<Duration>,
}

/// What to ask for, in API terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestartOptions {
    /// Empty: all regular containers.
    pub containers: Vec<String>,
    pub shutdown_exec: Option<String>,
    pub grace_seconds: Option<i64>,
    pub unready_grace_seconds: Option<i64>,
}

impl RestartArgs {
    fn options(&self) -> Result<RestartOptions, CliError> {
        let seconds = |flag: &str, d: Option<Duration>| {
            d.map(|d| parse::whole_seconds(flag, d))
                .transpose()
                .map_err(CliError::Usage)
        };
        if self
            .shutdown_exec
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            return Err(CliError::Usage("--shutdown-exec is empty".into()));
        }
        Ok(RestartOptions {
            containers: self.containers.clone(),
            shutdown_exec: self.shutdown_exec.clone(),
            grace_seconds: seconds("--grace", self.grace)?,
            unready_grace_seconds: seconds("--unready-grace", self.unready_grace)?,
        })
    }
}

/// The request for `pod`, labelled with its node and UID so the agent sees it at once; refused
/// with what to fix when it could not work (the checks the coordinator's admission makes).
pub fn recreate_request(
    pod: &Pod,
    namespace: &str,
    options: &RestartOptions,
) -> Result<ContainerRecreateRequest, CliError> {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let no_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&no_spec);
    let mut wanted: Vec<String> = Vec::new();
    if options.containers.is_empty() {
        wanted = RecreatableContainers::of(spec)
            .default_names()
            .into_iter()
            .map(String::from)
            .collect();
    } else {
        for name in &options.containers {
            if !wanted.contains(name) {
                wanted.push(name.clone());
            }
        }
    }
    let shutdown = options
        .shutdown_exec
        .as_ref()
        .map(|command| ShutdownAction {
            exec: Some(ExecAction {
                command: vec!["sh".into(), "-c".into(), command.clone()],
            }),
            http_get: None,
        });
    let strategy = (options.grace_seconds.is_some() || options.unready_grace_seconds.is_some())
        .then(|| ContainerRecreateRequestStrategy {
            termination_grace_period_seconds: options.grace_seconds,
            unready_grace_period_seconds: options.unready_grace_seconds,
            ..ContainerRecreateRequestStrategy::default()
        });
    let request = wanted
        .into_iter()
        .fold(
            ContainerRecreateRequest::for_pod(pod)
                .namespace(namespace)
                .generate_name(format!("{pod_name}-"))
                .strategy(strategy),
            |request, name| request.container(name, shutdown.clone()),
        )
        .build();
    validate_request(&request, Some(pod))?;
    Ok(request)
}

/// Runs the command.
pub async fn run(session: &Session, args: &RestartArgs) -> Result<(), CliError> {
    let pod_name = parse::pod(&args.pod).map_err(CliError::Usage)?;
    let options = args.options()?;
    let ns = session.namespace.as_str();
    let pods: Api<Pod> = Api::namespaced(session.client.clone(), ns);
    let pod = session
        .call(Call::get(PODS, &pod_name, ns), pods.get(&pod_name))
        .await?;
    let request = recreate_request(&pod, ns, &options)?;
    let requests: Api<ContainerRecreateRequest> = Api::namespaced(session.client.clone(), ns);
    let created = session
        .call(
            Call::create(REQUESTS, ns),
            requests.create(&PostParams::default(), &request),
        )
        .await?;
    let name = created.metadata.name.clone().unwrap_or_default();
    println!("containerrecreaterequest.relaunch.dev/{name} created");
    if !args.wait {
        return Ok(());
    }
    let containers: Vec<String> = created
        .spec
        .containers
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let summary = follow(session, REQUESTS, &name, args.timeout, |crr, waited| {
        request_view(&name, crr, &containers, waited)
    })
    .await?;
    println!("{summary}");
    Ok(())
}

/// The progress of request `name` (None: not seen yet) for `containers`, and its end.
pub fn request_view(
    name: &str,
    crr: Option<&ContainerRecreateRequest>,
    containers: &[String],
    waited: Duration,
) -> View<String> {
    let status = crr.and_then(|c| c.status.clone());
    let mut frame = Vec::new();
    let headline = match &status {
        None if waited >= NO_STATUS_HINT_AFTER => format!(
            "{name}: no status after {}: is the relaunch coordinator running?",
            seconds(waited)
        ),
        None => format!("{name}: waiting for the relaunch coordinator to admit it"),
        Some(s) => match &s.message {
            Some(m) if !m.is_empty() && !s.phase.is_finished() => {
                format!("{name}: {} ({m})", s.phase.as_str())
            }
            _ => format!("{name}: {}", s.phase.as_str()),
        },
    };
    frame.push(headline);
    let states = status
        .as_ref()
        .map(|s| s.container_recreate_states.as_slice())
        .unwrap_or_default();
    let width = containers.iter().map(String::len).max().unwrap_or(0);
    for container in containers {
        let state = states.iter().find(|s| &s.name == container);
        let (phase, detail) = match state {
            Some(state) => (format!("{:?}", state.phase), container_detail(state)),
            None => ("Pending".to_string(), String::new()),
        };
        frame.push(
            format!("{container:<width$}  {phase:<17} {detail}")
                .trim_end()
                .to_string(),
        );
    }
    let end = status.as_ref().filter(|s| s.phase.is_finished()).map(|s| {
        if s.phase == RecreatePhase::Succeeded {
            let restarted: Vec<String> = states
                .iter()
                .map(|st| match st.restart_count {
                    Some(n) => format!("{} (restart count {n})", st.name),
                    None => st.name.clone(),
                })
                .collect();
            Ok(format!(
                "containerrecreaterequest.relaunch.dev/{name} succeeded in {}: restarted in place: {}",
                seconds(waited),
                restarted.join(", ")
            ))
        } else {
            Err(CliError::Failed(format!(
                "containerrecreaterequest {name} failed: {}",
                failure_message(s.message.as_deref(), states)
            )))
        }
    });
    View { frame, end }
}

fn container_detail(state: &ContainerRecreateState) -> String {
    let previous = state.previous_container_id.as_deref().map(short_id);
    let new = state.new_container_id.as_deref().map(short_id);
    let detail = match state.phase {
        ContainerRecreatePhase::Pending => String::new(),
        ContainerRecreatePhase::Unready => "pod held NotReady so traffic drains".into(),
        ContainerRecreatePhase::ShuttingDown => "graceful shutdown running".into(),
        ContainerRecreatePhase::Stopping => match previous {
            Some(id) => format!("stopping container {id}"),
            None => "stopping the container".into(),
        },
        ContainerRecreatePhase::WaitingForRestart => {
            "waiting for the kubelet to start it again".into()
        }
        ContainerRecreatePhase::WaitingForReady => match new {
            Some(id) => format!("new container {id}, waiting until ready"),
            None => "waiting until ready".into(),
        },
        ContainerRecreatePhase::Succeeded => match (previous, new) {
            (Some(p), Some(n)) => format!("restarted in place: {p} -> {n}"),
            _ => "restarted in place".into(),
        },
        ContainerRecreatePhase::Failed => String::new(),
        ContainerRecreatePhase::Unknown => {
            "in a step this version of kubectl-relaunch does not know".into()
        }
    };
    match (&state.message, detail.is_empty()) {
        (Some(m), true) if !m.is_empty() => m.clone(),
        (Some(m), false) if !m.is_empty() => format!("{detail} ({m})"),
        _ => detail,
    }
}

fn failure_message(message: Option<&str>, states: &[ContainerRecreateState]) -> String {
    if let Some(m) = message.filter(|m| !m.is_empty()) {
        return m.to_string();
    }
    let failed: Vec<String> = states
        .iter()
        .filter(|s| s.phase == ContainerRecreatePhase::Failed)
        .map(|s| match &s.message {
            Some(m) => format!("{}: {m}", s.name),
            None => s.name.clone(),
        })
        .collect();
    if failed.is_empty() {
        "no reason given".into()
    } else {
        failed.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaunch_api::{
        ContainerRecreateRequestSpec, ContainerRecreateRequestStatus, LABEL_NODE_NAME,
        LABEL_POD_UID,
    };
    use serde_json::json;

    fn pod(node: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "db-0", "namespace": "data", "uid": "u-1"},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "db"}, {"name": "exporter"}],
                "initContainers": [
                    {"name": "init"},
                    {"name": "proxy", "restartPolicy": "Always"},
                ],
            },
            "status": {"phase": "Running"},
        }))
        .unwrap()
    }

    #[test]
    fn request_is_labelled_for_the_agent_and_defaults_to_all_regular_containers() {
        let request =
            recreate_request(&pod(Some("node-1")), "data", &RestartOptions::default()).unwrap();
        let labels = request.metadata.labels.clone().unwrap();
        assert_eq!(labels[LABEL_NODE_NAME], "node-1");
        assert_eq!(labels[LABEL_POD_UID], "u-1");
        assert_eq!(request.metadata.generate_name.as_deref(), Some("db-0-"));
        assert_eq!(request.metadata.namespace.as_deref(), Some("data"));
        assert_eq!(request.spec.pod_name, "db-0");
        let names: Vec<&str> = request
            .spec
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["db", "exporter"]);
        assert_eq!(request.spec.strategy, None);
    }

    #[test]
    fn shutdown_command_runs_through_a_shell_and_durations_fill_the_strategy() {
        let options = RestartOptions {
            containers: vec!["proxy".into(), "db".into(), "db".into()],
            shutdown_exec: Some("pg_ctl stop -m fast".into()),
            grace_seconds: Some(90),
            unready_grace_seconds: Some(5),
        };
        let request = recreate_request(&pod(Some("node-1")), "data", &options).unwrap();
        let names: Vec<&str> = request
            .spec
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["proxy", "db"],
            "native sidecars allowed, duplicates dropped"
        );
        let command = &request.spec.containers[0]
            .shutdown
            .as_ref()
            .unwrap()
            .exec
            .as_ref()
            .unwrap()
            .command;
        assert_eq!(command, &["sh", "-c", "pg_ctl stop -m fast"]);
        let strategy = request.spec.strategy.unwrap();
        assert_eq!(strategy.termination_grace_period_seconds, Some(90));
        assert_eq!(strategy.unready_grace_period_seconds, Some(5));
    }

    #[test]
    fn unknown_containers_are_refused_listing_the_pods_containers() {
        let options = RestartOptions {
            containers: vec!["web".into(), "init".into()],
            ..RestartOptions::default()
        };
        let error = recreate_request(&pod(Some("node-1")), "data", &options)
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "pod db-0 has no containers web, init (its containers: db, exporter, proxy)"
        );
    }

    #[test]
    fn unscheduled_and_not_running_pods_are_refused() {
        let error = recreate_request(&pod(None), "data", &RestartOptions::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("not scheduled"), "{error}");
        let mut pending = pod(Some("node-1"));
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        let error = recreate_request(&pending, "data", &RestartOptions::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("not Running"), "{error}");
    }

    fn request_with(status: Option<ContainerRecreateRequestStatus>) -> ContainerRecreateRequest {
        let mut crr =
            ContainerRecreateRequest::new("db-0-x", ContainerRecreateRequestSpec::default());
        crr.status = status;
        crr
    }

    #[test]
    fn progress_shows_each_container_and_ends_with_the_outcome() {
        let containers = vec!["db".to_string(), "exporter".to_string()];
        let view = request_view(
            "db-0-x",
            Some(&request_with(None)),
            &containers,
            Duration::ZERO,
        );
        assert!(view.end.is_none());
        assert_eq!(view.frame.len(), 3);
        assert!(view.frame[0].contains("waiting for the relaunch coordinator"));
        let late = request_view(
            "db-0-x",
            Some(&request_with(None)),
            &containers,
            Duration::from_secs(11),
        );
        assert!(late.frame[0].contains("is the relaunch coordinator running?"));

        let running: ContainerRecreateRequestStatus = serde_json::from_value(json!({
            "phase": "Recreating",
            "containerRecreateStates": [
                {"name": "db", "phase": "Stopping", "previousContainerId": "containerd://aaaaaaaaaaaaaaaaaa"},
            ],
        }))
        .unwrap();
        let view = request_view(
            "db-0-x",
            Some(&request_with(Some(running))),
            &containers,
            Duration::ZERO,
        );
        assert!(view.end.is_none());
        assert_eq!(view.frame[0], "db-0-x: Recreating");
        assert_eq!(
            view.frame[1],
            "db        Stopping          stopping container aaaaaaaaaaaaa"
        );
        assert_eq!(view.frame[2], "exporter  Pending");

        let done: ContainerRecreateRequestStatus = serde_json::from_value(json!({
            "phase": "Succeeded",
            "containerRecreateStates": [
                {"name": "db", "phase": "Succeeded", "restartCount": 3},
            ],
        }))
        .unwrap();
        let view = request_view(
            "db-0-x",
            Some(&request_with(Some(done))),
            &containers[..1],
            Duration::from_secs(2),
        );
        let summary = view.end.unwrap().unwrap();
        assert!(
            summary.contains("succeeded") && summary.contains("db (restart count 3)"),
            "{summary}"
        );

        let failed: ContainerRecreateRequestStatus = serde_json::from_value(json!({
            "phase": "Failed",
            "containerRecreateStates": [
                {"name": "db", "phase": "Failed", "message": "shutdown command exited 1"},
            ],
        }))
        .unwrap();
        let view = request_view(
            "db-0-x",
            Some(&request_with(Some(failed))),
            &containers[..1],
            Duration::ZERO,
        );
        let error = view.end.unwrap().unwrap_err().to_string();
        assert_eq!(
            error,
            "containerrecreaterequest db-0-x failed: db: shutdown command exited 1"
        );
    }
}
