//! The coordinator against the in-process test API server: admission, the authenticated report
//! API (reports, readiness gate, refusals that write nothing) and the lifecycle controllers.

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::{Event, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{CustomResourceExt, ResourceExt};
use relaunch_api::report::{MAX_BODY_BYTES, READINESS_PATH, REPORTS_PATH};
use relaunch_api::{
    ContainerRecreatePhase, ContainerRecreateRequest, LABEL_NODE_NAME, LABEL_POD_UID,
    READINESS_GATE, RecreatePhase,
};
use relaunch_coordinator::leader_election::{LeaderElection, Leadership};
use relaunch_coordinator::report_api::server::ReportLimits;
use relaunch_coordinator::{self as coordinator, Context, ReportListener, Settings};
use relaunch_telemetry::admin::Health;
use relaunch_telemetry::serving::ConnectionLimits;
use relaunch_testbed::{API_AUDIENCE, Component};
use serde_json::{Value, json};
use support::{TestApi, eventually, token};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);
const AGENT_NS: &str = "relaunch-system";
const AGENT_SA: &str = "relaunch-agent";
/// Leader election of the replicas in these tests: fast, in the default proportions.
const LEASE_DURATION: Duration = Duration::from_secs(3);
const RENEW_INTERVAL: Duration = Duration::from_millis(500);
const RENEW_DEADLINE: Duration = Duration::from_secs(2);

/// The coordinator in this process against the test API server, which holds two nodes and
/// three running pods (`db-0` with the readiness gate, on node-1; `web-0` on node-2; `plain-0`
/// on node-1).
struct CoordinatorBed {
    api: TestApi,
    client: kube::Client,
    /// Authenticates as the coordinator's service account (manifests/base's RBAC).
    coordinator_client: kube::Client,
    url: String,
    registry: prometheus::Registry,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), coordinator::CoordinatorError>>>,
}

impl Drop for CoordinatorBed {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl CoordinatorBed {
    async fn start(agent_timeout: Duration) -> CoordinatorBed {
        Self::start_with(agent_timeout, true).await
    }

    /// With `controllers` false only the report API runs (as on a replica without the Lease).
    async fn start_with(agent_timeout: Duration, controllers: bool) -> CoordinatorBed {
        Self::start_limited(agent_timeout, controllers, ReportLimits::default()).await
    }

    /// [`CoordinatorBed::start_with`], the report API serving within `limits`.
    async fn start_limited(
        agent_timeout: Duration,
        controllers: bool,
        limits: ReportLimits,
    ) -> CoordinatorBed {
        let api = TestApi::start().await;
        let client = api.client.clone();
        Api::<CustomResourceDefinition>::all(client.clone())
            .create(&PostParams::default(), &ContainerRecreateRequest::crd())
            .await
            .unwrap();
        // relaunch's namespace and service accounts, and the coordinator's identity: exactly the
        // RBAC manifests/base ships.
        let coordinator_client = api.relaunch_client(Component::Coordinator).await;
        Api::<ServiceAccount>::namespaced(client.clone(), "default")
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "intruder"}})).unwrap(),
            )
            .await
            .unwrap();
        for node in ["node-1", "node-2"] {
            create(
                &client,
                "nodes",
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}),
            )
            .await;
        }
        running_pod(&client, "db-0", Some("node-1"), true).await;
        running_pod(&client, "web-0", Some("node-2"), false).await;
        running_pod(&client, "plain-0", Some("node-1"), false).await;

        let registry = prometheus::Registry::new();
        let settings = Settings {
            agent_timeout,
            ..Settings::default()
        };
        let ctx = Context::new(coordinator_client.clone(), settings, &registry).unwrap();
        let listener = ReportListener::bind("127.0.0.1:0".parse().unwrap(), None)
            .await
            .unwrap()
            .with_limits(limits);
        let url = format!("http://{}", listener.local_addr().unwrap());
        let health = Arc::new(Health::default());
        let shutdown = CancellationToken::new();
        let task = if controllers {
            let task = tokio::spawn(coordinator::run(
                ctx,
                listener,
                health.clone(),
                shutdown.clone(),
            ));
            eventually("the coordinator is ready", WAIT, || {
                let ready = health.is_ready();
                async move { ready.then_some(()) }
            })
            .await
            .unwrap();
            task
        } else {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                coordinator::report_api::server::serve(listener, ctx, shutdown).await;
                Ok(())
            })
        };
        CoordinatorBed {
            api,
            client,
            coordinator_client,
            url,
            registry,
            shutdown,
            task: Some(task),
        }
    }

    /// Another coordinator replica on the same API server, with the controllers leader-elected
    /// on the Lease `relaunch-system/relaunch-coordinator` (as the binary runs them).
    async fn replica(&self, identity: &str, agent_timeout: Duration) -> Replica {
        let registry = prometheus::Registry::new();
        let settings = Settings {
            agent_timeout,
            instance: identity.into(),
            leader_election: Some(LeaderElection {
                lease_duration: LEASE_DURATION,
                renew_interval: RENEW_INTERVAL,
                renew_deadline: RENEW_DEADLINE,
                ..LeaderElection::new(AGENT_NS, "relaunch-coordinator", identity)
            }),
            ..Settings::default()
        };
        let ctx = Context::new(self.coordinator_client.clone(), settings, &registry).unwrap();
        let listener = ReportListener::bind("127.0.0.1:0".parse().unwrap(), None)
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let health = Arc::new(Health::default());
        let task = tokio::spawn(coordinator::run(ctx, listener, health, shutdown.clone()));
        Replica {
            url,
            registry,
            shutdown,
            _task: task,
        }
    }

    /// How many status writes the coordinator's service account made to requests so far.
    fn status_writes(&self) -> u64 {
        self.coordinator_calls("patch", "containerrecreaterequests/status")
    }

    /// How many lists of `resource` the coordinator's service account made so far (a watch's
    /// initial list, and its relists).
    fn lists(&self, resource: &str) -> u64 {
        self.coordinator_calls("list", resource)
    }

    /// How many calls of `verb` on `resource` the coordinator's service account made so far.
    fn coordinator_calls(&self, verb: &str, resource: &str) -> u64 {
        self.api
            .server
            .request_counts()
            .iter()
            .filter(|(kind, _)| {
                kind.user.contains("relaunch-coordinator")
                    && kind.verb == verb
                    && kind.resource == resource
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// Installs the ScaleDown CRD and creates ScaleDown `shrink` (of StatefulSet `db`, no status).
    async fn scaledown_shrink(&self) -> (Api<relaunch_api::ScaleDown>, relaunch_api::ScaleDown) {
        use relaunch_api::ScaleDown;
        Api::<CustomResourceDefinition>::all(self.client.clone())
            .create(&PostParams::default(), &ScaleDown::crd())
            .await
            .unwrap();
        let scaledowns: Api<ScaleDown> = Api::namespaced(self.client.clone(), "default");
        let sd: ScaleDown = serde_json::from_value(json!({
            "apiVersion": "relaunch.dev/v1alpha1", "kind": "ScaleDown",
            "metadata": {"name": "shrink"},
            "spec": {"statefulSetName": "db", "replicas": 1, "decommission": {"command": ["handoff"]}},
        }))
        .unwrap();
        let sd = eventually("the ScaleDown CRD to serve", WAIT, || async {
            scaledowns.create(&PostParams::default(), &sd).await.ok()
        })
        .await
        .unwrap();
        (scaledowns, sd)
    }

    fn requests(&self) -> Api<ContainerRecreateRequest> {
        Api::default_namespaced(self.client.clone())
    }

    fn pods(&self) -> Api<Pod> {
        Api::default_namespaced(self.client.clone())
    }

    /// A token of the agents' service account bound to `node`, for `audience`.
    async fn node_token(&self, node: &str, audience: &str) -> String {
        token(
            &self.client,
            AGENT_NS,
            AGENT_SA,
            audience,
            Some(json!({"apiVersion": "v1", "kind": "Node", "name": node})),
        )
        .await
    }

    async fn create_request(
        &self,
        name: &str,
        pod: &str,
        containers: &[&str],
        extra: Value,
    ) -> ContainerRecreateRequest {
        let mut body = json!({
            "apiVersion": "relaunch.dev/v1alpha1", "kind": "ContainerRecreateRequest",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"podName": pod, "containers": containers.iter().map(|c| json!({"name": c})).collect::<Vec<_>>()}
        });
        if let (Some(spec), Some(extra)) = (body["spec"].as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        self.requests()
            .create(
                &PostParams::default(),
                &serde_json::from_value(body).unwrap(),
            )
            .await
            .unwrap()
    }

    /// Waits until the request has a status for which `check` holds.
    async fn wait_for(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&ContainerRecreateRequest) -> bool,
    ) -> ContainerRecreateRequest {
        let api = self.requests();
        eventually(what, WAIT, || {
            let api = api.clone();
            let check = &check;
            async move { api.get_opt(name).await.ok().flatten().filter(|r| check(r)) }
        })
        .await
        .unwrap()
    }

    /// Waits until the request has Failed.
    async fn failed(&self, name: &str, what: &str) -> ContainerRecreateRequest {
        self.wait_for(name, what, |r| {
            r.status
                .as_ref()
                .is_some_and(|s| s.phase == RecreatePhase::Failed)
        })
        .await
    }

    async fn admitted(
        &self,
        name: &str,
        pod: &str,
        containers: &[&str],
    ) -> ContainerRecreateRequest {
        self.create_request(name, pod, containers, json!({})).await;
        self.wait_for(name, "admission", |r| {
            r.status
                .as_ref()
                .is_some_and(|s| s.phase == RecreatePhase::Pending)
                && r.labels().contains_key(LABEL_NODE_NAME)
        })
        .await
    }

    async fn post(&self, path: &str, token: Option<&str>, body: impl Into<Bytes>) -> (u16, Value) {
        self.send("POST", path, token, "application/json", body.into())
            .await
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Bytes,
    ) -> (u16, Value) {
        send_to(&self.url, method, path, token, content_type, body).await
    }

    fn counter(&self, name: &str, label: &str) -> u64 {
        counter(&self.registry, name, label)
    }

    async fn events(&self, object: &str) -> Vec<(String, String)> {
        Api::<Event>::default_namespaced(self.client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(object))
            .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect()
    }
}

/// Sends one HTTP request to the report API at `url`.
async fn send_to(
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: Bytes,
) -> (u16, Value) {
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("{url}{path}"))
        .header("content-type", content_type);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = client
        .request(request.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let code = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// The sum of counter `name` over the series with a label valued `label`.
fn counter(registry: &prometheus::Registry, name: &str, label: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| m.get_label().iter().any(|l| l.value() == label))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// The value of gauge `name`.
fn gauge(registry: &prometheus::Registry, name: &str) -> Option<f64> {
    registry
        .gather()
        .iter()
        .find(|f| f.name() == name)
        .and_then(|f| f.get_metric().first().map(|m| m.get_gauge().get_value()))
}

/// A coordinator replica started by [`CoordinatorBed::replica`]; stops when dropped.
struct Replica {
    url: String,
    registry: prometheus::Registry,
    shutdown: CancellationToken,
    _task: tokio::task::JoinHandle<Result<(), coordinator::CoordinatorError>>,
}

impl Replica {
    fn leads(&self) -> bool {
        gauge(&self.registry, "relaunch_coordinator_leader") == Some(1.0)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn create(client: &kube::Client, plural: &str, object: Value) {
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("", "v1", object["kind"].as_str().unwrap()),
        plural,
    );
    Api::<kube::api::DynamicObject>::all_with(client.clone(), &ar)
        .create(
            &PostParams::default(),
            &serde_json::from_value(object).unwrap(),
        )
        .await
        .unwrap();
}

async fn running_pod(client: &kube::Client, name: &str, node: Option<&str>, gated: bool) -> Pod {
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let gates = if gated {
        json!([{"conditionType": READINESS_GATE}])
    } else {
        json!([])
    };
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "readinessGates": gates,
            "containers": [{"name": "app", "image": "relaunch.test/busybox:1"}, {"name": "sidecar", "image": "relaunch.test/busybox:1"}]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let mut conditions = vec![json!({"type": "Ready", "status": "True"})];
    if gated {
        conditions.push(json!({"type": READINESS_GATE, "status": "True"}));
    }
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "conditions": conditions}})),
    )
    .await
    .unwrap()
}

fn report(crr: &ContainerRecreateRequest, phase: &str, container: Value) -> Value {
    json!({
        "request": {"namespace": "default", "name": crr.name_any(), "uid": crr.uid().unwrap()},
        "sequence": 1,
        "phase": phase,
        "containers": [container],
    })
}

fn bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap())
}

fn message(r: &ContainerRecreateRequest) -> String {
    r.status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn admission_labels_valid_requests_and_fails_invalid_ones_with_clear_messages() {
    let bed = CoordinatorBed::start(Duration::from_secs(300)).await;
    let db = bed.pods().get("db-0").await.unwrap();
    let valid = bed.admitted("valid", "db-0", &["app"]).await;
    assert_eq!(valid.labels()[LABEL_NODE_NAME], "node-1");
    assert_eq!(valid.labels()[LABEL_POD_UID], db.uid().unwrap());

    let pods = bed.pods();
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "unscheduled"}, "spec": {"containers": [{"name": "app", "image": "x"}]}})).unwrap(),
    )
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "starting"}, "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "x"}]}})).unwrap(),
    )
    .await
    .unwrap();

    // What the request alone gets wrong the API server refuses at create (the CRD schema); the
    // coordinator's check of it stays for requests stored before the schema said so.
    for (name, containers, extra) in [
        ("duplicate", &["app", "app"][..], json!({})),
        (
            "negative",
            &["app"][..],
            json!({"strategy": {"minStartedSeconds": -1}}),
        ),
        ("empty", &[][..], json!({})),
    ] {
        let mut body = json!({
            "apiVersion": "relaunch.dev/v1alpha1", "kind": "ContainerRecreateRequest",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"podName": "db-0", "containers": containers.iter().map(|c| json!({"name": c})).collect::<Vec<_>>()}
        });
        if let (Some(spec), Some(extra)) = (body["spec"].as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        let refused = bed
            .requests()
            .create(
                &PostParams::default(),
                &serde_json::from_value(body).unwrap(),
            )
            .await;
        assert!(
            matches!(&refused, Err(kube::Error::Api(s)) if s.code == 422),
            "{name}: {refused:?}"
        );
    }

    let cases: [(&str, &str, &[&str], Value, &str); 4] = [
        (
            "no-pod",
            "nope",
            &["app"],
            json!({}),
            "pod nope not found in namespace default",
        ),
        (
            "unscheduled",
            "unscheduled",
            &["app"],
            json!({}),
            "not scheduled",
        ),
        (
            "not-running",
            "starting",
            &["app"],
            json!({}),
            "not Running",
        ),
        (
            "unknown",
            "db-0",
            &["app", "ghost"],
            json!({}),
            "has no container ghost",
        ),
    ];
    for (name, pod, containers, extra, _) in &cases {
        bed.create_request(name, pod, containers, extra.clone())
            .await;
    }
    for (name, _, _, _, expected) in &cases {
        let failed = bed.failed(name, "refusal").await;
        assert!(
            message(&failed).contains(expected),
            "{name}: {:?}",
            message(&failed)
        );
        assert!(failed.status.unwrap().completion_time.is_some());
    }
    let events = eventually("a Refused event", WAIT, || async {
        let events = bed.events("unknown").await;
        events
            .iter()
            .any(|(reason, _)| reason == "Refused")
            .then_some(events)
    })
    .await
    .unwrap();
    assert!(
        events.iter().any(|(_, m)| m.contains("ghost")),
        "{events:?}"
    );
    assert!(bed.counter("relaunch_coordinator_crr_total", "refused") >= 4);
}

#[tokio::test]
async fn reports_move_status_forward_and_stale_or_repeated_reports_write_nothing() {
    let bed = CoordinatorBed::start(Duration::from_secs(300)).await;
    let crr = bed.admitted("restart-db", "db-0", &["app"]).await;
    let token = bed.node_token("node-1", "relaunch-coordinator").await;

    let stopping = report(
        &crr,
        "Recreating",
        json!({"name": "app", "phase": "Stopping", "previousContainerId": "containerd://old", "timestamps": {"shutdown": "2025-01-01T00:00:00Z", "stop": "2025-01-01T00:00:02Z"}}),
    );
    let (code, body) = bed.post(REPORTS_PATH, Some(&token), bytes(&stopping)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["phase"], "Recreating");

    let waiting = report(
        &crr,
        "Recreating",
        json!({"name": "app", "phase": "WaitingForRestart", "previousContainerId": "containerd://old"}),
    );
    assert_eq!(
        bed.post(REPORTS_PATH, Some(&token), bytes(&waiting))
            .await
            .0,
        200
    );
    let after = bed.requests().get("restart-db").await.unwrap();
    let state = &after.status.as_ref().unwrap().container_recreate_states[0];
    assert_eq!(format!("{:?}", state.phase), "WaitingForRestart");
    assert!(
        state.timestamps.stop.is_some(),
        "timestamps from the earlier report are kept"
    );

    // A stale report (from before the stop) and a repeated one change nothing.
    let rv = after.resource_version();
    for again in [&stopping, &waiting] {
        let (code, body) = bed.post(REPORTS_PATH, Some(&token), bytes(again)).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            bed.requests()
                .get("restart-db")
                .await
                .unwrap()
                .resource_version(),
            rv
        );
    }
    assert!(bed.counter("relaunch_coordinator_reports_total", "unchanged") >= 2);

    let done = report(
        &crr,
        "Succeeded",
        json!({"name": "app", "phase": "Succeeded", "previousContainerId": "containerd://old", "newContainerId": "containerd://new", "restartCount": 1}),
    );
    assert_eq!(
        bed.post(REPORTS_PATH, Some(&token), bytes(&done)).await.0,
        200
    );
    let finished = bed.requests().get("restart-db").await.unwrap();
    let status = finished.status.as_ref().unwrap();
    assert_eq!(status.phase, RecreatePhase::Succeeded);
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    assert_eq!(
        status.container_recreate_states[0]
            .new_container_id
            .as_deref(),
        Some("containerd://new")
    );

    // A late Recreating report after success changes nothing.
    let (code, body) = bed.post(REPORTS_PATH, Some(&token), bytes(&stopping)).await;
    assert_eq!(code, 200);
    assert_eq!(body["phase"], "Succeeded");
    assert_eq!(
        bed.requests()
            .get("restart-db")
            .await
            .unwrap()
            .resource_version(),
        finished.resource_version()
    );

    for object in ["restart-db", "db-0"] {
        let events = eventually("the steps' events", WAIT, || async {
            let events = bed.events(object).await;
            let reasons: Vec<&str> = events.iter().map(|(r, _)| r.as_str()).collect();
            [
                "Recreating",
                "ContainerStopped",
                "ContainerRestarted",
                "Succeeded",
            ]
            .iter()
            .all(|r| reasons.contains(r))
            .then_some(events)
        })
        .await
        .unwrap();
        let restarted = events
            .iter()
            .find(|(r, _)| r == "ContainerRestarted")
            .unwrap();
        assert!(
            restarted.1.contains("containerd://old -> containerd://new"),
            "{restarted:?}"
        );
    }
    assert_eq!(
        bed.counter("relaunch_coordinator_crr_total", "succeeded"),
        1
    );
}

#[tokio::test]
async fn a_token_bound_to_the_agent_pod_identifies_its_node() {
    let bed = CoordinatorBed::start(Duration::from_secs(300)).await;
    let crr = bed.admitted("via-pod", "db-0", &["app"]).await;
    let agents: Api<Pod> = Api::namespaced(bed.client.clone(), AGENT_NS);
    let agent: Pod = serde_json::from_value(json!({"metadata": {"name": "agent-1"}, "spec": {"nodeName": "node-1", "containers": [{"name": "agent", "image": "x"}]}})).unwrap();
    let agent = agents.create(&PostParams::default(), &agent).await.unwrap();
    let token = token(
        &bed.client,
        AGENT_NS,
        AGENT_SA,
        "relaunch-coordinator",
        Some(json!({"apiVersion": "v1", "kind": "Pod", "name": "agent-1", "uid": agent.uid()})),
    )
    .await;
    let r = report(
        &crr,
        "Recreating",
        json!({"name": "app", "phase": "ShuttingDown"}),
    );
    let (code, body) = bed.post(REPORTS_PATH, Some(&token), bytes(&r)).await;
    assert_eq!(code, 200, "{body}");
}

#[tokio::test]
async fn bad_requests_get_the_right_code_and_change_nothing() {
    let bed = CoordinatorBed::start(Duration::from_secs(300)).await;
    let crr = bed.admitted("guarded", "db-0", &["app"]).await;
    let web = bed.admitted("guarded-web", "web-0", &["app"]).await;
    let rv = crr.resource_version();
    let web_rv = web.resource_version();
    let good = bed.node_token("node-1", "relaunch-coordinator").await;
    let other_node = bed.node_token("node-2", "relaunch-coordinator").await;
    let wrong_audience = bed.node_token("node-1", API_AUDIENCE).await;
    let intruder = token(
        &bed.client,
        "default",
        "intruder",
        "relaunch-coordinator",
        Some(json!({"apiVersion": "v1", "kind": "Node", "name": "node-1"})),
    )
    .await;
    let expired = bed.node_token("node-1", "relaunch-coordinator").await;
    bed.api.server.expire_token(&expired);
    let stopping = || {
        report(
            &crr,
            "Recreating",
            json!({"name": "app", "phase": "Stopping"}),
        )
    };
    let valid = bytes(&stopping());
    let mut unknown = stopping();
    unknown["request"]["name"] = json!("nope");
    let mut wrong_uid = stopping();
    wrong_uid["request"]["uid"] = json!("00000000-0000-0000-0000-000000000000");
    let mut extra_field = stopping();
    extra_field["surprise"] = json!(true);
    let mut traversal = stopping();
    traversal["request"]["name"] = json!("../../../api/v1/secrets");
    // The pod the agent names does not decide whose pod it is: the request's does.
    let mut hint_of_own_pod = report(
        &web,
        "Recreating",
        json!({"name": "app", "phase": "Stopping"}),
    );
    hint_of_own_pod["podName"] = json!("db-0");
    let mut hint_traversal = stopping();
    hint_traversal["podName"] = json!("../../../api/v1/secrets");
    let huge = {
        let mut r = stopping();
        r["message"] = json!("x".repeat(MAX_BODY_BYTES));
        bytes(&r)
    };

    let cases: Vec<(&str, Option<&str>, Bytes, u16, &str)> = vec![
        ("no token", None, valid.clone(), 401, "Unauthenticated"),
        (
            "garbage token",
            Some("not-a-token"),
            valid.clone(),
            401,
            "Unauthenticated",
        ),
        (
            "expired token",
            Some(&expired),
            valid.clone(),
            401,
            "Unauthenticated",
        ),
        (
            "wrong audience",
            Some(&wrong_audience),
            valid.clone(),
            401,
            "Unauthenticated",
        ),
        (
            "wrong service account",
            Some(&intruder),
            valid.clone(),
            401,
            "Unauthenticated",
        ),
        (
            "another node's pod",
            Some(&other_node),
            valid.clone(),
            403,
            "Forbidden",
        ),
        (
            "another node's request naming this node's pod",
            Some(&good),
            bytes(&hint_of_own_pod),
            403,
            "Forbidden",
        ),
        (
            "pod name traversal",
            Some(&good),
            bytes(&hint_traversal),
            400,
            "BadRequest",
        ),
        (
            "garbage JSON",
            Some(&good),
            Bytes::from_static(b"{not json"),
            400,
            "BadRequest",
        ),
        (
            "unknown field",
            Some(&good),
            bytes(&extra_field),
            400,
            "BadRequest",
        ),
        (
            "path traversal",
            Some(&good),
            bytes(&traversal),
            400,
            "BadRequest",
        ),
        ("huge body", Some(&good), huge, 413, "PayloadTooLarge"),
        (
            "unknown request",
            Some(&good),
            bytes(&unknown),
            404,
            "NotFound",
        ),
        (
            "request re-created",
            Some(&good),
            bytes(&wrong_uid),
            404,
            "NotFound",
        ),
    ];
    for (what, token, body, code, reason) in cases {
        let (got, answer) = bed.post(REPORTS_PATH, token, body).await;
        assert_eq!(got, code, "{what}: {answer}");
        assert_eq!(answer["error"]["reason"], reason, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{what}");
        assert!(
            !answer["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{what}"
        );
    }
    let (code, _) = bed
        .send(
            "GET",
            REPORTS_PATH,
            Some(&good),
            "application/json",
            Bytes::new(),
        )
        .await;
    assert_eq!(code, 405);
    let (code, _) = bed
        .send(
            "POST",
            REPORTS_PATH,
            Some(&good),
            "text/plain",
            valid.clone(),
        )
        .await;
    assert_eq!(code, 415);
    // node-1's agent may not hold node-2's pod NotReady either.
    let hold = json!({"request": {"namespace": "default", "name": "guarded-web", "uid": web.uid()}, "ready": false});
    assert_eq!(
        bed.post(READINESS_PATH, Some(&good), bytes(&hold)).await.0,
        403
    );

    assert_eq!(
        bed.requests()
            .get("guarded")
            .await
            .unwrap()
            .resource_version(),
        rv
    );
    assert_eq!(
        bed.requests()
            .get("guarded-web")
            .await
            .unwrap()
            .resource_version(),
        web_rv
    );
    for reason in [
        "missing_token",
        "invalid_token",
        "wrong_audience",
        "wrong_service_account",
        "wrong_node",
    ] {
        assert!(
            bed.counter("relaunch_coordinator_auth_failures_total", reason) >= 1,
            "{reason}"
        );
    }
    // And the right agent still gets through, naming the pod or not.
    assert_eq!(bed.post(REPORTS_PATH, Some(&good), valid).await.0, 200);
    let mut named = stopping();
    named["podName"] = json!("db-0");
    assert_eq!(
        bed.post(REPORTS_PATH, Some(&good), bytes(&named)).await.0,
        200
    );
}

#[tokio::test]
async fn a_report_with_times_from_the_future_is_refused_and_changes_nothing() {
    let bed = CoordinatorBed::start(Duration::from_secs(300)).await;
    let crr = bed.admitted("future", "db-0", &["app"]).await;
    let rv = crr.resource_version();
    let token = bed.node_token("node-1", "relaunch-coordinator").await;
    let step_time = report(
        &crr,
        "Recreating",
        json!({"name": "app", "phase": "Stopping", "timestamps": {"stop": "9999-12-30T21:59:00Z"}}),
    );
    let mut start_time = report(
        &crr,
        "Recreating",
        json!({"name": "app", "phase": "Stopping"}),
    );
    start_time["startTime"] = json!("9999-12-30T21:59:00Z");
    for (what, body) in [("step time", step_time), ("start time", start_time)] {
        let (code, answer) = bed.post(REPORTS_PATH, Some(&token), bytes(&body)).await;
        assert_eq!(code, 400, "{what}: {answer}");
        assert_eq!(answer["error"]["reason"], "BadRequest", "{what}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("9999-12-30T21:59:00Z"),
            "{what}: {answer}"
        );
    }
    let unchanged = bed.requests().get("future").await.unwrap();
    assert_eq!(unchanged.resource_version(), rv);
    assert_eq!(unchanged.status, crr.status);

    // The coordinator is still there: a sound report is merged, and the controllers still run.
    let sound = report(
        &crr,
        "Recreating",
        json!({"name": "app", "phase": "Stopping"}),
    );
    let (code, answer) = bed.post(REPORTS_PATH, Some(&token), bytes(&sound)).await;
    assert_eq!(code, 200, "{answer}");
    bed.admitted("after-future", "web-0", &["app"]).await;
    assert!(!bed.task.as_ref().unwrap().is_finished());
}

#[tokio::test]
async fn readiness_requests_flip_the_pods_gate_condition_and_keep_the_others() {
    let bed = CoordinatorBed::start(Duration::from_secs(300)).await;
    let crr = bed.admitted("drain", "db-0", &["app"]).await;
    let token = bed.node_token("node-1", "relaunch-coordinator").await;
    let request = |ready: bool| {
        bytes(
            &json!({"request": {"namespace": "default", "name": "drain", "uid": crr.uid()}, "ready": ready}),
        )
    };
    let gate = |pod: &Pod| {
        let conditions = pod
            .status
            .as_ref()
            .unwrap()
            .conditions
            .clone()
            .unwrap_or_default();
        let gate = conditions
            .iter()
            .find(|c| c.type_ == READINESS_GATE)
            .cloned()
            .unwrap();
        assert!(
            conditions.iter().any(|c| c.type_ == "Ready"),
            "other conditions stay"
        );
        gate
    };

    let (code, answer) = bed.post(READINESS_PATH, Some(&token), request(false)).await;
    assert_eq!(
        (code, answer["gated"].clone()),
        (200, json!(true)),
        "{answer}"
    );
    let held = gate(&bed.pods().get("db-0").await.unwrap());
    assert_eq!(held.status, "False");
    assert_eq!(held.reason.as_deref(), Some("RecreateRequested"));
    assert!(held.message.unwrap().contains("default/drain"));

    let (code, _) = bed.post(READINESS_PATH, Some(&token), request(true)).await;
    assert_eq!(code, 200);
    assert_eq!(gate(&bed.pods().get("db-0").await.unwrap()).status, "True");

    // A pod without the gate: answered, nothing written.
    let plain = bed.admitted("plain", "plain-0", &["app"]).await;
    let before = bed.pods().get("plain-0").await.unwrap().resource_version();
    let hold = json!({"request": {"namespace": "default", "name": "plain", "uid": plain.uid()}, "ready": false});
    let (code, answer) = bed.post(READINESS_PATH, Some(&token), bytes(&hold)).await;
    assert_eq!(code, 200);
    assert_eq!(answer["gated"], false);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("readinessGates"),
        "{answer}"
    );
    assert_eq!(
        bed.pods().get("plain-0").await.unwrap().resource_version(),
        before
    );
}

#[tokio::test]
async fn deadline_pod_deletion_and_ttl_end_requests_and_the_gate_is_released() {
    let bed = CoordinatorBed::start(Duration::from_secs(300)).await;
    let token = bed.node_token("node-1", "relaunch-coordinator").await;

    // Deadline exceeded while the pod is held NotReady: Failed, and the gate is released.
    bed.create_request(
        "late",
        "db-0",
        &["app"],
        json!({"activeDeadlineSeconds": 2, "ttlSecondsAfterFinished": 3600}),
    )
    .await;
    let crr = bed
        .wait_for("late", "admission", |r| r.status.is_some())
        .await;
    let hold = json!({"request": {"namespace": "default", "name": "late", "uid": crr.uid()}, "ready": false});
    assert_eq!(
        bed.post(READINESS_PATH, Some(&token), bytes(&hold)).await.0,
        200
    );
    // The agent is in the middle of the shutdown action when the deadline passes.
    let shutting_down = report(
        &crr,
        "Recreating",
        json!({"name": "app", "phase": "ShuttingDown"}),
    );
    let (code, reported) = bed
        .post(REPORTS_PATH, Some(&token), bytes(&shutting_down))
        .await;
    assert_eq!(code, 200, "{reported}");
    let failed = bed.failed("late", "deadline").await;
    assert!(
        message(&failed).starts_with("deadline exceeded"),
        "{}",
        message(&failed)
    );
    // No container is left in a step that is still going on (OpenKruise #2353).
    let states = &failed.status.as_ref().unwrap().container_recreate_states;
    assert_eq!(states.len(), 1, "{states:?}");
    assert_eq!(states[0].phase, ContainerRecreatePhase::Failed);
    let said = states[0].message.clone().unwrap_or_default();
    // The report normally lands well within the 2 s; if the deadline won the race, the
    // container never started.
    if reported["phase"] == "Recreating" {
        assert!(
            said.starts_with(
                "interrupted: the request failed while this container was ShuttingDown (deadline exceeded"
            ),
            "{said}"
        );
    } else {
        assert!(said.starts_with("not started: "), "{said}");
    }
    assert!(states[0].timestamps.finished.is_some());
    let pods = bed.pods();
    eventually("the gate is released", WAIT, || async {
        let pod = pods.get("db-0").await.ok()?;
        let conditions = pod.status?.conditions?;
        conditions
            .iter()
            .any(|c| c.type_ == READINESS_GATE && c.status == "True")
            .then_some(())
    })
    .await
    .unwrap();

    // TTL: a finished request is deleted once ttlSecondsAfterFinished has passed.
    // (A request's spec is immutable: the TTL is set at creation.)
    bed.create_request(
        "quick",
        "db-0",
        &["app"],
        json!({"ttlSecondsAfterFinished": 0}),
    )
    .await;
    let quick = bed
        .wait_for("quick", "admission", |r| {
            r.status
                .as_ref()
                .is_some_and(|s| s.phase == RecreatePhase::Pending)
                && r.labels().contains_key(LABEL_NODE_NAME)
        })
        .await;
    let done = report(
        &quick,
        "Succeeded",
        json!({"name": "app", "phase": "Succeeded"}),
    );
    assert_eq!(
        bed.post(REPORTS_PATH, Some(&token), bytes(&done)).await.0,
        200
    );
    let api = bed.requests();
    eventually("the TTL deletes the request", WAIT, || async {
        api.get_opt("quick").await.ok()?.is_none().then_some(())
    })
    .await
    .unwrap();

    // The pod deleted mid-way: Failed.
    bed.admitted("orphan", "web-0", &["app"]).await;
    bed.pods()
        .delete("web-0", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let orphan = bed.failed("orphan", "pod deletion").await;
    assert!(
        message(&orphan).contains("pod web-0 was deleted"),
        "{}",
        message(&orphan)
    );
    assert!(bed.counter("relaunch_coordinator_crr_total", "deadline_exceeded") == 1);
    assert!(bed.counter("relaunch_coordinator_crr_total", "pod_gone") == 1);
}

#[tokio::test]
async fn a_silent_agent_fails_the_request_naming_its_node() {
    let bed = CoordinatorBed::start(Duration::from_secs(1)).await;
    bed.create_request("unheard", "db-0", &["app"], json!({}))
        .await;
    let failed = bed.failed("unheard", "agent timeout").await;
    assert!(
        message(&failed).contains("agent on node node-1"),
        "{}",
        message(&failed)
    );
}

#[tokio::test]
async fn shutdown_stops_the_coordinator_cleanly() {
    let mut bed = CoordinatorBed::start(Duration::from_secs(300)).await;
    bed.shutdown.cancel();
    let result = tokio::time::timeout(WAIT, bed.task.take().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn a_report_before_admission_admits_the_request_or_fails_an_invalid_one() {
    let bed = CoordinatorBed::start_with(Duration::from_secs(300), false).await;
    let token = bed.node_token("node-1", "relaunch-coordinator").await;
    let early = bed
        .create_request("early", "db-0", &["app"], json!({}))
        .await;
    let r = report(
        &early,
        "Recreating",
        json!({"name": "app", "phase": "ShuttingDown"}),
    );
    let (code, body) = bed.post(REPORTS_PATH, Some(&token), bytes(&r)).await;
    assert_eq!(code, 200, "{body}");
    let early = bed.requests().get("early").await.unwrap();
    assert_eq!(
        early.status.as_ref().unwrap().phase,
        RecreatePhase::Recreating
    );
    assert_eq!(early.labels()[LABEL_NODE_NAME], "node-1");
    assert!(early.labels().contains_key(LABEL_POD_UID));

    // Invalid for the pod (the schema cannot know its containers).
    let bad = bed
        .create_request("bad", "db-0", &["ghost"], json!({}))
        .await;
    let r = report(
        &bad,
        "Recreating",
        json!({"name": "ghost", "phase": "ShuttingDown"}),
    );
    let (code, body) = bed.post(REPORTS_PATH, Some(&token), bytes(&r)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["phase"], "Failed");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("has no container ghost"),
        "{body}"
    );
}

/// Issue 15: the report that admits a request (the agent's first) does not admit it while a
/// ScaleDown decommissions its pod: 409 and nothing written, as the request controller waits
/// too; once the ScaleDown is done with the pod, the same report admits it. (A replica without
/// the Lease, so the report API reads the ScaleDowns from the API.)
#[tokio::test]
async fn a_first_report_does_not_admit_a_request_whose_pod_a_scaledown_decommissions() {
    let bed = CoordinatorBed::start_with(Duration::from_secs(300), false).await;
    let (scaledowns, _) = bed.scaledown_shrink().await;
    let db = bed.pods().get("db-0").await.unwrap();
    let phase = |phase: &str| {
        Patch::Merge(json!({"status": {"phase": phase, "current": {
            "ordinal": 0, "podName": "db-0", "podUID": db.uid().unwrap(),
        }}}))
    };
    scaledowns
        .patch_status("shrink", &PatchParams::default(), &phase("Running"))
        .await
        .unwrap();
    let token = bed.node_token("node-1", "relaunch-coordinator").await;
    let held = bed
        .create_request("held", "db-0", &["app"], json!({}))
        .await;
    let first = bytes(&report(
        &held,
        "Recreating",
        json!({"name": "app", "phase": "ShuttingDown"}),
    ));
    let writes = bed.status_writes();
    let (code, body) = bed.post(REPORTS_PATH, Some(&token), first.clone()).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.to_string().contains("default/shrink"), "{body}");
    assert!(bed.requests().get("held").await.unwrap().status.is_none());
    assert_eq!(bed.status_writes(), writes, "nothing written");

    scaledowns
        .patch_status("shrink", &PatchParams::default(), &phase("Cancelled"))
        .await
        .unwrap();
    let (code, body) = bed.post(REPORTS_PATH, Some(&token), first).await;
    assert_eq!(code, 200, "{body}");
    let status = bed.requests().get("held").await.unwrap().status.unwrap();
    assert_eq!(status.phase, RecreatePhase::Recreating);
    assert_eq!(status.admitted_generation, Some(1));
}

/// The pod's `relaunch.dev/ready` condition: (status, reason, message).
async fn gate_of(bed: &CoordinatorBed, pod: &str) -> Option<(String, String, String)> {
    let pod = bed.pods().get(pod).await.ok()?;
    let c = pod
        .status?
        .conditions?
        .into_iter()
        .find(|c| c.type_ == READINESS_GATE)?;
    Some((
        c.status,
        c.reason.unwrap_or_default(),
        c.message.unwrap_or_default(),
    ))
}

#[tokio::test]
async fn a_deleted_request_holding_the_pod_notready_releases_it_once_no_request_may_hold_it() {
    let bed = CoordinatorBed::start(Duration::from_secs(300)).await;
    let token = bed.node_token("node-1", "relaunch-coordinator").await;
    let hold = |crr: &ContainerRecreateRequest| {
        bytes(
            &json!({"request": {"namespace": "default", "name": crr.name_any(), "uid": crr.uid()}, "ready": false}),
        )
    };

    // "first" holds db-0 NotReady; "second" for the same pod is admitted but has not run yet.
    let first = bed.admitted("first", "db-0", &["app"]).await;
    assert_eq!(
        bed.post(READINESS_PATH, Some(&token), hold(&first)).await.0,
        200
    );
    let second = bed.admitted("second", "db-0", &["app"]).await;
    bed.requests()
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    // Admitted after the deletion (one watch, in order): the controllers have seen it.
    bed.admitted("marker", "plain-0", &["app"]).await;
    let (status, _, message) = gate_of(&bed, "db-0").await.unwrap();
    assert_eq!(
        status, "False",
        "an unfinished request of the pod may be about to hold it: {message}"
    );

    // Once no unfinished request of the pod is left, the hold of the deleted one is released.
    let done = report(
        &second,
        "Succeeded",
        json!({"name": "app", "phase": "Succeeded"}),
    );
    assert_eq!(
        bed.post(REPORTS_PATH, Some(&token), bytes(&done)).await.0,
        200
    );
    let (_, reason, message) = eventually("the gate is released", WAIT, || async {
        gate_of(&bed, "db-0").await.filter(|(s, ..)| s == "True")
    })
    .await
    .unwrap();
    assert_eq!(reason, "RecreateRequestDeleted");
    assert!(message.contains("default/first"), "{message}");
    eventually("a ReadinessReleased Event on the pod", WAIT, || async {
        bed.events("db-0")
            .await
            .into_iter()
            .find(|(reason, message)| {
                reason == "ReadinessReleased" && message.contains("default/first")
            })
    })
    .await
    .unwrap();

    // A hold by a request that exists is left alone; deleting it releases the pod at once.
    let third = bed.admitted("third", "db-0", &["app"]).await;
    assert_eq!(
        bed.post(READINESS_PATH, Some(&token), hold(&third)).await.0,
        200
    );
    bed.admitted("marker-2", "plain-0", &["app"]).await;
    assert_eq!(gate_of(&bed, "db-0").await.unwrap().0, "False");
    bed.requests()
        .delete("third", &DeleteParams::default())
        .await
        .unwrap();
    let (_, _, message) = eventually("the gate is released again", WAIT, || async {
        gate_of(&bed, "db-0").await.filter(|(s, ..)| s == "True")
    })
    .await
    .unwrap();
    assert!(message.contains("default/third"), "{message}");
}

#[tokio::test]
async fn a_gate_change_decided_on_an_old_pod_never_undoes_a_newer_hold() {
    // The report API alone: no controller writes the pod meanwhile.
    let bed = CoordinatorBed::start_with(Duration::from_secs(300), false).await;
    let token = bed.node_token("node-1", "relaunch-coordinator").await;
    let first = bed
        .create_request("first", "db-0", &["app"], json!({}))
        .await;
    let second = bed
        .create_request("second", "db-0", &["app"], json!({}))
        .await;
    let gate = |crr: &ContainerRecreateRequest, ready: bool| {
        bytes(
            &json!({"request": {"namespace": "default", "name": crr.name_any(), "uid": crr.uid()}, "ready": ready}),
        )
    };
    assert_eq!(
        bed.post(READINESS_PATH, Some(&token), gate(&first, false))
            .await
            .0,
        200
    );
    // What a controller's cache holds: the pod as "first" held it.
    let seen = bed.pods().get("db-0").await.unwrap();
    assert_eq!(
        gate_of(&bed, "db-0").await.unwrap().2,
        "held NotReady by ContainerRecreateRequest default/first"
    );
    // "second" takes the hold.
    assert_eq!(
        bed.post(READINESS_PATH, Some(&token), gate(&second, false))
            .await
            .0,
        200
    );
    let held = bed.pods().get("db-0").await.unwrap();
    let held_by_second = (
        "False".to_string(),
        "RecreateRequested".to_string(),
        "held NotReady by ContainerRecreateRequest default/second".to_string(),
    );
    assert_eq!(gate_of(&bed, "db-0").await, Some(held_by_second.clone()));

    // Releasing for "first", decided on the pod as it was: refused by the API server (409),
    // the newer hold stays.
    let cluster = coordinator::cluster::Cluster::new(
        bed.client.clone(),
        "test",
        coordinator::metrics::Metrics::register(&prometheus::Registry::new()).unwrap(),
    );
    let stale = cluster
        .set_gate(
            &seen,
            true,
            &coordinator::readiness::GateHolder::new("default", "first"),
        )
        .await;
    assert!(stale.as_ref().is_err_and(|e| e.is_conflict()), "{stale:?}");
    assert_eq!(gate_of(&bed, "db-0").await, Some(held_by_second.clone()));

    // Through the report API the pod is read again: "first" does not release "second"'s hold.
    let (code, answer) = bed
        .post(READINESS_PATH, Some(&token), gate(&first, true))
        .await;
    assert_eq!(code, 200, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .contains("held NotReady by ContainerRecreateRequest default/second"),
        "{answer}"
    );
    assert_eq!(
        bed.pods().get("db-0").await.unwrap().resource_version(),
        held.resource_version()
    );
    // Its holder releases it.
    assert_eq!(
        bed.post(READINESS_PATH, Some(&token), gate(&second, true))
            .await
            .0,
        200
    );
    assert_eq!(gate_of(&bed, "db-0").await.unwrap().0, "True");
}

#[tokio::test]
async fn a_queued_message_is_replaced_once_the_request_is_recreating() {
    let bed = CoordinatorBed::start(Duration::from_secs(300)).await;
    let crr = bed.admitted("waits", "db-0", &["app"]).await;
    let token = bed.node_token("node-1", "relaunch-coordinator").await;
    let mut queued = json!({
        "request": {"namespace": "default", "name": "waits", "uid": crr.uid().unwrap()},
        "sequence": 1,
        "phase": "Pending",
        "message": "queued: the node is recreating as many containers as --max-parallel allows",
    });
    assert_eq!(
        bed.post(REPORTS_PATH, Some(&token), bytes(&queued)).await.0,
        200
    );
    let now = bed.requests().get("waits").await.unwrap();
    assert!(message(&now).starts_with("queued: "), "{}", message(&now));

    let started = report(
        &crr,
        "Recreating",
        json!({"name": "app", "phase": "ShuttingDown"}),
    );
    let (code, body) = bed.post(REPORTS_PATH, Some(&token), bytes(&started)).await;
    assert_eq!(code, 200, "{body}");
    let now = bed.requests().get("waits").await.unwrap();
    assert_eq!(
        now.status.as_ref().unwrap().phase,
        RecreatePhase::Recreating
    );
    assert_eq!(message(&now), "", "the queued message is gone");

    // A late queued report does not bring it back.
    queued["sequence"] = json!(0);
    assert_eq!(
        bed.post(REPORTS_PATH, Some(&token), bytes(&queued)).await.0,
        200
    );
    let now = bed.requests().get("waits").await.unwrap();
    assert_eq!(message(&now), "");
}

/// TokenReviews the coordinator has made so far.
fn token_reviews(bed: &CoordinatorBed) -> u64 {
    bed.api
        .server
        .request_counts()
        .iter()
        .filter(|(k, _)| k.resource == "tokenreviews" && k.verb == "create")
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test]
async fn a_bogus_token_costs_one_token_review_per_ttl() {
    let bed = CoordinatorBed::start_with(Duration::from_secs(300), false).await;
    let crr = bed
        .create_request("probe", "db-0", &["app"], json!({}))
        .await;
    let body = bytes(&report(
        &crr,
        "Recreating",
        json!({"name": "app", "phase": "Stopping"}),
    ));
    let before = token_reviews(&bed);
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let (code, answer) = bed
            .post(REPORTS_PATH, Some("bogus-token"), body.clone())
            .await;
        assert_eq!(code, 401, "{answer}");
        assert_eq!(answer["error"]["reason"], "Unauthenticated");
    }
    let reviews = token_reviews(&bed) - before;
    // Each refusal still counts as one.
    assert_eq!(
        bed.counter("relaunch_coordinator_auth_failures_total", "invalid_token"),
        20
    );
    if started.elapsed() < coordinator::report_api::auth::REFUSED_TOKEN_TTL {
        assert_eq!(reviews, 1, "20 requests with one bogus token");
    } else {
        assert!(reviews < 20, "{reviews} TokenReviews for 20 requests");
    }
    // Another bogus token is reviewed on its own; a good one is not held up by either.
    assert_eq!(
        bed.post(REPORTS_PATH, Some("other-bogus"), body.clone())
            .await
            .0,
        401
    );
    assert_eq!(token_reviews(&bed) - before, reviews + 1);
    let good = bed.node_token("node-1", "relaunch-coordinator").await;
    assert_eq!(bed.post(REPORTS_PATH, Some(&good), body).await.0, 200);
}

#[tokio::test]
async fn a_half_sent_header_is_cut_off_and_its_connection_slot_freed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = ReportLimits {
        connections: ConnectionLimits {
            max_connections: 1,
            header_read_timeout: Duration::from_millis(500),
        },
        ..ReportLimits::default()
    };
    let bed = CoordinatorBed::start_limited(Duration::from_secs(300), false, limits).await;
    let addr = bed.url.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nAuthorization: Bea")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    // (A reset ends the read with an error: the connection is gone either way.)
    let _closed = tokio::time::timeout(WAIT, slow.read_to_end(&mut rest))
        .await
        .expect("the slow client kept its connection");
    assert!(started.elapsed() >= Duration::from_millis(400));
    let answer = String::from_utf8_lossy(&rest);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    // The only connection slot is free again.
    let (code, answer) = bed
        .post(REPORTS_PATH, None, Bytes::from_static(b"{}"))
        .await;
    assert_eq!(code, 401, "{answer}");
}

#[tokio::test]
async fn reports_beyond_the_in_flight_limit_wait_then_get_429() {
    let limits = ReportLimits {
        max_in_flight: 1,
        queue_wait: Duration::from_millis(100),
        ..ReportLimits::default()
    };
    let bed = CoordinatorBed::start_limited(Duration::from_secs(300), false, limits).await;
    let crr = bed
        .create_request("busy", "db-0", &["app"], json!({}))
        .await;
    let token = bed.node_token("node-1", "relaunch-coordinator").await;
    let body = bytes(&report(
        &crr,
        "Recreating",
        json!({"name": "app", "phase": "Stopping"}),
    ));
    // Every call the handler makes to the API server now takes half a second.
    bed.api.server.faults().delay(Duration::from_millis(500));
    let (first, second) = tokio::join!(
        bed.post(REPORTS_PATH, Some(&token), body.clone()),
        bed.post(REPORTS_PATH, Some(&token), body.clone()),
    );
    bed.api.server.faults().delay(Duration::ZERO);
    let mut codes = [first.0, second.0];
    codes.sort();
    assert_eq!(codes, [200, 429], "{first:?} {second:?}");
    let refused = if first.0 == 429 { &first.1 } else { &second.1 };
    assert_eq!(refused["error"]["reason"], "TooManyRequests", "{refused}");
    assert_eq!(
        bed.counter("relaunch_coordinator_reports_total", "too_many_requests"),
        1
    );
    // Once the slot is free, reports go through again.
    assert_eq!(bed.post(REPORTS_PATH, Some(&token), body).await.0, 200);
}

/// Waits until one of `replicas` leads; its index.
async fn leader_of(replicas: &[&Replica]) -> usize {
    eventually("a replica to lead", WAIT, || async {
        replicas.iter().position(|r| r.leads())
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn reports_to_another_replica_keep_the_agent_alive_for_the_leader() {
    let timeout = Duration::from_secs(3);
    // The bed's own coordinator serves reports only; two replicas elect a leader.
    let bed = CoordinatorBed::start_with(timeout, false).await;
    let replicas = [
        bed.replica("replica-a", timeout).await,
        bed.replica("replica-b", timeout).await,
    ];
    let leader = leader_of(&[&replicas[0], &replicas[1]]).await;
    let follower = &replicas[1 - leader];
    let crr = bed.admitted("kept-alive", "plain-0", &["app"]).await;
    let token = bed.node_token("node-1", "relaunch-coordinator").await;
    let writes_before = bed.status_writes();

    // The agent reports only to the replica that does not lead, for four agent timeouts,
    // nothing new after the first report (a request queued behind others, or a long wait).
    let pending = report(&crr, "Pending", json!({"name": "app", "phase": "Pending"}));
    let window = timeout * 4;
    let started = std::time::Instant::now();
    while started.elapsed() < window {
        let (code, body) = send_to(
            &follower.url,
            "POST",
            REPORTS_PATH,
            Some(&token),
            "application/json",
            bytes(&pending),
        )
        .await;
        assert_eq!(code, 200, "{body}");
        let now = bed.requests().get("kept-alive").await.unwrap();
        assert_ne!(
            now.status.as_ref().map(|s| s.phase),
            Some(RecreatePhase::Failed),
            "failed although its agent reports: {}",
            message(&now)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(replicas[leader].leads(), "the same replica led throughout");
    let after = bed.requests().get("kept-alive").await.unwrap();
    assert!(
        after
            .status
            .as_ref()
            .and_then(|s| s.last_report_time.as_ref())
            .is_some(),
        "{:?}",
        after.status
    );
    // The write cost: the first report's change, then one refresh of lastReportTime per quarter
    // timeout at most (one every ~0.75 s here), however often the agent reports (every 0.2 s).
    let writes = bed.status_writes() - writes_before;
    let quarters = (window.as_millis() / (timeout / 4).as_millis()) as u64;
    eprintln!(
        "status writes in {window:?} of reports every 0.2 s: {writes} (bound {})",
        quarters + 2
    );
    assert!(writes >= 3, "lastReportTime was refreshed: {writes}");
    assert!(writes <= quarters + 2, "{writes} writes");
}

#[tokio::test]
async fn a_leader_whose_api_server_stops_answering_steps_down_and_leads_again_on_its_pod_cache() {
    let bed = CoordinatorBed::start_with(Duration::from_secs(300), false).await;
    let replica = bed.replica("replica-a", Duration::from_secs(300)).await;
    leader_of(&[&replica]).await;
    bed.admitted("first-term", "plain-0", &["app"]).await;
    let (pod_lists, request_lists) = (bed.lists("pods"), bed.lists("containerrecreaterequests"));
    assert!(pod_lists >= 1 && request_lists >= 1);

    bed.api.server.faults().delay(Duration::from_secs(3600));
    let silent = std::time::Instant::now();
    eventually("the leader to step down", RENEW_DEADLINE * 4, || async {
        (!replica.leads()).then_some(())
    })
    .await
    .unwrap();
    let took = silent.elapsed();
    assert!(
        took <= RENEW_DEADLINE + Duration::from_millis(1500),
        "stepped down after {took:?}, renew deadline {RENEW_DEADLINE:?}"
    );

    // Once the API server answers again, it leads again: nothing hangs on the calls in flight.
    bed.api.server.faults().delay(Duration::ZERO);
    eventually("the replica to lead again", WAIT, || async {
        replica.leads().then_some(())
    })
    .await
    .unwrap();
    // The new term admits on a list of the requests taken after it won the Lease, and on the
    // pod cache the replica kept: no second list of every pod.
    bed.admitted("second-term", "plain-0", &["app"]).await;
    assert!(bed.lists("containerrecreaterequests") > request_lists);
    assert_eq!(bed.lists("pods"), pod_lists, "the pods were listed again");
}

#[tokio::test]
async fn controllers_that_no_longer_lead_write_nothing() {
    let bed = CoordinatorBed::start_with(Duration::from_secs(300), false).await;
    let crr = bed
        .create_request("unled", "db-0", &["app"], json!({}))
        .await;
    let registry = prometheus::Registry::new();
    let ctx = Context::new(
        bed.coordinator_client.clone(),
        Settings::default(),
        &registry,
    )
    .unwrap();
    let leadership = Leadership::not_yet();
    leadership.extend(std::time::Instant::now() + Duration::from_secs(60));
    let leading = ctx.cluster.for_leader(leadership.clone());
    let status = relaunch_api::ContainerRecreateRequestStatus::default();
    leading.may_write().unwrap();

    leadership.revoke();
    let refused = leading.write_status(&crr, None, &status).await.unwrap_err();
    assert_eq!(refused.kind(), "not_leading");
    assert_eq!(
        leading.delete_request(&crr).await.unwrap_err().kind(),
        "not_leading"
    );
    let unchanged = bed.requests().get("unled").await.unwrap();
    assert_eq!(unchanged.resource_version(), crr.resource_version());
    // The report API's adapter is not bound to a leadership.
    ctx.cluster.may_write().unwrap();
}

/// `POST /v1/scaledown-execs`: only the agent on the node of the command's pod can record its
/// result, only while the ScaleDown asks for that very command, once.
#[tokio::test]
async fn a_scaledown_command_result_is_taken_only_from_its_pods_node_and_only_once() {
    use relaunch_api::report::SCALEDOWN_EXEC_PATH;
    let bed = CoordinatorBed::start_with(Duration::from_secs(300), false).await;
    let (scaledowns, sd) = bed.scaledown_shrink().await;
    let db = bed.pods().get("db-0").await.unwrap();
    let exec = |node: &str| {
        json!({"status": {"phase": "Running", "exec": {
            "id": "1-decommission-0", "purpose": "Decommission", "podName": "db-0",
            "podUID": db.uid().unwrap(), "nodeName": node, "container": "app",
            "command": ["handoff"], "timeoutSeconds": 60,
        }}})
    };
    scaledowns
        .patch_status(
            "shrink",
            &PatchParams::default(),
            &Patch::Merge(exec("node-1")),
        )
        .await
        .unwrap();
    let result = |id: &str, uid: &str| {
        bytes(&json!({
            "scaleDown": {"namespace": "default", "name": "shrink", "uid": uid},
            "execId": id, "exitCode": 0, "output": "handed 3 keys",
        }))
    };
    let uid = sd.uid().unwrap();
    let node1 = bed.node_token("node-1", "relaunch-coordinator").await;
    let node2 = bed.node_token("node-2", "relaunch-coordinator").await;
    let pending = || async {
        let sd = scaledowns.get("shrink").await.unwrap();
        sd.status.unwrap().exec.unwrap().result.is_none()
    };

    let (code, body) = bed
        .post(
            SCALEDOWN_EXEC_PATH,
            Some(&node2),
            result("1-decommission-0", &uid),
        )
        .await;
    assert_eq!(code, 403, "another node: {body}");
    let (code, body) = bed
        .post(
            SCALEDOWN_EXEC_PATH,
            Some(&node1),
            result("2-decommission-0", &uid),
        )
        .await;
    assert_eq!(code, 409, "a command no longer asked for: {body}");
    let (code, body) = bed
        .post(
            SCALEDOWN_EXEC_PATH,
            Some(&node1),
            result("1-decommission-0", "other-uid"),
        )
        .await;
    assert_eq!(code, 404, "another ScaleDown of the same name: {body}");
    assert!(pending().await, "nothing was written");
    // Status naming node-2 does not let node-2 answer for a pod on node-1.
    scaledowns
        .patch_status(
            "shrink",
            &PatchParams::default(),
            &Patch::Merge(exec("node-2")),
        )
        .await
        .unwrap();
    let (code, body) = bed
        .post(
            SCALEDOWN_EXEC_PATH,
            Some(&node2),
            result("1-decommission-0", &uid),
        )
        .await;
    assert_eq!(code, 403, "the pod does not run on node-2: {body}");
    assert!(pending().await, "nothing was written");

    scaledowns
        .patch_status(
            "shrink",
            &PatchParams::default(),
            &Patch::Merge(exec("node-1")),
        )
        .await
        .unwrap();
    let (code, body) = bed
        .post(
            SCALEDOWN_EXEC_PATH,
            Some(&node1),
            result("1-decommission-0", &uid),
        )
        .await;
    assert_eq!(
        (code, body["written"].clone()),
        (200, json!(true)),
        "{body}"
    );
    let written = scaledowns.get("shrink").await.unwrap();
    let r = written.status.unwrap().exec.unwrap().result.unwrap();
    assert_eq!((r.exit_code, r.output.as_str()), (Some(0), "handed 3 keys"));
    let (code, body) = bed
        .post(
            SCALEDOWN_EXEC_PATH,
            Some(&node1),
            result("1-decommission-0", &uid),
        )
        .await;
    assert_eq!(
        (code, body["written"].clone()),
        (200, json!(false)),
        "a repeat: {body}"
    );
}
