//! The Events the coordinator records, as plain values: what each one says is decided here, in
//! pure code; [`crate::cluster::Cluster`] publishes them.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::ResourceExt;

use relaunch_api::{
    ContainerRecreateRequest, ContainerRecreateRequestStatus, LABEL_ROLLING_RESTART, READINESS_GATE,
};

use crate::merge::Step;

/// Longest Event message in bytes: the API server refuses an Event whose note is longer than
/// 1 KiB, so longer messages are cut (and end in `…`).
pub const MAX_MESSAGE_BYTES: usize = 1000;

/// A Kubernetes Event the coordinator records: on a request and its pod, or on a rollout or
/// workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// A Warning Event (else Normal).
    pub warning: bool,
    /// The Event's reason (also its action), CamelCase.
    pub reason: &'static str,
    /// What happened; cut to [`MAX_MESSAGE_BYTES`] when published.
    pub message: String,
    /// A second object the Event is about (its `related`): Events on one object with the same
    /// reason but another related object are told apart, not folded into one series.
    pub related: Option<ObjectReference>,
}

impl Event {
    /// A Normal Event.
    pub fn normal(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            warning: false,
            reason,
            message: message.into(),
            related: None,
        }
    }

    /// The same Event, about `related` too.
    pub fn related_to(self, related: ObjectReference) -> Self {
        Self {
            related: Some(related),
            ..self
        }
    }

    /// A Warning Event.
    pub fn warning(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            warning: true,
            reason,
            message: message.into(),
            related: None,
        }
    }

    /// The message as published: at most [`MAX_MESSAGE_BYTES`] bytes, cut on a character
    /// boundary and marked with `…` when cut.
    pub fn note(&self) -> String {
        truncate(&self.message, MAX_MESSAGE_BYTES)
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    format!("{}…", crate::cut_at_char_boundary(text, max))
}

/// Whether a RollingRestart created the request: such requests are told by one outcome Event
/// on their pod, not by an Event per step (a 1,000-pod rollout would write ~9,000 Events).
pub fn is_rollout_request(crr: &ContainerRecreateRequest) -> bool {
    crr.labels().contains_key(LABEL_ROLLING_RESTART)
}

/// The one Event of a RollingRestart's request, once it finished: `ContainerRestarted` naming
/// each container restarted in place, or the `Failed` Warning.
pub fn rollout_request_outcome(
    steps: &[Step],
    crr: &ContainerRecreateRequest,
    status: &ContainerRecreateRequestStatus,
) -> Option<Event> {
    let pod = &crr.spec.pod_name;
    steps.iter().find_map(|step| match step {
        Step::Failed { message } => Some(Event::warning("Failed", message.clone())),
        Step::Succeeded => {
            let id = |id: &Option<String>| id.clone().unwrap_or_else(|| "<unknown>".into());
            let restarted: Vec<String> = status
                .container_recreate_states
                .iter()
                .map(|c| {
                    format!(
                        "{} {} -> {}{}",
                        c.name,
                        id(&c.previous_container_id),
                        id(&c.new_container_id),
                        c.restart_count
                            .map(|n| format!(", restartCount {n}"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            Some(Event::normal(
                "ContainerRestarted",
                format!(
                    "pod {pod} restarted in place by RollingRestart {}: {}",
                    crr.labels()
                        .get(LABEL_ROLLING_RESTART)
                        .map_or("", String::as_str),
                    restarted.join("; ")
                ),
            ))
        }
        _ => None,
    })
}

/// The Event for a step.
pub fn for_step(step: &Step, crr: &ContainerRecreateRequest) -> Event {
    let pod = &crr.spec.pod_name;
    let id = |id: &Option<String>| id.clone().unwrap_or_else(|| "<unknown>".into());
    match step {
        Step::Started => {
            let names: Vec<&str> = crr
                .spec
                .containers
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            Event::normal(
                "Recreating",
                format!(
                    "recreating container{} {} of pod {pod} in place",
                    if names.len() == 1 { "" } else { "s" },
                    names.join(", ")
                ),
            )
        }
        Step::ContainerStopped {
            container,
            previous_id,
        } => Event::normal(
            "ContainerStopped",
            format!(
                "stopped container {container} of pod {pod} ({})",
                id(previous_id)
            ),
        ),
        Step::ContainerRestarted {
            container,
            previous_id,
            new_id,
            restart_count,
        } => Event::normal(
            "ContainerRestarted",
            format!(
                "container {container} of pod {pod} restarted in place: {} -> {new_id}{}",
                id(previous_id),
                restart_count
                    .map(|n| format!(", restartCount {n}"))
                    .unwrap_or_default()
            ),
        ),
        Step::Succeeded => Event::normal(
            "Succeeded",
            format!("recreated the requested containers of pod {pod}"),
        ),
        Step::Failed { message } => Event::warning("Failed", message.clone()),
    }
}

/// The Event of a readiness gate an agent's request set: held NotReady, or released.
pub fn gate_set(ready: bool, pod: &str) -> Event {
    if ready {
        Event::normal(
            "ReadinessReleased",
            format!("{READINESS_GATE} set True: pod {pod} may receive traffic again"),
        )
    } else {
        Event::normal(
            "HeldNotReady",
            format!(
                "{READINESS_GATE} set False: pod {pod} is held NotReady before its containers are recreated"
            ),
        )
    }
}

/// The Event of a readiness gate released because the request holding it finished.
pub fn gate_released_after_finish(pod: &str) -> Event {
    Event::normal(
        "ReadinessReleased",
        format!(
            "{READINESS_GATE} set True: the request finished, pod {pod} may receive traffic again"
        ),
    )
}

/// The Event of a readiness gate released because request `namespace/holder`, which held it,
/// was deleted before it finished.
pub fn gate_released_holder_gone(namespace: &str, holder: &str, pod: &str) -> Event {
    Event::normal(
        "ReadinessReleased",
        format!(
            "{READINESS_GATE} set True: ContainerRecreateRequest {namespace}/{holder}, which held pod {pod} NotReady, was deleted before it finished"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollouts_request_is_told_by_one_outcome_event() {
        use relaunch_api::{ContainerRecreateRequestSpec, ContainerRecreateState};
        use std::collections::BTreeMap;
        let mut crr = ContainerRecreateRequest::new(
            "r",
            ContainerRecreateRequestSpec {
                pod_name: "db-0".into(),
                ..Default::default()
            },
        );
        assert!(!is_rollout_request(&crr));
        crr.metadata.labels = Some(BTreeMap::from([(
            LABEL_ROLLING_RESTART.to_string(),
            "db-restart".to_string(),
        )]));
        assert!(is_rollout_request(&crr));
        let status = ContainerRecreateRequestStatus {
            container_recreate_states: vec![ContainerRecreateState {
                name: "db".into(),
                previous_container_id: Some("containerd://old".into()),
                new_container_id: Some("containerd://new".into()),
                restart_count: Some(3),
                ..Default::default()
            }],
            ..Default::default()
        };
        let progress = [
            Step::Started,
            Step::ContainerStopped {
                container: "db".into(),
                previous_id: None,
            },
        ];
        assert_eq!(rollout_request_outcome(&progress, &crr, &status), None);
        let done = rollout_request_outcome(&[Step::Succeeded], &crr, &status).unwrap();
        assert_eq!((done.warning, done.reason), (false, "ContainerRestarted"));
        assert_eq!(
            done.message,
            "pod db-0 restarted in place by RollingRestart db-restart: db containerd://old -> containerd://new, restartCount 3"
        );
        let failed = rollout_request_outcome(
            &[
                Step::Started,
                Step::Failed {
                    message: "boom".into(),
                },
            ],
            &crr,
            &status,
        )
        .unwrap();
        assert_eq!(
            (failed.warning, failed.reason, failed.message.as_str()),
            (true, "Failed", "boom")
        );
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let event = Event::normal("Test", "é".repeat(600));
        let note = event.note();
        assert!(
            note.len() <= MAX_MESSAGE_BYTES + '…'.len_utf8(),
            "{}",
            note.len()
        );
        assert!(note.ends_with('…'));
        assert_eq!(Event::normal("Test", "short").note(), "short");
    }
}
