//! The StatefulSet controller, claim binder and scheduler against the test API server (no
//! kubelet: pods are bound but never run).

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use relaunch_testbed::Controllers;
use support::{TestApi, eventually};

const TIMEOUT: Duration = Duration::from_secs(20);

async fn ready_node(client: &kube::Client, name: &str, labels: serde_json::Value) {
    let nodes = Api::<Node>::all(client.clone());
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": name, "labels": labels },
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let status = serde_json::json!({ "status": { "conditions": [
        { "type": "Ready", "status": "True" }
    ] } });
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
}

fn statefulset(replicas: i32) -> StatefulSet {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": { "name": "web", "namespace": "default" },
        "spec": {
            "replicas": replicas,
            "podManagementPolicy": "Parallel",
            "serviceName": "web",
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "main", "image": "busybox" }] },
            },
            "volumeClaimTemplates": [{
                "metadata": { "name": "data" },
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": { "requests": { "storage": "1Gi" } },
                },
            }],
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn statefulset_pods_are_created_bound_spread_and_recreated() {
    let api = TestApi::start().await;
    let client = api.client.clone();
    ready_node(&client, "node-a", serde_json::json!({})).await;
    ready_node(&client, "node-b", serde_json::json!({})).await;
    let controllers = Controllers::start(client.clone()).await.unwrap();

    let sets = Api::<StatefulSet>::namespaced(client.clone(), "default");
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default");
    sets.create(&PostParams::default(), &statefulset(2))
        .await
        .unwrap();

    let placed = eventually("both pods bound to nodes", TIMEOUT, || async {
        let mut nodes = Vec::new();
        for name in ["web-0", "web-1"] {
            let pod = pods.get_opt(name).await.ok()??;
            nodes.push(pod.spec?.node_name?);
        }
        Some(nodes)
    })
    .await
    .unwrap();
    assert_ne!(placed[0], placed[1], "pods are spread over the nodes");

    let pod = pods.get("web-0").await.unwrap();
    let labels = pod.labels();
    assert_eq!(
        labels
            .get("statefulset.kubernetes.io/pod-name")
            .map(String::as_str),
        Some("web-0")
    );
    assert_eq!(
        labels
            .get("apps.kubernetes.io/pod-index")
            .map(String::as_str),
        Some("0")
    );
    assert!(
        labels
            .get("controller-revision-hash")
            .is_some_and(|r| r.starts_with("web-"))
    );
    let volumes = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap();
    assert_eq!(
        volumes[0]
            .persistent_volume_claim
            .as_ref()
            .unwrap()
            .claim_name,
        "data-web-0"
    );

    for name in ["data-web-0", "data-web-1"] {
        let claim = eventually("claim bound", TIMEOUT, || async {
            let claim = claims.get_opt(name).await.ok()??;
            let bound = claim.status.as_ref()?.phase.as_deref() == Some("Bound");
            bound.then_some(claim)
        })
        .await
        .unwrap();
        let volume = claim.spec.as_ref().unwrap().volume_name.clone();
        assert_eq!(volume, Some(format!("pvc-{}", claim.uid().unwrap())));
    }

    eventually("status to count two replicas", TIMEOUT, || async {
        let status = sets.get("web").await.ok()?.status?;
        (status.replicas == 2 && status.update_revision.is_some()).then_some(())
    })
    .await
    .unwrap();

    // Deleted with grace 0, as the kubelet confirms a deletion.
    let old_uid = pod.uid().unwrap();
    pods.delete("web-0", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually("web-0 to be recreated", TIMEOUT, || async {
        let pod = pods.get_opt("web-0").await.ok()??;
        (pod.uid()? != old_uid && pod.metadata.deletion_timestamp.is_none()).then_some(())
    })
    .await
    .unwrap();

    controllers.shutdown().await;
    api.server.shutdown().await;
}

#[tokio::test]
async fn a_pod_that_fits_nowhere_is_marked_unschedulable() {
    let api = TestApi::start().await;
    let client = api.client.clone();
    ready_node(&client, "node-a", serde_json::json!({ "disk": "hdd" })).await;
    let controllers = Controllers::start(client.clone()).await.unwrap();

    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "picky" },
        "spec": {
            "nodeSelector": { "disk": "ssd" },
            "containers": [{ "name": "main", "image": "busybox" }],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();

    let message = eventually("PodScheduled=False", TIMEOUT, || async {
        let pod = pods.get("picky").await.ok()?;
        let condition = pod
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
        (condition.reason.as_deref() == Some("Unschedulable")).then_some(condition.message?)
    })
    .await
    .unwrap();
    assert!(
        message.contains("didn't match Pod's node affinity/selector"),
        "{message}"
    );

    // A matching node appears: the pod is retried and bound.
    ready_node(&client, "node-b", serde_json::json!({ "disk": "ssd" })).await;
    let node = eventually("picky to be bound", TIMEOUT, || async {
        pods.get("picky").await.ok()?.spec?.node_name
    })
    .await
    .unwrap();
    assert_eq!(node, "node-b");

    controllers.shutdown().await;
    api.server.shutdown().await;
}
