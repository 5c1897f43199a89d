//! What the ReplicaSet, Deployment and DaemonSet controllers share: the pod-template hash, int-or-
//! percent scaling, and the pod writes (with their expectations and Events) of the ReplicaSet
//! and DaemonSet controllers.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, ResourceExt};
use tracing::{debug, info, warn};

use super::expectations::Expectations;
use super::is_benign;

/// upstream's `burstReplicas`: at most this many pod creations or deletions per pass.
pub const BURST_REPLICAS: usize = 500;

/// `controller.ComputeHash`: 32-bit FNV-1a over the template (here its canonical JSON,
/// upstream a `spew` dump of the Go struct) and the collision count, spelled with the
/// apimachinery "safe" alphabet. Stable, and any change to the template gives another hash.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(&serde_json::to_vec(&canonical_template(template)).unwrap_or_default());
    if let Some(count) = collision_count {
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&count.to_le_bytes());
        feed(&bytes);
    }
    safe_encode(&hash.to_string())
}

/// The template as JSON without nulls, empty objects and empty lists, so that what Go clients
/// send for unset fields (`resources: {}`, `creationTimestamp: null`) compares and hashes like
/// the field left out, as Go's semantic equality of the typed structs has it.
pub fn canonical_template(template: &PodTemplateSpec) -> serde_json::Value {
    fn prune(value: serde_json::Value) -> Option<serde_json::Value> {
        use serde_json::Value;
        match value {
            Value::Null => None,
            Value::Object(map) => {
                let map: serde_json::Map<String, Value> = map
                    .into_iter()
                    .filter_map(|(k, v)| Some((k, prune(v)?)))
                    .collect();
                (!map.is_empty()).then_some(Value::Object(map))
            }
            Value::Array(items) => {
                // Elements keep their place: an element that prunes away becomes `{}`.
                let items: Vec<Value> = items
                    .into_iter()
                    .map(|v| prune(v).unwrap_or(Value::Object(Default::default())))
                    .collect();
                (!items.is_empty()).then_some(Value::Array(items))
            }
            other => Some(other),
        }
    }
    serde_json::to_value(template)
        .ok()
        .and_then(prune)
        .unwrap_or_default()
}

/// apimachinery's `rand.SafeEncodeString`: no vowels, no confusable characters.
fn safe_encode(text: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    text.bytes()
        .map(|b| char::from(ALPHANUMS[usize::from(b) % ALPHANUMS.len()]))
        .collect()
}

/// `intstr.GetScaledValueFromIntOrPercent`: an int as is, `"N%"` of `total` rounded up or
/// down; None for anything else (a string without `%`, a bad number).
pub fn scaled_value(value: &IntOrString, total: i32, round_up: bool) -> Option<i32> {
    match value {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(text) => {
            let percent: i64 = text.strip_suffix('%')?.parse().ok()?;
            let product = percent * i64::from(total);
            let scaled = if round_up {
                -((-product).div_euclid(100))
            } else {
                product.div_euclid(100)
            };
            i32::try_from(scaled).ok()
        }
    }
}

/// One pod write a ReplicaSet or DaemonSet controller wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum PodAction {
    /// Creates a pod (named by the server from `generateName`).
    CreatePod(Box<Pod>),
    /// Deletes the pod only if it is still the one with this uid.
    DeletePod { name: String, uid: String },
    /// Adopts or releases the pod by writing its owner references, if it is unchanged.
    SetPodOwners {
        name: String,
        resource_version: String,
        owner_references: Vec<OwnerReference>,
    },
}

/// The controller object the writes are for.
pub(super) struct Owner {
    pub uid: String,
    pub namespace: String,
    /// `kind namespace/name`, for logs.
    pub key: String,
    pub reference: ObjectReference,
}

/// Pod writes with expectations and Events, as upstream's `PodControl` does them.
#[derive(Clone)]
pub(super) struct PodWriter {
    client: Client,
    recorder: Recorder,
    expectations: Arc<Expectations>,
}

impl PodWriter {
    pub(super) fn new(client: Client, component: &str, expectations: Arc<Expectations>) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: component.into(),
                instance: None,
            },
        );
        Self {
            client,
            recorder,
            expectations,
        }
    }

    /// Whether `owner` may act on the pod cache again.
    pub(super) fn satisfied(&self, owner: &str) -> bool {
        self.expectations.satisfied(owner, Instant::now())
    }

    /// Writes ownership changes, then (expectations recorded first) deletions; returns whether all
    /// went well and the pods still to create. A failed ownership write stops everything.
    pub(super) async fn claim_and_delete(
        &self,
        owner: &Owner,
        actions: Vec<PodAction>,
    ) -> (bool, Vec<Pod>) {
        let api = Api::<Pod>::namespaced(self.client.clone(), &owner.namespace);
        let mut creations = Vec::new();
        let mut deletions = Vec::new();
        for action in actions {
            match action {
                PodAction::CreatePod(pod) => creations.push(*pod),
                PodAction::DeletePod { name, uid } => deletions.push((name, uid)),
                PodAction::SetPodOwners {
                    name,
                    resource_version,
                    owner_references,
                } => {
                    let patch = serde_json::json!({ "metadata": {
                        "resourceVersion": resource_version,
                        "ownerReferences": owner_references,
                    } });
                    let result = api
                        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                        .await;
                    if let Err(error) = result {
                        let benign = is_benign(&error);
                        let owner = &owner.key;
                        debug!(%owner, pod = %name, %error, "owner references not written");
                        return (benign, Vec::new());
                    }
                    info!(owner = %owner.key, pod = %name, "wrote owner references");
                }
            }
        }
        creations.truncate(BURST_REPLICAS);
        deletions.truncate(BURST_REPLICAS);
        if !creations.is_empty() || !deletions.is_empty() {
            self.expectations.expect(
                &owner.uid,
                creations.len(),
                deletions.iter().map(|(_, uid)| uid.clone()),
                Instant::now(),
            );
        }
        let mut healthy = true;
        for (name, uid) in deletions {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => {
                    info!(owner = %owner.key, pod = %name, "deleted pod");
                    self.event(
                        owner,
                        EventType::Normal,
                        "SuccessfulDelete",
                        format!("Deleted pod: {name}"),
                    );
                }
                Err(error) => {
                    self.expectations.deletion_observed(&owner.uid, &uid);
                    if !is_benign(&error) {
                        let key = &owner.key;
                        warn!(owner = %key, pod = %name, %error, "deleting pod failed; will retry");
                        self.event(
                            owner,
                            EventType::Warning,
                            "FailedDelete",
                            format!("Error deleting: {error}"),
                        );
                        healthy = false;
                    }
                }
            }
        }
        (healthy, creations)
    }

    /// Creates `pods` in order; after a failure the rest are not attempted (a slow start of one).
    pub(super) async fn create(&self, owner: &Owner, pods: Vec<Pod>) -> bool {
        let api = Api::<Pod>::namespaced(self.client.clone(), &owner.namespace);
        let mut pods = pods.into_iter();
        while let Some(pod) = pods.next() {
            match api.create(&PostParams::default(), &pod).await {
                Ok(created) => {
                    let name = created.name_any();
                    info!(owner = %owner.key, pod = %name, "created pod");
                    self.event(
                        owner,
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("Created pod: {name}"),
                    );
                }
                Err(error) => {
                    // Neither this creation nor the skipped ones will ever be observed.
                    self.expectations.creation_observed(&owner.uid);
                    for _ in pods.by_ref() {
                        self.expectations.creation_observed(&owner.uid);
                    }
                    warn!(owner = %owner.key, %error, "creating pod failed; will retry");
                    self.event(
                        owner,
                        EventType::Warning,
                        "FailedCreate",
                        format!("Error creating: {error}"),
                    );
                    return is_benign(&error);
                }
            }
        }
        true
    }

    /// Publishes an Event about the owner without waiting for it.
    pub(super) fn event(&self, owner: &Owner, type_: EventType, reason: &str, note: String) {
        publish(&self.recorder, &owner.reference, type_, reason, note);
    }
}

/// Publishes an Event about `reference` in the background; a lost Event only loses a log line.
pub(super) fn publish(
    recorder: &Recorder,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    let recorder = recorder.clone();
    let reference = reference.clone();
    tokio::spawn(async move {
        if let Err(error) = recorder.publish(&event, &reference).await {
            debug!(%error, "event not recorded");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn percentages_round_as_asked_and_ints_pass_through() {
        let percent = |s: &str| IntOrString::String(s.into());
        assert_eq!(scaled_value(&percent("25%"), 3, true), Some(1));
        assert_eq!(scaled_value(&percent("25%"), 3, false), Some(0));
        assert_eq!(scaled_value(&percent("50%"), 5, true), Some(3));
        assert_eq!(scaled_value(&percent("50%"), 5, false), Some(2));
        assert_eq!(scaled_value(&percent("100%"), 7, false), Some(7));
        assert_eq!(scaled_value(&IntOrString::Int(2), 10, false), Some(2));
        assert_eq!(scaled_value(&percent("2"), 10, false), None);
        assert_eq!(scaled_value(&percent("x%"), 10, false), None);
    }

    #[test]
    fn template_hash_is_stable_and_changes_with_template_and_collisions() {
        let template = |image: &str| PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            }),
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                containers: vec![k8s_openapi::api::core::v1::Container {
                    name: "main".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        };
        let first = template_hash(&template("busybox:1"), None);
        assert_eq!(first, template_hash(&template("busybox:1"), None));
        assert_ne!(first, template_hash(&template("busybox:2"), None));
        assert_ne!(first, template_hash(&template("busybox:1"), Some(1)));
        assert!(
            first
                .chars()
                .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c))
        );

        // What a Go client sends for unset fields hashes like the fields left out.
        let mut go_style = template("busybox:1");
        go_style.spec.as_mut().unwrap().containers[0].resources = Some(Default::default());
        go_style.metadata.as_mut().unwrap().annotations = Some(Default::default());
        assert_eq!(first, template_hash(&go_style, None));
    }
}
