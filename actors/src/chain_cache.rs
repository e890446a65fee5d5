//! Verified AMTP client chains, so that a full handshake from a peer seen before skips the
//! chain verification (path building, the CA signatures, the CRL lookups) while its
//! CertificateVerify — the proof that it holds the private key — is still checked every time.
//!
//! [`CachingVerifier`] wraps the rustls WebPKI client verifier. A chain that verified is
//! remembered by the SHA-256 of its certificates' fingerprints (leaf first, in the order
//! presented), until the earliest `notAfter` in the chain (at most [`MAX_AGE`]). The cache
//! belongs to one trust generation: every load of the trust sets (start, reload) builds a new
//! verifier with an empty cache, so a CRL or CA change applies to every peer at once. Only
//! successes are cached; a refused chain is verified again next time. The signature methods
//! (`verify_tls12_signature`, `verify_tls13_signature`) always go to the inner verifier.
//!
//! Bounded: at most [`CAPACITY`] chains (the soonest-to-expire eighth of a full shard is
//! dropped). Hits, misses and the size are exported (`amtp_tls_chain_cache_*`).

use crate::ttl_cache::TtlCache;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most chains remembered per trust generation.
pub const CAPACITY: usize = 65_536;
/// Longest a verified chain is trusted without verifying it again.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The cache key: SHA-256 over the SHA-256 fingerprints of the presented certificates.
pub fn chain_key(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> [u8; 32] {
    use aws_lc_rs::digest::{Context, SHA256, digest};
    let mut ctx = Context::new(&SHA256);
    for cert in std::iter::once(end_entity).chain(intermediates) {
        ctx.update(digest(&SHA256, cert).as_ref());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// Seconds until the earliest `notAfter` of the chain, from `now`.
fn valid_for(chain: &[&CertificateDer<'_>], now: UnixTime) -> Option<Duration> {
    let mut earliest = u64::MAX;
    for der in chain {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let not_after = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
        earliest = earliest.min(not_after);
    }
    Some(Duration::from_secs(earliest.checked_sub(now.as_secs())?))
}

/// See the module docs.
pub struct CachingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    verified: TtlCache<[u8; 32], ()>,
}

impl std::fmt::Debug for CachingVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachingVerifier")
            .field("inner", &self.inner)
            .field("chains", &self.verified.len())
            .finish()
    }
}

impl CachingVerifier {
    /// A cache of at most `capacity` chains in front of `inner`.
    pub fn new(inner: Arc<dyn ClientCertVerifier>, capacity: usize) -> Self {
        Self {
            inner,
            verified: TtlCache::new(capacity, 16),
        }
    }

    /// Chains held now.
    pub fn len(&self) -> usize {
        self.verified.len()
    }

    /// Whether no chain is held.
    pub fn is_empty(&self) -> bool {
        self.verified.is_empty()
    }
}

impl ClientCertVerifier for CachingVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let key = chain_key(end_entity, intermediates);
        let at = Instant::now();
        if self.verified.get(&key, at).is_some() {
            crate::metrics::chain_cache(true);
            return Ok(ClientCertVerified::assertion());
        }
        crate::metrics::chain_cache(false);
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let chain: Vec<&CertificateDer<'_>> =
            std::iter::once(end_entity).chain(intermediates).collect();
        if let Some(ttl) = valid_for(&chain, now).filter(|d| !d.is_zero()) {
            self.verified.insert(key, (), ttl.min(MAX_AGE), at);
        }
        Ok(verified)
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

    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
}
