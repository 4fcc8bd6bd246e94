//! What the gateway offers the XDP fast path, and when an offer stops holding.

use super::tests::*;
use super::*;
use crate::conntrack::{Tuple, NODE_ZONE};
use crate::wire::ipv4::{PROTO_TCP, PROTO_UDP};
use crate::wire::MacAddr;
use etherparse::PacketBuilder;

/// A TCP segment with the given SYN/ACK/FIN flags.
pub(super) fn segment(
    macs: (MacAddr, MacAddr),
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    (syn, ack, fin): (bool, bool, bool),
) -> Vec<u8> {
    let mut b = Vec::new();
    let mut builder = PacketBuilder::ethernet2(macs.0 .0, macs.1 .0)
        .ipv4(src.0.octets(), dst.0.octets(), 64)
        .tcp(src.1, dst.1, 1, 64000);
    if syn {
        builder = builder.syn();
    }
    if ack {
        builder = builder.ack(1);
    }
    if fin {
        builder = builder.fin();
    }
    builder.write(&mut b, b"data").unwrap();
    b
}

pub(super) const SYN: (bool, bool, bool) = (true, false, false);
pub(super) const SYN_ACK: (bool, bool, bool) = (true, true, false);
pub(super) const ACK: (bool, bool, bool) = (false, true, false);
pub(super) const FIN: (bool, bool, bool) = (false, true, true);

/// A gateway with the fast path on, one local backend (pod 1, port 0) behind the VIP, and
/// every port's MTU known.
fn offering() -> Gateway {
    let mut gw = one_local_backend();
    gw.enable_offers();
    for port in 0..4 {
        gw.set_port_mtu(port, 1500);
    }
    gw
}

fn taken(gw: &mut Gateway) -> Vec<FlowOffer> {
    std::mem::take(gw.offers_mut().unwrap())
}

/// Pod 3 (port 2) connects to the VIP; returns the offers each packet made.
fn handshake(gw: &mut Gateway, sport: u16) -> [Vec<FlowOffer>; 4] {
    let to_vip = (pod_mac(3), GW_MAC);
    let from_backend = (pod_mac(1), GW_MAC);
    let mut offers = [vec![], vec![], vec![], vec![]];
    let steps = [
        (to_vip, (POD3, sport), (VIP, 80), SYN, 2),
        (from_backend, (POD1, 8080), (POD3, sport), SYN_ACK, 0),
        (to_vip, (POD3, sport), (VIP, 80), ACK, 2),
        (from_backend, (POD1, 8080), (POD3, sport), ACK, 0),
    ];
    for (i, (macs, src, dst, flags, port)) in steps.into_iter().enumerate() {
        let out = send(gw, segment(macs, src, dst, flags), port, i as u64);
        assert!(matches!(out.next, Disposition::Forward(_)), "step {i}");
        offers[i] = taken(gw);
    }
    offers
}

fn tuple(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), proto: u8) -> Tuple {
    Tuple {
        src: src.0,
        dst: dst.0,
        sport: src.1,
        dport: dst.1,
        proto,
        zone: NODE_ZONE,
    }
}

#[test]
fn an_established_service_flow_is_offered_both_ways_and_a_new_one_is_not() {
    let mut gw = offering();
    let [syn, syn_ack, ack, reply] = handshake(&mut gw, 41000);
    assert!(syn.is_empty() && syn_ack.is_empty(), "not established yet");
    assert_eq!(
        ack,
        [FlowOffer {
            ingress: 2,
            egress: 0,
            dst_mac: GW_MAC,
            src_mac: pod_mac(3),
            tuple: tuple((POD3, 41000), (VIP, 80), PROTO_TCP),
            new_dst_mac: pod_mac(1),
            new_src_mac: GW_MAC,
            to: (POD3, 41000, POD1, 8080),
            next_hop: Some(POD1),
            max_len: 1500,
            leg: None,
        }]
    );
    assert_eq!(reply.len(), 1);
    let back = reply[0];
    assert_eq!((back.ingress, back.egress), (0, 2));
    assert_eq!(back.to, (VIP, 80, POD3, 41000), "un-DNATed");
    assert_eq!(back.new_dst_mac, pod_mac(3));
    let now = 10;
    assert!(gw.offer_holds(&ack[0], now) && gw.offer_holds(&back, now));
    // A FIN goes through the switch and closes the flow to the fast path.
    let generation = gw.offer_generation();
    let fin = segment((pod_mac(3), GW_MAC), (POD3, 41000), (VIP, 80), FIN);
    send(&mut gw, fin, 2, now);
    assert!(taken(&mut gw).is_empty());
    assert_ne!(
        gw.offer_generation(),
        generation,
        "a closing flow is re-checked at once"
    );
    let generation = gw.offer_generation();
    assert!(!gw.offer_holds(&ack[0], now) && !gw.offer_holds(&back, now));
    // Flows that go (here: all of them) move the generation the workers watch.
    let [_, _, ack, _] = handshake(&mut gw, 41001);
    assert!(gw.offer_holds(&ack[0], now));
    assert_eq!(gw.shared.conntrack.remove_where(|_| true), 2);
    assert_ne!(gw.offer_generation(), generation);
    assert!(!gw.offer_holds(&ack[0], now));
}

#[test]
fn an_offer_stops_holding_when_its_neighbour_moves_or_the_port_mtu_changes() {
    let mut gw = offering();
    let [_, _, ack, _] = handshake(&mut gw, 42000);
    let offer = ack[0];
    assert!(gw.offer_holds(&offer, 5));
    gw.set_port_mtu(0, 9000);
    assert!(!gw.offer_holds(&offer, 5), "MTU changed");
    gw.set_port_mtu(0, 1500);
    assert!(gw.offer_holds(&offer, 5));
    // Pod 1's address now answers from another MAC.
    let before = gw.offer_generation();
    send(
        &mut gw,
        arp(
            crate::wire::arp::ARP_REQUEST,
            (pod_mac(9), POD1),
            (MacAddr::ZERO, GW_IP),
            MacAddr::BROADCAST,
        ),
        0,
        6,
    );
    assert_ne!(gw.offer_generation(), before);
    assert!(!gw.offer_holds(&offer, 7));
}

#[test]
fn a_backends_direct_reply_is_offered_as_bridged_and_kept_alive_by_use() {
    let mut gw = offering();
    let sport = 43000;
    // Pod 3 asks for pod 1's address on the segment: the bridge learns where pod 3 is.
    pod3_asks_for_pod1(&mut gw, 0);
    // Pod 1 answers pod 3 straight to its MAC (same segment): bridged and un-DNATed.
    send(
        &mut gw,
        segment((pod_mac(3), GW_MAC), (POD3, sport), (VIP, 80), SYN),
        2,
        0,
    );
    let direct = (pod_mac(1), pod_mac(3));
    send(
        &mut gw,
        segment(direct, (POD1, 8080), (POD3, sport), SYN_ACK),
        0,
        1,
    );
    assert!(taken(&mut gw).is_empty());
    send(
        &mut gw,
        segment((pod_mac(3), GW_MAC), (POD3, sport), (VIP, 80), ACK),
        2,
        2,
    );
    taken(&mut gw);
    let out = send(
        &mut gw,
        segment(direct, (POD1, 8080), (POD3, sport), ACK),
        0,
        3,
    );
    assert_eq!(out.next, Disposition::Forward(2));
    let offers = taken(&mut gw);
    assert_eq!(offers.len(), 1);
    let o = offers[0];
    assert_eq!(o.next_hop, None, "bridged");
    assert_eq!((o.dst_mac, o.new_dst_mac), (pod_mac(3), pod_mac(3)));
    assert_eq!(o.to, (VIP, 80, POD3, sport));
    assert!(gw.offer_holds(&o, 4));
    // Used by the fast path: the flow and the source's FDB entry are refreshed.
    let later = 200_000;
    gw.offer_used(&o, later);
    assert!(gw.offer_holds(&o, later));
    let hit = gw.shared.conntrack.find(&o.tuple).unwrap();
    assert_eq!(hit.flow.last_ms, later);
    // Pod 3's MAC moves to another port: the bridged offer no longer holds.
    send(
        &mut gw,
        segment((pod_mac(3), pod_mac(1)), (POD3, 1), (POD1, 1), SYN),
        1,
        later,
    );
    assert!(!gw.offer_holds(&o, later));
}

#[test]
fn udp_is_offered_from_its_second_packet_and_fragments_never() {
    let mut gw = offering();
    let out = send(&mut gw, udp_from_pod1(POD3, 5000, 32, true), 0, 0);
    assert_eq!(out.next, Disposition::Forward(2));
    assert!(taken(&mut gw).is_empty(), "a new flow");
    send(&mut gw, udp_from_pod1(POD3, 5000, 32, true), 0, 0);
    let unreplied = taken(&mut gw);
    assert_eq!(unreplied.len(), 1, "tracked: offered unreplied");
    // Used while unreplied, it keeps the short timeout of an unreplied flow.
    gw.offer_used(&unreplied[0], 1);
    let hit = gw.shared.conntrack.find(&unreplied[0].tuple).unwrap();
    assert_eq!(
        hit.flow.state,
        crate::conntrack::FlowState::Udp { replied: false }
    );
    let mut reply = Vec::new();
    PacketBuilder::ethernet2(pod_mac(3).0, GW_MAC.0)
        .ipv4(POD3.octets(), POD1.octets(), 64)
        .udp(9, 5000)
        .write(&mut reply, &[0u8; 32])
        .unwrap();
    send(&mut gw, reply, 2, 1);
    assert_eq!(taken(&mut gw).len(), 1);
    send(&mut gw, udp_from_pod1(POD3, 5000, 32, true), 0, 2);
    let offers = taken(&mut gw);
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].tuple.proto, PROTO_UDP);
    // A first fragment of the same flow is not offered.
    let mut first = udp_from_pod1(POD3, 5000, 32, false);
    first[14 + 6] |= 0x20;
    crate::wire::ipv4::Ipv4Packet::new_quoted(&mut first[14..])
        .unwrap()
        .fill_checksum();
    let out = send(&mut gw, first, 0, 3);
    assert_eq!(out.next, Disposition::Forward(2));
    assert!(taken(&mut gw).is_empty());
}

#[test]
fn a_reload_takes_offers_back_but_pods_coming_and_going_do_not() {
    let mut gw = offering();
    let [_, _, ack, _] = handshake(&mut gw, 44000);
    let (epoch, generation) = (gw.policy_epoch(), gw.offer_generation());
    let mut c = config();
    c.services[0].backends = backends(&[(POD1, 8080)]);
    c.pod_ports = vec![0, 1, 2, 5];
    gw.shared.set_pod_ports(&c);
    assert_eq!(gw.policy_epoch(), epoch, "a pod attached");
    assert_ne!(gw.offer_generation(), generation, "re-checked");
    assert!(gw.offer_holds(&ack[0], 5));
    gw.shared.reload(&c);
    assert_ne!(gw.policy_epoch(), epoch, "reloaded");
}

#[test]
fn untracked_pod_to_pod_is_offered_until_a_service_flow_takes_its_tuple() {
    let mut gw = offering();
    // Pod 3 asks for pod 1 on the segment: the bridge knows both.
    pod3_asks_for_pod1(&mut gw, 0);
    let direct = (pod_mac(1), pod_mac(3));
    let out = send(
        &mut gw,
        segment(direct, (POD1, 8080), (POD3, 45000), ACK),
        0,
        1,
    );
    assert_eq!(out.next, Disposition::Forward(2));
    let offers = taken(&mut gw);
    assert_eq!(offers.len(), 1, "untracked pod-to-pod is offered");
    let o = offers[0];
    assert_eq!((o.next_hop, o.to), (None, (POD1, 8080, POD3, 45000)));
    assert!(gw.offer_holds(&o, 2));
    // Pod 3 opens a connection to the service from the same port: its backend's replies now
    // have that tuple and must be un-DNATed, so the untracked entry must go.
    let generation = gw.offer_generation();
    send(
        &mut gw,
        segment((pod_mac(3), GW_MAC), (POD3, 45000), (VIP, 80), SYN),
        2,
        3,
    );
    assert_ne!(gw.offer_generation(), generation);
    assert!(!gw.offer_holds(&o, 3));
    let reply = send(
        &mut gw,
        segment(direct, (POD1, 8080), (POD3, 45000), SYN_ACK),
        0,
        4,
    );
    assert_eq!(addresses(&reply.frame), (VIP, 80, POD3, 45000), "un-DNATed");
}
