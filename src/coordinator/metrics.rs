//! The coordinator's metrics (names are stable API, see `docs/metrics.md`).

use prometheus::{IntCounterVec, Opts, Registry};

/// Counters the report API and the controllers update.
#[derive(Clone)]
pub struct Metrics {
    /// `relaunch_coordinator_reports_total{result}`: progress reports by outcome.
    pub reports: IntCounterVec,
    /// `relaunch_coordinator_readiness_requests_total{result}`: readiness-gate requests by outcome.
    pub readiness: IntCounterVec,
    /// `relaunch_coordinator_auth_failures_total{reason}`.
    pub auth_failures: IntCounterVec,
    /// `relaunch_coordinator_crr_total{result}`: requests finished, by how.
    pub crrs: IntCounterVec,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter =
            |name: &str, help: &str, label: &str| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        Ok(Self {
            reports: counter(
                "relaunch_coordinator_reports_total",
                "Progress reports from agents, by result.",
                "result",
            )?,
            readiness: counter(
                "relaunch_coordinator_readiness_requests_total",
                "Readiness-gate requests from agents, by result.",
                "result",
            )?,
            auth_failures: counter(
                "relaunch_coordinator_auth_failures_total",
                "Report API requests refused by authentication or node binding, by reason.",
                "reason",
            )?,
            crrs: counter(
                "relaunch_coordinator_crr_total",
                "ContainerRecreateRequests finished, by result.",
                "result",
            )?,
        })
    }
}
