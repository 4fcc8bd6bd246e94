//! Encapsulation: the inner frame gets our VTEP MAC and the peer's, and the outer Ethernet,
//! IPv4, UDP and VXLAN headers go in front of it.

use super::Overlay;
use crate::packet::Packet;
use crate::wire::vxlan::{self, OuterRepr, ENCAP_OVERHEAD};
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
/// UDP source port `src_port`. False, changing nothing, without the headroom.
pub fn push_outer<P: Packet>(
    packet: &mut P,
    overlay: &Overlay,
    our_mac: MacAddr,
    vtep: Ipv4Addr,
    src_port: u16,
) -> bool {
    let inner_len = packet.as_ref().len();
    if !packet.push_front(ENCAP_OVERHEAD) {
        return false;
    }
    OuterRepr {
        src_mac: our_mac,
        src_ip: overlay.local,
        dst_ip: vtep,
        src_port,
        dst_port: overlay.udp_port,
        vni: overlay.vni,
    }
    .emit(&mut packet.as_mut()[..ENCAP_OVERHEAD], inner_len);
    true
}
