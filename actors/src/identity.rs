//! AMTP identity (spec/AMTP.md §3): the client certificate's name must equal a PTR name of the
//! connecting IP, and the EHLO argument must equal that same name.
//!
//! [`bind`] and [`check_ehlo`] are the pure rules (table-tested). [`IdentityChecker`] performs
//! the DNS part through the shared resolver and caches a verified binding per (client IP,
//! certificate fingerprint) for the remaining DNS TTL, so a sender host that reconnects costs
//! one cache read — no DNS, no certificate parsing beyond the fingerprint.

use crate::resolver::{DnsQuery, LookupError, Records, ResolverHandle};
use crate::ttl_cache::TtlCache;
use amtp_proto::Reply;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Names a certificate asserts: subject CNs and SAN dNSNames, normalised (lower case, no
/// trailing dot); wildcard names are dropped (spec: no wildcards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// Normalised names.
    pub names: Vec<String>,
    /// SHA-256 of the DER, the cache key together with the IP.
    pub fingerprint: [u8; 32],
}

/// A name in comparable form.
pub fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

impl PeerCertificate {
    /// Parse the leaf certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("unparseable certificate: {e}"))?;
        let mut names: Vec<String> = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(normalize)
            .collect();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for g in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(d) = g {
                    names.push(normalize(d));
                }
            }
        }
        names.retain(|n| !n.is_empty() && !n.contains('*'));
        names.sort();
        names.dedup();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(digest.as_ref());
        Ok(Self { names, fingerprint })
    }
}

/// Why an identity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The certificate carries no usable DNS name.
    #[error("the client certificate names no host (CN or SAN dNSName)")]
    NoCertificateName,
    /// The client IP has no PTR record (NXDOMAIN or NODATA).
    #[error("no PTR record for the client address")]
    NoPtr,
    /// None of the PTR names is a certificate name.
    #[error("certificate names {cert:?} do not include any PTR name {ptr:?}")]
    PtrMismatch {
        /// Certificate names.
        cert: Vec<String>,
        /// PTR names.
        ptr: Vec<String>,
    },
    /// The PTR name does not resolve back to the client address (forward confirmation).
    #[error("{name} does not resolve back to the client address")]
    NotForwardConfirmed {
        /// The name.
        name: String,
    },
    /// EHLO named another host.
    #[error("EHLO {ehlo} does not match the authenticated name {identity}")]
    EhloMismatch {
        /// What the client said.
        ehlo: String,
        /// What it proved.
        identity: String,
    },
    /// DNS could not answer now (timeout, SERVFAIL): try again later.
    #[error("DNS lookup failed temporarily: {0}")]
    Temporary(String),
}

impl IdentityError {
    /// A bounded metric label for the failure.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoCertificateName => "no_certificate_name",
            Self::NoPtr => "no_ptr",
            Self::PtrMismatch { .. } => "ptr_mismatch",
            Self::NotForwardConfirmed { .. } => "not_forward_confirmed",
            Self::EhloMismatch { .. } => "ehlo_mismatch",
            Self::Temporary(_) => "dns_temporary",
        }
    }

    /// The reply to EHLO: 454 for a temporary DNS failure (never 5xx), 504 otherwise.
    pub fn reply(&self) -> Reply {
        match self {
            Self::Temporary(_) => Reply::new(
                454,
                "4.7.0",
                "Temporary authentication failure (DNS); try again later",
            ),
            _ => Reply::new(504, "5.7.1", "Authentication failed"),
        }
    }
}

/// The certificate name bound by the PTR answer: the first PTR name that the certificate also
/// names.
pub fn bind(
    cert_names: &[String],
    ptr: &Result<Records, LookupError>,
) -> Result<String, IdentityError> {
    if cert_names.is_empty() {
        return Err(IdentityError::NoCertificateName);
    }
    let ptr_names = match ptr {
        Ok(Records::Names(n)) if !n.is_empty() => n,
        Ok(_) | Err(LookupError::NxDomain | LookupError::NoData) => {
            return Err(IdentityError::NoPtr);
        }
        Err(LookupError::Temporary(e)) => return Err(IdentityError::Temporary(e.clone())),
    };
    ptr_names
        .iter()
        .map(|p| normalize(p))
        .find(|p| cert_names.contains(p))
        .ok_or_else(|| IdentityError::PtrMismatch {
            cert: cert_names.to_vec(),
            ptr: ptr_names.clone(),
        })
}

/// EHLO must name the bound identity (case-insensitive, trailing dot ignored).
pub fn check_ehlo(identity: &str, ehlo: &str) -> Result<(), IdentityError> {
    if normalize(ehlo) == identity {
        Ok(())
    } else {
        Err(IdentityError::EhloMismatch {
            ehlo: ehlo.to_string(),
            identity: identity.to_string(),
        })
    }
}

/// Does `name` resolve (A or AAAA) to `ip`?
fn confirms(answer: &Result<Records, LookupError>, ip: IpAddr) -> Result<bool, IdentityError> {
    match answer {
        Ok(Records::Addrs(a)) => Ok(a.contains(&ip)),
        Ok(_) | Err(LookupError::NxDomain | LookupError::NoData) => Ok(false),
        Err(LookupError::Temporary(e)) => Err(IdentityError::Temporary(e.clone())),
    }
}

/// Verified bindings, per (client IP, certificate fingerprint).
pub type IdentityCache = TtlCache<(IpAddr, [u8; 32]), String>;

/// Performs the DNS part of the check, with the identity cache in front.
#[derive(Clone)]
pub struct IdentityChecker {
    resolver: ResolverHandle,
    cache: Arc<IdentityCache>,
    /// Also require the PTR name to resolve back to the client IP.
    pub require_forward_confirmation: bool,
}

impl IdentityChecker {
    /// A checker over the shared resolver and cache.
    pub fn new(
        resolver: ResolverHandle,
        cache: Arc<IdentityCache>,
        require_forward_confirmation: bool,
    ) -> Self {
        Self {
            resolver,
            cache,
            require_forward_confirmation,
        }
    }

    /// The certificate name bound to `ip` by reverse DNS (and, if configured, confirmed
    /// forward). EHLO is checked separately with [`check_ehlo`].
    pub async fn verify(
        &self,
        ip: IpAddr,
        cert: &PeerCertificate,
    ) -> Result<String, IdentityError> {
        self.verify_cached(ip, cert).await.map(|(name, _)| name)
    }

    /// [`IdentityChecker::verify`], also saying whether the binding came from the cache.
    pub async fn verify_cached(
        &self,
        ip: IpAddr,
        cert: &PeerCertificate,
    ) -> Result<(String, bool), IdentityError> {
        let key = (ip, cert.fingerprint);
        if let Some(name) = self.cache.get(&key, Instant::now()) {
            return Ok((name, true));
        }
        let (ptr, mut ttl) = self.resolver.resolve_with_ttl(DnsQuery::Ptr(ip)).await;
        let name = bind(&cert.names, &ptr)?;
        if self.require_forward_confirmation {
            let query = if ip.is_ipv4() {
                DnsQuery::A(name.clone())
            } else {
                DnsQuery::Aaaa(name.clone())
            };
            let (answer, forward_ttl) = self.resolver.resolve_with_ttl(query).await;
            if !confirms(&answer, ip)? {
                return Err(IdentityError::NotForwardConfirmed { name });
            }
            ttl = ttl.min(forward_ttl);
        }
        if ttl > Duration::ZERO {
            self.cache.insert(key, name.clone(), ttl, Instant::now());
        }
        Ok((name, false))
    }

    /// The identity cache (for counters).
    pub fn cache(&self) -> &IdentityCache {
        &self.cache
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn binding_table() {
        let ptr = |v: &[&str]| -> Result<Records, LookupError> { Ok(Records::Names(names(v))) };
        type Case = (
            Vec<String>,
            Result<Records, LookupError>,
            Result<&'static str, IdentityError>,
        );
        let cases: Vec<Case> = vec![
            (names(&["mx.a.test"]), ptr(&["mx.a.test"]), Ok("mx.a.test")),
            (names(&["mx.a.test"]), ptr(&["MX.A.TEST."]), Ok("mx.a.test")),
            (
                names(&["mx.a.test", "other.a.test"]),
                ptr(&["x.b.test", "other.a.test"]),
                Ok("other.a.test"),
            ),
            (
                names(&["mx.a.test"]),
                ptr(&["mx.b.test"]),
                Err(IdentityError::PtrMismatch {
                    cert: names(&["mx.a.test"]),
                    ptr: names(&["mx.b.test"]),
                }),
            ),
            (
                names(&["mx.a.test"]),
                Err(LookupError::NxDomain),
                Err(IdentityError::NoPtr),
            ),
            (
                names(&["mx.a.test"]),
                Err(LookupError::NoData),
                Err(IdentityError::NoPtr),
            ),
            (names(&["mx.a.test"]), ptr(&[]), Err(IdentityError::NoPtr)),
            (
                names(&["mx.a.test"]),
                Err(LookupError::Temporary("timeout".into())),
                Err(IdentityError::Temporary("timeout".into())),
            ),
            (
                vec![],
                ptr(&["mx.a.test"]),
                Err(IdentityError::NoCertificateName),
            ),
        ];
        for (cert, ptr, expected) in cases {
            assert_eq!(
                bind(&cert, &ptr),
                expected.map(str::to_string),
                "{cert:?} {ptr:?}"
            );
        }
        assert_eq!(check_ehlo("mx.a.test", "MX.a.test."), Ok(()));
        assert!(check_ehlo("mx.a.test", "mx.b.test").is_err());
        assert_eq!(IdentityError::Temporary("x".into()).reply().code, 454);
        assert_eq!(
            IdentityError::NoPtr.reply().to_string(),
            "504 5.7.1 Authentication failed"
        );
    }

    #[test]
    fn certificate_names_cn_and_san_without_wildcards() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![
            "Host1.Example.TEST".to_string(),
            "*.example.test".to_string(),
        ])
        .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cn-name.example.test.");
        let cert = params.self_signed(&key).unwrap();
        let pc = PeerCertificate::from_der(cert.der()).unwrap();
        assert_eq!(
            pc.names,
            names(&["cn-name.example.test", "host1.example.test"])
        );
        let again = PeerCertificate::from_der(cert.der()).unwrap();
        assert_eq!(pc.fingerprint, again.fingerprint);
        assert!(PeerCertificate::from_der(b"not a certificate").is_err());
    }
}
