//! What the report API does once a caller is authenticated: check that the request's pod runs on
//! the caller's node, then merge the report into status or set the readiness gate.

use std::time::Instant;

use http::HeaderMap;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use relaunch_api::report::{ReadinessAnswer, ReadinessRequest, RecreateReport, RequestRef};
use relaunch_api::{
    ContainerRecreateRequest, ContainerRecreateRequestStatus, LABEL_ROLLING_RESTART,
    READINESS_GATE, RecreatePhase,
};

use super::admission::{Admission, admit};
use super::auth::{AuthFailure, NodeClaim, bearer_token, identify};
use super::cluster::{is_conflict, object_reference};
use super::merge::{Step, merge_report};
use super::readiness::{GateChange, gate_change};
use super::{Context, Note, lifecycle};

/// How often a status write is retried after losing a race (409) before giving up with 503.
const WRITE_ATTEMPTS: usize = 8;

/// Why a request to the report API was refused; each is one HTTP answer with an `ErrorBody`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Unauthenticated(AuthFailure),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Unauthenticated(_) => 401,
            Refusal::Forbidden(_) => 403,
            Refusal::BadRequest(_) => 400,
            Refusal::NotFound(_) => 404,
            Refusal::PayloadTooLarge(_) => 413,
            Refusal::UnsupportedMediaType(_) => 415,
            Refusal::MethodNotAllowed(_) => 405,
            Refusal::Conflict(_) => 409,
            Refusal::Unavailable(_) => 503,
        }
    }

    /// The `ErrorDetail.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated(_) => "Unauthenticated",
            Refusal::Forbidden(_) => "Forbidden",
            Refusal::BadRequest(_) => "BadRequest",
            Refusal::NotFound(_) => "NotFound",
            Refusal::PayloadTooLarge(_) => "PayloadTooLarge",
            Refusal::UnsupportedMediaType(_) => "UnsupportedMediaType",
            Refusal::MethodNotAllowed(_) => "MethodNotAllowed",
            Refusal::Conflict(_) => "Conflict",
            Refusal::Unavailable(_) => "Unavailable",
        }
    }

    /// The `result` label of the request counters.
    pub fn metric_result(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated(_) => "unauthenticated",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::BadRequest(_) => "bad_request",
            Refusal::NotFound(_) => "not_found",
            Refusal::PayloadTooLarge(_) => "payload_too_large",
            Refusal::UnsupportedMediaType(_) => "unsupported_media_type",
            Refusal::MethodNotAllowed(_) => "method_not_allowed",
            Refusal::Conflict(_) => "conflict",
            Refusal::Unavailable(_) => "unavailable",
        }
    }
}

fn unavailable(what: &str, e: &kube::Error) -> Refusal {
    Refusal::Unavailable(format!("{what}: {e}"))
}

/// The node the caller's token binds it to, or why it may not call.
pub async fn authenticate(ctx: &Context, headers: &HeaderMap) -> Result<String, Refusal> {
    let header = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = bearer_token(header).map_err(|f| auth_refusal(ctx, f))?;
    if let Some(node) = ctx.tokens.get(token, Instant::now()) {
        return Ok(node);
    }
    let review = ctx
        .cluster
        .review_token(token, &ctx.settings.audience)
        .await
        .map_err(|e| unavailable("TokenReview failed", &e))?;
    let claim = identify(&review, &ctx.settings.audience, &ctx.settings.agents)
        .map_err(|f| auth_refusal(ctx, f))?;
    let node = match claim {
        NodeClaim::Node(node) => node,
        NodeClaim::Pod { name, uid } => {
            let pod = ctx
                .cluster
                .get_pod(&ctx.settings.agents.namespace, &name)
                .await
                .map_err(|e| unavailable("cannot read the agent's pod", &e))?;
            let node = pod
                .filter(|p| uid.is_none() || p.metadata.uid == uid)
                .and_then(|p| p.spec.and_then(|s| s.node_name))
                .filter(|n| !n.is_empty());
            match node {
                Some(node) => node,
                None => return Err(auth_refusal(ctx, AuthFailure::PodNotOnNode(name))),
            }
        }
    };
    ctx.tokens.insert(token, node.clone(), Instant::now());
    Ok(node)
}

fn auth_refusal(ctx: &Context, failure: AuthFailure) -> Refusal {
    ctx.metrics
        .auth_failures
        .with_label_values(&[failure.metric_reason()])
        .inc();
    tracing::info!(reason = failure.metric_reason(), "report API: {failure}");
    match failure {
        AuthFailure::NoNodeBinding | AuthFailure::PodNotOnNode(_) => {
            Refusal::Forbidden(failure.to_string())
        }
        other => Refusal::Unauthenticated(other),
    }
}

/// Whether `name` can be a Kubernetes object name or namespace (a DNS subdomain). Names go into
/// API paths, so anything else is refused before it reaches the API.
pub fn valid_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !name.contains("..")
}

/// The request and its pod, if the pod runs on `node`.
async fn authorize(
    ctx: &Context,
    node: &str,
    r: &RequestRef,
) -> Result<(ContainerRecreateRequest, Pod), Refusal> {
    if !valid_object_name(&r.namespace) || !valid_object_name(&r.name) {
        return Err(Refusal::BadRequest(format!(
            "request.namespace and request.name must be Kubernetes object names, got {:?}/{:?}",
            r.namespace, r.name
        )));
    }
    let crr = ctx
        .cluster
        .get_request(&r.namespace, &r.name)
        .await
        .map_err(|e| unavailable("cannot read the request", &e))?
        .ok_or_else(|| {
            Refusal::NotFound(format!(
                "ContainerRecreateRequest {}/{} not found",
                r.namespace, r.name
            ))
        })?;
    if crr.metadata.uid.as_deref() != Some(r.uid.as_str()) {
        return Err(Refusal::NotFound(format!(
            "ContainerRecreateRequest {}/{} with UID {} not found (it was deleted and re-created)",
            r.namespace, r.name, r.uid
        )));
    }
    let pod_name = &crr.spec.pod_name;
    let forbidden = || {
        ctx.metrics
            .auth_failures
            .with_label_values(&["wrong_node"])
            .inc();
        Refusal::Forbidden(format!(
            "pod {}/{pod_name} of request {} does not run on node {node}",
            r.namespace, r.name
        ))
    };
    if !valid_object_name(pod_name) {
        return Err(forbidden());
    }
    let pod = ctx
        .cluster
        .get_pod(&r.namespace, pod_name)
        .await
        .map_err(|e| unavailable("cannot read the pod", &e))?
        .ok_or_else(forbidden)?;
    let pod_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    if pod_node != Some(node) {
        return Err(forbidden());
    }
    Ok((crr, pod))
}

/// The outcome of a report: the request's status afterwards and whether it was written.
pub struct Applied {
    pub status: ContainerRecreateRequestStatus,
    pub written: bool,
}

/// Merges `report` from the agent on `node` into its request's status.
pub async fn apply_report(
    ctx: &Context,
    node: &str,
    report: &RecreateReport,
) -> Result<Applied, Refusal> {
    for _ in 0..WRITE_ATTEMPTS {
        let (mut crr, pod) = authorize(ctx, node, &report.request).await?;
        let now = Timestamp::now();
        ctx.activity.record(&report.request.uid, now);
        let mut notes = Vec::new();
        let base = match &crr.status {
            Some(status) => status.clone(),
            // The agent saw the request before admission did (the CLI labels requests at
            // creation): admit it here, with the pod just read.
            None => match admit(&crr, Some(&pod)) {
                Admission::Admit { labels } => {
                    // Admission in the controller is skipped once a status exists: label here.
                    if !labels.is_empty() {
                        match ctx.cluster.add_labels(&crr, &labels).await {
                            Ok(labelled) => crr = labelled,
                            Err(e) if is_conflict(&e) => continue,
                            Err(e) => return Err(unavailable("cannot label the request", &e)),
                        }
                    }
                    ContainerRecreateRequestStatus {
                        observed_generation: crr.metadata.generation,
                        ..Default::default()
                    }
                }
                Admission::Refuse { message } => {
                    let status = lifecycle::failed(None, &message, now);
                    match ctx.cluster.write_status(&crr, &status).await {
                        Ok(_) => {
                            ctx.metrics.crrs.with_label_values(&["refused"]).inc();
                            let note = Note::warning("Refused", message);
                            ctx.cluster
                                .record(&crr, Some(object_reference(&pod)), vec![note]);
                            return Ok(Applied {
                                status,
                                written: true,
                            });
                        }
                        Err(e) if is_conflict(&e) => continue,
                        Err(e) => return Err(unavailable("cannot write status", &e)),
                    }
                }
            },
        };
        let merged = merge_report(&crr.spec, Some(&base), report, now)
            .map_err(|e| Refusal::BadRequest(e.to_string()))?;
        if !merged.changed && crr.status.is_some() {
            return Ok(Applied {
                status: merged.status,
                written: false,
            });
        }
        match ctx.cluster.write_status(&crr, &merged.status).await {
            Ok(_) => {
                tracing::info!(
                    request = %format!("{}/{}", report.request.namespace, report.request.name),
                    node,
                    sequence = report.sequence,
                    phase = merged.status.phase.as_str(),
                    "status updated from report"
                );
                if merged.status.phase.is_finished() {
                    let result = match merged.status.phase {
                        RecreatePhase::Succeeded => "succeeded",
                        _ => "failed",
                    };
                    ctx.metrics.crrs.with_label_values(&[result]).inc();
                }
                if is_rollout_request(&crr) {
                    notes.extend(outcome_note(&merged.steps, &crr, &merged.status));
                } else {
                    notes.extend(merged.steps.iter().map(|s| note_for(s, &crr)));
                }
                ctx.cluster
                    .record(&crr, Some(object_reference(&pod)), notes);
                return Ok(Applied {
                    status: merged.status,
                    written: true,
                });
            }
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(unavailable("cannot write status", &e)),
        }
    }
    Err(Refusal::Unavailable(
        "the request kept changing while the report was merged; retry".into(),
    ))
}

/// Whether a RollingRestart created the request: such requests are told by one outcome Event
/// on their pod, not by an Event per step (a 1,000-pod rollout would write ~9,000 Events).
pub fn is_rollout_request(crr: &ContainerRecreateRequest) -> bool {
    crr.labels().contains_key(LABEL_ROLLING_RESTART)
}

/// The one Event of a RollingRestart's request, once it finished: `ContainerRestarted` naming
/// each container restarted in place, or the `Failed` Warning.
pub fn outcome_note(
    steps: &[Step],
    crr: &ContainerRecreateRequest,
    status: &ContainerRecreateRequestStatus,
) -> Option<Note> {
    let pod = &crr.spec.pod_name;
    steps.iter().find_map(|step| match step {
        Step::Failed { message } => Some(Note::warning("Failed", message.clone())),
        Step::Succeeded => {
            let id = |id: &Option<String>| id.clone().unwrap_or_else(|| "<unknown>".into());
            let restarted: Vec<String> = status
                .container_recreate_states
                .iter()
                .map(|c| {
                    format!(
                        "{} {} -> {}{}",
                        c.name,
                        id(&c.previous_container_id),
                        id(&c.new_container_id),
                        c.restart_count
                            .map(|n| format!(", restartCount {n}"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            Some(Note::normal(
                "ContainerRestarted",
                format!(
                    "pod {pod} restarted in place by RollingRestart {}: {}",
                    crr.labels()
                        .get(LABEL_ROLLING_RESTART)
                        .map_or("", String::as_str),
                    restarted.join("; ")
                ),
            ))
        }
        _ => None,
    })
}

/// The Event for a step.
pub fn note_for(step: &Step, crr: &ContainerRecreateRequest) -> Note {
    let pod = &crr.spec.pod_name;
    let id = |id: &Option<String>| id.clone().unwrap_or_else(|| "<unknown>".into());
    match step {
        Step::Started => {
            let names: Vec<&str> = crr
                .spec
                .containers
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            Note::normal(
                "Recreating",
                format!(
                    "recreating container{} {} of pod {pod} in place",
                    if names.len() == 1 { "" } else { "s" },
                    names.join(", ")
                ),
            )
        }
        Step::ContainerStopped {
            container,
            previous_id,
        } => Note::normal(
            "ContainerStopped",
            format!(
                "stopped container {container} of pod {pod} ({})",
                id(previous_id)
            ),
        ),
        Step::ContainerRestarted {
            container,
            previous_id,
            new_id,
            restart_count,
        } => Note::normal(
            "ContainerRestarted",
            format!(
                "container {container} of pod {pod} restarted in place: {} -> {new_id}{}",
                id(previous_id),
                restart_count
                    .map(|n| format!(", restartCount {n}"))
                    .unwrap_or_default()
            ),
        ),
        Step::Succeeded => Note::normal(
            "Succeeded",
            format!("recreated the requested containers of pod {pod}"),
        ),
        Step::Failed { message } => Note::warning("Failed", message.clone()),
    }
}

/// Holds or releases the pod's readiness gate for the agent on `node`.
pub async fn apply_readiness(
    ctx: &Context,
    node: &str,
    request: &ReadinessRequest,
) -> Result<ReadinessAnswer, Refusal> {
    let (crr, pod) = authorize(ctx, node, &request.request).await?;
    ctx.activity.record(&request.request.uid, Timestamp::now());
    let (ns, name) = (&request.request.namespace, &request.request.name);
    let finished = crr.status.as_ref().is_some_and(|s| s.phase.is_finished());
    if finished && !request.ready {
        return Err(Refusal::Conflict(format!(
            "ContainerRecreateRequest {ns}/{name} is finished; its pod is not held NotReady any more"
        )));
    }
    match gate_change(&pod, request.ready, ns, name) {
        GateChange::NotGated => Ok(ReadinessAnswer {
            gated: false,
            message: Some(format!(
                "pod {ns}/{} has no readiness gate {READINESS_GATE} in spec.readinessGates; its readiness cannot be held",
                pod.name_any()
            )),
        }),
        GateChange::Unchanged => Ok(ReadinessAnswer {
            gated: true,
            message: None,
        }),
        GateChange::Set { ready } => {
            ctx.cluster
                .set_gate(ns, &pod.name_any(), ready, name)
                .await
                .map_err(|e| unavailable("cannot update the pod's readiness gate", &e))?;
            let note = if ready {
                Note::normal(
                    "ReadinessReleased",
                    format!(
                        "{READINESS_GATE} set True: pod {} may receive traffic again",
                        pod.name_any()
                    ),
                )
            } else {
                Note::normal(
                    "HeldNotReady",
                    format!(
                        "{READINESS_GATE} set False: pod {} is held NotReady before its containers are recreated",
                        pod.name_any()
                    ),
                )
            };
            ctx.cluster
                .record(&crr, Some(object_reference(&pod)), vec![note]);
            Ok(ReadinessAnswer {
                gated: true,
                message: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_checked_before_they_reach_a_path() {
        assert!(valid_object_name("db-0"));
        assert!(valid_object_name("relaunch.dev-x"));
        assert!(!valid_object_name(""));
        assert!(!valid_object_name("../secrets"));
        assert!(!valid_object_name("a/b"));
        assert!(!valid_object_name("A"));
        assert!(!valid_object_name("-a"));
        assert!(!valid_object_name("a..b"));
        assert!(!valid_object_name(&"a".repeat(254)));
    }

    #[test]
    fn refusals_map_to_http_codes() {
        assert_eq!(
            Refusal::Unauthenticated(AuthFailure::MissingToken).status(),
            401
        );
        assert_eq!(Refusal::Forbidden(String::new()).status(), 403);
        assert_eq!(Refusal::PayloadTooLarge(1).status(), 413);
        assert_eq!(Refusal::NotFound(String::new()).reason(), "NotFound");
    }

    #[test]
    fn a_rollouts_request_is_told_by_one_outcome_event() {
        use relaunch_api::{ContainerRecreateRequestSpec, ContainerRecreateState};
        use std::collections::BTreeMap;
        let mut crr = ContainerRecreateRequest::new(
            "r",
            ContainerRecreateRequestSpec {
                pod_name: "db-0".into(),
                ..Default::default()
            },
        );
        assert!(!is_rollout_request(&crr));
        crr.metadata.labels = Some(BTreeMap::from([(
            LABEL_ROLLING_RESTART.to_string(),
            "db-restart".to_string(),
        )]));
        assert!(is_rollout_request(&crr));
        let status = ContainerRecreateRequestStatus {
            container_recreate_states: vec![ContainerRecreateState {
                name: "db".into(),
                previous_container_id: Some("containerd://old".into()),
                new_container_id: Some("containerd://new".into()),
                restart_count: Some(3),
                ..Default::default()
            }],
            ..Default::default()
        };
        let progress = [
            Step::Started,
            Step::ContainerStopped {
                container: "db".into(),
                previous_id: None,
            },
        ];
        assert_eq!(outcome_note(&progress, &crr, &status), None);
        let done = outcome_note(&[Step::Succeeded], &crr, &status).unwrap();
        assert_eq!((done.warning, done.reason), (false, "ContainerRestarted"));
        assert_eq!(
            done.message,
            "pod db-0 restarted in place by RollingRestart db-restart: db containerd://old -> containerd://new, restartCount 3"
        );
        let failed = outcome_note(
            &[
                Step::Started,
                Step::Failed {
                    message: "boom".into(),
                },
            ],
            &crr,
            &status,
        )
        .unwrap();
        assert_eq!(
            (failed.warning, failed.reason, failed.message.as_str()),
            (true, "Failed", "boom")
        );
    }
}
