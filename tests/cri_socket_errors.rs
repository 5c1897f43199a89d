//! Connecting to sockets that are not a CRI runtime gives a typed error, promptly.
//! These need no containerd and no root.

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use relaunch_cri::{ClientConfig, CriError, CriMetrics, RuntimeClient};
use tokio::io::AsyncWriteExt;

fn quick() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
    }
}

async fn connect(path: &std::path::Path) -> (Result<RuntimeClient, CriError>, Duration) {
    let started = Instant::now();
    let result = RuntimeClient::connect(path, quick(), CriMetrics::unregistered()).await;
    (result, started.elapsed())
}

#[tokio::test]
async fn a_missing_socket_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("containerd.sock");
    let (result, took) = connect(&path).await;
    let err = result.unwrap_err();
    assert!(matches!(err, CriError::SocketMissing { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "message names the socket: {err}"
    );
    assert!(took < Duration::from_secs(1));
}

#[tokio::test]
async fn a_file_that_is_not_a_socket_is_not_a_cri_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain-file");
    std::fs::write(&path, "hello").unwrap();
    let (result, _) = connect(&path).await;
    assert!(
        matches!(result, Err(CriError::NotCriRuntime { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_socket_speaking_another_protocol_is_not_a_cri_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("http.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let server = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let (result, took) = connect(&path).await;
    assert!(
        matches!(result, Err(CriError::NotCriRuntime { .. })),
        "{result:?}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    server.abort();
}

#[tokio::test]
async fn a_socket_that_never_answers_is_not_a_cri_runtime_and_does_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let (result, took) = connect(&path).await;
    assert!(
        matches!(result, Err(CriError::NotCriRuntime { .. })),
        "{result:?}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    server.abort();
}

#[tokio::test]
async fn detection_skips_missing_sockets_and_lists_what_it_tried() {
    let dir = tempfile::tempdir().unwrap();
    let candidates = vec![dir.path().join("a.sock"), dir.path().join("b.sock")];
    let result = RuntimeClient::detect(&candidates, quick(), CriMetrics::unregistered()).await;
    let err = result.unwrap_err();
    assert!(matches!(err, CriError::NoRuntimeFound { .. }), "{err:?}");
    assert!(err.to_string().contains("a.sock (missing)"), "{err}");
}
