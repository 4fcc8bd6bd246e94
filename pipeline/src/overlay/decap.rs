//! Decapsulation: is this UDP datagram to our VTEP a VXLAN frame for us, from a peer? Then how
//! many bytes of outer headers to strip.

use super::Overlay;
use crate::wire::ipv4::Ipv4Packet;
use crate::wire::vxlan::{self, VxlanError, VxlanRepr, UDP_HEADER_LEN, VXLAN_HEADER_LEN};
use crate::wire::{EthernetFrame, ETHERNET_HEADER_LEN};

/// Why a datagram to our VXLAN port is not decapsulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecapError {
    /// The outer packet is a fragment (the overlay never fragments).
    Fragmented,
    /// The UDP, VXLAN or inner Ethernet header is cut short.
    Truncated,
    /// A non-zero outer UDP checksum that is wrong.
    BadChecksum,
    /// The I flag is clear.
    NoVni,
    WrongVni,
    /// The outer source is not a peer's VTEP.
    UnknownPeer,
    /// The inner frame is not addressed to our VTEP MAC.
    InnerNotForUs,
}

/// Checks a datagram to our VTEP address and UDP port (`ip`: the outer IPv4 packet, already
/// checked). Returns the bytes before the inner Ethernet frame, counted from the outer Ethernet
/// header.
pub fn check(overlay: &Overlay, ip: &Ipv4Packet<&[u8]>) -> Result<usize, DecapError> {
    if ip.is_fragment() {
        return Err(DecapError::Fragmented);
    }
    let udp = ip.payload();
    if udp.len() < UDP_HEADER_LEN + VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN {
        return Err(DecapError::Truncated);
    }
    if !vxlan::udp_checksum_ok(ip.src(), ip.dst(), udp) {
        return Err(DecapError::BadChecksum);
    }
    let header = VxlanRepr::parse(&udp[UDP_HEADER_LEN..]).map_err(|e| match e {
        VxlanError::Truncated => DecapError::Truncated,
        VxlanError::NoVni => DecapError::NoVni,
    })?;
    if header.vni != overlay.vni {
        return Err(DecapError::WrongVni);
    }
    if overlay.peer(ip.src()).is_none() {
        return Err(DecapError::UnknownPeer);
    }
    let inner = &udp[UDP_HEADER_LEN + VXLAN_HEADER_LEN..];
    let eth = EthernetFrame::new_checked(inner).map_err(|_| DecapError::Truncated)?;
    if eth.dst_addr() != overlay.mac {
        return Err(DecapError::InnerNotForUs);
    }
    Ok(ETHERNET_HEADER_LEN + ip.header_len() + UDP_HEADER_LEN + VXLAN_HEADER_LEN)
}
