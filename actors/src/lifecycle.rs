//! The relay's stop phases, seen by every session, so a shutdown is polite on the wire.
//!
//! - [`Phase::Running`]: normal service.
//! - [`Phase::Stopping`] (SIGTERM): no new transaction starts — `MAIL` is answered
//!   `421 4.3.2 … Service shutting down` and the session closed — but a message whose DATA is
//!   already in progress may finish and be acknowledged.
//! - [`Phase::Closing`] (the shutdown grace is over): every session still open is told
//!   `421 4.3.2` and closed, instead of a bare TCP close.
//!
//! Draining (`amtp-relay drain`) is not a phase: it only stops listeners from taking new
//! connections (see [`crate::health::Health::set_draining`]); open sessions carry on.

use amtp_proto::Reply;
use tokio::sync::watch;

/// See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Normal service.
    Running,
    /// No new transaction starts.
    Stopping,
    /// Open sessions are told 421 and closed.
    Closing,
}

/// The current phase, observable by sessions without locks.
#[derive(Debug)]
pub struct Lifecycle {
    phase: watch::Sender<Phase>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// Running.
    pub fn new() -> Self {
        Self {
            phase: watch::Sender::new(Phase::Running),
        }
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Move to `phase` (phases only move forward).
    pub fn advance(&self, phase: Phase) {
        self.phase.send_if_modified(|p| {
            let later = phase > *p;
            if later {
                *p = phase;
            }
            later
        });
    }

    /// Whether a new transaction may start.
    pub fn accepts_transactions(&self) -> bool {
        self.phase() == Phase::Running
    }

    /// Resolves once the phase is [`Phase::Closing`].
    pub async fn closing(&self) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| *p == Phase::Closing).await;
    }
}

/// `421 4.3.2 <host> Service shutting down`: said to a connection refused while draining, to
/// `MAIL` after SIGTERM, and to sessions still open when the grace period ends.
pub fn shutting_down(hostname: &str) -> Reply {
    Reply::new(
        421,
        "4.3.2",
        format!("{hostname} Service shutting down, try again later"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_only_move_forward_and_closing_wakes_waiters() {
        let l = std::sync::Arc::new(Lifecycle::new());
        assert!(l.accepts_transactions());
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.closing().await })
        };
        l.advance(Phase::Stopping);
        assert!(!l.accepts_transactions());
        l.advance(Phase::Running);
        assert_eq!(l.phase(), Phase::Stopping);
        l.advance(Phase::Closing);
        waiter.await.unwrap();
        assert_eq!(l.phase(), Phase::Closing);
    }

    #[test]
    fn the_reply_is_421_4_3_2() {
        let r = shutting_down("relay.test");
        assert_eq!(r.code, 421);
        assert!(r.to_string().contains("4.3.2"), "{r}");
    }
}
