//! Controller expectations (upstream's `ControllerExpectations`): the pod creations and
//! deletions a ReplicaSet or DaemonSet controller has asked for and not yet seen in its cache.
//! Until they are seen (or expire), the controller does not act on the stale cache again, so a
//! pod named by `generateName` is never created twice.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;

use super::ownership::controller_of;

/// Upstream's `ExpectationsTimeout`: a lost watch event cannot stall a controller for longer.
const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// What one controller (by uid) still waits to see.
#[derive(Debug)]
struct Expectation {
    creations: i64,
    deletions: HashSet<String>,
    set_at: Instant,
}

/// Expectations of every ReplicaSet and DaemonSet, keyed by the controller's uid.
#[derive(Debug, Default)]
pub struct Expectations {
    pending: Mutex<HashMap<String, Expectation>>,
}

impl Expectations {
    /// Whether the controller may act on its cache: nothing pending, or the wait expired.
    pub fn satisfied(&self, controller: &str, now: Instant) -> bool {
        let Ok(pending) = self.pending.lock() else {
            return true;
        };
        pending.get(controller).is_none_or(|e| {
            (e.creations <= 0 && e.deletions.is_empty())
                || now.saturating_duration_since(e.set_at) > EXPECTATIONS_TIMEOUT
        })
    }

    /// Records, before issuing them, `creations` pod creations and the deletions of these pod uids.
    pub fn expect(
        &self,
        controller: &str,
        creations: usize,
        deletions: impl IntoIterator<Item = String>,
        now: Instant,
    ) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(
                controller.to_string(),
                Expectation {
                    creations: i64::try_from(creations).unwrap_or(i64::MAX),
                    deletions: deletions.into_iter().collect(),
                    set_at: now,
                },
            );
        }
    }

    /// A pod of the controller appeared, or a creation was never made or failed.
    pub fn creation_observed(&self, controller: &str) {
        if let Ok(mut pending) = self.pending.lock()
            && let Some(e) = pending.get_mut(controller)
        {
            e.creations -= 1;
        }
    }

    /// The pod with `uid` is being deleted or gone, or its deletion failed.
    pub fn deletion_observed(&self, controller: &str, uid: &str) {
        if let Ok(mut pending) = self.pending.lock()
            && let Some(e) = pending.get_mut(controller)
        {
            e.deletions.remove(uid);
        }
    }
}

/// Turns the pod watch into creation and deletion observations, as upstream's pod event
/// handlers do: the first sighting of a pod is a creation, a deletion timestamp or a delete
/// event is a deletion. Re-lists count only pods not seen before, and pods missing from a
/// re-list as deleted.
#[derive(Debug, Default)]
pub struct PodObserver {
    /// uid → controller uid of every live pod seen.
    seen: HashMap<String, Option<String>>,
    /// Pods seen during a re-list in progress.
    relisted: Option<HashSet<String>>,
}

impl PodObserver {
    /// Feeds one watch event into `expectations`.
    pub fn observe(&mut self, event: &watcher::Event<Pod>, expectations: &Expectations) {
        match event {
            watcher::Event::Apply(pod) => self.sighted(pod, expectations),
            watcher::Event::InitApply(pod) => {
                if let (Some(relisted), Some(uid)) =
                    (self.relisted.as_mut(), pod.metadata.uid.clone())
                {
                    relisted.insert(uid);
                }
                self.sighted(pod, expectations);
            }
            watcher::Event::Delete(pod) => {
                let controller = controller_of(&pod.metadata).map(|o| o.uid.clone());
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    self.seen.remove(uid);
                    if let Some(controller) = controller {
                        expectations.deletion_observed(&controller, uid);
                    }
                }
            }
            watcher::Event::Init => self.relisted = Some(HashSet::new()),
            watcher::Event::InitDone => {
                let Some(relisted) = self.relisted.take() else {
                    return;
                };
                let gone: Vec<(String, Option<String>)> = self
                    .seen
                    .iter()
                    .filter(|(uid, _)| !relisted.contains(*uid))
                    .map(|(uid, controller)| (uid.clone(), controller.clone()))
                    .collect();
                for (uid, controller) in gone {
                    self.seen.remove(&uid);
                    if let Some(controller) = controller {
                        expectations.deletion_observed(&controller, &uid);
                    }
                }
            }
        }
    }

    fn sighted(&mut self, pod: &Pod, expectations: &Expectations) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let controller = controller_of(&pod.metadata).map(|o| o.uid.clone());
        if !self.seen.contains_key(&uid)
            && let Some(controller) = controller.as_deref()
        {
            expectations.creation_observed(controller);
        }
        if pod.metadata.deletion_timestamp.is_some()
            && let Some(controller) = controller.as_deref()
        {
            expectations.deletion_observed(controller, &uid);
        }
        self.seen.insert(uid, controller);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

    fn pod(uid: &str, owner: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                owner_references: Some(vec![OwnerReference {
                    uid: owner.into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn waits_until_every_creation_is_seen() {
        let expectations = Expectations::default();
        let mut observer = PodObserver::default();
        let now = Instant::now();
        assert!(expectations.satisfied("rs", now));
        expectations.expect("rs", 2, [], now);
        assert!(!expectations.satisfied("rs", now));

        observer.observe(&watcher::Event::Apply(pod("a", "rs")), &expectations);
        // A later update of the same pod is not another creation.
        observer.observe(&watcher::Event::Apply(pod("a", "rs")), &expectations);
        assert!(!expectations.satisfied("rs", now));
        // Someone else's pods do not count.
        observer.observe(&watcher::Event::Apply(pod("x", "other")), &expectations);
        assert!(!expectations.satisfied("rs", now));
        observer.observe(&watcher::Event::Apply(pod("b", "rs")), &expectations);
        assert!(expectations.satisfied("rs", now));
    }

    #[test]
    fn a_deletion_is_seen_at_its_deletion_timestamp_or_delete_event() {
        let expectations = Expectations::default();
        let mut observer = PodObserver::default();
        let now = Instant::now();
        observer.observe(&watcher::Event::Apply(pod("a", "ds")), &expectations);
        observer.observe(&watcher::Event::Apply(pod("b", "ds")), &expectations);
        expectations.expect("ds", 0, ["a".to_string(), "b".to_string()], now);

        let mut terminating = pod("a", "ds");
        terminating.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        observer.observe(&watcher::Event::Apply(terminating), &expectations);
        assert!(!expectations.satisfied("ds", now));
        observer.observe(&watcher::Event::Delete(pod("b", "ds")), &expectations);
        assert!(expectations.satisfied("ds", now));
    }

    #[test]
    fn a_relist_counts_new_pods_as_created_and_missing_pods_as_deleted() {
        let expectations = Expectations::default();
        let mut observer = PodObserver::default();
        let now = Instant::now();
        observer.observe(&watcher::Event::Apply(pod("old", "rs")), &expectations);
        expectations.expect("rs", 1, ["old".to_string()], now);

        observer.observe(&watcher::Event::Init, &expectations);
        observer.observe(&watcher::Event::InitApply(pod("new", "rs")), &expectations);
        assert!(!expectations.satisfied("rs", now));
        observer.observe(&watcher::Event::InitDone, &expectations);
        assert!(expectations.satisfied("rs", now));
    }

    #[test]
    fn failed_writes_lower_expectations_and_old_ones_expire() {
        let expectations = Expectations::default();
        let now = Instant::now();
        expectations.expect("rs", 1, ["a".to_string()], now);
        expectations.creation_observed("rs");
        assert!(!expectations.satisfied("rs", now));
        expectations.deletion_observed("rs", "a");
        assert!(expectations.satisfied("rs", now));

        expectations.expect("rs", 3, [], now);
        assert!(!expectations.satisfied("rs", now + Duration::from_secs(60)));
        assert!(expectations.satisfied("rs", now + EXPECTATIONS_TIMEOUT + Duration::from_secs(1)));
    }
}
