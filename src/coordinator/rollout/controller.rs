//! The RollingRestart controller and the workload trigger: the imperative shell around
//! [`super::reconcile`]. Each pass gathers, per rollout, plain data from the caches (its
//! namespace's pods and budgets, its requests, the target's selector, what this replica
//! remembers of its own writes), lets [`reconcile::reconcile`] decide, and applies the actions
//! in order through the cluster adapter; what fails goes to the error policy. Durable state
//! lives in the requests (deterministic names, owner reference, labels) and in status, so a new
//! leader resumes where the last one stopped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec, ReplicaSet, ReplicaSetSpec, StatefulSet,
    StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use relaunch_api::{
    ANNOTATION_RESTART_AT, ContainerRecreateRequest, LABEL_ROLLING_RESTART, RollingRestart,
    RolloutPhase, WorkloadKind,
};

use super::reconcile::{self, Action, Batch, Observed, Workload, describe};
use crate::caches::{Caches, WatchTasks, watch_into, watch_into_with};
use crate::context::Context;
use crate::error::{ClusterError, CoordinatorError};
use crate::error_policy::{Retry, error_policy};
use crate::metrics::RolloutGauges;
use crate::pods::CachedPod;
use crate::reload::{self, ReloadWorkload, Reloader, TemplateField};

/// Longest sleep between passes (readiness ages, minReadySeconds).
const MAX_IDLE: Duration = Duration::from_secs(5);
/// Shortest gap between passes, so bursts of watch events are handled together.
const MIN_GAP: Duration = Duration::from_millis(10);
/// Requests of one batch created at once.
const CREATE_CONCURRENCY: usize = 16;
/// Rollouts whose actions are applied at once.
const ROLLOUT_CONCURRENCY: usize = 8;
/// How long a rollout whose cached version predates our last status write waits for the watch
/// to bring the write before it is planned on the cached version anyway.
const OWN_WRITE_SETTLE: Duration = Duration::from_secs(5);
/// After creating a batch, planning waits this long at most for the requests to show up in
/// the cache (so a stale cache never plans a second, overlapping batch).
const CREATION_SETTLE: Duration = Duration::from_secs(30);

struct Stores {
    rollouts: Store<RollingRestart>,
    pods: Store<CachedPod>,
    budgets: Store<PodDisruptionBudget>,
    requests: Store<ContainerRecreateRequest>,
    statefulsets: Store<StatefulSet>,
    deployments: Store<Deployment>,
    daemonsets: Store<DaemonSet>,
    replicasets: Store<ReplicaSet>,
    /// Metadata and content hash only (see [`crate::reload`]).
    config_maps: Store<ConfigMap>,
    secrets: Store<Secret>,
}

impl Stores {
    /// Waits until every cache is filled.
    async fn ready(&self) -> Result<(), kube::runtime::reflector::store::WriterDropped> {
        tokio::try_join!(
            self.rollouts.wait_until_ready(),
            self.pods.wait_until_ready(),
            self.budgets.wait_until_ready(),
            self.requests.wait_until_ready(),
            self.statefulsets.wait_until_ready(),
            self.deployments.wait_until_ready(),
            self.daemonsets.wait_until_ready(),
            self.replicasets.wait_until_ready(),
            self.config_maps.wait_until_ready(),
            self.secrets.wait_until_ready(),
        )
        .map(|_| ())
    }
}

/// Keeps only what the triggers and the target lookup read of a workload: identity, owners, the
/// `relaunch.dev/` and Reloader annotations, the selector, and for a workload opted in to
/// restarts on configuration changes what its pod template references (see
/// [`crate::reload::prune_template`]).
fn prune_workload<K: Resource>(object: &mut K, keep_selector: impl FnOnce(&mut K)) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    meta.labels = None;
    meta.finalizers = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations
            .retain(|k, _| k.starts_with("relaunch.dev/") || k.contains("reloader.stakater.com/"));
    }
    keep_selector(object);
}

/// What the rollout controller reads and relaunch never writes: budgets and the configuration
/// workloads reference (pruned to metadata and a content hash).
#[derive(Clone)]
pub struct References {
    budgets: Store<PodDisruptionBudget>,
    config_maps: Store<ConfigMap>,
    secrets: Store<Secret>,
}

/// Starts the watches behind [`References`]; every change wakes `notify`. The coordinator keeps
/// them for the process's life (see `Standing` in lib.rs).
pub fn watch_references(ctx: &Context, notify: &Arc<Notify>) -> (References, Vec<JoinHandle<()>>) {
    let wake = || vec![notify.clone()];
    let (budgets, t1) = watch_into(
        ctx,
        "poddisruptionbudgets",
        |o: &mut PodDisruptionBudget| o.metadata.managed_fields = None,
        wake(),
    );
    let (config_maps, t2) = watch_into(ctx, "configmaps", reload::prune_config_map, wake());
    let (secrets, t3) = watch_into_with(
        ctx,
        "secrets",
        reload::secrets_watched(),
        reload::prune_secret,
        wake(),
    );
    let references = References {
        budgets,
        config_maps,
        secrets,
    };
    (references, vec![t1, t2, t3])
}

/// Runs the rollout controller and the trigger for one leadership term, on the shared pod and
/// request `caches` and the standing `references`, until `shutdown`, waking on `notify`. What
/// relaunch writes — rollouts, and workloads (the configuration-change trigger annotates them)
/// — is listed afresh: this term decides on the last writes of the one before.
pub async fn run(
    ctx: Arc<Context>,
    caches: Caches,
    references: References,
    notify: Arc<Notify>,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let mut tasks = Vec::new();
    macro_rules! watch {
        ($started:expr) => {{
            let (store, task) = $started;
            tasks.push(task);
            store
        }};
    }
    let wake = || vec![notify.clone()];
    macro_rules! workload {
        ($kind:ty, $what:expr, $spec:ident) => {
            watch_into(
                &ctx,
                $what,
                |o: &mut $kind| {
                    prune_workload(o, |o| {
                        o.status = None;
                        let annotations = o.metadata.annotations.as_ref();
                        o.spec = o.spec.take().map(|s| $spec {
                            selector: s.selector,
                            template: s.template.pruned(annotations),
                            ..Default::default()
                        });
                    })
                },
                wake(),
            )
        };
    }
    let References {
        budgets,
        config_maps,
        secrets,
    } = references;
    let stores = Stores {
        rollouts: watch!(watch_into(
            &ctx,
            "rollingrestarts",
            |o: &mut RollingRestart| o.metadata.managed_fields = None,
            wake(),
        )),
        pods: caches.pods,
        budgets,
        requests: caches.requests,
        statefulsets: watch!(workload!(StatefulSet, "statefulsets", StatefulSetSpec)),
        deployments: watch!(workload!(Deployment, "deployments", DeploymentSpec)),
        daemonsets: watch!(workload!(DaemonSet, "daemonsets", DaemonSetSpec)),
        replicasets: watch!(workload!(ReplicaSet, "replicasets", ReplicaSetSpec)),
        config_maps,
        secrets,
    };
    // Aborted when this returns or is itself aborted.
    let tasks = WatchTasks(tasks);
    let result = tokio::select! {
        _ = shutdown.cancelled() => None,
        r = stores.ready() => Some(r),
    };
    let metrics = ctx.metrics.rollouts.clone();
    let reload_metrics = ctx.metrics.reload.clone();
    let outcome = match result {
        None => Ok(()),
        Some(Err(_)) => Err(CoordinatorError::ControllersStopped),
        Some(Ok(())) => {
            let mut controller = RolloutController {
                ctx,
                stores,
                created: HashMap::new(),
                told_refusals: HashSet::new(),
                status_written: HashMap::new(),
                due: None,
                reloader: Reloader::default(),
            };
            let mut wake = Duration::ZERO;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = notify.notified() => {}
                    _ = tokio::time::sleep(wake) => {}
                }
                tokio::time::sleep(MIN_GAP).await;
                controller.reconcile_all().await;
                wake = controller
                    .due
                    .take()
                    .unwrap_or(MAX_IDLE)
                    .clamp(MIN_GAP, MAX_IDLE);
            }
            Ok(())
        }
    };
    drop(tasks);
    // A replica that stopped leading reports nothing about rollouts it no longer drives.
    metrics.clear();
    reload_metrics.clear();
    outcome
}

struct RolloutController {
    ctx: Arc<Context>,
    stores: Stores,
    /// Requests created per rollout UID and when, until the cache shows them.
    created: HashMap<String, (Vec<Arc<ContainerRecreateRequest>>, Instant)>,
    /// Triggers refused for a bad companion annotation and already told about:
    /// (namespace, rollout name, message).
    told_refusals: HashSet<(String, String, String)>,
    /// Per rollout UID, when its status was last written and the resourceVersion the write
    /// replaced: while the cache still shows that version, it has not seen the write yet.
    status_written: HashMap<String, (Instant, String)>,
    /// How soon a pass is due for a status write held back or a retry (none: nothing is).
    due: Option<Duration>,
    /// The configuration-change trigger's memory.
    reloader: Reloader,
}

impl RolloutController {
    /// Runs the trigger, reconciles every rollout neither Succeeded nor Failed, shows the gauges.
    ///
    /// Every rollout is decided first, one after another on one snapshot of the caches, each
    /// seeing the batches decided before it (and those created in earlier passes the cache does
    /// not show yet) as other requests: a pod another rollout is about to restart is busy and
    /// uses the budgets that select it. Then the rollouts' writes are applied concurrently
    /// (bounded; each rollout's own actions stay in order), so a rollout whose batch just
    /// finished does not wait for every other rollout's API round trips.
    async fn reconcile_all(&mut self) {
        self.trigger().await;
        self.reload().await;
        let mut gauges = RolloutGauges::default();
        let snapshot = Snapshot::of(&self.stores);
        // Requests decided or created but not (yet) in the cache, per namespace.
        let mut pending = self.created_not_cached(&snapshot);
        let mut decided = Vec::new();
        for rollout in self.stores.rollouts.state() {
            let phase = rollout.status.as_ref().map(|s| s.phase);
            if matches!(phase, Some(RolloutPhase::Succeeded | RolloutPhase::Failed)) {
                continue;
            }
            // A newer release's phase: its status could not be written back; leave it alone.
            if phase == Some(RolloutPhase::Unknown) {
                let told = (
                    rollout.namespace().unwrap_or_default(),
                    rollout.name_any(),
                    "unknown phase".to_string(),
                );
                if self.told_refusals.insert(told) {
                    tracing::warn!(rollout = %reconcile::describe(&rollout), "the rollout is in a phase this version of the coordinator does not know; not acting on it");
                }
                continue;
            }
            gauges.active += 1;
            let namespace = rollout.namespace().unwrap_or_default();
            let observed = self.gather(
                &rollout,
                &snapshot,
                pending.get(&namespace).map_or(&[], Vec::as_slice),
                Timestamp::now(),
            );
            let reconciled = reconcile::reconcile(&observed);
            let uid = rollout.uid().unwrap_or_default();
            for action in &reconciled.actions {
                if let Action::StartBatch(batch) = action {
                    let planned = batch.requests.iter().map(|r| Arc::new(r.clone()));
                    let requests = pending.entry(namespace.clone()).or_default();
                    requests.extend(planned.map(|r| (uid.clone(), r)));
                }
            }
            if let Some(counts) = reconciled.counts {
                for (state, n) in counts.pods {
                    *gauges.pods.entry(state).or_default() += n;
                }
                if let Some(reason) = counts.blocked {
                    *gauges.blocked.entry(reason.as_str()).or_default() += 1;
                }
            }
            if !reconciled.actions.is_empty() {
                decided.push((rollout, reconciled.actions));
            }
        }
        let ctx = &self.ctx;
        let applied: Vec<(String, Applied)> = futures::stream::iter(decided)
            .map(|(rollout, actions)| async move {
                let uid = rollout.uid().unwrap_or_default();
                (uid, apply(ctx, &rollout, actions).await)
            })
            .buffer_unordered(ROLLOUT_CONCURRENCY)
            .collect()
            .await;
        for (uid, applied) in applied {
            if let Some(written) = applied.status_written {
                self.status_written.insert(uid.clone(), written);
            }
            if let Some(created) = applied.created {
                self.created.insert(uid, created);
            }
            if let Some(after) = applied.due {
                self.due_in(after);
            }
        }
        self.ctx.metrics.rollouts.set(&gauges);
        let live: HashSet<String> = self
            .stores
            .rollouts
            .state()
            .iter()
            .filter_map(|r| r.uid())
            .collect();
        self.created.retain(|uid, _| live.contains(uid));
        self.status_written.retain(|uid, _| live.contains(uid));
    }

    /// The requests created in earlier passes that the cache does not show yet, per namespace,
    /// with the UID of the rollout that created them.
    fn created_not_cached(&self, snapshot: &Snapshot) -> HashMap<String, Vec<Pending>> {
        let mut pending: HashMap<String, Vec<Pending>> = HashMap::new();
        for (uid, (requests, _)) in &self.created {
            for request in requests {
                let namespace = request.namespace().unwrap_or_default();
                let cached = (snapshot.requests.get(&namespace).into_iter().flatten())
                    .any(|r| r.metadata.name == request.metadata.name);
                if !cached {
                    let requests = pending.entry(namespace).or_default();
                    requests.push((uid.clone(), request.clone()));
                }
            }
        }
        pending
    }

    /// What the decision for `rollout` reads, as plain data: the `snapshot` of its namespace,
    /// and as other requests also the `pending` ones of other rollouts.
    fn gather(
        &mut self,
        rollout: &Arc<RollingRestart>,
        snapshot: &Snapshot,
        pending: &[Pending],
        now: Timestamp,
    ) -> Observed {
        let ns = rollout.namespace().unwrap_or_default();
        let name = rollout.name_any();
        let uid = rollout.uid().unwrap_or_default();
        let (requests, others): (Vec<Arc<ContainerRecreateRequest>>, Vec<_>) =
            (snapshot.requests.get(&ns).into_iter().flatten().cloned()).partition(|r| {
                r.labels().get(LABEL_ROLLING_RESTART) == Some(&name)
                    && r.owner_references().iter().any(|o| o.uid == uid)
            });
        let others = others
            .into_iter()
            .filter(|r| r.status.as_ref().is_none_or(|s| !s.phase.is_finished()))
            .chain(
                (pending.iter())
                    .filter(|(owner, _)| *owner != uid)
                    .map(|(_, r)| r.clone()),
            )
            .collect();
        let settling = match self.created.get(&uid) {
            Some((created, at)) => {
                let seen = created
                    .iter()
                    .all(|c| requests.iter().any(|r| r.metadata.name == c.metadata.name));
                !seen && at.elapsed() < CREATION_SETTLE
            }
            None => false,
        };
        if !settling {
            self.created.remove(&uid);
        }
        let written = self.status_written.get(&uid);
        Observed {
            target: self.selector(rollout),
            pods: snapshot.pods.get(&ns).cloned().unwrap_or_default(),
            budgets: snapshot.budgets.get(&ns).cloned().unwrap_or_default(),
            requests,
            others,
            leaving: self.ctx.leaving.uids(),
            settling,
            behind_own_write: written.is_some_and(|(at, rv)| {
                Some(rv) == rollout.resource_version().as_ref() && at.elapsed() < OWN_WRITE_SETTLE
            }),
            since_written: written.map(|(at, _)| at.elapsed()),
            exec_policy: self.ctx.exec_policy.verdict(),
            now,
            rollout: rollout.clone(),
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
        let name = workload.name.as_str();
        let selector = match &workload.kind {
            WorkloadKind::StatefulSet => find(&self.stores.statefulsets, &ns, name)
                .and_then(|o| o.spec.as_ref().map(|s| s.selector.clone())),
            WorkloadKind::Deployment => find(&self.stores.deployments, &ns, name)
                .and_then(|o| o.spec.as_ref().map(|s| s.selector.clone())),
            WorkloadKind::DaemonSet => find(&self.stores.daemonsets, &ns, name)
                .and_then(|o| o.spec.as_ref().map(|s| s.selector.clone())),
            WorkloadKind::ReplicaSet => find(&self.stores.replicasets, &ns, name)
                .and_then(|o| o.spec.as_ref().map(|s| s.selector.clone())),
            WorkloadKind::Unknown(_) => None,
        };
        let described = format!("{}/{}", workload.kind, workload.name);
        selector
            .map(|s| (s, described.clone()))
            .ok_or_else(|| format!("waiting for {described} to exist in namespace {ns}"))
    }

    /// Hands a failed call to the error policy and schedules the retry it asks for.
    fn failed(&mut self, action: &str, object: &str, error: &ClusterError) {
        if let Retry::After(delay) = error_policy(&self.ctx.metrics, action, &object, error) {
            self.due_in(delay);
        }
    }

    fn due_in(&mut self, after: Duration) {
        self.due = Some(self.due.map_or(after, |d| d.min(after)));
    }

    /// Starts a RollingRestart for each opted-in workload whose configuration changed.
    async fn reload(&mut self) {
        let opted_in = |meta: &kube::api::ObjectMeta| {
            meta.annotations
                .as_ref()
                .is_some_and(relaunch_api::reload::opted_in)
        };
        let mut workloads = Vec::new();
        macro_rules! collect {
            ($store:expr, $kind:expr) => {
                for o in $store.state().iter().filter(|o| opted_in(&o.metadata)) {
                    // A Deployment's ReplicaSets carry its annotations; the Deployment restarts.
                    if $kind == WorkloadKind::ReplicaSet && controlled_by_deployment(&o.metadata) {
                        continue;
                    }
                    workloads.push(ReloadWorkload {
                        kind: $kind,
                        meta: o.metadata.clone(),
                        spec: o.spec.as_ref().and_then(|s| s.template.pod_spec().cloned()),
                    });
                }
            };
        }
        collect!(self.stores.statefulsets, WorkloadKind::StatefulSet);
        collect!(self.stores.deployments, WorkloadKind::Deployment);
        collect!(self.stores.daemonsets, WorkloadKind::DaemonSet);
        collect!(self.stores.replicasets, WorkloadKind::ReplicaSet);
        let due = self
            .reloader
            .pass(
                &self.ctx,
                &workloads,
                &self.stores.config_maps,
                &self.stores.secrets,
                &self.stores.rollouts,
            )
            .await;
        if let Some(after) = due {
            self.due_in(after);
        }
    }

    /// Creates one RollingRestart per distinct `relaunch.dev/restart-at` token.
    async fn trigger(&mut self) {
        let workload = |kind: WorkloadKind, meta| Workload { kind, meta };
        let workloads: Vec<Workload> = (self.stores.statefulsets.state().iter())
            .map(|o| workload(WorkloadKind::StatefulSet, o.metadata.clone()))
            .chain(
                (self.stores.deployments.state().iter())
                    .map(|o| workload(WorkloadKind::Deployment, o.metadata.clone())),
            )
            .chain(
                (self.stores.daemonsets.state().iter())
                    .map(|o| workload(WorkloadKind::DaemonSet, o.metadata.clone())),
            )
            .chain(
                (self.stores.replicasets.state().iter())
                    .map(|o| workload(WorkloadKind::ReplicaSet, o.metadata.clone())),
            )
            .collect();
        let rollouts = &self.stores.rollouts;
        let exists =
            |ns: &str, name: &str| rollouts.get(&ObjectRef::new(name).within(ns)).is_some();
        let triggered = reconcile::triggered(&workloads, exists, &self.told_refusals);
        for (workload, event, message) in triggered.refused {
            let described = format!(
                "{} {}/{}",
                workload.kind.as_deref().unwrap_or_default(),
                workload.namespace.as_deref().unwrap_or_default(),
                workload.name.as_deref().unwrap_or_default()
            );
            tracing::warn!(workload = %described, %message, "not starting a rollout");
            self.ctx.cluster.record_on(workload, vec![event]);
        }
        // A problem fixed and then made again is told again.
        self.told_refusals = triggered.seen_refusals;
        for rollout in triggered.create {
            match self.ctx.cluster.create_rollout(&rollout).await {
                Ok(true) => {
                    let workload = (rollout.owner_references().first())
                        .map(|o| {
                            format!(
                                "{} {}/{}",
                                o.kind,
                                rollout.namespace().unwrap_or_default(),
                                o.name
                            )
                        })
                        .unwrap_or_default();
                    let token = rollout.annotations().get(ANNOTATION_RESTART_AT).cloned();
                    tracing::info!(%workload, token = token.unwrap_or_default(), rollout = %rollout.name_any(), "rollout started by annotation");
                }
                Ok(false) => {}
                Err(e) => self.failed("creating the triggered rollout", &describe(&rollout), &e),
            }
        }
    }
}

/// A request of another rollout that is not in the cache: the UID of the rollout that decided
/// or created it, and the request.
type Pending = (String, Arc<ContainerRecreateRequest>);

/// One pass's view of the namespaced caches, by namespace: each rollout reads its own
/// namespace's share instead of filtering every cached object.
struct Snapshot {
    pods: HashMap<String, Vec<Arc<CachedPod>>>,
    budgets: HashMap<String, Vec<Arc<PodDisruptionBudget>>>,
    requests: HashMap<String, Vec<Arc<ContainerRecreateRequest>>>,
}

impl Snapshot {
    fn of(stores: &Stores) -> Self {
        Snapshot {
            pods: by_namespace(&stores.pods),
            budgets: by_namespace(&stores.budgets),
            requests: by_namespace(&stores.requests),
        }
    }
}

fn by_namespace<K>(store: &Store<K>) -> HashMap<String, Vec<Arc<K>>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let mut grouped: HashMap<String, Vec<Arc<K>>> = HashMap::new();
    for object in store.state() {
        let namespace = object.meta().namespace.clone().unwrap_or_default();
        grouped.entry(namespace).or_default().push(object);
    }
    grouped
}

/// What applying one rollout's actions leaves for the controller to remember.
#[derive(Default)]
struct Applied {
    /// When the status was written, and the resourceVersion the write replaced.
    status_written: Option<(Instant, String)>,
    /// The requests of the batch created, and when.
    created: Option<(Vec<Arc<ContainerRecreateRequest>>, Instant)>,
    /// How soon a retry is due.
    due: Option<Duration>,
}

impl Applied {
    /// Hands a failed call to the error policy and keeps the retry it asks for.
    fn failed(&mut self, ctx: &Context, action: &str, object: &str, error: &ClusterError) {
        if let Retry::After(delay) = error_policy(&ctx.metrics, action, &object, error) {
            self.due = Some(self.due.map_or(delay, |d| d.min(delay)));
        }
    }
}

/// Applies `actions` in order through the cluster adapter; a pause or a batch that does not
/// happen ends them.
async fn apply(ctx: &Context, rollout: &RollingRestart, actions: Vec<Action>) -> Applied {
    let mut applied = Applied::default();
    let mut actions = VecDeque::from(actions);
    while let Some(action) = actions.pop_front() {
        match action {
            Action::Pause => {
                if let Err(e) = ctx.cluster.pause_rollout(rollout).await {
                    applied.failed(ctx, "pausing", &describe(rollout), &e);
                    return applied;
                }
            }
            Action::StartBatch(batch) => {
                let Some(then) = start_batch(ctx, rollout, batch, &mut applied).await else {
                    return applied;
                };
                for next in then.into_iter().rev() {
                    actions.push_front(next);
                }
            }
            Action::Record(event) => {
                (ctx.cluster).record_on(rollout.object_ref(&()), vec![event]);
            }
            Action::WriteStatus { status, completed } => {
                let previous = rollout.status.as_ref();
                match ctx.cluster.write_status(rollout, previous, &status).await {
                    Ok(_) => {
                        let rv = rollout.resource_version().unwrap_or_default();
                        applied.status_written = Some((Instant::now(), rv));
                        // Observed once: only the write that ends the rollout counts.
                        if let Some(c) = completed {
                            let duration = &ctx.metrics.rollouts.duration;
                            duration.with_label_values(&[c.result]).observe(c.seconds);
                        }
                    }
                    Err(e) => {
                        applied.failed(ctx, "writing rollout status", &describe(rollout), &e);
                    }
                }
            }
            Action::RequeueAfter(after) => {
                applied.due = Some(applied.due.map_or(after, |d| d.min(after)));
            }
        }
    }
    applied
}

/// Creates the batch's requests (concurrently, bounded: the gap between batches is one round
/// trip, not one per pod); what follows, or none when no request was created.
async fn start_batch(
    ctx: &Context,
    rollout: &RollingRestart,
    batch: Batch,
    applied: &mut Applied,
) -> Option<Vec<Action>> {
    let cluster = &ctx.cluster;
    let creations: Vec<_> = (batch.requests.iter())
        .map(|request| async move {
            (
                describe_request(request),
                cluster.create_request(request).await,
            )
        })
        .collect();
    let results: Vec<(String, Result<(), ClusterError>)> = futures::stream::iter(creations)
        .buffered(CREATE_CONCURRENCY)
        .collect()
        .await;
    let mut created = Vec::new();
    for ((object, result), request) in results.into_iter().zip(&batch.requests) {
        match result {
            Ok(()) => created.push(Arc::new(request.clone())),
            Err(e) => applied.failed(ctx, "creating the request", &object, &e),
        }
    }
    if created.is_empty() {
        return None;
    }
    tracing::info!(rollout = %describe(rollout), batch = ?batch.pods, "batch started");
    let count = created.len();
    applied.created = Some((created, Instant::now()));
    Some(batch.started(count))
}

/// Whether a Deployment controls the workload (its ReplicaSets).
fn controlled_by_deployment(meta: &kube::api::ObjectMeta) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.kind == WorkloadKind::Deployment.as_str())
}

/// The cached object `namespace/name`.
fn find<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    store.get(&ObjectRef::new(name).within(namespace))
}

/// `ContainerRecreateRequest namespace/name`, for logs.
fn describe_request(request: &ContainerRecreateRequest) -> String {
    format!(
        "ContainerRecreateRequest {}/{}",
        request.namespace().unwrap_or_default(),
        request.name_any()
    )
}
