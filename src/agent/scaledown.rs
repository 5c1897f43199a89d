//! ScaleDown commands: the coordinator asks, in a ScaleDown's `status.exec`, that the agent on
//! the node of one pod run one command in that pod's container (a decommission, status,
//! precheck or cancel command). This agent runs the commands meant for its node through CRI
//! ExecSync — never a stop: a decommission never stops a container — and reports each result
//! to the coordinator (`POST /v1/scaledown-execs`), which writes it into status. Nothing is
//! journaled: a command whose result is not in status yet is run again after a restart, which
//! is why ScaleDown commands must be idempotent (documented in docs/api.md).

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use relaunch_api::report::{ExecReport, RequestRef};
use relaunch_api::{ExecTask, MAX_EXEC_OUTPUT_CHARS, ScaleDown, tail_chars};
use relaunch_cri::{ContainerState, RuntimeClient};

use crate::coordinator_client::{CoordinatorClient, CoordinatorError};
use crate::metrics::AgentMetrics;

/// Output kept from a command (each of stdout and stderr).
const MAX_OUTPUT_BYTES: usize = 8 * 1024;

/// The key of one command: the ScaleDown's UID and the command's id.
type Key = (String, String);

/// Runs the ScaleDown commands meant for `node` until `stop`.
pub async fn run(
    client: Client,
    node: String,
    runtime: RuntimeClient,
    coordinator: CoordinatorClient,
    metrics: AgentMetrics,
    stop: CancellationToken,
) {
    let api: Api<ScaleDown> = Api::all(client);
    let (store, writer) = reflector::store();
    let (changed_tx, mut changed) = tokio::sync::watch::channel(0u64);
    let watch_metrics = metrics.clone();
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|o: &mut ScaleDown| o.metadata.managed_fields = None)
        .reflect(writer);
    let watch_stop = stop.clone();
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        loop {
            tokio::select! {
                _ = watch_stop.cancelled() => break,
                event = events.next() => match event {
                    None => break,
                    Some(Ok(_)) => { changed_tx.send_modify(|n| *n = n.wrapping_add(1)); }
                    Some(Err(e)) => {
                        watch_metrics.watch_restarts.with_label_values(&["scaledowns"]).inc();
                        warn!(error = %e, "ScaleDown watch failed; retrying");
                    }
                }
            }
        }
    });
    let mut started: HashSet<Key> = HashSet::new();
    let mut running: JoinSet<()> = JoinSet::new();
    loop {
        for (key, scaledown, task) in pending(&store, &node) {
            if !started.insert(key) {
                continue;
            }
            info!(scaledown = %format!("{}/{}", scaledown.namespace, scaledown.name), command = %task.id, pod = %task.pod_name, "running a ScaleDown command");
            running.spawn(run_one(
                runtime.clone(),
                coordinator.clone(),
                store.clone(),
                scaledown,
                task,
                stop.clone(),
            ));
        }
        // Forget commands no longer asked for (so memory stays bounded).
        let live: HashSet<Key> = pending(&store, &node)
            .into_iter()
            .map(|(k, _, _)| k)
            .collect();
        if running.is_empty() {
            started.retain(|k| live.contains(k));
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = changed.changed() => {}
            Some(_) = running.join_next(), if !running.is_empty() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    running.abort_all();
}

/// The commands status asks this node to run and that have no result yet.
fn pending(store: &Store<ScaleDown>, node: &str) -> Vec<(Key, RequestRef, ExecTask)> {
    store
        .state()
        .iter()
        .filter(|sd| !sd.status.as_ref().is_some_and(|s| s.phase.is_finished()))
        .filter_map(|sd| {
            let task = sd.status.as_ref()?.exec.clone()?;
            if task.result.is_some() || task.node_name != node {
                return None;
            }
            let uid = sd.uid()?;
            let reference = RequestRef {
                namespace: sd.namespace().unwrap_or_default(),
                name: sd.name_any(),
                uid: uid.clone(),
            };
            Some(((uid, task.id.clone()), reference, task))
        })
        .collect()
}

/// Whether status still asks for `id` without a result.
fn still_pending(store: &Store<ScaleDown>, scaledown: &RequestRef, id: &str) -> bool {
    store.state().iter().any(|sd| {
        sd.uid().as_deref() == Some(scaledown.uid.as_str())
            && sd
                .status
                .as_ref()
                .and_then(|s| s.exec.as_ref())
                .is_some_and(|t| t.id == id && t.result.is_none())
    })
}

/// Runs one command and delivers its result until the coordinator took it (or no longer
/// wants it).
async fn run_one(
    runtime: RuntimeClient,
    coordinator: CoordinatorClient,
    store: Store<ScaleDown>,
    scaledown: RequestRef,
    task: ExecTask,
    stop: CancellationToken,
) {
    let (exit_code, output) = tokio::select! {
        _ = stop.cancelled() => return,
        r = exec(&runtime, &task) => r,
    };
    info!(command = %task.id, exit_code = ?exit_code, "ScaleDown command ended");
    let report = ExecReport {
        scale_down: scaledown.clone(),
        exec_id: task.id.clone(),
        exit_code,
        output: tail_chars(&output, MAX_EXEC_OUTPUT_CHARS),
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        match coordinator.scaledown_exec(&report).await {
            Ok(()) => return,
            Err(CoordinatorError::Rejected { status, message }) => {
                warn!(command = %task.id, status, %message, "the coordinator refused a ScaleDown result");
                return;
            }
            Err(e) => {
                warn!(command = %task.id, error = %e, "cannot deliver a ScaleDown result; retrying")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
        if !still_pending(&store, &scaledown, &task.id) {
            return;
        }
    }
}

/// Runs the command in the task's container (found by pod UID and name through the runtime):
/// the exit code (none when it could not run) and its output.
async fn exec(runtime: &RuntimeClient, task: &ExecTask) -> (Option<i32>, String) {
    let containers = match runtime
        .pod_containers(&task.pod_uid, Some(&task.container))
        .await
    {
        Ok(c) => c,
        Err(e) => return (None, format!("cannot list the pod's containers: {e}")),
    };
    let Some(container) = containers
        .into_iter()
        .find(|c| c.state == ContainerState::Running)
    else {
        return (
            None,
            format!(
                "container {} of pod {} (UID {}) is not running on this node",
                task.container, task.pod_name, task.pod_uid
            ),
        );
    };
    let timeout = Duration::from_secs(u64::try_from(task.timeout_seconds).unwrap_or(300).max(1));
    match runtime
        .exec_sync(&container.id, &task.command, timeout, MAX_OUTPUT_BYTES)
        .await
    {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !stderr.trim().is_empty() {
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(&stderr);
            }
            (Some(out.exit_code), text)
        }
        Err(e) => (None, format!("the command could not run: {e}")),
    }
}
