//! Every checksum the gateway updates incrementally (RFC 1624) — DNAT to a service backend,
//! SNAT (masquerade, NodePort, hairpin), the TTL decrement of routing, the reply's
//! un-DNAT/un-SNAT, and ICMP errors whose quoted header is translated back (RELATED) — equals a
//! full recomputation (etherparse's, independent of the pipeline's own checksum code), over random
//! packets: TCP, UDP (with and without a checksum) and ICMP echo, random payloads, addresses,
//! ports and TTLs.

use etherparse::{Icmpv4Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use pipeline::gateway::{GatewayConfig, ServiceConfig, UplinkConfig};
use pipeline::l2::BridgeConfig;
use pipeline::wire::arp::ArpRepr;
use pipeline::{Bridge, Disposition, Emit, Gateway, GatewayShared, MacAddr, PortId};
use proptest::prelude::*;
use std::net::{Ipv4Addr, SocketAddrV4};

const GW_MAC: MacAddr = MacAddr([0x02, 0xaa, 0, 0, 0, 1]);
const ROUTER_MAC: MacAddr = MacAddr([0x02, 0xbb, 0, 0, 0, 0xfe]);
const PODS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 244, 1, 2),
    Ipv4Addr::new(10, 244, 1, 3),
    Ipv4Addr::new(10, 244, 1, 4),
];
const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
const NODE2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const UPLINK: PortId = 3;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
/// Service ports: TCP 80 → 8080, UDP 53 → 5353; NodePorts 30080 and 30053.
const TCP_NODE_PORT: u16 = 30080;
const UDP_NODE_PORT: u16 = 30053;

fn pod_mac(i: usize) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 1, i as u8 + 1])
}

fn config() -> GatewayConfig {
    let service = |name: &str, port, proto, node_port, target| ServiceConfig {
        name: name.into(),
        cluster_ip: VIP,
        port,
        proto,
        node_port: Some(node_port),
        backends: [PODS[0], PODS[1], Ipv4Addr::new(10, 244, 2, 5)]
            .iter()
            .map(|ip| SocketAddrV4::new(*ip, target))
            .collect(),
        affinity_timeout_s: None,
        external_local: None,
        node_port_backends: None,
    };
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
        routes: vec![("10.244.2.0/24".parse().unwrap(), NODE2)],
        services: vec![
            service("web", 80, TCP, TCP_NODE_PORT, 8080),
            service("dns", 53, UDP, UDP_NODE_PORT, 5353),
        ],
        vxlan: None,
        conntrack_capacity: 4096,
        neighbor_age_ms: 300_000,
    }
}

/// Where a host is: its port and the MAC its frames come from.
fn port_of(ip: Ipv4Addr) -> (PortId, MacAddr) {
    match PODS.iter().position(|p| *p == ip) {
        Some(i) => (i as PortId, pod_mac(i)),
        None => (UPLINK, ROUTER_MAC),
    }
}

struct Out {
    next: Disposition,
    frame: Vec<u8>,
    emit: Vec<Emit>,
}

fn send(gw: &mut Gateway, mut frame: Vec<u8>, ingress: PortId, now: u64) -> Out {
    let mut next = [Disposition::Drop];
    let mut emit = Vec::new();
    gw.process(&mut [&mut frame[..]], ingress, now, &mut next, &mut emit);
    Out {
        next: next[0],
        frame,
        emit,
    }
}

fn arp_request(sender: (MacAddr, Ipv4Addr), target: Ipv4Addr) -> Vec<u8> {
    ArpRepr::request(sender, target).frame(MacAddr::BROADCAST)
}

/// A gateway that knows every pod, the router and the other node.
fn gateway() -> Gateway {
    let config = config();
    let mut gw = Gateway::new(
        GatewayShared::new(&config),
        Bridge::new(&config.pod_bridge(&BridgeConfig::default())),
    );
    for (i, ip) in PODS.iter().enumerate() {
        let out = send(
            &mut gw,
            arp_request((pod_mac(i), *ip), GW_IP),
            i as PortId,
            0,
        );
        assert_eq!(out.next, Disposition::Forward(i as PortId));
    }
    for ip in [ROUTER, NODE2] {
        let out = send(&mut gw, arp_request((ROUTER_MAC, ip), NODE_IP), UPLINK, 0);
        assert_eq!(out.next, Disposition::Forward(UPLINK));
    }
    gw
}

/// A packet as a host sends it: (src, sport) → (dst, dport); for ICMP the port is the echo
/// identifier. `udp_zero`: a UDP datagram without a checksum.
#[derive(Debug, Clone)]
struct Packet {
    proto: u8,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    ttl: u8,
    payload: Vec<u8>,
    udp_zero: bool,
    first: bool,
}

impl Packet {
    fn frame(&self) -> Vec<u8> {
        let (_, mac) = port_of(self.src.0);
        let ip = PacketBuilder::ethernet2(mac.0, GW_MAC.0).ipv4(
            self.src.0.octets(),
            self.dst.0.octets(),
            self.ttl,
        );
        let mut b = Vec::new();
        match self.proto {
            TCP => {
                let tcp = ip.tcp(self.src.1, self.dst.1, 1000, 64000);
                let tcp = if self.first { tcp.syn() } else { tcp.ack(1) };
                tcp.write(&mut b, &self.payload).unwrap();
            }
            UDP => {
                ip.udp(self.src.1, self.dst.1)
                    .write(&mut b, &self.payload)
                    .unwrap();
                if self.udp_zero {
                    b[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
                }
            }
            _ => {
                let icmp = if self.first {
                    ip.icmpv4_echo_request(self.src.1, 7)
                } else {
                    ip.icmpv4_echo_reply(self.src.1, 7)
                };
                icmp.write(&mut b, &self.payload).unwrap();
            }
        }
        b
    }
}

/// What a frame carries, checking every checksum in it against a full recomputation:
/// ((src, sport), (dst, dport), ttl, transport payload). For ICMP errors, also the quoted IPv4
/// header's checksum; the quoted addresses and ports are returned as the "ports".
fn verify(frame: &[u8], udp_zero: bool) -> Result<Seen, TestCaseError> {
    let p = SlicedPacket::from_ethernet(frame)
        .map_err(|e| TestCaseError::fail(format!("does not parse: {e:?}")))?;
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        return Err(TestCaseError::fail("not IPv4"));
    };
    let h = ip.header().to_header();
    prop_assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 checksum");
    let (sport, dport, payload, quoted) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let full = t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap();
            prop_assert_eq!(t.checksum(), full, "TCP checksum");
            (t.source_port(), t.destination_port(), t.payload(), None)
        }
        Some(TransportSlice::Udp(u)) => {
            if udp_zero {
                prop_assert_eq!(u.checksum(), 0, "a UDP checksum of 0 stays 0");
            } else {
                let full = u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap();
                prop_assert_eq!(u.checksum(), full, "UDP checksum");
            }
            (u.source_port(), u.destination_port(), u.payload(), None)
        }
        Some(TransportSlice::Icmpv4(icmp)) => {
            let full = icmp.icmp_type().calc_checksum(icmp.payload());
            prop_assert_eq!(icmp.checksum(), full, "ICMP checksum");
            match icmp.icmp_type() {
                Icmpv4Type::EchoRequest(e) | Icmpv4Type::EchoReply(e) => {
                    (e.id, e.id, icmp.payload(), None)
                }
                _ => {
                    let inner = etherparse::Ipv4HeaderSlice::from_slice(icmp.payload())
                        .map_err(|e| TestCaseError::fail(format!("quoted header: {e:?}")))?;
                    let ih = inner.to_header();
                    prop_assert_eq!(
                        ih.header_checksum,
                        ih.calc_header_checksum(),
                        "quoted IPv4 checksum"
                    );
                    let l4 = &icmp.payload()[inner.slice().len()..];
                    let r = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
                    let ports = match ih.protocol.0 {
                        ICMP => (r(4), r(4)),
                        _ => (r(0), r(2)),
                    };
                    let q = (
                        (Ipv4Addr::from(ih.source), ports.0),
                        (Ipv4Addr::from(ih.destination), ports.1),
                    );
                    (0, 0, icmp.payload(), Some(q))
                }
            }
        }
        _ => return Err(TestCaseError::fail("no transport")),
    };
    Ok(Seen {
        src: (h.source.into(), sport),
        dst: (h.destination.into(), dport),
        ttl: h.time_to_live,
        payload: payload.to_vec(),
        quoted,
        frame: frame.to_vec(),
    })
}

#[derive(Debug)]
struct Seen {
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    ttl: u8,
    payload: Vec<u8>,
    quoted: Option<((Ipv4Addr, u16), (Ipv4Addr, u16))>,
    frame: Vec<u8>,
}

/// Sends `p` and checks what the gateway forwarded; on TTL 1, the ICMP error it sent instead.
fn through(gw: &mut Gateway, p: &Packet, now: u64) -> Result<Option<Seen>, TestCaseError> {
    let (ingress, _) = port_of(p.src.0);
    let out = send(gw, p.frame(), ingress, now);
    if p.ttl <= 1 {
        prop_assert_eq!(out.next, Disposition::Drop);
        prop_assert_eq!(out.emit.len(), 1, "time exceeded");
        let error = verify(&out.emit[0].frame, false)?;
        prop_assert_eq!(error.dst.0, p.src.0);
        return Ok(None);
    }
    let seen = verify(&out.frame, p.udp_zero)?;
    prop_assert_eq!(
        out.next,
        Disposition::Forward(port_of(seen.dst.0).0),
        "{:?}",
        seen
    );
    prop_assert_eq!(seen.ttl, p.ttl - 1, "TTL decremented");
    prop_assert_eq!(&seen.payload, &p.payload, "payload untouched");
    Ok(Some(seen))
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A pod to the service VIP (DNAT; hairpin SNAT when it lands on itself).
    Service,
    /// A pod to an external host (SNAT to the node address).
    Masquerade,
    /// An external host to a NodePort (DNAT and SNAT).
    NodePort,
    /// A pod to the other node's pod: routed, TTL only.
    Routed,
}

#[derive(Debug, Clone)]
struct Case {
    kind: Kind,
    proto: u8,
    client: usize,
    sport: u16,
    far: Ipv4Addr,
    far_port: u16,
    ttl: (u8, u8, u8),
    payloads: (Vec<u8>, Vec<u8>),
    udp_zero: (bool, bool),
    quote_all: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (0u8..4, 0u8..3, 0usize..3, 1u16..=65535),
        (1u8..=254, 1u8..=254, 1u16..=65535),
        (2u8..=255, 1u8..=255, 2u8..=255),
        (
            proptest::collection::vec(any::<u8>(), 0..1200),
            proptest::collection::vec(any::<u8>(), 0..1200),
        ),
        (any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |((kind, proto, client, sport), (a, b, far_port), ttl, payloads, flags)| {
                let kind = [
                    Kind::Service,
                    Kind::Masquerade,
                    Kind::NodePort,
                    Kind::Routed,
                ][kind as usize];
                let proto = match kind {
                    // Services here are TCP and UDP.
                    Kind::Service | Kind::NodePort => [TCP, UDP, TCP][proto as usize],
                    _ => [TCP, UDP, ICMP][proto as usize],
                };
                let far = match kind {
                    Kind::Routed => Ipv4Addr::new(10, 244, 2, b),
                    _ => Ipv4Addr::new(198, 19, a, b),
                };
                // ICMP echo identifiers in the NAT range: see
                // `masqueraded_ping_with_an_identifier_below_the_nat_range_gets_its_replies`.
                let sport = if proto == ICMP {
                    1024 + sport % (65535 - 1024)
                } else {
                    sport
                };
                Case {
                    kind,
                    proto,
                    client,
                    sport,
                    far,
                    far_port,
                    ttl,
                    payloads,
                    udp_zero: (flags.0, flags.1),
                    quote_all: flags.2,
                }
            },
        )
}

fn run(c: &Case) -> Result<(), TestCaseError> {
    let mut gw = gateway();
    let service_port = if c.proto == TCP { 80 } else { 53 };
    let node_port = if c.proto == TCP {
        TCP_NODE_PORT
    } else {
        UDP_NODE_PORT
    };
    let (src, dst) = match c.kind {
        Kind::Service => ((PODS[c.client], c.sport), (VIP, service_port)),
        Kind::Masquerade | Kind::Routed => ((PODS[c.client], c.sport), (c.far, c.far_port)),
        Kind::NodePort => ((c.far, c.sport), (NODE_IP, node_port)),
    };
    let dst = if c.proto == ICMP { (dst.0, src.1) } else { dst };
    let first = Packet {
        proto: c.proto,
        src,
        dst,
        ttl: c.ttl.0,
        payload: c.payloads.0.clone(),
        udp_zero: c.udp_zero.0,
        first: true,
    };
    let sent = through(&mut gw, &first, 1)?.expect("TTL ≥ 2 is forwarded");
    let translated = match c.kind {
        Kind::Routed => sent.src == src && sent.dst == dst,
        Kind::Masquerade => sent.src.0 == NODE_IP && sent.dst == dst,
        Kind::NodePort => sent.src.0 == NODE_IP && sent.dst.0 != NODE_IP,
        Kind::Service => sent.dst.0 != VIP,
    };
    prop_assert!(translated, "{:?} sent as {:?}", c.kind, sent);

    // The far end answers what it received; the client sees it come from where it sent to.
    let reply = Packet {
        proto: c.proto,
        src: sent.dst,
        dst: sent.src,
        ttl: c.ttl.1,
        payload: c.payloads.1.clone(),
        udp_zero: c.udp_zero.1,
        first: false,
    };
    if let Some(back) = through(&mut gw, &reply, 2)? {
        prop_assert_eq!((back.src, back.dst), (dst, src), "reply translated back");
    }

    // The far end says it could not deliver what it received, quoting its header and the first
    // 8 bytes after it, or all of it: the client gets it about what the client sent.
    let ip = &sent.frame[14..];
    let quote_len = if c.quote_all { ip.len() } else { 28 };
    let mut error = Vec::new();
    PacketBuilder::ethernet2(port_of(sent.dst.0).1 .0, GW_MAC.0)
        .ipv4(sent.dst.0.octets(), sent.src.0.octets(), c.ttl.2)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut error, &ip[..quote_len])
        .unwrap();
    let out = send(&mut gw, error, port_of(sent.dst.0).0, 3);
    let related = verify(&out.frame, false)?;
    prop_assert_eq!(out.next, Disposition::Forward(port_of(src.0).0));
    prop_assert_eq!(related.dst.0, src.0);
    prop_assert_eq!(related.ttl, c.ttl.2 - 1);
    prop_assert_eq!(
        related.quoted,
        Some((src, dst)),
        "quoted header translated back"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn incremental_checksum_updates_equal_a_full_recomputation(c in case()) {
        run(&c)?;
    }
}

#[test]
fn masqueraded_ping_with_an_identifier_below_the_nat_range_gets_its_replies() {
    let mut gw = gateway();
    let ext = Ipv4Addr::new(198, 19, 0, 10);
    let request = Packet {
        proto: ICMP,
        src: (PODS[0], 100),
        dst: (ext, 100),
        ttl: 64,
        payload: b"ping".to_vec(),
        udp_zero: false,
        first: true,
    };
    let sent = through(&mut gw, &request, 1).unwrap().expect("forwarded");
    assert_eq!(sent.src.0, NODE_IP);
    assert!(
        sent.src.1 >= 1024,
        "identifier {} in the NAT range",
        sent.src.1
    );
    let reply = Packet {
        src: sent.dst,
        dst: sent.src,
        first: false,
        ..request
    };
    let (ingress, _) = port_of(ext);
    let out = send(&mut gw, reply.frame(), ingress, 2);
    assert_eq!(
        out.next,
        Disposition::Forward(0),
        "the echo reply reaches the pod"
    );
    let back = verify(&out.frame, false).unwrap();
    assert_eq!((back.src, back.dst), ((ext, 100), (PODS[0], 100)));
}

#[test]
fn icmp_errors_translate_the_quoted_udp_checksum_too() {
    let mut gw = gateway();
    let ext = Ipv4Addr::new(198, 19, 0, 10);
    let query = Packet {
        proto: UDP,
        src: (PODS[0], 999),
        dst: (ext, 53),
        ttl: 64,
        payload: b"query".to_vec(),
        udp_zero: false,
        first: true,
    };
    let sent = through(&mut gw, &query, 1).unwrap().expect("forwarded");
    assert_ne!(sent.src, query.src, "masqueraded");
    // The external host quotes the whole datagram it received.
    let mut error = Vec::new();
    PacketBuilder::ethernet2(ROUTER_MAC.0, GW_MAC.0)
        .ipv4(ext.octets(), NODE_IP.octets(), 60)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut error, &sent.frame[14..])
        .unwrap();
    let out = send(&mut gw, error, UPLINK, 2);
    assert_eq!(out.next, Disposition::Forward(0));
    let p = SlicedPacket::from_ethernet(&out.frame).unwrap();
    let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!("not ICMP")
    };
    // The quoted datagram, as a packet of its own, must be the pod's datagram again.
    let inner = SlicedPacket::from_ip(icmp.payload()).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &inner.net else {
        panic!("quoted header")
    };
    let h = ip.header().to_header();
    let Some(TransportSlice::Udp(u)) = &inner.transport else {
        panic!("quoted UDP")
    };
    assert_eq!((Ipv4Addr::from(h.source), u.source_port()), query.src);
    let full = u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap();
    assert_eq!(u.checksum(), full, "quoted UDP checksum");
}
