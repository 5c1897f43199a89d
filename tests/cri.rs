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

/// A Unix-socket proxy in front of containerd that, once `cut` is set, swallows the next
/// response it sees (the first HTTP/2 HEADERS frame from the runtime on a stream) and drops that
/// connection instead: the call was carried out, its caller only sees the connection go. Every
/// other connection and frame passes through.
struct CuttingProxy {
    socket: std::path::PathBuf,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    fn start(upstream: std::path::PathBuf) -> Self {
        use std::sync::atomic::AtomicBool;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("cri.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let cut = std::sync::Arc::new(AtomicBool::new(false));
        let cut_flag = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::UnixStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(Self::relay(client, server, cut_flag.clone()));
            }
        });
        Self {
            socket,
            cut,
            _dir: dir,
            task,
        }
    }

    async fn relay(
        client: tokio::net::UnixStream,
        server: tokio::net::UnixStream,
        cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let upstream = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        });
        // The runtime's side, frame by frame (9-byte header: length, type, flags, stream).
        loop {
            let mut header = [0u8; 9];
            if server_read.read_exact(&mut header).await.is_err() {
                break;
            }
            let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; length];
            if server_read.read_exact(&mut payload).await.is_err() {
                break;
            }
            let stream =
                u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            let is_response = header[3] == 0x1 && stream != 0;
            if is_response && cut.swap(false, Ordering::SeqCst) {
                break;
            }
            if client_write.write_all(&header).await.is_err()
                || client_write.write_all(&payload).await.is_err()
            {
                break;
            }
        }
        upstream.abort();
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_stop_whose_answer_is_lost_counts_when_the_container_exited() {
    let mut node = Node::start().await;
    let p = node.pod("lost-answer").await;
    let id = node.run(&p, sh("db", EXITS_ON_SIGTERM)).await;
    let proxy = CuttingProxy::start(node.containerd.socket().to_path_buf());
    let client = RuntimeClient::connect(
        proxy.socket.clone(),
        ClientConfig::default(),
        CriMetrics::unregistered(),
    )
    .await
    .unwrap();

    // The runtime stops the container; its answer never arrives.
    proxy.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    let stopped = client.stop_container(&id, Duration::from_secs(30)).await;
    assert!(
        !proxy.cut.load(std::sync::atomic::Ordering::SeqCst),
        "the answer was cut"
    );
    assert!(stopped.is_ok(), "{stopped:?}");
    assert_eq!(
        node.client.container_status(&id).await.unwrap().state,
        ContainerState::Exited
    );

    // A failed stop whose outcome cannot be read (the runtime gone) stays an error.
    let running = node.run(&p, sh("sidecar", STUBBORN)).await;
    node.containerd.stop_daemon();
    let refused = client
        .stop_container(&running, Duration::from_secs(1))
        .await;
    assert!(refused.is_err(), "{refused:?}");
}
