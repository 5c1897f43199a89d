//! Progress reports to the coordinator: queued, in order, latest view per request, each
//! request retried with its own back-off, re-sent as a heartbeat.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::coordinator_client::CoordinatorClient;
use super::error_policy::{Retry, ShellError, error_policy};
use super::metrics::AgentMetrics;
use relaunch_api::report::RecreateReport;

/// Longest pause between delivery attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Shortest time between two deliveries for one request while it is unfinished: the views in
/// between fold into the latest, so a restart that takes less writes its status only at the
/// start and at the outcome (which goes at once). A person still sees every step that lasts.
pub const MIN_SPACING: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Reports waiting for delivery: at most one (the latest) per request, delivered in the order
/// requests first entered the queue — except that a request whose delivery failed waits out its
/// own back-off while the others go on, so one request whose status cannot be written never
/// stalls the node's other reports, and that an unfinished view waits until [`MIN_SPACING`]
/// after the request's previous delivery.
#[derive(Debug, Default)]
pub struct ReportQueue {
    order: VecDeque<String>,
    latest: HashMap<String, RecreateReport>,
    /// Requests whose last delivery failed: their current pause and when to try again.
    retry: HashMap<String, (Duration, Instant)>,
    /// When each unfinished request's last report was delivered.
    delivered: HashMap<String, Instant>,
}

impl ReportQueue {
    /// Queues `report`, replacing an undelivered older view of the same request in place (a
    /// request backing off keeps its back-off).
    pub fn push(&mut self, report: RecreateReport) {
        let uid = report.request.uid.clone();
        if self.latest.insert(uid.clone(), report).is_none() {
            self.order.push_back(uid);
        }
    }

    /// The next report to deliver at `now`: the first queued that is due (see [`Self::due_at`]).
    pub fn next_due(&self, now: Instant) -> Option<&RecreateReport> {
        self.order
            .iter()
            .find(|uid| self.due_at(uid).is_none_or(|at| at <= now))
            .and_then(|uid| self.latest.get(uid))
    }

    /// When the queued report of `uid` may go, if not at once: after its back-off; an
    /// unfinished view also [`MIN_SPACING`] after the request's last delivery.
    fn due_at(&self, uid: &str) -> Option<Instant> {
        let backoff = self.retry.get(uid).map(|(_, at)| *at);
        let unfinished = self.latest.get(uid).is_some_and(|r| !r.phase.is_finished());
        let spaced = (self.delivered.get(uid))
            .filter(|_| unfinished)
            .map(|at| *at + MIN_SPACING);
        backoff.max(spaced)
    }

    /// When the first queued report that is not due yet becomes due.
    pub fn next_retry(&self) -> Option<Instant> {
        self.order.iter().filter_map(|uid| self.due_at(uid)).min()
    }

    /// A report of `uid` was delivered at `now` outside the queue (a request's first report):
    /// the request's next unfinished view waits [`MIN_SPACING`] after it.
    pub fn delivered(&mut self, report: &RecreateReport, now: Instant) {
        let uid = &report.request.uid;
        if report.phase.is_finished() {
            self.delivered.remove(uid);
        } else {
            self.delivered.insert(uid.clone(), now);
        }
    }

    /// Forgets `uid` (the request is gone).
    pub fn forget(&mut self, uid: &str) {
        self.delivered.remove(uid);
    }

    /// The report of `uid` with `sequence` was delivered (or refused for good) at `now`: it is
    /// removed if it is still the latest (a newer view queued meanwhile stays: due at once if
    /// finished, else [`MIN_SPACING`] after `now`), and the request's back-off ends.
    pub fn settle(&mut self, uid: &str, sequence: u64, now: Instant) {
        self.retry.remove(uid);
        self.delivered.insert(uid.to_string(), now);
        if self.latest.get(uid).is_some_and(|r| r.sequence == sequence) {
            if self
                .latest
                .remove(uid)
                .is_some_and(|r| r.phase.is_finished())
            {
                self.delivered.remove(uid);
            }
            self.order.retain(|u| u != uid);
        }
    }

    /// Delivering the report of `uid` failed at `now` and is to be retried: the request backs
    /// off (doubling, up to [`MAX_BACKOFF`]) while the others go on. Returns the pause.
    pub fn failed(&mut self, uid: &str, now: Instant) -> Duration {
        if !self.latest.contains_key(uid) {
            return Duration::ZERO;
        }
        let previous = self.retry.get(uid).map_or(Duration::ZERO, |(b, _)| *b);
        let backoff = next_backoff(previous);
        self.retry.insert(uid.to_string(), (backoff, now + backoff));
        backoff
    }

    /// How many requests' reports are backing off.
    pub fn backing_off(&self) -> usize {
        self.retry.len()
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
    /// The latest view of every unfinished request, re-sent every heartbeat interval so the
    /// coordinator knows the agent is alive while a request waits or a step takes long.
    unfinished: Arc<Mutex<HashMap<String, RecreateReport>>>,
    wake: Arc<Notify>,
    emptied: Arc<Notify>,
    metrics: AgentMetrics,
}

impl Reporter {
    /// Starts the delivery task and the heartbeat, which re-sends the latest view of every
    /// unfinished request each `heartbeat` (a liveness signal: the coordinator fails requests whose
    /// agent stays silent for its `--agent-timeout`). Both run until `stop` is cancelled.
    pub fn start(
        client: CoordinatorClient,
        metrics: AgentMetrics,
        heartbeat: Duration,
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
        tokio::spawn(reporter.clone().heartbeat(heartbeat, stop));
        reporter
    }

    /// The latest view submitted of unfinished request `uid`.
    pub fn latest(&self, uid: &str) -> Option<RecreateReport> {
        lock(&self.unfinished).get(uid).cloned()
    }

    /// Stops re-sending the view of a request that is gone.
    pub fn forget(&self, uid: &str) {
        lock(&self.unfinished).remove(uid);
        lock(&self.queue).forget(uid);
    }

    async fn heartbeat(self, interval: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
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
        self.remember(&report);
        let depth = {
            let mut queue = lock(&self.queue);
            queue.push(report);
            queue.len()
        };
        self.metrics.report_queue_depth.set(depth as i64);
        self.wake.notify_one();
    }

    /// Takes note of a report the worker delivered itself (a request's first report, whose
    /// answer it waits for): counted, and re-sent by the heartbeat while the request runs.
    pub fn delivered(&self, report: &RecreateReport) {
        self.remember(report);
        lock(&self.queue).delivered(report, Instant::now());
        self.metrics.reports.with_label_values(&["delivered"]).inc();
    }

    /// Keeps `report` as the latest view of its request while the request is unfinished.
    fn remember(&self, report: &RecreateReport) {
        let mut unfinished = lock(&self.unfinished);
        if report.phase.is_finished() {
            unfinished.remove(&report.request.uid);
        } else {
            unfinished.insert(report.request.uid.clone(), report.clone());
        }
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
        loop {
            let wake = self.wake.notified();
            let (next, retry_at, empty) = {
                let queue = lock(&self.queue);
                (
                    queue.next_due(Instant::now()).cloned(),
                    queue.next_retry(),
                    queue.is_empty(),
                )
            };
            let Some(report) = next else {
                if empty {
                    self.emptied.notify_waiters();
                }
                let retry = async {
                    match retry_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = wake => continue,
                    _ = retry => continue,
                }
            };
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                outcome = client.report(&report) => outcome,
            };
            let uid = report.request.uid.as_str();
            match outcome {
                Ok(()) => {
                    self.metrics.reports.with_label_values(&["delivered"]).inc();
                    tracing::debug!(crr = %report.request.name, namespace = %report.request.namespace, phase = report.phase.as_str(), "report delivered");
                    lock(&self.queue).settle(uid, report.sequence, Instant::now());
                }
                Err(e) => {
                    let span = tracing::info_span!("report", crr = %report.request.name, namespace = %report.request.namespace);
                    let error = ShellError::from(e);
                    let retry = span
                        .in_scope(|| error_policy(&self.metrics, "report not delivered", &error));
                    match retry {
                        Retry::Later => {
                            self.metrics.reports.with_label_values(&["retried"]).inc();
                            // This request waits out its back-off; the others go on.
                            lock(&self.queue).failed(uid, Instant::now());
                        }
                        Retry::Never => {
                            self.metrics.reports.with_label_values(&["rejected"]).inc();
                            lock(&self.queue).settle(uid, report.sequence, Instant::now());
                        }
                    }
                }
            }
            let (depth, backing_off) = {
                let queue = lock(&self.queue);
                (queue.len(), queue.backing_off())
            };
            self.metrics.report_queue_depth.set(depth as i64);
            self.metrics.reports_backing_off.set(backing_off as i64);
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
            pod_name: None,
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
        let now = Instant::now();
        let mut q = ReportQueue::default();
        q.push(report("a", 1, RecreatePhase::Recreating));
        q.push(report("b", 1, RecreatePhase::Recreating));
        q.push(report("a", 2, RecreatePhase::Succeeded));
        assert_eq!(q.len(), 2);
        let front = q.next_due(now).unwrap();
        assert_eq!((front.request.uid.as_str(), front.sequence), ("a", 2));
        q.settle("a", 2, now);
        assert_eq!(q.next_due(now).unwrap().request.uid, "b");
    }

    #[test]
    fn a_newer_view_queued_during_delivery_is_not_lost() {
        let now = Instant::now();
        let mut q = ReportQueue::default();
        q.push(report("a", 1, RecreatePhase::Recreating));
        let sending = q.next_due(now).unwrap().sequence;
        q.push(report("a", 2, RecreatePhase::Succeeded));
        q.settle("a", sending, now);
        assert_eq!(q.next_due(now).unwrap().sequence, 2);
        q.settle("a", 2, now);
        assert!(q.is_empty());
    }

    #[test]
    fn a_request_whose_reports_fail_backs_off_alone_while_the_others_go_on() {
        let now = Instant::now();
        let mut q = ReportQueue::default();
        q.push(report("stuck", 1, RecreatePhase::Recreating));
        q.push(report("b", 1, RecreatePhase::Recreating));
        assert_eq!(q.next_due(now).unwrap().request.uid, "stuck");
        assert_eq!(q.failed("stuck", now), Duration::from_millis(100));
        assert_eq!(q.backing_off(), 1);
        // The next one goes first.
        assert_eq!(q.next_due(now).unwrap().request.uid, "b");
        q.settle("b", 1, now);
        q.push(report("c", 1, RecreatePhase::Recreating));
        assert_eq!(q.next_due(now).unwrap().request.uid, "c");
        q.settle("c", 1, now);
        assert!(q.next_due(now).is_none());
        assert_eq!(q.next_retry(), Some(now + Duration::from_millis(100)));
        // Its back-off over, it is tried again, and backs off longer after another failure.
        let later = now + Duration::from_millis(100);
        assert_eq!(q.next_due(later).unwrap().request.uid, "stuck");
        assert_eq!(q.failed("stuck", later), Duration::from_millis(200));
        // A newer view keeps the back-off; a delivery ends it.
        q.push(report("stuck", 2, RecreatePhase::Failed));
        assert!(q.next_due(later).is_none());
        let due = later + Duration::from_millis(200);
        assert_eq!(q.next_due(due).unwrap().sequence, 2);
        q.settle("stuck", 2, now);
        assert_eq!((q.backing_off(), q.len()), (0, 0));
        assert_eq!(q.failed("gone", due), Duration::ZERO);
        assert_eq!(q.backing_off(), 0);
    }

    #[test]
    fn an_unfinished_view_waits_for_the_spacing_and_the_outcome_goes_at_once() {
        let now = Instant::now();
        let mut q = ReportQueue::default();
        // The first report goes at once; the next unfinished view waits MIN_SPACING after it.
        q.push(report("a", 1, RecreatePhase::Recreating));
        assert_eq!(q.next_due(now).unwrap().sequence, 1);
        q.settle("a", 1, now);
        q.push(report("a", 2, RecreatePhase::Recreating));
        q.push(report("b", 1, RecreatePhase::Recreating));
        assert_eq!(q.next_due(now).unwrap().request.uid, "b", "a waits, b goes");
        q.settle("b", 1, now);
        assert!(q.next_due(now).is_none());
        assert_eq!(q.next_retry(), Some(now + MIN_SPACING));
        // Views in between fold into the latest, which goes once the spacing is over.
        q.push(report("a", 3, RecreatePhase::Recreating));
        assert_eq!(q.next_due(now + MIN_SPACING).unwrap().sequence, 3);
        // The outcome does not wait.
        q.push(report("a", 4, RecreatePhase::Succeeded));
        assert_eq!(q.next_due(now).unwrap().sequence, 4);
        q.settle("a", 4, now);
        // A request delivered outside the queue (its claim) is spaced from then on.
        let mut first = report("c", 1, RecreatePhase::Recreating);
        q.delivered(&first, now);
        first.sequence = 2;
        q.push(first);
        assert!(q.next_due(now).is_none());
        q.forget("c");
        assert_eq!(
            q.next_due(now).unwrap().request.uid,
            "c",
            "forgotten: no spacing"
        );
    }

    /// A stand-in coordinator that answers 503 to every report of request `stuck` and 200 to
    /// the others; records the UIDs of the reports it received.
    async fn coordinator_failing_one_request() -> (String, Arc<Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut data = Vec::new();
                    let mut buf = [0u8; 4096];
                    let body = loop {
                        let n = stream.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        data.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&data).to_string();
                        let Some((head, body)) = text.split_once("\r\n\r\n") else {
                            continue;
                        };
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            break body.to_string();
                        }
                    };
                    let value: serde_json::Value = serde_json::from_str(&body).unwrap();
                    let uid = value["request"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let status = if uid == "stuck" {
                        "503 Service Unavailable"
                    } else {
                        "200 OK"
                    };
                    log.lock().unwrap().push(uid);
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn reports_of_other_requests_flow_while_one_request_gets_5xx() {
        let (url, seen) = coordinator_failing_one_request().await;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t").unwrap();
        let client = CoordinatorClient::new(&url, None, token).unwrap();
        let metrics = AgentMetrics::unregistered().unwrap();
        let stop = CancellationToken::new();
        let reporter = Reporter::start(
            client,
            metrics.clone(),
            Duration::from_secs(60),
            stop.clone(),
        );
        reporter.submit(report("stuck", 1, RecreatePhase::Recreating));
        let count = |uid: &str| seen.lock().unwrap().iter().filter(|u| *u == uid).count();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while count("stuck") < 2 {
            assert!(std::time::Instant::now() < deadline, "{:?}", seen.lock());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for uid in ["b", "c", "d"] {
            reporter.submit(report(uid, 1, RecreatePhase::Succeeded));
        }
        while ["b", "c", "d"].iter().any(|uid| count(uid) == 0) || reporter.pending() != 1 {
            assert!(std::time::Instant::now() < deadline, "{:?}", seen.lock());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(metrics.reports_backing_off.get(), 1);
        assert!(lock(&reporter.queue).contains("stuck"));
        // Still retried on its own.
        let before = count("stuck");
        while count("stuck") == before {
            assert!(std::time::Instant::now() < deadline, "{:?}", seen.lock());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
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
