//! The coordinator's Kubernetes I/O: every read, watch and write it makes, in one narrow
//! adapter. Errors come back as [`ClusterError`]; callers hand them to [`crate::error_policy`].

use std::collections::BTreeMap;
use std::fmt::Debug;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::NamespaceResourceScope;
use kube::runtime::events::{self as kube_events, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use relaunch_api::{ContainerRecreateRequest, LABEL_POD_UID, RollingRestart, WorkloadKind};

use crate::error::ClusterError;
use crate::pods::PodFacts;

mod scaledown;
use crate::error_policy::error_policy;
use crate::events::{Event, is_rollout_request};
use crate::leader_election::Leadership;
use crate::metrics::Metrics;
use crate::readiness::{self, GateHolder};

/// Field manager of every write.
pub const FIELD_MANAGER: &str = "relaunch-coordinator";

/// Reads and writes the coordinator makes.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    recorder: Recorder,
    /// For Events that could not be recorded (in the background, so nobody else sees the error).
    metrics: Metrics,
    /// For the controllers: every status write, other write and Event is sent only while this
    /// holds (none: the report API, whose writes are conditional and allowed on every replica).
    leadership: Option<Leadership>,
}

impl Cluster {
    /// The adapter over `client`; Events name `instance` as their reporting instance.
    pub fn new(client: Client, instance: &str, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(instance.to_string()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            leadership: None,
        }
    }

    /// The same adapter for the controllers of one leadership term: each write and Event is
    /// refused with [`ClusterError::NotLeading`] once `leadership` lapsed, so a pass in flight
    /// when leadership is lost writes nothing more.
    pub fn for_leader(&self, leadership: Leadership) -> Self {
        Self {
            leadership: Some(leadership),
            ..self.clone()
        }
    }

    /// Whether this adapter may write now: always for the report API's, while leading for the
    /// controllers'.
    pub fn may_write(&self) -> Result<(), ClusterError> {
        match &self.leadership {
            Some(leadership) if !leadership.holds() => Err(ClusterError::NotLeading),
            _ => Ok(()),
        }
    }

    /// A cluster-wide watch of `K` (feed it to a reflector).
    pub fn watch<K>(
        &self,
        config: watcher::Config,
    ) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + use<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        watcher(Api::<K>::all(self.client.clone()), config)
    }

    /// TokenReview of `token` for `audience`.
    pub async fn review_token(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<TokenReviewStatus, ClusterError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![audience.to_string()]),
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        Ok(answer.status.unwrap_or_default())
    }

    /// The pod, if it exists.
    pub async fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>, ClusterError> {
        Ok(Api::<Pod>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await?)
    }

    /// The request, if it exists.
    pub async fn get_request(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ContainerRecreateRequest>, ClusterError> {
        Ok(
            Api::<ContainerRecreateRequest>::namespaced(self.client.clone(), namespace)
                .get_opt(name)
                .await?,
        )
    }

    /// The API of `object`'s kind in `object`'s namespace.
    fn api_of<K>(&self, object: &K) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
    {
        Api::namespaced(
            self.client.clone(),
            object.meta().namespace.as_deref().unwrap_or("default"),
        )
    }

    /// Replaces `object`'s status `old` (as read) by `new`, only if the object is still at the
    /// version it was read at (409 otherwise: re-read and decide again). The merge patch carries
    /// what changed and clears what `new` dropped.
    pub async fn write_status<K, S>(
        &self,
        object: &K,
        old: Option<&S>,
        new: &S,
    ) -> Result<K, ClusterError>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug,
        S: Serialize,
    {
        self.may_write()?;
        let to_json = |s: &S| serde_json::to_value(s).map_err(kube::Error::SerdeError);
        let old = old.map(to_json).transpose()?.unwrap_or(Value::Null);
        let patch = json!({
            "metadata": {"resourceVersion": object.resource_version()},
            "status": merge_patch(&old, &to_json(new)?),
        });
        Ok(self
            .api_of(object)
            .patch_status(
                &object.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?)
    }

    /// Adds labels to the request (at the version it was read at).
    pub async fn add_labels(
        &self,
        crr: &ContainerRecreateRequest,
        labels: &BTreeMap<String, String>,
    ) -> Result<ContainerRecreateRequest, ClusterError> {
        self.may_write()?;
        let patch = json!({
            "metadata": {"resourceVersion": crr.resource_version(), "labels": labels},
        });
        Ok(self
            .api_of(crr)
            .patch(
                &crr.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?)
    }

    /// Deletes the request, only if it is still the same object.
    pub async fn delete_request(&self, crr: &ContainerRecreateRequest) -> Result<(), ClusterError> {
        self.may_write()?;
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: crr.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.api_of(crr).delete(&crr.name_any(), &params).await {
            Ok(_) => Ok(()),
            Err(e) => match ClusterError::from(e) {
                ClusterError::NotFound(_) => Ok(()),
                e => Err(e),
            },
        }
    }

    /// Creates `request`; one that already exists (AlreadyExists, 409) counts as created: its
    /// name is deterministic, so it is this very request, made earlier or by another leader.
    pub async fn create_request(
        &self,
        request: &ContainerRecreateRequest,
    ) -> Result<(), ClusterError> {
        self.may_write()?;
        match self
            .api_of(request)
            .create(&PostParams::default(), request)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates `rollout`; false when it already exists (its name is derived from what started it).
    pub async fn create_rollout(&self, rollout: &RollingRestart) -> Result<bool, ClusterError> {
        self.may_write()?;
        match self
            .api_of(rollout)
            .create(&PostParams::default(), rollout)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets annotation `key` of workload `kind` `namespace/name` to `value` (a merge patch of
    /// that one annotation; nothing else of the workload is touched).
    pub async fn annotate_workload(
        &self,
        kind: &WorkloadKind,
        namespace: &str,
        name: &str,
        key: &str,
        value: &str,
    ) -> Result<(), ClusterError> {
        self.may_write()?;
        let patch = json!({"metadata": {"annotations": {key: value}}});
        let params = PatchParams::default();
        let patch = Patch::Merge(&patch);
        let client = self.client.clone();
        match kind {
            WorkloadKind::StatefulSet => {
                Api::<StatefulSet>::namespaced(client, namespace)
                    .patch(name, &params, &patch)
                    .await?;
            }
            WorkloadKind::Deployment => {
                Api::<Deployment>::namespaced(client, namespace)
                    .patch(name, &params, &patch)
                    .await?;
            }
            WorkloadKind::DaemonSet => {
                Api::<DaemonSet>::namespaced(client, namespace)
                    .patch(name, &params, &patch)
                    .await?;
            }
            WorkloadKind::ReplicaSet => {
                Api::<ReplicaSet>::namespaced(client, namespace)
                    .patch(name, &params, &patch)
                    .await?;
            }
            WorkloadKind::Unknown(_) => {}
        }
        Ok(())
    }

    /// Sets the rollout's `spec.strategy.paused`: the switch a user flips, so resuming is the
    /// user's ordinary unpause.
    pub async fn pause_rollout(&self, rollout: &RollingRestart) -> Result<(), ClusterError> {
        self.may_write()?;
        let patch = json!({"spec": {"strategy": {"paused": true}}});
        self.api_of(rollout)
            .patch(
                &rollout.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        Ok(())
    }

    /// Sets the pod's `relaunch.dev/ready` condition on behalf of request `holder`, only if the
    /// pod is still at the version read (`pod`, on which the change was decided; 409 otherwise).
    pub async fn set_gate(
        &self,
        pod: &impl PodFacts,
        ready: bool,
        holder: &GateHolder,
    ) -> Result<(), ClusterError> {
        let rv = pod.resource_version().unwrap_or_default();
        let patch = readiness::gate_patch(ready, holder, &rv, Timestamp::now());
        self.patch_pod_status(&holder.namespace, &pod.name_any(), &patch)
            .await
    }

    /// Opens a gated pod's `relaunch.dev/ready` condition (sets it True for the first time),
    /// only if the pod is still at the version read (409 otherwise).
    pub async fn open_gate(&self, pod: &impl PodFacts) -> Result<(), ClusterError> {
        let rv = pod.resource_version().unwrap_or_default();
        let patch = readiness::opening_patch(&rv, Timestamp::now());
        let ns = pod.namespace().unwrap_or_default();
        self.patch_pod_status(&ns, &pod.name_any(), &patch).await
    }

    /// Releases the gate of a pod held by request `holder` (in the pod's namespace), which no
    /// longer exists, only if the pod is still at `resource_version` (409 otherwise).
    pub async fn release_gone_holder(
        &self,
        pod_name: &str,
        holder: &GateHolder,
        resource_version: &str,
    ) -> Result<(), ClusterError> {
        let patch = readiness::holder_gone_patch(holder, resource_version, Timestamp::now());
        self.patch_pod_status(&holder.namespace, pod_name, &patch)
            .await
    }

    async fn patch_pod_status(
        &self,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> Result<(), ClusterError> {
        self.may_write()?;
        Api::<Pod>::namespaced(self.client.clone(), namespace)
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
            .await?;
        Ok(())
    }

    /// The Lease, if it exists.
    pub async fn get_lease(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Lease>, ClusterError> {
        Ok(Api::<Lease>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await?)
    }

    /// Creates the Lease (409 if another replica created it first).
    pub async fn create_lease(&self, lease: &Lease) -> Result<(), ClusterError> {
        self.api_of(lease)
            .create(&PostParams::default(), lease)
            .await?;
        Ok(())
    }

    /// Replaces the Lease at the version it was read at (409 if another replica wrote it since).
    pub async fn replace_lease(&self, lease: &Lease) -> Result<(), ClusterError> {
        self.api_of(lease)
            .replace(&lease.name_any(), &PostParams::default(), lease)
            .await?;
        Ok(())
    }

    /// Records `events` on the request and on its pod (on the pod only for a RollingRestart's
    /// request), in the background: Events are best effort and must not hold up an agent's
    /// report.
    pub fn record(
        &self,
        crr: &ContainerRecreateRequest,
        pod: Option<ObjectReference>,
        events: Vec<Event>,
    ) {
        let pod_ref = pod.or_else(|| pod_reference(crr));
        // A RollingRestart's requests carry no Events of their own: their pod and the rollout
        // tell what happened (see `events::is_rollout_request`).
        let on_request = !is_rollout_request(crr);
        let targets = on_request
            .then(|| crr.object_ref(&()))
            .into_iter()
            .chain(pod_ref)
            .collect();
        self.publish(targets, events);
    }

    /// Records `events` on `object` only (a pod, a rollout, a workload), in the background.
    pub fn record_on(&self, object: ObjectReference, events: Vec<Event>) {
        self.publish(vec![object], events);
    }

    fn publish(&self, targets: Vec<ObjectReference>, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let recorder = self.recorder.clone();
        let metrics = self.metrics.clone();
        let cluster = self.clone();
        tokio::spawn(async move {
            for event in events {
                if let Err(e) = cluster.may_write() {
                    let object = targets.first().map(described).unwrap_or_default();
                    let action = format!("recording Event {}", event.reason);
                    error_policy(&metrics, &action, &object, &e);
                    continue;
                }
                let published = kube_events::Event {
                    type_: if event.warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: event.reason.into(),
                    note: Some(event.note()),
                    action: event.reason.into(),
                    secondary: event.related.clone(),
                };
                for target in &targets {
                    if let Err(e) = recorder.publish(&published, target).await {
                        let object = described(target);
                        let action = format!("recording Event {}", event.reason);
                        error_policy(&metrics, &action, &object, &ClusterError::from(e));
                    }
                }
            }
        });
    }
}

/// `Kind namespace/name` of a reference, for logs.
fn described(reference: &ObjectReference) -> String {
    format!(
        "{} {}/{}",
        reference.kind.as_deref().unwrap_or_default(),
        reference.namespace.as_deref().unwrap_or_default(),
        reference.name.as_deref().unwrap_or_default()
    )
}

/// A reference to the request's pod, from the request alone.
pub fn pod_reference(crr: &ContainerRecreateRequest) -> Option<ObjectReference> {
    if crr.spec.pod_name.is_empty() {
        return None;
    }
    Some(ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: crr.metadata.namespace.clone(),
        name: Some(crr.spec.pod_name.clone()),
        uid: crr.labels().get(LABEL_POD_UID).cloned(),
        ..Default::default()
    })
}

/// A reference to `pod`.
pub fn object_reference(pod: &impl PodFacts) -> ObjectReference {
    pod.object_ref(&())
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`: changed and added fields with
/// their new values, dropped fields as `null` (a merge patch leaves absent fields alone), nested
/// objects compared field by field. Arrays are replaced whole, as a merge patch does.
pub fn merge_patch(old: &Value, new: &Value) -> Value {
    let (Value::Object(old), Value::Object(new)) = (old, new) else {
        return new.clone();
    };
    let mut patch = Map::new();
    for (key, value) in new {
        match old.get(key) {
            Some(previous) if previous == value => {}
            Some(previous @ Value::Object(_)) if value.is_object() => {
                patch.insert(key.clone(), merge_patch(previous, value));
            }
            _ => {
                patch.insert(key.clone(), value.clone());
            }
        }
    }
    for key in old.keys() {
        if !new.contains_key(key) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    Value::Object(patch)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7386 `MergePatch(target, patch)`.
    fn apply(target: &Value, patch: &Value) -> Value {
        let Value::Object(patch) = patch else {
            return patch.clone();
        };
        let mut target = match target {
            Value::Object(t) => t.clone(),
            _ => Map::new(),
        };
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                let merged = apply(target.get(key).unwrap_or(&Value::Null), value);
                target.insert(key.clone(), merged);
            }
        }
        Value::Object(target)
    }

    #[test]
    fn a_merge_patch_turns_the_old_status_into_the_new_one() {
        let old = json!({
            "phase": "Progressing", "message": "restarting db-1", "total": 3,
            "currentBatch": ["db-1"], "nested": {"a": 1, "b": 2},
        });
        let new =
            json!({"phase": "Succeeded", "total": 3, "nested": {"a": 1}, "completionTime": "t"});
        let patch = merge_patch(&old, &new);
        assert_eq!(apply(&old, &patch), new);
        assert_eq!(
            patch,
            json!({"phase": "Succeeded", "message": null, "currentBatch": null,
                   "nested": {"b": null}, "completionTime": "t"})
        );
    }

    #[test]
    fn a_first_status_is_written_whole_and_an_unchanged_one_is_empty() {
        let new = json!({"phase": "Pending", "observedGeneration": 1});
        assert_eq!(merge_patch(&Value::Null, &new), new);
        assert_eq!(merge_patch(&new, &new), json!({}));
    }
}
