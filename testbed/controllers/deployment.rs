//! The Deployment controller, as kube-controller-manager runs it: one ReplicaSet per pod
//! template, named `<deployment>-<pod-template-hash>`; RollingUpdate within maxSurge and
//! maxUnavailable, or Recreate; proportional scaling of a rollout in flight; revisions in
//! `deployment.kubernetes.io/revision` (rollback to an old template reuses its ReplicaSet under a
//! new revision); `revisionHistoryLimit`; `paused`; `minReadySeconds`; the `Progressing` (with
//! `progressDeadlineSeconds`) and `Available` conditions; and status as `kubectl get deploy` and
//! `kubectl rollout status` read it.
//!
//! Like upstream, one pass works on in-memory copies and emits the writes one sync would make;
//! the shell makes them in order and stops at the first that fails.
//!
//! Not modelled: the deprecated `rollbackTo` annotation, the `ReplicaFailure` condition,
//! `terminatingReplicas` (alpha upstream), and the pod-template-hash relabelling of old pods.

use std::cmp::Ordering;
use std::collections::HashMap;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{debug, info, warn};

use super::is_benign;
use super::ownership::{
    Claim, claim, controller_of, controller_ref, selector_matches, selects_everything,
};
use super::pods::is_terminal;
use super::workload::{canonical_template, publish, scaled_value, template_hash};

/// The label (and ReplicaSet selector term) naming the pod template a ReplicaSet runs.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// The revision of a Deployment and of each of its ReplicaSets.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions a reused ReplicaSet had, comma-separated.
pub const REVISION_HISTORY_ANNOTATION: &str = "deployment.kubernetes.io/revision-history";
/// The Deployment's replicas when it last scaled the ReplicaSet.
pub const DESIRED_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
/// The Deployment's replicas plus maxSurge when it last scaled the ReplicaSet.
pub const MAX_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";

/// Deployment annotations never copied to its ReplicaSets.
const NOT_COPIED: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION_ANNOTATION,
    REVISION_HISTORY_ANNOTATION,
    DESIRED_REPLICAS_ANNOTATION,
    MAX_REPLICAS_ANNOTATION,
    "deprecated.deployment.rollback.to",
];
/// kube-controller-manager's `--deployment-controller-... revision history` length cap.
const REVISION_HISTORY_MAX_CHARS: usize = 2000;
/// The API's defaults for fields a Deployment may leave out.
const DEFAULT_PROGRESS_DEADLINE_SECONDS: i32 = 600;
const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;
const DEFAULT_MAX_SURGE: &str = "25%";
const DEFAULT_MAX_UNAVAILABLE: &str = "25%";

const PROGRESSING: &str = "Progressing";
const AVAILABLE: &str = "Available";
const REPLICA_FAILURE: &str = "ReplicaFailure";

/// One write the Deployment controller wants done, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum DeploymentAction {
    /// Adopts or releases a ReplicaSet, if it is unchanged.
    SetReplicaSetOwners {
        name: String,
        resource_version: String,
        owner_references: Vec<OwnerReference>,
    },
    CreateReplicaSet(Box<ReplicaSet>),
    /// Replaces the ReplicaSet (scale, annotations, minReadySeconds); `scaled_from` is its old
    /// size when the size changed.
    UpdateReplicaSet {
        replica_set: Box<ReplicaSet>,
        scaled_from: Option<i32>,
    },
    /// Removes an old ReplicaSet beyond `revisionHistoryLimit`, if it is still this one.
    DeleteReplicaSet {
        name: String,
        uid: String,
    },
    UpdateStatus(Box<DeploymentStatus>),
    /// Sets the Deployment's revision annotation.
    SetRevision(String),
}

/// What the controller would write next for `deployment`, given the ReplicaSets and pods of its
/// namespace (others' are ignored), at `now`.
pub fn deployment_actions(
    deployment: &Deployment,
    replica_sets: &[ReplicaSet],
    pods: &[Pod],
    now: Timestamp,
) -> Vec<DeploymentAction> {
    let Some(spec) = deployment.spec.as_ref() else {
        return Vec::new();
    };
    if selects_everything(&spec.selector) {
        // `SelectingAll`: nothing is touched, only the generation is acknowledged.
        let mut status = deployment.status.clone().unwrap_or_default();
        if status.observed_generation.unwrap_or(0) < deployment.metadata.generation.unwrap_or(0) {
            status.observed_generation = deployment.metadata.generation;
            return vec![DeploymentAction::UpdateStatus(Box::new(status))];
        }
        return Vec::new();
    }
    let Some(mut sync) = Sync::new(deployment, replica_sets, pods, now) else {
        return Vec::new();
    };
    // Each step ends the pass early (`Err`) after a write that later steps must wait for.
    let _ = sync.run();
    sync.finish()
}

/// A write was made that the rest of the pass must not build on.
struct Stop;

/// One sync of one Deployment over in-memory copies.
struct Sync<'a> {
    deployment: Deployment,
    status: DeploymentStatus,
    original_status: DeploymentStatus,
    /// The ReplicaSets the Deployment controls (after adoption), as this pass leaves them.
    sets: Vec<ReplicaSet>,
    pods: &'a [Pod],
    now: Timestamp,
    actions: Vec<DeploymentAction>,
    revision: Option<String>,
    /// Names of the namespace's ReplicaSets the Deployment does not control.
    foreign_names: Vec<String>,
}

impl<'a> Sync<'a> {
    fn new(
        deployment: &Deployment,
        replica_sets: &[ReplicaSet],
        pods: &'a [Pod],
        now: Timestamp,
    ) -> Option<Self> {
        let spec = deployment.spec.as_ref()?;
        let reference = controller_ref("apps/v1", "Deployment", &deployment.metadata)?;
        let mut sets = Vec::new();
        let mut actions = Vec::new();
        let mut foreign_names = Vec::new();
        for set in replica_sets
            .iter()
            .filter(|s| s.metadata.namespace == deployment.metadata.namespace)
        {
            let write = |owner_references| DeploymentAction::SetReplicaSetOwners {
                name: set.name_any(),
                resource_version: set.resource_version().unwrap_or_default(),
                owner_references,
            };
            match claim(
                &deployment.metadata,
                &reference,
                &spec.selector,
                &set.metadata,
            ) {
                Claim::Owned => sets.push(set.clone()),
                Claim::Adopt(owners) => {
                    actions.push(write(owners.clone()));
                    let mut adopted = set.clone();
                    adopted.metadata.owner_references = Some(owners);
                    sets.push(adopted);
                }
                Claim::Release(owners) => {
                    actions.push(write(owners));
                    foreign_names.push(set.name_any());
                }
                Claim::Ignore => foreign_names.push(set.name_any()),
            }
        }
        let status = deployment.status.clone().unwrap_or_default();
        Some(Self {
            deployment: deployment.clone(),
            original_status: status.clone(),
            status,
            sets,
            pods,
            now,
            actions,
            revision: None,
            foreign_names,
        })
    }

    /// `syncDeployment` after the ReplicaSets are claimed.
    fn run(&mut self) -> Result<(), Stop> {
        if self.deployment.metadata.deletion_timestamp.is_some() {
            let new = self.sync_new_replica_set(false)?;
            self.status = self.calculate_status(new);
            return Ok(());
        }
        if self.check_paused_conditions() {
            return Err(Stop);
        }
        if self.paused() {
            return self.sync_scale();
        }
        if self.is_scaling_event()? {
            return self.sync_scale();
        }
        if self.is_rolling() {
            self.rollout_rolling()
        } else {
            self.rollout_recreate()
        }
    }

    /// The writes of the pass: ReplicaSets first, then the status, then the revision.
    fn finish(mut self) -> Vec<DeploymentAction> {
        if self.status != self.original_status {
            self.actions.push(DeploymentAction::UpdateStatus(Box::new(
                self.status.clone(),
            )));
        }
        let current = self
            .deployment
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION_ANNOTATION));
        if let Some(revision) = self.revision.take()
            && current != Some(&revision)
        {
            self.actions.push(DeploymentAction::SetRevision(revision));
        }
        self.actions
    }

    fn name(&self) -> String {
        self.deployment.name_any()
    }

    fn template(&self) -> PodTemplateSpec {
        self.deployment
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default()
    }

    fn replicas(&self) -> i32 {
        desired_replicas(&self.deployment)
    }

    fn paused(&self) -> bool {
        self.deployment
            .spec
            .as_ref()
            .and_then(|s| s.paused)
            .unwrap_or(false)
    }

    fn is_rolling(&self) -> bool {
        is_rolling(&self.deployment)
    }

    fn max_surge(&self) -> i32 {
        max_surge(&self.deployment)
    }

    fn max_unavailable(&self) -> i32 {
        max_unavailable(&self.deployment)
    }

    fn progress_deadline(&self) -> Option<i32> {
        let seconds = self
            .deployment
            .spec
            .as_ref()
            .and_then(|s| s.progress_deadline_seconds)
            .unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS);
        (seconds != i32::MAX).then_some(seconds)
    }

    /// Indices of the ReplicaSets, oldest first (`ReplicaSetsByCreationTimestamp`).
    fn by_age(&self, indices: impl IntoIterator<Item = usize>) -> Vec<usize> {
        let mut indices: Vec<usize> = indices.into_iter().collect();
        indices.sort_by(|a, b| by_creation(&self.sets[*a], &self.sets[*b]));
        indices
    }

    fn old_indices(&self, new: Option<usize>) -> Vec<usize> {
        (0..self.sets.len()).filter(|i| Some(*i) != new).collect()
    }

    fn active(&self, indices: &[usize]) -> Vec<usize> {
        indices
            .iter()
            .copied()
            .filter(|i| spec_replicas(&self.sets[*i]) > 0)
            .collect()
    }

    /// `getNewReplicaSet`: finds the ReplicaSet running the current template and brings its
    /// revision, annotations and minReadySeconds up to date; creates it if asked and missing.
    fn sync_new_replica_set(&mut self, create: bool) -> Result<Option<usize>, Stop> {
        let template = self.template();
        let existing = self.by_age(0..self.sets.len()).into_iter().find(|i| {
            equal_ignoring_hash(
                self.sets[*i]
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref()),
                &template,
            )
        });
        let max_old_revision = self
            .old_indices(existing)
            .iter()
            .filter_map(|i| revision(&self.sets[*i]))
            .max()
            .unwrap_or(0);
        let new_revision = (max_old_revision + 1).to_string();
        let min_ready = self
            .deployment
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds);

        if let Some(i) = existing {
            let mut set = self.sets[i].clone();
            let annotated = self.set_new_replica_set_annotations(&mut set, &new_revision, true);
            let spec = set.spec.get_or_insert_default();
            let min_ready_changed = spec.min_ready_seconds.unwrap_or(0) != min_ready.unwrap_or(0);
            if annotated || min_ready_changed {
                spec.min_ready_seconds = min_ready;
                self.sets[i] = set.clone();
                self.actions.push(DeploymentAction::UpdateReplicaSet {
                    replica_set: Box::new(set),
                    scaled_from: None,
                });
            }
            self.revision =
                annotation(&self.sets[i].metadata, REVISION_ANNOTATION).map(str::to_string);
            if self.progress_deadline().is_some() && condition(&self.status, PROGRESSING).is_none()
            {
                let message = format!("Found new replica set {:?}", self.sets[i].name_any());
                self.set_condition(PROGRESSING, "True", "FoundNewReplicaSet", message);
            }
            return Ok(Some(i));
        }
        if !create {
            return Ok(None);
        }

        let hash = template_hash(&template, self.status.collision_count);
        let name = format!("{}-{hash}", self.name());
        if self
            .sets
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some(name.as_str()))
            || self.foreign_name_taken(&name)
        {
            // A hash collision: the next pass tries another name.
            self.status.collision_count = Some(self.status.collision_count.unwrap_or(0) + 1);
            return Err(Stop);
        }
        let mut new_template = template;
        new_template
            .metadata
            .get_or_insert_default()
            .labels
            .get_or_insert_default()
            .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.clone());
        let mut selector = self
            .deployment
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        selector
            .match_labels
            .get_or_insert_default()
            .insert(POD_TEMPLATE_HASH_LABEL.into(), hash);
        let owner = controller_ref("apps/v1", "Deployment", &self.deployment.metadata);
        let mut set = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: self.deployment.metadata.namespace.clone(),
                labels: new_template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone()),
                owner_references: owner.map(|o| vec![o]),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: min_ready,
                selector,
                template: Some(new_template),
            }),
            status: None,
        };
        self.sets.push(set.clone());
        let index = self.sets.len() - 1;
        let replicas = self.new_replica_set_replicas(index);
        set.spec.get_or_insert_default().replicas = Some(replicas);
        self.set_new_replica_set_annotations(&mut set, &new_revision, false);
        self.actions
            .push(DeploymentAction::CreateReplicaSet(Box::new(set.clone())));
        set.metadata.creation_timestamp = Some(Time(self.now));
        self.sets[index] = set;
        self.revision = Some(new_revision);
        if self.progress_deadline().is_some() {
            let message = format!("Created new replica set {:?}", self.sets[index].name_any());
            self.set_condition(PROGRESSING, "True", "NewReplicaSetCreated", message);
        }
        Ok(Some(index))
    }

    /// Whether a ReplicaSet the Deployment does not control already has `name`.
    fn foreign_name_taken(&self, name: &str) -> bool {
        self.foreign_names.iter().any(|n| n == name)
    }

    /// `SetNewReplicaSetAnnotations`: copies the Deployment's annotations, raises the revision
    /// (keeping the old one in the revision history), and on creation records the replica counts.
    fn set_new_replica_set_annotations(
        &self,
        set: &mut ReplicaSet,
        new_revision: &str,
        exists: bool,
    ) -> bool {
        let mut changed = false;
        let annotations = set.metadata.annotations.get_or_insert_default();
        for (key, value) in self.deployment.metadata.annotations.iter().flatten() {
            if NOT_COPIED.contains(&key.as_str()) || annotations.get(key) == Some(value) {
                continue;
            }
            annotations.insert(key.clone(), value.clone());
            changed = true;
        }
        let old_revision = annotations.get(REVISION_ANNOTATION).cloned();
        let old_number = match old_revision.as_deref() {
            None | Some("") => 0,
            Some(text) => match text.parse::<i64>() {
                Ok(n) => n,
                Err(_) => return false,
            },
        };
        let Ok(new_number) = new_revision.parse::<i64>() else {
            return false;
        };
        if old_number < new_number {
            annotations.insert(REVISION_ANNOTATION.into(), new_revision.into());
            changed = true;
            if let Some(old) = old_revision.filter(|r| !r.is_empty()) {
                let history = annotations
                    .get(REVISION_HISTORY_ANNOTATION)
                    .cloned()
                    .unwrap_or_default();
                if let Some(updated) = append_revision_history(&history, &old) {
                    annotations.insert(REVISION_HISTORY_ANNOTATION.into(), updated);
                }
            }
        }
        if !exists {
            let replicas = self.replicas();
            changed |= set_replicas_annotations(set, replicas, replicas + self.max_surge());
        }
        changed
    }

    /// `NewRSNewReplicas`: how far the new ReplicaSet may grow now.
    fn new_replica_set_replicas(&self, new: usize) -> i32 {
        let wanted = self.replicas();
        let current = spec_replicas(&self.sets[new]);
        if !self.is_rolling() {
            return wanted;
        }
        let total: i32 = self.sets.iter().map(spec_replicas).sum();
        let max_total = wanted + self.max_surge();
        if total >= max_total {
            return current;
        }
        current + (max_total - total).min(wanted - current)
    }

    /// `scaleReplicaSet`: sets the size and the replica annotations; true if the size changed.
    fn scale_replica_set(&mut self, index: usize, size: i32) -> bool {
        let desired = self.replicas();
        let max = desired + self.max_surge();
        let set = &self.sets[index];
        let old = spec_replicas(set);
        let resize = old != size;
        if !resize && !replicas_annotations_differ(set, desired, max) {
            return false;
        }
        let mut set = set.clone();
        set.spec.get_or_insert_default().replicas = Some(size);
        set_replicas_annotations(&mut set, desired, max);
        self.sets[index] = set.clone();
        self.actions.push(DeploymentAction::UpdateReplicaSet {
            replica_set: Box::new(set),
            scaled_from: resize.then_some(old),
        });
        resize
    }

    /// `scaleReplicaSetAndRecordEvent`: scales only if the size differs.
    fn scale_to(&mut self, index: usize, size: i32) -> bool {
        spec_replicas(&self.sets[index]) != size && self.scale_replica_set(index, size)
    }

    /// `isScalingEvent`: an active ReplicaSet was last scaled for another replica count.
    fn is_scaling_event(&mut self) -> Result<bool, Stop> {
        self.sync_new_replica_set(false)?;
        let all: Vec<usize> = (0..self.sets.len()).collect();
        let wanted = self.replicas();
        Ok(self.active(&all).iter().any(|i| {
            annotation(&self.sets[*i].metadata, DESIRED_REPLICAS_ANNOTATION)
                .and_then(|v| v.parse::<i32>().ok())
                .is_some_and(|desired| desired != wanted)
        }))
    }

    /// `sync`: scaling (and clean-up while paused) without rolling anything out.
    fn sync_scale(&mut self) -> Result<(), Stop> {
        let new = self.sync_new_replica_set(false)?;
        self.scale(new);
        if self.paused() {
            self.clean_up(new);
        }
        self.status = self.calculate_status(new);
        Ok(())
    }

    /// `scale`: a lone active (or newest) ReplicaSet gets the whole count; otherwise a rolling
    /// Deployment spreads the difference over its active sets in proportion to their size.
    fn scale(&mut self, new: Option<usize>) {
        let wanted = self.replicas();
        if let Some(only) = self.active_or_latest(new) {
            if spec_replicas(&self.sets[only]) != wanted {
                self.scale_to(only, wanted);
            }
            return;
        }
        let old = self.old_indices(new);
        if new.is_some_and(|n| self.is_saturated(n)) {
            for i in self.active(&old) {
                self.scale_to(i, 0);
            }
            return;
        }
        if !self.is_rolling() {
            return;
        }
        let mut all = self.active(&old);
        all.extend(new.filter(|n| spec_replicas(&self.sets[*n]) > 0));
        let current: i32 = all.iter().map(|i| spec_replicas(&self.sets[*i])).sum();
        let allowed = if wanted > 0 {
            wanted + self.max_surge()
        } else {
            0
        };
        let to_add = allowed - current;
        let sets = &self.sets;
        match to_add.cmp(&0) {
            // Larger first; equal sizes: newer first when growing, older first when shrinking.
            Ordering::Greater => all.sort_by(|a, b| {
                spec_replicas(&sets[*b])
                    .cmp(&spec_replicas(&sets[*a]))
                    .then_with(|| by_creation(&sets[*b], &sets[*a]))
            }),
            Ordering::Less => all.sort_by(|a, b| {
                spec_replicas(&sets[*b])
                    .cmp(&spec_replicas(&sets[*a]))
                    .then_with(|| by_creation(&sets[*a], &sets[*b]))
            }),
            Ordering::Equal => {}
        }
        let mut added = 0;
        let mut sizes = Vec::new();
        for &i in &all {
            let size = spec_replicas(&self.sets[i]);
            if to_add == 0 {
                sizes.push(size);
                continue;
            }
            let proportion = self.proportion(i, to_add, added);
            sizes.push(size + proportion);
            added += proportion;
        }
        for (position, &i) in all.iter().enumerate() {
            let mut size = sizes[position];
            if position == 0 && to_add != 0 {
                size = (size + to_add - added).max(0);
            }
            self.scale_replica_set(i, size);
        }
    }

    /// `FindActiveOrLatest`: the only active ReplicaSet, or the newest when none is active.
    fn active_or_latest(&self, new: Option<usize>) -> Option<usize> {
        let mut old = self.old_indices(new);
        if new.is_none() && old.is_empty() {
            return None;
        }
        old.sort_by(|a, b| by_creation(&self.sets[*b], &self.sets[*a]));
        let mut all = old.clone();
        all.extend(new);
        let active = self.active(&all);
        match active.as_slice() {
            [] => new.or_else(|| old.first().copied()),
            [only] => Some(*only),
            _ => None,
        }
    }

    /// `IsSaturated`: the new ReplicaSet has every replica, all available.
    fn is_saturated(&self, new: usize) -> bool {
        let set = &self.sets[new];
        let wanted = self.replicas();
        let desired = annotation(&set.metadata, DESIRED_REPLICAS_ANNOTATION)
            .and_then(|v| v.parse::<i32>().ok());
        spec_replicas(set) == wanted && desired == Some(wanted) && available(set) == wanted
    }

    /// `GetReplicaSetProportion`: the set's share of `to_add`, bounded by what is left.
    fn proportion(&self, index: usize, to_add: i32, added: i32) -> i32 {
        let set = &self.sets[index];
        let size = spec_replicas(set);
        if size == 0 || to_add == 0 || to_add == added {
            return 0;
        }
        let fraction = self.fraction(set);
        let allowed = to_add - added;
        if to_add > 0 {
            fraction.min(allowed)
        } else {
            fraction.max(allowed)
        }
    }

    /// `getReplicaSetFraction`: the set's size scaled from the Deployment's old to its new maximum.
    fn fraction(&self, set: &ReplicaSet) -> i32 {
        let wanted = self.replicas();
        let size = spec_replicas(set);
        if wanted == 0 {
            return -size;
        }
        let max_now = wanted + self.max_surge();
        let max_before = annotation(&set.metadata, MAX_REPLICAS_ANNOTATION)
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|m| *m != 0)
            .unwrap_or(self.original_status.replicas.unwrap_or(0));
        if max_before == 0 {
            return 0;
        }
        let scaled = f64::from(size) * f64::from(max_now) / f64::from(max_before);
        // `integer.RoundToInt32`: half away from zero.
        (scaled.round() as i32) - size
    }

    /// `rolloutRolling`: grow the new ReplicaSet within maxSurge, else shrink old ones within
    /// maxUnavailable, else clean up once complete; then the rollout status.
    fn rollout_rolling(&mut self) -> Result<(), Stop> {
        let new = self.sync_new_replica_set(true)?;
        let Some(new) = new else {
            return Ok(());
        };
        if self.reconcile_new_replica_set(new) || self.reconcile_old_replica_sets(new) {
            self.sync_rollout_status(Some(new));
            return Ok(());
        }
        if deployment_complete(&self.deployment, &self.status) {
            self.clean_up(Some(new));
        }
        self.sync_rollout_status(Some(new));
        Ok(())
    }

    fn reconcile_new_replica_set(&mut self, new: usize) -> bool {
        let wanted = self.replicas();
        let size = spec_replicas(&self.sets[new]);
        match size.cmp(&wanted) {
            Ordering::Equal => false,
            Ordering::Greater => self.scale_to(new, wanted),
            Ordering::Less => {
                let size = self.new_replica_set_replicas(new);
                self.scale_to(new, size)
            }
        }
    }

    /// `reconcileOldReplicaSets`: removes unhealthy old replicas first, then old replicas down
    /// to what maxUnavailable allows given the new set's available pods.
    fn reconcile_old_replica_sets(&mut self, new: usize) -> bool {
        let old = self.active(&self.old_indices(Some(new)));
        let old_count: i32 = old.iter().map(|i| spec_replicas(&self.sets[*i])).sum();
        if old_count == 0 {
            return false;
        }
        let all_count: i32 = self.sets.iter().map(spec_replicas).sum();
        let min_available = self.replicas() - self.max_unavailable();
        let new_unavailable = spec_replicas(&self.sets[new]) - available(&self.sets[new]);
        let max_scaled_down = all_count - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return false;
        }
        let cleaned = self.clean_up_unhealthy_replicas(&old, max_scaled_down);
        let old = self.active(&old);
        let scaled = self.scale_down_old_replica_sets(&old, new);
        cleaned + scaled > 0
    }

    fn clean_up_unhealthy_replicas(&mut self, old: &[usize], max_clean_up: i32) -> i32 {
        let mut total = 0;
        for i in self.by_age(old.iter().copied()) {
            if total >= max_clean_up {
                break;
            }
            let size = spec_replicas(&self.sets[i]);
            let healthy = available(&self.sets[i]);
            if size == 0 || size == healthy {
                continue;
            }
            let count = (max_clean_up - total).min(size - healthy);
            if count < 0 {
                // Stale status shows more available than wanted; upstream errors and retries.
                break;
            }
            self.scale_to(i, size - count);
            total += count;
        }
        total
    }

    fn scale_down_old_replica_sets(&mut self, old: &[usize], new: usize) -> i32 {
        let min_available = self.replicas() - self.max_unavailable();
        let available_count: i32 = old
            .iter()
            .chain(std::iter::once(&new))
            .map(|i| available(&self.sets[*i]))
            .sum();
        if available_count <= min_available {
            return 0;
        }
        let wanted_down = available_count - min_available;
        let mut total = 0;
        for i in self.by_age(old.iter().copied()) {
            if total >= wanted_down {
                break;
            }
            let size = spec_replicas(&self.sets[i]);
            if size == 0 {
                continue;
            }
            let count = size.min(wanted_down - total);
            self.scale_to(i, size - count);
            total += count;
        }
        total
    }

    /// `rolloutRecreate`: all old pods gone before the new ReplicaSet is created at full size.
    fn rollout_recreate(&mut self) -> Result<(), Stop> {
        let new = self.sync_new_replica_set(false)?;
        let mut scaled_down = false;
        for i in self.active(&self.old_indices(new)) {
            scaled_down |= self.scale_to(i, 0);
        }
        if scaled_down || self.old_pods_running(new) {
            self.sync_rollout_status(new);
            return Ok(());
        }
        let new = match new {
            Some(i) => i,
            None => match self.sync_new_replica_set(true)? {
                Some(i) => i,
                None => return Ok(()),
            },
        };
        let wanted = self.replicas();
        self.scale_to(new, wanted);
        if deployment_complete(&self.deployment, &self.status) {
            self.clean_up(Some(new));
        }
        self.sync_rollout_status(Some(new));
        Ok(())
    }

    /// `oldPodsRunning`: an old ReplicaSet still reports pods, or a pod of one has not finished.
    fn old_pods_running(&self, new: Option<usize>) -> bool {
        let old = self.old_indices(new);
        if old.iter().map(|i| actual(&self.sets[*i])).sum::<i32>() > 0 {
            return true;
        }
        let old_uids: Vec<String> = old.iter().filter_map(|i| self.sets[*i].uid()).collect();
        let selector = self.deployment.spec.as_ref().map(|s| &s.selector);
        self.pods.iter().any(|pod| {
            selector.is_some_and(|s| selector_matches(s, pod.metadata.labels.as_ref()))
                && controller_of(&pod.metadata).is_some_and(|o| old_uids.contains(&o.uid))
                && !is_terminal(pod)
        })
    }

    /// `cleanupDeployment`: deletes the oldest revisions beyond `revisionHistoryLimit`, never
    /// one that still has pods.
    fn clean_up(&mut self, new: Option<usize>) {
        let limit = self
            .deployment
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(DEFAULT_REVISION_HISTORY_LIMIT);
        if limit == i32::MAX {
            return;
        }
        let mut cleanable: Vec<usize> = self
            .old_indices(new)
            .into_iter()
            .filter(|i| self.sets[*i].metadata.deletion_timestamp.is_none())
            .collect();
        let excess = i32::try_from(cleanable.len()).unwrap_or(i32::MAX) - limit.max(0);
        if excess <= 0 {
            return;
        }
        cleanable.sort_by(|a, b| {
            let (a, b) = (&self.sets[*a], &self.sets[*b]);
            revision(a)
                .unwrap_or(0)
                .cmp(&revision(b).unwrap_or(0))
                .then_with(|| by_creation(a, b))
        });
        for i in cleanable
            .into_iter()
            .take(usize::try_from(excess).unwrap_or(0))
        {
            let set = &self.sets[i];
            let observed = set
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            if actual(set) != 0
                || spec_replicas(set) != 0
                || set.metadata.generation.unwrap_or(0) > observed
            {
                continue;
            }
            if let Some(uid) = set.uid() {
                self.actions.push(DeploymentAction::DeleteReplicaSet {
                    name: set.name_any(),
                    uid,
                });
            }
        }
    }

    /// `checkPausedConditions`: Progressing=Unknown when paused or resumed; true if it changed.
    fn check_paused_conditions(&mut self) -> bool {
        if self.progress_deadline().is_none() {
            return false;
        }
        let reason = condition(&self.status, PROGRESSING).and_then(|c| c.reason.clone());
        if reason.as_deref() == Some("ProgressDeadlineExceeded") {
            return false;
        }
        let paused_recorded = reason.as_deref() == Some("DeploymentPaused");
        if self.paused() && !paused_recorded {
            self.set_condition(
                PROGRESSING,
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
            );
            true
        } else if !self.paused() && paused_recorded {
            self.set_condition(
                PROGRESSING,
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed".into(),
            );
            true
        } else {
            false
        }
    }

    /// `calculateStatus`: counts from the ReplicaSets' statuses and the Available condition.
    fn calculate_status(&self, new: Option<usize>) -> DeploymentStatus {
        let available_count: i32 = self.sets.iter().map(available).sum();
        let total: i32 = self.sets.iter().map(spec_replicas).sum();
        let mut status = DeploymentStatus {
            observed_generation: self.deployment.metadata.generation,
            replicas: Some(self.sets.iter().map(actual).sum()),
            updated_replicas: Some(new.map_or(0, |n| actual(&self.sets[n]))),
            ready_replicas: Some(self.sets.iter().map(ready).sum()),
            available_replicas: Some(available_count),
            unavailable_replicas: Some((total - available_count).max(0)),
            collision_count: self.status.collision_count,
            conditions: self.status.conditions.clone(),
            terminating_replicas: None,
        };
        let now = self.now;
        if available_count >= self.replicas() - self.max_unavailable() {
            set_condition(
                &mut status,
                new_condition(
                    AVAILABLE,
                    "True",
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.".into(),
                    now,
                ),
            );
        } else {
            set_condition(
                &mut status,
                new_condition(
                    AVAILABLE,
                    "False",
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.".into(),
                    now,
                ),
            );
        }
        status
    }

    /// `syncRolloutStatus`: the status plus the Progressing condition for the rollout.
    fn sync_rollout_status(&mut self, new: Option<usize>) {
        let mut status = self.calculate_status(new);
        let deadline = self.progress_deadline();
        if deadline.is_none() {
            remove_condition(&mut status, PROGRESSING);
        }
        let current = condition(&self.status, PROGRESSING).cloned();
        let completed = status.replicas == status.updated_replicas
            && current.as_ref().and_then(|c| c.reason.as_deref()) == Some("NewReplicaSetAvailable");
        if let Some(deadline) = deadline
            && !completed
        {
            let subject = match new {
                Some(n) => format!("ReplicaSet {:?}", self.sets[n].name_any()),
                None => format!("Deployment {:?}", self.name()),
            };
            let now = self.now;
            if deployment_complete(&self.deployment, &status) {
                let message = format!("{subject} has successfully progressed.");
                set_condition(
                    &mut status,
                    new_condition(PROGRESSING, "True", "NewReplicaSetAvailable", message, now),
                );
            } else if deployment_progressing(&self.status, &status) {
                let message = format!("{subject} is progressing.");
                let mut progressing =
                    new_condition(PROGRESSING, "True", "ReplicaSetUpdated", message, now);
                if let Some(current) = current.as_ref() {
                    if current.status == "True" {
                        progressing.last_transition_time = current.last_transition_time.clone();
                    }
                    remove_condition(&mut status, PROGRESSING);
                }
                set_condition(&mut status, progressing);
            } else if timed_out(&status, deadline, now) {
                let message = format!("{subject} has timed out progressing.");
                set_condition(
                    &mut status,
                    new_condition(
                        PROGRESSING,
                        "False",
                        "ProgressDeadlineExceeded",
                        message,
                        now,
                    ),
                );
            }
        }
        remove_condition(&mut status, REPLICA_FAILURE);
        self.status = status;
    }

    fn set_condition(&mut self, type_: &str, status: &str, reason: &str, message: String) {
        let condition = new_condition(type_, status, reason, message, self.now);
        set_condition(&mut self.status, condition);
    }
}

/// `DeploymentComplete`: every replica updated and available, and the spec observed.
fn deployment_complete(deployment: &Deployment, status: &DeploymentStatus) -> bool {
    let wanted = desired_replicas(deployment);
    status.updated_replicas.unwrap_or(0) == wanted
        && status.replicas.unwrap_or(0) == wanted
        && status.available_replicas.unwrap_or(0) == wanted
        && status.observed_generation.unwrap_or(0) >= deployment.metadata.generation.unwrap_or(0)
}

/// `DeploymentProgressing`: more updated, ready or available replicas, or fewer old ones.
fn deployment_progressing(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let n = |v: Option<i32>| v.unwrap_or(0);
    let old_old = n(old.replicas) - n(old.updated_replicas);
    let new_old = n(new.replicas) - n(new.updated_replicas);
    n(new.updated_replicas) > n(old.updated_replicas)
        || new_old < old_old
        || n(new.ready_replicas) > n(old.ready_replicas)
        || n(new.available_replicas) > n(old.available_replicas)
}

/// `DeploymentTimedOut`: no progress recorded for longer than the deadline.
fn timed_out(status: &DeploymentStatus, deadline: i32, now: Timestamp) -> bool {
    let Some(progressing) = condition(status, PROGRESSING) else {
        return false;
    };
    match progressing.reason.as_deref() {
        Some("NewReplicaSetAvailable") => false,
        Some("ProgressDeadlineExceeded") => true,
        _ => progressing.last_update_time.as_ref().is_some_and(|from| {
            from.0.as_second().saturating_add(i64::from(deadline)) < now.as_second()
        }),
    }
}

fn condition<'s>(status: &'s DeploymentStatus, type_: &str) -> Option<&'s DeploymentCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
}

fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// `SetDeploymentCondition`: replaces the condition of that type unless status and reason are
/// unchanged; the transition time stays while the status does.
fn set_condition(status: &mut DeploymentStatus, mut condition: DeploymentCondition) {
    if let Some(current) = self::condition(status, &condition.type_) {
        if current.status == condition.status && current.reason == condition.reason {
            return;
        }
        if current.status == condition.status {
            condition.last_transition_time = current.last_transition_time.clone();
        }
    }
    remove_condition(status, &condition.type_);
    status.conditions.get_or_insert_default().push(condition);
}

fn remove_condition(status: &mut DeploymentStatus, type_: &str) {
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.retain(|c| c.type_ != type_);
    }
}

/// `deploymentutil.EqualIgnoreHash`: the templates are semantically equal apart from the hash
/// label.
fn equal_ignoring_hash(set_template: Option<&PodTemplateSpec>, template: &PodTemplateSpec) -> bool {
    let normalize = |template: &PodTemplateSpec| {
        let mut template = template.clone();
        if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove(POD_TEMPLATE_HASH_LABEL);
        }
        canonical_template(&template)
    };
    set_template.is_some_and(|t| normalize(t) == normalize(template))
}

/// Appends `old` to a comma-separated revision history, dropping the oldest entries to stay
/// within the length cap; None if even then it does not fit.
fn append_revision_history(history: &str, old: &str) -> Option<String> {
    let mut entries: Vec<&str> = history.split(',').filter(|e| !e.is_empty()).collect();
    if entries.is_empty() {
        return Some(old.to_string());
    }
    let mut length = history.len() + old.len() + 1;
    let mut start = 0;
    while length > REVISION_HISTORY_MAX_CHARS && start < entries.len() {
        length -= entries[start].len() + 1;
        start += 1;
    }
    if length > REVISION_HISTORY_MAX_CHARS {
        return None;
    }
    entries.drain(..start);
    entries.push(old);
    Some(entries.join(","))
}

fn set_replicas_annotations(set: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let annotations = set.metadata.annotations.get_or_insert_default();
    let mut changed = false;
    for (key, value) in [
        (DESIRED_REPLICAS_ANNOTATION, desired.to_string()),
        (MAX_REPLICAS_ANNOTATION, max.to_string()),
    ] {
        if annotations.get(key) != Some(&value) {
            annotations.insert(key.into(), value);
            changed = true;
        }
    }
    changed
}

fn replicas_annotations_differ(set: &ReplicaSet, desired: i32, max: i32) -> bool {
    annotation(&set.metadata, DESIRED_REPLICAS_ANNOTATION) != Some(desired.to_string().as_str())
        || annotation(&set.metadata, MAX_REPLICAS_ANNOTATION) != Some(max.to_string().as_str())
}

fn annotation<'m>(meta: &'m ObjectMeta, key: &str) -> Option<&'m str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// The set's revision number; absent counts as 0, unparsable as unknown.
fn revision(set: &ReplicaSet) -> Option<i64> {
    match annotation(&set.metadata, REVISION_ANNOTATION) {
        None => Some(0),
        Some(text) => text.parse().ok(),
    }
}

/// `ReplicaSetsByCreationTimestamp`: older first, then by name.
fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    let created = |s: &ReplicaSet| s.metadata.creation_timestamp.as_ref().map(|t| t.0);
    created(a)
        .cmp(&created(b))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

fn spec_replicas(set: &ReplicaSet) -> i32 {
    set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn actual(set: &ReplicaSet) -> i32 {
    set.status.as_ref().map_or(0, |s| s.replicas)
}

fn ready(set: &ReplicaSet) -> i32 {
    set.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

fn available(set: &ReplicaSet) -> i32 {
    set.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

fn desired_replicas(deployment: &Deployment) -> i32 {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
}

fn is_rolling(deployment: &Deployment) -> bool {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate")
}

/// `ResolveFenceposts`: maxSurge rounded up, maxUnavailable rounded down, never both zero.
fn fenceposts(deployment: &Deployment) -> (i32, i32) {
    let rolling = deployment
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let value = |v: Option<&IntOrString>, default: &str| {
        v.cloned().unwrap_or(IntOrString::String(default.into()))
    };
    let wanted = desired_replicas(deployment);
    let surge = scaled_value(
        &value(
            rolling.and_then(|r| r.max_surge.as_ref()),
            DEFAULT_MAX_SURGE,
        ),
        wanted,
        true,
    )
    .unwrap_or(0);
    let unavailable = scaled_value(
        &value(
            rolling.and_then(|r| r.max_unavailable.as_ref()),
            DEFAULT_MAX_UNAVAILABLE,
        ),
        wanted,
        false,
    )
    .unwrap_or(0);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// `MaxSurge`: how many pods above the desired count a rolling update may run.
pub fn max_surge(deployment: &Deployment) -> i32 {
    if is_rolling(deployment) {
        fenceposts(deployment).0
    } else {
        0
    }
}

/// `MaxUnavailable`: how many desired pods a rolling update may lack, at most all of them.
pub fn max_unavailable(deployment: &Deployment) -> i32 {
    let wanted = desired_replicas(deployment);
    if !is_rolling(deployment) || wanted == 0 {
        return 0;
    }
    fenceposts(deployment).1.min(wanted)
}

/// The I/O shell: applies `deployment_actions` to every Deployment.
#[derive(Clone)]
pub(super) struct DeploymentController {
    client: Client,
    deployments: Store<Deployment>,
    sets: Store<ReplicaSet>,
    pods: Store<Pod>,
    recorder: Recorder,
}

impl DeploymentController {
    pub(super) fn new(
        client: Client,
        deployments: Store<Deployment>,
        sets: Store<ReplicaSet>,
        pods: Store<Pod>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "deployment-controller".into(),
                instance: None,
            },
        );
        Self {
            client,
            deployments,
            sets,
            pods,
            recorder,
        }
    }

    /// One pass over every Deployment; false if any write failed.
    pub(super) async fn sync_all(&self) -> bool {
        let sets: Vec<ReplicaSet> = self
            .sets
            .state()
            .iter()
            .map(|s| ReplicaSet::clone(s))
            .collect();
        let mut sets_by_namespace: HashMap<Option<String>, Vec<ReplicaSet>> = HashMap::new();
        for set in sets {
            sets_by_namespace
                .entry(set.metadata.namespace.clone())
                .or_default()
                .push(set);
        }
        let deployments = self.deployments.state();
        let pods_by_namespace = super::pods_of_namespaces(
            &self.pods.state(),
            deployments.iter().map(|d| &d.metadata.namespace),
        );
        let mut healthy = true;
        for deployment in deployments {
            let namespace = &deployment.metadata.namespace;
            let sets = sets_by_namespace
                .get(namespace)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let pods = pods_by_namespace
                .get(namespace)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let actions = deployment_actions(&deployment, sets, pods, Timestamp::now());
            healthy &= self.apply_all(&deployment, actions).await;
        }
        healthy
    }

    /// Makes the writes in order; stops at the first that fails (the next pass starts afresh).
    async fn apply_all(&self, deployment: &Deployment, actions: Vec<DeploymentAction>) -> bool {
        let namespace = deployment.namespace().unwrap_or_default();
        let key = format!("{namespace}/{}", deployment.name_any());
        // ReplicaSets written earlier in the pass: their new resourceVersion for later writes.
        let mut versions: HashMap<String, String> = HashMap::new();
        for action in actions {
            match self
                .apply(deployment, &namespace, action, &mut versions)
                .await
            {
                Ok(()) => {}
                Err(error) if is_benign(&error) => {
                    debug!(deployment = %key, %error, "write not needed or raced; next pass");
                    return true;
                }
                Err(error) => {
                    warn!(deployment = %key, %error, "write failed; will retry");
                    return false;
                }
            }
        }
        true
    }

    async fn apply(
        &self,
        deployment: &Deployment,
        namespace: &str,
        action: DeploymentAction,
        versions: &mut HashMap<String, String>,
    ) -> Result<(), kube::Error> {
        let sets = Api::<ReplicaSet>::namespaced(self.client.clone(), namespace);
        let deployments = Api::<Deployment>::namespaced(self.client.clone(), namespace);
        let reference = deployment.object_ref(&());
        let key = format!("{namespace}/{}", deployment.name_any());
        match action {
            DeploymentAction::SetReplicaSetOwners {
                name,
                resource_version,
                owner_references,
            } => {
                let patch = serde_json::json!({ "metadata": {
                    "resourceVersion": resource_version,
                    "ownerReferences": owner_references,
                } });
                let written = sets
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
                info!(deployment = %key, replicaset = %name, "wrote owner references");
                versions.extend(written.resource_version().map(|v| (name, v)));
            }
            DeploymentAction::CreateReplicaSet(set) => {
                let created = sets.create(&PostParams::default(), &set).await?;
                let name = created.name_any();
                let size = spec_replicas(&created);
                info!(deployment = %key, replicaset = %name, size, "created replica set");
                if size > 0 {
                    let note = format!("Scaled up replica set {name} from 0 to {size}");
                    publish(
                        &self.recorder,
                        &reference,
                        EventType::Normal,
                        "ScalingReplicaSet",
                        note,
                    );
                }
                versions.extend(created.resource_version().map(|v| (name, v)));
            }
            DeploymentAction::UpdateReplicaSet {
                mut replica_set,
                scaled_from,
            } => {
                let name = replica_set.name_any();
                if let Some(version) = versions.get(&name) {
                    replica_set.metadata.resource_version = Some(version.clone());
                }
                let written = sets
                    .replace(&name, &PostParams::default(), &replica_set)
                    .await?;
                let size = spec_replicas(&written);
                if let Some(from) = scaled_from {
                    let direction = if from < size { "up" } else { "down" };
                    info!(deployment = %key, replicaset = %name, from, size, "scaled {direction}");
                    let note =
                        format!("Scaled {direction} replica set {name} from {from} to {size}");
                    publish(
                        &self.recorder,
                        &reference,
                        EventType::Normal,
                        "ScalingReplicaSet",
                        note,
                    );
                }
                versions.extend(written.resource_version().map(|v| (name, v)));
            }
            DeploymentAction::DeleteReplicaSet { name, uid } => {
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                sets.delete(&name, &params).await?;
                info!(deployment = %key, replicaset = %name, "deleted old replica set");
            }
            DeploymentAction::UpdateStatus(status) => {
                let mut updated = deployment.clone();
                updated.status = Some(*status);
                deployments
                    .replace_status(&deployment.name_any(), &PostParams::default(), &updated)
                    .await?;
            }
            DeploymentAction::SetRevision(revision) => {
                let patch = serde_json::json!({ "metadata": { "annotations": {
                    REVISION_ANNOTATION: revision,
                } } });
                deployments
                    .patch(
                        &deployment.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
