//! What the kubelet resolves from the pod and the API for a container: downward-API fields
//! (`fieldRef`, `resourceFieldRef`), `env[].valueFrom` and `envFrom` from ConfigMaps and Secrets.
//! Pure functions over the pod and a lookup of ConfigMaps and Secrets.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ObjectFieldSelector, Pod, ResourceFieldSelector, Secret, Service,
};

/// Where the kubelet finds ConfigMaps, Secrets and Services (its watch caches).
pub trait Objects {
    fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap>;
    fn secret(&self, namespace: &str, name: &str) -> Option<Secret>;
    /// The Services whose variables a pod in `namespace` gets: the `kubernetes` Service of
    /// `default` always, the namespace's own with `enableServiceLinks`.
    fn services(&self, _namespace: &str, _links: bool) -> Vec<Service> {
        Vec::new()
    }
}

/// The Docker-link-style variables of Services with a ClusterIP, as the kubelet sets them
/// (`<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT`, `<NAME>_SERVICE_PORT_<PORT NAME>`,
/// `<NAME>_PORT`, `<NAME>_PORT_<port>_<PROTO>` and its `_PROTO`, `_PORT`, `_ADDR`).
pub fn service_env(services: &[Service]) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for service in services {
        let Some(spec) = &service.spec else { continue };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
        else {
            continue;
        };
        let name = service
            .metadata
            .name
            .clone()
            .unwrap_or_default()
            .to_uppercase()
            .replace('-', "_");
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        env.push((format!("{name}_SERVICE_HOST"), ip.to_string()));
        env.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for port in ports {
            if let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) {
                env.push((
                    format!(
                        "{name}_SERVICE_PORT_{}",
                        port_name.to_uppercase().replace('-', "_")
                    ),
                    port.port.to_string(),
                ));
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.clone().unwrap_or_else(|| "TCP".into())
        };
        env.push((
            format!("{name}_PORT"),
            format!("{}://{ip}:{}", proto(first).to_lowercase(), first.port),
        ));
        for port in ports {
            let upper = proto(port).to_uppercase();
            let prefix = format!("{name}_PORT_{}_{upper}", port.port);
            env.push((
                prefix.clone(),
                format!("{}://{ip}:{}", upper.to_lowercase(), port.port),
            ));
            env.push((format!("{prefix}_PROTO"), upper.to_lowercase()));
            env.push((format!("{prefix}_PORT"), port.port.to_string()));
            env.push((format!("{prefix}_ADDR"), ip.to_string()));
        }
    }
    env
}

/// The node's allocatable resources: what `limits.*` resolve to when a container sets none.
pub const NODE_CPU: &str = "2";
pub const NODE_MEMORY: &str = "4Gi";
pub const NODE_EPHEMERAL_STORAGE: &str = "10Gi";

/// The value of a downward-API `fieldRef` for `pod` on a node with IP `node_ip` (host network:
/// podIP = hostIP = node IP). Labels and annotations print as the kubelet prints them:
/// `key="value"` lines, sorted.
pub fn field_value(
    pod: &Pod,
    node_ip: Ipv4Addr,
    field: &ObjectFieldSelector,
) -> Result<String, String> {
    let meta = &pod.metadata;
    let path = field.field_path.as_str();
    let pairs = |map: Option<&BTreeMap<String, String>>| -> String {
        map.into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let subscript = |prefix: &str| -> Option<String> {
        path.strip_prefix(prefix)?
            .strip_suffix("']")
            .map(str::to_string)
    };
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => pairs(meta.labels.as_ref()),
        "metadata.annotations" => pairs(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.podIP" | "status.hostIPs" | "status.podIPs" => {
            node_ip.to_string()
        }
        _ => {
            if let Some(key) = subscript("metadata.labels['") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&key))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(key) = subscript("metadata.annotations['") {
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(&key))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldPath: {path}"));
            }
        }
    })
}

/// The value of a `resourceFieldRef` of `container` (requests default to limits, limits to the
/// node's allocatable), divided by the divisor and rounded up, as the kubelet does.
pub fn resource_value(
    container: &Container,
    field: &ResourceFieldSelector,
) -> Result<String, String> {
    let resources = container.resources.as_ref();
    let get = |requests: bool, name: &str| -> Option<String> {
        let map = if requests {
            resources.and_then(|r| r.requests.as_ref())
        } else {
            resources.and_then(|r| r.limits.as_ref())
        };
        map.and_then(|m| m.get(name)).map(|q| q.0.clone())
    };
    let node = |name: &str| match name {
        "cpu" => NODE_CPU,
        "memory" => NODE_MEMORY,
        _ => NODE_EPHEMERAL_STORAGE,
    };
    let (requests, name) = match field.resource.split_once('.') {
        Some(("limits", name)) => (false, name),
        Some(("requests", name)) => (true, name),
        _ => return Err(format!("unsupported resource: {}", field.resource)),
    };
    if !matches!(name, "cpu" | "memory" | "ephemeral-storage") {
        return Err(format!("unsupported resource: {}", field.resource));
    }
    let quantity = if requests {
        get(true, name).or_else(|| get(false, name))
    } else {
        get(false, name)
    };
    let quantity = match quantity {
        Some(q) => q,
        // An unset request is zero; an unset limit is the node's allocatable.
        None if requests => "0".to_string(),
        None => node(name).to_string(),
    };
    let default_divisor = "1".to_string();
    let divisor = field
        .divisor
        .as_ref()
        .map(|d| d.0.clone())
        .unwrap_or(default_divisor);
    let value = parse_quantity(&quantity)?;
    let divisor = parse_quantity(&divisor)?;
    if divisor <= 0 {
        return Err(format!("invalid divisor {divisor}"));
    }
    // Ceiling of value / divisor, in milli-units.
    let result = value.saturating_add(divisor - 1) / divisor;
    Ok(result.max(if value > 0 { 1 } else { 0 }).to_string())
}

/// A Kubernetes quantity in thousandths (so `100m` CPU is 100 and `1Ki` is 1,024,000).
pub fn parse_quantity(text: &str) -> Result<i128, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let factor: i128 = match suffix {
        "" => 1000,
        "m" => 1,
        "k" => 1000 * 1000,
        "M" => 1000 * 1_000_000,
        "G" => 1000 * 1_000_000_000,
        "T" => 1000 * 1_000_000_000_000,
        "Ki" => 1000 * 1024,
        "Mi" => 1000 * 1024 * 1024,
        "Gi" => 1000 * 1024 * 1024 * 1024,
        "Ti" => 1000 * 1024 * 1024 * 1024 * 1024,
        _ => return Err(format!("unsupported quantity {text:?}")),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let whole: i128 = if whole.is_empty() {
        0
    } else {
        whole
            .parse()
            .map_err(|_| format!("bad quantity {text:?}"))?
    };
    let mut value = whole.saturating_mul(factor);
    let mut scale = factor;
    for digit in fraction.chars() {
        let d = digit
            .to_digit(10)
            .ok_or_else(|| format!("bad quantity {text:?}"))?;
        scale /= 10;
        value = value.saturating_add(i128::from(d).saturating_mul(scale));
    }
    Ok(value)
}

/// A ConfigMap's entries (data and binaryData) as bytes.
pub fn config_map_entries(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut entries: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.iter().flatten() {
        entries.insert(k.clone(), v.0.clone());
    }
    entries
}

/// A Secret's entries as bytes.
pub fn secret_entries(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut entries: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    // Never stored by the API server, but a client-side object may still carry it.
    for (k, v) in secret.string_data.iter().flatten() {
        entries.insert(k.clone(), v.clone().into_bytes());
    }
    entries
}

/// `$(VAR)` references in `values` replaced from `env` as the kubelet's `expansion.Expand`
/// does for command and args: a defined name gives its value, an undefined one stays as
/// written, `$$` is an escaped `$`, and any other `$` is kept.
pub fn expand_all(values: &[String], env: &[(String, String)]) -> Vec<String> {
    values.iter().map(|v| expand(v, env)).collect()
}

fn expand(input: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(n, _)| n == name) {
                Some((_, value)) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment as the kubelet builds it when it creates the container:
/// `envFrom` sources in order, then `env` (later names win), with `valueFrom` resolved now.
/// An error is what the kubelet reports as `CreateContainerConfigError`.
pub fn container_env(
    pod: &Pod,
    container: &Container,
    node_ip: Ipv4Addr,
    objects: &dyn Objects,
) -> Result<Vec<(String, String)>, String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    // Service variables come first, so the container's own env overrides them.
    let mut env: Vec<(String, String)> = service_env(&objects.services(namespace, links));
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| match env
        .iter_mut()
        .find(|(n, _)| *n == name)
    {
        Some(slot) => slot.1 = value,
        None => env.push((name, value)),
    };
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let entries = if let Some(source) = &from.config_map_ref {
            match objects.config_map(namespace, &source.name) {
                Some(cm) => config_map_entries(&cm),
                None if source.optional == Some(true) => continue,
                None => return Err(format!("configmap \"{}\" not found", source.name)),
            }
        } else if let Some(source) = &from.secret_ref {
            match objects.secret(namespace, &source.name) {
                Some(secret) => secret_entries(&secret),
                None if source.optional == Some(true) => continue,
                None => return Err(format!("secret \"{}\" not found", source.name)),
            }
        } else {
            continue;
        };
        for (key, value) in entries {
            let name = format!("{prefix}{key}");
            // Names with '=' cannot be environment variables; the kubelet skips them.
            if !name.is_empty() && !name.contains('=') {
                set(&mut env, name, text(value));
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                if let Some(field) = &from.field_ref {
                    field_value(pod, node_ip, field)?
                } else if let Some(field) = &from.resource_field_ref {
                    let target = match field.container_name.as_deref().filter(|n| !n.is_empty()) {
                        Some(name) => find_container(pod, name)
                            .ok_or_else(|| format!("container {name} not found"))?,
                        None => container,
                    };
                    resource_value(target, field)?
                } else if let Some(key) = &from.config_map_key_ref {
                    let found = objects
                        .config_map(namespace, &key.name)
                        .map(|cm| config_map_entries(&cm).remove(&key.key));
                    match found {
                        Some(Some(value)) => text(value),
                        _ if key.optional == Some(true) => continue,
                        Some(None) => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {namespace}/{}",
                                key.key, key.name
                            ));
                        }
                        None => return Err(format!("configmap \"{}\" not found", key.name)),
                    }
                } else if let Some(key) = &from.secret_key_ref {
                    let found = objects
                        .secret(namespace, &key.name)
                        .map(|s| secret_entries(&s).remove(&key.key));
                    match found {
                        Some(Some(value)) => text(value),
                        _ if key.optional == Some(true) => continue,
                        Some(None) => {
                            return Err(format!(
                                "couldn't find key {} in Secret {namespace}/{}",
                                key.key, key.name
                            ));
                        }
                        None => return Err(format!("secret \"{}\" not found", key.name)),
                    }
                } else {
                    continue;
                }
            }
            (Some(value), None) => value.clone(),
            (None, None) => String::new(),
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Fake {
        config_maps: HashMap<String, ConfigMap>,
        secrets: HashMap<String, Secret>,
    }

    impl Objects for Fake {
        fn config_map(&self, _: &str, name: &str) -> Option<ConfigMap> {
            self.config_maps.get(name).cloned()
        }
        fn secret(&self, _: &str, name: &str) -> Option<Secret> {
            self.secrets.get(name).cloned()
        }
    }

    fn fake() -> Fake {
        let mut f = Fake::default();
        f.config_maps.insert(
            "cfg".into(),
            serde_json::from_value(json!({"data": {"mode": "fast", "level": "3", "bad=key": "x"}}))
                .unwrap(),
        );
        f.secrets.insert(
            "pw".into(),
            serde_json::from_value(json!({"data": {"password": "czNjcjN0"}})).unwrap(),
        );
        f
    }

    fn pod(container: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "db-0", "namespace": "shop", "uid": "u1",
                         "labels": {"app": "db", "tier": "data"}},
            "spec": {"nodeName": "node-1", "serviceAccountName": "db", "containers": [container]},
        }))
        .unwrap()
    }

    #[test]
    fn env_resolves_every_source_with_later_names_winning() {
        let p = pod(json!({"name": "db",
        "resources": {"limits": {"memory": "256Mi"}, "requests": {"cpu": "250m"}},
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"},
                    {"secretRef": {"name": "missing", "optional": true}}],
        "env": [
            {"name": "CFG_mode", "value": "slow"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
            {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "level"}}},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "pw", "key": "password"}}},
            {"name": "GONE", "valueFrom": {"secretKeyRef": {"name": "pw", "key": "nope", "optional": true}}},
        ]}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let env = container_env(&p, c, Ipv4Addr::new(127, 0, 0, 2), &fake()).unwrap();
        let get = |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("CFG_mode"), Some("slow"));
        assert_eq!(get("CFG_level"), Some("3"));
        assert_eq!(get("CFG_bad=key"), None);
        assert_eq!(get("POD"), Some("db-0"));
        assert_eq!(get("NODE"), Some("node-1"));
        assert_eq!(get("IP"), Some("127.0.0.2"));
        assert_eq!(get("APP"), Some("db"));
        assert_eq!(get("MEM"), Some("256"));
        assert_eq!(get("CPU"), Some("250"));
        assert_eq!(get("CPUS"), Some("2"), "no limit: the node's allocatable");
        assert_eq!(get("LEVEL"), Some("3"));
        assert_eq!(get("PW"), Some("s3cr3t"));
        assert_eq!(get("GONE"), None);
        assert_eq!(env[0].0, "CFG_level", "envFrom first, in key order");
    }

    #[test]
    fn missing_sources_are_config_errors_unless_optional() {
        let p = pod(json!({"name": "db", "env": [
            {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}]}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let err = container_env(&p, c, Ipv4Addr::LOCALHOST, &fake()).unwrap_err();
        assert_eq!(err, "configmap \"nope\" not found");
        let p = pod(json!({"name": "db", "env": [
            {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}]}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let err = container_env(&p, c, Ipv4Addr::LOCALHOST, &fake()).unwrap_err();
        assert_eq!(err, "couldn't find key k in ConfigMap shop/cfg");
        let p = pod(json!({"name": "db", "envFrom": [{"secretRef": {"name": "nope"}}]}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let err = container_env(&p, c, Ipv4Addr::LOCALHOST, &fake()).unwrap_err();
        assert_eq!(err, "secret \"nope\" not found");
    }

    #[test]
    fn services_become_link_variables() {
        let kubernetes: Service = serde_json::from_value(json!({
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "spec": {"clusterIP": "127.100.3.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]},
        }))
        .unwrap();
        let headless: Service = serde_json::from_value(json!({
            "metadata": {"name": "db-peers"}, "spec": {"clusterIP": "None", "ports": [{"port": 5432}]},
        }))
        .unwrap();
        let env = service_env(&[kubernetes, headless]);
        let get = |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("127.100.3.1"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("443"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(get("KUBERNETES_PORT"), Some("tcp://127.100.3.1:443"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP_ADDR"), Some("127.100.3.1"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP_PROTO"), Some("tcp"));
        assert!(env.iter().all(|(k, _)| !k.starts_with("DB_PEERS")));
    }

    #[test]
    fn labels_print_sorted_as_key_quoted_value_lines() {
        let p = pod(json!({"name": "db"}));
        let field = ObjectFieldSelector {
            field_path: "metadata.labels".into(),
            ..Default::default()
        };
        assert_eq!(
            field_value(&p, Ipv4Addr::LOCALHOST, &field).unwrap(),
            "app=\"db\"\ntier=\"data\""
        );
    }

    #[test]
    fn quantities_parse_in_thousandths() {
        assert_eq!(parse_quantity("250m").unwrap(), 250);
        assert_eq!(parse_quantity("2").unwrap(), 2000);
        assert_eq!(parse_quantity("1.5").unwrap(), 1500);
        assert_eq!(parse_quantity("1Ki").unwrap(), 1_024_000);
        assert_eq!(parse_quantity("1M").unwrap(), 1_000_000_000);
        assert!(parse_quantity("1Q").is_err());
    }

    #[test]
    fn command_and_args_expand_variables_as_the_kubelet_does() {
        let env = vec![
            ("POD_NAMESPACE".to_string(), "relaunch-system".to_string()),
            ("POD_IP".to_string(), "127.0.0.2".to_string()),
        ];
        let args = vec![
            "--url=https://svc.$(POD_NAMESPACE).svc:8443".to_string(),
            "--listen=$(POD_IP):9090".to_string(),
            "$(UNDEFINED) $$(POD_IP) $5 $(".to_string(),
        ];
        assert_eq!(
            expand_all(&args, &env),
            vec![
                "--url=https://svc.relaunch-system.svc:8443",
                "--listen=127.0.0.2:9090",
                "$(UNDEFINED) $(POD_IP) $5 $(",
            ]
        );
    }
}
