//! The invariant monitor of rollout tests: watches the target pods (and the rollout) throughout
//! and records every moment more than `maxUnavailable` of them are unavailable at once, or a pod
//! restarted more than once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use relaunch_api::RollingRestart;

use super::{ready, restart_count};

/// What the monitor saw.
#[derive(Default, Debug)]
pub struct Observations {
    pub violations: Vec<String>,
    /// Pods in the order they first became unavailable.
    pub restart_order: Vec<String>,
    pub most_unavailable: usize,
    /// Condition reasons seen on the rollout.
    pub reasons: BTreeSet<String>,
}

/// Watches the target pods (label `app=<app>`) and the rollout; records invariant violations.
pub struct Monitor {
    seen: Arc<Mutex<Observations>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Monitor {
    pub fn start(
        client: &kube::Client,
        app: &str,
        rollout: &str,
        max_unavailable: usize,
        baseline: &[Pod],
    ) -> Self {
        let seen = Arc::new(Mutex::new(Observations::default()));
        let base: BTreeMap<String, i32> = baseline
            .iter()
            .map(|p| (p.metadata.name.clone().unwrap(), restart_count(p)))
            .collect();
        let pods: Api<Pod> = Api::default_namespaced(client.clone());
        let config = watcher::Config::default().labels(&format!("app={app}"));
        let pod_task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut state: BTreeMap<String, Pod> = BTreeMap::new();
                let mut stream =
                    std::pin::pin!(watcher(pods, config).default_backoff().applied_objects());
                while let Some(Ok(pod)) = stream.next().await {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    state.insert(name.clone(), pod);
                    let mut seen = seen.lock().unwrap();
                    let unavailable: Vec<&String> = state
                        .iter()
                        .filter(|(_, p)| !ready(p))
                        .map(|(n, _)| n)
                        .collect();
                    if unavailable.contains(&&name) && !seen.restart_order.contains(&name) {
                        seen.restart_order.push(name.clone());
                    }
                    seen.most_unavailable = seen.most_unavailable.max(unavailable.len());
                    if unavailable.len() > max_unavailable {
                        let v = format!(
                            "{} pods unavailable at once: {unavailable:?}",
                            unavailable.len()
                        );
                        seen.violations.push(v);
                    }
                    let count = restart_count(&state[&name]);
                    if let Some(before) = base.get(&name)
                        && count > before + 1
                    {
                        let v = format!("{name} restarted {} times", count - before);
                        seen.violations.push(v);
                    }
                }
            })
        };
        let rollouts: Api<RollingRestart> = Api::default_namespaced(client.clone());
        // An empty name watches every rollout of the namespace.
        let config = match rollout {
            "" => watcher::Config::default(),
            name => watcher::Config::default().fields(&format!("metadata.name={name}")),
        };
        let rollout_task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(
                    watcher(rollouts, config)
                        .default_backoff()
                        .applied_objects()
                );
                while let Some(Ok(r)) = stream.next().await {
                    let mut seen = seen.lock().unwrap();
                    for c in r.status.iter().flat_map(|s| &s.conditions) {
                        if c.status == "True"
                            && let Some(reason) = &c.reason
                        {
                            seen.reasons.insert(reason.clone());
                        }
                    }
                }
            })
        };
        Self {
            seen,
            tasks: vec![pod_task, rollout_task],
        }
    }

    /// Stops watching; panics on any violation.
    pub fn check(self) -> Observations {
        for task in &self.tasks {
            task.abort();
        }
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        assert!(
            seen.violations.is_empty(),
            "invariants broken: {:?}",
            seen.violations
        );
        seen
    }
}
