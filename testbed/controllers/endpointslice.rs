//! The EndpointSlice controller (kube-controller-manager's `endpointslice-controller`): for every
//! Service with a selector, slices listing the pods it selects, with `ready`, `serving` and
//! `terminating` as upstream sets them, one slice per distinct port mapping (named target ports
//! may resolve differently per pod), and an empty placeholder slice while no pod matches.
//! Slices are owned by their Service, so the garbage collector removes them with it.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use super::is_benign;
use super::ownership::controller_ref;
use super::pods;

/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming the controller that manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`], as upstream's.
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Set on the slices of headless Services.
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// What one slice of a Service should hold: its ports and endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredSlice {
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
}

/// The slices `service` should have given the pods of its namespace: none for a Service
/// without a selector (its slices are someone else's) or of type ExternalName.
pub fn desired_slices<'a>(
    service: &Service,
    pods: impl Iterator<Item = &'a Pod>,
) -> Option<Vec<DesiredSlice>> {
    let spec = service.spec.as_ref()?;
    let selector = spec.selector.as_ref().filter(|s| !s.is_empty())?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let namespace = service.metadata.namespace.as_deref();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let service_ports = spec.ports.as_deref().unwrap_or_default();
    let mut by_ports: BTreeMap<String, DesiredSlice> = BTreeMap::new();
    let mut selected: Vec<&Pod> = pods
        .filter(|p| p.metadata.namespace.as_deref() == namespace)
        .filter(|p| {
            let labels = p.metadata.labels.as_ref();
            selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .filter(|p| !pods::is_terminal(p))
        .collect();
    selected.sort_by_key(|p| p.name_any());
    for pod in selected {
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
        else {
            continue;
        };
        let ports: Vec<EndpointPort> = service_ports
            .iter()
            .filter_map(|port| endpoint_port(port, pod))
            .collect();
        let key = serde_json::to_string(&ports).unwrap_or_default();
        let terminating = pods::is_terminating(pod);
        let ready = pods::is_ready(pod);
        let pod_spec = pod.spec.as_ref();
        let hostname = pod_spec
            .filter(|s| s.subdomain.as_deref() == service.metadata.name.as_deref())
            .and_then(|s| s.hostname.clone())
            .filter(|h| !h.is_empty());
        let endpoint = Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                ready: Some(publish_not_ready || (ready && !terminating)),
                serving: Some(publish_not_ready || ready),
                terminating: Some(terminating),
            }),
            hostname,
            node_name: pods::node_name(pod).map(str::to_string),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: pod.metadata.namespace.clone(),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        by_ports
            .entry(key)
            .or_insert_with(|| DesiredSlice {
                ports,
                endpoints: Vec::new(),
            })
            .endpoints
            .push(endpoint);
    }
    if by_ports.is_empty() {
        // Upstream's placeholder: one slice with neither ports nor endpoints.
        return Some(vec![DesiredSlice {
            ports: Vec::new(),
            endpoints: Vec::new(),
        }]);
    }
    Some(by_ports.into_values().collect())
}

/// The slice port for `port` on `pod`: the target port's number, a named one looked up in the
/// pod's containers (`podutil.FindPort`); None when the name resolves to nothing.
fn endpoint_port(port: &ServicePort, pod: &Pod) -> Option<EndpointPort> {
    let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".into());
    let number = match &port.target_port {
        None => port.port,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(name)) => {
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })?
                .container_port
        }
    };
    Some(EndpointPort {
        name: Some(port.name.clone().unwrap_or_default()),
        port: Some(number),
        protocol: Some(protocol),
        app_protocol: port.app_protocol.clone(),
    })
}

/// The labels a Service's slices carry: the Service's own, its name, the manager, and the
/// headless marker.
fn slice_labels(service: &Service) -> BTreeMap<String, String> {
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.into(), service.name_any());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let headless = service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None");
    if headless {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels
}

/// The I/O shell: makes every Service's slices match [`desired_slices`].
#[derive(Clone)]
pub(super) struct EndpointSliceController {
    client: Client,
    services: Store<Service>,
    pods: Store<Pod>,
    slices: Store<EndpointSlice>,
}

impl EndpointSliceController {
    pub(super) fn new(
        client: Client,
        services: Store<Service>,
        pods: Store<Pod>,
        slices: Store<EndpointSlice>,
    ) -> Self {
        Self {
            client,
            services,
            pods,
            slices,
        }
    }

    /// One pass over every Service; false if any write failed.
    pub(super) async fn sync_all(&self) -> bool {
        let pods = self.pods.state();
        let mut owned: HashMap<(String, String), Vec<EndpointSlice>> = HashMap::new();
        for slice in self.slices.state() {
            let labels = slice.labels();
            if labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY) {
                continue;
            }
            if let Some(service) = labels.get(SERVICE_NAME_LABEL) {
                owned
                    .entry((slice.namespace().unwrap_or_default(), service.clone()))
                    .or_default()
                    .push((*slice).clone());
            }
        }
        let mut healthy = true;
        for service in self.services.state() {
            if service.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(desired) = desired_slices(&service, pods.iter().map(|p| p.as_ref())) else {
                continue;
            };
            let key = (service.namespace().unwrap_or_default(), service.name_any());
            let existing = owned.remove(&key).unwrap_or_default();
            healthy &= self.sync_service(&service, desired, existing).await;
        }
        healthy
    }

    async fn sync_service(
        &self,
        service: &Service,
        desired: Vec<DesiredSlice>,
        mut existing: Vec<EndpointSlice>,
    ) -> bool {
        let namespace = service.namespace().unwrap_or_default();
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &namespace);
        let labels = slice_labels(service);
        let owner = controller_ref("v1", "Service", &service.metadata);
        let mut healthy = true;
        for want in desired {
            let reuse = existing
                .iter()
                .position(|s| s.ports.clone().unwrap_or_default() == want.ports)
                .or_else(|| (!existing.is_empty()).then_some(0));
            let result = match reuse.map(|i| existing.swap_remove(i)) {
                Some(current) => {
                    let up_to_date = current.endpoints == want.endpoints
                        && current.ports.clone().unwrap_or_default() == want.ports
                        && current.metadata.labels.as_ref() == Some(&labels);
                    if up_to_date {
                        continue;
                    }
                    let mut slice = current.clone();
                    slice.metadata.labels = Some(labels.clone());
                    slice.endpoints = want.endpoints;
                    slice.ports = Some(want.ports);
                    api.replace(&current.name_any(), &PostParams::default(), &slice)
                        .await
                        .map(|_| ())
                }
                None => {
                    let slice = EndpointSlice {
                        metadata: ObjectMeta {
                            generate_name: Some(format!("{}-", service.name_any())),
                            namespace: Some(namespace.clone()),
                            labels: Some(labels.clone()),
                            owner_references: owner.clone().map(|o| vec![o]),
                            ..Default::default()
                        },
                        address_type: "IPv4".into(),
                        endpoints: want.endpoints,
                        ports: Some(want.ports),
                    };
                    api.create(&PostParams::default(), &slice).await.map(|s| {
                        info!(service = %service.name_any(), slice = %s.name_any(), "created EndpointSlice");
                    })
                }
            };
            if let Err(error) = result
                && !is_benign(&error)
            {
                warn!(service = %service.name_any(), %error, "writing an EndpointSlice failed");
                healthy = false;
            }
        }
        for stale in existing {
            if let Err(error) = api
                .delete(&stale.name_any(), &DeleteParams::default())
                .await
                && !is_benign(&error)
            {
                warn!(slice = %stale.name_any(), %error, "deleting an EndpointSlice failed");
                healthy = false;
            }
        }
        healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "s-1"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn pod(name: &str, ip: &str, ready: bool, extra: serde_json::Value) -> Pod {
        let mut pod = serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid"),
                         "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "main",
                     "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        });
        json_patch::merge(&mut pod, &extra);
        serde_json::from_value(pod).unwrap()
    }

    fn conditions(slice: &DesiredSlice) -> Vec<(bool, bool, bool)> {
        slice
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.clone().unwrap();
                (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
            })
            .collect()
    }

    #[test]
    fn endpoints_are_ready_only_for_ready_pods_that_are_not_terminating() {
        let svc = service(serde_json::json!({"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}));
        let pods = [
            pod("a", "127.0.0.2", true, serde_json::json!({})),
            pod("b", "127.0.0.3", false, serde_json::json!({})),
            pod(
                "c",
                "127.0.0.4",
                true,
                serde_json::json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
            ),
            pod(
                "d",
                "127.0.0.5",
                true,
                serde_json::json!({"status": {"phase": "Succeeded"}}),
            ),
            pod("e", "", true, serde_json::json!({})),
            pod(
                "f",
                "127.0.0.6",
                true,
                serde_json::json!({"metadata": {"labels": {"app": "db"}}}),
            ),
        ];
        let slices = desired_slices(&svc, pods.iter()).unwrap();
        assert_eq!(slices.len(), 1);
        assert_eq!(
            slices[0].ports,
            vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                app_protocol: None,
            }]
        );
        assert_eq!(
            conditions(&slices[0]),
            vec![
                (true, true, false),
                (false, false, false),
                (false, true, true)
            ]
        );
        let first = &slices[0].endpoints[0];
        assert_eq!(first.addresses, vec!["127.0.0.2"]);
        assert_eq!(first.node_name.as_deref(), Some("node-1"));
        assert_eq!(
            first.target_ref.as_ref().unwrap().name.as_deref(),
            Some("a")
        );
    }

    #[test]
    fn publish_not_ready_addresses_marks_every_endpoint_ready() {
        let svc = service(
            serde_json::json!({"selector": {"app": "web"}, "clusterIP": "None",
            "publishNotReadyAddresses": true, "ports": [{"port": 5432}]}),
        );
        let pods = [pod("a", "127.0.0.2", false, serde_json::json!({}))];
        let slices = desired_slices(&svc, pods.iter()).unwrap();
        assert_eq!(conditions(&slices[0]), vec![(true, true, false)]);
        assert_eq!(slices[0].ports[0].port, Some(5432));
    }

    #[test]
    fn pods_whose_named_ports_differ_get_separate_slices_and_no_pods_a_placeholder() {
        let svc = service(serde_json::json!({"selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": "http"}]}));
        let other = serde_json::json!({"spec": {"containers": [{"name": "main",
            "ports": [{"name": "http", "containerPort": 9090}]}]}});
        let pods = [
            pod("a", "127.0.0.2", true, serde_json::json!({})),
            pod("b", "127.0.0.3", true, other),
        ];
        let slices = desired_slices(&svc, pods.iter()).unwrap();
        let ports: Vec<_> = slices.iter().map(|s| s.ports[0].port).collect();
        assert_eq!(ports, vec![Some(8080), Some(9090)]);

        let placeholder = desired_slices(&svc, [].iter()).unwrap();
        assert_eq!(
            placeholder,
            vec![DesiredSlice {
                ports: vec![],
                endpoints: vec![]
            }]
        );
    }

    #[test]
    fn services_without_selector_or_external_names_are_left_alone() {
        let pods = [pod("a", "127.0.0.2", true, serde_json::json!({}))];
        assert!(
            desired_slices(
                &service(serde_json::json!({"ports": [{"port": 80}]})),
                pods.iter()
            )
            .is_none()
        );
        let external = service(
            serde_json::json!({"type": "ExternalName", "externalName": "db.example",
            "selector": {"app": "web"}}),
        );
        assert!(desired_slices(&external, pods.iter()).is_none());
    }

    #[test]
    fn statefulset_pods_get_their_hostname_in_their_governing_service() {
        let svc = service(
            serde_json::json!({"selector": {"app": "web"}, "clusterIP": "None",
            "ports": [{"port": 80}]}),
        );
        let pods = [pod(
            "web-0",
            "127.0.0.2",
            true,
            serde_json::json!({"spec": {"hostname": "web-0", "subdomain": "web"}}),
        )];
        let slices = desired_slices(&svc, pods.iter()).unwrap();
        assert_eq!(slices[0].endpoints[0].hostname.as_deref(), Some("web-0"));
        assert_eq!(
            slice_labels(&svc).get(HEADLESS_LABEL).map(String::as_str),
            Some("")
        );
    }
}
