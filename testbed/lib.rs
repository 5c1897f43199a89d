//! Development-only test bed: a private containerd, the local test image, and pods created the
//! way the kubelet creates them. Behind the `testbed` cargo feature; never part of the production
//! binaries.

pub mod apiserver;
mod containerd;
pub mod controllers;
mod image;
pub mod kubelet;
pub mod pod;
pub mod processes;
pub mod sandbox;

pub use containerd::Containerd;
pub use image::{BUSYBOX, TEST_IMAGE, build_test_image};

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

/// The last `lines` lines of a log, for error messages.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
