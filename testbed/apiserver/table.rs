//! Server-side printing (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`), which is how
//! `kubectl get` shows columns: pods, workloads (Deployments, ReplicaSets, DaemonSets,
//! StatefulSets), Services, Endpoints and EndpointSlices like upstream, custom resources by their CRD's `additionalPrinterColumns`,
//! everything else by name and age.

use serde_json::{Value, json};

/// One column: header, type, and how to compute the cell.
struct Column {
    name: String,
    kind: String,
    priority: i64,
    cell: Cell,
}

enum Cell {
    Name,
    Path(String),
    PodReady,
    PodStatus,
    PodRestarts,
    /// An integer at the path, 0 when absent.
    Count(&'static str),
    /// `<ready>/<desired>` from two integer paths.
    Fraction(&'static str, &'static str),
    /// The template's container names or images, comma-separated.
    Containers,
    Images,
    /// A label selector at the path as `kubectl` prints it.
    Selector(&'static str),
    /// The template's `nodeSelector` as `k=v,...`, or `<none>`.
    NodeSelector,
    /// A Service's ClusterIP, `<none>` when it has none.
    ClusterIp,
    /// A Service's external IPs (`<none>`, `<pending>` for a LoadBalancer, the external name).
    ExternalIp,
    /// A Service's ports as `port[:nodePort]/protocol,...`.
    ServicePorts,
    /// A label map at the path as `k=v,...`, or `<none>`.
    Labels(&'static str),
    /// An EndpointSlice's port numbers, at most three.
    SlicePorts,
    /// An EndpointSlice's addresses, at most three.
    SliceEndpoints,
    /// An Endpoints' ready `ip:port` pairs, at most three.
    EndpointsAddresses,
}

/// The columns for objects of resource `key`, given the CRD (for custom resources).
fn columns(key: &str, crd: Option<&Value>, version: &str) -> Vec<Column> {
    let col = |name: &str, kind: &str, priority: i64, cell: Cell| Column {
        name: name.into(),
        kind: kind.into(),
        priority,
        cell,
    };
    let mut cols = vec![col("Name", "string", 0, Cell::Name)];
    if key == "/pods" {
        cols.push(col("Ready", "string", 0, Cell::PodReady));
        cols.push(col("Status", "string", 0, Cell::PodStatus));
        cols.push(col("Restarts", "string", 0, Cell::PodRestarts));
        cols.push(col(
            "Age",
            "date",
            0,
            Cell::Path("metadata.creationTimestamp".into()),
        ));
        cols.push(col("IP", "string", 1, Cell::Path("status.podIP".into())));
        cols.push(col("Node", "string", 1, Cell::Path("spec.nodeName".into())));
        return cols;
    }
    let age = |cols: &mut Vec<Column>| {
        cols.push(col(
            "Age",
            "date",
            0,
            Cell::Path("metadata.creationTimestamp".into()),
        ));
    };
    let wide = |cols: &mut Vec<Column>, selector: bool| {
        cols.push(col("Containers", "string", 1, Cell::Containers));
        cols.push(col("Images", "string", 1, Cell::Images));
        if selector {
            cols.push(col(
                "Selector",
                "string",
                1,
                Cell::Selector("spec.selector"),
            ));
        }
    };
    match key {
        "apps/deployments" => {
            cols.push(col(
                "Ready",
                "string",
                0,
                Cell::Fraction("status.readyReplicas", "spec.replicas"),
            ));
            cols.push(col(
                "Up-to-date",
                "integer",
                0,
                Cell::Count("status.updatedReplicas"),
            ));
            cols.push(col(
                "Available",
                "integer",
                0,
                Cell::Count("status.availableReplicas"),
            ));
            age(&mut cols);
            wide(&mut cols, true);
            return cols;
        }
        "apps/replicasets" => {
            cols.push(col("Desired", "integer", 0, Cell::Count("spec.replicas")));
            cols.push(col("Current", "integer", 0, Cell::Count("status.replicas")));
            cols.push(col(
                "Ready",
                "integer",
                0,
                Cell::Count("status.readyReplicas"),
            ));
            age(&mut cols);
            wide(&mut cols, true);
            return cols;
        }
        "apps/daemonsets" => {
            for (name, path) in [
                ("Desired", "status.desiredNumberScheduled"),
                ("Current", "status.currentNumberScheduled"),
                ("Ready", "status.numberReady"),
                ("Up-to-date", "status.updatedNumberScheduled"),
                ("Available", "status.numberAvailable"),
            ] {
                cols.push(col(name, "integer", 0, Cell::Count(path)));
            }
            cols.push(col("Node Selector", "string", 0, Cell::NodeSelector));
            age(&mut cols);
            wide(&mut cols, true);
            return cols;
        }
        "/services" => {
            cols.push(col("Type", "string", 0, Cell::Path("spec.type".into())));
            cols.push(col("Cluster-IP", "string", 0, Cell::ClusterIp));
            cols.push(col("External-IP", "string", 0, Cell::ExternalIp));
            cols.push(col("Port(s)", "string", 0, Cell::ServicePorts));
            age(&mut cols);
            cols.push(col("Selector", "string", 1, Cell::Labels("spec.selector")));
            return cols;
        }
        "discovery.k8s.io/endpointslices" => {
            cols.push(col(
                "AddressType",
                "string",
                0,
                Cell::Path("addressType".into()),
            ));
            cols.push(col("Ports", "string", 0, Cell::SlicePorts));
            cols.push(col("Endpoints", "string", 0, Cell::SliceEndpoints));
            age(&mut cols);
            return cols;
        }
        "/endpoints" => {
            cols.push(col("Endpoints", "string", 0, Cell::EndpointsAddresses));
            age(&mut cols);
            return cols;
        }
        "apps/statefulsets" => {
            cols.push(col(
                "Ready",
                "string",
                0,
                Cell::Fraction("status.readyReplicas", "spec.replicas"),
            ));
            age(&mut cols);
            wide(&mut cols, false);
            return cols;
        }
        _ => {}
    }
    let printer = crd.and_then(|crd| {
        crd["spec"]["versions"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == version)?
            .get("additionalPrinterColumns")?
            .as_array()
            .cloned()
    });
    match printer {
        Some(printer) if !printer.is_empty() => {
            for c in printer {
                let path = c["jsonPath"]
                    .as_str()
                    .unwrap_or_default()
                    .trim_start_matches('.');
                cols.push(col(
                    c["name"].as_str().unwrap_or_default(),
                    c["type"].as_str().unwrap_or("string"),
                    c["priority"].as_i64().unwrap_or(0),
                    Cell::Path(path.to_string()),
                ));
            }
        }
        _ => cols.push(col(
            "Age",
            "date",
            0,
            Cell::Path("metadata.creationTimestamp".into()),
        )),
    }
    cols
}

/// A Table of `objects`, with or without column definitions (watch events after the first omit them).
pub fn table(
    key: &str,
    crd: Option<&Value>,
    version: &str,
    objects: &[Value],
    rv: &str,
    definitions: bool,
) -> Value {
    let cols = columns(key, crd, version);
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let cells: Vec<Value> = cols.iter().map(|c| cell(&c.cell, o)).collect();
            json!({
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o["metadata"],
                }
            })
        })
        .collect();
    let defs: Vec<Value> = if definitions {
        cols.iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": if c.kind == "date" { "string" } else { c.kind.as_str() },
                    "format": match (&c.cell, c.kind.as_str()) { (Cell::Name, _) => "name", (_, "date") => "date", _ => "" },
                    "description": "",
                    "priority": c.priority,
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": defs,
        "rows": rows,
    })
}

fn cell(cell: &Cell, o: &Value) -> Value {
    match cell {
        Cell::Name => o["metadata"]["name"].clone(),
        Cell::Path(path) => {
            let mut current = o;
            for part in json_path_parts(path) {
                current = &current[part.as_str()];
            }
            if current.is_null() {
                json!("")
            } else {
                current.clone()
            }
        }
        Cell::PodReady => {
            let statuses = o["status"]["containerStatuses"].as_array();
            let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
            let ready = statuses.map_or(0, |s| s.iter().filter(|c| c["ready"] == true).count());
            json!(format!("{ready}/{total}"))
        }
        Cell::PodStatus => {
            if o["metadata"]["deletionTimestamp"].is_string() {
                return json!("Terminating");
            }
            let statuses = o["status"]["containerStatuses"].as_array();
            let reason = statuses.and_then(|s| {
                s.iter().find_map(|c| {
                    c["state"]["waiting"]["reason"]
                        .as_str()
                        .or_else(|| c["state"]["terminated"]["reason"].as_str())
                })
            });
            json!(
                reason
                    .or(o["status"]["phase"].as_str())
                    .unwrap_or("Pending")
            )
        }
        Cell::Count(path) => json!(integer_at(o, path)),
        Cell::Fraction(ready, desired) => {
            json!(format!(
                "{}/{}",
                integer_at(o, ready),
                integer_at(o, desired)
            ))
        }
        Cell::Containers | Cell::Images => {
            let field = if matches!(cell, Cell::Containers) {
                "name"
            } else {
                "image"
            };
            let values: Vec<&str> = o["spec"]["template"]["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c[field].as_str())
                .collect();
            json!(values.join(","))
        }
        Cell::Selector(path) => json!(format_selector(value_at(o, path))),
        Cell::NodeSelector => {
            let pairs: Vec<String> = o["spec"]["template"]["spec"]["nodeSelector"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            json!(if pairs.is_empty() {
                "<none>".to_string()
            } else {
                pairs.join(",")
            })
        }
        Cell::ClusterIp => json!(
            o["spec"]["clusterIP"]
                .as_str()
                .filter(|ip| !ip.is_empty())
                .unwrap_or("<none>")
        ),
        Cell::ExternalIp => json!(external_ip(o)),
        Cell::ServicePorts => {
            let ports: Vec<String> = o["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let protocol = p["protocol"].as_str().unwrap_or("TCP");
                    match p["nodePort"].as_i64().filter(|n| *n > 0) {
                        Some(node_port) => format!("{}:{node_port}/{protocol}", p["port"]),
                        None => format!("{}/{protocol}", p["port"]),
                    }
                })
                .collect();
            json!(if ports.is_empty() {
                "<none>".to_string()
            } else {
                ports.join(",")
            })
        }
        Cell::Labels(path) => {
            let pairs: Vec<String> = value_at(o, path)
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            json!(if pairs.is_empty() {
                "<none>".to_string()
            } else {
                pairs.join(",")
            })
        }
        Cell::SlicePorts => {
            let ports: Vec<String> = o["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| match (p["port"].as_i64(), p["name"].as_str()) {
                    (Some(port), _) => port.to_string(),
                    (None, Some(name)) => name.to_string(),
                    (None, None) => "*".to_string(),
                })
                .collect();
            json!(at_most_three(&ports, "<unset>"))
        }
        Cell::SliceEndpoints => {
            let addresses: Vec<String> = o["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            json!(at_most_three(&addresses, "<unset>"))
        }
        Cell::EndpointsAddresses => {
            let subsets = o["subsets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            if subsets.is_empty() {
                return json!("<none>");
            }
            let mut pairs = Vec::new();
            for subset in subsets {
                let ips: Vec<&str> = subset["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a["ip"].as_str())
                    .collect();
                match subset["ports"].as_array().filter(|p| !p.is_empty()) {
                    None => pairs.extend(ips.iter().map(|ip| ip.to_string())),
                    Some(ports) => {
                        for port in ports {
                            pairs.extend(ips.iter().map(|ip| format!("{ip}:{}", port["port"])));
                        }
                    }
                }
            }
            json!(at_most_three(&pairs, ""))
        }
        Cell::PodRestarts => {
            let restarts: i64 = o["status"]["containerStatuses"].as_array().map_or(0, |s| {
                s.iter().filter_map(|c| c["restartCount"].as_i64()).sum()
            });
            json!(restarts.to_string())
        }
    }
}

/// kubectl's EXTERNAL-IP of a Service.
fn external_ip(service: &Value) -> String {
    let spec = &service["spec"];
    let mut ips: Vec<String> = Vec::new();
    match spec["type"].as_str().unwrap_or("ClusterIP") {
        "ExternalName" => return spec["externalName"].as_str().unwrap_or_default().into(),
        "LoadBalancer" => {
            ips.extend(
                service["status"]["loadBalancer"]["ingress"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()))
                    .map(str::to_string),
            );
            if ips.is_empty() && spec["externalIPs"].as_array().is_none_or(|e| e.is_empty()) {
                return "<pending>".into();
            }
        }
        _ => {}
    }
    ips.extend(
        spec["externalIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i.as_str().map(str::to_string)),
    );
    if ips.is_empty() {
        "<none>".into()
    } else {
        ips.join(",")
    }
}

/// Up to three items joined with commas and `+ N more...`, as kubectl lists addresses.
fn at_most_three(items: &[String], empty: &str) -> String {
    match items.len() {
        0 => empty.to_string(),
        1..=3 => items.join(","),
        n => format!("{} + {} more...", items[..3].join(","), n - 3),
    }
}

fn value_at<'v>(o: &'v Value, path: &str) -> &'v Value {
    path.split('.').fold(o, |current, part| &current[part])
}

fn integer_at(o: &Value, path: &str) -> i64 {
    value_at(o, path).as_i64().unwrap_or(0)
}

/// `metav1.FormatLabelSelector`: `k=v` pairs and expressions, comma-separated; `<none>` when
/// empty.
fn format_selector(selector: &Value) -> String {
    let mut parts: Vec<String> = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    for expression in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = expression["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = expression["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(match expression["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            other => format!("{key} {other} ({})", values.join(",")),
        });
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

/// Splits a simple JSONPath (`metadata.labels.relaunch\\.dev/node-name`) at unescaped dots.
fn json_path_parts(path: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    parts.last_mut().expect("never empty").push(next);
                }
            }
            '.' => parts.push(String::new()),
            c => parts.last_mut().expect("never empty").push(c),
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_resources_print_their_crd_columns() {
        let crd = json!({"spec": {"versions": [{"name": "v1alpha1", "additionalPrinterColumns": [
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
        ]}]}});
        let obj = json!({"metadata": {"name": "r", "creationTimestamp": "2026-01-01T00:00:00Z"}, "status": {"phase": "Succeeded"}});
        let t = table(
            "relaunch.dev/containerrecreaterequests",
            Some(&crd),
            "v1alpha1",
            &[obj],
            "5",
            true,
        );
        assert_eq!(
            t["rows"][0]["cells"],
            json!(["r", "Succeeded", "2026-01-01T00:00:00Z"])
        );
        assert_eq!(t["columnDefinitions"][1]["name"], "Phase");
        assert_eq!(t["columnDefinitions"][2]["format"], "date");
    }

    #[test]
    fn json_paths_with_escaped_dots_reach_labels() {
        let obj = json!({"metadata": {"labels": {"relaunch.dev/node-name": "node-1"}}});
        let parts = json_path_parts("metadata.labels.relaunch\\.dev/node-name");
        assert_eq!(parts, vec!["metadata", "labels", "relaunch.dev/node-name"]);
        assert_eq!(
            cell(
                &Cell::Path("metadata.labels.relaunch\\.dev/node-name".into()),
                &obj
            ),
            "node-1"
        );
    }

    #[test]
    fn workloads_print_their_counts_like_kubectl() {
        let template = json!({"spec": {"containers": [{"name": "a", "image": "busybox:1"}, {"name": "b", "image": "pause"}]}});
        let deployment = json!({"metadata": {"name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        let t = table("apps/deployments", None, "v1", &[deployment], "1", true);
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "web",
                "2/3",
                3,
                2,
                "2026-01-01T00:00:00Z",
                "a,b",
                "busybox:1,pause",
                "app=web"
            ])
        );
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "Ready",
                "Up-to-date",
                "Available",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );

        let fresh = json!({"metadata": {"name": "agent"},
            "spec": {"selector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
                     "template": {"spec": {"nodeSelector": {"role": "worker"}}}}});
        let t = table("apps/daemonsets", None, "v1", &[fresh], "1", true);
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "agent",
                0,
                0,
                0,
                0,
                0,
                "role=worker",
                "",
                "",
                "",
                "tier in (a,b)"
            ])
        );

        let set = json!({"metadata": {"name": "web-abc"}, "spec": {"replicas": 2}, "status": {"replicas": 2}});
        let t = table("apps/replicasets", None, "v1", &[set], "1", true);
        assert_eq!(t["rows"][0]["cells"].as_array().unwrap()[1..4], [2, 2, 0]);
    }

    #[test]
    fn services_and_their_endpoints_print_like_kubectl() {
        let service = json!({"metadata": {"name": "web"}, "spec": {"type": "ClusterIP", "clusterIP": "127.100.0.20",
            "selector": {"app": "web"}, "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}});
        let headless =
            json!({"metadata": {"name": "db"}, "spec": {"type": "ClusterIP", "clusterIP": "None"}});
        let t = table("/services", None, "v1", &[service, headless], "1", true);
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "web",
                "ClusterIP",
                "127.100.0.20",
                "<none>",
                "80/TCP,53/UDP",
                "",
                "app=web"
            ])
        );
        assert_eq!(
            t["rows"][1]["cells"],
            json!(["db", "ClusterIP", "None", "<none>", "<none>", "", "<none>"])
        );

        let slice = json!({"metadata": {"name": "web-x7k2p"}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": (2..=6).map(|n| json!({"addresses": [format!("127.0.0.{n}")]})).collect::<Vec<_>>()});
        let t = table(
            "discovery.k8s.io/endpointslices",
            None,
            "v1",
            &[slice],
            "1",
            true,
        );
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "web-x7k2p",
                "IPv4",
                "8080",
                "127.0.0.2,127.0.0.3,127.0.0.4 + 2 more...",
                ""
            ])
        );

        let endpoints = json!({"metadata": {"name": "web"}, "subsets": [{"addresses": [{"ip": "127.0.0.2"}],
            "ports": [{"port": 8080}]}]});
        let t = table("/endpoints", None, "v1", &[endpoints], "1", true);
        assert_eq!(t["rows"][0]["cells"], json!(["web", "127.0.0.2:8080", ""]));
    }

    #[test]
    fn pods_print_ready_status_and_restarts() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let t = table("/pods", None, "v1", &[pod], "1", true);
        assert_eq!(t["rows"][0]["cells"][1], "1/2");
        assert_eq!(t["rows"][0]["cells"][2], "CrashLoopBackOff");
        assert_eq!(t["rows"][0]["cells"][3], "3");
    }
}
