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
}
