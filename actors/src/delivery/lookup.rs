//! The lookups behind a plan: for each pending recipient domain, ask [`plan::choose`] which
//! kind of route applies, resolve it (SRV, MX, A/AAAA through the resolver actor) and let the
//! pure interpreters in [`plan`] say what the answers mean; then [`plan::assemble`] makes the
//! jobs. Everything here is I/O; every decision it acts on is in `plan`.

use super::outbound::HopTarget;
use super::plan::{self, Plan, RouteChoice, Routed, SrvAnswer};
use super::route::Hop;
use super::router::RouterShared;
use crate::config::{HopProtocol, HopTls};
use crate::resolver::{DnsQuery, LookupError, Records};
use amtp_proto::client::{Cause, Disposition, TlsPolicy};
use amtp_storage::{MessageRecord, Origin, QueueId};
use std::net::{IpAddr, SocketAddr};

fn xorshift(seed: u64) -> impl FnMut(u32) -> u32 {
    let mut x = seed | 1;
    move |max| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        u32::try_from(x % (u64::from(max) + 1)).unwrap_or(0)
    }
}

/// A, then AAAA, for one hop.
async fn addresses(
    s: &RouterShared,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, Disposition> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let Some(resolver) = &s.resolver else {
        return Err(Disposition::Deferred(Cause::LocalConfig(format!(
            "cannot resolve {host}: no resolver configured"
        ))));
    };
    let mut addrs = Vec::new();
    let mut temporary = None;
    for q in [
        DnsQuery::A(host.to_string()),
        DnsQuery::Aaaa(host.to_string()),
    ] {
        match resolver.resolve(q).await {
            Ok(Records::Addrs(a)) => {
                addrs.extend(a.into_iter().map(|ip| SocketAddr::new(ip, port)))
            }
            Err(LookupError::Temporary(e)) => temporary = Some(e),
            _ => {}
        }
    }
    plan::after_addresses(host, addrs.len(), temporary).map(|()| addrs)
}

async fn targets(
    s: &RouterShared,
    hops: &[Hop],
    amtp: bool,
    tls: TlsPolicy,
) -> Result<Vec<HopTarget>, Disposition> {
    let mut out = Vec::new();
    let mut last = None;
    for h in hops {
        match addresses(s, &h.host, h.port).await {
            Ok(addrs) => out.extend(addrs.into_iter().map(|addr| HopTarget {
                host: h.host.clone(),
                addr,
                amtp,
                tls,
            })),
            Err(d) => last = Some(d),
        }
    }
    match (out.is_empty(), last) {
        (false, _) => Ok(out),
        (true, Some(d)) => Err(d),
        (true, None) => Err(Disposition::Failed(Cause::NoRoute {
            status: amtp_proto::EnhancedStatus::new(5, 4, 4),
            detail: "no next hop".into(),
        })),
    }
}

fn tls_policy(t: HopTls) -> TlsPolicy {
    match t {
        HopTls::None => TlsPolicy::Never,
        HopTls::Opportunistic => TlsPolicy::Opportunistic,
        HopTls::Required => TlsPolicy::Required,
    }
}

/// Resolve the route [`plan::choose`] picked for a recipient domain.
async fn route_domain(
    s: &RouterShared,
    domain: &str,
    origin: Origin,
) -> Result<Routed, Disposition> {
    let public = match plan::choose(domain, origin, &s.routes) {
        RouteChoice::Refused(d) => return Err(d),
        RouteChoice::Configured(r) => {
            let amtp = r.protocol == HopProtocol::Amtp;
            let hop = Hop {
                host: r.host.clone(),
                port: r.port,
            };
            return Ok(Routed {
                key: format!("route:{}:{}", r.host, r.port),
                targets: targets(s, &[hop], amtp, tls_policy(r.tls)).await?,
                amtp,
            });
        }
        RouteChoice::Public => domain,
    };
    let Some(resolver) = &s.resolver else {
        return Err(Disposition::Deferred(Cause::LocalConfig(format!(
            "no route for {public} and no resolver configured"
        ))));
    };
    let seed = amtp_storage::now_ms() ^ (domain.len() as u64).rotate_left(32);
    let mut rng = xorshift(seed);
    let srv = resolver
        .resolve(DnsQuery::Srv(format!("_amtp._tcp.{domain}")))
        .await;
    match plan::after_srv(domain, srv, s.smtp_fallback, &mut rng) {
        SrvAnswer::Final(d) => Err(d),
        SrvAnswer::Amtp(h) => Ok(Routed {
            key: format!("amtp:{domain}"),
            targets: targets(s, &h, true, TlsPolicy::Implicit).await?,
            amtp: true,
        }),
        SrvAnswer::TryMx => {
            let mx = resolver.resolve(DnsQuery::Mx(domain.to_string())).await;
            let h = plan::after_mx(domain, mx, s.smtp_fallback_port, &mut rng)?;
            Ok(Routed {
                key: format!("smtp:{domain}"),
                targets: targets(s, &h, false, tls_policy(s.smtp_fallback_tls)).await?,
                amtp: false,
            })
        }
    }
}

/// Route each pending recipient domain, then let [`plan::assemble`] make the jobs.
pub async fn plan_message(
    s: &RouterShared,
    id: QueueId,
    record: MessageRecord,
    body: bytes::Bytes,
) -> Plan {
    let mut routed = Vec::new();
    for (domain, rcpts) in plan::by_domain(&record) {
        let r = route_domain(s, &domain, record.envelope.origin).await;
        routed.push((rcpts, r));
    }
    plan::assemble(id, record, body, routed)
}
