//! Kubelet simulator: one per simulated node. Watches the pods bound to its node through the
//! Kubernetes API and drives a real containerd through CRI the way the kubelet does
//! (KUBELET.md): sandboxes and containers with the kubelet's labels and annotations, restarts
//! per restartPolicy with crash-loop back-off, readiness probes and gates, preStop on deletion,
//! and pod status written as a strategic merge patch on the status subresource.
//!
//! The decisions are pure functions over plain data (`plan`, `status`, `backoff`, `probe`,
//! `template`); this module is the shell that lists, acts and writes.

mod backoff;
mod downward;
mod node;
mod plan;
mod probe;
mod runtime;
mod security;
mod status;
mod template;
mod volumes;

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Pod, Probe, Secret, Service, ServiceAccount,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use backoff::CrashLoopBackoff;

use self::backoff::BackoffTable;
use self::plan::{is_sidecar, plan_pod, restart_count_from_logs};
use self::probe::{Action, ProbeCounter, ProbeTiming};
use self::runtime::{Instance, PodRuntime, relist};
use self::status::{StatusInputs, desired_status, status_patch};
use self::template::{container_template, empty_dir, identity, pod_volumes_dir};
use super::TestbedError;
use super::pod::{self as testbed_pod, PodSandbox};
use relaunch_cri::{ContainerState, RuntimeClient};

/// Least time the runtime gets to stop a container after preStop, as the kubelet gives.
const MIN_STOP_GRACE: Duration = Duration::from_secs(2);
/// The API's default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// Settings of one simulated node.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    pub node_name: String,
    /// A loopback address (127.0.0.x); pods report it as podIP and hostIP (host network).
    pub node_ip: Ipv4Addr,
    /// Where pod log directories go, like `/var/log/pods`.
    pub pod_log_root: PathBuf,
    /// Root of emptyDir (`pods/<uid>/volumes/<name>`) and PVC (`pvc/<ns>/<claim>`) directories.
    pub volume_root: PathBuf,
    pub backoff: CrashLoopBackoff,
    /// How often the runtime is re-listed (the generic PLEG's 1 s).
    pub relist_period: Duration,
    /// Projected service-account tokens are renewed at 80 % of their lifetime or after 24 h, as
    /// the kubelet's token manager does, or once they are this old (tests of rotation).
    pub token_max_age: Option<Duration>,
    /// The cluster DNS server pods' resolv.conf names (the kubelet's `--cluster-dns`); `None`:
    /// pods get the host's resolv.conf.
    pub cluster_dns: Option<Ipv4Addr>,
    /// The node's own filesystem root for `hostPath` volumes: `None` (the default) mounts the
    /// path itself; a directory mounts `<host_root>/<path>`, so simulated nodes sharing this
    /// machine each have their own `/var/lib/relaunch` (the deployed sandbox sets it).
    pub host_root: Option<PathBuf>,
    /// Images imported into the runtime that containers naming them run from. Every other
    /// image name runs the test image (the simulator's stand-in for pulling).
    pub images: Vec<String>,
}

impl KubeletConfig {
    /// The kubelet's defaults, with logs and volumes under `root_dir`.
    pub fn new(node_name: impl Into<String>, node_ip: Ipv4Addr, root_dir: &Path) -> Self {
        Self {
            node_name: node_name.into(),
            node_ip,
            pod_log_root: root_dir.join("log").join("pods"),
            volume_root: root_dir.join("volumes"),
            backoff: CrashLoopBackoff::default(),
            relist_period: Duration::from_secs(1),
            token_max_age: None,
            cluster_dns: None,
            host_root: None,
            images: Vec::new(),
        }
    }
}

/// A running kubelet simulator. [`Kubelet::shutdown`] stops it and leaves containers running.
pub struct Kubelet {
    token: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Kubelet {
    /// Registers the Node (Ready, InternalIP = node IP) and starts watching and syncing pods.
    pub async fn start(
        client: kube::Client,
        runtime: RuntimeClient,
        config: KubeletConfig,
    ) -> Result<Kubelet, TestbedError> {
        node::register(&client, &runtime, &config).await?;
        let token = CancellationToken::new();
        let (store, writer) = reflector::store::<Pod>();
        let (config_maps, config_map_writer) = reflector::store::<ConfigMap>();
        let (secrets, secret_writer) = reflector::store::<Secret>();
        let (services, service_writer) = reflector::store::<Service>();
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "kubelet".into(),
                instance: Some(config.node_name.clone()),
            },
        );
        let shared = Arc::new(Shared {
            client: client.clone(),
            runtime,
            config: config.clone(),
            pods: store,
            notify: Notify::new(),
            token: token.clone(),
            probes: Mutex::default(),
            started: Mutex::default(),
            terminating: Mutex::default(),
            killing: Mutex::default(),
            recorder,
            config_maps,
            secrets,
            services,
            tokens: Mutex::default(),
            mount_errors: Mutex::default(),
        });
        // The kubelet's ConfigMap and Secret managers (the Watch strategy): caches that env
        // resolution and the API-data volumes read.
        let mut caches = Vec::new();
        let cm_api: Api<ConfigMap> = Api::all(client.clone());
        caches.push(spawn_cache(
            cm_api,
            config_map_writer,
            token.clone(),
            "ConfigMap",
        ));
        let secret_api: Api<Secret> = Api::all(client.clone());
        caches.push(spawn_cache(
            secret_api,
            secret_writer,
            token.clone(),
            "Secret",
        ));
        let service_api: Api<Service> = Api::all(client.clone());
        caches.push(spawn_cache(
            service_api,
            service_writer,
            token.clone(),
            "Service",
        ));

        let pods: Api<Pod> = Api::all(client);
        let watch_config =
            watcher::Config::default().fields(&format!("spec.nodeName={}", config.node_name));
        let watch_shared = shared.clone();
        let watch = tokio::spawn(async move {
            let stream =
                reflector::reflector(writer, watcher(pods, watch_config)).default_backoff();
            let mut stream = std::pin::pin!(stream);
            loop {
                tokio::select! {
                    _ = watch_shared.token.cancelled() => break,
                    event = stream.next() => match event {
                        Some(Ok(_)) => watch_shared.notify.notify_one(),
                        Some(Err(e)) => tracing::warn!(node = %watch_shared.config.node_name, "pod watch failed: {e}"),
                        None => break,
                    },
                }
            }
        });
        let sync = tokio::spawn(SyncLoop::new(shared).run());
        let mut tasks = vec![watch, sync];
        tasks.extend(caches);
        Ok(Kubelet { token, tasks })
    }

    /// Stops the simulator's tasks; containers keep running as they are.
    pub async fn shutdown(self) {
        self.token.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// What the sync loop shares with the watch, probe, kill and termination tasks.
struct Shared {
    client: kube::Client,
    runtime: RuntimeClient,
    config: KubeletConfig,
    pods: Store<Pod>,
    notify: Notify,
    token: CancellationToken,
    /// Readiness probe results by container ID.
    probes: Mutex<HashMap<String, bool>>,
    /// Startup probe results by container ID (true once it succeeded).
    started: Mutex<HashMap<String, bool>>,
    /// Pods (by UID) whose deletion is being carried out.
    terminating: Mutex<HashSet<String>>,
    /// Containers (by ID) being stopped by the kubelet itself.
    killing: Mutex<HashSet<String>>,
    recorder: Recorder,
    config_maps: Store<ConfigMap>,
    secrets: Store<Secret>,
    services: Store<Service>,
    /// Projected service-account tokens by `<pod uid>/<volume>/<path>`.
    tokens: Mutex<HashMap<String, CachedToken>>,
    /// The last FailedMount message per pod UID (one Event per distinct failure).
    mount_errors: Mutex<HashMap<String, String>>,
}

/// A projected token and when to renew it.
#[derive(Clone)]
struct CachedToken {
    token: String,
    renew_at: SystemTime,
}

/// Runs a reflector for `api` into `writer` until `token` is cancelled.
fn spawn_cache<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    token: CancellationToken,
    what: &'static str,
) -> JoinHandle<()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    tokio::spawn(async move {
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff();
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                event = stream.next() => match event {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => tracing::warn!("{what} watch failed: {e}"),
                    None => break,
                },
            }
        }
    })
}

/// The kubelet's ConfigMap and Secret caches as [`downward::Objects`].
struct Caches<'a>(&'a Shared);

impl downward::Objects for Caches<'_> {
    fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap> {
        let key = ObjectRef::new(name).within(namespace);
        self.0.config_maps.get(&key).map(|o| (*o).clone())
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
        let key = ObjectRef::new(name).within(namespace);
        self.0.secrets.get(&key).map(|o| (*o).clone())
    }

    fn services(&self, namespace: &str, links: bool) -> Vec<Service> {
        let mut services: Vec<Service> = self
            .0
            .services
            .state()
            .iter()
            .filter(|s| {
                let ns = s.metadata.namespace.as_deref();
                let name = s.metadata.name.as_deref();
                (ns == Some("default") && name == Some("kubernetes"))
                    || (links && ns == Some(namespace))
            })
            .map(|s| (**s).clone())
            .collect();
        services.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        services.dedup_by(|a, b| a.metadata.uid == b.metadata.uid);
        services
    }
}

impl Shared {
    fn dns_config(&self, pod: &Pod) -> Option<cri::DnsConfig> {
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        security::dns_config(pod, self.config.cluster_dns, &host)
    }

    fn caches_ready(&self) -> bool {
        futures::FutureExt::now_or_never(self.config_maps.wait_until_ready()).is_some()
            && futures::FutureExt::now_or_never(self.secrets.wait_until_ready()).is_some()
            && futures::FutureExt::now_or_never(self.services.wait_until_ready()).is_some()
    }

    /// Writes the pod's API-data volumes (secret, configMap, downwardAPI, projected) from the
    /// caches with the atomic writer; only what changed is rewritten. `Err` is a FailedMount.
    async fn mount_volumes(&self, pod: &Pod) -> Result<(), String> {
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            if let Some(host_path) = &volume.host_path {
                volumes::host_path(
                    &template::node_host_path(self.config.host_root.as_deref(), &host_path.path),
                    host_path.type_.as_deref().unwrap_or_default(),
                )
                .map_err(|e| {
                    format!(
                        "MountVolume.SetUp failed for volume {:?} : {e}",
                        volume.name
                    )
                })?;
            }
        }
        let api_data: Vec<&k8s_openapi::api::core::v1::Volume> = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .filter(|v| volumes::is_api_data(v))
            .collect();
        if api_data.is_empty() {
            return Ok(());
        }
        if !self.caches_ready() {
            return Err("the ConfigMap and Secret caches are not synced yet".into());
        }
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        for volume in api_data {
            let mut tokens = std::collections::BTreeMap::new();
            for source in volumes::token_sources(volume) {
                let token = self.projected_token(pod, &volume.name, &source).await?;
                tokens.insert(source.path.clone(), token);
            }
            let files = volumes::payload(pod, volume, self.config.node_ip, &Caches(self), &tokens)
                .map_err(|e| {
                    format!(
                        "MountVolume.SetUp failed for volume {:?} : {e}",
                        volume.name
                    )
                })?;
            let dir = empty_dir(&self.config.volume_root, uid, &volume.name);
            let fs_group = pod
                .spec
                .as_ref()
                .and_then(|s| s.security_context.as_ref())
                .and_then(|c| c.fs_group)
                .and_then(|g| u32::try_from(g).ok());
            let files = match fs_group {
                Some(_) => volumes::with_fs_group_modes(files),
                None => files,
            };
            volumes::write_owned(&dir, &files, fs_group).map_err(|e| {
                format!(
                    "MountVolume.SetUp failed for volume {:?} : {e}",
                    volume.name
                )
            })?;
        }
        Ok(())
    }

    /// The token of a projected `serviceAccountToken` source: requested through TokenRequest,
    /// bound to the pod, renewed at 80 % of its lifetime or after 24 h (the token manager).
    async fn projected_token(
        &self,
        pod: &Pod,
        volume: &str,
        source: &volumes::TokenSource,
    ) -> Result<String, String> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let key = format!("{uid}/{volume}/{}", source.path);
        let now = SystemTime::now();
        if let Some(cached) = self.tokens.lock().ok().and_then(|t| t.get(&key).cloned())
            && now < cached.renew_at
        {
            return Ok(cached.token);
        }
        let account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let audiences: Vec<&str> = if source.audience.is_empty() {
            Vec::new()
        } else {
            vec![source.audience.as_str()]
        };
        let request = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": audiences, "expirationSeconds": source.expiration_seconds,
                     "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                                        "name": pod.name_any(), "uid": uid}},
        });
        let api: Api<ServiceAccount> = self.pod_namespace_api(pod);
        let answer: serde_json::Value = api
            .create_subresource("token", &account, &PostParams::default(), &request)
            .await
            .map_err(|e| format!("failed to fetch token: {e}"))?;
        let token = answer["status"]["token"]
            .as_str()
            .ok_or("failed to fetch token: no token in the answer")?
            .to_string();
        let lifetime = answer["status"]["expirationTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(SystemTime::from)
            .and_then(|t| t.duration_since(now).ok())
            .unwrap_or(Duration::from_secs(
                u64::try_from(source.expiration_seconds).unwrap_or(3600),
            ));
        let mut renew_after = (lifetime * 4 / 5).min(Duration::from_secs(24 * 3600));
        if let Some(max) = self.config.token_max_age {
            renew_after = renew_after.min(max);
        }
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(
                key,
                CachedToken {
                    token: token.clone(),
                    renew_at: now + renew_after,
                },
            );
        }
        Ok(token)
    }

    fn pod_namespace_api<K>(&self, pod: &Pod) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default())
    }

    fn event(&self, pod: &Pod, type_: EventType, reason: &str, note: String) {
        let reference = pod.object_ref(&());
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: reason.to_string(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!("event not recorded: {e}");
            }
        });
    }

    fn pod_api(&self, pod: &Pod) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default())
    }
}

/// The state only the sync loop touches.
struct SyncLoop {
    shared: Arc<Shared>,
    backoff: BackoffTable,
    statuses: HashMap<String, Instance>,
    probe_workers: HashMap<String, CancellationToken>,
    /// Pods (by UID) this kubelet created sandboxes for.
    owned: HashSet<String>,
    /// Last status patch per pod UID and the resourceVersion it was computed against.
    written: HashMap<String, (Option<String>, serde_json::Value)>,
    /// Exited instances a BackOff event was already emitted for.
    backoff_reported: HashSet<String>,
    /// Containers that could not be created for their configuration, by pod UID and container
    /// name, with the message (`CreateContainerConfigError`).
    config_errors: HashMap<String, std::collections::BTreeMap<String, String>>,
}

impl SyncLoop {
    fn new(shared: Arc<Shared>) -> Self {
        let backoff = BackoffTable::new(shared.config.backoff);
        Self {
            shared,
            backoff,
            statuses: HashMap::new(),
            probe_workers: HashMap::new(),
            owned: HashSet::new(),
            written: HashMap::new(),
            backoff_reported: HashSet::new(),
            config_errors: HashMap::new(),
        }
    }

    async fn run(mut self) {
        let token = self.shared.token.clone();
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(self.shared.config.relist_period) => {}
                _ = self.shared.notify.notified() => {}
            }
            self.sync_all().await;
        }
        for (_, worker) in self.probe_workers.drain() {
            worker.cancel();
        }
    }

    async fn sync_all(&mut self) {
        let snapshot = match relist(
            &self.shared.runtime,
            &self.shared.config.node_name,
            None,
            &mut self.statuses,
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(node = %self.shared.config.node_name, "runtime relist failed: {e}");
                return;
            }
        };
        let now = SystemTime::now();
        self.backoff.forget_stale(now);
        let mut live = HashSet::new();
        let mut running = HashSet::new();
        for pod in self.shared.pods.state() {
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            live.insert(uid.clone());
            if pod.metadata.deletion_timestamp.is_some() {
                self.start_termination(&pod);
                continue;
            }
            let rt = snapshot.get(&uid).cloned().unwrap_or_default();
            match self.sync_pod(&pod, rt).await {
                Ok(rt) => running.extend(rt.running().map(|c| c.id.clone())),
                Err(e) => tracing::warn!(pod = %pod.name_any(), "pod sync failed: {e}"),
            }
        }
        self.probe_workers.retain(|id, worker| {
            let keep = running.contains(id);
            if !keep {
                worker.cancel();
            }
            keep
        });
        if let Ok(mut probes) = self.shared.probes.lock() {
            probes.retain(|id, _| running.contains(id));
        }
        if let Ok(mut started) = self.shared.started.lock() {
            started.retain(|id, _| running.contains(id));
        }
        self.written.retain(|uid, _| live.contains(uid));
        self.config_errors.retain(|uid, _| live.contains(uid));
        // Pods deleted from the API without going through this kubelet's termination.
        if futures::FutureExt::now_or_never(self.shared.pods.wait_until_ready()).is_some() {
            let orphans: Vec<String> = self
                .owned
                .iter()
                .filter(|uid| !live.contains(*uid) && !self.is_terminating(uid))
                .cloned()
                .collect();
            for uid in orphans {
                let rt = snapshot.get(&uid).cloned().unwrap_or_default();
                match remove_pod_resources(&self.shared, &uid, &rt).await {
                    Ok(()) => {
                        self.owned.remove(&uid);
                    }
                    Err(e) => tracing::warn!(%uid, "cleaning up a deleted pod failed: {e}"),
                }
            }
        }
    }

    fn is_terminating(&self, uid: &str) -> bool {
        self.shared
            .terminating
            .lock()
            .map(|t| t.contains(uid))
            .unwrap_or(true)
    }

    /// One pod sync; returns the pod's runtime state after acting.
    async fn sync_pod(
        &mut self,
        pod: &Pod,
        mut rt: PodRuntime,
    ) -> Result<PodRuntime, TestbedError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if !rt.sandboxes.is_empty() {
            self.owned.insert(uid.clone());
        }
        let now = SystemTime::now();
        let plan = plan_pod(pod, &rt, &mut self.backoff, now);
        let mut acted = false;
        let mut raw = self.shared.runtime.raw();
        for id in &plan.remove {
            acted = true;
            if let Err(e) = raw
                .remove_container(cri::RemoveContainerRequest {
                    container_id: id.clone(),
                })
                .await
            {
                tracing::warn!(container = %id, "removing an old container failed: {e}");
            }
        }
        for id in &plan.kill {
            self.spawn_kill(pod, &rt, id);
        }
        for (name, message) in &plan.back_off {
            if let Some(exited) = rt.newest(name)
                && self.backoff_reported.insert(exited.id.clone())
            {
                self.shared
                    .event(pod, EventType::Warning, "BackOff", message.clone());
            }
        }
        let mut plan = plan;
        if !plan.start.is_empty() || rt.running().next().is_some() {
            let mounted = self.shared.mount_volumes(pod).await;
            let previous = self
                .shared
                .mount_errors
                .lock()
                .ok()
                .and_then(|mut e| match &mounted {
                    Ok(()) => e.remove(&uid),
                    Err(message) => e.insert(uid.clone(), message.clone()),
                });
            if let Err(message) = mounted {
                if previous.as_deref() != Some(message.as_str()) {
                    self.shared
                        .event(pod, EventType::Warning, "FailedMount", message.clone());
                }
                tracing::debug!(pod = %pod.name_any(), "volumes not ready: {message}");
                // No container starts before its volumes are set up.
                plan.start.clear();
            }
        }
        if !plan.start.is_empty() {
            let identity = identity(pod);
            let dns = self.shared.dns_config(pod);
            let sandbox = match rt.ready_sandbox() {
                Some(s) if !plan.create_sandbox => PodSandbox {
                    id: s.id.clone(),
                    config: testbed_pod::sandbox_config_with_dns(
                        &identity,
                        &self.shared.config.pod_log_root,
                        0,
                        dns,
                    ),
                },
                _ => {
                    self.owned.insert(uid.clone());
                    testbed_pod::run_pod_sandbox_with_dns(
                        &self.shared.runtime,
                        &identity,
                        &self.shared.config.pod_log_root,
                        dns,
                    )
                    .await?
                }
            };
            acted = true;
            for start in &plan.start {
                let Some(container) = find_container(pod, &start.name, start.init) else {
                    continue;
                };
                let restart_count = start.restart_count.unwrap_or_else(|| {
                    let dir = Path::new(sandbox.log_directory()).join(&start.name);
                    let names: Vec<String> = std::fs::read_dir(dir)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    restart_count_from_logs(names.iter().map(String::as_str))
                });
                let mut template = container_template(
                    pod,
                    container,
                    restart_count,
                    &self.shared.config.volume_root,
                    self.shared.config.host_root.as_deref(),
                );
                template.image = container
                    .image
                    .clone()
                    .filter(|image| self.shared.config.images.contains(image));
                // The environment is resolved now, when the container is created: a restarted
                // container sees the ConfigMaps and Secrets as they are at its creation.
                if !self.shared.caches_ready() {
                    break;
                }
                let env = match downward::container_env(
                    pod,
                    container,
                    self.shared.config.node_ip,
                    &Caches(&self.shared),
                ) {
                    Ok(env) => env,
                    Err(message) => {
                        self.config_error(pod, &start.name, message);
                        continue;
                    }
                };
                template.spec_hash = Some(template.hash());
                // The runtime sets HOSTNAME to the pod's hostname; pods here share the node's
                // UTS namespace (host network), which would give every pod the machine's name
                // (two coordinator replicas then had one leader-election identity).
                let mut env = env;
                let host_network = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.host_network)
                    .unwrap_or(false);
                if !host_network && !env.iter().any(|(name, _)| name == "HOSTNAME") {
                    let hostname = pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.hostname.clone())
                        .unwrap_or_else(|| pod.name_any());
                    env.insert(0, ("HOSTNAME".to_string(), hostname));
                }
                // `$(VAR)` in command and args, from the container's environment (the
                // kubelet's expansion.Expand).
                template.command = downward::expand_all(&template.command, &env);
                template.args = downward::expand_all(&template.args, &env);
                template.env = env;
                match security::container_security(pod, container) {
                    Ok(security) => template.security = Some(security),
                    Err(message) => {
                        self.config_error(pod, &start.name, message);
                        continue;
                    }
                }
                if let Some(errors) = self.config_errors.get_mut(&uid) {
                    errors.remove(&start.name);
                }
                for (host, _) in &template.mounts {
                    if let Err(e) = std::fs::create_dir_all(host) {
                        tracing::warn!(path = %host.display(), "creating a volume directory failed: {e}");
                    }
                }
                match testbed_pod::start_container(
                    &self.shared.runtime,
                    &sandbox,
                    &identity,
                    &template,
                )
                .await
                {
                    Ok(id) => {
                        self.shared.event(
                            pod,
                            EventType::Normal,
                            "Started",
                            format!("Started container {} ({id})", start.name),
                        );
                        // postStart holds the pod's next container until it finished, as the
                        // kubelet's startContainer does; a failure kills the container.
                        if !run_post_start(&self.shared, pod, container, &id, start.restart_count)
                            .await
                        {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(pod = %pod.name_any(), container = %start.name, "starting a container failed: {e}");
                        self.remove_unstarted(&uid, &start.name).await;
                        break;
                    }
                }
            }
        } else if plan.create_sandbox && !plan::is_terminal(pod) {
            self.owned.insert(uid.clone());
            testbed_pod::run_pod_sandbox_with_dns(
                &self.shared.runtime,
                &identity(pod),
                &self.shared.config.pod_log_root,
                self.shared.dns_config(pod),
            )
            .await?;
            acted = true;
        }
        if acted {
            rt = relist(
                &self.shared.runtime,
                &self.shared.config.node_name,
                Some(&uid),
                &mut self.statuses,
            )
            .await?
            .remove(&uid)
            .unwrap_or_default();
        }
        self.ensure_probe_workers(pod, &rt);
        self.write_status(pod, &rt, &plan.back_off).await;
        Ok(rt)
    }

    /// Records that `container` cannot be created (`CreateContainerConfigError`); a `Failed`
    /// Event when the reason is new.
    fn config_error(&mut self, pod: &Pod, container: &str, message: String) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let errors = self.config_errors.entry(uid).or_default();
        if errors.get(container) != Some(&message) {
            self.shared.event(
                pod,
                EventType::Warning,
                "Failed",
                format!("Error: {message}"),
            );
            errors.insert(container.to_string(), message);
        }
    }

    /// A container that was created but failed to start would block its slot: remove it.
    async fn remove_unstarted(&mut self, uid: &str, name: &str) {
        let Ok(mut snapshot) = relist(
            &self.shared.runtime,
            &self.shared.config.node_name,
            Some(uid),
            &mut self.statuses,
        )
        .await
        else {
            return;
        };
        let rt = snapshot.remove(uid).unwrap_or_default();
        let mut raw = self.shared.runtime.raw();
        for c in rt.instances(name) {
            if c.state == ContainerState::Created {
                let _ = raw
                    .remove_container(cri::RemoveContainerRequest {
                        container_id: c.id.clone(),
                    })
                    .await;
            }
        }
    }

    async fn write_status(
        &mut self,
        pod: &Pod,
        rt: &PodRuntime,
        back_off: &std::collections::BTreeMap<String, String>,
    ) {
        let probe_ready = self
            .shared
            .probes
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default();
        let probe_started = self
            .shared
            .started
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default();
        let desired = desired_status(
            pod,
            &StatusInputs {
                runtime: rt,
                probe_ready: &probe_ready,
                probe_started: &probe_started,
                back_off,
                node_ip: self.shared.config.node_ip,
                now: SystemTime::now(),
            },
        );
        let mut desired = desired;
        if let Some(errors) = pod
            .metadata
            .uid
            .as_ref()
            .and_then(|uid| self.config_errors.get(uid))
        {
            for status in desired
                .container_statuses
                .iter_mut()
                .chain(desired.init_container_statuses.iter_mut())
                .flatten()
            {
                let not_running = status.state.as_ref().is_none_or(|s| s.running.is_none());
                if let Some(message) = errors.get(&status.name)
                    && not_running
                {
                    status.state = Some(k8s_openapi::api::core::v1::ContainerState {
                        waiting: Some(k8s_openapi::api::core::v1::ContainerStateWaiting {
                            reason: Some("CreateContainerConfigError".into()),
                            message: Some(message.clone()),
                        }),
                        ..Default::default()
                    });
                }
            }
        }
        let Some(patch) = status_patch(pod, &desired) else {
            return;
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let version = pod.metadata.resource_version.clone();
        if self.written.get(&uid) == Some(&(version.clone(), patch.clone())) {
            // Already sent against this version; the watch has not caught up yet.
            return;
        }
        let name = pod.name_any();
        match self
            .shared
            .pod_api(pod)
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => {
                self.written.insert(uid, (version, patch));
            }
            Err(e) => tracing::warn!(pod = %name, "writing pod status failed: {e}"),
        }
    }

    fn ensure_probe_workers(&mut self, pod: &Pod, rt: &PodRuntime) {
        for instance in rt.running() {
            if self.probe_workers.contains_key(&instance.id) {
                continue;
            }
            let Some(container) = find_any_container(pod, &instance.name) else {
                continue;
            };
            if container.readiness_probe.is_none()
                && container.liveness_probe.is_none()
                && container.startup_probe.is_none()
            {
                continue;
            }
            let token = self.shared.token.child_token();
            self.probe_workers
                .insert(instance.id.clone(), token.clone());
            tokio::spawn(probe_worker(
                self.shared.clone(),
                pod.metadata.uid.clone().unwrap_or_default(),
                instance.clone(),
                container.clone(),
                token,
            ));
        }
    }

    fn spawn_kill(&self, pod: &Pod, rt: &PodRuntime, id: &str) {
        let Ok(mut killing) = self.shared.killing.lock() else {
            return;
        };
        if !killing.insert(id.to_string()) {
            return;
        }
        let Some(instance) = rt.containers.iter().find(|c| c.id == id).cloned() else {
            killing.remove(id);
            return;
        };
        let shared = self.shared.clone();
        let pod = pod.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shared.token.cancelled() => return,
                _ = kill_container(&shared, &pod, &instance, grace_of(&pod)) => {}
            }
            if let Ok(mut killing) = shared.killing.lock() {
                killing.remove(&instance.id);
            }
            shared.notify.notify_one();
        });
    }

    fn start_termination(&self, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let Ok(mut terminating) = self.shared.terminating.lock() else {
            return;
        };
        if !terminating.insert(uid.clone()) {
            return;
        }
        let shared = self.shared.clone();
        let pod = pod.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shared.token.cancelled() => return,
                result = terminate_pod(&shared, &pod) => if let Err(e) = result {
                    tracing::warn!(pod = %pod.name_any(), "terminating pod failed, will retry: {e}");
                },
            }
            if let Ok(mut terminating) = shared.terminating.lock() {
                terminating.remove(&uid);
            }
        });
    }
}

fn find_container<'a>(pod: &'a Pod, name: &str, init: bool) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    if init {
        spec.init_containers
            .as_ref()?
            .iter()
            .find(|c| c.name == name)
    } else {
        spec.containers.iter().find(|c| c.name == name)
    }
}

fn find_any_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    find_container(pod, name, false).or_else(|| find_container(pod, name, true))
}

/// The grace of the kubelet's own kill: the deletion grace, else the pod's termination grace.
fn grace_of(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref()?.termination_grace_period_seconds)
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    Duration::from_secs(seconds.max(0) as u64)
}

/// The kubelet's kill of one container: preStop within the grace, then StopContainer with what
/// is left of it (at least 2 s).
async fn kill_container(shared: &Shared, pod: &Pod, instance: &Instance, grace: Duration) {
    let started = Instant::now();
    let container = find_any_container(pod, &instance.name);
    shared.event(
        pod,
        EventType::Normal,
        "Killing",
        format!("Stopping container {}", instance.name),
    );
    if let Some(handler) = container
        .and_then(|c| c.lifecycle.as_ref())
        .and_then(|l| l.pre_stop.as_ref())
    {
        let ports = container.and_then(|c| c.ports.clone()).unwrap_or_default();
        let action = Action::of_handler(handler, &ports);
        let run = probe::run(
            &shared.runtime,
            &instance.id,
            shared.config.node_ip,
            &action,
            grace,
        );
        let outcome = tokio::time::timeout(grace, run).await;
        if !matches!(outcome, Ok(Ok(true))) {
            let detail = match outcome {
                Ok(Ok(_)) => "the handler failed".to_string(),
                Ok(Err(e)) => e,
                Err(_) => format!("did not finish within {grace:?}"),
            };
            shared.event(
                pod,
                EventType::Warning,
                "FailedPreStopHook",
                format!(
                    "PreStopHook failed for container {}: {detail}",
                    instance.name
                ),
            );
        }
    }
    let remaining = grace.saturating_sub(started.elapsed()).max(MIN_STOP_GRACE);
    if let Err(e) = shared.runtime.stop_container(&instance.id, remaining).await {
        tracing::warn!(container = %instance.id, "stopping container failed: {e}");
    }
}

/// Carries out a pod's deletion: kill its containers (regular ones, then sidecars), remove the
/// sandbox and emptyDirs, then delete the pod object for good.
async fn terminate_pod(shared: &Shared, pod: &Pod) -> Result<(), TestbedError> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let grace = grace_of(pod);
    let started = Instant::now();
    let mut cache = HashMap::new();
    let rt = relist(
        &shared.runtime,
        &shared.config.node_name,
        Some(&uid),
        &mut cache,
    )
    .await?
    .remove(&uid)
    .unwrap_or_default();
    let sidecars: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| is_sidecar(c))
        .map(|c| c.name.as_str())
        .collect();
    let (late, early): (Vec<&Instance>, Vec<&Instance>) = rt
        .running()
        .partition(|c| sidecars.contains(&c.name.as_str()));
    for group in [early, late] {
        let left = grace.saturating_sub(started.elapsed());
        futures::future::join_all(
            group
                .into_iter()
                .map(|c| kill_container(shared, pod, c, left)),
        )
        .await;
    }
    remove_pod_resources(shared, &uid, &rt).await?;
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.clone()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match shared.pod_api(pod).delete(&pod.name_any(), &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(TestbedError::Setup(format!(
            "deleting pod {} failed: {e}",
            pod.name_any()
        ))),
    }
}

/// Removes a pod's sandboxes (and with them its containers) and its emptyDir volumes.
async fn remove_pod_resources(
    shared: &Shared,
    uid: &str,
    rt: &PodRuntime,
) -> Result<(), TestbedError> {
    for sandbox in &rt.sandboxes {
        testbed_pod::remove_pod_sandbox(&shared.runtime, &sandbox.id).await?;
    }
    let dir = pod_volumes_dir(&shared.config.volume_root, uid);
    match std::fs::remove_dir_all(dir.parent().unwrap_or(&dir)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Probes one container as the kubelet's probe workers do, until cancelled: the startup probe
/// first (the container is not `started` until it succeeds; `failureThreshold` failures kill
/// it), then readiness (results published) and liveness (`failureThreshold` consecutive failures
/// kill the container, which restarts by its restart policy and back-off).
async fn probe_worker(
    shared: Arc<Shared>,
    pod_uid: String,
    instance: Instance,
    container: Container,
    token: CancellationToken,
) {
    let id = instance.id.clone();
    let ports = container.ports.clone().unwrap_or_default();
    let ran = instance
        .started_at
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default();
    let probe_once = |probe: &Probe, timing: &ProbeTiming, kind: &'static str| {
        let action = Action::of_probe(probe, &ports);
        let shared = shared.clone();
        let id = id.clone();
        let timeout = timing.timeout;
        async move {
            match probe::run(
                &shared.runtime,
                &id,
                shared.config.node_ip,
                &action,
                timeout,
            )
            .await
            {
                Ok(success) => success,
                Err(e) => {
                    tracing::debug!(container = %id, "{kind} probe could not run: {e}");
                    false
                }
            }
        }
    };
    if let Some(probe) = &container.startup_probe {
        let timing = ProbeTiming::of(probe);
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(timing.initial_delay.saturating_sub(ran)) => {}
        }
        let mut failures = 0u32;
        loop {
            if probe_once(probe, &timing, "startup").await {
                if let Ok(mut started) = shared.started.lock() {
                    started.insert(id.clone(), true);
                }
                shared.notify.notify_one();
                break;
            }
            failures = failures.saturating_add(1);
            if failures >= timing.failure_threshold {
                probe_kill(&shared, &pod_uid, &instance, probe, "startup").await;
                return;
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(timing.period) => {}
            }
        }
    }
    let started = Instant::now();
    let readiness = async {
        let Some(probe) = &container.readiness_probe else {
            return futures::future::pending::<()>().await;
        };
        let timing = ProbeTiming::of(probe);
        tokio::time::sleep(timing.initial_delay.saturating_sub(ran + started.elapsed())).await;
        let mut counter = ProbeCounter::new(&timing);
        loop {
            if counter.record(probe_once(probe, &timing, "readiness").await) {
                if let Ok(mut probes) = shared.probes.lock() {
                    probes.insert(id.clone(), counter.ready());
                }
                shared.notify.notify_one();
            }
            tokio::time::sleep(timing.period).await;
        }
    };
    let liveness = async {
        let Some(probe) = &container.liveness_probe else {
            return futures::future::pending::<()>().await;
        };
        let timing = ProbeTiming::of(probe);
        tokio::time::sleep(timing.initial_delay.saturating_sub(ran + started.elapsed())).await;
        let mut failures = 0u32;
        loop {
            if probe_once(probe, &timing, "liveness").await {
                failures = 0;
            } else {
                failures = failures.saturating_add(1);
                if failures >= timing.failure_threshold {
                    probe_kill(&shared, &pod_uid, &instance, probe, "liveness").await;
                    return;
                }
            }
            tokio::time::sleep(timing.period).await;
        }
    };
    tokio::select! {
        _ = token.cancelled() => {}
        _ = readiness => {}
        _ = liveness => {}
    }
}

/// Runs `container`'s postStart hook in the new instance `id`, within the pod's grace period;
/// on failure a FailedPostStartHook Event and the kubelet's kill. Returns whether it succeeded
/// (true without a hook).
async fn run_post_start(
    shared: &Shared,
    pod: &Pod,
    container: &Container,
    id: &str,
    restart_count: Option<u32>,
) -> bool {
    let Some(handler) = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.post_start.as_ref())
    else {
        return true;
    };
    let grace = grace_of(pod).max(MIN_STOP_GRACE);
    let ports = container.ports.clone().unwrap_or_default();
    let action = Action::of_handler(handler, &ports);
    let run = probe::run(&shared.runtime, id, shared.config.node_ip, &action, grace);
    let outcome = tokio::time::timeout(grace, run).await;
    if matches!(outcome, Ok(Ok(true))) {
        return true;
    }
    let detail = match outcome {
        Ok(Ok(_)) => "the handler failed".to_string(),
        Ok(Err(e)) => e,
        Err(_) => format!("did not finish within {grace:?}"),
    };
    shared.event(
        pod,
        EventType::Warning,
        "FailedPostStartHook",
        format!(
            "PostStartHook failed for container {}: {detail}",
            container.name
        ),
    );
    let instance = Instance {
        id: id.to_string(),
        sandbox_id: String::new(),
        pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
        name: container.name.clone(),
        attempt: restart_count.unwrap_or_default(),
        state: ContainerState::Running,
        created_at: None,
        started_at: None,
        finished_at: None,
        exit_code: 0,
        reason: String::new(),
        hash: String::new(),
        image_ref: String::new(),
    };
    kill_container(shared, pod, &instance, grace_of(pod)).await;
    false
}

/// The kubelet's kill of a container whose liveness or startup probe failed: Unhealthy and
/// Killing Events, then its usual kill (preStop, stop with the probe's or the pod's grace).
async fn probe_kill(
    shared: &Shared,
    pod_uid: &str,
    instance: &Instance,
    probe: &Probe,
    kind: &str,
) {
    let Some(pod) = shared
        .pods
        .state()
        .into_iter()
        .find(|p| p.metadata.uid.as_deref() == Some(pod_uid))
    else {
        return;
    };
    if let Ok(mut killing) = shared.killing.lock()
        && !killing.insert(instance.id.clone())
    {
        return;
    }
    let title = if kind == "startup" {
        "Startup"
    } else {
        "Liveness"
    };
    shared.event(
        &pod,
        EventType::Warning,
        "Unhealthy",
        format!("{title} probe failed"),
    );
    shared.event(
        &pod,
        EventType::Normal,
        "Killing",
        format!(
            "Container {} failed {kind} probe, will be restarted",
            instance.name
        ),
    );
    let grace = probe
        .termination_grace_period_seconds
        .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
        .unwrap_or_else(|| grace_of(&pod));
    kill_container(shared, &pod, instance, grace).await;
    if let Ok(mut killing) = shared.killing.lock() {
        killing.remove(&instance.id);
    }
    shared.notify.notify_one();
}
