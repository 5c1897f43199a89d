//! The agent's two watches — its node's pods and its node's requests — cached in pruned
//! reflector stores, with every change announced on one channel.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_fn};
use kube::{Client, Resource};
use tokio::sync::watch as channel;
use tokio_util::sync::CancellationToken;

use super::error_policy::{ShellError, error_policy};
use super::metrics::AgentMetrics;
use relaunch_api::{ContainerRecreateRequest, LABEL_NODE_NAME};

/// The caches the agent works from.
#[derive(Clone)]
pub struct Stores {
    pub pods: Store<Pod>,
    pub requests: Store<ContainerRecreateRequest>,
}

impl Stores {
    /// Waits until both stores hold a complete first list.
    pub async fn synced(&self) -> bool {
        self.pods.wait_until_ready().await.is_ok() && self.requests.wait_until_ready().await.is_ok()
    }
}

/// Starts both watches; `changes` is bumped after every event applied to a store.
pub fn start(
    client: Client,
    node: &str,
    metrics: AgentMetrics,
    changes: channel::Sender<u64>,
    stop: CancellationToken,
) -> Stores {
    let pods_api: Api<Pod> = Api::all(client.clone());
    let pods_cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let (pods, pods_writer) = reflector::store();
    let pod_events = watch_fn(pods_api, pods_cfg)
        .default_backoff()
        .modify(prune_pod)
        .reflect(pods_writer);
    tokio::spawn(run_watch(
        pod_events,
        "pods",
        metrics.clone(),
        changes.clone(),
        stop.clone(),
    ));

    // Through a guard: one object that does not deserialize is logged, counted and left out,
    // and never stalls the watch for the others.
    let requests_api: Api<DeserializeGuard<ContainerRecreateRequest>> = Api::all(client);
    let requests_cfg = watcher::Config::default().labels(&format!("{LABEL_NODE_NAME}={node}"));
    let (requests, requests_writer) = reflector::store();
    let guard_metrics = metrics.clone();
    let request_events = watch_fn(requests_api, requests_cfg)
        .default_backoff()
        .filter_map(move |event| {
            let unguarded = match event {
                Ok(event) => unguard(event, &guard_metrics).map(Ok),
                Err(e) => Some(Err(e)),
            };
            std::future::ready(unguarded)
        })
        .modify(prune_request)
        .reflect(requests_writer);
    tokio::spawn(run_watch(
        request_events,
        "containerrecreaterequests",
        metrics,
        changes,
        stop,
    ));
    Stores { pods, requests }
}

/// Runs a watch stream (its reflector fills the store), counts re-lists, and announces every
/// change on `changes`; its errors go to the error policy.
async fn run_watch<S, K>(
    stream: S,
    resource: &'static str,
    metrics: AgentMetrics,
    changes: channel::Sender<u64>,
    stop: CancellationToken,
) where
    S: futures::Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut first_list = true;
    let mut after_error = false;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = stream.next() => event,
        };
        match event {
            None => return,
            Some(Ok(Event::Init)) => {
                // A re-list not caused by an error we already counted (e.g. 410 Gone handled
                // inside the watcher) is a restart too.
                if !first_list && !after_error {
                    metrics.watch_restarts.with_label_values(&[resource]).inc();
                }
                first_list = false;
                after_error = false;
            }
            Some(Ok(_)) => {
                after_error = false;
                changes.send_modify(|n| *n = n.wrapping_add(1));
            }
            Some(Err(source)) => {
                metrics.watch_restarts.with_label_values(&[resource]).inc();
                after_error = true;
                let error = ShellError::Watch { resource, source };
                error_policy(&metrics, "watch failed, retrying with back-off", &error);
            }
        }
    }
}

/// A request watch event without its guard. An object that did not deserialize is counted and
/// logged through the error policy and leaves the cache: a first sight of it is dropped, a
/// change to it becomes a deletion (so the agent stops working on what it can no longer read).
fn unguard(
    event: Event<DeserializeGuard<ContainerRecreateRequest>>,
    metrics: &AgentMetrics,
) -> Option<Event<ContainerRecreateRequest>> {
    let invalid = |invalid: kube::core::error_boundary::InvalidObject| {
        let name = format!(
            "{}/{}",
            invalid.metadata.namespace.clone().unwrap_or_default(),
            invalid.metadata.name.clone().unwrap_or_default()
        );
        let error = ShellError::InvalidObject {
            resource: "containerrecreaterequests",
            name,
            error: invalid.error,
        };
        error_policy(metrics, "cannot read an object; leaving it out", &error);
        ContainerRecreateRequest {
            metadata: invalid.metadata,
            spec: Default::default(),
            status: None,
        }
    };
    Some(match event {
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
        Event::InitApply(DeserializeGuard(Ok(k))) => Event::InitApply(k),
        Event::InitApply(DeserializeGuard(Err(e))) => {
            invalid(e);
            return None;
        }
        Event::Apply(DeserializeGuard(Ok(k))) => Event::Apply(k),
        Event::Apply(DeserializeGuard(Err(e))) => Event::Delete(invalid(e)),
        Event::Delete(DeserializeGuard(Ok(k))) => Event::Delete(k),
        Event::Delete(DeserializeGuard(Err(e))) => Event::Delete(invalid(e)),
    })
}

/// Keeps only what the agent reads: identity, restart policy, grace, the containers' names,
/// ports, preStop hooks and restart policies, and the status of the containers.
fn prune_pod(pod: &mut Pod) {
    let meta = pod.meta_mut();
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
    meta.finalizers = None;
    if let Some(spec) = pod.spec.as_mut() {
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            prune_container(c);
        }
        spec.ephemeral_containers = None;
        spec.volumes = None;
        spec.affinity = None;
        spec.tolerations = None;
        spec.topology_spread_constraints = None;
        spec.node_selector = None;
        spec.security_context = None;
        spec.image_pull_secrets = None;
        spec.dns_config = None;
        spec.host_aliases = None;
        spec.readiness_gates = None;
        spec.resource_claims = None;
        spec.overhead = None;
    }
    if let Some(status) = pod.status.as_mut() {
        status.conditions = None;
        status.ephemeral_container_statuses = None;
        status.message = None;
        status.reason = None;
        status.resource_claim_statuses = None;
        for s in status
            .container_statuses
            .iter_mut()
            .flatten()
            .chain(status.init_container_statuses.iter_mut().flatten())
        {
            s.last_state = None;
            s.image_id = String::new();
            s.allocated_resources = None;
            s.allocated_resources_status = None;
            s.resources = None;
            s.volume_mounts = None;
            s.user = None;
        }
    }
}

fn prune_container(c: &mut Container) {
    let keep = Container {
        name: std::mem::take(&mut c.name),
        ports: c.ports.take(),
        lifecycle: c.lifecycle.take().map(|mut l| {
            l.post_start = None;
            l
        }),
        restart_policy: c.restart_policy.take(),
        ..Container::default()
    };
    *c = keep;
}

fn prune_request(request: &mut ContainerRecreateRequest) {
    let meta = request.meta_mut();
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
    if let Some(status) = request.status.as_mut() {
        // Only the phase matters to the agent.
        status.container_recreate_states.clear();
        status.conditions.clear();
        status.message = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;
    use serde_json::json;

    #[test]
    fn an_object_that_does_not_deserialize_is_counted_and_left_out_of_the_cache() {
        let metrics = AgentMetrics::unregistered().unwrap();
        let guard = |spec: serde_json::Value| -> DeserializeGuard<ContainerRecreateRequest> {
            serde_json::from_value(json!({
                "apiVersion": "relaunch.dev/v1alpha1", "kind": "ContainerRecreateRequest",
                "metadata": {"name": "r", "namespace": "ns", "uid": "u"},
                "spec": spec,
            }))
            .unwrap()
        };
        let good = || guard(json!({"podName": "p", "containers": [{"name": "app"}]}));
        let bad = || guard(json!({"podName": "p", "containers": "app"}));
        assert!(matches!(
            unguard(Event::InitApply(good()), &metrics),
            Some(Event::InitApply(r)) if r.spec.pod_name == "p"
        ));
        assert!(unguard(Event::InitApply(bad()), &metrics).is_none());
        // A known object that turned unreadable leaves the cache.
        match unguard(Event::Apply(bad()), &metrics) {
            Some(Event::Delete(r)) => assert_eq!(r.name_any(), "r"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            unguard(Event::Apply(good()), &metrics),
            Some(Event::Apply(_))
        ));
        assert!(matches!(
            unguard(Event::InitDone, &metrics),
            Some(Event::InitDone)
        ));
        assert_eq!(
            metrics.errors.with_label_values(&["invalid_object"]).get(),
            2
        );
        // A phase of a newer release is not an error: it deserializes as Unknown.
        let newer: DeserializeGuard<ContainerRecreateRequest> = serde_json::from_value(json!({
            "metadata": {"name": "r", "namespace": "ns"},
            "spec": {"podName": "p", "containers": [{"name": "app"}],
                "strategy": {"failurePolicy": "Retry"}},
            "status": {"phase": "Restarting"},
        }))
        .unwrap();
        let newer = newer.0.unwrap();
        assert_eq!(
            newer.status.map(|s| s.phase),
            Some(relaunch_api::RecreatePhase::Unknown)
        );
    }

    #[test]
    fn pruning_keeps_what_the_agent_reads_and_drops_the_rest() {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "uid": "u", "managedFields": [{"manager": "x"}],
                "annotations": {"big": "x"}},
            "spec": {"restartPolicy": "Always", "terminationGracePeriodSeconds": 5,
                "volumes": [{"name": "v", "emptyDir": {}}],
                "containers": [{"name": "c", "image": "i", "env": [{"name": "A", "value": "b"}],
                    "ports": [{"name": "http", "containerPort": 80}],
                    "lifecycle": {"preStop": {"exec": {"command": ["x"]}}}}]},
            "status": {"podIP": "127.0.0.2", "containerStatuses": [{"name": "c", "image": "i",
                "imageID": "sha", "ready": true, "restartCount": 1, "containerID": "containerd://a"}]}
        }))
        .unwrap();
        prune_pod(&mut pod);
        assert!(pod.metadata.managed_fields.is_none() && pod.metadata.annotations.is_none());
        let spec = pod.spec.as_ref().unwrap();
        assert!(spec.volumes.is_none());
        let c = &spec.containers[0];
        assert_eq!(c.name, "c");
        assert!(c.env.is_none() && c.image.is_none());
        assert!(c.ports.is_some() && c.lifecycle.is_some());
        assert_eq!(spec.termination_grace_period_seconds, Some(5));
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.pod_ip.as_deref(), Some("127.0.0.2"));
        let cs = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.container_id.as_deref(), Some("containerd://a"));
    }
}
