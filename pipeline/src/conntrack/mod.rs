//! Connection tracking: flows keyed by 5-tuple in both directions, a TCP state machine, UDP and
//! ICMP, per-state timeouts with Linux's defaults, a capacity with eviction of the oldest
//! unestablished flows.
//!
//! Sharing: one `Conntrack` serves every worker. It is split into shards, each behind its own
//! `Mutex`. A flow lives in the shard of its original tuple; the shard of its reply tuple holds an
//! alias pointing back to it. Lock order: at most one shard lock is held at any time — every
//! operation that touches two shards takes and releases them one after the other.

mod fragments;
mod tcp;

pub use fragments::{FragmentKey, FragmentTable, FragmentTranslation, FRAGMENT_TIMEOUT_MS};

pub use tcp::TcpState;

use rustc_hash::{FxHashMap, FxHasher};
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

const SHARDS: usize = 64;
/// Linux's defaults (nf_conntrack_udp_timeout, _stream, nf_conntrack_icmp_timeout).
const UDP_UNREPLIED_MS: u64 = 30_000;
const UDP_REPLIED_MS: u64 = 120_000;
const ICMP_MS: u64 = 30_000;
/// nf_conntrack_generic_timeout: protocols conntrack knows no states for (GRE, SCTP, ESP, ...).
const GENERIC_MS: u64 = 600_000;

/// A packet's flow key. `zone` separates address spaces that may overlap (Linux's conntrack
/// zones): 0 is the node's own, which its pods, the uplink and the one VXLAN overlay share; a
/// second overlay with overlapping pod CIDRs would get a zone of its own.
/// The node's own address space (see `Tuple::zone`).
pub const NODE_ZONE: u16 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub zone: u16,
}

impl Tuple {
    pub fn reverse(&self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            zone: self.zone,
        }
    }

    fn shard(&self) -> usize {
        let mut h = FxHasher::default();
        self.hash(&mut h);
        // The shard's hash maps index by the low bits of the same hash: pick the shard from a
        // remix's top bits, or every key in a shard would share some bucket-index bits.
        (h.finish().wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % SHARDS
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Original,
    Reply,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowState {
    Tcp(TcpState),
    Udp {
        replied: bool,
    },
    Icmp,
    /// Any other IP protocol, tracked by addresses (and ports where it has them).
    Generic,
}

impl FlowState {
    pub fn initial(proto: u8, tcp_flags: u8) -> FlowState {
        match proto {
            crate::wire::ipv4::PROTO_TCP => FlowState::Tcp(TcpState::initial(tcp_flags)),
            crate::wire::ipv4::PROTO_UDP => FlowState::Udp { replied: false },
            crate::wire::ipv4::PROTO_ICMP => FlowState::Icmp,
            _ => FlowState::Generic,
        }
    }

    fn timeout_ms(&self) -> u64 {
        match self {
            FlowState::Tcp(s) => s.timeout_ms(),
            FlowState::Udp { replied: false } => UDP_UNREPLIED_MS,
            FlowState::Udp { replied: true } => UDP_REPLIED_MS,
            FlowState::Icmp => ICMP_MS,
            FlowState::Generic => GENERIC_MS,
        }
    }

    pub fn established(&self) -> bool {
        match self {
            FlowState::Tcp(s) => s.established(),
            FlowState::Udp { replied } => *replied,
            FlowState::Icmp | FlowState::Generic => false,
        }
    }
}

/// A tracked connection: what it looked like when it started (`orig`) and what its replies look
/// like after NAT (`reply`). The translation of either direction follows from the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub orig: Tuple,
    pub reply: Tuple,
    pub state: FlowState,
    pub last_ms: u64,
}

impl Flow {
    fn expired(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_ms) >= self.state.timeout_ms()
    }

    /// Milliseconds until the flow times out without more packets.
    pub fn expires_in_ms(&self, now_ms: u64) -> u64 {
        (self.last_ms + self.state.timeout_ms()).saturating_sub(now_ms)
    }
}

/// A packet's match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub dir: Direction,
    pub flow: Flow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// Another flow already owns the reply tuple (pick another NAT port).
    ReplyTaken,
    /// The flow itself is already tracked (another worker inserted it first): look it up.
    OrigTaken,
    /// Full, and nothing unestablished to evict.
    Full,
}

enum Slot {
    Flow(Flow),
    Alias(Tuple),
}

#[derive(Default)]
struct Shard {
    map: FxHashMap<Tuple, Slot>,
    flows: usize,
    /// Original tuples of flows that were unestablished when created, oldest first (entries
    /// may since have gone or become established; checked when popped).
    young: VecDeque<Tuple>,
}

impl Shard {
    fn remove_flow(&mut self, orig: &Tuple) -> Option<Flow> {
        match self.map.remove(orig) {
            Some(Slot::Flow(f)) => {
                self.flows -= 1;
                Some(f)
            }
            Some(alias) => {
                self.map.insert(*orig, alias);
                None
            }
            None => None,
        }
    }

    fn remove_alias(&mut self, reply: &Tuple, orig: &Tuple) {
        if matches!(self.map.get(reply), Some(Slot::Alias(o)) if o == orig) {
            self.map.remove(reply);
        }
    }

    /// Evicts the oldest flow that is still unestablished.
    fn evict_one(&mut self) -> Option<Flow> {
        while let Some(t) = self.young.pop_front() {
            if let Some(Slot::Flow(f)) = self.map.get(&t) {
                if !f.state.established() {
                    return self.remove_flow(&t);
                }
            }
        }
        None
    }
}

/// Counters of the whole table.
#[derive(Debug, Default)]
pub struct ConntrackCounters {
    pub created: AtomicU64,
    pub evicted: AtomicU64,
    pub refused_full: AtomicU64,
    pub expired: AtomicU64,
    pub removed: AtomicU64,
}

pub struct Conntrack {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    sweep_cursor: AtomicUsize,
    pub counters: ConntrackCounters,
}

impl Conntrack {
    pub fn new(capacity: usize) -> Conntrack {
        Conntrack {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            sweep_cursor: AtomicUsize::new(0),
            counters: ConntrackCounters::default(),
        }
    }

    fn shard(&self, i: usize) -> std::sync::MutexGuard<'_, Shard> {
        // A worker that panicked while holding a shard left it consistent enough to go on.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.shard(i).flows).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Finds the flow of a packet with tuple `t`, advances its state and refreshes it.
    pub fn track(&self, t: &Tuple, tcp_flags: u8, now_ms: u64) -> Option<Hit> {
        let s = t.shard();
        let orig = {
            let mut shard = self.shard(s);
            match shard.map.get_mut(t) {
                Some(Slot::Flow(f)) => {
                    if f.expired(now_ms) {
                        let f = *f;
                        shard.remove_flow(t);
                        drop(shard);
                        self.counters.expired.fetch_add(1, Relaxed);
                        self.shard(f.reply.shard()).remove_alias(&f.reply, &f.orig);
                        return None;
                    }
                    f.state = advance(f.state, Direction::Original, tcp_flags);
                    f.last_ms = now_ms;
                    return Some(Hit {
                        dir: Direction::Original,
                        flow: *f,
                    });
                }
                Some(Slot::Alias(o)) => *o,
                None => return None,
            }
        };
        let mut shard = self.shard(orig.shard());
        let Some(Slot::Flow(f)) = shard.map.get_mut(&orig) else {
            return None;
        };
        if f.reply != *t {
            return None;
        }
        if f.expired(now_ms) {
            shard.remove_flow(&orig);
            drop(shard);
            self.counters.expired.fetch_add(1, Relaxed);
            self.shard(s).remove_alias(t, &orig);
            return None;
        }
        f.state = advance(f.state, Direction::Reply, tcp_flags);
        f.last_ms = now_ms;
        Some(Hit {
            dir: Direction::Reply,
            flow: *f,
        })
    }

    /// Finds a flow without advancing it (for ICMP errors about it).
    pub fn find(&self, t: &Tuple) -> Option<Hit> {
        let orig = match self.shard(t.shard()).map.get(t) {
            Some(Slot::Flow(f)) => {
                return Some(Hit {
                    dir: Direction::Original,
                    flow: *f,
                })
            }
            Some(Slot::Alias(o)) => *o,
            None => return None,
        };
        match self.shard(orig.shard()).map.get(&orig) {
            Some(Slot::Flow(f)) if f.reply == *t => Some(Hit {
                dir: Direction::Reply,
                flow: *f,
            }),
            _ => None,
        }
    }

    /// Whether a reply tuple is free (for choosing a NAT port).
    pub fn reply_free(&self, reply: &Tuple) -> bool {
        !self.shard(reply.shard()).map.contains_key(reply)
    }

    /// Adds a flow. Reserves the reply tuple first, so two workers cannot pick the same NAT port.
    pub fn insert(
        &self,
        orig: Tuple,
        reply: Tuple,
        state: FlowState,
        now_ms: u64,
    ) -> Result<Flow, InsertError> {
        {
            let mut shard = self.shard(reply.shard());
            if shard.map.contains_key(&reply) {
                return Err(InsertError::ReplyTaken);
            }
            shard.map.insert(reply, Slot::Alias(orig));
        }
        let flow = Flow {
            orig,
            reply,
            state,
            last_ms: now_ms,
        };
        let mut evicted = None;
        let result = {
            let mut shard = self.shard(orig.shard());
            if shard.map.contains_key(&orig) {
                Err(InsertError::OrigTaken)
            } else {
                if shard.flows >= self.per_shard {
                    evicted = shard.evict_one();
                }
                if shard.flows >= self.per_shard {
                    Err(InsertError::Full)
                } else {
                    shard.map.insert(orig, Slot::Flow(flow));
                    shard.flows += 1;
                    if !state.established() {
                        shard.young.push_back(orig);
                    }
                    Ok(flow)
                }
            }
        };
        if let Some(f) = evicted {
            self.counters.evicted.fetch_add(1, Relaxed);
            self.shard(f.reply.shard()).remove_alias(&f.reply, &f.orig);
        }
        match result {
            Ok(f) => {
                self.counters.created.fetch_add(1, Relaxed);
                Ok(f)
            }
            Err(e) => {
                if e == InsertError::Full {
                    self.counters.refused_full.fetch_add(1, Relaxed);
                }
                self.shard(reply.shard()).remove_alias(&reply, &orig);
                Err(e)
            }
        }
    }

    /// Up to `limit` flows, copied one shard (one lock) at a time, for the operator.
    pub fn snapshot(&self, limit: usize) -> Vec<Flow> {
        let mut out = Vec::new();
        for i in 0..SHARDS {
            if out.len() >= limit {
                break;
            }
            let shard = self.shard(i);
            let room = limit - out.len();
            out.extend(
                shard
                    .map
                    .values()
                    .filter_map(|s| match s {
                        Slot::Flow(f) => Some(*f),
                        Slot::Alias(_) => None,
                    })
                    .take(room),
            );
        }
        out
    }

    /// Removes every flow `doomed` picks (a reload closing connections to removed backends).
    pub fn remove_where(&self, doomed: impl Fn(&Flow) -> bool) -> usize {
        self.sweep(0..SHARDS, |f| doomed(f), &self.counters.removed)
    }

    /// Removes expired flows from the next `shards` shards (a round-robin cursor), so that one
    /// call never walks a million-flow table at once. Lookups already treat expired flows as
    /// gone; this only frees their room.
    pub fn expire_some(&self, now_ms: u64, shards: usize) -> usize {
        let start = self.sweep_cursor.fetch_add(shards, Relaxed) % SHARDS;
        let range = (start..start + shards.min(SHARDS)).map(|i| i % SHARDS);
        self.sweep(range, |f| f.expired(now_ms), &self.counters.expired)
    }

    fn sweep(
        &self,
        shards: impl Iterator<Item = usize>,
        doomed: impl Fn(&Flow) -> bool,
        counter: &AtomicU64,
    ) -> usize {
        let mut removed = Vec::new();
        for i in shards {
            let mut shard = self.shard(i);
            let gone: Vec<Tuple> = shard
                .map
                .iter()
                .filter_map(|(t, s)| matches!(s, Slot::Flow(f) if doomed(f)).then_some(*t))
                .collect();
            for t in gone {
                removed.extend(shard.remove_flow(&t));
            }
            if shard.young.len() > 2 * shard.flows + 64 {
                let live: VecDeque<Tuple> = shard
                    .young
                    .iter()
                    .filter(|t| matches!(shard.map.get(t), Some(Slot::Flow(_))))
                    .copied()
                    .collect();
                shard.young = live;
            }
        }
        for f in &removed {
            self.shard(f.reply.shard()).remove_alias(&f.reply, &f.orig);
        }
        counter.fetch_add(removed.len() as u64, Relaxed);
        removed.len()
    }
}

fn advance(state: FlowState, dir: Direction, tcp_flags: u8) -> FlowState {
    match state {
        FlowState::Tcp(s) => FlowState::Tcp(s.next(dir, tcp_flags)),
        FlowState::Udp { replied } => FlowState::Udp {
            replied: replied || dir == Direction::Reply,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::{PROTO_TCP, PROTO_UDP};
    use crate::wire::l4::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

    fn tuple(sport: u16) -> Tuple {
        Tuple {
            src: Ipv4Addr::new(10, 244, 1, 2),
            dst: Ipv4Addr::new(10, 96, 0, 10),
            sport,
            dport: 80,
            proto: PROTO_TCP,
            zone: 0,
        }
    }

    fn dnat_reply(t: &Tuple) -> Tuple {
        Tuple {
            src: Ipv4Addr::new(10, 244, 1, 3),
            dst: t.src,
            sport: 8080,
            dport: t.sport,
            proto: t.proto,
            zone: t.zone,
        }
    }

    #[test]
    fn both_directions_find_the_flow_and_tcp_establishes() {
        let ct = Conntrack::new(1024);
        let t = tuple(40000);
        let r = dnat_reply(&t);
        ct.insert(t, r, FlowState::initial(PROTO_TCP, TCP_SYN), 0)
            .unwrap();
        let hit = ct.track(&r, TCP_SYN | TCP_ACK, 1).unwrap();
        assert_eq!(hit.dir, Direction::Reply);
        assert_eq!(hit.flow.state, FlowState::Tcp(TcpState::SynRecv));
        let hit = ct.track(&t, TCP_ACK, 2).unwrap();
        assert_eq!(hit.dir, Direction::Original);
        assert_eq!(hit.flow.state, FlowState::Tcp(TcpState::Established));
        ct.track(&t, TCP_FIN | TCP_ACK, 3).unwrap();
        ct.track(&r, TCP_FIN | TCP_ACK, 4).unwrap();
        let hit = ct.track(&t, TCP_ACK, 5).unwrap();
        assert_eq!(hit.flow.state, FlowState::Tcp(TcpState::TimeWait));
        // TIME_WAIT lasts 120 s.
        assert!(ct.track(&t, TCP_ACK, 5 + 119_000).is_some());
        assert!(ct.track(&t, TCP_ACK, 5 + 119_000 + 120_000).is_none());
        assert!(ct.is_empty());
        assert!(ct.reply_free(&r), "the alias went with the flow");
    }

    #[test]
    fn rst_closes_quickly_and_udp_waits_for_a_reply() {
        let ct = Conntrack::new(1024);
        let t = tuple(1);
        ct.insert(t, t.reverse(), FlowState::initial(PROTO_TCP, TCP_SYN), 0)
            .unwrap();
        ct.track(&t.reverse(), TCP_RST, 1).unwrap();
        assert!(ct.track(&t, TCP_ACK, 10_001).is_none(), "CLOSE lasts 10 s");

        let u = Tuple {
            proto: PROTO_UDP,
            ..tuple(2)
        };
        ct.insert(u, u.reverse(), FlowState::initial(PROTO_UDP, 0), 0)
            .unwrap();
        assert!(ct.track(&u, 0, 29_000).is_some());
        ct.track(&u.reverse(), 0, 29_500).unwrap();
        assert!(
            ct.track(&u, 0, 29_500 + 119_000).is_some(),
            "replied UDP lasts 120 s"
        );
    }

    #[test]
    fn the_same_addresses_in_two_zones_are_two_flows() {
        let ct = Conntrack::new(1024);
        let a = tuple(1);
        let b = Tuple { zone: 7, ..a };
        ct.insert(a, a.reverse(), FlowState::initial(PROTO_TCP, TCP_SYN), 0)
            .unwrap();
        assert!(ct.track(&b, TCP_SYN, 1).is_none());
        ct.insert(b, b.reverse(), FlowState::initial(PROTO_TCP, TCP_SYN), 1)
            .unwrap();
        assert_eq!(ct.len(), 2);
        assert_eq!(
            ct.track(&b.reverse(), TCP_SYN | TCP_ACK, 2)
                .unwrap()
                .flow
                .orig
                .zone,
            7
        );
    }

    #[test]
    fn reply_tuples_are_unique() {
        let ct = Conntrack::new(1024);
        let a = tuple(1);
        let b = tuple(2);
        let shared = dnat_reply(&a);
        ct.insert(a, shared, FlowState::initial(PROTO_TCP, TCP_SYN), 0)
            .unwrap();
        assert_eq!(
            ct.insert(b, shared, FlowState::initial(PROTO_TCP, TCP_SYN), 0),
            Err(InsertError::ReplyTaken)
        );
        assert_eq!(ct.len(), 1);
    }

    #[test]
    fn full_table_evicts_the_oldest_unestablished_first() {
        // Capacity per shard is 1 here: a second flow in a shard must evict.
        let ct = Conntrack::new(SHARDS);
        let mut established = None;
        let mut inserted = Vec::new();
        for port in 1..2000u16 {
            let t = tuple(port);
            if ct
                .insert(
                    t,
                    t.reverse(),
                    FlowState::initial(PROTO_TCP, TCP_SYN),
                    port as u64,
                )
                .is_ok()
            {
                inserted.push(t);
            }
            if established.is_none() {
                // Establish the very first flow: it must never be evicted.
                ct.track(&t.reverse(), TCP_SYN | TCP_ACK, 0);
                ct.track(&t, TCP_ACK, 0);
                established = Some(t);
            }
        }
        assert!(ct.len() <= SHARDS);
        assert!(ct.counters.evicted.load(Relaxed) > 0);
        let first = established.unwrap();
        assert!(
            ct.track(&first, TCP_ACK, 3000).is_some(),
            "established flows are not evicted"
        );
        // A shard holding only an established flow refuses new ones.
        assert!(ct.counters.refused_full.load(Relaxed) > 0);
    }

    /// Packets without a SYN that nobody answers (a flood of bare ACKs at a NodePort) must not
    /// fill the table for days: they are evictable until the other side replies.
    #[test]
    fn a_full_table_of_unanswered_pickups_makes_room_for_new_connections() {
        let ct = Conntrack::new(4 * SHARDS);
        let mut answered = None;
        for port in 1..2000u16 {
            let t = tuple(port);
            let picked_up = ct.insert(t, t.reverse(), FlowState::initial(PROTO_TCP, TCP_ACK), 0);
            if answered.is_none() && picked_up.is_ok() {
                ct.track(&t.reverse(), TCP_ACK, 0);
                answered = Some(t);
            }
        }
        assert_eq!(ct.counters.refused_full.load(Relaxed), 0);
        // A new connection still finds room: the unanswered pickups go first.
        let mut new = Vec::new();
        for port in 30_000..30_100u16 {
            let t = tuple(port);
            if ct
                .insert(t, t.reverse(), FlowState::initial(PROTO_TCP, TCP_SYN), 1)
                .is_ok()
            {
                new.push(t);
            }
        }
        assert_eq!(new.len(), 100);
        let hit = ct.track(&answered.unwrap(), TCP_ACK, 2);
        assert_eq!(
            hit.map(|h| h.flow.state),
            Some(FlowState::Tcp(TcpState::Established)),
            "an answered pickup is established and stays"
        );
        // Unanswered, it would have gone after 5 minutes, not 5 days.
        let t = tuple(60_000);
        ct.insert(t, t.reverse(), FlowState::initial(PROTO_TCP, TCP_ACK), 0)
            .unwrap();
        assert!(ct.track(&t, TCP_ACK, 299_000).is_some());
        assert!(ct.track(&t, TCP_ACK, 599_000 + 1).is_none());
    }

    #[test]
    fn expiry_in_slices_covers_every_shard() {
        let ct = Conntrack::new(4096);
        for port in 1..=500 {
            let t = Tuple {
                proto: PROTO_UDP,
                ..tuple(port)
            };
            ct.insert(t, t.reverse(), FlowState::initial(PROTO_UDP, 0), 0)
                .unwrap();
        }
        let mut removed = 0;
        for _ in 0..SHARDS / 8 {
            removed += ct.expire_some(30_000, 8);
        }
        assert_eq!(removed, 500);
        assert!(ct.is_empty());
        for port in 1..=500 {
            assert!(ct.reply_free(
                &Tuple {
                    proto: PROTO_UDP,
                    ..tuple(port)
                }
                .reverse()
            ));
        }
    }

    #[test]
    fn remove_where_closes_flows_to_a_backend() {
        let ct = Conntrack::new(1024);
        for port in 1..=10 {
            let t = tuple(port);
            ct.insert(t, dnat_reply(&t), FlowState::initial(PROTO_TCP, TCP_SYN), 0)
                .unwrap();
        }
        let gone = ct.remove_where(|f| f.reply.src == Ipv4Addr::new(10, 244, 1, 3));
        assert_eq!(gone, 10);
        assert!(ct.is_empty());
        assert!(ct.reply_free(&dnat_reply(&tuple(1))));
    }
}
