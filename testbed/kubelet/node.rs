//! Registering the simulated node, as the kubelet does at start.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use super::KubeletConfig;
use crate::TestbedError;
use relaunch_cri::RuntimeClient;

/// The Node object the kubelet registers: Ready, with the node IP as InternalIP.
pub fn node_object(config: &KubeletConfig, runtime_version: &str, now: Time) -> Node {
    let labels = BTreeMap::from([
        (
            "kubernetes.io/hostname".to_string(),
            config.node_name.clone(),
        ),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        (
            "kubernetes.io/arch".to_string(),
            std::env::consts::ARCH.replace("x86_64", "amd64"),
        ),
    ]);
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity("2".into())),
        ("memory".to_string(), Quantity("4Gi".into())),
        ("pods".to_string(), Quantity("110".into())),
    ]);
    Node {
        metadata: ObjectMeta {
            name: Some(config.node_name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: None,
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: config.node_ip.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: config.node_name.clone(),
                },
            ]),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: Some("KubeletReady".into()),
                message: Some("kubelet is posting ready status".into()),
                last_heartbeat_time: Some(now.clone()),
                last_transition_time: Some(now),
            }]),
            capacity: Some(resources.clone()),
            allocatable: Some(resources),
            node_info: Some(NodeSystemInfo {
                architecture: "amd64".into(),
                container_runtime_version: runtime_version.to_string(),
                kubelet_version: "v1.33.0".into(),
                kube_proxy_version: String::new(),
                operating_system: "linux".into(),
                os_image: "relaunch test bed".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Creates the Node (or takes over an existing one) and writes its status.
pub async fn register(
    client: &kube::Client,
    runtime: &RuntimeClient,
    config: &KubeletConfig,
) -> Result<(), TestbedError> {
    let version = runtime.version().await?;
    let runtime_version = format!("{}://{}", version.runtime_name, version.runtime_version);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let node = node_object(config, &runtime_version, now);
    let api: Api<Node> = Api::all(client.clone());
    let failed = |what: &str, e: kube::Error| {
        TestbedError::Setup(format!("{what} node {} failed: {e}", config.node_name))
    };
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => return Err(failed("registering", e)),
    }
    let status = json!({ "status": node.status });
    api.patch_status(
        &config.node_name,
        &PatchParams::default(),
        &Patch::Strategic(&status),
    )
    .await
    .map_err(|e| failed("writing the status of", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::path::Path;

    #[test]
    fn node_is_ready_with_its_loopback_address() {
        let config = KubeletConfig::new("node-a", Ipv4Addr::new(127, 0, 0, 2), Path::new("/tmp/x"));
        let node = node_object(
            &config,
            "containerd://2.0",
            Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        );
        let status = node.status.unwrap();
        let addresses = status.addresses.unwrap();
        assert_eq!(addresses[0].type_, "InternalIP");
        assert_eq!(addresses[0].address, "127.0.0.2");
        let ready = &status.conditions.unwrap()[0];
        assert_eq!(
            (ready.type_.as_str(), ready.status.as_str()),
            ("Ready", "True")
        );
        assert_eq!(
            status.node_info.unwrap().container_runtime_version,
            "containerd://2.0"
        );
    }
}
