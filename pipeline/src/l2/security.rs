//! Port security: a port bound to a MAC address (and an IPv4 address) may only send frames
//! from that MAC, and ARP and IPv4 only from that address — a pod cannot take another pod's or
//! the gateway's address. With an address, what the checks cannot read (VLAN-tagged frames,
//! ARP of another form) is dropped too. Ports without a binding may send from any MAC but a
//! bound one (learned on them, it would take that pod's traffic).

use crate::batch::PortId;
use crate::wire::arp::ArpRepr;
use crate::wire::ipv4::Ipv4Packet;
use crate::wire::{EtherType, EthernetFrame, MacAddr, ETHERNET_HEADER_LEN};
use rustc_hash::FxHashMap;
use std::net::Ipv4Addr;

/// What a port may send from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortBinding {
    pub mac: MacAddr,
    /// `None`: any IPv4 address (the MAC is still checked).
    pub ip: Option<Ipv4Addr>,
}

impl PortBinding {
    /// What of `other` this binding claims too, as ("mac" or "ip", the address): two ports
    /// bound to one address could both send as it.
    pub fn shared_with(&self, other: &PortBinding) -> Option<(&'static str, String)> {
        match self.ip {
            _ if self.mac == other.mac => Some(("mac", self.mac.to_string())),
            Some(ip) if other.ip == Some(ip) => Some(("ip", ip.to_string())),
            _ => None,
        }
    }
}

/// The bindings of a switch's ports, indexed by port.
#[derive(Debug, Clone, Default)]
pub struct PortSecurity {
    bindings: Vec<Option<PortBinding>>,
    /// The port each bound MAC belongs to: no other port may send from it (learned there,
    /// it would take the pod's traffic).
    owners: FxHashMap<MacAddr, PortId>,
}

impl PortSecurity {
    pub fn set(&mut self, port: PortId, binding: Option<PortBinding>) {
        let p = port as usize;
        if p >= self.bindings.len() {
            self.bindings.resize(p + 1, None);
        }
        if let Some(old) = self.bindings[p].take() {
            self.owners.remove(&old.mac);
        }
        if let Some(b) = binding {
            self.owners.insert(b.mac, port);
        }
        self.bindings[p] = binding;
    }

    pub fn get(&self, port: PortId) -> Option<PortBinding> {
        self.bindings.get(port as usize).copied().flatten()
    }

    /// Whether `frame`, received on `port`, comes from the addresses the port is bound to. A
    /// frame too short to tell is left to the stages, which drop it by their own reason.
    #[inline]
    pub fn allows(&self, port: PortId, frame: &[u8]) -> bool {
        let Some(binding) = self.get(port) else {
            return self.owners.is_empty() || !self.bound_elsewhere(port, frame);
        };
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return true;
        };
        if eth.src_addr() != binding.mac {
            return false;
        }
        let Some(ip) = binding.ip else {
            return true;
        };
        match eth.ethertype() {
            EtherType::Arp => match ArpRepr::parse(&frame[ETHERNET_HEADER_LEN..]) {
                // An ARP probe (RFC 5227) says nothing of its own: sender 0.0.0.0.
                Some(arp) => {
                    arp.sender_mac == binding.mac
                        && (arp.sender_ip == ip || arp.sender_ip.is_unspecified())
                }
                // What cannot be read here cannot be checked, yet a receiver may read it.
                None => false,
            },
            EtherType::Ipv4 => match Ipv4Packet::new_checked(&frame[ETHERNET_HEADER_LEN..]) {
                Ok(packet) => packet.src() == ip,
                Err(_) => true,
            },
            // A tag hides the ARP or IPv4 inside from the checks above, and receivers strip a
            // priority tag (VLAN 0) and read what it carried. Pods send no tagged frames.
            EtherType::Vlan | EtherType::Unknown(0x88a8 | 0x9100) => false,
            _ => true,
        }
    }

    /// Whether `frame`'s source MAC is bound to another port than `port`.
    fn bound_elsewhere(&self, port: PortId, frame: &[u8]) -> bool {
        frame.len() >= 12
            && self
                .owners
                .get(&MacAddr::from_bytes(&frame[6..12]))
                .is_some_and(|&owner| owner != port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([2, 0, 0, 0, 1, 2]);
    const OTHER: MacAddr = MacAddr([2, 0, 0, 0, 1, 3]);
    const IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);

    fn udp(src_mac: MacAddr, src: Ipv4Addr) -> Vec<u8> {
        let mut b = Vec::new();
        etherparse::PacketBuilder::ethernet2(src_mac.0, [2, 0, 0, 0, 0, 9])
            .ipv4(src.octets(), [10, 244, 1, 3], 64)
            .udp(1, 2)
            .write(&mut b, b"x")
            .unwrap();
        b
    }

    fn arp(eth_src: MacAddr, sender: (MacAddr, Ipv4Addr)) -> Vec<u8> {
        let mut frame =
            ArpRepr::request(sender, Ipv4Addr::new(10, 244, 1, 1)).frame(MacAddr::BROADCAST);
        frame[6..12].copy_from_slice(&eth_src.0);
        frame
    }

    #[test]
    fn a_bound_port_sends_only_from_its_addresses() {
        let mut s = PortSecurity::default();
        s.set(
            3,
            Some(PortBinding {
                mac: MAC,
                ip: Some(IP),
            }),
        );
        assert!(s.allows(3, &udp(MAC, IP)));
        assert!(!s.allows(3, &udp(OTHER, IP)), "another MAC");
        assert!(
            !s.allows(3, &udp(MAC, Ipv4Addr::new(10, 244, 1, 3))),
            "another IP"
        );
        assert!(s.allows(3, &arp(MAC, (MAC, IP))));
        assert!(
            s.allows(3, &arp(MAC, (MAC, Ipv4Addr::UNSPECIFIED))),
            "a probe"
        );
        assert!(
            !s.allows(3, &arp(MAC, (MAC, Ipv4Addr::new(10, 244, 1, 1)))),
            "the gateway's"
        );
        assert!(
            !s.allows(3, &arp(MAC, (OTHER, IP))),
            "another sender MAC inside"
        );
        // Unbound ports are not checked; a binding without an address checks the MAC only.
        assert!(s.allows(2, &udp(OTHER, Ipv4Addr::new(8, 8, 8, 8))));
        s.set(3, Some(PortBinding { mac: MAC, ip: None }));
        assert!(s.allows(3, &udp(MAC, Ipv4Addr::new(8, 8, 8, 8))));
        assert!(!s.allows(3, &udp(OTHER, IP)));
        s.set(3, None);
        assert!(s.allows(3, &udp(OTHER, IP)));
    }

    /// What the checks cannot read is not let through: ARP inside a VLAN tag (a priority tag
    /// a receiver strips), ARP of a form this parser does not take.
    #[test]
    fn a_bound_port_cannot_hide_its_claims() {
        let mut s = PortSecurity::default();
        s.set(
            3,
            Some(PortBinding {
                mac: MAC,
                ip: Some(IP),
            }),
        );
        let gateway_claim = arp(MAC, (MAC, Ipv4Addr::new(10, 244, 1, 1)));
        for tpid in [[0x81, 0x00], [0x88, 0xa8], [0x91, 0x00]] {
            let mut tagged = gateway_claim[..12].to_vec();
            tagged.extend_from_slice(&tpid);
            tagged.extend_from_slice(&[0, 0]);
            tagged.extend_from_slice(&gateway_claim[12..]);
            assert!(!s.allows(3, &tagged), "{tpid:x?}");
        }
        // IEEE 802 hardware type: read (and checked) as Linux reads it.
        let mut ieee802 = gateway_claim.clone();
        ieee802[14..16].copy_from_slice(&[0, 6]);
        assert!(!s.allows(3, &ieee802));
        let mut own = arp(MAC, (MAC, IP));
        own[14..16].copy_from_slice(&[0, 6]);
        assert!(s.allows(3, &own));
        // Any other form: not readable, not let through.
        let mut odd = arp(MAC, (MAC, IP));
        odd[14..16].copy_from_slice(&[0, 7]);
        assert!(!s.allows(3, &odd));
        // An unbound port is not checked, but for the MACs bound to other ports.
        assert!(s.allows(2, &udp(OTHER, Ipv4Addr::new(8, 8, 8, 8))));
        assert!(!s.allows(2, &gateway_claim), "port 3's MAC");
        s.set(
            3,
            Some(PortBinding {
                mac: OTHER,
                ip: None,
            }),
        );
        assert!(s.allows(2, &gateway_claim), "no longer bound");
        assert!(!s.allows(2, &udp(OTHER, IP)));
        s.set(3, None);
        assert!(s.allows(2, &udp(OTHER, IP)));
    }
}
