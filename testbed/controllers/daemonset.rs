//! The DaemonSet controller, as kube-controller-manager runs it: one pod per node that should
//! run it (`nodeSelector`, required node affinity, taints against the template's tolerations
//! plus the ones upstream adds to every daemon pod), created with a node affinity naming its
//! node so the scheduler binds it there; pods labelled `controller-revision-hash`; failed and
//! succeeded pods replaced (failed ones with back-off), extra pods removed, pods on nodes that
//! should not run them removed unless they tolerate the node's NoExecute taints; RollingUpdate
//! (maxUnavailable, maxSurge) or OnDelete; adoption and release by selector; status as
//! `kubectl get ds` and `kubectl rollout status` read it.
//!
//! The test bed has no node lifecycle controller, so the taints it would put on a node for its
//! conditions are inferred here: `node.kubernetes.io/not-ready` (Ready False),
//! `node.kubernetes.io/unreachable` (Ready Unknown or missing) and
//! `node.kubernetes.io/unschedulable` (`spec.unschedulable`), each with effect NoSchedule.
//!
//! Not modelled: ControllerRevision objects and history clean-up (the hash is computed, never
//! stored), the deprecated `pod-template-generation` label, and pods bound to deleted nodes
//! (pod GC's job upstream).

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, PodTemplateSpec, Taint, Toleration};
use kube::api::PostParams;
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::warn;

use super::is_benign;
use super::node_affinity::{fits_node, target_node, with_node_name_affinity};
use super::ownership::{Claim, claim, controller_ref, selects_everything};
use super::pods::{is_available, is_ready, node_name, phase, pod_from_template};
use super::scheduler::tolerates;
use super::workload::{BURST_REPLICAS, Owner, PodAction, PodWriter, scaled_value, template_hash};

/// The pod label naming the revision of the DaemonSet's template the pod was made from.
pub const DAEMONSET_HASH_LABEL: &str = "controller-revision-hash";

/// Back-off for deleting failed daemon pods on one node: 1 s doubling to 15 min (upstream's).
const FAILED_POD_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const FAILED_POD_BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);

/// Per (DaemonSet, node), when a failed pod was last deleted and how long to wait before the
/// next one (`flowcontrol.Backoff`), so a kubelet that keeps rejecting pods is not hot-looped.
#[derive(Debug, Default)]
pub struct FailedPodBackoff {
    entries: HashMap<String, (Duration, Timestamp)>,
}

impl FailedPodBackoff {
    /// `IsInBackOffSinceUpdate`.
    pub fn in_backoff(&self, key: &str, now: Timestamp) -> bool {
        self.entries
            .get(key)
            .is_some_and(|(delay, last)| elapsed(*last, now) < *delay)
    }

    /// `Next`: starts or doubles the delay (starting over after a long quiet spell).
    pub fn next(&mut self, key: &str, now: Timestamp) {
        let delay = match self.entries.get(key) {
            Some((delay, last)) if elapsed(*last, now) <= FAILED_POD_BACKOFF_MAX * 2 => {
                (*delay * 2).min(FAILED_POD_BACKOFF_MAX)
            }
            _ => FAILED_POD_BACKOFF_INITIAL,
        };
        self.entries.insert(key.to_string(), (delay, now));
    }
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since).max(SignedDuration::ZERO)).unwrap_or_default()
}

/// The tolerations upstream adds to every daemon pod (`AddOrUpdateDaemonPodTolerations`).
fn default_tolerations(host_network: bool) -> Vec<Toleration> {
    let exists = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    let mut tolerations = vec![
        exists("node.kubernetes.io/not-ready", "NoExecute"),
        exists("node.kubernetes.io/unreachable", "NoExecute"),
        exists("node.kubernetes.io/disk-pressure", "NoSchedule"),
        exists("node.kubernetes.io/memory-pressure", "NoSchedule"),
        exists("node.kubernetes.io/pid-pressure", "NoSchedule"),
        exists("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        tolerations.push(exists(
            "node.kubernetes.io/network-unavailable",
            "NoSchedule",
        ));
    }
    tolerations
}

/// The template's pod spec with the default daemon tolerations added (`NewPod`).
fn daemon_pod_spec(template: &PodTemplateSpec) -> PodSpec {
    let mut spec = template.spec.clone().unwrap_or_default();
    let host_network = spec.host_network.unwrap_or(false);
    let tolerations = spec.tolerations.get_or_insert_default();
    for toleration in default_tolerations(host_network) {
        if !tolerations.contains(&toleration) {
            tolerations.push(toleration);
        }
    }
    spec
}

/// `CreatePodTemplate`: the template with default tolerations and the revision hash label.
fn daemon_pod_template(template: &PodTemplateSpec, hash: &str) -> PodTemplateSpec {
    let mut template = PodTemplateSpec {
        metadata: template.metadata.clone(),
        spec: Some(daemon_pod_spec(template)),
    };
    template
        .metadata
        .get_or_insert_default()
        .labels
        .get_or_insert_default()
        .insert(DAEMONSET_HASH_LABEL.into(), hash.into());
    template
}

/// The node's taints plus those the node lifecycle controller would add for its state.
fn effective_taints(node: &Node) -> Vec<Taint> {
    let mut taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str());
    let mut inferred = Vec::new();
    match ready {
        Some("True") => {}
        Some("False") => inferred.push("node.kubernetes.io/not-ready"),
        _ => inferred.push("node.kubernetes.io/unreachable"),
    }
    if node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
    {
        inferred.push("node.kubernetes.io/unschedulable");
    }
    for key in inferred {
        if !taints
            .iter()
            .any(|t| t.key == key && t.effect == "NoSchedule")
        {
            taints.push(Taint {
                key: key.into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            });
        }
    }
    taints
}

/// `NodeShouldRunDaemonPod`: whether a daemon pod should be placed on the node, and whether
/// one already there may keep running (it tolerates the node's NoExecute taints).
pub fn should_run(node: &Node, set: &DaemonSet) -> (bool, bool) {
    let template = set
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let spec = daemon_pod_spec(&template);
    let node_name = node.metadata.name.as_deref().unwrap_or_default();
    if spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != node_name)
    {
        return (false, false);
    }
    if !fits_node(Some(&spec), node) {
        return (false, false);
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let untolerated = |effects: &[&str]| {
        effective_taints(node).iter().any(|taint| {
            effects.contains(&taint.effect.as_str())
                && !tolerations.iter().any(|t| tolerates(t, taint))
        })
    };
    if untolerated(&["NoSchedule", "NoExecute"]) {
        return (false, !untolerated(&["NoExecute"]));
    }
    (true, true)
}

/// The revision hash of the set's current template.
pub fn daemonset_hash(set: &DaemonSet) -> String {
    let template = set
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let collisions = set.status.as_ref().and_then(|s| s.collision_count);
    template_hash(&template, collisions)
}

/// The pods of the namespace the set controls or adopts now, and the ownership writes.
fn claim_pods<'a>(set: &DaemonSet, pods: &'a [Pod]) -> (Vec<&'a Pod>, Vec<PodAction>) {
    let Some(spec) = set.spec.as_ref() else {
        return (Vec::new(), Vec::new());
    };
    let Some(reference) = controller_ref("apps/v1", "DaemonSet", &set.metadata) else {
        return (Vec::new(), Vec::new());
    };
    let mut claimed = Vec::new();
    let mut actions = Vec::new();
    for pod in pods
        .iter()
        .filter(|p| p.metadata.namespace == set.metadata.namespace)
    {
        let write = |owner_references| PodAction::SetPodOwners {
            name: pod.name_any(),
            resource_version: pod.resource_version().unwrap_or_default(),
            owner_references,
        };
        match claim(&set.metadata, &reference, &spec.selector, &pod.metadata) {
            Claim::Owned => claimed.push(pod),
            Claim::Adopt(owners) => {
                actions.push(write(owners));
                claimed.push(pod);
            }
            Claim::Release(owners) => actions.push(write(owners)),
            Claim::Ignore => {}
        }
    }
    (claimed, actions)
}

/// `getNodesToDaemonPods`: the set's pods by the node they are bound or headed to.
fn pods_by_node<'a>(pods: &[&'a Pod]) -> BTreeMap<String, Vec<&'a Pod>> {
    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for pod in pods {
        if let Some(node) = target_node(pod) {
            by_node.entry(node).or_default().push(pod);
        }
    }
    by_node
}

/// `podByCreationTimestampAndPhase`: bound pods first, then oldest, then by name.
fn by_creation_and_phase(a: &&Pod, b: &&Pod) -> Ordering {
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    node_name(b)
        .is_some()
        .cmp(&node_name(a).is_some())
        .then_with(|| created(a).cmp(&created(b)))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

fn is_updated(pod: &Pod, hash: &str) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(DAEMONSET_HASH_LABEL))
        .is_some_and(|h| h == hash)
}

fn delete(pod: &Pod) -> Option<PodAction> {
    Some(PodAction::DeletePod {
        name: pod.name_any(),
        uid: pod.uid()?,
    })
}

/// `maxSurge` and `maxUnavailable` of a RollingUpdate set for `desired` nodes, both rounded
/// up, unavailability 1 if both come out 0.
fn rolling_limits(set: &DaemonSet, desired: i32) -> (i32, i32) {
    let strategy = set.spec.as_ref().and_then(|s| s.update_strategy.as_ref());
    if strategy
        .and_then(|s| s.type_.as_deref())
        .is_some_and(|t| t != "RollingUpdate")
    {
        return (0, 0);
    }
    let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
    let unavailable = rolling
        .and_then(|r| r.max_unavailable.as_ref())
        .map_or(Some(1), |v| scaled_value(v, desired, true))
        .unwrap_or(0);
    let surge = rolling
        .and_then(|r| r.max_surge.as_ref())
        .map_or(Some(0), |v| scaled_value(v, desired, true))
        .unwrap_or(0);
    if desired > 0 && unavailable == 0 && surge == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// `AllowsSurge`: the set may run a new pod beside an old one on a node.
fn allows_surge(set: &DaemonSet) -> bool {
    rolling_limits(set, 1).0 != 0
}

/// What the controller would write next for `set`, given every node, the pods of its
/// namespace, whether the expectations of earlier writes are `satisfied`, and the failed-pod
/// back-off (advanced here for every failed pod it decides to delete).
pub fn daemonset_actions(
    set: &DaemonSet,
    nodes: &[Node],
    pods: &[Pod],
    satisfied: bool,
    backoff: &mut FailedPodBackoff,
    now: Timestamp,
) -> Vec<PodAction> {
    let Some(spec) = set.spec.as_ref() else {
        return Vec::new();
    };
    if selects_everything(&spec.selector) || set.metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    let (claimed, mut actions) = claim_pods(set, pods);
    if !satisfied {
        return actions;
    }
    let hash = daemonset_hash(set);
    let by_node = pods_by_node(&claimed);
    let managed = manage(set, nodes, &by_node, &hash, backoff, now);
    if !managed.is_empty() {
        // Rolling on is for a pass whose own creations and deletions have been seen.
        actions.extend(managed);
        return actions;
    }
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate");
    if rolling {
        actions.extend(rolling_update(set, nodes, &by_node, &hash, now));
    }
    actions
}

/// `manage`: a pod for each node that should have one, none where it may not run, failed and
/// extra pods removed.
fn manage(
    set: &DaemonSet,
    nodes: &[Node],
    by_node: &BTreeMap<String, Vec<&Pod>>,
    hash: &str,
    backoff: &mut FailedPodBackoff,
    now: Timestamp,
) -> Vec<PodAction> {
    let mut create_on: Vec<String> = Vec::new();
    let mut deletions: Vec<PodAction> = Vec::new();
    let set_uid = set.uid().unwrap_or_default();
    let surge = allows_surge(set);
    let mut nodes: Vec<&Node> = nodes.iter().collect();
    nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for node in &nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        let (run, keep_running) = should_run(node, set);
        let daemon_pods = by_node.get(&name);
        match daemon_pods {
            None if run => create_on.push(name),
            Some(daemon_pods) if keep_running => {
                let mut running: Vec<&Pod> = Vec::new();
                for pod in daemon_pods
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                {
                    match phase(pod) {
                        Some("Failed") => {
                            let key = format!("{set_uid}/{name}");
                            if backoff.in_backoff(&key, now) {
                                continue;
                            }
                            backoff.next(&key, now);
                            deletions.extend(delete(pod));
                        }
                        Some("Succeeded") => deletions.extend(delete(pod)),
                        _ => running.push(pod),
                    }
                }
                running.sort_by(by_creation_and_phase);
                if !surge {
                    deletions.extend(running.iter().skip(1).filter_map(|p| delete(p)));
                    continue;
                }
                if running.len() <= 1 {
                    if running.is_empty() && run {
                        create_on.push(name);
                    }
                    continue;
                }
                // Surging: keep the oldest new pod and, while it is not yet available, the
                // oldest old one if that is still ready.
                let mut oldest_new: Option<&Pod> = None;
                let mut oldest_old: Option<&Pod> = None;
                for pod in running {
                    let slot = if is_updated(pod, hash) {
                        &mut oldest_new
                    } else {
                        &mut oldest_old
                    };
                    if slot.is_none() {
                        *slot = Some(pod);
                    } else {
                        deletions.extend(delete(pod));
                    }
                }
                if let (Some(new), Some(old)) = (oldest_new, oldest_old) {
                    let min_ready = set
                        .spec
                        .as_ref()
                        .and_then(|s| s.min_ready_seconds)
                        .unwrap_or(0);
                    if !is_ready(old) || is_available(new, min_ready, now) {
                        deletions.extend(delete(old));
                    }
                }
            }
            Some(daemon_pods) if !keep_running => {
                deletions.extend(
                    daemon_pods
                        .iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .filter_map(|p| delete(p)),
                );
            }
            _ => {}
        }
    }
    // Pods headed for nodes that no longer exist would never be scheduled (or collected).
    for (node, daemon_pods) in by_node {
        if nodes.iter().any(|n| n.metadata.name.as_ref() == Some(node)) {
            continue;
        }
        deletions.extend(
            daemon_pods
                .iter()
                .filter(|p| node_name(p).is_none())
                .filter_map(|p| delete(p)),
        );
    }
    let template = daemon_pod_template(
        &set.spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default(),
        hash,
    );
    let mut actions = Vec::new();
    if let Some(reference) = controller_ref("apps/v1", "DaemonSet", &set.metadata) {
        for node in create_on.into_iter().take(BURST_REPLICAS) {
            let mut pod =
                pod_from_template(&template, set.metadata.namespace.clone(), reference.clone());
            let spec = pod.spec.get_or_insert_default();
            spec.affinity = Some(with_node_name_affinity(spec.affinity.take(), &node));
            actions.push(PodAction::CreatePod(Box::new(pod)));
        }
    }
    actions.extend(deletions.into_iter().take(BURST_REPLICAS));
    actions
}

/// `findUpdatedPodsOnNode`: the node's live new and old pod, or None if it has more than one
/// of either (the manage step removes the extra first).
fn updated_and_old<'a>(pods: &[&'a Pod], hash: &str) -> Option<(Option<&'a Pod>, Option<&'a Pod>)> {
    let mut new = None;
    let mut old = None;
    for pod in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let slot = if is_updated(pod, hash) {
            &mut new
        } else {
            &mut old
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(*pod);
    }
    Some((new, old))
}

/// `rollingUpdate`: without surge, deletes old pods while fewer than maxUnavailable nodes lack
/// an available new pod (the manage step then creates the new ones); with surge, creates new
/// pods beside available old ones up to maxSurge and deletes old pods once the new is available.
fn rolling_update(
    set: &DaemonSet,
    nodes: &[Node],
    by_node: &BTreeMap<String, Vec<&Pod>>,
    hash: &str,
    now: Timestamp,
) -> Vec<PodAction> {
    let min_ready = set
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let mut pods_per_node: BTreeMap<String, Vec<&Pod>> = by_node.clone();
    let mut desired = 0;
    for node in nodes {
        if should_run(node, set).0 {
            desired += 1;
            pods_per_node
                .entry(node.metadata.name.clone().unwrap_or_default())
                .or_default();
        }
    }
    let (max_surge, max_unavailable) = rolling_limits(set, desired);
    let available = |p: &Pod| is_available(p, min_ready, now);

    if max_surge == 0 {
        let mut unavailable = 0;
        let mut replacements: Vec<&Pod> = Vec::new();
        let mut candidates: Vec<&Pod> = Vec::new();
        for pods in pods_per_node.values() {
            let Some((new, old)) = updated_and_old(pods, hash) else {
                unavailable += 1;
                continue;
            };
            match (new, old) {
                (None, None) | (Some(_), Some(_)) => unavailable += 1,
                (Some(new), None) => {
                    if !available(new) {
                        unavailable += 1;
                    }
                }
                (None, Some(old)) => {
                    if !available(old) {
                        replacements.push(old);
                        unavailable += 1;
                    } else if unavailable < max_unavailable {
                        candidates.push(old);
                    }
                }
            }
        }
        let room = usize::try_from((max_unavailable - unavailable).max(0)).unwrap_or(0);
        return replacements
            .into_iter()
            .chain(candidates.into_iter().take(room))
            .filter_map(delete)
            .collect();
    }

    let mut deletions: Vec<&Pod> = Vec::new();
    let mut replacements: Vec<String> = Vec::new();
    let mut candidates: Vec<String> = Vec::new();
    let mut surging = 0;
    for (node_name, pods) in &pods_per_node {
        let Some((new, old)) = updated_and_old(pods, hash) else {
            surging += 1;
            continue;
        };
        match (new, old) {
            (_, None) => {}
            (None, Some(old)) => {
                if available(old) {
                    candidates.push(node_name.clone());
                    continue;
                }
                let node = nodes
                    .iter()
                    .find(|n| n.metadata.name.as_ref() == Some(node_name));
                if node.is_some_and(|n| should_run(n, set).0) {
                    replacements.push(node_name.clone());
                } else {
                    deletions.push(old);
                }
            }
            (Some(new), Some(old)) => {
                if available(new) {
                    deletions.push(old);
                } else {
                    surging += 1;
                }
            }
        }
    }
    let room = usize::try_from((max_surge - surging).max(0)).unwrap_or(0);
    let mut actions: Vec<PodAction> = Vec::new();
    if let Some(reference) = controller_ref("apps/v1", "DaemonSet", &set.metadata) {
        let template = daemon_pod_template(
            &set.spec
                .as_ref()
                .map(|s| s.template.clone())
                .unwrap_or_default(),
            hash,
        );
        for node in replacements
            .into_iter()
            .chain(candidates.into_iter().take(room))
        {
            let mut pod =
                pod_from_template(&template, set.metadata.namespace.clone(), reference.clone());
            let spec = pod.spec.get_or_insert_default();
            spec.affinity = Some(with_node_name_affinity(spec.affinity.take(), &node));
            actions.push(PodAction::CreatePod(Box::new(pod)));
        }
    }
    actions.extend(deletions.into_iter().filter_map(delete));
    actions
}

/// The set's status (`updateDaemonSetStatus`); `observed` acknowledges the generation (only
/// after a pass that acted on it).
pub fn daemonset_status(
    set: &DaemonSet,
    nodes: &[Node],
    pods: &[Pod],
    observed: bool,
    now: Timestamp,
) -> DaemonSetStatus {
    let previous = set.status.clone().unwrap_or_default();
    let hash = daemonset_hash(set);
    let (claimed, _) = claim_pods(set, pods);
    let by_node = pods_by_node(&claimed);
    let min_ready = set
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let (mut desired, mut current, mut misscheduled, mut ready, mut updated, mut available) =
        (0, 0, 0, 0, 0, 0);
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        let scheduled = by_node.get(&name).filter(|p| !p.is_empty());
        if !should_run(node, set).0 {
            if scheduled.is_some() {
                misscheduled += 1;
            }
            continue;
        }
        desired += 1;
        let Some(daemon_pods) = scheduled else {
            continue;
        };
        current += 1;
        let mut daemon_pods = daemon_pods.clone();
        daemon_pods.sort_by(by_creation_and_phase);
        let pod = daemon_pods[0];
        if is_ready(pod) {
            ready += 1;
            if is_available(pod, min_ready, now) {
                available += 1;
            }
        }
        if is_updated(pod, &hash) {
            updated += 1;
        }
    }
    DaemonSetStatus {
        collision_count: previous.collision_count,
        conditions: previous.conditions,
        current_number_scheduled: current,
        desired_number_scheduled: desired,
        number_available: Some(available),
        number_misscheduled: misscheduled,
        number_ready: ready,
        number_unavailable: Some(desired - available),
        observed_generation: if observed {
            set.metadata.generation
        } else {
            previous.observed_generation
        },
        updated_number_scheduled: Some(updated),
    }
}

/// Whether writing `new` changes anything the controller owns (absent counts are zero).
fn status_differs(old: Option<&DaemonSetStatus>, new: &DaemonSetStatus) -> bool {
    let Some(old) = old else { return true };
    let counts = |s: &DaemonSetStatus| {
        [
            s.desired_number_scheduled,
            s.current_number_scheduled,
            s.number_misscheduled,
            s.number_ready,
            s.updated_number_scheduled.unwrap_or(0),
            s.number_available.unwrap_or(0),
            s.number_unavailable.unwrap_or(0),
        ]
    };
    counts(old) != counts(new) || old.observed_generation != new.observed_generation
}

/// The I/O shell: applies `daemonset_actions` and `daemonset_status` to every set.
#[derive(Clone)]
pub(super) struct DaemonSetController {
    client: Client,
    sets: Store<DaemonSet>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    writer: PodWriter,
    backoff: Arc<Mutex<FailedPodBackoff>>,
}

impl DaemonSetController {
    pub(super) fn new(
        client: Client,
        sets: Store<DaemonSet>,
        nodes: Store<Node>,
        pods: Store<Pod>,
        writer: PodWriter,
    ) -> Self {
        Self {
            client,
            sets,
            nodes,
            pods,
            writer,
            backoff: Arc::default(),
        }
    }

    /// One pass over every set; false if any write failed.
    pub(super) async fn sync_all(&self) -> bool {
        let nodes: Vec<Node> = self.nodes.state().iter().map(|n| Node::clone(n)).collect();
        let sets = self.sets.state();
        let by_namespace = super::pods_of_namespaces(
            &self.pods.state(),
            sets.iter().map(|s| &s.metadata.namespace),
        );
        let empty = Vec::new();
        let mut healthy = true;
        for set in sets {
            let Some(owner) = owner(&set) else { continue };
            let namespace_pods = by_namespace.get(&set.metadata.namespace).unwrap_or(&empty);
            let now = Timestamp::now();
            let satisfied = self.writer.satisfied(&owner.uid);
            let actions = match self.backoff.lock() {
                Ok(mut backoff) => {
                    daemonset_actions(&set, &nodes, namespace_pods, satisfied, &mut backoff, now)
                }
                Err(_) => Vec::new(),
            };
            let (ok, creations) = self.writer.claim_and_delete(&owner, actions).await;
            healthy &= ok;
            healthy &= self.writer.create(&owner, creations).await;
            healthy &= self
                .write_status(&set, &nodes, namespace_pods, satisfied, now)
                .await;
        }
        healthy
    }

    async fn write_status(
        &self,
        set: &DaemonSet,
        nodes: &[Node],
        pods: &[Pod],
        observed: bool,
        now: Timestamp,
    ) -> bool {
        let status = daemonset_status(set, nodes, pods, observed, now);
        if !status_differs(set.status.as_ref(), &status) {
            return true;
        }
        let namespace = set.namespace().unwrap_or_default();
        let api = Api::<DaemonSet>::namespaced(self.client.clone(), &namespace);
        let mut updated = set.clone();
        updated.status = Some(status);
        match api
            .replace_status(&set.name_any(), &PostParams::default(), &updated)
            .await
        {
            Ok(_) => true,
            Err(error) if is_benign(&error) => true,
            Err(error) => {
                let key = format!("{namespace}/{}", set.name_any());
                warn!(daemonset = %key, %error, "status update failed; will retry");
                false
            }
        }
    }
}

/// The set as the owner of pod writes.
fn owner(set: &DaemonSet) -> Option<Owner> {
    let namespace = set.namespace()?;
    Some(Owner {
        uid: set.uid()?,
        key: format!("daemonset {namespace}/{}", set.name_any()),
        namespace,
        reference: set.object_ref(&()),
    })
}

#[cfg(test)]
mod tests;
