//! The workload kinds a RollingRestart can target.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A kind of workload a rollout can target (`spec.target.workloadRef.kind`), all in `apps/v1`.
///
/// Any other kind still deserialises, as [`WorkloadKind::Unknown`]: a stored rollout with a kind
/// this version does not know (written under a newer CRD, or before the schema listed the kinds)
/// then fails validation with a message instead of breaking the watch of every rollout.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum WorkloadKind {
    StatefulSet,
    Deployment,
    DaemonSet,
    ReplicaSet,
    /// A kind relaunch cannot roll out, as written.
    Unknown(String),
}

impl WorkloadKind {
    /// Every kind a rollout can target.
    pub const ALL: [WorkloadKind; 4] = [
        WorkloadKind::StatefulSet,
        WorkloadKind::Deployment,
        WorkloadKind::DaemonSet,
        WorkloadKind::ReplicaSet,
    ];

    /// The kind as in `workloadRef.kind`.
    pub fn as_str(&self) -> &str {
        match self {
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::Unknown(kind) => kind,
        }
    }

    /// The resource's singular name, as kubectl prints it (`statefulset`).
    pub fn singular(&self) -> String {
        self.as_str().to_ascii_lowercase()
    }

    /// The resource (plural) name (`statefulsets`).
    pub fn plural(&self) -> String {
        format!("{}s", self.singular())
    }

    /// The resource's short name (`sts`), for the kinds relaunch knows.
    pub fn short_name(&self) -> Option<&'static str> {
        match self {
            WorkloadKind::StatefulSet => Some("sts"),
            WorkloadKind::Deployment => Some("deploy"),
            WorkloadKind::DaemonSet => Some("ds"),
            WorkloadKind::ReplicaSet => Some("rs"),
            WorkloadKind::Unknown(_) => None,
        }
    }

    /// Whether a rollout can target this kind.
    pub fn is_known(&self) -> bool {
        !matches!(self, WorkloadKind::Unknown(_))
    }
}

/// No kind at all (an empty string, as a missing kind reads): not one a rollout can target.
impl Default for WorkloadKind {
    fn default() -> Self {
        WorkloadKind::Unknown(String::new())
    }
}

impl From<String> for WorkloadKind {
    fn from(kind: String) -> Self {
        WorkloadKind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind)
            .unwrap_or(WorkloadKind::Unknown(kind))
    }
}

impl From<&str> for WorkloadKind {
    fn from(kind: &str) -> Self {
        WorkloadKind::from(kind.to_string())
    }
}

impl From<WorkloadKind> for String {
    fn from(kind: WorkloadKind) -> Self {
        match kind {
            WorkloadKind::Unknown(kind) => kind,
            known => known.as_str().to_string(),
        }
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl JsonSchema for WorkloadKind {
    fn schema_name() -> Cow<'static, str> {
        "WorkloadKind".into()
    }

    fn inline_schema() -> bool {
        true
    }

    // A string limited to the known kinds: the API server refuses other kinds when a rollout
    // is created; `Unknown` only covers objects stored under another schema.
    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        let kinds: Vec<&str> = WorkloadKind::ALL.iter().map(WorkloadKind::as_str).collect();
        json_schema!({
            "type": "string",
            "enum": kinds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in WorkloadKind::ALL {
            let json = serde_json::to_value(&kind).unwrap();
            assert_eq!(json, serde_json::json!(kind.as_str()));
            assert_eq!(serde_json::from_value::<WorkloadKind>(json).unwrap(), kind);
        }
    }

    #[test]
    fn an_unknown_kind_still_deserialises_and_is_written_back_as_it_was() {
        let kind: WorkloadKind = serde_json::from_value(serde_json::json!("CronJob")).unwrap();
        assert_eq!(kind, WorkloadKind::Unknown("CronJob".into()));
        assert!(!kind.is_known());
        assert_eq!(
            serde_json::to_value(&kind).unwrap(),
            serde_json::json!("CronJob")
        );
        // Kinds are case-sensitive, as in Kubernetes.
        assert!(!WorkloadKind::from("statefulset").is_known());
    }

    #[test]
    fn resource_names_are_the_lowercase_kind() {
        assert_eq!(WorkloadKind::StatefulSet.singular(), "statefulset");
        assert_eq!(WorkloadKind::DaemonSet.plural(), "daemonsets");
        assert_eq!(WorkloadKind::Deployment.short_name(), Some("deploy"));
    }
}
