//! Server-side printing (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`), which is how
//! `kubectl get` shows columns: pods like upstream, custom resources by their CRD's
//! `additionalPrinterColumns`, everything else by name and age.

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
        Cell::PodRestarts => {
            let restarts: i64 = o["status"]["containerStatuses"].as_array().map_or(0, |s| {
                s.iter().filter_map(|c| c["restartCount"].as_i64()).sum()
            });
            json!(restarts.to_string())
        }
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
