//! relaunch-agent as a real process against the test bed (real containerd, test API server,
//! kubelet simulator), with a stand-in coordinator that records what the agent sends.
//! Needs root.

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use relaunch_agent::failpoint::{self, Failpoint};
use relaunch_api::report::RecreateReport;
use relaunch_api::{ContainerRecreatePhase, RecreatePhase};
use relaunch_testbed::{Component, TEST_IMAGE};
use serde_json::{Value, json};
use support::{Bed, EXITS_ON_SIGTERM, STUBBORN, binaries, container_status, eventually};

const NODE: &str = "node-1";
const WAIT: Duration = Duration::from_secs(60);

/// What the stand-in coordinator received: (path, authorization header, body).
type Received = Arc<Mutex<Vec<(String, String, Value)>>>;

/// A stand-in for the coordinator's agent API: accepts and records every request.
async fn fake_coordinator() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let log = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let auth = req
                                .headers()
                                .get(http::header::AUTHORIZATION)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            log.lock().unwrap().push((path.clone(), auth, value));
                            let answer = if path == "/v1/readiness" {
                                r#"{"gated":true}"#
                            } else {
                                "{}"
                            };
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from(answer),
                            )))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received)
}

fn reports_for(received: &Received, uid: &str) -> Vec<RecreateReport> {
    received
        .lock()
        .unwrap()
        .iter()
        .filter(|(path, _, body)| path == "/v1/reports" && body["request"]["uid"] == uid)
        .filter_map(|(_, _, body)| serde_json::from_value(body.clone()).ok())
        .collect()
}

/// The test bed without relaunch, a stand-in coordinator, and what an agent the test starts
/// itself needs: a read-only kubeconfig, a token file and a state directory.
struct AgentBed {
    bed: Bed,
    /// The agent's files: kubeconfig, token, state, logs.
    dir: PathBuf,
    coordinator: SocketAddr,
    received: Received,
}

impl AgentBed {
    async fn start() -> Self {
        let bed = Bed::without_relaunch(1).await;
        let dir = bed.dir().join("agent");
        std::fs::create_dir_all(&dir).unwrap();
        // The agent runs as its service account, with exactly the RBAC manifests/base ships.
        relaunch_testbed::install_identities(bed.sandbox.api())
            .await
            .unwrap();
        let kubeconfig =
            relaunch_testbed::component_kubeconfig(bed.sandbox.api(), Component::Agent)
                .await
                .unwrap();
        std::fs::write(dir.join("kubeconfig"), kubeconfig).unwrap();
        std::fs::write(dir.join("token"), "coordinator-token\n").unwrap();
        let (coordinator, received) = fake_coordinator().await;
        Self {
            bed,
            dir,
            coordinator,
            received,
        }
    }

    fn pods(&self) -> kube::Api<Pod> {
        self.bed.pods()
    }

    async fn shutdown(self) {
        self.bed.shutdown().await;
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn agent(&self, env: &[(&str, &str)]) -> Agent {
        let admin = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let log_path = self.dir.join(format!("log-{}", admin.port()));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(binaries().agent)
            .args(["--node-name", NODE, "--kubeconfig"])
            .arg(self.dir.join("kubeconfig"))
            .arg("--cri-socket")
            .arg(self.bed.sandbox.containerd().socket())
            .args(["--coordinator-url", &format!("http://{}", self.coordinator)])
            .arg("--token-file")
            .arg(self.dir.join("token"))
            .args(["--admin-listen", &admin.to_string()])
            .arg("--state-dir")
            .arg(self.state())
            .env("RUST_LOG", "relaunch=debug,info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent {
            child,
            admin,
            log_path,
        }
    }

    /// A running pod on the node with one container `app` running `script` (no probe).
    async fn create_pod(&self, name: &str, restart_policy: &str, script: &str) -> Pod {
        self.bed
            .pod(
                name,
                Some(NODE),
                json!({
                    "restartPolicy": restart_policy,
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{"name": "app", "image": TEST_IMAGE,
                        "command": ["sh", "-c", script]}],
                }),
            )
            .await
    }

    /// Creates a request for container `app` of `pod` and admits it as the coordinator would;
    /// returns its UID.
    async fn create_request(&self, name: &str, pod: &Pod, strategy: Value) -> String {
        self.create_admitted(name, pod, json!([{"name": "app"}]), strategy)
            .await
    }

    /// Creates a request for `containers` of `pod` and admits it as the coordinator would
    /// (`status.admittedGeneration`: the agent acts only on admitted requests); returns its UID.
    async fn create_admitted(
        &self,
        name: &str,
        pod: &Pod,
        containers: Value,
        strategy: Value,
    ) -> String {
        let created = self.bed.recreate(name, pod, containers, strategy).await;
        admit(self, name, created.metadata.generation).await;
        created.metadata.uid.unwrap()
    }

    async fn final_report(&self, uid: &str, agent: &Agent) -> RecreateReport {
        eventually("final report", WAIT, || async {
            reports_for(&self.received, uid)
                .into_iter()
                .rfind(|r| r.phase.is_finished())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log()))
    }

    /// Waits for `uid`'s final report: Succeeded, container `app` of pod `pod` restarted exactly
    /// once since `before`, and the report names the old and new containers. Returns the new.
    async fn restarted_once(
        &self,
        uid: &str,
        agent: &Agent,
        pod: &str,
        before: &ContainerStatus,
    ) -> ContainerStatus {
        let report = self.final_report(uid, agent).await;
        assert_eq!(
            report.phase,
            RecreatePhase::Succeeded,
            "{report:?}\n{}",
            agent.log()
        );
        let now = container_status(&self.pods().get(pod).await.unwrap(), "app");
        assert_eq!(
            now.restart_count,
            before.restart_count + 1,
            "restarted exactly once"
        );
        assert_eq!(
            report.containers[0].previous_container_id,
            before.container_id
        );
        assert_eq!(report.containers[0].new_container_id, now.container_id);
        now
    }
}

struct Agent {
    child: Child,
    admin: SocketAddr,
    log_path: PathBuf,
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        support::http_get(self.admin, path).await
    }

    async fn wait_ready(&self) {
        eventually("agent /readyz", WAIT, || async {
            matches!(self.get("/readyz").await, Some((200, _))).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", self.log()));
    }

    /// The agent's metrics once every line in `lines` is among them: an outcome is counted just
    /// after its report is sent, so a test that has seen the report waits for the count.
    async fn wait_metrics(&self, lines: &[&str]) -> String {
        let last = std::sync::Mutex::new(String::new());
        eventually("agent metrics", WAIT, || async {
            let (_, body) = self.get("/metrics").await?;
            let all = lines.iter().all(|l| body.contains(l));
            *last.lock().unwrap() = body.clone();
            all.then_some(body)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: want {lines:?}\n{}", last.lock().unwrap()))
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    async fn wait_exit(mut self) -> std::process::ExitStatus {
        eventually("agent exit", WAIT, || {
            let status = self.child.try_wait().unwrap();
            async move { status }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", self.log()))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn journal_has(state: &Path, uid: &str) -> bool {
    state.join("requests").join(format!("{uid}.json")).exists()
}

#[tokio::test(flavor = "multi_thread")]
async fn recreates_a_container_in_place_and_refuses_restart_policy_never() {
    let bed = AgentBed::start().await;
    let agent = bed.agent(&[]);
    agent.wait_ready().await;

    // In place: same pod, new container, restartCount + 1, reports ending Succeeded.
    let before = bed.create_pod("web", "Always", EXITS_ON_SIGTERM).await;
    let old = container_status(&before, "app");
    let uid = bed
        .create_request("web-restart", &before, Value::Null)
        .await;
    let report = bed.final_report(&uid, &agent).await;
    assert_eq!(report.phase, RecreatePhase::Succeeded, "{report:?}");
    let after = bed.pods().get("web").await.unwrap();
    let new = container_status(&after, "app");
    assert_eq!(after.metadata.uid, before.metadata.uid, "same pod");
    assert_ne!(new.container_id, old.container_id, "new container");
    assert_eq!(new.restart_count, old.restart_count + 1);
    let state = &report.containers[0];
    assert_eq!(state.phase, ContainerRecreatePhase::Succeeded);
    assert_eq!(state.previous_container_id, old.container_id);
    assert_eq!(state.new_container_id, new.container_id);
    assert_eq!(state.restart_count, Some(new.restart_count));
    let t = &state.timestamps;
    assert!(t.shutdown.is_some() && t.stop.is_some() && t.restarted.is_some());
    assert!(t.ready.is_some() && t.finished.is_some());
    assert!(report.start_time.is_some() && report.completion_time.is_some());
    // Every report carries the token read from the token file.
    let received = bed.received.lock().unwrap().clone();
    assert!(
        received
            .iter()
            .all(|(_, auth, _)| auth == "Bearer coordinator-token")
    );
    let phases: Vec<RecreatePhase> = reports_for(&bed.received, &uid)
        .iter()
        .map(|r| r.phase)
        .collect();
    assert_eq!(phases.first(), Some(&RecreatePhase::Recreating));

    // restartPolicy Never: refused, nothing stopped.
    let once = bed.create_pod("once", "Never", EXITS_ON_SIGTERM).await;
    let once_before = container_status(&once, "app");
    let uid = bed.create_request("once-restart", &once, Value::Null).await;
    let report = bed.final_report(&uid, &agent).await;
    assert_eq!(report.phase, RecreatePhase::Failed);
    let message = report.message.unwrap_or_default();
    assert!(message.contains("restartPolicy: Never"), "{message}");
    let once_after = bed.pods().get("once").await.unwrap();
    let c = container_status(&once_after, "app");
    assert_eq!(c.container_id, once_before.container_id, "nothing stopped");
    assert_eq!(c.restart_count, 0);
    assert!(c.state.as_ref().unwrap().running.is_some());

    agent
        .wait_metrics(&[
            "relaunch_agent_recreates_total{result=\"succeeded\"} 1",
            "relaunch_agent_recreates_total{result=\"refused\"} 1",
            "relaunch_agent_cri_requests_total{code=\"OK\",method=\"StopContainer\"} 1",
        ])
        .await;

    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let status = agent.wait_exit().await;
    assert!(status.success(), "SIGTERM exits 0: {status}");
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_killed_around_a_stop_resumes_and_restarts_the_container_exactly_once() {
    let bed = AgentBed::start().await;
    let state = bed.state();
    // Ignores SIGTERM: only the runtime's SIGKILL after the grace ends it.
    let pod = bed.create_pod("db", "Always", STUBBORN).await;
    let first = container_status(&pod, "app");
    let strategy = json!({"terminationGracePeriodSeconds": 3});

    // 1. Killed right after journaling the stop, before issuing it.
    let agent = bed.agent(&[(failpoint::ENV, Failpoint::AfterStopJournal.name())]);
    let uid = bed.create_request("db-1", &pod, strategy.clone()).await;
    let status = agent.wait_exit().await;
    assert!(!status.success(), "the agent died after the journal write");
    assert!(journal_has(&state, &uid));
    let pod_now = bed.pods().get("db").await.unwrap();
    assert_eq!(
        container_status(&pod_now, "app").container_id,
        first.container_id,
        "not stopped yet"
    );

    let agent = bed.agent(&[]);
    let second = bed.restarted_once(&uid, &agent, "db", &first).await;

    // 2. Killed with SIGKILL while the stop is in progress (the runtime waits out the grace).
    let uid = bed.create_request("db-2", &pod, strategy).await;
    let state_dir = state.clone();
    eventually("stop journaled", WAIT, || async {
        journal_has(&state_dir, &uid).then_some(())
    })
    .await
    .unwrap();
    agent.signal(nix::sys::signal::Signal::SIGKILL);
    agent.wait_exit().await;

    let agent = bed.agent(&[]);
    bed.restarted_once(&uid, &agent, "db", &second).await;
    drop(agent);
    bed.shutdown().await;
}

/// Writes the status the coordinator's admission writes: Pending, admitted at `generation`.
async fn admit(bed: &AgentBed, name: &str, generation: Option<i64>) {
    bed.bed
        .requests()
        .patch_status(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {"phase": "Pending",
                "observedGeneration": generation, "admittedGeneration": generation}})),
        )
        .await
        .unwrap();
}

/// Sets request `name`'s status phase as the coordinator would (its deadline, a rollout's abort).
async fn set_phase(bed: &AgentBed, name: &str, phase: &str) {
    // Untyped: the phase may be one this release's types do not know.
    let resource = kube::api::ApiResource::erase::<relaunch_api::ContainerRecreateRequest>(&());
    kube::Api::<kube::api::DynamicObject>::namespaced_with(
        bed.bed.client.clone(),
        "default",
        &resource,
    )
    .patch_status(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"status": {"phase": phase, "message": "set by the test"}})),
    )
    .await
    .unwrap();
}

/// The first report of `uid` that shows its container's shutdown step begun.
async fn shutdown_started(bed: &AgentBed, uid: &str, agent: &Agent) -> jiff::Timestamp {
    eventually("shutdown step begun", WAIT, || async {
        reports_for(&bed.received, uid).iter().find_map(|r| {
            r.containers
                .first()?
                .timestamps
                .shutdown
                .as_ref()
                .map(|t| t.0)
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log()))
}

/// Issue 11, item 4: the coordinator fails request 1 while its worker is inside a long shutdown
/// action; request 2 for the same pod starts its shutdown only once that worker has ended, and
/// the container is restarted exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_request_for_a_pod_waits_until_the_first_worker_has_ended() {
    const SHUTDOWN_SECONDS: i64 = 6;
    let bed = AgentBed::start().await;
    let agent = bed.agent(&[]);
    agent.wait_ready().await;
    let pod = bed.create_pod("one", "Always", EXITS_ON_SIGTERM).await;
    let before = container_status(&pod, "app");
    let long = json!([{"name": "app", "shutdown": {"exec": {"command":
        ["sh", "-c", format!("sleep {SHUTDOWN_SECONDS}")]}}}]);
    let strategy = json!({"terminationGracePeriodSeconds": 30});
    let first = bed
        .create_admitted("one-1", &pod, long.clone(), strategy.clone())
        .await;
    let first_shutdown = shutdown_started(&bed, &first, &agent).await;
    // Inside the action: the coordinator fails request 1, and request 2 arrives.
    set_phase(&bed, "one-1", "Failed").await;
    let second = bed
        .create_admitted("one-2", &pod, json!([{"name": "app"}]), strategy)
        .await;
    let second_shutdown = shutdown_started(&bed, &second, &agent).await;
    let gap = second_shutdown.duration_since(first_shutdown);
    assert!(
        gap >= jiff::SignedDuration::from_secs(SHUTDOWN_SECONDS),
        "request 2 began its shutdown {gap:?} after request 1's, while request 1's action ran\n{}",
        agent.log()
    );
    bed.restarted_once(&second, &agent, "one", &before).await;
    assert!(
        reports_for(&bed.received, &first)
            .iter()
            .all(|r| !r.phase.is_finished()),
        "request 1's worker stopped without a result of its own"
    );
    drop(agent);
    bed.shutdown().await;
}

/// Issue 11, item 8: a worker that panics fails its request with a message, is counted, and
/// leaves neither the agent nor the pod stuck: the pod's next request gets a worker too.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_panics_fails_its_request_and_frees_the_pod() {
    let bed = AgentBed::start().await;
    let agent = bed.agent(&[(failpoint::ENV, Failpoint::PanicInWorker.name())]);
    agent.wait_ready().await;
    let pod = bed.create_pod("crash", "Always", EXITS_ON_SIGTERM).await;
    let before = container_status(&pod, "app");
    for name in ["crash-1", "crash-2"] {
        let uid = bed.create_request(name, &pod, Value::Null).await;
        let report = bed.final_report(&uid, &agent).await;
        assert_eq!(report.phase, RecreatePhase::Failed, "{report:?}");
        let message = report.message.clone().unwrap_or_default();
        assert!(
            message.contains("the agent's worker crashed: failpoint panic-in-worker"),
            "{message}"
        );
        assert_eq!(report.containers.len(), 1, "{report:?}");
        assert_eq!(report.containers[0].phase, ContainerRecreatePhase::Failed);
        assert!(report.containers[0].message.is_some(), "{report:?}");
    }
    let now = container_status(&bed.pods().get("crash").await.unwrap(), "app");
    assert_eq!(now.container_id, before.container_id, "nothing was stopped");
    agent
        .wait_metrics(&[
            "relaunch_agent_errors_total{kind=\"worker\"} 2",
            "relaunch_agent_recreates_in_flight 0",
        ])
        .await;
    assert!(matches!(agent.get("/readyz").await, Some((200, _))));
    drop(agent);
    bed.shutdown().await;
}

/// What a newer release's CRD looks like to the API server: status phase `phase` is allowed.
async fn allow_newer_phase(bed: &AgentBed, phase: &str) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(bed.bed.client.clone());
    let name = "containerrecreaterequests.relaunch.dev";
    let mut crd = serde_json::to_value(crds.get(name).await.unwrap()).unwrap();
    let enum_path =
        "/spec/versions/0/schema/openAPIV3Schema/properties/status/properties/phase/enum";
    crd.pointer_mut(enum_path)
        .and_then(Value::as_array_mut)
        .unwrap()
        .push(json!(phase));
    let crd: CustomResourceDefinition = serde_json::from_value(crd).unwrap();
    crds.replace(name, &kube::api::PostParams::default(), &crd)
        .await
        .unwrap();
}

/// Issue 11, item 9: a request whose status holds a phase of a newer release is read (as
/// Unknown), not acted on, and stalls neither the watch nor the other requests.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_in_a_phase_of_a_newer_release_does_not_stop_the_agent() {
    let bed = AgentBed::start().await;
    allow_newer_phase(&bed, "Restarting").await;
    let newer = bed.create_pod("newer", "Always", EXITS_ON_SIGTERM).await;
    let newer_before = container_status(&newer, "app");
    // Written by a "newer coordinator" before the agent ever saw the request.
    let uid_newer = bed.create_request("newer-1", &newer, Value::Null).await;
    set_phase(&bed, "newer-1", "Restarting").await;
    let agent = bed.agent(&[]);
    agent.wait_ready().await;

    // Another request, created after the agent's first list: the watch goes on.
    let pod = bed.create_pod("other", "Always", EXITS_ON_SIGTERM).await;
    let before = container_status(&pod, "app");
    let uid = bed.create_request("other-1", &pod, Value::Null).await;
    bed.restarted_once(&uid, &agent, "other", &before).await;
    // And a change to the newer one arrives through the watch, and is not acted on either.
    set_phase(&bed, "newer-1", "Restarting").await;
    let pod = bed.create_pod("third", "Always", EXITS_ON_SIGTERM).await;
    let before = container_status(&pod, "app");
    let uid = bed.create_request("third-1", &pod, Value::Null).await;
    bed.restarted_once(&uid, &agent, "third", &before).await;

    assert!(
        reports_for(&bed.received, &uid_newer).is_empty(),
        "nothing reported for the request in the unknown phase"
    );
    let now = container_status(&bed.pods().get("newer").await.unwrap(), "app");
    assert_eq!(now.container_id, newer_before.container_id, "not acted on");
    assert!(
        agent
            .log()
            .contains("in a phase this version of the agent does not know"),
        "{}",
        agent.log()
    );
    drop(agent);
    bed.shutdown().await;
}

/// Issue 11, item 7: a journal entry that cannot be read, or that is for another pod, makes
/// the agent fail the request with a message — never start it over on the current container.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_or_mismatched_journal_entry_fails_its_request_and_touches_nothing() {
    use relaunch_agent::machine::{ContainerProgress, RequestProgress};
    let bed = AgentBed::start().await;
    let garbled = bed.create_pod("garbled", "Always", EXITS_ON_SIGTERM).await;
    let replaced = bed.create_pod("replaced", "Always", EXITS_ON_SIGTERM).await;
    // The agent is down while the requests are created; its journal holds their entries.
    let uid_garbled = bed.create_request("garbled-1", &garbled, Value::Null).await;
    let uid_replaced = bed
        .create_request("replaced-1", &replaced, Value::Null)
        .await;
    let requests = bed.state().join("requests");
    std::fs::create_dir_all(&requests).unwrap();
    std::fs::write(
        requests.join(format!("{uid_garbled}.json")),
        b"{\"version\": 1, \"prog",
    )
    .unwrap();
    let mut container = ContainerProgress::new("app");
    container.phase = ContainerRecreatePhase::Stopping;
    container.previous_container_id = Some("containerd://gone".into());
    let progress = RequestProgress {
        request: relaunch_api::report::RequestRef {
            namespace: "default".into(),
            name: "replaced-1".into(),
            uid: uid_replaced.clone(),
        },
        pod_name: "replaced".into(),
        pod_uid: "an-earlier-pod".into(),
        phase: RecreatePhase::Recreating,
        message: None,
        start_time: None,
        completion_time: None,
        containers: vec![container],
        sequence: 0,
    };
    std::fs::write(
        requests.join(format!("{uid_replaced}.json")),
        relaunch_agent::journal::encode(&progress),
    )
    .unwrap();

    let agent = bed.agent(&[]);
    for (uid, pod, before, expected) in [
        (&uid_garbled, "garbled", &garbled, "cannot be read"),
        (
            &uid_replaced,
            "replaced",
            &replaced,
            "is for pod UID an-earlier-pod",
        ),
    ] {
        let report = bed.final_report(uid, &agent).await;
        assert_eq!(report.phase, RecreatePhase::Failed, "{report:?}");
        let message = report.message.unwrap_or_default();
        assert!(message.contains(expected), "{message}");
        assert!(message.contains("refuses to act"), "{message}");
        let now = container_status(&bed.pods().get(pod).await.unwrap(), "app");
        assert_eq!(
            now.container_id,
            container_status(before, "app").container_id,
            "nothing restarted"
        );
    }
    drop(agent);
    bed.shutdown().await;
}
