//! The kubelet's crash-loop back-off (`flowcontrol.Backoff` as `doBackOff` uses it), over plain
//! wall-clock times so it can be tested without waiting.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// Crash-loop back-off settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashLoopBackoff {
    /// Wait before the second restart within the window (the kubelet's 10 s).
    pub initial: Duration,
    /// Cap of the doubling wait (the kubelet's 300 s).
    pub max: Duration,
    /// A container that exits this long after its last restart starts afresh (2 × max = 600 s).
    pub reset_after: Duration,
}

impl Default for CrashLoopBackoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

/// The kubelet's back-off key: pod name, namespace, UID, container name and container hash.
pub fn backoff_key(name: &str, namespace: &str, uid: &str, container: &str, hash: &str) -> String {
    format!("{name}_{namespace}_{uid}_{container}_{hash}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    backoff: Duration,
    last_update: SystemTime,
}

/// Per-container back-off state.
#[derive(Debug, Clone, Default)]
pub struct BackoffTable {
    config: CrashLoopBackoff,
    entries: HashMap<String, Entry>,
}

impl BackoffTable {
    pub fn new(config: CrashLoopBackoff) -> Self {
        Self {
            config,
            entries: HashMap::new(),
        }
    }

    /// If the container that finished at `finished_at` must still wait before its restart,
    /// the current back-off period (`IsInBackOffSince`).
    pub fn waiting(&self, key: &str, finished_at: SystemTime, now: SystemTime) -> Option<Duration> {
        let entry = self.entries.get(key)?;
        if self.expired(entry, finished_at) {
            return None;
        }
        let since = now.duration_since(finished_at).unwrap_or_default();
        (since < entry.backoff).then_some(entry.backoff)
    }

    /// Records a restart of the container that finished at `finished_at` (`Next`): the first one
    /// after a reset arms `initial`, each further one doubles it up to `max`.
    pub fn restarted(&mut self, key: &str, finished_at: SystemTime, now: SystemTime) {
        let config = self.config;
        let backoff = match self.entries.get(key) {
            Some(entry) if !self.expired(entry, finished_at) => (entry.backoff * 2).min(config.max),
            _ => config.initial.min(config.max),
        };
        self.entries.insert(
            key.to_string(),
            Entry {
                backoff,
                last_update: now,
            },
        );
    }

    /// Drops entries nobody restarted for longer than the reset window.
    pub fn forget_stale(&mut self, now: SystemTime) {
        let reset_after = self.config.reset_after;
        self.entries
            .retain(|_, e| now.duration_since(e.last_update).unwrap_or_default() <= reset_after);
    }

    fn expired(&self, entry: &Entry, finished_at: SystemTime) -> bool {
        finished_at
            .duration_since(entry.last_update)
            .is_ok_and(|ran| ran > self.config.reset_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000_000 + seconds)
    }

    const KEY: &str = "db-0_default_uid_db_abcd";

    #[test]
    fn first_restart_is_immediate_then_waits_double_up_to_the_cap() {
        let mut table = BackoffTable::new(CrashLoopBackoff::default());
        // First exit: no entry, restart at once.
        assert_eq!(table.waiting(KEY, at(0), at(0)), None);
        table.restarted(KEY, at(0), at(0));
        // Second exit 1 s later: wait 10 s counted from the exit.
        assert_eq!(
            table.waiting(KEY, at(1), at(1)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            table.waiting(KEY, at(1), at(10)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(table.waiting(KEY, at(1), at(11)), None);
        table.restarted(KEY, at(1), at(11));
        // Third exit: 20 s.
        assert_eq!(
            table.waiting(KEY, at(12), at(31)),
            Some(Duration::from_secs(20))
        );
        assert_eq!(table.waiting(KEY, at(12), at(32)), None);
        table.restarted(KEY, at(12), at(32));
        let mut now = 32;
        for _ in 0..10 {
            now += 1;
            let wait = table.waiting(KEY, at(now), at(now)).unwrap();
            assert!(wait <= Duration::from_secs(300));
            now += wait.as_secs();
            table.restarted(KEY, at(now), at(now));
        }
        assert_eq!(
            table.waiting(KEY, at(now + 1), at(now + 1)),
            Some(Duration::from_secs(300))
        );
    }

    #[test]
    fn a_container_that_ran_past_the_reset_window_restarts_at_once() {
        let mut table = BackoffTable::new(CrashLoopBackoff::default());
        table.restarted(KEY, at(0), at(0));
        table.restarted(KEY, at(5), at(15));
        // Ran 601 s after the last restart: back to "first restart".
        assert_eq!(table.waiting(KEY, at(616), at(616)), None);
        table.restarted(KEY, at(616), at(616));
        assert_eq!(
            table.waiting(KEY, at(617), at(617)),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn keys_are_independent_and_stale_entries_are_forgotten() {
        let mut table = BackoffTable::new(CrashLoopBackoff::default());
        table.restarted(KEY, at(0), at(0));
        assert_eq!(table.waiting("other", at(1), at(1)), None);
        table.forget_stale(at(601));
        assert_eq!(table.waiting(KEY, at(1), at(601)), None);
        assert!(table.entries.is_empty());
    }

    #[test]
    fn short_test_settings_are_honoured() {
        let mut table = BackoffTable::new(CrashLoopBackoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(1),
            reset_after: Duration::from_secs(2),
        });
        table.restarted(KEY, at(0), at(0));
        table.restarted(KEY, at(0), at(0));
        table.restarted(KEY, at(0), at(0));
        assert_eq!(
            table.waiting(KEY, at(0), at(0)),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn key_names_pod_and_container_and_hash() {
        assert_eq!(backoff_key("p", "ns", "u", "c", "h"), "p_ns_u_c_h");
    }
}
