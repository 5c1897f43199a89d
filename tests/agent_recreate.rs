//! relaunch-agent as a real process against the test bed (real containerd, test API server,
//! kubelet simulator), with a stand-in coordinator that records what the agent sends.
//! Needs root.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::{Api, PostParams};
use relaunch_agent::failpoint::{self, Failpoint};
use relaunch_api::report::RecreateReport;
use relaunch_api::{
    ContainerRecreatePhase, ContainerRecreateRequest, LABEL_NODE_NAME, LABEL_POD_UID, RecreatePhase,
};
use relaunch_testbed::eventually;
use relaunch_testbed::{Sandbox, SandboxConfig};
use serde_json::{Value, json};

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

struct Bed {
    sandbox: Sandbox,
    dir: tempfile::TempDir,
    client: kube::Client,
    coordinator: SocketAddr,
    received: Received,
    agent_kubeconfig: PathBuf,
}

impl Bed {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::start(SandboxConfig::new(dir.path().join("sandbox"), 1, 0))
            .await
            .expect("sandbox");
        let client = sandbox.client().unwrap();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        // The sandbox may have registered it already.
        match crds
            .create(&PostParams::default(), &ContainerRecreateRequest::crd())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("register the CRD: {e}"),
        }
        // The agent runs with a service-account token: read-only, as its RBAC.
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let token = accounts
            .create_token_request(
                "default",
                &PostParams::default(),
                &TokenRequest {
                    spec: TokenRequestSpec {
                        audiences: vec![relaunch_testbed::API_AUDIENCE.to_string()],
                        expiration_seconds: Some(3600),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .status
            .unwrap()
            .token;
        let agent_kubeconfig = dir.path().join("agent.kubeconfig");
        std::fs::write(&agent_kubeconfig, sandbox.api().kubeconfig(Some(&token))).unwrap();
        std::fs::write(dir.path().join("token"), "coordinator-token\n").unwrap();
        let (coordinator, received) = fake_coordinator().await;
        Self {
            sandbox,
            dir,
            client,
            coordinator,
            received,
            agent_kubeconfig,
        }
    }

    fn agent(&self, env: &[(&str, &str)]) -> Agent {
        let admin = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let log_path = self.dir.path().join(format!("agent-{}.log", admin.port()));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_relaunch-agent"))
            .args(["--node-name", NODE, "--kubeconfig"])
            .arg(&self.agent_kubeconfig)
            .arg("--cri-socket")
            .arg(self.sandbox.containerd().socket())
            .args(["--coordinator-url", &format!("http://{}", self.coordinator)])
            .arg("--token-file")
            .arg(self.dir.path().join("token"))
            .args(["--admin-listen", &admin.to_string()])
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
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

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    async fn create_pod(&self, name: &str, restart_policy: &str, script: &str) -> Pod {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "nodeName": NODE,
                "restartPolicy": restart_policy,
                "terminationGracePeriodSeconds": 5,
                "containers": [{"name": "app", "image": "relaunch.test/busybox:1",
                    "command": ["sh", "-c", script]}],
            }
        }))
        .unwrap();
        self.pods()
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
        self.wait_pod(name, "pod running and ready", |p| {
            app(p).is_some_and(|c| c.ready && c.container_id.is_some())
        })
        .await
    }

    async fn wait_pod(&self, name: &str, what: &str, check: impl Fn(&Pod) -> bool) -> Pod {
        let pods = self.pods();
        eventually(what, WAIT, || async {
            let pod = pods.get(name).await.ok()?;
            check(&pod).then_some(pod)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn create_request(&self, name: &str, pod: &Pod, spec: Value) -> String {
        let crr: ContainerRecreateRequest = serde_json::from_value(json!({
            "apiVersion": "relaunch.dev/v1alpha1", "kind": "ContainerRecreateRequest",
            "metadata": {"name": name, "namespace": "default", "labels": {
                LABEL_NODE_NAME: NODE,
                LABEL_POD_UID: pod.metadata.uid.clone().unwrap(),
            }},
            "spec": spec,
        }))
        .unwrap();
        let api: Api<ContainerRecreateRequest> = Api::namespaced(self.client.clone(), "default");
        api.create(&PostParams::default(), &crr)
            .await
            .unwrap()
            .metadata
            .uid
            .unwrap()
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
}

fn app(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "app")
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
        let mut stream = tokio::net::TcpStream::connect(self.admin).await.ok()?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut out = String::new();
        stream.read_to_string(&mut out).await.ok()?;
        let code = out.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, out))
    }

    async fn wait_ready(&self) {
        eventually("agent /readyz", WAIT, || async {
            matches!(self.get("/readyz").await, Some((200, _))).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", self.log()));
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
    let bed = Bed::start().await;
    let agent = bed.agent(&[]);
    agent.wait_ready().await;

    // In place: same pod, new container, restartCount + 1, reports ending Succeeded.
    let before = bed
        .create_pod("web", "Always", "trap 'exit 0' TERM; sleep 100000 & wait")
        .await;
    let old = app(&before).unwrap().clone();
    let uid = bed
        .create_request(
            "web-restart",
            &before,
            json!({"podName": "web", "containers": [{"name": "app"}]}),
        )
        .await;
    let report = bed.final_report(&uid, &agent).await;
    assert_eq!(report.phase, RecreatePhase::Succeeded, "{report:?}");
    let after = bed.pods().get("web").await.unwrap();
    let new = app(&after).unwrap();
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
    let once = bed
        .create_pod("once", "Never", "trap 'exit 0' TERM; sleep 100000 & wait")
        .await;
    let once_before = app(&once).unwrap().clone();
    let uid = bed
        .create_request(
            "once-restart",
            &once,
            json!({"podName": "once", "containers": [{"name": "app"}]}),
        )
        .await;
    let report = bed.final_report(&uid, &agent).await;
    assert_eq!(report.phase, RecreatePhase::Failed);
    let message = report.message.unwrap_or_default();
    assert!(message.contains("restartPolicy: Never"), "{message}");
    let once_after = bed.pods().get("once").await.unwrap();
    let c = app(&once_after).unwrap();
    assert_eq!(c.container_id, once_before.container_id, "nothing stopped");
    assert_eq!(c.restart_count, 0);
    assert!(c.state.as_ref().unwrap().running.is_some());

    let (_, metrics) = agent.get("/metrics").await.unwrap();
    assert!(
        metrics.contains("relaunch_agent_recreates_total{result=\"succeeded\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("relaunch_agent_recreates_total{result=\"refused\"} 1"));
    assert!(
        metrics
            .contains("relaunch_agent_cri_requests_total{code=\"OK\",method=\"StopContainer\"} 1")
    );

    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let status = agent.wait_exit().await;
    assert!(status.success(), "SIGTERM exits 0: {status}");
    bed.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_killed_around_a_stop_resumes_and_restarts_the_container_exactly_once() {
    let bed = Bed::start().await;
    let state = bed.dir.path().join("state");
    // Ignores SIGTERM: only the runtime's SIGKILL after the grace ends it.
    let pod = bed
        .create_pod("db", "Always", "trap '' TERM; while true; do sleep 1; done")
        .await;
    let first = app(&pod).unwrap().clone();
    let spec = json!({"podName": "db", "containers": [{"name": "app"}],
        "strategy": {"terminationGracePeriodSeconds": 3}});

    // 1. Killed right after journaling the stop, before issuing it.
    let agent = bed.agent(&[(failpoint::ENV, Failpoint::AfterStopJournal.name())]);
    let uid = bed.create_request("db-1", &pod, spec.clone()).await;
    let status = agent.wait_exit().await;
    assert!(!status.success(), "the agent died after the journal write");
    assert!(journal_has(&state, &uid));
    let pod_now = bed.pods().get("db").await.unwrap();
    assert_eq!(
        app(&pod_now).unwrap().container_id,
        first.container_id,
        "not stopped yet"
    );

    let agent = bed.agent(&[]);
    let report = bed.final_report(&uid, &agent).await;
    assert_eq!(report.phase, RecreatePhase::Succeeded, "{report:?}");
    let pod = bed.pods().get("db").await.unwrap();
    let second = app(&pod).unwrap().clone();
    assert_eq!(
        second.restart_count,
        first.restart_count + 1,
        "restarted exactly once"
    );
    assert_eq!(
        report.containers[0].previous_container_id,
        first.container_id
    );
    assert_eq!(report.containers[0].new_container_id, second.container_id);

    // 2. Killed with SIGKILL while the stop is in progress (the runtime waits out the grace).
    let uid = bed.create_request("db-2", &pod, spec).await;
    let state_dir = state.clone();
    eventually("stop journaled", WAIT, || async {
        journal_has(&state_dir, &uid).then_some(())
    })
    .await
    .unwrap();
    agent.signal(nix::sys::signal::Signal::SIGKILL);
    agent.wait_exit().await;

    let agent = bed.agent(&[]);
    let report = bed.final_report(&uid, &agent).await;
    assert_eq!(
        report.phase,
        RecreatePhase::Succeeded,
        "{report:?}\n{}",
        agent.log()
    );
    let pod = bed.pods().get("db").await.unwrap();
    let third = app(&pod).unwrap().clone();
    assert_eq!(
        third.restart_count,
        second.restart_count + 1,
        "restarted exactly once"
    );
    assert_eq!(
        report.containers[0].previous_container_id,
        second.container_id
    );
    assert_eq!(report.containers[0].new_container_id, third.container_id);
    drop(agent);
    bed.sandbox.shutdown().await;
}
