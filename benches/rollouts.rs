//! Many RollingRestarts at once: 20 StatefulSets of 50 pods on a few simulated nodes, relaunch as
//! real processes, one RollingRestart per StatefulSet, all created together. What it measures is
//! the coordinator's decision latency when it drives many rollouts in one pass — a batch's last
//! request finishing → the rollout's next batch's first request, and a rollout's creation → its
//! first request — plus the total time, the coordinator's RSS (idle and peak) and CPU, and its
//! API writes per restarted pod. It checks that every rollout Succeeded, every pod restarted
//! exactly once in place, and no rollout ever had more pods unavailable than its budget.
//!
//! Run as root: `cargo bench --bench rollouts`. `RELAUNCH_BENCH_ROLLOUTS` (default 20),
//! `RELAUNCH_BENCH_PODS` (pods per StatefulSet, default 50), `RELAUNCH_BENCH_NODES` (default 5),
//! `RELAUNCH_BENCH_MAX_UNAVAILABLE` (default "10%"), `RELAUNCH_BENCH_SETTLE_SECONDS` (how long to
//! wait for the load average to fall to the core count before the rollouts start; default 180).

// Benchmark code: an unwrap, expect or panic stops the run where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use relaunch_api::{
    ContainerRecreateRequest, LABEL_ROLLING_RESTART, RecreatePhase, RollingRestart, RolloutPhase,
};
use relaunch_testbed::TEST_IMAGE;
use serde_json::json;
use support::{
    Bed, EXITS_ON_SIGTERM, Samples, agent_writes, batches, coordinator_requests, cores,
    cpu_seconds, eventually, is_write, latest_before, load_average, number, overloaded, ready,
    restart_count, rss_window, sample_rss, setting, subtract,
};

/// How long the benchmark waits for the StatefulSets to be ready and for the rollouts to finish.
const DEADLINE: Duration = Duration::from_secs(3600);

fn workload(i: usize) -> String {
    format!("ss-{i:02}")
}

fn rollout(i: usize) -> String {
    format!("rr-{i:02}")
}

#[tokio::main]
async fn main() {
    let rollouts = number("RELAUNCH_BENCH_ROLLOUTS", 20);
    let pods = number("RELAUNCH_BENCH_PODS", 50);
    let nodes = number("RELAUNCH_BENCH_NODES", 5);
    let max_unavailable = setting("RELAUNCH_BENCH_MAX_UNAVAILABLE", "10%");
    let budget = budget(&max_unavailable, pods);
    let total_pods = rollouts * pods;
    let load_start = load_average();
    println!("load average at start: {load_start:.2} ({} cores)", cores());
    let mut bed = Bed::start(nodes).await;
    let client = bed.client.clone();
    let coordinator = bed
        .sandbox
        .coordinator()
        .and_then(|c| c.pid())
        .expect("coordinator pid");
    let rss_empty = rss_window(coordinator).await;

    let filling = Instant::now();
    statefulsets(&bed, rollouts, pods).await;
    eprintln!(
        "{total_pods} pods ({rollouts} StatefulSets of {pods}) on {nodes} nodes ready in {:.0} s",
        filling.elapsed().as_secs_f64()
    );
    let before: HashMap<String, (String, i32)> = bench_pods(&client)
        .await
        .iter()
        .map(|p| {
            (
                p.name_any(),
                (p.uid().unwrap_or_default(), restart_count(p)),
            )
        })
        .collect();
    assert_eq!(before.len(), total_pods, "every pod exists");
    let rss_idle = rss_window(coordinator).await;

    // Filling the StatefulSets loads the machine; the rollouts start once the load average is
    // back at the core count (or after the settle time, flagged then).
    let settle = Duration::from_secs(number("RELAUNCH_BENCH_SETTLE_SECONDS", 180) as u64);
    let settled = eventually("the load average to settle", settle, || async {
        (!overloaded(&[load_average()])).then_some(())
    })
    .await;
    if settled.is_err() {
        eprintln!("  the load average stayed above the core count for {settle:?}; going on");
    }
    let timeline = Timeline::watch(&client, total_pods).await;
    let writes_before = coordinator_requests(&bed.sandbox);
    let coordinator_cpu = cpu_seconds(coordinator);
    let bed_cpu = cpu_seconds(std::process::id());
    let load_rollouts = load_average();
    let rss_peak = Arc::new(Mutex::new(0.0_f64));
    let rss_sampler = tokio::spawn(sample_rss(coordinator, rss_peak.clone()));
    let load_peak = Arc::new(Mutex::new(load_rollouts));
    let load_sampler = tokio::spawn(sample_load(load_peak.clone()));

    // All rollouts at once: created concurrently, each with no shutdown action (the container
    // exits on SIGTERM).
    let started = Instant::now();
    let strategy = max_unavailable
        .parse::<u32>()
        .map_or(json!(max_unavailable), |n| json!(n));
    let names: Vec<String> = (0..rollouts).map(rollout).collect();
    // When each create was answered: the rollout exists from then on.
    let (bed_ref, strategy) = (&bed, &strategy);
    let stored: HashMap<String, Instant> =
        futures::future::join_all(names.iter().enumerate().map(|(i, name)| async move {
            bed_ref
                .rollout(
                    name,
                    json!({
                        "target": {"workloadRef": {"kind": "StatefulSet", "name": workload(i)}},
                        "strategy": {"maxUnavailable": strategy},
                    }),
                )
                .await;
            (name.clone(), Instant::now())
        }))
        .await
        .into_iter()
        .collect();
    let created = started.elapsed();

    let last_finished = timeline.finished(rollouts, DEADLINE).await;
    let total = last_finished.saturating_duration_since(started);
    let coordinator_cpu = cpu_seconds(coordinator) - coordinator_cpu;
    let bed_cpu = cpu_seconds(std::process::id()) - bed_cpu;
    rss_sampler.abort();
    load_sampler.abort();
    let writes = subtract(&coordinator_requests(&bed.sandbox), &writes_before);
    let load_end = load_average();
    let load_peak = *load_peak.lock().expect("load");

    // What must hold, checked after the table is printed (a broken run still shows its numbers).
    let mut problems = Vec::new();
    let mut restarted = 0_i64;
    for i in 0..rollouts {
        let name = rollout(i);
        let status = bed
            .rollouts()
            .get(&name)
            .await
            .ok()
            .and_then(|r| r.status)
            .unwrap_or_default();
        restarted += i64::from(status.restarted);
        if status.phase != RolloutPhase::Succeeded || status.restarted as usize != pods {
            problems.push(format!(
                "rollout {name}: {:?}, restarted {} of {pods}, failed {}: {:?}",
                status.phase, status.restarted, status.failed, status.message
            ));
        }
    }
    for pod in bench_pods(&client).await {
        let name = pod.name_any();
        match before.get(&name) {
            Some((uid, count)) if pod.uid().as_ref() == Some(uid) => {
                let count = restart_count(&pod) - count;
                if count != 1 {
                    problems.push(format!("pod {name} restarted {count} times, not once"));
                }
            }
            Some(_) => problems.push(format!("pod {name} was replaced, not restarted in place")),
            None => problems.push(format!("pod {name} is new")),
        }
    }
    let measured = timeline.measure(rollouts, budget, &stored);
    problems.extend(measured.problems.iter().cloned());

    let flagged = overloaded(&[load_rollouts, load_peak, load_end]);
    println!(
        "{rollouts} RollingRestarts created at once (in {:.0} ms), each over a StatefulSet of \
         {pods} pods (maxUnavailable {max_unavailable}: {budget} pods), {nodes} simulated nodes",
        created.as_secs_f64() * 1000.0
    );
    println!(
        "load average: {load_start:.2} at start, {load_rollouts:.2} when the rollouts started, \
         {load_peak:.2} at most during them, {load_end:.2} at the end ({} cores)",
        cores()
    );
    if flagged {
        println!(
            "FLAGGED: the load average exceeded the core count during the rollouts; the latency \
             rows marked (flagged) are an upper bound, not a measurement of relaunch"
        );
    }
    let mark = if flagged { " (flagged)" } else { "" };
    println!(
        "| {:<58} | {:>5} | {:>9} | {:>9} | {:>9} | {:>9} |",
        "figure", "n", "min", "median", "p99", "max"
    );
    println!(
        "|{:-<60}|{:->6}:|{:->10}:|{:->10}:|{:->10}:|{:->10}:|",
        "", "", "", "", "", ""
    );
    for samples in [
        &measured.first_request,
        &measured.after_success,
        &measured.after_success_last,
        &measured.after_ready,
        &measured.batch,
        &measured.rollout,
    ] {
        println!("{}", row(samples, mark));
    }
    let value = |name: &str, value: String| {
        println!(
            "| {name:<58} | {:>5} | {:>9} | {value:>9} | {:>9} | {:>9} |",
            "", "", "", ""
        );
    };
    value(
        &format!("total: {rollouts} rollouts created -> last Succeeded, s{mark}"),
        format!("{:.1}", total.as_secs_f64()),
    );
    value(
        &format!("most requests of one rollout unfinished at once (budget {budget})"),
        measured.max_in_flight.to_string(),
    );
    value(
        &format!("most pods of one StatefulSet unready at once (budget {budget})"),
        measured.max_unready.to_string(),
    );
    value(
        "coordinator RSS, empty cluster, MiB",
        format!("{rss_empty:.1}"),
    );
    value(
        &format!("coordinator RSS, {total_pods} pods idle, MiB"),
        format!("{rss_idle:.1}"),
    );
    value(
        "coordinator RSS, peak during the rollouts, MiB",
        format!("{:.1}", *rss_peak.lock().expect("rss")),
    );
    value(
        "coordinator CPU during the rollouts, s",
        format!("{coordinator_cpu:.1}"),
    );
    value(
        "test bed CPU during the rollouts (this process), s",
        format!("{bed_cpu:.1}"),
    );
    let per_pod = |n: u64| n as f64 / restarted.max(1) as f64;
    let all: u64 = writes
        .iter()
        .filter(|(k, _)| is_write(k))
        .map(|(_, n)| n)
        .sum();
    value(
        "coordinator API writes per restarted pod",
        format!("{:.2}", per_pod(all)),
    );
    for (kind, n) in writes.iter().filter(|(k, _)| is_write(k)) {
        value(
            &format!("  {} {} ({n})", kind.verb, kind.resource),
            format!("{:.2}", per_pod(*n)),
        );
    }
    value("agent API writes", agent_writes(&bed.sandbox).to_string());

    if !problems.is_empty() {
        let log = bed.coordinator_log();
        bed.shutdown().await;
        panic!(
            "{} problems:\n{}\ncoordinator log:\n{log}",
            problems.len(),
            problems.join("\n")
        );
    }
    bed.shutdown().await;
}

/// Pods that `max_unavailable` ("10%" or a count) allows down at once out of `pods`, as the
/// rollout computes it: a percentage rounded down, at least 1.
fn budget(max_unavailable: &str, pods: usize) -> usize {
    match max_unavailable.strip_suffix('%') {
        Some(percent) => {
            let percent: usize = percent.parse().expect("a percentage");
            (pods.saturating_mul(percent) / 100).max(1)
        }
        None => max_unavailable.parse().expect("a count or a percentage"),
    }
}

/// A table row of `samples`, in milliseconds.
fn row(samples: &Samples, mark: &str) -> String {
    let ms = |q: f64| format!("{:.1}", samples.quantile(q).as_secs_f64() * 1000.0);
    format!(
        "| {:<58} | {:>5} | {:>9} | {:>9} | {:>9} | {:>9} |",
        format!("{}, ms{mark}", samples.name),
        samples.len(),
        ms(0.0),
        ms(0.5),
        ms(0.99),
        ms(1.0),
    )
}

/// Keeps the highest 1-minute load average in `peak`, read every second, until aborted.
async fn sample_load(peak: Arc<Mutex<f64>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let load = load_average();
        let mut peak = peak.lock().expect("load");
        *peak = peak.max(load);
    }
}

/// Creates the StatefulSets (all at once) and waits until all their pods are Ready.
async fn statefulsets(bed: &Bed, count: usize, replicas: usize) {
    // No readiness probe: a probe exec per pod per second would measure the runtime.
    let pod_spec = json!({"terminationGracePeriodSeconds": 10, "containers": [{
        "name": "db", "image": TEST_IMAGE, "command": ["sh", "-c", EXITS_ON_SIGTERM],
    }]});
    futures::future::join_all((0..count).map(|i| {
        bed.create::<StatefulSet>(support::statefulset(
            &workload(i),
            replicas,
            pod_spec.clone(),
        ))
    }))
    .await;
    let total = count * replicas;
    let client = &bed.client;
    let last = std::sync::atomic::AtomicUsize::new(0);
    let last = &last;
    eventually(&format!("{total} pods ready"), DEADLINE, || async move {
        let ready = bench_pods(client).await.iter().filter(|p| ready(p)).count();
        let before = last.swap(ready, std::sync::atomic::Ordering::Relaxed);
        if ready / 100 > before / 100 {
            eprintln!("  {ready}/{total} pods ready");
        }
        (ready == total).then_some(())
    })
    .await
    .expect("statefulsets ready");
}

/// The pods of the benchmark's StatefulSets (label `app`, in the default namespace).
async fn bench_pods(client: &kube::Client) -> Vec<Pod> {
    Api::<Pod>::default_namespaced(client.clone())
        .list(&ListParams::default().labels("app"))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// What the benchmark's watches saw, each event timed when it arrived.
#[derive(Default)]
struct Seen {
    /// Per rollout: when it was first seen, and first seen Succeeded or Failed.
    rollout_created: HashMap<String, Instant>,
    rollout_finished: HashMap<String, Instant>,
    /// Per rollout: its requests first seen, and first seen finished (Succeeded or Failed).
    request_created: HashMap<String, Vec<Instant>>,
    request_finished: HashMap<String, Vec<Instant>>,
    /// Per rollout: most of its requests unfinished at once.
    max_in_flight: HashMap<String, usize>,
    /// Per workload (the pods' `app` label): restarted pods first seen Ready again.
    ready_again: HashMap<String, Vec<Instant>>,
    /// Per workload: most pods seen unready at once.
    max_unready: HashMap<String, usize>,
    /// Target pods the watch has delivered so far.
    pods_seen: HashSet<String>,
    /// Watches that finished their initial list.
    synced: usize,
}

struct Timeline {
    seen: Arc<Mutex<Seen>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Timeline {
    /// Starts watching the benchmark's pods, the requests and the rollouts; returns once every
    /// watch has listed and every pod was seen.
    async fn watch(client: &kube::Client, pods_expected: usize) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let tasks = vec![
            tokio::spawn(watch_pods(client.clone(), seen.clone())),
            tokio::spawn(watch_requests(client.clone(), seen.clone())),
            tokio::spawn(watch_rollouts(client.clone(), seen.clone())),
        ];
        let synced = seen.clone();
        eventually("the bench's watches", Duration::from_secs(60), || async {
            let seen = synced.lock().expect("seen");
            (seen.synced == 3 && seen.pods_seen.len() == pods_expected).then_some(())
        })
        .await
        .expect("watching");
        Self { seen, tasks }
    }

    /// Waits until all `rollouts` were seen Succeeded or Failed, printing progress.
    async fn finished(&self, rollouts: usize, deadline: Duration) -> Instant {
        let last = std::sync::atomic::AtomicUsize::new(0);
        let last = &last;
        eventually("the rollouts to finish", deadline, || async {
            let seen = self.seen.lock().expect("seen");
            let done = seen.rollout_finished.len();
            let restarted: usize = seen.request_finished.values().map(Vec::len).sum();
            let before = last.swap(restarted, std::sync::atomic::Ordering::Relaxed);
            if restarted / 100 > before / 100 {
                eprintln!("  {restarted} pods restarted, {done}/{rollouts} rollouts finished");
            }
            (done == rollouts).then(|| seen.rollout_finished.values().max().copied())?
        })
        .await
        .expect("rollouts finished")
    }

    /// The latencies per rollout and batch, and the budget checks.
    /// `stored`: when each rollout's create was answered; a rollout counts as created then or
    /// when the watch first delivered it, whichever came first.
    fn measure(
        &self,
        rollouts: usize,
        budget: usize,
        stored: &HashMap<String, Instant>,
    ) -> Measured {
        for task in &self.tasks {
            task.abort();
        }
        let seen = self.seen.lock().expect("seen");
        let mut m = Measured {
            first_request: Samples::new("rollout created -> its 1st request"),
            after_success: Samples::new("batch's last Succeeded -> next batch's 1st request"),
            after_success_last: Samples::new("batch's last Succeeded -> next batch's last request"),
            after_ready: Samples::new("batch's last pod Ready -> next batch's 1st request"),
            batch: Samples::new("batch: 1st request -> last Succeeded"),
            rollout: Samples::new("rollout created -> Succeeded"),
            max_in_flight: 0,
            max_unready: 0,
            problems: Vec::new(),
        };
        let none = Vec::new();
        for i in 0..rollouts {
            let name = rollout(i);
            let app = workload(i);
            let created = seen.request_created.get(&name).unwrap_or(&none);
            let finished = seen.request_finished.get(&name).unwrap_or(&none);
            let ready_again = seen.ready_again.get(&app).unwrap_or(&none);
            let at = [seen.rollout_created.get(&name), stored.get(&name)]
                .into_iter()
                .flatten()
                .min();
            if let (Some(at), Some(first)) = (at, created.first()) {
                m.first_request.push(first.saturating_duration_since(*at));
                if let Some(done) = seen.rollout_finished.get(&name) {
                    m.rollout.push(done.saturating_duration_since(*at));
                }
            }
            let batches = batches(created, finished);
            for (b, batch) in batches.iter().enumerate() {
                let (first, last) = (batch[0], batch[batch.len() - 1]);
                if b > 0 {
                    if let Some(done) = latest_before(finished, first) {
                        m.after_success.push(first - done);
                        m.after_success_last.push(last - done);
                    }
                    if let Some(ready) = latest_before(ready_again, first) {
                        m.after_ready.push(first - ready);
                    }
                }
                let end = batches.get(b + 1).map(|next| next[0]);
                if let Some(done) = finished
                    .iter()
                    .filter(|at| **at >= first && end.is_none_or(|end| **at < end))
                    .max()
                {
                    m.batch.push(*done - first);
                }
            }
            let in_flight = seen.max_in_flight.get(&name).copied().unwrap_or(0);
            let unready = seen.max_unready.get(&app).copied().unwrap_or(0);
            m.max_in_flight = m.max_in_flight.max(in_flight);
            m.max_unready = m.max_unready.max(unready);
            if in_flight > budget {
                m.problems.push(format!(
                    "rollout {name} had {in_flight} requests unfinished at once; its budget is {budget}"
                ));
            }
            if unready > budget {
                m.problems.push(format!(
                    "StatefulSet {app} had {unready} pods unready at once; the budget is {budget}"
                ));
            }
        }
        m
    }
}

struct Measured {
    first_request: Samples,
    after_success: Samples,
    after_success_last: Samples,
    after_ready: Samples,
    batch: Samples,
    rollout: Samples,
    max_in_flight: usize,
    max_unready: usize,
    problems: Vec<String>,
}

/// The objects of a watch event, and whether it ends the initial list.
fn objects<K>(event: watcher::Event<K>) -> (Vec<K>, bool) {
    match event {
        watcher::Event::Apply(o) | watcher::Event::InitApply(o) => (vec![o], false),
        watcher::Event::InitDone => (Vec::new(), true),
        watcher::Event::Delete(_) | watcher::Event::Init => (Vec::new(), false),
    }
}

async fn watch_pods(client: kube::Client, seen: Arc<Mutex<Seen>>) {
    let pods: Api<Pod> = Api::default_namespaced(client);
    let mut unready: HashMap<String, HashSet<String>> = HashMap::new();
    let mut back = HashSet::new();
    let mut synced = false;
    let config = watcher::Config::default().labels("app");
    let mut stream = std::pin::pin!(watcher(pods, config).default_backoff());
    while let Some(event) = stream.next().await {
        let now = Instant::now();
        let Ok(event) = event else { continue };
        let (pods, done) = objects(event);
        let mut seen = seen.lock().expect("seen");
        if done && !synced {
            synced = true;
            seen.synced += 1;
        }
        for pod in pods {
            let name = pod.name_any();
            let app = pod.labels().get("app").cloned().unwrap_or_default();
            seen.pods_seen.insert(name.clone());
            let down = unready.entry(app.clone()).or_default();
            if ready(&pod) {
                down.remove(&name);
                if restart_count(&pod) > 0 && back.insert(name) {
                    seen.ready_again.entry(app).or_default().push(now);
                }
            } else {
                down.insert(name);
                let n = down.len();
                let most = seen.max_unready.entry(app).or_default();
                *most = (*most).max(n);
            }
        }
    }
}

async fn watch_requests(client: kube::Client, seen: Arc<Mutex<Seen>>) {
    let requests: Api<ContainerRecreateRequest> = Api::default_namespaced(client);
    let mut created = HashSet::new();
    let mut finished = HashSet::new();
    let mut in_flight: HashMap<String, usize> = HashMap::new();
    let mut synced = false;
    let mut stream =
        std::pin::pin!(watcher(requests, watcher::Config::default()).default_backoff());
    while let Some(event) = stream.next().await {
        let now = Instant::now();
        let Ok(event) = event else { continue };
        let (requests, done) = objects(event);
        let mut seen = seen.lock().expect("seen");
        if done && !synced {
            synced = true;
            seen.synced += 1;
        }
        for request in requests {
            let Some(rollout) = request.labels().get(LABEL_ROLLING_RESTART).cloned() else {
                continue;
            };
            let name = request.name_any();
            let unfinished = in_flight.entry(rollout.clone()).or_default();
            if created.insert(name.clone()) {
                *unfinished += 1;
                let n = *unfinished;
                seen.request_created
                    .entry(rollout.clone())
                    .or_default()
                    .push(now);
                let most = seen.max_in_flight.entry(rollout.clone()).or_default();
                *most = (*most).max(n);
            }
            let phase = request.status.as_ref().map(|s| s.phase);
            if phase.is_some_and(RecreatePhase::is_finished) && finished.insert(name) {
                *unfinished = unfinished.saturating_sub(1);
                seen.request_finished.entry(rollout).or_default().push(now);
            }
        }
    }
}

async fn watch_rollouts(client: kube::Client, seen: Arc<Mutex<Seen>>) {
    let rollouts: Api<RollingRestart> = Api::default_namespaced(client);
    let mut synced = false;
    let mut stream =
        std::pin::pin!(watcher(rollouts, watcher::Config::default()).default_backoff());
    while let Some(event) = stream.next().await {
        let now = Instant::now();
        let Ok(event) = event else { continue };
        let (rollouts, done) = objects(event);
        let mut seen = seen.lock().expect("seen");
        if done && !synced {
            synced = true;
            seen.synced += 1;
        }
        for rollout in rollouts {
            let name = rollout.name_any();
            seen.rollout_created.entry(name.clone()).or_insert(now);
            let phase = rollout.status.as_ref().map(|s| s.phase);
            if matches!(phase, Some(RolloutPhase::Succeeded | RolloutPhase::Failed)) {
                seen.rollout_finished.entry(name).or_insert(now);
            }
        }
    }
}
