//! The admin endpoint both binaries serve: `/metrics` (Prometheus text format), `/healthz` and
//! `/readyz`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;

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

/// Serves `/metrics`, `/healthz` and `/readyz` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let registry = registry.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let response = answer(req.uri().path(), &registry, &health);
                    async move { Ok::<_, Infallible>(response) }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
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
