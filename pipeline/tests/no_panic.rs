//! Arbitrary bytes on any port never panic the pipeline.

use pipeline::{Bridge, BridgeConfig, Disposition, MAX_BATCH};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn bridge_never_panics(
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 1..MAX_BATCH),
        ingress in 0u16..8,
        now in any::<u64>(),
    ) {
        let mut bridge = Bridge::new(&BridgeConfig { fdb_capacity: 16, announce_learning: true, ..Default::default() });
        let mut next = [Disposition::Drop; MAX_BATCH];
        bridge.process(&frames, ingress, now, &mut next);
        bridge.housekeeping(now);
        for (frame, d) in frames.iter().zip(next.iter()) {
            if frame.len() < 14 {
                prop_assert_eq!(*d, Disposition::Drop);
            }
            if let Disposition::Forward(p) = d {
                prop_assert_ne!(*p, ingress);
            }
        }
    }
}

mod gateway {
    use etherparse::PacketBuilder;
    use pipeline::gateway::{GatewayConfig, ServiceConfig, UplinkConfig};
    use pipeline::l2::BridgeConfig;
    use pipeline::wire::arp::ArpRepr;
    use pipeline::{
        Bridge, Disposition, Gateway, GatewayShared, GwCounter, MacAddr, PortId, MAX_BATCH,
    };
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    const GW_MAC: MacAddr = MacAddr([2, 0xaa, 0, 0, 0, 1]);
    const ROUTER_MAC: MacAddr = MacAddr([2, 0xbb, 0, 0, 0, 0xfe]);
    const PODS: [Ipv4Addr; 3] = [
        Ipv4Addr::new(10, 244, 1, 2),
        Ipv4Addr::new(10, 244, 1, 3),
        Ipv4Addr::new(10, 244, 1, 4),
    ];
    const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
    const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
    const NODE2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const EXT: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
    const UPLINK: PortId = 3;

    fn pod_mac(i: usize) -> MacAddr {
        MacAddr([2, 0, 0, 0, 1, i as u8 + 1])
    }

    fn config() -> GatewayConfig {
        GatewayConfig {
            mac: GW_MAC,
            pod_ports: vec![0, 1, 2],
            gateway: "10.244.1.1/24".parse().unwrap(),
            uplink: Some(UplinkConfig {
                port: UPLINK,
                address: "198.18.0.1/24".parse().unwrap(),
                next_hop: ROUTER,
                masquerade: true,
                cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
                nat_ports: (1024, 65535),
                mtu: 1500,
            }),
            routes: vec![("10.244.2.0/24".parse().unwrap(), NODE2)],
            services: vec![
                ServiceConfig {
                    name: "web".into(),
                    cluster_ip: VIP,
                    port: 80,
                    proto: 6,
                    node_port: Some(30080),
                    backends: vec![SocketAddrV4::new(PODS[0], 8080)],
                    affinity_timeout_s: None,
                    external_local: None,
                    node_port_backends: None,
                },
                ServiceConfig {
                    name: "dns".into(),
                    cluster_ip: VIP,
                    port: 53,
                    proto: 17,
                    node_port: None,
                    backends: vec![
                        SocketAddrV4::new(PODS[1], 5353),
                        SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, 5), 5353),
                    ],
                    affinity_timeout_s: None,
                    external_local: None,
                    node_port_backends: None,
                },
            ],
            vxlan: None,
            conntrack_capacity: 1024,
            neighbor_age_ms: 300_000,
        }
    }

    fn send(
        gw: &mut Gateway,
        mut frame: Vec<u8>,
        ingress: PortId,
        now: u64,
    ) -> (Disposition, Vec<u8>) {
        let mut next = [Disposition::Drop];
        let mut emit = Vec::new();
        gw.process(&mut [&mut frame[..]], ingress, now, &mut next, &mut emit);
        (next[0], frame)
    }

    fn arp_request(sender: (MacAddr, Ipv4Addr), target: Ipv4Addr) -> Vec<u8> {
        ArpRepr::request(sender, target).frame(MacAddr::BROADCAST)
    }

    fn tcp(mac: MacAddr, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: &str) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(mac.0, GW_MAC.0)
            .ipv4(src.0.octets(), dst.0.octets(), 64)
            .tcp(src.1, dst.1, 1000, 64000);
        let b = match flags {
            "S" => b.syn(),
            "SA" => b.syn().ack(1001),
            _ => b.ack(1001),
        };
        let mut out = Vec::new();
        b.write(&mut out, b"payload").unwrap();
        out
    }

    fn udp(mac: MacAddr, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(mac.0, GW_MAC.0)
            .ipv4(src.0.octets(), dst.0.octets(), 64)
            .udp(src.1, dst.1)
            .write(&mut out, b"query")
            .unwrap();
        out
    }

    fn port_unreachable(mac: MacAddr, src: Ipv4Addr, dst: Ipv4Addr, quoted: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(mac.0, GW_MAC.0)
            .ipv4(src.octets(), dst.octets(), 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Port,
            ))
            .write(&mut out, quoted)
            .unwrap();
        out
    }

    fn addresses(frame: &[u8]) -> ((Ipv4Addr, u16), (Ipv4Addr, u16)) {
        let ip = &frame[14..];
        let a = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
        let p = |at: usize| u16::from_be_bytes([ip[20 + at], ip[20 + at + 1]]);
        ((a(12), p(0)), (a(16), p(2)))
    }

    /// A gateway that knows its neighbours (the pods, the router, the other node) and tracks
    /// flows: an established TCP connection to the service VIP, a masqueraded UDP flow that was
    /// answered, a NodePort connection and a UDP service flow. Returns it with valid frames of
    /// those flows in both directions, and ICMP errors about them, each with its ingress port.
    fn seeded() -> (Gateway, Vec<(PortId, Vec<u8>)>) {
        let config = config();
        let mut gw = Gateway::new(
            GatewayShared::new(&config),
            Bridge::new(&config.pod_bridge(&BridgeConfig::default())),
        );
        for (i, ip) in PODS.iter().enumerate() {
            let (d, _) = send(
                &mut gw,
                arp_request((pod_mac(i), *ip), GW_IP),
                i as PortId,
                0,
            );
            assert_eq!(d, Disposition::Forward(i as PortId));
        }
        for ip in [ROUTER, NODE2] {
            let (d, _) = send(&mut gw, arp_request((ROUTER_MAC, ip), NODE_IP), UPLINK, 0);
            assert_eq!(d, Disposition::Forward(UPLINK));
        }
        let mut t = Vec::new();
        let exchange =
            |gw: &mut Gateway, t: &mut Vec<(PortId, Vec<u8>)>, ingress, frame: Vec<u8>| {
                t.push((ingress, frame.clone()));
                let (d, out) = send(gw, frame, ingress, 1);
                assert!(matches!(d, Disposition::Forward(_)), "{d:?}");
                out
            };
        // Pod 3 → VIP:80 → pod 1:8080, handshake completed.
        let client = (PODS[2], 40000);
        let syn = exchange(&mut gw, &mut t, 2, tcp(pod_mac(2), client, (VIP, 80), "S"));
        assert_eq!(addresses(&syn).1, (PODS[0], 8080));
        exchange(
            &mut gw,
            &mut t,
            0,
            tcp(pod_mac(0), (PODS[0], 8080), client, "SA"),
        );
        exchange(&mut gw, &mut t, 2, tcp(pod_mac(2), client, (VIP, 80), "A"));
        // Pod 1 → external DNS, masqueraded and answered; then a port unreachable about it.
        let query = exchange(
            &mut gw,
            &mut t,
            0,
            udp(pod_mac(0), (PODS[0], 999), (EXT, 53)),
        );
        let (nat_src, _) = addresses(&query);
        assert_eq!(nat_src.0, NODE_IP);
        exchange(&mut gw, &mut t, UPLINK, udp(ROUTER_MAC, (EXT, 53), nat_src));
        let error = port_unreachable(ROUTER_MAC, EXT, NODE_IP, &query[14..]);
        exchange(&mut gw, &mut t, UPLINK, error);
        // External host → NodePort → pod 1, SNATed to the node; pod 1 answers.
        let syn = exchange(
            &mut gw,
            &mut t,
            UPLINK,
            tcp(ROUTER_MAC, (EXT, 4321), (NODE_IP, 30080), "S"),
        );
        let (snat, backend) = addresses(&syn);
        exchange(&mut gw, &mut t, 0, tcp(pod_mac(0), backend, snat, "SA"));
        // Pod 1 → VIP:53 (pod 2 or the other node's pod), answered, and an error from the backend.
        let q = exchange(
            &mut gw,
            &mut t,
            0,
            udp(pod_mac(0), (PODS[0], 6000), (VIP, 53)),
        );
        let (_, backend) = addresses(&q);
        let port = if backend.0 == PODS[1] { 1 } else { UPLINK };
        let mac = if port == 1 { pod_mac(1) } else { ROUTER_MAC };
        exchange(&mut gw, &mut t, port, udp(mac, backend, (PODS[0], 6000)));
        let error = port_unreachable(mac, backend.0, PODS[0], &q[14..14 + 28]);
        exchange(&mut gw, &mut t, port, error);
        // Ordinary routing to the other node's pod.
        exchange(
            &mut gw,
            &mut t,
            1,
            udp(
                pod_mac(1),
                (PODS[1], 7000),
                (Ipv4Addr::new(10, 244, 2, 9), 7),
            ),
        );
        (gw, t)
    }

    /// Frames that get past the Ethernet and IPv4 checks, so the deeper stages see fuzz too.
    fn plausible() -> impl Strategy<Value = Vec<u8>> {
        (
            proptest::collection::vec(any::<u8>(), 0..120),
            any::<bool>(),
            0u8..3,
        )
            .prop_map(|(mut body, arp, proto)| {
                let mut frame = vec![0x02, 0xaa, 0, 0, 0, 1, 0x02, 0, 0, 0, 1, 9];
                frame.extend_from_slice(if arp { &[0x08, 0x06] } else { &[0x08, 0x00] });
                if !arp && body.len() >= 20 {
                    body[0] = 0x45;
                    body[9] = [1, 6, 17][proto as usize];
                    let total = body.len() as u16;
                    body[2..4].copy_from_slice(&total.to_be_bytes());
                    body[10..12].copy_from_slice(&[0, 0]);
                    let sum = pipeline::wire::checksum::checksum(&body[..20]);
                    body[10..12].copy_from_slice(&sum.to_be_bytes());
                }
                frame.extend_from_slice(&body);
                frame
            })
    }

    /// A frame of the fuzz batch: random, or a copy of one of `seeded`'s flow frames with a few
    /// bytes changed, maybe cut short, maybe with its IPv4 header checksum made valid again.
    #[derive(Debug, Clone)]
    enum Fuzz {
        Bytes(Vec<u8>),
        Flow {
            template: usize,
            changes: Vec<(usize, u8)>,
            cut: Option<usize>,
            fix_ip_checksum: bool,
        },
    }

    fn fuzz() -> impl Strategy<Value = Fuzz> {
        prop_oneof![
            1 => plausible().prop_map(Fuzz::Bytes),
            1 => proptest::collection::vec(any::<u8>(), 0..100).prop_map(Fuzz::Bytes),
            3 => (
                any::<usize>(),
                proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
                proptest::option::weighted(0.2, any::<usize>()),
                proptest::bool::weighted(0.8),
            )
                .prop_map(|(template, changes, cut, fix_ip_checksum)| Fuzz::Flow {
                    template,
                    changes,
                    cut,
                    fix_ip_checksum,
                }),
        ]
    }

    /// The frame, and the ingress port of its template (if any).
    fn materialize(f: &Fuzz, templates: &[(PortId, Vec<u8>)]) -> (Vec<u8>, Option<PortId>) {
        match f {
            Fuzz::Bytes(b) => (b.clone(), None),
            Fuzz::Flow {
                template,
                changes,
                cut,
                fix_ip_checksum,
            } => {
                let (port, frame) = &templates[template % templates.len()];
                let mut frame = frame.clone();
                // Mostly in the headers, where the gateway looks.
                let span = frame.len().min(14 + 60);
                for (at, x) in changes {
                    frame[at % span] ^= x;
                }
                if let Some(cut) = cut {
                    frame.truncate(cut % (frame.len() + 1));
                }
                if *fix_ip_checksum && frame.len() >= 34 && frame[12..14] == [0x08, 0x00] {
                    frame[24..26].copy_from_slice(&[0, 0]);
                    let sum = pipeline::wire::checksum::checksum(&frame[14..34]);
                    frame[24..26].copy_from_slice(&sum.to_be_bytes());
                }
                (frame, Some(*port))
            }
        }
    }

    /// The seeded flows' own frames, unchanged, reach the deep paths: NAT both ways, RELATED
    /// ICMP, forwarding to known neighbours (nothing queued).
    #[test]
    fn seeded_flow_frames_reach_the_deep_paths() {
        let (mut gw, templates) = seeded();
        let before: Vec<u64> = gw.counters().iter().map(|(_, v)| v).collect();
        for (port, frame) in &templates {
            let (d, _) = send(&mut gw, frame.clone(), *port, 2);
            assert!(matches!(d, Disposition::Forward(_)), "{d:?}");
        }
        let moved = |c: GwCounter| gw.counters().get(c) - before[c as usize];
        assert_eq!(moved(GwCounter::Routed), templates.len() as u64);
        assert_eq!(moved(GwCounter::IcmpRelatedTranslated), 2);
        assert_eq!(moved(GwCounter::NeighborQueued), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn gateway_never_panics(
            fuzz in proptest::collection::vec(fuzz(), 1..MAX_BATCH),
            ingress in 0u16..5,
            template_ingress in proptest::bool::weighted(0.7),
            now in prop_oneof![2u64..60_000, 0u64..1_000_000],
        ) {
            let (mut gw, templates) = seeded();
            let mut frames = Vec::new();
            let mut from_template = None;
            for f in &fuzz {
                let (frame, port) = materialize(f, &templates);
                from_template = from_template.or(port);
                frames.push(frame);
            }
            // Mostly the port the flow's frames come in on, so they match as they would.
            let ingress = match from_template {
                Some(port) if template_ingress => port,
                _ => ingress,
            };
            let mut views: Vec<&mut [u8]> = frames.iter_mut().map(|f| &mut f[..]).collect();
            let mut next = [Disposition::Drop; MAX_BATCH];
            let mut emit = Vec::new();
            let n = views.len();
            gw.process(&mut views, ingress, now, &mut next[..n], &mut emit);
            gw.housekeeping(now + 10_000, true, &mut emit);
            drop(views);
            for (d, f) in next.iter().zip(frames.iter()) {
                if let Disposition::Flood(mask) = d {
                    prop_assert!(!mask.contains(ingress));
                }
                if f.len() < 14 {
                    prop_assert_eq!(*d, Disposition::Drop);
                }
            }
        }
    }
}
