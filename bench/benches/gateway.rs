//! Conntrack lookup and insert at 1 k and 1 M entries, the NAT rewrite, and the whole gateway
//! pipeline per packet for an established service flow.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pipeline::conntrack::{Conntrack, FlowState, Tuple};
use pipeline::gateway::{GatewayConfig, ServiceConfig, UplinkConfig};
use pipeline::l2::BridgeConfig;
use pipeline::wire::arp::ArpRepr;
use pipeline::{Bridge, Disposition, Gateway, GatewayShared, MacAddr, MAX_BATCH};
use std::net::{Ipv4Addr, SocketAddrV4};

const GW_MAC: MacAddr = MacAddr([2, 0x76, 10, 244, 1, 1]);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 4);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);

fn tuple(i: u32) -> Tuple {
    Tuple {
        src: Ipv4Addr::from(0x0af4_0000 | (i >> 16)),
        dst: VIP,
        sport: i as u16,
        dport: 80,
        proto: 6,
        zone: 0,
    }
}

fn reply(t: &Tuple) -> Tuple {
    Tuple {
        src: Ipv4Addr::new(10, 244, 1, 2),
        dst: t.src,
        sport: 8080,
        dport: t.sport,
        proto: 6,
        zone: 0,
    }
}

fn filled(n: u32) -> Conntrack {
    let ct = Conntrack::new(n as usize * 2);
    for i in 0..n {
        let t = tuple(i);
        ct.insert(t, reply(&t), FlowState::initial(6, 0x10), 0)
            .unwrap();
    }
    ct
}

fn conntrack(c: &mut Criterion) {
    let mut g = c.benchmark_group("conntrack");
    for n in [1_000u32, 1_000_000] {
        let ct = filled(n);
        let mut i = 0u32;
        g.bench_function(format!("lookup_{n}"), |b| {
            b.iter(|| {
                i = (i.wrapping_mul(2_654_435_761).wrapping_add(1)) % n;
                black_box(ct.track(&tuple(i), 0x10, 1))
            })
        });
        let mut next = n;
        g.bench_function(format!("insert_{n}"), |b| {
            b.iter_batched(
                || {
                    next += 1;
                    tuple(next)
                },
                |t| {
                    let r = ct.insert(t, reply(&t), FlowState::initial(6, 0x02), 1);
                    black_box(r.is_ok())
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn config(services: usize) -> GatewayConfig {
    let mut svcs = vec![ServiceConfig {
        name: "web".into(),
        cluster_ip: VIP,
        port: 80,
        proto: 6,
        node_port: Some(30080),
        backends: vec![SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 2), 8080)],
        affinity_timeout_s: None,
        external_local: None,
        node_port_backends: None,
    }];
    for i in 1..services {
        svcs.push(ServiceConfig {
            name: format!("svc{i}"),
            cluster_ip: Ipv4Addr::from(0x0a60_0000 + 100 + i as u32),
            port: 80,
            proto: 6,
            node_port: None,
            backends: vec![SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 3), 8080)],
            affinity_timeout_s: None,
            external_local: None,
            node_port_backends: None,
        });
    }
    GatewayConfig {
        mac: GW_MAC,
        pod_ports: vec![0, 1, 2],
        gateway: "10.244.1.1/24".parse().unwrap(),
        uplink: Some(UplinkConfig {
            port: 3,
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
        routes: vec![],
        services: svcs,
        vxlan: None,
        conntrack_capacity: 2_000_000,
        neighbor_age_ms: u64::MAX / 2,
    }
}

fn syn_or_ack(sport: u16, syn: bool) -> Vec<u8> {
    let mut b = Vec::new();
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 1, 4], GW_MAC.0)
        .ipv4(CLIENT.octets(), VIP.octets(), 64)
        .tcp(sport, 80, 1, 64000);
    let builder = if syn { builder.syn() } else { builder.ack(1) };
    builder.write(&mut b, &[0u8; 6]).unwrap();
    b
}

fn arp_from(ip: Ipv4Addr, mac: [u8; 6], target_ip: Ipv4Addr) -> Vec<u8> {
    ArpRepr::request((MacAddr(mac), ip), target_ip).frame(MacAddr::BROADCAST)
}

/// A gateway with `services` services and `flows` established flows, and a batch of 64
/// packets of established service flows.
fn gateway(services: usize, flows: u32) -> (Gateway, Vec<Vec<u8>>) {
    let config = config(services);
    let shared = GatewayShared::new(&config);
    let mut gw = Gateway::new(
        shared.clone(),
        Bridge::new(&config.pod_bridge(&BridgeConfig::default())),
    );
    let mut next = [Disposition::Drop; 1];
    let mut emit = Vec::new();
    for (ip, mac, port, target) in [
        (
            Ipv4Addr::new(10, 244, 1, 2),
            [2, 0, 0, 0, 1, 2],
            0u16,
            GW_IP,
        ),
        (CLIENT, [2, 0, 0, 0, 1, 4], 2, GW_IP),
        (ROUTER, [2, 0, 0, 0, 0, 0xfe], 3, NODE_IP),
    ] {
        let mut f = arp_from(ip, mac, target);
        gw.process(&mut [&mut f[..]], port, 0, &mut next, &mut emit);
    }
    // Background flows fill the table; they never match the measured packets.
    for i in 0..flows {
        let t = Tuple {
            src: Ipv4Addr::from(0x0af4_8000 | (i >> 16)),
            dst: VIP,
            sport: i as u16,
            dport: 80,
            proto: 6,
            zone: 0,
        };
        let _ = shared
            .conntrack
            .insert(t, reply(&t), FlowState::initial(6, 0x10), 0);
    }
    for sport in 0..MAX_BATCH as u16 {
        let mut f = syn_or_ack(10_000 + sport, true);
        gw.process(&mut [&mut f[..]], 2, 0, &mut next, &mut emit);
        assert_eq!(next[0], Disposition::Forward(0));
    }
    let batch = (0..MAX_BATCH as u16)
        .map(|s| syn_or_ack(10_000 + s, false))
        .collect();
    (gw, batch)
}

fn pipeline_per_packet(c: &mut Criterion) {
    let mut g = c.benchmark_group("gateway_established_service_flow");
    g.throughput(Throughput::Elements(MAX_BATCH as u64));
    for (services, flows) in [(1usize, 0u32), (1, 1_000_000), (10_000, 0)] {
        let (mut gw, template) = gateway(services, flows);
        let mut next = [Disposition::Drop; MAX_BATCH];
        let mut emit = Vec::new();
        g.bench_function(format!("batch64_{services}_services_{flows}_flows"), |b| {
            b.iter_batched_ref(
                || template.clone(),
                |batch| {
                    let mut views: Vec<&mut [u8]> = batch.iter_mut().map(|f| &mut f[..]).collect();
                    gw.process(&mut views, 2, 1, &mut next, &mut emit);
                    black_box(&next);
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn nat_rewrite(c: &mut Criterion) {
    use pipeline::wire::ipv4::Ipv4Packet;
    use pipeline::wire::l4;
    let template = syn_or_ack(40_000, false);
    c.bench_function("nat_rewrite_dnat_ip_port_ttl", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |frame| {
                let mut ip = Ipv4Packet::new_checked(&mut frame[14..]).unwrap();
                let new = Ipv4Addr::new(10, 244, 1, 2);
                let old = ip.dst();
                ip.set_dst(new);
                l4::address_changed(6, ip.payload_mut(), old.into(), new.into());
                l4::set_port(6, ip.payload_mut(), false, 8080);
                ip.decrement_ttl();
                black_box(&frame);
            },
            BatchSize::SmallInput,
        )
    });
}

/// A new masqueraded connection's first packet: the NAT decision (service and VIP lookups),
/// port allocation and conntrack insert, with 1 and 10,000 services configured.
fn new_flow_setup(c: &mut Criterion) {
    let mut g = c.benchmark_group("gateway_new_masqueraded_flow");
    for services in [1usize, 10_000] {
        let (mut gw, _) = gateway(services, 0);
        let mut next = [Disposition::Drop; 1];
        let mut emit = Vec::new();
        let mut i = 0u32;
        g.bench_function(format!("{services}_services"), |b| {
            b.iter_batched_ref(
                || {
                    i = i.wrapping_add(1);
                    // A new (destination, source port) each time: never a tracked flow.
                    let dst = Ipv4Addr::from(0xc613_0000 | (i >> 14));
                    let mut f = Vec::new();
                    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 1, 4], GW_MAC.0)
                        .ipv4(CLIENT.octets(), dst.octets(), 64)
                        .tcp(1024 + (i & 0x3fff) as u16, 443, 1, 64000)
                        .syn()
                        .write(&mut f, &[])
                        .unwrap();
                    f
                },
                |frame| {
                    gw.process(&mut [&mut frame[..]], 2, 1, &mut next, &mut emit);
                    assert_eq!(next[0], Disposition::Forward(3));
                    emit.clear();
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    conntrack,
    nat_rewrite,
    pipeline_per_packet,
    new_flow_setup
);
criterion_main!(benches);
