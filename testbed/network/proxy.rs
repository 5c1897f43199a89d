//! kube-proxy in userspace: a listener on every Service's `ClusterIP:port` (TCP) that hands each
//! connection to an endpoint picked at random from the Service's EndpointSlices, as the
//! iptables mode does. Ready endpoints are used; when there are none, serving terminating ones
//! (KEP-1669); when there are none either, the connection is reset, as kube-proxy's REJECT rule
//! refuses it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use super::ServiceRange;
use crate::controllers::endpointslice::SERVICE_NAME_LABEL;

/// One port of one Service: what a listener forwards for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServicePortRef {
    pub namespace: String,
    pub service: String,
    /// The port's name (empty for a Service's single unnamed port), as slices name it.
    pub port_name: String,
}

/// The `ClusterIP:port` addresses to listen on, for the TCP ports of every Service with a
/// ClusterIP in `range`.
pub fn proxied_ports<'a>(
    services: impl Iterator<Item = &'a Service>,
    range: &ServiceRange,
) -> HashMap<SocketAddrV4, ServicePortRef> {
    let mut listeners = HashMap::new();
    for service in services {
        let Some(spec) = service.spec.as_ref() else {
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
            .filter(|ip| range.contains(*ip))
        else {
            continue;
        };
        for port in spec.ports.iter().flatten() {
            if port.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                continue;
            }
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            listeners.insert(
                SocketAddrV4::new(ip, number),
                ServicePortRef {
                    namespace: service.namespace().unwrap_or_default(),
                    service: service.name_any(),
                    port_name: port.name.clone().unwrap_or_default(),
                },
            );
        }
    }
    listeners
}

/// Where a new connection for `port` goes: the `pick`th (modulo their number) of the ready
/// endpoints, else of the serving terminating ones; `None` if there is neither.
pub fn pick_endpoint<'a>(
    slices: impl Iterator<Item = &'a EndpointSlice>,
    port: &ServicePortRef,
    pick: usize,
) -> Option<SocketAddrV4> {
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    for slice in slices {
        if slice.namespace().as_deref() != Some(port.namespace.as_str())
            || slice.labels().get(SERVICE_NAME_LABEL) != Some(&port.service)
        {
            continue;
        }
        let Some(number) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or_default() == port.port_name
                    && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
            })
            .and_then(|p| u16::try_from(p.port?).ok())
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let Some(ip) = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let conditions = endpoint.conditions.clone().unwrap_or_default();
            // Unset conditions mean ready and serving, as the API documents.
            if conditions.ready.unwrap_or(true) {
                ready.push(SocketAddrV4::new(ip, number));
            } else if conditions.serving.unwrap_or(true) && conditions.terminating == Some(true) {
                terminating.push(SocketAddrV4::new(ip, number));
            }
        }
    }
    let candidates = if ready.is_empty() { terminating } else { ready };
    (!candidates.is_empty()).then(|| candidates[pick % candidates.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services() -> Vec<Service> {
        serde_json::from_value(serde_json::json!([
            {"metadata": {"name": "web", "namespace": "default"},
             "spec": {"clusterIP": "127.100.1.20", "ports": [
                {"name": "http", "port": 80, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"}]}},
            {"metadata": {"name": "db", "namespace": "default"},
             "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}},
            {"metadata": {"name": "elsewhere", "namespace": "default"},
             "spec": {"clusterIP": "127.100.2.20", "ports": [{"port": 80}]}},
        ]))
        .unwrap()
    }

    #[test]
    fn listens_on_tcp_ports_of_services_with_a_cluster_ip_in_range() {
        let ports = proxied_ports(services().iter(), &ServiceRange::block(1));
        assert_eq!(ports.len(), 1);
        assert_eq!(
            ports[&"127.100.1.20:80".parse().unwrap()],
            ServicePortRef {
                namespace: "default".into(),
                service: "web".into(),
                port_name: "http".into()
            }
        );
    }

    fn slice(endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-x", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    #[test]
    fn connections_go_to_ready_endpoints_else_serving_terminating_ones_else_nowhere() {
        let web = ServicePortRef {
            namespace: "default".into(),
            service: "web".into(),
            port_name: "http".into(),
        };
        let mixed = slice(serde_json::json!([
            {"addresses": ["127.0.0.2"], "conditions": {"ready": false, "serving": false, "terminating": false}},
            {"addresses": ["127.0.0.3"], "conditions": {"ready": true}},
            {"addresses": ["127.0.0.4"], "conditions": {"ready": false, "serving": true, "terminating": true}},
        ]));
        for pick in 0..4 {
            assert_eq!(
                pick_endpoint([&mixed].into_iter(), &web, pick),
                Some("127.0.0.3:8080".parse().unwrap())
            );
        }
        let draining = slice(serde_json::json!([
            {"addresses": ["127.0.0.4"], "conditions": {"ready": false, "serving": true, "terminating": true}},
        ]));
        assert_eq!(
            pick_endpoint([&draining].into_iter(), &web, 1),
            Some("127.0.0.4:8080".parse().unwrap())
        );
        let down = slice(serde_json::json!([
            {"addresses": ["127.0.0.2"], "conditions": {"ready": false, "serving": false, "terminating": false}},
        ]));
        assert_eq!(pick_endpoint([&down].into_iter(), &web, 0), None);
        let other_port = ServicePortRef {
            port_name: "metrics".into(),
            ..web.clone()
        };
        assert_eq!(pick_endpoint([&mixed].into_iter(), &other_port, 0), None);
    }
}
