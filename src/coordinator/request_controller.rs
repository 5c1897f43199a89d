//! The request controller: admission of new requests and their lifecycle (deadline, pod gone,
//! silent agent, readiness-gate release, TTL). The shared caches feed it; every pass gathers and
//! decides, per request and per gated pod, with the pure functions of [`crate::admission`],
//! [`crate::lifecycle`] and [`crate::readiness`], then applies the [`Action`]s through
//! [`crate::cluster`]; what fails goes to [`crate::error_policy`]. Every write is conditional on
//! the version decided on, so a decision taken on a stale cache fails harmlessly (409) and is
//! taken again on fresh data.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use relaunch_api::{
    ContainerRecreateRequest, ContainerRecreateRequestStatus, LABEL_NODE_NAME, LABEL_POD_UID,
};

use crate::admission::{Admission, admit, has_exec};
use crate::caches::Caches;
use crate::cluster::{object_reference, pod_reference};
use crate::context::Context;
use crate::error::{ClusterError, CoordinatorError};
use crate::error_policy::error_policy;
use crate::events::{self, Event};
use crate::lifecycle::{self, Decision, FailReason, Observed, PodView, Predecessor, decide};
use crate::pods::{CachedPod, PodFacts};
use crate::readiness::{self, GateHolder};

/// Longest sleep between passes (time-based decisions are re-checked at least this often).
const MAX_IDLE: Duration = Duration::from_secs(30);
/// Shortest gap between the starts of two passes, so bursts of watch events are handled
/// together. The first event after a quiet spell is handled at once (see [`wait_before_pass`]).
const MIN_GAP: Duration = Duration::from_millis(50);
/// An action taken on one version of a request is not repeated for this long (the watch
/// normally brings the new version much sooner).
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// Actions run concurrently in one pass.
const CONCURRENCY: usize = 8;
/// How long a new request labelled with its pod's node is left to the agent there: its first
/// report admits the request in the same status write that says `Recreating` (see
/// [`left_to_agent`]). The controller admits it itself when no agent has within this time.
const AGENT_CLAIM: Duration = Duration::from_secs(5);

/// Runs the controller on `caches` until `shutdown`, waking on `notify` for a pass and on
/// `new_request` to admit new requests at once; `synced` fires once both caches are filled.
pub async fn run(
    ctx: Arc<Context>,
    caches: Caches,
    notify: Arc<Notify>,
    new_request: Arc<Notify>,
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

    let mut controller = RequestController {
        ctx,
        requests: caches.requests,
        pods: caches.pods,
        watching_since: Timestamp::now(),
        attempted: HashMap::new(),
        first_seen: HashMap::new(),
    };
    // Passes are throttled (see `wait_before_pass`); admission is not: a new request is
    // admitted as soon as the watch brings it, also while a pass waits for its turn, so that
    // every restart does not wait up to `MIN_GAP` behind other activity.
    let mut due = Instant::now();
    let mut last_pass: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = new_request.notified() => {
                let retry = controller.admit_new().await;
                due = due.min(Instant::now() + retry);
                continue;
            }
            _ = notify.notified() => {}
            _ = tokio::time::sleep_until(due.into()) => {}
        }
        let gap = tokio::time::sleep(wait_before_pass(last_pass, Instant::now()));
        let mut gap = std::pin::pin!(gap);
        loop {
            tokio::select! {
                _ = &mut gap => break,
                _ = new_request.notified() => {
                    controller.admit_new().await;
                }
            }
        }
        last_pass = Some(Instant::now());
        let wake = controller.reconcile_all().await.clamp(MIN_GAP, MAX_IDLE);
        due = Instant::now() + wake;
    }
    Ok(())
}

/// How long a pass that is due `now` waits so that passes start at least [`MIN_GAP`] apart:
/// nothing after a quiet spell (a new request is admitted as soon as the watch brings it), the
/// rest of the gap during a burst (whose events the next pass then handles together).
fn wait_before_pass(last_pass: Option<Instant>, now: Instant) -> Duration {
    last_pass.map_or(Duration::ZERO, |last| {
        MIN_GAP.saturating_sub(now.saturating_duration_since(last))
    })
}

/// One thing to do for one request or pod.
enum Action {
    /// A request without status: admit or refuse it.
    Admit(Arc<ContainerRecreateRequest>),
    /// Carry out a lifecycle decision (never [`Decision::Wait`]), taken on this version of the
    /// request's pod (if it exists).
    Lifecycle(
        Arc<ContainerRecreateRequest>,
        Decision,
        Option<Arc<CachedPod>>,
    ),
    /// A pod with the `relaunch.dev/ready` gate but no condition yet.
    OpenGate(Arc<CachedPod>),
    /// A pod held NotReady by a request that is gone.
    ReleaseGoneHolder(Arc<CachedPod>, GateHolder),
}

/// Which requests a decision looks at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Every request (a pass).
    All,
    /// Only requests without status, to admit (between passes).
    New,
}

/// An action that failed: what was being done, on which object, and why.
struct Failure {
    action: &'static str,
    object: String,
    error: ClusterError,
}

impl Failure {
    fn on_request(
        action: &'static str,
        crr: &ContainerRecreateRequest,
        error: ClusterError,
    ) -> Self {
        Self {
            action,
            object: format!("ContainerRecreateRequest {}", describe(crr)),
            error,
        }
    }

    fn on_pod(action: &'static str, pod: &impl PodFacts, error: ClusterError) -> Self {
        Self {
            action,
            object: format!(
                "Pod {}/{}",
                pod.namespace().unwrap_or_default(),
                pod.name_any()
            ),
            error,
        }
    }
}

struct RequestController {
    ctx: Arc<Context>,
    requests: Store<ContainerRecreateRequest>,
    pods: Store<CachedPod>,
    watching_since: Timestamp,
    /// What was last attempted per request or pod UID: (request version, pod version, when).
    attempted: HashMap<String, (String, String, Instant)>,
    /// When each request left to its agent (without status) was first seen.
    first_seen: HashMap<String, Instant>,
}

impl RequestController {
    /// Decides for every request and gated pod, applies the actions, hands what failed to the
    /// error policy; returns how long until a pass is due.
    async fn reconcile_all(&mut self) -> Duration {
        let now = Timestamp::now();
        let all = self.requests.state();
        let pods = self.pods.state();
        let (mut actions, next) = self.decide_requests(&all, now, Scope::All);
        actions.extend(self.decide_pods(&pods, &all));
        let next = next.min(self.apply_all(actions).await);

        let mut live: HashSet<String> = all.iter().filter_map(|c| c.uid()).collect();
        live.extend(pods.iter().filter_map(|p| p.uid()));
        self.attempted.retain(|uid, _| live.contains(uid));
        let new: HashSet<String> = (all.iter())
            .filter(|c| c.status.is_none())
            .filter_map(|c| c.uid())
            .collect();
        self.first_seen.retain(|uid, _| new.contains(uid));
        self.ctx.heartbeats.retain(|uid| live.contains(uid));
        next
    }

    /// Admits (or refuses) the requests without status, outside a pass; returns how long until
    /// a failed admission should be tried again or a request left to its agent is due
    /// ([`MAX_IDLE`] if neither).
    async fn admit_new(&mut self) -> Duration {
        let all = self.requests.state();
        let (actions, next) = self.decide_requests(&all, Timestamp::now(), Scope::New);
        next.min(self.apply_all(actions).await)
    }

    /// Applies `actions` concurrently and hands what failed to the error policy; returns the
    /// shortest retry delay it asked for ([`MAX_IDLE`] if none).
    async fn apply_all(&self, actions: Vec<Action>) -> Duration {
        let ctx = &self.ctx;
        let failures: Vec<Failure> = futures::stream::iter(actions)
            .map(|action| apply(ctx, action))
            .buffer_unordered(CONCURRENCY)
            .filter_map(|result| std::future::ready(result.err()))
            .collect()
            .await;
        let mut next = MAX_IDLE;
        for failure in failures {
            let retry = error_policy(
                &ctx.metrics,
                failure.action,
                &failure.object,
                &failure.error,
            );
            if let Some(delay) = retry.delay() {
                next = next.min(delay);
            }
        }
        next
    }

    /// What to do for each request, and how long until a time-based decision is due. An action
    /// already taken on the same versions of the request and its pod is not repeated within
    /// [`RETRY_AFTER`].
    fn decide_requests(
        &mut self,
        all: &[Arc<ContainerRecreateRequest>],
        now: Timestamp,
        scope: Scope,
    ) -> (Vec<Action>, Duration) {
        let mut next = MAX_IDLE;
        let mut actions = Vec::new();
        for crr in all {
            if scope == Scope::New && crr.status.is_some() {
                continue;
            }
            let uid = crr.uid().unwrap_or_default();
            let pod = self.pod_of(crr);
            let action = if held_by_scaledown(crr, pod.as_deref(), &self.ctx.leaving) {
                // Not admitted (so no agent acts on it) while a ScaleDown decommissions the
                // pod: the pod either leaves (admission then fails the request: pod gone) or
                // stays (a cancel), and the request runs. Its agent's claim was refused (409)
                // meanwhile: the time left to the agent runs from now, not from the release.
                self.first_seen.entry(uid).or_insert_with(Instant::now);
                next = next.min(Duration::from_secs(2));
                continue;
            } else if crr.status.is_none() {
                if left_to_agent(crr, pod.as_deref()) {
                    let seen = *self
                        .first_seen
                        .entry(uid.clone())
                        .or_insert_with(Instant::now);
                    let left = AGENT_CLAIM.saturating_sub(seen.elapsed());
                    if !left.is_zero() {
                        next = next.min(left);
                        continue;
                    }
                }
                Action::Admit(crr.clone())
            } else {
                let observed = Observed {
                    request: crr,
                    pod: pod.as_deref().map(|p| pod_view(p, crr)),
                    predecessor: predecessor(crr, all),
                    last_report: self.ctx.heartbeats.last(&uid),
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
                    decision => Action::Lifecycle(crr.clone(), decision, pod.clone()),
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
                // Time passes between the check and here: never subtract past zero.
                next = next.min(RETRY_AFTER.saturating_sub(at.elapsed()));
                continue;
            }
            self.attempted.insert(uid, (key.0, key.1, Instant::now()));
            actions.push(action);
        }
        (actions, next)
    }

    /// What to do for gated pods nobody holds: open a gate never set, release a hold whose
    /// request is gone (each not repeated on the same pod version within [`RETRY_AFTER`]).
    fn decide_pods(
        &mut self,
        pods: &[Arc<CachedPod>],
        all: &[Arc<ContainerRecreateRequest>],
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        for pod in pods {
            let action = if readiness::needs_opening(&**pod) {
                Action::OpenGate(pod.clone())
            } else if let Some(holder) = orphaned_hold(&**pod, all) {
                Action::ReleaseGoneHolder(pod.clone(), holder)
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
            actions.push(action);
        }
        actions
    }

    fn pod_of(&self, crr: &ContainerRecreateRequest) -> Option<Arc<CachedPod>> {
        let ns = crr.namespace()?;
        self.pods
            .get(&ObjectRef::new(&crr.spec.pod_name).within(&ns))
    }
}

/// Whether the agent on the node of `crr`'s pod sees `crr` and may admit it with its first
/// report: it is labelled with the node `pod` runs on and, if it names one, with `pod`'s UID
/// (what the agent's own check of the request's pod asks for).
fn left_to_agent(crr: &ContainerRecreateRequest, pod: Option<&CachedPod>) -> bool {
    let Some(pod) = pod else {
        return false;
    };
    let labels = crr.labels();
    labels
        .get(LABEL_NODE_NAME)
        .is_some_and(|node| pod.node_name() == Some(node.as_str()))
        && labels
            .get(LABEL_POD_UID)
            .is_none_or(|uid| pod.uid().as_deref() == Some(uid.as_str()))
}

/// Whether `crr` is not admitted yet and its pod is one a ScaleDown is decommissioning.
pub fn held_by_scaledown(
    crr: &ContainerRecreateRequest,
    pod: Option<&CachedPod>,
    leaving: &crate::scaledown::leaving::LeavingPods,
) -> bool {
    crr.status.is_none()
        && pod
            .and_then(|p| p.uid())
            .is_some_and(|uid| leaving.held_by(&uid).is_some())
}

/// Applies one action through the cluster adapter.
async fn apply(ctx: &Context, action: Action) -> Result<(), Failure> {
    match action {
        Action::Admit(crr) => admit_request(ctx, &crr).await,
        Action::Lifecycle(crr, decision, pod) => {
            carry_out(ctx, &crr, decision, pod.as_deref()).await
        }
        Action::OpenGate(pod) => ctx
            .cluster
            .open_gate(&*pod)
            .await
            .map_err(|e| Failure::on_pod("opening the readiness gate", &*pod, e)),
        Action::ReleaseGoneHolder(pod, holder) => release_gone_holder(ctx, &pod, &holder).await,
    }
}

/// The request as the holder of its pod's readiness gate.
fn holder_of(crr: &ContainerRecreateRequest) -> GateHolder {
    GateHolder::new(&crr.namespace().unwrap_or_default(), &crr.name_any())
}

fn pod_view(pod: &impl PodFacts, crr: &ContainerRecreateRequest) -> PodView {
    PodView {
        uid: pod.uid().unwrap_or_default(),
        termination_grace_seconds: pod.termination_grace_period_seconds(),
        gate_held_by_request: readiness::is_held_by(pod, &holder_of(crr)),
    }
}

/// The request named as holding `pod` NotReady when no request in the cache can release the
/// pod any more: the holder is not there (deleted before it finished), and no other unfinished
/// request of the pod is either (it may be about to hold the pod itself; once it finishes, the
/// pod is released). A holder that is still there releases the gate itself once finished.
fn orphaned_hold(
    pod: &impl PodFacts,
    requests: &[Arc<ContainerRecreateRequest>],
) -> Option<GateHolder> {
    if pod.meta().deletion_timestamp.is_some() {
        return None;
    }
    let holder = readiness::holder(pod)?;
    let pod_ns = pod.namespace().unwrap_or_default();
    let pod_uid = pod.uid().unwrap_or_default();
    if holder.namespace != pod_ns {
        return None;
    }
    let blocked = requests.iter().any(|r| {
        if r.namespace().as_deref() != Some(pod_ns.as_str()) {
            return false;
        }
        if r.name_any() == holder.name {
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
async fn release_gone_holder(
    ctx: &Context,
    pod: &CachedPod,
    holder: &GateHolder,
) -> Result<(), Failure> {
    let pod_name = pod.name_any();
    // The cache may lag behind a request just created (or re-created under the same name):
    // ask the API before releasing.
    let found = ctx
        .cluster
        .get_request(&holder.namespace, &holder.name)
        .await
        .map_err(|e| Failure::on_pod("checking the request holding the readiness gate", pod, e))?;
    if found.is_some() {
        return Ok(());
    }
    let rv = pod.resource_version().unwrap_or_default();
    ctx.cluster
        .release_gone_holder(&pod_name, holder, &rv)
        .await
        .map_err(|e| Failure::on_pod("releasing the readiness gate", pod, e))?;
    tracing::info!(pod = %format!("{}/{pod_name}", holder.namespace), request = %holder.name, "readiness gate released: the request holding it was deleted");
    let event = events::gate_released_holder_gone(&holder.namespace, &holder.name, &pod_name);
    ctx.cluster.record_on(object_reference(pod), vec![event]);
    Ok(())
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

/// Admits a new request: labels and Pending, or Failed with what to fix.
async fn admit_request(ctx: &Context, crr: &ContainerRecreateRequest) -> Result<(), Failure> {
    let ns = crr.namespace().unwrap_or_default();
    let pod = ctx
        .cluster
        .get_pod(&ns, &crr.spec.pod_name)
        .await
        .map_err(|e| Failure::on_request("reading the pod for admission", crr, e))?;
    // Exec actions wait until the exec policy is known (the watches list once at start).
    let Some(exec) = ctx
        .exec_policy
        .verdict()
        .or_else(|| (!has_exec(crr)).then(|| ctx.exec_policy.current()))
    else {
        tracing::debug!(request = %describe(crr), "admission waits: the exec admission policies are not read yet");
        return Ok(());
    };
    match admit(crr, pod.as_ref(), &exec) {
        Admission::Admit { labels } => {
            let labelled = if labels.is_empty() {
                crr.clone()
            } else {
                ctx.cluster
                    .add_labels(crr, &labels)
                    .await
                    .map_err(|e| Failure::on_request("labelling", crr, e))?
            };
            let status = ContainerRecreateRequestStatus {
                observed_generation: crr.metadata.generation,
                admitted_generation: crr.metadata.generation,
                ..Default::default()
            };
            ctx.cluster
                .write_status(&labelled, labelled.status.as_ref(), &status)
                .await
                .map_err(|e| Failure::on_request("admission", crr, e))?;
            tracing::info!(request = %describe(crr), pod = %crr.spec.pod_name, "admitted");
        }
        Admission::Refuse { message } => {
            let status = lifecycle::failed(&[], None, &message, Timestamp::now());
            ctx.cluster
                .write_status(crr, crr.status.as_ref(), &status)
                .await
                .map_err(|e| Failure::on_request("refusal", crr, e))?;
            tracing::info!(request = %describe(crr), %message, "refused");
            ctx.metrics.crrs.with_label_values(&["refused"]).inc();
            let pod_ref = pod.as_ref().map(object_reference);
            ctx.cluster
                .record(crr, pod_ref, vec![Event::warning("Refused", message)]);
        }
    }
    Ok(())
}

/// Carries out a lifecycle decision, taken on `pod` (the cached version of the request's pod).
async fn carry_out(
    ctx: &Context,
    crr: &ContainerRecreateRequest,
    decision: Decision,
    pod: Option<&CachedPod>,
) -> Result<(), Failure> {
    match decision {
        Decision::Wait(_) => {}
        Decision::Fail { reason, message } => {
            if reason == FailReason::PodGone && pod_still_there(ctx, crr).await {
                return Ok(());
            }
            let status = lifecycle::failed(
                &crr.spec.containers,
                crr.status.as_ref(),
                &message,
                Timestamp::now(),
            );
            ctx.cluster
                .write_status(crr, crr.status.as_ref(), &status)
                .await
                .map_err(|e| Failure::on_request("failing the request", crr, e))?;
            tracing::info!(request = %describe(crr), %message, "failed");
            ctx.metrics
                .crrs
                .with_label_values(&[reason.metric_result()])
                .inc();
            let event = Event::warning(reason.event_reason(), message);
            ctx.cluster.record(crr, pod_reference(crr), vec![event]);
        }
        Decision::ReleaseGate => {
            // Decided on the cached pod: the release applies to that version only (409
            // otherwise, and the next pass decides again on the pod as it is then), so it never
            // undoes a hold a newer request took meanwhile.
            let Some(pod) = pod else { return Ok(()) };
            ctx.cluster
                .set_gate(pod, true, &holder_of(crr))
                .await
                .map_err(|e| Failure::on_request("releasing the readiness gate", crr, e))?;
            tracing::info!(request = %describe(crr), "readiness gate released");
            let event = events::gate_released_after_finish(&crr.spec.pod_name);
            ctx.cluster.record(crr, pod_reference(crr), vec![event]);
        }
        Decision::Delete => {
            ctx.cluster
                .delete_request(crr)
                .await
                .map_err(|e| Failure::on_request("TTL deletion", crr, e))?;
            tracing::info!(request = %describe(crr), "deleted after ttlSecondsAfterFinished");
        }
    }
    Ok(())
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

    #[test]
    fn the_first_event_after_a_quiet_spell_is_handled_at_once() {
        let now = Instant::now();
        assert_eq!(wait_before_pass(None, now), Duration::ZERO);
        let long_ago = now.checked_sub(Duration::from_secs(5)).unwrap();
        assert_eq!(wait_before_pass(Some(long_ago), now), Duration::ZERO);
        let just_over = now.checked_sub(MIN_GAP).unwrap();
        assert_eq!(wait_before_pass(Some(just_over), now), Duration::ZERO);
    }

    #[test]
    fn events_during_a_burst_wait_for_the_rest_of_the_gap() {
        let now = Instant::now();
        let recent = now.checked_sub(Duration::from_millis(20)).unwrap();
        assert_eq!(
            wait_before_pass(Some(recent), now),
            MIN_GAP - Duration::from_millis(20)
        );
        assert_eq!(wait_before_pass(Some(now), now), MIN_GAP);
        // A clock read before the last pass started (never after it) waits the whole gap.
        let later = now + Duration::from_millis(5);
        assert_eq!(wait_before_pass(Some(later), now), MIN_GAP);
    }

    #[test]
    fn a_request_for_a_pod_a_scaledown_holds_is_not_admitted() {
        let leaving = crate::scaledown::leaving::LeavingPods::default();
        let pod: CachedPod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db-2", "namespace": "default", "uid": "uid-2"},
        }))
        .unwrap();
        let crr = ContainerRecreateRequest::new(
            "r",
            relaunch_api::ContainerRecreateRequestSpec {
                pod_name: "db-2".into(),
                ..Default::default()
            },
        );
        assert!(!held_by_scaledown(&crr, Some(&pod), &leaving));
        leaving.set(HashMap::from([("uid-2".into(), "default/sd".into())]));
        assert!(held_by_scaledown(&crr, Some(&pod), &leaving));
        assert!(
            !held_by_scaledown(&crr, None, &leaving),
            "pod gone: admission fails it"
        );
        let mut admitted = crr.clone();
        admitted.status = Some(Default::default());
        assert!(!held_by_scaledown(&admitted, Some(&pod), &leaving));
    }

    #[test]
    fn only_a_request_labelled_for_its_pods_node_and_uid_is_left_to_the_agent() {
        let pod: CachedPod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db-0", "namespace": "default", "uid": "uid-1"},
            "spec": {"nodeName": "node-1"},
        }))
        .unwrap();
        let labelled = |labels: &[(&str, &str)]| {
            let mut crr = ContainerRecreateRequest::new(
                "r",
                ContainerRecreateRequestSpec {
                    pod_name: "db-0".into(),
                    ..Default::default()
                },
            );
            crr.metadata.labels = Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
            crr
        };
        let node = (LABEL_NODE_NAME, "node-1");
        assert!(left_to_agent(&labelled(&[node]), Some(&pod)));
        assert!(left_to_agent(
            &labelled(&[node, (LABEL_POD_UID, "uid-1")]),
            Some(&pod)
        ));
        // No agent sees it, or the agent there does not take it as this pod's request.
        assert!(!left_to_agent(&labelled(&[]), Some(&pod)));
        assert!(!left_to_agent(
            &labelled(&[(LABEL_NODE_NAME, "node-2")]),
            Some(&pod)
        ));
        assert!(!left_to_agent(
            &labelled(&[node, (LABEL_POD_UID, "uid-old")]),
            Some(&pod)
        ));
        assert!(!left_to_agent(&labelled(&[node]), None), "pod gone");
    }
    use super::*;
    use crate::pods::CachedPod;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::core::v1::{PodCondition, PodReadinessGate, PodSpec, PodStatus};
    use relaunch_api::READINESS_GATE;
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
                message: Some(GateHolder::new("default", holder).message()),
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
        assert_eq!(
            orphaned_hold(&pod, &[]),
            Some(GateHolder::new("default", "gone"))
        );
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
            Some(GateHolder::new("default", "gone")),
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
        fn gate(pod: &mut Pod) -> &mut PodCondition {
            &mut pod.status.as_mut().unwrap().conditions.as_mut().unwrap()[0]
        }
        let mut released = held_pod("gone");
        gate(&mut released).status = "True".into();
        assert_eq!(orphaned_hold(&released, &[]), None);
        let mut foreign = held_pod("gone");
        gate(&mut foreign).reason = Some("ManualHold".into());
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
                     "message": GateHolder::new("default", held_by).message()},
                ],
                "containerStatuses": [{"name": "db", "ready": true, "restartCount": 3, "image": "postgres", "imageID": "x"}],
            },
        }))
        .unwrap()
    }

    /// Variants of [`full_pod`] that change an answer some controller reads.
    fn variants() -> Vec<(&'static str, Pod)> {
        let full = full_pod("r1");
        let with = |what: &'static str, change: &dyn Fn(&mut Pod)| {
            let mut pod = full.clone();
            change(&mut pod);
            (what, pod)
        };
        fn conditions(p: &mut Pod) -> &mut Vec<PodCondition> {
            p.status.as_mut().unwrap().conditions.as_mut().unwrap()
        }
        vec![
            ("as served", full.clone()),
            with("no gate condition", &|p| {
                conditions(p).pop();
            }),
            with("gate released", &|p| {
                let gate = conditions(p).last_mut().unwrap();
                gate.status = "True".into();
                gate.reason = None;
            }),
            with("held by another request", &|p| {
                conditions(p).last_mut().unwrap().message =
                    Some(GateHolder::new("default", "r2").message());
            }),
            with("not ready", &|p| conditions(p)[0].status = "False".into()),
            with("no conditions", &|p| {
                p.status.as_mut().unwrap().conditions = None
            }),
            with("no labels", &|p| p.metadata.labels = None),
            with("no labels, no owner", &|p| {
                p.metadata.labels = None;
                p.metadata.owner_references = None;
            }),
            with("terminating", &|p| {
                p.metadata.deletion_timestamp = Some(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH),
                )
            }),
            with("not scheduled", &|p| {
                p.spec.as_mut().unwrap().node_name = None
            }),
            with("succeeded", &|p| {
                p.status.as_mut().unwrap().phase = Some("Succeeded".into())
            }),
            with("ungated", &|p| {
                p.spec.as_mut().unwrap().readiness_gates = None
            }),
            with("no grace period", &|p| {
                p.spec.as_mut().unwrap().termination_grace_period_seconds = None
            }),
            with("no sidecars", &|p| {
                p.spec.as_mut().unwrap().init_containers = None
            }),
            with("no status", &|p| p.status = None),
        ]
    }

    #[test]
    fn the_cached_projection_gives_the_controllers_the_same_answers_as_the_full_pod() {
        use crate::rollout::state;
        use relaunch_api::{ContainerShutdown, RollingRestartSpec};
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let crr = request("r1", "db-2", Some("uid-2"), Some(RecreatePhase::Recreating));
        for (what, full) in variants() {
            let cached = CachedPod::from(&full);
            // What the watch hands the cache: parsed from the API's JSON, then pruned.
            let mut watched: CachedPod =
                serde_json::from_value(serde_json::to_value(&full).unwrap()).unwrap();
            watched.prune();
            assert_eq!(watched, cached, "{what}");
            assert!(cached.metadata.annotations.is_none(), "{what}");
            assert!(cached.metadata.managed_fields.is_none(), "{what}");

            // The rollout's reads.
            assert_eq!(&cached.labels().to_map(), full.labels(), "{what}");
            assert!(cached.metadata.labels.is_none(), "{what}: labels moved out");
            assert_eq!(cached.uid(), full.uid(), "{what}");
            assert_eq!(cached.resource_version(), full.resource_version(), "{what}");
            assert_eq!(state::is_target(&cached), state::is_target(&full), "{what}");
            assert_eq!(state::ordinal(&cached), state::ordinal(&full), "{what}");
            assert_eq!(state::is_ready(&cached), state::is_ready(&full), "{what}");
            assert_eq!(
                state::ready_seconds(&cached, now),
                state::ready_seconds(&full, now),
                "{what}"
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
                    state::containers_for(&spec, &cached),
                    state::containers_for(&spec, &full),
                    "{what}"
                );
            }
            assert_eq!(
                ContainerRecreateRequest::for_pod_of(&cached.metadata, cached.node_name())
                    .build()
                    .metadata
                    .labels,
                ContainerRecreateRequest::for_pod(&full)
                    .build()
                    .metadata
                    .labels,
                "{what}"
            );

            // The request controller's reads.
            assert_eq!(pod_view(&cached, &crr), pod_view(&full, &crr), "{what}");
            assert_eq!(
                readiness::holder(&cached),
                readiness::holder(&full),
                "{what}"
            );
            assert_eq!(
                orphaned_hold(&cached, &[]),
                orphaned_hold(&full, &[]),
                "{what}"
            );
            assert_eq!(
                readiness::needs_opening(&cached),
                readiness::needs_opening(&full),
                "{what}"
            );
            for ready in [true, false] {
                for holder in ["r1", "r2"] {
                    let holder = GateHolder::new("default", holder);
                    assert_eq!(
                        readiness::gate_change(&cached, ready, &holder),
                        readiness::gate_change(&full, ready, &holder),
                        "{what}"
                    );
                }
            }

            // The ScaleDown controller's reads.
            assert_eq!(cached.node_name(), full.node_name(), "{what}");
            assert_eq!(cached.phase(), full.phase(), "{what}");
            assert_eq!(
                cached.condition("Ready").map(|c| &c.status),
                full.condition("Ready").map(|c| &c.status),
                "{what}"
            );
            assert_eq!(
                cached.regular_containers(),
                full.regular_containers(),
                "{what}"
            );
            assert_eq!(cached.owner_references(), full.owner_references(), "{what}");
        }
        // The table covers each answer both ways.
        let answers = |f: &dyn Fn(&Pod) -> bool| {
            variants()
                .iter()
                .map(|(_, p)| f(p))
                .collect::<HashSet<_>>()
                .len()
        };
        assert_eq!(answers(&|p| state::is_target(p)), 2);
        assert_eq!(answers(&|p| state::is_ready(p)), 2);
        assert_eq!(answers(&|p| state::ordinal(p).is_some()), 2);
        assert_eq!(answers(&|p| readiness::needs_opening(p)), 2);
        assert_eq!(answers(&|p| orphaned_hold(p, &[]).is_some()), 2);
        assert_eq!(answers(&|p| pod_view(p, &crr).gate_held_by_request), 2);
    }
}
