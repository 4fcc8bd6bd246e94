//! Encapsulation: the inner frame gets our VTEP MAC and the peer's, and the outer Ethernet,
//! IPv4, UDP and VXLAN headers go in front of it.

use super::Overlay;
use crate::packet::Packet;
use crate::wire::checksum;
use crate::wire::vxlan::{self, ENCAP_OVERHEAD};
use crate::wire::{EthernetFrame, MacAddr, ETHERNET_HEADER_LEN};
use std::net::Ipv4Addr;

/// Whether an inner IPv4 packet of `inner_ip_len` bytes fits the uplink once encapsulated.
#[inline]
pub fn fits(inner_ip_len: usize, uplink_mtu: u32) -> bool {
    inner_ip_len + vxlan::MTU_OVERHEAD <= uplink_mtu as usize
}

/// The largest inner IPv4 packet the overlay carries (the next-hop MTU of
/// fragmentation-needed).
pub fn inner_mtu(uplink_mtu: u32) -> u16 {
    (uplink_mtu as usize).saturating_sub(vxlan::MTU_OVERHEAD) as u16
}

/// Addresses the inner Ethernet header from our VTEP to the peer's.
pub fn set_inner_macs(frame: &mut [u8], overlay: &Overlay, peer_mac: MacAddr) {
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..ETHERNET_HEADER_LEN]);
    eth.set_src_addr(overlay.mac);
    eth.set_dst_addr(peer_mac);
}

/// Pushes the outer headers in front of `packet` (the inner Ethernet frame), to `vtep` from
/// UDP source port `src_port`: the peer's prepared headers, with the lengths, the source port
/// and the IPv4 checksum (updated from the template's, RFC 1624) filled in. False, changing
/// nothing, without the headroom or for a VTEP that is not a peer's.
#[inline]
pub fn push_outer<P: Packet>(
    packet: &mut P,
    overlay: &Overlay,
    vtep: Ipv4Addr,
    src_port: u16,
) -> bool {
    let Some(peer) = overlay.peer(vtep) else {
        return false;
    };
    let inner_len = packet.as_ref().len();
    if !packet.push_front(ENCAP_OVERHEAD) {
        return false;
    }
    let out = &mut packet.as_mut()[..ENCAP_OVERHEAD];
    out.copy_from_slice(&peer.outer);
    const IP: usize = ETHERNET_HEADER_LEN;
    const UDP: usize = IP + 20;
    let template_total = u16::from_be_bytes([out[IP + 2], out[IP + 3]]);
    let total = template_total.wrapping_add(inner_len as u16);
    let template_check = u16::from_be_bytes([out[IP + 10], out[IP + 11]]);
    out[IP + 2..IP + 4].copy_from_slice(&total.to_be_bytes());
    out[IP + 10..IP + 12]
        .copy_from_slice(&checksum::update16(template_check, template_total, total).to_be_bytes());
    out[UDP..UDP + 2].copy_from_slice(&src_port.to_be_bytes());
    let udp_len = (vxlan::UDP_HEADER_LEN + vxlan::VXLAN_HEADER_LEN + inner_len) as u16;
    out[UDP + 4..UDP + 6].copy_from_slice(&udp_len.to_be_bytes());
    true
}
