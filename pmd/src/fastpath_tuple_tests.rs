//! The gateway's fast-path program run on frames (`BPF_PROG_TEST_RUN`): what it does to a
//! frame of an installed flow must be what the switch would do — the same bytes as the frame
//! rewritten and checksummed from scratch — and anything it must not handle is left alone.

use super::*;
use pipeline::wire::checksum::{checksum, fold as fold16, pseudo_header, sum};

pub(super) const XDP_PASS: u32 = 2;
pub(super) const XDP_REDIRECT: u32 = 4;
/// The ingress interface of a test run: loopback.
pub(super) const LOOPBACK: u32 = 1;
pub(super) const EGRESS: u32 = 3;

pub(super) const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
pub(super) const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x22];
const CLIENT: [u8; 4] = [10, 244, 0, 11];
const VIP: [u8; 4] = [10, 96, 0, 10];
const BACKEND: [u8; 4] = [10, 244, 1, 22];

pub(super) struct Spec {
    pub(super) proto: u8,
    pub(super) ttl: u8,
    pub(super) tcp_flags: u8,
    pub(super) payload: usize,
    /// UDP without a checksum.
    pub(super) no_checksum: bool,
    /// The transport checksum left to offload (the field holds the pseudo-header sum).
    pub(super) partial: bool,
}

pub(super) const TCP_ACK: Spec = Spec {
    proto: 6,
    ttl: 64,
    tcp_flags: 0x10,
    payload: 100,
    no_checksum: false,
    partial: false,
};

pub(super) fn frame(
    s: &Spec,
    macs: ([u8; 6], [u8; 6]),
    tuple: ([u8; 4], u16, [u8; 4], u16),
) -> Vec<u8> {
    let (src, sport, dst, dport) = tuple;
    let l4_len = if s.proto == 6 { 20 } else { 8 } + s.payload;
    let mut f = Vec::new();
    f.extend_from_slice(&macs.0);
    f.extend_from_slice(&macs.1);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + l4_len) as u16;
    f.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0x12,
        0x34,
        0x40,
        0,
    ]);
    f.extend_from_slice(&[s.ttl, s.proto, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    if s.proto == 6 {
        f.extend_from_slice(&[
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            1,
            0x50,
            s.tcp_flags,
            0xff,
            0xff,
            0,
            0,
            0,
            0,
        ]);
    } else {
        f.extend_from_slice(&(l4_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    }
    f.extend((0..s.payload).map(|i| (i * 7 + 3) as u8));
    fill_checksums(&mut f, s);
    f
}

fn check_at(proto: u8) -> usize {
    34 + if proto == 6 { 16 } else { 6 }
}

fn fill_checksums(f: &mut [u8], s: &Spec) {
    f[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let at = check_at(s.proto);
    f[at..at + 2].copy_from_slice(&[0, 0]);
    if s.no_checksum {
        return;
    }
    let l4_len = (f.len() - 34) as u16;
    let pseudo = pseudo_header(
        f[26..30].try_into().unwrap(),
        f[30..34].try_into().unwrap(),
        s.proto,
        l4_len,
    );
    let c = if s.partial {
        fold16(pseudo)
    } else {
        match !fold16(sum(&f[34..]) + pseudo) {
            0 if s.proto == 17 => 0xffff,
            c => c,
        }
    };
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

pub(super) fn key_of(f: &[u8]) -> TupleKey {
    TupleKey {
        ifindex: LOOPBACK,
        dst: f[0..6].try_into().unwrap(),
        src: f[6..12].try_into().unwrap(),
        saddr: f[26..30].try_into().unwrap(),
        daddr: f[30..34].try_into().unwrap(),
        sport: f[34..36].try_into().unwrap(),
        dport: f[36..38].try_into().unwrap(),
        proto: f[23],
        layer: OUTER,
        pad: [0; 2],
    }
}

pub(super) struct Rig {
    pub(super) fast: FastPath,
    pub(super) prog: RedirectProgram,
    _xsks: XskMap,
}

pub(super) fn rig() -> Option<Rig> {
    if !available() || nix::unistd::geteuid().as_raw() != 0 {
        assert!(
            std::env::var("CI").is_err(),
            "CI runs this as root, with clang"
        );
        return None;
    }
    let fast = FastPath::new(FlowTable::Tuple).unwrap();
    let xsks = XskMap::create(1).unwrap();
    let prog = fast.program(&xsks).unwrap();
    fast.add_port(EGRESS, LOOPBACK, 1518).unwrap();
    Some(Rig {
        fast,
        prog,
        _xsks: xsks,
    })
}

/// A client's packet to a service, DNATed to a backend on another segment and routed.
fn install_dnat(rig: &Rig, f: &[u8], max_len: u16) -> TupleKey {
    let key = key_of(f);
    let flow = TupleFlow::rewrite(
        &key,
        EGRESS,
        max_len,
        (BACKEND_MAC, GW_MAC),
        (
            CLIENT,
            40000u16.to_be_bytes(),
            BACKEND,
            8080u16.to_be_bytes(),
        ),
        true,
    );
    assert!(rig.fast.install_tuple(&key, flow).unwrap());
    key
}

#[test]
fn a_routed_dnat_flow_leaves_as_the_switch_would_write_it() {
    let Some(rig) = rig() else { return };
    for spec in [
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
            payload: 1400,
            partial: true,
            ..TCP_ACK
        },
        Spec { ttl: 2, ..TCP_ACK },
    ] {
        let before = frame(&spec, (GW_MAC, POD_MAC), (CLIENT, 40000, VIP, 80));
        let key = install_dnat(&rig, &before, 1500);
        let (verdict, after) = rig.prog.test_run(&before).unwrap();
        assert_eq!(
            verdict, XDP_REDIRECT,
            "proto {} ttl {}",
            spec.proto, spec.ttl
        );
        let expected = frame(
            &Spec {
                ttl: spec.ttl - 1,
                partial: false,
                ..spec
            },
            (BACKEND_MAC, GW_MAC),
            (CLIENT, 40000, BACKEND, 8080),
        );
        assert_eq!(
            after, expected,
            "proto {} partial {}",
            spec.proto, spec.partial
        );
        let counted: TupleFlow = rig.fast.read(&key).unwrap().unwrap();
        assert_eq!(counted.packets, 1);
        assert_eq!(counted.bytes, before.len() as u64);
        assert!(counted.last_ns > 0, "the hit is stamped");
        rig.fast.remove(&key).unwrap();
    }
}

/// The map hands a deleted element to the next install at once, while the program on
/// another CPU may still be reading it: a value with another key's tag at either end (the
/// element reused, or caught half rewritten) is a miss, and the frame stays as it came.
#[test]
fn a_flow_value_of_another_key_is_a_miss() {
    let Some(rig) = rig() else { return };
    let before = frame(&TCP_ACK, (GW_MAC, POD_MAC), (CLIENT, 40000, VIP, 80));
    let key = install_dnat(&rig, &before, 1500);
    let own: TupleFlow = rig.fast.read(&key).unwrap().unwrap();
    assert_eq!(own.tag, tuple_tag(&key));
    let other = TupleKey {
        sport: 40001u16.to_be_bytes(),
        ..key
    };
    for (tag, tag_end) in [
        (tuple_tag(&other), tuple_tag(&other)),
        (own.tag, tuple_tag(&other)),
        (tuple_tag(&other), own.tag),
    ] {
        let value = TupleFlow {
            tag,
            tag_end,
            ..own
        };
        update_slice(&rig.fast.flows, &key, &vec![value; rig.fast.cpus], 0).unwrap();
        let (verdict, after) = rig.prog.test_run(&before).unwrap();
        assert_eq!(
            (verdict, &after),
            (XDP_PASS, &before),
            "{tag:x} {tag_end:x}"
        );
    }
    update_slice(&rig.fast.flows, &key, &vec![own; rig.fast.cpus], 0).unwrap();
    assert_eq!(rig.prog.test_run(&before).unwrap().0, XDP_REDIRECT);
}

#[test]
fn every_checksum_stays_right_across_many_tuples() {
    let Some(rig) = rig() else { return };
    // Ports and addresses that walk the one's complement sums through carries and zeros.
    for i in 0..200u32 {
        let sport = (i.wrapping_mul(7919) & 0xffff) as u16;
        let client = [10, 244, (i % 7) as u8, (i * 37 % 256) as u8];
        let spec = Spec {
            proto: if i % 2 == 0 { 6 } else { 17 },
            // The program reads 20 bytes of any transport header (shorter goes to the switch).
            payload: 12 + (i % 50) as usize,
            ..TCP_ACK
        };
        let before = frame(&spec, (GW_MAC, POD_MAC), (client, sport, BACKEND, 8080));
        // A reply un-DNATed (source becomes the VIP) and SNATed back to a node port.
        let key = key_of(&before);
        let new_port = (i.wrapping_mul(104_729) & 0xffff) as u16;
        let flow = TupleFlow::rewrite(
            &key,
            EGRESS,
            1500,
            (POD_MAC, GW_MAC),
            (VIP, 80u16.to_be_bytes(), CLIENT, new_port.to_be_bytes()),
            true,
        );
        assert!(rig.fast.install_tuple(&key, flow).unwrap());
        let (verdict, after) = rig.prog.test_run(&before).unwrap();
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = frame(
            &Spec { ttl: 63, ..spec },
            (POD_MAC, GW_MAC),
            (VIP, 80, CLIENT, new_port),
        );
        assert_eq!(after, expected, "tuple {i}");
        rig.fast.remove(&key).unwrap();
    }
}

#[test]
fn a_bridged_flow_keeps_its_ttl_and_macs() {
    let Some(rig) = rig() else { return };
    // A backend answering a client on its own segment: only the source is un-DNATed.
    let before = frame(
        &TCP_ACK,
        (POD_MAC, BACKEND_MAC),
        (BACKEND, 8080, CLIENT, 40000),
    );
    let key = key_of(&before);
    let flow = TupleFlow::rewrite(
        &key,
        EGRESS,
        1500,
        (POD_MAC, BACKEND_MAC),
        (VIP, 80u16.to_be_bytes(), CLIENT, 40000u16.to_be_bytes()),
        false,
    );
    assert!(rig.fast.install_tuple(&key, flow).unwrap());
    let (verdict, after) = rig.prog.test_run(&before).unwrap();
    assert_eq!(verdict, XDP_REDIRECT);
    let expected = frame(&TCP_ACK, (POD_MAC, BACKEND_MAC), (VIP, 80, CLIENT, 40000));
    assert_eq!(after, expected);
}

#[test]
fn what_the_switch_must_see_is_left_alone() {
    let Some(rig) = rig() else { return };
    let cases = [
        ("TTL 1: time exceeded", Spec { ttl: 1, ..TCP_ACK }, 1500),
        (
            "SYN",
            Spec {
                tcp_flags: 0x02,
                ..TCP_ACK
            },
            1500,
        ),
        (
            "FIN",
            Spec {
                tcp_flags: 0x11,
                ..TCP_ACK
            },
            1500,
        ),
        (
            "RST",
            Spec {
                tcp_flags: 0x14,
                ..TCP_ACK
            },
            1500,
        ),
        ("longer than the egress MTU", TCP_ACK, 100),
    ];
    for (why, spec, max_len) in cases {
        let before = frame(&spec, (GW_MAC, POD_MAC), (CLIENT, 40000, VIP, 80));
        let key = install_dnat(&rig, &before, max_len);
        let (verdict, after) = rig.prog.test_run(&before).unwrap();
        assert_eq!(verdict, XDP_PASS, "{why}: to the socket (none here: pass)");
        assert_eq!(after, before, "{why}: unchanged");
        let counted: TupleFlow = rig.fast.read(&key).unwrap().unwrap();
        assert_eq!(counted.packets, 0, "{why}");
        rig.fast.remove(&key).unwrap();
    }
    // What the switch drops as malformed: a bad header checksum, a total length past the end.
    let mut bad_checksum = frame(&TCP_ACK, (GW_MAC, POD_MAC), (CLIENT, 40000, VIP, 80));
    bad_checksum[25] ^= 1;
    let mut truncated = frame(&TCP_ACK, (GW_MAC, POD_MAC), (CLIENT, 40000, VIP, 80));
    truncated.truncate(truncated.len() - 1);
    // A total length shorter than IPv4 + TCP headers (the checksum kept right).
    let mut too_short = frame(&TCP_ACK, (GW_MAC, POD_MAC), (CLIENT, 40000, VIP, 80));
    too_short[16..18].copy_from_slice(&30u16.to_be_bytes());
    too_short[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&too_short[14..34]);
    too_short[24..26].copy_from_slice(&c.to_be_bytes());
    for (why, before) in [
        ("bad checksum", bad_checksum),
        ("truncated", truncated),
        ("total length shorter than the headers", too_short),
    ] {
        let key = install_dnat(&rig, &before, 1500);
        assert_eq!(
            rig.prog.test_run(&before).unwrap(),
            (XDP_PASS, before.clone()),
            "{why}"
        );
        rig.fast.remove(&key).unwrap();
    }
    // A frame of no installed flow, and one whose egress port is gone.
    let before = frame(&TCP_ACK, (GW_MAC, POD_MAC), (CLIENT, 40001, VIP, 80));
    assert_eq!(
        rig.prog.test_run(&before).unwrap(),
        (XDP_PASS, before.clone())
    );
    let key = install_dnat(&rig, &before, 1500);
    rig.fast.del_port(EGRESS).unwrap();
    assert_eq!(rig.prog.test_run(&before).unwrap(), (XDP_PASS, before));
    rig.fast.remove(&key).unwrap();
}

#[test]
fn a_walk_in_batches_reads_every_flow_once_with_its_copies_summed() {
    let Some(rig) = rig() else { return };
    let flows = 1_000u16;
    let mut expected = HashMap::new();
    for i in 0..flows {
        let f = frame(&TCP_ACK, (GW_MAC, POD_MAC), (CLIENT, 10_000 + i, VIP, 80));
        let key = key_of(&f);
        let mut flow = TupleFlow::rewrite(
            &key,
            EGRESS,
            1518,
            (BACKEND_MAC, GW_MAC),
            (
                CLIENT,
                (10_000 + i).to_be_bytes(),
                BACKEND,
                8080u16.to_be_bytes(),
            ),
            true,
        );
        flow.packets = i as u64;
        flow.bytes = 64 * i as u64;
        // Each CPU's copy holds the install's value.
        assert!(rig.fast.install_tuple(&key, flow).unwrap());
        expected.insert(key, (i as u64, 64 * i as u64));
    }
    let cpus = crate::bpf::possible_cpu_count().unwrap() as u64;
    let mut walk = HashWalk::default();
    let mut step = Vec::new();
    let mut seen = HashMap::new();
    let mut steps = 0;
    while !walk.is_done() {
        rig.fast
            .read_hashed_batch::<TupleKey, TupleFlow>(&mut walk, 256, &mut step)
            .unwrap();
        assert!(step.len() <= 256);
        for (key, flow) in &step {
            assert!(
                seen.insert(*key, (flow.packets, flow.bytes)).is_none(),
                "read twice"
            );
        }
        steps += 1;
        assert!(steps <= 100, "the walk ends");
    }
    assert!(steps >= 4, "{steps} steps of at most 256 for 1,000 flows");
    assert_eq!(seen.len(), expected.len());
    for (key, (packets, bytes)) in expected {
        assert_eq!(seen[&key], (packets * cpus, bytes * cpus));
    }
    // A finished walk reads nothing more.
    rig.fast
        .read_hashed_batch::<TupleKey, TupleFlow>(&mut walk, 256, &mut step)
        .unwrap();
    assert!(step.is_empty());
}
