//! What the integration tests and the benchmarks share: where this build put the binaries, the
//! sandbox [`Bed`] and the API-server-only [`TestApi`], pod and container helpers, the
//! container scripts and manifests the tests run, and running `kubectl` and Python.
//!
//! A test includes it with `mod support;`; the benchmarks through `benches/support`. What only
//! one file needs stays in that file.

#![allow(dead_code)] // each test file uses a part of it

mod bed;
mod fixtures;
mod monitor;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use relaunch_testbed::{ApiServer, Component};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[allow(unused_imports)] // as with dead code: each test file uses a part
pub use {
    bed::Bed, fixtures::*, monitor::Monitor, monitor::Observations, relaunch_testbed::eventually,
};

/// How long a test waits for a pod to become Ready or a request to finish, unless it says
/// otherwise.
pub const WAIT: Duration = Duration::from_secs(120);

/// The workspace's binaries, as this build made them.
pub struct Binaries {
    pub agent: PathBuf,
    pub coordinator: PathBuf,
    pub kubectl_relaunch: PathBuf,
}

/// The workspace's production binaries. (`relaunch-sandbox` belongs to the test bed crate and is
/// tested there.)
pub fn binaries() -> Binaries {
    Binaries {
        agent: env!("CARGO_BIN_EXE_relaunch-agent").into(),
        coordinator: env!("CARGO_BIN_EXE_relaunch-coordinator").into(),
        kubectl_relaunch: env!("CARGO_BIN_EXE_kubectl-relaunch").into(),
    }
}

impl Binaries {
    /// What the sandbox runs as relaunch: the agent and the coordinator.
    pub fn relaunch(&self) -> relaunch_testbed::Binaries {
        relaunch_testbed::Binaries {
            agent: self.agent.clone(),
            coordinator: self.coordinator.clone(),
        }
    }
}

/// The test API server alone (no containerd, no kubelets), with a kubeconfig for it in a
/// temporary directory.
pub struct TestApi {
    pub server: ApiServer,
    /// A client with full access.
    pub client: kube::Client,
    dir: tempfile::TempDir,
}

impl TestApi {
    pub async fn start() -> Self {
        let server = ApiServer::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let client = server.client().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kubeconfig"), server.kubeconfig(None)).unwrap();
        Self {
            server,
            client,
            dir,
        }
    }

    /// With relaunch's CRDs registered, as on a cluster where relaunch is installed.
    pub async fn with_relaunch_crds() -> Self {
        let api = Self::start().await;
        relaunch_testbed::install_crds(&api.client).await.unwrap();
        api
    }

    /// A kubeconfig with full access.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// A kubeconfig (a file in the temporary directory) that authenticates as `component`'s
    /// service account, whose rights are exactly the RBAC `manifests/base` ships (installed here
    /// first, with relaunch's namespace and service accounts).
    pub async fn relaunch_kubeconfig(&self, component: Component) -> PathBuf {
        relaunch_testbed::install_identities(&self.server)
            .await
            .unwrap();
        let text = relaunch_testbed::component_kubeconfig(&self.server, component)
            .await
            .unwrap();
        let path = self
            .dir
            .path()
            .join(format!("{}-kubeconfig", component.service_account()));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A kube-rs client that authenticates as `component`'s service account; see
    /// [`TestApi::relaunch_kubeconfig`].
    pub async fn relaunch_client(&self, component: Component) -> kube::Client {
        let kubeconfig = self.relaunch_kubeconfig(component).await;
        let config = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// The temporary directory, for a test's own files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Whether the pod's Ready condition is True.
pub fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The status of container `name`; fails the test if the pod reports none.
pub fn container_status(pod: &Pod, name: &str) -> ContainerStatus {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == name))
        .cloned()
        .unwrap_or_else(|| panic!("no status for container {name}"))
}

/// The restarts of all the pod's containers.
pub fn restart_count(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

/// A token for the service account `namespace/name` from the TokenRequest API, valid for an
/// hour, for `audience`; `bound` names an object it is bound to (`{"kind": "Node", ...}`).
pub async fn token(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    audience: &str,
    bound: Option<Value>,
) -> String {
    let request = json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [audience], "expirationSeconds": 3600, "boundObjectRef": bound},
    });
    let answer: Value = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_subresource("token", name, &PostParams::default(), &request)
        .await
        .unwrap();
    answer["status"]["token"].as_str().unwrap().to_string()
}

/// `kubectl ARGS` against `kubeconfig`, with HOME in `home` so that kubectl's caches stay there.
pub fn kubectl(kubeconfig: &Path, home: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("kubectl");
    command
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .args(args);
    command
}

/// Runs `command` to its end off the runtime's threads (the API server it talks to may be served
/// by this very runtime).
pub async fn output(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || {
        command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", command.get_program()))
    })
    .await
    .unwrap()
}

/// What a command printed, stdout then stderr.
pub fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The Python that can import `module`: `RELAUNCH_PYTHON` (scripts/test.sh installs the
/// packages there), else `python3`.
pub fn python(module: &str) -> String {
    let candidate = std::env::var("RELAUNCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let usable = Command::new(&candidate)
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        usable,
        "{candidate} cannot import {module}: run ./scripts/test.sh (it installs it) or set RELAUNCH_PYTHON"
    );
    candidate
}

/// One plain-HTTP request to `addr` (HTTP/1.0: the server closes the connection after its
/// answer, which comes unchunked); the status code and the body, or `None` if the server cannot
/// be reached or does not answer within seconds.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    let mut stream = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let mut request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// `GET path` on `addr`; see [`http`].
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http(addr, "GET", path, &[], "").await
}
