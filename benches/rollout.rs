//! A RollingRestart across a whole StatefulSet on many simulated nodes, with relaunch-agent and
//! relaunch-coordinator as real processes and a real container per pod: total time, the gap
//! between a restart finishing and the coordinator's next request, the coordinator's API writes
//! per restarted pod, and its memory — during the rollout and with 10,000 pods in its caches.
//!
//! Run as root: `cargo bench --bench rollout`. `RELAUNCH_BENCH_PODS` (default 1000),
//! `RELAUNCH_BENCH_NODES` (default 20), `RELAUNCH_BENCH_MAX_UNAVAILABLE` (default "5%"),
//! `RELAUNCH_BENCH_CACHED_PODS` (pods in the cluster in all, the rest status-only; default 10000).

// Benchmark code: an unwrap, expect or panic stops the run where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use relaunch_api::{ContainerRecreateRequest, RecreatePhase, RolloutPhase};
use relaunch_testbed::{RequestKind, TEST_IMAGE};
use serde_json::json;
use support::{
    Bed, EXITS_ON_SIGTERM, Samples, agent_writes, batches, cached_pod, coordinator_requests, cores,
    cpu_seconds, eventually, is_write, latest_before, load_average, number, overloaded, ready,
    restart_count, rss_mib, sample_rss, setting, subtract,
};

const NAME: &str = "bench";

#[tokio::main]
async fn main() {
    let pods = number("RELAUNCH_BENCH_PODS", 1000);
    let nodes = number("RELAUNCH_BENCH_NODES", 20);
    let max_unavailable = setting("RELAUNCH_BENCH_MAX_UNAVAILABLE", "5%");
    let cached_pods = number("RELAUNCH_BENCH_CACHED_PODS", 10_000);
    let load_start = load_average();
    println!("load average at start: {load_start:.2} ({} cores)", cores());
    let mut bed = Bed::start(nodes).await;
    let client = bed.client.clone();
    let coordinator = bed
        .sandbox
        .coordinator()
        .and_then(|c| c.pid())
        .expect("coordinator pid");

    // The other pods of a big cluster first (status-only, on a node without a kubelet): the
    // coordinator caches every pod, so its memory is measured with all of them, and the rollout
    // runs with them in the caches.
    let extra = cached_pods.saturating_sub(pods);
    let rss_empty = rss_mib(coordinator);
    if extra > 0 {
        // In two steps: RSS at 1,000 cached pods, then at all of them.
        let first = extra.min(1000);
        let rss_first = rss_with_cached_pods(&client, coordinator, 0..first).await;
        let rss = rss_with_cached_pods(&client, coordinator, first..extra).await;
        println!(
            "coordinator RSS: {rss_empty:.1} MiB in an empty cluster, {rss_first:.1} MiB with \
             {first} status-only pods, {rss:.1} MiB with {extra}: {:.0} bytes per cached pod",
            (rss - rss_empty) * 1024.0 * 1024.0 / extra as f64
        );
    }
    let filling = Instant::now();
    let bed_cpu = cpu_seconds(std::process::id());
    statefulset(&bed, pods).await;
    let fill_cpu = cpu_seconds(std::process::id()) - bed_cpu;
    let fill_time = filling.elapsed().as_secs_f64();
    println!(
        "{pods} pods of StatefulSet {NAME} on {nodes} simulated nodes ready in {fill_time:.0} s \
         (real containers); the test bed's own CPU (API server, controllers, {nodes} kubelet \
         simulators: this process) {fill_cpu:.1} s, {:.0} millicores",
        fill_cpu * 1000.0 / fill_time.max(0.001)
    );
    let rss_idle = rss_mib(coordinator);

    let timeline = Timeline::watch(&client, pods).await;
    let writes_before = coordinator_requests(&bed.sandbox);
    let coordinator_cpu = cpu_seconds(coordinator);
    let bed_cpu = cpu_seconds(std::process::id());
    let load_rollout = load_average();
    let started = Instant::now();
    let rss_peak = Arc::new(Mutex::new(0.0_f64));
    let sampler = tokio::spawn(sample_rss(coordinator, rss_peak.clone()));
    bed.rollout(
        NAME,
        json!({
            "target": {"workloadRef": {"kind": "StatefulSet", "name": NAME}},
            "strategy": {"maxUnavailable": max_unavailable.parse::<u32>().map_or(json!(max_unavailable), |n| json!(n))},
        }),
    )
    .await;
    let status = bed.rollout_finished(NAME, Duration::from_secs(3600)).await;
    let total = started.elapsed();
    let coordinator_cpu = cpu_seconds(coordinator) - coordinator_cpu;
    let bed_cpu = cpu_seconds(std::process::id()) - bed_cpu;
    sampler.abort();
    let writes = subtract(&coordinator_requests(&bed.sandbox), &writes_before);
    assert_eq!(
        status.phase,
        RolloutPhase::Succeeded,
        "rollout failed: {:?}",
        status.message
    );

    let restarts = restart_counts(&client).await;
    let once = restarts.values().filter(|&&n| n == 1).count();
    assert_eq!(
        once,
        pods,
        "every pod restarted exactly once (restart counts: {:?})",
        restarts
            .iter()
            .filter(|(_, n)| **n != 1)
            .collect::<BTreeMap<_, _>>()
    );
    let gaps = timeline.gaps();

    println!(
        "rolling restart of {pods} pods over {nodes} nodes, maxUnavailable {max_unavailable}: \
         {:.1} s total, {} batches, at most {} pods seen unready at once",
        total.as_secs_f64(),
        status.batches,
        gaps.max_unready
    );
    let load_end = load_average();
    println!(
        "load average: {load_start:.2} at start, {load_rollout:.2} when the rollout started, \
         {load_end:.2} at the end ({} cores)",
        cores()
    );
    if overloaded(&[load_rollout, load_end]) {
        println!(
            "FLAGGED: the load average was above the core count during the rollout; the \
             latency figures below are an upper bound, not a measurement of relaunch"
        );
    }
    println!("{}", support::header());
    for samples in [
        &gaps.after_success,
        &gaps.whole_batch,
        &gaps.after_ready,
        &gaps.restart,
    ] {
        println!("{}", samples.row());
    }
    let restarted = status.restarted.max(1) as f64;
    let sum = |filter: &dyn Fn(&RequestKind) -> bool| -> u64 {
        writes
            .iter()
            .filter(|(k, _)| is_write(k) && filter(k))
            .map(|(_, n)| n)
            .sum()
    };
    let all = sum(&|_| true);
    let leases = sum(&|k| k.resource == "leases");
    println!(
        "coordinator API writes: {all} in total, {:.2} per restarted pod; without the leader \
         Lease renewals ({leases}, time-based): {:.2} per pod",
        all as f64 / restarted,
        (all - leases) as f64 / restarted
    );
    for (kind, n) in writes.iter().filter(|(k, _)| is_write(k)) {
        println!(
            "  {:<8} {:<44} {n:>6}  {:.2}/pod",
            kind.verb,
            kind.resource,
            *n as f64 / restarted
        );
    }
    // Lists over the whole run, pod start included: every leadership term lists the rollouts
    // and requests again (one page per 500 objects), the pods only when a watch must relist.
    let whole_run = coordinator_requests(&bed.sandbox);
    let lists = |resource: &str| -> u64 {
        whole_run
            .iter()
            .filter(|(k, _)| k.verb == "list" && k.resource == resource)
            .map(|(_, n)| n)
            .sum()
    };
    println!(
        "coordinator list pages over the whole run: rollingrestarts {} (one per leadership term \
         or relist), containerrecreaterequests {}, pods {}",
        lists("rollingrestarts"),
        lists("containerrecreaterequests"),
        lists("pods")
    );
    let agent_writes = agent_writes(&bed.sandbox);
    println!("agent API writes: {agent_writes} (agents hold read-only access)");
    println!(
        "CPU during the rollout: coordinator {coordinator_cpu:.1} s; the test bed (API server, \
         controllers, kubelet simulators) {bed_cpu:.1} s, {:.0} millicores",
        bed_cpu * 1000.0 / total.as_secs_f64().max(0.001)
    );
    let peak = *rss_peak.lock().expect("rss");
    println!(
        "coordinator RSS with {} pods in the cluster: {rss_idle:.1} MiB before the rollout, \
         {peak:.1} MiB peak during it",
        pods + extra
    );
    bed.shutdown().await;
}

/// Creates the StatefulSet and waits until all its pods are Ready.
async fn statefulset(bed: &Bed, replicas: usize) {
    // No readiness probe: 1,000 probe execs a second would measure the runtime.
    let pod_spec = json!({"terminationGracePeriodSeconds": 10, "containers": [{
        "name": "db", "image": TEST_IMAGE, "command": ["sh", "-c", EXITS_ON_SIGTERM],
    }]});
    bed.create::<StatefulSet>(support::statefulset(NAME, replicas, pod_spec))
        .await;
    let pods = bed.pods();
    let last = std::sync::atomic::AtomicUsize::new(0);
    let last = &last;
    eventually(
        &format!("{replicas} pods ready"),
        Duration::from_secs(3600),
        || {
            let pods = pods.clone();
            async move {
                let list = pods
                    .list(&ListParams::default().labels(&format!("app={NAME}")))
                    .await
                    .ok()?;
                let ready = list.items.iter().filter(|p| ready(p)).count();
                let before = last.swap(ready, std::sync::atomic::Ordering::Relaxed);
                if ready / 100 > before / 100 {
                    eprintln!("  {ready}/{replicas} pods ready");
                }
                (ready == replicas).then_some(())
            }
        },
    )
    .await
    .expect("statefulset ready");
}

async fn restart_counts(client: &kube::Client) -> BTreeMap<String, i32> {
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    pods.list(&ListParams::default().labels(&format!("app={NAME}")))
        .await
        .expect("list pods")
        .items
        .iter()
        .map(|p| {
            (
                p.metadata.name.clone().unwrap_or_default(),
                restart_count(p),
            )
        })
        .collect()
}

/// What the benchmark saw, in the order its watches delivered it.
#[derive(Default)]
struct Events {
    /// A request first seen.
    created: Vec<Instant>,
    /// A request first seen Succeeded.
    succeeded: Vec<Instant>,
    /// A restarted pod first seen Ready again.
    ready_again: Vec<Instant>,
    /// Most target pods seen unready at once.
    max_unready: usize,
    /// Target pods the watch has delivered so far.
    pods_seen: HashSet<String>,
}

struct Timeline {
    events: Arc<Mutex<Events>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Timeline {
    /// Starts watching the bench's pods and requests (from now on).
    async fn watch(client: &kube::Client, pods_expected: usize) -> Self {
        let events = Arc::new(Mutex::new(Events::default()));
        let pods: Api<Pod> = Api::default_namespaced(client.clone());
        let requests: Api<ContainerRecreateRequest> = Api::default_namespaced(client.clone());
        let pod_events = events.clone();
        let pod_task = tokio::spawn(async move {
            let mut unready = HashSet::new();
            let mut back = HashSet::new();
            let config = watcher::Config::default().labels(&format!("app={NAME}"));
            let mut stream = std::pin::pin!(watcher(pods, config).applied_objects());
            while let Some(Ok(pod)) = stream.next().await {
                let now = Instant::now();
                let name = pod.metadata.name.clone().unwrap_or_default();
                let mut events = pod_events.lock().expect("events");
                events.pods_seen.insert(name.clone());
                if ready(&pod) {
                    unready.remove(&name);
                    if restart_count(&pod) > 0 && back.insert(name) {
                        events.ready_again.push(now);
                    }
                } else {
                    unready.insert(name);
                    events.max_unready = events.max_unready.max(unready.len());
                }
            }
        });
        let request_events = events.clone();
        let request_task = tokio::spawn(async move {
            let mut seen = HashSet::new();
            let mut done = HashSet::new();
            let mut stream =
                std::pin::pin!(watcher(requests, watcher::Config::default()).applied_objects());
            while let Some(Ok(request)) = stream.next().await {
                let now = Instant::now();
                let name = request.metadata.name.clone().unwrap_or_default();
                let mut events = request_events.lock().expect("events");
                if seen.insert(name.clone()) {
                    events.created.push(now);
                }
                let succeeded = request
                    .status
                    .as_ref()
                    .is_some_and(|s| s.phase == RecreatePhase::Succeeded);
                if succeeded && done.insert(name) {
                    events.succeeded.push(now);
                }
            }
        });
        // The watches must be running before the rollout starts.
        let synced = events.clone();
        eventually("the bench's watches", Duration::from_secs(30), || async {
            (synced.lock().expect("events").pods_seen.len() == pods_expected).then_some(())
        })
        .await
        .expect("watching");
        Self {
            events,
            tasks: vec![pod_task, request_task],
        }
    }

    /// Per batch after the first: from the moment the previous batch was done (its last request
    /// seen Succeeded; its last pod seen Ready again) to the new batch's first request, and to
    /// its last request (a batch's requests are created one pass, so they arrive together).
    fn gaps(self) -> Gaps {
        for task in &self.tasks {
            task.abort();
        }
        let events = self.events.lock().expect("events");
        let batches = batches(&events.created, &events.succeeded);
        let mut gaps = Gaps {
            after_success: Samples::new("batch Succeeded -> next batch's 1st request"),
            whole_batch: Samples::new("batch Succeeded -> next batch's last request"),
            after_ready: Samples::new("batch Ready again -> next batch's 1st request"),
            restart: Samples::new("batch: 1st request -> last Succeeded"),
            max_unready: events.max_unready,
        };
        for (i, batch) in batches.iter().enumerate() {
            let (first, last) = (batch[0], batch[batch.len() - 1]);
            if let Some(done) = latest_before(&events.succeeded, first) {
                gaps.after_success.push(first - done);
                gaps.whole_batch.push(last - done);
            }
            if let Some(ready) = latest_before(&events.ready_again, first) {
                gaps.after_ready.push(first - ready);
            }
            let end = batches.get(i + 1).map(|next| next[0]);
            if let Some(done) = events
                .succeeded
                .iter()
                .filter(|at| **at >= first && end.is_none_or(|end| **at < end))
                .max()
            {
                gaps.restart.push(*done - first);
            }
        }
        gaps
    }
}

struct Gaps {
    after_success: Samples,
    whole_batch: Samples,
    after_ready: Samples,
    restart: Samples,
    max_unready: usize,
}

/// Adds running-looking pods `range` (created through the API, status written as a kubelet
/// would, on a node no kubelet serves) and reports the coordinator's RSS once its caches hold
/// them: the highest of 5 s of samples after the last write.
async fn rss_with_cached_pods(
    client: &kube::Client,
    pid: u32,
    range: std::ops::Range<usize>,
) -> f64 {
    let extra = range.len();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "cached");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let namespace = serde_json::from_value(json!({"metadata": {"name": "cached"}})).expect("ns");
    let _ = namespaces.create(&PostParams::default(), &namespace).await;
    let started = Instant::now();
    let mut writers = futures::stream::iter(range)
        .map(|i| {
            let pods = pods.clone();
            async move { cached_pod(&pods, i).await }
        })
        .buffer_unordered(16);
    while writers.next().await.is_some() {}
    eprintln!(
        "  {extra} status-only pods written in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let peak = Arc::new(Mutex::new(0.0_f64));
    let sampler = tokio::spawn(sample_rss(pid, peak.clone()));
    // A measurement window, not a wait for a condition: the caches fill from watch events.
    tokio::time::sleep(Duration::from_secs(5)).await;
    sampler.abort();
    *peak.lock().expect("rss")
}
