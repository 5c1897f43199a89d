//! A fuzz harness for the report API, in process: the coordinator's real report API server
//! against the test API server, fed arbitrary bytes and structure-aware mutations of valid
//! reports and readiness requests (fields removed, wrong types, i64/u64 extremes, year 9999 and
//! year -9999, unicode, deep nesting, long strings, duplicated containers, sequence extremes,
//! other nodes' requests), with the right node's token, another node's, bogus ones and none.
//!
//! What must hold for every input: the answer is 2xx or 4xx (never a 5xx, never a dropped
//! connection), nothing panics anywhere in the process, and a refused request writes nothing to
//! the API (counted by the test API server). After the run the controllers start over what the
//! accepted reports left and must work through it without failing.
//!
//! A few hundred iterations run in the normal test run (seconds); for a longer run:
//! `RELAUNCH_FUZZ_ITERATIONS=100000 cargo test --test report_fuzz`, and
//! `RELAUNCH_FUZZ_SEED=<n>` repeats the run that printed seed `n`.

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use relaunch_api::report::{READINESS_PATH, REPORTS_PATH};
use relaunch_api::{ContainerRecreateRequest, READINESS_GATE};
use relaunch_coordinator::{self as coordinator, Context, ReportListener, Settings};
use relaunch_telemetry::admin::Health;
use relaunch_testbed::{API_AUDIENCE, Component};
use serde_json::{Value, json};
use support::{TestApi, eventually, token};
use tokio_util::sync::CancellationToken;

const AGENT_NS: &str = "relaunch-system";
const AGENT_SA: &str = "relaunch-agent";
const WAIT: Duration = Duration::from_secs(20);
/// Iterations in the normal test run.
const DEFAULT_ITERATIONS: u64 = 400;
const DEFAULT_SEED: u64 = 0x5eed_0011;

/// Panics anywhere in this process since the hook was installed.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
}

/// splitmix64: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

const CONTAINER_PHASES: [&str; 8] = [
    "Pending",
    "Unready",
    "ShuttingDown",
    "Stopping",
    "WaitingForRestart",
    "WaitingForReady",
    "Succeeded",
    "Failed",
];
const PHASES: [&str; 4] = ["Pending", "Recreating", "Succeeded", "Failed"];
const STEPS: [&str; 6] = [
    "unready",
    "shutdown",
    "stop",
    "restarted",
    "ready",
    "finished",
];

/// A time as the wire carries it.
fn rfc3339(t: Timestamp) -> String {
    t.to_string()
}

/// Values of every type and at every edge, for replacing what a valid report holds.
fn interesting(rng: &mut Rng, now: Timestamp) -> Value {
    let long = |c: &str, n: usize| c.repeat(n);
    let options: Vec<Value> = vec![
        json!(null),
        json!(true),
        json!(false),
        json!(0),
        json!(-1),
        json!(1),
        json!(i64::MAX),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(i32::MAX),
        json!(i64::from(i32::MAX) + 1),
        json!(i64::from(i32::MIN) - 1),
        json!(1e308),
        json!(-1e308),
        json!(0.5),
        // Beyond u64 and i64: serde_json reads these as floats.
        serde_json::from_str("18446744073709551616").unwrap(),
        serde_json::from_str("-9223372036854775809").unwrap(),
        json!([]),
        json!({}),
        json!([1, "two", null]),
        json!({"unknown": "field"}),
        json!(""),
        json!("9999-12-31T23:59:59.999999999Z"),
        json!("9999-12-30T21:59:00Z"),
        json!("-009999-01-01T00:00:00Z"),
        json!("0000-01-01T00:00:00Z"),
        json!("1970-01-01T00:00:00Z"),
        json!("2024-02-30T00:00:00Z"),
        json!("2024-01-01T00:00:00+14:00"),
        json!("2024-01-01T00:00:00.123456789Z"),
        json!("yesterday"),
        json!(rfc3339(now)),
        json!(rfc3339(now - SignedDuration::from_hours(24 * 365 * 50))),
        json!(rfc3339(now + SignedDuration::from_secs(110))),
        json!(rfc3339(now + SignedDuration::from_secs(130))),
        json!(rfc3339(now + SignedDuration::from_hours(1))),
        json!("ünïcødé 🚀 \u{202e}rtl\u{0} nul"),
        json!("\u{feff}"),
        json!(long("a", 9000)),
        json!(long("é", 5000)),
        json!(long("🚀", 2100)),
        json!(long("x", 70_000)),
        json!("app"),
        json!("sidecar"),
        json!("nope"),
        json!("Bogus"),
        json!("succeeded"),
        json!("Unknown"),
        json!("containerd://0123456789abcdef"),
        json!("../secrets"),
        json!("default"),
        json!("kube-system"),
        json!("node-2"),
        json!(PHASES[rng.below(PHASES.len())]),
        json!(CONTAINER_PHASES[rng.below(CONTAINER_PHASES.len())]),
    ];
    let chosen = rng.pick(&options).clone();
    if rng.chance(3) {
        // Deep nesting (serde_json stops at 128 levels).
        let depth = 1 + rng.below(300);
        let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        return serde_json::from_str(&text).unwrap_or(chosen);
    }
    chosen
}

/// A request the fuzzer reports on.
#[derive(Clone)]
struct Live {
    name: String,
    uid: String,
}

/// A valid report for `request` (on the wire): any phase, a subset of its containers in any
/// phase, recent step times.
fn valid_report(rng: &mut Rng, request: &Live, now: Timestamp) -> Value {
    let mut containers = Vec::new();
    for name in ["app", "sidecar"] {
        if rng.chance(70) {
            let mut timestamps = serde_json::Map::new();
            for step in STEPS {
                if rng.chance(40) {
                    let ago = SignedDuration::from_millis(rng.below(120_000) as i64);
                    timestamps.insert(step.into(), json!(rfc3339(now - ago)));
                }
            }
            let mut c = json!({
                "name": name,
                "phase": rng.pick(&CONTAINER_PHASES),
                "timestamps": timestamps,
            });
            if rng.chance(50) {
                c["previousContainerID"] = json!(format!("containerd://{:016x}", rng.next()));
            }
            if rng.chance(40) {
                c["newContainerID"] = json!(format!("containerd://{:016x}", rng.next()));
                c["restartCount"] = json!(rng.below(5));
            }
            if rng.chance(30) {
                c["message"] = json!("stopped by relaunch");
            }
            containers.push(c);
        }
    }
    let mut report = json!({
        "request": {"namespace": "default", "name": request.name, "uid": request.uid},
        "sequence": rng.next() % 1000,
        "phase": rng.pick(&PHASES),
        "containers": containers,
    });
    if rng.chance(50) {
        report["startTime"] = json!(rfc3339(now - SignedDuration::from_secs(30)));
    }
    if rng.chance(20) {
        report["completionTime"] = json!(rfc3339(now));
    }
    if rng.chance(30) {
        report["message"] = json!("queued: 1 request ahead");
    }
    report
}

fn valid_readiness(rng: &mut Rng, request: &Live) -> Value {
    json!({
        "request": {"namespace": "default", "name": request.name, "uid": request.uid},
        "ready": rng.chance(50),
    })
}

/// Every path in `value` (object keys and array indices).
fn paths(value: &Value, prefix: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(prefix.clone());
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                prefix.push(json!(k));
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                prefix.push(json!(i));
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn at_mut<'a>(value: &'a mut Value, path: &[Value]) -> Option<&'a mut Value> {
    let mut here = value;
    for step in path {
        here = match step {
            Value::String(k) => here.get_mut(k.as_str())?,
            Value::Number(i) => here.get_mut(i.as_u64()? as usize)?,
            _ => return None,
        };
    }
    Some(here)
}

/// One structure-aware mutation of `body`.
fn mutate(rng: &mut Rng, body: &mut Value, others: &[Live], now: Timestamp) {
    let mut all = Vec::new();
    paths(body, &mut Vec::new(), &mut all);
    let path = rng.pick(&all).clone();
    match rng.below(7) {
        // Remove the field or element.
        0 if !path.is_empty() => {
            let (last, parent) = path.split_last().unwrap();
            if let Some(parent) = at_mut(body, parent) {
                match (parent, last) {
                    (Value::Object(map), Value::String(k)) => {
                        map.remove(k);
                    }
                    (Value::Array(items), Value::Number(i)) => {
                        let i = i.as_u64().unwrap() as usize;
                        if i < items.len() {
                            items.remove(i);
                        }
                    }
                    _ => {}
                }
            }
        }
        // An unknown field beside the others.
        1 => {
            if let Some(Value::Object(map)) = at_mut(body, &path) {
                map.insert(format!("x{}", rng.below(100)), interesting(rng, now));
            }
        }
        // A container twice.
        2 => {
            if let Some(Value::Array(items)) = body.get_mut("containers")
                && let Some(first) = items.first().cloned()
            {
                items.push(first);
            }
        }
        // Another request: another node's, a made-up one, a stale UID.
        3 => {
            if let Some(request) = body.get_mut("request") {
                let other = rng.pick(others);
                let uid = format!("{:x}", rng.next());
                let name = format!("made-up-{}", rng.below(10));
                match (rng.below(3), request.as_object_mut()) {
                    (1, Some(fields)) => {
                        fields.insert("uid".into(), json!(uid));
                    }
                    (2, Some(fields)) => {
                        fields.insert("name".into(), json!(name));
                    }
                    _ => {
                        *request =
                            json!({"namespace": "default", "name": other.name, "uid": other.uid})
                    }
                }
            }
        }
        // Sequence extremes.
        4 => {
            let sequence = rng
                .pick(&[
                    json!(0),
                    json!(u64::MAX),
                    json!(-1),
                    json!(1e20),
                    json!("1"),
                ])
                .clone();
            if let Some(fields) = body.as_object_mut() {
                fields.insert("sequence".into(), sequence);
            }
        }
        // Anything anywhere.
        _ => {
            if let Some(slot) = at_mut(body, &path) {
                *slot = interesting(rng, now);
            }
        }
    }
}

/// Arbitrary bytes: random, or a valid body cut, flipped or padded.
fn raw_bytes(rng: &mut Rng, valid: &[u8]) -> Vec<u8> {
    match rng.below(5) {
        0 => (0..rng.below(512)).map(|_| rng.next() as u8).collect(),
        1 => valid[..rng.below(valid.len() + 1)].to_vec(),
        2 => {
            let mut bytes = valid.to_vec();
            for _ in 0..=rng.below(4) {
                if !bytes.is_empty() {
                    let i = rng.below(bytes.len());
                    bytes[i] = rng.next() as u8;
                }
            }
            bytes
        }
        3 => {
            let mut bytes = b"\xef\xbb\xbf".to_vec();
            bytes.extend_from_slice(valid);
            bytes
        }
        _ => {
            let mut bytes = valid.to_vec();
            let tails: [&[u8]; 4] = [b" {}", b"garbage", b"\0", b"]"];
            let tail: &[u8] = tails[rng.below(tails.len())];
            bytes.extend_from_slice(tail);
            bytes
        }
    }
}

/// The coordinator's report API alone (as on a follower), on a test API server holding two
/// nodes and two gated pods, `db-0` on node-1 and `web-0` on node-2.
struct FuzzBed {
    api: TestApi,
    coordinator_client: kube::Client,
    url: String,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

impl Drop for FuzzBed {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl FuzzBed {
    async fn start() -> Self {
        let api = TestApi::with_relaunch_crds().await;
        let coordinator_client = api.relaunch_client(Component::Coordinator).await;
        let client = api.client.clone();
        for node in ["node-1", "node-2"] {
            let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
            nodes
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({"metadata": {"name": node}})).unwrap(),
                )
                .await
                .unwrap();
        }
        Api::<ServiceAccount>::namespaced(client.clone(), "default")
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "intruder"}})).unwrap(),
            )
            .await
            .unwrap();
        for (pod, node) in [("db-0", "node-1"), ("web-0", "node-2")] {
            running_pod(&client, pod, node).await;
        }
        let registry = prometheus::Registry::new();
        let ctx = Context::new(coordinator_client.clone(), Settings::default(), &registry).unwrap();
        let listener = ReportListener::bind("127.0.0.1:0".parse().unwrap(), None)
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(coordinator::report_api::server::serve(
            listener,
            ctx,
            shutdown.clone(),
        ));
        Self {
            api,
            coordinator_client,
            url,
            shutdown,
            server,
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Writes to the API by the coordinator's service account, of each kind. Reviews
    /// (TokenReview) change nothing and Events are written in the background after an accepted
    /// report, so neither counts.
    fn writes(&self) -> BTreeMap<String, u64> {
        self.api
            .server
            .request_counts()
            .into_iter()
            .filter(|(k, _)| {
                k.user.contains("relaunch-coordinator")
                    && !matches!(k.verb.as_str(), "get" | "list" | "watch")
                    && k.resource != "tokenreviews"
                    && !k.resource.starts_with("events")
            })
            .map(|(k, n)| (format!("{} {}", k.verb, k.resource), n))
            .collect()
    }

    async fn request(&self, name: &str, pod: &str) -> Live {
        let crr: ContainerRecreateRequest = serde_json::from_value(json!({
            "apiVersion": "relaunch.dev/v1alpha1", "kind": "ContainerRecreateRequest",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"podName": pod, "containers": [{"name": "app"}, {"name": "sidecar"}]},
        }))
        .unwrap();
        let crr = Api::<ContainerRecreateRequest>::default_namespaced(self.api.client.clone())
            .create(&PostParams::default(), &crr)
            .await
            .unwrap();
        Live {
            name: name.into(),
            uid: crr.uid().unwrap(),
        }
    }

    async fn finished(&self, name: &str) -> bool {
        Api::<ContainerRecreateRequest>::default_namespaced(self.api.client.clone())
            .get(name)
            .await
            .ok()
            .and_then(|r| r.status)
            .is_some_and(|s| s.phase.is_finished())
    }

    /// One request; `None` if no answer came (the connection was dropped, or nothing answered
    /// within seconds).
    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Option<u16> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url))
            .header("content-type", content_type);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(Full::new(Bytes::from(body))).ok()?;
        let response = tokio::time::timeout(Duration::from_secs(20), self.http.request(request))
            .await
            .ok()?
            .ok()?;
        let code = response.status().as_u16();
        response.into_body().collect().await.ok()?;
        Some(code)
    }
}

async fn running_pod(client: &kube::Client, name: &str, node: &str) {
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "readinessGates": [{"conditionType": READINESS_GATE}],
            "containers": [{"name": "app", "image": "relaunch.test/busybox:1"},
                           {"name": "sidecar", "image": "relaunch.test/busybox:1"}],
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True"}, {"type": READINESS_GATE, "status": "True"}]}})),
    )
    .await
    .unwrap();
}

/// What one input came to.
#[derive(Default, Debug)]
struct Tally {
    by_code: BTreeMap<u16, u64>,
    refused_without_writes: u64,
}

/// Inputs found by this harness that once broke the report API; they run first, every time.
fn regressions(live: &Live, now: Timestamp) -> Vec<(&'static str, Value)> {
    let request = json!({"namespace": "default", "name": live.name, "uid": live.uid});
    vec![
        // A container twice in a report for a request not yet admitted: the report API admitted
        // (labelled) the request, then refused the report with 400.
        (
            "duplicate container before admission",
            json!({"request": request, "phase": "Recreating",
                   "containers": [{"name": "app", "phase": "Stopping"},
                                  {"name": "app", "phase": "Stopping"}]}),
        ),
        // A phase this release does not know deserializes (forward compatibility) but cannot
        // be written back: it was merged, the status write failed to serialize, and the agent
        // got 503 — retried forever.
        (
            "unknown request phase",
            json!({"request": request, "phase": "Bogus", "containers": []}),
        ),
        (
            "unknown container phase",
            json!({"request": request, "phase": "Recreating",
                   "containers": [{"name": "app", "phase": "Bogus"}]}),
        ),
        // A step time at the end of time (issue 11: accepted, then the coordinator exited).
        (
            "year 9999",
            json!({"request": request, "phase": "Recreating",
                   "containers": [{"name": "app", "phase": "ShuttingDown",
                                   "timestamps": {"shutdown": "9999-12-30T21:59:00Z"}}]}),
        ),
        (
            "future completion",
            json!({"request": request, "phase": "Succeeded",
                   "completionTime": rfc3339(now + SignedDuration::from_hours(1))}),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_report_api_answers_every_input_with_2xx_or_4xx_and_refusals_write_nothing() {
    count_panics();
    let iterations = env_u64("RELAUNCH_FUZZ_ITERATIONS").unwrap_or(DEFAULT_ITERATIONS);
    let seed = env_u64("RELAUNCH_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    println!("report fuzz: seed {seed}, {iterations} iterations");
    let started = Instant::now();
    let mut rng = Rng(seed);
    let bed = FuzzBed::start().await;
    let client = &bed.api.client;
    let node_token = |node: &'static str, audience: &'static str| {
        let client = client.clone();
        async move {
            token(
                &client,
                AGENT_NS,
                AGENT_SA,
                audience,
                Some(json!({"apiVersion": "v1", "kind": "Node", "name": node})),
            )
            .await
        }
    };
    let good = node_token("node-1", relaunch_api::COORDINATOR_AUDIENCE).await;
    let other_node = node_token("node-2", relaunch_api::COORDINATOR_AUDIENCE).await;
    let wrong_audience = node_token("node-1", API_AUDIENCE).await;
    let intruder = token(
        client,
        "default",
        "intruder",
        relaunch_api::COORDINATOR_AUDIENCE,
        None,
    )
    .await;
    let mut tokens: Vec<Option<String>> = vec![
        Some(good.clone()),
        Some(other_node),
        Some(wrong_audience),
        Some(intruder),
        Some("not-a-token".into()),
        Some(String::new()),
        None,
    ];
    tokens.push(Some("x".repeat(10_000)));

    // Requests on node-1's pod (the good token's) and one on node-2's.
    let mut live: Vec<Live> = Vec::new();
    let mut made = 0usize;
    for _ in 0..3 {
        live.push(bed.request(&format!("fuzz-{made}"), "db-0").await);
        made += 1;
    }
    let elsewhere = bed.request("elsewhere", "web-0").await;
    let mut tally = Tally::default();

    let mut check = |what: &str, code: Option<u16>, before: &BTreeMap<String, u64>, after| {
        let code = code.unwrap_or_else(|| panic!("{what}: no answer (connection dropped)"));
        assert!(
            (200..300).contains(&code) || (400..500).contains(&code),
            "{what}: answered {code}"
        );
        if code >= 400 {
            assert_eq!(before, &after, "{what}: refused with {code} but wrote");
            tally.refused_without_writes += 1;
        }
        *tally.by_code.entry(code).or_default() += 1;
    };

    for (what, body) in regressions(&live[0], Timestamp::now()) {
        let before = bed.writes();
        let code = bed
            .send(
                "POST",
                REPORTS_PATH,
                Some(&good),
                "application/json",
                serde_json::to_vec(&body).unwrap(),
            )
            .await;
        check(what, code, &before, bed.writes());
        assert_eq!(code, Some(400), "{what} is refused");
    }

    for i in 0..iterations {
        let now = Timestamp::now();
        // Keep three requests in progress on node-1's pod.
        if i % 16 == 0 {
            for slot in &mut live {
                if bed.finished(&slot.name).await {
                    *slot = bed.request(&format!("fuzz-{made}"), "db-0").await;
                    made += 1;
                }
            }
        }
        let target = rng.pick(&live).clone();
        let readiness = rng.chance(12);
        let mut body = if readiness {
            valid_readiness(&mut rng, &target)
        } else {
            valid_report(&mut rng, &target, now)
        };
        let mutations = rng.below(4);
        let others = [target.clone(), elsewhere.clone()];
        for _ in 0..mutations {
            mutate(&mut rng, &mut body, &others, now);
        }
        let mut bytes = serde_json::to_vec(&body).unwrap();
        if rng.chance(15) {
            bytes = raw_bytes(&mut rng, &bytes);
        }
        let token = if rng.chance(75) {
            Some(good.clone())
        } else {
            rng.pick(&tokens).clone()
        };
        let (method, path, content_type) = match rng.below(40) {
            0 => ("GET", REPORTS_PATH, "application/json"),
            1 => ("POST", "/v1/nope", "application/json"),
            2 => ("POST", REPORTS_PATH, "text/plain"),
            3 => ("PUT", READINESS_PATH, "application/json"),
            4 => ("POST", REPORTS_PATH, "application/json; charset=utf-8"),
            _ if readiness => ("POST", READINESS_PATH, "application/json"),
            _ => ("POST", REPORTS_PATH, "application/json"),
        };
        let before = bed.writes();
        let code = bed
            .send(method, path, token.as_deref(), content_type, bytes.clone())
            .await;
        let what = format!(
            "iteration {i} (seed {seed}): {method} {path} with {} token, body {}",
            match &token {
                Some(t) if *t == good => "the pod's node's",
                Some(_) => "another",
                None => "no",
            },
            String::from_utf8_lossy(&bytes[..bytes.len().min(600)])
        );
        check(&what, code, &before, bed.writes());
        assert_eq!(PANICS.load(Ordering::SeqCst), 0, "{what}: panicked");
        assert!(!bed.server.is_finished(), "{what}: the report API stopped");
    }
    println!(
        "report fuzz: {iterations} inputs in {:?}, answers {:?}, {} refused with no write, {made} requests",
        started.elapsed(),
        tally.by_code,
        tally.refused_without_writes
    );
    assert!(
        tally.by_code.keys().any(|c| *c == 200),
        "some inputs are accepted: {:?}",
        tally.by_code
    );

    // The controllers take over what the accepted reports left and keep working: a request
    // created now is admitted.
    let registry = prometheus::Registry::new();
    let ctx = Context::new(
        bed.coordinator_client.clone(),
        Settings::default(),
        &registry,
    )
    .unwrap();
    let listener = ReportListener::bind("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let health = Arc::new(Health::default());
    let shutdown = bed.shutdown.child_token();
    let controllers = tokio::spawn(coordinator::run(
        ctx,
        listener,
        health.clone(),
        shutdown.clone(),
    ));
    let last = bed.request("after-the-fuzz", "db-0").await;
    let requests = Api::<ContainerRecreateRequest>::default_namespaced(bed.api.client.clone());
    eventually("the controllers admit a new request", WAIT, || async {
        let r = requests.get(&last.name).await.ok()?;
        r.status.filter(|_| health.is_ready()).map(|_| ())
    })
    .await
    .unwrap();
    assert!(!controllers.is_finished(), "the controllers stopped");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
    shutdown.cancel();
    controllers.await.unwrap().unwrap();
}
