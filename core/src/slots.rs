//! The connections of one event loop (a target worker, a metadata loop), and the shared
//! bound on how many a server holds.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::server::ErrorLog;

/// A loop's connections, each addressed by an epoll token that holds its slot (low 32 bits)
/// and the slot's generation (high 32 bits): an event or a reply meant for a connection
/// closed since never reaches the one that took its slot.
pub(crate) struct Slots<C> {
    slots: Vec<Slot<C>>,
    /// Slots with no connection (every other slot has one).
    free: Vec<usize>,
    /// How many connections this loop holds at most, whatever the server's bound.
    most: usize,
}

struct Slot<C> {
    generation: u32,
    conn: Option<C>,
}

/// What a loop does with a new connection, by [`Slots::admit`].
pub(crate) enum Admit {
    /// A place was free and is now the new connection's.
    Claimed,
    /// Every place is taken: the connection in this slot, the oldest idle, is to be closed
    /// for the new one, whose place is counted already.
    Evict(usize),
    /// Every place is taken and none of this loop's connections is idle.
    Refused,
}

impl<C> Slots<C> {
    /// No connection yet, and at most `most` of them.
    pub(crate) fn new(most: usize) -> Slots<C> {
        Slots {
            slots: Vec::new(),
            free: Vec::new(),
            most,
        }
    }

    /// How many connections it holds.
    pub(crate) fn open(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Every slot, with a connection or not.
    pub(crate) fn indices(&self) -> Range<usize> {
        0..self.slots.len()
    }

    /// The connection in `slot`, if any.
    pub(crate) fn get(&self, slot: usize) -> Option<&C> {
        self.slots.get(slot)?.conn.as_ref()
    }

    /// The connection in `slot`, if any.
    pub(crate) fn get_mut(&mut self, slot: usize) -> Option<&mut C> {
        self.slots.get_mut(slot)?.conn.as_mut()
    }

    /// Puts `conn` in a free slot and returns the slot.
    pub(crate) fn insert(&mut self, conn: C) -> usize {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot {
                generation: 0,
                conn: None,
            });
            self.slots.len() - 1
        });
        self.slots[slot].conn = Some(conn);
        slot
    }

    /// Takes the connection out of `slot`; tokens given for it no longer find the slot.
    pub(crate) fn remove(&mut self, slot: usize) -> Option<C> {
        let s = self.slots.get_mut(slot)?;
        let conn = s.conn.take()?;
        s.generation = s.generation.wrapping_add(1);
        self.free.push(slot);
        Some(conn)
    }

    /// The epoll token of the connection in `slot`.
    pub(crate) fn token(&self, slot: usize) -> u64 {
        (u64::from(self.slots[slot].generation) << 32) | slot as u64
    }

    /// The slot `token` was given for, while its connection is still there.
    pub(crate) fn slot_of(&self, token: u64) -> Option<usize> {
        let slot = (token & u64::from(u32::MAX)) as usize;
        let s = self.slots.get(slot)?;
        (u64::from(s.generation) == token >> 32 && s.conn.is_some()).then_some(slot)
    }

    /// Claims one of the server's `bound` places, counted by `open`, for a new connection
    /// from `peer`; past the bound (or this loop's own), the oldest of the connections
    /// `idle` says may close, by `last_request`, makes room. The place is claimed before
    /// the connection is adopted, so that loops adopting at once cannot pass the bound
    /// together. An eviction or a refusal is noted in `errors`.
    pub(crate) fn admit(
        &self,
        (open, bound): (&AtomicUsize, usize),
        peer: &dyn std::fmt::Display,
        errors: &mut ErrorLog,
        idle: impl Fn(&C) -> bool,
        last_request: impl Fn(&C) -> Instant,
    ) -> Admit {
        if self.open() < self.most
            && open
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < bound).then_some(n + 1)
                })
                .is_ok()
        {
            return Admit::Claimed;
        }
        let oldest_idle = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| s.conn.as_ref().map(|c| (slot, c)))
            .filter(|(_, c)| idle(c))
            .min_by_key(|(_, c)| last_request(c));
        let bound = bound.min(self.most);
        match oldest_idle {
            Some((slot, _)) => {
                errors.note(
                    "connection bound",
                    &format_args!("{bound} connections: the oldest idle one is closed for {peer}"),
                );
                // The new connection's place; closing the evicted one gives its place back.
                open.fetch_add(1, Ordering::SeqCst);
                Admit::Evict(slot)
            }
            None => {
                errors.note(
                    "connection bound",
                    &format_args!("{peer} refused: {bound} connections, none of this loop's idle"),
                );
                Admit::Refused
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_of_a_closed_connection_finds_nothing() {
        let mut slots = Slots::new(8);
        let a = slots.insert("a");
        let old = slots.token(a);
        assert_eq!(slots.slot_of(old), Some(a));
        assert_eq!(slots.remove(a), Some("a"));
        assert_eq!(slots.slot_of(old), None);
        let b = slots.insert("b");
        assert_eq!(b, a, "the free slot is taken again");
        assert_eq!(slots.slot_of(old), None);
        assert_eq!(slots.slot_of(slots.token(b)), Some(b));
        assert_eq!(slots.open(), 1);
    }

    #[test]
    fn past_the_bound_the_oldest_idle_connection_makes_room() {
        let mut log = ErrorLog::new("test".into());
        let open = AtomicUsize::new(0);
        let mut slots = Slots::new(usize::MAX);
        // (busy, last request)
        let t0 = Instant::now();
        let later = |ms| t0 + std::time::Duration::from_millis(ms);
        for conn in [(false, later(2)), (true, later(0)), (false, later(1))] {
            assert!(matches!(
                slots.admit(
                    (&open, 3),
                    &"peer",
                    &mut log,
                    |c: &(bool, Instant)| !c.0,
                    |c| c.1
                ),
                Admit::Claimed
            ));
            slots.insert(conn);
        }
        match slots.admit((&open, 3), &"peer", &mut log, |c| !c.0, |c| c.1) {
            Admit::Evict(slot) => assert_eq!(slot, 2, "the oldest idle, not the oldest"),
            _ => panic!("a connection is idle"),
        }
        assert_eq!(
            open.load(Ordering::SeqCst),
            4,
            "counted until the evicted one closes"
        );
        assert!(matches!(
            slots.admit((&open, 3), &"peer", &mut log, |_| false, |c| c.1),
            Admit::Refused
        ));
    }

    #[test]
    fn a_loop_holds_no_more_than_its_own_bound() {
        let mut log = ErrorLog::new("test".into());
        let open = AtomicUsize::new(0);
        let mut slots = Slots::new(1);
        assert!(matches!(
            slots.admit(
                (&open, 10),
                &"peer",
                &mut log,
                |_: &u8| true,
                |_| Instant::now()
            ),
            Admit::Claimed
        ));
        slots.insert(0);
        assert!(matches!(
            slots.admit(
                (&open, 10),
                &"peer",
                &mut log,
                |_| false,
                |_| Instant::now()
            ),
            Admit::Refused
        ));
        assert_eq!(open.load(Ordering::SeqCst), 1);
    }
}
