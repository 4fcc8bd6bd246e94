//! What a connection's first packet gets translated to: service DNAT (Maglev), NodePort DNAT
//! with SNAT to the node, hairpin SNAT to the gateway, masquerade to the node address, or
//! nothing — and which new connections are refused.

use super::{Affinity, AffinityKey, Front, Service};
use crate::conntrack::Tuple;
use crate::gateway::Policy;
use crate::l3::Segment;
use std::net::Ipv4Addr;

/// Why a new connection gets no translation and is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// From outside the cluster to a pod, not a reply.
    Unsolicited,
    /// A service (or a port of a VIP) without a backend.
    NoBackend,
    /// To one of our own addresses, not a NodePort.
    LocalUnhandled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    None,
    Service,
    NodePort,
    /// A pod reaching its own service and landing on itself.
    Hairpin,
    Masquerade,
}

/// The translation of a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatPlan {
    /// Where it goes: a backend, or the original destination.
    pub target: (Ipv4Addr, u16),
    /// The source address it leaves with, when translated.
    pub snat: Option<Ipv4Addr>,
    pub kind: NatKind,
}

/// A hash of the 5-tuple: picks the Maglev backend and seeds NAT port probes.
pub fn flow_hash(t: &Tuple) -> u64 {
    let a = (u32::from(t.src) as u64) << 32 | u32::from(t.dst) as u64;
    let b = (t.sport as u64) << 24 | (t.dport as u64) << 8 | t.proto as u64;
    super::maglev_mix(a ^ super::maglev_mix(b))
}

/// The backend for a new connection to `svc` through `front`: the Maglev pick, unless
/// ClientIP affinity remembers another. Also says whether the front is ETP Local (the
/// client's address is kept).
fn pick_backend(
    svc: &Service,
    front: Front,
    t: &Tuple,
    affinity: &Affinity,
    now_ms: u64,
) -> (Option<std::net::SocketAddrV4>, bool) {
    let (maglev, local) = svc.backends_for(front);
    let balance = || maglev.pick(flow_hash(t));
    let backend = match svc.affinity_ms {
        None => balance(),
        Some(timeout_ms) => {
            let key = AffinityKey {
                vip: svc.cluster_ip,
                port: svc.port,
                proto: svc.proto,
                // The front balances over a set of its own (not the service's).
                own_set: !std::ptr::eq(maglev, &svc.maglev),
                client: t.src,
            };
            affinity.pick(key, now_ms, timeout_ms, |b| maglev.contains(b), balance)
        }
    };
    (backend, local)
}

/// Decides the translation of a connection whose first packet is `t`; `from_outside`: it came
/// in on the uplink (not through the overlay); `local`: it is addressed to one of our own
/// addresses. Services with ClientIP affinity consult and update `affinity`.
pub fn plan(
    policy: &Policy,
    affinity: &Affinity,
    t: &Tuple,
    from_outside: bool,
    local: bool,
    now_ms: u64,
) -> Result<NatPlan, Refusal> {
    // A peer's pods too: the peer takes what comes out of the overlay as the cluster's.
    let to_pods = policy.pod_cidr.contains(t.dst)
        || policy
            .overlay
            .as_ref()
            .is_some_and(|o| o.in_peer_cidr(t.dst));
    if from_outside && to_pods && !policy.in_cluster(t.src) {
        return Err(Refusal::Unsolicited);
    }
    let service = policy
        .services
        .by_vip(t.dst, t.dport, t.proto)
        .map(|s| (s, NatKind::Service))
        .or_else(|| {
            (Some(t.dst) == policy.node_ip)
                .then(|| policy.services.by_node_port(t.dport, t.proto))
                .flatten()
                .map(|s| (s, NatKind::NodePort))
        });
    let mut keep_source = false;
    let (target, dnat) = match service {
        Some((svc, kind)) => {
            // This node's pods reach an ETP Local NodePort as they reach the cluster IP, not
            // only its local endpoints (kube-proxy sends "pod traffic for external
            // destinations" to the service's chain): their replies come back through us
            // whatever the backend.
            let (kind, front) = match kind {
                NatKind::NodePort
                    if svc.external_local.is_some() && policy.pod_cidr.contains(t.src) =>
                {
                    (NatKind::Service, Front::NodePortFromPod)
                }
                NatKind::NodePort => (kind, Front::NodePort),
                kind => (kind, Front::ClusterIp),
            };
            let (backend, etp_local) = pick_backend(svc, front, t, affinity, now_ms);
            keep_source = etp_local;
            match backend {
                Some(b) => ((*b.ip(), b.port()), kind),
                None => return Err(Refusal::NoBackend),
            }
        }
        None if local => return Err(Refusal::LocalUnhandled),
        None if policy.services.is_vip(t.dst) => return Err(Refusal::NoBackend),
        None => ((t.dst, t.dport), NatKind::None),
    };
    let egress_uplink = policy
        .routes
        .lookup(target.0)
        .is_some_and(|(seg, _)| seg == Segment::Uplink);
    let (snat, kind) = match dnat {
        // kube-proxy masquerades NodePort traffic so that replies come back through this node;
        // with ETP Local the backend is ours, its replies come back anyway, and it sees the
        // client.
        NatKind::NodePort if keep_source => (None, NatKind::NodePort),
        NatKind::NodePort => (policy.node_ip, NatKind::NodePort),
        // The reply of a pod that lands on itself must come to us, not straight back.
        NatKind::Service if target.0 == t.src => (Some(policy.gateway_ip), NatKind::Hairpin),
        _ if policy.masquerade
            && egress_uplink
            && policy.pod_cidr.contains(t.src)
            && !policy.in_cluster(target.0) =>
        {
            (policy.node_ip, NatKind::Masquerade)
        }
        kind => (None, kind),
    };
    Ok(NatPlan { target, snat, kind })
}
