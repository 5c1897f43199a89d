//! `ScaleDown`: scale a StatefulSet down one ordinal at a time, highest first, running the
//! application's own decommission command in each leaving pod (through the agent on its node)
//! before `spec.replicas` is lowered, so the data of the pods that leave is moved first.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, ExecAction};
use crate::validation::{DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, MAX_DURATION_SECONDS};

/// Most ordinals a ScaleDown removes (its `replicas` may be at most this far below the
/// StatefulSet's); also bounds `status.removed`.
pub const MAX_SCALEDOWN_STEPS: usize = 1000;
/// Output of a command kept in status (the tail, cut on a character boundary).
pub const MAX_EXEC_OUTPUT_CHARS: usize = 2048;
/// Default seconds each command may run (`spec.timeoutSeconds`).
pub const DEFAULT_EXEC_TIMEOUT_SECONDS: i64 = 300;
/// Default seconds between two runs of the status command (`spec.statusPeriodSeconds`).
pub const DEFAULT_STATUS_PERIOD_SECONDS: i64 = 10;
/// Default seconds without progress before `Stalled` (`spec.stallTimeoutSeconds`).
pub const DEFAULT_STALL_TIMEOUT_SECONDS: i64 = 600;
/// Exit code of the status command meaning "in progress" (`EX_TEMPFAIL`); 0 means done, any
/// other code means the decommission failed.
pub const STATUS_IN_PROGRESS_EXIT_CODE: i32 = 75;

/// The environment variables every command gets (set through `env`, which the image needs).
pub const ENV_ORDINAL: &str = "RELAUNCH_ORDINAL";
pub const ENV_POD_NAME: &str = "RELAUNCH_POD_NAME";
pub const ENV_STATEFULSET: &str = "RELAUNCH_STATEFULSET";
pub const ENV_NAMESPACE: &str = "RELAUNCH_NAMESPACE";
pub const ENV_SERVICE: &str = "RELAUNCH_SERVICE";
pub const ENV_REMAINING: &str = "RELAUNCH_REMAINING";
pub const ENV_REPLICAS_AFTER: &str = "RELAUNCH_REPLICAS_AFTER";

/// Condition types of a ScaleDown.
pub const SCALEDOWN_DECOMMISSIONING: &str = "Decommissioning";
pub const SCALEDOWN_STALLED: &str = "Stalled";
pub const SCALEDOWN_WAITING_FOR_POD_GONE: &str = "WaitingForPodGone";
pub const SCALEDOWN_BLOCKED: &str = "Blocked";

/// The fields of a ScaleDown's spec fixed at creation (CEL paths below `self`, optional?).
/// Only `replicas` stays editable: raising it while a pod leaves is a scale-up.
const FIXED_SCALEDOWN_FIELDS: [(&str, bool); 11] = [
    ("statefulSetName", false),
    ("container", true),
    ("decommission", false),
    ("statusCheck", true),
    ("precheck", true),
    ("cancel", true),
    ("timeoutSeconds", true),
    ("statusPeriodSeconds", true),
    ("stallTimeoutSeconds", true),
    ("claimPolicy", true),
    ("allowScaleToZero", true),
];

fn scaledown_spec_rules() -> serde_json::Value {
    let mut rules: Vec<serde_json::Value> = FIXED_SCALEDOWN_FIELDS
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
                "message": format!("spec.{field} cannot be changed once the ScaleDown is created; only spec.replicas can"),
                "fieldPath": format!(".{field}"),
            })
        })
        .collect();
    rules.push(serde_json::json!({
        "rule": "self.replicas > 0 || (has(self.allowScaleToZero) && self.allowScaleToZero)",
        "message": "scaling to 0 replicas removes every member; set allowScaleToZero: true to mean it",
        "fieldPath": ".replicas",
    }));
    serde_json::Value::Array(rules)
}

/// Scale a StatefulSet down to `replicas`, decommissioning each leaving pod first.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "relaunch.dev",
    version = "v1alpha1",
    kind = "ScaleDown",
    plural = "scaledowns",
    singular = "scaledown",
    shortname = "sd",
    namespaced,
    status = "ScaleDownStatus",
    printcolumn = r#"{"name":"StatefulSet","type":"string","jsonPath":".spec.statefulSetName"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Leaving","type":"string","jsonPath":".status.current.podName"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.message"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = scaledown_spec_rules()))]
pub struct ScaleDownSpec {
    /// The StatefulSet to scale down, in the ScaleDown's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub stateful_set_name: String,
    /// The replicas to end at. The only field that may change after creation: raising it while
    /// a pod is leaving is a scale-up (the cancel command runs, if there is one).
    #[schemars(extend("minimum" = 0, "maximum" = 1_000_000))]
    pub replicas: i32,
    /// The container the commands run in (default: the pod's first container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub container: Option<String>,
    /// Run in the leaving pod; moves its data to the remaining members. Idempotent: it is run
    /// again after any crash. Exit 0: started (with `statusCheck`) or done; otherwise failed.
    pub decommission: ExecAction,
    /// Run in the leaving pod every `statusPeriodSeconds` after `decommission` succeeded:
    /// exit 0 = done, exit 75 = in progress (the last line of its output is the progress),
    /// anything else = failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_check: Option<ExecAction>,
    /// Run in a healthy remaining member before each ordinal leaves; a failure changes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precheck: Option<ExecAction>,
    /// Run in the leaving pod when a scale-up arrives while it is leaving; the pod then stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<ExecAction>,
    /// Seconds each command may run (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 1, "maximum" = MAX_DURATION_SECONDS))]
    pub timeout_seconds: Option<i64>,
    /// Seconds between two runs of `statusCheck` (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 1, "maximum" = 3600))]
    pub status_period_seconds: Option<i64>,
    /// Seconds without new progress before the `Stalled` condition (default 600). A stall is
    /// reported, not a failure: the ScaleDown keeps waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 1, "maximum" = MAX_DURATION_SECONDS))]
    pub stall_timeout_seconds: Option<i64>,
    /// What happens to a removed pod's claims: `Retain` (default) or `Delete` (UID precondition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_policy: Option<ClaimPolicy>,
    /// Allow `replicas: 0`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_scale_to_zero: bool,
}

impl ScaleDownSpec {
    pub fn timeout_seconds(&self) -> i64 {
        self.timeout_seconds.unwrap_or(DEFAULT_EXEC_TIMEOUT_SECONDS)
    }
    pub fn status_period_seconds(&self) -> i64 {
        self.status_period_seconds
            .unwrap_or(DEFAULT_STATUS_PERIOD_SECONDS)
    }
    pub fn stall_timeout_seconds(&self) -> i64 {
        self.stall_timeout_seconds
            .unwrap_or(DEFAULT_STALL_TIMEOUT_SECONDS)
    }
    pub fn claim_policy(&self) -> ClaimPolicy {
        self.claim_policy.unwrap_or_default()
    }
}

/// What happens to the claims of a pod that left.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ClaimPolicy {
    #[default]
    Retain,
    Delete,
}

/// Where a ScaleDown is.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ScaleDownPhase {
    /// Not started (waiting for the StatefulSet, or not yet seen by the coordinator).
    #[default]
    Pending,
    /// Removing ordinals; the conditions say which step.
    Running,
    Succeeded,
    /// Stopped: the message says why; what was not done yet is untouched.
    Failed,
    /// A scale-up while a pod was leaving ran the cancel command; the pod stays.
    Cancelled,
    /// A phase of a newer release.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

impl ScaleDownPhase {
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// What a ScaleDown has done and is doing.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDownStatus {
    #[serde(default)]
    pub phase: ScaleDownPhase,
    /// The StatefulSet's replicas when the ScaleDown started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_replicas: Option<i32>,
    /// The StatefulSet's replicas relaunch expects: it lowers them only from this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_replicas: Option<i32>,
    /// The pod leaving now, recorded before its first command runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<LeavingPod>,
    /// The command the agent on `exec.nodeName` is asked to run (one at a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecTask>,
    /// The status command's last progress value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// When progress last changed (or the current step began).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_time: Option<Time>,
    /// Ordinals removed so far, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<i32>,
    /// The claims of the removed pods (their data was handed off: never drained).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_claims: Vec<ClaimRef>,
    /// Numbers the commands (`exec.id`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exec_sequence: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl ScaleDownStatus {
    /// The condition of `type_`, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
    /// Whether the condition of `type_` is True.
    pub fn is_true(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }
}

/// The pod leaving now: the intent, recorded before the first command.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeavingPod {
    pub ordinal: i32,
    pub pod_name: String,
    #[serde(rename = "podUID")]
    pub pod_uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Its claims (from the volumeClaimTemplates), with their UIDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<ClaimRef>,
    #[serde(default)]
    pub step: LeavingStep,
    /// The decommission command succeeded (and the status command said done, if there is one).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub decommissioned: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
}

/// A PersistentVolumeClaim by name and UID.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ClaimRef {
    pub name: String,
    pub uid: String,
}

/// The step of the leaving pod.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum LeavingStep {
    /// The decommission (then the status) command runs.
    #[default]
    Decommissioning,
    /// A scale-up arrived: the cancel command runs.
    Cancelling,
    /// `spec.replicas` is being lowered by one (conditionally).
    Lowering,
    /// Waiting for the pod's UID to be gone.
    WaitingForPodGone,
    /// The claims are being handled (Retain or Delete).
    Claims,
    /// A scale-up without a cancel command kept the ordinal: the pod finished leaving, and now
    /// its claims (with `claimPolicy: Delete`) and then the pod itself are deleted (UID
    /// preconditions) so that the StatefulSet recreates it; with `Delete`, on a new, empty volume.
    Returning,
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// What a command is for.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ExecPurpose {
    Precheck,
    #[default]
    Decommission,
    StatusCheck,
    Cancel,
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// A command the coordinator asks the agent on `nodeName` to run in `podName`'s container
/// (CRI ExecSync); the agent runs it while `result` is empty and reports the result to the
/// coordinator, which writes it here.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecTask {
    /// Unique within the ScaleDown (`<sequence>-<purpose>-<ordinal>`).
    pub id: String,
    pub purpose: ExecPurpose,
    pub pod_name: String,
    #[serde(rename = "podUID")]
    pub pod_uid: String,
    pub node_name: String,
    pub container: String,
    /// The command as run, the environment first (`env NAME=value ... command...`).
    pub command: Vec<String>,
    pub timeout_seconds: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ExecResult>,
}

/// How a command ended.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecResult {
    /// The command's exit code; none when it could not run (the message says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The tail of its stdout and stderr, or why it could not run.
    #[serde(default)]
    pub output: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_time: Option<Time>,
}

impl ExecResult {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// The last `max_chars` characters of `text`.
pub fn tail_chars(text: &str, max_chars: usize) -> String {
    let count = text.chars().count();
    text.chars().skip(count.saturating_sub(max_chars)).collect()
}

/// `spec.ordinals.start` of a StatefulSet spec, 0 when unset.
pub fn ordinal_start(spec: Option<&k8s_openapi::api::apps::v1::StatefulSetSpec>) -> i32 {
    spec.and_then(|s| s.ordinals.as_ref())
        .and_then(|o| o.start)
        .unwrap_or(0)
}

/// Why a ScaleDown's spec is refused (the same rules as the CRD schema).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidScaleDown {
    pub field: String,
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> InvalidScaleDown {
    InvalidScaleDown {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Checks `spec` as the CRD schema does (for objects that did not go through it, and for the
/// CLI before it creates one).
pub fn validate_scaledown(spec: &ScaleDownSpec) -> Result<(), InvalidScaleDown> {
    use crate::validation::{
        MAX_COMMAND_ARG_LENGTH, MAX_COMMAND_ARGS, is_dns_label, is_dns_subdomain,
    };
    if spec.stateful_set_name.is_empty() || !is_dns_subdomain(&spec.stateful_set_name) {
        return Err(invalid(
            "spec.statefulSetName",
            "must be a StatefulSet name (a DNS subdomain)",
        ));
    }
    if spec.replicas < 0 {
        return Err(invalid("spec.replicas", "must be 0 or more"));
    }
    if spec.replicas == 0 && !spec.allow_scale_to_zero {
        return Err(invalid(
            "spec.replicas",
            "scaling to 0 replicas removes every member; set allowScaleToZero: true to mean it",
        ));
    }
    if let Some(c) = &spec.container
        && !is_dns_label(c)
    {
        return Err(invalid(
            "spec.container",
            "must be a container name (a DNS label)",
        ));
    }
    let commands = [
        ("spec.decommission.command", Some(&spec.decommission)),
        ("spec.statusCheck.command", spec.status_check.as_ref()),
        ("spec.precheck.command", spec.precheck.as_ref()),
        ("spec.cancel.command", spec.cancel.as_ref()),
    ];
    for (field, action) in commands {
        let Some(action) = action else { continue };
        if action.command.is_empty() {
            return Err(invalid(field, "must name a command"));
        }
        if action.command.len() > MAX_COMMAND_ARGS {
            return Err(invalid(
                field,
                format!("at most {MAX_COMMAND_ARGS} arguments"),
            ));
        }
        if action
            .command
            .iter()
            .any(|a| a.len() > MAX_COMMAND_ARG_LENGTH)
        {
            return Err(invalid(
                field,
                format!("each argument at most {MAX_COMMAND_ARG_LENGTH} bytes"),
            ));
        }
    }
    let ranges = [
        (
            "spec.timeoutSeconds",
            spec.timeout_seconds,
            MAX_DURATION_SECONDS,
        ),
        ("spec.statusPeriodSeconds", spec.status_period_seconds, 3600),
        (
            "spec.stallTimeoutSeconds",
            spec.stall_timeout_seconds,
            MAX_DURATION_SECONDS,
        ),
    ];
    for (field, value, max) in ranges {
        if let Some(v) = value
            && !(1..=max).contains(&v)
        {
            return Err(invalid(field, format!("must be between 1 and {max}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ScaleDownSpec {
        ScaleDownSpec {
            stateful_set_name: "store".into(),
            replicas: 1,
            decommission: ExecAction {
                command: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_plain_spec_is_valid() {
        assert_eq!(validate_scaledown(&spec()), Ok(()));
    }

    #[test]
    fn scale_to_zero_needs_allow() {
        let mut s = spec();
        s.replicas = 0;
        let e = validate_scaledown(&s).unwrap_err();
        assert_eq!(e.field, "spec.replicas");
        assert!(e.message.contains("allowScaleToZero"), "{e}");
        s.allow_scale_to_zero = true;
        assert_eq!(validate_scaledown(&s), Ok(()));
        s.replicas = -1;
        assert_eq!(validate_scaledown(&s).unwrap_err().field, "spec.replicas");
    }

    #[test]
    fn commands_are_bounded() {
        let mut s = spec();
        s.decommission.command.clear();
        assert_eq!(
            validate_scaledown(&s).unwrap_err().field,
            "spec.decommission.command"
        );
        let mut s = spec();
        s.cancel = Some(ExecAction {
            command: vec!["x".into(); 33],
        });
        assert_eq!(
            validate_scaledown(&s).unwrap_err().field,
            "spec.cancel.command"
        );
        let mut s = spec();
        s.status_check = Some(ExecAction {
            command: vec!["x".repeat(1025)],
        });
        assert_eq!(
            validate_scaledown(&s).unwrap_err().field,
            "spec.statusCheck.command"
        );
        let mut s = spec();
        s.timeout_seconds = Some(0);
        assert_eq!(
            validate_scaledown(&s).unwrap_err().field,
            "spec.timeoutSeconds"
        );
    }

    #[test]
    fn tails_are_cut_on_characters() {
        assert_eq!(tail_chars("héllo", 3), "llo");
        assert_eq!(tail_chars("hé", 5), "hé");
        assert_eq!(tail_chars("aé", 1), "é");
    }

    #[test]
    fn unknown_phases_deserialize() {
        let p: ScaleDownPhase = serde_json::from_value(serde_json::json!("Draining")).unwrap();
        assert_eq!(p, ScaleDownPhase::Unknown);
        assert!(!p.is_finished());
    }
}
