//! What the gateway offers the XDP fast path: a decision it made for a frame of an established
//! conntrack flow, complete enough to be repeated for the flow's next frames by a program that
//! knows nothing else (new MACs, translated addresses and ports, TTL), and the checks that say
//! whether such a decision still holds after tables changed.
//!
//! Only flows whose state the fast path cannot change qualify: TCP established (SYN, FIN and
//! RST always come to the switch), UDP from its second packet on (its one state change, the
//! first reply, always comes through the switch: a reply direction is offered only from a
//! reply the switch forwarded). Routed frames (to our MAC, not through the overlay) and frames
//! bridged on the pod segment (a backend's direct reply, un-DNATed; and plain pod-to-pod
//! traffic conntrack does not track, see `UntrackedOffers`) are offered; fragments, IP
//! options, ICMP and anything encapsulated are not.

use super::Gateway;
use crate::batch::PortId;
use crate::conntrack::{FlowState, TcpState, Tuple};
use crate::l2::L2Counter;
use crate::l3::Segment;
use crate::wire::ipv4::{Ipv4Packet, PROTO_TCP, PROTO_UDP};
use crate::wire::l4::{TCP_FIN, TCP_RST};
use crate::wire::MacAddr;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};

/// One decision the fast path may repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowOffer {
    pub ingress: PortId,
    pub egress: PortId,
    /// The frame as it came.
    pub dst_mac: MacAddr,
    pub src_mac: MacAddr,
    pub tuple: Tuple,
    /// The frame as it left: MACs, and (src, sport, dst, dport) after NAT.
    pub new_dst_mac: MacAddr,
    pub new_src_mac: MacAddr,
    pub to: (Ipv4Addr, u16, Ipv4Addr, u16),
    /// Routed to this next hop (TTL decremented); `None`: bridged on the pod segment.
    pub next_hop: Option<Ipv4Addr>,
    /// The egress port's MTU as the gateway checks it (0: unknown, not checked).
    pub mtu: u32,
}

/// A frame being decided whose flow qualifies, until it is known where it goes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    pub dst_mac: MacAddr,
    pub src_mac: MacAddr,
    pub tuple: Tuple,
    /// Bridged pod-to-pod traffic conntrack does not track.
    pub untracked: bool,
}

impl Pending {
    pub fn of(frame: &[u8], tuple: Tuple) -> Pending {
        Pending {
            dst_mac: MacAddr::from_bytes(&frame[..6]),
            src_mac: MacAddr::from_bytes(&frame[6..12]),
            tuple,
            untracked: false,
        }
    }

    pub fn untracked(frame: &[u8], tuple: Tuple) -> Pending {
        Pending {
            untracked: true,
            ..Pending::of(frame, tuple)
        }
    }

    /// The offer, once the frame (rewritten, with its new MACs) goes out of `egress`, whose
    /// MTU `port_mtu` holds.
    pub fn offer(
        self,
        frame: &[u8],
        ingress: PortId,
        egress: PortId,
        to: (Ipv4Addr, u16, Ipv4Addr, u16),
        next_hop: Option<Ipv4Addr>,
        port_mtu: &[u32],
    ) -> FlowOffer {
        FlowOffer {
            ingress,
            egress,
            dst_mac: self.dst_mac,
            src_mac: self.src_mac,
            tuple: self.tuple,
            new_dst_mac: MacAddr::from_bytes(&frame[..6]),
            new_src_mac: MacAddr::from_bytes(&frame[6..12]),
            to,
            next_hop,
            mtu: port_mtu.get(egress as usize).copied().unwrap_or(0),
        }
    }
}

/// Most untracked tuples remembered; past it the set starts over (and every untracked entry
/// is re-checked, failing until offered again).
const UNTRACKED_CAPACITY: usize = 65_536;

/// The tuples of untracked bridged traffic offered to the fast path. Pod-to-pod frames on the
/// segment are not tracked, but once a routed connection's flow has the same tuple (a backend's
/// direct reply to its client), the switch translates them: an entry that forwards them as
/// they are must go before that. A new flow checks its tuples here; a hit moves the generation
/// the workers watch. An untracked entry holds only while its tuple is here.
#[derive(Debug, Default)]
pub(super) struct UntrackedOffers {
    tuples: std::sync::Mutex<rustc_hash::FxHashSet<Tuple>>,
}

impl UntrackedOffers {
    fn lock(&self) -> std::sync::MutexGuard<'_, rustc_hash::FxHashSet<Tuple>> {
        self.tuples.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(&self, t: Tuple, generation: &AtomicU64) {
        let mut tuples = self.lock();
        if tuples.len() >= UNTRACKED_CAPACITY && !tuples.contains(&t) {
            tuples.clear();
            generation.fetch_add(1, Ordering::Relaxed);
        }
        tuples.insert(t);
    }

    pub fn taken_over(&self, tuples: &[Tuple], generation: &AtomicU64) {
        let mut known = self.lock();
        if known.is_empty() {
            return;
        }
        for t in tuples {
            if known.remove(t) {
                generation.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn contains(&self, t: &Tuple) -> bool {
        self.lock().contains(t)
    }
}

/// Counts a tracked TCP packet that starts or ends a connection's close: the workers re-check
/// their entries.
pub(super) fn note_closing(shared: &super::GatewayShared, proto: u8, tcp_flags: u8) {
    if proto == PROTO_TCP && tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        shared.closings.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether the fast path's program parses the packet at all (`understood` in
/// `pmd/bpf/common.h`): IPv4 without options, not a fragment, TCP or UDP.
pub(super) fn parsed_by_fast_path(ip: &Ipv4Packet<&[u8]>) -> bool {
    !ip.is_fragment() && ip.header_len() == 20 && matches!(ip.protocol(), PROTO_TCP | PROTO_UDP)
}

/// A tuple as (src, sport, dst, dport): untranslated.
fn identity(t: &Tuple) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    (t.src, t.sport, t.dst, t.dport)
}

/// Whether a flow in this state may be left to the fast path: nothing its packets carry there
/// can change the state (SYN, FIN and RST go to the switch; see the module's note on UDP).
pub fn offloadable(state: &FlowState) -> bool {
    matches!(
        state,
        FlowState::Tcp(TcpState::Established) | FlowState::Udp { .. }
    )
}

impl Gateway {
    /// Starts collecting offers (the worker has a fast path to give them to).
    pub fn enable_offers(&mut self) {
        self.offers = Some(Vec::new());
    }

    /// The offers made since the last call.
    pub fn offers_mut(&mut self) -> Option<&mut Vec<FlowOffer>> {
        self.offers.as_mut()
    }

    /// Moves whenever something an offer depends on may have changed: a reload or pod change,
    /// a neighbour that moved or went, a tracked flow that went (expired, removed, evicted) or
    /// began to close (FIN, RST), an address of this worker's bridge that moved or aged.
    pub fn offer_generation(&self) -> u64 {
        let c = &self.shared.conntrack.counters;
        let fdb = self.bridge.counters();
        self.shared.epoch.load(Ordering::Acquire)
            + self.shared.neighbors.generation()
            + self.shared.closings.load(Ordering::Relaxed)
            + c.expired.load(Ordering::Relaxed)
            + c.removed.load(Ordering::Relaxed)
            + c.evicted.load(Ordering::Relaxed)
            + fdb.get(L2Counter::Moved)
            + fdb.get(L2Counter::Aged)
    }

    /// Moves on every reload (not when pods come and go): a reload takes every offer back.
    pub fn policy_epoch(&self) -> u64 {
        self.shared.reloads.load(Ordering::Acquire)
    }

    /// Whether the switch would still decide the offered frame the same way: the flow is
    /// tracked, qualifies and translates as offered, and its next hop (or, bridged, both
    /// addresses) and egress are where they were.
    pub fn offer_holds(&mut self, o: &FlowOffer, now_ms: u64) -> bool {
        if self.port_mtu.get(o.egress as usize) != Some(&o.mtu) {
            return false;
        }
        match self.shared.conntrack.find(&o.tuple) {
            // Untracked pod-to-pod traffic: forwarded as it is, while nothing took it over.
            None => {
                if o.next_hop.is_some()
                    || o.to != identity(&o.tuple)
                    || !self.shared.untracked.contains(&o.tuple)
                {
                    return false;
                }
            }
            Some(hit) => {
                if !offloadable(&hit.flow.state)
                    || hit.flow.expires_in_ms(now_ms) == 0
                    || super::forward::translation(&hit.flow.orig, &hit.flow.reply, hit.dir) != o.to
                {
                    return false;
                }
            }
        }
        match o.next_hop {
            Some(next_hop) => {
                let route = self.policy.routes.lookup(o.to.2);
                let neighbor = self
                    .neighbor_cache
                    .get(&self.shared.neighbors, next_hop, now_ms);
                matches!(route, Some((seg, hop)) if seg != Segment::Overlay && hop == next_hop)
                    && neighbor.is_some_and(|n| n.mac == o.new_dst_mac && n.port == o.egress)
                    && o.new_src_mac == self.policy.mac
            }
            None => {
                let fdb = self.bridge.fdb();
                fdb.lookup(o.src_mac, now_ms) == Some(o.ingress)
                    && fdb.lookup(o.dst_mac, now_ms) == Some(o.egress)
            }
        }
    }

    /// The fast path forwarded packets of the offer: its flow (and, bridged, its source
    /// address) stays alive as if the switch had seen them.
    pub fn offer_used(&mut self, o: &FlowOffer, now_ms: u64) {
        // Only the flow the offer was made for (the tuple may belong to a newer one by now).
        match self.shared.conntrack.find(&o.tuple) {
            None if o.to != identity(&o.tuple) => return,
            None => {}
            Some(hit) => {
                if super::forward::translation(&hit.flow.orig, &hit.flow.reply, hit.dir) != o.to {
                    return;
                }
                // A packet without flags: it refreshes the flow and leaves its state as it is.
                self.shared.conntrack.track(&o.tuple, 0, now_ms);
            }
        }
        // The source stays known on the segment (a routed frame from the uplink has no entry
        // there: nothing is refreshed).
        self.bridge.refresh(o.src_mac, o.ingress, now_ms);
    }
}
