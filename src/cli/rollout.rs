//! `kubectl relaunch rollout KIND/NAME`: one RollingRestart for a workload that exists, checked
//! like the coordinator checks it, and followed with a progress bar with `--wait`.

use std::fmt::Debug;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use serde::de::DeserializeOwned;

use super::error::CliError;
use super::parse;
use super::progress::{bar, seconds};
use super::session::{
    Call, DAEMONSETS, DEPLOYMENTS, REPLICASETS, ROLLOUTS, ResourceKind, STATEFULSETS, Session,
};
use super::wait::{View, follow};
use relaunch_api::containers::RecreatableContainers;
use relaunch_api::validation::validate_rollout;
use relaunch_api::{
    CONDITION_BLOCKED, ContainerRecreateRequestStrategy, ContainerShutdown, ExecAction,
    RollingRestart, RollingRestartSpec, RolloutOrder, RolloutPhase, RolloutStrategy, RolloutTarget,
    ShutdownAction, WorkloadKind, WorkloadRef,
};

/// After this long without any status, the wait says the coordinator may not be running.
const NO_STATUS_HINT_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, clap::Args)]
pub struct RolloutArgs {
    /// The workload: sts/NAME, deploy/NAME, ds/NAME or rs/NAME (long forms work too).
    #[arg(value_name = "KIND/NAME")]
    pub workload: String,
    /// Most pods restarting (or otherwise unavailable) at once: a count or a percentage of the
    /// pods, e.g. 2 or 25% (default 1).
    #[arg(long, value_name = "N|P%")]
    pub max_unavailable: Option<String>,
    /// Order: ordinal (highest first, the StatefulSet convention; the default), ordinal-asc, or
    /// role=KEY:FIRST1,FIRST2:LAST1,LAST2 to go by a pod label (e.g. role=role:replica:primary,master).
    /// Give it twice to combine a role order with an ordinal direction.
    #[arg(long, value_name = "ORDER")]
    pub order: Vec<String>,
    /// StatefulSets only: leave pods with an ordinal below N alone.
    #[arg(long, value_name = "N")]
    pub partition: Option<u32>,
    /// Containers to restart in each pod, comma-separated (default: all regular containers).
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub containers: Vec<String>,
    /// Graceful shutdown command, run as `sh -c CMD` in each restarted container instead of its
    /// preStop hook (the image needs a shell).
    #[arg(long, value_name = "CMD")]
    pub shutdown_exec: Option<String>,
    /// Time for each container's shutdown command plus stop, then SIGKILL (e.g. 30s, 2m; default:
    /// the pod's terminationGracePeriodSeconds).
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    pub grace: Option<Duration>,
    /// Hold each pod NotReady this long before its shutdown, so traffic drains (needs the
    /// relaunch.dev/ready readiness gate).
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    pub unready_grace: Option<Duration>,
    /// Wait and show progress until the rollout ends; exit 0 only if it succeeded (non-zero
    /// also when it pauses).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: stop waiting after this long (the rollout goes on), exit non-zero.
    #[arg(long, value_name = "DURATION", value_parser = parse::duration, requires = "wait")]
    pub timeout: Option<Duration>,
}

/// The rollout asked for, in API terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RolloutOptions {
    pub max_unavailable: Option<IntOrString>,
    pub order: Option<RolloutOrder>,
    pub partition: Option<i32>,
    /// Empty: all regular containers.
    pub containers: Vec<String>,
    pub shutdown_exec: Option<String>,
    pub grace_seconds: Option<i64>,
    pub unready_grace_seconds: Option<i64>,
}

impl RolloutArgs {
    fn options(&self) -> Result<RolloutOptions, CliError> {
        let usage = CliError::Usage;
        let seconds = |flag: &str, d: Option<Duration>| {
            d.map(|d| parse::whole_seconds(flag, d))
                .transpose()
                .map_err(usage)
        };
        if self
            .shutdown_exec
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            return Err(usage("--shutdown-exec is empty".into()));
        }
        let mut containers: Vec<String> = Vec::new();
        for name in self.containers.iter().map(|c| c.trim()) {
            if name.is_empty() {
                return Err(usage(
                    "--containers has an empty name; use e.g. --containers db,exporter".into(),
                ));
            }
            if !containers.iter().any(|c| c == name) {
                containers.push(name.to_string());
            }
        }
        let partition = self
            .partition
            .map(|p| i32::try_from(p).map_err(|_| usage(format!("--partition {p} is too large"))))
            .transpose()?;
        Ok(RolloutOptions {
            max_unavailable: self
                .max_unavailable
                .as_deref()
                .map(parse::max_unavailable)
                .transpose()
                .map_err(usage)?,
            order: parse::order(&self.order).map_err(usage)?,
            partition,
            containers,
            shutdown_exec: self.shutdown_exec.clone(),
            grace_seconds: seconds("--grace", self.grace)?,
            unready_grace_seconds: seconds("--unready-grace", self.unready_grace)?,
        })
    }
}

/// The RollingRestart for workload `name` whose pods look like `template`; refused with what to
/// fix when the coordinator would refuse it.
pub fn rolling_restart(
    kind: WorkloadKind,
    name: &str,
    template: &PodSpec,
    namespace: &str,
    options: &RolloutOptions,
) -> Result<RollingRestart, CliError> {
    if options.partition.is_some() && kind != WorkloadKind::StatefulSet {
        return Err(CliError::Usage(format!(
            "--partition applies to StatefulSets only, not to a {}",
            kind.as_str()
        )));
    }
    let recreatable = RecreatableContainers::of(template);
    let unknown: Vec<&str> = options
        .containers
        .iter()
        .filter(|c| !recreatable.contains(c))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(CliError::Invalid(format!(
            "the pods of {} {name} have no container {} (their containers: {})",
            kind.singular(),
            unknown.join(", "),
            recreatable.names().join(", ")
        )));
    }
    let shutdown = match &options.shutdown_exec {
        None => Vec::new(),
        Some(command) => {
            let targets: Vec<String> = if options.containers.is_empty() {
                recreatable
                    .default_names()
                    .into_iter()
                    .map(String::from)
                    .collect()
            } else {
                options.containers.clone()
            };
            targets
                .into_iter()
                .map(|container| ContainerShutdown {
                    container,
                    action: ShutdownAction {
                        exec: Some(ExecAction {
                            command: vec!["sh".into(), "-c".into(), command.clone()],
                        }),
                        http_get: None,
                    },
                })
                .collect()
        }
    };
    let recreate_strategy = (options.grace_seconds.is_some()
        || options.unready_grace_seconds.is_some())
    .then(|| ContainerRecreateRequestStrategy {
        termination_grace_period_seconds: options.grace_seconds,
        unready_grace_period_seconds: options.unready_grace_seconds,
        ..ContainerRecreateRequestStrategy::default()
    });
    let spec = RollingRestartSpec {
        target: RolloutTarget {
            workload_ref: Some(WorkloadRef {
                kind: kind.clone(),
                name: name.into(),
            }),
            selector: None,
        },
        containers: options.containers.clone(),
        shutdown,
        recreate_strategy,
        active_deadline_seconds: None,
        strategy: RolloutStrategy {
            max_unavailable: options.max_unavailable.clone(),
            partition: options.partition,
            order: options.order.clone(),
            ..RolloutStrategy::default()
        },
        abort: false,
    };
    validate_rollout(&spec)?;
    Ok(RollingRestart {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-restart-")),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    })
}

/// Runs the command.
pub async fn run(session: &Session, args: &RolloutArgs) -> Result<(), CliError> {
    let (kind, name) = parse::workload(&args.workload).map_err(CliError::Usage)?;
    let options = args.options()?;
    let template = pod_template(session, &kind, &name).await?;
    let rollout = rolling_restart(kind.clone(), &name, &template, &session.namespace, &options)?;
    let ns = session.namespace.as_str();
    let rollouts: Api<RollingRestart> = Api::namespaced(session.client.clone(), ns);
    let existing = session
        .call(
            Call::list(ROLLOUTS, Some(ns)),
            rollouts.list(&ListParams::default()),
        )
        .await?;
    if let Some(other) = unfinished_rollout_of(&existing.items, kind.clone(), &name) {
        let other = other.metadata.name.as_deref().unwrap_or_default();
        return Err(CliError::Invalid(format!(
            "rollingrestart {other} is still restarting {} {name}; wait for it to finish, or stop it first: kubectl relaunch abort {other} -n {ns}",
            kind.singular()
        )));
    }
    let created = session
        .call(
            Call::create(ROLLOUTS, ns),
            rollouts.create(&PostParams::default(), &rollout),
        )
        .await?;
    let rollout_name = created.metadata.name.clone().unwrap_or_default();
    println!("rollingrestart.relaunch.dev/{rollout_name} created");
    if !args.wait {
        return Ok(());
    }
    let summary = follow(
        session,
        ROLLOUTS,
        &rollout_name,
        args.timeout,
        |rr, waited| rollout_view(&rollout_name, ns, rr, waited),
    )
    .await?;
    println!("{summary}");
    Ok(())
}

/// A rollout of the same workload that has not finished: a second one would restart its pods
/// twice.
pub fn unfinished_rollout_of<'a>(
    rollouts: &'a [RollingRestart],
    kind: WorkloadKind,
    name: &str,
) -> Option<&'a RollingRestart> {
    rollouts.iter().find(|r| {
        let same = r
            .spec
            .target
            .workload_ref
            .as_ref()
            .is_some_and(|w| w.kind == kind && w.name == name);
        let finished = r
            .status
            .as_ref()
            .is_some_and(|s| matches!(s.phase, RolloutPhase::Succeeded | RolloutPhase::Failed));
        same && !finished
    })
}

/// The pod template of the workload; a clear error when it does not exist.
async fn pod_template(
    session: &Session,
    kind: &WorkloadKind,
    name: &str,
) -> Result<PodSpec, CliError> {
    let template = match kind {
        WorkloadKind::StatefulSet => {
            fetch::<StatefulSet>(session, STATEFULSETS, name, |w| w.spec.map(|s| s.template))
                .await?
        }
        WorkloadKind::Deployment => {
            fetch::<Deployment>(session, DEPLOYMENTS, name, |w| w.spec.map(|s| s.template)).await?
        }
        WorkloadKind::DaemonSet => {
            fetch::<DaemonSet>(session, DAEMONSETS, name, |w| w.spec.map(|s| s.template)).await?
        }
        WorkloadKind::ReplicaSet => {
            fetch::<ReplicaSet>(session, REPLICASETS, name, |w| {
                w.spec.and_then(|s| s.template)
            })
            .await?
        }
        // The command line only names the kinds above.
        WorkloadKind::Unknown(kind) => {
            return Err(CliError::Usage(format!(
                "{kind:?} is not a workload kind relaunch can roll out"
            )));
        }
    };
    Ok(template.and_then(|t| t.spec).unwrap_or_default())
}

async fn fetch<K>(
    session: &Session,
    resource: ResourceKind,
    name: &str,
    template: impl FnOnce(K) -> Option<k8s_openapi::api::core::v1::PodTemplateSpec>,
) -> Result<Option<k8s_openapi::api::core::v1::PodTemplateSpec>, CliError>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(session.client.clone(), &session.namespace);
    let workload = session
        .call(Call::get(resource, name, &session.namespace), api.get(name))
        .await?;
    Ok(template(workload))
}

/// The progress of rollout `name` (None: not seen yet), and its end.
pub fn rollout_view(
    name: &str,
    namespace: &str,
    rollout: Option<&RollingRestart>,
    waited: Duration,
) -> View<String> {
    let Some(status) = rollout.and_then(|r| r.status.clone()) else {
        let line = if waited >= NO_STATUS_HINT_AFTER {
            format!(
                "{name}: no status after {}: is the relaunch coordinator running?",
                seconds(waited)
            )
        } else {
            format!("{name}: waiting for the relaunch coordinator to start it")
        };
        return View {
            frame: vec![line],
            end: None,
        };
    };
    let mut line = format!(
        "{} {}/{} restarted",
        bar(status.restarted, status.total, 24),
        status.restarted,
        status.total
    );
    if status.failed > 0 {
        line.push_str(&format!(", {} failed", status.failed));
    }
    line.push_str(&format!("  {:?}", status.phase));
    if !status.current_batch.is_empty() && status.phase == RolloutPhase::Progressing {
        line.push_str(&format!(
            "  batch {}: {}",
            status.batches,
            status.current_batch.join(", ")
        ));
    }
    let mut frame = vec![line];
    if let Some(blocked) = status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_BLOCKED && c.status == "True")
    {
        let reason = blocked.reason.clone().unwrap_or_default();
        match blocked.message.as_deref().filter(|m| !m.is_empty()) {
            Some(message) => frame.push(format!("blocked: {message} ({reason})")),
            None => frame.push(format!("blocked: {reason}")),
        }
    }
    // A status older than the spec (e.g. just resumed) does not decide anything yet.
    let current = match (
        rollout.and_then(|r| r.metadata.generation),
        status.observed_generation,
    ) {
        (Some(generation), Some(observed)) => observed >= generation,
        _ => true,
    };
    let message = status.message.clone().unwrap_or_default();
    let end = match status.phase {
        _ if !current => None,
        RolloutPhase::Succeeded => Some(Ok(format!(
            "rollingrestart.relaunch.dev/{name} succeeded in {}: {}",
            seconds(waited),
            if message.is_empty() {
                format!("restarted {} of {} pods", status.restarted, status.total)
            } else {
                message
            }
        ))),
        RolloutPhase::Failed => Some(Err(CliError::Failed(format!(
            "rollingrestart {name} failed: {message}"
        )))),
        RolloutPhase::Paused => {
            let why = match message.strip_prefix("paused") {
                Some(rest) => format!("paused{rest}"),
                None if message.is_empty() => "paused".to_string(),
                None => format!("is paused: {message}"),
            };
            Some(Err(CliError::Paused(format!(
                "rollingrestart {name} {why}; resume it with: kubectl relaunch resume {name} -n {namespace}"
            ))))
        }
        // A newer release's phase: not an end this version knows; keep following.
        RolloutPhase::Pending | RolloutPhase::Progressing | RolloutPhase::Unknown => None,
    };
    View { frame, end }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaunch_api::RollingRestartStatus;
    use serde_json::json;

    fn template() -> PodSpec {
        serde_json::from_value(json!({"containers": [{"name": "db"}, {"name": "exporter"}]}))
            .unwrap()
    }

    #[test]
    fn a_statefulset_rollout_carries_the_flags_into_the_spec() {
        let options = RolloutOptions {
            max_unavailable: Some(IntOrString::String("50%".into())),
            order: parse::order(&["role=role:replica:primary".into()]).unwrap(),
            partition: Some(1),
            containers: vec!["db".into()],
            shutdown_exec: Some("touch /tmp/shutdown".into()),
            grace_seconds: Some(60),
            unready_grace_seconds: None,
        };
        let rr = rolling_restart(
            WorkloadKind::StatefulSet,
            "db",
            &template(),
            "data",
            &options,
        )
        .unwrap();
        assert_eq!(rr.metadata.generate_name.as_deref(), Some("db-restart-"));
        assert_eq!(rr.metadata.namespace.as_deref(), Some("data"));
        let target = rr.spec.target.workload_ref.clone().unwrap();
        assert_eq!(
            (target.kind.as_str(), target.name.as_str()),
            ("StatefulSet", "db")
        );
        assert_eq!(rr.spec.containers, ["db"]);
        assert_eq!(rr.spec.shutdown.len(), 1);
        assert_eq!(rr.spec.shutdown[0].container, "db");
        assert_eq!(
            rr.spec.shutdown[0].action.exec.as_ref().unwrap().command,
            ["sh", "-c", "touch /tmp/shutdown"]
        );
        assert_eq!(
            rr.spec
                .recreate_strategy
                .unwrap()
                .termination_grace_period_seconds,
            Some(60)
        );
        assert_eq!(rr.spec.strategy.partition, Some(1));
        assert_eq!(
            rr.spec.strategy.max_unavailable,
            Some(IntOrString::String("50%".into()))
        );
        let role = rr.spec.strategy.order.unwrap().role.unwrap();
        assert_eq!(
            (role.first, role.last),
            (vec!["replica".to_string()], vec!["primary".to_string()])
        );
        assert!(!rr.spec.strategy.paused && !rr.spec.abort);
    }

    #[test]
    fn defaults_leave_the_strategy_to_the_coordinator() {
        let rr = rolling_restart(
            WorkloadKind::Deployment,
            "web",
            &template(),
            "default",
            &RolloutOptions::default(),
        )
        .unwrap();
        assert_eq!(rr.spec.strategy, RolloutStrategy::default());
        assert!(rr.spec.containers.is_empty() && rr.spec.shutdown.is_empty());
        assert_eq!(rr.spec.recreate_strategy, None);
    }

    #[test]
    fn unknown_containers_and_partitions_of_non_statefulsets_are_refused() {
        let options = RolloutOptions {
            containers: vec!["web".into()],
            ..RolloutOptions::default()
        };
        let error = rolling_restart(WorkloadKind::StatefulSet, "db", &template(), "d", &options)
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "the pods of statefulset db have no container web (their containers: db, exporter)"
        );
        let options = RolloutOptions {
            partition: Some(2),
            ..RolloutOptions::default()
        };
        let error = rolling_restart(WorkloadKind::Deployment, "web", &template(), "d", &options)
            .unwrap_err()
            .to_string();
        assert!(error.contains("StatefulSets only"), "{error}");
    }

    #[test]
    fn an_unfinished_rollout_of_the_same_workload_is_found() {
        let of = |kind: &str, name: &str, phase: Option<&str>| {
            let mut rr: RollingRestart = serde_json::from_value(json!({
                "apiVersion": "relaunch.dev/v1alpha1", "kind": "RollingRestart",
                "metadata": {"name": format!("{name}-{}", phase.unwrap_or("new"))},
                "spec": {"target": {"workloadRef": {"kind": kind, "name": name}}},
            }))
            .unwrap();
            rr.status = phase.map(|p| serde_json::from_value(json!({"phase": p})).unwrap());
            rr
        };
        let rollouts = [
            of("StatefulSet", "db", Some("Succeeded")),
            of("StatefulSet", "db", Some("Failed")),
            of("Deployment", "db", Some("Progressing")),
        ];
        assert!(unfinished_rollout_of(&rollouts, WorkloadKind::StatefulSet, "db").is_none());
        for phase in [None, Some("Pending"), Some("Progressing"), Some("Paused")] {
            let mut all = rollouts.to_vec();
            all.push(of("StatefulSet", "db", phase));
            let found = unfinished_rollout_of(&all, WorkloadKind::StatefulSet, "db").unwrap();
            assert_eq!(found.metadata.name, all[3].metadata.name);
        }
    }

    fn rollout_with(status: serde_json::Value, generation: i64) -> RollingRestart {
        let mut rr = RollingRestart::new("db-restart-x", RollingRestartSpec::default());
        rr.metadata.generation = Some(generation);
        rr.status = Some(serde_json::from_value::<RollingRestartStatus>(status).unwrap());
        rr
    }

    #[test]
    fn progress_shows_the_bar_the_batch_and_why_it_is_blocked() {
        let rr = rollout_with(
            json!({
                "phase": "Progressing", "total": 4, "restarted": 1, "batches": 2,
                "currentBatch": ["db-2"], "observedGeneration": 1,
                "conditions": [{"type": "Blocked", "status": "True", "reason": "BlockedByPDB",
                                "message": "PodDisruptionBudget db allows no further disruption"}],
            }),
            1,
        );
        let view = rollout_view("db-restart-x", "data", Some(&rr), Duration::ZERO);
        assert!(view.end.is_none());
        assert_eq!(
            view.frame,
            [
                "[######------------------] 1/4 restarted  Progressing  batch 2: db-2",
                "blocked: PodDisruptionBudget db allows no further disruption (BlockedByPDB)",
            ]
        );
    }

    #[test]
    fn the_wait_ends_on_success_failure_and_pause_but_not_on_a_stale_status() {
        let done = rollout_with(json!({"phase": "Succeeded", "total": 3, "restarted": 3}), 1);
        let view = rollout_view("r", "data", Some(&done), Duration::ZERO);
        assert!(view.end.unwrap().unwrap().contains("succeeded"));

        let failed = rollout_with(
            json!({"phase": "Failed", "message": "aborted: spec.abort is true"}),
            1,
        );
        let error = rollout_view("r", "data", Some(&failed), Duration::ZERO)
            .end
            .unwrap()
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "rollingrestart r failed: aborted: spec.abort is true"
        );

        let paused = rollout_with(
            json!({"phase": "Paused", "message": "paused: spec.strategy.paused is true", "observedGeneration": 2}),
            2,
        );
        let error = rollout_view("r", "data", Some(&paused), Duration::ZERO)
            .end
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("kubectl relaunch resume r -n data"),
            "{error}"
        );

        let stale = rollout_with(json!({"phase": "Paused", "observedGeneration": 2}), 3);
        assert!(
            rollout_view("r", "data", Some(&stale), Duration::ZERO)
                .end
                .is_none()
        );
    }
}
