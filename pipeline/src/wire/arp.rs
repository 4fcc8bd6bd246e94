//! ARP for IPv4 over Ethernet.

use super::{EtherType, EthernetFrame, MacAddr, ETHERNET_HEADER_LEN};
use std::net::Ipv4Addr;

pub const ARP_LEN: usize = 28;
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    pub operation: u16,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    /// Parses an Ethernet/IPv4 ARP packet (hardware type Ethernet, or IEEE 802 as Linux also
    /// takes on Ethernet); `None` for anything else or short input.
    pub fn parse(b: &[u8]) -> Option<ArpRepr> {
        if b.len() < ARP_LEN
            || !(b[0..2] == [0, 1] || b[0..2] == [0, 6])
            || b[2..4] != [0x08, 0x00]
            || b[4] != 6
            || b[5] != 4
        {
            return None;
        }
        let ip = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
        Some(ArpRepr {
            operation: u16::from_be_bytes([b[6], b[7]]),
            sender_mac: MacAddr::from_bytes(&b[8..14]),
            sender_ip: ip(14),
            target_mac: MacAddr::from_bytes(&b[18..24]),
            target_ip: ip(24),
        })
    }

    /// A request from `sender` (MAC, address) for `target`.
    pub fn request(sender: (MacAddr, Ipv4Addr), target: Ipv4Addr) -> ArpRepr {
        ArpRepr {
            operation: ARP_REQUEST,
            sender_mac: sender.0,
            sender_ip: sender.1,
            target_mac: MacAddr::ZERO,
            target_ip: target,
        }
    }

    /// The Ethernet frame that carries this packet to `eth_dst`, from the sender's MAC.
    pub fn frame(&self, eth_dst: MacAddr) -> Vec<u8> {
        let mut frame = vec![0u8; ETHERNET_HEADER_LEN + ARP_LEN];
        let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
        eth.set_dst_addr(eth_dst);
        eth.set_src_addr(self.sender_mac);
        eth.set_ethertype(EtherType::Arp);
        self.emit(&mut frame[ETHERNET_HEADER_LEN..]);
        frame
    }

    pub fn emit(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 0]);
        out[6..8].copy_from_slice(&self.operation.to_be_bytes());
        out[8..14].copy_from_slice(&self.sender_mac.0);
        out[14..18].copy_from_slice(&self.sender_ip.octets());
        out[18..24].copy_from_slice(&self.target_mac.0);
        out[24..28].copy_from_slice(&self.target_ip.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let repr = ArpRepr {
            operation: ARP_REQUEST,
            sender_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            sender_ip: Ipv4Addr::new(10, 244, 1, 2),
            target_mac: MacAddr::ZERO,
            target_ip: Ipv4Addr::new(10, 244, 1, 1),
        };
        let mut b = [0u8; ARP_LEN];
        repr.emit(&mut b);
        assert_eq!(ArpRepr::parse(&b), Some(repr));
        for len in 0..ARP_LEN {
            assert_eq!(ArpRepr::parse(&b[..len]), None);
        }
    }
}
