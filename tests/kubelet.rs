//! The kubelet simulator against the test API server and a real containerd (needs root).

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use relaunch_cri::{ContainerState, RuntimeClient};
use relaunch_testbed::pod::{ContainerTemplate, PodIdentity};
use relaunch_testbed::{Containerd, CrashLoopBackoff, Kubelet, KubeletConfig};
use serde_json::json;
use support::{TestApi, eventually};

const NODE: &str = "node-a";
const NODE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const WAIT: Duration = Duration::from_secs(30);

/// One simulated node on its own: a private containerd, the test API server and one kubelet
/// simulator (no controllers, no scheduler); the kubelet's root is the API's directory.
struct Node {
    _containerd: Containerd,
    api: TestApi,
    runtime: RuntimeClient,
    pods: Api<Pod>,
    kubelet: Option<Kubelet>,
}

impl Node {
    async fn start(backoff: CrashLoopBackoff) -> Self {
        Self::start_with(backoff, None).await
    }

    /// With `cluster_dns` as the kubelet's `--cluster-dns`.
    async fn start_with(backoff: CrashLoopBackoff, cluster_dns: Option<Ipv4Addr>) -> Self {
        let containerd = Containerd::start().await.expect("start containerd");
        let runtime = containerd.client().await.expect("connect to containerd");
        let api = TestApi::start().await;
        let mut config = KubeletConfig::new(NODE, NODE_IP, api.dir());
        config.backoff = backoff;
        config.cluster_dns = cluster_dns;
        let kubelet = Kubelet::start(api.client.clone(), runtime.clone(), config)
            .await
            .expect("start kubelet");
        Self {
            _containerd: containerd,
            pods: Api::namespaced(api.client.clone(), "default"),
            api,
            runtime,
            kubelet: Some(kubelet),
        }
    }

    /// The kubelet's root directory (volumes, pod logs).
    fn root(&self) -> &std::path::Path {
        self.api.dir()
    }

    async fn create(&self, name: &str, spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        spec["nodeName"] = json!(NODE);
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        }))
        .unwrap();
        self.pods
            .create(&PostParams::default(), &pod)
            .await
            .expect("create pod")
    }

    /// Waits until `check` holds for the pod's current state; returns that state.
    async fn wait_pod(&self, name: &str, what: &str, check: impl Fn(&Pod) -> bool) -> Pod {
        eventually(what, WAIT, || async {
            let pod = self.pods.get(name).await.ok()?;
            check(&pod).then_some(pod)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn shutdown(mut self) {
        if let Some(k) = self.kubelet.take() {
            k.shutdown().await;
        }
    }
}

fn condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

fn container(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status.as_ref()?.container_statuses.as_ref()?.first()
}

fn container_id(pod: &Pod) -> Option<String> {
    let id = container(pod)?.container_id.as_ref()?;
    Some(id.strip_prefix("containerd://")?.to_string())
}

fn running(pod: &Pod) -> bool {
    container(pod)
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

#[tokio::test]
async fn runs_the_pods_containers_with_kubelet_labels_and_reports_it_ready() {
    let bed = Node::start(CrashLoopBackoff::default()).await;
    bed.create(
        "web-0",
        json!({"containers": [{"name": "web", "image": "busybox", "command": ["sleep", "100000"]}]}),
    )
    .await;
    let pod = bed
        .wait_pod("web-0", "pod Ready", |p| {
            condition(p, "Ready").as_deref() == Some("True")
        })
        .await;
    let status = pod.status.clone().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(status.pod_ip.as_deref(), Some("127.0.0.2"));
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.2"));
    let id = container_id(&pod).expect("container ID");
    let details = bed.runtime.container_status(&id).await.unwrap();
    assert_eq!(details.state, ContainerState::Running);
    assert_eq!(details.owner.pod_name, "web-0");
    assert_eq!(details.owner.pod_namespace, "default");
    assert_eq!(
        Some(details.owner.pod_uid.as_str()),
        pod.metadata.uid.as_deref()
    );
    assert_eq!(details.owner.container_name, "web");
    assert_eq!(details.annotations.restart_count, Some(0));

    // The kubelet lists only its own node's sandboxes and containers, as a real node's runtime
    // holds only its own: a container of another simulated node in the shared containerd, even
    // one claiming this pod's UID and container name at a later attempt, is not this pod's.
    // (Another name: the runtime reserves a sandbox name once per runtime.)
    let foreign = PodIdentity {
        name: "web-0-elsewhere".into(),
        namespace: "default".into(),
        uid: pod.metadata.uid.clone().unwrap(),
        node: Some("node-b".into()),
    };
    let foreign_root = bed.root().join("node-b-logs");
    let sandbox = relaunch_testbed::pod::run_pod_sandbox(&bed.runtime, &foreign, &foreign_root)
        .await
        .unwrap();
    let mut template = ContainerTemplate::shell("web", "sleep 100000");
    template.restart_count = 5;
    relaunch_testbed::pod::start_container(&bed.runtime, &sandbox, &foreign, &template)
        .await
        .unwrap();

    // Status is written only when it changes: several relists later, the object is untouched.
    let version = bed
        .pods
        .get("web-0")
        .await
        .unwrap()
        .metadata
        .resource_version;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = bed
        .pods
        .get("web-0")
        .await
        .unwrap()
        .metadata
        .resource_version;
    assert_eq!(version, later, "no status writes without a change");
    let now = bed.pods.get("web-0").await.unwrap();
    assert_eq!(container_id(&now).as_deref(), Some(id.as_str()));
    assert_eq!(container(&now).map(|c| c.restart_count), Some(0));
    bed.shutdown().await;
}

#[tokio::test]
async fn externally_stopped_container_restarts_at_once_then_after_back_off() {
    let backoff = CrashLoopBackoff {
        initial: Duration::from_secs(4),
        max: Duration::from_secs(8),
        reset_after: Duration::from_secs(16),
    };
    let bed = Node::start(backoff).await;
    bed.create(
        "db-0",
        json!({"containers": [{"name": "db", "image": "busybox", "command": ["sleep", "100000"]}]}),
    )
    .await;
    let pod = bed.wait_pod("db-0", "db running", running).await;
    let first = container_id(&pod).unwrap();

    bed.runtime
        .stop_container(&first, Duration::ZERO)
        .await
        .unwrap();
    let stopped = Instant::now();
    let pod = bed
        .wait_pod("db-0", "first restart", |p| {
            running(p) && container(p).is_some_and(|c| c.restart_count == 1)
        })
        .await;
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "first restart is immediate"
    );
    let c = container(&pod).unwrap();
    let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(last.exit_code, 137);
    assert_eq!(
        last.container_id.as_deref(),
        Some(format!("containerd://{first}").as_str())
    );

    let second = container_id(&pod).unwrap();
    bed.runtime
        .stop_container(&second, Duration::ZERO)
        .await
        .unwrap();
    let stopped = Instant::now();
    bed.wait_pod("db-0", "CrashLoopBackOff", |p| {
        container(p)
            .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
            .as_deref()
            == Some("CrashLoopBackOff")
    })
    .await;
    let pod = bed
        .wait_pod("db-0", "second restart", |p| {
            running(p) && container(p).is_some_and(|c| c.restart_count == 2)
        })
        .await;
    assert!(
        stopped.elapsed() >= Duration::from_secs(3),
        "second restart waited for the back-off"
    );
    // Only the newest exited instance is kept.
    let uid = pod.metadata.uid.clone().unwrap();
    let all = bed.runtime.pod_containers(&uid, Some("db")).await.unwrap();
    assert_eq!(all.len(), 2, "running + newest exited: {all:?}");
    bed.shutdown().await;
}

#[tokio::test]
async fn clean_exit_under_on_failure_is_not_restarted() {
    let bed = Node::start(CrashLoopBackoff::default()).await;
    bed.create(
        "job-0",
        json!({"restartPolicy": "OnFailure",
               "containers": [{"name": "job", "image": "busybox", "command": ["sh", "-c", "exit 0"]}]}),
    )
    .await;
    let pod = bed
        .wait_pod("job-0", "pod Succeeded", |p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
        })
        .await;
    let c = container(&pod).unwrap();
    assert_eq!(c.restart_count, 0);
    let t = c.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    bed.shutdown().await;
}

#[tokio::test]
async fn readiness_gate_holds_the_pod_not_ready_until_true() {
    let bed = Node::start(CrashLoopBackoff::default()).await;
    bed.create(
        "gated-0",
        json!({"readinessGates": [{"conditionType": "relaunch.dev/ready"}],
               "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "100000"]}]}),
    )
    .await;
    bed.wait_pod("gated-0", "containers ready, pod not ready", |p| {
        condition(p, "ContainersReady").as_deref() == Some("True")
            && condition(p, "Ready").as_deref() == Some("False")
    })
    .await;
    let gate =
        |v: &str| json!({"status": {"conditions": [{"type": "relaunch.dev/ready", "status": v}]}});
    bed.pods
        .patch_status(
            "gated-0",
            &PatchParams::default(),
            &Patch::Strategic(gate("True")),
        )
        .await
        .unwrap();
    let pod = bed
        .wait_pod("gated-0", "pod Ready", |p| {
            condition(p, "Ready").as_deref() == Some("True")
        })
        .await;
    assert_eq!(
        condition(&pod, "relaunch.dev/ready").as_deref(),
        Some("True")
    );
    bed.pods
        .patch_status(
            "gated-0",
            &PatchParams::default(),
            &Patch::Strategic(gate("False")),
        )
        .await
        .unwrap();
    bed.wait_pod("gated-0", "pod NotReady again", |p| {
        condition(p, "Ready").as_deref() == Some("False")
            && condition(p, "relaunch.dev/ready").as_deref() == Some("False")
    })
    .await;
    bed.shutdown().await;
}

#[tokio::test]
async fn exec_readiness_probe_decides_container_ready() {
    let bed = Node::start(CrashLoopBackoff::default()).await;
    bed.create(
        "probed-0",
        json!({"containers": [{"name": "app", "image": "busybox", "command": ["sleep", "100000"],
               "readinessProbe": {"exec": {"command": ["test", "-e", "/tmp/ready"]}, "periodSeconds": 1}}]}),
    )
    .await;
    let pod = bed.wait_pod("probed-0", "running", running).await;
    assert_eq!(condition(&pod, "Ready").as_deref(), Some("False"));
    let id = container_id(&pod).unwrap();
    bed.runtime
        .exec_sync(
            &id,
            &["touch".into(), "/tmp/ready".into()],
            Duration::from_secs(5),
            1024,
        )
        .await
        .unwrap();
    bed.wait_pod("probed-0", "pod Ready", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    bed.shutdown().await;
}

#[tokio::test]
async fn deleting_a_pod_runs_pre_stop_and_removes_everything_but_the_claim() {
    let bed = Node::start(CrashLoopBackoff::default()).await;
    let pod = bed
        .create(
            "db-1",
            json!({
                "terminationGracePeriodSeconds": 10,
                "volumes": [
                    {"name": "scratch", "emptyDir": {}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data-db-1"}},
                ],
                "containers": [{
                    "name": "db", "image": "busybox",
                    "command": ["sh", "-c", "echo hello > /scratch/x; sleep 100000"],
                    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"},
                                     {"name": "data", "mountPath": "/data"}],
                    "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "cp /scratch/x /data/prestop"]}}},
                }],
            }),
        )
        .await;
    let uid = pod.metadata.uid.clone().unwrap();
    bed.wait_pod("db-1", "db running", running).await;
    let empty_dir = bed
        .root()
        .join("volumes/pods")
        .join(&uid)
        .join("volumes/scratch");
    eventually("emptyDir written", WAIT, || async {
        empty_dir.join("x").exists().then_some(())
    })
    .await
    .unwrap();

    bed.pods
        .delete("db-1", &DeleteParams::default())
        .await
        .unwrap();
    eventually("pod object gone", WAIT, || async {
        matches!(bed.pods.get_opt("db-1").await, Ok(None)).then_some(())
    })
    .await
    .unwrap();
    let claim = bed.root().join("volumes/pvc/default/data-db-1/prestop");
    assert_eq!(
        std::fs::read_to_string(claim).unwrap(),
        "hello\n",
        "preStop ran"
    );
    assert!(!empty_dir.exists(), "emptyDir removed");
    assert!(
        bed.runtime
            .pod_containers(&uid, None)
            .await
            .unwrap()
            .is_empty()
    );
    bed.shutdown().await;
}

impl Node {
    /// Runs `command` in the pod's (first) container; its stdout.
    async fn exec(&self, pod: &Pod, command: &[&str]) -> String {
        let id = container_id(pod).expect("container ID");
        let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
        let out = self
            .runtime
            .exec_sync(&id, &command, Duration::from_secs(10), 1 << 20)
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn apply_json<K>(&self, object: serde_json::Value)
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.api.client.clone(), "default");
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        api.patch(
            &name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap();
    }
}

/// A container's environment as `env` prints it.
fn env_of(printed: &str) -> std::collections::BTreeMap<String, String> {
    printed
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn api_data_volumes_are_written_atomically_and_follow_their_objects() {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let bed = Node::start(CrashLoopBackoff::default()).await;
    bed.apply_json::<ConfigMap>(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cfg"}, "data": {"app.conf": "mode=fast", "other": "x"}}))
        .await;
    // stringData is merged into data by the API server.
    bed.apply_json::<Secret>(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "creds"}, "stringData": {"password": "s3cr3t"}}))
        .await;
    bed.create(
        "vol-0",
        json!({
            "volumes": [
                {"name": "cfg", "configMap": {"name": "cfg"}},
                {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
                {"name": "info", "downwardAPI": {"items": [
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                    {"path": "mem", "resourceFieldRef": {"containerName": "app", "resource": "limits.memory", "divisor": "1Mi"}}]}},
                {"name": "all", "projected": {"sources": [
                    {"configMap": {"name": "cfg", "items": [{"key": "app.conf", "path": "conf/app.conf"}]}},
                    {"secret": {"name": "creds"}},
                    {"serviceAccountToken": {"audience": "relaunch-coordinator", "expirationSeconds": 3600, "path": "token"}}]}},
            ],
            "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "100000"],
                "resources": {"limits": {"memory": "64Mi"}},
                "volumeMounts": [
                    {"name": "cfg", "mountPath": "/etc/cfg"},
                    {"name": "cfg", "mountPath": "/etc/app.conf", "subPath": "app.conf"},
                    {"name": "creds", "mountPath": "/etc/creds"},
                    {"name": "info", "mountPath": "/etc/info"},
                    {"name": "all", "mountPath": "/var/run/all"}]}],
        }),
    )
    .await;
    let pod = bed.wait_pod("vol-0", "pod running", running).await;
    assert_eq!(
        bed.exec(&pod, &["cat", "/etc/cfg/app.conf"]).await,
        "mode=fast"
    );
    assert_eq!(bed.exec(&pod, &["cat", "/etc/app.conf"]).await, "mode=fast");
    assert_eq!(
        bed.exec(&pod, &["cat", "/etc/creds/password"]).await,
        "s3cr3t"
    );
    assert_eq!(bed.exec(&pod, &["cat", "/etc/info/name"]).await, "vol-0");
    assert_eq!(bed.exec(&pod, &["cat", "/etc/info/mem"]).await, "64");
    assert_eq!(
        bed.exec(&pod, &["cat", "/var/run/all/conf/app.conf"]).await,
        "mode=fast"
    );
    assert_eq!(
        bed.exec(&pod, &["cat", "/var/run/all/password"]).await,
        "s3cr3t"
    );
    // The atomic writer's layout: entries are symlinks through ..data.
    assert_eq!(
        bed.exec(&pod, &["readlink", "/etc/cfg/app.conf"])
            .await
            .trim(),
        "..data/app.conf"
    );
    assert!(
        bed.exec(&pod, &["stat", "-L", "-c", "%a", "/etc/creds/password"])
            .await
            .starts_with("400")
    );
    // Read-only, as every API-data volume is.
    assert_eq!(
        bed.exec(
            &pod,
            &[
                "sh",
                "-c",
                "echo x > /etc/cfg/new 2>/dev/null || echo refused"
            ]
        )
        .await
        .trim(),
        "refused"
    );

    // The projected token is bound to the pod, with the asked audience.
    let token = bed.exec(&pod, &["cat", "/var/run/all/token"]).await;
    let review: serde_json::Value = {
        let reviews: Api<k8s_openapi::api::authentication::v1::TokenReview> =
            Api::all(bed.api.client.clone());
        let review: k8s_openapi::api::authentication::v1::TokenReview = serde_json::from_value(
            json!({"spec": {"token": token, "audiences": ["relaunch-coordinator"]}}),
        )
        .unwrap();
        serde_json::to_value(
            reviews
                .create(&PostParams::default(), &review)
                .await
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(review["status"]["authenticated"], true, "{review}");
    assert_eq!(
        review["status"]["user"]["username"],
        "system:serviceaccount:default:default"
    );
    assert_eq!(
        review["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["vol-0"])
    );

    // Changes reach the files (not the subPath mount), as one swap of ..data.
    let before = bed.exec(&pod, &["readlink", "/etc/cfg/..data"]).await;
    Api::<ConfigMap>::namespaced(bed.api.client.clone(), "default")
        .patch(
            "cfg",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"app.conf": "mode=slow", "other": null}})),
        )
        .await
        .unwrap();
    eventually("the configMap volume refreshed", WAIT, || async {
        (bed.exec(&pod, &["cat", "/etc/cfg/app.conf"]).await == "mode=slow").then_some(())
    })
    .await
    .unwrap();
    assert_ne!(
        bed.exec(&pod, &["readlink", "/etc/cfg/..data"]).await,
        before
    );
    assert_eq!(
        bed.exec(&pod, &["sh", "-c", "ls /etc/cfg"]).await.trim(),
        "app.conf",
        "a removed key is gone"
    );
    assert_eq!(bed.exec(&pod, &["cat", "/etc/app.conf"]).await, "mode=fast");
    eventually("the projected volume refreshed", WAIT, || async {
        (bed.exec(&pod, &["cat", "/var/run/all/conf/app.conf"]).await == "mode=slow").then_some(())
    })
    .await
    .unwrap();

    // A new container of the same pod sees the current content, the subPath mount included
    // (the kubelet re-binds a subPath whose file the atomic writer replaced, kubernetes PR 89629): a
    // restart in place on a configuration change relies on this.
    let old = container_id(&pod).unwrap();
    bed.runtime
        .stop_container(&old, Duration::from_secs(1))
        .await
        .unwrap();
    let pod = bed
        .wait_pod("vol-0", "the container restarted", |p| {
            running(p) && container_id(p).is_some_and(|id| id != old)
        })
        .await;
    assert_eq!(bed.exec(&pod, &["cat", "/etc/app.conf"]).await, "mode=slow");
    assert_eq!(
        bed.exec(&pod, &["cat", "/etc/cfg/app.conf"]).await,
        "mode=slow"
    );
    bed.shutdown().await;
}

#[tokio::test]
async fn a_missing_config_map_holds_the_container_until_it_exists() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let bed = Node::start(CrashLoopBackoff::default()).await;
    bed.create(
        "wait-0",
        json!({"volumes": [{"name": "cfg", "configMap": {"name": "later"}}],
               "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "100000"],
                               "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}]}]}),
    )
    .await;
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(bed.api.client.clone(), "default");
    eventually("a FailedMount event", WAIT, || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("FailedMount")
                    && e.message
                        .as_deref()
                        .is_some_and(|m| m.contains("configmap \"later\" not found"))
            })
            .then_some(())
    })
    .await
    .unwrap();
    let pod = bed.pods.get("wait-0").await.unwrap();
    assert!(
        !running(&pod),
        "no container before its volume can be set up"
    );
    bed.apply_json::<ConfigMap>(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "later"}, "data": {"k": "v"}}))
        .await;
    let pod = bed.wait_pod("wait-0", "pod running", running).await;
    assert_eq!(bed.exec(&pod, &["cat", "/etc/cfg/k"]).await, "v");
    bed.shutdown().await;
}

#[tokio::test]
async fn env_is_resolved_from_the_api_when_each_container_is_created() {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let bed = Node::start(CrashLoopBackoff::default()).await;
    bed.apply_json::<ConfigMap>(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cfg"}, "data": {"level": "3", "mode": "fast"}}))
        .await;
    bed.apply_json::<Secret>(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "creds"}, "data": {"password": "czNjcjN0"}}))
        .await;
    bed.create(
        "env-0",
        json!({"containers": [{"name": "app", "image": "busybox", "command": ["sleep", "100000"],
            "resources": {"requests": {"cpu": "250m"}},
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
            "env": [
                {"name": "PLAIN", "value": "1"},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "CPU_MILLIS", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
                {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "level"}}},
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            ]}]}),
    )
    .await;
    let pod = bed.wait_pod("env-0", "pod running", running).await;
    let env = env_of(&bed.exec(&pod, &["env"]).await);
    for (name, value) in [
        ("PLAIN", "1"),
        ("POD_NAME", "env-0"),
        ("POD_NAMESPACE", "default"),
        ("NODE_NAME", NODE),
        ("POD_IP", "127.0.0.2"),
        ("CPU_MILLIS", "250"),
        ("LEVEL", "3"),
        ("PASSWORD", "s3cr3t"),
        ("CFG_mode", "fast"),
        ("CFG_level", "3"),
    ] {
        assert_eq!(
            env.get(name).map(String::as_str),
            Some(value),
            "{name}: {env:?}"
        );
    }
    // The in-cluster client's variables, from the kubernetes Service.
    let kubernetes: k8s_openapi::api::core::v1::Service =
        Api::namespaced(bed.api.client.clone(), "default")
            .get("kubernetes")
            .await
            .unwrap();
    let ip = kubernetes.spec.unwrap().cluster_ip.unwrap();
    assert_eq!(env.get("KUBERNETES_SERVICE_HOST"), Some(&ip));
    assert_eq!(
        env.get("KUBERNETES_SERVICE_PORT").map(String::as_str),
        Some("443")
    );

    // A new container of the same pod sees the values as they are when it is created.
    bed.apply_json::<ConfigMap>(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cfg"}, "data": {"level": "4", "mode": "fast"}}))
        .await;
    let uid = pod.metadata.uid.clone();
    let old = container_id(&pod).unwrap();
    bed.runtime
        .stop_container(&old, Duration::from_secs(1))
        .await
        .unwrap();
    let pod = bed
        .wait_pod("env-0", "the container restarted", |p| {
            running(p) && container_id(p).is_some_and(|id| id != old)
        })
        .await;
    assert_eq!(pod.metadata.uid, uid, "same pod");
    let env = env_of(&bed.exec(&pod, &["env"]).await);
    assert_eq!(env.get("LEVEL").map(String::as_str), Some("4"));
    bed.shutdown().await;
}

#[tokio::test]
async fn pods_get_a_service_account_token_and_the_cluster_ca_at_the_standard_path() {
    let bed = Node::start(CrashLoopBackoff::default()).await;
    let created = bed
        .create(
            "sa-0",
            json!({"containers": [{"name": "app", "image": "busybox", "command": ["sleep", "100000"]}]}),
        )
        .await;
    // The ServiceAccount admission plugin added the kube-api-access volume and its mount.
    let spec = created.spec.clone().unwrap();
    let volume = &spec.volumes.as_ref().unwrap()[0];
    assert!(volume.name.starts_with("kube-api-access-"), "{volume:?}");
    let mounts = spec.containers[0].volume_mounts.clone().unwrap();
    assert_eq!(
        mounts[0].mount_path,
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
    assert_eq!(mounts[0].read_only, Some(true));
    let pod = bed.wait_pod("sa-0", "pod running", running).await;
    let dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    assert_eq!(
        bed.exec(&pod, &["cat", &format!("{dir}/namespace")]).await,
        "default"
    );
    assert_eq!(
        bed.exec(&pod, &["cat", &format!("{dir}/ca.crt")]).await,
        bed.api.server.ca_pem()
    );
    // The root-CA publisher's ConfigMap is in every namespace, new ones too.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(bed.api.client.clone(), "kube-system");
    let root = cms.get("kube-root-ca.crt").await.unwrap();
    assert_eq!(
        root.data.unwrap()["ca.crt"],
        bed.api.server.ca_pem().to_string()
    );
    // The token authenticates to the API server as the pod's service account, over HTTPS.
    let token = bed.exec(&pod, &["cat", &format!("{dir}/token")]).await;
    let client = bed.api.server.tls_client(Some(&token)).unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let refused = pods.list(&Default::default()).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("system:serviceaccount:default:default"),
        "authenticated as the service account (and refused by RBAC): {refused}"
    );
    // Opting out leaves the pod without it.
    let created = bed
        .create(
            "sa-1",
            json!({"automountServiceAccountToken": false,
                   "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "100000"]}]}),
        )
        .await;
    assert!(created.spec.unwrap().volumes.is_none());
    bed.shutdown().await;
}

/// A field of /proc/self/status as the container's process sees it.
fn proc_status(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[tokio::test]
async fn the_security_context_reaches_the_runtime_and_resolv_conf_names_cluster_dns() {
    let dns = Ipv4Addr::new(127, 100, 200, 10);
    let bed = Node::start_with(CrashLoopBackoff::default(), Some(dns)).await;
    bed.create(
        "locked-0",
        json!({
            "securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "runAsNonRoot": true,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "dnsConfig": {"options": [{"name": "timeout", "value": "2"}]},
            "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "100000"],
                "securityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                                    "capabilities": {"drop": ["ALL"]}}}],
        }),
    )
    .await;
    let pod = bed.wait_pod("locked-0", "pod running", running).await;
    let status = bed.exec(&pod, &["cat", "/proc/self/status"]).await;
    assert_eq!(
        proc_status(&status, "Uid").split_whitespace().next(),
        Some("1000")
    );
    assert_eq!(
        proc_status(&status, "Gid").split_whitespace().next(),
        Some("3000")
    );
    assert_eq!(proc_status(&status, "CapEff"), "0000000000000000");
    assert_eq!(proc_status(&status, "NoNewPrivs"), "1");
    assert_eq!(
        proc_status(&status, "Seccomp"),
        "2",
        "RuntimeDefault filters syscalls"
    );
    assert_eq!(
        bed.exec(
            &pod,
            &["sh", "-c", "touch /probe 2>/dev/null || echo read-only"]
        )
        .await
        .trim(),
        "read-only"
    );
    // Through CRI, as the agent would see it.
    let id = container_id(&pod).unwrap();
    let details = bed.runtime.container_status(&id).await.unwrap();
    assert_eq!(details.state, ContainerState::Running);

    let resolv = bed.exec(&pod, &["cat", "/etc/resolv.conf"]).await;
    assert!(resolv.contains(&format!("nameserver {dns}")), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(
        resolv.contains("ndots:5") && resolv.contains("timeout:2"),
        "{resolv}"
    );

    // runAsNonRoot with an image that runs as root: the container is never created.
    bed.create(
        "root-0",
        json!({"securityContext": {"runAsNonRoot": true},
               "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "100000"]}]}),
    )
    .await;
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(bed.api.client.clone(), "default");
    eventually("the runAsNonRoot refusal", WAIT, || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.involved_object.name.as_deref() == Some("root-0")
                    && e.message.as_deref()
                        == Some("Error: container has runAsNonRoot and image will run as root")
            })
            .then_some(())
    })
    .await
    .unwrap();
    assert!(!running(&bed.pods.get("root-0").await.unwrap()));
    bed.shutdown().await;
}

/// The pod's Events with `reason` (and their messages).
async fn events_of(bed: &Node, pod: &str, reason: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(bed.api.client.clone(), "default");
    events
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(pod) && e.reason.as_deref() == Some(reason)
        })
        .filter_map(|e| e.message)
        .collect()
}

fn restarts(pod: &Pod) -> i32 {
    container(pod).map_or(0, |c| c.restart_count)
}

#[tokio::test]
async fn failed_liveness_probes_restart_the_container_in_the_same_pod() {
    let bed = Node::start(CrashLoopBackoff::default()).await;
    let port = relaunch_testbed::free_port(NODE_IP).unwrap();
    let script = format!(
        "mkdir -p /www && echo ok > /www/healthz && touch /tmp/alive && \
         exec httpd -f -p {NODE_IP}:{port} -h /www"
    );
    bed.create(
        "live-0",
        json!({"terminationGracePeriodSeconds": 2, "containers": [{"name": "app", "image": "busybox", "command": ["sh", "-c", script],
            "ports": [{"name": "http", "containerPort": port}],
            "livenessProbe": {"httpGet": {"port": "http", "path": "/healthz"},
                              "periodSeconds": 1, "failureThreshold": 2}}]}),
    )
    .await;
    let pod = bed
        .wait_pod("live-0", "serving and healthy", |p| {
            running(p) && container(p).is_some_and(|c| c.ready)
        })
        .await;
    let uid = pod.metadata.uid.clone();
    let first = container_id(&pod).unwrap();
    bed.exec(&pod, &["rm", "/www/healthz"]).await;
    let pod = bed
        .wait_pod("live-0", "the container restarted", |p| {
            running(p) && container_id(p).is_some_and(|id| id != first)
        })
        .await;
    assert_eq!(pod.metadata.uid, uid, "the same pod");
    assert_eq!(restarts(&pod), 1);
    let last = container(&pod)
        .and_then(|c| c.last_state.clone())
        .and_then(|s| s.terminated)
        .expect("the killed instance is the last state");
    assert_eq!(
        last.container_id.as_deref(),
        Some(format!("containerd://{first}").as_str())
    );
    let killing = events_of(&bed, "live-0", "Killing").await;
    assert!(
        killing
            .iter()
            .any(|m| m == "Container app failed liveness probe, will be restarted"),
        "{killing:?}"
    );
    assert!(
        events_of(&bed, "live-0", "Unhealthy")
            .await
            .iter()
            .any(|m| m.starts_with("Liveness probe failed"))
    );
    // The new instance serves again and is left alone.
    let healthy = bed.exec(&pod, &["cat", "/www/healthz"]).await;
    assert_eq!(healthy.trim(), "ok");
    bed.shutdown().await;
}

#[tokio::test]
async fn a_startup_probe_holds_started_ready_and_liveness_until_it_succeeds() {
    let bed = Node::start(CrashLoopBackoff::default()).await;
    bed.create(
        "slow-0",
        json!({"containers": [{"name": "app", "image": "busybox", "command": ["sleep", "100000"],
            "startupProbe": {"exec": {"command": ["cat", "/tmp/started"]},
                             "periodSeconds": 1, "failureThreshold": 60},
            // Would kill the container within a second if it ran before startup succeeded.
            "livenessProbe": {"exec": {"command": ["cat", "/tmp/started"]},
                              "periodSeconds": 1, "failureThreshold": 1}}]}),
    )
    .await;
    // Running for three seconds, yet not started, not ready, not restarted.
    let pod = bed
        .wait_pod("slow-0", "running for 3 s", |p| {
            let Some(started) = container(p)
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.running.as_ref())
                .and_then(|r| r.started_at.as_ref())
            else {
                return false;
            };
            let ran = jiff::Timestamp::now().duration_since(started.0);
            ran >= jiff::SignedDuration::from_secs(3)
        })
        .await;
    let status = container(&pod).unwrap();
    assert_eq!(status.started, Some(false));
    assert!(!status.ready);
    assert_eq!(status.restart_count, 0);
    assert_eq!(condition(&pod, "Ready").as_deref(), Some("False"));
    bed.exec(&pod, &["touch", "/tmp/started"]).await;
    let pod = bed
        .wait_pod("slow-0", "started and Ready", |p| {
            condition(p, "Ready").as_deref() == Some("True")
        })
        .await;
    assert_eq!(container(&pod).unwrap().started, Some(true));
    assert_eq!(restarts(&pod), 0);

    // A startup probe that never succeeds kills the container after failureThreshold tries.
    bed.create(
        "never-0",
        json!({"terminationGracePeriodSeconds": 2, "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "100000"],
            "startupProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 2}}]}),
    )
    .await;
    bed.wait_pod("never-0", "restarted by the startup probe", |p| {
        restarts(p) >= 1
    })
    .await;
    assert!(
        events_of(&bed, "never-0", "Killing")
            .await
            .iter()
            .any(|m| m == "Container app failed startup probe, will be restarted")
    );
    bed.shutdown().await;
}

#[tokio::test]
async fn post_start_holds_the_next_container_and_a_failed_hook_kills_its_container() {
    let bed = Node::start(CrashLoopBackoff::default()).await;
    bed.create(
        "hooks-0",
        json!({"containers": [
            {"name": "first", "image": "busybox", "command": ["sleep", "100000"],
             "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", "sleep 3; echo done > /tmp/hook"]}}}},
            {"name": "second", "image": "busybox", "command": ["sleep", "100000"]}]}),
    )
    .await;
    let pod = bed
        .wait_pod("hooks-0", "both running", |p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|cs| {
                    cs.len() == 2
                        && cs
                            .iter()
                            .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
                })
        })
        .await;
    let started = |name: &str| {
        pod.status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.state.as_ref()?.running.as_ref()?.started_at.clone())
            .unwrap()
            .0
    };
    let held = started("second").duration_since(started("first"));
    assert!(
        held >= jiff::SignedDuration::from_secs(2),
        "the second container started {held} after the first"
    );
    assert_eq!(bed.exec(&pod, &["cat", "/tmp/hook"]).await.trim(), "done");

    bed.create(
        "badhook-0",
        json!({"terminationGracePeriodSeconds": 2, "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "100000"],
            "lifecycle": {"postStart": {"exec": {"command": ["false"]}}}}]}),
    )
    .await;
    bed.wait_pod("badhook-0", "restarted after the failed hook", |p| {
        restarts(p) >= 1
    })
    .await;
    assert!(
        events_of(&bed, "badhook-0", "FailedPostStartHook")
            .await
            .iter()
            .any(|m| m.starts_with("PostStartHook failed for container app"))
    );
    bed.shutdown().await;
}

#[tokio::test]
async fn config_errors_and_host_path_types_hold_containers_as_the_kubelet_does() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let bed = Node::start(CrashLoopBackoff::default()).await;
    // A missing key: CreateContainerConfigError until it appears.
    bed.create(
        "cfgerr-0",
        json!({"containers": [{"name": "app", "image": "busybox", "command": ["sleep", "100000"],
            "env": [{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}}]}]}),
    )
    .await;
    let pod = bed
        .wait_pod("cfgerr-0", "CreateContainerConfigError", |p| {
            container(p)
                .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
                .as_deref()
                == Some("CreateContainerConfigError")
        })
        .await;
    let waiting = container(&pod)
        .and_then(|c| c.state.clone()?.waiting)
        .unwrap();
    assert_eq!(
        waiting.message.as_deref(),
        Some("configmap \"settings\" not found")
    );
    bed.apply_json::<ConfigMap>(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings"}, "data": {"mode": "fast"}}))
        .await;
    let pod = bed.wait_pod("cfgerr-0", "pod running", running).await;
    assert_eq!(env_of(&bed.exec(&pod, &["env"]).await)["MODE"], "fast");

    // hostPath types: DirectoryOrCreate creates, Directory must exist.
    let state = bed.root().join("host/var/lib/relaunch");
    bed.create(
        "hostpath-0",
        json!({"volumes": [{"name": "state", "hostPath": {"path": state, "type": "DirectoryOrCreate"}}],
               "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "100000"],
                               "volumeMounts": [{"name": "state", "mountPath": "/state"}]}]}),
    )
    .await;
    let pod = bed.wait_pod("hostpath-0", "pod running", running).await;
    bed.exec(&pod, &["touch", "/state/journal"]).await;
    assert!(state.join("journal").exists());
    let missing = bed.root().join("host/nowhere");
    bed.create(
        "hostpath-1",
        json!({"volumes": [{"name": "state", "hostPath": {"path": missing, "type": "Directory"}}],
               "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "100000"],
                               "volumeMounts": [{"name": "state", "mountPath": "/state"}]}]}),
    )
    .await;
    eventually("a FailedMount for the missing directory", WAIT, || async {
        events_of(&bed, "hostpath-1", "FailedMount")
            .await
            .iter()
            .any(|m| m.contains("is not a directory"))
            .then_some(())
    })
    .await
    .unwrap();
    assert!(!running(&bed.pods.get("hostpath-1").await.unwrap()));
    assert!(!missing.exists());
    bed.shutdown().await;
}

/// In a whole sandbox, a pod has what an in-cluster client configuration reads, and it works:
/// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT` through the Service network,
/// verified against the mounted `ca.crt`, authenticated with the mounted token; and the pod's
/// resolv.conf reaches cluster DNS.
#[tokio::test]
async fn in_cluster_configuration_from_inside_a_pod_reaches_the_api_server() {
    let bed = support::Bed::without_relaunch(1).await;
    let pod = bed
        .pod(
            "client-0",
            Some("node-1"),
            json!({"containers": [{"name": "app", "image": "busybox", "command": ["sleep", "100000"]}]}),
        )
        .await;
    let runtime = bed.sandbox.containerd().client().await.unwrap();
    let id = container_id(&pod).unwrap();
    let exec = |command: &[&str]| {
        let runtime = runtime.clone();
        let id = id.clone();
        let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
        async move {
            let out = runtime
                .exec_sync(&id, &command, Duration::from_secs(10), 1 << 20)
                .await
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let env = env_of(&exec(&["env"]).await);
    let host = env["KUBERNETES_SERVICE_HOST"].clone();
    let port = env["KUBERNETES_SERVICE_PORT"].clone();
    assert_eq!(
        host,
        bed.sandbox.service_range().kubernetes_ip().to_string()
    );
    let dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    let token = exec(&["cat", &format!("{dir}/token")]).await;
    let ca = exec(&["cat", &format!("{dir}/ca.crt")]).await;
    let namespace = exec(&["cat", &format!("{dir}/namespace")]).await;

    // What kube-rs' and client-go's in-cluster configuration build from these.
    let mut config = kube::Config::new(format!("https://{host}:{port}").parse().unwrap());
    config.root_cert = Some(rustls_pem_certs(&ca));
    config.auth_info.token = Some(token.into());
    config.default_namespace = namespace;
    let client = kube::Client::try_from(config).unwrap();
    let version = eventually("the API through the kubernetes Service", WAIT, || async {
        client.apiserver_version().await.ok()
    })
    .await
    .unwrap();
    assert!(!version.git_version.is_empty());
    let reviews: Api<k8s_openapi::api::authentication::v1::SelfSubjectReview> =
        Api::all(client.clone());
    let review = reviews
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "authentication.k8s.io/v1",
                "kind": "SelfSubjectReview", "metadata": {}}))
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        review
            .status
            .unwrap()
            .user_info
            .unwrap()
            .username
            .as_deref(),
        Some("system:serviceaccount:default:default")
    );

    // Cluster DNS through the pod's own resolv.conf.
    let resolved = exec(&["nslookup", "kubernetes.default.svc.cluster.local"]).await;
    assert!(resolved.contains(&host), "{resolved}");
    bed.shutdown().await;
}

/// The DER certificates of a PEM bundle.
fn rustls_pem_certs(pem: &str) -> Vec<Vec<u8>> {
    let mut certs = Vec::new();
    let mut body = String::new();
    let mut inside = false;
    for line in pem.lines() {
        match line.trim() {
            "-----BEGIN CERTIFICATE-----" => {
                inside = true;
                body.clear();
            }
            "-----END CERTIFICATE-----" => {
                inside = false;
                certs.push(base64_decode(&body));
            }
            text if inside => body.push_str(text),
            _ => {}
        }
    }
    certs
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            _ => 63,
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}
