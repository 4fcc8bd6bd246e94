//! The VXLAN overlay (flannel's `vxlan` backend, interoperable with the kernel's VXLAN device):
//! a destination in a peer's pod CIDR is encapsulated to the peer's VTEP (`encap.rs`); VXLAN to
//! our VTEP from a known peer is checked and stripped (`decap.rs`), and the inner frame is
//! routed by a second pass over the batch.

pub mod decap;
pub mod encap;

use crate::gateway::VxlanConfig;
use crate::l3::Ipv4Cidr;
use crate::wire::vxlan::{OuterRepr, ENCAP_OVERHEAD};
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
    /// Peer VTEP address → its MAC (flannel.1's MAC there) and the outer headers to it.
    peers: FxHashMap<Ipv4Addr, Peer>,
    cidrs: Vec<Ipv4Cidr>,
}

/// A peer: its VTEP MAC, and the outer headers of a frame to it with the lengths, the IPv4
/// checksum and the UDP source port still to fill in (written once, copied per packet).
#[derive(Debug, Clone)]
pub struct Peer {
    pub mac: MacAddr,
    pub outer: [u8; ENCAP_OVERHEAD],
}

impl Overlay {
    /// The overlay of a node whose switch MAC (the outer source) is `our_mac`.
    pub fn new(config: &VxlanConfig, our_mac: MacAddr) -> Overlay {
        let peer = |vtep: Ipv4Addr, mac: MacAddr| {
            let mut outer = [0u8; ENCAP_OVERHEAD];
            OuterRepr {
                src_mac: our_mac,
                src_ip: config.local,
                dst_ip: vtep,
                src_port: 0,
                dst_port: config.udp_port,
                vni: config.vni,
            }
            .emit(&mut outer, 0);
            Peer { mac, outer }
        };
        Overlay {
            vni: config.vni,
            udp_port: config.udp_port,
            local: config.local,
            mac: config.mac,
            peers: config
                .peers
                .iter()
                .map(|p| (p.vtep, peer(p.vtep, p.mac)))
                .collect(),
            cidrs: config.peers.iter().map(|p| p.cidr).collect(),
        }
    }

    /// The peer whose VTEP is `vtep`.
    #[inline]
    pub fn peer(&self, vtep: Ipv4Addr) -> Option<&Peer> {
        self.peers.get(&vtep)
    }

    pub fn in_peer_cidr(&self, ip: Ipv4Addr) -> bool {
        self.cidrs.iter().any(|c| c.contains(ip))
    }

    pub fn peers(&self) -> usize {
        self.peers.len()
    }
}
