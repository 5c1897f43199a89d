//! The report API over HTTP/1.1, plain or TLS: routing, body limits, strict JSON, error bodies,
//! graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use relaunch_api::report::{
    ErrorBody, ErrorDetail, ExecReport, MAX_BODY_BYTES, READINESS_PATH, REPORTS_PATH,
    ReadinessRequest, RecreateReport, SCALEDOWN_EXEC_PATH,
};

use relaunch_telemetry::serving::{Acceptor, ConnectionLimits, http1_builder};

use super::handlers::{Refusal, apply_readiness, apply_report, authenticate};
use super::tls::{self, TlsFiles};
use crate::{Context, CoordinatorError};

/// Slow clients get this long for their headers, and again for their body.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What the report API takes on at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportLimits {
    /// Open connections (each agent keeps one) and the header deadline.
    pub connections: ConnectionLimits,
    /// Reports and readiness requests handled at once (each costs calls to the API server).
    pub max_in_flight: usize,
    /// How long a request waits for a free slot before it is answered 429 (`Retry-After: 1`).
    pub queue_wait: Duration,
}

impl Default for ReportLimits {
    fn default() -> Self {
        Self {
            connections: ConnectionLimits {
                max_connections: 4096,
                header_read_timeout: READ_TIMEOUT,
            },
            max_in_flight: 64,
            queue_wait: Duration::from_secs(2),
        }
    }
}

/// The report API's bound socket (and TLS, if configured). Binding first lets the binary fail
/// fast on a busy port and tests learn the port.
pub struct ReportListener {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: ReportLimits,
}

impl ReportListener {
    pub async fn bind(addr: SocketAddr, tls: Option<&TlsFiles>) -> Result<Self, CoordinatorError> {
        let tls = tls.map(tls::acceptor).transpose()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| CoordinatorError::Listen { addr, source })?;
        Ok(Self {
            listener,
            tls,
            limits: ReportLimits::default(),
        })
    }

    /// Serves within `limits` instead of [`ReportLimits::default`].
    pub fn with_limits(mut self, limits: ReportLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// Serves the report API until `shutdown`; then stops accepting and lets in-flight requests finish.
pub async fn serve(listener: ReportListener, ctx: Arc<Context>, shutdown: CancellationToken) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, tls = listener.is_tls(), "report API listening");
    }
    let ReportListener {
        listener,
        tls,
        limits,
    } = listener;
    let in_flight = Arc::new(InFlight {
        slots: Semaphore::new(limits.max_in_flight.max(1)),
        queue_wait: limits.queue_wait,
    });
    let mut acceptor = Acceptor::new(listener, limits.connections, "report API");
    while let Some((stream, permit)) = acceptor.accept(&shutdown).await {
        let watcher = graceful.watcher();
        let ctx = ctx.clone();
        let tls = tls.clone();
        let in_flight = in_flight.clone();
        let connections = limits.connections;
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, ctx, in_flight, &connections, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, ctx, in_flight, &connections, watcher).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
    drop(acceptor);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("report API: in-flight requests did not finish in time");
    }
    tracing::info!("report API stopped");
}

/// The slots for requests being handled.
struct InFlight {
    slots: Semaphore,
    queue_wait: Duration,
}

impl InFlight {
    /// A slot, waiting at most the queue wait for one.
    async fn enter(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Refusal> {
        match tokio::time::timeout(self.queue_wait, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Refusal::TooManyRequests(
                "the coordinator is handling as many reports as it takes at once; retry".into(),
            )),
        }
    }
}

async fn serve_connection<I>(
    io: I,
    ctx: Arc<Context>,
    in_flight: Arc<InFlight>,
    limits: &ConnectionLimits,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let ctx = ctx.clone();
        let in_flight = in_flight.clone();
        async move { Ok::<_, Infallible>(answer(&ctx, &in_flight, req).await) }
    });
    let conn = http1_builder(limits).serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "report API connection ended");
    }
}

/// One request, start to finish; every refusal becomes an `ErrorBody`.
async fn answer(
    ctx: &Context,
    in_flight: &InFlight,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        REPORTS_PATH => {
            let result = match in_flight.enter().await {
                Ok(_slot) => handle_report(ctx, req).await,
                Err(refusal) => Err(refusal),
            };
            let label = match &result {
                Ok((_, true)) => "applied",
                Ok((_, false)) => "unchanged",
                Err(r) => r.metric_result(),
            };
            ctx.metrics.reports.with_label_values(&[label]).inc();
            match result {
                Ok((status, _)) => json_response(StatusCode::OK, &status),
                Err(refusal) => refused(&refusal),
            }
        }
        READINESS_PATH => {
            let result = match in_flight.enter().await {
                Ok(_slot) => handle_readiness(ctx, req).await,
                Err(refusal) => Err(refusal),
            };
            let label = match &result {
                Ok(a) if a.gated => "applied",
                Ok(_) => "not_gated",
                Err(r) => r.metric_result(),
            };
            ctx.metrics.readiness.with_label_values(&[label]).inc();
            match result {
                Ok(answer) => json_response(StatusCode::OK, &answer),
                Err(refusal) => refused(&refusal),
            }
        }
        SCALEDOWN_EXEC_PATH => {
            let result = match in_flight.enter().await {
                Ok(_slot) => handle_exec_report(ctx, req).await,
                Err(refusal) => Err(refusal),
            };
            match result {
                Ok(written) => {
                    json_response(StatusCode::OK, &serde_json::json!({"written": written}))
                }
                Err(refusal) => refused(&refusal),
            }
        }
        other => refused(&Refusal::NotFound(format!(
            "no such path {other}; the report API serves {REPORTS_PATH}, {READINESS_PATH} and {SCALEDOWN_EXEC_PATH}"
        ))),
    }
}

async fn handle_report(
    ctx: &Context,
    req: Request<Incoming>,
) -> Result<(relaunch_api::ContainerRecreateRequestStatus, bool), Refusal> {
    require_post(&req)?;
    let node = authenticate(ctx, req.headers()).await?;
    let report: RecreateReport = read_json(req).await?;
    let applied = apply_report(ctx, &node, &report).await?;
    Ok((applied.status, applied.written))
}

async fn handle_exec_report(ctx: &Context, req: Request<Incoming>) -> Result<bool, Refusal> {
    require_post(&req)?;
    let node = authenticate(ctx, req.headers()).await?;
    let report: ExecReport = read_json(req).await?;
    crate::scaledown::apply_exec_report(ctx, &node, &report).await
}

async fn handle_readiness(
    ctx: &Context,
    req: Request<Incoming>,
) -> Result<relaunch_api::report::ReadinessAnswer, Refusal> {
    require_post(&req)?;
    let node = authenticate(ctx, req.headers()).await?;
    let request: ReadinessRequest = read_json(req).await?;
    apply_readiness(ctx, &node, &request).await
}

fn require_post(req: &Request<Incoming>) -> Result<(), Refusal> {
    if req.method() == Method::POST {
        Ok(())
    } else {
        Err(Refusal::MethodNotAllowed(format!(
            "{} is not allowed on {}; use POST",
            req.method(),
            req.uri().path()
        )))
    }
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`] and parses it strictly.
async fn read_json<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, Refusal> {
    if let Some(value) = req.headers().get(header::CONTENT_TYPE) {
        let media = value
            .to_str()
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if media != "application/json" {
            return Err(Refusal::UnsupportedMediaType(format!(
                "Content-Type must be application/json, got {media:?}"
            )));
        }
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(Refusal::PayloadTooLarge(MAX_BODY_BYTES));
    }
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES);
    let bytes = match tokio::time::timeout(READ_TIMEOUT, body.collect()).await {
        Err(_) => {
            return Err(Refusal::BadRequest(
                "the request body did not arrive in time".into(),
            ));
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(Refusal::PayloadTooLarge(MAX_BODY_BYTES));
        }
        Ok(Err(e)) => return Err(Refusal::BadRequest(format!("cannot read the body: {e}"))),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| Refusal::BadRequest(format!("invalid JSON body: {e}")))
}

fn json_response<T: Serialize>(code: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn refused(refusal: &Refusal) -> Response<Full<Bytes>> {
    let code = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = ErrorBody {
        error: ErrorDetail {
            code: refusal.status(),
            reason: refusal.reason().into(),
            message: refusal.to_string(),
        },
    };
    let mut response = json_response(code, &body);
    let headers = response.headers_mut();
    match refusal {
        Refusal::Unauthenticated(_) => {
            headers.insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        Refusal::MethodNotAllowed(_) => {
            headers.insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        }
        Refusal::Unavailable(_) | Refusal::TooManyRequests(_) => {
            headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        // The body was not read: do not let the client send it on this connection.
        Refusal::PayloadTooLarge(_) => {
            headers.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        _ => {}
    }
    response
}
