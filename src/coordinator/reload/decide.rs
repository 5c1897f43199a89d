//! What a configuration change does to one opted-in workload, decided in pure code: from the
//! workload (its annotations and the references of its pod template), the content hash of each
//! object it uses and whether a rollout it started still runs, to what is written and created.
//!
//! The state is the workload's `relaunch.dev/reload-applied` annotation (the hashes last
//! applied). A workload seen for the first time is baselined (its hashes recorded, nothing
//! restarted), so a coordinator that starts or takes over leadership never restarts for
//! objects that did not change. A changed hash starts one RollingRestart (its name derived from
//! the changed objects' resourceVersions, so a second coordinator or a crash between the
//! creation and the annotation write meets AlreadyExists); the hashes are recorded as applied
//! once it is created. While it runs, further changes wait: when it ends, everything that
//! changed meanwhile starts at most one follow-up.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ObjectReference, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use relaunch_api::reload::{
    ANNOTATION_RELOAD_APPLIED, ANNOTATION_RELOAD_CHANGED, ConfigRef, container_references,
    containers_to_restart, format_applied, format_refs, parse_applied, reload_config, watched,
};
use relaunch_api::{RollingRestart, WorkloadKind};

use crate::events::Event;
use crate::rollout::trigger;

/// What the cache holds of a ConfigMap or Secret: its content hash and resourceVersion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub hash: String,
    pub resource_version: String,
}

/// One opted-in workload as the decision reads it.
#[derive(Debug, Clone)]
pub struct Workload<'a> {
    pub kind: &'a WorkloadKind,
    pub meta: &'a ObjectMeta,
    /// The pod template's spec (pruned to what references ConfigMaps and Secrets).
    pub spec: Option<&'a PodSpec>,
}

/// A rollout to start.
#[derive(Debug, Clone)]
pub struct Start {
    pub rollout: RollingRestart,
    pub changed: BTreeSet<ConfigRef>,
    /// The Event on the workload, once the rollout is created.
    pub event: Event,
}

/// What one pass does for one workload.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    /// The annotations are wrong: nothing happens; the Warning says what (told once).
    pub refused: Option<String>,
    /// Objects it uses that do not exist: nothing restarts for them (told once each).
    pub missing: Vec<ConfigRef>,
    /// The rollout to create first (AlreadyExists counts as created).
    pub start: Option<Start>,
    /// The new `relaunch.dev/reload-applied` value, to write once `start` (if any) is created.
    pub applied: Option<String>,
    /// Changes waiting for the workload's running rollout to end.
    pub waiting: Option<BTreeSet<ConfigRef>>,
}

/// The reason of the Event that names what changed and the rollout it started.
pub const REASON_CHANGED: &str = "ConfigurationChanged";
/// The reason of the Warning for a used object that does not exist.
pub const REASON_MISSING: &str = "ConfigurationMissing";
/// The reason of the Warning for annotations that cannot be read.
pub const REASON_REFUSED: &str = "ReloadNotConfigured";

/// Decides for `workload`; `seen` looks up an object of its namespace in the cache, `running` is
/// the name of a rollout this trigger started for it that has not ended.
pub fn decide(
    workload: &Workload<'_>,
    seen: impl Fn(&ConfigRef) -> Option<Seen>,
    running: Option<&str>,
) -> Decision {
    let mut out = Decision::default();
    let annotations = workload.meta.annotations.clone().unwrap_or_default();
    let config = match reload_config(&annotations) {
        Ok(Some(config)) => config,
        Ok(None) => return out,
        Err(message) => {
            out.refused = Some(message);
            return out;
        }
    };
    let uses = workload.spec.map(container_references).unwrap_or_default();
    let watched = watched(&config, &uses);
    let current: BTreeMap<ConfigRef, Seen> = watched
        .iter()
        .filter_map(|r| seen(r).map(|s| (r.clone(), s)))
        .collect();
    out.missing = watched
        .iter()
        .filter(|r| !current.contains_key(*r))
        .cloned()
        .collect();
    let applied = annotations
        .get(ANNOTATION_RELOAD_APPLIED)
        .map(|text| parse_applied(text));
    // What is recorded after this pass: the current hash of what exists; the last applied hash
    // of what is missing (so that re-creating it with other content is a change); nothing of
    // what is no longer used.
    let next: BTreeMap<ConfigRef, String> = watched
        .iter()
        .filter_map(|r| {
            let hash = match current.get(r) {
                Some(s) => Some(s.hash.clone()),
                None => applied.as_ref().and_then(|a| a.get(r).cloned()),
            };
            hash.map(|h| (r.clone(), h))
        })
        .collect();
    let Some(applied) = applied else {
        // First sight: baseline, restart nothing.
        out.applied = Some(format_applied(&next));
        return out;
    };
    // Changed: used before and now, with another hash. A newly used object (the template
    // changed, which re-creates the pods anyway) is recorded without a restart.
    let changed: BTreeSet<ConfigRef> = current
        .iter()
        .filter(|(r, s)| applied.get(*r).is_some_and(|h| *h != s.hash))
        .map(|(r, _)| r.clone())
        .collect();
    if changed.is_empty() {
        if next != applied {
            out.applied = Some(format_applied(&next));
        }
        return out;
    }
    if running.is_some() {
        out.waiting = Some(changed);
        return out;
    }
    let name = workload.meta.name.clone().unwrap_or_default();
    let ns = workload.meta.namespace.clone().unwrap_or_default();
    let mut spec = match trigger::rollout_spec(workload.kind.clone(), &name, &annotations) {
        Ok(spec) => spec,
        Err(invalid) => {
            out.refused = Some(invalid.to_string());
            return out;
        }
    };
    spec.containers = containers_to_restart(&config, &uses, &changed);
    // Unique per change (resourceVersions only grow), the same for the same change.
    let token: Vec<String> = changed
        .iter()
        .map(|r| {
            let rv = current.get(r).map(|s| s.resource_version.as_str());
            format!("{r}@{}", rv.unwrap_or_default())
        })
        .collect();
    let rollout_name =
        trigger::rollout_name(workload.kind, &name, &format!("reload:{}", token.join(",")));
    let mut rollout = RollingRestart::new(&rollout_name, spec);
    rollout.metadata.namespace = Some(ns.clone());
    rollout.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: workload.kind.to_string(),
        name: name.clone(),
        uid: workload.meta.uid.clone().unwrap_or_default(),
        controller: None,
        block_owner_deletion: None,
    }]);
    rollout.metadata.annotations = Some(BTreeMap::from([(
        ANNOTATION_RELOAD_CHANGED.to_string(),
        format_refs(&changed),
    )]));
    let containers = if rollout.spec.containers.is_empty() {
        "all containers".to_string()
    } else {
        format!("containers {}", rollout.spec.containers.join(", "))
    };
    let event = Event::normal(
        REASON_CHANGED,
        format!(
            "{} changed: RollingRestart {rollout_name} restarts {containers} in place",
            format_refs(&changed)
        ),
    )
    .related_to(rollout_reference(&rollout_name, &ns));
    out.start = Some(Start {
        rollout,
        changed,
        event,
    });
    out.applied = Some(format_applied(&next));
    out
}

/// The reason of the Event for changes that wait for a running rollout.
pub const REASON_QUEUED: &str = "ConfigurationChangeQueued";

/// The Event for changes (`changed`, as written) that wait for rollout `rollout` to end.
pub fn queued_event(changed: &str, rollout: &str, namespace: &str) -> Event {
    Event::normal(
        REASON_QUEUED,
        format!(
            "{changed} changed while RollingRestart {rollout} runs: one more rollout follows when it ends"
        ),
    )
    .related_to(rollout_reference(rollout, namespace))
}

fn rollout_reference(name: &str, namespace: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("relaunch.dev/v1alpha1".into()),
        kind: Some("RollingRestart".into()),
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        ..Default::default()
    }
}

/// The Warning for a used object that does not exist.
pub fn missing_event(missing: &ConfigRef) -> Event {
    Event::warning(
        REASON_MISSING,
        format!(
            "{missing} is used but does not exist (deleted?): nothing is restarted for it, since a container created now would not start unless the reference is optional; when it exists again with other content, the pods restart"
        ),
    )
}

/// A reference to the workload, for its Events.
pub fn workload_reference(kind: &WorkloadKind, meta: &ObjectMeta) -> ObjectReference {
    ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some(kind.to_string()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaunch_api::reload::ANNOTATION_RELOAD;
    use serde_json::json;

    fn meta(annotations: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some("db".into()),
            namespace: Some("ns".into()),
            uid: Some("u1".into()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn spec() -> PodSpec {
        serde_json::from_value(json!({
            "containers": [
                {"name": "db", "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "a"}}}],
                 "volumeMounts": [{"name": "tls", "mountPath": "/tls"}]},
                {"name": "exporter"},
            ],
            "volumes": [{"name": "tls", "secret": {"secretName": "tls"}}],
        }))
        .unwrap()
    }

    fn seen(objects: &[(&str, &str, &str)]) -> impl Fn(&ConfigRef) -> Option<Seen> {
        let objects: BTreeMap<String, Seen> = objects
            .iter()
            .map(|(r, h, rv)| {
                (
                    r.to_string(),
                    Seen {
                        hash: h.to_string(),
                        resource_version: rv.to_string(),
                    },
                )
            })
            .collect();
        move |r| objects.get(&r.to_string()).cloned()
    }

    #[test]
    fn first_sight_records_the_hashes_and_restarts_nothing() {
        let m = meta(&[(ANNOTATION_RELOAD, "auto")]);
        let spec = spec();
        let w = Workload {
            kind: &WorkloadKind::StatefulSet,
            meta: &m,
            spec: Some(&spec),
        };
        let d = decide(
            &w,
            seen(&[("configmap/app", "h1", "1"), ("secret/tls", "s1", "2")]),
            None,
        );
        assert!(d.start.is_none());
        assert_eq!(d.applied.as_deref(), Some("configmap/app=h1,secret/tls=s1"));
        // Unchanged afterwards: nothing at all.
        let m = meta(&[
            (ANNOTATION_RELOAD, "auto"),
            (ANNOTATION_RELOAD_APPLIED, "configmap/app=h1,secret/tls=s1"),
        ]);
        let w = Workload { meta: &m, ..w };
        let d = decide(
            &w,
            seen(&[
                ("configmap/app", "h1", "1"),
                ("secret/tls", "s1", "2"),
                ("configmap/other", "x", "3"),
            ]),
            None,
        );
        assert!(d.start.is_none() && d.applied.is_none() && d.missing.is_empty());
    }

    #[test]
    fn a_change_starts_one_rollout_of_the_containers_that_use_it() {
        let m = meta(&[
            (ANNOTATION_RELOAD, "auto"),
            (ANNOTATION_RELOAD_APPLIED, "configmap/app=h1,secret/tls=s1"),
            ("relaunch.dev/max-unavailable", "2"),
        ]);
        let spec = spec();
        let w = Workload {
            kind: &WorkloadKind::StatefulSet,
            meta: &m,
            spec: Some(&spec),
        };
        let objects = [("configmap/app", "h2", "7"), ("secret/tls", "s1", "2")];
        let d = decide(&w, seen(&objects), None);
        let start = d.start.unwrap();
        assert_eq!(
            start.changed,
            BTreeSet::from([ConfigRef::config_map("app")])
        );
        assert_eq!(start.rollout.spec.containers, vec!["db"]);
        assert_eq!(
            start.rollout.metadata.annotations.unwrap()[ANNOTATION_RELOAD_CHANGED],
            "configmap/app"
        );
        assert!(
            start
                .rollout
                .metadata
                .name
                .as_deref()
                .unwrap()
                .starts_with("statefulset-db-")
        );
        assert_eq!(
            start.rollout.spec.strategy.max_unavailable,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(2))
        );
        assert!(start.event.message.contains("configmap/app changed"));
        assert_eq!(d.applied.as_deref(), Some("configmap/app=h2,secret/tls=s1"));
        // The same change decided again (a crash before the annotation was written) names the
        // same rollout; another change of the same object names another.
        let again = decide(&w, seen(&objects), None).start.unwrap();
        let later = decide(
            &w,
            seen(&[("configmap/app", "h3", "9"), ("secret/tls", "s1", "2")]),
            None,
        )
        .start
        .unwrap();
        assert_eq!(again.rollout.metadata.name, start_name(&w, &objects));
        assert_ne!(later.rollout.metadata.name, again.rollout.metadata.name);

        // While a rollout runs, changes wait and nothing is recorded.
        let d = decide(&w, seen(&objects), Some("statefulset-db-1"));
        assert!(d.start.is_none() && d.applied.is_none());
        assert_eq!(
            d.waiting,
            Some(BTreeSet::from([ConfigRef::config_map("app")]))
        );
    }

    fn start_name(w: &Workload<'_>, objects: &[(&str, &str, &str)]) -> Option<String> {
        decide(w, seen(objects), None).start?.rollout.metadata.name
    }

    #[test]
    fn an_unused_object_a_new_one_and_a_deleted_one_restart_nothing() {
        let m = meta(&[
            (ANNOTATION_RELOAD, "auto"),
            (ANNOTATION_RELOAD_APPLIED, "configmap/app=h1"),
        ]);
        let spec = spec();
        let w = Workload {
            kind: &WorkloadKind::StatefulSet,
            meta: &m,
            spec: Some(&spec),
        };
        // secret/tls is new to the record: recorded, no restart. configmap/app is gone.
        let d = decide(&w, seen(&[("secret/tls", "s1", "2")]), None);
        assert!(d.start.is_none());
        assert_eq!(d.missing, vec![ConfigRef::config_map("app")]);
        // The deleted object's last hash stays, so that re-creating it differently restarts.
        assert_eq!(d.applied.as_deref(), Some("configmap/app=h1,secret/tls=s1"));
        assert!(missing_event(&d.missing[0]).warning);
    }

    #[test]
    fn a_listed_object_no_container_uses_restarts_all_and_bad_annotations_are_refused() {
        let m = meta(&[
            (ANNOTATION_RELOAD, "configmap/flags"),
            (ANNOTATION_RELOAD_APPLIED, "configmap/flags=f1"),
        ]);
        let spec = spec();
        let w = Workload {
            kind: &WorkloadKind::Deployment,
            meta: &m,
            spec: Some(&spec),
        };
        let d = decide(
            &w,
            seen(&[("configmap/flags", "f2", "5"), ("configmap/app", "x", "1")]),
            None,
        );
        let start = d.start.unwrap();
        assert!(start.rollout.spec.containers.is_empty(), "all containers");
        assert_eq!(
            d.applied.as_deref(),
            Some("configmap/flags=f2"),
            "only what is listed"
        );

        let m = meta(&[(ANNOTATION_RELOAD, "pod/x")]);
        let w = Workload { meta: &m, ..w };
        let d = decide(&w, seen(&[]), None);
        assert!(d.refused.unwrap().starts_with(ANNOTATION_RELOAD));
        assert!(d.applied.is_none());
        let m = meta(&[
            (ANNOTATION_RELOAD, "auto"),
            (ANNOTATION_RELOAD_APPLIED, "configmap/app=h1"),
            ("relaunch.dev/order", "random"),
        ]);
        let w = Workload { meta: &m, ..w };
        let d = decide(&w, seen(&[("configmap/app", "h2", "2")]), None);
        assert!(d.refused.unwrap().contains("relaunch.dev/order"));
        assert!(d.start.is_none() && d.applied.is_none());
    }
}
