//! The one swap point for the settings a reload can change.
//!
//! Every connection worker reads the current [`WorkerShared`] once, when a connection
//! arrives, and the session keeps that snapshot to its end: sessions already open finish
//! under the settings they started with, new connections get the new ones. A reload builds a
//! complete new [`WorkerShared`] (TLS acceptors, AMTP trust and policy, session limits, local
//! domains) and swaps it in with one atomic store, so no reader ever sees half a reload.
//! Per-listener settings have their own swap point in [`crate::listener`], and the users file
//! lives in the policy actor, replaced by a message; nothing else holds a copy.

use crate::worker::WorkerShared;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// See the module docs.
pub struct Runtime {
    current: ArcSwap<WorkerShared>,
    generation: AtomicU64,
}

impl Runtime {
    /// Over the settings the relay started with (generation 1).
    pub fn new(initial: WorkerShared) -> Self {
        Self {
            current: ArcSwap::from_pointee(initial),
            generation: AtomicU64::new(1),
        }
    }

    /// The settings for a connection starting now.
    pub fn load(&self) -> Arc<WorkerShared> {
        self.current.load_full()
    }

    /// Replace the settings; returns the new generation (1 at start, +1 per reload).
    pub fn swap(&self, next: WorkerShared) -> u64 {
        self.current.store(Arc::new(next));
        self.generation.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// How many configurations this process has run (1 + successful reloads).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}
