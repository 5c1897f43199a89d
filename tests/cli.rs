//! kubectl-relaunch through the real `kubectl` (as a plugin found on PATH): user errors and
//! tables against the in-process test API server, and `restart --wait` / `rollout --wait`
//! against the full sandbox (real containerd, simulated kubelets, relaunch-agent and
//! relaunch-coordinator as real processes; needs root).

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use relaunch_api::{
    ContainerRecreateRequest, LABEL_NODE_NAME, LABEL_POD_UID, RollingRestart, RolloutPhase,
};
use relaunch_testbed::{API_AUDIENCE, TEST_IMAGE};
use serde_json::{Value, json};
use support::{Bed, TestApi, binaries, container_status, database_pod_spec, eventually};

/// What one `kubectl relaunch ...` did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn succeeded(&self) -> &str {
        assert_eq!(self.code, Some(0), "expected success: {self:#?}");
        &self.stdout
    }

    /// Failed with one line on stderr that contains `text`.
    fn failed_with(&self, text: &str) {
        assert!(
            self.code.is_some_and(|c| c != 0),
            "expected failure: {self:#?}"
        );
        let line = self.stderr.trim_end();
        assert_eq!(line.lines().count(), 1, "one line on stderr: {self:#?}");
        assert!(
            line.starts_with("error: ") && line.contains(text),
            "stderr should say {text:?}: {self:#?}"
        );
    }
}

/// Runs `kubectl relaunch <args>` with the plugin's directory first on PATH.
async fn kubectl_relaunch(kubeconfig: &Path, home: &Path, args: &[&str]) -> Run {
    let plugin = binaries().kubectl_relaunch;
    let path = format!(
        "{}:{}",
        plugin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = support::kubectl(kubeconfig, home, &["relaunch"]);
    command.args(args).env("PATH", path);
    let output = support::output(command).await;
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The test API server alone, for what the plugin says without running pods: a [`TestApi`]
/// with the objects these tests need.
struct Cluster(TestApi);

impl std::ops::Deref for Cluster {
    type Target = TestApi;

    fn deref(&self) -> &TestApi {
        &self.0
    }
}

impl Cluster {
    /// Starts the server; with `relaunch_installed`, registers relaunch's CRDs.
    async fn start(relaunch_installed: bool) -> Self {
        Self(if relaunch_installed {
            TestApi::with_relaunch_crds().await
        } else {
            TestApi::start().await
        })
    }

    async fn run(&self, args: &[&str]) -> Run {
        kubectl_relaunch(&self.kubeconfig(), self.dir(), args).await
    }

    /// A pod with one container `app`, bound to `node` and Running (as a kubelet would report).
    async fn pod(&self, namespace: &str, name: &str, node: Option<&str>) -> Pod {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [
                {"name": "app", "image": TEST_IMAGE, "command": ["sleep", "100000"]},
            ]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        if node.is_some() {
            let status = json!({"status": {"phase": "Running"}});
            pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .unwrap();
        }
        pods.get(name).await.unwrap()
    }

    async fn namespace(&self, name: &str) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }

    async fn statefulset(&self, name: &str) {
        let sets: Api<StatefulSet> = Api::default_namespaced(self.client.clone());
        let set: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "replicas": 2, "serviceName": name,
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [
                    {"name": "db", "image": TEST_IMAGE},
                    {"name": "exporter", "image": TEST_IMAGE},
                ]}},
            },
        }))
        .unwrap();
        sets.create(&PostParams::default(), &set).await.unwrap();
    }

    fn requests(&self, namespace: &str) -> Api<ContainerRecreateRequest> {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn rollouts(&self, namespace: &str) -> Api<RollingRestart> {
        Api::namespaced(self.client.clone(), namespace)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_without_wait_creates_a_request_labelled_for_the_agent() {
    let api = Cluster::start(true).await;
    let pod = api.pod("default", "web", Some("node-1")).await;
    let run = api
        .run(&[
            "restart",
            "pod/web",
            "--shutdown-exec",
            "kill -TERM 1",
            "--grace",
            "45s",
        ])
        .await;
    let out = run.succeeded();
    let name = out
        .trim()
        .strip_prefix("containerrecreaterequest.relaunch.dev/")
        .and_then(|rest| rest.strip_suffix(" created"))
        .unwrap_or_else(|| panic!("unexpected output {out:?}"));
    assert!(name.starts_with("web-"), "{name}");

    let request = api.requests("default").get(name).await.unwrap();
    let labels = request.metadata.labels.clone().unwrap();
    assert_eq!(labels[LABEL_NODE_NAME], "node-1");
    assert_eq!(&labels[LABEL_POD_UID], pod.metadata.uid.as_ref().unwrap());
    assert_eq!(request.spec.pod_name, "web");
    assert_eq!(request.spec.containers.len(), 1);
    let container = &request.spec.containers[0];
    assert_eq!(container.name, "app");
    let command = &container
        .shutdown
        .as_ref()
        .unwrap()
        .exec
        .as_ref()
        .unwrap()
        .command;
    assert_eq!(command, &["sh", "-c", "kill -TERM 1"]);
    let strategy = request.spec.strategy.unwrap();
    assert_eq!(strategy.termination_grace_period_seconds, Some(45));
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_refuses_a_missing_pod_an_unknown_container_and_the_wrong_namespace() {
    let api = Cluster::start(true).await;
    api.namespace("other").await;
    api.pod("default", "web", Some("node-1")).await;
    api.pod("default", "idle", None).await;

    api.run(&["restart", "pod/nope"])
        .await
        .failed_with("pod nope not found in namespace default");
    api.run(&["restart", "pod/web", "-c", "app", "-c", "sidecar"])
        .await
        .failed_with("pod web has no container sidecar (its containers: app)");
    api.run(&["restart", "pod/web", "-n", "other"])
        .await
        .failed_with("pod web not found in namespace other");
    api.run(&["restart", "pod/idle"])
        .await
        .failed_with("pod idle is not scheduled to a node yet");
    api.run(&["restart", "sts/web"])
        .await
        .failed_with("kubectl relaunch rollout sts/web");
    let usage = api.run(&["restart", "pod/web", "--grace", "soon"]).await;
    assert_eq!(usage.code, Some(2), "a usage error: {usage:#?}");
    assert!(
        usage.stderr.starts_with("error: ") && usage.stderr.contains("\"soon\" is not a duration"),
        "{usage:#?}"
    );

    for ns in ["default", "other"] {
        let created = api.requests(ns).list(&ListParams::default()).await.unwrap();
        assert!(created.items.is_empty(), "nothing created in {ns}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_relaunch_installed_commands_say_how_to_install_it() {
    let api = Cluster::start(false).await;
    api.pod("default", "web", Some("node-1")).await;
    let expected = "relaunch is not installed in this cluster: the CRD containerrecreaterequests.relaunch.dev was not found; install with kubectl apply -k manifests/base";
    api.run(&["restart", "pod/web"]).await.failed_with(expected);
    api.run(&["status"]).await.failed_with(
        "relaunch is not installed in this cluster: the CRD rollingrestarts.relaunch.dev was not found",
    );
    api.run(&["pause", "db-restart"])
        .await
        .failed_with("relaunch is not installed in this cluster");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_user_is_told_what_they_may_not_do() {
    let api = Cluster::start(true).await;
    api.pod("default", "web", Some("node-1")).await;
    let accounts: Api<ServiceAccount> = Api::default_namespaced(api.client.clone());
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "viewer"}})).unwrap();
    accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    // What a read-only user of relaunch is granted: reading pods and relaunch's objects.
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "relaunch-viewer"},
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["relaunch.dev"], "resources": ["containerrecreaterequests", "rollingrestarts"],
             "verbs": ["get", "list", "watch"]},
        ],
    }))
    .unwrap();
    Api::<Role>::default_namespaced(api.client.clone())
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "relaunch-viewer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "relaunch-viewer"},
        "subjects": [{"kind": "ServiceAccount", "name": "viewer"}],
    }))
    .unwrap();
    Api::<RoleBinding>::default_namespaced(api.client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let token = support::token(&api.client, "default", "viewer", API_AUDIENCE, None).await;
    let kubeconfig = api.dir().join("viewer-kubeconfig");
    std::fs::write(&kubeconfig, api.server.kubeconfig(Some(&token))).unwrap();

    kubectl_relaunch(&kubeconfig, api.dir(), &["restart", "pod/web"])
        .await
        .failed_with(
            "you are not allowed to create containerrecreaterequests in namespace default",
        );
    let run = kubectl_relaunch(&kubeconfig, api.dir(), &["status"]).await;
    assert_eq!(run.code, Some(0), "reading is allowed: {run:#?}");
}

/// A user who may create requests but not exec into the pod: relaunch's admission policy
/// refuses a `--shutdown-exec` restart, and the plugin prints the policy's message on one line.
#[tokio::test(flavor = "multi_thread")]
async fn an_exec_restart_refused_by_the_admission_policy_is_one_clear_line() {
    let api = Cluster::start(true).await;
    api.pod("default", "web", Some("node-1")).await;
    let policy = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/manifests/base/admission-policy.yaml"
    );
    let out = support::output(support::kubectl(
        &api.kubeconfig(),
        api.dir(),
        &["apply", "-f", policy],
    ))
    .await;
    assert!(out.status.success(), "{}", support::printed(&out));
    let accounts: Api<ServiceAccount> = Api::default_namespaced(api.client.clone());
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "restarter"}})).unwrap();
    accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "restarter"},
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["relaunch.dev"], "resources": ["containerrecreaterequests"],
             "verbs": ["get", "list", "watch", "create"]},
        ],
    }))
    .unwrap();
    Api::<Role>::default_namespaced(api.client.clone())
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "restarter"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "restarter"},
        "subjects": [{"kind": "ServiceAccount", "name": "restarter"}],
    }))
    .unwrap();
    Api::<RoleBinding>::default_namespaced(api.client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let token = support::token(&api.client, "default", "restarter", API_AUDIENCE, None).await;
    let kubeconfig = api.dir().join("restarter-kubeconfig");
    std::fs::write(&kubeconfig, api.server.kubeconfig(Some(&token))).unwrap();

    let run = kubectl_relaunch(
        &kubeconfig,
        api.dir(),
        &["restart", "pod/web", "--shutdown-exec", "app stop"],
    )
    .await;
    run.failed_with(
        "system:serviceaccount:default:restarter may not create pods/exec on pod default/web, which a shutdown exec action needs",
    );
    assert!(
        run.stderr
            .contains("(ValidatingAdmissionPolicy relaunch-request-exec-needs-pods-exec)"),
        "{run:#?}"
    );
    assert!(!run.stderr.contains("you are not allowed"), "{run:#?}");
    kubectl_relaunch(&kubeconfig, api.dir(), &["restart", "pod/web"])
        .await
        .succeeded();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_api_server_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = dir.path().join("kubeconfig");
    let url = format!("http://127.0.0.1:{port}");
    std::fs::write(&kubeconfig, relaunch_testbed::kubeconfig(&url, None)).unwrap();
    let unused = dir.path().join("not-this-one");
    let kubeconfig_flag = kubeconfig.to_string_lossy().into_owned();
    kubectl_relaunch(
        &unused,
        dir.path(),
        &["status", "--kubeconfig", &kubeconfig_flag],
    )
    .await
    .failed_with(&format!("cannot reach the Kubernetes API server at {url}"));
}

/// Creates a RollingRestart and a ContainerRecreateRequest with statuses, as the coordinator
/// would have written them.
async fn rollout_and_request(api: &Cluster, namespace: &str, suffix: &str) {
    let rollout: RollingRestart = serde_json::from_value(json!({
        "apiVersion": "relaunch.dev/v1alpha1", "kind": "RollingRestart",
        "metadata": {"name": format!("db-restart-{suffix}")},
        "spec": {"target": {"workloadRef": {"kind": "StatefulSet", "name": "db"}}},
    }))
    .unwrap();
    let rollouts = api.rollouts(namespace);
    rollouts
        .create(&PostParams::default(), &rollout)
        .await
        .unwrap();
    let status = json!({"status": {"phase": "Progressing", "target": "StatefulSet/db",
        "total": 3, "restarted": 1, "batches": 2, "currentBatch": ["db-1"],
        "message": "waiting for db-1 to be ready"}});
    rollouts
        .patch_status(
            &format!("db-restart-{suffix}"),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .unwrap();
    let request: ContainerRecreateRequest = serde_json::from_value(json!({
        "apiVersion": "relaunch.dev/v1alpha1", "kind": "ContainerRecreateRequest",
        "metadata": {"name": format!("db-0-{suffix}"), "labels": {LABEL_NODE_NAME: "node-1"}},
        "spec": {"podName": "db-0", "containers": [{"name": "db"}]},
    }))
    .unwrap();
    let requests = api.requests(namespace);
    requests
        .create(&PostParams::default(), &request)
        .await
        .unwrap();
    let status = json!({"status": {"phase": "Succeeded", "containerRecreateStates": [
        {"name": "db", "phase": "Succeeded", "restartCount": 2,
         "previousContainerId": "containerd://aaaaaaaaaaaaaaaaaaaa",
         "newContainerId": "containerd://bbbbbbbbbbbbbbbbbbbb"}]}});
    requests
        .patch_status(
            &format!("db-0-{suffix}"),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .unwrap();
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_prints_tables_json_yaml_and_one_object() {
    let api = Cluster::start(true).await;
    api.namespace("data").await;
    rollout_and_request(&api, "default", "a").await;
    rollout_and_request(&api, "data", "b").await;

    let table = api.run(&["status"]).await;
    let lines: Vec<&str> = table.succeeded().lines().collect();
    assert_eq!(
        words(lines[0]),
        ["NAME", "PHASE", "TARGET", "RESTARTED", "TOTAL", "AGE"],
        "{lines:#?}"
    );
    assert_eq!(
        words(lines[1])[..5],
        [
            "rollingrestart.relaunch.dev/db-restart-a",
            "Progressing",
            "StatefulSet/db",
            "1",
            "3"
        ]
    );
    assert_eq!(lines[2], "");
    assert_eq!(words(lines[3]), ["NAME", "PHASE", "POD", "NODE", "AGE"]);
    assert_eq!(
        words(lines[4])[..4],
        [
            "containerrecreaterequest.relaunch.dev/db-0-a",
            "Succeeded",
            "db-0",
            "node-1"
        ]
    );
    assert_eq!(lines.len(), 5, "only the default namespace: {lines:#?}");

    let everywhere = api.run(&["status", "-A"]).await;
    let text = everywhere.succeeded();
    assert!(text.starts_with("NAMESPACE "), "{text}");
    for expected in ["db-restart-a", "db-restart-b", "db-0-a", "db-0-b", "data "] {
        assert!(text.contains(expected), "{expected} in {text}");
    }

    let json = api.run(&["status", "-n", "data", "-o", "json"]).await;
    let list: Value = serde_json::from_str(json.succeeded()).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["apiVersion"], "v1");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{list}");
    assert_eq!(items[0]["kind"], "RollingRestart");
    assert_eq!(items[0]["apiVersion"], "relaunch.dev/v1alpha1");
    assert_eq!(items[0]["metadata"]["name"], "db-restart-b");
    assert_eq!(items[1]["kind"], "ContainerRecreateRequest");
    assert_eq!(items[1]["status"]["phase"], "Succeeded");

    let yaml = api.run(&["status", "-o", "yaml"]).await;
    let list: Value = serde_yaml::from_str(yaml.succeeded()).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);

    let one = api.run(&["status", "db-restart-a"]).await;
    let text = one.succeeded();
    for expected in [
        "Name:",
        "db-restart-a",
        "Target:",
        "StatefulSet/db",
        "Progressing",
        "1/3 restarted",
        "current: db-1",
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
    let request = api.run(&["status", "crr/db-0-a"]).await;
    let text = request.succeeded();
    for expected in [
        "Pod:",
        "db-0",
        "node-1",
        "Succeeded",
        "aaaaaaaaaaaaa",
        "bbbbbbbbbbbbb",
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
    let by_name = api.run(&["status", "db-0-a", "-o", "json"]).await;
    let object: Value = serde_json::from_str(by_name.succeeded()).unwrap();
    assert_eq!(object["kind"], "ContainerRecreateRequest");

    api.run(&["status", "nope"])
        .await
        .failed_with("no rollingrestart or containerrecreaterequest nope in namespace default");
    api.run(&["status", "rr/db-0-a"])
        .await
        .failed_with("rollingrestart db-0-a not found in namespace default");

    // The context's namespace is the default, as with kubectl.
    let url = api.server.url();
    let contexts = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: bed
  cluster: {{server: {url}}}
contexts:
- name: main
  context: {{cluster: bed, user: admin}}
- name: data
  context: {{cluster: bed, user: admin, namespace: data}}
current-context: main
users:
- name: admin
  user: {{}}
"
    );
    let kubeconfig = api.dir().join("contexts");
    std::fs::write(&kubeconfig, contexts).unwrap();
    let run = kubectl_relaunch(&kubeconfig, api.dir(), &["status", "--context", "data"]).await;
    let text = run.succeeded();
    assert!(
        text.contains("db-restart-b") && !text.contains("db-restart-a"),
        "{text}"
    );
    let run = kubectl_relaunch(&kubeconfig, api.dir(), &["status"]).await;
    assert!(run.succeeded().contains("db-restart-a"));
    kubectl_relaunch(&kubeconfig, api.dir(), &["status", "--context", "nope"])
        .await
        .failed_with("nope");
}

#[tokio::test(flavor = "multi_thread")]
async fn rollout_refuses_missing_workloads_and_bad_flags() {
    let api = Cluster::start(true).await;
    api.statefulset("db").await;
    for (args, says) in [
        (
            vec!["rollout", "sts/nope"],
            "statefulset nope not found in namespace default",
        ),
        (
            vec!["rollout", "deploy/db"],
            "deployment db not found in namespace default",
        ),
        (vec!["rollout", "job/db"], "use sts, deploy, ds or rs"),
        (
            vec!["rollout", "sts/db", "--order", "sideways"],
            "--order \"sideways\": use ordinal",
        ),
        (
            vec!["rollout", "sts/db", "--order", "role=role"],
            "name values to go first and/or last",
        ),
        (
            vec!["rollout", "sts/db", "--max-unavailable", "0"],
            "--max-unavailable \"0\"",
        ),
        (
            vec!["rollout", "sts/db", "--max-unavailable", "150%"],
            "between 1% and 100%",
        ),
        (
            vec!["rollout", "sts/db", "--containers", "db,web"],
            "the pods of statefulset db have no container web (their containers: db, exporter)",
        ),
    ] {
        api.run(&args).await.failed_with(says);
    }
    let created = api
        .rollouts("default")
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(created.items.is_empty(), "nothing created");
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_resume_and_abort_switch_the_rollout_spec() {
    let api = Cluster::start(true).await;
    api.statefulset("db").await;
    let run = api
        .run(&[
            "rollout",
            "statefulset/db",
            "--max-unavailable",
            "50%",
            "--order",
            "role=role:replica:primary,master",
            "--partition",
            "1",
            "--containers",
            "db",
        ])
        .await;
    let out = run.succeeded().trim().to_string();
    let name = out
        .strip_prefix("rollingrestart.relaunch.dev/")
        .and_then(|rest| rest.strip_suffix(" created"))
        .unwrap_or_else(|| panic!("unexpected output {out:?}"))
        .to_string();
    let rollouts = api.rollouts("default");
    let rollout = rollouts.get(&name).await.unwrap();
    let spec = serde_json::to_value(&rollout.spec).unwrap();
    assert_eq!(
        spec,
        json!({
            "target": {"workloadRef": {"kind": "StatefulSet", "name": "db"}},
            "containers": ["db"],
            "strategy": {
                "maxUnavailable": "50%",
                "partition": 1,
                "order": {"role": {"key": "role", "first": ["replica"], "last": ["primary", "master"]}},
            },
        })
    );

    api.run(&["rollout", "sts/db"]).await.failed_with(&format!(
        "rollingrestart {name} is still restarting statefulset db; wait for it to finish, or stop it first: kubectl relaunch abort {name} -n default"
    ));

    let paused = api.run(&["pause", &name]).await;
    assert!(paused.succeeded().contains(" paused"), "{paused:#?}");
    assert!(rollouts.get(&name).await.unwrap().spec.strategy.paused);
    api.run(&["pause", &name])
        .await
        .failed_with("is already paused");

    api.run(&["resume", &format!("rr/{name}")])
        .await
        .succeeded();
    assert!(!rollouts.get(&name).await.unwrap().spec.strategy.paused);
    api.run(&["resume", &name])
        .await
        .failed_with("is not paused");

    api.run(&["abort", &name]).await.succeeded();
    assert!(rollouts.get(&name).await.unwrap().spec.abort);

    api.run(&["pause", "nope"])
        .await
        .failed_with("rollingrestart nope not found in namespace default");
    api.run(&["abort", "crr/x"])
        .await
        .failed_with("abort applies to RollingRestarts");
}

/// Starts `kubectl relaunch <args>` in the background.
fn spawn_run(api: &Cluster, args: &[&str]) -> tokio::task::JoinHandle<Run> {
    let kubeconfig = api.kubeconfig();
    let home = api.dir().to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::spawn(async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kubectl_relaunch(&kubeconfig, &home, &args).await
    })
}

/// The name of the only object `list` finds, once there is one.
async fn only_name<K>(api: &Api<K>) -> String
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(
        "the object to be created",
        Duration::from_secs(30),
        || async {
            let list = api.list(&ListParams::default()).await.ok()?;
            list.items.first().and_then(|o| o.meta().name.clone())
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_ends_non_zero_on_failure_pause_and_timeout() {
    let api = Cluster::start(true).await;
    api.pod("default", "web", Some("node-1")).await;
    api.statefulset("db").await;

    let waiting = spawn_run(&api, &["restart", "pod/web", "--wait", "--timeout", "60s"]);
    let requests = api.requests("default");
    let name = only_name(&requests).await;
    let failed = json!({"status": {"phase": "Failed", "message": "container app: shutdown command exited 1",
        "containerRecreateStates": [{"name": "app", "phase": "Failed", "message": "shutdown command exited 1"}]}});
    requests
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&failed))
        .await
        .unwrap();
    let run = waiting.await.unwrap();
    run.failed_with(&format!(
        "containerrecreaterequest {name} failed: container app: shutdown command exited 1"
    ));
    assert!(
        run.stdout.contains("app  Failed") && run.stdout.contains("shutdown command exited 1"),
        "progress shows the failed container: {run:#?}"
    );

    let waiting = spawn_run(&api, &["rollout", "sts/db", "--wait", "--timeout", "60s"]);
    let rollouts = api.rollouts("default");
    let name = only_name(&rollouts).await;
    let paused = json!({"status": {"phase": "Paused", "total": 2, "failed": 1, "observedGeneration": 1,
        "message": "paused: 1 pod restarts failed; fix them, then set spec.strategy.paused to false"}});
    rollouts
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&paused))
        .await
        .unwrap();
    waiting.await.unwrap().failed_with(&format!(
        "rollingrestart {name} paused: 1 pod restarts failed; fix them, then set spec.strategy.paused to false; resume it with: kubectl relaunch resume {name} -n default"
    ));

    api.run(&["restart", "pod/web", "--wait", "--timeout", "1s"])
        .await
        .failed_with("timed out after 1.0s waiting for containerrecreaterequest web-");
}

// ---- Full sandbox: real containerd, kubelet simulators, agents and coordinator. ----

/// Runs `kubectl relaunch <args>` against the sandbox.
async fn run_in(bed: &Bed, args: &[&str]) -> Run {
    kubectl_relaunch(&bed.sandbox.kubeconfig_path(), bed.dir(), args).await
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_wait_restarts_the_container_in_place_and_exits_zero() {
    let bed = Bed::start(1).await;
    let before = bed.database_pod("db-0", "node-1").await;

    let run = run_in(
        &bed,
        &[
            "restart",
            "pod/db-0",
            "-c",
            "db",
            "--shutdown-exec",
            "touch /tmp/shutdown",
            "--grace",
            "30s",
            "--wait",
            "--timeout",
            "2m",
        ],
    )
    .await;
    let out = run.succeeded();
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("containerrecreaterequest.relaunch.dev/db-0-")
            && lines[0].ends_with(" created"),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("] db  ") && l.contains("Succeeded")),
        "a progress line per change: {out}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains("succeeded") && l.contains("db (restart count 1)")),
        "{out}"
    );

    let after = bed.pods().get("db-0").await.unwrap();
    assert_eq!(after.metadata.uid, before.metadata.uid, "same pod");
    let (old, new) = (
        container_status(&before, "db"),
        container_status(&after, "db"),
    );
    assert_eq!(new.restart_count, old.restart_count + 1, "restarted once");
    assert_ne!(new.container_id, old.container_id, "a new container");
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rollout_wait_restarts_a_statefulset_and_exits_zero() {
    let bed = Bed::start(1).await;
    let before = bed.statefulset("db", 2, database_pod_spec()).await;

    let run = run_in(
        &bed,
        &[
            "rollout",
            "sts/db",
            "--shutdown-exec",
            "touch /tmp/shutdown",
            "--wait",
            "--timeout",
            "3m",
        ],
    )
    .await;
    let out = run.succeeded();
    assert!(out.contains("2/2 restarted"), "progress bar: {out}");
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("rollingrestart.relaunch.dev/db-restart-") && last.contains("succeeded"),
        "{out}"
    );

    let all = bed
        .rollouts()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(all.len(), 1);
    let status = all[0].status.clone().unwrap();
    assert_eq!(status.phase, RolloutPhase::Succeeded);
    assert_eq!((status.total, status.restarted, status.failed), (2, 2, 0));
    bed.assert_each_restarted_once(&before).await;
    bed.shutdown().await;
}
