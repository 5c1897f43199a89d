//! HTTP front of the test API server: routing, discovery, list/watch streaming, authentication,
//! injected faults, and the test bed's own control endpoint.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};

use super::access;
use super::admission::RequestAdmission;
use super::error::ApiError;
use super::patch::PatchKind;
use super::protobuf;
use super::rbac::{Attributes, ResourceAttributes, UserInfo};
use super::resources::ResourceType;
use super::schema::FieldValidation;
use super::selectors::{FieldSelector, LabelSelector};
use super::store::{Change, DeleteOptions, Selection, rv_of, with_version};
use super::table;
use super::tls;
use super::{Fault, Shared};

type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted, like the real server's 3 MiB.
const MAX_BODY: usize = 3 * 1024 * 1024;

pub(super) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            // One port, both schemes: a TLS handshake starts with 0x16, plain HTTP with a
            // method's letter, so existing `http://` clients and `https://` ones share it.
            let mut first = [0u8; 1];
            let tls = matches!(stream.peek(&mut first).await, Ok(1) if first[0] == tls::HANDSHAKE);
            let acceptor = shared.tls.acceptor.clone();
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if tls {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            } else {
                let _ = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            }
        });
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path.starts_with("/testbed/") {
        return match control(&shared, req).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
    }
    let delay = shared.faults.current_delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(code) = shared.faults.take_failure() {
        return injected_failure(code);
    }
    match route(&shared, req).await {
        Ok(response) => response,
        Err(e) => error_response(&e),
    }
}

/// An injected `500`, or `429` with `Retry-After: 1`.
fn injected_failure(code: u16) -> Response<Body> {
    let mut response = error_response(&ApiError::injected(code));
    if code == 429 {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    }
    response
}

/// `POST /testbed/v1/faults` — fault injection for out-of-process tests:
/// `{"failNext": N, "failCode": 500|429, "delayMs": D, "closeWatches": true, "expireHistory": true,
/// "inject": {"users": "...", "error": 0.1, "throttle": 0.1, "watchClose": 0.5,
/// "watchLifetimeMs": 5000, "watchGone": 0.3, "seed": 1}}` (`"inject": null` stops injecting).
/// `GET /testbed/v1/faults` — how many faults of each kind were served.
async fn control(shared: &Shared, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    if req.uri().path() != "/testbed/v1/faults" {
        return Err(ApiError::not_found_path(req.uri().path()));
    }
    if req.method() == Method::GET {
        let c = shared.faults.injected();
        return Ok(json_response(
            StatusCode::OK,
            &json!({"errors": c.errors, "throttled": c.throttled,
                    "watchesClosed": c.watches_closed, "watchesGone": c.watches_gone}),
        ));
    }
    if req.method() != Method::POST {
        return Err(ApiError::not_found_path(req.uri().path()));
    }
    let body = read_body(req).await?;
    let faults: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(&format!("invalid JSON: {e}")))?;
    if let Some(n) = faults["failNext"].as_u64() {
        let code = faults["failCode"].as_u64().unwrap_or(500) as u16;
        shared.faults.fail_next(n as u32, code);
    }
    if let Some(ms) = faults["delayMs"].as_u64() {
        shared.faults.delay(Duration::from_millis(ms));
    }
    if faults["closeWatches"] == true {
        shared.faults.close_watches();
    }
    match faults.get("inject") {
        Some(Value::Null) => shared.faults.stop_injecting(),
        Some(rates) => {
            let rate = |name: &str| rates[name].as_f64().unwrap_or(0.0);
            shared.faults.inject(super::FaultRates {
                users: rates["users"].as_str().unwrap_or_default().to_string(),
                error: rate("error"),
                throttle: rate("throttle"),
                watch_close: rate("watchClose"),
                watch_lifetime: Duration::from_millis(
                    rates["watchLifetimeMs"].as_u64().unwrap_or(5000),
                ),
                watch_gone: rate("watchGone"),
                seed: rates["seed"].as_u64().unwrap_or_default(),
            });
        }
        None => {}
    }
    if faults["expireHistory"] == true {
        shared.store.expire_history();
    }
    Ok(json_response(StatusCode::OK, &json!({"ok": true})))
}

impl Shared {
    /// Counts a request in `counts` (answered or refused).
    fn count(
        counts: &std::sync::Mutex<BTreeMap<super::RequestKind, u64>>,
        user: &UserInfo,
        requested: &ResourceAttributes,
    ) {
        let resource = if requested.subresource.is_empty() {
            requested.resource.clone()
        } else {
            format!("{}/{}", requested.resource, requested.subresource)
        };
        let kind = super::RequestKind {
            user: user.username.clone(),
            verb: requested.verb.clone(),
            resource,
        };
        if let Ok(mut counts) = counts.lock() {
            *counts.entry(kind).or_default() += 1;
        }
    }

    /// Records a request to one named object (see [`super::ObjectRequest`]); lists, watches
    /// and collection deletes are not recorded.
    fn record_object_request(
        &self,
        user: &UserInfo,
        requested: &ResourceAttributes,
        target: &Target,
        body: &Bytes,
        code: StatusCode,
        started: std::time::Instant,
    ) {
        if !matches!(
            requested.verb.as_str(),
            "get" | "create" | "update" | "patch" | "delete"
        ) {
            return;
        }
        let name = match &target.name {
            Some(name) => name.clone(),
            // A create names its object in the body.
            None => serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|o| o["metadata"]["name"].as_str().map(str::to_string))
                .unwrap_or_default(),
        };
        let resource = if requested.subresource.is_empty() {
            requested.resource.clone()
        } else {
            format!("{}/{}", requested.resource, requested.subresource)
        };
        let request = super::ObjectRequest {
            at: std::time::SystemTime::now(),
            user: user.username.clone(),
            verb: requested.verb.clone(),
            resource,
            namespace: target.namespace.clone().unwrap_or_default(),
            name,
            code: code.as_u16(),
            took: started.elapsed(),
        };
        if let Ok(mut log) = self.object_requests.lock() {
            if log.len() >= super::OBJECT_REQUESTS_KEPT {
                log.pop_front();
            }
            log.push_back(request);
        }
    }
}

/// A parsed resource path.
struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

/// Serves one request in upstream's order: authentication, impersonation, authorization, then
/// the handler (with decoding, validation and admission for writes). Warnings from admission go
/// back as `Warning` headers, with the answer or the refusal.
async fn route(shared: &Shared, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let started = std::time::Instant::now();
    let raw_path = req.uri().path().to_string();
    let path = raw_path.trim_end_matches('/').to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|v| v.trim().to_string());
    let requester = shared
        .tokens
        .authenticate(&shared.store, bearer.as_deref())?;
    let rbac = shared.access.rbac(&shared.store);
    let user = access::impersonate(rbac.as_ref(), requester, req.headers())?;
    let attributes = access::request_attributes(req.method(), &raw_path, &query);
    let Attributes::Resource(requested) = &attributes else {
        access::authorize(rbac.as_ref(), &user, &attributes)?;
        return match discovery(shared, &segments) {
            Some(doc) if req.method() == Method::GET => Ok(json_response(StatusCode::OK, &doc)),
            _ => Err(ApiError::not_found_path(&path)),
        };
    };
    Shared::count(&shared.requests, &user, requested);
    if let Err(refusal) = access::authorize(rbac.as_ref(), &user, &attributes) {
        Shared::count(&shared.refused, &user, requested);
        return Err(refusal);
    }
    let is_watch =
        req.method() == Method::GET && query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let from_version = query
        .get("resourceVersion")
        .is_some_and(|v| !v.is_empty() && v != "0");
    let mut close_watch_after = None;
    match shared.faults.draw(&user.username, is_watch, from_version) {
        Some(Fault::Fail(code)) => return Ok(injected_failure(code)),
        Some(Fault::Gone) => {
            let version = query
                .get("resourceVersion")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_default();
            // As kube-apiserver's watch cache answers a watch from an expired version: the watch
            // starts (200), its one event is an ERROR carrying the 410 Status, and it ends.
            let status = ApiError::gone(version, version.saturating_add(1)).to_status();
            let mut line =
                serde_json::to_vec(&json!({"type": "ERROR", "object": status})).unwrap_or_default();
            line.push(b'\n');
            let mut response = Response::new(Full::new(Bytes::from(line)).boxed());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            return Ok(response);
        }
        Some(Fault::CloseWatchAfter(after)) => close_watch_after = Some(after),
        None => {}
    }
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::not_found_path(&path)),
    };
    let target =
        resolve(shared, group, version, rest).ok_or_else(|| ApiError::not_found_path(&path))?;
    let table = wants_table(&req);
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let method = req.method().clone();
    let write = matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let mut body = if write {
        read_body(req).await?
    } else {
        Bytes::new()
    };
    let mut content_type = content_type;
    if content_type.split(';').next().map(str::trim) == Some(protobuf::CONTENT_TYPE) {
        let object = protobuf::to_json(&body).map_err(|e| {
            ApiError::unsupported_media_type(&format!(
                "the test API server cannot read this protobuf body ({e}); send JSON"
            ))
        })?;
        body = Bytes::from(object.to_string());
        content_type = "application/json".into();
    }
    let mut admission = RequestAdmission {
        rt: &target.rt,
        subresource: target.subresource.as_deref().unwrap_or_default(),
        namespace: target.namespace.as_deref().unwrap_or_default(),
        name: target.name.as_deref().unwrap_or_default(),
        user: &user,
        authorizer: rbac.clone(),
        schema: None,
        field_validation: FieldValidation::Ignore,
        policies: Arc::default(),
        namespace_object: None,
        dry_run: is_dry_run(&query),
        warnings: Vec::new(),
    };
    if write {
        admission.field_validation =
            FieldValidation::parse(query.get("fieldValidation").map(String::as_str))
                .map_err(|e| ApiError::bad_request(&e))?;
        admission.schema = shared.admissions.schema(&shared.store, &target.rt);
        admission.policies = shared.admissions.policies(&shared.store);
        let namespace = match (&target.namespace, target.rt.key().as_str()) {
            (Some(ns), _) => Some(ns.as_str()),
            (None, "/namespaces") => target.name.as_deref(),
            _ => None,
        };
        if !admission.policies.is_empty()
            && let (Some(ns), Some(namespaces)) =
                (namespace, shared.store.resource("", "v1", "namespaces"))
        {
            admission.namespace_object = shared.store.get(&namespaces, None, ns).ok();
        }
    }
    let answer = dispatch(
        shared,
        &method,
        &target,
        (&query, close_watch_after),
        &body,
        &content_type,
        table,
        &mut admission,
    )
    .await;
    let mut response = answer.unwrap_or_else(|e| error_response(&e));
    add_warnings(&mut response, &admission.warnings);
    shared.record_object_request(&user, requested, &target, &body, response.status(), started);
    Ok(response)
}

/// `Warning: 299 - "text"` headers, once per distinct text, as upstream sends them.
fn add_warnings(response: &mut Response<Body>, warnings: &[String]) {
    let mut sent = std::collections::HashSet::new();
    for warning in warnings.iter().filter(|w| sent.insert(w.as_str())) {
        let escaped = warning.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(value) = http::HeaderValue::from_bytes(format!("299 - \"{escaped}\"").as_bytes())
        {
            response.headers_mut().append(header::WARNING, value);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn dispatch(
    shared: &Shared,
    method: &Method,
    target: &Target,
    (query, close_watch_after): (&HashMap<String, String>, Option<Duration>),
    body: &Bytes,
    content_type: &str,
    table: bool,
    admission: &mut RequestAdmission<'_>,
) -> Result<Response<Body>, ApiError> {
    let store = &shared.store;
    let rt = &target.rt;
    let ns = target.namespace.as_deref();
    let status_sub = target.subresource.as_deref() == Some("status");
    let dry_run = admission.dry_run;
    if let Some(sub) = target.subresource.as_deref()
        && !matches!(sub, "status" | "binding" | "token" | "scale")
    {
        return Err(ApiError::not_found_path(sub));
    }
    if target.subresource.as_deref() == Some("scale") {
        return scale(shared, method, target, body, content_type, admission);
    }
    match (method, target.name.as_deref()) {
        (&Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            watch(shared, target, query, table, close_watch_after)
        }
        (&Method::GET, None) => list(shared, target, query, table),
        (&Method::GET, Some(name)) => {
            let object = store.get(rt, ns, name)?;
            if table {
                let crd = crd_of(shared, rt);
                let rv = rv_of(&object).to_string();
                return Ok(json_response(
                    StatusCode::OK,
                    &table::table(&rt.key(), crd.as_ref(), &rt.version, &[object], &rv, true),
                ));
            }
            Ok(json_response(StatusCode::OK, &object))
        }
        (&Method::POST, None) if rt.review => {
            let object = parse_json(body)?;
            admission.admit_create(&object)?;
            let answer = if rt.plural == "tokenreviews" {
                shared.tokens.review(store, &object)
            } else {
                access::review(rt, ns, &object, admission.user, &admission.authorizer)?
            };
            Ok(json_response(StatusCode::CREATED, &answer))
        }
        (&Method::POST, None) => {
            let object = parse_json(body)?;
            let created = store.create_with(rt, ns, object, admission, dry_run)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (&Method::POST, Some(name))
            if target.subresource.as_deref() == Some("binding") && rt.plural == "pods" =>
        {
            let binding = parse_json(body)?;
            admission.admit_create(&binding)?;
            store.bind(rt, ns.unwrap_or("default"), name, &binding)?;
            Ok(json_response(
                StatusCode::CREATED,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ))
        }
        (&Method::POST, Some(name))
            if target.subresource.as_deref() == Some("token") && rt.plural == "serviceaccounts" =>
        {
            let request = parse_json(body)?;
            admission.admit_create(&request)?;
            let answer = shared
                .tokens
                .request(store, ns.unwrap_or("default"), name, &request)?;
            Ok(json_response(StatusCode::CREATED, &answer))
        }
        (&Method::PUT, Some(name)) => {
            let object = parse_json(body)?;
            let updated =
                store.update_with(rt, ns, name, object, status_sub, admission, dry_run)?;
            Ok(json_response(StatusCode::OK, &updated))
        }
        (&Method::PATCH, Some(name)) => {
            let kind = PatchKind::from_content_type(content_type).ok_or_else(|| {
                ApiError::unsupported_media_type(&format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type})"))
            })?;
            let patched =
                store.patch_with(rt, ns, name, kind, body, status_sub, admission, dry_run)?;
            Ok(json_response(StatusCode::OK, &patched))
        }
        (&Method::DELETE, Some(name)) => {
            let options = delete_options(body, query)?;
            let deleted = store.delete_with(rt, ns, name, &options, admission, dry_run)?;
            Ok(json_response(StatusCode::OK, &deleted))
        }
        (&Method::DELETE, None) => Err(ApiError::method_not_allowed(
            "deletecollection is not supported by the test API server; delete objects one by one",
        )),
        _ => Err(ApiError::method_not_allowed(&format!(
            "{method} is not supported here"
        ))),
    }
}

/// The `scale` subresource of workloads: an `autoscaling/v1` Scale over `spec.replicas`.
fn scale(
    shared: &Shared,
    method: &Method,
    target: &Target,
    body: &Bytes,
    content_type: &str,
    admission: &mut RequestAdmission<'_>,
) -> Result<Response<Body>, ApiError> {
    let rt = &target.rt;
    let ns = target.namespace.as_deref();
    let name = target.name.as_deref().unwrap_or_default();
    if !matches!(
        rt.plural.as_str(),
        "statefulsets" | "deployments" | "replicasets"
    ) {
        return Err(ApiError::not_found_path("scale"));
    }
    let to_scale = |object: &Value| {
        json!({
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": object["metadata"]["name"], "namespace": object["metadata"]["namespace"],
                         "uid": object["metadata"]["uid"], "resourceVersion": object["metadata"]["resourceVersion"],
                         "creationTimestamp": object["metadata"]["creationTimestamp"]},
            "spec": {"replicas": object["spec"]["replicas"].as_i64().unwrap_or(1)},
            "status": {"replicas": object["status"]["replicas"].as_i64().unwrap_or(0)},
        })
    };
    let current = shared.store.get(rt, ns, name)?;
    let desired = match *method {
        Method::GET => return Ok(json_response(StatusCode::OK, &to_scale(&current))),
        Method::PUT => parse_json(body)?,
        Method::PATCH => {
            let kind = PatchKind::from_content_type(content_type).ok_or_else(|| {
                ApiError::unsupported_media_type("unsupported patch type for scale")
            })?;
            super::patch::apply(&to_scale(&current), body, kind)
                .map_err(|e| ApiError::bad_request(&e))?
        }
        _ => {
            return Err(ApiError::method_not_allowed(
                "scale supports get, update and patch",
            ));
        }
    };
    let replicas = desired["spec"]["replicas"]
        .as_i64()
        .filter(|r| *r >= 0)
        .ok_or_else(|| {
            ApiError::invalid(
                rt,
                name,
                "spec.replicas: Invalid value: must be greater than or equal to 0",
            )
        })?;
    // Admission sees the Scales (upstream's admission chain runs on the subresource's object).
    let mut admitted = to_scale(&current);
    admitted["spec"]["replicas"] = json!(replicas);
    admission.admit_subresource_update(&admitted, &to_scale(&current))?;
    if admission.dry_run {
        return Ok(json_response(StatusCode::OK, &admitted));
    }
    let patch = json!({"metadata": {"resourceVersion": desired["metadata"]["resourceVersion"]}, "spec": {"replicas": replicas}});
    let updated = shared.store.patch(
        rt,
        ns,
        name,
        PatchKind::Merge,
        patch.to_string().as_bytes(),
        false,
    )?;
    Ok(json_response(StatusCode::OK, &to_scale(&updated)))
}

fn list(
    shared: &Shared,
    target: &Target,
    query: &HashMap<String, String>,
    table: bool,
) -> Result<Response<Body>, ApiError> {
    let rt = &target.rt;
    let selection = selection(target, query)?;
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let continued = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => Some(decode_continue(token)?),
        None => None,
    };
    // Every page of a list carries its first page's resourceVersion, as upstream's do, so a
    // watch started from the list replays whatever changed while the pages were read (the
    // later pages are read from the current objects: a change to an object of an earlier page
    // would otherwise be lost between the list and the watch).
    let first_rv = continued.as_ref().map(|(rv, _)| *rv);
    if let Some(rv) = first_rv {
        let oldest = shared.store.compacted();
        if rv < oldest {
            return Err(ApiError::gone(rv, oldest));
        }
    }
    let after = continued.map(|(_, last)| last);
    let (items, current_rv, next) = shared.store.list(rt, &selection, limit, after);
    let rv = first_rv.unwrap_or(current_rv);
    let next = next.map(|last| encode_continue(rv, &last));
    let rv = rv.to_string();
    if table {
        let crd = crd_of(shared, rt);
        let mut t = table::table(&rt.key(), crd.as_ref(), &rt.version, &items, &rv, true);
        if let Some(next) = &next {
            t["metadata"]["continue"] = json!(next);
        }
        return Ok(json_response(StatusCode::OK, &t));
    }
    let mut metadata = json!({"resourceVersion": rv});
    if let Some(next) = &next {
        metadata["continue"] = json!(next);
    }
    let list = json!({
        "kind": format!("{}List", rt.kind),
        "apiVersion": rt.api_version(),
        "metadata": metadata,
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &list))
}

fn watch(
    shared: &Shared,
    target: &Target,
    query: &HashMap<String, String>,
    table: bool,
    close_after: Option<Duration>,
) -> Result<Response<Body>, ApiError> {
    let rt = target.rt.clone();
    let selection = selection(target, query)?;
    let since = query
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(&format!("invalid resourceVersion {v:?}")))
        })
        .transpose()?;
    let (backlog, live, start_rv) = match since {
        Some(since) => {
            let (backlog, live) = shared.store.changes_since(since)?;
            (backlog, live, since)
        }
        None => {
            let rv = shared.store.current_rv();
            let (backlog, live) = shared.store.snapshot_for_watch(&rt);
            (backlog, live, rv)
        }
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let crd = if table { crd_of(shared, &rt) } else { None };
    let mut closer = shared.faults.watch_closer();
    closer.mark_unchanged();
    let count_closed = shared.faults.closed_counter();
    let shutdown = shared.shutdown.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
    tokio::spawn(async move {
        let encode = |kind: &str, object: Value| -> Bytes {
            let object = if table {
                let rv = rv_of(&object).to_string();
                table::table(&rt.key(), crd.as_ref(), &rt.version, &[object], &rv, true)
            } else {
                object
            };
            let mut line =
                serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
            line.push(b'\n');
            Bytes::from(line)
        };
        let mut last_rv = start_rv;
        let deliver = |change: &Change, last_rv: &mut u64| -> Option<Bytes> {
            *last_rv = (*last_rv).max(change.rv);
            if change.key != rt.key() {
                return None;
            }
            selection
                .translate(change)
                .map(|(kind, object)| encode(kind.as_str(), with_version(&object, &rt)))
        };
        for change in &backlog {
            if let Some(line) = deliver(change, &mut last_rv)
                && tx.send(line).await.is_err()
            {
                return;
            }
        }
        let mut live = live;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        // An injected early end (a fault drawn for this watch); never if none was drawn.
        let early = async {
            match close_after {
                Some(after) => tokio::time::sleep(after).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(early);
        let mut bookmark = tokio::time::interval(Duration::from_secs(5));
        bookmark.tick().await;
        loop {
            let line = tokio::select! {
                _ = &mut deadline => return,
                _ = &mut early => {
                    count_closed();
                    return;
                }
                _ = shutdown.cancelled() => return,
                _ = closer.changed() => return,
                _ = bookmark.tick(), if bookmarks => {
                    Some(encode(
                        "BOOKMARK",
                        json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": last_rv.to_string()}}),
                    ))
                }
                change = live.recv() => match change {
                    Ok(change) if change.rv > last_rv => deliver(&change, &mut last_rv),
                    Ok(_) => None,
                    // A watcher that falls behind is closed; the client re-watches from its last version.
                    Err(_) => return,
                },
            };
            if let Some(line) = line
                && tx.send(line).await.is_err()
            {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), rx))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn selection(target: &Target, query: &HashMap<String, String>) -> Result<Selection, ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
        .map_err(|e| ApiError::bad_request(&format!("unable to parse requirement: {e}")))?;
    let fields = FieldSelector::parse(
        query.get("fieldSelector").map_or("", String::as_str),
        &target.rt.selectable_fields,
    )
    .map_err(|e| ApiError::bad_request(&e))?;
    Ok(Selection {
        namespace: target.namespace.clone(),
        labels,
        fields,
    })
}

fn resolve(shared: &Shared, group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let lookup = |plural: &str| shared.store.resource(group, version, plural);
    let target =
        |rt: ResourceType, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| Target {
            rt,
            namespace: ns.map(str::to_string),
            name: name.map(str::to_string),
            subresource: sub.map(str::to_string),
        };
    match rest {
        ["namespaces", ns, plural, tail @ ..]
            if group.is_empty() && matches!(*plural, "status" | "finalize") && tail.is_empty() =>
        {
            Some(target(lookup("namespaces")?, None, Some(ns), Some(plural)))
        }
        ["namespaces", ns, plural] => {
            let rt = lookup(plural).filter(|r| r.namespaced)?;
            Some(target(rt, Some(ns), None, None))
        }
        ["namespaces", ns, plural, name] => {
            let rt = lookup(plural).filter(|r| r.namespaced)?;
            Some(target(rt, Some(ns), Some(name), None))
        }
        ["namespaces", ns, plural, name, sub] => {
            let rt = lookup(plural).filter(|r| r.namespaced)?;
            Some(target(rt, Some(ns), Some(name), Some(sub)))
        }
        [plural] => Some(target(lookup(plural)?, None, None, None)),
        [plural, name] => Some(target(
            lookup(plural).filter(|r| !r.namespaced)?,
            None,
            Some(name),
            None,
        )),
        [plural, name, sub] => Some(target(
            lookup(plural).filter(|r| !r.namespaced)?,
            None,
            Some(name),
            Some(sub),
        )),
        _ => None,
    }
}

/// Discovery documents (`/version`, `/api`, `/apis`, group and group-version resource lists).
fn discovery(shared: &Shared, segments: &[&str]) -> Option<Value> {
    let resources = shared.store.resources();
    let groups = || {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for r in resources.iter().filter(|r| !r.group.is_empty()) {
            match groups.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, versions)) => {
                    if !versions.contains(&r.version) {
                        versions.push(r.version.clone());
                    }
                }
                None => groups.push((r.group.clone(), vec![r.version.clone()])),
            }
        }
        groups
    };
    let group_doc = |name: &str, versions: &[String]| {
        let entries: Vec<Value> = versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
            .collect();
        json!({"name": name, "versions": entries, "preferredVersion": entries.first().cloned().unwrap_or(Value::Null)})
    };
    let resource_list = |group: &str, version: &str| -> Option<Value> {
        let entries: Vec<Value> = resources
            .iter()
            .filter(|r| r.group == group && r.version == version)
            .flat_map(|r| r.discovery_entries())
            .collect();
        if entries.is_empty() {
            return None;
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": entries}),
        )
    };
    match segments {
        ["version"] => Some(json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-relaunch-testbed",
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z", "goVersion": "none", "compiler": "rustc",
            "platform": "linux/amd64"
        })),
        ["healthz"] | ["readyz"] | ["livez"] => Some(json!("ok")),
        ["api"] => Some(json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string()}]
        })),
        ["api", version] => resource_list("", version),
        ["apis"] => {
            let list: Vec<Value> = groups().iter().map(|(g, vs)| group_doc(g, vs)).collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list}))
        }
        ["apis", group] => groups().iter().find(|(g, _)| g == group).map(|(g, vs)| {
            let mut doc = group_doc(g, vs);
            doc["kind"] = json!("APIGroup");
            doc["apiVersion"] = json!("v1");
            doc
        }),
        ["apis", group, version] => resource_list(group, version),
        ["openapi", "v3"] => {
            let mut paths = serde_json::Map::new();
            for r in &resources {
                let gv = if r.group.is_empty() {
                    format!("api/{}", r.version)
                } else {
                    format!("apis/{}/{}", r.group, r.version)
                };
                paths.insert(gv.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={}", shared.store.current_rv())}));
            }
            Some(json!({"paths": paths}))
        }
        ["openapi", "v3", "api", version] => openapi_v3(&resources, "", version),
        ["openapi", "v3", "apis", group, version] => openapi_v3(&resources, group, version),
        _ => None,
    }
}

/// A minimal OpenAPI v3 document for one group/version: enough for kubectl to see that every
/// resource supports server-side field validation, so it does not download schemas to validate
/// client-side (the test API server does not validate against schemas).
fn openapi_v3(resources: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    for r in resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let prefix = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let path = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{prefix}/{}/{{name}}", r.plural)
        };
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let operation = json!({
            "x-kubernetes-group-version-kind": gvk,
            "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}],
            "responses": {"200": {"description": "OK"}},
        });
        paths.insert(path, json!({"patch": operation, "put": operation}));
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (relaunch test API server)", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

fn crd_of(shared: &Shared, rt: &ResourceType) -> Option<Value> {
    if !rt.custom {
        return None;
    }
    shared.store.get_by_key(
        "apiextensions.k8s.io/customresourcedefinitions",
        None,
        &format!("{}.{}", rt.plural, rt.group),
    )
}

fn wants_table(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept
                .split(',')
                .next()
                .is_some_and(|first| first.contains("as=Table") && first.contains("v=v1"))
        })
}

fn is_dry_run(query: &HashMap<String, String>) -> bool {
    query.get("dryRun").is_some_and(|d| d == "All")
}

fn delete_options(
    body: &Bytes,
    query: &HashMap<String, String>,
) -> Result<DeleteOptions, ApiError> {
    let mut options = DeleteOptions::default();
    if !body.is_empty() {
        let parsed = parse_json(body)?;
        options.grace_period_seconds = parsed["gracePeriodSeconds"].as_i64();
        options.precondition_uid = parsed["preconditions"]["uid"].as_str().map(str::to_string);
        options.precondition_rv = parsed["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string);
    }
    if let Some(grace) = query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()) {
        options.grace_period_seconds = Some(grace);
    }
    Ok(options)
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::too_large())
        }
        Err(e) => Err(ApiError::bad_request(&format!(
            "could not read the request body: {e}"
        ))),
    }
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(&format!(
            "the request body is not valid JSON (the test API server accepts JSON only): {e}"
        ))
    })?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ))
    }
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(error: &ApiError) -> Response<Body> {
    json_response(
        StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &error.to_status(),
    )
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub(super) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A continue token, opaque to clients: the list's resourceVersion and the last key returned
/// (namespace, name).
fn encode_continue(rv: u64, last: &(String, String)) -> String {
    let raw = format!("{rv}/{}/{}", last.0, last.1);
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Result<(u64, (String, String)), ApiError> {
    let invalid = || ApiError::bad_request("invalid continue token");
    if !token.len().is_multiple_of(2) || !token.is_ascii() {
        return Err(invalid());
    }
    let bytes: Result<Vec<u8>, _> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
        .collect();
    let raw = String::from_utf8(bytes.map_err(|_| invalid())?).map_err(|_| invalid())?;
    let (rv, key) = raw.split_once('/').ok_or_else(invalid)?;
    let rv = rv.parse::<u64>().map_err(|_| invalid())?;
    let (ns, name) = key.split_once('/').ok_or_else(invalid)?;
    Ok((rv, (ns.to_string(), name.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let q = parse_query("labelSelector=app%3Ddb%2Crole+in+%28a%29&watch=1&x");
        assert_eq!(q["labelSelector"], "app=db,role in (a)");
        assert_eq!(q["watch"], "1");
        assert_eq!(q["x"], "");
        assert_eq!(percent_decode("100%"), "100%");
    }

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let token = encode_continue(42, &("ns".into(), "pod-1".into()));
        assert_eq!(
            decode_continue(&token).unwrap(),
            (42, ("ns".to_string(), "pod-1".to_string()))
        );
        // Cluster-scoped objects have no namespace.
        let token = encode_continue(7, &(String::new(), "node-1".into()));
        assert_eq!(
            decode_continue(&token).unwrap(),
            (7, (String::new(), "node-1".to_string()))
        );
        assert!(decode_continue("zz").is_err());
        assert!(decode_continue("abc").is_err());
    }
}
