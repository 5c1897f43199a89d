//! When the agents last reported on each request: the agents' heartbeats, as this replica saw
//! them. The report API records them; the request controller fails a request whose agent stays
//! silent for `--agent-timeout`.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::Timestamp;

/// When an agent last reported on each request (by request UID), as seen by this replica.
#[derive(Debug, Default)]
pub struct Heartbeats {
    last: Mutex<HashMap<String, Timestamp>>,
}

impl Heartbeats {
    /// Records a report on request `uid` at `at`.
    pub fn record(&self, uid: &str, at: Timestamp) {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid.to_string(), at);
    }

    /// When an agent last reported on request `uid` to this replica.
    pub fn last(&self, uid: &str) -> Option<Timestamp> {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .copied()
    }

    /// Forgets requests that no longer exist.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|uid, _| keep(uid));
    }
}
