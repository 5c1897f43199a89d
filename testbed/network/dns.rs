//! Cluster DNS as CoreDNS's `kubernetes` plugin answers it, for A records:
//! `<svc>.<ns>.svc.cluster.local` is the ClusterIP, or for a headless Service the addresses of
//! its ready endpoints; `<hostname>.<svc>.<ns>.svc.cluster.local` the endpoint with that hostname
//! (StatefulSet pods). The same names without `.cluster.local` are answered too, so that host
//! processes without the pods' search list can resolve `<svc>.<ns>.svc`. Other names inside
//! the cluster domain are NXDOMAIN; names outside it are REFUSED (nothing is forwarded).
//!
//! The wire format is hickory-proto's; this file only decides the answer.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use crate::controllers::endpointslice::SERVICE_NAME_LABEL;

/// The cluster domain, the kubelet's `--cluster-domain` default.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// CoreDNS's TTL for Service records.
const TTL: u32 = 5;
/// The most a UDP answer may be without EDNS (RFC 1035).
const UDP_LIMIT: usize = 512;

/// The names the cluster answers, relative to `svc.<cluster domain>` (`web.default`,
/// `web-0.web.default`), with their addresses.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Zone {
    names: HashMap<String, Vec<Ipv4Addr>>,
}

impl Zone {
    /// The zone of these Services and EndpointSlices.
    pub fn new<'a>(
        services: impl Iterator<Item = &'a Service>,
        slices: impl Iterator<Item = &'a EndpointSlice> + Clone,
    ) -> Self {
        let mut names: HashMap<String, Vec<Ipv4Addr>> = HashMap::new();
        for service in services {
            let Some(spec) = service.spec.as_ref() else {
                continue;
            };
            if spec.type_.as_deref() == Some("ExternalName") {
                continue;
            }
            let namespace = service.namespace().unwrap_or_default();
            let name = format!("{}.{namespace}", service.name_any()).to_lowercase();
            match spec.cluster_ip.as_deref() {
                Some("None") => {
                    let mut addresses = Vec::new();
                    for slice in slices.clone().filter(|s| {
                        s.namespace().as_deref() == Some(namespace.as_str())
                            && s.labels().get(SERVICE_NAME_LABEL) == Some(&service.name_any())
                    }) {
                        for endpoint in &slice.endpoints {
                            let ready = endpoint
                                .conditions
                                .as_ref()
                                .and_then(|c| c.ready)
                                .unwrap_or(true);
                            let Some(ip) = endpoint.addresses.first().and_then(|a| a.parse().ok())
                            else {
                                continue;
                            };
                            if !ready {
                                continue;
                            }
                            addresses.push(ip);
                            if let Some(host) = &endpoint.hostname {
                                names
                                    .entry(format!("{host}.{name}").to_lowercase())
                                    .or_default()
                                    .push(ip);
                            }
                        }
                    }
                    addresses.sort();
                    addresses.dedup();
                    names.entry(name).or_default().extend(addresses);
                }
                Some(ip) => {
                    if let Ok(ip) = ip.parse() {
                        names.insert(name, vec![ip]);
                    }
                }
                None => {}
            }
        }
        Self { names }
    }

    /// What `name` (any case, with or without the final dot) is: `None` outside the cluster's
    /// names, else its addresses (empty: a known name with none, or an unknown one — see
    /// [`Lookup`]).
    fn lookup(&self, name: &str) -> Lookup<'_> {
        let name = name.trim_end_matches('.').to_lowercase();
        let relative = name
            .strip_suffix(&format!(".svc.{CLUSTER_DOMAIN}"))
            .or_else(|| name.strip_suffix(".svc"));
        match relative {
            Some(relative) => match self.names.get(relative) {
                Some(addresses) => Lookup::Found(addresses),
                None => Lookup::NoSuchName,
            },
            None if name == CLUSTER_DOMAIN || name.ends_with(&format!(".{CLUSTER_DOMAIN}")) => {
                Lookup::NoSuchName
            }
            None => Lookup::NotOurs,
        }
    }
}

enum Lookup<'z> {
    Found(&'z [Ipv4Addr]),
    NoSuchName,
    NotOurs,
}

/// The answer to the DNS message `request` (`None` for something that is not a query, which is
/// dropped, as servers do). `udp` caps the answer at what the client can take and sets TC.
pub fn answer(request: &[u8], zone: &Zone, udp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(request).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    if let Some(edns) = &request.edns {
        let mut ours = Edns::new();
        ours.set_max_payload(edns.max_payload().max(UDP_LIMIT as u16));
        response.edns = Some(ours);
    }
    let limit = match &request.edns {
        Some(edns) if udp => usize::from(edns.max_payload()).max(UDP_LIMIT),
        _ if udp => UDP_LIMIT,
        _ => usize::from(u16::MAX),
    };
    response.metadata.response_code = if request.metadata.op_code != OpCode::Query {
        ResponseCode::NotImp
    } else if request.queries.len() != 1 {
        ResponseCode::FormErr
    } else {
        let query = &request.queries[0];
        response.add_query(query.clone());
        match zone.lookup(&query.name().to_ascii()) {
            Lookup::NotOurs => ResponseCode::Refused,
            Lookup::NoSuchName => ResponseCode::NXDomain,
            Lookup::Found(addresses) => {
                let wants_a = matches!(query.query_type(), RecordType::A | RecordType::ANY);
                if wants_a && query.query_class() == DNSClass::IN {
                    for ip in addresses {
                        response.add_answer(Record::from_rdata(
                            query.name().clone(),
                            TTL,
                            RData::A(A(*ip)),
                        ));
                    }
                }
                ResponseCode::NoError
            }
        }
    };
    let bytes = response.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    response.answers.clear();
    response.metadata.truncation = true;
    response.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    use super::*;

    fn zone() -> Zone {
        let services: Vec<Service> = serde_json::from_value(serde_json::json!([
            {"metadata": {"name": "relaunch-coordinator", "namespace": "relaunch-system"},
             "spec": {"clusterIP": "127.100.1.20", "ports": [{"port": 443}]}},
            {"metadata": {"name": "db", "namespace": "default"},
             "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}},
            {"metadata": {"name": "ext", "namespace": "default"},
             "spec": {"type": "ExternalName", "externalName": "example.org"}},
        ]))
        .unwrap();
        let slices: Vec<EndpointSlice> = serde_json::from_value(serde_json::json!([
            {"metadata": {"name": "db-abcde", "namespace": "default",
                          "labels": {"kubernetes.io/service-name": "db"}},
             "addressType": "IPv4",
             "endpoints": [
                {"addresses": ["127.0.0.3"], "hostname": "db-1", "conditions": {"ready": true}},
                {"addresses": ["127.0.0.2"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["127.0.0.4"], "hostname": "db-2", "conditions": {"ready": false}},
             ]},
        ]))
        .unwrap();
        Zone::new(services.iter(), slices.iter())
    }

    fn ask(name: &str, record_type: RecordType, zone: &Zone) -> Message {
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
        let answer = answer(&query.to_vec().unwrap(), zone, true).unwrap();
        let answer = Message::from_vec(&answer).unwrap();
        assert_eq!(answer.metadata.id, query.metadata.id);
        answer
    }

    fn addresses(message: &Message) -> Vec<Ipv4Addr> {
        message
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(A(ip)) => Some(*ip),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn service_names_resolve_to_their_cluster_ip_with_or_without_the_cluster_domain() {
        let zone = zone();
        for name in [
            "relaunch-coordinator.relaunch-system.svc.cluster.local.",
            "relaunch-coordinator.relaunch-system.svc",
            "Relaunch-Coordinator.Relaunch-System.SVC.cluster.local",
        ] {
            let answer = ask(name, RecordType::A, &zone);
            assert_eq!(
                answer.metadata.response_code,
                ResponseCode::NoError,
                "{name}"
            );
            assert!(answer.metadata.authoritative);
            assert_eq!(
                addresses(&answer),
                [Ipv4Addr::new(127, 100, 1, 20)],
                "{name}"
            );
        }
    }

    #[test]
    fn headless_services_resolve_to_ready_endpoints_and_pods_by_hostname() {
        let zone = zone();
        let all = ask("db.default.svc.cluster.local", RecordType::A, &zone);
        assert_eq!(
            addresses(&all),
            [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)]
        );
        let one = ask("db-1.db.default.svc.cluster.local", RecordType::A, &zone);
        assert_eq!(addresses(&one), [Ipv4Addr::new(127, 0, 0, 3)]);
        let unready = ask("db-2.db.default.svc.cluster.local", RecordType::A, &zone);
        assert_eq!(unready.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn unknown_names_are_nxdomain_other_types_empty_and_foreign_names_refused() {
        let zone = zone();
        let missing = ask("nope.default.svc.cluster.local", RecordType::A, &zone);
        assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
        // What a resolver's search list produces first for `<svc>.<ns>.svc`.
        let searched = ask(
            "relaunch-coordinator.relaunch-system.svc.default.svc.cluster.local",
            RecordType::A,
            &zone,
        );
        assert_eq!(searched.metadata.response_code, ResponseCode::NXDomain);
        let v6 = ask(
            "relaunch-coordinator.relaunch-system.svc.cluster.local",
            RecordType::AAAA,
            &zone,
        );
        assert_eq!(v6.metadata.response_code, ResponseCode::NoError);
        assert!(v6.answers.is_empty());
        let external = ask("ext.default.svc.cluster.local", RecordType::A, &zone);
        assert_eq!(external.metadata.response_code, ResponseCode::NXDomain);
        let foreign = ask("example.org", RecordType::A, &zone);
        assert_eq!(foreign.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn garbage_and_responses_get_no_answer() {
        let zone = zone();
        assert!(answer(b"", &zone, true).is_none());
        assert!(answer(&[0xff; 40], &zone, true).is_none());
        let response = Message::response(7, OpCode::Query).to_vec().unwrap();
        assert!(answer(&response, &zone, true).is_none());
    }
}
