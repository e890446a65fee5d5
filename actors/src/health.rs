//! Readiness: whether this node should get traffic now.
//!
//! Ready means every configured listener is accepting, the queue's last commit succeeded (a
//! flag and the last error text set by the committer: no I/O per check), and the relay is
//! not draining. `/healthz/ready` turns this into 200 or 503 with the one-line reason, so a
//! load balancer takes a node out before its clients see 451s or refused connections.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Reports why storage is unhealthy (`Some(reason)`), or `None` when it is fine. Must not do
/// I/O: it is called on every readiness probe.
pub type StorageCheck = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// The node's readiness state, shared by the listeners, the wiring and the HTTP endpoint.
pub struct Health {
    listeners_expected: AtomicUsize,
    listeners_up: AtomicUsize,
    draining: AtomicBool,
    storage: StorageCheck,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("ready", &self.ready())
            .finish()
    }
}

impl Health {
    /// `listeners` listeners must come up; `storage` says whether the queue is healthy.
    pub fn new(listeners: usize, storage: StorageCheck) -> Self {
        Self {
            listeners_expected: AtomicUsize::new(listeners),
            listeners_up: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            storage,
        }
    }

    /// A reload added or removed listeners: `listeners` must be up from now on.
    pub fn set_listeners_expected(&self, listeners: usize) {
        self.listeners_expected.store(listeners, Ordering::SeqCst);
    }

    /// A listener started accepting.
    pub fn listener_up(&self) {
        self.listeners_up.fetch_add(1, Ordering::SeqCst);
    }

    /// A listener stopped accepting.
    pub fn listener_down(&self) {
        let _ = self
            .listeners_up
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// The relay is draining (shutting down, or told to stop taking traffic).
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::SeqCst);
    }

    /// Whether the relay is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// `Ok` when ready; otherwise the reason, one line, for the 503 body.
    pub fn ready(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("draining".into());
        }
        if let Some(reason) = (self.storage)() {
            return Err(format!("storage unhealthy: {reason}"));
        }
        let up = self.listeners_up.load(Ordering::SeqCst);
        let expected = self.listeners_expected.load(Ordering::SeqCst);
        if up < expected {
            return Err(format!("listeners not accepting: {up} of {expected} up"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::Mutex;

    #[test]
    fn ready_needs_listeners_storage_and_no_drain() {
        let fault = Arc::new(Mutex::new(None::<String>));
        let f = fault.clone();
        let h = Health::new(2, Box::new(move || f.lock().unwrap().clone()));
        assert_eq!(
            h.ready(),
            Err("listeners not accepting: 0 of 2 up".to_string())
        );
        h.listener_up();
        h.listener_up();
        assert_eq!(h.ready(), Ok(()));
        *fault.lock().unwrap() = Some("No space left on device (os error 28)".into());
        assert_eq!(
            h.ready(),
            Err("storage unhealthy: No space left on device (os error 28)".to_string())
        );
        *fault.lock().unwrap() = None;
        h.set_draining(true);
        assert_eq!(h.ready(), Err("draining".to_string()));
        h.set_draining(false);
        h.listener_down();
        assert!(h.ready().is_err());
        h.listener_down();
        h.listener_down(); // never below zero
        h.listener_up();
        h.listener_up();
        assert_eq!(h.ready(), Ok(()));
    }
}
