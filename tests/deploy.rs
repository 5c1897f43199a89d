//! relaunch as users deploy it (`relaunch-sandbox up --deploy`): its images, built from this
//! build's binaries, run by the agent DaemonSet and the coordinator Deployment that
//! `kubectl apply -k manifests/base` creates, with the TLS Secret and CA ConfigMap made by the
//! recipe in manifests/README.md. One deployed sandbox serves every check, in order:
//!
//! 1. 3 agent pods and 2 coordinator pods Ready, their containers from the built images;
//! 2. they run as the manifests say: coordinator user 65532, agent root, both without
//!    capabilities, no_new_privs, seccomp, read-only root filesystem (read from /proc of the
//!    container's process, found through containerd);
//! 3. the agents' projected coordinator token is rotated, and a request after the rotation
//!    restarts a pod in place (its reports were accepted with the new token);
//! 4. a RollingRestart of a 3-pod StatefulSet during which the leading coordinator's pod is
//!    deleted: the Deployment replaces it, the rollout succeeds, each pod restarted once;
//! 5. an agent pod deleted while its node's request is in the stop step: the DaemonSet replaces
//!    it, the new agent resumes from the journal on the node's hostPath, and the container is
//!    restarted exactly once;
//! 6. an agent started on a node's host beside its DaemonSet pod (as the systemd unit would run
//!    it, same state directory) refuses to start: one agent per node.

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use relaunch_api::{RecreatePhase, RolloutPhase};
use relaunch_testbed::{
    AGENT_DAEMONSET, COORDINATOR_DEPLOYMENT, COORDINATOR_LEASE, IMAGE_USER, RELAUNCH_NAMESPACE,
    sandbox_image,
};
use serde_json::json;
use support::*;

/// How old a projected token may get before the kubelet renews it, in this sandbox.
const TOKEN_MAX_AGE: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaunch_deployed_through_its_manifests() {
    let started = std::time::Instant::now();
    let bed = Bed::deployed(3, TOKEN_MAX_AGE).await;
    eprintln!("deployed in {:.1}s", started.elapsed().as_secs_f64());
    let system: Api<Pod> = Api::namespaced(bed.client.clone(), RELAUNCH_NAMESPACE);

    // 1. What kubectl shows: one Ready agent per node, two Ready coordinators.
    let agents = relaunch_pods(&system, AGENT_DAEMONSET).await;
    let coordinators = relaunch_pods(&system, COORDINATOR_DEPLOYMENT).await;
    assert_eq!(agents.len(), 3, "one agent pod per node");
    assert_eq!(coordinators.len(), 2, "two coordinator replicas");
    let mut nodes: Vec<&str> = agents.iter().map(node_of).collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes, ["node-1", "node-2", "node-3"]);
    assert!(agents.iter().chain(&coordinators).all(ready));
    let out = bed
        .kubectl(&["-n", RELAUNCH_NAMESPACE, "get", "pods", "-o", "wide"])
        .await
        .unwrap();
    eprintln!("{out}");

    // 2. The processes as the manifests ask for them, read from the kernel.
    let containerd = bed.sandbox.containerd().socket().to_path_buf();
    let images = container_images(&containerd);
    for (pod, image, user) in agents
        .iter()
        .map(|p| (p, sandbox_image("relaunch-agent"), 0))
        .chain(
            coordinators
                .iter()
                .map(|p| (p, sandbox_image("relaunch-coordinator"), IMAGE_USER)),
        )
    {
        let name = pod.metadata.name.clone().unwrap();
        let id = container_id(pod);
        assert_eq!(
            images.get(&id).map(String::as_str),
            Some(image.as_str()),
            "{name} runs the built image"
        );
        let pid = task_pid(&containerd, &id);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}:")))
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        assert_eq!(
            field("Uid"),
            format!("{user} {user} {user} {user}"),
            "{name} user"
        );
        assert_eq!(
            field("CapEff"),
            "0000000000000000",
            "{name} has no capabilities"
        );
        assert_eq!(field("NoNewPrivs"), "1", "{name} cannot gain privileges");
        assert_eq!(field("Seccomp"), "2", "{name} runs under a seccomp filter");
        assert!(
            root_is_read_only(pid),
            "{name}'s root filesystem is read-only"
        );
    }

    // 3. Token rotation: the agents' coordinator token changes, reports keep being accepted.
    let agent_one = agents
        .iter()
        .find(|p| node_of(p) == "node-1")
        .unwrap()
        .clone();
    let token_file = bed
        .dir()
        .join("nodes/node-1/volumes/pods")
        .join(agent_one.metadata.uid.as_deref().unwrap())
        .join("volumes/coordinator-credentials/token");
    let first_token = std::fs::read_to_string(&token_file).unwrap();
    bed.pod("single", Some("node-1"), database_pod_spec()).await;
    let single = bed.ready_pod("single").await;
    eventually("the agent's token to be rotated", WAIT, || async {
        let now = std::fs::read_to_string(&token_file).ok()?;
        (!now.is_empty() && now != first_token).then_some(())
    })
    .await
    .unwrap();
    bed.recreate(
        "single-restart",
        &single,
        json!([{"name": "db", "shutdown": {"exec": {"command": ["touch", "/tmp/shutdown"]}}}]),
        json!({}),
    )
    .await;
    let status = bed.finished("single-restart").await;
    assert_eq!(status.phase, RecreatePhase::Succeeded, "{status:?}");
    bed.assert_each_restarted_once(std::slice::from_ref(&single))
        .await;

    // 4. A rollout survives losing its leader: delete the leading coordinator's pod mid-way.
    let slow_shutdown = json!({"terminationGracePeriodSeconds": 10,
        "containers": [container("db", DATABASE)]});
    let before = bed.statefulset("db", 3, slow_shutdown).await;
    bed.rollout(
        "db-rollout",
        json!({
            "target": {"workloadRef": {"kind": "StatefulSet", "name": "db"}},
            "containers": ["db"],
            "shutdown": [{"container": "db",
                          "exec": {"command": ["sh", "-c", "sleep 2; touch /tmp/shutdown"]}}],
            "strategy": {"maxUnavailable": 1},
        }),
    )
    .await;
    let leases: Api<Lease> = Api::namespaced(bed.client.clone(), RELAUNCH_NAMESPACE);
    let leader = eventually("a coordinator to lead", WAIT, || async {
        let holder = leases
            .get(COORDINATOR_LEASE)
            .await
            .ok()?
            .spec?
            .holder_identity?;
        // The identity is `<pod name>_<pid>`.
        let pod = holder.rsplit_once('_')?.0.to_string();
        coordinators
            .iter()
            .any(|c| c.metadata.name.as_deref() == Some(pod.as_str()))
            .then_some(pod)
    })
    .await
    .unwrap();
    eventually("the rollout to be under way", WAIT, || async {
        let status = bed.rollouts().get("db-rollout").await.ok()?.status?;
        (status.phase == RolloutPhase::Progressing
            && !bed.requests_of("db-rollout").await.is_empty())
        .then_some(())
    })
    .await
    .unwrap();
    system
        .delete(&leader, &DeleteParams::default())
        .await
        .unwrap();
    let status = bed
        .rollout_finished("db-rollout", Duration::from_secs(90))
        .await;
    assert_eq!(status.phase, RolloutPhase::Succeeded, "{status:?}");
    bed.assert_each_restarted_once(&before).await;
    let deployments: Api<Deployment> = Api::namespaced(bed.client.clone(), RELAUNCH_NAMESPACE);
    eventually(
        "the Deployment to replace the deleted coordinator",
        WAIT,
        || async {
            let ready_replicas = deployments
                .get(COORDINATOR_DEPLOYMENT)
                .await
                .ok()?
                .status?
                .ready_replicas?;
            let pods = relaunch_pods(&system, COORDINATOR_DEPLOYMENT).await;
            (ready_replicas == 2
                && pods.len() == 2
                && pods.iter().all(ready)
                && pods
                    .iter()
                    .all(|p| p.metadata.name.as_deref() != Some(leader.as_str())))
            .then_some(())
        },
    )
    .await
    .unwrap();

    // 5. An agent replaced while its node's request is stopping the container.
    bed.pod("slow", Some("node-2"), database_pod_spec()).await;
    let slow = bed.ready_pod("slow").await;
    let agent_two = relaunch_pods(&system, AGENT_DAEMONSET)
        .await
        .into_iter()
        .find(|p| node_of(p) == "node-2")
        .unwrap();
    bed.recreate(
        "slow-restart",
        &slow,
        json!([{"name": "db",
                "shutdown": {"exec": {"command": ["sh", "-c", "sleep 4; touch /tmp/shutdown"]}}}]),
        json!({}),
    )
    .await;
    let journal = bed
        .sandbox
        .node_host_root(1)
        .unwrap()
        .join("var/lib/relaunch");
    eventually("the request to be in its stop step", WAIT, || async {
        let status = bed.requests().get("slow-restart").await.ok()?.status?;
        let stopping = status
            .container_recreate_states
            .first()
            .is_some_and(|c| format!("{:?}", c.phase) == "Stopping");
        (stopping && has_files(&journal)).then_some(())
    })
    .await
    .unwrap();
    system
        .delete(
            agent_two.metadata.name.as_deref().unwrap(),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
    let status = bed.finished("slow-restart").await;
    assert_eq!(status.phase, RecreatePhase::Succeeded, "{status:?}");
    bed.assert_each_restarted_once(std::slice::from_ref(&slow))
        .await;
    let replacement = eventually("the DaemonSet to replace node-2's agent", WAIT, || async {
        relaunch_pods(&system, AGENT_DAEMONSET)
            .await
            .into_iter()
            .find(|p| {
                node_of(p) == "node-2" && p.metadata.uid != agent_two.metadata.uid && ready(p)
            })
    })
    .await
    .unwrap();
    let log = container_log(bed.dir(), &replacement, "agent");
    assert!(
        log.contains("found unfinished request in the journal"),
        "the new agent resumed from the journal; its log:\n{log}"
    );
    // Still once, a moment later: nothing restarts it again.
    let later = bed.pods().get("slow").await.unwrap();
    assert_eq!(restart_count(&later), restart_count(&slow) + 1);

    // 6. One agent per node: an agent started on node-1's host as the systemd unit runs it, with
    // the same state directory as the DaemonSet pod there, refuses to act.
    let state_dir = bed
        .sandbox
        .node_host_root(0)
        .unwrap()
        .join("var/lib/relaunch");
    let log_path = bed.dir().join("second-agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut second = Command::new(&binaries().agent)
        .args([
            "--node-name",
            "node-1",
            "--coordinator-url",
            "http://127.0.0.1:9",
        ])
        .arg("--state-dir")
        .arg(&state_dir)
        .args(["--admin-listen", "127.0.0.1:0"])
        .env_remove("KUBECONFIG")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    // Without the lock it would run on: wait with a deadline, and kill it either way.
    let exited = eventually("the second agent to exit", Duration::from_secs(30), || {
        let status = second.try_wait().unwrap();
        async move { status }
    })
    .await;
    let _ = second.kill();
    let _ = second.wait();
    let printed = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        exited.is_ok_and(|status| !status.success())
            && printed.contains("another relaunch-agent already acts on this node")
            && printed.contains("agent.lock"),
        "a second agent on node-1 refuses to start:\n{printed}"
    );
    // The DaemonSet's agent there is untouched by it.
    let agents = relaunch_pods(&system, AGENT_DAEMONSET).await;
    assert!(agents.iter().all(ready), "the agents stay Ready");

    bed.shutdown().await;
    eprintln!("whole test {:.1}s", started.elapsed().as_secs_f64());
}

/// The pods of relaunch's DaemonSet or Deployment `name` that are not terminating.
async fn relaunch_pods(pods: &Api<Pod>, name: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("app.kubernetes.io/name={name}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

fn node_of(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

/// The runtime's ID of the pod's first container (`containerd://<id>` in its status).
fn container_id(pod: &Pod) -> String {
    let status = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.container_id.clone())
        .unwrap();
    status.trim_start_matches("containerd://").to_string()
}

fn ctr(socket: &Path, args: &[&str]) -> String {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", "k8s.io"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ctr {args:?}: {}", printed(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Container ID → image, as containerd records them.
fn container_images(socket: &Path) -> BTreeMap<String, String> {
    ctr(socket, &["containers", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            Some((fields.next()?.to_string(), fields.next()?.to_string()))
        })
        .collect()
}

/// The host PID of container `id`'s process.
fn task_pid(socket: &Path, id: &str) -> u32 {
    ctr(socket, &["tasks", "ls"])
        .lines()
        .find_map(|l| {
            let mut fields = l.split_whitespace();
            (fields.next()? == id).then(|| fields.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no task for container {id}"))
}

/// Whether the process's `/` is mounted read-only (its mount options in mountinfo).
fn root_is_read_only(pid: u32) -> bool {
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    mountinfo
        .lines()
        .rev()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .and_then(|l| l.split_whitespace().nth(5))
        .is_some_and(|options| options.split(',').any(|o| o == "ro"))
}

fn has_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// What container `container` of `pod` has logged (the kubelet's log files on its node).
fn container_log(dir: &Path, pod: &Pod, container: &str) -> String {
    let logs: PathBuf = dir
        .join("nodes")
        .join(node_of(pod))
        .join("log/pods")
        .join(format!(
            "{}_{}_{}",
            pod.metadata.namespace.as_deref().unwrap(),
            pod.metadata.name.as_deref().unwrap(),
            pod.metadata.uid.as_deref().unwrap()
        ))
        .join(container);
    std::fs::read_dir(&logs)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect()
}
