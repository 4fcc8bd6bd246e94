//! The VXLAN overlay through one gateway: encapsulation to a peer's VTEP, decapsulation and the
//! second pass, services across nodes, fragmentation-needed, and every decapsulation drop.

use super::tests::*;
use super::*;
use crate::wire::arp::ARP_REQUEST;
use crate::wire::ipv4::PROTO_TCP;
use crate::wire::vxlan::{ENCAP_OVERHEAD, SOURCE_PORT_BASE};
use crate::wire::MacAddr;
use etherparse::{Icmpv4Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use std::net::Ipv4Addr;

pub(super) const VNI: u32 = 42;
pub(super) const OUR_VTEP_MAC: MacAddr = MacAddr([0x0e, 0, 0, 0, 0, 1]);
/// Node 3: its pods 10.244.3.0/24 behind its VTEP (node 2 stays a host-gw route: both kinds
/// mixed on one node).
pub(super) const NODE3: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
pub(super) const NODE3_MAC: MacAddr = MacAddr([0x02, 0xbb, 0, 0, 0, 3]);
pub(super) const NODE3_VTEP_MAC: MacAddr = MacAddr([0x0e, 0, 0, 0, 0, 3]);
pub(super) const NODE3_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 7);

pub(super) fn overlay_config() -> GatewayConfig {
    let mut c = config();
    c.vxlan = Some(VxlanConfig {
        vni: VNI,
        udp_port: 4789,
        local: NODE_IP,
        mac: OUR_VTEP_MAC,
        peers: vec![VxlanPeer {
            cidr: "10.244.3.0/24".parse().unwrap(),
            vtep: NODE3,
            mac: NODE3_VTEP_MAC,
        }],
    });
    c
}

/// A gateway that knows its pods, the router, node 2 and node 3.
pub(super) fn overlay_gateway(config: &GatewayConfig) -> Gateway {
    let mut gw = gateway(config);
    learn_neighbors(&mut gw);
    let out = send(
        &mut gw,
        arp(
            ARP_REQUEST,
            (NODE3_MAC, NODE3),
            (MacAddr::ZERO, NODE_IP),
            MacAddr::BROADCAST,
        ),
        UPLINK,
        0,
    );
    assert_eq!(out.next, Disposition::Forward(UPLINK));
    gw
}

/// A TCP segment as node 3's pod sends it through its VTEP: inner Ethernet from its VTEP MAC
/// to ours.
fn inner_from_node3(dst: (Ipv4Addr, u16), ttl: u8) -> Vec<u8> {
    tcp(
        NODE3_VTEP_MAC,
        OUR_VTEP_MAC,
        (NODE3_POD, 33000),
        dst,
        true,
        ttl,
    )
}

/// `inner` wrapped as node 3's VTEP sends it, with `vni` and VXLAN flags `flags`; the outer
/// UDP checksum computed (etherparse) or zero.
pub(super) fn from_node3(inner: &[u8], vni: u32, flags: u8, udp_checksum: bool) -> Vec<u8> {
    let mut payload = vec![flags, 0, 0, 0, 0, 0, 0, 0];
    payload[4..7].copy_from_slice(&vni.to_be_bytes()[1..]);
    payload.extend_from_slice(inner);
    let mut b = Vec::new();
    PacketBuilder::ethernet2(NODE3_MAC.0, GW_MAC.0)
        .ipv4(NODE3.octets(), NODE_IP.octets(), 64)
        .udp(51234, 4789)
        .write(&mut b, &payload)
        .unwrap();
    if !udp_checksum {
        b[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    }
    b
}

/// The outer headers of an encapsulated frame, checked: (outer IPv4 header, UDP source port,
/// the inner frame).
fn unwrap_outer(frame: &[u8]) -> (etherparse::Ipv4Header, u16, Vec<u8>) {
    let p = SlicedPacket::from_ethernet(frame).expect("outer parses");
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!("outer not IPv4")
    };
    let h = ip.header().to_header();
    assert_eq!(
        h.header_checksum,
        h.calc_header_checksum(),
        "outer IPv4 checksum"
    );
    let Some(TransportSlice::Udp(udp)) = p.transport else {
        panic!("outer not UDP")
    };
    assert_eq!(udp.destination_port(), 4789);
    assert_eq!(
        udp.checksum(),
        0,
        "outer UDP checksum zero, as the kernel sends"
    );
    assert_eq!(udp.length() as usize, udp.slice().len());
    let vxlan = udp.payload();
    assert_eq!(vxlan[0], 0x08, "I flag");
    assert_eq!(u32::from_be_bytes([0, vxlan[4], vxlan[5], vxlan[6]]), VNI);
    (h, udp.source_port(), vxlan[8..].to_vec())
}

#[test]
fn traffic_to_a_peers_pod_is_encapsulated_to_its_vtep() {
    let mut gw = overlay_gateway(&overlay_config());
    let frame = tcp(pod_mac(1), GW_MAC, (POD1, 40000), (NODE3_POD, 80), true, 64);
    let inner_len = frame.len();
    let out = send(&mut gw, frame, 0, 1);
    assert_eq!(out.next, Disposition::Forward(UPLINK));
    assert_eq!(out.frame.len(), inner_len + ENCAP_OVERHEAD);
    assert_eq!(
        eth_dst(&out.frame),
        NODE3_MAC,
        "outer: to the VTEP's neighbour"
    );
    assert_eq!(MacAddr::from_bytes(&out.frame[6..12]), GW_MAC);
    let (outer, sport, inner) = unwrap_outer(&out.frame);
    assert_eq!(
        (outer.source, outer.destination),
        (NODE_IP.octets(), NODE3.octets())
    );
    assert!(outer.dont_fragment, "the overlay never fragments");
    assert_eq!(outer.time_to_live, 64);
    assert!(sport >= SOURCE_PORT_BASE);
    assert_eq!(eth_dst(&inner), NODE3_VTEP_MAC);
    assert_eq!(MacAddr::from_bytes(&inner[6..12]), OUR_VTEP_MAC);
    assert_eq!(addresses(&inner), (POD1, 40000, NODE3_POD, 80));
    assert_eq!(
        inner[14 + 8],
        63,
        "the inner TTL is decremented, as a router does"
    );
    let c = gw.counters();
    assert_eq!(c.get(GwCounter::VxlanEncapsulated), 1);
    assert_eq!(
        c.get(GwCounter::NatMasquerade),
        0,
        "peers' pods are in the cluster"
    );
    // Another flow of the same pods may take another source port (receivers spread flows).
    let ports: std::collections::HashSet<u16> = (0..16)
        .map(|i| {
            let f = tcp(
                pod_mac(1),
                GW_MAC,
                (POD1, 41000 + i),
                (NODE3_POD, 80),
                true,
                64,
            );
            unwrap_outer(&send(&mut gw, f, 0, 2).frame).1
        })
        .collect();
    assert!(ports.len() > 1, "source ports follow the inner flow");
    // Node 2's pods are still a host-gw route: routed, not encapsulated.
    let out = send(
        &mut gw,
        tcp(
            pod_mac(1),
            GW_MAC,
            (POD1, 40001),
            (REMOTE_POD, 80),
            true,
            64,
        ),
        0,
        3,
    );
    assert_eq!(out.next, Disposition::Forward(UPLINK));
    assert_eq!(addresses(&out.frame), (POD1, 40001, REMOTE_POD, 80));
}

#[test]
fn an_unresolved_vtep_holds_the_encapsulated_frame_until_arp_answers() {
    let mut gw = gateway(&overlay_config());
    learn_pods(&mut gw);
    let out = send(
        &mut gw,
        tcp(pod_mac(1), GW_MAC, (POD1, 40000), (NODE3_POD, 80), true, 64),
        0,
        0,
    );
    assert_eq!(out.next, Disposition::Consumed);
    assert_eq!(out.emit.len(), 1, "an ARP request for the VTEP");
    assert_eq!(out.emit[0].to, PortMask::single(UPLINK));
    let reply = arp(
        crate::wire::arp::ARP_REPLY,
        (NODE3_MAC, NODE3),
        (GW_MAC, NODE_IP),
        GW_MAC,
    );
    let out = send(&mut gw, reply, UPLINK, 1);
    assert_eq!(out.emit.len(), 1, "the held frame is released");
    assert_eq!(eth_dst(&out.emit[0].frame), NODE3_MAC);
    let (_, _, inner) = unwrap_outer(&out.emit[0].frame);
    assert_eq!(addresses(&inner), (POD1, 40000, NODE3_POD, 80));
}

#[test]
fn vxlan_from_a_peer_is_decapsulated_and_routed_to_the_pod() {
    let mut gw = overlay_gateway(&overlay_config());
    for (i, udp_checksum) in [true, false].into_iter().enumerate() {
        let inner = inner_from_node3((POD1, 80), 63);
        let out = send(
            &mut gw,
            from_node3(&inner, VNI, 0x08, udp_checksum),
            UPLINK,
            i as u64,
        );
        assert_eq!(out.next, Disposition::Forward(0));
        assert_eq!(out.frame.len(), inner.len(), "the outer headers are gone");
        assert_eq!(eth_dst(&out.frame), pod_mac(1));
        assert_eq!(MacAddr::from_bytes(&out.frame[6..12]), GW_MAC);
        assert_eq!(addresses(&out.frame), (NODE3_POD, 33000, POD1, 80));
        assert_eq!(out.frame[14 + 8], 62);
    }
    let c = gw.counters();
    assert_eq!(c.get(GwCounter::VxlanDecapsulated), 2);
    assert_eq!(c.get(GwCounter::Recirculated), 2);
    assert_eq!(c.get(GwCounter::DropUnsolicited), 0);
}

/// A host outside the cluster cannot reach a peer's pods through us (the peer takes what
/// comes out of the overlay as the cluster's, so it would not refuse it itself); the
/// cluster's own hosts can.
#[test]
fn unsolicited_inbound_to_a_peer_s_pods_is_dropped_here() {
    let mut gw = overlay_gateway(&overlay_config());
    let out = send(
        &mut gw,
        tcp(ROUTER_MAC, GW_MAC, (EXT, 1234), (NODE3_POD, 8080), true, 60),
        UPLINK,
        0,
    );
    assert_eq!(out.next, Disposition::Drop);
    assert_eq!(gw.counters().get(GwCounter::DropUnsolicited), 1);
    assert_eq!(gw.counters().get(GwCounter::VxlanEncapsulated), 0);
    let out = send(
        &mut gw,
        tcp(
            ROUTER_MAC,
            GW_MAC,
            (REMOTE_POD, 1234),
            (NODE3_POD, 8080),
            true,
            60,
        ),
        UPLINK,
        0,
    );
    assert_eq!(out.next, Disposition::Forward(UPLINK));
    assert_eq!(gw.counters().get(GwCounter::VxlanEncapsulated), 1);
}

#[test]
fn a_service_with_a_backend_on_a_peer_is_reached_and_answers() {
    let mut c = overlay_config();
    c.services[0].backends = backends(&[(NODE3_POD, 8080)]);
    let mut gw = overlay_gateway(&c);
    let out = pod3_syn_to_vip(&mut gw, 40000, 0);
    assert_eq!(out.next, Disposition::Forward(UPLINK));
    let (_, _, inner) = unwrap_outer(&out.frame);
    assert_eq!(addresses(&inner), (POD3, 40000, NODE3_POD, 8080));
    // The backend answers through its node's VTEP; the reply is un-DNATed to the VIP.
    let reply = tcp(
        NODE3_VTEP_MAC,
        OUR_VTEP_MAC,
        (NODE3_POD, 8080),
        (POD3, 40000),
        false,
        63,
    );
    let out = send(&mut gw, from_node3(&reply, VNI, 0x08, false), UPLINK, 1);
    assert_eq!(out.next, Disposition::Forward(2));
    assert_eq!(addresses(&out.frame), (VIP, 80, POD3, 40000));
    assert_eq!(gw.counters().get(GwCounter::NatService), 1);
}

#[test]
fn a_packet_too_big_for_the_overlay_gets_fragmentation_needed_when_it_has_df() {
    let mut gw = overlay_gateway(&overlay_config());
    let big = |df: bool, sport: u16| udp_from_pod1(NODE3_POD, sport, 1472, df);
    // 1500-byte IPv4: 50 bytes over the 1450 the overlay carries at uplink MTU 1500.
    let out = send(&mut gw, big(true, 5000), 0, 0);
    assert_eq!(out.next, Disposition::Drop);
    assert_eq!(out.emit.len(), 1);
    let p = SlicedPacket::from_ethernet(&out.emit[0].frame).unwrap();
    let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!("not ICMP")
    };
    assert_eq!(
        icmp.icmp_type(),
        Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1450 }
        )
    );
    assert_eq!(
        icmp.checksum(),
        icmp.icmp_type().calc_checksum(icmp.payload())
    );
    assert_eq!(gw.counters().get(GwCounter::DropOverlayTooBig), 1);
    let out = send(&mut gw, big(false, 5001), 0, 1);
    assert_eq!(out.next, Disposition::Drop);
    assert!(
        out.emit.is_empty(),
        "no DF: dropped without a word, as the issue asks"
    );
    assert_eq!(gw.counters().get(GwCounter::DropOverlayTooBig), 2);
    // At 1450 it fits.
    let mut fits = big(true, 5002);
    fits.truncate(14 + 1450);
    fits[16..18].copy_from_slice(&1450u16.to_be_bytes());
    fits[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&1430u16.to_be_bytes());
    crate::wire::ipv4::Ipv4Packet::new_quoted(&mut fits[14..])
        .unwrap()
        .fill_checksum();
    assert_eq!(send(&mut gw, fits, 0, 2).next, Disposition::Forward(UPLINK));
}

#[test]
fn icmp_errors_to_a_peers_pod_go_back_through_the_overlay() {
    let mut gw = overlay_gateway(&overlay_config());
    let inner = inner_from_node3((POD1, 80), 1);
    let out = send(&mut gw, from_node3(&inner, VNI, 0x08, true), UPLINK, 0);
    assert_eq!(out.next, Disposition::Drop);
    assert_eq!(gw.counters().get(GwCounter::DropTtlExceeded), 1);
    assert_eq!(out.emit.len(), 1);
    assert_eq!(out.emit[0].to, PortMask::single(UPLINK));
    let (outer, _, error) = unwrap_outer(&out.emit[0].frame);
    assert_eq!(outer.destination, NODE3.octets());
    assert_eq!(eth_dst(&error), NODE3_VTEP_MAC);
    let p = SlicedPacket::from_ethernet(&error).unwrap();
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!()
    };
    assert_eq!(ip.header().destination_addr(), NODE3_POD);
    assert_eq!(ip.header().source_addr(), GW_IP);
    assert!(matches!(
        p.transport,
        Some(TransportSlice::Icmpv4(ref i)) if matches!(i.icmp_type(), Icmpv4Type::TimeExceeded(_))
    ));
}

#[test]
fn reload_adds_and_removes_peers() {
    let mut without = overlay_config();
    without.vxlan.as_mut().unwrap().peers.clear();
    let mut gw = overlay_gateway(&without);
    let syn = |sport| tcp(pod_mac(1), GW_MAC, (POD1, sport), (NODE3_POD, 80), true, 64);
    // No peer: 10.244.3.0/24 is just another destination, routed to the router.
    let out = send(&mut gw, syn(40000), 0, 0);
    assert_eq!(eth_dst(&out.frame), ROUTER_MAC);
    gw.shared().reload(&overlay_config());
    let out = send(&mut gw, syn(40001), 0, 1);
    assert_eq!(eth_dst(&out.frame), NODE3_MAC);
    assert_eq!(gw.counters().get(GwCounter::VxlanEncapsulated), 1);
    gw.shared().reload(&without);
    let out = send(&mut gw, syn(40002), 0, 2);
    assert_eq!(eth_dst(&out.frame), ROUTER_MAC);
}

/// Sends `frame` on the uplink and asserts it is dropped for exactly `reason`.
#[track_caller]
fn dropped_for(gw: &mut Gateway, frame: Vec<u8>, reason: GwCounter) {
    let before = gw.counters().get(reason);
    let out = send(gw, frame, UPLINK, 0);
    assert_eq!(out.next, Disposition::Drop);
    assert_eq!(gw.counters().get(reason), before + 1, "{reason:?}");
}

#[test]
fn vxlan_that_is_not_for_us_is_dropped_by_reason() {
    let mut gw = overlay_gateway(&overlay_config());
    let inner = inner_from_node3((POD1, 80), 63);
    dropped_for(
        &mut gw,
        from_node3(&inner, VNI + 1, 0x08, true),
        GwCounter::DropVxlanWrongVni,
    );
    dropped_for(
        &mut gw,
        from_node3(&inner, VNI, 0x00, true),
        GwCounter::DropVxlanNoVni,
    );
    dropped_for(
        &mut gw,
        from_node3(&inner[..10], VNI, 0x08, true),
        GwCounter::DropVxlanTruncated,
    );
    let mut bad_sum = from_node3(&inner, VNI, 0x08, true);
    bad_sum[14 + 20 + 6] ^= 0x55;
    dropped_for(&mut gw, bad_sum, GwCounter::DropVxlanBadChecksum);
    let mut stranger = from_node3(&inner, VNI, 0x08, false);
    stranger[14 + 12..14 + 16].copy_from_slice(&[198, 18, 0, 99]);
    crate::wire::ipv4::Ipv4Packet::new_quoted(&mut stranger[14..])
        .unwrap()
        .fill_checksum();
    dropped_for(&mut gw, stranger, GwCounter::DropVxlanUnknownPeer);
    let mut first_fragment = from_node3(&inner, VNI, 0x08, false);
    first_fragment[14 + 6] = 0x20;
    crate::wire::ipv4::Ipv4Packet::new_quoted(&mut first_fragment[14..])
        .unwrap()
        .fill_checksum();
    dropped_for(&mut gw, first_fragment, GwCounter::DropVxlanFragmented);
    let not_ours = tcp(
        NODE3_VTEP_MAC,
        pod_mac(9),
        (NODE3_POD, 1),
        (POD1, 80),
        true,
        63,
    );
    dropped_for(
        &mut gw,
        from_node3(&not_ours, VNI, 0x08, true),
        GwCounter::DropVxlanInnerNotForUs,
    );
    assert_eq!(gw.counters().get(GwCounter::VxlanDecapsulated), 0);
}

#[test]
fn decapsulated_frames_that_are_not_for_a_local_pod_are_dropped_by_reason() {
    let mut gw = overlay_gateway(&overlay_config());
    // These pass the outer checks; the inner frame is judged in the second pass.
    let inner_arp = {
        let mut a = arp(
            ARP_REQUEST,
            (NODE3_VTEP_MAC, NODE3_POD),
            (MacAddr::ZERO, POD1),
            OUR_VTEP_MAC,
        );
        a[6..12].copy_from_slice(&NODE3_VTEP_MAC.0);
        a
    };
    dropped_for(
        &mut gw,
        from_node3(&inner_arp, VNI, 0x08, true),
        GwCounter::DropVxlanInnerNotIpv4,
    );
    let to_outside = inner_from_node3((EXT, 80), 63);
    dropped_for(
        &mut gw,
        from_node3(&to_outside, VNI, 0x08, true),
        GwCounter::DropVxlanInnerNotLocal,
    );
    // VXLAN inside VXLAN: one extra pass only.
    let inner = inner_from_node3((POD1, 80), 63);
    let mut nested = from_node3(&inner, VNI, 0x08, true);
    nested[0..6].copy_from_slice(&OUR_VTEP_MAC.0);
    let out = send(&mut gw, from_node3(&nested, VNI, 0x08, true), UPLINK, 0);
    assert_eq!(out.next, Disposition::Drop);
    assert_eq!(gw.counters().get(GwCounter::DropRecirculationLimit), 1);
    assert_eq!(gw.counters().get(GwCounter::VxlanDecapsulated), 3);
}

#[test]
fn a_frame_without_headroom_cannot_be_encapsulated() {
    let mut gw = overlay_gateway(&overlay_config());
    let mut frame = tcp(pod_mac(1), GW_MAC, (POD1, 40000), (NODE3_POD, 80), true, 64);
    let mut next = [Disposition::Forward(9)];
    let mut emit = Vec::new();
    // A plain slice has no room in front of it.
    gw.process(&mut [&mut frame[..]], 0, 0, &mut next, &mut emit);
    assert_eq!(next[0], Disposition::Drop);
    assert_eq!(gw.counters().get(GwCounter::DropNoHeadroom), 1);
    assert_eq!(gw.counters().get(GwCounter::VxlanEncapsulated), 0);
}

#[test]
fn the_second_pass_runs_over_the_whole_batch() {
    let mut gw = overlay_gateway(&overlay_config());
    let plain = tcp(pod_mac(1), GW_MAC, (POD1, 1), (EXT, 80), true, 64);
    let inner = inner_from_node3((POD2, 80), 63);
    let wrapped = from_node3(&inner, VNI, 0x08, true);
    let mut batch = vec![wrapped.clone(), plain, wrapped];
    let mut next = [Disposition::Drop; 3];
    let mut emit = Vec::new();
    gw.process(&mut batch, UPLINK, 0, &mut next, &mut emit);
    assert_eq!(next[0], Disposition::Forward(1));
    assert_eq!(next[2], Disposition::Forward(1));
    assert_eq!(addresses(&batch[0]), (NODE3_POD, 33000, POD2, 80));
    assert_eq!(gw.counters().get(GwCounter::Recirculated), 2);
    assert_eq!(PROTO_TCP, batch[0][14 + 9]);
}

/// The frame Linux's VXLAN device (set up as flannel does) sent from node 1 to node 2: see the
/// fixture's header for how it was captured and what it holds.
fn kernel_frame() -> Vec<u8> {
    let text = include_str!("../../tests/fixtures/kernel_vxlan_icmp.hex");
    let hex: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.trim().chars())
        .collect();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// Node `n` of the capture's topology as a vswitch node: pod subnet 10.244.n.0/24, uplink
/// 198.18.0.n, VTEP MAC 0e:00:00:00:00:0n, the other node its one peer.
fn capture_node(n: u8) -> GatewayConfig {
    let other = 3 - n;
    let mut c = config();
    c.gateway = format!("10.244.{n}.1/24").parse().unwrap();
    c.routes.clear();
    c.services.clear();
    let up = c.uplink.as_mut().unwrap();
    up.address = format!("198.18.0.{n}/24").parse().unwrap();
    up.next_hop = Ipv4Addr::new(198, 18, 0, other);
    c.vxlan = Some(VxlanConfig {
        vni: 1,
        udp_port: 4789,
        local: Ipv4Addr::new(198, 18, 0, n),
        mac: MacAddr([0x0e, 0, 0, 0, 0, n]),
        peers: vec![VxlanPeer {
            cidr: format!("10.244.{other}.0/24").parse().unwrap(),
            vtep: Ipv4Addr::new(198, 18, 0, other),
            mac: MacAddr([0x0e, 0, 0, 0, 0, other]),
        }],
    });
    c
}

const CAPTURE_POD_MAC: [MacAddr; 2] = [
    MacAddr([0x02, 0, 0x0a, 0xf4, 0x01, 0x0b]),
    MacAddr([0x02, 0, 0x0a, 0xf4, 0x02, 0x0b]),
];

/// Teaches node `n`'s gateway its pod (port 0) and the other node's uplink MAC.
fn capture_neighbours(gw: &mut Gateway, n: u8) {
    let other = 3 - n;
    let pod = Ipv4Addr::new(10, 244, n, 11);
    let gw_ip = Ipv4Addr::new(10, 244, n, 1);
    let pod_mac = CAPTURE_POD_MAC[n as usize - 1];
    let out = send(
        gw,
        arp(
            ARP_REQUEST,
            (pod_mac, pod),
            (MacAddr::ZERO, gw_ip),
            MacAddr::BROADCAST,
        ),
        0,
        0,
    );
    assert_eq!(out.next, Disposition::Forward(0));
    let peer_uplink_mac = MacAddr([0x02, 0, 0xc6, 0x12, 0, other]);
    let out = send(
        gw,
        arp(
            ARP_REQUEST,
            (peer_uplink_mac, Ipv4Addr::new(198, 18, 0, other)),
            (MacAddr::ZERO, Ipv4Addr::new(198, 18, 0, n)),
            MacAddr::BROADCAST,
        ),
        UPLINK,
        0,
    );
    assert_eq!(out.next, Disposition::Forward(UPLINK));
}

#[test]
fn a_frame_from_the_kernels_vxlan_device_is_decapsulated() {
    let mut gw = gateway(&capture_node(2));
    capture_neighbours(&mut gw, 2);
    let captured = kernel_frame();
    // Node 1 resolved node 2's address to node 2's MAC: here, the switch's.
    let mut received = captured.clone();
    received[0..6].copy_from_slice(&GW_MAC.0);
    let out = send(&mut gw, received, UPLINK, 1);
    assert_eq!(out.next, Disposition::Forward(0));
    assert_eq!(eth_dst(&out.frame), CAPTURE_POD_MAC[1]);
    let p = SlicedPacket::from_ethernet(&out.frame).unwrap();
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!()
    };
    let h = ip.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum());
    assert_eq!(
        (h.source, h.destination, h.time_to_live),
        ([10, 244, 1, 11], [10, 244, 2, 11], 62)
    );
    // The ICMP message itself is untouched.
    assert_eq!(&out.frame[34..], &captured[50 + 34..]);
    assert_eq!(gw.counters().get(GwCounter::VxlanDecapsulated), 1);
}

#[test]
fn our_encapsulation_of_the_same_packet_matches_the_kernels() {
    let captured = kernel_frame();
    let kernel_inner = &captured[ENCAP_OVERHEAD..];
    // What pod n1p1 sent: the inner IPv4 packet before node 1 routed it (TTL 64), from its MAC
    // to its gateway's.
    let mut gw = gateway(&capture_node(1));
    capture_neighbours(&mut gw, 1);
    let mut sent = Vec::new();
    sent.extend_from_slice(&GW_MAC.0);
    sent.extend_from_slice(&CAPTURE_POD_MAC[0].0);
    sent.extend_from_slice(&[0x08, 0x00]);
    sent.extend_from_slice(&kernel_inner[14..]);
    sent[14 + 8] = 64;
    crate::wire::ipv4::Ipv4Packet::new_quoted(&mut sent[14..])
        .unwrap()
        .fill_checksum();
    let out = send(&mut gw, sent, 0, 1);
    assert_eq!(out.next, Disposition::Forward(UPLINK));
    // The inner frame is byte for byte the kernel's.
    assert_eq!(&out.frame[ENCAP_OVERHEAD..], kernel_inner);
    // The outer headers agree on everything a receiver checks; they differ where the kernel's
    // choice is its own: DF (we set it), the IP id, the UDP source port and checksum (we send
    // zero), and the MACs (ours is the switch's).
    assert_eq!(eth_dst(&out.frame), MacAddr([0x02, 0, 0xc6, 0x12, 0, 2]));
    let (outer, _, _) = unwrap_outer_vni(&out.frame, 1);
    let kernel = etherparse::Ipv4HeaderSlice::from_slice(&captured[14..]).unwrap();
    assert_eq!(outer.source, kernel.source());
    assert_eq!(outer.destination, kernel.destination());
    assert_eq!(outer.total_len, kernel.total_len());
    assert_eq!(outer.time_to_live, kernel.ttl());
    assert_eq!(
        &out.frame[14 + 20 + 2..14 + 20 + 6],
        &captured[14 + 20 + 2..14 + 20 + 6]
    );
    assert_eq!(&out.frame[42..50], &captured[42..50], "VXLAN header");
}

/// As `unwrap_outer`, for another VNI.
fn unwrap_outer_vni(frame: &[u8], vni: u32) -> (etherparse::Ipv4Header, u16, Vec<u8>) {
    let mut copy = frame.to_vec();
    copy[42 + 4..42 + 7].copy_from_slice(&VNI.to_be_bytes()[1..]);
    assert_eq!(
        u32::from_be_bytes([0, frame[46], frame[47], frame[48]]),
        vni
    );
    unwrap_outer(&copy)
}

#[test]
fn a_node_port_with_its_backend_on_a_peer_works_both_ways() {
    let mut c = overlay_config();
    c.services[0].backends = backends(&[(NODE3_POD, 8080)]);
    let mut gw = overlay_gateway(&c);
    let out = send(
        &mut gw,
        tcp(ROUTER_MAC, GW_MAC, (EXT, 5555), (NODE_IP, 30080), true, 60),
        UPLINK,
        0,
    );
    assert_eq!(out.next, Disposition::Forward(UPLINK));
    let (outer, _, inner) = unwrap_outer(&out.frame);
    assert_eq!(outer.destination, NODE3.octets());
    let (src, sport, dst, dport) = addresses(&inner);
    assert_eq!(
        (src, dst, dport),
        (NODE_IP, NODE3_POD, 8080),
        "DNAT, and SNAT to the node"
    );
    // The backend's node routes the reply to our node address over the underlay, as flannel's
    // nodes do (node addresses are not behind the overlay).
    let reply = tcp(
        NODE3_MAC,
        GW_MAC,
        (NODE3_POD, 8080),
        (NODE_IP, sport),
        false,
        63,
    );
    let out = send(&mut gw, reply, UPLINK, 1);
    assert_eq!(out.next, Disposition::Forward(UPLINK));
    assert_eq!(eth_dst(&out.frame), ROUTER_MAC);
    assert_eq!(addresses(&out.frame), (NODE_IP, 30080, EXT, 5555));
    assert_eq!(gw.counters().get(GwCounter::NatNodePort), 1);
}

/// Puts the folded pseudo-header sum in a frame's TCP checksum field, as a sender with
/// transmit checksum offload leaves it.
fn leave_tcp_checksum_to_offload(frame: &mut [u8], ip_at: usize) {
    let ip = crate::wire::ipv4::Ipv4Packet::new_checked(&frame[ip_at..]).unwrap();
    let (src, dst, len, hl) = (ip.src(), ip.dst(), ip.payload().len(), ip.header_len());
    let pseudo = crate::wire::checksum::fold(crate::wire::checksum::pseudo_header(
        src.octets(),
        dst.octets(),
        PROTO_TCP,
        len as u16,
    ));
    let at = ip_at + hl + 16;
    frame[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
}

#[test]
fn checksums_a_kernel_peer_left_to_offload_are_finished() {
    let mut gw = overlay_gateway(&overlay_config());
    let inner = inner_from_node3((POD1, 80), 63);
    // Local checksum offload: the inner segment is partial, the outer UDP checksum was
    // computed for the finished one.
    let mut lco = from_node3(&inner, VNI, 0x08, true);
    leave_tcp_checksum_to_offload(&mut lco, ENCAP_OVERHEAD + 14);
    let out = send(&mut gw, lco, UPLINK, 0);
    assert_eq!(out.next, Disposition::Forward(0));
    assert_eq!(
        addresses(&out.frame),
        (NODE3_POD, 33000, POD1, 80),
        "inner checksum finished"
    );
    // The outer UDP checksum itself left to offload (the inner complete).
    let mut outer_partial = from_node3(&inner, VNI, 0x08, true);
    let udp_len = (outer_partial.len() - 34) as u16;
    let pseudo = crate::wire::checksum::fold(crate::wire::checksum::pseudo_header(
        NODE3.octets(),
        NODE_IP.octets(),
        17,
        udp_len,
    ));
    outer_partial[40..42].copy_from_slice(&pseudo.to_be_bytes());
    let out = send(&mut gw, outer_partial, UPLINK, 1);
    assert_eq!(out.next, Disposition::Forward(0));
    assert_eq!(gw.counters().get(GwCounter::ChecksumsCompleted), 2);
    assert_eq!(gw.counters().get(GwCounter::DropVxlanBadChecksum), 0);
}

#[test]
fn a_pods_partial_checksum_is_finished_before_nat() {
    let mut gw = overlay_gateway(&overlay_config());
    let mut syn = tcp(pod_mac(3), GW_MAC, (POD3, 40000), (VIP, 80), true, 64);
    leave_tcp_checksum_to_offload(&mut syn, 14);
    let out = send(&mut gw, syn, 2, 0);
    // Every backend's neighbour is known: forwarded at once, whichever Maglev picked.
    assert!(
        matches!(out.next, Disposition::Forward(_)),
        "{:?}",
        out.next
    );
    assert_eq!(gw.counters().get(GwCounter::ChecksumsCompleted), 1);
    // `addresses` verifies the TCP checksum after DNAT's incremental update.
    assert_eq!(addresses(&out.frame).3, 8080);
}
