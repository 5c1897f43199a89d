//! The agent's metrics (names are stable API, see `docs/metrics.md`).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

use crate::error::ShellError;

/// Everything the agent records, registered in the registry `/metrics` serves.
#[derive(Clone)]
pub struct AgentMetrics {
    /// `relaunch_agent_recreates_total{result}`: succeeded | failed | refused.
    pub recreates: IntCounterVec,
    /// `relaunch_agent_recreate_duration_seconds{phase}`.
    pub duration: HistogramVec,
    pub in_flight: IntGauge,
    /// `relaunch_agent_reports_total{result}`: delivered | retried | rejected.
    pub reports: IntCounterVec,
    pub report_queue_depth: IntGauge,
    /// `relaunch_agent_reports_backing_off`: requests whose reports wait out a back-off.
    pub reports_backing_off: IntGauge,
    /// `relaunch_agent_watch_restarts_total{resource}`: pods | containerrecreaterequests.
    pub watch_restarts: IntCounterVec,
    /// `relaunch_agent_errors_total{kind}`: errors the shell met, counted by
    /// [`crate::error_policy`].
    pub errors: IntCounterVec,
}

impl AgentMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self::unregistered()?;
        registry.register(Box::new(m.recreates.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.in_flight.clone()))?;
        registry.register(Box::new(m.reports.clone()))?;
        registry.register(Box::new(m.report_queue_depth.clone()))?;
        registry.register(Box::new(m.reports_backing_off.clone()))?;
        registry.register(Box::new(m.watch_restarts.clone()))?;
        registry.register(Box::new(m.errors.clone()))?;
        Ok(m)
    }

    /// Metrics recorded but exposed nowhere (tests).
    pub fn unregistered() -> prometheus::Result<Self> {
        let recreates = IntCounterVec::new(
            Opts::new(
                "relaunch_agent_recreates_total",
                "Finished container recreate requests by result (succeeded, failed, refused).",
            ),
            &["result"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "relaunch_agent_recreate_duration_seconds",
                "Time spent in each step of a container recreate (unready, shutdown, stop, restart, ready) and in total.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                300.0, 600.0,
            ]),
            &["phase"],
        )?;
        let in_flight = IntGauge::new(
            "relaunch_agent_recreates_in_flight",
            "Recreate requests being carried out on this node now.",
        )?;
        let reports = IntCounterVec::new(
            Opts::new(
                "relaunch_agent_reports_total",
                "Progress report delivery attempts by result (delivered, retried, rejected).",
            ),
            &["result"],
        )?;
        let report_queue_depth = IntGauge::new(
            "relaunch_agent_report_queue_depth",
            "Requests whose latest progress report waits for delivery to the coordinator.",
        )?;
        let reports_backing_off = IntGauge::new(
            "relaunch_agent_reports_backing_off",
            "Requests whose latest progress report could not be delivered and waits out its own back-off (the other requests' reports go on).",
        )?;
        let watch_restarts = IntCounterVec::new(
            Opts::new(
                "relaunch_agent_watch_restarts_total",
                "Watch streams re-established after an error or a resync, by resource.",
            ),
            &["resource"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "relaunch_agent_errors_total",
                "Errors the agent recovered from or gave up on (watches, coordinator, container runtime, journal), by kind.",
            ),
            &["kind"],
        )?;
        // Present from the start, so `increase()` sees the first error of each kind.
        for kind in ShellError::KINDS {
            errors.with_label_values(&[kind]);
        }
        Ok(Self {
            recreates,
            duration,
            in_flight,
            reports,
            report_queue_depth,
            reports_backing_off,
            watch_restarts,
            errors,
        })
    }
}
