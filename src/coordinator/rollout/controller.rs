//! The RollingRestart controller and the workload trigger: a thin shell around
//! [`super::state`] and [`super::planner`]. Watches feed caches; each pass gathers, per rollout,
//! the target pods, the requests it created and the budgets, decides in pure code, and acts.
//! Durable state lives in the requests (deterministic names, owner reference, labels) and in
//! status, so a new leader resumes where the last one stopped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec, ReplicaSet, ReplicaSetSpec, StatefulSet,
    StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use prometheus::{HistogramOpts, HistogramVec, IntGauge, IntGaugeVec, Opts, Registry};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cluster::{FIELD_MANAGER, is_conflict};
use crate::controller::{Caches, drive};
use crate::{Context, CoordinatorError};
use relaunch_api::validation::{InvalidRollout, validate_rollout, validate_rollout_name};
use relaunch_api::{
    ANNOTATION_RESTART_AT, ContainerRecreateRequest, LABEL_ROLLING_RESTART, RollingRestart,
    RollingRestartStatus, RolloutPhase, WorkloadKind,
};

use super::planner::{self, Budget, TargetPod, WaitReason};
use super::state::{self, Step};
use super::trigger;

/// Longest sleep between passes (readiness ages, minReadySeconds).
const MAX_IDLE: Duration = Duration::from_secs(5);
/// Shortest gap between passes, so bursts of watch events are handled together.
const MIN_GAP: Duration = Duration::from_millis(10);
/// Requests of one batch created at once.
const CREATE_CONCURRENCY: usize = 16;
/// Progress counts alone are written at most this often per rollout (the durable state is in
/// the requests; a new leader recomputes the counts).
const COUNTS_INTERVAL: Duration = Duration::from_secs(1);
/// How long a rollout whose cached version predates our last status write waits for the watch
/// to bring the write before it is planned on the cached version anyway.
const OWN_WRITE_SETTLE: Duration = Duration::from_secs(5);
/// After creating a batch, planning waits this long at most for the requests to show up in
/// the cache (so a stale cache never plans a second, overlapping batch).
const CREATION_SETTLE: Duration = Duration::from_secs(30);

/// The rollout metrics (names are stable API, see `docs/metrics.md`).
#[derive(Clone)]
pub struct RolloutMetrics {
    /// `relaunch_rollouts_active`: rollouts neither Succeeded nor Failed.
    pub active: IntGauge,
    /// `relaunch_rollout_pods{state}`: target pods of active rollouts by state.
    pub pods: IntGaugeVec,
    /// `relaunch_rollout_blocked{reason}`: active rollouts that cannot start a batch, by reason.
    pub blocked: IntGaugeVec,
    /// `relaunch_rollout_duration_seconds`: from start to completion.
    pub duration: HistogramVec,
}

impl RolloutMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let active = IntGauge::new(
            "relaunch_rollouts_active",
            "RollingRestarts in progress or paused.",
        )?;
        let pods = IntGaugeVec::new(
            Opts::new(
                "relaunch_rollout_pods",
                "Target pods of active RollingRestarts, by state.",
            ),
            &["state"],
        )?;
        let blocked = IntGaugeVec::new(
            Opts::new(
                "relaunch_rollout_blocked",
                "Active RollingRestarts that cannot start their next batch, by reason.",
            ),
            &["reason"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "relaunch_rollout_duration_seconds",
                "Time from a RollingRestart's start to its completion, by result.",
            )
            .buckets(vec![
                10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
            ]),
            &["result"],
        )?;
        registry.register(Box::new(active.clone()))?;
        registry.register(Box::new(pods.clone()))?;
        registry.register(Box::new(blocked.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self {
            active,
            pods,
            blocked,
            duration,
        })
    }
}

struct Stores {
    rollouts: Store<RollingRestart>,
    pods: Store<Pod>,
    budgets: Store<PodDisruptionBudget>,
    requests: Store<ContainerRecreateRequest>,
    statefulsets: Store<StatefulSet>,
    deployments: Store<Deployment>,
    daemonsets: Store<DaemonSet>,
    replicasets: Store<ReplicaSet>,
}

/// Keeps only what the trigger and the target lookup read of a workload: identity, owners, the
/// `relaunch.dev/` annotations and the selector.
fn prune_workload<K: Resource>(object: &mut K, keep_selector: impl FnOnce(&mut K)) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    meta.labels = None;
    meta.finalizers = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.retain(|k, _| k.starts_with("relaunch.dev/"));
    }
    keep_selector(object);
}

/// Runs the rollout controller and the trigger on the shared pod and request `caches` until
/// `shutdown`, waking on `notify`.
pub async fn run(
    ctx: Arc<Context>,
    caches: Caches,
    notify: Arc<Notify>,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let client = ctx.cluster.client().clone();
    let ctx_metrics = ctx.rollouts.clone();
    let mut tasks = Vec::new();

    macro_rules! watch {
        ($kind:ty, $what:expr, $prune:expr) => {{
            let (store, writer) = reflector::store::<$kind>();
            let stream = watcher(
                Api::<$kind>::all(client.clone()),
                watcher::Config::default(),
            )
            .default_backoff()
            .modify($prune)
            .reflect(writer);
            tasks.push(tokio::spawn(drive($what, stream, vec![notify.clone()])));
            store
        }};
    }
    macro_rules! workload {
        ($kind:ty, $what:expr, $spec:ident) => {
            watch!($kind, $what, |o: &mut $kind| prune_workload(o, |o| {
                o.status = None;
                o.spec = o.spec.take().map(|s| $spec {
                    selector: s.selector,
                    ..Default::default()
                });
            }))
        };
    }
    let stores = Stores {
        rollouts: watch!(
            RollingRestart,
            "rollingrestarts",
            |o: &mut RollingRestart| { o.metadata.managed_fields = None }
        ),
        pods: caches.pods,
        budgets: watch!(
            PodDisruptionBudget,
            "poddisruptionbudgets",
            |o: &mut PodDisruptionBudget| o.metadata.managed_fields = None
        ),
        requests: caches.requests,
        statefulsets: workload!(StatefulSet, "statefulsets", StatefulSetSpec),
        deployments: workload!(Deployment, "deployments", DeploymentSpec),
        daemonsets: workload!(DaemonSet, "daemonsets", DaemonSetSpec),
        replicasets: workload!(ReplicaSet, "replicasets", ReplicaSetSpec),
    };
    let synced = async {
        tokio::try_join!(
            stores.rollouts.wait_until_ready(),
            stores.pods.wait_until_ready(),
            stores.budgets.wait_until_ready(),
            stores.requests.wait_until_ready(),
            stores.statefulsets.wait_until_ready(),
            stores.deployments.wait_until_ready(),
            stores.daemonsets.wait_until_ready(),
            stores.replicasets.wait_until_ready(),
        )
    };
    let result = tokio::select! {
        _ = shutdown.cancelled() => None,
        r = synced => Some(r),
    };
    let outcome = match result {
        None => Ok(()),
        Some(Err(_)) => Err(CoordinatorError::ControllersStopped),
        Some(Ok(_)) => {
            let reporter = Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(ctx.settings.instance.clone()),
            };
            let mut worker = Worker {
                recorder: Recorder::new(client.clone(), reporter),
                ctx,
                stores,
                created: HashMap::new(),
                refused_triggers: HashSet::new(),
                status_written: Mutex::new(HashMap::new()),
                due: None,
            };
            let mut wake = Duration::ZERO;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = notify.notified() => {}
                    _ = tokio::time::sleep(wake) => {}
                }
                tokio::time::sleep(MIN_GAP).await;
                worker.pass().await;
                wake = worker
                    .due
                    .take()
                    .unwrap_or(MAX_IDLE)
                    .clamp(MIN_GAP, MAX_IDLE);
            }
            Ok(())
        }
    };
    for task in tasks {
        task.abort();
    }
    // A replica that stopped leading reports nothing about rollouts it no longer drives.
    let m = &ctx_metrics;
    m.active.set(0);
    m.pods.reset();
    m.blocked.reset();
    outcome
}

/// Whether `status` differs from `previous` only in progress counts (pods restarted or in
/// progress, per-pod results): phase, conditions, batch and failures are all unchanged.
fn counts_only(previous: &RollingRestartStatus, status: &RollingRestartStatus) -> bool {
    let mut same = status.clone();
    same.total = previous.total;
    same.restarted = previous.restarted;
    same.in_progress = previous.in_progress;
    same.pods.clone_from(&previous.pods);
    same == *previous
}

struct Worker {
    ctx: Arc<Context>,
    recorder: Recorder,
    stores: Stores,
    /// Requests created per rollout UID and when, until the cache shows them.
    created: HashMap<String, (Vec<String>, Instant)>,
    /// Triggers refused for a bad companion annotation and already warned about:
    /// (namespace, rollout name, message).
    refused_triggers: HashSet<(String, String, String)>,
    /// Per rollout UID, when its status was last written and the resourceVersion the write
    /// replaced: while the cache still shows that version, it has not seen the write yet.
    status_written: Mutex<HashMap<String, (Instant, String)>>,
    /// How soon a pass is due for a status write held back (none: nothing held back).
    due: Option<Duration>,
}

/// What a pass learned about one rollout, for the metrics.
#[derive(Default)]
struct Tally {
    active: i64,
    pods: BTreeMap<&'static str, i64>,
    blocked: BTreeMap<String, i64>,
}

impl Worker {
    async fn pass(&mut self) {
        self.trigger().await;
        let mut tally = Tally::default();
        for rollout in self.stores.rollouts.state() {
            let phase = rollout.status.as_ref().map(|s| s.phase);
            if matches!(phase, Some(RolloutPhase::Succeeded | RolloutPhase::Failed)) {
                continue;
            }
            tally.active += 1;
            self.reconcile(&rollout, &mut tally).await;
        }
        let m = &self.ctx.rollouts;
        m.active.set(tally.active);
        for state in ["restarted", "failed", "in_progress", "pending"] {
            m.pods
                .with_label_values(&[state])
                .set(tally.pods.get(state).copied().unwrap_or(0));
        }
        m.blocked.reset();
        for (reason, n) in &tally.blocked {
            m.blocked.with_label_values(&[reason.as_str()]).set(*n);
        }
        let live: HashSet<String> = self
            .stores
            .rollouts
            .state()
            .iter()
            .filter_map(|r| r.uid())
            .collect();
        self.created.retain(|uid, _| live.contains(uid));
        self.status_written
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|uid, _| live.contains(uid));
    }

    async fn reconcile(&mut self, rollout: &RollingRestart, tally: &mut Tally) {
        let now = Timestamp::now();
        let ns = rollout.namespace().unwrap_or_default();
        let name = rollout.name_any();
        let uid = rollout.uid().unwrap_or_default();
        let generation = rollout.metadata.generation;
        let previous = rollout.status.clone().unwrap_or_default();
        let spec = &rollout.spec;
        if let Err(invalid) = validate_rollout_name(&name).and_then(|()| validate_rollout(spec)) {
            let status = state::failed_status(&previous, &invalid, generation, now);
            return self.finish(rollout, &previous, status, true).await;
        }
        let (selector, target) = match self.selector(rollout) {
            Ok(found) => found,
            Err(missing) => {
                // The workload may be created later: wait, saying what is missing (abort and
                // pause still apply).
                let status = state::waiting_for_target(spec, &previous, &missing, generation, now);
                if status.phase == RolloutPhase::Failed {
                    return self.finish(rollout, &previous, status, true).await;
                }
                if status.phase != previous.phase {
                    self.phase_event(rollout, &status);
                }
                self.write_status(rollout, &previous, status).await;
                return;
            }
        };
        let Ok(selector) = Selector::try_from(selector) else {
            let status =
                state::failed_status(&previous, &InvalidRollout::InvalidSelector, generation, now);
            return self.finish(rollout, &previous, status, true).await;
        };

        let namespace_pods: Vec<Arc<Pod>> = self
            .stores
            .pods
            .state()
            .into_iter()
            .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
            .collect();
        let mut targets: Vec<Arc<Pod>> = namespace_pods
            .iter()
            .filter(|p| selector.matches(p.labels()) && state::is_target(p))
            .cloned()
            .collect();
        targets.sort_by_key(|p| p.name_any());

        let mut containers = BTreeMap::new();
        for pod in &targets {
            match state::containers_for(spec, pod) {
                Ok(c) => {
                    containers.insert(pod.name_any(), c);
                }
                Err(invalid) => {
                    let status = state::failed_status(&previous, &invalid, generation, now);
                    return self.finish(rollout, &previous, status, true).await;
                }
            }
        }

        let all_requests = self.stores.requests.state();
        let requests: Vec<&ContainerRecreateRequest> = all_requests
            .iter()
            .map(Arc::as_ref)
            .filter(|r| {
                r.namespace().as_deref() == Some(ns.as_str())
                    && r.labels().get(LABEL_ROLLING_RESTART) == Some(&name)
                    && r.owner_references().iter().any(|o| o.uid == uid)
            })
            .collect();
        // Until the requests of the last batch are in the cache, the cache cannot be planned on.
        if let Some((names, at)) = self.created.get(&uid) {
            let seen = names.iter().all(|n| {
                requests
                    .iter()
                    .any(|r| r.metadata.name.as_deref() == Some(n))
            });
            if !seen && at.elapsed() < CREATION_SETTLE {
                return;
            }
            self.created.remove(&uid);
        }

        let pods: Vec<TargetPod> = targets
            .iter()
            .map(|pod| {
                let pod_uid = pod.uid().unwrap_or_default();
                let request = state::request_for(&requests, &pod.name_any(), &pod_uid);
                TargetPod {
                    name: pod.name_any(),
                    ordinal: state::ordinal(pod),
                    labels: pod.labels().clone(),
                    ready_seconds: state::ready_seconds(pod, now),
                    restart: state::restart_state(request),
                }
            })
            .collect();
        let (budgets, health) = self.budgets(&ns, &targets, &namespace_pods);
        let eligible = pods
            .iter()
            .filter(|p| match (spec.strategy.partition, p.ordinal) {
                (Some(q), Some(o)) => o >= q,
                _ => true,
            })
            .count();
        let strategy = match state::plan_strategy(spec, eligible) {
            Ok(s) => s,
            Err(invalid) => {
                let status = state::failed_status(&previous, &invalid, generation, now);
                return self.finish(rollout, &previous, status, true).await;
            }
        };

        let mut status = previous.clone();
        status.target = Some(target);
        state::tally(&mut status, &pods, &requests, spec.strategy.partition);
        let acknowledged = state::acknowledged_failures(spec, &previous, status.failed);
        if acknowledged > 0 {
            status.acknowledged_failures = Some(acknowledged);
        }
        let step = state::decide(spec, acknowledged, &pods, &budgets, &health, &strategy);

        for (state, n) in [
            ("restarted", status.restarted),
            ("failed", status.failed),
            ("in_progress", status.in_progress),
            (
                "pending",
                status.total - status.restarted - status.failed - status.in_progress,
            ),
        ] {
            *tally.pods.entry(state).or_default() += i64::from(n);
        }
        let blocked = match &step {
            Step::Wait(WaitReason::BlockedByPDB(_)) => Some("BlockedByPDB"),
            Step::Wait(WaitReason::BlockedByUnavailablePods) => Some("BlockedByUnavailablePods"),
            Step::PauseForFailures | Step::Hold { failures: true } => {
                Some("FailureThresholdReached")
            }
            Step::Hold { failures: false } => Some("Paused"),
            _ => None,
        };
        if let Some(reason) = blocked {
            *tally.blocked.entry(reason.to_string()).or_default() += 1;
        }

        // Counted above; acting waits for the watch to bring our last write (it wakes a pass).
        if self.behind_own_write(rollout) {
            return;
        }
        match &step {
            Step::PauseForFailures => {
                // The one spec write: failures pause the rollout through `spec.strategy.paused`,
                // the same switch a user flips, so resuming is the user's ordinary unpause (and
                // a new leader sees the pause in the spec, not in memory).
                let api: Api<RollingRestart> =
                    Api::namespaced(self.ctx.cluster.client().clone(), &ns);
                let patch = json!({"spec": {"strategy": {"paused": true}}});
                if let Err(e) = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::warn!(rollout = %format!("{ns}/{name}"), error = %e, "pausing failed; will retry");
                    return;
                }
                self.event(rollout, true, "FailureThresholdReached", format!(
                    "{} pod restarts failed (maxFailures {}): paused; fix the pods, then set spec.strategy.paused to false",
                    status.failed, spec.strategy.max_failures.unwrap_or(0) + acknowledged
                ));
            }
            Step::Start { batch, limited_by } => {
                // Created concurrently (bounded): the gap between batches is one round trip,
                // not one per pod.
                let this = &*self;
                let work: Vec<(String, Arc<Pod>, Vec<String>)> = batch
                    .iter()
                    .filter_map(|pod_name| {
                        let pod = targets.iter().find(|p| &p.name_any() == pod_name)?;
                        let wanted = containers.get(pod_name).cloned().unwrap_or_default();
                        Some((pod_name.clone(), pod.clone(), wanted))
                    })
                    .collect();
                let described = format!("{ns}/{name}");
                let creations: Vec<_> = work
                    .into_iter()
                    .map(|(pod_name, pod, wanted)| {
                        let described = &described;
                        async move {
                            match this.create_request(rollout, &pod, &wanted).await {
                                Ok(request) => Some(request),
                                Err(e) => {
                                    tracing::warn!(rollout = %described, pod = %pod_name, error = %e, "creating the request failed; will retry");
                                    None
                                }
                            }
                        }
                    })
                    .collect();
                let created: Vec<String> = futures::stream::iter(creations)
                    .buffered(CREATE_CONCURRENCY)
                    .filter_map(std::future::ready)
                    .collect()
                    .await;
                if created.is_empty() {
                    return;
                }
                status.batches += 1;
                status.current_batch = batch.clone();
                status.in_progress += created.len() as i32;
                self.created.insert(uid.clone(), (created, Instant::now()));
                tracing::info!(rollout = %format!("{ns}/{name}"), batch = ?batch, "batch started");
                self.event(
                    rollout,
                    false,
                    "BatchStarted",
                    format!("batch {}: restarting {}", status.batches, batch.join(", ")),
                );
                if let Some(pdb) = limited_by {
                    self.event(
                        rollout,
                        false,
                        "BlockedByPDB",
                        format!("PodDisruptionBudget {pdb} limits the batch below maxUnavailable"),
                    );
                }
            }
            _ => {}
        }
        self.pod_events(rollout, &previous, &status);
        state::apply_step(&mut status, &step, generation, now);
        if status.phase != previous.phase {
            self.phase_event(rollout, &status);
        }
        match step {
            Step::Fail(_) => self.finish(rollout, &previous, status, false).await,
            Step::Succeed => self.finish(rollout, &previous, status, false).await,
            _ => {
                // Progress counts alone are coalesced; anything else is written at once.
                if rollout.status.is_some()
                    && counts_only(&previous, &status)
                    && let Some(at) = self.last_written(&uid)
                    && at.elapsed() < COUNTS_INTERVAL
                {
                    let left = COUNTS_INTERVAL - at.elapsed();
                    self.due = Some(self.due.map_or(left, |d| d.min(left)));
                    return;
                }
                self.write_status(rollout, &previous, status).await;
            }
        }
    }

    /// The selector of the rollout's target and a description of the target.
    fn selector(&self, rollout: &RollingRestart) -> Result<(LabelSelector, String), String> {
        let ns = rollout.namespace().unwrap_or_default();
        let target = &rollout.spec.target;
        if let Some(selector) = &target.selector {
            return Ok((selector.clone(), "selector".into()));
        }
        let Some(workload) = &target.workload_ref else {
            return Err("no target".into());
        };
        let selector = match &workload.kind {
            WorkloadKind::StatefulSet => self
                .stores
                .statefulsets
                .get(&reflector::ObjectRef::new(&workload.name).within(&ns))
                .and_then(|o| o.spec.as_ref().map(|s| s.selector.clone())),
            WorkloadKind::Deployment => self
                .stores
                .deployments
                .get(&reflector::ObjectRef::new(&workload.name).within(&ns))
                .and_then(|o| o.spec.as_ref().map(|s| s.selector.clone())),
            WorkloadKind::DaemonSet => self
                .stores
                .daemonsets
                .get(&reflector::ObjectRef::new(&workload.name).within(&ns))
                .and_then(|o| o.spec.as_ref().map(|s| s.selector.clone())),
            WorkloadKind::ReplicaSet => self
                .stores
                .replicasets
                .get(&reflector::ObjectRef::new(&workload.name).within(&ns))
                .and_then(|o| o.spec.as_ref().map(|s| s.selector.clone())),
            WorkloadKind::Unknown(_) => None,
        };
        let described = format!("{}/{}", workload.kind, workload.name);
        selector
            .map(|s| (s, described.clone()))
            .ok_or_else(|| format!("waiting for {described} to exist in namespace {ns}"))
    }

    /// The budgets selecting any target pod, and the health of the pods they select.
    fn budgets(
        &self,
        ns: &str,
        targets: &[Arc<Pod>],
        namespace_pods: &[Arc<Pod>],
    ) -> (Vec<Budget>, BTreeMap<String, bool>) {
        let mut budgets = Vec::new();
        let mut health = BTreeMap::new();
        for pdb in self.stores.budgets.state() {
            if pdb.namespace().as_deref() != Some(ns) {
                continue;
            }
            let Some(spec) = &pdb.spec else { continue };
            let Ok(selector) = Selector::try_from(spec.selector.clone().unwrap_or_default()) else {
                continue;
            };
            if !targets.iter().any(|p| selector.matches(p.labels())) {
                continue;
            }
            let selected: Vec<&Arc<Pod>> = namespace_pods
                .iter()
                .filter(|p| selector.matches(p.labels()) && p.metadata.deletion_timestamp.is_none())
                .collect();
            for pod in &selected {
                health.insert(pod.name_any(), state::is_ready(pod));
            }
            budgets.push(Budget {
                name: pdb.name_any(),
                desired_healthy: planner::desired_healthy(
                    spec.min_available.as_ref(),
                    spec.max_unavailable.as_ref(),
                    selected.len(),
                ),
                selected: selected.iter().map(|p| p.name_any()).collect(),
            });
        }
        (budgets, health)
    }

    /// Creates the request restarting `pod`; an existing one (409) counts as created.
    async fn create_request(
        &self,
        rollout: &RollingRestart,
        pod: &Pod,
        containers: &[String],
    ) -> Result<String, kube::Error> {
        let ns = rollout.namespace().unwrap_or_default();
        let rollout_name = rollout.name_any();
        let name = state::request_name(
            &rollout_name,
            &pod.name_any(),
            &pod.uid().unwrap_or_default(),
        );
        let owner = OwnerReference {
            api_version: "relaunch.dev/v1alpha1".into(),
            kind: "RollingRestart".into(),
            name: rollout.name_any(),
            uid: rollout.uid().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let shutdown = |container: &String| {
            rollout
                .spec
                .shutdown
                .iter()
                .find(|s| &s.container == container)
                .map(|s| s.action.clone())
        };
        let request = containers
            .iter()
            .fold(
                ContainerRecreateRequest::for_pod(pod)
                    .name(&name)
                    .namespace(&ns)
                    .label(LABEL_ROLLING_RESTART, &rollout_name)
                    .owner(owner)
                    .strategy(rollout.spec.recreate_strategy.clone())
                    .active_deadline_seconds(rollout.spec.active_deadline_seconds),
                |request, container| request.container(container, shutdown(container)),
            )
            .build();
        let api: Api<ContainerRecreateRequest> =
            Api::namespaced(self.ctx.cluster.client().clone(), &ns);
        match api.create(&PostParams::default(), &request).await {
            Ok(_) => Ok(name),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(name),
            Err(e) => Err(e),
        }
    }

    /// Writes the status when it changed (merge patch on the status subresource, at the version
    /// read, so a decision on a stale cache fails with 409 and is taken again).
    async fn write_status(
        &self,
        rollout: &RollingRestart,
        previous: &RollingRestartStatus,
        status: RollingRestartStatus,
    ) -> bool {
        if &status == previous && rollout.status.is_some() {
            return false;
        }
        let mut value = match serde_json::to_value(&status) {
            Ok(v) => v,
            Err(_) => return false,
        };
        // A merge patch leaves absent fields alone: clear the emptied ones explicitly.
        if let Value::Object(map) = &mut value {
            for key in [
                "currentBatch",
                "pods",
                "message",
                "completionTime",
                "conditions",
            ] {
                map.entry(key).or_insert(Value::Null);
            }
        }
        let patch = json!({
            "metadata": {"resourceVersion": rollout.resource_version()},
            "status": value,
        });
        let api: Api<RollingRestart> = Api::namespaced(
            self.ctx.cluster.client().clone(),
            &rollout.namespace().unwrap_or_default(),
        );
        let written = api
            .patch_status(
                &rollout.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await;
        if let Err(e) = &written {
            if is_conflict(e) {
                tracing::debug!(rollout = %rollout.name_any(), "rollout changed meanwhile; deciding again");
            } else {
                tracing::warn!(rollout = %rollout.name_any(), error = %e, "writing rollout status failed; will retry");
            }
        }
        if written.is_ok() {
            self.status_written
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    rollout.uid().unwrap_or_default(),
                    (
                        Instant::now(),
                        rollout.resource_version().unwrap_or_default(),
                    ),
                );
        }
        written.is_ok()
    }

    /// When the rollout's status was last written.
    fn last_written(&self, uid: &str) -> Option<Instant> {
        let written = self
            .status_written
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        written.get(uid).map(|(at, _)| *at)
    }

    /// Whether the cache still shows the version our last status write replaced (a pass on it
    /// would decide again what was just written, and its write would fail with 409).
    fn behind_own_write(&self, rollout: &RollingRestart) -> bool {
        let written = self
            .status_written
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        written
            .get(&rollout.uid().unwrap_or_default())
            .is_some_and(|(at, rv)| {
                Some(rv) == rollout.resource_version().as_ref() && at.elapsed() < OWN_WRITE_SETTLE
            })
    }

    /// Writes a terminal status, records the duration and an Event.
    async fn finish(
        &self,
        rollout: &RollingRestart,
        previous: &RollingRestartStatus,
        status: RollingRestartStatus,
        announce: bool,
    ) {
        if announce && previous.phase != status.phase {
            self.phase_event(rollout, &status);
        }
        let timing = (status.start_time.clone(), status.completion_time.clone());
        let result = if status.phase == RolloutPhase::Succeeded {
            "succeeded"
        } else {
            "failed"
        };
        // Observed once: only the write that ends the rollout counts.
        if self.write_status(rollout, previous, status).await
            && let (Some(start), Some(end)) = timing
        {
            let seconds = end.0.duration_since(start.0).as_secs_f64().max(0.0);
            self.ctx
                .rollouts
                .duration
                .with_label_values(&[result])
                .observe(seconds);
        }
    }

    fn phase_event(&self, rollout: &RollingRestart, status: &RollingRestartStatus) {
        let message = status.message.clone().unwrap_or_default();
        let (warning, reason) = match status.phase {
            RolloutPhase::Failed => (true, "Failed"),
            RolloutPhase::Succeeded => (false, "Finished"),
            RolloutPhase::Paused => (true, "Paused"),
            RolloutPhase::Progressing => (false, "Progressing"),
            RolloutPhase::Pending => (false, "Pending"),
        };
        self.event(rollout, warning, reason, message);
    }

    /// A Warning Event per pod whose restart failed since the last status (a pod restarted is
    /// told by `status.pods` and the counts, and by the Event on the pod).
    fn pod_events(
        &self,
        rollout: &RollingRestart,
        previous: &RollingRestartStatus,
        status: &RollingRestartStatus,
    ) {
        for result in &status.pods {
            if result.phase != relaunch_api::RecreatePhase::Failed {
                continue;
            }
            let known = previous
                .pods
                .iter()
                .any(|p| p.request == result.request && p.phase == result.phase);
            if known {
                continue;
            }
            let message = match &result.message {
                Some(m) => format!("pod {} failed to restart: {m}", result.name),
                None => format!("pod {} failed to restart ({})", result.name, result.request),
            };
            self.event(rollout, true, "PodRestartFailed", message);
        }
    }

    fn event(&self, rollout: &RollingRestart, warning: bool, reason: &str, message: String) {
        self.event_on(rollout.object_ref(&()), warning, reason, message);
    }

    /// Records an Event on `reference` in the background (Events are best effort).
    fn event_on(&self, reference: ObjectReference, warning: bool, reason: &str, message: String) {
        let recorder = self.recorder.clone();
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(message.chars().take(1000).collect()),
            action: reason.into(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, "cannot record event");
            }
        });
    }

    /// Creates one RollingRestart per distinct `relaunch.dev/restart-at` token.
    async fn trigger(&mut self) {
        let mut wanted = Vec::new();
        let mut collect = |kind: WorkloadKind, meta: &ObjectMeta| {
            let Some(token) = trigger::restart_token(&kind, meta) else {
                return;
            };
            let name = meta.name.clone().unwrap_or_default();
            let ns = meta.namespace.clone().unwrap_or_default();
            let rollout = trigger::rollout_name(&kind, &name, token);
            let owner = OwnerReference {
                api_version: "apps/v1".into(),
                kind: kind.to_string(),
                name: name.clone(),
                uid: meta.uid.clone().unwrap_or_default(),
                controller: None,
                block_owner_deletion: None,
            };
            let annotations = meta.annotations.clone().unwrap_or_default();
            wanted.push((ns, rollout, token.to_string(), owner, annotations));
        };
        for o in self.stores.statefulsets.state() {
            collect(WorkloadKind::StatefulSet, &o.metadata);
        }
        for o in self.stores.deployments.state() {
            collect(WorkloadKind::Deployment, &o.metadata);
        }
        for o in self.stores.daemonsets.state() {
            collect(WorkloadKind::DaemonSet, &o.metadata);
        }
        for o in self.stores.replicasets.state() {
            collect(WorkloadKind::ReplicaSet, &o.metadata);
        }
        let mut refused = HashSet::new();
        for (ns, rollout, token, owner, annotations) in wanted {
            let key = reflector::ObjectRef::new(&rollout).within(&ns);
            if self.stores.rollouts.get(&key).is_some() {
                continue;
            }
            let (kind, name) = (owner.kind.clone(), owner.name.clone());
            let spec = match trigger::rollout_spec(
                WorkloadKind::from(kind.as_str()),
                &name,
                &annotations,
            ) {
                Ok(spec) => spec,
                Err(invalid) => {
                    let message = invalid.to_string();
                    // Said once per workload, token and problem, not on every pass.
                    let warning = (ns.clone(), rollout.clone(), message.clone());
                    if !self.refused_triggers.contains(&warning) {
                        tracing::warn!(workload = %format!("{kind} {ns}/{name}"), %message, "not starting a rollout");
                        let reference = ObjectReference {
                            api_version: Some(owner.api_version.clone()),
                            kind: Some(kind.clone()),
                            name: Some(name.clone()),
                            namespace: Some(ns.clone()),
                            uid: Some(owner.uid.clone()),
                            ..Default::default()
                        };
                        self.event_on(
                            reference,
                            true,
                            "RestartNotStarted",
                            format!(
                                "{ANNOTATION_RESTART_AT} {token:?} starts no rollout: {message}"
                            ),
                        );
                    }
                    refused.insert(warning);
                    continue;
                }
            };
            let mut object = RollingRestart::new(&rollout, spec);
            object.metadata.namespace = Some(ns.clone());
            object.metadata.owner_references = Some(vec![owner]);
            object.metadata.annotations = Some(BTreeMap::from([(
                ANNOTATION_RESTART_AT.to_string(),
                token.clone(),
            )]));
            let api: Api<RollingRestart> = Api::namespaced(self.ctx.cluster.client().clone(), &ns);
            match api.create(&PostParams::default(), &object).await {
                Ok(_) => {
                    tracing::info!(workload = %format!("{kind} {ns}/{name}"), %token, %rollout, "rollout started by annotation")
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => {
                    tracing::warn!(workload = %format!("{kind} {ns}/{name}"), error = %e, "creating the triggered rollout failed; will retry")
                }
            }
        }
        // A problem fixed and then made again is said again.
        self.refused_triggers = refused;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaunch_api::{PodRestartResult, RecreatePhase};

    #[test]
    fn only_progress_counts_are_coalesced() {
        let previous = RollingRestartStatus {
            phase: RolloutPhase::Progressing,
            total: 10,
            batches: 1,
            current_batch: vec!["a".into()],
            in_progress: 1,
            ..Default::default()
        };
        let mut progress = previous.clone();
        progress.restarted = 1;
        progress.in_progress = 0;
        progress.pods.push(PodRestartResult {
            name: "a".into(),
            request: "r-a".into(),
            phase: RecreatePhase::Succeeded,
            message: None,
        });
        assert!(counts_only(&previous, &progress));
        assert!(counts_only(&previous, &previous));
        let mut failed = progress.clone();
        failed.failed = 1;
        let mut batch = progress.clone();
        batch.batches = 2;
        let mut phase = progress.clone();
        phase.phase = RolloutPhase::Succeeded;
        let mut message = progress.clone();
        message.message = Some("paused".into());
        for changed in [failed, batch, phase, message] {
            assert!(!counts_only(&previous, &changed), "{changed:?}");
        }
    }
}
