//! The CRD YAML committed under manifests/crds/ is exactly what the Rust types generate, and
//! its schema refuses what relaunch's own checks refuse (against the test API server).

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use relaunch_api::validation::{
    self, MAX_COMMAND_ARG_LENGTH, MAX_COMMAND_ARGS, MAX_CONTAINERS, MAX_ROLE_VALUES,
};
use relaunch_api::{
    ContainerRecreateRequest, ContainerRecreateRequestSpec, RollingRestart, RollingRestartSpec,
};
use serde_json::{Value, json};
use support::TestApi;

#[test]
fn committed_crds_match_the_rust_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/crds");
    for (file, generated) in relaunch_api::crd_manifests() {
        let committed = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
        assert!(
            committed == generated,
            "manifests/crds/{file} is out of date; regenerate with: cargo run --bin relaunch-coordinator -- crds --dir manifests/crds"
        );
    }
}

/// Every spec in the table is refused by the Rust checks (the coordinator's admission, the
/// agent, the plugin) *and* by the CRD schema at create, with a field path; the valid specs
/// pass both. The schema and `relaunch_api::validation` say the same thing.
#[tokio::test(flavor = "multi_thread")]
async fn the_schema_and_the_rust_checks_refuse_the_same_specs() {
    let api = TestApi::with_relaunch_crds().await;
    let requests: Api<DynamicObject> = Api::namespaced_with(
        api.client.clone(),
        "default",
        &ApiResource::erase::<ContainerRecreateRequest>(&()),
    );
    let rollouts: Api<DynamicObject> = Api::namespaced_with(
        api.client.clone(),
        "default",
        &ApiResource::erase::<RollingRestart>(&()),
    );
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let create = |api: &Api<DynamicObject>, kind: &str, name: &str, spec: &Value| {
        let api = api.clone();
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "relaunch.dev/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": "default"}, "spec": spec,
        }))
        .unwrap();
        let params = dry_run.clone();
        async move { api.create(&params, &object).await }
    };

    let request = json!({"podName": "db-0", "containers": [{"name": "db"}]});
    let valid_requests = [
        request.clone(),
        patched(
            &request,
            json!({"containers": [{"name": "db", "shutdown": {"exec": {"command": ["stop"]}}}], "activeDeadlineSeconds": 86400, "ttlSecondsAfterFinished": 0}),
        ),
        patched(
            &request,
            json!({"containers": [{"name": "db", "shutdown": {"httpGet": {"port": "admin", "path": "/stop", "scheme": "HTTPS", "httpHeaders": [{"name": "X-Reason", "value": "relaunch"}]}}}]}),
        ),
        patched(
            &request,
            json!({"podName": "web-7c9f.x", "strategy": {"terminationGracePeriodSeconds": 0, "unreadyGracePeriodSeconds": 86400, "minStartedSeconds": 10}}),
        ),
    ];
    for spec in &valid_requests {
        let typed: ContainerRecreateRequestSpec = serde_json::from_value(spec.clone()).unwrap();
        assert_eq!(validation::check_spec(&typed), Ok(()), "{spec}");
        create(&requests, "ContainerRecreateRequest", "valid", spec)
            .await
            .unwrap_or_else(|e| panic!("{spec} was refused: {e}"));
    }
    let containers =
        |n: usize| -> Value { (0..n).map(|i| json!({"name": format!("c{i}")})).collect() };
    let shutdown = |action: Value| json!({"containers": [{"name": "db", "shutdown": action}]});
    let http =
        |fields: Value| shutdown(json!({"httpGet": patched(&json!({"port": 8080}), fields)}));
    let invalid_requests = [
        ("spec.podName", json!({"podName": ""})),
        ("spec.podName", json!({"podName": "DB_0"})),
        ("spec.containers", json!({"containers": []})),
        (
            "spec.containers",
            json!({"containers": containers(MAX_CONTAINERS + 1)}),
        ),
        (
            "spec.containers[0].name",
            json!({"containers": [{"name": "Db"}]}),
        ),
        (
            "spec.containers[1]",
            json!({"containers": [{"name": "db"}, {"name": "db"}]}),
        ),
        (
            "spec.activeDeadlineSeconds",
            json!({"activeDeadlineSeconds": 0}),
        ),
        (
            "spec.activeDeadlineSeconds",
            json!({"activeDeadlineSeconds": 86401}),
        ),
        (
            "spec.ttlSecondsAfterFinished",
            json!({"ttlSecondsAfterFinished": -1}),
        ),
        (
            "spec.ttlSecondsAfterFinished",
            json!({"ttlSecondsAfterFinished": 2592001}),
        ),
        (
            "spec.strategy.terminationGracePeriodSeconds",
            json!({"strategy": {"terminationGracePeriodSeconds": -1}}),
        ),
        (
            "spec.strategy.unreadyGracePeriodSeconds",
            json!({"strategy": {"unreadyGracePeriodSeconds": 86401}}),
        ),
        (
            "spec.strategy.minStartedSeconds",
            json!({"strategy": {"minStartedSeconds": -3}}),
        ),
        ("spec.containers[0].shutdown", shutdown(json!({}))),
        (
            "spec.containers[0].shutdown",
            shutdown(json!({"exec": {"command": ["stop"]}, "httpGet": {"port": 80}})),
        ),
        (
            "spec.containers[0].shutdown.exec.command",
            shutdown(json!({"exec": {"command": []}})),
        ),
        (
            "spec.containers[0].shutdown.exec.command",
            shutdown(json!({"exec": {"command": vec!["x"; MAX_COMMAND_ARGS + 1]}})),
        ),
        (
            "spec.containers[0].shutdown.exec.command[0]",
            shutdown(json!({"exec": {"command": ["x".repeat(MAX_COMMAND_ARG_LENGTH + 1)]}})),
        ),
        (
            "spec.containers[0].shutdown.httpGet.host",
            http(json!({"host": "127.0.0.1"})),
        ),
        (
            "spec.containers[0].shutdown.httpGet.port",
            http(json!({"port": 0})),
        ),
        (
            "spec.containers[0].shutdown.httpGet.port",
            http(json!({"port": 70000})),
        ),
        (
            "spec.containers[0].shutdown.httpGet.port",
            http(json!({"port": "Admin_Port"})),
        ),
        (
            "spec.containers[0].shutdown.httpGet.scheme",
            http(json!({"scheme": "TCP"})),
        ),
        (
            "spec.containers[0].shutdown.httpGet.scheme",
            http(json!({"scheme": "http"})),
        ),
        (
            "spec.containers[0].shutdown.httpGet.path",
            http(json!({"path": "/".repeat(1025)})),
        ),
        (
            "spec.containers[0].shutdown.httpGet.httpHeaders",
            http(json!({"httpHeaders": vec![json!({"name": "a", "value": "b"}); 17]})),
        ),
        (
            "spec.containers[0].shutdown.httpGet.httpHeaders[0].name",
            http(json!({"httpHeaders": [{"name": "bad header", "value": "b"}]})),
        ),
        (
            "spec.containers[0].shutdown.httpGet.httpHeaders[0].value",
            http(json!({"httpHeaders": [{"name": "a", "value": "v".repeat(1025)}]})),
        ),
    ];
    for (field, change) in invalid_requests {
        let spec = patched(&request, change);
        let typed: ContainerRecreateRequestSpec = serde_json::from_value(spec.clone()).unwrap();
        assert!(
            validation::check_spec(&typed).is_err(),
            "the Rust checks accept {spec}"
        );
        let refused = create(&requests, "ContainerRecreateRequest", "invalid", &spec).await;
        assert_refused_at(refused, field, &spec);
    }

    let rollout = json!({"target": {"workloadRef": {"kind": "StatefulSet", "name": "db"}}});
    let valid_rollouts = [
        rollout.clone(),
        json!({"target": {"selector": {"matchLabels": {"app": "db"}}}}),
        patched(
            &rollout,
            json!({"containers": ["db", "exporter"], "shutdown": [{"container": "db", "exec": {"command": ["stop"]}}], "activeDeadlineSeconds": 900, "recreateStrategy": {"minStartedSeconds": 5}}),
        ),
        patched(
            &rollout,
            json!({"strategy": {"maxUnavailable": "25%", "partition": 0, "minReadySeconds": 30, "maxFailures": 0, "order": {"role": {"key": "role", "first": ["replica"], "last": ["primary"]}}}}),
        ),
        patched(&rollout, json!({"strategy": {"maxUnavailable": 3}})),
    ];
    for spec in &valid_rollouts {
        let typed: RollingRestartSpec = serde_json::from_value(spec.clone()).unwrap();
        assert_eq!(validation::validate_rollout(&typed), Ok(()), "{spec}");
        create(&rollouts, "RollingRestart", "valid", spec)
            .await
            .unwrap_or_else(|e| panic!("{spec} was refused: {e}"));
    }
    let strategy = |fields: Value| json!({"strategy": fields});
    let invalid_rollouts = [
        ("spec.target", json!({"target": {}})),
        (
            "spec.target",
            json!({"target": {"workloadRef": {"kind": "StatefulSet", "name": "db"}, "selector": {}}}),
        ),
        (
            "spec.target.workloadRef.kind",
            json!({"target": {"workloadRef": {"kind": "CronJob", "name": "db"}}}),
        ),
        (
            "spec.target.workloadRef.name",
            json!({"target": {"workloadRef": {"kind": "StatefulSet", "name": ""}}}),
        ),
        (
            "spec.target.workloadRef.name",
            json!({"target": {"workloadRef": {"kind": "StatefulSet", "name": "DB"}}}),
        ),
        ("spec.containers[1]", json!({"containers": ["db", "db"]})),
        ("spec.containers[0]", json!({"containers": ["Db"]})),
        (
            "spec.containers",
            json!({"containers": (0..=MAX_CONTAINERS).map(|i| format!("c{i}")).collect::<Vec<_>>()}),
        ),
        (
            "spec.shutdown[1]",
            json!({"shutdown": [{"container": "db", "exec": {"command": ["a"]}}, {"container": "db", "exec": {"command": ["b"]}}]}),
        ),
        (
            "spec.shutdown[0]",
            json!({"shutdown": [{"container": "db"}]}),
        ),
        (
            "spec.shutdown[0].httpGet.host",
            json!({"shutdown": [{"container": "db", "httpGet": {"port": 80, "host": "10.0.0.1"}}]}),
        ),
        (
            "spec.activeDeadlineSeconds",
            json!({"activeDeadlineSeconds": 0}),
        ),
        (
            "spec.activeDeadlineSeconds",
            json!({"activeDeadlineSeconds": 86401}),
        ),
        (
            "spec.recreateStrategy.terminationGracePeriodSeconds",
            json!({"recreateStrategy": {"terminationGracePeriodSeconds": -1}}),
        ),
        (
            "spec.strategy.maxUnavailable",
            strategy(json!({"maxUnavailable": 0})),
        ),
        (
            "spec.strategy.maxUnavailable",
            strategy(json!({"maxUnavailable": "150%"})),
        ),
        (
            "spec.strategy.maxUnavailable",
            strategy(json!({"maxUnavailable": "0%"})),
        ),
        (
            "spec.strategy.maxUnavailable",
            strategy(json!({"maxUnavailable": "many"})),
        ),
        (
            "spec.strategy.maxUnavailable",
            strategy(json!({"maxUnavailable": "2"})),
        ),
        (
            "spec.strategy.partition",
            strategy(json!({"partition": -1})),
        ),
        (
            "spec.strategy.minReadySeconds",
            strategy(json!({"minReadySeconds": -1})),
        ),
        (
            "spec.strategy.minReadySeconds",
            strategy(json!({"minReadySeconds": 86401})),
        ),
        (
            "spec.strategy.maxFailures",
            strategy(json!({"maxFailures": -1})),
        ),
        (
            "spec.strategy.order.role.key",
            strategy(json!({"order": {"role": {"key": "", "first": ["a"]}}})),
        ),
        (
            "spec.strategy.order.role.first",
            strategy(
                json!({"order": {"role": {"key": "role", "first": vec!["a"; MAX_ROLE_VALUES + 1]}}}),
            ),
        ),
    ];
    for (field, change) in invalid_rollouts {
        let spec = patched(&rollout, change);
        let typed: RollingRestartSpec = serde_json::from_value(spec.clone()).unwrap();
        assert!(
            validation::validate_rollout(&typed).is_err(),
            "the Rust checks accept {spec}"
        );
        let refused = create(&rollouts, "RollingRestart", "invalid", &spec).await;
        assert_refused_at(refused, field, &spec);
    }
}

/// `base` with `change`'s top-level fields set.
fn patched(base: &Value, change: Value) -> Value {
    let mut merged = base.clone();
    for (key, value) in change.as_object().unwrap() {
        merged[key] = value.clone();
    }
    merged
}

/// A 422 `Invalid` whose causes include `field`.
fn assert_refused_at(refused: Result<DynamicObject, kube::Error>, field: &str, spec: &Value) {
    match refused {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{spec}: {status:?}");
            assert!(
                status.message.contains(&format!("{field}:")),
                "{spec}: the refusal names {field}: {}",
                status.message
            );
        }
        Ok(_) => panic!("the API server accepted {spec}"),
        Err(other) => panic!("{spec}: {other}"),
    }
}

/// A request's spec is fixed once created; a rollout's spec is too, except what paces and
/// stops it. Labels and status stay writable.
#[tokio::test(flavor = "multi_thread")]
async fn a_requests_spec_is_immutable_and_a_rollout_keeps_only_its_pacing_editable() {
    let api = TestApi::with_relaunch_crds().await;
    let requests: Api<ContainerRecreateRequest> = Api::namespaced(api.client.clone(), "default");
    let request: ContainerRecreateRequest = serde_json::from_value(json!({
        "apiVersion": "relaunch.dev/v1alpha1", "kind": "ContainerRecreateRequest",
        "metadata": {"name": "r"}, "spec": {"podName": "db-0", "containers": [{"name": "db"}]},
    }))
    .unwrap();
    requests
        .create(&PostParams::default(), &request)
        .await
        .unwrap();
    let merge = |patch: Value| Patch::Merge(patch);
    let refused = requests
        .patch("r", &PatchParams::default(), &merge(json!({"spec": {"containers": [{"name": "db", "shutdown": {"exec": {"command": ["id"]}}}]}})))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 422 && s.message.contains("cannot be changed once it is created")),
        "{refused:?}"
    );
    requests
        .patch(
            "r",
            &PatchParams::default(),
            &merge(json!({"metadata": {"labels": {"team": "db"}}})),
        )
        .await
        .unwrap();
    requests
        .patch_status(
            "r",
            &PatchParams::default(),
            &merge(json!({"status": {"phase": "Pending"}})),
        )
        .await
        .unwrap();

    let rollouts: Api<RollingRestart> = Api::namespaced(api.client.clone(), "default");
    let rollout: RollingRestart = serde_json::from_value(json!({
        "apiVersion": "relaunch.dev/v1alpha1", "kind": "RollingRestart",
        "metadata": {"name": "rr"}, "spec": {"target": {"workloadRef": {"kind": "StatefulSet", "name": "db"}}},
    }))
    .unwrap();
    rollouts
        .create(&PostParams::default(), &rollout)
        .await
        .unwrap();
    for editable in [
        json!({"spec": {"strategy": {"paused": true}}}),
        json!({"spec": {"strategy": {"maxUnavailable": "50%", "minReadySeconds": 10, "maxFailures": 2, "failurePolicy": "Continue", "respectPodDisruptionBudgets": false}}}),
        json!({"spec": {"abort": true}}),
    ] {
        rollouts
            .patch("rr", &PatchParams::default(), &merge(editable.clone()))
            .await
            .unwrap_or_else(|e| panic!("{editable}: {e}"));
    }
    for (field, fixed) in [
        (
            "spec.target",
            json!({"spec": {"target": {"workloadRef": {"kind": "StatefulSet", "name": "other"}}}}),
        ),
        (
            "spec.shutdown",
            json!({"spec": {"shutdown": [{"container": "db", "exec": {"command": ["id"]}}]}}),
        ),
        ("spec.containers", json!({"spec": {"containers": ["db"]}})),
        (
            "spec.recreateStrategy",
            json!({"spec": {"recreateStrategy": {"minStartedSeconds": 1}}}),
        ),
        (
            "spec.activeDeadlineSeconds",
            json!({"spec": {"activeDeadlineSeconds": 60}}),
        ),
        (
            "spec.strategy.partition",
            json!({"spec": {"strategy": {"partition": 2}}}),
        ),
        (
            "spec.strategy.order",
            json!({"spec": {"strategy": {"order": {"ordinal": "OrdinalAscending"}}}}),
        ),
    ] {
        let refused = rollouts
            .patch("rr", &PatchParams::default(), &merge(fixed.clone()))
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, kube::Error::Api(s) if s.code == 422 && s.message.contains(&format!("{field}: Invalid value")) && s.message.contains("only spec.abort, spec.strategy.paused")),
            "{fixed}: {refused:?}"
        );
    }
}

/// A ScaleDown's schema refuses what `validate_scaledown` refuses (scale to 0 without
/// allowScaleToZero, unbounded commands, negative replicas), and keeps everything but
/// `spec.replicas` fixed once created.
#[tokio::test(flavor = "multi_thread")]
async fn a_scaledowns_schema_bounds_its_commands_and_keeps_all_but_replicas_fixed() {
    use relaunch_api::{ScaleDown, ScaleDownSpec, validate_scaledown};
    let api = TestApi::with_relaunch_crds().await;
    let dynamic: Api<DynamicObject> = Api::namespaced_with(
        api.client.clone(),
        "default",
        &ApiResource::erase::<ScaleDown>(&()),
    );
    let create = |name: &str, spec: &Value| {
        let api = dynamic.clone();
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "relaunch.dev/v1alpha1", "kind": "ScaleDown",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec,
        }))
        .unwrap();
        async move { api.create(&PostParams::default(), &object).await }
    };
    let base = json!({"statefulSetName": "store", "replicas": 1, "decommission": {"command": ["/bin/sh", "-c", "handoff"]}});
    let invalid = [
        ("spec.replicas", json!({"replicas": 0})),
        (
            "spec.replicas",
            json!({"replicas": -1, "allowScaleToZero": true}),
        ),
        (
            "spec.decommission.command",
            json!({"decommission": {"command": []}}),
        ),
        (
            "spec.cancel.command",
            json!({"cancel": {"command": vec!["x"; MAX_COMMAND_ARGS + 1]}}),
        ),
        (
            "spec.statusCheck.command[0]",
            json!({"statusCheck": {"command": ["x".repeat(MAX_COMMAND_ARG_LENGTH + 1)]}}),
        ),
        ("spec.timeoutSeconds", json!({"timeoutSeconds": 0})),
        ("spec.statefulSetName", json!({"statefulSetName": "Store"})),
    ];
    for (i, (field, change)) in invalid.iter().enumerate() {
        let spec = patched(&base, change.clone());
        if let Ok(typed) = serde_json::from_value::<ScaleDownSpec>(spec.clone()) {
            assert!(
                validate_scaledown(&typed).is_err(),
                "the Rust check accepts {spec}"
            );
        }
        assert_refused_at(create(&format!("bad-{i}"), &spec).await, field, &spec);
    }
    let zero = patched(&base, json!({"replicas": 0, "allowScaleToZero": true}));
    create("zero", &zero).await.unwrap();
    create("sd", &base).await.unwrap();
    let scaledowns: Api<ScaleDown> = Api::namespaced(api.client.clone(), "default");
    scaledowns
        .patch(
            "sd",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    let refused = scaledowns
        .patch(
            "sd",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"decommission": {"command": ["rm", "-rf", "/"]}}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 422 && s.message.contains("spec.decommission cannot be changed")),
        "{refused:?}"
    );
}
