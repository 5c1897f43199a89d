//! Services in the sandbox as a cluster has them: a ClusterIP from the service range, shown by
//! kubectl; EndpointSlices that follow pod readiness; connections to `ClusterIP:port` reaching
//! a Ready pod; cluster DNS answering Service names inside pods; the `kubernetes` Service
//! pointing at the API server. Needs root, kubectl and the Python client.

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use relaunch_cri::RuntimeClient;
use relaunch_testbed::{TEST_IMAGE, free_port};
use serde_json::{Value, json};
use support::{Bed, WAIT, eventually};

const TIMEOUT: Duration = Duration::from_secs(30);

/// `kubectl ARGS` against the bed: stdout, or the test fails with what kubectl printed.
async fn kubectl(bed: &Bed, args: &[&str]) -> String {
    let kubeconfig = bed.sandbox.kubeconfig_path();
    let out = support::output(support::kubectl(&kubeconfig, bed.dir(), args)).await;
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        support::printed(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn kubectl_json(bed: &Bed, args: &[&str]) -> Value {
    serde_json::from_str(&kubectl(bed, args).await).unwrap()
}

/// Applies YAML `manifest` (written to the bed's directory as `name`).
async fn apply(bed: &Bed, name: &str, manifest: &str, namespace: &str) {
    let path = bed.dir().join(name);
    std::fs::write(&path, manifest).unwrap();
    kubectl(
        bed,
        &["apply", "-n", namespace, "-f", path.to_str().unwrap()],
    )
    .await;
}

/// A web pod on `node` (host network, so its IP is the node's) serving its own name over HTTP
/// on `ip:port` (busybox httpd), Ready while `/tmp/ready` exists.
fn web_pod(name: &str, node: &str, ip: Ipv4Addr, port: u16) -> Value {
    let script = format!(
        "mkdir -p /tmp/www && echo {name} > /tmp/www/index.html && touch /tmp/ready \
         && exec httpd -f -p {ip}:{port} -h /tmp/www"
    );
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"nodeName": node, "containers": [{
            "name": "web", "image": TEST_IMAGE, "command": ["sh", "-c", script],
            "ports": [{"name": "http", "containerPort": port}],
            "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1},
        }]},
    })
}

/// Runs `command` in the first container of `pod`; its stdout.
async fn exec(bed: &Bed, pod: &Pod, command: &[&str]) -> String {
    let id = pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .container_id
        .clone()
        .unwrap();
    let id = id.trim_start_matches("containerd://");
    let runtime: RuntimeClient = bed.sandbox.containerd().client().await.unwrap();
    let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    let out = runtime
        .exec_sync(id, &command, Duration::from_secs(10), 1 << 16)
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `(address, ready)` endpoints of Service `web`'s slices.
async fn web_endpoints(bed: &Bed) -> Vec<(String, bool)> {
    let slices = kubectl_json(
        bed,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "json",
        ],
    )
    .await;
    let mut endpoints: Vec<(String, bool)> = slices["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            (
                e["addresses"][0].as_str().unwrap().to_string(),
                e["conditions"]["ready"] == true,
            )
        })
        .collect();
    endpoints.sort();
    endpoints
}

/// Which pods answer `count` requests to `addr` (their names, deduplicated).
async fn answering_pods(addr: SocketAddr, count: usize) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..count {
        if let Some((200, body)) = support::http_get(addr, "/").await {
            names.push(body.trim().to_string());
        }
    }
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_ip_traffic_reaches_only_ready_pods_as_endpoint_slices_follow_readiness() {
    let bed = Bed::without_relaunch(2).await;
    let (node1, node2) = (&bed.sandbox.nodes[0], &bed.sandbox.nodes[1]);
    let port = free_port(node1.ip).unwrap();
    bed.create::<Pod>(web_pod("web-1", &node1.name, node1.ip, port))
        .await;
    bed.create::<Pod>(web_pod("web-2", &node2.name, node2.ip, port))
        .await;
    apply(
        &bed,
        "web-service.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  \
         ports: [{name: http, port: 80, targetPort: http}]\n",
        "default",
    )
    .await;

    // The ClusterIP comes from the sandbox's range, and kubectl prints it.
    let service = kubectl_json(&bed, &["get", "svc", "web", "-o", "json"]).await;
    let cluster_ip: Ipv4Addr = service["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(bed.sandbox.service_range().contains(cluster_ip));
    assert_eq!(
        service["spec"]["clusterIPs"],
        json!([cluster_ip.to_string()])
    );
    let table = kubectl(&bed, &["get", "svc", "web"]).await;
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row[..5],
        [
            "web",
            "ClusterIP",
            &cluster_ip.to_string(),
            "<none>",
            "80/TCP"
        ],
        "{table}"
    );

    // Both pods Ready: both endpoints ready, on the pods' container port.
    let web1 = bed.ready_pod("web-1").await;
    let web2 = bed.ready_pod("web-2").await;
    let both = vec![(node1.ip.to_string(), true), (node2.ip.to_string(), true)];
    eventually("both endpoints ready", WAIT, || async {
        (web_endpoints(&bed).await == both).then_some(())
    })
    .await
    .unwrap();
    let slice = kubectl_json(
        &bed,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "json",
        ],
    )
    .await;
    let slice = &slice["items"][0];
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(
        slice["ports"],
        json!([{"name": "http", "port": port, "protocol": "TCP"}])
    );
    assert_eq!(slice["metadata"]["ownerReferences"][0]["name"], "web");

    // Connections to the ClusterIP spread over both pods.
    let service_addr = SocketAddr::from((cluster_ip, 80));
    let answering = eventually(
        "both pods answering through the ClusterIP",
        TIMEOUT,
        || async {
            let names = answering_pods(service_addr, 10).await;
            (names.len() == 2).then_some(names)
        },
    )
    .await
    .unwrap();
    assert_eq!(answering, ["web-1", "web-2"]);

    // web-2 not Ready: its endpoint stays, not ready, and gets no more traffic.
    exec(&bed, &web2, &["rm", "/tmp/ready"]).await;
    let one = vec![(node1.ip.to_string(), true), (node2.ip.to_string(), false)];
    eventually("web-2's endpoint not ready", WAIT, || async {
        (web_endpoints(&bed).await == one).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(answering_pods(service_addr, 20).await, ["web-1"]);

    // Ready again: traffic returns to it.
    exec(&bed, &web2, &["touch", "/tmp/ready"]).await;
    eventually("web-2's endpoint ready again", WAIT, || async {
        (web_endpoints(&bed).await == both).then_some(())
    })
    .await
    .unwrap();
    eventually("web-2 answering again", TIMEOUT, || async {
        answering_pods(service_addr, 10)
            .await
            .contains(&"web-2".to_string())
            .then_some(())
    })
    .await
    .unwrap();

    // No Ready pod: the connection is refused rather than left hanging.
    exec(&bed, &web1, &["rm", "/tmp/ready"]).await;
    exec(&bed, &web2, &["rm", "/tmp/ready"]).await;
    eventually("no endpoint ready", WAIT, || async {
        web_endpoints(&bed)
            .await
            .iter()
            .all(|(_, ready)| !ready)
            .then_some(())
    })
    .await
    .unwrap();
    assert!(answering_pods(service_addr, 3).await.is_empty());

    // Deleting the Service removes its slices and frees its address.
    kubectl(&bed, &["delete", "svc", "web"]).await;
    eventually("web's slices gone", TIMEOUT, || async {
        web_endpoints(&bed).await.is_empty().then_some(())
    })
    .await
    .unwrap();
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_dns_resolves_services_in_pods_and_the_kubernetes_service_reaches_the_api() {
    let bed = Bed::without_relaunch(1).await;
    let range = bed.sandbox.service_range();
    let dns = bed.sandbox.dns_address();
    assert_eq!(dns, range.dns_ip());

    // The `kubernetes` Service, as kube-apiserver makes it: the range's first address, port 443,
    // its EndpointSlice naming the API server; and traffic to it reaches the API server.
    let kubernetes = kubectl_json(
        &bed,
        &["get", "svc", "kubernetes", "-n", "default", "-o", "json"],
    )
    .await;
    assert_eq!(
        kubernetes["spec"]["clusterIP"],
        range.kubernetes_ip().to_string()
    );
    assert_eq!(kubernetes["spec"]["ports"][0]["port"], 443);
    let slice = kubectl_json(
        &bed,
        &[
            "get",
            "endpointslice",
            "kubernetes",
            "-n",
            "default",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(slice["endpoints"][0]["addresses"], json!(["127.0.0.1"]));
    let api_through_service = SocketAddr::from((range.kubernetes_ip(), 443));
    let (code, body) = eventually(
        "the API server through the kubernetes Service",
        TIMEOUT,
        || support::http_get(api_through_service, "/version"),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("gitVersion"), "{body}");

    // The coordinator's Service from the shipped manifests, resolvable as the agents name it.
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/base");
    kubectl(
        &bed,
        &[
            "apply",
            "-f",
            manifests.join("namespace.yaml").to_str().unwrap(),
        ],
    )
    .await;
    kubectl(
        &bed,
        &[
            "apply",
            "-n",
            "relaunch-system",
            "-f",
            manifests.join("coordinator-service.yaml").to_str().unwrap(),
        ],
    )
    .await;
    let coordinator = kubectl_json(
        &bed,
        &[
            "get",
            "svc",
            "relaunch-coordinator",
            "-n",
            "relaunch-system",
            "-o",
            "json",
        ],
    )
    .await;
    let coordinator_ip = coordinator["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();

    // Inside a pod, busybox's nslookup asks the cluster DNS.
    let node = &bed.sandbox.nodes[0].name;
    let pod = bed
        .pod(
            "client",
            Some(node),
            json!({"containers": [support::container("client", support::DATABASE)]}),
        )
        .await;
    for name in [
        "relaunch-coordinator.relaunch-system.svc",
        "relaunch-coordinator.relaunch-system.svc.cluster.local",
    ] {
        let printed = exec(&bed, &pod, &["nslookup", "-type=a", name, &dns.to_string()]).await;
        assert!(
            printed.contains(&format!("Address: {coordinator_ip}")),
            "nslookup {name}:\n{printed}"
        );
    }
    let printed = exec(
        &bed,
        &pod,
        &[
            "nslookup",
            "-type=a",
            "kubernetes.default.svc.cluster.local",
            &dns.to_string(),
        ],
    )
    .await;
    assert!(
        printed.contains(&format!("Address: {}", range.kubernetes_ip())),
        "{printed}"
    );
    let printed = exec(
        &bed,
        &pod,
        &[
            "nslookup",
            "-type=a",
            "missing.default.svc.cluster.local",
            &dns.to_string(),
        ],
    )
    .await;
    assert!(printed.contains("NXDOMAIN"), "{printed}");

    // The Python client reads Services and EndpointSlices into its typed models.
    let script = r#"
import sys
from kubernetes import client, config
config.load_kube_config(sys.argv[1])
svc = client.CoreV1Api().read_namespaced_service("relaunch-coordinator", "relaunch-system")
print(svc.spec.cluster_ip, ",".join(f"{p.name}:{p.port}" for p in svc.spec.ports))
slices = client.DiscoveryV1Api().list_namespaced_endpoint_slice("default")
print(" ".join(s.metadata.name for s in slices.items))
"#;
    let mut python = Command::new(support::python("kubernetes"));
    python
        .args(["-c", script])
        .arg(bed.sandbox.kubeconfig_path());
    let out = support::output(python).await;
    assert!(out.status.success(), "{}", support::printed(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.starts_with(&format!("{coordinator_ip} https:8443,admin:8080\n")),
        "{printed}"
    );
    assert!(printed.contains("kubernetes"), "{printed}");
    bed.shutdown().await;
}
