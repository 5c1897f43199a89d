//! The command line's values: object references, durations and rollout strategy flags. Every
//! error names the flag or argument and says what would be accepted.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use relaunch_api::{RolloutOrder, WorkloadKind};

/// A kind as kubectl spells it: short name, singular or plural, any case, with or without the
/// `.apps` group (`sts`, `StatefulSets`, `deployments.apps`).
fn workload_kind(word: &str) -> Option<WorkloadKind> {
    let word = word.to_ascii_lowercase();
    let word = word.strip_suffix(".apps").unwrap_or(&word);
    WorkloadKind::ALL
        .into_iter()
        .find(|k| k.short_name() == Some(word) || k.singular() == word || k.plural() == word)
}

/// `KIND/NAME` of a workload: `sts/db`, `statefulset/db`, `deployments.apps/web`, ...
pub fn workload(text: &str) -> Result<(WorkloadKind, String), String> {
    let Some((kind, name)) = text.split_once('/') else {
        return Err(format!(
            "{text:?} is not KIND/NAME; use e.g. sts/{text} (kinds: sts, deploy, ds, rs)"
        ));
    };
    let kind = workload_kind(kind).ok_or_else(|| {
        format!(
            "{kind:?} is not a workload kind relaunch can roll out; use sts, deploy, ds or rs (statefulset, deployment, daemonset, replicaset)"
        )
    })?;
    Ok((kind, object_name(name, text)?))
}

/// `pod/NAME` (also `po/NAME`, `pods/NAME`, or just `NAME`).
pub fn pod(text: &str) -> Result<String, String> {
    match text.split_once('/') {
        None => object_name(text, text),
        Some((kind, name))
            if ["pod", "pods", "po"].contains(&kind.to_ascii_lowercase().as_str()) =>
        {
            object_name(name, text)
        }
        Some((kind, _)) => Err(format!(
            "{text:?}: restart takes a pod (pod/NAME), not a {kind}; to restart a whole workload use `kubectl relaunch rollout {text}`"
        )),
    }
}

/// Which relaunch resource a name given to `status`, `pause`, ... refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelaunchKind {
    RollingRestart,
    ContainerRecreateRequest,
}

/// `NAME`, `rr/NAME` or `crr/NAME` (also the long and the `.relaunch.dev` forms).
pub fn relaunch_object(text: &str) -> Result<(Option<RelaunchKind>, String), String> {
    let Some((kind, name)) = text.split_once('/') else {
        return Ok((None, object_name(text, text)?));
    };
    let lower = kind.to_ascii_lowercase();
    let word = lower.strip_suffix(".relaunch.dev").unwrap_or(&lower);
    let kind = match word {
        "rr" | "rollingrestart" | "rollingrestarts" => RelaunchKind::RollingRestart,
        "crr" | "containerrecreaterequest" | "containerrecreaterequests" => {
            RelaunchKind::ContainerRecreateRequest
        }
        _ => {
            return Err(format!(
                "{kind:?} is not a relaunch resource; use rr/NAME (RollingRestart) or crr/NAME (ContainerRecreateRequest)"
            ));
        }
    };
    Ok((Some(kind), object_name(name, text)?))
}

fn object_name(name: &str, whole: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if valid {
        Ok(name.to_string())
    } else {
        Err(format!(
            "{whole:?}: {name:?} is not a valid object name (lowercase letters, digits, '-' and '.')"
        ))
    }
}

/// A duration like kubectl's: `30s`, `2m`, `1m30s`, `1h`; a bare number is seconds.
pub fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let parsed: jiff::SignedDuration = text
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; use e.g. 30s, 2m or 1m30s"))?;
    Duration::try_from(parsed).map_err(|_| format!("{text:?}: a duration must not be negative"))
}

/// A duration in whole seconds, for the API's `...Seconds` fields.
pub fn whole_seconds(flag: &str, duration: Duration) -> Result<i64, String> {
    if duration.subsec_nanos() != 0 {
        return Err(format!(
            "{flag} {:?} is not a whole number of seconds",
            duration
        ));
    }
    i64::try_from(duration.as_secs()).map_err(|_| format!("{flag} is too long"))
}

/// `--max-unavailable`: a count ≥ 1 or a percentage between 1% and 100%.
pub fn max_unavailable(text: &str) -> Result<IntOrString, String> {
    let text = text.trim();
    if let Some(percent) = text.strip_suffix('%') {
        return match percent.trim().parse::<u32>() {
            Ok(p) if (1..=100).contains(&p) => Ok(IntOrString::String(format!("{p}%"))),
            _ => Err(format!(
                "--max-unavailable {text:?}: a percentage must be between 1% and 100%"
            )),
        };
    }
    match text.parse::<i32>() {
        Ok(n) if n >= 1 => Ok(IntOrString::Int(n)),
        _ => Err(format!(
            "--max-unavailable {text:?}: use a count of at least 1 (e.g. 2) or a percentage (e.g. 25%)"
        )),
    }
}

/// `--order` values: at most one of `ordinal` / `ordinal-asc` (`ordinal-desc`) and at most one
/// `role=KEY:FIRST1,FIRST2:LAST1,LAST2` (either list may be empty, not both).
pub fn order(values: &[String]) -> Result<Option<RolloutOrder>, String> {
    RolloutOrder::from_terms(values.iter().map(String::as_str)).map_err(|e| format!("--order {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaunch_api::{OrdinalOrder, RoleOrder};

    #[test]
    fn workload_kinds_accept_kubectl_spellings() {
        for (text, kind) in [
            ("sts/db", WorkloadKind::StatefulSet),
            ("statefulset/db", WorkloadKind::StatefulSet),
            ("StatefulSets/db", WorkloadKind::StatefulSet),
            ("statefulsets.apps/db", WorkloadKind::StatefulSet),
            ("deploy/db", WorkloadKind::Deployment),
            ("deployments/db", WorkloadKind::Deployment),
            ("ds/db", WorkloadKind::DaemonSet),
            ("daemonset/db", WorkloadKind::DaemonSet),
            ("rs/db", WorkloadKind::ReplicaSet),
            ("replicasets/db", WorkloadKind::ReplicaSet),
        ] {
            assert_eq!(workload(text), Ok((kind, "db".to_string())), "{text}");
        }
        assert!(workload("db").unwrap_err().contains("KIND/NAME"));
        assert!(
            workload("job/db")
                .unwrap_err()
                .contains("sts, deploy, ds or rs")
        );
        assert!(
            workload("sts/")
                .unwrap_err()
                .contains("not a valid object name")
        );
        assert!(
            workload("sts/DB")
                .unwrap_err()
                .contains("not a valid object name")
        );
    }

    #[test]
    fn pods_are_named_with_or_without_the_kind() {
        assert_eq!(pod("pod/web-0"), Ok("web-0".to_string()));
        assert_eq!(pod("po/web-0"), Ok("web-0".to_string()));
        assert_eq!(pod("web-0"), Ok("web-0".to_string()));
        assert!(
            pod("sts/web")
                .unwrap_err()
                .contains("kubectl relaunch rollout sts/web")
        );
    }

    #[test]
    fn relaunch_objects_take_an_optional_kind() {
        assert_eq!(relaunch_object("x"), Ok((None, "x".into())));
        assert_eq!(
            relaunch_object("rr/x"),
            Ok((Some(RelaunchKind::RollingRestart), "x".into()))
        );
        assert_eq!(
            relaunch_object("rollingrestart.relaunch.dev/x"),
            Ok((Some(RelaunchKind::RollingRestart), "x".into()))
        );
        assert_eq!(
            relaunch_object("crr/x"),
            Ok((Some(RelaunchKind::ContainerRecreateRequest), "x".into()))
        );
        assert!(relaunch_object("pod/x").is_err());
    }

    #[test]
    fn durations_read_like_kubectls() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(duration("soon").is_err());
        assert!(duration("-5s").is_err());
        assert_eq!(whole_seconds("--grace", Duration::from_secs(30)), Ok(30));
        assert!(
            whole_seconds("--grace", Duration::from_millis(1500))
                .unwrap_err()
                .contains("whole number of seconds")
        );
    }

    #[test]
    fn max_unavailable_is_a_count_or_a_percentage() {
        assert_eq!(max_unavailable("2"), Ok(IntOrString::Int(2)));
        assert_eq!(
            max_unavailable("25%"),
            Ok(IntOrString::String("25%".into()))
        );
        for bad in ["0", "-1", "0%", "150%", "two", "%", ""] {
            assert!(max_unavailable(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn order_maps_onto_the_rollout_order() {
        assert_eq!(order(&[]), Ok(None));
        assert_eq!(
            order(&["ordinal".into()]),
            Ok(Some(RolloutOrder {
                ordinal: Some(OrdinalOrder::OrdinalDescending),
                role: None
            }))
        );
        assert_eq!(
            order(&["ordinal-asc".into()]),
            Ok(Some(RolloutOrder {
                ordinal: Some(OrdinalOrder::OrdinalAscending),
                role: None
            }))
        );
        let role = RoleOrder {
            key: "role".into(),
            first: vec!["replica".into()],
            last: vec!["primary".into(), "master".into()],
        };
        assert_eq!(
            order(&["role=role:replica:primary,master".into()]),
            Ok(Some(RolloutOrder {
                ordinal: None,
                role: Some(role.clone())
            }))
        );
        assert_eq!(
            order(&[
                "role=role:replica:primary,master".into(),
                "ordinal-asc".into()
            ]),
            Ok(Some(RolloutOrder {
                ordinal: Some(OrdinalOrder::OrdinalAscending),
                role: Some(role)
            }))
        );
        let only_last = order(&["role=app.kubernetes.io/role::leader".into()])
            .unwrap()
            .unwrap()
            .role
            .unwrap();
        assert!(only_last.first.is_empty());
        assert_eq!(only_last.last, vec!["leader".to_string()]);
    }

    #[test]
    fn bad_orders_say_what_is_accepted() {
        for (bad, says) in [
            ("random", "ordinal-asc"),
            ("role=", "not a label key"),
            ("role=role", "first and/or last"),
            ("role=role::", "first and/or last"),
            ("role=role:a:b:c", "too many"),
            ("role=role:a:a", "both first and last"),
        ] {
            let error = order(&[bad.into()]).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
        assert!(order(&["ordinal".into(), "ordinal-asc".into()]).is_err());
    }
}
