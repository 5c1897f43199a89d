//! Restart in place on a configuration change: the annotations that opt a workload in, and which
//! ConfigMaps and Secrets each container of its pod template uses. Pure; the coordinator's
//! `reload` module watches the objects and starts the rollouts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::{Container, PodSpec};

use crate::containers::is_native_sidecar;

/// On a workload: `auto` (every ConfigMap and Secret its pod template uses) or a list
/// `configmap/NAME,secret/NAME`; a change to one of them restarts the pods in place.
pub const ANNOTATION_RELOAD: &str = "relaunch.dev/reload";
/// On a workload: which containers a configuration change restarts — `all`, or a list of
/// container names; default: the containers that use the changed object.
pub const ANNOTATION_RELOAD_CONTAINERS: &str = "relaunch.dev/reload-containers";
/// On a workload, written by the coordinator: the content hash of each object it uses, as last
/// applied (`configmap/NAME=HASH,...`); a restart is due when a hash differs.
pub const ANNOTATION_RELOAD_APPLIED: &str = "relaunch.dev/reload-applied";
/// On a RollingRestart started by a configuration change: the objects that changed
/// (`configmap/NAME,secret/NAME`).
pub const ANNOTATION_RELOAD_CHANGED: &str = "relaunch.dev/reload-changed";

/// Reloader's annotations accepted as aliases (same meaning, see docs/api.md).
pub const RELOADER_AUTO: &str = "reloader.stakater.com/auto";
pub const RELOADER_CONFIGMAP_AUTO: &str = "configmap.reloader.stakater.com/auto";
pub const RELOADER_SECRET_AUTO: &str = "secret.reloader.stakater.com/auto";
pub const RELOADER_CONFIGMAP_RELOAD: &str = "configmap.reloader.stakater.com/reload";
pub const RELOADER_SECRET_RELOAD: &str = "secret.reloader.stakater.com/reload";

/// Every annotation that opts a workload in.
pub const RELOAD_ANNOTATIONS: [&str; 6] = [
    ANNOTATION_RELOAD,
    RELOADER_AUTO,
    RELOADER_CONFIGMAP_AUTO,
    RELOADER_SECRET_AUTO,
    RELOADER_CONFIGMAP_RELOAD,
    RELOADER_SECRET_RELOAD,
];

/// A ConfigMap or a Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConfigKind {
    ConfigMap,
    Secret,
}

impl ConfigKind {
    /// As written in the annotations (`configmap`, `secret`).
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigKind::ConfigMap => "configmap",
            ConfigKind::Secret => "secret",
        }
    }
}

/// A ConfigMap or Secret of the workload's namespace, written `configmap/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigRef {
    pub kind: ConfigKind,
    pub name: String,
}

impl ConfigRef {
    pub fn config_map(name: &str) -> Self {
        Self {
            kind: ConfigKind::ConfigMap,
            name: name.into(),
        }
    }

    pub fn secret(name: &str) -> Self {
        Self {
            kind: ConfigKind::Secret,
            name: name.into(),
        }
    }

    /// `configmap/NAME` or `secret/NAME` (also `cm/`, `ConfigMap/`, `secrets/`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (kind, name) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?}: write configmap/NAME or secret/NAME"))?;
        let kind = match kind.to_ascii_lowercase().as_str() {
            "configmap" | "configmaps" | "cm" => ConfigKind::ConfigMap,
            "secret" | "secrets" => ConfigKind::Secret,
            _ => return Err(format!("{text:?}: write configmap/NAME or secret/NAME")),
        };
        let name = name.trim();
        if !is_object_name(name) {
            return Err(format!("{text:?}: {name:?} is not an object name"));
        }
        Ok(Self {
            kind,
            name: name.into(),
        })
    }
}

impl fmt::Display for ConfigRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.name)
    }
}

/// A DNS subdomain (what ConfigMap and Secret names are).
fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// What a workload's annotations ask for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReloadConfig {
    /// Every ConfigMap the template uses (`auto`).
    pub auto_config_maps: bool,
    /// Every Secret the template uses (`auto`).
    pub auto_secrets: bool,
    /// Named objects, used by the template or not.
    pub listed: BTreeSet<ConfigRef>,
    /// Which containers a change restarts.
    pub containers: ReloadContainers,
}

/// Which containers a configuration change restarts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ReloadContainers {
    /// Those that use a changed object (all, when none of them does).
    #[default]
    Using,
    /// Every container.
    All,
    /// These, by name.
    Named(Vec<String>),
}

/// Whether `annotations` opt a workload in at all (cheap; no parsing).
pub fn opted_in(annotations: &BTreeMap<String, String>) -> bool {
    RELOAD_ANNOTATIONS
        .iter()
        .any(|key| annotations.contains_key(*key))
}

fn truthy(value: &str) -> Result<bool, String> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("{other:?}: use \"true\" or \"false\"")),
    }
}

/// What `annotations` ask for; `None` when the workload is not opted in (also when every
/// annotation says `false`). The error names the bad annotation.
pub fn reload_config(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<ReloadConfig>, String> {
    let mut config = ReloadConfig::default();
    let mut on = false;
    if let Some(value) = annotations.get(ANNOTATION_RELOAD) {
        let value = value.trim();
        if value == "auto" || value == "true" {
            (config.auto_config_maps, config.auto_secrets) = (true, true);
            on = true;
        } else if value != "false" && !value.is_empty() {
            for entry in value.split(',').filter(|e| !e.trim().is_empty()) {
                let parsed = ConfigRef::parse(entry)
                    .map_err(|e| format!("{ANNOTATION_RELOAD} {e}; or write auto"))?;
                config.listed.insert(parsed);
            }
            on = true;
        }
    }
    let flag = |key: &str| -> Result<bool, String> {
        annotations
            .get(key)
            .map(|v| truthy(v).map_err(|e| format!("{key} {e}")))
            .transpose()
            .map(|v| v.unwrap_or(false))
    };
    if flag(RELOADER_AUTO)? {
        (config.auto_config_maps, config.auto_secrets) = (true, true);
        on = true;
    }
    if flag(RELOADER_CONFIGMAP_AUTO)? {
        config.auto_config_maps = true;
        on = true;
    }
    if flag(RELOADER_SECRET_AUTO)? {
        config.auto_secrets = true;
        on = true;
    }
    for (key, kind) in [
        (RELOADER_CONFIGMAP_RELOAD, ConfigKind::ConfigMap),
        (RELOADER_SECRET_RELOAD, ConfigKind::Secret),
    ] {
        for name in annotations
            .get(key)
            .into_iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            if !is_object_name(name) {
                return Err(format!("{key} {name:?} is not an object name"));
            }
            config.listed.insert(ConfigRef {
                kind,
                name: name.into(),
            });
            on = true;
        }
    }
    if !on {
        return Ok(None);
    }
    if let Some(value) = annotations.get(ANNOTATION_RELOAD_CONTAINERS) {
        let value = value.trim();
        config.containers = if value == "all" {
            ReloadContainers::All
        } else {
            let names: Vec<String> = value
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect();
            if names.is_empty() {
                return Err(format!(
                    "{ANNOTATION_RELOAD_CONTAINERS} {value:?}: use all or container names"
                ));
            }
            ReloadContainers::Named(names)
        };
    }
    Ok(Some(config))
}

/// Per container that can be restarted in place (regular containers and native sidecars), the
/// ConfigMaps and Secrets it uses: `env[].valueFrom`, `envFrom`, and the `configMap`, `secret`
/// and `projected` volumes it mounts. Init containers run once per pod and are not counted.
pub fn container_references(spec: &PodSpec) -> BTreeMap<String, BTreeSet<ConfigRef>> {
    let volumes: BTreeMap<&str, BTreeSet<ConfigRef>> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| {
            let mut refs = BTreeSet::new();
            if let Some(cm) = &v.config_map {
                refs.insert(ConfigRef::config_map(&cm.name));
            }
            if let Some(secret) = &v.secret
                && let Some(name) = &secret.secret_name
            {
                refs.insert(ConfigRef::secret(name));
            }
            for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
                if let Some(cm) = &source.config_map {
                    refs.insert(ConfigRef::config_map(&cm.name));
                }
                if let Some(secret) = &source.secret {
                    refs.insert(ConfigRef::secret(&secret.name));
                }
            }
            (v.name.as_str(), refs)
        })
        .collect();
    let uses = |c: &Container| -> BTreeSet<ConfigRef> {
        let mut refs = BTreeSet::new();
        for var in c.env.iter().flatten() {
            let Some(from) = &var.value_from else {
                continue;
            };
            if let Some(key) = &from.config_map_key_ref {
                refs.insert(ConfigRef::config_map(&key.name));
            }
            if let Some(key) = &from.secret_key_ref {
                refs.insert(ConfigRef::secret(&key.name));
            }
        }
        for from in c.env_from.iter().flatten() {
            if let Some(source) = &from.config_map_ref {
                refs.insert(ConfigRef::config_map(&source.name));
            }
            if let Some(source) = &from.secret_ref {
                refs.insert(ConfigRef::secret(&source.name));
            }
        }
        for mount in c.volume_mounts.iter().flatten() {
            if let Some(used) = volumes.get(mount.name.as_str()) {
                refs.extend(used.iter().cloned());
            }
        }
        refs.retain(|r| !r.name.is_empty());
        refs
    };
    spec.containers
        .iter()
        .chain(
            spec.init_containers
                .iter()
                .flatten()
                .filter(|c| is_native_sidecar(c)),
        )
        .map(|c| (c.name.clone(), uses(c)))
        .collect()
}

/// The objects a workload with `config` watches, given what its containers use.
pub fn watched(
    config: &ReloadConfig,
    uses: &BTreeMap<String, BTreeSet<ConfigRef>>,
) -> BTreeSet<ConfigRef> {
    let mut watched = config.listed.clone();
    for refs in uses.values() {
        for r in refs {
            let auto = match r.kind {
                ConfigKind::ConfigMap => config.auto_config_maps,
                ConfigKind::Secret => config.auto_secrets,
            };
            if auto {
                watched.insert(r.clone());
            }
        }
    }
    watched
}

/// The containers a change to `changed` restarts: empty means every container.
pub fn containers_to_restart(
    config: &ReloadConfig,
    uses: &BTreeMap<String, BTreeSet<ConfigRef>>,
    changed: &BTreeSet<ConfigRef>,
) -> Vec<String> {
    match &config.containers {
        ReloadContainers::All => Vec::new(),
        ReloadContainers::Named(names) => names.clone(),
        ReloadContainers::Using => {
            let using: Vec<String> = uses
                .iter()
                .filter(|(_, refs)| !refs.is_disjoint(changed))
                .map(|(name, _)| name.clone())
                .collect();
            // Listed but used by no container (read through the API, say): all of them.
            if using.is_empty() { Vec::new() } else { using }
        }
    }
}

/// `configmap/a=HASH,secret/b=HASH` as written in [`ANNOTATION_RELOAD_APPLIED`].
pub fn format_applied(applied: &BTreeMap<ConfigRef, String>) -> String {
    applied
        .iter()
        .map(|(r, h)| format!("{r}={h}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// [`ANNOTATION_RELOAD_APPLIED`] read back; entries that do not parse are left out (they then
/// count as new, not as changed).
pub fn parse_applied(text: &str) -> BTreeMap<ConfigRef, String> {
    text.split(',')
        .filter_map(|entry| {
            let (r, h) = entry.split_once('=')?;
            Some((ConfigRef::parse(r).ok()?, h.trim().to_string()))
        })
        .collect()
}

/// `configmap/a,secret/b`.
pub fn format_refs<'a>(refs: impl IntoIterator<Item = &'a ConfigRef>) -> String {
    refs.into_iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn auto_a_list_and_reloaders_names() {
        let auto = reload_config(&annotations(&[(ANNOTATION_RELOAD, "auto")]))
            .unwrap()
            .unwrap();
        assert!(auto.auto_config_maps && auto.auto_secrets && auto.listed.is_empty());
        let listed = reload_config(&annotations(&[(
            ANNOTATION_RELOAD,
            "configmap/app, secret/tls,",
        )]))
        .unwrap()
        .unwrap();
        assert!(!listed.auto_config_maps && !listed.auto_secrets);
        assert_eq!(
            listed.listed,
            BTreeSet::from([ConfigRef::config_map("app"), ConfigRef::secret("tls")])
        );
        let reloader = reload_config(&annotations(&[
            (RELOADER_CONFIGMAP_RELOAD, "a,b"),
            (RELOADER_SECRET_RELOAD, "s"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            reloader.listed,
            BTreeSet::from([
                ConfigRef::config_map("a"),
                ConfigRef::config_map("b"),
                ConfigRef::secret("s")
            ])
        );
        let secrets_only = reload_config(&annotations(&[(RELOADER_SECRET_AUTO, "true")]))
            .unwrap()
            .unwrap();
        assert!(secrets_only.auto_secrets && !secrets_only.auto_config_maps);
        assert_eq!(
            reload_config(&annotations(&[(RELOADER_AUTO, "false")])).unwrap(),
            None
        );
        assert_eq!(reload_config(&annotations(&[])).unwrap(), None);
        assert_eq!(
            reload_config(&annotations(&[(ANNOTATION_RELOAD, "false")])).unwrap(),
            None
        );
    }

    #[test]
    fn bad_values_name_the_annotation() {
        let err = |pairs: &[(&str, &str)]| reload_config(&annotations(pairs)).unwrap_err();
        assert!(err(&[(ANNOTATION_RELOAD, "pod/x")]).starts_with(ANNOTATION_RELOAD));
        assert!(err(&[(ANNOTATION_RELOAD, "configmap/Bad_Name")]).contains("not an object name"));
        assert!(err(&[(RELOADER_AUTO, "yes")]).starts_with(RELOADER_AUTO));
        assert!(err(&[(RELOADER_SECRET_RELOAD, "a b")]).starts_with(RELOADER_SECRET_RELOAD));
        assert!(
            err(&[
                (ANNOTATION_RELOAD, "auto"),
                (ANNOTATION_RELOAD_CONTAINERS, " ")
            ])
            .starts_with(ANNOTATION_RELOAD_CONTAINERS)
        );
    }

    #[test]
    fn each_container_uses_what_it_references_or_mounts() {
        let spec: PodSpec = serde_json::from_value(json!({
            "containers": [
                {"name": "app", "env": [
                    {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "a"}}},
                    {"name": "P", "valueFrom": {"secretKeyRef": {"name": "pw", "key": "p"}}},
                    {"name": "F", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "V", "value": "plain"}],
                 "envFrom": [{"configMapRef": {"name": "common"}}],
                 "volumeMounts": [{"name": "tls", "mountPath": "/tls"},
                                  {"name": "all", "mountPath": "/all"}]},
                {"name": "sidecar", "volumeMounts": [{"name": "scratch", "mountPath": "/s"}]},
            ],
            "initContainers": [
                {"name": "init", "envFrom": [{"secretRef": {"name": "setup"}}]},
                {"name": "proxy", "restartPolicy": "Always", "envFrom": [{"secretRef": {"name": "proxy"}}]},
            ],
            "volumes": [
                {"name": "tls", "secret": {"secretName": "tls"}},
                {"name": "scratch", "emptyDir": {}},
                {"name": "unused", "configMap": {"name": "nobody"}},
                {"name": "all", "projected": {"sources": [
                    {"configMap": {"name": "p-cm"}}, {"secret": {"name": "p-s"}},
                    {"downwardAPI": {"items": []}}]}},
            ],
        }))
        .unwrap();
        let uses = container_references(&spec);
        assert_eq!(
            uses["app"],
            BTreeSet::from([
                ConfigRef::config_map("app"),
                ConfigRef::config_map("common"),
                ConfigRef::config_map("p-cm"),
                ConfigRef::secret("pw"),
                ConfigRef::secret("tls"),
                ConfigRef::secret("p-s"),
            ])
        );
        assert!(uses["sidecar"].is_empty());
        assert_eq!(uses["proxy"], BTreeSet::from([ConfigRef::secret("proxy")]));
        assert!(!uses.contains_key("init"), "init containers run once");

        let auto = ReloadConfig {
            auto_config_maps: true,
            ..Default::default()
        };
        let watched = watched(&auto, &uses);
        assert!(watched.contains(&ConfigRef::config_map("app")));
        assert!(
            !watched.contains(&ConfigRef::secret("tls")),
            "configmaps only"
        );
        assert!(
            !watched.contains(&ConfigRef::config_map("nobody")),
            "mounted by no container"
        );

        let changed = BTreeSet::from([ConfigRef::secret("tls")]);
        assert_eq!(containers_to_restart(&auto, &uses, &changed), vec!["app"]);
        let changed = BTreeSet::from([ConfigRef::secret("elsewhere")]);
        assert!(containers_to_restart(&auto, &uses, &changed).is_empty());
        let all = ReloadConfig {
            containers: ReloadContainers::All,
            ..auto
        };
        let changed = BTreeSet::from([ConfigRef::secret("tls")]);
        assert!(containers_to_restart(&all, &uses, &changed).is_empty());
    }

    #[test]
    fn the_applied_annotation_reads_back() {
        let applied = BTreeMap::from([
            (ConfigRef::config_map("app"), "0123456789abcdef".to_string()),
            (ConfigRef::secret("tls"), "fedcba9876543210".to_string()),
        ]);
        let text = format_applied(&applied);
        assert_eq!(
            text,
            "configmap/app=0123456789abcdef,secret/tls=fedcba9876543210"
        );
        assert_eq!(parse_applied(&text), applied);
        assert_eq!(parse_applied("garbage,configmap/x=1").len(), 1);
        assert!(parse_applied("").is_empty());
    }
}
