//! Node membership: each node's heartbeat (id, version, listeners, queue depth, time) and
//! `amtp-relay cluster status`, which lists the nodes and when each was last seen.
//!
//! A node is a Redis hash `node:<id>` (kept a day after its last heartbeat, so a dead node
//! shows as stale rather than vanishing) and a member of the set `nodes`. The heartbeat is
//! also the probe that notices Redis coming back after an outage.

use super::Cluster;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

/// How long a node's record outlives its last heartbeat.
const RECORD_TTL_MS: u64 = 86_400_000;

/// What a node announces besides its id.
pub struct Announcement {
    /// `host:port (role)` of each listener.
    pub listeners: String,
    /// Messages in the node's queue now.
    pub queue_depth: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl Cluster {
    async fn beat(&self, a: &Announcement) -> bool {
        let node = self.key(format_args!("node:{}", self.node_id));
        let nodes = self.key(format_args!("nodes"));
        let now = amtp_storage::now_ms();
        let depth = (a.queue_depth)();
        let id = self.node_id.clone();
        let listeners = a.listeners.clone();
        let limit = (self.heartbeat / 2).clamp(self.deadline, Duration::from_secs(1));
        self.attempt("heartbeat", limit, |mut c| async move {
            redis::pipe()
                .atomic()
                .hset_multiple(
                    &node,
                    &[
                        ("version", env!("CARGO_PKG_VERSION").to_string()),
                        ("listeners", listeners),
                        ("queue_depth", depth.to_string()),
                        ("last_seen_ms", now.to_string()),
                    ],
                )
                .ignore()
                .pexpire(&node, i64::try_from(RECORD_TTL_MS).unwrap_or(i64::MAX))
                .ignore()
                .sadd(&nodes, &id)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
        .is_some()
    }

    /// PING every pooled connection (twice if the first fails: that one starts the
    /// reconnection), within the probe's limit; whether all answered.
    async fn all_connections_answer(&self) -> bool {
        let limit = (self.heartbeat / 2).clamp(self.deadline, Duration::from_secs(1));
        for conn in &self.conns {
            let mut answered = false;
            for _ in 0..2 {
                let mut c = conn.clone();
                let ping = redis::cmd("PING");
                if let Ok(Ok(_)) =
                    tokio::time::timeout(limit, ping.query_async::<String>(&mut c)).await
                {
                    answered = true;
                    break;
                }
            }
            if !answered {
                return false;
            }
        }
        true
    }

    /// Announce this node every `heartbeat` until the task is dropped; marks Redis back when
    /// a heartbeat succeeds (the away state is set by any failing operation).
    pub async fn heartbeat_loop(self: Arc<Self>, a: Announcement) {
        let mut tick = tokio::time::interval(self.heartbeat.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Rejoin only when every pooled connection answers: a connection idle since Redis
            // went away fails its first command (which starts its reconnection), and must not
            // do so on a session's deadline.
            if !self.is_up() && !self.all_connections_answer().await {
                continue;
            }
            if self.beat(&a).await {
                self.back();
            }
        }
    }

    /// The text of `amtp-relay cluster status`.
    pub async fn status(&self) -> Result<String, String> {
        let nodes_key = self.key(format_args!("nodes"));
        let prefix = self.key(format_args!("node:"));
        let deadline = self.deadline.max(Duration::from_millis(500));
        let mut c = self.conn();
        let fetch = async move {
            let ids: Vec<String> = redis::cmd("SMEMBERS")
                .arg(&nodes_key)
                .query_async(&mut c)
                .await?;
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.hgetall(format!("{prefix}{id}"));
            }
            let records: Vec<std::collections::HashMap<String, String>> =
                pipe.query_async(&mut c).await?;
            Ok::<_, redis::RedisError>((ids, records))
        };
        let (ids, records) = tokio::time::timeout(deadline, fetch)
            .await
            .map_err(|_| "Redis did not answer in time".to_string())?
            .map_err(|e| format!("Redis: {e}"))?;
        let now = amtp_storage::now_ms();
        let mut rows: Vec<_> = ids.into_iter().zip(records).collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = format!(
            "{:<20} {:<10} {:>10} {:>11}  listeners\n",
            "node", "version", "last seen", "queue depth"
        );
        for (id, r) in rows {
            let seen = r
                .get("last_seen_ms")
                .and_then(|s| s.parse::<u64>().ok())
                .map_or("gone".to_string(), |t| {
                    format!("{}s ago", now.saturating_sub(t) / 1000)
                });
            let me = if id == self.node_id {
                " (this node)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "{:<20} {:<10} {:>10} {:>11}  {}{me}",
                id,
                r.get("version").map_or("-", String::as_str),
                seen,
                r.get("queue_depth").map_or("-", String::as_str),
                r.get("listeners").map_or("-", String::as_str),
            );
        }
        let _ = writeln!(
            out,
            "\nshared limits: {}",
            if self.is_up() {
                "on (Redis reachable)"
            } else {
                "off: Redis away, local limits"
            }
        );
        Ok(out)
    }
}
