//! The bridge's front array (issue 10): most installed L2 flows live in a direct-mapped per-CPU
//! array whose lookup the JIT inlines, at a slot computed from the key in the program; only a
//! flow whose slot another flow holds goes to the hash map. Hashing the key in the kernel's
//! hash map was most of what the fast path cost over a bare XDP redirect (docs/PERFORMANCE.md).
//!
//! Each installed flow lives in exactly one place, which `Places` remembers: the program tries
//! the front slot, then the hash map; the workers read and remove where the flow is.

use crate::fastpath::{L2Flow, L2Key};
use std::collections::HashSet;

/// Slots in the front array (`FRONT_BITS` in bpf/fastpath.c).
pub const FRONT_BITS: u32 = 12;
pub const FRONT_SLOTS: u32 = 1 << FRONT_BITS;

/// A front slot as the program reads it (40 bytes): the key; the route, one 8-byte word the
/// kernel writes and the program reads whole, with the egress port and a tag of the key (the
/// workers write slots while the program reads them: a read with the key of one entry and the
/// route of another fails the tag and becomes a miss); what the program counted on that CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L2Slot {
    pub key: L2Key,
    pub route: u64,
    pub packets: u64,
    pub bytes: u64,
}

impl L2Slot {
    pub fn new(key: &L2Key, egress_port: u32) -> L2Slot {
        L2Slot {
            key: *key,
            route: egress_port as u64 | (front_tag(key) as u64) << 32,
            ..Default::default()
        }
    }

    pub fn egress_port(&self) -> u32 {
        self.route as u32
    }

    /// The per-CPU copies of one slot as the flow they hold, counters summed.
    pub fn merge(copies: &[L2Slot]) -> L2Flow {
        L2Flow {
            egress_port: copies[0].egress_port(),
            tag: (copies[0].route >> 32) as u32,
            packets: copies.iter().map(|s| s.packets).sum(),
            bytes: copies.iter().map(|s| s.bytes).sum(),
            ..Default::default()
        }
    }
}

fn key_bytes(key: &L2Key) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&key.ifindex.to_ne_bytes());
    bytes[4..10].copy_from_slice(&key.dst);
    bytes[10..].copy_from_slice(&key.src);
    bytes
}

fn key_words(key: &L2Key) -> (u64, u64) {
    let b = key_bytes(key);
    let d = |i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    (d(0), d(8))
}

/// The key's slot, as the program computes it from the key's bytes read as native words.
pub fn front_slot(key: &L2Key) -> u32 {
    let (d0, d1) = key_words(key);
    ((d0 ^ d1).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - FRONT_BITS)) as u32
}

/// The tag the program compares: never 0, so an empty slot never matches; not derived from
/// the slot hash, so keys sharing a slot do not share a tag.
pub fn front_tag(key: &L2Key) -> u32 {
    let (d0, d1) = key_words(key);
    ((d0.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)).wrapping_add(d1.wrapping_mul(0x1656_67b1_9e37_79f9))
        >> 32) as u32
        | 1
}

/// Where a flow lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Front(u32),
    Hashed,
}

/// Which flow holds each front slot, and which flows went to the hash map instead.
pub struct Places {
    occupant: Vec<Option<L2Key>>,
    hashed: HashSet<L2Key>,
}

impl Default for Places {
    fn default() -> Places {
        Places {
            occupant: vec![None; FRONT_SLOTS as usize],
            hashed: HashSet::new(),
        }
    }
}

impl Places {
    /// Where `key` is installed, if it is.
    pub fn of(&self, key: &L2Key) -> Option<Place> {
        let slot = front_slot(key);
        if self.occupant[slot as usize] == Some(*key) {
            Some(Place::Front(slot))
        } else if self.hashed.contains(key) {
            Some(Place::Hashed)
        } else {
            None
        }
    }

    /// Where a new flow with `key` goes: its front slot if free.
    pub fn for_new(&self, key: &L2Key) -> Place {
        let slot = front_slot(key);
        match self.occupant[slot as usize] {
            None => Place::Front(slot),
            Some(_) => Place::Hashed,
        }
    }

    pub fn taken(&mut self, key: &L2Key, place: Place) {
        match place {
            Place::Front(slot) => self.occupant[slot as usize] = Some(*key),
            Place::Hashed => {
                self.hashed.insert(*key);
            }
        }
    }

    pub fn freed(&mut self, key: &L2Key, place: Place) {
        match place {
            Place::Front(slot) => self.occupant[slot as usize] = None,
            Place::Hashed => {
                self.hashed.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> L2Key {
        L2Key {
            ifindex: 3 + i % 5,
            dst: [2, 0, 0, 0, (i >> 8) as u8, i as u8],
            src: [2, 0, 0, 1, (i >> 16) as u8, (i >> 4) as u8],
        }
    }

    #[test]
    fn the_slot_layout_is_the_programs() {
        assert_eq!(std::mem::size_of::<L2Slot>(), 40);
        assert_eq!(std::mem::offset_of!(L2Slot, route), 16);
        assert_eq!(L2Slot::new(&key(1), 7).egress_port(), 7);
    }

    #[test]
    fn slots_spread_and_tags_tell_keys_of_one_slot_apart() {
        let used: HashSet<u32> = (0..1000).map(|i| front_slot(&key(i))).collect();
        assert!(used.len() > 800, "1,000 keys in {} slots", used.len());
        assert!((0..1000).all(|i| front_slot(&key(i)) < FRONT_SLOTS));
        let mut by_slot: std::collections::HashMap<u32, Vec<u32>> = Default::default();
        for i in 0..20_000 {
            by_slot
                .entry(front_slot(&key(i)))
                .or_default()
                .push(front_tag(&key(i)));
        }
        for tags in by_slot.values() {
            let distinct: HashSet<_> = tags.iter().collect();
            assert_eq!(distinct.len(), tags.len(), "keys of one slot share a tag");
        }
        assert_eq!(front_tag(&L2Key::default()) & 1, 1, "never 0");
    }

    #[test]
    fn a_flow_whose_slot_is_taken_goes_to_the_hash_map() {
        let mut places = Places::default();
        let a = key(1);
        let b = (2..100_000)
            .map(key)
            .find(|k| front_slot(k) == front_slot(&a) && *k != a)
            .expect("a colliding key");
        assert_eq!(places.for_new(&a), Place::Front(front_slot(&a)));
        places.taken(&a, Place::Front(front_slot(&a)));
        assert_eq!(places.for_new(&b), Place::Hashed);
        places.taken(&b, Place::Hashed);
        assert_eq!(places.of(&a), Some(Place::Front(front_slot(&a))));
        assert_eq!(places.of(&b), Some(Place::Hashed));
        places.freed(&a, Place::Front(front_slot(&a)));
        assert_eq!(places.of(&a), None);
        assert_eq!(places.of(&b), Some(Place::Hashed), "b stays where it is");
    }
}
