//! Restart in place on a configuration change, end to end (issue 16): workloads opted in with
//! `relaunch.dev/reload` or Reloader's annotation, edited through kubectl; real containerd, the
//! sandbox's controllers and kubelet simulators, relaunch as real processes. Needs root.

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::Resource;
use kube::api::{Api, ListParams};
use relaunch_api::reload::{ANNOTATION_RELOAD_APPLIED, ANNOTATION_RELOAD_CHANGED};
use relaunch_api::{RollingRestart, RolloutPhase};
use relaunch_testbed::TEST_IMAGE;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use support::{Bed, container_status, eventually};

/// Appends what the container was started with (`$SEEN`, expanded by the shell) to
/// `/data/seen`, then runs until SIGTERM; Ready one second after it starts, so that a rollout
/// of three pods takes a few seconds.
fn recorder(seen: &str) -> String {
    format!(
        "echo \"{seen}\" >> /data/seen; trap 'exit 0' TERM; sleep 1; touch /tmp/ready; while true; do sleep 0.1; done"
    )
}

/// A container that runs until SIGTERM, Ready at once.
const IDLE: &str = "trap 'exit 0' TERM; touch /tmp/ready; while true; do sleep 0.1; done";

fn probe() -> Value {
    json!({"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1})
}

/// The host directory of `pod`'s volume `volume` (the kubelet simulator's layout).
fn volume_dir(bed: &Bed, pod: &Pod, volume: &str) -> PathBuf {
    let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
    bed.dir()
        .join("nodes")
        .join(node)
        .join("volumes/pods")
        .join(pod.metadata.uid.as_deref().unwrap())
        .join("volumes")
        .join(volume)
}

/// The lines the pod's containers appended to `/data/seen` (volume `data`).
fn seen(bed: &Bed, pod: &Pod) -> Vec<String> {
    std::fs::read_to_string(volume_dir(bed, pod, "data").join("seen"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// The reload rollouts (those naming what changed), oldest first.
async fn reload_rollouts(bed: &Bed) -> Vec<RollingRestart> {
    let mut list: Vec<RollingRestart> = bed
        .rollouts()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|r| {
            r.meta()
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(ANNOTATION_RELOAD_CHANGED))
        })
        .collect();
    list.sort_by_key(|r| r.meta().creation_timestamp.clone().map(|t| t.0));
    list
}

/// Waits until workload `name` carries the applied hashes (the coordinator has baselined it).
async fn baselined<K>(bed: &Bed, name: &str)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    eventually(
        &format!("{name} baselined"),
        Duration::from_secs(30),
        || async {
            let object = bed.api::<K>().get(name).await.ok()?;
            object
                .meta()
                .annotations
                .as_ref()?
                .get(ANNOTATION_RELOAD_APPLIED)
                .cloned()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; coordinator log:\n{}", bed.coordinator_log()));
}

async fn kubectl_patch(bed: &Bed, what: &str, name: &str, patch: Value) {
    bed.kubectl(&[
        "patch",
        what,
        name,
        "--type",
        "merge",
        "-p",
        &patch.to_string(),
    ])
    .await
    .unwrap();
}

/// `kubectl relaunch ARGS` with the plugin's directory first on PATH: what it printed.
async fn kubectl_relaunch(bed: &Bed, args: &[&str]) -> String {
    let plugin = support::binaries().kubectl_relaunch;
    let path = format!(
        "{}:{}",
        plugin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = support::kubectl(&bed.sandbox.kubeconfig_path(), bed.dir(), &["relaunch"]);
    command.args(args).env("PATH", path);
    let out = support::output(command).await;
    assert!(out.status.success(), "{}", support::printed(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn by_name(pods: Vec<Pod>) -> BTreeMap<String, Pod> {
    pods.into_iter()
        .map(|p| (p.metadata.name.clone().unwrap(), p))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configmap_edit_restarts_each_pod_in_place_and_edits_during_it_make_one_more_rollout() {
    let bed = Bed::start(1).await;
    let config = |name: &str, value: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
               "data": {"GREETING": value}})
        .to_string()
    };
    bed.apply("greeting.json", &config("greeting", "v1")).await;
    bed.apply("unrelated.json", &config("unrelated", "u1"))
        .await;
    let statefulset = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "web", "annotations": {
            "relaunch.dev/reload": "auto", "relaunch.dev/max-unavailable": "1"}},
        "spec": {
            "replicas": 3, "podManagementPolicy": "Parallel", "serviceName": "web",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "terminationGracePeriodSeconds": 10,
                "volumes": [{"name": "data", "emptyDir": {}}],
                "containers": [{
                    "name": "app", "image": TEST_IMAGE, "command": ["sh", "-c", recorder("$GREETING")],
                    "env": [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "greeting", "key": "GREETING"}}}],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    "readinessProbe": probe(),
                }],
            }},
        },
    });
    bed.apply("web.json", &statefulset.to_string()).await;
    let before = by_name(bed.ready_pods("web", 3).await);
    for pod in before.values() {
        assert_eq!(seen(&bed, pod), vec!["v1"]);
    }
    baselined::<StatefulSet>(&bed, "web").await;
    assert!(
        reload_rollouts(&bed).await.is_empty(),
        "the baseline restarts nothing"
    );

    // An object the workload does not use: nothing. Then the one it uses.
    kubectl_patch(
        &bed,
        "configmap",
        "unrelated",
        json!({"data": {"GREETING": "u2"}}),
    )
    .await;
    kubectl_patch(
        &bed,
        "configmap",
        "greeting",
        json!({"data": {"GREETING": "v2"}}),
    )
    .await;
    let first = eventually("a reload rollout", Duration::from_secs(30), || async {
        reload_rollouts(&bed).await.into_iter().next()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; coordinator log:\n{}", bed.coordinator_log()));
    let first_name = first.metadata.name.clone().unwrap();
    assert_eq!(
        first.metadata.annotations.as_ref().unwrap()[ANNOTATION_RELOAD_CHANGED],
        "configmap/greeting",
        "the unrelated ConfigMap is not named"
    );
    assert_eq!(first.spec.containers, vec!["app"]);

    // Two more edits while it runs: exactly one follow-up.
    kubectl_patch(
        &bed,
        "configmap",
        "greeting",
        json!({"data": {"GREETING": "v3"}}),
    )
    .await;
    kubectl_patch(
        &bed,
        "configmap",
        "greeting",
        json!({"data": {"GREETING": "v4"}}),
    )
    .await;
    let phase = bed
        .rollouts()
        .get(&first_name)
        .await
        .unwrap()
        .status
        .map(|s| s.phase);
    assert!(
        !matches!(phase, Some(RolloutPhase::Succeeded | RolloutPhase::Failed)),
        "the edits must land while the first rollout runs (it was {phase:?})"
    );
    let status = bed
        .rollout_finished(&first_name, Duration::from_secs(60))
        .await;
    assert_eq!(status.phase, RolloutPhase::Succeeded, "{status:?}");
    let second = eventually("the follow-up rollout", Duration::from_secs(30), || async {
        let all = reload_rollouts(&bed).await;
        all.into_iter()
            .find(|r| r.metadata.name.as_deref() != Some(first_name.as_str()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; coordinator log:\n{}", bed.coordinator_log()));
    let second_name = second.metadata.name.clone().unwrap();
    let status = bed
        .rollout_finished(&second_name, Duration::from_secs(60))
        .await;
    assert_eq!(status.phase, RolloutPhase::Succeeded, "{status:?}");
    let all = reload_rollouts(&bed).await;
    assert_eq!(
        all.len(),
        2,
        "two edits during the first rollout make exactly one more: {:?}",
        all.iter()
            .map(|r| r.metadata.name.clone())
            .collect::<Vec<_>>()
    );

    // In place: same pod, same IP, one restart per rollout; each new container saw the value
    // current when it was created, the last one the last value.
    let after = by_name(bed.ready_pods("web", 3).await);
    for (name, pod) in &before {
        let now = &after[name];
        assert_eq!(now.metadata.uid, pod.metadata.uid, "{name} kept its UID");
        let ip = |p: &Pod| p.status.as_ref().and_then(|s| s.pod_ip.clone());
        assert_eq!(ip(now), ip(pod), "{name} kept its IP");
        assert_eq!(
            container_status(now, "app").restart_count,
            container_status(pod, "app").restart_count + 2,
            "{name} restarted once per rollout"
        );
        let lines = seen(&bed, now);
        assert_eq!(lines.len(), 3, "{name}: {lines:?}");
        assert_eq!(lines[0], "v1");
        assert!(
            ["v2", "v3", "v4"].contains(&lines[1].as_str()),
            "{name}: {lines:?}"
        );
        assert_eq!(lines[2], "v4", "{name}: {lines:?}");
    }

    // The Event names what changed and the rollout.
    let events = bed
        .api::<Event>()
        .list(&ListParams::default())
        .await
        .unwrap();
    let changed: Vec<String> = events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("ConfigurationChanged"))
        .filter_map(|e| e.note.clone())
        .collect();
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert!(
        changed[0].contains("configmap/greeting changed")
            && changed.iter().any(|n| n.contains(&first_name)),
        "{changed:?}"
    );

    let queued: Vec<String> = events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("ConfigurationChangeQueued"))
        .filter_map(|e| e.note.clone())
        .collect();
    assert!(
        queued.len() == 1 && queued[0].contains(&first_name),
        "the waiting change is told once: {queued:?}"
    );

    // `kubectl relaunch status` shows the rollouts and what started them.
    let status = kubectl_relaunch(&bed, &["status"]).await;
    assert!(
        status.contains(&second_name) && status.contains("configmap/greeting"),
        "{status}"
    );
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_change_restarts_only_the_containers_that_mount_it_and_its_value_stays_secret() {
    let bed = Bed::start(1).await;
    let (old_value, new_value) = ("old-pw-4711", "new-pw-0815");
    bed.apply(
        "creds.json",
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
                "stringData": {"password": old_value}})
        .to_string(),
    )
    .await;
    // Reloader's annotation, unchanged: its users switch by changing nothing.
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "vault", "annotations": {"reloader.stakater.com/auto": "true"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "vault"}},
            "template": {"metadata": {"labels": {"app": "vault"}}, "spec": {
                "terminationGracePeriodSeconds": 10,
                "volumes": [{"name": "data", "emptyDir": {}},
                            {"name": "creds", "secret": {"secretName": "creds"}}],
                "containers": [
                    {"name": "app", "image": TEST_IMAGE,
                     "command": ["sh", "-c", recorder("$(cat /etc/creds/password)")],
                     "volumeMounts": [{"name": "data", "mountPath": "/data"},
                                      {"name": "creds", "mountPath": "/etc/creds"}],
                     "readinessProbe": probe()},
                    {"name": "sidecar", "image": TEST_IMAGE, "command": ["sh", "-c", IDLE],
                     "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                     "readinessProbe": probe()},
                ],
            }},
        },
    });
    bed.apply("vault.json", &deployment.to_string()).await;
    let before = by_name(bed.ready_pods("vault", 2).await);
    baselined::<Deployment>(&bed, "vault").await;

    kubectl_patch(
        &bed,
        "secret",
        "creds",
        json!({"stringData": {"password": new_value}}),
    )
    .await;
    let rollout = eventually("a reload rollout", Duration::from_secs(30), || async {
        reload_rollouts(&bed).await.into_iter().next()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; coordinator log:\n{}", bed.coordinator_log()));
    assert_eq!(
        rollout.metadata.annotations.as_ref().unwrap()[ANNOTATION_RELOAD_CHANGED],
        "secret/creds"
    );
    assert_eq!(
        rollout.spec.containers,
        vec!["app"],
        "the sidecar does not use it"
    );
    let name = rollout.metadata.name.clone().unwrap();
    let status = bed.rollout_finished(&name, Duration::from_secs(60)).await;
    assert_eq!(status.phase, RolloutPhase::Succeeded, "{status:?}");

    let after = by_name(bed.ready_pods("vault", 2).await);
    for (pod_name, pod) in &before {
        let now = &after[pod_name];
        assert_eq!(
            now.metadata.uid, pod.metadata.uid,
            "{pod_name} restarted in place"
        );
        let restarts = |p: &Pod, c: &str| container_status(p, c).restart_count;
        assert_eq!(restarts(now, "app"), restarts(pod, "app") + 1, "{pod_name}");
        assert_eq!(
            restarts(now, "sidecar"),
            restarts(pod, "sidecar"),
            "{pod_name}: the sidecar stays up"
        );
        assert_eq!(seen(&bed, now), vec![old_value, new_value], "{pod_name}");
        // The mounted files show the new content.
        let file = std::fs::read_to_string(volume_dir(&bed, now, "creds").join("password"));
        assert_eq!(file.unwrap(), new_value);
    }

    // Deleting it starts nothing and says why, on the workload.
    bed.kubectl(&["delete", "secret", "creds"]).await.unwrap();
    let warning = eventually(
        "a ConfigurationMissing Warning",
        Duration::from_secs(30),
        || async {
            let events = bed.api::<Event>().list(&ListParams::default()).await.ok()?;
            events.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("ConfigurationMissing")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("vault")
            })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; coordinator log:\n{}", bed.coordinator_log()));
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(warning.note.unwrap_or_default().contains("secret/creds"));
    assert_eq!(
        reload_rollouts(&bed).await.len(),
        1,
        "deleting starts nothing"
    );

    // The values never appear in the coordinator's log, in Events, in rollouts (spec and
    // status) or on the workload (which carries a hash).
    let encode = |v: &str| {
        // base64, as the API serves Secret data
        let json = serde_json::to_value(k8s_openapi::ByteString(v.as_bytes().to_vec())).unwrap();
        json.as_str().unwrap().to_string()
    };
    let log = std::fs::read_to_string(bed.dir().join("coordinator").join("log")).unwrap();
    let events = serde_json::to_string(
        &bed.api::<Event>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items,
    )
    .unwrap();
    let all_events = serde_json::to_string(
        &Api::<Event>::all(bed.client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items,
    )
    .unwrap();
    let rollouts = serde_json::to_string(
        &bed.rollouts()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items,
    )
    .unwrap();
    let workload =
        serde_json::to_string(&bed.api::<Deployment>().get("vault").await.unwrap()).unwrap();
    // Each haystack is the real thing: it names the Secret, only never its value.
    assert!(workload.contains("secret/creds="), "{workload}");
    assert!(log.contains("secret/creds"), "{log}");
    assert!(events.contains("secret/creds changed"), "{events}");
    assert!(rollouts.contains("secret/creds"), "{rollouts}");
    for value in [old_value, new_value] {
        for text in [value.to_string(), encode(value)] {
            for (what, haystack) in [
                ("coordinator log", &log),
                ("Events", &events),
                ("Events of all namespaces", &all_events),
                ("rollouts", &rollouts),
                ("the workload", &workload),
            ] {
                assert!(!haystack.contains(&text), "{what} shows {text:?}");
            }
        }
    }
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_restart_restarts_nothing_unchanged_and_applies_what_changed_while_it_was_down()
 {
    let mut bed = Bed::start(1).await;
    for name in ["a", "b"] {
        bed.apply(
            &format!("{name}.json"),
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                    "data": {"GREETING": "v1"}})
            .to_string(),
        )
        .await;
        let statefulset = json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": format!("s{name}"), "annotations": {"relaunch.dev/reload": "auto"}},
            "spec": {
                "replicas": 1, "serviceName": format!("s{name}"),
                "selector": {"matchLabels": {"app": format!("s{name}")}},
                "template": {"metadata": {"labels": {"app": format!("s{name}")}}, "spec": {
                    "terminationGracePeriodSeconds": 10,
                    "volumes": [{"name": "data", "emptyDir": {}}],
                    "containers": [{
                        "name": "app", "image": TEST_IMAGE, "command": ["sh", "-c", recorder("$GREETING")],
                        "envFrom": [{"configMapRef": {"name": name}}],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        "readinessProbe": probe(),
                    }],
                }},
            },
        });
        bed.apply(&format!("s{name}.json"), &statefulset.to_string())
            .await;
    }
    let before_a = bed.ready_pods("sa", 1).await.remove(0);
    let before_b = bed.ready_pods("sb", 1).await.remove(0);
    baselined::<StatefulSet>(&bed, "sa").await;
    baselined::<StatefulSet>(&bed, "sb").await;

    // Down while a changes; back, it restarts sa once and leaves sb alone.
    bed.sandbox.coordinator().unwrap().kill();
    kubectl_patch(&bed, "configmap", "a", json!({"data": {"GREETING": "v2"}})).await;
    bed.sandbox.coordinator().unwrap().start().unwrap();
    let rollout = eventually("a reload rollout", Duration::from_secs(60), || async {
        reload_rollouts(&bed).await.into_iter().next()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; coordinator log:\n{}", bed.coordinator_log()));
    let target = rollout.spec.target.workload_ref.clone().unwrap();
    assert_eq!(target.name, "sa");
    let name = rollout.metadata.name.clone().unwrap();
    let status = bed.rollout_finished(&name, Duration::from_secs(60)).await;
    assert_eq!(status.phase, RolloutPhase::Succeeded, "{status:?}");
    let names: Vec<_> = reload_rollouts(&bed)
        .await
        .into_iter()
        .map(|r| r.metadata.name)
        .collect();
    assert_eq!(names.len(), 1, "nothing for sb: {names:?}");
    let after_a = bed.ready_pods("sa", 1).await.remove(0);
    let after_b = bed.ready_pods("sb", 1).await.remove(0);
    assert_eq!(seen(&bed, &after_a), vec!["v1", "v2"]);
    assert_eq!(seen(&bed, &after_b), vec!["v1"]);
    assert_eq!(after_a.metadata.uid, before_a.metadata.uid);
    assert_eq!(
        container_status(&after_b, "app").restart_count,
        container_status(&before_b, "app").restart_count
    );
    bed.shutdown().await;
}
