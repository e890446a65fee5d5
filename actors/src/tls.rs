//! Loading the server certificate and building rustls server configurations.
//!
//! TLS 1.2 and 1.3 only, aws-lc-rs as the provider (passed explicitly, so no process-wide
//! default is needed). ECDSA P-256 certificates are recommended: on this class of machine an
//! ECDSA full handshake costs about a seventh of an RSA-2048 one (see ../shared/CRATES.md §4).

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file.
    #[error("cannot read certificate chain {path}: {detail}")]
    Certificate {
        /// File.
        path: String,
        /// Why.
        detail: String,
    },
    /// The key file.
    #[error("cannot read private key {path}: {detail}")]
    Key {
        /// File.
        path: String,
        /// Why.
        detail: String,
    },
    /// rustls refused the pair.
    #[error("certificate and key do not form a usable TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A server configuration without client certificates (the SMTP listeners).
pub fn server_config(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(Iterator::collect)
        .map_err(|e| TlsError::Certificate {
            path: cert_path.display().to_string(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Certificate {
            path: cert_path.display().to_string(),
            detail: "no PEM certificate found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::Key {
        path: key_path.display().to_string(),
        detail: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}
