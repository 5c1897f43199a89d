//! 100 ContainerRecreateRequests created at once on one node: do they all succeed, none lost,
//! each pod restarted exactly once in place; how long until the first and the last success, the
//! request durations, and what the burst costs the agent (and the coordinator) in memory and CPU —
//! with the agent at `--max-parallel 8` (the default) and at `--max-parallel 100`.
//!
//! Run as root: `cargo bench --bench concurrent`. `RELAUNCH_BENCH_PODS` (pods and requests,
//! default 100); `RELAUNCH_BENCH_MAX_PARALLEL` (comma-separated settings, default "8,100").
//! Each setting runs in a fresh sandbox (one simulated node, the coordinator and the agent as
//! real processes, one real container per pod), so no container is restarted twice (a second
//! restart within ten minutes would wait out the kubelet's crash-loop back-off).

// Benchmark code: an unwrap, expect or panic stops the run where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;
use relaunch_api::{ContainerRecreateRequest, RecreatePhase};
use relaunch_testbed::TEST_IMAGE;
use serde_json::json;
use support::{
    Bed, EXITS_ON_SIGTERM, Samples, cores, cpu_seconds, eventually, hwm_mib, load_average,
    overloaded, ready, restart_count, sample_rss,
};

const APP: &str = "burst";
const NODE: &str = "node-1";

fn number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

fn settings() -> Vec<usize> {
    std::env::var("RELAUNCH_BENCH_MAX_PARALLEL")
        .unwrap_or_else(|_| "8,100".into())
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .expect("RELAUNCH_BENCH_MAX_PARALLEL: comma-separated numbers")
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let pods = number("RELAUNCH_BENCH_PODS", 100);
    let load_start = load_average();
    println!("load average at start: {load_start:.2} ({} cores)", cores());
    let mut runs = Vec::new();
    for max_parallel in settings() {
        runs.push(burst(pods, max_parallel).await);
    }
    let load_end = load_average();

    println!();
    println!(
        "{pods} ContainerRecreateRequests created at once on one node (one container each, \
         shutdown exec `true`, exits on SIGTERM, no readiness probe)"
    );
    println!(
        "{:>6} {:>5} {:>5} {:>5} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9} {:>7} {:>11}",
        "max-p",
        "reqs",
        "ok",
        "fail",
        "lost",
        "1st ms",
        "last ms",
        "p50 ms",
        "p99 ms",
        "agent MiB",
        "agent HWM",
        "agent s",
        "coord MiB",
        "coord s",
        "load"
    );
    for run in &runs {
        println!("{}", run.row());
    }
    println!(
        "(1st/last: from the first create sent to the first/last Succeeded seen by a client watch; \
         p50/p99: each request's create answered -> Succeeded seen; MiB: peak RSS sampled every \
         100 ms during the burst; HWM: the agent's VmHWM since it started; s: CPU seconds during \
         the burst; load: 1-minute load average when the burst started/ended)"
    );
    println!(
        "load average: {load_start:.2} at start, {load_end:.2} at the end ({} cores)",
        cores()
    );
    let flagged: Vec<String> = runs
        .iter()
        .filter(|r| overloaded(&[r.load_start, r.load_end]))
        .map(|r| r.max_parallel.to_string())
        .collect();
    if !flagged.is_empty() {
        println!(
            "FLAGGED: the load average was above the core count during the burst at max-parallel \
             {}; those latency figures are an upper bound, not a measurement of relaunch",
            flagged.join(", ")
        );
    }
    let problems: Vec<String> = runs
        .iter()
        .flat_map(|r| {
            r.problems
                .iter()
                .map(move |p| format!("max-parallel {}: {p}", r.max_parallel))
        })
        .collect();
    if !problems.is_empty() {
        panic!(
            "not every request succeeded with its pod restarted once:\n{}",
            problems.join("\n")
        );
    }
}

/// One burst's numbers.
struct Run {
    max_parallel: usize,
    requests: usize,
    succeeded: usize,
    failed: usize,
    /// Requests that never finished within the deadline.
    lost: usize,
    first: Duration,
    last: Duration,
    durations: Samples,
    agent_rss: f64,
    agent_hwm: f64,
    agent_cpu: f64,
    coordinator_rss: f64,
    coordinator_cpu: f64,
    load_start: f64,
    load_end: f64,
    /// What went wrong, one line each: failed or unfinished requests, pods not restarted once.
    problems: Vec<String>,
}

impl Run {
    fn row(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let flag = if overloaded(&[self.load_start, self.load_end]) {
            " FLAGGED"
        } else {
            ""
        };
        format!(
            "{:>6} {:>5} {:>5} {:>5} {:>5} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.1} {:>9.1} {:>7.2} {:>9.1} {:>7.2} {:>5.2}/{:<5.2}{flag}",
            self.max_parallel,
            self.requests,
            self.succeeded,
            self.failed,
            self.lost,
            ms(self.first),
            ms(self.last),
            ms(self.durations.quantile(0.5)),
            ms(self.durations.quantile(0.99)),
            self.agent_rss,
            self.agent_hwm,
            self.agent_cpu,
            self.coordinator_rss,
            self.coordinator_cpu,
            self.load_start,
            self.load_end,
        )
    }
}

/// A fresh sandbox with the agent at `--max-parallel max_parallel`, `pods` running pods on its
/// node, and one request per pod created at once.
async fn burst(pods: usize, max_parallel: usize) -> Run {
    let setting = max_parallel.to_string();
    let mut bed = Bed::with_agent_args(1, &["--max-parallel", &setting]).await;
    let filled = Instant::now();
    let before = fill(&bed, pods).await;
    eprintln!(
        "max-parallel {max_parallel}: {pods} pods running on {NODE} in {:.0} s",
        filled.elapsed().as_secs_f64()
    );
    let agent = bed
        .sandbox
        .agent(0)
        .and_then(|a| a.pid())
        .expect("agent pid");
    let coordinator = bed
        .sandbox
        .coordinator()
        .and_then(|c| c.pid())
        .expect("coordinator pid");

    let finished = Finished::watch(&bed.client).await;
    let agent_peak = Arc::new(Mutex::new(0.0_f64));
    let coordinator_peak = Arc::new(Mutex::new(0.0_f64));
    let samplers = [
        tokio::spawn(sample_rss(agent, agent_peak.clone())),
        tokio::spawn(sample_rss(coordinator, coordinator_peak.clone())),
    ];
    let agent_cpu = cpu_seconds(agent);
    let coordinator_cpu = cpu_seconds(coordinator);
    let load_start = load_average();

    // Every request at once: all creates in flight together.
    let started = Instant::now();
    let created: Vec<(String, Instant)> =
        futures::future::join_all(before.iter().enumerate().map(|(i, pod)| {
            let bed = &bed;
            async move {
                let name = format!("{APP}-{i}");
                bed.recreate(
                    &name,
                    pod,
                    json!([{"name": "app", "shutdown": {"exec": {"command": ["true"]}}}]),
                    json!({"terminationGracePeriodSeconds": 30}),
                )
                .await;
                (name, Instant::now())
            }
        }))
        .await;
    let sent = started.elapsed();

    // Until every request has finished, or the deadline: generous, a lost request is the finding.
    let deadline = Duration::from_secs(120 + 3 * pods as u64);
    let all_finished = eventually(&format!("{pods} requests to finish"), deadline, || async {
        (finished.count() >= pods).then_some(())
    })
    .await;
    let agent_cpu = cpu_seconds(agent) - agent_cpu;
    let coordinator_cpu = cpu_seconds(coordinator) - coordinator_cpu;
    let load_end = load_average();
    for sampler in &samplers {
        sampler.abort();
    }
    let agent_hwm = hwm_mib(agent);
    eprintln!(
        "max-parallel {max_parallel}: {pods} creates answered in {:.0} ms; {}",
        sent.as_secs_f64() * 1000.0,
        match &all_finished {
            Ok(()) => format!("all finished in {:.1} s", started.elapsed().as_secs_f64()),
            Err(e) => format!("{e}"),
        }
    );

    let seen = finished.take();
    let mut run = Run {
        max_parallel,
        requests: pods,
        succeeded: 0,
        failed: 0,
        lost: 0,
        first: Duration::ZERO,
        last: Duration::ZERO,
        durations: Samples::new("request: create answered -> Succeeded"),
        agent_rss: *agent_peak.lock().expect("rss"),
        agent_hwm,
        agent_cpu,
        coordinator_rss: *coordinator_peak.lock().expect("rss"),
        coordinator_cpu,
        load_start,
        load_end,
        problems: Vec::new(),
    };
    let mut successes = Vec::new();
    for (name, created_at) in &created {
        match seen.get(name) {
            Some((RecreatePhase::Succeeded, at, _)) => {
                run.succeeded += 1;
                successes.push(*at - started);
                run.durations
                    .push(at.saturating_duration_since(*created_at));
            }
            Some((phase, _, message)) => {
                run.failed += 1;
                run.problems
                    .push(format!("request {name} {phase:?}: {message}"));
            }
            None => {
                run.lost += 1;
                let status = bed.requests().get(name).await.ok().and_then(|r| r.status);
                run.problems.push(format!(
                    "request {name} unfinished after {deadline:?}: {status:?}"
                ));
            }
        }
    }
    run.first = successes.iter().min().copied().unwrap_or_default();
    run.last = successes.iter().max().copied().unwrap_or_default();

    // None lost: each pod restarted exactly once, in place.
    let after: HashMap<String, Pod> = bed
        .pods()
        .list(&ListParams::default().labels(&format!("app={APP}")))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .map(|p| (p.metadata.name.clone().unwrap_or_default(), p))
        .collect();
    for pod in &before {
        let name = pod.metadata.name.clone().unwrap_or_default();
        match after.get(&name) {
            Some(now) if now.metadata.uid != pod.metadata.uid => run.problems.push(format!(
                "pod {name} was replaced (new UID), not restarted in place"
            )),
            Some(now) if restart_count(now) != restart_count(pod) + 1 => {
                run.problems.push(format!(
                    "pod {name} restart count {} -> {}, not restarted exactly once",
                    restart_count(pod),
                    restart_count(now)
                ))
            }
            Some(_) => {}
            None => run.problems.push(format!("pod {name} is gone")),
        }
    }
    if !run.problems.is_empty() {
        eprintln!("coordinator log (tail):\n{}", bed.coordinator_log());
    }
    bed.shutdown().await;
    run
}

/// Creates `count` pods on the node, one container of the test image each (no ports: nothing
/// shared between them), and waits until all of them are Ready.
async fn fill(bed: &Bed, count: usize) -> Vec<Pod> {
    let mut creates = futures::stream::iter(0..count)
        .map(|i| async move {
            bed.create::<Pod>(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("{APP}-{i}"), "labels": {"app": APP}},
                "spec": {"nodeName": NODE, "terminationGracePeriodSeconds": 30, "containers": [{
                    "name": "app", "image": TEST_IMAGE, "command": ["sh", "-c", EXITS_ON_SIGTERM],
                }]},
            }))
            .await
        })
        .buffer_unordered(16);
    while creates.next().await.is_some() {}
    let pods = bed.pods();
    let mut ready_pods = eventually(
        &format!("{count} pods ready"),
        Duration::from_secs(300 + 3 * count as u64),
        || async {
            let list = pods
                .list(&ListParams::default().labels(&format!("app={APP}")))
                .await
                .ok()?;
            (list.items.len() == count && list.items.iter().all(ready)).then_some(list.items)
        },
    )
    .await
    .expect("pods ready");
    ready_pods.sort_by_key(|p| p.metadata.name.clone());
    ready_pods
}

/// What a client watch saw of the requests: per request, the first finished phase, when it was
/// seen, and its message.
type Seen = BTreeMap<String, (RecreatePhase, Instant, String)>;

struct Finished {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Finished {
    /// Starts watching every request; returns once the watch's initial list is done.
    async fn watch(client: &kube::Client) -> Self {
        let seen = Arc::new(Mutex::new(Seen::new()));
        let synced = Arc::new(Mutex::new(false));
        let requests: Api<ContainerRecreateRequest> = Api::default_namespaced(client.clone());
        let task = tokio::spawn({
            let seen = seen.clone();
            let synced = synced.clone();
            async move {
                let mut stream = std::pin::pin!(watcher(requests, watcher::Config::default()));
                while let Some(event) = stream.next().await {
                    let request = match event {
                        Ok(watcher::Event::Apply(r) | watcher::Event::InitApply(r)) => r,
                        Ok(watcher::Event::InitDone) => {
                            *synced.lock().expect("synced") = true;
                            continue;
                        }
                        _ => continue,
                    };
                    let now = Instant::now();
                    let Some(status) = request.status else {
                        continue;
                    };
                    if status.phase.is_finished() {
                        let name = request.metadata.name.unwrap_or_default();
                        seen.lock().expect("seen").entry(name).or_insert((
                            status.phase,
                            now,
                            status.message.unwrap_or_default(),
                        ));
                    }
                }
            }
        });
        eventually("the request watch", Duration::from_secs(30), || async {
            (*synced.lock().expect("synced")).then_some(())
        })
        .await
        .expect("watching requests");
        Self { seen, task }
    }

    fn count(&self) -> usize {
        self.seen.lock().expect("seen").len()
    }

    fn take(self) -> Seen {
        self.task.abort();
        std::mem::take(&mut *self.seen.lock().expect("seen"))
    }
}
