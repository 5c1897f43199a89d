//! Admission of new requests: is the request valid for its pod, and which labels does it need so
//! the right agent sees it?

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::Pod;

use relaunch_api::{ContainerRecreateRequest, LABEL_NODE_NAME, LABEL_POD_UID};

/// The longest duration a request may ask for (deadlines, grace periods, readiness waits).
pub const MAX_DURATION_SECONDS: i64 = 24 * 60 * 60;
/// The longest a finished request may be kept before its TTL deletes it.
pub const MAX_TTL_SECONDS: i64 = 30 * 24 * 60 * 60;

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
    match check(crr, pod) {
        Ok(labels) => Admission::Admit { labels },
        Err(message) => Admission::Refuse { message },
    }
}

fn check(
    crr: &ContainerRecreateRequest,
    pod: Option<&Pod>,
) -> Result<BTreeMap<String, String>, String> {
    let spec = &crr.spec;
    let namespace = crr.metadata.namespace.as_deref().unwrap_or_default();
    if spec.pod_name.is_empty() {
        return Err("spec.podName is empty".into());
    }
    if spec.containers.is_empty() {
        return Err("spec.containers is empty: name at least one container to recreate".into());
    }
    let mut seen = HashSet::new();
    let mut duplicates = Vec::new();
    for c in &spec.containers {
        if !seen.insert(c.name.as_str()) && !duplicates.contains(&c.name) {
            duplicates.push(c.name.clone());
        }
    }
    if !duplicates.is_empty() {
        return Err(format!(
            "spec.containers names a container more than once: {}",
            duplicates.join(", ")
        ));
    }
    check_durations(crr)?;
    check_shutdown_actions(crr)?;

    let Some(pod) = pod else {
        return Err(format!(
            "pod {} not found in namespace {namespace}",
            spec.pod_name
        ));
    };
    let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
    let labels = crr.metadata.labels.clone().unwrap_or_default();
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(format!("pod {} is being deleted", spec.pod_name));
    }
    let pod_spec = pod.spec.clone().unwrap_or_default();
    let Some(node) = pod_spec.node_name.clone().filter(|n| !n.is_empty()) else {
        return Err(format!(
            "pod {} is not scheduled to a node yet; create the request once it runs",
            spec.pod_name
        ));
    };
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Unknown".into());
    if phase != "Running" {
        return Err(format!(
            "pod {} is {phase}, not Running; only containers of a running pod can be recreated",
            spec.pod_name
        ));
    }
    let known: HashSet<&str> = pod_spec
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .chain(
            pod_spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"))
                .map(|c| c.name.as_str()),
        )
        .collect();
    let unknown: Vec<&str> = spec
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .filter(|n| !known.contains(n))
        .collect();
    if !unknown.is_empty() {
        let mut have: Vec<&str> = known.into_iter().collect();
        have.sort_unstable();
        return Err(format!(
            "pod {} has no container {} (it has: {}; init containers other than native sidecars cannot be recreated)",
            spec.pod_name,
            unknown.join(", "),
            have.join(", ")
        ));
    }
    if let Some(uid) = labels.get(LABEL_POD_UID)
        && *uid != pod_uid
    {
        return Err(format!(
            "label {LABEL_POD_UID}={uid} does not match pod {} (UID {pod_uid}): the pod was replaced",
            spec.pod_name
        ));
    }
    if let Some(labelled) = labels.get(LABEL_NODE_NAME)
        && *labelled != node
    {
        return Err(format!(
            "label {LABEL_NODE_NAME}={labelled} does not match pod {}, which runs on node {node}",
            spec.pod_name
        ));
    }
    let mut missing = BTreeMap::new();
    if !labels.contains_key(LABEL_NODE_NAME) {
        missing.insert(LABEL_NODE_NAME.to_string(), node);
    }
    if !labels.contains_key(LABEL_POD_UID) {
        missing.insert(LABEL_POD_UID.to_string(), pod_uid);
    }
    Ok(missing)
}

fn check_durations(crr: &ContainerRecreateRequest) -> Result<(), String> {
    let spec = &crr.spec;
    let strategy = spec.strategy.clone().unwrap_or_default();
    let fields: [(&str, Option<i64>, i64, i64); 5] = [
        (
            "spec.activeDeadlineSeconds",
            spec.active_deadline_seconds,
            1,
            MAX_DURATION_SECONDS,
        ),
        (
            "spec.ttlSecondsAfterFinished",
            spec.ttl_seconds_after_finished.map(i64::from),
            0,
            MAX_TTL_SECONDS,
        ),
        (
            "spec.strategy.terminationGracePeriodSeconds",
            strategy.termination_grace_period_seconds,
            0,
            MAX_DURATION_SECONDS,
        ),
        (
            "spec.strategy.unreadyGracePeriodSeconds",
            strategy.unready_grace_period_seconds,
            0,
            MAX_DURATION_SECONDS,
        ),
        (
            "spec.strategy.minStartedSeconds",
            strategy.min_started_seconds.map(i64::from),
            0,
            MAX_DURATION_SECONDS,
        ),
    ];
    for (field, value, min, max) in fields {
        if let Some(v) = value
            && !(min..=max).contains(&v)
        {
            return Err(format!(
                "{field}: must be between {min} and {max} seconds, got {v}"
            ));
        }
    }
    Ok(())
}

fn check_shutdown_actions(crr: &ContainerRecreateRequest) -> Result<(), String> {
    for (i, c) in crr.spec.containers.iter().enumerate() {
        let Some(action) = &c.shutdown else { continue };
        let field = format!("spec.containers[{i}].shutdown");
        match (&action.exec, &action.http_get) {
            (Some(_), Some(_)) => {
                return Err(format!("{field}: set exec or httpGet, not both"));
            }
            (None, None) => return Err(format!("{field}: set exec or httpGet")),
            (Some(exec), None) if exec.command.is_empty() => {
                return Err(format!("{field}.exec.command is empty"));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};
    use relaunch_api::{
        ContainerRecreateRequestContainer, ContainerRecreateRequestSpec,
        ContainerRecreateRequestStrategy, ExecAction, ShutdownAction,
    };

    fn pod() -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("db-0".into()),
                namespace: Some("default".into()),
                uid: Some("pod-uid-1".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-1".into()),
                containers: vec![
                    Container {
                        name: "db".into(),
                        ..Default::default()
                    },
                    Container {
                        name: "exporter".into(),
                        ..Default::default()
                    },
                ],
                init_containers: Some(vec![
                    Container {
                        name: "setup".into(),
                        ..Default::default()
                    },
                    Container {
                        name: "proxy".into(),
                        restart_policy: Some("Always".into()),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            }),
        }
    }

    fn crr(containers: &[&str]) -> ContainerRecreateRequest {
        let mut crr = ContainerRecreateRequest::new(
            "r",
            ContainerRecreateRequestSpec {
                pod_name: "db-0".into(),
                containers: containers
                    .iter()
                    .map(|n| ContainerRecreateRequestContainer {
                        name: n.to_string(),
                        shutdown: None,
                    })
                    .collect(),
                ..Default::default()
            },
        );
        crr.metadata.namespace = Some("default".into());
        crr
    }

    fn refused(a: Admission) -> String {
        match a {
            Admission::Refuse { message } => message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn valid_request_gets_node_and_pod_uid_labels() {
        let a = admit(&crr(&["db"]), Some(&pod()));
        let Admission::Admit { labels } = a else {
            panic!("refused: {a:?}")
        };
        assert_eq!(labels[LABEL_NODE_NAME], "node-1");
        assert_eq!(labels[LABEL_POD_UID], "pod-uid-1");
    }

    #[test]
    fn labels_already_set_are_not_added_again() {
        let mut r = crr(&["db"]);
        r.metadata.labels = Some(BTreeMap::from([
            (LABEL_NODE_NAME.to_string(), "node-1".to_string()),
            (LABEL_POD_UID.to_string(), "pod-uid-1".to_string()),
        ]));
        assert_eq!(
            admit(&r, Some(&pod())),
            Admission::Admit {
                labels: BTreeMap::new()
            }
        );
    }

    #[test]
    fn native_sidecar_can_be_recreated_but_not_a_plain_init_container() {
        assert!(matches!(
            admit(&crr(&["proxy"]), Some(&pod())),
            Admission::Admit { .. }
        ));
        let message = refused(admit(&crr(&["setup"]), Some(&pod())));
        assert!(message.contains("has no container setup"), "{message}");
    }

    #[test]
    fn missing_pod_is_refused() {
        assert_eq!(
            refused(admit(&crr(&["db"]), None)),
            "pod db-0 not found in namespace default"
        );
    }

    #[test]
    fn unscheduled_pod_is_refused() {
        let mut p = pod();
        p.spec.as_mut().unwrap().node_name = None;
        let message = refused(admit(&crr(&["db"]), Some(&p)));
        assert!(message.contains("not scheduled"), "{message}");
    }

    #[test]
    fn pod_not_running_is_refused() {
        let mut p = pod();
        p.status.as_mut().unwrap().phase = Some("Pending".into());
        let message = refused(admit(&crr(&["db"]), Some(&p)));
        assert!(message.contains("is Pending, not Running"), "{message}");
    }

    #[test]
    fn pod_being_deleted_is_refused() {
        let mut p = pod();
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::UNIX_EPOCH,
        ));
        let message = refused(admit(&crr(&["db"]), Some(&p)));
        assert!(message.contains("being deleted"), "{message}");
    }

    #[test]
    fn unknown_containers_are_named() {
        let message = refused(admit(&crr(&["db", "nope", "gone"]), Some(&pod())));
        assert!(message.contains("has no container nope, gone"), "{message}");
        assert!(message.contains("db, exporter, proxy"), "{message}");
    }

    #[test]
    fn duplicate_containers_are_refused() {
        let message = refused(admit(&crr(&["db", "db", "exporter"]), Some(&pod())));
        assert_eq!(
            message,
            "spec.containers names a container more than once: db"
        );
    }

    #[test]
    fn empty_containers_are_refused() {
        let message = refused(admit(&crr(&[]), Some(&pod())));
        assert!(message.contains("spec.containers is empty"), "{message}");
    }

    #[test]
    fn negative_and_absurd_durations_are_refused_by_field() {
        type Set = fn(&mut ContainerRecreateRequest);
        let cases: [(&str, Set); 7] = [
            ("spec.activeDeadlineSeconds", |r| {
                r.spec.active_deadline_seconds = Some(-1)
            }),
            ("spec.activeDeadlineSeconds", |r| {
                r.spec.active_deadline_seconds = Some(0)
            }),
            ("spec.ttlSecondsAfterFinished", |r| {
                r.spec.ttl_seconds_after_finished = Some(-5)
            }),
            ("spec.strategy.terminationGracePeriodSeconds", |r| {
                r.spec.strategy = Some(ContainerRecreateRequestStrategy {
                    termination_grace_period_seconds: Some(-1),
                    ..Default::default()
                })
            }),
            ("spec.strategy.unreadyGracePeriodSeconds", |r| {
                r.spec.strategy = Some(ContainerRecreateRequestStrategy {
                    unready_grace_period_seconds: Some(MAX_DURATION_SECONDS + 1),
                    ..Default::default()
                })
            }),
            ("spec.strategy.minStartedSeconds", |r| {
                r.spec.strategy = Some(ContainerRecreateRequestStrategy {
                    min_started_seconds: Some(-3),
                    ..Default::default()
                })
            }),
            ("spec.activeDeadlineSeconds", |r| {
                r.spec.active_deadline_seconds = Some(i64::MAX)
            }),
        ];
        for (field, set) in cases {
            let mut r = crr(&["db"]);
            set(&mut r);
            let message = refused(admit(&r, Some(&pod())));
            assert!(message.starts_with(field), "{field}: {message}");
        }
    }

    #[test]
    fn reasonable_durations_are_accepted() {
        let mut r = crr(&["db"]);
        r.spec.active_deadline_seconds = Some(600);
        r.spec.ttl_seconds_after_finished = Some(0);
        r.spec.strategy = Some(ContainerRecreateRequestStrategy {
            termination_grace_period_seconds: Some(30),
            unready_grace_period_seconds: Some(5),
            min_started_seconds: Some(10),
            ..Default::default()
        });
        assert!(matches!(admit(&r, Some(&pod())), Admission::Admit { .. }));
    }

    #[test]
    fn empty_shutdown_command_is_refused() {
        let mut r = crr(&["db"]);
        r.spec.containers[0].shutdown = Some(ShutdownAction {
            exec: Some(ExecAction { command: vec![] }),
            http_get: None,
        });
        assert_eq!(
            refused(admit(&r, Some(&pod()))),
            "spec.containers[0].shutdown.exec.command is empty"
        );
    }

    #[test]
    fn replaced_pod_is_refused() {
        let mut r = crr(&["db"]);
        r.metadata.labels = Some(BTreeMap::from([(
            LABEL_POD_UID.to_string(),
            "older-uid".to_string(),
        )]));
        let message = refused(admit(&r, Some(&pod())));
        assert!(message.contains("the pod was replaced"), "{message}");
    }

    #[test]
    fn wrong_node_label_is_refused() {
        let mut r = crr(&["db"]);
        r.metadata.labels = Some(BTreeMap::from([(
            LABEL_NODE_NAME.to_string(),
            "node-9".to_string(),
        )]));
        let message = refused(admit(&r, Some(&pod())));
        assert!(message.contains("runs on node node-1"), "{message}");
    }
}
