//! Who a request acts as and whether it may do what it asks, in upstream's order after
//! authentication (`tokens.rs`): impersonation (`Impersonate-*` headers, the `impersonate` verb
//! checked), then RBAC over the stored Roles, ClusterRoles and bindings. Also what the request's
//! URL asks to do (upstream's `RequestInfo`), the review APIs that ask the same questions
//! (SubjectAccessReview, SelfSubjectAccessReview, LocalSubjectAccessReview,
//! SelfSubjectRulesReview, SelfSubjectReview), the bootstrap roles, and the ClusterRole
//! aggregation controller's work.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use http::{HeaderMap, Method};
use k8s_openapi::api::rbac::v1::ClusterRole;
use serde_json::{Value, json};

use super::error::ApiError;
use super::rbac::{
    self, Attributes, Authorizer, Impersonation, ImpersonationError, Rbac, ResourceAttributes,
    UserInfo,
};
use super::resources::ResourceType;
use super::store::Store;

/// The RBAC API group.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// The RBAC authorizer over the stored RBAC objects, rebuilt only when one of them changes.
#[derive(Default)]
pub struct Access {
    /// The authorizer and the RBAC group generation it was built from.
    snapshot: Mutex<Option<(u64, Arc<Rbac>)>>,
}

impl Access {
    /// Seeds the bootstrap ClusterRoles and ClusterRoleBindings of a new cluster and aggregates.
    pub fn bootstrap(&self, store: &Store) -> Result<(), ApiError> {
        for object in rbac::bootstrap_objects() {
            let plural = match object["kind"].as_str() {
                Some("ClusterRole") => "clusterroles",
                _ => "clusterrolebindings",
            };
            let rt = store
                .resource(RBAC_GROUP, "v1", plural)
                .ok_or_else(|| ApiError::internal("RBAC resources are not served"))?;
            store.create(&rt, None, object)?;
        }
        self.rbac(store);
        Ok(())
    }

    /// The authorizer for the RBAC objects stored now. Rebuilding it also does the ClusterRole
    /// aggregation controller's work: aggregated roles get their rules written back.
    pub fn rbac(&self, store: &Store) -> Arc<Rbac> {
        let mut snapshot = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        let generation = store.group_generation(RBAC_GROUP);
        if let Some((built, rbac)) = snapshot.as_ref()
            && *built == generation
        {
            return rbac.clone();
        }
        // Writing an aggregated role back changes the group again; a few rounds settle it.
        let (generation, objects) = loop {
            let (generation, objects) = store.group_objects(RBAC_GROUP);
            if !write_back_aggregation(store, &objects) {
                break (generation, objects);
            }
        };
        let mut rbac = Rbac::default();
        for object in &objects {
            // Malformed objects are refused when written (check_rbac_object); skip any anyway.
            let _ = rbac.add(object);
        }
        let rbac = Arc::new(rbac);
        *snapshot = Some((generation, rbac.clone()));
        rbac
    }
}

/// Writes the aggregated rules of every ClusterRole with an aggregation rule whose stored rules
/// differ, as the clusterrole-aggregation controller does; whether it wrote any.
fn write_back_aggregation(store: &Store, objects: &[Value]) -> bool {
    let roles: Vec<ClusterRole> = objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole")
        .filter_map(|o| serde_json::from_value(o.clone()).ok())
        .collect();
    if !roles.iter().any(|r| r.aggregation_rule.is_some()) {
        return false;
    }
    let Some(rt) = store.resource(RBAC_GROUP, "v1", "clusterroles") else {
        return false;
    };
    let mut wrote = false;
    for role in &roles {
        let Some(rules) = rbac::aggregated_rules(role, &roles) else {
            continue;
        };
        if role.rules.as_deref().unwrap_or_default() == rules.as_slice() {
            continue;
        }
        let Some(name) = role.metadata.name.as_deref() else {
            continue;
        };
        let patch = json!({"rules": rules});
        wrote |= store
            .patch(
                &rt,
                None,
                name,
                super::patch::PatchKind::Merge,
                patch.to_string().as_bytes(),
                false,
            )
            .is_ok();
    }
    wrote
}

/// What a request asks to do, from its method, path and query (upstream's `RequestInfo`): a
/// resource request under `/api/v1/...` or `/apis/<group>/<version>/...`, else a non-resource one.
pub fn request_attributes(
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
) -> Attributes {
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let non_resource = || Attributes::non_resource(&method.as_str().to_lowercase(), path);
    let (api_group, rest) = match parts.as_slice() {
        ["api", rest @ ..] if rest.len() >= 2 => ("", rest),
        ["apis", group, rest @ ..] if rest.len() >= 2 => (*group, rest),
        _ => return non_resource(),
    };
    let (api_version, mut rest) = (rest[0], &rest[1..]);
    let mut namespace = "";
    if let ["namespaces", ns, tail @ ..] = rest {
        namespace = ns;
        if let [next, ..] = tail
            && !matches!(*next, "status" | "finalize")
        {
            rest = tail;
        }
    }
    let resource = rest.first().copied().unwrap_or_default();
    let mut name = rest.get(1).copied().unwrap_or_default().to_string();
    let subresource = rest.get(2).copied().unwrap_or_default();
    let watch = query
        .get("watch")
        .is_some_and(|w| matches!(w.as_str(), "true" | "1" | "True"));
    let verb = match *method {
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD if name.is_empty() => "list",
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if name.is_empty() => "deletecollection",
        Method::DELETE => "delete",
        _ => return non_resource(),
    };
    if name.is_empty()
        && matches!(verb, "list" | "watch" | "deletecollection")
        && let Some(selected) = query.get("fieldSelector").and_then(|f| {
            f.split(',').find_map(|requirement| {
                let value = requirement.strip_prefix("metadata.name")?;
                value.strip_prefix("==").or_else(|| value.strip_prefix('='))
            })
        })
    {
        name = selected.to_string();
    }
    Attributes::Resource(ResourceAttributes {
        verb: verb.into(),
        api_group: api_group.into(),
        api_version: api_version.into(),
        resource: resource.into(),
        subresource: subresource.into(),
        namespace: namespace.into(),
        name,
    })
}

/// Whom the request asks to act as: `Impersonate-User`, `-Uid`, `-Group` (repeated) and
/// `-Extra-<key>` (the key percent-encoded) headers.
fn impersonation(headers: &HeaderMap) -> Impersonation {
    let text = |value: &http::HeaderValue| value.to_str().unwrap_or_default().to_string();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix("impersonate-extra-") {
            extra
                .entry(super::http::percent_decode(key).to_lowercase())
                .or_default()
                .push(text(value));
        }
    }
    Impersonation {
        user: headers.get("impersonate-user").map(text),
        uid: headers.get("impersonate-uid").map(text),
        groups: headers
            .get_all("impersonate-group")
            .iter()
            .map(text)
            .collect(),
        extra,
    }
}

/// The user the request acts as: `requester`, or whom it impersonates if `requester` may.
pub fn impersonate(
    authorizer: &dyn Authorizer,
    requester: UserInfo,
    headers: &HeaderMap,
) -> Result<UserInfo, ApiError> {
    let wanted = impersonation(headers);
    if !wanted.is_requested() {
        return Ok(requester);
    }
    wanted
        .impersonate(authorizer, &requester)
        .map_err(|e| match e {
            ImpersonationError::Forbidden {
                attributes,
                message,
            } => forbidden_error(message, &attributes),
            ImpersonationError::WithoutUser(_) | ImpersonationError::Authorizer(_) => {
                ApiError::internal(&e.to_string())
            }
        })
}

/// Allows the request or answers 403 with upstream's message.
pub fn authorize(
    authorizer: &dyn Authorizer,
    user: &UserInfo,
    attributes: &Attributes,
) -> Result<(), ApiError> {
    let decision = authorizer
        .authorize(user, attributes)
        .map_err(|e| ApiError::internal(&e))?;
    if decision.allowed() {
        return Ok(());
    }
    Err(forbidden_error(
        rbac::forbidden_message(user, attributes, decision.reason()),
        attributes,
    ))
}

fn forbidden_error(message: String, attributes: &Attributes) -> ApiError {
    match attributes {
        Attributes::Resource(r) => ApiError::forbidden(message, &r.api_group, &r.resource, &r.name),
        Attributes::NonResource { .. } => ApiError::forbidden(message, "", "", ""),
    }
}

/// Refuses RBAC objects the authorizer could not read, and bindings whose `roleRef` changes.
pub fn check_rbac_object(
    rt: &ResourceType,
    object: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let invalid = |why: &str| {
        ApiError::invalid_fields(
            &rt.group,
            &rt.kind,
            name,
            why,
            vec![json!({"reason": "FieldValueInvalid", "message": why})],
        )
    };
    let mut typed = object.clone();
    typed["kind"] = json!(rt.kind);
    Rbac::default()
        .add(&typed)
        .map_err(|e| invalid(&e.to_string()))?;
    if let Some(old) = old
        && rt.kind.ends_with("Binding")
        && old["roleRef"] != object["roleRef"]
    {
        return Err(ApiError::invalid_fields(
            &rt.group,
            &rt.kind,
            name,
            &format!(
                "roleRef: Invalid value: {}: cannot change roleRef",
                go_role_ref(&object["roleRef"])
            ),
            vec![
                json!({"reason": "FieldValueInvalid", "message": "Invalid value: cannot change roleRef", "field": "roleRef"}),
            ],
        ));
    }
    Ok(())
}

/// A RoleRef as Go's `%#v` prints it in upstream's message.
fn go_role_ref(role_ref: &Value) -> String {
    let field = |key: &str| role_ref[key].as_str().unwrap_or_default().to_string();
    format!(
        "rbac.RoleRef{{APIGroup:{:?}, Kind:{:?}, Name:{:?}}}",
        field("apiGroup"),
        field("kind"),
        field("name")
    )
}

/// Answers a review (a `create` of TokenReview aside): what `user` (SelfSubject*), or the
/// subject the review names, may do. `namespace` is the request's (LocalSubjectAccessReview).
pub fn review(
    rt: &ResourceType,
    namespace: Option<&str>,
    body: &Value,
    user: &UserInfo,
    authorizer: &Rbac,
) -> Result<Value, ApiError> {
    let spec = &body["spec"];
    let name = body["metadata"]["name"].as_str().unwrap_or_default();
    let invalid = |field: &str, why: &str| {
        ApiError::invalid_fields(
            &rt.group,
            &rt.kind,
            name,
            &format!("{field}: {why}"),
            vec![json!({"reason": "FieldValueInvalid", "message": why, "field": field})],
        )
    };
    let status = match rt.plural.as_str() {
        "selfsubjectreviews" => json!({"userInfo": user.to_json()}),
        "selfsubjectrulesreviews" => authorizer
            .rules_for(user, spec["namespace"].as_str().unwrap_or_default())
            .to_status(),
        "selfsubjectaccessreviews" => access_status(authorizer, user, spec, None)?,
        "localsubjectaccessreviews" => {
            let namespace = namespace.unwrap_or_default();
            let wanted = spec["resourceAttributes"]["namespace"]
                .as_str()
                .unwrap_or_default();
            if wanted != namespace {
                return Err(invalid(
                    "spec.resourceAttributes.namespace",
                    &format!("Invalid value: {wanted:?}: must match metadata.namespace"),
                ));
            }
            if spec["nonResourceAttributes"].is_object() {
                return Err(invalid(
                    "spec.nonResourceAttributes",
                    "Invalid value: disallowed on this kind of request",
                ));
            }
            access_status(authorizer, &subject(spec), spec, Some(namespace))?
        }
        _ => {
            let subject = subject(spec);
            if subject.username.is_empty() && subject.groups.is_empty() {
                return Err(invalid(
                    "spec.user",
                    "Invalid value: \"\": at least one of user or group must be specified",
                ));
            }
            access_status(authorizer, &subject, spec, None)?
        }
    };
    let mut answer = body.clone();
    answer["apiVersion"] = json!(rt.api_version());
    answer["kind"] = json!(rt.kind);
    if !answer["metadata"].is_object() {
        answer["metadata"] = json!({});
    }
    answer["metadata"]["creationTimestamp"] = Value::Null;
    if let Some(namespace) = namespace {
        answer["metadata"]["namespace"] = json!(namespace);
    }
    answer["status"] = status;
    Ok(answer)
}

/// The user a (Local)SubjectAccessReview asks about.
fn subject(spec: &Value) -> UserInfo {
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    UserInfo {
        username: spec["user"].as_str().unwrap_or_default().into(),
        uid: spec["uid"].as_str().unwrap_or_default().into(),
        groups: strings(&spec["groups"]),
        extra: spec["extra"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), strings(v)))
            .collect(),
    }
}

/// A SubjectAccessReviewStatus: whether `user` may do what `spec` describes.
fn access_status(
    authorizer: &Rbac,
    user: &UserInfo,
    spec: &Value,
    namespace: Option<&str>,
) -> Result<Value, ApiError> {
    let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
    let attributes = if spec["resourceAttributes"].is_object() {
        let r = &spec["resourceAttributes"];
        Attributes::Resource(ResourceAttributes {
            verb: text(&r["verb"]),
            api_group: text(&r["group"]),
            api_version: text(&r["version"]),
            resource: text(&r["resource"]),
            subresource: text(&r["subresource"]),
            namespace: namespace.map_or_else(|| text(&r["namespace"]), str::to_string),
            name: text(&r["name"]),
        })
    } else if spec["nonResourceAttributes"].is_object() {
        let n = &spec["nonResourceAttributes"];
        Attributes::non_resource(&text(&n["verb"]), &text(&n["path"]))
    } else {
        return Err(ApiError::bad_request(
            "spec: Invalid value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
        ));
    };
    let mut status = json!({"allowed": false});
    match authorizer.authorize(user, &attributes) {
        Ok(decision) => {
            status["allowed"] = json!(decision.allowed());
            if !decision.reason().is_empty() {
                status["reason"] = json!(decision.reason());
            }
        }
        Err(error) => status["evaluationError"] = json!(error),
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes(method: Method, path: &str, query: &str) -> Attributes {
        let query = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        match request_attributes(&method, path, &query) {
            Attributes::Resource(r) => {
                assert_eq!(r.api_version, "v1", "{path}");
                Attributes::Resource(ResourceAttributes {
                    api_version: String::new(),
                    ..r
                })
            }
            other => other,
        }
    }

    fn resource(verb: &str, group: &str, resource: &str, ns: &str, name: &str) -> Attributes {
        Attributes::resource(verb, group, resource, ns, name)
    }

    #[test]
    fn request_urls_become_upstreams_attributes() {
        assert_eq!(
            attributes(Method::GET, "/api/v1/namespaces/ns/pods/p", ""),
            resource("get", "", "pods", "ns", "p")
        );
        assert_eq!(
            attributes(Method::GET, "/api/v1/pods", "watch=true"),
            resource("watch", "", "pods", "", "")
        );
        assert_eq!(
            attributes(
                Method::GET,
                "/api/v1/namespaces/ns/pods",
                "fieldSelector=metadata.name=p"
            ),
            resource("list", "", "pods", "ns", "p")
        );
        assert_eq!(
            attributes(
                Method::PATCH,
                "/apis/apps/v1/namespaces/ns/deployments/d/scale",
                ""
            ),
            resource("patch", "apps", "deployments/scale", "ns", "d")
        );
        assert_eq!(
            attributes(Method::GET, "/api/v1/namespaces/ns", ""),
            resource("get", "", "namespaces", "ns", "ns")
        );
        assert_eq!(
            attributes(Method::PUT, "/api/v1/namespaces/ns/status", ""),
            resource("update", "", "namespaces/status", "ns", "ns")
        );
        assert_eq!(
            attributes(Method::DELETE, "/api/v1/namespaces/ns/pods", ""),
            resource("deletecollection", "", "pods", "ns", "")
        );
        assert_eq!(
            attributes(
                Method::POST,
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                ""
            ),
            resource(
                "create",
                "authorization.k8s.io",
                "selfsubjectaccessreviews",
                "",
                ""
            )
        );
        for path in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps/v1",
            "/healthz",
            "/version",
        ] {
            assert_eq!(
                attributes(Method::GET, path, ""),
                Attributes::non_resource("get", path),
                "{path}"
            );
        }
    }

    #[test]
    fn impersonation_headers_are_read_as_upstream() {
        let mut headers = HeaderMap::new();
        headers.insert("impersonate-user", "jane".parse().unwrap());
        headers.append("impersonate-group", "a".parse().unwrap());
        headers.append("impersonate-group", "b".parse().unwrap());
        headers.insert("impersonate-extra-scopes%2fx", "s".parse().unwrap());
        let wanted = impersonation(&headers);
        assert_eq!(wanted.user.as_deref(), Some("jane"));
        assert_eq!(wanted.groups, ["a", "b"]);
        assert_eq!(wanted.extra["scopes/x"], ["s"]);
    }

    #[test]
    fn impersonating_needs_the_impersonate_verb() {
        let rbac = Rbac::bootstrap();
        let requester = UserInfo::service_account("ns", "bot");
        let mut headers = HeaderMap::new();
        headers.insert("impersonate-user", "jane".parse().unwrap());
        let err = impersonate(&rbac, requester, &headers).unwrap_err();
        assert_eq!(err.code, 403);
        assert_eq!(
            err.message,
            r#"users "jane" is forbidden: User "system:serviceaccount:ns:bot" cannot impersonate resource "users" in API group "" at the cluster scope"#
        );
        let admin = UserInfo::new("system:admin", &[rbac::SYSTEM_MASTERS]);
        let jane = impersonate(&rbac, admin, &headers).unwrap();
        assert_eq!(jane.username, "jane");
        assert_eq!(jane.groups, [rbac::SYSTEM_AUTHENTICATED]);
    }
}
