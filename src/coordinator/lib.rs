//! relaunch-coordinator: the report API the agents call (authenticated, node-bound), the single
//! writer of ContainerRecreateRequest status, and the controllers (admission and lifecycle).
//!
//! Decisions are pure functions ([`admission`], [`merge`], [`lifecycle`], [`readiness`],
//! [`auth`]); [`cluster`] is the only place that talks to Kubernetes; [`server`] and
//! [`controller`] are the thin shells that connect them. The report API runs on every replica;
//! the controllers ([`controller`], [`rollout`]) run only on the Lease holder when leader
//! election is configured.

pub mod admission;
pub mod auth;
pub mod cluster;
pub mod controller;
pub mod lifecycle;
pub mod merge;
pub mod metrics;
pub mod readiness;
pub mod reports;
pub mod rollout;
pub mod server;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use prometheus::Registry;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use relaunch_api::COORDINATOR_AUDIENCE;
use relaunch_telemetry::admin::Health;

pub use auth::ServiceAccountRef;
pub use server::ReportListener;

/// Default `--agent-service-account`.
pub const DEFAULT_AGENT_SERVICE_ACCOUNT: &str = "relaunch-system:relaunch-agent";
/// Default `--agent-timeout`.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a successful TokenReview is trusted.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(30);

/// What the coordinator is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The agents' service account; only its tokens may report.
    pub agents: ServiceAccountRef,
    /// Audience the agents' tokens must carry.
    pub audience: String,
    /// A request still Pending or Recreating with no report for this long is failed.
    pub agent_timeout: Duration,
    /// How long a successful TokenReview is trusted (zero: never cached).
    pub token_cache_ttl: Duration,
    /// Who writes Events (`reportingInstance`): the pod or host name.
    pub instance: String,
    /// Run the controllers only while holding this Lease (none: always run them).
    pub leader_election: Option<rollout::lease::LeaderElection>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            agents: ServiceAccountRef {
                namespace: "relaunch-system".into(),
                name: "relaunch-agent".into(),
            },
            audience: COORDINATOR_AUDIENCE.into(),
            agent_timeout: DEFAULT_AGENT_TIMEOUT,
            token_cache_ttl: TOKEN_CACHE_TTL,
            instance: "relaunch-coordinator".into(),
            leader_election: None,
        }
    }
}

/// TLS for the report API: PEM certificate chain and private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why the coordinator cannot run.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("the controllers stopped unexpectedly")]
    ControllersStopped,
}

/// A Kubernetes Event about a request, recorded on the request and on its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Note {
    pub fn normal(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            warning: false,
            reason,
            message: message.into(),
        }
    }

    pub fn warning(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            warning: true,
            reason,
            message: message.into(),
        }
    }
}

/// When an agent last reported on each request (by request UID), as seen by this replica.
#[derive(Debug, Default)]
pub struct Activity {
    last: Mutex<HashMap<String, Timestamp>>,
}

impl Activity {
    pub fn record(&self, uid: &str, at: Timestamp) {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid.to_string(), at);
    }

    pub fn last(&self, uid: &str) -> Option<Timestamp> {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .copied()
    }

    /// Forgets requests that no longer exist.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|uid, _| keep(uid));
    }
}

/// Everything the report API and the controllers share.
pub struct Context {
    pub cluster: cluster::Cluster,
    pub settings: Settings,
    pub metrics: metrics::Metrics,
    /// The RollingRestart metrics.
    pub rollouts: rollout::RolloutMetrics,
    pub activity: Activity,
    pub tokens: auth::TokenCache,
}

impl Context {
    /// Builds the context and registers the coordinator metrics in `registry`.
    pub fn new(
        client: kube::Client,
        settings: Settings,
        registry: &Registry,
    ) -> Result<Arc<Self>, CoordinatorError> {
        Ok(Arc::new(Self {
            cluster: cluster::Cluster::new(client, &settings.instance),
            metrics: metrics::Metrics::register(registry)?,
            rollouts: rollout::RolloutMetrics::register(registry)?,
            activity: Activity::default(),
            tokens: auth::TokenCache::new(settings.token_cache_ttl, 100_000),
            settings,
        }))
    }
}

/// Runs the controllers, on the Lease holder only when leader election is configured. `synced`
/// fires once the controllers' watches have synced, or once another replica is seen leading
/// (a follower serves the report API and is ready).
async fn run_controllers(
    ctx: Arc<Context>,
    synced: tokio::sync::oneshot::Sender<()>,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let Some(election) = ctx.settings.leader_election.clone() else {
        return run_leading(ctx, synced, shutdown).await;
    };
    let synced = Arc::new(Mutex::new(Some(synced)));
    let fire = {
        let synced = synced.clone();
        move || {
            if let Some(tx) = synced.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = tx.send(());
            }
        }
    };
    let client = ctx.cluster.client().clone();
    rollout::lease::run_elected(client, election, shutdown, fire.clone(), move |leading| {
        let ctx = ctx.clone();
        let fire = fire.clone();
        async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let forward = tokio::spawn(async move {
                if rx.await.is_ok() {
                    fire();
                }
            });
            let result = run_leading(ctx, tx, leading).await;
            forward.abort();
            result
        }
    })
    .await
}

/// Runs the CRR controllers and the rollout controller until `stop` or until one fails.
async fn run_leading(
    ctx: Arc<Context>,
    synced: tokio::sync::oneshot::Sender<()>,
    stop: CancellationToken,
) -> Result<(), CoordinatorError> {
    let stop = stop.child_token();
    // One pruned pod cache and one request cache, filled by one watch each, serve both.
    let (crr_wake, rollout_wake) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (caches, watches) = controller::watch_shared(
        ctx.cluster.client().clone(),
        vec![crr_wake.clone(), rollout_wake.clone()],
    );
    let result = tokio::try_join!(
        async {
            let r =
                controller::run(ctx.clone(), caches.clone(), crr_wake, synced, stop.clone()).await;
            stop.cancel();
            r
        },
        async {
            let r =
                rollout::controller::run(ctx.clone(), caches.clone(), rollout_wake, stop.clone())
                    .await;
            stop.cancel();
            r
        },
    );
    for watch in watches {
        watch.abort();
    }
    result.map(|_| ())
}

/// Runs the report API on `listener` and the controllers until `shutdown`; `health` turns ready
/// once the listener is bound (it is, by construction) and the controllers' watches have synced.
/// On shutdown the listener stops accepting and in-flight requests finish.
pub async fn run(
    ctx: Arc<Context>,
    listener: ReportListener,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
    let api = tokio::spawn(server::serve(listener, ctx.clone(), shutdown.clone()));
    let controllers = tokio::spawn(run_controllers(ctx.clone(), synced_tx, shutdown.clone()));
    let readiness = {
        let health = health.clone();
        tokio::spawn(async move {
            if synced_rx.await.is_ok() {
                health.set_ready(true);
                tracing::info!("watches synced; ready");
            }
        })
    };
    let result = match controllers.await {
        Ok(result) => result,
        Err(e) => {
            tracing::error!(error = %e, "controllers task failed");
            Err(CoordinatorError::ControllersStopped)
        }
    };
    if let Err(e) = &result {
        tracing::error!(error = %e, "controllers stopped; shutting down");
        health.set_broken();
        shutdown.cancel();
    }
    // The report API stops only on shutdown, after in-flight requests finished.
    shutdown.cancelled().await;
    health.set_ready(false);
    readiness.abort();
    let _ = api.await;
    result
}
