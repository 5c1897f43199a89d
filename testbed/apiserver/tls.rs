//! The API server's own certificate authority and serving certificate, made fresh at every start
//! (as `kubeadm init` makes a cluster's CA), and the TLS side of its listener. The serving
//! certificate names what in-cluster clients and kubeconfigs connect to: the loopback address the
//! server listens on, the `kubernetes` Service's ClusterIP, and the Service's DNS names.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use crate::TestbedError;

/// The DNS names kube-apiserver's serving certificate carries for the `kubernetes` Service.
pub const SERVICE_NAMES: [&str; 5] = [
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "localhost",
];

/// The CA and a TLS acceptor presenting the serving certificate it signed.
pub struct Tls {
    /// The CA certificate, PEM: what kubeconfigs carry as `certificate-authority-data` and pods
    /// find as `ca.crt`.
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    pub acceptor: TlsAcceptor,
}

impl Tls {
    /// A new CA and a serving certificate for `addresses` and [`SERVICE_NAMES`].
    pub fn new(addresses: &[IpAddr]) -> Result<Self, TestbedError> {
        let fail = |e: rcgen::Error| TestbedError::Setup(format!("making the API server CA: {e}"));
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "relaunch-testbed-ca");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(fail)?)
            .map_err(fail)?;

        let mut names: Vec<String> = SERVICE_NAMES.iter().map(|s| s.to_string()).collect();
        names.extend(addresses.iter().map(IpAddr::to_string));
        let mut params = CertificateParams::new(names).map_err(fail)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().map_err(fail)?;
        let cert = params.signed_by(&key, &ca).map_err(fail)?;

        let chain = vec![cert.der().clone(), CertificateDer::from(ca.der().to_vec())];
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TestbedError::Setup(format!("TLS config: {e}")))?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| TestbedError::Setup(format!("TLS serving certificate: {e}")))?;
        // kubectl and client-go speak HTTP/2 over TLS; hyper's auto builder serves both.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            ca_pem: ca.pem(),
            ca_der: ca.der().to_vec(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// The first byte of a TLS handshake record; plain HTTP starts with a method's letter.
pub const HANDSHAKE: u8 = 0x16;
