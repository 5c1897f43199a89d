//! The `relaunch.dev/ready` readiness gate: whether a pod has it, who holds it, and the pod
//! status patch that holds or releases it. Who holds a pod is written into the gate
//! condition's message and read back from it in one place, [`GateHolder`].

use jiff::Timestamp;
#[cfg(test)]
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::PodCondition;

use crate::pods::PodFacts;
use serde_json::{Value, json};

use relaunch_api::READINESS_GATE;

/// Reason of the gate condition while a request holds the pod NotReady.
pub const REASON_HELD: &str = "RecreateRequested";
/// Reason of the gate condition once released.
pub const REASON_RELEASED: &str = "RecreateFinished";
/// Reason of the gate condition set on a gated pod that had none.
pub const REASON_OPENED: &str = "Initialized";
/// Reason of the gate condition once released because the request holding it is gone.
pub const REASON_HOLDER_GONE: &str = "RecreateRequestDeleted";

const HOLD_PREFIX: &str = "held NotReady by ContainerRecreateRequest ";

/// The request holding a pod NotReady. It is kept in the gate condition's message (the pod is
/// the only place that outlives the request), written by [`GateHolder::message`] and read back
/// by [`GateHolder::from_message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateHolder {
    /// The request's namespace (the pod's).
    pub namespace: String,
    /// The request's name.
    pub name: String,
}

impl GateHolder {
    /// Request `namespace/name`.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The gate condition's message while this request holds the pod.
    pub fn message(&self) -> String {
        format!("{HOLD_PREFIX}{self}")
    }

    /// The holder named by a message [`GateHolder::message`] wrote; anything else is none.
    pub fn from_message(message: &str) -> Option<Self> {
        let (namespace, name) = message.strip_prefix(HOLD_PREFIX)?.split_once('/')?;
        if namespace.is_empty() || name.is_empty() {
            return None;
        }
        Some(Self::new(namespace, name))
    }
}

impl std::fmt::Display for GateHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Whether the pod lists `relaunch.dev/ready` in `spec.readinessGates`.
pub fn has_gate(pod: &impl PodFacts) -> bool {
    pod.has_readiness_gate(READINESS_GATE)
}

/// The pod's `relaunch.dev/ready` condition, if any.
pub fn gate_condition(pod: &impl PodFacts) -> Option<&PodCondition> {
    pod.condition(READINESS_GATE)
}

/// The request that holds the pod NotReady, when the coordinator set the condition False on its
/// behalf.
pub fn holder(pod: &impl PodFacts) -> Option<GateHolder> {
    let c = gate_condition(pod)?;
    if c.status != "False" || c.reason.as_deref() != Some(REASON_HELD) {
        return None;
    }
    GateHolder::from_message(c.message.as_deref()?)
}

/// Whether request `holder` holds the pod NotReady.
pub fn is_held_by(pod: &impl PodFacts, holder: &GateHolder) -> bool {
    gate_condition(pod).is_some_and(|c| {
        c.status == "False"
            && c.message
                .as_deref()
                .and_then(GateHolder::from_message)
                .as_ref()
                == Some(holder)
    })
}

/// What a readiness request means for the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateChange {
    /// The pod has no `relaunch.dev/ready` gate: nothing to hold.
    NotGated,
    /// The condition already says so: nothing to write.
    Unchanged,
    /// Another request holds the pod NotReady: releasing on behalf of this one would undo that
    /// hold, so nothing is written (the holder releases it, or the coordinator once the holder
    /// is gone).
    HeldByOther(GateHolder),
    /// Write the condition with this status.
    Set { ready: bool },
}

/// Decides what `ready` asked for by request `holder` changes on `pod`. Decided on one version
/// of the pod: the write that follows carries that version ([`gate_patch`]).
pub fn gate_change(pod: &impl PodFacts, ready: bool, holder: &GateHolder) -> GateChange {
    if !has_gate(pod) {
        return GateChange::NotGated;
    }
    if ready && let Some(other) = self::holder(pod).filter(|h| h != holder) {
        return GateChange::HeldByOther(other);
    }
    let done = match gate_condition(pod) {
        None => false,
        Some(c) if ready => c.status == "True",
        Some(_) => is_held_by(pod, holder),
    };
    if done {
        GateChange::Unchanged
    } else {
        GateChange::Set { ready }
    }
}

/// Whether a gated pod has no gate condition yet: nobody holds it, so it is opened (set True);
/// without this a pod with the `relaunch.dev/ready` gate would never become Ready.
pub fn needs_opening(pod: &impl PodFacts) -> bool {
    has_gate(pod) && gate_condition(pod).is_none() && pod.meta().deletion_timestamp.is_none()
}

/// The patch that opens a gated pod's `relaunch.dev/ready` condition for the first time. It
/// applies only to pod version `resource_version` (409 otherwise), so a hold an agent takes
/// meanwhile is never undone.
pub fn opening_patch(resource_version: &str, now: Timestamp) -> Value {
    json!({
        "metadata": {"resourceVersion": resource_version},
        "status": {
            "conditions": [{
                "type": READINESS_GATE,
                "status": "True",
                "reason": REASON_OPENED,
                "message": "no ContainerRecreateRequest holds this pod",
                "lastTransitionTime": now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            }]
        }
    })
}

/// The patch that releases a pod held by request `holder`, which no longer exists. It applies
/// only to pod version `resource_version` (409 otherwise), so a hold a new request takes
/// meanwhile is never undone.
pub fn holder_gone_patch(holder: &GateHolder, resource_version: &str, now: Timestamp) -> Value {
    json!({
        "metadata": {"resourceVersion": resource_version},
        "status": {
            "conditions": [{
                "type": READINESS_GATE,
                "status": "True",
                "reason": REASON_HOLDER_GONE,
                "message": format!("released: ContainerRecreateRequest {holder}, which held the pod NotReady, was deleted before it finished"),
                "lastTransitionTime": now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            }]
        }
    })
}

/// The strategic merge patch on `pods/status` that sets the gate condition (other conditions,
/// merged by `type`, stay as they are). It applies only to pod version `resource_version`, the
/// one the change was decided on (409 otherwise: read the pod again and decide again), so a
/// release decided on an old version never undoes a newer request's hold.
pub fn gate_patch(
    ready: bool,
    holder: &GateHolder,
    resource_version: &str,
    now: Timestamp,
) -> Value {
    let (status, reason, message) = if ready {
        (
            "True",
            REASON_RELEASED,
            format!("released by ContainerRecreateRequest {holder}"),
        )
    } else {
        ("False", REASON_HELD, holder.message())
    };
    json!({
        "metadata": {"resourceVersion": resource_version},
        "status": {
            "conditions": [{
                "type": READINESS_GATE,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            }]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str) -> GateHolder {
        GateHolder::new("ns", name)
    }
    use k8s_openapi::api::core::v1::{PodReadinessGate, PodSpec, PodStatus};

    fn pod(gated: bool, condition: Option<(&str, &str)>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                readiness_gates: gated.then(|| {
                    vec![PodReadinessGate {
                        condition_type: READINESS_GATE.into(),
                    }]
                }),
                ..Default::default()
            }),
            status: Some(PodStatus {
                conditions: condition.map(|(status, message)| {
                    vec![
                        PodCondition {
                            type_: "Ready".into(),
                            status: "True".into(),
                            ..Default::default()
                        },
                        PodCondition {
                            type_: READINESS_GATE.into(),
                            status: status.into(),
                            message: Some(message.into()),
                            ..Default::default()
                        },
                    ]
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_gated_pod_without_the_condition_is_opened_once() {
        assert!(needs_opening(&pod(true, None)));
        assert!(!needs_opening(&pod(true, Some(("True", "")))));
        assert!(!needs_opening(&pod(true, Some(("False", "held")))));
        assert!(!needs_opening(&pod(false, None)));
        assert_eq!(
            opening_patch("5", Timestamp::UNIX_EPOCH)["status"]["conditions"][0]["status"],
            "True"
        );
        assert_eq!(
            opening_patch("5", Timestamp::UNIX_EPOCH)["metadata"]["resourceVersion"],
            "5"
        );
    }

    #[test]
    fn pod_without_gate_cannot_be_held() {
        assert_eq!(
            gate_change(&pod(false, None), false, &r("r")),
            GateChange::NotGated
        );
        assert_eq!(
            gate_change(&pod(false, None), true, &r("r")),
            GateChange::NotGated
        );
    }

    #[test]
    fn holding_writes_once() {
        assert_eq!(
            gate_change(&pod(true, Some(("True", "x"))), false, &r("r")),
            GateChange::Set { ready: false }
        );
        let held = pod(true, Some(("False", &r("r").message())));
        assert_eq!(gate_change(&held, false, &r("r")), GateChange::Unchanged);
        assert!(is_held_by(&held, &r("r")));
        assert!(!is_held_by(&held, &r("other")));
        assert_eq!(
            gate_change(&held, false, &r("other")),
            GateChange::Set { ready: false }
        );
    }

    #[test]
    fn releasing_writes_once() {
        let held = pod(true, Some(("False", &r("r").message())));
        assert_eq!(
            gate_change(&held, true, &r("r")),
            GateChange::Set { ready: true }
        );
        assert_eq!(
            gate_change(&pod(true, Some(("True", "x"))), true, &r("r")),
            GateChange::Unchanged
        );
        assert_eq!(
            gate_change(&pod(true, None), true, &r("r")),
            GateChange::Set { ready: true }
        );
    }

    #[test]
    fn one_request_never_releases_another_requests_hold() {
        let mut held = pod(true, Some(("False", &r("second").message())));
        held.status.as_mut().unwrap().conditions.as_mut().unwrap()[1].reason =
            Some(REASON_HELD.into());
        assert_eq!(
            gate_change(&held, true, &r("first")),
            GateChange::HeldByOther(r("second"))
        );
        assert_eq!(
            gate_change(&held, true, &r("second")),
            GateChange::Set { ready: true }
        );
        // Holding is taken over (the agent runs one request of a pod at a time).
        assert_eq!(
            gate_change(&held, false, &r("first")),
            GateChange::Set { ready: false }
        );
        // A False condition the coordinator did not write is not a request's hold.
        let foreign = pod(true, Some(("False", "maintenance")));
        assert_eq!(
            gate_change(&foreign, true, &r("first")),
            GateChange::Set { ready: true }
        );
    }

    #[test]
    fn the_holder_is_read_back_from_the_condition_the_coordinator_wrote() {
        let mut held = pod(true, Some(("False", &r("r").message())));
        assert_eq!(
            holder(&held),
            None,
            "no reason: not written by the coordinator"
        );
        let condition = |p: &mut Pod| {
            p.status.as_mut().unwrap().conditions.as_mut().unwrap()[1].reason =
                Some(REASON_HELD.into());
        };
        condition(&mut held);
        assert_eq!(holder(&held), Some(r("r")));

        let mut released = pod(true, Some(("True", &r("r").message())));
        condition(&mut released);
        assert_eq!(holder(&released), None);
        let mut garbled = pod(true, Some(("False", "held NotReady by someone")));
        condition(&mut garbled);
        assert_eq!(holder(&garbled), None);
        assert_eq!(holder(&pod(true, None)), None);

        let p = holder_gone_patch(&r("r"), "42", Timestamp::UNIX_EPOCH);
        assert_eq!(p["metadata"]["resourceVersion"], "42");
        assert_eq!(p["status"]["conditions"][0]["status"], "True");
        assert_eq!(p["status"]["conditions"][0]["reason"], REASON_HOLDER_GONE);
    }

    #[test]
    fn patch_names_the_request() {
        let p = gate_patch(false, &r("r"), "41", Timestamp::UNIX_EPOCH);
        assert_eq!(p["metadata"]["resourceVersion"], "41");
        let c = &p["status"]["conditions"][0];
        assert_eq!(c["type"], READINESS_GATE);
        assert_eq!(c["status"], "False");
        assert_eq!(c["reason"], REASON_HELD);
        assert_eq!(
            c["message"],
            "held NotReady by ContainerRecreateRequest ns/r"
        );
        assert_eq!(c["lastTransitionTime"], "1970-01-01T00:00:00Z");
        let p = gate_patch(true, &r("r"), "41", Timestamp::UNIX_EPOCH);
        assert_eq!(p["status"]["conditions"][0]["status"], "True");
    }

    #[test]
    fn the_holder_reads_back_exactly_what_was_written() {
        let holder = GateHolder::new("default", "db-restart-db-0-abcde");
        assert_eq!(GateHolder::from_message(&holder.message()), Some(holder));
        for foreign in [
            "",
            "held NotReady by someone",
            "held NotReady by ContainerRecreateRequest ns",
            "held NotReady by ContainerRecreateRequest /r",
            "held NotReady by ContainerRecreateRequest ns/",
        ] {
            assert_eq!(GateHolder::from_message(foreign), None, "{foreign:?}");
        }
    }
}
