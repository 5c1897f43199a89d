use super::*;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use relaunch_api::{
    CONDITION_BLOCKED, ContainerRecreateRequestStatus, LABEL_NODE_NAME, LABEL_POD_UID,
    PodRestartResult, RollingRestartSpec, RolloutTarget,
};
use serde_json::json;

const NOW: &str = "2026-01-01T00:10:00Z";

fn now() -> Timestamp {
    NOW.parse().unwrap()
}

fn rollout(spec: RollingRestartSpec, status: Option<RollingRestartStatus>) -> Arc<RollingRestart> {
    let mut r = RollingRestart::new("db-restart", spec);
    r.metadata.namespace = Some("default".into());
    r.metadata.uid = Some("rollout-uid".into());
    r.metadata.generation = Some(1);
    r.metadata.resource_version = Some("10".into());
    r.status = status;
    Arc::new(r)
}

fn spec(max_unavailable: i32) -> RollingRestartSpec {
    RollingRestartSpec {
        target: RolloutTarget {
            workload_ref: None,
            selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("app".into(), "db".into())])),
                ..Default::default()
            }),
        },
        strategy: relaunch_api::RolloutStrategy {
            max_unavailable: Some(IntOrString::Int(max_unavailable)),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A Ready pod of the StatefulSet `db`, on node-1, Ready for ten minutes.
fn pod(ordinal: i32) -> Arc<CachedPod> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {
                "name": format!("db-{ordinal}"), "namespace": "default",
                "uid": format!("pod-uid-{ordinal}"),
                "labels": {"app": "db", "apps.kubernetes.io/pod-index": ordinal.to_string()},
            },
            "spec": {"nodeName": "node-1", "containers": [{"name": "db"}]},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            ]},
        }))
        .unwrap(),
    )
}

/// The rollout's request for pod `db-<ordinal>`, in `phase`.
fn request(ordinal: i32, phase: RecreatePhase) -> Arc<ContainerRecreateRequest> {
    let r = rollout(spec(1), None);
    let mut request = request_for_pod(&r, &pod(ordinal), &["db".to_string()]);
    request.metadata.creation_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Timestamp::from_second(i64::from(ordinal)).unwrap(),
        ));
    request.status = Some(ContainerRecreateRequestStatus {
        phase,
        ..Default::default()
    });
    Arc::new(request)
}

fn observed(rollout: Arc<RollingRestart>, pods: Vec<Arc<CachedPod>>) -> Observed {
    Observed {
        rollout,
        target: Ok((
            LabelSelector {
                match_labels: Some(BTreeMap::from([("app".into(), "db".into())])),
                ..Default::default()
            },
            "selector".into(),
        )),
        pods,
        requests: Vec::new(),
        others: Vec::new(),
        budgets: Vec::new(),
        leaving: Default::default(),
        settling: false,
        behind_own_write: false,
        since_written: None,
        exec_policy: Some(ExecPolicy::Enforced),
        now: now(),
    }
}

fn events(actions: &[Action]) -> Vec<(&'static str, bool)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Record(e) => Some((e.reason, e.warning)),
            _ => None,
        })
        .collect()
}

fn written(actions: &[Action]) -> Option<(&RollingRestartStatus, Option<&Completed>)> {
    actions.iter().find_map(|a| match a {
        Action::WriteStatus { status, completed } => Some((status, completed.as_ref())),
        _ => None,
    })
}

#[test]
fn an_invalid_spec_fails_the_rollout_with_an_event_and_its_duration() {
    let mut bad = spec(1);
    bad.target.selector = None;
    let decided = reconcile(&observed(rollout(bad, None), vec![pod(0)]));
    assert_eq!(decided.counts, None);
    assert_eq!(events(&decided.actions), [("Failed", true)]);
    let (status, completed) = written(&decided.actions).unwrap();
    assert_eq!(status.phase, RolloutPhase::Failed);
    assert!(status.message.as_deref().unwrap().contains("workloadRef"));
    assert_eq!(completed.map(|c| c.result), Some("failed"));
}

#[test]
fn a_rollout_with_exec_fails_while_the_exec_policy_is_missing_and_waits_while_unknown() {
    let mut with_exec = spec(1);
    with_exec.shutdown = vec![relaunch_api::ContainerShutdown {
        container: "db".into(),
        action: relaunch_api::ShutdownAction {
            exec: Some(relaunch_api::ExecAction {
                command: vec!["stop".into()],
            }),
            http_get: None,
        },
    }];
    with_exec.containers = vec!["db".into()];
    let mut o = observed(rollout(with_exec.clone(), None), vec![pod(0)]);
    o.exec_policy = Some(ExecPolicy::Missing(
        "install manifests/base/admission-policy.yaml".into(),
    ));
    let decided = reconcile(&o);
    assert_eq!(events(&decided.actions), [("Failed", true)]);
    let (status, _) = written(&decided.actions).unwrap();
    assert_eq!(status.phase, RolloutPhase::Failed);
    assert_eq!(
        status.message.as_deref(),
        Some("install manifests/base/admission-policy.yaml")
    );
    assert!(
        !decided
            .actions
            .iter()
            .any(|a| matches!(a, Action::StartBatch { .. })),
        "nothing started"
    );
    o.exec_policy = None;
    assert!(reconcile(&o).actions.is_empty(), "unknown: waits");
    // Without exec the policy does not matter.
    let mut plain = observed(rollout(spec(1), None), vec![pod(0)]);
    plain.exec_policy = Some(ExecPolicy::Missing("x".into()));
    let decided = reconcile(&plain);
    assert!(
        written(&decided.actions).is_none_or(|(s, _)| s.phase != RolloutPhase::Failed),
        "{:?}",
        decided.actions
    );
}

#[test]
fn a_missing_workload_is_waited_for_and_said_in_status() {
    let mut o = observed(rollout(spec(1), None), vec![]);
    o.target = Err("waiting for StatefulSet/db to exist in namespace default".into());
    let decided = reconcile(&o);
    assert_eq!(decided.counts, None);
    assert_eq!(events(&decided.actions), []);
    let (status, completed) = written(&decided.actions).unwrap();
    assert_eq!(status.phase, RolloutPhase::Pending);
    assert_eq!(
        status.message.as_deref(),
        Some("waiting for StatefulSet/db to exist in namespace default")
    );
    assert!(completed.is_none());
}

#[test]
fn a_batch_starts_with_one_deterministic_request_per_pod_then_status_and_events() {
    let decided = reconcile(&observed(
        rollout(spec(1), None),
        vec![pod(0), pod(1), pod(2)],
    ));
    let counts = decided.counts.unwrap();
    assert_eq!(counts.pods[3], ("pending", 3));
    assert_eq!(counts.blocked, None);
    let [Action::StartBatch(batch)] = decided.actions.as_slice() else {
        panic!("{:?}", decided.actions);
    };
    assert_eq!(batch.pods, ["db-2"], "highest ordinal first");
    let request = &batch.requests[0];
    assert_eq!(
        request.name_any(),
        state::request_name("db-restart", "db-2", "pod-uid-2")
    );
    let labels = request.labels();
    assert_eq!(
        labels.get(LABEL_NODE_NAME).map(String::as_str),
        Some("node-1")
    );
    assert_eq!(
        labels.get(LABEL_POD_UID).map(String::as_str),
        Some("pod-uid-2")
    );
    assert_eq!(
        labels.get(LABEL_ROLLING_RESTART).map(String::as_str),
        Some("db-restart")
    );
    assert_eq!(request.owner_references()[0].uid, "rollout-uid");

    let Action::StartBatch(batch) = decided.actions.into_iter().next().unwrap() else {
        unreachable!()
    };
    let then = batch.started(1);
    assert_eq!(
        events(&then),
        [("BatchStarted", false), ("Progressing", false)]
    );
    let (status, _) = written(&then).unwrap();
    assert_eq!(
        (status.phase, status.batches, status.in_progress),
        (RolloutPhase::Progressing, 1, 1)
    );
    assert_eq!(status.current_batch, ["db-2"]);
}

#[test]
fn a_request_that_could_not_be_created_is_not_counted_in_progress() {
    let decided = reconcile(&observed(
        rollout(spec(2), None),
        vec![pod(0), pod(1), pod(2)],
    ));
    let Some(Action::StartBatch(batch)) = decided.actions.into_iter().next() else {
        panic!("no batch");
    };
    assert_eq!(batch.requests.len(), 2);
    let then = batch.started(1);
    let (status, _) = written(&then).unwrap();
    assert_eq!((status.batches, status.in_progress), (1, 1));
}

/// A request for pod `db-<ordinal>` the rollout did not create (a manual restart).
fn manual_request(ordinal: i32, pod_uid: Option<&str>) -> Arc<ContainerRecreateRequest> {
    let mut r = ContainerRecreateRequest::new(
        &format!("manual-{ordinal}"),
        relaunch_api::ContainerRecreateRequestSpec {
            pod_name: format!("db-{ordinal}"),
            ..Default::default()
        },
    );
    r.metadata.namespace = Some("default".into());
    r.metadata.labels =
        pod_uid.map(|uid| BTreeMap::from([(LABEL_POD_UID.to_string(), uid.to_string())]));
    r.status = Some(ContainerRecreateRequestStatus {
        phase: RecreatePhase::Recreating,
        ..Default::default()
    });
    Arc::new(r)
}

#[test]
fn a_pod_a_scaledown_decommissions_is_busy_and_never_started() {
    // db-2 hands its data off: it counts as unavailable (maxUnavailable 1 used up)...
    let mut o = observed(rollout(spec(1), None), vec![pod(0), pod(1), pod(2)]);
    o.leaving = ["pod-uid-2".to_string()].into();
    let decided = reconcile(&o);
    assert!(
        !decided
            .actions
            .iter()
            .any(|a| matches!(a, Action::StartBatch(_))),
        "{:?}",
        decided.actions
    );
    // ... and with room for two, it is passed over.
    o.rollout = rollout(spec(2), None);
    let decided = reconcile(&o);
    let Some(Action::StartBatch(batch)) = decided.actions.first() else {
        panic!("{:?}", decided.actions);
    };
    assert_eq!(batch.pods, ["db-1"]);
}

#[test]
fn a_pod_restarted_by_another_request_uses_the_budget() {
    // db-2 is being restarted by hand; maxUnavailable 1 is used up.
    let mut o = observed(rollout(spec(1), None), vec![pod(0), pod(1), pod(2)]);
    o.others = vec![manual_request(2, Some("pod-uid-2"))];
    let decided = reconcile(&o);
    assert!(
        !decided
            .actions
            .iter()
            .any(|a| matches!(a, Action::StartBatch(_))),
        "{:?}",
        decided.actions
    );
    assert_eq!(
        decided.counts.unwrap().blocked,
        Some(ConditionReason::BlockedByUnavailablePods)
    );
    // With room for two, the busy pod is passed over.
    o.rollout = rollout(spec(2), None);
    let decided = reconcile(&o);
    let Some(Action::StartBatch(batch)) = decided.actions.first() else {
        panic!("{:?}", decided.actions);
    };
    assert_eq!(batch.pods, ["db-1"]);
    // A request for an earlier pod of that name (another UID) does not make the pod busy.
    o.rollout = rollout(spec(1), None);
    o.others = vec![manual_request(2, Some("pod-uid-old"))];
    let decided = reconcile(&o);
    let Some(Action::StartBatch(batch)) = decided.actions.first() else {
        panic!("{:?}", decided.actions);
    };
    assert_eq!(batch.pods, ["db-2"]);
}

#[test]
fn failures_pause_the_rollout_through_its_spec_before_anything_is_written() {
    let mut o = observed(rollout(spec(1), None), vec![pod(0), pod(1)]);
    o.requests = vec![request(1, RecreatePhase::Failed)];
    let decided = reconcile(&o);
    assert_eq!(
        decided.counts.as_ref().and_then(|c| c.blocked),
        Some(ConditionReason::FailureThresholdReached)
    );
    assert!(
        matches!(decided.actions[0], Action::Pause),
        "{:?}",
        decided.actions
    );
    assert_eq!(
        events(&decided.actions),
        [
            ("FailureThresholdReached", true),
            ("PodRestartFailed", true),
            ("Paused", true)
        ]
    );
    let (status, _) = written(&decided.actions).unwrap();
    assert_eq!(status.phase, RolloutPhase::Paused);
    assert!(state::paused_for_failures(status));
}

#[test]
fn a_pause_by_the_user_is_not_a_pause_for_failures() {
    let mut paused = spec(1);
    paused.strategy.paused = true;
    let decided = reconcile(&observed(rollout(paused, None), vec![pod(0)]));
    assert_eq!(
        decided.counts.as_ref().and_then(|c| c.blocked),
        Some(ConditionReason::Paused)
    );
    let (status, _) = written(&decided.actions).unwrap();
    assert_eq!(status.phase, RolloutPhase::Paused);
    assert!(!state::paused_for_failures(status));
    assert_eq!(state::blocked_reason(status), Some(ConditionReason::Paused));
}

#[test]
fn a_replica_behind_its_own_write_counts_the_rollout_but_does_not_act() {
    let mut o = observed(rollout(spec(1), None), vec![pod(0)]);
    o.behind_own_write = true;
    let decided = reconcile(&o);
    assert!(decided.counts.is_some());
    assert!(decided.actions.is_empty());
}

#[test]
fn a_cache_without_the_last_batch_is_neither_planned_on_nor_counted() {
    let mut o = observed(rollout(spec(1), None), vec![pod(0)]);
    o.settling = true;
    let decided = reconcile(&o);
    assert_eq!(decided.counts, None);
    assert!(decided.actions.is_empty());
}

#[test]
fn progress_counts_alone_are_written_at_most_once_per_interval() {
    // db-1 restarted; db-0's restart is in progress.
    let pods = vec![pod(0), pod(1)];
    let requests = vec![
        request(1, RecreatePhase::Succeeded),
        request(0, RecreatePhase::Recreating),
    ];
    let mut o = observed(rollout(spec(1), None), pods.clone());
    o.requests = requests.clone();
    let first = reconcile(&o);
    let (status, _) = written(&first.actions).unwrap();
    // What this replica wrote a moment ago, when db-1 was not counted yet.
    let mut before = status.clone();
    before.restarted = 0;
    before.pods.retain(|p| p.name != "db-1");

    let mut o = observed(rollout(spec(1), Some(before.clone())), pods.clone());
    o.requests = requests.clone();
    o.since_written = Some(Duration::from_millis(100));
    let held = reconcile(&o);
    assert!(
        matches!(held.actions.as_slice(), [Action::RequeueAfter(d)] if *d == COUNTS_INTERVAL - Duration::from_millis(100)),
        "{:?}",
        held.actions
    );
    o.since_written = Some(COUNTS_INTERVAL + Duration::from_millis(1));
    let late = reconcile(&o);
    let (status, _) = written(&late.actions).unwrap();
    assert_eq!(status.restarted, 1);
}

#[test]
fn the_end_of_a_rollout_is_written_with_its_duration_and_told() {
    let mut o = observed(rollout(spec(1), None), vec![pod(0), pod(1)]);
    o.requests = vec![
        request(0, RecreatePhase::Succeeded),
        request(1, RecreatePhase::Succeeded),
    ];
    let decided = reconcile(&o);
    assert_eq!(events(&decided.actions), [("Finished", false)]);
    let (status, completed) = written(&decided.actions).unwrap();
    assert_eq!(status.phase, RolloutPhase::Succeeded);
    assert_eq!(completed.map(|c| c.result), Some("succeeded"));
}

#[test]
fn an_unchanged_status_is_not_written_again() {
    let mut o = observed(rollout(spec(1), None), vec![pod(0), pod(1)]);
    o.requests = vec![request(1, RecreatePhase::Recreating)];
    let first = reconcile(&o);
    let (status, _) = written(&first.actions).unwrap();
    o.rollout = rollout(spec(1), Some(status.clone()));
    let again = reconcile(&o);
    assert!(written(&again.actions).is_none(), "{:?}", again.actions);
    assert_eq!(events(&again.actions), []);
}

#[test]
fn only_progress_counts_are_coalesced() {
    let previous = RollingRestartStatus {
        phase: RolloutPhase::Progressing,
        total: 10,
        batches: 1,
        current_batch: vec!["a".into()],
        in_progress: 1,
        ..Default::default()
    };
    let mut progress = previous.clone();
    progress.restarted = 1;
    progress.in_progress = 0;
    progress.pods.push(PodRestartResult {
        name: "a".into(),
        request: "r-a".into(),
        phase: RecreatePhase::Succeeded,
        message: None,
    });
    assert!(counts_only(&previous, &progress));
    assert!(counts_only(&previous, &previous));
    // The same batch, now waiting for its pods: the wording of progress waits too.
    let started = |status: &mut RollingRestartStatus, reason: ConditionReason, message: &str| {
        status.message = Some(message.into());
        let c = &mut status.conditions;
        state::set_condition(
            c,
            CONDITION_PROGRESSING,
            true,
            reason,
            message,
            Some(1),
            now(),
        );
        state::set_condition(
            c,
            CONDITION_BLOCKED,
            false,
            ConditionReason::NotBlocked,
            "",
            Some(1),
            now(),
        );
    };
    let mut previous = previous;
    started(&mut previous, ConditionReason::BatchStarted, "restarting a");
    let mut waiting = progress.clone();
    started(
        &mut waiting,
        ConditionReason::WaitingForReady,
        "waiting for a to be ready",
    );
    assert!(counts_only(&previous, &waiting));
    // Blocked by a budget is told at once.
    let mut blocked = waiting.clone();
    let c = &mut blocked.conditions;
    state::set_condition(
        c,
        CONDITION_BLOCKED,
        true,
        ConditionReason::BlockedByPDB,
        "pdb",
        Some(1),
        now(),
    );
    assert!(!counts_only(&previous, &blocked));
    let mut failed = progress.clone();
    failed.failed = 1;
    let mut batch = progress.clone();
    batch.batches = 2;
    let mut phase = progress.clone();
    phase.phase = RolloutPhase::Succeeded;
    let mut paused = progress.clone();
    paused.phase = RolloutPhase::Paused;
    paused.message = Some("paused".into());
    for changed in [failed, batch, phase, paused] {
        assert!(!counts_only(&previous, &changed), "{changed:?}");
    }
}

fn workload(kind: &'static str, annotations: &[(&str, &str)]) -> Workload {
    Workload {
        kind: kind.into(),
        meta: ObjectMeta {
            name: Some("db".into()),
            namespace: Some("default".into()),
            uid: Some("workload-uid".into()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
    }
}

#[test]
fn a_restart_annotation_starts_one_rollout_and_a_bad_one_is_told_once() {
    let good = workload("StatefulSet", &[(ANNOTATION_RESTART_AT, "t1")]);
    let none = HashSet::new();
    let first = triggered(std::slice::from_ref(&good), |_, _| false, &none);
    assert_eq!(first.create.len(), 1);
    let created = &first.create[0];
    assert_eq!(
        created.name_any(),
        trigger::rollout_name(&WorkloadKind::StatefulSet, "db", "t1")
    );
    assert_eq!(created.owner_references()[0].uid, "workload-uid");
    assert!(
        triggered(&[good], |_, _| true, &none).create.is_empty(),
        "already started"
    );

    let bad = workload(
        "StatefulSet",
        &[
            (ANNOTATION_RESTART_AT, "t2"),
            (trigger::ANNOTATION_ORDER, "sideways"),
        ],
    );
    let told = triggered(std::slice::from_ref(&bad), |_, _| false, &none);
    assert!(told.create.is_empty());
    assert_eq!(told.refused.len(), 1);
    assert_eq!(told.refused[0].1.reason, "RestartNotStarted");
    let again = triggered(&[bad], |_, _| false, &told.seen_refusals);
    assert!(again.refused.is_empty(), "told once");
    assert_eq!(again.seen_refusals, told.seen_refusals);
}

#[test]
fn a_pod_another_request_restarts_uses_a_shared_budget_while_still_ready() {
    // One PodDisruptionBudget (maxUnavailable 1) covers the rollout's pods and `cache-0`, which
    // the rollout does not target; another rollout has just asked to restart `cache-0`.
    let budget: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "storage", "namespace": "default"},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"tier": "storage"}}},
    }))
    .unwrap();
    let pod = |name: &str, app: &str| -> Arc<CachedPod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {
                    "name": name, "namespace": "default", "uid": format!("{name}-uid"),
                    "labels": {"app": app, "tier": "storage"},
                },
                "spec": {"nodeName": "node-1", "containers": [{"name": "db"}]},
                "status": {"phase": "Running", "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                ]},
            }))
            .unwrap(),
        )
    };
    let pods = vec![
        pod("db-0", "db"),
        pod("db-1", "db"),
        pod("cache-0", "cache"),
    ];
    let mut o = observed(rollout(spec(2), None), pods);
    o.budgets = vec![Arc::new(budget)];
    // Nothing else under way: the budget allows one of the rollout's pods.
    let decided = reconcile(&o);
    let Some(Action::StartBatch(batch)) = decided.actions.first() else {
        panic!("{:?}", decided.actions);
    };
    assert_eq!(batch.pods.len(), 1);
    // cache-0 is still Ready, but its restart is asked for: the budget is used up.
    let mut other = (*manual_request(0, Some("cache-0-uid"))).clone();
    other.spec.pod_name = "cache-0".into();
    other.status = None;
    o.others = vec![Arc::new(other)];
    let decided = reconcile(&o);
    assert!(
        !decided
            .actions
            .iter()
            .any(|a| matches!(a, Action::StartBatch(_))),
        "{:?}",
        decided.actions
    );
    assert_eq!(
        decided.counts.unwrap().blocked,
        Some(ConditionReason::BlockedByPDB)
    );
}
