//! End-to-end ContainerRecreateRequest latency, broken down by phase, next to the raw CRI floor
//! measured on the same containerd in the same run; then the agent's footprint on a full node.
//!
//! Run as root: `cargo bench --bench recreate` (`RELAUNCH_BENCH_ITERATIONS` = recreates, default
//! 20; `RELAUNCH_BENCH_PODS` = pods on the full node, default 110).

// Benchmark code: an unwrap, expect or panic stops the run where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use relaunch_api::RecreatePhase;
use relaunch_testbed::TEST_IMAGE;
use serde_json::{Value, json};
use support::{Bed, EXITS_ON_SIGTERM, Samples, eventually};

#[tokio::main]
async fn main() {
    let runs = support::iterations(20);
    let full_node: usize = std::env::var("RELAUNCH_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(110);
    let mut bed = Bed::start(1).await;
    let runtime = bed.sandbox.containerd().client().await.expect("CRI client");
    let agent_admin = bed.sandbox.agent_admin(0).expect("node-1's agent");

    let floor = support::measure_floor(bed.sandbox.containerd(), &runtime, runs).await;
    let latency = measure_recreates(&bed, agent_admin, runs).await;

    println!(
        "recreate of a container that exits at once on SIGTERM, {runs} runs, 1 simulated node"
    );
    println!("{}", support::header());
    for row in floor.rows() {
        println!("{row}");
    }
    for samples in &latency {
        println!("{}", samples.row());
    }

    let footprint = measure_footprint(&bed, agent_admin, full_node).await;
    println!();
    for line in footprint {
        println!("{line}");
    }
    let restarted = Instant::now();
    bed.sandbox
        .restart_agent(0)
        .await
        .expect("restart the agent");
    println!(
        "  start to ready     {:.0} ms (process start, watches synced, runtime answered; polled every 20 ms)",
        restarted.elapsed().as_secs_f64() * 1000.0
    );
    bed.shutdown().await;
}

/// The agent's metrics, as name{labels} → value.
async fn scrape(admin: SocketAddr) -> HashMap<String, f64> {
    let (_, text) = support::http_get(admin, "/metrics")
        .await
        .expect("scrape the agent's metrics");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn phase_sum(metrics: &HashMap<String, f64>, phase: &str) -> f64 {
    metrics
        .get(&format!(
            "relaunch_agent_recreate_duration_seconds_sum{{phase=\"{phase}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
}

/// Recreates one container `runs` times; per run, the client-observed end-to-end time and the
/// agent's own phase times (from its histograms, scraped around each run).
async fn measure_recreates(bed: &Bed, admin: SocketAddr, runs: usize) -> Vec<Samples> {
    // One pod per run: a second restart of the same container within ten minutes would wait out
    // the kubelet's crash-loop back-off (10 s), which is the kubelet's cost, not relaunch's.
    let mut pods = Vec::new();
    for run in 0..runs {
        let spec = json!({"terminationGracePeriodSeconds": 30, "containers": [
            {"name": "app", "image": TEST_IMAGE, "command": ["sh", "-c", EXITS_ON_SIGTERM]},
        ]});
        pods.push(
            bed.pod(&format!("bench-recreate-{run}"), Some("node-1"), spec)
                .await,
        );
    }
    let mut end_to_end = Samples::new("relaunch: end to end (client)");
    let mut agent_total = Samples::new("agent: total");
    let mut stop = Samples::new("agent: stop (CRI StopContainer)");
    let mut restart = Samples::new("agent: wait for kubelet restart");
    let mut ready = Samples::new("agent: wait for ready");
    let mut agent_overhead = Samples::new("agent overhead (total-stop-restart-ready)");
    let mut relaunch_overhead = Samples::new("relaunch overhead (e2e-stop-restart-ready)");
    for (run, pod) in pods.iter().enumerate() {
        let before = scrape(admin).await;
        let name = format!("bench-{run}");
        let started = Instant::now();
        bed.recreate(&name, pod, json!([{"name": "app"}]), Value::Null)
            .await;
        let phase = bed.finished(&name).await.phase;
        let e2e = started.elapsed();
        assert_eq!(phase, RecreatePhase::Succeeded, "run {run}");
        // The agent records its histograms just before its final report; wait for them.
        let after = eventually("agent metrics", Duration::from_secs(10), || async {
            let after = scrape(admin).await;
            (phase_sum(&after, "total") > phase_sum(&before, "total")).then_some(after)
        })
        .await
        .expect("metrics");
        let delta = |phase: &str| {
            Duration::from_secs_f64((phase_sum(&after, phase) - phase_sum(&before, phase)).max(0.0))
        };
        let (t, s, r, w) = (
            delta("total"),
            delta("stop"),
            delta("restart"),
            delta("ready"),
        );
        end_to_end.push(e2e);
        agent_total.push(t);
        stop.push(s);
        restart.push(r);
        ready.push(w);
        agent_overhead.push(t.saturating_sub(s + r + w));
        relaunch_overhead.push(e2e.saturating_sub(s + r + w));
    }
    vec![
        end_to_end,
        agent_total,
        stop,
        restart,
        ready,
        agent_overhead,
        relaunch_overhead,
    ]
}

/// The agent's RSS, idle CPU and time to ready with `pods` running pods on its node.
async fn measure_footprint(bed: &Bed, admin: SocketAddr, pods: usize) -> Vec<String> {
    let api: Api<Pod> = bed.pods();
    let started = Instant::now();
    for i in 0..pods {
        bed.create::<Pod>(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("fill-{i}")},
            "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": TEST_IMAGE, "command": ["sleep", "2147483647"]}]}
        }))
        .await;
    }
    let running = eventually("the node to fill", Duration::from_secs(900), || async {
        let list = api.list(&Default::default()).await.ok()?;
        let running = list
            .items
            .iter()
            .filter(|p| {
                p.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("fill-"))
            })
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        (running == pods).then_some(running)
    })
    .await
    .expect("node filled");
    let filled_in = started.elapsed();
    let first = scrape(admin).await;
    let window = Duration::from_secs(30);
    // A measurement window, not a wait for a condition.
    tokio::time::sleep(window).await;
    let second = scrape(admin).await;
    let rss = second
        .get("process_resident_memory_bytes")
        .copied()
        .unwrap_or(0.0)
        / (1024.0 * 1024.0);
    let cpu = second
        .get("process_cpu_seconds_total")
        .copied()
        .unwrap_or(0.0)
        - first
            .get("process_cpu_seconds_total")
            .copied()
            .unwrap_or(0.0);
    vec![
        format!(
            "agent footprint with {running} running pods on its node (filled in {:.0}s):",
            filled_in.as_secs_f64()
        ),
        format!("  RSS                {rss:.1} MiB"),
        format!(
            "  idle CPU           {:.2} millicores (over {}s)",
            cpu * 1000.0 / window.as_secs_f64(),
            window.as_secs()
        ),
        format!(
            "  open fds           {}",
            second.get("process_open_fds").copied().unwrap_or(0.0)
        ),
    ]
}
