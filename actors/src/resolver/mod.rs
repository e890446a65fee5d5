//! The DNS/rDNS caching resolver: PTR, A, AAAA, SRV and MX lookups behind a cache that every
//! core reads without going through an actor.
//!
//! AMTP's hot path checks the PTR of every connecting client, and the same sender hosts
//! reconnect constantly, so a cache hit must cost neither a DNS round trip nor contention
//! between cores: [`ResolverHandle::resolve`] reads the sharded [`DnsCache`] (a [`crate::ttl_cache::TtlCache`]) directly and
//! only a miss becomes a [`Resolve`] message to the [`actor::ResolverActor`],
//! which asks the name servers and fills the cache.
//!
//! Why not hickory's own `Resolver`: its caching client answers PTR for 127.0.0.0/8 and ::1
//! (and A/AAAA for `*.localhost`) itself (RFC 6761) without asking any server, which would make
//! every loopback test host "localhost." and hide real rDNS data. We use hickory's name-server
//! layer ([`transport::HickoryTransport`], over `NameServerPool`) for the wire and keep our own
//! cache, which also gives us the TTL policy, negative-answer caps and counters we need.
//!
//! - [`transport`] — the [`transport::DnsTransport`] seam and its hickory implementation.
//! - [`actor`] — the resolver actor (misses).

pub mod actor;
pub mod transport;

#[cfg(test)]
mod tests;

use crate::metrics::{self, pool::Meter};
use actix::{Message, Recipient};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to look up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DnsQuery {
    /// Reverse DNS of an address (in-addr.arpa / ip6.arpa).
    Ptr(IpAddr),
    /// IPv4 addresses of a name.
    A(String),
    /// IPv6 addresses of a name.
    Aaaa(String),
    /// SRV records of a name (e.g. `_amtp._tcp.example.test`).
    Srv(String),
    /// MX records of a domain.
    Mx(String),
}

impl DnsQuery {
    /// The record type, as a metric label.
    pub fn type_label(&self) -> &'static str {
        match self {
            Self::Ptr(_) => "PTR",
            Self::A(_) => "A",
            Self::Aaaa(_) => "AAAA",
            Self::Srv(_) => "SRV",
            Self::Mx(_) => "MX",
        }
    }

    /// The same query with the name normalised (lower case, no trailing dot), so cache keys
    /// match however a name was written.
    pub fn normalized(self) -> Self {
        let n = |s: String| s.strip_suffix('.').unwrap_or(&s).to_ascii_lowercase();
        match self {
            Self::Ptr(ip) => Self::Ptr(ip),
            Self::A(s) => Self::A(n(s)),
            Self::Aaaa(s) => Self::Aaaa(n(s)),
            Self::Srv(s) => Self::Srv(n(s)),
            Self::Mx(s) => Self::Mx(n(s)),
        }
    }
}

/// One SRV target (RFC 2782).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    /// Lower is preferred.
    pub priority: u16,
    /// Relative weight within a priority.
    pub weight: u16,
    /// Port.
    pub port: u16,
    /// Target host (normalised); "." means "no service".
    pub target: String,
}

/// One MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// Lower is preferred.
    pub preference: u16,
    /// Exchange host (normalised); "." is a null MX (RFC 7505).
    pub exchange: String,
}

/// A positive answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Records {
    /// PTR names (normalised: lower case, no trailing dot).
    Names(Vec<String>),
    /// A or AAAA addresses.
    Addrs(Vec<IpAddr>),
    /// SRV targets.
    Srv(Vec<SrvTarget>),
    /// MX hosts.
    Mx(Vec<MxHost>),
}

/// Why there is no positive answer. The first two are facts about the DNS (cached, with a
/// capped TTL, and mapped to 5xx); `Temporary` is a failure to get an answer (never cached,
/// always 4xx).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The name does not exist.
    #[error("no such domain")]
    NxDomain,
    /// The name exists but has no records of this type.
    #[error("no records of this type")]
    NoData,
    /// Timeout, SERVFAIL, REFUSED, unreachable server…
    #[error("temporary DNS failure: {0}")]
    Temporary(String),
}

impl LookupError {
    /// Whether a retry later could succeed (reply 4xx, not 5xx).
    pub fn is_temporary(&self) -> bool {
        matches!(self, Self::Temporary(_))
    }
}

/// The result of a lookup.
pub type Answer = Result<Records, LookupError>;

/// The shared answer cache.
pub type DnsCache = crate::ttl_cache::TtlCache<DnsQuery, Answer>;

/// Handle → resolver actor: look up a DNS name (sent only on a cache miss). It lives here, not
/// in [`crate::messages`], because only the resolver's own handle sends it.
#[derive(Debug, Message)]
#[rtype(result = "Answer")]
pub struct Resolve(pub DnsQuery);

/// TTL policy for the cache (`[resolver]` config).
#[derive(Debug, Clone, Copy)]
pub struct TtlPolicy {
    /// Positive answers are kept at least this long (protects the servers from TTL=0 floods).
    pub min: Duration,
    /// …and at most this long.
    pub max: Duration,
    /// Negative answers (NXDOMAIN, NODATA) are kept for the SOA minimum, capped at this.
    pub negative_max: Duration,
    /// Negative answers without an SOA are kept this long.
    pub negative_default: Duration,
}

impl TtlPolicy {
    /// The policy `[resolver]` describes.
    pub fn from_config(c: &crate::config::ResolverConfig) -> Self {
        Self {
            min: c.min_ttl.0,
            max: c.max_ttl.0,
            negative_max: c.negative_max_ttl.0,
            negative_default: c.negative_max_ttl.0.min(Duration::from_secs(60)),
        }
    }
}

impl Default for TtlPolicy {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(5),
            max: Duration::from_secs(86_400),
            negative_max: Duration::from_secs(300),
            negative_default: Duration::from_secs(60),
        }
    }
}

impl TtlPolicy {
    /// How long to keep an answer with the given DNS TTL (seconds).
    pub fn ttl_for(&self, answer: &Answer, ttl: Option<u32>) -> Option<Duration> {
        let ttl = ttl.map(|s| Duration::from_secs(u64::from(s)));
        match answer {
            Ok(_) => Some(ttl.unwrap_or(self.min).clamp(self.min, self.max)),
            Err(LookupError::NxDomain | LookupError::NoData) => {
                Some(ttl.unwrap_or(self.negative_default).min(self.negative_max))
            }
            Err(LookupError::Temporary(_)) => None,
        }
    }
}

/// What sessions hold: the shared cache plus the actor for misses. Cheap to clone.
#[derive(Clone)]
pub struct ResolverHandle {
    cache: Arc<DnsCache>,
    actor: Recipient<Resolve>,
    /// The resolver actor's meter: a miss counts as queued in its mailbox.
    meter: Meter,
    /// A lookup that takes longer than this is a temporary failure.
    timeout: Duration,
}

impl ResolverHandle {
    /// A handle over `cache` (shared with the actor) and the actor's recipient.
    pub fn new(
        cache: Arc<DnsCache>,
        actor: Recipient<Resolve>,
        timeout: Duration,
        meter: Meter,
    ) -> Self {
        Self {
            cache,
            actor,
            meter,
            timeout,
        }
    }

    /// Resolve, from the cache when possible.
    pub async fn resolve(&self, query: DnsQuery) -> Answer {
        let query = query.normalized();
        if let Some(answer) = self.cache.get(&query, Instant::now()) {
            metrics::dns_cache(true);
            return answer;
        }
        metrics::dns_cache(false);
        // Counted as queued before the send; a timed-out request whose message already sat
        // in the mailbox is still handled (and counted out) by the actor.
        self.meter.queued();
        match tokio::time::timeout(self.timeout, self.actor.send(Resolve(query))).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                self.meter.not_queued();
                Err(LookupError::Temporary(format!("resolver unavailable: {e}")))
            }
            Err(_) => Err(LookupError::Temporary("resolver timed out".into())),
        }
    }

    /// Resolve, and say how long the answer stays valid (its remaining cache lifetime; zero
    /// when it was not cacheable).
    pub async fn resolve_with_ttl(&self, query: DnsQuery) -> (Answer, Duration) {
        let query = query.normalized();
        let answer = self.resolve(query.clone()).await;
        let ttl = self
            .cache
            .expires_in(&query, Instant::now())
            .unwrap_or_default();
        (answer, ttl)
    }

    /// The cache (for counters).
    pub fn cache(&self) -> &DnsCache {
        &self.cache
    }
}
