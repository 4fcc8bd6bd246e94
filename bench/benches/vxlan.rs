//! VXLAN per packet: the encapsulation and decapsulation stages alone, and the whole gateway
//! for an established flow into and out of the overlay. Batches of 64, as a worker hands them.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pipeline::gateway::{GatewayConfig, UplinkConfig, VxlanConfig, VxlanPeer};
use pipeline::l2::BridgeConfig;
use pipeline::overlay::{decap, encap, Overlay};
use pipeline::wire::arp::ArpRepr;
use pipeline::wire::ipv4::Ipv4Packet;
use pipeline::wire::vxlan::ENCAP_OVERHEAD;
use pipeline::{
    Bridge, Disposition, Gateway, GatewayShared, HeadroomBuf, MacAddr, Packet, MAX_BATCH,
};
use std::net::Ipv4Addr;

const GW_MAC: MacAddr = MacAddr([2, 0x76, 10, 244, 1, 1]);
const OUR_VTEP_MAC: MacAddr = MacAddr([0x0e, 0, 0, 0, 0, 1]);
const PEER_VTEP_MAC: MacAddr = MacAddr([0x0e, 0, 0, 0, 0, 2]);
const PEER_UPLINK_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 4);
const POD_MAC: [u8; 6] = [2, 0, 0, 0, 1, 4];
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// As a UMEM frame keeps in front of received data.
const HEADROOM: usize = 256;

fn vxlan() -> VxlanConfig {
    VxlanConfig {
        vni: 1,
        udp_port: 4789,
        local: NODE,
        mac: OUR_VTEP_MAC,
        peers: vec![VxlanPeer {
            cidr: "10.244.2.0/24".parse().unwrap(),
            vtep: PEER,
            mac: PEER_VTEP_MAC,
        }],
    }
}

fn config() -> GatewayConfig {
    GatewayConfig {
        mac: GW_MAC,
        pod_ports: vec![0, 1, 2],
        gateway: "10.244.1.1/24".parse().unwrap(),
        uplink: Some(UplinkConfig {
            port: 3,
            address: "198.18.0.1/24".parse().unwrap(),
            next_hop: PEER,
            masquerade: true,
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            nat_ports: (1024, 65535),
            mtu: 1500,
        }),
        routes: vec![],
        services: vec![],
        vxlan: Some(vxlan()),
        conntrack_capacity: 65536,
        neighbor_age_ms: u64::MAX / 2,
    }
}

/// A TCP ACK of an established flow, `sport` telling flows apart.
fn tcp(src_mac: [u8; 6], dst_mac: [u8; 6], from: Ipv4Addr, to: Ipv4Addr, sport: u16) -> Vec<u8> {
    let mut b = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(from.octets(), to.octets(), 64)
        .tcp(sport, 80, 1, 64000)
        .ack(1)
        .write(&mut b, &[0u8; 6])
        .unwrap();
    b
}

/// What the peer's VTEP sends: `inner` behind outer headers to us, UDP checksum zero.
fn from_peer(inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    payload.extend_from_slice(inner);
    let mut b = Vec::new();
    etherparse::PacketBuilder::ethernet2(PEER_UPLINK_MAC, GW_MAC.0)
        .ipv4(PEER.octets(), NODE.octets(), 64)
        .udp(50000, 4789)
        .write(&mut b, &payload)
        .unwrap();
    b[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    b
}

fn batch(template: impl Fn(u16) -> Vec<u8>) -> Vec<HeadroomBuf> {
    (0..MAX_BATCH as u16)
        .map(|i| HeadroomBuf::new(&template(i), HEADROOM))
        .collect()
}

fn stages(c: &mut Criterion) {
    let overlay = Overlay::new(&vxlan(), GW_MAC);
    let mut g = c.benchmark_group("vxlan_stage");
    g.throughput(Throughput::Elements(MAX_BATCH as u64));
    let inner = batch(|i| tcp(POD_MAC, GW_MAC.0, POD, REMOTE_POD, 1000 + i));
    g.bench_function("encap_batch64", |b| {
        b.iter_batched_ref(
            || inner.clone(),
            |frames| {
                for f in frames.iter_mut() {
                    black_box(encap::push_outer(f, &overlay, PEER, 50000).is_ok());
                }
            },
            BatchSize::SmallInput,
        )
    });
    let wrapped = batch(|i| from_peer(&tcp(PEER_VTEP_MAC.0, OUR_VTEP_MAC.0, REMOTE_POD, POD, i)));
    g.bench_function("decap_batch64", |b| {
        b.iter_batched_ref(
            || wrapped.clone(),
            |frames| {
                for f in frames.iter_mut() {
                    let ip = Ipv4Packet::new_checked(&f.as_ref()[14..]).unwrap();
                    let outer = decap::check(&overlay, &ip).unwrap();
                    black_box(f.pull_front(outer));
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn arp_from(ip: Ipv4Addr, mac: [u8; 6], target: Ipv4Addr) -> Vec<u8> {
    ArpRepr::request((MacAddr(mac), ip), target).frame(MacAddr::BROADCAST)
}

/// A gateway that knows its pod and the peer, with 64 established pod ↔ remote pod flows.
fn gateway() -> Gateway {
    let config = config();
    let mut gw = Gateway::new(
        GatewayShared::new(&config),
        Bridge::new(&config.pod_bridge(&BridgeConfig::default())),
    );
    let mut next = [Disposition::Drop; 1];
    let mut emit = Vec::new();
    for (frame, port) in [
        (arp_from(POD, POD_MAC, Ipv4Addr::new(10, 244, 1, 1)), 2),
        (arp_from(PEER, PEER_UPLINK_MAC, NODE), 3),
    ] {
        let mut frame = frame;
        gw.process(&mut [&mut frame[..]], port, 0, &mut next, &mut emit);
    }
    for i in 0..MAX_BATCH as u16 {
        let mut out = vec![HeadroomBuf::new(
            &tcp(POD_MAC, GW_MAC.0, POD, REMOTE_POD, 1000 + i),
            HEADROOM,
        )];
        gw.process(&mut out, 2, 0, &mut next, &mut emit);
        assert_eq!(next[0], Disposition::Forward(3));
    }
    gw
}

fn whole_gateway(c: &mut Criterion) {
    let mut g = c.benchmark_group("gateway_overlay_flow");
    g.throughput(Throughput::Elements(MAX_BATCH as u64));
    let mut gw = gateway();
    let mut next = [Disposition::Drop; MAX_BATCH];
    let mut emit = Vec::new();
    let out = batch(|i| tcp(POD_MAC, GW_MAC.0, POD, REMOTE_POD, 1000 + i));
    g.bench_function("batch64_pod_to_remote_pod_encap", |b| {
        b.iter_batched_ref(
            || out.clone(),
            |frames| {
                gw.process(frames, 2, 1, &mut next, &mut emit);
                black_box(&next);
            },
            BatchSize::SmallInput,
        )
    });
    assert_eq!(next[0], Disposition::Forward(3));
    assert_eq!(out[0].as_ref().len() + ENCAP_OVERHEAD, {
        let mut f = out.clone();
        gw.process(&mut f, 2, 1, &mut next, &mut emit);
        f[0].as_ref().len()
    });
    let back = batch(|i| {
        from_peer(&tcp(
            PEER_VTEP_MAC.0,
            OUR_VTEP_MAC.0,
            REMOTE_POD,
            POD,
            1000 + i,
        ))
    });
    g.bench_function("batch64_remote_pod_to_pod_decap", |b| {
        b.iter_batched_ref(
            || back.clone(),
            |frames| {
                gw.process(frames, 3, 1, &mut next, &mut emit);
                black_box(&next);
            },
            BatchSize::SmallInput,
        )
    });
    assert_eq!(next[0], Disposition::Forward(2));
    g.finish();
}

criterion_group!(benches, stages, whole_gateway);
criterion_main!(benches);
