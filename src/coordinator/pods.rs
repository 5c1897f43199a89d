//! The coordinator's own view of a pod: [`CachedPod`], the projection every controller's shared
//! cache holds, and [`PodFacts`], the few accessors the controllers read a pod through — the same
//! for a cached pod and for a full `Pod` read from the API (admission, reports), so one decision
//! function serves both and a test can hold them to the same answers.
//!
//! A `CachedPod` is deserialized straight from the watch's JSON: the fields it does not name
//! (volumes, env, resources, container statuses, ...) are skipped by the parser and never
//! allocated, and a cached pod costs a few hundred bytes instead of the ≈ 6 KiB of a pruned
//! `k8s_openapi` `Pod` (docs/performance.md).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodCondition, PodReadinessGate};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::core::{Expression, Selector};
use serde::{Deserialize, Serialize};

use relaunch_api::READINESS_GATE;
use relaunch_api::containers::is_native_sidecar;

/// What the controllers read of a pod: identity, labels (rollout and budget selectors, ordinal;
/// held as [`Labels`], not in `metadata`),
/// owner kinds (ordinal, ScaleDown ownership), deletion and resourceVersion (conditional
/// writes); node, grace period, readiness gates, the names of the containers that can be
/// recreated (regular containers and native sidecars); phase and the `Ready` and
/// `relaunch.dev/ready` conditions.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(from = "PodFields", into = "PodFields")]
pub struct CachedPod {
    /// Without labels: they are in `labels`.
    pub metadata: ObjectMeta,
    /// Moved out of `metadata` as the pod is read (and back in as it is written).
    labels: Labels,
    spec: CachedSpec,
    status: CachedStatus,
}

/// A [`CachedPod`] as JSON: the labels in `metadata`, as the API has them.
#[derive(Deserialize, Serialize)]
struct PodFields {
    #[serde(default, deserialize_with = "null_as_default")]
    metadata: ObjectMeta,
    #[serde(default, deserialize_with = "null_as_default")]
    spec: CachedSpec,
    #[serde(default, deserialize_with = "null_as_default")]
    status: CachedStatus,
}

impl From<PodFields> for CachedPod {
    fn from(fields: PodFields) -> Self {
        let mut metadata = fields.metadata;
        let labels = metadata.labels.take().map(Labels::from).unwrap_or_default();
        Self {
            metadata,
            labels,
            spec: fields.spec,
            status: fields.status,
        }
    }
}

impl From<CachedPod> for PodFields {
    fn from(pod: CachedPod) -> Self {
        let mut metadata = pod.metadata;
        if !pod.labels.0.is_empty() {
            metadata.labels = Some(pod.labels.to_map());
        }
        Self {
            metadata,
            spec: pod.spec,
            status: pod.status,
        }
    }
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

/// A pod's labels as the cache holds them: one allocation of key/value pairs sorted by key, in
/// place of `ObjectMeta`'s `BTreeMap`, whose first node alone takes 544 bytes however few the
/// labels (docs/performance.md).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    /// The value of label `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        let found = self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        self.0.get(found).map(|(_, v)| &**v)
    }

    /// The labels as `ObjectMeta` holds them.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        (self.0.iter())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        // A BTreeMap iterates in key order: the pairs come out sorted.
        Self(
            map.into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect(),
        )
    }
}

/// A label selector evaluated on [`PodFacts::label`], so on a cached pod's [`Labels`] and a
/// full pod's alike. Parsing stays `kube`'s (`Selector::try_from` a `LabelSelector`).
#[derive(Clone, Debug)]
pub struct PodSelector(Vec<Expression>);

impl From<Selector> for PodSelector {
    fn from(selector: Selector) -> Self {
        Self(selector.into_iter().collect())
    }
}

impl PodSelector {
    /// Whether `pod`'s labels satisfy every expression (an empty selector selects every pod).
    pub fn matches(&self, pod: &impl PodFacts) -> bool {
        self.0.iter().all(|e| match e {
            Expression::In(key, values) => pod.label(key).is_some_and(|v| values.contains(v)),
            Expression::NotIn(key, values) => pod.label(key).is_none_or(|v| !values.contains(v)),
            Expression::Exists(key) => pod.label(key).is_some(),
            Expression::DoesNotExist(key) => pod.label(key).is_none(),
            Expression::Equal(key, value) => pod.label(key) == Some(value.as_str()),
            Expression::NotEqual(key, value) => pod.label(key) != Some(value.as_str()),
        })
    }
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
        let mut pod = Self {
            metadata,
            ..Default::default()
        };
        pod.prune();
        pod
    }

    /// The pod's labels. (`ResourceExt::labels` would read `metadata`, which holds none once
    /// pruned; this inherent method takes precedence on a `CachedPod`.)
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// Drops what the controllers never read and the parser still had to take: managed fields,
    /// annotations, finalizers, `generateName`; plain init containers; conditions other than
    /// `Ready` and `relaunch.dev/ready`, and of those the fields nothing reads.
    pub fn prune(&mut self) {
        let meta = &mut self.metadata;
        if let Some(labels) = meta.labels.take() {
            self.labels = Labels::from(labels);
        }
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
            labels: Labels::default(),
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
    /// The value of label `key`.
    fn label(&self, key: &str) -> Option<&str>;
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
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key)
    }

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
    fn label(&self, key: &str) -> Option<&str> {
        self.metadata.labels.as_ref()?.get(key).map(String::as_str)
    }

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

    /// A selector gives the same answer on a cached pod's compact labels as `kube`'s own
    /// matching on the full pod's labels.
    #[test]
    fn selectors_match_cached_labels_as_kube_matches_the_full_ones() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
        use kube::core::SelectorExt;
        let label_sets = [
            json!({}),
            json!({"app": "db"}),
            json!({"app": "db", "role": "primary", "zone": "a"}),
            json!({"app": "web", "role": "replica", "apps.kubernetes.io/pod-index": "3"}),
        ];
        let selectors = [
            json!({}),
            json!({"matchLabels": {"app": "db"}}),
            json!({"matchLabels": {"app": "db", "role": "primary"}}),
            json!({"matchExpressions": [{"key": "role", "operator": "In", "values": ["primary", "replica"]}]}),
            json!({"matchExpressions": [{"key": "role", "operator": "NotIn", "values": ["primary"]}]}),
            json!({"matchExpressions": [{"key": "zone", "operator": "Exists"}]}),
            json!({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}),
            json!({"matchLabels": {"app": "db"}, "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}),
        ];
        for labels in &label_sets {
            let full: Pod = serde_json::from_value(json!({
                "metadata": {"name": "p", "labels": labels},
            }))
            .unwrap();
            let cached = CachedPod::from(&full);
            assert!(cached.metadata.labels.is_none());
            assert_eq!(
                &cached.labels().to_map(),
                full.metadata.labels.as_ref().unwrap()
            );
            for selector in &selectors {
                let parsed: LabelSelector = serde_json::from_value(selector.clone()).unwrap();
                let kube = Selector::try_from(parsed).unwrap();
                let ours = PodSelector::from(kube.clone());
                let expected = kube.matches(full.metadata.labels.as_ref().unwrap());
                assert_eq!(ours.matches(&cached), expected, "{selector} on {labels}");
                assert_eq!(ours.matches(&full), expected, "{selector} on {labels}");
            }
        }
        // Pruning twice keeps the labels.
        let mut twice = CachedPod::from(
            &serde_json::from_value::<Pod>(json!({
                "metadata": {"name": "p", "labels": {"app": "db"}},
            }))
            .unwrap(),
        );
        twice.prune();
        assert_eq!(twice.labels().get("app"), Some("db"));
        assert_eq!(twice.label("missing"), None);
    }

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
