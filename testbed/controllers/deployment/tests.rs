use super::*;
use k8s_openapi::api::apps::v1::{
    DeploymentSpec, DeploymentStrategy, ReplicaSetSpec, ReplicaSetStatus, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use proptest::prelude::*;

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

fn template(image: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(&[("app", "web")])),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "main".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

fn deployment(replicas: i32, image: &str) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            uid: Some("d-uid".into()),
            generation: Some(1),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels(&[("app", "web")])),
                match_expressions: None,
            },
            template: template(image),
            ..Default::default()
        }),
        status: None,
    }
}

fn strategy(d: &mut Deployment, surge: IntOrString, unavailable: IntOrString) {
    d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(surge),
            max_unavailable: Some(unavailable),
        }),
    });
}

fn recreate(d: &mut Deployment) {
    d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
        type_: Some("Recreate".into()),
        rolling_update: None,
    });
}

/// A tiny cluster: the API objects the controller reads, and what its writes do to them.
struct Cluster {
    deployment: Deployment,
    sets: Vec<ReplicaSet>,
    clock: i64,
}

impl Cluster {
    fn new(deployment: Deployment) -> Self {
        Self {
            deployment,
            sets: Vec::new(),
            clock: NOW,
        }
    }

    /// One controller pass; its writes applied as the API server would.
    fn sync(&mut self) -> Vec<DeploymentAction> {
        self.clock += 1;
        let actions = deployment_actions(&self.deployment, &self.sets, &[], at(self.clock));
        for action in &actions {
            match action.clone() {
                DeploymentAction::SetReplicaSetOwners {
                    name,
                    owner_references,
                    ..
                } => {
                    let set = self.set_mut(&name);
                    set.metadata.owner_references = Some(owner_references);
                }
                DeploymentAction::CreateReplicaSet(set) => {
                    let mut set = *set;
                    set.metadata.uid = Some(format!("{}-uid", set.name_any()));
                    set.metadata.creation_timestamp = Some(Time(at(self.clock)));
                    set.metadata.generation = Some(1);
                    self.sets.push(set);
                }
                DeploymentAction::UpdateReplicaSet { replica_set, .. } => {
                    let set = self.set_mut(&replica_set.name_any());
                    set.metadata.annotations = replica_set.metadata.annotations;
                    set.spec = replica_set.spec;
                }
                DeploymentAction::DeleteReplicaSet { name, .. } => {
                    self.sets.retain(|s| s.name_any() != name);
                }
                DeploymentAction::UpdateStatus(status) => self.deployment.status = Some(*status),
                DeploymentAction::SetRevision(revision) => {
                    self.deployment
                        .metadata
                        .annotations
                        .get_or_insert_default()
                        .insert(REVISION_ANNOTATION.into(), revision);
                }
            }
        }
        actions
    }

    /// The ReplicaSet controller and kubelets: pods that existed at the last step are available
    /// now, surplus pods go at once (unavailable ones first).
    fn run_pods(&mut self) {
        for set in &mut self.sets {
            let spec = spec_replicas(set);
            let status = set.status.get_or_insert_default();
            let available = status.available_replicas.unwrap_or(0);
            let ready_now = available.max(status.replicas).min(spec);
            status.replicas = spec;
            status.ready_replicas = Some(ready_now);
            status.available_replicas = Some(ready_now);
            status.observed_generation = set.metadata.generation;
        }
    }

    fn set_mut(&mut self, name: &str) -> &mut ReplicaSet {
        self.sets.iter_mut().find(|s| s.name_any() == name).unwrap()
    }

    fn set_named(&self, prefix_image: &str) -> Option<&ReplicaSet> {
        self.sets.iter().find(|s| {
            s.spec
                .as_ref()
                .unwrap()
                .template
                .as_ref()
                .unwrap()
                .spec
                .as_ref()
                .unwrap()
                .containers[0]
                .image
                .as_deref()
                == Some(prefix_image)
        })
    }

    fn total_pods(&self) -> i32 {
        self.sets.iter().map(spec_replicas).sum()
    }

    /// Available pods once the ReplicaSets have removed their surplus.
    fn available_pods(&self) -> i32 {
        self.sets
            .iter()
            .map(|s| available(s).min(spec_replicas(s)))
            .sum()
    }

    fn change_template(&mut self, image: &str) {
        let spec = self.deployment.spec.as_mut().unwrap();
        spec.template = template(image);
        let generation = self.deployment.metadata.generation.unwrap_or(1);
        self.deployment.metadata.generation = Some(generation + 1);
    }

    fn complete(&self) -> bool {
        let status = self.deployment.status.clone().unwrap_or_default();
        deployment_complete(&self.deployment, &status)
            && self.sets.iter().filter(|s| spec_replicas(s) > 0).count() == 1
    }

    /// Runs passes until the rollout completes; checks `invariant` after every pass.
    fn roll_out(&mut self, mut invariant: impl FnMut(&Cluster)) -> usize {
        for step in 0..200 {
            self.sync();
            invariant(self);
            self.run_pods();
            if self.complete() {
                return step;
            }
        }
        panic!("the rollout did not finish: {:#?}", self.sets);
    }
}

fn condition_reason(d: &Deployment, type_: &str) -> Option<String> {
    condition(d.status.as_ref()?, type_)?.reason.clone()
}

#[test]
fn a_new_deployment_gets_a_replica_set_named_by_its_template_hash() {
    let d = deployment(3, "busybox:1");
    let actions = deployment_actions(&d, &[], &[], at(NOW));
    let DeploymentAction::CreateReplicaSet(set) = &actions[0] else {
        panic!("first the ReplicaSet: {actions:?}");
    };
    let hash = template_hash(&template("busybox:1"), None);
    assert_eq!(set.name_any(), format!("web-{hash}"));
    let spec = set.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(
        spec.selector.match_labels,
        Some(labels(&[("app", "web"), (POD_TEMPLATE_HASH_LABEL, &hash)]))
    );
    let template_labels = spec
        .template
        .as_ref()
        .unwrap()
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone();
    assert_eq!(
        template_labels,
        Some(labels(&[("app", "web"), (POD_TEMPLATE_HASH_LABEL, &hash)]))
    );
    assert_eq!(set.metadata.labels, template_labels);
    let annotations = set.metadata.annotations.clone().unwrap();
    assert_eq!(
        annotations.get(REVISION_ANNOTATION).map(String::as_str),
        Some("1")
    );
    assert_eq!(
        annotations
            .get(DESIRED_REPLICAS_ANNOTATION)
            .map(String::as_str),
        Some("3")
    );
    assert_eq!(
        annotations.get(MAX_REPLICAS_ANNOTATION).map(String::as_str),
        Some("4")
    );
    let owner = &set.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Deployment", "d-uid")
    );
    assert_eq!(owner.controller, Some(true));
    assert!(matches!(actions.last(), Some(DeploymentAction::SetRevision(r)) if r == "1"));
}

#[test]
fn a_deployment_becomes_available_complete_and_observed() {
    let mut cluster = Cluster::new(deployment(3, "busybox:1"));
    cluster.roll_out(|_| {});
    cluster.sync();
    let status = cluster.deployment.status.clone().unwrap();
    assert_eq!(status.replicas, Some(3));
    assert_eq!(status.updated_replicas, Some(3));
    assert_eq!(status.ready_replicas, Some(3));
    assert_eq!(status.available_replicas, Some(3));
    assert_eq!(status.unavailable_replicas, Some(0));
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        condition_reason(&cluster.deployment, AVAILABLE).as_deref(),
        Some("MinimumReplicasAvailable")
    );
    assert_eq!(
        condition_reason(&cluster.deployment, PROGRESSING).as_deref(),
        Some("NewReplicaSetAvailable")
    );
    let revision = cluster
        .deployment
        .metadata
        .annotations
        .as_ref()
        .unwrap()
        .get(REVISION_ANNOTATION);
    assert_eq!(revision.map(String::as_str), Some("1"));
    assert!(
        cluster.sync().is_empty(),
        "a settled Deployment writes nothing"
    );
}

#[test]
fn a_template_change_surges_one_pod_then_swaps_old_for_new() {
    let mut cluster = Cluster::new(deployment(3, "busybox:1"));
    cluster.roll_out(|_| {});
    cluster.change_template("busybox:2");
    // Default strategy on 3 replicas: maxSurge 25% → 1 (up), maxUnavailable 25% → 0 (down).
    cluster.sync();
    let new = cluster.set_named("busybox:2").unwrap();
    assert_eq!(spec_replicas(new), 1);
    assert_eq!(spec_replicas(cluster.set_named("busybox:1").unwrap()), 3);
    cluster.run_pods();
    cluster.sync();
    assert_eq!(
        spec_replicas(cluster.set_named("busybox:1").unwrap()),
        3,
        "new pod not yet available"
    );
    cluster.run_pods();
    cluster.sync();
    assert_eq!(
        spec_replicas(cluster.set_named("busybox:1").unwrap()),
        2,
        "one old pod goes"
    );
    cluster.roll_out(|c| {
        assert!(c.total_pods() <= 4, "{:#?}", c.sets);
        assert!(c.available_pods() >= 3, "{:#?}", c.sets);
    });
    let annotations = cluster.deployment.metadata.annotations.clone().unwrap();
    assert_eq!(
        annotations.get(REVISION_ANNOTATION).map(String::as_str),
        Some("2")
    );
    assert_eq!(spec_replicas(cluster.set_named("busybox:1").unwrap()), 0);
}

/// 0–3, or 0%–100%.
fn int_or_percent() -> impl Strategy<Value = IntOrString> {
    prop_oneof![
        (0..4i32).prop_map(IntOrString::Int),
        (0..101i32).prop_map(|p| IntOrString::String(format!("{p}%"))),
    ]
}

proptest! {
    #[test]
    fn rolling_updates_stay_within_max_surge_and_max_unavailable(
        replicas in 1..8i32,
        surge in int_or_percent(),
        unavailable in int_or_percent(),
    ) {
        let mut d = deployment(replicas, "busybox:1");
        strategy(&mut d, surge, unavailable);
        let max_total = replicas + max_surge(&d);
        let min_available = replicas - max_unavailable(&d);
        let mut cluster = Cluster::new(d);
        cluster.roll_out(|_| {});
        cluster.change_template("busybox:2");
        cluster.roll_out(|c| {
            let (total, available) = (c.total_pods(), c.available_pods());
            assert!(total <= max_total, "{total} > {max_total}: {:#?}", c.sets);
            assert!(available >= min_available, "{available} < {min_available}");
        });
        prop_assert_eq!(spec_replicas(cluster.set_named("busybox:2").unwrap()), replicas);
    }
}

#[test]
fn fenceposts_round_surge_up_and_unavailable_down_never_both_zero() {
    let mut d = deployment(10, "busybox:1");
    strategy(
        &mut d,
        IntOrString::String("25%".into()),
        IntOrString::String("25%".into()),
    );
    assert_eq!((max_surge(&d), max_unavailable(&d)), (3, 2));
    strategy(&mut d, IntOrString::Int(0), IntOrString::Int(0));
    assert_eq!((max_surge(&d), max_unavailable(&d)), (0, 1));
    strategy(
        &mut d,
        IntOrString::String("1%".into()),
        IntOrString::String("1%".into()),
    );
    assert_eq!((max_surge(&d), max_unavailable(&d)), (1, 0));
    strategy(&mut d, IntOrString::Int(0), IntOrString::Int(20));
    assert_eq!(max_unavailable(&d), 10, "never more than the replicas");
    recreate(&mut d);
    assert_eq!((max_surge(&d), max_unavailable(&d)), (0, 0));
    let defaults = deployment(4, "busybox:1");
    assert_eq!((max_surge(&defaults), max_unavailable(&defaults)), (1, 1));
}

#[test]
fn recreate_removes_every_old_pod_before_creating_the_new_set() {
    let mut d = deployment(2, "busybox:1");
    recreate(&mut d);
    let mut cluster = Cluster::new(d);
    cluster.roll_out(|_| {});
    cluster.change_template("busybox:2");
    cluster.sync();
    assert_eq!(spec_replicas(cluster.set_named("busybox:1").unwrap()), 0);
    assert!(
        cluster.set_named("busybox:2").is_none(),
        "not while old pods run"
    );
    // The old set still reports its pods until they are gone.
    cluster.sync();
    assert!(cluster.set_named("busybox:2").is_none());
    cluster.run_pods();
    cluster.sync();
    assert_eq!(
        spec_replicas(cluster.set_named("busybox:2").unwrap()),
        2,
        "created at full size"
    );
}

#[test]
fn recreate_waits_for_old_pods_that_are_still_terminating() {
    let mut d = deployment(1, "busybox:2");
    recreate(&mut d);
    let mut old = ReplicaSet {
        metadata: ObjectMeta {
            name: Some("web-old".into()),
            namespace: Some("default".into()),
            uid: Some("old-uid".into()),
            labels: Some(labels(&[("app", "web")])),
            owner_references: controller_ref("apps/v1", "Deployment", &d.metadata).map(|r| vec![r]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(0),
            selector: LabelSelector::default(),
            template: Some(template("busybox:1")),
            min_ready_seconds: None,
        }),
        status: Some(ReplicaSetStatus::default()),
    };
    old.spec.as_mut().unwrap().selector.match_labels = Some(labels(&[("app", "web")]));
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some("web-old-x".into()),
            namespace: Some("default".into()),
            labels: Some(labels(&[("app", "web")])),
            owner_references: controller_ref("apps/v1", "ReplicaSet", &old.metadata)
                .map(|r| vec![r]),
            deletion_timestamp: Some(Time(at(NOW))),
            ..Default::default()
        },
        ..Default::default()
    };
    let actions = deployment_actions(&d, &[old.clone()], &[pod], at(NOW));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, DeploymentAction::CreateReplicaSet(_)))
    );
    let actions = deployment_actions(&d, &[old], &[], at(NOW));
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, DeploymentAction::CreateReplicaSet(_)))
    );
}

#[test]
fn scaling_mid_rollout_spreads_new_replicas_in_proportion() {
    let mut cluster = Cluster::new(deployment(3, "busybox:1"));
    cluster.roll_out(|_| {});
    cluster.change_template("busybox:2");
    cluster.sync();
    cluster.run_pods();
    // Old 3, new 1 (maxSurge 1). Scale to 6: maxSurge 2, allowed 8, 4 more to hand out.
    let spec = cluster.deployment.spec.as_mut().unwrap();
    spec.replicas = Some(6);
    cluster.deployment.metadata.generation = Some(3);
    cluster.sync();
    let old = spec_replicas(cluster.set_named("busybox:1").unwrap());
    let new = spec_replicas(cluster.set_named("busybox:2").unwrap());
    // max-replicas was 4: old 3·8/4 = 6, new 1·8/4 = 2.
    assert_eq!((old, new), (6, 2));
}

#[test]
fn a_paused_deployment_scales_but_does_not_roll() {
    let mut cluster = Cluster::new(deployment(2, "busybox:1"));
    cluster.roll_out(|_| {});
    cluster.deployment.spec.as_mut().unwrap().paused = Some(true);
    cluster.sync();
    assert_eq!(
        condition_reason(&cluster.deployment, PROGRESSING).as_deref(),
        Some("DeploymentPaused")
    );
    cluster.change_template("busybox:2");
    cluster.deployment.spec.as_mut().unwrap().replicas = Some(4);
    cluster.sync();
    assert!(cluster.set_named("busybox:2").is_none());
    assert_eq!(spec_replicas(cluster.set_named("busybox:1").unwrap()), 4);

    cluster.deployment.spec.as_mut().unwrap().paused = Some(false);
    cluster.sync();
    assert_eq!(
        condition_reason(&cluster.deployment, PROGRESSING).as_deref(),
        Some("DeploymentResumed")
    );
    cluster.roll_out(|_| {});
    assert_eq!(spec_replicas(cluster.set_named("busybox:2").unwrap()), 4);
}

#[test]
fn rolling_back_reuses_the_old_replica_set_under_a_new_revision() {
    let mut cluster = Cluster::new(deployment(1, "busybox:1"));
    cluster.roll_out(|_| {});
    cluster.change_template("busybox:2");
    cluster.roll_out(|_| {});
    cluster.change_template("busybox:1");
    cluster.roll_out(|_| {});
    assert_eq!(cluster.sets.len(), 2);
    let reused = cluster.set_named("busybox:1").unwrap();
    let annotations = reused.metadata.annotations.clone().unwrap();
    assert_eq!(
        annotations.get(REVISION_ANNOTATION).map(String::as_str),
        Some("3")
    );
    assert_eq!(
        annotations
            .get(REVISION_HISTORY_ANNOTATION)
            .map(String::as_str),
        Some("1")
    );
    let revision = cluster
        .deployment
        .metadata
        .annotations
        .as_ref()
        .unwrap()
        .get(REVISION_ANNOTATION);
    assert_eq!(revision.map(String::as_str), Some("3"));
}

#[test]
fn old_revisions_beyond_the_history_limit_are_deleted_oldest_first() {
    let mut d = deployment(1, "busybox:1");
    d.spec.as_mut().unwrap().revision_history_limit = Some(1);
    let mut cluster = Cluster::new(d);
    for image in ["busybox:1", "busybox:2", "busybox:3", "busybox:4"] {
        cluster.change_template(image);
        cluster.roll_out(|_| {});
        cluster.sync();
    }
    let mut images: Vec<String> = cluster
        .sets
        .iter()
        .map(|s| {
            s.spec
                .as_ref()
                .unwrap()
                .template
                .as_ref()
                .unwrap()
                .spec
                .as_ref()
                .unwrap()
                .containers[0]
                .image
                .clone()
                .unwrap()
        })
        .collect();
    images.sort();
    assert_eq!(images, ["busybox:3", "busybox:4"]);
}

#[test]
fn no_progress_within_the_deadline_is_reported() {
    let mut d = deployment(1, "busybox:1");
    d.spec.as_mut().unwrap().progress_deadline_seconds = Some(60);
    let mut cluster = Cluster::new(d);
    cluster.sync();
    assert_eq!(
        condition_reason(&cluster.deployment, PROGRESSING).as_deref(),
        Some("NewReplicaSetCreated")
    );
    // The pod never becomes available.
    cluster.clock += 120;
    cluster.sync();
    assert_eq!(
        condition_reason(&cluster.deployment, PROGRESSING).as_deref(),
        Some("ProgressDeadlineExceeded")
    );
    let progressing = condition(cluster.deployment.status.as_ref().unwrap(), PROGRESSING).unwrap();
    assert_eq!(progressing.status, "False");
    assert_eq!(
        condition_reason(&cluster.deployment, AVAILABLE).as_deref(),
        Some("MinimumReplicasUnavailable")
    );
}

#[test]
fn a_name_taken_by_a_foreign_replica_set_bumps_the_collision_count() {
    let d = deployment(1, "busybox:1");
    let hash = template_hash(&template("busybox:1"), None);
    let squatter = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("web-{hash}")),
            namespace: Some("default".into()),
            uid: Some("other".into()),
            labels: Some(labels(&[("app", "other")])),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec::default()),
        status: None,
    };
    let actions = deployment_actions(&d, &[squatter], &[], at(NOW));
    let [DeploymentAction::UpdateStatus(status)] = actions.as_slice() else {
        panic!("only a status update: {actions:?}");
    };
    assert_eq!(status.collision_count, Some(1));
    let mut bumped = d.clone();
    bumped.status = Some(*status.clone());
    let actions = deployment_actions(&bumped, &[], &[], at(NOW));
    let DeploymentAction::CreateReplicaSet(set) = &actions[0] else {
        panic!("{actions:?}");
    };
    assert_eq!(
        set.name_any(),
        format!("web-{}", template_hash(&template("busybox:1"), Some(1)))
    );
}

#[test]
fn orphan_replica_sets_matching_the_selector_are_adopted() {
    let d = deployment(1, "busybox:1");
    let hash = template_hash(&template("busybox:1"), None);
    let mut with_hash = template("busybox:1");
    with_hash
        .metadata
        .as_mut()
        .unwrap()
        .labels
        .as_mut()
        .unwrap()
        .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.clone());
    let orphan = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("web-{hash}")),
            namespace: Some("default".into()),
            uid: Some("orphan-uid".into()),
            resource_version: Some("9".into()),
            labels: Some(labels(&[("app", "web")])),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(1),
            template: Some(with_hash),
            ..Default::default()
        }),
        status: None,
    };
    let actions = deployment_actions(&d, &[orphan], &[], at(NOW));
    let DeploymentAction::SetReplicaSetOwners {
        name,
        resource_version,
        owner_references,
    } = &actions[0]
    else {
        panic!("first the adoption: {actions:?}");
    };
    assert_eq!(name, &format!("web-{hash}"));
    assert_eq!(resource_version, "9");
    assert_eq!(owner_references[0].uid, "d-uid");
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, DeploymentAction::CreateReplicaSet(_))),
        "adopted, not recreated"
    );
}

#[test]
fn a_deployment_selecting_everything_only_observes_its_generation() {
    let mut d = deployment(1, "busybox:1");
    d.spec.as_mut().unwrap().selector = LabelSelector::default();
    let actions = deployment_actions(&d, &[], &[], at(NOW));
    let [DeploymentAction::UpdateStatus(status)] = actions.as_slice() else {
        panic!("only a status update: {actions:?}");
    };
    assert_eq!(status.observed_generation, Some(1));
}

#[test]
fn revision_history_drops_the_oldest_entries_past_the_cap() {
    assert_eq!(append_revision_history("", "3").as_deref(), Some("3"));
    assert_eq!(
        append_revision_history("1,3", "5").as_deref(),
        Some("1,3,5")
    );
    let long = vec!["1234567890"; 200].join(",");
    let appended = append_revision_history(&long, "7").unwrap();
    assert!(appended.len() <= REVISION_HISTORY_MAX_CHARS);
    assert!(appended.ends_with(",7"));
}

#[test]
fn a_template_sent_back_with_go_empty_fields_finds_its_replica_set() {
    let mut cluster = Cluster::new(deployment(1, "busybox:1"));
    cluster.roll_out(|_| {});
    // `kubectl rollout undo` writes the template as Go marshals it.
    let spec = cluster.deployment.spec.as_mut().unwrap();
    spec.template.spec.as_mut().unwrap().containers[0].resources = Some(Default::default());
    spec.template.metadata.as_mut().unwrap().annotations = Some(Default::default());
    cluster.deployment.metadata.generation = Some(2);
    cluster.sync();
    assert_eq!(
        cluster.sets.len(),
        1,
        "no new ReplicaSet: {:#?}",
        cluster.sets
    );
}
