//! The sandbox in a temporary directory, with typed helpers for what tests do on it.

use std::fmt::Debug;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use relaunch_api::{
    ContainerRecreateRequest, ContainerRecreateRequestStatus, LABEL_ROLLING_RESTART,
    RollingRestart, RollingRestartStatus, RolloutPhase,
};
use relaunch_testbed::{RELAUNCH_NAMESPACE, Sandbox, SandboxConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{
    DATABASE, WAIT, binaries, container, eventually, kubectl, output, printed, ready,
    restart_count, statefulset,
};

/// The whole test bed — a private containerd, the test API server, the controllers and one
/// kubelet simulator per node — usually with relaunch running on it: the coordinator and an
/// agent per node, as real processes. Objects go to the `default` namespace.
pub struct Bed {
    pub sandbox: Sandbox,
    /// A client with full access.
    pub client: kube::Client,
    dir: tempfile::TempDir,
}

impl Bed {
    /// `nodes` simulated nodes (`node-1`, ...) with relaunch running.
    pub async fn start(nodes: usize) -> Self {
        Self::with_agent_args(nodes, &[]).await
    }

    /// Like [`Bed::start`], every agent with extra arguments (e.g. `--max-parallel 4`).
    pub async fn with_agent_args(nodes: usize, agent_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = SandboxConfig::new(dir.path().to_path_buf(), nodes, 0)
            .with_relaunch(binaries().relaunch());
        config.agent_args = agent_args.iter().map(|s| s.to_string()).collect();
        Self::launch(config, dir).await
    }

    /// `nodes` simulated nodes with relaunch, the sandbox's configuration changed by `configure`
    /// first (e.g. several coordinators behind the spreading proxy).
    pub async fn with_config(nodes: usize, configure: impl FnOnce(&mut SandboxConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = SandboxConfig::new(dir.path().to_path_buf(), nodes, 0)
            .with_relaunch(binaries().relaunch());
        configure(&mut config);
        Self::launch(config, dir).await
    }

    /// `nodes` simulated nodes with relaunch deployed as on a cluster (`up --deploy`): images
    /// built from this build's binaries, `kubectl apply -k manifests/base` through the sandbox
    /// overlay; projected tokens renewed once `token_max_age` old.
    pub async fn deployed(nodes: usize, token_max_age: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            SandboxConfig::new(dir.path().to_path_buf(), nodes, 0).deployed(binaries().relaunch());
        config.token_max_age = Some(token_max_age);
        Self::launch(config, dir).await
    }

    /// `nodes` simulated nodes without relaunch, for tests that run an agent themselves.
    pub async fn without_relaunch(nodes: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::launch(SandboxConfig::new(dir.path().to_path_buf(), nodes, 0), dir).await
    }

    async fn launch(config: SandboxConfig, dir: tempfile::TempDir) -> Self {
        let sandbox = Sandbox::start(config).await.unwrap();
        let client = sandbox.client().unwrap();
        Self {
            sandbox,
            client,
            dir,
        }
    }

    /// The sandbox's directory: `kubeconfig`, `coordinator/log`, `nodes/<node>/...`; tests may
    /// put their own files beside them.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `default` namespace's objects of kind `K`.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::default_namespaced(self.client.clone())
    }

    pub fn pods(&self) -> Api<Pod> {
        self.api()
    }

    pub fn requests(&self) -> Api<ContainerRecreateRequest> {
        self.api()
    }

    pub fn rollouts(&self) -> Api<RollingRestart> {
        self.api()
    }

    /// Creates `object` (JSON of kind `K`) in the `default` namespace.
    pub async fn create<K>(&self, object: Value) -> K
    where
        K: kube::Resource<Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned
            + Serialize,
        K::DynamicType: Default,
    {
        let object: K = serde_json::from_value(object).unwrap();
        self.api::<K>()
            .create(&PostParams::default(), &object)
            .await
            .unwrap()
    }

    /// Creates pod `name` with `spec`, bound to `node`, and waits until it is Ready. Without a
    /// node the scheduler places it (or never does); then it is returned at once.
    pub async fn pod(&self, name: &str, node: Option<&str>, spec: Value) -> Pod {
        let mut pod =
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec});
        if let Some(node) = node {
            pod["spec"]["nodeName"] = json!(node);
        }
        self.create::<Pod>(pod).await;
        if node.is_none() {
            return self.pods().get(name).await.unwrap();
        }
        self.ready_pod(name).await
    }

    /// Creates pod `name` on `node` with one [`DATABASE`] container `db`; waits until it is Ready.
    pub async fn database_pod(&self, name: &str, node: &str) -> Pod {
        self.pod(
            name,
            Some(node),
            json!({"containers": [container("db", DATABASE)]}),
        )
        .await
    }

    /// Waits until pod `name` is Ready.
    pub async fn ready_pod(&self, name: &str) -> Pod {
        eventually(&format!("pod {name} ready"), WAIT, || async {
            let pod = self.pods().get(name).await.ok()?;
            ready(&pod).then_some(pod)
        })
        .await
        .unwrap()
    }

    /// Waits until the pods labelled `app=<app>` are `count` and all Ready.
    pub async fn ready_pods(&self, app: &str, count: usize) -> Vec<Pod> {
        eventually(&format!("{count} pods of {app} ready"), WAIT, || async {
            let pods = self
                .pods()
                .list(&ListParams::default().labels(&format!("app={app}")))
                .await
                .ok()?;
            (pods.items.len() == count && pods.items.iter().all(ready)).then_some(pods.items)
        })
        .await
        .unwrap()
    }

    /// Creates a [`statefulset`] and waits until all its pods are Ready.
    pub async fn statefulset(&self, name: &str, replicas: usize, pod_spec: Value) -> Vec<Pod> {
        self.create::<StatefulSet>(statefulset(name, replicas, pod_spec))
            .await;
        self.ready_pods(name, replicas).await
    }

    /// Creates ContainerRecreateRequest `name` for `pod`, labelled with its node and UID as
    /// `kubectl relaunch restart` labels it (unless the pod has no node).
    pub async fn recreate(
        &self,
        name: &str,
        pod: &Pod,
        containers: Value,
        strategy: Value,
    ) -> ContainerRecreateRequest {
        let mut request = ContainerRecreateRequest::for_pod(pod).name(name).build();
        request.spec.containers = serde_json::from_value(containers).unwrap();
        request.spec.strategy = serde_json::from_value(strategy).unwrap();
        let namespace = request
            .metadata
            .namespace
            .clone()
            .unwrap_or("default".into());
        Api::<ContainerRecreateRequest>::namespaced(self.client.clone(), &namespace)
            .create(&PostParams::default(), &request)
            .await
            .unwrap()
    }

    /// Waits until request `name` has finished.
    pub async fn finished(&self, name: &str) -> ContainerRecreateRequestStatus {
        eventually(&format!("request {name} to finish"), WAIT, || async {
            let status = self.requests().get(name).await.ok()?.status?;
            status.phase.is_finished().then_some(status)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; coordinator log:\n{}", self.coordinator_log()))
    }

    /// Creates RollingRestart `name` with `spec`.
    pub async fn rollout(&self, name: &str, spec: Value) -> RollingRestart {
        self.create(json!({
            "apiVersion": "relaunch.dev/v1alpha1", "kind": "RollingRestart",
            "metadata": {"name": name}, "spec": spec,
        }))
        .await
    }

    /// Waits until rollout `name` has Succeeded or Failed.
    pub async fn rollout_finished(&self, name: &str, timeout: Duration) -> RollingRestartStatus {
        let finished = eventually(&format!("rollout {name} to finish"), timeout, || async {
            let status = self.rollouts().get(name).await.ok()?.status?;
            matches!(status.phase, RolloutPhase::Succeeded | RolloutPhase::Failed).then_some(status)
        })
        .await;
        match finished {
            Ok(status) => status,
            Err(e) => {
                let status = self.rollouts().get(name).await.ok().and_then(|r| r.status);
                let requests: Vec<String> = self
                    .requests_of(name)
                    .await
                    .iter()
                    .map(|r| {
                        format!(
                            "{}: {:?}",
                            r.metadata.name.as_deref().unwrap_or(""),
                            r.status
                        )
                    })
                    .collect();
                panic!(
                    "{e}; rollout status: {status:?}\nits requests:\n{}\ncoordinator log:\n{}",
                    requests.join("\n"),
                    self.coordinator_log()
                )
            }
        }
    }

    /// The requests rollout `rollout` created.
    pub async fn requests_of(&self, rollout: &str) -> Vec<ContainerRecreateRequest> {
        self.requests()
            .list(&ListParams::default().labels(&format!("{LABEL_ROLLING_RESTART}={rollout}")))
            .await
            .unwrap()
            .items
    }

    /// Each pod of `before` restarted exactly once, in place (same UID).
    pub async fn assert_each_restarted_once(&self, before: &[Pod]) {
        for pod in before {
            let name = pod.metadata.name.as_deref().unwrap();
            let after = self.pods().get(name).await.unwrap();
            assert_eq!(
                after.metadata.uid, pod.metadata.uid,
                "{name} restarted in place"
            );
            assert_eq!(
                restart_count(&after),
                restart_count(pod) + 1,
                "{name} restarted once"
            );
        }
    }

    /// `kubectl ARGS` against the sandbox, with HOME in its directory: stdout, or what kubectl
    /// printed when it failed.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let out = output(kubectl(&self.sandbox.kubeconfig_path(), self.dir(), args)).await;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("kubectl {args:?}: {}", printed(&out)))
        }
    }

    /// Writes `manifest` to `file` in the sandbox's directory and `kubectl apply`s it.
    pub async fn apply(&self, file: &str, manifest: &str) {
        let path = self.dir().join(file);
        std::fs::write(&path, manifest).unwrap();
        self.kubectl(&["apply", "-f", &path.to_string_lossy()])
            .await
            .unwrap();
    }

    /// The last 40 lines of the coordinator's log, for failure messages.
    pub fn coordinator_log(&self) -> String {
        let tail = |log: &str| {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        if let Ok(log) = std::fs::read_to_string(self.dir().join("coordinator").join("log")) {
            return tail(&log);
        }
        // Deployed: each coordinator pod's container logs, as the kubelet simulator writes them
        // (`nodes/<node>/log/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log`).
        let mut logs = Vec::new();
        let prefix = format!("{RELAUNCH_NAMESPACE}_relaunch-coordinator-");
        for pod_dir in subdirectories(&self.dir().join("nodes"))
            .iter()
            .flat_map(|node| subdirectories(&node.join("log").join("pods")))
            .filter(|dir| {
                dir.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
        {
            for container in subdirectories(&pod_dir) {
                for entry in std::fs::read_dir(&container)
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
                    logs.push(format!(
                        "==> {} <==\n{}",
                        entry.path().display(),
                        tail(&log)
                    ));
                }
            }
        }
        logs.join("\n")
    }

    /// Stops relaunch, the kubelets and the controllers, removes every container and stops
    /// containerd and the API server. Fails the test if the API server refused relaunch's agent
    /// or coordinator anything: they run with exactly the RBAC manifests/base ships, so a refusal
    /// is a permission the manifests lack.
    pub async fn shutdown(self) {
        let refused: Vec<String> = self
            .sandbox
            .api()
            .refused_counts()
            .into_iter()
            .filter(|(kind, _)| {
                kind.user
                    .starts_with(&format!("system:serviceaccount:{RELAUNCH_NAMESPACE}:"))
            })
            .map(|(kind, n)| format!("{} {} {} ({n}x)", kind.user, kind.verb, kind.resource))
            .collect();
        self.sandbox.shutdown().await;
        assert!(
            refused.is_empty(),
            "the API server refused relaunch (its RBAC in manifests/base lacks these):\n{}",
            refused.join("\n")
        );
    }
}

/// The directories in `dir`; none if it cannot be read.
fn subdirectories(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .collect()
}
