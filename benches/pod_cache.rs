//! What one cached pod costs the coordinator, without a cluster: pods as the test API server
//! serves them, parsed and pruned as the pod watch does, held in a reflector store as the shared
//! cache holds them. Each variant runs in a fresh process (this binary again) and reports its
//! RSS growth per pod; the differences between variants break the cost down.
//!
//! `cargo bench --bench pod_cache` (no root needed). `RELAUNCH_BENCH_CACHED_PODS` (default
//! 10000).

// Benchmark code: an unwrap, expect or panic stops the run where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::sync::Arc;

use kube::core::DeserializeGuard;
use kube::runtime::{reflector, watcher};
use relaunch_coordinator::pods::CachedPod;
use serde_json::json;

/// What is kept of each pod, one process each.
const VARIANTS: &[(&str, &str)] = &[
    (
        "store",
        "the shared cache as the coordinator holds it (reflector store)",
    ),
    ("pods", "the pods alone, without the store's keys and table"),
    ("pods-no-labels", "the pods alone, labels dropped"),
    ("pods-no-owners", "the pods alone, owner references dropped"),
    ("pods-no-conditions", "the pods alone, conditions dropped"),
    (
        "pods-no-containers",
        "the pods alone, container names dropped",
    ),
];

const SHAPES: &[&str] = &["status-only", "statefulset"];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--variant") {
        let variant = &args[i + 1];
        let shape = &args[i + 2];
        let pods = args[i + 3].parse().unwrap();
        run(variant, shape, pods);
        return;
    }
    let pods: usize = std::env::var("RELAUNCH_BENCH_CACHED_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let me = std::env::current_exe().unwrap();
    for shape in SHAPES {
        println!("{pods} pods shaped {shape}: RSS growth per pod");
        let mut measured = Vec::new();
        for (variant, what) in VARIANTS {
            let out = Command::new(&me)
                .args(["--variant", variant, shape, &pods.to_string()])
                .output()
                .unwrap();
            assert!(out.status.success(), "{variant}: {out:?}");
            let bytes: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            println!("  {variant:<20} {bytes:>7.0} B  {what}");
            measured.push((*variant, bytes));
        }
        let of = |v: &str| measured.iter().find(|(n, _)| *n == v).unwrap().1;
        println!(
            "  breakdown: store keys and table {:.0} B; labels {:.0} B; owner references \
             {:.0} B; conditions {:.0} B; container names {:.0} B; the rest of the pod {:.0} B",
            of("store") - of("pods"),
            of("pods") - of("pods-no-labels"),
            of("pods") - of("pods-no-owners"),
            of("pods") - of("pods-no-conditions"),
            of("pods") - of("pods-no-containers"),
            of("pods-no-labels")
                - (of("pods") - of("pods-no-owners"))
                - (of("pods") - of("pods-no-conditions"))
                - (of("pods") - of("pods-no-containers")),
        );
    }
}

/// Parses and keeps `pods` pods as `variant` says, then prints the RSS growth per pod.
fn run(variant: &str, shape: &str, pods: usize) {
    // The served text first, as a list page holds it while the watch parses it: only what the
    // parse keeps (and the holes its temporaries leave) is measured.
    let texts: Vec<Vec<u8>> = (0..pods)
        .map(|i| {
            let mut served = served(shape, i);
            match variant {
                "pods-no-labels" => served["metadata"]["labels"] = json!(null),
                "pods-no-owners" => served["metadata"]["ownerReferences"] = json!(null),
                "pods-no-conditions" => served["status"]["conditions"] = json!(null),
                "pods-no-containers" => served["spec"]["containers"] = json!([]),
                _ => {}
            }
            serde_json::to_vec(&served).unwrap()
        })
        .collect();
    let before = rss_bytes();
    let parsed = texts.iter().map(|text| {
        let guarded: DeserializeGuard<CachedPod> = serde_json::from_slice(text).unwrap();
        let mut pod = guarded.0.unwrap();
        pod.prune();
        pod
    });
    let (store, writer, kept);
    match variant {
        "store" => {
            let (s, mut w) = reflector::store::<CachedPod>();
            w.apply_watcher_event(&watcher::Event::Init);
            for pod in parsed {
                w.apply_watcher_event(&watcher::Event::InitApply(pod));
            }
            w.apply_watcher_event(&watcher::Event::InitDone);
            assert_eq!(s.state().len(), pods);
            (store, writer, kept) = (Some(s), Some(w), Vec::new());
        }
        _ => {
            // The store's writer keeps a clone of each object (lists cloned to their length).
            let clone = |pod: CachedPod| Arc::new(pod.clone());
            (store, writer, kept) = (None, None, parsed.map(clone).collect::<Vec<_>>());
        }
    }
    let after = rss_bytes();
    println!("{}", (after - before) as f64 / pods as f64);
    drop((store, writer, kept, texts));
}

/// A pod as the test API server serves it once its status is written: `status-only` as
/// benches/rollout.rs makes its cached pods, `statefulset` as the test bed's StatefulSet
/// controller makes a replica.
fn served(shape: &str, i: usize) -> serde_json::Value {
    let now = "2026-12-05T20:00:00Z";
    let (name, namespace, labels, owners, node) = match shape {
        "status-only" => (
            format!("cached-{i}"),
            "cached",
            json!({"app": "cached", "apps.kubernetes.io/pod-index": i.to_string()}),
            json!(null),
            "node-without-kubelet".to_string(),
        ),
        _ => (
            format!("bench-{i}"),
            "default",
            json!({"app": "bench", "apps.kubernetes.io/pod-index": i.to_string(),
                   "controller-revision-hash": "bench-5d8f7c9b6d",
                   "statefulset.kubernetes.io/pod-name": format!("bench-{i}")}),
            json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "bench",
                    "uid": "6f1c2a9e-1b7e-4c1a-9d7e-3f5b2c1d0e9f", "controller": true,
                    "blockOwnerDeletion": true}]),
            format!("node-{}", i % 20),
        ),
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace, "labels": labels, "ownerReferences": owners,
            "uid": format!("{:08x}-1b7e-4c1a-9d7e-3f5b2c1d0e9f", i),
            "resourceVersion": (20_000 + i).to_string(), "generation": 1,
            "creationTimestamp": now,
        },
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 30, "containers": [{
            "name": "app", "image": "relaunch-test:latest", "command": ["sh", "-c", "trap 'exit 0' TERM; sleep infinity & wait"],
        }]},
        "status": {
            "phase": "Running", "hostIP": "127.0.0.250", "podIP": "127.0.0.250",
            "startTime": now,
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            ],
            "containerStatuses": [{
                "name": "app", "ready": true, "restartCount": 0, "started": true,
                "image": "relaunch-test:latest", "imageID": "sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "containerID": format!("containerd://{:064x}", i),
                "state": {"running": {"startedAt": now}},
            }],
        },
    })
}

fn rss_bytes() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}
