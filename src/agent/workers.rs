//! The scheduler's running work: one worker per pod, always.
//!
//! Workers are keyed by the pod their request is for (namespace and name), not by the request:
//! when the coordinator finishes request 1 (its deadline, a deletion) while its worker is inside
//! a shutdown action or a stop, request 2 for the same pod waits until that worker has really
//! ended. A worker that panics ends here too, as [`Joined::Crashed`], so its request never stays
//! in the running set.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{Id, JoinError, JoinSet};

use super::recreate::Outcome;
use relaunch_api::report::RequestRef;

/// The pod a request is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

/// What a running worker works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub pod: PodKey,
    pub request: RequestRef,
}

/// How a worker ended.
#[derive(Debug)]
pub enum Joined {
    /// It returned.
    Ended { running: Running, outcome: Outcome },
    /// It panicked (`message` is the panic's message) or was cancelled.
    Crashed { running: Running, message: String },
}

/// The running workers, at most one per pod.
#[derive(Default)]
pub struct Workers {
    tasks: JoinSet<Outcome>,
    by_task: HashMap<Id, Running>,
    by_pod: HashMap<PodKey, Id>,
}

impl Workers {
    /// Whether a worker for `pod` has not ended yet.
    pub fn is_busy(&self, pod: &PodKey) -> bool {
        self.by_pod.contains_key(pod)
    }

    /// Whether a worker for request `uid` has not ended yet.
    pub fn runs(&self, uid: &str) -> bool {
        self.by_task.values().any(|r| r.request.uid == uid)
    }

    /// Starts `work` for `running` unless a worker for its pod has not ended yet; returns
    /// whether it started.
    pub fn spawn<F>(&mut self, running: Running, work: F) -> bool
    where
        F: Future<Output = Outcome> + Send + 'static,
    {
        if self.is_busy(&running.pod) {
            return false;
        }
        let id = self.tasks.spawn(work).id();
        self.by_pod.insert(running.pod.clone(), id);
        self.by_task.insert(id, running);
        true
    }

    /// The next worker to end (cancel-safe); None when none runs.
    pub async fn join_next(&mut self) -> Option<Joined> {
        loop {
            let joined = self.tasks.join_next_with_id().await?;
            let (id, result) = match joined {
                Ok((id, outcome)) => (id, Ok(outcome)),
                Err(e) => (e.id(), Err(e)),
            };
            let Some(running) = self.by_task.remove(&id) else {
                continue;
            };
            self.by_pod.remove(&running.pod);
            return Some(match result {
                Ok(outcome) => Joined::Ended { running, outcome },
                Err(e) => Joined::Crashed {
                    running,
                    message: crash_message(e),
                },
            });
        }
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

/// The panic's message (a `&str` or `String` payload), or what else ended the task.
fn crash_message(error: JoinError) -> String {
    if !error.is_panic() {
        return error.to_string();
    }
    let payload = error.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaunch_api::RecreatePhase;
    use tokio::sync::oneshot;

    fn running(uid: &str, pod: &str) -> Running {
        Running {
            pod: PodKey {
                namespace: "ns".into(),
                name: pod.into(),
            },
            request: RequestRef {
                namespace: "ns".into(),
                name: uid.into(),
                uid: uid.into(),
            },
        }
    }

    #[tokio::test]
    async fn a_second_request_for_a_pod_waits_until_the_first_worker_ended() {
        let mut workers = Workers::default();
        let (release, released) = oneshot::channel::<()>();
        assert!(workers.spawn(running("r1", "p"), async move {
            let _ = released.await;
            Outcome::Gone
        }));
        // Request 1 was finished by the coordinator meanwhile; its worker still runs.
        assert!(workers.is_busy(&running("r2", "p").pod));
        assert!(!workers.spawn(running("r2", "p"), async { Outcome::Gone }));
        assert!(workers.runs("r1") && !workers.runs("r2"));
        // Another pod is independent.
        assert!(workers.spawn(running("r3", "q"), async {
            Outcome::Finished(RecreatePhase::Succeeded)
        }));
        match workers.join_next().await {
            Some(Joined::Ended { running, outcome }) => {
                assert_eq!(running.request.uid, "r3");
                assert_eq!(outcome, Outcome::Finished(RecreatePhase::Succeeded));
            }
            other => panic!("{other:?}"),
        }
        assert!(workers.is_busy(&running("r2", "p").pod));
        release.send(()).unwrap();
        assert!(matches!(
            workers.join_next().await,
            Some(Joined::Ended {
                outcome: Outcome::Gone,
                ..
            })
        ));
        assert!(workers.spawn(running("r2", "p"), async { Outcome::Gone }));
    }
}
