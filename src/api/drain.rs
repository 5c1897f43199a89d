//! `Drain`: the record of one drain pod run for a StatefulSet ordinal that was removed without a
//! ScaleDown (someone lowered `replicas` directly) when the StatefulSet carries a drain pod
//! template. The coordinator creates it — the intent, naming the orphaned claims by UID — before
//! the first drain pod, and records each step in its status, so that a crash between two steps
//! resumes. Users read it (and delete a failed one to try again); they do not create it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ClaimRef, Condition};

/// Annotation on a StatefulSet: a Pod (JSON or YAML) run for each ordinal removed without a
/// ScaleDown, with that ordinal's claims mounted, to move its data away.
pub const ANNOTATION_DRAIN_POD_TEMPLATE: &str = "relaunch.dev/drain-pod-template";
/// The same, as statefulset-scaledown-controller spells it (accepted so its users can switch).
pub const ANNOTATION_LUKSA_DRAIN_POD_TEMPLATE: &str =
    "statefulsets.kubernetes.io/scaledown-pod-template";
/// Annotation on a StatefulSet: `"true"` lets a scale-up that brings an ordinal back abort its
/// drain (otherwise the scale-up waits for the drain to end).
pub const ANNOTATION_DRAIN_ABORTABLE: &str = "relaunch.dev/drain-abortable";
/// Annotation on a StatefulSet: `Delete` (default) or `Retain`: the claims after a drain succeeded.
pub const ANNOTATION_DRAIN_CLAIM_POLICY: &str = "relaunch.dev/drain-claim-policy";
/// Label on a drain pod: the name of its Drain.
pub const LABEL_DRAIN: &str = "relaunch.dev/drain";
/// Label on a drain pod: the attempt (1, 2, 3).
pub const LABEL_DRAIN_ATTEMPT: &str = "relaunch.dev/drain-attempt";
/// Attempts before a drain fails.
pub const DRAIN_ATTEMPTS: i32 = 3;
/// Condition type of a Drain whose attempts all failed.
pub const DRAIN_FAILED: &str = "DrainFailed";

/// One drain of one removed ordinal's claims.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "relaunch.dev",
    version = "v1alpha1",
    kind = "Drain",
    plural = "drains",
    singular = "drain",
    namespaced,
    status = "DrainStatus",
    printcolumn = r#"{"name":"StatefulSet","type":"string","jsonPath":".spec.statefulSetName"}"#,
    printcolumn = r#"{"name":"Ordinal","type":"integer","jsonPath":".spec.ordinal"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Attempts","type":"integer","jsonPath":".status.attempts"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DrainSpec {
    pub stateful_set_name: String,
    #[serde(rename = "statefulSetUID")]
    pub stateful_set_uid: String,
    pub ordinal: i32,
    /// The orphaned claims, by name and UID (only these are mounted and deleted).
    pub claims: Vec<ClaimRef>,
}

/// Where a Drain is.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DrainPhase {
    #[default]
    Pending,
    /// A drain pod runs (or the next attempt waits for its back-off).
    Running,
    /// The drain pod succeeded; claims handled as the policy says; the pod deleted.
    Succeeded,
    /// Every attempt failed, or the StatefulSet went away: the claims are kept.
    Failed,
    /// A scale-up brought the ordinal back and the drain was abortable: the claims are kept.
    Aborted,
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

impl DrainPhase {
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Aborted)
    }
}

/// The step after the drain pod ended.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DrainStep {
    /// The drain pod runs or is due.
    #[default]
    Draining,
    /// It succeeded: the claims are being deleted (claim policy Delete, UID preconditions).
    DeletingClaims,
    /// Then the drain pod is being deleted (after success, failure or an abort).
    DeletingPod,
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// What a Drain has done.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainStatus {
    #[serde(default)]
    pub phase: DrainPhase,
    #[serde(default)]
    pub step: DrainStep,
    /// Attempts started (a drain pod created for each).
    #[serde(default)]
    pub attempts: i32,
    /// The current attempt's drain pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, rename = "podUID", skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// When the last attempt ended (the next one waits for its back-off from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_end: Option<Time>,
    /// The phase the Drain ends in once the drain pod is deleted (step DeletingPod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ending: Option<DrainPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}
