//! Neighbours: IPv4 address → MAC and port, learned from ARP, with a small bounded queue of
//! frames per address still being resolved.
//!
//! Ownership: shared by all workers as [`SharedNeighbors`]: one `RwLock` around the table, taken
//! for learning, queueing and housekeeping, and by a worker's [`NeighborCache`] only on a miss.
//! No other lock is taken while it is held. Every change a cached copy could miss (an address
//! that moves, an entry that goes) bumps a generation that the caches check per packet.

use crate::batch::PortId;
use crate::wire::MacAddr;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

/// Frames held per unresolved address, as Linux's `unres_qlen` does.
pub const PENDING_PER_ADDRESS: usize = 16;
/// Addresses being resolved at once.
pub const MAX_PENDING_ADDRESSES: usize = 1024;
/// Re-ask this often while unresolved; give up (and drop what is queued) after this many asks.
pub const RETRY_MS: u64 = 1000;
pub const MAX_REQUESTS: u32 = 3;
/// An entry about to age out is asked for this many times (one per `RETRY_MS`, unicast to
/// its MAC, as Linux probes a stale entry; every entry, used or not, which costs a request
/// per host every age period): an answer keeps it, so a next hop that never asks us itself
/// (a router, a peer's VTEP) is not lost for a round trip, and its frames queued or dropped,
/// every age period.
pub const PROBES_BEFORE_AGING: u64 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbor {
    pub mac: MacAddr,
    pub port: PortId,
    pub updated_ms: u64,
}

#[derive(Debug, Default)]
struct Pending {
    frames: VecDeque<Vec<u8>>,
    last_request_ms: u64,
    requests: u32,
}

/// What became of a frame whose next hop is being resolved.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolve {
    /// Queued; send an ARP request now if `request` is set.
    Queued { request: bool },
    /// The queue for this address (or the table of pending addresses) is full.
    QueueFull,
}

#[derive(Debug)]
pub struct NeighborTable {
    entries: FxHashMap<Ipv4Addr, Neighbor>,
    pending: FxHashMap<Ipv4Addr, Pending>,
    /// When each entry about to age out was last probed.
    probed: FxHashMap<Ipv4Addr, u64>,
    age_ms: u64,
    /// Entries that moved or went, ever (what caches must hear about).
    changes: u64,
}

/// What the periodic work found to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Chores {
    /// Unresolved addresses to ask for again (broadcast).
    pub ask: Vec<Ipv4Addr>,
    /// Entries about to age out, to probe (unicast to the entry's MAC and port).
    pub probe: Vec<(Ipv4Addr, Neighbor)>,
    /// Frames dropped because nobody answered.
    pub dropped: usize,
}

impl NeighborTable {
    pub fn new(age_ms: u64) -> NeighborTable {
        NeighborTable {
            entries: FxHashMap::default(),
            pending: FxHashMap::default(),
            probed: FxHashMap::default(),
            age_ms,
            changes: 0,
        }
    }

    #[inline]
    pub fn get(&self, ip: Ipv4Addr, now_ms: u64) -> Option<Neighbor> {
        self.entries
            .get(&ip)
            .copied()
            .filter(|n| now_ms.saturating_sub(n.updated_ms) < self.age_ms)
    }

    /// Resolved addresses (live or not yet aged out), for the operator.
    pub fn entries(&self) -> impl Iterator<Item = (Ipv4Addr, Neighbor)> + '_ {
        self.entries.iter().map(|(&ip, &n)| (ip, n))
    }

    /// Addresses being resolved, for the operator.
    pub fn pending(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.pending.keys().copied()
    }

    /// Whether an entry updated at `updated_ms` is still used.
    pub fn is_live(&self, updated_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(updated_ms) < self.age_ms
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Learns or refreshes an entry; returns the frames that were waiting for it.
    pub fn learn(&mut self, ip: Ipv4Addr, mac: MacAddr, port: PortId, now_ms: u64) -> Vec<Vec<u8>> {
        let old = self.entries.insert(
            ip,
            Neighbor {
                mac,
                port,
                updated_ms: now_ms,
            },
        );
        if old.is_some_and(|o| (o.mac, o.port) != (mac, port)) {
            self.changes += 1;
        }
        self.pending
            .remove(&ip)
            .map(|p| p.frames.into())
            .unwrap_or_default()
    }

    /// Refreshes an existing entry only (ARP seen for an address we already know).
    pub fn refresh(
        &mut self,
        ip: Ipv4Addr,
        mac: MacAddr,
        port: PortId,
        now_ms: u64,
    ) -> Option<Vec<Vec<u8>>> {
        if self.entries.contains_key(&ip) || self.pending.contains_key(&ip) {
            Some(self.learn(ip, mac, port, now_ms))
        } else {
            None
        }
    }

    /// Holds `frame` until `ip` resolves.
    pub fn queue(&mut self, ip: Ipv4Addr, frame: &[u8], now_ms: u64) -> Resolve {
        if !self.pending.contains_key(&ip) && self.pending.len() >= MAX_PENDING_ADDRESSES {
            return Resolve::QueueFull;
        }
        let pending = self.pending.entry(ip).or_default();
        if pending.frames.len() >= PENDING_PER_ADDRESS {
            return Resolve::QueueFull;
        }
        pending.frames.push_back(frame.to_vec());
        let request = pending.requests == 0;
        if request {
            pending.requests = 1;
            pending.last_request_ms = now_ms;
        }
        Resolve::Queued { request }
    }

    /// Forgets every entry on `port`; returns their addresses.
    pub fn remove_port(&mut self, port: PortId) -> Vec<Ipv4Addr> {
        let gone: Vec<Ipv4Addr> = self
            .entries
            .iter()
            .filter(|(_, n)| n.port == port)
            .map(|(ip, _)| *ip)
            .collect();
        for ip in &gone {
            self.entries.remove(ip);
        }
        if !gone.is_empty() {
            self.changes += 1;
        }
        gone
    }

    /// Periodic work: forget old entries, probe those about to age out, re-ask for pending
    /// addresses, give up on silent ones.
    pub fn housekeeping(&mut self, now_ms: u64) -> Chores {
        let age = self.age_ms;
        let before = self.entries.len();
        self.entries
            .retain(|_, n| now_ms.saturating_sub(n.updated_ms) < age);
        if self.entries.len() != before {
            self.changes += 1;
        }
        let probe_from = age.saturating_sub(PROBES_BEFORE_AGING * RETRY_MS);
        let due = |n: &Neighbor| now_ms.saturating_sub(n.updated_ms) >= probe_from;
        let entries = &self.entries;
        self.probed
            .retain(|ip, _| entries.get(ip).is_some_and(&due));
        let mut probe = Vec::new();
        for (ip, n) in entries.iter().filter(|(_, n)| due(n)) {
            let last = self.probed.get(ip);
            if last.is_none_or(|&t| now_ms.saturating_sub(t) >= RETRY_MS) {
                self.probed.insert(*ip, now_ms);
                probe.push((*ip, *n));
            }
        }
        let mut ask = Vec::new();
        let mut dropped = 0;
        self.pending.retain(|ip, p| {
            if now_ms.saturating_sub(p.last_request_ms) < RETRY_MS {
                return true;
            }
            if p.requests >= MAX_REQUESTS {
                dropped += p.frames.len();
                return false;
            }
            p.requests += 1;
            p.last_request_ms = now_ms;
            ask.push(*ip);
            true
        });
        Chores {
            ask,
            probe,
            dropped,
        }
    }
}

/// The table every worker shares, with the generation its caches check.
#[derive(Debug)]
pub struct SharedNeighbors {
    table: RwLock<NeighborTable>,
    generation: AtomicU64,
    age_ms: u64,
}

impl SharedNeighbors {
    pub fn new(age_ms: u64) -> SharedNeighbors {
        SharedNeighbors {
            table: RwLock::new(NeighborTable::new(age_ms)),
            generation: AtomicU64::new(0),
            age_ms,
        }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, NeighborTable> {
        // A worker that panicked while holding it left a consistent table.
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the table; caches drop what they hold if an entry moved or went.
    pub fn update<R>(&self, f: impl FnOnce(&mut NeighborTable) -> R) -> R {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        let before = table.changes;
        let result = f(&mut table);
        if table.changes != before {
            self.generation.fetch_add(1, Ordering::Release);
        }
        result
    }

    /// Moves when an entry moved or went.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// Addresses cached per worker: one atomic load per lookup, the shared lock only on a miss.
const CACHE_CAPACITY: usize = 4096;

#[derive(Debug, Default)]
pub struct NeighborCache {
    generation: u64,
    entries: FxHashMap<Ipv4Addr, Neighbor>,
}

impl NeighborCache {
    /// The live entry for `ip`, from the cache or the shared table.
    #[inline]
    pub fn get(&mut self, shared: &SharedNeighbors, ip: Ipv4Addr, now_ms: u64) -> Option<Neighbor> {
        let generation = shared.generation();
        if generation != self.generation {
            self.entries.clear();
            self.generation = generation;
        }
        let age_ms = shared.age_ms;
        if let Some(n) = self.entries.get(&ip) {
            if now_ms.saturating_sub(n.updated_ms) < age_ms {
                return Some(*n);
            }
        }
        // A miss, or a copy older than the entry may be: ask the table (it may have been
        // refreshed since).
        let n = shared.read().get(ip, now_ms);
        match n {
            Some(n) => {
                if self.entries.len() >= CACHE_CAPACITY {
                    self.entries.clear();
                }
                self.entries.insert(ip, n);
            }
            None => {
                self.entries.remove(&ip);
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const MAC: MacAddr = MacAddr([2, 0, 0, 0, 1, 2]);

    #[test]
    fn queue_then_learn_releases_frames() {
        let mut t = NeighborTable::new(300_000);
        assert_eq!(t.queue(IP, b"one", 0), Resolve::Queued { request: true });
        assert_eq!(t.queue(IP, b"two", 1), Resolve::Queued { request: false });
        assert_eq!(t.get(IP, 2), None);
        let released = t.learn(IP, MAC, 3, 5);
        assert_eq!(released, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(
            t.get(IP, 6),
            Some(Neighbor {
                mac: MAC,
                port: 3,
                updated_ms: 5
            })
        );
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut t = NeighborTable::new(300_000);
        for _ in 0..PENDING_PER_ADDRESS {
            assert!(matches!(t.queue(IP, b"x", 0), Resolve::Queued { .. }));
        }
        assert_eq!(t.queue(IP, b"x", 0), Resolve::QueueFull);
    }

    #[test]
    fn caches_hear_of_moves_and_aging_but_not_of_refreshes() {
        let shared = SharedNeighbors::new(10_000);
        let mut cache = NeighborCache::default();
        assert_eq!(cache.get(&shared, IP, 0), None);
        shared.update(|t| t.learn(IP, MAC, 1, 0));
        assert_eq!(cache.get(&shared, IP, 1).map(|n| n.port), Some(1));
        // A refresh changes no generation: the cached copy serves until it looks old, then
        // the table's fresher entry is read.
        shared.update(|t| t.learn(IP, MAC, 1, 9_000));
        assert_eq!(cache.generation, shared.generation());
        assert_eq!(
            cache.get(&shared, IP, 12_000).map(|n| n.updated_ms),
            Some(9_000)
        );
        // A move is seen at once.
        let other = MacAddr([2, 0, 0, 0, 9, 9]);
        shared.update(|t| t.learn(IP, other, 2, 12_001));
        assert_eq!(
            cache.get(&shared, IP, 12_002).map(|n| (n.mac, n.port)),
            Some((other, 2))
        );
        // So is an entry that went.
        shared.update(|t| t.housekeeping(30_000));
        assert_eq!(cache.get(&shared, IP, 12_003), None);
    }

    #[test]
    fn retries_then_gives_up_and_entries_age() {
        let mut t = NeighborTable::new(10_000);
        t.queue(IP, b"x", 0);
        let asked = |t: &mut NeighborTable, now| {
            let chores = t.housekeeping(now);
            (chores.ask, chores.dropped)
        };
        assert_eq!(asked(&mut t, 500), (vec![], 0));
        assert_eq!(asked(&mut t, 1000), (vec![IP], 0));
        assert_eq!(asked(&mut t, 2000), (vec![IP], 0));
        assert_eq!(asked(&mut t, 3000), (vec![], 1));
        t.learn(IP, MAC, 1, 3000);
        assert!(t.get(IP, 12_999).is_some());
        assert!(t.get(IP, 13_000).is_none());
        t.housekeeping(13_000);
        assert!(t.is_empty());
    }

    #[test]
    fn entries_about_to_age_are_probed_and_kept_when_they_answer() {
        let mut t = NeighborTable::new(10_000);
        t.learn(IP, MAC, 1, 0);
        let probed = |t: &mut NeighborTable, now| -> Vec<Ipv4Addr> {
            t.housekeeping(now)
                .probe
                .iter()
                .map(|(ip, _)| *ip)
                .collect()
        };
        let none: Vec<Ipv4Addr> = vec![];
        assert_eq!(probed(&mut t, 6_500), none);
        assert_eq!(probed(&mut t, 7_000), vec![IP], "3 s before it ages");
        let chores = t.housekeeping(7_000);
        assert!(chores.probe.is_empty(), "once per second");
        assert_eq!(probed(&mut t, 8_000), vec![IP]);
        // It answers: kept, and not probed again until it is old again.
        t.learn(IP, MAC, 1, 8_100);
        assert_eq!(probed(&mut t, 9_000), none);
        assert!(t.get(IP, 12_000).is_some());
        assert_eq!(probed(&mut t, 15_100), vec![IP]);
        // Silent: three probes, then it ages out as before.
        assert_eq!(probed(&mut t, 16_100), vec![IP]);
        assert_eq!(probed(&mut t, 17_100), vec![IP]);
        assert_eq!(probed(&mut t, 18_100), none);
        assert!(t.is_empty());
        assert!(t.probed.is_empty());
    }
}
