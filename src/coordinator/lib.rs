//! relaunch-coordinator: the report API the agents call (authenticated, node-bound), the single
//! writer of ContainerRecreateRequest and RollingRestart status, and the controllers (request
//! admission and lifecycle, RollingRestarts), leader-elected.
//!
//! Decisions are pure functions ([`admission`], [`merge`], [`lifecycle`], [`readiness`],
//! [`events`], [`report_api::auth`], [`rollout::reconcile`], [`rollout::planner`]);
//! [`cluster`] is the only place that talks to Kubernetes; [`report_api`],
//! [`request_controller`] and [`rollout::controller`] are the thin shells that connect them, and
//! [`error_policy`] is where their errors become log lines, metrics and retries. The report API
//! runs on every replica; the controllers run only on the Lease holder when
//! [`leader_election`] is configured.

pub mod admission;
pub mod caches;
pub mod cluster;
pub mod context;
pub mod drain;
pub mod error;
pub mod error_policy;
pub mod events;
pub mod exec_policy;
pub mod heartbeats;
pub mod leader_election;
pub mod lifecycle;
pub mod merge;
pub mod metrics;
pub mod pods;
pub mod readiness;
pub mod reload;
pub mod report_api;
pub mod request_controller;
pub mod rollout;
pub mod scaledown;

#[cfg(test)]
mod proptests;

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use relaunch_telemetry::admin::Health;

pub use context::{
    Context, DEFAULT_AGENT_SERVICE_ACCOUNT, DEFAULT_AGENT_TIMEOUT, Settings, TOKEN_CACHE_TTL,
};
pub use error::CoordinatorError;
pub use report_api::auth::ServiceAccountRef;
pub use report_api::server::ReportListener;
pub use report_api::tls::TlsFiles;

/// The longest prefix of `text` of at most `max_bytes` bytes that ends on a character boundary
/// (cutting names and messages from the API must never split a character, or panic).
pub(crate) fn cut_at_char_boundary(text: &str, max_bytes: usize) -> &str {
    let mut end = max_bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

/// What every leadership term's controllers share and a replica keeps for its whole life,
/// following or leading: the pod cache, the caches of what relaunch reads and never writes
/// (PodDisruptionBudgets, ConfigMaps, Secrets), and the wake-ups their changes bring. A new term
/// lists again only what relaunch writes — requests, rollouts, workloads, ScaleDowns, Drains,
/// claims — so that it decides on the last writes of the replica that led before it. Pods are
/// the exception: they are most of what is cached, and relaunch's few pod writes (Drain creates
/// and deletes its own pods, ScaleDown deletes a decommissioned one) are idempotent, by name and
/// UID precondition. Re-elections under load thus no longer list 10,000 pods each, adding load
/// to the API server whose slowness ended the term. The price: a follower holds the pod cache
/// too (about 2 KiB per pod, see docs/performance.md).
#[derive(Clone)]
struct Standing {
    pods: kube::runtime::reflector::Store<pods::CachedPod>,
    references: rollout::controller::References,
    wake: Wakes,
}

/// One wake-up per controller, woken by every change to the caches it reads.
#[derive(Clone, Default)]
struct Wakes {
    requests: Arc<Notify>,
    rollouts: Arc<Notify>,
    scaledowns: Arc<Notify>,
    drains: Arc<Notify>,
}

impl Wakes {
    fn all(&self) -> Vec<Arc<Notify>> {
        vec![
            self.requests.clone(),
            self.rollouts.clone(),
            self.scaledowns.clone(),
            self.drains.clone(),
        ]
    }
}

impl Standing {
    /// Starts the standing watches; they run until the returned tasks are dropped.
    fn start(ctx: &Context) -> (Standing, caches::WatchTasks) {
        let wake = Wakes::default();
        let (pods, pod_watch) = caches::watch_pods(ctx, wake.all());
        let (references, mut tasks) = rollout::controller::watch_references(ctx, &wake.rollouts);
        tasks.push(pod_watch);
        let standing = Standing {
            pods,
            references,
            wake,
        };
        (standing, caches::WatchTasks(tasks))
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
    let (standing, _standing_watches) = Standing::start(&ctx);
    let Some(election) = ctx.settings.leader_election.clone() else {
        // The only replica: it always leads.
        ctx.metrics.leader.set(1);
        return run_leading(ctx, standing, synced, shutdown).await;
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
    let (cluster, metrics) = (ctx.cluster.clone(), ctx.metrics.clone());
    leader_election::run_elected(
        cluster,
        metrics,
        election,
        shutdown,
        fire.clone(),
        move |leadership, leading| {
            // The controllers write only while this term's leadership holds.
            let ctx = ctx.for_leader(leadership);
            let fire = fire.clone();
            let standing = standing.clone();
            async move {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let forward = tokio::spawn(async move {
                    if rx.await.is_ok() {
                        fire();
                    }
                });
                let result = run_leading(ctx, standing, tx, leading).await;
                forward.abort();
                result
            }
        },
    )
    .await
}

/// Runs the CRR controllers, the rollout controller, ScaleDown and Drain for one term, until
/// `stop` or until one fails.
async fn run_leading(
    ctx: Arc<Context>,
    standing: Standing,
    synced: tokio::sync::oneshot::Sender<()>,
    stop: CancellationToken,
) -> Result<(), CoordinatorError> {
    let stop = stop.child_token();
    let Standing {
        pods,
        references,
        wake,
    } = standing;
    // The term's request cache, shared with the standing pod cache by every controller.
    let new_request = Arc::new(Notify::new());
    let (requests, request_watch) = caches::watch_requests(&ctx, wake.all(), new_request.clone());
    let caches = caches::Caches { pods, requests };
    // Aborted when this returns or is itself aborted.
    let watches = caches::WatchTasks(vec![request_watch]);
    let result = tokio::try_join!(
        async {
            let r = request_controller::run(
                ctx.clone(),
                caches.clone(),
                wake.requests.clone(),
                new_request,
                synced,
                stop.clone(),
            )
            .await;
            stop.cancel();
            r
        },
        async {
            let r = rollout::controller::run(
                ctx.clone(),
                caches.clone(),
                references,
                wake.rollouts.clone(),
                stop.clone(),
            )
            .await;
            stop.cancel();
            r
        },
        async {
            let r = scaledown::run(
                ctx.clone(),
                caches.pods.clone(),
                wake.scaledowns.clone(),
                stop.clone(),
            )
            .await;
            stop.cancel();
            r
        },
        async {
            let r = drain::run(
                ctx.clone(),
                caches.pods.clone(),
                wake.drains.clone(),
                stop.clone(),
            )
            .await;
            stop.cancel();
            r
        },
    );
    drop(watches);
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
    // On every replica: the report API admits too. Aborted when this returns.
    let _exec_policy_watches =
        caches::WatchTasks(ctx.exec_policy.start(&ctx.cluster, &ctx.metrics));
    let api = tokio::spawn(report_api::server::serve(
        listener,
        ctx.clone(),
        shutdown.clone(),
    ));
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
