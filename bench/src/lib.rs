//! Shared pieces of the benchmarks: test frames and interface counters.
#![deny(unsafe_code)]

use pipeline::MacAddr;
use std::net::Ipv4Addr;

/// Bytes of Ethernet and IPv4 headers.
const HEADERS: usize = 14 + 20;
/// The FCS counts in the classic frame sizes (64..1518) but is not in the buffer.
const FCS: usize = 4;

/// The transport of generated frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    /// TCP with SYN set: every frame opens a connection (conntrack's worst case).
    TcpSyn,
    /// TCP with ACK set: the packets of an established connection.
    TcpAck,
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "udp" => Ok(Transport::Udp),
            "tcp-syn" => Ok(Transport::TcpSyn),
            "tcp-ack" => Ok(Transport::TcpAck),
            other => Err(format!(
                "unknown transport {other:?} (expected udp, tcp-syn or tcp-ack)"
            )),
        }
    }
}

/// What to put in generated frames.
#[derive(Debug, Clone)]
pub struct FrameSpec {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    /// Frame size on the wire including the FCS, 64..=1518.
    pub size: usize,
    pub transport: Transport,
}

/// Source ports a flow number walks through before moving to the next source address.
pub const PORTS_PER_ADDRESS: u32 = 60_000;

/// One IPv4 frame (UDP or TCP) with correct checksums. Flow `i` uses source port
/// `src_port + i % 60000` and source address `src_ip + i / 60000`, so a million flows are a
/// million distinct 5-tuples.
pub fn test_frame(spec: &FrameSpec, flow: u32) -> Vec<u8> {
    let size = spec.size.clamp(64, 1518);
    let l4_header = if spec.transport == Transport::Udp {
        8
    } else {
        20
    };
    let payload = vec![0xa5u8; size - FCS - HEADERS - l4_header];
    let mut frame = Vec::with_capacity(size);
    let src_ip = Ipv4Addr::from(u32::from(spec.src_ip).wrapping_add(flow / PORTS_PER_ADDRESS));
    let src_port = spec
        .src_port
        .wrapping_add((flow % PORTS_PER_ADDRESS) as u16);
    let ip = etherparse::PacketBuilder::ethernet2(spec.src_mac.0, spec.dst_mac.0).ipv4(
        src_ip.octets(),
        spec.dst_ip.octets(),
        64,
    );
    let written = match spec.transport {
        Transport::Udp => ip.udp(src_port, spec.dst_port).write(&mut frame, &payload),
        Transport::TcpSyn => ip
            .tcp(src_port, spec.dst_port, 1, 64_000)
            .syn()
            .write(&mut frame, &payload),
        Transport::TcpAck => ip
            .tcp(src_port, spec.dst_port, 2, 64_000)
            .ack(1)
            .write(&mut frame, &payload),
    };
    written.expect("writing to a Vec cannot fail");
    frame
}

/// An interface counter from sysfs (of the network namespace `/sys` was mounted for; `ip netns
/// exec` mounts the namespace's own).
pub fn link_counter(dev: &str, counter: &str) -> std::io::Result<u64> {
    let path = format!("/sys/class/net/{dev}/statistics/{counter}");
    let text = std::fs::read_to_string(&path)?;
    text.trim()
        .parse()
        .map_err(|_| std::io::Error::other(format!("{path}: not a number: {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(size: usize) -> FrameSpec {
        FrameSpec {
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            src_ip: Ipv4Addr::new(198, 18, 0, 1),
            dst_ip: Ipv4Addr::new(198, 18, 0, 2),
            src_port: 1024,
            dst_port: 9,
            size,
            transport: Transport::Udp,
        }
    }

    #[test]
    fn frames_have_the_wire_size_and_valid_checksums() {
        for size in [64, 128, 1518] {
            let frame = test_frame(&spec(size), 3);
            assert_eq!(frame.len(), size - 4);
            let parsed = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = parsed.net else {
                panic!("not IPv4")
            };
            let header = ip.header().to_header();
            assert_eq!(header.header_checksum, header.calc_header_checksum());
            let Some(etherparse::TransportSlice::Udp(udp)) = parsed.transport else {
                panic!("not UDP")
            };
            assert_eq!(udp.source_port(), 1027);
            let expected = udp
                .to_header()
                .calc_checksum_ipv4(&header, udp.payload())
                .unwrap();
            assert_eq!(udp.checksum(), expected);
        }
    }

    #[test]
    fn tcp_frames_have_the_wire_size_flags_and_checksum() {
        for (transport, syn) in [(Transport::TcpSyn, true), (Transport::TcpAck, false)] {
            let frame = test_frame(
                &FrameSpec {
                    transport,
                    ..spec(64)
                },
                0,
            );
            assert_eq!(frame.len(), 60);
            let parsed = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = parsed.net else {
                panic!("not IPv4")
            };
            let Some(etherparse::TransportSlice::Tcp(tcp)) = parsed.transport else {
                panic!("not TCP")
            };
            assert_eq!(tcp.syn(), syn);
            assert_eq!(tcp.ack(), !syn);
            let header = ip.header().to_header();
            assert_eq!(
                tcp.checksum(),
                tcp.to_header()
                    .calc_checksum_ipv4(&header, tcp.payload())
                    .unwrap()
            );
        }
    }

    #[test]
    fn flows_beyond_the_port_range_move_to_the_next_source_address() {
        let far = test_frame(&spec(64), PORTS_PER_ADDRESS + 5);
        let parsed = etherparse::SlicedPacket::from_ethernet(&far).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = parsed.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().source_addr(), Ipv4Addr::new(198, 18, 0, 2));
        let Some(etherparse::TransportSlice::Udp(udp)) = parsed.transport else {
            panic!("not UDP")
        };
        assert_eq!(udp.source_port(), 1029);
    }
}
