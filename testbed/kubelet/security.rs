//! What the kubelet passes to the runtime from the pod's security settings and DNS policy: the
//! effective security context of a container (pod level overlaid by container level) as CRI's
//! `LinuxContainerSecurityContext`, and the pod's `resolv.conf` as CRI's `DnsConfig`.

use std::net::Ipv4Addr;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod, SeccompProfile};

use crate::network::CLUSTER_DOMAIN;

/// Paths the kubelet masks in every unprivileged container (`/proc` and `/sys` entries).
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// Paths the kubelet makes read-only in every unprivileged container.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The container's effective security context for CRI. `Err` is what the kubelet reports as
/// `CreateContainerConfigError` (a `runAsNonRoot` container that would run as root).
pub fn container_security(
    pod: &Pod,
    container: &Container,
) -> Result<cri::LinuxContainerSecurityContext, String> {
    let pod_ctx = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let ctx = container.security_context.as_ref();
    let run_as_user = ctx
        .and_then(|c| c.run_as_user)
        .or_else(|| pod_ctx.and_then(|p| p.run_as_user));
    let run_as_group = ctx
        .and_then(|c| c.run_as_group)
        .or_else(|| pod_ctx.and_then(|p| p.run_as_group));
    let run_as_non_root = ctx
        .and_then(|c| c.run_as_non_root)
        .or_else(|| pod_ctx.and_then(|p| p.run_as_non_root))
        .unwrap_or(false);
    if run_as_non_root {
        match run_as_user {
            Some(0) => {
                return Err(format!(
                    "container's runAsUser breaks non-root policy (pod: \"{}_{}({})\", container: {})",
                    pod.metadata.name.as_deref().unwrap_or_default(),
                    pod.metadata.namespace.as_deref().unwrap_or_default(),
                    pod.metadata.uid.as_deref().unwrap_or_default(),
                    container.name
                ));
            }
            Some(_) => {}
            // The test image has no USER: it runs as root.
            None => return Err("container has runAsNonRoot and image will run as root".into()),
        }
    }
    let privileged = ctx.and_then(|c| c.privileged).unwrap_or(false);
    let capabilities = ctx.and_then(|c| c.capabilities.as_ref());
    let seccomp = ctx
        .and_then(|c| c.seccomp_profile.as_ref())
        .or_else(|| pod_ctx.and_then(|p| p.seccomp_profile.as_ref()));
    let mut supplemental_groups: Vec<i64> = pod_ctx
        .and_then(|p| p.supplemental_groups.clone())
        .unwrap_or_default();
    if let Some(fs_group) = pod_ctx.and_then(|p| p.fs_group) {
        supplemental_groups.push(fs_group);
    }
    let paths = |list: &[&str]| -> Vec<String> {
        if privileged {
            Vec::new()
        } else {
            list.iter().map(|p| p.to_string()).collect()
        }
    };
    Ok(cri::LinuxContainerSecurityContext {
        capabilities: capabilities.map(|c| cri::Capability {
            add_capabilities: c.add.clone().unwrap_or_default(),
            drop_capabilities: c.drop.clone().unwrap_or_default(),
            ..Default::default()
        }),
        privileged,
        run_as_user: run_as_user.map(|value| cri::Int64Value { value }),
        run_as_group: run_as_group.map(|value| cri::Int64Value { value }),
        readonly_rootfs: ctx
            .and_then(|c| c.read_only_root_filesystem)
            .unwrap_or(false),
        supplemental_groups,
        no_new_privs: ctx.and_then(|c| c.allow_privilege_escalation) == Some(false),
        masked_paths: paths(MASKED_PATHS),
        readonly_paths: paths(READONLY_PATHS),
        seccomp: Some(seccomp_profile(seccomp)),
        ..Default::default()
    })
}

/// A pod's seccomp profile for CRI; none set is `Unconfined`, as the kubelet sends it while
/// `SeccompDefault` is off (its default).
fn seccomp_profile(profile: Option<&SeccompProfile>) -> cri::SecurityProfile {
    use cri::security_profile::ProfileType;
    match profile.map(|p| p.type_.as_str()) {
        Some("RuntimeDefault") => cri::SecurityProfile {
            profile_type: ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        },
        Some("Localhost") => cri::SecurityProfile {
            profile_type: ProfileType::Localhost as i32,
            localhost_ref: profile
                .and_then(|p| p.localhost_profile.clone())
                .unwrap_or_default(),
        },
        _ => cri::SecurityProfile {
            profile_type: ProfileType::Unconfined as i32,
            localhost_ref: String::new(),
        },
    }
}

/// The pod's DNS configuration for the sandbox, as the kubelet's `--cluster-dns` and
/// `--cluster-domain` make it; `None` leaves the runtime to copy the host's resolv.conf.
///
/// `ClusterFirst` (the default) uses cluster DNS, except for `hostNetwork` pods, which fall back
/// to `Default` (the host's) unless they ask for `ClusterFirstWithHostNet`; `None` uses only
/// `dnsConfig`. `dnsConfig` nameservers and searches are appended, its options override.
pub fn dns_config(pod: &Pod, cluster_dns: Option<Ipv4Addr>, host: &str) -> Option<cri::DnsConfig> {
    let spec = pod.spec.as_ref()?;
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let host_network = spec.host_network.unwrap_or(false);
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let cluster = match policy {
        "ClusterFirstWithHostNet" => cluster_dns.is_some(),
        "ClusterFirst" => cluster_dns.is_some() && !host_network,
        _ => false,
    };
    let mut config = if cluster {
        let dns = cluster_dns?;
        cri::DnsConfig {
            servers: vec![dns.to_string()],
            searches: vec![
                format!("{namespace}.svc.{CLUSTER_DOMAIN}"),
                format!("svc.{CLUSTER_DOMAIN}"),
                CLUSTER_DOMAIN.to_string(),
            ],
            options: vec!["ndots:5".to_string()],
        }
    } else if policy == "None" {
        cri::DnsConfig::default()
    } else {
        match &spec.dns_config {
            // The host's resolv.conf, merged with dnsConfig below.
            Some(_) => parse_resolv_conf(host),
            None => return None,
        }
    };
    if let Some(extra) = &spec.dns_config {
        for server in extra.nameservers.iter().flatten() {
            if !config.servers.contains(server) {
                config.servers.push(server.clone());
            }
        }
        for search in extra.searches.iter().flatten() {
            if !config.searches.contains(search) {
                config.searches.push(search.clone());
            }
        }
        for option in extra.options.iter().flatten() {
            let text = match &option.value {
                Some(value) => format!("{}:{value}", option.name.clone().unwrap_or_default()),
                None => option.name.clone().unwrap_or_default(),
            };
            let name = text.split(':').next().unwrap_or_default().to_string();
            config
                .options
                .retain(|o| o.split(':').next() != Some(name.as_str()));
            config.options.push(text);
        }
    }
    Some(config)
}

/// `nameserver`, `search` and `options` lines of a resolv.conf.
fn parse_resolv_conf(text: &str) -> cri::DnsConfig {
    let mut config = cri::DnsConfig::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => config.servers.extend(words.next().map(str::to_string)),
            Some("search") => config.searches = words.map(str::to_string).collect(),
            Some("options") => config.options = words.map(str::to_string).collect(),
            _ => {}
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "shop", "uid": "u"},
            "spec": spec}),
        )
        .unwrap()
    }

    #[test]
    fn container_settings_override_the_pods() {
        let p = pod(json!({
            "securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "runAsNonRoot": true,
                                "fsGroup": 2000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "app", "securityContext": {
                "runAsUser": 1001, "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}]}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let s = container_security(&p, c).unwrap();
        assert_eq!(s.run_as_user, Some(cri::Int64Value { value: 1001 }));
        assert_eq!(s.run_as_group, Some(cri::Int64Value { value: 3000 }));
        assert!(s.readonly_rootfs && s.no_new_privs && !s.privileged);
        assert_eq!(s.supplemental_groups, [2000]);
        let caps = s.capabilities.unwrap();
        assert_eq!(caps.drop_capabilities, ["ALL"]);
        assert_eq!(caps.add_capabilities, ["NET_BIND_SERVICE"]);
        assert_eq!(
            s.seccomp.unwrap().profile_type,
            cri::security_profile::ProfileType::RuntimeDefault as i32
        );
        assert!(s.masked_paths.contains(&"/proc/kcore".to_string()));
    }

    #[test]
    fn run_as_non_root_refuses_root() {
        let p = pod(json!({"securityContext": {"runAsNonRoot": true},
            "containers": [{"name": "app"}]}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            container_security(&p, c).unwrap_err(),
            "container has runAsNonRoot and image will run as root"
        );
        let p = pod(json!({"containers": [{"name": "app",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 0}}]}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert!(
            container_security(&p, c)
                .unwrap_err()
                .contains("breaks non-root policy")
        );
        let p =
            pod(json!({"containers": [{"name": "app", "securityContext": {"privileged": true}}]}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let s = container_security(&p, c).unwrap();
        assert!(s.privileged && s.masked_paths.is_empty());
        assert_eq!(
            s.seccomp.unwrap().profile_type,
            cri::security_profile::ProfileType::Unconfined as i32
        );
    }

    #[test]
    fn dns_follows_the_policy_and_merges_dns_config() {
        let dns = Some(Ipv4Addr::new(127, 100, 7, 10));
        let host = "nameserver 10.0.0.2\nsearch example.org\noptions edns0\n";
        let cluster = dns_config(&pod(json!({"containers": []})), dns, host).unwrap();
        assert_eq!(cluster.servers, ["127.100.7.10"]);
        assert_eq!(
            cluster.searches,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(cluster.options, ["ndots:5"]);
        assert_eq!(
            dns_config(&pod(json!({"hostNetwork": true})), dns, host),
            None,
            "host network falls back to the host's"
        );
        let with_host_net = dns_config(
            &pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"})),
            dns,
            host,
        )
        .unwrap();
        assert_eq!(with_host_net.servers, ["127.100.7.10"]);
        let merged = dns_config(
            &pod(
                json!({"dnsConfig": {"nameservers": ["127.0.0.53"], "searches": ["x.local"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}),
            ),
            dns,
            host,
        )
        .unwrap();
        assert_eq!(merged.servers, ["127.100.7.10", "127.0.0.53"]);
        assert_eq!(merged.searches.last().unwrap(), "x.local");
        assert_eq!(merged.options, ["ndots:2", "edns0"]);
        let none = dns_config(
            &pod(json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["127.0.0.9"]}})),
            dns,
            host,
        )
        .unwrap();
        assert_eq!(none.servers, ["127.0.0.9"]);
        assert!(none.searches.is_empty());
        let default = dns_config(
            &pod(json!({"dnsPolicy": "Default", "dnsConfig": {"searches": ["y.local"]}})),
            dns,
            host,
        )
        .unwrap();
        assert_eq!(default.servers, ["10.0.0.2"]);
        assert_eq!(default.searches, ["example.org", "y.local"]);
        assert_eq!(
            dns_config(&pod(json!({})), None, host),
            None,
            "no cluster DNS configured"
        );
    }
}
