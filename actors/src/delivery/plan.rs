//! Where each recipient of a message goes, as pure decisions the router's I/O only feeds:
//!
//! - [`choose`] — the route class for a recipient domain: a configured route, a public next
//!   hop found in DNS, or a refusal. **Mail received over a public connection (public AMTP,
//!   unauthenticated SMTP) is never sent to a public next hop**: only configured routes (the
//!   local domains) take it. This is the open-relay guarantee, proven by the table in the tests.
//! - [`after_srv`], [`after_mx`], [`after_addresses`] — what DNS answers mean: hops, a
//!   temporary failure (deferred), or a permanent one (bounced), each with a typed cause.
//! - [`mpc_rule`] — the MPC rule for one hop: AMTP hops carry the code as `MPC=` and need one;
//!   leaving AMTP, the code becomes an `MPC:` header, and a message that already carries one is
//!   refused (spec §6).
//! - [`assemble`] — one message's routed domains into per-destination jobs and immediate
//!   outcomes.

use super::outbound::{HopTarget, Job};
use super::route::{Hop, Pick, Route, order_mx, order_srv};
use crate::config::RouteConfig;
use crate::resolver::{LookupError, Records};
use amtp_proto::EnhancedStatus;
use amtp_proto::client::{BodyType, Cause, Disposition, Envelope, has_8bit};
use amtp_storage::{MessageRecord, Origin, QueueId};
use bytes::Bytes;
use std::collections::HashMap;

fn status(s: &str) -> EnhancedStatus {
    EnhancedStatus::parse(s).unwrap_or(EnhancedStatus::new(5, 0, 0))
}

/// The recipient domain of an address: lower case, no trailing dot.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map_or(address, |(_, d)| d)
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// How a recipient domain may be reached, before any DNS.
#[derive(Debug, Clone)]
pub enum RouteChoice<'a> {
    /// A configured `[[delivery.route]]`.
    Configured(&'a RouteConfig),
    /// A public next hop: `_amtp._tcp` SRV, then (if enabled) MX.
    Public,
    /// Not deliverable from this origin.
    Refused(Disposition),
}

/// The route class for `domain` for mail that arrived as `origin`.
pub fn choose<'a>(
    domain: &str,
    origin: Origin,
    routes: &'a HashMap<String, RouteConfig>,
) -> RouteChoice<'a> {
    if let Some(r) = routes.get(domain) {
        return RouteChoice::Configured(r);
    }
    match origin {
        Origin::AmtpPublic | Origin::Smtp => {
            RouteChoice::Refused(Disposition::Failed(Cause::LocalPolicy {
                status: status("5.7.1"),
                detail: format!(
                    "mail received over a public connection is not relayed to a public next hop ({domain})"
                ),
            }))
        }
        Origin::Submission | Origin::AmtpPrivate | Origin::Local => RouteChoice::Public,
    }
}

/// What the `_amtp._tcp` SRV answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SrvAnswer {
    /// Deliver over AMTP to these hops, in order.
    Amtp(Vec<Hop>),
    /// No SRV record and the SMTP fallback is on: look up MX next.
    TryMx,
    /// Done: deferred (lookup failed) or failed (no service, no fallback).
    Final(Disposition),
}

/// Interpret the SRV lookup for `domain`.
pub fn after_srv(
    domain: &str,
    answer: Result<Records, LookupError>,
    smtp_fallback: bool,
    rng: &mut impl Pick,
) -> SrvAnswer {
    match answer {
        Ok(Records::Srv(records)) => match order_srv(&records, rng) {
            Route::NoService => SrvAnswer::Final(Disposition::Failed(Cause::NoRoute {
                status: status("5.1.10"),
                detail: format!("{domain} publishes that it offers no AMTP service (SRV \".\")"),
            })),
            Route::Hops(h) => SrvAnswer::Amtp(h),
        },
        Err(LookupError::Temporary(e)) => SrvAnswer::Final(Disposition::Deferred(Cause::Dns(
            format!("SRV _amtp._tcp.{domain}: {e}"),
        ))),
        Ok(_) | Err(LookupError::NxDomain | LookupError::NoData) if smtp_fallback => {
            SrvAnswer::TryMx
        }
        Ok(_) | Err(_) => SrvAnswer::Final(Disposition::Failed(Cause::NoRoute {
            status: status("5.4.4"),
            detail: format!("{domain} has no _amtp._tcp SRV record (SMTP fallback disabled)"),
        })),
    }
}

/// Interpret the MX lookup for `domain` (SMTP fallback): the hops, or the outcome.
pub fn after_mx(
    domain: &str,
    answer: Result<Records, LookupError>,
    port: u16,
    rng: &mut impl Pick,
) -> Result<Vec<Hop>, Disposition> {
    let mx = match answer {
        Ok(Records::Mx(m)) => Some(m),
        Err(LookupError::NoData) | Ok(_) => None,
        Err(LookupError::NxDomain) => {
            return Err(Disposition::Failed(Cause::NoRoute {
                status: status("5.1.2"),
                detail: format!("{domain} does not exist"),
            }));
        }
        Err(LookupError::Temporary(e)) => {
            return Err(Disposition::Deferred(Cause::Dns(format!(
                "MX {domain}: {e}"
            ))));
        }
    };
    match order_mx(domain, mx.as_deref(), port, rng) {
        Route::NoService => Err(Disposition::Failed(Cause::NoRoute {
            status: status("5.1.10"),
            detail: format!("{domain} accepts no mail (null MX)"),
        })),
        Route::Hops(h) => Ok(h),
    }
}

/// Interpret the A/AAAA lookups for one hop: `found` addresses, and the last temporary error.
pub fn after_addresses(
    host: &str,
    found: usize,
    temporary: Option<String>,
) -> Result<(), Disposition> {
    match (found, temporary) {
        (1.., _) => Ok(()),
        (0, Some(e)) => Err(Disposition::Deferred(Cause::Dns(format!("{host}: {e}")))),
        (0, None) => Err(Disposition::Failed(Cause::NoRoute {
            status: status("5.4.4"),
            detail: format!("{host} has no address"),
        })),
    }
}

/// What a hop is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// The message as received (AMTP carries the code as `MPC=`).
    AsReceived,
    /// `MPC: <code>` prepended: the message leaves AMTP.
    WithMpcHeader,
}

/// The MPC rule for one hop: `mpc` is the message's code, `has_header` whether its header
/// section already has an `MPC:` field.
pub fn mpc_rule(amtp: bool, mpc: Option<&str>, has_header: bool) -> Result<Wire, Disposition> {
    match (amtp, mpc, has_header) {
        (true, None, _) => Err(Disposition::Failed(Cause::MissingMpc)),
        (true, Some(_), _) => Ok(Wire::AsReceived),
        (false, Some(_), true) => Err(Disposition::Failed(Cause::LocalPolicy {
            status: status("5.7.1"),
            detail: "the message already carries an MPC header; not delivered outside AMTP".into(),
        })),
        (false, Some(_), false) => Ok(Wire::WithMpcHeader),
        (false, None, _) => Ok(Wire::AsReceived),
    }
}

/// A routed recipient domain: the destination key (one Destination actor per key), the
/// addresses to try, and the protocol.
#[derive(Debug, Clone)]
pub struct Routed {
    /// `route:host:port`, `amtp:domain` or `smtp:domain`.
    pub key: String,
    /// Resolved targets, in order.
    pub targets: Vec<HopTarget>,
    /// AMTP (true) or SMTP.
    pub amtp: bool,
}

/// One destination's share of a message.
#[derive(Debug)]
pub struct Group {
    /// The destination key.
    pub key: String,
    /// Its targets.
    pub targets: Vec<HopTarget>,
    /// The job.
    pub job: Job,
}

/// One message, planned.
#[derive(Debug)]
pub struct Plan {
    /// The message.
    pub id: QueueId,
    /// Its record as leased.
    pub record: MessageRecord,
    /// Work for destinations.
    pub groups: Vec<Group>,
    /// Recipients decided without a connection.
    pub immediate: Vec<(String, Disposition)>,
}

/// The pending recipients of `record`, by domain (in first-seen order).
pub fn by_domain(record: &MessageRecord) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for r in record.pending() {
        let d = domain_of(&r.address);
        match out.iter_mut().find(|(x, _)| *x == d) {
            Some((_, v)) => v.push(r.address.clone()),
            None => out.push((d, vec![r.address.clone()])),
        }
    }
    out
}

fn body_type(b: amtp_storage::BodyType) -> BodyType {
    match b {
        amtp_storage::BodyType::Unspecified => BodyType::Unspecified,
        amtp_storage::BodyType::SevenBit => BodyType::SevenBit,
        amtp_storage::BodyType::EightBitMime => BodyType::EightBitMime,
    }
}

/// Jobs and immediate outcomes for one message from its routed domains. The body with the
/// `MPC:` header is made once, for the first SMTP hop that needs it.
pub fn assemble(
    id: QueueId,
    record: MessageRecord,
    body: Bytes,
    routed: Vec<(Vec<String>, Result<Routed, Disposition>)>,
) -> Plan {
    let mpc_text = record.envelope.mpc.as_deref();
    let mpc = mpc_text.and_then(|m| m.parse().ok());
    let has_header = amtp_proto::headers::find(&body, "MPC").is_some();
    let eight_bit = has_8bit(&body);
    let utf8_headers = has_8bit(amtp_proto::headers::header_section(&body));
    let mut with_header: Option<Bytes> = None;
    let mut groups: Vec<Group> = Vec::new();
    let mut immediate = Vec::new();
    for (rcpts, route) in routed {
        let r = match route {
            Ok(r) => r,
            Err(d) => {
                immediate.extend(rcpts.into_iter().map(|a| (a, d.clone())));
                continue;
            }
        };
        let wire = match mpc_rule(r.amtp, mpc_text.filter(|_| mpc.is_some()), has_header) {
            Ok(w) => w,
            Err(d) => {
                immediate.extend(rcpts.into_iter().map(|a| (a, d.clone())));
                continue;
            }
        };
        if let Some(g) = groups.iter_mut().find(|g| g.key == r.key) {
            g.job.envelope.recipients.extend(rcpts);
            continue;
        }
        let bytes = match (wire, mpc_text) {
            (Wire::WithMpcHeader, Some(m)) => with_header
                .get_or_insert_with(|| {
                    let mut b = format!("MPC: {m}\r\n").into_bytes();
                    b.extend_from_slice(&body);
                    Bytes::from(b)
                })
                .clone(),
            _ => body.clone(),
        };
        let envelope = Envelope {
            from: record.envelope.sender.clone(),
            recipients: rcpts,
            mpc,
            size: u64::try_from(bytes.len()).unwrap_or(u64::MAX),
            body: body_type(record.envelope.body),
            eight_bit,
            smtputf8: record.envelope.smtputf8,
            utf8_headers,
        };
        groups.push(Group {
            key: r.key,
            targets: r.targets,
            job: Job {
                id,
                envelope,
                body: bytes,
            },
        });
    }
    Plan {
        id,
        record,
        groups,
        immediate,
    }
}

#[cfg(test)]
mod tests;
