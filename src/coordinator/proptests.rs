//! Property tests over the coordinator's pure cores — [`crate::lifecycle`], [`crate::merge`] and
//! [`crate::readiness`] — with extreme inputs: i64 and i32 extremes, timestamps at the ends of
//! what jiff represents (years -9999 and 9999) and around year 1, negative durations, empty and
//! unicode strings, `u64::MAX` sequence numbers, phases of a newer release. No input may panic,
//! and each core keeps what it promises: status never moves back a phase, a reported time is
//! never ahead of the clock plus the allowed skew, a failed request leaves no container
//! unfinished, deadlines too far out to represent are never reached, a merged status can always
//! be written back.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use proptest::prelude::*;
use serde_json::json;

use relaunch_api::report::{RecreateReport, RequestRef};
use relaunch_api::{
    ContainerRecreatePhase, ContainerRecreateRequest, ContainerRecreateRequestContainer,
    ContainerRecreateRequestSpec, ContainerRecreateRequestStatus, ContainerRecreateRequestStrategy,
    ContainerRecreateState, LABEL_POD_UID, READINESS_GATE, RecreatePhase, StepTimestamps,
};

use crate::lifecycle::{self, Decision, FailReason, Observed, PodView, Predecessor};
use crate::merge::{self, MAX_CLOCK_SKEW, MAX_MESSAGE_BYTES};
use crate::readiness::{self, GateChange, GateHolder};

fn timestamp() -> BoxedStrategy<Timestamp> {
    let (min, max) = (Timestamp::MIN.as_second(), Timestamp::MAX.as_second());
    prop_oneof![
        Just(Timestamp::MIN),
        Just(Timestamp::MAX),
        Just(Timestamp::UNIX_EPOCH),
        Just("0001-01-01T00:00:00Z".parse::<Timestamp>().unwrap()),
        Just("9999-12-30T21:59:00Z".parse::<Timestamp>().unwrap()),
        // Around now, where real requests live.
        (1_700_000_000i64..1_900_000_000).prop_map(|s| Timestamp::from_second(s).unwrap()),
        (min..=max).prop_map(move |s| Timestamp::from_second(s).unwrap_or(Timestamp::MAX)),
    ]
    .boxed()
}

fn i64_extreme() -> BoxedStrategy<i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(0),
        Just(-1),
        -100i64..100_000,
        any::<i64>()
    ]
    .boxed()
}

fn i32_extreme() -> BoxedStrategy<i32> {
    prop_oneof![
        Just(i32::MIN),
        Just(i32::MAX),
        Just(0),
        Just(-1),
        any::<i32>()
    ]
    .boxed()
}

fn text() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        Just("x".repeat(MAX_MESSAGE_BYTES + 3)),
        Just(format!("{}é", "a".repeat(MAX_MESSAGE_BYTES - 1))),
        "\\PC{0,24}",
        "[a-z0-9-]{1,12}",
    ]
    .boxed()
}

fn request_phase() -> BoxedStrategy<RecreatePhase> {
    prop_oneof![
        Just(RecreatePhase::Pending),
        Just(RecreatePhase::Recreating),
        Just(RecreatePhase::Succeeded),
        Just(RecreatePhase::Failed),
        Just(RecreatePhase::Unknown),
    ]
    .boxed()
}

fn container_phase() -> BoxedStrategy<ContainerRecreatePhase> {
    use ContainerRecreatePhase::*;
    prop_oneof![
        Just(Pending),
        Just(Unready),
        Just(ShuttingDown),
        Just(Stopping),
        Just(WaitingForRestart),
        Just(WaitingForReady),
        Just(Succeeded),
        Just(Failed),
        Just(Unknown),
    ]
    .boxed()
}

fn time() -> BoxedStrategy<Option<Time>> {
    proptest::option::of(timestamp().prop_map(Time)).boxed()
}

fn container_state(names: Vec<String>) -> BoxedStrategy<ContainerRecreateState> {
    (
        proptest::sample::select(names),
        container_phase(),
        proptest::option::of(text()),
        proptest::option::of(i32_extreme()),
        (time(), time(), time(), time(), time(), time()),
    )
        .prop_map(
            |(name, phase, message, restart_count, t)| ContainerRecreateState {
                name,
                phase,
                message,
                restart_count,
                previous_container_id: Some("containerd://old".into()),
                new_container_id: None,
                timestamps: StepTimestamps {
                    unready: t.0,
                    shutdown: t.1,
                    stop: t.2,
                    restarted: t.3,
                    ready: t.4,
                    finished: t.5,
                },
            },
        )
        .boxed()
}

/// Container names: the spec's (some unicode or empty, which the schema would refuse but a
/// stored object may still hold).
fn names() -> BoxedStrategy<Vec<String>> {
    prop_oneof![
        Just(vec!["db".to_string()]),
        Just(vec!["db".to_string(), "sidecar".to_string()]),
        Just(vec![String::new(), "ü".to_string()]),
    ]
    .boxed()
}

/// States for some of `names`, each at most once (as a report or status holds them).
fn states(names: Vec<String>) -> BoxedStrategy<Vec<ContainerRecreateState>> {
    proptest::collection::vec(container_state(names), 0..3)
        .prop_map(|mut states| {
            let mut seen = std::collections::HashSet::new();
            states.retain(|s| seen.insert(s.name.clone()));
            states
        })
        .boxed()
}

fn status(names: Vec<String>) -> BoxedStrategy<ContainerRecreateRequestStatus> {
    (
        request_phase(),
        proptest::option::of(text()),
        time(),
        time(),
        proptest::option::of(timestamp()),
        states(names),
    )
        .prop_map(
            |(phase, message, start_time, completion_time, last_report, states)| {
                ContainerRecreateRequestStatus {
                    phase,
                    message,
                    start_time,
                    completion_time,
                    last_report_time: last_report.map(MicroTime),
                    container_recreate_states: states,
                    ..Default::default()
                }
            },
        )
        .boxed()
}

fn spec(names: Vec<String>) -> BoxedStrategy<ContainerRecreateRequestSpec> {
    (
        proptest::option::of(i64_extreme()),
        proptest::option::of(i32_extreme()),
        proptest::option::of(i64_extreme()),
        proptest::option::of(i64_extreme()),
        proptest::option::of(i32_extreme()),
    )
        .prop_map(move |(deadline, ttl, grace, unready, min_started)| {
            ContainerRecreateRequestSpec {
                pod_name: "db-0".into(),
                containers: names
                    .iter()
                    .map(|n| ContainerRecreateRequestContainer {
                        name: n.clone(),
                        shutdown: None,
                    })
                    .collect(),
                strategy: Some(ContainerRecreateRequestStrategy {
                    termination_grace_period_seconds: grace,
                    unready_grace_period_seconds: unready,
                    min_started_seconds: min_started,
                    ..Default::default()
                }),
                active_deadline_seconds: deadline,
                ttl_seconds_after_finished: ttl,
            }
        })
        .boxed()
}

/// A request (spec and maybe status) over one set of container names.
fn request() -> BoxedStrategy<ContainerRecreateRequest> {
    names()
        .prop_flat_map(|names| {
            (
                spec(names.clone()),
                proptest::option::of(status(names)),
                timestamp(),
                any::<bool>(),
            )
                .prop_map(|(spec, status, created, labelled)| {
                    let mut r = ContainerRecreateRequest::new("r", spec);
                    r.metadata.namespace = Some("default".into());
                    r.metadata.creation_timestamp = Some(Time(created));
                    if labelled {
                        r.metadata.labels =
                            Some([(LABEL_POD_UID.to_string(), "uid-1".into())].into());
                    }
                    r.status = status;
                    r
                })
        })
        .boxed()
}

fn agent_timeout() -> BoxedStrategy<Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        Just(Duration::from_secs(u64::MAX)),
        (0u64..1_000_000).prop_map(Duration::from_secs),
    ]
    .boxed()
}

fn predecessor() -> BoxedStrategy<Predecessor> {
    prop_oneof![
        Just(Predecessor::None),
        Just(Predecessor::Unfinished),
        timestamp().prop_map(Predecessor::FinishedAt),
    ]
    .boxed()
}

fn report(names: Vec<String>) -> BoxedStrategy<RecreateReport> {
    (
        prop_oneof![Just(u64::MAX), Just(0u64), any::<u64>()],
        request_phase(),
        proptest::option::of(text()),
        proptest::option::of(timestamp()),
        proptest::option::of(timestamp()),
        states(names),
    )
        .prop_map(
            |(sequence, phase, message, start_time, completion_time, containers)| RecreateReport {
                request: RequestRef {
                    namespace: "default".into(),
                    name: "r".into(),
                    uid: "u".into(),
                },
                pod_name: None,
                sequence,
                phase,
                message,
                start_time,
                completion_time,
                containers,
            },
        )
        .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Lifecycle: no input panics; a finished request is never failed again; a request in a
    /// newer release's phase is left alone; the deadline fails a request exactly when creation
    /// plus the deadline is representable and reached (an unrepresentable one saturates: never).
    #[test]
    fn lifecycle_decisions_never_panic_and_keep_their_promises(
        request in request(),
        pod in proptest::option::of((proptest::option::of(i64_extreme()), any::<bool>())),
        predecessor in predecessor(),
        last_report in proptest::option::of(timestamp()),
        watching_since in timestamp(),
        now in timestamp(),
        agent_timeout in agent_timeout(),
    ) {
        let o = Observed {
            request: &request,
            pod: pod.map(|(grace, held)| PodView {
                uid: "uid-1".into(),
                termination_grace_seconds: grace,
                gate_held_by_request: held,
            }),
            predecessor,
            last_report,
            watching_since,
            now,
            agent_timeout,
        };
        let decision = lifecycle::decide(&o);
        let status = request.status.clone().unwrap_or_default();
        if status.has_unknown() {
            prop_assert_eq!(&decision, &Decision::Wait(None));
        }
        if status.phase.is_finished() {
            prop_assert!(!matches!(decision, Decision::Fail { .. }), "{:?}", decision);
        }
        if let Decision::Fail { reason: FailReason::DeadlineExceeded, .. } = &decision {
            let created = request.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap();
            let seconds = request.spec.active_deadline_seconds.unwrap();
            let deadline = created.checked_add(SignedDuration::from_secs(seconds.max(0)));
            prop_assert!(deadline.is_ok_and(|d| now >= d));
        }
        if let Decision::Wait(Some(after)) = decision {
            // A timer, not a hang: it comes from a representable time after now.
            prop_assert!(after <= Duration::from_secs(2 * 366 * 86_400 * 10_000));
        }
        // A finished request past a representable TTL is deleted, and only then.
        if let Decision::Delete = decision {
            prop_assert!(status.phase.is_finished());
            prop_assert!(request.spec.ttl_seconds_after_finished.is_some());
        }
    }

    /// `heartbeat_due`: no input panics; never for a finished request; always without a stored
    /// time.
    #[test]
    fn heartbeat_throttling_never_panics(
        status in status(vec!["db".into()]),
        now in timestamp(),
        agent_timeout in agent_timeout(),
    ) {
        let due = lifecycle::heartbeat_due(&status, now, agent_timeout);
        if status.phase.is_finished() {
            prop_assert!(!due);
        } else if status.last_report_time.is_none() {
            prop_assert!(due);
        }
    }

    /// A request the coordinator fails ends Failed, completed, with every container of its spec
    /// Succeeded or Failed with a message; a container already finished keeps its phase.
    #[test]
    fn a_failed_request_leaves_no_container_unfinished(
        request in request(),
        message in text(),
        now in timestamp(),
    ) {
        let before = request.status.clone();
        let failed = lifecycle::failed(&request.spec.containers, before.as_ref(), &message, now);
        prop_assert_eq!(failed.phase, RecreatePhase::Failed);
        prop_assert!(failed.completion_time.is_some());
        prop_assert_eq!(failed.message.as_deref(), Some(message.as_str()));
        for c in &request.spec.containers {
            let state = failed.container_recreate_states.iter().find(|s| s.name == c.name);
            prop_assert!(state.is_some(), "container {:?} missing", c.name);
            let state = state.unwrap();
            let earlier = before
                .iter()
                .flat_map(|s| &s.container_recreate_states)
                .find(|s| s.name == c.name);
            if state.phase != ContainerRecreatePhase::Unknown {
                prop_assert!(state.phase.is_finished(), "{:?}", state);
                prop_assert!(state.timestamps.finished.is_some() || earlier.is_some_and(|e| e.phase.is_finished()), "{:?}", state);
            }
            // Ended by this failure: it says what happened to it.
            if earlier.is_none_or(|e| !e.phase.is_finished() && e.phase != ContainerRecreatePhase::Unknown) {
                prop_assert!(state.message.is_some(), "{:?}", state);
            }
            if let Some(earlier) = earlier {
                prop_assert!(!earlier.phase.is_after(state.phase), "{:?} -> {:?}", earlier, state);
                if earlier.phase.is_finished() {
                    prop_assert_eq!(earlier.phase, state.phase);
                }
            }
        }
    }

    /// Merge: no report panics the coordinator; an accepted report carries no time beyond now
    /// plus the allowed skew and no message over the bound; status never moves back a phase
    /// (the request's or a container's); a finished status or one of a newer release never
    /// changes; what is merged can be written back (serialized).
    #[test]
    fn merging_reports_is_monotonic_and_bounded(
        (spec, current, report) in names().prop_flat_map(|names| (
            spec(names.clone()),
            proptest::option::of(status(names.clone())),
            report(names),
        )),
        now in timestamp(),
    ) {
        let latest = now
            .checked_add(SignedDuration::from_secs(MAX_CLOCK_SKEW.as_secs() as i64))
            .unwrap_or(Timestamp::MAX);
        if let Ok(checked) = merge::check_report(&report, now) {
            for t in [checked.start_time, checked.completion_time].into_iter().flatten() {
                prop_assert!(t <= latest);
            }
            for c in &checked.containers {
                prop_assert!(c.message.as_ref().is_none_or(|m| m.len() <= MAX_MESSAGE_BYTES));
                let t = &c.timestamps;
                for time in [&t.unready, &t.shutdown, &t.stop, &t.restarted, &t.ready, &t.finished]
                    .into_iter()
                    .flatten()
                {
                    prop_assert!(time.0 <= latest);
                }
            }
            prop_assert!(checked.message.as_ref().is_none_or(|m| m.len() <= MAX_MESSAGE_BYTES));
        }
        let Ok(merged) = merge::merge_report(&spec, current.as_ref(), &report, now) else {
            return Ok(());
        };
        let old = current.clone().unwrap_or_default();
        if old.phase.is_finished() || old.has_unknown() {
            prop_assert_eq!(&merged.status, &old);
            prop_assert!(!merged.changed);
            return Ok(());
        }
        prop_assert!(!old.phase.is_after(merged.status.phase), "{:?} -> {:?}", old.phase, merged.status.phase);
        for earlier in &old.container_recreate_states {
            let now_state = merged.status.container_recreate_states.iter().find(|s| s.name == earlier.name);
            prop_assert!(now_state.is_some());
            let now_state = now_state.unwrap();
            prop_assert!(!earlier.phase.is_after(now_state.phase), "{:?} -> {:?}", earlier.phase, now_state.phase);
        }
        if merged.status.phase == RecreatePhase::Failed {
            for state in &merged.status.container_recreate_states {
                if state.phase != ContainerRecreatePhase::Unknown {
                    prop_assert!(state.phase.is_finished(), "{:?}", state);
                }
            }
        }
        prop_assert!(
            serde_json::to_value(&merged.status).is_ok(),
            "a merged status must be writable: {:?}",
            merged.status
        );
    }

    /// Readiness: no pod panics the gate decisions; a hold written for a request reads back as
    /// that request; a pod without the gate is never changed.
    #[test]
    fn readiness_decisions_never_panic_and_holds_read_back(
        namespace in prop_oneof![Just("default".to_string()), "[a-z0-9-]{1,20}", "\\PC{1,10}"],
        name in prop_oneof![Just("r".to_string()), "\\PC{1,20}"],
        gated in any::<bool>(),
        condition in proptest::option::of((
            prop_oneof![Just("True".to_string()), Just("False".to_string()), text()],
            proptest::option::of(prop_oneof![Just(readiness::REASON_HELD.to_string()), text()]),
            proptest::option::of(text()),
        )),
        ready in any::<bool>(),
        resource_version in text(),
        now in timestamp(),
    ) {
        let holder = GateHolder::new(&namespace, &name);
        if !namespace.contains('/') {
            prop_assert_eq!(GateHolder::from_message(&holder.message()), Some(holder.clone()));
        }
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "db-0", "namespace": "default"},
            "spec": {"containers": [], "readinessGates":
                if gated { json!([{"conditionType": READINESS_GATE}]) } else { json!([]) }},
            "status": {"conditions": condition.iter().map(|(status, reason, message)| json!({
                "type": READINESS_GATE, "status": status, "reason": reason, "message": message,
            })).collect::<Vec<_>>()},
        }))
        .unwrap();
        let change = readiness::gate_change(&pod, ready, &holder);
        if !gated {
            prop_assert_eq!(&change, &GateChange::NotGated);
        }
        let _ = readiness::holder(&pod);
        let _ = readiness::needs_opening(&pod);
        let _ = readiness::is_held_by(&pod, &holder);
        let patch = readiness::gate_patch(ready, &holder, &resource_version, now);
        prop_assert_eq!(&patch["metadata"]["resourceVersion"], &json!(resource_version));
        let _ = readiness::opening_patch(&resource_version, now);
        let _ = readiness::holder_gone_patch(&holder, &resource_version, now);
        // What a hold writes reads back as held by this request.
        if !ready && !namespace.contains('/') {
            let mut held = pod.clone();
            let mut condition = patch["status"]["conditions"][0].clone();
            // The coordinator's own clock, not input: a year before 0 is not what it reads back.
            if let Some(c) = condition.as_object_mut() {
                c.remove("lastTransitionTime");
            }
            held.status.as_mut().unwrap().conditions = Some(vec![serde_json::from_value(condition).unwrap()]);
            prop_assert!(readiness::is_held_by(&held, &holder));
            prop_assert_eq!(readiness::holder(&held), Some(holder.clone()));
        }
    }
}
