//! Services as kube-apiserver handles them: defaults, validation of the fields the test bed
//! serves, ClusterIP allocation from the service range (`--service-cluster-ip-range`, always on
//! loopback here) and release on delete, and the `kubernetes` Service in `default` with its
//! endpoints pointing at the API server.
//!
//! The allocator's state is the store itself: an address is in use while a Service holds it, so
//! deleting the Service releases it with no bookkeeping of its own.

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

use serde_json::{Value, json};

use super::error::ApiError;
use super::store::Store;

/// The test bed's whole service network; each sandbox takes one /24 block of it.
pub const SERVICE_NETWORK: Ipv4Addr = Ipv4Addr::new(127, 100, 0, 0);

/// The offset of the `kubernetes` Service's ClusterIP in a range, as upstream (the first address).
const KUBERNETES_OFFSET: u32 = 1;
/// The offset of the cluster DNS address, kubeadm's choice for kube-dns (`.10`).
const DNS_OFFSET: u32 = 10;

/// A block of ClusterIPs inside 127.0.0.0/8: kube-apiserver's `--service-cluster-ip-range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceRange {
    network: Ipv4Addr,
    prefix: u8,
}

impl Default for ServiceRange {
    /// The first /24 block of the service network, `127.100.0.0/24`.
    fn default() -> Self {
        Self {
            network: SERVICE_NETWORK,
            prefix: 24,
        }
    }
}

impl fmt::Display for ServiceRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl ServiceRange {
    /// `network/prefix`, which must lie inside 127.0.0.0/8 (test traffic stays on loopback) and
    /// hold at least the DNS address.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        if !(8..=28).contains(&prefix) {
            return Err(format!(
                "service range prefix /{prefix} must be between /8 and /28"
            ));
        }
        let mask = u32::MAX << (32 - prefix);
        let network = Ipv4Addr::from(u32::from(network) & mask);
        if network.octets()[0] != 127 {
            return Err(format!(
                "service range {network}/{prefix} is not on loopback (127.0.0.0/8)"
            ));
        }
        Ok(Self { network, prefix })
    }

    /// The `index`th /24 block of the service network (0 to 255).
    pub fn block(index: u8) -> Self {
        let [a, b, _, _] = SERVICE_NETWORK.octets();
        Self {
            network: Ipv4Addr::new(a, b, index, 0),
            prefix: 24,
        }
    }

    fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }

    fn nth(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + offset)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == u32::from(self.network)
    }

    /// The `kubernetes` Service's ClusterIP: the range's first address.
    pub fn kubernetes_ip(&self) -> Ipv4Addr {
        self.nth(KUBERNETES_OFFSET)
    }

    /// The address the cluster DNS server answers on; never allocated to a Service.
    pub fn dns_ip(&self) -> Ipv4Addr {
        self.nth(DNS_OFFSET)
    }

    /// Upstream's static band: the first `min(max(16, size/16), 256)` addresses are handed out
    /// dynamically only once the rest is full, so explicit requests for them rarely clash.
    fn static_band(&self) -> u32 {
        (self.size() / 16).clamp(16, 256)
    }

    /// An address no Service holds, upper band first, scanning from a random offset as
    /// upstream picks at random; `None` when the range is full.
    fn allocate(&self, in_use: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        // The network and broadcast addresses are never handed out, as upstream.
        let usable = 1..self.size() - 1;
        let band = self.static_band().min(usable.end);
        let upper: Vec<u32> = (band.max(usable.start)..usable.end).collect();
        let lower: Vec<u32> = (usable.start..band).collect();
        let start = uuid::Uuid::new_v4().as_u128() as usize;
        [upper, lower].into_iter().find_map(|offsets| {
            (0..offsets.len())
                .map(|i| self.nth(offsets[(start + i) % offsets.len()]))
                .find(|ip| !in_use.contains(ip) && *ip != self.dns_ip())
        })
    }
}

/// Why a Service cannot be stored: the `spec` field error upstream reports (422).
pub type FieldError = String;

/// Upstream's Service defaults (`SetDefaults_Service` and the REST strategy): type, session
/// affinity, traffic policies, ports' protocol and targetPort, IP families.
pub fn default_service(service: &mut Value) {
    let spec = &mut service["spec"];
    if !spec.is_object() {
        *spec = json!({});
    }
    let service_type = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    spec["type"] = json!(service_type);
    if spec["sessionAffinity"].is_null() {
        spec["sessionAffinity"] = json!("None");
    }
    if let Some(ports) = spec["ports"].as_array_mut() {
        for port in ports {
            if port["protocol"].is_null() {
                port["protocol"] = json!("TCP");
            }
            if port["targetPort"].is_null()
                || port["targetPort"] == json!(0)
                || port["targetPort"] == json!("")
            {
                port["targetPort"] = port["port"].clone();
            }
        }
    }
    if service_type == "ExternalName" {
        return;
    }
    if spec["internalTrafficPolicy"].is_null() {
        spec["internalTrafficPolicy"] = json!("Cluster");
    }
    if matches!(service_type.as_str(), "NodePort" | "LoadBalancer")
        && spec["externalTrafficPolicy"].is_null()
    {
        spec["externalTrafficPolicy"] = json!("Cluster");
    }
    if spec["ipFamilies"].is_null() {
        spec["ipFamilies"] = json!(["IPv4"]);
    }
    if spec["ipFamilyPolicy"].is_null() {
        // Headless Services with a selector get RequireDualStack, as upstream: they have no
        // address of their own, so they take every family the cluster has (here IPv4 only).
        let headless_with_selector =
            is_headless(service) && service["spec"]["selector"].is_object();
        service["spec"]["ipFamilyPolicy"] = json!(if headless_with_selector {
            "RequireDualStack"
        } else {
            "SingleStack"
        });
    }
}

/// `clusterIP: None`.
pub fn is_headless(service: &Value) -> bool {
    service["spec"]["clusterIP"] == "None"
}

/// The spec checks upstream makes on the fields the test bed acts on; the first error.
pub fn validate_service(service: &Value) -> Result<(), FieldError> {
    let spec = &service["spec"];
    let service_type = spec["type"].as_str().unwrap_or("ClusterIP");
    if !matches!(
        service_type,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        return Err(format!(
            "spec.type: Unsupported value: {service_type:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""
        ));
    }
    if spec["ipFamilies"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f != "IPv4"))
    {
        return Err(
            "spec.ipFamilies: Invalid value: the test bed's cluster is IPv4 only (single-stack)"
                .into(),
        );
    }
    let ports = spec["ports"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if ports.is_empty() && service_type != "ExternalName" && !is_headless(service) {
        return Err("spec.ports: Required value".into());
    }
    let mut names = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let name = port["name"].as_str().unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            return Err(format!("spec.ports[{i}].name: Required value"));
        }
        if !names.insert(name) {
            return Err(format!("spec.ports[{i}].name: Duplicate value: {name:?}"));
        }
        let number = port["port"].as_i64().unwrap_or(0);
        if !(1..=65535).contains(&number) {
            return Err(format!(
                "spec.ports[{i}].port: Invalid value: {number}: must be between 1 and 65535, inclusive"
            ));
        }
        let protocol = port["protocol"].as_str().unwrap_or("TCP");
        if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
            return Err(format!(
                "spec.ports[{i}].protocol: Unsupported value: {protocol:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""
            ));
        }
    }
    Ok(())
}

/// The ClusterIPs Services in `services` hold.
pub fn cluster_ips_in_use<'a>(services: impl Iterator<Item = &'a Value>) -> HashSet<Ipv4Addr> {
    services
        .filter_map(|s| s["spec"]["clusterIP"].as_str()?.parse().ok())
        .collect()
}

/// Gives a new Service its ClusterIP: the requested one if it is free and in `range`, else a
/// free one; headless and ExternalName Services get none. Fills `clusterIPs` to match.
pub fn allocate_cluster_ip(
    service: &mut Value,
    range: &ServiceRange,
    in_use: &HashSet<Ipv4Addr>,
) -> Result<(), FieldError> {
    let spec = &mut service["spec"];
    if spec["type"] == "ExternalName" {
        return Ok(());
    }
    let requested = spec["clusterIP"]
        .as_str()
        .or_else(|| spec["clusterIPs"][0].as_str())
        .unwrap_or_default()
        .to_string();
    if requested == "None" {
        spec["clusterIP"] = json!("None");
        spec["clusterIPs"] = json!(["None"]);
        return Ok(());
    }
    let ip = if requested.is_empty() {
        range
            .allocate(in_use)
            .ok_or_else(|| "spec.clusterIPs: Internal error: range is full".to_string())?
    } else {
        let ip: Ipv4Addr = requested.parse().map_err(|_| {
            format!(
                "spec.clusterIPs[0]: Invalid value: {requested:?}: must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
            )
        })?;
        let refuse = |why: String| {
            format!(
                "spec.clusterIPs: Invalid value: []string{{{requested:?}}}: failed to allocate IP {requested}: {why}"
            )
        };
        if !range.contains(ip) {
            return Err(refuse(format!(
                "the provided IP ({ip}) is not in the valid range. The range of valid IPs is {range}"
            )));
        }
        if in_use.contains(&ip) || ip == range.dns_ip() {
            return Err(refuse("provided IP is already allocated".into()));
        }
        ip
    };
    spec["clusterIP"] = json!(ip.to_string());
    spec["clusterIPs"] = json!([ip.to_string()]);
    Ok(())
}

/// An update keeps the allocated ClusterIP when it leaves it out (as upstream's
/// `patchAllocatedValues`) and may not change it.
pub fn keep_cluster_ip(current: &Value, updated: &mut Value) -> Result<(), FieldError> {
    let held = &current["spec"]["clusterIP"];
    if held.is_null() {
        return Ok(());
    }
    let given = updated["spec"]["clusterIP"].as_str().unwrap_or_default();
    if given.is_empty() {
        updated["spec"]["clusterIP"] = held.clone();
        updated["spec"]["clusterIPs"] = current["spec"]["clusterIPs"].clone();
        return Ok(());
    }
    if given != held.as_str().unwrap_or_default() {
        return Err(format!(
            "spec.clusterIPs[0]: Invalid value: []string{{{given:?}}}: may not change once set"
        ));
    }
    if updated["spec"]["clusterIPs"].is_null() {
        updated["spec"]["clusterIPs"] = current["spec"]["clusterIPs"].clone();
    }
    Ok(())
}

/// The `kubernetes` Service in `default`, as kube-apiserver creates it at start: port 443 to the
/// server's own port, no selector (its endpoints are the server's address).
pub fn kubernetes_service(range: &ServiceRange, server: SocketAddr) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": range.kubernetes_ip().to_string(),
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": server.port()}],
            "sessionAffinity": "None",
        },
    })
}

/// The `kubernetes` EndpointSlice: the API server's address, as its endpoint reconciler writes it.
pub fn kubernetes_endpoint_slice(server: SocketAddr) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [server.ip().to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": server.port(), "protocol": "TCP"}],
    })
}

/// The legacy `kubernetes` Endpoints, marked so no mirroring controller copies it into a slice.
pub fn kubernetes_endpoints(server: SocketAddr) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": server.ip().to_string()}],
                     "ports": [{"name": "https", "port": server.port(), "protocol": "TCP"}]}],
    })
}

/// Creates the `kubernetes` Service, EndpointSlice and Endpoints for the server at `server`.
pub fn create_kubernetes_service(
    store: &Store,
    range: &ServiceRange,
    server: SocketAddr,
) -> Result<(), ApiError> {
    for (group, plural, object) in [
        ("", "services", kubernetes_service(range, server)),
        (
            "discovery.k8s.io",
            "endpointslices",
            kubernetes_endpoint_slice(server),
        ),
        ("", "endpoints", kubernetes_endpoints(server)),
    ] {
        let rt = store
            .resource(group, "v1", plural)
            .ok_or_else(|| ApiError::bad_request(&format!("{plural} are not served")))?;
        store.create(&rt, Some("default"), object)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(spec: Value) -> Value {
        let mut s = json!({"metadata": {"name": "web"}, "spec": spec});
        default_service(&mut s);
        s
    }

    #[test]
    fn defaults_follow_upstream() {
        let s = service(json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}));
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["sessionAffinity"], "None");
        assert_eq!(s["spec"]["internalTrafficPolicy"], "Cluster");
        assert_eq!(s["spec"]["ipFamilies"], json!(["IPv4"]));
        assert_eq!(s["spec"]["ipFamilyPolicy"], "SingleStack");
        assert_eq!(
            s["spec"]["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
        let named = service(json!({"ports": [{"port": 80, "targetPort": "http"}]}));
        assert_eq!(named["spec"]["ports"][0]["targetPort"], "http");
        let headless = service(json!({"clusterIP": "None", "selector": {"app": "web"}}));
        assert_eq!(headless["spec"]["ipFamilyPolicy"], "RequireDualStack");
    }

    #[test]
    fn allocation_honours_free_requests_and_refuses_taken_or_foreign_ones() {
        let range = ServiceRange::default();
        let mut in_use = HashSet::new();
        let mut s = service(json!({"ports": [{"port": 80}], "clusterIP": "127.100.0.5"}));
        allocate_cluster_ip(&mut s, &range, &in_use).unwrap();
        assert_eq!(s["spec"]["clusterIPs"], json!(["127.100.0.5"]));
        in_use.insert(Ipv4Addr::new(127, 100, 0, 5));

        let mut taken = service(json!({"ports": [{"port": 80}], "clusterIP": "127.100.0.5"}));
        let err = allocate_cluster_ip(&mut taken, &range, &in_use).unwrap_err();
        assert!(err.ends_with("provided IP is already allocated"), "{err}");
        let mut dns = service(json!({"ports": [{"port": 80}], "clusterIP": "127.100.0.10"}));
        assert!(allocate_cluster_ip(&mut dns, &range, &in_use).is_err());
        let mut private = service(json!({"ports": [{"port": 80}], "clusterIP": "10.96.0.1"}));
        let err = allocate_cluster_ip(&mut private, &range, &in_use).unwrap_err();
        assert!(
            err.contains("The range of valid IPs is 127.100.0.0/24"),
            "{err}"
        );
        let mut garbage = service(json!({"ports": [{"port": 80}], "clusterIP": "web"}));
        assert!(
            allocate_cluster_ip(&mut garbage, &range, &in_use)
                .unwrap_err()
                .starts_with("spec.clusterIPs[0]: Invalid value: \"web\"")
        );

        let mut headless = service(json!({"clusterIP": "None"}));
        allocate_cluster_ip(&mut headless, &range, &in_use).unwrap();
        assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
    }

    #[test]
    fn dynamic_allocation_fills_the_upper_band_first_and_never_takes_reserved_addresses() {
        let range = ServiceRange::new(Ipv4Addr::new(127, 100, 7, 0), 27).unwrap();
        let mut in_use = HashSet::from([range.kubernetes_ip()]);
        let mut order = Vec::new();
        while let Some(ip) = range.allocate(&in_use) {
            in_use.insert(ip);
            order.push(u32::from(ip) - u32::from(range.network));
        }
        // 32 addresses: .0 and .31 never, .1 (kubernetes) and .10 (DNS) held: 28 handed out.
        assert_eq!(order.len(), 28);
        assert!(order[..15].iter().all(|o| *o >= 16), "{order:?}");
        assert!(order[15..].iter().all(|o| *o < 16), "{order:?}");
        assert!(!order.contains(&10) && !order.contains(&0) && !order.contains(&31));
    }

    #[test]
    fn ranges_stay_on_loopback() {
        assert!(ServiceRange::new(Ipv4Addr::new(10, 96, 0, 0), 12).is_err());
        let r = ServiceRange::new(Ipv4Addr::new(127, 100, 3, 77), 24).unwrap();
        assert_eq!(r.to_string(), "127.100.3.0/24");
        assert_eq!(r, ServiceRange::block(3));
        assert_eq!(r.dns_ip(), Ipv4Addr::new(127, 100, 3, 10));
        assert_eq!(r.kubernetes_ip(), Ipv4Addr::new(127, 100, 3, 1));
    }

    #[test]
    fn updates_keep_the_cluster_ip_and_may_not_change_it() {
        let current =
            json!({"spec": {"clusterIP": "127.100.0.20", "clusterIPs": ["127.100.0.20"]}});
        let mut omitted = json!({"spec": {"ports": [{"port": 80}]}});
        keep_cluster_ip(&current, &mut omitted).unwrap();
        assert_eq!(omitted["spec"]["clusterIPs"], json!(["127.100.0.20"]));
        let mut changed = json!({"spec": {"clusterIP": "127.100.0.21"}});
        assert!(
            keep_cluster_ip(&current, &mut changed)
                .unwrap_err()
                .ends_with("may not change once set")
        );
    }

    #[test]
    fn services_get_addresses_on_create_and_release_them_on_delete() {
        let store = Store::new();
        let rt = store.resource("", "v1", "services").unwrap();
        let web = store
            .create(
                &rt,
                Some("default"),
                json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}),
            )
            .unwrap();
        let ip = web["spec"]["clusterIP"].as_str().unwrap().to_string();
        assert!(ServiceRange::default().contains(ip.parse().unwrap()));
        assert_eq!(web["status"], json!({"loadBalancer": {}}));

        let mut replaced = web.clone();
        replaced["spec"]
            .as_object_mut()
            .unwrap()
            .retain(|k, _| k == "ports");
        let replaced = store
            .update(&rt, Some("default"), "web", replaced, false)
            .unwrap();
        assert_eq!(replaced["spec"]["clusterIP"], json!(ip));

        let copy = json!({"metadata": {"name": "copy"}, "spec": {"clusterIP": ip, "ports": [{"port": 80}]}});
        let err = store
            .create(&rt, Some("default"), copy.clone())
            .unwrap_err();
        assert_eq!(err.code, 422);
        assert!(
            err.message
                .starts_with("Service \"copy\" is invalid: spec.clusterIPs")
        );
        store
            .delete(&rt, Some("default"), "web", &Default::default())
            .unwrap();
        store.create(&rt, Some("default"), copy).unwrap();
    }

    #[test]
    fn validation_reports_upstreams_field_errors() {
        let no_ports = service(json!({"selector": {"app": "web"}}));
        assert_eq!(
            validate_service(&no_ports).unwrap_err(),
            "spec.ports: Required value"
        );
        let unnamed = service(json!({"ports": [{"port": 80, "name": "a"}, {"port": 81}]}));
        assert_eq!(
            validate_service(&unnamed).unwrap_err(),
            "spec.ports[1].name: Required value"
        );
        let headless = service(json!({"clusterIP": "None"}));
        assert!(validate_service(&headless).is_ok());
    }
}
