//! When the agents last reported on each request: the agents' heartbeats, as this replica saw
//! them. The report API records them; the request controller fails a request whose agent stays
//! silent for `--agent-timeout`, counting the later of this memory and the request's
//! `status.lastReportTime` (which reports to every replica refresh, see
//! [`crate::lifecycle::heartbeat_due`]). The memory forgets what it no longer needs by itself, so
//! a replica that never leads (and never sees which requests are gone) does not grow forever.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// Below this many entries the map is not pruned by size.
const MIN_PRUNE_SIZE: usize = 1024;

/// When an agent last reported on each request (by request UID), as seen by this replica.
#[derive(Debug)]
pub struct Heartbeats {
    /// Entries older than this are forgotten.
    max_age: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    last: HashMap<String, Timestamp>,
    /// When the map was last pruned.
    pruned_at: Option<Timestamp>,
    /// The map is pruned once it holds this many entries (twice what survived the last prune),
    /// or once `max_age` passed since the last prune: amortized O(1) per record.
    prune_at_len: usize,
}

impl Heartbeats {
    /// Forgets heartbeats older than `max_age` (at least the agent timeout: by then the request's
    /// `status.lastReportTime`, refreshed every quarter timeout, is at least as recent).
    pub fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            inner: Mutex::new(Inner {
                prune_at_len: MIN_PRUNE_SIZE,
                ..Default::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a report on request `uid` at `at`, and forgets old heartbeats now and then.
    pub fn record(&self, uid: &str, at: Timestamp) {
        let mut inner = self.lock();
        inner.last.insert(uid.to_string(), at);
        let max_age = SignedDuration::try_from(self.max_age).unwrap_or(SignedDuration::MAX);
        let interval_passed = inner
            .pruned_at
            .is_none_or(|p| at.duration_since(p) >= max_age);
        if inner.last.len() >= inner.prune_at_len || interval_passed {
            let oldest = at.checked_sub(max_age).unwrap_or(Timestamp::MIN);
            inner.last.retain(|_, t| *t >= oldest);
            inner.pruned_at = Some(at);
            inner.prune_at_len = inner.last.len().saturating_mul(2).max(MIN_PRUNE_SIZE);
        }
    }

    /// When an agent last reported on request `uid` to this replica.
    pub fn last(&self, uid: &str) -> Option<Timestamp> {
        self.lock().last.get(uid).copied()
    }

    /// Forgets requests that no longer exist.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().last.retain(|uid, _| keep(uid));
    }

    /// How many requests are remembered.
    pub fn len(&self) -> usize {
        self.lock().last.len()
    }

    /// Whether no request is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    #[test]
    fn old_heartbeats_are_forgotten_without_anyone_pruning() {
        let heartbeats = Heartbeats::new(Duration::from_secs(300));
        heartbeats.record("old", at(0));
        heartbeats.record("recent", at(200));
        assert_eq!(heartbeats.last("old"), Some(at(0)));
        // A replica that only serves reports: nobody calls `retain`.
        heartbeats.record("new", at(400));
        assert_eq!(heartbeats.last("old"), None, "older than max_age");
        assert_eq!(heartbeats.last("recent"), Some(at(200)));
        assert_eq!(heartbeats.last("new"), Some(at(400)));
    }

    #[test]
    fn the_map_stays_bounded_by_what_reported_within_max_age() {
        let heartbeats = Heartbeats::new(Duration::from_secs(60));
        // A request every 10 ms for 20 minutes of (simulated) time, each reporting once.
        let mut peak = 0;
        for i in 0..120_000i64 {
            let now = Timestamp::from_millisecond(1_700_000_000_000 + i * 10).unwrap();
            heartbeats.record(&format!("uid-{i}"), now);
            peak = peak.max(heartbeats.len());
        }
        // 6000 requests report within any minute; pruning keeps at most about twice that.
        assert!(peak <= 2 * 6000 + 2, "peak {peak}");
        assert!(heartbeats.len() <= 2 * 6000 + 2);
    }

    #[test]
    fn extreme_times_do_not_panic() {
        let heartbeats = Heartbeats::new(Duration::MAX);
        heartbeats.record("a", Timestamp::MIN);
        heartbeats.record("b", Timestamp::MAX);
        assert_eq!(heartbeats.len(), 2);
        let short = Heartbeats::new(Duration::ZERO);
        short.record("a", Timestamp::MAX);
        short.record("b", Timestamp::MIN);
        assert_eq!(short.last("b"), Some(Timestamp::MIN));
    }
}
