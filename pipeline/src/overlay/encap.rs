//! Encapsulation: the inner frame gets our VTEP MAC and the peer's, and the outer Ethernet,
//! IPv4, UDP and VXLAN headers go in front of it — one lookup of the peer for both.

use super::Overlay;
use crate::packet::Packet;
use crate::wire::checksum;
use crate::wire::vxlan::{self, ENCAP_OVERHEAD};
use crate::wire::{EthernetFrame, ETHERNET_HEADER_LEN};
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

/// Why a frame was not encapsulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncapError {
    /// The VTEP is not a peer's.
    UnknownPeer,
    /// No room in front of the frame.
    NoHeadroom,
}

/// Encapsulates `packet` (the inner Ethernet frame) to the peer whose VTEP is `vtep`, from UDP
/// source port `src_port`: the inner Ethernet header is addressed from our VTEP MAC to the
/// peer's, and the peer's prepared outer headers go in front, with the lengths, the source
/// port and the IPv4 checksum (updated from the template's, RFC 1624) filled in. On an error
/// nothing has changed.
#[inline]
pub fn push_outer<P: Packet>(
    packet: &mut P,
    overlay: &Overlay,
    vtep: Ipv4Addr,
    src_port: u16,
) -> Result<(), EncapError> {
    let peer = overlay.peer(vtep).ok_or(EncapError::UnknownPeer)?;
    let inner_len = packet.as_ref().len();
    if !packet.push_front(ENCAP_OVERHEAD) {
        return Err(EncapError::NoHeadroom);
    }
    let mut inner = EthernetFrame::new_unchecked(
        &mut packet.as_mut()[ENCAP_OVERHEAD..ENCAP_OVERHEAD + ETHERNET_HEADER_LEN],
    );
    inner.set_src_addr(overlay.mac);
    inner.set_dst_addr(peer.mac);
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
    Ok(())
}
