//! The resolver actor: answers cache misses. It asks the transport, applies the TTL policy
//! and fills the shared cache, so the next session on any core gets a hit without asking the
//! actor. Lookups run concurrently (the handler returns a future); hickory's pool already
//! merges identical in-flight queries.

use super::Resolve;
use super::transport::DnsTransport;
use super::{Answer, DnsCache, LookupError, TtlPolicy};
use crate::metrics::{self, pool::Meter};
use actix::prelude::*;
use std::sync::Arc;
use std::time::Instant;

/// See the module docs.
pub struct ResolverActor {
    transport: Arc<dyn DnsTransport>,
    cache: Arc<DnsCache>,
    ttl: TtlPolicy,
    /// Handled messages and busy time (the handles count the depth when they send).
    meter: Meter,
}

impl ResolverActor {
    /// Over a transport and the cache shared with every [`super::ResolverHandle`].
    pub fn new(
        transport: Arc<dyn DnsTransport>,
        cache: Arc<DnsCache>,
        ttl: TtlPolicy,
        meter: Meter,
    ) -> Self {
        Self {
            transport,
            cache,
            ttl,
            meter,
        }
    }
}

impl Actor for ResolverActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(8192);
    }
}

/// A bounded metric label for a DNS answer.
fn answer_label(answer: &Answer) -> &'static str {
    match answer {
        Ok(_) => "ok",
        Err(LookupError::NxDomain) => "nxdomain",
        Err(LookupError::NoData) => "nodata",
        Err(LookupError::Temporary(_)) => "temporary",
    }
}

impl Handler<Resolve> for ResolverActor {
    type Result = ResponseFuture<Answer>;

    fn handle(&mut self, msg: Resolve, _ctx: &mut Self::Context) -> Self::Result {
        let _busy = self.meter.handled();
        let query = msg.0;
        if let Some(answer) = self.cache.get(&query, Instant::now()) {
            return Box::pin(std::future::ready(answer));
        }
        let (transport, cache, ttl) = (self.transport.clone(), self.cache.clone(), self.ttl);
        let meter = self.meter.clone();
        Box::pin(async move {
            let started = Instant::now();
            let (answer, dns_ttl) = meter.timed(transport.query(query.clone())).await;
            metrics::dns_query(query.type_label(), answer_label(&answer), started.elapsed());
            if let Some(keep) = ttl.ttl_for(&answer, dns_ttl) {
                cache.insert(query, answer.clone(), keep, Instant::now());
            }
            answer
        })
    }
}
