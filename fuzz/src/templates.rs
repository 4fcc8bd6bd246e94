//! Frames of the traffic a node sees, for the fuzzer to mutate: pods to services, to the
//! outside, to other nodes' pods (host-gw and the overlay), ARP, VXLAN from the peer, fragments,
//! ICMP errors, other protocols, spoofing, NodePort from outside.

use super::*;
use etherparse::PacketBuilder;
use pipeline::wire::arp::{ArpRepr, ARP_REPLY, ARP_REQUEST};
use pipeline::wire::ipv4::Ipv4Packet;

fn tcp(src_mac: MacAddr, dst_mac: MacAddr, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let mut b = Vec::new();
    PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(src.0.octets(), dst.0.octets(), 64)
        .tcp(src.1, dst.1, 1, 64000)
        .syn()
        .write(&mut b, b"GET /")
        .unwrap();
    b
}

fn udp(src_mac: MacAddr, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), len: usize) -> Vec<u8> {
    let mut b = Vec::new();
    PacketBuilder::ethernet2(src_mac.0, GW_MAC.0)
        .ipv4(src.0.octets(), dst.0.octets(), 64)
        .udp(src.1, dst.1)
        .write(&mut b, &vec![0x5a; len])
        .unwrap();
    b
}

fn arp(op: u16, eth_dst: MacAddr, sender: (MacAddr, Ipv4Addr), target_ip: Ipv4Addr) -> Vec<u8> {
    ArpRepr {
        operation: op,
        ..ArpRepr::request(sender, target_ip)
    }
    .frame(eth_dst)
}

/// `inner` as the peer's VTEP sends it to us.
fn vxlan(inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    payload.extend_from_slice(inner);
    let mut b = Vec::new();
    PacketBuilder::ethernet2(router_mac().0, GW_MAC.0)
        .ipv4(PEER_VTEP.octets(), NODE_IP.octets(), 64)
        .udp(50000, 4789)
        .write(&mut b, &payload)
        .unwrap();
    b
}

/// Recomputes the IPv4 header checksum of an Ethernet frame carrying IPv4, if it has one.
pub fn refill_ipv4_checksum(frame: &mut [u8]) {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return;
    }
    if let Ok(mut ip) = Ipv4Packet::new_quoted(&mut frame[14..]) {
        ip.fill_checksum();
    }
}

/// Cuts a UDP frame's IPv4 packet in two fragments at byte 1480 of its payload.
fn fragments(whole: &[u8]) -> [Vec<u8>; 2] {
    let (head, payload) = whole.split_at(34);
    let (first, rest) = payload.split_at(1480.min(payload.len()));
    let piece = |data: &[u8], offset: usize, more: bool| {
        let mut f = head.to_vec();
        f.extend_from_slice(data);
        f[16..18].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
        f[18..20].copy_from_slice(&0x4242u16.to_be_bytes());
        let flags = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
        f[20..22].copy_from_slice(&flags.to_be_bytes());
        refill_ipv4_checksum(&mut f);
        f
    };
    [piece(first, 0, true), piece(rest, first.len(), false)]
}

/// ARP that teaches the gateway its pods, the router, node 2 and the peer's VTEP.
pub fn announcements() -> Vec<(PortId, Vec<u8>)> {
    let gw_ip = Ipv4Addr::new(10, 244, 1, 1);
    let mut out: Vec<(PortId, Vec<u8>)> = (0..3)
        .map(|i| {
            let sender = (pod_mac(i), POD_IPS[i]);
            (
                i as PortId,
                arp(ARP_REQUEST, MacAddr::BROADCAST, sender, gw_ip),
            )
        })
        .collect();
    for ip in [ROUTER, Ipv4Addr::new(198, 18, 0, 2), PEER_VTEP] {
        let sender = (router_mac(), ip);
        out.push((
            UPLINK,
            arp(ARP_REQUEST, MacAddr::BROADCAST, sender, NODE_IP),
        ));
    }
    out
}

/// Every template with the port it arrives on.
pub fn all() -> Vec<(PortId, Vec<u8>)> {
    let pod = |i: usize| (pod_mac(i), POD_IPS[i]);
    let t = vec![
        tcp(pod(0).0, GW_MAC, (POD_IPS[0], 40000), (VIP, 80)),
        udp(pod(1).0, (POD_IPS[1], 5353), (VIP, 53), 12),
        tcp(pod(0).0, GW_MAC, (POD_IPS[0], 40001), (EXT, 443)),
        tcp(pod(0).0, GW_MAC, (POD_IPS[0], 40002), (PEER_POD, 80)),
        tcp(pod(0).0, GW_MAC, (POD_IPS[0], 40003), (HOST_GW_POD, 80)),
        tcp(pod(0).0, pod(1).0, (POD_IPS[0], 40004), (POD_IPS[1], 80)),
        tcp(pod(1).0, pod(0).0, (POD_IPS[1], 8080), (POD_IPS[0], 40000)),
        tcp(pod(2).0, GW_MAC, (POD_IPS[0], 40005), (EXT, 80)),
        tcp(router_mac(), GW_MAC, (EXT, 5555), (NODE_IP, 30080)),
        tcp(router_mac(), GW_MAC, (EXT, 443), (NODE_IP, 40001)),
        tcp(router_mac(), GW_MAC, (EXT, 5555), (POD_IPS[0], 8080)),
        arp(
            ARP_REQUEST,
            MacAddr::BROADCAST,
            pod(0),
            Ipv4Addr::new(10, 244, 1, 1),
        ),
        arp(ARP_REPLY, GW_MAC, pod(1), Ipv4Addr::new(10, 244, 1, 1)),
        arp(
            ARP_REQUEST,
            MacAddr::BROADCAST,
            (pod(2).0, Ipv4Addr::new(10, 244, 1, 1)),
            Ipv4Addr::new(10, 244, 1, 1),
        ),
        arp(
            ARP_REQUEST,
            MacAddr::BROADCAST,
            (router_mac(), ROUTER),
            NODE_IP,
        ),
        vxlan(&tcp(
            PEER_VTEP_MAC,
            VTEP_MAC,
            (PEER_POD, 33000),
            (POD_IPS[0], 80),
        )),
        vxlan(&arp(
            ARP_REQUEST,
            VTEP_MAC,
            (PEER_VTEP_MAC, PEER_POD),
            POD_IPS[0],
        )),
        udp(pod(0).0, (POD_IPS[0], 7), (EXT, 7), 3000),
        udp(pod(0).0, (POD_IPS[0], 5353), (EXT, 53), 4),
    ];
    let ports: [PortId; 19] = [0, 1, 0, 0, 0, 0, 1, 2, 3, 3, 3, 0, 1, 2, 3, 3, 3, 0, 0];
    let mut t: Vec<(PortId, Vec<u8>)> = ports.into_iter().zip(t).collect();
    let big = udp(pod(0).0, (POD_IPS[0], 9), (EXT, 9), 2000);
    t.extend(fragments(&big).map(|f| (0, f)));
    // An ICMP port unreachable from the outside about a masqueraded datagram.
    let quoted = &udp(pod(0).0, (NODE_IP, 5353), (EXT, 53), 4)[14..14 + 28];
    let mut error = Vec::new();
    PacketBuilder::ethernet2(router_mac().0, GW_MAC.0)
        .ipv4(EXT.octets(), NODE_IP.octets(), 60)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut error, quoted)
        .unwrap();
    t.push((UPLINK, error));
    let mut echo = Vec::new();
    PacketBuilder::ethernet2(pod(0).0 .0, GW_MAC.0)
        .ipv4(POD_IPS[0].octets(), EXT.octets(), 1)
        .icmpv4_echo_request(7, 1)
        .write(&mut echo, b"ping")
        .unwrap();
    t.push((0, echo));
    // GRE, and IPv4 with options.
    let mut gre = tcp(pod(0).0, GW_MAC, (POD_IPS[0], 1), (EXT, 2));
    gre[14 + 9] = 47;
    refill_ipv4_checksum(&mut gre);
    t.push((0, gre));
    let mut options = tcp(pod(0).0, GW_MAC, (POD_IPS[0], 1), (EXT, 2));
    options[14] = 0x46;
    options.splice(34..34, [1u8, 1, 1, 0]);
    let total = (options.len() - 14) as u16;
    options[16..18].copy_from_slice(&total.to_be_bytes());
    refill_ipv4_checksum(&mut options);
    t.push((0, options));
    // UDP to a peer's pod (into the overlay), and from it (out of the overlay).
    t.push((0, udp(pod(0).0, (POD_IPS[0], 6000), (PEER_POD, 5000), 16)));
    let mut inner = Vec::new();
    PacketBuilder::ethernet2(PEER_VTEP_MAC.0, VTEP_MAC.0)
        .ipv4(PEER_POD.octets(), POD_IPS[0].octets(), 64)
        .udp(5000, 6000)
        .write(&mut inner, &[0x5a; 16])
        .unwrap();
    t.push((UPLINK, vxlan(&inner)));
    // A neighbour advertisement from the bound pod behind a hop-by-hop header (port
    // security reads IPv6 from bound ports).
    let own = pipeline::link_local_of(pod(2).0).octets();
    let mut na = vec![0x33, 0x33, 0, 0, 0, 1];
    na.extend_from_slice(&pod(2).0 .0);
    na.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 40, 0, 255]);
    na.extend_from_slice(&own);
    na.extend_from_slice(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    na.extend_from_slice(&[58, 0, 5, 2, 0, 0, 1, 0, 136, 0, 0, 0, 0x20, 0, 0, 0]);
    na.extend_from_slice(&own);
    na.extend_from_slice(&[2, 1]);
    na.extend_from_slice(&pod(2).0 .0);
    t.push((2, na));
    t
}
