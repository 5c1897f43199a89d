//! In-place recreate end to end: real containerd, simulated kubelets, and relaunch-agent and
//! relaunch-coordinator as real processes. Needs root.

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{DeleteParams, ListParams};
use relaunch_agent::failpoint::{self, Failpoint};
use relaunch_api::{ContainerRecreatePhase, RecreatePhase};
use serde_json::{Value, json};
use support::{Bed, DATABASE, STUBBORN, container, container_status, eventually, ready};

fn exit_code_of_previous(pod: &Pod, name: &str) -> Option<i32> {
    container_status(pod, name)
        .last_state?
        .terminated
        .map(|t| t.exit_code)
}

/// Starts node 1's agent again, to die at `failpoint`.
async fn restart_agent_at(bed: &mut Bed, failpoint: Failpoint) {
    let env = [(failpoint::ENV.to_string(), failpoint.name().to_string())];
    bed.sandbox.restart_agent_with_env(0, &env).await.unwrap();
}

/// Waits until node 1's agent died at the failpoint it was started with.
async fn agent_aborted(bed: &mut Bed, failpoint: &str) {
    eventually(
        &format!("the agent to reach the {failpoint} failpoint"),
        Duration::from_secs(60),
        || {
            let running = bed.sandbox.agent(0).unwrap().is_running();
            async move { (!running).then_some(()) }
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn restarts_a_container_in_place_with_its_own_shutdown_command() {
    let bed = Bed::start(1).await;
    let before = bed.database_pod("db-0", "node-1").await;
    let old = container_status(&before, "db");

    bed.recreate(
        "db-0-restart",
        &before,
        json!([{"name": "db", "shutdown": {"exec": {"command": ["touch", "/tmp/shutdown"]}}}]),
        json!({"terminationGracePeriodSeconds": 30}),
    )
    .await;
    let status = bed.finished("db-0-restart").await;
    assert_eq!(status.phase, RecreatePhase::Succeeded, "{status:?}");

    let after = bed.pods().get("db-0").await.unwrap();
    let new = container_status(&after, "db");
    assert_eq!(after.metadata.uid, before.metadata.uid, "same pod");
    assert_eq!(
        after.status.as_ref().unwrap().pod_ip,
        before.status.as_ref().unwrap().pod_ip,
        "same IP"
    );
    assert_ne!(new.container_id, old.container_id, "new container");
    assert_eq!(new.restart_count, old.restart_count + 1);
    assert_eq!(
        exit_code_of_previous(&after, "db"),
        Some(0),
        "clean exit through the shutdown command, no SIGKILL"
    );

    let state = &status.container_recreate_states[0];
    assert_eq!(state.phase, ContainerRecreatePhase::Succeeded);
    assert_eq!(state.previous_container_id, old.container_id);
    assert_eq!(state.new_container_id, new.container_id);
    let t = &state.timestamps;
    assert!(
        t.shutdown.is_some()
            && t.stop.is_some()
            && t.restarted.is_some()
            && t.ready.is_some()
            && t.finished.is_some(),
        "{t:?}"
    );
    assert!(status.start_time.is_some() && status.completion_time.is_some());

    let events = bed
        .api::<Event>()
        .list(&ListParams::default().fields("involvedObject.name=db-0-restart"))
        .await
        .unwrap();
    assert!(
        !events.items.is_empty(),
        "events on the request for kubectl describe"
    );
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_ignoring_sigterm_is_killed_after_the_grace_and_still_restarted() {
    let bed = Bed::start(1).await;
    let before = bed
        .pod(
            "stubborn",
            Some("node-1"),
            json!({"containers": [container("app", STUBBORN)]}),
        )
        .await;
    bed.recreate(
        "stubborn-restart",
        &before,
        json!([{"name": "app"}]),
        json!({"terminationGracePeriodSeconds": 2}),
    )
    .await;
    let status = bed.finished("stubborn-restart").await;
    assert_eq!(status.phase, RecreatePhase::Succeeded, "{status:?}");
    let after = bed.pods().get("stubborn").await.unwrap();
    assert_eq!(
        exit_code_of_previous(&after, "app"),
        Some(137),
        "SIGKILL after the grace"
    );
    assert_eq!(container_status(&after, "app").restart_count, 1);
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_shutdown_command_is_bounded_by_the_grace() {
    let bed = Bed::start(1).await;
    let before = bed.database_pod("hang", "node-1").await;
    let started = std::time::Instant::now();
    bed.recreate(
        "hang-restart",
        &before,
        json!([{"name": "db", "shutdown": {"exec": {"command": ["sleep", "1000"]}}}]),
        json!({"terminationGracePeriodSeconds": 3}),
    )
    .await;
    let status = bed.finished("hang-restart").await;
    assert_eq!(status.phase, RecreatePhase::Succeeded, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    let after = bed.pods().get("hang").await.unwrap();
    assert_eq!(container_status(&after, "db").restart_count, 1);
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ordered_recreate_stops_the_second_container_only_after_the_first_is_ready() {
    let bed = Bed::start(1).await;
    let before = bed
        .pod(
            "pair",
            Some("node-1"),
            json!({"containers": [container("first", DATABASE), container("second", DATABASE)]}),
        )
        .await;
    bed.recreate(
        "pair-restart",
        &before,
        json!([{"name": "first"}, {"name": "second"}]),
        json!({"orderedRecreate": true}),
    )
    .await;
    let status = bed.finished("pair-restart").await;
    assert_eq!(status.phase, RecreatePhase::Succeeded, "{status:?}");
    let first = &status.container_recreate_states[0];
    let second = &status.container_recreate_states[1];
    let first_ready = first.timestamps.ready.as_ref().unwrap().0;
    let second_stop = second.timestamps.stop.as_ref().unwrap().0;
    assert!(
        second_stop >= first_ready,
        "second stopped at {second_stop}, first ready at {first_ready}"
    );
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_unready_grace_holds_the_pod_not_ready_before_the_stop() {
    let bed = Bed::start(1).await;
    let before = bed
        .pod("gated", Some("node-1"), json!({"readinessGates": [{"conditionType": "relaunch.dev/ready"}], "containers": [container("db", DATABASE)]}))
        .await;
    assert!(ready(&before));
    bed.recreate(
        "gated-restart",
        &before,
        json!([{"name": "db"}]),
        json!({"unreadyGracePeriodSeconds": 3}),
    )
    .await;
    // The pod goes NotReady while the old container still runs.
    let old_id = container_status(&before, "db").container_id;
    eventually(
        "pod NotReady with the old container still running",
        Duration::from_secs(30),
        || async {
            let pod = bed.pods().get("gated").await.ok()?;
            (!ready(&pod) && container_status(&pod, "db").container_id == old_id).then_some(())
        },
    )
    .await
    .unwrap();
    let status = bed.finished("gated-restart").await;
    assert_eq!(status.phase, RecreatePhase::Succeeded, "{status:?}");
    let t = &status.container_recreate_states[0].timestamps;
    let unready = t.unready.as_ref().unwrap().0;
    let stop = t.stop.as_ref().unwrap().0;
    assert!(
        stop.duration_since(unready).as_secs_f64() >= 3.0 - 1.0,
        "held unready for the grace: {unready} -> {stop}"
    );
    eventually("pod Ready again", Duration::from_secs(30), || async {
        let pod = bed.pods().get("gated").await.ok()?;
        ready(&pod).then_some(())
    })
    .await
    .unwrap();
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_what_would_not_come_back_and_stops_nothing() {
    let bed = Bed::start(1).await;
    let never = bed
        .pod(
            "never",
            Some("node-1"),
            json!({"restartPolicy": "Never", "containers": [container("job", DATABASE)]}),
        )
        .await;
    bed.recreate("never-restart", &never, json!([{"name": "job"}]), json!({}))
        .await;
    let status = bed.finished("never-restart").await;
    assert_eq!(status.phase, RecreatePhase::Failed);
    assert!(
        status.message.as_deref().unwrap_or("").contains("Never"),
        "{status:?}"
    );

    let unknown = bed.database_pod("unknown", "node-1").await;
    bed.recreate(
        "unknown-restart",
        &unknown,
        json!([{"name": "nope"}]),
        json!({}),
    )
    .await;
    let status = bed.finished("unknown-restart").await;
    assert_eq!(status.phase, RecreatePhase::Failed);
    assert!(
        status.message.as_deref().unwrap_or("").contains("nope"),
        "{status:?}"
    );

    let nowhere = bed
        .pod(
            "nowhere",
            None,
            json!({"nodeSelector": {"no-such": "node"}, "containers": [container("db", DATABASE)]}),
        )
        .await;
    bed.recreate(
        "nowhere-restart",
        &nowhere,
        json!([{"name": "db"}]),
        json!({}),
    )
    .await;
    let status = bed.finished("nowhere-restart").await;
    assert_eq!(status.phase, RecreatePhase::Failed);

    for (pod, container) in [("never", "job"), ("unknown", "db")] {
        let now = bed.pods().get(pod).await.unwrap();
        assert_eq!(
            container_status(&now, container).restart_count,
            0,
            "{pod} was not touched"
        );
    }
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn back_to_back_and_deleted_requests_never_stay_pending() {
    let bed = Bed::start(1).await;
    let pod = bed.database_pod("busy", "node-1").await;
    bed.recreate("busy-1", &pod, json!([{"name": "db"}]), json!({}))
        .await;
    bed.recreate("busy-2", &pod, json!([{"name": "db"}]), json!({}))
        .await;
    assert_eq!(bed.finished("busy-1").await.phase, RecreatePhase::Succeeded);
    assert_eq!(bed.finished("busy-2").await.phase, RecreatePhase::Succeeded);

    // A request deleted mid-way does not block the next one.
    bed.recreate(
        "busy-3",
        &pod,
        json!([{"name": "db"}]),
        json!({"unreadyGracePeriodSeconds": 5}),
    )
    .await;
    eventually("busy-3 to start", Duration::from_secs(30), || async {
        let status = bed.requests().get("busy-3").await.ok()?.status?;
        (status.phase == RecreatePhase::Recreating).then_some(())
    })
    .await
    .unwrap();
    bed.requests()
        .delete("busy-3", &DeleteParams::default())
        .await
        .unwrap();
    bed.recreate("busy-4", &pod, json!([{"name": "db"}]), json!({}))
        .await;
    assert_eq!(bed.finished("busy-4").await.phase, RecreatePhase::Succeeded);
    bed.shutdown().await;
}

/// Issue 15: a request created with its node and pod-UID labels (as the CLI and the rollout
/// controller create them) is admitted by the agent's first report: its first status already
/// says `Recreating` (one status write fewer than admission and then `Recreating`), and the
/// request controller does not admit it separately.
#[tokio::test(flavor = "multi_thread")]
async fn the_agents_first_report_admits_a_labelled_request_in_the_same_write() {
    use futures::{StreamExt, TryStreamExt};
    use kube::api::{WatchEvent, WatchParams};
    let bed = Bed::start(1).await;
    let before = bed.database_pod("claimed", "node-1").await;
    let requests = bed.requests();
    let version = requests
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut events = requests
        .watch(&WatchParams::default(), &version)
        .await
        .unwrap()
        .boxed();
    bed.recreate(
        "claimed-restart",
        &before,
        json!([{"name": "db"}]),
        json!({}),
    )
    .await;
    // Every status the request had, in order: the watch brings each write.
    let statuses = tokio::time::timeout(Duration::from_secs(60), async {
        let mut seen = Vec::new();
        while let Some(event) = events.try_next().await.unwrap() {
            let (WatchEvent::Added(crr) | WatchEvent::Modified(crr)) = event else {
                continue;
            };
            if let Some(status) = crr
                .status
                .filter(|_| crr.metadata.name.as_deref() == Some("claimed-restart"))
            {
                let finished = status.phase.is_finished();
                seen.push(status);
                if finished {
                    break;
                }
            }
        }
        seen
    })
    .await
    .expect("the request to finish");
    let first = &statuses[0];
    assert_eq!(first.phase, RecreatePhase::Recreating, "{statuses:#?}");
    assert_eq!(first.admitted_generation, Some(1), "{statuses:#?}");
    let last = statuses.last().unwrap();
    assert_eq!(last.phase, RecreatePhase::Succeeded, "{statuses:#?}");
    assert!(
        statuses.iter().all(|s| s.phase != RecreatePhase::Pending),
        "{statuses:#?}"
    );
    let log = std::fs::read_to_string(bed.dir().join("coordinator/log")).unwrap();
    assert!(
        !log.lines().any(|l| l.contains("request_controller")
            && l.contains("admitted")
            && l.contains("claimed-restart")),
        "the request controller admitted it too:\n{log}"
    );
    assert_eq!(
        container_status(&bed.pods().get("claimed").await.unwrap(), "db").restart_count,
        1
    );
    bed.shutdown().await;
}

/// Issue 12: the agent acts only on requests the coordinator admitted. A request created with
/// its node and pod-UID labels (the agent sees it at once) while the coordinator is down is not
/// acted on; once the coordinator runs, it admits the request and the agent carries it out.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_is_not_acted_on_until_the_coordinator_admits_it() {
    let mut bed = Bed::start(1).await;
    let before = bed.database_pod("lonely", "node-1").await;
    bed.sandbox.coordinator().unwrap().kill();
    let request = bed
        .recreate(
            "lonely-restart",
            &before,
            json!([{"name": "db"}]),
            json!({}),
        )
        .await;
    assert!(kube::ResourceExt::labels(&request).contains_key(relaunch_api::LABEL_NODE_NAME));
    eventually(
        "the agent to see the request and wait for its admission",
        Duration::from_secs(60),
        || async {
            let log = std::fs::read_to_string(bed.dir().join("nodes/node-1/agent/log"))
                .unwrap_or_default();
            log.lines()
                .any(|l| {
                    l.contains("waiting for the coordinator to admit the request")
                        && l.contains("lonely-restart")
                })
                .then_some(())
        },
    )
    .await
    .unwrap();
    let pod = bed.pods().get("lonely").await.unwrap();
    assert_eq!(
        container_status(&pod, "db").container_id,
        container_status(&before, "db").container_id,
        "not acted on before admission"
    );
    assert!(
        bed.requests()
            .get("lonely-restart")
            .await
            .unwrap()
            .status
            .is_none(),
        "nothing reported"
    );

    bed.sandbox.coordinator().unwrap().start().unwrap();
    let status = bed.finished("lonely-restart").await;
    assert_eq!(status.phase, RecreatePhase::Succeeded, "{status:?}");
    assert_eq!(status.admitted_generation, Some(1));
    assert_eq!(
        container_status(&bed.pods().get("lonely").await.unwrap(), "db").restart_count,
        1
    );
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_requests_on_one_node_all_succeed_never_more_than_max_parallel_at_once() {
    let bed = Bed::with_agent_args(1, &["--max-parallel", "4"]).await;
    let mut pods = Vec::new();
    // All created first, so that they start together.
    for i in 0..20 {
        bed.create::<Pod>(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("many-{i}")},
            "spec": {"nodeName": "node-1", "containers": [container("db", DATABASE)]}}),
        )
        .await;
    }
    for i in 0..20 {
        pods.push(bed.ready_pod(&format!("many-{i}")).await);
    }
    for pod in &pods {
        let name = pod.metadata.name.clone().unwrap();
        bed.recreate(
            &format!("{name}-restart"),
            pod,
            json!([{"name": "db"}]),
            json!({"minStartedSeconds": 1}),
        )
        .await;
    }
    let mut spans = Vec::new();
    for pod in &pods {
        let name = pod.metadata.name.clone().unwrap();
        let status = bed.finished(&format!("{name}-restart")).await;
        assert_eq!(status.phase, RecreatePhase::Succeeded, "{name}: {status:?}");
        let t = &status.container_recreate_states[0].timestamps;
        let begin = t.shutdown.as_ref().or(t.stop.as_ref()).unwrap().0;
        let end = t.finished.as_ref().unwrap().0;
        spans.push((begin, end));
    }
    // Timestamps have second precision: count overlaps of half-open [begin, end) spans.
    let most = spans
        .iter()
        .map(|(b, _)| spans.iter().filter(|(b2, e2)| b2 <= b && b < e2).count())
        .max()
        .unwrap();
    assert!(most <= 4, "{most} recreates overlapped");
    bed.shutdown().await;
}

/// POSTs `report` to the coordinator's report API with `token`; returns the HTTP status code.
async fn post_report(bed: &Bed, token: &str, report: &Value) -> u16 {
    let url = bed.sandbox.coordinator_url().unwrap();
    let addr = url.trim_start_matches("http://").parse().unwrap();
    let authorization = format!("Bearer {token}");
    let headers = [
        ("Authorization", authorization.as_str()),
        ("Content-Type", "application/json"),
    ];
    support::http(addr, "POST", "/v1/reports", &headers, &report.to_string())
        .await
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_acts_only_on_its_own_nodes_pods_and_reports_about_other_nodes_are_forbidden() {
    let bed = Bed::start(2).await;
    let far = bed.database_pod("far", "node-2").await;

    // A request labelled for node-1 about a pod on node-2: node-1's agent does not touch it.
    let mut mislabelled = far.clone();
    mislabelled.spec.as_mut().unwrap().node_name = Some("node-1".into());
    bed.recreate(
        "far-wrong-node",
        &mislabelled,
        json!([{"name": "db"}]),
        json!({}),
    )
    .await;
    let status = bed.finished("far-wrong-node").await;
    assert_eq!(status.phase, RecreatePhase::Failed, "{status:?}");
    assert!(
        status.message.as_deref().unwrap_or("").contains("node-2"),
        "{status:?}"
    );
    assert_eq!(
        container_status(&bed.pods().get("far").await.unwrap(), "db").restart_count,
        0
    );

    // node-1's agent identity reporting on node-2's pod: 403, nothing written.
    let request = bed
        .recreate(
            "far-restart",
            &far,
            json!([{"name": "db"}]),
            json!({"unreadyGracePeriodSeconds": 3}),
        )
        .await;
    let before = bed.requests().get("far-restart").await.unwrap();
    let token = std::fs::read_to_string(bed.dir().join("nodes/node-1/agent/token")).unwrap();
    let report = json!({
        "request": {"namespace": "default", "name": "far-restart", "uid": request.metadata.uid},
        "phase": "Failed", "message": "forged", "containers": []
    });
    assert_eq!(post_report(&bed, &token, &report).await, 403);
    let after = bed.requests().get("far-restart").await.unwrap();
    assert_ne!(
        after.status.as_ref().map(|s| s.phase),
        Some(RecreatePhase::Failed)
    );
    assert_eq!(
        after.status.as_ref().and_then(|s| s.message.clone()),
        before.status.as_ref().and_then(|s| s.message.clone())
    );
    assert_eq!(post_report(&bed, "not-a-token", &report).await, 401);

    // The right node's agent does the work.
    assert_eq!(
        bed.finished("far-restart").await.phase,
        RecreatePhase::Succeeded
    );
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_crashes_around_a_stop_still_restart_the_container_exactly_once() {
    let mut bed = Bed::start(1).await;
    for (case, failpoint) in [
        ("journaled", Failpoint::AfterStopJournal),
        ("stopped", Failpoint::AfterStop),
    ] {
        let pod_name = format!("crash-{case}");
        let before = bed.database_pod(&pod_name, "node-1").await;
        restart_agent_at(&mut bed, failpoint).await;
        bed.recreate(
            &format!("{pod_name}-restart"),
            &before,
            json!([{"name": "db"}]),
            json!({}),
        )
        .await;
        agent_aborted(&mut bed, case).await;
        bed.sandbox.restart_agent(0).await.unwrap();
        let status = bed.finished(&format!("{pod_name}-restart")).await;
        assert_eq!(status.phase, RecreatePhase::Succeeded, "{case}: {status:?}");
        let after = bed.pods().get(&pod_name).await.unwrap();
        assert_eq!(
            container_status(&after, "db").restart_count,
            1,
            "{case}: restarted exactly once"
        );
    }
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_during_the_shutdown_step_does_not_restart_the_new_container() {
    let mut bed = Bed::start(1).await;
    let before = bed.database_pod("crash-shutdown", "node-1").await;
    let old = container_status(&before, "db");
    restart_agent_at(&mut bed, Failpoint::DuringShutdown).await;
    bed.recreate(
        "crash-shutdown-restart",
        &before,
        json!([{"name": "db", "shutdown": {"exec": {"command": ["touch", "/tmp/shutdown"]}}}]),
        json!({"terminationGracePeriodSeconds": 30}),
    )
    .await;
    agent_aborted(&mut bed, "during-shutdown").await;
    // The shutdown command made the application exit by itself: the kubelet restarts it while
    // no agent runs, and the restarted agent must recognise it as the request's restart.
    let restarted = eventually(
        "the kubelet to restart the container without the agent",
        Duration::from_secs(60),
        || async {
            let pod = bed.pods().get("crash-shutdown").await.ok()?;
            let now = container_status(&pod, "db");
            (now.container_id != old.container_id
                && now.restart_count > old.restart_count
                && ready(&pod))
            .then_some(now)
        },
    )
    .await
    .unwrap();
    assert_eq!(restarted.restart_count, old.restart_count + 1);
    bed.sandbox.restart_agent(0).await.unwrap();

    let status = bed.finished("crash-shutdown-restart").await;
    assert_eq!(status.phase, RecreatePhase::Succeeded, "{status:?}");
    let after = bed.pods().get("crash-shutdown").await.unwrap();
    let now = container_status(&after, "db");
    assert_eq!(
        now.restart_count,
        old.restart_count + 1,
        "restarted exactly once: {status:?}"
    );
    assert_eq!(
        now.container_id, restarted.container_id,
        "the new container was left alone"
    );
    let state = &status.container_recreate_states[0];
    assert_eq!(state.previous_container_id, old.container_id);
    assert_eq!(state.new_container_id, restarted.container_id);
    bed.shutdown().await;
}

/// Issue 12, acceptance: with the exec admission policy deleted, an exec request created (through
/// kubectl) by a user allowed to exec is not acted on — its command never runs, the container is
/// not restarted — and ends Failed with a message naming what to install. Once the policy is
/// back, a new exec request succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn with_the_exec_policy_deleted_an_exec_request_fails_closed_until_it_is_restored() {
    const POLICY: &str = "relaunch-request-exec-needs-pods-exec";
    const USER: &str = "--as=system:serviceaccount:default:restarter";
    let bed = Bed::start(1).await;
    let pod = bed.database_pod("guarded", "node-1").await;
    let before = container_status(&pod, "db");
    // A user who may create requests and exec into the pod: the API server admits exec requests.
    bed.apply(
        "restarter.yaml",
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: restarter, namespace: default}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: restarter, namespace: default}
rules:
- {apiGroups: [relaunch.dev], resources: [containerrecreaterequests], verbs: [create, get]}
- {apiGroups: [""], resources: [pods/exec], verbs: [create], resourceNames: [guarded]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: restarter, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: restarter}
subjects: [{kind: ServiceAccount, name: restarter, namespace: default}]
"#,
    )
    .await;
    let coordinator_log =
        || std::fs::read_to_string(bed.dir().join("coordinator/log")).unwrap_or_default();
    // Labelled as `kubectl relaunch restart` labels it, so the agent sees it at once. The
    // command makes the database exit (it stops on /tmp/shutdown).
    let exec_request = |name: &str| {
        format!(
            r#"
apiVersion: relaunch.dev/v1alpha1
kind: ContainerRecreateRequest
metadata:
  name: {name}
  namespace: default
  labels: {{relaunch.dev/node-name: node-1, relaunch.dev/pod-uid: {uid}}}
spec:
  podName: guarded
  containers:
  - name: db
    shutdown: {{exec: {{command: [touch, /tmp/shutdown]}}}}
  strategy: {{terminationGracePeriodSeconds: 30}}
"#,
            uid = pod.metadata.uid.as_deref().unwrap()
        )
    };
    let shared = &bed;
    let create_as_user = |file: &'static str, manifest: String| async move {
        let bed = shared;
        let path = bed.dir().join(file);
        std::fs::write(&path, manifest).unwrap();
        bed.kubectl(&["create", "-f", &path.to_string_lossy(), USER])
            .await
            .unwrap()
    };

    bed.kubectl(&["delete", "validatingadmissionpolicy", POLICY])
        .await
        .unwrap();
    eventually(
        "the coordinator to see the policy gone",
        Duration::from_secs(30),
        || async {
            coordinator_log()
                .contains(&format!(
                    "ValidatingAdmissionPolicy {POLICY} is not installed"
                ))
                .then_some(())
        },
    )
    .await
    .unwrap();
    create_as_user("exec-1.yaml", exec_request("guarded-exec-1")).await;
    let status = bed.finished("guarded-exec-1").await;
    assert_eq!(status.phase, RecreatePhase::Failed, "{status:?}");
    let message = status.message.clone().unwrap_or_default();
    assert!(
        message.contains(&format!(
            "ValidatingAdmissionPolicy {POLICY} is not installed"
        )) && message.contains("install manifests/base/admission-policy.yaml")
            && message.contains("kubectl apply -k manifests/base"),
        "{message}"
    );
    assert_eq!(status.admitted_generation, None, "never admitted");
    assert!(
        status
            .container_recreate_states
            .iter()
            .all(|c| c.timestamps.shutdown.is_none() && c.timestamps.stop.is_none()),
        "{status:?}"
    );
    let now = container_status(&bed.pods().get("guarded").await.unwrap(), "db");
    assert_eq!(
        (now.container_id.clone(), now.restart_count),
        (before.container_id.clone(), before.restart_count),
        "the exec never ran (it would have stopped the database) and nothing was restarted"
    );
    assert!(ready(&bed.pods().get("guarded").await.unwrap()));
    // A rollout with exec actions fails the same way, creating no request.
    bed.rollout(
        "guarded-rollout",
        json!({"target": {"workloadRef": {"kind": "StatefulSet", "name": "absent"}},
               "shutdown": [{"container": "db", "exec": {"command": ["touch", "/tmp/shutdown"]}}]}),
    )
    .await;
    let rollout = bed
        .rollout_finished("guarded-rollout", Duration::from_secs(30))
        .await;
    assert_eq!(
        rollout.phase,
        relaunch_api::RolloutPhase::Failed,
        "{rollout:?}"
    );
    assert!(
        rollout
            .message
            .as_deref()
            .is_some_and(|m| m.contains(&format!(
                "ValidatingAdmissionPolicy {POLICY} is not installed"
            ))),
        "{rollout:?}"
    );
    assert!(bed.requests_of("guarded-rollout").await.is_empty());

    // Restored: a new exec request is admitted and carried out.
    let policy = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/manifests/base/admission-policy.yaml"
    );
    bed.kubectl(&["apply", "-f", policy]).await.unwrap();
    eventually(
        "the coordinator to see the policy back",
        Duration::from_secs(30),
        || async {
            // Once at start, once now.
            (coordinator_log()
                .matches("the exec admission policies are installed")
                .count()
                >= 2)
                .then_some(())
        },
    )
    .await
    .unwrap();
    create_as_user("exec-2.yaml", exec_request("guarded-exec-2")).await;
    let status = bed.finished("guarded-exec-2").await;
    assert_eq!(status.phase, RecreatePhase::Succeeded, "{status:?}");
    let after = bed.pods().get("guarded").await.unwrap();
    assert_eq!(
        container_status(&after, "db").restart_count,
        before.restart_count + 1
    );
    assert_eq!(
        exit_code_of_previous(&after, "db"),
        Some(0),
        "stopped by the shutdown command"
    );
    bed.shutdown().await;
}
