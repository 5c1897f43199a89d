//! End-to-end ContainerRecreateRequest latency, broken down by phase, next to the raw CRI floor
//! measured on the same containerd in the same run; then the agent's footprint on a full node.
//!
//! Run as root: `cargo bench --bench recreate` (`RELAUNCH_BENCH_ITERATIONS` = recreates, default
//! 20; `RELAUNCH_BENCH_PODS` = pods on the full node, default 110).

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use relaunch_api::{ContainerRecreateRequest, LABEL_NODE_NAME, LABEL_POD_UID, RecreatePhase};
use relaunch_testbed::Binaries;
use relaunch_testbed::eventually;
use relaunch_testbed::{Sandbox, SandboxConfig};
use serde_json::json;
use support::{EXITS_ON_SIGTERM, Samples};

#[tokio::main]
async fn main() {
    let runs = support::iterations(20);
    let full_node: usize = std::env::var("RELAUNCH_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(110);
    let dir = tempfile::tempdir().expect("temp dir");
    let binaries = Binaries {
        agent: env!("CARGO_BIN_EXE_relaunch-agent").into(),
        coordinator: env!("CARGO_BIN_EXE_relaunch-coordinator").into(),
    };
    let sandbox =
        Sandbox::start(SandboxConfig::new(dir.path().to_path_buf(), 1, 0).with_relaunch(binaries))
            .await
            .expect("start the sandbox (run as root)");
    let client = sandbox.client().expect("client");
    let runtime = sandbox.containerd().client().await.expect("CRI client");
    let agent_admin = agent_admin();

    let floor = support::measure_floor(sandbox.containerd(), &runtime, runs).await;
    let latency = measure_recreates(&client, &agent_admin, runs).await;

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

    let footprint = measure_footprint(&client, &agent_admin, full_node).await;
    println!();
    for line in footprint {
        println!("{line}");
    }
    let mut sandbox = sandbox;
    let restarted = Instant::now();
    sandbox.restart_agent(0).await.expect("restart the agent");
    println!(
        "  start to ready     {:.0} ms (process start, watches synced, runtime answered; polled every 20 ms)",
        restarted.elapsed().as_secs_f64() * 1000.0
    );
    sandbox.shutdown().await;
}

/// The admin address of node-1's agent, from its command line.
fn agent_admin() -> std::net::SocketAddr {
    let pid_dirs = std::fs::read_dir("/proc").expect("/proc");
    for entry in pid_dirs.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("relaunch-agent"))
            && let Some(i) = args.iter().position(|a| a == "--admin-listen")
            && let Some(addr) = args.get(i + 1).and_then(|a| a.parse().ok())
        {
            return addr;
        }
    }
    panic!("no relaunch-agent process found");
}

/// The agent's metrics, as name{labels} → value.
async fn scrape(admin: &std::net::SocketAddr) -> HashMap<String, f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin)
        .await
        .expect("agent admin port");
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {admin}\r\n\r\n").as_bytes())
        .await
        .expect("scrape");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.expect("scrape");
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

async fn ready_pod(client: &kube::Client, name: &str, script: &str) -> Pod {
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": "node-1", "terminationGracePeriodSeconds": 30,
                 "containers": [{"name": "app", "image": "relaunch.test/busybox:1", "command": ["sh", "-c", script]}]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    eventually(
        &format!("{name} ready"),
        Duration::from_secs(300),
        || async {
            let pod = pods.get(name).await.ok()?;
            let ready = pod
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(pod)
        },
    )
    .await
    .expect("pod ready")
}

/// Recreates one container `runs` times; per run, the client-observed end-to-end time and the
/// agent's own phase times (from its histograms, scraped around each run).
async fn measure_recreates(
    client: &kube::Client,
    admin: &std::net::SocketAddr,
    runs: usize,
) -> Vec<Samples> {
    // One pod per run: a second restart of the same container within ten minutes would wait out
    // the kubelet's crash-loop back-off (10 s), which is the kubelet's cost, not relaunch's.
    let mut pods = Vec::new();
    for run in 0..runs {
        pods.push(ready_pod(client, &format!("bench-recreate-{run}"), EXITS_ON_SIGTERM).await);
    }
    let requests: Api<ContainerRecreateRequest> = Api::default_namespaced(client.clone());
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
        let request: ContainerRecreateRequest = serde_json::from_value(json!({
            "apiVersion": "relaunch.dev/v1alpha1", "kind": "ContainerRecreateRequest",
            "metadata": {"name": name, "labels": {LABEL_NODE_NAME: "node-1", LABEL_POD_UID: pod.metadata.uid}},
            "spec": {"podName": pod.metadata.name, "containers": [{"name": "app"}]}
        }))
        .expect("request");
        let started = Instant::now();
        requests
            .create(&PostParams::default(), &request)
            .await
            .expect("create request");
        let phase = eventually("request to finish", Duration::from_secs(120), || async {
            let status = requests.get(&name).await.ok()?.status?;
            status.phase.is_finished().then_some(status.phase)
        })
        .await
        .expect("request finished");
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
async fn measure_footprint(
    client: &kube::Client,
    admin: &std::net::SocketAddr,
    pods: usize,
) -> Vec<String> {
    let api: Api<Pod> = Api::default_namespaced(client.clone());
    let started = Instant::now();
    for i in 0..pods {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("fill-{i}")},
            "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "relaunch.test/busybox:1", "command": ["sleep", "2147483647"]}]}
        }))
        .expect("pod");
        api.create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
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
