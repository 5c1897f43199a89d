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
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::api::{
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

/// Runs the controllers until `shutdown`; `synced` fires once both caches are filled.
pub async fn run(
    ctx: Arc<Context>,
    synced: oneshot::Sender<()>,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let client = ctx.cluster.client().clone();
    let notify = Arc::new(Notify::new());

    let (requests, writer) = reflector::store::<ContainerRecreateRequest>();
    let stream = watcher(Api::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    let request_watch = tokio::spawn(drive("containerrecreaterequests", stream, notify.clone()));

    let (pods, writer) = reflector::store::<Pod>();
    let stream = watcher(Api::<Pod>::all(client), watcher::Config::default())
        .default_backoff()
        .modify(prune_pod)
        .reflect(writer);
    let pod_watch = tokio::spawn(drive("pods", stream, notify.clone()));

    let result = tokio::select! {
        _ = shutdown.cancelled() => None,
        r = async { tokio::try_join!(requests.wait_until_ready(), pods.wait_until_ready()) } => Some(r),
    };
    match result {
        None => {
            request_watch.abort();
            pod_watch.abort();
            return Ok(());
        }
        Some(Err(_)) => return Err(CoordinatorError::ControllersStopped),
        Some(Ok(_)) => {
            let _ = synced.send(());
        }
    }

    let mut worker = Worker {
        ctx,
        requests,
        pods,
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
    request_watch.abort();
    pod_watch.abort();
    Ok(())
}

/// Drives a watch stream (its reflector fills the cache) and wakes the worker on every change.
async fn drive<S, K>(what: &'static str, stream: S, notify: Arc<Notify>)
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream.into_stream());
    while let Some(item) = stream.next().await {
        match item {
            Ok(_) => notify.notify_one(),
            Err(e) => tracing::warn!(resource = what, error = %e, "watch failed; retrying"),
        }
    }
}

/// Keeps only what the controllers read of a pod, so the cache stays small as the cluster grows.
fn prune_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.metadata.labels = None;
    pod.metadata.owner_references = None;
    pod.metadata.finalizers = None;
    let spec = pod.spec.take().unwrap_or_default();
    pod.spec = Some(PodSpec {
        node_name: spec.node_name,
        termination_grace_period_seconds: spec.termination_grace_period_seconds,
        readiness_gates: spec.readiness_gates,
        ..Default::default()
    });
    let status = pod.status.take().unwrap_or_default();
    pod.status = Some(PodStatus {
        phase: status.phase,
        conditions: status.conditions.map(|c| {
            c.into_iter()
                .filter(|c| c.type_ == READINESS_GATE)
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
            if !readiness::needs_opening(&pod) {
                continue;
            }
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
            jobs.push(Job::OpenGate(pod));
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
