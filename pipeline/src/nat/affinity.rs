//! ClientIP session affinity (`sessionAffinity: ClientIP`): a client's new connections to a
//! service go to the backend its last new connection went to, until the service's timeout
//! passes without one (iptables' `recent --rcheck --seconds T` with `--set` on every new
//! connection, as kube-proxy programs it). The Maglev pick is used, and remembered, when there
//! is no live entry or its backend left the service.
//!
//! Sharing: one table for all workers (in `GatewayShared`), split into shards by client
//! address, each behind its own `Mutex`; a shard lock is taken only for a new connection to a
//! service with affinity, and by the leader's sweep, one shard at a time. Bounded: a full shard
//! first drops its expired entries; if none, the connection is balanced without being
//! remembered (`full` counts it).

use rustc_hash::FxHashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

const SHARDS: usize = 64;
/// Entries the gateway keeps by default, all services together.
pub const DEFAULT_AFFINITY_CAPACITY: usize = 262_144;

/// Which service front a client stuck to: its cluster IP, port and protocol, and whether it
/// came through a NodePort with a backend set of its own (ETP Local; ITP Local with ETP
/// Cluster): the cluster IP's choice may not be among them, nor theirs among its.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
    pub own_set: bool,
    pub client: Ipv4Addr,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    backend: SocketAddrV4,
    expires_ms: u64,
}

#[derive(Debug, Default)]
pub struct AffinityCounters {
    /// New connections sent to a remembered backend.
    pub hits: AtomicU64,
    /// New connections that were balanced and remembered.
    pub recorded: AtomicU64,
    /// Entries that expired (swept or replaced).
    pub expired: AtomicU64,
    /// New connections not remembered because the table was full.
    pub full: AtomicU64,
}

pub struct Affinity {
    shards: Box<[Mutex<FxHashMap<AffinityKey, Entry>>]>,
    per_shard: usize,
    sweep_cursor: AtomicUsize,
    pub counters: AffinityCounters,
}

impl Affinity {
    /// A table of at most `capacity` entries (rounded up to a multiple of the shard count).
    pub fn new(capacity: usize) -> Affinity {
        Affinity {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            sweep_cursor: AtomicUsize::new(0),
            counters: AffinityCounters::default(),
        }
    }

    fn shard(&self, client: Ipv4Addr) -> std::sync::MutexGuard<'_, FxHashMap<AffinityKey, Entry>> {
        let i = (u32::from(client).wrapping_mul(0x9e37_79b9) >> 26) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The backend for a new connection of `key.client`: the remembered one while it is live
    /// and `is_backend` still accepts it, else `balance()`'s, remembered for `timeout_ms` from
    /// now. Either way the entry's timeout restarts.
    pub fn pick(
        &self,
        key: AffinityKey,
        now_ms: u64,
        timeout_ms: u64,
        is_backend: impl Fn(SocketAddrV4) -> bool,
        balance: impl FnOnce() -> Option<SocketAddrV4>,
    ) -> Option<SocketAddrV4> {
        let mut shard = self.shard(key.client);
        let expires_ms = now_ms.saturating_add(timeout_ms);
        if let Some(e) = shard.get_mut(&key) {
            if e.expires_ms > now_ms && is_backend(e.backend) {
                e.expires_ms = expires_ms;
                self.counters.hits.fetch_add(1, Relaxed);
                return Some(e.backend);
            }
        }
        let backend = balance()?;
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            let before = shard.len();
            shard.retain(|_, e| e.expires_ms > now_ms);
            self.counters
                .expired
                .fetch_add((before - shard.len()) as u64, Relaxed);
            if shard.len() >= self.per_shard {
                self.counters.full.fetch_add(1, Relaxed);
                return Some(backend);
            }
        }
        shard.insert(
            key,
            Entry {
                backend,
                expires_ms,
            },
        );
        self.counters.recorded.fetch_add(1, Relaxed);
        Some(backend)
    }

    /// Drops the expired entries of the next `shards` shards (the leader calls this from
    /// housekeeping: a full pass every few seconds, never a long stall).
    pub fn expire_some(&self, now_ms: u64, shards: usize) -> usize {
        let start = self.sweep_cursor.fetch_add(shards, Relaxed);
        let mut removed = 0;
        for i in (start..start + shards.min(SHARDS)).map(|i| i % SHARDS) {
            let mut shard = self.shards[i].lock().unwrap_or_else(|e| e.into_inner());
            let before = shard.len();
            shard.retain(|_, e| e.expires_ms > now_ms);
            removed += before - shard.len();
        }
        self.counters.expired.fetch_add(removed as u64, Relaxed);
        removed
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(client: u32) -> AffinityKey {
        AffinityKey {
            vip: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            proto: 6,
            own_set: false,
            client: Ipv4Addr::from(0xc612_0000 + client),
        }
    }

    fn b(i: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, i), 8080)
    }

    #[test]
    fn a_client_sticks_until_the_timeout_passes_without_a_new_connection() {
        let t = Affinity::new(1024);
        let any = |_| true;
        assert_eq!(t.pick(key(1), 0, 10_000, any, || Some(b(1))), Some(b(1)));
        // Another balance result is ignored while the entry lives, and each hit refreshes it.
        for now in [5_000, 14_000, 23_000] {
            assert_eq!(t.pick(key(1), now, 10_000, any, || Some(b(2))), Some(b(1)));
        }
        // 10 s after the last new connection it is gone.
        assert_eq!(
            t.pick(key(1), 33_000, 10_000, any, || Some(b(2))),
            Some(b(2))
        );
        assert_eq!(t.counters.hits.load(Relaxed), 3);
        // Clients and service fronts are separate.
        assert_eq!(
            t.pick(key(2), 33_000, 10_000, any, || Some(b(3))),
            Some(b(3))
        );
        let local = AffinityKey {
            own_set: true,
            ..key(1)
        };
        assert_eq!(
            t.pick(local, 33_000, 10_000, any, || Some(b(4))),
            Some(b(4))
        );
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn a_backend_that_left_the_service_is_not_used() {
        let t = Affinity::new(1024);
        t.pick(key(1), 0, 10_000, |_| true, || Some(b(1)));
        let got = t.pick(key(1), 1, 10_000, |x| x != b(1), || Some(b(2)));
        assert_eq!(got, Some(b(2)));
        assert_eq!(t.pick(key(1), 2, 10_000, |_| true, || None), Some(b(2)));
        // No backend at all: nothing remembered.
        assert_eq!(t.pick(key(9), 2, 10_000, |_| true, || None), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn aging_sweeps_expired_entries() {
        let t = Affinity::new(4096);
        for c in 0..1000 {
            t.pick(key(c), c as u64, 1_000, |_| true, || Some(b(1)));
        }
        assert_eq!(t.len(), 1000);
        assert_eq!(t.expire_some(1_499, SHARDS), 500);
        let mut removed = 0;
        for _ in 0..8 {
            removed += t.expire_some(10_000, 8);
        }
        assert_eq!(removed, 500);
        assert!(t.is_empty());
    }

    #[test]
    fn the_table_is_bounded() {
        let t = Affinity::new(SHARDS * 4);
        assert_eq!(t.capacity(), SHARDS * 4);
        for c in 0..10_000 {
            assert_eq!(
                t.pick(key(c), 0, 1_000, |_| true, || Some(b(1))),
                Some(b(1))
            );
        }
        assert!(t.len() <= t.capacity());
        assert!(t.counters.full.load(Relaxed) >= 10_000 - t.capacity() as u64);
        // Once the entries expire, a full shard makes room for new clients.
        for c in 10_000..20_000 {
            t.pick(key(c), 5_000, 1_000, |_| true, || Some(b(2)));
        }
        assert!(t.len() <= t.capacity());
        assert!(t.counters.expired.load(Relaxed) > 0);
        let stuck = (10_000..20_000)
            .filter(|&c| t.pick(key(c), 5_001, 1_000, |_| true, || Some(b(3))) == Some(b(2)))
            .count();
        assert!(stuck > 0 && stuck <= t.capacity());
    }
}
