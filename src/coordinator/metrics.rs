//! The coordinator's metrics, every one of them (names are stable API, see `docs/metrics.md`).

use std::collections::BTreeMap;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::error::ClusterError;

/// Counters the report API and the controllers update, and the rollout gauges.
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
    /// `relaunch_coordinator_errors_total{kind}`: failed calls to the Kubernetes API, counted by
    /// [`crate::error_policy`].
    pub errors: IntCounterVec,
    /// `relaunch_coordinator_leader`: 1 while this replica leads (holds the Lease and may
    /// write), 0 otherwise.
    pub leader: IntGauge,
    /// The `relaunch_rollout*` metrics.
    pub rollouts: RolloutMetrics,
    /// The `relaunch_scaledown_*` metrics.
    pub scaledowns: crate::scaledown::ScaleDownMetrics,
    /// The `relaunch_reload_*` metrics.
    pub reload: crate::reload::ReloadMetrics,
    /// The `relaunch_scaledown_drain*` metrics.
    pub drains: crate::drain::DrainMetrics,
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
        let errors = counter(
            "relaunch_coordinator_errors_total",
            "Failed calls to the Kubernetes API by the controllers, the report API and leader election, by kind.",
            "kind",
        )?;
        // Present from the start, so `increase()` sees the first error of each kind.
        for kind in ClusterError::KINDS {
            errors.with_label_values(&[kind]);
        }
        let leader = IntGauge::new(
            "relaunch_coordinator_leader",
            "1 while this replica leads (holds the leader-election Lease and runs the controllers), 0 otherwise.",
        )?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Self {
            leader,
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
            errors,
            rollouts: RolloutMetrics::register(registry)?,
            scaledowns: crate::scaledown::ScaleDownMetrics::register(registry)?,
            reload: crate::reload::ReloadMetrics::register(registry)?,
            drains: crate::drain::DrainMetrics::register(registry)?,
        })
    }
}

/// The rollout metrics.
#[derive(Clone)]
pub struct RolloutMetrics {
    /// `relaunch_rollouts_active`: rollouts neither Succeeded nor Failed.
    pub active: IntGauge,
    /// `relaunch_rollout_pods{state}`: target pods of active rollouts by state.
    pub pods: IntGaugeVec,
    /// `relaunch_rollout_blocked{reason}`: active rollouts that cannot start a batch, by reason.
    pub blocked: IntGaugeVec,
    /// `relaunch_rollout_duration_seconds`: from start to completion.
    pub duration: HistogramVec,
}

/// What the active rollouts add up to in one pass of the rollout controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutGauges {
    /// Rollouts neither Succeeded nor Failed.
    pub active: i64,
    /// Target pods by state (`restarted`, `failed`, `in_progress`, `pending`).
    pub pods: BTreeMap<&'static str, i64>,
    /// Rollouts that cannot start a batch, by the Blocked condition's reason.
    pub blocked: BTreeMap<&'static str, i64>,
}

/// The `state` labels of `relaunch_rollout_pods`, always all shown.
pub const POD_STATES: [&str; 4] = ["restarted", "failed", "in_progress", "pending"];

impl RolloutMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let active = IntGauge::new(
            "relaunch_rollouts_active",
            "RollingRestarts in progress or paused.",
        )?;
        let pods = IntGaugeVec::new(
            Opts::new(
                "relaunch_rollout_pods",
                "Target pods of active RollingRestarts, by state.",
            ),
            &["state"],
        )?;
        let blocked = IntGaugeVec::new(
            Opts::new(
                "relaunch_rollout_blocked",
                "Active RollingRestarts that cannot start their next batch, by reason.",
            ),
            &["reason"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "relaunch_rollout_duration_seconds",
                "Time from a RollingRestart's start to its completion, by result.",
            )
            .buckets(vec![
                10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
            ]),
            &["result"],
        )?;
        registry.register(Box::new(active.clone()))?;
        registry.register(Box::new(pods.clone()))?;
        registry.register(Box::new(blocked.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self {
            active,
            pods,
            blocked,
            duration,
        })
    }

    /// Shows what one pass found.
    pub fn set(&self, gauges: &RolloutGauges) {
        self.active.set(gauges.active);
        for state in POD_STATES {
            self.pods
                .with_label_values(&[state])
                .set(gauges.pods.get(state).copied().unwrap_or(0));
        }
        self.blocked.reset();
        for (reason, n) in &gauges.blocked {
            self.blocked.with_label_values(&[reason]).set(*n);
        }
    }

    /// Shows nothing: a replica that stopped leading reports nothing about rollouts it no
    /// longer drives.
    pub fn clear(&self) {
        self.active.set(0);
        self.pods.reset();
        self.blocked.reset();
    }
}
