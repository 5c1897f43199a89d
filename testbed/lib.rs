//! Development-only test bed: a private containerd with the local test image, a test Kubernetes
//! API server, workload controllers and a scheduler, kubelet simulators, the Service network
//! (ClusterIP proxy and cluster DNS on loopback), and the sandbox that
//! runs them all (with relaunch's own binaries as real processes). A dev-dependency of the
//! tests and benchmarks; never part of the production binaries.
//!
//! The public surface is what this file re-exports plus the [`pod`] module (CRI pods made the
//! way the kubelet makes them); everything else is internal. docs/testbed.md describes it.

mod apiserver;
mod containerd;
mod controllers;
mod deploy;
mod image;
mod kubelet;
mod network;
pub mod pod;
mod processes;
mod sandbox;

pub use apiserver::{
    API_AUDIENCE, ApiServer, FaultCounts, FaultRates, Faults, ObjectRequest, RequestKind,
    ServiceRange, client_for, kubeconfig,
};
pub use containerd::Containerd;
pub use controllers::Controllers;
pub use deploy::{
    AGENT_DAEMONSET, COORDINATOR_DEPLOYMENT, overlay as deploy_overlay, sandbox_image,
};
pub use image::{IMAGE_USER, TEST_IMAGE, build_relaunch_images};
pub use kubelet::{CrashLoopBackoff, Kubelet, KubeletConfig};
pub use network::{CLUSTER_DOMAIN, ServiceNetwork, SpreadConfig, SpreadCounts, SpreadingProxy};
pub use processes::{
    Binaries, COORDINATOR_LEASE, Component, ManagedProcess, RELAUNCH_NAMESPACE, admission_objects,
    component_kubeconfig, free_port, identity_objects, install_admission_policies,
    install_identities,
};
pub use sandbox::{Sandbox, SandboxConfig, SimulatedNode};

use relaunch_cri::CriError;

/// Why the test bed could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// A prerequisite is missing or the environment is unsuitable; the message says what to do.
    #[error("{0}")]
    Setup(String),
    /// A condition a test waited for did not come true in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error(transparent)]
    Cri(#[from] CriError),
    #[error("CRI call failed: {0}")]
    Grpc(#[from] tonic::Status),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Polls `check` until it yields a value or `timeout` passes; then fails naming `what`.
/// Tests wait on conditions with this instead of sleeping.
pub async fn eventually<T, F, Fut>(
    what: &str,
    timeout: std::time::Duration,
    mut check: F,
) -> Result<T, TestbedError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(TestbedError::Timeout(format!("{what} ({timeout:?})")));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Registers relaunch's CRDs, generated from the Rust types (those already there are kept).
pub async fn install_crds(client: &kube::Client) -> Result<(), TestbedError> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, PostParams};
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, yaml) in relaunch_api::crd_manifests() {
        let crd: CustomResourceDefinition = serde_yaml::from_str(&yaml)
            .map_err(|e| TestbedError::Setup(format!("generated CRD does not parse: {e}")))?;
        match crds.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(TestbedError::Setup(format!("installing CRDs: {e}"))),
        }
    }
    Ok(())
}

/// The last `lines` lines of a log, for error messages.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
