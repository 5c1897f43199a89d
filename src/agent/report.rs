//! Progress reports to the coordinator: queued, in order, latest view per request, retried
//! with back-off, re-sent as a heartbeat.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::coordinator_client::CoordinatorClient;
use super::error_policy::{Retry, ShellError, error_policy};
use super::metrics::AgentMetrics;
use relaunch_api::report::RecreateReport;

/// Longest pause between delivery attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How often the latest view of each unfinished request is sent again (a liveness signal; the
/// coordinator fails requests whose agent stays silent for its `--agent-timeout`).
const HEARTBEAT: Duration = Duration::from_secs(60);

/// Reports waiting for delivery: at most one (the latest) per request, delivered in the order
/// requests first entered the queue.
#[derive(Debug, Default)]
pub struct ReportQueue {
    order: VecDeque<String>,
    latest: HashMap<String, RecreateReport>,
}

impl ReportQueue {
    /// Queues `report`, replacing an undelivered older view of the same request in place.
    pub fn push(&mut self, report: RecreateReport) {
        let uid = report.request.uid.clone();
        if self.latest.insert(uid.clone(), report).is_none() {
            self.order.push_back(uid);
        }
    }

    /// The next report to deliver.
    pub fn front(&self) -> Option<&RecreateReport> {
        self.order.front().and_then(|uid| self.latest.get(uid))
    }

    /// Removes the report of `uid` if it is still the one with `sequence` (a newer view queued
    /// meanwhile stays and is delivered next).
    pub fn settle(&mut self, uid: &str, sequence: u64) {
        if self.latest.get(uid).is_some_and(|r| r.sequence == sequence) {
            self.latest.remove(uid);
            self.order.retain(|u| u != uid);
        }
    }

    /// Whether a view of request `uid` is waiting.
    pub fn contains(&self, uid: &str) -> bool {
        self.latest.contains_key(uid)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// The next pause after a failed attempt: doubling, capped at [`MAX_BACKOFF`].
pub fn next_backoff(current: Duration) -> Duration {
    if current.is_zero() {
        FIRST_BACKOFF
    } else {
        (current * 2).min(MAX_BACKOFF)
    }
}

/// Delivers reports in the background. Cheap to clone.
#[derive(Clone)]
pub struct Reporter {
    queue: Arc<Mutex<ReportQueue>>,
    /// The latest view of every unfinished request, re-sent every [`HEARTBEAT`] so the
    /// coordinator knows the agent is alive while a request waits or a step takes long.
    unfinished: Arc<Mutex<HashMap<String, RecreateReport>>>,
    wake: Arc<Notify>,
    emptied: Arc<Notify>,
    metrics: AgentMetrics,
}

impl Reporter {
    /// Starts the delivery task; it runs until `stop` is cancelled.
    pub fn start(
        client: CoordinatorClient,
        metrics: AgentMetrics,
        stop: CancellationToken,
    ) -> Self {
        let reporter = Self {
            queue: Arc::default(),
            unfinished: Arc::default(),
            wake: Arc::default(),
            emptied: Arc::default(),
            metrics,
        };
        tokio::spawn(reporter.clone().deliver(client, stop.clone()));
        tokio::spawn(reporter.clone().heartbeat(stop));
        reporter
    }

    /// The latest view submitted of unfinished request `uid`.
    pub fn latest(&self, uid: &str) -> Option<RecreateReport> {
        lock(&self.unfinished).get(uid).cloned()
    }

    /// Stops re-sending the view of a request that is gone.
    pub fn forget(&self, uid: &str) {
        lock(&self.unfinished).remove(uid);
    }

    async fn heartbeat(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(HEARTBEAT) => {}
            }
            let views: Vec<RecreateReport> = lock(&self.unfinished).values().cloned().collect();
            for view in views {
                let mut queue = lock(&self.queue);
                if !queue.contains(&view.request.uid) {
                    queue.push(view);
                }
            }
            self.wake.notify_one();
        }
    }

    /// Queues the latest view of a request.
    pub fn submit(&self, report: RecreateReport) {
        {
            let mut unfinished = lock(&self.unfinished);
            if report.phase.is_finished() {
                unfinished.remove(&report.request.uid);
            } else {
                unfinished.insert(report.request.uid.clone(), report.clone());
            }
        }
        let depth = {
            let mut queue = lock(&self.queue);
            queue.push(report);
            queue.len()
        };
        self.metrics.report_queue_depth.set(depth as i64);
        self.wake.notify_one();
    }

    /// How many reports wait for delivery.
    pub fn pending(&self) -> usize {
        lock(&self.queue).len()
    }

    /// Waits until every queued report is delivered or dropped, at most `timeout`.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let emptied = self.emptied.notified();
            if self.pending() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, emptied).await.is_err() {
                return self.pending() == 0;
            }
        }
    }

    async fn deliver(self, client: CoordinatorClient, stop: CancellationToken) {
        let mut backoff = Duration::ZERO;
        loop {
            let wake = self.wake.notified();
            let next = lock(&self.queue).front().cloned();
            let Some(report) = next else {
                self.emptied.notify_waiters();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = wake => continue,
                }
            };
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                outcome = client.report(&report) => outcome,
            };
            let uid = report.request.uid.as_str();
            match outcome {
                Ok(()) => {
                    backoff = Duration::ZERO;
                    self.metrics.reports.with_label_values(&["delivered"]).inc();
                    tracing::debug!(crr = %report.request.name, namespace = %report.request.namespace, phase = report.phase.as_str(), "report delivered");
                    lock(&self.queue).settle(uid, report.sequence);
                }
                Err(e) => {
                    let span = tracing::info_span!("report", crr = %report.request.name, namespace = %report.request.namespace);
                    let error = ShellError::from(e);
                    let retry = span
                        .in_scope(|| error_policy(&self.metrics, "report not delivered", &error));
                    match retry {
                        Retry::Later => {
                            self.metrics.reports.with_label_values(&["retried"]).inc();
                            backoff = next_backoff(backoff);
                            tokio::select! {
                                _ = stop.cancelled() => return,
                                _ = tokio::time::sleep(backoff) => {}
                            }
                        }
                        Retry::Never => {
                            self.metrics.reports.with_label_values(&["rejected"]).inc();
                            lock(&self.queue).settle(uid, report.sequence);
                        }
                    }
                }
            }
            let depth = lock(&self.queue).len();
            self.metrics.report_queue_depth.set(depth as i64);
        }
    }
}

/// The queue's lock is never held across an await or a panic-prone call; recover from poison anyway.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaunch_api::RecreatePhase;
    use relaunch_api::report::RequestRef;

    fn report(uid: &str, sequence: u64, phase: RecreatePhase) -> RecreateReport {
        RecreateReport {
            request: RequestRef {
                namespace: "ns".into(),
                name: uid.into(),
                uid: uid.into(),
            },
            sequence,
            phase,
            message: None,
            start_time: None,
            completion_time: None,
            containers: vec![],
        }
    }

    #[test]
    fn keeps_only_the_latest_view_per_request_in_first_queued_order() {
        let mut q = ReportQueue::default();
        q.push(report("a", 1, RecreatePhase::Recreating));
        q.push(report("b", 1, RecreatePhase::Recreating));
        q.push(report("a", 2, RecreatePhase::Succeeded));
        assert_eq!(q.len(), 2);
        let front = q.front().unwrap();
        assert_eq!((front.request.uid.as_str(), front.sequence), ("a", 2));
        q.settle("a", 2);
        assert_eq!(q.front().unwrap().request.uid, "b");
    }

    #[test]
    fn a_newer_view_queued_during_delivery_is_not_lost() {
        let mut q = ReportQueue::default();
        q.push(report("a", 1, RecreatePhase::Recreating));
        let sending = q.front().unwrap().sequence;
        q.push(report("a", 2, RecreatePhase::Succeeded));
        q.settle("a", sending);
        assert_eq!(q.front().unwrap().sequence, 2);
        q.settle("a", 2);
        assert!(q.is_empty());
    }

    #[test]
    fn backoff_doubles_up_to_ten_seconds() {
        let mut b = Duration::ZERO;
        let mut seen = vec![];
        for _ in 0..10 {
            b = next_backoff(b);
            seen.push(b);
        }
        assert_eq!(seen[0], Duration::from_millis(100));
        assert_eq!(seen[1], Duration::from_millis(200));
        assert_eq!(*seen.last().unwrap(), MAX_BACKOFF);
    }
}
