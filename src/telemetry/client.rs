//! Connecting to the Kubernetes API: an explicit kubeconfig file, else what kube-rs infers
//! (`KUBECONFIG`, `~/.kube/config`, or the in-cluster service account).

use std::path::Path;

/// A client for the cluster; the error says which configuration failed and why.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("bad kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes configuration found: {e}"))?,
    };
    kube::Client::try_from(config).map_err(|e| format!("cannot create the Kubernetes client: {e}"))
}
