//! The node config file (`vswitch --config node.toml`): parsed strictly (unknown keys are
//! errors), checked, and turned into a datapath configuration. Every error names the file, the
//! key and the reason.

use pipeline::gateway::{GatewayConfig, ServiceConfig, UplinkConfig, VxlanConfig, VxlanPeer};
use pipeline::l2::{PortBinding, DEFAULT_FDB_PORT_LIMIT};
use pipeline::l3::Ipv4Cidr;
use pipeline::wire::vxlan::IANA_PORT;
use pipeline::{MacAddr, PortId, MAX_PORTS};
use pmd::{PollMode, XdpMode};
use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    node: NodeSection,
    pods: PodsSection,
    uplink: Option<UplinkSection>,
    #[serde(default)]
    route: Vec<RouteSection>,
    #[serde(default)]
    service: Vec<ServiceSection>,
    vxlan: Option<VxlanSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VxlanSection {
    vni: u32,
    udp_port: Option<u16>,
    local: Option<String>,
    mac: Option<String>,
    #[serde(default)]
    peer: Vec<PeerSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerSection {
    cidr: String,
    vtep: String,
    mac: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSection {
    cores: Option<Vec<usize>>,
    xdp_mode: Option<String>,
    fast_path: Option<String>,
    poll: Option<String>,
    fdb_age: Option<u64>,
    fdb_port_limit: Option<usize>,
    conntrack_capacity: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PodsSection {
    /// May be empty: pods are attached later with `vswitch ctl port add`.
    #[serde(default)]
    ports: Vec<PortEntry>,
    gateway: String,
}

/// A pod port: its name, or its name with the addresses it is bound to (port security).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortEntry {
    Name(String),
    Bound(BoundPort),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BoundPort {
    name: String,
    mac: String,
    ip: Option<String>,
}

impl PortEntry {
    fn name(&self) -> &String {
        match self {
            PortEntry::Name(name) => name,
            PortEntry::Bound(b) => &b.name,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UplinkSection {
    port: String,
    address: String,
    next_hop: String,
    #[serde(default = "yes")]
    masquerade: bool,
    #[serde(default)]
    cluster_cidrs: Vec<String>,
    nat_port_range: Option<[u16; 2]>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSection {
    cidr: String,
    via: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSection {
    name: String,
    cluster_ip: String,
    port: u16,
    #[serde(default = "tcp")]
    protocol: String,
    node_port: Option<u16>,
    #[serde(default)]
    backends: Vec<String>,
    session_affinity_timeout: Option<u32>,
    external_traffic_policy: Option<String>,
}

/// Kubernetes' bound on `sessionAffinityConfig.clientIP.timeoutSeconds` (one day).
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;
/// The longest `fdb_age` (`--fdb-age`), in seconds.
pub const MAX_FDB_AGE_S: u64 = 86_400;

fn tcp() -> String {
    "tcp".into()
}

/// A refused config: which file, which key, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A checked node config.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Pod ports first, then the uplink: the datapath's port order.
    pub ports: Vec<String>,
    pub cores: Option<Vec<usize>>,
    pub xdp_mode: Option<XdpMode>,
    /// `[node] fast_path`: `Some(true)` for `xdp` (`--fast-path` overrides it).
    pub fast_path: Option<bool>,
    pub poll: Option<PollMode>,
    pub fdb_age_ms: u64,
    /// Most MAC addresses learned on one port.
    pub fdb_port_limit: usize,
    /// Pod ports bound to the addresses they may send from.
    pub bindings: Vec<(PortId, PortBinding)>,
    pub gateway: GatewayConfig,
}

struct Checker<'a> {
    file: &'a Path,
}

impl Checker<'_> {
    fn err(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn ip(&self, key: &str, text: &str) -> Result<Ipv4Addr, ConfigError> {
        text.parse()
            .map_err(|_| self.err(key, format!("{text:?} is not an IPv4 address")))
    }

    fn cidr(&self, key: &str, text: &str) -> Result<Ipv4Cidr, ConfigError> {
        text.parse().map_err(|e: String| self.err(key, e))
    }

    /// A unicast MAC address other than all zeros.
    fn unicast_mac(&self, key: &str, text: &str) -> Result<MacAddr, ConfigError> {
        let mac: MacAddr = text
            .parse()
            .map_err(|_| self.err(key, format!("{text:?} is not a MAC address")))?;
        if mac.is_multicast() || mac.is_zero() {
            return Err(self.err(key, format!("{text} is not a unicast address")));
        }
        Ok(mac)
    }
}

/// The `[vxlan]` section: every peer CIDR clear of the pod subnet, the uplink subnet, the routes
/// and the other peers.
fn vxlan(
    c: &Checker<'_>,
    section: &VxlanSection,
    gateway: Ipv4Cidr,
    uplink: Option<&UplinkConfig>,
    routes: &[(Ipv4Cidr, Ipv4Addr)],
) -> Result<VxlanConfig, ConfigError> {
    let Some(up) = uplink else {
        return Err(c.err(
            "vxlan",
            "the overlay runs over the uplink, and there is no [uplink]",
        ));
    };
    if !(1..=0x00ff_ffff).contains(&section.vni) {
        return Err(c.err(
            "vxlan.vni",
            format!("{} is outside 1..16777215", section.vni),
        ));
    }
    let udp_port = section.udp_port.unwrap_or(IANA_PORT);
    if udp_port == 0 {
        return Err(c.err("vxlan.udp_port", "port 0 is not a UDP port"));
    }
    let local = match &section.local {
        Some(text) => c.ip("vxlan.local", text)?,
        None => up.address.addr,
    };
    if gateway.contains(local) {
        return Err(c.err(
            "vxlan.local",
            format!("{local} is inside the pod subnet {gateway}"),
        ));
    }
    let mac = match &section.mac {
        Some(text) => c.unicast_mac("vxlan.mac", text)?,
        // Stable across restarts, as flannel keeps flannel.1's: from the VTEP address.
        None => {
            let o = local.octets();
            MacAddr([0x0e, 0x76, o[0], o[1], o[2], o[3]])
        }
    };
    let mut peers: Vec<VxlanPeer> = Vec::new();
    for (i, p) in section.peer.iter().enumerate() {
        let key = format!("vxlan.peer[{i}]");
        let cidr = c.cidr(&format!("{key}.cidr"), &p.cidr)?;
        let clash = if cidr.overlaps(&gateway) {
            Some(format!("the pod subnet {gateway}"))
        } else if cidr.overlaps(&up.address) {
            Some(format!("the uplink subnet {}", up.address))
        } else if let Some((r, _)) = routes.iter().find(|(r, _)| r.overlaps(&cidr)) {
            Some(format!("route {r}"))
        } else {
            peers
                .iter()
                .find(|o| o.cidr.overlaps(&cidr))
                .map(|o| format!("the CIDR of peer {}", o.vtep))
        };
        if let Some(what) = clash {
            return Err(c.err(format!("{key}.cidr"), format!("{cidr} overlaps {what}")));
        }
        let vtep = c.ip(&format!("{key}.vtep"), &p.vtep)?;
        if vtep == local || vtep == up.address.addr {
            return Err(c.err(format!("{key}.vtep"), format!("{vtep} is our own address")));
        }
        if gateway.contains(vtep)
            || peers.iter().any(|o| o.cidr.contains(vtep))
            || cidr.contains(vtep)
        {
            return Err(c.err(
                format!("{key}.vtep"),
                format!("{vtep} is inside a pod CIDR: a VTEP is reached over the uplink"),
            ));
        }
        let peer_mac = c.unicast_mac(&format!("{key}.mac"), &p.mac)?;
        if peer_mac == mac {
            return Err(c.err(
                format!("{key}.mac"),
                format!("{} is our own VTEP MAC", p.mac),
            ));
        }
        if let Some(o) = peers.iter().find(|o| o.vtep == vtep && o.mac != peer_mac) {
            return Err(c.err(
                format!("{key}.mac"),
                format!("peer {vtep} already has MAC {}", o.mac),
            ));
        }
        peers.push(VxlanPeer {
            cidr,
            vtep,
            mac: peer_mac,
        });
    }
    Ok(VxlanConfig {
        vni: section.vni,
        udp_port,
        local,
        mac,
        peers,
    })
}

/// Reads and checks a config file. `port_exists` is asked about every port name.
pub fn load(path: &Path, port_exists: &dyn Fn(&str) -> bool) -> Result<NodeConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        key: String::new(),
        reason: format!("cannot read: {e}"),
    })?;
    parse(path, &text, port_exists)
}

pub fn parse(
    path: &Path,
    text: &str,
    port_exists: &dyn Fn(&str) -> bool,
) -> Result<NodeConfig, ConfigError> {
    let c = Checker { file: path };
    let file: File = toml::from_str(text).map_err(|e| {
        let reason = e.message().to_string();
        let key = e.span().map(|s| {
            let line = text[..s.start.min(text.len())].lines().count().max(1);
            format!("line {line}")
        });
        c.err(key.unwrap_or_default(), reason)
    })?;

    // Ports.
    let mut seen = HashSet::new();
    let mut ports = Vec::new();
    let uplink_port = file.uplink.as_ref().map(|u| u.port.clone());
    for (key, name) in file
        .pods
        .ports
        .iter()
        .map(|p| ("pods.ports", p.name()))
        .chain(uplink_port.iter().map(|p| ("uplink.port", p)))
    {
        if !seen.insert(name.clone()) {
            return Err(c.err(key, format!("port {name:?} is listed twice")));
        }
        if !port_exists(name) {
            return Err(c.err(
                key,
                format!("port {name:?} does not exist in this network namespace"),
            ));
        }
        ports.push(name.clone());
    }
    if ports.len() > MAX_PORTS {
        let key = if uplink_port.is_some() {
            "pods.ports / uplink.port"
        } else {
            "pods.ports"
        };
        return Err(c.err(
            key,
            format!(
                "{} ports, more than the {MAX_PORTS} one switch supports",
                ports.len()
            ),
        ));
    }
    let pod_ports: Vec<PortId> = (0..file.pods.ports.len() as PortId).collect();

    // Addresses.
    let gateway = c.cidr("pods.gateway", &file.pods.gateway)?;
    if !(8..=30).contains(&gateway.len) {
        return Err(c.err(
            "pods.gateway",
            format!("prefix length /{} is outside /8../30", gateway.len),
        ));
    }
    if u32::from(gateway.addr) == gateway.network() {
        return Err(c.err(
            "pods.gateway",
            format!("{} is the network address, not a gateway address", gateway),
        ));
    }
    let uplink = match &file.uplink {
        None => None,
        Some(u) => {
            let address = c.cidr("uplink.address", &u.address)?;
            if address.overlaps(&gateway) {
                return Err(c.err(
                    "uplink.address",
                    format!("{address} overlaps the pod subnet {gateway}"),
                ));
            }
            let next_hop = c.ip("uplink.next_hop", &u.next_hop)?;
            if !another_host_in(&address, next_hop) {
                return Err(c.err(
                    "uplink.next_hop",
                    format!("{next_hop} is not another address in the uplink subnet {address}"),
                ));
            }
            let mut cluster_cidrs = Vec::new();
            for (i, text) in u.cluster_cidrs.iter().enumerate() {
                cluster_cidrs.push(c.cidr(&format!("uplink.cluster_cidrs[{i}]"), text)?);
            }
            let nat_ports = match u.nat_port_range {
                None => (1024, 65535),
                Some([a, b]) if a >= 1 && a <= b => (a, b),
                Some([a, b]) => {
                    return Err(c.err(
                        "uplink.nat_port_range",
                        format!("[{a}, {b}] is not a range of ports from 1"),
                    ))
                }
            };
            Some(UplinkConfig {
                port: file.pods.ports.len() as PortId,
                address,
                next_hop,
                masquerade: u.masquerade,
                cluster_cidrs,
                nat_ports,
                // The port's, filled in when the switch starts (it is not the file's to say).
                mtu: 1500,
            })
        }
    };

    // Routes.
    let mut routes: Vec<(Ipv4Cidr, Ipv4Addr)> = Vec::new();
    for (i, r) in file.route.iter().enumerate() {
        let key = format!("route[{i}]");
        let Some(up) = &uplink else {
            return Err(c.err(&key, "routes go via the uplink, and there is no [uplink]"));
        };
        let cidr = c.cidr(&format!("{key}.cidr"), &r.cidr)?;
        let via = c.ip(&format!("{key}.via"), &r.via)?;
        if cidr.overlaps(&gateway) {
            return Err(c.err(
                format!("{key}.cidr"),
                format!("{cidr} overlaps the pod subnet {gateway}"),
            ));
        }
        if cidr.overlaps(&up.address) {
            return Err(c.err(
                format!("{key}.cidr"),
                format!("{cidr} overlaps the uplink subnet {}", up.address),
            ));
        }
        if let Some((other, _)) = routes.iter().find(|(o, _)| o.overlaps(&cidr)) {
            return Err(c.err(
                format!("{key}.cidr"),
                format!("{cidr} overlaps route {other}"),
            ));
        }
        if !another_host_in(&up.address, via) {
            return Err(c.err(
                format!("{key}.via"),
                format!(
                    "{via} is not another host's address in the uplink subnet {}",
                    up.address
                ),
            ));
        }
        routes.push((cidr, via));
    }

    // Services.
    let mut services: Vec<ServiceConfig> = Vec::new();
    for (i, s) in file.service.iter().enumerate() {
        let key = format!("service[{i}]");
        let cluster_ip = c.ip(&format!("{key}.cluster_ip"), &s.cluster_ip)?;
        let proto = match s.protocol.as_str() {
            "tcp" => 6,
            "udp" => 17,
            other => {
                return Err(c.err(
                    format!("{key}.protocol"),
                    format!("{other:?} is not tcp or udp"),
                ))
            }
        };
        if s.port == 0 {
            return Err(c.err(format!("{key}.port"), "port 0 is not a service port"));
        }
        if gateway.contains(cluster_ip)
            || uplink
                .as_ref()
                .is_some_and(|u| u.address.contains(cluster_ip))
        {
            return Err(c.err(
                format!("{key}.cluster_ip"),
                format!("{cluster_ip} is inside the pod or uplink subnet"),
            ));
        }
        if let Some(dup) = services.iter().find(|o| o.name == s.name) {
            return Err(c.err(
                format!("{key}.name"),
                format!("duplicate service {:?}", dup.name),
            ));
        }
        if let Some(dup) = services
            .iter()
            .find(|o| o.cluster_ip == cluster_ip && o.port == s.port && o.proto == proto)
        {
            return Err(c.err(
                key,
                format!(
                    "{cluster_ip}:{} {} is already service {:?}",
                    s.port, s.protocol, dup.name
                ),
            ));
        }
        if let Some(np) = s.node_port {
            if uplink.is_none() {
                return Err(c.err(format!("{key}.node_port"), "a NodePort needs an [uplink]"));
            }
            if np == 0 {
                return Err(c.err(format!("{key}.node_port"), "port 0 is not a NodePort"));
            }
            if let Some(dup) = services
                .iter()
                .find(|o| o.node_port == Some(np) && o.proto == proto)
            {
                return Err(c.err(
                    format!("{key}.node_port"),
                    format!("{np} is already the NodePort of {:?}", dup.name),
                ));
            }
        }
        let mut backends = Vec::new();
        for (j, b) in s.backends.iter().enumerate() {
            let addr: SocketAddrV4 = b.parse().map_err(|_| {
                c.err(
                    format!("{key}.backends[{j}]"),
                    format!("{b:?} is not ADDRESS:PORT"),
                )
            })?;
            if addr.port() == 0 {
                return Err(c.err(format!("{key}.backends[{j}]"), format!("{b:?} has port 0")));
            }
            backends.push(addr);
        }
        if let Some(t) = s.session_affinity_timeout {
            if !(1..=MAX_AFFINITY_TIMEOUT_S).contains(&t) {
                return Err(c.err(
                    format!("{key}.session_affinity_timeout"),
                    format!("{t}: expected 1 to {MAX_AFFINITY_TIMEOUT_S} seconds"),
                ));
            }
        }
        let external_local = match s.external_traffic_policy.as_deref() {
            None | Some("cluster") => None,
            Some("local") if s.node_port.is_none() => {
                return Err(c.err(
                    format!("{key}.external_traffic_policy"),
                    "\"local\" needs a node_port",
                ))
            }
            // This node's endpoints are the ones in its pod subnet (or on the node itself).
            Some("local") => Some(
                backends
                    .iter()
                    .copied()
                    .filter(|b| {
                        gateway.contains(*b.ip())
                            || uplink.as_ref().is_some_and(|u| u.address.addr == *b.ip())
                    })
                    .collect(),
            ),
            Some(other) => {
                return Err(c.err(
                    format!("{key}.external_traffic_policy"),
                    format!("{other:?} is not cluster or local"),
                ))
            }
        };
        services.push(ServiceConfig {
            name: s.name.clone(),
            cluster_ip,
            port: s.port,
            proto,
            node_port: s.node_port,
            backends,
            affinity_timeout_s: s.session_affinity_timeout,
            external_local,
            node_port_backends: None,
        });
    }

    // Port security: `{ name, mac, ip }` entries.
    let mut bindings = Vec::new();
    for (i, entry) in file.pods.ports.iter().enumerate() {
        let PortEntry::Bound(b) = entry else {
            continue;
        };
        let key = format!("pods.ports[{i}]");
        let mac = c.unicast_mac(&format!("{key}.mac"), &b.mac)?;
        let ip = match &b.ip {
            Some(text) => {
                let ip = c.ip(&format!("{key}.ip"), text)?;
                if !is_pod_address(&gateway, ip) {
                    return Err(c.err(
                        format!("{key}.ip"),
                        format!("{ip} is not a pod address in {gateway}"),
                    ));
                }
                Some(ip)
            }
            None => None,
        };
        let binding = PortBinding { mac, ip };
        if let Some((what, _)) = bindings.iter().find_map(|(_, b)| binding.shared_with(b)) {
            return Err(c.err(
                format!("{key}.{what}"),
                "is bound to another port already".to_string(),
            ));
        }
        bindings.push((i as PortId, binding));
    }

    let vxlan = match &file.vxlan {
        Some(section) => Some(vxlan(&c, section, gateway, uplink.as_ref(), &routes)?),
        None => None,
    };

    let xdp_mode = match &file.node.xdp_mode {
        Some(m) => Some(
            m.parse::<XdpMode>()
                .map_err(|e| c.err("node.xdp_mode", e))?,
        ),
        None => None,
    };
    let fast_path = match file.node.fast_path.as_deref() {
        Some("xdp") => Some(true),
        Some("off") => Some(false),
        Some(other) => return Err(c.err("node.fast_path", format!("{other:?} is not xdp or off"))),
        None => None,
    };
    let poll = match &file.node.poll {
        Some(m) => Some(m.parse::<PollMode>().map_err(|e| c.err("node.poll", e))?),
        None => None,
    };
    if let Some(cores) = &file.node.cores {
        if cores.is_empty() {
            return Err(c.err(
                "node.cores",
                "is empty; leave it out for one unpinned worker",
            ));
        }
    }
    let fdb_age_s = file.node.fdb_age.unwrap_or(300);
    if !(1..=MAX_FDB_AGE_S).contains(&fdb_age_s) {
        return Err(c.err(
            "node.fdb_age",
            format!("{fdb_age_s} is not a number of seconds from 1 to {MAX_FDB_AGE_S}"),
        ));
    }
    let fdb_age_ms = fdb_age_s * 1000;
    let fdb_port_limit = file.node.fdb_port_limit.unwrap_or(DEFAULT_FDB_PORT_LIMIT);
    if fdb_port_limit == 0 {
        return Err(c.err("node.fdb_port_limit", "must be at least 1"));
    }
    let conntrack_capacity = file.node.conntrack_capacity.unwrap_or(262_144);
    if conntrack_capacity == 0 {
        return Err(c.err("node.conntrack_capacity", "must be at least 1"));
    }
    // Stable across restarts (pods cache it): locally administered, from the gateway address.
    let o = gateway.addr.octets();
    let mac = MacAddr([0x02, 0x76, o[0], o[1], o[2], o[3]]);
    Ok(NodeConfig {
        ports,
        cores: file.node.cores.clone(),
        xdp_mode,
        fast_path,
        poll,
        fdb_age_ms,
        fdb_port_limit,
        bindings,
        gateway: GatewayConfig {
            mac,
            pod_ports,
            gateway,
            uplink,
            routes,
            services,
            vxlan,
            conntrack_capacity,
            neighbor_age_ms: 300_000,
        },
    })
}

/// Whether `ip` may be a pod's address on the pod segment `pods` (whose own address, the
/// gateway's, may not: a pod bound to it could answer for the gateway).
pub fn is_pod_address(pods: &Ipv4Cidr, ip: Ipv4Addr) -> bool {
    pods.contains(ip) && ip != pods.addr
}

/// Whether `ip` can be a neighbour in `net` (whose own address is `net.addr`): inside it, not
/// ours, not its network or broadcast address (nothing would answer ARP for them).
fn another_host_in(net: &Ipv4Cidr, ip: Ipv4Addr) -> bool {
    let broadcast = net.network() | !net.mask();
    let special = net.len < 31 && (u32::from(ip) == net.network() || u32::from(ip) == broadcast);
    net.contains(ip) && ip != net.addr && !special
}

impl NodeConfig {
    /// What a reload may not change (ports, addresses, workers): `Err` names the first key.
    pub fn reload_compatible(&self, new: &NodeConfig) -> Result<(), String> {
        let (a, b) = (&self.gateway, &new.gateway);
        if self.ports != new.ports {
            return Err("pods.ports / uplink.port changed".into());
        }
        if a.gateway != b.gateway {
            return Err("pods.gateway changed".into());
        }
        if a.uplink.as_ref().map(|u| (u.address, u.port))
            != b.uplink.as_ref().map(|u| (u.address, u.port))
        {
            return Err("uplink.address changed".into());
        }
        if self.cores != new.cores
            || self.xdp_mode != new.xdp_mode
            || self.fast_path != new.fast_path
            || self.poll != new.poll
        {
            return Err("[node] changed".into());
        }
        if self.bindings != new.bindings {
            return Err("pods.ports bindings changed".into());
        }
        if self.fdb_port_limit != new.fdb_port_limit {
            return Err("node.fdb_port_limit changed".into());
        }
        if self.fdb_age_ms != new.fdb_age_ms {
            return Err("node.fdb_age changed".into());
        }
        if a.conntrack_capacity != b.conntrack_capacity {
            return Err("node.conntrack_capacity changed".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/node.toml");

    fn parse_ok(text: &str) -> NodeConfig {
        parse(Path::new("node.toml"), text, &|_| true).unwrap()
    }

    fn parse_err(text: &str) -> String {
        parse(Path::new("node.toml"), text, &|p| p != "missing0")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn pods_may_come_later() {
        for pods in ["ports = []\n", ""] {
            let c = parse_ok(&format!("[pods]\n{pods}gateway = \"10.244.1.1/24\"\n"));
            assert!(c.ports.is_empty() && c.gateway.pod_ports.is_empty());
        }
    }

    #[test]
    fn the_example_parses() {
        let c = parse_ok(EXAMPLE);
        assert_eq!(c.ports, ["vp1", "vp2", "vp3", "vup"]);
        assert_eq!(c.gateway.pod_ports, [0, 1, 2]);
        assert_eq!(c.gateway.uplink.as_ref().unwrap().port, 3);
        assert_eq!(c.gateway.services.len(), 1);
        assert_eq!(c.gateway.services[0].backends.len(), 3);
        assert_eq!(c.gateway.routes.len(), 1);
        assert_eq!(c.cores, Some(vec![1]));
        assert_eq!(c.fdb_port_limit, 1024);
        let c = parse_ok(&EXAMPLE.replace("# fdb_port_limit = 1024", "fdb_port_limit = 16"));
        assert_eq!(c.fdb_port_limit, 16);
        // 255 pods and the uplink: exactly the 256 ports a switch supports.
        let pods = (0..255)
            .map(|i| format!("\"p{i}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let c = parse_ok(&EXAMPLE.replace(
            "ports = [\"vp1\", \"vp2\", \"vp3\"]",
            &format!("ports = [{pods}]"),
        ));
        assert_eq!(c.ports.len(), 256);
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_reason() {
        let cases = [
            (EXAMPLE.replace("[pods]", "[pods]\ncolour = \"blue\""), "unknown field `colour`"),
            (EXAMPLE.replace("10.244.1.1/24", "10.244.1.300/24"), "node.toml: pods.gateway: \"10.244.1.300\""),
            (EXAMPLE.replace("\"vp2\"", "\"missing0\""), "node.toml: pods.ports: port \"missing0\" does not exist"),
            (EXAMPLE.replace("\"vp2\"", "\"vp1\""), "pods.ports: port \"vp1\" is listed twice"),
            (EXAMPLE.replace("cidr = \"10.244.2.0/24\"", "cidr = \"10.244.1.0/25\""), "route[0].cidr: 10.244.1.0/25 overlaps the pod subnet"),
            (EXAMPLE.replace("address = \"198.18.0.1/24\"", "address = \"10.244.0.1/16\""), "uplink.address: 10.244.0.1/16 overlaps"),
            (EXAMPLE.replace("next_hop = \"198.18.0.254\"", "next_hop = \"198.19.0.254\""), "uplink.next_hop"),
            (EXAMPLE.replace("next_hop = \"198.18.0.254\"", "next_hop = \"198.18.0.255\""), "uplink.next_hop: 198.18.0.255 is not another address"),
            (EXAMPLE.replace("via = \"198.18.0.2\"", "via = \"198.18.0.1\""), "route[0].via: 198.18.0.1 is not another host's address"),
            (EXAMPLE.replace("via = \"198.18.0.2\"", "via = \"198.18.0.0\""), "route[0].via: 198.18.0.0 is not another host's address"),
            (EXAMPLE.replace("protocol = \"tcp\"", "protocol = \"sctp\""), "service[0].protocol: \"sctp\""),
            (EXAMPLE.replace("\"10.244.2.5:8080\"", "\"10.244.2.5\""), "service[0].backends[2]: \"10.244.2.5\""),
            (format!("{EXAMPLE}\n[[service]]\nname = \"web\"\ncluster_ip = \"10.96.0.11\"\nport = 80\n"), "service[1].name: duplicate service \"web\""),
            (format!("{EXAMPLE}\n[[service]]\nname = \"web2\"\ncluster_ip = \"10.96.0.10\"\nport = 80\n"), "service[1]: 10.96.0.10:80 tcp is already service \"web\""),
            (EXAMPLE.replace("protocol = \"tcp\"", "protocol = \"tcp\"\nsession_affinity_timeout = 0"), "service[0].session_affinity_timeout: 0: expected 1 to 86400 seconds"),
            (EXAMPLE.replace("protocol = \"tcp\"", "protocol = \"tcp\"\nexternal_traffic_policy = \"nearby\""), "service[0].external_traffic_policy: \"nearby\" is not cluster or local"),
            (format!("{EXAMPLE}\n[[service]]\nname = \"np\"\ncluster_ip = \"10.96.0.12\"\nport = 80\nexternal_traffic_policy = \"local\"\n"), "service[1].external_traffic_policy: \"local\" needs a node_port"),
            (EXAMPLE.replace("xdp_mode = \"auto\"", "xdp_mode = \"fast\""), "node.xdp_mode"),
            (EXAMPLE.replace("xdp_mode = \"auto\"", "fast_path = \"ebpf\""), "node.fast_path: \"ebpf\" is not xdp or off"),
            (EXAMPLE.replace("# fdb_port_limit = 1024", "fdb_port_limit = 0"), "node.toml: node.fdb_port_limit: must be at least 1"),
            (EXAMPLE.replace("# fdb_port_limit = 1024", "fdb_port_limit = -1"), "node.toml: line"),
            (EXAMPLE.replace("# fdb_port_limit = 1024", "fdb_port_limit = \"lots\""), "node.toml: line"),
            (EXAMPLE.replace("ports = [\"vp1\", \"vp2\", \"vp3\"]", &format!("ports = [{}]", (0..256).map(|i| format!("\"p{i}\"")).collect::<Vec<_>>().join(", "))), "node.toml: pods.ports / uplink.port: 257 ports, more than the 256 one switch supports"),
            ("not toml at all [".to_string(), "node.toml: line 1"),
        ];
        for (text, needle) in cases {
            let err = parse_err(&text);
            assert!(err.contains(needle), "expected {needle:?} in {err:?}");
        }
    }

    #[test]
    fn the_overlay_section_parses_with_its_defaults() {
        let c = parse_ok(EXAMPLE);
        let v = c.gateway.vxlan.as_ref().unwrap();
        assert_eq!(
            (v.vni, v.udp_port, v.local),
            (1, 4789, Ipv4Addr::new(198, 18, 0, 1))
        );
        assert_eq!(v.mac, "0e:00:00:00:00:01".parse().unwrap());
        assert_eq!(v.peers.len(), 1);
        assert_eq!(v.peers[0].vtep, Ipv4Addr::new(198, 18, 0, 3));
        let c = parse_ok(&EXAMPLE.replace("mac = \"0e:00:00:00:00:01\"", ""));
        let v = c.gateway.vxlan.unwrap();
        assert_eq!(
            v.mac,
            MacAddr([0x0e, 0x76, 198, 18, 0, 1]),
            "derived from the VTEP address"
        );
        let without = EXAMPLE.split("[vxlan]").next().unwrap();
        assert!(parse_ok(without).gateway.vxlan.is_none());
    }

    #[test]
    fn overlay_errors_name_the_key() {
        let peer = |cidr: &str, vtep: &str, mac: &str| {
            format!("{EXAMPLE}\n[[vxlan.peer]]\ncidr = \"{cidr}\"\nvtep = \"{vtep}\"\nmac = \"{mac}\"\n")
        };
        let cases = [
            (
                EXAMPLE.replace("vni = 1 ", "vni = 0 "),
                "node.toml: vxlan.vni: 0 is outside 1..16777215".to_string(),
            ),
            (
                EXAMPLE.replace("vni = 1 ", "vni = 16777216 "),
                "vxlan.vni: 16777216".into(),
            ),
            (
                EXAMPLE.replace("# udp_port = 4789", "udp_port = 0"),
                "vxlan.udp_port".into(),
            ),
            (
                EXAMPLE.replace("# local = \"198.18.0.1\"", "local = \"10.244.1.9\""),
                "vxlan.local: 10.244.1.9 is inside the pod subnet".into(),
            ),
            (
                EXAMPLE.replace("mac = \"0e:00:00:00:00:01\"", "mac = \"01:00:00:00:00:01\""),
                "vxlan.mac: 01:00:00:00:00:01 is not a unicast address".into(),
            ),
            (
                EXAMPLE.replace("cidr = \"10.244.3.0/24\"", "cidr = \"10.244.1.0/24\""),
                "vxlan.peer[0].cidr: 10.244.1.0/24 overlaps the pod subnet".into(),
            ),
            (
                EXAMPLE.replace("cidr = \"10.244.3.0/24\"", "cidr = \"10.244.2.128/25\""),
                "vxlan.peer[0].cidr: 10.244.2.128/25 overlaps route 10.244.2.0/24".into(),
            ),
            (
                EXAMPLE.replace("cidr = \"10.244.3.0/24\"", "cidr = \"198.18.0.0/16\""),
                "vxlan.peer[0].cidr: 198.18.0.0/16 overlaps the uplink subnet".into(),
            ),
            (
                peer("10.244.3.128/25", "198.18.0.4", "0e:00:00:00:00:04"),
                "vxlan.peer[1].cidr: 10.244.3.128/25 overlaps the CIDR of peer 198.18.0.3".into(),
            ),
            (
                peer("10.244.4.0/24", "198.18.0.1", "0e:00:00:00:00:04"),
                "vxlan.peer[1].vtep: 198.18.0.1 is our own address".into(),
            ),
            (
                peer("10.244.4.0/24", "10.244.3.9", "0e:00:00:00:00:04"),
                "vxlan.peer[1].vtep: 10.244.3.9 is inside a pod CIDR".into(),
            ),
            (
                peer("10.244.4.0/24", "198.18.0.3", "0e:00:00:00:00:04"),
                "vxlan.peer[1].mac: peer 198.18.0.3 already has MAC".into(),
            ),
            (
                peer("10.244.4.0/24", "198.18.0.4", "0e:00:00:00:00:01"),
                "vxlan.peer[1].mac: 0e:00:00:00:00:01 is our own VTEP MAC".into(),
            ),
            (
                peer("10.244.4.0/24", "nowhere", "0e:00:00:00:00:04"),
                "vxlan.peer[1].vtep: \"nowhere\" is not an IPv4 address".into(),
            ),
            (
                EXAMPLE.replace("[vxlan]", "[vxlan]\nflood = true"),
                "unknown field `flood`".into(),
            ),
            (
                {
                    let no_uplink = EXAMPLE.split("[uplink]").next().unwrap().to_string();
                    let overlay = EXAMPLE.split("[vxlan]").nth(1).unwrap();
                    format!("{no_uplink}[vxlan]{overlay}")
                },
                "node.toml: vxlan: the overlay runs over the uplink, and there is no [uplink]"
                    .into(),
            ),
        ];
        for (text, needle) in cases {
            let err = parse_err(&text);
            assert!(err.contains(&needle), "expected {needle:?} in {err:?}");
        }
    }

    #[test]
    fn pod_ports_may_be_bound_to_their_addresses() {
        let c = parse_ok(&EXAMPLE.replace(
            "\"vp2\"",
            "{ name = \"vp2\", mac = \"02:00:00:00:01:03\", ip = \"10.244.1.3\" }",
        ));
        assert_eq!(c.ports, ["vp1", "vp2", "vp3", "vup"]);
        assert_eq!(
            c.bindings,
            [(
                1,
                PortBinding {
                    mac: "02:00:00:00:01:03".parse().unwrap(),
                    ip: Some(Ipv4Addr::new(10, 244, 1, 3))
                }
            )]
        );
        let mac_only = parse_ok(
            &EXAMPLE.replace("\"vp2\"", "{ name = \"vp2\", mac = \"02:00:00:00:01:03\" }"),
        );
        assert_eq!(mac_only.bindings[0].1.ip, None);
        for (entry, needle) in [
            (
                "{ name = \"vp2\", mac = \"ff:ff:ff:ff:ff:ff\" }",
                "pods.ports[1].mac",
            ),
            (
                "{ name = \"vp2\", mac = \"02:00:00:00:01:03\", ip = \"10.244.9.3\" }",
                "pods.ports[1].ip: 10.244.9.3 is not a pod address",
            ),
            (
                "{ name = \"vp2\", mac = \"02:00:00:00:01:03\", ip = \"10.244.1.1\" }",
                "pods.ports[1].ip: 10.244.1.1 is not a pod address",
            ),
            ("{ name = \"vp2\", ip = \"10.244.1.3\" }", "node.toml: line"),
        ] {
            let err = parse_err(&EXAMPLE.replace("\"vp2\"", entry));
            assert!(err.contains(needle), "expected {needle:?} in {err:?}");
        }
        // Two ports bound to one MAC or one address: both could send as it.
        let bound = |vp: &str, mac: &str, ip: &str| {
            format!("{{ name = \"{vp}\", mac = \"{mac}\", ip = \"{ip}\" }}")
        };
        for (second, needle) in [
            (
                bound("vp3", "02:00:00:00:01:03", "10.244.1.4"),
                "pods.ports[2].mac: is bound to another port already",
            ),
            (
                bound("vp3", "02:00:00:00:01:04", "10.244.1.3"),
                "pods.ports[2].ip: is bound to another port already",
            ),
        ] {
            let text = EXAMPLE
                .replace("\"vp2\"", &bound("vp2", "02:00:00:00:01:03", "10.244.1.3"))
                .replace("\"vp3\"", &second);
            let err = parse_err(&text);
            assert!(err.contains(needle), "expected {needle:?} in {err:?}");
        }
        let a = parse_ok(EXAMPLE);
        assert!(a
            .reload_compatible(&mac_only)
            .unwrap_err()
            .contains("bindings"));
    }

    #[test]
    fn the_deploy_script_renders_a_config_this_parser_takes() {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/render-node-config.sh");
        // The script with only `env` set of what it reads (besides the pod CIDR and where to write).
        let render = |env: &[(&str, &str)]| {
            let mut cmd = std::process::Command::new("sh");
            cmd.arg(&script)
                .env("POD_CIDR", "10.244.3.0/24")
                .env("OUT_DIR", dir.path())
                .env("CNI_DIR", dir.path());
            for name in ["NODE_IP", "NEXT_HOP", "UPLINK", "FAST_PATH"] {
                cmd.env_remove(name);
            }
            cmd.envs(env.iter().copied()).output().unwrap()
        };
        let node = [("NODE_IP", "198.18.0.3/24"), ("NEXT_HOP", "198.18.0.254")];
        let out = render(&[node[0], node[1], ("UPLINK", "ens5")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(dir.path().join("node.toml")).unwrap();
        let c = parse_ok(&text);
        assert_eq!(c.gateway.gateway.to_string(), "10.244.3.1/24");
        assert_eq!(c.ports, ["ens5"]);
        assert_eq!(c.fast_path, Some(true), "pods from vswitch-cni have GRO");
        let up = c.gateway.uplink.unwrap();
        assert_eq!(up.next_hop.to_string(), "198.18.0.254");
        assert_eq!(up.cluster_cidrs.len(), 2);
        let conflist: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("10-vswitch.conflist")).unwrap(),
        )
        .unwrap();
        assert_eq!(conflist["plugins"][0]["type"], "vswitch-cni");
        assert_eq!(
            conflist["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.3.0/24"
        );
        // Without what it needs it says so.
        let out = render(&[("UPLINK", "vsw-none0")]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("NODE_IP"));
        // The node's address, unless given, is its uplink interface's (read only).
        let out = render(&[node[1], ("UPLINK", "lo")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(dir.path().join("node.toml")).unwrap();
        assert!(text.contains("address = \"127.0.0.1/8\""), "{text}");
        let out = render(&[node[0], node[1], ("FAST_PATH", "ebpf")]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("FAST_PATH ebpf"));
    }

    #[test]
    fn affinity_and_etp_local_from_the_file() {
        let c = parse_ok(&EXAMPLE.replace(
            "protocol = \"tcp\"",
            "protocol = \"tcp\"\nsession_affinity_timeout = 600\nexternal_traffic_policy = \"local\"",
        ));
        let s = &c.gateway.services[0];
        assert_eq!(s.affinity_timeout_s, Some(600));
        // Only the backends in this node's pod subnet.
        let local = s.external_local.as_ref().unwrap();
        assert!(!local.is_empty() && local.len() < s.backends.len());
        assert!(local.iter().all(|b| b.ip().octets()[..3] == [10, 244, 1]));
        let plain = parse_ok(EXAMPLE);
        assert_eq!(plain.gateway.services[0].affinity_timeout_s, None);
        assert_eq!(plain.gateway.services[0].external_local, None);
    }

    #[test]
    fn reload_may_change_the_peers() {
        let a = parse_ok(EXAMPLE);
        let more = parse_ok(&format!(
            "{EXAMPLE}\n[[vxlan.peer]]\ncidr = \"10.244.4.0/24\"\nvtep = \"198.18.0.4\"\nmac = \"0e:00:00:00:00:04\"\n"
        ));
        assert!(a.reload_compatible(&more).is_ok());
        assert_eq!(more.gateway.vxlan.unwrap().peers.len(), 2);
    }

    #[test]
    fn reload_refuses_changed_ports_and_addresses() {
        let a = parse_ok(EXAMPLE);
        let fewer_backends = parse_ok(&EXAMPLE.replace(", \"10.244.2.5:8080\"", ""));
        assert!(a.reload_compatible(&fewer_backends).is_ok());
        let other_ports = parse_ok(&EXAMPLE.replace("\"vp3\"", "\"vp4\""));
        assert!(a
            .reload_compatible(&other_ports)
            .unwrap_err()
            .contains("ports"));
        let other_age = parse_ok(&EXAMPLE.replace("[node]\n", "[node]\nfdb_age = 60\n"));
        assert_eq!(other_age.fdb_age_ms, 60_000);
        assert!(a
            .reload_compatible(&other_age)
            .unwrap_err()
            .contains("fdb_age"));
    }

    #[test]
    fn an_fdb_age_out_of_range_is_refused() {
        for age in ["0", "86401", "18446744073709552"] {
            let err =
                parse_err(&EXAMPLE.replace("[node]\n", &format!("[node]\nfdb_age = {age}\n")));
            assert!(err.contains("node.fdb_age"), "{age}: {err}");
        }
    }
}
