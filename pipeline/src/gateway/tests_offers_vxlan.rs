//! Offers across the VXLAN overlay: a flow into it carries the outer headers the switch wrote,
//! a flow out of it the outer headers the switch accepted, and each stops holding when what it
//! depends on changes (the VTEP's neighbour, the peers, the VNI).

use super::tests::*;
use super::tests_offers::{segment, ACK, SYN, SYN_ACK};
use super::tests_vxlan::*;
use super::*;
use crate::conntrack::{Tuple, NODE_ZONE};
use crate::wire::ipv4::PROTO_TCP;
use crate::wire::vxlan::ENCAP_OVERHEAD;
use crate::wire::MacAddr;
use std::net::Ipv4Addr;

fn offering(config: &GatewayConfig) -> Gateway {
    let mut gw = overlay_gateway(config);
    gw.enable_offers();
    for port in 0..4 {
        gw.set_port_mtu(port, 1500);
    }
    gw
}

fn taken(gw: &mut Gateway) -> Vec<FlowOffer> {
    std::mem::take(gw.offers_mut().unwrap())
}

/// Pod 1 (port 0) connects to node 3's pod; the offers of the handshake's last packet from
/// each side (pod 1's ACK, then node 3's first data segment), and the frames as they left.
fn connect(gw: &mut Gateway) -> (FlowOffer, Vec<u8>, FlowOffer, Vec<u8>) {
    let to_peer = |flags| segment((pod_mac(1), GW_MAC), (POD1, 40000), (NODE3_POD, 80), flags);
    let from_peer = |flags| {
        let inner = segment(
            (NODE3_VTEP_MAC, OUR_VTEP_MAC),
            (NODE3_POD, 80),
            (POD1, 40000),
            flags,
        );
        from_node3(&inner, VNI, 0x08, false)
    };
    assert_eq!(
        send(gw, to_peer(SYN), 0, 1).next,
        Disposition::Forward(UPLINK)
    );
    assert_eq!(
        send(gw, from_peer(SYN_ACK), UPLINK, 2).next,
        Disposition::Forward(0)
    );
    assert!(taken(gw).is_empty(), "not established yet");
    let out = send(gw, to_peer(ACK), 0, 3);
    assert_eq!(out.next, Disposition::Forward(UPLINK));
    let [into] = taken(gw)[..] else {
        panic!("one offer into the overlay")
    };
    let back = send(gw, from_peer(ACK), UPLINK, 4);
    assert_eq!(back.next, Disposition::Forward(0));
    let [out_of] = taken(gw)[..] else {
        panic!("one offer out of the overlay")
    };
    (into, out.frame, out_of, back.frame)
}

fn tuple(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Tuple {
    Tuple {
        src: src.0,
        dst: dst.0,
        sport: src.1,
        dport: dst.1,
        proto: PROTO_TCP,
        zone: NODE_ZONE,
    }
}

#[test]
fn an_established_flow_across_the_overlay_is_offered_both_ways() {
    let config = overlay_config();
    let mut gw = offering(&config);
    let (into, sent, out_of, delivered) = connect(&mut gw);
    let overlay = gw.policy.overlay.clone().unwrap();
    let src_port = u16::from_be_bytes([sent[34], sent[35]]);
    assert_eq!(
        into,
        FlowOffer {
            ingress: 0,
            egress: UPLINK,
            dst_mac: GW_MAC,
            src_mac: pod_mac(1),
            tuple: tuple((POD1, 40000), (NODE3_POD, 80)),
            new_dst_mac: NODE3_VTEP_MAC,
            new_src_mac: OUR_VTEP_MAC,
            to: (POD1, 40000, NODE3_POD, 80),
            next_hop: Some(NODE3),
            max_len: 1500 - ENCAP_OVERHEAD as u16,
            leg: Some(OverlayLeg::Encap {
                outer: encap_template(&overlay, NODE3, (NODE3_MAC, GW_MAC)).unwrap(),
                src_port,
            }),
        }
    );
    // The template is the frame's outer headers but for the lengths, checksum and port.
    let Some(OverlayLeg::Encap { outer, .. }) = into.leg else {
        unreachable!()
    };
    for (at, b) in outer.iter().enumerate() {
        if !ENCAP_FILLED.contains(&at) {
            assert_eq!(sent[at], *b, "outer byte {at}");
        }
    }
    assert_eq!(
        out_of,
        FlowOffer {
            ingress: UPLINK,
            egress: 0,
            dst_mac: OUR_VTEP_MAC,
            src_mac: NODE3_VTEP_MAC,
            tuple: tuple((NODE3_POD, 80), (POD1, 40000)),
            new_dst_mac: pod_mac(1),
            new_src_mac: GW_MAC,
            to: (NODE3_POD, 80, POD1, 40000),
            next_hop: Some(POD1),
            max_len: 1500,
            leg: Some(OverlayLeg::Decap {
                peer: NODE3,
                outer: decap_pattern(&overlay, GW_MAC, NODE3),
            }),
        }
    );
    assert_eq!(MacAddr::from_bytes(&delivered[..6]), pod_mac(1));
    assert!(gw.offer_holds(&into, 5) && gw.offer_holds(&out_of, 5));
}

#[test]
fn an_overlay_offer_stops_holding_when_its_vtep_moves() {
    let mut gw = offering(&overlay_config());
    let (into, _, out_of, _) = connect(&mut gw);
    // Node 3 answers ARP from another MAC: the outer headers would change.
    let moved = MacAddr([0x02, 0xbb, 0, 0, 0, 0x33]);
    let reply = crate::gateway::tests::arp(
        crate::wire::arp::ARP_REPLY,
        (moved, NODE3),
        (GW_MAC, NODE_IP),
        GW_MAC,
    );
    send(&mut gw, reply, UPLINK, 5);
    assert!(!gw.offer_holds(&into, 6), "the outer destination MAC moved");
    assert!(
        gw.offer_holds(&out_of, 6),
        "what comes from node 3 is as it was"
    );
}

#[test]
fn overlay_offers_stop_holding_when_the_peer_or_the_vni_changes() {
    let config = overlay_config();
    let mut gw = offering(&config);
    let (into, _, out_of, _) = connect(&mut gw);
    let mut other_vni = config.clone();
    other_vni.vxlan.as_mut().unwrap().vni = VNI + 1;
    gw.shared().reload(&other_vni);
    send(
        &mut gw,
        segment((pod_mac(2), GW_MAC), (POD2, 1), (POD1, 2), SYN),
        1,
        6,
    );
    assert!(!gw.offer_holds(&into, 7), "the outer VNI changed");
    assert!(
        !gw.offer_holds(&out_of, 7),
        "VXLAN with the old VNI is dropped now"
    );
    let mut gw = offering(&config);
    let (into, _, out_of, _) = connect(&mut gw);
    let mut no_peer = config.clone();
    no_peer.vxlan.as_mut().unwrap().peers.clear();
    gw.shared().reload(&no_peer);
    send(
        &mut gw,
        segment((pod_mac(2), GW_MAC), (POD2, 1), (POD1, 2), SYN),
        1,
        8,
    );
    assert!(!gw.offer_holds(&into, 9) && !gw.offer_holds(&out_of, 9));
}
