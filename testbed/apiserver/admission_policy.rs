//! ValidatingAdmissionPolicy and ValidatingAdmissionPolicyBinding (`admissionregistration.k8s.io/v1`)
//! as the API server's admission plugin evaluates them: which requests a policy and binding match,
//! match conditions, variables, validations with messages and reasons, Deny and Warn actions, and
//! the `authorizer` library answered by an [`Authorizer`] for the requesting user.
//! Not supported: `paramKind`/`paramRef` (a policy with `paramKind` fails per its failurePolicy),
//! `auditAnnotations` and the `Audit` action (ignored), `matchPolicy: Equivalent` conversion
//! (treated as Exact), type checking of expressions against resource schemas.

use std::sync::Arc;

use serde_json::{Value, json};

use super::cel::{Activation, CelError, Declarations, Expression, cel_to_json};
use super::error::ApiError;
use super::rbac::{Authorizer, ResourceAttributes, UserInfo};

/// The operation of an admission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    /// `CREATE`, `UPDATE`, `DELETE` (the test API server serves no CONNECT requests).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "CREATE",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
        }
    }
}

/// What admission sees of a request (`admission.Attributes` upstream).
#[derive(Debug, Clone)]
pub struct AdmissionRequest {
    pub operation: Operation,
    pub group: String,
    pub version: String,
    /// The plural resource, e.g. `pods`.
    pub resource: String,
    pub subresource: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// The new object (none for DELETE).
    pub object: Option<Value>,
    /// The stored object (none for CREATE).
    pub old_object: Option<Value>,
    pub user: UserInfo,
    pub dry_run: bool,
    /// CreateOptions, UpdateOptions, ...
    pub options: Option<Value>,
}

impl AdmissionRequest {
    /// The name as admission reports it: the request's, else the object's.
    fn object_name(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        let object = self.object.as_ref().or(self.old_object.as_ref());
        object
            .and_then(|o| o["metadata"]["name"].as_str())
            .unwrap_or_default()
            .to_string()
    }

    /// CEL's `request` variable (an AdmissionRequest).
    fn to_cel_request(&self) -> Value {
        let kind = json!({"group": self.group, "version": self.version, "kind": self.kind});
        let resource =
            json!({"group": self.group, "version": self.version, "resource": self.resource});
        json!({
            "kind": kind, "resource": resource, "subResource": self.subresource,
            "requestKind": kind, "requestResource": resource, "requestSubResource": self.subresource,
            "name": self.object_name(), "namespace": self.namespace, "operation": self.operation.as_str(),
            "userInfo": self.user.to_json(), "dryRun": self.dry_run,
            "options": self.options.clone().unwrap_or(Value::Null),
        })
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDenial {
    pub policy: String,
    pub binding: String,
    /// `ValidatingAdmissionPolicy 'P' with binding 'B' denied request: MESSAGE`.
    pub message: String,
    /// `Invalid` (422, the default), `Forbidden` (403), `Unauthorized` (401),
    /// `RequestEntityTooLarge` (413).
    pub reason: String,
}

impl PolicyDenial {
    /// The HTTP code for the reason, as upstream maps it.
    pub fn code(&self) -> u16 {
        match self.reason.as_str() {
            "Forbidden" => 403,
            "Unauthorized" => 401,
            "RequestEntityTooLarge" => 413,
            _ => 422,
        }
    }

    /// The Status the API server answers with for `request`.
    pub fn to_api_error(&self, request: &AdmissionRequest) -> ApiError {
        let qualified = if request.group.is_empty() {
            request.resource.clone()
        } else {
            format!("{}.{}", request.resource, request.group)
        };
        let name = request.object_name();
        let message = if name.is_empty() {
            format!("{qualified} is forbidden: {}", self.message)
        } else {
            format!("{qualified} {name:?} is forbidden: {}", self.message)
        };
        let reason = match self.reason.as_str() {
            "Forbidden" => "Forbidden",
            "Unauthorized" => "Unauthorized",
            "RequestEntityTooLarge" => "RequestEntityTooLarge",
            _ => "Invalid",
        };
        let details = json!({"name": name, "group": request.group, "kind": request.resource,
            "causes": [{"message": self.message}]});
        ApiError::admission_denied(self.code(), reason, message, details)
    }
}

/// The outcome of admission: refused or not, and the warnings to send either way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdmissionOutcome {
    pub denial: Option<PolicyDenial>,
    pub warnings: Vec<String>,
}

/// Everything admission needs besides the request.
pub struct AdmissionPolicies<'a> {
    pub policies: &'a [Value],
    pub bindings: &'a [Value],
    /// The Namespace object of a name, for `namespaceSelector` and `namespaceObject`.
    pub namespace: &'a dyn Fn(&str) -> Option<Value>,
    pub authorizer: Arc<dyn Authorizer + Send + Sync>,
}

impl AdmissionPolicies<'_> {
    /// Runs every policy and binding pair that matches `request` (by policy, then binding name).
    pub fn admit(&self, request: &AdmissionRequest) -> AdmissionOutcome {
        let mut outcome = AdmissionOutcome::default();
        let mut pairs: Vec<(&Value, &Value)> = Vec::new();
        for binding in self.bindings {
            let policy_name = binding["spec"]["policyName"].as_str().unwrap_or_default();
            if let Some(policy) = self
                .policies
                .iter()
                .find(|p| p["metadata"]["name"] == policy_name)
            {
                pairs.push((policy, binding));
            }
        }
        pairs.sort_by_key(|(p, b)| (name_of(p), name_of(b)));
        let namespace_object = (!request.namespace.is_empty())
            .then(|| (self.namespace)(&request.namespace))
            .flatten();
        for (policy, binding) in pairs {
            if !self.matches(
                &policy["spec"]["matchConstraints"],
                request,
                namespace_object.as_ref(),
            ) || (binding["spec"]["matchResources"].is_object()
                && !self.matches(
                    &binding["spec"]["matchResources"],
                    request,
                    namespace_object.as_ref(),
                ))
            {
                continue;
            }
            let failures = self.evaluate(policy, request, namespace_object.as_ref());
            let actions: Vec<&str> = binding["spec"]["validationActions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            for failure in failures {
                if actions.contains(&"Warn") {
                    outcome.warnings.push(format!(
                        "Validation failed for ValidatingAdmissionPolicy '{}' with binding '{}': {}",
                        name_of(policy),
                        name_of(binding),
                        failure.message
                    ));
                }
                if actions.contains(&"Deny") && outcome.denial.is_none() {
                    outcome.denial = Some(PolicyDenial {
                        policy: name_of(policy).into(),
                        binding: name_of(binding).into(),
                        message: format!(
                            "ValidatingAdmissionPolicy '{}' with binding '{}' denied request: {}",
                            name_of(policy),
                            name_of(binding),
                            failure.message
                        ),
                        reason: failure.reason,
                    });
                }
            }
        }
        outcome
    }

    /// Whether `constraints` (MatchResources) select the request.
    fn matches(
        &self,
        constraints: &Value,
        request: &AdmissionRequest,
        namespace: Option<&Value>,
    ) -> bool {
        let rules_match = |key: &str| {
            constraints[key]
                .as_array()
                .into_iter()
                .flatten()
                .any(|rule| rule_matches(rule, request))
        };
        if !rules_match("resourceRules") || rules_match("excludeResourceRules") {
            return false;
        }
        let namespace_labels = if is_namespace(request) {
            request
                .object
                .as_ref()
                .or(request.old_object.as_ref())
                .map(|o| &o["metadata"]["labels"])
        } else if request.namespace.is_empty() {
            None
        } else {
            Some(namespace.map_or(&Value::Null, |n| &n["metadata"]["labels"]))
        };
        if let Some(labels) = namespace_labels
            && !selector_matches(&constraints["namespaceSelector"], labels)
        {
            return false;
        }
        let object_selector = &constraints["objectSelector"];
        [request.object.as_ref(), request.old_object.as_ref()]
            .into_iter()
            .flatten()
            .any(|o| selector_matches(object_selector, &o["metadata"]["labels"]))
            || (request.object.is_none()
                && request.old_object.is_none()
                && selector_matches(object_selector, &Value::Null))
    }

    /// Runs one policy's match conditions and validations; returns the failed validations (and
    /// evaluation errors under failurePolicy Fail).
    fn evaluate(
        &self,
        policy: &Value,
        request: &AdmissionRequest,
        namespace: Option<&Value>,
    ) -> Vec<Failure> {
        let spec = &policy["spec"];
        let fail_closed = spec["failurePolicy"].as_str() != Some("Ignore");
        let on_error = |message: String| {
            if fail_closed {
                vec![Failure {
                    message,
                    reason: "Invalid".into(),
                }]
            } else {
                Vec::new()
            }
        };
        if spec["paramKind"].is_object() {
            return on_error("paramKind is not supported by the test bed".into());
        }
        let variables: Vec<(String, &str)> = spec["variables"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                (
                    v["name"].as_str().unwrap_or_default().to_string(),
                    v["expression"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        let mut declared: Vec<String> = [
            "object",
            "oldObject",
            "request",
            "params",
            "namespaceObject",
            "authorizer",
            "authorizer.requestResource",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        declared.extend(
            variables
                .iter()
                .map(|(name, _)| format!("variables.{name}")),
        );
        let declarations = Declarations {
            variables: declared,
            authorizer: true,
            undefined_field: None,
        };
        let mut activation = self.activation(request, namespace);
        // Variables are evaluated in order; one that fails only fails the expressions using it.
        let mut failed_variables: Vec<(String, String)> = Vec::new();
        for (name, source) in &variables {
            let key = format!("variables.{name}");
            match evaluate(source, &declarations, &activation, &failed_variables) {
                Ok(value) => {
                    activation.bind(&key, value);
                }
                Err(error) => failed_variables.push((key, error)),
            }
        }
        for condition in spec["matchConditions"].as_array().into_iter().flatten() {
            let source = condition["expression"].as_str().unwrap_or_default();
            match evaluate(source, &declarations, &activation, &failed_variables) {
                Ok(::cel::Value::Bool(true)) => {}
                Ok(::cel::Value::Bool(false)) => return Vec::new(),
                Ok(_) => {
                    return on_error(format!(
                        "expression '{source}' resulted in error: must evaluate to bool"
                    ));
                }
                Err(error) => return on_error(error),
            }
        }
        let mut failures = Vec::new();
        for validation in spec["validations"].as_array().into_iter().flatten() {
            let source = validation["expression"].as_str().unwrap_or_default();
            match evaluate(source, &declarations, &activation, &failed_variables) {
                Ok(::cel::Value::Bool(true)) => {}
                Ok(::cel::Value::Bool(false)) => {
                    let message = validation["message"]
                        .as_str()
                        .map(str::trim)
                        .filter(|m| !m.is_empty());
                    let mut message = message.map_or_else(
                        || format!("failed expression: {}", source.trim()),
                        String::from,
                    );
                    if let Some(expression) = validation["messageExpression"].as_str()
                        && let Ok(value) =
                            evaluate(expression, &declarations, &activation, &failed_variables)
                        && let Some(Value::String(text)) = cel_to_json(&value)
                        && !text.trim().is_empty()
                        && !text.contains('\n')
                    {
                        message = text.trim().to_string();
                    }
                    let reason = validation["reason"]
                        .as_str()
                        .unwrap_or("Invalid")
                        .to_string();
                    failures.push(Failure { message, reason });
                }
                Ok(_) => failures.extend(on_error(format!(
                    "expression '{source}' resulted in error: must evaluate to bool"
                ))),
                Err(error) => failures.extend(on_error(error)),
            }
        }
        failures
    }

    fn activation(&self, request: &AdmissionRequest, namespace: Option<&Value>) -> Activation {
        let mut activation = Activation::default();
        let null = Value::Null;
        activation
            .bind_json("object", request.object.as_ref().unwrap_or(&null))
            .bind_json("oldObject", request.old_object.as_ref().unwrap_or(&null))
            .bind_json("request", &request.to_cel_request())
            .bind_json("params", &null)
            .bind_json("namespaceObject", namespace.unwrap_or(&null));
        let request_resource = ResourceAttributes {
            api_group: request.group.clone(),
            api_version: request.version.clone(),
            resource: request.resource.clone(),
            subresource: request.subresource.clone(),
            namespace: request.namespace.clone(),
            name: request.object_name(),
            ..ResourceAttributes::default()
        };
        activation.bind_authorizer(
            self.authorizer.clone(),
            request.user.clone(),
            request_resource,
        );
        activation
    }
}

/// A validation that did not pass.
struct Failure {
    message: String,
    reason: String,
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// Compiles and evaluates one expression; errors read as upstream's
/// (`expression 'E' resulted in error: ...`).
fn evaluate(
    source: &str,
    declarations: &Declarations,
    activation: &Activation,
    failed_variables: &[(String, String)],
) -> Result<::cel::Value, String> {
    let expression = Expression::compile(source, declarations).map_err(|e| match e {
        CelError::Compile(message) => format!("compilation error: {message}"),
        CelError::Evaluation(message) => message,
    })?;
    if let Some((_, error)) = failed_variables
        .iter()
        .find(|(name, _)| expression.uses(name))
    {
        return Err(error.clone());
    }
    expression
        .evaluate(activation)
        .map_err(|e| format!("expression '{source}' resulted in error: {e}"))
}

/// Whether the request is for a Namespace object (cluster-scoped, though it names a namespace).
fn is_namespace(request: &AdmissionRequest) -> bool {
    request.resource == "namespaces" && request.group.is_empty()
}

fn listed(rule: &Value, key: &str, value: &str) -> bool {
    rule[key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|v| v == "*" || v == value)
}

/// Whether a `NamedRuleWithOperations` covers the request (`pods` without subresources,
/// `pods/exec`, `pods/*` with any or none, `*/status`, `*/*`; scope; resourceNames).
fn rule_matches(rule: &Value, request: &AdmissionRequest) -> bool {
    let resource_matches = rule["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|r| {
            let (resource, subresource) = r.split_once('/').unwrap_or((r, ""));
            (resource == "*" || resource == request.resource)
                && (subresource == "*" || subresource == request.subresource)
        });
    let scope_matches = match rule["scope"].as_str().unwrap_or("*") {
        "Cluster" => request.namespace.is_empty() || is_namespace(request),
        "Namespaced" => !(request.namespace.is_empty() || is_namespace(request)),
        _ => true,
    };
    let names = rule["resourceNames"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    listed(rule, "operations", request.operation.as_str())
        && listed(rule, "apiGroups", &request.group)
        && listed(rule, "apiVersions", &request.version)
        && resource_matches
        && scope_matches
        && (names.is_empty()
            || names
                .iter()
                .any(|n| n.as_str() == Some(request.object_name().as_str())))
}

/// Whether `labels` (a JSON object or null) satisfy a `LabelSelector` in JSON; absent matches all.
fn selector_matches(selector: &Value, labels: &Value) -> bool {
    if !selector.is_object() {
        return true;
    }
    match serde_json::from_value(selector.clone()) {
        Ok(selector) => {
            let labels = serde_json::from_value(labels.clone()).ok();
            super::rbac::label_selector_matches(&selector, labels.as_ref())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::rbac::{Rbac, SYSTEM_AUTHENTICATED};

    fn exec_policy() -> Value {
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": "relaunch-exec"},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{
                    "apiGroups": ["relaunch.dev"], "apiVersions": ["*"],
                    "operations": ["CREATE", "UPDATE"], "resources": ["containerrecreaterequests"],
                }]},
                "variables": [
                    {"name": "execs", "expression": "object.spec.containers.filter(c, has(c.shutdown) && has(c.shutdown.exec))"},
                ],
                "validations": [{
                    "expression": "size(variables.execs) == 0 || authorizer.group('').resource('pods').subresource('exec').namespace(object.metadata.namespace).name(object.spec.podName).check('create').allowed()",
                    "messageExpression": "'user ' + request.userInfo.username + ' may not create pods/exec on pod ' + object.spec.podName",
                    "reason": "Forbidden",
                }],
            },
        })
    }

    fn binding(name: &str, policy: &str, actions: &[&str]) -> Value {
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name}, "spec": {"policyName": policy, "validationActions": actions}})
    }

    fn rbac(with_exec: bool) -> Arc<dyn Authorizer + Send + Sync> {
        let mut rules = vec![
            json!({"apiGroups": ["relaunch.dev"], "resources": ["containerrecreaterequests"], "verbs": ["create"]}),
        ];
        if with_exec {
            rules.push(json!({"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}));
        }
        let rbac = Rbac::from_objects(&[
            json!({"kind": "Role", "metadata": {"namespace": "team", "name": "restarter"}, "rules": rules}),
            json!({"kind": "RoleBinding", "metadata": {"namespace": "team", "name": "restarter"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "restarter"},
                "subjects": [{"kind": "ServiceAccount", "name": "bot"}]}),
        ])
        .unwrap();
        Arc::new(rbac)
    }

    fn crr(exec: bool) -> Value {
        let mut container = json!({"name": "app"});
        if exec {
            container["shutdown"] = json!({"exec": {"command": ["sh", "-c", "id"]}});
        }
        json!({"apiVersion": "relaunch.dev/v1alpha1", "kind": "ContainerRecreateRequest",
            "metadata": {"name": "r1", "namespace": "team", "labels": {"app": "web"}},
            "spec": {"podName": "web-0", "containers": [container]}})
    }

    fn create(object: Value, user: UserInfo) -> AdmissionRequest {
        AdmissionRequest {
            operation: Operation::Create,
            group: "relaunch.dev".into(),
            version: "v1alpha1".into(),
            resource: "containerrecreaterequests".into(),
            subresource: String::new(),
            kind: "ContainerRecreateRequest".into(),
            namespace: "team".into(),
            name: String::new(),
            object: Some(object),
            old_object: None,
            user,
            dry_run: false,
            options: None,
        }
    }

    fn namespaces(name: &str) -> Option<Value> {
        Some(
            json!({"metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, "tier": "prod"}}}),
        )
    }

    fn admit(
        policies: &[Value],
        bindings: &[Value],
        authorizer: Arc<dyn Authorizer + Send + Sync>,
        request: &AdmissionRequest,
    ) -> AdmissionOutcome {
        AdmissionPolicies {
            policies,
            bindings,
            namespace: &namespaces,
            authorizer,
        }
        .admit(request)
    }

    fn bot() -> UserInfo {
        UserInfo::service_account("team", "bot")
    }

    #[test]
    fn exec_request_is_denied_unless_the_user_may_create_pods_exec_on_that_pod() {
        let policies = [exec_policy()];
        let bindings = [binding("relaunch-exec", "relaunch-exec", &["Deny"])];
        let request = create(crr(true), bot());
        let denied = admit(&policies, &bindings, rbac(false), &request)
            .denial
            .expect("denied");
        assert_eq!(
            denied.message,
            "ValidatingAdmissionPolicy 'relaunch-exec' with binding 'relaunch-exec' denied request: user system:serviceaccount:team:bot may not create pods/exec on pod web-0"
        );
        assert_eq!(denied.code(), 403);
        let status = denied.to_api_error(&request).to_status();
        assert_eq!(status["reason"], "Forbidden");
        assert_eq!(
            status["message"],
            format!(
                r#"containerrecreaterequests.relaunch.dev "r1" is forbidden: {}"#,
                denied.message
            )
        );
        assert_eq!(
            status["details"]["causes"][0]["message"],
            json!(denied.message)
        );

        assert_eq!(
            admit(
                &policies,
                &bindings,
                rbac(false),
                &create(crr(false), bot())
            ),
            AdmissionOutcome::default()
        );
        assert_eq!(
            admit(&policies, &bindings, rbac(true), &request),
            AdmissionOutcome::default()
        );
    }

    #[test]
    fn exec_policy_checks_the_pod_named_in_the_request() {
        let rbac = Rbac::from_objects(&[
            json!({"kind": "Role", "metadata": {"namespace": "team", "name": "one-pod"},
                "rules": [{"apiGroups": [""], "resources": ["pods/exec"], "resourceNames": ["web-1"], "verbs": ["create"]}]}),
            json!({"kind": "RoleBinding", "metadata": {"namespace": "team", "name": "one-pod"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "one-pod"},
                "subjects": [{"kind": "ServiceAccount", "name": "bot"}]}),
        ])
        .unwrap();
        let outcome = admit(
            &[exec_policy()],
            &[binding("b", "relaunch-exec", &["Deny"])],
            Arc::new(rbac),
            &create(crr(true), bot()),
        );
        assert!(
            outcome.denial.is_some(),
            "pods/exec on web-1 does not cover web-0"
        );
    }

    #[test]
    fn warn_action_warns_without_denying() {
        let outcome = admit(
            &[exec_policy()],
            &[binding("audit", "relaunch-exec", &["Warn", "Audit"])],
            rbac(false),
            &create(crr(true), bot()),
        );
        assert_eq!(outcome.denial, None);
        assert_eq!(
            outcome.warnings,
            [
                "Validation failed for ValidatingAdmissionPolicy 'relaunch-exec' with binding 'audit': user system:serviceaccount:team:bot may not create pods/exec on pod web-0"
            ]
        );
    }

    fn simple_policy(constraints: Value, validation: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"matchConstraints": constraints, "validations": [validation]}})
    }

    fn deny_all() -> Value {
        json!({"expression": "false"})
    }

    fn crr_rules(extra: Value) -> Value {
        let mut rule = json!({"apiGroups": ["relaunch.dev"], "apiVersions": ["v1alpha1"], "operations": ["CREATE"], "resources": ["containerrecreaterequests"]});
        for (k, v) in extra.as_object().unwrap() {
            rule[k] = v.clone();
        }
        json!({"resourceRules": [rule]})
    }

    fn denied(policy: Value, request: &AdmissionRequest) -> bool {
        admit(
            &[policy],
            &[binding("b", "p", &["Deny"])],
            rbac(false),
            request,
        )
        .denial
        .is_some()
    }

    #[test]
    fn resource_rules_match_operations_groups_and_subresources_as_upstream() {
        let request = create(crr(false), bot());
        assert!(denied(
            simple_policy(crr_rules(json!({})), deny_all()),
            &request
        ));
        assert!(!denied(
            simple_policy(crr_rules(json!({"operations": ["UPDATE"]})), deny_all()),
            &request
        ));
        assert!(denied(
            simple_policy(
                crr_rules(json!({"operations": ["*"], "apiVersions": ["*"]})),
                deny_all()
            ),
            &request
        ));
        assert!(!denied(
            simple_policy(crr_rules(json!({"apiGroups": ["apps"]})), deny_all()),
            &request
        ));
        let mut status = request.clone();
        status.subresource = "status".into();
        assert!(
            !denied(simple_policy(crr_rules(json!({})), deny_all()), &status),
            "plain resource excludes subresources"
        );
        assert!(denied(
            simple_policy(
                crr_rules(json!({"resources": ["containerrecreaterequests/*"]})),
                deny_all()
            ),
            &status
        ));
        assert!(denied(
            simple_policy(crr_rules(json!({"resources": ["*/status"]})), deny_all()),
            &status
        ));
        assert!(!denied(
            simple_policy(crr_rules(json!({"resources": ["*"]})), deny_all()),
            &status
        ));
        assert!(!denied(
            simple_policy(crr_rules(json!({"scope": "Cluster"})), deny_all()),
            &request
        ));
        assert!(!denied(
            simple_policy(crr_rules(json!({"resourceNames": ["other"]})), deny_all()),
            &request
        ));
        assert!(denied(
            simple_policy(crr_rules(json!({"resourceNames": ["r1"]})), deny_all()),
            &request
        ));
        let mut excluded = crr_rules(json!({}));
        excluded["excludeResourceRules"] = crr_rules(json!({}))["resourceRules"].clone();
        assert!(!denied(simple_policy(excluded, deny_all()), &request));
    }

    #[test]
    fn namespace_and_object_selectors_narrow_the_match() {
        let request = create(crr(false), bot());
        let with = |key: &str, selector: Value| {
            let mut constraints = crr_rules(json!({}));
            constraints[key] = selector;
            simple_policy(constraints, deny_all())
        };
        assert!(denied(
            with(
                "namespaceSelector",
                json!({"matchLabels": {"tier": "prod"}})
            ),
            &request
        ));
        assert!(!denied(
            with("namespaceSelector", json!({"matchLabels": {"tier": "dev"}})),
            &request
        ));
        assert!(denied(
            with(
                "objectSelector",
                json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]})
            ),
            &request
        ));
        assert!(!denied(
            with(
                "objectSelector",
                json!({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]})
            ),
            &request
        ));
    }

    #[test]
    fn binding_match_resources_narrow_the_policy() {
        let request = create(crr(false), bot());
        let mut narrowed = binding("b", "p", &["Deny"]);
        narrowed["spec"]["matchResources"] = json!({"namespaceSelector": {"matchLabels": {"tier": "dev"}},
            "resourceRules": crr_rules(json!({}))["resourceRules"].clone()});
        let policy = simple_policy(crr_rules(json!({})), deny_all());
        assert!(
            admit(&[policy], &[narrowed], rbac(false), &request)
                .denial
                .is_none()
        );
    }

    #[test]
    fn default_message_and_reason_are_upstreams() {
        let request = create(crr(false), bot());
        let outcome = admit(
            &[simple_policy(
                crr_rules(json!({})),
                json!({"expression": "object.spec.podName != 'web-0'"}),
            )],
            &[binding("b", "p", &["Deny"])],
            rbac(false),
            &request,
        );
        let denial = outcome.denial.unwrap();
        assert_eq!(
            denial.message,
            "ValidatingAdmissionPolicy 'p' with binding 'b' denied request: failed expression: object.spec.podName != 'web-0'"
        );
        assert_eq!(denial.code(), 422);
        assert_eq!(
            denial.to_api_error(&request).to_status()["reason"],
            "Invalid"
        );
        let with_message = simple_policy(
            crr_rules(json!({})),
            json!({"expression": "false", "message": "no restarts today"}),
        );
        assert!(
            admit(
                &[with_message],
                &[binding("b", "p", &["Deny"])],
                rbac(false),
                &request
            )
            .denial
            .unwrap()
            .message
            .ends_with(": no restarts today")
        );
    }

    fn with_conditions(conditions: Value, failure_policy: &str) -> Value {
        let mut policy = simple_policy(crr_rules(json!({})), deny_all());
        policy["spec"]["matchConditions"] = conditions;
        policy["spec"]["failurePolicy"] = json!(failure_policy);
        policy
    }

    #[test]
    fn match_conditions_skip_policies_and_errors_follow_failure_policy() {
        let request = create(crr(false), bot());
        let condition = |e: &str| json!([{"name": "c", "expression": e}]);
        assert!(denied(
            with_conditions(condition("request.operation == 'CREATE'"), "Fail"),
            &request
        ));
        assert!(!denied(
            with_conditions(
                condition("'system:masters' in request.userInfo.groups"),
                "Fail"
            ),
            &request
        ));
        assert!(denied(
            with_conditions(condition("object.nothing == 1"), "Fail"),
            &request
        ));
        assert!(!denied(
            with_conditions(condition("object.nothing == 1"), "Ignore"),
            &request
        ));
    }

    #[test]
    fn evaluation_errors_follow_failure_policy() {
        let request = create(crr(false), bot());
        let mut policy = simple_policy(
            crr_rules(json!({})),
            json!({"expression": "object.spec.missing > 0"}),
        );
        let outcome = admit(
            &[policy.clone()],
            &[binding("b", "p", &["Deny"])],
            rbac(false),
            &request,
        );
        assert_eq!(
            outcome.denial.unwrap().message,
            "ValidatingAdmissionPolicy 'p' with binding 'b' denied request: expression 'object.spec.missing > 0' resulted in error: no such key: missing"
        );
        policy["spec"]["failurePolicy"] = json!("Ignore");
        assert!(
            admit(
                &[policy],
                &[binding("b", "p", &["Deny"])],
                rbac(false),
                &request
            )
            .denial
            .is_none()
        );
    }

    #[test]
    fn variables_are_lazy_and_compose() {
        let request = create(crr(false), bot());
        let mut policy = simple_policy(
            crr_rules(json!({})),
            json!({"expression": "variables.pod == 'web-0'"}),
        );
        policy["spec"]["variables"] = json!([
            {"name": "broken", "expression": "object.spec.missing"},
            {"name": "spec", "expression": "object.spec"},
            {"name": "pod", "expression": "variables.spec.podName"},
        ]);
        assert!(
            !denied(policy.clone(), &request),
            "an unused failing variable does not matter"
        );
        policy["spec"]["validations"] = json!([{"expression": "variables.broken == 1"}]);
        assert!(denied(policy, &request));
    }

    #[test]
    fn request_old_object_and_namespace_object_are_visible() {
        let mut request = create(
            crr(false),
            UserInfo::new("alice", &["devs", SYSTEM_AUTHENTICATED]),
        );
        request.operation = Operation::Update;
        request.name = "r1".into();
        request.old_object = Some(crr(true));
        let rules = crr_rules(json!({"operations": ["UPDATE"]}));
        for expression in [
            "request.operation == 'UPDATE' && request.name == 'r1' && request.namespace == 'team'",
            "request.userInfo.username == 'alice' && 'devs' in request.userInfo.groups",
            "request.resource.group == 'relaunch.dev' && request.kind.kind == 'ContainerRecreateRequest'",
            "has(oldObject.spec.containers[0].shutdown) && !has(object.spec.containers[0].shutdown)",
            "namespaceObject.metadata.labels.tier == 'prod'",
            "params == null && !request.dryRun",
        ] {
            let policy = simple_policy(rules.clone(), json!({"expression": expression}));
            assert!(!denied(policy, &request), "{expression}");
        }
    }

    #[test]
    fn param_kind_is_unsupported_and_fails_per_failure_policy() {
        let request = create(crr(false), bot());
        let mut policy = simple_policy(crr_rules(json!({})), json!({"expression": "true"}));
        policy["spec"]["paramKind"] = json!({"apiVersion": "v1", "kind": "ConfigMap"});
        assert!(denied(policy.clone(), &request));
        policy["spec"]["failurePolicy"] = json!("Ignore");
        assert!(!denied(policy, &request));
    }

    #[test]
    fn bindings_to_missing_policies_do_nothing() {
        let outcome = admit(
            &[],
            &[binding("b", "gone", &["Deny"])],
            rbac(false),
            &create(crr(true), bot()),
        );
        assert_eq!(outcome, AdmissionOutcome::default());
    }
}
