//! End-to-end ContainerRecreateRequest latency, broken down by phase, next to the raw CRI floor
//! measured on the same containerd in the same run; then the agent's footprint on a full node.
//!
//! Run as root: `cargo bench --bench recreate` (`RELAUNCH_BENCH_ITERATIONS` = recreates, default
//! 20; `RELAUNCH_BENCH_PODS` = pods on the full node, default 110, 0 skips the footprint;
//! `RELAUNCH_BENCH_PAUSE_MS` = pause before each recreate, default 0).

// Benchmark code: an unwrap, expect or panic stops the run where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use relaunch_api::{ContainerRecreateRequest, RecreatePhase};
use relaunch_testbed::{ObjectRequest, TEST_IMAGE};
use serde_json::{Value, json};
use support::{Bed, EXITS_ON_SIGTERM, Samples, WAIT, eventually};
use tokio::sync::Notify;

#[tokio::main]
async fn main() {
    let runs = support::iterations(20);
    let full_node: usize = std::env::var("RELAUNCH_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(110);
    // JSON logs: the breakdown reads when the agent started, stopped and finished each request.
    let mut bed = Bed::with_agent_args(1, &["--log-format", "json"]).await;
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
    for line in latency.iter().skip(1) {
        println!("{line}");
    }
    if full_node == 0 {
        bed.shutdown().await;
        return;
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

/// The instants of one run, in microseconds since the Unix epoch (the agent and the coordinator
/// are other processes: the wall clock is the one clock all of them share).
struct Run {
    name: String,
    /// The client sent the create; it was answered; its watch saw the request finished.
    sent: i64,
    answered: i64,
    seen: i64,
    /// The agent's own step times (histograms).
    stop: Duration,
    restart: Duration,
    ready: Duration,
    total: Duration,
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// `to - from` as a sample (0 when negative: two clocks' readings a few µs apart).
fn span(from: i64, to: i64) -> Duration {
    Duration::from_micros(u64::try_from(to - from).unwrap_or(0))
}

/// When a client watch first saw each request finished (µs since the epoch), and how, by name.
type Finished = Arc<Mutex<HashMap<String, (i64, RecreatePhase)>>>;

/// Records when a client watch first sees each request finished, keyed by name.
fn watch_finished(bed: &Bed) -> (Finished, Arc<Notify>) {
    let seen: Finished = Arc::default();
    let synced = Arc::new(Notify::new());
    let api: Api<ContainerRecreateRequest> = bed.requests();
    let (record, ready) = (seen.clone(), synced.clone());
    tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
        while let Some(event) = events.next().await {
            let crr = match event {
                Ok(watcher::Event::Apply(crr) | watcher::Event::InitApply(crr)) => crr,
                Ok(watcher::Event::InitDone) => {
                    ready.notify_one();
                    continue;
                }
                _ => continue,
            };
            let at = micros(SystemTime::now());
            let Some(phase) = crr.status.map(|s| s.phase).filter(|p| p.is_finished()) else {
                continue;
            };
            record
                .lock()
                .unwrap()
                .entry(crr.metadata.name.unwrap_or_default())
                .or_insert((at, phase));
        }
    });
    (seen, synced)
}

/// The agent's log lines (JSON) of request `crr` → when each message was first logged.
fn agent_log_times(log: &str) -> HashMap<(String, String), i64> {
    let mut times = HashMap::new();
    for line in log.lines() {
        let Ok(entry) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(crr) = entry["spans"].as_array().and_then(|spans| {
            spans
                .iter()
                .find(|s| s["name"] == "recreate")
                .and_then(|s| s["crr"].as_str())
        }) else {
            continue;
        };
        // The worker's last line, "finished", carries the request's phase and its message
        // (which takes the place of "finished" in the JSON).
        let message = if entry["fields"]["phase"].is_string() {
            Some("finished")
        } else {
            entry["fields"]["message"].as_str()
        };
        let (Some(message), Some(at)) = (
            message,
            entry["timestamp"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok()),
        ) else {
            continue;
        };
        times
            .entry((crr.to_string(), message.to_string()))
            .or_insert(at.as_microsecond());
    }
    times
}

/// Recreates one container `runs` times; per run, the client-observed end-to-end time, the
/// agent's own phase times (from its histograms, scraped around each run), and where the rest
/// — relaunch's overhead — goes: the client's watch, the test API server's record of who wrote
/// and read the request when, and the agent's log.
async fn measure_recreates(bed: &Bed, admin: SocketAddr, runs: usize) -> Vec<String> {
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
    let (finished, synced) = watch_finished(bed);
    synced.notified().await;
    let load_start = support::load_average();
    let mut measured = Vec::new();
    // RELAUNCH_BENCH_PAUSE_MS between runs: a measurement setting, so that a request meets a
    // quiet coordinator instead of the previous run's last events.
    let pause = Duration::from_millis(support::number("RELAUNCH_BENCH_PAUSE_MS", 0) as u64);
    for (run, pod) in pods.iter().enumerate() {
        tokio::time::sleep(pause).await;
        let before = scrape(admin).await;
        let name = format!("bench-{run}");
        let sent = micros(SystemTime::now());
        bed.recreate(&name, pod, json!([{"name": "app"}]), Value::Null)
            .await;
        let answered = micros(SystemTime::now());
        let (seen, phase) = eventually("the watch to see it finish", WAIT, || async {
            finished.lock().unwrap().get(&name).copied()
        })
        .await
        .expect("finished");
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
        measured.push(Run {
            name,
            sent,
            answered,
            seen,
            stop: delta("stop"),
            restart: delta("restart"),
            ready: delta("ready"),
            total: delta("total"),
        });
    }
    let load_end = support::load_average();
    breakdown(bed, &measured, (load_start, load_end))
}

/// The overhead of each run cut at the instants every component leaves behind, as one table.
fn breakdown(bed: &Bed, runs: &[Run], (load_start, load_end): (f64, f64)) -> Vec<String> {
    let coordinator = |r: &&ObjectRequest| {
        r.user.ends_with(":relaunch-coordinator") && (200..300).contains(&r.code)
    };
    let requests: Vec<ObjectRequest> = bed.sandbox.api().object_requests();
    let log = std::fs::read_to_string(bed.dir().join("nodes/node-1/agent/log")).unwrap_or_default();
    let agent = agent_log_times(&log);

    let mut end_to_end = Samples::new("relaunch: end to end (client watch)");
    let mut agent_total = Samples::new("agent: total");
    let mut stop = Samples::new("agent: stop (CRI StopContainer)");
    let mut restart = Samples::new("agent: wait for kubelet restart");
    let mut ready = Samples::new("agent: wait for ready");
    let mut agent_overhead = Samples::new("agent overhead (total-stop-restart-ready)");
    let mut overhead = Samples::new("relaunch overhead (e2e-stop-restart-ready)");
    let mut segments: Vec<Samples> = [
        "1 client: create sent -> answered",
        "2 answered -> agent's first report reads the request",
        "3 first report: read -> admitted+Recreating written",
        "  3a read -> the write reaches the API server",
        "  3b API server handles the write",
        "4 admitted -> StopContainer",
        "  4a admitted -> agent worker goes on (answer)",
        "  4b -> StopContainer (journal fsync)",
        "5 agent sees ready -> report at coordinator",
        "  5a ready -> agent finished (journal)",
        "  5b finished -> coordinator reads request",
        "6 coordinator: read -> final status write",
        "  6a read -> the write reaches the API server",
        "  6b API server handles the write",
        "7 final write -> client watch sees it",
    ]
    .iter()
    .map(|n| Samples::new(n))
    .collect();
    let mut report_to_write = Samples::new("any report: coordinator read -> write");
    let mut writes_per_request = Vec::new();
    let mut missing = 0;
    for run in runs {
        let excluded = run.stop + run.restart + run.ready;
        end_to_end.push(span(run.sent, run.seen));
        agent_total.push(run.total);
        stop.push(run.stop);
        restart.push(run.restart);
        ready.push(run.ready);
        agent_overhead.push(run.total.saturating_sub(excluded));
        overhead.push(span(run.sent, run.seen).saturating_sub(excluded));

        let of_run: Vec<&ObjectRequest> = requests
            .iter()
            .filter(coordinator)
            .filter(|r| r.name == run.name && r.resource.starts_with("containerrecreaterequests"))
            // The server records a write just after it sent the write's watch event, so the
            // client may see the final write a few µs before its record: allow for it.
            .filter(|r| (run.sent..=run.seen + 100_000).contains(&micros(r.at)))
            .collect();
        let status_records: Vec<&&ObjectRequest> = of_run
            .iter()
            .filter(|r| {
                r.resource.ends_with("/status") && matches!(r.verb.as_str(), "patch" | "update")
            })
            .collect();
        let status_writes: Vec<i64> = status_records.iter().map(|r| micros(r.at)).collect();
        // When a write reached the server: its answer less the server's own time on it.
        let arrived =
            |r: &ObjectRequest| micros(r.at) - i64::try_from(r.took.as_micros()).unwrap_or(0);
        let reads: Vec<i64> = of_run
            .iter()
            .filter(|r| r.verb == "get")
            .map(|r| micros(r.at))
            .collect();
        writes_per_request.push(status_writes.len());
        // Every status write answers a report (the first one admits the request): the report's
        // read of the request comes just before it.
        for w in &status_writes {
            if let Some(read) = reads.iter().filter(|r| *r <= w).max() {
                report_to_write.push(span(*read, *w));
            }
        }
        let at = |message: &str| agent.get(&(run.name.clone(), message.to_string())).copied();
        let (
            Some(admitted),
            Some(last_write),
            Some(started),
            Some(stopping),
            Some(done),
            Some(first_record),
            Some(last_record),
        ) = (
            status_writes.first().copied(),
            status_writes.last().copied(),
            at("recreating"),
            at("stopping"),
            at("finished"),
            status_records.first(),
            status_records.last(),
        )
        else {
            if missing == 0 {
                eprintln!(
                    "{}: {} status writes, agent log: recreating {:?} stopping {:?} finished {:?} (its messages {:?})",
                    run.name,
                    status_writes.len(),
                    at("recreating"),
                    at("stopping"),
                    at("finished"),
                    agent
                        .keys()
                        .filter(|k| k.0 == run.name)
                        .map(|k| k.1.as_str())
                        .collect::<Vec<_>>()
                );
            }
            missing += 1;
            continue;
        };
        let Some(final_read) = reads.iter().filter(|r| **r <= last_write).max().copied() else {
            missing += 1;
            continue;
        };
        // The agent's first report, which admits the request, starts with reading the request.
        let Some(claim_read) = reads.iter().filter(|r| **r <= admitted).max().copied() else {
            missing += 1;
            continue;
        };
        let excluded = i64::try_from(excluded.as_micros()).unwrap_or(0);
        let ready_seen = stopping + excluded;
        let cuts = [
            (run.sent, run.answered),
            (run.answered, claim_read),
            (claim_read, admitted),
            (claim_read, arrived(first_record)),
            (arrived(first_record), admitted),
            (admitted, stopping),
            (admitted, started),
            (started, stopping),
            (ready_seen, final_read),
            (ready_seen, done),
            (done, final_read),
            (final_read, last_write),
            (final_read, arrived(last_record)),
            (arrived(last_record), last_write),
            (last_write, run.seen),
        ];
        for (samples, (from, to)) in segments.iter_mut().zip(cuts) {
            samples.push(span(from, to));
        }
    }
    let overloaded = support::overloaded(&[load_start, load_end]);
    let mut lines = vec![support::header()];
    lines.extend(
        [
            &end_to_end,
            &agent_total,
            &stop,
            &restart,
            &ready,
            &agent_overhead,
            &overhead,
        ]
        .iter()
        .map(|s| s.row()),
    );
    lines.push(String::new());
    lines.push(format!(
        "where relaunch's overhead goes (1+2+3+4+5+6+7 = overhead; 3 = 3a+3b, 4 = 4a+4b, 5 = 5a+5b, 6 = 6a+6b), {} runs{}",
        runs.len() - missing,
        if missing > 0 {
            format!(" ({missing} without every instant, left out)")
        } else {
            String::new()
        }
    ));
    lines.push(support::header());
    lines.extend(segments.iter().map(|s| s.row()));
    lines.push(report_to_write.row());
    let writes: usize = writes_per_request.iter().sum();
    lines.push(format!(
        "request status writes by the coordinator: {:.2} per request ({writes} for {} requests)",
        writes as f64 / runs.len().max(1) as f64,
        runs.len()
    ));
    lines.push(format!(
        "load average {load_start:.2} at start, {load_end:.2} at end, {} cores{}",
        support::cores(),
        if overloaded {
            ": FLAGGED, the load exceeded the core count (latency is an upper bound)"
        } else {
            ""
        }
    ));
    lines
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
