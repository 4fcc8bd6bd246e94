//! The forwarding database: MAC address → port, with aging, a capacity limit and a limit per
//! port (so one port, e.g. one pod, cannot fill the table).
//!
//! Ownership: one `Fdb` per worker, never shared. Workers keep their copies consistent by
//! exchanging [`LearnEvent`]s (see `Bridge::take_learn_events`), so lookups take no lock.

use crate::batch::PortId;
use crate::wire::MacAddr;
use rustc_hash::FxHashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    pub port: PortId,
    pub last_seen_ms: u64,
    /// When this entry was last announced to other workers.
    announced_ms: u64,
}

/// What learning a source address did to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LearnOutcome {
    /// Already known on this port; its age was refreshed.
    Refreshed,
    New,
    Moved {
        from: PortId,
    },
    /// Not learned: the table is at capacity.
    TableFull,
    /// Not learned: the port has as many addresses as it may.
    PortLimit,
    /// A known address moving to a port that has as many addresses as it may: forgotten
    /// (frames to it flood) rather than left pointing at its old port.
    ForgottenAtPortLimit {
        from: PortId,
    },
}

/// A learned or refreshed entry, announced to the other workers' tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearnEvent {
    pub mac: MacAddr,
    pub port: PortId,
}

#[derive(Debug, Clone)]
pub struct Fdb {
    // Keyed by the MAC packed into a u64 (bridge domain bits free above bit 48).
    table: FxHashMap<u64, FdbEntry>,
    capacity: usize,
    /// Most entries on one port.
    port_limit: usize,
    /// Entries per port, indexed by port (grown on demand).
    per_port: Vec<u32>,
    age_ms: u64,
}

impl Fdb {
    /// A table of at most `capacity` entries, `port_limit` of them on any one port.
    pub fn new(capacity: usize, port_limit: usize, age_ms: u64) -> Fdb {
        Fdb {
            table: FxHashMap::with_capacity_and_hasher(capacity.min(1 << 16), Default::default()),
            capacity,
            port_limit,
            per_port: Vec::new(),
            age_ms,
        }
    }

    /// Entries learned on `port`.
    pub fn port_len(&self, port: PortId) -> usize {
        self.per_port.get(port as usize).map_or(0, |&n| n as usize)
    }

    #[inline]
    fn port_full(&self, port: PortId) -> bool {
        self.port_len(port) >= self.port_limit
    }

    #[inline]
    fn count(&mut self, port: PortId) {
        let p = port as usize;
        if p >= self.per_port.len() {
            self.per_port.resize(p + 1, 0);
        }
        self.per_port[p] += 1;
    }

    #[inline]
    fn uncount(per_port: &mut [u32], port: PortId) {
        if let Some(n) = per_port.get_mut(port as usize) {
            *n = n.saturating_sub(1);
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Every entry (for the operator), in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = (MacAddr, FdbEntry)> + '_ {
        self.table.iter().map(|(&k, &e)| {
            let b = k.to_be_bytes();
            (MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]]), e)
        })
    }

    /// Forgets every entry.
    pub fn clear(&mut self) -> usize {
        let n = self.table.len();
        self.table.clear();
        self.per_port.clear();
        n
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    #[inline]
    fn is_live(&self, entry: &FdbEntry, now_ms: u64) -> bool {
        now_ms.saturating_sub(entry.last_seen_ms) < self.age_ms
    }

    /// The port a live entry points to; an expired entry not yet swept counts as unknown.
    #[inline]
    pub fn lookup(&self, mac: MacAddr, now_ms: u64) -> Option<PortId> {
        match self.table.get(&mac.to_u64()) {
            Some(e) if self.is_live(e, now_ms) => Some(e.port),
            _ => None,
        }
    }

    #[inline]
    pub fn learn(&mut self, mac: MacAddr, port: PortId, now_ms: u64) -> LearnOutcome {
        let len = self.table.len();
        let capacity = self.capacity;
        let port_full = self.port_full(port);
        match self.table.entry(mac.to_u64()) {
            std::collections::hash_map::Entry::Occupied(mut slot) => {
                let entry = slot.get_mut();
                if entry.port == port {
                    entry.last_seen_ms = now_ms;
                    return LearnOutcome::Refreshed;
                }
                let from = entry.port;
                if port_full {
                    slot.remove();
                    Self::uncount(&mut self.per_port, from);
                    return LearnOutcome::ForgottenAtPortLimit { from };
                }
                entry.last_seen_ms = now_ms;
                entry.port = port;
                entry.announced_ms = 0;
                Self::uncount(&mut self.per_port, from);
                self.count(port);
                LearnOutcome::Moved { from }
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                if len >= capacity {
                    return LearnOutcome::TableFull;
                }
                if port_full {
                    return LearnOutcome::PortLimit;
                }
                slot.insert(FdbEntry {
                    port,
                    last_seen_ms: now_ms,
                    announced_ms: 0,
                });
                self.count(port);
                LearnOutcome::New
            }
        }
    }

    /// Forgets when every entry was announced, so each is announced again (by the next frame
    /// from it, or by a resynchronisation); returns the addresses, to announce in chunks.
    pub fn reannounce_all(&mut self) -> Vec<MacAddr> {
        self.table
            .iter_mut()
            .map(|(&key, e)| {
                e.announced_ms = 0;
                MacAddr::from_u64(key)
            })
            .collect()
    }

    /// The live entry for `mac`, marked announced at `now_ms`: what to announce of it.
    pub fn take_for_announcement(&mut self, mac: MacAddr, now_ms: u64) -> Option<PortId> {
        let age_ms = self.age_ms;
        match self.table.get_mut(&mac.to_u64()) {
            Some(e) if now_ms.saturating_sub(e.last_seen_ms) < age_ms => {
                e.announced_ms = now_ms.max(1);
                Some(e.port)
            }
            _ => None,
        }
    }

    /// Marks the entry announced at `now_ms` if its last announcement is older than
    /// `interval_ms` (or it was never announced). Returns whether to announce now.
    pub fn announce_due(&mut self, mac: MacAddr, now_ms: u64, interval_ms: u64) -> bool {
        match self.table.get_mut(&mac.to_u64()) {
            Some(e)
                if e.announced_ms == 0 || now_ms.saturating_sub(e.announced_ms) >= interval_ms =>
            {
                e.announced_ms = now_ms.max(1);
                true
            }
            _ => false,
        }
    }

    /// Applies another worker's announcement; never announces again.
    pub fn apply(&mut self, event: LearnEvent, now_ms: u64) -> LearnOutcome {
        let outcome = self.learn(event.mac, event.port, now_ms);
        if let Some(e) = self.table.get_mut(&event.mac.to_u64()) {
            // Heard from a peer: no need to echo it back before the next interval.
            e.announced_ms = now_ms.max(1);
        }
        outcome
    }

    /// Removes every entry on `port`; returns how many.
    pub fn remove_port(&mut self, port: PortId) -> usize {
        let before = self.table.len();
        self.table.retain(|_, e| e.port != port);
        if let Some(n) = self.per_port.get_mut(port as usize) {
            *n = 0;
        }
        before - self.table.len()
    }

    /// Removes expired entries; returns how many.
    pub fn age(&mut self, now_ms: u64) -> usize {
        let before = self.table.len();
        let age_ms = self.age_ms;
        let per_port = &mut self.per_port;
        self.table.retain(|_, e| {
            let live = now_ms.saturating_sub(e.last_seen_ms) < age_ms;
            if !live {
                Self::uncount(per_port, e.port);
            }
            live
        });
        before - self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x02, 0, 0, 0, 0, n])
    }

    #[test]
    fn learn_lookup_move_refresh() {
        let mut fdb = Fdb::new(8, 8, 1000);
        assert_eq!(fdb.learn(mac(1), 0, 10), LearnOutcome::New);
        assert_eq!(fdb.learn(mac(1), 0, 20), LearnOutcome::Refreshed);
        assert_eq!(fdb.lookup(mac(1), 20), Some(0));
        assert_eq!(fdb.learn(mac(1), 2, 30), LearnOutcome::Moved { from: 0 });
        assert_eq!(fdb.lookup(mac(1), 30), Some(2));
        assert_eq!(fdb.len(), 1);
    }

    #[test]
    fn expired_entries_are_unknown_then_swept() {
        let mut fdb = Fdb::new(8, 8, 1000);
        fdb.learn(mac(1), 1, 0);
        fdb.learn(mac(2), 1, 600);
        assert_eq!(fdb.lookup(mac(1), 999), Some(1));
        assert_eq!(fdb.lookup(mac(1), 1000), None);
        assert_eq!(fdb.age(1000), 1);
        assert_eq!(fdb.len(), 1);
        assert_eq!(fdb.lookup(mac(2), 1000), Some(1));
        assert_eq!(fdb.age(1600), 1);
        assert!(fdb.is_empty());
    }

    #[test]
    fn capacity_is_enforced_but_known_entries_still_refresh_and_move() {
        let mut fdb = Fdb::new(2, 8, 1000);
        assert_eq!(fdb.learn(mac(1), 0, 0), LearnOutcome::New);
        assert_eq!(fdb.learn(mac(2), 0, 0), LearnOutcome::New);
        assert_eq!(fdb.learn(mac(3), 0, 0), LearnOutcome::TableFull);
        assert_eq!(fdb.lookup(mac(3), 0), None);
        assert_eq!(fdb.learn(mac(2), 1, 5), LearnOutcome::Moved { from: 0 });
        assert_eq!(fdb.len(), 2);
    }

    #[test]
    fn announcements_are_rate_limited_and_not_echoed() {
        let mut fdb = Fdb::new(8, 8, 300_000);
        fdb.learn(mac(1), 0, 5);
        assert!(fdb.announce_due(mac(1), 5, 1000));
        assert!(!fdb.announce_due(mac(1), 500, 1000));
        assert!(fdb.announce_due(mac(1), 1005, 1000));

        let mut peer = Fdb::new(8, 8, 300_000);
        peer.apply(
            LearnEvent {
                mac: mac(1),
                port: 0,
            },
            1005,
        );
        assert_eq!(peer.lookup(mac(1), 1006), Some(0));
        assert!(!peer.announce_due(mac(1), 1500, 1000));
    }

    #[test]
    fn the_port_limit_is_per_port_and_counted_through_moves_and_aging() {
        let mut fdb = Fdb::new(100, 2, 1000);
        assert_eq!(fdb.learn(mac(1), 0, 0), LearnOutcome::New);
        assert_eq!(fdb.learn(mac(2), 0, 0), LearnOutcome::New);
        assert_eq!(fdb.learn(mac(3), 0, 0), LearnOutcome::PortLimit);
        assert_eq!(fdb.lookup(mac(3), 0), None);
        // Known addresses still refresh; other ports have their own allowance.
        assert_eq!(fdb.learn(mac(2), 0, 10), LearnOutcome::Refreshed);
        assert_eq!(fdb.learn(mac(3), 1, 10), LearnOutcome::New);
        assert_eq!(fdb.port_len(0), 2);
        assert_eq!(fdb.port_len(1), 1);
        // A move frees a place on the old port.
        assert_eq!(fdb.learn(mac(1), 1, 20), LearnOutcome::Moved { from: 0 });
        assert_eq!((fdb.port_len(0), fdb.port_len(1)), (1, 2));
        assert_eq!(fdb.learn(mac(4), 0, 20), LearnOutcome::New);
        // Moving onto a full port forgets the address instead of leaving it on the old one.
        assert_eq!(
            fdb.learn(mac(4), 1, 30),
            LearnOutcome::ForgottenAtPortLimit { from: 0 }
        );
        assert_eq!(fdb.lookup(mac(4), 30), None);
        assert_eq!((fdb.port_len(0), fdb.port_len(1)), (1, 2));
        // Aging gives the places back.
        assert_eq!(fdb.age(1015), 2, "mac(2) and mac(3), last seen at 10");
        assert_eq!((fdb.port_len(0), fdb.port_len(1)), (0, 1));
        assert_eq!(fdb.learn(mac(5), 1, 1015), LearnOutcome::New);
        assert_eq!(fdb.learn(mac(6), 1, 1015), LearnOutcome::PortLimit);
        // Announcements from peers obey the limit too.
        let event = LearnEvent {
            mac: mac(6),
            port: 1,
        };
        assert_eq!(fdb.apply(event, 1016), LearnOutcome::PortLimit);
    }
}
