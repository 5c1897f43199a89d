//! Patch types the API server accepts: JSON merge (RFC 7386), JSON patch (RFC 6902), strategic
//! merge for the built-in fields relaunch and kubectl touch, and server-side apply approximated as
//! a strategic merge of the applied configuration.

use serde_json::{Map, Value};

/// How a patch body is to be applied, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchKind {
    /// The patch kind for a `Content-Type`, if supported.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let base = content_type.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Applies `patch` of `kind` to `original`.
pub fn apply(original: &Value, patch: &[u8], kind: PatchKind) -> Result<Value, String> {
    match kind {
        PatchKind::Json => {
            let ops: json_patch::Patch =
                serde_json::from_slice(patch).map_err(|e| format!("invalid JSON patch: {e}"))?;
            let mut doc = original.clone();
            json_patch::patch(&mut doc, &ops).map_err(|e| format!("JSON patch failed: {e}"))?;
            Ok(doc)
        }
        PatchKind::Merge => {
            let patch: Value = parse_object(patch)?;
            let mut doc = original.clone();
            json_patch::merge(&mut doc, &patch);
            Ok(doc)
        }
        PatchKind::Strategic | PatchKind::Apply => {
            let patch: Value = parse_object(patch)?;
            Ok(strategic_merge(original, &patch, ""))
        }
    }
}

fn parse_object(patch: &[u8]) -> Result<Value, String> {
    let value: Value = serde_json::from_slice(patch)
        .map_err(|e| format!("invalid patch body (JSON expected): {e}"))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err("patch body must be a JSON object".into())
    }
}

/// The merge key of list field `field`, as the built-in types' `patchMergeKey` tags say.
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "containerStatuses"
        | "initContainerStatuses"
        | "ephemeralContainerStatuses"
        | "resourceClaims" => "name",
        "volumeMounts" => "mountPath",
        "conditions" | "addresses" => "type",
        "ownerReferences" => "uid",
        "podIPs" | "hostIPs" | "hostAliases" => "ip",
        "ports" => {
            if items.iter().any(|i| i.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    })
}

/// Primitive lists whose patch strategy is "merge" (set union).
fn merges_primitives(field: &str) -> bool {
    matches!(field, "finalizers")
}

/// Strategic merge of `patch` into `original`; `field` is the name of the field being merged.
pub fn strategic_merge(original: &Value, patch: &Value, field: &str) -> Value {
    match (original, patch) {
        (Value::Object(orig), Value::Object(p)) => {
            if p.get("$patch").and_then(Value::as_str) == Some("replace") {
                let mut replaced = p.clone();
                replaced.remove("$patch");
                return Value::Object(strip_directives(replaced));
            }
            let mut out = orig.clone();
            for (key, value) in p {
                if key.starts_with('$') {
                    continue;
                }
                if value.is_null() {
                    out.remove(key);
                    continue;
                }
                let merged = match out.get(key) {
                    Some(existing) => strategic_merge(existing, value, key),
                    None => strip_value(value),
                };
                out.insert(key.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(orig), Value::Array(p)) => merge_lists(orig, p, field),
        (_, p) => strip_value(p),
    }
}

fn merge_lists(orig: &[Value], patch: &[Value], field: &str) -> Value {
    let all: Vec<Value> = orig.iter().chain(patch.iter()).cloned().collect();
    if let Some(key) = merge_key(field, &all) {
        let mut out: Vec<Value> = orig.to_vec();
        for item in patch {
            let id = item.get(key).cloned();
            let position = id
                .as_ref()
                .and_then(|id| out.iter().position(|o| o.get(key) == Some(id)));
            let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
            match (position, delete) {
                (Some(i), true) => {
                    out.remove(i);
                }
                (None, true) => {}
                (Some(i), false) => out[i] = strategic_merge(&out[i], item, field),
                (None, false) => out.push(strip_value(item)),
            }
        }
        return Value::Array(out);
    }
    if merges_primitives(field) {
        let mut out: Vec<Value> = orig.to_vec();
        for item in patch {
            if !out.contains(item) {
                out.push(item.clone());
            }
        }
        return Value::Array(out);
    }
    Value::Array(patch.iter().map(strip_value).collect())
}

fn strip_value(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(strip_directives(map.clone())),
        Value::Array(items) => Value::Array(items.iter().map(strip_value).collect()),
        other => other.clone(),
    }
}

fn strip_directives(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k, strip_value(&v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_keeps_conditions_it_does_not_mention() {
        let pod = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "relaunch.dev/ready", "status": "False"}
        ]}});
        let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        let out = apply(&pod, patch.to_string().as_bytes(), PatchKind::Strategic).unwrap();
        assert_eq!(
            out["status"]["conditions"],
            json!([{"type": "Ready", "status": "False"}, {"type": "relaunch.dev/ready", "status": "False"}])
        );
    }

    #[test]
    fn strategic_merge_merges_containers_by_name_and_ignores_directives() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "image": "x", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "y"}
        ]}});
        let patch = json!({
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "spec": {"containers": [{"name": "b", "image": "z"}, {"name": "c", "image": "w"}]}
        });
        let out = apply(&pod, patch.to_string().as_bytes(), PatchKind::Strategic).unwrap();
        let names: Vec<&str> = out["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["a", "b", "c"]);
        assert_eq!(out["spec"]["containers"][1]["image"], "z");
        assert_eq!(
            out["spec"]["containers"][0]["ports"][0]["containerPort"],
            80
        );
        assert!(out.get("$setElementOrder/containers").is_none());
    }

    #[test]
    fn strategic_merge_deletes_with_null_and_patch_delete() {
        let obj = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
                         "status": {"conditions": [{"type": "A"}, {"type": "B"}]}});
        let patch = json!({"metadata": {"labels": {"a": null}, "finalizers": ["y"]},
                           "status": {"conditions": [{"type": "A", "$patch": "delete"}]}});
        let out = apply(&obj, patch.to_string().as_bytes(), PatchKind::Strategic).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(out["status"]["conditions"], json!([{"type": "B"}]));
    }

    #[test]
    fn merge_patch_replaces_lists_and_json_patch_applies_operations() {
        let obj = json!({"spec": {"list": [1, 2], "keep": true}});
        let out = apply(&obj, br#"{"spec":{"list":[3]}}"#, PatchKind::Merge).unwrap();
        assert_eq!(out, json!({"spec": {"list": [3], "keep": true}}));
        let out = apply(
            &obj,
            br#"[{"op":"replace","path":"/spec/keep","value":false}]"#,
            PatchKind::Json,
        )
        .unwrap();
        assert_eq!(out["spec"]["keep"], false);
        assert!(apply(&obj, b"not json", PatchKind::Merge).is_err());
        assert!(
            apply(
                &obj,
                br#"[{"op":"remove","path":"/nope"}]"#,
                PatchKind::Json
            )
            .is_err()
        );
    }
}
