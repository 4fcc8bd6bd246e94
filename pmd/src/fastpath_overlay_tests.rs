//! The gateway's fast-path program on flows into and out of the VXLAN overlay
//! (`BPF_PROG_TEST_RUN`): a frame into the overlay must leave as the switch's
//! `encap::push_outer` writes it after routing, byte for byte; VXLAN from a peer must lose its
//! outer headers and leave as the switch routes the inner frame; outer headers the switch
//! would refuse leave the frame to it, untouched.

use super::tuple_tests::{
    frame, key_of, rig, Spec, EGRESS, GW_MAC, POD_MAC, TCP_ACK, XDP_PASS, XDP_REDIRECT,
};
use super::*;
use pipeline::gateway::{decap_pattern, encap_template, VxlanConfig, VxlanPeer};
use pipeline::l3::Ipv4Cidr;
use pipeline::overlay::{encap, Overlay};
use pipeline::wire::vxlan::OuterRepr;
use pipeline::wire::MacAddr;
use std::net::Ipv4Addr;

const OUR_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xaa]);
const HOP_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xbb]);
const OUR_VTEP_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 1, 0x01]);
const PEER_VTEP_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 1, 0x02]);
const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const POD: [u8; 4] = [10, 244, 1, 4];
const REMOTE_POD: [u8; 4] = [10, 244, 2, 2];
const SRC_PORT: u16 = 51234;

fn overlay() -> Overlay {
    let config = VxlanConfig {
        vni: 1,
        udp_port: 4789,
        local: LOCAL,
        mac: OUR_VTEP_MAC,
        peers: vec![VxlanPeer {
            cidr: Ipv4Cidr::new(Ipv4Addr::new(10, 244, 2, 0), 24).unwrap(),
            vtep: PEER,
            mac: PEER_VTEP_MAC,
        }],
    };
    Overlay::new(&config, OUR_MAC)
}

fn routed(spec: &Spec) -> Spec {
    Spec {
        ttl: spec.ttl - 1,
        partial: false,
        ..*spec
    }
}

/// Installs the flow of `before` into the overlay; its key.
fn install_encap(rig: &super::tuple_tests::Rig, before: &[u8], max_len: u16) -> TupleKey {
    let outer = encap_template(&overlay(), PEER, (HOP_MAC, OUR_MAC)).unwrap();
    let slot = rig.fast.acquire_leg(&outer).unwrap().unwrap();
    let key = key_of(before);
    let t = |at: usize| before[at..at + 4].try_into().unwrap();
    let p = |at: usize| before[at..at + 2].try_into().unwrap();
    let flow = TupleFlow::rewrite(
        &key,
        EGRESS,
        max_len,
        (PEER_VTEP_MAC.0, OUR_VTEP_MAC.0),
        (t(26), p(34), t(30), p(36)),
        true,
    )
    .into_overlay(slot, SRC_PORT);
    assert!(rig.fast.install_tuple(&key, flow).unwrap());
    key
}

/// What the switch sends for `inner` (already routed) to the peer.
fn encapsulated(inner: Vec<u8>) -> Vec<u8> {
    let mut out = inner;
    encap::push_outer(&mut out, &overlay(), PEER, SRC_PORT).unwrap();
    out[..6].copy_from_slice(&HOP_MAC.0);
    out[6..12].copy_from_slice(&OUR_MAC.0);
    out
}

#[test]
fn a_flow_into_the_overlay_leaves_as_the_switch_encapsulates_it() {
    let Some(rig) = rig() else { return };
    let specs = [
        TCP_ACK,
        Spec {
            proto: 17,
            payload: 333,
            ..TCP_ACK
        },
        Spec {
            proto: 17,
            no_checksum: true,
            ..TCP_ACK
        },
        Spec {
            payload: 1350,
            partial: true,
            ..TCP_ACK
        },
    ];
    for (i, spec) in specs.iter().enumerate() {
        let sport = 40000 + i as u16;
        let before = frame(spec, (GW_MAC, POD_MAC), (POD, sport, REMOTE_POD, 8080));
        let key = install_encap(&rig, &before, 1450);
        let (verdict, after) = rig.prog.test_run(&before).unwrap();
        assert_eq!(verdict, XDP_REDIRECT, "spec {i}");
        let inner = frame(
            &routed(spec),
            (PEER_VTEP_MAC.0, OUR_VTEP_MAC.0),
            (POD, sport, REMOTE_POD, 8080),
        );
        assert_eq!(after, encapsulated(inner), "spec {i}");
        let counted: TupleFlow = rig.fast.read(&key).unwrap().unwrap();
        assert_eq!(
            (counted.packets, counted.bytes),
            (1, before.len() as u64),
            "counted as it came"
        );
        rig.fast.remove(&key).unwrap();
    }
    // Lengths that walk the outer checksum through its carries.
    for n in 0..120usize {
        let spec = Spec {
            proto: if n % 2 == 0 { 6 } else { 17 },
            payload: 12 + n * 11,
            ..TCP_ACK
        };
        let before = frame(&spec, (GW_MAC, POD_MAC), (POD, 30000, REMOTE_POD, 53));
        let key = install_encap(&rig, &before, 1450);
        let (verdict, after) = rig.prog.test_run(&before).unwrap();
        assert_eq!(verdict, XDP_REDIRECT, "payload {}", spec.payload);
        let inner = frame(
            &routed(&spec),
            (PEER_VTEP_MAC.0, OUR_VTEP_MAC.0),
            (POD, 30000, REMOTE_POD, 53),
        );
        assert_eq!(after, encapsulated(inner), "payload {}", spec.payload);
        rig.fast.remove(&key).unwrap();
    }
}

#[test]
fn a_packet_too_long_for_the_overlay_goes_to_the_switch() {
    let Some(rig) = rig() else { return };
    // 100 bytes of TCP payload: a 140-byte IPv4 packet, over a 139-byte inner MTU.
    let before = frame(&TCP_ACK, (GW_MAC, POD_MAC), (POD, 40000, REMOTE_POD, 8080));
    let key = install_encap(&rig, &before, 139);
    assert_eq!(
        rig.prog.test_run(&before).unwrap(),
        (XDP_PASS, before.clone())
    );
    rig.fast.remove(&key).unwrap();
}

/// VXLAN from the peer carrying `inner`, as the peer's kernel or switch sends it.
fn from_peer(inner: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; OUTER_LEN];
    OuterRepr {
        src_mac: HOP_MAC,
        src_ip: PEER,
        dst_ip: LOCAL,
        src_port: 61000,
        dst_port: 4789,
        vni: 1,
    }
    .emit(&mut f, inner.len());
    f[..6].copy_from_slice(&OUR_MAC.0);
    f.extend_from_slice(inner);
    f
}

/// `from_peer(inner)` with an outer UDP checksum, computed as a kernel peer's local checksum
/// offload does: over the inner frame as it will be once its own checksum is finished
/// (`finished`), though `inner` may still leave it to offload.
fn with_udp_checksum(inner: &[u8], finished: &[u8]) -> Vec<u8> {
    use pipeline::wire::checksum::{fold, pseudo_header, sum};
    let mut f = from_peer(finished);
    let udp_len = (f.len() - 34) as u16;
    let pseudo = pseudo_header(PEER.octets(), LOCAL.octets(), 17, udp_len);
    let c = match !fold(sum(&f[34..]) + pseudo) {
        0 => 0xffff,
        c => c,
    };
    f[40..42].copy_from_slice(&c.to_be_bytes());
    f[OUTER_LEN..].copy_from_slice(inner);
    f
}

/// `from_peer(inner)` whose outer UDP checksum holds only the pseudo-header sum, as a kernel
/// peer over a veth leaves it to offload.
fn outer_left_to_offload(inner: &[u8]) -> Vec<u8> {
    use pipeline::wire::checksum::{fold, pseudo_header};
    let mut f = from_peer(inner);
    let udp_len = (f.len() - 34) as u16;
    let pseudo = fold(pseudo_header(PEER.octets(), LOCAL.octets(), 17, udp_len));
    f[40..42].copy_from_slice(&pseudo.to_be_bytes());
    f
}

/// Installs the inner flow of VXLAN from the peer (`inner`: the inner frame); its key.
fn install_decap(rig: &super::tuple_tests::Rig, inner: &[u8]) -> TupleKey {
    let slot = rig
        .fast
        .acquire_leg(&decap_pattern(&overlay(), OUR_MAC, PEER))
        .unwrap()
        .unwrap();
    let key = TupleKey {
        layer: INNER,
        ..key_of(inner)
    };
    let t = |at: usize| inner[at..at + 4].try_into().unwrap();
    let p = |at: usize| inner[at..at + 2].try_into().unwrap();
    let flow = TupleFlow::rewrite(
        &key,
        EGRESS,
        1500,
        (POD_MAC, GW_MAC),
        (t(26), p(34), t(30), p(36)),
        true,
    )
    .out_of_overlay(slot);
    assert!(rig.fast.install_tuple(&key, flow).unwrap());
    key
}

#[test]
fn vxlan_from_a_peer_leaves_as_its_inner_frame_routed() {
    let Some(rig) = rig() else { return };
    for (i, spec) in [
        TCP_ACK,
        Spec {
            proto: 17,
            payload: 700,
            ..TCP_ACK
        },
        Spec {
            payload: 1300,
            partial: true,
            ..TCP_ACK
        },
    ]
    .iter()
    .enumerate()
    {
        let inner = frame(
            spec,
            (OUR_VTEP_MAC.0, PEER_VTEP_MAC.0),
            (REMOTE_POD, 8080, POD, 40000),
        );
        let finished = frame(
            &Spec {
                partial: false,
                ..*spec
            },
            (OUR_VTEP_MAC.0, PEER_VTEP_MAC.0),
            (REMOTE_POD, 8080, POD, 40000),
        );
        let key = install_decap(&rig, &inner);
        let expected = frame(
            &routed(spec),
            (POD_MAC, GW_MAC),
            (REMOTE_POD, 8080, POD, 40000),
        );
        for (what, before) in [
            ("no outer UDP checksum", from_peer(&inner)),
            (
                "an outer UDP checksum",
                with_udp_checksum(&inner, &finished),
            ),
            (
                "an outer UDP checksum left to offload",
                outer_left_to_offload(&inner),
            ),
        ] {
            let (verdict, after) = rig.prog.test_run(&before).unwrap();
            assert_eq!(verdict, XDP_REDIRECT, "spec {i}, {what}");
            assert_eq!(after, expected, "spec {i}, {what}");
        }
        let counted: TupleFlow = rig.fast.read(&key).unwrap().unwrap();
        assert_eq!(counted.packets, 3);
        assert_eq!(counted.bytes, 3 * (OUTER_LEN + inner.len()) as u64);
        rig.fast.remove(&key).unwrap();
    }
}

#[test]
fn vxlan_the_switch_would_refuse_is_left_to_it() {
    let Some(rig) = rig() else { return };
    let inner = frame(
        &TCP_ACK,
        (OUR_VTEP_MAC.0, PEER_VTEP_MAC.0),
        (REMOTE_POD, 8080, POD, 40000),
    );
    let key = install_decap(&rig, &inner);
    let good = from_peer(&inner);
    let changed = |at: usize, bytes: &[u8]| {
        let mut f = good.clone();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        f
    };
    let with_outer_checksum = |f: Vec<u8>| {
        let mut f = f;
        f[24..26].copy_from_slice(&[0, 0]);
        let c = pipeline::wire::checksum::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f
    };
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 1);
    // One byte more than the outer IPv4 packet says it holds.
    let mut trailing = good.clone();
    trailing.push(0);
    // A UDP length that disagrees with the IPv4 length.
    let udp_len = u16::from_be_bytes([good[38], good[39]]);
    let udp_too_short = changed(38, &(udp_len - 1).to_be_bytes());
    let cases = [
        ("not to our MAC", changed(0, &[0x02, 0, 0, 0, 0, 0xcc])),
        (
            "from another VTEP",
            with_outer_checksum(changed(26, &[198, 18, 0, 9])),
        ),
        (
            "to another address",
            with_outer_checksum(changed(30, &[198, 18, 0, 7])),
        ),
        ("to another UDP port", changed(36, &8472u16.to_be_bytes())),
        ("another VNI", changed(46, &[0, 0, 2])),
        ("no I flag", changed(42, &[0])),
        ("a wrong UDP checksum", changed(40, &[0x12, 0x34])),
        ("a bad outer header checksum", changed(24, &[0, 0])),
        ("cut short", truncated),
        ("a byte past the outer IPv4 packet", trailing),
        ("a UDP length shorter than the IPv4 payload", udp_too_short),
        (
            "inner frame not to our VTEP MAC",
            changed(50, &[0x02, 0, 0, 0, 9, 9]),
        ),
        ("inner TTL 1", {
            let inner = frame(
                &Spec { ttl: 1, ..TCP_ACK },
                (OUR_VTEP_MAC.0, PEER_VTEP_MAC.0),
                (REMOTE_POD, 8080, POD, 40001),
            );
            install_decap(&rig, &inner);
            from_peer(&inner)
        }),
    ];
    for (why, before) in cases {
        assert_eq!(
            rig.prog.test_run(&before).unwrap(),
            (XDP_PASS, before.clone()),
            "{why}"
        );
    }
    let counted: TupleFlow = rig.fast.read(&key).unwrap().unwrap();
    assert_eq!(counted.packets, 0);
    // The same frame as it should be is taken: the cases above differ only where named.
    assert_eq!(rig.prog.test_run(&good).unwrap().0, XDP_REDIRECT);
}

#[test]
fn overlay_legs_are_shared_and_their_slots_come_back() {
    let Some(rig) = rig() else { return };
    let a = encap_template(&overlay(), PEER, (HOP_MAC, OUR_MAC)).unwrap();
    let b = decap_pattern(&overlay(), OUR_MAC, PEER);
    let first = rig.fast.acquire_leg(&a).unwrap().unwrap();
    assert_eq!(rig.fast.acquire_leg(&a).unwrap(), Some(first), "shared");
    let other = rig.fast.acquire_leg(&b).unwrap().unwrap();
    assert_ne!(first, other);
    assert_eq!(rig.fast.legs_in_use(), 2);
    rig.fast.release_leg(first);
    assert_eq!(rig.fast.legs_in_use(), 2, "one flow still uses it");
    rig.fast.release_leg(first);
    rig.fast.release_leg(other);
    assert_eq!(rig.fast.legs_in_use(), 0);
    // Every slot can be taken; then there is none, until one comes back.
    let mut taken = Vec::new();
    for i in 0..LEG_CAPACITY {
        let mut outer = a;
        outer[26..30].copy_from_slice(&i.to_be_bytes());
        taken.push(rig.fast.acquire_leg(&outer).unwrap().expect("a free slot"));
    }
    let mut one_more = a;
    one_more[26..30].copy_from_slice(&[255; 4]);
    assert_eq!(rig.fast.acquire_leg(&one_more).unwrap(), None);
    rig.fast.release_leg(taken[7]);
    assert_eq!(rig.fast.acquire_leg(&one_more).unwrap(), Some(taken[7]));
}
