//! Restart in place on a configuration change (what Reloader does, without re-creating pods):
//! workloads opted in with `relaunch.dev/reload` (or Reloader's annotations) get one
//! RollingRestart when a ConfigMap or Secret they use changes, restarting only the containers
//! that use it. [`decide`] holds the rules; this module keeps the ConfigMap and Secret caches
//! (metadata and a content hash only: values are hashed and dropped as each watch event
//! arrives, never stored or logged) and applies the decisions for the rollout controller, whose
//! pass calls [`Reloader::pass`] next to the `restart-at` trigger.

pub mod decide;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvFromSource, EnvVar, EnvVarSource, PodSpec, PodTemplateSpec, Secret,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use sha2::{Digest, Sha256};

use relaunch_api::reload::{
    ANNOTATION_RELOAD_APPLIED, ANNOTATION_RELOAD_CHANGED, ConfigKind, ConfigRef, format_refs,
    opted_in,
};
use relaunch_api::{RollingRestart, RolloutPhase, WorkloadKind};

use crate::context::Context;
use crate::error::ClusterError;
use crate::error_policy::{Retry, error_policy};
use crate::events::Event;
use decide::{Seen, Workload, missing_event, workload_reference};

/// The annotation under which the ConfigMap and Secret caches keep an object's content hash.
/// It exists only in this process's caches; nothing writes it to the API.
pub const CACHED_HASH: &str = "relaunch.dev/cached-content-hash";

/// A rollout this trigger created waits this long at most for the cache to show it (until then
/// it counts as running, so a change meanwhile cannot start a second one).
const CREATION_SETTLE: Duration = Duration::from_secs(30);

/// The content hash of an object: SHA-256 over its UID and its entries (key and value, each
/// length-prefixed, in key order), the first 16 hex digits. The UID is part of it so that the
/// hash, stored on the workload, cannot be checked against guessed values by someone who cannot
/// read the object; a deleted and re-created object counts as changed.
pub fn content_hash<'a>(
    uid: &str,
    entries: impl IntoIterator<Item = (&'a str, u8, &'a [u8])>,
) -> String {
    let mut hasher = Sha256::new();
    let mut put = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    put(uid.as_bytes());
    let mut entries: Vec<_> = entries.into_iter().collect();
    entries.sort();
    for (key, tag, value) in entries {
        put(&[tag]);
        put(key.as_bytes());
        put(value);
    }
    let digest = hasher.finalize();
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Secrets of these types are not watched: no pod uses them, and they can be large and many
/// (Helm keeps every release of every chart in one, up to 1 MiB each).
pub const UNWATCHED_SECRET_TYPES: [&str; 1] = ["helm.sh/release.v1"];

/// The Secrets watch: every type but [`UNWATCHED_SECRET_TYPES`] (a field selector, so the API
/// server never sends them).
pub fn secrets_watched() -> kube::runtime::watcher::Config {
    let selector: Vec<String> = UNWATCHED_SECRET_TYPES
        .iter()
        .map(|t| format!("type!={t}"))
        .collect();
    kube::runtime::watcher::Config::default().fields(&selector.join(","))
}

/// Keeps only the identity of a ConfigMap and the hash of its content.
pub fn prune_config_map(cm: &mut ConfigMap) {
    let uid = cm.metadata.uid.clone().unwrap_or_default();
    let data = cm.data.take().unwrap_or_default();
    let binary = cm.binary_data.take().unwrap_or_default();
    let hash = content_hash(
        &uid,
        data.iter()
            .map(|(k, v)| (k.as_str(), 0, v.as_bytes()))
            .chain(binary.iter().map(|(k, v)| (k.as_str(), 1, v.0.as_slice()))),
    );
    keep_identity(&mut cm.metadata, hash);
    cm.immutable = None;
}

/// Keeps only the identity of a Secret and the hash of its content; its values are dropped here,
/// as the watch event arrives.
pub fn prune_secret(secret: &mut Secret) {
    let uid = secret.metadata.uid.clone().unwrap_or_default();
    let data = secret.data.take().unwrap_or_default();
    let strings = secret.string_data.take().unwrap_or_default();
    let hash = content_hash(
        &uid,
        data.iter()
            .map(|(k, v)| (k.as_str(), 0, v.0.as_slice()))
            .chain(strings.iter().map(|(k, v)| (k.as_str(), 0, v.as_bytes()))),
    );
    keep_identity(&mut secret.metadata, hash);
    secret.type_ = None;
    secret.immutable = None;
}

fn keep_identity(meta: &mut ObjectMeta, hash: String) {
    meta.managed_fields = None;
    meta.labels = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.annotations = Some(BTreeMap::from([(CACHED_HASH.to_string(), hash)]));
}

/// What a cached ConfigMap or Secret says of itself.
fn seen_of(meta: &ObjectMeta) -> Option<Seen> {
    Some(Seen {
        hash: meta.annotations.as_ref()?.get(CACHED_HASH)?.clone(),
        resource_version: meta.resource_version.clone().unwrap_or_default(),
    })
}

/// A workload's pod template pruned to what says which ConfigMaps and Secrets each container
/// uses, for opted-in workloads (`annotations`); an empty template for the others.
pub fn prune_template(
    annotations: Option<&BTreeMap<String, String>>,
    template: PodTemplateSpec,
) -> PodTemplateSpec {
    if !annotations.is_some_and(opted_in) {
        return PodTemplateSpec::default();
    }
    let Some(spec) = template.spec else {
        return PodTemplateSpec::default();
    };
    let container = |c: Container| Container {
        name: c.name,
        restart_policy: c.restart_policy,
        env: c.env.map(|env| {
            env.into_iter()
                .filter_map(|e| {
                    let from = e.value_from?;
                    (from.config_map_key_ref.is_some() || from.secret_key_ref.is_some()).then(
                        || EnvVar {
                            name: e.name,
                            value: None,
                            value_from: Some(EnvVarSource {
                                config_map_key_ref: from.config_map_key_ref,
                                secret_key_ref: from.secret_key_ref,
                                ..Default::default()
                            }),
                        },
                    )
                })
                .collect()
        }),
        env_from: c.env_from.map(|env| {
            env.into_iter()
                .map(|e| EnvFromSource { prefix: None, ..e })
                .collect()
        }),
        volume_mounts: c.volume_mounts.map(|mounts| {
            mounts
                .into_iter()
                .map(|m| VolumeMount {
                    name: m.name,
                    ..Default::default()
                })
                .collect()
        }),
        ..Default::default()
    };
    let volume = |v: Volume| Volume {
        name: v.name,
        config_map: v.config_map,
        secret: v.secret,
        projected: v.projected,
        ..Default::default()
    };
    PodTemplateSpec {
        metadata: None,
        spec: Some(PodSpec {
            containers: spec.containers.into_iter().map(container).collect(),
            init_containers: spec
                .init_containers
                .map(|c| c.into_iter().map(container).collect()),
            volumes: spec.volumes.map(|v| {
                v.into_iter()
                    .filter(|v| {
                        v.config_map.is_some() || v.secret.is_some() || v.projected.is_some()
                    })
                    .map(volume)
                    .collect()
            }),
            ..Default::default()
        }),
    }
}

/// A workload spec's `template` field (optional in a ReplicaSet's spec).
pub trait TemplateField: Sized {
    /// Pruned with [`prune_template`].
    fn pruned(self, annotations: Option<&BTreeMap<String, String>>) -> Self;
    /// The pod spec, if any.
    fn pod_spec(&self) -> Option<&PodSpec>;
}

impl TemplateField for PodTemplateSpec {
    fn pruned(self, annotations: Option<&BTreeMap<String, String>>) -> Self {
        prune_template(annotations, self)
    }
    fn pod_spec(&self) -> Option<&PodSpec> {
        self.spec.as_ref()
    }
}

impl TemplateField for Option<PodTemplateSpec> {
    fn pruned(self, annotations: Option<&BTreeMap<String, String>>) -> Self {
        self.map(|t| prune_template(annotations, t))
    }
    fn pod_spec(&self) -> Option<&PodSpec> {
        self.as_ref()?.spec.as_ref()
    }
}

/// An opted-in workload as the pass reads it from the rollout controller's caches.
#[derive(Debug, Clone)]
pub struct ReloadWorkload {
    pub kind: WorkloadKind,
    pub meta: ObjectMeta,
    pub spec: Option<PodSpec>,
}

/// The `relaunch_reload_*` metrics.
#[derive(Clone)]
pub struct ReloadMetrics {
    /// `relaunch_reload_workloads`: workloads opted in.
    pub workloads: IntGauge,
    /// `relaunch_reload_objects{kind}`: ConfigMaps and Secrets in the caches (hash only).
    pub objects: IntGaugeVec,
    /// `relaunch_reload_decisions_total{result}`: `started`, `coalesced` (a change that waits
    /// for a running rollout, counted once per workload and set of changed objects), `missing`,
    /// `refused`.
    pub decisions: IntCounterVec,
}

impl ReloadMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let workloads = IntGauge::new(
            "relaunch_reload_workloads",
            "Workloads opted in to restart in place on a configuration change.",
        )?;
        let objects = IntGaugeVec::new(
            Opts::new(
                "relaunch_reload_objects",
                "ConfigMaps and Secrets in the coordinator's caches (metadata and a content hash), by kind.",
            ),
            &["kind"],
        )?;
        let decisions = IntCounterVec::new(
            Opts::new(
                "relaunch_reload_decisions_total",
                "What configuration changes did: started a rollout, waited for a running one (coalesced), or nothing because an object is missing or the annotations are wrong.",
            ),
            &["result"],
        )?;
        for result in ["started", "coalesced", "missing", "refused"] {
            decisions.with_label_values(&[result]);
        }
        registry.register(Box::new(workloads.clone()))?;
        registry.register(Box::new(objects.clone()))?;
        registry.register(Box::new(decisions.clone()))?;
        Ok(Self {
            workloads,
            objects,
            decisions,
        })
    }

    /// Shows no gauges: a replica that stopped leading reports nothing it no longer watches.
    pub fn clear(&self) {
        self.workloads.set(0);
        self.objects.reset();
    }
}

/// The trigger's memory across passes.
#[derive(Default)]
pub struct Reloader {
    /// Warnings already told: (workload UID, message).
    told: HashSet<(String, String)>,
    /// Changes already counted as waiting: (workload UID, changed objects).
    waiting: HashSet<(String, String)>,
    /// Per workload UID, the rollout created and when, until the cache shows it.
    created: HashMap<String, (String, Instant)>,
    /// Per workload UID, the applied value written and when, until the cache shows it.
    written: HashMap<String, (String, Instant)>,
}

impl Reloader {
    /// One pass over `workloads` (the opted-in ones); returns how soon a retry is due.
    pub async fn pass(
        &mut self,
        ctx: &Context,
        workloads: &[ReloadWorkload],
        config_maps: &Store<ConfigMap>,
        secrets: &Store<Secret>,
        rollouts: &Store<RollingRestart>,
    ) -> Option<Duration> {
        let metrics = &ctx.metrics.reload;
        metrics
            .workloads
            .set(i64::try_from(workloads.len()).unwrap_or(i64::MAX));
        let objects = |kind: &str, n: usize| {
            metrics
                .objects
                .with_label_values(&[kind])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        objects("configmap", config_maps.len());
        objects("secret", secrets.len());
        let running = running_rollouts(&rollouts.state());
        let mut due = None;
        let mut told = HashSet::new();
        let mut waiting = HashSet::new();
        let live: HashSet<String> = workloads
            .iter()
            .filter_map(|w| w.meta.uid.clone())
            .collect();
        self.created.retain(|uid, (name, at)| {
            live.contains(uid)
                && at.elapsed() < CREATION_SETTLE
                && !rollouts_contain(rollouts, uid, name)
        });
        for workload in workloads {
            let uid = workload.meta.uid.clone().unwrap_or_default();
            let ns = workload.meta.namespace.clone().unwrap_or_default();
            // Until the cache shows our last write, decide on what was written.
            let mut meta = workload.meta.clone();
            let cached = (meta.annotations.as_ref()).and_then(|a| a.get(ANNOTATION_RELOAD_APPLIED));
            match self.written.get(&uid) {
                Some((value, at)) if Some(value) != cached && at.elapsed() < CREATION_SETTLE => {
                    meta.annotations
                        .get_or_insert_default()
                        .insert(ANNOTATION_RELOAD_APPLIED.into(), value.clone());
                }
                _ => {
                    self.written.remove(&uid);
                }
            }
            let running = running
                .get(&uid)
                .cloned()
                .or_else(|| self.created.get(&uid).map(|(n, _)| n.clone()));
            let seen = |r: &ConfigRef| match r.kind {
                ConfigKind::ConfigMap => config_maps
                    .get(&ObjectRef::new(&r.name).within(&ns))
                    .and_then(|o| seen_of(&o.metadata)),
                ConfigKind::Secret => secrets
                    .get(&ObjectRef::new(&r.name).within(&ns))
                    .and_then(|o| seen_of(&o.metadata)),
            };
            let view = Workload {
                kind: &workload.kind,
                meta: &meta,
                spec: workload.spec.as_ref(),
            };
            let decision = decide::decide(&view, seen, running.as_deref());
            let reference = workload_reference(&workload.kind, &meta);
            let described = format!(
                "{} {ns}/{}",
                workload.kind,
                meta.name.clone().unwrap_or_default()
            );
            let mut tell = |message: String, event: Event, result: &str| {
                let key = (uid.clone(), message);
                if !self.told.contains(&key) {
                    tracing::warn!(workload = %described, message = %key.1, "configuration change: {}", event.reason);
                    metrics.decisions.with_label_values(&[result]).inc();
                    ctx.cluster.record_on(reference.clone(), vec![event]);
                }
                told.insert(key);
            };
            if let Some(message) = decision.refused {
                let event = Event::warning(
                    decide::REASON_REFUSED,
                    format!("no restart on configuration changes: {message}"),
                );
                tell(message, event, "refused");
            }
            for missing in &decision.missing {
                tell(missing.to_string(), missing_event(missing), "missing");
            }
            if let Some(changed) = decision.waiting {
                let key = (uid.clone(), format_refs(&changed));
                if !self.waiting.contains(&key) {
                    let rollout = running.clone().unwrap_or_default();
                    metrics.decisions.with_label_values(&["coalesced"]).inc();
                    tracing::info!(workload = %described, changed = %key.1, %rollout, "configuration changed while a rollout runs; one follow-up once it ends");
                    let event = decide::queued_event(&key.1, &rollout, &ns);
                    ctx.cluster.record_on(reference.clone(), vec![event]);
                }
                waiting.insert(key);
            }
            if let Some(start) = decision.start {
                let name = start.rollout.name_any();
                match ctx.cluster.create_rollout(&start.rollout).await {
                    Ok(created) => {
                        self.created
                            .insert(uid.clone(), (name.clone(), Instant::now()));
                        if created {
                            metrics.decisions.with_label_values(&["started"]).inc();
                            tracing::info!(workload = %described, changed = %format_refs(&start.changed), rollout = %name, containers = ?start.rollout.spec.containers, "configuration changed; rollout started");
                            ctx.cluster.record_on(reference.clone(), vec![start.event]);
                        }
                    }
                    Err(e) => {
                        if let Some(d) = retry(
                            ctx,
                            "creating the rollout for a configuration change",
                            &described,
                            &e,
                        ) {
                            due = Some(d);
                        }
                        continue;
                    }
                }
            }
            if let Some(applied) = decision.applied {
                match ctx
                    .cluster
                    .annotate_workload(
                        &workload.kind,
                        &ns,
                        meta.name.as_deref().unwrap_or_default(),
                        ANNOTATION_RELOAD_APPLIED,
                        &applied,
                    )
                    .await
                {
                    Ok(()) => {
                        self.written.insert(uid.clone(), (applied, Instant::now()));
                    }
                    Err(e) => {
                        if let Some(d) =
                            retry(ctx, "recording the applied configuration", &described, &e)
                        {
                            due = Some(d);
                        }
                    }
                }
            }
        }
        // A problem fixed and then made again is told again.
        self.told = told;
        self.waiting = waiting;
        self.written.retain(|uid, _| live.contains(uid));
        due
    }
}

fn retry(ctx: &Context, action: &str, object: &str, error: &ClusterError) -> Option<Duration> {
    match error_policy(&ctx.metrics, action, &object, error) {
        Retry::After(d) => Some(d),
        _ => None,
    }
}

/// Per workload UID, a rollout this trigger started that has not ended.
fn running_rollouts(rollouts: &[Arc<RollingRestart>]) -> HashMap<String, String> {
    rollouts
        .iter()
        .filter(|r| r.annotations().contains_key(ANNOTATION_RELOAD_CHANGED))
        .filter(|r| {
            !matches!(
                r.status.as_ref().map(|s| s.phase),
                Some(RolloutPhase::Succeeded | RolloutPhase::Failed)
            )
        })
        .flat_map(|r| {
            r.owner_references()
                .iter()
                .map(|o| (o.uid.clone(), r.name_any()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn rollouts_contain(rollouts: &Store<RollingRestart>, owner: &str, name: &str) -> bool {
    rollouts
        .state()
        .iter()
        .any(|r| r.name_any() == name && r.owner_references().iter().any(|o| o.uid == owner))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn the_cache_keeps_a_hash_and_never_a_value() {
        let mut secret = Secret {
            metadata: ObjectMeta {
                name: Some("pw".into()),
                uid: Some("u1".into()),
                labels: Some(BTreeMap::from([("a".into(), "b".into())])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "password".into(),
                ByteString(b"hunter2".to_vec()),
            )])),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        let before = secret.clone();
        prune_secret(&mut secret);
        let text = serde_json::to_string(&secret).unwrap();
        assert!(
            !text.contains("hunter2") && !text.contains("aHVudGVyMg"),
            "{text}"
        );
        let hash = seen_of(&secret.metadata).unwrap().hash;
        assert_eq!(hash.len(), 16);
        // Another value, or the same value in another object, hashes differently.
        let mut changed = before.clone();
        changed.data = Some(BTreeMap::from([(
            "password".into(),
            ByteString(b"hunter3".to_vec()),
        )]));
        prune_secret(&mut changed);
        assert_ne!(seen_of(&changed.metadata).unwrap().hash, hash);
        let mut recreated = before.clone();
        recreated.metadata.uid = Some("u2".into());
        prune_secret(&mut recreated);
        assert_ne!(seen_of(&recreated.metadata).unwrap().hash, hash);
        let mut same = before;
        same.metadata.resource_version = Some("9".into());
        prune_secret(&mut same);
        assert_eq!(seen_of(&same.metadata).unwrap().hash, hash);

        // A key moved from data to binaryData is a change; entries are not concatenated.
        let cm = |data: &[(&str, &str)], binary: &[(&str, &[u8])]| {
            let mut cm = ConfigMap {
                metadata: ObjectMeta {
                    uid: Some("c".into()),
                    ..Default::default()
                },
                data: Some(
                    data.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                binary_data: Some(
                    binary
                        .iter()
                        .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                        .collect(),
                ),
                ..Default::default()
            };
            prune_config_map(&mut cm);
            assert!(cm.data.is_none() && cm.binary_data.is_none());
            seen_of(&cm.metadata).unwrap().hash
        };
        assert_ne!(cm(&[("a", "x")], &[]), cm(&[], &[("a", b"x")]));
        assert_ne!(cm(&[("a", "bc")], &[]), cm(&[("ab", "c")], &[]));
        assert_eq!(
            cm(&[("a", "1"), ("b", "2")], &[]),
            cm(&[("b", "2"), ("a", "1")], &[])
        );
    }

    #[test]
    fn helm_release_secrets_are_not_watched() {
        let config = secrets_watched();
        assert_eq!(
            config.field_selector.as_deref(),
            Some("type!=helm.sh/release.v1")
        );
    }

    #[test]
    fn only_opted_in_templates_are_kept_and_only_their_references() {
        let template: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "db"}},
            "spec": {"containers": [{"name": "db", "image": "db:1", "command": ["run"],
                "env": [{"name": "A", "value": "plain"},
                        {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "b"}}}],
                "volumeMounts": [{"name": "tls", "mountPath": "/tls", "subPath": "x"}]}],
                "volumes": [{"name": "tls", "secret": {"secretName": "tls"}},
                            {"name": "data", "emptyDir": {}}]},
        }))
        .unwrap();
        assert_eq!(
            prune_template(None, template.clone()),
            PodTemplateSpec::default()
        );
        let on = BTreeMap::from([("reloader.stakater.com/auto".to_string(), "true".to_string())]);
        let kept = prune_template(Some(&on), template.clone());
        let spec = kept.spec.clone().unwrap();
        assert_eq!(spec.containers[0].image, None);
        assert_eq!(spec.containers[0].env.as_ref().unwrap().len(), 1);
        assert_eq!(spec.volumes.as_ref().unwrap().len(), 1);
        assert_eq!(
            relaunch_api::reload::container_references(&spec),
            relaunch_api::reload::container_references(template.spec.as_ref().unwrap())
        );
    }
}
