//! Port security: a port bound to a MAC address (and an IPv4 address) may only send frames
//! from that MAC, and ARP and IPv4 only from that address — a pod cannot take another pod's or
//! the gateway's address. With an address, what the checks cannot read (VLAN-tagged frames,
//! ARP of another form) is dropped too. Ports without a binding may send from any MAC but a
//! bound one (learned on them, it would take that pod's traffic).
//!
//! The switch gives pods IPv4 only, yet their kernels speak IPv6 on the link. A port bound to
//! an address may send IPv6 only from the link-local address its MAC makes (EUI-64) or from
//! `::`, no router advertisement or redirect (a pod would become every other pod's IPv6 router,
//! CVE-2020-10749), and neighbour discovery only about itself: link-layer options carrying
//! its MAC, advertisements only for its link-local address. What cannot be read is dropped.

use crate::batch::PortId;
use crate::wire::arp::ArpRepr;
use crate::wire::ipv4::Ipv4Packet;
use crate::wire::{EtherType, EthernetFrame, MacAddr, ETHERNET_HEADER_LEN};
use rustc_hash::FxHashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

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
            EtherType::Ipv6 => ipv6_allowed(binding.mac, &frame[ETHERNET_HEADER_LEN..]),
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

/// The link-local address a MAC makes (modified EUI-64, RFC 4291 appendix A).
pub fn link_local_of(mac: MacAddr) -> Ipv6Addr {
    let m = mac.0;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 2,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

const IPV6_HEADER_LEN: usize = 40;
/// Extension headers walked to find the upper-layer header; more is not read.
const MAX_EXTENSION_HEADERS: usize = 8;

/// Whether an IPv6 packet from a port bound to `mac` is its own (the module's rules).
fn ipv6_allowed(mac: MacAddr, packet: &[u8]) -> bool {
    if packet.len() < IPV6_HEADER_LEN || packet[0] >> 4 != 6 {
        return false;
    }
    let own = link_local_of(mac);
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&packet[8..24]).unwrap_or_default());
    if src != own && !src.is_unspecified() {
        return false;
    }
    let end = IPV6_HEADER_LEN + u16::from_be_bytes([packet[4], packet[5]]) as usize;
    let Some(packet) = packet.get(..end) else {
        return false;
    };
    let mut next = packet[6];
    let mut at = IPV6_HEADER_LEN;
    for _ in 0..=MAX_EXTENSION_HEADERS {
        let length = match next {
            // Hop-by-hop, routing and destination options: (length + 1) × 8 bytes.
            0 | 43 | 60 => packet.get(at + 1).map(|&l| (l as usize + 1) * 8),
            // A fragment: only the first carries the upper-layer header (RFC 7112).
            44 => match packet.get(at + 2..at + 4) {
                Some(offset) if u16::from_be_bytes([offset[0], offset[1]]) >> 3 != 0 => {
                    return true
                }
                Some(_) => Some(8),
                None => None,
            },
            // Authentication header: (length + 2) × 4 bytes.
            51 => packet.get(at + 1).map(|&l| (l as usize + 2) * 4),
            58 => {
                let icmp = packet.get(at..).unwrap_or_default();
                return icmpv6_allowed(mac, own, src.is_unspecified(), icmp);
            }
            _ => return true,
        };
        let (Some(length), Some(&following)) = (length, packet.get(at)) else {
            return false;
        };
        next = following;
        at += length;
    }
    false
}

/// ICMPv6 from a bound port: no router's messages, neighbour discovery about itself only
/// (`probe`: sent from `::`, as duplicate address detection is: only for its own address, or
/// it could keep another pod from taking its link-local address).
fn icmpv6_allowed(mac: MacAddr, own: Ipv6Addr, probe: bool, icmp: &[u8]) -> bool {
    const ROUTER_SOLICITATION: u8 = 133;
    const NEIGHBOUR_SOLICITATION: u8 = 135;
    const NEIGHBOUR_ADVERTISEMENT: u8 = 136;
    // Router advertisement, redirect, router renumbering.
    const ROUTERS_ONLY: [u8; 3] = [134, 137, 138];
    let Some(&kind) = icmp.first() else {
        return false;
    };
    let options_at = match kind {
        ROUTER_SOLICITATION => 8,
        NEIGHBOUR_SOLICITATION if probe && icmp.get(8..24) != Some(&own.octets()[..]) => {
            return false
        }
        NEIGHBOUR_SOLICITATION => 24,
        NEIGHBOUR_ADVERTISEMENT => {
            let Some(target) = icmp.get(8..24) else {
                return false;
            };
            if target != own.octets() {
                return false;
            }
            24
        }
        k if ROUTERS_ONLY.contains(&k) => return false,
        _ => return true,
    };
    link_layer_options_are(mac, icmp.get(options_at..).unwrap_or_default())
}

/// Whether every source or target link-layer address option names `mac` (and all options
/// can be read).
fn link_layer_options_are(mac: MacAddr, mut options: &[u8]) -> bool {
    while !options.is_empty() {
        let length = options.get(1).map_or(0, |&l| l as usize * 8);
        if length == 0 || length > options.len() {
            return false;
        }
        // Source (1) and target (2) link-layer address.
        if matches!(options[0], 1 | 2) && options[2..8] != mac.0 {
            return false;
        }
        options = &options[length..];
    }
    true
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

    /// An Ethernet frame from `MAC` with an IPv6 header from `src` and `payload` after it
    /// (`next`: its protocol).
    fn ipv6(src: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0x33, 0x33, 0, 0, 0, 1];
        b.extend_from_slice(&MAC.0);
        b.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        b.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        b.extend_from_slice(&[next, 255]);
        b.extend_from_slice(&src.octets());
        b.extend_from_slice(&"ff02::1".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(payload);
        b
    }

    /// Neighbour discovery of `kind` about `target`, with a link-layer option (`option`:
    /// 1 source, 2 target) naming `mac`.
    fn nd(kind: u8, target: Ipv6Addr, option: u8, mac: MacAddr) -> Vec<u8> {
        let mut icmp = vec![kind, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&target.octets());
        icmp.extend_from_slice(&[option, 1]);
        icmp.extend_from_slice(&mac.0);
        icmp
    }

    #[test]
    fn a_bound_port_speaks_ipv6_only_as_itself_and_never_as_a_router() {
        let mut s = PortSecurity::default();
        s.set(
            3,
            Some(PortBinding {
                mac: MAC,
                ip: Some(IP),
            }),
        );
        let own = link_local_of(MAC);
        assert_eq!(own, "fe80::ff:fe00:102".parse::<Ipv6Addr>().unwrap());
        let other = link_local_of(OTHER);
        let echo = [128, 0, 0, 0, 0, 1, 0, 1];
        assert!(s.allows(3, &ipv6(own, 58, &echo)));
        assert!(!s.allows(3, &ipv6(other, 58, &echo)), "another's source");
        let udp = [0u8; 12];
        assert!(s.allows(3, &ipv6(own, 17, &udp)));
        assert!(!s.allows(3, &ipv6("2001:db8::1".parse().unwrap(), 17, &udp)));
        // Duplicate address detection and MLD come from `::`; a probe for another's address
        // would keep that pod from taking it.
        let dad = nd(135, own, 2, MAC)[..24].to_vec();
        assert!(s.allows(3, &ipv6(Ipv6Addr::UNSPECIFIED, 58, &dad)));
        let their_dad = nd(135, other, 2, MAC)[..24].to_vec();
        assert!(!s.allows(3, &ipv6(Ipv6Addr::UNSPECIFIED, 58, &their_dad)));

        assert!(s.allows(3, &ipv6(own, 58, &nd(135, other, 1, MAC))));
        assert!(
            !s.allows(3, &ipv6(own, 58, &nd(135, other, 1, OTHER))),
            "NS for another MAC"
        );
        assert!(s.allows(3, &ipv6(own, 58, &nd(136, own, 2, MAC))));
        assert!(
            !s.allows(3, &ipv6(own, 58, &nd(136, other, 2, MAC))),
            "NA for another's address"
        );
        assert!(
            !s.allows(3, &ipv6(own, 58, &nd(136, own, 2, OTHER))),
            "NA with another MAC"
        );
        let mut rs = vec![133, 0, 0, 0, 0, 0, 0, 0, 1, 1];
        rs.extend_from_slice(&OTHER.0);
        assert!(!s.allows(3, &ipv6(own, 58, &rs)));
        let mut zero_length = nd(135, other, 1, MAC);
        zero_length[25] = 0;
        assert!(
            !s.allows(3, &ipv6(own, 58, &zero_length)),
            "an option that cannot be read"
        );

        let ra = [134, 0, 0, 0, 64, 0, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0];
        let redirect = nd(137, other, 2, MAC);
        assert!(!s.allows(3, &ipv6(own, 58, &ra)));
        assert!(!s.allows(3, &ipv6(own, 58, &redirect)));
        // Behind extension headers (hop-by-hop, then a first fragment) all the same.
        let mut hidden = vec![44, 0, 1, 4, 0, 0, 0, 0];
        hidden.extend_from_slice(&[58, 0, 0, 1, 0, 0, 0, 9]);
        hidden.extend_from_slice(&ra);
        assert!(!s.allows(3, &ipv6(own, 0, &hidden)));
        // A later fragment carries no header to check; a chain that ends early is not read.
        let later = [58, 0, 0, 0x11, 0, 0, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8];
        assert!(s.allows(3, &ipv6(own, 44, &later)));
        assert!(!s.allows(3, &ipv6(own, 0, &[58, 4, 0, 0])));
        let mut truncated = ipv6(own, 58, &echo);
        truncated[19] += 1;
        assert!(!s.allows(3, &truncated), "a payload length past the frame");
        // Unbound ports and MAC-only bindings are not checked.
        let mut from_other = ipv6(other, 58, &ra);
        from_other[6..12].copy_from_slice(&OTHER.0);
        assert!(s.allows(2, &from_other));
        s.set(3, Some(PortBinding { mac: MAC, ip: None }));
        assert!(s.allows(3, &ipv6(own, 58, &ra)));
    }
}
