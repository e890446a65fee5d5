//! Loading the server certificate and building rustls server configurations.
//!
//! TLS 1.2 and 1.3 only, aws-lc-rs as the provider (passed explicitly, so no process-wide
//! default is needed). ECDSA P-256 certificates are recommended: on this class of machine an
//! ECDSA full handshake costs about a seventh of an RSA-2048 one.
//!
//! What the server decides rather than the client ([`provider`]):
//! - **cipher suite**: the server's order wins (`ignore_client_order`), and AES-128-GCM with
//!   SHA-256 comes first — rustls clients (and most others) list AES-256-GCM/SHA-384 first,
//!   but SHA-256 runs on the SHA-NI instructions of current x86 cores while SHA-384 does not,
//!   and every handshake's key schedule and every record use the suite's hash or cipher;
//! - **key-exchange groups** (`[tls] kx_groups`): which groups are accepted at all. The group
//!   itself is the client's choice among them (its key share); the default keeps the
//!   post-quantum hybrid X25519MLKEM768 first, as rustls does.
//!
//! Session tickets are the [`crate::tickets`] gate over process-wide keys; with tickets off,
//! SMTP listeners keep rustls' small in-memory session cache.

use crate::tickets::{TicketGate, TicketKeys};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::{CipherSuite, ServerConfig};
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

/// A key-exchange group an operator may allow (`[tls] kx_groups`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum KxGroup {
    /// X25519 + ML-KEM-768 hybrid (post-quantum), rustls' first choice.
    X25519MlKem768,
    /// P-256 + ML-KEM-768 hybrid (post-quantum).
    Secp256r1MlKem768,
    /// X25519 (classical).
    X25519,
    /// NIST P-256 (classical).
    Secp256r1,
    /// NIST P-384 (classical).
    Secp384r1,
}

impl KxGroup {
    /// Every group, in the default order.
    pub const ALL: [KxGroup; 5] = [
        Self::X25519MlKem768,
        Self::X25519,
        Self::Secp256r1,
        Self::Secp384r1,
        Self::Secp256r1MlKem768,
    ];

    /// The default set: rustls' defaults (the hybrid first), without P-256+ML-KEM.
    pub const DEFAULT: [KxGroup; 4] = [
        Self::X25519MlKem768,
        Self::X25519,
        Self::Secp256r1,
        Self::Secp384r1,
    ];

    /// The name in the config file (the IANA name).
    pub fn name(self) -> &'static str {
        match self {
            Self::X25519MlKem768 => "X25519MLKEM768",
            Self::Secp256r1MlKem768 => "SecP256r1MLKEM768",
            Self::X25519 => "x25519",
            Self::Secp256r1 => "secp256r1",
            Self::Secp384r1 => "secp384r1",
        }
    }

    fn group(self) -> &'static dyn SupportedKxGroup {
        use rustls::crypto::aws_lc_rs::kx_group;
        match self {
            Self::X25519MlKem768 => kx_group::X25519MLKEM768,
            Self::Secp256r1MlKem768 => kx_group::SECP256R1MLKEM768,
            Self::X25519 => kx_group::X25519,
            Self::Secp256r1 => kx_group::SECP256R1,
            Self::Secp384r1 => kx_group::SECP384R1,
        }
    }
}

impl TryFrom<String> for KxGroup {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|g| g.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!(
                    "unknown key-exchange group {s:?}; allowed: {}",
                    Self::ALL.map(Self::name).join(", ")
                )
            })
    }
}

/// Inbound TLS settings shared by the SMTP and AMTP listeners.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// Accepted key-exchange groups (not empty).
    pub kx_groups: Vec<KxGroup>,
    /// Session ticket keys; `None`: tickets off.
    pub tickets: Option<Arc<TicketKeys>>,
    /// The key exchange of a resumed session (AMTP listeners; see [`crate::tls_accept`]).
    pub resumption_kx: ResumptionKx,
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self {
            kx_groups: KxGroup::DEFAULT.to_vec(),
            tickets: None,
            resumption_kx: ResumptionKx::default(),
        }
    }
}

/// `[amtp] resumption_kx`: which key-exchange groups a peer resuming with a valid ticket may
/// use (see [`crate::tls_accept`] for the reasoning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResumptionKx {
    /// `kx_groups` without the post-quantum hybrids (the session's keys still descend from
    /// the hybrid exchange of its full handshake, through the ticket).
    #[default]
    Classical,
    /// The same groups as a full handshake.
    AsFull,
}

impl ResumptionKx {
    /// The groups of the configuration for returning peers, or `None` when there is to be no
    /// such configuration (`as-full`, or only hybrids configured).
    pub fn groups(self, kx_groups: &[KxGroup]) -> Option<Vec<KxGroup>> {
        if self == Self::AsFull {
            return None;
        }
        let classical: Vec<KxGroup> = kx_groups
            .iter()
            .copied()
            .filter(|g| !matches!(g, KxGroup::X25519MlKem768 | KxGroup::Secp256r1MlKem768))
            .collect();
        (!classical.is_empty() && classical.len() < kx_groups.len()).then_some(classical)
    }
}

/// Whether a suite is one the server prefers (AES-128-GCM with SHA-256).
fn preferred(suite: CipherSuite) -> bool {
    matches!(
        suite,
        CipherSuite::TLS13_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

/// aws-lc-rs with AES-128-GCM/SHA-256 first (per TLS version) and the given groups.
pub fn provider(kx_groups: &[KxGroup]) -> CryptoProvider {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    // Stable: TLS 1.3 suites stay before TLS 1.2 ones, the rest keep rustls' order.
    p.cipher_suites.sort_by_key(|s| {
        (
            s.version() != &rustls::version::TLS13,
            !preferred(s.suite()),
        )
    });
    let groups = if kx_groups.is_empty() {
        &KxGroup::DEFAULT[..]
    } else {
        kx_groups
    };
    p.kx_groups = groups.iter().map(|g| g.group()).collect();
    p
}

/// Apply the server-side choices every inbound configuration shares.
pub fn prefer_server_order(config: &mut ServerConfig) {
    config.ignore_client_order = true;
}

/// Read a PEM certificate chain (leaf first).
pub fn load_chain(cert_path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
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
    Ok(certs)
}

/// Read a PEM private key.
pub fn load_key(key_path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::Key {
        path: key_path.display().to_string(),
        detail: e.to_string(),
    })
}

/// A server configuration without client certificates (the SMTP listeners).
pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
    options: &TlsOptions,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_chain(cert_path)?;
    let key = load_key(key_path)?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider(&options.kx_groups)))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    prefer_server_order(&mut config);
    if let Some(keys) = &options.tickets {
        config.ticketer = TicketGate::new(keys.clone());
    }
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_first_and_groups_as_configured() {
        let p = provider(&[]);
        let names: Vec<_> = p.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(names[0], CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(names[1], CipherSuite::TLS13_AES_256_GCM_SHA384);
        let first12 = p
            .cipher_suites
            .iter()
            .position(|s| s.version() == &rustls::version::TLS12)
            .unwrap();
        assert!(preferred(names[first12]), "{names:?}");
        assert_eq!(
            p.kx_groups[0].name(),
            rustls::NamedGroup::X25519MLKEM768,
            "the post-quantum hybrid stays first by default"
        );
        let p = provider(&[KxGroup::X25519, KxGroup::Secp256r1]);
        assert_eq!(
            p.kx_groups.iter().map(|g| g.name()).collect::<Vec<_>>(),
            [rustls::NamedGroup::X25519, rustls::NamedGroup::secp256r1]
        );
    }

    #[test]
    fn classical_resumption_drops_only_the_hybrids_and_only_when_something_is_left() {
        assert_eq!(
            ResumptionKx::Classical.groups(&KxGroup::DEFAULT),
            Some(vec![
                KxGroup::X25519,
                KxGroup::Secp256r1,
                KxGroup::Secp384r1
            ])
        );
        assert_eq!(ResumptionKx::AsFull.groups(&KxGroup::DEFAULT), None);
        // Only hybrids: resumption stays post-quantum; no hybrid at all: nothing to change.
        assert_eq!(
            ResumptionKx::Classical.groups(&[KxGroup::X25519MlKem768]),
            None
        );
        assert_eq!(ResumptionKx::Classical.groups(&[KxGroup::X25519]), None);
    }

    #[test]
    fn group_names_are_checked_and_the_error_lists_the_allowed_ones() {
        assert_eq!(KxGroup::try_from("X25519".to_string()), Ok(KxGroup::X25519));
        assert_eq!(
            KxGroup::try_from("x25519mlkem768".to_string()),
            Ok(KxGroup::X25519MlKem768)
        );
        let e = KxGroup::try_from("ffdhe2048".to_string()).unwrap_err();
        assert!(
            e.contains("\"ffdhe2048\"") && e.contains("X25519MLKEM768, x25519, secp256r1"),
            "{e}"
        );
    }
}
