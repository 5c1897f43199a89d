//! The ScaleDown controller's writes besides status: lowering a StatefulSet's replicas (only
//! at the version the decision was taken on) and deleting a claim (only with its UID).

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::{Api, ResourceExt};
use serde_json::json;

use relaunch_api::{ClaimRef, Drain, ScaleDown};

use super::Cluster;
use crate::error::ClusterError;

impl Cluster {
    /// The ScaleDown, if it exists (the report API reads it afresh).
    pub async fn get_scaledown(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ScaleDown>, ClusterError> {
        Ok(Api::<ScaleDown>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await?)
    }

    /// The ScaleDowns of `namespace` (none when their CRD is not installed).
    pub async fn list_scaledowns(&self, namespace: &str) -> Result<Vec<ScaleDown>, ClusterError> {
        match Api::<ScaleDown>::namespaced(self.client.clone(), namespace)
            .list(&ListParams::default())
            .await
        {
            Ok(list) => Ok(list.items),
            Err(e) => match ClusterError::from(e) {
                e if e.is_not_found() => Ok(Vec::new()),
                e => Err(e),
            },
        }
    }

    /// Sets `spec.replicas` of `sts` to `to`, only if it is still at the version read (409
    /// otherwise: decide again on fresh data).
    pub async fn set_replicas(&self, sts: &StatefulSet, to: i32) -> Result<(), ClusterError> {
        self.may_write()?;
        let patch = json!({
            "metadata": {"resourceVersion": sts.resource_version()},
            "spec": {"replicas": to},
        });
        self.api_of(sts)
            .patch(
                &sts.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        Ok(())
    }

    /// Deletes claim `claim` in `namespace`, only if it still has the recorded UID; one that is
    /// gone counts as deleted.
    pub async fn delete_claim(
        &self,
        namespace: &str,
        claim: &ClaimRef,
    ) -> Result<(), ClusterError> {
        self.may_write()?;
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(claim.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        let api = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), namespace);
        match api.delete(&claim.name, &params).await {
            Ok(_) => Ok(()),
            Err(e) => match ClusterError::from(e) {
                ClusterError::NotFound(_) => Ok(()),
                e => Err(e),
            },
        }
    }

    /// The API client (for namespaced APIs of the drain controller).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Creates the Drain record; one that exists already counts as created.
    pub async fn create_drain(&self, api: &Api<Drain>, drain: &Drain) -> Result<(), ClusterError> {
        self.may_write()?;
        match api.create(&kube::api::PostParams::default(), drain).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates a drain pod; false if a pod of that name exists already.
    pub async fn create_pod(&self, namespace: &str, pod: &Pod) -> Result<bool, ClusterError> {
        self.may_write()?;
        let api = Api::<Pod>::namespaced(self.client.clone(), namespace);
        match api.create(&kube::api::PostParams::default(), pod).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes pod `name` in `namespace`, only if it still has `uid`; one that is gone counts
    /// as deleted.
    pub async fn delete_pod(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<(), ClusterError> {
        self.may_write()?;
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..Default::default()
        };
        let api = Api::<Pod>::namespaced(self.client.clone(), namespace);
        match api.delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(e) => match ClusterError::from(e) {
                ClusterError::NotFound(_) => Ok(()),
                e => Err(e),
            },
        }
    }
}
