//! What the gateway offers the XDP fast path: a decision it made for a frame of an established
//! conntrack flow, complete enough to be repeated for the flow's next frames by a program that
//! knows nothing else (new MACs, translated addresses and ports, TTL), and the checks that say
//! whether such a decision still holds after tables changed.
//!
//! Only flows whose state the fast path cannot change qualify: TCP established (SYN, FIN and
//! RST always come to the switch), UDP from its second packet on (its one state change, the
//! first reply, always comes through the switch: a reply direction is offered only from a
//! reply the switch forwarded). Routed frames (to our MAC; also into the overlay and out of it,
//! with the outer VXLAN headers as an `OverlayLeg`) and frames bridged on the pod segment (a
//! backend's direct reply, un-DNATed; and plain pod-to-pod traffic conntrack does not track,
//! see `UntrackedOffers`) are offered; fragments, IP options and ICMP are not.

use super::Gateway;
use crate::batch::PortId;
use crate::conntrack::{FlowState, TcpState, Tuple};
use crate::l3::Segment;
use crate::overlay::{encap, Overlay};
use crate::wire::ipv4::{Ipv4Packet, PROTO_TCP, PROTO_UDP};
use crate::wire::l4::{TCP_FIN, TCP_RST};
use crate::wire::vxlan::{OuterRepr, ENCAP_OVERHEAD};
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
    /// Routed to this next hop (TTL decremented; into the overlay: the peer's VTEP); `None`:
    /// bridged on the pod segment.
    pub next_hop: Option<Ipv4Addr>,
    /// The longest IPv4 packet (inner, for the overlay) the decision holds for: longer ones
    /// get fragmentation-needed or are dropped.
    pub max_len: u16,
    /// Into or out of the overlay.
    pub leg: Option<OverlayLeg>,
}

/// The VXLAN headers of an offer that crosses the overlay (`ENCAP_OVERHEAD` bytes: outer
/// Ethernet, IPv4, UDP, VXLAN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayLeg {
    /// To a peer: the outer headers as the switch writes them in front of an empty inner frame
    /// (the lengths, the IPv4 checksum and the UDP source port to be filled in per packet, as
    /// `encap::push_outer` does), and the flow's UDP source port.
    Encap {
        outer: [u8; ENCAP_OVERHEAD],
        src_port: u16,
    },
    /// From the peer whose VTEP is `peer`: the outer headers its VXLAN to us has (`decap_pattern`).
    Decap {
        peer: Ipv4Addr,
        outer: [u8; ENCAP_OVERHEAD],
    },
}

/// The outer headers the switch writes to the peer whose VTEP is `vtep` for an empty inner
/// frame, outer MACs `macs` (next hop's, ours).
pub fn encap_template(
    overlay: &Overlay,
    vtep: Ipv4Addr,
    macs: (MacAddr, MacAddr),
) -> Option<[u8; ENCAP_OVERHEAD]> {
    let mut outer = overlay.peer(vtep)?.outer;
    outer[..6].copy_from_slice(&macs.0 .0);
    outer[6..12].copy_from_slice(&macs.1 .0);
    Some(outer)
}

/// Bytes of an `OverlayLeg::Encap` template filled in per packet: the outer IPv4 total length
/// and checksum, the UDP source port and length.
pub const ENCAP_FILLED: [usize; 8] = [16, 17, 24, 25, 34, 35, 38, 39];

/// Bytes of an `OverlayLeg::Decap` pattern the fast path compares: our MAC, IPv4, the peer's
/// and our address, our UDP port, our VNI.
pub const DECAP_COMPARED: [std::ops::Range<usize>; 5] = [0..6, 12..14, 26..34, 36..38, 46..49];

/// What the fast path compares of VXLAN from `peer` before it takes the inner frame
/// (`DECAP_COMPARED`); the rest is as we would send it and not compared.
pub fn decap_pattern(overlay: &Overlay, our_mac: MacAddr, peer: Ipv4Addr) -> [u8; ENCAP_OVERHEAD] {
    let mut outer = [0u8; ENCAP_OVERHEAD];
    OuterRepr {
        src_mac: our_mac,
        src_ip: peer,
        dst_ip: overlay.local,
        src_port: 0,
        dst_port: overlay.udp_port,
        vni: overlay.vni,
    }
    .emit(&mut outer, 0);
    outer[..6].copy_from_slice(&our_mac.0);
    outer
}

/// A frame being decided whose flow qualifies, until it is known where it goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pending {
    pub dst_mac: MacAddr,
    pub src_mac: MacAddr,
    pub tuple: Tuple,
    /// Bridged pod-to-pod traffic conntrack does not track.
    pub untracked: bool,
    /// The inner frame of VXLAN from this peer's VTEP.
    pub from_peer: Option<Ipv4Addr>,
}

impl Pending {
    pub fn of(frame: &[u8], tuple: Tuple) -> Pending {
        Pending {
            dst_mac: MacAddr::from_bytes(&frame[..6]),
            src_mac: MacAddr::from_bytes(&frame[6..12]),
            tuple,
            untracked: false,
            from_peer: None,
        }
    }

    pub fn untracked(frame: &[u8], tuple: Tuple) -> Pending {
        Pending {
            untracked: true,
            ..Pending::of(frame, tuple)
        }
    }

    /// The offer, once the frame (rewritten; `inner`: its inner frame with its new MACs) goes
    /// out of `egress`.
    #[allow(clippy::too_many_arguments)]
    pub fn offer(
        self,
        inner: &[u8],
        ingress: PortId,
        egress: PortId,
        to: (Ipv4Addr, u16, Ipv4Addr, u16),
        next_hop: Option<Ipv4Addr>,
        max_len: u16,
        leg: Option<OverlayLeg>,
    ) -> FlowOffer {
        FlowOffer {
            ingress,
            egress,
            dst_mac: self.dst_mac,
            src_mac: self.src_mac,
            tuple: self.tuple,
            new_dst_mac: MacAddr::from_bytes(&inner[..6]),
            new_src_mac: MacAddr::from_bytes(&inner[6..12]),
            to,
            next_hop,
            max_len,
            leg,
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

/// The longest IPv4 packet the gateway sends out of `egress` (its MTU in `port_mtu`; 0:
/// unknown, not checked).
pub(super) fn max_len_out(port_mtu: &[u32], egress: PortId) -> u16 {
    match port_mtu.get(egress as usize) {
        Some(&mtu) if mtu != 0 => mtu.min(u16::MAX as u32) as u16,
        _ => u16::MAX,
    }
}

/// The overlay leg of an offer for the inner frame of VXLAN from `peer` (`None`: not from the
/// overlay).
pub(super) fn decap_leg(
    policy: &super::Policy,
    peer: Option<Ipv4Addr>,
) -> Option<Option<OverlayLeg>> {
    let Some(peer) = peer else {
        return Some(None);
    };
    let overlay = policy.overlay.as_ref()?;
    Some(Some(OverlayLeg::Decap {
        peer,
        outer: decap_pattern(overlay, policy.mac, peer),
    }))
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
    /// began to close (FIN, RST), an address of this worker's bridge that moved or went (also
    /// by another worker's announcement).
    pub fn offer_generation(&self) -> u64 {
        let c = &self.shared.conntrack.counters;
        self.shared.epoch.load(Ordering::Acquire)
            + self.shared.neighbors.generation()
            + self.shared.closings.load(Ordering::Relaxed)
            + c.expired.load(Ordering::Relaxed)
            + c.removed.load(Ordering::Relaxed)
            + c.evicted.load(Ordering::Relaxed)
            + self.bridge.fdb_changes()
    }

    /// Moves on every reload (not when pods come and go): a reload takes every offer back.
    pub fn policy_epoch(&self) -> u64 {
        self.shared.reloads.load(Ordering::Acquire)
    }

    /// Offers a flow into the overlay, once its frame (`frame`: outer headers in front of the
    /// routed inner frame) goes out of `egress` to the peer's VTEP `vtep`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn offer_encapsulated(
        &mut self,
        frame: &[u8],
        p: Pending,
        ingress: PortId,
        egress: PortId,
        to: (Ipv4Addr, u16, Ipv4Addr, u16),
        vtep: Ipv4Addr,
        src_port: u16,
    ) {
        // Out of the overlay and back into it: not a decision the fast path could repeat (it
        // looks up what comes from a peer by the inner frame).
        if p.from_peer.is_some() {
            return;
        }
        let (Some(overlay), Some(inner)) = (
            self.policy.overlay.as_ref(),
            frame.get(ENCAP_OVERHEAD..ENCAP_OVERHEAD + 12),
        ) else {
            return;
        };
        let macs = (
            MacAddr::from_bytes(&frame[..6]),
            MacAddr::from_bytes(&frame[6..12]),
        );
        let Some(outer) = encap_template(overlay, vtep, macs) else {
            return;
        };
        let max_len = self.max_len_to(egress, true);
        let leg = OverlayLeg::Encap { outer, src_port };
        let offer = p.offer(inner, ingress, egress, to, Some(vtep), max_len, Some(leg));
        if let Some(offers) = self.offers.as_mut() {
            offers.push(offer);
        }
    }

    /// The longest IPv4 packet the gateway sends out of `egress` as it is (the port's MTU; 0:
    /// unknown, not checked), or into the overlay (what the uplink leaves of its MTU).
    pub(super) fn max_len_to(&self, egress: PortId, into_overlay: bool) -> u16 {
        if into_overlay {
            return encap::inner_mtu(self.policy.uplink_mtu);
        }
        max_len_out(&self.port_mtu, egress)
    }

    /// Whether the switch would still decide the offered frame the same way: the flow is
    /// tracked, qualifies and translates as offered, and its next hop (or, bridged, both
    /// addresses), its overlay headers and egress are where they were.
    pub fn offer_holds(&mut self, o: &FlowOffer, now_ms: u64) -> bool {
        let into_overlay = matches!(o.leg, Some(OverlayLeg::Encap { .. }));
        if self.max_len_to(o.egress, into_overlay) != o.max_len {
            return false;
        }
        match self.shared.conntrack.find(&o.tuple) {
            // Untracked pod-to-pod traffic: forwarded as it is, while nothing took it over.
            None => {
                if o.next_hop.is_some()
                    || o.leg.is_some()
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
        match (o.next_hop, o.leg) {
            (Some(vtep), Some(OverlayLeg::Encap { outer, .. })) => {
                self.encap_holds(o, vtep, &outer, now_ms)
            }
            (Some(next_hop), leg) => {
                if let Some(OverlayLeg::Decap { peer, outer }) = leg {
                    if !self.decap_holds(o, peer, &outer) {
                        return false;
                    }
                }
                let route = self.policy.routes.lookup(o.to.2);
                matches!(route, Some((seg, hop)) if seg != Segment::Overlay && hop == next_hop)
                    && self.neighbor_is(next_hop, o.new_dst_mac, o.egress, now_ms)
                    && o.new_src_mac == self.policy.mac
            }
            (None, Some(_)) => false,
            (None, None) => {
                let fdb = self.bridge.fdb();
                fdb.lookup(o.src_mac, now_ms) == Some(o.ingress)
                    && fdb.lookup(o.dst_mac, now_ms) == Some(o.egress)
            }
        }
    }

    fn neighbor_is(&mut self, ip: Ipv4Addr, mac: MacAddr, port: PortId, now_ms: u64) -> bool {
        self.neighbor_cache
            .get(&self.shared.neighbors, ip, now_ms)
            .is_some_and(|n| n.mac == mac && n.port == port)
    }

    /// Into the overlay: still routed to this peer's VTEP, with its VTEP MAC inside, and the
    /// outer headers the switch would write now (the VTEP's next hop on the uplink).
    fn encap_holds(
        &mut self,
        o: &FlowOffer,
        vtep: Ipv4Addr,
        outer: &[u8; ENCAP_OVERHEAD],
        now_ms: u64,
    ) -> bool {
        let policy = self.policy.clone();
        let Some(overlay) = policy.overlay.as_ref() else {
            return false;
        };
        let Some(peer) = overlay.peer(vtep) else {
            return false;
        };
        let Some((Segment::Uplink, hop)) = policy.routes.lookup(vtep) else {
            return false;
        };
        let hop_mac = MacAddr::from_bytes(&outer[..6]);
        policy.routes.lookup(o.to.2) == Some((Segment::Overlay, vtep))
            && o.new_dst_mac == peer.mac
            && o.new_src_mac == overlay.mac
            && encap_template(overlay, vtep, (hop_mac, policy.mac)).as_ref() == Some(outer)
            && self.neighbor_is(hop, hop_mac, o.egress, now_ms)
    }

    /// Out of the overlay: VXLAN from a peer we still have, to our VTEP as it is configured now,
    /// came on the uplink, its inner frame to our VTEP MAC and one of our pods.
    fn decap_holds(&self, o: &FlowOffer, peer: Ipv4Addr, outer: &[u8; ENCAP_OVERHEAD]) -> bool {
        let Some(overlay) = self.policy.overlay.as_ref() else {
            return false;
        };
        overlay.peer(peer).is_some()
            && *outer == decap_pattern(overlay, self.policy.mac, peer)
            && self.policy.uplink_port == Some(o.ingress)
            && o.dst_mac == overlay.mac
            && self.policy.pod_cidr.contains(o.tuple.dst)
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
