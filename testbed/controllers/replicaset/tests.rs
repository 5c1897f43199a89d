use super::*;
use k8s_openapi::api::apps::v1::ReplicaSetSpec;
use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, PodCondition, PodSpec, PodStatus, PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};

const NOW: i64 = 1_000_000;

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(second).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn set(replicas: i32) -> ReplicaSet {
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some("web-abc".into()),
            namespace: Some("default".into()),
            uid: Some("rs-uid".into()),
            generation: Some(2),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels(&[("app", "web")])),
                match_expressions: None,
            },
            template: Some(PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&[("app", "web"), ("pod-template-hash", "abc")])),
                    annotations: Some(labels(&[("note", "x")])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "main".into(),
                        image: Some("busybox".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }),
            min_ready_seconds: None,
        }),
        status: None,
    }
}

fn owned_by_set() -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        name: "web-abc".into(),
        uid: "rs-uid".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A running, ready pod of the set on `node`, created at `created` and ready since `ready`.
fn pod(name: &str, node: &str, created: i64, ready: Option<i64>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: Some(format!("{name}-uid")),
            resource_version: Some("7".into()),
            labels: Some(labels(&[("app", "web"), ("pod-template-hash", "abc")])),
            owner_references: Some(vec![owned_by_set()]),
            creation_timestamp: Some(Time(at(created))),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: (!node.is_empty()).then(|| node.into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some(
                if node.is_empty() {
                    "Pending"
                } else {
                    "Running"
                }
                .into(),
            ),
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

fn deleted(actions: &[PodAction]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            PodAction::DeletePod { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

fn created(actions: &[PodAction]) -> Vec<Pod> {
    actions
        .iter()
        .filter_map(|a| match a {
            PodAction::CreatePod(pod) => Some(*pod.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn creates_missing_pods_from_the_template_under_generate_name() {
    let pods = [pod("web-abc-1", "node-a", 10, Some(20))];
    let actions = replicaset_actions(&set(3), &pods, &pods, true, at(NOW));
    let new = created(&actions);
    assert_eq!(new.len(), 2);
    let pod = &new[0];
    assert_eq!(pod.metadata.generate_name.as_deref(), Some("web-abc-"));
    assert_eq!(pod.metadata.name, None);
    assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(
        pod.metadata.labels,
        Some(labels(&[("app", "web"), ("pod-template-hash", "abc")]))
    );
    assert_eq!(pod.metadata.annotations, Some(labels(&[("note", "x")])));
    assert_eq!(pod.metadata.owner_references, Some(vec![owned_by_set()]));
    assert_eq!(pod.spec.as_ref().unwrap().containers[0].name, "main");
}

#[test]
fn waits_for_earlier_writes_to_be_seen_before_acting_again() {
    let actions = replicaset_actions(&set(3), &[], &[], false, at(NOW));
    assert!(actions.is_empty());
}

#[test]
fn replaces_finished_and_terminating_pods() {
    let mut failed = pod("web-abc-1", "node-a", 10, None);
    failed.status.as_mut().unwrap().phase = Some("Failed".into());
    let mut leaving = pod("web-abc-2", "node-a", 10, Some(20));
    leaving.metadata.deletion_timestamp = Some(Time(at(NOW)));
    let pods = [failed, leaving, pod("web-abc-3", "node-b", 10, Some(20))];
    let actions = replicaset_actions(&set(3), &pods, &pods, true, at(NOW));
    assert_eq!(created(&actions).len(), 2);
    assert!(
        deleted(&actions).is_empty(),
        "finished pods are left to pod GC"
    );
}

#[test]
fn scales_down_unscheduled_then_pending_then_unready_then_newest_ready_pods() {
    let mut pending = pod("pending", "node-a", 10, None);
    pending.status.as_mut().unwrap().phase = Some("Pending".into());
    let pods = [
        pod("old-ready", "node-a", 10, Some(NOW - 10_000)),
        pod("young-ready", "node-b", 20, Some(NOW - 2)),
        pod("unready", "node-b", 30, None),
        pending,
        pod("unscheduled", "", 40, None),
    ];
    let order = |count: usize| {
        let mut s = set(5);
        s.spec.as_mut().unwrap().replicas = Some(i32::try_from(5 - count).unwrap());
        deleted(&replicaset_actions(&s, &pods, &pods, true, at(NOW)))
    };
    assert_eq!(order(1), ["unscheduled"]);
    assert_eq!(order(2), ["unscheduled", "pending"]);
    assert_eq!(order(3), ["unscheduled", "pending", "unready"]);
    assert_eq!(
        order(4),
        ["unscheduled", "pending", "unready", "young-ready"]
    );
}

#[test]
fn scale_down_honours_deletion_cost_then_doubled_up_nodes() {
    let mut dear = pod("dear", "node-a", 10, Some(100));
    dear.metadata.annotations = Some(labels(&[(
        crate::controllers::pods::DELETION_COST_ANNOTATION,
        "100",
    )]));
    let pods = [dear, pod("alone", "node-a", 10, Some(100))];
    assert_eq!(
        deleted(&replicaset_actions(&set(1), &pods, &pods, true, at(NOW))),
        ["alone"]
    );

    // Same age and readiness: the pod sharing its node with more of the Deployment's pods goes.
    let crowded = pod("crowded", "node-a", 10, Some(100));
    let single = pod("single", "node-b", 10, Some(100));
    let sibling = pod("sibling", "node-a", 10, Some(100));
    let pods = [single, crowded];
    let related = [pods[0].clone(), pods[1].clone(), sibling];
    assert_eq!(
        deleted(&replicaset_actions(&set(1), &pods, &related, true, at(NOW))),
        ["crowded"]
    );
}

#[test]
fn ready_times_in_the_same_power_of_two_bucket_tie_and_the_uid_decides() {
    // Ready 600 s and 1000 s ago: both in the 2^39..2^40 ns bucket.
    let newer = pod("zz-newer", "node-a", 10, Some(NOW - 600));
    let older = pod("aa-older", "node-b", 10, Some(NOW - 1000));
    let pods = [newer, older];
    assert_eq!(
        deleted(&replicaset_actions(&set(1), &pods, &[], true, at(NOW))),
        ["aa-older"]
    );
}

#[test]
fn equally_ready_pods_with_more_restarts_go_first() {
    let mut restarting = pod("restarting", "node-a", 10, Some(NOW - 600));
    restarting.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
        name: "main".into(),
        restart_count: 3,
        ..Default::default()
    }]);
    let steady = pod("a-steady", "node-b", 10, Some(NOW - 600));
    let pods = [steady, restarting];
    assert_eq!(
        deleted(&replicaset_actions(&set(1), &pods, &[], true, at(NOW))),
        ["restarting"]
    );
}

#[test]
fn adopts_matching_orphans_and_releases_pods_that_stopped_matching() {
    let mut orphan = pod("orphan", "node-a", 10, Some(20));
    orphan.metadata.owner_references = None;
    let mut relabelled = pod("relabelled", "node-a", 10, Some(20));
    relabelled.metadata.labels = Some(labels(&[("app", "debug")]));
    let mut foreign = pod("foreign", "node-a", 10, Some(20));
    foreign.metadata.owner_references = Some(vec![OwnerReference {
        uid: "other".into(),
        ..owned_by_set()
    }]);
    let pods = [orphan, relabelled, foreign];
    let actions = replicaset_actions(&set(1), &pods, &pods, true, at(NOW));
    assert_eq!(
        actions,
        vec![
            PodAction::SetPodOwners {
                name: "orphan".into(),
                resource_version: "7".into(),
                owner_references: vec![owned_by_set()],
            },
            PodAction::SetPodOwners {
                name: "relabelled".into(),
                resource_version: "7".into(),
                owner_references: vec![],
            },
        ],
        "the adopted orphan is the one replica; nothing to create"
    );
}

#[test]
fn a_set_being_deleted_only_keeps_its_status() {
    let mut s = set(3);
    s.metadata.deletion_timestamp = Some(Time(at(NOW)));
    assert!(replicaset_actions(&s, &[], &[], true, at(NOW)).is_empty());
}

#[test]
fn status_counts_ready_available_and_fully_labeled_pods() {
    let mut s = set(3);
    s.spec.as_mut().unwrap().min_ready_seconds = Some(30);
    let mut partly_labeled = pod("partly", "node-a", 10, Some(NOW - 100));
    partly_labeled.metadata.labels = Some(labels(&[("app", "web")]));
    let mut gone = pod("gone", "node-a", 10, Some(NOW - 100));
    gone.metadata.deletion_timestamp = Some(Time(at(NOW)));
    let pods = [
        pod("available", "node-a", 10, Some(NOW - 100)),
        pod("just-ready", "node-b", 10, Some(NOW - 5)),
        pod("unready", "node-b", 10, None),
        partly_labeled,
        gone,
    ];
    let status = replicaset_status(&s, &pods, at(NOW));
    assert_eq!(status.replicas, 4);
    assert_eq!(status.fully_labeled_replicas, Some(3));
    assert_eq!(status.ready_replicas, Some(3));
    assert_eq!(status.available_replicas, Some(2));
    assert_eq!(status.observed_generation, Some(2));
    assert!(status_differs(None, &status));
    assert!(!status_differs(Some(&status), &status));
}
