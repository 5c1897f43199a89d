//! What the report API does once a caller is authenticated: check that the request's pod runs on
//! the caller's node, then merge the report into status or set the readiness gate.

use std::time::Instant;

use futures::future::OptionFuture;
use http::HeaderMap;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::ResourceExt;

use relaunch_api::report::{ReadinessAnswer, ReadinessRequest, RecreateReport, RequestRef};
use relaunch_api::{
    ContainerRecreateRequest, ContainerRecreateRequestStatus, READINESS_GATE, RecreatePhase,
};

use super::auth::{AuthFailure, NodeClaim, bearer_token, identify};
use crate::admission::{Admission, admit, has_exec};
use crate::cluster::object_reference;
use crate::context::Context;
use crate::error::ClusterError;
use crate::error_policy::error_policy;
use crate::events::{self, Event, is_rollout_request};
use crate::lifecycle;
use crate::merge::{check_containers, check_report, merge_report};
use crate::readiness::{GateChange, GateHolder, gate_change};
use crate::scaledown::leaving::held_pod;

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
    #[error("{0}")]
    TooManyRequests(String),
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
            Refusal::TooManyRequests(_) => 429,
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
            Refusal::TooManyRequests(_) => "TooManyRequests",
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
            Refusal::TooManyRequests(_) => "too_many_requests",
        }
    }
}

/// A call to the API server that failed while `action` (for the log) on `object`: the error
/// policy logs and counts it; the agent is told `said` and to retry (503 with `Retry-After`).
fn unavailable(
    ctx: &Context,
    (action, said): (&str, &str),
    object: &dyn std::fmt::Display,
    e: ClusterError,
) -> Refusal {
    error_policy(&ctx.metrics, action, object, &e);
    Refusal::Unavailable(format!("{said}: {e}"))
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
    // A token refused a moment ago is refused again without another TokenReview.
    if let Some(failure) = ctx.tokens.refusal(token, Instant::now()) {
        return Err(auth_refusal(ctx, failure));
    }
    let review = ctx
        .cluster
        .review_token(token, &ctx.settings.audience)
        .await
        .map_err(|e| {
            unavailable(
                ctx,
                ("reviewing an agent's token", "TokenReview failed"),
                &"TokenReview",
                e,
            )
        })?;
    let claim = identify(&review, &ctx.settings.audience, &ctx.settings.agents).map_err(|f| {
        ctx.tokens.refuse(token, f.clone(), Instant::now());
        auth_refusal(ctx, f)
    })?;
    let node = match claim {
        NodeClaim::Node(node) => node,
        NodeClaim::Pod { name, uid } => {
            let pod = ctx
                .cluster
                .get_pod(&ctx.settings.agents.namespace, &name)
                .await
                .map_err(|e| {
                    let object = format!("Pod {}/{name}", ctx.settings.agents.namespace);
                    unavailable(
                        ctx,
                        ("reading the agent's pod", "cannot read the agent's pod"),
                        &object,
                        e,
                    )
                })?;
            let node = pod
                .filter(|p| uid.is_none() || p.metadata.uid == uid)
                .and_then(|p| p.spec.and_then(|s| s.node_name))
                .filter(|n| !n.is_empty());
            match node {
                Some(node) => node,
                None => {
                    let failure = AuthFailure::PodNotOnNode(name);
                    ctx.tokens.refuse(token, failure.clone(), Instant::now());
                    return Err(auth_refusal(ctx, failure));
                }
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

/// The request and its pod, if the pod runs on `node`. With `pod_hint` (the pod's name as the
/// agent read it from the request) the pod is read while the request is; the request's own
/// `spec.podName` is what counts, and a hint that differs costs one more read.
async fn authorize(
    ctx: &Context,
    node: &str,
    r: &RequestRef,
    pod_hint: Option<&str>,
) -> Result<(ContainerRecreateRequest, Pod), Refusal> {
    if !valid_object_name(&r.namespace) || !valid_object_name(&r.name) {
        return Err(Refusal::BadRequest(format!(
            "request.namespace and request.name must be Kubernetes object names, got {:?}/{:?}",
            r.namespace, r.name
        )));
    }
    if let Some(pod) = pod_hint.filter(|name| !valid_object_name(name)) {
        return Err(Refusal::BadRequest(format!(
            "podName must be a Kubernetes object name, got {pod:?}"
        )));
    }
    let read_hinted =
        OptionFuture::from(pod_hint.map(|name| ctx.cluster.get_pod(&r.namespace, name)));
    let (crr, hinted) = tokio::join!(ctx.cluster.get_request(&r.namespace, &r.name), read_hinted);
    let crr = crr
        .map_err(|e| {
            let object = format!("ContainerRecreateRequest {}/{}", r.namespace, r.name);
            unavailable(
                ctx,
                ("reading the request", "cannot read the request"),
                &object,
                e,
            )
        })?
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
    let pod = match hinted.filter(|_| pod_hint == Some(pod_name.as_str())) {
        Some(read) => read,
        None => ctx.cluster.get_pod(&r.namespace, pod_name).await,
    };
    let pod = pod
        .map_err(|e| {
            let object = format!("Pod {}/{pod_name}", r.namespace);
            unavailable(ctx, ("reading the pod", "cannot read the pod"), &object, e)
        })?
        .ok_or_else(forbidden)?;
    let pod_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    if pod_node != Some(node) {
        return Err(forbidden());
    }
    Ok((crr, pod))
}

fn request_object(crr: &ContainerRecreateRequest) -> String {
    format!(
        "ContainerRecreateRequest {}/{}",
        crr.namespace().unwrap_or_default(),
        crr.name_any()
    )
}

/// The outcome of a report: the request's status afterwards and whether it was written.
pub struct Applied {
    pub status: ContainerRecreateRequestStatus,
    /// Whether the report changed the status (refreshing `lastReportTime` alone does not count).
    pub written: bool,
}

/// Merges `report` from the agent on `node` into its request's status.
pub async fn apply_report(
    ctx: &Context,
    node: &str,
    report: &RecreateReport,
) -> Result<Applied, Refusal> {
    // Before anything else: a refused report neither admits its request nor counts as a sign
    // of the agent's life.
    let report = &check_report(report, Timestamp::now()).map_err(|e| {
        tracing::info!(
            request = %format!("{}/{}", report.request.namespace, report.request.name),
            node,
            "report refused: {e}"
        );
        Refusal::BadRequest(e.to_string())
    })?;
    for _ in 0..WRITE_ATTEMPTS {
        let (crr, pod) = authorize(ctx, node, &report.request, report.pod_name.as_deref()).await?;
        // A report the request cannot contain is refused before it admits the request.
        check_containers(&crr.spec, report).map_err(|e| Refusal::BadRequest(e.to_string()))?;
        let now = Timestamp::now();
        ctx.heartbeats.record(&report.request.uid, now);
        let (crr, base) = match crr.status.clone() {
            Some(status) => (crr, status),
            // The agent saw the request before admission did (the CLI labels requests at
            // creation): admit it here, with the pod just read.
            None => match admit_here(ctx, crr, &pod, now).await? {
                Attempt::Done(Admitted::Admitted(admitted)) => *admitted,
                Attempt::Done(Admitted::Refused(applied)) => return Ok(applied),
                Attempt::Retry => continue,
            },
        };
        let mut merged = merge_report(&crr.spec, Some(&base), report, now)
            .map_err(|e| Refusal::BadRequest(e.to_string()))?;
        // A report that brings nothing new still tells every replica the agent is alive, through
        // `lastReportTime`, throttled to one write per quarter agent timeout.
        let heartbeat_only = !merged.changed && crr.status.is_some();
        if heartbeat_only
            && !lifecycle::heartbeat_due(&merged.status, now, ctx.settings.agent_timeout)
        {
            return Ok(Applied {
                status: merged.status,
                written: false,
            });
        }
        merged.status.last_report_time = Some(MicroTime(now));
        let write = ctx
            .cluster
            .write_status(&crr, crr.status.as_ref(), &merged.status)
            .await;
        if let Attempt::Retry = settle(ctx, WRITING_STATUS, &crr, write)? {
            continue;
        }
        if heartbeat_only {
            tracing::debug!(
                request = %format!("{}/{}", report.request.namespace, report.request.name),
                node,
                "lastReportTime refreshed"
            );
            return Ok(Applied {
                status: merged.status,
                written: false,
            });
        }
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
        let events = if is_rollout_request(&crr) {
            events::rollout_request_outcome(&merged.steps, &crr, &merged.status)
                .into_iter()
                .collect()
        } else {
            (merged.steps.iter())
                .map(|s| events::for_step(s, &crr))
                .collect()
        };
        ctx.cluster
            .record(&crr, Some(object_reference(&pod)), events);
        return Ok(Applied {
            status: merged.status,
            written: true,
        });
    }
    Err(Refusal::Unavailable(
        "the request kept changing while the report was merged; retry".into(),
    ))
}

/// A write that either happened or lost a race and is taken again on a fresh read.
enum Attempt<T> {
    Done(T),
    Retry,
}

/// What admitting a request in the report API came to.
enum Admitted {
    /// Admitted (labelled if needed): the request as it is now and its first status.
    Admitted(Box<(ContainerRecreateRequest, ContainerRecreateRequestStatus)>),
    /// Refused: its Failed status is written.
    Refused(Applied),
}

/// A write's outcome: done, lost a race (retry on a fresh read), or failed (503: the agent
/// retries). Either error goes through the error policy.
fn settle<T>(
    ctx: &Context,
    (action, said): (&str, &str),
    crr: &ContainerRecreateRequest,
    written: Result<T, ClusterError>,
) -> Result<Attempt<T>, Refusal> {
    match written {
        Ok(value) => Ok(Attempt::Done(value)),
        Err(e) if e.is_conflict() => {
            error_policy(&ctx.metrics, action, &request_object(crr), &e);
            Ok(Attempt::Retry)
        }
        Err(e) => Err(unavailable(ctx, (action, said), &request_object(crr), e)),
    }
}

/// What a failed status write is logged as and what the agent is told.
const WRITING_STATUS: (&str, &str) = ("writing status", "cannot write status");

/// Admits a request that has no status yet, as the request controller would: not while a
/// ScaleDown decommissions its pod (409, nothing written; the request controller admits it
/// once the pod stays or fails it once the pod is gone).
async fn admit_here(
    ctx: &Context,
    crr: ContainerRecreateRequest,
    pod: &Pod,
    now: Timestamp,
) -> Result<Attempt<Admitted>, Refusal> {
    if let Some(scaledown) = scaledown_holding(ctx, pod).await? {
        return Err(Refusal::Conflict(format!(
            "pod {}/{} is being decommissioned by ScaleDown {scaledown}; request {} is admitted once it is done with the pod",
            pod.namespace().unwrap_or_default(),
            pod.name_any(),
            crr.name_any()
        )));
    }
    let Some(exec) = ctx
        .exec_policy
        .verdict()
        .or_else(|| (!has_exec(&crr)).then(|| ctx.exec_policy.current()))
    else {
        return Err(Refusal::Unavailable(
            "the coordinator has not read the exec admission policies yet; retry".into(),
        ));
    };
    match admit(&crr, Some(pod), &exec) {
        Admission::Admit { labels } => {
            // Admission in the controller is skipped once a status exists: label here.
            let crr = if labels.is_empty() {
                crr
            } else {
                match settle(
                    ctx,
                    ("labelling", "cannot label the request"),
                    &crr,
                    ctx.cluster.add_labels(&crr, &labels).await,
                )? {
                    Attempt::Done(labelled) => labelled,
                    Attempt::Retry => return Ok(Attempt::Retry),
                }
            };
            let status = ContainerRecreateRequestStatus {
                observed_generation: crr.metadata.generation,
                admitted_generation: crr.metadata.generation,
                ..Default::default()
            };
            Ok(Attempt::Done(Admitted::Admitted(Box::new((crr, status)))))
        }
        Admission::Refuse { message } => {
            let status = lifecycle::failed(&[], None, &message, now);
            let write = ctx.cluster.write_status(&crr, None, &status).await;
            if let Attempt::Retry = settle(ctx, WRITING_STATUS, &crr, write)? {
                return Ok(Attempt::Retry);
            }
            ctx.metrics.crrs.with_label_values(&["refused"]).inc();
            let event = Event::warning("Refused", message);
            ctx.cluster
                .record(&crr, Some(object_reference(pod)), vec![event]);
            Ok(Attempt::Done(Admitted::Refused(Applied {
                status,
                written: true,
            })))
        }
    }
}

/// The ScaleDown decommissioning `pod`, if any: as this replica's ScaleDown controller last
/// published it, or, on a replica that does not lead, as the API says now.
async fn scaledown_holding(ctx: &Context, pod: &Pod) -> Result<Option<String>, Refusal> {
    let uid = pod.uid().unwrap_or_default();
    if let Some(published) = ctx.leaving.published(&uid) {
        return Ok(published);
    }
    let namespace = pod.namespace().unwrap_or_default();
    let scaledowns = ctx.cluster.list_scaledowns(&namespace).await.map_err(|e| {
        let object = format!("ScaleDowns in {namespace}");
        unavailable(
            ctx,
            ("reading the ScaleDowns", "cannot read the ScaleDowns"),
            &object,
            e,
        )
    })?;
    Ok(scaledowns
        .iter()
        .filter_map(held_pod)
        .find_map(|(held, by)| (held == uid).then_some(by)))
}

/// Holds or releases the pod's readiness gate for the agent on `node`. The change is decided
/// on the pod as just read and written only to that version; when the pod changed meanwhile
/// (409), it is read and decided again.
pub async fn apply_readiness(
    ctx: &Context,
    node: &str,
    request: &ReadinessRequest,
) -> Result<ReadinessAnswer, Refusal> {
    let (ns, name) = (&request.request.namespace, &request.request.name);
    let holder = GateHolder::new(ns, name);
    for attempt in 0..WRITE_ATTEMPTS {
        let (crr, pod) = authorize(ctx, node, &request.request, None).await?;
        if attempt == 0 {
            ctx.heartbeats
                .record(&request.request.uid, Timestamp::now());
        }
        let finished = crr.status.as_ref().is_some_and(|s| s.phase.is_finished());
        if finished && !request.ready {
            return Err(Refusal::Conflict(format!(
                "ContainerRecreateRequest {ns}/{name} is finished; its pod is not held NotReady any more"
            )));
        }
        let ready = match gate_change(&pod, request.ready, &holder) {
            GateChange::NotGated => {
                return Ok(ReadinessAnswer {
                    gated: false,
                    message: Some(format!(
                        "pod {ns}/{} has no readiness gate {READINESS_GATE} in spec.readinessGates; its readiness cannot be held",
                        pod.name_any()
                    )),
                });
            }
            GateChange::Unchanged => {
                return Ok(ReadinessAnswer {
                    gated: true,
                    message: None,
                });
            }
            GateChange::HeldByOther(other) => {
                return Ok(ReadinessAnswer {
                    gated: true,
                    message: Some(format!(
                        "pod {ns}/{} is held NotReady by ContainerRecreateRequest {other}; left as it is",
                        pod.name_any()
                    )),
                });
            }
            GateChange::Set { ready } => ready,
        };
        let write = ctx.cluster.set_gate(&pod, ready, &holder).await;
        let object = format!("Pod {ns}/{}", pod.name_any());
        match write {
            Ok(()) => {}
            Err(e) if e.is_conflict() => {
                error_policy(&ctx.metrics, "setting the readiness gate", &object, &e);
                continue;
            }
            Err(e) => {
                return Err(unavailable(
                    ctx,
                    (
                        "setting the readiness gate",
                        "cannot update the pod's readiness gate",
                    ),
                    &object,
                    e,
                ));
            }
        }
        let event = events::gate_set(ready, &pod.name_any());
        ctx.cluster
            .record(&crr, Some(object_reference(&pod)), vec![event]);
        return Ok(ReadinessAnswer {
            gated: true,
            message: None,
        });
    }
    Err(Refusal::Unavailable(
        "the pod kept changing while its readiness gate was set; retry".into(),
    ))
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
}
