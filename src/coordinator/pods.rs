//! The coordinator's own view of a pod: [`CachedPod`], the projection every controller's shared
//! cache holds, and [`PodFacts`], the few accessors the controllers read a pod through — the same
//! for a cached pod and for a full `Pod` read from the API (admission, reports), so one decision
//! function serves both and a test can hold them to the same answers.
//!
//! A `CachedPod` is deserialized straight from the watch's JSON: the fields it does not name
//! (volumes, env, resources, container statuses, ...) are skipped by the parser and never
//! allocated, and a cached pod costs a few hundred bytes instead of the ≈ 6 KiB of a pruned
//! `k8s_openapi` `Pod` (docs/performance.md).

use k8s_openapi::api::core::v1::{Pod, PodCondition, PodReadinessGate};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Serialize};

use relaunch_api::READINESS_GATE;
use relaunch_api::containers::is_native_sidecar;

/// What the controllers read of a pod: identity, labels (rollout and budget selectors, ordinal),
/// owner kinds (ordinal, ScaleDown ownership), deletion and resourceVersion (conditional
/// writes); node, grace period, readiness gates, the names of the containers that can be
/// recreated (regular containers and native sidecars); phase and the `Ready` and
/// `relaunch.dev/ready` conditions.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedPod {
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "null_as_default")]
    spec: CachedSpec,
    #[serde(default, deserialize_with = "null_as_default")]
    status: CachedStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct CachedSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    termination_grace_period_seconds: Option<i64>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    readiness_gates: Vec<PodReadinessGate>,
    #[serde(default, deserialize_with = "null_as_default")]
    containers: Vec<CachedContainer>,
    /// All init containers as read; [`CachedPod::prune`] keeps the native sidecars only.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    init_containers: Vec<CachedContainer>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct CachedContainer {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restart_policy: Option<String>,
}

impl CachedContainer {
    fn is_native_sidecar(&self) -> bool {
        self.restart_policy.as_deref() == Some("Always")
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct CachedStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    phase: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    conditions: Vec<PodCondition>,
}

/// A field the API may send as `null` reads as its default (as `k8s_openapi` reads it as `None`).
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

impl k8s_openapi::Resource for CachedPod {
    const API_VERSION: &'static str = <Pod as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <Pod as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <Pod as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <Pod as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str = <Pod as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for CachedPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl CachedPod {
    /// A pod made from metadata alone (what a guarded watch deletes an unreadable pod with).
    pub fn from_metadata(metadata: ObjectMeta) -> Self {
        Self {
            metadata,
            ..Default::default()
        }
    }

    /// Drops what the controllers never read and the parser still had to take: managed fields,
    /// annotations, finalizers, `generateName`; plain init containers; conditions other than
    /// `Ready` and `relaunch.dev/ready`, and of those the fields nothing reads.
    pub fn prune(&mut self) {
        let meta = &mut self.metadata;
        meta.managed_fields = None;
        meta.annotations = None;
        meta.finalizers = None;
        meta.generate_name = None;
        self.spec
            .init_containers
            .retain(CachedContainer::is_native_sidecar);
        self.spec.init_containers.shrink_to_fit();
        self.status
            .conditions
            .retain(|c| c.type_ == READINESS_GATE || c.type_ == "Ready");
        for c in &mut self.status.conditions {
            c.last_probe_time = None;
            if c.type_ == "Ready" {
                c.message = None;
                c.reason = None;
            }
        }
    }
}

/// The projection of a full pod, as the cache would hold it.
impl From<&Pod> for CachedPod {
    fn from(pod: &Pod) -> Self {
        let name_only = |c: &k8s_openapi::api::core::v1::Container| CachedContainer {
            name: c.name.clone(),
            restart_policy: c.restart_policy.clone(),
        };
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut cached = Self {
            metadata: pod.metadata.clone(),
            spec: CachedSpec {
                node_name: spec.and_then(|s| s.node_name.clone()),
                termination_grace_period_seconds: spec
                    .and_then(|s| s.termination_grace_period_seconds),
                readiness_gates: spec
                    .and_then(|s| s.readiness_gates.clone())
                    .unwrap_or_default(),
                containers: spec
                    .map(|s| s.containers.iter().map(name_only).collect())
                    .unwrap_or_default(),
                init_containers: spec
                    .and_then(|s| s.init_containers.as_ref())
                    .map(|c| c.iter().map(name_only).collect())
                    .unwrap_or_default(),
            },
            status: CachedStatus {
                phase: status.and_then(|s| s.phase.clone()),
                conditions: status
                    .and_then(|s| s.conditions.clone())
                    .unwrap_or_default(),
            },
        };
        cached.prune();
        cached
    }
}

/// What the controllers read of a pod beyond its metadata (`Resource::meta`), for a cached pod
/// and a full one alike.
pub trait PodFacts: Resource<DynamicType = ()> {
    /// `spec.nodeName`.
    fn node_name(&self) -> Option<&str>;
    /// `spec.terminationGracePeriodSeconds`.
    fn termination_grace_period_seconds(&self) -> Option<i64>;
    /// Whether `spec.readinessGates` lists `condition_type`.
    fn has_readiness_gate(&self, condition_type: &str) -> bool;
    /// `status.phase`.
    fn phase(&self) -> Option<&str>;
    /// The `Ready` or `relaunch.dev/ready` condition (the cache keeps no other).
    fn condition(&self, condition_type: &str) -> Option<&PodCondition>;
    /// The regular containers' names, in pod order.
    fn regular_containers(&self) -> Vec<&str>;
    /// The native sidecars' names (init containers with `restartPolicy: Always`), in pod order.
    fn sidecar_containers(&self) -> Vec<&str>;
}

impl PodFacts for CachedPod {
    fn node_name(&self) -> Option<&str> {
        self.spec.node_name.as_deref()
    }

    fn termination_grace_period_seconds(&self) -> Option<i64> {
        self.spec.termination_grace_period_seconds
    }

    fn has_readiness_gate(&self, condition_type: &str) -> bool {
        (self.spec.readiness_gates.iter()).any(|g| g.condition_type == condition_type)
    }

    fn phase(&self) -> Option<&str> {
        self.status.phase.as_deref()
    }

    fn condition(&self, condition_type: &str) -> Option<&PodCondition> {
        (self.status.conditions.iter()).find(|c| c.type_ == condition_type)
    }

    fn regular_containers(&self) -> Vec<&str> {
        self.spec
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect()
    }

    fn sidecar_containers(&self) -> Vec<&str> {
        (self.spec.init_containers.iter())
            .filter(|c| c.is_native_sidecar())
            .map(|c| c.name.as_str())
            .collect()
    }
}

impl PodFacts for Pod {
    fn node_name(&self) -> Option<&str> {
        self.spec.as_ref()?.node_name.as_deref()
    }

    fn termination_grace_period_seconds(&self) -> Option<i64> {
        self.spec.as_ref()?.termination_grace_period_seconds
    }

    fn has_readiness_gate(&self, condition_type: &str) -> bool {
        self.spec
            .as_ref()
            .and_then(|s| s.readiness_gates.as_ref())
            .is_some_and(|gates| gates.iter().any(|g| g.condition_type == condition_type))
    }

    fn phase(&self) -> Option<&str> {
        self.status.as_ref()?.phase.as_deref()
    }

    fn condition(&self, condition_type: &str) -> Option<&PodCondition> {
        self.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == condition_type)
    }

    fn regular_containers(&self) -> Vec<&str> {
        (self.spec.iter())
            .flat_map(|s| s.containers.iter().map(|c| c.name.as_str()))
            .collect()
    }

    fn sidecar_containers(&self) -> Vec<&str> {
        (self.spec.iter())
            .flat_map(|s| s.init_containers.iter().flatten())
            .filter(|c| is_native_sidecar(c))
            .map(|c| c.name.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_sent_as_null_read_as_absent_as_in_a_full_pod() {
        let served = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "db-0", "namespace": "default", "labels": null},
            "spec": {"nodeName": null, "readinessGates": null, "initContainers": null,
                     "containers": [{"name": "db", "image": "postgres", "restartPolicy": null}]},
            "status": {"phase": "Running", "conditions": null},
        });
        let full: Pod = serde_json::from_value(served.clone()).unwrap();
        let mut cached: CachedPod = serde_json::from_value(served).unwrap();
        cached.prune();
        assert_eq!(cached, CachedPod::from(&full));
        assert_eq!(cached.regular_containers(), ["db"]);
        for served in [
            json!({"metadata": {"name": "a"}, "spec": null, "status": null}),
            json!({"metadata": {"name": "a"}}),
        ] {
            let full: Pod = serde_json::from_value(served.clone()).unwrap();
            let cached: CachedPod = serde_json::from_value(served).unwrap();
            assert_eq!(cached, CachedPod::from(&full));
        }
    }
}
