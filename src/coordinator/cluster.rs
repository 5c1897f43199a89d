//! The coordinator's Kubernetes I/O: every read and write it makes, in one narrow adapter.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};

use relaunch_api::{ContainerRecreateRequest, ContainerRecreateRequestStatus, LABEL_POD_UID};

use super::{Note, readiness};

/// Field manager of every write.
pub const FIELD_MANAGER: &str = "relaunch-coordinator";

/// A write that lost a race: the object changed (409) since it was read.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Whether an API error means the object does not exist.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Reads and writes the coordinator makes.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    recorder: Recorder,
}

impl Cluster {
    pub fn new(client: Client, instance: &str) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(instance.to_string()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// TokenReview of `token` for `audience`.
    pub async fn review_token(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<TokenReviewStatus, kube::Error> {
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

    pub async fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>, kube::Error> {
        Api::<Pod>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
    }

    pub async fn get_request(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ContainerRecreateRequest>, kube::Error> {
        Api::<ContainerRecreateRequest>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
    }

    fn requests(&self, crr: &ContainerRecreateRequest) -> Api<ContainerRecreateRequest> {
        Api::namespaced(
            self.client.clone(),
            crr.metadata.namespace.as_deref().unwrap_or("default"),
        )
    }

    /// Replaces the request's status, only if the request is still at the version `crr` was read
    /// at (409 otherwise: re-read and decide again).
    pub async fn write_status(
        &self,
        crr: &ContainerRecreateRequest,
        status: &ContainerRecreateRequestStatus,
    ) -> Result<ContainerRecreateRequest, kube::Error> {
        let mut value = serde_json::to_value(status).map_err(kube::Error::SerdeError)?;
        // A merge patch leaves absent fields alone: clear the ones the new status dropped (a
        // message the latest report no longer has).
        if let (Value::Object(new), Some(Ok(Value::Object(old)))) =
            (&mut value, crr.status.as_ref().map(serde_json::to_value))
        {
            for key in old.keys() {
                new.entry(key.clone()).or_insert(Value::Null);
            }
        }
        let patch = json!({
            "metadata": {"resourceVersion": crr.resource_version()},
            "status": value,
        });
        self.requests(crr)
            .patch_status(
                &crr.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
    }

    /// Adds labels to the request (at the version it was read at).
    pub async fn add_labels(
        &self,
        crr: &ContainerRecreateRequest,
        labels: &BTreeMap<String, String>,
    ) -> Result<ContainerRecreateRequest, kube::Error> {
        let patch = json!({
            "metadata": {"resourceVersion": crr.resource_version(), "labels": labels},
        });
        self.requests(crr)
            .patch(
                &crr.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
    }

    /// Deletes the request, only if it is still the same object.
    pub async fn delete_request(&self, crr: &ContainerRecreateRequest) -> Result<(), kube::Error> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: crr.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.requests(crr).delete(&crr.name_any(), &params).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sets the pod's `relaunch.dev/ready` condition on behalf of request `crr_ns/crr_name`.
    pub async fn set_gate(
        &self,
        pod_namespace: &str,
        pod_name: &str,
        ready: bool,
        crr_name: &str,
    ) -> Result<(), kube::Error> {
        let patch = readiness::gate_patch(ready, pod_namespace, crr_name, Timestamp::now());
        Api::<Pod>::namespaced(self.client.clone(), pod_namespace)
            .patch_status(pod_name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .map(|_| ())
    }

    /// Opens a gated pod's `relaunch.dev/ready` condition (sets it True for the first time).
    pub async fn open_gate(&self, pod_namespace: &str, pod_name: &str) -> Result<(), kube::Error> {
        let patch = readiness::opening_patch(Timestamp::now());
        Api::<Pod>::namespaced(self.client.clone(), pod_namespace)
            .patch_status(pod_name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .map(|_| ())
    }

    /// Releases the gate of a pod held by request `holder` (in the pod's namespace), which no
    /// longer exists, only if the pod is still at `resource_version` (409 otherwise).
    pub async fn release_gone_holder(
        &self,
        pod_namespace: &str,
        pod_name: &str,
        holder: &str,
        resource_version: &str,
    ) -> Result<(), kube::Error> {
        let patch =
            readiness::holder_gone_patch(pod_namespace, holder, resource_version, Timestamp::now());
        Api::<Pod>::namespaced(self.client.clone(), pod_namespace)
            .patch_status(pod_name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .map(|_| ())
    }

    /// Records `notes` on the request and on its pod (on the pod only for a RollingRestart's
    /// request), in the background: Events are best effort and must not hold up an agent's
    /// report.
    pub fn record(
        &self,
        crr: &ContainerRecreateRequest,
        pod: Option<ObjectReference>,
        notes: Vec<Note>,
    ) {
        let pod_ref = pod.or_else(|| pod_reference(crr));
        // A RollingRestart's requests carry no Events of their own: their pod and the rollout
        // tell what happened (see `reports::is_rollout_request`).
        let on_request = !super::reports::is_rollout_request(crr);
        let targets = on_request
            .then(|| crr.object_ref(&()))
            .into_iter()
            .chain(pod_ref)
            .collect();
        self.publish(targets, notes);
    }

    /// Records `notes` on `pod` only, in the background.
    pub fn record_on_pod(&self, pod: ObjectReference, notes: Vec<Note>) {
        self.publish(vec![pod], notes);
    }

    fn publish(&self, targets: Vec<ObjectReference>, notes: Vec<Note>) {
        if notes.is_empty() {
            return;
        }
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            for note in notes {
                let event = Event {
                    type_: if note.warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: note.reason.into(),
                    note: Some(truncate(&note.message, 1000)),
                    action: note.reason.into(),
                    secondary: None,
                };
                for target in &targets {
                    if let Err(e) = recorder.publish(&event, target).await {
                        tracing::warn!(error = %e, reason = note.reason, "cannot record event");
                    }
                }
            }
        });
    }
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
pub fn object_reference(pod: &Pod) -> ObjectReference {
    pod.object_ref(&())
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
