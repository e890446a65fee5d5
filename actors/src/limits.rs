//! Connection limits per listener: a global count and a per-client-IP count.
//!
//! [`ConnectionLimits::try_acquire`] hands out a [`ConnectionPermit`] that releases its slots
//! when dropped, wherever the connection ends (worker, handshake failure, panic).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitExceeded {
    /// The listener's `max_connections`.
    Global,
    /// The listener's `max_connections_per_ip`.
    PerIp,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Shared by a listener and the permits it hands out.
#[derive(Debug)]
pub struct ConnectionLimits {
    /// Changed by a reload; connections already open keep their slots.
    max_total: AtomicUsize,
    max_per_ip: AtomicUsize,
    counts: Mutex<Counts>,
}

impl ConnectionLimits {
    /// Limits for one listener.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total: AtomicUsize::new(max_total),
            max_per_ip: AtomicUsize::new(max_per_ip),
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Take a slot for `ip`, or say which limit is reached.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, LimitExceeded> {
        let mut c = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if c.total >= self.max_total.load(Ordering::Relaxed) {
            return Err(LimitExceeded::Global);
        }
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip.load(Ordering::Relaxed) {
            return Err(LimitExceeded::PerIp);
        }
        *n += 1;
        c.total += 1;
        Ok(ConnectionPermit {
            limits: self.clone(),
            ip: Some(ip),
        })
    }

    /// Take a slot in the global count only, for a connection whose client address is not
    /// known yet (a PROXY protocol listener before the header): a flood of header-less
    /// connections is bounded by `max_connections`, and the per-IP slot is taken by
    /// [`ConnectionPermit::bind_ip`] once the header names the client.
    pub fn try_acquire_global(self: &Arc<Self>) -> Result<ConnectionPermit, LimitExceeded> {
        let mut c = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if c.total >= self.max_total.load(Ordering::Relaxed) {
            return Err(LimitExceeded::Global);
        }
        c.total += 1;
        Ok(ConnectionPermit {
            limits: self.clone(),
            ip: None,
        })
    }

    /// New maxima (a reload): open connections keep their slots and count against them, so
    /// lowering a limit below the open count refuses new connections until enough close.
    pub fn set_limits(&self, max_total: usize, max_per_ip: usize) {
        self.max_total.store(max_total, Ordering::Relaxed);
        self.max_per_ip.store(max_per_ip, Ordering::Relaxed);
    }

    /// Connections currently open.
    pub fn active(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .total
    }
}

/// One open connection's slots; released on drop.
#[derive(Debug)]
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    /// `None` while only the global slot is held (see [`ConnectionLimits::try_acquire_global`]).
    ip: Option<IpAddr>,
}

impl ConnectionPermit {
    /// Take the per-IP slot for `ip` on a permit that holds only its global slot. On
    /// `Err(PerIp)` the permit keeps only its global slot (dropping it releases that).
    /// A permit that already has an address is left unchanged.
    pub fn bind_ip(&mut self, ip: IpAddr) -> Result<(), LimitExceeded> {
        if self.ip.is_some() {
            return Ok(());
        }
        let mut c = self
            .limits
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= self.limits.max_per_ip.load(Ordering::Relaxed) {
            if *n == 0 {
                c.per_ip.remove(&ip);
            }
            return Err(LimitExceeded::PerIp);
        }
        *n += 1;
        self.ip = Some(ip);
        Ok(())
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut c = self
            .limits
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.total = c.total.saturating_sub(1);
        if let Some(ip) = self.ip
            && let Some(n) = c.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_and_per_ip_limits_release_on_drop() {
        let l = ConnectionLimits::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = l.try_acquire(a).unwrap();
        let _p2 = l.try_acquire(a).unwrap();
        assert_eq!(l.try_acquire(a).unwrap_err(), LimitExceeded::PerIp);
        let _p3 = l.try_acquire(b).unwrap();
        assert_eq!(l.try_acquire(b).unwrap_err(), LimitExceeded::Global);
        drop(p1);
        assert_eq!(l.active(), 2);
        assert!(l.try_acquire(a).is_ok());
        assert_eq!(l.counts.lock().unwrap().per_ip.len(), 2);
    }

    #[test]
    fn lowered_limits_apply_to_new_connections_only() {
        let l = ConnectionLimits::new(10, 10);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let _p1 = l.try_acquire(a).unwrap();
        let _p2 = l.try_acquire(a).unwrap();
        l.set_limits(10, 2);
        assert_eq!(l.try_acquire(a).unwrap_err(), LimitExceeded::PerIp);
        l.set_limits(2, 5);
        assert_eq!(l.try_acquire(a).unwrap_err(), LimitExceeded::Global);
        assert_eq!(l.active(), 2);
    }

    #[test]
    fn global_slot_first_then_per_ip_once_the_address_is_known() {
        let l = ConnectionLimits::new(3, 1);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let mut p1 = l.try_acquire_global().unwrap();
        let mut p2 = l.try_acquire_global().unwrap();
        p1.bind_ip(a).unwrap();
        assert_eq!(p2.bind_ip(a).unwrap_err(), LimitExceeded::PerIp);
        assert_eq!(l.active(), 2);
        drop(p2);
        assert_eq!(l.active(), 1);
        let _p3 = l.try_acquire_global().unwrap();
        let _p4 = l.try_acquire_global().unwrap();
        assert_eq!(l.try_acquire_global().unwrap_err(), LimitExceeded::Global);
        drop(p1);
        assert!(l.counts.lock().unwrap().per_ip.is_empty());
        assert!(l.try_acquire(a).is_ok());
    }
}
