//! The resolver actor: answers cache misses. It asks the transport, applies the TTL policy
//! and fills the shared cache, so the next session on any core gets a hit without asking the
//! actor. Lookups run concurrently (the handler returns a future); hickory's pool already
//! merges identical in-flight queries.

use super::transport::DnsTransport;
use super::{Answer, DnsCache, TtlPolicy};
use crate::messages::Resolve;
use actix::prelude::*;
use std::sync::Arc;
use std::time::Instant;

/// See the module docs.
pub struct ResolverActor {
    transport: Arc<dyn DnsTransport>,
    cache: Arc<DnsCache>,
    ttl: TtlPolicy,
}

impl ResolverActor {
    /// Over a transport and the cache shared with every [`super::ResolverHandle`].
    pub fn new(transport: Arc<dyn DnsTransport>, cache: Arc<DnsCache>, ttl: TtlPolicy) -> Self {
        Self {
            transport,
            cache,
            ttl,
        }
    }
}

impl Actor for ResolverActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(8192);
    }
}

impl Handler<Resolve> for ResolverActor {
    type Result = ResponseFuture<Answer>;

    fn handle(&mut self, msg: Resolve, _ctx: &mut Self::Context) -> Self::Result {
        let query = msg.0;
        if let Some(answer) = self.cache.get(&query, Instant::now()) {
            return Box::pin(std::future::ready(answer));
        }
        let (transport, cache, ttl) = (self.transport.clone(), self.cache.clone(), self.ttl);
        Box::pin(async move {
            let (answer, dns_ttl) = transport.query(query.clone()).await;
            if let Some(keep) = ttl.ttl_for(&answer, dns_ttl) {
                cache.insert(query, answer.clone(), keep, Instant::now());
            }
            answer
        })
    }
}
