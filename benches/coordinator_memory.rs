//! The coordinator's memory with 0, 1,000 and 10,000 pods in the cluster, measured without a
//! rollout: the sandbox (one simulated node, relaunch running), status-only pods written
//! through the API as benches/rollout.rs writes them, and at each count a fresh coordinator
//! process per variant (a binary, an environment) started beside the sandbox's own, its RSS
//! sampled until its caches are filled and it has settled, once leading (without leader
//! election) and once following the sandbox's coordinator (which holds the Lease). Variants
//! run one after the other against the same cluster, so two builds (or two allocator settings)
//! compare on equal terms.
//!
//! Run as root: `cargo bench --bench coordinator_memory`. `RELAUNCH_BENCH_CACHED_PODS` (default
//! 10000); `RELAUNCH_BENCH_COORDINATORS`: variants separated by `;`, each a binary path (empty:
//! this build's) and `NAME=VALUE` environment settings separated by spaces (default: this
//! build's, no extra environment).

// Benchmark code: an unwrap, expect or panic stops the run where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use relaunch_testbed::{COORDINATOR_LEASE, RELAUNCH_NAMESPACE};
use serde_json::json;
use support::{Bed, binaries, cached_pod, number, rss_mib, setting};

struct Variant {
    label: String,
    binary: PathBuf,
    env: Vec<(String, String)>,
}

#[tokio::main]
async fn main() {
    let cached_pods = number("RELAUNCH_BENCH_CACHED_PODS", 10_000);
    let variants = variants(&setting("RELAUNCH_BENCH_COORDINATORS", ""));
    let bed = Bed::start(1).await;
    let client = bed.client.clone();
    let kubeconfig = bed.dir().join("coordinator").join("kubeconfig");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let namespace = serde_json::from_value(json!({"metadata": {"name": "cached"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "cached");

    let mut written = 0;
    for count in [0, cached_pods.min(1000), cached_pods] {
        let started = Instant::now();
        let mut writers = futures::stream::iter(written..count)
            .map(|i| {
                let pods = pods.clone();
                async move { cached_pod(&pods, i).await }
            })
            .buffer_unordered(16);
        while writers.next().await.is_some() {}
        if count > written {
            eprintln!(
                "  {} status-only pods written in {:.0} s",
                count - written,
                started.elapsed().as_secs_f64()
            );
        }
        written = count;
        for variant in &variants {
            for role in [Role::Leading, Role::Following] {
                let (settled, peak, anon, file) = measure(variant, role, &kubeconfig).await;
                println!(
                    "{count:>6} pods  {:<40} {:<9} RSS settled {settled:>5.1} MiB (anonymous \
                     {anon:.1}, file {file:.1}), peak {peak:>5.1} MiB",
                    variant.label,
                    role.name()
                );
            }
        }
    }
    bed.shutdown().await;
}

fn variants(setting: &str) -> Vec<Variant> {
    let this_build = binaries().coordinator;
    let parse = |spec: &str| {
        let mut words = spec.split_whitespace().peekable();
        let binary = match words.peek() {
            Some(w) if !w.contains('=') => PathBuf::from(words.next().unwrap()),
            _ => this_build.clone(),
        };
        let env: Vec<(String, String)> = words
            .map(|w| {
                let (k, v) = w.split_once('=').expect("NAME=VALUE");
                (k.to_string(), v.to_string())
            })
            .collect();
        Variant {
            label: if spec.trim().is_empty() {
                "this build".into()
            } else {
                spec.trim().into()
            },
            binary,
            env,
        }
    };
    setting.split(';').map(parse).collect()
}

/// How the measured coordinator runs.
#[derive(Clone, Copy)]
enum Role {
    /// Without leader election: it runs its controllers (which have nothing to do).
    Leading,
    /// A follower of the sandbox's coordinator, which holds the Lease: it serves the report API
    /// and keeps the caches every replica keeps (the pods among them), and runs no controller.
    Following,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Leading => "leading",
            Role::Following => "following",
        }
    }

    fn args(self) -> Vec<String> {
        match self {
            Role::Leading => vec![],
            Role::Following => vec![
                "--leader-election-namespace".into(),
                RELAUNCH_NAMESPACE.into(),
                "--leader-election-name".into(),
                COORDINATOR_LEASE.into(),
            ],
        }
    }
}

/// Starts the variant's coordinator in `role`, waits until its RSS has not grown for 5 s after
/// it is ready (a follower is ready at once: it then waits for its caches to fill), and returns
/// the settled RSS, the peak, and the settled anonymous and file-backed parts (MiB).
async fn measure(
    variant: &Variant,
    role: Role,
    kubeconfig: &std::path::Path,
) -> (f64, f64, f64, f64) {
    let port = || {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let admin = port();
    let mut child = std::process::Command::new(&variant.binary)
        .args([
            "run",
            "--kubeconfig",
            &kubeconfig.to_string_lossy(),
            "--listen",
            &port().to_string(),
            "--admin-listen",
            &admin.to_string(),
        ])
        .args(role.args())
        .envs(variant.env.iter().cloned())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let http = readyz_probe(admin);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ready = false;
    let (mut peak, mut last, mut stable_since) = (0.0_f64, 0.0_f64, Instant::now());
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rss = rss_mib(pid);
        peak = peak.max(rss);
        if !ready {
            ready = http().await;
            stable_since = Instant::now();
        } else if rss > last + 0.05 {
            stable_since = Instant::now();
        }
        last = last.max(rss);
        if ready && stable_since.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    assert!(ready, "{}: not ready in time", variant.label);
    let settled = rss_mib(pid);
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    let (anon, file) = (field("Anonymous:"), field("Pss_File:"));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
    (settled, peak, anon, file)
}

/// A probe of the coordinator's `/readyz` over plain HTTP/1.1 (no client library needed).
fn readyz_probe(
    admin: std::net::SocketAddr,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> {
    move || {
        Box::pin(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(mut stream) = tokio::net::TcpStream::connect(admin).await else {
                return false;
            };
            let request = "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
            if stream.write_all(request.as_bytes()).await.is_err() {
                return false;
            }
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            answer.starts_with(b"HTTP/1.1 200")
        })
    }
}
