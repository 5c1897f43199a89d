//! relaunch-agent: recreates containers of its node's pods in place, as
//! ContainerRecreateRequests ask, and reports progress to the coordinator.
//!
//! Pure parts: [`plan`] (checking a request against its pod), [`machine`] (the per-container
//! state machine and the request's aggregation), [`order`] (one request per pod, in creation
//! order), [`journal`] (encode/decode, recovery, refusal), [`report::ReportQueue`] (a back-off
//! per request). [`workers`] holds the running workers, one per pod. Shells: [`watch`]
//! (pruned reflectors), [`recreate`] (one request's worker), [`report`] (the report queue's
//! delivery), [`coordinator_client`] (HTTP to the coordinator), [`shutdown`]
//! (exec/httpGet/sleep), and [`run`] (the scheduler and lifecycle). Errors the shells recover
//! from go to [`error_policy`].

pub mod coordinator_client;
pub mod error;
pub mod error_policy;
pub mod failpoint;
pub mod journal;
pub mod machine;
pub mod metrics;
pub mod order;
pub mod plan;
pub mod recreate;
pub mod report;
pub mod scaledown;
pub mod shutdown;
pub mod watch;
pub mod workers;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use relaunch_cri::{ClientConfig, CriMetrics, RuntimeClient};
use relaunch_telemetry::LogFormat;
use relaunch_telemetry::admin::{self, Health};
use relaunch_telemetry::notify::{self, Heartbeat, ServiceManager};

use error_policy::error_policy;
pub use metrics::AgentMetrics;

/// Default path of the projected service-account token for the coordinator.
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/relaunch/token";

/// How long SIGTERM waits for queued reports.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on waiting for in-flight stops at shutdown (a stop's own bound is its grace plus the
/// CRI margin).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(150);

/// The agent's flags (each also settable through the environment variable shown).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "relaunch-agent",
    version,
    about = "The relaunch node agent: in-place container recreates"
)]
pub struct AgentArgs {
    /// This node's name (from the downward API: spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// kubeconfig to use; in-cluster configuration (or the usual inference) when absent.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// CRI socket; the usual containerd, CRI-O and cri-dockerd paths are tried when absent.
    #[arg(long, env = "RELAUNCH_CRI_SOCKET")]
    pub cri_socket: Option<PathBuf>,
    /// Coordinator base URL, http:// or https://.
    #[arg(long, env = "RELAUNCH_COORDINATOR_URL")]
    pub coordinator_url: String,
    /// PEM CA bundle to trust for an https coordinator (system roots when absent).
    #[arg(long, env = "RELAUNCH_COORDINATOR_CA")]
    pub coordinator_ca: Option<PathBuf>,
    /// Bearer token for the coordinator; read again for every request.
    #[arg(long, env = "RELAUNCH_TOKEN_FILE", default_value = DEFAULT_TOKEN_FILE)]
    pub token_file: PathBuf,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "RELAUNCH_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// Most recreates carried out at once on this node.
    #[arg(long, env = "RELAUNCH_MAX_PARALLEL", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_parallel: u32,
    /// How often the latest view of every unfinished request is re-sent, so the coordinator knows
    /// this agent is alive while a request waits or a step takes long. Keep it well below the
    /// coordinator's `--agent-timeout` (default 5m).
    #[arg(long, env = "RELAUNCH_REPORT_HEARTBEAT", default_value = "60s", value_parser = parse_heartbeat)]
    pub report_heartbeat: Duration,
    /// Where the crash-safety journal lives.
    #[arg(long, env = "RELAUNCH_STATE_DIR", default_value = "/var/lib/relaunch")]
    pub state_dir: PathBuf,
    #[arg(long, env = "RELAUNCH_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// A heartbeat interval: a duration of at least one second.
fn parse_heartbeat(text: &str) -> Result<Duration, String> {
    let interval = relaunch_telemetry::parse_duration(text)?;
    if interval < Duration::from_secs(1) {
        return Err(format!(
            "{text:?} is too short; the heartbeat must be at least 1s"
        ));
    }
    Ok(interval)
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot load the Kubernetes client configuration: {0}")]
    KubeConfig(String),
    #[error("cannot create the Kubernetes client: {0}")]
    KubeClient(#[from] kube::Error),
    #[error(transparent)]
    Coordinator(#[from] coordinator_client::CoordinatorError),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error("cannot listen on {addr} for the admin endpoint: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("TLS set-up: {0}")]
    Tls(#[from] rustls::Error),
}

async fn kube_client(args: &AgentArgs) -> Result<kube::Client, AgentError> {
    relaunch_telemetry::client::client(args.kubeconfig.as_deref())
        .await
        .map_err(AgentError::KubeConfig)
}

/// Connects to the runtime, retrying until it answers or `stop` is cancelled.
async fn connect_runtime(
    socket: Option<&PathBuf>,
    metrics: CriMetrics,
    agent_metrics: &AgentMetrics,
    stop: &CancellationToken,
) -> Option<RuntimeClient> {
    let mut backoff = Duration::ZERO;
    loop {
        let attempt = match socket {
            Some(path) => {
                RuntimeClient::connect(path.clone(), ClientConfig::default(), metrics.clone()).await
            }
            None => RuntimeClient::detect_default(ClientConfig::default(), metrics.clone()).await,
        };
        match attempt {
            Ok(client) => return Some(client),
            Err(e) => {
                backoff = report::next_backoff(backoff);
                error_policy(agent_metrics, "container runtime not available", &e.into());
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `stop`.
async fn serve_admin(
    addr: SocketAddr,
    registry: prometheus::Registry,
    health: &Arc<Health>,
    stop: &CancellationToken,
) -> Result<(), AgentError> {
    let listener = admin::bind(addr)
        .await
        .map_err(|source| AgentError::Admin { addr, source })?;
    info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin endpoint listening");
    tokio::spawn(admin::serve(
        listener,
        registry,
        health.clone(),
        stop.clone(),
    ));
    Ok(())
}

/// Runs the agent until `shutdown` is cancelled (SIGTERM), then finishes or checkpoints the
/// work in flight, flushes reports (at most [`FLUSH_TIMEOUT`]) and returns. `service` hears
/// READY=1 when `/readyz` turns ready, WATCHDOG=1 while the scheduler turns, and STOPPING=1 on
/// `shutdown`.
pub async fn run(
    args: AgentArgs,
    shutdown: CancellationToken,
    service: Arc<ServiceManager>,
) -> Result<(), AgentError> {
    // First of all: one agent per node, whichever way it was installed.
    let _node_lock = journal::NodeLock::acquire(&args.state_dir)?;
    service.status("starting: connecting to the API server and the container runtime");
    let registry = admin::registry_with_process_metrics();
    let metrics = AgentMetrics::register(&registry)?;
    let cri_metrics = CriMetrics::register(&registry)?;
    let health = Arc::new(Health::default());
    let background = CancellationToken::new();
    serve_admin(args.admin_listen, registry, &health, &background).await?;

    let journal = journal::Journal::open(&args.state_dir)?;
    let coordinator = coordinator_client::CoordinatorClient::new(
        &args.coordinator_url,
        args.coordinator_ca.as_deref(),
        args.token_file.clone(),
    )?;
    let hooks = shutdown::HookClient::new()?;
    let client = kube_client(&args).await?;
    let reporter = report::Reporter::start(
        coordinator.clone(),
        metrics.clone(),
        args.report_heartbeat,
        background.clone(),
    );

    let (changes_tx, changes) = tokio::sync::watch::channel(0u64);
    let client_for_scaledowns = client.clone();
    let stores = watch::start(
        client,
        &args.node_name,
        metrics.clone(),
        changes_tx,
        background.clone(),
    );
    let Some(runtime) =
        connect_runtime(args.cri_socket.as_ref(), cri_metrics, &metrics, &shutdown).await
    else {
        service.stopping(STOPPING_STATUS);
        background.cancel();
        return Ok(());
    };
    info!(socket = %runtime.socket().display(), node = %args.node_name, "connected to the container runtime");

    let (resumed, done_here) = recover(&journal, &reporter)?;

    tokio::select! {
        _ = shutdown.cancelled() => {
            service.stopping(STOPPING_STATUS);
            background.cancel();
            return Ok(());
        }
        synced = stores.synced() => if !synced {
            background.cancel();
            return Ok(());
        }
    }
    match runtime.version().await {
        Ok(_) => set_ready(&health, &service, true),
        Err(e) => {
            let what = "the container runtime did not answer Version";
            error_policy(&metrics, what, &e.into());
        }
    }
    info!("watches synced; ready");

    tokio::spawn(scaledown::run(
        client_for_scaledowns,
        args.node_name.clone(),
        runtime.clone(),
        coordinator.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let ctx = Arc::new(recreate::Context {
        node: args.node_name.clone(),
        runtime: runtime.clone(),
        hooks,
        stores: stores.clone(),
        changes: changes.clone(),
        reporter: reporter.clone(),
        coordinator,
        journal: journal.clone(),
        metrics,
        permits: Arc::new(Semaphore::new(args.max_parallel as usize)),
        stop: shutdown.clone(),
    });
    let heartbeat = Heartbeat::new();
    tokio::spawn(notify::keep_watchdog(
        service.clone(),
        heartbeat.clone(),
        {
            let health = health.clone();
            move || health.is_live()
        },
        shutdown.clone(),
    ));
    let signals = Signals {
        health: &health,
        service: &service,
        heartbeat: &heartbeat,
    };
    schedule(&ctx, &signals, resumed, done_here, changes).await;

    // SIGTERM: new work was refused; workers stopped at safe points (stops in progress finish).
    health.set_ready(false);
    if !reporter.flush(FLUSH_TIMEOUT).await {
        warn!(
            pending = reporter.pending(),
            "reports not delivered before exit; the journal keeps the results"
        );
    }
    background.cancel();
    info!("stopped");
    Ok(())
}

/// Reads the journal: unfinished requests to resume (by UID), and requests finished here whose
/// results are queued again, as they may not have reached the coordinator.
fn recover(
    journal: &journal::Journal,
    reporter: &report::Reporter,
) -> Result<(HashMap<String, journal::Journaled>, HashSet<String>), AgentError> {
    let mut resumed = HashMap::new();
    let mut done_here: HashSet<String> = HashSet::new();
    let loaded = journal.load()?;
    for uid in loaded.unreadable {
        resumed.insert(uid, journal::Journaled::Unreadable);
    }
    for progress in loaded.entries {
        match journal::recover(progress) {
            journal::Recovery::Resume(p) => {
                info!(crr = %p.request.name, namespace = %p.request.namespace, "found unfinished request in the journal");
                resumed.insert(
                    p.request.uid.clone(),
                    journal::Journaled::Progress(Box::new(p)),
                );
            }
            journal::Recovery::Redeliver(mut p) => {
                done_here.insert(p.request.uid.clone());
                reporter.submit(p.report());
            }
        }
    }
    Ok((resumed, done_here))
}

/// A worker panicked (a bug): its request fails with what is known of its progress (the
/// journal's), is journaled as finished so that no restart carries it on, and is reported.
fn worker_crashed(ctx: &recreate::Context, running: &workers::Running, message: &str) {
    let error = error::ShellError::Worker {
        request: format!("{}/{}", running.request.namespace, running.request.name),
        message: message.to_string(),
    };
    error_policy(&ctx.metrics, "request failed", &error);
    let now = jiff::Timestamp::now();
    let message = format!("the agent's worker crashed: {message}");
    let mut progress = match ctx.journal.read(&running.request.uid) {
        // It crashed after it finished: its result stands.
        Some(p) if p.phase.is_finished() => p,
        Some(mut p) => {
            p.fail_all(&message, now);
            ctx.metrics.recreates.with_label_values(&["failed"]).inc();
            p
        }
        // Nothing journaled yet (nothing was touched): the containers as last reported.
        None => {
            ctx.metrics.recreates.with_label_values(&["failed"]).inc();
            let mut p = machine::RequestProgress::refused(
                running.request.clone(),
                ("", ""),
                message.clone(),
                now,
            );
            if let Some(last) = ctx.reporter.latest(&running.request.uid) {
                p.start_time = last.start_time.or(p.start_time);
                p.containers = last
                    .containers
                    .iter()
                    .map(|c| {
                        let mut container = machine::ContainerProgress::new(&c.name);
                        container.fail(message.as_str(), now);
                        container
                    })
                    .collect();
            }
            p
        }
    };
    if let Err(e) = ctx.journal.write(&progress) {
        error_policy(&ctx.metrics, "cannot journal the result", &e.into());
    }
    // Numbered after the worker's last report, which may be in delivery: the queue keeps a
    // view only if its sequence is newer than the one being delivered.
    if let Some(last) = ctx.reporter.latest(&running.request.uid) {
        progress.sequence = progress.sequence.max(last.sequence);
    }
    ctx.reporter.submit(progress.report());
}

/// The service manager's status line once SIGTERM arrived.
const STOPPING_STATUS: &str = "stopping: finishing work in flight and flushing reports";

/// Sets `/readyz` and tells the service manager when it changes: READY=1 when it turns ready.
fn set_ready(health: &Health, service: &ServiceManager, ready: bool) {
    if health.is_ready() == ready {
        return;
    }
    health.set_ready(ready);
    if ready {
        service.ready("ready: connected to the container runtime, watches synced");
    } else {
        service.status("not ready: the container runtime does not answer");
    }
}

/// How the scheduler shows it is alive: `/readyz`, the service manager, the watchdog's heartbeat.
struct Signals<'a> {
    health: &'a Health,
    service: &'a ServiceManager,
    heartbeat: &'a Heartbeat,
}

/// Starts the head request of every pod as soon as it may run, reaps finished workers, keeps
/// the journal tidy, until `ctx.stop` is cancelled; then waits for the workers.
async fn schedule(
    ctx: &Arc<recreate::Context>,
    signals: &Signals<'_>,
    mut resumed: HashMap<String, journal::Journaled>,
    mut done_here: HashSet<String>,
    mut changes: tokio::sync::watch::Receiver<u64>,
) {
    let mut workers = workers::Workers::default();
    let mut not_understood: HashSet<String> = HashSet::new();
    let mut waiting_admission: HashSet<String> = HashSet::new();
    // Requests whose first report was sent to admit them: claimed once per agent process.
    let mut claimed: HashSet<String> = HashSet::new();
    let mut last_runtime_check = tokio::time::Instant::now();
    loop {
        let requests = ctx.stores.requests.state();
        let mut candidates = Vec::new();
        let mut live: HashMap<String, bool> = HashMap::new();
        for crr in &requests {
            let uid = crr.uid().unwrap_or_default();
            let finished_in_status = crr.status.as_ref().is_some_and(|s| s.phase.is_finished());
            live.insert(uid.clone(), finished_in_status);
            if recreate::request_pod(&ctx.stores, crr).is_none() {
                continue;
            }
            candidates.push(order::Candidate {
                uid: uid.clone(),
                namespace: crr.namespace().unwrap_or_default(),
                name: crr.name_any(),
                pod_name: crr.spec.pod_name.clone(),
                created: crr.metadata.creation_timestamp.as_ref().map(|t| t.0),
                finished: finished_in_status || done_here.contains(&uid),
            });
        }
        for head in order::heads(&candidates) {
            let pod = workers::PodKey {
                namespace: head.namespace.clone(),
                name: head.pod_name.clone(),
            };
            // One pod, one worker: a request the coordinator finished while its worker was
            // inside a shutdown action or a stop still holds the pod until that worker ended.
            if workers.is_busy(&pod) || ctx.stop.is_cancelled() {
                continue;
            }
            let Some(crr) = requests
                .iter()
                .find(|r| r.uid().as_deref() == Some(head.uid.as_str()))
            else {
                continue;
            };
            // A newer release's phase: not finished, so the pod's later requests wait, but
            // nothing is done for it either.
            if crr.status.as_ref().is_some_and(|s| s.has_unknown()) {
                if not_understood.insert(head.uid.clone()) {
                    warn!(crr = %head.name, namespace = %head.namespace, "the request is in a phase this version of the agent does not know; not acting on it");
                }
                continue;
            }
            // Only what the coordinator admitted, for the request as it is now: its checks
            // (the pod, exec authorization) cannot be skipped by setting the node label. A
            // request without status is claimed: its first report asks the coordinator to
            // admit it, and the worker does nothing before the answer. Once only: if that
            // fails, the request waits for the request controller to admit it.
            let claim = !crr.is_admitted();
            if claim
                && (crr.status.is_some()
                    || resumed.contains_key(&head.uid)
                    || !claimed.insert(head.uid.clone()))
            {
                if waiting_admission.insert(head.uid.clone()) {
                    info!(crr = %head.name, namespace = %head.namespace, "waiting for the coordinator to admit the request; not acting on it yet");
                }
                continue;
            }
            let running = workers::Running {
                pod,
                request: recreate::request_ref(crr),
            };
            let worker =
                recreate::run_request(ctx.clone(), crr.clone(), resumed.remove(&head.uid), claim);
            workers.spawn(running, worker);
        }
        // Forget what is gone; drop journal entries the coordinator has acknowledged.
        done_here.retain(|uid| live.contains_key(uid));
        not_understood.retain(|uid| live.contains_key(uid));
        waiting_admission.retain(|uid| live.contains_key(uid));
        claimed.retain(|uid| live.contains_key(uid));
        for uid in ctx.journal.uids() {
            let acknowledged = live.get(&uid).copied().unwrap_or(true);
            if acknowledged && !workers.runs(&uid) {
                if let Err(e) = ctx.journal.remove_async(&uid).await {
                    error_policy(&ctx.metrics, "journal", &e.into());
                }
                resumed.remove(&uid);
            }
        }
        if last_runtime_check.elapsed() > Duration::from_secs(10) {
            last_runtime_check = tokio::time::Instant::now();
            let answers = ctx.runtime.version().await.is_ok();
            set_ready(signals.health, signals.service, answers);
        }

        tokio::select! {
            _ = ctx.stop.cancelled() => break,
            Some(joined) = workers.join_next(), if !workers.is_empty() => match joined {
                workers::Joined::Ended { running, outcome } => {
                    let uid = running.request.uid;
                    match outcome {
                        recreate::Outcome::Finished(_) => {
                            done_here.insert(uid);
                        }
                        recreate::Outcome::Gone => ctx.reporter.forget(&uid),
                        recreate::Outcome::Interrupted | recreate::Outcome::NotClaimed => {}
                    }
                }
                workers::Joined::Crashed { running, message } => {
                    worker_crashed(ctx, &running, &message);
                    done_here.insert(running.request.uid);
                }
            },
            _ = changes.changed() => {}
            _ = signals.heartbeat.asked() => signals.heartbeat.beat(),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    // Before the drain: systemd disarms the watchdog on STOPPING=1 and the pings have ended.
    signals.service.stopping(STOPPING_STATUS);
    info!(
        in_flight = workers.len(),
        "shutting down: no new work; waiting for work in flight to reach a safe point"
    );
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("work in flight did not reach a safe point in time; the journal resumes it");
    }
}
