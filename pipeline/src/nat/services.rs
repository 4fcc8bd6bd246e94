//! Services: cluster IP and port → backends, and NodePorts.

use super::Maglev;
use rustc_hash::{FxHashMap, FxHashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
    pub node_port: Option<u16>,
    pub maglev: Maglev,
    /// `sessionAffinity: ClientIP`: how long a client keeps its backend without a new
    /// connection.
    pub affinity_ms: Option<u64>,
    /// `externalTrafficPolicy: Local`: the NodePort balances over these (this node's)
    /// backends only, and keeps the client's address.
    pub external_local: Option<Maglev>,
    /// Every endpoint, when the cluster IP's are this node's only (ITP Local): what the
    /// NodePort reaches with ETP Cluster (SNATed as usual), and this node's pods through an
    /// ETP Local NodePort.
    pub node_port_backends: Option<Maglev>,
}

/// How a new connection reaches a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    ClusterIp,
    NodePort,
    /// This node's pod through an ETP Local NodePort: every endpoint, as kube-proxy sends
    /// "pod traffic for external destinations".
    NodePortFromPod,
}

impl Service {
    /// The backends a front balances over, and whether the client's address is kept: the
    /// NodePort's own set (ETP Local: kept; ITP Local with ETP Cluster: not), else the
    /// service's.
    #[inline]
    pub fn backends_for(&self, front: Front) -> (&Maglev, bool) {
        match (front, &self.external_local, &self.node_port_backends) {
            (Front::NodePort, Some(local), _) => (local, true),
            (Front::NodePort | Front::NodePortFromPod, _, Some(all)) => (all, false),
            _ => (&self.maglev, false),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ServiceTable {
    by_vip: FxHashMap<(Ipv4Addr, u16, u8), Arc<Service>>,
    by_node_port: FxHashMap<(u16, u8), Arc<Service>>,
    /// Every cluster IP, whatever its ports: traffic to a VIP's other ports is refused.
    vips: FxHashSet<Ipv4Addr>,
}

impl ServiceTable {
    pub fn new(services: Vec<Service>) -> ServiceTable {
        let mut table = ServiceTable::default();
        for s in services {
            let s = Arc::new(s);
            table.vips.insert(s.cluster_ip);
            table
                .by_vip
                .insert((s.cluster_ip, s.port, s.proto), s.clone());
            if let Some(np) = s.node_port {
                table.by_node_port.insert((np, s.proto), s);
            }
        }
        table
    }

    #[inline]
    pub fn by_vip(&self, ip: Ipv4Addr, port: u16, proto: u8) -> Option<&Service> {
        self.by_vip.get(&(ip, port, proto)).map(|s| &**s)
    }

    #[inline]
    pub fn by_node_port(&self, port: u16, proto: u8) -> Option<&Service> {
        self.by_node_port.get(&(port, proto)).map(|s| &**s)
    }

    #[inline]
    pub fn is_vip(&self, ip: Ipv4Addr) -> bool {
        self.vips.contains(&ip)
    }

    pub fn len(&self) -> usize {
        self.by_vip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_vip.is_empty()
    }

    /// Every backend of every service.
    pub fn all_backends(&self) -> impl Iterator<Item = SocketAddrV4> + '_ {
        self.by_vip.values().flat_map(|s| {
            let local = s.external_local.as_ref().map(|m| m.backends());
            let node_port = s.node_port_backends.as_ref().map(|m| m.backends());
            s.maglev
                .backends()
                .iter()
                .chain(local.unwrap_or_default())
                .chain(node_port.unwrap_or_default())
                .copied()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(i: u32, node_port: Option<u16>) -> Service {
        Service {
            name: format!("svc{i}"),
            cluster_ip: Ipv4Addr::from(0x0a60_0000 + i),
            port: 80,
            proto: 6,
            node_port,
            maglev: Maglev::new(&[SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 2), 8080)]),
            affinity_ms: None,
            external_local: None,
            node_port_backends: None,
        }
    }

    #[test]
    fn vips_and_node_ports_are_found_by_key() {
        let table = ServiceTable::new(
            (1..=1000)
                .map(|i| service(i, (i == 7).then_some(30007)))
                .collect(),
        );
        assert!(table.is_vip(Ipv4Addr::from(0x0a60_0000 + 500)));
        assert!(!table.is_vip(Ipv4Addr::from(0x0a60_0000 + 1001)));
        assert!(table
            .by_vip(Ipv4Addr::from(0x0a60_0000 + 500), 80, 6)
            .is_some());
        assert!(table
            .by_vip(Ipv4Addr::from(0x0a60_0000 + 500), 81, 6)
            .is_none());
        assert!(table
            .by_vip(Ipv4Addr::from(0x0a60_0000 + 500), 80, 17)
            .is_none());
        assert_eq!(
            table.by_node_port(30007, 6).map(|s| s.name.as_str()),
            Some("svc7")
        );
        assert_eq!(table.len(), 1000);
    }
}
