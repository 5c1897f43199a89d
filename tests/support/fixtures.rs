//! Container scripts and the manifests built from them.

use relaunch_testbed::TEST_IMAGE;
use serde_json::{Value, json};

/// A database-like container: ready once started (`/tmp/ready`); exits 0 once `/tmp/shutdown`
/// exists (the shutdown command the tests give creates it) or on SIGTERM.
pub const DATABASE: &str = "trap 'exit 0' TERM; rm -f /tmp/shutdown; touch /tmp/ready; while [ ! -f /tmp/shutdown ]; do sleep 0.1; done; exit 0";

/// Ignores SIGTERM: only SIGKILL ends it. Ready once started.
pub const STUBBORN: &str = "trap '' TERM; touch /tmp/ready; while true; do sleep 0.1; done";

/// Exits 0 as soon as SIGTERM arrives (`wait` is interrupted by a trapped signal).
pub const EXITS_ON_SIGTERM: &str = "trap 'exit 0' TERM; sleep 100000 & wait";

/// A container of the test image running `script` under `sh -c`, Ready while `/tmp/ready`
/// exists (probed every second).
pub fn container(name: &str, script: &str) -> Value {
    json!({"name": name, "image": TEST_IMAGE, "command": ["sh", "-c", script],
           "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1}})
}

/// A pod spec with one [`DATABASE`] container `db` and a 10 s termination grace.
pub fn database_pod_spec() -> Value {
    json!({"terminationGracePeriodSeconds": 10, "containers": [container("db", DATABASE)]})
}

/// A StatefulSet `name` whose pods (label `app=<name>`) have `pod_spec`; Parallel, so that they
/// start at once.
pub fn statefulset(name: &str, replicas: usize, pod_spec: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "podManagementPolicy": "Parallel",
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": pod_spec,
            },
        },
    })
}
