//! The recreate state machine: pure decisions over plain data. The shell (`recreate.rs`)
//! observes the pod status and the runtime, asks [`decide`] what to do next, does it, and feeds
//! the outcome back through the `*_done` methods. Nothing here does I/O or reads a clock.
//!
//! Safety rules that live here, so they are tested here:
//! - the only container ever acted on (shutdown action, stop) is `previous_container_id`,
//!   captured once when the container leaves `Pending` and never changed afterwards;
//! - every action on the container or its pod ([`Decision::RequestUnready`],
//!   [`Decision::Shutdown`], [`Decision::Stop`]) is journaled first by the shell, so after a
//!   crash the agent resumes knowing which container it was working on;
//! - a container whose ID in the pod status differs from `previous_container_id` gets no unready
//!   request, no shutdown action and no stop (it was already restarted: a shutdown action that
//!   made the application exit, or a crash): the machine only waits for the new one to be ready;
//! - the shutdown action and the stop run only while the runtime says the recorded container
//!   still runs, so a container that exited is left to the kubelet;
//! - nothing is stopped once the request's deadline has passed.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

use super::plan::{ContainerPlan, RequestPlan};
use relaunch_api::report::{RecreateReport, RequestRef};
use relaunch_api::{
    ContainerRecreatePhase, ContainerRecreateState, FailurePolicy, RecreatePhase, StepTimestamps,
};

/// The runtime always gets at least this long between its stop signal and SIGKILL, as the
/// kubelet gives.
pub const MIN_STOP_GRACE: Duration = Duration::from_secs(2);

/// How long to wait before looking again when only a pod event or the runtime can move us on.
pub const RECHECK: Duration = Duration::from_secs(1);

/// `now - then`, zero if `then` is in the future.
pub fn since(now: Timestamp, then: Timestamp) -> Duration {
    let d = now.duration_since(then);
    if d.is_negative() {
        Duration::ZERO
    } else {
        d.unsigned_abs()
    }
}

/// The runtime ID without the `containerd://` (or other runtime) prefix of pod status.
pub fn raw_id(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, raw)| raw)
}

/// What the pod status says about one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodContainerView {
    /// As in pod status: `containerd://<id>`.
    pub container_id: Option<String>,
    pub restart_count: i32,
    pub ready: bool,
    pub started: bool,
    pub running: bool,
}

/// What the runtime says about one container of the pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeView {
    /// The newest instance (raw ID) and whether it runs.
    pub newest_id: Option<String>,
    pub newest_running: bool,
    /// Whether the container we are to stop still runs (false: exited or gone).
    pub previous_running: bool,
}

/// One look at the world, taken by the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub now: Timestamp,
    pub pod: Option<PodContainerView>,
    /// Filled in only when [`decide`] asked for it ([`Decision::ObserveRuntime`]).
    pub runtime: Option<RuntimeView>,
}

/// When each step began (agent-side, survives restarts through the journal).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Steps {
    pub unready: Option<Timestamp>,
    pub shutdown: Option<Timestamp>,
    pub stop: Option<Timestamp>,
    /// When `StopContainer` returned (or the container was found already gone).
    #[serde(default)]
    pub stopped: Option<Timestamp>,
    pub restarted: Option<Timestamp>,
    pub ready: Option<Timestamp>,
    pub finished: Option<Timestamp>,
}

/// Where one container's recreate is. Serialised into the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerProgress {
    pub name: String,
    pub phase: ContainerRecreatePhase,
    /// The container to stop, as in pod status (`containerd://<id>`). Set once, never changed.
    pub previous_container_id: Option<String>,
    pub previous_restart_count: Option<i32>,
    pub new_container_id: Option<String>,
    pub restart_count: Option<i32>,
    pub message: Option<String>,
    /// The coordinator accepted the unready request.
    pub unready_acknowledged: bool,
    pub shutdown_done: bool,
    /// Since when the new container has been ready without interruption.
    pub ready_since: Option<Timestamp>,
    pub steps: Steps,
}

impl ContainerProgress {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            phase: ContainerRecreatePhase::Pending,
            previous_container_id: None,
            previous_restart_count: None,
            new_container_id: None,
            restart_count: None,
            message: None,
            unready_acknowledged: false,
            shutdown_done: false,
            ready_since: None,
            steps: Steps::default(),
        }
    }

    pub fn fail(&mut self, message: impl Into<String>, now: Timestamp) {
        if self.phase.is_finished() {
            return;
        }
        self.phase = ContainerRecreatePhase::Failed;
        self.message = Some(message.into());
        self.steps.finished = Some(now);
    }

    /// The coordinator holds the pod NotReady; the unready grace starts now.
    pub fn unready_done(&mut self, now: Timestamp) {
        self.unready_acknowledged = true;
        self.steps.unready = Some(now);
    }

    /// The shutdown action finished (or ran out of time); `note` says how it went if not well.
    pub fn shutdown_done(&mut self, note: Option<String>) {
        self.shutdown_done = true;
        if note.is_some() {
            self.message = note;
        }
    }

    /// Whether the pod status shows another container than the recorded one: the recorded
    /// container was restarted (by our stop, by a shutdown action that made it exit, or by itself).
    fn replaced(&self, pod: Option<&PodContainerView>) -> bool {
        let previous = self.previous_container_id.as_deref().unwrap_or_default();
        pod.and_then(|p| p.container_id.as_deref())
            .is_some_and(|id| raw_id(id) != raw_id(previous))
    }

    /// The recorded container is gone or exited without (another) stop: the kubelet takes over.
    fn already_stopped(&mut self, now: Timestamp) {
        self.steps.stop.get_or_insert(now);
        self.steps.stopped.get_or_insert(now);
        self.phase = ContainerRecreatePhase::WaitingForRestart;
    }

    /// `StopContainer` returned: the kubelet takes over.
    pub fn stop_done(&mut self, now: Timestamp) {
        if self.phase == ContainerRecreatePhase::Stopping {
            self.phase = ContainerRecreatePhase::WaitingForRestart;
            self.steps.stop.get_or_insert(now);
            self.steps.stopped.get_or_insert(now);
        }
    }

    /// The view the coordinator gets.
    pub fn state(&self) -> ContainerRecreateState {
        let t = |ts: Option<Timestamp>| ts.map(Time);
        ContainerRecreateState {
            name: self.name.clone(),
            phase: self.phase,
            previous_container_id: self.previous_container_id.clone(),
            new_container_id: self.new_container_id.clone(),
            restart_count: self.restart_count,
            message: self.message.clone(),
            timestamps: StepTimestamps {
                unready: t(self.steps.unready),
                shutdown: t(self.steps.shutdown),
                stop: t(self.steps.stop),
                restarted: t(self.steps.restarted),
                ready: t(self.steps.ready),
                finished: t(self.steps.finished),
            },
        }
    }
}

/// What the shell should do for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Fetch the runtime's view of this container and decide again.
    ObserveRuntime,
    /// Journal the progress, then ask the coordinator to hold the pod NotReady; then
    /// [`ContainerProgress::unready_done`].
    RequestUnready,
    /// Journal the progress (it names `container_id`), then run the shutdown action against
    /// `container_id` (raw runtime ID), bounded by `budget`; then
    /// [`ContainerProgress::shutdown_done`].
    Shutdown {
        container_id: String,
        budget: Duration,
    },
    /// Journal `container_id`, then CRI `StopContainer(container_id, grace)`; then
    /// [`ContainerProgress::stop_done`].
    Stop {
        container_id: String,
        grace: Duration,
    },
    /// Nothing to do until the pod changes or `recheck` passes.
    Wait { recheck: Duration },
    /// The container finished (Succeeded or Failed).
    Finished,
}

/// Decides the next step of one container, moving `progress` through every step that needs no
/// I/O. `deadline` is the request's `activeDeadlineSeconds` as a point in time.
pub fn decide(
    progress: &mut ContainerProgress,
    plan: &ContainerPlan,
    obs: &Observation,
    deadline: Option<Timestamp>,
) -> Decision {
    use ContainerRecreatePhase as P;
    let now = obs.now;
    loop {
        if progress.phase.is_finished() {
            return Decision::Finished;
        }
        if deadline.is_some_and(|d| now >= d) {
            let what = match progress.phase {
                P::Pending | P::Unready | P::ShuttingDown => {
                    "before it was stopped (nothing was stopped)"
                }
                P::Stopping => "while it was being stopped",
                P::WaitingForRestart => "while waiting for the kubelet to restart it",
                _ => "while waiting for it to become ready",
            };
            progress.fail(
                format!(
                    "activeDeadlineSeconds passed {what}; raise spec.activeDeadlineSeconds if the container needs longer"
                ),
                now,
            );
            return Decision::Finished;
        }
        let remaining_to_deadline = deadline.map(|d| since(d, now));
        let wait = |d: Duration| Decision::Wait {
            recheck: remaining_to_deadline.map_or(d, |r| d.min(r)),
        };
        match progress.phase {
            P::Pending => {
                let Some(pod) = obs.pod.as_ref().filter(|p| p.container_id.is_some()) else {
                    progress.fail(
                        format!(
                            "container {} has no container ID in the pod status yet: wait until it has been created, then retry",
                            progress.name
                        ),
                        now,
                    );
                    continue;
                };
                if !pod.started && !plan.force {
                    progress.fail(
                        format!(
                            "container {} has not started since its last restart (started: false); nothing was stopped. Set spec.strategy.forceRecreate: true to recreate it anyway",
                            progress.name
                        ),
                        now,
                    );
                    continue;
                }
                progress.previous_container_id = pod.container_id.clone();
                progress.previous_restart_count = Some(pod.restart_count);
                if !pod.running {
                    // Already exited (forceRecreate): the kubelet restarts it; nothing to stop.
                    progress.phase = P::WaitingForRestart;
                    progress.message = Some(
                        "the container was not running; waiting for the kubelet to restart it"
                            .into(),
                    );
                } else if plan.unready_grace.is_some() {
                    progress.phase = P::Unready;
                } else {
                    progress.phase = P::ShuttingDown;
                    progress.steps.shutdown = Some(now);
                }
            }
            P::Unready => {
                if progress.replaced(obs.pod.as_ref()) {
                    // Restarted since it was recorded (it crashed, or the agent did during
                    // this step): the request's restart happened; only wait for the new one.
                    progress.already_stopped(now);
                    continue;
                }
                if !progress.unready_acknowledged {
                    return Decision::RequestUnready;
                }
                let grace = plan.unready_grace.unwrap_or_default();
                let held = progress.steps.unready.map_or(grace, |t| since(now, t));
                if held < grace {
                    return wait(grace - held);
                }
                progress.phase = P::ShuttingDown;
                progress.steps.shutdown = Some(now);
            }
            P::ShuttingDown => {
                let started = *progress.steps.shutdown.get_or_insert(now);
                if progress.replaced(obs.pod.as_ref()) {
                    // Restarted since it was recorded: typically the agent crashed during this
                    // step after the action made the application exit. Never act on the new one.
                    progress.already_stopped(now);
                    continue;
                }
                if plan.shutdown.is_some() && !progress.shutdown_done {
                    let budget = plan.grace.saturating_sub(since(now, started));
                    if !budget.is_zero() {
                        let Some(runtime) = &obs.runtime else {
                            return Decision::ObserveRuntime;
                        };
                        if !runtime.previous_running {
                            // It exited (an earlier run of the action, before a crash, or by
                            // itself) and the pod status has not caught up: nothing to shut down.
                            progress.already_stopped(now);
                            continue;
                        }
                        // Same container, still running: run the action (again, if a crash
                        // interrupted it) with what is left of the grace.
                        let previous = progress
                            .previous_container_id
                            .as_deref()
                            .unwrap_or_default();
                        return Decision::Shutdown {
                            container_id: raw_id(previous).to_string(),
                            budget,
                        };
                    }
                    progress.shutdown_done(Some(
                        "the grace period was used up before the shutdown action could run".into(),
                    ));
                }
                progress.phase = P::Stopping;
                progress.steps.stop = Some(now);
            }
            P::Stopping => {
                if progress.replaced(obs.pod.as_ref()) {
                    progress.already_stopped(now);
                    continue;
                }
                let Some(runtime) = &obs.runtime else {
                    return Decision::ObserveRuntime;
                };
                if !runtime.previous_running {
                    progress.already_stopped(now);
                    continue;
                }
                let previous = progress.previous_container_id.clone().unwrap_or_default();
                let used = progress
                    .steps
                    .shutdown
                    .map_or(Duration::ZERO, |t| since(now, t));
                return Decision::Stop {
                    container_id: raw_id(&previous).to_string(),
                    grace: plan.grace.saturating_sub(used).max(MIN_STOP_GRACE),
                };
            }
            P::WaitingForRestart => {
                let previous = progress.previous_container_id.clone().unwrap_or_default();
                let before = progress.previous_restart_count.unwrap_or(0);
                let new = obs.pod.as_ref().and_then(|p| {
                    let id = p.container_id.as_deref()?;
                    (raw_id(id) != raw_id(&previous) && p.restart_count > before)
                        .then(|| (id.to_string(), p.restart_count))
                });
                let Some((id, restart_count)) = new else {
                    return wait(RECHECK);
                };
                let Some(runtime) = &obs.runtime else {
                    return Decision::ObserveRuntime;
                };
                if runtime.newest_id.as_deref() != Some(raw_id(&id)) || !runtime.newest_running {
                    return wait(RECHECK);
                }
                progress.new_container_id = Some(id);
                progress.restart_count = Some(restart_count);
                progress.steps.restarted = Some(now);
                progress.phase = P::WaitingForReady;
            }
            P::WaitingForReady => {
                let Some(pod) = &obs.pod else {
                    return wait(RECHECK);
                };
                if let Some(id) = &pod.container_id
                    && progress.new_container_id.as_deref() != Some(id.as_str())
                    && pod.restart_count > progress.restart_count.unwrap_or(0)
                {
                    // The new container died and the kubelet started yet another one.
                    progress.new_container_id = Some(id.clone());
                    progress.restart_count = Some(pod.restart_count);
                    progress.ready_since = None;
                }
                if !(pod.ready && pod.running) {
                    progress.ready_since = None;
                    return wait(RECHECK);
                }
                let since_ready = *progress.ready_since.get_or_insert(now);
                let held = since(now, since_ready);
                if held < plan.min_started {
                    return wait(plan.min_started - held);
                }
                progress.steps.ready = Some(since_ready);
                progress.steps.finished = Some(now);
                progress.phase = P::Succeeded;
                progress.message = None;
            }
            P::Unknown => {
                // Journaled by a newer agent (a downgrade): never guess what was done.
                progress.fail(
                    "the journal shows a step this version of the agent does not know; nothing more was done to the container",
                    now,
                );
                return Decision::Finished;
            }
            P::Succeeded | P::Failed => return Decision::Finished,
        }
    }
}

/// A whole request's progress. Serialised into the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestProgress {
    pub request: RequestRef,
    /// The request's `spec.podName`, sent with every report so that the coordinator reads the
    /// request and the pod at once (empty in journals written before it was kept).
    #[serde(default)]
    pub pod_name: String,
    pub pod_uid: String,
    pub phase: RecreatePhase,
    pub message: Option<String>,
    pub start_time: Option<Timestamp>,
    pub completion_time: Option<Timestamp>,
    pub containers: Vec<ContainerProgress>,
    /// Reports sent for this request by this agent process.
    #[serde(default, skip)]
    pub sequence: u64,
}

impl RequestProgress {
    pub fn new(
        request: RequestRef,
        (pod_name, pod_uid): (&str, &str),
        plan: &RequestPlan,
        now: Timestamp,
    ) -> Self {
        Self {
            request,
            pod_name: pod_name.to_string(),
            pod_uid: pod_uid.to_string(),
            phase: RecreatePhase::Recreating,
            message: None,
            start_time: Some(now),
            completion_time: None,
            containers: plan
                .containers
                .iter()
                .map(|c| ContainerProgress::new(&c.name))
                .collect(),
            sequence: 0,
        }
    }

    /// A request refused before anything was touched.
    pub fn refused(
        request: RequestRef,
        (pod_name, pod_uid): (&str, &str),
        message: String,
        now: Timestamp,
    ) -> Self {
        Self {
            request,
            pod_name: pod_name.to_string(),
            pod_uid: pod_uid.to_string(),
            phase: RecreatePhase::Failed,
            message: Some(message),
            start_time: Some(now),
            completion_time: Some(now),
            containers: Vec::new(),
            sequence: 0,
        }
    }

    /// Which containers may take a step now: all unfinished ones, or with `orderedRecreate`
    /// only the first unfinished one.
    pub fn active(&self, plan: &RequestPlan) -> Vec<usize> {
        let unfinished = self
            .containers
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.phase.is_finished())
            .map(|(i, _)| i);
        if plan.ordered {
            unfinished.take(1).collect()
        } else {
            unfinished.collect()
        }
    }

    /// Applies the failure policy and, once every container finished, the request's phase.
    pub fn settle(&mut self, plan: &RequestPlan, now: Timestamp) {
        if self.phase.is_finished() {
            return;
        }
        if plan.failure_policy == FailurePolicy::Fail
            && let Some(failed) = self
                .containers
                .iter()
                .find(|c| c.phase == ContainerRecreatePhase::Failed)
                .map(|c| c.name.clone())
        {
            // Containers that have not been stopped yet are left alone; those already stopped
            // are followed until they are back.
            for c in &mut self.containers {
                if matches!(
                    c.phase,
                    ContainerRecreatePhase::Pending
                        | ContainerRecreatePhase::Unready
                        | ContainerRecreatePhase::ShuttingDown
                ) {
                    c.fail(
                        format!(
                            "not recreated: container {failed} failed and failurePolicy is Fail"
                        ),
                        now,
                    );
                }
            }
        }
        if self.containers.iter().all(|c| c.phase.is_finished()) {
            let failed: Vec<&str> = self
                .containers
                .iter()
                .filter(|c| c.phase == ContainerRecreatePhase::Failed)
                .map(|c| c.name.as_str())
                .collect();
            if failed.is_empty() {
                self.phase = RecreatePhase::Succeeded;
                self.message = Some(format!(
                    "recreated {} container(s) in place",
                    self.containers.len()
                ));
            } else {
                self.phase = RecreatePhase::Failed;
                let first = self
                    .containers
                    .iter()
                    .find(|c| c.phase == ContainerRecreatePhase::Failed)
                    .and_then(|c| c.message.clone())
                    .unwrap_or_default();
                self.message = Some(format!(
                    "container(s) {} failed: {first}",
                    failed.join(", ")
                ));
            }
            self.completion_time = Some(now);
        }
    }

    /// Fails every unfinished container (pod gone, request deleted...) and settles.
    pub fn fail_all(&mut self, message: &str, now: Timestamp) {
        for c in &mut self.containers {
            c.fail(message, now);
        }
        self.phase = RecreatePhase::Failed;
        self.message = Some(message.to_string());
        self.completion_time = Some(now);
    }

    /// The report of the current view; bumps the sequence.
    pub fn report(&mut self) -> RecreateReport {
        self.sequence = self.sequence.saturating_add(1);
        RecreateReport {
            request: self.request.clone(),
            pod_name: (!self.pod_name.is_empty()).then(|| self.pod_name.clone()),
            sequence: self.sequence,
            phase: self.phase,
            message: self.message.clone(),
            start_time: self.start_time,
            completion_time: self.completion_time,
            containers: self
                .containers
                .iter()
                .map(ContainerProgress::state)
                .collect(),
        }
    }

    /// Comparable view, to report only when something a person would see changed.
    pub fn visible(&self) -> (RecreatePhase, Option<String>, Vec<ContainerRecreateState>) {
        (
            self.phase,
            self.message.clone(),
            self.containers
                .iter()
                .map(ContainerProgress::state)
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests;
