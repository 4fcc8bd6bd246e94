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
    use pipeline::gateway::{GatewayConfig, ServiceConfig, UplinkConfig};
    use pipeline::l2::BridgeConfig;
    use pipeline::{Bridge, Disposition, Gateway, GatewayShared, MacAddr, MAX_BATCH};
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn config() -> GatewayConfig {
        GatewayConfig {
            mac: MacAddr([2, 0xaa, 0, 0, 0, 1]),
            pod_ports: vec![0, 1, 2],
            gateway: "10.244.1.1/24".parse().unwrap(),
            uplink: Some(UplinkConfig {
                port: 3,
                address: "198.18.0.1/24".parse().unwrap(),
                next_hop: Ipv4Addr::new(198, 18, 0, 254),
                masquerade: true,
                cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
                nat_ports: (1024, 65535),
            }),
            routes: vec![],
            services: vec![ServiceConfig {
                name: "web".into(),
                cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
                port: 80,
                proto: 6,
                node_port: Some(30080),
                backends: vec![SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 2), 8080)],
            }],
            conntrack_capacity: 1024,
            neighbor_age_ms: 300_000,
        }
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

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn gateway_never_panics(
            frames in proptest::collection::vec(prop_oneof![plausible(), proptest::collection::vec(any::<u8>(), 0..100)], 1..MAX_BATCH),
            ingress in 0u16..5,
            now in 0u64..1_000_000,
        ) {
            let config = config();
            let mut gw = Gateway::new(GatewayShared::new(&config), Bridge::new(&config.pod_bridge(&BridgeConfig::default())));
            let mut frames = frames;
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
