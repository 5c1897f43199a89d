//! Plain views of runtime containers, with the kubelet's labels and annotations decoded.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_cri::v1 as cri;

/// CRI label keys the kubelet puts on every container it creates.
pub mod labels {
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
}

/// CRI annotation keys the kubelet puts on containers (KUBELET.md).
pub mod annotations {
    pub const HASH: &str = "io.kubernetes.container.hash";
    pub const RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
    pub const TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";
    pub const TERMINATION_MESSAGE_POLICY: &str = "io.kubernetes.container.terminationMessagePolicy";
    pub const TERMINATION_GRACE_PERIOD: &str = "io.kubernetes.pod.terminationGracePeriod";
    pub const DELETION_GRACE_PERIOD: &str = "io.kubernetes.pod.deletionGracePeriod";
    pub const PRE_STOP_HANDLER: &str = "io.kubernetes.container.preStopHandler";
    pub const PORTS: &str = "io.kubernetes.container.ports";
}

/// Lifecycle state of a runtime container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

impl From<i32> for ContainerState {
    fn from(value: i32) -> Self {
        match cri::ContainerState::try_from(value) {
            Ok(cri::ContainerState::ContainerCreated) => ContainerState::Created,
            Ok(cri::ContainerState::ContainerRunning) => ContainerState::Running,
            Ok(cri::ContainerState::ContainerExited) => ContainerState::Exited,
            _ => ContainerState::Unknown,
        }
    }
}

/// Who a container belongs to, from the kubelet's CRI labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodContainerRef {
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    pub container_name: String,
}

impl PodContainerRef {
    fn from_labels(labels: &HashMap<String, String>) -> Self {
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        Self {
            pod_name: get(labels::POD_NAME),
            pod_namespace: get(labels::POD_NAMESPACE),
            pod_uid: get(labels::POD_UID),
            container_name: get(labels::CONTAINER_NAME),
        }
    }
}

/// The kubelet's annotations on a container, decoded. Missing or malformed values are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeletAnnotations {
    pub hash: Option<String>,
    pub restart_count: Option<i32>,
    pub termination_message_path: Option<String>,
    pub termination_message_policy: Option<String>,
    pub termination_grace_period_seconds: Option<i64>,
    pub deletion_grace_period_seconds: Option<i64>,
    /// The container's preStop handler as the kubelet serialised it (JSON of a `LifecycleHandler`).
    pub pre_stop_handler: Option<String>,
    /// The container's ports as the kubelet serialised them (JSON list of `ContainerPort`).
    pub ports: Option<String>,
}

impl KubeletAnnotations {
    fn from_annotations(a: &HashMap<String, String>) -> Self {
        let text = |k: &str| a.get(k).cloned();
        let number = |k: &str| a.get(k).and_then(|v| v.parse().ok());
        Self {
            hash: text(annotations::HASH),
            restart_count: number(annotations::RESTART_COUNT).map(|n: i64| n as i32),
            termination_message_path: text(annotations::TERMINATION_MESSAGE_PATH),
            termination_message_policy: text(annotations::TERMINATION_MESSAGE_POLICY),
            termination_grace_period_seconds: number(annotations::TERMINATION_GRACE_PERIOD),
            deletion_grace_period_seconds: number(annotations::DELETION_GRACE_PERIOD),
            pre_stop_handler: text(annotations::PRE_STOP_HANDLER),
            ports: text(annotations::PORTS),
        }
    }
}

/// A container as listed by the runtime.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSummary {
    pub id: String,
    pub pod_sandbox_id: String,
    pub owner: PodContainerRef,
    /// The CRI attempt, which the kubelet sets to the container's restartCount.
    pub attempt: u32,
    pub state: ContainerState,
    pub created_at: Option<SystemTime>,
    pub annotations: KubeletAnnotations,
}

impl From<cri::Container> for ContainerSummary {
    fn from(c: cri::Container) -> Self {
        Self {
            owner: PodContainerRef::from_labels(&c.labels),
            attempt: c.metadata.as_ref().map(|m| m.attempt).unwrap_or_default(),
            state: ContainerState::from(c.state),
            created_at: timestamp(c.created_at),
            annotations: KubeletAnnotations::from_annotations(&c.annotations),
            id: c.id,
            pod_sandbox_id: c.pod_sandbox_id,
        }
    }
}

/// The full status of one container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerDetails {
    pub id: String,
    pub owner: PodContainerRef,
    pub attempt: u32,
    pub state: ContainerState,
    pub created_at: Option<SystemTime>,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    /// Exit code; meaningful only once `state` is `Exited` (137 = SIGKILL).
    pub exit_code: i32,
    /// Runtime's reason for the exit (`Completed`, `Error`, `OOMKilled`), empty while running.
    pub reason: String,
    pub message: String,
    pub log_path: String,
    pub annotations: KubeletAnnotations,
}

impl From<cri::ContainerStatus> for ContainerDetails {
    fn from(s: cri::ContainerStatus) -> Self {
        Self {
            owner: PodContainerRef::from_labels(&s.labels),
            attempt: s.metadata.as_ref().map(|m| m.attempt).unwrap_or_default(),
            state: ContainerState::from(s.state),
            created_at: timestamp(s.created_at),
            started_at: timestamp(s.started_at),
            finished_at: timestamp(s.finished_at),
            annotations: KubeletAnnotations::from_annotations(&s.annotations),
            exit_code: s.exit_code,
            reason: s.reason,
            message: s.message,
            log_path: s.log_path,
            id: s.id,
        }
    }
}

/// What an `ExecSync` returned. A non-zero exit is a result, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// True when stdout or stderr was cut to the caller's bound.
    pub truncated: bool,
}

/// CRI timestamps are nanoseconds since the epoch; zero means "not set".
fn timestamp(nanos: i64) -> Option<SystemTime> {
    (nanos > 0).then(|| UNIX_EPOCH + Duration::from_nanos(nanos as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_kubelet_annotations_and_ignores_malformed_numbers() {
        let a: HashMap<String, String> = [
            (annotations::RESTART_COUNT, "3"),
            (annotations::TERMINATION_GRACE_PERIOD, "not-a-number"),
            (
                annotations::PRE_STOP_HANDLER,
                r#"{"exec":{"command":["true"]}}"#,
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let decoded = KubeletAnnotations::from_annotations(&a);
        assert_eq!(decoded.restart_count, Some(3));
        assert_eq!(decoded.termination_grace_period_seconds, None);
        assert_eq!(
            decoded.pre_stop_handler.as_deref(),
            Some(r#"{"exec":{"command":["true"]}}"#)
        );
    }

    #[test]
    fn zero_timestamp_means_unset() {
        assert_eq!(timestamp(0), None);
        assert_eq!(
            timestamp(1_000_000_000),
            Some(UNIX_EPOCH + Duration::from_secs(1))
        );
    }
}
