//! Admission of new requests: is the request valid for its pod, and which labels does it need so
//! the right agent sees it? The checks are the API's ([`relaunch_api::validation`]); admission
//! turns their outcome into what the controllers write.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use relaunch_api::ContainerRecreateRequest;
use relaunch_api::validation::validate_request;

/// What admission decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Valid: add these labels (empty when they are already there) and mark it Pending.
    Admit { labels: BTreeMap<String, String> },
    /// Invalid: complete it as Failed with this message, which says what to fix.
    Refuse { message: String },
}

/// Decides whether `crr` is valid for `pod` (None: the pod does not exist).
pub fn admit(crr: &ContainerRecreateRequest, pod: Option<&Pod>) -> Admission {
    match validate_request(crr, pod) {
        Ok(labels) => Admission::Admit { labels },
        Err(invalid) => Admission::Refuse {
            message: invalid.to_string(),
        },
    }
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
            admit(&crr, None),
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
        let Admission::Admit { labels } = admit(&crr, Some(&pod)) else {
            panic!("refused")
        };
        assert_eq!(labels.len(), 2);
    }
}
