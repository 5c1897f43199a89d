//! relaunch deployed the way users deploy it (`relaunch-sandbox up --deploy`): its images built
//! from binaries cargo already made and imported into the sandbox's containerd, the TLS Secret
//! and CA ConfigMap made by the recipe in manifests/README.md, and `kubectl apply -k` of
//! `manifests/base` through a sandbox overlay that changes only what overlays are for (image
//! names, and the listen addresses: pods here share the host's network, so every pod listens on
//! its own node's address instead of 0.0.0.0).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use kube::api::Api;

use crate::image::build_relaunch_images;
use crate::processes::{Binaries, RELAUNCH_NAMESPACE};
use crate::{Containerd, TestbedError, eventually};

/// The repository's manifests directory (`manifests/base`, `manifests/README.md`).
const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests");

/// The image names `manifests/base` uses; the overlay replaces them.
pub const BASE_AGENT_IMAGE: &str = "ghcr.io/relaunch-dev/relaunch-agent";
pub const BASE_COORDINATOR_IMAGE: &str = "ghcr.io/relaunch-dev/relaunch-coordinator";
/// What the sandbox builds and imports instead (name and tag).
pub const SANDBOX_IMAGE_REPOSITORY: &str = "relaunch.test";
pub const SANDBOX_IMAGE_TAG: &str = "sandbox";

/// The DaemonSet and Deployment `manifests/base` creates.
pub const AGENT_DAEMONSET: &str = "relaunch-agent";
pub const COORDINATOR_DEPLOYMENT: &str = "relaunch-coordinator";

/// `relaunch.test/<name>:sandbox`.
pub fn sandbox_image(component: &str) -> String {
    format!("{SANDBOX_IMAGE_REPOSITORY}/{component}:{SANDBOX_IMAGE_TAG}")
}

/// The images `up --deploy` imports: the agent's and the coordinator's.
pub fn sandbox_images() -> Vec<String> {
    vec![
        sandbox_image("relaunch-agent"),
        sandbox_image("relaunch-coordinator"),
    ]
}

/// Builds relaunch's images from `binaries` into `dir/relaunch-images.tar` and imports them into
/// `containerd`; returns the size of the archive in bytes (one layer shared by both images).
pub fn build_and_import(
    containerd: &Containerd,
    binaries: &Binaries,
    dir: &Path,
) -> Result<u64, TestbedError> {
    let archive = dir.join("relaunch-images.tar");
    build_relaunch_images(
        &[
            (sandbox_image("relaunch-agent"), binaries.agent.clone()),
            (
                sandbox_image("relaunch-coordinator"),
                binaries.coordinator.clone(),
            ),
        ],
        &archive,
    )?;
    containerd.import(&archive)?;
    let size = std::fs::metadata(&archive)?.len();
    // The runtime keeps its own copy.
    let _ = std::fs::remove_file(&archive);
    Ok(size)
}

/// The sandbox overlay of `manifests/base`: the sandbox's image names, and every listener on the
/// pod's IP (`status.podIP`, the node's loopback address) instead of 0.0.0.0, because pods
/// share the host's network here and two pods on one port would collide. The `test` operations
/// make a changed base fail loudly instead of patching the wrong argument.
pub fn overlay(base: &Path) -> String {
    let pod_ip = r#"{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}"#;
    format!(
        r#"# Written by relaunch-sandbox up --deploy: manifests/base as the sandbox runs it.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {base}
images:
  - name: {BASE_AGENT_IMAGE}
    newName: {SANDBOX_IMAGE_REPOSITORY}/relaunch-agent
    newTag: {SANDBOX_IMAGE_TAG}
  - name: {BASE_COORDINATOR_IMAGE}
    newName: {SANDBOX_IMAGE_REPOSITORY}/relaunch-coordinator
    newTag: {SANDBOX_IMAGE_TAG}
patches:
  - target: {{kind: DaemonSet, name: {AGENT_DAEMONSET}}}
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {pod_ip}
      - op: test
        path: /spec/template/spec/containers/0/args/5
        value: --admin-listen=0.0.0.0:9090
      - op: replace
        path: /spec/template/spec/containers/0/args/5
        value: --admin-listen=$(POD_IP):9090
  - target: {{kind: Deployment, name: {COORDINATOR_DEPLOYMENT}}}
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {pod_ip}
      - op: test
        path: /spec/template/spec/containers/0/args/1
        value: --listen=0.0.0.0:8443
      - op: replace
        path: /spec/template/spec/containers/0/args/1
        value: --listen=$(POD_IP):8443
      - op: test
        path: /spec/template/spec/containers/0/args/4
        value: --admin-listen=0.0.0.0:8080
      - op: replace
        path: /spec/template/spec/containers/0/args/4
        value: --admin-listen=$(POD_IP):8080
"#,
        base = base.display()
    )
}

/// Runs a `bash` block with `KUBECONFIG` set, off the runtime's threads (kubectl talks to the
/// API server this runtime serves).
async fn bash(script: String, dir: PathBuf, kubeconfig: PathBuf) -> Result<Output, TestbedError> {
    tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(dir)
            .env("KUBECONFIG", kubeconfig)
            .output()
    })
    .await
    .map_err(|e| TestbedError::Setup(format!("running a command: {e}")))?
    .map_err(|e| TestbedError::Setup(format!("cannot run bash: {e}")))
}

fn check(what: &str, out: Output) -> Result<String, TestbedError> {
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(TestbedError::Setup(format!(
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )))
}

/// The `sh` block of manifests/README.md that starts with `first_line`.
fn readme_block(first_line: &str) -> Result<String, TestbedError> {
    let path = Path::new(MANIFESTS).join("README.md");
    let readme = std::fs::read_to_string(&path)
        .map_err(|e| TestbedError::Setup(format!("cannot read {}: {e}", path.display())))?;
    readme
        .split("```sh\n")
        .filter_map(|block| block.split("```").next())
        .find(|block| block.starts_with(first_line))
        .map(str::to_string)
        .ok_or_else(|| {
            TestbedError::Setup(format!(
                "manifests/README.md has no sh block starting with {first_line:?}"
            ))
        })
}

/// Installs relaunch on the sandbox as manifests/README.md says: the certificate recipe
/// (openssl), the Secret and ConfigMap (kubectl), then `kubectl apply -k` of the sandbox
/// overlay; files go under `dir/deploy`. Returns kubectl's output.
pub async fn install(dir: &Path, kubeconfig: &Path) -> Result<String, TestbedError> {
    let work = dir.join("deploy");
    let tls = work.join("tls");
    let overlay_dir = work.join("overlay");
    std::fs::create_dir_all(&tls)?;
    std::fs::create_dir_all(&overlay_dir)?;
    let recipe = readme_block("# Makes ca.crt, ca.key, tls.crt and tls.key")?;
    check(
        "the certificate recipe of manifests/README.md",
        bash(recipe, tls.clone(), kubeconfig.to_path_buf()).await?,
    )?;
    let create = readme_block("kubectl create namespace relaunch-system")?;
    check(
        "creating the Secret and ConfigMap as manifests/README.md says",
        bash(create, tls.clone(), kubeconfig.to_path_buf()).await?,
    )?;
    // Kustomize takes only relative paths to a base.
    let base = relative(
        &std::fs::canonicalize(&overlay_dir)?,
        &std::fs::canonicalize(Path::new(MANIFESTS).join("base"))?,
    );
    std::fs::write(overlay_dir.join("kustomization.yaml"), overlay(&base))?;
    check(
        "kubectl apply -k (manifests/base through the sandbox overlay)",
        bash(
            format!("kubectl apply -k {}", overlay_dir.display()),
            work.clone(),
            kubeconfig.to_path_buf(),
        )
        .await?,
    )
}

/// `to` relative to `from` (both absolute and canonical): `../..` up to their common ancestor,
/// then down.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for part in &to[common..] {
        path.push(part);
    }
    path
}

/// Waits until the agent DaemonSet has a Ready pod on each of `nodes` nodes and the coordinator
/// Deployment has all of its replicas Ready, as `kubectl rollout status` would report them.
pub async fn wait_ready(
    client: &kube::Client,
    nodes: usize,
    timeout: Duration,
) -> Result<(), TestbedError> {
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), RELAUNCH_NAMESPACE);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), RELAUNCH_NAMESPACE);
    let want = i32::try_from(nodes).unwrap_or(i32::MAX);
    eventually(
        "the agent DaemonSet and the coordinator Deployment to be Ready",
        timeout,
        || async {
            let ds = daemonsets.get(AGENT_DAEMONSET).await.ok()?;
            let deploy = deployments.get(COORDINATOR_DEPLOYMENT).await.ok()?;
            let ds_status = ds.status?;
            let replicas = deploy.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let deploy_status = deploy.status?;
            (ds_status.desired_number_scheduled == want
                && ds_status.number_ready == want
                && deploy_status.ready_replicas == Some(replicas)
                && deploy_status.updated_replicas == Some(replicas))
            .then_some(())
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_to_the_common_ancestor() {
        assert_eq!(
            relative(
                Path::new("/tmp/s/deploy/overlay"),
                Path::new("/work/m/manifests/base")
            ),
            PathBuf::from("../../../../work/m/manifests/base")
        );
    }

    #[test]
    fn the_overlay_names_the_sandbox_images() {
        let text = overlay(Path::new("/repo/manifests/base"));
        let value: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(value["resources"][0], "/repo/manifests/base");
        assert_eq!(
            value["images"][0]["newName"],
            "relaunch.test/relaunch-agent"
        );
        assert_eq!(value["images"][1]["newTag"], SANDBOX_IMAGE_TAG);
    }
}
