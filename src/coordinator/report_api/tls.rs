//! TLS for the report API (rustls with the ring provider, the one kube already links).

use std::path::PathBuf;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::CoordinatorError;

/// TLS for the report API: PEM certificate chain and private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A TLS acceptor serving the PEM certificate chain and key in `files` (HTTP/1.1 over ALPN).
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, CoordinatorError> {
    let tls = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        CoordinatorError::Tls(format!("{what} {}: {e}", path.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| tls("cannot read certificate", &files.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls("bad certificate", &files.cert, &e))?;
    if certs.is_empty() {
        return Err(tls("no certificate in", &files.cert, &"empty"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| tls("cannot read private key", &files.key, &e))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CoordinatorError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| CoordinatorError::Tls(format!("certificate and key do not fit: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
