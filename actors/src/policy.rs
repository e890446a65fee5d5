//! The policy actor: checks SMTP AUTH credentials and throttles brute force.
//!
//! It owns the failure counters, so every session on every core sees the same lock-outs:
//! - per client IP: `max_failures_per_ip` failures lock the address out (any user name);
//! - per (user name, client IP): `max_failures_per_user` failures lock that address out for
//!   that name only;
//! - per user name, from all addresses: no lock-out — knowing a user name must not let anyone
//!   lock its owner out — but past `max_failures_per_user` failures every attempt for that name
//!   waits first ([`user_delay`]: 1 s, doubling, up to `auth.user_delay_max`), so guessing one
//!   name from many addresses stays slow.
//!
//! Password verification (argon2, deliberately slow) runs on tokio's blocking pool, bounded
//! by a semaphore sized by `auth.verify_workers`, so the actor's own thread only does
//! bookkeeping and other AUTH attempts interleave.
//! With `[cluster]`, the same three counters are also kept fleet-wide in Redis
//! ([`crate::cluster::auth`]): an attempt is refused when either the local trackers or the
//! fleet say so, and the delay follows the larger failure count. While Redis is away the local
//! trackers decide alone (per node).
//!
//! Relay authorization itself is a pure rule in the session (local domain or authenticated).

use crate::auth::throttle::{FailureTracker, user_delay};
use crate::auth::users::UserDb;
use crate::cluster::{self, auth::AuthLimits};
use crate::config::{AuthConfig, per_core};
use crate::messages::{AuthOutcome, Authenticate};
use crate::metrics::{self, pool::Meter};
use actix::prelude::*;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Keys tracked per failure table before the stalest are dropped.
const TRACKER_CAPACITY: usize = 100_000;

/// See the module docs.
pub struct PolicyActor {
    users: Arc<UserDb>,
    by_ip: FailureTracker<IpAddr>,
    /// Locks one address out for one user name.
    by_user_ip: FailureTracker<(String, IpAddr)>,
    /// Counts failures per user name (never locks): the delay grows with them.
    by_user: FailureTracker<String>,
    /// Failures per user name before attempts for it are slowed down.
    user_free_failures: u32,
    /// Longest wait imposed on an attempt for a slowed-down user name.
    user_delay_max: Duration,
    verify_slots: Arc<Semaphore>,
    /// The `[auth]` counters for the fleet-wide copies.
    shared_limits: AuthLimits,
    /// Mailbox depth (counted by the sessions' `Metered` sender), handled messages, time on
    /// the actor's thread (argon2 runs on the blocking pool).
    meter: Meter,
}

impl PolicyActor {
    /// A policy actor over `users` with the `[auth]` settings.
    pub fn new(users: Arc<UserDb>, config: &AuthConfig, meter: Meter) -> Self {
        let window = config.failure_window.0;
        let lockout = config.lockout.0;
        Self {
            users,
            by_ip: FailureTracker::new(
                window,
                config.max_failures_per_ip,
                lockout,
                TRACKER_CAPACITY,
            ),
            by_user_ip: FailureTracker::new(
                window,
                config.max_failures_per_user,
                lockout,
                TRACKER_CAPACITY,
            ),
            by_user: FailureTracker::new(window, u32::MAX, lockout, TRACKER_CAPACITY),
            user_free_failures: config.max_failures_per_user,
            user_delay_max: config.user_delay_max.0,
            verify_slots: Arc::new(Semaphore::new(per_core(config.verify_workers))),
            shared_limits: AuthLimits {
                window,
                max_per_ip: config.max_failures_per_ip,
                max_per_user: config.max_failures_per_user,
                lockout,
            },
            meter,
        }
    }
}

impl Actor for PolicyActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
    }
}

/// How a verification ended, before the actor records it.
enum Verdict<U> {
    /// The fleet has this address (or address and user) locked out.
    FleetLocked,
    /// Good credentials.
    Verified(U),
    /// Bad credentials; whether the fleet now locks (address, address and user).
    Failed((bool, bool)),
}

impl Handler<Authenticate> for PolicyActor {
    type Result = ResponseActFuture<Self, AuthOutcome>;

    fn handle(&mut self, msg: Authenticate, _ctx: &mut Self::Context) -> Self::Result {
        let _busy = self.meter.handled();
        let ip = msg.ip;
        let user = msg.credentials.user().to_string();
        let now = Instant::now();
        if self.by_ip.is_locked(&ip, now) || self.by_user_ip.is_locked(&(user.clone(), ip), now) {
            tracing::warn!(%ip, user = %user, "AUTH refused: locked out after repeated failures");
            return Box::pin(actix::fut::ready(AuthOutcome::Locked));
        }
        let local_failures = self.by_user.recent_failures(&user, now);
        let (free, delay_max) = (self.user_free_failures, self.user_delay_max);
        let users = self.users.clone();
        let slots = self.verify_slots.clone();
        let shared = cluster::get().cloned();
        let limits = self.shared_limits;
        let verify = async move {
            let fleet = match &shared {
                Some(c) => c.auth_state(ip, msg.credentials.user()).await,
                None => None,
            };
            if fleet.is_some_and(|f| f.ip_locked || f.user_ip_locked) {
                return Ok(Verdict::FleetLocked);
            }
            let failures = local_failures.max(fleet.map_or(0, |f| f.user_failures));
            let delay = user_delay(failures, free, delay_max);
            if !delay.is_zero() {
                metrics::auth_delayed();
                tracing::info!(%ip, user = %msg.credentials.user(), delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "AUTH slowed down for this user after repeated failures");
            }
            // Before taking a verification slot: a held attempt costs the attacker a
            // connection, not us a hashing thread.
            tokio::time::sleep(delay).await;
            let Ok(_slot) = slots.acquire_owned().await else {
                return Err(());
            };
            let user = msg.credentials.user().to_string();
            match tokio::task::spawn_blocking(move || users.verify(&msg.credentials)).await {
                Ok(Some(ok)) => Ok(Verdict::Verified(ok)),
                Ok(None) => {
                    let fleet = match &shared {
                        Some(c) => c.auth_failed(ip, &user, limits).await,
                        None => None,
                    };
                    Ok(Verdict::Failed(fleet.unwrap_or((false, false))))
                }
                Err(_) => Err(()),
            }
        };
        Box::pin(verify.into_actor(self).map(move |result, act, _ctx| match result {
            Ok(Verdict::FleetLocked) => {
                tracing::warn!(%ip, user = %user, "AUTH refused: locked out across the fleet after repeated failures");
                AuthOutcome::Locked
            }
            Ok(Verdict::Verified(user)) => {
                tracing::info!(%ip, user = %user, "AUTH succeeded");
                AuthOutcome::Success(user)
            }
            Ok(Verdict::Failed((fleet_ip, fleet_user_ip))) => {
                let now = Instant::now();
                let ip_locked = act.by_ip.record_failure(ip, now) || fleet_ip;
                let user_locked =
                    act.by_user_ip.record_failure((user.clone(), ip), now) || fleet_user_ip;
                act.by_user.record_failure(user.clone(), now);
                if ip_locked {
                    metrics::auth_lockout("ip");
                }
                if user_locked {
                    metrics::auth_lockout("user_ip");
                }
                if ip_locked || user_locked {
                    tracing::warn!(%ip, user = %user, ip_locked, user_locked, "AUTH failed; locking out");
                    AuthOutcome::Locked
                } else {
                    tracing::warn!(%ip, user = %user, "AUTH failed");
                    AuthOutcome::Failed
                }
            }
            Err(()) => AuthOutcome::Unavailable,
        }))
    }
}

/// A reload: AUTH checks from now on use `0`. Lock-outs already recorded stay in force.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReplaceUsers(pub Arc<UserDb>);

impl Handler<ReplaceUsers> for PolicyActor {
    type Result = ();

    fn handle(&mut self, msg: ReplaceUsers, _ctx: &mut Self::Context) {
        self.users = msg.0;
    }
}
