//! Conversion between versions that share storage: `events.k8s.io/v1` Events are stored as core
//! `v1` Events (as upstream does), so `kubectl describe` sees events written by kube-rs' recorder.

use serde_json::{Map, Value};

use super::resources::ResourceType;

/// Field pairs (events.k8s.io/v1 name, core/v1 name).
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedCount", "count"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedSource", "source"),
];

fn is_events_v1(rt: &ResourceType) -> bool {
    rt.group == "events.k8s.io" && rt.plural == "events"
}

/// The object as stored, from what a client sent to `rt`.
pub fn to_storage(rt: &ResourceType, object: Value) -> Value {
    if rt.group.is_empty() && rt.plural == "secrets" {
        return merge_string_data(object);
    }
    if !is_events_v1(rt) {
        return object;
    }
    rename(object, |from| {
        EVENT_FIELDS
            .iter()
            .find(|(v1, _)| *v1 == from)
            .map(|(_, core)| *core)
    })
}

/// A Secret's write-only `stringData` merged into `data` (base64), taking precedence over the same
/// key in `data`, and dropped, as the API server's conversion does; it is never stored or served.
fn merge_string_data(mut object: Value) -> Value {
    use base64::Engine as _;
    let Some(fields) = object.as_object_mut() else {
        return object;
    };
    let Some(Value::Object(strings)) = fields.remove("stringData") else {
        return object;
    };
    if !fields.get("data").is_some_and(Value::is_object) {
        fields.insert("data".into(), Value::Object(Map::new()));
    }
    if let Some(Value::Object(data)) = fields.get_mut("data") {
        for (key, value) in strings {
            let text = value.as_str().unwrap_or_default();
            let encoded = base64::engine::general_purpose::STANDARD.encode(text);
            data.insert(key, Value::String(encoded));
        }
    }
    object
}

/// The object as `rt` serves it, from storage.
pub fn from_storage(rt: &ResourceType, object: Value) -> Value {
    if !is_events_v1(rt) {
        return object;
    }
    rename(object, |from| {
        EVENT_FIELDS
            .iter()
            .find(|(_, core)| *core == from)
            .map(|(v1, _)| *v1)
    })
}

fn rename(object: Value, map: impl Fn(&str) -> Option<&'static str>) -> Value {
    match object {
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| match map(&k) {
                    Some(new) => (new.to_string(), v),
                    None => (k, v),
                })
                .collect::<Map<String, Value>>(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_v1_round_trip_through_core_storage() {
        let rt = super::super::resources::builtin()
            .into_iter()
            .find(|r| r.group == "events.k8s.io")
            .unwrap();
        let event = json!({"metadata": {"name": "e"}, "regarding": {"kind": "Pod", "name": "p"}, "note": "hi", "reason": "Started"});
        let stored = to_storage(&rt, event.clone());
        assert_eq!(stored["involvedObject"]["name"], "p");
        assert_eq!(stored["message"], "hi");
        assert_eq!(from_storage(&rt, stored), event);
    }

    #[test]
    fn secret_string_data_is_merged_into_data_and_never_stored() {
        let rt = super::super::resources::builtin()
            .into_iter()
            .find(|r| r.group.is_empty() && r.plural == "secrets")
            .unwrap();
        let secret = json!({"metadata": {"name": "s"},
            "data": {"a": "b2xk", "keep": "eA=="},
            "stringData": {"a": "new", "b": "text"}});
        let stored = to_storage(&rt, secret);
        assert_eq!(
            stored,
            json!({"metadata": {"name": "s"}, "data": {"a": "bmV3", "keep": "eA==", "b": "dGV4dA=="}})
        );
        let only_strings = to_storage(&rt, json!({"stringData": {"k": "v"}}));
        assert_eq!(only_strings, json!({"data": {"k": "dg=="}}));
    }
}
