//! `RollingRestart`: restart the pods of a whole workload in place, batch by batch.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, ContainerRecreateRequestStrategy, ShutdownAction, WorkloadKind};
use crate::crr::shutdown_rules;
use crate::validation::{
    DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, MAX_CONTAINERS, MAX_DURATION_SECONDS,
    MAX_ROLE_KEY_LENGTH, MAX_ROLE_VALUES, MAX_UNAVAILABLE_PERCENT_PATTERN,
};

/// The fields of a RollingRestart's spec that stay editable while it runs: how fast it goes and
/// whether it goes on. Everything else (what is restarted, and how) is fixed at creation.
pub const EDITABLE_ROLLOUT_FIELDS: [&str; 7] = [
    "spec.abort",
    "spec.strategy.paused",
    "spec.strategy.maxUnavailable",
    "spec.strategy.minReadySeconds",
    "spec.strategy.maxFailures",
    "spec.strategy.failurePolicy",
    "spec.strategy.respectPodDisruptionBudgets",
];

/// The fields of a RollingRestart's spec fixed at creation, as CEL paths below `self` (the
/// spec) and whether the field is optional.
const FIXED_ROLLOUT_FIELDS: [(&str, bool); 7] = [
    ("target", false),
    ("containers", true),
    ("shutdown", true),
    ("recreateStrategy", true),
    ("activeDeadlineSeconds", true),
    ("strategy.partition", true),
    ("strategy.order", true),
];

/// The transition rules that keep [`FIXED_ROLLOUT_FIELDS`] as they were created, one per field
/// so that the refusal names it.
fn rollout_spec_rules() -> serde_json::Value {
    let editable = EDITABLE_ROLLOUT_FIELDS.join(", ");
    let rules: Vec<serde_json::Value> = FIXED_ROLLOUT_FIELDS
        .iter()
        .map(|(field, optional)| {
            let rule = if *optional {
                format!(
                    "has(self.{field}) == has(oldSelf.{field}) && (!has(self.{field}) || self.{field} == oldSelf.{field})"
                )
            } else {
                format!("self.{field} == oldSelf.{field}")
            };
            serde_json::json!({
                "rule": rule,
                "message": format!("spec.{field} cannot be changed once the rollout is created; only {editable} can"),
                "fieldPath": format!(".{field}"),
            })
        })
        .collect();
    serde_json::Value::Array(rules)
}

/// Restart the pods of a workload (or of a pod selector) in place, within a disruption budget.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "relaunch.dev",
    version = "v1alpha1",
    kind = "RollingRestart",
    plural = "rollingrestarts",
    singular = "rollingrestart",
    shortname = "rr",
    namespaced,
    status = "RollingRestartStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".status.target"}"#,
    printcolumn = r#"{"name":"Restarted","type":"integer","jsonPath":".status.restarted"}"#,
    printcolumn = r#"{"name":"Total","type":"integer","jsonPath":".status.total"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.message"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = rollout_spec_rules()))]
pub struct RollingRestartSpec {
    pub target: RolloutTarget,
    /// Containers to restart in each pod, each named once; default: all regular containers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_CONTAINERS), inner(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub containers: Vec<String>,
    /// Graceful shutdown actions per container, passed to each pod's ContainerRecreateRequest;
    /// at most one per container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_CONTAINERS))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["container"]))]
    pub shutdown: Vec<ContainerShutdown>,
    /// Recreate strategy passed to each ContainerRecreateRequest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recreate_strategy: Option<ContainerRecreateRequestStrategy>,
    /// Each pod's ContainerRecreateRequest fails when it has not finished this many seconds after
    /// it was created (e.g. a container that never becomes ready again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 1, "maximum" = MAX_DURATION_SECONDS))]
    pub active_deadline_seconds: Option<i64>,
    #[serde(default)]
    pub strategy: RolloutStrategy,
    /// Stop for good: no new batches; the rollout ends Failed ("aborted").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub abort: bool,
}

/// What to restart: a workload (resolved through its selector) or a pod selector.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.workloadRef) || has(self.selector)", "message": "needs a workloadRef (kind and name) or a pod selector"},
    {"rule": "!has(self.workloadRef) || !has(self.selector)", "message": "takes a workloadRef or a selector, not both"},
]))]
pub struct RolloutTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_ref: Option<WorkloadRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// A StatefulSet, Deployment, DaemonSet or ReplicaSet in the rollout's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    pub kind: WorkloadKind,
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
}

/// A shutdown action for one container.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = shutdown_rules()))]
pub struct ContainerShutdown {
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub container: String,
    #[serde(flatten)]
    pub action: ShutdownAction,
}

/// How pods are chosen and paced.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStrategy {
    /// Most target pods unavailable at once (count or percent of the targets, default 1); pods
    /// already unavailable for other reasons count against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": format!("string(self) == self ? self.matches('{MAX_UNAVAILABLE_PERCENT_PATTERN}') : self >= 1"),
        "message": "must be a count of at least 1 or a percentage between 1% and 100% such as \"25%\"",
    }]))]
    pub max_unavailable: Option<IntOrString>,
    /// StatefulSet ordinals below this are left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 0))]
    pub partition: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<RolloutOrder>,
    /// Seconds a restarted batch must stay ready before the next batch starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 0, "maximum" = MAX_DURATION_SECONDS))]
    pub min_ready_seconds: Option<i32>,
    /// Never start a batch a PodDisruptionBudget would not allow (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respect_pod_disruption_budgets: Option<bool>,
    /// What a failed pod restart does to the rollout (default Pause).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_policy: Option<RolloutFailurePolicy>,
    /// Failed pods tolerated before `failurePolicy` applies (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 0))]
    pub max_failures: Option<i32>,
    /// No new batches while true; the controller sets it when failures pause the rollout.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

/// The order pods are restarted in.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutOrder {
    /// `OrdinalDescending` (default, the StatefulSet convention) or `OrdinalAscending`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordinal: Option<OrdinalOrder>,
    /// Role-aware order: pods whose label `key` has one of `first` go first, one of `last` go
    /// last (e.g. Patroni `role`: first `replica`, last `primary`/`master`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<RoleOrder>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OrdinalOrder {
    #[default]
    OrdinalDescending,
    OrdinalAscending,
    /// An order this release does not know (a newer release's, see
    /// [`crate::FailurePolicy`]); a rollout with it fails with a message.
    #[serde(other, skip_serializing)]
    #[schemars(skip)]
    Unknown,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleOrder {
    #[schemars(length(min = 1, max = MAX_ROLE_KEY_LENGTH))]
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ROLE_VALUES), inner(length(max = 63)))]
    pub first: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ROLE_VALUES), inner(length(max = 63)))]
    pub last: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RolloutFailurePolicy {
    #[default]
    Pause,
    Continue,
    Abort,
    /// A policy this release does not know (a newer release's, see [`crate::FailurePolicy`]);
    /// a rollout with it fails with a message rather than guess.
    #[serde(other, skip_serializing)]
    #[schemars(skip)]
    Unknown,
}

/// Condition type on a RollingRestart: whether it is moving (`True`) or has stopped, and why.
pub const CONDITION_PROGRESSING: &str = "Progressing";
/// Condition type on a RollingRestart: whether something keeps it from starting its next batch.
pub const CONDITION_BLOCKED: &str = "Blocked";

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RolloutPhase {
    #[default]
    Pending,
    Progressing,
    Paused,
    Succeeded,
    Failed,
    /// A phase this release does not know, written by a newer coordinator (see
    /// [`crate::FailurePolicy`]): this release leaves such a rollout alone (it could not write
    /// its status back).
    #[serde(other, skip_serializing)]
    #[schemars(skip)]
    Unknown,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollingRestartStatus {
    #[serde(default)]
    pub phase: RolloutPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Kind/name` or `selector`, for printing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default)]
    pub total: i32,
    #[serde(default)]
    pub restarted: i32,
    #[serde(default)]
    pub failed: i32,
    #[serde(default)]
    pub in_progress: i32,
    /// Number of batches started so far.
    #[serde(default)]
    pub batches: i32,
    /// Pods of the batch in progress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub current_batch: Vec<String>,
    /// Per-pod results, most recent last (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodRestartResult>,
    /// Failures the user has acknowledged by resuming a paused rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_failures: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The outcome of one pod's restart.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodRestartResult {
    pub name: String,
    /// The ContainerRecreateRequest that restarted it.
    pub request: String,
    pub phase: super::RecreatePhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
