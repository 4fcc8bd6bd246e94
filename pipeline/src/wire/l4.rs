//! Transport headers as conntrack and NAT need them: TCP/UDP ports and checksums, TCP flags,
//! ICMP type, code and echo identifier.

use super::checksum;
use super::ipv4::{Ipv4Packet, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACHABLE: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;

/// Bytes needed to read the ports (or the ICMP identifier) of each protocol.
pub fn min_len(protocol: u8) -> usize {
    match protocol {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        PROTO_ICMP => 8,
        _ => 0,
    }
}

pub const PROTO_DCCP: u8 = 33;
pub const PROTO_SCTP: u8 = 132;
pub const PROTO_UDPLITE: u8 = 136;

/// Offset of the checksum field, where the protocol has one we maintain. (SCTP's CRC32c covers
/// no IP address, so address changes leave it valid.)
fn checksum_offset(protocol: u8) -> Option<usize> {
    match protocol {
        PROTO_TCP => Some(16),
        PROTO_UDP | PROTO_DCCP | PROTO_UDPLITE => Some(6),
        PROTO_ICMP => Some(2),
        _ => None,
    }
}

fn read16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// (source, destination) port; for ICMP echo both are the identifier. `None` when too short or
/// not a protocol with ports.
pub fn ports(protocol: u8, l4: &[u8]) -> Option<(u16, u16)> {
    if l4.len() < min_len(protocol) {
        return None;
    }
    match protocol {
        PROTO_TCP | PROTO_UDP => Some((read16(l4, 0), read16(l4, 2))),
        PROTO_ICMP => {
            let id = read16(l4, 4);
            Some((id, id))
        }
        _ => None,
    }
}

/// The ports conntrack keys a flow by: as `ports` for TCP, UDP and ICMP; the port fields of
/// SCTP, DCCP and UDP-Lite (tracked, never rewritten); zero for protocols without ports (GRE,
/// ESP, ...), which are tracked by address alone. `None` when a header is too short.
pub fn tracked_ports(protocol: u8, l4: &[u8]) -> Option<(u16, u16)> {
    match protocol {
        PROTO_TCP | PROTO_UDP | PROTO_ICMP => ports(protocol, l4),
        PROTO_SCTP | PROTO_DCCP | PROTO_UDPLITE if l4.len() >= 4 => {
            Some((read16(l4, 0), read16(l4, 2)))
        }
        PROTO_SCTP | PROTO_DCCP | PROTO_UDPLITE => None,
        _ => Some((0, 0)),
    }
}

pub fn tcp_flags(l4: &[u8]) -> u8 {
    l4.get(13).copied().unwrap_or(0)
}

/// Rewrites a port (for ICMP echo: the identifier), keeping the checksum valid.
pub fn set_port(protocol: u8, l4: &mut [u8], source: bool, port: u16) {
    let at = match (protocol, source) {
        (PROTO_TCP | PROTO_UDP, true) => 0,
        (PROTO_TCP | PROTO_UDP, false) => 2,
        (PROTO_ICMP, _) => 4,
        _ => return,
    };
    if l4.len() < at + 2 {
        return;
    }
    let old = read16(l4, at);
    l4[at..at + 2].copy_from_slice(&port.to_be_bytes());
    adjust_checksum(protocol, l4, |c| checksum::update16(c, old, port));
}

/// Follows an address change in the pseudo-header (TCP, UDP; ICMP has none).
pub fn address_changed(protocol: u8, l4: &mut [u8], old: u32, new: u32) {
    if protocol == PROTO_ICMP {
        return;
    }
    adjust_checksum(protocol, l4, |c| checksum::update32(c, old, new));
}

fn adjust_checksum(protocol: u8, l4: &mut [u8], update: impl Fn(u16) -> u16) {
    let Some(at) = checksum_offset(protocol) else {
        return;
    };
    if l4.len() < at + 2 {
        return;
    }
    let old = read16(l4, at);
    // A UDP checksum of zero means "none": leave it so.
    if protocol == PROTO_UDP && old == 0 {
        return;
    }
    let mut new = update(old);
    if protocol == PROTO_UDP && new == 0 {
        new = 0xffff;
    }
    l4[at..at + 2].copy_from_slice(&new.to_be_bytes());
}

/// What `complete_partial_checksum` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartialChecksum {
    /// Not a TCP or UDP segment that can be judged (other protocol, fragment, truncated).
    NotApplicable,
    /// The field held the pseudo-header sum and the rest was left to offload: finished now.
    Completed,
    /// A complete checksum, right or wrong: left as it is.
    Complete,
}

/// Finishes a TCP or UDP checksum that its sender left to transmit offload (Linux's
/// CHECKSUM_PARTIAL, as veth passes it on: the field holds the folded pseudo-header sum, and
/// the sum over the segment is left to "hardware"). A segment whose field holds anything else,
/// or already verifies, is not touched: a checksum that is simply wrong stays wrong, for the
/// receiver to drop. `ip` is an IPv4 packet that passed `Ipv4Packet::new_checked`.
pub fn complete_partial_checksum(ip: &mut [u8]) -> PartialChecksum {
    let Ok(packet) = Ipv4Packet::new_checked(&*ip) else {
        return PartialChecksum::NotApplicable;
    };
    let proto = packet.protocol();
    let Some(at) = (match proto {
        PROTO_TCP => Some(16),
        PROTO_UDP => Some(6),
        _ => None,
    }) else {
        return PartialChecksum::NotApplicable;
    };
    let (src, dst) = (packet.src().octets(), packet.dst().octets());
    let header_len = packet.header_len();
    let l4_len = packet.payload().len();
    if packet.is_fragment() || l4_len < min_len(proto) || l4_len > u16::MAX as usize {
        return PartialChecksum::NotApplicable;
    }
    let l4 = &mut ip[header_len..header_len + l4_len];
    let field = read16(l4, at);
    let pseudo = checksum::fold(checksum::pseudo_header(src, dst, proto, l4_len as u16));
    if field != pseudo {
        return PartialChecksum::Complete;
    }
    // The field stands for the pseudo-header, so the sum over the segment as it is, complemented,
    // is the checksum — unless that already verifies (a real checksum that happens to equal it).
    let total = checksum::fold(checksum::sum(l4));
    if checksum::fold(checksum::pseudo_header(src, dst, proto, l4_len as u16) + total as u32)
        == 0xffff
    {
        return PartialChecksum::Complete;
    }
    let mut finished = !total;
    if proto == PROTO_UDP && finished == 0 {
        finished = 0xffff;
    }
    l4[at..at + 2].copy_from_slice(&finished.to_be_bytes());
    PartialChecksum::Completed
}

/// Recomputes an ICMP checksum over the whole message.
pub fn fill_icmp_checksum(icmp: &mut [u8]) {
    if icmp.len() < 4 {
        return;
    }
    icmp[2..4].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::Ipv4Packet;

    fn tcp_checksum_ok(ip: &[u8]) -> bool {
        let p = Ipv4Packet::new_checked(ip).unwrap();
        let l4 = p.payload();
        let ph = checksum::pseudo_header(
            p.src().octets(),
            p.dst().octets(),
            PROTO_TCP,
            l4.len() as u16,
        );
        checksum::fold(ph + checksum::sum(l4)) == 0xffff
    }

    #[test]
    fn port_and_address_rewrites_keep_the_tcp_checksum() {
        let mut bytes = Vec::new();
        etherparse::PacketBuilder::ipv4([10, 244, 1, 2], [10, 96, 0, 10], 64)
            .tcp(40000, 80, 7, 1000)
            .syn()
            .write(&mut bytes, b"x")
            .unwrap();
        assert!(tcp_checksum_ok(&bytes));
        let mut p = Ipv4Packet::new_checked(&mut bytes[..]).unwrap();
        assert_eq!(ports(PROTO_TCP, p.payload()), Some((40000, 80)));
        assert_eq!(tcp_flags(p.payload()) & TCP_SYN, TCP_SYN);
        let old = u32::from(p.dst());
        let new = u32::from_be_bytes([10, 244, 1, 3]);
        p.set_dst(new.into());
        address_changed(PROTO_TCP, p.payload_mut(), old, new);
        set_port(PROTO_TCP, p.payload_mut(), false, 8080);
        set_port(PROTO_TCP, p.payload_mut(), true, 33333);
        assert!(tcp_checksum_ok(&bytes));
        let p = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(ports(PROTO_TCP, p.payload()), Some((33333, 8080)));
    }

    /// A segment as a sender with transmit checksum offload hands it over: the field holds
    /// the folded pseudo-header sum.
    fn partial(mut ip: Vec<u8>, at: usize) -> Vec<u8> {
        let p = Ipv4Packet::new_checked(&ip[..]).unwrap();
        let (src, dst, proto, len) = (p.src(), p.dst(), p.protocol(), p.payload().len());
        let pseudo = checksum::fold(checksum::pseudo_header(
            src.octets(),
            dst.octets(),
            proto,
            len as u16,
        ));
        ip[20 + at..20 + at + 2].copy_from_slice(&pseudo.to_be_bytes());
        ip
    }

    fn segment(tcp: bool, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        let builder = etherparse::PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 1, 3], 64);
        if tcp {
            builder
                .tcp(40000, 80, 7, 1000)
                .write(&mut b, payload)
                .unwrap();
        } else {
            builder.udp(40000, 53).write(&mut b, payload).unwrap();
        }
        b
    }

    #[test]
    fn partial_checksums_are_finished_and_wrong_ones_left_alone() {
        for (tcp, at) in [(true, 16), (false, 6)] {
            for len in [0, 1, 17, 1400, 8900] {
                let payload: Vec<u8> = (0..len).map(|i| (i * 31 % 256) as u8).collect();
                let good = segment(tcp, &payload);
                let mut p = partial(good.clone(), at);
                assert_ne!(p, good);
                assert_eq!(
                    complete_partial_checksum(&mut p),
                    PartialChecksum::Completed
                );
                assert_eq!(p, good, "tcp={tcp} len={len}");
                // Already complete: untouched.
                assert_eq!(complete_partial_checksum(&mut p), PartialChecksum::Complete);
                assert_eq!(p, good);
                // Simply wrong: untouched.
                let mut wrong = good.clone();
                wrong[20 + at] ^= 0x10;
                let before = wrong.clone();
                assert_eq!(
                    complete_partial_checksum(&mut wrong),
                    PartialChecksum::Complete
                );
                assert_eq!(wrong, before);
            }
        }
        let mut icmp = Vec::new();
        etherparse::PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 1, 3], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut icmp, b"x")
            .unwrap();
        assert_eq!(
            complete_partial_checksum(&mut icmp),
            PartialChecksum::NotApplicable
        );
    }

    #[test]
    fn protocols_without_ports_are_tracked_by_address() {
        assert_eq!(tracked_ports(47, &[]), Some((0, 0)));
        assert_eq!(tracked_ports(PROTO_SCTP, &[0, 1, 0, 2, 9, 9]), Some((1, 2)));
        assert_eq!(tracked_ports(PROTO_SCTP, &[0, 1]), None);
        assert_eq!(tracked_ports(PROTO_UDP, &[0; 7]), None);
    }

    #[test]
    fn short_transport_headers_have_no_ports() {
        assert_eq!(ports(PROTO_TCP, &[0; 19]), None);
        assert_eq!(ports(PROTO_UDP, &[0; 7]), None);
        assert_eq!(ports(47, &[0; 40]), None);
    }
}
