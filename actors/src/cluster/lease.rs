//! Fleet-wide outbound connection slots per destination: at most
//! `concurrency_per_destination` connections to one next hop across every node.
//!
//! A slot is a lease: a member of the destination's sorted set scored by its expiry. Taking
//! one (one Lua call) first drops expired leases — so a dead node's slots come back within
//! [`LEASE_TTL`] — then adds ours if the set is under the cap. An open connection renews its
//! lease every third of the TTL and removes it when it ends. When Redis is away the
//! destination opens connections on its local limit alone (per node).

use super::Cluster;
use redis::Script;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// How long a lease outlives its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// KEYS: the destination's set. ARGV: now ms, expiry ms, member, cap → 1 granted, 0 full.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
",
    )
});

/// Distinguishes this node's leases.
static SERIAL: AtomicU64 = AtomicU64::new(0);

/// The answer to a lease request.
pub enum LeaseOutcome {
    /// A fleet slot, held until dropped.
    Granted(Lease),
    /// Every fleet slot for the destination is taken.
    Full,
    /// Redis is away: decide locally.
    Away,
}

/// A held slot; renewed in the background, released when dropped.
pub struct Lease {
    cluster: Arc<Cluster>,
    key: String,
    member: String,
    renew: tokio::task::JoinHandle<()>,
}

fn ttl_ms() -> u64 {
    u64::try_from(LEASE_TTL.as_millis()).unwrap_or(u64::MAX)
}

impl Cluster {
    /// Take a fleet slot for `destination` (capacity `cap`).
    pub async fn acquire_lease(self: &Arc<Self>, destination: &str, cap: usize) -> LeaseOutcome {
        let key = self.key(format_args!("conn:{destination}"));
        let member = format!(
            "{}:{}",
            self.node_id,
            SERIAL.fetch_add(1, Ordering::Relaxed)
        );
        let now = amtp_storage::now_ms();
        let (k, m) = (key.clone(), member.clone());
        let granted: Option<u8> = self
            .run("lease", |mut c| async move {
                ACQUIRE
                    .key(&k)
                    .arg(now)
                    .arg(now + ttl_ms())
                    .arg(&m)
                    .arg(cap)
                    .arg(ttl_ms() * 2)
                    .invoke_async(&mut c)
                    .await
            })
            .await;
        match granted {
            None => LeaseOutcome::Away,
            Some(0) => LeaseOutcome::Full,
            Some(_) => {
                let (me, k, m) = (self.clone(), key.clone(), member.clone());
                let renew = tokio::spawn(async move {
                    let mut tick = tokio::time::interval(LEASE_TTL / 3);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        let (k, m) = (k.clone(), m.clone());
                        let until = amtp_storage::now_ms() + ttl_ms();
                        let _: Option<()> = me
                            .run("lease", |mut c| async move {
                                redis::cmd("ZADD")
                                    .arg(&k)
                                    .arg("XX")
                                    .arg(until)
                                    .arg(&m)
                                    .query_async(&mut c)
                                    .await
                            })
                            .await;
                    }
                });
                LeaseOutcome::Granted(Lease {
                    cluster: self.clone(),
                    key,
                    member,
                    renew,
                })
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renew.abort();
        let (c, k, m) = (self.cluster.clone(), self.key.clone(), self.member.clone());
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(async move {
                let _: Option<()> = c
                    .run("lease", |mut conn| async move {
                        redis::cmd("ZREM")
                            .arg(&k)
                            .arg(&m)
                            .query_async(&mut conn)
                            .await
                    })
                    .await;
            });
        }
    }
}
