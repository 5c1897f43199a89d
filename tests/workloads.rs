//! The Deployment, ReplicaSet and DaemonSet controllers end to end: kubectl against simulated
//! nodes whose kubelets run real containers. Needs root and kubectl.

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use support::{Bed, WAIT, eventually, ready};

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: app
        image: relaunch.test/busybox:1
        command: ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
"#;

/// `kubectl rollout status TARGET` succeeds within `timeout` and says the rollout finished.
async fn assert_rolled_out(bed: &Bed, target: &str, timeout: &str) {
    let out = bed
        .kubectl(&["rollout", "status", target, &format!("--timeout={timeout}")])
        .await
        .unwrap();
    assert!(out.contains("successfully rolled out"), "{out}");
}

fn is_live(pod: &Pod) -> bool {
    let finished = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    pod.metadata.deletion_timestamp.is_none() && !finished
}

/// Live (not terminating, not finished) pods of `app`.
async fn live_pods(pods: &Api<Pod>, app: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(is_live)
        .collect()
}

/// The extremes a rollout reached, seen through a pod watch.
#[derive(Debug, Default, Clone)]
struct Extremes {
    most_live: usize,
    fewest_ready: Option<usize>,
    events: usize,
}

/// Watches the pods of `app` and records, after every event, how many are live and how many
/// of those are Ready.
fn watch_rollout(pods: Api<Pod>, app: &str) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Extremes>>) {
    let extremes = Arc::new(Mutex::new(Extremes::default()));
    let shared = extremes.clone();
    let config = watcher::Config::default().labels(&format!("app={app}"));
    let task = tokio::spawn(async move {
        let mut known: BTreeMap<String, Pod> = BTreeMap::new();
        let mut listing: BTreeMap<String, Pod> = BTreeMap::new();
        let mut stream = std::pin::pin!(watcher(pods, config));
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => {
                    listing.clear();
                    continue;
                }
                Ok(watcher::Event::InitApply(pod)) => {
                    listing.insert(pod.uid().unwrap_or_default(), pod);
                    continue;
                }
                Ok(watcher::Event::InitDone) => known = std::mem::take(&mut listing),
                Ok(watcher::Event::Apply(pod)) => {
                    known.insert(pod.uid().unwrap_or_default(), pod);
                }
                Ok(watcher::Event::Delete(pod)) => {
                    known.remove(&pod.uid().unwrap_or_default());
                }
                Err(_) => continue,
            }
            let live: Vec<&Pod> = known.values().filter(|p| is_live(p)).collect();
            let ready_now = live.iter().filter(|p| ready(p)).count();
            let mut extremes = shared.lock().unwrap();
            extremes.events += 1;
            extremes.most_live = extremes.most_live.max(live.len());
            extremes.fewest_ready = Some(
                extremes
                    .fewest_ready
                    .map_or(ready_now, |f| f.min(ready_now)),
            );
        }
    });
    (task, extremes)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_becomes_available_rollout_status_finishes_and_deleted_pods_are_replaced() {
    let bed = Bed::without_relaunch(2).await;
    bed.apply("deploy.yaml", DEPLOYMENT).await;

    assert_rolled_out(&bed, "deployment/web", "120s").await;
    let table = bed.kubectl(&["get", "deployment", "web"]).await.unwrap();
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..4], ["web", "3/3", "3", "3"], "{table}");

    let pods = bed.pods();
    let sets = bed.api::<ReplicaSet>();
    let set = sets.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(set.len(), 1);
    let set = &set[0];
    let hash = set.labels()["pod-template-hash"].clone();
    assert_eq!(set.name_any(), format!("web-{hash}"));
    assert_eq!(set.owner_references()[0].kind, "Deployment");
    let running = live_pods(&pods, "web").await;
    assert_eq!(running.len(), 3);
    for pod in &running {
        assert!(ready(pod), "{:?}", pod.status);
        assert!(pod.name_any().starts_with(&format!("web-{hash}-")));
        assert_eq!(pod.labels()["pod-template-hash"], hash);
        assert_eq!(pod.owner_references()[0].uid, set.uid().unwrap());
    }
    let deployment = bed.api::<Deployment>().get("web").await.unwrap();
    let conditions = deployment.status.unwrap().conditions.unwrap();
    let reason = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t)
            .and_then(|c| c.reason.clone())
    };
    assert_eq!(
        reason("Available").as_deref(),
        Some("MinimumReplicasAvailable")
    );
    assert_eq!(
        reason("Progressing").as_deref(),
        Some("NewReplicaSetAvailable")
    );

    let victim = running[0].name_any();
    bed.kubectl(&["delete", "pod", &victim, "--wait=false"])
        .await
        .unwrap();
    let replacement = eventually("a replacement pod, Ready", WAIT, || async {
        let live = live_pods(&pods, "web").await;
        let names: Vec<String> = live.iter().map(|p| p.name_any()).collect();
        (live.len() == 3 && !names.contains(&victim) && live.iter().all(ready)).then_some(names)
    })
    .await
    .unwrap();
    assert!(
        replacement
            .iter()
            .all(|n| n.starts_with(&format!("web-{hash}-")))
    );
    assert_rolled_out(&bed, "deployment/web", "60s").await;
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn template_changes_roll_through_a_new_replica_set_within_max_surge_and_max_unavailable() {
    let bed = Bed::without_relaunch(2).await;
    bed.apply("deploy.yaml", DEPLOYMENT).await;
    bed.kubectl(&["rollout", "status", "deployment/web", "--timeout=120s"])
        .await
        .unwrap();

    let pods = bed.pods();
    let sets = bed.api::<ReplicaSet>();
    let (monitor, extremes) = watch_rollout(pods.clone(), "web");
    eventually("the monitor to see the three Ready pods", WAIT, || async {
        let seen = extremes.lock().unwrap().clone();
        (seen.events > 0 && seen.fewest_ready == Some(3)).then_some(())
    })
    .await
    .unwrap();

    // The default strategy on 3 replicas: maxSurge 25% → 1, maxUnavailable 25% → 0.
    bed.kubectl(&["set", "env", "deployment/web", "ROUND=2"])
        .await
        .unwrap();
    assert_rolled_out(&bed, "deployment/web", "180s").await;
    let after_change = extremes.lock().unwrap().clone();
    assert_eq!(
        after_change.most_live, 4,
        "one pod of surge used, never more: {after_change:?}"
    );
    assert_eq!(
        after_change.fewest_ready,
        Some(3),
        "never fewer than 3 Ready: {after_change:?}"
    );

    let mut all: Vec<ReplicaSet> = sets.list(&ListParams::default()).await.unwrap().items;
    all.sort_by_key(|s| {
        s.annotations()
            .get("deployment.kubernetes.io/revision")
            .cloned()
    });
    let sizes: Vec<(String, i32)> = all
        .iter()
        .map(|s| {
            (
                s.annotations()["deployment.kubernetes.io/revision"].clone(),
                s.spec.as_ref().unwrap().replicas.unwrap(),
            )
        })
        .collect();
    assert_eq!(sizes, [("1".to_string(), 0), ("2".to_string(), 3)]);
    let new_hash = all[1].labels()["pod-template-hash"].clone();
    let live = live_pods(&pods, "web").await;
    assert!(
        live.iter()
            .all(|p| p.labels()["pod-template-hash"] == new_hash)
    );

    // `kubectl rollout restart` patches the template's restartedAt annotation: another rollout.
    bed.kubectl(&["rollout", "restart", "deployment/web"])
        .await
        .unwrap();
    assert_rolled_out(&bed, "deployment/web", "180s").await;
    monitor.abort();
    let overall = extremes.lock().unwrap().clone();
    assert_eq!(overall.most_live, 4, "{overall:?}");
    assert_eq!(overall.fewest_ready, Some(3), "{overall:?}");
    let history = bed
        .kubectl(&["rollout", "history", "deployment/web"])
        .await
        .unwrap();
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["1", "2", "3"], "{history}");
    let live = live_pods(&pods, "web").await;
    let described: Vec<(String, bool, bool)> = live
        .iter()
        .map(|p| {
            let restarted = p
                .annotations()
                .contains_key("kubectl.kubernetes.io/restartedAt");
            (p.name_any(), restarted, ready(p))
        })
        .collect();
    assert_eq!(live.len(), 3, "{described:?}");
    assert!(
        described
            .iter()
            .all(|(_, restarted, ready)| *restarted && *ready),
        "{described:?}"
    );

    // `kubectl rollout undo` brings revision 2's template back: its ReplicaSet, as revision 4.
    bed.kubectl(&["rollout", "undo", "deployment/web"])
        .await
        .unwrap();
    assert_rolled_out(&bed, "deployment/web", "180s").await;
    let undone = sets.get(&all[1].name_any()).await.unwrap();
    assert_eq!(
        undone.annotations()["deployment.kubernetes.io/revision"],
        "4"
    );
    assert_eq!(undone.spec.as_ref().unwrap().replicas, Some(3));

    // Paused, a template change does not roll; resumed, it does.
    bed.kubectl(&["rollout", "pause", "deployment/web"])
        .await
        .unwrap();
    let deployments = bed.api::<Deployment>();
    let progressing = |d: &Deployment| {
        d.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Progressing")?
            .reason
            .clone()
    };
    eventually("Progressing to say DeploymentPaused", WAIT, || async {
        let d = deployments.get("web").await.ok()?;
        (progressing(&d).as_deref() == Some("DeploymentPaused")).then_some(())
    })
    .await
    .unwrap();
    bed.kubectl(&["set", "env", "deployment/web", "ROUND=3"])
        .await
        .unwrap();
    eventually("the paused change to be observed", WAIT, || async {
        let d = deployments.get("web").await.ok()?;
        let observed = d.status.as_ref()?.observed_generation?;
        (observed >= d.metadata.generation?).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        sets.list(&ListParams::default()).await.unwrap().items.len(),
        3
    );
    bed.kubectl(&["rollout", "resume", "deployment/web"])
        .await
        .unwrap();
    assert_rolled_out(&bed, "deployment/web", "180s").await;
    assert_eq!(
        sets.list(&ListParams::default()).await.unwrap().items.len(),
        4
    );
    bed.shutdown().await;
}

const DAEMONSET: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: NAME}
spec:
  selector: {matchLabels: {app: NAME}}
  template:
    metadata: {labels: {app: NAME}}
    spec:
      terminationGracePeriodSeconds: 5
      TOLERATIONS
      containers:
      - name: agent
        image: relaunch.test/busybox:1
        command: ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
"#;

fn daemon_set(name: &str, tolerations: &str) -> String {
    DAEMONSET
        .replace("NAME", name)
        .replace("TOLERATIONS", tolerations)
}

/// Node name → the live pods of `app` on it, once every one is Ready.
async fn ready_per_node(pods: &Api<Pod>, app: &str) -> Option<BTreeMap<String, Vec<String>>> {
    let live = live_pods(pods, app).await;
    if !live.iter().all(ready) {
        return None;
    }
    let mut per_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pod in live {
        let node = pod.spec.as_ref()?.node_name.clone()?;
        per_node.entry(node).or_default().push(pod.name_any());
    }
    Some(per_node)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_set_runs_one_ready_pod_per_schedulable_node_and_replaces_deleted_ones() {
    let bed = Bed::without_relaunch(3).await;
    // node-2 is cordoned (daemon pods tolerate that, as upstream), node-3 is tainted.
    bed.kubectl(&["cordon", "node-2"]).await.unwrap();
    bed.kubectl(&["taint", "nodes", "node-3", "dedicated=infra:NoSchedule"])
        .await
        .unwrap();
    bed.apply("agent.yaml", &daemon_set("agent", "")).await;
    let tolerating = "tolerations: [{key: dedicated, operator: Exists, effect: NoSchedule}]";
    bed.apply("tolerant.yaml", &daemon_set("tolerant", tolerating))
        .await;

    for name in ["ds/agent", "ds/tolerant"] {
        assert_rolled_out(&bed, name, "120s").await;
    }
    let pods = bed.pods();
    let expect = |nodes: &[&str]| -> Vec<String> { nodes.iter().map(|n| n.to_string()).collect() };
    let agent = eventually("agent pods Ready", WAIT, || ready_per_node(&pods, "agent"))
        .await
        .unwrap();
    assert_eq!(
        agent.keys().cloned().collect::<Vec<_>>(),
        expect(&["node-1", "node-2"])
    );
    assert!(agent.values().all(|p| p.len() == 1), "{agent:?}");
    let tolerant = eventually("tolerant pods Ready", WAIT, || async {
        ready_per_node(&pods, "tolerant")
            .await
            .filter(|m| m.len() == 3)
    })
    .await
    .unwrap();
    assert!(tolerant.values().all(|p| p.len() == 1), "{tolerant:?}");

    let sets = bed.api::<DaemonSet>();
    let status = sets.get("agent").await.unwrap().status.unwrap();
    assert_eq!(
        (
            status.desired_number_scheduled,
            status.current_number_scheduled,
            status.number_ready,
            status.number_available,
            status.updated_number_scheduled,
            status.number_misscheduled,
        ),
        (2, 2, 2, Some(2), Some(2), 0)
    );
    let table = bed.kubectl(&["get", "ds", "agent"]).await.unwrap();
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..6], ["agent", "2", "2", "2", "2", "2"], "{table}");

    // A deleted daemon pod comes back on the same node.
    let victim = agent["node-1"][0].clone();
    bed.kubectl(&["delete", "pod", &victim, "--wait=false"])
        .await
        .unwrap();
    let after = eventually("agent pod replaced on node-1", WAIT, || async {
        ready_per_node(&pods, "agent").await.filter(|m| {
            m.get("node-1")
                .is_some_and(|p| p.len() == 1 && p[0] != victim)
        })
    })
    .await
    .unwrap();
    assert_eq!(
        after.keys().cloned().collect::<Vec<_>>(),
        expect(&["node-1", "node-2"])
    );

    // A template change rolls node by node (maxUnavailable 1) to pods of the new revision.
    let old_hash =
        pods.get(&after["node-1"][0]).await.unwrap().labels()["controller-revision-hash"].clone();
    bed.kubectl(&["set", "env", "ds/agent", "ROUND=2"])
        .await
        .unwrap();
    assert_rolled_out(&bed, "ds/agent", "180s").await;
    let rolled = eventually("agent pods of the new revision", WAIT, || async {
        let live = live_pods(&pods, "agent").await;
        (live.len() == 2
            && live
                .iter()
                .all(|p| ready(p) && p.labels()["controller-revision-hash"] != old_hash))
        .then_some(live)
    })
    .await
    .unwrap();
    assert_eq!(rolled.len(), 2);
    bed.shutdown().await;
}
