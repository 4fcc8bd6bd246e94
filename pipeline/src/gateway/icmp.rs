//! ICMP the gateway originates: echo replies for its own addresses, and errors (time exceeded,
//! destination unreachable) back to a sender.

use super::Emit;
use crate::batch::{PortId, PortMask};
use crate::wire::ipv4::{self, Ipv4Packet, PROTO_ICMP};
use crate::wire::l4::{self, ICMP_ECHO_REPLY};
use crate::wire::{EtherType, EthernetFrame, MacAddr, ETHERNET_HEADER_LEN};
use std::net::Ipv4Addr;

/// Turns an echo request to `our_ip` into the reply, in place.
pub(super) fn echo_reply_in_place(frame: &mut [u8], our_mac: MacAddr) {
    let (eth_bytes, ip_bytes) = frame.split_at_mut(ETHERNET_HEADER_LEN);
    let mut eth = EthernetFrame::new_unchecked(eth_bytes);
    let peer_mac = eth.src_addr();
    eth.set_dst_addr(peer_mac);
    eth.set_src_addr(our_mac);
    let mut ip = Ipv4Packet::new_quoted(ip_bytes).expect("checked by the caller");
    let (src, dst) = (ip.src(), ip.dst());
    ip.set_src(dst);
    ip.set_dst(src);
    let icmp = ip.payload_mut();
    icmp[0] = ICMP_ECHO_REPLY;
    l4::fill_icmp_checksum(icmp);
    // A fresh TTL, as any packet we originate has.
    ip.set_ttl(64);
}

/// An ICMP error about `offending` (an Ethernet frame received on `ingress`), sent back to its
/// sender from `our_ip`. Quotes the offending IP header and the first 8 bytes after it.
pub(super) fn error(
    offending: &[u8],
    ingress: PortId,
    our_mac: MacAddr,
    our_ip: Ipv4Addr,
    kind: u8,
    code: u8,
) -> Option<Emit> {
    let eth = EthernetFrame::new_checked(offending).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    // Only about a datagram's first fragment (RFC 1812 4.3.2.7): a later one would give one
    // error per fragment, quoting payload instead of a transport header.
    if ip.is_later_fragment() {
        return None;
    }
    // Never an error about an error, nor to a broadcast or multicast source.
    if ip.protocol() == PROTO_ICMP
        && ip
            .payload()
            .first()
            .is_some_and(|&t| !matches!(t, 0 | 8 | 13 | 15 | 17))
    {
        return None;
    }
    if ip.src().is_broadcast() || ip.src().is_multicast() || ip.src().is_unspecified() {
        return None;
    }
    let quoted_len = (ip.header_len() + 8).min(eth.payload().len());
    let icmp_len = 8 + quoted_len;
    let mut frame = vec![0u8; ETHERNET_HEADER_LEN + ipv4::IPV4_MIN_HEADER_LEN + icmp_len];
    {
        let mut out = EthernetFrame::new_unchecked(&mut frame[..]);
        out.set_dst_addr(eth.src_addr());
        out.set_src_addr(our_mac);
        out.set_ethertype(EtherType::Ipv4);
    }
    let ip_start = ETHERNET_HEADER_LEN;
    let icmp_start = ip_start + ipv4::IPV4_MIN_HEADER_LEN;
    ipv4::emit_header(
        &mut frame[ip_start..icmp_start],
        our_ip,
        ip.src(),
        PROTO_ICMP,
        64,
        icmp_len,
    );
    let icmp = &mut frame[icmp_start..];
    icmp[0] = kind;
    icmp[1] = code;
    icmp[8..].copy_from_slice(&eth.payload()[..quoted_len]);
    l4::fill_icmp_checksum(icmp);
    Some(Emit {
        to: PortMask::single(ingress),
        frame,
    })
}

/// Sets the second word of an error's ICMP header (`error` leaves it zero): the next-hop MTU
/// of fragmentation-needed lives there (RFC 1191).
pub(super) fn set_rest_of_header(error: &mut [u8], rest: u32) {
    if rest == 0 {
        return;
    }
    let icmp = &mut error[ETHERNET_HEADER_LEN + ipv4::IPV4_MIN_HEADER_LEN..];
    icmp[4..8].copy_from_slice(&rest.to_be_bytes());
    l4::fill_icmp_checksum(icmp);
}
