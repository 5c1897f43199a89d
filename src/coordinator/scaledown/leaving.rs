//! Which pods a ScaleDown holds: the pod it is decommissioning (or bringing back), by UID. The
//! ScaleDown controller publishes them after each pass; the rollout controller counts such a
//! pod as busy (unavailable, not started) and the request controller does not start a pending
//! ContainerRecreateRequest for it, so that a pod is never restarted in place while it hands its
//! data off. (Only the leader runs these controllers, all in one process.)

use std::collections::HashMap;
use std::sync::RwLock;

/// Pod UID -> `namespace/name` of the ScaleDown holding it.
#[derive(Debug, Default)]
pub struct LeavingPods(RwLock<HashMap<String, String>>);

impl LeavingPods {
    /// Replaces the held pods.
    pub fn set(&self, held: HashMap<String, String>) {
        if let Ok(mut map) = self.0.write() {
            *map = held;
        }
    }

    /// The ScaleDown holding the pod of `uid`, if any.
    pub fn held_by(&self, uid: &str) -> Option<String> {
        self.0.read().ok().and_then(|m| m.get(uid).cloned())
    }

    /// Every held pod's UID.
    pub fn uids(&self) -> std::collections::HashSet<String> {
        self.0
            .read()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
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
    }
}
