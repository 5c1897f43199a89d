//! The scheduler: binds each pending pod to a ready, schedulable node that matches the pod's
//! `nodeSelector` and required node affinity, whose taints it tolerates and where its ports are
//! free, preferring the node running the fewest pods. Binding goes through `pods/binding`, as kube-scheduler's does; a pod
//! that fits nowhere gets `PodScheduled=False` with reason `Unschedulable` and is tried again
//! later.
//!
//! Ports: the sandbox's pods share their node's network (its loopback address), as host-network
//! pods do, so every port a container declares is a host port (kube-scheduler's NodePorts
//! filter, which for a host-network pod checks its container ports the same way).
//!
//! Not modelled: preferred node affinity, pod (anti-)affinity, topology spread, resource fit,
//! preemption.

use std::borrow::Borrow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Binding, Node, ObjectReference, Pod, PodCondition, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use std::sync::{Arc, Mutex};
use tracing::{debug, info, warn};

use super::is_benign;
use super::node_affinity::fits_node;

const DEFAULT_SCHEDULER: &str = "default-scheduler";
/// How long a binding we made counts for its node while the cache has not shown it yet.
const ASSUME_TTL: Duration = Duration::from_secs(30);

/// Why a pod fits on no node, worded like kube-scheduler's `FitError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    pub message: String,
}

/// Whether this scheduler should place `pod`: unbound, ours, not being deleted, not finished.
pub fn needs_scheduling(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    let unbound = spec
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
        .is_empty();
    let ours = spec
        .and_then(|s| s.scheduler_name.as_deref())
        .is_none_or(|name| name.is_empty() || name == DEFAULT_SCHEDULER);
    unbound && ours && pod.metadata.deletion_timestamp.is_none() && !is_terminated(pod)
}

/// What is placed on one node: its non-terminated pods and the host ports they hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeLoad {
    pub pods: usize,
    /// (protocol, port) pairs.
    pub ports: BTreeSet<(String, i32)>,
}

impl NodeLoad {
    /// Counts `pod` on this node.
    pub fn add(&mut self, pod: &Pod) {
        self.pods += 1;
        self.ports.extend(host_ports(pod));
    }
}

/// The load of every node that runs a non-terminated pod, by node name.
pub fn node_loads<P: Borrow<Pod>>(pods: &[P]) -> BTreeMap<String, NodeLoad> {
    let mut loads: BTreeMap<String, NodeLoad> = BTreeMap::new();
    let pods = pods.iter().map(|p| -> &Pod { p.borrow() });
    for pod in pods.filter(|p| !is_terminated(p)) {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or_default();
        if !node.is_empty() {
            loads.entry(node.to_string()).or_default().add(pod);
        }
    }
    loads
}

/// The ports `pod` holds on its node: every port its containers and init containers declare
/// (its `hostPort`, else its `containerPort`), since sandbox pods share the node's network.
fn host_ports(pod: &Pod) -> impl Iterator<Item = (String, i32)> + '_ {
    let spec = pod.spec.as_ref();
    spec.map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .chain(
            spec.and_then(|s| s.init_containers.as_deref())
                .unwrap_or_default(),
        )
        .flat_map(|c| c.ports.as_deref().unwrap_or_default())
        .map(|p| {
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            (
                protocol,
                p.host_port.filter(|&h| h > 0).unwrap_or(p.container_port),
            )
        })
}

/// The node `pod` should run on: among nodes that are Ready, schedulable (or tolerated), match
/// its `nodeSelector`, whose NoSchedule/NoExecute taints it tolerates and where none of its ports
/// is taken, the one with the fewest pods, ties broken by name.
pub fn pick_node(
    pod: &Pod,
    nodes: &[Node],
    loads: &BTreeMap<String, NodeLoad>,
) -> Result<String, Unschedulable> {
    let idle = NodeLoad::default();
    let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut feasible: Vec<(usize, String)> = Vec::new();
    for node in nodes {
        let Some(name) = node.metadata.name.clone() else {
            continue;
        };
        let load = loads.get(&name).unwrap_or(&idle);
        match unfit_reason(pod, node, load) {
            Some(reason) => *reasons.entry(reason).or_insert(0) += 1,
            None => feasible.push((load.pods, name)),
        }
    }
    if let Some((_, name)) = feasible.into_iter().min() {
        return Ok(name);
    }
    let message = if nodes.is_empty() {
        "no nodes available to schedule pods".to_string()
    } else {
        let details: Vec<String> = reasons
            .iter()
            .map(|(reason, count)| format!("{count} {reason}"))
            .collect();
        format!(
            "0/{} nodes are available: {}.",
            nodes.len(),
            details.join(", ")
        )
    };
    Err(Unschedulable { message })
}

fn unfit_reason(pod: &Pod, node: &Node, load: &NodeLoad) -> Option<&'static str> {
    let spec = pod.spec.as_ref();
    let tolerations = spec
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    let node_spec = node.spec.as_ref();
    if !is_node_ready(node) {
        return Some("node(s) were not ready");
    }
    if node_spec.and_then(|s| s.unschedulable).unwrap_or(false) {
        let unschedulable_taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !tolerations
            .iter()
            .any(|t| tolerates(t, &unschedulable_taint))
        {
            return Some("node(s) were unschedulable");
        }
    }
    if !fits_node(spec, node) {
        return Some("node(s) didn't match Pod's node affinity/selector");
    }
    let taints = node_spec
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let untolerated = taints
        .iter()
        .filter(|taint| taint.effect == "NoSchedule" || taint.effect == "NoExecute")
        .any(|taint| !tolerations.iter().any(|t| tolerates(t, taint)));
    if untolerated {
        return Some("node(s) had untolerated taint");
    }
    if host_ports(pod).any(|port| load.ports.contains(&port)) {
        return Some("node(s) didn't have free ports for the requested pod ports");
    }
    None
}

/// `Toleration.ToleratesTaint`.
pub(super) fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" => {
            !key.is_empty()
                && toleration.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

fn is_node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn is_terminated(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The pod's conditions with `PodScheduled=False/Unschedulable: message`, or None when they
/// already say exactly that (so a pod that stays unschedulable is not rewritten every pass).
fn unschedulable_conditions(pod: &Pod, message: &str, now: Time) -> Option<Vec<PodCondition>> {
    let mut conditions = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let wanted = PodCondition {
        type_: "PodScheduled".into(),
        status: "False".into(),
        reason: Some("Unschedulable".into()),
        message: Some(message.into()),
        last_transition_time: Some(now),
        ..Default::default()
    };
    match conditions.iter_mut().find(|c| c.type_ == "PodScheduled") {
        Some(existing)
            if existing.status == wanted.status
                && existing.reason == wanted.reason
                && existing.message == wanted.message =>
        {
            None
        }
        Some(existing) => {
            if existing.status == wanted.status {
                // The condition did not flip, so its transition time stays.
                let since = existing.last_transition_time.take();
                *existing = PodCondition {
                    last_transition_time: since,
                    ..wanted
                };
            } else {
                *existing = wanted;
            }
            Some(conditions)
        }
        None => {
            conditions.push(wanted);
            Some(conditions)
        }
    }
}

/// The I/O shell: binds pending pods through `pods/binding`.
#[derive(Clone)]
pub(super) struct Scheduler {
    client: Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    /// Bindings made but not yet seen in the cache: pod uid → (node, when).
    assumed: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

impl Scheduler {
    pub(super) fn new(client: Client, pods: Store<Pod>, nodes: Store<Node>) -> Self {
        Self {
            client,
            pods,
            nodes,
            assumed: Arc::default(),
        }
    }

    /// One scheduling pass over every pending pod; false if any write failed.
    pub(super) async fn schedule_pending(&self) -> bool {
        // Shared, not copied: with 10,000 pods cached, copying them all on every pass made the
        // test bed the busiest process of the rollout benchmark.
        let pods = self.pods.state();
        let nodes: Vec<Node> = self.nodes.state().iter().map(|n| Node::clone(n)).collect();
        let mut loads = node_loads(&pods);
        let mut assumed = self.take_assumed(&pods);
        for (uid, (node, _)) in &assumed {
            if let Some(pod) = pods.iter().find(|p| p.metadata.uid.as_ref() == Some(uid)) {
                loads.entry(node.clone()).or_default().add(pod);
            }
        }

        let mut pending: Vec<&Pod> = pods
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| needs_scheduling(p))
            .filter(|p| p.uid().is_none_or(|uid| !assumed.contains_key(&uid)))
            .collect();
        // kube-scheduler's queue order: priority, then age.
        pending.sort_by_key(|p| {
            (
                Reverse(p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)),
                p.metadata.creation_timestamp.clone(),
                p.namespace(),
                p.name_any(),
            )
        });

        let mut healthy = true;
        for pod in pending {
            let key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
            match pick_node(pod, &nodes, &loads) {
                Ok(node) => match self.bind(pod, &node).await {
                    Ok(()) => {
                        info!(pod = %key, %node, "bound");
                        loads.entry(node.clone()).or_default().add(pod);
                        if let Some(uid) = pod.uid() {
                            assumed.insert(uid, (node, Instant::now()));
                        }
                    }
                    Err(error) if is_benign(&error) => {
                        debug!(pod = %key, %error, "binding not needed any more");
                    }
                    Err(error) => {
                        warn!(pod = %key, %node, %error, "binding failed; will retry");
                        healthy = false;
                    }
                },
                Err(Unschedulable { message }) => {
                    let now = Time(jiff::Timestamp::now());
                    let Some(conditions) = unschedulable_conditions(pod, &message, now) else {
                        continue;
                    };
                    info!(pod = %key, %message, "unschedulable");
                    if let Err(error) = self.set_conditions(pod, conditions).await
                        && !is_benign(&error)
                    {
                        warn!(pod = %key, %error, "recording Unschedulable failed; will retry");
                        healthy = false;
                    }
                }
            }
        }
        if let Ok(mut shared) = self.assumed.lock() {
            *shared = assumed;
        }
        healthy
    }

    /// The assumed bindings still worth remembering: the pod exists and its cache entry has not
    /// caught up with the binding yet.
    fn take_assumed(&self, pods: &[Arc<Pod>]) -> HashMap<String, (String, Instant)> {
        let mut assumed = self
            .assumed
            .lock()
            .map(|mut a| std::mem::take(&mut *a))
            .unwrap_or_default();
        let unbound: HashMap<String, &Pod> = pods
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| needs_scheduling(p))
            .filter_map(|p| Some((p.uid()?, p)))
            .collect();
        assumed.retain(|uid, (_, at)| unbound.contains_key(uid) && at.elapsed() < ASSUME_TTL);
        assumed
    }

    async fn bind(&self, pod: &Pod, node: &str) -> Result<(), kube::Error> {
        let namespace = pod.namespace().unwrap_or_default();
        let api = Api::<Pod>::namespaced(self.client.clone(), &namespace);
        let binding = Binding {
            metadata: ObjectMeta {
                name: pod.metadata.name.clone(),
                namespace: pod.metadata.namespace.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.into()),
                ..Default::default()
            },
        };
        api.create_subresource::<_, serde_json::Value>(
            "binding",
            &pod.name_any(),
            &PostParams::default(),
            &binding,
        )
        .await
        .map(drop)
    }

    async fn set_conditions(
        &self,
        pod: &Pod,
        conditions: Vec<PodCondition>,
    ) -> Result<(), kube::Error> {
        let namespace = pod.namespace().unwrap_or_default();
        let api = Api::<Pod>::namespaced(self.client.clone(), &namespace);
        // A merge patch replaces the whole list; an unbound pod has no kubelet writing it.
        let patch = Patch::Merge(serde_json::json!({ "status": { "conditions": conditions } }));
        api.patch_status(&pod.name_any(), &PatchParams::default(), &patch)
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus, PodSpec, PodStatus};

    fn node(name: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn pod(name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                ..Default::default()
            }),
        }
    }

    fn on(mut pod: Pod, node: &str) -> Pod {
        pod.spec.get_or_insert_default().node_name = Some(node.into());
        pod
    }

    fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, NodeLoad> {
        pairs
            .iter()
            .map(|(n, c)| {
                let load = NodeLoad {
                    pods: *c,
                    ..Default::default()
                };
                (n.to_string(), load)
            })
            .collect()
    }

    fn with_port(mut pod: Pod, port: i32) -> Pod {
        let container = serde_json::from_value(serde_json::json!(
            {"name": "c", "ports": [{"containerPort": port}]}
        ))
        .unwrap();
        pod.spec.get_or_insert_default().containers.push(container);
        pod
    }

    #[test]
    fn picks_the_node_with_fewest_pods() {
        let nodes = [node("a"), node("b"), node("c")];
        let picked = pick_node(&pod("p"), &nodes, &counts(&[("a", 2), ("b", 1), ("c", 3)]));
        assert_eq!(picked, Ok("b".to_string()));
    }

    #[test]
    fn breaks_ties_by_node_name() {
        let nodes = [node("c"), node("b"), node("a")];
        assert_eq!(
            pick_node(&pod("p"), &nodes, &counts(&[("c", 1)])),
            Ok("a".to_string())
        );
    }

    #[test]
    fn spreads_pods_evenly_when_counts_are_updated_after_each_binding() {
        let nodes = [node("a"), node("b")];
        let mut loads: BTreeMap<String, NodeLoad> = BTreeMap::new();
        let mut placed = Vec::new();
        for i in 0..4 {
            let pod = pod(&format!("p{i}"));
            let node = pick_node(&pod, &nodes, &loads).unwrap();
            loads.entry(node.clone()).or_default().add(&pod);
            placed.push(node);
        }
        assert_eq!(placed, ["a", "b", "a", "b"]);
    }

    #[test]
    fn skips_nodes_that_are_not_ready() {
        let mut not_ready = node("a");
        not_ready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "False".into();
        let mut no_conditions = node("b");
        no_conditions.status = None;
        let nodes = [not_ready, no_conditions, node("c")];
        assert_eq!(
            pick_node(&pod("p"), &nodes, &counts(&[("c", 9)])),
            Ok("c".to_string())
        );
    }

    #[test]
    fn skips_unschedulable_nodes_unless_tolerated() {
        let mut cordoned = node("a");
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        let nodes = [cordoned, node("b")];
        let busy_b = counts(&[("b", 5)]);
        assert_eq!(pick_node(&pod("p"), &nodes, &busy_b), Ok("b".to_string()));

        let mut tolerant = pod("p");
        tolerant.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some("node.kubernetes.io/unschedulable".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }]);
        assert_eq!(pick_node(&tolerant, &nodes, &busy_b), Ok("a".to_string()));
    }

    #[test]
    fn honours_node_selector() {
        let mut labelled = node("b");
        labelled.metadata.labels = Some([("disk".to_string(), "ssd".to_string())].into());
        let nodes = [node("a"), labelled];
        let mut picky = pod("p");
        picky.spec.as_mut().unwrap().node_selector =
            Some([("disk".to_string(), "ssd".to_string())].into());
        assert_eq!(
            pick_node(&picky, &nodes, &counts(&[("b", 7)])),
            Ok("b".to_string())
        );

        picky.spec.as_mut().unwrap().node_selector =
            Some([("disk".to_string(), "hdd".to_string())].into());
        let error = pick_node(&picky, &nodes, &BTreeMap::new()).unwrap_err();
        assert_eq!(
            error.message,
            "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
        );
    }

    #[test]
    fn avoids_untolerated_no_schedule_taints() {
        let mut tainted = node("a");
        tainted.spec.as_mut().unwrap().taints = Some(vec![Taint {
            key: "dedicated".into(),
            value: Some("db".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        }]);
        let nodes = [tainted, node("b")];
        let busy_b = counts(&[("b", 3)]);
        assert_eq!(pick_node(&pod("p"), &nodes, &busy_b), Ok("b".to_string()));

        let mut tolerant = pod("p");
        tolerant.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some("dedicated".into()),
            value: Some("db".into()),
            operator: Some("Equal".into()),
            ..Default::default()
        }]);
        assert_eq!(pick_node(&tolerant, &nodes, &busy_b), Ok("a".to_string()));
    }

    #[test]
    fn explains_why_nothing_fits() {
        let mut cordoned = node("a");
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        let mut down = node("b");
        down.status = None;
        let error = pick_node(&pod("p"), &[cordoned, down], &BTreeMap::new()).unwrap_err();
        assert_eq!(
            error.message,
            "0/2 nodes are available: 1 node(s) were not ready, 1 node(s) were unschedulable."
        );
        let error = pick_node(&pod("p"), &[], &BTreeMap::new()).unwrap_err();
        assert_eq!(error.message, "no nodes available to schedule pods");
    }

    #[test]
    fn schedules_only_unbound_live_pods_for_the_default_scheduler() {
        assert!(needs_scheduling(&pod("p")));
        assert!(!needs_scheduling(&on(pod("p"), "a")));

        let mut other = pod("p");
        other.spec.as_mut().unwrap().scheduler_name = Some("custom".into());
        assert!(!needs_scheduling(&other));
        other.spec.as_mut().unwrap().scheduler_name = Some(DEFAULT_SCHEDULER.into());
        assert!(needs_scheduling(&other));

        let mut deleting = pod("p");
        deleting.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        assert!(!needs_scheduling(&deleting));

        let mut finished = pod("p");
        finished.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(!needs_scheduling(&finished));
    }

    #[test]
    fn counts_only_bound_non_terminated_pods() {
        let mut failed = on(pod("f"), "a");
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        let pods = [
            on(pod("p1"), "a"),
            on(pod("p2"), "a"),
            on(pod("p3"), "b"),
            failed,
            pod("x"),
        ];
        assert_eq!(node_loads(&pods), counts(&[("a", 2), ("b", 1)]));
    }

    #[test]
    fn a_port_is_taken_by_a_running_or_terminating_pod_and_free_again_once_it_finished() {
        let nodes = [node("a"), node("b")];
        let mut terminating = on(with_port(pod("old"), 8443), "a");
        terminating.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        let pods = [terminating.clone(), on(with_port(pod("other"), 8443), "b")];
        let replacement = with_port(pod("new"), 8443);
        assert_eq!(
            pick_node(&replacement, &nodes, &node_loads(&pods)),
            Err(Unschedulable {
                message: "0/2 nodes are available: 2 node(s) didn't have free ports for the \
                          requested pod ports."
                    .into()
            })
        );
        // Another port fits; the node with fewer pods wins as before.
        let elsewhere = with_port(pod("web"), 8080);
        let busier_a = [terminating.clone(), on(pod("x"), "a"), pods[1].clone()];
        assert_eq!(
            pick_node(&elsewhere, &nodes, &node_loads(&busier_a)),
            Ok("b".to_string())
        );
        terminating.status.as_mut().unwrap().phase = Some("Failed".into());
        let pods = [terminating, pods[1].clone()];
        assert_eq!(
            pick_node(&replacement, &nodes, &node_loads(&pods)),
            Ok("a".to_string())
        );
    }

    #[test]
    fn records_unschedulable_once_and_keeps_transition_time() {
        let t0 = Time(jiff::Timestamp::UNIX_EPOCH);
        let t1 = Time(jiff::Timestamp::from_second(60).unwrap());
        let mut p = pod("p");
        let first = unschedulable_conditions(&p, "no room", t0.clone()).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].reason.as_deref(), Some("Unschedulable"));
        assert_eq!(first[0].status, "False");
        p.status.as_mut().unwrap().conditions = Some(first);

        assert_eq!(unschedulable_conditions(&p, "no room", t1.clone()), None);

        let changed = unschedulable_conditions(&p, "still no room", t1).unwrap();
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].message.as_deref(), Some("still no room"));
        assert_eq!(changed[0].last_transition_time, Some(t0));
    }
}
