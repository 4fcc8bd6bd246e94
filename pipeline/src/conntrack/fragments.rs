//! Fragments of a datagram: only the first carries the transport header, so the translation the
//! first fragment got is remembered under (source, destination, protocol, IP id) and applied to
//! the rest — what the kernel gets by reassembling before NAT, without holding the fragments.
//!
//! Sharing: one table per switch behind one `Mutex`, taken only for fragmented packets; no
//! other lock is taken while it is held.

use rustc_hash::FxHashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

/// How long a datagram's fragments are translated after its first fragment (Linux:
/// `ipfrag_time`, 30 s).
pub const FRAGMENT_TIMEOUT_MS: u64 = 30_000;

/// The datagram a fragment belongs to, as it arrived (before translation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub id: u16,
}

/// The addresses the first fragment left with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentTranslation {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    to: FragmentTranslation,
    first_ms: u64,
}

pub struct FragmentTable {
    entries: Mutex<FxHashMap<FragmentKey, Entry>>,
    capacity: usize,
}

impl FragmentTable {
    pub fn new(capacity: usize) -> FragmentTable {
        FragmentTable {
            entries: Mutex::new(FxHashMap::default()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<FragmentKey, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers the first fragment's translation. Returns `false` when the table is full of
    /// live datagrams (their later fragments will then be dropped, as a full reassembly queue
    /// would).
    pub fn record(&self, key: FragmentKey, to: FragmentTranslation, now_ms: u64) -> bool {
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, e| now_ms.saturating_sub(e.first_ms) < FRAGMENT_TIMEOUT_MS);
            if entries.len() >= self.capacity {
                return false;
            }
        }
        entries.insert(
            key,
            Entry {
                to,
                first_ms: now_ms,
            },
        );
        true
    }

    /// The translation for a later fragment, if its first fragment was seen in time.
    pub fn lookup(&self, key: &FragmentKey, now_ms: u64) -> Option<FragmentTranslation> {
        let entries = self.lock();
        let e = entries.get(key)?;
        (now_ms.saturating_sub(e.first_ms) < FRAGMENT_TIMEOUT_MS).then_some(e.to)
    }

    /// Forgets datagrams whose time is up; returns how many.
    pub fn expire(&self, now_ms: u64) -> usize {
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|_, e| now_ms.saturating_sub(e.first_ms) < FRAGMENT_TIMEOUT_MS);
        before - entries.len()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u16) -> FragmentKey {
        FragmentKey {
            src: Ipv4Addr::new(10, 244, 1, 2),
            dst: Ipv4Addr::new(198, 19, 0, 10),
            proto: 17,
            id,
        }
    }

    const TO: FragmentTranslation = FragmentTranslation {
        src: Ipv4Addr::new(198, 18, 0, 1),
        dst: Ipv4Addr::new(198, 19, 0, 10),
    };

    #[test]
    fn later_fragments_find_the_first_ones_translation_until_it_times_out() {
        let t = FragmentTable::new(16);
        assert_eq!(t.lookup(&key(1), 0), None);
        assert!(t.record(key(1), TO, 100));
        assert_eq!(t.lookup(&key(1), 100 + FRAGMENT_TIMEOUT_MS - 1), Some(TO));
        assert_eq!(t.lookup(&key(1), 100 + FRAGMENT_TIMEOUT_MS), None);
        assert_eq!(t.lookup(&key(2), 100), None);
        assert_eq!(t.expire(100 + FRAGMENT_TIMEOUT_MS), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn a_full_table_refuses_until_entries_expire() {
        let t = FragmentTable::new(2);
        assert!(t.record(key(1), TO, 0));
        assert!(t.record(key(2), TO, 0));
        assert!(!t.record(key(3), TO, 10));
        assert!(t.record(key(1), TO, 10), "a known datagram is refreshed");
        assert!(t.record(key(3), TO, FRAGMENT_TIMEOUT_MS + 10));
        assert_eq!(t.len(), 1, "the expired ones made room");
    }
}
