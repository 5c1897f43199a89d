//! Per-method request counts and latencies of the CRI client.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// CRI request metrics, registered in the registry the agent exposes on `/metrics`.
#[derive(Clone)]
pub struct CriMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl CriMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self::new()?;
        registry.register(Box::new(metrics.requests.clone()))?;
        registry.register(Box::new(metrics.duration.clone()))?;
        Ok(metrics)
    }

    /// Metrics that are recorded but exposed nowhere (tools and tests that need no `/metrics`).
    #[allow(clippy::expect_used)] // the definitions are constants `new` accepts (the tests use them)
    pub fn unregistered() -> Self {
        Self::new().expect("static metric definitions are valid")
    }

    fn new() -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "relaunch_agent_cri_requests_total",
                "CRI requests by method and gRPC result code.",
            ),
            &["method", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "relaunch_agent_cri_request_duration_seconds",
                "Latency of CRI requests by method.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0, 120.0,
            ]),
            &["method"],
        )?;
        Ok(Self { requests, duration })
    }

    pub(crate) fn observe(&self, method: &str, code: tonic::Code, seconds: f64) {
        self.requests
            .with_label_values(&[method, code_label(code)])
            .inc();
        self.duration.with_label_values(&[method]).observe(seconds);
    }

    /// How many requests of `method` ended with `code` (for tests and diagnostics).
    pub fn request_count(&self, method: &str, code: tonic::Code) -> u64 {
        self.requests
            .with_label_values(&[method, code_label(code)])
            .get()
    }
}

/// gRPC codes spelled as grpc-go's `codes.Code.String()`, which Kubernetes' own CRI metrics use.
fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}
