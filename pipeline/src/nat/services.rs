//! Services: cluster IP and port → backends, and NodePorts.

use super::Maglev;
use rustc_hash::FxHashMap;
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
}

#[derive(Debug, Clone, Default)]
pub struct ServiceTable {
    by_vip: FxHashMap<(Ipv4Addr, u16, u8), Arc<Service>>,
    by_node_port: FxHashMap<(u16, u8), Arc<Service>>,
}

impl ServiceTable {
    pub fn new(services: Vec<Service>) -> ServiceTable {
        let mut table = ServiceTable::default();
        for s in services {
            let s = Arc::new(s);
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

    pub fn is_vip(&self, ip: Ipv4Addr) -> bool {
        self.by_vip.keys().any(|(vip, _, _)| *vip == ip)
    }

    pub fn len(&self) -> usize {
        self.by_vip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_vip.is_empty()
    }

    /// Every backend of every service.
    pub fn all_backends(&self) -> impl Iterator<Item = SocketAddrV4> + '_ {
        self.by_vip
            .values()
            .flat_map(|s| s.maglev.backends().iter().copied())
    }
}
