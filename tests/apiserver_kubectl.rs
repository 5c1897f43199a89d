//! The preinstalled `kubectl` against the test API server.

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::process::{Command, Output};
use std::time::Duration;

use support::TestApi;

/// kubectl against the test API server alone.
struct Kubectl {
    api: TestApi,
}

impl Kubectl {
    async fn start() -> Self {
        Self {
            api: TestApi::start().await,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        support::kubectl(&self.api.kubeconfig(), self.api.dir(), args)
    }

    async fn run(&self, args: &[&str]) -> Output {
        support::output(self.command(args)).await
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            support::printed(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.api.dir().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        path.to_string_lossy().into_owned()
    }
}

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: app
    image: relaunch.test/busybox:1
    command: ["sleep", "100000"]
"#;

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.dev
spec:
  group: example.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Phase, type: string, jsonPath: .status.phase}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

#[tokio::test]
async fn kubectl_works_on_pods() {
    let k = Kubectl::start().await;
    let pod = k.file("pod.yaml", POD);
    k.ok(&["create", "-f", &pod]).await;
    let table = k.ok(&["get", "pods"]).await;
    assert!(
        table.contains("web") && table.contains("Pending"),
        "{table}"
    );
    let json = k.ok(&["get", "pod", "web", "-o", "json"]).await;
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["metadata"]["labels"]["app"], "web");
    assert_eq!(parsed["spec"]["restartPolicy"], "Always");

    k.ok(&[
        "patch",
        "pod",
        "web",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"labels":{"tier":"front"}}}"#,
    ])
    .await;
    let labels = k
        .ok(&[
            "get",
            "pod",
            "web",
            "-o",
            "jsonpath={.metadata.labels.tier}",
        ])
        .await;
    assert_eq!(labels, "front");

    k.ok(&[
        "patch",
        "pod",
        "web",
        "--subresource",
        "status",
        "--type",
        "merge",
        "-p",
        r#"{"status":{"phase":"Running"}}"#,
    ])
    .await;
    let phase = k
        .ok(&["get", "pod", "web", "-o", "jsonpath={.status.phase}"])
        .await;
    assert_eq!(phase, "Running");

    let applied = POD.replace("labels: {app: web}", "labels: {app: web, applied: \"yes\"}");
    let path = k.file("pod2.yaml", &applied);
    k.ok(&["apply", "-f", &path]).await;
    let labels = k
        .ok(&[
            "get",
            "pod",
            "web",
            "-o",
            "jsonpath={.metadata.labels.applied}",
        ])
        .await;
    assert_eq!(labels, "yes");

    k.ok(&["delete", "pod", "web"]).await;
    let out = k.run(&["get", "pod", "web"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

#[tokio::test]
async fn kubectl_apply_creates_then_updates_and_lists_api_resources() {
    let k = Kubectl::start().await;
    let path = k.file(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: \"1\"}\n",
    );
    let out = k.ok(&["apply", "-f", &path]).await;
    assert!(out.contains("created"), "{out}");
    let path = k.file(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: \"2\"}\n",
    );
    let out = k.ok(&["apply", "-f", &path]).await;
    assert!(out.contains("configured"), "{out}");
    assert_eq!(
        k.ok(&["get", "cm", "settings", "-o", "jsonpath={.data.a}"])
            .await,
        "2"
    );
    let resources = k.ok(&["api-resources"]).await;
    for expected in [
        "pods",
        "statefulsets",
        "poddisruptionbudgets",
        "leases",
        "tokenreviews",
        "customresourcedefinitions",
    ] {
        assert!(
            resources.contains(expected),
            "{expected} missing from:\n{resources}"
        );
    }
}

#[tokio::test]
async fn kubectl_works_on_custom_resources() {
    let k = Kubectl::start().await;
    let crd = k.file("crd.yaml", CRD);
    k.ok(&["create", "-f", &crd]).await;
    let widget = k.file(
        "w.yaml",
        "apiVersion: example.dev/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n",
    );
    k.ok(&["create", "-f", &widget]).await;
    k.ok(&[
        "patch",
        "widget",
        "w1",
        "--subresource",
        "status",
        "--type",
        "merge",
        "-p",
        r#"{"status":{"phase":"Ready"}}"#,
    ])
    .await;
    let table = k.ok(&["get", "wd"]).await;
    assert!(
        table.contains("PHASE") && table.contains("Ready"),
        "{table}"
    );
    let size = k
        .ok(&["get", "widget", "w1", "-o", "jsonpath={.spec.size}"])
        .await;
    assert_eq!(size, "3");
    let resources = k.ok(&["api-resources", "--api-group", "example.dev"]).await;
    assert!(resources.contains("widgets"), "{resources}");
    k.ok(&["delete", "widget", "w1"]).await;
}

#[tokio::test]
async fn kubectl_get_watch_receives_events() {
    let k = Kubectl::start().await;
    let pod = k.file("pod.yaml", POD);
    k.ok(&["create", "-f", &pod]).await;
    let mut watch = k
        .command(&[
            "get",
            "pods",
            "-w",
            "--output-watch-events",
            "--request-timeout",
            "20s",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = watch.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.contains("MODIFIED") {
                break;
            }
        }
        seen
    });
    // Modify until the watcher has seen it (it may connect after the first change).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    while !reader.is_finished() && std::time::Instant::now() < deadline {
        n += 1;
        k.ok(&["label", "pod", "web", &format!("n={n}"), "--overwrite"])
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = watch.kill();
    let _ = watch.wait();
    let seen = reader.join().unwrap();
    assert!(seen.contains("MODIFIED") && seen.contains("web"), "{seen}");
    drop(k);
}
