use super::*;
use k8s_openapi::api::apps::v1::{DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet};
use k8s_openapi::api::core::v1::{
    Container, NodeCondition, NodeSpec, NodeStatus, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

const NOW: i64 = 1_000_000;

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(second).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

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

fn tainted(name: &str, key: &str, effect: &str) -> Node {
    let mut n = node(name);
    n.spec.as_mut().unwrap().taints = Some(vec![Taint {
        key: key.into(),
        effect: effect.into(),
        ..Default::default()
    }]);
    n
}

fn set() -> DaemonSet {
    DaemonSet {
        metadata: ObjectMeta {
            name: Some("agent".into()),
            namespace: Some("kube-system".into()),
            uid: Some("ds-uid".into()),
            generation: Some(3),
            ..Default::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(labels(&[("app", "agent")])),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&[("app", "agent")])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "agent".into(),
                        image: Some("busybox".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

fn rolling(set: &mut DaemonSet, max_unavailable: Option<i32>, max_surge: Option<i32>) {
    set.spec.as_mut().unwrap().update_strategy = Some(DaemonSetUpdateStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDaemonSet {
            max_unavailable: max_unavailable.map(IntOrString::Int),
            max_surge: max_surge.map(IntOrString::Int),
        }),
    });
}

/// A running daemon pod bound to `node`, from the template with `hash`, ready since `ready`.
fn pod(name: &str, node: &str, hash: &str, ready: Option<i64>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("kube-system".into()),
            uid: Some(format!("{name}-uid")),
            resource_version: Some("5".into()),
            labels: Some(labels(&[("app", "agent"), (DAEMONSET_HASH_LABEL, hash)])),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "DaemonSet".into(),
                name: "agent".into(),
                uid: "ds-uid".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            creation_timestamp: Some(Time(at(10))),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            conditions: ready.map(|since| {
                vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(at(since))),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }),
    }
}

fn actions(set: &DaemonSet, nodes: &[Node], pods: &[Pod]) -> Vec<PodAction> {
    daemonset_actions(
        set,
        nodes,
        pods,
        true,
        &mut FailedPodBackoff::default(),
        at(NOW),
    )
}

fn created_on(actions: &[PodAction]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            PodAction::CreatePod(pod) => target_node(pod),
            _ => None,
        })
        .collect()
}

fn deleted(actions: &[PodAction]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            PodAction::DeletePod { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn creates_one_pod_per_node_aimed_at_it_with_default_tolerations_and_hash() {
    let ds = set();
    let hash = daemonset_hash(&ds);
    let acts = actions(&ds, &[node("node-1"), node("node-2")], &[]);
    assert_eq!(created_on(&acts), ["node-1", "node-2"]);
    let PodAction::CreatePod(pod) = &acts[0] else {
        panic!("expected a creation: {acts:?}");
    };
    assert_eq!(pod.metadata.generate_name.as_deref(), Some("agent-"));
    assert_eq!(
        pod.metadata
            .labels
            .as_ref()
            .unwrap()
            .get(DAEMONSET_HASH_LABEL),
        Some(&hash)
    );
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.node_name, None, "the scheduler binds it");
    let keys: Vec<&str> = spec
        .tolerations
        .iter()
        .flatten()
        .filter_map(|t| t.key.as_deref())
        .collect();
    assert_eq!(
        keys,
        [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
            "node.kubernetes.io/disk-pressure",
            "node.kubernetes.io/memory-pressure",
            "node.kubernetes.io/pid-pressure",
            "node.kubernetes.io/unschedulable",
        ]
    );
}

#[test]
fn host_network_pods_also_tolerate_network_unavailable() {
    let mut ds = set();
    ds.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .host_network = Some(true);
    let unavailable = tainted("n", "node.kubernetes.io/network-unavailable", "NoSchedule");
    assert_eq!(should_run(&unavailable, &ds), (true, true));
    assert_eq!(should_run(&unavailable, &set()), (false, true));
}

#[test]
fn cordoned_nodes_get_a_pod_but_tainted_and_not_ready_ones_do_not() {
    let ds = set();
    let mut cordoned = node("cordoned");
    cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
    assert_eq!(
        should_run(&cordoned, &ds),
        (true, true),
        "tolerated by default"
    );

    let taint = tainted("tainted", "dedicated", "NoSchedule");
    assert_eq!(
        should_run(&taint, &ds),
        (false, true),
        "an existing pod may stay"
    );
    let evicting = tainted("evicting", "dedicated", "NoExecute");
    assert_eq!(should_run(&evicting, &ds), (false, false));

    let mut tolerant = set();
    tolerant
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .tolerations = Some(vec![Toleration {
        key: Some("dedicated".into()),
        operator: Some("Exists".into()),
        ..Default::default()
    }]);
    assert_eq!(should_run(&taint, &tolerant), (true, true));
    assert_eq!(should_run(&evicting, &tolerant), (true, true));

    let mut not_ready = node("not-ready");
    not_ready
        .status
        .as_mut()
        .unwrap()
        .conditions
        .as_mut()
        .unwrap()[0]
        .status = "False".into();
    assert_eq!(
        should_run(&not_ready, &ds),
        (false, true),
        "pods keep running"
    );
    let mut silent = node("silent");
    silent.status = None;
    assert_eq!(should_run(&silent, &ds), (false, true));
}

#[test]
fn node_selector_and_affinity_pick_the_nodes() {
    let mut ds = set();
    ds.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .node_selector = Some(labels(&[("role", "worker")]));
    let mut worker = node("worker");
    worker.metadata.labels = Some(labels(&[("role", "worker")]));
    let acts = actions(&ds, &[node("control"), worker], &[]);
    assert_eq!(created_on(&acts), ["worker"]);
}

#[test]
fn deletes_pods_from_nodes_they_no_longer_fit_and_replaces_missing_ones() {
    let ds = set();
    let hash = daemonset_hash(&ds);
    let pods = [pod("agent-a", "node-1", &hash, Some(10))];
    let acts = actions(
        &ds,
        &[tainted("node-1", "dedicated", "NoExecute"), node("node-2")],
        &pods,
    );
    assert_eq!(created_on(&acts), ["node-2"]);
    assert_eq!(deleted(&acts), ["agent-a"]);
}

#[test]
fn a_terminating_pod_is_replaced_only_once_it_is_gone() {
    let ds = set();
    let hash = daemonset_hash(&ds);
    let mut leaving = pod("agent-a", "node-1", &hash, Some(10));
    leaving.metadata.deletion_timestamp = Some(Time(at(NOW)));
    assert!(actions(&ds, &[node("node-1")], &[leaving]).is_empty());
    assert_eq!(
        created_on(&actions(&ds, &[node("node-1")], &[])),
        ["node-1"]
    );
}

#[test]
fn extra_pods_on_a_node_are_removed_keeping_the_oldest() {
    let ds = set();
    let hash = daemonset_hash(&ds);
    let older = pod("agent-old", "node-1", &hash, Some(10));
    let mut newer = pod("agent-new", "node-1", &hash, Some(10));
    newer.metadata.creation_timestamp = Some(Time(at(20)));
    assert_eq!(
        deleted(&actions(&ds, &[node("node-1")], &[newer, older])),
        ["agent-new"]
    );
}

#[test]
fn failed_pods_are_deleted_with_back_off_and_succeeded_ones_at_once() {
    let ds = set();
    let hash = daemonset_hash(&ds);
    let mut failed = pod("agent-a", "node-1", &hash, None);
    failed.status.as_mut().unwrap().phase = Some("Failed".into());
    let mut done = pod("agent-b", "node-2", &hash, None);
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    let nodes = [node("node-1"), node("node-2")];
    let pods = [failed, done];
    let mut backoff = FailedPodBackoff::default();
    let first = daemonset_actions(&ds, &nodes, &pods, true, &mut backoff, at(NOW));
    assert_eq!(deleted(&first), ["agent-a", "agent-b"]);
    let again = daemonset_actions(&ds, &nodes, &pods, true, &mut backoff, at(NOW));
    assert_eq!(
        deleted(&again),
        ["agent-b"],
        "node-1 is in back-off for 1 s"
    );
    let later = daemonset_actions(&ds, &nodes, &pods, true, &mut backoff, at(NOW + 2));
    assert_eq!(deleted(&later), ["agent-a", "agent-b"]);
    // The back-off doubled: 2 s after the second deletion it still holds.
    let soon = daemonset_actions(&ds, &nodes, &pods, true, &mut backoff, at(NOW + 3));
    assert_eq!(deleted(&soon), ["agent-b"]);
}

#[test]
fn unscheduled_pods_for_vanished_nodes_are_deleted() {
    let ds = set();
    let hash = daemonset_hash(&ds);
    let mut orphaned = pod("agent-a", "", &hash, None);
    orphaned.spec.as_mut().unwrap().node_name = None;
    orphaned.spec.as_mut().unwrap().affinity = Some(with_node_name_affinity(None, "gone"));
    assert_eq!(deleted(&actions(&ds, &[], &[orphaned])), ["agent-a"]);
}

#[test]
fn rolling_update_replaces_at_most_max_unavailable_nodes_at_a_time() {
    let mut ds = set();
    rolling(&mut ds, Some(1), None);
    let old = "old-hash";
    let nodes = [node("node-1"), node("node-2"), node("node-3")];
    let pods = [
        pod("agent-1", "node-1", old, Some(10)),
        pod("agent-2", "node-2", old, Some(10)),
        pod("agent-3", "node-3", old, Some(10)),
    ];
    assert_eq!(deleted(&actions(&ds, &nodes, &pods)), ["agent-1"]);

    // node-1 is being replaced (no live pod): nothing else goes.
    let mut replacing = pods.clone();
    replacing[0].metadata.deletion_timestamp = Some(Time(at(NOW)));
    assert!(actions(&ds, &nodes, &replacing).is_empty());

    // node-1 runs a new pod that is not available yet: still nothing.
    let hash = daemonset_hash(&ds);
    let mut progressing = pods.clone();
    progressing[0] = pod("agent-1b", "node-1", &hash, None);
    assert!(actions(&ds, &nodes, &progressing).is_empty());

    // Once it is available, the next old pod goes.
    progressing[0] = pod("agent-1b", "node-1", &hash, Some(NOW - 5));
    assert_eq!(deleted(&actions(&ds, &nodes, &progressing)), ["agent-2"]);

    // Unavailable old pods are replaced regardless of the budget.
    let mut broken = pods.clone();
    broken[1] = pod("agent-2", "node-2", old, None);
    broken[2] = pod("agent-3", "node-3", old, None);
    assert_eq!(
        deleted(&actions(&ds, &nodes, &broken)),
        ["agent-2", "agent-3"]
    );
}

#[test]
fn max_unavailable_percentages_round_up_and_default_to_one() {
    let mut ds = set();
    ds.spec.as_mut().unwrap().update_strategy = Some(DaemonSetUpdateStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDaemonSet {
            max_unavailable: Some(IntOrString::String("10%".into())),
            max_surge: None,
        }),
    });
    assert_eq!(rolling_limits(&ds, 3), (0, 1));
    assert_eq!(rolling_limits(&set(), 5), (0, 1));
    rolling(&mut ds, Some(0), Some(0));
    assert_eq!(rolling_limits(&ds, 5), (0, 1));
}

#[test]
fn on_delete_leaves_old_pods_alone() {
    let mut ds = set();
    ds.spec.as_mut().unwrap().update_strategy = Some(DaemonSetUpdateStrategy {
        type_: Some("OnDelete".into()),
        rolling_update: None,
    });
    let pods = [pod("agent-1", "node-1", "old-hash", Some(10))];
    assert!(actions(&ds, &[node("node-1")], &pods).is_empty());
}

#[test]
fn surge_starts_new_pods_beside_available_old_ones_then_removes_the_old() {
    let mut ds = set();
    rolling(&mut ds, Some(0), Some(1));
    let hash = daemonset_hash(&ds);
    let nodes = [node("node-1"), node("node-2")];
    let pods = [
        pod("agent-1", "node-1", "old-hash", Some(10)),
        pod("agent-2", "node-2", "old-hash", Some(10)),
    ];
    let acts = actions(&ds, &nodes, &pods);
    assert_eq!(created_on(&acts), ["node-1"]);
    assert!(deleted(&acts).is_empty());

    let mut surged = pods.to_vec();
    surged.push(pod("agent-1b", "node-1", &hash, None));
    assert!(
        actions(&ds, &nodes, &surged).is_empty(),
        "maxSurge is used up"
    );

    surged[2] = pod("agent-1b", "node-1", &hash, Some(NOW - 5));
    let acts = actions(&ds, &nodes, &surged);
    assert_eq!(deleted(&acts), ["agent-1"]);
}

#[test]
fn no_pod_writes_until_earlier_ones_are_seen() {
    let ds = set();
    let acts = daemonset_actions(
        &ds,
        &[node("node-1")],
        &[],
        false,
        &mut FailedPodBackoff::default(),
        at(NOW),
    );
    assert!(acts.is_empty());
}

#[test]
fn status_counts_nodes_as_kubectl_shows_them() {
    let mut ds = set();
    ds.spec.as_mut().unwrap().min_ready_seconds = Some(30);
    let hash = daemonset_hash(&ds);
    let nodes = [
        node("node-1"),
        node("node-2"),
        node("node-3"),
        tainted("node-4", "dedicated", "NoSchedule"),
    ];
    let pods = [
        pod("a", "node-1", &hash, Some(NOW - 100)),
        pod("b", "node-2", "old-hash", Some(NOW - 5)),
        pod("d", "node-4", &hash, Some(NOW - 100)),
    ];
    let status = daemonset_status(&ds, &nodes, &pods, true, at(NOW));
    assert_eq!(status.desired_number_scheduled, 3);
    assert_eq!(status.current_number_scheduled, 2);
    assert_eq!(status.number_misscheduled, 1);
    assert_eq!(status.number_ready, 2);
    assert_eq!(status.number_available, Some(1));
    assert_eq!(status.number_unavailable, Some(2));
    assert_eq!(status.updated_number_scheduled, Some(1));
    assert_eq!(status.observed_generation, Some(3));
    let unobserved = daemonset_status(&ds, &nodes, &pods, false, at(NOW));
    assert_eq!(unobserved.observed_generation, None);
}
