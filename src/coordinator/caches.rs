//! The caches the controllers decide on: one cluster-wide watch per resource feeding a reflector
//! store, objects pruned to what the controllers read, and every change waking the controllers.
//! The pod and request caches are shared by every controller. The pod cache and the caches of
//! what relaunch never writes live as long as the process; the caches of what it writes
//! (requests, rollouts, workloads, ScaleDowns, Drains, claims) are filled anew for every
//! leadership term (see `Standing` in lib.rs).

use std::fmt::Debug;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use relaunch_api::ContainerRecreateRequest;

use crate::cluster::Cluster;
use crate::context::Context;
use crate::error::ClusterError;
use crate::error_policy::error_policy;
use crate::metrics::Metrics;
use crate::pods::CachedPod;

/// The pod and request caches every controller shares: one watch each, cluster-wide, pods held
/// as [`CachedPod`], the projection of what the controllers read.
#[derive(Clone)]
pub struct Caches {
    pub pods: Store<CachedPod>,
    pub requests: Store<ContainerRecreateRequest>,
}

impl Caches {
    /// Waits until both caches are filled.
    pub async fn ready(&self) -> Result<(), reflector::store::WriterDropped> {
        tokio::try_join!(
            self.requests.wait_until_ready(),
            self.pods.wait_until_ready()
        )
        .map(|_| ())
    }
}

/// Watch tasks, aborted when dropped: also when the controller that holds them is itself
/// aborted (after stepping down, a controller stuck on an API server that does not answer).
pub struct WatchTasks(pub Vec<JoinHandle<()>>);

impl Drop for WatchTasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts the cluster-wide pod watch into the shared pod cache; every change wakes each of
/// `wake`. The coordinator keeps it for the process's life, on every replica (see `Standing`
/// in lib.rs), so that a new leadership term does not list every pod again.
pub fn watch_pods(ctx: &Context, wake: Vec<Arc<Notify>>) -> (Store<CachedPod>, JoinHandle<()>) {
    watch_into(ctx, "pods", CachedPod::prune, wake)
}

/// Starts the cluster-wide request watch; every change wakes each of `wake`, and a request
/// without status (one to admit) also wakes `new_request`. Started afresh for every leadership
/// term: a new leader plans on a list taken after it won the Lease, which shows the last
/// writes of the replica that led before it.
pub fn watch_requests(
    ctx: &Context,
    wake: Vec<Arc<Notify>>,
    new_request: Arc<Notify>,
) -> (Store<ContainerRecreateRequest>, JoinHandle<()>) {
    spawn_watch(
        ctx,
        "containerrecreaterequests",
        watcher::Config::default(),
        |r: &mut ContainerRecreateRequest| r.metadata.managed_fields = None,
        wake,
        Some(Urgent {
            notify: new_request,
            when: |r: &ContainerRecreateRequest| r.status.is_none(),
        }),
    )
}

/// What a cache holds: an API object read from a watch, which can also be made from its
/// metadata alone ([`StandIn`]) when it cannot be read.
pub trait Cacheable:
    Resource<DynamicType = ()> + StandIn + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

impl<K> Cacheable for K where
    K: Resource<DynamicType = ()>
        + StandIn
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// Starts a cluster-wide watch of `resource` into a new cache (through [`guarded_watch`]: an
/// object that cannot be read is left out), each object pruned by `prune`; every change wakes
/// each of `wake`. The task runs until aborted.
pub fn watch_into<K>(
    ctx: &Context,
    resource: &'static str,
    prune: impl FnMut(&mut K) + Send + 'static,
    wake: Vec<Arc<Notify>>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Cacheable,
{
    watch_into_with(ctx, resource, watcher::Config::default(), prune, wake)
}

/// [`watch_into`] with a watcher configuration (selectors).
pub fn watch_into_with<K>(
    ctx: &Context,
    resource: &'static str,
    config: watcher::Config,
    prune: impl FnMut(&mut K) + Send + 'static,
    wake: Vec<Arc<Notify>>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Cacheable,
{
    spawn_watch(ctx, resource, config, prune, wake, None)
}

/// Besides the wake-ups every change brings, a wake-up of its own, once the cache holds the
/// object, for the objects `when` picks: those a controller acts on at once rather than in its
/// next throttled pass.
struct Urgent<K> {
    notify: Arc<Notify>,
    when: fn(&K) -> bool,
}

fn spawn_watch<K>(
    ctx: &Context,
    resource: &'static str,
    config: watcher::Config,
    prune: impl FnMut(&mut K) + Send + 'static,
    wake: Vec<Arc<Notify>>,
    urgent: Option<Urgent<K>>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Cacheable,
{
    let (store, writer) = reflector::store::<K>();
    let stream = guarded_watch::<K>(&ctx.cluster, config, resource, ctx.metrics.clone())
        .default_backoff()
        .modify(prune)
        .reflect(writer);
    let task = tokio::spawn(run_watch(
        resource,
        stream,
        wake,
        urgent,
        ctx.metrics.clone(),
    ));
    (store, task)
}

/// An object made from metadata alone: what a guarded watch hands the reflector to delete an
/// object it can no longer read.
pub trait StandIn: Sized {
    fn stand_in(metadata: ObjectMeta) -> Self;
}

macro_rules! stand_in_by_default {
    ($($kind:ty),*) => {$(
        impl StandIn for $kind {
            fn stand_in(metadata: ObjectMeta) -> Self {
                Self { metadata, ..Default::default() }
            }
        }
    )*};
}

stand_in_by_default!(
    k8s_openapi::api::core::v1::Pod,
    k8s_openapi::api::policy::v1::PodDisruptionBudget,
    k8s_openapi::api::apps::v1::StatefulSet,
    k8s_openapi::api::apps::v1::Deployment,
    k8s_openapi::api::apps::v1::DaemonSet,
    k8s_openapi::api::apps::v1::ReplicaSet,
    k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy,
    k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding,
    k8s_openapi::api::core::v1::PersistentVolumeClaim,
    k8s_openapi::api::core::v1::ConfigMap,
    k8s_openapi::api::core::v1::Secret
);

impl StandIn for CachedPod {
    fn stand_in(metadata: ObjectMeta) -> Self {
        Self::from_metadata(metadata)
    }
}

impl StandIn for ContainerRecreateRequest {
    fn stand_in(metadata: ObjectMeta) -> Self {
        Self {
            metadata,
            spec: Default::default(),
            status: None,
        }
    }
}

impl StandIn for relaunch_api::ScaleDown {
    fn stand_in(metadata: ObjectMeta) -> Self {
        Self {
            metadata,
            spec: Default::default(),
            status: None,
        }
    }
}

impl StandIn for relaunch_api::Drain {
    fn stand_in(metadata: ObjectMeta) -> Self {
        Self {
            metadata,
            spec: Default::default(),
            status: None,
        }
    }
}

impl StandIn for relaunch_api::RollingRestart {
    fn stand_in(metadata: ObjectMeta) -> Self {
        Self {
            metadata,
            spec: Default::default(),
            status: None,
        }
    }
}

/// A cluster-wide watch of `K` through a [`DeserializeGuard`]: an object that does not
/// deserialize (a newer release's, one written around the CRD schema) is counted and logged
/// through the error policy (`kind="invalid_object"`) and left out — a first sight of it is
/// dropped, a change to an object already cached becomes its deletion — so one bad object never
/// stalls the watch for the others.
pub fn guarded_watch<K>(
    cluster: &Cluster,
    config: watcher::Config,
    resource: &'static str,
    metrics: Metrics,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + use<K>
where
    K: Resource<DynamicType = ()> + StandIn + Clone + DeserializeOwned + Debug + Send + 'static,
{
    cluster
        .watch::<DeserializeGuard<K>>(config)
        .filter_map(move |event| {
            let unguarded = match event {
                Ok(event) => unguard(event, resource, &metrics).map(Ok),
                Err(e) => Some(Err(e)),
            };
            std::future::ready(unguarded)
        })
}

/// A watch event without its guard; see [`guarded_watch`].
pub fn unguard<K>(
    event: watcher::Event<DeserializeGuard<K>>,
    resource: &'static str,
    metrics: &Metrics,
) -> Option<watcher::Event<K>>
where
    K: Resource<DynamicType = ()> + StandIn,
{
    let invalid = |invalid: InvalidObject| -> K {
        let name = format!(
            "{}/{}",
            invalid.metadata.namespace.clone().unwrap_or_default(),
            invalid.metadata.name.clone().unwrap_or_default()
        );
        let error = ClusterError::InvalidObject {
            resource,
            name,
            error: invalid.error,
        };
        error_policy(metrics, "watch", &resource, &error);
        K::stand_in(invalid.metadata)
    };
    Some(match event {
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
        watcher::Event::InitApply(DeserializeGuard(Ok(k))) => watcher::Event::InitApply(k),
        watcher::Event::InitApply(DeserializeGuard(Err(e))) => {
            invalid(e);
            return None;
        }
        watcher::Event::Apply(DeserializeGuard(Ok(k))) => watcher::Event::Apply(k),
        watcher::Event::Apply(DeserializeGuard(Err(e)))
        | watcher::Event::Delete(DeserializeGuard(Err(e))) => watcher::Event::Delete(invalid(e)),
        watcher::Event::Delete(DeserializeGuard(Ok(k))) => watcher::Event::Delete(k),
    })
}

/// Runs a watch stream (its reflector fills the cache) and wakes the controllers on every
/// change, and `urgent`'s controller on the objects it picks; its errors go to the error policy
/// (the watcher retries with back-off).
async fn run_watch<S, K>(
    resource: &'static str,
    stream: S,
    wake: Vec<Arc<Notify>>,
    urgent: Option<Urgent<K>>,
    metrics: Metrics,
) where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream.into_stream());
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                // The reflector has stored the object before the event comes out here.
                if let Some(urgent) = &urgent
                    && let watcher::Event::Apply(k) | watcher::Event::InitApply(k) = &event
                    && (urgent.when)(k)
                {
                    urgent.notify.notify_one();
                }
                wake.iter().for_each(|n| n.notify_one());
            }
            Err(e) => {
                error_policy(&metrics, "watch", &resource, &ClusterError::Watch(e));
            }
        }
    }
}

/// What the ScaleDown and drain controllers keep of a StatefulSet: replicas, ordinals, selector,
/// service and claim template names, and the annotations `keep` selects; no pod template, no
/// status.
pub fn prune_statefulset(
    o: &mut k8s_openapi::api::apps::v1::StatefulSet,
    keep: impl Fn(&str) -> bool,
) {
    o.metadata.managed_fields = None;
    if let Some(annotations) = &mut o.metadata.annotations {
        annotations.retain(|k, _| keep(k));
    }
    if let Some(spec) = &mut o.spec {
        spec.template = Default::default();
        for t in spec.volume_claim_templates.iter_mut().flatten() {
            t.spec = None;
            t.status = None;
        }
    }
    o.status = None;
}

/// What the ScaleDown and drain controllers keep of a claim: its identity and labels.
pub fn prune_claim(o: &mut k8s_openapi::api::core::v1::PersistentVolumeClaim) {
    o.metadata.managed_fields = None;
    o.metadata.annotations = None;
    o.spec = None;
    o.status = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;
    use relaunch_api::RollingRestart;
    use serde_json::json;

    #[test]
    fn an_object_that_does_not_deserialize_is_counted_and_left_out() {
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        let guard = |strategy: serde_json::Value| -> DeserializeGuard<RollingRestart> {
            serde_json::from_value(json!({
                "apiVersion": "relaunch.dev/v1alpha1", "kind": "RollingRestart",
                "metadata": {"name": "r", "namespace": "ns", "uid": "u"},
                "spec": {"target": {"workloadRef": {"kind": "StatefulSet", "name": "db"}},
                         "strategy": strategy},
            }))
            .unwrap()
        };
        let good = || guard(json!({"maxFailures": 1}));
        let bad = || guard(json!({"maxFailures": "a few"}));
        let unguard = |e| unguard(e, "rollingrestarts", &metrics);
        assert!(matches!(
            unguard(watcher::Event::InitApply(good())),
            Some(watcher::Event::InitApply(r)) if r.spec.strategy.max_failures == Some(1)
        ));
        assert!(unguard(watcher::Event::InitApply(bad())).is_none());
        match unguard(watcher::Event::Apply(bad())) {
            Some(watcher::Event::Delete(r)) => {
                assert_eq!(
                    (r.name_any(), r.namespace()),
                    ("r".into(), Some("ns".into()))
                )
            }
            other => panic!("{other:?}"),
        }
        match unguard(watcher::Event::Delete(bad())) {
            Some(watcher::Event::Delete(r)) => assert_eq!(r.name_any(), "r"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            unguard(watcher::Event::InitDone),
            Some(watcher::Event::InitDone)
        ));
        assert_eq!(
            metrics.errors.with_label_values(&["invalid_object"]).get(),
            3
        );
        // Values of a newer release are not errors: they read as Unknown.
        let newer: DeserializeGuard<RollingRestart> = serde_json::from_value(json!({
            "metadata": {"name": "r", "namespace": "ns"},
            "spec": {"target": {"workloadRef": {"kind": "StatefulSet", "name": "db"}},
                     "strategy": {"failurePolicy": "Retry", "order": {"ordinal": "Random"}}},
            "status": {"phase": "Draining"},
        }))
        .unwrap();
        let newer = newer.0.unwrap();
        assert_eq!(
            newer.status.map(|s| s.phase),
            Some(relaunch_api::RolloutPhase::Unknown)
        );
        assert_eq!(
            relaunch_api::validation::validate_rollout(&newer.spec).map_err(|e| e.to_string()),
            Err("spec.strategy.failurePolicy: a value this version of relaunch does not know (use Pause, Continue or Abort, or upgrade relaunch)".to_string())
        );
    }
}
