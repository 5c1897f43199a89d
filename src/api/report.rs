//! The agent→coordinator protocol (version `v1`), JSON over HTTP(S), documented in `docs/api.md`.
//!
//! Every request carries the agent's projected service-account token (audience
//! [`super::COORDINATOR_AUDIENCE`]) as a bearer token.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{ContainerRecreateState, RecreatePhase};

/// Path of progress reports.
pub const REPORTS_PATH: &str = "/v1/reports";
/// Path of readiness-gate requests.
pub const READINESS_PATH: &str = "/v1/readiness";
/// Path of ScaleDown command results.
pub const SCALEDOWN_EXEC_PATH: &str = "/v1/scaledown-execs";
/// Largest request body the coordinator accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Which ContainerRecreateRequest a message is about (the UID guards against a recreated name).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// `POST /v1/scaledown-execs`: how a command a ScaleDown asked for (its `status.exec`) ended
/// on the agent's node. The coordinator writes it into `status.exec.result` if the ScaleDown
/// (by UID) still asks for `execId`, and the command's pod runs on the caller's node.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecReport {
    /// The ScaleDown (the same shape as a request reference).
    pub scale_down: RequestRef,
    pub exec_id: String,
    /// The exit code; none when the command could not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The tail of the output, or why it could not run.
    #[serde(default)]
    pub output: String,
}

/// `POST /v1/reports`: the agent's view of a request's progress. Reports are idempotent and the
/// coordinator merges them so that status only moves forward.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecreateReport {
    pub request: RequestRef,
    /// The request's `spec.podName` as the agent read it. Optional: it lets the coordinator read
    /// the pod while it reads the request; the request's own `spec.podName` is what counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Increases with every report the agent sends for this request (reset by an agent restart;
    /// the coordinator does not rely on it for ordering, only for logs).
    #[serde(default)]
    pub sequence: u64,
    pub phase: RecreatePhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the agent started the request; RFC 3339 on the wire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Timestamp>,
    /// When the request finished; RFC 3339 on the wire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Timestamp>,
    #[serde(default)]
    pub containers: Vec<ContainerRecreateState>,
}

/// `POST /v1/readiness`: hold the request's pod NotReady (`ready: false`) through the
/// `relaunch.dev/ready` readiness gate, or release it (`ready: true`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadinessRequest {
    pub request: RequestRef,
    pub ready: bool,
}

/// Answer to a readiness request.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReadinessAnswer {
    /// False when the pod has no `relaunch.dev/ready` readiness gate: its Ready condition cannot
    /// be held and the unready step has no effect on traffic.
    pub gated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Body of every 4xx/5xx answer.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ErrorDetail {
    pub code: u16,
    /// Machine-readable: `Unauthenticated`, `Forbidden`, `BadRequest`, `NotFound`,
    /// `PayloadTooLarge`, `UnsupportedMediaType`, `MethodNotAllowed`, `Conflict`,
    /// `TooManyRequests`, `Unavailable`.
    pub reason: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(times: serde_json::Value) -> serde_json::Value {
        let mut report = json!({
            "request": {"namespace": "default", "name": "r", "uid": "u"},
            "phase": "Succeeded",
        });
        if let (Some(report), Some(times)) = (report.as_object_mut(), times.as_object()) {
            report.extend(times.clone());
        }
        report
    }

    #[test]
    fn report_times_travel_as_rfc3339() {
        let wire = report(json!({
            "startTime": "2023-11-14T22:13:20Z",
            "completionTime": "2023-11-14T22:13:29.5Z",
        }));
        let parsed: RecreateReport = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(
            parsed.start_time,
            Some(Timestamp::from_second(1_700_000_000).unwrap())
        );
        let mut back = serde_json::to_value(&parsed).unwrap();
        if let Some(m) = back.as_object_mut() {
            m.remove("sequence");
            m.remove("containers");
        }
        assert_eq!(back, wire);
    }

    #[test]
    fn a_report_whose_times_are_not_rfc3339_is_refused() {
        for bad in [
            json!({"startTime": "yesterday"}),
            json!({"completionTime": ""}),
        ] {
            assert!(
                serde_json::from_value::<RecreateReport>(report(bad.clone())).is_err(),
                "{bad}"
            );
        }
    }
}
