//! The HTTP(S) client of the coordinator's report API: `POST /v1/reports` and
//! `POST /v1/readiness` with the agent's bearer token, and why such a request failed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use relaunch_api::ContainerRecreateRequestStatus;
use relaunch_api::report::{
    ErrorBody, ExecReport, READINESS_PATH, REPORTS_PATH, ReadinessAnswer, ReadinessRequest,
    RecreateReport, SCALEDOWN_EXEC_PATH,
};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request to the coordinator failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("coordinator URL {url:?} is not an http:// or https:// URL")]
    BadUrl { url: String },
    #[error("cannot read the token file {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot load the coordinator CA {path}: {detail}")]
    Ca { path: PathBuf, detail: String },
    #[error("coordinator unreachable: {0}")]
    Unreachable(String),
    #[error("coordinator did not answer within {0:?}")]
    Timeout(Duration),
    /// 5xx or 429: try again later.
    #[error("coordinator is unavailable ({status}): {message}")]
    Unavailable { status: u16, message: String },
    /// Any other 4xx: retrying the same request will not help.
    #[error("coordinator rejected the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    /// A 2xx whose body is not what the API answers.
    #[error("cannot read the coordinator's answer: {0}")]
    Answer(String),
}

impl CoordinatorError {
    /// True when the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        match self {
            // A 401 may be a token that was rotated on disk after it was read: read it again later.
            CoordinatorError::Rejected { status, .. } => *status == 401,
            CoordinatorError::BadUrl { .. } | CoordinatorError::Ca { .. } => false,
            _ => true,
        }
    }
}

type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// HTTP(S) client of the coordinator's agent API. Cheap to clone.
#[derive(Clone)]
pub struct CoordinatorClient {
    base: String,
    token_file: PathBuf,
    http: Client<HttpsConnector, Full<Bytes>>,
}

impl CoordinatorClient {
    /// `url` is `http://host:port` or `https://host:port`; `ca` is a PEM bundle to trust for
    /// https (else the system roots).
    pub fn new(
        url: &str,
        ca: Option<&std::path::Path>,
        token_file: PathBuf,
    ) -> Result<Self, CoordinatorError> {
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://"))
            || base.parse::<http::Uri>().is_err()
        {
            return Err(CoordinatorError::BadUrl { url: url.into() });
        }
        let tls = tls_config(ca)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let http = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            base,
            token_file,
            http,
        })
    }

    fn token(&self) -> Result<String, CoordinatorError> {
        std::fs::read_to_string(&self.token_file)
            .map(|t| t.trim().to_string())
            .map_err(|source| CoordinatorError::Token {
                path: self.token_file.clone(),
                source,
            })
    }

    /// POSTs `body` as JSON to `path`; the token file is read afresh for every request.
    async fn post<T: serde::Serialize>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<Bytes, CoordinatorError> {
        let token = self.token()?;
        let json = serde_json::to_vec(body).unwrap_or_default();
        let request = Request::post(format!("{}{path}", self.base))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::new(Bytes::from(json)))
            .map_err(|e| CoordinatorError::Unreachable(e.to_string()))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| CoordinatorError::Unreachable(error_chain(&e)))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| CoordinatorError::Unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, CoordinatorError>((status, body))
        };
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| CoordinatorError::Timeout(REQUEST_TIMEOUT))??;
        if status.is_success() {
            return Ok(body);
        }
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| format!("{}: {}", e.error.reason, e.error.message))
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(300).collect());
        let code = status.as_u16();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            Err(CoordinatorError::Unavailable {
                status: code,
                message,
            })
        } else {
            Err(CoordinatorError::Rejected {
                status: code,
                message,
            })
        }
    }

    /// `POST /v1/reports`.
    pub async fn report(&self, report: &RecreateReport) -> Result<(), CoordinatorError> {
        self.post(REPORTS_PATH, report).await.map(|_| ())
    }

    /// `POST /v1/reports`, for a request's first report, which also admits the request: the
    /// request's status as the coordinator wrote it.
    pub async fn claim(
        &self,
        report: &RecreateReport,
    ) -> Result<ContainerRecreateRequestStatus, CoordinatorError> {
        let body = self.post(REPORTS_PATH, report).await?;
        serde_json::from_slice(&body).map_err(|e| CoordinatorError::Answer(e.to_string()))
    }

    /// `POST /v1/scaledown-execs`.
    pub async fn scaledown_exec(&self, report: &ExecReport) -> Result<(), CoordinatorError> {
        self.post(SCALEDOWN_EXEC_PATH, report).await.map(|_| ())
    }

    /// `POST /v1/readiness`.
    pub async fn readiness(
        &self,
        request: &ReadinessRequest,
    ) -> Result<ReadinessAnswer, CoordinatorError> {
        let body = self.post(READINESS_PATH, request).await?;
        // An answer we cannot read still means the coordinator accepted the request.
        Ok(serde_json::from_slice(&body).unwrap_or(ReadinessAnswer {
            gated: true,
            message: None,
        }))
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn tls_config(ca: Option<&std::path::Path>) -> Result<rustls::ClientConfig, CoordinatorError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let ca_err = |detail: String| CoordinatorError::Ca {
                path: path.to_path_buf(),
                detail,
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_err(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| ca_err(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_err("no certificate in the file".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CoordinatorError::Ca {
            path: PathBuf::new(),
            detail: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_other_4xx_are_permanent() {
        let transient = CoordinatorError::Unavailable {
            status: 429,
            message: String::new(),
        };
        assert!(transient.is_transient());
        let rejected = CoordinatorError::Rejected {
            status: 403,
            message: String::new(),
        };
        assert!(!rejected.is_transient());
        let unauthenticated = CoordinatorError::Rejected {
            status: 401,
            message: String::new(),
        };
        assert!(
            unauthenticated.is_transient(),
            "the token file may have been rotated"
        );
        assert!(CoordinatorError::Unreachable("refused".into()).is_transient());
    }
}
