//! `[cluster]`: the limits a fleet of relays shares through Redis, and what a node does when
//! Redis is away.
//!
//! Why: behind a load balancer every node sees a share of each client, so per-node limits are
//! N times too generous (AUTH attempts, AMTP identity rates). Nodes share those counters in
//! Redis — an existing engine, no home-made cluster protocol. Redis never holds messages: each
//! node's queue stays on its own disk.
//!
//! Costs and failure: every Redis operation has a deadline (`deadline`, a few ms). A node that
//! misses one marks Redis *away* at once, logs it, counts it, and from then on decides with its
//! local limits without asking Redis (so no session waits while Redis is down: the fleet-wide
//! limit becomes per node). The heartbeat keeps probing; the first success marks Redis back
//! and the node rejoins the shared counters. The per-message path never waits on Redis: the
//! AMTP rate limit decides on the node's last view of the fleet count and updates it in the
//! background (see [`rate`]); a destination's message rate is claimed in batches for mail
//! already waiting, off the sessions' path (see [`destination_rate`]).
//!
//! # Layout
//! - this file — [`ClusterConfig`], the [`Cluster`] handle (connections, deadline, away/back).
//! - [`auth`] — shared AUTH failure counters and lockouts (Lua scripts).
//! - [`rate`] — the shared per-identity message rate.
//! - [`lease`] — fleet-wide outbound connection slots per destination.
//! - [`destination_rate`] — the fleet-wide message rate per destination.
//! - [`membership`] — heartbeats and `amtp-relay cluster status`.

pub mod auth;
pub mod destination_rate;
pub mod lease;
pub mod membership;
pub mod rate;

use crate::units::HumanDuration;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The Redis server, `redis://host:port/db` (`rediss://` for TLS is not built in).
    pub redis: String,
    /// This node's name in the fleet (logs, `cluster status`, Received). Default: the host
    /// name.
    pub node_id: Option<String>,
    /// Longest wait for one Redis operation; past it the node falls back to local limits.
    #[serde(default = "default_deadline")]
    pub deadline: HumanDuration,
    /// Connections to Redis (multiplexed; 2 is plenty for one node).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// How often the node announces itself (and, while Redis is away, probes it).
    #[serde(default = "default_heartbeat")]
    pub heartbeat: HumanDuration,
    /// Prefix of every key, so several fleets can share one Redis.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
}

fn default_deadline() -> HumanDuration {
    HumanDuration(Duration::from_millis(5))
}
fn default_pool_size() -> usize {
    2
}
fn default_heartbeat() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}
fn default_prefix() -> String {
    "amtp:".into()
}

impl ClusterConfig {
    /// The configured node id, else the host name, else "node".
    pub fn node_id(&self) -> String {
        self.node_id
            .clone()
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| "node".into())
    }

    /// Whether the settings can be used: the URL parses, sizes are sane.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        redis::Client::open(self.redis.as_str())
            .map_err(|e| ("redis", format!("{:?} is not a Redis URL: {e}", self.redis)))?;
        if self.pool_size == 0 || self.pool_size > 64 {
            return Err(("pool_size", "pool_size must be 1 to 64".into()));
        }
        if self.deadline.0.is_zero() || self.deadline.0 > Duration::from_secs(1) {
            return Err((
                "deadline",
                "deadline must be between 1ms and 1s (a few ms on a LAN)".into(),
            ));
        }
        if self.node_id.as_deref().is_some_and(|n| {
            n.is_empty()
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        }) {
            return Err((
                "node_id",
                "node_id must be letters, digits, '-', '_' or '.'".into(),
            ));
        }
        Ok(())
    }
}

/// A node's connection to the fleet's shared state.
pub struct Cluster {
    node_id: String,
    prefix: String,
    deadline: Duration,
    heartbeat: Duration,
    conns: Vec<ConnectionManager>,
    next: AtomicUsize,
    /// Whether Redis answered the last operation in time.
    up: AtomicBool,
}

static NODE: OnceLock<Arc<Cluster>> = OnceLock::new();

/// This process's cluster handle, if `[cluster]` is configured (set once by [`install`]).
pub fn get() -> Option<&'static Arc<Cluster>> {
    NODE.get()
}

/// Make `cluster` this process's handle (the binary does so before starting the actors).
pub fn install(cluster: Arc<Cluster>) {
    let _ = NODE.set(cluster);
}

/// A queue id as the fleet sees it: `<id>.<node>` with `[cluster]` (queue ids are unique per
/// node only), else the id alone. Shown in the Received header (and so in DSNs that quote it).
pub fn fleet_id(id: impl std::fmt::Display) -> String {
    match get() {
        Some(c) => format!("{id}.{}", c.node_id),
        None => id.to_string(),
    }
}

impl Cluster {
    /// Connections are made lazily (and remade by the connection manager): a node starts
    /// whether or not Redis is reachable, on local limits until it is.
    pub fn new(config: &ClusterConfig) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(config.redis.as_str()).map_err(|e| e.to_string())?;
        let deadline = config.deadline.0;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conns = (0..config.pool_size.max(1))
            .map(|_| {
                ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone())
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        metrics::redis_up(false);
        Ok(Arc::new(Self {
            node_id: config.node_id(),
            prefix: config.key_prefix.clone(),
            deadline,
            heartbeat: config.heartbeat.0,
            conns,
            next: AtomicUsize::new(0),
            up: AtomicBool::new(false),
        }))
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether shared limits are in force (Redis answered the last operation in time).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A key under the fleet's prefix.
    pub fn key(&self, parts: std::fmt::Arguments<'_>) -> String {
        format!("{}{parts}", self.prefix)
    }

    fn conn(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }

    /// Run one Redis operation within the deadline. `None` when Redis is away (without trying:
    /// the heartbeat probes it), late, or failing — the caller then decides locally.
    pub async fn run<T, F, Fut>(&self, what: &'static str, op: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_up() {
            metrics::fallback(what);
            return None;
        }
        self.attempt(what, self.deadline, op).await
    }

    /// Like [`run`](Self::run) but tries even while Redis is marked away, within `limit`
    /// (the heartbeat probes with a longer limit than a session's deadline: nobody waits on
    /// it, and a (re)connection must be able to complete).
    async fn attempt<T, F, Fut>(&self, what: &'static str, limit: Duration, op: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(limit, op(self.conn())).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.away(what, &e.to_string());
                None
            }
            Err(_) => {
                self.away(what, "deadline passed");
                None
            }
        }
    }

    fn away(&self, what: &'static str, why: &str) {
        metrics::fallback(what);
        if self.up.swap(false, Ordering::Relaxed) {
            metrics::redis_up(false);
            tracing::warn!(node = %self.node_id, operation = what, error = why, "Redis unreachable: the fleet-wide limits are per node (local) until it returns");
        }
    }

    fn back(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            metrics::redis_up(true);
            tracing::info!(node = %self.node_id, "Redis reachable: limits are shared across the fleet");
        }
    }
}

/// The cluster's own metrics (recording functions live in [`crate::metrics`]).
mod metrics {
    pub(super) fn redis_up(up: bool) {
        crate::metrics::cluster_redis_up(up);
    }
    pub(super) fn fallback(what: &'static str) {
        crate::metrics::cluster_fallback(what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn config(redis: String) -> ClusterConfig {
        ClusterConfig {
            redis,
            node_id: Some("edge-t".into()),
            deadline: HumanDuration(Duration::from_millis(30)),
            pool_size: 1,
            heartbeat: HumanDuration(Duration::from_secs(1)),
            key_prefix: "t:".into(),
        }
    }

    async fn ping(c: &Cluster, probe: bool) -> Option<String> {
        let op = |mut conn: ConnectionManager| async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        if probe {
            c.attempt("heartbeat", c.deadline, op).await
        } else {
            c.run("auth_check", op).await
        }
    }

    #[tokio::test]
    async fn a_silent_redis_costs_one_deadline_then_nothing_until_a_probe_succeeds() {
        // Accepts connections and never answers: the worst case, slower than refusing.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let c = Cluster::new(&config(format!("redis://{addr}/0"))).unwrap();
        assert!(!c.is_up(), "away until a heartbeat succeeds");
        assert_eq!(ping(&c, false).await, None, "away: not even tried");
        c.back();
        let started = Instant::now();
        assert_eq!(ping(&c, false).await, None);
        assert!(!c.is_up(), "a missed deadline marks Redis away");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "bounded by the deadline, not the connection's 1 s response timeout"
        );
        assert_eq!(ping(&c, false).await, None, "away again: not tried");
    }

    #[tokio::test]
    async fn a_refused_connection_falls_back_and_the_probe_keeps_trying() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        let c = Cluster::new(&config(format!("redis://{addr}/0"))).unwrap();
        c.back();
        assert_eq!(ping(&c, false).await, None);
        assert!(!c.is_up());
        assert_eq!(ping(&c, true).await, None, "the probe tries, and fails");
    }

    #[test]
    fn fleet_ids_name_the_node_only_in_a_fleet() {
        // No cluster installed in unit tests.
        assert_eq!(fleet_id("00000000000000ab"), "00000000000000ab");
    }
}
