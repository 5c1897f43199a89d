//! The thin shell around the state machine: carries out one request — observes the pod status
//! and the runtime, asks [`machine::decide`] what to do, does it, journals, reports.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use super::coordinator_client::{CoordinatorClient, CoordinatorError};
use super::error_policy::error_policy;
use super::journal::{self, Journal, Journaled};
use super::machine::{
    self, Decision, Observation, PodContainerView, RequestProgress, RuntimeView, raw_id, since,
};
use super::metrics::AgentMetrics;
use super::plan::{self, ContainerPlan, RequestPlan};
use super::report::Reporter;
use super::shutdown::{self, HookClient};
use super::watch::Stores;
use relaunch_api::report::{ReadinessRequest, RequestRef};
use relaunch_api::{ContainerRecreateRequest, LABEL_POD_UID, RecreatePhase};
use relaunch_cri::{ContainerState, CriError, RuntimeClient};

use crate::failpoint::{self, Failpoint};

/// How long the unready step keeps asking an unreachable coordinator when the request has no
/// earlier deadline. Nothing is stopped without the coordinator's answer.
pub const UNREADY_TIMEOUT: Duration = Duration::from_secs(120);

/// Everything a request's worker needs.
pub struct Context {
    pub node: String,
    pub runtime: RuntimeClient,
    pub hooks: HookClient,
    pub stores: Stores,
    pub changes: watch::Receiver<u64>,
    pub reporter: Reporter,
    pub coordinator: CoordinatorClient,
    pub journal: Journal,
    pub metrics: AgentMetrics,
    pub permits: Arc<Semaphore>,
    /// Cancelled on SIGTERM: stop at the next safe point.
    pub stop: CancellationToken,
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Succeeded or Failed here; the final report is queued.
    Finished(RecreatePhase),
    /// The request was deleted or finished by the coordinator meanwhile.
    Gone,
    /// The agent is shutting down; progress is journaled.
    Interrupted,
    /// The coordinator did not take the request's first report, which was to admit it: nothing
    /// was done, and the request waits for the coordinator to admit it.
    NotClaimed,
}

/// What the coordinator made of the first report of a request not admitted yet, which admits
/// it (the report API checks the request as the request controller would).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// Admitted at this generation, and the report written.
    Taken,
    /// Finished: refused by admission, or the refusal the report carried.
    Finished,
    /// Not taken (unreachable, refused, its pod held by a ScaleDown, another generation).
    NotTaken,
}

/// Why one container's driver returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Finished,
    Gone,
    PodGone,
    Interrupted,
}

/// The namespace/name/uid of a request.
pub fn request_ref(crr: &ContainerRecreateRequest) -> RequestRef {
    RequestRef {
        namespace: crr.namespace().unwrap_or_default(),
        name: crr.name_any(),
        uid: crr.uid().unwrap_or_default(),
    }
}

/// The request's pod as cached, if it is the pod the request was made for.
pub fn request_pod(stores: &Stores, crr: &ContainerRecreateRequest) -> Option<Arc<Pod>> {
    let namespace = crr.namespace().unwrap_or_default();
    let pod = stores
        .pods
        .get(&ObjectRef::new(&crr.spec.pod_name).within(&namespace))?;
    match crr.labels().get(LABEL_POD_UID) {
        Some(uid) if pod.uid().as_deref() != Some(uid.as_str()) => None,
        _ => Some(pod),
    }
}

/// Carries out one request from its start (or its journaled progress) to the end. With
/// `claim` (a request without status), the first report admits the request, and nothing is done
/// before the coordinator answered it.
pub async fn run_request(
    ctx: Arc<Context>,
    crr: Arc<ContainerRecreateRequest>,
    resumed: Option<Journaled>,
    claim: bool,
) -> Outcome {
    let request = request_ref(&crr);
    let span = tracing::info_span!("recreate", crr = %request.name, namespace = %request.namespace, pod = %crr.spec.pod_name, node = %ctx.node);
    run_request_inner(ctx, crr, request, resumed, claim)
        .instrument(span)
        .await
}

async fn run_request_inner(
    ctx: Arc<Context>,
    crr: Arc<ContainerRecreateRequest>,
    request: RequestRef,
    resumed: Option<Journaled>,
    claim: bool,
) -> Outcome {
    let Some(pod) = request_pod(&ctx.stores, &crr) else {
        return Outcome::Gone;
    };
    let pod_uid = pod.uid().unwrap_or_default();
    let pod_id = (crr.spec.pod_name.as_str(), pod_uid.as_str());
    let plan = match plan::plan(&crr.spec, &pod) {
        Ok(plan) => plan,
        Err(refusal) => {
            info!(reason = refusal.reason(), "refused: {refusal}");
            let mut progress =
                RequestProgress::refused(request, pod_id, refusal.to_string(), Timestamp::now());
            if claim {
                if claim_request(&ctx, &crr, progress.report()).await == Claim::NotTaken {
                    return Outcome::NotClaimed;
                }
            } else {
                ctx.reporter.submit(progress.report());
            }
            ctx.metrics.recreates.with_label_values(&["refused"]).inc();
            return Outcome::Finished(RecreatePhase::Failed);
        }
    };
    let names: Vec<&str> = plan.containers.iter().map(|c| c.name.as_str()).collect();
    if let Some(why) = resumed
        .as_ref()
        .and_then(|j| journal::refusal(j, &pod_uid, &names))
    {
        // Its progress cannot be trusted: starting over could restart a container twice.
        warn!("refused: {why}");
        let mut progress = RequestProgress::refused(request, pod_id, why, Timestamp::now());
        ctx.reporter.submit(progress.report());
        ctx.metrics.recreates.with_label_values(&["refused"]).inc();
        return Outcome::Finished(RecreatePhase::Failed);
    }
    let resumed = match resumed {
        Some(Journaled::Progress(p)) => Some(*p),
        _ => None,
    };
    let now = Timestamp::now();
    let mut progress = starting_progress(resumed, &request, pod_id, &plan, now);
    let deadline = deadline_of(&crr, &plan, &progress, now);
    // A request to claim: its first report (running, or queued when no permit is free) admits
    // it; nothing is done before the answer.
    let mut claimed_permit = None;
    if claim {
        let permit = ctx.permits.clone().try_acquire_owned().ok();
        let first = match permit {
            Some(_) => progress.report(),
            None => queued_report(&mut progress),
        };
        match claim_request(&ctx, &crr, first).await {
            Claim::Taken => claimed_permit = permit,
            Claim::Finished => return Outcome::Gone,
            Claim::NotTaken => return Outcome::NotClaimed,
        }
    }
    // The claim, when it held a permit, was the report that says the request runs.
    let reported = claimed_permit.is_some();
    let permit = match claimed_permit {
        Some(permit) => Some(permit),
        None => wait_for_permit(&ctx, &mut progress).await,
    };
    let Some(_permit) = permit else {
        return Outcome::Interrupted;
    };
    ctx.metrics.in_flight.inc();
    let _in_flight = scopeguard(ctx.metrics.clone());
    let started = Instant::now();
    info!(
        containers = plan.containers.len(),
        ordered = plan.ordered,
        "recreating"
    );
    if !reported {
        ctx.reporter.submit(progress.report());
    }
    failpoint::hit(Failpoint::PanicInWorker);
    let shared = Arc::new(Mutex::new(progress));

    loop {
        let active = lock(&shared).active(&plan);
        if active.is_empty() {
            break;
        }
        let exits = join_all(
            active
                .into_iter()
                .map(|idx| run_container(&ctx, &shared, &plan, idx, &pod_uid, &crr, deadline)),
        )
        .await;
        if exits.contains(&Exit::Interrupted) {
            let snapshot = lock(&shared).clone();
            if let Err(e) = ctx.journal.write_async(&snapshot).await {
                error_policy(&ctx.metrics, "cannot checkpoint progress", &e.into());
            }
            return Outcome::Interrupted;
        }
        if exits.contains(&Exit::Gone) {
            info!("the request was deleted or finished elsewhere; stopping work on it");
            if let Err(e) = ctx.journal.remove_async(&request.uid).await {
                error_policy(&ctx.metrics, "journal", &e.into());
            }
            return Outcome::Gone;
        }
        if exits.contains(&Exit::PodGone) {
            lock(&shared).fail_all(
                "the pod was deleted or replaced (its UID changed) during the recreate",
                Timestamp::now(),
            );
            break;
        }
    }

    finish(&ctx, &shared, &plan, started).await
}

/// The request's progress to start from: the journaled one (checked by [`journal::refusal`] to
/// be for this very pod and these containers), else a new one.
fn starting_progress(
    resumed: Option<RequestProgress>,
    request: &RequestRef,
    (pod_name, pod_uid): (&str, &str),
    plan: &RequestPlan,
    now: Timestamp,
) -> RequestProgress {
    match resumed {
        Some(mut p)
            if p.pod_uid == pod_uid
                && p.containers
                    .iter()
                    .map(|c| &c.name)
                    .eq(plan.containers.iter().map(|c| &c.name)) =>
        {
            info!("resuming from the journal");
            // Journals of agents before 2026-12 did not keep the pod's name.
            if p.pod_name.is_empty() {
                p.pod_name = pod_name.to_string();
            }
            p
        }
        _ => RequestProgress::new(request.clone(), (pod_name, pod_uid), plan, now),
    }
}

/// When `activeDeadlineSeconds` runs out, counted from the request's creation.
fn deadline_of(
    crr: &ContainerRecreateRequest,
    plan: &RequestPlan,
    progress: &RequestProgress,
    now: Timestamp,
) -> Option<Timestamp> {
    let created = crr
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .or(progress.start_time)
        .unwrap_or(now);
    plan.active_deadline.and_then(|d| {
        created
            .checked_add(jiff::SignedDuration::try_from(d).ok()?)
            .ok()
    })
}

/// One of the node's `--max-parallel` permits; while waiting for one, the coordinator is told
/// the request is queued. None when the agent stops first.
async fn wait_for_permit(
    ctx: &Context,
    progress: &mut RequestProgress,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let permit = match ctx.permits.clone().try_acquire_owned() {
        Ok(permit) => Ok(permit),
        Err(_) => {
            // Tell the coordinator the request is accepted and waiting, not lost.
            ctx.reporter.submit(queued_report(progress));
            tokio::select! {
                _ = ctx.stop.cancelled() => return None,
                permit = ctx.permits.clone().acquire_owned() => permit,
            }
        }
    };
    permit.ok()
}

/// The report that says the request waits for one of the node's `--max-parallel` permits.
fn queued_report(progress: &mut RequestProgress) -> relaunch_api::report::RecreateReport {
    let mut queued = progress.report();
    queued.phase = RecreatePhase::Pending;
    queued.message =
        Some("queued: the node is recreating as many containers as --max-parallel allows".into());
    queued
}

/// Sends `report`, the first of a request not admitted yet, and waits for the answer: the
/// coordinator admits the request (or refuses it) and writes the report in one status write.
async fn claim_request(
    ctx: &Context,
    crr: &ContainerRecreateRequest,
    report: relaunch_api::report::RecreateReport,
) -> Claim {
    match ctx.coordinator.claim(&report).await {
        Ok(status) => {
            if status.phase.is_finished() {
                ctx.reporter.delivered(&report);
                info!(
                    phase = status.phase.as_str(),
                    message = status.message.as_deref().unwrap_or_default(),
                    "the coordinator finished the request on its first report"
                );
                Claim::Finished
            } else if status.admitted_generation.is_some()
                && status.admitted_generation == crr.metadata.generation
            {
                ctx.reporter.delivered(&report);
                Claim::Taken
            } else {
                info!(
                    "the request changed before the coordinator admitted it; waiting for its admission"
                );
                Claim::NotTaken
            }
        }
        Err(CoordinatorError::Rejected {
            status: 409,
            message,
        }) => {
            info!("the coordinator does not admit the request now: {message}");
            Claim::NotTaken
        }
        Err(e) => {
            error_policy(
                &ctx.metrics,
                "the coordinator did not take the request's first report",
                &e.into(),
            );
            Claim::NotTaken
        }
    }
}

/// Settles the finished request: queues the final report, journals the result, counts it.
async fn finish(
    ctx: &Context,
    shared: &Mutex<RequestProgress>,
    plan: &RequestPlan,
    started: Instant,
) -> Outcome {
    let report = {
        let mut p = lock(shared);
        p.settle(plan, Timestamp::now());
        if !p.phase.is_finished() {
            // Every container finished, so settle finished the request; be explicit anyway.
            p.fail_all(
                "internal: containers finished but the request did not",
                Timestamp::now(),
            );
        }
        p.report()
    };
    let final_progress = lock(shared).clone();
    // Queued first: the journal's fsync is not on the way to the coordinator.
    ctx.reporter.submit(report);
    // Kept until the coordinator's status shows the request finished, so a restart between
    // here and the report's delivery never starts the request over. A restart before this
    // write resumes from the journaled stop, finds the new container and stops nothing again.
    // The journal entry cannot be dropped before this write: that waits for the worker to end.
    if let Err(e) = ctx.journal.write_async(&final_progress).await {
        error_policy(&ctx.metrics, "cannot journal the result", &e.into());
    }
    observe_durations(&ctx.metrics, &final_progress, started.elapsed());
    let result = if final_progress.phase == RecreatePhase::Succeeded {
        "succeeded"
    } else {
        "failed"
    };
    ctx.metrics.recreates.with_label_values(&[result]).inc();
    info!(
        phase = final_progress.phase.as_str(),
        message = final_progress.message.as_deref().unwrap_or_default(),
        "finished"
    );
    Outcome::Finished(final_progress.phase)
}

fn observe_durations(metrics: &AgentMetrics, progress: &RequestProgress, total: Duration) {
    let h = |phase: &str, d: Duration| {
        metrics
            .duration
            .with_label_values(&[phase])
            .observe(d.as_secs_f64())
    };
    for c in &progress.containers {
        let s = &c.steps;
        let pairs = [
            ("unready", s.unready, s.shutdown),
            ("shutdown", s.shutdown, s.stop),
            ("stop", s.stop, s.stopped),
            ("restart", s.stopped, s.restarted),
            ("ready", s.restarted, s.finished),
        ];
        for (phase, from, to) in pairs {
            if let (Some(from), Some(to)) = (from, to) {
                h(phase, since(to, from));
            }
        }
    }
    h("total", total);
}

struct InFlight(AgentMetrics);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

fn scopeguard(metrics: AgentMetrics) -> InFlight {
    InFlight(metrics)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The pod status of container `name` (regular or init).
pub fn pod_view(pod: &Pod, name: &str) -> Option<PodContainerView> {
    let status = pod.status.as_ref()?;
    let s = status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|s| s.name == name)?;
    Some(PodContainerView {
        container_id: s.container_id.clone().filter(|id| !id.is_empty()),
        restart_count: s.restart_count,
        ready: s.ready,
        started: s.started.unwrap_or(false),
        running: s.state.as_ref().is_some_and(|st| st.running.is_some()),
    })
}

async fn runtime_view(
    runtime: &RuntimeClient,
    pod_uid: &str,
    name: &str,
    previous: Option<&str>,
) -> Result<RuntimeView, CriError> {
    let containers = runtime.pod_containers(pod_uid, Some(name)).await?;
    let newest = containers.first();
    let previous_running = previous.is_some_and(|prev| {
        containers
            .iter()
            .any(|c| c.id == raw_id(prev) && c.state == ContainerState::Running)
    });
    Ok(RuntimeView {
        newest_id: newest.map(|c| c.id.clone()),
        newest_running: newest.is_some_and(|c| c.state == ContainerState::Running),
        previous_running,
    })
}

fn still_wanted(stores: &Stores, crr: &ContainerRecreateRequest) -> bool {
    let key = ObjectRef::new(&crr.name_any()).within(&crr.namespace().unwrap_or_default());
    stores.requests.get(&key).is_some_and(|current| {
        current.uid() == crr.uid()
            && !current
                .status
                .as_ref()
                .is_some_and(|s| s.phase.is_finished() || s.has_unknown())
    })
}

/// One container of a request, carried through the state machine by [`run_container`].
struct ContainerRun<'a> {
    ctx: &'a Context,
    shared: &'a Mutex<RequestProgress>,
    plan: &'a RequestPlan,
    cplan: &'a ContainerPlan,
    idx: usize,
    pod_uid: &'a str,
    crr: &'a ContainerRecreateRequest,
    deadline: Option<Timestamp>,
}

/// Carries container `idx` of the request through the state machine: observe, decide, act,
/// until it finishes, the request or pod goes away, or the agent stops.
async fn run_container(
    ctx: &Context,
    shared: &Mutex<RequestProgress>,
    plan: &RequestPlan,
    idx: usize,
    pod_uid: &str,
    crr: &ContainerRecreateRequest,
    deadline: Option<Timestamp>,
) -> Exit {
    let Some(cplan) = plan.containers.get(idx) else {
        return Exit::Finished;
    };
    let run = ContainerRun {
        ctx,
        shared,
        plan,
        cplan,
        idx,
        pod_uid,
        crr,
        deadline,
    };
    let span = tracing::info_span!("container", container = cplan.name.as_str());
    run.run().instrument(span).await
}

impl ContainerRun<'_> {
    async fn run(&self) -> Exit {
        let ctx = self.ctx;
        let mut changes = ctx.changes.clone();
        loop {
            if ctx.stop.is_cancelled() {
                return Exit::Interrupted;
            }
            if !still_wanted(&ctx.stores, self.crr) {
                return Exit::Gone;
            }
            let Some(pod) = request_pod(&ctx.stores, self.crr)
                .filter(|p| p.uid().as_deref() == Some(self.pod_uid))
            else {
                return Exit::PodGone;
            };
            let exit = match self.decide(&pod).await {
                Decision::Finished => return Exit::Finished,
                Decision::ObserveRuntime => None,
                Decision::Wait { recheck } => {
                    tokio::select! {
                        _ = ctx.stop.cancelled() => return Exit::Interrupted,
                        _ = changes.changed() => {}
                        _ = tokio::time::sleep(recheck.max(Duration::from_millis(10))) => {}
                    }
                    None
                }
                Decision::RequestUnready => self.request_unready().await,
                Decision::Shutdown {
                    container_id,
                    budget,
                } => self.shut_down(&pod, &container_id, budget).await,
                Decision::Stop {
                    container_id,
                    grace,
                } => self.stop(&container_id, grace).await,
            };
            if let Some(exit) = exit {
                return exit;
            }
        }
    }

    /// Observes the pod (and the runtime when the machine asks) and lets the machine decide;
    /// a change the coordinator should see is reported.
    async fn decide(&self, pod: &Pod) -> Decision {
        let ctx = self.ctx;
        let name = self.cplan.name.as_str();
        let mut obs = Observation {
            now: Timestamp::now(),
            pod: pod_view(pod, name),
            runtime: None,
        };
        loop {
            let (decision, previous, report) = {
                let mut p = lock(self.shared);
                let before = p.visible();
                p.settle(self.plan, obs.now);
                let decision = match p.containers.get_mut(self.idx) {
                    Some(c) => machine::decide(c, self.cplan, &obs, self.deadline),
                    None => Decision::Finished,
                };
                p.settle(self.plan, obs.now);
                let previous =
                    (p.containers.get(self.idx)).and_then(|c| c.previous_container_id.clone());
                let report = (p.visible() != before).then(|| p.report());
                (decision, previous, report)
            };
            if let Some(report) = report {
                ctx.reporter.submit(report);
            }
            if decision != Decision::ObserveRuntime || obs.runtime.is_some() {
                return decision;
            }
            match runtime_view(&ctx.runtime, self.pod_uid, name, previous.as_deref()).await {
                Ok(view) => obs.runtime = Some(view),
                Err(e) => {
                    let what = "cannot read the container from the runtime, retrying";
                    error_policy(&ctx.metrics, what, &e.into());
                    return Decision::Wait {
                        recheck: Duration::from_secs(1),
                    };
                }
            }
        }
    }

    /// Asks the coordinator to hold the pod NotReady (journaled first).
    async fn request_unready(&self) -> Option<Exit> {
        let untouched = "the pod was not held NotReady and nothing was stopped";
        if !journal_before_acting(self.ctx, self.shared, self.idx, untouched) {
            return None;
        }
        let request = ReadinessRequest {
            request: lock(self.shared).request.clone(),
            ready: false,
        };
        let give_up = Timestamp::now()
            .checked_add(jiff::SignedDuration::try_from(UNREADY_TIMEOUT).unwrap_or_default())
            .ok()
            .map(|t| self.deadline.map_or(t, |d| d.min(t)));
        match ask_unready(self.ctx, &request, give_up).await {
            Ok(gated) => {
                if !gated {
                    warn!(
                        "the pod has no relaunch.dev/ready readiness gate: the unready step cannot hold traffic off"
                    );
                }
                lock(self.shared).containers[self.idx].unready_done(Timestamp::now());
            }
            Err(UnreadyFailure::Interrupted) => return Some(Exit::Interrupted),
            Err(UnreadyFailure::Failed(message)) => {
                let mut p = lock(self.shared);
                p.containers[self.idx].fail(message, Timestamp::now());
            }
        }
        None
    }

    /// Runs the container's shutdown action, if it has one (journaled first).
    async fn shut_down(&self, pod: &Pod, container_id: &str, budget: Duration) -> Option<Exit> {
        let ctx = self.ctx;
        let Some((_, step)) = &self.cplan.shutdown else {
            lock(self.shared).containers[self.idx].shutdown_done(None);
            return None;
        };
        // The action can make the application exit and the kubelet restart it: record durably
        // which container it targets, so a resumed agent never acts on the container's
        // successor.
        let untouched = "the shutdown action did not run and nothing was stopped";
        if !journal_before_acting(ctx, self.shared, self.idx, untouched) {
            return None;
        }
        let pod_ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let note = tokio::select! {
            _ = ctx.stop.cancelled() => return Some(Exit::Interrupted),
            note = shutdown::run(&ctx.runtime, &ctx.hooks, container_id, pod_ip.as_deref(), step, budget) => note,
        };
        failpoint::hit(Failpoint::DuringShutdown);
        if let Some(note) = &note {
            warn!("{note}");
        }
        lock(self.shared).containers[self.idx].shutdown_done(note);
        None
    }

    /// Stops the container (journaled first); a stop in progress is finished even on SIGTERM.
    async fn stop(&self, container_id: &str, grace: Duration) -> Option<Exit> {
        let ctx = self.ctx;
        // Durably record what is about to be stopped before stopping it.
        if !journal_before_acting(ctx, self.shared, self.idx, "nothing was stopped") {
            return None;
        }
        failpoint::hit(Failpoint::AfterStopJournal);
        info!(container_id = %container_id, grace_seconds = grace.as_secs(), "stopping");
        // Not cancelled by SIGTERM: a stop in progress is finished.
        match ctx.runtime.stop_container(container_id, grace).await {
            Ok(()) | Err(CriError::NotFound { .. }) => {
                failpoint::hit(Failpoint::AfterStop);
                lock(self.shared).containers[self.idx].stop_done(Timestamp::now());
            }
            Err(e) if e.is_transient() => {
                error_policy(&ctx.metrics, "stopping failed, retrying", &e.into());
                tokio::select! {
                    _ = ctx.stop.cancelled() => return Some(Exit::Interrupted),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Err(e) => {
                lock(self.shared).containers[self.idx]
                    .fail(format!("StopContainer failed: {e}"), Timestamp::now());
            }
        }
        None
    }
}

/// Durably records the request's progress (above all the container ID the next action targets)
/// before that action. When the journal cannot be written the container fails with `untouched`
/// saying what was not done, and false is returned: nothing is done that a crash could repeat.
fn journal_before_acting(
    ctx: &Context,
    shared: &Mutex<RequestProgress>,
    idx: usize,
    untouched: &str,
) -> bool {
    // Held across the write: the containers of one request share one journal file (and its
    // temporary file), so their snapshots are written one at a time and in order.
    let mut progress = lock(shared);
    match ctx.journal.write(&progress) {
        Ok(()) => true,
        Err(e) => {
            progress.containers[idx].fail(format!("{e}; {untouched}"), Timestamp::now());
            false
        }
    }
}

enum UnreadyFailure {
    Interrupted,
    Failed(String),
}

/// Asks the coordinator to hold the pod NotReady until it answers, `give_up` passes, or it
/// refuses. Returns whether the pod has the readiness gate.
async fn ask_unready(
    ctx: &Context,
    request: &ReadinessRequest,
    give_up: Option<Timestamp>,
) -> Result<bool, UnreadyFailure> {
    let mut backoff = Duration::ZERO;
    loop {
        match ctx.coordinator.readiness(request).await {
            Ok(answer) => return Ok(answer.gated),
            Err(e) if !e.is_transient() => {
                return Err(UnreadyFailure::Failed(format!(
                    "the coordinator refused to hold the pod NotReady ({e}); nothing was stopped"
                )));
            }
            Err(e) => {
                if give_up.is_some_and(|t| Timestamp::now() >= t) {
                    return Err(UnreadyFailure::Failed(format!(
                        "the coordinator did not accept the unready request in time ({e}); nothing was stopped"
                    )));
                }
                backoff = super::report::next_backoff(backoff);
                error_policy(&ctx.metrics, "unready request failed, retrying", &e.into());
                tokio::select! {
                    _ = ctx.stop.cancelled() => return Err(UnreadyFailure::Interrupted),
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}
