//! The controllers: admission of new requests and their lifecycle (deadline, pod gone, silent
//! agent, readiness-gate release, TTL). Watches feed two caches; every pass decides, per request,
//! with the pure functions of [`super::admission`] and [`super::lifecycle`], then acts through
//! [`super::cluster`]. Every write is conditional on the version decided on, so a decision taken
//! on a stale cache fails harmlessly (409) and is taken again on fresh data.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use relaunch_api::containers::is_native_sidecar;
use relaunch_api::{
    ContainerRecreateRequest, ContainerRecreateRequestStatus, LABEL_POD_UID, READINESS_GATE,
};

use super::admission::{Admission, admit};
use super::cluster::{is_conflict, object_reference, pod_reference};
use super::lifecycle::{self, Decision, FailReason, Observed, PodView, Predecessor, decide};
use super::{Context, CoordinatorError, Note, readiness};

/// Longest sleep between passes (time-based decisions are re-checked at least this often).
const MAX_IDLE: Duration = Duration::from_secs(30);
/// Shortest gap between passes, so bursts of watch events are handled together.
const MIN_GAP: Duration = Duration::from_millis(50);
/// An action taken on one version of a request is not repeated for this long (the watch
/// normally brings the new version much sooner).
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// Actions run concurrently in one pass.
const CONCURRENCY: usize = 8;

/// The pod and request caches the CRR controllers and the rollout controller share: one watch
/// each, cluster-wide, pods pruned to what the controllers read.
#[derive(Clone)]
pub struct Caches {
    pub pods: Store<Pod>,
    pub requests: Store<ContainerRecreateRequest>,
}

impl Caches {
    /// Waits until both caches are filled.
    pub async fn ready(&self) -> Result<(), reflector::store::WriterDropped> {
        tokio::try_join!(
            self.requests.wait_until_ready(),
            self.pods.wait_until_ready()
        )
        .map(|_| ())
    }
}

/// Starts the shared watches; every change wakes each of `wake`. The returned tasks run until
/// aborted.
pub fn watch_shared(
    client: kube::Client,
    wake: Vec<Arc<Notify>>,
) -> (Caches, Vec<tokio::task::JoinHandle<()>>) {
    let (requests, writer) = reflector::store::<ContainerRecreateRequest>();
    let stream = watcher(Api::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(|r: &mut ContainerRecreateRequest| r.metadata.managed_fields = None)
        .reflect(writer);
    let request_watch = tokio::spawn(drive("containerrecreaterequests", stream, wake.clone()));

    let (pods, writer) = reflector::store::<Pod>();
    let stream = watcher(Api::<Pod>::all(client), watcher::Config::default())
        .default_backoff()
        .modify(prune_pod)
        .reflect(writer);
    let pod_watch = tokio::spawn(drive("pods", stream, wake));
    (Caches { pods, requests }, vec![request_watch, pod_watch])
}

/// Runs the controllers on `caches` until `shutdown`, waking on `notify`; `synced` fires once
/// both caches are filled.
pub async fn run(
    ctx: Arc<Context>,
    caches: Caches,
    notify: Arc<Notify>,
    synced: oneshot::Sender<()>,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let result = tokio::select! {
        _ = shutdown.cancelled() => None,
        r = caches.ready() => Some(r),
    };
    match result {
        None => return Ok(()),
        Some(Err(_)) => return Err(CoordinatorError::ControllersStopped),
        Some(Ok(())) => {
            let _ = synced.send(());
        }
    }

    let mut worker = Worker {
        ctx,
        requests: caches.requests,
        pods: caches.pods,
        watching_since: Timestamp::now(),
        attempted: HashMap::new(),
    };
    let mut wake = Duration::ZERO;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = notify.notified() => {}
            _ = tokio::time::sleep(wake) => {}
        }
        tokio::time::sleep(MIN_GAP).await;
        wake = worker.pass().await.clamp(MIN_GAP, MAX_IDLE);
    }
    Ok(())
}

/// Drives a watch stream (its reflector fills the cache) and wakes the workers on every change.
pub(crate) async fn drive<S, K>(what: &'static str, stream: S, wake: Vec<Arc<Notify>>)
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream.into_stream());
    while let Some(item) = stream.next().await {
        match item {
            Ok(_) => wake.iter().for_each(|n| n.notify_one()),
            Err(e) => tracing::warn!(resource = what, error = %e, "watch failed; retrying"),
        }
    }
}

/// Keeps only what the controllers read of a pod, so the cache stays small as the cluster grows:
/// identity, labels (rollout and budget selectors, ordinal), owner kinds (ordinal), deletion;
/// node, grace period, readiness gates, the names of the containers that can be recreated
/// (regular containers and native sidecars, with the restart policy that makes one a sidecar);
/// phase and the Ready and `relaunch.dev/ready` conditions.
pub(crate) fn prune_pod(pod: &mut Pod) {
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.finalizers = None;
    meta.generate_name = None;
    let spec = pod.spec.take().unwrap_or_default();
    let name_only = |c: Container| Container {
        name: c.name,
        restart_policy: c.restart_policy,
        ..Default::default()
    };
    pod.spec = Some(PodSpec {
        node_name: spec.node_name,
        termination_grace_period_seconds: spec.termination_grace_period_seconds,
        readiness_gates: spec.readiness_gates,
        containers: spec.containers.into_iter().map(name_only).collect(),
        init_containers: spec.init_containers.map(|c| {
            c.into_iter()
                .filter(is_native_sidecar)
                .map(name_only)
                .collect()
        }),
        ..Default::default()
    });
    let status = pod.status.take().unwrap_or_default();
    pod.status = Some(PodStatus {
        phase: status.phase,
        conditions: status.conditions.map(|c| {
            c.into_iter()
                .filter(|c| c.type_ == READINESS_GATE || c.type_ == "Ready")
                .map(|mut c| {
                    c.last_probe_time = None;
                    if c.type_ == "Ready" {
                        c.message = None;
                        c.reason = None;
                    }
                    c
                })
                .collect()
        }),
        ..Default::default()
    });
}

/// One thing to do for one request.
enum Job {
    Admit(Arc<ContainerRecreateRequest>),
    Act(Arc<ContainerRecreateRequest>, Decision),
    /// A pod with the `relaunch.dev/ready` gate but no condition yet.
    OpenGate(Arc<Pod>),
    /// A pod held NotReady by a request (named) that is gone.
    ReleaseGoneHolder(Arc<Pod>, String),
}

struct Worker {
    ctx: Arc<Context>,
    requests: Store<ContainerRecreateRequest>,
    pods: Store<Pod>,
    watching_since: Timestamp,
    /// What was last attempted per request UID: (request version, pod version, when).
    attempted: HashMap<String, (String, String, Instant)>,
}

impl Worker {
    /// Decides for every request and acts; returns how long until something is due.
    async fn pass(&mut self) -> Duration {
        let now = Timestamp::now();
        let all = self.requests.state();
        let mut next = MAX_IDLE;
        let mut jobs = Vec::new();
        for crr in &all {
            let uid = crr.uid().unwrap_or_default();
            let pod = self.pod_of(crr);
            let job = if crr.status.is_none() {
                Job::Admit(crr.clone())
            } else {
                let observed = Observed {
                    request: crr,
                    pod: pod.as_deref().map(|p| pod_view(p, crr)),
                    predecessor: predecessor(crr, &all),
                    last_report: self.ctx.activity.last(&uid),
                    watching_since: self.watching_since,
                    now,
                    agent_timeout: self.ctx.settings.agent_timeout,
                };
                match decide(&observed) {
                    Decision::Wait(after) => {
                        if let Some(after) = after {
                            next = next.min(after);
                        }
                        continue;
                    }
                    decision => Job::Act(crr.clone(), decision),
                }
            };
            let key = (
                crr.resource_version().unwrap_or_default(),
                pod.and_then(|p| p.resource_version()).unwrap_or_default(),
            );
            if let Some((rv, pod_rv, at)) = self.attempted.get(&uid)
                && (rv, pod_rv) == (&key.0, &key.1)
                && at.elapsed() < RETRY_AFTER
            {
                next = next.min(RETRY_AFTER - at.elapsed());
                continue;
            }
            self.attempted.insert(uid, (key.0, key.1, Instant::now()));
            jobs.push(job);
        }
        for pod in self.pods.state() {
            let job = if readiness::needs_opening(&pod) {
                Job::OpenGate(pod.clone())
            } else if let Some(holder) = orphaned_hold(&pod, &all) {
                Job::ReleaseGoneHolder(pod.clone(), holder)
            } else {
                continue;
            };
            let uid = pod.uid().unwrap_or_default();
            let rv = pod.resource_version().unwrap_or_default();
            if let Some((_, pod_rv, at)) = self.attempted.get(&uid)
                && *pod_rv == rv
                && at.elapsed() < RETRY_AFTER
            {
                continue;
            }
            self.attempted
                .insert(uid, (String::new(), rv, Instant::now()));
            jobs.push(job);
        }
        let ctx = &self.ctx;
        futures::stream::iter(jobs)
            .for_each_concurrent(CONCURRENCY, |job| async move {
                match job {
                    Job::Admit(crr) => admit_request(ctx, &crr).await,
                    Job::Act(crr, decision) => act(ctx, &crr, decision).await,
                    Job::OpenGate(pod) => {
                        let ns = pod.namespace().unwrap_or_default();
                        if let Err(e) = ctx.cluster.open_gate(&ns, &pod.name_any()).await {
                            tracing::warn!(pod = %format!("{ns}/{}", pod.name_any()), error = %e, "opening the readiness gate failed; will retry");
                        }
                    }
                    Job::ReleaseGoneHolder(pod, holder) => {
                        release_gone_holder(ctx, &pod, &holder).await
                    }
                }
            })
            .await;

        let mut live: HashSet<String> = all.iter().filter_map(|c| c.uid()).collect();
        live.extend(self.pods.state().iter().filter_map(|p| p.uid()));
        self.attempted.retain(|uid, _| live.contains(uid));
        self.ctx.activity.retain(|uid| live.contains(uid));
        next
    }

    fn pod_of(&self, crr: &ContainerRecreateRequest) -> Option<Arc<Pod>> {
        let ns = crr.namespace()?;
        self.pods
            .get(&ObjectRef::new(&crr.spec.pod_name).within(&ns))
    }
}

fn pod_view(pod: &Pod, crr: &ContainerRecreateRequest) -> PodView {
    PodView {
        uid: pod.uid().unwrap_or_default(),
        termination_grace_seconds: pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds),
        gate_held_by_request: readiness::is_held_by(
            pod,
            &crr.namespace().unwrap_or_default(),
            &crr.name_any(),
        ),
    }
}

/// The request named as holding `pod` NotReady when no request in the cache can release the
/// pod any more: the holder is not there (deleted before it finished), and no other unfinished
/// request of the pod is either (it may be about to hold the pod itself; once it finishes, the
/// pod is released). A holder that is still there releases the gate itself once finished.
fn orphaned_hold(pod: &Pod, requests: &[Arc<ContainerRecreateRequest>]) -> Option<String> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let (namespace, holder) = readiness::holder(pod)?;
    let pod_ns = pod.namespace().unwrap_or_default();
    let pod_uid = pod.uid().unwrap_or_default();
    if namespace != pod_ns {
        return None;
    }
    let blocked = requests.iter().any(|r| {
        if r.namespace().as_deref() != Some(pod_ns.as_str()) {
            return false;
        }
        if r.name_any() == holder {
            return true;
        }
        let of_pod = r.spec.pod_name == pod.name_any()
            && r.labels()
                .get(LABEL_POD_UID)
                .is_none_or(|uid| *uid == pod_uid);
        let unfinished = r.status.as_ref().is_none_or(|s| !s.phase.is_finished());
        of_pod && unfinished
    });
    (!blocked).then_some(holder)
}

/// Releases a pod held NotReady by request `holder`, which the cache no longer has.
async fn release_gone_holder(ctx: &Context, pod: &Pod, holder: &str) {
    let ns = pod.namespace().unwrap_or_default();
    let pod_name = pod.name_any();
    let described = format!("{ns}/{pod_name}");
    // The cache may lag behind a request just created (or re-created under the same name):
    // ask the API before releasing.
    match ctx.cluster.get_request(&ns, holder).await {
        Ok(None) => {}
        Ok(Some(_)) => return,
        Err(e) => {
            tracing::warn!(pod = %described, request = holder, error = %e, "cannot check the request holding the readiness gate; will retry");
            return;
        }
    }
    let rv = pod.resource_version().unwrap_or_default();
    match ctx
        .cluster
        .release_gone_holder(&ns, &pod_name, holder, &rv)
        .await
    {
        Ok(()) => {
            tracing::info!(pod = %described, request = holder, "readiness gate released: the request holding it was deleted");
            ctx.cluster.record_on_pod(
                object_reference(pod),
                vec![Note::normal(
                    "ReadinessReleased",
                    format!(
                        "{READINESS_GATE} set True: ContainerRecreateRequest {ns}/{holder}, which held pod {pod_name} NotReady, was deleted before it finished"
                    ),
                )],
            );
        }
        Err(e) if is_conflict(&e) => {
            tracing::debug!(pod = %described, "the pod changed meanwhile; deciding again")
        }
        Err(e) => {
            tracing::warn!(pod = %described, error = %e, "releasing the readiness gate failed; will retry")
        }
    }
}

/// The earlier admitted requests for the same pod (the agent runs them one at a time, in
/// creation order).
fn predecessor(
    crr: &ContainerRecreateRequest,
    all: &[Arc<ContainerRecreateRequest>],
) -> Predecessor {
    let order = |c: &ContainerRecreateRequest| (c.creation_timestamp(), c.name_any());
    let mine = order(crr);
    let mut latest: Option<Timestamp> = None;
    for other in all {
        if other.namespace() != crr.namespace()
            || other.spec.pod_name != crr.spec.pod_name
            || order(other) >= mine
        {
            continue;
        }
        let Some(status) = &other.status else {
            return Predecessor::Unfinished;
        };
        if !status.phase.is_finished() {
            return Predecessor::Unfinished;
        }
        if let Some(done) = &status.completion_time {
            latest = Some(latest.map_or(done.0, |l| l.max(done.0)));
        }
    }
    latest.map_or(Predecessor::None, Predecessor::FinishedAt)
}

fn describe(crr: &ContainerRecreateRequest) -> String {
    format!("{}/{}", crr.namespace().unwrap_or_default(), crr.name_any())
}

fn log_write_error(crr: &ContainerRecreateRequest, what: &str, e: &kube::Error) {
    if is_conflict(e) {
        tracing::debug!(request = %describe(crr), "{what}: the request changed meanwhile; deciding again");
    } else {
        tracing::warn!(request = %describe(crr), error = %e, "{what} failed; will retry");
    }
}

/// Admits a new request: labels and Pending, or Failed with what to fix.
async fn admit_request(ctx: &Context, crr: &ContainerRecreateRequest) {
    let ns = crr.namespace().unwrap_or_default();
    let pod = match ctx.cluster.get_pod(&ns, &crr.spec.pod_name).await {
        Ok(pod) => pod,
        Err(e) => return log_write_error(crr, "reading the pod for admission", &e),
    };
    match admit(crr, pod.as_ref()) {
        Admission::Admit { labels } => {
            let labelled = if labels.is_empty() {
                crr.clone()
            } else {
                match ctx.cluster.add_labels(crr, &labels).await {
                    Ok(updated) => updated,
                    Err(e) => return log_write_error(crr, "labelling", &e),
                }
            };
            let status = ContainerRecreateRequestStatus {
                observed_generation: crr.metadata.generation,
                ..Default::default()
            };
            match ctx.cluster.write_status(&labelled, &status).await {
                Ok(_) => {
                    tracing::info!(request = %describe(crr), pod = %crr.spec.pod_name, "admitted")
                }
                Err(e) => log_write_error(crr, "admission", &e),
            }
        }
        Admission::Refuse { message } => {
            let status = lifecycle::failed(None, &message, Timestamp::now());
            match ctx.cluster.write_status(crr, &status).await {
                Ok(_) => {
                    tracing::info!(request = %describe(crr), %message, "refused");
                    ctx.metrics.crrs.with_label_values(&["refused"]).inc();
                    let pod_ref = pod.as_ref().map(object_reference);
                    ctx.cluster
                        .record(crr, pod_ref, vec![Note::warning("Refused", message)]);
                }
                Err(e) => log_write_error(crr, "refusal", &e),
            }
        }
    }
}

/// Carries out a lifecycle decision.
async fn act(ctx: &Context, crr: &ContainerRecreateRequest, decision: Decision) {
    let ns = crr.namespace().unwrap_or_default();
    match decision {
        Decision::Wait(_) => {}
        Decision::Fail { reason, message } => {
            if reason == FailReason::PodGone && pod_still_there(ctx, crr).await {
                return;
            }
            let status = lifecycle::failed(crr.status.as_ref(), &message, Timestamp::now());
            match ctx.cluster.write_status(crr, &status).await {
                Ok(_) => {
                    tracing::info!(request = %describe(crr), %message, "failed");
                    ctx.metrics
                        .crrs
                        .with_label_values(&[reason.metric_result()])
                        .inc();
                    ctx.cluster.record(
                        crr,
                        pod_reference(crr),
                        vec![Note::warning(reason.event_reason(), message)],
                    );
                }
                Err(e) => log_write_error(crr, "failing the request", &e),
            }
        }
        Decision::ReleaseGate => {
            match ctx
                .cluster
                .set_gate(&ns, &crr.spec.pod_name, true, &crr.name_any())
                .await
            {
                Ok(()) => {
                    tracing::info!(request = %describe(crr), "readiness gate released");
                    ctx.cluster.record(
                        crr,
                        pod_reference(crr),
                        vec![Note::normal(
                            "ReadinessReleased",
                            format!(
                                "{READINESS_GATE} set True: the request finished, pod {} may receive traffic again",
                                crr.spec.pod_name
                            ),
                        )],
                    );
                }
                Err(e) => log_write_error(crr, "releasing the readiness gate", &e),
            }
        }
        Decision::Delete => match ctx.cluster.delete_request(crr).await {
            Ok(()) => {
                tracing::info!(request = %describe(crr), "deleted after ttlSecondsAfterFinished")
            }
            Err(e) => log_write_error(crr, "TTL deletion", &e),
        },
    }
}

/// The pod cache may lag behind: before failing a request for a missing pod, ask the API.
async fn pod_still_there(ctx: &Context, crr: &ContainerRecreateRequest) -> bool {
    let ns = crr.namespace().unwrap_or_default();
    match ctx.cluster.get_pod(&ns, &crr.spec.pod_name).await {
        Ok(Some(pod)) => crr
            .labels()
            .get(LABEL_POD_UID)
            .is_none_or(|uid| pod.uid().as_deref() == Some(uid.as_str())),
        Ok(None) => false,
        // Unsure: do not fail the request on a read error.
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodReadinessGate};
    use relaunch_api::{ContainerRecreateRequestSpec, RecreatePhase};
    use std::collections::BTreeMap;

    fn held_pod(holder: &str) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("db-0".into());
        pod.metadata.namespace = Some("default".into());
        pod.metadata.uid = Some("uid-1".into());
        pod.spec = Some(PodSpec {
            readiness_gates: Some(vec![PodReadinessGate {
                condition_type: READINESS_GATE.into(),
            }]),
            ..Default::default()
        });
        pod.status = Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: READINESS_GATE.into(),
                status: "False".into(),
                reason: Some(readiness::REASON_HELD.into()),
                message: Some(readiness::hold_message("default", holder)),
                ..Default::default()
            }]),
            ..Default::default()
        });
        pod
    }

    fn request(
        name: &str,
        pod: &str,
        pod_uid: Option<&str>,
        phase: Option<RecreatePhase>,
    ) -> Arc<ContainerRecreateRequest> {
        let mut r = ContainerRecreateRequest::new(
            name,
            ContainerRecreateRequestSpec {
                pod_name: pod.into(),
                ..Default::default()
            },
        );
        r.metadata.namespace = Some("default".into());
        r.metadata.labels =
            pod_uid.map(|uid| BTreeMap::from([(LABEL_POD_UID.to_string(), uid.to_string())]));
        r.status = phase.map(|phase| ContainerRecreateRequestStatus {
            phase,
            ..Default::default()
        });
        Arc::new(r)
    }

    #[test]
    fn a_hold_by_a_deleted_request_is_released_when_no_other_request_may_hold_the_pod() {
        let pod = held_pod("gone");
        assert_eq!(orphaned_hold(&pod, &[]), Some("gone".into()));
        let done = request(
            "done",
            "db-0",
            Some("uid-1"),
            Some(RecreatePhase::Succeeded),
        );
        let elsewhere = request("other", "web-0", None, Some(RecreatePhase::Recreating));
        let old_pod = request("old", "db-0", Some("uid-0"), Some(RecreatePhase::Pending));
        assert_eq!(
            orphaned_hold(&pod, &[done, elsewhere, old_pod]),
            Some("gone".into()),
            "finished requests, other pods' and an earlier pod instance's do not keep the hold"
        );
    }

    #[test]
    fn a_hold_is_kept_while_its_holder_or_another_unfinished_request_of_the_pod_exists() {
        let pod = held_pod("r1");
        // The holder itself releases the gate once it finishes.
        for phase in [
            None,
            Some(RecreatePhase::Recreating),
            Some(RecreatePhase::Failed),
        ] {
            let holder = request("r1", "db-0", Some("uid-1"), phase);
            assert_eq!(orphaned_hold(&pod, &[holder]), None, "{phase:?}");
        }
        // A newer request of the pod, not admitted yet or running: its agent may be about to
        // hold the pod itself.
        for (uid, phase) in [
            (None, None),
            (Some("uid-1"), Some(RecreatePhase::Pending)),
            (Some("uid-1"), Some(RecreatePhase::Recreating)),
        ] {
            let next = request("r2", "db-0", uid, phase);
            assert_eq!(orphaned_hold(&pod, &[next]), None, "{uid:?} {phase:?}");
        }
    }

    #[test]
    fn only_holds_the_coordinator_wrote_on_live_pods_are_released() {
        let mut released = held_pod("gone");
        released
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "True".into();
        assert_eq!(orphaned_hold(&released, &[]), None);
        let mut foreign = held_pod("gone");
        foreign
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .reason = Some("ManualHold".into());
        assert_eq!(orphaned_hold(&foreign, &[]), None);
        let mut terminating = held_pod("gone");
        terminating.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH),
        );
        assert_eq!(orphaned_hold(&terminating, &[]), None);
    }

    /// A pod as the API serves it: everything the controllers read, and much they do not.
    fn full_pod(held_by: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "db-2", "namespace": "default", "uid": "uid-2", "resourceVersion": "7",
                "labels": {"app": "db", "apps.kubernetes.io/pod-index": "2"},
                "annotations": {"big": "x".repeat(4096)},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "s1", "controller": true}],
                "managedFields": [{"manager": "kubelet", "operation": "Update"}],
            },
            "spec": {
                "nodeName": "node-1",
                "terminationGracePeriodSeconds": 45,
                "readinessGates": [{"conditionType": READINESS_GATE}],
                "containers": [
                    {"name": "db", "image": "postgres", "env": [{"name": "A", "value": "1"}]},
                    {"name": "exporter", "image": "exporter"},
                ],
                "initContainers": [
                    {"name": "proxy", "image": "proxy", "restartPolicy": "Always"},
                    {"name": "migrate", "image": "migrate"},
                ],
                "volumes": [{"name": "data", "emptyDir": {}}],
            },
            "status": {
                "phase": "Running",
                "podIP": "10.0.0.2",
                "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                    {"type": "PodScheduled", "status": "True"},
                    {"type": READINESS_GATE, "status": "False", "reason": readiness::REASON_HELD,
                     "message": readiness::hold_message("default", held_by)},
                ],
                "containerStatuses": [{"name": "db", "ready": true, "restartCount": 3, "image": "postgres", "imageID": "x"}],
            },
        }))
        .unwrap()
    }

    #[test]
    fn a_pruned_pod_gives_the_controllers_the_same_answers() {
        use crate::rollout::state;
        use relaunch_api::{ContainerShutdown, RollingRestartSpec};
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let full = full_pod("r1");
        let mut pruned = full.clone();
        prune_pod(&mut pruned);
        assert!(pruned.metadata.annotations.is_none() && pruned.metadata.managed_fields.is_none());
        assert!(pruned.spec.as_ref().unwrap().volumes.is_none());
        assert!(pruned.status.as_ref().unwrap().container_statuses.is_none());

        // The rollout's reads.
        assert_eq!(pruned.labels(), full.labels());
        assert_eq!(pruned.uid(), full.uid());
        assert_eq!(state::is_target(&pruned), state::is_target(&full));
        assert_eq!(state::ordinal(&pruned), Some(2));
        assert!(state::is_ready(&pruned));
        assert_eq!(
            state::ready_seconds(&pruned, now),
            state::ready_seconds(&full, now)
        );
        for containers in [
            vec![],
            vec!["exporter".to_string()],
            vec!["proxy".to_string()],
            vec!["migrate".to_string()],
        ] {
            let spec = RollingRestartSpec {
                containers,
                shutdown: vec![ContainerShutdown {
                    container: "db".into(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            assert_eq!(
                state::containers_for(&spec, &pruned),
                state::containers_for(&spec, &full)
            );
        }
        let mut unlabelled = full.clone();
        unlabelled.metadata.labels = None;
        let mut pruned_unlabelled = unlabelled.clone();
        prune_pod(&mut pruned_unlabelled);
        assert_eq!(
            state::ordinal(&pruned_unlabelled),
            Some(2),
            "from the StatefulSet owner"
        );

        // The CRR controllers' reads.
        let crr = request("r1", "db-2", Some("uid-2"), Some(RecreatePhase::Recreating));
        assert_eq!(pod_view(&pruned, &crr), pod_view(&full, &crr));
        assert!(pod_view(&pruned, &crr).gate_held_by_request);
        assert_eq!(pod_view(&pruned, &crr).termination_grace_seconds, Some(45));
        assert_eq!(readiness::holder(&pruned), readiness::holder(&full));
        assert_eq!(orphaned_hold(&pruned, &[]), Some("r1".into()));
        assert_eq!(
            readiness::needs_opening(&pruned),
            readiness::needs_opening(&full)
        );
        let mut ungated = full.clone();
        ungated
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()
            .pop();
        let mut pruned_ungated = ungated.clone();
        prune_pod(&mut pruned_ungated);
        assert!(readiness::needs_opening(&pruned_ungated));
        assert_eq!(
            pruned.spec.as_ref().unwrap().node_name.as_deref(),
            Some("node-1")
        );
    }
}
