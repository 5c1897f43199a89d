//! What a rollout is doing, decided in pure code (the spec is checked by the API's
//! [`relaunch_api::validation`]): the target pods as the planner
//! sees them, the failure policy, and the status that follows. The controller only gathers the
//! inputs and carries out the [`Step`].

use std::collections::BTreeMap;

use jiff::Timestamp;
#[cfg(test)]
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use relaunch_api::validation::{InvalidRollout, MAX_CONTAINERS, resolve_max_unavailable};
use relaunch_api::{
    CONDITION_BLOCKED, CONDITION_PROGRESSING, Condition, ContainerRecreateRequest, LABEL_POD_UID,
    PodRestartResult, RecreatePhase, RollingRestartSpec, RollingRestartStatus,
    RolloutFailurePolicy, RolloutPhase,
};

use crate::pods::PodFacts;

use super::planner::{self, Budget, Plan, PlanStrategy, RestartState, TargetPod, WaitReason};

/// Label the StatefulSet controller sets with the pod's ordinal.
pub const LABEL_POD_INDEX: &str = "apps.kubernetes.io/pod-index";
/// Per-pod results kept in status.
pub const MAX_POD_RESULTS: usize = 50;
/// The reason of a rollout's `Progressing` or `Blocked` condition. [`apply_step`] writes it and
/// [`paused_for_failures`] reads it back, both through this type: one spelling per reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConditionReason {
    BatchStarted,
    WaitingForReady,
    WaitingForTarget,
    BlockedByPDB,
    BlockedByUnavailablePods,
    /// Paused through `spec.strategy.paused` by a user.
    Paused,
    /// Paused because more pod restarts failed than `maxFailures` allows.
    FailureThresholdReached,
    Succeeded,
    Failed,
    NotBlocked,
}

impl ConditionReason {
    /// Every reason.
    pub const ALL: [ConditionReason; 10] = [
        ConditionReason::BatchStarted,
        ConditionReason::WaitingForReady,
        ConditionReason::WaitingForTarget,
        ConditionReason::BlockedByPDB,
        ConditionReason::BlockedByUnavailablePods,
        ConditionReason::Paused,
        ConditionReason::FailureThresholdReached,
        ConditionReason::Succeeded,
        ConditionReason::Failed,
        ConditionReason::NotBlocked,
    ];

    /// As written in the condition (and in the `reason` label of `relaunch_rollout_blocked`).
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionReason::BatchStarted => "BatchStarted",
            ConditionReason::WaitingForReady => "WaitingForReady",
            ConditionReason::WaitingForTarget => "WaitingForTarget",
            ConditionReason::BlockedByPDB => "BlockedByPDB",
            ConditionReason::BlockedByUnavailablePods => "BlockedByUnavailablePods",
            ConditionReason::Paused => "Paused",
            ConditionReason::FailureThresholdReached => "FailureThresholdReached",
            ConditionReason::Succeeded => "Succeeded",
            ConditionReason::Failed => "Failed",
            ConditionReason::NotBlocked => "NotBlocked",
        }
    }

    /// The reason a condition names, if it is one of ours.
    pub fn parse(reason: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == reason)
    }
}

/// Why the rollout cannot start a batch: the reason of its `Blocked` condition while True.
pub fn blocked_reason(status: &RollingRestartStatus) -> Option<ConditionReason> {
    let blocked = status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_BLOCKED && c.status == "True")?;
    ConditionReason::parse(blocked.reason.as_deref()?)
}

/// Why a step leaves the rollout unable to start a batch (none: it is not blocked).
pub fn blocked_by(step: &Step) -> Option<ConditionReason> {
    match step {
        Step::Wait(WaitReason::BlockedByPDB(_)) => Some(ConditionReason::BlockedByPDB),
        Step::Wait(WaitReason::BlockedByUnavailablePods) => {
            Some(ConditionReason::BlockedByUnavailablePods)
        }
        Step::PauseForFailures | Step::Hold { failures: true } => {
            Some(ConditionReason::FailureThresholdReached)
        }
        Step::Hold { failures: false } => Some(ConditionReason::Paused),
        _ => None,
    }
}

/// The message of an aborted rollout.
pub const ABORTED: &str = "aborted: spec.abort is true";

/// The containers to restart in `pod`: `spec.containers`, or all its regular containers (the
/// API's `RecreatableContainers` rule). Fails when a named container (or a shutdown action's)
/// cannot be recreated in the pod.
pub fn containers_for(
    spec: &RollingRestartSpec,
    pod: &impl PodFacts,
) -> Result<Vec<String>, InvalidRollout> {
    // As `RecreatableContainers`: by default the regular containers, by name also the native
    // sidecars.
    let regular = pod.regular_containers();
    let recreatable: Vec<&str> = regular
        .iter()
        .copied()
        .chain(pod.sidecar_containers())
        .collect();
    let wanted: Vec<String> = if spec.containers.is_empty() {
        regular.into_iter().map(String::from).collect()
    } else {
        spec.containers.clone()
    };
    let pod_name = pod.meta().name.as_deref().unwrap_or_default();
    for name in wanted
        .iter()
        .chain(spec.shutdown.iter().map(|s| &s.container))
    {
        if !recreatable.contains(&name.as_str()) {
            return Err(InvalidRollout::ContainerNotInPod {
                container: name.clone(),
                pod: pod_name.into(),
                recreatable: recreatable.iter().map(|n| n.to_string()).collect(),
            });
        }
    }
    // The pod's request could not be created (the schema bounds a request's containers).
    if wanted.len() > MAX_CONTAINERS {
        return Err(InvalidRollout::TooManyContainersInPod {
            pod: pod_name.into(),
            count: wanted.len(),
        });
    }
    Ok(wanted)
}

/// Whether a selected pod is a target: scheduled, not terminating, not finished.
pub fn is_target(pod: &impl PodFacts) -> bool {
    let scheduled = pod.node_name().is_some_and(|n| !n.is_empty());
    let phase = pod.phase();
    scheduled
        && pod.meta().deletion_timestamp.is_none()
        && !matches!(phase, Some("Succeeded") | Some("Failed"))
}

/// The pod's ordinal: the `apps.kubernetes.io/pod-index` label, else the name suffix of a
/// StatefulSet's pod.
pub fn ordinal(pod: &impl PodFacts) -> Option<i32> {
    if let Some(index) = pod.label(LABEL_POD_INDEX) {
        return index.parse().ok();
    }
    let owned_by_statefulset = pod
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "StatefulSet");
    if !owned_by_statefulset {
        return None;
    }
    pod.meta().name.as_deref()?.rsplit_once('-')?.1.parse().ok()
}

/// Whether the pod is Ready.
pub fn is_ready(pod: &impl PodFacts) -> bool {
    ready_since(pod).is_some()
}

fn ready_since(pod: &impl PodFacts) -> Option<Option<Timestamp>> {
    let condition = pod.condition("Ready").filter(|c| c.status == "True")?;
    Some(condition.last_transition_time.as_ref().map(|t| t.0))
}

/// Seconds the pod has been Ready (a Ready pod without a transition time counts as long ready).
pub fn ready_seconds(pod: &impl PodFacts, now: Timestamp) -> Option<i64> {
    ready_since(pod)
        .map(|since| since.map_or(i64::MAX / 2, |t| now.duration_since(t).as_secs().max(0)))
}

/// Where the pod is in this rollout, from the request created for it (if any).
pub fn restart_state(request: Option<&ContainerRecreateRequest>) -> RestartState {
    match request.and_then(|r| r.status.as_ref()).map(|s| s.phase) {
        None if request.is_none() => RestartState::NotStarted,
        Some(RecreatePhase::Succeeded) => RestartState::Succeeded,
        Some(RecreatePhase::Failed) => RestartState::Failed,
        _ => RestartState::InProgress,
    }
}

/// The request restarting `pod` (UID `uid`) for `rollout`. Deterministic, so a retried or
/// repeated creation (another leader, a stale cache) meets AlreadyExists instead of restarting
/// the pod twice; the UID part gives a replaced pod (same name, new UID) its own request.
///
/// The name is a DNS subdomain of at most 253 characters for any valid rollout and pod name:
/// longer ones are cut and end in a hash of the whole, and the cut never leaves a `-` or `.`
/// before the hash.
pub fn request_name(rollout: &str, pod: &str, uid: &str) -> String {
    let short: String = uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(5)
        .collect();
    let name = if short.is_empty() {
        format!("{rollout}-{pod}")
    } else {
        format!("{rollout}-{pod}-{short}")
    };
    if name.len() <= 253 {
        return name;
    }
    let hash = super::trigger::short_hash(&name);
    let kept = crate::cut_at_char_boundary(&name, 240)
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{kept}-{hash}")
}

/// The request of `pod` among the rollout's requests, if it was made for this very pod (UID).
pub fn request_for<'a>(
    requests: &'a [&'a ContainerRecreateRequest],
    pod_name: &str,
    uid: &str,
) -> Option<&'a ContainerRecreateRequest> {
    requests.iter().copied().find(|r| {
        r.spec.pod_name == pod_name
            && r.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_POD_UID))
                .is_some_and(|u| u == uid)
    })
}

/// Whether an unfinished request among `others` (requests the rollout did not create) is for
/// `pod_name` (UID `uid`): one not admitted yet, without the pod-UID label, counts too.
pub fn busy(
    others: &[std::sync::Arc<ContainerRecreateRequest>],
    pod_name: &str,
    uid: &str,
) -> bool {
    others.iter().any(|r| {
        r.spec.pod_name == pod_name
            && r.status.as_ref().is_none_or(|s| !s.phase.is_finished())
            && r.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_POD_UID))
                .is_none_or(|u| u == uid)
    })
}

/// The strategy as plain numbers for `total` target pods.
pub fn plan_strategy(
    spec: &RollingRestartSpec,
    total: usize,
) -> Result<PlanStrategy, InvalidRollout> {
    let s = &spec.strategy;
    let max_unavailable = resolve_max_unavailable(
        s.max_unavailable.as_ref().unwrap_or(&IntOrString::Int(1)),
        total,
    )
    .map_err(InvalidRollout::MaxUnavailable)?;
    let order = s.order.clone().unwrap_or_default();
    Ok(PlanStrategy {
        max_unavailable,
        partition: s.partition,
        ordinal: order.ordinal.unwrap_or_default(),
        role: order.role,
        min_ready_seconds: s.min_ready_seconds.unwrap_or(0).into(),
        respect_budgets: s.respect_pod_disruption_budgets.unwrap_or(true),
    })
}

/// What the controller does next for one rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// End Failed with this message (no new requests).
    Fail(String),
    /// Too many failures under `failurePolicy: Pause`: set `spec.strategy.paused`.
    PauseForFailures,
    /// Paused (by the user, or already for failures): no new batch.
    Hold {
        failures: bool,
    },
    Wait(WaitReason),
    /// Create requests for these pods; `limited_by` names a PodDisruptionBudget that kept the
    /// batch smaller than `maxUnavailable` allows.
    Start {
        batch: Vec<String>,
        limited_by: Option<String>,
    },
    Succeed,
}

/// Failures the user has acknowledged: on resume from a failure pause, all current failures.
pub fn acknowledged_failures(
    spec: &RollingRestartSpec,
    status: &RollingRestartStatus,
    failed: i32,
) -> i32 {
    if paused_for_failures(status) && !spec.strategy.paused {
        failed
    } else {
        status.acknowledged_failures.unwrap_or(0)
    }
}

/// How many failed pod restarts the rollout tolerates before its failure policy applies:
/// `maxFailures` plus the failures acknowledged by resuming. Saturating, so that `maxFailures`
/// at its largest means "never" rather than wrapping to a negative limit.
pub fn allowed_failures(spec: &RollingRestartSpec, acknowledged: i32) -> i32 {
    spec.strategy
        .max_failures
        .unwrap_or(0)
        .saturating_add(acknowledged)
}

/// Whether the rollout is paused because too many pod restarts failed (rather than by a user):
/// its `Blocked` condition says so.
pub fn paused_for_failures(status: &RollingRestartStatus) -> bool {
    status.phase == RolloutPhase::Paused
        && blocked_reason(status) == Some(ConditionReason::FailureThresholdReached)
}

/// The status of a rollout whose target workload does not exist (yet), `missing` saying which:
/// `spec.abort` ends it as anywhere else, `spec.strategy.paused` shows Paused, and otherwise it
/// waits (a pause for failures lifted meanwhile counts as acknowledged, as when the target is
/// there).
pub fn waiting_for_target(
    spec: &RollingRestartSpec,
    previous: &RollingRestartStatus,
    missing: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> RollingRestartStatus {
    let mut status = previous.clone();
    if spec.abort {
        apply_step(&mut status, &Step::Fail(ABORTED.into()), generation, now);
        return status;
    }
    if spec.strategy.paused {
        let failures = paused_for_failures(previous);
        apply_step(&mut status, &Step::Hold { failures }, generation, now);
        let paused = status.message.take().unwrap_or_default();
        status.message = Some(format!("{paused}; {missing}"));
        return status;
    }
    if status.phase == RolloutPhase::Paused {
        let acknowledged = acknowledged_failures(spec, previous, previous.failed);
        if acknowledged > 0 {
            status.acknowledged_failures = Some(acknowledged);
        }
        status.phase = if status.batches > 0 {
            RolloutPhase::Progressing
        } else {
            RolloutPhase::Pending
        };
        let c = &mut status.conditions;
        set_condition(
            c,
            CONDITION_PROGRESSING,
            true,
            ConditionReason::WaitingForTarget,
            missing,
            generation,
            now,
        );
        set_condition(
            c,
            CONDITION_BLOCKED,
            false,
            ConditionReason::NotBlocked,
            "",
            generation,
            now,
        );
    }
    status.message = Some(missing.to_string());
    status.observed_generation = generation;
    status
}

/// Decides the next step from the spec, the acknowledged failures and the observed pods.
pub fn decide(
    spec: &RollingRestartSpec,
    acknowledged: i32,
    pods: &[TargetPod],
    budgets: &[Budget],
    health: &BTreeMap<String, bool>,
    strategy: &PlanStrategy,
) -> Step {
    if spec.abort {
        return Step::Fail(ABORTED.into());
    }
    let failed = pods
        .iter()
        .filter(|p| p.restart == RestartState::Failed)
        .count() as i32;
    let allowed = allowed_failures(spec, acknowledged);
    if failed > allowed {
        // Unknown never gets here (validation refuses it); the safest policy if it did.
        let policy = match spec.strategy.failure_policy.unwrap_or_default() {
            RolloutFailurePolicy::Unknown => RolloutFailurePolicy::Pause,
            known => known,
        };
        match policy {
            RolloutFailurePolicy::Pause if spec.strategy.paused => {
                return Step::Hold { failures: true };
            }
            RolloutFailurePolicy::Pause | RolloutFailurePolicy::Unknown => {
                return Step::PauseForFailures;
            }
            RolloutFailurePolicy::Abort => {
                return Step::Fail(format!(
                    "{failed} pod restarts failed, more than maxFailures {allowed} (failurePolicy Abort)"
                ));
            }
            RolloutFailurePolicy::Continue => {}
        }
    }
    if spec.strategy.paused {
        return Step::Hold { failures: false };
    }
    match planner::plan(pods, budgets, health, strategy) {
        Plan::Done => Step::Succeed,
        Plan::Wait(reason) => Step::Wait(reason),
        Plan::Start(batch) => {
            let mut limited_by = None;
            if strategy.respect_budgets {
                let unbounded = PlanStrategy {
                    respect_budgets: false,
                    ..strategy.clone()
                };
                if let Plan::Start(wider) = planner::plan(pods, budgets, health, &unbounded)
                    && let Some(next) = wider.get(batch.len())
                {
                    limited_by = budgets
                        .iter()
                        .find(|b| b.selected.contains(next))
                        .map(|b| b.name.clone());
                }
            }
            Step::Start { batch, limited_by }
        }
    }
}

/// Sets a condition, keeping its transition time when its status does not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: ConditionReason,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" };
    let previous = conditions.iter().position(|c| c.type_ == type_);
    let transition = previous
        .map(|i| &conditions[i])
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    let condition = Condition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.as_str().into()),
        message: Some(message.into()),
        last_transition_time: Some(transition),
        observed_generation: generation,
    };
    match previous {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
}

/// The counts and per-pod results of `pods` and their requests.
pub fn tally(
    status: &mut RollingRestartStatus,
    pods: &[TargetPod],
    requests: &[&ContainerRecreateRequest],
    partition: Option<i32>,
) {
    let counted: Vec<&TargetPod> = pods
        .iter()
        .filter(|p| match (partition, p.ordinal) {
            (Some(q), Some(o)) => o >= q,
            _ => true,
        })
        .collect();
    let count = |state: RestartState| counted.iter().filter(|p| p.restart == state).count() as i32;
    status.total = counted.len() as i32;
    status.restarted = count(RestartState::Succeeded);
    status.failed = count(RestartState::Failed);
    status.in_progress = count(RestartState::InProgress);
    status.current_batch = pods
        .iter()
        .filter(|p| p.restart == RestartState::InProgress)
        .map(|p| p.name.clone())
        .collect();
    let mut ordered: Vec<&&ContainerRecreateRequest> = requests.iter().collect();
    ordered.sort_by_key(|r| {
        (
            r.metadata.creation_timestamp.as_ref().map(|t| t.0),
            r.metadata.name.clone(),
        )
    });
    let skip = ordered.len().saturating_sub(MAX_POD_RESULTS);
    status.pods = ordered
        .into_iter()
        .skip(skip)
        .map(|r| {
            let s = r.status.clone().unwrap_or_default();
            PodRestartResult {
                name: r.spec.pod_name.clone(),
                request: r.metadata.name.clone().unwrap_or_default(),
                phase: s.phase,
                message: s.message,
            }
        })
        .collect();
}

/// The phase, message and `Progressing` condition (status, reason) a step leads to.
fn progress_of(
    step: &Step,
    status: &RollingRestartStatus,
) -> (RolloutPhase, String, bool, ConditionReason) {
    use ConditionReason as R;
    match step {
        Step::Fail(message) => (RolloutPhase::Failed, message.clone(), false, R::Failed),
        Step::PauseForFailures | Step::Hold { failures: true } => (
            RolloutPhase::Paused,
            format!(
                "paused: {} pod restarts failed; fix them, then set spec.strategy.paused to false",
                status.failed
            ),
            false,
            R::FailureThresholdReached,
        ),
        Step::Hold { failures: false } => (
            RolloutPhase::Paused,
            "paused: spec.strategy.paused is true".into(),
            false,
            R::Paused,
        ),
        Step::Wait(WaitReason::WaitingForReady) => (
            RolloutPhase::Progressing,
            format!(
                "waiting for {} to be ready",
                describe_batch(&status.current_batch)
            ),
            true,
            R::WaitingForReady,
        ),
        Step::Wait(WaitReason::BlockedByPDB(pdb)) => (
            RolloutPhase::Progressing,
            format!("PodDisruptionBudget {pdb} allows no further disruption"),
            true,
            R::BlockedByPDB,
        ),
        Step::Wait(WaitReason::BlockedByUnavailablePods) => (
            RolloutPhase::Progressing,
            "pods unavailable for other reasons use up maxUnavailable".into(),
            true,
            R::BlockedByUnavailablePods,
        ),
        Step::Start { batch, .. } => (
            RolloutPhase::Progressing,
            format!("restarting {}", describe_batch(batch)),
            true,
            R::BatchStarted,
        ),
        Step::Succeed => (
            RolloutPhase::Succeeded,
            format!(
                "restarted {} of {} pods ({} failed)",
                status.restarted, status.total, status.failed
            ),
            false,
            R::Succeeded,
        ),
    }
}

/// The status after `step`: phase, message and conditions (counts come from [`tally`]).
pub fn apply_step(
    status: &mut RollingRestartStatus,
    step: &Step,
    generation: Option<i64>,
    now: Timestamp,
) {
    let (phase, message, progressing, progress_reason) = progress_of(step, status);
    // A batch a budget kept small is started, and blocked from growing.
    let blocked = match step {
        Step::Start {
            limited_by: Some(_),
            ..
        } => Some(ConditionReason::BlockedByPDB),
        _ => blocked_by(step),
    };
    let blocked_message = match (step, blocked) {
        (
            Step::Start {
                limited_by: Some(pdb),
                ..
            },
            _,
        ) => {
            format!("PodDisruptionBudget {pdb} limits the batch below maxUnavailable")
        }
        (_, Some(_)) => message.clone(),
        (_, None) => String::new(),
    };
    let c = &mut status.conditions;
    set_condition(
        c,
        CONDITION_PROGRESSING,
        progressing,
        progress_reason,
        &message,
        generation,
        now,
    );
    set_condition(
        c,
        CONDITION_BLOCKED,
        blocked.is_some(),
        blocked.unwrap_or(ConditionReason::NotBlocked),
        &blocked_message,
        generation,
        now,
    );
    if matches!(phase, RolloutPhase::Failed | RolloutPhase::Succeeded) {
        status.completion_time.get_or_insert(Time(now));
    }
    if status.start_time.is_none() {
        status.start_time = Some(Time(now));
    }
    status.phase = phase;
    status.message = Some(message);
    status.observed_generation = generation;
}

fn describe_batch(batch: &[String]) -> String {
    match batch.len() {
        0 => "the last batch".into(),
        _ => batch.join(", "),
    }
}

/// A failed validation as a complete status.
pub fn failed_status(
    previous: &RollingRestartStatus,
    invalid: &InvalidRollout,
    generation: Option<i64>,
    now: Timestamp,
) -> RollingRestartStatus {
    let mut status = previous.clone();
    apply_step(
        &mut status,
        &Step::Fail(invalid.to_string()),
        generation,
        now,
    );
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaunch_api::{RolloutTarget, WorkloadKind, WorkloadRef};
    use serde_json::json;

    fn sts_spec() -> RollingRestartSpec {
        RollingRestartSpec {
            target: RolloutTarget {
                workload_ref: Some(WorkloadRef {
                    kind: WorkloadKind::StatefulSet,
                    name: "db".into(),
                }),
                selector: None,
            },
            ..Default::default()
        }
    }

    fn pod(name: &str, ordinal: i32, restart: RestartState) -> TargetPod {
        TargetPod {
            name: name.into(),
            ordinal: Some(ordinal),
            labels: BTreeMap::new(),
            ready_seconds: Some(100),
            restart,
            busy: false,
        }
    }

    #[test]
    fn unknown_containers_are_refused_with_the_pods_containers() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "db-0"},
            "spec": {"containers": [{"name": "db"}, {"name": "exporter"}],
                     "initContainers": [{"name": "proxy", "restartPolicy": "Always"}, {"name": "init"}]}
        }))
        .unwrap();
        let mut spec = sts_spec();
        assert_eq!(
            containers_for(&spec, &pod),
            Ok(vec!["db".into(), "exporter".into()])
        );
        spec.containers = vec!["proxy".into()];
        assert_eq!(containers_for(&spec, &pod), Ok(vec!["proxy".into()]));
        spec.containers = vec!["init".into()];
        let err = containers_for(&spec, &pod).unwrap_err().to_string();
        assert!(
            err.contains("\"init\" is not in pod db-0 (its containers: db, exporter, proxy)"),
            "{err}"
        );
    }

    #[test]
    fn a_pod_with_more_containers_than_a_request_takes_is_refused() {
        let containers: Vec<serde_json::Value> = (0..=MAX_CONTAINERS)
            .map(|i| json!({"name": format!("c{i}")}))
            .collect();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "db-0"}, "spec": {"containers": containers}
        }))
        .unwrap();
        let mut spec = sts_spec();
        assert_eq!(
            containers_for(&spec, &pod).unwrap_err().to_string(),
            "pod db-0 has 17 containers to restart; one request recreates at most 16: name at most 16 in spec.containers"
        );
        spec.containers = vec!["c0".into(), "c3".into()];
        assert_eq!(
            containers_for(&spec, &pod),
            Ok(vec!["c0".into(), "c3".into()])
        );
    }

    #[test]
    fn ordinals_come_from_the_index_label_or_a_statefulset_name() {
        let labelled: Pod = serde_json::from_value(
            json!({"metadata": {"name": "x", "labels": {LABEL_POD_INDEX: "4"}}}),
        )
        .unwrap();
        assert_eq!(ordinal(&labelled), Some(4));
        let owned: Pod =
            serde_json::from_value(json!({"metadata": {"name": "db-12", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u"}]}}))
            .unwrap();
        assert_eq!(ordinal(&owned), Some(12));
        let loose: Pod = serde_json::from_value(json!({"metadata": {"name": "web-7"}})).unwrap();
        assert_eq!(ordinal(&loose), None);
    }

    #[test]
    fn request_names_are_deterministic_per_pod_instance() {
        assert_eq!(request_name("r", "db-0", "ab-cd-ef"), "r-db-0-abcde");
        assert_ne!(
            request_name("r", "db-0", "11111"),
            request_name("r", "db-0", "22222")
        );
        assert!(request_name(&"x".repeat(200), &"y".repeat(100), "u").len() <= 253);
    }

    /// A lowercase RFC 1123 subdomain, as the API server checks `metadata.name`.
    fn is_dns_subdomain(name: &str) -> bool {
        name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    }

    #[test]
    fn a_cut_request_name_does_not_end_its_prefix_with_a_dash_or_dot() {
        // The cut at 240 characters falls right after a `.` and after a `-`.
        for filler in [".b", "-b"] {
            let pod = format!("{}{filler}{}", "a".repeat(239 - 10 - 1), "c".repeat(20));
            let name = request_name("r-23456789", &pod, "0A1B2-C3");
            assert!(name.len() <= 253 && is_dns_subdomain(&name), "{name}");
        }
        assert_eq!(
            request_name("r", "db-0", ""),
            "r-db-0",
            "no UID: no dangling dash"
        );
        assert_eq!(request_name("r", "db-0", "AB-CD-EF"), "r-db-0-abcde");
    }

    /// DNS subdomains of at most `max` characters and `labels` dot-separated parts.
    fn subdomain(
        max: usize,
        labels: std::ops::Range<usize>,
    ) -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let label = "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?";
        proptest::collection::vec(label, labels)
            .prop_map(|labels| labels.join("."))
            .prop_filter("too long", move |name| name.len() <= max)
    }

    proptest::proptest! {
        #[test]
        fn request_names_are_dns_subdomains_for_any_rollout_and_pod(
            rollout in subdomain(relaunch_api::validation::MAX_ROLLOUT_NAME_LENGTH, 1..3),
            pod in subdomain(253, 1..7),
            uid in "[0-9a-fA-F-]{0,36}",
        ) {
            let name = request_name(&rollout, &pod, &uid);
            proptest::prop_assert!(is_dns_subdomain(&name), "{} ({} chars)", name, name.len());
            proptest::prop_assert_eq!(name.clone(), request_name(&rollout, &pod, &uid));
        }
    }

    #[test]
    fn a_rollout_waiting_for_its_workload_obeys_abort_and_paused() {
        let missing = "waiting for StatefulSet/db to exist in namespace default";
        let now = Timestamp::UNIX_EPOCH;
        let pending = RollingRestartStatus::default();
        let mut spec = sts_spec();

        let waiting = waiting_for_target(&spec, &pending, missing, Some(1), now);
        assert_eq!(waiting.phase, RolloutPhase::Pending);
        assert_eq!(waiting.message.as_deref(), Some(missing));

        spec.strategy.paused = true;
        let paused = waiting_for_target(&spec, &waiting, missing, Some(2), now);
        assert_eq!(paused.phase, RolloutPhase::Paused);
        let message = paused.message.clone().unwrap_or_default();
        assert!(
            message.starts_with("paused: spec.strategy.paused is true"),
            "{message}"
        );
        assert!(message.contains(missing), "{message}");

        spec.strategy.paused = false;
        let resumed = waiting_for_target(&spec, &paused, missing, Some(3), now);
        assert_eq!(resumed.phase, RolloutPhase::Pending, "no longer paused");
        assert!(
            resumed
                .conditions
                .iter()
                .any(|c| c.type_ == CONDITION_BLOCKED && c.status == "False"),
            "{:?}",
            resumed.conditions
        );

        spec.abort = true;
        let aborted = waiting_for_target(&spec, &resumed, missing, Some(4), now);
        assert_eq!(aborted.phase, RolloutPhase::Failed);
        assert_eq!(aborted.message.as_deref(), Some(ABORTED));
        assert!(aborted.completion_time.is_some());
    }

    #[test]
    fn a_failure_pause_stays_one_while_the_workload_is_missing() {
        let missing = "waiting for StatefulSet/db to exist in namespace default";
        let now = Timestamp::UNIX_EPOCH;
        let mut spec = sts_spec();
        spec.strategy.paused = true;
        let mut status = RollingRestartStatus {
            failed: 2,
            batches: 1,
            ..Default::default()
        };
        apply_step(&mut status, &Step::Hold { failures: true }, None, now);
        let still = waiting_for_target(&spec, &status, missing, None, now);
        assert!(paused_for_failures(&still), "{:?}", still.conditions);

        spec.strategy.paused = false;
        let resumed = waiting_for_target(&spec, &still, missing, None, now);
        assert_eq!(resumed.phase, RolloutPhase::Progressing);
        assert_eq!(
            resumed.acknowledged_failures,
            Some(2),
            "resuming acknowledges"
        );
    }

    #[test]
    fn failures_pause_then_resume_once_acknowledged() {
        let mut spec = sts_spec();
        let pods = vec![
            pod("db-1", 1, RestartState::Failed),
            pod("db-0", 0, RestartState::NotStarted),
        ];
        let strategy = plan_strategy(&spec, 2).unwrap();
        let health = BTreeMap::new();
        assert_eq!(
            decide(&spec, 0, &pods, &[], &health, &strategy),
            Step::PauseForFailures
        );
        spec.strategy.paused = true;
        assert_eq!(
            decide(&spec, 0, &pods, &[], &health, &strategy),
            Step::Hold { failures: true }
        );

        let mut status = RollingRestartStatus::default();
        apply_step(
            &mut status,
            &Step::Hold { failures: true },
            None,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(status.phase, RolloutPhase::Paused);
        assert_eq!(acknowledged_failures(&spec, &status, 1), 0, "still paused");
        spec.strategy.paused = false;
        let acknowledged = acknowledged_failures(&spec, &status, 1);
        assert_eq!(acknowledged, 1, "resuming acknowledges the failure");
        assert!(matches!(
            decide(&spec, acknowledged, &pods, &[], &health, &strategy),
            Step::Start { .. }
        ));
    }

    #[test]
    fn the_largest_max_failures_never_pauses_even_with_acknowledged_failures() {
        let mut spec = sts_spec();
        spec.strategy.max_failures = Some(i32::MAX);
        let pods = vec![
            pod("db-1", 1, RestartState::Failed),
            pod("db-0", 0, RestartState::NotStarted),
        ];
        let strategy = plan_strategy(&spec, 2).unwrap();
        assert!(matches!(
            decide(&spec, 1, &pods, &[], &BTreeMap::new(), &strategy),
            Step::Start { .. }
        ));
    }

    #[test]
    fn abort_and_continue_policies() {
        let mut spec = sts_spec();
        let pods = vec![
            pod("db-1", 1, RestartState::Failed),
            pod("db-0", 0, RestartState::NotStarted),
        ];
        let strategy = plan_strategy(&spec, 2).unwrap();
        spec.strategy.failure_policy = Some(RolloutFailurePolicy::Abort);
        assert!(matches!(
            decide(&spec, 0, &pods, &[], &BTreeMap::new(), &strategy),
            Step::Fail(_)
        ));
        spec.strategy.failure_policy = Some(RolloutFailurePolicy::Continue);
        assert!(matches!(
            decide(&spec, 0, &pods, &[], &BTreeMap::new(), &strategy),
            Step::Start { .. }
        ));
        spec.abort = true;
        assert_eq!(
            decide(&spec, 0, &pods, &[], &BTreeMap::new(), &strategy),
            Step::Fail("aborted: spec.abort is true".into())
        );
    }

    #[test]
    fn a_pdb_smaller_than_max_unavailable_is_reported_as_limiting() {
        let spec = sts_spec();
        let pods: Vec<TargetPod> = (0..6)
            .map(|i| pod(&format!("db-{i}"), i, RestartState::NotStarted))
            .collect();
        let budget = Budget {
            name: "db-pdb".into(),
            desired_healthy: 5,
            selected: pods.iter().map(|p| p.name.clone()).collect(),
        };
        let mut strategy = plan_strategy(&spec, 6).unwrap();
        strategy.max_unavailable = 2;
        let step = decide(&spec, 0, &pods, &[budget], &BTreeMap::new(), &strategy);
        assert_eq!(
            step,
            Step::Start {
                batch: vec!["db-5".into()],
                limited_by: Some("db-pdb".into())
            }
        );
        let mut status = RollingRestartStatus::default();
        apply_step(&mut status, &step, Some(1), Timestamp::UNIX_EPOCH);
        let blocked = status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_BLOCKED)
            .unwrap();
        assert_eq!(
            (blocked.status.as_str(), blocked.reason.as_deref()),
            ("True", Some("BlockedByPDB"))
        );
    }

    #[test]
    fn conditions_keep_their_transition_time_while_unchanged() {
        let mut conditions = Vec::new();
        let t0 = Timestamp::UNIX_EPOCH;
        let t1 = Timestamp::from_second(60).unwrap();
        set_condition(
            &mut conditions,
            "Blocked",
            true,
            ConditionReason::BlockedByPDB,
            "a",
            None,
            t0,
        );
        set_condition(
            &mut conditions,
            "Blocked",
            true,
            ConditionReason::BlockedByPDB,
            "b",
            None,
            t1,
        );
        assert_eq!(conditions[0].last_transition_time, Some(Time(t0)));
        set_condition(
            &mut conditions,
            "Blocked",
            false,
            ConditionReason::NotBlocked,
            "",
            None,
            t1,
        );
        assert_eq!(conditions[0].last_transition_time, Some(Time(t1)));
        assert_eq!(conditions.len(), 1);
    }

    #[test]
    fn tally_counts_only_pods_at_or_above_the_partition() {
        let pods = vec![
            pod("db-2", 2, RestartState::Succeeded),
            pod("db-1", 1, RestartState::InProgress),
            pod("db-0", 0, RestartState::NotStarted),
        ];
        let mut status = RollingRestartStatus::default();
        tally(&mut status, &pods, &[], Some(1));
        assert_eq!(
            (status.total, status.restarted, status.in_progress),
            (2, 1, 1)
        );
        assert_eq!(status.current_batch, vec!["db-1".to_string()]);
    }

    #[test]
    fn condition_reasons_read_back_as_written_also_from_older_objects() {
        for reason in ConditionReason::ALL {
            assert_eq!(ConditionReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(ConditionReason::parse("SomethingElse"), None);
        // A rollout paused for failures before the reasons were typed reads the same.
        let old: RollingRestartStatus = serde_json::from_value(json!({
            "phase": "Paused",
            "conditions": [
                {"type": "Progressing", "status": "False", "reason": "FailureThresholdReached"},
                {"type": "Blocked", "status": "True", "reason": "FailureThresholdReached"},
            ],
        }))
        .unwrap();
        assert!(paused_for_failures(&old));
        let mut by_user = old.clone();
        by_user.conditions[1].reason = Some("Paused".into());
        assert!(!paused_for_failures(&by_user));
    }
}
