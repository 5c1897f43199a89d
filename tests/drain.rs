//! Drains end to end (ScaleDown part 2): a demo "partitioned store" StatefulSet annotated with
//! a drain pod template, scaled down with plain `kubectl scale` (no ScaleDown). Real containerd,
//! the sandbox's StatefulSet controller and kubelet simulator, relaunch-agent and
//! relaunch-coordinator as real processes. Needs root.

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use relaunch_api::{DRAIN_FAILED, Drain, DrainPhase, DrainStatus};
use relaunch_testbed::TEST_IMAGE;
use serde_json::{Value, json};
use support::store::{STORE, claim_dir, keys};
use support::{Bed, eventually};

/// The drain pod: hands every key on the orphaned volume to the remaining members (round
/// robin, atomically), waits until they took them in, exits 0.
const DRAIN: &str = r#"set -e
echo "attempt of $RELAUNCH_POD_NAME" >> /exchange/drain-runs
set -- $RELAUNCH_REMAINING
n=0
for f in /data/key-*; do
  [ -e "$f" ] || continue
  i=$((n % $# + 1)); eval target=\${$i}
  k=$(basename "$f")
  mkdir -p /exchange/inbox-$target
  cp "$f" /exchange/inbox-$target/.tmp-$k
  mv /exchange/inbox-$target/.tmp-$k /exchange/inbox-$target/$k
  n=$((n + 1))
done
while ls /exchange/inbox-*/ 2>/dev/null | grep -q '^key-'; do sleep 0.2; done
echo "handed $n keys""#;

fn store(exchange: &Path, replicas: usize, drain_script: &str) -> Value {
    let volumes = json!([{"name": "exchange", "hostPath": {"path": exchange.to_string_lossy(), "type": "DirectoryOrCreate"}}]);
    let template = json!({
        "spec": {
            "containers": [{
                "name": "drain", "image": TEST_IMAGE, "command": ["sh", "-c", drain_script],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "exchange", "mountPath": "/exchange"}],
            }],
            "volumes": volumes,
        },
    });
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "store", "annotations": {
            // luksa's annotation: accepted as an alias.
            "statefulsets.kubernetes.io/scaledown-pod-template": template.to_string(),
        }},
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
                    "volumes": volumes,
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
            }],
        },
    })
}

async fn start_store(bed: &Bed, replicas: usize, drain_script: &str) {
    let exchange = bed.dir().join("exchange");
    bed.create::<StatefulSet>(store(&exchange, replicas, drain_script))
        .await;
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

async fn drains(bed: &Bed) -> Vec<Drain> {
    bed.api::<Drain>()
        .list(&Default::default())
        .await
        .unwrap()
        .items
}

async fn finished_drain(bed: &Bed, timeout: Duration) -> (String, DrainStatus) {
    eventually("a Drain to finish", timeout, || async {
        drains(bed).await.into_iter().find_map(|d| {
            let status = d.status?;
            status
                .phase
                .is_finished()
                .then(|| (d.metadata.name.unwrap_or_default(), status))
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; coordinator log:\n{}", bed.coordinator_log()))
}

/// For `window`, no Drain appears (checked every 200 ms).
async fn no_drain_for(bed: &Bed, window: Duration) {
    let until = Instant::now() + window;
    while Instant::now() < until {
        let found = drains(bed).await;
        assert!(found.is_empty(), "unexpected drains: {found:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_scale_on_an_annotated_statefulset_drains_the_removed_ordinal() {
    let bed = Bed::start(1).await;
    start_store(&bed, 3, DRAIN).await;
    // Pod 0 deleted by hand: its ordinal is in range; recreated normally, nothing drained.
    let pods = bed.api::<Pod>();
    let old = pods.get("store-0").await.unwrap().metadata.uid;
    bed.kubectl(&["delete", "pod", "store-0", "--wait=false"])
        .await
        .unwrap();
    eventually("store-0 recreated", Duration::from_secs(60), || async {
        let p = pods.get("store-0").await.ok()?;
        (p.metadata.uid != old).then_some(())
    })
    .await
    .unwrap();
    bed.ready_pods("store", 3).await;
    no_drain_for(&bed, Duration::from_secs(5)).await;

    let want: BTreeSet<String> = (0..3)
        .flat_map(|p| (1..=3).map(move |i| format!("key-store-{p}-{i}")))
        .collect();
    bed.kubectl(&["scale", "sts/store", "--replicas=2"])
        .await
        .unwrap();
    let (name, status) = finished_drain(&bed, Duration::from_secs(90)).await;
    assert_eq!(status.phase, DrainPhase::Succeeded, "{status:?}");
    assert_eq!(status.attempts, 1);
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("claims deleted: data-store-2"),
        "{message}"
    );
    // Every key is on the remaining members; the drained claim and the drain pod are gone.
    let remaining: BTreeSet<String> = (0..2)
        .flat_map(|p| keys(&claim_dir(&bed, &format!("data-store-{p}"))))
        .collect();
    assert_eq!(remaining, want);
    assert_eq!(
        claims(&bed).await,
        BTreeSet::from(["data-store-0".to_string(), "data-store-1".to_string()])
    );
    assert!(pods.get_opt("store-2").await.unwrap().is_none());
    let runs = std::fs::read_to_string(bed.dir().join("exchange/drain-runs")).unwrap();
    assert_eq!(runs.lines().collect::<Vec<_>>(), ["attempt of store-2"]);
    // One drain, of ordinal 2 (none for the pod deleted by hand).
    let all = drains(&bed).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(
        (all[0].spec.ordinal, all[0].metadata.name.clone()),
        (2, Some(name))
    );
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_drain_keeps_the_claim_and_a_deleted_statefulset_is_never_drained() {
    let bed = Bed::start(1).await;
    start_store(&bed, 2, "echo 'cannot reach the members' >&2; exit 3").await;
    bed.kubectl(&["scale", "sts/store", "--replicas=1"])
        .await
        .unwrap();
    let (_, status) = finished_drain(&bed, Duration::from_secs(90)).await;
    assert_eq!(status.phase, DrainPhase::Failed, "{status:?}");
    assert_eq!(status.attempts, 3);
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == DRAIN_FAILED && c.status == "True"),
        "{status:?}"
    );
    // The claim is kept, its keys on it; the failed drain pod does not stay in the way.
    assert!(claims(&bed).await.contains("data-store-1"));
    assert_eq!(keys(&claim_dir(&bed, "data-store-1")).len(), 3);
    eventually("the drain pod gone", Duration::from_secs(30), || async {
        bed.api::<Pod>()
            .get_opt("store-1")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();
    // A scale-up brings the ordinal back on its kept claim.
    bed.kubectl(&["scale", "sts/store", "--replicas=2"])
        .await
        .unwrap();
    bed.ready_pods("store", 2).await;
    assert_eq!(keys(&claim_dir(&bed, "data-store-1")).len(), 3);

    // The StatefulSet deleted: every claim orphaned, nothing drained, nothing deleted.
    let before = drains(&bed).await.len();
    bed.kubectl(&["delete", "sts", "store", "--wait=false"])
        .await
        .unwrap();
    eventually("the pods gone", Duration::from_secs(60), || async {
        let left = bed.api::<Pod>().list(&Default::default()).await.ok()?;
        left.items.is_empty().then_some(())
    })
    .await
    .unwrap();
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert_eq!(drains(&bed).await.len(), before);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        claims(&bed).await,
        BTreeSet::from(["data-store-0".to_string(), "data-store-1".to_string()])
    );
    bed.shutdown().await;
}
