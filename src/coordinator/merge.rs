//! Merging an agent's report into a request's status so that status only moves forward.
//!
//! Reports are full snapshots of the agent's view, but they may arrive repeated, late or out of
//! order (an agent's queue after a coordinator outage, a restarted agent). The merge is therefore
//! monotonic: phases never go back, a finished request or container never changes phase again,
//! step timestamps keep the earliest value seen, and a stale report only fills gaps.

use std::collections::HashSet;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use relaunch_api::report::RecreateReport;
use relaunch_api::{
    ContainerRecreatePhase, ContainerRecreateRequestSpec, ContainerRecreateRequestStatus,
    ContainerRecreateState, RecreatePhase, StepTimestamps,
};

/// How far ahead of the coordinator's clock a reported time may be (node clocks drift a little;
/// a time further out is a broken clock or a forged report and is refused).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(120);
/// Longest message kept from a report (the request's and each container's); longer ones are cut
/// on a character boundary.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024;

/// Why a report cannot be merged (the agent sent something the request cannot contain).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error("containers not in the request: {}", .0.join(", "))]
    UnknownContainers(Vec<String>),
    #[error("container {0} appears more than once in the report")]
    DuplicateContainer(String),
    /// A phase this release does not know (from a newer agent): it could be read but never
    /// written back into status, so the report is refused instead of failing its write.
    #[error(
        "{0} has a phase this coordinator does not know; the agent is newer than the coordinator: upgrade the coordinator"
    )]
    UnknownPhase(String),
    #[error(
        "{field} {time} is later than the coordinator's clock ({now}) plus {}s; is the node's clock right?",
        MAX_CLOCK_SKEW.as_secs()
    )]
    FromTheFuture {
        field: String,
        time: Timestamp,
        now: Timestamp,
    },
}

/// Checks what a report says before anything is done with it, and bounds it: every time it
/// carries is at most [`MAX_CLOCK_SKEW`] ahead of `now` (a time from the future would be kept
/// forever as the earliest one seen, and would feed every deadline computed from status), and
/// messages are cut to [`MAX_MESSAGE_BYTES`]; a phase this release does not know is refused.
/// Returns the report to merge.
pub fn check_report(report: &RecreateReport, now: Timestamp) -> Result<RecreateReport, MergeError> {
    // `now` plus two minutes is representable unless the clock itself is at the end of time.
    let latest = now
        .checked_add(SignedDuration::from_secs(MAX_CLOCK_SKEW.as_secs() as i64))
        .unwrap_or(Timestamp::MAX);
    let future = |field: String, time: Timestamp| {
        (time > latest).then_some(MergeError::FromTheFuture { field, time, now })
    };
    let times = [
        ("startTime".to_string(), report.start_time),
        ("completionTime".to_string(), report.completion_time),
    ]
    .into_iter()
    .chain(report.containers.iter().flat_map(|c| {
        let t = &c.timestamps;
        [
            ("unready", &t.unready),
            ("shutdown", &t.shutdown),
            ("stop", &t.stop),
            ("restarted", &t.restarted),
            ("ready", &t.ready),
            ("finished", &t.finished),
        ]
        .into_iter()
        .map(|(step, time)| {
            (
                format!("container {} timestamps.{step}", c.name),
                time.as_ref().map(|t| t.0),
            )
        })
    }));
    for (field, time) in times {
        if let Some(error) = time.and_then(|t| future(field, t)) {
            return Err(error);
        }
    }
    if report.phase.is_unknown() {
        return Err(MergeError::UnknownPhase("the report".into()));
    }
    if let Some(c) = (report.containers.iter()).find(|c| c.phase == ContainerRecreatePhase::Unknown)
    {
        return Err(MergeError::UnknownPhase(format!("container {}", c.name)));
    }
    let mut bounded = report.clone();
    bound_message(&mut bounded.message);
    for c in &mut bounded.containers {
        bound_message(&mut c.message);
    }
    Ok(bounded)
}

/// Cuts a message to [`MAX_MESSAGE_BYTES`] on a character boundary.
fn bound_message(message: &mut Option<String>) {
    if let Some(m) = message
        && m.len() > MAX_MESSAGE_BYTES
    {
        let cut = crate::cut_at_char_boundary(m, MAX_MESSAGE_BYTES).len();
        m.truncate(cut);
    }
}

/// A step a person would look for in `kubectl describe`, derived from a status change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The agent started working on the request.
    Started,
    /// A container was stopped (`previous_id` is the container that was stopped).
    ContainerStopped {
        container: String,
        previous_id: Option<String>,
    },
    /// The kubelet started a new container in place of the stopped one.
    ContainerRestarted {
        container: String,
        previous_id: Option<String>,
        new_id: String,
        restart_count: Option<i32>,
    },
    Succeeded,
    Failed {
        message: String,
    },
}

/// The result of merging a report.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub status: ContainerRecreateRequestStatus,
    /// False when the report brought nothing new: nothing is written.
    pub changed: bool,
    pub steps: Vec<Step>,
}

/// Merges `report` into `current` (None: the request has no status yet). The report is checked
/// and bounded by [`check_report`] first.
pub fn merge_report(
    spec: &ContainerRecreateRequestSpec,
    current: Option<&ContainerRecreateRequestStatus>,
    report: &RecreateReport,
    now: Timestamp,
) -> Result<Merged, MergeError> {
    let report = &check_report(report, now)?;
    check_containers(spec, report)?;
    let report_start = report.start_time;
    let report_completion = report.completion_time;

    let old = current.cloned().unwrap_or_default();
    // Finished, or in a phase of a newer release that this one could not write back.
    if old.phase.is_finished() || old.has_unknown() {
        return Ok(Merged {
            status: old,
            changed: false,
            steps: Vec::new(),
        });
    }
    let mut new = old.clone();

    for reported in &report.containers {
        match new
            .container_recreate_states
            .iter_mut()
            .find(|c| c.name == reported.name)
        {
            Some(state) => merge_container(state, reported, now),
            None => {
                let mut state = reported.clone();
                if state.phase.is_finished() && state.timestamps.finished.is_none() {
                    state.timestamps.finished = Some(Time(now));
                }
                new.container_recreate_states.push(state);
            }
        }
    }
    let position = |name: &str| spec.containers.iter().position(|c| c.name == name);
    new.container_recreate_states
        .sort_by_key(|c| position(&c.name));

    // A Pending report whose own containers show progress is Recreating (the agent reports a
    // resumed request as queued); progress recorded earlier does not make a report current.
    let mut phase = report.phase;
    if phase == RecreatePhase::Pending
        && report
            .containers
            .iter()
            .any(|c| c.phase.is_after(ContainerRecreatePhase::Pending))
    {
        phase = RecreatePhase::Recreating;
    }
    if phase.is_after(old.phase) {
        new.phase = phase;
    }
    // A report behind neither the recorded phase nor any recorded container is the agent's
    // latest view: its message (or its lack of one) replaces the recorded one, so `queued: …`
    // does not outlive the queue.
    let behind = old.phase.is_after(phase)
        || report.containers.iter().any(|r| {
            old.container_recreate_states
                .iter()
                .any(|c| c.name == r.name && c.phase.is_after(r.phase))
        });
    if !behind {
        new.message = report.message.clone();
    }
    if new.phase == RecreatePhase::Failed && new.message.is_none() {
        new.message = Some(failure_message(&new.container_recreate_states));
    }
    // A request the agent failed leaves no container in a step that is still going on.
    if new.phase == RecreatePhase::Failed {
        let why = new.message.clone().unwrap_or_default();
        crate::lifecycle::interrupted(&spec.containers, &mut new, &why, now);
    }

    new.start_time = earliest(new.start_time.take(), report_start.map(Time));
    if !RecreatePhase::Recreating.is_after(new.phase) && new.start_time.is_none() {
        new.start_time = Some(Time(now));
    }
    if new.phase.is_finished() && new.completion_time.is_none() {
        new.completion_time = Some(Time(report_completion.unwrap_or(now)));
    }

    let changed = new != old;
    let steps = if changed {
        steps_between(&old, &new)
    } else {
        Vec::new()
    };
    Ok(Merged {
        status: new,
        changed,
        steps,
    })
}

/// Checks that the report names only containers of the request, each once.
pub fn check_containers(
    spec: &ContainerRecreateRequestSpec,
    report: &RecreateReport,
) -> Result<(), MergeError> {
    let mut seen = HashSet::new();
    let mut unknown = Vec::new();
    for c in &report.containers {
        if !seen.insert(c.name.as_str()) {
            return Err(MergeError::DuplicateContainer(c.name.clone()));
        }
        if !spec.containers.iter().any(|s| s.name == c.name) {
            unknown.push(c.name.clone());
        }
    }
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(MergeError::UnknownContainers(unknown))
    }
}

/// Merges one container's reported state into the recorded one.
fn merge_container(
    state: &mut ContainerRecreateState,
    reported: &ContainerRecreateState,
    now: Timestamp,
) {
    // A report that is not behind the recorded phase is current: its values win. A stale one
    // (or any report about a finished container) only fills what is still missing.
    let current = !state.phase.is_finished() && !state.phase.is_after(reported.phase);
    if current {
        state.phase = reported.phase;
    }
    take(
        &mut state.previous_container_id,
        &reported.previous_container_id,
        current,
    );
    take(
        &mut state.new_container_id,
        &reported.new_container_id,
        current,
    );
    take(&mut state.restart_count, &reported.restart_count, current);
    take(&mut state.message, &reported.message, current);
    merge_timestamps(&mut state.timestamps, &reported.timestamps);
    if state.phase.is_finished() && state.timestamps.finished.is_none() {
        state.timestamps.finished = Some(Time(now));
    }
}

fn take<T: Clone>(field: &mut Option<T>, reported: &Option<T>, overwrite: bool) {
    if reported.is_some() && (overwrite || field.is_none()) {
        field.clone_from(reported);
    }
}

fn merge_timestamps(recorded: &mut StepTimestamps, reported: &StepTimestamps) {
    let pairs = [
        (&mut recorded.unready, &reported.unready),
        (&mut recorded.shutdown, &reported.shutdown),
        (&mut recorded.stop, &reported.stop),
        (&mut recorded.restarted, &reported.restarted),
        (&mut recorded.ready, &reported.ready),
        (&mut recorded.finished, &reported.finished),
    ];
    for (field, value) in pairs {
        *field = earliest(field.take(), value.clone());
    }
}

fn earliest(a: Option<Time>, b: Option<Time>) -> Option<Time> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The overall message of a failed request the agent did not explain: its failed containers'.
fn failure_message(states: &[ContainerRecreateState]) -> String {
    let failed: Vec<String> = states
        .iter()
        .filter(|c| c.phase == ContainerRecreatePhase::Failed)
        .map(|c| match &c.message {
            Some(m) => format!("container {}: {m}", c.name),
            None => format!("container {} failed", c.name),
        })
        .collect();
    if failed.is_empty() {
        "the agent reported the request as failed".into()
    } else {
        failed.join("; ")
    }
}

/// The steps that happened between two statuses of one request, in the order they happened.
pub fn steps_between(
    old: &ContainerRecreateRequestStatus,
    new: &ContainerRecreateRequestStatus,
) -> Vec<Step> {
    let mut steps = Vec::new();
    if old.phase == RecreatePhase::Pending && new.phase != RecreatePhase::Pending {
        steps.push(Step::Started);
    }
    for state in &new.container_recreate_states {
        let before = old
            .container_recreate_states
            .iter()
            .find(|c| c.name == state.name);
        let phase_before = before.map_or(ContainerRecreatePhase::Pending, |c| c.phase);
        let stopped = |p: ContainerRecreatePhase| {
            !ContainerRecreatePhase::WaitingForRestart.is_after(p)
                && p != ContainerRecreatePhase::Failed
        };
        if stopped(state.phase) && !stopped(phase_before) {
            steps.push(Step::ContainerStopped {
                container: state.name.clone(),
                previous_id: state.previous_container_id.clone(),
            });
        }
        let new_id_before = before.and_then(|c| c.new_container_id.as_ref());
        if let Some(new_id) = &state.new_container_id
            && new_id_before != Some(new_id)
        {
            steps.push(Step::ContainerRestarted {
                container: state.name.clone(),
                previous_id: state.previous_container_id.clone(),
                new_id: new_id.clone(),
                restart_count: state.restart_count,
            });
        }
    }
    if !old.phase.is_finished() {
        match new.phase {
            RecreatePhase::Succeeded => steps.push(Step::Succeeded),
            RecreatePhase::Failed => steps.push(Step::Failed {
                message: new.message.clone().unwrap_or_default(),
            }),
            _ => {}
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaunch_api::ContainerRecreateRequestContainer;
    use relaunch_api::report::RequestRef;

    fn spec(names: &[&str]) -> ContainerRecreateRequestSpec {
        ContainerRecreateRequestSpec {
            pod_name: "db-0".into(),
            containers: names
                .iter()
                .map(|n| ContainerRecreateRequestContainer {
                    name: n.to_string(),
                    shutdown: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn report(phase: RecreatePhase, containers: Vec<ContainerRecreateState>) -> RecreateReport {
        RecreateReport {
            request: RequestRef {
                namespace: "default".into(),
                name: "r".into(),
                uid: "u".into(),
            },
            pod_name: None,
            sequence: 1,
            phase,
            message: None,
            start_time: None,
            completion_time: None,
            containers,
        }
    }

    #[test]
    fn a_status_in_a_phase_of_a_newer_release_is_left_alone() {
        let spec = ContainerRecreateRequestSpec {
            pod_name: "p".into(),
            containers: vec![ContainerRecreateRequestContainer {
                name: "app".into(),
                shutdown: None,
            }],
            ..Default::default()
        };
        for status in [
            ContainerRecreateRequestStatus {
                phase: RecreatePhase::Unknown,
                ..Default::default()
            },
            ContainerRecreateRequestStatus {
                phase: RecreatePhase::Recreating,
                container_recreate_states: vec![container("app", ContainerRecreatePhase::Unknown)],
                ..Default::default()
            },
        ] {
            let merged = merge_report(
                &spec,
                Some(&status),
                &report(
                    RecreatePhase::Failed,
                    vec![container("app", ContainerRecreatePhase::Failed)],
                ),
                Timestamp::from_second(1_700_000_000).unwrap(),
            )
            .unwrap();
            assert!(!merged.changed, "{status:?}");
            assert_eq!(merged.status, status);
        }
    }

    fn container(name: &str, phase: ContainerRecreatePhase) -> ContainerRecreateState {
        ContainerRecreateState {
            name: name.into(),
            phase,
            ..Default::default()
        }
    }

    fn apply(
        spec: &ContainerRecreateRequestSpec,
        status: Option<&ContainerRecreateRequestStatus>,
        r: &RecreateReport,
    ) -> Merged {
        merge_report(spec, status, r, at(100)).unwrap()
    }

    #[test]
    fn first_report_starts_the_request() {
        let s = spec(&["app"]);
        let mut c = container("app", ContainerRecreatePhase::ShuttingDown);
        c.previous_container_id = Some("containerd://a".into());
        let merged = apply(&s, None, &report(RecreatePhase::Recreating, vec![c]));
        assert!(merged.changed);
        assert_eq!(merged.status.phase, RecreatePhase::Recreating);
        assert_eq!(merged.status.start_time, Some(Time(at(100))));
        assert_eq!(merged.steps, vec![Step::Started]);
    }

    #[test]
    fn repeated_report_changes_nothing() {
        let s = spec(&["app"]);
        let r = report(
            RecreatePhase::Recreating,
            vec![container("app", ContainerRecreatePhase::Stopping)],
        );
        let first = apply(&s, None, &r);
        let again = merge_report(&s, Some(&first.status), &r, at(500)).unwrap();
        assert!(!again.changed);
        assert!(again.steps.is_empty());
        assert_eq!(again.status, first.status);
    }

    #[test]
    fn late_recreating_report_after_success_changes_nothing() {
        let s = spec(&["app"]);
        let done = apply(
            &s,
            None,
            &report(
                RecreatePhase::Succeeded,
                vec![container("app", ContainerRecreatePhase::Succeeded)],
            ),
        );
        let late = apply(
            &s,
            Some(&done.status),
            &report(
                RecreatePhase::Recreating,
                vec![container("app", ContainerRecreatePhase::Stopping)],
            ),
        );
        assert!(!late.changed);
        assert_eq!(late.status.phase, RecreatePhase::Succeeded);
    }

    #[test]
    fn failed_request_stays_failed_when_success_arrives_late() {
        let s = spec(&["app"]);
        let failed = ContainerRecreateRequestStatus {
            phase: RecreatePhase::Failed,
            message: Some("deadline exceeded".into()),
            ..Default::default()
        };
        let merged = apply(
            &s,
            Some(&failed),
            &report(
                RecreatePhase::Succeeded,
                vec![container("app", ContainerRecreatePhase::Succeeded)],
            ),
        );
        assert!(!merged.changed);
        assert_eq!(merged.status, failed);
    }

    #[test]
    fn stale_container_phase_does_not_go_back_but_fills_gaps() {
        let s = spec(&["app"]);
        let mut ahead = container("app", ContainerRecreatePhase::WaitingForRestart);
        ahead.timestamps.stop = Some(Time(at(10)));
        let first = apply(&s, None, &report(RecreatePhase::Recreating, vec![ahead]));
        let mut stale = container("app", ContainerRecreatePhase::ShuttingDown);
        stale.previous_container_id = Some("containerd://old".into());
        stale.timestamps.shutdown = Some(Time(at(5)));
        stale.message = Some("running preStop".into());
        let merged = apply(
            &s,
            Some(&first.status),
            &report(RecreatePhase::Recreating, vec![stale]),
        );
        let c = &merged.status.container_recreate_states[0];
        assert_eq!(c.phase, ContainerRecreatePhase::WaitingForRestart);
        assert_eq!(c.previous_container_id.as_deref(), Some("containerd://old"));
        assert_eq!(c.timestamps.shutdown, Some(Time(at(5))));
        assert_eq!(c.timestamps.stop, Some(Time(at(10))));
        assert_eq!(c.message.as_deref(), Some("running preStop"));
    }

    #[test]
    fn stale_report_does_not_overwrite_known_values() {
        let s = spec(&["app"]);
        let mut ahead = container("app", ContainerRecreatePhase::WaitingForReady);
        ahead.new_container_id = Some("containerd://new".into());
        ahead.restart_count = Some(3);
        ahead.message = Some("waiting for ready".into());
        let first = apply(&s, None, &report(RecreatePhase::Recreating, vec![ahead]));
        let mut stale = container("app", ContainerRecreatePhase::Stopping);
        stale.new_container_id = Some("containerd://other".into());
        stale.restart_count = Some(2);
        stale.message = Some("stopping".into());
        let merged = apply(
            &s,
            Some(&first.status),
            &report(RecreatePhase::Recreating, vec![stale]),
        );
        assert!(!merged.changed);
    }

    #[test]
    fn current_report_overwrites_values() {
        let s = spec(&["app"]);
        let mut before = container("app", ContainerRecreatePhase::Stopping);
        before.message = Some("stopping".into());
        let first = apply(&s, None, &report(RecreatePhase::Recreating, vec![before]));
        let mut after = container("app", ContainerRecreatePhase::WaitingForRestart);
        after.message = Some("waiting for the kubelet".into());
        let merged = apply(
            &s,
            Some(&first.status),
            &report(RecreatePhase::Recreating, vec![after]),
        );
        let c = &merged.status.container_recreate_states[0];
        assert_eq!(c.message.as_deref(), Some("waiting for the kubelet"));
    }

    #[test]
    fn earliest_timestamps_are_kept() {
        let s = spec(&["app"]);
        let mut a = container("app", ContainerRecreatePhase::Stopping);
        a.timestamps.shutdown = Some(Time(at(20)));
        let first = apply(&s, None, &report(RecreatePhase::Recreating, vec![a]));
        let mut b = container("app", ContainerRecreatePhase::Stopping);
        b.timestamps.shutdown = Some(Time(at(10)));
        b.timestamps.stop = Some(Time(at(30)));
        let merged = apply(
            &s,
            Some(&first.status),
            &report(RecreatePhase::Recreating, vec![b]),
        );
        let t = &merged.status.container_recreate_states[0].timestamps;
        assert_eq!(t.shutdown, Some(Time(at(10))));
        assert_eq!(t.stop, Some(Time(at(30))));
        let mut c = container("app", ContainerRecreatePhase::Stopping);
        c.timestamps.shutdown = Some(Time(at(40)));
        let merged = apply(
            &s,
            Some(&merged.status),
            &report(RecreatePhase::Recreating, vec![c]),
        );
        assert!(!merged.changed);
    }

    #[test]
    fn finished_container_is_sticky_but_fills_gaps() {
        let s = spec(&["app"]);
        let first = apply(
            &s,
            None,
            &report(
                RecreatePhase::Recreating,
                vec![container("app", ContainerRecreatePhase::Failed)],
            ),
        );
        let mut late = container("app", ContainerRecreatePhase::WaitingForReady);
        late.new_container_id = Some("containerd://n".into());
        late.timestamps.restarted = Some(Time(at(3)));
        let merged = apply(
            &s,
            Some(&first.status),
            &report(RecreatePhase::Recreating, vec![late]),
        );
        let c = &merged.status.container_recreate_states[0];
        assert_eq!(c.phase, ContainerRecreatePhase::Failed);
        assert_eq!(c.timestamps.restarted, Some(Time(at(3))));
        assert_eq!(c.new_container_id.as_deref(), Some("containerd://n"));
    }

    #[test]
    fn finished_container_gets_a_finished_timestamp() {
        let s = spec(&["app"]);
        let merged = apply(
            &s,
            None,
            &report(
                RecreatePhase::Succeeded,
                vec![container("app", ContainerRecreatePhase::Succeeded)],
            ),
        );
        let c = &merged.status.container_recreate_states[0];
        assert_eq!(c.timestamps.finished, Some(Time(at(100))));
        assert_eq!(merged.status.completion_time, Some(Time(at(100))));
    }

    #[test]
    fn reported_times_are_used() {
        let s = spec(&["app"]);
        let mut r = report(RecreatePhase::Succeeded, vec![]);
        r.start_time = Some("2023-11-14T22:13:30Z".parse().unwrap());
        r.completion_time = Some("2023-11-14T22:13:40Z".parse().unwrap());
        let merged = apply(&s, None, &r);
        assert_eq!(merged.status.start_time, Some(Time(at(10))));
        assert_eq!(merged.status.completion_time, Some(Time(at(20))));
    }

    #[test]
    fn unknown_and_duplicate_containers_are_rejected() {
        let s = spec(&["app"]);
        let r = report(
            RecreatePhase::Recreating,
            vec![container("sidecar", ContainerRecreatePhase::Stopping)],
        );
        assert_eq!(
            merge_report(&s, None, &r, at(0)),
            Err(MergeError::UnknownContainers(vec!["sidecar".into()]))
        );
        let r = report(
            RecreatePhase::Recreating,
            vec![
                container("app", ContainerRecreatePhase::Stopping),
                container("app", ContainerRecreatePhase::Stopping),
            ],
        );
        assert_eq!(
            merge_report(&s, None, &r, at(0)),
            Err(MergeError::DuplicateContainer("app".into()))
        );
    }

    #[test]
    fn times_from_the_future_are_refused_and_skew_is_allowed() {
        let s = spec(&["app"]);
        let year_9999: Timestamp = "9999-12-30T21:59:00Z".parse().unwrap();
        let mut far = container("app", ContainerRecreatePhase::Stopping);
        far.timestamps.stop = Some(Time(year_9999));
        let r = report(RecreatePhase::Recreating, vec![far]);
        match merge_report(&s, None, &r, at(0)) {
            Err(MergeError::FromTheFuture { field, time, .. }) => {
                assert_eq!(field, "container app timestamps.stop");
                assert_eq!(time, year_9999);
            }
            other => panic!("{other:?}"),
        }
        let mut r = report(RecreatePhase::Succeeded, vec![]);
        r.completion_time = Some(at(121));
        assert!(matches!(
            check_report(&r, at(0)),
            Err(MergeError::FromTheFuture { field, .. }) if field == "completionTime"
        ));
        r.completion_time = None;
        r.start_time = Some(Timestamp::MAX);
        assert!(check_report(&r, at(0)).is_err());
        // Within the allowance (a node clock a little ahead), and the distant past, pass.
        r.start_time = Some(at(120));
        assert!(check_report(&r, at(0)).is_ok());
        r.start_time = Some(Timestamp::MIN);
        assert!(check_report(&r, at(0)).is_ok());
        // The end of time as "now" does not overflow either.
        assert!(check_report(&r, Timestamp::MAX).is_ok());
    }

    /// Found by tests/report_fuzz.rs: an unknown phase was merged, its status could not be
    /// serialized for the write, and the agent got 503 (and retried for ever).
    #[test]
    fn phases_this_release_does_not_know_are_refused() {
        let s = spec(&["app"]);
        let r = report(RecreatePhase::Unknown, vec![]);
        assert_eq!(
            merge_report(&s, None, &r, at(0)),
            Err(MergeError::UnknownPhase("the report".into()))
        );
        let r = report(
            RecreatePhase::Recreating,
            vec![container("app", ContainerRecreatePhase::Unknown)],
        );
        assert_eq!(
            check_report(&r, at(0)),
            Err(MergeError::UnknownPhase("container app".into()))
        );
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let s = spec(&["app"]);
        let mut c = container("app", ContainerRecreatePhase::Stopping);
        // 3-byte characters: 8 KiB falls inside one.
        c.message = Some("€".repeat(5000));
        let mut r = report(RecreatePhase::Recreating, vec![c]);
        r.message = Some("x".repeat(MAX_MESSAGE_BYTES + 1));
        let merged = apply(&s, None, &r);
        let message = merged.status.message.unwrap();
        assert_eq!(message.len(), MAX_MESSAGE_BYTES);
        let container = merged.status.container_recreate_states[0]
            .message
            .clone()
            .unwrap();
        assert!(container.len() <= MAX_MESSAGE_BYTES);
        assert!(container.len() > MAX_MESSAGE_BYTES - 3);
        assert!(container.chars().all(|c| c == '€'));
    }

    #[test]
    fn container_states_follow_spec_order() {
        let s = spec(&["a", "b"]);
        let first = apply(
            &s,
            None,
            &report(
                RecreatePhase::Recreating,
                vec![container("b", ContainerRecreatePhase::Stopping)],
            ),
        );
        let merged = apply(
            &s,
            Some(&first.status),
            &report(
                RecreatePhase::Recreating,
                vec![container("a", ContainerRecreatePhase::Pending)],
            ),
        );
        let names: Vec<_> = merged
            .status
            .container_recreate_states
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn pending_report_with_progress_counts_as_recreating() {
        let s = spec(&["app"]);
        let merged = apply(
            &s,
            None,
            &report(
                RecreatePhase::Pending,
                vec![container("app", ContainerRecreatePhase::Unready)],
            ),
        );
        assert_eq!(merged.status.phase, RecreatePhase::Recreating);
    }

    #[test]
    fn pending_report_on_pending_request_changes_nothing() {
        let s = spec(&["app"]);
        let pending = ContainerRecreateRequestStatus::default();
        let merged = apply(&s, Some(&pending), &report(RecreatePhase::Pending, vec![]));
        assert!(!merged.changed);
    }

    #[test]
    fn the_message_follows_the_latest_report() {
        let s = spec(&["app"]);
        let mut queued = report(RecreatePhase::Pending, vec![]);
        queued.message = Some(
            "queued: the node is recreating as many containers as --max-parallel allows".into(),
        );
        let pending = apply(&s, None, &queued).status;
        assert_eq!(pending.message, queued.message);

        let started = report(
            RecreatePhase::Recreating,
            vec![container("app", ContainerRecreatePhase::ShuttingDown)],
        );
        let recreating = apply(&s, Some(&pending), &started).status;
        assert_eq!(recreating.phase, RecreatePhase::Recreating);
        assert_eq!(
            recreating.message, None,
            "queued: … is gone once recreating"
        );

        let mut waiting = started.clone();
        waiting.message = Some("waiting for the kubelet".into());
        let said = apply(&s, Some(&recreating), &waiting).status;
        assert_eq!(said.message.as_deref(), Some("waiting for the kubelet"));
        let cleared = apply(&s, Some(&said), &started).status;
        assert_eq!(
            cleared.message, None,
            "a later report of the same phase wins"
        );

        // A stale report (behind the recorded phase) does not bring its message back.
        let late = apply(&s, Some(&recreating), &queued);
        assert!(!late.changed, "{:?}", late.status.message);
        let mut stale = report(
            RecreatePhase::Recreating,
            vec![container("app", ContainerRecreatePhase::Unready)],
        );
        stale.message = Some("holding the pod NotReady".into());
        let late = apply(&s, Some(&said), &stale);
        assert_eq!(
            late.status.message.as_deref(),
            Some("waiting for the kubelet"),
            "a report with a container behind the recorded one is stale"
        );
    }

    #[test]
    fn failure_without_message_is_explained_by_containers() {
        let s = spec(&["app"]);
        let mut c = container("app", ContainerRecreatePhase::Failed);
        c.message = Some("restartPolicy Never".into());
        let merged = apply(&s, None, &report(RecreatePhase::Failed, vec![c]));
        assert_eq!(
            merged.status.message.as_deref(),
            Some("container app: restartPolicy Never")
        );
        assert_eq!(
            merged.steps.last(),
            Some(&Step::Failed {
                message: "container app: restartPolicy Never".into()
            })
        );
    }

    #[test]
    fn containers_left_unfinished_by_a_failed_report_end_failed() {
        let s = spec(&["app", "sidecar"]);
        let mut c = container("app", ContainerRecreatePhase::Failed);
        c.message = Some("restartPolicy Never".into());
        let merged = apply(&s, None, &report(RecreatePhase::Failed, vec![c]));
        let states = &merged.status.container_recreate_states;
        assert_eq!(states.len(), 2);
        assert_eq!(states[0].message.as_deref(), Some("restartPolicy Never"));
        assert_eq!(states[1].name, "sidecar");
        assert_eq!(states[1].phase, ContainerRecreatePhase::Failed);
        assert_eq!(
            states[1].message.as_deref(),
            Some(
                "not started: the request failed before this container's turn \
                 (container app: restartPolicy Never)"
            )
        );
    }

    /// Issue 11: the agent's journal check refuses a request whose journal entry cannot be
    /// trusted, reporting Failed with no container (nothing was journaled for them, nothing was
    /// done). Every container of the request still ends Failed with a message saying why, also
    /// one the status showed in a step.
    #[test]
    fn a_journal_refusal_with_no_containers_ends_every_container_failed_with_a_message() {
        let s = spec(&["app", "sidecar"]);
        let why = "refused: the journal entry for this request cannot be read (expected value at line 1 column 20); acting on it could restart a container twice";
        let mut refusal = report(RecreatePhase::Failed, vec![]);
        refusal.message = Some(why.into());
        let admitted = ContainerRecreateRequestStatus {
            phase: RecreatePhase::Pending,
            admitted_generation: Some(1),
            ..Default::default()
        };
        let merged = apply(&s, Some(&admitted), &refusal);
        assert_eq!(merged.status.phase, RecreatePhase::Failed);
        assert_eq!(merged.status.message.as_deref(), Some(why));
        assert_eq!(merged.status.admitted_generation, Some(1), "kept");
        let states = &merged.status.container_recreate_states;
        assert_eq!(
            states.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["app", "sidecar"]
        );
        for c in states {
            assert_eq!(c.phase, ContainerRecreatePhase::Failed, "{c:?}");
            assert_eq!(
                c.message.as_deref(),
                Some(
                    format!("not started: the request failed before this container's turn ({why})")
                        .as_str()
                )
            );
            assert!(c.timestamps.finished.is_some());
        }
        // A container the status showed in a step says it was interrupted.
        let mut running = admitted.clone();
        running.phase = RecreatePhase::Recreating;
        running.container_recreate_states =
            vec![container("app", ContainerRecreatePhase::Stopping)];
        let merged = apply(&s, Some(&running), &refusal);
        let app = &merged.status.container_recreate_states[0];
        assert_eq!(app.phase, ContainerRecreatePhase::Failed);
        assert_eq!(
            app.message.as_deref(),
            Some(
                format!(
                    "interrupted: the request failed while this container was Stopping ({why})"
                )
                .as_str()
            )
        );
    }

    #[test]
    fn steps_name_stopped_and_restarted_containers() {
        let s = spec(&["app"]);
        let mut stopping = container("app", ContainerRecreatePhase::Stopping);
        stopping.previous_container_id = Some("containerd://old".into());
        let first = apply(&s, None, &report(RecreatePhase::Recreating, vec![stopping]));
        assert_eq!(first.steps, vec![Step::Started]);

        let mut stopped = container("app", ContainerRecreatePhase::WaitingForRestart);
        stopped.previous_container_id = Some("containerd://old".into());
        let second = apply(
            &s,
            Some(&first.status),
            &report(RecreatePhase::Recreating, vec![stopped]),
        );
        assert_eq!(
            second.steps,
            vec![Step::ContainerStopped {
                container: "app".into(),
                previous_id: Some("containerd://old".into())
            }]
        );

        let mut done = container("app", ContainerRecreatePhase::Succeeded);
        done.new_container_id = Some("containerd://new".into());
        done.restart_count = Some(1);
        let third = apply(
            &s,
            Some(&second.status),
            &report(RecreatePhase::Succeeded, vec![done]),
        );
        assert_eq!(
            third.steps,
            vec![
                Step::ContainerRestarted {
                    container: "app".into(),
                    previous_id: Some("containerd://old".into()),
                    new_id: "containerd://new".into(),
                    restart_count: Some(1)
                },
                Step::Succeeded
            ]
        );
    }

    #[test]
    fn a_failed_stop_is_not_a_stopped_container() {
        let s = spec(&["app"]);
        let merged = apply(
            &s,
            None,
            &report(
                RecreatePhase::Failed,
                vec![container("app", ContainerRecreatePhase::Failed)],
            ),
        );
        assert!(
            !merged
                .steps
                .iter()
                .any(|s| matches!(s, Step::ContainerStopped { .. }))
        );
    }

    /// Whatever order reports arrive in, the phases never go back.
    #[test]
    fn phases_never_go_back_in_any_order() {
        use ContainerRecreatePhase as C;
        let s = spec(&["app"]);
        let sequence = [
            (RecreatePhase::Pending, C::Pending),
            (RecreatePhase::Recreating, C::Unready),
            (RecreatePhase::Recreating, C::ShuttingDown),
            (RecreatePhase::Recreating, C::Stopping),
            (RecreatePhase::Recreating, C::WaitingForRestart),
            (RecreatePhase::Recreating, C::WaitingForReady),
            (RecreatePhase::Succeeded, C::Succeeded),
        ];
        // Every order of a 7-report sequence would be 5040 cases; all pairs and reversed runs are enough.
        let mut orders: Vec<Vec<usize>> = vec![(0..7).rev().collect()];
        for i in 0..7 {
            for j in 0..7 {
                orders.push(vec![i, j, i]);
            }
        }
        for order in orders {
            let mut status: Option<ContainerRecreateRequestStatus> = None;
            for i in order {
                let (phase, cphase) = sequence[i];
                let merged = apply(
                    &s,
                    status.as_ref(),
                    &report(phase, vec![container("app", cphase)]),
                );
                if let Some(before) = &status {
                    assert!(!before.phase.is_after(merged.status.phase));
                    let (b, a) = (
                        before.container_recreate_states.first().map(|c| c.phase),
                        merged.status.container_recreate_states[0].phase,
                    );
                    assert!(b.is_none_or(|b| !b.is_after(a)));
                }
                status = Some(merged.status);
            }
        }
    }
}
