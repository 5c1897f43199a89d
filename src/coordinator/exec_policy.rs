//! Fail closed on exec: a shutdown `exec` action runs a command in a container, which the API
//! server authorizes like `kubectl exec` only through the ValidatingAdmissionPolicies and
//! bindings of `manifests/base/admission-policy.yaml`. The coordinator watches them (by name)
//! and admits requests and rollouts with exec actions, and starts ScaleDowns (whose commands are
//! exec actions), only while all of them are installed as
//! shipped: each policy present with `failurePolicy: Fail` (the default) and at least one
//! validation, each binding present, naming its policy, with `validationActions` including
//! `Deny` and no `matchResources` that could narrow it. Otherwise exec actions are refused with
//! a message naming what to install; requests without exec are unaffected.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use kube::ResourceExt;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::metrics::Metrics;

/// The policy (and binding, same name) that authorizes exec actions in requests.
pub const REQUEST_POLICY: &str = "relaunch-request-exec-needs-pods-exec";
/// The policy (and binding, same name) that authorizes exec actions in rollouts.
pub const ROLLOUT_POLICY: &str = "relaunch-rollout-exec-needs-pods-exec";
/// The policy (and binding, same name) that authorizes a ScaleDown's commands.
pub const SCALEDOWN_POLICY: &str = "relaunch-scaledown-needs-pods-exec";
/// Where they ship.
pub const MANIFEST: &str = "manifests/base/admission-policy.yaml";

/// Whether exec actions may be admitted now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecPolicy {
    /// The policies and bindings are installed as shipped: the API server authorizes exec.
    Enforced,
    /// They are not (or not yet known): exec actions are refused with this message.
    Missing(String),
}

impl ExecPolicy {
    /// The refusal for an exec action, if exec actions are refused now.
    pub fn refusal(&self) -> Option<&str> {
        match self {
            ExecPolicy::Enforced => None,
            ExecPolicy::Missing(message) => Some(message),
        }
    }
}

/// Decides on the policies and bindings as watched (all of them; only relaunch's names count).
pub fn check(
    policies: &[Arc<ValidatingAdmissionPolicy>],
    bindings: &[Arc<ValidatingAdmissionPolicyBinding>],
) -> ExecPolicy {
    let mut problems = Vec::new();
    for name in [REQUEST_POLICY, ROLLOUT_POLICY, SCALEDOWN_POLICY] {
        match policies.iter().find(|p| p.name_any() == name) {
            None => problems.push(format!("ValidatingAdmissionPolicy {name} is not installed")),
            Some(policy) => {
                let spec = policy.spec.clone().unwrap_or_default();
                if policy.metadata.deletion_timestamp.is_some() {
                    problems.push(format!("ValidatingAdmissionPolicy {name} is being deleted"));
                } else if spec.failure_policy.as_deref().is_some_and(|f| f != "Fail") {
                    problems.push(format!(
                        "ValidatingAdmissionPolicy {name} has failurePolicy {} instead of Fail",
                        spec.failure_policy.unwrap_or_default()
                    ));
                } else if spec.validations.unwrap_or_default().is_empty() {
                    problems.push(format!(
                        "ValidatingAdmissionPolicy {name} has no validations"
                    ));
                }
            }
        }
        match bindings.iter().find(|b| b.name_any() == name) {
            None => problems.push(format!(
                "ValidatingAdmissionPolicyBinding {name} is not installed"
            )),
            Some(binding) => {
                let spec = binding.spec.clone().unwrap_or_default();
                let actions = spec.validation_actions.unwrap_or_default();
                if binding.metadata.deletion_timestamp.is_some() {
                    problems.push(format!(
                        "ValidatingAdmissionPolicyBinding {name} is being deleted"
                    ));
                } else if spec.policy_name.as_deref() != Some(name) {
                    problems.push(format!(
                        "ValidatingAdmissionPolicyBinding {name} binds policy {:?} instead of {name}",
                        spec.policy_name.unwrap_or_default()
                    ));
                } else if !actions.iter().any(|a| a == "Deny") {
                    problems.push(format!(
                        "ValidatingAdmissionPolicyBinding {name} does not have validationActions Deny"
                    ));
                } else if spec.match_resources.is_some() || spec.param_ref.is_some() {
                    problems.push(format!(
                        "ValidatingAdmissionPolicyBinding {name} narrows what it applies to (matchResources or paramRef)"
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        return ExecPolicy::Enforced;
    }
    ExecPolicy::Missing(missing_message(&problems.join("; ")))
}

/// Whether a watch failed because the coordinator may not list or watch the resource.
fn is_forbidden(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 403,
        watcher::Error::WatchError(s) => s.code == 403,
        _ => false,
    }
}

/// The refusal of an exec action, saying why and what to install.
fn missing_message(why: &str) -> String {
    format!(
        "shutdown exec actions are refused while the API server does not authorize them like kubectl exec: {why}; install {MANIFEST} as shipped (kubectl apply -k manifests/base), or restart without exec (the container's preStop hook) or with httpGet"
    )
}

/// The exec policy as every replica sees it: the watches of the policies and bindings, started
/// once by [`ExecPolicyGate::start`]; until both have listed once, exec actions are not
/// admitted (the verdict is unknown).
pub struct ExecPolicyGate {
    policies: Store<ValidatingAdmissionPolicy>,
    bindings: Store<ValidatingAdmissionPolicyBinding>,
    writers: Mutex<
        Option<(
            Writer<ValidatingAdmissionPolicy>,
            Writer<ValidatingAdmissionPolicyBinding>,
        )>,
    >,
    verdict: watch::Sender<Option<ExecPolicy>>,
}

impl Default for ExecPolicyGate {
    fn default() -> Self {
        let (policies, policy_writer) = reflector::store();
        let (bindings, binding_writer) = reflector::store();
        Self {
            policies,
            bindings,
            writers: Mutex::new(Some((policy_writer, binding_writer))),
            verdict: watch::Sender::new(None),
        }
    }
}

impl ExecPolicyGate {
    /// The verdict now; None until both watches have listed once.
    pub fn verdict(&self) -> Option<ExecPolicy> {
        self.verdict.borrow().clone()
    }

    /// The verdict now, an unknown one counting as missing.
    pub fn current(&self) -> ExecPolicy {
        self.verdict().unwrap_or_else(|| {
            ExecPolicy::Missing(missing_message(
                "the coordinator has not read the admission policies yet",
            ))
        })
    }

    /// Waits until the verdict is known (both watches listed once).
    pub async fn known(&self) {
        let mut rx = self.verdict.subscribe();
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// Starts the two watches (the first call only; later calls start nothing). The tasks run
    /// until aborted.
    pub fn start(self: &Arc<Self>, cluster: &Cluster, metrics: &Metrics) -> Vec<JoinHandle<()>> {
        let taken = self
            .writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some((policy_writer, binding_writer)) = taken else {
            return Vec::new();
        };
        let policies = crate::caches::guarded_watch::<ValidatingAdmissionPolicy>(
            cluster,
            watcher::Config::default(),
            "validatingadmissionpolicies",
            metrics.clone(),
        )
        .default_backoff()
        .reflect(policy_writer);
        let bindings = crate::caches::guarded_watch::<ValidatingAdmissionPolicyBinding>(
            cluster,
            watcher::Config::default(),
            "validatingadmissionpolicybindings",
            metrics.clone(),
        )
        .default_backoff()
        .reflect(binding_writer);
        vec![
            self.run(
                policies.map(|e| e.map(|_| ())).boxed(),
                "validatingadmissionpolicies",
                metrics,
            ),
            self.run(
                bindings.map(|e| e.map(|_| ())).boxed(),
                "validatingadmissionpolicybindings",
                metrics,
            ),
        ]
    }

    /// Runs one watch (its reflector fills a store) and decides again on every change.
    fn run(
        self: &Arc<Self>,
        stream: futures::stream::BoxStream<'static, Result<(), watcher::Error>>,
        resource: &'static str,
        metrics: &Metrics,
    ) -> JoinHandle<()> {
        let gate = self.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            while let Some(item) = stream.next().await {
                match item {
                    Ok(()) => gate.update(),
                    Err(e) => {
                        // Without the right to read the policies, their absence cannot be
                        // ruled out: fail closed, saying which permission is missing.
                        if is_forbidden(&e) {
                            gate.set(ExecPolicy::Missing(missing_message(&format!(
                                "the coordinator may not read {resource} (its ClusterRole needs get, list and watch on them, as manifests/base/coordinator-rbac.yaml grants)"
                            ))));
                        }
                        crate::error_policy::error_policy(
                            &metrics,
                            "watch",
                            &resource,
                            &crate::error::ClusterError::Watch(e),
                        );
                    }
                }
            }
        })
    }

    /// Sets the verdict; logs a change.
    fn set(&self, verdict: ExecPolicy) {
        self.verdict.send_if_modified(|current| {
            if current.as_ref() == Some(&verdict) {
                return false;
            }
            match &verdict {
                ExecPolicy::Enforced => tracing::info!(
                    "the exec admission policies are installed: shutdown exec actions are admitted"
                ),
                ExecPolicy::Missing(message) => tracing::warn!("{message}"),
            }
            *current = Some(verdict.clone());
            true
        });
    }

    /// Decides again once both stores are filled; logs a change.
    fn update(&self) {
        use futures::FutureExt;
        let ready = self.policies.wait_until_ready().now_or_never().is_some()
            && self.bindings.wait_until_ready().now_or_never().is_some();
        if !ready {
            return;
        }
        self.set(check(&self.policies.state(), &self.bindings.state()));
    }

    /// A gate whose verdict is fixed (tests).
    pub fn fixed(verdict: ExecPolicy) -> Self {
        let gate = Self::default();
        gate.verdict.send_replace(Some(verdict));
        gate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(name: &str, spec: serde_json::Value) -> Arc<ValidatingAdmissionPolicy> {
        Arc::new(serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap())
    }

    fn binding(name: &str, spec: serde_json::Value) -> Arc<ValidatingAdmissionPolicyBinding> {
        Arc::new(serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap())
    }

    fn shipped() -> (
        Vec<Arc<ValidatingAdmissionPolicy>>,
        Vec<Arc<ValidatingAdmissionPolicyBinding>>,
    ) {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../manifests/base/admission-policy.yaml"
        ))
        .unwrap();
        let (mut policies, mut bindings) = (Vec::new(), Vec::new());
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = <serde_json::Value as serde::Deserialize>::deserialize(document).unwrap();
            match value["kind"].as_str() {
                Some("ValidatingAdmissionPolicy") => {
                    policies.push(Arc::new(serde_json::from_value(value).unwrap()))
                }
                Some("ValidatingAdmissionPolicyBinding") => {
                    bindings.push(Arc::new(serde_json::from_value(value).unwrap()))
                }
                _ => {}
            }
        }
        (policies, bindings)
    }

    #[test]
    fn the_shipped_policies_enforce_exec_authorization() {
        let (policies, bindings) = shipped();
        assert_eq!(check(&policies, &bindings), ExecPolicy::Enforced);
    }

    #[test]
    fn anything_missing_or_weakened_refuses_exec_naming_what_to_install() {
        let (policies, bindings) = shipped();
        let refusal = |p: &[Arc<ValidatingAdmissionPolicy>],
                       b: &[Arc<ValidatingAdmissionPolicyBinding>]| {
            match check(p, b) {
                ExecPolicy::Missing(message) => {
                    assert!(message.contains(MANIFEST), "{message}");
                    assert!(
                        message.contains("kubectl apply -k manifests/base"),
                        "{message}"
                    );
                    message
                }
                ExecPolicy::Enforced => panic!("enforced"),
            }
        };
        assert!(refusal(&[], &[]).contains(&format!(
            "ValidatingAdmissionPolicy {REQUEST_POLICY} is not installed"
        )));
        let without = |name: &str| -> Vec<Arc<ValidatingAdmissionPolicy>> {
            policies
                .iter()
                .filter(|p| p.name_any() != name)
                .cloned()
                .collect()
        };
        assert!(
            refusal(&without(ROLLOUT_POLICY), &bindings).contains(&format!(
                "ValidatingAdmissionPolicy {ROLLOUT_POLICY} is not installed"
            ))
        );
        let only_one_binding: Vec<_> = bindings
            .iter()
            .filter(|b| b.name_any() == ROLLOUT_POLICY)
            .cloned()
            .collect();
        assert!(refusal(&policies, &only_one_binding).contains(&format!(
            "ValidatingAdmissionPolicyBinding {REQUEST_POLICY} is not installed"
        )));

        let with_binding = |b: Arc<ValidatingAdmissionPolicyBinding>| {
            let mut all: Vec<_> = bindings
                .iter()
                .filter(|x| x.name_any() != b.name_any())
                .cloned()
                .collect();
            all.push(b);
            all
        };
        let warn_only = binding(
            REQUEST_POLICY,
            json!({"policyName": REQUEST_POLICY, "validationActions": ["Warn", "Audit"]}),
        );
        assert!(refusal(&policies, &with_binding(warn_only)).contains("validationActions Deny"));
        let elsewhere = binding(
            REQUEST_POLICY,
            json!({"policyName": "something-else", "validationActions": ["Deny"]}),
        );
        assert!(refusal(&policies, &with_binding(elsewhere)).contains("instead of"));
        let narrowed = binding(
            REQUEST_POLICY,
            json!({"policyName": REQUEST_POLICY, "validationActions": ["Deny"],
                   "matchResources": {"namespaceSelector": {"matchLabels": {"x": "y"}}}}),
        );
        assert!(refusal(&policies, &with_binding(narrowed)).contains("narrows"));

        let with_policy = |p: Arc<ValidatingAdmissionPolicy>| {
            let mut all = without(&p.name_any());
            all.push(p);
            all
        };
        let ignoring = policy(
            REQUEST_POLICY,
            json!({"failurePolicy": "Ignore", "validations": [{"expression": "true"}]}),
        );
        assert!(refusal(&with_policy(ignoring), &bindings).contains("failurePolicy Ignore"));
        let empty = policy(ROLLOUT_POLICY, json!({}));
        assert!(refusal(&with_policy(empty), &bindings).contains("no validations"));
    }

    #[test]
    fn a_forbidden_watch_fails_closed_naming_the_permission() {
        let status = |code| Box::new(kube::core::Status::failure("x", "y").with_code(code));
        assert!(is_forbidden(&watcher::Error::InitialListFailed(
            kube::Error::Api(status(403))
        )));
        assert!(is_forbidden(&watcher::Error::WatchError(status(403))));
        assert!(!is_forbidden(&watcher::Error::InitialListFailed(
            kube::Error::Api(status(500))
        )));
        let gate = ExecPolicyGate::fixed(ExecPolicy::Enforced);
        gate.set(ExecPolicy::Missing(missing_message(
            "the coordinator may not read validatingadmissionpolicies",
        )));
        let refusal = gate.current();
        let message = refusal.refusal().unwrap();
        assert!(
            message.contains("may not read validatingadmissionpolicies"),
            "{message}"
        );
        assert!(message.contains(MANIFEST), "{message}");
    }

    #[tokio::test]
    async fn an_unknown_verdict_refuses_exec() {
        let gate = ExecPolicyGate::default();
        assert_eq!(gate.verdict(), None);
        assert!(gate.current().refusal().is_some());
        let fixed = ExecPolicyGate::fixed(ExecPolicy::Enforced);
        fixed.known().await;
        assert_eq!(fixed.current(), ExecPolicy::Enforced);
    }
}
