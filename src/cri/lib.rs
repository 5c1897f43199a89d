//! Client for the node's container runtime (CRI gRPC over a unix socket).
//!
//! The agent uses it to find a pod's containers by the kubelet's labels, run graceful shutdown
//! commands (`ExecSync`) and stop containers so the kubelet restarts them. Every call is bounded by
//! a deadline and recorded in [`CriMetrics`].

mod container;
mod error;
mod metrics;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint};

pub use container::{
    ContainerDetails, ContainerState, ContainerSummary, ExecOutput, KubeletAnnotations,
    PodContainerRef, annotations, labels,
};
pub use error::CriError;
pub use metrics::CriMetrics;

/// The sockets of containerd, CRI-O and cri-dockerd at their usual paths, in the order tried.
pub const WELL_KNOWN_SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
    "/run/k3s/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/var/run/crio/crio.sock",
    "/run/cri-dockerd.sock",
    "/var/run/cri-dockerd.sock",
];

/// Extra gRPC deadline on top of a stop's grace period, as the kubelet uses: if the caller's
/// deadline expired first, containerd would return without ever sending SIGKILL.
pub const STOP_DEADLINE_MARGIN: Duration = Duration::from_secs(120);

/// Extra gRPC deadline on top of an exec's own timeout, so the runtime's timeout fires first and
/// the exec'd process is killed by the runtime.
const EXEC_DEADLINE_MARGIN: Duration = Duration::from_secs(30);
/// After a stop that failed, how long the container's state is read for the exit the runtime
/// may not have recorded yet, and how often.
const EXIT_SETTLE: Duration = Duration::from_secs(5);
const EXIT_POLL: Duration = Duration::from_millis(50);

/// containerd caps each of stdout and stderr at 16 MiB; leave room for both plus framing.
const MAX_RESPONSE_BYTES: usize = 40 * 1024 * 1024;

/// Timeouts of a [`RuntimeClient`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Bound on opening the socket and the first `Version` call.
    pub connect_timeout: Duration,
    /// Bound on ordinary calls (list, status, version).
    pub request_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Name and version the runtime reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeVersion {
    pub runtime_name: String,
    pub runtime_version: String,
    pub runtime_api_version: String,
}

/// A connected CRI runtime service client. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct RuntimeClient {
    socket: PathBuf,
    runtime: RuntimeServiceClient<Channel>,
    config: ClientConfig,
    metrics: CriMetrics,
}

impl std::fmt::Debug for RuntimeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeClient")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl RuntimeClient {
    /// Connects to the runtime at `socket` and checks that it answers CRI `Version`.
    pub async fn connect(
        socket: impl Into<PathBuf>,
        config: ClientConfig,
        metrics: CriMetrics,
    ) -> Result<Self, CriError> {
        let socket = socket.into();
        check_socket_file(&socket)?;
        // Dial once by hand so that missing, refused and forbidden sockets get their own error;
        // past this point, a socket that fails to speak CRI is not a CRI runtime.
        tokio::time::timeout(
            config.connect_timeout,
            tokio::net::UnixStream::connect(&socket),
        )
        .await
        .map_err(|_| CriError::Unavailable {
            path: socket.clone(),
            detail: format!("connect did not finish within {:?}", config.connect_timeout),
        })?
        .map_err(|e| error::from_connect_io(&socket, &e))?;
        let not_cri = |detail: String| CriError::NotCriRuntime {
            path: socket.clone(),
            detail,
        };
        let channel = tokio::time::timeout(config.connect_timeout, open_channel(&socket))
            .await
            .map_err(|_| {
                not_cri(format!(
                    "no gRPC answer within {:?}",
                    config.connect_timeout
                ))
            })??;
        let runtime = RuntimeServiceClient::new(channel)
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
            .max_encoding_message_size(MAX_RESPONSE_BYTES);
        let client = Self {
            socket,
            runtime,
            config,
            metrics,
        };
        match client.version_within(client.config.connect_timeout).await {
            Ok(_) => Ok(client),
            Err(e @ (CriError::NotCriRuntime { .. } | CriError::PermissionDenied { .. })) => Err(e),
            Err(e) => Err(CriError::NotCriRuntime {
                path: client.socket.clone(),
                detail: format!("no CRI answer to Version: {e}"),
            }),
        }
    }

    /// Connects to the first of `candidates` that answers CRI `Version`.
    pub async fn detect(
        candidates: &[PathBuf],
        config: ClientConfig,
        metrics: CriMetrics,
    ) -> Result<Self, CriError> {
        let mut tried = Vec::new();
        for path in candidates {
            match Self::connect(path.clone(), config.clone(), metrics.clone()).await {
                Ok(client) => return Ok(client),
                Err(CriError::SocketMissing { .. }) => {
                    tried.push(format!("{} (missing)", path.display()))
                }
                Err(e) => tried.push(format!("{} ({})", path.display(), e.reason())),
            }
        }
        Err(CriError::NoRuntimeFound {
            tried: tried.join(", "),
        })
    }

    /// Connects to the first well-known runtime socket that answers.
    pub async fn detect_default(
        config: ClientConfig,
        metrics: CriMetrics,
    ) -> Result<Self, CriError> {
        let candidates: Vec<PathBuf> = WELL_KNOWN_SOCKETS.iter().map(PathBuf::from).collect();
        Self::detect(&candidates, config, metrics).await
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The generated gRPC client, for callers that need CRI calls this type does not wrap
    /// (the test bed's kubelet simulator). Calls made through it are not instrumented.
    pub fn raw(&self) -> RuntimeServiceClient<Channel> {
        self.runtime.clone()
    }

    /// The runtime's name and version.
    pub async fn version(&self) -> Result<RuntimeVersion, CriError> {
        self.version_within(self.config.request_timeout).await
    }

    async fn version_within(&self, deadline: Duration) -> Result<RuntimeVersion, CriError> {
        let v = self
            .call("Version", "", deadline, |mut c| async move {
                c.version(cri::VersionRequest {
                    version: "v1".into(),
                })
                .await
            })
            .await
            .map_err(|e| match e {
                CriError::Runtime {
                    code: tonic::Code::Unimplemented | tonic::Code::Internal | tonic::Code::Unknown,
                    message,
                    ..
                } => CriError::NotCriRuntime {
                    path: self.socket.clone(),
                    detail: format!("Version failed: {message}"),
                },
                other => other,
            })?;
        Ok(RuntimeVersion {
            runtime_name: v.runtime_name,
            runtime_version: v.runtime_version,
            runtime_api_version: v.runtime_api_version,
        })
    }

    /// The containers of pod `pod_uid` (optionally only those named `container_name`), newest
    /// attempt first, including exited instances the kubelet kept.
    pub async fn pod_containers(
        &self,
        pod_uid: &str,
        container_name: Option<&str>,
    ) -> Result<Vec<ContainerSummary>, CriError> {
        let mut selector = std::collections::HashMap::new();
        selector.insert(labels::POD_UID.to_string(), pod_uid.to_string());
        if let Some(name) = container_name {
            selector.insert(labels::CONTAINER_NAME.to_string(), name.to_string());
        }
        let request = cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                label_selector: selector,
                ..Default::default()
            }),
        };
        let response = self
            .call(
                "ListContainers",
                "",
                self.config.request_timeout,
                |mut c| async move { c.list_containers(request).await },
            )
            .await?;
        let mut containers: Vec<ContainerSummary> = response
            .containers
            .into_iter()
            .map(ContainerSummary::from)
            .collect();
        // Runtimes filter by label already; checking again keeps a lax runtime from handing us
        // another pod's container.
        containers.retain(|c| {
            c.owner.pod_uid == pod_uid && container_name.is_none_or(|n| c.owner.container_name == n)
        });
        containers.sort_by(|a, b| {
            b.attempt
                .cmp(&a.attempt)
                .then_with(|| b.created_at.cmp(&a.created_at))
        });
        Ok(containers)
    }

    /// The status of container `id`.
    pub async fn container_status(&self, id: &str) -> Result<ContainerDetails, CriError> {
        let request = cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        let response = self
            .call(
                "ContainerStatus",
                id,
                self.config.request_timeout,
                |mut c| async move { c.container_status(request).await },
            )
            .await?;
        response
            .status
            .map(ContainerDetails::from)
            .ok_or_else(|| CriError::NotFound {
                path: self.socket.clone(),
                id: id.to_string(),
            })
    }

    /// Runs `cmd` in container `id` and waits for it, at most `timeout` (rounded up to whole
    /// seconds, at least one). stdout and stderr are each cut to `max_output` bytes.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
        max_output: usize,
    ) -> Result<ExecOutput, CriError> {
        let seconds = whole_seconds(timeout).max(1);
        let request = cri::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.to_vec(),
            timeout: seconds as i64,
        };
        let deadline = Duration::from_secs(seconds) + EXEC_DEADLINE_MARGIN;
        let response = self
            .call("ExecSync", id, deadline, |mut c| async move {
                c.exec_sync(request).await
            })
            .await
            .map_err(|e| match e {
                // containerd reports its own exec timeout as DeadlineExceeded after killing the process.
                CriError::Runtime {
                    code: tonic::Code::DeadlineExceeded,
                    ..
                } => CriError::ExecTimedOut {
                    path: self.socket.clone(),
                    id: id.to_string(),
                    timeout: Duration::from_secs(seconds),
                },
                other => other,
            })?;
        let truncated = response.stdout.len() > max_output || response.stderr.len() > max_output;
        let mut stdout = response.stdout;
        let mut stderr = response.stderr;
        stdout.truncate(max_output);
        stderr.truncate(max_output);
        Ok(ExecOutput {
            exit_code: response.exit_code,
            stdout,
            stderr,
            truncated,
        })
    }

    /// Stops container `id`: the runtime sends its stop signal once, waits `grace` (rounded up to
    /// whole seconds) and then SIGKILLs. Succeeds for a container that already exited, also when
    /// it exited while being stopped and the runtime answered the stop with an error. The gRPC
    /// deadline is `grace` plus [`STOP_DEADLINE_MARGIN`] so the SIGKILL is never lost.
    pub async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), CriError> {
        let seconds = whole_seconds(grace);
        let request = cri::StopContainerRequest {
            container_id: id.to_string(),
            timeout: seconds as i64,
        };
        let deadline = Duration::from_secs(seconds) + STOP_DEADLINE_MARGIN;
        let stopped = self
            .call("StopContainer", id, deadline, |mut c| async move {
                c.stop_container(request).await
            })
            .await;
        match stopped {
            Ok(_) => Ok(()),
            Err(e @ CriError::NotFound { .. }) => Err(e),
            // A task that exits while containerd stops it (the application finishing its own
            // shutdown, say) can take its shim down mid-call: the stop fails with `ttrpc: closed`
            // although the container stopped. What counts is the container's state afterwards
            // (and a container already removed is as stopped as it gets: NotFound, as above).
            // containerd records the task's exit from the shim's event, asynchronously: on a
            // loaded node the container can still read Running for a moment after such a stop,
            // so its state is read again for up to `EXIT_SETTLE` before the error stands (at once
            // when the runtime does not answer the read either).
            Err(e) => {
                let settled = Instant::now() + EXIT_SETTLE;
                loop {
                    match self.container_status(id).await {
                        Ok(details) if details.state == ContainerState::Exited => return Ok(()),
                        Err(gone @ CriError::NotFound { .. }) => return Err(gone),
                        Ok(_) if Instant::now() < settled => tokio::time::sleep(EXIT_POLL).await,
                        _ => return Err(e),
                    }
                }
            }
        }
    }

    /// Runs one instrumented CRI call bounded by `deadline`, turning failures into [`CriError`].
    async fn call<T, F, Fut>(
        &self,
        method: &'static str,
        id: &str,
        deadline: Duration,
        f: F,
    ) -> Result<T, CriError>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let start = Instant::now();
        let outcome = tokio::time::timeout(deadline, f(self.runtime.clone())).await;
        let (code, result) = match outcome {
            Ok(Ok(response)) => (tonic::Code::Ok, Ok(response.into_inner())),
            Ok(Err(status)) => (status.code(), Err(self.status_error(method, id, status))),
            Err(_) => (
                tonic::Code::DeadlineExceeded,
                Err(CriError::DeadlineExceeded {
                    path: self.socket.clone(),
                    method,
                    after: deadline,
                }),
            ),
        };
        self.metrics
            .observe(method, code, start.elapsed().as_secs_f64());
        result
    }

    fn status_error(&self, method: &'static str, id: &str, status: tonic::Status) -> CriError {
        let path = self.socket.clone();
        if let Some(io) = std::error::Error::source(&status).and_then(error::io_error_in) {
            // We were connected before: a vanished or refusing socket means the runtime went away.
            return match error::from_connect_io(&path, io) {
                CriError::SocketMissing { path } => CriError::Unavailable {
                    path,
                    detail: "the socket is gone (runtime stopped or restarting?)".into(),
                },
                other => other,
            };
        }
        match status.code() {
            tonic::Code::NotFound if !id.is_empty() => CriError::NotFound {
                path,
                id: id.to_string(),
            },
            tonic::Code::Unavailable => CriError::Unavailable {
                path,
                detail: status.message().to_string(),
            },
            code => CriError::Runtime {
                path,
                method,
                code,
                message: status.message().to_string(),
            },
        }
    }
}

/// Rejects a missing path or a path that is not a socket before any gRPC is attempted, so the
/// error says exactly that.
fn check_socket_file(path: &Path) -> Result<(), CriError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => Ok(()),
        Ok(_) => Err(CriError::NotCriRuntime {
            path: path.to_path_buf(),
            detail: "the path exists but is not a unix socket".into(),
        }),
        Err(e) => Err(error::from_connect_io(path, &e)),
    }
}

async fn open_channel(socket: &Path) -> Result<Channel, CriError> {
    let path = socket.to_path_buf();
    // The URI is required by tonic but unused: the connector always dials the unix socket.
    let endpoint = Endpoint::from_static("http://cri.invalid");
    endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| CriError::NotCriRuntime {
            path: socket.to_path_buf(),
            detail: match error::io_error_in(&e) {
                Some(io) => format!("gRPC handshake failed: {io}"),
                None => format!("gRPC handshake failed: {e}"),
            },
        })
}

fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_grace_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_millis(0)), 0);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(2000)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(2001)), 3);
    }
}
