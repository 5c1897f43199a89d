//! Admission of new requests: is the request valid for its pod, and which labels does it need so
//! the right agent sees it? The checks are the API's ([`relaunch_api::validation`]); admission
//! turns their outcome into what the controllers write. A request with a shutdown `exec` action
//! is admitted only while the API server authorizes exec like `kubectl exec`
//! ([`crate::exec_policy`]): otherwise it is refused, naming what to install (fail closed).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use relaunch_api::ContainerRecreateRequest;
use relaunch_api::validation::validate_request;

use crate::exec_policy::ExecPolicy;

/// What admission decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Valid: add these labels (empty when they are already there) and mark it Pending.
    Admit { labels: BTreeMap<String, String> },
    /// Invalid: complete it as Failed with this message, which says what to fix.
    Refuse { message: String },
}

/// Decides whether `crr` is valid for `pod` (None: the pod does not exist) and, when it has an
/// exec action, whether `exec` allows it now.
pub fn admit(crr: &ContainerRecreateRequest, pod: Option<&Pod>, exec: &ExecPolicy) -> Admission {
    match validate_request(crr, pod) {
        Ok(labels) => match exec.refusal() {
            Some(message) if has_exec(crr) => Admission::Refuse {
                message: message.to_string(),
            },
            _ => Admission::Admit { labels },
        },
        Err(invalid) => Admission::Refuse {
            message: invalid.to_string(),
        },
    }
}

/// Whether the request runs a command in a container (any `shutdown.exec`).
pub fn has_exec(crr: &ContainerRecreateRequest) -> bool {
    crr.spec
        .containers
        .iter()
        .any(|c| c.shutdown.as_ref().is_some_and(|s| s.exec.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaunch_api::ContainerRecreateRequestSpec;
    use serde_json::json;

    #[test]
    fn a_refusal_carries_the_message_users_see() {
        let crr = ContainerRecreateRequest::new(
            "r",
            ContainerRecreateRequestSpec {
                pod_name: "db-0".into(),
                ..Default::default()
            },
        );
        assert_eq!(
            admit(&crr, None, &ExecPolicy::Enforced),
            Admission::Refuse {
                message: "spec.containers is empty: name at least one container to recreate".into()
            }
        );
    }

    #[test]
    fn an_admitted_request_gets_the_labels_it_lacks() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "db-0", "uid": "u-1"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "db"}]},
            "status": {"phase": "Running"},
        }))
        .unwrap();
        let crr: ContainerRecreateRequest = serde_json::from_value(json!({
            "apiVersion": "relaunch.dev/v1alpha1", "kind": "ContainerRecreateRequest",
            "metadata": {"name": "r"},
            "spec": {"podName": "db-0", "containers": [{"name": "db"}]},
        }))
        .unwrap();
        let Admission::Admit { labels } = admit(&crr, Some(&pod), &ExecPolicy::Enforced) else {
            panic!("refused")
        };
        assert_eq!(labels.len(), 2);
    }

    #[test]
    fn exec_actions_are_refused_while_the_exec_policy_is_missing_and_nothing_else_is() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "db-0", "uid": "u-1"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "db"}, {"name": "side"}]},
            "status": {"phase": "Running"},
        }))
        .unwrap();
        let request = |containers: serde_json::Value| -> ContainerRecreateRequest {
            serde_json::from_value(json!({
                "apiVersion": "relaunch.dev/v1alpha1", "kind": "ContainerRecreateRequest",
                "metadata": {"name": "r"},
                "spec": {"podName": "db-0", "containers": containers},
            }))
            .unwrap()
        };
        let missing = ExecPolicy::Missing("install manifests/base/admission-policy.yaml".into());
        let exec = request(json!([
            {"name": "db"},
            {"name": "side", "shutdown": {"exec": {"command": ["stop"]}}},
        ]));
        assert_eq!(
            admit(&exec, Some(&pod), &missing),
            Admission::Refuse {
                message: "install manifests/base/admission-policy.yaml".into()
            }
        );
        assert!(matches!(
            admit(&exec, Some(&pod), &ExecPolicy::Enforced),
            Admission::Admit { .. }
        ));
        for plain in [
            request(json!([{"name": "db"}])),
            request(json!([{"name": "db", "shutdown": {"httpGet": {"port": 80}}}])),
        ] {
            assert!(matches!(
                admit(&plain, Some(&pod), &missing),
                Admission::Admit { .. }
            ));
        }
        // An invalid request is refused for what is wrong with it, not for the policy.
        let Admission::Refuse { message } = admit(&exec, None, &missing) else {
            panic!("admitted")
        };
        assert!(!message.contains("admission-policy"), "{message}");
    }
}
