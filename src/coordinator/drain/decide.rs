//! The drain decisions, in pure code: which removed ordinals get a Drain (`new_drains`), and the
//! next step of one Drain (`decide`). Each pass makes at most one change; status is written
//! before the change it announces (the attempt before its pod), so a crash resumes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{EnvVar, PersistentVolumeClaimVolumeSource, Pod, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::{Resource, ResourceExt};

use relaunch_api::{
    ClaimRef, DRAIN_ATTEMPTS, DRAIN_FAILED, Drain, DrainPhase, DrainSpec, DrainStatus, DrainStep,
    ENV_NAMESPACE, ENV_ORDINAL, ENV_POD_NAME, ENV_REMAINING, ENV_REPLICAS_AFTER, ENV_SERVICE,
    ENV_STATEFULSET, LABEL_DRAIN, LABEL_DRAIN_ATTEMPT,
};

use crate::events::Event;
use crate::scaledown::decide::set_condition;

/// How long an ordinal stays removed before its drain starts (a scale-down undone at once is
/// not drained).
pub const DEBOUNCE: Duration = Duration::from_secs(3);
/// Back-off before attempt n+1: `BACKOFF * 2^(n-1)`.
pub const BACKOFF: Duration = Duration::from_secs(2);

/// What the drain controller knows of an annotated StatefulSet.
#[derive(Debug, Clone)]
pub struct SetView {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub replicas: i32,
    pub start: i32,
    pub service_name: Option<String>,
    pub claim_templates: Vec<String>,
    /// The drain pod template, or why it cannot be read.
    pub template: Result<Pod, String>,
    pub abortable: bool,
    pub delete_claims: bool,
    /// `whenScaled: Delete`: the StatefulSet deletes removed claims itself; nothing to drain.
    pub deletes_claims_when_scaled: bool,
    pub deleting: bool,
}

impl SetView {
    pub fn in_range(&self, ordinal: i32) -> bool {
        ordinal >= self.start && ordinal.saturating_sub(self.start) < self.replicas
    }
    fn pod_name(&self, ordinal: i32) -> String {
        format!("{}-{ordinal}", self.name)
    }
}

/// A claim of the namespace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClaimView {
    pub name: String,
    pub uid: String,
    /// Being deleted, or owned by a pod (the retention policy collects it): never drained.
    pub going: bool,
}

/// A pod named like a StatefulSet pod: the StatefulSet's own, or a drain pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodView {
    pub name: String,
    pub uid: String,
    pub phase: Option<String>,
    pub deleting: bool,
    /// The `relaunch.dev/drain` label: the Drain it belongs to.
    pub drain: Option<String>,
    pub attempt: Option<i32>,
}

/// The ordinal of claim `claim` made from template `template` for `set`, if it is one.
fn claim_ordinal(claim: &str, template: &str, set: &str) -> Option<i32> {
    let rest = claim.strip_prefix(&format!("{template}-{set}-"))?;
    let canonical = !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_digit())
        && (rest == "0" || !rest.starts_with('0'));
    canonical.then(|| rest.parse().ok()).flatten()
}

/// The removed ordinals of `set` whose claims are orphaned and need a Drain: out of range, no
/// pod of that name left, no claim of it going or taken by a ScaleDown (`excluded`), none in a
/// Drain already (`drained`). Returns (ordinal, claims) in ascending order.
pub fn orphans(
    set: &SetView,
    claims: &[ClaimView],
    pods: &BTreeMap<String, PodView>,
    drained: &BTreeSet<String>,
    excluded: &BTreeSet<String>,
) -> Vec<(i32, Vec<ClaimRef>)> {
    if set.deleting || set.deletes_claims_when_scaled || set.template.is_err() {
        return Vec::new();
    }
    let mut by_ordinal: BTreeMap<i32, Vec<&ClaimView>> = BTreeMap::new();
    for claim in claims {
        for t in &set.claim_templates {
            if let Some(o) = claim_ordinal(&claim.name, t, &set.name) {
                by_ordinal.entry(o).or_default().push(claim);
            }
        }
    }
    by_ordinal
        .into_iter()
        .filter(|(o, cs)| {
            !set.in_range(*o)
                && !pods.contains_key(&set.pod_name(*o))
                && cs
                    .iter()
                    .all(|c| !c.going && !drained.contains(&c.uid) && !excluded.contains(&c.uid))
        })
        .map(|(o, cs)| {
            let refs = cs
                .iter()
                .map(|c| ClaimRef {
                    name: c.name.clone(),
                    uid: c.uid.clone(),
                })
                .collect();
            (o, refs)
        })
        .collect()
}

/// The Drain recording the intent to drain `claims` of `ordinal`.
pub fn new_drain(set: &SetView, ordinal: i32, claims: Vec<ClaimRef>) -> Drain {
    let suffix: String = claims
        .first()
        .map(|c| {
            c.uid
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(8)
                .collect()
        })
        .unwrap_or_default();
    let mut drain = Drain::new(
        &format!("{}-{ordinal}-{suffix}", set.name),
        DrainSpec {
            stateful_set_name: set.name.clone(),
            stateful_set_uid: set.uid.clone(),
            ordinal,
            claims,
        },
    );
    drain.metadata.namespace = Some(set.namespace.clone());
    drain
}

/// The one change a pass asks for besides status.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    CreatePod(Box<Pod>),
    DeletePod { name: String, uid: String },
    DeleteClaims(Vec<ClaimRef>),
}

/// What a pass over one Drain does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    pub status: Option<DrainStatus>,
    pub write: Option<Write>,
    pub events: Vec<Event>,
    pub requeue: Option<Duration>,
}

struct Pass<'a> {
    drain: &'a Drain,
    now: Timestamp,
    s: DrainStatus,
    events: Vec<Event>,
    write: Option<Write>,
    requeue: Option<Duration>,
}

impl Pass<'_> {
    fn finish(&mut self, phase: DrainPhase, message: String) {
        self.s.phase = phase;
        self.s.completion_time = Some(Time(self.now));
        self.events.push(match phase {
            DrainPhase::Succeeded => Event::normal("DrainSucceeded", message.clone()),
            DrainPhase::Aborted => Event::normal("DrainAborted", message.clone()),
            _ => Event::warning("DrainFailed", message.clone()),
        });
        self.s.message = Some(message);
    }
    /// Ends as `phase` once the drain pod is deleted.
    fn end_after_pod(&mut self, phase: DrainPhase, message: String) {
        self.s.step = DrainStep::DeletingPod;
        self.s.ending = Some(phase);
        self.s.message = Some(message);
    }
}

/// Decides the next change for one Drain. `set` is its StatefulSet (None: gone), `pod` the pod
/// named `<set>-<ordinal>`, `claims` the namespace's claims (name -> UID, not being deleted).
pub fn decide(
    drain: &Drain,
    set: Option<&SetView>,
    pod: Option<&PodView>,
    claims: &BTreeMap<String, String>,
    now: Timestamp,
) -> Decision {
    let old = drain.status.clone().unwrap_or_default();
    if old.phase.is_finished() || old.phase == DrainPhase::Unknown {
        return Decision::default();
    }
    let mut p = Pass {
        drain,
        now,
        s: old.clone(),
        events: Vec::new(),
        write: None,
        requeue: None,
    };
    if p.s.start_time.is_none() {
        p.s.start_time = Some(Time(now));
    }
    step(&mut p, set, pod, claims);
    let Pass {
        s,
        events,
        write,
        requeue,
        ..
    } = p;
    Decision {
        status: (s != old).then_some(s),
        write,
        events,
        requeue,
    }
}

fn step(
    p: &mut Pass<'_>,
    set: Option<&SetView>,
    pod: Option<&PodView>,
    claims: &BTreeMap<String, String>,
) {
    let spec = &p.drain.spec;
    let name = p.drain.name_any();
    let ours = pod.filter(|pod| pod.drain.as_deref() == Some(name.as_str()));
    let set = set.filter(|s| s.uid == spec.stateful_set_uid && !s.deleting);
    if p.s.step == DrainStep::Draining && set.is_none() {
        let message = format!(
            "StatefulSet {} is gone or being deleted: stopped; the claims are kept (deleting a StatefulSet is never a scale-down)",
            spec.stateful_set_name
        );
        return p.end_after_pod(DrainPhase::Failed, message);
    }
    match p.s.step {
        DrainStep::DeletingPod => match ours {
            Some(pod) if !pod.deleting => {
                p.write = Some(Write::DeletePod {
                    name: pod.name.clone(),
                    uid: pod.uid.clone(),
                })
            }
            Some(_) => p.requeue = Some(Duration::from_secs(1)),
            None => {
                let phase = p.s.ending.take().unwrap_or(DrainPhase::Failed);
                let message = p.s.message.clone().unwrap_or_default();
                p.finish(phase, message);
            }
        },
        DrainStep::DeletingClaims => {
            let left: Vec<ClaimRef> = spec
                .claims
                .iter()
                .filter(|c| claims.get(&c.name) == Some(&c.uid))
                .cloned()
                .collect();
            if left.is_empty() {
                let names: Vec<&str> = spec.claims.iter().map(|c| c.name.as_str()).collect();
                let message = format!(
                    "drained ordinal {}; claims deleted: {}",
                    spec.ordinal,
                    names.join(", ")
                );
                p.end_after_pod(DrainPhase::Succeeded, message);
            } else {
                p.write = Some(Write::DeleteClaims(left));
            }
        }
        DrainStep::Draining => {
            if let Some(set) = set {
                draining(p, set, pod, ours);
            }
        }
        DrainStep::Unknown => {}
    }
}

fn draining(p: &mut Pass<'_>, set: &SetView, pod: Option<&PodView>, ours: Option<&PodView>) {
    let spec = &p.drain.spec;
    let back = set.in_range(spec.ordinal);
    if back && set.abortable {
        let message = format!(
            "StatefulSet {} brought ordinal {} back (a scale-up) and its drain is abortable: aborted; the claims are kept for the returning pod",
            set.name, spec.ordinal
        );
        return p.end_after_pod(DrainPhase::Aborted, message);
    }
    let attempt = p.s.attempts;
    match ours {
        Some(pod) if pod.attempt != Some(attempt) => {
            // An earlier attempt's pod, still going.
            if !pod.deleting {
                p.write = Some(Write::DeletePod {
                    name: pod.name.clone(),
                    uid: pod.uid.clone(),
                });
            }
            p.requeue = Some(Duration::from_secs(1));
        }
        Some(pod) => match pod.phase.as_deref() {
            Some("Succeeded") => {
                p.events.push(Event::normal(
                    "DrainPodSucceeded",
                    format!("drain pod {} (attempt {attempt}) succeeded", pod.name),
                ));
                if set.delete_claims {
                    p.s.step = DrainStep::DeletingClaims;
                    p.s.message = Some(format!(
                        "drain pod {} succeeded; deleting the claims",
                        pod.name
                    ));
                } else {
                    let message = format!(
                        "drained ordinal {}; claims retained ({} is Retain)",
                        spec.ordinal,
                        relaunch_api::ANNOTATION_DRAIN_CLAIM_POLICY
                    );
                    p.end_after_pod(DrainPhase::Succeeded, message);
                }
            }
            Some("Failed") if p.s.last_attempt_end.is_none() => {
                p.s.last_attempt_end = Some(Time(p.now));
                p.s.pod_uid = None;
                let message = format!(
                    "drain pod {} failed (attempt {attempt} of {DRAIN_ATTEMPTS})",
                    pod.name
                );
                if attempt >= DRAIN_ATTEMPTS {
                    let message = format!("{message}; giving up: the claims are kept");
                    let now = p.now;
                    set_condition(
                        &mut p.s.conditions,
                        DRAIN_FAILED,
                        true,
                        "AttemptsExhausted",
                        &message,
                        now,
                    );
                    p.end_after_pod(DrainPhase::Failed, message);
                } else {
                    p.events
                        .push(Event::warning("DrainPodFailed", message.clone()));
                    p.s.message = Some(message);
                }
            }
            Some("Failed") => {
                // Recorded: out of the way of the next attempt (and of the StatefulSet).
                if !pod.deleting {
                    p.write = Some(Write::DeletePod {
                        name: pod.name.clone(),
                        uid: pod.uid.clone(),
                    });
                }
                p.requeue = Some(Duration::from_secs(1));
            }
            _ => {
                if p.s.pod_uid.as_deref() != Some(pod.uid.as_str()) {
                    p.s.pod_uid = Some(pod.uid.clone());
                    p.s.phase = DrainPhase::Running;
                    p.s.message = Some(format!(
                        "drain pod {} runs (attempt {attempt} of {DRAIN_ATTEMPTS}){}",
                        pod.name,
                        if back {
                            "; the scale-up that brought the ordinal back waits for it"
                        } else {
                            ""
                        }
                    ));
                }
                p.requeue = Some(Duration::from_secs(5));
            }
        },
        None => {
            if let Some(other) = pod {
                // The StatefulSet's own pod (or a terminating one): not ours to touch.
                if back {
                    let message = format!(
                        "StatefulSet {} brought ordinal {} back (pod {}) before the drain ended: stopped; the claims are kept",
                        set.name, spec.ordinal, other.name
                    );
                    p.finish(DrainPhase::Aborted, message);
                } else {
                    p.requeue = Some(Duration::from_secs(1));
                }
                return;
            }
            if attempt > 0 && p.s.last_attempt_end.is_none() && p.s.pod_uid.is_some() {
                // Recorded as running, now gone (evicted, deleted): a failed attempt.
                p.s.last_attempt_end = Some(Time(p.now));
                p.s.pod_uid = None;
                p.s.message = Some(format!(
                    "drain pod of attempt {attempt} disappeared before it ended"
                ));
                if attempt >= DRAIN_ATTEMPTS {
                    let message = format!(
                        "drain pod of attempt {attempt} of {DRAIN_ATTEMPTS} disappeared; giving up: the claims are kept"
                    );
                    let now = p.now;
                    set_condition(
                        &mut p.s.conditions,
                        DRAIN_FAILED,
                        true,
                        "AttemptsExhausted",
                        &message,
                        now,
                    );
                    p.finish(DrainPhase::Failed, message);
                }
                return;
            }
            if back {
                let message = format!(
                    "StatefulSet {} brought ordinal {} back between drain attempts: stopped; the claims are kept",
                    set.name, spec.ordinal
                );
                return p.finish(DrainPhase::Aborted, message);
            }
            if attempt > 0 && p.s.last_attempt_end.is_none() {
                // Attempt recorded, its pod not created yet (or not in the cache yet).
                match &set.template {
                    Ok(template) => {
                        p.write = Some(Write::CreatePod(Box::new(drain_pod(
                            p.drain, set, template, attempt,
                        ))));
                    }
                    Err(e) => p.s.message = Some(e.clone()),
                }
                p.requeue = Some(Duration::from_secs(1));
                return;
            }
            if attempt >= DRAIN_ATTEMPTS {
                return p.finish(
                    DrainPhase::Failed,
                    format!("{DRAIN_ATTEMPTS} attempts failed; the claims are kept"),
                );
            }
            if let Some(end) = &p.s.last_attempt_end {
                let factor = 1u32 << u32::try_from(attempt.clamp(1, 8) - 1).unwrap_or(0);
                let wait = BACKOFF.saturating_mul(factor);
                let waited = Duration::try_from(p.now.duration_since(end.0)).unwrap_or_default();
                if waited < wait {
                    p.requeue = Some(wait.saturating_sub(waited));
                    return;
                }
            }
            // Record the attempt first; its pod comes on the next pass.
            p.s.phase = DrainPhase::Running;
            p.s.attempts = attempt.saturating_add(1);
            p.s.last_attempt_end = None;
            p.s.pod_uid = None;
            let message = format!(
                "ordinal {} of StatefulSet {} was removed without a ScaleDown: starting drain pod {} (attempt {} of {DRAIN_ATTEMPTS})",
                spec.ordinal,
                set.name,
                set.pod_name(spec.ordinal),
                p.s.attempts
            );
            p.events
                .push(Event::normal("DrainStarted", message.clone()));
            p.s.message = Some(message);
        }
    }
}

/// The drain pod of `attempt`: the template's spec with `restartPolicy: Never`, the ordinal's
/// claims mounted under their template names, the pod's StatefulSet identity (name, hostname,
/// subdomain) and environment; only relaunch's labels, so that the StatefulSet cannot adopt it.
pub fn drain_pod(drain: &Drain, set: &SetView, template: &Pod, attempt: i32) -> Pod {
    let spec = &drain.spec;
    let pod_name = set.pod_name(spec.ordinal);
    let mut pod_spec = template.spec.clone().unwrap_or_default();
    pod_spec.restart_policy = Some("Never".into());
    pod_spec.node_name = None;
    pod_spec.hostname = Some(pod_name.clone());
    pod_spec.subdomain = set.service_name.clone();
    let mut volumes = pod_spec.volumes.take().unwrap_or_default();
    for t in &set.claim_templates {
        let claim = format!("{t}-{}-{}", set.name, spec.ordinal);
        if !spec.claims.iter().any(|c| c.name == claim) {
            continue;
        }
        volumes.retain(|v| &v.name != t);
        volumes.push(Volume {
            name: t.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim,
                read_only: None,
            }),
            ..Default::default()
        });
    }
    pod_spec.volumes = Some(volumes);
    let remaining: Vec<String> = (set.start..set.start.saturating_add(set.replicas))
        .map(|o| set.pod_name(o))
        .collect();
    let env = [
        (ENV_ORDINAL, spec.ordinal.to_string()),
        (ENV_POD_NAME, pod_name.clone()),
        (ENV_STATEFULSET, set.name.clone()),
        (ENV_NAMESPACE, set.namespace.clone()),
        (ENV_SERVICE, set.service_name.clone().unwrap_or_default()),
        (ENV_REMAINING, remaining.join(" ")),
        (ENV_REPLICAS_AFTER, set.replicas.to_string()),
    ];
    for c in &mut pod_spec.containers {
        let vars = c.env.get_or_insert_with(Vec::new);
        vars.retain(|v| !env.iter().any(|(k, _)| v.name == *k));
        vars.extend(env.iter().map(|(k, v)| EnvVar {
            name: (*k).to_string(),
            value: Some(v.clone()),
            value_from: None,
        }));
    }
    let labels = BTreeMap::from([
        (LABEL_DRAIN.to_string(), drain.name_any()),
        (LABEL_DRAIN_ATTEMPT.to_string(), attempt.to_string()),
    ]);
    let owner = drain
        .controller_owner_ref(&())
        .map(|mut o: OwnerReference| {
            o.controller = Some(false);
            o.block_owner_deletion = Some(false);
            o
        });
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name),
            namespace: Some(set.namespace.clone()),
            labels: Some(labels),
            annotations: template.metadata.annotations.clone(),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaunch_api::DrainStatus;

    fn template() -> Pod {
        serde_yaml::from_str(
            r#"
metadata:
  labels: {app: store}
spec:
  nodeSelector: {disk: ssd}
  restartPolicy: OnFailure
  containers:
    - name: drain
      image: busybox
      volumeMounts: [{name: data, mountPath: /data}]
"#,
        )
        .unwrap()
    }

    fn set(replicas: i32) -> SetView {
        SetView {
            name: "store".into(),
            namespace: "default".into(),
            uid: "sts-uid".into(),
            replicas,
            start: 0,
            service_name: Some("store".into()),
            claim_templates: vec!["data".into()],
            template: Ok(template()),
            abortable: false,
            delete_claims: true,
            deletes_claims_when_scaled: false,
            deleting: false,
        }
    }

    fn claim(o: i32) -> ClaimView {
        ClaimView {
            name: format!("data-store-{o}"),
            uid: format!("c{o}"),
            going: false,
        }
    }

    #[test]
    fn only_ordinals_out_of_range_with_no_pod_and_no_record_are_orphans() {
        let claims: Vec<ClaimView> = (0..4).map(claim).collect();
        let mut pods = BTreeMap::new();
        let none = BTreeSet::new();
        let found = orphans(&set(2), &claims, &pods, &none, &none);
        assert_eq!(
            found.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(found[0].1[0].uid, "c2");
        // A pod of that name (the StatefulSet's, terminating): not yet.
        pods.insert("store-3".to_string(), PodView::default());
        let found = orphans(&set(2), &claims, &pods, &none, &none);
        assert_eq!(found.len(), 1);
        // Recorded already, or removed by a ScaleDown.
        let c2 = BTreeSet::from(["c2".to_string()]);
        assert!(orphans(&set(2), &claims, &pods, &c2, &none).is_empty());
        assert!(orphans(&set(2), &claims, &pods, &none, &c2).is_empty());
        // The StatefulSet being deleted, whenScaled: Delete, or no usable template: none.
        let mut s = set(2);
        s.deleting = true;
        assert!(orphans(&s, &claims, &BTreeMap::new(), &none, &none).is_empty());
        let mut s = set(2);
        s.deletes_claims_when_scaled = true;
        assert!(orphans(&s, &claims, &BTreeMap::new(), &none, &none).is_empty());
        let mut s = set(2);
        s.template = Err("no".into());
        assert!(orphans(&s, &claims, &BTreeMap::new(), &none, &none).is_empty());
        // Every ordinal in range (a pod deleted by hand): none.
        assert!(orphans(&set(4), &claims, &BTreeMap::new(), &none, &none).is_empty());
        // Claims being deleted, and names that are not ordinals.
        let odd = vec![
            ClaimView {
                going: true,
                ..claim(5)
            },
            ClaimView {
                name: "data-store-07".into(),
                uid: "x".into(),
                going: false,
            },
        ];
        assert!(orphans(&set(2), &odd, &BTreeMap::new(), &none, &none).is_empty());
    }

    #[test]
    fn the_drain_pod_cannot_be_adopted_and_mounts_the_claims() {
        let s = set(2);
        let d = new_drain(
            &s,
            2,
            vec![ClaimRef {
                name: "data-store-2".into(),
                uid: "c2".into(),
            }],
        );
        let pod = drain_pod(&d, &s, &template(), 1);
        assert_eq!(pod.metadata.name.as_deref(), Some("store-2"));
        let labels = pod.metadata.labels.clone().unwrap();
        assert!(!labels.contains_key("app"), "{labels:?}");
        assert_eq!(labels[LABEL_DRAIN], d.name_any());
        let spec = pod.spec.unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.node_selector.unwrap()["disk"], "ssd");
        let volume = &spec.volumes.unwrap()[0];
        assert_eq!(volume.name, "data");
        assert_eq!(
            volume.persistent_volume_claim.as_ref().unwrap().claim_name,
            "data-store-2"
        );
        let env = spec.containers[0].env.clone().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == ENV_REMAINING && e.value.as_deref() == Some("store-0 store-1"))
        );
    }

    struct World {
        drain: Drain,
        set: Option<SetView>,
        pod: Option<PodView>,
        claims: BTreeMap<String, String>,
        now: Timestamp,
        created: Vec<Pod>,
        events: Vec<Event>,
    }

    impl World {
        fn new() -> Self {
            let s = set(2);
            let mut drain = new_drain(
                &s,
                2,
                vec![ClaimRef {
                    name: "data-store-2".into(),
                    uid: "c2".into(),
                }],
            );
            drain.metadata.uid = Some("drain-uid".into());
            World {
                drain,
                set: Some(s),
                pod: None,
                claims: BTreeMap::from([("data-store-2".into(), "c2".into())]),
                now: Timestamp::from_second(1_000_000).unwrap(),
                created: Vec::new(),
                events: Vec::new(),
            }
        }
        fn status(&self) -> DrainStatus {
            self.drain.status.clone().unwrap_or_default()
        }
        fn pass(&mut self) {
            let d = decide(
                &self.drain,
                self.set.as_ref(),
                self.pod.as_ref(),
                &self.claims,
                self.now,
            );
            if let Some(s) = d.status {
                self.drain.status = Some(s);
            }
            match d.write {
                Some(Write::CreatePod(pod)) => {
                    assert!(self.pod.is_none());
                    let labels = pod.metadata.labels.clone().unwrap();
                    self.pod = Some(PodView {
                        name: pod.name_any(),
                        uid: format!("pod-{}", self.created.len()),
                        phase: Some("Pending".into()),
                        deleting: false,
                        drain: labels.get(LABEL_DRAIN).cloned(),
                        attempt: labels.get(LABEL_DRAIN_ATTEMPT).and_then(|a| a.parse().ok()),
                    });
                    self.created.push(*pod);
                }
                Some(Write::DeletePod { uid, .. }) => {
                    assert_eq!(self.pod.as_ref().unwrap().uid, uid);
                    self.pod = None;
                }
                Some(Write::DeleteClaims(claims)) => {
                    assert!(self.pod.is_some(), "claims go before the pod");
                    for c in claims {
                        assert_eq!(self.claims.remove(&c.name), Some(c.uid));
                    }
                }
                None => {}
            }
            self.events.extend(d.events);
        }
        fn until_pod(&mut self) {
            for _ in 0..20 {
                if self.pod.is_some() {
                    return;
                }
                self.pass();
                self.now += jiff::SignedDuration::from_secs(1);
            }
            panic!("no pod: {:?}", self.status());
        }
        fn end_pod(&mut self, phase: &str) {
            self.pod.as_mut().unwrap().phase = Some(phase.into());
            for _ in 0..10 {
                self.pass();
                if self.pod.is_none() || self.status().phase.is_finished() {
                    break;
                }
            }
        }
    }

    #[test]
    fn success_deletes_the_claims_then_the_pod() {
        let mut w = World::new();
        w.until_pod();
        assert_eq!(w.status().attempts, 1);
        w.pass();
        assert_eq!(w.status().phase, DrainPhase::Running);
        w.end_pod("Succeeded");
        w.pass();
        assert_eq!(w.status().phase, DrainPhase::Succeeded, "{:?}", w.status());
        assert!(w.claims.is_empty() && w.pod.is_none());
    }

    #[test]
    fn three_failures_fail_with_the_condition_and_keep_the_claims() {
        let mut w = World::new();
        for attempt in 1..=3 {
            w.until_pod();
            assert_eq!(
                w.created.last().unwrap().metadata.labels.as_ref().unwrap()[LABEL_DRAIN_ATTEMPT],
                attempt.to_string()
            );
            w.end_pod("Failed");
            assert!(w.pod.is_none(), "a failed pod is deleted");
        }
        w.pass();
        let s = w.status();
        assert_eq!(s.phase, DrainPhase::Failed, "{s:?}");
        assert!(
            s.conditions
                .iter()
                .any(|c| c.type_ == DRAIN_FAILED && c.status == "True")
        );
        assert_eq!(w.created.len(), 3);
        assert_eq!(w.claims.len(), 1, "claims kept");
        assert!(w.events.iter().any(|e| e.reason == "DrainFailed"));
        for _ in 0..5 {
            w.pass();
        }
        assert_eq!(w.created.len(), 3, "no fourth attempt");
    }

    #[test]
    fn a_scale_up_aborts_an_abortable_drain_and_otherwise_waits_for_it() {
        let mut w = World::new();
        w.set.as_mut().unwrap().abortable = true;
        w.until_pod();
        w.set.as_mut().unwrap().replicas = 3;
        for _ in 0..3 {
            w.pass();
        }
        assert_eq!(w.status().phase, DrainPhase::Aborted);
        assert!(w.pod.is_none() && w.claims.len() == 1);

        let mut w = World::new();
        w.until_pod();
        w.set.as_mut().unwrap().replicas = 3;
        w.pass();
        assert_eq!(w.status().phase, DrainPhase::Running);
        assert!(w.status().message.unwrap().contains("waits for it"));
        w.end_pod("Succeeded");
        w.pass();
        assert_eq!(w.status().phase, DrainPhase::Succeeded);
    }

    #[test]
    fn the_statefulset_deleted_stops_the_drain_and_keeps_the_claims() {
        let mut w = World::new();
        w.until_pod();
        w.set = None;
        for _ in 0..3 {
            w.pass();
        }
        assert_eq!(w.status().phase, DrainPhase::Failed);
        assert!(w.pod.is_none());
        assert_eq!(w.claims.len(), 1);
    }
}
