//! Gateway unit tests: packets built with etherparse through one gateway, as a pod, the
//! uplink router, another node and an external host would send them.

use super::*;
use crate::l2::BridgeConfig;
use crate::l3::Ipv4Cidr;
use crate::wire::arp::{ArpRepr, ARP_REPLY, ARP_REQUEST};
use crate::wire::ipv4::{PROTO_TCP, PROTO_UDP};
use crate::wire::MacAddr;
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use std::net::{Ipv4Addr, SocketAddrV4};

pub(super) const GW_MAC: MacAddr = MacAddr([0x02, 0xaa, 0, 0, 0, 1]);
pub(super) const POD1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
pub(super) const POD2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
pub(super) const POD3: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 4);
pub(super) const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
pub(super) const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub(super) const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
pub(super) const NODE2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub(super) const EXT: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
pub(super) const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub(super) const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
pub(super) const UPLINK: PortId = 3;
pub(super) const ROUTER_MAC: MacAddr = MacAddr([0x02, 0xbb, 0, 0, 0, 0xfe]);

pub(super) fn pod_mac(i: u8) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 1, i])
}

pub(super) fn backends(list: &[(Ipv4Addr, u16)]) -> Vec<SocketAddrV4> {
    list.iter()
        .map(|(ip, p)| SocketAddrV4::new(*ip, *p))
        .collect()
}

pub(super) fn config() -> GatewayConfig {
    GatewayConfig {
        mac: GW_MAC,
        pod_ports: vec![0, 1, 2],
        gateway: "10.244.1.1/24".parse().unwrap(),
        uplink: Some(UplinkConfig {
            port: UPLINK,
            address: "198.18.0.1/24".parse().unwrap(),
            next_hop: ROUTER,
            masquerade: true,
            cluster_cidrs: vec![
                "10.244.0.0/16".parse().unwrap(),
                "10.96.0.0/12".parse().unwrap(),
            ],
            nat_ports: (1024, 65535),
            mtu: 1500,
        }),
        routes: vec![("10.244.2.0/24".parse::<Ipv4Cidr>().unwrap(), NODE2)],
        services: vec![ServiceConfig {
            name: "web".into(),
            cluster_ip: VIP,
            port: 80,
            proto: PROTO_TCP,
            node_port: Some(30080),
            backends: backends(&[(POD1, 8080), (POD2, 8080), (REMOTE_POD, 8080)]),
            affinity_timeout_s: None,
            external_local: None,
            node_port_backends: None,
        }],
        vxlan: None,
        conntrack_capacity: 262_144,
        neighbor_age_ms: 300_000,
    }
}

pub(super) fn gateway(config: &GatewayConfig) -> Gateway {
    Gateway::new(
        GatewayShared::new(config),
        crate::l2::Bridge::new(&config.pod_bridge(&BridgeConfig::default())),
    )
}

pub(super) struct Out {
    pub(super) next: Disposition,
    pub(super) frame: Vec<u8>,
    pub(super) emit: Vec<Emit>,
}

/// Sends one frame as an owned buffer (it may grow at the front: VXLAN encapsulation).
pub(super) fn send(gw: &mut Gateway, mut frame: Vec<u8>, ingress: PortId, now: u64) -> Out {
    let mut next = [Disposition::Drop];
    let mut emit = Vec::new();
    gw.process(
        std::slice::from_mut(&mut frame),
        ingress,
        now,
        &mut next,
        &mut emit,
    );
    Out {
        next: next[0],
        frame,
        emit,
    }
}

pub(super) fn tcp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    syn: bool,
    ttl: u8,
) -> Vec<u8> {
    let mut b = Vec::new();
    let builder = PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(src.0.octets(), dst.0.octets(), ttl)
        .tcp(src.1, dst.1, 1, 64000);
    let builder = if syn { builder.syn() } else { builder.ack(1) };
    builder.write(&mut b, b"hello").unwrap();
    b
}

/// A UDP datagram from pod 1 to `dst` with `payload` bytes, the DF bit set or not.
pub(super) fn udp_from_pod1(dst: Ipv4Addr, sport: u16, payload: usize, df: bool) -> Vec<u8> {
    let mut b = Vec::new();
    PacketBuilder::ethernet2(pod_mac(1).0, GW_MAC.0)
        .ipv4(POD1.octets(), dst.octets(), 64)
        .udp(sport, 9)
        .write(&mut b, &vec![0u8; payload])
        .unwrap();
    if df {
        b[14 + 6] |= 0x40;
    } else {
        b[14 + 6] &= !0x40;
    }
    crate::wire::ipv4::Ipv4Packet::new_quoted(&mut b[14..])
        .unwrap()
        .fill_checksum();
    b
}

pub(super) fn arp(
    op: u16,
    sender: (MacAddr, Ipv4Addr),
    target: (MacAddr, Ipv4Addr),
    eth_dst: MacAddr,
) -> Vec<u8> {
    ArpRepr {
        operation: op,
        sender_mac: sender.0,
        sender_ip: sender.1,
        target_mac: target.0,
        target_ip: target.1,
    }
    .frame(eth_dst)
}

/// (src, sport, dst, dport) of a frame; asserts valid IPv4 and TCP/UDP checksums.
pub(super) fn addresses(frame: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    let p = SlicedPacket::from_ethernet(frame).expect("parses");
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!("not IPv4")
    };
    let h = ip.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 checksum");
    let (sport, dport) = match p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let expected = t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap();
            assert_eq!(t.checksum(), expected, "TCP checksum");
            (t.source_port(), t.destination_port())
        }
        Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
        _ => (0, 0),
    };
    (h.source.into(), sport, h.destination.into(), dport)
}

pub(super) fn eth_dst(frame: &[u8]) -> MacAddr {
    MacAddr::from_bytes(&frame[0..6])
}

/// A SYN from pod 3 (port 2) to the service VIP, from `sport`.
pub(super) fn pod3_syn_to_vip(gw: &mut Gateway, sport: u16, now: u64) -> Out {
    send(
        gw,
        tcp(pod_mac(3), GW_MAC, (POD3, sport), (VIP, 80), true, 64),
        2,
        now,
    )
}

/// A gateway whose service has one backend, pod 1 (port 0); neighbours learned.
pub(super) fn one_local_backend() -> Gateway {
    let mut c = config();
    c.services[0].backends = backends(&[(POD1, 8080)]);
    let mut gw = gateway(&c);
    learn_neighbors(&mut gw);
    gw
}

/// Pod 1's TCP answer to pod 3's connection from `sport`, straight to pod 3's MAC (bridged).
pub(super) fn pod1_answers_pod3(gw: &mut Gateway, sport: u16, now: u64) -> Out {
    send(
        gw,
        tcp(
            pod_mac(1),
            pod_mac(3),
            (POD1, 8080),
            (POD3, sport),
            false,
            64,
        ),
        0,
        now,
    )
}

/// Pod 3 (port 2) asks for pod 1's address on the segment: the bridge learns where pod 3 is.
pub(super) fn pod3_asks_for_pod1(gw: &mut Gateway, now: u64) {
    send(
        gw,
        arp(
            ARP_REQUEST,
            (pod_mac(3), POD3),
            (MacAddr::ZERO, POD1),
            MacAddr::BROADCAST,
        ),
        2,
        now,
    );
}

/// Teaches the gateway where the pods and the routers are, as their ARP would.
pub(super) fn learn_neighbors(gw: &mut Gateway) {
    learn_pods(gw);
    for ip in [ROUTER, NODE2] {
        let out = send(
            gw,
            arp(
                ARP_REQUEST,
                (ROUTER_MAC, ip),
                (MacAddr::ZERO, NODE_IP),
                MacAddr::BROADCAST,
            ),
            UPLINK,
            0,
        );
        assert_eq!(out.next, Disposition::Forward(UPLINK));
    }
}

pub(super) fn learn_pods(gw: &mut Gateway) {
    for (i, ip) in [(1u8, POD1), (2, POD2), (3, POD3)] {
        let out = send(
            gw,
            arp(
                ARP_REQUEST,
                (pod_mac(i), ip),
                (MacAddr::ZERO, GW_IP),
                MacAddr::BROADCAST,
            ),
            (i - 1) as PortId,
            0,
        );
        assert_eq!(out.next, Disposition::Forward((i - 1) as PortId));
    }
}

#[test]
fn answers_arp_for_the_gateway_and_the_node_address() {
    let mut gw = gateway(&config());
    let out = send(
        &mut gw,
        arp(
            ARP_REQUEST,
            (pod_mac(1), POD1),
            (MacAddr::ZERO, GW_IP),
            MacAddr::BROADCAST,
        ),
        0,
        0,
    );
    assert_eq!(out.next, Disposition::Forward(0));
    let reply = ArpRepr::parse(&out.frame[14..]).unwrap();
    assert_eq!(
        (reply.operation, reply.sender_mac, reply.sender_ip),
        (ARP_REPLY, GW_MAC, GW_IP)
    );
    assert_eq!((reply.target_mac, reply.target_ip), (pod_mac(1), POD1));
    assert_eq!(eth_dst(&out.frame), pod_mac(1));
    // Learned from the request.
    assert_eq!(gw.shared.neighbors.read().get(POD1, 1).unwrap().port, 0);
    // The node address answers on the uplink only.
    let out = send(
        &mut gw,
        arp(
            ARP_REQUEST,
            (ROUTER_MAC, ROUTER),
            (MacAddr::ZERO, NODE_IP),
            MacAddr::BROADCAST,
        ),
        UPLINK,
        0,
    );
    assert_eq!(out.next, Disposition::Forward(UPLINK));
    let out = send(
        &mut gw,
        arp(
            ARP_REQUEST,
            (ROUTER_MAC, ROUTER),
            (MacAddr::ZERO, Ipv4Addr::new(198, 18, 0, 9)),
            MacAddr::BROADCAST,
        ),
        UPLINK,
        0,
    );
    assert_eq!(out.next, Disposition::Drop);
    // ARP between pods is bridged on the pod segment, never to the uplink.
    let out = send(
        &mut gw,
        arp(
            ARP_REQUEST,
            (pod_mac(1), POD1),
            (MacAddr::ZERO, POD2),
            MacAddr::BROADCAST,
        ),
        0,
        0,
    );
    assert_eq!(out.next, Disposition::Flood(PortMask::of(&[1, 2])));
}

#[test]
fn answers_ping_to_the_gateway() {
    let mut gw = gateway(&config());
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(pod_mac(1).0, GW_MAC.0)
        .ipv4(POD1.octets(), GW_IP.octets(), 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut frame, b"ping")
        .unwrap();
    let out = send(&mut gw, frame, 0, 0);
    assert_eq!(out.next, Disposition::Forward(0));
    let p = SlicedPacket::from_ethernet(&out.frame).unwrap();
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!()
    };
    assert_eq!(
        (ip.header().source_addr(), ip.header().destination_addr()),
        (GW_IP, POD1)
    );
    let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!()
    };
    assert!(matches!(
        icmp.icmp_type(),
        etherparse::Icmpv4Type::EchoReply(_)
    ));
    assert_eq!(
        icmp.checksum(),
        icmp.icmp_type().calc_checksum(icmp.payload())
    );
    assert_eq!(gw.counters().get(GwCounter::IcmpEchoReplied), 1);
}

/// A fresh gateway that has seen one SYN from pod 3 to the VIP from `sport`, with nothing
/// resolved yet: what it did with the SYN, and the backend Maglev picked.
fn first_syn_to_vip(sport: u16) -> (Gateway, Out, Ipv4Addr) {
    let mut gw = gateway(&config());
    let out = pod3_syn_to_vip(&mut gw, sport, 0);
    let backend = {
        let flows = &gw.shared.conntrack;
        assert_eq!(flows.len(), 1);
        let t = crate::conntrack::Tuple {
            src: POD3,
            dst: VIP,
            sport,
            dport: 80,
            proto: PROTO_TCP,
            zone: 0,
        };
        flows.find(&t).expect("the SYN is tracked").flow.reply.src
    };
    assert!([POD1, POD2, REMOTE_POD].contains(&backend), "{backend}");
    (gw, out, backend)
}

/// The first source port from `from` for which Maglev sends pod 3's SYN to a backend `wanted`
/// accepts; fails the test if none of 64 ports does (each backend has a third of the table).
fn sport_picking(from: u16, wanted: impl Fn(Ipv4Addr) -> bool) -> u16 {
    (from..from + 64)
        .find(|&sport| wanted(first_syn_to_vip(sport).2))
        .expect("no source port among 64 picks the wanted backend")
}

#[test]
fn service_traffic_to_a_remote_backend_waits_for_the_other_node() {
    let sport = sport_picking(40000, |b| b == REMOTE_POD);
    let (gw, out, _) = first_syn_to_vip(sport);
    // Routed to node 2 over the uplink: ARP for node 2 there.
    assert_eq!(out.next, Disposition::Consumed);
    assert_eq!(out.emit.len(), 1, "an ARP request");
    assert_eq!(out.emit[0].to, PortMask::single(UPLINK));
    let request = ArpRepr::parse(&out.emit[0].frame[14..]).unwrap();
    assert_eq!(
        (request.operation, request.target_ip, request.sender_ip),
        (ARP_REQUEST, NODE2, NODE_IP)
    );
    assert_eq!(gw.counters().get(GwCounter::NatService), 1);
    assert_eq!(gw.counters().get(GwCounter::NeighborQueued), 1);
}

#[test]
fn service_traffic_is_dnated_to_a_backend_and_back() {
    // A source port whose connection Maglev sends to a backend on this node.
    let sport = sport_picking(40000, |b| b != REMOTE_POD);
    let (mut gw, out, backend) = first_syn_to_vip(sport);
    // The first packet waits for ARP: nothing is known yet.
    assert_eq!(out.next, Disposition::Consumed);
    assert_eq!(out.emit.len(), 1, "an ARP request");
    let request = ArpRepr::parse(&out.emit[0].frame[14..]).unwrap();
    assert_eq!(
        (request.operation, request.target_ip, request.sender_ip),
        (ARP_REQUEST, backend, GW_IP)
    );
    assert_eq!(out.emit[0].to, PortMask::of(&[0, 1, 2]));
    // The backend answers; the queued SYN goes out to it, translated.
    let (i, port) = if backend == POD1 { (1, 0) } else { (2, 1) };
    let out = send(
        &mut gw,
        arp(ARP_REPLY, (pod_mac(i), backend), (GW_MAC, GW_IP), GW_MAC),
        port,
        1,
    );
    // What becomes of the reply itself is `an_arp_reply_to_the_gateway_is_consumed`'s business.
    assert_eq!(out.emit.len(), 1);
    assert_eq!(out.emit[0].to, PortMask::single(port));
    assert_eq!(eth_dst(&out.emit[0].frame), pod_mac(i));
    assert_eq!(addresses(&out.emit[0].frame), (POD3, sport, backend, 8080));
    // The backend's reply comes back from the VIP.
    send(
        &mut gw,
        arp(
            ARP_REQUEST,
            (pod_mac(3), POD3),
            (MacAddr::ZERO, GW_IP),
            MacAddr::BROADCAST,
        ),
        2,
        1,
    );
    let out = send(
        &mut gw,
        tcp(
            pod_mac(i),
            GW_MAC,
            (backend, 8080),
            (POD3, sport),
            false,
            64,
        ),
        port,
        2,
    );
    assert_eq!(out.next, Disposition::Forward(2));
    assert_eq!(addresses(&out.frame), (VIP, 80, POD3, sport));
    assert_eq!(gw.counters().get(GwCounter::NatService), 1);
}

#[test]
fn an_arp_reply_to_the_gateway_is_consumed() {
    let mut gw = gateway(&config());
    // Something waits for pod 1, so the gateway asked for it.
    let out = send(
        &mut gw,
        tcp(pod_mac(3), GW_MAC, (POD3, 1000), (POD1, 80), true, 64),
        2,
        0,
    );
    assert_eq!(out.next, Disposition::Consumed);
    let out = send(
        &mut gw,
        arp(ARP_REPLY, (pod_mac(1), POD1), (GW_MAC, GW_IP), GW_MAC),
        0,
        1,
    );
    assert_eq!(out.emit.len(), 1, "the queued SYN is released");
    assert_eq!(
        out.next,
        Disposition::Consumed,
        "an ARP reply to us is for us: not bridged, and no drop either"
    );
    assert_eq!(gw.counters().get(GwCounter::Bridged), 0);
}

#[test]
fn connections_spread_over_all_backends() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    let mut seen = std::collections::HashMap::new();
    for sport in 0..300u16 {
        let out = pod3_syn_to_vip(&mut gw, 20000 + sport, 0);
        let (_, _, dst, dport) = addresses(&out.frame);
        assert_eq!(dport, 8080);
        *seen.entry(dst).or_insert(0) += 1;
    }
    for b in [POD1, POD2, REMOTE_POD] {
        let n = seen.get(&b).copied().unwrap_or(0);
        assert!(
            (60..=140).contains(&n),
            "backend {b} got {n} of 300: {seen:?}"
        );
    }
}

#[test]
fn pod_traffic_to_the_outside_is_masqueraded() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    let out = send(
        &mut gw,
        tcp(pod_mac(1), GW_MAC, (POD1, 5555), (EXT, 8080), true, 64),
        0,
        0,
    );
    assert_eq!(out.next, Disposition::Forward(UPLINK));
    assert_eq!(eth_dst(&out.frame), ROUTER_MAC);
    let (src, sport, dst, dport) = addresses(&out.frame);
    assert_eq!((src, dst, dport), (NODE_IP, EXT, 8080));
    let back = send(
        &mut gw,
        tcp(ROUTER_MAC, GW_MAC, (EXT, 8080), (NODE_IP, sport), false, 60),
        UPLINK,
        1,
    );
    assert_eq!(back.next, Disposition::Forward(0));
    assert_eq!(addresses(&back.frame), (EXT, 8080, POD1, 5555));
    assert_eq!(gw.counters().get(GwCounter::NatMasquerade), 1);
    // Cluster destinations (the other node's pods) are not masqueraded.
    let out = send(
        &mut gw,
        tcp(
            pod_mac(1),
            GW_MAC,
            (POD1, 5556),
            (REMOTE_POD, 8080),
            true,
            64,
        ),
        0,
        2,
    );
    assert_eq!(out.next, Disposition::Forward(UPLINK));
    assert_eq!(addresses(&out.frame), (POD1, 5556, REMOTE_POD, 8080));
}

#[test]
fn unsolicited_inbound_to_pods_is_dropped_but_other_nodes_pods_get_through() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    let out = send(
        &mut gw,
        tcp(ROUTER_MAC, GW_MAC, (EXT, 1234), (POD1, 8080), true, 60),
        UPLINK,
        0,
    );
    assert_eq!(out.next, Disposition::Drop);
    assert_eq!(gw.counters().get(GwCounter::DropUnsolicited), 1);
    let out = send(
        &mut gw,
        tcp(
            ROUTER_MAC,
            GW_MAC,
            (REMOTE_POD, 1234),
            (POD1, 8080),
            true,
            60,
        ),
        UPLINK,
        0,
    );
    assert_eq!(out.next, Disposition::Forward(0));
    // A port of the node that is not a NodePort.
    let out = send(
        &mut gw,
        tcp(ROUTER_MAC, GW_MAC, (EXT, 1234), (NODE_IP, 22), true, 60),
        UPLINK,
        0,
    );
    assert_eq!(out.next, Disposition::Drop);
    assert_eq!(gw.counters().get(GwCounter::DropLocalUnhandled), 1);
}

#[test]
fn node_port_is_dnated_and_snated_to_the_node() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    let out = send(
        &mut gw,
        tcp(ROUTER_MAC, GW_MAC, (EXT, 4321), (NODE_IP, 30080), true, 60),
        UPLINK,
        0,
    );
    let (src, sport, dst, dport) = addresses(&out.frame);
    assert_eq!((src, dport), (NODE_IP, 8080));
    assert!([POD1, POD2, REMOTE_POD].contains(&dst));
    let (port, mac) = match dst {
        d if d == POD1 => (0, pod_mac(1)),
        d if d == POD2 => (1, pod_mac(2)),
        _ => (UPLINK, ROUTER_MAC),
    };
    assert_eq!(out.next, Disposition::Forward(port));
    // The backend answers the node; the external host sees the NodePort answer.
    let reply = send(
        &mut gw,
        tcp(mac, GW_MAC, (dst, 8080), (NODE_IP, sport), false, 64),
        port,
        1,
    );
    assert_eq!(reply.next, Disposition::Forward(UPLINK));
    assert_eq!(addresses(&reply.frame), (NODE_IP, 30080, EXT, 4321));
    assert_eq!(gw.counters().get(GwCounter::NatNodePort), 1);
}

#[test]
fn a_pod_reaching_itself_through_its_service_is_hairpinned() {
    let mut c = config();
    c.services[0].backends = backends(&[(POD1, 8080)]);
    let mut gw = gateway(&c);
    learn_neighbors(&mut gw);
    let out = send(
        &mut gw,
        tcp(pod_mac(1), GW_MAC, (POD1, 7000), (VIP, 80), true, 64),
        0,
        0,
    );
    assert_eq!(out.next, Disposition::Forward(0));
    let (src, sport, dst, dport) = addresses(&out.frame);
    assert_eq!((src, dst, dport), (GW_IP, POD1, 8080));
    let back = send(
        &mut gw,
        tcp(pod_mac(1), GW_MAC, (POD1, 8080), (GW_IP, sport), false, 64),
        0,
        1,
    );
    assert_eq!(back.next, Disposition::Forward(0));
    assert_eq!(addresses(&back.frame), (VIP, 80, POD1, 7000));
    assert_eq!(gw.counters().get(GwCounter::NatHairpin), 1);
}

#[test]
fn ttl_expiry_and_missing_routes_answer_with_icmp() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    let out = send(
        &mut gw,
        tcp(pod_mac(1), GW_MAC, (POD1, 1000), (EXT, 80), true, 1),
        0,
        0,
    );
    assert_eq!(out.next, Disposition::Drop);
    assert_eq!(out.emit.len(), 1);
    let p = SlicedPacket::from_ethernet(&out.emit[0].frame).unwrap();
    let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!("not ICMP")
    };
    assert!(matches!(
        icmp.icmp_type(),
        etherparse::Icmpv4Type::TimeExceeded(_)
    ));
    assert_eq!(
        icmp.checksum(),
        icmp.icmp_type().calc_checksum(icmp.payload())
    );
    assert_eq!(out.emit[0].to, PortMask::single(0));
    assert_eq!(gw.counters().get(GwCounter::DropTtlExceeded), 1);
    assert!(
        gw.shared.conntrack.is_empty(),
        "no flow (nor NAT port) for a packet that goes no further"
    );

    let mut c = config();
    c.uplink = None;
    c.routes.clear();
    let mut gw = gateway(&c);
    learn_pods(&mut gw);
    let out = send(
        &mut gw,
        tcp(pod_mac(1), GW_MAC, (POD1, 1000), (EXT, 80), true, 64),
        0,
        0,
    );
    assert_eq!(out.next, Disposition::Drop);
    assert_eq!(gw.counters().get(GwCounter::DropNoRoute), 1);
    assert_eq!(out.emit.len(), 1, "destination unreachable");
}

#[test]
fn icmp_errors_about_masqueraded_flows_are_translated_back() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    let mut udp = Vec::new();
    PacketBuilder::ethernet2(pod_mac(1).0, GW_MAC.0)
        .ipv4(POD1.octets(), EXT.octets(), 64)
        .udp(5353, 53)
        .write(&mut udp, b"query")
        .unwrap();
    let out = send(&mut gw, udp, 0, 0);
    let sent = out.frame.clone();
    let (_, nat_port, _, _) = addresses(&sent);
    // The external host says "port unreachable", quoting what it received.
    let quoted = &sent[14..14 + 28];
    let mut error = Vec::new();
    PacketBuilder::ethernet2(ROUTER_MAC.0, GW_MAC.0)
        .ipv4(EXT.octets(), NODE_IP.octets(), 60)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut error, quoted)
        .unwrap();
    let out = send(&mut gw, error, UPLINK, 1);
    assert_eq!(out.next, Disposition::Forward(0));
    let p = SlicedPacket::from_ethernet(&out.frame).unwrap();
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!()
    };
    assert_eq!(ip.header().destination_addr(), POD1);
    let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!()
    };
    assert_eq!(
        icmp.checksum(),
        icmp.icmp_type().calc_checksum(icmp.payload())
    );
    let inner = etherparse::Ipv4HeaderSlice::from_slice(icmp.payload()).unwrap();
    assert_eq!(inner.source_addr(), POD1);
    assert_eq!(
        u16::from_be_bytes([icmp.payload()[20], icmp.payload()[21]]),
        5353
    );
    assert_ne!(nat_port, 0);
    assert_eq!(gw.counters().get(GwCounter::IcmpRelatedTranslated), 1);
}

/// An ICMP error (the quoted packet's first 28 bytes) from `from` to `to`, arriving on `port`.
fn icmp_error_about(
    macs: (MacAddr, MacAddr),
    (from, to): (Ipv4Addr, Ipv4Addr),
    kind: etherparse::Icmpv4Type,
    about: &[u8],
) -> Vec<u8> {
    let mut error = Vec::new();
    PacketBuilder::ethernet2(macs.0 .0, macs.1 .0)
        .ipv4(from.octets(), to.octets(), 60)
        .icmpv4(kind)
        .write(&mut error, &about[14..14 + 28])
        .unwrap();
    error
}

/// The outer (source, destination), the quoted packet's addresses and ports, and whether the
/// ICMP checksum holds.
fn icmp_error_parts(frame: &[u8]) -> ((Ipv4Addr, Ipv4Addr), (Ipv4Addr, u16, Ipv4Addr, u16), bool) {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!("not IPv4")
    };
    let outer = (ip.header().source_addr(), ip.header().destination_addr());
    let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!("not ICMP")
    };
    let sum_ok = crate::wire::checksum::checksum(icmp.slice()) == 0;
    let q = icmp.payload();
    let inner = etherparse::Ipv4HeaderSlice::from_slice(q).unwrap();
    let port = |at: usize| u16::from_be_bytes([q[at], q[at + 1]]);
    let quoted = (
        inner.source_addr(),
        port(20),
        inner.destination_addr(),
        port(22),
    );
    (outer, quoted, sum_ok)
}

/// A pod whose socket closed answers the reply to its masqueraded query with "port
/// unreachable": it reaches the external host from the node, quoting what that host sent.
#[test]
fn a_pod_s_own_icmp_error_about_a_masqueraded_reply_goes_out_from_the_node() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    let mut query = Vec::new();
    PacketBuilder::ethernet2(pod_mac(1).0, GW_MAC.0)
        .ipv4(POD1.octets(), EXT.octets(), 64)
        .udp(5353, 53)
        .write(&mut query, b"query")
        .unwrap();
    let out = send(&mut gw, query, 0, 0);
    assert_eq!(out.next, Disposition::Forward(UPLINK));
    let (_, nat_port, _, _) = addresses(&out.frame);
    let mut answer = Vec::new();
    PacketBuilder::ethernet2(ROUTER_MAC.0, GW_MAC.0)
        .ipv4(EXT.octets(), NODE_IP.octets(), 60)
        .udp(53, nat_port)
        .write(&mut answer, b"answer")
        .unwrap();
    let delivered = send(&mut gw, answer, UPLINK, 1);
    assert_eq!(delivered.next, Disposition::Forward(0));
    assert_eq!(addresses(&delivered.frame), (EXT, 53, POD1, 5353));
    let unreachable = icmp_error_about(
        (pod_mac(1), GW_MAC),
        (POD1, EXT),
        etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ),
        &delivered.frame,
    );
    let back = send(&mut gw, unreachable, 0, 2);
    assert_eq!(back.next, Disposition::Forward(UPLINK));
    let (outer, quoted, sum_ok) = icmp_error_parts(&back.frame);
    assert_eq!(outer, (NODE_IP, EXT));
    assert_eq!(quoted, (EXT, 53, NODE_IP, nat_port));
    assert!(sum_ok);
}

/// A router on the way to a NodePort client cannot take the backend's large answers: its
/// "fragmentation needed" quotes the answer as it left the node and must reach the backend,
/// quoting what the backend sent, or the backend never learns the path MTU.
#[test]
fn fragmentation_needed_about_a_node_port_answer_reaches_the_backend() {
    let mut c = config();
    c.services[0].backends = backends(&[(POD1, 8080)]);
    let mut gw = gateway(&c);
    learn_neighbors(&mut gw);
    let syn = send(
        &mut gw,
        tcp(ROUTER_MAC, GW_MAC, (EXT, 4321), (NODE_IP, 30080), true, 60),
        UPLINK,
        0,
    );
    let (_, nat_port, backend, _) = addresses(&syn.frame);
    assert_eq!(backend, POD1);
    let answer = send(
        &mut gw,
        tcp(
            pod_mac(1),
            GW_MAC,
            (POD1, 8080),
            (NODE_IP, nat_port),
            false,
            64,
        ),
        0,
        1,
    );
    assert_eq!(addresses(&answer.frame), (NODE_IP, 30080, EXT, 4321));
    let mut frag_needed = icmp_error_about(
        (ROUTER_MAC, GW_MAC),
        (ROUTER, NODE_IP),
        etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ),
        &answer.frame,
    );
    // RFC 4884's length field (bytes 4-5 of the error) must come through untouched.
    frag_needed[14 + 20 + 5] = 7;
    frag_needed[34 + 2..34 + 4].fill(0);
    let fixed = crate::wire::checksum::checksum(&frag_needed[34..]);
    frag_needed[34 + 2..34 + 4].copy_from_slice(&fixed.to_be_bytes());
    let out = send(&mut gw, frag_needed, UPLINK, 2);
    assert_eq!(out.next, Disposition::Forward(0));
    let (outer, quoted, sum_ok) = icmp_error_parts(&out.frame);
    assert_eq!(outer, (ROUTER, POD1));
    assert_eq!(quoted, (POD1, 8080, NODE_IP, nat_port));
    assert!(sum_ok);
    assert_eq!(out.frame[14 + 20 + 5], 7);
    assert_eq!(
        u16::from_be_bytes([out.frame[14 + 20 + 6], out.frame[14 + 20 + 7]]),
        1400
    );
    assert_eq!(gw.counters().get(GwCounter::IcmpRelatedTranslated), 1);
}

/// A backend's own "port unreachable" to a NodePort client leaves the node from the node's
/// address, quoting the datagram the client sent: the pod's address is not the client's to see.
#[test]
fn a_backend_s_own_icmp_error_to_a_node_port_client_comes_from_the_node() {
    let mut c = config();
    c.services[0].backends = backends(&[(POD1, 8080)]);
    c.services[0].proto = crate::wire::ipv4::PROTO_UDP;
    let mut gw = gateway(&c);
    learn_neighbors(&mut gw);
    let mut datagram = Vec::new();
    PacketBuilder::ethernet2(ROUTER_MAC.0, GW_MAC.0)
        .ipv4(EXT.octets(), NODE_IP.octets(), 60)
        .udp(4321, 30080)
        .write(&mut datagram, b"hello")
        .unwrap();
    let out = send(&mut gw, datagram, UPLINK, 0);
    assert_eq!(out.next, Disposition::Forward(0));
    let (_, nat_port, backend, _) = addresses(&out.frame);
    assert_eq!(backend, POD1);
    let unreachable = icmp_error_about(
        (pod_mac(1), GW_MAC),
        (POD1, NODE_IP),
        etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ),
        &out.frame,
    );
    let back = send(&mut gw, unreachable, 0, 1);
    assert_eq!(back.next, Disposition::Forward(UPLINK));
    let (outer, quoted, sum_ok) = icmp_error_parts(&back.frame);
    assert_eq!(outer, (NODE_IP, EXT));
    assert_eq!(quoted, (EXT, 4321, NODE_IP, 30080));
    assert!(sum_ok);
    assert_ne!(nat_port, 0);
}

#[test]
fn malformed_ipv4_is_dropped_by_reason() {
    let mut gw = gateway(&config());
    let good = tcp(pod_mac(1), GW_MAC, (POD1, 1), (EXT, 80), true, 64);
    let mut bad_sum = good.clone();
    bad_sum[14 + 8] ^= 0xff;
    send(&mut gw, bad_sum, 0, 0);
    let mut v6 = good.clone();
    v6[14] = 0x65;
    send(&mut gw, v6, 0, 0);
    send(&mut gw, good[..14 + 10].to_vec(), 0, 0);
    let mut short_tcp = good.clone();
    short_tcp.truncate(14 + 20 + 10);
    short_tcp[16..18].copy_from_slice(&30u16.to_be_bytes());
    let mut ip = crate::wire::ipv4::Ipv4Packet::new_quoted(&mut short_tcp[14..]).unwrap();
    ip.fill_checksum();
    send(&mut gw, short_tcp, 0, 0);
    let c = gw.counters();
    assert_eq!(c.get(GwCounter::DropIpv4Checksum), 1);
    assert_eq!(c.get(GwCounter::DropIpv4Version), 1);
    assert_eq!(c.get(GwCounter::DropIpv4Truncated), 1);
    assert_eq!(c.get(GwCounter::DropL4Truncated), 1);
}

#[test]
fn nat_ports_run_out_and_are_counted() {
    let mut c = config();
    c.uplink.as_mut().unwrap().nat_ports = (40000, 40999);
    let mut gw = gateway(&c);
    learn_neighbors(&mut gw);
    let span = 1000;
    let mut forwarded = 0;
    // Every connection to one external port takes one node port; all from distinct pod ports.
    for i in 0..span as u32 + 10 {
        let pod = [POD1, POD2, POD3][(i % 3) as usize];
        let sport = (i / 3) as u16;
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(pod_mac(1).0, GW_MAC.0)
            .ipv4(pod.octets(), EXT.octets(), 64)
            .udp(sport, 53)
            .write(&mut frame, b"")
            .unwrap();
        if send(&mut gw, frame, 0, 0).next == Disposition::Forward(UPLINK) {
            forwarded += 1;
        }
    }
    assert_eq!(forwarded, span);
    assert_eq!(gw.counters().get(GwCounter::DropNatPortsExhausted), 10);
}

/// A gateway with 60 connections from pod 3 to the service, and its config without POD2.
fn connections_then_pod2_removed() -> (Gateway, GatewayConfig) {
    let c = config();
    let mut gw = gateway(&c);
    learn_neighbors(&mut gw);
    for sport in 0..60u16 {
        pod3_syn_to_vip(&mut gw, 30000 + sport, 0);
    }
    let mut fewer = c;
    fewer.services[0].backends = backends(&[(POD1, 8080), (REMOTE_POD, 8080)]);
    (gw, fewer)
}

#[test]
fn reload_sends_new_connections_only_to_remaining_backends_and_closes_old_ones() {
    let (mut gw, fewer) = connections_then_pod2_removed();
    let before = gw.shared.conntrack.len();
    let report = gw.shared.reload(&fewer);
    assert!(report.flows_closed > 0);
    assert_eq!(gw.shared.conntrack.len(), before - report.flows_closed);
    for sport in 0..60u16 {
        let out = pod3_syn_to_vip(&mut gw, 40000 + sport, 1);
        let (_, _, dst, _) = addresses(&out.frame);
        assert_ne!(dst, POD2);
    }
    let _ = PROTO_UDP;
}

/// A backend new connections no longer get but that still serves its own (a terminating
/// Kubernetes endpoint) keeps them; it loses them once it is not there at all.
#[test]
fn a_reload_keeps_the_connections_of_a_backend_still_there() {
    let (mut gw, fewer) = connections_then_pod2_removed();
    let before = gw.shared.conntrack.len();
    let draining = std::net::SocketAddrV4::new(POD2, 8080);
    let report = gw.shared.reload_keeping(&fewer, |b| *b == draining);
    assert_eq!(report.flows_closed, 0);
    assert_eq!(gw.shared.conntrack.len(), before);
    for sport in 0..60u16 {
        let (_, _, dst, _) = addresses(&pod3_syn_to_vip(&mut gw, 40000 + sport, 1).frame);
        assert_ne!(dst, POD2, "no new connection to it");
    }
    let report = gw.shared.reload(&fewer);
    assert!(report.flows_closed > 0, "gone: its connections close");
}

#[test]
fn a_local_backend_answering_its_client_directly_is_un_dnated_on_the_bridge() {
    let mut gw = one_local_backend();
    let out = pod3_syn_to_vip(&mut gw, 41000, 0);
    assert_eq!(out.next, Disposition::Forward(0));
    // p1 knows p3 is on its subnet: its reply goes to p3's MAC, bridged, not routed.
    pod3_asks_for_pod1(&mut gw, 0);
    let reply = pod1_answers_pod3(&mut gw, 41000, 1);
    assert_eq!(reply.next, Disposition::Forward(2));
    assert_eq!(addresses(&reply.frame), (VIP, 80, POD3, 41000));
    assert_eq!(gw.counters().get(GwCounter::NatBridged), 1);
    // Plain pod-to-pod traffic is bridged untouched.
    let plain = send(
        &mut gw,
        tcp(pod_mac(1), pod_mac(3), (POD1, 9), (POD3, 9), true, 64),
        0,
        2,
    );
    assert_eq!(addresses(&plain.frame), (POD1, 9, POD3, 9));
}

/// The backend's ICMP error to a client on its segment (bridged) about the client's packet to
/// the service reaches the client as from the service, quoting what the client sent.
#[test]
fn a_local_backends_icmp_error_to_its_client_is_un_dnated_on_the_bridge() {
    let mut gw = one_local_backend();
    let syn = pod3_syn_to_vip(&mut gw, 41000, 0);
    assert_eq!(addresses(&syn.frame), (POD3, 41000, POD1, 8080));
    pod3_asks_for_pod1(&mut gw, 0);
    let error = icmp_error_about(
        (pod_mac(1), pod_mac(3)),
        (POD1, POD3),
        etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ),
        &syn.frame,
    );
    let out = send(&mut gw, error, 0, 1);
    assert_eq!(out.next, Disposition::Forward(2));
    let (outer, quoted, sum_ok) = icmp_error_parts(&out.frame);
    assert_eq!(outer, (VIP, POD3));
    assert_eq!(quoted, (POD3, 41000, VIP, 80));
    assert!(sum_ok);
    assert_eq!(gw.counters().get(GwCounter::IcmpRelatedTranslated), 1);
    // About no tracked flow: bridged as it is.
    let plain = tcp(pod_mac(3), pod_mac(1), (POD3, 9), (POD1, 9), true, 64);
    let error = icmp_error_about(
        (pod_mac(1), pod_mac(3)),
        (POD1, POD3),
        etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ),
        &plain,
    );
    let out = send(&mut gw, error.clone(), 0, 1);
    assert_eq!(out.next, Disposition::Forward(2));
    assert_eq!(out.frame, error);
}

/// An ICMP echo request (or reply) with identifier `id`.
fn echo(macs: (MacAddr, MacAddr), src: Ipv4Addr, dst: Ipv4Addr, id: u16, request: bool) -> Vec<u8> {
    let mut b = Vec::new();
    let builder =
        PacketBuilder::ethernet2(macs.0 .0, macs.1 .0).ipv4(src.octets(), dst.octets(), 64);
    let builder = if request {
        builder.icmpv4_echo_request(id, 1)
    } else {
        builder.icmpv4_echo_reply(id, 1)
    };
    builder.write(&mut b, b"ping").unwrap();
    b
}

fn echo_id(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[14 + 20 + 4], frame[14 + 20 + 5]])
}

#[test]
fn a_masqueraded_ping_with_a_remapped_id_gets_its_replies() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    // Id 7 is below the NAT range (1024..): it must be remapped.
    let out = send(
        &mut gw,
        echo((pod_mac(1), GW_MAC), POD1, EXT, 7, true),
        0,
        0,
    );
    assert_eq!(out.next, Disposition::Forward(UPLINK));
    let id = echo_id(&out.frame);
    assert!(id >= 1024, "remapped into the range, got {id}");
    let reply = echo((ROUTER_MAC, GW_MAC), EXT, NODE_IP, id, false);
    let back = send(&mut gw, reply, UPLINK, 1);
    assert_eq!(back.next, Disposition::Forward(0));
    assert_eq!(echo_id(&back.frame), 7);
    let p = SlicedPacket::from_ethernet(&back.frame).unwrap();
    let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!("not ICMP")
    };
    assert_eq!(
        icmp.checksum(),
        icmp.icmp_type().calc_checksum(icmp.payload())
    );
    assert_eq!(gw.counters().get(GwCounter::DropLocalUnhandled), 0);
}

/// A UDP datagram of `len` payload bytes from `src` cut into IPv4 fragments of at most 1480
/// payload bytes, as a host with MTU 1500 sends it.
fn udp_fragments(
    mac: MacAddr,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    len: usize,
    ip_id: u16,
) -> Vec<Vec<u8>> {
    let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let mut whole = Vec::new();
    PacketBuilder::ipv4(src.0.octets(), dst.0.octets(), 64)
        .udp(src.1, dst.1)
        .write(&mut whole, &payload)
        .unwrap();
    let datagram = &whole[20..];
    datagram
        .chunks(1480)
        .enumerate()
        .map(|(i, chunk)| {
            let offset = i * 1480;
            let more = offset + chunk.len() < datagram.len();
            let mut f = Vec::new();
            f.extend_from_slice(&GW_MAC.0);
            f.extend_from_slice(&mac.0);
            f.extend_from_slice(&[0x08, 0x00]);
            let mut ip = whole[..20].to_vec();
            ip[2..4].copy_from_slice(&((20 + chunk.len()) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
            let frag = ((offset / 8) as u16) | if more { 0x2000 } else { 0 };
            ip[6..8].copy_from_slice(&frag.to_be_bytes());
            f.extend_from_slice(&ip);
            f.extend_from_slice(chunk);
            let mut p = crate::wire::ipv4::Ipv4Packet::new_quoted(&mut f[14..]).unwrap();
            p.fill_checksum();
            f
        })
        .collect()
}

/// Sends each frame on `ingress`; each must be forwarded out of `egress`. Returns them as sent.
#[track_caller]
fn all_forwarded(
    gw: &mut Gateway,
    frames: Vec<Vec<u8>>,
    ingress: PortId,
    now: u64,
    egress: PortId,
) -> Vec<Vec<u8>> {
    frames
        .into_iter()
        .map(|f| {
            let o = send(gw, f, ingress, now);
            assert_eq!(o.next, Disposition::Forward(egress));
            o.frame
        })
        .collect()
}

/// Joins forwarded fragments back into the UDP datagram; checks every IPv4 header checksum
/// and the UDP checksum over the whole, and returns (src, dst, sport, dport, payload).
fn reassemble(frames: &[Vec<u8>]) -> (Ipv4Addr, Ipv4Addr, u16, u16, Vec<u8>) {
    let mut datagram = Vec::new();
    let mut addrs = None;
    for f in frames {
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&f[14..]).unwrap();
        let h = ip.to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!(ip.fragments_offset().byte_offset() as usize, datagram.len());
        let a = (ip.source_addr(), ip.destination_addr());
        assert_eq!(
            *addrs.get_or_insert(a),
            a,
            "every fragment has the same addresses"
        );
        datagram.extend_from_slice(&f[14 + 20..14 + ip.total_len() as usize]);
    }
    let (src, dst) = addrs.unwrap();
    let ph = crate::wire::checksum::pseudo_header(
        src.octets(),
        dst.octets(),
        PROTO_UDP,
        datagram.len() as u16,
    );
    let sum = crate::wire::checksum::fold(ph + crate::wire::checksum::sum(&datagram));
    assert_eq!(sum, 0xffff, "UDP checksum over the reassembled datagram");
    let sport = u16::from_be_bytes([datagram[0], datagram[1]]);
    let dport = u16::from_be_bytes([datagram[2], datagram[3]]);
    (src, dst, sport, dport, datagram[8..].to_vec())
}

#[test]
fn later_fragments_follow_the_first_through_masquerade_and_back() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    let frags = udp_fragments(pod_mac(1), (POD1, 5000), (EXT, 9000), 4000, 77);
    assert_eq!(frags.len(), 3);
    let out = all_forwarded(&mut gw, frags, 0, 0, UPLINK);
    let (src, dst, sport, dport, payload) = reassemble(&out);
    assert_eq!((src, dst, dport), (NODE_IP, EXT, 9000));
    assert_eq!(payload.len(), 4000);
    assert_eq!(gw.counters().get(GwCounter::FragmentsTranslated), 2);
    // The reply, fragmented too, reaches the pod whole.
    let replies = udp_fragments(ROUTER_MAC, (EXT, 9000), (NODE_IP, sport), 3000, 9);
    let replies = all_forwarded(&mut gw, replies, UPLINK, 1, 0);
    let (src, dst, sport, dport, payload) = reassemble(&replies);
    assert_eq!((src, dst, sport, dport), (EXT, POD1, 9000, 5000));
    assert_eq!(payload.len(), 3000);
}

#[test]
fn later_fragments_follow_the_first_through_a_service() {
    let mut c = config();
    c.services.push(ServiceConfig {
        name: "dns".into(),
        cluster_ip: Ipv4Addr::new(10, 96, 0, 53),
        port: 53,
        proto: PROTO_UDP,
        node_port: None,
        backends: backends(&[(POD2, 5353)]),
        affinity_timeout_s: None,
        external_local: None,
        node_port_backends: None,
    });
    let mut gw = gateway(&c);
    learn_neighbors(&mut gw);
    let frags = udp_fragments(
        pod_mac(3),
        (POD3, 4444),
        (Ipv4Addr::new(10, 96, 0, 53), 53),
        4000,
        5,
    );
    let out = all_forwarded(&mut gw, frags, 2, 0, 1);
    let (src, dst, sport, dport, payload) = reassemble(&out);
    assert_eq!((src, dst, sport, dport), (POD3, POD2, 4444, 5353));
    assert_eq!(payload.len(), 4000);
}

#[test]
fn a_later_fragment_without_its_first_is_dropped_and_counted() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    let frags = udp_fragments(pod_mac(1), (POD1, 5000), (EXT, 9000), 4000, 78);
    let out = send(&mut gw, frags[1].clone(), 0, 0);
    assert_eq!(out.next, Disposition::Drop);
    assert_eq!(gw.counters().get(GwCounter::DropFragmentWithoutFirst), 1);
}

#[test]
fn icmp_errors_are_rate_limited_per_destination() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    let mut errors = 0;
    for i in 0..100 {
        let out = send(
            &mut gw,
            tcp(pod_mac(1), GW_MAC, (POD1, 1000 + i), (EXT, 80), true, 1),
            0,
            0,
        );
        assert_eq!(out.next, Disposition::Drop);
        errors += out.emit.len();
    }
    assert_eq!(errors, 6, "a burst of six, as Linux allows");
    let c = gw.counters();
    assert_eq!(c.get(GwCounter::IcmpErrorsSent), 6);
    assert_eq!(c.get(GwCounter::IcmpErrorsRateLimited), 94);
    assert_eq!(c.get(GwCounter::DropTtlExceeded), 100);
    // A second later, one more.
    let out = send(
        &mut gw,
        tcp(pod_mac(1), GW_MAC, (POD1, 2000), (EXT, 80), true, 1),
        0,
        1000,
    );
    assert_eq!(out.emit.len(), 1);
}

/// Fragmentation-needed is not rate limited (Linux exempts it: path MTU discovery), and
/// draining the limiter with other errors does not hold it back.
#[test]
fn fragmentation_needed_is_not_rate_limited() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    for port in [0, 1, 2] {
        gw.set_port_mtu(port, 9000);
    }
    gw.set_port_mtu(UPLINK, 1500);
    for i in 0..20 {
        send(
            &mut gw,
            tcp(pod_mac(1), GW_MAC, (POD1, 1000 + i), (EXT, 80), true, 1),
            0,
            0,
        );
    }
    assert!(gw.counters().get(GwCounter::IcmpErrorsRateLimited) > 0);
    let mut errors = 0;
    for i in 0..50 {
        let out = send(&mut gw, udp_from_pod1(EXT, 6000 + i, 4000, true), 0, 0);
        assert_eq!(out.next, Disposition::Drop);
        errors += out.emit.len();
    }
    assert_eq!(errors, 50);
}

/// Errors only about a datagram's first fragment: its later fragments (TTL 1 as well) get none.
#[test]
fn no_icmp_error_about_a_later_fragment() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    let mut frags = udp_fragments(pod_mac(1), (POD1, 7000), (EXT, 53), 4000, 77);
    assert_eq!(frags.len(), 3);
    for f in &mut frags {
        let mut ip = crate::wire::ipv4::Ipv4Packet::new_quoted(&mut f[14..]).unwrap();
        ip.set_ttl(1);
        ip.fill_checksum();
    }
    let first = send(&mut gw, frags[0].clone(), 0, 0);
    assert_eq!(first.next, Disposition::Drop);
    assert_eq!(
        first.emit.len(),
        1,
        "time exceeded about the first fragment"
    );
    for later in &frags[1..] {
        let out = send(&mut gw, later.clone(), 0, 0);
        assert_eq!(out.next, Disposition::Drop);
        assert!(out.emit.is_empty(), "an error about a later fragment");
    }
    assert_eq!(gw.counters().get(GwCounter::IcmpErrorsSent), 1);
}

/// The router never asks us anything, but we send through it all the time: before its entry
/// ages out it is asked, unicast, and its answer keeps it, so the node's traffic is never
/// held up by a resolution.
#[test]
fn a_next_hop_about_to_age_out_is_probed_and_kept() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    let mut emit = Vec::new();
    gw.housekeeping(296_000, true, &mut emit);
    assert!(emit.is_empty(), "not yet");
    gw.housekeeping(297_000, true, &mut emit);
    let probe = emit
        .iter()
        .find(|e| e.to == PortMask::single(UPLINK) && eth_dst(&e.frame) == ROUTER_MAC)
        .expect("a probe to the router");
    let arp_probe = crate::wire::arp::ArpRepr::parse(&probe.frame[14..]).expect("ARP");
    assert_eq!(arp_probe.operation, ARP_REQUEST);
    assert_eq!(
        (
            arp_probe.sender_mac,
            arp_probe.sender_ip,
            arp_probe.target_ip
        ),
        (GW_MAC, NODE_IP, ROUTER)
    );
    // Pods are probed on their own ports, never flooded.
    assert!(emit.iter().all(|e| e.to.ports(8).count() == 1));
    // The router answers.
    send(
        &mut gw,
        arp(ARP_REPLY, (ROUTER_MAC, ROUTER), (GW_MAC, NODE_IP), GW_MAC),
        UPLINK,
        297_001,
    );
    // Past the age of the first answer, traffic through it goes straight on.
    let out = send(
        &mut gw,
        tcp(pod_mac(1), GW_MAC, (POD1, 1000), (EXT, 80), true, 64),
        0,
        300_500,
    );
    assert_eq!(out.next, Disposition::Forward(UPLINK));
    assert_eq!(eth_dst(&out.frame), ROUTER_MAC);
}

#[test]
fn arp_claiming_the_gateway_or_node_address_is_dropped() {
    let mut gw = gateway(&config());
    learn_pods(&mut gw);
    // Gratuitous ARP from pod 2 for the gateway's address, and a reply claiming it.
    for frame in [
        arp(
            ARP_REQUEST,
            (pod_mac(2), GW_IP),
            (MacAddr::ZERO, GW_IP),
            MacAddr::BROADCAST,
        ),
        arp(
            ARP_REPLY,
            (pod_mac(2), GW_IP),
            (pod_mac(1), POD1),
            pod_mac(1),
        ),
        arp(
            ARP_REQUEST,
            (pod_mac(2), NODE_IP),
            (MacAddr::ZERO, POD1),
            MacAddr::BROADCAST,
        ),
    ] {
        let out = send(&mut gw, frame, 1, 0);
        assert_eq!(out.next, Disposition::Drop);
        assert!(out.emit.is_empty());
    }
    assert_eq!(gw.counters().get(GwCounter::DropArpClaimsOurAddress), 3);
    // On the uplink too.
    let out = send(
        &mut gw,
        arp(
            ARP_REQUEST,
            (ROUTER_MAC, NODE_IP),
            (MacAddr::ZERO, NODE_IP),
            MacAddr::BROADCAST,
        ),
        UPLINK,
        0,
    );
    assert_eq!(out.next, Disposition::Drop);
    assert_eq!(gw.counters().get(GwCounter::DropArpClaimsOurAddress), 4);
}

/// An IPv4 packet of protocol `proto` with an opaque payload.
fn raw_ip(macs: (MacAddr, MacAddr), src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&macs.1 .0);
    f.extend_from_slice(&macs.0 .0);
    f.extend_from_slice(&[0x08, 0x00]);
    let payload = [0u8, 0, 0x65, 0x58, 1, 2, 3, 4];
    let mut ip = [0u8; 20];
    crate::wire::ipv4::emit_header(&mut ip, src, dst, proto, 64, payload.len());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&payload);
    f
}

#[test]
fn other_protocols_are_masqueraded_by_address_and_come_back() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    const GRE: u8 = 47;
    let out = send(&mut gw, raw_ip((pod_mac(1), GW_MAC), POD1, EXT, GRE), 0, 0);
    assert_eq!(out.next, Disposition::Forward(UPLINK));
    let ip = etherparse::Ipv4HeaderSlice::from_slice(&out.frame[14..]).unwrap();
    assert_eq!((ip.source_addr(), ip.destination_addr()), (NODE_IP, EXT));
    let h = ip.to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum());
    assert_eq!(
        &out.frame[34..],
        &[0u8, 0, 0x65, 0x58, 1, 2, 3, 4],
        "payload untouched"
    );
    let back = send(
        &mut gw,
        raw_ip((ROUTER_MAC, GW_MAC), EXT, NODE_IP, GRE),
        UPLINK,
        1,
    );
    assert_eq!(back.next, Disposition::Forward(0));
    let ip = etherparse::Ipv4HeaderSlice::from_slice(&back.frame[14..]).unwrap();
    assert_eq!((ip.source_addr(), ip.destination_addr()), (EXT, POD1));
    // A second pod's GRE to the same host would get the same replies: refused, counted.
    let out = send(&mut gw, raw_ip((pod_mac(2), GW_MAC), POD2, EXT, GRE), 1, 2);
    assert_eq!(out.next, Disposition::Drop);
    assert_eq!(gw.counters().get(GwCounter::DropNatClash), 1);
    assert_eq!(gw.counters().get(GwCounter::NatMasquerade), 1);
}

#[test]
fn pod_packets_from_outside_the_pod_subnet_are_dropped() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    for src in [Ipv4Addr::new(8, 8, 8, 8), Ipv4Addr::UNSPECIFIED, NODE_IP] {
        let out = send(
            &mut gw,
            tcp(pod_mac(1), GW_MAC, (src, 1000), (EXT, 80), true, 64),
            0,
            0,
        );
        assert_eq!(out.next, Disposition::Drop);
    }
    assert_eq!(gw.counters().get(GwCounter::DropPodSourceOutsideSubnet), 3);
}

#[test]
fn a_port_reaching_a_backend_directly_and_through_its_service_gets_another_source_port() {
    let mut c = config();
    c.services[0].backends = backends(&[(POD1, 8080)]);
    let mut gw = gateway(&c);
    learn_neighbors(&mut gw);
    let via_service = pod3_syn_to_vip(&mut gw, 40000, 0);
    assert_eq!(via_service.next, Disposition::Forward(0));
    assert_eq!(addresses(&via_service.frame), (POD3, 40000, POD1, 8080));
    // Same source port, straight to the backend: its replies would look like the first one's.
    let direct = send(
        &mut gw,
        tcp(pod_mac(3), GW_MAC, (POD3, 40000), (POD1, 8080), true, 64),
        2,
        1,
    );
    assert_eq!(direct.next, Disposition::Forward(0));
    let (src, sport, dst, dport) = addresses(&direct.frame);
    assert_eq!((src, dst, dport), (POD3, POD1, 8080));
    assert_ne!(sport, 40000);
    let c = gw.counters();
    assert_eq!(c.get(GwCounter::NatClashRemapped), 1);
    assert_eq!(c.get(GwCounter::DropNatPortsExhausted), 0);
    // Each connection's replies find their own way back.
    let reply = send(
        &mut gw,
        tcp(pod_mac(1), GW_MAC, (POD1, 8080), (POD3, sport), false, 64),
        0,
        2,
    );
    assert_eq!(addresses(&reply.frame), (POD1, 8080, POD3, 40000));
}

#[test]
fn a_neighbour_that_moves_is_followed_at_once() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    let out = send(
        &mut gw,
        tcp(pod_mac(1), GW_MAC, (POD1, 5555), (EXT, 80), true, 64),
        0,
        0,
    );
    assert_eq!(eth_dst(&out.frame), ROUTER_MAC);
    let new_mac = MacAddr([0x02, 0xbb, 0, 0, 0, 0x99]);
    let moved = arp(
        ARP_REQUEST,
        (new_mac, ROUTER),
        (MacAddr::ZERO, NODE_IP),
        MacAddr::BROADCAST,
    );
    send(&mut gw, moved, UPLINK, 1);
    let out = send(
        &mut gw,
        tcp(pod_mac(1), GW_MAC, (POD1, 5555), (EXT, 80), false, 64),
        0,
        2,
    );
    assert_eq!(eth_dst(&out.frame), new_mac);
}

#[test]
fn first_fragments_beyond_the_table_are_dropped_and_counted() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    for id in 0..FRAGMENT_TABLE_CAPACITY as u16 {
        let first = udp_fragments(pod_mac(1), (POD1, 5000), (EXT, 9000), 2000, id).remove(0);
        assert_eq!(
            send(&mut gw, first, 0, 0).next,
            Disposition::Forward(UPLINK)
        );
    }
    let id = FRAGMENT_TABLE_CAPACITY as u16;
    let first = udp_fragments(pod_mac(1), (POD1, 5000), (EXT, 9000), 2000, id).remove(0);
    assert_eq!(send(&mut gw, first, 0, 1).next, Disposition::Drop);
    assert_eq!(gw.counters().get(GwCounter::DropFragmentTableFull), 1);
    // Once the first ones time out there is room again.
    let first = udp_fragments(pod_mac(1), (POD1, 5000), (EXT, 9000), 2000, id).remove(0);
    let later = crate::conntrack::FRAGMENT_TIMEOUT_MS + 1;
    assert_eq!(
        send(&mut gw, first, 0, later).next,
        Disposition::Forward(UPLINK)
    );
}

#[test]
fn a_bound_pod_port_cannot_send_from_another_pods_addresses() {
    let c = config();
    let bridge = crate::l2::BridgeConfig {
        bindings: vec![(
            1,
            crate::l2::PortBinding {
                mac: pod_mac(2),
                ip: Some(POD2),
            },
        )],
        ..Default::default()
    };
    let mut gw = Gateway::new(
        GatewayShared::new(&c),
        crate::l2::Bridge::new(&c.pod_bridge(&bridge)),
    );
    learn_neighbors(&mut gw);
    // Pod 2 claims pod 1's address: IPv4, gratuitous ARP, and pod 1's MAC.
    let spoofs = [
        tcp(pod_mac(2), GW_MAC, (POD1, 1000), (EXT, 80), true, 64),
        arp(
            ARP_REQUEST,
            (pod_mac(2), POD1),
            (MacAddr::ZERO, POD1),
            MacAddr::BROADCAST,
        ),
        tcp(pod_mac(1), pod_mac(3), (POD2, 1000), (POD3, 80), true, 64),
        arp(
            ARP_REQUEST,
            (pod_mac(2), GW_IP),
            (MacAddr::ZERO, GW_IP),
            MacAddr::BROADCAST,
        ),
    ];
    for frame in spoofs {
        let out = send(&mut gw, frame, 1, 1);
        assert_eq!(out.next, Disposition::Drop);
        assert!(out.emit.is_empty());
    }
    assert_eq!(gw.counters().get(GwCounter::DropSpoofed), 4);
    // Nothing changed for the others: pod 1 is still where it was.
    assert_eq!(
        gw.shared.neighbors.read().get(POD1, 2).unwrap().mac,
        pod_mac(1)
    );
    // Its own traffic passes.
    let out = send(
        &mut gw,
        tcp(pod_mac(2), GW_MAC, (POD2, 1000), (EXT, 80), true, 64),
        1,
        2,
    );
    assert_eq!(out.next, Disposition::Forward(UPLINK));
}

#[test]
fn forgetting_a_port_forgets_its_neighbours_and_their_connections() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    let out = send(
        &mut gw,
        tcp(pod_mac(1), GW_MAC, (POD1, 5555), (EXT, 8080), true, 64),
        0,
        0,
    );
    assert_eq!(out.next, Disposition::Forward(UPLINK));
    assert_eq!(gw.shared.conntrack.len(), 1);
    // A frame to pod 2 is bridged: the bridge learns pod 1's MAC.
    send(
        &mut gw,
        tcp(pod_mac(1), pod_mac(2), (POD1, 1), (POD2, 2), true, 64),
        0,
        0,
    );
    let gone = gw.forget_port(0);
    assert_eq!(gone.neighbors, 1);
    assert_eq!(gone.flows, 1);
    assert_eq!(gone.fdb_entries, 1);
    assert!(gw.shared.neighbors.read().get(POD1, 1).is_none());
    assert!(gw.shared.conntrack.is_empty());
    assert!(gw.bridge().fdb().lookup(pod_mac(1), 1).is_none());
}

#[test]
fn a_routed_packet_too_big_for_its_egress_port_gets_fragmentation_needed_when_it_has_df() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    // Pods at 9000, the uplink at 1500: the worker tells the gateway each port's MTU.
    for port in [0, 1, 2] {
        gw.set_port_mtu(port, 9000);
    }
    gw.set_port_mtu(UPLINK, 1500);
    let udp = |df: bool, sport: u16, payload: usize| udp_from_pod1(EXT, sport, payload, df);
    // A 1500-byte packet fits the uplink.
    let out = send(&mut gw, udp(true, 5000, 1472), 0, 0);
    assert_eq!(out.next, Disposition::Forward(UPLINK));
    let (_, nat_port, _, _) = addresses(&out.frame);
    // 4028 bytes with DF: fragmentation-needed with the uplink's MTU, back to the pod.
    let out = send(&mut gw, udp(true, 5001, 4000), 0, 1);
    assert_eq!(out.next, Disposition::Drop);
    assert_eq!(out.emit.len(), 1);
    let p = SlicedPacket::from_ethernet(&out.emit[0].frame).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    assert_eq!(ip.header().destination_addr(), POD1);
    let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!("not ICMP")
    };
    assert_eq!(
        icmp.icmp_type(),
        etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1500 }
        )
    );
    assert_eq!(gw.counters().get(GwCounter::DropTooBig), 1);
    // Without DF: dropped (the switch does not fragment), no error.
    let out = send(&mut gw, udp(false, 5002, 4000), 0, 2);
    assert_eq!(out.next, Disposition::Drop);
    assert!(out.emit.is_empty());
    assert_eq!(gw.counters().get(GwCounter::DropTooBig), 2);
    // Inbound to a pod at 9000, the same size passes.
    let back = send(
        &mut gw,
        {
            let mut b = Vec::new();
            PacketBuilder::ethernet2(ROUTER_MAC.0, GW_MAC.0)
                .ipv4(EXT.octets(), NODE_IP.octets(), 64)
                .udp(9, nat_port)
                .write(&mut b, &[0u8; 4000])
                .unwrap();
            b
        },
        UPLINK,
        3,
    );
    assert_eq!(
        back.next,
        Disposition::Forward(0),
        "a reply to the first flow"
    );
}

#[test]
fn a_pod_that_only_talks_through_the_gateway_is_learned_on_the_segment() {
    let mut gw = one_local_backend();
    gw.bridge_mut().flush_fdb();
    // Pod 3's only frame: a SYN to the service, to the gateway's MAC.
    let out = pod3_syn_to_vip(&mut gw, 46000, 0);
    assert_eq!(out.next, Disposition::Forward(0));
    assert_eq!(gw.bridge().fdb().lookup(pod_mac(3), 0), Some(2));
    // The backend's direct reply reaches pod 3 alone, un-DNATed, not flooded.
    let reply = pod1_answers_pod3(&mut gw, 46000, 1);
    assert_eq!(reply.next, Disposition::Forward(2));
    assert_eq!(addresses(&reply.frame), (VIP, 80, POD3, 46000));
}
