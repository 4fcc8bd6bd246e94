//! IPv4 to our MAC: local ICMP, VXLAN to our VTEP (`overlay::decap`), conntrack (NAT decisions
//! are `nat`'s), fragments, routing (to the overlay: `overlay::encap`), TTL, neighbour
//! resolution.

use super::icmp_limit::IcmpErrorLimiter;
use super::offers::{
    decap_leg, max_len_out, note_closing, offloadable, parsed_by_fast_path, Pending,
};
use super::{
    arp, icmp, Emit, FlowOffer, Gateway, GatewayShared, GwCounter, GwCounters, Policy, Step,
};
use crate::batch::{Disposition, PortId};
use crate::conntrack::{
    Direction, FlowState, FragmentKey, FragmentTranslation, InsertError, Tuple, NODE_ZONE,
};
use crate::l3::{NeighborCache, Resolve, Segment};
use crate::nat::{self, AllocError, NatKind, Refusal};
use crate::overlay::decap::{self, DecapError};
use crate::overlay::encap;
use crate::wire::ipv4::{Ipv4Error, Ipv4Packet, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::wire::l4::{self, ICMP_DEST_UNREACHABLE, ICMP_ECHO_REQUEST, ICMP_TIME_EXCEEDED};
use crate::wire::vxlan;

/// Destination unreachable codes.
const ICMP_FRAGMENTATION_NEEDED: u8 = 4;
use crate::wire::{EthernetFrame, MacAddr, ETHERNET_HEADER_LEN};
use std::net::Ipv4Addr;

/// A packet's addresses and ports after translation: (src, sport, dst, dport).
type Translated = (Ipv4Addr, u16, Ipv4Addr, u16);

struct Ctx<'a> {
    shared: &'a GatewayShared,
    policy: &'a Policy,
    counters: &'a mut GwCounters,
    neighbors: &'a mut NeighborCache,
    icmp_limit: &'a mut IcmpErrorLimiter,
    port_mtu: &'a [u32],
    smallest_mtu: u32,
    emit: &'a mut Vec<Emit>,
    ingress: PortId,
    from_uplink: bool,
    /// The inner frame of VXLAN from a peer (second pass).
    from_overlay: bool,
    /// Then, the peer's VTEP.
    from_peer: Option<Ipv4Addr>,
    now_ms: u64,
    /// Where offers go (`None`: no fast path), and this frame's, until it is known where
    /// the frame goes.
    offers: Option<&'a mut Vec<FlowOffer>>,
    pending: Option<Pending>,
}

impl Ctx<'_> {
    fn count(&mut self, c: GwCounter) {
        self.counters.add(c, 1);
    }

    fn drop(&mut self, c: GwCounter) -> Disposition {
        self.count(c);
        Disposition::Drop
    }

    fn drop_step(&mut self, c: GwCounter) -> Step {
        Step::Out(self.drop(c))
    }

    /// Our address on the segment the frame came from (for the overlay, our pod-side address:
    /// the sender is another node's pod).
    fn ingress_ip(&self) -> Ipv4Addr {
        let seg = if self.from_uplink && !self.from_overlay {
            Segment::Uplink
        } else {
            Segment::Pods
        };
        self.policy.our_ip(seg).unwrap_or(self.policy.gateway_ip)
    }

    /// An ICMP error about `frame` back to its sender; `rest` is the header's second word
    /// (the next-hop MTU of fragmentation-needed).
    fn icmp_error(&mut self, frame: &[u8], kind: u8, code: u8, rest: u32) {
        let our_ip = self.ingress_ip();
        let Some(mut e) = icmp::error(frame, self.ingress, self.policy.mac, our_ip, kind, code)
        else {
            return;
        };
        icmp::set_rest_of_header(&mut e.frame, rest);
        let to = Ipv4Packet::new_quoted(&frame[ETHERNET_HEADER_LEN..])
            .map(|ip| ip.src())
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        // Path MTU discovery is not limited (as Linux): a pod opening many flows past a
        // smaller MTU would otherwise wait out retransmissions on most of them.
        let path_mtu = kind == ICMP_DEST_UNREACHABLE && code == ICMP_FRAGMENTATION_NEEDED;
        if !path_mtu && !self.icmp_limit.allow(to, self.now_ms) {
            self.count(GwCounter::IcmpErrorsRateLimited);
            return;
        }
        self.count(GwCounter::IcmpErrorsSent);
        if self.from_overlay {
            // The sender is a pod behind a peer's VTEP: the error goes back through the overlay.
            self.send_through_overlay(e.frame, to);
        } else {
            self.emit.push(e);
        }
    }

    /// Encapsulates a frame we made (an IPv4 packet to `to`, behind a peer) and sends it, or
    /// queues it for the outer next hop.
    fn send_through_overlay(&mut self, mut frame: Vec<u8>, to: Ipv4Addr) {
        let Some(overlay) = self.policy.overlay.as_ref() else {
            return;
        };
        let Some((Segment::Overlay, vtep)) = self.policy.routes.lookup(to) else {
            return;
        };
        let src_port = vxlan::source_port(u32::from(to) as u64);
        if encap::push_outer(&mut frame, overlay, vtep, src_port).is_err() {
            return;
        }
        self.count(GwCounter::VxlanEncapsulated);
        if let Disposition::Forward(port) = deliver_outer(self, &mut frame, vtep) {
            self.emit.push(Emit {
                to: crate::batch::PortMask::single(port),
                frame,
            });
        }
    }
}

pub(super) fn handle(
    gw: &mut Gateway,
    frame: &mut [u8],
    ingress: PortId,
    from_uplink: bool,
    from_peer: Option<Ipv4Addr>,
    now_ms: u64,
    emit: &mut Vec<Emit>,
) -> Step {
    with_ctx(gw, ingress, from_uplink, from_peer, now_ms, emit, |ctx| {
        route(ctx, frame)
    })
}

/// Sends an encapsulated frame (the outer headers in front) to the next hop of `vtep`.
pub(super) fn deliver_encapsulated(
    gw: &mut Gateway,
    frame: &mut [u8],
    vtep: Ipv4Addr,
    now_ms: u64,
    emit: &mut Vec<Emit>,
) -> Disposition {
    let uplink = gw.policy.uplink_port.unwrap_or(0);
    with_ctx(gw, uplink, true, None, now_ms, emit, |ctx| {
        deliver_outer(ctx, frame, vtep)
    })
}

fn with_ctx<R>(
    gw: &mut Gateway,
    ingress: PortId,
    from_uplink: bool,
    from_peer: Option<Ipv4Addr>,
    now_ms: u64,
    emit: &mut Vec<Emit>,
    f: impl FnOnce(&mut Ctx<'_>) -> R,
) -> R {
    let Gateway {
        shared,
        policy,
        counters,
        neighbor_cache,
        icmp_limit,
        port_mtu,
        smallest_mtu,
        offers,
        ..
    } = gw;
    let mut ctx = Ctx {
        shared,
        policy,
        counters,
        neighbors: neighbor_cache,
        icmp_limit,
        port_mtu,
        smallest_mtu: *smallest_mtu,
        emit,
        ingress,
        from_uplink,
        from_overlay: from_peer.is_some(),
        from_peer,
        now_ms,
        offers: offers.as_mut(),
        pending: None,
    };
    f(&mut ctx)
}

/// The outer headers' next hop: the VTEP itself on the uplink subnet, else its router.
fn deliver_outer(ctx: &mut Ctx<'_>, frame: &mut [u8], vtep: Ipv4Addr) -> Disposition {
    match ctx.policy.routes.lookup(vtep) {
        Some((Segment::Uplink, next_hop)) => deliver(ctx, frame, next_hop),
        _ => ctx.drop(GwCounter::DropNoRoute),
    }
}

fn decap_drop_reason(e: DecapError) -> GwCounter {
    match e {
        DecapError::Fragmented => GwCounter::DropVxlanFragmented,
        DecapError::Truncated => GwCounter::DropVxlanTruncated,
        DecapError::BadChecksum => GwCounter::DropVxlanBadChecksum,
        DecapError::NoVni => GwCounter::DropVxlanNoVni,
        DecapError::WrongVni => GwCounter::DropVxlanWrongVni,
        DecapError::UnknownPeer => GwCounter::DropVxlanUnknownPeer,
        DecapError::InnerNotForUs => GwCounter::DropVxlanInnerNotForUs,
    }
}

/// Whether a packet from the uplink is VXLAN to our VTEP (then `decap::check` judges it).
fn is_vxlan_to_us(policy: &Policy, ip: &Ipv4Packet<&[u8]>) -> bool {
    let Some(overlay) = policy.overlay.as_ref() else {
        return false;
    };
    ip.dst() == overlay.local
        && ip.protocol() == PROTO_UDP
        && !ip.is_later_fragment()
        && ip.payload().len() >= 4
        && u16::from_be_bytes([ip.payload()[2], ip.payload()[3]]) == overlay.udp_port
}

fn ipv4_drop_reason(e: Ipv4Error) -> GwCounter {
    match e {
        Ipv4Error::Truncated => GwCounter::DropIpv4Truncated,
        Ipv4Error::NotVersion4 => GwCounter::DropIpv4Version,
        Ipv4Error::BadHeaderLength => GwCounter::DropIpv4HeaderLength,
        Ipv4Error::BadTotalLength => GwCounter::DropIpv4TotalLength,
        Ipv4Error::BadChecksum => GwCounter::DropIpv4Checksum,
    }
}

fn fragment_key(ip: &Ipv4Packet<&[u8]>) -> FragmentKey {
    FragmentKey {
        src: ip.src(),
        dst: ip.dst(),
        proto: ip.protocol(),
        id: ip.ident(),
    }
}

fn route(ctx: &mut Ctx<'_>, frame: &mut [u8]) -> Step {
    let ip = match Ipv4Packet::new_checked(&frame[ETHERNET_HEADER_LEN..]) {
        Ok(ip) => ip,
        Err(e) => return ctx.drop_step(ipv4_drop_reason(e)),
    };
    let (src, dst, proto, ttl) = (ip.src(), ip.dst(), ip.protocol(), ip.ttl());
    if ctx.from_uplink && is_vxlan_to_us(ctx.policy, &ip) {
        // A peer whose inner segment was left to offload computed its outer UDP checksum as
        // for the finished segment (Linux's local checksum offload): finish the inner first.
        let inner_at =
            ETHERNET_HEADER_LEN + ip.header_len() + vxlan::UDP_HEADER_LEN + vxlan::VXLAN_HEADER_LEN;
        if frame.len() > inner_at && crate::offload::complete(&mut frame[inner_at..]) {
            ctx.count(GwCounter::ChecksumsCompleted);
        }
        let ip = Ipv4Packet::new_quoted(&frame[ETHERNET_HEADER_LEN..]).expect("checked above");
        let overlay = ctx.policy.overlay.as_ref().expect("checked");
        return match decap::check(overlay, &ip) {
            Ok(outer_len) => Step::Decap {
                outer_len,
                peer: ip.src(),
            },
            Err(e) => ctx.drop_step(decap_drop_reason(e)),
        };
    }
    if ctx.from_overlay && !ctx.policy.pod_cidr.contains(dst) {
        // Peers send us traffic for our pods only (their nodes route the rest themselves).
        return ctx.drop_step(GwCounter::DropVxlanInnerNotLocal);
    }
    // Not routable (Linux drops them on input as martians): the limited broadcast, multicast
    // (no multicast routing here), loopback, "this network". Else out of the default route.
    if dst.is_broadcast() || dst.is_multicast() || dst.is_loopback() || dst.octets()[0] == 0 {
        return ctx.drop_step(GwCounter::DropMartianDestination);
    }
    let local = dst == ctx.policy.gateway_ip || ctx.policy.is_uplink_ip(dst);
    if !ctx.from_uplink && !ctx.policy.pod_cidr.contains(src) {
        // A pod may only route from its own subnet: anything else would leave as it is.
        return ctx.drop_step(GwCounter::DropPodSourceOutsideSubnet);
    }
    // A routed packet that cannot go on: before conntrack, so it holds no flow or NAT port
    // (UDP traceroute through masquerade would take one per probe). `forward` checks it too,
    // for what is addressed to us and translated onwards (a NodePort).
    if ttl <= 1 && !local {
        ctx.icmp_error(frame, ICMP_TIME_EXCEEDED, 0, 0);
        return ctx.drop_step(GwCounter::DropTtlExceeded);
    }
    let fragment = ip.is_fragment().then(|| fragment_key(&ip));
    if let Some(key) = fragment.filter(|_| ip.is_later_fragment()) {
        return later_fragment(ctx, frame, &key, ttl);
    }
    let l4 = ip.payload();
    if proto == PROTO_ICMP && l4.len() >= 8 {
        match l4[0] {
            // We reassemble nothing: a fragmented echo cannot be answered (it goes on to be
            // refused as a local packet nobody handles).
            ICMP_ECHO_REQUEST if local && fragment.is_none() && !ctx.from_overlay => {
                icmp::echo_reply_in_place(frame, ctx.policy.mac);
                ctx.count(GwCounter::IcmpEchoReplied);
                return Disposition::Forward(ctx.ingress).into();
            }
            ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED => return related(ctx, frame, ttl),
            _ => {}
        }
    }
    let Some((sport, dport)) = l4::tracked_ports(proto, l4) else {
        return ctx.drop_step(GwCounter::DropL4Truncated);
    };
    let flags = if proto == PROTO_TCP {
        l4::tcp_flags(l4)
    } else {
        0
    };
    let tuple = Tuple {
        src,
        dst,
        sport,
        dport,
        proto,
        zone: NODE_ZONE,
    };
    let (translated, established) = match track_or_create(ctx, &tuple, flags, local) {
        Ok(t) => t,
        Err(d) => return d.into(),
    };
    if established && ctx.offers.is_some() && parsed_by_fast_path(&ip) {
        ctx.pending = Some(Pending {
            from_peer: ctx.from_peer,
            ..Pending::of(frame, tuple)
        });
    }
    if let Some(key) = fragment {
        let to = FragmentTranslation {
            src: translated.0,
            dst: translated.2,
        };
        if !ctx.shared.fragments.record(key, to, ctx.now_ms) {
            return ctx.drop_step(GwCounter::DropFragmentTableFull);
        }
    }
    forward(ctx, frame, translated, ttl)
}

/// The conntrack translation of a packet: its flow's, or a new flow's; and whether the flow
/// is one the fast path may take (`offloadable`).
fn track_or_create(
    ctx: &mut Ctx<'_>,
    tuple: &Tuple,
    flags: u8,
    local: bool,
) -> Result<(Translated, bool), Disposition> {
    // Twice at most: a new flow another worker inserted first is found on the second look.
    for _ in 0..2 {
        if let Some(hit) = ctx.shared.conntrack.track(tuple, flags, ctx.now_ms) {
            note_closing(ctx.shared, tuple.proto, flags);
            let to = translation(&hit.flow.orig, &hit.flow.reply, hit.dir);
            return Ok((to, offloadable(&hit.flow.state)));
        }
        match new_flow(ctx, tuple, flags, local) {
            Err(None) => continue,
            Err(Some(d)) => return Err(d),
            Ok(t) => return Ok((t, false)),
        }
    }
    Err(ctx.drop(GwCounter::DropConntrackFull))
}

/// What a packet of a flow becomes in direction `dir`.
pub(super) fn translation(orig: &Tuple, reply: &Tuple, dir: Direction) -> Translated {
    match dir {
        Direction::Original => (reply.dst, reply.dport, reply.src, reply.sport),
        Direction::Reply => (orig.dst, orig.dport, orig.src, orig.sport),
    }
}

/// A fragment after the first: it has no ports, so it follows the first fragment's
/// translation, or is dropped when that was not seen (as the kernel's reassembly would hold
/// it until it timed out).
fn later_fragment(ctx: &mut Ctx<'_>, frame: &mut [u8], key: &FragmentKey, ttl: u8) -> Step {
    let Some(to) = ctx.shared.fragments.lookup(key, ctx.now_ms) else {
        return ctx.drop_step(GwCounter::DropFragmentWithoutFirst);
    };
    ctx.count(GwCounter::FragmentsTranslated);
    forward(ctx, frame, (to.src, 0, to.dst, 0), ttl)
}

/// For IPv4 bridged between pods: if it belongs to a translated flow, translate it (no TTL
/// change, no routing: it stays on the segment). Returns what the fast path may be offered
/// when the frame is forwarded: the frame as it came and its translation.
pub(super) fn translate_bridged(
    gw: &mut Gateway,
    frame: &mut [u8],
    now_ms: u64,
) -> Option<(Pending, Translated)> {
    let Ok(ip) = Ipv4Packet::new_checked(&frame[ETHERNET_HEADER_LEN..]) else {
        return None;
    };
    let (src, dst, proto) = (ip.src(), ip.dst(), ip.protocol());
    let fragment = ip.is_fragment().then(|| fragment_key(&ip));
    if let Some(key) = fragment.filter(|_| ip.is_later_fragment()) {
        if let Some(to) = gw.shared.fragments.lookup(&key, now_ms) {
            if (to.src, to.dst) != (src, dst) {
                rewrite(frame, (to.src, 0, to.dst, 0));
                gw.counters.add(GwCounter::FragmentsTranslated, 1);
            }
        }
        return None;
    }
    if !matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_ICMP) {
        return None;
    }
    if proto == PROTO_ICMP
        && matches!(
            ip.payload().first(),
            Some(&(ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED))
        )
    {
        translate_bridged_error(gw, frame, dst);
        return None;
    }
    let offerable = parsed_by_fast_path(&ip);
    let (sport, dport) = l4::ports(proto, ip.payload())?;
    let flags = if proto == PROTO_TCP {
        l4::tcp_flags(ip.payload())
    } else {
        0
    };
    let t = Tuple {
        src,
        dst,
        sport,
        dport,
        proto,
        zone: NODE_ZONE,
    };
    let Some(hit) = gw.shared.conntrack.track(&t, flags, now_ms) else {
        // Plain pod-to-pod traffic: the fast path may carry it as it is (not ICMP, whose
        // echo identifiers are tracked by NAT).
        return (offerable && gw.offers.is_some())
            .then(|| (Pending::untracked(frame, t), (src, sport, dst, dport)));
    };
    note_closing(&gw.shared, proto, flags);
    let to = translation(&hit.flow.orig, &hit.flow.reply, hit.dir);
    let pending = (offerable && gw.offers.is_some() && offloadable(&hit.flow.state))
        .then(|| (Pending::of(frame, t), to));
    if let Some(key) = fragment {
        let translation = FragmentTranslation {
            src: to.0,
            dst: to.2,
        };
        gw.shared.fragments.record(key, translation, now_ms);
    }
    if to != (src, sport, dst, dport) {
        rewrite(frame, to);
        gw.counters.add(GwCounter::NatBridged, 1);
    }
    pending
}

/// An ICMP error bridged between pods about a packet of a translated flow: a backend's port
/// unreachable straight to its client on the segment, quoting the client's packet as DNAT
/// made it. Translated as routed errors are (the client's socket knows the service address,
/// not the backend's), when it still goes to the pod it is addressed to; else left as it is.
fn translate_bridged_error(gw: &mut Gateway, frame: &mut [u8], dst: Ipv4Addr) {
    let ip = &mut frame[ETHERNET_HEADER_LEN..];
    // Errors are few (their senders limit them): a copy to restore from costs nothing.
    let before = ip.to_vec();
    match nat::translate_icmp_error(&gw.shared.conntrack, ip) {
        Some(to) if to == dst => gw.counters.add(GwCounter::IcmpRelatedTranslated, 1),
        Some(_) => ip.copy_from_slice(&before),
        None => {}
    }
}

/// Rewrites addresses and ports to `(src, sport, dst, dport)`, keeping checksums valid. A
/// later fragment has no transport header: only its addresses change.
fn rewrite(frame: &mut [u8], (nsrc, nsport, ndst, ndport): Translated) {
    let mut ip =
        Ipv4Packet::new_quoted(&mut frame[ETHERNET_HEADER_LEN..]).expect("checked by the caller");
    let (src, dst, proto) = (ip.src(), ip.dst(), ip.protocol());
    let has_transport = !ip.is_later_fragment();
    let ports = if has_transport {
        l4::ports(proto, ip.payload())
    } else {
        None
    };
    if nsrc != src {
        ip.set_src(nsrc);
        if has_transport {
            l4::address_changed(proto, ip.payload_mut(), src.into(), nsrc.into());
        }
    }
    if ndst != dst {
        ip.set_dst(ndst);
        if has_transport {
            l4::address_changed(proto, ip.payload_mut(), dst.into(), ndst.into());
        }
    }
    if let Some((sport, dport)) = ports {
        if nsport != sport {
            l4::set_port(proto, ip.payload_mut(), true, nsport);
        }
        if ndport != dport {
            l4::set_port(proto, ip.payload_mut(), false, ndport);
        }
    }
}

/// Rewrites to the translated tuple, decrements the TTL and sends to the next hop (or, for a
/// peer's pod, has the frame encapsulated to the peer's VTEP).
fn forward(ctx: &mut Ctx<'_>, frame: &mut [u8], to: Translated, ttl: u8) -> Step {
    if ttl <= 1 {
        ctx.icmp_error(frame, ICMP_TIME_EXCEEDED, 0, 0);
        return ctx.drop_step(GwCounter::DropTtlExceeded);
    }
    let Some((segment, next_hop)) = ctx.policy.routes.lookup(to.2) else {
        ctx.icmp_error(frame, ICMP_DEST_UNREACHABLE, 0, 0);
        return ctx.drop_step(GwCounter::DropNoRoute);
    };
    if segment == Segment::Overlay {
        return to_overlay(ctx, frame, to, next_hop);
    }
    if let Some(mtu) = too_big_for_next_hop(ctx, frame, next_hop) {
        // As a router with a smaller next-hop MTU: we do not fragment.
        let ip = Ipv4Packet::new_quoted(&frame[ETHERNET_HEADER_LEN..]).expect("checked on entry");
        if ip.dont_fragment() {
            ctx.icmp_error(frame, ICMP_DEST_UNREACHABLE, ICMP_FRAGMENTATION_NEEDED, mtu);
        }
        return ctx.drop_step(GwCounter::DropTooBig);
    }
    rewrite(frame, to);
    Ipv4Packet::new_quoted(&mut frame[ETHERNET_HEADER_LEN..])
        .expect("checked on entry")
        .decrement_ttl();
    ctx.count(GwCounter::Routed);
    let disposition = deliver(ctx, frame, next_hop);
    if let (Disposition::Forward(egress), Some(p)) = (disposition, ctx.pending.take()) {
        let max_len = max_len_out(ctx.port_mtu, egress);
        if let (Some(leg), Some(offers)) = (decap_leg(ctx.policy, p.from_peer), ctx.offers.as_mut())
        {
            offers.push(p.offer(frame, ctx.ingress, egress, to, Some(next_hop), max_len, leg));
        }
    }
    disposition.into()
}

/// Routes into the overlay: the packet must fit the uplink once encapsulated (else
/// fragmentation-needed when it has DF, as a router with a smaller next-hop MTU does, and a
/// counted drop either way: the overlay never fragments); then it is rewritten as any routed
/// packet, and the caller encapsulates it (`encap::push_outer`).
fn to_overlay(ctx: &mut Ctx<'_>, frame: &mut [u8], to: Translated, vtep: Ipv4Addr) -> Step {
    let ip = Ipv4Packet::new_quoted(&frame[ETHERNET_HEADER_LEN..]).expect("checked on entry");
    let (len, dont_fragment, proto) = (ip.total_len(), ip.dont_fragment(), ip.protocol());
    if !encap::fits(len, ctx.policy.uplink_mtu) {
        if dont_fragment {
            let mtu = encap::inner_mtu(ctx.policy.uplink_mtu) as u32;
            ctx.icmp_error(frame, ICMP_DEST_UNREACHABLE, ICMP_FRAGMENTATION_NEEDED, mtu);
        }
        return ctx.drop_step(GwCounter::DropOverlayTooBig);
    }
    rewrite(frame, to);
    Ipv4Packet::new_quoted(&mut frame[ETHERNET_HEADER_LEN..])
        .expect("checked on entry")
        .decrement_ttl();
    ctx.count(GwCounter::Routed);
    let inner = Tuple {
        src: to.0,
        dst: to.2,
        sport: to.1,
        dport: to.3,
        proto,
        zone: NODE_ZONE,
    };
    Step::Encap {
        vtep,
        src_port: vxlan::source_port(nat::flow_hash(&inner)),
        pending: ctx.pending.take().map(|p| (p, to)),
    }
}

/// The MTU of the port a resolved next hop is on, when the packet is longer.
fn too_big_for_next_hop(ctx: &mut Ctx<'_>, frame: &[u8], next_hop: Ipv4Addr) -> Option<u32> {
    let len = Ipv4Packet::new_quoted(&frame[ETHERNET_HEADER_LEN..])
        .expect("checked on entry")
        .total_len();
    if len <= ctx.smallest_mtu as usize {
        return None;
    }
    let port = ctx
        .neighbors
        .get(&ctx.shared.neighbors, next_hop, ctx.now_ms)?
        .port;
    let mtu = *ctx.port_mtu.get(port as usize)?;
    (mtu != 0 && len > mtu as usize).then_some(mtu)
}

/// Sets the MACs for the next hop, or queues the frame until ARP resolves it.
fn deliver(ctx: &mut Ctx<'_>, frame: &mut [u8], next_hop: Ipv4Addr) -> Disposition {
    let known = ctx
        .neighbors
        .get(&ctx.shared.neighbors, next_hop, ctx.now_ms);
    let mut eth = EthernetFrame::new_unchecked(&mut *frame);
    eth.set_src_addr(ctx.policy.mac);
    if let Some(n) = known {
        eth.set_dst_addr(n.mac);
        return Disposition::Forward(n.port);
    }
    eth.set_dst_addr(MacAddr::ZERO);
    let now_ms = ctx.now_ms;
    let queued = ctx
        .shared
        .neighbors
        .update(|t| t.queue(next_hop, frame, now_ms));
    match queued {
        Resolve::Queued { request } => {
            if request {
                if let Some(req) = arp::request_for(ctx.policy, next_hop) {
                    ctx.count(GwCounter::ArpRequestsSent);
                    ctx.emit.push(req);
                }
            }
            ctx.count(GwCounter::NeighborQueued);
            Disposition::Consumed
        }
        Resolve::QueueFull => ctx.drop(GwCounter::DropNeighborQueueFull),
    }
}

/// Decides NAT for a connection's first packet (`nat::plan`) and tracks it with a unique reply
/// tuple. Returns the translated packet, the disposition of a refused one, or `Err(None)` when
/// another worker tracked the same flow first (look it up again).
fn new_flow(
    ctx: &mut Ctx<'_>,
    t: &Tuple,
    flags: u8,
    local: bool,
) -> Result<Translated, Option<Disposition>> {
    // Overlay peers are known by their VTEP: their packets are not inbound from outside.
    let from_outside = ctx.from_uplink && !ctx.from_overlay;
    let plan = match nat::plan(
        ctx.policy,
        &ctx.shared.affinity,
        t,
        from_outside,
        local,
        ctx.now_ms,
    ) {
        Ok(plan) => plan,
        Err(refusal) => {
            return Err(Some(ctx.drop(match refusal {
                Refusal::Unsolicited => GwCounter::DropUnsolicited,
                Refusal::NoBackend => GwCounter::DropNoBackend,
                Refusal::LocalUnhandled => GwCounter::DropLocalUnhandled,
            })))
        }
    };
    let state = FlowState::initial(t.proto, flags);
    let mut reply = Tuple {
        src: plan.target.0,
        dst: plan.snat.unwrap_or(t.src),
        sport: plan.target.1,
        dport: t.sport,
        proto: t.proto,
        zone: t.zone,
    };
    let ct = &ctx.shared.conntrack;
    let hash = nat::flow_hash(t);
    let mut clash_remapped = false;
    let inserted = if plan.snat.is_some() {
        nat::insert_with_unique_reply(ct, t, reply, state, ctx.policy.nat_ports, hash, ctx.now_ms)
    } else {
        match ct.insert(*t, reply, state, ctx.now_ms) {
            Ok(f) => Ok(f.reply),
            Err(InsertError::Full) => Err(AllocError::Full),
            Err(InsertError::OrigTaken) => Err(AllocError::OrigTaken),
            // Another flow already gets these replies (the same source port reached a backend
            // directly and through its service): give this one another source port, as the
            // kernel's NAT does on a clash.
            Err(InsertError::ReplyTaken) => {
                clash_remapped = true;
                nat::insert_with_unique_reply(
                    ct,
                    t,
                    reply,
                    state,
                    ctx.policy.nat_ports,
                    hash,
                    ctx.now_ms,
                )
            }
        }
    };
    match inserted {
        Ok(r) => {
            reply = r;
            // Bridged frames of these tuples are translated from now on: an untracked entry
            // in the fast path must go.
            ctx.shared
                .untracked
                .taken_over(&[*t, reply], &ctx.shared.closings);
        }
        Err(AllocError::OrigTaken) => return Err(None),
        Err(e) => {
            return Err(Some(ctx.drop(match e {
                AllocError::Full => GwCounter::DropConntrackFull,
                AllocError::Exhausted => GwCounter::DropNatPortsExhausted,
                AllocError::Clash | AllocError::OrigTaken => GwCounter::DropNatClash,
            })))
        }
    }
    if clash_remapped {
        ctx.count(GwCounter::NatClashRemapped);
    }
    let counter = match plan.kind {
        NatKind::None => None,
        NatKind::Service => Some(GwCounter::NatService),
        NatKind::NodePort => Some(GwCounter::NatNodePort),
        NatKind::Hairpin => Some(GwCounter::NatHairpin),
        NatKind::Masquerade => Some(GwCounter::NatMasquerade),
    };
    if let Some(c) = counter {
        ctx.count(c);
    }
    Ok(translation(t, &reply, Direction::Original))
}

/// An ICMP error about a packet of a tracked flow: translated back like the flow's packets
/// (`nat::translate_icmp_error`), then routed.
fn related(ctx: &mut Ctx<'_>, frame: &mut [u8], ttl: u8) -> Step {
    let Some(outer_dst) =
        nat::translate_icmp_error(&ctx.shared.conntrack, &mut frame[ETHERNET_HEADER_LEN..])
    else {
        return ctx.drop_step(GwCounter::DropIcmpRelatedUnknown);
    };
    ctx.count(GwCounter::IcmpRelatedTranslated);
    let ip = Ipv4Packet::new_quoted(&frame[ETHERNET_HEADER_LEN..]).expect("checked on entry");
    // An error's bytes 4-5 are no identifier (RFC 4884 puts a length there): kept as they are.
    let rest = l4::ports(PROTO_ICMP, ip.payload()).map_or(0, |(rest, _)| rest);
    forward(ctx, frame, (ip.src(), rest, outer_dst, rest), ttl)
}
