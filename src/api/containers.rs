//! Which containers of a pod can be recreated in place: its regular containers and its native
//! sidecars (init containers with `restartPolicy: Always`). A plain init container runs to
//! completion and the kubelet never starts it again, so stopping it would not bring it back.

use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Whether init container `container` is a native sidecar: the kubelet restarts it like a
/// regular container, whatever the pod's `restartPolicy` is.
pub fn is_native_sidecar(container: &Container) -> bool {
    container.restart_policy.as_deref() == Some("Always")
}

/// A pod's `restartPolicy`: whether the kubelet starts a regular container again once it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Always started again (the default, and every workload's pods).
    Always,
    /// Started again only after a non-zero exit: a graceful exit 0 would end it for good.
    OnFailure,
    /// Never started again.
    Never,
}

impl RestartPolicy {
    /// The policy of `spec`; unset (and unknown values, which the API server refuses) is
    /// `Always`.
    pub fn of(spec: &PodSpec) -> Self {
        match spec.restart_policy.as_deref() {
            Some("Never") => RestartPolicy::Never,
            Some("OnFailure") => RestartPolicy::OnFailure,
            _ => RestartPolicy::Always,
        }
    }
}

/// A container that can be recreated, and what kind of container it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Recreatable<'a> {
    /// A regular container: it comes back only under the pod's `restartPolicy: Always`.
    Regular(&'a Container),
    /// A native sidecar: it always comes back.
    Sidecar(&'a Container),
}

impl<'a> Recreatable<'a> {
    /// The container's spec.
    pub fn container(self) -> &'a Container {
        match self {
            Recreatable::Regular(c) | Recreatable::Sidecar(c) => c,
        }
    }
}

/// The containers of one pod that can be recreated in place.
#[derive(Debug, Clone, Copy)]
pub struct RecreatableContainers<'a> {
    spec: &'a PodSpec,
}

impl<'a> RecreatableContainers<'a> {
    /// The recreatable containers of the pod with `spec`.
    pub fn of(spec: &'a PodSpec) -> Self {
        Self { spec }
    }

    /// Every recreatable container: the regular ones, then the native sidecars, each in pod
    /// order.
    pub fn iter(self) -> impl Iterator<Item = Recreatable<'a>> {
        let sidecars = self
            .spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| is_native_sidecar(c))
            .map(Recreatable::Sidecar);
        self.spec
            .containers
            .iter()
            .map(Recreatable::Regular)
            .chain(sidecars)
    }

    /// The names of every recreatable container, as [`Self::iter`] orders them.
    pub fn names(self) -> Vec<&'a str> {
        self.iter().map(|c| c.container().name.as_str()).collect()
    }

    /// What is recreated when no container is named: the regular containers (sidecars only
    /// when named).
    pub fn default_names(self) -> Vec<&'a str> {
        self.spec
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect()
    }

    /// The recreatable container `name`, if there is one.
    pub fn get(self, name: &str) -> Option<Recreatable<'a>> {
        self.iter().find(|c| c.container().name == name)
    }

    /// Whether container `name` can be recreated.
    pub fn contains(self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Whether `name` is an init container that runs to completion (not a sidecar).
    pub fn is_plain_init_container(self, name: &str) -> bool {
        self.spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == name && !is_native_sidecar(c))
    }

    /// The restart policy that decides whether recreatable container `name` comes back after
    /// the stop: the pod's for a regular container, `Always` for a native sidecar.
    pub fn restart_policy(self, name: &str) -> RestartPolicy {
        match self.get(name) {
            Some(Recreatable::Regular(_)) => RestartPolicy::of(self.spec),
            Some(Recreatable::Sidecar(_)) | None => RestartPolicy::Always,
        }
    }
}

/// The port a handler of a container means: a number, or a name looked up in the container's
/// ports, as the kubelet resolves them.
pub fn resolve_port(port: &IntOrString, ports: &[ContainerPort]) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok().filter(|p| *p > 0),
        IntOrString::String(name) => match name.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            Ok(_) => None,
            Err(_) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(policy: Option<&str>) -> PodSpec {
        serde_json::from_value(json!({
            "restartPolicy": policy,
            "containers": [{"name": "db"}, {"name": "exporter"}],
            "initContainers": [
                {"name": "setup"},
                {"name": "proxy", "restartPolicy": "Always"},
            ],
        }))
        .unwrap()
    }

    #[test]
    fn regular_containers_and_native_sidecars_can_be_recreated_but_not_plain_init_containers() {
        let spec = spec(None);
        let recreatable = RecreatableContainers::of(&spec);
        assert_eq!(recreatable.names(), ["db", "exporter", "proxy"]);
        assert!(recreatable.contains("proxy"));
        assert!(!recreatable.contains("setup"));
        assert!(recreatable.is_plain_init_container("setup"));
        assert!(!recreatable.is_plain_init_container("proxy"));
        assert!(!recreatable.contains("nope") && !recreatable.is_plain_init_container("nope"));
    }

    #[test]
    fn only_regular_containers_are_recreated_by_default() {
        let spec = spec(None);
        assert_eq!(
            RecreatableContainers::of(&spec).default_names(),
            ["db", "exporter"]
        );
    }

    #[test]
    fn regular_containers_follow_the_pod_restart_policy_and_sidecars_always_come_back() {
        for (policy, expected) in [
            (None, RestartPolicy::Always),
            (Some("Always"), RestartPolicy::Always),
            (Some("OnFailure"), RestartPolicy::OnFailure),
            (Some("Never"), RestartPolicy::Never),
        ] {
            let spec = spec(policy);
            let recreatable = RecreatableContainers::of(&spec);
            assert_eq!(recreatable.restart_policy("db"), expected, "{policy:?}");
            assert_eq!(
                recreatable.restart_policy("proxy"),
                RestartPolicy::Always,
                "{policy:?}"
            );
        }
    }

    #[test]
    fn ports_are_numbers_or_names_of_the_containers_ports() {
        let ports: Vec<ContainerPort> =
            serde_json::from_value(json!([{"name": "admin", "containerPort": 8123}])).unwrap();
        assert_eq!(resolve_port(&IntOrString::Int(80), &ports), Some(80));
        assert_eq!(
            resolve_port(&IntOrString::String("81".into()), &ports),
            Some(81)
        );
        assert_eq!(
            resolve_port(&IntOrString::String("admin".into()), &ports),
            Some(8123)
        );
        for bad in [
            IntOrString::Int(0),
            IntOrString::Int(70000),
            IntOrString::String("0".into()),
            IntOrString::String("nope".into()),
        ] {
            assert_eq!(resolve_port(&bad, &ports), None, "{bad:?}");
        }
    }
}
