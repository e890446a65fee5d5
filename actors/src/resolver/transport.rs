//! The seam between the resolver and the wire: [`DnsTransport`] answers one query with the
//! records and the TTL to cache them for. [`HickoryTransport`] asks real name servers through
//! hickory's `NameServerPool` (UDP, TCP on truncation, server rotation), bypassing the caching
//! client's RFC 6761 localhost synthesis (see the parent module).

use super::{Answer, DnsQuery, LookupError, MxHost, Records, SrvTarget};
use futures_util::StreamExt;
use hickory_resolver::config::{NameServerConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::xfer::DnsHandle;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::{DnsRequestOptions, Query};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::{NameServerPool, PoolContext, TlsConfig};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// An answer and the DNS TTL (seconds) that came with it: the minimum over the answer records,
/// or the SOA-derived negative TTL; `None` when the server gave none.
pub type TimedAnswer = (Answer, Option<u32>);

/// Something that can answer DNS queries.
pub trait DnsTransport: Send + Sync + 'static {
    /// Answer one query.
    fn query(&self, query: DnsQuery) -> Pin<Box<dyn Future<Output = TimedAnswer> + Send>>;
}

/// Real name servers via hickory.
pub struct HickoryTransport {
    pool: NameServerPool<TokioRuntimeProvider>,
}

impl HickoryTransport {
    /// Ask these servers (UDP and TCP on each address's port), each try bounded by `timeout`,
    /// `attempts` tries in all.
    pub fn new(
        servers: &[SocketAddr],
        timeout: Duration,
        attempts: usize,
    ) -> Result<Self, NetError> {
        let configs = servers.iter().map(|addr| {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            ns
        });
        let mut opts = ResolverOpts::default();
        opts.timeout = timeout;
        opts.attempts = attempts;
        let cx = Arc::new(PoolContext::new(opts, TlsConfig::new()?));
        Ok(Self {
            pool: NameServerPool::from_config(configs, cx, TokioRuntimeProvider::default()),
        })
    }
}

impl HickoryTransport {
    /// The name servers of the system configuration (`/etc/resolv.conf`).
    pub fn from_system(timeout: Duration, attempts: usize) -> Result<Self, String> {
        let (config, _) = hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?;
        let servers: Vec<SocketAddr> = config
            .name_servers()
            .iter()
            .map(|ns| SocketAddr::new(ns.ip, ns.connections.first().map_or(53, |c| c.port)))
            .collect();
        if servers.is_empty() {
            return Err("the system resolver configuration names no name server".into());
        }
        Self::new(&servers, timeout, attempts).map_err(|e| e.to_string())
    }
}

fn name_text(n: &Name) -> String {
    let s = n.to_ascii();
    s.strip_suffix('.').unwrap_or(&s).to_ascii_lowercase()
}

/// The wire query; `None` for a name that cannot be queried (and so cannot exist).
fn to_query(q: &DnsQuery) -> Option<Query> {
    let name = |n: &str| Name::from_ascii(format!("{n}.")).ok();
    let (name, rtype) = match q {
        DnsQuery::Ptr(ip) => (Name::from(*ip), RecordType::PTR),
        DnsQuery::A(n) => (name(n)?, RecordType::A),
        DnsQuery::Aaaa(n) => (name(n)?, RecordType::AAAA),
        DnsQuery::Srv(n) => (name(n)?, RecordType::SRV),
        DnsQuery::Mx(n) => (name(n)?, RecordType::MX),
    };
    Some(Query::query(name, rtype))
}

fn records_of(query: &DnsQuery, answers: &[hickory_resolver::proto::rr::Record]) -> Records {
    let data = answers.iter().map(|r| &r.data);
    match query {
        DnsQuery::Ptr(_) => Records::Names(
            data.filter_map(|d| {
                if let RData::PTR(p) = d {
                    Some(name_text(&p.0))
                } else {
                    None
                }
            })
            .collect(),
        ),
        DnsQuery::A(_) | DnsQuery::Aaaa(_) => Records::Addrs(
            data.filter_map(|d| match d {
                RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(std::net::IpAddr::V6(a.0)),
                _ => None,
            })
            .collect(),
        ),
        DnsQuery::Srv(_) => Records::Srv(
            data.filter_map(|d| {
                if let RData::SRV(s) = d {
                    Some(SrvTarget {
                        priority: s.priority,
                        weight: s.weight,
                        port: s.port,
                        target: name_text(&s.target),
                    })
                } else {
                    None
                }
            })
            .collect(),
        ),
        DnsQuery::Mx(_) => Records::Mx(
            data.filter_map(|d| {
                if let RData::MX(m) = d {
                    Some(MxHost {
                        preference: m.preference,
                        exchange: name_text(&m.exchange),
                    })
                } else {
                    None
                }
            })
            .collect(),
        ),
    }
}

fn is_empty(r: &Records) -> bool {
    match r {
        Records::Names(v) => v.is_empty(),
        Records::Addrs(v) => v.is_empty(),
        Records::Srv(v) => v.is_empty(),
        Records::Mx(v) => v.is_empty(),
    }
}

impl DnsTransport for HickoryTransport {
    fn query(&self, query: DnsQuery) -> Pin<Box<dyn Future<Output = TimedAnswer> + Send>> {
        let pool = self.pool.clone();
        Box::pin(async move {
            let Some(q) = to_query(&query) else {
                return (Err(LookupError::NxDomain), None);
            };
            let mut responses = pool.lookup(q, DnsRequestOptions::default());
            match responses.next().await {
                Some(Ok(response)) => {
                    let ttl = response.answers.iter().map(|r| r.ttl).min();
                    let records = records_of(&query, &response.answers);
                    if is_empty(&records) {
                        (Err(LookupError::NoData), response.negative_ttl())
                    } else {
                        (Ok(records), ttl)
                    }
                }
                Some(Err(NetError::Dns(DnsError::NoRecordsFound(nr)))) => {
                    let err = if nr.response_code
                        == hickory_resolver::proto::op::ResponseCode::NXDomain
                    {
                        LookupError::NxDomain
                    } else {
                        LookupError::NoData
                    };
                    (Err(err), nr.negative_ttl)
                }
                Some(Err(e)) => (Err(LookupError::Temporary(e.to_string())), None),
                None => (Err(LookupError::Temporary("no response".into())), None),
            }
        })
    }
}
