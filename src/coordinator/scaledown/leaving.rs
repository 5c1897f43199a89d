//! Which pods a ScaleDown holds: the pod it is decommissioning (or bringing back), by UID. The
//! ScaleDown controller publishes them after each pass; the rollout controller counts such a
//! pod as busy (unavailable, not started) and neither the request controller nor the report API
//! admits a ContainerRecreateRequest for it, so that a pod is never restarted in place while it
//! hands its data off. (Only the leader runs these controllers, all in one process; a replica
//! that does not lead has nothing published and the report API reads the ScaleDowns instead.)

use std::collections::HashMap;
use std::sync::RwLock;

use kube::ResourceExt;

use relaunch_api::{ScaleDown, ScaleDownPhase};

/// Pod UID -> `namespace/name` of the ScaleDown holding it; None while this replica's ScaleDown
/// controller has not published (it does not lead, or has not made its first pass).
#[derive(Debug, Default)]
pub struct LeavingPods(RwLock<Option<HashMap<String, String>>>);

impl LeavingPods {
    /// Replaces the held pods.
    pub fn set(&self, held: HashMap<String, String>) {
        if let Ok(mut map) = self.0.write() {
            *map = Some(held);
        }
    }

    /// Forgets the held pods: the ScaleDown controller stopped (the term ended).
    pub fn forget(&self) {
        if let Ok(mut map) = self.0.write() {
            *map = None;
        }
    }

    /// The ScaleDown holding the pod of `uid`, if any (none while nothing is published).
    pub fn held_by(&self, uid: &str) -> Option<String> {
        self.published(uid).flatten()
    }

    /// What the published holds say about the pod of `uid`: None when nothing is published
    /// here, else the ScaleDown holding it, if any.
    pub fn published(&self, uid: &str) -> Option<Option<String>> {
        let map = self.0.read().ok()?;
        map.as_ref().map(|m| m.get(uid).cloned())
    }

    /// Every held pod's UID.
    pub fn uids(&self) -> std::collections::HashSet<String> {
        self.0
            .read()
            .ok()
            .and_then(|m| m.as_ref().map(|m| m.keys().cloned().collect()))
            .unwrap_or_default()
    }
}

/// Forgets the published holds when dropped: the ScaleDown controller holds one while it runs.
pub struct ForgetOnDrop(pub std::sync::Arc<LeavingPods>);

impl Drop for ForgetOnDrop {
    fn drop(&mut self) {
        self.0.forget();
    }
}

/// The UID of the pod `sd` holds and `namespace/name` of `sd`: the pod it is decommissioning
/// (or bringing back) while it is neither finished nor in a phase this version does not know.
pub fn held_pod(sd: &ScaleDown) -> Option<(String, String)> {
    let status = sd.status.as_ref()?;
    if status.phase.is_finished() || status.phase == ScaleDownPhase::Unknown {
        return None;
    }
    let current = status.current.as_ref()?;
    Some((
        current.pod_uid.clone(),
        format!("{}/{}", sd.namespace().unwrap_or_default(), sd.name_any()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_are_replaced_as_a_whole() {
        let leaving = LeavingPods::default();
        leaving.set(HashMap::from([("u1".into(), "ns/sd".into())]));
        assert_eq!(leaving.held_by("u1").as_deref(), Some("ns/sd"));
        leaving.set(HashMap::new());
        assert_eq!(leaving.held_by("u1"), None);
        assert!(leaving.uids().is_empty());
        assert_eq!(leaving.published("u1"), Some(None), "published: not held");
        leaving.forget();
        assert_eq!(leaving.published("u1"), None, "nothing published any more");
        let leaving = std::sync::Arc::new(leaving);
        leaving.set(HashMap::from([("u1".into(), "ns/sd".into())]));
        drop(ForgetOnDrop(leaving.clone()));
        assert_eq!(
            leaving.published("u1"),
            None,
            "forgotten when the controller ends"
        );
    }
}
