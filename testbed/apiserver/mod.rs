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

/// Faults tests inject into the server: one-off ones (`fail_next`, `delay`, `close_watches`)
/// and, once [`Faults::inject`] is called, faults drawn at random for every request of the chosen
/// users. Off by default. Every fault served is counted ([`Faults::injected`]).
pub struct Faults {
    fail_next: AtomicU32,
    fail_code: AtomicU32,
    delay_ms: AtomicU64,
    /// Bumped to end every open watch.
    watch_generation: tokio::sync::watch::Sender<u64>,
    /// The random faults, if injecting, and the state of their generator.
    rates: Mutex<Option<(FaultRates, u64)>>,
    counts: Arc<FaultCounters>,
}

/// Faults drawn at random, each request (of [`FaultRates::users`]) on its own. Rates are
/// fractions of the requests (0.0 to 1.0).
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRates {
    /// Only requests of users whose name starts with this (empty: every user), e.g.
    /// `system:serviceaccount:relaunch-system:` for relaunch's agent and coordinator.
    pub users: String,
    /// Requests answered `500 InternalError`.
    pub error: f64,
    /// Requests answered `429 TooManyRequests` with `Retry-After: 1`.
    pub throttle: f64,
    /// Watches ended early, after a random time up to [`FaultRates::watch_lifetime`] (as an API
    /// server restart or a load balancer ends them).
    pub watch_close: f64,
    pub watch_lifetime: Duration,
    /// Watches from a `resourceVersion` answered `410 Gone` (expired), as after compaction: as
    /// kube-apiserver's watch cache does it, the watch starts and its one event is an `ERROR`
    /// with the 410 Status.
    pub watch_gone: f64,
    /// Seed of the draws (the same seed and the same requests draw the same faults).
    pub seed: u64,
}

impl Default for FaultRates {
    fn default() -> Self {
        Self {
            users: String::new(),
            error: 0.0,
            throttle: 0.0,
            watch_close: 0.0,
            watch_lifetime: Duration::from_secs(5),
            watch_gone: 0.0,
            seed: 0,
        }
    }
}

/// How many faults of each kind the server served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// `500` answers (injected by rate or by `fail_next`).
    pub errors: u64,
    /// `429` answers.
    pub throttled: u64,
    /// Watches ended early (by rate; `close_watches` is not counted).
    pub watches_closed: u64,
    /// Watches answered `410 Gone` by rate.
    pub watches_gone: u64,
}

#[derive(Default)]
struct FaultCounters {
    errors: AtomicU64,
    throttled: AtomicU64,
    watches_closed: AtomicU64,
    watches_gone: AtomicU64,
}

/// What a request drew.
pub(crate) enum Fault {
    /// Answer with this code (500 or 429).
    Fail(u16),
    /// Answer the watch `410 Gone`.
    Gone,
    /// Serve the watch, but end it after this long.
    CloseWatchAfter(Duration),
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            fail_next: AtomicU32::new(0),
            fail_code: AtomicU32::new(500),
            delay_ms: AtomicU64::new(0),
            watch_generation: tokio::sync::watch::Sender::new(0),
            rates: Mutex::new(None),
            counts: Arc::default(),
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

    /// Injects faults at random, at `rates`, from now on (replacing earlier rates). Open
    /// watches are ended (uncounted), so that every watch from now on draws its faults.
    pub fn inject(&self, rates: FaultRates) {
        let seed = rates.seed;
        if let Ok(mut current) = self.rates.lock() {
            *current = Some((rates, seed));
        }
        self.close_watches();
    }

    /// Stops injecting random faults (watches already doomed still end early).
    pub fn stop_injecting(&self) {
        if let Ok(mut current) = self.rates.lock() {
            *current = None;
        }
    }

    /// How many faults of each kind were served so far.
    pub fn injected(&self) -> FaultCounts {
        let c = &self.counts;
        FaultCounts {
            errors: c.errors.load(Ordering::SeqCst),
            throttled: c.throttled.load(Ordering::SeqCst),
            watches_closed: c.watches_closed.load(Ordering::SeqCst),
            watches_gone: c.watches_gone.load(Ordering::SeqCst),
        }
    }

    fn watch_closer(&self) -> tokio::sync::watch::Receiver<u64> {
        self.watch_generation.subscribe()
    }

    /// Takes one injected failure, if armed.
    fn take_failure(&self) -> Option<u16> {
        let code = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .ok()
            .map(|_| self.fail_code.load(Ordering::SeqCst) as u16)?;
        self.count_failure(code);
        Some(code)
    }

    fn count_failure(&self, code: u16) {
        let counter = if code == 429 {
            &self.counts.throttled
        } else {
            &self.counts.errors
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }

    /// The fault, if any, that a request of `user` draws; `watch` says whether it is a watch
    /// and `from_version` whether it starts from a resourceVersion.
    pub(crate) fn draw(&self, user: &str, watch: bool, from_version: bool) -> Option<Fault> {
        let mut current = self.rates.lock().ok()?;
        let (rates, state) = current.as_mut()?;
        if !user.starts_with(rates.users.as_str()) {
            return None;
        }
        let mut next = || {
            // splitmix64, to [0, 1).
            *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = *state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        let fault = if next() < rates.error {
            Some(Fault::Fail(500))
        } else if next() < rates.throttle {
            Some(Fault::Fail(429))
        } else if watch && from_version && next() < rates.watch_gone {
            self.counts.watches_gone.fetch_add(1, Ordering::SeqCst);
            Some(Fault::Gone)
        } else if watch && next() < rates.watch_close {
            let lifetime = rates.watch_lifetime.mul_f64(next());
            Some(Fault::CloseWatchAfter(lifetime))
        } else {
            None
        };
        if let Some(Fault::Fail(code)) = fault {
            self.count_failure(code);
        }
        fault
    }

    /// Counts a watch ended early by a drawn [`Fault::CloseWatchAfter`].
    pub(crate) fn closed_counter(&self) -> Arc<dyn Fn() + Send + Sync> {
        let counts = self.counts.clone();
        Arc::new(move || {
            counts.watches_closed.fetch_add(1, Ordering::SeqCst);
        })
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

/// One answered request to a single named object (get, create, update, patch, delete): when
/// the server answered it, who made it and what it was. A test-only record, so benchmarks can
/// say when each write to an object happened and who made it (and when a component read the
/// object just before); lists and watches are not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRequest {
    /// When the answer was ready: for a write, after it was stored and its watch event sent.
    pub at: std::time::SystemTime,
    /// As in [`RequestKind::user`].
    pub user: String,
    /// get, create, update, patch, delete.
    pub verb: String,
    /// The plural resource, with `/<subresource>` when there is one.
    pub resource: String,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    /// The object's name (for a create, `metadata.name` of the body; empty with `generateName`).
    pub name: String,
    /// The HTTP status of the answer.
    pub code: u16,
    /// How long the server worked on it: from the request's headers to the answer (reading
    /// the body, authentication, authorization, admission, storing, the watch event).
    pub took: std::time::Duration,
}

/// How many [`ObjectRequest`]s are kept (the oldest are dropped): a few MiB at most, however
/// long the server runs.
const OBJECT_REQUESTS_KEPT: usize = 100_000;

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
    /// The latest requests to single objects, oldest first.
    object_requests: Mutex<std::collections::VecDeque<ObjectRequest>>,
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
            object_requests: Mutex::default(),
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

    /// The latest answered requests to single named objects (at most 100,000), oldest first:
    /// when each write and each read of one object happened, and who made it.
    pub fn object_requests(&self) -> Vec<ObjectRequest> {
        self.shared
            .object_requests
            .lock()
            .map(|log| log.iter().cloned().collect())
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
