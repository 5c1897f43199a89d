//! Kubernetes `Status` errors with the codes and reasons the real API server uses.

use serde_json::{Value, json};

use super::resources::ResourceType;

/// An error answer: HTTP code, `reason`, message and optional details.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String) -> Self {
        Self {
            code,
            reason,
            message,
            details: None,
        }
    }

    fn with_details(mut self, rt: &ResourceType, name: &str) -> Self {
        let mut details = json!({"name": name, "kind": rt.plural});
        if !rt.group.is_empty() {
            details["group"] = json!(rt.group);
        }
        self.details = Some(details);
        self
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} {name:?} not found", qualified(rt)),
        )
        .with_details(rt, name)
    }

    pub fn namespace_not_found(ns: &str) -> Self {
        Self::new(404, "NotFound", format!("namespaces {ns:?} not found"))
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} {name:?} already exists", qualified(rt)),
        )
        .with_details(rt, name)
    }

    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::conflict_message(
            rt,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn conflict_message(rt: &ResourceType, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {name:?}: {why}",
                qualified(rt)
            ),
        )
        .with_details(rt, name)
    }

    pub fn invalid(rt: &ResourceType, name: &str, why: &str) -> Self {
        Self::new(
            422,
            "Invalid",
            format!("{} {name:?} is invalid: {why}", rt.kind),
        )
        .with_details(rt, name)
    }

    /// A 422 `Invalid` for object `name` of `kind` in `group` (qualified as upstream,
    /// `Kind.group`), `summary` being its field errors and `causes` one Status cause each.
    pub fn invalid_fields(
        group: &str,
        kind: &str,
        name: &str,
        summary: &str,
        causes: Vec<Value>,
    ) -> Self {
        let qualified = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let mut error = Self::new(
            422,
            "Invalid",
            format!("{qualified} {name:?} is invalid: {summary}"),
        );
        error.details = Some(json!({"name": name, "group": group, "kind": kind, "causes": causes}));
        error
    }

    /// A refusal by an admission policy: `code` and `reason` as the policy's validation says,
    /// `details` with the resource, name and causes.
    pub fn admission_denied(
        code: u16,
        reason: &'static str,
        message: String,
        details: Value,
    ) -> Self {
        let mut error = Self::new(code, reason, message);
        error.details = Some(details);
        error
    }

    pub fn bad_request(message: &str) -> Self {
        Self::new(400, "BadRequest", message.to_string())
    }

    pub fn gone(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized".into())
    }

    /// A 403 `Forbidden` for a request on `resource` of `group` (object `name`, if any), with
    /// the whole message (`pods "p" is forbidden: User "u" cannot ...`).
    pub fn forbidden(message: String, group: &str, resource: &str, name: &str) -> Self {
        let mut details = serde_json::Map::new();
        for (key, value) in [("name", name), ("group", group), ("kind", resource)] {
            if !value.is_empty() {
                details.insert(key.into(), json!(value));
            }
        }
        let mut error = Self::new(403, "Forbidden", message);
        error.details = Some(Value::Object(details));
        error
    }

    /// A 500 `InternalError` (upstream's wording: `Internal error occurred: ...`).
    pub fn internal(message: &str) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        )
    }

    pub fn method_not_allowed(message: &str) -> Self {
        Self::new(405, "MethodNotAllowed", message.to_string())
    }

    pub fn unsupported_media_type(message: &str) -> Self {
        Self::new(415, "UnsupportedMediaType", message.to_string())
    }

    pub fn too_large() -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            "the request body is too large".into(),
        )
    }

    pub fn not_found_path(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    /// An injected fault (500 or 429).
    pub fn injected(code: u16) -> Self {
        match code {
            429 => Self::new(
                429,
                "TooManyRequests",
                "injected fault: too many requests, please try again later".into(),
            ),
            _ => Self::new(
                500,
                "InternalError",
                "injected fault: internal error".into(),
            ),
        }
    }

    /// The `Status` object sent as the body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

/// `pods` or `statefulsets.apps`, as upstream names resources in messages.
fn qualified(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        rt.plural.clone()
    } else {
        format!("{}.{}", rt.plural, rt.group)
    }
}
