//! ARP: answer for our addresses, learn neighbours, ask for next hops.

use super::{Emit, Gateway, GwCounter, Policy};
use crate::batch::{Disposition, PortId, PortMask};
use crate::l3::{Neighbor, Segment};
use crate::wire::arp::{ArpRepr, ARP_LEN, ARP_REPLY, ARP_REQUEST};
use crate::wire::{EthernetFrame, MacAddr, ETHERNET_HEADER_LEN};
use std::net::Ipv4Addr;

pub(super) fn handle(
    gw: &mut Gateway,
    frame: &mut [u8],
    ingress: PortId,
    from_uplink: bool,
    now_ms: u64,
    emit: &mut Vec<Emit>,
) -> Disposition {
    let Some(arp) = ArpRepr::parse(&frame[ETHERNET_HEADER_LEN..]) else {
        gw.counters.add(GwCounter::DropBadArp, 1);
        return Disposition::Drop;
    };
    let segment = if from_uplink {
        Segment::Uplink
    } else {
        Segment::Pods
    };
    let policy = gw.policy.clone();
    if arp.sender_mac != policy.mac
        && (arp.sender_ip == policy.gateway_ip || Some(arp.sender_ip) == policy.node_ip)
    {
        // Someone claims an address of ours: passed on, it would point the pods' default
        // route (or the router's) at the claimant.
        gw.counters.add(GwCounter::DropArpClaimsOurAddress, 1);
        return Disposition::Drop;
    }
    let Some(our_ip) = policy.our_ip(segment) else {
        gw.counters.add(GwCounter::DropBadArp, 1);
        return Disposition::Drop;
    };
    let subnet = if from_uplink {
        policy.uplink_cidr
    } else {
        Some(policy.pod_cidr)
    };
    let sender_ok = !arp.sender_mac.is_multicast()
        && !arp.sender_mac.is_zero()
        && arp.sender_ip != our_ip
        && subnet.is_some_and(|s| s.contains(arp.sender_ip));
    if sender_ok {
        learn(gw, &policy, &arp, ingress, our_ip, now_ms, emit);
    }
    // On the uplink, a VTEP address of its own (`[vxlan] local`) is ours too.
    let target_ours =
        arp.target_ip == our_ip || (from_uplink && policy.is_uplink_ip(arp.target_ip));
    if arp.operation == ARP_REQUEST && target_ours && sender_ok {
        reply_in_place(frame, &arp, policy.mac);
        gw.counters.add(GwCounter::ArpReplied, 1);
        return Disposition::Forward(ingress);
    }
    if from_uplink {
        gw.counters.add(GwCounter::ArpIgnored, 1);
        return Disposition::Drop;
    }
    if EthernetFrame::new_unchecked(&*frame).dst_addr() == policy.mac {
        // Addressed to us (a reply to our request): learned above, for nobody else.
        return Disposition::Consumed;
    }
    // ARP between pods is the pod segment's business.
    gw.bridge_frame(frame, ingress, now_ms)
}

/// Learns from ARP addressed to us, gratuitous ARP, and ARP from addresses we already know or
/// are resolving (as Linux does: no table entries for every broadcast seen).
fn learn(
    gw: &mut Gateway,
    policy: &Policy,
    arp: &ArpRepr,
    ingress: PortId,
    our_ip: Ipv4Addr,
    now_ms: u64,
    emit: &mut Vec<Emit>,
) {
    let for_us =
        arp.target_ip == our_ip || (arp.operation == ARP_REPLY && arp.target_mac == policy.mac);
    let gratuitous = arp.sender_ip == arp.target_ip;
    let released = gw.shared.neighbors.update(|table| {
        if for_us || gratuitous {
            Some(table.learn(arp.sender_ip, arp.sender_mac, ingress, now_ms))
        } else {
            table.refresh(arp.sender_ip, arp.sender_mac, ingress, now_ms)
        }
    });
    let Some(released) = released else { return };
    gw.counters.add(GwCounter::ArpLearned, 1);
    gw.counters
        .add(GwCounter::NeighborReleased, released.len() as u64);
    for mut frame in released {
        if let Ok(mut eth) = EthernetFrame::new_checked(&mut frame[..]) {
            eth.set_dst_addr(arp.sender_mac);
        }
        emit.push(Emit {
            to: PortMask::single(ingress),
            frame,
        });
    }
}

fn reply_in_place(frame: &mut [u8], request: &ArpRepr, our_mac: MacAddr) {
    let reply = ArpRepr {
        operation: ARP_REPLY,
        sender_mac: our_mac,
        sender_ip: request.target_ip,
        target_mac: request.sender_mac,
        target_ip: request.sender_ip,
    };
    reply.emit(&mut frame[ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + ARP_LEN]);
    let mut eth = EthernetFrame::new_unchecked(frame);
    eth.set_dst_addr(request.sender_mac);
    eth.set_src_addr(our_mac);
}

/// A broadcast ARP request for `ip` on the segment that reaches it.
pub(super) fn request_for(policy: &Policy, ip: Ipv4Addr) -> Option<Emit> {
    let segment = segment_of(policy, ip);
    let our_ip = policy.our_ip(segment)?;
    let frame = ArpRepr::request((policy.mac, our_ip), ip).frame(MacAddr::BROADCAST);
    Some(Emit {
        to: policy.segment_ports(segment),
        frame,
    })
}

/// A request for `ip`, known as `known`, to its MAC on its port only (an entry about to age
/// out: whoever still has the address answers).
pub(super) fn probe_for(policy: &Policy, ip: Ipv4Addr, known: Neighbor) -> Option<Emit> {
    let our_ip = policy.our_ip(segment_of(policy, ip))?;
    let frame = ArpRepr::request((policy.mac, our_ip), ip).frame(known.mac);
    Some(Emit {
        to: PortMask::single(known.port),
        frame,
    })
}

fn segment_of(policy: &Policy, ip: Ipv4Addr) -> Segment {
    if policy.pod_cidr.contains(ip) {
        Segment::Pods
    } else {
        Segment::Uplink
    }
}
