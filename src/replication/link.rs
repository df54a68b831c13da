//! The cluster link's mutual TLS (rustls): each side presents a certificate signed by
//! `[cluster].tls_ca` and accepts only a peer whose certificate is signed by it. The private CA
//! is the cluster's identity, so the peer's certificate is not checked against a host name
//! (nodes are dialled by address); its chain and validity are.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{ClusterConfig, Config, ConfigError};

/// The name a node dials its peer by, whatever its address.
pub const PEER_NAME: &str = "relayd-cluster";

/// Both ends of the link for this node.
#[derive(Clone)]
pub struct Link {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
}

/// Loads the certificates; an unusable file is a config error naming its key.
pub fn load(config: &Config, cluster: &ClusterConfig) -> Result<Link, ConfigError> {
    let certs = |key: &str, path: &std::path::Path| {
        CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                config
                    .error_at(key, format!("cannot read certificates from {}: {e}", path.display()))
            })
            .and_then(|certs| match certs.is_empty() {
                true => Err(config.error_at(key, format!("no certificate in {}", path.display()))),
                false => Ok(certs),
            })
    };
    let chain = certs("cluster.tls_cert", &cluster.tls_cert)?;
    let key = PrivateKeyDer::from_pem_file(&cluster.tls_key).map_err(|e| {
        config.error_at(
            "cluster.tls_key",
            format!("cannot read a private key from {}: {e}", cluster.tls_key.display()),
        )
    })?;
    let mut roots = RootCertStore::empty();
    for ca in certs("cluster.tls_ca", &cluster.tls_ca)? {
        roots.add(ca).map_err(|e| {
            config.error_at("cluster.tls_ca", format!("unusable CA certificate: {e}"))
        })?;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let bad = |key: &str| {
        let key = key.to_string();
        move |e: Error| config.error_at(&key, format!("TLS configuration: {e}"))
    };

    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| config.error_at("cluster.tls_ca", format!("TLS configuration: {e}")))?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(bad("cluster.tls_cert"))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(bad("cluster.tls_key"))?;

    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| config.error_at("cluster.tls_ca", format!("TLS configuration: {e}")))?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(bad("cluster.tls_cert"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ClusterCa(server_verifier)))
        .with_client_auth_cert(chain, key)
        .map_err(bad("cluster.tls_key"))?;
    Ok(Link {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: TlsConnector::from(Arc::new(client)),
    })
}

/// Accepts a cluster peer's TLS within `patience`; a peer refused (a failed handshake, or none
/// in time) is logged, and None.
pub async fn accept(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    address: SocketAddr,
    patience: Duration,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(patience, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::warn!(peer = %address, error = %e, "cluster peer refused: TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::warn!(peer = %address, "cluster peer refused: no TLS handshake in time");
            None
        }
    }
}

/// The cluster CA's verifier, less the host-name check: rustls checks the chain, validity and
/// key usage first and the name last, so "not valid for this name" means everything else held.
#[derive(Debug)]
struct ClusterCa(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ClusterCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
