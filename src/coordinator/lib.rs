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

/// Runs the controllers, on the Lease holder only when leader election is configured. `synced`
/// fires once the controllers' watches have synced, or once another replica is seen leading
/// (a follower serves the report API and is ready).
async fn run_controllers(
    ctx: Arc<Context>,
    synced: tokio::sync::oneshot::Sender<()>,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let Some(election) = ctx.settings.leader_election.clone() else {
        // The only replica: it always leads.
        ctx.metrics.leader.set(1);
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
        },
    )
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
    let scaledown_wake = Arc::new(Notify::new());
    let drain_wake = Arc::new(Notify::new());
    let new_request = Arc::new(Notify::new());
    let (caches, watches) = caches::watch_shared(
        &ctx,
        vec![
            crr_wake.clone(),
            rollout_wake.clone(),
            scaledown_wake.clone(),
            drain_wake.clone(),
        ],
        new_request.clone(),
    );
    // Aborted when this returns or is itself aborted.
    let watches = caches::WatchTasks(watches);
    let result = tokio::try_join!(
        async {
            let r = request_controller::run(
                ctx.clone(),
                caches.clone(),
                crr_wake,
                new_request,
                synced,
                stop.clone(),
            )
            .await;
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
        async {
            let r = scaledown::run(
                ctx.clone(),
                caches.pods.clone(),
                scaledown_wake,
                stop.clone(),
            )
            .await;
            stop.cancel();
            r
        },
        async {
            let r = drain::run(ctx.clone(), caches.pods.clone(), drain_wake, stop.clone()).await;
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
