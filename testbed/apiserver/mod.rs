//! Test Kubernetes API server: the REST API subset relaunch, kube-rs and `kubectl` use, served
//! over plain HTTP on a loopback port, with upstream's request flow: authentication, impersonation,
//! RBAC, decoding and validation of custom resources, ValidatingAdmissionPolicies, storage. See
//! `docs/testbed.md` for what is faithful, approximated and missing.

mod access;
mod admission;
mod admission_policy;
mod cel;
mod convert;
mod error;
mod http;
mod patch;
mod protobuf;
mod rbac;
mod resources;
mod schema;
mod selectors;
mod services;
mod store;
mod table;
mod tls;
mod tokens;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use services::ServiceRange;
pub use tokens::API_AUDIENCE;

use super::TestbedError;
use store::Store;

/// Faults tests inject into the server.
pub struct Faults {
    fail_next: AtomicU32,
    fail_code: AtomicU32,
    delay_ms: AtomicU64,
    /// Bumped to end every open watch.
    watch_generation: tokio::sync::watch::Sender<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            fail_next: AtomicU32::new(0),
            fail_code: AtomicU32::new(500),
            delay_ms: AtomicU64::new(0),
            watch_generation: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Faults {
    /// Answers the next `count` API requests with `code` (500 or 429).
    pub fn fail_next(&self, count: u32, code: u16) {
        self.fail_code.store(u32::from(code), Ordering::SeqCst);
        self.fail_next.store(count, Ordering::SeqCst);
    }

    /// How many injected failures are still armed.
    pub fn remaining(&self) -> u32 {
        self.fail_next.load(Ordering::SeqCst)
    }

    /// Delays every API response by `delay` (zero to stop).
    pub fn delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Ends every open watch; clients must re-watch.
    pub fn close_watches(&self) {
        self.watch_generation.send_modify(|g| *g += 1);
    }

    fn watch_closer(&self) -> tokio::sync::watch::Receiver<u64> {
        self.watch_generation.subscribe()
    }

    /// Takes one injected failure, if armed.
    fn take_failure(&self) -> Option<u16> {
        self.fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .ok()
            .map(|_| self.fail_code.load(Ordering::SeqCst) as u16)
    }

    fn current_delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms.load(Ordering::SeqCst))
    }
}

/// One kind of request the server answered: who, which verb, on what. Counted like the real
/// API server's `apiserver_request_total`, plus the user, so tests and benchmarks can say how
/// many writes a component made.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestKind {
    /// `system:admin` (requests without credentials), `system:serviceaccount:<namespace>:<name>`,
    /// or whom the request impersonates.
    pub user: String,
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// The plural resource, with `/<subresource>` when there is one (e.g. `pods/status`).
    pub resource: String,
}

/// State shared by all connections.
pub(crate) struct Shared {
    store: Store,
    faults: Faults,
    tokens: tokens::Tokens,
    /// The RBAC authorizer over the stored RBAC objects.
    access: access::Access,
    /// Compiled CRD schemas and the admission policies.
    admissions: admission::Admissions,
    requests: Mutex<BTreeMap<RequestKind, u64>>,
    /// The requests authorization refused (403), of each kind.
    refused: Mutex<BTreeMap<RequestKind, u64>>,
    shutdown: CancellationToken,
    addr: SocketAddr,
    /// The server's CA and serving certificate (the listener speaks HTTP and HTTPS).
    tls: tls::Tls,
}

/// A running test API server. Dropping it stops the server.
pub struct ApiServer {
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ApiServer {
    /// Starts serving on `addr` (port 0 picks a free port), with ClusterIPs from `127.100.0.0/24`.
    pub async fn start(addr: SocketAddr) -> Result<Self, TestbedError> {
        Self::start_with_service_range(addr, ServiceRange::default()).await
    }

    /// Like [`ApiServer::start`], giving Services ClusterIPs from `range`; creates the
    /// `kubernetes` Service (the range's first address) with this server as its endpoint.
    pub async fn start_with_service_range(
        addr: SocketAddr,
        range: ServiceRange,
    ) -> Result<Self, TestbedError> {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            TestbedError::Setup(format!(
                "cannot listen on {addr} for the test API server: {e}"
            ))
        })?;
        let addr = listener.local_addr()?;
        let tls = tls::Tls::new(&[addr.ip(), std::net::IpAddr::V4(range.kubernetes_ip())])?;
        let shared = Arc::new(Shared {
            store: Store::new(),
            faults: Faults::default(),
            tokens: tokens::Tokens::default(),
            access: access::Access::default(),
            admissions: admission::Admissions::default(),
            requests: Mutex::default(),
            refused: Mutex::default(),
            shutdown: CancellationToken::new(),
            addr,
            tls,
        });
        shared.access.bootstrap(&shared.store).map_err(|e| {
            TestbedError::Setup(format!("seeding the bootstrap RBAC objects: {}", e.message))
        })?;
        shared.store.set_service_range(range);
        shared.store.set_root_ca(&shared.tls.ca_pem);
        services::create_kubernetes_service(&shared.store, &range, addr).map_err(|e| {
            TestbedError::Setup(format!("creating the kubernetes Service: {}", e.message))
        })?;
        let task = tokio::spawn(http::serve(listener, shared.clone()));
        Ok(Self {
            shared,
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `https://127.0.0.1:<port>`: the same port serves TLS with the server's own CA.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.shared.addr)
    }

    /// The CA certificate (PEM) that signed the serving certificate: kubeconfigs' and pods'
    /// `ca.crt`, and the `kube-root-ca.crt` ConfigMap's.
    pub fn ca_pem(&self) -> &str {
        &self.shared.tls.ca_pem
    }

    /// A kube-rs client over HTTPS that verifies the server against its CA; with `token`,
    /// authenticated as the token's owner, else as the administrator.
    pub fn tls_client(&self, token: Option<&str>) -> Result<kube::Client, TestbedError> {
        let uri = self
            .https_url()
            .parse()
            .map_err(|e| TestbedError::Setup(format!("bad API server URL: {e}")))?;
        let mut config = kube::Config::new(uri);
        config.default_namespace = "default".into();
        config.root_cert = Some(vec![self.shared.tls.ca_der.clone()]);
        let token = token.unwrap_or(self.shared.tokens.admin_token());
        config.auth_info.token = Some(token.to_string().into());
        kube::Client::try_from(config).map_err(|e| TestbedError::Setup(format!("kube client: {e}")))
    }

    /// A kubeconfig for `https://127.0.0.1:<port>` with the CA as `certificate-authority-data`;
    /// with `token`, requests authenticate as its owner (kubectl sends tokens over TLS).
    /// Without a token, the administrator's static token (kubectl prompts for a password when
    /// an HTTPS server's user has no credentials).
    pub fn tls_kubeconfig(&self, token: Option<&str>) -> String {
        use base64::Engine as _;
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem());
        let token = token.unwrap_or(self.shared.tokens.admin_token());
        kubeconfig(&self.https_url(), Some(token)).replace(
            &format!("    server: {}\n", self.https_url()),
            &format!(
                "    server: {}\n    certificate-authority-data: {ca}\n",
                self.https_url()
            ),
        )
    }

    /// Fault injection.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Forgets the watch history: the next watch from an older version gets `410 Gone`.
    pub fn expire_history(&self) {
        self.shared.store.expire_history();
    }

    /// How many authenticated requests of each kind were answered so far (refused ones too).
    pub fn request_counts(&self) -> BTreeMap<RequestKind, u64> {
        self.shared
            .requests
            .lock()
            .map(|counts| counts.clone())
            .unwrap_or_default()
    }

    /// How many resource requests of each kind authorization refused (403) so far: with relaunch
    /// running on exactly the RBAC it ships, any of its own is a permission the manifests lack.
    pub fn refused_counts(&self) -> BTreeMap<RequestKind, u64> {
        self.shared
            .refused
            .lock()
            .map(|counts| counts.clone())
            .unwrap_or_default()
    }

    /// Makes an issued token expire now.
    pub fn expire_token(&self, token: &str) {
        self.shared.tokens.expire(token);
    }

    /// A kube-rs client without credentials: the sandbox's administrator (`system:masters`).
    pub fn client(&self) -> Result<kube::Client, TestbedError> {
        client_for(&self.url(), None)
    }

    /// A kubeconfig for this server; with `token`, requests authenticate as its owner.
    pub fn kubeconfig(&self, token: Option<&str>) -> String {
        kubeconfig(&self.url(), token)
    }

    /// Stops serving and ends all watches.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        self.shared.faults.close_watches();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        self.shared.faults.close_watches();
    }
}

/// A kube-rs client for the server at `url`, optionally with a bearer token.
pub fn client_for(url: &str, token: Option<&str>) -> Result<kube::Client, TestbedError> {
    let uri = url
        .parse()
        .map_err(|e| TestbedError::Setup(format!("bad API server URL {url}: {e}")))?;
    let mut config = kube::Config::new(uri);
    config.default_namespace = "default".into();
    if let Some(token) = token {
        config.auth_info.token = Some(token.to_string().into());
    }
    kube::Client::try_from(config).map_err(|e| TestbedError::Setup(format!("kube client: {e}")))
}

/// A kubeconfig file's text for the server at `url`.
pub fn kubeconfig(url: &str, token: Option<&str>) -> String {
    let user = match token {
        Some(token) => format!("{{token: \"{token}\"}}"),
        None => "{}".to_string(),
    };
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: relaunch-testbed
  cluster:
    server: {url}
contexts:
- name: relaunch-testbed
  context:
    cluster: relaunch-testbed
    user: relaunch-testbed
    namespace: default
current-context: relaunch-testbed
users:
- name: relaunch-testbed
  user: {user}
"
    )
}
