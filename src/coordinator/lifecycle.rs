//! What happens to an admitted request over time: deadlines, its pod going away, a silent agent,
//! releasing the readiness gate, and TTL deletion. Pure: every input is passed in.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use relaunch_api::{
    ContainerRecreatePhase, ContainerRecreateRequest, ContainerRecreateRequestContainer,
    ContainerRecreateRequestStatus, ContainerRecreateState, LABEL_NODE_NAME, LABEL_POD_UID,
    RecreatePhase,
};

/// How long the kubelet may take to restart a stopped container (its crash-loop back-off cap).
pub const KUBELET_RESTART_ALLOWANCE: Duration = Duration::from_secs(300);
/// Grace assumed when neither the request nor the pod says (the Kubernetes default).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// What the coordinator knows about a request's pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub uid: String,
    /// `spec.terminationGracePeriodSeconds`.
    pub termination_grace_seconds: Option<i64>,
    /// The pod's `relaunch.dev/ready` condition is False on behalf of this request.
    pub gate_held_by_request: bool,
}

/// The earlier requests for the same pod (the agent runs one per pod at a time, in creation order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Predecessor {
    None,
    /// An earlier request is still running: this one waits its turn.
    Unfinished,
    /// The latest earlier request finished at this time: this one's turn started then.
    FinishedAt(Timestamp),
}

/// Everything a lifecycle decision depends on.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub request: &'a ContainerRecreateRequest,
    /// None: the pod does not exist.
    pub pod: Option<PodView>,
    pub predecessor: Predecessor,
    /// When an agent last reported on this request to this replica (its memory); the status's
    /// `lastReportTime` (reports to any replica) counts too, the later of the two wins.
    pub last_report: Option<Timestamp>,
    /// When this coordinator started watching: an agent is not blamed for our own downtime.
    pub watching_since: Timestamp,
    pub now: Timestamp,
    pub agent_timeout: Duration,
}

/// Why the coordinator failed a request. Also the `crr_total{result}` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    DeadlineExceeded,
    PodGone,
    AgentSilent,
}

impl FailReason {
    pub fn metric_result(self) -> &'static str {
        match self {
            FailReason::DeadlineExceeded => "deadline_exceeded",
            FailReason::PodGone => "pod_gone",
            FailReason::AgentSilent => "agent_silent",
        }
    }

    /// The Event reason.
    pub fn event_reason(self) -> &'static str {
        match self {
            FailReason::DeadlineExceeded => "DeadlineExceeded",
            FailReason::PodGone => "PodGone",
            FailReason::AgentSilent => "AgentNotReporting",
        }
    }
}

/// The next thing to do for one admitted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing now; look again after this long (None: only when something changes).
    Wait(Option<Duration>),
    Fail {
        reason: FailReason,
        message: String,
    },
    /// Set the pod's `relaunch.dev/ready` condition True again.
    ReleaseGate,
    /// The TTL after completion has passed.
    Delete,
}

/// Decides the next step for an admitted request (one that has a status).
pub fn decide(o: &Observed<'_>) -> Decision {
    let status = o.request.status.clone().unwrap_or_default();
    if status.has_unknown() {
        // A newer release's phase: this one can neither judge it nor write it back.
        return Decision::Wait(None);
    }
    if status.phase.is_finished() {
        return after_finish(o, &status);
    }
    let created = o
        .request
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(o.now, |t| t.0);
    let mut next: Option<Timestamp> = None;

    // The spec can be edited after admission: a deadline too far out to represent is never
    // reached (adding it would panic).
    if let Some(seconds) = o.request.spec.active_deadline_seconds
        && let Ok(deadline) = created.checked_add(SignedDuration::from_secs(seconds.max(0)))
    {
        if o.now >= deadline {
            return Decision::Fail {
                reason: FailReason::DeadlineExceeded,
                message: format!(
                    "deadline exceeded: not finished within activeDeadlineSeconds ({seconds}s)"
                ),
            };
        }
        next = Some(deadline);
    }

    let pod_name = &o.request.spec.pod_name;
    let labels = o.request.metadata.labels.clone().unwrap_or_default();
    let Some(pod) = &o.pod else {
        return Decision::Fail {
            reason: FailReason::PodGone,
            message: format!("pod {pod_name} was deleted before the request finished"),
        };
    };
    if let Some(uid) = labels.get(LABEL_POD_UID)
        && *uid != pod.uid
    {
        return Decision::Fail {
            reason: FailReason::PodGone,
            message: format!(
                "pod {pod_name} was replaced (UID {} instead of {uid}) before the request finished",
                pod.uid
            ),
        };
    }

    if o.predecessor != Predecessor::Unfinished {
        let mut heard = [Some(created), Some(o.watching_since), o.last_report]
            .into_iter()
            .flatten()
            .chain(status_times(&status))
            .max()
            .unwrap_or(created);
        if let Predecessor::FinishedAt(t) = o.predecessor {
            heard = heard.max(t);
        }
        // Grace periods come from the request and the pod: one too long to represent means
        // the agent is never declared silent in this step.
        let allowance = o
            .agent_timeout
            .saturating_add(step_allowance(o, &status, pod));
        let Ok(silent_at) = heard.checked_add(allowance) else {
            return Decision::Wait(next.map(|t| until(o.now, t)));
        };
        if o.now >= silent_at {
            let node = labels
                .get(LABEL_NODE_NAME)
                .map_or("<unknown>", String::as_str);
            return Decision::Fail {
                reason: FailReason::AgentSilent,
                message: format!(
                    "the relaunch agent on node {node} has not reported for {}s (agent timeout {}s); is it running?",
                    o.now.duration_since(heard).as_secs(),
                    o.agent_timeout.as_secs()
                ),
            };
        }
        next = Some(next.map_or(silent_at, |n| n.min(silent_at)));
    }
    Decision::Wait(next.map(|t| until(o.now, t)))
}

fn after_finish(o: &Observed<'_>, status: &ContainerRecreateRequestStatus) -> Decision {
    if o.pod.as_ref().is_some_and(|p| p.gate_held_by_request) {
        return Decision::ReleaseGate;
    }
    let (Some(ttl), Some(done)) = (
        o.request.spec.ttl_seconds_after_finished,
        status.completion_time.as_ref(),
    ) else {
        return Decision::Wait(None);
    };
    let Ok(due) = done
        .0
        .checked_add(SignedDuration::from_secs(i64::from(ttl.max(0))))
    else {
        return Decision::Wait(None);
    };
    if o.now >= due {
        Decision::Delete
    } else {
        Decision::Wait(Some(until(o.now, due)))
    }
}

/// Every time recorded in the status: each is a sign of the agent's life.
fn status_times(status: &ContainerRecreateRequestStatus) -> impl Iterator<Item = Timestamp> + '_ {
    let steps = status.container_recreate_states.iter().flat_map(|c| {
        let t = &c.timestamps;
        [
            &t.unready,
            &t.shutdown,
            &t.stop,
            &t.restarted,
            &t.ready,
            &t.finished,
        ]
    });
    let last_report = status.last_report_time.as_ref().map(|t| t.0);
    [&status.start_time]
        .into_iter()
        .chain(steps)
        .filter_map(|t: &Option<Time>| t.as_ref().map(|t| t.0))
        .chain(last_report)
}

/// How long the agent may legitimately stay quiet in the step it is in (on top of the timeout).
fn step_allowance(
    o: &Observed<'_>,
    status: &ContainerRecreateRequestStatus,
    pod: &PodView,
) -> Duration {
    let strategy = o.request.spec.strategy.clone().unwrap_or_default();
    let secs = |v: Option<i64>| v.map(|s| Duration::from_secs(s.max(0) as u64));
    let grace = secs(strategy.termination_grace_period_seconds)
        .or(secs(pod.termination_grace_seconds))
        .unwrap_or(DEFAULT_GRACE);
    status
        .container_recreate_states
        .iter()
        .map(|c| match c.phase {
            ContainerRecreatePhase::Unready => {
                secs(strategy.unready_grace_period_seconds).unwrap_or_default()
            }
            ContainerRecreatePhase::ShuttingDown | ContainerRecreatePhase::Stopping => grace,
            ContainerRecreatePhase::WaitingForRestart => KUBELET_RESTART_ALLOWANCE,
            ContainerRecreatePhase::WaitingForReady => {
                secs(strategy.min_started_seconds.map(i64::from)).unwrap_or_default()
            }
            _ => Duration::ZERO,
        })
        .max()
        .unwrap_or_default()
}

fn until(now: Timestamp, then: Timestamp) -> Duration {
    let d = then.duration_since(now);
    Duration::try_from(d).unwrap_or_default()
}

/// Whether a report that changed nothing else must still write `status.lastReportTime` (stored
/// as `stored`), so that every replica sees the agent alive: when none is stored, or the stored
/// one is at least a quarter of `agent_timeout` old (or implausibly far in the future, written by
/// a replica whose clock is ahead). Never for a finished request: those do not change. Throttled
/// like this, a request costs at most one write per quarter timeout however often its agent
/// reports, and the stored time lags the agent's last report by at most a quarter timeout plus
/// the agent's heartbeat interval.
pub fn heartbeat_due(
    status: &ContainerRecreateRequestStatus,
    now: Timestamp,
    agent_timeout: Duration,
) -> bool {
    if status.phase.is_finished() {
        return false;
    }
    let Some(stored) = status.last_report_time.as_ref().map(|t| t.0) else {
        return true;
    };
    let interval = agent_timeout / 4;
    let age = now.duration_since(stored);
    let ahead = stored.duration_since(now);
    let at_least = |d: SignedDuration| Duration::try_from(d).is_ok_and(|d| d >= interval);
    at_least(age) || at_least(ahead)
}

/// The status of a request the coordinator fails: finished, with the message, and every
/// container of `containers` (the spec's) that had not finished ends Failed saying what happened
/// to it ([`interrupted`]); nothing else is lost. A refused request (nothing ran) passes no
/// containers.
pub fn failed(
    containers: &[ContainerRecreateRequestContainer],
    status: Option<&ContainerRecreateRequestStatus>,
    message: &str,
    now: Timestamp,
) -> ContainerRecreateRequestStatus {
    let mut status = status.cloned().unwrap_or_default();
    status.phase = RecreatePhase::Failed;
    status.message = Some(message.to_string());
    if status.completion_time.is_none() {
        status.completion_time = Some(Time(now));
    }
    interrupted(containers, &mut status, message, now);
    status
}

/// Ends every container of a failed request that is not Succeeded or Failed yet: Failed, with
/// a message saying what it was doing when the request failed (`why`), and a finished time.
/// Containers of the spec the status does not list yet are added (they never started). Their
/// order follows the spec.
pub fn interrupted(
    containers: &[ContainerRecreateRequestContainer],
    status: &mut ContainerRecreateRequestStatus,
    why: &str,
    now: Timestamp,
) {
    for c in containers {
        if !status
            .container_recreate_states
            .iter()
            .any(|s| s.name == c.name)
        {
            status
                .container_recreate_states
                .push(ContainerRecreateState {
                    name: c.name.clone(),
                    ..Default::default()
                });
        }
    }
    for state in &mut status.container_recreate_states {
        // A newer release's phase ranks above Failed: nothing moves a status back from it.
        if state.phase.is_finished() || state.phase == ContainerRecreatePhase::Unknown {
            continue;
        }
        let what = match state.phase {
            ContainerRecreatePhase::Pending => {
                "not started: the request failed before this container's turn".to_string()
            }
            phase => format!("interrupted: the request failed while this container was {phase:?}"),
        };
        state.message = Some(format!("{what} ({why})"));
        state.phase = ContainerRecreatePhase::Failed;
        if state.timestamps.finished.is_none() {
            state.timestamps.finished = Some(Time(now));
        }
    }
    let position = |name: &str| containers.iter().position(|c| c.name == name);
    status
        .container_recreate_states
        .sort_by_key(|c| position(&c.name).unwrap_or(usize::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use relaunch_api::{
        ContainerRecreateRequestContainer, ContainerRecreateRequestSpec,
        ContainerRecreateRequestStrategy, ContainerRecreateState,
    };
    use std::collections::BTreeMap;

    const T0: i64 = 1_700_000_000;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(T0 + secs).unwrap()
    }

    fn request(phase: RecreatePhase) -> ContainerRecreateRequest {
        let mut r = ContainerRecreateRequest::new(
            "r",
            ContainerRecreateRequestSpec {
                pod_name: "db-0".into(),
                containers: vec![ContainerRecreateRequestContainer {
                    name: "db".into(),
                    shutdown: None,
                }],
                ..Default::default()
            },
        );
        r.metadata.namespace = Some("default".into());
        r.metadata.creation_timestamp = Some(Time(at(0)));
        r.metadata.labels = Some(BTreeMap::from([
            (LABEL_NODE_NAME.to_string(), "node-1".to_string()),
            (LABEL_POD_UID.to_string(), "uid-1".to_string()),
        ]));
        r.status = Some(ContainerRecreateRequestStatus {
            phase,
            ..Default::default()
        });
        r
    }

    fn pod() -> Option<PodView> {
        Some(PodView {
            uid: "uid-1".into(),
            termination_grace_seconds: Some(30),
            gate_held_by_request: false,
        })
    }

    fn observe(r: &ContainerRecreateRequest, now: i64) -> Observed<'_> {
        Observed {
            request: r,
            pod: pod(),
            predecessor: Predecessor::None,
            last_report: None,
            watching_since: at(0),
            now: at(now),
            agent_timeout: Duration::from_secs(300),
        }
    }

    fn reason(d: Decision) -> FailReason {
        match d {
            Decision::Fail { reason, .. } => reason,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn quiet_pending_request_waits_until_the_agent_timeout() {
        let r = request(RecreatePhase::Pending);
        assert_eq!(
            decide(&observe(&r, 10)),
            Decision::Wait(Some(Duration::from_secs(290)))
        );
    }

    #[test]
    fn silent_agent_fails_the_request_naming_the_node() {
        let r = request(RecreatePhase::Pending);
        match decide(&observe(&r, 300)) {
            Decision::Fail { reason, message } => {
                assert_eq!(reason, FailReason::AgentSilent);
                assert!(message.contains("agent on node node-1"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_report_keeps_the_request_alive() {
        let r = request(RecreatePhase::Recreating);
        let mut o = observe(&r, 400);
        o.last_report = Some(at(200));
        assert_eq!(decide(&o), Decision::Wait(Some(Duration::from_secs(100))));
    }

    #[test]
    fn a_report_to_another_replica_keeps_the_request_alive() {
        let mut r = request(RecreatePhase::Recreating);
        r.status.as_mut().unwrap().last_report_time = Some(MicroTime(at(250)));
        let mut o = observe(&r, 400);
        o.last_report = Some(at(200));
        assert_eq!(
            decide(&o),
            Decision::Wait(Some(Duration::from_secs(150))),
            "the later of memory and status counts"
        );
        o.last_report = Some(at(300));
        assert_eq!(decide(&o), Decision::Wait(Some(Duration::from_secs(200))));
        assert_eq!(reason(decide(&observe(&r, 550))), FailReason::AgentSilent);
    }

    #[test]
    fn the_report_time_is_written_at_most_every_quarter_timeout() {
        let timeout = Duration::from_secs(300);
        let mut status = request(RecreatePhase::Recreating).status.unwrap();
        assert!(heartbeat_due(&status, at(0), timeout), "none stored");
        status.last_report_time = Some(MicroTime(at(100)));
        assert!(!heartbeat_due(&status, at(100), timeout));
        assert!(!heartbeat_due(&status, at(174), timeout));
        assert!(heartbeat_due(&status, at(175), timeout));
        assert!(!heartbeat_due(&status, at(50), timeout), "slightly ahead");
        assert!(heartbeat_due(&status, at(25), timeout), "far ahead");
        status.phase = RecreatePhase::Succeeded;
        assert!(!heartbeat_due(&status, at(1000), timeout), "finished");
        let mut extreme = request(RecreatePhase::Pending).status.unwrap();
        extreme.last_report_time = Some(MicroTime(Timestamp::MAX));
        assert!(heartbeat_due(&extreme, Timestamp::MIN, timeout));
        assert!(!heartbeat_due(&extreme, Timestamp::MIN, Duration::MAX));
        assert!(!heartbeat_due(&extreme, Timestamp::MAX, timeout));
    }

    #[test]
    fn coordinator_downtime_is_not_blamed_on_the_agent() {
        let r = request(RecreatePhase::Recreating);
        let mut o = observe(&r, 1000);
        o.watching_since = at(900);
        assert!(matches!(decide(&o), Decision::Wait(Some(_))));
    }

    #[test]
    fn status_progress_counts_as_a_report() {
        let mut r = request(RecreatePhase::Recreating);
        let status = r.status.as_mut().unwrap();
        let mut c = ContainerRecreateState {
            name: "db".into(),
            phase: ContainerRecreatePhase::ShuttingDown,
            ..Default::default()
        };
        c.timestamps.shutdown = Some(Time(at(500)));
        status.container_recreate_states.push(c);
        // 500 + timeout 300 + grace 30
        assert_eq!(
            decide(&observe(&r, 800)),
            Decision::Wait(Some(Duration::from_secs(30)))
        );
        assert_eq!(reason(decide(&observe(&r, 830))), FailReason::AgentSilent);
    }

    #[test]
    fn long_waits_are_allowed_for_the_step_in_progress() {
        let mut r = request(RecreatePhase::Recreating);
        r.spec.strategy = Some(ContainerRecreateRequestStrategy {
            min_started_seconds: Some(3600),
            ..Default::default()
        });
        r.status
            .as_mut()
            .unwrap()
            .container_recreate_states
            .push(ContainerRecreateState {
                name: "db".into(),
                phase: ContainerRecreatePhase::WaitingForReady,
                ..Default::default()
            });
        assert!(matches!(
            decide(&observe(&r, 3000)),
            Decision::Wait(Some(_))
        ));
        assert_eq!(reason(decide(&observe(&r, 3900))), FailReason::AgentSilent);
    }

    #[test]
    fn queued_request_is_not_blamed_while_an_earlier_one_runs() {
        let r = request(RecreatePhase::Pending);
        let mut o = observe(&r, 10_000);
        o.predecessor = Predecessor::Unfinished;
        assert_eq!(decide(&o), Decision::Wait(None));
        o.predecessor = Predecessor::FinishedAt(at(9_900));
        assert_eq!(decide(&o), Decision::Wait(Some(Duration::from_secs(200))));
    }

    #[test]
    fn durations_too_long_to_represent_never_expire_instead_of_panicking() {
        // Admission refuses such values, but the spec can be edited afterwards, and the pod's
        // terminationGracePeriodSeconds has no upper bound.
        let mut r = request(RecreatePhase::Recreating);
        r.spec.active_deadline_seconds = Some(i64::MAX);
        r.spec.strategy = Some(ContainerRecreateRequestStrategy {
            termination_grace_period_seconds: Some(i64::MAX),
            ..Default::default()
        });
        r.status
            .as_mut()
            .unwrap()
            .container_recreate_states
            .push(ContainerRecreateState {
                name: "db".into(),
                phase: ContainerRecreatePhase::Stopping,
                ..Default::default()
            });
        assert_eq!(decide(&observe(&r, 1_000_000)), Decision::Wait(None));

        let mut done = request(RecreatePhase::Succeeded);
        done.spec.ttl_seconds_after_finished = Some(i32::MAX);
        done.status.as_mut().unwrap().completion_time =
            Some(Time("9999-01-01T00:00:00Z".parse().unwrap()));
        assert_eq!(decide(&observe(&done, 0)), Decision::Wait(None));
    }

    #[test]
    fn deadline_is_counted_from_creation() {
        let mut r = request(RecreatePhase::Recreating);
        r.spec.active_deadline_seconds = Some(60);
        let mut o = observe(&r, 59);
        o.last_report = Some(at(59));
        assert_eq!(decide(&o), Decision::Wait(Some(Duration::from_secs(1))));
        o.now = at(60);
        match decide(&o) {
            Decision::Fail { reason, message } => {
                assert_eq!(reason, FailReason::DeadlineExceeded);
                assert!(message.starts_with("deadline exceeded"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deleted_pod_fails_the_request() {
        let r = request(RecreatePhase::Recreating);
        let mut o = observe(&r, 1);
        o.pod = None;
        assert_eq!(reason(decide(&o)), FailReason::PodGone);
    }

    #[test]
    fn replaced_pod_fails_the_request() {
        let r = request(RecreatePhase::Pending);
        let mut o = observe(&r, 1);
        o.pod = Some(PodView {
            uid: "uid-2".into(),
            termination_grace_seconds: None,
            gate_held_by_request: false,
        });
        match decide(&o) {
            Decision::Fail { reason, message } => {
                assert_eq!(reason, FailReason::PodGone);
                assert!(message.contains("was replaced"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn finished_request_releases_the_gate_it_holds_first() {
        let mut r = request(RecreatePhase::Failed);
        r.spec.ttl_seconds_after_finished = Some(0);
        r.status.as_mut().unwrap().completion_time = Some(Time(at(5)));
        let mut o = observe(&r, 10);
        o.pod = Some(PodView {
            uid: "uid-1".into(),
            termination_grace_seconds: None,
            gate_held_by_request: true,
        });
        assert_eq!(decide(&o), Decision::ReleaseGate);
        o.pod = pod();
        assert_eq!(decide(&o), Decision::Delete);
    }

    #[test]
    fn ttl_deletes_after_completion() {
        let mut r = request(RecreatePhase::Succeeded);
        r.spec.ttl_seconds_after_finished = Some(60);
        r.status.as_mut().unwrap().completion_time = Some(Time(at(100)));
        assert_eq!(
            decide(&observe(&r, 130)),
            Decision::Wait(Some(Duration::from_secs(30)))
        );
        assert_eq!(decide(&observe(&r, 160)), Decision::Delete);
    }

    #[test]
    fn finished_request_without_ttl_is_kept() {
        let r = request(RecreatePhase::Succeeded);
        let mut o = observe(&r, 1_000_000);
        o.pod = None;
        assert_eq!(decide(&o), Decision::Wait(None));
    }

    #[test]
    fn failing_keeps_progress_and_sets_completion() {
        let mut status = ContainerRecreateRequestStatus {
            phase: RecreatePhase::Recreating,
            ..Default::default()
        };
        status
            .container_recreate_states
            .push(ContainerRecreateState {
                name: "db".into(),
                phase: ContainerRecreatePhase::Succeeded,
                message: Some("recreated".into()),
                ..Default::default()
            });
        let f = failed(&[], Some(&status), "deadline exceeded", at(7));
        assert_eq!(f.phase, RecreatePhase::Failed);
        assert_eq!(f.message.as_deref(), Some("deadline exceeded"));
        assert_eq!(f.completion_time, Some(Time(at(7))));
        assert_eq!(
            f.container_recreate_states,
            status.container_recreate_states
        );
    }

    fn containers(names: &[&str]) -> Vec<ContainerRecreateRequestContainer> {
        names
            .iter()
            .map(|n| ContainerRecreateRequestContainer {
                name: n.to_string(),
                shutdown: None,
            })
            .collect()
    }

    /// OpenKruise #2353: a request failed by its deadline kept a container `ShuttingDown`.
    #[test]
    fn every_container_of_a_failed_request_ends_finished_saying_what_happened_to_it() {
        use ContainerRecreatePhase as C;
        let spec = containers(&["done", "busy", "queued", "unreported", "broken"]);
        let state = |name: &str, phase| ContainerRecreateState {
            name: name.into(),
            phase,
            ..Default::default()
        };
        let mut broken = state("broken", C::Failed);
        broken.message = Some("exec failed".into());
        broken.timestamps.finished = Some(Time(at(3)));
        let status = ContainerRecreateRequestStatus {
            phase: RecreatePhase::Recreating,
            container_recreate_states: vec![
                broken.clone(),
                state("done", C::Succeeded),
                state("busy", C::ShuttingDown),
                state("queued", C::Pending),
            ],
            ..Default::default()
        };
        let why = "deadline exceeded: not finished within activeDeadlineSeconds (3s)";
        let f = failed(&spec, Some(&status), why, at(9));
        let names: Vec<&str> = f
            .container_recreate_states
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["done", "busy", "queued", "unreported", "broken"]);
        for c in &f.container_recreate_states {
            assert!(c.phase.is_finished(), "{c:?}");
        }
        let of = |name: &str| {
            f.container_recreate_states
                .iter()
                .find(|c| c.name == name)
                .unwrap()
                .clone()
        };
        assert_eq!(of("done").phase, C::Succeeded);
        assert_eq!(of("done").message, None);
        assert_eq!(
            of("broken"),
            broken,
            "a failed container keeps its own story"
        );
        let busy = of("busy");
        assert_eq!(busy.phase, C::Failed);
        assert_eq!(
            busy.message.as_deref(),
            Some(
                "interrupted: the request failed while this container was ShuttingDown \
                 (deadline exceeded: not finished within activeDeadlineSeconds (3s))"
            )
        );
        assert_eq!(busy.timestamps.finished, Some(Time(at(9))));
        for never in ["queued", "unreported"] {
            let c = of(never);
            assert_eq!(c.phase, C::Failed);
            assert!(
                c.message.as_deref().unwrap().starts_with("not started: "),
                "{c:?}"
            );
        }
        // Refused: nothing ran, nothing is listed.
        let refused = failed(&[], None, "spec.podName is empty", at(1));
        assert!(refused.container_recreate_states.is_empty());
    }
}
