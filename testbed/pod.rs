//! Creating pod sandboxes and containers through CRI exactly as the kubelet does: the same
//! metadata, labels, annotations and log paths (KUBELET.md), with pods in the host network.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;

use super::TestbedError;
use super::image::TEST_IMAGE;
use relaunch_cri::{RuntimeClient, annotations, labels};

/// The identity of a pod as the kubelet passes it to the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// The node the pod runs on: recorded as the [`NODE_LABEL`] of its sandboxes and containers
    /// so that each simulated node's kubelet lists only its own, as a real node's runtime holds
    /// only its own node's pods (the test bed shares one containerd among its nodes).
    pub node: Option<String>,
}

/// The test bed's label naming a sandbox's or container's node (not a kubelet label: a real
/// runtime serves one node, the test bed's containerd serves all of its simulated nodes).
pub const NODE_LABEL: &str = "testbed.relaunch.dev/node";

/// What the kubelet knows about one container when it creates an instance of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerTemplate {
    pub name: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Becomes the CRI attempt, the restartCount annotation and the log file name.
    pub restart_count: u32,
    pub termination_grace_period_seconds: Option<i64>,
    /// The container's `lifecycle.preStop` as JSON, stored as the kubelet does.
    pub pre_stop_handler: Option<serde_json::Value>,
    /// The container's `ports` as JSON, stored as the kubelet does.
    pub ports: Option<serde_json::Value>,
    /// Bind mounts: (host path, container path).
    pub mounts: Vec<(PathBuf, String)>,
    /// Container paths of `mounts` that are mounted read-only.
    pub read_only_mounts: Vec<String>,
    /// The container hash when the caller computed it from the spec (the kubelet hashes the
    /// spec, not the environment it resolved from ConfigMaps and Secrets).
    pub spec_hash: Option<String>,
    /// The container's security context for the runtime (namespace options are filled in).
    pub security: Option<cri::LinuxContainerSecurityContext>,
    /// The image to run; `None` is [`TEST_IMAGE`].
    pub image: Option<String>,
}

impl ContainerTemplate {
    /// A container running `sh -c script` in the test image.
    pub fn shell(name: &str, script: &str) -> Self {
        Self {
            name: name.to_string(),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            ..Default::default()
        }
    }

    /// The kubelet's container hash: changes whenever the spec that matters changes.
    pub fn hash(&self) -> String {
        if let Some(hash) = &self.spec_hash {
            return hash.clone();
        }
        let spec = serde_json::json!([self.name, self.command, self.args, self.env]);
        format!("{:08x}", fnv1a32(spec.to_string().as_bytes()))
    }
}

/// A running pod sandbox and the config it was created with (needed to create containers in it).
#[derive(Debug, Clone)]
pub struct PodSandbox {
    pub id: String,
    pub config: cri::PodSandboxConfig,
}

impl PodSandbox {
    /// The pod's log directory, `<root>/<namespace>_<name>_<uid>`.
    pub fn log_directory(&self) -> &str {
        &self.config.log_directory
    }
}

/// The kubelet's pod sandbox config for `pod`, in the host network namespace.
pub fn sandbox_config(pod: &PodIdentity, log_root: &Path, attempt: u32) -> cri::PodSandboxConfig {
    sandbox_config_with_dns(pod, log_root, attempt, None)
}

/// [`sandbox_config`] with the pod's resolv.conf (`None`: the runtime copies the host's).
pub fn sandbox_config_with_dns(
    pod: &PodIdentity,
    log_root: &Path,
    attempt: u32,
    dns: Option<cri::DnsConfig>,
) -> cri::PodSandboxConfig {
    let pod_labels = HashMap::from([
        (labels::POD_NAME.to_string(), pod.name.clone()),
        (labels::POD_NAMESPACE.to_string(), pod.namespace.clone()),
        (labels::POD_UID.to_string(), pod.uid.clone()),
    ]);
    let pod_labels = with_node(pod_labels, pod);
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            namespace: pod.namespace.clone(),
            attempt,
        }),
        // A host-network pod shares the node's UTS namespace, so no hostname of its own.
        hostname: String::new(),
        log_directory: log_root
            .join(format!("{}_{}_{}", pod.namespace, pod.name, pod.uid))
            .to_string_lossy()
            .into_owned(),
        labels: pod_labels,
        dns_config: dns,
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(host_network_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn with_node(mut labels: HashMap<String, String>, pod: &PodIdentity) -> HashMap<String, String> {
    if let Some(node) = &pod.node {
        labels.insert(NODE_LABEL.to_string(), node.clone());
    }
    labels
}

/// The kubelet's container config for one instance of `container` in `pod`.
pub fn container_config(pod: &PodIdentity, container: &ContainerTemplate) -> cri::ContainerConfig {
    let container_labels = HashMap::from([
        (labels::POD_NAME.to_string(), pod.name.clone()),
        (labels::POD_NAMESPACE.to_string(), pod.namespace.clone()),
        (labels::POD_UID.to_string(), pod.uid.clone()),
        (labels::CONTAINER_NAME.to_string(), container.name.clone()),
    ]);
    let container_labels = with_node(container_labels, pod);
    let mut container_annotations = HashMap::from([
        (annotations::HASH.to_string(), container.hash()),
        (
            annotations::RESTART_COUNT.to_string(),
            container.restart_count.to_string(),
        ),
        (
            annotations::TERMINATION_MESSAGE_PATH.to_string(),
            "/dev/termination-log".to_string(),
        ),
        (
            annotations::TERMINATION_MESSAGE_POLICY.to_string(),
            "File".to_string(),
        ),
    ]);
    if let Some(grace) = container.termination_grace_period_seconds {
        container_annotations.insert(
            annotations::TERMINATION_GRACE_PERIOD.into(),
            grace.to_string(),
        );
    }
    if let Some(handler) = &container.pre_stop_handler {
        container_annotations.insert(annotations::PRE_STOP_HANDLER.into(), handler.to_string());
    }
    if let Some(ports) = &container.ports {
        container_annotations.insert(annotations::PORTS.into(), ports.to_string());
    }
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: container.name.clone(),
            attempt: container.restart_count,
        }),
        image: Some(cri::ImageSpec {
            image: container
                .image
                .clone()
                .unwrap_or_else(|| TEST_IMAGE.to_string()),
            ..Default::default()
        }),
        command: container.command.clone(),
        args: container.args.clone(),
        envs: container
            .env
            .iter()
            .map(|(key, value)| cri::KeyValue {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        mounts: container
            .mounts
            .iter()
            .map(|(host, path)| cri::Mount {
                container_path: path.clone(),
                host_path: host.to_string_lossy().into_owned(),
                readonly: container.read_only_mounts.contains(path),
                ..Default::default()
            })
            .collect(),
        labels: container_labels,
        annotations: container_annotations,
        log_path: format!("{}/{}.log", container.name, container.restart_count),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(host_network_namespaces()),
                ..container.security.clone().unwrap_or_default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs a pod sandbox for `pod` as the kubelet would (creating its log directory first).
pub async fn run_pod_sandbox(
    client: &RuntimeClient,
    pod: &PodIdentity,
    log_root: &Path,
) -> Result<PodSandbox, TestbedError> {
    run_pod_sandbox_with_dns(client, pod, log_root, None).await
}

/// [`run_pod_sandbox`] with the pod's resolv.conf.
pub async fn run_pod_sandbox_with_dns(
    client: &RuntimeClient,
    pod: &PodIdentity,
    log_root: &Path,
    dns: Option<cri::DnsConfig>,
) -> Result<PodSandbox, TestbedError> {
    let config = sandbox_config_with_dns(pod, log_root, 0, dns);
    std::fs::create_dir_all(&config.log_directory)?;
    let response = client
        .raw()
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await?;
    Ok(PodSandbox {
        id: response.into_inner().pod_sandbox_id,
        config,
    })
}

/// Creates and starts one instance of `container` in `sandbox`; returns the container ID.
pub async fn start_container(
    client: &RuntimeClient,
    sandbox: &PodSandbox,
    pod: &PodIdentity,
    container: &ContainerTemplate,
) -> Result<String, TestbedError> {
    std::fs::create_dir_all(Path::new(sandbox.log_directory()).join(&container.name))?;
    let mut raw = client.raw();
    let id = raw
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.id.clone(),
            config: Some(container_config(pod, container)),
            sandbox_config: Some(sandbox.config.clone()),
        })
        .await?
        .into_inner()
        .container_id;
    raw.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    Ok(id)
}

/// Stops and removes a pod sandbox and all its containers.
pub async fn remove_pod_sandbox(
    client: &RuntimeClient,
    sandbox_id: &str,
) -> Result<(), TestbedError> {
    let mut raw = client.raw();
    raw.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sandbox_id.to_string(),
    })
    .await?;
    raw.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: sandbox_id.to_string(),
    })
    .await?;
    Ok(())
}

/// Pods share the node's network (no CNI on test machines), each container gets its own PID
/// namespace (the kubelet's default without `shareProcessNamespace`), IPC is per pod.
fn host_network_namespaces() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

fn fnv1a32(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    })
}
