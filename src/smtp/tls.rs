//! STARTTLS: the rustls server configuration, read from PEM files.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Which file was unusable, and why (the why in rustls' or the PEM reader's words).
#[derive(Debug)]
pub enum TlsFileError {
    Cert(String),
    Key(String),
}

impl TlsFileError {
    /// The config key that names the file.
    pub fn key(&self) -> &'static str {
        match self {
            TlsFileError::Cert(_) => "smtp.tls_cert",
            TlsFileError::Key(_) => "smtp.tls_key",
        }
    }
}

impl fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsFileError::Cert(why) | TlsFileError::Key(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for TlsFileError {}

/// Builds the acceptor for the certificate chain and key in `cert` and `key` (PEM).
/// rustls speaks TLS 1.2 and 1.3 only, which is what we want on port 25 too.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsFileError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            TlsFileError::Cert(format!("cannot read certificates from {}: {e}", cert.display()))
        })?;
    if chain.is_empty() {
        return Err(TlsFileError::Cert(format!("no certificate in {}", cert.display())));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        TlsFileError::Key(format!("cannot read a private key from {}: {e}", key.display()))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key_der))
        .map_err(|e| {
            TlsFileError::Key(format!("{} does not fit the certificate: {e}", key.display()))
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
