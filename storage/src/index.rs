//! The queue's schedule in memory: when each message is due, which delivery holds a lease on
//! it, and where its body is — so that finding due work, leasing it and finding a body never
//! write to (or scan) the database.
//!
//! Why memory is enough: the schedule is a copy of what the records say (`next_attempt`,
//! the body's location), rebuilt from them at open; and a lease only means "a worker of this
//! process is delivering it", which no restart can make true, so it was never worth a write.
//! A lease moves the message's due time to the lease's expiry: if its holder dies, the message
//! becomes due again by itself when the lease runs out.
//!
//! It also knows which messages compaction is moving to another segment: those are not
//! leased (nor offered as due) until the move ends, so that no delivery reads a body from a
//! segment the move is about to delete.
//!
//! Cost: one hash entry and one ordered-set entry per message (about 100 bytes).

use crate::record::BodyAt;
use std::collections::{BTreeSet, HashMap, HashSet};

/// What the index knows about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// When the next attempt is due (ms), as in the record.
    pub next_attempt: u64,
    /// A delivery of this process holds it until then (ms); 0 for no lease.
    pub lease_until: u64,
    /// Where the body is.
    pub body: BodyAt,
}

impl Slot {
    /// Its place in the due order: the lease's expiry while leased, else the next attempt.
    fn due_at(&self) -> u64 {
        if self.lease_until != 0 {
            self.lease_until
        } else {
            self.next_attempt
        }
    }
}

/// Every message's [`Slot`], and the messages in due order.
#[derive(Debug, Default)]
pub struct Index {
    slots: HashMap<u64, Slot>,
    due: BTreeSet<(u64, u64)>,
    /// Messages whose body compaction is moving: not leasable, not due.
    moving: HashSet<u64>,
}

impl Index {
    /// Add (or replace) message `id`.
    pub fn insert(&mut self, id: u64, slot: Slot) {
        if let Some(old) = self.slots.insert(id, slot) {
            self.due.remove(&(old.due_at(), id));
        }
        self.due.insert((slot.due_at(), id));
    }

    /// Forget message `id`; returns what was known.
    pub fn remove(&mut self, id: u64) -> Option<Slot> {
        let old = self.slots.remove(&id)?;
        self.due.remove(&(old.due_at(), id));
        Some(old)
    }

    /// Message `id`'s slot.
    pub fn get(&self, id: u64) -> Option<Slot> {
        self.slots.get(&id).copied()
    }

    /// Change message `id`'s slot (if it is known), keeping the due order right.
    pub fn update(&mut self, id: u64, f: impl FnOnce(&mut Slot)) {
        if let Some(slot) = self.slots.get_mut(&id) {
            let before = slot.due_at();
            f(slot);
            let after = slot.due_at();
            if before != after {
                self.due.remove(&(before, id));
                self.due.insert((after, id));
            }
        }
    }

    /// Mark message `id` as being moved by compaction (it must not be leased meanwhile).
    pub fn start_moving(&mut self, id: u64) {
        self.moving.insert(id);
    }

    /// The move of message `id` ended (done or given up).
    pub fn stop_moving(&mut self, id: u64) {
        self.moving.remove(&id);
    }

    /// Whether compaction is moving message `id`'s body.
    pub fn is_moving(&self, id: u64) -> bool {
        self.moving.contains(&id)
    }

    /// Up to `limit` ids due at or before `now` for which `skip` is false, soonest first
    /// (leased messages are due when their lease expires; messages being moved are not due
    /// until the move ends).
    pub fn due(&self, now: u64, limit: usize, skip: impl Fn(u64) -> bool) -> Vec<u64> {
        self.due
            .range(..=(now, u64::MAX))
            .map(|&(_, id)| id)
            .filter(|&id| !skip(id) && (self.moving.is_empty() || !self.moving.contains(&id)))
            .take(limit)
            .collect()
    }

    /// Every slot (for reconciling with the spool at open).
    pub fn iter(&self) -> impl Iterator<Item = (u64, Slot)> + '_ {
        self.slots.iter().map(|(&id, &slot)| (id, slot))
    }

    /// Messages known.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no message is known.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(next_attempt: u64, lease_until: u64) -> Slot {
        Slot {
            next_attempt,
            lease_until,
            body: BodyAt::File,
        }
    }

    #[test]
    fn a_lease_hides_a_message_until_it_expires() {
        let mut index = Index::default();
        index.insert(1, slot(10, 0));
        index.insert(2, slot(20, 0));
        assert_eq!(index.due(25, 10, |_| false), vec![1, 2]);
        index.update(1, |s| s.lease_until = 100);
        assert_eq!(index.due(25, 10, |_| false), vec![2], "leased: not due");
        assert_eq!(
            index.due(100, 10, |_| false),
            vec![2, 1],
            "expired lease: due again"
        );
        index.update(1, |s| {
            s.lease_until = 0;
            s.next_attempt = 50;
        });
        assert_eq!(index.due(49, 10, |_| false), vec![2]);
        assert_eq!(index.due(50, 1, |_| false), vec![2], "limit");
        assert_eq!(index.remove(2), Some(slot(20, 0)));
        assert_eq!(index.due(u64::MAX, 10, |_| false), vec![1]);
        index.insert(1, slot(5, 0));
        assert_eq!(
            index.due(u64::MAX, 10, |_| false),
            vec![1],
            "replaced, not doubled"
        );
        assert_eq!(index.len(), 1);
        index.insert(3, slot(1, 0));
        assert_eq!(index.due(u64::MAX, 1, |_| false), vec![3]);
        assert_eq!(
            index.due(u64::MAX, 1, |id| id == 3),
            vec![1],
            "skipped ids do not take the limit's places"
        );
        index.start_moving(3);
        assert_eq!(
            index.due(u64::MAX, 1, |_| false),
            vec![1],
            "moving: not due"
        );
        index.stop_moving(3);
        assert_eq!(index.due(u64::MAX, 1, |_| false), vec![3]);
    }
}
