//! The cluster manifests, checked offline: `manifests/base` and `manifests/monitoring` render
//! with `kubectl kustomize`; every object validates against the Kubernetes 1.33 schemas (the
//! Python package kubernetes-validate, installed by scripts/test.sh into `RELAUNCH_PYTHON`), or
//! against our CRDs, or a structural check for Prometheus Operator kinds
//! (tests/python/validate_manifests.py); the pods pass only flags and environment the binaries
//! accept; the agent's rights are read-only; the README's certificate recipe gives a certificate
//! the agent trusts; and every metric the alerts and the dashboard query is exported by the
//! binaries.

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use prometheus::Registry;
use relaunch_api::COORDINATOR_AUDIENCE;
use relaunch_testbed::{Component, free_port};
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use serde_yaml::Value;
use support::{TestApi, binaries, eventually, printed};

/// The Kubernetes version the manifests are validated for: the one k8s-openapi is built for
/// (feature `v1_33` in Cargo.toml).
const KUBERNETES_VERSION: &str = "1.33";

/// Metrics Prometheus itself makes; no binary exports them.
const PROMETHEUS_BUILTINS: &[&str] = &[
    "up",
    "ALERTS",
    "ALERTS_FOR_STATE",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn kustomize(dir: &str) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(root().join(dir))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run kubectl: {e}; run ./scripts/test.sh (it installs it)")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("kustomize prints UTF-8")
}

fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    of_kind(objects, kind)
        .into_iter()
        .find(|o| o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs tests/python/validate_manifests.py over YAML streams.
fn validate(streams: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (name, yaml) in streams {
        let path = dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        files.push(path);
    }
    Command::new(support::python("kubernetes_validate"))
        .arg(root().join("tests/python/validate_manifests.py"))
        .args(["--kubernetes-version", KUBERNETES_VERSION])
        .args(&files)
        .output()
        .unwrap()
}

#[test]
fn manifests_render_and_validate_against_kubernetes_schemas() {
    let base = kustomize("manifests/base");
    let monitoring = kustomize("manifests/monitoring");
    let guard = kustomize("manifests/guard");
    assert_eq!(
        objects(&guard).len(),
        2,
        "the guard: a policy and its binding"
    );
    let count = objects(&base).len() + objects(&monitoring).len() + objects(&guard).len();
    let out = validate(&[
        ("base.yaml", &base),
        ("monitoring.yaml", &monitoring),
        ("guard.yaml", &guard),
    ]);
    let report = printed(&out);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains(&format!("{count} valid, 0 invalid")),
        "every rendered object is checked:\n{report}"
    );

    let base = objects(&base);
    for (kind, name) in [
        ("Namespace", "relaunch-system"),
        (
            "CustomResourceDefinition",
            "containerrecreaterequests.relaunch.dev",
        ),
        ("CustomResourceDefinition", "rollingrestarts.relaunch.dev"),
        ("CustomResourceDefinition", "scaledowns.relaunch.dev"),
        ("CustomResourceDefinition", "drains.relaunch.dev"),
        ("DaemonSet", "relaunch-agent"),
        ("Deployment", "relaunch-coordinator"),
        ("Service", "relaunch-coordinator"),
        ("PodDisruptionBudget", "relaunch-coordinator"),
        ("NetworkPolicy", "relaunch-coordinator"),
        (
            "ValidatingAdmissionPolicy",
            "relaunch-request-exec-needs-pods-exec",
        ),
        (
            "ValidatingAdmissionPolicyBinding",
            "relaunch-request-exec-needs-pods-exec",
        ),
        (
            "ValidatingAdmissionPolicy",
            "relaunch-rollout-exec-needs-pods-exec",
        ),
        (
            "ValidatingAdmissionPolicy",
            "relaunch-scaledown-needs-pods-exec",
        ),
        (
            "ValidatingAdmissionPolicyBinding",
            "relaunch-scaledown-needs-pods-exec",
        ),
        (
            "ValidatingAdmissionPolicyBinding",
            "relaunch-rollout-exec-needs-pods-exec",
        ),
    ] {
        one(&base, kind, name);
    }
    let monitoring = objects(&monitoring);
    for (kind, name) in [
        ("PodMonitor", "relaunch-agent"),
        ("ServiceMonitor", "relaunch-coordinator"),
        ("PrometheusRule", "relaunch"),
        ("ConfigMap", "relaunch-dashboard"),
    ] {
        one(&monitoring, kind, name);
    }
}

/// The `Dockerfile` builds the images `manifests/base` names, with the tag its kustomization
/// pins, each with its binary as entrypoint and the non-root user the offline image writer
/// (relaunch-sandbox up --deploy) uses too; manifests/README.md documents the same command.
#[test]
fn dockerfile_builds_the_images_the_manifests_name() {
    let read = |path: &str| std::fs::read_to_string(root().join(path)).unwrap();
    let dockerfile = read("Dockerfile");
    let readme = read("manifests/README.md");
    let kustomization: Value =
        serde_yaml::from_str(&read("manifests/base/kustomization.yaml")).unwrap();
    let images = kustomization["images"].as_sequence().unwrap();
    assert_eq!(images.len(), 2);
    for image in images {
        let name = image["name"].as_str().unwrap();
        let tag = image["newTag"].as_str().unwrap();
        let binary = name.rsplit('/').next().unwrap();
        let target = binary.trim_start_matches("relaunch-");
        let command = format!("docker build --target {target} -t {name}:{tag} .");
        assert!(
            dockerfile.contains(&command),
            "the Dockerfile documents {command}"
        );
        assert!(
            readme.contains(&command),
            "manifests/README.md documents {command}"
        );
        let stage = dockerfile
            .split(&format!("FROM runtime AS {target}\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("the Dockerfile has a stage {target}"));
        let stage = stage.split("\nFROM ").next().unwrap();
        assert!(
            stage.contains(&format!(
                "COPY --from=build /out/{binary} /usr/local/bin/{binary}"
            )) && stage.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{binary}\"]")),
            "stage {target} runs {binary}:\n{stage}"
        );
    }
    let user = relaunch_testbed::IMAGE_USER;
    assert!(dockerfile.contains(&format!("USER {user}:{user}")));
}

#[test]
fn documented_custom_resources_validate_against_the_generated_crds() {
    let api = std::fs::read_to_string(root().join("docs/api.md")).unwrap();
    let examples: Vec<&str> = api
        .split("```yaml\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .filter(|block| block.contains("apiVersion: relaunch.dev/"))
        .collect();
    assert!(
        !examples.is_empty(),
        "docs/api.md has ContainerRecreateRequest and RollingRestart examples"
    );
    let examples = examples.join("\n---\n");
    let out = validate(&[
        ("crds.yaml", &kustomize("manifests/crds")),
        ("docs.yaml", &examples),
    ]);
    let report = printed(&out);
    assert!(out.status.success(), "docs/api.md examples:\n{report}");
    assert!(report.contains("ContainerRecreateRequest"), "{report}");
    assert!(report.contains("RollingRestart"), "{report}");
}

#[test]
fn validator_refuses_what_the_api_server_would_refuse() {
    let broken = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: misspelt-field}
spec:
  replica: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: web}]}
---
apiVersion: v1
kind: Pod
metadata: {name: wrong-type}
spec: {containers: [{name: web, image: web, ports: [{containerPort: http}]}]}
---
apiVersion: relaunch.dev/v1alpha1
kind: ContainerRecreateRequest
metadata: {name: unknown-crr-field, namespace: default}
spec: {podName: web-0, containers: [{name: web, shutdwn: {}}]}
---
apiVersion: relaunch.dev/v1alpha1
kind: RollingRestart
metadata: {name: wrong-crd-type, namespace: default}
spec: {target: {workloadRef: {kind: StatefulSet, name: db}}, strategy: {partition: many}}
---
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata: {name: rule-without-expr}
spec: {groups: [{name: g, rules: [{alert: Broken, for: 10}]}]}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: unknown-kind}
"#;
    let out = validate(&[
        ("crds.yaml", &kustomize("manifests/crds")),
        ("broken.yaml", broken),
    ]);
    let report = printed(&out);
    assert!(!out.status.success(), "{report}");
    for name in [
        "misspelt-field",
        "wrong-type",
        "unknown-crr-field",
        "wrong-crd-type",
        "rule-without-expr",
        "unknown-kind",
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("ERROR") && l.contains(name)),
            "{name} is refused:\n{report}"
        );
    }
    assert!(
        report.contains("4 valid, 6 invalid"),
        "only the CRDs pass:\n{report}"
    );
}

/// Every token of `--help` output: flags and `[env: NAME=...]` markers.
fn help(program: &Path, args: &[&str]) -> (BTreeSet<String>, BTreeSet<String>) {
    let out = Command::new(program)
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} --help: {}",
        program.display(),
        printed(&out)
    );
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let flags = help
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| w.starts_with("--"))
        .map(str::to_string)
        .collect();
    let env = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_string)
        .collect();
    (flags, env)
}

fn port_of(listen: &str) -> u64 {
    listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{listen} names no port"))
}

#[test]
fn pods_pass_only_flags_and_environment_the_binaries_accept() {
    let base = objects(&kustomize("manifests/base"));
    let binaries = binaries();
    let agent_help = help(&binaries.agent, &[]);
    let coordinator_help = help(&binaries.coordinator, &["run"]);
    let workloads = [
        one(&base, "DaemonSet", "relaunch-agent"),
        one(&base, "Deployment", "relaunch-coordinator"),
    ];
    let mut checked = 0;
    for workload in workloads {
        let containers = workload["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .unwrap();
        for container in containers {
            let image = container["image"].as_str().unwrap();
            let name = container["name"].as_str().unwrap();
            let (repository, tag) = image.rsplit_once(':').unwrap();
            assert_eq!(
                tag,
                env!("CARGO_PKG_VERSION"),
                "{name} runs the image of this version (manifests/base/kustomization.yaml images:)"
            );
            let mut args = strings(&container["args"]);
            let (flags, env) = if repository.ends_with("/relaunch-agent") {
                &agent_help
            } else if repository.ends_with("/relaunch-coordinator") {
                assert_eq!(
                    args.first().map(String::as_str),
                    Some("run"),
                    "{name}: args"
                );
                args.remove(0);
                &coordinator_help
            } else {
                panic!("{name} runs {image}, which is not a relaunch binary");
            };
            let mut given = BTreeMap::new();
            for arg in &args {
                let Some(flag) = arg.strip_prefix("--") else {
                    continue;
                };
                let (flag, value) = flag.split_once('=').unwrap_or((flag, ""));
                let flag = format!("--{flag}");
                assert!(
                    flags.contains(&flag),
                    "{name} passes {flag}, which the binary does not accept; it accepts {flags:?}"
                );
                given.insert(flag, value.to_string());
                checked += 1;
            }
            let container_env: Vec<&str> = container["env"]
                .as_sequence()
                .map(|s| s.iter().filter_map(|e| e["name"].as_str()).collect())
                .unwrap_or_default();
            for var in container_env {
                let expanded = args.iter().any(|a| a.contains(&format!("$({var})")));
                assert!(
                    env.contains(var) || expanded,
                    "{name} sets {var}, which the binary does not read (help shows env {env:?}) and no argument uses"
                );
            }
            // The probes and the Service reach the ports the flags open.
            let ports: BTreeMap<&str, u64> = container["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap(),
                        p["containerPort"].as_u64().unwrap(),
                    )
                })
                .collect();
            let admin = given
                .get("--admin-listen")
                .unwrap_or_else(|| panic!("{name} sets --admin-listen"));
            assert_eq!(
                ports.get("admin"),
                Some(&port_of(admin)),
                "{name}: admin port"
            );
            if let Some(listen) = given.get("--listen") {
                assert_eq!(
                    ports.get("https"),
                    Some(&port_of(listen)),
                    "{name}: https port"
                );
            }
            for probe in ["livenessProbe", "readinessProbe"] {
                assert_eq!(
                    container[probe]["httpGet"]["port"], "admin",
                    "{name}: {probe}"
                );
            }
        }
    }
    assert!(checked >= 10, "the manifests pass their settings as flags");
}

/// Whether `selector`'s `matchLabels` (and nothing else) selects pods labelled `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(wanted) = selector["matchLabels"].as_mapping() else {
        return false;
    };
    selector.as_mapping().is_some_and(|m| m.len() == 1)
        && !wanted.is_empty()
        && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn only_the_agents_reach_the_report_port_and_the_admin_port_stays_open() {
    let base = objects(&kustomize("manifests/base"));
    let policy = one(&base, "NetworkPolicy", "relaunch-coordinator");
    let coordinator = one(&base, "Deployment", "relaunch-coordinator");
    let agent =
        &one(&base, "DaemonSet", "relaunch-agent")["spec"]["template"]["metadata"]["labels"];
    let pod = &coordinator["spec"]["template"];
    assert!(
        selects(&policy["spec"]["podSelector"], &pod["metadata"]["labels"]),
        "the policy selects the coordinator pods"
    );
    assert_eq!(
        policy["metadata"]["namespace"], coordinator["metadata"]["namespace"],
        "and lives beside them (a podSelector in `from` means this namespace)"
    );
    assert_eq!(strings(&policy["spec"]["policyTypes"]), ["Ingress"]);
    // The container's ports by name and number, as the rules may name either.
    let container = &pod["spec"]["containers"][0];
    let ports: BTreeMap<String, u64> = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    let port_of_rule = |p: &Value| -> u64 {
        p["port"]
            .as_u64()
            .or_else(|| p["port"].as_str().and_then(|n| ports.get(n).copied()))
            .unwrap_or_else(|| panic!("rule port {:?} is not a port of the coordinator", p["port"]))
    };
    // Who may reach each container port: `None` for anyone.
    let mut admitted: BTreeMap<u64, Vec<Option<&Value>>> = BTreeMap::new();
    for rule in policy["spec"]["ingress"].as_sequence().unwrap() {
        let rule_ports = rule["ports"]
            .as_sequence()
            .expect("every rule names its ports (a rule without ports opens all of them)");
        let peers: Vec<Option<&Value>> = match rule["from"].as_sequence() {
            Some(from) => from.iter().map(Some).collect(),
            None => vec![None],
        };
        for p in rule_ports {
            assert_eq!(p["protocol"], "TCP");
            admitted
                .entry(port_of_rule(p))
                .or_default()
                .extend(peers.iter().copied());
        }
    }
    let https = ports["https"];
    let report_peers = &admitted[&https];
    assert!(!report_peers.is_empty(), "the agents reach the report API");
    for peer in report_peers {
        let peer = peer.expect("the report port is not open to everyone");
        assert!(
            peer.get("namespaceSelector").is_none() && peer.get("ipBlock").is_none(),
            "only pods of relaunch's namespace: {peer:?}"
        );
        assert!(
            selects(&peer["podSelector"], agent),
            "only the agent pods: {peer:?}"
        );
    }
    // Prometheus (another namespace) scrapes and the kubelet probes the admin port.
    assert_eq!(admitted.get(&ports["admin"]), Some(&vec![None]));
    assert_eq!(
        admitted.keys().copied().collect::<Vec<_>>(),
        {
            let mut both = vec![https, ports["admin"]];
            both.sort();
            both
        },
        "no other port is opened"
    );
}

#[test]
fn agent_rights_are_read_only_and_its_token_is_only_for_the_coordinator() {
    let base = objects(&kustomize("manifests/base"));
    let agent = one(&base, "DaemonSet", "relaunch-agent");
    let pod = &agent["spec"]["template"]["spec"];
    let account = pod["serviceAccountName"].as_str().unwrap();
    let namespace = agent["metadata"]["namespace"].as_str().unwrap();

    let mut roles = Vec::new();
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        for binding in of_kind(&base, kind) {
            let binds_agent = binding["subjects"].as_sequence().is_some_and(|s| {
                s.iter().any(|subject| {
                    subject["kind"] == "ServiceAccount"
                        && subject["name"] == account
                        && subject["namespace"] == namespace
                })
            });
            if binds_agent {
                let role = &binding["roleRef"];
                roles.push(one(
                    &base,
                    role["kind"].as_str().unwrap(),
                    role["name"].as_str().unwrap(),
                ));
            }
        }
    }
    assert!(!roles.is_empty(), "the agent's account is bound to a role");
    for role in roles {
        for rule in role["rules"].as_sequence().unwrap() {
            for verb in strings(&rule["verbs"]) {
                assert!(
                    ["get", "list", "watch"].contains(&verb.as_str()),
                    "the agent may only read, but {} grants {verb} on {:?}",
                    role["metadata"]["name"].as_str().unwrap(),
                    strings(&rule["resources"])
                );
            }
            assert!(!strings(&rule["resources"]).contains(&"*".to_string()));
        }
    }
    assert!(
        pod["hostNetwork"].is_null() || pod["hostNetwork"] == false,
        "no host network"
    );

    // The coordinator token: audience COORDINATOR_AUDIENCE, at the path --token-file names.
    let container = &pod["containers"][0];
    let args = strings(&container["args"]);
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("the agent sets --{name}"))
            .to_string()
    };
    let token_file = flag("token-file");
    // manifests/README.md's CRI-O patch replaces these by position.
    assert!(args[0].starts_with("--cri-socket="), "{args:?}");
    assert_eq!(pod["volumes"][0]["name"], "cri-socket-dir");
    assert_eq!(container["volumeMounts"][0]["name"], "cri-socket-dir");
    let mut audiences = Vec::new();
    for volume in pod["volumes"].as_sequence().unwrap() {
        for source in volume["projected"]["sources"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            let token = &source["serviceAccountToken"];
            if token.is_null() {
                continue;
            }
            let mount = container["volumeMounts"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|m| m["name"] == volume["name"])
                .expect("the token volume is mounted");
            assert_eq!(
                format!(
                    "{}/{}",
                    mount["mountPath"].as_str().unwrap(),
                    token["path"].as_str().unwrap()
                ),
                token_file
            );
            assert!(token["expirationSeconds"].as_u64().unwrap() <= 3600);
            audiences.push(token["audience"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(audiences, [COORDINATOR_AUDIENCE]);

    let coordinator = one(&base, "Deployment", "relaunch-coordinator");
    let args = strings(&coordinator["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(args.contains(&format!("--audience={COORDINATOR_AUDIENCE}")));
    assert!(args.contains(&format!(
        "--agent-service-account=$(POD_NAMESPACE):{account}"
    )));
}

/// The test bed runs the agent and the coordinator with the identities `manifests/base` makes:
/// the objects it installs are those kustomize renders, of the kinds that grant rights.
#[test]
fn test_bed_identities_are_the_rendered_rbac() {
    let key = |o: &serde_json::Value| {
        format!(
            "{} {}/{}",
            o["kind"].as_str().unwrap_or_default(),
            o["metadata"]["namespace"].as_str().unwrap_or_default(),
            o["metadata"]["name"].as_str().unwrap_or_default()
        )
    };
    let kinds = [
        "Namespace",
        "ServiceAccount",
        "Role",
        "ClusterRole",
        "RoleBinding",
        "ClusterRoleBinding",
    ];
    let mut rendered: Vec<serde_json::Value> = objects(&kustomize("manifests/base"))
        .into_iter()
        .filter(|o| kinds.iter().any(|k| o["kind"] == *k))
        .map(|o| serde_json::to_value(o).unwrap())
        .collect();
    let mut installed = relaunch_testbed::identity_objects().unwrap();
    rendered.sort_by_key(key);
    installed.sort_by_key(key);
    assert_eq!(
        installed.iter().map(key).collect::<Vec<_>>(),
        rendered.iter().map(key).collect::<Vec<_>>()
    );
    assert_eq!(installed, rendered);
}

/// The openssl recipe in manifests/README.md makes a certificate the coordinator serves and the
/// agent's TLS client (rustls with the CA as the only root, as `--coordinator-ca` sets it up)
/// accepts for the Service's name, and only for it.
#[tokio::test]
async fn readme_certificate_recipe_is_trusted_by_the_agent_for_the_service_name() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("skipped: needs openssl");
        return;
    }
    let readme = std::fs::read_to_string(root().join("manifests/README.md")).unwrap();
    let recipe = readme
        .split("```sh\n")
        .filter_map(|block| block.split("```").next())
        .find(|block| block.starts_with("# Makes ca.crt, ca.key, tls.crt and tls.key"))
        .expect("manifests/README.md has the openssl recipe");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", recipe])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "the recipe fails:\n{}", printed(&out));

    let files = relaunch_coordinator::TlsFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    let acceptor =
        relaunch_coordinator::report_api::tls::acceptor(&files).expect("the coordinator loads it");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(dir.path().join("ca.crt")).unwrap()
    {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = acceptor.accept(stream).await;
        }
    });
    let handshake = |name: &'static str| {
        let connector = connector.clone();
        async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from(name).unwrap();
            tokio::time::timeout(Duration::from_secs(10), connector.connect(name, stream))
                .await
                .expect("the handshake ends")
        }
    };
    let service = handshake("relaunch-coordinator.relaunch-system.svc").await;
    let fqdn = handshake("relaunch-coordinator.relaunch-system.svc.cluster.local").await;
    let other = handshake("relaunch-coordinator.other.svc").await;
    server.abort();
    service.expect("the agent trusts the coordinator at the Service's name");
    fqdn.expect("and at its fully qualified name");
    assert!(other.is_err(), "a name outside the certificate is refused");
}

// ---- metrics ---------------------------------------------------------------------------------

/// Metric names selected by a PromQL expression: identifiers that are not functions or
/// aggregations (followed by `(`, or by `by`/`without`), keywords, label names (inside `{}` or in the label list after
/// by/without/on/ignoring/group_left/group_right), strings, numbers or durations (inside `[]`,
/// or after `offset`).
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let skip_spaces = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    // Index after the bracket closing the one at `i`, skipping quoted strings.
    let close = |mut i: usize, open: char, end: char| {
        let mut depth = 0;
        let mut quote = None;
        while i < chars.len() {
            let c = chars[i];
            match quote {
                Some(_) if c == '\\' => i += 1,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' || c == '`' => quote = Some(c),
                None if c == open => depth += 1,
                None if c == end => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                None => {}
            }
            i += 1;
        }
        i
    };
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '{' {
            i = close(i, '{', '}');
        } else if c == '[' {
            i = close(i, '[', ']');
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Numbers, durations (5m), hex and exponents.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_spaces(i);
            let before = chars.get(next).copied();
            let next_word: String = chars[next..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect();
            // `sum by (le) (...)`: an aggregation with its grouping first.
            let aggregation = next_word == "by" || next_word == "without";
            if LABEL_LISTS.contains(&word.as_str()) {
                if before == Some('(') {
                    i = close(next, '(', ')');
                }
            } else if KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
                || before == Some('(')
                || aggregation
            {
                // A keyword, a function or an aggregation.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn promql_metric_names_skip_functions_labels_ranges_and_keywords() {
    let names = promql_metric_names(
        r#"histogram_quantile(0.99, sum by (le, phase) (rate(a_bucket{job="x", l=~"y|z"}[$__rate_interval])))
           / on (node) group_left (pod) b * 60 > bool 1e3 unless c offset 5m or absent(up{j='k'} == 1)
           + sum(d) without (instance) - e:rate5m"#,
    );
    let expected: BTreeSet<String> = ["a_bucket", "b", "c", "d", "e:rate5m", "up"]
        .into_iter()
        .map(str::to_string)
        .collect();
    assert_eq!(names, expected);
}

/// Every PromQL expression in the monitoring manifests: alert rules and dashboard queries.
fn monitoring_expressions() -> Vec<(String, String)> {
    let monitoring = objects(&kustomize("manifests/monitoring"));
    let mut exprs = Vec::new();
    for rule_set in of_kind(&monitoring, "PrometheusRule") {
        for group in rule_set["spec"]["groups"].as_sequence().unwrap() {
            for rule in group["rules"].as_sequence().unwrap() {
                let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap();
                exprs.push((
                    format!("rule {name}"),
                    rule["expr"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    fn walk(value: &serde_json::Value, title: &str, out: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::Object(map) => {
                let title = map.get("title").and_then(|t| t.as_str()).unwrap_or(title);
                if let Some(expr) = map.get("expr").and_then(|e| e.as_str()) {
                    out.push((format!("panel {title:?}"), expr.to_string()));
                }
                for v in map.values() {
                    walk(v, title, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, title, out)),
            _ => {}
        }
    }
    for map in of_kind(&monitoring, "ConfigMap") {
        if map["metadata"]["labels"]["grafana_dashboard"].is_null() {
            continue;
        }
        for (_, json) in map["data"].as_mapping().unwrap() {
            let dashboard: serde_json::Value =
                serde_json::from_str(json.as_str().unwrap()).expect("the dashboard is JSON");
            walk(&dashboard, "", &mut exprs);
        }
    }
    exprs
}

/// A child process killed when the test ends, also on failure.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Metric families in Prometheus text output (from their `# TYPE` lines).
fn families(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Scrapes `admin`'s /metrics once it lists `family`.
async fn scrape(admin: SocketAddr, family: &str, process: &mut Running) -> BTreeSet<String> {
    let found = eventually(
        &format!("/metrics on {admin} to list {family}"),
        Duration::from_secs(30),
        || async {
            let (_, body) = support::http_get(admin, "/metrics")
                .await
                .filter(|(code, _)| *code == 200)?;
            let found = families(&body);
            found.contains(family).then_some(found)
        },
    )
    .await;
    match found {
        Ok(found) => found,
        Err(e) => panic!("{e}; exited: {:?}", process.0.try_wait()),
    }
}

/// Whether a metric named `name` is registered in `registry`: registering another one under
/// the same name fails exactly then.
fn registered(registry: &Registry, name: &str) -> bool {
    let Ok(probe) = prometheus::IntGauge::new(name, "probe: is this name registered?") else {
        return false;
    };
    match registry.register(Box::new(probe.clone())) {
        Ok(()) => {
            let _ = registry.unregister(Box::new(probe));
            false
        }
        Err(_) => true,
    }
}

/// The real binaries are started against the test API server and their /metrics scraped.
/// Prometheus text output leaves out a labelled family until it has a sample (the prometheus
/// crate prunes empty families), and an idle agent with no runtime records none; such names are
/// looked up instead in registries built by the same registration calls the binaries make at
/// start (`AgentMetrics::register`, `CriMetrics::register`, `coordinator::Context::new`, on the
/// admin registry with process metrics). `_bucket`, `_sum` and `_count` name a histogram's
/// series; Prometheus' own series (`up`, ...) are not looked for.
#[tokio::test(flavor = "multi_thread")]
async fn alerts_and_dashboard_query_only_metrics_the_binaries_export() {
    let exprs = monitoring_expressions();
    assert!(exprs.len() >= 20, "rules and panels found: {exprs:?}");

    let api = TestApi::with_relaunch_crds().await;
    let coordinator_kubeconfig = api.relaunch_kubeconfig(Component::Coordinator).await;
    let agent_kubeconfig = api.relaunch_kubeconfig(Component::Agent).await;
    let local = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let (listen, coordinator_admin, agent_admin) = (
        local(free_port(Ipv4Addr::LOCALHOST).unwrap()),
        local(free_port(Ipv4Addr::LOCALHOST).unwrap()),
        local(free_port(Ipv4Addr::LOCALHOST).unwrap()),
    );
    let spawn = |command: &mut Command| {
        Running(
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut coordinator = spawn(
        Command::new(binaries().coordinator)
            .arg("run")
            .arg("--kubeconfig")
            .arg(&coordinator_kubeconfig)
            .arg(format!("--listen={listen}"))
            .arg(format!("--admin-listen={coordinator_admin}")),
    );
    // No runtime socket: the agent keeps retrying it and serves its admin port meanwhile.
    let mut agent = spawn(
        Command::new(binaries().agent)
            .args(["--node-name", "node-a"])
            .arg("--kubeconfig")
            .arg(&agent_kubeconfig)
            .arg("--cri-socket")
            .arg(api.dir().join("no-runtime.sock"))
            .arg(format!("--coordinator-url=http://{listen}"))
            .arg("--token-file")
            .arg(api.dir().join("token"))
            .arg("--state-dir")
            .arg(api.dir().join("state"))
            .arg(format!("--admin-listen={agent_admin}")),
    );
    let mut scraped = scrape(
        coordinator_admin,
        "relaunch_rollouts_active",
        &mut coordinator,
    )
    .await;
    scraped.extend(
        scrape(
            agent_admin,
            "relaunch_agent_recreates_in_flight",
            &mut agent,
        )
        .await,
    );
    drop((agent, coordinator));

    let registry = relaunch_telemetry::admin::registry_with_process_metrics();
    relaunch_agent::AgentMetrics::register(&registry).unwrap();
    relaunch_cri::CriMetrics::register(&registry).unwrap();
    let coordinator_registry = relaunch_telemetry::admin::registry_with_process_metrics();
    relaunch_coordinator::Context::new(
        api.client.clone(),
        relaunch_coordinator::Settings::default(),
        &coordinator_registry,
    )
    .unwrap();
    // A histogram's series name its family with a suffix.
    let exported = |name: &str| -> Option<&'static str> {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix));
        let candidates: Vec<&str> = std::iter::once(name).chain(family).collect();
        if candidates.iter().any(|c| scraped.contains(*c)) {
            Some("scraped")
        } else if candidates
            .iter()
            .any(|c| registered(&registry, c) || registered(&coordinator_registry, c))
        {
            Some("registered")
        } else {
            None
        }
    };

    let mut missing = Vec::new();
    let mut found = BTreeMap::new();
    for (source, expr) in &exprs {
        let names = promql_metric_names(expr);
        assert!(!names.is_empty(), "{source} selects no metric: {expr}");
        for name in names {
            if PROMETHEUS_BUILTINS.contains(&name.as_str()) {
                continue;
            }
            match exported(&name) {
                Some(how) => {
                    found.insert(name, how);
                }
                None => missing.push(format!("{source}: {name}")),
            }
        }
    }
    eprintln!("metrics queried by the monitoring manifests: {found:?}");
    assert!(
        missing.is_empty(),
        "metrics the binaries do not export:\n{}",
        missing.join("\n")
    );
    assert!(
        found.values().any(|how| *how == "scraped"),
        "some names were confirmed from a live /metrics"
    );
    api.server.shutdown().await;
}
