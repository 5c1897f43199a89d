//! What the benchmarks measure a run with: settings from the environment, the machine's load
//! (latency figures taken while it exceeds the core count are flagged), a process's CPU and RSS
//! from `/proc`, the coordinator's API requests as the test API server counts them, and the
//! grouping of a rollout's requests into batches.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use relaunch_testbed::{RequestKind, Sandbox};

/// Setting `name` from the environment, else `default`.
pub fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Number `name` from the environment, else `default`; stops the run if it is not a number.
pub fn number(name: &str, default: usize) -> usize {
    setting(name, &default.to_string())
        .parse()
        .unwrap_or_else(|_| panic!("{name} must be a number"))
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Whether any of the load averages taken during a measurement exceeds the core count: its
/// latency figures are then an upper bound, not a measurement of relaunch.
pub fn overloaded(loads: &[f64]) -> bool {
    loads.iter().any(|l| *l > cores() as f64)
}

/// User + system CPU seconds of process `pid` so far (its threads included).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3 on.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (index 11 and 12 after the name); 100 ticks/s.
    (ticks(11) + ticks(12)) / 100.0
}

/// A `/proc/<pid>/status` memory line (`VmRSS`, `VmHWM`) in MiB; 0 if the process is gone.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Resident memory of process `pid` now, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS")
}

/// The highest resident memory of process `pid` since it started (`VmHWM`), in MiB.
pub fn hwm_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM")
}

/// Keeps the highest RSS of `pid` in `peak`, sampled every 100 ms, until aborted.
pub async fn sample_rss(pid: u32, peak: Arc<Mutex<f64>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let rss = rss_mib(pid);
        let mut peak = peak.lock().expect("rss");
        *peak = peak.max(rss);
    }
}

/// The highest RSS of `pid` over a 5 s window: a measurement window, not a wait for a
/// condition (the caches fill from watch events).
pub async fn rss_window(pid: u32) -> f64 {
    let mut peak = 0.0_f64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..50 {
        tick.tick().await;
        peak = peak.max(rss_mib(pid));
    }
    peak
}

/// The coordinator's API requests so far, as the test API server counted them.
pub fn coordinator_requests(sandbox: &Sandbox) -> BTreeMap<RequestKind, u64> {
    sandbox
        .api()
        .request_counts()
        .into_iter()
        .filter(|(k, _)| k.user.ends_with(":relaunch-coordinator"))
        .collect()
}

/// The agents' API writes so far (they hold read-only access: 0 is expected).
pub fn agent_writes(sandbox: &Sandbox) -> u64 {
    sandbox
        .api()
        .request_counts()
        .iter()
        .filter(|(k, _)| k.user.ends_with(":relaunch-agent") && is_write(k))
        .map(|(_, n)| n)
        .sum()
}

/// The requests counted in `after` but not yet in `before`.
pub fn subtract(
    after: &BTreeMap<RequestKind, u64>,
    before: &BTreeMap<RequestKind, u64>,
) -> BTreeMap<RequestKind, u64> {
    after
        .iter()
        .map(|(k, n)| (k.clone(), n - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

pub fn is_write(kind: &RequestKind) -> bool {
    !matches!(kind.verb.as_str(), "get" | "list" | "watch")
}

/// One rollout's requests grouped into batches: requests created (first seen, in order) with
/// none of the rollout's requests finishing in between belong to one batch.
pub fn batches(created: &[Instant], finished: &[Instant]) -> Vec<Vec<Instant>> {
    let mut batches: Vec<Vec<Instant>> = Vec::new();
    let mut previous: Option<Instant> = None;
    for at in created {
        let finished_between = previous.is_some_and(|p| finished.iter().any(|f| *f > p && f <= at));
        match batches.last_mut() {
            Some(batch) if !finished_between => batch.push(*at),
            _ => batches.push(vec![*at]),
        }
        previous = Some(*at);
    }
    batches
}

/// The latest of `events` at or before `at`.
pub fn latest_before(events: &[Instant], at: Instant) -> Option<Instant> {
    events.iter().filter(|e| **e <= at).max().copied()
}
