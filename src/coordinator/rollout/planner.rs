//! The rollout planner: which pods to restart next, decided in pure code from the target pods,
//! the PodDisruptionBudgets that select them, and the strategy. No I/O; property-tested.

use std::collections::{BTreeMap, BTreeSet};

use relaunch_api::{OrdinalOrder, RoleOrder};

/// Where a target pod is in this rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartState {
    NotStarted,
    /// Its ContainerRecreateRequest exists and has not finished.
    InProgress,
    Succeeded,
    Failed,
}

/// A pod the rollout targets, as the planner needs to see it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetPod {
    pub name: String,
    /// StatefulSet ordinal, when the pod has one.
    pub ordinal: Option<i32>,
    pub labels: BTreeMap<String, String>,
    /// Seconds the pod has been Ready without interruption; `None` when not Ready.
    pub ready_seconds: Option<i64>,
    pub restart: RestartState,
    /// An unfinished request this rollout did not create (a manual one, another rollout's)
    /// restarts or is about to restart the pod: it counts as unavailable and is not started.
    pub busy: bool,
}

/// A PodDisruptionBudget: its limits and the pods it selects (targets or not).
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub name: String,
    /// How many selected pods must stay healthy (`minAvailable`, or selected − `maxUnavailable`),
    /// already resolved from counts or percentages.
    pub desired_healthy: usize,
    pub selected: BTreeSet<String>,
}

/// The strategy, resolved to plain numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanStrategy {
    pub max_unavailable: usize,
    pub partition: Option<i32>,
    pub ordinal: OrdinalOrder,
    pub role: Option<RoleOrder>,
    pub min_ready_seconds: i64,
    pub respect_budgets: bool,
}

/// Why no batch starts now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// The previous batch is restarting or not yet available for `minReadySeconds`.
    WaitingForReady,
    /// A PodDisruptionBudget allows no further disruption (its name).
    BlockedByPDB(String),
    /// Pods unavailable for other reasons already use up `maxUnavailable`.
    BlockedByUnavailablePods,
}

/// The planner's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Restart these pods now, in this order.
    Start(Vec<String>),
    Wait(WaitReason),
    /// Every target pod has been restarted (or failed) and is settled.
    Done,
}

/// Decides the next batch. `health` says whether pods selected by budgets but not targeted are
/// healthy (Ready); target pods' health comes from `pods`.
pub fn plan(
    pods: &[TargetPod],
    budgets: &[Budget],
    health: &BTreeMap<String, bool>,
    strategy: &PlanStrategy,
) -> Plan {
    let available = |p: &TargetPod| {
        !p.busy
            && p.restart != RestartState::InProgress
            && p.ready_seconds
                .is_some_and(|s| s >= strategy.min_ready_seconds)
    };
    let eligible = |p: &TargetPod| match (strategy.partition, p.ordinal) {
        (Some(partition), Some(ordinal)) => ordinal >= partition,
        _ => true,
    };

    // Batches run one at a time: wait while the last one restarts or settles.
    let unsettled = pods.iter().any(|p| {
        p.restart == RestartState::InProgress
            || (p.restart == RestartState::Succeeded && !available(p))
    });
    if unsettled {
        return Plan::Wait(WaitReason::WaitingForReady);
    }

    let group = |p: &TargetPod| role_group(p, strategy.role.as_ref());
    let remaining: Vec<&TargetPod> = pods
        .iter()
        .filter(|p| p.restart == RestartState::NotStarted && eligible(p))
        .collect();
    let Some(current_group) = remaining.iter().map(|p| group(p)).min() else {
        return Plan::Done;
    };
    // A busy pod keeps its group open (the rollout is not done with it) but is not started
    // while another restart is under way: when only busy pods are left, the rollout waits.
    let mut candidates: Vec<&TargetPod> = remaining
        .into_iter()
        .filter(|p| group(p) == current_group && !p.busy)
        .collect();
    candidates.sort_by(|a, b| {
        let by_ordinal = match strategy.ordinal {
            // Unknown never gets here (validation refuses it); the default order if it did.
            OrdinalOrder::OrdinalDescending | OrdinalOrder::Unknown => b.ordinal.cmp(&a.ordinal),
            OrdinalOrder::OrdinalAscending => a.ordinal.cmp(&b.ordinal),
        };
        by_ordinal.then_with(|| a.name.cmp(&b.name))
    });

    let mut unavailable = pods.iter().filter(|p| !available(p)).count();
    let mut healthy: BTreeMap<&str, bool> = health.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    for p in pods {
        healthy.insert(p.name.as_str(), available(p));
    }
    // Healthy pods per budget, counted once and decremented as the batch takes pods.
    let mut budget_healthy: Vec<usize> = budgets
        .iter()
        .map(|b| {
            b.selected
                .iter()
                .filter(|name| healthy.get(name.as_str()).copied().unwrap_or(false))
                .count()
        })
        .collect();
    let mut batch = Vec::new();
    let mut blocked = None;
    for candidate in candidates {
        // Restarting a pod that is already unavailable costs nothing more.
        let costs = available(candidate);
        if costs && unavailable >= strategy.max_unavailable {
            if batch.is_empty() {
                blocked = Some(WaitReason::BlockedByUnavailablePods);
            }
            break;
        }
        if costs && strategy.respect_budgets {
            let refusing = budgets
                .iter()
                .zip(&budget_healthy)
                .find(|(b, healthy)| {
                    b.selected.contains(&candidate.name) && **healthy <= b.desired_healthy
                })
                .map(|(b, _)| b);
            if let Some(budget) = refusing {
                if batch.is_empty() {
                    blocked = Some(WaitReason::BlockedByPDB(budget.name.clone()));
                }
                break;
            }
        }
        if costs {
            unavailable += 1;
            for (b, healthy) in budgets.iter().zip(budget_healthy.iter_mut()) {
                if b.selected.contains(&candidate.name) {
                    *healthy -= 1;
                }
            }
        }
        batch.push(candidate.name.clone());
    }
    match (batch.is_empty(), blocked) {
        (false, _) => Plan::Start(batch),
        (true, Some(reason)) => Plan::Wait(reason),
        (true, None) => Plan::Wait(WaitReason::BlockedByUnavailablePods),
    }
}

/// 0 for the role values that go first, 2 for those that go last, 1 for everything else.
fn role_group(pod: &TargetPod, role: Option<&RoleOrder>) -> u8 {
    let Some(role) = role else { return 1 };
    match pod.labels.get(&role.key) {
        Some(v) if role.first.contains(v) => 0,
        Some(v) if role.last.contains(v) => 2,
        _ => 1,
    }
}

/// Healthy pods a budget requires, from `minAvailable` or `maxUnavailable` (count or percent of
/// the pods it selects; percentages round up, as the disruption controller does).
pub fn desired_healthy(
    min_available: Option<&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
    max_unavailable: Option<&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
    selected: usize,
) -> usize {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let scaled = |v: &IntOrString| -> usize {
        match v {
            IntOrString::Int(n) => (*n).max(0) as usize,
            IntOrString::String(s) => {
                let percent: usize = s.trim_end_matches('%').parse().unwrap_or(100);
                // A budget's percentage comes from the API: never overflow on a huge one.
                selected.saturating_mul(percent).div_ceil(100)
            }
        }
    };
    match (min_available, max_unavailable) {
        (Some(min), _) => scaled(min),
        (None, Some(max)) => selected.saturating_sub(scaled(max)),
        // Upstream defaults minAvailable to 1 when neither field is set.
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use proptest::prelude::*;

    fn pod(name: &str, ordinal: i32) -> TargetPod {
        TargetPod {
            name: name.into(),
            ordinal: Some(ordinal),
            labels: BTreeMap::new(),
            ready_seconds: Some(3600),
            restart: RestartState::NotStarted,
            busy: false,
        }
    }

    fn statefulset(n: i32) -> Vec<TargetPod> {
        (0..n).map(|i| pod(&format!("db-{i}"), i)).collect()
    }

    fn strategy(max_unavailable: usize) -> PlanStrategy {
        PlanStrategy {
            max_unavailable,
            partition: None,
            ordinal: OrdinalOrder::OrdinalDescending,
            role: None,
            min_ready_seconds: 0,
            respect_budgets: true,
        }
    }

    fn start(plan: Plan) -> Vec<String> {
        match plan {
            Plan::Start(batch) => batch,
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn six_pods_two_at_a_time_highest_ordinal_first() {
        let mut pods = statefulset(6);
        let s = strategy(2);
        let mut batches = Vec::new();
        loop {
            match plan(&pods, &[], &BTreeMap::new(), &s) {
                Plan::Start(batch) => {
                    for name in &batch {
                        pods.iter_mut().find(|p| &p.name == name).unwrap().restart =
                            RestartState::Succeeded;
                    }
                    batches.push(batch);
                }
                Plan::Done => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            batches,
            vec![
                vec!["db-5", "db-4"],
                vec!["db-3", "db-2"],
                vec!["db-1", "db-0"]
            ]
        );
    }

    #[test]
    fn waits_for_the_batch_to_be_ready_for_min_ready_seconds() {
        let mut pods = statefulset(3);
        pods[2].restart = RestartState::Succeeded;
        pods[2].ready_seconds = Some(3);
        let mut s = strategy(1);
        s.min_ready_seconds = 10;
        assert_eq!(
            plan(&pods, &[], &BTreeMap::new(), &s),
            Plan::Wait(WaitReason::WaitingForReady)
        );
        pods[2].ready_seconds = Some(10);
        assert_eq!(start(plan(&pods, &[], &BTreeMap::new(), &s)), vec!["db-1"]);
        pods[1].restart = RestartState::InProgress;
        assert_eq!(
            plan(&pods, &[], &BTreeMap::new(), &s),
            Plan::Wait(WaitReason::WaitingForReady)
        );
    }

    #[test]
    fn a_pdb_holds_the_batch_to_what_it_allows() {
        let pods = statefulset(6);
        let budget = Budget {
            name: "db-pdb".into(),
            desired_healthy: 5,
            selected: pods.iter().map(|p| p.name.clone()).collect(),
        };
        assert_eq!(
            start(plan(
                &pods,
                std::slice::from_ref(&budget),
                &BTreeMap::new(),
                &strategy(2)
            )),
            vec!["db-5"]
        );
        let mut without = strategy(2);
        without.respect_budgets = false;
        assert_eq!(
            start(plan(&pods, &[budget], &BTreeMap::new(), &without)).len(),
            2
        );
    }

    #[test]
    fn a_pdb_counting_an_unhealthy_outsider_blocks_the_rollout() {
        let pods = statefulset(2);
        let mut selected: BTreeSet<String> = pods.iter().map(|p| p.name.clone()).collect();
        selected.insert("other".into());
        let budget = Budget {
            name: "all".into(),
            desired_healthy: 2,
            selected,
        };
        let health = BTreeMap::from([("other".to_string(), false)]);
        assert_eq!(
            plan(&pods, &[budget], &health, &strategy(1)),
            Plan::Wait(WaitReason::BlockedByPDB("all".into()))
        );
    }

    #[test]
    fn replicas_go_before_the_primary_and_the_primary_waits_for_them() {
        let mut pods = statefulset(3);
        for (p, role) in pods.iter_mut().zip(["primary", "replica", "replica"]) {
            p.labels.insert("role".into(), role.into());
        }
        let mut s = strategy(3);
        s.role = Some(RoleOrder {
            key: "role".into(),
            first: vec!["replica".into()],
            last: vec!["primary".into(), "master".into()],
        });
        assert_eq!(
            start(plan(&pods, &[], &BTreeMap::new(), &s)),
            vec!["db-2", "db-1"]
        );
        pods[1].restart = RestartState::Succeeded;
        pods[2].restart = RestartState::Succeeded;
        assert_eq!(start(plan(&pods, &[], &BTreeMap::new(), &s)), vec!["db-0"]);
    }

    #[test]
    fn partition_leaves_lower_ordinals_alone() {
        let mut pods = statefulset(6);
        let mut s = strategy(6);
        s.partition = Some(3);
        assert_eq!(
            start(plan(&pods, &[], &BTreeMap::new(), &s)),
            vec!["db-5", "db-4", "db-3"]
        );
        for p in pods.iter_mut().skip(3) {
            p.restart = RestartState::Succeeded;
        }
        assert_eq!(plan(&pods, &[], &BTreeMap::new(), &s), Plan::Done);
    }

    #[test]
    fn an_unready_pod_is_restarted_without_using_the_budget_when_its_turn_comes() {
        let mut pods = statefulset(2);
        pods[1].ready_seconds = None;
        // db-1 (highest ordinal, unready) goes first and costs nothing; db-0 would cost one more.
        assert_eq!(
            start(plan(&pods, &[], &BTreeMap::new(), &strategy(1))),
            vec!["db-1"]
        );
        let mut pods = statefulset(2);
        pods[0].ready_seconds = None;
        // db-1 is healthy but db-0 already uses the only slot: blocked.
        assert_eq!(
            plan(&pods, &[], &BTreeMap::new(), &strategy(1)),
            Plan::Wait(WaitReason::BlockedByUnavailablePods)
        );
    }

    #[test]
    fn a_pod_restarted_by_someone_else_uses_the_budget_and_is_not_started() {
        // A manual request restarts db-5 while the rollout runs with maxUnavailable 1.
        let mut pods = statefulset(6);
        pods[5].busy = true;
        assert_eq!(
            plan(&pods, &[], &BTreeMap::new(), &strategy(1)),
            Plan::Wait(WaitReason::BlockedByUnavailablePods)
        );
        // With room for two, db-5 is skipped: db-4 goes, and only db-4.
        assert_eq!(
            start(plan(&pods, &[], &BTreeMap::new(), &strategy(2))),
            vec!["db-4"]
        );
        // Everything else restarted: the rollout waits for db-5 rather than being done.
        for p in pods.iter_mut().take(5) {
            p.restart = RestartState::Succeeded;
        }
        assert_eq!(
            plan(&pods, &[], &BTreeMap::new(), &strategy(2)),
            Plan::Wait(WaitReason::BlockedByUnavailablePods)
        );
        pods[5].busy = false;
        assert_eq!(
            start(plan(&pods, &[], &BTreeMap::new(), &strategy(2))),
            vec!["db-5"]
        );
        // A pod the rollout already restarted, restarted again by someone else: the rollout
        // waits for it as for its own batch.
        pods[5].restart = RestartState::Succeeded;
        pods[0].restart = RestartState::NotStarted;
        pods[5].busy = true;
        assert_eq!(
            plan(&pods, &[], &BTreeMap::new(), &strategy(2)),
            Plan::Wait(WaitReason::WaitingForReady)
        );
    }

    #[test]
    fn budgets_resolve_like_the_disruption_controller() {
        assert_eq!(desired_healthy(Some(&IntOrString::Int(5)), None, 6), 5);
        assert_eq!(
            desired_healthy(Some(&IntOrString::String("50%".into())), None, 5),
            3
        );
        assert_eq!(desired_healthy(None, Some(&IntOrString::Int(1)), 6), 5);
        assert_eq!(
            desired_healthy(None, Some(&IntOrString::String("34%".into())), 6),
            3
        );
    }

    fn arb_pods() -> impl Strategy<Value = Vec<TargetPod>> {
        prop::collection::vec(
            (
                prop::option::of(0i64..20),
                prop_oneof![
                    Just(RestartState::NotStarted),
                    Just(RestartState::InProgress),
                    Just(RestartState::Succeeded),
                    Just(RestartState::Failed)
                ],
                prop_oneof![Just("primary"), Just("replica"), Just("other")],
                prop::bool::weighted(0.2),
            ),
            0..12,
        )
        .prop_map(|specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (ready, restart, role, busy))| TargetPod {
                    name: format!("p-{i}"),
                    ordinal: Some(i as i32),
                    labels: BTreeMap::from([("role".to_string(), role.to_string())]),
                    ready_seconds: ready,
                    restart,
                    busy,
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn planned_batches_keep_every_invariant(
            pods in arb_pods(),
            max_unavailable in 1usize..5,
            partition in prop::option::of(0i32..12),
            min_ready in 0i64..10,
            pdb_min in 0usize..12,
            pdb_mask in prop::collection::vec(any::<bool>(), 12),
            role_aware in any::<bool>(),
        ) {
            let s = PlanStrategy {
                max_unavailable,
                partition,
                ordinal: OrdinalOrder::OrdinalDescending,
                role: role_aware.then(|| RoleOrder { key: "role".into(), first: vec!["replica".into()], last: vec!["primary".into()] }),
                min_ready_seconds: min_ready,
                respect_budgets: true,
            };
            let selected: BTreeSet<String> = pods.iter().zip(&pdb_mask).filter(|(_, m)| **m).map(|(p, _)| p.name.clone()).collect();
            let budget = Budget { name: "pdb".into(), desired_healthy: pdb_min, selected: selected.clone() };
            // A pod another request restarts is unavailable, whatever its Ready condition says.
            let available = |p: &TargetPod| !p.busy && p.restart != RestartState::InProgress && p.ready_seconds.is_some_and(|r| r >= min_ready);
            let Plan::Start(batch) = plan(&pods, std::slice::from_ref(&budget), &BTreeMap::new(), &s) else { return Ok(()); };
            let picked: Vec<&TargetPod> = batch.iter().map(|n| pods.iter().find(|p| &p.name == n).unwrap()).collect();

            // Each pod at most once, never one already restarted or restarting.
            let unique: BTreeSet<&String> = batch.iter().collect();
            prop_assert_eq!(unique.len(), batch.len());
            prop_assert!(picked.iter().all(|p| p.restart == RestartState::NotStarted));
            // Never a pod another request is restarting.
            prop_assert!(picked.iter().all(|p| !p.busy));
            // Partition respected.
            if let Some(partition) = partition {
                prop_assert!(picked.iter().all(|p| p.ordinal.unwrap() >= partition));
            }
            // Never more than maxUnavailable unavailable, unless already so for other reasons
            // (then no available pod is taken down).
            let before = pods.iter().filter(|p| !available(p)).count();
            let after = before + picked.iter().filter(|p| available(p)).count();
            prop_assert!(after <= max_unavailable.max(before));
            if before >= max_unavailable {
                prop_assert!(picked.iter().all(|p| !available(p)));
            }
            // Never a batch the PDB would not allow.
            let healthy_before = pods.iter().filter(|p| selected.contains(&p.name) && available(p)).count();
            let taken = picked.iter().filter(|p| selected.contains(&p.name) && available(p)).count();
            prop_assert!(taken == 0 || healthy_before - taken >= pdb_min);
            // Role order: nothing from a later group while an earlier group still has work.
            if role_aware {
                let group = |p: &TargetPod| role_group(p, s.role.as_ref());
                let first_open = pods.iter().filter(|p| p.restart == RestartState::NotStarted && (partition.is_none_or(|q| p.ordinal.unwrap() >= q))).map(group).min().unwrap();
                prop_assert!(picked.iter().all(|p| group(p) == first_open));
            }
            // Batches never overlap: nothing starts while a restart is in progress.
            prop_assert!(pods.iter().all(|p| p.restart != RestartState::InProgress));
        }
    }
}
