//! The benchmarks' support: the tests' shared support (tests/support: the sandbox `Bed`, the
//! binaries, pod helpers and container scripts), and what only the benchmarks need — timing
//! samples, the raw CRI floor, and (`measure`) the load, CPU, RSS and API-write counters.

#![allow(dead_code)] // each benchmark uses a part of it

#[path = "../../tests/support/mod.rs"]
mod shared;

mod measure;

#[allow(unused_imports)] // as with dead code: each benchmark uses a part
pub use {measure::*, shared::*};

use std::time::{Duration, Instant};

use relaunch_cri::{ContainerState, RuntimeClient};
use relaunch_testbed::Containerd;
use relaunch_testbed::pod::{self, ContainerTemplate, PodIdentity};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// Durations of one measured step over repeated runs.
#[derive(Default)]
pub struct Samples {
    pub name: String,
    values: Vec<Duration>,
}

impl Samples {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            values: Vec::new(),
        }
    }

    pub fn push(&mut self, d: Duration) {
        self.values.push(d);
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The `q` quantile (0.0..=1.0) by nearest rank.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.values.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    pub fn row(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "{:<44} {:>5} {:>10.2} {:>10.2} {:>10.2}",
            self.name,
            self.values.len(),
            ms(self.quantile(0.0)),
            ms(self.quantile(0.5)),
            ms(self.quantile(0.99)),
        )
    }
}

pub fn header() -> String {
    format!(
        "{:<44} {:>5} {:>10} {:>10} {:>10}",
        "step", "runs", "min ms", "median ms", "p99 ms"
    )
}

/// Iterations from `RELAUNCH_BENCH_ITERATIONS`, else `default`.
pub fn iterations(default: usize) -> usize {
    std::env::var("RELAUNCH_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The raw CRI floor: what the runtime itself costs for the steps a recreate is made of.
pub struct Floor {
    pub sandbox_create: Samples,
    pub container_create_start: Samples,
    pub exec: Samples,
    pub graceful_stop: Samples,
}

impl Floor {
    pub fn rows(&self) -> Vec<String> {
        [
            &self.sandbox_create,
            &self.container_create_start,
            &self.exec,
            &self.graceful_stop,
        ]
        .iter()
        .map(|s| s.row())
        .collect()
    }
}

/// Measures the raw CRI floor on `containerd` over `runs` pods.
pub async fn measure_floor(containerd: &Containerd, client: &RuntimeClient, runs: usize) -> Floor {
    let mut floor = Floor {
        sandbox_create: Samples::new("cri: sandbox create"),
        container_create_start: Samples::new("cri: container create+start"),
        exec: Samples::new("cri: exec (true)"),
        graceful_stop: Samples::new("cri: stop (exits on SIGTERM)"),
    };
    for run in 0..runs {
        let identity = PodIdentity {
            name: format!("floor-{run}"),
            namespace: "bench".into(),
            uid: format!("floor-uid-{run}"),
            node: None,
        };
        let t = Instant::now();
        let sandbox = pod::run_pod_sandbox(client, &identity, &containerd.pod_log_root())
            .await
            .expect("sandbox");
        floor.sandbox_create.push(t.elapsed());

        let t = Instant::now();
        let id = pod::start_container(
            client,
            &sandbox,
            &identity,
            &ContainerTemplate::shell("app", EXITS_ON_SIGTERM),
        )
        .await
        .expect("container");
        floor.container_create_start.push(t.elapsed());

        // The shell must have installed its trap before the stop is meaningful.
        eventually("shell ready", Duration::from_secs(10), || async {
            let out = client
                .exec_sync(&id, &["true".into()], Duration::from_secs(5), 1024)
                .await
                .ok()?;
            (out.exit_code == 0).then_some(())
        })
        .await
        .expect("container answers exec");

        let t = Instant::now();
        client
            .exec_sync(&id, &["true".into()], Duration::from_secs(5), 1024)
            .await
            .expect("exec");
        floor.exec.push(t.elapsed());

        let t = Instant::now();
        client
            .stop_container(&id, Duration::from_secs(30))
            .await
            .expect("stop");
        floor.graceful_stop.push(t.elapsed());
        let status = client.container_status(&id).await.expect("status");
        assert_eq!(status.state, ContainerState::Exited);
        assert_eq!(status.exit_code, 0, "exited on SIGTERM, not killed");

        pod::remove_pod_sandbox(client, &sandbox.id)
            .await
            .expect("remove sandbox");
    }
    floor
}

/// Pod `cached-{i}`, running as far as the API says, on a node no kubelet serves: what the
/// coordinator caches without anything to restart (created, then its status written, as a
/// kubelet would).
pub async fn cached_pod(pods: &Api<Pod>, i: usize) {
    let name = format!("cached-{i}");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "cached", "apps.kubernetes.io/pod-index": i.to_string()}},
        "spec": {"nodeName": "node-without-kubelet", "terminationGracePeriodSeconds": 30, "containers": [{
            "name": "app", "image": relaunch_testbed::TEST_IMAGE, "command": ["sh", "-c", EXITS_ON_SIGTERM],
        }]},
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create cached pod");
    let now = jiff::Timestamp::now().to_string();
    let status = json!({"status": {
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
            "image": relaunch_testbed::TEST_IMAGE, "imageID": "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "containerID": format!("containerd://{:064x}", i),
            "state": {"running": {"startedAt": now}},
        }],
    }});
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("write cached pod status");
}
