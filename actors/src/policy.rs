//! The policy actor: checks SMTP AUTH credentials and throttles brute force.
//!
//! It owns the failure counters (per client IP and per user name), so every session on
//! every core sees the same lock-outs. Password verification (argon2, deliberately slow) runs
//! on tokio's blocking pool, bounded by a semaphore sized by `auth.verify_workers`, so the
//! actor's own thread only does bookkeeping and other AUTH attempts interleave.
//! Relay authorization itself is a pure rule in the session (local domain or authenticated).

use crate::auth::throttle::FailureTracker;
use crate::auth::users::UserDb;
use crate::config::{AuthConfig, per_core};
use crate::messages::{AuthOutcome, Authenticate};
use crate::metrics::{self, pool::Meter};
use actix::prelude::*;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// Keys tracked per failure table before the stalest are dropped.
const TRACKER_CAPACITY: usize = 100_000;

/// See the module docs.
pub struct PolicyActor {
    users: Arc<UserDb>,
    by_ip: FailureTracker<IpAddr>,
    by_user: FailureTracker<String>,
    verify_slots: Arc<Semaphore>,
    /// Handled messages and time on the actor's thread (argon2 runs on the blocking pool).
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
            by_user: FailureTracker::new(
                window,
                config.max_failures_per_user,
                lockout,
                TRACKER_CAPACITY,
            ),
            verify_slots: Arc::new(Semaphore::new(per_core(config.verify_workers))),
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

impl Handler<Authenticate> for PolicyActor {
    type Result = ResponseActFuture<Self, AuthOutcome>;

    fn handle(&mut self, msg: Authenticate, _ctx: &mut Self::Context) -> Self::Result {
        let _busy = self.meter.busy();
        self.meter.add_handled(1);
        let ip = msg.ip;
        let user = msg.credentials.user().to_string();
        let now = Instant::now();
        if self.by_ip.is_locked(&ip, now) || self.by_user.is_locked(&user, now) {
            tracing::warn!(%ip, user = %user, "AUTH refused: locked out after repeated failures");
            return Box::pin(actix::fut::ready(AuthOutcome::Locked));
        }
        let users = self.users.clone();
        let slots = self.verify_slots.clone();
        let verify = async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return Err(());
            };
            tokio::task::spawn_blocking(move || users.verify(&msg.credentials))
                .await
                .map_err(|_| ())
        };
        Box::pin(verify.into_actor(self).map(move |result, act, _ctx| match result {
            Ok(Some(user)) => {
                tracing::info!(%ip, user = %user, "AUTH succeeded");
                AuthOutcome::Success(user)
            }
            Ok(None) => {
                let now = Instant::now();
                let ip_locked = act.by_ip.record_failure(ip, now);
                let user_locked = act.by_user.record_failure(user.clone(), now);
                if ip_locked {
                    metrics::auth_lockout("ip");
                }
                if user_locked {
                    metrics::auth_lockout("user");
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
