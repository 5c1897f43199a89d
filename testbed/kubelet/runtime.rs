//! What the kubelet's generic PLEG sees in the runtime: sandboxes and container instances as plain
//! data, and the re-list that fills them in.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_cri::v1 as cri;

use crate::TestbedError;
use crate::pod::NODE_LABEL;
use relaunch_cri::{ContainerState, RuntimeClient, annotations, labels};

/// One runtime instance of a pod's container.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: String,
    pub sandbox_id: String,
    pub pod_uid: String,
    pub name: String,
    /// The CRI attempt, which is the container's restartCount.
    pub attempt: u32,
    pub state: ContainerState,
    pub created_at: Option<SystemTime>,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled` from the runtime; empty while running.
    pub reason: String,
    /// The kubelet's container hash annotation.
    pub hash: String,
    pub image_ref: String,
}

/// One pod sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    pub id: String,
    pub pod_uid: String,
    pub ready: bool,
    pub created_at: Option<SystemTime>,
}

/// A pod's sandboxes and container instances, containers newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodRuntime {
    pub sandboxes: Vec<Sandbox>,
    pub containers: Vec<Instance>,
}

impl PodRuntime {
    /// The instances of container `name`, newest first.
    pub fn instances(&self, name: &str) -> Vec<&Instance> {
        self.containers.iter().filter(|c| c.name == name).collect()
    }

    /// The newest instance of container `name`.
    pub fn newest(&self, name: &str) -> Option<&Instance> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// The ready sandbox, if any (the newest one).
    pub fn ready_sandbox(&self) -> Option<&Sandbox> {
        self.sandboxes.iter().find(|s| s.ready)
    }

    pub fn running(&self) -> impl Iterator<Item = &Instance> {
        self.containers
            .iter()
            .filter(|c| c.state == ContainerState::Running)
    }
}

/// Everything in the runtime, by pod UID.
pub type Snapshot = HashMap<String, PodRuntime>;

/// Re-lists node `node`'s sandboxes and containers (of pod `uid` only when given), reusing
/// `cache` for container statuses that cannot have changed since they were last read. Only the
/// node's own: the runtime filters by the test bed's node label, so a relist costs what the node
/// holds, not what the shared containerd holds for every simulated node.
pub async fn relist(
    runtime: &RuntimeClient,
    node: &str,
    uid: Option<&str>,
    cache: &mut HashMap<String, Instance>,
) -> Result<Snapshot, TestbedError> {
    let mut raw = runtime.raw();
    let mut selector = HashMap::from([(NODE_LABEL.to_string(), node.to_string())]);
    if let Some(uid) = uid {
        selector.insert(labels::POD_UID.to_string(), uid.to_string());
    }
    let sandboxes = raw
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: selector.clone(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .items;
    let containers = raw
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                label_selector: selector,
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;

    let mut snapshot = Snapshot::new();
    for s in sandboxes {
        let Some(pod_uid) = s.labels.get(labels::POD_UID).cloned() else {
            continue;
        };
        snapshot
            .entry(pod_uid.clone())
            .or_default()
            .sandboxes
            .push(Sandbox {
                id: s.id,
                pod_uid,
                ready: s.state == cri::PodSandboxState::SandboxReady as i32,
                created_at: timestamp(s.created_at),
            });
    }
    let mut seen = Vec::with_capacity(containers.len());
    for c in containers {
        if !c.labels.contains_key(labels::POD_UID) {
            continue;
        }
        let state = ContainerState::from(c.state);
        seen.push(c.id.clone());
        let instance = match cache.get(&c.id) {
            Some(cached) if cached.state == state => cached.clone(),
            _ => match raw
                .container_status(cri::ContainerStatusRequest {
                    container_id: c.id.clone(),
                    verbose: false,
                })
                .await
            {
                Ok(response) => match response.into_inner().status {
                    Some(status) => instance(c.pod_sandbox_id.clone(), status),
                    None => continue,
                },
                // Removed between the list and the status call.
                Err(status) if status.code() == tonic::Code::NotFound => continue,
                Err(status) => return Err(status.into()),
            },
        };
        if matches!(
            instance.state,
            ContainerState::Running | ContainerState::Exited
        ) {
            cache.insert(instance.id.clone(), instance.clone());
        }
        snapshot
            .entry(instance.pod_uid.clone())
            .or_default()
            .containers
            .push(instance);
    }
    if uid.is_none() {
        cache.retain(|id, _| seen.contains(id));
    }
    for pod in snapshot.values_mut() {
        pod.sandboxes
            .sort_by_key(|s| std::cmp::Reverse(s.created_at));
        pod.containers.sort_by(|a, b| {
            b.attempt
                .cmp(&a.attempt)
                .then_with(|| b.created_at.cmp(&a.created_at))
        });
    }
    Ok(snapshot)
}

fn instance(sandbox_id: String, s: cri::ContainerStatus) -> Instance {
    let label = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
    Instance {
        pod_uid: label(labels::POD_UID),
        name: s
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_else(|| label(labels::CONTAINER_NAME)),
        attempt: s.metadata.as_ref().map(|m| m.attempt).unwrap_or_default(),
        state: ContainerState::from(s.state),
        created_at: timestamp(s.created_at),
        started_at: timestamp(s.started_at),
        finished_at: timestamp(s.finished_at),
        exit_code: s.exit_code,
        reason: s.reason,
        hash: s
            .annotations
            .get(annotations::HASH)
            .cloned()
            .unwrap_or_default(),
        image_ref: s.image_ref,
        id: s.id,
        sandbox_id,
    }
}

fn timestamp(nanos: i64) -> Option<SystemTime> {
    (nanos > 0).then(|| UNIX_EPOCH + Duration::from_nanos(nanos as u64))
}
