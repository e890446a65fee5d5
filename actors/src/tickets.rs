//! Stateless TLS session tickets: which keys encrypt them, how long a ticket is honoured, and
//! — for AMTP — the re-check that keeps a resumed session from outliving a revocation.
//!
//! A returning peer that presents a ticket skips the certificate exchange: no server signature,
//! no client CertificateVerify, no chain verification. That is the point (a resumed session
//! costs a fraction of a full one), and also the risk: rustls would resume a session whose
//! client certificate has since been revoked. [`TicketGate`] closes that gap. It wraps the
//! ticket keys of one configuration generation; when rustls asks it to decrypt a ticket it
//! reads the session state inside (the client's certificate chain and the ticket's creation
//! time), and declines the ticket — rustls then runs a full handshake — when the ticket is
//! older than the configured lifetime or the stored chain no longer verifies against the
//! **current** trust sets and CRLs. A declined ticket therefore ends exactly as a full
//! handshake from that certificate would: a revoked peer gets the same `certificate_revoked`
//! alert whether it tried to resume or not.
//!
//! Keys ([`TicketKeys`]) are rustls' aws-lc-rs ticketer (RFC 5077 construction: AES-256-CBC +
//! HMAC-SHA256, random keys that never leave the process), wrapped in a [`TicketRotator`] that
//! replaces them every `lifetime`; the previous keys decrypt for one more period and are then
//! erased. Keys are per process and per listener kind, kept across reloads
//! ([`TicketKeys::shared`]) so a SIGHUP does not force every peer into a full handshake; only
//! a change of the lifetime starts new keys. Behind a balancer, a peer that lands on another
//! node does a full handshake (keys are not shared between nodes).
//!
//! Reading the session state depends on rustls' encoding of a stored server session (rustls
//! 0.23, pinned in the workspace). Whatever cannot be read is declined: a format change costs
//! speed (full handshakes), never a revocation. The e2e resumption test fails if that happens.

use crate::tls_wire::Reader;
use crate::units::parse_duration;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::ProducesTickets;
use rustls::server::danger::ClientCertVerifier;
use rustls::ticketer::TicketRotator;
use serde::{Deserialize, Deserializer, de};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The longest lifetime a TLS 1.3 ticket may have (RFC 8446 §4.6.1: seven days).
pub const MAX_LIFETIME: Duration = Duration::from_secs(7 * 86_400);

/// `ticket_lifetime` in the config file: a duration (`"1h"`), or `"off"` / `"0s"` for no
/// tickets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketLifetime(pub Duration);

impl TicketLifetime {
    /// `None` when tickets are off.
    pub fn get(self) -> Option<Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }
}

impl Default for TicketLifetime {
    fn default() -> Self {
        Self(Duration::from_secs(3600))
    }
}

impl<'de> Deserialize<'de> for TicketLifetime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let lifetime = if s.trim().eq_ignore_ascii_case("off") {
            Duration::ZERO
        } else {
            parse_duration(&s)
                .map_err(|e| de::Error::custom(format!("{e}, or \"off\" for no tickets")))?
        };
        if lifetime > MAX_LIFETIME {
            return Err(de::Error::custom(format!(
                "ticket lifetime {s:?} is longer than 7 days, the most TLS 1.3 allows (RFC 8446)"
            )));
        }
        if !lifetime.is_zero() && lifetime < Duration::from_secs(1) {
            return Err(de::Error::custom(format!(
                "ticket lifetime {s:?} is under one second; use \"off\" to disable tickets"
            )));
        }
        Ok(Self(lifetime))
    }
}

/// Which listeners a key set serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketUse {
    /// SMTP listeners (`[tls] ticket_lifetime`).
    Smtp,
    /// AMTP listeners (`[amtp] ticket_lifetime`).
    Amtp,
}

/// Ticket encryption keys, rotated every `lifetime`. See the module docs.
pub struct TicketKeys {
    rotator: TicketRotator,
    lifetime: Duration,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKeys")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// One rustls aws-lc-rs ticketer with fresh random keys.
struct Fresh(Arc<dyn ProducesTickets>);

impl std::fmt::Debug for Fresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fresh")
    }
}

impl ProducesTickets for Fresh {
    fn enabled(&self) -> bool {
        true
    }
    fn lifetime(&self) -> u32 {
        self.0.lifetime()
    }
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.0.encrypt(plain)
    }
    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.0.decrypt(cipher)
    }
}

fn fresh_keys() -> Result<Box<dyn ProducesTickets>, rustls::crypto::GetRandomFailed> {
    rustls::crypto::aws_lc_rs::Ticketer::new()
        .map(|t| Box::new(Fresh(t)) as Box<dyn ProducesTickets>)
        .map_err(|_| rustls::crypto::GetRandomFailed)
}

static SHARED: Mutex<[Option<Arc<TicketKeys>>; 2]> = Mutex::new([None, None]);

impl TicketKeys {
    /// New random keys for tickets honoured `lifetime` (rotated every `lifetime`).
    pub fn new(lifetime: Duration) -> Result<Arc<Self>, rustls::Error> {
        let secs = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX).max(1);
        Ok(Arc::new(Self {
            rotator: TicketRotator::new(secs, fresh_keys)?,
            lifetime,
        }))
    }

    /// The process's keys for `kind` (kept across reloads), or new ones when there are none
    /// yet or the lifetime changed. `None` when tickets are off.
    pub fn shared(
        kind: TicketUse,
        lifetime: TicketLifetime,
    ) -> Result<Option<Arc<Self>>, rustls::Error> {
        let Some(lifetime) = lifetime.get() else {
            return Ok(None);
        };
        let mut shared = SHARED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slot = &mut shared[kind as usize];
        if let Some(keys) = slot.as_ref().filter(|k| k.lifetime == lifetime) {
            return Ok(Some(keys.clone()));
        }
        let keys = Self::new(lifetime)?;
        *slot = Some(keys.clone());
        Ok(Some(keys))
    }

    /// How long a ticket is honoured.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }
}

/// Why a ticket was declined (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declined {
    /// Older than the lifetime.
    Expired,
    /// The stored client chain no longer verifies (revoked, expired, trust removed).
    Chain,
    /// The session state could not be read, or an AMTP session carries no client chain.
    Unreadable,
}

impl Declined {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Chain => "chain",
            Self::Unreadable => "unreadable",
        }
    }
}

/// The ticketer a server configuration uses: one generation's view of the process keys. See
/// the module docs.
pub struct TicketGate {
    keys: Arc<TicketKeys>,
    /// AMTP: the current generation's client verifier; a resumed chain must pass it again.
    chain_check: Option<Arc<dyn ClientCertVerifier>>,
}

impl std::fmt::Debug for TicketGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketGate")
            .field("keys", &self.keys)
            .field("chain_check", &self.chain_check.is_some())
            .finish()
    }
}

impl TicketGate {
    /// Tickets for listeners without client certificates: only the lifetime is checked.
    pub fn new(keys: Arc<TicketKeys>) -> Arc<Self> {
        Arc::new(Self {
            keys,
            chain_check: None,
        })
    }

    /// Tickets for AMTP: a resumed session's stored chain must pass `verifier` again.
    pub fn checking_chains(
        keys: Arc<TicketKeys>,
        verifier: Arc<dyn ClientCertVerifier>,
    ) -> Arc<Self> {
        Arc::new(Self {
            keys,
            chain_check: Some(verifier),
        })
    }

    /// Whether rustls would resume from this ticket now (it decrypts, is within its lifetime
    /// and, for AMTP, its chain verifies): the check [`ProducesTickets::decrypt`] makes,
    /// without counting a decline. For choosing a configuration before rustls decides.
    pub fn honours(&self, cipher: &[u8]) -> bool {
        self.keys
            .rotator
            .decrypt(cipher)
            .is_some_and(|plain| self.admit(&plain, UnixTime::now()).is_ok())
    }

    /// Whether a decrypted session state may be resumed now.
    fn admit(&self, plain: &[u8], now: UnixTime) -> Result<(), Declined> {
        let stored = StoredSession::read(plain).ok_or(Declined::Unreadable)?;
        let age = now.as_secs().saturating_sub(stored.created);
        if age >= self.keys.lifetime.as_secs() {
            return Err(Declined::Expired);
        }
        if let Some(verifier) = &self.chain_check {
            let (leaf, rest) = stored.chain.split_first().ok_or(Declined::Unreadable)?;
            verifier
                .verify_client_cert(leaf, rest, now)
                .map_err(|_| Declined::Chain)?;
        }
        Ok(())
    }
}

impl ProducesTickets for TicketGate {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.keys.lifetime.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.keys.rotator.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let plain = self.keys.rotator.decrypt(cipher)?;
        match self.admit(&plain, UnixTime::now()) {
            Ok(()) => Some(plain),
            Err(why) => {
                crate::metrics::ticket_declined(why.label());
                None
            }
        }
    }
}

/// What the gate needs from a stored server session: its creation time and client chain.
struct StoredSession<'a> {
    created: u64,
    chain: Vec<CertificateDer<'a>>,
}

impl<'a> StoredSession<'a> {
    /// rustls 0.23's `ServerSessionValue` encoding: optional SNI (u8 flag, u8-length name),
    /// version (u16), cipher suite (u16), master secret (u8 length), extended master secret
    /// (u8), optional client chain (u8 flag; u24-length list of u24-length certificates),
    /// optional ALPN (u8 flag, u8 length), application data (u16 length), creation time
    /// (u64 seconds), age offset (u32).
    fn read(plain: &'a [u8]) -> Option<Self> {
        let mut r = Reader::new(plain);
        if r.flag()? {
            r.vec(1)?;
        }
        r.take(4)?;
        r.vec(1)?;
        r.take(1)?;
        let mut chain = Vec::new();
        if r.flag()? {
            let mut list = r.vec(3)?;
            while !list.is_empty() {
                chain.push(CertificateDer::from(list.vec(3)?.rest()));
            }
        }
        if r.flag()? {
            r.vec(1)?;
        }
        r.vec(2)?;
        let created = r.uint(8)?;
        r.take(4)?;
        r.is_empty().then_some(Self { created, chain })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(chain: Option<&[&[u8]]>, created: u64) -> Vec<u8> {
        let mut v = vec![1, 4];
        v.extend(b"a.te");
        v.extend([0x03, 0x04, 0x13, 0x01]);
        v.push(3);
        v.extend([9, 9, 9]);
        v.push(0);
        match chain {
            Some(certs) => {
                v.push(1);
                let body: Vec<u8> = certs
                    .iter()
                    .flat_map(|c| {
                        let n = u32::try_from(c.len()).unwrap().to_be_bytes();
                        n[1..].iter().chain(c.iter()).copied().collect::<Vec<_>>()
                    })
                    .collect();
                v.extend(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
                v.extend(body);
            }
            None => v.push(0),
        }
        v.push(0);
        v.extend([0, 2, 7, 7]);
        v.extend(created.to_be_bytes());
        v.extend([1, 2, 3, 4]);
        v
    }

    #[test]
    fn stored_sessions_are_read_and_anything_else_is_not() {
        let plain = encode(Some(&[b"leaf", b"intermediate"]), 1_700_000_000);
        let s = StoredSession::read(&plain).unwrap();
        assert_eq!(s.created, 1_700_000_000);
        assert_eq!(s.chain.len(), 2);
        assert_eq!(s.chain[1].as_ref(), b"intermediate");
        let none = encode(None, 5);
        assert!(StoredSession::read(&none).unwrap().chain.is_empty());
        // Truncated, padded or garbage: declined.
        for bad in [
            &plain[..plain.len() - 1],
            &[plain.as_slice(), &[0]].concat(),
            b"x",
        ] {
            assert!(StoredSession::read(bad).is_none());
        }
    }

    #[test]
    fn lifetimes_parse_off_and_bounds() {
        #[derive(Deserialize)]
        struct T {
            l: TicketLifetime,
        }
        let parse = |s: &str| toml::from_str::<T>(&format!("l = {s:?}")).map(|t| t.l.get());
        assert_eq!(parse("off").unwrap(), None);
        assert_eq!(parse("0s").unwrap(), None);
        assert_eq!(parse("2h").unwrap(), Some(Duration::from_secs(7200)));
        let e = parse("8d").unwrap_err().to_string();
        assert!(e.contains("7 days"), "{e}");
        assert!(parse("500ms").unwrap_err().to_string().contains("off"));
        assert!(parse("soon").is_err());
    }

    #[test]
    fn shared_keys_survive_until_the_lifetime_changes() {
        let hour = TicketLifetime(Duration::from_secs(3600));
        let a = TicketKeys::shared(TicketUse::Smtp, hour).unwrap().unwrap();
        let b = TicketKeys::shared(TicketUse::Smtp, hour).unwrap().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = TicketKeys::shared(TicketUse::Smtp, TicketLifetime(Duration::from_secs(60)))
            .unwrap()
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(
            TicketKeys::shared(TicketUse::Smtp, TicketLifetime(Duration::ZERO))
                .unwrap()
                .is_none()
        );
    }
}
