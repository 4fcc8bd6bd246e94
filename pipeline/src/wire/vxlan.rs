//! VXLAN (RFC 7348): the 8-byte header, and the outer Ethernet + IPv4 + UDP + VXLAN headers
//! that wrap an inner Ethernet frame.

use super::checksum;
use super::ipv4::{self, PROTO_UDP};
use super::{EtherType, EthernetFrame, MacAddr, ETHERNET_HEADER_LEN};
use std::net::Ipv4Addr;

pub const VXLAN_HEADER_LEN: usize = 8;
pub const UDP_HEADER_LEN: usize = 8;
/// The I flag: the VNI is valid.
pub const FLAG_VNI: u8 = 0x08;
pub const IANA_PORT: u16 = 4789;
/// Outer Ethernet, IPv4 (no options), UDP and VXLAN: what encapsulation adds.
pub const ENCAP_OVERHEAD: usize =
    ETHERNET_HEADER_LEN + ipv4::IPV4_MIN_HEADER_LEN + UDP_HEADER_LEN + VXLAN_HEADER_LEN;
/// What the inner IPv4 packet loses of the underlay's MTU (the inner Ethernet header counts).
pub const MTU_OVERHEAD: usize = ENCAP_OVERHEAD;
/// RFC 7348: source ports hashed into the dynamic range.
pub const SOURCE_PORT_BASE: u16 = 49152;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VxlanError {
    Truncated,
    /// The I flag is clear: no VNI.
    NoVni,
}

/// The VXLAN header: flags and the 24-bit VNI (reserved fields are ignored on receipt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanRepr {
    pub vni: u32,
}

impl VxlanRepr {
    pub fn parse(bytes: &[u8]) -> Result<VxlanRepr, VxlanError> {
        let h = bytes.get(..VXLAN_HEADER_LEN).ok_or(VxlanError::Truncated)?;
        if h[0] & FLAG_VNI == 0 {
            return Err(VxlanError::NoVni);
        }
        Ok(VxlanRepr {
            vni: u32::from_be_bytes([0, h[4], h[5], h[6]]),
        })
    }

    pub fn emit(&self, out: &mut [u8]) {
        out[..VXLAN_HEADER_LEN].fill(0);
        out[0] = FLAG_VNI;
        out[4..7].copy_from_slice(&self.vni.to_be_bytes()[1..]);
    }
}

/// The outer headers of an encapsulated frame. The outer destination MAC is the next hop's,
/// set when the neighbour is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OuterRepr {
    pub src_mac: MacAddr,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub vni: u32,
}

impl OuterRepr {
    /// Writes the outer headers into `out[..ENCAP_OVERHEAD]` for an inner frame of
    /// `inner_len` bytes: IPv4 with DF set (`emit_header` sets it) (the overlay never fragments), UDP checksum zero (as
    /// the kernel sends by default; RFC 7348 allows it over IPv4).
    pub fn emit(&self, out: &mut [u8], inner_len: usize) {
        let mut eth = EthernetFrame::new_unchecked(&mut out[..ETHERNET_HEADER_LEN]);
        eth.set_dst_addr(MacAddr::ZERO);
        eth.set_src_addr(self.src_mac);
        eth.set_ethertype(EtherType::Ipv4);
        let ip_start = ETHERNET_HEADER_LEN;
        let udp_start = ip_start + ipv4::IPV4_MIN_HEADER_LEN;
        let udp_len = UDP_HEADER_LEN + VXLAN_HEADER_LEN + inner_len;
        ipv4::emit_header(
            &mut out[ip_start..udp_start],
            self.src_ip,
            self.dst_ip,
            PROTO_UDP,
            64,
            udp_len,
        );
        let udp = &mut out[udp_start..udp_start + UDP_HEADER_LEN];
        udp[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        udp[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        udp[6..8].copy_from_slice(&[0, 0]);
        VxlanRepr { vni: self.vni }.emit(&mut out[udp_start + UDP_HEADER_LEN..ENCAP_OVERHEAD]);
    }
}

/// The source port for a flow: a hash of its inner headers folded into 49152..=65535.
pub fn source_port(flow_hash: u64) -> u16 {
    SOURCE_PORT_BASE + (flow_hash % (65536 - SOURCE_PORT_BASE as u64)) as u16
}

/// Whether a UDP datagram's checksum is absent (zero) or correct.
pub fn udp_checksum_ok(src: Ipv4Addr, dst: Ipv4Addr, udp: &[u8]) -> bool {
    if udp.len() < UDP_HEADER_LEN || udp[6..8] == [0, 0] {
        return udp.len() >= UDP_HEADER_LEN;
    }
    let ph = checksum::pseudo_header(src.octets(), dst.octets(), PROTO_UDP, udp.len() as u16);
    checksum::fold(ph + checksum::sum(udp)) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_round_trips_and_needs_the_i_flag() {
        let mut b = [0xffu8; 8];
        VxlanRepr { vni: 0x00ab_cdef }.emit(&mut b);
        assert_eq!(b, [0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0]);
        assert_eq!(VxlanRepr::parse(&b), Ok(VxlanRepr { vni: 0x00ab_cdef }));
        b[0] = 0;
        assert_eq!(VxlanRepr::parse(&b), Err(VxlanError::NoVni));
        assert_eq!(VxlanRepr::parse(&b[..7]), Err(VxlanError::Truncated));
    }

    #[test]
    fn source_ports_stay_in_the_dynamic_range() {
        for h in [0u64, 1, 16383, 16384, u64::MAX] {
            assert!(source_port(h) >= SOURCE_PORT_BASE);
        }
    }
}
