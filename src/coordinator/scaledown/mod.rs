//! The ScaleDown controller: scales a StatefulSet down one ordinal at a time, highest first,
//! after the agent on the leaving pod's node ran the decommission command in it. The decision
//! is pure ([`decide`]); [`run`] is the shell: it gathers the ScaleDown, its StatefulSet, pods
//! and claims from watches, applies the one change a decision asks for, and records Events and
//! metrics. Commands reach the agents only through `status.exec`; their results come back
//! through the report API (`POST /v1/scaledown-execs`, [`apply_exec_report`]).

pub mod decide;
pub mod leaving;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use relaunch_api::report::ExecReport;
use relaunch_api::{
    ExecResult, MAX_EXEC_OUTPUT_CHARS, SCALEDOWN_STALLED, ScaleDown, ScaleDownPhase, ordinal_start,
    tail_chars,
};

use crate::caches::{WatchTasks, prune_claim, prune_statefulset, watch_into};
use crate::context::Context;
use crate::error::{ClusterError, CoordinatorError};
use crate::error_policy::error_policy;
use crate::exec_policy::ExecPolicy;
use crate::pods::{CachedPod, PodFacts};
use crate::report_api::handlers::{Refusal, valid_object_name};
use decide::{Decision, Observed, PodView, StatefulSetView, Write, decide};

/// Longest sleep between passes.
const MAX_IDLE: Duration = Duration::from_secs(5);
/// Shortest gap between passes.
const MIN_GAP: Duration = Duration::from_millis(50);

/// The `relaunch_scaledown_*` metrics.
#[derive(Clone)]
pub struct ScaleDownMetrics {
    /// `relaunch_scaledown_active`: ScaleDowns neither finished nor unknown.
    pub active: IntGauge,
    /// `relaunch_scaledown_stalled`: ScaleDowns whose `Stalled` condition is True.
    pub stalled: IntGauge,
    /// `relaunch_scaledown_finished_total{result}`: succeeded | failed | cancelled.
    pub finished: IntCounterVec,
    /// `relaunch_scaledown_ordinals_removed_total`.
    pub removed: prometheus::IntCounter,
    /// `relaunch_scaledown_exec_results_total{purpose,result}`: command results the report API
    /// wrote (result: succeeded | failed | not_run).
    pub exec_results: IntCounterVec,
}

impl ScaleDownMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let active = IntGauge::new(
            "relaunch_scaledown_active",
            "ScaleDowns in progress (the leader's view).",
        )?;
        let stalled = IntGauge::new(
            "relaunch_scaledown_stalled",
            "ScaleDowns whose decommission shows no progress for its stall timeout.",
        )?;
        let finished = IntCounterVec::new(
            Opts::new(
                "relaunch_scaledown_finished_total",
                "ScaleDowns finished, by result (succeeded, failed, cancelled).",
            ),
            &["result"],
        )?;
        for r in ["succeeded", "failed", "cancelled"] {
            finished.with_label_values(&[r]);
        }
        let removed = prometheus::IntCounter::new(
            "relaunch_scaledown_ordinals_removed_total",
            "StatefulSet ordinals removed after their decommission.",
        )?;
        let exec_results = IntCounterVec::new(
            Opts::new(
                "relaunch_scaledown_exec_results_total",
                "Results of ScaleDown commands written from the agents' reports, by purpose and result.",
            ),
            &["purpose", "result"],
        )?;
        registry.register(Box::new(active.clone()))?;
        registry.register(Box::new(stalled.clone()))?;
        registry.register(Box::new(finished.clone()))?;
        registry.register(Box::new(removed.clone()))?;
        registry.register(Box::new(exec_results.clone()))?;
        Ok(Self {
            active,
            stalled,
            finished,
            removed,
            exec_results,
        })
    }
}

struct Stores {
    scaledowns: Store<ScaleDown>,
    statefulsets: Store<StatefulSet>,
    claims: Store<PersistentVolumeClaim>,
    pods: Store<CachedPod>,
}

/// Runs the ScaleDown controller on the shared pod cache until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    pods: Store<CachedPod>,
    notify: Arc<Notify>,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let wake = || vec![notify.clone()];
    let (scaledowns, t1) = watch_into(
        &ctx,
        "scaledowns",
        |o: &mut ScaleDown| o.metadata.managed_fields = None,
        wake(),
    );
    let (statefulsets, t2) = watch_into(
        &ctx,
        "statefulsets",
        |o: &mut StatefulSet| prune_statefulset(o, |_| false),
        wake(),
    );
    let (claims, t3) = watch_into(&ctx, "persistentvolumeclaims", prune_claim, wake());
    let _tasks = WatchTasks(vec![t1, t2, t3]);
    // The holds are this term's: forgotten however the controller ends (also when aborted), so
    // the report API of a replica that no longer leads reads the ScaleDowns instead.
    let _holds = leaving::ForgetOnDrop(ctx.leaving.clone());
    let stores = Stores {
        scaledowns,
        statefulsets,
        claims,
        pods,
    };
    let ready = async {
        tokio::try_join!(
            stores.scaledowns.wait_until_ready(),
            stores.statefulsets.wait_until_ready(),
            stores.claims.wait_until_ready(),
            stores.pods.wait_until_ready(),
        )
    };
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = ready => if r.is_err() { return Err(CoordinatorError::ControllersStopped) },
    }
    let metrics = ctx.metrics.scaledowns.clone();
    // Per ScaleDown UID: the resourceVersion our last status write replaced, and when.
    let mut written: HashMap<String, (String, std::time::Instant)> = HashMap::new();
    let mut wake_in = Duration::ZERO;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = notify.notified() => {}
            _ = tokio::time::sleep(wake_in) => {}
        }
        tokio::time::sleep(MIN_GAP).await;
        wake_in = MAX_IDLE;
        let (mut active, mut stalled) = (0, 0);
        let mut held = HashMap::new();
        for sd in stores.scaledowns.state() {
            let phase = sd.status.as_ref().map(|s| s.phase).unwrap_or_default();
            if phase.is_finished() || phase == ScaleDownPhase::Unknown {
                continue;
            }
            active += 1;
            held.extend(leaving::held_pod(&sd));
            if sd
                .status
                .as_ref()
                .is_some_and(|s| s.is_true(SCALEDOWN_STALLED))
            {
                stalled += 1;
            }
            // Our last status write is not in the cache yet: wait for it (at most a few seconds).
            let uid = sd.uid().unwrap_or_default();
            let stale = written.get(&uid).is_some_and(|(rv, at)| {
                Some(rv.as_str()) == sd.resource_version().as_deref()
                    && at.elapsed() < Duration::from_secs(5)
            });
            if stale {
                wake_in = wake_in.min(Duration::from_millis(200));
                continue;
            }
            if let Some(requeue) = reconcile(&ctx, &stores, &sd, &mut written).await {
                wake_in = wake_in.min(requeue);
            }
        }
        metrics.active.set(active);
        metrics.stalled.set(stalled);
        ctx.leaving.set(held);
        written.retain(|uid, _| {
            stores
                .scaledowns
                .state()
                .iter()
                .any(|sd| sd.uid().as_deref() == Some(uid))
        });
    }
    metrics.active.set(0);
    metrics.stalled.set(0);
    Ok(())
}

/// What the decision needs, from the caches.
fn observe<'a>(
    stores: &Stores,
    sd: &'a ScaleDown,
    exec_policy: Option<ExecPolicy>,
) -> (Observed<'a>, Option<Arc<StatefulSet>>) {
    let namespace = sd.namespace().unwrap_or_default();
    let name = &sd.spec.stateful_set_name;
    let sts =
        stores.statefulsets.state().into_iter().find(|s| {
            s.namespace().as_deref() == Some(namespace.as_str()) && &s.name_any() == name
        });
    let view = sts.as_ref().map(|s| {
        let spec = s.spec.as_ref();
        StatefulSetView {
            replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
            start: ordinal_start(spec),
            service_name: spec.and_then(|s| s.service_name.clone()),
            claim_templates: spec
                .and_then(|s| s.volume_claim_templates.as_ref())
                .map(|ts| ts.iter().map(|t| t.name_any()).collect())
                .unwrap_or_default(),
            deletes_claims_when_scaled: spec
                .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref())
                .and_then(|p| p.when_scaled.as_deref())
                == Some("Delete"),
            deleting: s.metadata.deletion_timestamp.is_some(),
        }
    });
    let sts_uid = sts.as_ref().and_then(|s| s.uid());
    let prefix = format!("{name}-");
    let mut pods = BTreeMap::new();
    for pod in stores.pods.state() {
        if pod.namespace().as_deref() != Some(namespace.as_str()) {
            continue;
        }
        let owned = pod
            .owner_references()
            .iter()
            .any(|o| o.kind == "StatefulSet" && Some(&o.uid) == sts_uid.as_ref());
        let pod_name = pod.name_any();
        let Some(ordinal) = pod_name
            .strip_prefix(&prefix)
            .and_then(|o| o.parse::<i32>().ok())
        else {
            continue;
        };
        if !owned {
            continue;
        }
        let ready = pod.condition("Ready").is_some_and(|c| c.status == "True");
        pods.insert(
            ordinal,
            PodView {
                name: pod_name,
                uid: pod.uid().unwrap_or_default(),
                node: pod.node_name().map(String::from),
                running: pod.phase() == Some("Running"),
                ready,
                deleting: pod.metadata.deletion_timestamp.is_some(),
                first_container: pod.regular_containers().first().map(|c| c.to_string()),
            },
        );
    }
    let claims = stores
        .claims
        .state()
        .iter()
        .filter(|c| c.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .map(|c| (c.name_any(), c.uid().unwrap_or_default()))
        .collect();
    (
        Observed {
            scaledown: sd,
            statefulset: view,
            pods,
            claims,
            exec_policy,
            now: Timestamp::now(),
        },
        sts,
    )
}

/// One pass over one ScaleDown; when to look again.
async fn reconcile(
    ctx: &Context,
    stores: &Stores,
    sd: &Arc<ScaleDown>,
    written: &mut HashMap<String, (String, std::time::Instant)>,
) -> Option<Duration> {
    let (observed, sts) = observe(stores, sd, ctx.exec_policy.verdict());
    let Decision {
        status,
        write,
        events,
        requeue,
    } = decide(&observed);
    let object = format!(
        "ScaleDown {}/{}",
        sd.namespace().unwrap_or_default(),
        sd.name_any()
    );
    let retry = Some(Duration::from_secs(1));
    match write {
        Some(Write::Lower { from, to }) => {
            let Some(sts) = sts else { return retry };
            tracing::info!(scaledown = %object, from, to, "lowering the StatefulSet's replicas");
            if let Err(e) = ctx.cluster.set_replicas(&sts, to).await {
                error_policy(&ctx.metrics, "lowering replicas", &object, &e);
                return retry;
            }
            return Some(Duration::ZERO);
        }
        Some(Write::DeleteClaims(claims)) => {
            let namespace = sd.namespace().unwrap_or_default();
            for claim in &claims {
                if let Err(e) = ctx.cluster.delete_claim(&namespace, claim).await {
                    error_policy(&ctx.metrics, "deleting a claim", &object, &e);
                    return retry;
                }
            }
            return Some(Duration::from_millis(200));
        }
        Some(Write::DeletePod { name, uid }) => {
            let namespace = sd.namespace().unwrap_or_default();
            tracing::info!(scaledown = %object, pod = %name, "deleting a decommissioned pod whose ordinal a scale-up kept");
            if let Err(e) = ctx.cluster.delete_pod(&namespace, &name, &uid).await {
                error_policy(&ctx.metrics, "deleting a pod", &object, &e);
                return retry;
            }
            return Some(Duration::from_millis(200));
        }
        None => {}
    }
    if let Some(new) = status {
        match ctx
            .cluster
            .write_status(&**sd, sd.status.as_ref(), &new)
            .await
        {
            Ok(_) => {
                if let (Some(uid), Some(rv)) = (sd.uid(), sd.resource_version()) {
                    written.insert(uid, (rv, std::time::Instant::now()));
                }
                let metrics = &ctx.metrics.scaledowns;
                let old_removed = sd.status.as_ref().map_or(0, |s| s.removed.len());
                if new.removed.len() > old_removed {
                    metrics.removed.inc();
                }
                if new.phase.is_finished() {
                    let result = match new.phase {
                        ScaleDownPhase::Succeeded => "succeeded",
                        ScaleDownPhase::Cancelled => "cancelled",
                        _ => "failed",
                    };
                    metrics.finished.with_label_values(&[result]).inc();
                    tracing::info!(scaledown = %object, result, message = new.message.as_deref().unwrap_or_default(), "ScaleDown finished");
                }
                ctx.cluster.record_on(sd.object_ref(&()), events);
            }
            Err(ClusterError::Conflict(_)) => return Some(Duration::from_millis(100)),
            Err(e) => {
                error_policy(&ctx.metrics, "writing ScaleDown status", &object, &e);
                return retry;
            }
        }
    }
    requeue
}

/// Writes a command's result, reported by the agent on `node`, into `status.exec.result`: only
/// if the ScaleDown (by UID) still waits for that command and the command's pod (by UID) runs
/// on `node`. A repeated report changes nothing.
pub async fn apply_exec_report(
    ctx: &Context,
    node: &str,
    report: &ExecReport,
) -> Result<bool, Refusal> {
    let r = &report.scale_down;
    if !valid_object_name(&r.namespace) || !valid_object_name(&r.name) {
        return Err(Refusal::BadRequest(format!(
            "scaleDown.namespace and scaleDown.name must be Kubernetes object names, got {:?}/{:?}",
            r.namespace, r.name
        )));
    }
    let object = format!("ScaleDown {}/{}", r.namespace, r.name);
    let unavailable = |e: ClusterError| {
        error_policy(&ctx.metrics, "reading for an exec report", &object, &e);
        Refusal::Unavailable(format!("cannot read the ScaleDown or its pod: {e}"))
    };
    for _ in 0..8 {
        let sd = ctx
            .cluster
            .get_scaledown(&r.namespace, &r.name)
            .await
            .map_err(unavailable)?
            .filter(|sd| sd.uid().as_deref() == Some(r.uid.as_str()))
            .ok_or_else(|| Refusal::NotFound(format!("{object} with UID {} not found", r.uid)))?;
        let Some(status) = sd.status.clone() else {
            return Err(Refusal::Conflict(format!("{object} asks for no command")));
        };
        let Some(task) = status.exec.clone().filter(|t| t.id == report.exec_id) else {
            return Err(Refusal::Conflict(format!(
                "{object} no longer asks for command {}",
                report.exec_id
            )));
        };
        let forbidden = || {
            ctx.metrics
                .auth_failures
                .with_label_values(&["wrong_node"])
                .inc();
            Refusal::Forbidden(format!(
                "pod {}/{} of command {} does not run on node {node}",
                r.namespace, task.pod_name, task.id
            ))
        };
        if task.node_name != node || !valid_object_name(&task.pod_name) {
            return Err(forbidden());
        }
        let pod = ctx
            .cluster
            .get_pod(&r.namespace, &task.pod_name)
            .await
            .map_err(unavailable)?;
        let on_node = pod.as_ref().is_some_and(|p| {
            p.uid().as_deref() == Some(task.pod_uid.as_str())
                && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
        });
        if !on_node {
            return Err(forbidden());
        }
        if task.result.is_some() {
            return Ok(false);
        }
        let mut new = status.clone();
        let purpose = format!("{:?}", task.purpose);
        if let Some(exec) = &mut new.exec {
            exec.result = Some(ExecResult {
                exit_code: report.exit_code,
                output: tail_chars(&report.output, MAX_EXEC_OUTPUT_CHARS),
                finished_time: Some(Time(Timestamp::now())),
            });
        }
        match ctx.cluster.write_status(&sd, Some(&status), &new).await {
            Ok(_) => {
                let result = match report.exit_code {
                    Some(0) => "succeeded",
                    Some(_) => "failed",
                    None => "not_run",
                };
                ctx.metrics
                    .scaledowns
                    .exec_results
                    .with_label_values(&[purpose.as_str(), result])
                    .inc();
                return Ok(true);
            }
            Err(ClusterError::Conflict(_)) => continue,
            Err(e) => {
                error_policy(&ctx.metrics, "writing an exec result", &object, &e);
                return Err(Refusal::Unavailable(format!(
                    "cannot write the result: {e}"
                )));
            }
        }
    }
    Err(Refusal::Unavailable(
        "the ScaleDown kept changing; try again".into(),
    ))
}
