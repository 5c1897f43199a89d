//! Building a ContainerRecreateRequest for a pod: in the pod's namespace, for the pod by name,
//! and labelled with its node and UID, so the node's agent sees it at once (it watches by
//! `relaunch.dev/node-name`) and a pod replaced under the same name is never touched.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::{
    ContainerRecreateRequest, ContainerRecreateRequestContainer, ContainerRecreateRequestSpec,
    ContainerRecreateRequestStrategy, LABEL_NODE_NAME, LABEL_POD_UID, ShutdownAction,
};

/// A ContainerRecreateRequest being put together; see [`ContainerRecreateRequest::for_pod`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RecreateRequestBuilder {
    request: ContainerRecreateRequest,
}

impl ContainerRecreateRequest {
    /// Whether the coordinator admitted this request as it is now: `status.admittedGeneration`
    /// equals `metadata.generation` (both set). Agents act only on admitted requests, so no
    /// admission-time check can be skipped by creating a request with the node label.
    pub fn is_admitted(&self) -> bool {
        let admitted = self.status.as_ref().and_then(|s| s.admitted_generation);
        admitted.is_some() && admitted == self.metadata.generation
    }

    /// A request for `pod`: its namespace, `spec.podName`, and the labels
    /// `relaunch.dev/node-name` (when the pod is scheduled) and `relaunch.dev/pod-uid`. Admission
    /// adds labels that are missing; set here, the agent sees the request at once (it acts on it
    /// only once the coordinator admitted it, see [`ContainerRecreateRequest::is_admitted`]).
    pub fn for_pod(pod: &Pod) -> RecreateRequestBuilder {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        Self::for_pod_of(&pod.metadata, node)
    }

    /// [`Self::for_pod`] from the pod's metadata and `spec.nodeName` alone (what a cache that
    /// does not hold whole pods has).
    pub fn for_pod_of(metadata: &ObjectMeta, node_name: Option<&str>) -> RecreateRequestBuilder {
        let mut labels = BTreeMap::new();
        if let Some(node) = node_name.filter(|n| !n.is_empty()) {
            labels.insert(LABEL_NODE_NAME.to_string(), node.to_string());
        }
        if let Some(uid) = metadata.uid.clone() {
            labels.insert(LABEL_POD_UID.to_string(), uid);
        }
        let request = ContainerRecreateRequest {
            metadata: ObjectMeta {
                namespace: metadata.namespace.clone(),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            spec: ContainerRecreateRequestSpec {
                pod_name: metadata.name.clone().unwrap_or_default(),
                ..ContainerRecreateRequestSpec::default()
            },
            status: None,
        };
        RecreateRequestBuilder { request }
    }
}

impl RecreateRequestBuilder {
    /// Names the request.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.request.metadata.name = Some(name.into());
        self
    }

    /// Lets the API server name the request: `prefix` and a random suffix.
    pub fn generate_name(mut self, prefix: impl Into<String>) -> Self {
        self.request.metadata.generate_name = Some(prefix.into());
        self
    }

    /// Puts the request in `namespace` instead of the pod's (for a pod object without one).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.request.metadata.namespace = Some(namespace.into());
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.request
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }

    /// Adds an owner (a RollingRestart owns the requests it creates).
    pub fn owner(mut self, owner: OwnerReference) -> Self {
        self.request
            .metadata
            .owner_references
            .get_or_insert_with(Vec::new)
            .push(owner);
        self
    }

    /// Adds container `name` to recreate, after the ones added before, with its shutdown
    /// action (None: its preStop hook).
    pub fn container(mut self, name: impl Into<String>, shutdown: Option<ShutdownAction>) -> Self {
        self.request
            .spec
            .containers
            .push(ContainerRecreateRequestContainer {
                name: name.into(),
                shutdown,
            });
        self
    }

    /// Sets how the containers are recreated.
    pub fn strategy(mut self, strategy: Option<ContainerRecreateRequestStrategy>) -> Self {
        self.request.spec.strategy = strategy;
        self
    }

    /// Sets `activeDeadlineSeconds`.
    pub fn active_deadline_seconds(mut self, seconds: Option<i64>) -> Self {
        self.request.spec.active_deadline_seconds = seconds;
        self
    }

    /// The request.
    pub fn build(self) -> ContainerRecreateRequest {
        self.request
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(node: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "db-0", "namespace": "data", "uid": "u-1"},
            "spec": {"nodeName": node, "containers": [{"name": "db"}]},
        }))
        .unwrap()
    }

    #[test]
    fn a_request_for_a_pod_is_labelled_with_its_node_and_uid() {
        let request = ContainerRecreateRequest::for_pod(&pod(Some("node-1")))
            .name("r")
            .container("db", None)
            .build();
        assert_eq!(request.metadata.name.as_deref(), Some("r"));
        assert_eq!(request.metadata.namespace.as_deref(), Some("data"));
        assert_eq!(
            request.metadata.labels,
            Some(BTreeMap::from([
                (LABEL_NODE_NAME.to_string(), "node-1".to_string()),
                (LABEL_POD_UID.to_string(), "u-1".to_string()),
            ]))
        );
        assert_eq!(request.spec.pod_name, "db-0");
        assert_eq!(request.spec.containers.len(), 1);
        assert_eq!(request.status, None);
    }

    #[test]
    fn an_unscheduled_pod_gets_no_node_label() {
        let request = ContainerRecreateRequest::for_pod(&pod(None))
            .generate_name("db-0-")
            .build();
        let labels = request.metadata.labels.unwrap_or_default();
        assert!(!labels.contains_key(LABEL_NODE_NAME));
        assert_eq!(labels[LABEL_POD_UID], "u-1");
        assert_eq!(request.metadata.name, None);
        assert_eq!(request.metadata.generate_name.as_deref(), Some("db-0-"));
    }

    #[test]
    fn labels_owners_and_containers_add_up_in_order() {
        let owner = OwnerReference {
            api_version: "relaunch.dev/v1alpha1".into(),
            kind: "RollingRestart".into(),
            name: "roll".into(),
            uid: "r-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let request = ContainerRecreateRequest::for_pod(&pod(Some("node-1")))
            .label("relaunch.dev/rolling-restart", "roll")
            .owner(owner.clone())
            .container("db", None)
            .container("exporter", None)
            .active_deadline_seconds(Some(600))
            .build();
        let labels = request.metadata.labels.unwrap_or_default();
        assert_eq!(labels.len(), 3);
        assert_eq!(request.metadata.owner_references, Some(vec![owner]));
        let names: Vec<&str> = request
            .spec
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["db", "exporter"]);
        assert_eq!(request.spec.active_deadline_seconds, Some(600));
    }
}
