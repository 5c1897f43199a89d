//! `ContainerRecreateRequest` (`crr`): restart some containers of one pod in place.
//!
//! Field names follow OpenKruise's `apps.kruise.io/v1alpha1` ContainerRecreateRequest so its
//! users can move over by changing the group; differences are additions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{
    DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, HTTP_HEADER_NAME_PATTERN, MAX_COMMAND_ARG_LENGTH,
    MAX_COMMAND_ARGS, MAX_CONTAINERS, MAX_DURATION_SECONDS, MAX_HEADER_NAME_LENGTH,
    MAX_HEADER_VALUE_LENGTH, MAX_HEADERS, MAX_HTTP_PATH_LENGTH, MAX_TTL_SECONDS,
};

/// Restart containers of one pod in place: graceful shutdown, stop, and the kubelet brings them back.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "relaunch.dev",
    version = "v1alpha1",
    kind = "ContainerRecreateRequest",
    plural = "containerrecreaterequests",
    singular = "containerrecreaterequest",
    shortname = "crr",
    namespaced,
    status = "ContainerRecreateRequestStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".spec.podName"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".metadata.labels.relaunch\\.dev/node-name"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.message"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self == oldSelf",
    "message": "the spec of a ContainerRecreateRequest cannot be changed once it is created; delete it and create a new one",
}]))]
pub struct ContainerRecreateRequestSpec {
    /// Name of the pod, in the request's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub pod_name: String,
    /// Containers to recreate (regular containers or restartable init containers), in order,
    /// each named once.
    #[schemars(length(min = 1, max = MAX_CONTAINERS))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub containers: Vec<ContainerRecreateRequestContainer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<ContainerRecreateRequestStrategy>,
    /// Fail the whole request when it has not finished this many seconds after it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 1, "maximum" = MAX_DURATION_SECONDS))]
    pub active_deadline_seconds: Option<i64>,
    /// Delete the request this many seconds after it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 0, "maximum" = MAX_TTL_SECONDS))]
    pub ttl_seconds_after_finished: Option<i32>,
}

/// One container to recreate.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecreateRequestContainer {
    /// The container's name (a DNS label).
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub name: String,
    /// How to shut the application down gracefully; overrides the container's preStop hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown: Option<ShutdownAction>,
}

/// A graceful shutdown action: a command run in the container, or an HTTP GET to the pod.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = shutdown_rules()))]
pub struct ShutdownAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
}

/// A command run in the container (CRI `ExecSync`), e.g. `clickhouse-client -q "SYSTEM SHUTDOWN"`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecAction {
    #[schemars(length(min = 1, max = MAX_COMMAND_ARGS), inner(length(max = MAX_COMMAND_ARG_LENGTH)))]
    pub command: Vec<String>,
}

/// The schema's rules for a shutdown action (in a request's `containers[].shutdown` and a
/// rollout's `shutdown[]`): exactly one of `exec` and `httpGet`, as
/// [`crate::validation::check_shutdown`] checks.
pub(crate) fn shutdown_rules() -> serde_json::Value {
    serde_json::json!([
        {"rule": "!has(self.exec) || !has(self.httpGet)", "message": "set exec or httpGet, not both"},
        {"rule": "has(self.exec) || has(self.httpGet)", "message": "set exec or httpGet"},
    ])
}

/// An HTTP GET to the pod's IP on `port` (a number or a named container port).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.host)",
    "message": "host is not supported: the agent sends the GET to the pod's IP",
    "fieldPath": ".host",
}]))]
pub struct HttpGetAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_HTTP_PATH_LENGTH))]
    pub path: Option<String>,
    /// A port number (1-65535) or the name of one of the container's ports.
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "string(self) == self ? (self.matches('^[0-9]{1,5}$') ? int(self) >= 1 && int(self) <= 65535 : size(self) <= 15 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && self.matches('[a-z]')) : self >= 1 && self <= 65535",
        "message": "must be a port number between 1 and 65535 or the name of a container port (at most 15 lower-case letters, digits and '-', with a letter)",
    }]))]
    pub port: k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
    /// Not supported: a request that sets it is refused (the GET always goes to the pod's IP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub host: Option<String>,
    /// `HTTP` (default) or `HTTPS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["HTTP", "HTTPS"]))]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_HEADERS))]
    pub http_headers: Vec<HttpHeader>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct HttpHeader {
    #[schemars(length(min = 1, max = MAX_HEADER_NAME_LENGTH), regex(pattern = HTTP_HEADER_NAME_PATTERN))]
    pub name: String,
    #[schemars(length(max = MAX_HEADER_VALUE_LENGTH))]
    pub value: String,
}

/// How the containers are recreated.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecreateRequestStrategy {
    /// `Fail` (default): stop at the first container that fails. `Ignore`: go on with the rest;
    /// the request still ends Failed if any container failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_policy: Option<FailurePolicy>,
    /// Recreate the containers one after another, the next only once the previous is ready again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered_recreate: Option<bool>,
    /// Recreate a container even if it has not started since its last restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_recreate: Option<bool>,
    /// Grace for shutdown plus stop; defaults to the pod's `terminationGracePeriodSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 0, "maximum" = MAX_DURATION_SECONDS))]
    pub termination_grace_period_seconds: Option<i64>,
    /// Hold the pod NotReady (readiness gate `relaunch.dev/ready`) this long before shutting down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 0, "maximum" = MAX_DURATION_SECONDS))]
    pub unready_grace_period_seconds: Option<i64>,
    /// A recreated container must stay ready this long before it counts as done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 0, "maximum" = MAX_DURATION_SECONDS))]
    pub min_started_seconds: Option<i32>,
}

// Forward compatibility of the enums in requests: a value written by a newer release
// deserializes as `Unknown` (`#[serde(other)]`) instead of failing the whole object (which would
// stall every older reader's watch); `Unknown` is never serialized (an error, so it is never
// written back) and is not part of the CRD schema's `enum` (`#[schemars(skip)]`). (A plain
// comment: a doc comment here would become the CRD field's description.)
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FailurePolicy {
    #[default]
    Fail,
    Ignore,
    /// A policy this release does not know (a newer release's); requests with it are refused.
    #[serde(other, skip_serializing)]
    #[schemars(skip)]
    Unknown,
}

/// Whether the request worked.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum RecreatePhase {
    #[default]
    Pending,
    Recreating,
    Succeeded,
    Failed,
    /// A phase this release does not know, written by a newer release (see [`FailurePolicy`]).
    /// Not finished, but the agent does not act on it; it ranks above `Failed`, so nothing this
    /// release merges moves status back from it.
    #[serde(other, skip_serializing)]
    #[schemars(skip)]
    Unknown,
}

impl RecreatePhase {
    /// How far along a request in this phase is. Status only ever moves to a phase of greater
    /// progress (the coordinator's merge of reports relies on it); `Failed` counts as furthest
    /// of the phases this release knows, an `Unknown` one further still.
    pub fn progress(self) -> u8 {
        match self {
            RecreatePhase::Pending => 0,
            RecreatePhase::Recreating => 1,
            RecreatePhase::Succeeded => 2,
            RecreatePhase::Failed => 3,
            RecreatePhase::Unknown => 4,
        }
    }

    /// Whether this is a phase of a newer release that this one does not know.
    pub fn is_unknown(self) -> bool {
        self == RecreatePhase::Unknown
    }

    /// Whether this phase lies beyond `other` in the order a request moves through.
    pub fn is_after(self, other: RecreatePhase) -> bool {
        self.progress() > other.progress()
    }

    /// Whether the request ended, successfully or not.
    pub fn is_finished(self) -> bool {
        matches!(self, RecreatePhase::Succeeded | RecreatePhase::Failed)
    }

    /// The phase as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            RecreatePhase::Pending => "Pending",
            RecreatePhase::Recreating => "Recreating",
            RecreatePhase::Succeeded => "Succeeded",
            RecreatePhase::Failed => "Failed",
            RecreatePhase::Unknown => "Unknown",
        }
    }
}

/// Where one container's recreate is, in the order the steps happen.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum ContainerRecreatePhase {
    #[default]
    Pending,
    /// The pod is held NotReady for `unreadyGracePeriodSeconds`.
    Unready,
    /// The shutdown action or preStop hook runs.
    ShuttingDown,
    /// CRI `StopContainer` was called (the container ID being stopped is recorded first).
    Stopping,
    /// Waiting for the kubelet to start the new container.
    WaitingForRestart,
    /// The new container runs; waiting until it is ready for `minStartedSeconds`.
    WaitingForReady,
    Succeeded,
    Failed,
    /// A phase this release does not know, written by a newer release (see [`FailurePolicy`]);
    /// ranks above `Failed`, is not finished.
    #[serde(other, skip_serializing)]
    #[schemars(skip)]
    Unknown,
}

impl ContainerRecreatePhase {
    /// How far along a container in this phase is: the order the steps happen in, `Failed`
    /// counting as furthest of the phases this release knows, an `Unknown` one further still. Status only ever moves to a phase of greater progress.
    pub fn progress(self) -> u8 {
        match self {
            ContainerRecreatePhase::Pending => 0,
            ContainerRecreatePhase::Unready => 1,
            ContainerRecreatePhase::ShuttingDown => 2,
            ContainerRecreatePhase::Stopping => 3,
            ContainerRecreatePhase::WaitingForRestart => 4,
            ContainerRecreatePhase::WaitingForReady => 5,
            ContainerRecreatePhase::Succeeded => 6,
            ContainerRecreatePhase::Failed => 7,
            ContainerRecreatePhase::Unknown => 8,
        }
    }

    /// Whether this phase lies beyond `other` in the order the steps happen.
    pub fn is_after(self, other: ContainerRecreatePhase) -> bool {
        self.progress() > other.progress()
    }

    /// Whether the container's recreate ended, successfully or not.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            ContainerRecreatePhase::Succeeded | ContainerRecreatePhase::Failed
        )
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecreateRequestStatus {
    #[serde(default)]
    pub phase: RecreatePhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The `metadata.generation` the coordinator admitted (the request is valid for its pod and,
    /// with an exec action, exec is authorized). Agents act on a request only while this equals
    /// its `metadata.generation`; a refused request never gets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted_generation: Option<i64>,
    /// When an agent last reported on this request, to any coordinator replica (the
    /// coordinator's clock). Written with every status change a report causes, and on its own
    /// at most every quarter of the agent timeout, so that every replica sees the agent alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report_time: Option<MicroTime>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_recreate_states: Vec<ContainerRecreateState>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl ContainerRecreateRequestStatus {
    /// Whether the status holds a phase of a newer release (the request's or a container's):
    /// this release then leaves the status alone — it could not write it back.
    pub fn has_unknown(&self) -> bool {
        self.phase.is_unknown()
            || self
                .container_recreate_states
                .iter()
                .any(|c| c.phase == ContainerRecreatePhase::Unknown)
    }
}

/// Progress of one container.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecreateState {
    pub name: String,
    #[serde(default)]
    pub phase: ContainerRecreatePhase,
    /// The container that was (or is being) stopped, `containerd://<id>` as in pod status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_container_id: Option<String>,
    /// The container the kubelet started in its place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_container_id: Option<String>,
    /// restartCount of the new container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When each step began (and when the container finished).
    #[serde(default)]
    pub timestamps: StepTimestamps,
}

/// When each step of one container's recreate began; empty when the step did not happen.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepTimestamps {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unready: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Time>,
}

/// A status condition (the `metav1.Condition` shape).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_phases_progress_pending_recreating_succeeded_failed() {
        use RecreatePhase::*;
        let order = [Pending, Recreating, Succeeded, Failed];
        for (i, earlier) in order.iter().enumerate() {
            for later in &order[i + 1..] {
                assert!(later.is_after(*earlier), "{later:?} after {earlier:?}");
                assert!(!earlier.is_after(*later), "{earlier:?} not after {later:?}");
            }
            assert!(!earlier.is_after(*earlier));
        }
    }

    #[test]
    fn values_of_a_newer_release_deserialize_as_unknown_and_are_never_written_back() {
        use serde_json::json;
        let phase: RecreatePhase = serde_json::from_value(json!("Restarting")).unwrap();
        assert_eq!(phase, RecreatePhase::Unknown);
        assert!(!phase.is_finished() && phase.is_unknown());
        assert!(phase.is_after(RecreatePhase::Failed));
        let container: ContainerRecreatePhase = serde_json::from_value(json!("Draining")).unwrap();
        assert_eq!(container, ContainerRecreatePhase::Unknown);
        assert!(!container.is_finished());
        assert!(container.is_after(ContainerRecreatePhase::Failed));
        let policy: FailurePolicy = serde_json::from_value(json!("Retry")).unwrap();
        assert_eq!(policy, FailurePolicy::Unknown);
        // Known values still round-trip.
        assert_eq!(
            serde_json::from_value::<RecreatePhase>(json!("Failed")).unwrap(),
            RecreatePhase::Failed
        );
        assert_eq!(
            serde_json::to_value(ContainerRecreatePhase::Stopping).unwrap(),
            json!("Stopping")
        );
        // A whole status from a newer coordinator is read, not refused.
        let status: ContainerRecreateRequestStatus = serde_json::from_value(json!({
            "phase": "Restarting",
            "containerRecreateStates": [{"name": "db", "phase": "Draining"}],
        }))
        .unwrap();
        assert_eq!(status.phase, RecreatePhase::Unknown);
        assert_eq!(
            status.container_recreate_states[0].phase,
            ContainerRecreatePhase::Unknown
        );
        // Never written back.
        assert!(serde_json::to_value(RecreatePhase::Unknown).is_err());
        assert!(serde_json::to_value(ContainerRecreatePhase::Unknown).is_err());
        assert!(serde_json::to_value(FailurePolicy::Unknown).is_err());
        assert!(serde_json::to_value(&status).is_err());
        // A policy the agent does not know is refused, not guessed.
        let spec: ContainerRecreateRequestSpec = serde_json::from_value(json!({
            "podName": "p", "containers": [{"name": "db"}],
            "strategy": {"failurePolicy": "Retry"},
        }))
        .unwrap();
        assert_eq!(
            crate::validation::check_spec(&spec),
            Err(crate::validation::InvalidRequest::UnknownFailurePolicy)
        );
    }

    #[test]
    fn the_crd_schema_lists_only_the_known_values() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_string(&ContainerRecreateRequest::crd()).unwrap();
        assert!(!crd.contains("\"Unknown\""), "{crd}");
        assert!(crd.contains("WaitingForReady") && crd.contains("Ignore"));
        let crd = serde_json::to_string(&crate::RollingRestart::crd()).unwrap();
        assert!(!crd.contains("\"Unknown\""), "{crd}");
        assert!(
            crd.contains("OrdinalAscending") && crd.contains("Abort") && crd.contains("Paused")
        );
        // Never written back.
        assert!(serde_json::to_value(crate::RolloutPhase::Unknown).is_err());
        assert!(serde_json::to_value(crate::RolloutFailurePolicy::Unknown).is_err());
        assert!(serde_json::to_value(crate::OrdinalOrder::Unknown).is_err());
    }

    #[test]
    fn container_phases_progress_in_the_order_the_steps_happen() {
        use ContainerRecreatePhase::*;
        let order = [
            Pending,
            Unready,
            ShuttingDown,
            Stopping,
            WaitingForRestart,
            WaitingForReady,
            Succeeded,
            Failed,
        ];
        let progress: Vec<u8> = order.iter().map(|p| p.progress()).collect();
        assert_eq!(progress, (0..8).collect::<Vec<u8>>());
        for (i, earlier) in order.iter().enumerate() {
            for later in &order[i + 1..] {
                assert!(later.is_after(*earlier), "{later:?} after {earlier:?}");
                assert!(!earlier.is_after(*later), "{earlier:?} not after {later:?}");
            }
        }
    }
}
