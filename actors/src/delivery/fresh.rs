//! Freshly committed messages, handed from the group commit to the router in memory.
//!
//! Why it exists: a message's body is in memory when its commit succeeds, and the router
//! leases it a moment later. Without this hand-off the router read the body back from the
//! spool file it had just been written to (an open, a read and a copy per message), and every
//! message's commit woke the router on its own (one actor message per mail). Now the commit
//! thread leaves each committed body here and wakes the router once per batch: the first body
//! of a batch sets [`Fresh::committed`]'s "wake" answer, the rest find a wake already pending
//! until the router takes it ([`Fresh::woken`]).
//!
//! Memory stays bounded: at most `max_bytes` of bodies are held; beyond that the oldest are
//! dropped (queue ids increase, so the oldest is the smallest id) and the router reads those
//! from the spool as before. A body the router never takes (a message deleted from the queue
//! by the operator before it was leased) is dropped the same way. The bodies are shared
//! buffers (`Bytes`): holding one here costs no copy, only its memory until delivery.

use crate::messages::WakeRouter;
use actix::Recipient;
use amtp_storage::QueueId;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Bodies held at most: about a second of traffic at 10 KB per message and over a thousand
/// messages per second, while the router normally takes each within milliseconds.
pub const DEFAULT_MAX_BYTES: usize = 16 * 1024 * 1024;

/// The commit side of the hand-off: what the queue actor's responders call on the commit
/// thread when a message is durable.
#[derive(Clone)]
pub struct Handoff {
    /// Where the bodies wait.
    pub fresh: Arc<Fresh>,
    /// Woken once per batch.
    pub router: Recipient<WakeRouter>,
}

impl Handoff {
    /// `id` is durable with `body`: leave the body for the router and wake it unless a
    /// wake-up is already pending. A full router mailbox means it is busy and will tick
    /// again anyway (and it polls); the next commit then tries to wake it again.
    pub fn committed(&self, id: QueueId, body: Bytes) {
        if self.fresh.committed(id, body) && self.router.try_send(WakeRouter).is_err() {
            self.fresh.woken();
        }
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Fresh {
    inner: Mutex<Inner>,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Inner {
    bodies: BTreeMap<QueueId, Bytes>,
    bytes: usize,
    /// A wake-up was sent and the router has not taken it yet.
    wake_pending: bool,
}

impl Fresh {
    /// Holding at most `max_bytes` of bodies.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Mutex::default(),
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `id` is durable with this body. Returns true when the caller should wake the router
    /// (no wake-up is pending yet); the caller must then either wake it or call
    /// [`Fresh::woken`] so the next commit tries again.
    pub fn committed(&self, id: QueueId, body: Bytes) -> bool {
        let mut inner = self.lock();
        if body.len() <= self.max_bytes {
            inner.bytes += body.len();
            if let Some(old) = inner.bodies.insert(id, body) {
                inner.bytes -= old.len();
            }
            while inner.bytes > self.max_bytes {
                let Some((_, oldest)) = inner.bodies.pop_first() else {
                    break;
                };
                inner.bytes -= oldest.len();
            }
        }
        !std::mem::replace(&mut inner.wake_pending, true)
    }

    /// The router took the wake-up (or it could not be delivered): the next commit wakes it
    /// again.
    pub fn woken(&self) {
        self.lock().wake_pending = false;
    }

    /// The body of `id`, if it is still held; it is no longer held afterwards.
    pub fn take(&self, id: QueueId) -> Option<Bytes> {
        let mut inner = self.lock();
        let body = inner.bodies.remove(&id)?;
        inner.bytes -= body.len();
        Some(body)
    }

    /// Bodies held and their bytes (tests, diagnostics).
    pub fn held(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.bodies.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    #[test]
    fn a_committed_body_is_taken_once() {
        let fresh = Fresh::new(1000);
        fresh.committed(QueueId(1), body(10));
        assert_eq!(fresh.held(), (1, 10));
        assert_eq!(fresh.take(QueueId(1)).map(|b| b.len()), Some(10));
        assert_eq!(fresh.take(QueueId(1)), None);
        assert_eq!(fresh.held(), (0, 0));
    }

    /// One wake-up per batch: only the first commit after the router took its wake-up asks
    /// for another.
    #[test]
    fn the_router_is_woken_once_until_it_takes_the_wake_up() {
        let fresh = Fresh::new(1000);
        assert!(fresh.committed(QueueId(1), body(1)));
        assert!(!fresh.committed(QueueId(2), body(1)));
        assert!(!fresh.committed(QueueId(3), body(1)));
        fresh.woken();
        assert!(fresh.committed(QueueId(4), body(1)));
        assert!(!fresh.committed(QueueId(5), body(1)));
    }

    /// Bounded: past `max_bytes` the oldest (smallest id) bodies go; the router reads those
    /// from the spool. A body larger than the whole bound is never held.
    #[test]
    fn memory_is_bounded_by_dropping_the_oldest_bodies() {
        let fresh = Fresh::new(100);
        for id in 1..=5 {
            fresh.committed(QueueId(id), body(30));
        }
        assert_eq!(fresh.held(), (3, 90));
        assert_eq!(fresh.take(QueueId(1)), None);
        assert_eq!(fresh.take(QueueId(2)), None);
        assert!(fresh.take(QueueId(3)).is_some());
        fresh.committed(QueueId(6), body(101));
        assert_eq!(fresh.take(QueueId(6)), None);
        assert_eq!(fresh.held(), (2, 60));
    }
}
