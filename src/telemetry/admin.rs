//! The admin endpoint both binaries serve: `/metrics` (Prometheus text format), `/healthz` and
//! `/readyz`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;

use crate::serving::{Acceptor, ConnectionLimits, http1_builder};

/// Liveness and readiness as the process sees them.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    /// Set when a component is stuck beyond repair; `/healthz` then fails so the process is restarted.
    broken: AtomicBool,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn set_broken(&self) {
        self.broken.store(true, Ordering::SeqCst);
    }

    pub fn is_live(&self) -> bool {
        !self.broken.load(Ordering::SeqCst)
    }
}

/// A registry with the process collector (RSS, CPU, open fds) already registered.
pub fn registry_with_process_metrics() -> Registry {
    let registry = Registry::new();
    let _ = registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ));
    registry
}

/// Binds the admin endpoint; serve it with [`serve`]. Binding first lets callers fail fast on a
/// busy port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// The admin endpoint's limits: a scrape or a probe needs one short request at a time.
pub const ADMIN_LIMITS: ConnectionLimits = ConnectionLimits {
    max_connections: 32,
    header_read_timeout: Duration::from_secs(10),
};

/// Serves `/metrics`, `/healthz` and `/readyz` until `shutdown` is cancelled, within
/// [`ADMIN_LIMITS`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    serve_with(listener, registry, health, ADMIN_LIMITS, shutdown).await;
}

/// [`serve`] within `limits`.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    registry: Registry,
    health: Arc<Health>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let mut acceptor = Acceptor::new(listener, limits, "admin");
    while let Some((stream, permit)) = acceptor.accept(&shutdown).await {
        let registry = registry.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let response = answer(req.uri().path(), &registry, &health);
                    async move { Ok::<_, Infallible>(response) }
                });
            let _ = http1_builder(&limits)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

fn answer(path: &str, registry: &Registry, health: &Health) -> Response<Full<Bytes>> {
    let (code, content_type, body) = match path {
        "/metrics" => {
            let mut buffer = Vec::new();
            match TextEncoder::new().encode(&registry.gather(), &mut buffer) {
                Ok(()) => (
                    StatusCode::OK,
                    TextEncoder::new().format_type().to_string(),
                    buffer,
                ),
                Err(e) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain".into(),
                    e.to_string().into_bytes(),
                ),
            }
        }
        "/healthz" | "/livez" if health.is_live() => {
            (StatusCode::OK, "text/plain".into(), b"ok".to_vec())
        }
        "/healthz" | "/livez" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain".into(),
            b"broken".to_vec(),
        ),
        "/readyz" if health.is_ready() => (StatusCode::OK, "text/plain".into(), b"ok".to_vec()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain".into(),
            b"not ready".to_vec(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain".into(),
            b"not found".to_vec(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    if let Ok(value) = http::HeaderValue::from_str(&content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client that sends half a header and then nothing is disconnected once the header
    /// timeout passes, and the slot it held is free again.
    #[tokio::test]
    async fn a_slowloris_connection_is_closed_after_the_header_timeout() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnectionLimits {
            max_connections: 1,
            header_read_timeout: Duration::from_millis(300),
        };
        let shutdown = CancellationToken::new();
        let health = Arc::new(Health::default());
        let server = tokio::spawn(serve_with(
            listener,
            Registry::new(),
            health,
            limits,
            shutdown.clone(),
        ));
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let mut rest = Vec::new();
        // The server closes the connection (EOF, perhaps after a 408), well before the
        // client would give up.
        // (A reset instead of an orderly close ends the read with an error: closed too.)
        let _closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest))
            .await
            .expect("the half-sent header was not cut off");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        let answer = String::from_utf8_lossy(&rest);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        );

        // The only slot is free again: a well-behaved client is answered.
        let mut good = tokio::net::TcpStream::connect(addr).await.unwrap();
        good.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), good.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
        shutdown.cancel();
        server.await.unwrap();
    }
}
