//! The StatefulSet controller, as kube-controller-manager runs it: stable pod identities
//! `<set>-<ordinal>`, claims from `volumeClaimTemplates` created before their pod, ordered or
//! parallel pod management, rolling updates by revision, claim retention, and status.
//!
//! Not modelled: ControllerRevision objects (the revision is computed, never stored, so a pod is
//! always recreated from the current template), adoption and release of pods by selector,
//! `maxUnavailable` (an alpha field), and status conditions.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use tracing::{debug, info, warn};

use super::is_benign;

/// The pod label naming the revision of the set's template the pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// The pod label carrying the pod's own name, for per-pod Services.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The pod label carrying the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// One write the StatefulSet controller wants done, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    CreateClaim(Box<PersistentVolumeClaim>),
    CreatePod(Box<Pod>),
    /// Deletes the pod only if it is still the one with this uid.
    DeletePod {
        name: String,
        uid: String,
    },
    /// Replaces the claim's owner references (retention policy).
    SetClaimOwners {
        name: String,
        owner_references: Vec<OwnerReference>,
    },
    /// Stands in for the garbage collector: the claim's only owners are pods that are gone.
    DeleteClaim {
        name: String,
        uid: String,
    },
}

impl Action {
    /// A short human description for logs.
    fn describe(&self) -> String {
        match self {
            Action::CreateClaim(claim) => format!("create claim {}", claim.name_any()),
            Action::CreatePod(pod) => format!("create pod {}", pod.name_any()),
            Action::DeletePod { name, .. } => format!("delete pod {name}"),
            Action::SetClaimOwners { name, .. } => format!("set owners of claim {name}"),
            Action::DeleteClaim { name, .. } => format!("delete claim {name}"),
        }
    }
}

/// The name of the claim for `template` of pod `<set>-<ordinal>`.
pub fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

/// The name of the set's current template revision, `<set>-<hash>`, computed the way the
/// controller hashes a ControllerRevision: 32-bit FNV-1 over the stored patch and the collision
/// count, spelled with the apimachinery "safe" alphabet.
pub fn revision_name(set: &StatefulSet) -> String {
    let template = set
        .spec
        .as_ref()
        .and_then(|spec| serde_json::to_value(&spec.template).ok())
        .map(|mut template| {
            if let Some(object) = template.as_object_mut() {
                object.insert("$patch".into(), "replace".into());
            }
            template
        })
        .unwrap_or_default();
    let data = serde_json::json!({ "spec": { "template": template } }).to_string();
    let collisions = set
        .status
        .as_ref()
        .and_then(|s| s.collision_count)
        .unwrap_or(0);
    let mut hash = fnv1_32(0x811c_9dc5, data.as_bytes());
    hash = fnv1_32(hash, collisions.to_string().as_bytes());
    format!("{}-{}", set.name_any(), safe_encode(&hash.to_string()))
}

fn fnv1_32(mut hash: u32, bytes: &[u8]) -> u32 {
    for byte in bytes {
        hash = hash.wrapping_mul(0x0100_0193);
        hash ^= u32::from(*byte);
    }
    hash
}

/// apimachinery's `rand.SafeEncodeString`: no vowels, no confusable characters.
fn safe_encode(text: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    text.bytes()
        .map(|b| char::from(ALPHANUMS[usize::from(b) % ALPHANUMS.len()]))
        .collect()
}

/// The pod `<set>-<ordinal>` from the set's template at `revision`.
pub fn new_pod(set: &StatefulSet, ordinal: i32, revision: &str) -> Pod {
    let set_name = set.name_any();
    let name = format!("{set_name}-{ordinal}");
    let spec = set.spec.clone().unwrap_or_default();
    let template_meta = spec.template.metadata.unwrap_or_default();
    let mut labels = template_meta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_LABEL.into(), revision.into());

    let mut pod_spec = spec.template.spec.unwrap_or_default();
    pod_spec.hostname = Some(name.clone());
    pod_spec.subdomain = spec.service_name.filter(|s| !s.is_empty());
    // Claim volumes replace template volumes of the same name, as `updateStorage` does.
    let templates = spec.volume_claim_templates.unwrap_or_default();
    let mut volumes: Vec<Volume> = templates
        .iter()
        .map(|template| {
            let template_name = template.name_any();
            Volume {
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name(&template_name, &set_name, ordinal),
                    read_only: None,
                }),
                name: template_name,
                ..Default::default()
            }
        })
        .collect();
    for volume in pod_spec.volumes.take().unwrap_or_default() {
        if !volumes.iter().any(|v| v.name == volume.name) {
            volumes.push(volume);
        }
    }
    pod_spec.volumes = (!volumes.is_empty()).then_some(volumes);

    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: template_meta.annotations,
            finalizers: template_meta.finalizers,
            owner_references: set_controller_ref(set).map(|r| vec![r]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

/// The claim for `template` of pod `<set>-<ordinal>`, owned as the retention policy says for a
/// pod that is in range.
pub fn new_claim(
    set: &StatefulSet,
    template: &PersistentVolumeClaim,
    ordinal: i32,
) -> PersistentVolumeClaim {
    let mut labels = template.metadata.labels.clone().unwrap_or_default();
    if let Some(selector) = set
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
    {
        labels.extend(selector.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let (_, when_deleted) = retention_policy(set);
    let owner_references = (when_deleted == Retention::Delete)
        .then(|| set_controller_ref(set))
        .flatten()
        .map(|r| vec![r]);
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(claim_name(&template.name_any(), &set.name_any(), ordinal)),
            namespace: set.metadata.namespace.clone(),
            labels: (!labels.is_empty()).then_some(labels),
            annotations: template.metadata.annotations.clone(),
            owner_references,
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// What the controller would write next for `set`, given the pods it owns (others are ignored)
/// and the claims in its namespace. Mirrors `updateStatefulSet`: claim ownership first, then
/// create or replace pods in range, then remove condemned pods, then roll out a new revision.
pub fn statefulset_actions<P: Borrow<Pod>>(
    set: &StatefulSet,
    pods: &[P],
    claims: &[PersistentVolumeClaim],
    now: Timestamp,
) -> Vec<Action> {
    let Some(spec) = set.spec.as_ref() else {
        return Vec::new();
    };
    let (Some(set_name), Some(set_uid)) = (set.metadata.name.as_deref(), set.uid()) else {
        return Vec::new();
    };
    if set.metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    let replica_count = spec.replicas.unwrap_or(1).max(0);
    let start = spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let in_range = |ordinal: i32| ordinal >= start && ordinal - start < replica_count;
    let monotonic = spec.pod_management_policy.as_deref() != Some("Parallel");
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let revision = revision_name(set);
    let templates = spec.volume_claim_templates.as_deref().unwrap_or_default();
    let (when_scaled, when_deleted) = retention_policy(set);

    let mut replicas: BTreeMap<i32, &Pod> = BTreeMap::new();
    let mut condemned: BTreeMap<i32, &Pod> = BTreeMap::new();
    let pods = pods.iter().map(|p| -> &Pod { p.borrow() });
    for pod in pods.filter(|p| is_controlled_by(p, &set_uid)) {
        let Some(ordinal) = ordinal_of(set_name, &pod.name_any()) else {
            continue;
        };
        if in_range(ordinal) {
            replicas.insert(ordinal, pod);
        } else {
            condemned.insert(ordinal, pod);
        }
    }
    let claims_by_name: HashMap<String, &PersistentVolumeClaim> = claims
        .iter()
        .filter(|c| c.metadata.namespace == set.metadata.namespace)
        .map(|c| (c.name_any(), c))
        .collect();
    let claim_names = |ordinal: i32| {
        templates
            .iter()
            .map(move |t| claim_name(&t.name_any(), set_name, ordinal))
    };

    let mut actions = Vec::new();

    for (&ordinal, pod) in replicas.iter().chain(condemned.iter()) {
        for name in claim_names(ordinal) {
            let Some(claim) = claims_by_name.get(&name) else {
                continue;
            };
            if claim.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let desired = desired_claim_owners(
                set,
                claim,
                pod,
                !in_range(ordinal),
                when_scaled,
                when_deleted,
            );
            if desired != claim.owner_references() {
                actions.push(Action::SetClaimOwners {
                    name,
                    owner_references: desired,
                });
            }
        }
    }

    let live_pod_uids: Vec<String> = replicas
        .values()
        .chain(condemned.values())
        .filter_map(|p| p.uid())
        .collect();
    let our_claim = |claim: &PersistentVolumeClaim| {
        let name = claim.name_any();
        templates.iter().any(|t| {
            name.strip_prefix(&format!("{}-{set_name}-", t.name_any()))
                .is_some_and(is_canonical_ordinal)
        })
    };
    for claim in claims_by_name.values() {
        let owners = claim.owner_references();
        let orphaned = !owners.is_empty()
            && owners.iter().all(|o| {
                o.kind == "Pod" && o.api_version == "v1" && !live_pod_uids.contains(&o.uid)
            });
        if orphaned
            && claim.metadata.deletion_timestamp.is_none()
            && our_claim(claim)
            && let Some(uid) = claim.uid()
        {
            actions.push(Action::DeleteClaim {
                name: claim.name_any(),
                uid,
            });
        }
    }

    let first_unhealthy = replicas
        .iter()
        .chain(condemned.iter())
        .find(|(_, pod)| !is_healthy(pod))
        .map(|(&ordinal, _)| ordinal);

    for ordinal in start..start.saturating_add(replica_count) {
        let Some(pod) = replicas.get(&ordinal) else {
            // A claim still owned by an earlier pod of this ordinal is about to be collected;
            // a pod created now would bind to it and lose it (`PodClaimIsStale`).
            let stale = claim_names(ordinal).any(|name| {
                claims_by_name.get(&name).is_some_and(|c| {
                    c.metadata.deletion_timestamp.is_some()
                        || c.owner_references().iter().any(|o| o.kind == "Pod")
                })
            });
            if !stale {
                actions.extend(missing_claims(set, templates, ordinal, &claims_by_name));
                actions.push(Action::CreatePod(Box::new(new_pod(
                    set, ordinal, &revision,
                ))));
            }
            if monotonic {
                return actions;
            }
            continue;
        };
        if is_terminal(pod) {
            // Replaced once the failed pod is gone, on a later pass.
            if !is_terminating(pod)
                && let Some(uid) = pod.uid()
            {
                actions.push(Action::DeletePod {
                    name: pod.name_any(),
                    uid,
                });
            }
            if monotonic {
                return actions;
            }
            continue;
        }
        if phase(pod) == Some("Pending") && !is_terminating(pod) {
            actions.extend(missing_claims(set, templates, ordinal, &claims_by_name));
        }
        if monotonic
            && (is_terminating(pod)
                || !is_running_and_ready(pod)
                || !is_available(pod, min_ready, now))
        {
            return actions;
        }
    }

    for (&ordinal, pod) in condemned.iter().rev() {
        if is_terminating(pod) {
            if monotonic {
                return actions;
            }
            continue;
        }
        if monotonic && !is_running_and_ready(pod) && first_unhealthy != Some(ordinal) {
            return actions;
        }
        if let Some(uid) = pod.uid() {
            actions.push(Action::DeletePod {
                name: pod.name_any(),
                uid,
            });
        }
        if monotonic {
            return actions;
        }
    }

    let strategy = spec.update_strategy.as_ref();
    if strategy.and_then(|s| s.type_.as_deref()) == Some("OnDelete") {
        return actions;
    }
    let partition = strategy
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .max(0);
    for index in (partition..replica_count).rev() {
        let Some(pod) = replicas.get(&(start + index)) else {
            return actions;
        };
        if pod_revision(pod) != Some(revision.as_str()) && !is_terminating(pod) {
            if let Some(uid) = pod.uid() {
                actions.push(Action::DeletePod {
                    name: pod.name_any(),
                    uid,
                });
            }
            return actions;
        }
        if !is_healthy(pod) {
            return actions;
        }
    }
    actions
}

/// The set's status as the controller reports it from the pods it owns.
pub fn statefulset_status<P: Borrow<Pod>>(
    set: &StatefulSet,
    pods: &[P],
    now: Timestamp,
) -> StatefulSetStatus {
    let previous = set.status.clone().unwrap_or_default();
    let spec = set.spec.as_ref();
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let update_revision = revision_name(set);
    let mut current_revision = previous
        .current_revision
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or(update_revision.clone());
    let (mut replicas, mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0, 0);
    let set_uid = set.uid().unwrap_or_default();
    let pods = pods.iter().map(|p| -> &Pod { p.borrow() });
    for pod in pods.filter(|p| is_controlled_by(p, &set_uid)) {
        replicas += 1;
        if is_running_and_ready(pod) {
            ready += 1;
            if is_available(pod, min_ready, now) {
                available += 1;
            }
        }
        if !is_terminating(pod) {
            let revision = pod_revision(pod);
            if revision == Some(current_revision.as_str()) {
                current += 1;
            }
            if revision == Some(update_revision.as_str()) {
                updated += 1;
            }
        }
    }
    let desired = spec.and_then(|s| s.replicas).unwrap_or(1);
    let rolling = spec
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate");
    if rolling && updated == desired && ready == desired && replicas == desired {
        current = updated;
        current_revision = update_revision.clone();
    }
    StatefulSetStatus {
        replicas,
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        current_replicas: Some(current),
        updated_replicas: Some(updated),
        observed_generation: set.metadata.generation,
        current_revision: Some(current_revision),
        update_revision: Some(update_revision),
        collision_count: Some(previous.collision_count.unwrap_or(0)),
        conditions: previous.conditions,
    }
}

/// Whether writing `new` would change anything the controller owns; absent counts are zero, so
/// a server that omits zeros does not make the controller rewrite the status forever.
fn status_differs(old: Option<&StatefulSetStatus>, new: &StatefulSetStatus) -> bool {
    let Some(old) = old else { return true };
    let counts = |s: &StatefulSetStatus| {
        [
            s.ready_replicas,
            s.available_replicas,
            s.current_replicas,
            s.updated_replicas,
        ]
        .map(|n| n.unwrap_or(0))
    };
    old.replicas != new.replicas
        || counts(old) != counts(new)
        || old.observed_generation != new.observed_generation
        || old.current_revision != new.current_revision
        || old.update_revision != new.update_revision
}

/// `whenScaled` and `whenDeleted` of `persistentVolumeClaimRetentionPolicy`; unknown means Retain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retention {
    Retain,
    Delete,
}

fn retention_policy(set: &StatefulSet) -> (Retention, Retention) {
    let policy = set
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref());
    let parse = |value: Option<&String>| match value.map(String::as_str) {
        Some("Delete") => Retention::Delete,
        _ => Retention::Retain,
    };
    (
        parse(policy.and_then(|p| p.when_scaled.as_ref())),
        parse(policy.and_then(|p| p.when_deleted.as_ref())),
    )
}

/// The claim's owner references as `updateClaimOwnerRefForSetAndPod` leaves them: references to
/// the set and to the pod scrubbed, then the ones the retention policy asks for added, unless
/// something else controls the claim.
fn desired_claim_owners(
    set: &StatefulSet,
    claim: &PersistentVolumeClaim,
    pod: &Pod,
    condemned: bool,
    when_scaled: Retention,
    when_deleted: Retention,
) -> Vec<OwnerReference> {
    let set_name = set.name_any();
    let pod_name = pod.name_any();
    let set_uid = set.uid();
    let pod_uid = pod.uid();
    let owners = claim.owner_references();
    let unexpected_controller = owners.iter().any(|o| {
        o.controller == Some(true)
            && Some(&o.uid) != set_uid.as_ref()
            && Some(&o.uid) != pod_uid.as_ref()
    });
    let mut refs: Vec<OwnerReference> = owners
        .iter()
        .filter(|o| {
            let is_set =
                o.api_version == "apps/v1" && o.kind == "StatefulSet" && o.name == set_name;
            let is_pod = o.api_version == "v1" && o.kind == "Pod" && o.name == pod_name;
            !is_set && !is_pod
        })
        .cloned()
        .collect();
    if unexpected_controller {
        return refs;
    }
    let wanted = match (when_scaled, when_deleted) {
        (Retention::Delete, _) if condemned => pod_controller_ref(pod),
        (_, Retention::Delete) => set_controller_ref(set),
        _ => None,
    };
    refs.extend(wanted);
    refs
}

fn missing_claims(
    set: &StatefulSet,
    templates: &[PersistentVolumeClaim],
    ordinal: i32,
    existing: &HashMap<String, &PersistentVolumeClaim>,
) -> Vec<Action> {
    templates
        .iter()
        .map(|template| new_claim(set, template, ordinal))
        .filter(|claim| !existing.contains_key(&claim.name_any()))
        .map(|claim| Action::CreateClaim(Box::new(claim)))
        .collect()
}

fn set_controller_ref(set: &StatefulSet) -> Option<OwnerReference> {
    Some(controller_ref(
        "apps/v1",
        "StatefulSet",
        set.metadata.name.clone()?,
        set.uid()?,
    ))
}

fn pod_controller_ref(pod: &Pod) -> Option<OwnerReference> {
    Some(controller_ref(
        "v1",
        "Pod",
        pod.metadata.name.clone()?,
        pod.uid()?,
    ))
}

fn controller_ref(api_version: &str, kind: &str, name: String, uid: String) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name,
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn is_controlled_by(pod: &Pod, uid: &str) -> bool {
    pod.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// The ordinal of `pod_name` if it is `<set>-<ordinal>` spelled canonically.
fn ordinal_of(set_name: &str, pod_name: &str) -> Option<i32> {
    let suffix = pod_name.strip_prefix(set_name)?.strip_prefix('-')?;
    is_canonical_ordinal(suffix)
        .then(|| suffix.parse().ok())
        .flatten()
}

fn is_canonical_ordinal(text: &str) -> bool {
    text.parse::<i32>()
        .is_ok_and(|n| n >= 0 && n.to_string() == text)
}

fn pod_revision(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(REVISION_LABEL)
        .map(String::as_str)
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), Some("Failed" | "Succeeded"))
}

fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn is_running_and_ready(pod: &Pod) -> bool {
    phase(pod) == Some("Running") && ready_since(pod).is_some()
}

fn is_healthy(pod: &Pod) -> bool {
    is_running_and_ready(pod) && !is_terminating(pod)
}

/// `podutil.IsPodAvailable`: ready for at least `min_ready_seconds`.
fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
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

/// `Some(last transition)` when the pod's Ready condition is True.
fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

/// The I/O shell: applies `statefulset_actions` and `statefulset_status` to every set.
#[derive(Clone)]
pub(super) struct StatefulSetController {
    client: Client,
    sets: Store<StatefulSet>,
    pods: Store<Pod>,
    claims: Store<PersistentVolumeClaim>,
}

impl StatefulSetController {
    pub(super) fn new(
        client: Client,
        sets: Store<StatefulSet>,
        pods: Store<Pod>,
        claims: Store<PersistentVolumeClaim>,
    ) -> Self {
        Self {
            client,
            sets,
            pods,
            claims,
        }
    }

    /// One pass over every set; false if any write failed (the loop retries with back-off).
    pub(super) async fn sync_all(&self) -> bool {
        let pods = self.pods.state();
        let claims = self.claims.state();
        let mut healthy = true;
        for set in self.sets.state() {
            let Some(uid) = set.uid() else { continue };
            // Shared, not copied (see `pods_of_namespaces`).
            let owned: Vec<Arc<Pod>> = pods
                .iter()
                .filter(|p| is_controlled_by(p, &uid))
                .cloned()
                .collect();
            let namespace_claims: Vec<PersistentVolumeClaim> = claims
                .iter()
                .filter(|c| c.metadata.namespace == set.metadata.namespace)
                .map(|c| PersistentVolumeClaim::clone(c))
                .collect();
            healthy &= self.sync(&set, &owned, &namespace_claims).await;
        }
        healthy
    }

    async fn sync(
        &self,
        set: &StatefulSet,
        pods: &[Arc<Pod>],
        claims: &[PersistentVolumeClaim],
    ) -> bool {
        let namespace = set.namespace().unwrap_or_default();
        let key = format!("{namespace}/{}", set.name_any());
        let now = Timestamp::now();
        for action in statefulset_actions(set, pods, claims, now) {
            let description = action.describe();
            match self.apply(&namespace, action).await {
                Ok(()) => info!(statefulset = %key, "{description}"),
                Err(error) if is_benign(&error) => {
                    debug!(statefulset = %key, %error, "{description}: already done or changed");
                }
                Err(error) => {
                    // Later actions depend on earlier ones (claims before their pod).
                    warn!(statefulset = %key, %error, "{description} failed; will retry");
                    return false;
                }
            }
        }
        let status = statefulset_status(set, pods, now);
        if !status_differs(set.status.as_ref(), &status) {
            return true;
        }
        let api = Api::<StatefulSet>::namespaced(self.client.clone(), &namespace);
        let patch = Patch::Merge(serde_json::json!({ "status": status }));
        match api
            .patch_status(&set.name_any(), &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => true,
            Err(error) if is_benign(&error) => true,
            Err(error) => {
                warn!(statefulset = %key, %error, "status update failed; will retry");
                false
            }
        }
    }

    async fn apply(&self, namespace: &str, action: Action) -> Result<(), kube::Error> {
        let pods = Api::<Pod>::namespaced(self.client.clone(), namespace);
        let claims = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), namespace);
        let only = |uid: String| DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match action {
            Action::CreateClaim(claim) => claims
                .create(&PostParams::default(), &claim)
                .await
                .map(drop),
            Action::CreatePod(pod) => pods.create(&PostParams::default(), &pod).await.map(drop),
            Action::DeletePod { name, uid } => pods.delete(&name, &only(uid)).await.map(drop),
            Action::SetClaimOwners {
                name,
                owner_references,
            } => {
                let patch =
                    serde_json::json!({ "metadata": { "ownerReferences": owner_references } });
                claims
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map(drop)
            }
            Action::DeleteClaim { name, uid } => claims.delete(&name, &only(uid)).await.map(drop),
        }
    }
}

#[cfg(test)]
mod tests;
