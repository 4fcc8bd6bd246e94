//! ICMP errors about a translated flow (RELATED): the outer destination and the quoted header
//! inside are translated back like the flow's own packets.

use crate::conntrack::{Conntrack, Direction, Tuple, NODE_ZONE};
use crate::wire::ipv4::{Ipv4Packet, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::wire::l4;
use std::net::Ipv4Addr;

/// Bytes of ICMP header before the quoted packet.
const ICMP_HEADER_LEN: usize = 8;

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

/// Translates an ICMP error (`ip`: its IPv4 packet, already checked) about a packet of one of
/// our tracked flows, so that it reaches that packet's sender as if nothing had been
/// translated: the originator for a packet it sent (a port unreachable from the far end), the
/// responder for one it sent (a router's "fragmentation needed" about a NodePort backend's
/// reply: without it the backend never learns the path MTU). When the quoted packet's
/// destination itself reports the error, its outer source becomes that destination as the
/// sender knows it (a backend's port unreachable comes from the service address). Returns
/// the new outer destination; `None` when no tracked flow sent the quoted packet (then
/// nothing was changed).
pub fn translate_icmp_error(ct: &Conntrack, ip: &mut [u8]) -> Option<Ipv4Addr> {
    let packet = Ipv4Packet::new_quoted(&*ip).ok()?;
    let reporter = packet.src();
    let icmp = packet.payload();
    let inner = Ipv4Packet::new_quoted(icmp.get(ICMP_HEADER_LEN..)?).ok()?;
    let quoted = &icmp[ICMP_HEADER_LEN + inner.header_len()..];
    let (isport, idport) = quoted_ports(inner.protocol(), quoted)?;
    let quoted_dst = inner.dst();
    // The quoted packet went isrc → idst; its flow sees packets coming back as this tuple.
    let back = Tuple {
        src: inner.dst(),
        dst: inner.src(),
        sport: idport,
        dport: isport,
        proto: inner.protocol(),
        zone: NODE_ZONE,
    };
    let hit = ct.find(&back)?;
    // The quoted packet as its sender sent it, before any translation.
    let sent_as = match hit.dir {
        Direction::Reply => hit.flow.orig,
        Direction::Original => hit.flow.reply,
    };
    let mut packet = Ipv4Packet::new_quoted(ip).ok()?;
    if reporter == quoted_dst {
        packet.set_src(sent_as.dst);
    }
    packet.set_dst(sent_as.src);
    let icmp = packet.payload_mut();
    if let Ok(mut inner) = Ipv4Packet::new_quoted(&mut icmp[ICMP_HEADER_LEN..]) {
        let proto = inner.protocol();
        let (old_src, old_dst) = (inner.src(), inner.dst());
        inner.set_src(sent_as.src);
        inner.set_dst(sent_as.dst);
        let hl = inner.header_len();
        let quoted = &mut icmp[ICMP_HEADER_LEN + hl..];
        // The quoted transport checksum follows where the quote holds it (UDP and ICMP: in
        // the first 8 bytes; TCP's usually is not quoted), as Linux's NAT does.
        l4::address_changed(proto, quoted, old_src.into(), sent_as.src.into());
        l4::address_changed(proto, quoted, old_dst.into(), sent_as.dst.into());
        if (isport, idport) != (sent_as.sport, sent_as.dport) {
            l4::set_port(proto, quoted, true, sent_as.sport);
            if proto != PROTO_ICMP {
                l4::set_port(proto, quoted, false, sent_as.dport);
            }
        }
    }
    l4::fill_icmp_checksum(packet.payload_mut());
    Some(sent_as.src)
}
