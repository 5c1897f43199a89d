//! The parts of the control plane relaunch relies on besides the API server: the StatefulSet,
//! Deployment, ReplicaSet, DaemonSet and EndpointSlice controllers, a stand-in for the PersistentVolume
//! controller that binds every claim, and the scheduler. They talk to the API only through
//! `kube::Client`, as kube-controller-manager and kube-scheduler do: watches fill caches, pure
//! functions decide, thin loops write.

mod claims;
mod daemonset;
mod deployment;
pub(crate) mod endpointslice;
mod expectations;
mod node_affinity;
mod ownership;
mod pods;
mod replicaset;
mod scheduler;
mod statefulset;
mod workload;

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::TestbedError;

/// How long `start` waits for the first list of every watched kind.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Every loop re-examines the world at least this often, even without watch events; this is
/// what retries unschedulable pods and notices `minReadySeconds` passing.
const RESYNC: Duration = Duration::from_secs(1);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The running workload controllers, claim binder and scheduler.
pub struct Controllers {
    token: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Controllers {
    /// Starts the StatefulSet, Deployment, ReplicaSet, DaemonSet and EndpointSlice controllers, a trivial PVC
    /// binder, and the scheduler; returns once their caches hold a first full list of every kind
    /// they watch.
    pub async fn start(client: Client) -> Result<Controllers, TestbedError> {
        let token = CancellationToken::new();
        let mut controllers = Controllers {
            token: token.clone(),
            tasks: Vec::new(),
        };

        let statefulset_wake = Arc::new(Notify::new());
        let scheduler_wake = Arc::new(Notify::new());
        let binder_wake = Arc::new(Notify::new());
        let deployment_wake = Arc::new(Notify::new());
        let replicaset_wake = Arc::new(Notify::new());
        let daemonset_wake = Arc::new(Notify::new());
        let endpointslice_wake = Arc::new(Notify::new());
        let expectations = Arc::new(expectations::Expectations::default());

        let sets = controllers.spawn_informer(
            Api::<StatefulSet>::all(client.clone()),
            vec![statefulset_wake.clone()],
        );
        let mut observer = expectations::PodObserver::default();
        let observed = expectations.clone();
        let pods = controllers.spawn_observed_informer(
            Api::<Pod>::all(client.clone()),
            vec![
                statefulset_wake.clone(),
                scheduler_wake.clone(),
                deployment_wake.clone(),
                replicaset_wake.clone(),
                daemonset_wake.clone(),
                endpointslice_wake.clone(),
            ],
            move |event| observer.observe(event, &observed),
        );
        let claims = controllers.spawn_informer(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            vec![statefulset_wake.clone(), binder_wake.clone()],
        );
        let nodes = controllers.spawn_informer(
            Api::<Node>::all(client.clone()),
            vec![scheduler_wake.clone(), daemonset_wake.clone()],
        );
        let deployments = controllers.spawn_informer(
            Api::<Deployment>::all(client.clone()),
            vec![deployment_wake.clone()],
        );
        let replica_sets = controllers.spawn_informer(
            Api::<ReplicaSet>::all(client.clone()),
            vec![deployment_wake.clone(), replicaset_wake.clone()],
        );
        let daemon_sets = controllers.spawn_informer(
            Api::<DaemonSet>::all(client.clone()),
            vec![daemonset_wake.clone()],
        );

        let services = controllers.spawn_informer(
            Api::<Service>::all(client.clone()),
            vec![endpointslice_wake.clone()],
        );
        let endpoint_slices = controllers.spawn_informer(
            Api::<EndpointSlice>::all(client.clone()),
            vec![endpointslice_wake.clone()],
        );

        let synced = async {
            sets.wait_until_ready().await?;
            pods.wait_until_ready().await?;
            claims.wait_until_ready().await?;
            nodes.wait_until_ready().await?;
            deployments.wait_until_ready().await?;
            replica_sets.wait_until_ready().await?;
            services.wait_until_ready().await?;
            endpoint_slices.wait_until_ready().await?;
            daemon_sets.wait_until_ready().await
        };
        match tokio::time::timeout(SYNC_TIMEOUT, synced).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => {
                controllers.shutdown().await;
                return Err(TestbedError::Timeout(
                    "the controllers to list StatefulSets, Deployments, ReplicaSets, DaemonSets, \
                     Services, EndpointSlices, Pods, PersistentVolumeClaims and Nodes"
                        .into(),
                ));
            }
        }

        let writer =
            |component| workload::PodWriter::new(client.clone(), component, expectations.clone());
        let replicasets = replicaset::ReplicaSetController::new(
            client.clone(),
            replica_sets.clone(),
            pods.clone(),
            writer("replicaset-controller"),
        );
        controllers.spawn_loop("replicaset controller", replicaset_wake, move || {
            let controller = replicasets.clone();
            async move { controller.sync_all().await }
        });

        let deployment_controller = deployment::DeploymentController::new(
            client.clone(),
            deployments,
            replica_sets,
            pods.clone(),
        );
        controllers.spawn_loop("deployment controller", deployment_wake, move || {
            let controller = deployment_controller.clone();
            async move { controller.sync_all().await }
        });

        let daemonsets = daemonset::DaemonSetController::new(
            client.clone(),
            daemon_sets,
            nodes.clone(),
            pods.clone(),
            writer("daemonset-controller"),
        );
        controllers.spawn_loop("daemonset controller", daemonset_wake, move || {
            let controller = daemonsets.clone();
            async move { controller.sync_all().await }
        });

        let statefulsets = statefulset::StatefulSetController::new(
            client.clone(),
            sets,
            pods.clone(),
            claims.clone(),
        );
        controllers.spawn_loop("statefulset controller", statefulset_wake, move || {
            let controller = statefulsets.clone();
            async move { controller.sync_all().await }
        });

        let endpointslices = endpointslice::EndpointSliceController::new(
            client.clone(),
            services,
            pods.clone(),
            endpoint_slices,
        );
        controllers.spawn_loop("endpointslice controller", endpointslice_wake, move || {
            let controller = endpointslices.clone();
            async move { controller.sync_all().await }
        });

        let binder = claims::ClaimBinder::new(client.clone(), claims);
        controllers.spawn_loop("claim binder", binder_wake, move || {
            let binder = binder.clone();
            async move { binder.sync_all().await }
        });

        let scheduler = scheduler::Scheduler::new(client, pods, nodes);
        controllers.spawn_loop("scheduler", scheduler_wake, move || {
            let scheduler = scheduler.clone();
            async move { scheduler.schedule_pending().await }
        });

        Ok(controllers)
    }

    /// Stops every loop and watch and waits for them to end.
    pub async fn shutdown(mut self) {
        self.token.cancel();
        for task in std::mem::take(&mut self.tasks) {
            if let Err(error) = task.await {
                warn!(%error, "controller task ended abnormally");
            }
        }
    }

    /// Watches every object of kind `K` into a cache, waking `wake` on every change.
    fn spawn_informer<K>(&mut self, api: Api<K>, wake: Vec<Arc<Notify>>) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        self.spawn_observed_informer(api, wake, |_| {})
    }

    /// Like `spawn_informer`, also handing every event to `observe` once the cache holds it
    /// (upstream's event handlers, which record what controllers expected to see).
    fn spawn_observed_informer<K, O>(
        &mut self,
        api: Api<K>,
        wake: Vec<Arc<Notify>>,
        mut observe: O,
    ) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        O: FnMut(&watcher::Event<K>) + Send + 'static,
    {
        let (store, writer) = reflector::store();
        let token = self.token.clone();
        let kind = K::kind(&()).to_string();
        self.tasks.push(tokio::spawn(async move {
            let stream = reflector::reflector(
                writer,
                watcher(api, watcher::Config::default()).default_backoff(),
            );
            let mut stream = std::pin::pin!(stream);
            loop {
                let event = tokio::select! {
                    () = token.cancelled() => return,
                    event = stream.next() => event,
                };
                if let Some(Ok(event)) = &event {
                    observe(event);
                }
                match event {
                    Some(Ok(
                        watcher::Event::Apply(_)
                        | watcher::Event::Delete(_)
                        | watcher::Event::InitDone,
                    )) => wake.iter().for_each(|w| w.notify_one()),
                    Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
                    Some(Err(error)) => warn!(kind, %error, "watch failed; retrying"),
                    None => return,
                }
            }
        }));
        store
    }

    /// Runs `pass` on every wake-up and at least every `RESYNC`; after a pass that failed
    /// somewhere, waits with exponential back-off instead so a persistent error cannot spin.
    fn spawn_loop<F, Fut>(&mut self, name: &'static str, wake: Arc<Notify>, mut pass: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let token = self.token.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut backoff = MIN_BACKOFF;
            loop {
                let healthy = tokio::select! {
                    () = token.cancelled() => return,
                    healthy = pass() => healthy,
                };
                if healthy {
                    backoff = MIN_BACKOFF;
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = wake.notified() => {}
                        () = tokio::time::sleep(RESYNC) => {}
                    }
                } else {
                    debug!(name, ?backoff, "pass failed; retrying after back-off");
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }));
    }
}

impl Drop for Controllers {
    fn drop(&mut self) {
        // Without an explicit shutdown the tasks must not outlive their owner.
        self.token.cancel();
    }
}

/// Copies of the cached `pods` in each of `namespaces`, by namespace: a pass copies only the
/// pods of namespaces that hold a workload of its kind, not every pod of the cluster (with
/// 10,000 pods cached, copying them all on every pass made the test bed the busiest process
/// of the rollout benchmark).
fn pods_of_namespaces<'a>(
    pods: &[Arc<Pod>],
    namespaces: impl IntoIterator<Item = &'a Option<String>>,
) -> HashMap<Option<String>, Vec<Pod>> {
    let mut by_namespace: HashMap<Option<String>, Vec<Pod>> = namespaces
        .into_iter()
        .map(|ns| (ns.clone(), Vec::new()))
        .collect();
    for pod in pods {
        if let Some(copies) = by_namespace.get_mut(&pod.metadata.namespace) {
            copies.push(Pod::clone(pod));
        }
    }
    by_namespace
}

/// Whether `error` says the object is already in the state a write wanted (created, gone), or
/// changed under us, so the write needs no retry of its own: the next pass sees the new state.
fn is_benign(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status)
        if status.is_already_exists() || status.is_not_found() || status.is_conflict())
}
