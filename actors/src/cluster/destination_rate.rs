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
    use crate::units::{HumanDuration, parse_rate};
    use std::time::Instant;

    /// A throwaway `redis-server` on a free loopback port; `None` (and a SKIPPED line) where
    /// it is not installed, unless `AMTP_TEST_REQUIRE_FLEET` is set, as in CI.
    struct TestRedis {
        child: std::process::Child,
        _dir: tempfile::TempDir,
        port: u16,
    }

    impl TestRedis {
        fn start() -> Option<Self> {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .ok()?;
            let dir = tempfile::tempdir().ok()?;
            let child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
            let Ok(child) = child else {
                assert!(
                    std::env::var_os("AMTP_TEST_REQUIRE_FLEET").is_none(),
                    "AMTP_TEST_REQUIRE_FLEET is set but redis-server cannot be run"
                );
                eprintln!("SKIPPED: redis-server is not installed");
                return None;
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(Self {
                child,
                _dir: dir,
                port,
            })
        }
    }

    impl Drop for TestRedis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The Lua bucket on a real Redis: a full bucket grants one burst, an empty one grants
    /// nothing and says when the batch is due, and over any run of claims the grants stay
    /// within a burst plus the rate (upper bounds only: the machine may be slow).
    #[tokio::test]
    async fn the_fleet_bucket_grants_a_burst_then_the_rate_and_says_when_to_ask_again() {
        let Some(redis) = TestRedis::start() else {
            return;
        };
        let config = super::super::ClusterConfig {
            redis: format!("redis://127.0.0.1:{}/0", redis.port),
            node_id: Some("edge-t".into()),
            deadline: HumanDuration(Duration::from_secs(1)),
            pool_size: 1,
            heartbeat: HumanDuration(Duration::from_secs(1)),
            key_prefix: "t:".into(),
        };
        let c = Cluster::new(&config).unwrap();
        c.back();
        // 600/min: 10 a second, bursts of 6.
        let rate = parse_rate("600/min").unwrap();
        let started = Instant::now();
        let (granted, wait) = c.destination_tokens("route:a:25", rate, 100).await.unwrap();
        assert_eq!(
            granted, 6,
            "a full bucket: one burst (a claim takes at most one)"
        );
        assert_eq!(
            wait,
            Duration::ZERO,
            "all that was asked (a burst) was granted"
        );
        let (granted, wait) = c.destination_tokens("route:a:25", rate, 4).await.unwrap();
        assert!(granted <= 1, "just emptied: {granted}");
        if granted == 0 {
            assert!(
                wait > Duration::from_millis(300) && wait <= Duration::from_millis(400),
                "4 tokens at 10 a second: {wait:?}"
            );
        }
        let other = c.destination_tokens("route:b:25", rate, 2).await.unwrap();
        assert_eq!(
            other,
            (2, Duration::ZERO),
            "each destination has its own bucket"
        );
        // Claim for 1.2 s: never more than a burst plus 10 a second since the start.
        let mut total = 6 + granted;
        while started.elapsed() < Duration::from_millis(1200) {
            let (n, _) = c.destination_tokens("route:a:25", rate, 6).await.unwrap();
            total += n;
            #[allow(clippy::cast_precision_loss)]
            let bound = 6.0 + 10.0 * started.elapsed().as_secs_f64();
            #[allow(clippy::cast_precision_loss)]
            let got = total as f64;
            assert!(got <= bound, "{total} tokens granted, bound {bound:.1}");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        assert!(total > 6, "the bucket refills");
    }

    #[test]
    fn the_burst_is_a_hundredth_of_the_count_between_one_and_fifty() {
        let r = |s: &str| crate::units::parse_rate(s).unwrap();
        assert_eq!(burst(r("10/s")), 1);
        assert_eq!(burst(r("600/min")), 6);
        assert_eq!(burst(r("100000/h")), 50);
    }
}
