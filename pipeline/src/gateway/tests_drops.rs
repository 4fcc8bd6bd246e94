//! One test per gateway drop reason: the frame that should cause it, the disposition, and
//! exactly which counters moved. `every_drop_reason_is_asserted_by_a_test` keeps it complete.

use super::tests::*;
use super::*;
use crate::wire::arp::ARP_REPLY;
use crate::wire::ipv4::Ipv4Packet;
use crate::wire::MacAddr;
use etherparse::PacketBuilder;
use std::net::Ipv4Addr;

fn snapshot(gw: &Gateway) -> Vec<u64> {
    gw.counters().iter().map(|(_, v)| v).collect()
}

/// Every counter but `rx_frames` moved by exactly what `expected` says since `before`.
#[track_caller]
fn assert_moved(gw: &Gateway, before: &[u64], expected: &[(GwCounter, u64)]) {
    let moved: Vec<(GwCounter, u64)> = gw
        .counters()
        .iter()
        .zip(before)
        .filter(|((c, _), _)| *c != GwCounter::RxFrames)
        .filter(|((_, now), was)| now != *was)
        .map(|((c, now), was)| (c, now - was))
        .collect();
    let mut want = expected.to_vec();
    want.sort_by_key(|(c, _)| *c as usize);
    assert_eq!(moved, want, "counters that moved");
}

/// Sends one frame; asserts its disposition and the counters it moved.
#[track_caller]
fn drops(
    gw: &mut Gateway,
    frame: Vec<u8>,
    ingress: PortId,
    now: u64,
    expected: &[(GwCounter, u64)],
) -> Out {
    let before = snapshot(gw);
    let out = send(gw, frame, ingress, now);
    assert_eq!(out.next, Disposition::Drop);
    assert_moved(gw, &before, expected);
    out
}

fn udp(src_mac: MacAddr, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let mut b = Vec::new();
    PacketBuilder::ethernet2(src_mac.0, GW_MAC.0)
        .ipv4(src.0.octets(), dst.0.octets(), 64)
        .udp(src.1, dst.1)
        .write(&mut b, b"payload")
        .unwrap();
    b
}

fn refill_ip_checksum(frame: &mut [u8]) {
    Ipv4Packet::new_quoted(&mut frame[14..])
        .unwrap()
        .fill_checksum();
}

#[test]
fn drop_runt() {
    let mut gw = gateway(&config());
    for len in [0, 1, 13] {
        let frame = tcp(pod_mac(1), GW_MAC, (POD1, 1), (EXT, 80), true, 64)[..len].to_vec();
        drops(&mut gw, frame, 0, 0, &[(GwCounter::DropRunt, 1)]);
    }
}

#[test]
fn drop_bad_arp() {
    let mut gw = gateway(&config());
    let good = arp(ARP_REPLY, (pod_mac(1), POD1), (GW_MAC, GW_IP), GW_MAC);
    // Cut short, and an ARP for another hardware type.
    drops(
        &mut gw,
        good[..14 + 27].to_vec(),
        0,
        0,
        &[(GwCounter::DropBadArp, 1)],
    );
    // (IEEE 802, 6, is read as Ethernet, as Linux does; ARCNET is not.)
    let mut arcnet = good.clone();
    arcnet[14 + 1] = 7;
    drops(&mut gw, arcnet, 0, 0, &[(GwCounter::DropBadArp, 1)]);
    // Nothing was learned from either.
    assert!(gw.shared.neighbors.read().get(POD1, 0).is_none());
}

#[test]
fn drop_ipv4_bad_header_length() {
    let mut gw = gateway(&config());
    let good = tcp(pod_mac(1), GW_MAC, (POD1, 1), (EXT, 80), true, 64);
    // IHL 4 (16 bytes), and IHL 15 (60 bytes) in a 60-byte packet of 20-byte header.
    for (ihl, frame_len) in [(4u8, good.len()), (15, 14 + 40)] {
        let mut bad = good[..frame_len].to_vec();
        bad[14] = 0x40 | ihl;
        drops(&mut gw, bad, 0, 0, &[(GwCounter::DropIpv4HeaderLength, 1)]);
    }
}

#[test]
fn drop_ipv4_bad_total_length() {
    let mut gw = gateway(&config());
    let good = tcp(pod_mac(1), GW_MAC, (POD1, 1), (EXT, 80), true, 64);
    let ip_len = good.len() - 14;
    // Longer than the frame, and shorter than the header.
    for total in [ip_len as u16 + 1, 19] {
        let mut bad = good.clone();
        bad[16..18].copy_from_slice(&total.to_be_bytes());
        refill_ip_checksum(&mut bad);
        drops(&mut gw, bad, 0, 0, &[(GwCounter::DropIpv4TotalLength, 1)]);
    }
}

#[test]
fn drop_uplink_not_for_us() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    // IPv4 on the uplink to another MAC, to broadcast, and a non-IP ethertype to us.
    let mut to_other = tcp(ROUTER_MAC, pod_mac(1), (EXT, 1), (POD1, 80), true, 64);
    drops(
        &mut gw,
        to_other.clone(),
        UPLINK,
        0,
        &[(GwCounter::DropUplinkNotForUs, 1)],
    );
    to_other[0..6].copy_from_slice(&MacAddr::BROADCAST.0);
    drops(
        &mut gw,
        to_other,
        UPLINK,
        0,
        &[(GwCounter::DropUplinkNotForUs, 1)],
    );
    let mut ipv6 = tcp(ROUTER_MAC, GW_MAC, (EXT, 1), (NODE_IP, 80), true, 64);
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    drops(
        &mut gw,
        ipv6,
        UPLINK,
        0,
        &[(GwCounter::DropUplinkNotForUs, 1)],
    );
}

#[test]
fn drop_port_not_in_a_segment() {
    let mut gw = gateway(&config());
    // Port 4 is neither a pod port (0..=2) nor the uplink (3).
    let frame = tcp(pod_mac(1), GW_MAC, (POD1, 1), (EXT, 80), true, 64);
    drops(&mut gw, frame, 4, 0, &[(GwCounter::DropNotInSegment, 1)]);
    let request = arp(
        crate::wire::arp::ARP_REQUEST,
        (pod_mac(1), POD1),
        (MacAddr::ZERO, GW_IP),
        MacAddr::BROADCAST,
    );
    drops(&mut gw, request, 4, 0, &[(GwCounter::DropNotInSegment, 1)]);
    assert!(gw.shared.neighbors.read().is_empty());
}

#[test]
fn drop_service_without_backends() {
    let mut c = config();
    c.services[0].backends.clear();
    let mut gw = gateway(&c);
    learn_neighbors(&mut gw);
    let syn = tcp(pod_mac(3), GW_MAC, (POD3, 1234), (VIP, 80), true, 64);
    drops(&mut gw, syn, 2, 0, &[(GwCounter::DropNoBackend, 1)]);
    // Its NodePort too.
    let syn = tcp(ROUTER_MAC, GW_MAC, (EXT, 1234), (NODE_IP, 30080), true, 64);
    drops(&mut gw, syn, UPLINK, 0, &[(GwCounter::DropNoBackend, 1)]);
    // And a port the VIP does not serve, as kube-proxy rejects it.
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    let syn = tcp(pod_mac(3), GW_MAC, (POD3, 1234), (VIP, 81), true, 64);
    drops(&mut gw, syn, 2, 0, &[(GwCounter::DropNoBackend, 1)]);
    assert!(gw.shared.conntrack.is_empty());
}

#[test]
fn drop_conntrack_full() {
    let mut c = config();
    // One flow per shard.
    c.conntrack_capacity = 1;
    let mut gw = gateway(&c);
    learn_neighbors(&mut gw);
    // An established flow (a UDP flow that was answered) cannot be evicted.
    let out = send(
        &mut gw,
        udp(pod_mac(1), (POD1, 5000), (REMOTE_POD, 53)),
        0,
        0,
    );
    assert_eq!(out.next, Disposition::Forward(UPLINK));
    let out = send(
        &mut gw,
        udp(ROUTER_MAC, (REMOTE_POD, 53), (POD1, 5000)),
        UPLINK,
        0,
    );
    assert_eq!(out.next, Disposition::Forward(0));
    // New flows land in other shards (evicting each other there: they are unanswered) until
    // one lands in the established flow's shard.
    let mut full = None;
    for sport in 6000..8000u16 {
        let frame = udp(pod_mac(2), (POD2, sport), (REMOTE_POD, 53));
        let before = snapshot(&gw);
        let out = send(&mut gw, frame, 1, 1);
        if gw.counters().get(GwCounter::DropConntrackFull) != 0 {
            full = Some((out, before));
            break;
        }
        assert_eq!(out.next, Disposition::Forward(UPLINK));
    }
    let (out, before) = full.expect("2000 new flows never met the established flow's shard");
    assert_eq!(out.next, Disposition::Drop);
    assert_moved(&gw, &before, &[(GwCounter::DropConntrackFull, 1)]);
    // The established flow is still there and still forwarded.
    let out = send(
        &mut gw,
        udp(pod_mac(1), (POD1, 5000), (REMOTE_POD, 53)),
        0,
        2,
    );
    assert_eq!(out.next, Disposition::Forward(UPLINK));
}

/// A TCP segment of one flow from pod 1 to the external host, whose router is unresolved.
fn pod1_to_ext(seq: u32) -> Vec<u8> {
    let mut b = Vec::new();
    PacketBuilder::ethernet2(pod_mac(1).0, GW_MAC.0)
        .ipv4(POD1.octets(), EXT.octets(), 64)
        .tcp(5555, 443, seq, 64000)
        .ack(1)
        .write(&mut b, b"data")
        .unwrap();
    b
}

#[test]
fn drop_neighbor_queue_full() {
    let mut gw = gateway(&config());
    learn_pods(&mut gw);
    // l3::neigh::PENDING_PER_ADDRESS (private to l3), as Linux's unres_qlen.
    let limit = 16u32;
    for seq in 0..limit {
        let out = send(&mut gw, pod1_to_ext(seq), 0, 0);
        assert_eq!(out.next, Disposition::Consumed);
    }
    assert_eq!(gw.counters().get(GwCounter::NeighborQueued), limit as u64);
    drops(
        &mut gw,
        pod1_to_ext(limit),
        0,
        0,
        &[
            (GwCounter::Routed, 1),
            (GwCounter::DropNeighborQueueFull, 1),
        ],
    );
}

#[test]
fn drop_neighbor_unresolved() {
    let mut gw = gateway(&config());
    learn_pods(&mut gw);
    for seq in 0..2 {
        let out = send(&mut gw, pod1_to_ext(seq), 0, 0);
        assert_eq!(out.next, Disposition::Consumed);
    }
    assert_eq!(gw.counters().get(GwCounter::ArpRequestsSent), 1);
    // Asked again twice, a second apart; then the queued frames are given up.
    let mut emit = Vec::new();
    let before = snapshot(&gw);
    gw.housekeeping(1000, true, &mut emit);
    gw.housekeeping(2000, true, &mut emit);
    assert_moved(&gw, &before, &[(GwCounter::ArpRequestsSent, 2)]);
    assert_eq!(emit.len(), 2, "two more ARP requests");
    let before = snapshot(&gw);
    emit.clear();
    gw.housekeeping(3000, true, &mut emit);
    assert_moved(&gw, &before, &[(GwCounter::DropNeighborUnresolved, 2)]);
    assert!(emit.is_empty(), "{emit:?}");
    // The router answering now releases nothing.
    let out = send(
        &mut gw,
        arp(ARP_REPLY, (ROUTER_MAC, ROUTER), (GW_MAC, NODE_IP), GW_MAC),
        UPLINK,
        3001,
    );
    assert!(out.emit.is_empty());
}

/// An ICMP port unreachable from the external host to the node, quoting `quoted`.
fn port_unreachable(quoted: &[u8]) -> Vec<u8> {
    let mut error = Vec::new();
    PacketBuilder::ethernet2(ROUTER_MAC.0, GW_MAC.0)
        .ipv4(EXT.octets(), NODE_IP.octets(), 60)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut error, quoted)
        .unwrap();
    error
}

#[test]
fn drop_martian_destination() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    let expected = [(GwCounter::DropMartianDestination, 1)];
    for dst in [
        Ipv4Addr::BROADCAST,
        Ipv4Addr::new(224, 0, 0, 251),
        Ipv4Addr::new(239, 1, 2, 3),
        Ipv4Addr::LOCALHOST,
        Ipv4Addr::new(0, 1, 2, 3),
    ] {
        drops(
            &mut gw,
            udp(pod_mac(1), (POD1, 5000), (dst, 53)),
            0,
            0,
            &expected,
        );
        drops(
            &mut gw,
            udp(ROUTER_MAC, (EXT, 5000), (dst, 53)),
            UPLINK,
            0,
            &expected,
        );
    }
    assert!(
        gw.shared.conntrack.is_empty(),
        "no flow for what is dropped"
    );
}

#[test]
fn drop_icmp_error_without_flow() {
    let mut gw = gateway(&config());
    learn_neighbors(&mut gw);
    // A datagram the node sent (as masquerade would have) that no flow knows.
    let never_sent = udp(GW_MAC, (NODE_IP, 40000), (EXT, 53));
    let expected = [(GwCounter::DropIcmpRelatedUnknown, 1)];
    drops(
        &mut gw,
        port_unreachable(&never_sent[14..14 + 28]),
        UPLINK,
        0,
        &expected,
    );
    // A quote too short for the ports, a quote of another protocol, and no IP header at all.
    drops(
        &mut gw,
        port_unreachable(&never_sent[14..14 + 24]),
        UPLINK,
        0,
        &expected,
    );
    let mut gre = never_sent[14..14 + 28].to_vec();
    gre[9] = 47;
    drops(&mut gw, port_unreachable(&gre), UPLINK, 0, &expected);
    drops(&mut gw, port_unreachable(&[0u8; 8]), UPLINK, 0, &expected);
}

/// Every `drop_*` counter is named, as `GwCounter::Variant`, by some gateway test: a new drop
/// reason without a test fails here.
#[test]
fn every_drop_reason_is_asserted_by_a_test() {
    let sources = [
        include_str!("tests.rs"),
        include_str!("tests_drops.rs"),
        include_str!("tests_vxlan.rs"),
    ];
    // This test's own text does not count.
    let marker = concat!("fn every_drop_reason_is_", "asserted_by_a_test");
    let sources: Vec<&str> = sources
        .iter()
        .map(|s| s.split(marker).next().unwrap())
        .collect();
    let untested: Vec<&str> = GwCounter::ALL
        .iter()
        .filter(|c| c.name().starts_with("drop_"))
        .filter(|c| {
            let needle = format!("GwCounter::{c:?}");
            !sources.iter().any(|s| {
                s.match_indices(&needle).any(|(at, _)| {
                    // Whole variant names only (DropIpv4 is not DropIpv4Truncated).
                    !s[at + needle.len()..].starts_with(|ch: char| ch.is_alphanumeric())
                })
            })
        })
        .map(|c| c.name())
        .collect();
    assert!(
        untested.is_empty(),
        "drop reasons no test asserts: {untested:?}"
    );
}
