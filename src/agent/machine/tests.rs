use super::*;
use crate::plan::{ShutdownSource, ShutdownStep};

const OLD: &str = "containerd://aaa";
const NEW: &str = "containerd://bbb";

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + s).unwrap()
}

fn plan() -> ContainerPlan {
    ContainerPlan {
        name: "db".into(),
        shutdown: None,
        grace: Duration::from_secs(10),
        unready_grace: None,
        min_started: Duration::ZERO,
        force: false,
    }
}

fn running(id: &str, restarts: i32) -> PodContainerView {
    PodContainerView {
        container_id: Some(id.into()),
        restart_count: restarts,
        ready: true,
        started: true,
        running: true,
    }
}

fn obs(now: i64, pod: Option<PodContainerView>, runtime: Option<RuntimeView>) -> Observation {
    Observation {
        now: t(now),
        pod,
        runtime,
    }
}

fn rt(newest: &str, newest_running: bool, previous_running: bool) -> RuntimeView {
    RuntimeView {
        newest_id: Some(raw_id(newest).into()),
        newest_running,
        previous_running,
    }
}

/// Drives a container from Pending to Succeeded with a cooperative world.
#[test]
fn happy_path_stops_the_old_container_once_and_succeeds_when_the_new_one_is_ready() {
    let plan = plan();
    let mut p = ContainerProgress::new("db");
    let d = decide(&mut p, &plan, &obs(0, Some(running(OLD, 3)), None), None);
    assert_eq!(d, Decision::ObserveRuntime);
    assert_eq!(p.phase, ContainerRecreatePhase::Stopping);
    assert_eq!(p.previous_container_id.as_deref(), Some(OLD));
    let d = decide(
        &mut p,
        &plan,
        &obs(0, Some(running(OLD, 3)), Some(rt(OLD, true, true))),
        None,
    );
    assert_eq!(
        d,
        Decision::Stop {
            container_id: "aaa".into(),
            grace: Duration::from_secs(10)
        }
    );
    p.stop_done(t(1));
    assert_eq!(p.phase, ContainerRecreatePhase::WaitingForRestart);
    // The pod status still shows the old container: wait.
    let d = decide(&mut p, &plan, &obs(2, Some(running(OLD, 3)), None), None);
    assert!(matches!(d, Decision::Wait { .. }));
    // New ID but restartCount did not grow yet: wait.
    let d = decide(&mut p, &plan, &obs(2, Some(running(NEW, 3)), None), None);
    assert!(matches!(d, Decision::Wait { .. }));
    let d = decide(&mut p, &plan, &obs(3, Some(running(NEW, 4)), None), None);
    assert_eq!(d, Decision::ObserveRuntime);
    let d = decide(
        &mut p,
        &plan,
        &obs(3, Some(running(NEW, 4)), Some(rt(NEW, true, false))),
        None,
    );
    assert_eq!(d, Decision::Finished);
    assert_eq!(p.phase, ContainerRecreatePhase::Succeeded);
    assert_eq!(p.new_container_id.as_deref(), Some(NEW));
    assert_eq!(p.restart_count, Some(4));
    let state = p.state();
    assert!(state.timestamps.stop.is_some() && state.timestamps.restarted.is_some());
    assert!(state.timestamps.ready.is_some() && state.timestamps.finished.is_some());
}

#[test]
fn runtime_must_confirm_the_new_container_runs() {
    let plan = plan();
    let mut p = ContainerProgress::new("db");
    p.phase = ContainerRecreatePhase::WaitingForRestart;
    p.previous_container_id = Some(OLD.into());
    p.previous_restart_count = Some(0);
    let d = decide(
        &mut p,
        &plan,
        &obs(3, Some(running(NEW, 1)), Some(rt(OLD, false, false))),
        None,
    );
    assert!(matches!(d, Decision::Wait { .. }));
    assert_eq!(p.phase, ContainerRecreatePhase::WaitingForRestart);
}

#[test]
fn ready_must_hold_for_min_started_seconds_without_interruption() {
    let mut plan = plan();
    plan.min_started = Duration::from_secs(5);
    let mut p = ContainerProgress::new("db");
    p.phase = ContainerRecreatePhase::WaitingForReady;
    p.new_container_id = Some(NEW.into());
    p.restart_count = Some(1);
    let d = decide(&mut p, &plan, &obs(0, Some(running(NEW, 1)), None), None);
    assert_eq!(
        d,
        Decision::Wait {
            recheck: Duration::from_secs(5)
        }
    );
    let mut not_ready = running(NEW, 1);
    not_ready.ready = false;
    decide(&mut p, &plan, &obs(3, Some(not_ready), None), None);
    assert_eq!(p.ready_since, None, "readiness interrupted: start over");
    decide(&mut p, &plan, &obs(4, Some(running(NEW, 1)), None), None);
    assert_eq!(p.phase, ContainerRecreatePhase::WaitingForReady);
    assert_eq!(
        decide(&mut p, &plan, &obs(9, Some(running(NEW, 1)), None), None),
        Decision::Finished
    );
    assert_eq!(p.phase, ContainerRecreatePhase::Succeeded);
    assert_eq!(p.steps.ready, Some(t(4)));
}

#[test]
fn unready_step_asks_the_coordinator_then_waits_the_grace() {
    let mut plan = plan();
    plan.unready_grace = Some(Duration::from_secs(3));
    let mut p = ContainerProgress::new("db");
    let d = decide(&mut p, &plan, &obs(0, Some(running(OLD, 0)), None), None);
    assert_eq!(d, Decision::RequestUnready);
    assert_eq!(p.phase, ContainerRecreatePhase::Unready);
    // Not acknowledged: ask again, never move on to the shutdown.
    assert_eq!(
        decide(&mut p, &plan, &obs(5, Some(running(OLD, 0)), None), None),
        Decision::RequestUnready
    );
    p.unready_done(t(5));
    assert_eq!(
        decide(&mut p, &plan, &obs(6, Some(running(OLD, 0)), None), None),
        Decision::Wait {
            recheck: Duration::from_secs(2)
        }
    );
    assert_eq!(
        decide(&mut p, &plan, &obs(8, Some(running(OLD, 0)), None), None),
        Decision::ObserveRuntime
    );
    assert_eq!(p.phase, ContainerRecreatePhase::Stopping);
    assert_eq!(p.steps.shutdown, Some(t(8)));
}

#[test]
fn shutdown_runs_within_the_grace_and_the_stop_gets_the_rest_but_at_least_two_seconds() {
    let mut plan = plan();
    plan.shutdown = Some((
        ShutdownSource::Request,
        ShutdownStep::Exec(vec!["x".into()]),
    ));
    let mut p = ContainerProgress::new("db");
    assert_eq!(
        decide(&mut p, &plan, &obs(0, Some(running(OLD, 0)), None), None),
        Decision::ObserveRuntime,
        "the runtime confirms the container runs before the action"
    );
    let world = Some(rt(OLD, true, true));
    assert_eq!(
        decide(
            &mut p,
            &plan,
            &obs(0, Some(running(OLD, 0)), world.clone()),
            None
        ),
        Decision::Shutdown {
            container_id: "aaa".into(),
            budget: Duration::from_secs(10)
        }
    );
    p.shutdown_done(None);
    assert_eq!(
        decide(
            &mut p,
            &plan,
            &obs(4, Some(running(OLD, 0)), world.clone()),
            None
        ),
        Decision::Stop {
            container_id: "aaa".into(),
            grace: Duration::from_secs(6)
        }
    );
    // A shutdown that used the whole grace still leaves the runtime two seconds.
    assert_eq!(
        decide(&mut p, &plan, &obs(30, Some(running(OLD, 0)), world), None),
        Decision::Stop {
            container_id: "aaa".into(),
            grace: MIN_STOP_GRACE
        }
    );
}

#[test]
fn a_container_that_already_exited_is_not_stopped() {
    let plan = plan();
    let mut p = ContainerProgress::new("db");
    decide(&mut p, &plan, &obs(0, Some(running(OLD, 0)), None), None);
    let d = decide(
        &mut p,
        &plan,
        &obs(0, Some(running(OLD, 0)), Some(rt(OLD, false, false))),
        None,
    );
    assert!(matches!(d, Decision::Wait { .. }), "{d:?}");
    assert_eq!(p.phase, ContainerRecreatePhase::WaitingForRestart);
}

#[test]
fn not_started_container_is_refused_unless_forced() {
    let plan = plan();
    let mut exited = running(OLD, 2);
    exited.running = false;
    exited.started = false;
    exited.ready = false;
    let mut p = ContainerProgress::new("db");
    assert_eq!(
        decide(&mut p, &plan, &obs(0, Some(exited.clone()), None), None),
        Decision::Finished
    );
    assert_eq!(p.phase, ContainerRecreatePhase::Failed);
    assert!(
        p.message
            .as_deref()
            .unwrap()
            .contains("forceRecreate: true")
    );
    assert!(p.steps.stop.is_none());

    let mut forced = plan.clone();
    forced.force = true;
    let mut p = ContainerProgress::new("db");
    let d = decide(&mut p, &forced, &obs(0, Some(exited), None), None);
    assert!(
        matches!(d, Decision::Wait { .. }),
        "exited: only wait for the kubelet"
    );
    assert_eq!(p.phase, ContainerRecreatePhase::WaitingForRestart);
}

#[test]
fn forced_recreate_of_a_running_but_unstarted_container_stops_it() {
    let mut plan = plan();
    plan.force = true;
    let mut pod = running(OLD, 0);
    pod.started = false;
    let mut p = ContainerProgress::new("db");
    decide(&mut p, &plan, &obs(0, Some(pod.clone()), None), None);
    assert!(matches!(
        decide(
            &mut p,
            &plan,
            &obs(0, Some(pod), Some(rt(OLD, true, true))),
            None
        ),
        Decision::Stop { .. }
    ));
}

#[test]
fn nothing_is_stopped_after_the_deadline() {
    let plan = plan();
    let mut p = ContainerProgress::new("db");
    decide(
        &mut p,
        &plan,
        &obs(0, Some(running(OLD, 0)), None),
        Some(t(10)),
    );
    let d = decide(
        &mut p,
        &plan,
        &obs(10, Some(running(OLD, 0)), Some(rt(OLD, true, true))),
        Some(t(10)),
    );
    assert_eq!(d, Decision::Finished);
    assert_eq!(p.phase, ContainerRecreatePhase::Failed);
    assert!(
        p.message
            .as_deref()
            .unwrap()
            .contains("activeDeadlineSeconds")
    );
}

#[test]
fn waits_never_outlast_the_deadline() {
    let mut plan = plan();
    plan.unready_grace = Some(Duration::from_secs(60));
    let mut p = ContainerProgress::new("db");
    decide(
        &mut p,
        &plan,
        &obs(0, Some(running(OLD, 0)), None),
        Some(t(5)),
    );
    p.unready_done(t(0));
    assert_eq!(
        decide(
            &mut p,
            &plan,
            &obs(1, Some(running(OLD, 0)), None),
            Some(t(5))
        ),
        Decision::Wait {
            recheck: Duration::from_secs(4)
        }
    );
}

#[test]
fn no_container_id_in_pod_status_fails_without_stopping() {
    let mut p = ContainerProgress::new("db");
    assert_eq!(
        decide(&mut p, &plan(), &obs(0, None, None), None),
        Decision::Finished
    );
    assert_eq!(p.phase, ContainerRecreatePhase::Failed);
}

/// Recovery after a crash: the journal says Stopping with the recorded ID.
fn journaled() -> ContainerProgress {
    let mut p = ContainerProgress::new("db");
    p.phase = ContainerRecreatePhase::Stopping;
    p.previous_container_id = Some(OLD.into());
    p.previous_restart_count = Some(3);
    p.steps.shutdown = Some(t(0));
    p
}

#[test]
fn after_a_crash_a_restarted_container_is_never_stopped_again() {
    let mut p = journaled();
    let d = decide(&mut p, &plan(), &obs(5, Some(running(NEW, 4)), None), None);
    assert_eq!(d, Decision::ObserveRuntime, "cross-check the new container");
    assert_eq!(p.phase, ContainerRecreatePhase::WaitingForRestart);
    let d = decide(
        &mut p,
        &plan(),
        &obs(5, Some(running(NEW, 4)), Some(rt(NEW, true, false))),
        None,
    );
    assert_eq!(d, Decision::Finished);
    assert_eq!(p.phase, ContainerRecreatePhase::Succeeded);
}

#[test]
fn after_a_crash_with_stale_pod_status_an_exited_container_is_not_stopped() {
    let mut p = journaled();
    let d = decide(
        &mut p,
        &plan(),
        &obs(5, Some(running(OLD, 3)), Some(rt(OLD, false, false))),
        None,
    );
    assert!(matches!(d, Decision::Wait { .. }));
    assert_eq!(p.phase, ContainerRecreatePhase::WaitingForRestart);
}

#[test]
fn after_a_crash_before_the_stop_the_same_container_id_is_stopped_again() {
    let mut p = journaled();
    let d = decide(
        &mut p,
        &plan(),
        &obs(5, Some(running(OLD, 3)), Some(rt(OLD, true, true))),
        None,
    );
    assert_eq!(
        d,
        Decision::Stop {
            container_id: "aaa".into(),
            grace: Duration::from_secs(5)
        }
    );
}

/// Exhaustive over small worlds, fresh or resumed from the journal in any phase: whatever the
/// pod status and runtime say, the shutdown action and the stop only ever target the recorded
/// container, never one the pod status shows was replaced or the runtime says is not running, and
/// a replaced container does not even get an unready request.
#[test]
fn actions_only_ever_target_the_recorded_container() {
    let ids = [None, Some(OLD), Some(NEW), Some("containerd://ccc")];
    let mut starts = vec![(ContainerRecreatePhase::Pending, false, false)];
    for phase in [
        ContainerRecreatePhase::Unready,
        ContainerRecreatePhase::ShuttingDown,
        ContainerRecreatePhase::Stopping,
        ContainerRecreatePhase::WaitingForRestart,
        ContainerRecreatePhase::WaitingForReady,
    ] {
        for (acknowledged, shutdown_done) in [(false, false), (true, false), (true, true)] {
            starts.push((phase, acknowledged, shutdown_done));
        }
    }
    for (phase, acknowledged, shutdown_done) in starts {
        for pod_id in ids {
            for restarts in [3, 4] {
                for (running_now, started) in [(true, true), (false, false), (true, false)] {
                    for rt_prev in [false, true] {
                        for force in [false, true] {
                            for with_action in [false, true] {
                                for unready in [None, Some(Duration::from_secs(3))] {
                                    let mut plan = plan();
                                    plan.force = force;
                                    plan.unready_grace = unready;
                                    if with_action {
                                        plan.shutdown = Some((
                                            ShutdownSource::Request,
                                            ShutdownStep::Exec(vec!["x".into()]),
                                        ));
                                    }
                                    let mut p = if phase == ContainerRecreatePhase::Pending {
                                        ContainerProgress::new("db")
                                    } else {
                                        let mut p = journaled();
                                        p.phase = phase;
                                        if acknowledged {
                                            p.unready_done(t(0));
                                        }
                                        p.shutdown_done = shutdown_done;
                                        p
                                    };
                                    let recorded_before = p.previous_container_id.clone();
                                    let pod = pod_id.map(|id| PodContainerView {
                                        container_id: Some(id.into()),
                                        restart_count: restarts,
                                        ready: running_now,
                                        started,
                                        running: running_now,
                                    });
                                    let o = obs(1, pod.clone(), None);
                                    let mut d = decide(&mut p, &plan, &o, None);
                                    if d == Decision::ObserveRuntime {
                                        let mut o = o.clone();
                                        o.runtime = Some(RuntimeView {
                                            newest_id: pod_id.map(|i| raw_id(i).to_string()),
                                            newest_running: running_now,
                                            previous_running: rt_prev,
                                        });
                                        d = decide(&mut p, &plan, &o, None);
                                    }
                                    let recorded = p.previous_container_id.clone();
                                    if let Some(before) = &recorded_before {
                                        assert_eq!(
                                            Some(before),
                                            recorded.as_ref(),
                                            "the recorded ID never changes"
                                        );
                                    }
                                    let shows_recorded = || {
                                        let recorded = recorded.as_deref().unwrap();
                                        pod_id.is_none_or(|id| raw_id(id) == raw_id(recorded))
                                    };
                                    let case = format!(
                                        "{phase:?} ack={acknowledged} done={shutdown_done} pod={pod_id:?} rt_prev={rt_prev} action={with_action}: {d:?}"
                                    );
                                    match d {
                                        Decision::RequestUnready => {
                                            assert!(shows_recorded(), "{case}");
                                        }
                                        Decision::Shutdown {
                                            ref container_id, ..
                                        }
                                        | Decision::Stop {
                                            ref container_id, ..
                                        } => {
                                            assert_eq!(
                                                container_id,
                                                raw_id(recorded.as_deref().unwrap()),
                                                "{case}"
                                            );
                                            assert!(
                                                shows_recorded(),
                                                "pod shows a replacement: {case}"
                                            );
                                            assert!(
                                                rt_prev,
                                                "the runtime says it does not run: {case}"
                                            );
                                        }
                                        _ => {}
                                    }
                                    if let Decision::Stop { grace, .. } = d {
                                        assert!(grace >= MIN_STOP_GRACE);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Recovery after a crash during the shutdown step: the journal, written before the action,
/// says ShuttingDown with the recorded ID and the time the step began.
fn journaled_during_shutdown() -> (ContainerPlan, ContainerProgress) {
    let mut plan = plan();
    plan.shutdown = Some((
        ShutdownSource::Request,
        ShutdownStep::Exec(vec!["SYSTEM SHUTDOWN".into()]),
    ));
    let mut p = journaled();
    p.phase = ContainerRecreatePhase::ShuttingDown;
    (plan, p)
}

#[test]
fn after_a_crash_during_the_shutdown_step_a_restarted_container_is_neither_shut_down_nor_stopped() {
    let (plan, mut p) = journaled_during_shutdown();
    // The action made the application exit and the kubelet restarted it meanwhile.
    let d = decide(&mut p, &plan, &obs(5, Some(running(NEW, 4)), None), None);
    assert_eq!(d, Decision::ObserveRuntime, "cross-check the new container");
    assert_eq!(p.phase, ContainerRecreatePhase::WaitingForRestart);
    let d = decide(
        &mut p,
        &plan,
        &obs(5, Some(running(NEW, 4)), Some(rt(NEW, true, false))),
        None,
    );
    assert_eq!(d, Decision::Finished);
    assert_eq!(p.phase, ContainerRecreatePhase::Succeeded);
    assert_eq!(p.previous_container_id.as_deref(), Some(OLD));
    assert_eq!(p.new_container_id.as_deref(), Some(NEW));
    assert_eq!(p.restart_count, Some(4));
}

#[test]
fn after_a_crash_during_the_shutdown_step_a_replacement_waits_for_the_restart_count_to_grow() {
    let (plan, mut p) = journaled_during_shutdown();
    // A new ID whose restartCount did not grow yet: never act on it, wait for the kubelet.
    let d = decide(&mut p, &plan, &obs(5, Some(running(NEW, 3)), None), None);
    assert!(matches!(d, Decision::Wait { .. }), "{d:?}");
    assert_eq!(p.phase, ContainerRecreatePhase::WaitingForRestart);
}

#[test]
fn after_a_crash_during_the_shutdown_step_an_exited_container_is_left_to_the_kubelet() {
    let (plan, mut p) = journaled_during_shutdown();
    // The pod status still shows the old container running, the runtime knows it exited.
    let d = decide(&mut p, &plan, &obs(5, Some(running(OLD, 3)), None), None);
    assert_eq!(d, Decision::ObserveRuntime);
    let d = decide(
        &mut p,
        &plan,
        &obs(5, Some(running(OLD, 3)), Some(rt(OLD, false, false))),
        None,
    );
    assert!(matches!(d, Decision::Wait { .. }), "{d:?}");
    assert_eq!(p.phase, ContainerRecreatePhase::WaitingForRestart);
    assert!(!p.shutdown_done, "the action was not run again");
}

#[test]
fn after_a_crash_during_the_shutdown_step_the_same_running_container_gets_the_action_again_with_the_grace_left()
 {
    let (plan, mut p) = journaled_during_shutdown();
    let d = decide(
        &mut p,
        &plan,
        &obs(4, Some(running(OLD, 3)), Some(rt(OLD, true, true))),
        None,
    );
    assert_eq!(
        d,
        Decision::Shutdown {
            container_id: "aaa".into(),
            budget: Duration::from_secs(6)
        }
    );
    // Grace used up while the agent was down: no action, the stop gets its minimum.
    let (plan, mut p) = journaled_during_shutdown();
    let d = decide(
        &mut p,
        &plan,
        &obs(12, Some(running(OLD, 3)), Some(rt(OLD, true, true))),
        None,
    );
    assert_eq!(
        d,
        Decision::Stop {
            container_id: "aaa".into(),
            grace: MIN_STOP_GRACE
        }
    );
}

#[test]
fn after_a_crash_during_the_unready_step_a_restarted_container_gets_no_unready_request_and_no_stop()
{
    let mut plan = plan();
    plan.unready_grace = Some(Duration::from_secs(30));
    for acknowledged in [false, true] {
        let mut p = journaled();
        p.phase = ContainerRecreatePhase::Unready;
        p.steps.shutdown = None;
        if acknowledged {
            p.unready_done(t(0));
        }
        let d = decide(&mut p, &plan, &obs(5, Some(running(NEW, 4)), None), None);
        assert_eq!(d, Decision::ObserveRuntime, "acknowledged={acknowledged}");
        assert_eq!(p.phase, ContainerRecreatePhase::WaitingForRestart);
    }
}

#[test]
fn after_a_crash_during_the_unready_step_the_same_container_gets_the_rest_of_the_unready_grace() {
    let mut plan = plan();
    plan.unready_grace = Some(Duration::from_secs(30));
    let mut p = journaled();
    p.phase = ContainerRecreatePhase::Unready;
    p.steps.shutdown = None;
    p.unready_done(t(0));
    assert_eq!(
        decide(&mut p, &plan, &obs(20, Some(running(OLD, 3)), None), None),
        Decision::Wait {
            recheck: Duration::from_secs(10)
        }
    );
}

#[test]
fn the_report_names_the_recorded_container_before_any_action() {
    let mut plan = request_plan(1, false, FailurePolicy::Fail);
    plan.containers[0].shutdown = Some((
        ShutdownSource::Request,
        ShutdownStep::Exec(vec!["x".into()]),
    ));
    for unready in [None, Some(Duration::from_secs(3))] {
        plan.containers[0].unready_grace = unready;
        let mut r = request(&plan);
        let d = decide(
            &mut r.containers[0],
            &plan.containers[0],
            &obs(0, Some(running(OLD, 3)), None),
            None,
        );
        assert!(
            matches!(d, Decision::ObserveRuntime | Decision::RequestUnready),
            "{d:?}"
        );
        let report = r.report();
        assert_eq!(
            report.containers[0].previous_container_id.as_deref(),
            Some(OLD),
            "unready={unready:?}"
        );
    }
}

fn request_plan(n: usize, ordered: bool, policy: FailurePolicy) -> RequestPlan {
    RequestPlan {
        containers: (0..n)
            .map(|i| ContainerPlan {
                name: format!("c{i}"),
                ..plan()
            })
            .collect(),
        ordered,
        failure_policy: policy,
        active_deadline: None,
    }
}

fn request(plan: &RequestPlan) -> RequestProgress {
    RequestProgress::new(
        RequestRef {
            namespace: "ns".into(),
            name: "r".into(),
            uid: "u".into(),
        },
        ("pod", "pod-uid"),
        plan,
        t(0),
    )
}

#[test]
fn ordered_recreate_runs_one_container_at_a_time() {
    let plan = request_plan(3, true, FailurePolicy::Fail);
    let mut r = request(&plan);
    assert_eq!(r.active(&plan), vec![0]);
    r.containers[0].phase = ContainerRecreatePhase::WaitingForReady;
    assert_eq!(
        r.active(&plan),
        vec![0],
        "the next waits until the previous is ready"
    );
    r.containers[0].phase = ContainerRecreatePhase::Succeeded;
    assert_eq!(r.active(&plan), vec![1]);
    let parallel = request_plan(3, false, FailurePolicy::Fail);
    assert_eq!(request(&parallel).active(&parallel), vec![0, 1, 2]);
}

#[test]
fn failure_policy_fail_stops_at_the_first_failure_and_ignore_goes_on() {
    let plan = request_plan(3, true, FailurePolicy::Fail);
    let mut r = request(&plan);
    r.containers[0].fail("boom", t(1));
    r.settle(&plan, t(1));
    assert_eq!(r.phase, RecreatePhase::Failed);
    assert!(
        r.containers
            .iter()
            .all(|c| c.phase == ContainerRecreatePhase::Failed)
    );
    assert!(r.message.as_deref().unwrap().contains("boom"));

    let plan = request_plan(3, true, FailurePolicy::Ignore);
    let mut r = request(&plan);
    r.containers[0].fail("boom", t(1));
    r.settle(&plan, t(1));
    assert_eq!(r.phase, RecreatePhase::Recreating);
    assert_eq!(r.active(&plan), vec![1]);
    r.containers[1].phase = ContainerRecreatePhase::Succeeded;
    r.containers[2].phase = ContainerRecreatePhase::Succeeded;
    r.settle(&plan, t(2));
    assert_eq!(
        r.phase,
        RecreatePhase::Failed,
        "any failed container fails the request"
    );
}

#[test]
fn failure_policy_fail_keeps_following_containers_already_stopped() {
    let plan = request_plan(2, false, FailurePolicy::Fail);
    let mut r = request(&plan);
    r.containers[1].phase = ContainerRecreatePhase::WaitingForRestart;
    r.containers[0].fail("boom", t(1));
    r.settle(&plan, t(1));
    assert_eq!(
        r.containers[1].phase,
        ContainerRecreatePhase::WaitingForRestart
    );
    assert_eq!(r.phase, RecreatePhase::Recreating);
}

#[test]
fn all_succeeded_makes_the_request_succeed_and_reports_carry_rfc3339_times() {
    let plan = request_plan(1, false, FailurePolicy::Fail);
    let mut r = request(&plan);
    r.containers[0].phase = ContainerRecreatePhase::Succeeded;
    r.settle(&plan, t(9));
    assert_eq!(r.phase, RecreatePhase::Succeeded);
    let report = r.report();
    assert_eq!(report.sequence, 1);
    assert_eq!(
        serde_json::to_value(&report).unwrap()["completionTime"].as_str(),
        Some("2023-11-14T22:13:29Z")
    );
    assert_eq!(r.report().sequence, 2);
}

/// Property tests over the machine with extreme inputs (issue 11): times anywhere in jiff's
/// range, restart counts at the i32 extremes, durations up to `u64::MAX` seconds, container IDs
/// that change or vanish at random. Whatever the world does, `decide` never panics, only ever
/// acts on the recorded container, never after the deadline, and a finished container stays
/// finished.
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn timestamp() -> impl Strategy<Value = Timestamp> {
        prop_oneof![
            Just(Timestamp::MIN),
            Just(Timestamp::MAX),
            Just(Timestamp::UNIX_EPOCH),
            (Timestamp::MIN.as_second()..=Timestamp::MAX.as_second())
                .prop_map(|s| Timestamp::from_second(s).unwrap()),
            (-100i64..100).prop_map(t),
        ]
    }

    fn duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            Just(Duration::ZERO),
            Just(Duration::MAX),
            Just(Duration::from_secs(u64::MAX)),
            (0u64..100).prop_map(Duration::from_secs),
            any::<u64>().prop_map(Duration::from_secs),
        ]
    }

    fn restart_count() -> impl Strategy<Value = i32> {
        prop_oneof![Just(i32::MIN), Just(i32::MAX), Just(0), -2i32..5]
    }

    fn container_id() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            Just(Some(String::new())),
            Just(Some(OLD.to_string())),
            Just(Some(NEW.to_string())),
            Just(Some("containerd://ccc".to_string())),
            Just(Some("ünïcödé://🙂".to_string())),
        ]
    }

    fn pod_view() -> impl Strategy<Value = Option<PodContainerView>> {
        proptest::option::weighted(
            0.9,
            (
                container_id(),
                restart_count(),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
            )
                .prop_map(|(container_id, restart_count, ready, started, running)| {
                    PodContainerView {
                        container_id,
                        restart_count,
                        ready,
                        started,
                        running,
                    }
                }),
        )
    }

    fn runtime_view() -> impl Strategy<Value = RuntimeView> {
        (container_id(), any::<bool>(), any::<bool>()).prop_map(
            |(newest, newest_running, previous_running)| RuntimeView {
                newest_id: newest.map(|id| raw_id(&id).to_string()),
                newest_running,
                previous_running,
            },
        )
    }

    fn container_plan() -> impl Strategy<Value = ContainerPlan> {
        (
            duration(),
            proptest::option::of(duration()),
            duration(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(grace, unready_grace, min_started, force, shutdown)| {
                ContainerPlan {
                    name: "db".into(),
                    shutdown: shutdown.then(|| {
                        (
                            ShutdownSource::Request,
                            ShutdownStep::Exec(vec!["stop".into()]),
                        )
                    }),
                    grace,
                    unready_grace,
                    min_started,
                    force,
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn decide_is_total_and_safe_under_any_world(
            plan in container_plan(),
            deadline in proptest::option::of(timestamp()),
            steps in proptest::collection::vec(
                (timestamp(), pod_view(), proptest::option::of(runtime_view()), any::<u8>()),
                1..24,
            ),
        ) {
            let mut p = ContainerProgress::new("db");
            let mut recorded: Option<String> = None;
            let mut finished = false;
            for (now, pod, runtime, outcome) in steps {
                let obs = Observation { now, pod, runtime };
                let d = decide(&mut p, &plan, &obs, deadline);
                if let Some(r) = &recorded {
                    prop_assert_eq!(p.previous_container_id.as_ref(), Some(r), "the recorded container never changes");
                } else {
                    recorded = p.previous_container_id.clone();
                }
                if finished {
                    prop_assert_eq!(&d, &Decision::Finished, "a finished container stays finished");
                }
                let past_deadline = deadline.is_some_and(|d| now >= d);
                match &d {
                    Decision::Shutdown { container_id, .. } | Decision::Stop { container_id, .. } => {
                        prop_assert!(!past_deadline, "acted after the deadline: {d:?}");
                        let previous = recorded.as_deref().unwrap_or_default();
                        prop_assert_eq!(container_id.as_str(), raw_id(previous));
                        if let Decision::Stop { grace, .. } = &d {
                            prop_assert!(*grace >= MIN_STOP_GRACE);
                        }
                    }
                    Decision::Finished => {
                        prop_assert!(p.phase.is_finished());
                        finished = true;
                    }
                    _ => {}
                }
                // Feed back what the shell would: the action ran (or not), at any time.
                match (&d, outcome % 3) {
                    (Decision::RequestUnready, 0) => p.unready_done(now),
                    (Decision::Shutdown { .. }, 0) => p.shutdown_done(None),
                    (Decision::Shutdown { .. }, 1) => p.shutdown_done(Some("ran out of time".into())),
                    (Decision::Stop { .. }, 0) => p.stop_done(now),
                    (Decision::RequestUnready | Decision::Shutdown { .. } | Decision::Stop { .. }, 2) => {
                        p.fail("the action failed", now);
                    }
                    _ => {}
                }
                // What the coordinator gets never panics either.
                let _ = p.state();
            }
        }

        #[test]
        fn settling_and_reporting_a_request_never_panics(
            n in 0usize..5,
            ordered in any::<bool>(),
            ignore in any::<bool>(),
            phases in proptest::collection::vec(0u8..9, 0..5),
            now in timestamp(),
            sequence in prop_oneof![Just(u64::MAX), any::<u64>()],
        ) {
            let policy = if ignore { FailurePolicy::Ignore } else { FailurePolicy::Fail };
            let plan = request_plan(n, ordered, policy);
            let mut r = request(&plan);
            r.sequence = sequence;
            for (c, phase) in r.containers.iter_mut().zip(phases) {
                c.phase = match phase {
                    0 => ContainerRecreatePhase::Pending,
                    1 => ContainerRecreatePhase::Unready,
                    2 => ContainerRecreatePhase::ShuttingDown,
                    3 => ContainerRecreatePhase::Stopping,
                    4 => ContainerRecreatePhase::WaitingForRestart,
                    5 => ContainerRecreatePhase::WaitingForReady,
                    6 => ContainerRecreatePhase::Succeeded,
                    7 => ContainerRecreatePhase::Failed,
                    _ => ContainerRecreatePhase::Unknown,
                };
            }
            let active = r.active(&plan);
            prop_assert!(active.iter().all(|&i| !r.containers[i].phase.is_finished()));
            if ordered {
                prop_assert!(active.len() <= 1);
            }
            r.settle(&plan, now);
            let all_finished = r.containers.iter().all(|c| c.phase.is_finished());
            prop_assert_eq!(r.phase.is_finished(), all_finished);
            let report = r.report();
            prop_assert!(report.sequence >= 1 || sequence == u64::MAX);
            r.fail_all("gone", now);
            prop_assert!(r.containers.iter().all(|c| c.phase.is_finished()));
            prop_assert_eq!(r.phase, RecreatePhase::Failed);
        }
    }
}
