//! The VXLAN overlay (flannel's `vxlan` backend, interoperable with the kernel's VXLAN device):
//! a destination in a peer's pod CIDR is encapsulated to the peer's VTEP (`encap.rs`); VXLAN to
//! our VTEP from a known peer is checked and stripped (`decap.rs`), and the inner frame is
//! routed by a second pass over the batch.

pub mod decap;
pub mod encap;

use crate::gateway::VxlanConfig;
use crate::l3::Ipv4Cidr;
use crate::wire::MacAddr;
use rustc_hash::FxHashMap;
use std::net::Ipv4Addr;

/// The overlay as per-packet decisions read it (part of the gateway's `Policy`).
#[derive(Debug, Clone)]
pub struct Overlay {
    pub vni: u32,
    pub udp_port: u16,
    pub local: Ipv4Addr,
    pub mac: MacAddr,
    /// Peer VTEP address → its MAC (flannel.1's MAC there).
    peers: FxHashMap<Ipv4Addr, MacAddr>,
    cidrs: Vec<Ipv4Cidr>,
}

impl Overlay {
    pub fn new(config: &VxlanConfig) -> Overlay {
        Overlay {
            vni: config.vni,
            udp_port: config.udp_port,
            local: config.local,
            mac: config.mac,
            peers: config.peers.iter().map(|p| (p.vtep, p.mac)).collect(),
            cidrs: config.peers.iter().map(|p| p.cidr).collect(),
        }
    }

    /// The MAC of the peer whose VTEP is `vtep`.
    #[inline]
    pub fn peer_mac(&self, vtep: Ipv4Addr) -> Option<MacAddr> {
        self.peers.get(&vtep).copied()
    }

    pub fn in_peer_cidr(&self, ip: Ipv4Addr) -> bool {
        self.cidrs.iter().any(|c| c.contains(ip))
    }

    pub fn peers(&self) -> usize {
        self.peers.len()
    }
}
