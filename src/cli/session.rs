//! The user's cluster, as kubectl would pick it: `--kubeconfig`, else `KUBECONFIG`, else
//! `~/.kube/config` (else the in-cluster service account); `--context`; `-n`, else the
//! context's namespace, else `default`. Also turns API errors into [`CliError`]s.

use std::future::Future;
use std::path::{Path, PathBuf};

use kube::Resource;
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::error::{CliError, root_cause};
use relaunch_api::ContainerRecreateRequest;

/// What the command line says about the cluster to use.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Cluster options")]
pub struct ClusterArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The namespace (default: the context's namespace, else "default").
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

/// A connected client, the namespace commands act in, and the server for messages.
pub struct Session {
    pub client: kube::Client,
    pub namespace: String,
    pub server: String,
}

/// A resource as the API names it and as a person says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceKind {
    /// The resource (plural), e.g. `pods`.
    pub plural: &'static str,
    /// The kind as a person says it, e.g. `pod`.
    pub kind: &'static str,
}

pub const PODS: ResourceKind = ResourceKind {
    plural: "pods",
    kind: "pod",
};
pub const REQUESTS: ResourceKind = ResourceKind {
    plural: "containerrecreaterequests",
    kind: "containerrecreaterequest",
};
pub const ROLLOUTS: ResourceKind = ResourceKind {
    plural: "rollingrestarts",
    kind: "rollingrestart",
};
pub const STATEFULSETS: ResourceKind = ResourceKind {
    plural: "statefulsets",
    kind: "statefulset",
};
pub const DEPLOYMENTS: ResourceKind = ResourceKind {
    plural: "deployments",
    kind: "deployment",
};
pub const DAEMONSETS: ResourceKind = ResourceKind {
    plural: "daemonsets",
    kind: "daemonset",
};
pub const REPLICASETS: ResourceKind = ResourceKind {
    plural: "replicasets",
    kind: "replicaset",
};

/// One API call, described for error messages.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub verb: &'static str,
    pub resource: ResourceKind,
    pub name: Option<&'a str>,
    /// `None`: all namespaces.
    pub namespace: Option<&'a str>,
}

impl<'a> Call<'a> {
    pub fn get(resource: ResourceKind, name: &'a str, namespace: &'a str) -> Self {
        Self::on("get", resource, Some(name), Some(namespace))
    }

    pub fn patch(resource: ResourceKind, name: &'a str, namespace: &'a str) -> Self {
        Self::on("patch", resource, Some(name), Some(namespace))
    }

    pub fn create(resource: ResourceKind, namespace: &'a str) -> Self {
        Self::on("create", resource, None, Some(namespace))
    }

    /// Listing in `namespace`, or in all namespaces.
    pub fn list(resource: ResourceKind, namespace: Option<&'a str>) -> Self {
        Self::on("list", resource, None, namespace)
    }

    pub fn watch(resource: ResourceKind, name: &'a str, namespace: &'a str) -> Self {
        Self::on("watch", resource, Some(name), Some(namespace))
    }

    fn on(
        verb: &'static str,
        resource: ResourceKind,
        name: Option<&'a str>,
        namespace: Option<&'a str>,
    ) -> Self {
        Self {
            verb,
            resource,
            name,
            namespace,
        }
    }
}

impl Session {
    /// Loads the configuration and builds a client (no request is made yet).
    pub async fn connect(args: &ClusterArgs) -> Result<Self, CliError> {
        let options = KubeConfigOptions {
            context: args.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match kubeconfig(args.kubeconfig.as_deref())? {
            Some((kubeconfig, source)) => kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| CliError::Config(format!("kubeconfig {source}: {e}")))?,
            None if args.context.is_some() => {
                return Err(CliError::Config(
                    "--context needs a kubeconfig: pass --kubeconfig or set KUBECONFIG".into(),
                ));
            }
            None => kube::Config::incluster().map_err(|_| {
                CliError::Config(
                    "no kubeconfig found: pass --kubeconfig, set KUBECONFIG, or create ~/.kube/config"
                        .into(),
                )
            })?,
        };
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let server = config.cluster_url.to_string();
        let server = server.trim_end_matches('/').to_string();
        let client = kube::Client::try_from(config)
            .map_err(|e| CliError::Config(format!("cannot set up the Kubernetes client: {e}")))?;
        Ok(Self {
            client,
            namespace,
            server,
        })
    }

    /// Awaits `request`, explaining a failure in terms of `call`.
    pub async fn call<T>(
        &self,
        call: Call<'_>,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, CliError> {
        match request.await {
            Ok(value) => Ok(value),
            Err(error) => Err(self.explain(error, &call).await),
        }
    }

    /// Turns a failed call into the error a user can act on. A 404 on one of relaunch's own
    /// resources is checked against discovery: the CRD may not be installed at all.
    pub async fn explain(&self, error: kube::Error, call: &Call<'_>) -> CliError {
        let status = match error {
            kube::Error::Api(status) => status,
            kube::Error::HyperError(e) => {
                return CliError::Unreachable {
                    server: self.server.clone(),
                    reason: root_cause(&e),
                };
            }
            kube::Error::Service(e) => {
                return CliError::Unreachable {
                    server: self.server.clone(),
                    reason: root_cause(e.as_ref()),
                };
            }
            kube::Error::Auth(e) => {
                return CliError::Config(format!(
                    "cannot authenticate to {}: {}",
                    self.server,
                    root_cause(&e)
                ));
            }
            other => {
                return CliError::Api {
                    what: describe(call),
                    message: root_cause(&other),
                };
            }
        };
        match status.code {
            401 => CliError::Unauthorized {
                server: self.server.clone(),
            },
            403 if !is_rbac_denial(&status.message) => CliError::Api {
                what: describe(call),
                message: refusal(&status.message),
            },
            403 => CliError::Forbidden {
                verb: call.verb.to_string(),
                resource: call.resource.plural.to_string(),
                scope: match call.namespace {
                    Some(ns) => format!("in namespace {ns}"),
                    None => "in all namespaces".into(),
                },
            },
            404 if is_relaunch(call.resource) && !self.installed(call.resource.plural).await => {
                CliError::NotInstalled {
                    resource: call.resource.plural.to_string(),
                }
            }
            404 if call.name.is_some() => CliError::NotFound {
                kind: call.resource.kind.to_string(),
                name: call.name.unwrap_or_default().to_string(),
                namespace: call.namespace.unwrap_or_default().to_string(),
            },
            _ => CliError::Api {
                what: describe(call),
                message: if status.message.is_empty() {
                    format!("{} {}", status.code, status.reason)
                } else {
                    refusal(&status.message)
                },
            },
        }
    }

    /// Whether the API server serves relaunch's `resource`; true when discovery itself fails
    /// for another reason (the original error is then the better one to show).
    async fn installed(&self, resource: &str) -> bool {
        let group_version = ContainerRecreateRequest::api_version(&());
        match self.client.list_api_group_resources(&group_version).await {
            Ok(list) => list.resources.iter().any(|r| r.name == resource),
            Err(kube::Error::Api(status)) => status.code != 404,
            Err(_) => true,
        }
    }
}

/// Whether a 403's message is RBAC's (`... is forbidden: User "..." cannot create resource ...`)
/// rather than an admission policy's refusal, which says what to change.
fn is_rbac_denial(message: &str) -> bool {
    message.contains("is forbidden: User ") && !message.contains("ValidatingAdmissionPolicy")
}

/// The API server's refusal as one line: an admission policy's denial as the policy's own
/// message and name (`... (ValidatingAdmissionPolicy NAME)`), a schema's 422 as its field
/// errors; newlines become spaces.
pub fn refusal(message: &str) -> String {
    let one_line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let policy = one_line
        .split_once("ValidatingAdmissionPolicy '")
        .and_then(|(_, rest)| rest.split_once('\''))
        .map(|(name, _)| name.to_string());
    match (policy, one_line.split_once(" denied request: ")) {
        (Some(policy), Some((_, reason))) => {
            format!("{reason} (ValidatingAdmissionPolicy {policy})")
        }
        _ => one_line,
    }
}

fn is_relaunch(resource: ResourceKind) -> bool {
    resource == REQUESTS || resource == ROLLOUTS
}

fn describe(call: &Call<'_>) -> String {
    let target = match call.name {
        Some(name) => format!("{} {name}", call.resource.kind),
        None => call.resource.plural.to_string(),
    };
    match call.namespace {
        Some(ns) => format!("{} {target} in namespace {ns}", call.verb),
        None => format!("{} {target} in all namespaces", call.verb),
    }
}

/// The kubeconfig to use and where it came from, or `None` when there is none at all.
fn kubeconfig(flag: Option<&Path>) -> Result<Option<(Kubeconfig, String)>, CliError> {
    if let Some(path) = flag {
        let config = Kubeconfig::read_from(path).map_err(|e| {
            CliError::Config(format!("cannot read kubeconfig {}: {e}", path.display()))
        })?;
        return Ok(Some((config, path.display().to_string())));
    }
    match Kubeconfig::from_env() {
        Ok(Some(config)) => return Ok(Some((config, "named by KUBECONFIG".into()))),
        Ok(None) => {}
        Err(e) => {
            return Err(CliError::Config(format!(
                "cannot read the kubeconfig named by KUBECONFIG: {e}"
            )));
        }
    }
    let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) else {
        return Ok(None);
    };
    let path = Path::new(&home).join(".kube").join("config");
    if !path.exists() {
        return Ok(None);
    }
    let config = Kubeconfig::read_from(&path)
        .map_err(|e| CliError::Config(format!("cannot read kubeconfig {}: {e}", path.display())))?;
    Ok(Some((config, path.display().to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admission_policys_refusal_is_its_message_and_name_on_one_line() {
        let message = "containerrecreaterequests.relaunch.dev \"r\" is forbidden: ValidatingAdmissionPolicy 'relaunch-request-exec-needs-pods-exec' with binding 'relaunch-request-exec-needs-pods-exec' denied request: bot may not create pods/exec on pod shop/db-0";
        assert!(!is_rbac_denial(message));
        assert_eq!(
            refusal(message),
            "bot may not create pods/exec on pod shop/db-0 (ValidatingAdmissionPolicy relaunch-request-exec-needs-pods-exec)"
        );
        let rbac = "containerrecreaterequests.relaunch.dev is forbidden: User \"bot\" cannot create resource \"containerrecreaterequests\" in API group \"relaunch.dev\" in the namespace \"shop\"";
        assert!(is_rbac_denial(rbac));
        let invalid = "ContainerRecreateRequest.relaunch.dev \"r\" is invalid: [spec.podName: Invalid value: \"DB\",\n spec.containers: Required value]";
        assert_eq!(
            refusal(invalid),
            "ContainerRecreateRequest.relaunch.dev \"r\" is invalid: [spec.podName: Invalid value: \"DB\", spec.containers: Required value]"
        );
    }
}
