//! The whole local test bed in one value: a private containerd, the test API server, the
//! workload controllers and scheduler, and one kubelet simulator per simulated node.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use super::apiserver::ApiServer;
use super::controllers::Controllers;
use super::kubelet::{CrashLoopBackoff, Kubelet, KubeletConfig};
use super::{Containerd, TestbedError};

/// What to start.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where the kubeconfig, node directories and logs go.
    pub dir: PathBuf,
    pub nodes: usize,
    /// API server port on 127.0.0.1 (0 picks a free one).
    pub port: u16,
    /// Crash-loop back-off of the simulated kubelets (the kubelet's own by default).
    pub backoff: CrashLoopBackoff,
}

impl SandboxConfig {
    pub fn new(dir: PathBuf, nodes: usize, port: u16) -> Self {
        Self {
            dir,
            nodes,
            port,
            backoff: CrashLoopBackoff::default(),
        }
    }
}

/// A simulated node: its name and its loopback address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedNode {
    pub name: String,
    pub ip: Ipv4Addr,
}

/// A running test bed. Call [`Sandbox::shutdown`] to stop it; dropping it also removes every
/// container (through the containerd teardown).
pub struct Sandbox {
    pub nodes: Vec<SimulatedNode>,
    kubelets: Vec<Kubelet>,
    controllers: Option<Controllers>,
    api: ApiServer,
    containerd: Containerd,
    dir: PathBuf,
}

impl Sandbox {
    /// Starts containerd, the API server, the controllers and `nodes` kubelet simulators, and
    /// writes `<dir>/kubeconfig`.
    pub async fn start(config: SandboxConfig) -> Result<Self, TestbedError> {
        if config.nodes == 0 || config.nodes > 250 {
            return Err(TestbedError::Setup(format!(
                "--nodes must be between 1 and 250 (each node gets a 127.0.0.x address), not {}",
                config.nodes
            )));
        }
        std::fs::create_dir_all(&config.dir)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], config.port));
        let api = ApiServer::start(addr).await.map_err(|e| match e {
            TestbedError::Setup(_) if config.port != 0 => TestbedError::Setup(format!(
                "port {} on 127.0.0.1 is busy (is another sandbox running?): pass --port with a free port",
                config.port
            )),
            other => other,
        })?;
        let containerd = Containerd::start().await?;
        let client = api.client()?;
        let controllers = Controllers::start(client.clone()).await?;
        let mut sandbox = Self {
            nodes: Vec::new(),
            kubelets: Vec::new(),
            controllers: Some(controllers),
            api,
            containerd,
            dir: config.dir.clone(),
        };
        for i in 1..=config.nodes {
            let node = SimulatedNode {
                name: format!("node-{i}"),
                ip: Ipv4Addr::new(127, 0, 0, (i + 1) as u8),
            };
            let root = config.dir.join("nodes").join(&node.name);
            let mut kubelet_config = KubeletConfig::new(node.name.clone(), node.ip, &root);
            kubelet_config.backoff = config.backoff;
            let runtime = sandbox.containerd.client().await?;
            let kubelet = Kubelet::start(client.clone(), runtime, kubelet_config).await?;
            sandbox.kubelets.push(kubelet);
            sandbox.nodes.push(node);
        }
        std::fs::write(sandbox.kubeconfig_path(), sandbox.api.kubeconfig(None))?;
        Ok(sandbox)
    }

    /// `<dir>/kubeconfig`, usable by kubectl and kube-rs.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    pub fn api(&self) -> &ApiServer {
        &self.api
    }

    pub fn containerd(&self) -> &Containerd {
        &self.containerd
    }

    /// A kube-rs client with full access.
    pub fn client(&self) -> Result<kube::Client, TestbedError> {
        self.api.client()
    }

    /// Stops the kubelets and controllers, removes every container and stops containerd and the
    /// API server.
    pub async fn shutdown(mut self) {
        for kubelet in std::mem::take(&mut self.kubelets) {
            kubelet.shutdown().await;
        }
        if let Some(controllers) = self.controllers.take() {
            controllers.shutdown().await;
        }
        let Sandbox {
            mut containerd,
            api,
            ..
        } = self;
        tokio::task::spawn_blocking(move || containerd.teardown())
            .await
            .ok();
        api.shutdown().await;
    }
}
