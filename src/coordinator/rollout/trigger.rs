//! The workload trigger: `relaunch.dev/restart-at: <token>` on a StatefulSet, Deployment,
//! DaemonSet or ReplicaSet starts one RollingRestart per distinct token. The rollout's name is
//! derived from kind, name and token, so a re-applied token, a second coordinator or a restarted
//! one meets AlreadyExists instead of restarting the workload again.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

use relaunch_api::{
    ANNOTATION_RESTART_AT, InvalidOrder, RollingRestartSpec, RolloutOrder, RolloutStrategy,
    RolloutTarget, WorkloadKind, WorkloadRef,
};

/// Optional: `maxUnavailable` of the triggered rollout (`2` or `25%`).
pub const ANNOTATION_MAX_UNAVAILABLE: &str = "relaunch.dev/max-unavailable";
/// Optional: containers to restart, comma-separated.
pub const ANNOTATION_CONTAINERS: &str = "relaunch.dev/containers";
/// Optional: `ordinal` (descending), `ordinal-asc`, or `role=KEY:FIRST1,FIRST2:LAST1,LAST2`.
pub const ANNOTATION_ORDER: &str = "relaunch.dev/order";

/// The `relaunch.dev/restart-at` token of workload `kind` with `meta`, when it starts a rollout
/// of its own. A ReplicaSet controlled by a Deployment never does: the Deployment controller
/// copies the Deployment's annotations onto its ReplicaSets, and the Deployment's rollout already
/// restarts their pods (a second rollout would restart each pod twice).
pub fn restart_token<'a>(kind: &WorkloadKind, meta: &'a ObjectMeta) -> Option<&'a str> {
    let controlled_by_deployment = meta
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.kind == WorkloadKind::Deployment.as_str());
    if *kind == WorkloadKind::ReplicaSet && controlled_by_deployment {
        return None;
    }
    meta.annotations
        .as_ref()?
        .get(ANNOTATION_RESTART_AT)
        .map(String::as_str)
}

/// The first 8 hex digits of SHA-256 of `text`.
pub fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// The RollingRestart a token starts: `<kind-lower>-<name>-<hash>`, at most 63 characters (it is
/// also a label value on the requests it creates).
pub fn rollout_name(kind: &WorkloadKind, name: &str, token: &str) -> String {
    let hash = short_hash(token);
    let prefix = format!("{}-{name}", kind.singular());
    let room = 63 - hash.len() - 1;
    let prefix = if prefix.len() > room {
        crate::cut_at_char_boundary(&prefix, room).trim_end_matches(['-', '.'])
    } else {
        prefix.as_str()
    };
    format!("{prefix}-{hash}")
}

/// Why a workload's annotations start no rollout; the message names the bad annotation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAnnotation {
    #[error("{ANNOTATION_ORDER} {0}")]
    Order(#[from] InvalidOrder),
}

/// The spec of the rollout a workload's annotations ask for; the error names the bad annotation.
pub fn rollout_spec(
    kind: WorkloadKind,
    name: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<RollingRestartSpec, InvalidAnnotation> {
    let max_unavailable =
        annotations
            .get(ANNOTATION_MAX_UNAVAILABLE)
            .map(|v| match v.trim().parse::<i32>() {
                Ok(n) => IntOrString::Int(n),
                Err(_) => IntOrString::String(v.trim().to_string()),
            });
    let containers = annotations
        .get(ANNOTATION_CONTAINERS)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let order = annotations
        .get(ANNOTATION_ORDER)
        .map(|v| v.parse::<RolloutOrder>())
        .transpose()?;
    Ok(RollingRestartSpec {
        target: RolloutTarget {
            workload_ref: Some(WorkloadRef {
                kind,
                name: name.into(),
            }),
            selector: None,
        },
        containers,
        strategy: RolloutStrategy {
            max_unavailable,
            order,
            ..Default::default()
        },
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaunch_api::OrdinalOrder;

    #[test]
    fn one_name_per_token_and_short_enough_for_a_label() {
        let a = rollout_name(&WorkloadKind::StatefulSet, "db", "2026-01-01");
        assert_eq!(
            a,
            rollout_name(&WorkloadKind::StatefulSet, "db", "2026-01-01")
        );
        assert!(a.starts_with("statefulset-db-"));
        assert_ne!(
            a,
            rollout_name(&WorkloadKind::StatefulSet, "db", "2026-01-02")
        );
        assert_ne!(
            a,
            rollout_name(&WorkloadKind::Deployment, "db", "2026-01-01")
        );
        let long = rollout_name(&WorkloadKind::StatefulSet, &"x".repeat(80), "t");
        assert_eq!(long.len(), 63);
    }

    #[test]
    fn a_long_name_is_never_cut_inside_a_character() {
        let name = format!("x{}", "é".repeat(40));
        let cut = rollout_name(&WorkloadKind::StatefulSet, &name, "t");
        assert!(cut.len() <= 63);
        assert!(cut.starts_with("statefulset-x"));
    }

    #[test]
    fn a_replicaset_of_a_deployment_leaves_the_restart_to_the_deployment() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let owned_by = |kind: &str, controller: Option<bool>| ObjectMeta {
            annotations: Some(BTreeMap::from([(
                ANNOTATION_RESTART_AT.to_string(),
                "t1".to_string(),
            )])),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: kind.into(),
                name: "web".into(),
                uid: "u".into(),
                controller,
                block_owner_deletion: None,
            }]),
            ..Default::default()
        };
        let copied = owned_by("Deployment", Some(true));
        assert_eq!(restart_token(&WorkloadKind::ReplicaSet, &copied), None);
        assert_eq!(
            restart_token(&WorkloadKind::Deployment, &copied),
            Some("t1")
        );
        // Only the controlling owner counts; a bare ReplicaSet is triggered itself.
        assert_eq!(
            restart_token(&WorkloadKind::ReplicaSet, &owned_by("Deployment", None)),
            Some("t1")
        );
        assert_eq!(
            restart_token(&WorkloadKind::ReplicaSet, &owned_by("Example", Some(true))),
            Some("t1")
        );
        let bare = ObjectMeta {
            owner_references: None,
            ..copied.clone()
        };
        assert_eq!(restart_token(&WorkloadKind::ReplicaSet, &bare), Some("t1"));
        assert_eq!(
            restart_token(&WorkloadKind::StatefulSet, &ObjectMeta::default()),
            None
        );
    }

    #[test]
    fn annotations_become_the_strategy() {
        let annotations = BTreeMap::from([
            (ANNOTATION_MAX_UNAVAILABLE.to_string(), "25%".to_string()),
            (
                ANNOTATION_CONTAINERS.to_string(),
                "db, exporter".to_string(),
            ),
            (
                ANNOTATION_ORDER.to_string(),
                "role=role:replica:primary,master".to_string(),
            ),
        ]);
        let spec = rollout_spec(WorkloadKind::StatefulSet, "db", &annotations).unwrap();
        assert_eq!(
            spec.strategy.max_unavailable,
            Some(IntOrString::String("25%".into()))
        );
        assert_eq!(spec.containers, vec!["db", "exporter"]);
        let role = spec.strategy.order.unwrap().role.unwrap();
        assert_eq!(
            (role.key.as_str(), role.first, role.last),
            (
                "role",
                vec!["replica".to_string()],
                vec!["primary".to_string(), "master".to_string()]
            )
        );
        let two = BTreeMap::from([(ANNOTATION_MAX_UNAVAILABLE.to_string(), "2".to_string())]);
        assert_eq!(
            rollout_spec(WorkloadKind::Deployment, "web", &two)
                .unwrap()
                .strategy
                .max_unavailable,
            Some(IntOrString::Int(2))
        );
    }

    #[test]
    fn order_annotation_forms() {
        let order = |value: &str| {
            let annotations = BTreeMap::from([(ANNOTATION_ORDER.to_string(), value.to_string())]);
            rollout_spec(WorkloadKind::StatefulSet, "db", &annotations)
                .map(|spec| spec.strategy.order.unwrap_or_default())
        };
        assert_eq!(
            order("ordinal-asc").unwrap().ordinal,
            Some(OrdinalOrder::OrdinalAscending)
        );
        assert_eq!(
            order("ordinal").unwrap().ordinal,
            Some(OrdinalOrder::OrdinalDescending)
        );
        assert!(order("role=role::primary").is_ok());
        assert!(order("random").is_err());
        assert!(order("role=:a:b").is_err());
        assert!(order("role=k").is_err());
        let message = order("random").unwrap_err().to_string();
        assert!(
            message.starts_with("relaunch.dev/order \"random\": use ordinal"),
            "{message}"
        );
    }
}
