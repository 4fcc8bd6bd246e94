//! The gateway's configuration (already validated by the caller) and the `Policy` derived
//! from it: routes, services and the addresses every packet decision needs.

use crate::batch::{PortId, PortMask};
use crate::l3::{Ipv4Cidr, NextHop, Route, RouteTable, Segment};
use crate::nat::{Maglev, Service, ServiceTable};
use crate::overlay::Overlay;
use crate::wire::MacAddr;
use std::net::{Ipv4Addr, SocketAddrV4};

#[derive(Debug, Clone)]
pub struct UplinkConfig {
    pub port: PortId,
    /// The node's address and the uplink subnet.
    pub address: Ipv4Cidr,
    pub next_hop: Ipv4Addr,
    pub masquerade: bool,
    pub cluster_cidrs: Vec<Ipv4Cidr>,
    /// Source ports SNAT may use, inclusive (Linux: `ip_local_port_range`).
    pub nat_ports: (u16, u16),
    /// The uplink's MTU: what an encapsulated packet must fit.
    pub mtu: u32,
}

/// Another node whose pods live behind its VTEP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanPeer {
    pub cidr: Ipv4Cidr,
    pub vtep: Ipv4Addr,
    pub mac: MacAddr,
}

/// The VXLAN overlay (flannel's `vxlan` backend): this node's VTEP and its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    pub vni: u32,
    pub udp_port: u16,
    /// This node's VTEP address (the uplink address by default).
    pub local: Ipv4Addr,
    /// This node's VTEP MAC: inner frames to us carry it, inner frames we send come from it.
    pub mac: MacAddr,
    pub peers: Vec<VxlanPeer>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
    pub node_port: Option<u16>,
    pub backends: Vec<SocketAddrV4>,
    /// `sessionAffinity: ClientIP` with this timeout in seconds; `None`: no affinity.
    pub affinity_timeout_s: Option<u32>,
    /// `externalTrafficPolicy: Local`: what the NodePort reaches (this node's endpoints), with
    /// the client's address kept; `None`: the NodePort reaches `backends`, SNATed to the node.
    pub external_local: Option<Vec<SocketAddrV4>>,
    /// Every endpoint when `backends` is this node's only (`internalTrafficPolicy: Local`):
    /// what the NodePort reaches with `externalTrafficPolicy: Cluster` (SNATed to the node),
    /// and what this node's pods reach through it with ETP Local. `None`: `backends` (or
    /// `external_local`).
    pub node_port_backends: Option<Vec<SocketAddrV4>>,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The switch's own MAC on both segments.
    pub mac: MacAddr,
    pub pod_ports: Vec<PortId>,
    /// The pods' gateway address and the pod subnet.
    pub gateway: Ipv4Cidr,
    pub uplink: Option<UplinkConfig>,
    /// host-gw routes: prefix via next hop on the uplink.
    pub routes: Vec<(Ipv4Cidr, Ipv4Addr)>,
    pub services: Vec<ServiceConfig>,
    /// The overlay; needs `uplink`.
    pub vxlan: Option<VxlanConfig>,
    pub conntrack_capacity: usize,
    pub neighbor_age_ms: u64,
}

impl GatewayConfig {
    /// The pod segment's bridge: `base` flooding only to the pod ports.
    pub fn pod_bridge(&self, base: &crate::l2::BridgeConfig) -> crate::l2::BridgeConfig {
        crate::l2::BridgeConfig {
            flood_domain: PortMask::of(&self.pod_ports),
            ..base.clone()
        }
    }
}

/// Everything per-packet decisions read; replaced whole on reload.
#[derive(Debug)]
pub struct Policy {
    pub mac: MacAddr,
    pub pod_ports: PortMask,
    pub pod_cidr: Ipv4Cidr,
    pub gateway_ip: Ipv4Addr,
    pub uplink_port: Option<PortId>,
    pub uplink_cidr: Option<Ipv4Cidr>,
    pub node_ip: Option<Ipv4Addr>,
    pub masquerade: bool,
    pub cluster_cidrs: Vec<Ipv4Cidr>,
    pub nat_ports: (u16, u16),
    pub routes: RouteTable,
    pub services: ServiceTable,
    pub overlay: Option<Overlay>,
    /// What an encapsulated packet must fit (the uplink's MTU).
    pub uplink_mtu: u32,
}

impl Policy {
    pub fn new(config: &GatewayConfig) -> Policy {
        let mut routes = vec![Route {
            prefix: config.gateway,
            next_hop: NextHop::Connected(Segment::Pods),
        }];
        if let Some(up) = &config.uplink {
            routes.push(Route {
                prefix: up.address,
                next_hop: NextHop::Connected(Segment::Uplink),
            });
            routes.push(Route {
                prefix: Ipv4Cidr {
                    addr: Ipv4Addr::UNSPECIFIED,
                    len: 0,
                },
                next_hop: NextHop::Via(up.next_hop, Segment::Uplink),
            });
            for (prefix, via) in &config.routes {
                routes.push(Route {
                    prefix: *prefix,
                    next_hop: NextHop::Via(*via, Segment::Uplink),
                });
            }
            for peer in config.vxlan.iter().flat_map(|v| &v.peers) {
                routes.push(Route {
                    prefix: peer.cidr,
                    next_hop: NextHop::Via(peer.vtep, Segment::Overlay),
                });
            }
        }
        let services = config
            .services
            .iter()
            .map(|s| Service {
                name: s.name.clone(),
                cluster_ip: s.cluster_ip,
                port: s.port,
                proto: s.proto,
                node_port: s.node_port,
                maglev: Maglev::new(&s.backends),
                affinity_ms: s.affinity_timeout_s.map(|t| t as u64 * 1000),
                external_local: s.external_local.as_deref().map(Maglev::new),
                node_port_backends: s.node_port_backends.as_deref().map(Maglev::new),
            })
            .collect();
        Policy {
            mac: config.mac,
            pod_ports: PortMask::of(&config.pod_ports),
            pod_cidr: config.gateway,
            gateway_ip: config.gateway.addr,
            uplink_port: config.uplink.as_ref().map(|u| u.port),
            uplink_cidr: config.uplink.as_ref().map(|u| u.address),
            node_ip: config.uplink.as_ref().map(|u| u.address.addr),
            masquerade: config.uplink.as_ref().is_some_and(|u| u.masquerade),
            cluster_cidrs: config
                .uplink
                .as_ref()
                .map(|u| u.cluster_cidrs.clone())
                .unwrap_or_default(),
            nat_ports: config
                .uplink
                .as_ref()
                .map(|u| u.nat_ports)
                .unwrap_or((1024, 65535)),
            routes: RouteTable::new(routes),
            services: ServiceTable::new(services),
            overlay: config
                .vxlan
                .as_ref()
                .filter(|_| config.uplink.is_some())
                .map(|v| Overlay::new(v, config.mac)),
            uplink_mtu: config.uplink.as_ref().map_or(1500, |u| u.mtu),
        }
    }

    /// Pods of this node, the cluster CIDRs, and the overlay peers' pods.
    pub fn in_cluster(&self, ip: Ipv4Addr) -> bool {
        self.pod_cidr.contains(ip)
            || self.cluster_cidrs.iter().any(|c| c.contains(ip))
            || self.overlay.as_ref().is_some_and(|o| o.in_peer_cidr(ip))
    }

    /// An address of ours on the uplink side: the node address or the VTEP address.
    pub fn is_uplink_ip(&self, ip: Ipv4Addr) -> bool {
        Some(ip) == self.node_ip || self.overlay.as_ref().is_some_and(|o| o.local == ip)
    }

    /// Our address on a segment.
    pub fn our_ip(&self, segment: Segment) -> Option<Ipv4Addr> {
        match segment {
            Segment::Pods => Some(self.gateway_ip),
            Segment::Uplink => self.node_ip,
            Segment::Overlay => self.overlay.as_ref().map(|o| o.local),
        }
    }

    /// The ports a segment's broadcasts go to.
    pub fn segment_ports(&self, segment: Segment) -> PortMask {
        match segment {
            Segment::Pods => self.pod_ports,
            Segment::Uplink | Segment::Overlay => self
                .uplink_port
                .map(PortMask::single)
                .unwrap_or(PortMask::NONE),
        }
    }
}
