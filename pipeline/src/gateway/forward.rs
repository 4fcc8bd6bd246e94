//! IPv4 to our MAC: local ICMP, conntrack and NAT, routing, TTL, neighbour resolution.

use super::{arp, icmp, Emit, Gateway, GatewayShared, GwCounter, GwCounters, Policy};
use crate::batch::{Disposition, PortId};
use crate::conntrack::{Direction, FlowState, InsertError, Tuple};
use crate::l3::{Resolve, Segment};
use crate::nat::Service;
use crate::wire::ipv4::{Ipv4Error, Ipv4Packet, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::wire::l4::{self, ICMP_DEST_UNREACHABLE, ICMP_ECHO_REQUEST, ICMP_TIME_EXCEEDED};
use crate::wire::{EthernetFrame, MacAddr, ETHERNET_HEADER_LEN};
use std::net::Ipv4Addr;

/// Random probes before falling back to a full scan of the port range.
const NAT_RANDOM_PROBES: u64 = 64;

/// What a new flow's DNAT was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dnat {
    None,
    Service,
    NodePort,
}

struct Ctx<'a> {
    shared: &'a GatewayShared,
    policy: &'a Policy,
    counters: &'a mut GwCounters,
    emit: &'a mut Vec<Emit>,
    ingress: PortId,
    from_uplink: bool,
    now_ms: u64,
}

impl Ctx<'_> {
    fn count(&mut self, c: GwCounter) {
        self.counters.add(c, 1);
    }

    fn drop(&mut self, c: GwCounter) -> Disposition {
        self.count(c);
        Disposition::Drop
    }

    /// Our address on the segment the frame came from.
    fn ingress_ip(&self) -> Ipv4Addr {
        let seg = if self.from_uplink {
            Segment::Uplink
        } else {
            Segment::Pods
        };
        self.policy.our_ip(seg).unwrap_or(self.policy.gateway_ip)
    }

    fn icmp_error(&mut self, frame: &[u8], kind: u8, code: u8) {
        let our_ip = self.ingress_ip();
        if let Some(e) = icmp::error(frame, self.ingress, self.policy.mac, our_ip, kind, code) {
            self.count(GwCounter::IcmpErrorsSent);
            self.emit.push(e);
        }
    }
}

pub(super) fn handle(
    gw: &mut Gateway,
    frame: &mut [u8],
    ingress: PortId,
    from_uplink: bool,
    now_ms: u64,
    emit: &mut Vec<Emit>,
) -> Disposition {
    let Gateway {
        shared,
        policy,
        counters,
        ..
    } = gw;
    let mut ctx = Ctx {
        shared,
        policy,
        counters,
        emit,
        ingress,
        from_uplink,
        now_ms,
    };
    route(&mut ctx, frame)
}

fn route(ctx: &mut Ctx<'_>, frame: &mut [u8]) -> Disposition {
    let ip = match Ipv4Packet::new_checked(&frame[ETHERNET_HEADER_LEN..]) {
        Ok(ip) => ip,
        Err(e) => {
            return ctx.drop(match e {
                Ipv4Error::Truncated => GwCounter::DropIpv4Truncated,
                Ipv4Error::NotVersion4 => GwCounter::DropIpv4Version,
                Ipv4Error::BadHeaderLength => GwCounter::DropIpv4HeaderLength,
                Ipv4Error::BadTotalLength => GwCounter::DropIpv4TotalLength,
                Ipv4Error::BadChecksum => GwCounter::DropIpv4Checksum,
            })
        }
    };
    let (src, dst, proto, ttl) = (ip.src(), ip.dst(), ip.protocol(), ip.ttl());
    let fragment = ip.is_later_fragment();
    let l4 = ip.payload();
    let local = dst == ctx.policy.gateway_ip || Some(dst) == ctx.policy.node_ip;

    if proto == PROTO_ICMP && !fragment && l4.len() >= 8 {
        match l4[0] {
            ICMP_ECHO_REQUEST if local => {
                icmp::echo_reply_in_place(frame, ctx.policy.mac);
                ctx.count(GwCounter::IcmpEchoReplied);
                return Disposition::Forward(ctx.ingress);
            }
            ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED => return related(ctx, frame),
            _ => {}
        }
    }
    let ports = if fragment { None } else { l4::ports(proto, l4) };
    let Some((sport, dport)) = ports else {
        if !fragment && matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_ICMP) {
            return ctx.drop(GwCounter::DropL4Truncated);
        }
        if local {
            return ctx.drop(GwCounter::DropLocalUnhandled);
        }
        // Other protocols and later fragments are routed untracked.
        return forward(ctx, frame, (src, 0, dst, 0), ttl);
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
    };
    let translated = match ctx.shared.conntrack.track(&tuple, flags, ctx.now_ms) {
        Some(hit) => {
            let (f, dir) = (hit.flow, hit.dir);
            match dir {
                Direction::Original => (f.reply.dst, f.reply.dport, f.reply.src, f.reply.sport),
                Direction::Reply => (f.orig.dst, f.orig.dport, f.orig.src, f.orig.sport),
            }
        }
        None => match new_flow(ctx, &tuple, flags, local) {
            Ok(t) => t,
            Err(d) => return d,
        },
    };
    forward(ctx, frame, translated, ttl)
}

/// For IPv4 bridged between pods: if it belongs to a translated flow, translate it (no TTL
/// change, no routing: it stays on the segment).
pub(super) fn translate_bridged(gw: &mut Gateway, frame: &mut [u8], now_ms: u64) {
    let Ok(ip) = Ipv4Packet::new_checked(&frame[ETHERNET_HEADER_LEN..]) else {
        return;
    };
    if ip.is_later_fragment() {
        return;
    }
    let (src, dst, proto) = (ip.src(), ip.dst(), ip.protocol());
    let Some((sport, dport)) = l4::ports(proto, ip.payload()) else {
        return;
    };
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
    };
    let Some(hit) = gw.shared.conntrack.track(&t, flags, now_ms) else {
        return;
    };
    let f = hit.flow;
    let to = match hit.dir {
        Direction::Original => (f.reply.dst, f.reply.dport, f.reply.src, f.reply.sport),
        Direction::Reply => (f.orig.dst, f.orig.dport, f.orig.src, f.orig.sport),
    };
    if to == (src, sport, dst, dport) {
        return;
    }
    rewrite(frame, to);
    gw.counters.add(GwCounter::NatBridged, 1);
}

/// Rewrites addresses and ports to `(src, sport, dst, dport)`, keeping checksums valid.
fn rewrite(frame: &mut [u8], (nsrc, nsport, ndst, ndport): (Ipv4Addr, u16, Ipv4Addr, u16)) {
    let mut ip =
        Ipv4Packet::new_quoted(&mut frame[ETHERNET_HEADER_LEN..]).expect("checked by the caller");
    let (src, dst, proto) = (ip.src(), ip.dst(), ip.protocol());
    let ports = if ip.is_later_fragment() {
        None
    } else {
        l4::ports(proto, ip.payload())
    };
    if nsrc != src {
        ip.set_src(nsrc);
        l4::address_changed(proto, ip.payload_mut(), src.into(), nsrc.into());
    }
    if ndst != dst {
        ip.set_dst(ndst);
        l4::address_changed(proto, ip.payload_mut(), dst.into(), ndst.into());
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

/// Rewrites to the translated tuple, decrements the TTL and sends to the next hop.
fn forward(
    ctx: &mut Ctx<'_>,
    frame: &mut [u8],
    (nsrc, nsport, ndst, ndport): (Ipv4Addr, u16, Ipv4Addr, u16),
    ttl: u8,
) -> Disposition {
    if ttl <= 1 {
        ctx.icmp_error(frame, ICMP_TIME_EXCEEDED, 0);
        return ctx.drop(GwCounter::DropTtlExceeded);
    }
    let Some((_, next_hop)) = ctx.policy.routes.lookup(ndst) else {
        ctx.icmp_error(frame, ICMP_DEST_UNREACHABLE, 0);
        return ctx.drop(GwCounter::DropNoRoute);
    };
    rewrite(frame, (nsrc, nsport, ndst, ndport));
    Ipv4Packet::new_quoted(&mut frame[ETHERNET_HEADER_LEN..])
        .expect("checked on entry")
        .decrement_ttl();
    ctx.count(GwCounter::Routed);
    deliver(ctx, frame, next_hop)
}

/// Sets the MACs for the next hop, or queues the frame until ARP resolves it.
fn deliver(ctx: &mut Ctx<'_>, frame: &mut [u8], next_hop: Ipv4Addr) -> Disposition {
    let known = ctx
        .shared
        .neighbors
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(next_hop, ctx.now_ms);
    let mut eth = EthernetFrame::new_unchecked(&mut *frame);
    eth.set_src_addr(ctx.policy.mac);
    if let Some(n) = known {
        eth.set_dst_addr(n.mac);
        return Disposition::Forward(n.port);
    }
    eth.set_dst_addr(MacAddr::ZERO);
    let queued = ctx
        .shared
        .neighbors
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .queue(next_hop, frame, ctx.now_ms);
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
        Resolve::QueueFull | Resolve::Known(_) => ctx.drop(GwCounter::DropNeighborQueueFull),
    }
}

fn flow_hash(t: &Tuple) -> u64 {
    let a = (u32::from(t.src) as u64) << 32 | u32::from(t.dst) as u64;
    let b = (t.sport as u64) << 24 | (t.dport as u64) << 8 | t.proto as u64;
    crate::nat::maglev_mix(a ^ crate::nat::maglev_mix(b))
}

/// Decides NAT for a connection's first packet and tracks it. Returns the translated tuple
/// (src, sport, dst, dport) for this packet.
fn new_flow(
    ctx: &mut Ctx<'_>,
    t: &Tuple,
    flags: u8,
    local: bool,
) -> Result<(Ipv4Addr, u16, Ipv4Addr, u16), Disposition> {
    let policy = ctx.policy;
    if ctx.from_uplink && policy.pod_cidr.contains(t.dst) && !policy.in_cluster(t.src) {
        return Err(ctx.drop(GwCounter::DropUnsolicited));
    }
    let service: Option<(&Service, Dnat)> = policy
        .services
        .by_vip(t.dst, t.dport, t.proto)
        .map(|s| (s, Dnat::Service))
        .or_else(|| {
            (Some(t.dst) == policy.node_ip)
                .then(|| policy.services.by_node_port(t.dport, t.proto))
                .flatten()
                .map(|s| (s, Dnat::NodePort))
        });
    let (target, dnat) = match service {
        Some((svc, kind)) => match svc.maglev.pick(flow_hash(t)) {
            Some(b) => ((*b.ip(), b.port()), kind),
            None => return Err(ctx.drop(GwCounter::DropNoBackend)),
        },
        None if local => return Err(ctx.drop(GwCounter::DropLocalUnhandled)),
        None if policy.services.is_vip(t.dst) => return Err(ctx.drop(GwCounter::DropNoBackend)),
        None => ((t.dst, t.dport), Dnat::None),
    };
    let egress_uplink = policy
        .routes
        .lookup(target.0)
        .is_some_and(|(seg, _)| seg == Segment::Uplink);
    let snat = match dnat {
        // kube-proxy masquerades NodePort traffic so that replies come back through this node.
        Dnat::NodePort => policy.node_ip,
        // A pod that reaches its own service and lands on itself: the reply must come to us.
        Dnat::Service if target.0 == t.src => Some(policy.gateway_ip),
        _ if policy.masquerade
            && egress_uplink
            && policy.pod_cidr.contains(t.src)
            && !policy.in_cluster(target.0) =>
        {
            policy.node_ip
        }
        _ => None,
    };
    let counter = match (dnat, snat.is_some()) {
        (Dnat::NodePort, _) => Some(GwCounter::NatNodePort),
        (Dnat::Service, true) => Some(GwCounter::NatHairpin),
        (Dnat::Service, false) => Some(GwCounter::NatService),
        (Dnat::None, true) => Some(GwCounter::NatMasquerade),
        (Dnat::None, false) => None,
    };
    let state = FlowState::initial(t.proto, flags);
    let mut reply = Tuple {
        src: target.0,
        dst: t.src,
        sport: target.1,
        dport: t.sport,
        proto: t.proto,
    };
    let ct = &ctx.shared.conntrack;
    let inserted = match snat {
        None => ct.insert(*t, reply, state, ctx.now_ms).map(|_| ()),
        Some(snat_ip) => {
            reply.dst = snat_ip;
            match allocate_port(ctx, t, &mut reply, state) {
                Some(r) => r,
                None => return Err(ctx.drop(GwCounter::DropNatPortsExhausted)),
            }
        }
    };
    match inserted {
        Ok(()) => {}
        Err(InsertError::Full) => return Err(ctx.drop(GwCounter::DropConntrackFull)),
        Err(InsertError::ReplyTaken) => return Err(ctx.drop(GwCounter::DropNatPortsExhausted)),
    }
    if let Some(c) = counter {
        ctx.count(c);
    }
    Ok((reply.dst, reply.dport, reply.src, reply.sport))
}

/// Picks the source port of a SNATed flow: its own port if free, then random probes, then a
/// full scan. The reply tuple must be unique; `Conntrack::insert` reserves it atomically.
/// Returns `None` when every port towards this destination is taken.
fn allocate_port(
    ctx: &mut Ctx<'_>,
    t: &Tuple,
    reply: &mut Tuple,
    state: FlowState,
) -> Option<Result<(), InsertError>> {
    let ct = &ctx.shared.conntrack;
    let (first, last) = ctx.policy.nat_ports;
    let span = (last.saturating_sub(first)) as u64 + 1;
    let h = flow_hash(t);
    let try_port = |port: u16, reply: &mut Tuple| -> Option<Result<(), InsertError>> {
        reply.dport = port;
        match ct.insert(*t, *reply, state, ctx.now_ms) {
            Ok(_) => Some(Ok(())),
            Err(InsertError::ReplyTaken) => None,
            Err(e) => Some(Err(e)),
        }
    };
    if (first..=last).contains(&t.sport) {
        if let Some(r) = try_port(t.sport, reply) {
            return Some(r);
        }
    }
    for probe in 0..NAT_RANDOM_PROBES {
        let port = first + (crate::nat::maglev_mix(h.wrapping_add(probe)) % span) as u16;
        if let Some(r) = try_port(port, reply) {
            return Some(r);
        }
    }
    let start = (h % span) as u16;
    for i in 0..span as u32 {
        let port = first + ((start as u32 + i) % span as u32) as u16;
        let mut candidate = *reply;
        candidate.dport = port;
        if ct.reply_free(&candidate) {
            if let Some(r) = try_port(port, reply) {
                return Some(r);
            }
        }
    }
    None
}

/// An ICMP error about a packet of a tracked flow: translated back like the flow's packets
/// (outer destination, and the quoted header inside), then routed.
fn related(ctx: &mut Ctx<'_>, frame: &mut [u8]) -> Disposition {
    let ip = Ipv4Packet::new_quoted(&frame[ETHERNET_HEADER_LEN..]).expect("checked on entry");
    let ttl = ip.ttl();
    let icmp_bytes = ip.payload();
    let Ok(inner) = Ipv4Packet::new_quoted(&icmp_bytes[8..]) else {
        return ctx.drop(GwCounter::DropIcmpRelatedUnknown);
    };
    let quoted = &icmp_bytes[8 + inner.header_len()..];
    let Some((isport, idport)) = quoted_ports(inner.protocol(), quoted) else {
        return ctx.drop(GwCounter::DropIcmpRelatedUnknown);
    };
    // The quoted packet went isrc → idst; its flow sees packets coming back as this tuple.
    let back = Tuple {
        src: inner.dst(),
        dst: inner.src(),
        sport: idport,
        dport: isport,
        proto: inner.protocol(),
    };
    let Some(hit) = ctx.shared.conntrack.find(&back) else {
        return ctx.drop(GwCounter::DropIcmpRelatedUnknown);
    };
    if hit.dir != Direction::Reply {
        return ctx.drop(GwCounter::DropIcmpRelatedUnknown);
    }
    let orig = hit.flow.orig;
    let outer_dst = orig.src;
    {
        let mut ip =
            Ipv4Packet::new_quoted(&mut frame[ETHERNET_HEADER_LEN..]).expect("checked on entry");
        ip.set_dst(outer_dst);
        let icmp = ip.payload_mut();
        if let Ok(mut inner) = Ipv4Packet::new_quoted(&mut icmp[8..]) {
            let proto = inner.protocol();
            inner.set_src(orig.src);
            inner.set_dst(orig.dst);
            let hl = inner.header_len();
            let quoted = &mut icmp[8 + hl..];
            if quoted.len() >= 8 {
                // Only the ports; the quoted transport checksum may not be there to fix.
                write_quoted_ports(proto, quoted, orig.sport, orig.dport);
            }
        }
        l4::fill_icmp_checksum(ip.payload_mut());
    }
    ctx.count(GwCounter::IcmpRelatedTranslated);
    let src = Ipv4Packet::new_quoted(&frame[ETHERNET_HEADER_LEN..])
        .expect("checked on entry")
        .src();
    forward(ctx, frame, (src, 0, outer_dst, 0), ttl)
}

fn quoted_ports(proto: u8, quoted: &[u8]) -> Option<(u16, u16)> {
    if quoted.len() < 8 {
        return None;
    }
    let r = |at: usize| u16::from_be_bytes([quoted[at], quoted[at + 1]]);
    match proto {
        PROTO_TCP | PROTO_UDP => Some((r(0), r(2))),
        PROTO_ICMP => Some((r(4), r(4))),
        _ => None,
    }
}

fn write_quoted_ports(proto: u8, quoted: &mut [u8], sport: u16, dport: u16) {
    match proto {
        PROTO_TCP | PROTO_UDP => {
            quoted[0..2].copy_from_slice(&sport.to_be_bytes());
            quoted[2..4].copy_from_slice(&dport.to_be_bytes());
        }
        PROTO_ICMP => quoted[4..6].copy_from_slice(&sport.to_be_bytes()),
        _ => {}
    }
}
