//! The drain controller (ScaleDown part 2): a StatefulSet annotated with a drain pod template
//! (`relaunch.dev/drain-pod-template`, or `statefulsets.kubernetes.io/scaledown-pod-template`)
//! gets, for each ordinal removed without a ScaleDown, a `Drain` record and then a drain pod
//! bound to that ordinal's claims; see [`decide`] for the steps. Pod reads stay in
//! [`pods_by_name`] (the shared pod cache).

pub mod decide;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use relaunch_api::{
    ANNOTATION_DRAIN_ABORTABLE, ANNOTATION_DRAIN_CLAIM_POLICY, ANNOTATION_DRAIN_POD_TEMPLATE,
    ANNOTATION_LUKSA_DRAIN_POD_TEMPLATE, Drain, DrainPhase, LABEL_DRAIN, LABEL_DRAIN_ATTEMPT,
    ScaleDown, ordinal_start,
};

use crate::caches::{WatchTasks, prune_claim, prune_statefulset, watch_into};
use crate::context::Context;
use crate::error::{ClusterError, CoordinatorError};
use crate::error_policy::error_policy;
use crate::pods::{CachedPod, PodFacts};
use decide::{ClaimView, DEBOUNCE, PodView, SetView, Write};

/// The `relaunch_scaledown_drain*` metrics.
#[derive(Clone)]
pub struct DrainMetrics {
    /// `relaunch_scaledown_drains_active`.
    pub active: IntGauge,
    /// `relaunch_scaledown_drains_finished_total{result}`: succeeded | failed | aborted.
    pub finished: IntCounterVec,
    /// `relaunch_scaledown_drain_pods_total`: drain pods created (attempts).
    pub pods: prometheus::IntCounter,
}

impl DrainMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let active = IntGauge::new(
            "relaunch_scaledown_drains_active",
            "Drains of removed StatefulSet ordinals in progress (the leader's view).",
        )?;
        let finished = IntCounterVec::new(
            Opts::new(
                "relaunch_scaledown_drains_finished_total",
                "Drains finished, by result (succeeded, failed, aborted).",
            ),
            &["result"],
        )?;
        for r in ["succeeded", "failed", "aborted"] {
            finished.with_label_values(&[r]);
        }
        let pods = prometheus::IntCounter::new(
            "relaunch_scaledown_drain_pods_total",
            "Drain pods created (one per attempt).",
        )?;
        registry.register(Box::new(active.clone()))?;
        registry.register(Box::new(finished.clone()))?;
        registry.register(Box::new(pods.clone()))?;
        Ok(Self {
            active,
            finished,
            pods,
        })
    }
}

const OURS: [&str; 3] = [
    ANNOTATION_DRAIN_POD_TEMPLATE,
    ANNOTATION_LUKSA_DRAIN_POD_TEMPLATE,
    ANNOTATION_DRAIN_ABORTABLE,
];

struct Stores {
    statefulsets: Store<StatefulSet>,
    claims: Store<PersistentVolumeClaim>,
    drains: Store<Drain>,
    scaledowns: Store<ScaleDown>,
    pods: Store<CachedPod>,
}

/// Runs the drain controller on the shared pod cache until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    pods: Store<CachedPod>,
    notify: Arc<Notify>,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let wake = || vec![notify.clone()];
    let (statefulsets, t1) = watch_into(
        &ctx,
        "statefulsets",
        |o: &mut StatefulSet| {
            prune_statefulset(o, |k| {
                OURS.contains(&k) || k == ANNOTATION_DRAIN_CLAIM_POLICY
            })
        },
        wake(),
    );
    let (claims, t2) = watch_into(&ctx, "persistentvolumeclaims", prune_claim, wake());
    let (drains, t3) = watch_into(
        &ctx,
        "drains",
        |o: &mut Drain| o.metadata.managed_fields = None,
        wake(),
    );
    let (scaledowns, t4) = watch_into(
        &ctx,
        "scaledowns",
        |o: &mut ScaleDown| o.metadata.managed_fields = None,
        wake(),
    );
    let _tasks = WatchTasks(vec![t1, t2, t3, t4]);
    let stores = Stores {
        statefulsets,
        claims,
        drains,
        scaledowns,
        pods,
    };
    let ready = async {
        tokio::try_join!(
            stores.statefulsets.wait_until_ready(),
            stores.claims.wait_until_ready(),
            stores.drains.wait_until_ready(),
            stores.scaledowns.wait_until_ready(),
            stores.pods.wait_until_ready(),
        )
    };
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = ready => if r.is_err() { return Err(CoordinatorError::ControllersStopped) },
    }
    let mut first_seen: HashMap<String, Instant> = HashMap::new();
    let mut wake_in = Duration::ZERO;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = notify.notified() => {}
            _ = tokio::time::sleep(wake_in) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        wake_in = pass(&ctx, &stores, &mut first_seen).await;
    }
    ctx.metrics.drains.active.set(0);
    Ok(())
}

/// The annotated StatefulSet as the decisions see it.
fn set_view(sts: &StatefulSet) -> Option<SetView> {
    let annotations = sts.metadata.annotations.as_ref()?;
    let raw = annotations
        .get(ANNOTATION_DRAIN_POD_TEMPLATE)
        .or_else(|| annotations.get(ANNOTATION_LUKSA_DRAIN_POD_TEMPLATE))?;
    let template = serde_yaml::from_str::<Pod>(raw)
        .map_err(|e| {
            format!(
                "the drain pod template of StatefulSet {} is not a Pod: {e}",
                sts.name_any()
            )
        })
        .and_then(
            |pod| match pod.spec.as_ref().map(|s| s.containers.is_empty()) {
                Some(false) => Ok(pod),
                _ => Err(format!(
                    "the drain pod template of StatefulSet {} has no containers",
                    sts.name_any()
                )),
            },
        );
    let spec = sts.spec.as_ref();
    Some(SetView {
        name: sts.name_any(),
        namespace: sts.namespace().unwrap_or_default(),
        uid: sts.uid().unwrap_or_default(),
        replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
        start: ordinal_start(spec),
        service_name: spec.and_then(|s| s.service_name.clone()),
        claim_templates: spec
            .and_then(|s| s.volume_claim_templates.as_ref())
            .map(|ts| ts.iter().map(|t| t.name_any()).collect())
            .unwrap_or_default(),
        template,
        abortable: annotations
            .get(ANNOTATION_DRAIN_ABORTABLE)
            .map(String::as_str)
            == Some("true"),
        delete_claims: annotations
            .get(ANNOTATION_DRAIN_CLAIM_POLICY)
            .map(String::as_str)
            != Some("Retain"),
        deletes_claims_when_scaled: spec
            .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref())
            .and_then(|p| p.when_scaled.as_deref())
            == Some("Delete"),
        deleting: sts.metadata.deletion_timestamp.is_some(),
    })
}

/// The pods of `namespace` named `<set>-<n>`, by name (the only pod read of this controller).
fn pods_by_name(pods: &Store<CachedPod>, namespace: &str, set: &str) -> BTreeMap<String, PodView> {
    let prefix = format!("{set}-");
    pods.state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace))
        .filter(|p| {
            p.name_any()
                .strip_prefix(&prefix)
                .is_some_and(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|p| {
            let labels = p.labels();
            (
                p.name_any(),
                PodView {
                    name: p.name_any(),
                    uid: p.uid().unwrap_or_default(),
                    phase: p.phase().map(str::to_string),
                    deleting: p.metadata.deletion_timestamp.is_some(),
                    drain: labels.get(LABEL_DRAIN).map(str::to_string),
                    attempt: labels.get(LABEL_DRAIN_ATTEMPT).and_then(|a| a.parse().ok()),
                },
            )
        })
        .collect()
}

/// One pass over every annotated StatefulSet and every Drain; when to look again.
async fn pass(
    ctx: &Context,
    stores: &Stores,
    first_seen: &mut HashMap<String, Instant>,
) -> Duration {
    let mut next = Duration::from_secs(5);
    let now = Timestamp::now();
    let drains = stores.drains.state();
    let sets: Vec<SetView> = stores
        .statefulsets
        .state()
        .iter()
        .filter_map(|s| set_view(s))
        .collect();
    let mut seen_now = HashMap::new();
    for set in &sets {
        if let Err(message) = &set.template {
            tracing::debug!(statefulset = %set.name, %message, "drain template unusable");
        }
        let ns = set.namespace.as_str();
        let claims: Vec<ClaimView> = stores
            .claims
            .state()
            .iter()
            .filter(|c| c.namespace().as_deref() == Some(ns))
            .map(|c| ClaimView {
                name: c.name_any(),
                uid: c.uid().unwrap_or_default(),
                going: c.metadata.deletion_timestamp.is_some()
                    || c.owner_references().iter().any(|o| o.kind == "Pod"),
            })
            .collect();
        let drained: BTreeSet<String> = drains
            .iter()
            .filter(|d| d.namespace().as_deref() == Some(ns))
            .flat_map(|d| d.spec.claims.iter().map(|c| c.uid.clone()))
            .collect();
        // Claims a ScaleDown is removing or removed: their data was handed off already.
        let excluded: BTreeSet<String> = stores
            .scaledowns
            .state()
            .iter()
            .filter(|sd| sd.namespace().as_deref() == Some(ns))
            .filter(|sd| sd.spec.stateful_set_name == set.name)
            .filter_map(|sd| sd.status.clone())
            .flat_map(|s| {
                let current = s.current.map(|c| c.claims).unwrap_or_default();
                current.into_iter().chain(s.removed_claims)
            })
            .map(|c| c.uid)
            .collect();
        let pods = pods_by_name(&stores.pods, ns, &set.name);
        for (ordinal, claims) in decide::orphans(set, &claims, &pods, &drained, &excluded) {
            let key = claims
                .iter()
                .map(|c| c.uid.as_str())
                .collect::<Vec<_>>()
                .join(",");
            let since = first_seen.get(&key).copied().unwrap_or_else(Instant::now);
            seen_now.insert(key, since);
            if since.elapsed() < DEBOUNCE {
                next = next.min(DEBOUNCE.saturating_sub(since.elapsed()));
                continue;
            }
            let drain = decide::new_drain(set, ordinal, claims);
            tracing::info!(statefulset = %set.name, ordinal, drain = %drain.name_any(), "ordinal removed without a ScaleDown: draining its claims");
            let api: Api<Drain> = Api::namespaced(ctx.cluster.client(), ns);
            match ctx.cluster.create_drain(&api, &drain).await {
                Ok(()) => next = Duration::ZERO,
                Err(e) => {
                    error_policy(
                        &ctx.metrics,
                        "creating a Drain",
                        &format!("StatefulSet {ns}/{}", set.name),
                        &e,
                    );
                    next = next.min(Duration::from_secs(1));
                }
            }
        }
    }
    *first_seen = seen_now;

    let mut active = 0;
    for drain in &drains {
        let phase = drain.status.as_ref().map(|s| s.phase).unwrap_or_default();
        if phase.is_finished() || phase == DrainPhase::Unknown {
            continue;
        }
        active += 1;
        let ns = drain.namespace().unwrap_or_default();
        let set = sets
            .iter()
            .find(|s| s.namespace == ns && s.name == drain.spec.stateful_set_name)
            .cloned()
            .or_else(|| {
                // Annotation removed: the StatefulSet still counts (the drain goes on).
                stores
                    .statefulsets
                    .state()
                    .iter()
                    .find(|s| {
                        s.namespace().as_deref() == Some(ns.as_str())
                            && s.name_any() == drain.spec.stateful_set_name
                    })
                    .map(|s| {
                        let spec = s.spec.as_ref();
                        SetView {
                            name: s.name_any(),
                            namespace: ns.clone(),
                            uid: s.uid().unwrap_or_default(),
                            replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
                            start: ordinal_start(spec),
                            service_name: spec.and_then(|s| s.service_name.clone()),
                            claim_templates: Vec::new(),
                            template: Err("the drain pod template annotation was removed".into()),
                            abortable: false,
                            delete_claims: true,
                            deletes_claims_when_scaled: false,
                            deleting: s.metadata.deletion_timestamp.is_some(),
                        }
                    })
            });
        let pod_name = format!("{}-{}", drain.spec.stateful_set_name, drain.spec.ordinal);
        let pods = pods_by_name(&stores.pods, &ns, &drain.spec.stateful_set_name);
        let claims: BTreeMap<String, String> = stores
            .claims
            .state()
            .iter()
            .filter(|c| c.namespace().as_deref() == Some(ns.as_str()))
            .filter(|c| c.metadata.deletion_timestamp.is_none())
            .map(|c| (c.name_any(), c.uid().unwrap_or_default()))
            .collect();
        let d = decide::decide(drain, set.as_ref(), pods.get(&pod_name), &claims, now);
        if let Some(after) = reconcile(ctx, drain, d).await {
            next = next.min(after);
        }
    }
    ctx.metrics.drains.active.set(active);
    next
}

/// Applies one decision; when to look again.
async fn reconcile(ctx: &Context, drain: &Arc<Drain>, d: decide::Decision) -> Option<Duration> {
    let ns = drain.namespace().unwrap_or_default();
    let object = format!("Drain {ns}/{}", drain.name_any());
    let retry = Some(Duration::from_secs(1));
    match d.write {
        Some(Write::CreatePod(pod)) => {
            tracing::info!(drain = %object, pod = %pod.name_any(), "creating a drain pod");
            match ctx.cluster.create_pod(&ns, &pod).await {
                Ok(true) => ctx.metrics.drains.pods.inc(),
                Ok(false) => {}
                Err(e) => {
                    error_policy(&ctx.metrics, "creating a drain pod", &object, &e);
                    return retry;
                }
            }
            return Some(Duration::from_millis(500));
        }
        Some(Write::DeletePod { name, uid }) => {
            if let Err(e) = ctx.cluster.delete_pod(&ns, &name, &uid).await {
                error_policy(&ctx.metrics, "deleting a drain pod", &object, &e);
                return retry;
            }
            return Some(Duration::from_millis(500));
        }
        Some(Write::DeleteClaims(claims)) => {
            for claim in &claims {
                if let Err(e) = ctx.cluster.delete_claim(&ns, claim).await {
                    error_policy(&ctx.metrics, "deleting a drained claim", &object, &e);
                    return retry;
                }
            }
            return Some(Duration::from_millis(500));
        }
        None => {}
    }
    if let Some(new) = d.status {
        match ctx
            .cluster
            .write_status(&**drain, drain.status.as_ref(), &new)
            .await
        {
            Ok(_) => {
                if new.phase.is_finished() {
                    let result = match new.phase {
                        DrainPhase::Succeeded => "succeeded",
                        DrainPhase::Aborted => "aborted",
                        _ => "failed",
                    };
                    ctx.metrics
                        .drains
                        .finished
                        .with_label_values(&[result])
                        .inc();
                    tracing::info!(drain = %object, result, message = new.message.as_deref().unwrap_or_default(), "drain finished");
                }
                ctx.cluster.record_on(drain.object_ref(&()), d.events);
            }
            Err(ClusterError::Conflict(_)) => return Some(Duration::from_millis(100)),
            Err(e) => {
                error_policy(&ctx.metrics, "writing Drain status", &object, &e);
                return retry;
            }
        }
    }
    d.requeue
}
