//! One rollout's reconciliation, decided in pure code: from what the controller observed (the
//! rollout, its namespace's pods and budgets, its requests, what the controller remembers of its
//! own writes) to the [`Action`]s it applies, in order, through the cluster adapter — and the
//! same for the workload trigger. The rules themselves are in [`super::state`] and
//! [`super::planner`]; this module puts them in order and says what is written and told.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;

use crate::pods::{CachedPod, PodFacts, PodSelector};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::core::Selector;
use kube::{Resource, ResourceExt};

use crate::exec_policy::ExecPolicy;
use relaunch_api::validation::{InvalidRollout, validate_rollout, validate_rollout_name};
use relaunch_api::{
    ANNOTATION_RESTART_AT, CONDITION_PROGRESSING, ContainerRecreateRequest, LABEL_ROLLING_RESTART,
    RecreatePhase, RollingRestart, RollingRestartStatus, RolloutPhase, WorkloadKind,
};

use super::planner::{self, Budget, TargetPod};
use super::state::{self, ConditionReason, Step};
use super::trigger;
use crate::events::Event;

/// Progress alone (counts, per-pod results, see [`counts_only`]) is written at most this often
/// per rollout: a batch's start, a pause, a failure and the end are written at once. The durable
/// state is in the requests (a new leader recomputes the counts); 5 s keeps `kubectl get` close
/// behind while a 50-pod batch costs a handful of status writes rather than one per pod.
pub const COUNTS_INTERVAL: Duration = Duration::from_secs(5);

/// What the controller observed for one rollout: plain data, gathered from the caches and from
/// its memory of its own writes.
#[derive(Debug, Clone)]
pub struct Observed {
    pub rollout: Arc<RollingRestart>,
    /// The target's selector and its description (`Kind/name` or `selector`), or a message
    /// saying which workload is missing.
    pub target: Result<(LabelSelector, String), String>,
    /// The pods of the rollout's namespace.
    pub pods: Vec<Arc<CachedPod>>,
    /// The requests this rollout created (its label and its owner reference).
    pub requests: Vec<Arc<ContainerRecreateRequest>>,
    /// The unfinished requests of the rollout's namespace it did not create (manual ones,
    /// another rollout's): the pods they restart count as unavailable and are not started.
    pub others: Vec<Arc<ContainerRecreateRequest>>,
    /// The PodDisruptionBudgets of the rollout's namespace.
    pub budgets: Vec<Arc<PodDisruptionBudget>>,
    /// UIDs of the pods ScaleDowns are decommissioning: busy, never started.
    pub leaving: std::collections::HashSet<String>,
    /// The requests of the last batch are not all in the cache yet: it cannot be planned on.
    pub settling: bool,
    /// The cache still shows the version this replica's last status write replaced: acting on
    /// it would decide again what was just written (and the write would fail with 409).
    pub behind_own_write: bool,
    /// How long ago this replica last wrote the status (none: not since it leads).
    pub since_written: Option<Duration>,
    /// Whether exec actions may be admitted (none: not known yet, the watches have not listed).
    pub exec_policy: Option<ExecPolicy>,
    pub now: Timestamp,
}

/// What a reconciliation decided.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// What the rollout adds to the `relaunch_rollout_*` gauges (none: not counted this pass).
    pub counts: Option<RolloutCounts>,
    /// What to do, in order; an [`Action::Pause`] or [`Action::StartBatch`] that does not
    /// succeed ends the list.
    pub actions: Vec<Action>,
}

/// One rollout's share of the rollout gauges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutCounts {
    /// Target pods by `state` label.
    pub pods: [(&'static str, i64); 4],
    /// Why it cannot start a batch (none: it can).
    pub blocked: Option<ConditionReason>,
}

/// One thing the controller does for a rollout.
#[derive(Debug)]
pub enum Action {
    /// Set `spec.strategy.paused` (failures pause a rollout through the user's own switch, so a
    /// new leader sees the pause in the spec). What follows happens only once it is set.
    Pause,
    /// Create the batch's requests; what follows comes from [`Batch::started`], and nothing
    /// follows when no request could be created.
    StartBatch(Batch),
    /// Record an Event on the rollout.
    Record(Event),
    /// Write the status, at the version read; `completed` is observed once it is written.
    WriteStatus {
        status: RollingRestartStatus,
        completed: Option<Completed>,
    },
    /// A status change of progress counts only is held back: reconcile again after this long.
    RequeueAfter(Duration),
}

/// A rollout's end, for `relaunch_rollout_duration_seconds`.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    /// `succeeded` or `failed`.
    pub result: &'static str,
    pub seconds: f64,
}

/// A batch to start: its requests, and what follows once they are created.
#[derive(Debug)]
pub struct Batch {
    /// The pods of the batch.
    pub pods: Vec<String>,
    /// One request per pod (deterministic names: a repeated creation meets AlreadyExists).
    pub requests: Vec<ContainerRecreateRequest>,
    /// What follows when every request is created.
    then: Vec<Action>,
}

impl Batch {
    /// What follows once `created` of the requests were created (at least one): a request that
    /// could not be created is not in progress, and the next pass starts its pod again.
    pub fn started(self, created: usize) -> Vec<Action> {
        let missing = self.requests.len().saturating_sub(created) as i32;
        self.then
            .into_iter()
            .map(|action| match action {
                Action::WriteStatus {
                    mut status,
                    completed,
                } => {
                    status.in_progress -= missing;
                    Action::WriteStatus { status, completed }
                }
                other => other,
            })
            .collect()
    }
}

/// How a status is written: only when it changed, counts-only changes coalesced, the end of a
/// rollout observed once.
struct StatusWriter<'a> {
    previous: &'a RollingRestartStatus,
    has_status: bool,
    since_written: Option<Duration>,
}

impl StatusWriter<'_> {
    /// Writes `status` when it differs from what is there.
    fn write(&self, status: RollingRestartStatus, completed: Option<Completed>) -> Option<Action> {
        (status != *self.previous || !self.has_status)
            .then_some(Action::WriteStatus { status, completed })
    }

    /// A terminal status: an Event if `announce` and the phase changed, the write, the duration.
    fn finish(&self, status: RollingRestartStatus, announce: bool) -> Vec<Action> {
        let mut actions = Vec::new();
        if announce && self.previous.phase != status.phase {
            actions.push(Action::Record(phase_event(&status)));
        }
        let completed = completion(&status);
        actions.extend(self.write(status, completed));
        actions
    }

    /// The Events, the status and its write after `step` (counts already in `status`).
    fn after_step(
        &self,
        mut status: RollingRestartStatus,
        step: &Step,
        generation: Option<i64>,
        now: Timestamp,
    ) -> Vec<Action> {
        let mut actions: Vec<Action> = pod_failure_events(self.previous, &status)
            .into_iter()
            .map(Action::Record)
            .collect();
        state::apply_step(&mut status, step, generation, now);
        if status.phase != self.previous.phase {
            actions.push(Action::Record(phase_event(&status)));
        }
        if matches!(step, Step::Fail(_) | Step::Succeed) {
            actions.extend(self.finish(status, false));
            return actions;
        }
        // Progress counts alone are coalesced; anything else is written at once.
        if let Some(since) = self.since_written
            && self.has_status
            && counts_only(self.previous, &status)
            && since < COUNTS_INTERVAL
        {
            actions.push(Action::RequeueAfter(COUNTS_INTERVAL - since));
            return actions;
        }
        actions.extend(self.write(status, None));
        actions
    }
}

/// Decides what to do for one rollout that is neither Succeeded nor Failed.
pub fn reconcile(o: &Observed) -> Reconciled {
    let rollout = &o.rollout;
    let spec = &rollout.spec;
    let generation = rollout.metadata.generation;
    let previous = rollout.status.clone().unwrap_or_default();
    let writer = StatusWriter {
        previous: &previous,
        has_status: rollout.status.is_some(),
        since_written: o.since_written,
    };
    let fail = |invalid: &InvalidRollout| Reconciled {
        counts: None,
        actions: writer.finish(
            state::failed_status(&previous, invalid, generation, o.now),
            true,
        ),
    };
    if let Err(invalid) =
        validate_rollout_name(&rollout.name_any()).and_then(|()| validate_rollout(spec))
    {
        return fail(&invalid);
    }
    // Fail closed: a rollout with exec actions fails while the API server does not authorize
    // them like kubectl exec (before it starts or between batches; requests already created
    // run on), and waits while that is not known yet.
    if spec.shutdown.iter().any(|s| s.action.exec.is_some()) {
        match &o.exec_policy {
            None => return Reconciled::default(),
            Some(ExecPolicy::Missing(message)) => {
                return fail(&InvalidRollout::ExecNotAuthorized(message.clone()));
            }
            Some(ExecPolicy::Enforced) => {}
        }
    }
    let (selector, target) = match &o.target {
        Ok(found) => found.clone(),
        Err(missing) => {
            // The workload may be created later: wait, saying what is missing (abort and pause
            // still apply).
            let status = state::waiting_for_target(spec, &previous, missing, generation, o.now);
            if status.phase == RolloutPhase::Failed {
                return fail_with(writer.finish(status, true));
            }
            let mut actions = Vec::new();
            if status.phase != previous.phase {
                actions.push(Action::Record(phase_event(&status)));
            }
            actions.extend(writer.write(status, None));
            return fail_with(actions);
        }
    };
    let Ok(selector) = Selector::try_from(selector).map(PodSelector::from) else {
        return fail(&InvalidRollout::InvalidSelector);
    };
    let mut targets: Vec<&Arc<CachedPod>> = o
        .pods
        .iter()
        .filter(|p| selector.matches(&***p) && state::is_target(&***p))
        .collect();
    targets.sort_by_key(|p| p.name_any());
    let mut containers = BTreeMap::new();
    for pod in &targets {
        match state::containers_for(spec, &***pod) {
            Ok(c) => {
                containers.insert(pod.name_any(), c);
            }
            Err(invalid) => return fail(&invalid),
        }
    }
    // Until the requests of the last batch are in the cache, the cache cannot be planned on.
    if o.settling {
        return Reconciled::default();
    }
    plan(o, &writer, &targets, &containers, target)
}

/// Actions without counts (the rollout is not counted when it cannot be planned).
fn fail_with(actions: Vec<Action>) -> Reconciled {
    Reconciled {
        counts: None,
        actions,
    }
}

/// Plans the next step on the target pods and turns it into actions.
fn plan(
    o: &Observed,
    writer: &StatusWriter<'_>,
    targets: &[&Arc<CachedPod>],
    containers: &BTreeMap<String, Vec<String>>,
    target: String,
) -> Reconciled {
    let rollout = &o.rollout;
    let spec = &rollout.spec;
    let generation = rollout.metadata.generation;
    let previous = writer.previous;
    let requests: Vec<&ContainerRecreateRequest> = o.requests.iter().map(Arc::as_ref).collect();
    let pods: Vec<TargetPod> = targets
        .iter()
        .map(|pod| {
            let pod_uid = pod.uid().unwrap_or_default();
            let request = state::request_for(&requests, &pod.name_any(), &pod_uid);
            TargetPod {
                name: pod.name_any(),
                ordinal: state::ordinal(&***pod),
                labels: pod.labels().to_map(),
                ready_seconds: state::ready_seconds(&***pod, o.now),
                restart: state::restart_state(request),
                busy: state::busy(&o.others, &pod.name_any(), &pod_uid)
                    || o.leaving.contains(&pod_uid),
            }
        })
        .collect();
    let (budgets, health) = budgets_of(&o.budgets, targets, &o.pods, &o.others);
    let eligible = pods
        .iter()
        .filter(|p| match (spec.strategy.partition, p.ordinal) {
            (Some(q), Some(o)) => o >= q,
            _ => true,
        })
        .count();
    let strategy = match state::plan_strategy(spec, eligible) {
        Ok(s) => s,
        Err(message) => {
            let status = state::failed_status(previous, &message, generation, o.now);
            return fail_with(writer.finish(status, true));
        }
    };

    let mut status = previous.clone();
    status.target = Some(target);
    state::tally(&mut status, &pods, &requests, spec.strategy.partition);
    let acknowledged = state::acknowledged_failures(spec, previous, status.failed);
    if acknowledged > 0 {
        status.acknowledged_failures = Some(acknowledged);
    }
    let step = state::decide(spec, acknowledged, &pods, &budgets, &health, &strategy);
    let counts = Some(counts_of(&status, &step));
    // Counted; acting waits for the watch to bring our last write (it wakes a pass).
    if o.behind_own_write {
        return Reconciled {
            counts,
            actions: Vec::new(),
        };
    }
    let actions = match &step {
        Step::PauseForFailures => {
            let allowed = state::allowed_failures(spec, acknowledged);
            let mut actions = vec![
                Action::Pause,
                Action::Record(failure_threshold_event(status.failed, allowed)),
            ];
            actions.extend(writer.after_step(status, &step, generation, o.now));
            actions
        }
        Step::Start { batch, limited_by } => {
            let requests: Vec<ContainerRecreateRequest> = batch
                .iter()
                .filter_map(|name| {
                    let pod = targets.iter().find(|p| &p.name_any() == name)?;
                    let wanted = containers.get(name).cloned().unwrap_or_default();
                    Some(request_for_pod(rollout, pod, &wanted))
                })
                .collect();
            status.batches += 1;
            status.current_batch = batch.clone();
            status.in_progress += requests.len() as i32;
            let mut then = vec![Action::Record(batch_started_event(status.batches, batch))];
            if let Some(pdb) = limited_by {
                then.push(Action::Record(limited_by_event(pdb)));
            }
            then.extend(writer.after_step(status, &step, generation, o.now));
            vec![Action::StartBatch(Batch {
                pods: batch.clone(),
                requests,
                then,
            })]
        }
        _ => writer.after_step(status, &step, generation, o.now),
    };
    Reconciled { counts, actions }
}

/// The rollout's share of the gauges: its pods by state, and why it is blocked.
fn counts_of(status: &RollingRestartStatus, step: &Step) -> RolloutCounts {
    let pending = status.total - status.restarted - status.failed - status.in_progress;
    RolloutCounts {
        pods: [
            ("restarted", i64::from(status.restarted)),
            ("failed", i64::from(status.failed)),
            ("in_progress", i64::from(status.in_progress)),
            ("pending", i64::from(pending)),
        ],
        blocked: state::blocked_by(step),
    }
}

/// The budgets selecting any target pod, and the health of the pods they select. A pod that
/// an unfinished request among `others` is restarting counts as unhealthy even while it is still
/// Ready: that restart takes it down, so it already uses the budget.
pub fn budgets_of(
    pdbs: &[Arc<PodDisruptionBudget>],
    targets: &[&Arc<CachedPod>],
    namespace_pods: &[Arc<CachedPod>],
    others: &[Arc<ContainerRecreateRequest>],
) -> (Vec<Budget>, BTreeMap<String, bool>) {
    let mut budgets = Vec::new();
    let mut health = BTreeMap::new();
    for pdb in pdbs {
        let Some(spec) = &pdb.spec else { continue };
        let selector = Selector::try_from(spec.selector.clone().unwrap_or_default());
        let Ok(selector) = selector.map(PodSelector::from) else {
            continue;
        };
        if !targets.iter().any(|p| selector.matches(&***p)) {
            continue;
        }
        let selected: Vec<&Arc<CachedPod>> = namespace_pods
            .iter()
            .filter(|p| selector.matches(&***p) && p.metadata.deletion_timestamp.is_none())
            .collect();
        for pod in &selected {
            let busy = state::busy(others, &pod.name_any(), &pod.uid().unwrap_or_default());
            health.insert(pod.name_any(), state::is_ready(&***pod) && !busy);
        }
        budgets.push(Budget {
            name: pdb.name_any(),
            desired_healthy: planner::desired_healthy(
                spec.min_available.as_ref(),
                spec.max_unavailable.as_ref(),
                selected.len(),
            ),
            selected: selected.iter().map(|p| p.name_any()).collect(),
        });
    }
    (budgets, health)
}

/// The request restarting `pod` for `rollout`: deterministic name, the node and pod-UID labels
/// the agent selects on, the rollout's label, and the rollout as controlling owner (deleting the
/// rollout deletes its requests).
pub fn request_for_pod(
    rollout: &RollingRestart,
    pod: &CachedPod,
    containers: &[String],
) -> ContainerRecreateRequest {
    let rollout_name = rollout.name_any();
    let name = state::request_name(
        &rollout_name,
        &pod.name_any(),
        &pod.uid().unwrap_or_default(),
    );
    let owner = OwnerReference {
        api_version: "relaunch.dev/v1alpha1".into(),
        kind: "RollingRestart".into(),
        name: rollout_name.clone(),
        uid: rollout.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let shutdown = |container: &String| {
        rollout
            .spec
            .shutdown
            .iter()
            .find(|s| &s.container == container)
            .map(|s| s.action.clone())
    };
    containers
        .iter()
        .fold(
            ContainerRecreateRequest::for_pod_of(&pod.metadata, pod.node_name())
                .name(&name)
                .namespace(rollout.namespace().unwrap_or_default())
                .label(LABEL_ROLLING_RESTART, &rollout_name)
                .owner(owner)
                .strategy(rollout.spec.recreate_strategy.clone())
                .active_deadline_seconds(rollout.spec.active_deadline_seconds),
            |request, container| request.container(container, shutdown(container)),
        )
        .build()
}

/// Whether `status` differs from `previous` only in progress that may wait for the next
/// coalesced write: counts (pods restarted or in progress), per-pod results, and — while the
/// rollout stays Progressing on the same batch — the batch's unfinished pods and the wording of
/// that progress (the Progressing condition's reason and message, which move from
/// `BatchStarted` to `WaitingForReady` once the batch's requests are under way). Phase, batch, failures and the Blocked condition are
/// written at once.
pub fn counts_only(previous: &RollingRestartStatus, status: &RollingRestartStatus) -> bool {
    let mut same = status.clone();
    same.total = previous.total;
    same.restarted = previous.restarted;
    same.in_progress = previous.in_progress;
    same.pods.clone_from(&previous.pods);
    let progressing = |s: &RollingRestartStatus| s.phase == RolloutPhase::Progressing;
    if progressing(previous) && progressing(status) && previous.batches == status.batches {
        // The same batch: its unfinished pods only shrink as its requests finish.
        same.current_batch.clone_from(&previous.current_batch);
        same.message.clone_from(&previous.message);
        let condition = |s: &RollingRestartStatus| {
            (s.conditions.iter())
                .position(|c| c.type_ == CONDITION_PROGRESSING && c.status == "True")
        };
        if let (Some(i), Some(j)) = (condition(&same), condition(previous)) {
            same.conditions[i] = previous.conditions[j].clone();
        }
    }
    same == *previous
}

/// The duration of a rollout that ended, if it has both ends.
fn completion(status: &RollingRestartStatus) -> Option<Completed> {
    let (Some(start), Some(end)) = (&status.start_time, &status.completion_time) else {
        return None;
    };
    Some(Completed {
        result: if status.phase == RolloutPhase::Succeeded {
            "succeeded"
        } else {
            "failed"
        },
        seconds: end.0.duration_since(start.0).as_secs_f64().max(0.0),
    })
}

/// The Event of a new phase.
pub fn phase_event(status: &RollingRestartStatus) -> Event {
    let message = status.message.clone().unwrap_or_default();
    match status.phase {
        RolloutPhase::Failed => Event::warning("Failed", message),
        RolloutPhase::Succeeded => Event::normal("Finished", message),
        RolloutPhase::Paused => Event::warning("Paused", message),
        RolloutPhase::Progressing => Event::normal("Progressing", message),
        RolloutPhase::Pending => Event::normal("Pending", message),
        // Never decided by this release (a rollout in a newer release's phase is left alone).
        RolloutPhase::Unknown => Event::normal("Unknown", message),
    }
}

/// A Warning Event per pod whose restart failed since the last status (a pod restarted is told
/// by `status.pods` and the counts, and by the Event on the pod).
pub fn pod_failure_events(
    previous: &RollingRestartStatus,
    status: &RollingRestartStatus,
) -> Vec<Event> {
    status
        .pods
        .iter()
        .filter(|result| result.phase == RecreatePhase::Failed)
        .filter(|result| {
            !previous
                .pods
                .iter()
                .any(|p| p.request == result.request && p.phase == result.phase)
        })
        .map(|result| {
            let message = match &result.message {
                Some(m) => format!("pod {} failed to restart: {m}", result.name),
                None => format!("pod {} failed to restart ({})", result.name, result.request),
            };
            Event::warning("PodRestartFailed", message)
        })
        .collect()
}

fn failure_threshold_event(failed: i32, allowed: i32) -> Event {
    Event::warning(
        "FailureThresholdReached",
        format!(
            "{failed} pod restarts failed (maxFailures {allowed}): paused; fix the pods, then set spec.strategy.paused to false"
        ),
    )
}

fn batch_started_event(batches: i32, batch: &[String]) -> Event {
    Event::normal(
        "BatchStarted",
        format!("batch {batches}: restarting {}", batch.join(", ")),
    )
}

fn limited_by_event(pdb: &str) -> Event {
    Event::normal(
        "BlockedByPDB",
        format!("PodDisruptionBudget {pdb} limits the batch below maxUnavailable"),
    )
}

/// A workload as the trigger reads it: its kind and metadata.
#[derive(Debug, Clone)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub meta: ObjectMeta,
}

/// What the trigger does in one pass.
#[derive(Debug, Default)]
pub struct Triggered {
    /// Rollouts to create (AlreadyExists: already done).
    pub create: Vec<RollingRestart>,
    /// Workloads whose annotations start no rollout, newly: the Warning Event for each, and
    /// what is wrong (for the log).
    pub refused: Vec<(ObjectReference, Event, String)>,
    /// Every refusal seen in this pass, (namespace, rollout name, message): each is told once.
    pub seen_refusals: HashSet<(String, String, String)>,
}

/// Creates one RollingRestart per distinct `relaunch.dev/restart-at` token of `workloads`
/// without one (`exists`); a bad companion annotation is told once per workload, token and
/// problem (`told`: the refusals seen in the last pass).
pub fn triggered(
    workloads: &[Workload],
    exists: impl Fn(&str, &str) -> bool,
    told: &HashSet<(String, String, String)>,
) -> Triggered {
    let mut out = Triggered::default();
    for workload in workloads {
        let (kind, meta) = (&workload.kind, &workload.meta);
        let Some(token) = trigger::restart_token(kind, meta) else {
            continue;
        };
        let name = meta.name.clone().unwrap_or_default();
        let ns = meta.namespace.clone().unwrap_or_default();
        let rollout = trigger::rollout_name(kind, &name, token);
        if exists(&ns, &rollout) {
            continue;
        }
        let owner = OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.to_string(),
            name: name.clone(),
            uid: meta.uid.clone().unwrap_or_default(),
            controller: None,
            block_owner_deletion: None,
        };
        let annotations = meta.annotations.clone().unwrap_or_default();
        let spec = match trigger::rollout_spec(kind.clone(), &name, &annotations) {
            Ok(spec) => spec,
            Err(invalid) => {
                let message = invalid.to_string();
                let refusal = (ns.clone(), rollout.clone(), message.clone());
                if !told.contains(&refusal) {
                    let reference = ObjectReference {
                        api_version: Some(owner.api_version.clone()),
                        kind: Some(kind.to_string()),
                        name: Some(name.clone()),
                        namespace: Some(ns.clone()),
                        uid: Some(owner.uid.clone()),
                        ..Default::default()
                    };
                    let event = Event::warning(
                        "RestartNotStarted",
                        format!("{ANNOTATION_RESTART_AT} {token:?} starts no rollout: {message}"),
                    );
                    out.refused.push((reference, event, message));
                }
                out.seen_refusals.insert(refusal);
                continue;
            }
        };
        let mut object = RollingRestart::new(&rollout, spec);
        object.metadata.namespace = Some(ns);
        object.metadata.owner_references = Some(vec![owner]);
        object.metadata.annotations = Some(BTreeMap::from([(
            ANNOTATION_RESTART_AT.to_string(),
            token.to_string(),
        )]));
        out.create.push(object);
    }
    out
}

/// `Kind namespace/name` of a rollout, for logs.
pub fn describe(rollout: &RollingRestart) -> String {
    format!(
        "{} {}/{}",
        RollingRestart::kind(&()),
        rollout.namespace().unwrap_or_default(),
        rollout.name_any()
    )
}

#[cfg(test)]
mod tests;
