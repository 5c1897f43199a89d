//! Pods as the workload controllers judge them (upstream's `podutil` and `controller_utils`):
//! active, ready, available, the pod a controller makes from its template, and the order in
//! which a ReplicaSet gives pods up when it scales down.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// The annotation that makes a pod cheaper or dearer to delete on scale-down.
pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";

/// The pod's phase, if reported.
pub fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

/// Succeeded or Failed: the pod will never run again.
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), Some("Succeeded" | "Failed"))
}

/// The pod is being deleted.
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// `controller.IsPodActive`: neither finished nor being deleted, so it counts as a replica.
pub fn is_active(pod: &Pod) -> bool {
    !is_terminal(pod) && !is_terminating(pod)
}

/// `Some(last transition)` when the pod's Ready condition is True.
pub fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

/// `podutil.IsPodReady`: the Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// `podutil.IsPodAvailable`: Ready, and for longer than `min_ready_seconds` before `now`.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => {
            since
                .as_second()
                .saturating_add(i64::from(min_ready_seconds))
                < now.as_second()
        }
    }
}

/// The node the pod is bound to, or None.
pub fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()?
        .node_name
        .as_deref()
        .filter(|n| !n.is_empty())
}

/// `controller.GetPodFromTemplate`: a pod named `<owner>-<random>` by the server, with the
/// template's labels, annotations, finalizers and spec, controlled by `owner`.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    namespace: Option<String>,
    owner: OwnerReference,
) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", owner.name)),
            namespace,
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Whether every label of `template` is on `pod` (`fullyLabeledReplicas`).
pub fn has_template_labels(pod: &Pod, template: &PodTemplateSpec) -> bool {
    let wanted = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .map(BTreeMap::iter)
        .into_iter()
        .flatten();
    let labels = pod.metadata.labels.as_ref();
    wanted
        .into_iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// `controller.ActivePodsWithRanks`: `Less` when `a` should be deleted before `b`. `rank_a` and
/// `rank_b` count the related active pods on each pod's node (doubled-up pods go first).
pub fn deletion_order(a: &Pod, rank_a: usize, b: &Pod, rank_b: usize, now: Timestamp) -> Ordering {
    let unassigned = |p: &Pod| node_name(p).is_none();
    // 1. Unassigned before assigned.
    if node_name(a) != node_name(b) && (unassigned(a) || unassigned(b)) {
        return if unassigned(a) {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    // 2. Pending before Unknown before Running.
    let phase_rank = |p: &Pod| match phase(p) {
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    };
    let order = phase_rank(a).cmp(&phase_rank(b));
    if order != Ordering::Equal {
        return order;
    }
    // 3. Not ready before ready.
    let order = is_ready(a).cmp(&is_ready(b));
    if order != Ordering::Equal {
        return order;
    }
    // 4. Lower deletion cost first.
    let order = deletion_cost(a).cmp(&deletion_cost(b));
    if order != Ordering::Equal {
        return order;
    }
    // 5. More related pods on the same node first.
    let order = rank_b.cmp(&rank_a);
    if order != Ordering::Equal {
        return order;
    }
    // 6. Ready for less time first, compared on a logarithmic scale.
    if let (Some(since_a), Some(since_b)) = (ready_since(a), ready_since(b))
        && since_a != since_b
    {
        return newer_first(since_a, since_b, a, b, now);
    }
    // 7. More container restarts first.
    let order = max_restarts(b).cmp(&max_restarts(a));
    if order != Ordering::Equal {
        return order;
    }
    // 8. Newer first, compared on a logarithmic scale.
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    if created(a) != created(b) {
        return newer_first(created(a), created(b), a, b, now);
    }
    Ordering::Equal
}

/// The pod's `controller.kubernetes.io/pod-deletion-cost`; unset or invalid counts as 0.
fn deletion_cost(pod: &Pod) -> i32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DELETION_COST_ANNOTATION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Restart counts of regular containers, then of sidecars (restartable init containers).
fn max_restarts(pod: &Pod) -> (i32, i32) {
    let status = pod.status.as_ref();
    let regular = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0);
    let sidecars: Vec<&str> = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| c.name.as_str())
        .collect();
    let sidecar = status
        .and_then(|s| s.init_container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| sidecars.contains(&c.name.as_str()))
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0);
    (regular, sidecar)
}

/// Later (or unknown) times first; times in the same power-of-two age bucket tie, then uid
/// decides, as with upstream's `LogarithmicScaleDown`.
fn newer_first(
    a: Option<Timestamp>,
    b: Option<Timestamp>,
    pod_a: &Pod,
    pod_b: &Pod,
    now: Timestamp,
) -> Ordering {
    let (Some(a), Some(b)) = (a, b) else {
        // `afterOrZero`: an unknown time counts as the newest.
        return match (a, b) {
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            _ => Ordering::Equal,
        };
    };
    let bucket = |t: Timestamp| {
        let age = now.as_nanosecond() - t.as_nanosecond();
        if age > 0 { age.ilog2() as i64 } else { -1 }
    };
    match bucket(a).cmp(&bucket(b)) {
        Ordering::Equal => pod_a.metadata.uid.cmp(&pod_b.metadata.uid),
        order => order,
    }
}
