//! A stand-in for the PersistentVolume controller: every claim is bound at once to a volume named
//! `pvc-<uid>`, as dynamic provisioning names them. The storage itself is a host directory the
//! kubelet simulator creates per claim; no PersistentVolume object is made.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimStatus};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use tracing::{debug, info, warn};

use super::is_benign;

/// The annotations the PV controller leaves on a claim it bound.
const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";

/// What binding a claim writes: `spec.volumeName` and annotations, then the status.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimBinding {
    pub volume_name: String,
    pub annotations: BTreeMap<String, String>,
    pub status: PersistentVolumeClaimStatus,
}

/// How to bind `claim`, or None if it is already Bound, being deleted, or has no uid yet.
pub fn claim_binding(claim: &PersistentVolumeClaim) -> Option<ClaimBinding> {
    let phase = claim.status.as_ref().and_then(|s| s.phase.as_deref());
    if phase == Some("Bound") || claim.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let spec = claim.spec.as_ref();
    let volume_name = spec
        .and_then(|s| s.volume_name.clone())
        .filter(|name| !name.is_empty())
        .or_else(|| Some(format!("pvc-{}", claim.uid()?)))?;
    let annotations = [BIND_COMPLETED, BOUND_BY_CONTROLLER]
        .into_iter()
        .map(|key| (key.to_string(), "yes".to_string()))
        .collect();
    let status = PersistentVolumeClaimStatus {
        phase: Some("Bound".into()),
        access_modes: spec.and_then(|s| s.access_modes.clone()),
        capacity: spec
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.clone()),
        ..Default::default()
    };
    Some(ClaimBinding {
        volume_name,
        annotations,
        status,
    })
}

/// The I/O shell: binds every claim the cache shows unbound.
#[derive(Clone)]
pub(super) struct ClaimBinder {
    client: Client,
    claims: Store<PersistentVolumeClaim>,
}

impl ClaimBinder {
    pub(super) fn new(client: Client, claims: Store<PersistentVolumeClaim>) -> Self {
        Self { client, claims }
    }

    /// One pass over every claim; false if any write failed.
    pub(super) async fn sync_all(&self) -> bool {
        let mut healthy = true;
        for claim in self.claims.state() {
            let Some(binding) = claim_binding(&claim) else {
                continue;
            };
            let key = format!(
                "{}/{}",
                claim.namespace().unwrap_or_default(),
                claim.name_any()
            );
            match self.bind(&claim, binding).await {
                Ok(()) => info!(claim = %key, "bound"),
                Err(error) if is_benign(&error) => debug!(claim = %key, %error, "claim changed"),
                Err(error) => {
                    warn!(claim = %key, %error, "binding failed; will retry");
                    healthy = false;
                }
            }
        }
        healthy
    }

    async fn bind(
        &self,
        claim: &PersistentVolumeClaim,
        binding: ClaimBinding,
    ) -> Result<(), kube::Error> {
        let namespace = claim.namespace().unwrap_or_default();
        let api = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), &namespace);
        let name = claim.name_any();
        let params = PatchParams::default();
        let already_named = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref())
            == Some(&binding.volume_name);
        if !already_named {
            let patch = serde_json::json!({
                "metadata": { "annotations": binding.annotations },
                "spec": { "volumeName": binding.volume_name },
            });
            api.patch(&name, &params, &Patch::Merge(patch)).await?;
        }
        let patch = serde_json::json!({ "status": binding.status });
        api.patch_status(&name, &params, &Patch::Merge(patch))
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, VolumeResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn claim(phase: Option<&str>) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data-web-0".into()),
                namespace: Some("default".into()),
                uid: Some("1234".into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some([("storage".to_string(), Quantity("1Gi".into()))].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: phase.map(|p| PersistentVolumeClaimStatus {
                phase: Some(p.into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn binds_a_pending_claim_to_a_volume_named_after_its_uid() {
        let binding = claim_binding(&claim(Some("Pending"))).unwrap();
        assert_eq!(binding.volume_name, "pvc-1234");
        assert_eq!(binding.status.phase.as_deref(), Some("Bound"));
        assert_eq!(
            binding.status.access_modes,
            Some(vec!["ReadWriteOnce".to_string()])
        );
        assert_eq!(
            binding.status.capacity,
            Some([("storage".to_string(), Quantity("1Gi".into()))].into())
        );
        assert_eq!(
            binding.annotations.get(BIND_COMPLETED).map(String::as_str),
            Some("yes")
        );
    }

    #[test]
    fn binds_a_claim_without_status() {
        assert!(claim_binding(&claim(None)).is_some());
    }

    #[test]
    fn keeps_a_volume_name_already_chosen() {
        let mut named = claim(None);
        named.spec.as_mut().unwrap().volume_name = Some("pv-static".into());
        assert_eq!(claim_binding(&named).unwrap().volume_name, "pv-static");
    }

    #[test]
    fn leaves_bound_deleting_and_uid_less_claims_alone() {
        assert_eq!(claim_binding(&claim(Some("Bound"))), None);
        let mut deleting = claim(None);
        deleting.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(claim_binding(&deleting), None);
        let mut fresh = claim(None);
        fresh.metadata.uid = None;
        assert_eq!(claim_binding(&fresh), None);
    }
}
