//! The object store: every object as JSON, one global resourceVersion counter, a bounded event
//! history for watches, and the API semantics relaunch and kubectl rely on (optimistic
//! concurrency, status subresources, generation, finalizers, graceful pod deletion, garbage
//! collection by owner references, CRD registration).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::error::ApiError;
use super::patch::{self, PatchKind};
use super::resources::{self, ResourceType};
use super::selectors::{FieldSelector, LabelSelector};
use super::services::{self, ServiceRange};

/// How many events the watch history retains before older versions answer `410 Gone`.
const HISTORY: usize = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the history and sent to watchers.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub key: String,
    pub kind: EventType,
    pub object: Value,
    /// The object before this change, so selector watches can turn moves into ADDED/DELETED.
    pub previous: Option<Value>,
}

/// Changes to replay, and the live stream after them.
pub type ChangeFeed = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>);

/// What a list or watch selects.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selection {
    pub fn matches(&self, object: &Value) -> bool {
        let ns_ok = match &self.namespace {
            Some(ns) => object["metadata"]["namespace"].as_str() == Some(ns.as_str()),
            None => true,
        };
        ns_ok
            && self
                .labels
                .matches(object["metadata"]["labels"].as_object())
            && self.fields.matches(object)
    }

    /// The event a watcher with this selection should see for `change`, if any.
    pub fn translate(&self, change: &Change) -> Option<(EventType, Value)> {
        let now = self.matches(&change.object);
        let before = change.previous.as_ref().map(|p| self.matches(p));
        match (change.kind, now, before) {
            (EventType::Deleted, true, _) => Some((EventType::Deleted, change.object.clone())),
            (EventType::Deleted, false, _) => None,
            (EventType::Added, true, _) => Some((EventType::Added, change.object.clone())),
            (EventType::Modified, true, Some(false)) => {
                Some((EventType::Added, change.object.clone()))
            }
            (EventType::Modified, false, Some(true)) => {
                Some((EventType::Deleted, change.object.clone()))
            }
            (_, true, _) => Some((change.kind, change.object.clone())),
            _ => None,
        }
    }
}

/// What a write is checked against before it is stored (the request's decoding, validation and
/// admission). Called under the store's lock: implementations must not call back into the store.
pub trait Admission {
    /// Decodes the object a client sent (for a patch: the patched object) before the store merges
    /// it with what is stored: pruning and defaulting of custom resources.
    fn decode(&mut self, object: &mut Value) -> Result<(), ApiError>;

    /// Validates and admits a write: `object` as it would be stored (none for a delete), `old`
    /// the stored object (none for a create).
    fn admit(&mut self, object: Option<&Value>, old: Option<&Value>) -> Result<(), ApiError>;
}

/// No checks: the server's own writes, and tests of the store.
pub struct Unchecked;

impl Admission for Unchecked {
    fn decode(&mut self, _: &mut Value) -> Result<(), ApiError> {
        Ok(())
    }

    fn admit(&mut self, _: Option<&Value>, _: Option<&Value>) -> Result<(), ApiError> {
        Ok(())
    }
}

/// API groups whose objects the server derives cached state from (the RBAC authorizer, the
/// admission policies): any change to one of their objects bumps the group's generation.
const TRACKED_GROUPS: [&str; 2] = ["rbac.authorization.k8s.io", "admissionregistration.k8s.io"];

/// Options of a delete request.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
}

pub struct State {
    rv: u64,
    resources: Vec<ResourceType>,
    objects: HashMap<String, BTreeMap<(String, String), Value>>,
    history: VecDeque<Arc<Change>>,
    /// Events at or below this version are no longer retained.
    compacted: u64,
    /// Changes so far to the objects of each of [`TRACKED_GROUPS`].
    group_generations: [u64; TRACKED_GROUPS.len()],
    /// Where Services get their ClusterIPs.
    service_range: ServiceRange,
    /// The API server's CA (PEM), published in every namespace as `kube-root-ca.crt`.
    root_ca: Option<String>,
}

/// The shared store.
pub struct Store {
    state: Mutex<State>,
    changes: broadcast::Sender<Arc<Change>>,
}

impl Store {
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(65_536);
        let store = Self {
            state: Mutex::new(State {
                rv: 1,
                resources: resources::builtin(),
                objects: HashMap::new(),
                history: VecDeque::new(),
                compacted: 0,
                group_generations: [0; TRACKED_GROUPS.len()],
                service_range: ServiceRange::default(),
                root_ca: None,
            }),
            changes,
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let namespace =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            let rt = store
                .resource("", "v1", "namespaces")
                .expect("namespaces are built in");
            store
                .create(&rt, None, namespace)
                .expect("creating a built-in namespace succeeds");
        }
        store
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Allocates ClusterIPs from `range` from now on (kube-apiserver's `--service-cluster-ip-range`).
    pub fn set_service_range(&self, range: ServiceRange) {
        self.lock().service_range = range;
    }

    /// Sets the CA that the root-CA publisher puts in every namespace's `kube-root-ca.crt`
    /// ConfigMap, and publishes it in the namespaces that exist.
    pub fn set_root_ca(&self, pem: &str) {
        let mut state = self.lock();
        state.root_ca = Some(pem.to_string());
        let namespaces: Vec<String> = state
            .objects
            .get("/namespaces")
            .into_iter()
            .flat_map(|o| o.keys())
            .map(|(_, name)| name.clone())
            .collect();
        for ns in namespaces {
            state.publish_root_ca(&ns, &self.changes);
        }
    }

    /// The served resource `plural` in `group/version`.
    pub fn resource(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.lock()
            .resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    /// Every served resource.
    pub fn resources(&self) -> Vec<ResourceType> {
        self.lock().resources.clone()
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// The oldest version a watch can start from: older ones get `410 Gone`.
    pub fn compacted(&self) -> u64 {
        self.lock().compacted
    }

    /// Forgets the history, so any watch from an older version gets `410 Gone`.
    pub fn expire_history(&self) {
        let mut state = self.lock();
        state.history.clear();
        state.compacted = state.rv;
    }

    pub fn get(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let state = self.lock();
        state
            .object(rt, ns, name)
            .map(|o| with_version(o, rt))
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// Lists objects, sorted by namespace and name, from `after` (exclusive) up to `limit`.
    pub fn list(
        &self,
        rt: &ResourceType,
        selection: &Selection,
        limit: Option<usize>,
        after: Option<(String, String)>,
    ) -> (Vec<Value>, u64, Option<(String, String)>) {
        let state = self.lock();
        let mut items = Vec::new();
        let mut next = None;
        if let Some(objects) = state.objects.get(&rt.key()) {
            let range = match &after {
                Some(a) => objects.range((
                    std::ops::Bound::Excluded(a.clone()),
                    std::ops::Bound::Unbounded,
                )),
                None => objects.range::<(String, String), _>(..),
            };
            for (k, object) in range {
                if !selection.matches(object) {
                    continue;
                }
                if limit.is_some_and(|l| items.len() >= l) {
                    next = Some(k.clone());
                    break;
                }
                items.push(with_version(object, rt));
            }
        }
        // The continue token points at the last returned item.
        let next = next.and_then(|_| {
            items.last().map(|o: &Value| {
                (
                    ns_of(o),
                    o["metadata"]["name"].as_str().unwrap_or("").to_string(),
                )
            })
        });
        (items, state.rv, next)
    }

    /// Changes after `since` for a watch, or `410 Gone` if they are no longer retained.
    pub fn changes_since(&self, since: u64) -> Result<ChangeFeed, ApiError> {
        let state = self.lock();
        if since < state.compacted {
            return Err(ApiError::gone(since, state.compacted));
        }
        let backlog = state
            .history
            .iter()
            .filter(|c| c.rv > since)
            .cloned()
            .collect();
        // Subscribing under the lock means no change falls between backlog and live stream.
        Ok((backlog, self.changes.subscribe()))
    }

    /// Current objects as synthetic ADDED changes (a watch without resourceVersion) plus the live stream.
    pub fn snapshot_for_watch(&self, rt: &ResourceType) -> ChangeFeed {
        let state = self.lock();
        let backlog = state
            .objects
            .get(&rt.key())
            .map(|objects| {
                objects
                    .values()
                    .map(|o| {
                        Arc::new(Change {
                            rv: rv_of(o),
                            key: rt.key(),
                            kind: EventType::Added,
                            object: o.clone(),
                            previous: None,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        (backlog, self.changes.subscribe())
    }

    /// Creates an object the server itself writes (no admission).
    pub fn create(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        object: Value,
    ) -> Result<Value, ApiError> {
        self.create_with(rt, ns, object, &mut Unchecked, false)
    }

    /// Creates an object through `admission`; with `dry_run`, answers what would be created
    /// without storing it.
    pub fn create_with(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        object: Value,
        admission: &mut dyn Admission,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let mut object = super::convert::to_storage(rt, object);
        let mut state = self.lock();
        state.check_kind(rt, &object)?;
        admission.decode(&mut object)?;
        let meta = object
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ApiError::invalid(rt, "", "metadata: Required value"))?;
        if let Some(ns) = ns {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(given) if !given.is_empty() && given != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {
                    meta.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            meta.remove("namespace");
        }
        let name = match meta
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            Some(name) => name.to_string(),
            None => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => loop {
                    let candidate = format!("{prefix}{}", random_suffix());
                    if state.object(rt, ns, &candidate).is_none() {
                        break candidate;
                    }
                },
                _ => {
                    return Err(ApiError::invalid(
                        rt,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            },
        };
        validate_name(rt, &name)?;
        if let Some(ns) = ns
            && state.object(&state.namespaces(), None, ns).is_none()
        {
            return Err(ApiError::namespace_not_found(ns));
        }
        if state.object(rt, ns, &name).is_some() {
            return Err(ApiError::already_exists(rt, &name));
        }
        meta.insert("name".into(), json!(name));
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.remove("deletionTimestamp");
        meta.remove("resourceVersion");
        meta.remove("managedFields");
        if object.get("spec").is_some() {
            object["metadata"]["generation"] = json!(1);
        }
        if rt.status {
            match object.as_object_mut() {
                Some(o) => {
                    o.remove("status");
                }
                None => return Err(ApiError::bad_request("object must be a JSON object")),
            }
        }
        defaults_on_create(rt, &mut object);
        if rt.key() == "/pods" {
            state.mount_service_account_token(ns.unwrap_or_default(), &mut object);
        }
        validate(rt, &object)?;
        admission.admit(Some(&object), None)?;
        if dry_run {
            return Ok(with_version(&object, rt));
        }
        if rt.key() == "/services" {
            let in_use = services::cluster_ips_in_use(
                state
                    .objects
                    .get("/services")
                    .into_iter()
                    .flat_map(|o| o.values()),
            );
            services::allocate_cluster_ip(&mut object, &state.service_range, &in_use)
                .map_err(|e| ApiError::invalid(rt, &name, &e))?;
        }
        match rt.key().as_str() {
            "apiextensions.k8s.io/customresourcedefinitions" => state.register_crd(&mut object)?,
            "/namespaces" => {
                object["status"] = json!({"phase": "Active"});
            }
            _ => {}
        }
        let created = state.commit(rt, object, EventType::Added, None, &self.changes);
        if rt.key() == "/namespaces" {
            // The service account controller's job: every namespace has a "default" account.
            let sa_rt = state.resource_by_key("/serviceaccounts");
            if let Some(sa_rt) = sa_rt {
                let ns = created["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
                    "name": "default", "namespace": ns, "uid": uuid::Uuid::new_v4().to_string(),
                    "creationTimestamp": now()}});
                state.commit(&sa_rt, sa, EventType::Added, None, &self.changes);
            }
            let ns = created["metadata"]["name"].as_str().unwrap_or_default();
            state.publish_root_ca(ns, &self.changes);
        }
        if state.owners_all_absent(ns, &created) {
            // The garbage collector deletes a dependent whose owners are all gone: a controller
            // acting on a stale cache may create one just after its owner was deleted.
            state.delete_dependent(rt, created.clone(), &self.changes);
        }
        Ok(with_version(&created, rt))
    }

    /// Replaces an object (PUT). With `status`, only `.status` is taken from `object`.
    #[cfg(test)]
    pub fn update(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        object: Value,
        status: bool,
    ) -> Result<Value, ApiError> {
        self.update_with(rt, ns, name, object, status, &mut Unchecked, false)
    }

    /// [`Store::update`] through `admission`; with `dry_run`, nothing is stored.
    #[allow(clippy::too_many_arguments)]
    pub fn update_with(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        object: Value,
        status: bool,
        admission: &mut dyn Admission,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let mut object = super::convert::to_storage(rt, object);
        let mut state = self.lock();
        state.check_kind(rt, &object)?;
        let current = state
            .object(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        if object["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n != name)
        {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        let given_rv = object["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if !given_rv.is_empty() && given_rv != rv_of(&current).to_string() {
            return Err(ApiError::conflict(rt, name));
        }
        admission.decode(&mut object)?;
        let updated = state.merge_update(rt, &current, object, status)?;
        admission.admit(Some(&updated), Some(&current))?;
        if dry_run {
            return Ok(with_version(&updated, rt));
        }
        self.finish_update(&mut state, rt, current, updated)
    }

    /// Patches an object. With `status`, only `.status` of the patched result is kept.
    /// An apply patch to a missing object creates it.
    pub fn patch(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        body: &[u8],
        status: bool,
    ) -> Result<Value, ApiError> {
        self.patch_with(rt, ns, name, kind, body, status, &mut Unchecked, false)
    }

    /// [`Store::patch`] through `admission`; with `dry_run`, nothing is stored.
    #[allow(clippy::too_many_arguments)]
    pub fn patch_with(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        body: &[u8],
        status: bool,
        admission: &mut dyn Admission,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if kind == PatchKind::Strategic && rt.custom {
            return Err(ApiError::unsupported_media_type(
                "strategic merge patch is not supported for custom resources; use a JSON merge patch",
            ));
        }
        let mut state = self.lock();
        let Some(current) = state.object(rt, ns, name).cloned() else {
            if kind == PatchKind::Apply && !status {
                drop(state);
                let object: Value = serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad_request(&format!("invalid apply body: {e}")))?;
                return self.create_with(rt, ns, object, admission, dry_run);
            }
            return Err(ApiError::not_found(rt, name));
        };
        let served = with_version(&current, rt);
        let patched = patch::apply(&served, body, kind).map_err(|e| ApiError::bad_request(&e))?;
        let mut patched = super::convert::to_storage(rt, patched);
        let given_rv = patched["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("");
        if !given_rv.is_empty() && given_rv != rv_of(&current).to_string() {
            return Err(ApiError::conflict(rt, name));
        }
        state.check_kind(rt, &patched)?;
        admission.decode(&mut patched)?;
        let updated = state.merge_update(rt, &current, patched, status)?;
        admission.admit(Some(&updated), Some(&current))?;
        if dry_run {
            return Ok(with_version(&updated, rt));
        }
        self.finish_update(&mut state, rt, current, updated)
    }

    fn finish_update(
        &self,
        state: &mut State,
        rt: &ResourceType,
        current: Value,
        updated: Value,
    ) -> Result<Value, ApiError> {
        if strip_rv(&updated) == strip_rv(&current) {
            return Ok(with_version(&current, rt));
        }
        let finalized = updated["metadata"]["deletionTimestamp"].is_string()
            && updated["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty())
            && !state.awaits_kubelet(rt, &updated);
        if rt.key() == "apiextensions.k8s.io/customresourcedefinitions" {
            let mut crd = updated.clone();
            state.register_crd(&mut crd)?;
        }
        if finalized {
            let removed = state.remove(rt, &updated, &self.changes);
            state.collect_garbage(&removed, &self.changes);
            return Ok(with_version(&removed, rt));
        }
        let committed = state.commit(
            rt,
            updated,
            EventType::Modified,
            Some(current),
            &self.changes,
        );
        Ok(with_version(&committed, rt))
    }

    #[cfg(test)]
    pub fn delete(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        self.delete_with(rt, ns, name, options, &mut Unchecked, false)
    }

    /// [`Store::delete`] through `admission`; with `dry_run`, nothing is deleted.
    pub fn delete_with(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        options: &DeleteOptions,
        admission: &mut dyn Admission,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let mut state = self.lock();
        let current = state
            .object(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        if let Some(uid) = &options.precondition_uid
            && current["metadata"]["uid"].as_str() != Some(uid.as_str())
        {
            return Err(ApiError::conflict_message(
                rt,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    current["metadata"]["uid"].as_str().unwrap_or("")
                ),
            ));
        }
        if let Some(rv) = &options.precondition_rv
            && *rv != rv_of(&current).to_string()
        {
            return Err(ApiError::conflict(rt, name));
        }
        admission.admit(None, Some(&current))?;
        if dry_run {
            return Ok(with_version(&current, rt));
        }
        let has_finalizers = current["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        let grace = state.pod_grace(rt, &current, options);
        if has_finalizers || grace.is_some() {
            let mut updated = current.clone();
            // A graceful deletion's deletionTimestamp is when the grace period ends (now plus
            // the grace period), as a real API server writes it; a shorter grace given later
            // brings it forward.
            let previous = updated["metadata"]["deletionGracePeriodSeconds"].as_i64();
            if !updated["metadata"]["deletionTimestamp"].is_string()
                || grace.is_some_and(|g| previous.is_some_and(|p| g < p))
            {
                updated["metadata"]["deletionTimestamp"] = json!(now_plus(grace.unwrap_or(0)));
            }
            if let Some(grace) = grace {
                let grace = previous.map_or(grace, |p| p.min(grace));
                updated["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            }
            if updated == current {
                return Ok(with_version(&current, rt));
            }
            let committed = state.commit(
                rt,
                updated,
                EventType::Modified,
                Some(current),
                &self.changes,
            );
            return Ok(with_version(&committed, rt));
        }
        let removed = state.remove(rt, &current, &self.changes);
        state.collect_garbage(&removed, &self.changes);
        Ok(with_version(&removed, rt))
    }

    /// Binds a pod to a node (the `pods/binding` subresource).
    pub fn bind(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        binding: &Value,
    ) -> Result<(), ApiError> {
        let node = binding["target"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::invalid(rt, name, "target.name: Required value"))?;
        let mut state = self.lock();
        let current = state
            .object(rt, Some(ns), name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        if current["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
        {
            return Err(ApiError::conflict_message(
                rt,
                name,
                &format!(
                    "pod {name} is already assigned to node {:?}",
                    current["spec"]["nodeName"].as_str().unwrap_or("")
                ),
            ));
        }
        let mut updated = current.clone();
        updated["spec"]["nodeName"] = json!(node);
        let mut conditions = updated["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        conditions.retain(|c| c["type"] != "PodScheduled");
        conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now()}));
        updated["status"]["conditions"] = json!(conditions);
        state.commit(
            rt,
            updated,
            EventType::Modified,
            Some(current),
            &self.changes,
        );
        Ok(())
    }

    /// The object `ns/name` of the resource with store key `key`, if present.
    pub fn get_by_key(&self, key: &str, ns: Option<&str>, name: &str) -> Option<Value> {
        let state = self.lock();
        state
            .objects
            .get(key)?
            .get(&(ns.unwrap_or("").to_string(), name.to_string()))
            .cloned()
    }

    /// The `uid` and `metadata.generation` of an object, without copying it.
    pub fn identity(&self, key: &str, ns: Option<&str>, name: &str) -> Option<(String, i64)> {
        let state = self.lock();
        let object = state
            .objects
            .get(key)?
            .get(&(ns.unwrap_or("").to_string(), name.to_string()))?;
        Some((
            object["metadata"]["uid"].as_str()?.to_string(),
            object["metadata"]["generation"].as_i64().unwrap_or(0),
        ))
    }

    /// How many changes the objects of API group `group` (one of [`TRACKED_GROUPS`]) have seen.
    pub fn group_generation(&self, group: &str) -> u64 {
        let state = self.lock();
        TRACKED_GROUPS
            .iter()
            .position(|g| *g == group)
            .map_or(0, |i| state.group_generations[i])
    }

    /// Every object of API group `group` as served (with apiVersion and kind), and the group's
    /// generation they are current for.
    pub fn group_objects(&self, group: &str) -> (u64, Vec<Value>) {
        let state = self.lock();
        let generation = TRACKED_GROUPS
            .iter()
            .position(|g| *g == group)
            .map_or(0, |i| state.group_generations[i]);
        let mut objects = Vec::new();
        for rt in state.resources.iter().filter(|r| r.group == group) {
            if let Some(stored) = state.objects.get(&rt.key()) {
                objects.extend(stored.values().map(|o| with_version(o, rt)));
            }
        }
        (generation, objects)
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    fn object(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> Option<&Value> {
        self.objects
            .get(&rt.key())?
            .get(&(ns.unwrap_or("").to_string(), name.to_string()))
    }

    /// The root-CA publisher's job (kube-controller-manager): a `kube-root-ca.crt` ConfigMap
    /// with the cluster's CA as `ca.crt` in namespace `ns`, unless it is already there.
    fn publish_root_ca(&mut self, ns: &str, changes: &broadcast::Sender<Arc<Change>>) {
        let (Some(pem), Some(rt)) = (self.root_ca.clone(), self.resource_by_key("/configmaps"))
        else {
            return;
        };
        if self.object(&rt, Some(ns), ROOT_CA_CONFIGMAP).is_some() {
            return;
        }
        let configmap = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
            "name": ROOT_CA_CONFIGMAP, "namespace": ns, "uid": uuid::Uuid::new_v4().to_string(),
            "creationTimestamp": now(),
            "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
            "data": {"ca.crt": pem}});
        self.commit(&rt, configmap, EventType::Added, None, changes);
    }

    /// The ServiceAccount admission plugin's token volume: unless the pod or its service account
    /// opts out (`automountServiceAccountToken: false`) or a container already mounts something
    /// at the path, a projected `kube-api-access-<suffix>` volume (the bound token, `ca.crt` from
    /// `kube-root-ca.crt`, the namespace) mounted read-only in every container.
    fn mount_service_account_token(&self, ns: &str, pod: &mut Value) {
        let spec = &pod["spec"];
        if spec["automountServiceAccountToken"] == json!(false) {
            return;
        }
        let account = spec["serviceAccountName"].as_str().unwrap_or("default");
        if let Some(rt) = self.resource_by_key("/serviceaccounts")
            && let Some(sa) = self.object(&rt, Some(ns), account)
            && sa["automountServiceAccountToken"] == json!(false)
            && spec["automountServiceAccountToken"] != json!(true)
        {
            return;
        }
        let lists = ["initContainers", "containers", "ephemeralContainers"];
        let mounted = lists.iter().any(|list| {
            spec[*list].as_array().into_iter().flatten().any(|c| {
                c["volumeMounts"].as_array().into_iter().flatten().any(|m| {
                    m["mountPath"].as_str().map(|p| p.trim_end_matches('/'))
                        == Some(SERVICE_ACCOUNT_PATH)
                })
            })
        });
        if mounted {
            return;
        }
        let name = format!("kube-api-access-{}", random_suffix());
        let volume = json!({"name": name, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}});
        let spec = &mut pod["spec"];
        match spec["volumes"].as_array_mut() {
            Some(volumes) => volumes.push(volume),
            None => spec["volumes"] = json!([volume]),
        }
        for list in lists {
            // `get_mut`: indexing would add the missing lists as nulls.
            let containers = spec.get_mut(list).and_then(Value::as_array_mut);
            for container in containers.into_iter().flatten() {
                let mount =
                    json!({"name": name, "mountPath": SERVICE_ACCOUNT_PATH, "readOnly": true});
                match container["volumeMounts"].as_array_mut() {
                    Some(mounts) => mounts.push(mount),
                    None => container["volumeMounts"] = json!([mount]),
                }
            }
        }
    }

    fn namespaces(&self) -> ResourceType {
        self.resource_by_key("/namespaces")
            .expect("namespaces are always served")
    }

    fn resource_by_key(&self, key: &str) -> Option<ResourceType> {
        self.resources.iter().find(|r| r.key() == key).cloned()
    }

    fn check_kind(&self, rt: &ResourceType, object: &Value) -> Result<(), ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        if let Some(kind) = object["kind"].as_str()
            && kind != rt.kind
        {
            return Err(ApiError::bad_request(&format!(
                "the object's kind {kind:?} does not match the resource {:?} (kind {:?})",
                rt.plural, rt.kind
            )));
        }
        Ok(())
    }

    /// The object a PUT or patch produces: identity fields kept, spec or status taken as allowed.
    fn merge_update(
        &self,
        rt: &ResourceType,
        current: &Value,
        mut incoming: Value,
        status: bool,
    ) -> Result<Value, ApiError> {
        let mut updated = if status {
            let mut u = current.clone();
            match incoming.get("status") {
                Some(s) => u["status"] = s.clone(),
                None => {
                    if let Some(o) = u.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            u
        } else {
            if rt.status {
                match current.get("status") {
                    Some(s) => incoming["status"] = s.clone(),
                    None => {
                        if let Some(o) = incoming.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
            }
            incoming
        };
        // Identity and system fields are the server's.
        for field in [
            "uid",
            "creationTimestamp",
            "namespace",
            "name",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match current["metadata"].get(field) {
                Some(v) => updated["metadata"][field] = v.clone(),
                None => {
                    if let Some(m) = updated["metadata"].as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
        if let Some(m) = updated["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        updated["apiVersion"] = current["apiVersion"].clone();
        updated["kind"] = current["kind"].clone();
        let generation = current["metadata"]["generation"].as_i64();
        match generation {
            Some(g) if updated.get("spec") != current.get("spec") => {
                updated["metadata"]["generation"] = json!(g + 1)
            }
            Some(g) => updated["metadata"]["generation"] = json!(g),
            None => {}
        }
        if rt.key() == "/pods" && !status {
            check_pod_spec_update(rt, current, &updated)?;
        }
        if rt.key() == "/services" && !status {
            let name = current["metadata"]["name"].as_str().unwrap_or_default();
            services::keep_cluster_ip(current, &mut updated)
                .map_err(|e| ApiError::invalid(rt, name, &e))?;
            services::default_service(&mut updated);
        }
        validate(rt, &updated)?;
        Ok(updated)
    }

    /// A graceful deletion period for a pod the kubelet simulator still has to stop.
    fn pod_grace(&self, rt: &ResourceType, pod: &Value, options: &DeleteOptions) -> Option<i64> {
        if rt.key() != "/pods" {
            return None;
        }
        let bound = pod["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        let finished = matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        );
        if !bound || finished {
            return None;
        }
        let grace = options
            .grace_period_seconds
            .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30);
        (grace > 0).then_some(grace)
    }

    /// A pod being deleted gracefully stays until the kubelet confirms with a zero-grace delete.
    fn awaits_kubelet(&self, rt: &ResourceType, object: &Value) -> bool {
        rt.key() == "/pods"
            && object["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .is_some_and(|g| g > 0)
    }

    fn commit(
        &mut self,
        rt: &ResourceType,
        mut object: Value,
        kind: EventType,
        previous: Option<Value>,
        changes: &broadcast::Sender<Arc<Change>>,
    ) -> Value {
        self.rv += 1;
        let rv = self.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let ns = ns_of(&object);
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.objects
            .entry(rt.key())
            .or_default()
            .insert((ns.clone(), name), object.clone());
        self.record(rt, kind, object.clone(), previous, changes);
        object
    }

    fn remove(
        &mut self,
        rt: &ResourceType,
        object: &Value,
        changes: &broadcast::Sender<Arc<Change>>,
    ) -> Value {
        self.rv += 1;
        let ns = ns_of(object);
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(objects) = self.objects.get_mut(&rt.key()) {
            objects.remove(&(ns.clone(), name));
        }
        let mut gone = object.clone();
        gone["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(
            rt,
            EventType::Deleted,
            gone.clone(),
            Some(object.clone()),
            changes,
        );
        if rt.key() == "apiextensions.k8s.io/customresourcedefinitions" {
            self.unregister_crd(object, changes);
        }
        if rt.key() == "/namespaces" {
            self.delete_namespace_contents(
                object["metadata"]["name"].as_str().unwrap_or_default(),
                changes,
            );
        }
        gone
    }

    fn record(
        &mut self,
        rt: &ResourceType,
        kind: EventType,
        object: Value,
        previous: Option<Value>,
        changes: &broadcast::Sender<Arc<Change>>,
    ) {
        if let Some(i) = TRACKED_GROUPS.iter().position(|g| *g == rt.group) {
            self.group_generations[i] += 1;
        }
        let change = Arc::new(Change {
            rv: self.rv,
            key: rt.key(),
            kind,
            object,
            previous,
        });
        self.history.push_back(change.clone());
        while self.history.len() > HISTORY {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        let _ = changes.send(change);
    }

    /// Whether `object` has owner references and none of its owners exists (by UID).
    fn owners_all_absent(&self, ns: Option<&str>, object: &Value) -> bool {
        let Some(refs) = object["metadata"]["ownerReferences"]
            .as_array()
            .filter(|r| !r.is_empty())
        else {
            return false;
        };
        refs.iter().all(|reference| {
            let group = reference["apiVersion"]
                .as_str()
                .and_then(|v| v.rsplit_once('/'))
                .map_or("", |(group, _)| group);
            let kind = reference["kind"].as_str().unwrap_or_default();
            let Some(owner_rt) = self
                .resources
                .iter()
                .find(|r| r.group == group && r.kind == kind)
            else {
                // An owner of a kind this server does not serve: not known to be absent.
                return false;
            };
            let owner_ns = if owner_rt.namespaced { ns } else { None };
            let name = reference["name"].as_str().unwrap_or_default();
            self.object(owner_rt, owner_ns, name)
                .is_none_or(|owner| owner["metadata"]["uid"] != reference["uid"])
        })
    }

    /// Background garbage collection: dependents of a removed owner are deleted too.
    fn collect_garbage(&mut self, owner: &Value, changes: &broadcast::Sender<Arc<Change>>) {
        let Some(uid) = owner["metadata"]["uid"].as_str() else {
            return;
        };
        let dependents: Vec<(ResourceType, Value)> = self
            .resources
            .iter()
            .filter(|r| {
                // Versions of one resource share objects; visit each store key once.
                self.resources
                    .iter()
                    .find(|o| o.key() == r.key())
                    .map(|o| o.version.as_str())
                    == Some(r.version.as_str())
            })
            .flat_map(|rt| {
                self.objects
                    .get(&rt.key())
                    .into_iter()
                    .flat_map(|objects| objects.values())
                    .filter(|o| {
                        o["metadata"]["ownerReferences"]
                            .as_array()
                            .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(uid)))
                    })
                    .map(|o| (rt.clone(), o.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (rt, dependent) in dependents {
            self.delete_dependent(&rt, dependent, changes);
        }
    }

    fn delete_dependent(
        &mut self,
        rt: &ResourceType,
        object: Value,
        changes: &broadcast::Sender<Arc<Change>>,
    ) {
        let has_finalizers = object["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        let grace = self.pod_grace(rt, &object, &DeleteOptions::default());
        if has_finalizers || grace.is_some() {
            if object["metadata"]["deletionTimestamp"].is_string() {
                return;
            }
            let mut updated = object.clone();
            updated["metadata"]["deletionTimestamp"] = json!(now());
            if let Some(grace) = grace {
                updated["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            }
            self.commit(rt, updated, EventType::Modified, Some(object), changes);
        } else {
            let removed = self.remove(rt, &object, changes);
            self.collect_garbage(&removed, changes);
        }
    }

    fn delete_namespace_contents(&mut self, ns: &str, changes: &broadcast::Sender<Arc<Change>>) {
        let namespaced: Vec<ResourceType> = self
            .resources
            .iter()
            .filter(|r| r.namespaced)
            .cloned()
            .collect();
        for rt in namespaced {
            let objects: Vec<Value> = self
                .objects
                .get(&rt.key())
                .map(|o| {
                    o.iter()
                        .filter(|((n, _), _)| n == ns)
                        .map(|(_, v)| v.clone())
                        .collect()
                })
                .unwrap_or_default();
            for object in objects {
                self.delete_dependent(&rt, object, changes);
            }
        }
    }

    fn register_crd(&mut self, crd: &mut Value) -> Result<(), ApiError> {
        let crd_rt = self
            .resource_by_key("apiextensions.k8s.io/customresourcedefinitions")
            .expect("CRDs are always served");
        let name = crd["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let served =
            ResourceType::from_crd(crd).map_err(|e| ApiError::invalid(&crd_rt, &name, &e))?;
        let expected = format!("{}.{}", served[0].plural, served[0].group);
        if name != expected {
            return Err(ApiError::invalid(
                &crd_rt,
                &name,
                &format!(
                    "metadata.name: Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group ({expected:?})"
                ),
            ));
        }
        let key = served[0].key();
        self.resources.retain(|r| r.key() != key);
        self.resources.extend(served);
        let names = crd["spec"]["names"].clone();
        crd["status"] = json!({
            "acceptedNames": names,
            "storedVersions": crd["spec"]["versions"].as_array().map(|vs| vs.iter().filter(|v| v["storage"] == true).map(|v| v["name"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now()},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now()}
            ]
        });
        Ok(())
    }

    fn unregister_crd(&mut self, crd: &Value, changes: &broadcast::Sender<Arc<Change>>) {
        let Ok(served) = ResourceType::from_crd(crd) else {
            return;
        };
        let key = served[0].key();
        let objects: Vec<Value> = self
            .objects
            .remove(&key)
            .map(|o| o.into_values().collect())
            .unwrap_or_default();
        for object in objects {
            self.rv += 1;
            self.record(&served[0], EventType::Deleted, object, None, changes);
        }
        self.resources.retain(|r| r.key() != key);
    }
}

/// The ConfigMap the root-CA publisher keeps in every namespace.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// Where the ServiceAccount admission plugin mounts the token volume.
pub const SERVICE_ACCOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn random_suffix() -> String {
    // The alphabet upstream uses for generateName (no vowels, no confusable characters).
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes
        .iter()
        .take(5)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// RFC 3339 with second precision, as Kubernetes writes timestamps.
pub fn now() -> String {
    format_time(jiff::Timestamp::now())
}

/// `time` as a `metav1.Time`: RFC 3339 in UTC, truncated to the second as a real API server does
/// (Go's `Time.Format(time.RFC3339)` drops the fraction; rounding would put times up to half a
/// second in the future, and durations measured against times truncated elsewhere would come
/// out a second short).
pub fn format_time(time: jiff::Timestamp) -> String {
    time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// [`now`] plus `seconds` (saturating at the end of time).
fn now_plus(seconds: i64) -> String {
    let now = jiff::Timestamp::now();
    format_time(
        now.checked_add(jiff::SignedDuration::from_secs(seconds))
            .unwrap_or(jiff::Timestamp::MAX),
    )
}

pub fn rv_of(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn ns_of(object: &Value) -> String {
    object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn strip_rv(object: &Value) -> Value {
    let mut o = object.clone();
    if let Some(m) = o["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    o
}

/// The object as served at `rt`'s version (versions of a CRD share storage, no conversion).
pub fn with_version(object: &Value, rt: &ResourceType) -> Value {
    let mut o = super::convert::from_storage(rt, object.clone());
    o["apiVersion"] = json!(rt.api_version());
    o["kind"] = json!(rt.kind);
    o
}

fn validate_name(rt: &ResourceType, name: &str) -> Result<(), ApiError> {
    let ok = name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    // RBAC objects need only be path segments (`system:discovery`), as upstream.
    let path_segment = rt.group == "rbac.authorization.k8s.io"
        && !matches!(name, "" | "." | "..")
        && !name.contains(['/', '%']);
    if ok || path_segment || (rt.key() == "/events" && !name.is_empty()) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            rt,
            name,
            &format!(
                "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        ))
    }
}

fn defaults_on_create(rt: &ResourceType, object: &mut Value) {
    match rt.key().as_str() {
        "/pods" => {
            let spec = &mut object["spec"];
            for (field, value) in [
                ("restartPolicy", json!("Always")),
                ("terminationGracePeriodSeconds", json!(30)),
                ("dnsPolicy", json!("ClusterFirst")),
                ("schedulerName", json!("default-scheduler")),
                ("serviceAccountName", json!("default")),
            ] {
                if spec.get(field).is_none_or(Value::is_null) {
                    spec[field] = value;
                }
            }
            for list in ["containers", "initContainers"] {
                if let Some(containers) = spec[list].as_array_mut() {
                    for c in containers {
                        for (field, value) in [
                            ("terminationMessagePath", json!("/dev/termination-log")),
                            ("terminationMessagePolicy", json!("File")),
                            ("imagePullPolicy", json!("IfNotPresent")),
                        ] {
                            if c.get(field).is_none() {
                                c[field] = value;
                            }
                        }
                    }
                }
            }
            object["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
        }
        "apps/statefulsets" => {
            let spec = &mut object["spec"];
            for (field, value) in [
                ("replicas", json!(1)),
                ("podManagementPolicy", json!("OrderedReady")),
                ("revisionHistoryLimit", json!(10)),
                (
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
                ),
                (
                    "persistentVolumeClaimRetentionPolicy",
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                ),
            ] {
                if spec.get(field).is_none_or(Value::is_null) {
                    spec[field] = value;
                }
            }
        }
        "apps/deployments" => {
            let spec = &mut object["spec"];
            for (field, value) in [
                ("replicas", json!(1)),
                ("revisionHistoryLimit", json!(10)),
                ("progressDeadlineSeconds", json!(600)),
                ("strategy", json!({"type": "RollingUpdate"})),
            ] {
                if spec.get(field).is_none_or(Value::is_null) {
                    spec[field] = value;
                }
            }
            if spec["strategy"]["type"] == "RollingUpdate" {
                let rolling = &mut spec["strategy"]["rollingUpdate"];
                for field in ["maxUnavailable", "maxSurge"] {
                    if rolling.get(field).is_none_or(Value::is_null) {
                        rolling[field] = json!("25%");
                    }
                }
            }
        }
        "apps/replicasets" if object["spec"].get("replicas").is_none() => {
            object["spec"]["replicas"] = json!(1);
        }
        "apps/daemonsets" => {
            let spec = &mut object["spec"];
            for (field, value) in [
                ("revisionHistoryLimit", json!(10)),
                ("updateStrategy", json!({"type": "RollingUpdate"})),
            ] {
                if spec.get(field).is_none_or(Value::is_null) {
                    spec[field] = value;
                }
            }
            if spec["updateStrategy"]["type"] == "RollingUpdate" {
                let rolling = &mut spec["updateStrategy"]["rollingUpdate"];
                for (field, value) in [("maxUnavailable", 1), ("maxSurge", 0)] {
                    if rolling.get(field).is_none_or(Value::is_null) {
                        rolling[field] = json!(value);
                    }
                }
            }
        }
        "/persistentvolumeclaims" => {
            object["status"] = json!({"phase": "Pending"});
        }
        "/services" => {
            services::default_service(object);
            object["status"] = json!({"loadBalancer": {}});
        }
        _ => {}
    }
}

fn validate(rt: &ResourceType, object: &Value) -> Result<(), ApiError> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    match rt.key().as_str() {
        "/pods" => {
            let containers = object["spec"]["containers"].as_array();
            if containers.is_none_or(|c| c.is_empty()) {
                return Err(ApiError::invalid(
                    rt,
                    name,
                    "spec.containers: Required value",
                ));
            }
            let mut seen = std::collections::HashSet::new();
            for c in containers.into_iter().flatten().chain(
                object["spec"]["initContainers"]
                    .as_array()
                    .into_iter()
                    .flatten(),
            ) {
                let cname = c["name"].as_str().unwrap_or_default();
                if cname.is_empty() {
                    return Err(ApiError::invalid(
                        rt,
                        name,
                        "spec.containers[].name: Required value",
                    ));
                }
                if !seen.insert(cname.to_string()) {
                    return Err(ApiError::invalid(
                        rt,
                        name,
                        &format!("spec.containers[].name: Duplicate value: {cname:?}"),
                    ));
                }
            }
        }
        "/services" => {
            services::validate_service(object).map_err(|e| ApiError::invalid(rt, name, &e))?;
        }
        "apps/statefulsets" | "apps/deployments" | "apps/replicasets" | "apps/daemonsets" => {
            let selector = &object["spec"]["selector"];
            if !selector.is_object() {
                return Err(ApiError::invalid(rt, name, "spec.selector: Required value"));
            }
            let labels = object["spec"]["template"]["metadata"]["labels"].as_object();
            if let Some(match_labels) = selector["matchLabels"].as_object() {
                for (k, v) in match_labels {
                    if labels.and_then(|l| l.get(k)) != Some(v) {
                        return Err(ApiError::invalid(
                            rt,
                            name,
                            "spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`",
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Pod spec fields are immutable after creation except the few upstream allows.
fn check_pod_spec_update(
    rt: &ResourceType,
    current: &Value,
    updated: &Value,
) -> Result<(), ApiError> {
    let mut before = current["spec"].clone();
    let mut after = updated["spec"].clone();
    for spec in [&mut before, &mut after] {
        if let Some(s) = spec.as_object_mut() {
            s.remove("activeDeadlineSeconds");
            s.remove("tolerations");
            s.remove("schedulingGates");
        }
        for list in ["containers", "initContainers"] {
            if let Some(cs) = spec[list].as_array_mut() {
                for c in cs {
                    if let Some(c) = c.as_object_mut() {
                        c.remove("image");
                    }
                }
            }
        }
    }
    if before != after {
        let name = updated["metadata"]["name"].as_str().unwrap_or_default();
        return Err(ApiError::invalid(
            rt,
            name,
            "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(store: &Store) -> ResourceType {
        store.resource("", "v1", "pods").unwrap()
    }

    fn pod(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "db"}},
               "spec": {"containers": [{"name": "c", "image": "x"}]}})
    }

    #[test]
    fn deployments_and_daemon_sets_get_upstream_defaults() {
        let store = Store::new();
        let template = json!({"metadata": {"labels": {"app": "a"}},
                              "spec": {"containers": [{"name": "c", "image": "x"}]}});
        let object = |kind: &str| {
            json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "a"},
                   "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": template}})
        };
        let deployments = store.resource("apps", "v1", "deployments").unwrap();
        let created = store
            .create(&deployments, Some("default"), object("Deployment"))
            .unwrap();
        let spec = &created["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(spec["progressDeadlineSeconds"], 600);
        assert_eq!(
            spec["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );

        let daemon_sets = store.resource("apps", "v1", "daemonsets").unwrap();
        let created = store
            .create(&daemon_sets, Some("default"), object("DaemonSet"))
            .unwrap();
        assert_eq!(
            created["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert_eq!(created["spec"]["revisionHistoryLimit"], 10);

        let mut on_delete = object("DaemonSet");
        on_delete["metadata"]["name"] = json!("b");
        on_delete["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
        let created = store
            .create(&daemon_sets, Some("default"), on_delete)
            .unwrap();
        assert_eq!(
            created["spec"]["updateStrategy"],
            json!({"type": "OnDelete"})
        );
    }

    #[test]
    fn stale_resource_version_conflicts() {
        let store = Store::new();
        let rt = pods(&store);
        let created = store.create(&rt, Some("default"), pod("a")).unwrap();
        let mut first = created.clone();
        first["metadata"]["labels"]["x"] = json!("1");
        store
            .update(&rt, Some("default"), "a", first, false)
            .unwrap();
        let mut stale = created;
        stale["metadata"]["labels"]["x"] = json!("2");
        let err = store
            .update(&rt, Some("default"), "a", stale, false)
            .unwrap_err();
        assert_eq!(err.code, 409);
    }

    #[test]
    fn status_writes_do_not_touch_spec_and_spec_writes_do_not_touch_status() {
        let store = Store::new();
        let rt = pods(&store);
        store.create(&rt, Some("default"), pod("a")).unwrap();
        let patched = store
            .patch(
                &rt,
                Some("default"),
                "a",
                PatchKind::Merge,
                br#"{"spec":{"activeDeadlineSeconds":5},"status":{"phase":"Running"}}"#,
                true,
            )
            .unwrap();
        assert_eq!(patched["status"]["phase"], "Running");
        assert!(patched["spec"].get("activeDeadlineSeconds").is_none());
        let patched = store
            .patch(
                &rt,
                Some("default"),
                "a",
                PatchKind::Merge,
                br#"{"spec":{"activeDeadlineSeconds":5},"status":{"phase":"Failed"}}"#,
                false,
            )
            .unwrap();
        assert_eq!(patched["status"]["phase"], "Running");
        assert_eq!(patched["spec"]["activeDeadlineSeconds"], 5);
    }

    #[test]
    fn times_are_truncated_to_the_second_like_a_real_api_server() {
        let late_in_the_second: jiff::Timestamp = "2026-01-01T00:00:00.9Z".parse().unwrap();
        assert_eq!(format_time(late_in_the_second), "2026-01-01T00:00:00Z");
        let early: jiff::Timestamp = "2026-01-01T00:00:59.1Z".parse().unwrap();
        assert_eq!(format_time(early), "2026-01-01T00:00:59Z");
        assert_eq!(
            format_time(jiff::Timestamp::UNIX_EPOCH),
            "1970-01-01T00:00:00Z"
        );
    }

    /// Every time the store writes lies between the second the write began in and the moment
    /// it ended (never in the future, as a rounded one can be).
    #[test]
    fn the_times_the_store_writes_are_never_ahead_of_the_clock() {
        let store = Store::new();
        let rt = pods(&store);
        let parse = |v: &Value| -> jiff::Timestamp { v.as_str().unwrap().parse().unwrap() };
        let floor = |t: jiff::Timestamp| jiff::Timestamp::from_second(t.as_second()).unwrap();
        for i in 0..20 {
            let before = jiff::Timestamp::now();
            let mut p = pod(&format!("p{i}"));
            p["spec"]["nodeName"] = json!("node-1");
            let created = store.create(&rt, Some("default"), p).unwrap();
            let after = jiff::Timestamp::now();
            let t = parse(&created["metadata"]["creationTimestamp"]);
            assert!(floor(before) <= t && t <= after, "{before} {t} {after}");
            assert_eq!(t.subsec_nanosecond(), 0);

            // Graceful deletion: the end of the grace period (45 s), truncated.
            let grace = DeleteOptions {
                grace_period_seconds: Some(45),
                ..Default::default()
            };
            let before = jiff::Timestamp::now();
            let deleting = store
                .delete(&rt, Some("default"), &format!("p{i}"), &grace)
                .unwrap();
            let after = jiff::Timestamp::now();
            let t = parse(&deleting["metadata"]["deletionTimestamp"]);
            let due = |t: jiff::Timestamp| t + jiff::SignedDuration::from_secs(45);
            assert!(floor(due(before)) <= t && t <= due(after), "{t}");
            // A shorter grace brings it forward.
            let shorter = DeleteOptions {
                grace_period_seconds: Some(1),
                ..Default::default()
            };
            let sooner = store
                .delete(&rt, Some("default"), &format!("p{i}"), &shorter)
                .unwrap();
            assert!(parse(&sooner["metadata"]["deletionTimestamp"]) < t);
        }
    }

    #[test]
    fn bound_pods_are_deleted_gracefully_and_finalizers_hold_objects() {
        let store = Store::new();
        let rt = pods(&store);
        let mut p = pod("a");
        p["spec"]["nodeName"] = json!("node-1");
        store.create(&rt, Some("default"), p).unwrap();
        let deleting = store
            .delete(&rt, Some("default"), "a", &DeleteOptions::default())
            .unwrap();
        assert!(deleting["metadata"]["deletionTimestamp"].is_string());
        assert_eq!(deleting["metadata"]["deletionGracePeriodSeconds"], 30);
        assert!(store.get(&rt, Some("default"), "a").is_ok());
        let zero = DeleteOptions {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        store.delete(&rt, Some("default"), "a", &zero).unwrap();
        assert_eq!(store.get(&rt, Some("default"), "a").unwrap_err().code, 404);

        let mut f = pod("b");
        f["metadata"]["finalizers"] = json!(["test/hold"]);
        store.create(&rt, Some("default"), f).unwrap();
        store
            .delete(&rt, Some("default"), "b", &DeleteOptions::default())
            .unwrap();
        assert!(store.get(&rt, Some("default"), "b").is_ok());
        store
            .patch(
                &rt,
                Some("default"),
                "b",
                PatchKind::Merge,
                br#"{"metadata":{"finalizers":null}}"#,
                false,
            )
            .unwrap();
        assert_eq!(store.get(&rt, Some("default"), "b").unwrap_err().code, 404);
    }

    #[test]
    fn dependents_are_garbage_collected_with_their_owner() {
        let store = Store::new();
        let rt = pods(&store);
        let cms = store.resource("", "v1", "configmaps").unwrap();
        let owner = store
            .create(
                &cms,
                Some("default"),
                json!({"metadata": {"name": "owner"}}),
            )
            .unwrap();
        let mut p = pod("child");
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}]);
        store.create(&rt, Some("default"), p).unwrap();
        store
            .delete(&cms, Some("default"), "owner", &DeleteOptions::default())
            .unwrap();
        assert_eq!(
            store.get(&rt, Some("default"), "child").unwrap_err().code,
            404
        );
    }

    #[test]
    fn a_dependent_created_after_its_owner_is_gone_is_collected() {
        let store = Store::new();
        let rt = pods(&store);
        let cms = store.resource("", "v1", "configmaps").unwrap();
        let owner = store
            .create(
                &cms,
                Some("default"),
                json!({"metadata": {"name": "owner"}}),
            )
            .unwrap();
        let reference = |uid: &Value| json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]);
        let mut kept = pod("kept");
        kept["metadata"]["ownerReferences"] = reference(&owner["metadata"]["uid"]);
        store.create(&rt, Some("default"), kept).unwrap();
        assert!(store.get(&rt, Some("default"), "kept").is_ok());
        // The admission plugin leaves absent container lists absent.
        let created = store.get(&rt, Some("default"), "kept").unwrap();
        assert!(created["spec"].get("ephemeralContainers").is_none());
        assert_eq!(created["spec"]["volumes"].as_array().map(Vec::len), Some(1));
        let mut late = pod("late");
        late["metadata"]["ownerReferences"] = reference(&json!("a-deleted-owner-uid"));
        store.create(&rt, Some("default"), late).unwrap();
        // A pod is deleted gracefully: it is terminating, no longer live.
        let late = store.get(&rt, Some("default"), "late");
        assert!(late.is_err() || late.unwrap()["metadata"]["deletionTimestamp"].is_string());
        let mut slice_like = json!({"metadata": {"name": "late-cm"}});
        slice_like["metadata"]["ownerReferences"] = reference(&json!("a-deleted-owner-uid"));
        store.create(&cms, Some("default"), slice_like).unwrap();
        assert_eq!(
            store
                .get(&cms, Some("default"), "late-cm")
                .unwrap_err()
                .code,
            404
        );
    }

    #[test]
    fn watch_from_an_expired_version_is_gone() {
        let store = Store::new();
        let rt = pods(&store);
        store.create(&rt, Some("default"), pod("a")).unwrap();
        let rv = store.current_rv();
        assert!(store.changes_since(rv - 1).is_ok());
        store.expire_history();
        assert_eq!(store.changes_since(rv - 1).unwrap_err().code, 410);
    }

    #[test]
    fn generate_name_and_selectors() {
        let store = Store::new();
        let rt = pods(&store);
        let mut p = pod("");
        p["metadata"]["generateName"] = json!("web-");
        let created = store.create(&rt, Some("default"), p).unwrap();
        let name = created["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
        assert_eq!(created["metadata"]["generation"], 1);
        assert!(created["metadata"]["uid"].is_string());
        let selection = Selection {
            namespace: Some("default".into()),
            labels: LabelSelector::parse("app=db").unwrap(),
            fields: FieldSelector::default(),
        };
        let (items, _, next) = store.list(&rt, &selection, None, None);
        assert_eq!(items.len(), 1);
        assert!(next.is_none());
    }
}
