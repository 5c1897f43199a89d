//! Restart in place on a configuration change at scale: with `RELAUNCH_BENCH_CONFIGMAPS`
//! ConfigMaps (default 1,000, 1 KiB each) and `RELAUNCH_BENCH_WORKLOADS` StatefulSets opted in
//! with `relaunch.dev/reload: auto` (default 200, one real pod each, each reading its own
//! ConfigMap through envFrom), the time from a ConfigMap edit (the PATCH sent) to the first
//! ContainerRecreateRequest of the rollout it starts (seen on a watch), over
//! `RELAUNCH_BENCH_ITERATIONS` edits of different ConfigMaps (default 50); and the coordinator's
//! RSS before and after the ConfigMaps (and as many Secrets) exist, which is what watching them
//! costs.
//!
//! Run as root: `cargo bench --bench reload`. `RELAUNCH_BENCH_NODES` (default 4).

// Benchmark code: an unwrap, expect or panic stops the run where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use relaunch_api::reload::ANNOTATION_RELOAD_APPLIED;
use relaunch_api::{ContainerRecreateRequest, LABEL_ROLLING_RESTART};
use relaunch_testbed::TEST_IMAGE;
use serde_json::json;
use support::{Bed, EXITS_ON_SIGTERM, Samples, eventually, iterations, ready, rss_mib};

fn number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

/// The highest RSS over a 5 s window: a measurement window, not a wait for a condition (the
/// caches fill from watch events).
async fn rss_window(pid: u32) -> f64 {
    let mut peak = 0.0_f64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..50 {
        tick.tick().await;
        peak = peak.max(rss_mib(pid));
    }
    peak
}

#[tokio::main]
async fn main() {
    let config_maps = number("RELAUNCH_BENCH_CONFIGMAPS", 1000);
    let workloads = number("RELAUNCH_BENCH_WORKLOADS", 200).min(config_maps);
    let nodes = number("RELAUNCH_BENCH_NODES", 4);
    let runs = iterations(50).min(workloads);
    let mut bed = Bed::start(nodes).await;
    let client = bed.client.clone();
    let coordinator = bed
        .sandbox
        .coordinator()
        .and_then(|c| c.pid())
        .expect("coordinator pid");

    let rss_empty = rss_window(coordinator).await;
    let filler = "x".repeat(1024);
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let started = Instant::now();
    let mut writes = futures::stream::iter(0..config_maps)
        .map(|i| {
            let (cms, secrets, filler) = (cms.clone(), secrets.clone(), filler.clone());
            async move {
                let cm: ConfigMap = serde_json::from_value(json!({
                    "metadata": {"name": format!("cm-{i}")},
                    "data": {"GENERATION": "0", "FILLER": filler},
                }))
                .unwrap();
                cms.create(&PostParams::default(), &cm).await.unwrap();
                let secret: Secret = serde_json::from_value(json!({
                    "metadata": {"name": format!("secret-{i}")},
                    "stringData": {"FILLER": filler},
                }))
                .unwrap();
                secrets
                    .create(&PostParams::default(), &secret)
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(16);
    while writes.next().await.is_some() {}
    eprintln!(
        "  {config_maps} ConfigMaps and {config_maps} Secrets written in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let rss_objects = rss_window(coordinator).await;

    // The workloads: one pod each, reading its own ConfigMap.
    let sets: Api<StatefulSet> = Api::default_namespaced(client.clone());
    let started = Instant::now();
    let mut creates = futures::stream::iter(0..workloads)
        .map(|i| {
            let sets = sets.clone();
            async move {
                let name = format!("w-{i}");
                let set: StatefulSet = serde_json::from_value(json!({
                    "metadata": {"name": name, "annotations": {"relaunch.dev/reload": "auto"}},
                    "spec": {
                        "replicas": 1, "serviceName": name,
                        "selector": {"matchLabels": {"app": name}},
                        "template": {"metadata": {"labels": {"app": name, "bench": "reload"}}, "spec": {
                            "terminationGracePeriodSeconds": 10,
                            "containers": [{"name": "app", "image": TEST_IMAGE,
                                "command": ["sh", "-c", EXITS_ON_SIGTERM],
                                "envFrom": [{"configMapRef": {"name": format!("cm-{i}")}}]}],
                        }},
                    },
                }))
                .unwrap();
                sets.create(&PostParams::default(), &set).await.unwrap();
            }
        })
        .buffer_unordered(16);
    while creates.next().await.is_some() {}
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    eventually(
        &format!("{workloads} pods ready"),
        Duration::from_secs(1800),
        || async {
            let list = pods
                .list(&ListParams::default().labels("bench=reload"))
                .await
                .ok()?;
            (list.items.iter().filter(|p| ready(p)).count() == workloads).then_some(())
        },
    )
    .await
    .expect("pods ready");
    eventually(
        "every workload baselined",
        Duration::from_secs(300),
        || async {
            let list = sets.list(&ListParams::default()).await.ok()?;
            let done = list
                .items
                .iter()
                .filter(|s| {
                    s.metadata
                        .annotations
                        .as_ref()
                        .is_some_and(|a| a.contains_key(ANNOTATION_RELOAD_APPLIED))
                })
                .count();
            (done == workloads).then_some(())
        },
    )
    .await
    .expect("baselined");
    eprintln!(
        "  {workloads} opted-in StatefulSets ready and baselined in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let rss_workloads = rss_window(coordinator).await;

    // The first request of each rollout, as a watch sees it.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let requests: Api<ContainerRecreateRequest> = Api::default_namespaced(client.clone());
    let watch = tokio::spawn(async move {
        let mut seen = HashSet::new();
        let stream = watcher(requests, watcher::Config::default()).applied_objects();
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(request)) = stream.next().await {
            let rollout = request
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_ROLLING_RESTART))
                .cloned()
                .unwrap_or_default();
            if seen.insert(rollout.clone()) {
                let _ = tx.send((rollout, Instant::now()));
            }
        }
    });
    let mut latency = Samples::new("ConfigMap edit -> first restart request");
    for i in 0..runs {
        let edited = Instant::now();
        cms.patch(
            &format!("cm-{i}"),
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"GENERATION": "1"}})),
        )
        .await
        .unwrap();
        let prefix = format!("statefulset-w-{i}-");
        let at = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let (rollout, at) = rx.recv().await.expect("request watch");
                if rollout.starts_with(&prefix) {
                    return at;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no restart request for w-{i} within 30 s"));
        latency.push(at.duration_since(edited));
    }
    watch.abort();

    println!(
        "{config_maps} ConfigMaps (1 KiB each), {config_maps} Secrets, {workloads} opted-in \
         StatefulSets on {nodes} simulated nodes"
    );
    println!("{}", support::header());
    println!("{}", latency.row());
    println!(
        "coordinator RSS: {rss_empty:.1} MiB empty, {rss_objects:.1} MiB with the ConfigMaps and \
         Secrets (+{:.1} MiB), {rss_workloads:.1} MiB with the workloads and their pods",
        rss_objects - rss_empty
    );
    bed.shutdown().await;
}
