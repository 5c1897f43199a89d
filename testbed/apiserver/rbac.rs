//! RBAC as the real API server authorizes: Roles, ClusterRoles (with aggregation), RoleBindings
//! and ClusterRoleBindings decide what a user may do; `system:masters` may do everything. Also the
//! answers of `SelfSubjectRulesReview`, the checks impersonation makes, and the bootstrap roles and
//! bindings every cluster starts with. Pure data in, decisions out: the server wires it in.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Value, json};

/// The group whose members may do everything.
pub const SYSTEM_MASTERS: &str = "system:masters";
/// The group of every authenticated user.
pub const SYSTEM_AUTHENTICATED: &str = "system:authenticated";
/// The group of requests without credentials.
pub const SYSTEM_UNAUTHENTICATED: &str = "system:unauthenticated";
/// The group of every service account.
pub const SYSTEM_SERVICE_ACCOUNTS: &str = "system:serviceaccounts";
/// The user of requests without credentials.
pub const ANONYMOUS: &str = "system:anonymous";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// Why RBAC objects could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RbacError {
    #[error("not an RBAC object: kind {0:?}")]
    NotRbac(String),
    #[error("invalid {kind}: {source}")]
    Malformed {
        kind: String,
        source: serde_json::Error,
    },
}

/// Who makes a request, as authentication found it (`user.Info` upstream).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A user with these groups (the caller adds `system:authenticated`, as authentication does).
    pub fn new(username: &str, groups: &[&str]) -> Self {
        Self {
            username: username.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Self::default()
        }
    }

    /// Service account `namespace/name` with the groups its token authenticates with:
    /// `system:serviceaccounts`, `system:serviceaccounts:<namespace>`, `system:authenticated`.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        let mut groups = service_account_groups(namespace);
        groups.push(SYSTEM_AUTHENTICATED.into());
        Self {
            username: service_account_username(namespace, name),
            groups,
            ..Self::default()
        }
    }

    /// The user of requests without credentials when anonymous requests are enabled (the test
    /// API server treats such requests as its administrator's instead).
    #[cfg(test)]
    pub fn anonymous() -> Self {
        Self::new(ANONYMOUS, &[SYSTEM_UNAUTHENTICATED])
    }

    /// `(namespace, name)` when this user is a service account.
    #[cfg(test)]
    pub fn service_account_name(&self) -> Option<(&str, &str)> {
        parse_service_account_username(&self.username)
    }

    /// The `userInfo` of admission reviews, SubjectAccessReviews and CEL's `request.userInfo`.
    pub fn to_json(&self) -> Value {
        let mut user = json!({"username": self.username, "groups": self.groups});
        if !self.uid.is_empty() {
            user["uid"] = json!(self.uid);
        }
        if !self.extra.is_empty() {
            user["extra"] = json!(self.extra);
        }
        user
    }
}

/// `system:serviceaccount:<namespace>:<name>`.
pub fn service_account_username(namespace: &str, name: &str) -> String {
    format!("{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}")
}

/// The groups a service account of `namespace` is in (without `system:authenticated`).
pub fn service_account_groups(namespace: &str) -> Vec<String> {
    vec![
        SYSTEM_SERVICE_ACCOUNTS.into(),
        format!("{SYSTEM_SERVICE_ACCOUNTS}:{namespace}"),
    ]
}

/// Splits `system:serviceaccount:<namespace>:<name>` into namespace and name.
pub fn parse_service_account_username(username: &str) -> Option<(&str, &str)> {
    let rest = username.strip_prefix(SERVICE_ACCOUNT_PREFIX)?;
    let (namespace, name) = rest.split_once(':')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains(':')).then_some((namespace, name))
}

/// What a request asks to do (`authorizer.Attributes` upstream, without the user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    Resource(ResourceAttributes),
    NonResource { path: String, verb: String },
}

/// A request on an API resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceAttributes {
    pub verb: String,
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: String,
    /// Empty for cluster-scoped resources and requests across all namespaces.
    pub namespace: String,
    /// Empty for create, list, watch and deletecollection.
    pub name: String,
}

impl Attributes {
    /// A resource request: `verb` on `resource` (optionally `resource/subresource`) of `api_group`.
    pub fn resource(
        verb: &str,
        api_group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Self {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        Self::Resource(ResourceAttributes {
            verb: verb.into(),
            api_group: api_group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
            ..ResourceAttributes::default()
        })
    }

    /// A request for a path outside the resource API (`/healthz`, `/version`, `/api`).
    pub fn non_resource(verb: &str, path: &str) -> Self {
        Self::NonResource {
            path: path.into(),
            verb: verb.into(),
        }
    }

    /// The verb.
    pub fn verb(&self) -> &str {
        match self {
            Self::Resource(r) => &r.verb,
            Self::NonResource { verb, .. } => verb,
        }
    }

    /// The namespace the request is in; empty when none.
    pub fn namespace(&self) -> &str {
        match self {
            Self::Resource(r) => &r.namespace,
            Self::NonResource { .. } => "",
        }
    }
}

/// An authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow {
        reason: String,
    },
    /// Not allowed by this authorizer; the request is refused when no other allows it.
    NoOpinion {
        reason: String,
    },
}

impl Decision {
    /// Whether the request may proceed.
    pub fn allowed(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }

    /// Why, as upstream says it (often empty when not allowed).
    pub fn reason(&self) -> &str {
        match self {
            Self::Allow { reason } | Self::NoOpinion { reason } => reason,
        }
    }
}

/// Something that decides whether a user may do something (`authorizer.Authorizer` upstream).
pub trait Authorizer {
    /// Decides; an `Err` is an evaluation error (CEL's `errored()`), not a denial.
    fn authorize(&self, user: &UserInfo, attributes: &Attributes) -> Result<Decision, String>;
}

/// The RBAC objects of a cluster, and the authorizer they make.
#[derive(Debug, Clone, Default)]
pub struct Rbac {
    pub roles: Vec<Role>,
    pub cluster_roles: Vec<ClusterRole>,
    pub role_bindings: Vec<RoleBinding>,
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
}

/// Called with each rule that applies (and where it came from) or each error resolving one;
/// returns whether to go on.
type RuleVisitor<'v> =
    dyn FnMut(Option<&RuleSource>, Option<&PolicyRule>, Option<String>) -> bool + 'v;

/// The binding a rule came from, described as upstream does in reasons.
struct RuleSource<'a> {
    binding_kind: &'static str,
    binding: String,
    role_ref: &'a RoleRef,
    subject: &'a Subject,
    binding_namespace: &'a str,
}

impl std::fmt::Display for RuleSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let subject = match (
            self.subject.kind.as_str(),
            self.subject.namespace.as_deref(),
        ) {
            ("ServiceAccount", Some(ns)) if !ns.is_empty() => format!("{}/{ns}", self.subject.name),
            ("ServiceAccount", _) => format!("{}/{}", self.subject.name, self.binding_namespace),
            _ => self.subject.name.clone(),
        };
        write!(
            f,
            "{} {:?} of {} {:?} to {} {subject:?}",
            self.binding_kind,
            self.binding,
            self.role_ref.kind,
            self.role_ref.name,
            self.subject.kind
        )
    }
}

impl Rbac {
    /// Reads Role, ClusterRole, RoleBinding and ClusterRoleBinding objects (JSON, any order).
    #[cfg(test)]
    pub fn from_objects<'a>(
        objects: impl IntoIterator<Item = &'a Value>,
    ) -> Result<Self, RbacError> {
        let mut rbac = Self::default();
        for object in objects {
            rbac.add(object)?;
        }
        Ok(rbac)
    }

    /// Adds one RBAC object (JSON).
    pub fn add(&mut self, object: &Value) -> Result<(), RbacError> {
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let malformed = |source| RbacError::Malformed {
            kind: kind.clone(),
            source,
        };
        let object = object.clone();
        match kind.as_str() {
            "Role" => self
                .roles
                .push(serde_json::from_value(object).map_err(malformed)?),
            "ClusterRole" => self
                .cluster_roles
                .push(serde_json::from_value(object).map_err(malformed)?),
            "RoleBinding" => self
                .role_bindings
                .push(serde_json::from_value(object).map_err(malformed)?),
            "ClusterRoleBinding" => self
                .cluster_role_bindings
                .push(serde_json::from_value(object).map_err(malformed)?),
            _ => return Err(RbacError::NotRbac(kind)),
        }
        Ok(())
    }

    /// The bootstrap roles and bindings of a new cluster, with aggregated roles filled in.
    #[cfg(test)]
    pub fn bootstrap() -> Self {
        let mut rbac = Self::from_objects(&bootstrap_objects()).unwrap_or_default();
        rbac.cluster_roles = aggregate_cluster_roles(&rbac.cluster_roles);
        rbac
    }

    /// The rules of the role `role_ref` names, as seen from a binding in `namespace`.
    fn role_rules(&self, role_ref: &RoleRef, namespace: &str) -> Result<&[PolicyRule], String> {
        let rules = match role_ref.kind.as_str() {
            "Role" => self
                .roles
                .iter()
                .find(|r| {
                    r.metadata.name.as_deref() == Some(&role_ref.name)
                        && r.metadata.namespace.as_deref() == Some(namespace)
                })
                .map(|r| r.rules.as_deref())
                .ok_or_else(|| {
                    format!(
                        "role.rbac.authorization.k8s.io {:?} not found",
                        role_ref.name
                    )
                })?,
            "ClusterRole" => self
                .cluster_roles
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(&role_ref.name))
                .map(|r| r.rules.as_deref())
                .ok_or_else(|| {
                    format!(
                        "clusterrole.rbac.authorization.k8s.io {:?} not found",
                        role_ref.name
                    )
                })?,
            kind => return Err(format!("unsupported role reference kind: {kind:?}")),
        };
        Ok(rules.unwrap_or_default())
    }

    /// Visits every rule that applies to `user` in `namespace` (cluster bindings first, then the
    /// namespace's bindings), and every error resolving them; stops when `visit` returns false.
    fn visit_rules(&self, user: &UserInfo, namespace: &str, visit: &mut RuleVisitor) {
        for binding in &self.cluster_role_bindings {
            let Some(subject) = applies_to(user, binding.subjects.as_deref(), "") else {
                continue;
            };
            let source = RuleSource {
                binding_kind: "ClusterRoleBinding",
                binding: binding.metadata.name.clone().unwrap_or_default(),
                role_ref: &binding.role_ref,
                subject,
                binding_namespace: "",
            };
            if !self.visit_role(&source, "", visit) {
                return;
            }
        }
        if namespace.is_empty() {
            return;
        }
        for binding in &self.role_bindings {
            if binding.metadata.namespace.as_deref() != Some(namespace) {
                continue;
            }
            let Some(subject) = applies_to(user, binding.subjects.as_deref(), namespace) else {
                continue;
            };
            let source = RuleSource {
                binding_kind: "RoleBinding",
                binding: format!(
                    "{}/{namespace}",
                    binding.metadata.name.as_deref().unwrap_or_default()
                ),
                role_ref: &binding.role_ref,
                subject,
                binding_namespace: namespace,
            };
            if !self.visit_role(&source, namespace, visit) {
                return;
            }
        }
    }

    fn visit_role(&self, source: &RuleSource, namespace: &str, visit: &mut RuleVisitor) -> bool {
        match self.role_rules(source.role_ref, namespace) {
            Err(error) => visit(None, None, Some(error)),
            Ok(rules) => rules
                .iter()
                .all(|rule| visit(Some(source), Some(rule), None)),
        }
    }

    /// What `user` may do in `namespace` (empty: cluster-wide rules only), as
    /// `SelfSubjectRulesReview` answers.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> SubjectRules {
        let mut rules = SubjectRules::default();
        let mut errors = Vec::new();
        self.visit_rules(user, namespace, &mut |_, rule, error| {
            if let Some(rule) = rule {
                rules.add(rule);
            }
            errors.extend(error);
            true
        });
        rules.evaluation_error = aggregate_errors(&errors);
        rules
    }
}

impl Authorizer for Rbac {
    fn authorize(&self, user: &UserInfo, attributes: &Attributes) -> Result<Decision, String> {
        // The privileged-groups authorizer runs before RBAC upstream and allows without a reason.
        if user.groups.iter().any(|g| g == SYSTEM_MASTERS) {
            return Ok(Decision::Allow {
                reason: String::new(),
            });
        }
        let mut allowed_by = None;
        let mut errors = Vec::new();
        self.visit_rules(user, attributes.namespace(), &mut |source, rule, error| {
            if let (Some(source), Some(rule)) = (source, rule)
                && rule_allows(attributes, rule)
            {
                allowed_by = Some(format!("RBAC: allowed by {source}"));
                return false;
            }
            errors.extend(error);
            true
        });
        Ok(match allowed_by {
            Some(reason) => Decision::Allow { reason },
            None => Decision::NoOpinion {
                reason: aggregate_errors(&errors)
                    .map(|e| format!("RBAC: {e}"))
                    .unwrap_or_default(),
            },
        })
    }
}

/// `e` or `[e1, e2]`, as upstream's aggregate error prints.
fn aggregate_errors(errors: &[String]) -> Option<String> {
    match errors {
        [] => None,
        [one] => Some(one.clone()),
        many => Some(format!("[{}]", many.join(", "))),
    }
}

/// The first subject of a binding that `user` is, if any.
fn applies_to<'a>(
    user: &UserInfo,
    subjects: Option<&'a [Subject]>,
    namespace: &str,
) -> Option<&'a Subject> {
    subjects?
        .iter()
        .find(|s| subject_matches(user, s, namespace))
}

fn subject_matches(user: &UserInfo, subject: &Subject, namespace: &str) -> bool {
    match subject.kind.as_str() {
        "User" => user.username == subject.name,
        "Group" => user.groups.contains(&subject.name),
        "ServiceAccount" => {
            // A RoleBinding's service account subject without a namespace is in the binding's.
            let sa_namespace = match subject.namespace.as_deref() {
                Some(ns) if !ns.is_empty() => ns,
                _ => namespace,
            };
            !sa_namespace.is_empty()
                && user.username == service_account_username(sa_namespace, &subject.name)
        }
        _ => false,
    }
}

/// Whether `rule` allows the request (`RuleAllows` upstream).
pub fn rule_allows(attributes: &Attributes, rule: &PolicyRule) -> bool {
    let verb_matches = rule
        .verbs
        .iter()
        .any(|v| v == "*" || v == attributes.verb());
    match attributes {
        Attributes::Resource(r) => {
            let combined = if r.subresource.is_empty() {
                r.resource.clone()
            } else {
                format!("{}/{}", r.resource, r.subresource)
            };
            verb_matches
                && has_or_all(rule.api_groups.as_deref(), &r.api_group)
                && resource_matches(
                    rule.resources.as_deref().unwrap_or_default(),
                    &combined,
                    &r.subresource,
                )
                && rule
                    .resource_names
                    .as_deref()
                    .is_none_or(|names| names.is_empty() || names.contains(&r.name))
        }
        Attributes::NonResource { path, .. } => {
            verb_matches
                && rule
                    .non_resource_urls
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|url| {
                        url == "*"
                            || url == path
                            || url.strip_suffix('*').is_some_and(|prefix| {
                                path.starts_with(prefix.trim_end_matches('*'))
                            })
                    })
        }
    }
}

fn has_or_all(values: Option<&[String]>, wanted: &str) -> bool {
    values
        .unwrap_or_default()
        .iter()
        .any(|v| v == "*" || v == wanted)
}

fn resource_matches(rule_resources: &[String], combined: &str, subresource: &str) -> bool {
    rule_resources.iter().any(|r| {
        r == "*"
            || r == combined
            || (!subresource.is_empty() && r.strip_prefix("*/") == Some(subresource))
    })
}

/// What `SelfSubjectRulesReview` returns in `status`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubjectRules {
    pub resource_rules: Vec<PolicyRule>,
    pub non_resource_rules: Vec<PolicyRule>,
    /// Set when a binding names a role that does not exist.
    pub evaluation_error: Option<String>,
}

impl SubjectRules {
    fn add(&mut self, rule: &PolicyRule) {
        if rule.resources.as_ref().is_some_and(|r| !r.is_empty()) {
            self.resource_rules.push(PolicyRule {
                non_resource_urls: None,
                ..rule.clone()
            });
        }
        if rule
            .non_resource_urls
            .as_ref()
            .is_some_and(|u| !u.is_empty())
        {
            self.non_resource_rules.push(PolicyRule {
                verbs: rule.verbs.clone(),
                non_resource_urls: rule.non_resource_urls.clone(),
                ..PolicyRule::default()
            });
        }
    }

    /// The review's `status` object.
    pub fn to_status(&self) -> Value {
        let resource_rules: Vec<Value> = self
            .resource_rules
            .iter()
            .map(|r| {
                let mut rule = json!({"verbs": r.verbs, "apiGroups": r.api_groups.clone().unwrap_or_default(),
                    "resources": r.resources.clone().unwrap_or_default()});
                if let Some(names) = r.resource_names.as_ref().filter(|n| !n.is_empty()) {
                    rule["resourceNames"] = json!(names);
                }
                rule
            })
            .collect();
        let non_resource_rules: Vec<Value> = self
            .non_resource_rules
            .iter()
            .map(|r| json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls.clone().unwrap_or_default()}))
            .collect();
        let mut status = json!({
            "resourceRules": resource_rules,
            "nonResourceRules": non_resource_rules,
            "incomplete": false,
        });
        if let Some(error) = &self.evaluation_error {
            status["evaluationError"] = json!(error);
        }
        status
    }
}

/// The rules aggregated ClusterRoles hold once the clusterrole-aggregation controller has run:
/// each role with an `aggregationRule` gets the rules of every other ClusterRole its selectors
/// match (by name order, duplicates dropped), repeated until nothing changes so that
/// aggregated roles feeding others (`view` into `edit` into `admin`) settle.
#[cfg(test)]
pub fn aggregate_cluster_roles(roles: &[ClusterRole]) -> Vec<ClusterRole> {
    let mut roles = roles.to_vec();
    roles.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for _ in 0..=roles.len() {
        let mut changed = false;
        for i in 0..roles.len() {
            if let Some(rules) = aggregated_rules(&roles[i], &roles)
                && roles[i].rules.as_deref().unwrap_or_default() != rules.as_slice()
            {
                roles[i].rules = Some(rules);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    roles
}

/// The rules the aggregation controller gives `role` from `all` (sorted by name), or `None` when
/// it has no aggregation rule.
pub fn aggregated_rules(role: &ClusterRole, all: &[ClusterRole]) -> Option<Vec<PolicyRule>> {
    let selectors = role
        .aggregation_rule
        .as_ref()?
        .cluster_role_selectors
        .as_deref()
        .unwrap_or_default();
    let mut rules: Vec<PolicyRule> = Vec::new();
    for selector in selectors {
        for other in all {
            if other.metadata.name == role.metadata.name
                || !label_selector_matches(selector, other.metadata.labels.as_ref())
            {
                continue;
            }
            for rule in other.rules.as_deref().unwrap_or_default() {
                if !rules.contains(rule) {
                    rules.push(rule.clone());
                }
            }
        }
    }
    Some(rules)
}

/// Whether `labels` satisfy a `LabelSelector` (matchLabels and matchExpressions; an empty
/// selector matches everything; an unknown operator matches nothing).
pub fn label_selector_matches(
    selector: &LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let get = |key: &str| labels.and_then(|l| l.get(key));
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| get(k) == Some(v));
    labels_match
        && selector.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            match e.operator.as_str() {
                "In" => get(&e.key).is_some_and(|v| values.contains(v)),
                "NotIn" => get(&e.key).is_none_or(|v| !values.contains(v)),
                "Exists" => get(&e.key).is_some(),
                "DoesNotExist" => get(&e.key).is_none(),
                _ => false,
            }
        })
}

/// What a request asks to act as (`Impersonate-User`, `-Uid`, `-Group`, `-Extra-<key>` headers;
/// `kubectl --as`, `--as-uid`, `--as-group`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Impersonation {
    pub user: Option<String>,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Why impersonation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImpersonationError {
    /// Groups, extras or a uid without a user (upstream answers 500 InternalError).
    #[error("requested {0} without impersonating a user")]
    WithoutUser(String),
    /// The requester may not `impersonate` one of the identities (403 Forbidden).
    #[error("{message}")]
    Forbidden {
        attributes: Box<Attributes>,
        message: String,
    },
    /// The authorizer failed.
    #[error("{0}")]
    Authorizer(String),
}

impl Impersonation {
    /// Whether the request impersonates anyone.
    pub fn is_requested(&self) -> bool {
        self.user.is_some()
            || self.uid.is_some()
            || !self.groups.is_empty()
            || !self.extra.is_empty()
    }

    /// The `impersonate` checks the API server makes, in its order: the user (or service
    /// account), each group, each extra value, then the uid. Users, groups and service accounts
    /// are in the core group (upstream's impersonation references carry no API version); extras
    /// and uids in `authentication.k8s.io`.
    pub fn checks(&self) -> Vec<Attributes> {
        let mut checks = Vec::new();
        let auth = "authentication.k8s.io";
        if let Some(user) = &self.user {
            checks.push(match parse_service_account_username(user) {
                Some((ns, name)) => {
                    Attributes::resource("impersonate", "", "serviceaccounts", ns, name)
                }
                None => Attributes::resource("impersonate", "", "users", "", user),
            });
        }
        for group in &self.groups {
            checks.push(Attributes::resource("impersonate", "", "groups", "", group));
        }
        for (key, values) in &self.extra {
            for value in values {
                checks.push(Attributes::resource(
                    "impersonate",
                    auth,
                    &format!("userextras/{key}"),
                    "",
                    value,
                ));
            }
        }
        if let Some(uid) = &self.uid {
            checks.push(Attributes::resource("impersonate", auth, "uids", "", uid));
        }
        checks
    }

    /// The identity the request acts as once `requester` passed every check with `authorizer`:
    /// a service account without requested groups gets its fixed groups, and everyone but
    /// `system:anonymous` gets `system:authenticated` (anonymous: `system:unauthenticated`).
    pub fn impersonate(
        &self,
        authorizer: &dyn Authorizer,
        requester: &UserInfo,
    ) -> Result<UserInfo, ImpersonationError> {
        let Some(username) = &self.user else {
            return Err(ImpersonationError::WithoutUser(format!("{self:?}")));
        };
        for check in self.checks() {
            let decision = authorizer
                .authorize(requester, &check)
                .map_err(ImpersonationError::Authorizer)?;
            if !decision.allowed() {
                return Err(ImpersonationError::Forbidden {
                    message: forbidden_message(requester, &check, decision.reason()),
                    attributes: Box::new(check),
                });
            }
        }
        let mut groups = self.groups.clone();
        if groups.is_empty()
            && let Some((ns, _)) = parse_service_account_username(username)
        {
            groups = service_account_groups(ns);
        }
        let implied = if username == ANONYMOUS {
            SYSTEM_UNAUTHENTICATED
        } else {
            SYSTEM_AUTHENTICATED
        };
        if !groups.iter().any(|g| g == implied) {
            groups.push(implied.into());
        }
        Ok(UserInfo {
            username: username.clone(),
            uid: self.uid.clone().unwrap_or_default(),
            groups,
            extra: self.extra.clone(),
        })
    }
}

/// The message of the 403 the API server answers when `user` may not do `attributes`, e.g.
/// `pods "p" is forbidden: User "u" cannot get resource "pods" in API group "" in the namespace "ns"`,
/// with `: REASON` appended when the authorizer gave one.
pub fn forbidden_message(user: &UserInfo, attributes: &Attributes, reason: &str) -> String {
    let (prefix, what) = match attributes {
        Attributes::NonResource { path, verb } => (
            "forbidden".to_string(),
            format!("User {:?} cannot {verb} path {path:?}", user.username),
        ),
        Attributes::Resource(r) => {
            let qualified = if r.api_group.is_empty() {
                r.resource.clone()
            } else {
                format!("{}.{}", r.resource, r.api_group)
            };
            let prefix = if r.name.is_empty() {
                format!("{qualified} is forbidden")
            } else {
                format!("{qualified} {:?} is forbidden", r.name)
            };
            let resource = if r.subresource.is_empty() {
                r.resource.clone()
            } else {
                format!("{}/{}", r.resource, r.subresource)
            };
            let scope = if r.namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace {:?}", r.namespace)
            };
            (
                prefix,
                format!(
                    "User {:?} cannot {} resource {resource:?} in API group {:?} {scope}",
                    user.username, r.verb, r.api_group
                ),
            )
        }
    };
    if reason.is_empty() {
        format!("{prefix}: {what}")
    } else {
        format!("{prefix}: {what}: {reason}")
    }
}

/// The bootstrap ClusterRoles and ClusterRoleBindings (JSON) of a new cluster that relaunch,
/// its tests and kubectl rely on; `admin`/`edit`/`view` come with their aggregation rules and
/// the `system:aggregate-to-*` roles they aggregate (rules unfilled: see [`Rbac::bootstrap`]).
pub fn bootstrap_objects() -> Vec<Value> {
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| json!({"apiGroups": groups, "resources": resources, "verbs": verbs});
    let urls = |urls: &[&str], verbs: &[&str]| json!({"nonResourceURLs": urls, "verbs": verbs});
    let read = ["get", "list", "watch"];
    let write = ["create", "delete", "deletecollection", "patch", "update"];
    let all = [
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ];
    let mut objects = vec![
        cluster_role(
            "cluster-admin",
            &[],
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        cluster_role(
            "system:discovery",
            &[],
            vec![urls(
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
                &["get"],
            )],
        ),
        cluster_role(
            "system:public-info-viewer",
            &[],
            vec![urls(
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
                &["get"],
            )],
        ),
        cluster_role(
            "system:basic-user",
            &[],
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
            ],
        ),
        cluster_role(
            "system:auth-delegator",
            &[],
            vec![
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                rule(
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                    &["create"],
                ),
            ],
        ),
        cluster_role(
            "system:aggregate-to-admin",
            &["admin"],
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                    &["create"],
                ),
                rule(
                    &["rbac.authorization.k8s.io"],
                    &["rolebindings", "roles"],
                    &all,
                ),
            ],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            &["edit"],
            vec![
                rule(
                    &[""],
                    &[
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "secrets",
                        "services/proxy",
                    ],
                    &read,
                ),
                rule(&[""], &["serviceaccounts"], &["impersonate"]),
                rule(
                    &[""],
                    &[
                        "pods",
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                    ],
                    &write,
                ),
                rule(&[""], &["pods/eviction"], &["create"]),
                rule(
                    &[""],
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                    &write,
                ),
                rule(&[""], &["serviceaccounts/token"], &["create"]),
                rule(
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                    &write,
                ),
                rule(&["autoscaling"], &["horizontalpodautoscalers"], &write),
                rule(&["batch"], &["cronjobs", "jobs"], &write),
                rule(&["policy"], &["poddisruptionbudgets"], &write),
                rule(
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                    &write,
                ),
                rule(&["coordination.k8s.io"], &["leases"], &all),
            ],
        ),
        cluster_role(
            "system:aggregate-to-view",
            &["view"],
            vec![
                rule(
                    &[""],
                    &[
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                    ],
                    &read,
                ),
                rule(
                    &[""],
                    &[
                        "bindings",
                        "events",
                        "limitranges",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                        "replicationcontrollers/status",
                        "resourcequotas",
                        "resourcequotas/status",
                    ],
                    &read,
                ),
                rule(&[""], &["namespaces"], &read),
                rule(&["discovery.k8s.io"], &["endpointslices"], &read),
                rule(
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                    &read,
                ),
                rule(
                    &["autoscaling"],
                    &[
                        "horizontalpodautoscalers",
                        "horizontalpodautoscalers/status",
                    ],
                    &read,
                ),
                rule(
                    &["batch"],
                    &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                    &read,
                ),
                rule(
                    &["policy"],
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                    &read,
                ),
                rule(
                    &["networking.k8s.io"],
                    &["ingresses", "ingresses/status", "networkpolicies"],
                    &read,
                ),
            ],
        ),
    ];
    for (name, aggregates, label) in [
        ("admin", "admin", None),
        ("edit", "edit", Some("admin")),
        ("view", "view", Some("edit")),
    ] {
        let mut role = cluster_role(name, label.as_slice(), Vec::new());
        role["aggregationRule"] = json!({"clusterRoleSelectors": [
            {"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{aggregates}"): "true"}}
        ]});
        objects.push(role);
    }
    for (name, groups) in [
        ("cluster-admin", &[SYSTEM_MASTERS][..]),
        ("system:discovery", &[SYSTEM_AUTHENTICATED]),
        ("system:basic-user", &[SYSTEM_AUTHENTICATED]),
        (
            "system:public-info-viewer",
            &[SYSTEM_AUTHENTICATED, SYSTEM_UNAUTHENTICATED],
        ),
    ] {
        let subjects: Vec<Value> = groups
            .iter()
            .map(|g| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g}))
            .collect();
        objects.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
            },
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": subjects,
        }));
    }
    objects
}

/// A bootstrap ClusterRole labelled to aggregate into the roles `aggregate_to` names.
fn cluster_role(name: &str, aggregate_to: &[&str], rules: Vec<Value>) -> Value {
    let mut labels = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    for target in aggregate_to {
        labels[format!("rbac.authorization.k8s.io/aggregate-to-{target}")] = json!("true");
    }
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
        },
        "rules": rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(ns: &str, name: &str, rules: Value) -> Value {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"namespace": ns, "name": name}, "rules": rules})
    }

    fn binding(
        kind: &str,
        ns: Option<&str>,
        name: &str,
        role_kind: &str,
        role: &str,
        subjects: Value,
    ) -> Value {
        let mut metadata = json!({"name": name});
        if let Some(ns) = ns {
            metadata["namespace"] = json!(ns);
        }
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": metadata,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
            "subjects": subjects})
    }

    fn rbac(objects: &[Value]) -> Rbac {
        let mut rbac = Rbac::bootstrap();
        for object in objects {
            rbac.add(object).unwrap();
        }
        rbac.cluster_roles = aggregate_cluster_roles(&rbac.cluster_roles);
        rbac
    }

    fn can(rbac: &Rbac, user: &UserInfo, attributes: Attributes) -> bool {
        rbac.authorize(user, &attributes).unwrap().allowed()
    }

    fn restarter() -> Rbac {
        rbac(&[
            role(
                "team",
                "restarter",
                json!([
                    {"apiGroups": ["relaunch.dev"], "resources": ["containerrecreaterequests"], "verbs": ["create", "get"]},
                ]),
            ),
            binding(
                "RoleBinding",
                Some("team"),
                "bot-restarter",
                "Role",
                "restarter",
                json!([{"kind": "ServiceAccount", "name": "bot"}]),
            ),
        ])
    }

    #[test]
    fn role_binding_allows_its_role_in_its_namespace_only() {
        let rbac = restarter();
        let bot = UserInfo::service_account("team", "bot");
        let create = |ns| {
            Attributes::resource(
                "create",
                "relaunch.dev",
                "containerrecreaterequests",
                ns,
                "",
            )
        };
        assert!(can(&rbac, &bot, create("team")));
        assert!(!can(&rbac, &bot, create("other")));
        assert!(!can(&rbac, &bot, create("")));
        assert!(!can(
            &rbac,
            &bot,
            Attributes::resource(
                "delete",
                "relaunch.dev",
                "containerrecreaterequests",
                "team",
                "x"
            )
        ));
        assert!(!can(
            &rbac,
            &bot,
            Attributes::resource("create", "", "pods", "team", "")
        ));
    }

    #[test]
    fn allow_reason_names_binding_role_and_subject_as_upstream() {
        let rbac = restarter();
        let decision = rbac
            .authorize(
                &UserInfo::service_account("team", "bot"),
                &Attributes::resource(
                    "get",
                    "relaunch.dev",
                    "containerrecreaterequests",
                    "team",
                    "r",
                ),
            )
            .unwrap();
        assert_eq!(
            decision.reason(),
            r#"RBAC: allowed by RoleBinding "bot-restarter/team" of Role "restarter" to ServiceAccount "bot/team""#
        );
    }

    #[test]
    fn service_account_subject_without_namespace_means_the_bindings_namespace() {
        let rbac = restarter();
        let other_bot = UserInfo::service_account("other", "bot");
        let create = Attributes::resource(
            "create",
            "relaunch.dev",
            "containerrecreaterequests",
            "team",
            "",
        );
        assert!(!can(&rbac, &other_bot, create));
    }

    #[test]
    fn service_account_subject_in_a_cluster_role_binding_needs_a_namespace() {
        let rbac = rbac(&[binding(
            "ClusterRoleBinding",
            None,
            "b",
            "ClusterRole",
            "view",
            json!([{"kind": "ServiceAccount", "name": "bot"}]),
        )]);
        assert!(!can(
            &rbac,
            &UserInfo::service_account("team", "bot"),
            Attributes::resource("get", "", "pods", "team", "p")
        ));
    }

    #[test]
    fn role_binding_to_a_cluster_role_is_limited_to_the_bindings_namespace() {
        let rbac = rbac(&[binding(
            "RoleBinding",
            Some("team"),
            "viewers",
            "ClusterRole",
            "view",
            json!([{"kind": "User", "name": "alice"}]),
        )]);
        let alice = UserInfo::new("alice", &[SYSTEM_AUTHENTICATED]);
        assert!(can(
            &rbac,
            &alice,
            Attributes::resource("list", "", "pods", "team", "")
        ));
        assert!(!can(
            &rbac,
            &alice,
            Attributes::resource("list", "", "pods", "other", "")
        ));
        assert!(!can(
            &rbac,
            &alice,
            Attributes::resource("list", "", "pods", "", "")
        ));
    }

    #[test]
    fn cluster_role_binding_applies_in_every_namespace_and_cluster_wide() {
        let rbac = rbac(&[binding(
            "ClusterRoleBinding",
            None,
            "ops-view",
            "ClusterRole",
            "view",
            json!([{"kind": "Group", "name": "ops"}]),
        )]);
        let bob = UserInfo::new("bob", &["ops", SYSTEM_AUTHENTICATED]);
        assert!(can(
            &rbac,
            &bob,
            Attributes::resource("watch", "apps", "statefulsets", "any", "")
        ));
        assert!(can(
            &rbac,
            &bob,
            Attributes::resource("list", "", "pods", "", "")
        ));
        assert!(!can(
            &rbac,
            &bob,
            Attributes::resource("get", "", "secrets", "any", "s")
        ));
    }

    #[test]
    fn system_masters_may_do_everything() {
        let rbac = Rbac::default();
        let admin = UserInfo::new("kubernetes-admin", &[SYSTEM_MASTERS, SYSTEM_AUTHENTICATED]);
        assert!(can(
            &rbac,
            &admin,
            Attributes::resource("delete", "", "nodes", "", "n")
        ));
        assert!(can(
            &rbac,
            &admin,
            Attributes::non_resource("post", "/anything")
        ));
    }

    #[test]
    fn subresources_need_their_own_rule_or_a_wildcard() {
        let rbac = rbac(&[
            role(
                "ns",
                "r",
                json!([
                    {"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]},
                    {"apiGroups": [""], "resources": ["*/status"], "verbs": ["get"]},
                    {"apiGroups": ["apps"], "resources": ["*"], "verbs": ["get"]},
                ]),
            ),
            binding(
                "RoleBinding",
                Some("ns"),
                "b",
                "Role",
                "r",
                json!([{"kind": "User", "name": "u"}]),
            ),
        ]);
        let u = UserInfo::new("u", &[]);
        assert!(can(
            &rbac,
            &u,
            Attributes::resource("create", "", "pods", "ns", "")
        ));
        assert!(!can(
            &rbac,
            &u,
            Attributes::resource("create", "", "pods/exec", "ns", "p")
        ));
        assert!(can(
            &rbac,
            &u,
            Attributes::resource("get", "", "pods/status", "ns", "p")
        ));
        assert!(can(
            &rbac,
            &u,
            Attributes::resource("get", "", "services/status", "ns", "s")
        ));
        assert!(!can(
            &rbac,
            &u,
            Attributes::resource("get", "", "services", "ns", "s")
        ));
        assert!(can(
            &rbac,
            &u,
            Attributes::resource("get", "apps", "deployments/scale", "ns", "d")
        ));
    }

    #[test]
    fn resource_names_match_only_requests_that_name_the_object() {
        let rbac = rbac(&[
            role(
                "ns",
                "r",
                json!([
                    {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cfg"], "verbs": ["get", "list", "update"]},
                ]),
            ),
            binding(
                "RoleBinding",
                Some("ns"),
                "b",
                "Role",
                "r",
                json!([{"kind": "User", "name": "u"}]),
            ),
        ]);
        let u = UserInfo::new("u", &[]);
        assert!(can(
            &rbac,
            &u,
            Attributes::resource("get", "", "configmaps", "ns", "cfg")
        ));
        assert!(can(
            &rbac,
            &u,
            Attributes::resource("update", "", "configmaps", "ns", "cfg")
        ));
        assert!(!can(
            &rbac,
            &u,
            Attributes::resource("get", "", "configmaps", "ns", "other")
        ));
        assert!(!can(
            &rbac,
            &u,
            Attributes::resource("list", "", "configmaps", "ns", "")
        ));
    }

    #[test]
    fn wildcard_api_group_and_verb_match_anything() {
        let rbac = rbac(&[
            role(
                "ns",
                "r",
                json!([{"apiGroups": ["*"], "resources": ["leases"], "verbs": ["*"]}]),
            ),
            binding(
                "RoleBinding",
                Some("ns"),
                "b",
                "Role",
                "r",
                json!([{"kind": "User", "name": "u"}]),
            ),
        ]);
        let u = UserInfo::new("u", &[]);
        assert!(can(
            &rbac,
            &u,
            Attributes::resource("patch", "coordination.k8s.io", "leases", "ns", "l")
        ));
        assert!(can(
            &rbac,
            &u,
            Attributes::resource("escalate", "other.io", "leases", "ns", "l")
        ));
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_trailing_star_prefix() {
        let rbac = rbac(&[]);
        let anonymous = UserInfo::anonymous();
        let user = UserInfo::new("u", &[SYSTEM_AUTHENTICATED]);
        assert!(can(
            &rbac,
            &anonymous,
            Attributes::non_resource("get", "/healthz")
        ));
        assert!(can(
            &rbac,
            &anonymous,
            Attributes::non_resource("get", "/version")
        ));
        assert!(!can(
            &rbac,
            &anonymous,
            Attributes::non_resource("get", "/api")
        ));
        assert!(can(
            &rbac,
            &user,
            Attributes::non_resource("get", "/apis/apps/v1")
        ));
        assert!(can(&rbac, &user, Attributes::non_resource("get", "/api")));
        assert!(!can(&rbac, &user, Attributes::non_resource("post", "/api")));
        assert!(!can(
            &rbac,
            &user,
            Attributes::non_resource("get", "/metrics")
        ));
    }

    #[test]
    fn every_authenticated_user_may_review_its_own_access() {
        let rbac = rbac(&[]);
        let bot = UserInfo::service_account("team", "bot");
        assert!(can(
            &rbac,
            &bot,
            Attributes::resource(
                "create",
                "authorization.k8s.io",
                "selfsubjectaccessreviews",
                "",
                ""
            )
        ));
        assert!(can(
            &rbac,
            &bot,
            Attributes::resource(
                "create",
                "authorization.k8s.io",
                "selfsubjectrulesreviews",
                "",
                ""
            )
        ));
        assert!(!can(
            &rbac,
            &UserInfo::anonymous(),
            Attributes::resource(
                "create",
                "authorization.k8s.io",
                "selfsubjectrulesreviews",
                "",
                ""
            )
        ));
    }

    #[test]
    fn missing_role_is_named_in_the_reason_as_upstream() {
        let rbac = rbac(&[binding(
            "RoleBinding",
            Some("ns"),
            "b",
            "Role",
            "gone",
            json!([{"kind": "User", "name": "u"}]),
        )]);
        let decision = rbac
            .authorize(
                &UserInfo::new("u", &[]),
                &Attributes::resource("get", "", "pods", "ns", "p"),
            )
            .unwrap();
        assert_eq!(
            decision,
            Decision::NoOpinion {
                reason: r#"RBAC: role.rbac.authorization.k8s.io "gone" not found"#.into()
            }
        );
    }

    #[test]
    fn service_account_helper_fills_the_groups_its_token_gets() {
        let sa = UserInfo::service_account("relaunch-system", "relaunch-agent");
        assert_eq!(
            sa.username,
            "system:serviceaccount:relaunch-system:relaunch-agent"
        );
        assert_eq!(
            sa.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:relaunch-system",
                "system:authenticated"
            ]
        );
        assert_eq!(
            sa.service_account_name(),
            Some(("relaunch-system", "relaunch-agent"))
        );
        assert_eq!(
            parse_service_account_username("system:serviceaccount:a"),
            None
        );
    }

    #[test]
    fn aggregated_roles_collect_rules_of_matching_roles_transitively() {
        let rbac = rbac(&[json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "relaunch-view", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
            "rules": [{"apiGroups": ["relaunch.dev"], "resources": ["rollingrestarts"], "verbs": ["get"]}],
        })]);
        let find = |name: &str| {
            rbac.cluster_roles
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(name))
                .unwrap()
        };
        let has_rollouts = |name: &str| {
            find(name)
                .rules
                .as_deref()
                .unwrap()
                .iter()
                .any(|r| r.resources.as_deref() == Some(&["rollingrestarts".to_string()][..]))
        };
        assert!(has_rollouts("view"));
        assert!(has_rollouts("edit"));
        assert!(has_rollouts("admin"));
        assert!(!has_rollouts("cluster-admin"));
        let admin_rules = find("admin").rules.as_deref().unwrap();
        let unique: std::collections::HashSet<String> =
            admin_rules.iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(unique.len(), admin_rules.len(), "duplicates dropped");
        assert!(find("edit").rules.as_deref().unwrap().iter().any(|r| {
            r.resources
                .as_deref()
                .unwrap_or_default()
                .contains(&"pods/exec".to_string())
        }));
        assert!(!find("view").rules.as_deref().unwrap().iter().any(|r| {
            r.resources
                .as_deref()
                .unwrap_or_default()
                .contains(&"secrets".to_string())
        }));
    }

    #[test]
    fn aggregation_selector_match_expressions_work() {
        let mut target: ClusterRole = serde_json::from_value(json!({"metadata": {"name": "t"},
            "aggregationRule": {"clusterRoleSelectors": [{"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]}]}})).unwrap();
        let a: ClusterRole =
            serde_json::from_value(json!({"metadata": {"name": "a", "labels": {"team": "a"}},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}))
            .unwrap();
        let c: ClusterRole =
            serde_json::from_value(json!({"metadata": {"name": "c", "labels": {"team": "c"}},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}))
            .unwrap();
        target.rules = aggregated_rules(&target, &[a.clone(), c]);
        assert_eq!(target.rules, a.rules);
    }

    #[test]
    fn rules_for_lists_cluster_and_namespace_rules_split_by_kind() {
        let rbac = restarter();
        let rules = rbac.rules_for(&UserInfo::service_account("team", "bot"), "team");
        let status = rules.to_status();
        assert_eq!(status["incomplete"], json!(false));
        let resources: Vec<&Value> = status["resourceRules"].as_array().unwrap().iter().collect();
        assert!(
            resources
                .iter()
                .any(|r| r["resources"] == json!(["containerrecreaterequests"]))
        );
        assert!(
            resources.iter().any(|r| r["resources"]
                == json!(["selfsubjectaccessreviews", "selfsubjectrulesreviews"]))
        );
        assert!(
            status["nonResourceRules"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["nonResourceURLs"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("/api")))
        );
        let elsewhere = rbac
            .rules_for(&UserInfo::service_account("team", "bot"), "other")
            .to_status();
        assert!(
            !elsewhere["resourceRules"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["resources"] == json!(["containerrecreaterequests"]))
        );
    }

    #[test]
    fn rules_for_reports_a_missing_role_as_evaluation_error() {
        let rbac = rbac(&[binding(
            "RoleBinding",
            Some("ns"),
            "b",
            "ClusterRole",
            "gone",
            json!([{"kind": "User", "name": "u"}]),
        )]);
        let status = rbac.rules_for(&UserInfo::new("u", &[]), "ns").to_status();
        assert_eq!(
            status["evaluationError"],
            json!(r#"clusterrole.rbac.authorization.k8s.io "gone" not found"#)
        );
    }

    #[test]
    fn impersonation_checks_the_impersonate_verb_on_each_identity() {
        let request = Impersonation {
            user: Some("system:serviceaccount:ns:bot".into()),
            uid: Some("1234".into()),
            groups: vec!["g1".into()],
            extra: BTreeMap::from([("scopes".into(), vec!["view".into()])]),
        };
        assert_eq!(
            request.checks(),
            vec![
                Attributes::resource("impersonate", "", "serviceaccounts", "ns", "bot"),
                Attributes::resource("impersonate", "", "groups", "", "g1"),
                Attributes::resource(
                    "impersonate",
                    "authentication.k8s.io",
                    "userextras/scopes",
                    "",
                    "view"
                ),
                Attributes::resource("impersonate", "authentication.k8s.io", "uids", "", "1234"),
            ]
        );
    }

    #[test]
    fn impersonating_a_service_account_gives_its_groups() {
        let rbac = rbac(&[]);
        let admin = UserInfo::new("admin", &[SYSTEM_MASTERS]);
        let request = Impersonation {
            user: Some("system:serviceaccount:ns:bot".into()),
            ..Impersonation::default()
        };
        assert_eq!(
            request.impersonate(&rbac, &admin).unwrap(),
            UserInfo::service_account("ns", "bot")
        );
        let as_user = Impersonation {
            user: Some("jane".into()),
            groups: vec!["devs".into()],
            ..Impersonation::default()
        };
        assert_eq!(
            as_user.impersonate(&rbac, &admin).unwrap().groups,
            ["devs", SYSTEM_AUTHENTICATED]
        );
    }

    #[test]
    fn impersonation_without_the_verb_is_forbidden_with_upstreams_message() {
        let rbac = rbac(&[]);
        let bob = UserInfo::new("bob", &[SYSTEM_AUTHENTICATED]);
        let request = Impersonation {
            user: Some("jane".into()),
            ..Impersonation::default()
        };
        let Err(ImpersonationError::Forbidden { message, .. }) = request.impersonate(&rbac, &bob)
        else {
            panic!("impersonation allowed");
        };
        assert_eq!(
            message,
            r#"users "jane" is forbidden: User "bob" cannot impersonate resource "users" in API group "" at the cluster scope"#
        );
        let groups_only = Impersonation {
            groups: vec!["g".into()],
            ..Impersonation::default()
        };
        assert!(matches!(
            groups_only.impersonate(&rbac, &bob),
            Err(ImpersonationError::WithoutUser(_))
        ));
    }

    #[test]
    fn edit_role_may_impersonate_service_accounts_of_its_namespace() {
        let rbac = rbac(&[binding(
            "RoleBinding",
            Some("ns"),
            "b",
            "ClusterRole",
            "edit",
            json!([{"kind": "User", "name": "dev"}]),
        )]);
        let dev = UserInfo::new("dev", &[SYSTEM_AUTHENTICATED]);
        let into = |sa: &str| Impersonation {
            user: Some(sa.into()),
            ..Impersonation::default()
        };
        assert!(
            into("system:serviceaccount:ns:bot")
                .impersonate(&rbac, &dev)
                .is_ok()
        );
        assert!(
            into("system:serviceaccount:other:bot")
                .impersonate(&rbac, &dev)
                .is_err()
        );
    }

    #[test]
    fn forbidden_message_reads_as_the_api_servers() {
        let user = UserInfo::new("u", &[]);
        assert_eq!(
            forbidden_message(
                &user,
                &Attributes::resource("create", "", "pods/exec", "ns", "p"),
                ""
            ),
            r#"pods "p" is forbidden: User "u" cannot create resource "pods/exec" in API group "" in the namespace "ns""#
        );
        assert_eq!(
            forbidden_message(
                &user,
                &Attributes::resource("list", "apps", "deployments", "", ""),
                "RBAC: x"
            ),
            r#"deployments.apps is forbidden: User "u" cannot list resource "deployments" in API group "apps" at the cluster scope: RBAC: x"#
        );
        assert_eq!(
            forbidden_message(&user, &Attributes::non_resource("get", "/metrics"), ""),
            r#"forbidden: User "u" cannot get path "/metrics""#
        );
    }
}
