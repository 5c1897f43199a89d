//! ScaleDown end to end: a demo "partitioned store" StatefulSet (each pod holds its own keys
//! on its claim) scaled down through relaunch with real containerd, the sandbox's StatefulSet
//! controller and kubelet simulator, and relaunch-agent and relaunch-coordinator as real
//! processes. The decommission command hands the leaving pod's keys to the remaining members
//! (through a shared host directory, standing in for the members' own network protocol); the
//! status command says whether every handed key has been taken in. Needs root.

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::Api;
use relaunch_api::{ScaleDown, ScaleDownPhase, ScaleDownStatus};
use relaunch_testbed::TEST_IMAGE;
use serde_json::{Value, json};
use support::store::{STORE, claim_dir, keys};
use support::{Bed, eventually};

/// Hands every key of the leaving pod (and any still in its inbox) to the remaining members,
/// round robin; each copy lands atomically. Idempotent: running it again hands the same keys.
const DECOMMISSION: &str = r#"set -e
set -- $RELAUNCH_REMAINING
[ $# -gt 0 ] || { echo "no remaining member to hand keys to" >&2; exit 1; }
n=0
for f in /data/key-* /exchange/inbox-$RELAUNCH_POD_NAME/key-*; do
  [ -e "$f" ] || continue
  i=$((n % $# + 1)); eval target=\${$i}
  k=$(basename "$f")
  mkdir -p /exchange/inbox-$target
  cp "$f" /exchange/inbox-$target/.tmp-$k
  mv /exchange/inbox-$target/.tmp-$k /exchange/inbox-$target/$k
  n=$((n + 1))
done
echo "handed $n keys to $RELAUNCH_REMAINING""#;

/// Done (0) once no handed key waits in any inbox; in progress (75) with the count otherwise.
const STATUS: &str = r#"n=$(ls /exchange/inbox-*/ 2>/dev/null | grep -c '^key-' || true)
if [ "$n" -gt 0 ]; then echo "keys in flight: $n"; exit 75; fi
echo done"#;

/// The demo store: `replicas` pods, each with claim `data` and the shared exchange directory.
fn store(exchange: &Path, replicas: usize) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "store"},
        "spec": {
            "replicas": replicas,
            "podManagementPolicy": "Parallel",
            "serviceName": "store",
            "selector": {"matchLabels": {"app": "store"}},
            "template": {
                "metadata": {"labels": {"app": "store"}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "store", "image": TEST_IMAGE, "command": ["sh", "-c", STORE],
                        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "exchange", "mountPath": "/exchange"}],
                        "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1},
                    }],
                    "volumes": [{"name": "exchange", "hostPath": {"path": exchange.to_string_lossy(), "type": "DirectoryOrCreate"}}],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
            }],
        },
    })
}

fn all_keys(pods: usize) -> BTreeSet<String> {
    (0..pods)
        .flat_map(|p| (1..=3).map(move |i| format!("key-store-{p}-{i}")))
        .collect()
}

async fn start_store(bed: &Bed, replicas: usize) {
    let exchange = bed.dir().join("exchange");
    bed.create::<StatefulSet>(store(&exchange, replicas)).await;
    bed.ready_pods("store", replicas).await;
    for p in 0..replicas {
        let dir = claim_dir(bed, &format!("data-store-{p}"));
        eventually("keys seeded", Duration::from_secs(30), || async {
            (keys(&dir).len() == 3).then_some(())
        })
        .await
        .unwrap();
    }
}

async fn finished(bed: &Bed, name: &str, timeout: Duration) -> ScaleDownStatus {
    eventually(&format!("ScaleDown {name} to finish"), timeout, || async {
        let status = bed.api::<ScaleDown>().get(name).await.ok()?.status?;
        status.phase.is_finished().then_some(status)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; coordinator log:\n{}", bed.coordinator_log()))
}

async fn replicas(bed: &Bed) -> i32 {
    let sts = bed.api::<StatefulSet>().get("store").await.unwrap();
    sts.spec.unwrap().replicas.unwrap()
}

async fn claims(bed: &Bed) -> BTreeSet<String> {
    bed.api::<PersistentVolumeClaim>()
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .filter_map(|c| c.metadata.name)
        .collect()
}

fn scaledown(name: &str, replicas: i32, decommission: &str, extra: Value) -> Value {
    let mut spec = json!({
        "statefulSetName": "store", "replicas": replicas,
        "decommission": {"command": ["sh", "-c", decommission]},
        "statusPeriodSeconds": 1,
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({"apiVersion": "relaunch.dev/v1alpha1", "kind": "ScaleDown", "metadata": {"name": name}, "spec": spec})
}

/// Runs `kubectl relaunch <args>` (the plugin's directory first on PATH): exit code, stdout,
/// stderr.
async fn kubectl_relaunch(bed: &Bed, args: &[&str]) -> (Option<i32>, String, String) {
    let plugin = support::binaries().kubectl_relaunch;
    let path = format!(
        "{}:{}",
        plugin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = support::kubectl(&bed.sandbox.kubeconfig_path(), bed.dir(), &["relaunch"]);
    command.args(args).env("PATH", path);
    let out = support::output(command).await;
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_store_scales_3_to_1_without_losing_a_key() {
    let bed = Bed::start(1).await;
    start_store(&bed, 3).await;
    let (code, stdout, stderr) = kubectl_relaunch(
        &bed,
        &[
            "scale",
            "sts/store",
            "--replicas",
            "1",
            "--decommission-exec",
            DECOMMISSION,
            "--status-exec",
            STATUS,
            "--status-period",
            "1s",
            "--delete-claims",
            "--wait",
            "--timeout",
            "2m",
        ],
    )
    .await;
    assert_eq!(
        code,
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}\ncoordinator log:\n{}",
        bed.coordinator_log()
    );
    assert!(stdout.contains("succeeded"), "{stdout}");
    let name = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("scaledown.relaunch.dev/")?
                .strip_suffix(" created")
        })
        .unwrap()
        .to_string();
    let status = finished(&bed, &name, Duration::from_secs(10)).await;
    assert_eq!(
        status.phase,
        ScaleDownPhase::Succeeded,
        "{:?}; coordinator log:\n{}",
        status.message,
        bed.coordinator_log()
    );
    assert_eq!(status.removed, vec![2, 1]);
    assert_eq!(replicas(&bed).await, 1);
    bed.ready_pods("store", 1).await;
    // Every key is on the remaining member's volume (taken in from its inbox).
    let dir = claim_dir(&bed, "data-store-0");
    let want = all_keys(3);
    eventually("all keys on store-0", Duration::from_secs(30), || async {
        (keys(&dir) == want).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: store-0 has {:?}", keys(&dir)));
    // claimPolicy Delete: the leaving pods' claims are gone, the remaining one's stays.
    assert_eq!(
        claims(&bed).await,
        BTreeSet::from(["data-store-0".to_string()])
    );
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_decommission_fails_with_its_message_and_lowers_nothing() {
    let bed = Bed::start(1).await;
    start_store(&bed, 3).await;
    bed.create::<ScaleDown>(scaledown(
        "broken",
        2,
        "echo 'cannot reach the other members' >&2; exit 3",
        json!({}),
    ))
    .await;
    let status = finished(&bed, "broken", Duration::from_secs(60)).await;
    assert_eq!(status.phase, ScaleDownPhase::Failed);
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("exited with code 3: cannot reach the other members"),
        "{message}"
    );
    assert_eq!(replicas(&bed).await, 3);
    assert_eq!(claims(&bed).await.len(), 3);
    assert_eq!(status.current.unwrap().pod_name, "store-2");
    // `status` lists it.
    let (code, stdout, _) = kubectl_relaunch(&bed, &["status"]).await;
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("broken") && stdout.contains("Failed"),
        "{stdout}"
    );
    bed.shutdown().await;
}

/// The lines in `/exchange/<file>` (a command appends one per run).
fn runs(bed: &Bed, file: &str) -> usize {
    std::fs::read_to_string(bed.dir().join("exchange").join(file))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

async fn status_of(bed: &Bed, name: &str) -> ScaleDownStatus {
    bed.api::<ScaleDown>()
        .get(name)
        .await
        .ok()
        .and_then(|s| s.status)
        .unwrap_or_default()
}

/// Watches the StatefulSet's replicas and fails if they drop to `r` while a key of ordinal `r`
/// is not yet with a member below `r` (on its volume or in its inbox).
fn watch_invariant(
    bed: &Bed,
) -> (
    tokio::task::JoinHandle<Vec<String>>,
    tokio_util::sync::CancellationToken,
) {
    let stop = tokio_util::sync::CancellationToken::new();
    let api = bed.api::<StatefulSet>();
    let root = bed.dir().to_path_buf();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let mut violations = Vec::new();
        let mut seen = 3;
        while !token.is_cancelled() {
            if let Ok(sts) = api.get("store").await {
                let r = sts.spec.and_then(|s| s.replicas).unwrap_or(3);
                if r < seen {
                    let leaving: Vec<String> =
                        (1..=3).map(|i| format!("key-store-{r}-{i}")).collect();
                    let mut held = BTreeSet::new();
                    for o in 0..r {
                        held.extend(keys(
                            &root
                                .join("nodes/node-1/volumes/pvc/default")
                                .join(format!("data-store-{o}")),
                        ));
                        held.extend(keys(
                            &root.join("exchange").join(format!("inbox-store-{o}")),
                        ));
                    }
                    for k in leaving {
                        if !held.contains(&k) {
                            violations.push(format!("replicas lowered to {r} before {k} moved"));
                        }
                    }
                    seen = r;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        violations
    });
    (task, stop)
}

/// A slower hand-off that first notes each run in `/exchange/runs-<pod>`.
fn slow_decommission() -> String {
    format!("echo run >> /exchange/runs-$RELAUNCH_POD_NAME; sleep 2\n{DECOMMISSION}")
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_and_coordinator_killed_mid_decommission_lose_no_key() {
    let mut bed = Bed::start(1).await;
    start_store(&bed, 3).await;
    let (invariant, stop) = watch_invariant(&bed);
    bed.create::<ScaleDown>(scaledown(
        "crashy",
        1,
        &slow_decommission(),
        json!({"statusCheck": {"command": ["sh", "-c", STATUS]}}),
    ))
    .await;
    // The agent dies while store-2's decommission runs: the new agent runs it again.
    eventually(
        "store-2's decommission running",
        Duration::from_secs(60),
        || async { (runs(&bed, "runs-store-2") >= 1).then_some(()) },
    )
    .await
    .unwrap();
    bed.sandbox.agent(0).unwrap().kill();
    bed.sandbox.restart_agent(0).await.unwrap();
    // The coordinator dies while store-1's decommission runs.
    eventually(
        "store-1's decommission running",
        Duration::from_secs(60),
        || async { (runs(&bed, "runs-store-1") >= 1).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; coordinator log:\n{}", bed.coordinator_log()));
    let coordinator = bed.sandbox.coordinator().unwrap();
    coordinator.kill();
    coordinator.start().unwrap();
    let status = finished(&bed, "crashy", Duration::from_secs(120)).await;
    stop.cancel();
    let violations = invariant.await.unwrap();
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(
        status.phase,
        ScaleDownPhase::Succeeded,
        "{:?}; coordinator log:\n{}",
        status.message,
        bed.coordinator_log()
    );
    assert!(
        runs(&bed, "runs-store-2") >= 2,
        "the command ran again after the agent's crash"
    );
    assert_eq!(replicas(&bed).await, 1);
    let dir = claim_dir(&bed, "data-store-0");
    let want = all_keys(3);
    eventually("all keys on store-0", Duration::from_secs(30), || async {
        (keys(&dir) == want).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: store-0 has {:?}", keys(&dir)));
    // claimPolicy Retain (the default): every claim is still there.
    assert_eq!(claims(&bed).await.len(), 3);
    bed.shutdown().await;
}

/// In progress until `/exchange/go` exists (the progress never changes: a stall).
const WAIT_FOR_GO: &str = "[ -f /exchange/go ] && exit 0; echo 'waiting for go'; exit 75";

#[tokio::test(flavor = "multi_thread")]
async fn a_scale_up_while_leaving_cancels_or_finishes_first() {
    let bed = Bed::start(1).await;
    start_store(&bed, 3).await;
    let patch_replicas = |name: &'static str, n: i32| {
        let api = bed.api::<ScaleDown>();
        async move {
            api.patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"spec": {"replicas": n}})),
            )
            .await
            .unwrap();
        }
    };
    // With a cancel command: cancelled, the pod stays.
    bed.create::<ScaleDown>(scaledown(
        "cancellable",
        1,
        "echo run >> /exchange/runs-$RELAUNCH_POD_NAME",
        json!({
            "statusCheck": {"command": ["sh", "-c", WAIT_FOR_GO]},
            "cancel": {"command": ["sh", "-c", "echo cancelled >> /exchange/cancelled-$RELAUNCH_POD_NAME"]},
        }),
    ))
    .await;
    eventually("store-2 in progress", Duration::from_secs(60), || async {
        let s = status_of(&bed, "cancellable").await;
        (s.progress.as_deref() == Some("waiting for go")).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; coordinator log:\n{}", bed.coordinator_log()));
    patch_replicas("cancellable", 3).await;
    let status = finished(&bed, "cancellable", Duration::from_secs(60)).await;
    assert_eq!(
        status.phase,
        ScaleDownPhase::Cancelled,
        "{:?}",
        status.message
    );
    assert_eq!(runs(&bed, "cancelled-store-2"), 1);
    assert_eq!(replicas(&bed).await, 3);
    bed.ready_pods("store", 3).await;

    // Without one: it finishes leaving first (a stall on the way is a condition, not a
    // failure), and comes back later with an empty, usable volume.
    bed.create::<ScaleDown>(scaledown(
        "finishing",
        1,
        "echo run >> /exchange/runs-$RELAUNCH_POD_NAME",
        json!({
            "statusCheck": {"command": ["sh", "-c", WAIT_FOR_GO]},
            "stallTimeoutSeconds": 2,
            "claimPolicy": "Delete",
        }),
    ))
    .await;
    eventually("a stall", Duration::from_secs(60), || async {
        let s = status_of(&bed, "finishing").await;
        s.is_true(relaunch_api::SCALEDOWN_STALLED).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; coordinator log:\n{}", bed.coordinator_log()));
    assert_eq!(replicas(&bed).await, 3, "a stall lowers nothing");
    assert_eq!(
        status_of(&bed, "finishing").await.phase,
        ScaleDownPhase::Running
    );
    patch_replicas("finishing", 3).await;
    eventually("the scale-up noted", Duration::from_secs(30), || async {
        let s = status_of(&bed, "finishing").await;
        s.message.filter(|m| m.contains("finishes leaving first"))
    })
    .await
    .unwrap();
    let pods: Api<Pod> = bed.api();
    let old_pod = pods.get("store-2").await.unwrap().metadata.uid;
    let old_claim = bed
        .api::<PersistentVolumeClaim>()
        .get("data-store-2")
        .await
        .unwrap()
        .metadata
        .uid;
    std::fs::write(bed.dir().join("exchange/go"), "").unwrap();
    let status = finished(&bed, "finishing", Duration::from_secs(60)).await;
    // The scale-down did not happen: the pod finished leaving, then came back by itself (the
    // StatefulSet recreated it) on a new claim; replicas were never lowered.
    assert_eq!(
        status.phase,
        ScaleDownPhase::Cancelled,
        "{:?}",
        status.message
    );
    let message = status.message.unwrap_or_default();
    assert!(message.contains("new, empty volume"), "{message}");
    assert!(status.removed.is_empty());
    assert_eq!(replicas(&bed).await, 3);
    bed.ready_pods("store", 3).await;
    let new_pod = pods.get("store-2").await.unwrap().metadata.uid;
    assert_ne!(new_pod, old_pod);
    let new_claim = bed
        .api::<PersistentVolumeClaim>()
        .get("data-store-2")
        .await
        .unwrap()
        .metadata
        .uid;
    assert_ne!(new_claim, old_claim);
    bed.shutdown().await;
}

/// The optional guard (manifests/guard): `kubectl scale` and a replicas patch that lower a
/// guarded StatefulSet are refused with a message naming `kubectl relaunch scale`, which works.
#[tokio::test(flavor = "multi_thread")]
async fn the_guard_refuses_kubectl_scale_and_lets_kubectl_relaunch_scale_through() {
    let bed = Bed::start(1).await;
    start_store(&bed, 3).await;
    let guard = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/guard");
    bed.kubectl(&["apply", "-k", &guard.to_string_lossy()])
        .await
        .unwrap();
    // Labelled StatefulSet: a patch lowering replicas is refused; raising is not.
    bed.kubectl(&["label", "sts/store", "relaunch.dev/scale-down=guarded"])
        .await
        .unwrap();
    let refused = eventually("the guard in force", Duration::from_secs(30), || async {
        bed.kubectl(&[
            "patch",
            "sts/store",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":2}}"#,
        ])
        .await
        .err()
    })
    .await
    .unwrap();
    assert!(
        refused.contains("kubectl relaunch scale sts/store --replicas 2"),
        "{refused}"
    );
    assert!(refused.contains("from 3 to 2"), "{refused}");
    // The scale subresource carries no labels: the namespace's label guards kubectl scale.
    bed.kubectl(&[
        "label",
        "namespace",
        "default",
        "relaunch.dev/scale-down=guarded",
    ])
    .await
    .unwrap();
    let refused = bed
        .kubectl(&["scale", "sts/store", "--replicas=2"])
        .await
        .unwrap_err();
    assert!(
        refused.contains("kubectl relaunch scale sts/store --replicas 2"),
        "{refused}"
    );
    assert_eq!(replicas(&bed).await, 3);
    // Through relaunch: decommissioned first, then lowered by the coordinator.
    let (code, stdout, stderr) = kubectl_relaunch(
        &bed,
        &[
            "scale",
            "sts/store",
            "--replicas",
            "2",
            "--decommission-exec",
            DECOMMISSION,
            "--wait",
            "--timeout",
            "90s",
        ],
    )
    .await;
    assert_eq!(
        code,
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}\ncoordinator log:\n{}",
        bed.coordinator_log()
    );
    assert_eq!(replicas(&bed).await, 2);
    bed.shutdown().await;
}
