//! AMTP's mutual TLS (spec/AMTP.md §2): the client must present a certificate that chains to
//! the operator's *public* trust anchors or to one of its *private* CAs, valid now, within the
//! chain-depth limit and (optionally) not revoked; otherwise the handshake fails.
//!
//! One rustls verifier accepts either set (rustls cannot tell us which anchor matched), and
//! after the handshake [`AmtpTrust::classify`] decides public or private by verifying the chain
//! against the public set alone — cached per certificate fingerprint, so a reconnecting host
//! pays for it once. A CA in both sets is a configuration error reported at start-up.
//!
//! Speed without losing revocation: the verifier keeps a cache of verified chains
//! ([`crate::chain_cache`], one per trust generation), so a known peer's full handshake skips
//! the CA signatures but never its CertificateVerify; session tickets ([`crate::tickets`])
//! let a returning peer resume, and a resumed session's stored chain passes the current
//! verifier again before it is admitted (else the peer does a full handshake and is refused
//! exactly as a new connection with that certificate would be). AMTP resumes by tickets only
//! (no server-side session cache), so nothing resumes around that check.

use crate::chain_cache::{self, CachingVerifier};
use crate::identity::PeerCertificate;
use crate::tickets::TicketGate;
use crate::tls::TlsOptions;
use crate::ttl_cache::TtlCache;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which trust set a client's chain belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustClass {
    /// Chains to the public anchors: full identity check, no relaying to public hops.
    Public,
    /// Chains to a private CA (customers, staff): AUTH required, bound to the certificate.
    Private,
}

/// Why the AMTP TLS setup was refused.
#[derive(Debug, thiserror::Error)]
pub enum AmtpTlsError {
    /// A CA bundle could not be read.
    #[error("cannot read CA bundle {path}: {detail}")]
    Bundle {
        /// File.
        path: String,
        /// Why.
        detail: String,
    },
    /// The same CA is in the public and a private set (spec §2 forbids it).
    #[error(
        "CA {subject} is in both the public set ({public}) and a private set ({private}); a public CA must not also be private"
    )]
    Overlap {
        /// The CA's subject.
        subject: String,
        /// Public bundle.
        public: String,
        /// Private bundle.
        private: String,
    },
    /// A CRL file could not be read.
    #[error("cannot read CRL {path}: {detail}")]
    Crl {
        /// File.
        path: String,
        /// Why.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("AMTP TLS configuration: {0}")]
    Config(String),
}

fn load_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, AmtpTlsError> {
    let err = |detail: String| AmtpTlsError::Bundle {
        path: path.display().to_string(),
        detail,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect)
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate found".into()));
    }
    Ok(certs)
}

fn subject_of(der: &CertificateDer<'_>) -> String {
    x509_parser::parse_x509_certificate(der).map_or_else(
        |_| "<unparseable>".to_string(),
        |(_, c)| c.subject().to_string(),
    )
}

/// Chain depth check in front of the WebPKI verifier.
#[derive(Debug)]
struct DepthLimited {
    inner: Arc<dyn ClientCertVerifier>,
    max_intermediates: usize,
}

impl ClientCertVerifier for DepthLimited {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if intermediates.len() > self.max_intermediates {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What the AMTP listener needs: its server config and the post-handshake classifier.
pub struct AmtpTrust {
    /// The server configuration (mandatory client certificates).
    pub server_config: Arc<ServerConfig>,
    /// The configuration for a peer resuming with a valid ticket, and the ticket gate both
    /// share (see [`crate::tls_accept`]); `None` without tickets or with
    /// `resumption_kx = "as-full"`.
    pub resumption: Option<(Arc<ServerConfig>, Arc<TicketGate>)>,
    /// The verifier the server config uses (either set, depth limit, CRLs, chain cache).
    either: Arc<CachingVerifier>,
    /// `None` when no public set is configured: every client is private.
    public_only: Option<Arc<dyn ClientCertVerifier>>,
    classes: TtlCache<[u8; 32], TrustClass>,
}

/// Where the trust material lives.
#[derive(Debug, Clone)]
pub struct TrustFiles {
    /// Public anchors bundle (PEM); `None`: private connections only.
    pub public_ca: Option<PathBuf>,
    /// Private CA bundles (PEM).
    pub private_ca: Vec<PathBuf>,
    /// CRLs (PEM).
    pub crl: Vec<PathBuf>,
    /// Most intermediates allowed between the client certificate and an anchor.
    pub max_intermediates: usize,
}

impl AmtpTrust {
    /// Load and check the trust sets and build the server config over our certificate.
    pub fn load(
        files: &TrustFiles,
        cert_chain: &Path,
        key: &Path,
        options: &TlsOptions,
    ) -> Result<Self, AmtpTlsError> {
        let public = match &files.public_ca {
            Some(p) => load_bundle(p)?,
            None => Vec::new(),
        };
        let public_name = files
            .public_ca
            .as_ref()
            .map_or_else(String::new, |p| p.display().to_string());
        let mut private = Vec::new();
        for p in &files.private_ca {
            for c in load_bundle(p)? {
                if let Some(dup) = public
                    .iter()
                    .find(|pc| pc.as_ref() == c.as_ref() || subject_of(pc) == subject_of(&c))
                {
                    return Err(AmtpTlsError::Overlap {
                        subject: subject_of(dup),
                        public: public_name.clone(),
                        private: p.display().to_string(),
                    });
                }
                private.push(c);
            }
        }
        let mut crls: Vec<CertificateRevocationListDer<'static>> = Vec::new();
        for p in &files.crl {
            let loaded: Vec<_> = CertificateRevocationListDer::pem_file_iter(p)
                .and_then(Iterator::collect)
                .map_err(|e| AmtpTlsError::Crl {
                    path: p.display().to_string(),
                    detail: e.to_string(),
                })?;
            crls.extend(loaded);
        }
        let provider = Arc::new(crate::tls::provider(&options.kx_groups));
        let store =
            |certs: &[CertificateDer<'static>]| -> Result<Arc<RootCertStore>, AmtpTlsError> {
                let mut roots = RootCertStore::empty();
                for c in certs {
                    roots.add(c.clone()).map_err(|e| {
                        AmtpTlsError::Config(format!("trust anchor {}: {e}", subject_of(c)))
                    })?;
                }
                Ok(Arc::new(roots))
            };
        let verifier =
            |roots: Arc<RootCertStore>| -> Result<Arc<dyn ClientCertVerifier>, AmtpTlsError> {
                let mut b = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
                if !crls.is_empty() {
                    b = b.with_crls(crls.clone()).allow_unknown_revocation_status();
                }
                let inner = b.build().map_err(|e| AmtpTlsError::Config(e.to_string()))?;
                Ok(Arc::new(DepthLimited {
                    inner,
                    max_intermediates: files.max_intermediates,
                }))
            };
        let all: Vec<_> = public.iter().chain(&private).cloned().collect();
        let either = Arc::new(CachingVerifier::new(
            verifier(store(&all)?)?,
            chain_cache::CAPACITY,
        ));
        let public_only = if public.is_empty() {
            None
        } else {
            Some(verifier(store(&public)?)?)
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_chain)
            .and_then(Iterator::collect)
            .map_err(|e| {
                AmtpTlsError::Config(format!("certificate {}: {e}", cert_chain.display()))
            })?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| AmtpTlsError::Config(format!("private key {}: {e}", key.display())))?;
        let build = |provider: Arc<rustls::crypto::CryptoProvider>| {
            let mut config = ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| AmtpTlsError::Config(e.to_string()))?
                .with_client_cert_verifier(either.clone())
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(|e| AmtpTlsError::Config(e.to_string()))?;
            crate::tls::prefer_server_order(&mut config);
            // Resumption by tickets only: a server-side session cache would resume without
            // the ticket gate's re-check of the stored chain.
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            Ok::<_, AmtpTlsError>(config)
        };
        let mut server_config = build(provider.clone())?;
        let gate = options
            .tickets
            .as_ref()
            .map(|keys| TicketGate::checking_chains(keys.clone(), either.clone()));
        let mut resumption = None;
        match &gate {
            Some(gate) => {
                server_config.ticketer = gate.clone();
                // Returning peers: the same configuration over the classical groups (the
                // ticket gate is shared, so tickets from either resume on either).
                if let Some(groups) = options.resumption_kx.groups(&options.kx_groups) {
                    let mut config = build(Arc::new(crate::tls::provider(&groups)))?;
                    config.ticketer = gate.clone();
                    resumption = Some((Arc::new(config), gate.clone()));
                }
            }
            // Nothing could resume: do not derive, encode and discard tickets per handshake.
            None => server_config.send_tls13_tickets = 0,
        }
        Ok(Self {
            server_config: Arc::new(server_config),
            resumption,
            either,
            public_only,
            classes: TtlCache::new(100_000, 16),
        })
    }

    /// Public or private, for a chain that already passed the handshake.
    pub fn classify(&self, peer: &PeerCertificate, chain: &[CertificateDer<'_>]) -> TrustClass {
        let now = Instant::now();
        if let Some(c) = self.classes.get(&peer.fingerprint, now) {
            return c;
        }
        let class = match chain.split_first() {
            Some((leaf, rest))
                if self
                    .public_only
                    .as_ref()
                    .is_some_and(|v| v.verify_client_cert(leaf, rest, UnixTime::now()).is_ok()) =>
            {
                TrustClass::Public
            }
            _ => TrustClass::Private,
        };
        self.classes
            .insert(peer.fingerprint, class, Duration::from_secs(3600), now);
        class
    }
}

impl AmtpTrust {
    /// Verified chains held by this generation's cache.
    pub fn chain_cache_len(&self) -> usize {
        self.either.len()
    }

    /// Verify a client chain (leaf first) exactly as the handshake does, and classify it.
    pub fn verify_chain(&self, chain: &[CertificateDer<'_>]) -> Result<TrustClass, rustls::Error> {
        let (leaf, rest) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        self.either
            .verify_client_cert(leaf, rest, UnixTime::now())?;
        let peer = PeerCertificate::from_der(leaf).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        Ok(self.classify(&peer, chain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, Issuer,
        KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber, date_time_ymd,
    };

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        der: CertificateDer<'static>,
        pem: String,
    }

    fn ca_signed_by(name: &str, parent: Option<&Ca>) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = match parent {
            Some(p) => params.signed_by(&key, &p.issuer).unwrap(),
            None => params.self_signed(&key).unwrap(),
        };
        Ca {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(name: &str, ca: &Ca, serial: u64) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.serial_number = Some(SerialNumber::from(serial));
        params.signed_by(&key, &ca.issuer).unwrap().der().clone()
    }

    fn trust(
        dir: &Path,
        public: &[&Ca],
        private: &[&Ca],
        crl: Option<String>,
        max_intermediates: usize,
    ) -> Result<AmtpTrust, AmtpTlsError> {
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let bundle = |cas: &[&Ca]| cas.iter().map(|c| c.pem.clone()).collect::<String>();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["relay.test".to_string()])
            .unwrap()
            .self_signed(&server_key)
            .unwrap();
        let files = TrustFiles {
            public_ca: (!public.is_empty()).then(|| write("public.pem", bundle(public))),
            private_ca: if private.is_empty() {
                vec![]
            } else {
                vec![write("private.pem", bundle(private))]
            },
            crl: crl
                .map(|c| vec![write("revoked.crl.pem", c)])
                .unwrap_or_default(),
            max_intermediates,
        };
        AmtpTrust::load(
            &files,
            &write("server.pem", server.pem()),
            &write("server-key.pem", server_key.serialize_pem()),
            &TlsOptions::default(),
        )
    }

    #[test]
    fn without_a_public_set_every_client_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let private = ca_signed_by("Private Root", None);
        let t = trust(dir.path(), &[], &[&private], None, 1).unwrap();
        assert_eq!(
            t.verify_chain(&[leaf("b.test", &private, 2)]).unwrap(),
            TrustClass::Private
        );
        let stranger = ca_signed_by("Stranger", None);
        assert!(t.verify_chain(&[leaf("c.test", &stranger, 3)]).is_err());
    }

    #[test]
    fn classification_overlap_depth_and_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let public = ca_signed_by("Public Root", None);
        let private = ca_signed_by("Private Root", None);
        let t = trust(dir.path(), &[&public], &[&private], None, 1).unwrap();
        assert_eq!(
            t.verify_chain(&[leaf("a.test", &public, 1)]).unwrap(),
            TrustClass::Public
        );
        assert_eq!(
            t.verify_chain(&[leaf("b.test", &private, 2)]).unwrap(),
            TrustClass::Private
        );
        let stranger = ca_signed_by("Stranger", None);
        assert!(t.verify_chain(&[leaf("c.test", &stranger, 3)]).is_err());

        // Depth: root -> int1 -> int2 -> leaf needs 2 intermediates; the limit is 1.
        let int1 = ca_signed_by("Intermediate 1", Some(&public));
        let int2 = ca_signed_by("Intermediate 2", Some(&int1));
        let deep = [
            leaf("deep.test", &int2, 4),
            int2.der.clone(),
            int1.der.clone(),
        ];
        assert!(
            t.verify_chain(&deep).is_err(),
            "two intermediates over a limit of one"
        );
        assert_eq!(
            t.verify_chain(&[leaf("one.test", &int1, 5), int1.der.clone()])
                .unwrap(),
            TrustClass::Public
        );
        let t2 = trust(dir.path(), &[&public], &[], None, 2).unwrap();
        assert_eq!(t2.verify_chain(&deep).unwrap(), TrustClass::Public);

        // A CA in both sets is refused at load, naming it.
        let e = trust(dir.path(), &[&public], &[&public], None, 3)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("Public Root") && e.contains("both"), "{e}");

        // Revocation: serial 66 is on the CRL, serial 67 is not.
        let crl = CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(66u64),
                revocation_time: date_time_ymd(2024, 6, 1),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&public.issuer)
        .unwrap();
        let t3 = trust(dir.path(), &[&public], &[], Some(crl.pem().unwrap()), 3).unwrap();
        assert!(
            t3.verify_chain(&[leaf("revoked.test", &public, 66)])
                .is_err(),
            "revoked"
        );
        assert_eq!(
            t3.verify_chain(&[leaf("fine.test", &public, 67)]).unwrap(),
            TrustClass::Public
        );
    }
}

#[cfg(test)]
mod handshakes;
