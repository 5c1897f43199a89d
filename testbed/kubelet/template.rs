//! From a pod's container spec to the CRI container the kubelet creates, and where its volumes
//! live on the node.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, Volume};

use super::volumes;
use crate::pod::{ContainerTemplate, PodIdentity};

/// The pod's identity as the runtime gets it.
pub fn identity(pod: &Pod) -> PodIdentity {
    PodIdentity {
        name: pod.metadata.name.clone().unwrap_or_default(),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
    }
}

/// The directory of an `emptyDir` volume.
pub fn empty_dir(volume_root: &Path, uid: &str, volume: &str) -> PathBuf {
    pod_volumes_dir(volume_root, uid).join(volume)
}

/// All `emptyDir` volumes of a pod live here; removed with the pod.
pub fn pod_volumes_dir(volume_root: &Path, uid: &str) -> PathBuf {
    volume_root.join("pods").join(uid).join("volumes")
}

/// The directory behind a PersistentVolumeClaim; it outlives pods, like network storage.
pub fn claim_dir(volume_root: &Path, namespace: &str, claim: &str) -> PathBuf {
    volume_root.join("pvc").join(namespace).join(claim)
}

/// Where a `hostPath` volume's `path` is on this machine: the path itself, or with a node
/// filesystem root (`KubeletConfig::host_root`), the path under it, so that simulated nodes
/// sharing one machine each have their own `/var/lib/...`.
pub fn node_host_path(host_root: Option<&Path>, path: &str) -> PathBuf {
    match host_root {
        Some(root) => root.join(path.trim_start_matches('/')),
        None => PathBuf::from(path),
    }
}

/// The host directory of pod volume `volume`, if it is a kind the simulator supports.
pub fn volume_host_path(
    volume_root: &Path,
    host_root: Option<&Path>,
    pod: &Pod,
    volume: &Volume,
) -> Option<PathBuf> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    if volume.empty_dir.is_some() {
        Some(empty_dir(volume_root, uid, &volume.name))
    } else if let Some(claim) = &volume.persistent_volume_claim {
        Some(claim_dir(volume_root, namespace, &claim.claim_name))
    } else if volumes::is_api_data(volume) {
        // Filled by the atomic writer; per pod, like an emptyDir.
        Some(empty_dir(volume_root, uid, &volume.name))
    } else {
        volume
            .host_path
            .as_ref()
            .map(|h| node_host_path(host_root, &h.path))
    }
}

/// The container instance to create for `container` of `pod` with `restart_count`.
/// Volume mounts of unsupported volume kinds are left out.
pub fn container_template(
    pod: &Pod,
    container: &Container,
    restart_count: u32,
    volume_root: &Path,
    host_root: Option<&Path>,
) -> ContainerTemplate {
    let spec = pod.spec.as_ref();
    let volumes = spec.and_then(|s| s.volumes.as_ref());
    let mut read_only_mounts = Vec::new();
    let mounts = container
        .volume_mounts
        .iter()
        .flatten()
        .filter_map(|m| {
            let volume = volumes?.iter().find(|v| v.name == m.name)?;
            let mut host = volume_host_path(volume_root, host_root, pod, volume)?;
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                host = host.join(sub);
            }
            // API-data volumes are always read-only (the kubelet's ReadOnlyAPIDataVolumes).
            if m.read_only == Some(true) || volumes::is_api_data(volume) {
                read_only_mounts.push(m.mount_path.clone());
            }
            Some((host, m.mount_path.clone()))
        })
        .collect();
    ContainerTemplate {
        name: container.name.clone(),
        command: container.command.clone().unwrap_or_default(),
        args: container.args.clone().unwrap_or_default(),
        env: container
            .env
            .iter()
            .flatten()
            .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
            .collect(),
        restart_count,
        termination_grace_period_seconds: spec.and_then(|s| s.termination_grace_period_seconds),
        pre_stop_handler: container
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| serde_json::to_value(h).ok()),
        ports: container
            .ports
            .as_ref()
            .filter(|p| !p.is_empty())
            .and_then(|p| serde_json::to_value(p).ok()),
        mounts,
        read_only_mounts,
        spec_hash: None,
        security: None,
        image: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "db-0", "namespace": "shop", "uid": "u1"},
            "spec": {
                "terminationGracePeriodSeconds": 45,
                "volumes": [
                    {"name": "scratch", "emptyDir": {}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}},
                    {"name": "config", "configMap": {"name": "cfg"}},
                ],
                "containers": [{
                    "name": "db",
                    "args": ["60"],
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}],
                    "ports": [{"name": "pg", "containerPort": 5432}],
                    "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", "sleep 1"]}}},
                    "volumeMounts": [
                        {"name": "scratch", "mountPath": "/tmp/s"},
                        {"name": "data", "mountPath": "/data", "subPath": "pg"},
                        {"name": "config", "mountPath": "/etc/cfg"},
                    ],
                }],
            },
        }))
        .unwrap()
    }

    #[test]
    fn builds_the_kubelets_container_from_the_spec() {
        let p = pod();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let t = container_template(&p, c, 3, Path::new("/v"), None);
        assert_eq!(t.name, "db");
        assert!(t.command.is_empty(), "image entrypoint kept");
        assert_eq!(t.args, ["60"]);
        assert_eq!(t.env, [("A".to_string(), "1".to_string())]);
        assert_eq!(t.restart_count, 3);
        assert_eq!(t.termination_grace_period_seconds, Some(45));
        assert_eq!(
            t.pre_stop_handler,
            Some(json!({"exec": {"command": ["/bin/sh", "-c", "sleep 1"]}}))
        );
        assert_eq!(
            t.ports,
            Some(json!([{"name": "pg", "containerPort": 5432}]))
        );
        assert_eq!(
            t.mounts,
            [
                (
                    PathBuf::from("/v/pods/u1/volumes/scratch"),
                    "/tmp/s".to_string()
                ),
                (
                    PathBuf::from("/v/pvc/shop/data-db-0/pg"),
                    "/data".to_string()
                ),
                (
                    PathBuf::from("/v/pods/u1/volumes/config"),
                    "/etc/cfg".to_string()
                ),
            ]
        );
        assert_eq!(t.read_only_mounts, ["/etc/cfg"]);
    }
}
