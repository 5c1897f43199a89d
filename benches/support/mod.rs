//! The benchmarks' support: the tests' shared support (tests/support: the sandbox `Bed`, the
//! binaries, pod helpers and container scripts), and what only the benchmarks need — timing
//! samples and the raw CRI floor.

#![allow(dead_code)] // each benchmark uses a part of it

#[path = "../../tests/support/mod.rs"]
mod shared;

#[allow(unused_imports)] // as with dead code: each benchmark uses a part
pub use shared::*;

use std::time::{Duration, Instant};

use relaunch_cri::{ContainerState, RuntimeClient};
use relaunch_testbed::Containerd;
use relaunch_testbed::pod::{self, ContainerTemplate, PodIdentity};

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

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Whether any of these load averages exceeds the core count: latency measured then is an upper
/// bound (the machine was busy with more than the benchmark), and is flagged as such.
pub fn overloaded(loads: &[f64]) -> bool {
    loads.iter().any(|load| *load > cores() as f64)
}

/// User + system CPU seconds of process `pid` so far (its threads included).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3 on.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (index 11 and 12 after the name); 100 ticks/s.
    (ticks(11) + ticks(12)) / 100.0
}

/// A `/proc/<pid>/status` memory line (`VmRSS`, `VmHWM`) in MiB; 0 if the process is gone.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Resident memory of process `pid` now, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS")
}

/// The highest resident memory of process `pid` since it started (`VmHWM`), in MiB.
pub fn hwm_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM")
}

/// Samples process `pid`'s RSS every 100 ms into `peak` (the highest seen), until aborted.
pub async fn sample_rss(pid: u32, peak: std::sync::Arc<std::sync::Mutex<f64>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let rss = rss_mib(pid);
        let mut peak = peak.lock().expect("rss");
        *peak = peak.max(rss);
    }
}
