//! The sandbox end to end: kubectl against a StatefulSet on simulated nodes. Needs root and
//! kubectl. (`relaunch-sandbox up` itself is tested in the test bed crate.)

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Bed, eventually};

async fn kubectl_json(bed: &Bed, args: &[&str]) -> Value {
    serde_json::from_str(&bed.kubectl(args).await.unwrap()).unwrap()
}

const STATEFULSET: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  replicas: 3
  serviceName: web
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: app
        image: relaunch.test/busybox:1
        command: ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
"#;

fn names(list: &Value) -> Vec<String> {
    let mut names: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_apply_statefulset_runs_pods_with_claims_and_scale_down_keeps_claims() {
    let bed = Bed::without_relaunch(2).await;
    bed.apply("sts.yaml", STATEFULSET).await;

    eventually("three Running pods", Duration::from_secs(90), || async {
        let pods = kubectl_json(&bed, &["get", "pods", "-l", "app=web", "-o", "json"]).await;
        let running = pods["items"]
            .as_array()?
            .iter()
            .filter(|p| {
                p["status"]["phase"] == "Running"
                    && p["status"]["containerStatuses"][0]["containerID"]
                        .as_str()
                        .is_some_and(|id| id.starts_with("containerd://"))
            })
            .count();
        (running == 3).then_some(())
    })
    .await
    .unwrap();
    let claims = kubectl_json(&bed, &["get", "pvc", "-o", "json"]).await;
    assert_eq!(
        names(&claims),
        vec!["data-web-0", "data-web-1", "data-web-2"]
    );
    assert!(
        claims["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"]["phase"] == "Bound")
    );

    bed.kubectl(&["scale", "statefulset", "web", "--replicas=1"])
        .await
        .unwrap();
    eventually("only web-0 left", Duration::from_secs(90), || async {
        let pods = kubectl_json(&bed, &["get", "pods", "-l", "app=web", "-o", "json"]).await;
        (names(&pods) == vec!["web-0"]).then_some(())
    })
    .await
    .unwrap();
    let claims = kubectl_json(&bed, &["get", "pvc", "-o", "json"]).await;
    assert_eq!(
        names(&claims),
        vec!["data-web-0", "data-web-1", "data-web-2"],
        "claims are kept on scale-down"
    );
    let set = kubectl_json(&bed, &["get", "sts", "web", "-o", "json"]).await;
    assert_eq!(set["status"]["replicas"], 1);
    bed.shutdown().await;
}
