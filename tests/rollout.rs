//! RollingRestart end to end: the sandbox's StatefulSet controller and kubelet simulators, real
//! containerd, and relaunch-agent and relaunch-coordinator as real processes. An invariant monitor
//! watches the target pods throughout and fails the test if more than `maxUnavailable` are ever
//! unavailable at once, or a pod restarts more than once. Needs root.

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use relaunch_api::{ContainerRecreateRequest, RollingRestart, RolloutPhase};
use relaunch_testbed::{COORDINATOR_LEASE, RELAUNCH_NAMESPACE, TEST_IMAGE};
use serde_json::json;
use support::{Bed, Monitor, database_pod_spec, eventually, ready, restart_count};

/// The pods of `pods` as they are now.
async fn current(bed: &Bed, pods: &[Pod]) -> Vec<Pod> {
    let mut now = Vec::new();
    for pod in pods {
        let name = pod.metadata.name.as_deref().unwrap();
        now.push(bed.pods().get(name).await.unwrap());
    }
    now
}

fn index(order: &[String], pod: &str) -> usize {
    order
        .iter()
        .position(|p| p == pod)
        .unwrap_or_else(|| panic!("{pod} never restarted; order {order:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn restarts_a_statefulset_two_at_a_time_highest_ordinals_first() {
    let bed = Bed::start(2).await;
    let before = bed.statefulset("db", 6, database_pod_spec()).await;
    let monitor = Monitor::start(&bed.client, "db", "db-restart", 2, &before);
    bed.rollout(
        "db-restart",
        json!({"target": {"workloadRef": {"kind": "StatefulSet", "name": "db"}},
               "strategy": {"maxUnavailable": 2}}),
    )
    .await;
    let status = bed
        .rollout_finished("db-restart", Duration::from_secs(180))
        .await;
    assert_eq!(
        status.phase,
        RolloutPhase::Succeeded,
        "{status:?}\n{}",
        bed.coordinator_log()
    );
    assert_eq!((status.total, status.restarted, status.failed), (6, 6, 0));
    assert_eq!(status.batches, 3, "{status:?}");
    assert_eq!(status.target.as_deref(), Some("StatefulSet/db"));
    assert!(status.completion_time.is_some());
    let seen = monitor.check();
    assert!(seen.most_unavailable <= 2);
    let order = &seen.restart_order;
    for (higher, lower) in [
        ("db-5", "db-3"),
        ("db-4", "db-3"),
        ("db-5", "db-2"),
        ("db-4", "db-2"),
        ("db-3", "db-1"),
        ("db-2", "db-1"),
        ("db-3", "db-0"),
        ("db-2", "db-0"),
    ] {
        assert!(
            index(order, higher) < index(order, lower),
            "{higher} before {lower}: {order:?}"
        );
    }
    bed.assert_each_restarted_once(&before).await;
    assert_eq!(
        bed.requests_of("db-restart").await.len(),
        6,
        "one request per pod"
    );
    // The coordinator tells a rollout's requests by one outcome Event per pod, none on the
    // requests, and one per batch on the rollout (Events are written in the background: wait for the last).
    let events = || async {
        bed.api::<Event>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reporting_controller.as_deref() == Some("relaunch-coordinator"))
            .collect::<Vec<_>>()
    };
    let regarding = |e: &Event| {
        let r = e.regarding.clone().unwrap_or_default();
        (r.kind.unwrap_or_default(), r.name.unwrap_or_default())
    };
    let all = eventually(
        "a ContainerRestarted Event on each pod",
        Duration::from_secs(30),
        || async {
            let all = events().await;
            let outcomes = all
                .iter()
                .filter(|e| {
                    e.reason.as_deref() == Some("ContainerRestarted") && regarding(e).0 == "Pod"
                })
                .count();
            (outcomes >= 6).then_some(all)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; coordinator log:\n{}", bed.coordinator_log()));
    for pod in &before {
        let name = pod.metadata.name.clone().unwrap();
        let on_pod: Vec<_> = all
            .iter()
            .filter(|e| regarding(e) == ("Pod".to_string(), name.clone()))
            .map(|e| {
                let times = e.series.as_ref().map_or(1, |s| s.count.max(1));
                (e.reason.clone().unwrap_or_default(), times)
            })
            .collect();
        assert_eq!(
            on_pod,
            [("ContainerRestarted".to_string(), 1)],
            "Events on {name}"
        );
    }
    let mut by_kind: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &all {
        // Repeats of one reason on one object are one Event with a series count.
        let times = e.series.as_ref().map_or(1, |s| s.count.max(1));
        for _ in 0..times {
            by_kind
                .entry(regarding(e).0)
                .or_default()
                .push(e.reason.clone().unwrap_or_default());
        }
    }
    assert!(
        !by_kind.contains_key("ContainerRecreateRequest"),
        "no Events on the requests: {by_kind:?}"
    );
    let on_rollout = by_kind.get("RollingRestart").cloned().unwrap_or_default();
    assert_eq!(
        on_rollout.iter().filter(|r| *r == "BatchStarted").count(),
        3,
        "{on_rollout:?}"
    );
    assert!(
        !on_rollout.iter().any(|r| r == "PodRestarted"),
        "{on_rollout:?}"
    );
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_disruption_budget_holds_the_rollout_to_one_pod_at_a_time() {
    let bed = Bed::start(2).await;
    let before = bed.statefulset("db", 6, database_pod_spec()).await;
    bed.create::<PodDisruptionBudget>(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "db-pdb"},
        "spec": {"minAvailable": 5, "selector": {"matchLabels": {"app": "db"}}},
    }))
    .await;
    let monitor = Monitor::start(&bed.client, "db", "db-restart", 1, &before);
    bed.rollout(
        "db-restart",
        json!({"target": {"workloadRef": {"kind": "StatefulSet", "name": "db"}},
               "strategy": {"maxUnavailable": 2}}),
    )
    .await;
    let status = bed
        .rollout_finished("db-restart", Duration::from_secs(240))
        .await;
    assert_eq!(
        status.phase,
        RolloutPhase::Succeeded,
        "{status:?}\n{}",
        bed.coordinator_log()
    );
    assert_eq!(status.batches, 6, "one pod per batch: {status:?}");
    let seen = monitor.check();
    assert_eq!(seen.most_unavailable, 1);
    assert!(
        seen.reasons.contains("BlockedByPDB"),
        "conditions seen: {:?}",
        seen.reasons
    );
    bed.assert_each_restarted_once(&before).await;
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_rollouts_started_together_share_a_pod_disruption_budget() {
    let bed = Bed::start(2).await;
    let db = bed.statefulset("db", 3, database_pod_spec()).await;
    let cache = bed.statefulset("cache", 3, database_pod_spec()).await;
    bed.create::<PodDisruptionBudget>(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "storage"},
        "spec": {"maxUnavailable": 1, "selector": {"matchExpressions": [
            {"key": "app", "operator": "In", "values": ["db", "cache"]}]}},
    }))
    .await;
    // The budget is on the requests: every unfinished request of either rollout, as a client
    // watch sees them.
    let requests: Api<ContainerRecreateRequest> = Api::default_namespaced(bed.client.clone());
    let most_at_once = Arc::new(Mutex::new((0usize, Vec::<String>::new())));
    let watch = tokio::spawn({
        let most_at_once = most_at_once.clone();
        async move {
            let mut unfinished = BTreeSet::new();
            let stream = watcher(requests, Default::default()).default_backoff();
            let mut stream = std::pin::pin!(stream.applied_objects());
            while let Some(Ok(request)) = stream.next().await {
                let name = request.metadata.name.clone().unwrap_or_default();
                match request.status.map(|s| s.phase) {
                    Some(phase) if phase.is_finished() => unfinished.remove(&name),
                    _ => unfinished.insert(name),
                };
                let mut most = most_at_once.lock().unwrap();
                if unfinished.len() > most.0 {
                    *most = (unfinished.len(), unfinished.iter().cloned().collect());
                }
            }
        }
    });
    for name in ["db", "cache"] {
        bed.rollout(
            &format!("{name}-restart"),
            json!({"target": {"workloadRef": {"kind": "StatefulSet", "name": name}},
                   "strategy": {"maxUnavailable": 2}}),
        )
        .await;
    }
    for name in ["db-restart", "cache-restart"] {
        let status = bed.rollout_finished(name, Duration::from_secs(240)).await;
        assert_eq!(
            status.phase,
            RolloutPhase::Succeeded,
            "{name}: {status:?}\n{}",
            bed.coordinator_log()
        );
    }
    watch.abort();
    let (most, which) = most_at_once.lock().unwrap().clone();
    assert_eq!(most, 1, "unfinished at once: {which:?}");
    bed.assert_each_restarted_once(&db).await;
    bed.assert_each_restarted_once(&cache).await;
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_restart_before_the_primary_and_partition_leaves_low_ordinals_alone() {
    let bed = Bed::start(2).await;
    let before = bed.statefulset("pg", 4, database_pod_spec()).await;
    // Roles are set after creation, as Patroni does.
    for (pod, role) in [
        ("pg-0", "replica"),
        ("pg-1", "primary"),
        ("pg-2", "replica"),
        ("pg-3", "replica"),
    ] {
        bed.pods()
            .patch(
                pod,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"role": role}}})),
            )
            .await
            .unwrap();
    }
    let before = current(&bed, &before).await;
    let monitor = Monitor::start(&bed.client, "pg", "pg-restart", 2, &before);
    bed.rollout(
        "pg-restart",
        json!({"target": {"workloadRef": {"kind": "StatefulSet", "name": "pg"}},
               "strategy": {"maxUnavailable": 2, "order": {"role": {"key": "role", "first": ["replica"], "last": ["primary", "master"]}}}}),
    )
    .await;
    let status = bed
        .rollout_finished("pg-restart", Duration::from_secs(180))
        .await;
    assert_eq!(
        status.phase,
        RolloutPhase::Succeeded,
        "{status:?}\n{}",
        bed.coordinator_log()
    );
    let seen = monitor.check();
    let order = &seen.restart_order;
    for replica in ["pg-0", "pg-2", "pg-3"] {
        assert!(
            index(order, replica) < index(order, "pg-1"),
            "replicas before the primary: {order:?}"
        );
    }
    bed.assert_each_restarted_once(&before).await;

    // Partition: a second rollout restarts only ordinals ≥ 3.
    let now = current(&bed, &before).await;
    let monitor = Monitor::start(&bed.client, "pg", "pg-upper", 2, &now);
    bed.rollout(
        "pg-upper",
        json!({"target": {"selector": {"matchLabels": {"app": "pg"}}},
               "strategy": {"maxUnavailable": "50%", "partition": 3}}),
    )
    .await;
    let status = bed
        .rollout_finished("pg-upper", Duration::from_secs(120))
        .await;
    assert_eq!(status.phase, RolloutPhase::Succeeded, "{status:?}");
    assert_eq!((status.total, status.restarted), (1, 1));
    let seen = monitor.check();
    assert_eq!(seen.restart_order, vec!["pg-3".to_string()]);
    let requests = bed.requests_of("pg-upper").await;
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].spec.pod_name, "pg-3");
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_specs_fail_with_what_to_fix_and_restart_nothing() {
    let bed = Bed::start(1).await;
    let before = bed.statefulset("db", 2, database_pod_spec()).await;
    let monitor = Monitor::start(&bed.client, "db", "none", 0, &before);
    let sts = json!({"kind": "StatefulSet", "name": "db"});
    let cases = [
        (
            "no-such-container",
            json!({"target": {"workloadRef": sts}, "containers": ["nope"]}),
            "container \"nope\" is not in pod",
        ),
        (
            // 64 characters: too long for the label its requests carry.
            "a-rolling-restart-whose-name-is-longer-than-any-label-value-1234",
            json!({"target": {"workloadRef": sts}}),
            "at most 63",
        ),
        (
            "aborted-while-waiting",
            json!({"target": {"workloadRef": {"kind": "StatefulSet", "name": "absent"}}, "abort": true}),
            "aborted: spec.abort is true",
        ),
    ];
    // What the CRD's schema refuses, the API server refuses at creation, as a real one does.
    for (name, spec, says) in [
        (
            "bad-kind",
            json!({"target": {"workloadRef": {"kind": "CronJob", "name": "db"}}}),
            r#"spec.target.workloadRef.kind: Unsupported value: "CronJob""#,
        ),
        (
            "no-target",
            json!({"target": {}}),
            "spec.target: Invalid value",
        ),
        (
            "zero",
            json!({"target": {"workloadRef": sts}, "strategy": {"maxUnavailable": 0}}),
            "spec.strategy.maxUnavailable: Invalid value",
        ),
        (
            "too-many",
            json!({"target": {"workloadRef": sts}, "strategy": {"maxUnavailable": "150%"}}),
            "between 1% and 100%",
        ),
    ] {
        let rollout: RollingRestart = serde_json::from_value(json!({
            "apiVersion": "relaunch.dev/v1alpha1", "kind": "RollingRestart",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
        let refused = bed
            .rollouts()
            .create(&PostParams::default(), &rollout)
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, kube::Error::Api(s) if s.code == 422 && s.message.contains(says)),
            "{name}: {refused:?}"
        );
    }
    for (name, spec, _) in &cases {
        bed.rollout(name, spec.clone()).await;
    }
    bed.rollout(
        "paused-while-waiting",
        json!({"target": {"workloadRef": {"kind": "StatefulSet", "name": "absent"}}, "strategy": {"paused": true}}),
    )
    .await;
    for (name, _, expected) in &cases {
        let status = bed.rollout_finished(name, Duration::from_secs(30)).await;
        assert_eq!(status.phase, RolloutPhase::Failed, "{name}: {status:?}");
        let message = status.message.unwrap_or_default();
        assert!(
            message.contains(expected),
            "{name}: {message:?} should mention {expected:?}"
        );
        assert!(
            bed.requests_of(name).await.is_empty(),
            "{name} created no request"
        );
    }
    let paused = eventually(
        "the rollout waiting for its workload shows Paused",
        Duration::from_secs(30),
        || async {
            let status = bed
                .rollouts()
                .get("paused-while-waiting")
                .await
                .ok()?
                .status?;
            (status.phase == RolloutPhase::Paused).then_some(status)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; coordinator log:\n{}", bed.coordinator_log()));
    let message = paused.message.unwrap_or_default();
    assert!(
        message.contains("paused") && message.contains("StatefulSet/absent"),
        "{message}"
    );
    let seen = monitor.check();
    assert!(
        seen.restart_order.is_empty(),
        "nothing restarted: {:?}",
        seen.restart_order
    );
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_restart_at_token_starts_exactly_one_rollout() {
    let bed = Bed::start(1).await;
    let before = bed.statefulset("web", 2, database_pod_spec()).await;
    let sets = bed.api::<StatefulSet>();
    let annotate = |token: &str| {
        json!({"metadata": {"annotations": {
            "relaunch.dev/restart-at": token, "relaunch.dev/max-unavailable": "1", "relaunch.dev/order": "ordinal-asc"}}})
    };
    let monitor = Monitor::start(&bed.client, "web", "", 1, &before);

    // A bad companion annotation starts nothing and is said once, as a Warning on the workload.
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {
            "relaunch.dev/restart-at": "t0", "relaunch.dev/order": "random"}}})),
    )
    .await
    .unwrap();
    let warnings = || async {
        bed.api::<Event>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some("RestartNotStarted")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web")
            })
            .collect::<Vec<_>>()
    };
    let warned = eventually(
        "a Warning about relaunch.dev/order",
        Duration::from_secs(30),
        || async { warnings().await.into_iter().next() },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; coordinator log:\n{}", bed.coordinator_log()));
    assert_eq!(warned.type_.as_deref(), Some("Warning"));
    let note = warned.note.unwrap_or_default();
    assert!(note.contains("relaunch.dev/order"), "{note}");
    // A rollout reconciled to its end means a later pass ran while the annotation was still bad.
    bed.rollout(
        "probe",
        json!({"target": {"selector": {"matchLabels": {"app": "nothing"}}}}),
    )
    .await;
    bed.rollout_finished("probe", Duration::from_secs(30)).await;
    let said = warnings().await;
    assert!(
        said.len() == 1 && said[0].series.is_none(),
        "said once, not on every pass: {said:?}"
    );
    bed.rollouts()
        .delete("probe", &Default::default())
        .await
        .unwrap();

    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(annotate("t1")),
    )
    .await
    .unwrap();
    let first = eventually(
        "a rollout for token t1",
        Duration::from_secs(30),
        || async {
            let list = bed.rollouts().list(&ListParams::default()).await.ok()?;
            (list.items.len() == 1).then(|| list.items[0].metadata.name.clone().unwrap())
        },
    )
    .await
    .unwrap();
    let status = bed.rollout_finished(&first, Duration::from_secs(120)).await;
    assert_eq!(status.phase, RolloutPhase::Succeeded, "{status:?}");
    let seen = monitor.check();
    assert_eq!(
        seen.restart_order,
        vec!["web-0".to_string(), "web-1".to_string()],
        "ordinal-asc"
    );
    bed.assert_each_restarted_once(&before).await;

    // Re-applying the same token (another field changes, the token stays) does nothing.
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
    )
    .await
    .unwrap();
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(annotate("t1")),
    )
    .await
    .unwrap();
    // No fixed wait here: the count at the end (exactly two, after the whole t2 rollout ran)
    // would include any rollout the re-applied t1 had started.

    // A new token starts a second rollout.
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(annotate("t2")),
    )
    .await
    .unwrap();
    let second = eventually(
        "a rollout for token t2",
        Duration::from_secs(30),
        || async {
            let list = bed.rollouts().list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .map(|r| r.metadata.name.clone().unwrap())
                .find(|n| *n != first)
        },
    )
    .await
    .unwrap();
    let status = bed
        .rollout_finished(&second, Duration::from_secs(120))
        .await;
    assert_eq!(status.phase, RolloutPhase::Succeeded, "{status:?}");
    assert_eq!(
        bed.rollouts()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2,
        "the re-applied token t1 started nothing; t2 started exactly one"
    );
    bed.shutdown().await;
}

/// Ready on its first start; after a restart, ready only once the test "fixes" it (creates
/// `/data/fixed` in its emptyDir) when `/data/break` exists.
const FRAGILE: &str = "trap 'exit 0' TERM; if [ -f /data/started ] && [ -f /data/break ]; then :; else touch /tmp/ready; fi; touch /data/started; while true; do sleep 0.1; done";

/// The host directory of `pod`'s emptyDir volume `volume` (the kubelet simulator's layout).
fn empty_dir(bed: &Bed, pod: &Pod, volume: &str) -> std::path::PathBuf {
    let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
    bed.dir()
        .join("nodes")
        .join(node)
        .join("volumes/pods")
        .join(pod.metadata.uid.as_deref().unwrap())
        .join("volumes")
        .join(volume)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_that_never_gets_ready_pauses_the_rollout_until_fixed_and_unpaused() {
    let bed = Bed::start(1).await;
    let before = bed
        .statefulset(
            "db",
            3,
            json!({"terminationGracePeriodSeconds": 10,
                   "volumes": [{"name": "data", "emptyDir": {}}],
                   "containers": [{
                       "name": "db", "image": TEST_IMAGE, "command": ["sh", "-c", FRAGILE],
                       "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                       "readinessProbe": {"exec": {"command": ["sh", "-c", "test -f /tmp/ready || test -f /data/fixed"]}, "periodSeconds": 1},
                   }]}),
        )
        .await;
    let broken = before
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("db-1"))
        .unwrap();
    std::fs::write(empty_dir(&bed, broken, "data").join("break"), "").unwrap();
    let monitor = Monitor::start(&bed.client, "db", "db-restart", 1, &before);
    bed.rollout(
        "db-restart",
        json!({"target": {"workloadRef": {"kind": "StatefulSet", "name": "db"}},
               "activeDeadlineSeconds": 8,
               "strategy": {"maxUnavailable": 1, "failurePolicy": "Pause"}}),
    )
    .await;
    let paused = eventually(
        "the rollout paused for the failure",
        Duration::from_secs(90),
        || async {
            let r = bed.rollouts().get("db-restart").await.ok()?;
            let status = r.status.clone()?;
            (status.phase == RolloutPhase::Paused && r.spec.strategy.paused).then_some(status)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", bed.coordinator_log()));
    assert_eq!((paused.restarted, paused.failed), (1, 1), "{paused:?}");
    assert!(
        paused
            .conditions
            .iter()
            .any(|c| c.reason.as_deref() == Some("FailureThresholdReached")),
        "{paused:?}"
    );
    let untouched = bed.pods().get("db-0").await.unwrap();
    assert_eq!(
        restart_count(&untouched),
        restart_count(&before[0]),
        "db-0 waits"
    );
    assert!(
        bed.requests_of("db-restart")
            .await
            .iter()
            .all(|r| r.spec.pod_name != "db-0")
    );

    // Fix the pod, then resume: the rollout acknowledges the failure and finishes.
    std::fs::write(empty_dir(&bed, broken, "data").join("fixed"), "").unwrap();
    eventually("db-1 ready again", Duration::from_secs(30), || async {
        ready(&bed.pods().get("db-1").await.ok()?).then_some(())
    })
    .await
    .unwrap();
    bed.rollouts()
        .patch(
            "db-restart",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"strategy": {"paused": false}}})),
        )
        .await
        .unwrap();
    let status = bed
        .rollout_finished("db-restart", Duration::from_secs(90))
        .await;
    assert_eq!(status.phase, RolloutPhase::Succeeded, "{status:?}");
    assert_eq!(
        (
            status.restarted,
            status.failed,
            status.acknowledged_failures
        ),
        (2, 1, Some(1))
    );
    monitor.check();
    bed.assert_each_restarted_once(&before).await;
    bed.shutdown().await;
}

/// The holder of the coordinators' Lease.
async fn lease_holder(bed: &Bed) -> Option<String> {
    Api::<Lease>::namespaced(bed.client.clone(), RELAUNCH_NAMESPACE)
        .get_opt(COORDINATOR_LEASE)
        .await
        .ok()??
        .spec?
        .holder_identity
}

#[tokio::test(flavor = "multi_thread")]
async fn another_coordinator_finishes_the_rollout_when_the_leader_is_killed() {
    let mut bed = Bed::start(2).await;
    let replica = bed.sandbox.add_coordinator().await.unwrap();
    let leader_pid = bed.sandbox.coordinator().unwrap().pid().unwrap();
    let follower_pid = bed
        .sandbox
        .coordinator_replica(replica)
        .unwrap()
        .pid()
        .unwrap();
    let holder = lease_holder(&bed).await.unwrap_or_default();
    assert!(
        holder.ends_with(&format!("_{leader_pid}")),
        "the first coordinator leads: {holder}"
    );

    let before = bed.statefulset("db", 6, database_pod_spec()).await;
    let monitor = Monitor::start(&bed.client, "db", "db-restart", 1, &before);
    bed.rollout(
        "db-restart",
        json!({"target": {"workloadRef": {"kind": "StatefulSet", "name": "db"}},
               "strategy": {"maxUnavailable": 1}}),
    )
    .await;
    eventually("the second batch", Duration::from_secs(60), || async {
        let status = bed.rollouts().get("db-restart").await.ok()?.status?;
        (status.batches >= 2).then_some(())
    })
    .await
    .unwrap();
    bed.sandbox.coordinator().unwrap().kill();
    eventually(
        "the other coordinator leads",
        Duration::from_secs(40),
        || async {
            lease_holder(&bed)
                .await
                .filter(|h| h.ends_with(&format!("_{follower_pid}")))
        },
    )
    .await
    .unwrap();
    // The agents report to the first coordinator's address: bring it back, as a follower.
    bed.sandbox.coordinator().unwrap().start().unwrap();

    let status = bed
        .rollout_finished("db-restart", Duration::from_secs(180))
        .await;
    assert_eq!(status.phase, RolloutPhase::Succeeded, "{status:?}");
    assert_eq!((status.total, status.restarted, status.failed), (6, 6, 0));
    let seen = monitor.check();
    assert_eq!(seen.most_unavailable, 1);
    bed.assert_each_restarted_once(&before).await;
    assert_eq!(
        bed.requests_of("db-restart").await.len(),
        6,
        "one request per pod"
    );
    bed.shutdown().await;
}

/// Loosens field `field` (a JSON pointer below the CRD's `openAPIV3Schema`) of CRD `name` to
/// `schema`: what an object written by a newer release (another version of the field) looks
/// like to this release's types.
async fn loosen_crd(bed: &Bed, name: &str, field: &str, schema: serde_json::Value) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(bed.client.clone());
    let mut crd = serde_json::to_value(crds.get(name).await.unwrap()).unwrap();
    *crd.pointer_mut(&format!("/spec/versions/0/schema/openAPIV3Schema{field}"))
        .unwrap() = schema;
    let crd: CustomResourceDefinition = serde_json::from_value(crd).unwrap();
    crds.replace(name, &PostParams::default(), &crd)
        .await
        .unwrap();
}

/// Issue 11, item 9: a rollout and a request the coordinator's types cannot read (a field of
/// another type, as a newer release could write it) are left out of its caches, counted and
/// logged; the watches go on, so another rollout and another request still run to the end.
#[tokio::test(flavor = "multi_thread")]
async fn unreadable_objects_do_not_stop_other_rollouts_and_requests() {
    let bed = Bed::start(1).await;
    let before = bed.statefulset("db", 2, database_pod_spec()).await;
    let lone = bed.database_pod("lone", "node-1").await;
    loosen_crd(
        &bed,
        "rollingrestarts.relaunch.dev",
        "/properties/spec/properties/strategy/properties/maxFailures",
        json!({"type": "string"}),
    )
    .await;
    loosen_crd(
        &bed,
        "containerrecreaterequests.relaunch.dev",
        "/properties/spec/properties/ttlSecondsAfterFinished",
        json!({"type": "string"}),
    )
    .await;
    // Unreadable for this release: a string where it reads a number.
    let unreadable = |file: &str, manifest: &str| {
        let path = bed.dir().join(file);
        std::fs::write(&path, manifest).unwrap();
        path
    };
    let rollout = unreadable(
        "newer-rollout.yaml",
        r#"
apiVersion: relaunch.dev/v1alpha1
kind: RollingRestart
metadata: {name: newer, namespace: default}
spec:
  target: {workloadRef: {kind: StatefulSet, name: db}}
  strategy: {maxFailures: "a few"}
"#,
    );
    let request = unreadable(
        "newer-request.yaml",
        r#"
apiVersion: relaunch.dev/v1alpha1
kind: ContainerRecreateRequest
metadata: {name: newer, namespace: default}
spec:
  podName: lone
  containers: [{name: db}]
  ttlSecondsAfterFinished: "later"
"#,
    );
    for path in [&rollout, &request] {
        bed.kubectl(&["create", "-f", &path.to_string_lossy()])
            .await
            .unwrap();
    }
    eventually(
        "the coordinator to log both objects it cannot read",
        Duration::from_secs(30),
        || async {
            let log =
                std::fs::read_to_string(bed.dir().join("coordinator/log")).unwrap_or_default();
            (log.contains("cannot read rollingrestarts default/newer")
                && log.contains("cannot read containerrecreaterequests default/newer"))
            .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", bed.coordinator_log()));

    // Created after the unreadable ones: the watches still bring them.
    bed.rollout(
        "db-restart",
        json!({"target": {"workloadRef": {"kind": "StatefulSet", "name": "db"}}}),
    )
    .await;
    bed.recreate("lone-restart", &lone, json!([{"name": "db"}]), json!({}))
        .await;
    let status = bed
        .rollout_finished("db-restart", Duration::from_secs(120))
        .await;
    assert_eq!(status.phase, RolloutPhase::Succeeded, "{status:?}");
    assert_eq!((status.total, status.restarted), (2, 2));
    bed.assert_each_restarted_once(&before).await;
    let request = bed.finished("lone-restart").await;
    assert_eq!(
        request.phase,
        relaunch_api::RecreatePhase::Succeeded,
        "{request:?}"
    );
    // The unreadable ones were not acted on.
    let newer: serde_json::Value = serde_json::from_str(
        &bed.kubectl(&["get", "rollingrestart", "newer", "-o", "json"])
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(newer.get("status").is_none(), "{newer}");
    bed.shutdown().await;
}
