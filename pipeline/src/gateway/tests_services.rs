//! Gateway tests of what Kubernetes services add to plain load balancing: ClientIP session
//! affinity and `externalTrafficPolicy: Local` NodePorts.

use super::tests::*;
use super::*;
use crate::wire::ipv4::PROTO_TCP;
use std::collections::{HashMap, HashSet};

fn with_affinity(timeout_s: u32) -> GatewayConfig {
    let mut c = config();
    c.services[0].affinity_timeout_s = Some(timeout_s);
    c
}

fn backend_of(out: &Out) -> Ipv4Addr {
    addresses(&out.frame).2
}

#[test]
fn client_ip_affinity_sends_every_connection_of_a_client_to_one_backend() {
    let mut gw = gateway(&with_affinity(10));
    learn_neighbors(&mut gw);
    let first = backend_of(&pod3_syn_to_vip(&mut gw, 20000, 0));
    for sport in 1..200u16 {
        let out = pod3_syn_to_vip(&mut gw, 20000 + sport, sport as u64 * 10);
        assert_eq!(backend_of(&out), first, "connection {sport}");
    }
    assert_eq!(gw.shared.affinity.len(), 1);
    assert_eq!(
        gw.shared.affinity.counters.hits.load(Ordering::Relaxed),
        199
    );
    // Without affinity the same connections spread.
    let mut plain = gateway(&config());
    learn_neighbors(&mut plain);
    let spread: HashSet<_> = (0..200u16)
        .map(|sport| backend_of(&pod3_syn_to_vip(&mut plain, 20000 + sport, 0)))
        .collect();
    assert_eq!(spread.len(), 3);
    assert!(plain.shared.affinity.is_empty());
}

#[test]
fn affinity_ends_after_its_timeout_and_when_the_backend_leaves() {
    let c = with_affinity(5);
    let mut gw = gateway(&c);
    learn_neighbors(&mut gw);
    let first = backend_of(&pod3_syn_to_vip(&mut gw, 20000, 0));
    // After the timeout without new connections, clients are balanced again: some of many
    // fresh starts (each past the previous entry's timeout) land elsewhere.
    let mut now = 0;
    let mut others = 0;
    for sport in 1..60u16 {
        now += 5_001;
        gw.housekeeping(now, true, &mut Vec::new());
        if backend_of(&pod3_syn_to_vip(&mut gw, 20000 + sport, now)) != first {
            others += 1;
        }
    }
    assert!(others > 0, "affinity outlived its timeout");
    // A remembered backend removed from the service is not used; the client gets a new one,
    // and keeps it.
    let stuck = backend_of(&pod3_syn_to_vip(&mut gw, 30000, now));
    let mut fewer = c.clone();
    fewer.services[0].backends.retain(|b| *b.ip() != stuck);
    gw.shared.reload(&fewer);
    let next = backend_of(&pod3_syn_to_vip(&mut gw, 30001, now + 1));
    assert_ne!(next, stuck);
    for sport in 30002..30050 {
        assert_eq!(backend_of(&pod3_syn_to_vip(&mut gw, sport, now + 2)), next);
    }
}

#[test]
fn affinity_entries_age_out_in_housekeeping() {
    let mut gw = gateway(&with_affinity(1));
    learn_neighbors(&mut gw);
    pod3_syn_to_vip(&mut gw, 20000, 0);
    assert_eq!(gw.shared.affinity.len(), 1);
    for tick in 1..=8u64 {
        gw.housekeeping(1_000 + tick, true, &mut Vec::new());
    }
    assert!(gw.shared.affinity.is_empty());
}

/// The config with the NodePort limited to this node's backends (ETP Local).
fn etp_local() -> GatewayConfig {
    let mut c = config();
    c.services[0].external_local = Some(backends(&[(POD1, 8080), (POD2, 8080)]));
    c
}

/// A SYN from pod 3 (port 2) to the node's NodePort 30080, from `sport`.
fn pod3_syn_to_node_port(gw: &mut Gateway, sport: u16) -> Out {
    send(
        gw,
        tcp(
            pod_mac(3),
            GW_MAC,
            (POD3, sport),
            (NODE_IP, 30080),
            true,
            64,
        ),
        2,
        0,
    )
}

fn ext_syn(gw: &mut Gateway, sport: u16) -> Out {
    send(
        gw,
        tcp(ROUTER_MAC, GW_MAC, (EXT, sport), (NODE_IP, 30080), true, 60),
        UPLINK,
        0,
    )
}

/// ITP Local (the cluster IP reaches this node's backends) with ETP Cluster: the NodePort
/// balances over its own set, every backend, SNATed to the node as usual.
#[test]
fn a_node_port_with_its_own_backends_reaches_them_snated() {
    let mut c = config();
    c.services[0].backends = backends(&[(POD1, 8080)]);
    c.services[0].node_port_backends = Some(backends(&[(POD1, 8080), (REMOTE_POD, 8080)]));
    let mut gw = gateway(&c);
    learn_neighbors(&mut gw);
    let mut seen = HashSet::new();
    for sport in 0..100u16 {
        let out = ext_syn(&mut gw, 4000 + sport);
        let (src, _, dst, dport) = addresses(&out.frame);
        assert_eq!(dport, 8080);
        assert_ne!(src, EXT, "SNATed, not the client's address");
        seen.insert(dst);
    }
    assert_eq!(seen, HashSet::from([POD1, REMOTE_POD]));
    // The cluster IP reaches this node's backend only.
    let spread: HashSet<_> = (0..50u16)
        .map(|sport| backend_of(&pod3_syn_to_vip(&mut gw, 20000 + sport, 0)))
        .collect();
    assert_eq!(spread, HashSet::from([POD1]));
}

#[test]
fn etp_local_node_port_reaches_local_backends_only_and_keeps_the_client() {
    let mut gw = gateway(&etp_local());
    learn_neighbors(&mut gw);
    let mut seen = HashSet::new();
    for sport in 0..100u16 {
        let out = ext_syn(&mut gw, 4000 + sport);
        let (src, _, dst, dport) = addresses(&out.frame);
        assert_eq!((src, dport), (EXT, 8080), "the client's address is kept");
        assert!(dst == POD1 || dst == POD2, "{dst} is not a local backend");
        seen.insert(dst);
    }
    assert_eq!(seen.len(), 2);
    // The backend answers the client straight (its default route is us): un-DNATed.
    let out = ext_syn(&mut gw, 5000);
    let (_, _, dst, _) = addresses(&out.frame);
    let (port, mac) = if dst == POD1 {
        (0, pod_mac(1))
    } else {
        (1, pod_mac(2))
    };
    let reply = send(
        &mut gw,
        tcp(mac, GW_MAC, (dst, 8080), (EXT, 5000), false, 64),
        port,
        1,
    );
    assert_eq!(reply.next, Disposition::Forward(UPLINK));
    assert_eq!(addresses(&reply.frame), (NODE_IP, 30080, EXT, 5000));
    // The cluster IP still reaches every backend, the remote one included.
    let spread: HashSet<_> = (0..200u16)
        .map(|sport| backend_of(&pod3_syn_to_vip(&mut gw, 20000 + sport, 0)))
        .collect();
    assert!(spread.contains(&REMOTE_POD));
}

/// A pod reaching its own NodePort (ETP Local) whose only endpoint is itself: SNATed to the
/// gateway as a service hairpin, or it would see its own address as the source.
#[test]
fn a_pod_reaching_itself_through_an_etp_local_node_port_is_hairpinned() {
    let mut c = config();
    c.services[0].backends = backends(&[(POD1, 8080)]);
    c.services[0].external_local = Some(backends(&[(POD1, 8080)]));
    let mut gw = gateway(&c);
    learn_neighbors(&mut gw);
    let out = send(
        &mut gw,
        tcp(pod_mac(1), GW_MAC, (POD1, 7000), (NODE_IP, 30080), true, 64),
        0,
        0,
    );
    assert_eq!(out.next, Disposition::Forward(0));
    let (src, sport, dst, dport) = addresses(&out.frame);
    assert_eq!((src, dst, dport), (GW_IP, POD1, 8080));
    assert_eq!(gw.counters().get(GwCounter::NatHairpin), 1);
    // Its answer comes back to it from the NodePort.
    let back = send(
        &mut gw,
        tcp(pod_mac(1), GW_MAC, (POD1, 8080), (GW_IP, sport), false, 64),
        0,
        1,
    );
    assert_eq!(back.next, Disposition::Forward(0));
    assert_eq!(addresses(&back.frame), (NODE_IP, 30080, POD1, 7000));
}

/// This node's pods reach an ETP Local NodePort as its cluster IP (kube-proxy's "pod traffic
/// for external destinations"): every endpoint, the remote ones too, the pod's address kept;
/// the replies come back from the NodePort.
#[test]
fn a_pod_reaches_an_etp_local_node_port_as_the_cluster_ip() {
    let mut c = config();
    c.services[0].external_local = Some(Vec::new());
    let mut gw = gateway(&c);
    learn_neighbors(&mut gw);
    let mut seen = HashMap::new();
    for sport in 21000..21200u16 {
        let out = pod3_syn_to_node_port(&mut gw, sport);
        assert_ne!(out.next, Disposition::Drop);
        let (src, _, dst, dport) = addresses(&out.frame);
        assert_eq!((src, dport), (POD3, 8080), "the pod's address is kept");
        seen.insert(dst, sport);
    }
    let reached: HashSet<_> = seen.keys().copied().collect();
    assert_eq!(reached, HashSet::from([POD1, POD2, REMOTE_POD]));
    assert_eq!(gw.counters().get(GwCounter::DropNoBackend), 0);
    let sport = seen[&POD1];
    let reply = send(
        &mut gw,
        tcp(pod_mac(1), GW_MAC, (POD1, 8080), (POD3, sport), false, 64),
        0,
        1,
    );
    assert_eq!(reply.next, Disposition::Forward(2));
    assert_eq!(addresses(&reply.frame), (NODE_IP, 30080, POD3, sport));
    // From outside: still this node's endpoints only (none here).
    assert_eq!(ext_syn(&mut gw, 4000).next, Disposition::Drop);
}

/// With ITP Local too (the cluster IP's backends are this node's), this node's pods still
/// reach every endpoint through the NodePort; outside clients this node's.
#[test]
fn a_pod_reaches_every_endpoint_of_an_itp_and_etp_local_node_port() {
    let mut c = config();
    c.services[0].backends = backends(&[(POD1, 8080)]);
    c.services[0].external_local = Some(backends(&[(POD1, 8080)]));
    c.services[0].node_port_backends =
        Some(backends(&[(POD1, 8080), (POD2, 8080), (REMOTE_POD, 8080)]));
    let mut gw = gateway(&c);
    learn_neighbors(&mut gw);
    let reached: HashSet<_> = (21000..21200u16)
        .map(|sport| {
            let out = pod3_syn_to_node_port(&mut gw, sport);
            addresses(&out.frame).2
        })
        .collect();
    assert_eq!(reached, HashSet::from([POD1, POD2, REMOTE_POD]));
    for sport in 0..50u16 {
        assert_eq!(backend_of(&ext_syn(&mut gw, 4000 + sport)), POD1);
    }
}

#[test]
fn etp_local_without_local_backends_drops_node_port_connections() {
    let mut c = config();
    c.services[0].external_local = Some(Vec::new());
    let mut gw = gateway(&c);
    learn_neighbors(&mut gw);
    let out = ext_syn(&mut gw, 4000);
    assert_eq!(out.next, Disposition::Drop);
    assert_eq!(gw.counters().get(GwCounter::DropNoBackend), 1);
    // The cluster IP is not affected.
    let out = pod3_syn_to_vip(&mut gw, 20000, 0);
    assert_ne!(out.next, Disposition::Drop);
}

#[test]
fn etp_local_and_affinity_together_stick_to_a_local_backend() {
    let mut c = etp_local();
    c.services[0].affinity_timeout_s = Some(60);
    let mut gw = gateway(&c);
    learn_neighbors(&mut gw);
    let first = addresses(&ext_syn(&mut gw, 4000).frame).2;
    for sport in 4001..4100 {
        assert_eq!(addresses(&ext_syn(&mut gw, sport).frame).2, first);
    }
    // A reload that keeps the backend keeps the flow and the affinity; closing it is for
    // removed backends only (the NodePort's local set counts as the service's backends).
    let before = gw.shared.conntrack.len();
    assert_eq!(gw.shared.reload(&c).flows_closed, 0);
    assert_eq!(gw.shared.conntrack.len(), before);
    assert_eq!(addresses(&ext_syn(&mut gw, 4200).frame).2, first);
    let _ = PROTO_TCP;
}

/// A client of both the cluster IP and a NodePort with its own backends (ITP Local, ETP
/// Cluster) sticks to one backend per front: one front's choice, outside the other's set,
/// would make each undo the other's.
#[test]
fn affinity_keeps_a_node_port_with_its_own_backends_apart_from_the_cluster_ip() {
    let mut c = with_affinity(10);
    c.services[0].backends = backends(&[(POD1, 8080)]);
    c.services[0].node_port_backends = Some(backends(&[(POD1, 8080), (REMOTE_POD, 8080)]));
    let mut gw = gateway(&c);
    learn_neighbors(&mut gw);
    let to_node_port = pod3_syn_to_node_port;
    let through_node_port = backend_of(&to_node_port(&mut gw, 21000));
    assert_eq!(backend_of(&pod3_syn_to_vip(&mut gw, 21001, 0)), POD1);
    assert_eq!(gw.shared.affinity.len(), 2, "one entry per front");
    for sport in 21002..21050u16 {
        assert_eq!(backend_of(&to_node_port(&mut gw, sport)), through_node_port);
        assert_eq!(backend_of(&pod3_syn_to_vip(&mut gw, sport + 100, 0)), POD1);
    }
}
