//! The ReplicaSet controller, as kube-controller-manager runs it: keeps `spec.replicas` active
//! pods made from the template (named `<set>-<random>`, controlled by the set), adopts orphans
//! the selector picks and releases pods it stopped picking, replaces pods that finish or are
//! deleted, gives up pods on scale-down in upstream's order (unscheduled, pending, not ready,
//! cheap, doubled up, recently ready, restarting, young first), and reports status.
//!
//! Not modelled: the `ReplicaFailure` condition, `terminatingReplicas` (alpha upstream), and
//! slow-start batches (creations stop at the first failure instead).

use std::collections::HashMap;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::warn;

use super::is_benign;
use super::ownership::{Claim, claim, controller_of, controller_ref, selects_everything};
use super::pods::{
    deletion_order, has_template_labels, is_active, is_available, is_ready, node_name,
    pod_from_template,
};
use super::workload::{BURST_REPLICAS, Owner, PodAction, PodWriter};

/// The pods of the set's namespace the set controls or adopts now, and the ownership writes.
fn claim_pods<'a>(set: &ReplicaSet, pods: &'a [Pod]) -> (Vec<&'a Pod>, Vec<PodAction>) {
    let Some(spec) = set.spec.as_ref() else {
        return (Vec::new(), Vec::new());
    };
    let Some(reference) = controller_ref("apps/v1", "ReplicaSet", &set.metadata) else {
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

/// What the controller would write next for `set`: ownership changes, then (when the
/// expectations of earlier writes are `satisfied`) pod creations or deletions. `pods` are the
/// pods of the namespace; `related` the pods of every set sharing the set's controller (the
/// Deployment's other ReplicaSets), which decide who is "doubled up" on a node.
pub fn replicaset_actions(
    set: &ReplicaSet,
    pods: &[Pod],
    related: &[Pod],
    satisfied: bool,
    now: Timestamp,
) -> Vec<PodAction> {
    let Some(spec) = set.spec.as_ref() else {
        return Vec::new();
    };
    if selects_everything(&spec.selector) {
        return Vec::new();
    }
    let (claimed, mut actions) = claim_pods(set, pods);
    if !satisfied || set.metadata.deletion_timestamp.is_some() {
        return actions;
    }
    let active: Vec<&Pod> = claimed.into_iter().filter(|p| is_active(p)).collect();
    let wanted = usize::try_from(spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
    if active.len() < wanted {
        let Some(reference) = controller_ref("apps/v1", "ReplicaSet", &set.metadata) else {
            return actions;
        };
        let template = spec.template.clone().unwrap_or_default();
        let missing = (wanted - active.len()).min(BURST_REPLICAS);
        for _ in 0..missing {
            let pod =
                pod_from_template(&template, set.metadata.namespace.clone(), reference.clone());
            actions.push(PodAction::CreatePod(Box::new(pod)));
        }
    } else if active.len() > wanted {
        let surplus = (active.len() - wanted).min(BURST_REPLICAS);
        actions.extend(
            pods_to_delete(&active, related, surplus, now)
                .into_iter()
                .filter_map(|pod| {
                    Some(PodAction::DeletePod {
                        name: pod.name_any(),
                        uid: pod.uid()?,
                    })
                }),
        );
    }
    actions
}

/// `getPodsToDelete`: the first `count` pods in upstream's deletion order.
fn pods_to_delete<'a>(
    active: &[&'a Pod],
    related: &[Pod],
    count: usize,
    now: Timestamp,
) -> Vec<&'a Pod> {
    let mut on_node: HashMap<&str, usize> = HashMap::new();
    for pod in related.iter().filter(|p| is_active(p)) {
        *on_node
            .entry(node_name(pod).unwrap_or_default())
            .or_default() += 1;
    }
    let rank = |pod: &Pod| {
        on_node
            .get(node_name(pod).unwrap_or_default())
            .copied()
            .unwrap_or(0)
    };
    let mut ranked: Vec<(&Pod, usize)> = active.iter().map(|p| (*p, rank(p))).collect();
    if count < ranked.len() {
        ranked.sort_by(|(a, rank_a), (b, rank_b)| deletion_order(a, *rank_a, b, *rank_b, now));
    }
    ranked.into_iter().take(count).map(|(p, _)| p).collect()
}

/// The set's status from the active pods it controls or adopts (`calculateStatus`).
pub fn replicaset_status(set: &ReplicaSet, pods: &[Pod], now: Timestamp) -> ReplicaSetStatus {
    let previous = set.status.clone().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let template = spec.template.unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let (claimed, _) = claim_pods(set, pods);
    let active: Vec<&Pod> = claimed.into_iter().filter(|p| is_active(p)).collect();
    let count = |test: &dyn Fn(&Pod) -> bool| {
        i32::try_from(active.iter().filter(|p| test(p)).count()).unwrap_or(i32::MAX)
    };
    ReplicaSetStatus {
        replicas: count(&|_| true),
        fully_labeled_replicas: Some(count(&|p| has_template_labels(p, &template))),
        ready_replicas: Some(count(&|p| is_ready(p))),
        available_replicas: Some(count(&|p| is_available(p, min_ready, now))),
        observed_generation: set.metadata.generation,
        conditions: previous.conditions,
        terminating_replicas: None,
    }
}

/// Whether writing `new` changes anything the controller owns (absent counts are zero).
fn status_differs(old: Option<&ReplicaSetStatus>, new: &ReplicaSetStatus) -> bool {
    let Some(old) = old else { return true };
    let counts = |s: &ReplicaSetStatus| {
        [
            s.replicas,
            s.fully_labeled_replicas.unwrap_or(0),
            s.ready_replicas.unwrap_or(0),
            s.available_replicas.unwrap_or(0),
        ]
    };
    counts(old) != counts(new) || old.observed_generation != new.observed_generation
}

/// The pods controlled by any ReplicaSet that shares `set`'s controller (or by `set` itself).
fn related_pods(set: &ReplicaSet, sets: &[&ReplicaSet], pods: &[Pod]) -> Vec<Pod> {
    let controller = controller_of(&set.metadata).map(|o| o.uid.as_str());
    let siblings: Vec<String> = sets
        .iter()
        .filter(|s| s.metadata.namespace == set.metadata.namespace)
        .filter(|s| match controller {
            Some(uid) => controller_of(&s.metadata).is_some_and(|o| o.uid == uid),
            None => s.metadata.uid == set.metadata.uid,
        })
        .filter_map(|s| s.uid())
        .collect();
    pods.iter()
        .filter(|p| controller_of(&p.metadata).is_some_and(|o| siblings.contains(&o.uid)))
        .cloned()
        .collect()
}

/// The I/O shell: applies `replicaset_actions` and `replicaset_status` to every set.
#[derive(Clone)]
pub(super) struct ReplicaSetController {
    client: Client,
    sets: Store<ReplicaSet>,
    pods: Store<Pod>,
    writer: PodWriter,
}

impl ReplicaSetController {
    pub(super) fn new(
        client: Client,
        sets: Store<ReplicaSet>,
        pods: Store<Pod>,
        writer: PodWriter,
    ) -> Self {
        Self {
            client,
            sets,
            pods,
            writer,
        }
    }

    /// One pass over every set; false if any write failed. All deletions of the pass go out
    /// before its creations, so a Deployment that scaled an old set down and a new one up in
    /// the same moment never has both sets' pods at once.
    pub(super) async fn sync_all(&self) -> bool {
        let sets = self.sets.state();
        let by_namespace = super::pods_of_namespaces(
            &self.pods.state(),
            sets.iter().map(|s| &s.metadata.namespace),
        );
        let set_refs: Vec<&ReplicaSet> = sets.iter().map(|s| s.as_ref()).collect();
        let now = Timestamp::now();
        let empty = Vec::new();

        let mut plans = Vec::new();
        for set in &set_refs {
            let Some(owner) = owner(set) else { continue };
            let pods = by_namespace.get(&set.metadata.namespace).unwrap_or(&empty);
            let related = related_pods(set, &set_refs, pods);
            let satisfied = self.writer.satisfied(&owner.uid);
            let actions = replicaset_actions(set, pods, &related, satisfied, now);
            plans.push((owner, actions));
        }

        let mut healthy = true;
        let mut creations = Vec::new();
        for (owner, actions) in plans {
            let (ok, pods) = self.writer.claim_and_delete(&owner, actions).await;
            healthy &= ok;
            creations.push((owner, pods));
        }
        for (owner, pods) in creations {
            healthy &= self.writer.create(&owner, pods).await;
        }

        for set in &set_refs {
            let pods = by_namespace.get(&set.metadata.namespace).unwrap_or(&empty);
            healthy &= self.write_status(set, pods, now).await;
        }
        healthy
    }

    async fn write_status(&self, set: &ReplicaSet, pods: &[Pod], now: Timestamp) -> bool {
        let status = replicaset_status(set, pods, now);
        if !status_differs(set.status.as_ref(), &status) {
            return true;
        }
        let namespace = set.namespace().unwrap_or_default();
        let api = Api::<ReplicaSet>::namespaced(self.client.clone(), &namespace);
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
                warn!(replicaset = %key, %error, "status update failed; will retry");
                false
            }
        }
    }
}

/// The set as the owner of pod writes.
fn owner(set: &ReplicaSet) -> Option<Owner> {
    let namespace = set.namespace()?;
    Some(Owner {
        uid: set.uid()?,
        key: format!("replicaset {namespace}/{}", set.name_any()),
        namespace,
        reference: set.object_ref(&()),
    })
}

#[cfg(test)]
mod tests;
