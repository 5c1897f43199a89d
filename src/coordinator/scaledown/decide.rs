//! The ScaleDown decision, in pure code: from the ScaleDown, its StatefulSet, the pods and
//! claims as observed, what to write next (status, with Events) or which one write to make to
//! the StatefulSet or a claim. Each pass makes at most one change, so a crash between two
//! changes resumes from what status and the cluster show:
//!
//! - the leaving pod (ordinal, UID, claims) is recorded in status together with the first
//!   command, before any command runs (the agent acts only on `status.exec`);
//! - `spec.replicas` is lowered only from `status.expectedReplicas`, after the step `Lowering`
//!   is recorded; a replicas value one below it in that step is our own write;
//! - claims are deleted (UID precondition) only after the pod's UID is gone.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use relaunch_api::{
    ClaimPolicy, ClaimRef, Condition, ENV_NAMESPACE, ENV_ORDINAL, ENV_POD_NAME, ENV_REMAINING,
    ENV_REPLICAS_AFTER, ENV_SERVICE, ENV_STATEFULSET, ExecAction, ExecPurpose, ExecTask,
    LeavingPod, LeavingStep, MAX_EXEC_OUTPUT_CHARS, SCALEDOWN_BLOCKED, SCALEDOWN_DECOMMISSIONING,
    SCALEDOWN_STALLED, SCALEDOWN_WAITING_FOR_POD_GONE, STATUS_IN_PROGRESS_EXIT_CODE, ScaleDown,
    ScaleDownPhase, ScaleDownStatus, tail_chars, validate_scaledown,
};

use crate::events::Event;
use crate::exec_policy::ExecPolicy;

/// What the controller knows of the StatefulSet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatefulSetView {
    pub replicas: i32,
    /// `spec.ordinals.start`.
    pub start: i32,
    pub service_name: Option<String>,
    /// Names of the volumeClaimTemplates.
    pub claim_templates: Vec<String>,
    /// `persistentVolumeClaimRetentionPolicy.whenScaled == Delete`.
    pub deletes_claims_when_scaled: bool,
    pub deleting: bool,
}

/// What the controller knows of one pod of the StatefulSet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodView {
    pub name: String,
    pub uid: String,
    pub node: Option<String>,
    pub running: bool,
    pub ready: bool,
    pub deleting: bool,
    pub first_container: Option<String>,
}

/// Everything one decision is taken on.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub scaledown: &'a ScaleDown,
    pub statefulset: Option<StatefulSetView>,
    /// The StatefulSet's pods by ordinal.
    pub pods: BTreeMap<i32, PodView>,
    /// The namespace's claims: name -> UID.
    pub claims: BTreeMap<String, String>,
    /// Whether exec actions are authorized by the shipped admission policies (None: not read
    /// yet); a ScaleDown's commands are exec actions.
    pub exec_policy: Option<ExecPolicy>,
    pub now: Timestamp,
}

/// The one write a pass makes besides status.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Lower the StatefulSet's `spec.replicas` from `from` to `to`, only at the version read.
    Lower { from: i32, to: i32 },
    /// Delete these claims, each only if it still has its UID.
    DeleteClaims(Vec<ClaimRef>),
    /// Delete this pod, only if it still has this UID (a scale-up kept its ordinal: the
    /// StatefulSet recreates it).
    DeletePod { name: String, uid: String },
}

/// What a pass does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    /// The new status, when it differs from the one read.
    pub status: Option<ScaleDownStatus>,
    /// Or a write to the StatefulSet or claims (never both in one pass).
    pub write: Option<Write>,
    pub events: Vec<Event>,
    /// When to look again at the latest (a status command due, a stall to notice).
    pub requeue: Option<Duration>,
}

/// Sets condition `type_` (the transition time moves only when the status changes).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    on: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let status = if on { "True" } else { "False" };
    let time = Some(Time(now));
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = time;
            }
            c.status = status.into();
            c.reason = Some(reason.into());
            c.message = Some(message.into());
        }
        None => {
            if !on {
                return;
            }
            conditions.push(Condition {
                type_: type_.into(),
                status: status.into(),
                reason: Some(reason.into()),
                message: Some(message.into()),
                last_transition_time: time,
                observed_generation: None,
            })
        }
    }
}

fn purpose_word(p: ExecPurpose) -> &'static str {
    match p {
        ExecPurpose::Precheck => "precheck",
        ExecPurpose::Decommission => "decommission",
        ExecPurpose::StatusCheck => "status",
        ExecPurpose::Cancel => "cancel",
        ExecPurpose::Unknown => "unknown",
    }
}

/// How a command's result reads in a message.
fn described_result(task: &ExecTask) -> String {
    let what = purpose_word(task.purpose);
    match &task.result {
        Some(r) => {
            let output = r.output.trim();
            let code = match r.exit_code {
                Some(c) => format!("exited with code {c}"),
                None => "could not run".to_string(),
            };
            if output.is_empty() {
                format!("the {what} command in pod {} {code}", task.pod_name)
            } else {
                format!(
                    "the {what} command in pod {} {code}: {output}",
                    task.pod_name
                )
            }
        }
        None => format!(
            "the {what} command in pod {} has not finished",
            task.pod_name
        ),
    }
}

struct Pass<'a> {
    o: &'a Observed<'a>,
    s: ScaleDownStatus,
    events: Vec<Event>,
    requeue: Option<Duration>,
    write: Option<Write>,
}

impl Pass<'_> {
    fn now(&self) -> Timestamp {
        self.o.now
    }

    fn name(&self) -> &str {
        &self.o.scaledown.spec.stateful_set_name
    }

    fn requeue_in(&mut self, d: Duration) {
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }

    fn finish(&mut self, phase: ScaleDownPhase, message: String) {
        let now = self.now();
        self.s.phase = phase;
        self.s.completion_time = Some(Time(now));
        self.s.exec = None;
        for type_ in [
            SCALEDOWN_DECOMMISSIONING,
            SCALEDOWN_STALLED,
            SCALEDOWN_WAITING_FOR_POD_GONE,
        ] {
            set_condition(
                &mut self.s.conditions,
                type_,
                false,
                "Finished",
                &message,
                now,
            );
        }
        let event = match phase {
            ScaleDownPhase::Succeeded => Event::normal("ScaleDownSucceeded", message.clone()),
            ScaleDownPhase::Cancelled => Event::normal("ScaleDownCancelled", message.clone()),
            _ => Event::warning("ScaleDownFailed", message.clone()),
        };
        self.events.push(event);
        self.s.message = Some(message);
    }

    fn fail(&mut self, message: String) {
        self.finish(ScaleDownPhase::Failed, message);
    }

    fn block(&mut self, reason: &str, message: String) {
        let now = self.now();
        set_condition(
            &mut self.s.conditions,
            SCALEDOWN_BLOCKED,
            true,
            reason,
            &message,
            now,
        );
        self.fail(message);
    }

    fn say(&mut self, message: String) {
        self.s.message = Some(message);
    }

    /// A new command for the agent on `pod`'s node, in the name of the leaving `ordinal`.
    fn task(&mut self, purpose: ExecPurpose, action: &ExecAction, pod: &PodView, ordinal: i32) {
        let sd = self.o.scaledown;
        let sts = self.o.statefulset.clone().unwrap_or_default();
        self.s.exec_sequence = self.s.exec_sequence.saturating_add(1);
        let id = format!(
            "{}-{}-{ordinal}",
            self.s.exec_sequence,
            purpose_word(purpose)
        );
        let remaining: Vec<String> = (sts.start..ordinal)
            .map(|o| format!("{}-{o}", self.name()))
            .collect();
        let mut command = vec![
            "env".to_string(),
            format!("{ENV_ORDINAL}={ordinal}"),
            format!("{ENV_POD_NAME}={}-{ordinal}", self.name()),
            format!("{ENV_STATEFULSET}={}", self.name()),
            format!("{ENV_NAMESPACE}={}", sd.namespace().unwrap_or_default()),
            format!("{ENV_SERVICE}={}", sts.service_name.unwrap_or_default()),
            format!("{ENV_REMAINING}={}", remaining.join(" ")),
            format!("{ENV_REPLICAS_AFTER}={}", ordinal.saturating_sub(sts.start)),
        ];
        command.extend(action.command.iter().cloned());
        let container = sd
            .spec
            .container
            .clone()
            .or_else(|| pod.first_container.clone())
            .unwrap_or_default();
        self.s.exec = Some(ExecTask {
            id,
            purpose,
            pod_name: pod.name.clone(),
            pod_uid: pod.uid.clone(),
            node_name: pod.node.clone().unwrap_or_default(),
            container,
            command,
            timeout_seconds: sd.spec.timeout_seconds(),
            requested_time: Some(Time(self.now())),
            result: None,
        });
    }

    fn since(&self, t: Option<&Time>) -> Duration {
        t.map(|t| self.now().duration_since(t.0))
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default()
    }

    /// Notices a stall: no progress for the stall timeout (a condition and an Event, once).
    fn check_stall(&mut self) {
        let pod = self
            .s
            .current
            .as_ref()
            .map(|c| c.pod_name.clone())
            .unwrap_or_default();
        let progress = self.s.progress.clone();
        self.check_stall_with(|quiet| {
            format!(
                "no progress from pod {pod} for {quiet}s (last progress: {}); still waiting",
                progress.as_deref().unwrap_or("none")
            )
        });
    }

    /// [`Self::check_stall`] with its own message (given the seconds without progress).
    fn check_stall_with(&mut self, describe: impl FnOnce(u64) -> String) {
        let stall = Duration::from_secs(
            u64::try_from(self.o.scaledown.spec.stall_timeout_seconds()).unwrap_or(600),
        );
        let quiet = self.since(self.s.last_progress_time.as_ref());
        if quiet >= stall {
            if !self.s.is_true(SCALEDOWN_STALLED) {
                let message = describe(quiet.as_secs());
                let now = self.now();
                set_condition(
                    &mut self.s.conditions,
                    SCALEDOWN_STALLED,
                    true,
                    "NoProgress",
                    &message,
                    now,
                );
                self.events
                    .push(Event::warning("ScaleDownStalled", message));
            }
        } else {
            self.requeue_in(stall.saturating_sub(quiet));
        }
    }

    fn progressed(&mut self, progress: Option<String>) {
        let now = self.now();
        self.s.last_progress_time = Some(Time(now));
        if progress.is_some() {
            self.s.progress = progress;
        }
        if self.s.is_true(SCALEDOWN_STALLED) {
            set_condition(
                &mut self.s.conditions,
                SCALEDOWN_STALLED,
                false,
                "Progressing",
                "progress resumed",
                now,
            );
        }
    }
}

/// Decides the next change for one ScaleDown.
pub fn decide(o: &Observed<'_>) -> Decision {
    let old = o.scaledown.status.clone().unwrap_or_default();
    if old.phase.is_finished() || old.phase == ScaleDownPhase::Unknown {
        return Decision::default();
    }
    let mut pass = Pass {
        o,
        s: old.clone(),
        events: Vec::new(),
        requeue: None,
        write: None,
    };
    step(&mut pass);
    let Pass {
        s,
        events,
        requeue,
        write,
        ..
    } = pass;
    Decision {
        status: (s != old).then_some(s),
        write,
        events,
        requeue,
    }
}

fn step(p: &mut Pass<'_>) {
    let spec = &p.o.scaledown.spec;
    p.s.observed_generation = p.o.scaledown.metadata.generation;
    if p.s.start_time.is_none() {
        p.s.start_time = Some(Time(p.now()));
    }
    if let Err(e) = validate_scaledown(spec) {
        return p.block("Invalid", format!("invalid: {e}; nothing was done"));
    }
    let name = p.name().to_string();
    let Some(sts) = p.o.statefulset.clone().filter(|s| !s.deleting) else {
        if p.s.expected_replicas.is_some() {
            return p.fail(format!(
                "StatefulSet {name} is gone or being deleted; stopped (deleting a StatefulSet is never a scale-down: nothing was drained or deleted)"
            ));
        }
        p.say(format!("waiting for StatefulSet {name} to exist"));
        p.requeue_in(Duration::from_secs(5));
        return;
    };
    if sts.deletes_claims_when_scaled {
        return p.block(
            "IncompatibleRetentionPolicy",
            format!(
                "StatefulSet {name} has persistentVolumeClaimRetentionPolicy.whenScaled: Delete, which deletes each removed pod's claims by itself; that is incompatible with a decommission (set it to Retain and use claimPolicy: Delete); nothing was done"
            ),
        );
    }
    let Some(expected) = p.s.expected_replicas else {
        // Fail closed: its commands run in pods, which only the shipped admission policy
        // authorizes like `kubectl exec`; checked before anything is done.
        match &p.o.exec_policy {
            None => {
                p.say("waiting for the coordinator to read the admission policies".into());
                p.requeue_in(Duration::from_secs(1));
                return;
            }
            Some(ExecPolicy::Missing(message)) => {
                return p.fail(format!("{message}; nothing was done"));
            }
            Some(ExecPolicy::Enforced) => {}
        }
        p.s.phase = ScaleDownPhase::Running;
        p.s.initial_replicas = Some(sts.replicas);
        p.s.expected_replicas = Some(sts.replicas);
        p.s.last_progress_time = Some(Time(p.now()));
        p.say(format!(
            "scaling StatefulSet {name} from {} to {} replicas",
            sts.replicas, spec.replicas
        ));
        return;
    };
    match p.s.current.clone() {
        None => between_ordinals(p, &sts, expected),
        Some(current) => leaving(p, &sts, expected, current),
    }
}

/// No pod is leaving: finish, or pick the next ordinal (after the precheck).
fn between_ordinals(p: &mut Pass<'_>, sts: &StatefulSetView, expected: i32) {
    let spec = &p.o.scaledown.spec;
    let name = p.name().to_string();
    if sts.replicas != expected {
        return p.block(
            "ReplicasChanged",
            format!(
                "StatefulSet {name}'s replicas changed from {expected} to {} outside relaunch; stopped, nothing more is lowered",
                sts.replicas
            ),
        );
    }
    if expected <= spec.replicas {
        let initial = p.s.initial_replicas.unwrap_or(expected);
        let message = if initial == expected {
            format!("StatefulSet {name} already has {expected} replicas; nothing to do")
        } else {
            format!("scaled StatefulSet {name} from {initial} to {expected} replicas")
        };
        return p.finish(ScaleDownPhase::Succeeded, message);
    }
    let ordinal = sts.start.saturating_add(expected).saturating_sub(1);
    if let Some(precheck) = &spec.precheck {
        let done = p.s.exec.as_ref().filter(|t| {
            t.purpose == ExecPurpose::Precheck && t.id.ends_with(&format!("-{ordinal}"))
        });
        match done.cloned() {
            Some(task) => match &task.result {
                None => {
                    p.check_stall();
                    return;
                }
                Some(r) if r.succeeded() => {}
                Some(_) => {
                    return p.block(
                        "PrecheckFailed",
                        format!(
                            "precheck before removing {name}-{ordinal} failed, nothing was changed: {}",
                            described_result(&task)
                        ),
                    );
                }
            },
            None => {
                let member =
                    p.o.pods
                        .range(sts.start..ordinal)
                        .map(|(_, pod)| pod)
                        .find(|pod| pod.ready && pod.running && !pod.deleting && pod.node.is_some())
                        .cloned();
                let Some(member) = member else {
                    p.say(format!(
                        "waiting for a ready member below ordinal {ordinal} to run the precheck in"
                    ));
                    p.requeue_in(Duration::from_secs(5));
                    return;
                };
                p.task(ExecPurpose::Precheck, precheck, &member, ordinal);
                p.say(format!("running the precheck in pod {}", member.name));
                return;
            }
        }
    }
    // Record the intent (pod, UID, claims) with the first command, before anything runs.
    let Some(pod) =
        p.o.pods
            .get(&ordinal)
            .filter(|pod| pod.running && pod.ready && !pod.deleting && pod.node.is_some())
            .cloned()
    else {
        // Ready: a member that has not started serving has not taken its data in either.
        p.say(format!(
            "waiting for pod {name}-{ordinal} to run and be ready"
        ));
        p.requeue_in(Duration::from_secs(5));
        return;
    };
    let claims = sts
        .claim_templates
        .iter()
        .filter_map(|t| {
            let claim = format!("{t}-{name}-{ordinal}");
            p.o.claims.get(&claim).map(|uid| ClaimRef {
                name: claim,
                uid: uid.clone(),
            })
        })
        .collect();
    let now = p.now();
    p.s.current = Some(LeavingPod {
        ordinal,
        pod_name: pod.name.clone(),
        pod_uid: pod.uid.clone(),
        node_name: pod.node.clone(),
        claims,
        step: LeavingStep::Decommissioning,
        decommissioned: false,
        start_time: Some(Time(now)),
    });
    p.s.progress = None;
    p.s.last_progress_time = Some(Time(now));
    let message = format!("running the decommission command in pod {}", pod.name);
    set_condition(
        &mut p.s.conditions,
        SCALEDOWN_BLOCKED,
        false,
        "Running",
        &message,
        now,
    );
    set_condition(
        &mut p.s.conditions,
        SCALEDOWN_DECOMMISSIONING,
        true,
        "Decommissioning",
        &message,
        now,
    );
    p.events
        .push(Event::normal("Decommissioning", message.clone()));
    p.say(message);
    let decommission = spec.decommission.clone();
    p.task(ExecPurpose::Decommission, &decommission, &pod, ordinal);
}

fn leaving(p: &mut Pass<'_>, sts: &StatefulSetView, expected: i32, mut cur: LeavingPod) {
    let spec = &p.o.scaledown.spec;
    let now = p.now();
    match cur.step {
        LeavingStep::Decommissioning => {
            // A scale-up: the target (or someone, through the StatefulSet) keeps this ordinal.
            let keeps = sts.start.saturating_add(spec.replicas) > cur.ordinal;
            let raised = sts.replicas > expected;
            if keeps || raised {
                let why = if raised {
                    format!(
                        "StatefulSet {}'s replicas were raised to {}",
                        p.name(),
                        sts.replicas
                    )
                } else {
                    format!("spec.replicas was raised to {}", spec.replicas)
                };
                if let Some(cancel) = spec.cancel.clone() {
                    let Some(pod) =
                        p.o.pods
                            .get(&cur.ordinal)
                            .filter(|pod| pod.uid == cur.pod_uid)
                            .cloned()
                    else {
                        return p.finish(ScaleDownPhase::Cancelled, format!("{why} while pod {} was leaving; the pod is gone, nothing to cancel in", cur.pod_name));
                    };
                    cur.step = LeavingStep::Cancelling;
                    p.s.current = Some(cur.clone());
                    let message = format!(
                        "{why} while pod {} was leaving: running the cancel command",
                        cur.pod_name
                    );
                    p.events
                        .push(Event::normal("ScaleUpWhileLeaving", message.clone()));
                    p.say(message);
                    p.task(ExecPurpose::Cancel, &cancel, &pod, cur.ordinal);
                    return;
                }
                let note = format!(
                    "{why} while pod {} was leaving; there is no cancel command, so it finishes leaving first, then comes back",
                    cur.pod_name
                );
                if p.s.message.as_deref() != Some(note.as_str()) {
                    p.events
                        .push(Event::normal("ScaleUpWhileLeaving", note.clone()));
                    p.say(note);
                }
            }
            decommissioning(p, cur, keeps || raised)
        }
        LeavingStep::Cancelling => {
            let Some(task) = p.s.exec.clone() else {
                return p.finish(
                    ScaleDownPhase::Cancelled,
                    format!("cancelled while pod {} was leaving", cur.pod_name),
                );
            };
            match &task.result {
                None => p.check_stall(),
                Some(r) if r.succeeded() => p.finish(
                    ScaleDownPhase::Cancelled,
                    format!("a scale-up arrived while pod {} was leaving: the cancel command ran; the pod stays", cur.pod_name),
                ),
                Some(_) => p.fail(format!(
                    "a scale-up arrived while pod {} was leaving and the cancel command failed (the pod stays; its decommission may be partly done): {}",
                    cur.pod_name,
                    described_result(&task)
                )),
            }
        }
        LeavingStep::Lowering => {
            if sts.replicas > expected {
                // Raised after the decommission: the ordinal stays; it comes back.
                let message = format!(
                    "StatefulSet {}'s replicas were raised to {} after pod {} was decommissioned; it comes back instead of being removed",
                    p.name(),
                    sts.replicas,
                    cur.pod_name
                );
                p.events
                    .push(Event::normal("ScaleUpWhileLeaving", message.clone()));
                p.say(message);
                cur.step = LeavingStep::Returning;
                p.s.last_progress_time = Some(Time(now));
                p.s.current = Some(cur);
            } else if sts.replicas == expected {
                p.write = Some(Write::Lower {
                    from: expected,
                    to: expected.saturating_sub(1),
                });
            } else if sts.replicas == expected.saturating_sub(1) {
                // Our write landed (perhaps before a crash).
                let to = expected.saturating_sub(1);
                p.s.expected_replicas = Some(to);
                cur.step = LeavingStep::WaitingForPodGone;
                let message = format!(
                    "lowered StatefulSet {}'s replicas to {to}; waiting for pod {} to be gone",
                    p.name(),
                    cur.pod_name
                );
                set_condition(
                    &mut p.s.conditions,
                    SCALEDOWN_WAITING_FOR_POD_GONE,
                    true,
                    "WaitingForPodGone",
                    &message,
                    now,
                );
                p.events
                    .push(Event::normal("ReplicasLowered", message.clone()));
                p.say(message);
                p.s.last_progress_time = Some(Time(now));
                p.s.current = Some(cur);
            } else {
                p.block("ReplicasChanged", format!(
                    "StatefulSet {}'s replicas changed from {expected} to {} outside relaunch after pod {} was decommissioned; not lowered (the decommissioned member may need a scale-down by hand)",
                    p.name(), sts.replicas, cur.pod_name
                ));
            }
        }
        LeavingStep::WaitingForPodGone => {
            let still_there =
                p.o.pods
                    .get(&cur.ordinal)
                    .is_some_and(|pod| pod.uid == cur.pod_uid);
            if still_there {
                // Reported, never a failure: the pod may wait for a node, a finalizer, its
                // grace period; its ordinal is out of range and it is already decommissioned.
                let pod = cur.pod_name.clone();
                p.check_stall_with(|quiet| format!(
                    "pod {pod} is still there {quiet}s after replicas were lowered (a finalizer, a long grace period, an unreachable node?); still waiting"
                ));
                p.requeue_in(Duration::from_secs(5));
                return;
            }
            p.progressed(None);
            cur.step = LeavingStep::Claims;
            let message = format!("pod {} is gone", cur.pod_name);
            set_condition(
                &mut p.s.conditions,
                SCALEDOWN_WAITING_FOR_POD_GONE,
                false,
                "PodGone",
                &message,
                now,
            );
            p.say(message);
            p.s.current = Some(cur);
        }
        LeavingStep::Claims => {
            let policy = spec.claim_policy();
            if policy == ClaimPolicy::Delete {
                let left: Vec<ClaimRef> = cur
                    .claims
                    .iter()
                    .filter(|c| p.o.claims.get(&c.name) == Some(&c.uid))
                    .cloned()
                    .collect();
                if !left.is_empty() {
                    p.write = Some(Write::DeleteClaims(left));
                    return;
                }
            }
            let claims: Vec<&str> = cur.claims.iter().map(|c| c.name.as_str()).collect();
            let what = match (policy, claims.is_empty()) {
                (_, true) => "it had no claims".to_string(),
                (ClaimPolicy::Retain, false) => format!("claims retained: {}", claims.join(", ")),
                (ClaimPolicy::Delete, false) => format!("claims deleted: {}", claims.join(", ")),
            };
            let message = format!(
                "removed pod {} (ordinal {}); {what}",
                cur.pod_name, cur.ordinal
            );
            p.events
                .push(Event::normal("OrdinalRemoved", message.clone()));
            if p.s.removed.len() < relaunch_api::MAX_SCALEDOWN_STEPS {
                p.s.removed.push(cur.ordinal);
                p.s.removed_claims.extend(cur.claims.iter().cloned());
            }
            p.s.current = None;
            p.s.exec = None;
            p.s.progress = None;
            p.say(message);
        }
        LeavingStep::Returning => returning(p, cur),
        LeavingStep::Unknown => {}
    }
}

/// A scale-up kept the ordinal of a pod that finished leaving (no cancel command): its claims
/// go first (`claimPolicy: Delete`; they stay until the pod is gone, and the StatefulSet
/// creates no pod on a claim being deleted), then the pod (UID precondition); the StatefulSet
/// recreates it. Ends `Cancelled`: the scale-down did not happen.
fn returning(p: &mut Pass<'_>, cur: LeavingPod) {
    let policy = p.o.scaledown.spec.claim_policy();
    if policy == ClaimPolicy::Delete {
        let left: Vec<ClaimRef> = cur
            .claims
            .iter()
            .filter(|c| p.o.claims.get(&c.name) == Some(&c.uid))
            .cloned()
            .collect();
        if !left.is_empty() {
            p.write = Some(Write::DeleteClaims(left));
            return;
        }
    }
    match p
        .o
        .pods
        .get(&cur.ordinal)
        .filter(|pod| pod.uid == cur.pod_uid)
    {
        Some(pod) if !pod.deleting => {
            p.write = Some(Write::DeletePod {
                name: pod.name.clone(),
                uid: pod.uid.clone(),
            });
        }
        Some(_) => {
            let pod = cur.pod_name.clone();
            p.check_stall_with(|quiet| {
                format!("pod {pod} is still terminating after {quiet}s; still waiting")
            });
            p.requeue_in(Duration::from_secs(2));
        }
        None => {
            let volume = match policy {
                ClaimPolicy::Delete => {
                    "its claims were deleted: it comes back on a new, empty volume"
                }
                ClaimPolicy::Retain => {
                    "its claims were retained: it comes back on its old volume (use claimPolicy: Delete if the application cannot rejoin with it)"
                }
            };
            p.finish(
                ScaleDownPhase::Cancelled,
                format!(
                    "a scale-up kept ordinal {} while pod {} was leaving and there is no cancel command: it finished leaving (decommissioned) and was deleted, so the StatefulSet recreates it; {volume}",
                    cur.ordinal, cur.pod_name
                ),
            );
        }
    }
}

/// The decommission (and status) commands of the leaving pod.
fn decommissioning(p: &mut Pass<'_>, mut cur: LeavingPod, stays: bool) {
    let spec = p.o.scaledown.spec.clone();
    let now = p.now();
    // The pod was replaced (a restart, an eviction): its data is on the same claims; the
    // command runs again in the new pod (commands are idempotent).
    let pod = p.o.pods.get(&cur.ordinal).cloned();
    let Some(pod) = pod.filter(|pod| pod.running && !pod.deleting && pod.node.is_some()) else {
        p.say(format!(
            "pod {} is not running; waiting for the StatefulSet to bring it back (its ordinal is still in range)",
            cur.pod_name
        ));
        p.check_stall();
        p.requeue_in(Duration::from_secs(5));
        return;
    };
    let Some(task) = p.s.exec.clone() else {
        p.task(
            ExecPurpose::Decommission,
            &spec.decommission,
            &pod,
            cur.ordinal,
        );
        return;
    };
    if pod.uid != cur.pod_uid {
        let message = format!(
            "pod {} was replaced (UID {} -> {}); running the {} command again in the new pod",
            cur.pod_name,
            cur.pod_uid,
            pod.uid,
            purpose_word(task.purpose)
        );
        cur.pod_uid = pod.uid.clone();
        cur.node_name = pod.node.clone();
        p.s.current = Some(cur.clone());
        p.events.push(Event::normal("PodReplaced", message.clone()));
        p.say(message);
        let action = match (task.purpose, &spec.status_check) {
            (ExecPurpose::StatusCheck, Some(check)) => check.clone(),
            _ => spec.decommission.clone(),
        };
        p.task(task.purpose, &action, &pod, cur.ordinal);
        return;
    }
    let period = Duration::from_secs(u64::try_from(spec.status_period_seconds()).unwrap_or(10));
    let Some(result) = task.result.clone() else {
        p.check_stall();
        return;
    };
    let Some(code) = result.exit_code else {
        // It could not run (the container restarting, the runtime busy): again after a period.
        let waited = p.since(result.finished_time.as_ref());
        if waited >= period {
            let action = match (task.purpose, &spec.status_check) {
                (ExecPurpose::StatusCheck, Some(check)) => check.clone(),
                _ => spec.decommission.clone(),
            };
            p.say(format!("{}; trying again", described_result(&task)));
            p.task(task.purpose, &action, &pod, cur.ordinal);
        } else {
            p.requeue_in(period.saturating_sub(waited));
            p.check_stall();
        }
        return;
    };
    let decommissioned = match task.purpose {
        ExecPurpose::Decommission if code == 0 => match &spec.status_check {
            Some(check) => {
                p.progressed(None);
                p.say(format!(
                    "decommission started in pod {}; polling the status command",
                    cur.pod_name
                ));
                p.task(ExecPurpose::StatusCheck, check, &pod, cur.ordinal);
                return;
            }
            None => true,
        },
        ExecPurpose::StatusCheck if code == 0 => true,
        ExecPurpose::StatusCheck if code == STATUS_IN_PROGRESS_EXIT_CODE => {
            let progress = result
                .output
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(|l| tail_chars(l, 256));
            if progress.is_some() && progress != p.s.progress {
                p.progressed(progress);
            }
            let waited = p.since(result.finished_time.as_ref());
            if waited >= period {
                if let Some(check) = &spec.status_check {
                    p.task(ExecPurpose::StatusCheck, check, &pod, cur.ordinal);
                }
            } else {
                p.requeue_in(period.saturating_sub(waited));
            }
            p.check_stall();
            return;
        }
        _ => {
            let message = format!(
                "{}; replicas and claims are untouched",
                described_result(&task)
            );
            return p.fail(tail_chars(&message, MAX_EXEC_OUTPUT_CHARS));
        }
    };
    if decommissioned {
        cur.decommissioned = true;
        cur.step = if stays {
            LeavingStep::Returning
        } else {
            LeavingStep::Lowering
        };
        p.s.current = Some(cur.clone());
        p.s.exec = None;
        p.progressed(None);
        let next = if stays {
            "its ordinal stays (a scale-up): deleting it so that it comes back"
        } else {
            "lowering replicas"
        };
        let message = format!("pod {} is decommissioned; {next}", cur.pod_name);
        set_condition(
            &mut p.s.conditions,
            SCALEDOWN_DECOMMISSIONING,
            false,
            "Decommissioned",
            &message,
            now,
        );
        p.events
            .push(Event::normal("Decommissioned", message.clone()));
        p.say(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaunch_api::{ExecResult, ScaleDownSpec};

    fn sd(replicas: i32) -> ScaleDown {
        let mut sd = ScaleDown::new(
            "sd",
            ScaleDownSpec {
                stateful_set_name: "store".into(),
                replicas,
                decommission: ExecAction {
                    command: vec!["handoff".into()],
                },
                ..Default::default()
            },
        );
        sd.metadata.namespace = Some("default".into());
        sd
    }

    /// A fake cluster the decisions are applied to.
    struct World {
        sd: ScaleDown,
        sts: Option<StatefulSetView>,
        pods: BTreeMap<i32, PodView>,
        claims: BTreeMap<String, String>,
        now: Timestamp,
        exec_policy: Option<ExecPolicy>,
        events: Vec<Event>,
        lowered: Vec<(i32, i32)>,
        /// Pods deleted by a decision (pods created after one get new UIDs).
        serial: u32,
    }

    impl World {
        fn new(sd: ScaleDown, replicas: i32) -> Self {
            let mut w = World {
                sd,
                sts: Some(StatefulSetView {
                    replicas,
                    claim_templates: vec!["data".into()],
                    ..Default::default()
                }),
                pods: BTreeMap::new(),
                claims: BTreeMap::new(),
                now: Timestamp::from_second(1_000_000).unwrap(),
                exec_policy: Some(ExecPolicy::Enforced),
                events: Vec::new(),
                lowered: Vec::new(),
                serial: 0,
            };
            w.sync_pods();
            w
        }

        /// The StatefulSet controller: pods for the ordinals in range, none beyond.
        fn sync_pods(&mut self) {
            let replicas = self.sts.as_ref().map_or(0, |s| s.replicas);
            self.pods.retain(|o, _| *o < replicas);
            for o in 0..replicas {
                let uid = match self.serial {
                    0 => format!("uid-{o}"),
                    n => format!("uid-{o}-{n}"),
                };
                if self.pods.contains_key(&o) {
                    continue;
                }
                self.pods.insert(
                    o,
                    PodView {
                        name: format!("store-{o}"),
                        uid,
                        node: Some("n1".into()),
                        running: true,
                        ready: true,
                        deleting: false,
                        first_container: Some("app".into()),
                    },
                );
                let claim = match self.serial {
                    0 => format!("claim-uid-{o}"),
                    _ => format!("claim-uid-{o}-new"),
                };
                self.claims
                    .entry(format!("data-store-{o}"))
                    .or_insert(claim);
            }
        }

        fn pass(&mut self) -> Decision {
            let d = decide(&Observed {
                scaledown: &self.sd,
                statefulset: self.sts.clone(),
                pods: self.pods.clone(),
                claims: self.claims.clone(),
                exec_policy: self.exec_policy.clone(),
                now: self.now,
            });
            if let Some(s) = &d.status {
                self.sd.status = Some(s.clone());
            }
            match &d.write {
                Some(Write::Lower { from, to }) => {
                    let sts = self.sts.as_mut().unwrap();
                    assert_eq!(sts.replicas, *from);
                    sts.replicas = *to;
                    self.lowered.push((*from, *to));
                }
                Some(Write::DeleteClaims(claims)) => {
                    for c in claims {
                        assert_eq!(self.claims.remove(&c.name), Some(c.uid.clone()));
                    }
                }
                Some(Write::DeletePod { name, uid }) => {
                    let (o, pod) = self.pods.iter().find(|(_, p)| &p.name == name).unwrap();
                    assert_eq!(&pod.uid, uid);
                    let o = *o;
                    self.pods.remove(&o);
                    self.serial += 1;
                }
                None => {}
            }
            self.events.extend(d.events.clone());
            self.sync_pods();
            d
        }

        fn status(&self) -> ScaleDownStatus {
            self.sd.status.clone().unwrap_or_default()
        }

        /// The agent: answers the pending command with `code` and `output`.
        fn answer(&mut self, code: Option<i32>, output: &str) -> ExecTask {
            let mut s = self.status();
            let task = s.exec.as_mut().expect("a command is pending");
            assert!(task.result.is_none());
            task.result = Some(ExecResult {
                exit_code: code,
                output: output.into(),
                finished_time: Some(Time(self.now)),
            });
            let task = task.clone();
            self.sd.status = Some(s);
            task
        }

        fn pending(&self) -> Option<ExecTask> {
            self.status().exec.filter(|t| t.result.is_none())
        }

        /// Passes until a command is pending or the ScaleDown finished.
        fn run(&mut self) {
            for _ in 0..50 {
                if self.pending().is_some() || self.status().phase.is_finished() {
                    return;
                }
                self.pass();
            }
            panic!("no progress: {:?}", self.status());
        }
    }

    #[test]
    fn without_the_exec_policy_nothing_starts_and_the_scaledown_fails_saying_what_to_install() {
        let mut w = World::new(sd(1), 3);
        w.exec_policy = None;
        w.pass();
        w.pass();
        assert!(w.pending().is_none());
        assert!(!w.status().phase.is_finished());
        assert_eq!(w.status().expected_replicas, None);
        w.exec_policy = Some(ExecPolicy::Missing(
            "install manifests/base/admission-policy.yaml".into(),
        ));
        w.run();
        let status = w.status();
        assert_eq!(status.phase, ScaleDownPhase::Failed);
        let message = status.message.unwrap_or_default();
        assert!(message.contains("admission-policy.yaml"), "{message}");
        assert!(w.lowered.is_empty());
        assert_eq!(w.sts.as_ref().unwrap().replicas, 3);
    }

    #[test]
    fn three_to_one_decommissions_the_highest_first_and_lowers_only_after() {
        let mut w = World::new(sd(1), 3);
        w.run();
        let task = w.pending().unwrap();
        assert_eq!(task.purpose, ExecPurpose::Decommission);
        assert_eq!(task.pod_name, "store-2");
        assert_eq!(task.container, "app");
        assert!(
            task.command
                .contains(&"RELAUNCH_REMAINING=store-0 store-1".to_string())
        );
        assert!(task.command.contains(&"RELAUNCH_ORDINAL=2".to_string()));
        assert_eq!(task.command.last().unwrap(), "handoff");
        // Intent recorded with the first command.
        let cur = w.status().current.unwrap();
        assert_eq!((cur.ordinal, cur.pod_uid.as_str()), (2, "uid-2"));
        assert_eq!(cur.claims[0].name, "data-store-2");
        assert!(w.status().is_true(SCALEDOWN_DECOMMISSIONING));
        // Nothing lowered while the command runs.
        for _ in 0..3 {
            w.pass();
        }
        assert!(w.lowered.is_empty());
        w.answer(Some(0), "moved");
        w.run();
        assert_eq!(w.lowered, vec![(3, 2)]);
        assert_eq!(w.pending().unwrap().pod_name, "store-1");
        assert_eq!(w.status().removed, vec![2]);
        assert!(
            w.claims.contains_key("data-store-2"),
            "Retain keeps the claim"
        );
        w.answer(Some(0), "");
        w.run();
        assert_eq!(w.lowered, vec![(3, 2), (2, 1)]);
        assert_eq!(w.status().phase, ScaleDownPhase::Succeeded);
        assert_eq!(w.status().removed, vec![2, 1]);
    }

    #[test]
    fn nothing_starts_before_the_leaving_pod_is_ready() {
        let mut w = World::new(sd(1), 3);
        w.pods.get_mut(&2).unwrap().ready = false;
        for _ in 0..5 {
            let d = decide(&Observed {
                scaledown: &w.sd,
                statefulset: w.sts.clone(),
                pods: w.pods.clone(),
                claims: w.claims.clone(),
                exec_policy: Some(ExecPolicy::Enforced),
                now: w.now,
            });
            if let Some(s) = d.status {
                w.sd.status = Some(s);
            }
        }
        assert!(w.status().current.is_none() && w.pending().is_none());
        assert!(w.status().message.unwrap().contains("to run and be ready"));
        w.pods.get_mut(&2).unwrap().ready = true;
        w.run();
        assert_eq!(w.pending().unwrap().pod_name, "store-2");
    }

    #[test]
    fn a_failing_decommission_fails_with_its_message_and_touches_nothing() {
        let mut w = World::new(sd(1), 3);
        w.run();
        w.answer(Some(3), "peer store-1 unreachable");
        w.run();
        let s = w.status();
        assert_eq!(s.phase, ScaleDownPhase::Failed);
        let m = s.message.unwrap();
        assert!(
            m.contains("exited with code 3: peer store-1 unreachable"),
            "{m}"
        );
        assert!(w.lowered.is_empty());
        assert_eq!(w.claims.len(), 3);
    }

    #[test]
    fn status_command_progress_stall_and_done() {
        let mut sd = sd(2);
        sd.spec.status_check = Some(ExecAction {
            command: vec!["progress".into()],
        });
        sd.spec.stall_timeout_seconds = Some(60);
        let mut w = World::new(sd, 3);
        w.run();
        w.answer(Some(0), "");
        w.run();
        assert_eq!(w.pending().unwrap().purpose, ExecPurpose::StatusCheck);
        w.answer(Some(STATUS_IN_PROGRESS_EXIT_CODE), "ranges: 10\n");
        w.pass();
        assert_eq!(w.status().progress.as_deref(), Some("ranges: 10"));
        assert!(w.pending().is_none(), "the next check waits for the period");
        w.now += jiff::SignedDuration::from_secs(30);
        w.run();
        w.answer(Some(STATUS_IN_PROGRESS_EXIT_CODE), "ranges: 10");
        w.now += jiff::SignedDuration::from_secs(40);
        w.pass();
        assert!(w.status().is_true(SCALEDOWN_STALLED));
        assert!(w.events.iter().any(|e| e.reason == "ScaleDownStalled"));
        assert_eq!(w.status().phase, ScaleDownPhase::Running);
        assert!(w.lowered.is_empty(), "a stall lowers nothing");
        w.run();
        w.answer(Some(STATUS_IN_PROGRESS_EXIT_CODE), "ranges: 3");
        w.pass();
        assert!(!w.status().is_true(SCALEDOWN_STALLED));
        w.now += jiff::SignedDuration::from_secs(11);
        w.run();
        w.answer(Some(0), "done");
        w.run();
        assert_eq!(w.status().phase, ScaleDownPhase::Succeeded);
        assert_eq!(w.lowered, vec![(3, 2)]);
    }

    #[test]
    fn a_failing_precheck_changes_nothing_and_says_why() {
        let mut sd = sd(1);
        sd.spec.precheck = Some(ExecAction {
            command: vec!["check".into()],
        });
        let mut w = World::new(sd, 3);
        w.run();
        let task = w.pending().unwrap();
        assert_eq!(
            (task.purpose, task.pod_name.as_str()),
            (ExecPurpose::Precheck, "store-0")
        );
        w.answer(Some(1), "replication factor 3 needs 3 members");
        w.run();
        let s = w.status();
        assert_eq!(s.phase, ScaleDownPhase::Failed);
        assert!(s.is_true(SCALEDOWN_BLOCKED));
        assert!(s.message.unwrap().contains("replication factor 3"));
        assert!(s.current.is_none() && w.lowered.is_empty());
    }

    #[test]
    fn claims_are_deleted_with_their_uid_only_after_the_pod_is_gone() {
        let mut sd = sd(2);
        sd.spec.claim_policy = Some(ClaimPolicy::Delete);
        let mut w = World::new(sd, 3);
        w.run();
        w.answer(Some(0), "");
        w.run();
        assert_eq!(w.status().phase, ScaleDownPhase::Succeeded);
        assert!(!w.claims.contains_key("data-store-2"));
        assert!(w.claims.contains_key("data-store-1"));
    }

    #[test]
    fn replicas_changed_by_someone_else_are_not_lowered() {
        let mut w = World::new(sd(1), 3);
        w.run();
        w.answer(Some(0), "");
        w.pass(); // decommissioned -> Lowering
        w.sts.as_mut().unwrap().replicas = 1;
        w.sync_pods();
        w.run();
        assert_eq!(w.status().phase, ScaleDownPhase::Failed);
        assert!(w.lowered.is_empty());
    }

    #[test]
    fn a_scale_up_while_leaving_runs_the_cancel_command() {
        let mut sd = sd(1);
        sd.spec.cancel = Some(ExecAction {
            command: vec!["recommission".into()],
        });
        let mut w = World::new(sd, 3);
        w.run();
        w.sd.spec.replicas = 3;
        w.pass();
        let task = w.pending().unwrap();
        assert_eq!(
            (task.purpose, task.pod_name.as_str()),
            (ExecPurpose::Cancel, "store-2")
        );
        w.answer(Some(0), "");
        w.run();
        assert_eq!(w.status().phase, ScaleDownPhase::Cancelled);
        assert!(w.lowered.is_empty());
    }

    #[test]
    fn without_a_cancel_command_the_leaving_pod_finishes_first_then_comes_back_empty() {
        let mut sd = sd(1);
        sd.spec.claim_policy = Some(ClaimPolicy::Delete);
        let mut w = World::new(sd, 3);
        w.run();
        w.sd.spec.replicas = 3;
        w.pass();
        assert!(
            w.status()
                .message
                .unwrap()
                .contains("finishes leaving first")
        );
        assert!(
            w.claims.contains_key("data-store-2"),
            "nothing before the data moved"
        );
        w.answer(Some(0), "");
        w.run();
        let s = w.status();
        assert_eq!(s.phase, ScaleDownPhase::Cancelled, "{:?}", s.message);
        assert!(s.message.unwrap().contains("new, empty volume"));
        assert!(w.lowered.is_empty(), "replicas never lowered");
        assert_eq!(w.sts.as_ref().unwrap().replicas, 3);
        // The StatefulSet recreated it, on a new claim.
        assert_eq!(w.pods[&2].uid, "uid-2-1");
        assert_eq!(w.claims["data-store-2"], "claim-uid-2-new");
    }

    #[test]
    fn replicas_raised_by_someone_else_while_leaving_finish_first_and_come_back() {
        // Ordinal 1 leaves (3 -> 1, ordinal 2 already gone); someone scales the set to 3.
        let mut w = World::new(sd(1), 3);
        w.run();
        w.answer(Some(0), "");
        w.run();
        assert_eq!(w.pending().unwrap().pod_name, "store-1");
        w.sts.as_mut().unwrap().replicas = 3;
        w.sync_pods();
        w.pass();
        assert_eq!(
            w.status().phase,
            ScaleDownPhase::Running,
            "{:?}",
            w.status().message
        );
        assert!(
            w.status()
                .message
                .unwrap()
                .contains("finishes leaving first")
        );
        w.answer(Some(0), "");
        w.run();
        let s = w.status();
        assert_eq!(s.phase, ScaleDownPhase::Cancelled, "{:?}", s.message);
        assert!(
            s.message.unwrap().contains("old volume"),
            "Retain keeps the claim"
        );
        assert_eq!(
            w.lowered,
            vec![(3, 2)],
            "only the first ordinal was lowered"
        );
        assert_eq!(w.pods[&1].uid, "uid-1-1");
        assert_eq!(w.claims["data-store-1"], "claim-uid-1");
    }

    #[test]
    fn a_pod_slow_to_go_is_a_stall_not_a_failure() {
        let mut sd = sd(2);
        sd.spec.stall_timeout_seconds = Some(60);
        let mut w = World::new(sd, 3);
        w.run();
        w.answer(Some(0), "");
        // The StatefulSet controller does not delete store-2 (a finalizer, say).
        for _ in 0..3 {
            let d = decide(&Observed {
                scaledown: &w.sd,
                statefulset: w.sts.clone(),
                pods: w.pods.clone(),
                claims: w.claims.clone(),
                exec_policy: Some(ExecPolicy::Enforced),
                now: w.now,
            });
            if let Some(Write::Lower { to, .. }) = d.write {
                w.sts.as_mut().unwrap().replicas = to;
            }
            if let Some(s) = d.status {
                w.sd.status = Some(s);
            }
            w.events.extend(d.events);
        }
        assert_eq!(
            w.status().current.unwrap().step,
            LeavingStep::WaitingForPodGone
        );
        assert!(!w.status().is_true(SCALEDOWN_STALLED));
        w.now += jiff::SignedDuration::from_secs(61);
        let d = decide(&Observed {
            scaledown: &w.sd,
            statefulset: w.sts.clone(),
            pods: w.pods.clone(),
            claims: w.claims.clone(),
            exec_policy: Some(ExecPolicy::Enforced),
            now: w.now,
        });
        let s = d.status.unwrap();
        assert!(s.is_true(SCALEDOWN_STALLED));
        assert!(s.is_true(SCALEDOWN_WAITING_FOR_POD_GONE));
        assert_eq!(s.phase, ScaleDownPhase::Running);
        let stalled = s.condition(SCALEDOWN_STALLED).unwrap();
        assert!(
            stalled
                .message
                .as_deref()
                .unwrap()
                .contains("still there 61s"),
            "{stalled:?}"
        );
        assert!(d.events.iter().any(|e| e.reason == "ScaleDownStalled"));
        w.sd.status = Some(s);
        // Gone at last: the stall clears and the ScaleDown finishes.
        w.sync_pods();
        w.run();
        assert_eq!(w.status().phase, ScaleDownPhase::Succeeded);
        assert!(!w.status().is_true(SCALEDOWN_STALLED));
    }

    #[test]
    fn refusals_scale_to_zero_and_when_scaled_delete() {
        let mut w = World::new(sd(0), 3);
        w.run();
        assert_eq!(w.status().phase, ScaleDownPhase::Failed);
        assert!(w.status().message.unwrap().contains("allowScaleToZero"));
        let mut w = World::new(sd(1), 3);
        w.sts.as_mut().unwrap().deletes_claims_when_scaled = true;
        w.run();
        assert_eq!(w.status().phase, ScaleDownPhase::Failed);
        assert!(w.status().message.unwrap().contains("whenScaled: Delete"));
        assert!(w.status().current.is_none() && w.lowered.is_empty());
    }

    #[test]
    fn ordinals_start_is_respected() {
        let mut w = World::new(sd(1), 0);
        let sts = w.sts.as_mut().unwrap();
        sts.start = 5;
        sts.replicas = 2;
        w.pods.clear();
        for o in [5, 6] {
            w.pods.insert(
                o,
                PodView {
                    name: format!("store-{o}"),
                    uid: format!("uid-{o}"),
                    node: Some("n1".into()),
                    running: true,
                    ready: true,
                    first_container: Some("app".into()),
                    ..Default::default()
                },
            );
        }
        // A pass without the fake StatefulSet controller (it knows no start).
        for _ in 0..5 {
            let d = decide(&Observed {
                scaledown: &w.sd,
                statefulset: w.sts.clone(),
                pods: w.pods.clone(),
                claims: w.claims.clone(),
                exec_policy: Some(ExecPolicy::Enforced),
                now: w.now,
            });
            if let Some(s) = d.status {
                w.sd.status = Some(s);
            }
        }
        let task = w.pending().unwrap();
        assert_eq!(task.pod_name, "store-6");
        assert!(
            task.command
                .contains(&"RELAUNCH_REMAINING=store-5".to_string())
        );
    }

    #[test]
    fn a_stale_second_pass_makes_no_second_lowering() {
        // Crash after lowering, before status: replicas one below expected in step Lowering
        // is read as our own write.
        let mut w = World::new(sd(2), 3);
        w.run();
        w.answer(Some(0), "");
        w.pass();
        assert_eq!(w.status().current.unwrap().step, LeavingStep::Lowering);
        let d = w.pass();
        assert_eq!(d.write, Some(Write::Lower { from: 3, to: 2 }));
        // The status write of the next pass is lost (crash); the pass is taken again.
        let before = w.sd.status.clone();
        w.pass();
        w.sd.status = before;
        let d = w.pass();
        assert_eq!(d.write, None);
        assert_eq!(w.status().expected_replicas, Some(2));
        assert_eq!(w.lowered, vec![(3, 2)]);
    }
}
