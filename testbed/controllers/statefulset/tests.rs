use super::*;
use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSetOrdinals,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaimSpec, PodCondition, PodSpec, PodStatus, PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

const SET_UID: &str = "set-uid";

fn now() -> Timestamp {
    Timestamp::from_second(1_000_000).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn set(replicas: i32) -> StatefulSet {
    StatefulSet {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            uid: Some(SET_UID.into()),
            generation: Some(3),
            ..Default::default()
        },
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some("web-headless".into()),
            selector: LabelSelector {
                match_labels: Some(labels(&[("app", "web")])),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&[("app", "web"), ("tier", "db")])),
                    annotations: Some(labels(&[("note", "kept")])),
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
            },
            ..Default::default()
        }),
        status: None,
    }
}

fn parallel(mut set: StatefulSet) -> StatefulSet {
    set.spec.as_mut().unwrap().pod_management_policy = Some("Parallel".into());
    set
}

fn with_claim_template(mut set: StatefulSet) -> StatefulSet {
    set.spec.as_mut().unwrap().volume_claim_templates = Some(vec![PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            labels: Some(labels(&[("kind", "data")])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            ..Default::default()
        }),
        status: None,
    }]);
    set
}

fn with_retention(mut set: StatefulSet, when_scaled: &str, when_deleted: &str) -> StatefulSet {
    set.spec
        .as_mut()
        .unwrap()
        .persistent_volume_claim_retention_policy =
        Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
            when_scaled: Some(when_scaled.into()),
            when_deleted: Some(when_deleted.into()),
        });
    set
}

fn with_image(mut set: StatefulSet, image: &str) -> StatefulSet {
    let spec = set.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    spec.containers[0].image = Some(image.into());
    set
}

/// The API server and kubelet as far as these tests need them: objects get uids and phases.
#[derive(Default)]
struct Cluster {
    pods: Vec<Pod>,
    claims: Vec<PersistentVolumeClaim>,
    next_uid: u32,
}

impl Cluster {
    fn uid(&mut self) -> String {
        self.next_uid += 1;
        format!("uid-{}", self.next_uid)
    }

    fn apply(&mut self, actions: &[Action]) {
        for action in actions.iter().cloned() {
            match action {
                Action::CreateClaim(mut claim) => {
                    claim.metadata.uid = Some(self.uid());
                    self.claims.push(*claim);
                }
                Action::CreatePod(mut pod) => {
                    pod.metadata.uid = Some(self.uid());
                    pod.status = Some(PodStatus {
                        phase: Some("Pending".into()),
                        ..Default::default()
                    });
                    self.pods.push(*pod);
                }
                Action::DeletePod { name, uid } => {
                    // Graceful deletion: the pod lingers as terminating until `finish_deletions`.
                    for pod in self.pods.iter_mut().filter(|p| p.name_any() == name) {
                        if pod.uid().as_deref() == Some(uid.as_str()) {
                            pod.metadata.deletion_timestamp = Some(Time(now()));
                        }
                    }
                }
                Action::SetClaimOwners {
                    name,
                    owner_references,
                } => {
                    let claim = self
                        .claims
                        .iter_mut()
                        .find(|c| c.name_any() == name)
                        .unwrap();
                    claim.metadata.owner_references = Some(owner_references);
                }
                Action::DeleteClaim { name, uid } => {
                    self.claims
                        .retain(|c| c.name_any() != name || c.uid() != Some(uid.clone()));
                }
            }
        }
    }

    fn step(&mut self, set: &StatefulSet) -> Vec<Action> {
        let actions = statefulset_actions(set, &self.pods, &self.claims, now());
        self.apply(&actions);
        actions
    }

    fn finish_deletions(&mut self) {
        self.pods
            .retain(|p| p.metadata.deletion_timestamp.is_none());
    }

    fn pod_mut(&mut self, name: &str) -> &mut Pod {
        self.pods.iter_mut().find(|p| p.name_any() == name).unwrap()
    }

    fn make_ready(&mut self, name: &str) {
        let status = self.pod_mut(name).status.get_or_insert_default();
        status.phase = Some("Running".into());
        status.conditions = Some(vec![PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            last_transition_time: Some(Time(Timestamp::UNIX_EPOCH)),
            ..Default::default()
        }]);
    }

    fn make_all_ready(&mut self) {
        let names: Vec<String> = self.pods.iter().map(|p| p.name_any()).collect();
        names.iter().for_each(|n| self.make_ready(n));
    }

    /// Steps until nothing more happens, making every pod ready and every deletion finish.
    fn converge(&mut self, set: &StatefulSet) {
        for _ in 0..50 {
            self.finish_deletions();
            self.make_all_ready();
            if self.step(set).is_empty() {
                return;
            }
        }
        panic!("did not converge");
    }

    fn pod_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.pods.iter().map(|p| p.name_any()).collect();
        names.sort();
        names
    }

    fn claim_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.claims.iter().map(|c| c.name_any()).collect();
        names.sort();
        names
    }
}

fn created_pods(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::CreatePod(pod) => Some(pod.name_any()),
            _ => None,
        })
        .collect()
}

fn deleted_pods(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::DeletePod { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn ordered_ready_creates_the_next_pod_only_when_all_lower_ones_are_running_and_ready() {
    let set = set(3);
    let mut cluster = Cluster::default();
    assert_eq!(created_pods(&cluster.step(&set)), ["web-0"]);
    assert_eq!(cluster.step(&set), [], "web-0 is Pending");

    cluster.pod_mut("web-0").status.as_mut().unwrap().phase = Some("Running".into());
    assert_eq!(cluster.step(&set), [], "web-0 is Running but not Ready");

    cluster.make_ready("web-0");
    assert_eq!(created_pods(&cluster.step(&set)), ["web-1"]);
    cluster.make_ready("web-1");
    assert_eq!(created_pods(&cluster.step(&set)), ["web-2"]);
    cluster.make_ready("web-2");
    assert_eq!(cluster.step(&set), []);
}

#[test]
fn ordered_ready_waits_for_min_ready_seconds() {
    let mut set = set(2);
    set.spec.as_mut().unwrap().min_ready_seconds = Some(10);
    let mut cluster = Cluster::default();
    cluster.step(&set);
    cluster.make_ready("web-0");
    let ready_since = |cluster: &mut Cluster, second: i64| {
        let conditions = cluster
            .pod_mut("web-0")
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut();
        conditions.unwrap()[0].last_transition_time =
            Some(Time(Timestamp::from_second(second).unwrap()));
    };
    ready_since(&mut cluster, now().as_second() - 5);
    assert_eq!(cluster.step(&set), []);
    ready_since(&mut cluster, now().as_second() - 11);
    assert_eq!(created_pods(&cluster.step(&set)), ["web-1"]);
}

#[test]
fn parallel_creates_all_pods_at_once() {
    let set = parallel(set(3));
    let mut cluster = Cluster::default();
    assert_eq!(
        created_pods(&cluster.step(&set)),
        ["web-0", "web-1", "web-2"]
    );
    assert_eq!(cluster.step(&set), []);
}

#[test]
fn pods_carry_the_statefulset_identity() {
    let set = with_claim_template(set(1));
    let pod = new_pod(&set, 4, "web-abc");
    assert_eq!(pod.name_any(), "web-4");
    assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(
        pod.metadata.labels.unwrap(),
        labels(&[
            ("app", "web"),
            ("tier", "db"),
            (REVISION_LABEL, "web-abc"),
            (POD_NAME_LABEL, "web-4"),
            (POD_INDEX_LABEL, "4"),
        ])
    );
    assert_eq!(pod.metadata.annotations, Some(labels(&[("note", "kept")])));
    let owner = &pod.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (
            owner.api_version.as_str(),
            owner.kind.as_str(),
            owner.name.as_str(),
            owner.uid.as_str()
        ),
        ("apps/v1", "StatefulSet", "web", SET_UID)
    );
    assert_eq!(
        (owner.controller, owner.block_owner_deletion),
        (Some(true), Some(true))
    );
    let spec = pod.spec.unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("web-4"));
    assert_eq!(spec.subdomain.as_deref(), Some("web-headless"));
    let volumes = spec.volumes.unwrap();
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0].name, "data");
    assert_eq!(
        volumes[0]
            .persistent_volume_claim
            .as_ref()
            .unwrap()
            .claim_name,
        "data-web-4"
    );
}

#[test]
fn claim_volumes_replace_template_volumes_of_the_same_name() {
    let mut set = with_claim_template(set(1));
    let template = set.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    template.volumes = Some(vec![
        Volume {
            name: "data".into(),
            ..Default::default()
        },
        Volume {
            name: "scratch".into(),
            ..Default::default()
        },
    ]);
    let volumes = new_pod(&set, 0, "r").spec.unwrap().volumes.unwrap();
    let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["data", "scratch"]);
    assert!(volumes[0].persistent_volume_claim.is_some());
}

#[test]
fn claims_are_created_before_their_pod_with_template_and_selector_labels() {
    let set = with_claim_template(set(1));
    let actions = Cluster::default().step(&set);
    assert_eq!(actions.len(), 2);
    let Action::CreateClaim(claim) = &actions[0] else {
        panic!("claim first: {actions:?}")
    };
    assert!(matches!(&actions[1], Action::CreatePod(pod) if pod.name_any() == "web-0"));
    assert_eq!(claim.name_any(), "data-web-0");
    assert_eq!(claim.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(
        claim.metadata.labels,
        Some(labels(&[("app", "web"), ("kind", "data")]))
    );
    assert_eq!(
        claim.metadata.owner_references, None,
        "Retain/Retain: no owners"
    );
    assert_eq!(
        claim.spec.as_ref().unwrap().access_modes,
        Some(vec!["ReadWriteOnce".to_string()])
    );
    assert_eq!(claim_name("data", "web", 12), "data-web-12");
}

#[test]
fn existing_claims_are_not_created_again() {
    let set = with_claim_template(set(1));
    let mut cluster = Cluster::default();
    cluster.apply(&[Action::CreateClaim(Box::new(new_claim(
        &set,
        &set.spec
            .as_ref()
            .unwrap()
            .volume_claim_templates
            .as_ref()
            .unwrap()[0],
        0,
    )))]);
    assert_eq!(created_pods(&cluster.step(&set)), ["web-0"]);
    assert_eq!(cluster.claim_names(), ["data-web-0"]);
}

#[test]
fn ordered_scale_down_removes_the_highest_ordinal_first_and_waits_until_it_is_gone() {
    let mut cluster = Cluster::default();
    cluster.converge(&set(3));
    let set = set(1);

    assert_eq!(deleted_pods(&cluster.step(&set)), ["web-2"]);
    assert_eq!(cluster.step(&set), [], "web-2 is still terminating");
    cluster.finish_deletions();
    assert_eq!(deleted_pods(&cluster.step(&set)), ["web-1"]);
    cluster.finish_deletions();
    assert_eq!(cluster.step(&set), []);
    assert_eq!(cluster.pod_names(), ["web-0"]);
}

#[test]
fn ordered_scale_down_waits_while_a_remaining_pod_is_unready() {
    let mut cluster = Cluster::default();
    cluster.converge(&set(3));
    cluster.pod_mut("web-0").status.as_mut().unwrap().conditions = None;
    assert_eq!(cluster.step(&set(1)), []);
}

#[test]
fn parallel_scale_down_removes_all_condemned_pods_at_once() {
    let mut cluster = Cluster::default();
    cluster.converge(&parallel(set(3)));
    assert_eq!(
        deleted_pods(&cluster.step(&parallel(set(1)))),
        ["web-2", "web-1"]
    );
}

#[test]
fn scale_down_keeps_claims_by_default() {
    let mut cluster = Cluster::default();
    cluster.converge(&with_claim_template(set(3)));
    assert_eq!(
        cluster.claim_names(),
        ["data-web-0", "data-web-1", "data-web-2"]
    );
    cluster.converge(&with_claim_template(set(0)));
    assert!(cluster.pods.is_empty());
    assert_eq!(
        cluster.claim_names(),
        ["data-web-0", "data-web-1", "data-web-2"]
    );
    assert!(
        cluster
            .claims
            .iter()
            .all(|c| c.metadata.owner_references.is_none())
    );
}

#[test]
fn scale_up_reuses_kept_claims() {
    let mut cluster = Cluster::default();
    cluster.converge(&with_claim_template(set(2)));
    cluster.converge(&with_claim_template(set(1)));
    let kept = cluster
        .claims
        .iter()
        .find(|c| c.name_any() == "data-web-1")
        .unwrap()
        .uid();
    let actions = cluster.step(&with_claim_template(set(2)));
    assert_eq!(created_pods(&actions), ["web-1"]);
    assert!(!actions.iter().any(|a| matches!(a, Action::CreateClaim(_))));
    let still = cluster
        .claims
        .iter()
        .find(|c| c.name_any() == "data-web-1")
        .unwrap()
        .uid();
    assert_eq!(kept, still);
}

#[test]
fn when_scaled_delete_hands_condemned_claims_to_their_pod_and_removes_them_after_it() {
    let base = |n| with_retention(with_claim_template(set(n)), "Delete", "Retain");
    let mut cluster = Cluster::default();
    cluster.converge(&base(2));
    assert!(
        cluster
            .claims
            .iter()
            .all(|c| c.metadata.owner_references.is_none())
    );

    let pod_uid = cluster.pod_mut("web-1").uid().unwrap();
    let actions = cluster.step(&base(1));
    let Action::SetClaimOwners {
        name,
        owner_references,
    } = &actions[0]
    else {
        panic!("owners first: {actions:?}")
    };
    assert_eq!(name, "data-web-1");
    assert_eq!(owner_references.len(), 1);
    assert_eq!(
        (
            owner_references[0].kind.as_str(),
            owner_references[0].uid.as_str()
        ),
        ("Pod", pod_uid.as_str())
    );
    assert_eq!(deleted_pods(&actions), ["web-1"]);

    cluster.finish_deletions();
    let actions = cluster.step(&base(1));
    assert!(matches!(&actions[..], [Action::DeleteClaim { name, .. }] if name == "data-web-1"));
    assert_eq!(cluster.claim_names(), ["data-web-0"]);
}

#[test]
fn a_new_pod_waits_for_a_claim_still_owned_by_its_scaled_down_predecessor() {
    let base = |n| with_retention(with_claim_template(set(n)), "Delete", "Retain");
    let mut cluster = Cluster::default();
    cluster.converge(&base(2));
    cluster.step(&base(1));
    cluster.finish_deletions();
    // The collector has not removed web-1's claim yet when the set is scaled up again.
    let actions = statefulset_actions(&base(2), &cluster.pods, &cluster.claims, now());
    assert!(created_pods(&actions).is_empty(), "{actions:?}");
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::DeleteClaim { name, .. } if name == "data-web-1"))
    );

    cluster.claims.retain(|c| c.name_any() != "data-web-1");
    let actions = cluster.step(&base(2));
    assert_eq!(created_pods(&actions), ["web-1"]);
    assert!(matches!(&actions[0], Action::CreateClaim(c) if c.name_any() == "data-web-1"));
}

#[test]
fn when_deleted_delete_makes_the_set_own_every_claim() {
    let set = with_retention(with_claim_template(set(1)), "Retain", "Delete");
    let actions = Cluster::default().step(&set);
    let Action::CreateClaim(claim) = &actions[0] else {
        panic!("{actions:?}")
    };
    let owners = claim.metadata.owner_references.as_ref().unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].uid.as_str()),
        ("StatefulSet", SET_UID)
    );
    assert_eq!(owners[0].controller, Some(true));
}

#[test]
fn claim_owners_are_corrected_when_the_policy_changes() {
    let mut cluster = Cluster::default();
    cluster.converge(&with_claim_template(set(1)));
    let set = with_retention(with_claim_template(set(1)), "Retain", "Delete");
    let actions = cluster.step(&set);
    assert!(matches!(&actions[..],
        [Action::SetClaimOwners { name, owner_references }]
            if name == "data-web-0" && owner_references[0].uid == SET_UID));
    assert_eq!(cluster.step(&set), []);
}

#[test]
fn claims_controlled_by_someone_else_keep_their_owner() {
    let set = with_retention(with_claim_template(set(1)), "Retain", "Delete");
    let mut cluster = Cluster::default();
    cluster.converge(&with_claim_template(set.clone()));
    let foreign = OwnerReference {
        api_version: "example.dev/v1".into(),
        kind: "Keeper".into(),
        name: "k".into(),
        uid: "keeper-uid".into(),
        controller: Some(true),
        block_owner_deletion: None,
    };
    cluster.claims[0].metadata.owner_references = Some(vec![foreign]);
    assert_eq!(cluster.step(&set), []);
}

#[test]
fn a_deleted_pod_is_recreated() {
    let mut cluster = Cluster::default();
    cluster.converge(&set(3));
    cluster.pods.retain(|p| p.name_any() != "web-1");
    assert_eq!(created_pods(&cluster.step(&set(3))), ["web-1"]);
}

#[test]
fn a_failed_or_succeeded_pod_is_deleted_then_recreated() {
    for phase in ["Failed", "Succeeded"] {
        let mut cluster = Cluster::default();
        cluster.converge(&set(2));
        cluster.pod_mut("web-0").status.as_mut().unwrap().phase = Some(phase.into());
        assert_eq!(deleted_pods(&cluster.step(&set(2))), ["web-0"], "{phase}");
        assert_eq!(
            cluster.step(&set(2)),
            [],
            "waits until the {phase} pod is gone"
        );
        cluster.finish_deletions();
        assert_eq!(created_pods(&cluster.step(&set(2))), ["web-0"]);
    }
}

#[test]
fn pods_it_does_not_own_are_left_alone() {
    let mut cluster = Cluster::default();
    cluster.converge(&set(1));
    let mut orphan = new_pod(&set(1), 5, "r");
    orphan.metadata.owner_references = None;
    orphan.metadata.uid = Some("orphan".into());
    let mut foreign = new_pod(&set(1), 1, "r");
    foreign.metadata.owner_references.as_mut().unwrap()[0].uid = "other-set".into();
    foreign.metadata.uid = Some("foreign".into());
    cluster.pods.extend([orphan, foreign]);

    let actions = cluster.step(&set(1));
    assert_eq!(actions, []);
    let status = statefulset_status(&set(1), &cluster.pods, now());
    assert_eq!(status.replicas, 1);
}

#[test]
fn pods_with_names_that_are_not_ordinals_are_ignored() {
    let mut cluster = Cluster::default();
    cluster.converge(&set(1));
    for name in ["web-01", "web-x", "web--1", "webby-1"] {
        let mut odd = new_pod(&set(1), 0, "r");
        odd.metadata.name = Some(name.into());
        odd.metadata.uid = Some(name.into());
        cluster.pods.push(odd);
    }
    assert_eq!(cluster.step(&set(1)), []);
}

#[test]
fn ordinals_start_shifts_the_pod_names() {
    let mut set = parallel(set(2));
    set.spec.as_mut().unwrap().ordinals = Some(StatefulSetOrdinals { start: Some(5) });
    assert_eq!(
        created_pods(&Cluster::default().step(&set)),
        ["web-5", "web-6"]
    );
}

#[test]
fn a_set_being_deleted_is_left_alone() {
    let mut set = set(2);
    set.metadata.deletion_timestamp = Some(Time(now()));
    assert_eq!(Cluster::default().step(&set), []);
}

#[test]
fn rolling_update_replaces_pods_from_the_highest_ordinal_one_at_a_time() {
    let mut cluster = Cluster::default();
    cluster.converge(&set(3));
    let updated = with_image(set(3), "busybox:2");
    assert_ne!(revision_name(&updated), revision_name(&set(3)));

    assert_eq!(deleted_pods(&cluster.step(&updated)), ["web-2"]);
    assert_eq!(cluster.step(&updated), [], "web-2 is terminating");
    cluster.finish_deletions();
    let actions = cluster.step(&updated);
    assert_eq!(created_pods(&actions), ["web-2"]);
    let Action::CreatePod(pod) = &actions[0] else {
        unreachable!()
    };
    assert_eq!(pod_revision(pod), Some(revision_name(&updated).as_str()));
    assert_eq!(cluster.step(&updated), [], "new web-2 is not ready yet");
    cluster.make_ready("web-2");
    assert_eq!(deleted_pods(&cluster.step(&updated)), ["web-1"]);

    cluster.converge(&updated);
    let revision = revision_name(&updated);
    assert!(
        cluster
            .pods
            .iter()
            .all(|p| pod_revision(p) == Some(revision.as_str()))
    );
}

#[test]
fn rolling_update_respects_the_partition() {
    let mut cluster = Cluster::default();
    cluster.converge(&set(3));
    let mut updated = with_image(set(3), "busybox:2");
    updated.spec.as_mut().unwrap().update_strategy = Some(StatefulSetUpdateStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateStatefulSetStrategy {
            partition: Some(2),
            max_unavailable: None,
        }),
    });
    cluster.converge(&updated);
    let revision = revision_name(&updated);
    let updated_pods: Vec<String> = cluster
        .pods
        .iter()
        .filter(|p| pod_revision(p) == Some(revision.as_str()))
        .map(|p| p.name_any())
        .collect();
    assert_eq!(updated_pods, ["web-2"]);
}

#[test]
fn on_delete_strategy_never_replaces_running_pods() {
    let mut cluster = Cluster::default();
    cluster.converge(&set(2));
    let mut updated = with_image(set(2), "busybox:2");
    updated.spec.as_mut().unwrap().update_strategy = Some(StatefulSetUpdateStrategy {
        type_: Some("OnDelete".into()),
        rolling_update: None,
    });
    assert_eq!(cluster.step(&updated), []);
}

#[test]
fn revision_name_is_stable_and_follows_the_template() {
    let a = revision_name(&set(1));
    assert_eq!(
        a,
        revision_name(&set(5)),
        "replicas are not part of the revision"
    );
    assert_ne!(a, revision_name(&with_image(set(1), "other")));
    let hash = a.strip_prefix("web-").unwrap();
    assert!(!hash.is_empty());
    assert!(
        hash.chars()
            .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
        "{hash}"
    );
}

#[test]
fn status_counts_pods_by_readiness_and_revision() {
    let mut cluster = Cluster::default();
    let mut set = set(3);
    cluster.step(&set);
    cluster.make_ready("web-0");
    cluster.step(&set);

    let status = statefulset_status(&set, &cluster.pods, now());
    let revision = revision_name(&set);
    assert_eq!(status.replicas, 2);
    assert_eq!(status.ready_replicas, Some(1));
    assert_eq!(status.available_replicas, Some(1));
    assert_eq!(status.current_replicas, Some(2));
    assert_eq!(status.updated_replicas, Some(2));
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(status.current_revision.as_deref(), Some(revision.as_str()));
    assert_eq!(status.update_revision.as_deref(), Some(revision.as_str()));

    cluster.converge(&set);
    set.status = Some(statefulset_status(&set, &cluster.pods, now()));
    let old = revision;

    let mut updated = with_image(set.clone(), "busybox:2");
    updated.metadata.generation = Some(4);
    cluster.step(&updated);
    cluster.finish_deletions();
    cluster.step(&updated);
    cluster.make_all_ready();
    let status = statefulset_status(&updated, &cluster.pods, now());
    assert_eq!(status.current_revision.as_deref(), Some(old.as_str()));
    assert_eq!(status.update_revision, Some(revision_name(&updated)));
    assert_eq!(
        (status.current_replicas, status.updated_replicas),
        (Some(2), Some(1))
    );
    assert_eq!(status.observed_generation, Some(4));

    updated.status = Some(status);
    cluster.converge(&updated);
    let status = statefulset_status(&updated, &cluster.pods, now());
    assert_eq!(status.current_revision, Some(revision_name(&updated)));
    assert_eq!(
        (status.current_replicas, status.updated_replicas),
        (Some(3), Some(3))
    );
}

#[test]
fn status_reports_zero_explicitly_so_a_merge_patch_clears_old_counts() {
    let status = statefulset_status::<Pod>(&set(0), &[], now());
    assert_eq!(status.replicas, 0);
    assert_eq!(status.ready_replicas, Some(0));
    assert_eq!(status.available_replicas, Some(0));
    assert_eq!(status.current_replicas, Some(0));
    assert_eq!(status.updated_replicas, Some(0));
}

#[test]
fn available_replicas_honour_min_ready_seconds() {
    let mut set = set(1);
    set.spec.as_mut().unwrap().min_ready_seconds = Some(30);
    let mut cluster = Cluster::default();
    cluster.step(&set);
    cluster.make_ready("web-0");
    let status = statefulset_status(&set, &cluster.pods, Timestamp::from_second(10).unwrap());
    assert_eq!(
        (status.ready_replicas, status.available_replicas),
        (Some(1), Some(0))
    );
    let status = statefulset_status(&set, &cluster.pods, now());
    assert_eq!(status.available_replicas, Some(1));
}

#[test]
fn status_is_rewritten_only_when_a_field_the_controller_owns_changes() {
    let mut cluster = Cluster::default();
    cluster.converge(&set(2));
    let status = statefulset_status(&set(2), &cluster.pods, now());
    assert!(status_differs(None, &status));
    assert!(!status_differs(Some(&status), &status));

    let trimmed = StatefulSetStatus {
        replicas: 0,
        ready_replicas: None,
        available_replicas: None,
        current_replicas: None,
        updated_replicas: None,
        collision_count: None,
        ..statefulset_status::<Pod>(&set(0), &[], now())
    };
    assert!(!status_differs(
        Some(&trimmed),
        &statefulset_status::<Pod>(&set(0), &[], now())
    ));

    let mut scaled = status.clone();
    scaled.ready_replicas = Some(1);
    assert!(status_differs(Some(&status), &scaled));
}
