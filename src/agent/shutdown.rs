//! Running a graceful shutdown step: exec in the container, HTTP GET to the pod, or sleep —
//! as the kubelet runs a preStop hook (HTTPS without certificate verification, like the kubelet).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::plan::{HttpTarget, ShutdownStep};
use relaunch_cri::RuntimeClient;

/// Output kept from an exec'd shutdown command, for the message.
const MAX_EXEC_OUTPUT: usize = 4 * 1024;

/// How a shutdown step ended. `None` = fine; `Some(text)` = what went wrong (the stop follows
/// anyway, as the kubelet kills a container whose preStop hook failed).
pub async fn run(
    runtime: &RuntimeClient,
    hooks: &HookClient,
    container_id: &str,
    pod_ip: Option<&str>,
    step: &ShutdownStep,
    budget: Duration,
) -> Option<String> {
    let work = async {
        match step {
            ShutdownStep::Exec(cmd) => {
                match runtime
                    .exec_sync(container_id, cmd, budget, MAX_EXEC_OUTPUT)
                    .await
                {
                    Ok(out) if out.exit_code == 0 => None,
                    Ok(out) => Some(format!(
                        "shutdown command {cmd:?} exited with code {}: {}",
                        out.exit_code,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )),
                    Err(e) => Some(format!("shutdown command {cmd:?} failed: {e}")),
                }
            }
            ShutdownStep::HttpGet(target) => http_get(hooks, target, pod_ip).await.err(),
            ShutdownStep::Sleep(d) => {
                tokio::time::sleep(*d).await;
                None
            }
        }
    };
    match tokio::time::timeout(budget, work).await {
        Ok(outcome) => outcome,
        Err(_) => Some(format!(
            "the shutdown action did not finish within the grace period ({}s); stopping the container",
            budget.as_secs()
        )),
    }
}

async fn http_get(
    hooks: &HookClient,
    target: &HttpTarget,
    pod_ip: Option<&str>,
) -> Result<(), String> {
    let host = target
        .host
        .as_deref()
        .or(pod_ip)
        .ok_or("the pod has no IP yet and the httpGet action sets no host")?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let url = format!("{}://{host}:{}{}", target.scheme, target.port, target.path);
    let mut request = http::Request::get(&url).header(http::header::USER_AGENT, "relaunch-agent");
    for (name, value) in &target.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("shutdown GET {url}: {e}"))?;
    let response = hooks
        .client
        .request(request)
        .await
        .map_err(|e| format!("shutdown GET {url} failed: {e}"))?;
    let status = response.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("shutdown GET {url} answered {status}"))
    }
}

/// HTTP(S) client for shutdown GETs. The kubelet does not verify certificates of hooks and
/// probes; neither does this client. Built once at start-up.
#[derive(Clone)]
pub struct HookClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl HookClient {
    pub fn new() -> Result<Self, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(NoVerification(provider.clone()));
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }
}

#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
