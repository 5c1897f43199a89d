//! The chaos test (issue 11): a RollingRestart of 30 pods on 3 nodes, with 2 coordinator replicas
//! reached through one address that spreads connections over both and cuts them at random (the
//! test bed's `SpreadingProxy`, standing in for the Service), while the test API server injects
//! 500s, 429s, early watch ends and 410s into every request relaunch makes, and the test SIGKILLs
//! one coordinator replica and one agent at random (seeded) moments and starts each again.
//!
//! What must hold: every pod restarted exactly once, in place; the invariant monitor never sees
//! more than `maxUnavailable` target pods unavailable; no request failed (none for
//! `AgentNotReporting`, with an agent timeout of 20 s so that one could); no relaunch process
//! exited on its own. It prints how many faults of each
//! kind were injected, the kills and the wall time. Real processes, real containerd; needs root.
//! `RELAUNCH_CHAOS_SEED=<n>` repeats the run that printed seed `n`.

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use relaunch_api::{RecreatePhase, RolloutPhase};
use relaunch_testbed::{FaultRates, RELAUNCH_NAMESPACE, SpreadConfig, TEST_IMAGE};
use serde_json::json;
use support::{Bed, DATABASE, Monitor};

const PODS: usize = 30;
const NODES: usize = 3;
const MAX_UNAVAILABLE: usize = 6;
/// The whole rollout, faults and kills included, must finish within this.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(150);
/// The coordinators' `--agent-timeout` here (5 minutes by default, longer than this whole test).
const AGENT_TIMEOUT: &str = "20s";
const DEFAULT_SEED: u64 = 0xc4a0_5011;

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A duration in `[from, to)`.
    fn between(&mut self, from: Duration, to: Duration) -> Duration {
        let span = (to - from).as_millis() as u64;
        from + Duration::from_millis(self.next() % span.max(1))
    }
}

/// A relaunch process the test may kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    /// 0: the first coordinator, 1: the replica.
    Coordinator(usize),
    /// The agent of node index `n`.
    Agent(usize),
}

/// Whether each relaunch process still runs; the names of those that do not.
fn exited(bed: &mut Bed) -> Vec<String> {
    let mut gone = Vec::new();
    let sandbox = &mut bed.sandbox;
    if !sandbox.coordinator().unwrap().is_running() {
        gone.push("coordinator 0".to_string());
    }
    if !sandbox.coordinator_replica(0).unwrap().is_running() {
        gone.push("coordinator 1".to_string());
    }
    for i in 0..NODES {
        if !sandbox.agent(i).unwrap().is_running() {
            gone.push(format!("agent of node-{}", i + 1));
        }
    }
    gone
}

async fn kill_and_restart(bed: &mut Bed, victim: Victim) {
    match victim {
        Victim::Coordinator(0) => {
            let process = bed.sandbox.coordinator().unwrap();
            process.kill();
            process.start().unwrap();
        }
        Victim::Coordinator(_) => {
            let process = bed.sandbox.coordinator_replica(0).unwrap();
            process.kill();
            process.start().unwrap();
        }
        // Kills it (SIGKILL), starts it again and waits until it is ready.
        Victim::Agent(i) => bed.sandbox.restart_agent(i).await.unwrap(),
    }
}

/// The requests of `pods` and every log line that names them, for a failure message.
async fn diagnose(bed: &Bed, pods: &[String]) -> String {
    let mut out = String::new();
    let requests = bed.requests_of("chaos").await;
    let mut names = Vec::new();
    for r in requests.iter().filter(|r| pods.contains(&r.spec.pod_name)) {
        let name = r.metadata.name.clone().unwrap_or_default();
        out.push_str(&format!(
            "request {name}: labels {:?}, status {}\n",
            r.metadata.labels,
            serde_json::to_string(&r.status).unwrap()
        ));
        names.push(name);
    }
    let mut logs = vec![
        "coordinator/log".to_string(),
        "coordinator-2/log".to_string(),
    ];
    logs.extend((1..=NODES).map(|n| format!("nodes/node-{n}/agent/log")));
    for log in logs {
        let text = std::fs::read_to_string(bed.dir().join(&log)).unwrap_or_default();
        out.push_str(&format!("--- {log}\n"));
        for line in text
            .lines()
            .filter(|l| {
                names.iter().any(|n| l.contains(n.as_str()))
                    || l.contains("ERROR")
                    || l.contains("WARN")
            })
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_of_30_pods_survives_faults_kills_and_spread_connections() {
    let started = Instant::now();
    let seed = std::env::var("RELAUNCH_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    println!("chaos: seed {seed}");
    let mut rng = Rng(seed);
    let mut bed = Bed::with_config(NODES, |config| {
        config.coordinators = 2;
        // Liveness that can trip within the run: a silent agent fails its requests after 20 s
        // (`AgentNotReporting`), and healthy agents re-send their view every 2 s. Reports land on
        // either replica; the leader must still see every agent alive.
        config.coordinator_args = vec!["--agent-timeout".into(), AGENT_TIMEOUT.into()];
        config.agent_args = vec!["--report-heartbeat".into(), "2s".into()];
        config.spread = SpreadConfig {
            cut_rate: 0.8,
            max_lifetime: Duration::from_secs(3),
            seed,
        };
    })
    .await;
    // No readiness probe: ready once running (30 exec probes a second would load 2 cores).
    let spec = json!({"terminationGracePeriodSeconds": 10, "containers": [
        {"name": "db", "image": TEST_IMAGE, "command": ["sh", "-c", DATABASE]}]});
    let before = bed.statefulset("db", PODS, spec).await;
    let set_up = started.elapsed();

    bed.sandbox.api().faults().inject(FaultRates {
        users: format!("system:serviceaccount:{RELAUNCH_NAMESPACE}:"),
        error: 0.03,
        throttle: 0.03,
        watch_close: 1.0,
        watch_lifetime: Duration::from_secs(5),
        watch_gone: 0.5,
        seed,
    });
    let monitor = Monitor::start(&bed.client, "db", "chaos", MAX_UNAVAILABLE, &before);
    bed.rollout(
        "chaos",
        json!({"target": {"workloadRef": {"kind": "StatefulSet", "name": "db"}},
               "strategy": {"maxUnavailable": MAX_UNAVAILABLE}}),
    )
    .await;
    let rollout_started = Instant::now();

    // One coordinator replica and one agent, each at its own random moment of the rollout.
    let mut kills = vec![
        (
            rng.between(Duration::from_secs(2), Duration::from_secs(15)),
            Victim::Coordinator((rng.next() % 2) as usize),
        ),
        (
            rng.between(Duration::from_secs(2), Duration::from_secs(15)),
            Victim::Agent((rng.next() % NODES as u64) as usize),
        ),
    ];
    kills.sort_by_key(|(at, _)| *at);
    let mut done_kills = Vec::new();
    let status = loop {
        let gone = exited(&mut bed);
        assert!(
            gone.is_empty(),
            "exited on their own: {gone:?}; coordinator log:\n{}",
            bed.coordinator_log()
        );
        if let Some((at, victim)) = kills.first().copied()
            && rollout_started.elapsed() >= at
        {
            kills.remove(0);
            kill_and_restart(&mut bed, victim).await;
            done_kills.push(format!("{victim:?} at {at:?}"));
            continue;
        }
        let status = bed
            .rollouts()
            .get("chaos")
            .await
            .ok()
            .and_then(|r| r.status);
        if let Some(status) = &status
            && matches!(status.phase, RolloutPhase::Succeeded | RolloutPhase::Failed)
            && kills.is_empty()
        {
            break status.clone();
        }
        if rollout_started.elapsed() >= ROLLOUT_DEADLINE {
            let stuck = status.map(|s| s.current_batch).unwrap_or_default();
            panic!(
                "the rollout did not finish in {ROLLOUT_DEADLINE:?}; stuck: {stuck:?}; faults {:?}; kills {done_kills:?}\n{}",
                bed.sandbox.api().faults().injected(),
                diagnose(&bed, &stuck).await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rollout_time = rollout_started.elapsed();
    let faults = bed.sandbox.api().faults().injected();
    bed.sandbox.api().faults().stop_injecting();
    let spread = bed.sandbox.coordinator_proxy().unwrap().counts();
    println!(
        "chaos: {PODS} pods on {NODES} nodes, set-up {set_up:?}, rollout {rollout_time:?}, total {:?}",
        started.elapsed()
    );
    println!(
        "chaos: faults injected: {} x 500, {} x 429, {} watches closed early, {} watches 410 Gone",
        faults.errors, faults.throttled, faults.watches_closed, faults.watches_gone
    );
    println!(
        "chaos: proxy: {} connections, per coordinator {:?}, {} cut, {} refused",
        spread.connections, spread.per_backend, spread.cut, spread.refused
    );
    println!("chaos: kills: {done_kills:?}");

    assert_eq!(status.phase, RolloutPhase::Succeeded, "{status:?}");
    assert_eq!(
        (status.total, status.restarted, status.failed),
        (PODS as i32, PODS as i32, 0),
        "{status:?}"
    );
    let seen = monitor.check();
    assert!(seen.most_unavailable <= MAX_UNAVAILABLE, "{seen:?}");
    bed.assert_each_restarted_once(&before).await;
    let requests = bed.requests_of("chaos").await;
    assert_eq!(requests.len(), PODS, "one request per pod");
    for r in &requests {
        let status = r.status.clone().unwrap_or_default();
        let text = serde_json::to_string(&status).unwrap();
        assert!(
            !text.contains("AgentNotReporting"),
            "{}: {text}",
            r.metadata.name.clone().unwrap_or_default()
        );
        assert_eq!(status.phase, RecreatePhase::Succeeded, "{text}");
    }
    let gone = exited(&mut bed);
    assert!(gone.is_empty(), "exited on their own: {gone:?}");
    assert_eq!(done_kills.len(), 2);
    assert!(
        faults.errors > 0
            && faults.throttled > 0
            && faults.watches_closed > 0
            && faults.watches_gone > 0,
        "every kind of fault was injected: {faults:?}"
    );
    assert!(
        spread.cut > 0 && spread.per_backend.iter().all(|n| *n > 0),
        "connections were spread over both coordinators and cut: {spread:?}"
    );
    bed.shutdown().await;
}
