//! relaunch's own binaries run by the sandbox as real processes: the coordinator and one agent
//! per simulated node, each with the identity it would have on a cluster (service-account tokens
//! from the TokenRequest API: read-only API access, and a node-bound token for the coordinator).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::apiserver::{API_AUDIENCE, ApiServer};
use crate::{TestbedError, eventually};
use relaunch_api::COORDINATOR_AUDIENCE;

/// Namespace and service accounts relaunch runs under.
pub const RELAUNCH_NAMESPACE: &str = "relaunch-system";
pub const AGENT_SERVICE_ACCOUNT: &str = "relaunch-agent";
pub const COORDINATOR_SERVICE_ACCOUNT: &str = "relaunch-coordinator";

/// Where the relaunch binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub agent: PathBuf,
    pub coordinator: PathBuf,
}

impl Binaries {
    /// The binaries next to the running executable (how `relaunch-sandbox` finds them).
    pub fn beside_current_exe() -> Result<Self, TestbedError> {
        let exe = std::env::current_exe()?;
        let dir = exe.parent().ok_or_else(|| {
            TestbedError::Setup("cannot locate the executable's directory".into())
        })?;
        let binaries = Self {
            agent: dir.join("relaunch-agent"),
            coordinator: dir.join("relaunch-coordinator"),
        };
        for path in [&binaries.agent, &binaries.coordinator] {
            if !path.exists() {
                return Err(TestbedError::Setup(format!(
                    "{} is missing: build the workspace with cargo build --bins",
                    path.display()
                )));
            }
        }
        Ok(binaries)
    }
}

/// A child process with its command line kept, so it can be killed and started again.
pub struct ManagedProcess {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl ManagedProcess {
    fn spawn(
        name: &str,
        program: &Path,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log: PathBuf,
    ) -> Result<Self, TestbedError> {
        let mut process = Self {
            name: name.to_string(),
            program: program.to_path_buf(),
            args,
            env,
            log,
            child: None,
        };
        process.start()?;
        Ok(process)
    }

    /// Starts the process (again), appending to its log.
    pub fn start(&mut self) -> Result<(), TestbedError> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                TestbedError::Setup(format!("cannot start {}: {e}", self.program.display()))
            })?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns the exit status if it exited by itself.
    pub fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The kustomization users install relaunch from (`kubectl apply -k manifests/base`).
const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/base");

/// The kinds of `manifests/base` that make relaunch's identities.
const IDENTITY_KINDS: [&str; 6] = [
    "Namespace",
    "ServiceAccount",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
];

/// One of relaunch's components, each with its own service account in [`RELAUNCH_NAMESPACE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Agent,
    Coordinator,
}

impl Component {
    /// The component's service account.
    pub fn service_account(self) -> &'static str {
        match self {
            Component::Agent => AGENT_SERVICE_ACCOUNT,
            Component::Coordinator => COORDINATOR_SERVICE_ACCOUNT,
        }
    }
}

/// relaunch's namespace, service accounts and RBAC as `kubectl apply -k manifests/base` creates
/// them: the objects of those kinds in every file the kustomization lists, in its namespace and
/// with its labels. (Listed directories, `../crds`, hold no identities.)
pub fn identity_objects() -> Result<Vec<Value>, TestbedError> {
    manifest_objects(&IDENTITY_KINDS)
}

/// The kinds of `manifests/base` that make relaunch's admission policies.
const ADMISSION_KINDS: [&str; 2] = [
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

/// relaunch's admission policies (`manifests/base/admission-policy.yaml`) as `kubectl apply -k
/// manifests/base` creates them.
pub fn admission_objects() -> Result<Vec<Value>, TestbedError> {
    manifest_objects(&ADMISSION_KINDS)
}

/// The objects of `kinds` in every file the kustomization lists, in its namespace (for the
/// namespaced ones relaunch ships) and with its labels.
fn manifest_objects(kinds: &[&str]) -> Result<Vec<Value>, TestbedError> {
    let dir = Path::new(MANIFESTS);
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| TestbedError::Setup(format!("cannot read {}/{name}: {e}", dir.display())))
    };
    let kustomization: Value = serde_yaml::from_str(&read("kustomization.yaml")?)
        .map_err(|e| TestbedError::Setup(format!("manifests/base/kustomization.yaml: {e}")))?;
    let namespace = kustomization["namespace"].as_str();
    let mut labels = serde_json::Map::new();
    for pairs in kustomization["labels"].as_array().into_iter().flatten() {
        labels.extend(pairs["pairs"].as_object().cloned().unwrap_or_default());
    }
    let mut objects = Vec::new();
    for file in kustomization["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|f| dir.join(f).is_file())
    {
        let text = read(file)?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let mut object = Value::deserialize(document)
                .map_err(|e| TestbedError::Setup(format!("manifests/base/{file}: {e}")))?;
            let kind = object["kind"].as_str().unwrap_or_default().to_string();
            if !kinds.contains(&kind.as_str()) {
                continue;
            }
            if matches!(kind.as_str(), "ServiceAccount" | "Role" | "RoleBinding")
                && let Some(namespace) = namespace
            {
                object["metadata"]["namespace"] = json!(namespace);
            }
            for (key, value) in &labels {
                object["metadata"]["labels"][key] = value.clone();
            }
            objects.push(object);
        }
    }
    // The namespace before what goes in it.
    objects.sort_by_key(|o| o["kind"] != "Namespace");
    Ok(objects)
}

/// Creates relaunch's namespace, service accounts and RBAC on `api` from `manifests/base`
/// (objects already there are kept): what the agent and the coordinator may do is exactly what
/// the shipped manifests grant.
pub async fn install_identities(api: &ApiServer) -> Result<(), TestbedError> {
    install_objects(api, identity_objects()?).await
}

/// Creates relaunch's admission policies and their bindings on `api` from `manifests/base`
/// (objects already there are kept), as an installation from the manifests has them: the
/// coordinator admits exec actions only while they are installed.
pub async fn install_admission_policies(api: &ApiServer) -> Result<(), TestbedError> {
    install_objects(api, admission_objects()?).await
}

async fn install_objects(api: &ApiServer, objects: Vec<Value>) -> Result<(), TestbedError> {
    let client = api.client()?;
    for object in objects {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let kind = object["kind"].as_str().unwrap_or_default();
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let namespace = object["metadata"]["namespace"].as_str().map(str::to_string);
        let dynamic: DynamicObject = serde_json::from_value(object)?;
        let objects: Api<DynamicObject> = match &namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        ignore_exists(objects.create(&PostParams::default(), &dynamic).await)?;
    }
    Ok(())
}

/// A kubeconfig for `api` that authenticates as `component`'s service account, with a token
/// from the TokenRequest API (see [`install_identities`]).
pub async fn component_kubeconfig(
    api: &ApiServer,
    component: Component,
) -> Result<String, TestbedError> {
    let token = token(api, component.service_account(), &[API_AUDIENCE], None).await?;
    Ok(api.kubeconfig(Some(&token)))
}

fn ignore_exists<T>(result: Result<T, kube::Error>) -> Result<(), TestbedError> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(TestbedError::Setup(format!(
            "creating relaunch's objects from manifests/base: {e}"
        ))),
    }
}

/// A token for `service_account` from the TokenRequest API, optionally bound to a Node.
pub async fn token(
    api: &ApiServer,
    service_account: &str,
    audiences: &[&str],
    node: Option<&str>,
) -> Result<String, TestbedError> {
    let accounts: Api<ServiceAccount> = Api::namespaced(api.client()?, RELAUNCH_NAMESPACE);
    let bound = node.map(|n| json!({"apiVersion": "v1", "kind": "Node", "name": n}));
    let request = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"audiences": audiences, "expirationSeconds": 86_400, "boundObjectRef": bound},
    });
    let answer: serde_json::Value = accounts
        .create_subresource("token", service_account, &PostParams::default(), &request)
        .await
        .map_err(|e| {
            TestbedError::Setup(format!("requesting a token for {service_account}: {e}"))
        })?;
    answer["status"]["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| TestbedError::Setup("TokenRequest answered without a token".into()))
}

/// A free TCP port on `ip` (bound and released; good enough for a test bed).
pub fn free_port(ip: Ipv4Addr) -> Result<u16, TestbedError> {
    let listener = std::net::TcpListener::bind((ip, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Waits until `http://addr/readyz` answers 200.
pub async fn wait_ready(
    process: &mut ManagedProcess,
    admin: SocketAddr,
) -> Result<(), TestbedError> {
    let name = process.name().to_string();
    let what = format!("{name} to be ready on {admin}");
    let result = eventually(&what, Duration::from_secs(60), || async {
        readyz(admin).await.then_some(())
    })
    .await;
    if result.is_err() {
        let running = process.is_running();
        return Err(TestbedError::Setup(format!(
            "{name} did not become ready on http://{admin}/readyz ({}); its log:\n{}",
            if running { "still running" } else { "exited" },
            crate::tail(&process.log(), 30)
        )));
    }
    Ok(())
}

async fn readyz(admin: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut stream)) = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(admin),
    )
    .await
    else {
        return false;
    };
    let request = format!("GET /readyz HTTP/1.0\r\nHost: {admin}\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut answer)).await;
    answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200")
}

/// Name of the coordinators' leader-election Lease (in [`RELAUNCH_NAMESPACE`]).
pub const COORDINATOR_LEASE: &str = "relaunch-coordinator";

/// Starts the coordinator with its own service-account identity; returns it and the URL of its
/// report API.
pub async fn start_coordinator(
    api: &ApiServer,
    binaries: &Binaries,
    dir: &Path,
    extra_args: &[String],
) -> Result<(ManagedProcess, String), TestbedError> {
    start_coordinator_replica(api, binaries, dir, "coordinator", extra_args).await
}

/// Starts a coordinator replica whose files go under `dir/<subdir>`; replicas elect a leader
/// through the Lease [`COORDINATOR_LEASE`].
pub async fn start_coordinator_replica(
    api: &ApiServer,
    binaries: &Binaries,
    dir: &Path,
    subdir: &str,
    extra_args: &[String],
) -> Result<(ManagedProcess, String), TestbedError> {
    let dir = dir.join(subdir);
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        component_kubeconfig(api, Component::Coordinator).await?,
    )?;
    let ip = Ipv4Addr::LOCALHOST;
    let listen = SocketAddr::from((ip, free_port(ip)?));
    let admin = SocketAddr::from((ip, free_port(ip)?));
    let mut args = vec![
        "run".to_string(),
        "--kubeconfig".into(),
        kubeconfig.to_string_lossy().into_owned(),
        "--listen".into(),
        listen.to_string(),
        "--admin-listen".into(),
        admin.to_string(),
        "--agent-service-account".into(),
        format!("{RELAUNCH_NAMESPACE}:{AGENT_SERVICE_ACCOUNT}"),
        "--leader-election-namespace".into(),
        RELAUNCH_NAMESPACE.into(),
        "--leader-election-name".into(),
        COORDINATOR_LEASE.into(),
    ];
    args.extend(extra_args.iter().cloned());
    let mut process = ManagedProcess::spawn(
        &format!("relaunch-coordinator ({subdir})"),
        &binaries.coordinator,
        args,
        Vec::new(),
        dir.join("log"),
    )?;
    wait_ready(&mut process, admin).await?;
    Ok((process, format!("http://{listen}")))
}

/// Where and how one node's agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    /// The node's loopback address; the agent's admin endpoint listens on it.
    pub node_ip: Ipv4Addr,
    /// The agent's kubeconfig, token, state and log go under `<node_dir>/agent`.
    pub node_dir: PathBuf,
    pub cri_socket: PathBuf,
    pub coordinator_url: String,
    /// Extra command-line arguments (e.g. `--max-parallel 4`).
    pub args: Vec<String>,
    /// Extra environment (e.g. the agent's test-build failpoints).
    pub env: Vec<(String, String)>,
}

/// Starts the agent of one node: its service account's (read-only) API access and a node-bound
/// coordinator token.
pub async fn start_agent(
    api: &ApiServer,
    binaries: &Binaries,
    agent: &AgentConfig,
) -> Result<(ManagedProcess, SocketAddr), TestbedError> {
    let dir = agent.node_dir.join("agent");
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        component_kubeconfig(api, Component::Agent).await?,
    )?;
    let coordinator_token = token(
        api,
        AGENT_SERVICE_ACCOUNT,
        &[COORDINATOR_AUDIENCE],
        Some(&agent.node_name),
    )
    .await?;
    let token_file = dir.join("token");
    std::fs::write(&token_file, coordinator_token)?;
    let admin = SocketAddr::from((agent.node_ip, free_port(agent.node_ip)?));
    let mut args = vec![
        "--node-name".to_string(),
        agent.node_name.clone(),
        "--kubeconfig".into(),
        kubeconfig.to_string_lossy().into_owned(),
        "--cri-socket".into(),
        agent.cri_socket.to_string_lossy().into_owned(),
        "--coordinator-url".into(),
        agent.coordinator_url.clone(),
        "--token-file".into(),
        token_file.to_string_lossy().into_owned(),
        "--admin-listen".into(),
        admin.to_string(),
        "--state-dir".into(),
        dir.join("state").to_string_lossy().into_owned(),
    ];
    args.extend(agent.args.iter().cloned());
    let mut process = ManagedProcess::spawn(
        &format!("relaunch-agent ({})", agent.node_name),
        &binaries.agent,
        args,
        agent.env.clone(),
        dir.join("log"),
    )?;
    wait_ready(&mut process, admin).await?;
    Ok((process, admin))
}
