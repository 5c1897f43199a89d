//! relaunch-sandbox: the local test bed in one command — a private containerd, a test Kubernetes
//! API server, workload controllers and simulated nodes — usable with kubectl.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use relaunch_api::{
    ContainerRecreateRequest, ContainerRecreateRequestStrategy, ExecAction, RollingRestart,
    RolloutPhase, ScaleDown, ScaleDownPhase, ShutdownAction,
};
use relaunch_telemetry::{LogFormat, init_logging};
use relaunch_testbed::{Binaries, Sandbox, SandboxConfig};

#[derive(Parser)]
#[command(
    name = "relaunch-sandbox",
    version,
    about = "The relaunch test bed: containerd, a test API server and simulated nodes on this machine"
)]
struct Cli {
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start everything and run until SIGINT/SIGTERM; writes DIR/kubeconfig and then DIR/ready.
    Up {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = 6443)]
        port: u16,
        /// Run relaunch as on a cluster: build its images from the binaries beside this one,
        /// import them, make the TLS Secret and CA ConfigMap by manifests/README.md and
        /// `kubectl apply -k manifests/base` (an agent DaemonSet pod per node, the coordinator
        /// Deployment), instead of running them as processes.
        #[arg(long)]
        deploy: bool,
    },
    /// Run a short scripted demonstration end to end; exits 0 on success.
    Demo {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// API server port (0 picks a free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Deploy relaunch from its images through manifests/base first (see `up --deploy`).
        #[arg(long)]
        deploy: bool,
        /// Run in this directory and keep it afterwards (the pod, kubelet and relaunch logs)
        /// instead of a temporary directory removed at the end.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, "warn");
    let result = match cli.command {
        Command::Up {
            dir,
            nodes,
            port,
            deploy,
        } => up(dir, nodes, port, deploy).await,
        Command::Demo {
            nodes,
            port,
            deploy,
            dir,
        } => demo(nodes, port, deploy, dir).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("relaunch-sandbox: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The sandbox's configuration: relaunch as processes, or deployed through its manifests.
fn config(dir: PathBuf, nodes: usize, port: u16, deploy: bool) -> Result<SandboxConfig, String> {
    let binaries = Binaries::beside_current_exe().map_err(|e| e.to_string())?;
    let config = SandboxConfig::new(dir, nodes, port);
    Ok(if deploy {
        config.deployed(binaries)
    } else {
        config.with_relaunch(binaries)
    })
}

async fn up(dir: PathBuf, nodes: usize, port: u16, deploy: bool) -> Result<(), String> {
    // Handlers first: a SIGTERM while starting must still tear everything down.
    let shutdown = tokio_util::sync::CancellationToken::new();
    relaunch_telemetry::cancel_on_signals(shutdown.clone())
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    let started = Instant::now();
    let sandbox = Sandbox::start(config(dir.clone(), nodes, port, deploy)?)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(size) = sandbox.image_size() {
        println!(
            "relaunch deployed in {:.1}s from images of {:.1} MiB: kubectl -n relaunch-system get pods -o wide",
            started.elapsed().as_secs_f64(),
            size as f64 / (1024.0 * 1024.0)
        );
    }
    std::fs::write(&ready, "").map_err(|e| format!("cannot write {}: {e}", ready.display()))?;
    println!(
        "sandbox up: {} nodes, API server {}",
        sandbox.nodes.len(),
        sandbox.api().url()
    );
    println!(
        "  export KUBECONFIG={}",
        sandbox.kubeconfig_path().display()
    );
    println!("stop with Ctrl-C (or SIGTERM)");
    shutdown.cancelled().await;
    println!("shutting down");
    let _ = std::fs::remove_file(&ready);
    sandbox.shutdown().await;
    Ok(())
}

/// A StatefulSet whose container behaves like a database: it keeps a counter on its volume and
/// exits cleanly when told to shut down through an exec'd command (`touch /tmp/shutdown`). The
/// README's walk-through applies the same file.
const DEMO_DB: &str = include_str!("../../examples/demo-db.yaml");

/// A partitioned store (each member's keys on its own volume) and the ScaleDown that takes it
/// from 3 members to 1, each leaving member handing its keys over first.
const DEMO_STORE: &str = include_str!("../../examples/demo-store.yaml");
/// The host directory the demo store's members exchange keys through (examples/demo-store.yaml).
const DEMO_EXCHANGE: &str = "/tmp/relaunch-demo-exchange";

async fn demo(nodes: usize, port: u16, deploy: bool, keep: Option<PathBuf>) -> Result<(), String> {
    let temporary = tempfile::Builder::new()
        .prefix("relaunch-sandbox-demo-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let dir = keep.unwrap_or_else(|| temporary.path().to_path_buf());
    if deploy {
        println!(
            "== starting the sandbox: containerd, test API server, {nodes} simulated nodes; relaunch from its images through kubectl apply -k manifests/base (agent DaemonSet, coordinator Deployment)"
        );
    } else {
        println!(
            "== starting the sandbox: containerd, test API server, {nodes} simulated nodes, relaunch-coordinator and a relaunch-agent per node"
        );
    }
    let started = Instant::now();
    let config = config(dir.clone(), nodes, port, deploy)?;
    let sandbox = Sandbox::start(config).await.map_err(|e| e.to_string())?;
    println!(
        "   up in {:.1}s; API server {}",
        started.elapsed().as_secs_f64(),
        sandbox.api().url()
    );
    let result = run_demo(&sandbox).await;
    println!("== tearing down");
    sandbox.shutdown().await;
    result?;
    println!("== demo succeeded");
    Ok(())
}

async fn run_demo(sandbox: &Sandbox) -> Result<(), String> {
    let client = sandbox.client().map_err(|e| e.to_string())?;
    let sets: Api<StatefulSet> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let set: StatefulSet = serde_yaml::from_str(DEMO_DB).map_err(|e| e.to_string())?;
    println!(
        "== deploying StatefulSet demo-db (3 replicas, a database-like container with a volume)"
    );
    sets.create(&PostParams::default(), &set)
        .await
        .map_err(|e| format!("creating the demo StatefulSet: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let ready = loop {
        let list = pods
            .list(&ListParams::default().labels("app=demo-db"))
            .await
            .map_err(|e| e.to_string())?;
        let ready: Vec<Pod> = list.items.into_iter().filter(is_ready).collect();
        if ready.len() == 3 {
            break ready;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of 3 demo pods became Ready within 2 minutes",
                ready.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!("POD        PHASE    IP          NODE      RESTARTS         CONTAINER");
    for pod in &ready {
        let status = pod.status.as_ref();
        let container = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first());
        println!(
            "{:<10} {:<8} {:<11} {:<9} {:<16} {}",
            pod.metadata.name.as_deref().unwrap_or(""),
            status.and_then(|s| s.phase.as_deref()).unwrap_or(""),
            status.and_then(|s| s.pod_ip.as_deref()).unwrap_or(""),
            pod.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or(""),
            container.map(|c| c.restart_count).unwrap_or(0),
            container
                .and_then(|c| c.container_id.as_deref())
                .map(short_id)
                .unwrap_or_default(),
        );
    }
    let first = ready
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("demo-db-0"))
        .ok_or("demo-db-0 is missing")?;
    restart_in_place(client.clone(), first).await?;
    rolling_restart(client.clone()).await?;
    scale_down_demo(sandbox, &client).await
}

async fn restart_in_place(client: kube::Client, pod: &Pod) -> Result<(), String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let before = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .cloned()
        .ok_or("the demo pod has no container status")?;
    println!(
        "== restarting {name}/db in place: shutdown command `touch /tmp/shutdown`, then CRI stop, then the kubelet restarts it"
    );
    let shutdown = ShutdownAction {
        exec: Some(ExecAction {
            command: vec!["touch".into(), "/tmp/shutdown".into()],
        }),
        http_get: None,
    };
    let request = ContainerRecreateRequest::for_pod(pod)
        .name(format!("{name}-restart"))
        .namespace("default")
        .container("db", Some(shutdown))
        .strategy(Some(ContainerRecreateRequestStrategy {
            termination_grace_period_seconds: Some(10),
            ..ContainerRecreateRequestStrategy::default()
        }))
        .build();
    let requests: Api<ContainerRecreateRequest> = Api::default_namespaced(client.clone());
    requests
        .create(&PostParams::default(), &request)
        .await
        .map_err(|e| format!("creating the ContainerRecreateRequest: {e}"))?;
    let request = format!("{name}-restart");
    let status = follow(
        "the recreate",
        Duration::from_secs(120),
        Duration::from_millis(100),
        || async {
            let current = requests.get(&request).await.map_err(|e| e.to_string())?;
            let status = current.status.clone().unwrap_or_default();
            let line = match status.container_recreate_states.first() {
                Some(c) => format!("{:?} (container db: {:?})", status.phase, c.phase),
                None => format!("{:?}", status.phase),
            };
            Ok((line, status.phase.is_finished().then_some(status)))
        },
    )
    .await?;
    if status.phase != relaunch_api::RecreatePhase::Succeeded {
        return Err(format!(
            "the recreate failed: {}",
            status.message.unwrap_or_default()
        ));
    }
    let pods: Api<Pod> = Api::default_namespaced(client);
    let after = pods.get(&name).await.map_err(|e| e.to_string())?;
    let container = after
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .cloned()
        .ok_or("the restarted pod has no container status")?;
    let exit = container
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(|t| t.exit_code);
    println!(
        "   pod UID {} ({}), IP {}, container {} -> {}, restartCount {} -> {}, previous container exited with {}",
        after.metadata.uid.as_deref().unwrap_or(""),
        if after.metadata.uid.as_deref() == Some(uid.as_str()) {
            "unchanged"
        } else {
            "CHANGED"
        },
        after
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .unwrap_or(""),
        before
            .container_id
            .as_deref()
            .map(short_id)
            .unwrap_or_default(),
        container
            .container_id
            .as_deref()
            .map(short_id)
            .unwrap_or_default(),
        before.restart_count,
        container.restart_count,
        exit.map_or("?".to_string(), |c| c.to_string()),
    );
    if after.metadata.uid.as_deref() != Some(uid.as_str())
        || container.restart_count != before.restart_count + 1
    {
        return Err("the pod was not restarted in place".into());
    }
    Ok(())
}

/// A role-aware rolling restart of the whole StatefulSet: replicas first, the primary last,
/// one pod at a time, each through the database's own shutdown command.
async fn rolling_restart(client: kube::Client) -> Result<(), String> {
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    for (pod, role) in [
        ("demo-db-0", "primary"),
        ("demo-db-1", "replica"),
        ("demo-db-2", "replica"),
    ] {
        let patch = serde_json::json!({"metadata": {"labels": {"role": role}}});
        pods.patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| format!("labelling {pod}: {e}"))?;
    }
    println!(
        "== rolling restart of StatefulSet demo-db in place: role=replica first, role=primary last, maxUnavailable 1"
    );
    println!(
        "   (demo-db-0 was restarted a moment ago, so the kubelet holds its next restart back ~10 s: crash-loop back-off)"
    );
    let rollout: RollingRestart = serde_json::from_value(serde_json::json!({
        "apiVersion": "relaunch.dev/v1alpha1",
        "kind": "RollingRestart",
        "metadata": {"name": "demo-db-rollout", "namespace": "default"},
        "spec": {
            "target": {"workloadRef": {"kind": "StatefulSet", "name": "demo-db"}},
            "containers": ["db"],
            "shutdown": [{"container": "db", "exec": {"command": ["touch", "/tmp/shutdown"]}}],
            "strategy": {"maxUnavailable": 1, "order": {"role": {"key": "role", "first": ["replica"], "last": ["primary"]}}}
        }
    }))
    .map_err(|e| e.to_string())?;
    let rollouts: Api<RollingRestart> = Api::default_namespaced(client.clone());
    rollouts
        .create(&PostParams::default(), &rollout)
        .await
        .map_err(|e| format!("creating the RollingRestart: {e}"))?;
    let status = follow(
        "the rolling restart",
        Duration::from_secs(180),
        Duration::from_millis(200),
        || async {
            let status = rollouts
                .get("demo-db-rollout")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            let total = status.total.max(1) as usize;
            let done = status.restarted.max(0) as usize;
            let blocked = status
                .conditions
                .iter()
                .find(|c| c.status == "True" && c.type_ == "Blocked")
                .and_then(|c| c.reason.clone())
                .map(|r| format!(" blocked: {r}"))
                .unwrap_or_default();
            let line = format!(
                "[{}{}] {done}/{} {:?} batch {:?}{blocked}",
                "#".repeat(done * 20 / total),
                "-".repeat(20 - done * 20 / total),
                status.total,
                status.phase,
                status.current_batch,
            );
            // Paused by maxFailures: it will not go on by itself.
            let finished = matches!(status.phase, RolloutPhase::Succeeded | RolloutPhase::Failed)
                || blocked.contains("FailureThresholdReached");
            Ok((line, finished.then_some(status)))
        },
    )
    .await?;
    let order: Vec<&str> = status.pods.iter().map(|p| p.name.as_str()).collect();
    println!("   restarted in this order: {}", order.join(", "));
    if status.phase != RolloutPhase::Succeeded {
        // Why: each failed request's own message.
        let requests: Api<ContainerRecreateRequest> = Api::default_namespaced(client);
        let reasons: Vec<String> = requests
            .list(&ListParams::default().labels(&format!(
                "{}=demo-db-rollout",
                relaunch_api::LABEL_ROLLING_RESTART
            )))
            .await
            .map(|list| list.items)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| {
                let status = r.status?;
                (status.phase == relaunch_api::RecreatePhase::Failed).then(|| {
                    format!(
                        "{}: {}",
                        r.spec.pod_name,
                        status.message.unwrap_or_default()
                    )
                })
            })
            .collect();
        return Err(format!(
            "the rolling restart did not succeed: {}; {}",
            status.message.unwrap_or_default(),
            reasons.join("; ")
        ));
    }
    Ok(())
}

/// The keys (`key-*` files) in claim `claim`'s directory on any node of the sandbox.
fn claim_keys(sandbox: &Sandbox, claim: &str) -> Vec<String> {
    let root = sandbox.kubeconfig_path().with_file_name("nodes");
    let mut keys = Vec::new();
    for node in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let dir = node.path().join("volumes/pvc/default").join(claim);
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("key-") {
                keys.push(name);
            }
        }
    }
    keys.sort();
    keys
}

/// Deploys the partitioned store, scales it 3 -> 1 through a ScaleDown, and checks that every
/// key ended on the remaining member.
async fn scale_down_demo(sandbox: &Sandbox, client: &kube::Client) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(DEMO_EXCHANGE);
    let mut documents = DEMO_STORE.split("\n---\n");
    let mut set: StatefulSet =
        serde_yaml::from_str(documents.next().unwrap_or_default()).map_err(|e| e.to_string())?;
    if sandbox.image_size().is_some() {
        // Deployed, each simulated node has its own filesystem for hostPath volumes (as real
        // nodes do), and the store's members exchange keys through a host directory: keep
        // them on one node: the first (the sandbox names its nodes node-1, node-2, ...).
        let node = sandbox
            .nodes
            .first()
            .map(|n| n.name.clone())
            .ok_or("the sandbox has no nodes")?;
        if let Some(spec) = set.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
            spec.node_selector = Some([("kubernetes.io/hostname".to_string(), node)].into());
        }
    }
    let scaledown: ScaleDown =
        serde_yaml::from_str(documents.next().unwrap_or_default()).map_err(|e| e.to_string())?;
    println!(
        "== deploying StatefulSet demo-store (3 members, each with 3 keys of its own on its volume)"
    );
    let sets: Api<StatefulSet> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    sets.create(&PostParams::default(), &set)
        .await
        .map_err(|e| format!("creating the demo store: {e}"))?;
    follow(
        "the demo store",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=demo-store"))
                .await
                .map_err(|e| e.to_string())?;
            let ready = list.items.iter().filter(|p| is_ready(p)).count();
            let seeded =
                (0..3).all(|o| claim_keys(sandbox, &format!("data-demo-store-{o}")).len() == 3);
            Ok((
                format!("{ready}/3 ready"),
                (ready == 3 && seeded).then_some(()),
            ))
        },
    )
    .await?;
    println!(
        "== scaling demo-store 3 -> 1 with a ScaleDown: each leaving member hands its keys to the remaining ones, then replicas are lowered by one"
    );
    let scaledowns: Api<ScaleDown> = Api::default_namespaced(client.clone());
    scaledowns
        .create(&PostParams::default(), &scaledown)
        .await
        .map_err(|e| format!("creating the ScaleDown: {e}"))?;
    let status = follow(
        "the scale-down",
        Duration::from_secs(180),
        Duration::from_millis(200),
        || async {
            let status = scaledowns
                .get("demo-store-to-1")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            let leaving = status
                .current
                .as_ref()
                .filter(|_| !status.phase.is_finished())
                .map(|c| format!(" {}: {:?}", c.pod_name, c.step))
                .unwrap_or_default();
            let line = format!(
                "{:?} replicas {} removed {:?}{leaving}{}",
                status.phase,
                status.expected_replicas.unwrap_or(3),
                status.removed,
                status
                    .progress
                    .as_deref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default()
            );
            Ok((line, status.phase.is_finished().then_some(status)))
        },
    )
    .await?;
    if status.phase != ScaleDownPhase::Succeeded {
        return Err(format!(
            "the scale-down failed: {}",
            status.message.unwrap_or_default()
        ));
    }
    let want: Vec<String> = {
        let mut keys: Vec<String> = (0..3)
            .flat_map(|p| (1..=3).map(move |i| format!("key-demo-store-{p}-{i}")))
            .collect();
        keys.sort();
        keys
    };
    let keys = follow(
        "the keys to arrive",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let keys = claim_keys(sandbox, "data-demo-store-0");
            Ok((
                format!("{} keys on demo-store-0", keys.len()),
                (keys == want).then_some(keys),
            ))
        },
    )
    .await?;
    println!(
        "   all {} keys are on demo-store-0's volume; the leaving members' claims were deleted",
        keys.len()
    );
    Ok(())
}

/// Polls `poll` every `every` until it yields a value, printing each new progress line it
/// returns with the time since the start; gives up after `timeout`, naming `what`.
async fn follow<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut poll: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(String, Option<T>), String>>,
{
    let started = Instant::now();
    let deadline = started + timeout;
    let mut last = String::new();
    loop {
        let (line, finished) = poll().await?;
        if line != last {
            println!("   {:>6.2}s  {line}", started.elapsed().as_secs_f64());
            last = line;
        }
        if let Some(value) = finished {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{what} did not finish within {} minutes (last: {last})",
                timeout.as_secs() / 60
            ));
        }
        tokio::time::sleep(every).await;
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn short_id(id: &str) -> String {
    match id.split_once("://") {
        Some((scheme, hex)) => format!("{scheme}://{}", &hex[..hex.len().min(12)]),
        None => id.to_string(),
    }
}
