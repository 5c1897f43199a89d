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
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use relaunch_api::{ScaleDown, ScaleDownPhase, ScaleDownStatus};
use relaunch_testbed::TEST_IMAGE;
use serde_json::{Value, json};
use support::{Bed, eventually};

/// A store member: seeds its own three keys on first start, then keeps taking in the keys
/// handed to it (`/exchange/inbox-<pod>`) into its volume.
const STORE: &str = r#"trap 'exit 0' TERM
if [ ! -f /data/seeded ]; then for i in 1 2 3; do echo "$POD_NAME-$i" > /data/key-$POD_NAME-$i; done; touch /data/seeded; fi
mkdir -p /exchange/inbox-$POD_NAME
touch /tmp/ready
while true; do
  for f in /exchange/inbox-$POD_NAME/key-*; do [ -e "$f" ] && cp "$f" /data/ && rm -f "$f"; done
  sleep 0.2
done"#;

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

/// The host directory behind claim `claim` (the kubelet simulator's layout).
fn claim_dir(bed: &Bed, claim: &str) -> PathBuf {
    bed.dir()
        .join("nodes")
        .join("node-1")
        .join("volumes/pvc/default")
        .join(claim)
}

/// The keys in a claim's directory.
fn keys(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("key-"))
                .collect()
        })
        .unwrap_or_default()
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
