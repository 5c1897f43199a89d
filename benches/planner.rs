//! The pure rollout planner at scale: time to decide one batch for a 10,000-pod workload with
//! PodDisruptionBudgets and role-aware order. `cargo bench --bench planner`.

// Benchmark code: an unwrap, expect or panic stops the run where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use relaunch_api::{OrdinalOrder, RoleOrder};
use relaunch_coordinator::rollout::planner::{
    Budget, Plan, PlanStrategy, RestartState, TargetPod, plan,
};
use support::Samples;

fn main() {
    let pods_count: usize = std::env::var("RELAUNCH_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let runs = support::iterations(50);
    let mut pods: Vec<TargetPod> = (0..pods_count)
        .map(|i| TargetPod {
            name: format!("db-{i}"),
            ordinal: Some(i as i32),
            labels: BTreeMap::from([(
                "role".to_string(),
                if i % 10 == 0 { "primary" } else { "replica" }.to_string(),
            )]),
            ready_seconds: Some(3600),
            restart: RestartState::NotStarted,
            busy: false,
        })
        .collect();
    // Ten budgets, each over a tenth of the pods, allowing 5 % disruption.
    let budgets: Vec<Budget> = (0..10)
        .map(|b| {
            let selected: BTreeSet<String> = (0..pods_count)
                .filter(|i| i % 10 == b)
                .map(|i| format!("db-{i}"))
                .collect();
            let desired = selected.len() - selected.len() / 20;
            Budget {
                name: format!("pdb-{b}"),
                desired_healthy: desired,
                selected,
            }
        })
        .collect();
    let strategy = PlanStrategy {
        max_unavailable: pods_count / 10,
        partition: None,
        ordinal: OrdinalOrder::OrdinalDescending,
        role: Some(RoleOrder {
            key: "role".into(),
            first: vec!["replica".into()],
            last: vec!["primary".into()],
        }),
        min_ready_seconds: 0,
        respect_budgets: true,
    };
    let health = BTreeMap::new();
    let mut first_batch = Samples::new(&format!("plan: first batch of {pods_count} pods"));
    let mut whole = Samples::new("plan: every batch of a whole rollout");
    let mut batches = 0;
    for run in 0..runs {
        let t = Instant::now();
        let decision = plan(&pods, &budgets, &health, &strategy);
        first_batch.push(t.elapsed());
        if run == 0 {
            // Walk a whole rollout once, timing each decision.
            let mut state = pods.clone();
            loop {
                let t = Instant::now();
                let decision = plan(&state, &budgets, &health, &strategy);
                whole.push(t.elapsed());
                match decision {
                    Plan::Start(batch) => {
                        batches += 1;
                        let started: BTreeSet<String> = batch.into_iter().collect();
                        for p in state.iter_mut().filter(|p| started.contains(&p.name)) {
                            p.restart = RestartState::Succeeded;
                        }
                    }
                    Plan::Done => break,
                    Plan::Wait(reason) => panic!("unexpected wait: {reason:?}"),
                }
            }
        }
        assert!(matches!(decision, Plan::Start(_)));
    }
    pods.truncate(0);
    println!(
        "pure planner, {pods_count} pods, 10 PDBs (5 % each), role-aware, maxUnavailable 10 %"
    );
    println!("{}", support::header());
    println!("{}", first_batch.row());
    println!("{}", whole.row());
    println!("whole rollout: {batches} batches");
}
