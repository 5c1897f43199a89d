//! The whole local test bed in one value: a private containerd, the test API server, the
//! workload controllers and scheduler, the Service network (ClusterIP proxy and cluster DNS),
//! and one kubelet simulator per simulated node.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::apiserver::ApiServer;
use crate::controllers::Controllers;
use crate::kubelet::{CrashLoopBackoff, Kubelet, KubeletConfig};
use crate::network::{ServiceNetwork, SpreadConfig, SpreadingProxy};
use crate::processes::{self, AgentConfig, Binaries, ManagedProcess};
use crate::{Containerd, ServiceRange, TestbedError, install_crds};

/// How long a deployed sandbox waits for the agent DaemonSet and coordinator Deployment.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(120);

/// A simulated node's own filesystem root for `hostPath` volumes, with the sandbox runtime's
/// socket where a node has it: `<host>/run/containerd/containerd.sock`, a hard link to the
/// socket (connecting goes by inode; a symlink would point outside the container's mount and a
/// bind of containerd's whole directory would carry every container's rootfs mount along).
fn node_filesystem(host: &std::path::Path, socket: &std::path::Path) -> Result<(), TestbedError> {
    let run = host.join("run").join("containerd");
    std::fs::create_dir_all(&run)?;
    let link = run.join("containerd.sock");
    let _ = std::fs::remove_file(&link);
    std::fs::hard_link(socket, &link).map_err(|e| {
        TestbedError::Setup(format!(
            "cannot link the runtime's socket {} into {}: {e} (the sandbox directory must be on the same filesystem as the temporary directory)",
            socket.display(),
            run.display()
        ))
    })?;
    Ok(())
}

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
    /// Run the coordinator and an agent per node from these binaries (none: the bare test bed).
    pub relaunch: Option<Binaries>,
    /// Extra arguments for every agent (e.g. `--max-parallel 4`).
    pub agent_args: Vec<String>,
    /// Extra arguments for every coordinator replica (e.g. `--agent-timeout 10s`).
    pub coordinator_args: Vec<String>,
    /// Coordinator replicas to start with relaunch (1 by default). With more than one, the
    /// agents reach them through a [`SpreadingProxy`] (one address spreading connections over
    /// every replica, as their Service would), cutting connections as `spread` says.
    pub coordinators: usize,
    pub spread: SpreadConfig,
    /// Deploy relaunch as users do instead of running processes: images built from these
    /// binaries, `kubectl apply -k manifests/base` through the sandbox overlay (`up --deploy`).
    pub deploy: Option<Binaries>,
    /// Renew projected service-account tokens once they are this old (tests of rotation).
    pub token_max_age: Option<Duration>,
}

impl SandboxConfig {
    pub fn new(dir: PathBuf, nodes: usize, port: u16) -> Self {
        Self {
            dir,
            nodes,
            port,
            backoff: CrashLoopBackoff::default(),
            relaunch: None,
            agent_args: Vec::new(),
            coordinator_args: Vec::new(),
            coordinators: 1,
            spread: SpreadConfig::default(),
            deploy: None,
            token_max_age: None,
        }
    }

    /// Deploys relaunch from images built from `binaries`, through `manifests/base`: an agent
    /// DaemonSet pod per node and the 2-replica coordinator Deployment. Each simulated node gets
    /// its own filesystem root for `hostPath` volumes (`<dir>/nodes/<node>/host`), holding the
    /// runtime's socket at `/run/containerd/containerd.sock` as on a real node.
    pub fn deployed(mut self, binaries: Binaries) -> Self {
        self.deploy = Some(binaries);
        self
    }

    /// Also runs relaunch: the coordinator and one agent per node, as real processes.
    pub fn with_relaunch(mut self, binaries: Binaries) -> Self {
        self.relaunch = Some(binaries);
        self
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
    coordinator: Option<ManagedProcess>,
    coordinator_url: Option<String>,
    /// Further coordinator replicas (their report APIs are the agents' target only through
    /// `spreader`).
    replicas: Vec<ManagedProcess>,
    /// With several coordinators from the start: the proxy the agents reach them through.
    spreader: Option<SpreadingProxy>,
    agents: Vec<ManagedProcess>,
    /// Admin endpoint (`/metrics`, `/readyz`) of each agent, by node index.
    agent_admins: Vec<SocketAddr>,
    binaries: Option<Binaries>,
    agent_args: Vec<String>,
    coordinator_args: Vec<String>,
    /// Size in bytes of the image archive `up --deploy` built (none: not deployed).
    image_size: Option<u64>,
    kubelets: Vec<Kubelet>,
    controllers: Option<Controllers>,
    network: Option<ServiceNetwork>,
    /// The service range and DNS address, kept for after the network is shut down.
    service_range: ServiceRange,
    api: ApiServer,
    containerd: Containerd,
    dir: PathBuf,
}

impl Sandbox {
    /// Starts containerd, the API server, the controllers, the Service network on a free block
    /// of 127.100.0.0/16 and `nodes` kubelet simulators, and writes `<dir>/kubeconfig`.
    pub async fn start(config: SandboxConfig) -> Result<Self, TestbedError> {
        if config.nodes == 0 || config.nodes > 250 {
            return Err(TestbedError::Setup(format!(
                "--nodes must be between 1 and 250 (each node gets a 127.0.0.x address), not {}",
                config.nodes
            )));
        }
        std::fs::create_dir_all(&config.dir)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], config.port));
        let mut network = ServiceNetwork::claim().await?;
        let service_range = network.range();
        let api = ApiServer::start_with_service_range(addr, service_range).await.map_err(|e| match e {
            TestbedError::Setup(_) if config.port != 0 => TestbedError::Setup(format!(
                "port {} on 127.0.0.1 is busy (is another sandbox running?): pass --port with a free port",
                config.port
            )),
            other => other,
        })?;
        let containerd = Containerd::start().await?;
        let client = api.client()?;
        let controllers = Controllers::start(client.clone()).await?;
        network.start(client.clone()).await?;
        let mut sandbox = Self {
            nodes: Vec::new(),
            coordinator: None,
            coordinator_url: None,
            replicas: Vec::new(),
            spreader: None,
            agents: Vec::new(),
            agent_admins: Vec::new(),
            binaries: config.relaunch.clone(),
            agent_args: config.agent_args.clone(),
            coordinator_args: config.coordinator_args.clone(),
            image_size: None,
            kubelets: Vec::new(),
            controllers: Some(controllers),
            network: Some(network),
            service_range,
            api,
            containerd,
            dir: config.dir.clone(),
        };
        if let Some(binaries) = &config.deploy {
            let size = crate::deploy::build_and_import(&sandbox.containerd, binaries, &config.dir)?;
            sandbox.image_size = Some(size);
        }
        for i in 1..=config.nodes {
            let node = SimulatedNode {
                name: format!("node-{i}"),
                ip: Ipv4Addr::new(127, 0, 0, (i + 1) as u8),
            };
            let root = config.dir.join("nodes").join(&node.name);
            let mut kubelet_config = KubeletConfig::new(node.name.clone(), node.ip, &root);
            kubelet_config.backoff = config.backoff;
            kubelet_config.cluster_dns = Some(service_range.dns_ip());
            kubelet_config.token_max_age = config.token_max_age;
            if config.deploy.is_some() {
                let host = root.join("host");
                node_filesystem(&host, sandbox.containerd.socket())?;
                kubelet_config.host_root = Some(host);
                kubelet_config.images = crate::deploy::sandbox_images();
            }
            let runtime = sandbox.containerd.client().await?;
            let kubelet = Kubelet::start(client.clone(), runtime, kubelet_config).await?;
            sandbox.kubelets.push(kubelet);
            sandbox.nodes.push(node);
        }
        // Deployed, the CRDs come from `kubectl apply -k` (manifests/base includes ../crds).
        if config.deploy.is_none() {
            install_crds(&client).await?;
        }
        if let Some(binaries) = config.relaunch.clone() {
            processes::install_identities(&sandbox.api).await?;
            processes::install_admission_policies(&sandbox.api).await?;
            let (coordinator, url) = processes::start_coordinator(
                &sandbox.api,
                &binaries,
                &sandbox.dir,
                &sandbox.coordinator_args,
            )
            .await?;
            sandbox.coordinator = Some(coordinator);
            sandbox.coordinator_url = Some(url.clone());
            if config.coordinators > 1 {
                let mut backends = vec![report_addr(&url)?];
                for _ in 1..config.coordinators {
                    let (process, url) = sandbox.start_replica(&binaries).await?;
                    sandbox.replicas.push(process);
                    backends.push(report_addr(&url)?);
                }
                let spreader = SpreadingProxy::start(backends, config.spread.clone()).await?;
                sandbox.coordinator_url = Some(spreader.url());
                sandbox.spreader = Some(spreader);
            }
            for i in 0..sandbox.nodes.len() {
                let (agent, admin) = sandbox.launch_agent(i, &[]).await?;
                sandbox.agents.push(agent);
                sandbox.agent_admins.push(admin);
            }
        }
        std::fs::write(sandbox.kubeconfig_path(), sandbox.api.tls_kubeconfig(None))?;
        if config.deploy.is_some() {
            crate::deploy::install(&sandbox.dir, &sandbox.kubeconfig_path()).await?;
            crate::deploy::wait_ready(&client, sandbox.nodes.len(), DEPLOY_TIMEOUT).await?;
        }
        Ok(sandbox)
    }

    /// Size in bytes of the image archive a deployed sandbox built and imported.
    pub fn image_size(&self) -> Option<u64> {
        self.image_size
    }

    /// The root of node `index`'s own filesystem for `hostPath` volumes (deployed sandboxes):
    /// the agent's journal is at `<root>/var/lib/relaunch` there.
    pub fn node_host_root(&self, index: usize) -> Option<PathBuf> {
        let node = self.nodes.get(index)?;
        Some(self.dir.join("nodes").join(&node.name).join("host"))
    }

    async fn launch_agent(
        &self,
        index: usize,
        env: &[(String, String)],
    ) -> Result<(ManagedProcess, SocketAddr), TestbedError> {
        let (Some(binaries), Some(url)) = (&self.binaries, &self.coordinator_url) else {
            return Err(TestbedError::Setup(
                "the sandbox runs without relaunch".into(),
            ));
        };
        let node = &self.nodes[index];
        let agent = AgentConfig {
            node_name: node.name.clone(),
            node_ip: node.ip,
            node_dir: self.dir.join("nodes").join(&node.name),
            cri_socket: self.containerd.socket().to_path_buf(),
            coordinator_url: url.clone(),
            args: self.agent_args.clone(),
            env: env.to_vec(),
        };
        processes::start_agent(&self.api, binaries, &agent).await
    }

    /// The agent process of node `index` (0-based), to kill or restart it in tests.
    pub fn agent(&mut self, index: usize) -> Option<&mut ManagedProcess> {
        self.agents.get_mut(index)
    }

    /// The admin endpoint (`/metrics`, `/readyz`) of node `index`'s agent.
    pub fn agent_admin(&self, index: usize) -> Option<SocketAddr> {
        self.agent_admins.get(index).copied()
    }

    /// Starts node `index`'s agent again (killing it first if it runs); waits until it is ready.
    pub async fn restart_agent(&mut self, index: usize) -> Result<(), TestbedError> {
        self.restart_agent_with_env(index, &[]).await
    }

    /// Like [`Sandbox::restart_agent`], with extra environment (the agent's test-bed failpoints).
    pub async fn restart_agent_with_env(
        &mut self,
        index: usize,
        env: &[(String, String)],
    ) -> Result<(), TestbedError> {
        let agent = self
            .agents
            .get_mut(index)
            .ok_or_else(|| TestbedError::Setup(format!("no agent {index}")))?;
        agent.kill();
        let (replacement, admin) = self.launch_agent(index, env).await?;
        self.agents[index] = replacement;
        self.agent_admins[index] = admin;
        Ok(())
    }

    /// The coordinator process, to stop or restart it in tests.
    pub fn coordinator(&mut self) -> Option<&mut ManagedProcess> {
        self.coordinator.as_mut()
    }

    /// Starts another coordinator replica (it follows the leader until the Lease is free);
    /// returns its index for [`Sandbox::coordinator_replica`].
    pub async fn add_coordinator(&mut self) -> Result<usize, TestbedError> {
        let binaries = self
            .binaries
            .clone()
            .ok_or_else(|| TestbedError::Setup("the sandbox runs without relaunch".into()))?;
        let (process, _) = self.start_replica(&binaries).await?;
        self.replicas.push(process);
        Ok(self.replicas.len() - 1)
    }

    async fn start_replica(
        &self,
        binaries: &Binaries,
    ) -> Result<(ManagedProcess, String), TestbedError> {
        let subdir = format!("coordinator-{}", self.replicas.len() + 2);
        processes::start_coordinator_replica(
            &self.api,
            binaries,
            &self.dir,
            &subdir,
            &self.coordinator_args,
        )
        .await
    }

    /// The proxy the agents reach the coordinators through, when the sandbox started several
    /// ([`SandboxConfig::coordinators`]).
    pub fn coordinator_proxy(&self) -> Option<&SpreadingProxy> {
        self.spreader.as_ref()
    }

    /// A replica started by [`Sandbox::add_coordinator`].
    pub fn coordinator_replica(&mut self, index: usize) -> Option<&mut ManagedProcess> {
        self.replicas.get_mut(index)
    }

    /// The URL the agents report to: the first coordinator's report API, or the spreading proxy
    /// in front of all of them ([`SandboxConfig::coordinators`]).
    pub fn coordinator_url(&self) -> Option<&str> {
        self.coordinator_url.as_deref()
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

    /// The ClusterIP range Services get their addresses from (a /24 inside 127.100.0.0/16).
    pub fn service_range(&self) -> ServiceRange {
        self.service_range
    }

    /// The cluster DNS server's address (UDP and TCP port 53): what the kubelet's
    /// `--cluster-dns` names and pods' resolv.conf lists as `nameserver`.
    pub fn dns_address(&self) -> Ipv4Addr {
        self.service_range.dns_ip()
    }

    /// A kube-rs client with full access.
    pub fn client(&self) -> Result<kube::Client, TestbedError> {
        self.api.client()
    }

    /// Stops the kubelets and controllers, removes every container and stops containerd and the
    /// API server.
    pub async fn shutdown(mut self) {
        let mut relaunch: Vec<ManagedProcess> = std::mem::take(&mut self.agents);
        relaunch.extend(self.coordinator.take());
        relaunch.append(&mut self.replicas);
        if let Some(spreader) = self.spreader.take() {
            spreader.shutdown().await;
        }
        let _ = tokio::task::spawn_blocking(move || {
            for process in &mut relaunch {
                process.terminate(Duration::from_secs(20));
            }
        })
        .await;
        for kubelet in std::mem::take(&mut self.kubelets) {
            kubelet.shutdown().await;
        }
        if let Some(controllers) = self.controllers.take() {
            controllers.shutdown().await;
        }
        if let Some(network) = self.network.take() {
            network.shutdown().await;
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

/// The address of a report API URL `http://<addr>`.
fn report_addr(url: &str) -> Result<SocketAddr, TestbedError> {
    url.strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| TestbedError::Setup(format!("not a report API URL: {url}")))
}
