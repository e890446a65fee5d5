//! Shared AUTH failure counters and lockouts: per client IP, per (user name, IP), and the
//! per-user failure count that drives the growing delay (docs/ARCHITECTURE.md "AUTH").
//!
//! Each is a Redis counter over a fixed window (`failure_window`) that, at its maximum, sets a
//! lock key expiring after `lockout`; one Lua script per AUTH check and one per failure, so an
//! attempt costs at most two round trips and the counters cannot race between nodes. The
//! policy actor keeps its local trackers too: they decide when Redis is away, and a lockout
//! seen by either is a lockout.

use super::Cluster;
use redis::Script;
use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::Duration;

/// KEYS: lock:ip, lock:user_ip, fail:user → {ip locked, user+ip locked, user failures}.
static CHECK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
return {redis.call('EXISTS', KEYS[1]), redis.call('EXISTS', KEYS[2]),
        tonumber(redis.call('GET', KEYS[3]) or '0')}
",
    )
});

/// KEYS: fail:ip, lock:ip, fail:user_ip, lock:user_ip, fail:user.
/// ARGV: window ms, max per ip, max per user, lockout ms → {ip locked, user+ip locked}.
static FAIL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local function count(fail, lock, max)
  local n = redis.call('INCR', fail)
  if n == 1 then redis.call('PEXPIRE', fail, ARGV[1]) end
  if n >= tonumber(max) then
    redis.call('SET', lock, '1', 'PX', ARGV[4])
    redis.call('DEL', fail)
    return 1
  end
  return 0
end
local ip = count(KEYS[1], KEYS[2], ARGV[2])
local user_ip = count(KEYS[3], KEYS[4], ARGV[3])
local u = redis.call('INCR', KEYS[5])
if u == 1 then redis.call('PEXPIRE', KEYS[5], ARGV[1]) end
return {ip, user_ip}
",
    )
});

/// What the fleet knows about an AUTH attempt before verifying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedAuthState {
    /// The address is locked out.
    pub ip_locked: bool,
    /// The address is locked out for this user name.
    pub user_ip_locked: bool,
    /// Failures for the user name within the window, fleet-wide.
    pub user_failures: usize,
}

/// The settings the scripts need (from `[auth]`).
#[derive(Debug, Clone, Copy)]
pub struct AuthLimits {
    /// `failure_window`.
    pub window: Duration,
    /// `max_failures_per_ip`.
    pub max_per_ip: u32,
    /// `max_failures_per_user`.
    pub max_per_user: u32,
    /// `lockout`.
    pub lockout: Duration,
}

impl Cluster {
    fn auth_keys(&self, ip: IpAddr, user: &str) -> [String; 5] {
        // The user name is client input: hex keeps keys unambiguous and bounded in alphabet.
        let user: String = user.bytes().take(256).map(|b| format!("{b:02x}")).collect();
        [
            self.key(format_args!("auth:fail:ip:{ip}")),
            self.key(format_args!("auth:lock:ip:{ip}")),
            self.key(format_args!("auth:fail:uip:{user}:{ip}")),
            self.key(format_args!("auth:lock:uip:{user}:{ip}")),
            self.key(format_args!("auth:fail:user:{user}")),
        ]
    }

    /// The fleet's lockouts and failure count for an attempt; `None` when Redis is away.
    pub async fn auth_state(&self, ip: IpAddr, user: &str) -> Option<SharedAuthState> {
        let k = self.auth_keys(ip, user);
        let (ip_locked, user_ip_locked, user_failures): (u8, u8, usize) = self
            .run("auth_check", |mut c| async move {
                CHECK
                    .key(&k[1])
                    .key(&k[3])
                    .key(&k[4])
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Some(SharedAuthState {
            ip_locked: ip_locked == 1,
            user_ip_locked: user_ip_locked == 1,
            user_failures,
        })
    }

    /// Count a failed attempt fleet-wide: (address now locked, address locked for the user);
    /// `None` when Redis is away.
    pub async fn auth_failed(
        &self,
        ip: IpAddr,
        user: &str,
        limits: AuthLimits,
    ) -> Option<(bool, bool)> {
        let k = self.auth_keys(ip, user);
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        let (ip_locked, user_ip_locked): (u8, u8) = self
            .run("auth_failure", |mut c| async move {
                FAIL.key(&k[0])
                    .key(&k[1])
                    .key(&k[2])
                    .key(&k[3])
                    .key(&k[4])
                    .arg(ms(limits.window))
                    .arg(limits.max_per_ip.max(1))
                    .arg(limits.max_per_user.max(1))
                    .arg(ms(limits.lockout))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Some((ip_locked == 1, user_ip_locked == 1))
    }
}
