//! The preinstalled `kubectl` against the test API server.

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
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

impl Kubectl {
    /// kubectl against a test API server with relaunch's CRDs and its identities (namespace,
    /// service accounts and RBAC from manifests/base).
    async fn with_relaunch() -> Self {
        let api = TestApi::with_relaunch_crds().await;
        relaunch_testbed::install_identities(&api.server)
            .await
            .unwrap();
        Self { api }
    }

    /// Runs kubectl, expecting it to fail; what it printed.
    async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            !out.status.success(),
            "kubectl {args:?} succeeded: {}",
            support::printed(&out)
        );
        support::printed(&out)
    }

    /// Runs kubectl, expecting it to succeed; what it printed (stdout, then stderr).
    async fn succeeds(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            support::printed(&out)
        );
        support::printed(&out)
    }

    /// `kubectl auth can-i ARGS`: true for "yes" (exit 0), false for "no" (exit 1).
    async fn can_i(&self, args: &[&str]) -> bool {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        let out = self.run(&all).await;
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match out.status.code() {
            Some(0) if answer == "yes" => true,
            Some(1) if answer.starts_with("no") => false,
            _ => panic!("kubectl {all:?}: {}", support::printed(&out)),
        }
    }

    /// Service account `name` in `default`, allowed only to create `resource`s there (through a
    /// Role and a RoleBinding kubectl creates).
    async fn service_account_creating(&self, name: &str, resource: &str) {
        self.ok(&["create", "serviceaccount", name]).await;
        let role = format!("{resource}-creator");
        self.ok(&[
            "create",
            "role",
            &role,
            "--verb=create",
            &format!("--resource={resource}"),
        ])
        .await;
        self.ok(&[
            "create",
            "rolebinding",
            &format!("{name}-{role}"),
            &format!("--role={role}"),
            &format!("--serviceaccount=default:{name}"),
        ])
        .await;
    }
}

// kubectl sends no credentials over plain HTTP (client-go keeps tokens for TLS), so kubectl acts
// as a service account here by impersonating it (`--as`) as the administrator; clients that do
// send tokens over HTTP (kube-rs, Python) authenticate with the tokens `kubectl create token`
// issues.
const BOT: &str = "--as=system:serviceaccount:default:bot";

/// The rows of `kubectl auth can-i --list`: resource (empty for non-resource URLs) and verbs.
fn rules_table(printed: &str) -> Vec<(String, Vec<String>)> {
    printed
        .lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let resource = match line.split_whitespace().next() {
                Some(first) if !first.starts_with('[') => first.to_string(),
                _ => String::new(),
            };
            let verbs = line
                .rfind('[')
                .map(|start| line[start + 1..].trim_end().trim_end_matches(']'))
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect();
            (resource, verbs)
        })
        .collect()
}

const AGENT: &str = "--as=system:serviceaccount:relaunch-system:relaunch-agent";
const COORDINATOR: &str = "--as=system:serviceaccount:relaunch-system:relaunch-coordinator";

#[tokio::test]
async fn kubectl_auth_can_i_shows_the_agent_may_only_read() {
    let k = Kubectl::with_relaunch().await;
    let listed = k.ok(&["auth", "can-i", "--list", AGENT]).await;
    let rows = rules_table(&listed);
    let verbs_of = |resource: &str| -> Vec<String> {
        rows.iter()
            .find(|(r, _)| r == resource)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{resource} missing from:\n{listed}"))
    };
    assert_eq!(verbs_of("pods"), ["list", "watch"], "{listed}");
    assert_eq!(
        verbs_of("containerrecreaterequests.relaunch.dev"),
        ["list", "watch"],
        "{listed}"
    );
    // Besides reading, only what every authenticated user may: ask what it may do.
    let self_reviews = [
        "selfsubjectaccessreviews.authorization.k8s.io",
        "selfsubjectrulesreviews.authorization.k8s.io",
        "selfsubjectreviews.authentication.k8s.io",
    ];
    for (resource, verbs) in rows.iter().filter(|(r, _)| !r.is_empty()) {
        let read_only = verbs
            .iter()
            .all(|v| ["get", "list", "watch"].contains(&v.as_str()));
        assert!(
            read_only || (self_reviews.contains(&resource.as_str()) && verbs == &["create"]),
            "the agent may {verbs:?} {resource}:\n{listed}"
        );
    }

    assert!(k.can_i(&["list", "pods", "--all-namespaces", AGENT]).await);
    assert!(!k.can_i(&["delete", "pods", AGENT]).await);
    assert!(
        !k.can_i(&["create", "containerrecreaterequests.relaunch.dev", AGENT])
            .await
    );
    assert!(
        !k.can_i(&["patch", "pods", "--subresource=status", AGENT])
            .await
    );
    assert!(
        k.can_i(&["patch", "pods", "--subresource=status", COORDINATOR])
            .await
    );
    assert!(
        !k.can_i(&["patch", "pods", COORDINATOR]).await,
        "the coordinator never changes a pod's spec"
    );
    assert!(
        k.can_i(&["create", "tokenreviews.authentication.k8s.io", COORDINATOR])
            .await
    );
    assert!(!k.can_i(&["delete", "nodes", "--as=jane"]).await);
    assert!(
        k.can_i(&["delete", "nodes", "--as=jane", "--as-group=system:masters"])
            .await
    );
    assert!(k.can_i(&["delete", "nodes"]).await, "the administrator");
}

#[tokio::test]
async fn a_service_account_allowed_only_to_create_is_refused_the_rest_with_upstreams_message() {
    let k = Kubectl::start().await;
    k.service_account_creating("bot", "configmaps").await;

    let whoami = k.succeeds(&["auth", "whoami", BOT]).await;
    assert!(
        whoami.contains("system:serviceaccount:default:bot")
            && whoami.contains("system:serviceaccounts:default"),
        "{whoami}"
    );
    k.succeeds(&["create", "configmap", "settings", "--from-literal=a=1", BOT])
        .await;
    let refused = k.fails(&["get", "configmaps", BOT]).await;
    assert!(
        refused.contains(r#"Error from server (Forbidden): configmaps is forbidden: User "system:serviceaccount:default:bot" cannot list resource "configmaps" in API group "" in the namespace "default""#),
        "{refused}"
    );
    let refused = k.fails(&["get", "configmap", "settings", BOT]).await;
    assert!(
        refused.contains(r#"Error from server (Forbidden): configmaps "settings" is forbidden: User "system:serviceaccount:default:bot" cannot get resource "configmaps" in API group "" in the namespace "default""#),
        "{refused}"
    );
    let refused = k.fails(&["delete", "pod", "web", BOT]).await;
    assert!(
        refused.contains(r#"pods "web" is forbidden: User "system:serviceaccount:default:bot" cannot delete resource "pods" in API group "" in the namespace "default""#),
        "{refused}"
    );

    // The token `kubectl create token` issues authenticates as the account.
    let token = k.ok(&["create", "token", "bot"]).await;
    let bot = relaunch_testbed::client_for(&k.api.server.url(), Some(token.trim())).unwrap();
    let forbidden = |err: kube::Error| match err {
        kube::Error::Api(s) if s.code == 403 => s.message,
        other => panic!("expected 403, got {other:?}"),
    };
    let configmaps: kube::Api<ConfigMap> = kube::Api::default_namespaced(bot);
    assert_eq!(
        forbidden(configmaps.get("settings").await.unwrap_err()),
        r#"configmaps "settings" is forbidden: User "system:serviceaccount:default:bot" cannot get resource "configmaps" in API group "" in the namespace "default""#
    );

    // Acting as someone else needs the impersonate verb.
    let mut config = kube::Config::new(k.api.server.url().parse().unwrap());
    config.default_namespace = "default".into();
    config.auth_info.token = Some(token.trim().to_string().into());
    config.auth_info.impersonate = Some("jane".into());
    let as_jane: kube::Api<ConfigMap> =
        kube::Api::default_namespaced(kube::Client::try_from(config.clone()).unwrap());
    assert_eq!(
        forbidden(as_jane.list(&Default::default()).await.unwrap_err()),
        r#"users "jane" is forbidden: User "system:serviceaccount:default:bot" cannot impersonate resource "users" in API group "" at the cluster scope"#
    );
    k.ok(&[
        "create",
        "clusterrole",
        "impersonate-jane",
        "--verb=impersonate",
        "--resource=users",
        "--resource-name=jane",
    ])
    .await;
    k.ok(&[
        "create",
        "clusterrolebinding",
        "bot-impersonates-jane",
        "--clusterrole=impersonate-jane",
        "--serviceaccount=default:bot",
    ])
    .await;
    assert_eq!(
        forbidden(as_jane.list(&Default::default()).await.unwrap_err()),
        r#"configmaps is forbidden: User "jane" cannot list resource "configmaps" in API group "" in the namespace "default""#,
        "impersonating, the request is jane's"
    );
    config.auth_info.impersonate_groups = Some(vec!["system:masters".into()]);
    let as_admin: kube::Api<ConfigMap> =
        kube::Api::default_namespaced(kube::Client::try_from(config).unwrap());
    assert_eq!(
        forbidden(as_admin.list(&Default::default()).await.unwrap_err()),
        r#"groups "system:masters" is forbidden: User "system:serviceaccount:default:bot" cannot impersonate resource "groups" in API group "" at the cluster scope"#
    );
}

const GIZMO_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gizmos.example.dev
spec:
  group: example.dev
  scope: Namespaced
  names: {plural: gizmos, singular: gizmo, kind: Gizmo}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [replicas]
            x-kubernetes-validations:
            - rule: "!has(self.minReplicas) || self.minReplicas <= self.replicas"
              message: minReplicas must not exceed replicas
              fieldPath: .minReplicas
            properties:
              replicas: {type: integer, minimum: 1, maximum: 5}
              minReplicas: {type: integer}
              mode:
                type: string
                enum: [Slow, Fast]
                default: Slow
                x-kubernetes-validations:
                - rule: self == oldSelf
                  message: mode is immutable
          status:
            type: object
            properties:
              ready: {type: integer, minimum: 0}
"#;

#[tokio::test]
async fn kubectl_create_refuses_custom_resources_the_crd_schema_and_rules_refuse() {
    let k = Kubectl::start().await;
    let crd = k.file("crd.yaml", GIZMO_CRD);
    k.ok(&["create", "-f", &crd]).await;
    let gizmo = |name: &str, spec: &str| {
        k.file(
            &format!("{name}.yaml"),
            &format!("apiVersion: example.dev/v1\nkind: Gizmo\nmetadata: {{name: {name}}}\nspec: {spec}\n"),
        )
    };

    let bad = gizmo("too-many", "{replicas: 9}");
    let refused = k.fails(&["create", "-f", &bad]).await;
    assert!(
        refused.contains(r#"The Gizmo "too-many" is invalid: spec.replicas: Invalid value: 9: spec.replicas in body should be less than or equal to 5"#),
        "{refused}"
    );
    let bad = gizmo("inverted", "{replicas: 2, minReplicas: 3}");
    let refused = k.fails(&["create", "-f", &bad]).await;
    assert!(
        refused.contains(r#"The Gizmo "inverted" is invalid: spec.minReplicas: Invalid value: minReplicas must not exceed replicas"#),
        "{refused}"
    );
    let bad = gizmo("unknown", "{replicas: 2, bogus: true}");
    let refused = k.fails(&["create", "-f", &bad]).await;
    assert!(
        refused.contains(r#"strict decoding error: unknown field "spec.bogus""#),
        "kubectl asks for strict field validation: {refused}"
    );
    let out = k.run(&["get", "gizmos", "-o", "name"]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "nothing was created"
    );

    let good = gizmo("g1", "{replicas: 2, minReplicas: 1}");
    k.ok(&["create", "-f", &good]).await;
    assert_eq!(
        k.ok(&["get", "gizmo", "g1", "-o", "jsonpath={.spec.mode}"])
            .await,
        "Slow",
        "defaulted"
    );
    // A transition rule compares with the stored object.
    let refused = k
        .fails(&[
            "patch",
            "gizmo",
            "g1",
            "--type=merge",
            "-p",
            r#"{"spec":{"mode":"Fast"}}"#,
        ])
        .await;
    assert!(
        refused.contains(
            r#"The Gizmo "g1" is invalid: spec.mode: Invalid value: "Fast": mode is immutable"#
        ),
        "{refused}"
    );
    k.ok(&[
        "patch",
        "gizmo",
        "g1",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":3}}"#,
    ])
    .await;
    // The status subresource validates the status.
    let refused = k
        .fails(&[
            "patch",
            "gizmo",
            "g1",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"ready":-1}}"#,
        ])
        .await;
    assert!(
        refused.contains("status.ready: Invalid value: -1: status.ready in body should be greater than or equal to 0"),
        "{refused}"
    );

    // A CRD whose rule does not compile is refused.
    let broken = k.file(
        "broken.yaml",
        &GIZMO_CRD
            .replace("gizmos.example.dev", "widgets.example.dev")
            .replace(
                "{plural: gizmos, singular: gizmo, kind: Gizmo}",
                "{plural: widgets, singular: widget, kind: Widget}",
            )
            .replace(
                "self.minReplicas <= self.replicas",
                "self.minReplica <= self.replicas",
            ),
    );
    let refused = k.fails(&["create", "-f", &broken]).await;
    assert!(
        refused.contains(r#"The CustomResourceDefinition "widgets.example.dev" is invalid"#)
            && refused.contains("undefined field 'minReplica'"),
        "{refused}"
    );
}

const EXEC_POLICY: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: exec-needs-pods-exec}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - {apiGroups: [""], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [configmaps]}
  validations:
  - expression: >-
      !has(object.data) || !('exec' in object.data) ||
      authorizer.group('').resource('pods').subresource('exec')
        .namespace(object.metadata.namespace).check('create').allowed()
    messageExpression: "'user ' + request.userInfo.username + ' may not create pods/exec in ' + object.metadata.namespace"
    reason: Forbidden
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: exec-needs-pods-exec}
spec:
  policyName: exec-needs-pods-exec
  validationActions: [Deny]
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: team-label}
spec:
  matchConstraints:
    resourceRules:
    - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [configmaps]}
  validations:
  - expression: "has(object.metadata.labels) && 'team' in object.metadata.labels"
    message: config maps should say their team
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: team-label}
spec:
  policyName: team-label
  validationActions: [Warn]
"#;

#[tokio::test]
async fn an_admission_policy_asks_rbac_whether_the_user_may_exec_and_warns() {
    let k = Kubectl::start().await;
    k.service_account_creating("bot", "configmaps").await;
    let policies = k.file("policies.yaml", EXEC_POLICY);
    k.ok(&["create", "-f", &policies]).await;

    let refused = k
        .fails(&["create", "configmap", "c1", "--from-literal=exec=id", BOT])
        .await;
    assert!(
        refused.contains(r#"configmaps "c1" is forbidden: ValidatingAdmissionPolicy 'exec-needs-pods-exec' with binding 'exec-needs-pods-exec' denied request: user system:serviceaccount:default:bot may not create pods/exec in default"#),
        "{refused}"
    );
    let refused = k
        .fails(&[
            "create",
            "configmap",
            "c1",
            "--from-literal=exec=id",
            "--dry-run=server",
            BOT,
        ])
        .await;
    assert!(
        refused.contains("denied request"),
        "a dry run is admitted the same: {refused}"
    );
    let warned = k
        .succeeds(&["create", "configmap", "plain", "--from-literal=a=1", BOT])
        .await;
    assert!(
        warned.contains("Warning: Validation failed for ValidatingAdmissionPolicy 'team-label' with binding 'team-label': config maps should say their team"),
        "{warned}"
    );

    k.ok(&[
        "create",
        "role",
        "exec",
        "--verb=create",
        "--resource=pods/exec",
    ])
    .await;
    k.ok(&[
        "create",
        "rolebinding",
        "bot-execs",
        "--role=exec",
        "--serviceaccount=default:bot",
    ])
    .await;
    k.succeeds(&["create", "configmap", "c1", "--from-literal=exec=id", BOT])
        .await;
    assert_eq!(
        k.ok(&["get", "configmap", "c1", "-o", "jsonpath={.data.exec}"])
            .await,
        "id"
    );
}

const MONITORING_ROLES: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: monitoring}
aggregationRule:
  clusterRoleSelectors:
  - matchLabels: {example.dev/aggregate-to-monitoring: "true"}
rules: []
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: pod-reader
  labels: {example.dev/aggregate-to-monitoring: "true"}
rules:
- {apiGroups: [""], resources: [pods, pods/log], verbs: [get, list, watch]}
- {apiGroups: [""], resources: [configmaps], resourceNames: [settings], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: metrics-reader
  labels: {example.dev/aggregate-to-monitoring: "true"}
rules:
- {nonResourceURLs: [/metrics, /metrics/*], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: lease-reader}
rules:
- {apiGroups: [coordination.k8s.io], resources: ["*"], verbs: [get]}
"#;

#[tokio::test]
async fn aggregated_cluster_roles_bound_to_a_namespaces_service_accounts_answer_can_i() {
    let k = Kubectl::start().await;
    k.ok(&["create", "namespace", "team"]).await;
    k.ok(&["create", "serviceaccount", "bot", "-n", "team"])
        .await;
    let roles = k.file("roles.yaml", MONITORING_ROLES);
    k.ok(&["create", "-f", &roles]).await;
    k.ok(&[
        "create",
        "clusterrolebinding",
        "team-monitoring",
        "--clusterrole=monitoring",
        "--group=system:serviceaccounts:team",
    ])
    .await;
    let bot = "--as=system:serviceaccount:team:bot";

    // The aggregation controller's work: the aggregated role holds its members' rules.
    let rules = k
        .ok(&[
            "get",
            "clusterrole",
            "monitoring",
            "-o",
            "jsonpath={.rules}",
        ])
        .await;
    assert!(
        rules.contains("pods/log") && rules.contains("/metrics/*"),
        "{rules}"
    );
    assert!(k.can_i(&["get", "pods", "-n", "team", bot]).await);
    assert!(k.can_i(&["watch", "pods", "-n", "elsewhere", bot]).await);
    assert!(
        k.can_i(&["get", "pods", "--subresource=log", "-n", "team", bot])
            .await
    );
    assert!(!k.can_i(&["delete", "pods", "-n", "team", bot]).await);
    assert!(
        k.can_i(&["get", "configmap/settings", "-n", "team", bot])
            .await
    );
    assert!(
        !k.can_i(&["get", "configmap/secrets", "-n", "team", bot])
            .await
    );
    assert!(
        !k.can_i(&["list", "configmaps", "-n", "team", bot]).await,
        "resourceNames allow only named requests"
    );
    assert!(k.can_i(&["get", "/metrics/cpu", bot]).await);
    assert!(!k.can_i(&["get", "/debug/pprof", bot]).await);
    assert!(
        !k.can_i(&["get", "pods", "--as=system:serviceaccount:default:default"])
            .await,
        "a service account of another namespace is not in the group"
    );

    // A role labelled later joins the aggregate with the next request.
    assert!(
        !k.can_i(&["get", "leases.coordination.k8s.io", "-n", "team", bot])
            .await
    );
    k.ok(&[
        "label",
        "clusterrole",
        "lease-reader",
        "example.dev/aggregate-to-monitoring=true",
    ])
    .await;
    assert!(
        k.can_i(&["get", "leases.coordination.k8s.io", "-n", "team", bot])
            .await
    );

    // `--list` is the SelfSubjectRulesReview of the namespace.
    let listed = k.ok(&["auth", "can-i", "--list", "-n", "team", bot]).await;
    let rows = rules_table(&listed);
    assert!(
        rows.iter()
            .any(|(r, v)| r == "pods" && v == &["get", "list", "watch"]),
        "{listed}"
    );
    assert!(
        rows.iter().any(|(r, v)| r.is_empty() && v == &["get"]),
        "the non-resource URLs: {listed}"
    );
}

/// relaunch's CRDs and admission policies as `kubectl apply -k manifests/base` installs them,
/// from the files.
async fn install_relaunch_admission(k: &Kubectl) {
    let root = env!("CARGO_MANIFEST_DIR");
    k.ok(&[
        "apply",
        "-f",
        &format!("{root}/manifests/crds/containerrecreaterequests.relaunch.dev.yaml"),
    ])
    .await;
    k.ok(&[
        "apply",
        "-f",
        &format!("{root}/manifests/crds/rollingrestarts.relaunch.dev.yaml"),
    ])
    .await;
    k.ok(&[
        "apply",
        "-f",
        &format!("{root}/manifests/crds/scaledowns.relaunch.dev.yaml"),
    ])
    .await;
    k.ok(&[
        "apply",
        "-f",
        &format!("{root}/manifests/base/admission-policy.yaml"),
    ])
    .await;
}

fn recreate_request(name: &str, container: &str) -> String {
    format!(
        "apiVersion: relaunch.dev/v1alpha1\nkind: ContainerRecreateRequest\nmetadata: {{name: {name}}}\nspec:\n  podName: db-0\n  containers:\n  - {container}\n"
    )
}

const EXEC_ROLLOUT: &str = r#"
apiVersion: relaunch.dev/v1alpha1
kind: RollingRestart
metadata: {name: db-restart}
spec:
  target: {workloadRef: {kind: StatefulSet, name: db}}
  shutdown:
  - container: db
    exec: {command: [db, stop]}
"#;

#[tokio::test]
async fn an_exec_shutdown_needs_the_right_to_exec_into_the_pod() {
    let k = Kubectl::start().await;
    install_relaunch_admission(&k).await;
    k.service_account_creating("bot", "containerrecreaterequests.relaunch.dev")
        .await;
    k.ok(&[
        "create",
        "role",
        "rollout-creator",
        "--verb=create",
        "--resource=rollingrestarts.relaunch.dev",
    ])
    .await;
    k.ok(&[
        "create",
        "rolebinding",
        "bot-rollouts",
        "--role=rollout-creator",
        "--serviceaccount=default:bot",
    ])
    .await;
    let exec = k.file(
        "exec.yaml",
        &recreate_request(
            "exec",
            "{name: db, shutdown: {exec: {command: [db, stop]}}}",
        ),
    );
    let plain = k.file("plain.yaml", &recreate_request("plain", "{name: db}"));
    let http = k.file(
        "http.yaml",
        &recreate_request(
            "http",
            "{name: db, shutdown: {httpGet: {port: 8080, path: /stop}}}",
        ),
    );
    let rollout = k.file("rollout.yaml", EXEC_ROLLOUT);

    let refused = k.fails(&["create", "-f", &exec, BOT]).await;
    assert!(
        refused.contains(r#"containerrecreaterequests.relaunch.dev "exec" is forbidden: ValidatingAdmissionPolicy 'relaunch-request-exec-needs-pods-exec' with binding 'relaunch-request-exec-needs-pods-exec' denied request: system:serviceaccount:default:bot may not create pods/exec on pod default/db-0, which a shutdown exec action needs"#),
        "{refused}"
    );
    let refused = k.fails(&["create", "-f", &rollout, BOT]).await;
    assert!(
        refused.contains("denied request: system:serviceaccount:default:bot may not create pods/exec in namespace default, which a rollout with shutdown exec actions needs"),
        "{refused}"
    );
    assert_eq!(
        k.ok(&["get", "crr,rr", "-o", "name"]).await,
        "",
        "nothing was created"
    );
    // Without exec, creating the request is all it takes.
    k.succeeds(&["create", "-f", &plain, BOT]).await;
    k.succeeds(&["create", "-f", &http, BOT]).await;

    k.ok(&[
        "create",
        "role",
        "exec",
        "--verb=create",
        "--resource=pods/exec",
    ])
    .await;
    k.ok(&[
        "create",
        "rolebinding",
        "bot-execs",
        "--role=exec",
        "--serviceaccount=default:bot",
    ])
    .await;
    k.succeeds(&["create", "-f", &exec, BOT]).await;
    k.succeeds(&["create", "-f", &rollout, BOT]).await;
    assert_eq!(
        k.ok(&["get", "crr,rr", "-o", "name"]).await,
        "containerrecreaterequest.relaunch.dev/exec\ncontainerrecreaterequest.relaunch.dev/http\ncontainerrecreaterequest.relaunch.dev/plain\nrollingrestart.relaunch.dev/db-restart\n"
    );

    // A request's spec is fixed: an exec action cannot be slipped in afterwards.
    let refused = k
        .fails(&[
            "patch",
            "crr",
            "plain",
            "--type=merge",
            "-p",
            r#"{"spec":{"containers":[{"name":"db","shutdown":{"exec":{"command":["id"]}}}]}}"#,
        ])
        .await;
    assert!(
        refused.contains(r#"The ContainerRecreateRequest "plain" is invalid: spec: Invalid value"#)
            && refused.contains(
                "the spec of a ContainerRecreateRequest cannot be changed once it is created"
            ),
        "{refused}"
    );
    // A rollout's pace stays editable, what it runs does not.
    k.ok(&[
        "patch",
        "rr",
        "db-restart",
        "--type=merge",
        "-p",
        r#"{"spec":{"strategy":{"paused":true}}}"#,
    ])
    .await;
    let refused = k
        .fails(&[
            "patch",
            "rr",
            "db-restart",
            "--type=merge",
            "-p",
            r#"{"spec":{"shutdown":[{"container":"db","exec":{"command":["id"]}}]}}"#,
        ])
        .await;
    assert!(
        refused.contains("spec.shutdown: Invalid value")
            && refused.contains("spec.shutdown cannot be changed once the rollout is created"),
        "{refused}"
    );
}

/// The rows of docs/api.md's validation table the schema catches, as `kubectl create` shows
/// them: refused with the field's path, nothing created.
#[tokio::test]
async fn kubectl_create_refuses_invalid_requests_with_the_field_path() {
    let k = Kubectl::start().await;
    install_relaunch_admission(&k).await;
    let cases = [
        (
            "empty-pod",
            "podName: \"\"\n  containers: [{name: db}]",
            "spec.podName: Invalid value: \"\"",
        ),
        (
            "bad-pod",
            "podName: DB_0\n  containers: [{name: db}]",
            "spec.podName: Invalid value: \"DB_0\"",
        ),
        (
            "no-containers",
            "podName: db-0\n  containers: []",
            "spec.containers: Invalid value: 0: spec.containers in body should have at least 1 items",
        ),
        (
            "twice",
            "podName: db-0\n  containers: [{name: db}, {name: db}]",
            "spec.containers[1]: Duplicate value",
        ),
        (
            "deadline",
            "podName: db-0\n  containers: [{name: db}]\n  activeDeadlineSeconds: 0",
            "spec.activeDeadlineSeconds: Invalid value: 0: spec.activeDeadlineSeconds in body should be greater than or equal to 1",
        ),
        (
            "ttl",
            "podName: db-0\n  containers: [{name: db}]\n  ttlSecondsAfterFinished: 2592001",
            "spec.ttlSecondsAfterFinished: Invalid value: 2592001",
        ),
        (
            "grace",
            "podName: db-0\n  containers: [{name: db}]\n  strategy: {terminationGracePeriodSeconds: -1}",
            "spec.strategy.terminationGracePeriodSeconds: Invalid value: -1",
        ),
        (
            "both",
            "podName: db-0\n  containers: [{name: db, shutdown: {exec: {command: [a]}, httpGet: {port: 80}}}]",
            "spec.containers[0].shutdown: Invalid value|set exec or httpGet, not both",
        ),
        (
            "neither",
            "podName: db-0\n  containers: [{name: db, shutdown: {}}]",
            "spec.containers[0].shutdown: Invalid value|set exec or httpGet",
        ),
        (
            "no-command",
            "podName: db-0\n  containers: [{name: db, shutdown: {exec: {command: []}}}]",
            "spec.containers[0].shutdown.exec.command: Invalid value: 0",
        ),
        (
            "host",
            "podName: db-0\n  containers: [{name: db, shutdown: {httpGet: {port: 80, host: 127.0.0.1}}}]",
            "spec.containers[0].shutdown.httpGet.host: Invalid value|host is not supported: the agent sends the GET to the pod's IP",
        ),
        (
            "port",
            "podName: db-0\n  containers: [{name: db, shutdown: {httpGet: {port: 70000}}}]",
            "spec.containers[0].shutdown.httpGet.port: Invalid value",
        ),
        (
            "scheme",
            "podName: db-0\n  containers: [{name: db, shutdown: {httpGet: {port: 80, scheme: TCP}}}]",
            "spec.containers[0].shutdown.httpGet.scheme: Unsupported value: \"TCP\"",
        ),
    ];
    for (name, spec, says) in cases {
        let file = k.file(
            &format!("{name}.yaml"),
            &format!("apiVersion: relaunch.dev/v1alpha1\nkind: ContainerRecreateRequest\nmetadata: {{name: {name}}}\nspec:\n  {spec}\n"),
        );
        let refused = k.fails(&["create", "-f", &file]).await;
        // `FIELD: Invalid value|MESSAGE`: a CEL rule's refusal, whose value part differs
        // between servers (upstream prints `"object": `).
        assert!(
            refused.contains(&format!(
                "The ContainerRecreateRequest \"{name}\" is invalid: "
            )) && says.split('|').all(|part| refused.contains(part)),
            "{name}: {refused}"
        );
    }
    assert_eq!(
        k.ok(&["get", "crr", "-o", "name"]).await,
        "",
        "nothing was created"
    );
}

/// The server also speaks HTTPS on its port, with its own CA: kubectl and kube-rs verify it
/// through the kubeconfig's `certificate-authority-data` (a foreign CA is refused), and over TLS
/// kubectl sends a service account's token, as client-go does.
#[tokio::test]
async fn serves_https_with_its_own_ca_and_kubectl_sends_tokens_over_it() {
    let api = TestApi::start().await;
    let dir = api.dir();
    let tls = dir.join("tls-kubeconfig");
    std::fs::write(&tls, api.server.tls_kubeconfig(None)).unwrap();
    let out = support::output(support::kubectl(&tls, dir, &["get", "--raw", "/version"])).await;
    assert!(out.status.success(), "{}", support::printed(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("gitVersion"));
    assert!(api.server.https_url().starts_with("https://127.0.0.1:"));

    // A service account's token goes along over TLS (not over plain HTTP): kubectl is that user.
    let token = support::token(
        &api.client,
        "default",
        "default",
        relaunch_testbed::API_AUDIENCE,
        None,
    )
    .await;
    let with_token = dir.join("token-kubeconfig");
    std::fs::write(&with_token, api.server.tls_kubeconfig(Some(&token))).unwrap();
    let out = support::output(support::kubectl(
        &with_token,
        dir,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    ))
    .await;
    assert!(out.status.success(), "{}", support::printed(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "system:serviceaccount:default:default"
    );

    // kube-rs with the CA as its only root.
    let client = api.server.tls_client(None).unwrap();
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
    assert!(namespaces.get("default").await.is_ok());

    // Another server's CA does not vouch for this one.
    let other = TestApi::start().await;
    let foreign = api.server.tls_kubeconfig(None).replace(
        &base64_of(api.server.ca_pem()),
        &base64_of(other.server.ca_pem()),
    );
    let foreign_path = dir.join("foreign-kubeconfig");
    std::fs::write(&foreign_path, foreign).unwrap();
    let out = support::output(support::kubectl(
        &foreign_path,
        dir,
        &["get", "--raw", "/version"],
    ))
    .await;
    assert!(!out.status.success());
    assert!(
        support::printed(&out).contains("certificate"),
        "{}",
        support::printed(&out)
    );
}

fn base64_of(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

const SCALEDOWN: &str = r#"
apiVersion: relaunch.dev/v1alpha1
kind: ScaleDown
metadata: {name: shrink}
spec:
  statefulSetName: db
  replicas: 1
  decommission: {command: [db, decommission]}
"#;

/// A ScaleDown runs commands in pods: creating one needs create on pods/exec.
#[tokio::test]
async fn a_scaledown_needs_the_right_to_exec_into_pods() {
    let k = Kubectl::start().await;
    install_relaunch_admission(&k).await;
    k.service_account_creating("bot", "scaledowns.relaunch.dev")
        .await;
    let scaledown = k.file("scaledown.yaml", SCALEDOWN);
    let refused = k.fails(&["create", "-f", &scaledown, BOT]).await;
    assert!(
        refused.contains(r#"scaledowns.relaunch.dev "shrink" is forbidden: ValidatingAdmissionPolicy 'relaunch-scaledown-needs-pods-exec' with binding 'relaunch-scaledown-needs-pods-exec' denied request: system:serviceaccount:default:bot may not create pods/exec in namespace default, which a ScaleDown needs"#),
        "{refused}"
    );
    assert_eq!(k.ok(&["get", "scaledowns", "-o", "name"]).await, "");
    k.ok(&[
        "create",
        "role",
        "exec",
        "--verb=create",
        "--resource=pods/exec",
    ])
    .await;
    k.ok(&[
        "create",
        "rolebinding",
        "bot-execs",
        "--role=exec",
        "--serviceaccount=default:bot",
    ])
    .await;
    k.succeeds(&["create", "-f", &scaledown, BOT]).await;
    assert_eq!(
        k.ok(&["get", "scaledowns", "-o", "name"]).await,
        "scaledown.relaunch.dev/shrink\n"
    );
}
