//! The fleet-wide message rate per destination (`[delivery] max_messages_per_destination`).
//!
//! One token bucket per destination in Redis (a hash: tokens, last refill), refilled at the
//! configured rate up to a small burst ([`burst`]) and drained by one Lua call that takes a
//! batch — up to a burst, or what is there. Redis's own clock (`TIME`) refills it, so the
//! nodes' clocks need not agree. A node claims tokens only for messages already waiting and
//! sends them at once: it never holds tokens, so the fleet sends at most `burst + rate × t`
//! messages to the destination in any interval `t`. Under a backlog that is one Redis call per
//! batch, not per message; an empty bucket answers how long until the batch is there, and the
//! destination asks again then (no polling in between). When Redis is away the destination
//! decides on its local bucket alone (per node). The key expires once a full bucket would have
//! refilled, so idle destinations cost nothing.

use super::Cluster;
use crate::units::Rate;
use redis::Script;
use std::sync::LazyLock;
use std::time::Duration;

/// KEYS: the destination's bucket. ARGV: tokens per ms, capacity, tokens wanted →
/// {tokens granted, ms until the rest of the batch (0 when all were granted)}.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local s = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = cap
if s[1] and s[2] then
  tokens = math.min(cap, tonumber(s[1]) + math.max(0, now - tonumber(s[2])) * rate)
end
local take = math.min(want, math.floor(tokens))
tokens = tokens - take
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(cap / rate) + 1000)
local wait = 0
if take < want then
  wait = math.ceil((math.min(want - take, cap) - tokens) / rate)
end
return {take, wait}
",
    )
});

/// The bucket's capacity, which is also the most tokens one claim takes: 1 % of the count
/// per period, between 1 and 50 (`"600/min"`: 6; `"10/s"`: 1).
pub fn burst(rate: Rate) -> usize {
    usize::try_from((rate.count / 100).clamp(1, 50)).unwrap_or(1)
}

impl Cluster {
    /// Take up to `want` (at most a burst) tokens for `destination`: the tokens granted and,
    /// when fewer than wanted, how long until the rest of a batch is there. `None` when Redis
    /// is away, late or failing (the caller decides on its local bucket).
    pub async fn destination_tokens(
        &self,
        destination: &str,
        rate: Rate,
        want: usize,
    ) -> Option<(usize, Duration)> {
        let key = self.key(format_args!("drate:{destination}"));
        let want = want.clamp(1, burst(rate));
        let answer: Option<(u64, u64)> = self
            .run("destination_rate", |mut c| async move {
                CLAIM
                    .key(&key)
                    .arg(rate.per_ms())
                    .arg(burst(rate))
                    .arg(want)
                    .invoke_async(&mut c)
                    .await
            })
            .await;
        answer.map(|(granted, wait_ms)| {
            (
                usize::try_from(granted).unwrap_or(0).min(want),
                Duration::from_millis(wait_ms),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_is_a_hundredth_of_the_count_between_one_and_fifty() {
        let r = |s: &str| crate::units::parse_rate(s).unwrap();
        assert_eq!(burst(r("10/s")), 1);
        assert_eq!(burst(r("600/min")), 6);
        assert_eq!(burst(r("100000/h")), 50);
    }
}
