//! The CRI client against a real containerd started by the test (needs root).

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use relaunch_cri::{ClientConfig, ContainerState, CriError, CriMetrics, RuntimeClient};
use relaunch_testbed::Containerd;
use relaunch_testbed::pod::{self, ContainerTemplate, PodIdentity, PodSandbox};
use support::{EXITS_ON_SIGTERM, STUBBORN, eventually};

const SLEEP_FOREVER: &str = "sleep 100000";

struct Node {
    containerd: Containerd,
    client: RuntimeClient,
}

impl Node {
    async fn start() -> Self {
        let containerd = Containerd::start().await.expect("start containerd");
        let client = containerd.client().await.expect("connect to containerd");
        Self { containerd, client }
    }

    async fn pod(&self, name: &str) -> (PodIdentity, PodSandbox) {
        let identity = PodIdentity {
            name: name.to_string(),
            namespace: "default".to_string(),
            uid: format!("uid-{name}-0000-0000-000000000000"),
            node: None,
        };
        let sandbox =
            pod::run_pod_sandbox(&self.client, &identity, &self.containerd.pod_log_root())
                .await
                .expect("run pod sandbox");
        (identity, sandbox)
    }

    async fn run(&self, pod: &(PodIdentity, PodSandbox), container: ContainerTemplate) -> String {
        pod::start_container(&self.client, &pod.1, &pod.0, &container)
            .await
            .expect("start container")
    }

    async fn wait_exited(&self, id: &str) -> i32 {
        eventually("container to exit", Duration::from_secs(30), || async {
            let status = self.client.container_status(id).await.ok()?;
            (status.state == ContainerState::Exited).then_some(status.exit_code)
        })
        .await
        .expect("container exits")
    }
}

fn sh(name: &str, script: &str) -> ContainerTemplate {
    ContainerTemplate::shell(name, script)
}

#[tokio::test]
async fn finds_exactly_the_pods_container_newest_attempt_first() {
    let node = Node::start().await;
    let a = node.pod("db-0").await;
    let b = node.pod("db-1").await;

    let old = node.run(&a, sh("db", "exit 1")).await;
    node.wait_exited(&old).await;
    let mut restarted = sh("db", SLEEP_FOREVER);
    restarted.restart_count = 1;
    let new = node.run(&a, restarted).await;
    let sidecar = node.run(&a, sh("metrics", SLEEP_FOREVER)).await;
    let other_pods_db = node.run(&b, sh("db", SLEEP_FOREVER)).await;

    let found = node
        .client
        .pod_containers(&a.0.uid, Some("db"))
        .await
        .unwrap();
    let ids: Vec<&str> = found.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![new.as_str(), old.as_str()],
        "newest attempt first, only pod a's db"
    );
    assert_eq!(found[0].attempt, 1);
    assert_eq!(found[0].state, ContainerState::Running);
    assert_eq!(found[1].state, ContainerState::Exited);
    assert!(
        found
            .iter()
            .all(|c| c.owner.pod_uid == a.0.uid && c.owner.container_name == "db")
    );
    assert!(!ids.contains(&other_pods_db.as_str()));

    let all_of_a = node.client.pod_containers(&a.0.uid, None).await.unwrap();
    assert_eq!(all_of_a.len(), 3);
    assert!(all_of_a.iter().any(|c| c.id == sidecar));

    let status = node.client.container_status(&new).await.unwrap();
    assert_eq!(status.state, ContainerState::Running);
    assert_eq!(status.owner.pod_name, "db-0");
    assert_eq!(status.annotations.restart_count, Some(1));
    assert!(status.annotations.hash.is_some());
    assert!(status.started_at.is_some());
    assert!(
        status.log_path.ends_with("/db/1.log"),
        "log path {}",
        status.log_path
    );

    let exited = node.client.container_status(&old).await.unwrap();
    assert_eq!(exited.exit_code, 1);
    assert_eq!(exited.reason, "Error");
    assert!(exited.finished_at.is_some());
}

#[tokio::test]
async fn exec_sync_returns_output_and_exit_code_and_records_metrics() {
    let containerd = Containerd::start().await.unwrap();
    let registry = prometheus::Registry::new();
    let metrics = CriMetrics::register(&registry).unwrap();
    let client = RuntimeClient::connect(containerd.socket(), ClientConfig::default(), metrics)
        .await
        .unwrap();
    let node = Node { containerd, client };
    let p = node.pod("exec").await;
    let id = node.run(&p, sh("app", SLEEP_FOREVER)).await;

    let cmd = |s: &str| vec!["/bin/sh".to_string(), "-c".to_string(), s.to_string()];
    let out = node
        .client
        .exec_sync(
            &id,
            &cmd("echo out; echo err >&2; exit 3"),
            Duration::from_secs(10),
            4096,
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 3);
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert!(!out.truncated);

    let big = node
        .client
        .exec_sync(
            &id,
            &cmd("head -c 100000 /dev/zero"),
            Duration::from_secs(10),
            1024,
        )
        .await
        .unwrap();
    assert_eq!(big.exit_code, 0);
    assert_eq!(big.stdout.len(), 1024);
    assert!(big.truncated);

    let exposed = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        exposed.contains(r#"relaunch_agent_cri_requests_total{code="OK",method="ExecSync"} 2"#),
        "{exposed}"
    );
    assert!(
        exposed
            .contains(r#"relaunch_agent_cri_request_duration_seconds_count{method="ExecSync"} 2"#)
    );
}

#[tokio::test]
async fn exec_sync_past_its_timeout_is_killed_and_reported_as_timed_out() {
    let node = Node::start().await;
    let p = node.pod("slow-exec").await;
    let id = node.run(&p, sh("app", SLEEP_FOREVER)).await;

    let started = Instant::now();
    let result = node
        .client
        .exec_sync(
            &id,
            &["sleep".into(), "987".into()],
            Duration::from_secs(1),
            4096,
        )
        .await;
    assert!(
        matches!(result, Err(CriError::ExecTimedOut { .. })),
        "expected a timeout, got {result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );

    // The runtime killed the exec'd process: it is no longer in the container.
    eventually(
        "exec'd sleep to be gone",
        Duration::from_secs(10),
        || async {
            let ps = node
                .client
                .exec_sync(
                    &id,
                    &["ps".into(), "-o".into(), "args".into()],
                    Duration::from_secs(5),
                    65536,
                )
                .await
                .ok()?;
            (!String::from_utf8_lossy(&ps.stdout).contains("sleep 987")).then_some(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn stopping_a_container_that_exits_on_sigterm_returns_well_before_the_grace() {
    let node = Node::start().await;
    let p = node.pod("graceful").await;
    let id = node.run(&p, sh("db", EXITS_ON_SIGTERM)).await;

    let started = Instant::now();
    node.client
        .stop_container(&id, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let status = node.client.container_status(&id).await.unwrap();
    assert_eq!(status.state, ContainerState::Exited);
    assert_eq!(status.exit_code, 0, "exited by itself, not killed");
}

#[tokio::test]
async fn stopping_a_container_that_ignores_sigterm_kills_it_after_the_grace_not_before() {
    let node = Node::start().await;
    let p = node.pod("stubborn").await;
    let id = node.run(&p, sh("db", STUBBORN)).await;

    let grace = Duration::from_secs(2);
    let started = Instant::now();
    node.client.stop_container(&id, grace).await.unwrap();
    let took = started.elapsed();
    assert!(took >= grace, "killed before the grace period: {took:?}");
    assert!(
        took < grace + Duration::from_secs(10),
        "SIGKILL came late: {took:?}"
    );
    let status = node.client.container_status(&id).await.unwrap();
    assert_eq!(status.state, ContainerState::Exited);
    assert_eq!(status.exit_code, 137, "ended by SIGKILL");
}

#[tokio::test]
async fn stopping_an_already_exited_container_succeeds() {
    let node = Node::start().await;
    let p = node.pod("done").await;
    let id = node.run(&p, sh("job", "exit 0")).await;
    node.wait_exited(&id).await;
    node.client
        .stop_container(&id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        node.client.container_status(&id).await.unwrap().exit_code,
        0
    );
}

#[tokio::test]
async fn stopping_an_unknown_container_is_not_found() {
    let node = Node::start().await;
    let result = node
        .client
        .stop_container("0123456789abcdef", Duration::from_secs(1))
        .await;
    assert!(
        matches!(result, Err(CriError::NotFound { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_stopped_containerd_is_reported_unavailable_promptly() {
    let mut node = Node::start().await;
    node.containerd.stop_daemon();

    let started = Instant::now();
    let result = node.client.version().await;
    assert!(
        matches!(result, Err(CriError::Unavailable { .. })),
        "{result:?}"
    );
    assert!(result.unwrap_err().is_transient());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    let reconnect = RuntimeClient::connect(
        node.containerd.socket(),
        quick(),
        CriMetrics::unregistered(),
    )
    .await;
    assert!(
        matches!(
            reconnect,
            Err(CriError::SocketMissing { .. } | CriError::Unavailable { .. })
        ),
        "{reconnect:?}"
    );
}

fn quick() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
    }
}
