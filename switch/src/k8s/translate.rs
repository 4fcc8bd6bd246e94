//! Services and EndpointSlices → the gateway's services, as kube-proxy programs them:
//!
//! - one service per Service port and protocol (TCP, UDP; SCTP is skipped), at the Service's
//!   IPv4 cluster IP, with its NodePort when it has one;
//! - its backends: the endpoints of every EndpointSlice labelled with the Service's name (same
//!   namespace, `addressType: IPv4`), at the slice port whose name and protocol match the
//!   Service port's; an endpoint's first address is used;
//! - endpoints that are ready; only when none is, those serving and terminating (kube-proxy's
//!   fallback, so a rolling update does not black-hole a service);
//! - `internalTrafficPolicy: Local`: the cluster IP reaches only this node's endpoints;
//!   `externalTrafficPolicy: Local`: the NodePort reaches only this node's endpoints (same
//!   fallback, chosen among them) and keeps the client's address;
//! - `sessionAffinity: ClientIP`, with `sessionAffinityConfig.clientIP.timeoutSeconds` (10800
//!   by default).
//!
//! This node's endpoints are those whose address is in the node's pod subnet, or is the node
//! address (host-network pods): exactly the ones the switch delivers here. `nodeName` is not
//! consulted, so the rule needs no node name and cannot disagree with where packets go.
//!
//! Headless (`clusterIP: None`) and ExternalName Services, IPv6-only Services, IPv6 and FQDN
//! slices are not proxied (kube-proxy does not either, or this switch has no IPv6): they are
//! listed as skipped. Malformed input is an error that names the item and the field.

use super::model::{Endpoint, Item, List, ServiceSpec};
use crate::config::MAX_AFFINITY_TIMEOUT_S;
use pipeline::gateway::ServiceConfig;
use pipeline::l3::Ipv4Cidr;
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};

/// kube-proxy's default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// A Service carrying it (any value) is another proxy's: kube-proxy leaves it alone too.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// What the translation needs to know about this node.
#[derive(Debug, Clone, Copy)]
pub struct Node {
    pub pod_cidr: Ipv4Cidr,
    /// The node address (with the uplink subnet), if the switch has an uplink.
    pub uplink: Option<Ipv4Cidr>,
}

impl Node {
    fn is_local(&self, ip: Ipv4Addr) -> bool {
        self.pod_cidr.contains(ip) || self.uplink.is_some_and(|u| u.addr == ip)
    }
}

#[derive(Debug, Default)]
pub struct Translated {
    pub services: Vec<ServiceConfig>,
    /// Services or ports not proxied, and why.
    pub skipped: Vec<String>,
    pub endpoints: usize,
    /// Every endpoint of a proxied port, whatever its conditions: one that is not a backend
    /// (terminating, not ready) still serves the connections it has.
    pub listed: std::collections::HashSet<SocketAddrV4>,
    /// Services left out (`Invalid::Skip`) as `namespace/name`: the running ones stay.
    pub left_out: Vec<String>,
}

fn proto_number(p: Option<&str>) -> Result<Option<u8>, String> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(Some(6)),
        "UDP" => Ok(Some(17)),
        "SCTP" => Ok(None),
        other => Err(format!("protocol {other:?} is not TCP, UDP or SCTP")),
    }
}

fn port_number(v: i64, what: &str) -> Result<u16, String> {
    match u16::try_from(v) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("{what} {v} is not a port (1-65535)")),
    }
}

/// One endpoint's address and what its conditions allow.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    addr: SocketAddrV4,
    ready: bool,
    serving_terminating: bool,
}

/// The endpoints kube-proxy would use from `candidates`: the ready ones, else the serving and
/// terminating ones.
fn usable(candidates: &[Candidate], keep: impl Fn(&Candidate) -> bool) -> Vec<SocketAddrV4> {
    let ready: Vec<SocketAddrV4> = candidates
        .iter()
        .filter(|c| c.ready && keep(c))
        .map(|c| c.addr)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    candidates
        .iter()
        .filter(|c| c.serving_terminating && keep(c))
        .map(|c| c.addr)
        .collect()
}

/// An EndpointSlice, checked: its endpoints' first addresses and conditions, its ports.
struct Slice<'a> {
    endpoints: Vec<(Ipv4Addr, &'a Endpoint)>,
    /// (name, protocol number, port).
    ports: Vec<(&'a str, u8, u16)>,
}

fn slice<'a>(item: &'a Item, at: &str) -> Result<Option<Slice<'a>>, String> {
    match item.address_type.as_deref() {
        Some("IPv4") => {}
        Some("IPv6") | Some("FQDN") => return Ok(None),
        Some(other) => {
            return Err(format!(
                "{at}: addressType {other:?} is not IPv4, IPv6 or FQDN"
            ))
        }
        None => return Err(format!("{at}: addressType is missing")),
    }
    let mut endpoints = Vec::new();
    for (i, e) in item.endpoints.iter().flatten().enumerate() {
        let Some(first) = e.addresses.first() else {
            return Err(format!("{at}: endpoints[{i}].addresses is empty"));
        };
        let ip: Ipv4Addr = first.parse().map_err(|_| {
            format!("{at}: endpoints[{i}].addresses[0]: {first:?} is not an IPv4 address")
        })?;
        endpoints.push((ip, e));
    }
    let mut ports = Vec::new();
    for (i, p) in item.ports.iter().flatten().enumerate() {
        let Some(proto) =
            proto_number(p.protocol.as_deref()).map_err(|e| format!("{at}: ports[{i}]: {e}"))?
        else {
            continue;
        };
        // A slice port without a number means "all ports": nothing a DNAT can use.
        let Some(number) = p.port else { continue };
        let number = port_number(number, "port").map_err(|e| format!("{at}: ports[{i}]: {e}"))?;
        ports.push((p.name.as_deref().unwrap_or(""), proto, number));
    }
    Ok(Some(Slice { endpoints, ports }))
}

fn describe(item: &Item, i: usize) -> String {
    format!(
        "items[{i}] ({} {}/{})",
        item.kind.as_deref().unwrap_or("?"),
        item.metadata.namespace,
        item.metadata.name
    )
}

/// The IPv4 cluster IP of a Service; `Ok(None)` for headless and IPv6-only Services.
fn cluster_ip(spec: &ServiceSpec, at: &str) -> Result<Option<Ipv4Addr>, String> {
    let all: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        (_, Some(ip)) => vec![ip.as_str()],
        _ => vec![],
    };
    for ip in all {
        if ip == "None" || ip.is_empty() {
            return Ok(None);
        }
        if let Ok(v4) = ip.parse::<Ipv4Addr>() {
            return Ok(Some(v4));
        }
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{at}: spec.clusterIP {ip:?} is not an IP address"));
        }
    }
    Ok(None)
}

fn affinity(spec: &ServiceSpec, at: &str) -> Result<Option<u32>, String> {
    match spec.session_affinity.as_deref() {
        None | Some("None") => Ok(None),
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Ok(Some(DEFAULT_AFFINITY_TIMEOUT_S)),
                Some(t) if (1..=MAX_AFFINITY_TIMEOUT_S as i64).contains(&t) => Ok(Some(t as u32)),
                Some(t) => Err(format!(
                    "{at}: spec.sessionAffinityConfig.clientIP.timeoutSeconds {t}: expected 1 to {MAX_AFFINITY_TIMEOUT_S}"
                )),
            }
        }
        Some(other) => Err(format!(
            "{at}: spec.sessionAffinity {other:?} is not None or ClientIP"
        )),
    }
}

/// `Local` → true; `Cluster` or unset → false.
fn local_policy(value: Option<&str>, at: &str, field: &str) -> Result<bool, String> {
    match value {
        None | Some("Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(other) => Err(format!(
            "{at}: spec.{field} {other:?} is not Cluster or Local"
        )),
    }
}

/// How `translate` takes an item it cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// The whole list is refused, naming the item (`vswitch ctl import`: the operator's file).
    Refuse,
    /// The item is left out and listed in `skipped` with the reason; the rest is imported
    /// (the agent: one bad object of the cluster must not stop every update).
    Skip,
}

/// Translates a list; `node` says which endpoints are this node's.
pub fn translate(list: &List, node: &Node, invalid: Invalid) -> Result<Translated, String> {
    let mut out = Translated::default();
    // An item's error: the list's, or a line of `skipped`.
    let bad = |out: &mut Translated, e: String| match invalid {
        Invalid::Refuse => Err(e),
        Invalid::Skip => {
            out.skipped.push(format!("{e} (left out)"));
            Ok(())
        }
    };
    if let Some(kind) = list.kind.as_deref() {
        if !matches!(kind, "List" | "ServiceList" | "EndpointSliceList") {
            return Err(format!(
                "kind {kind:?} is not a List of Services and EndpointSlices"
            ));
        }
    }
    // Slices by (namespace, service name).
    let mut slices: HashMap<(&str, &str), Vec<Slice>> = HashMap::new();
    // Services with a slice that could not be read (Skip).
    let mut unread_slices: std::collections::HashSet<(&str, &str)> = Default::default();
    let mut services: Vec<(usize, &Item)> = Vec::new();
    for (i, item) in list.items.iter().enumerate() {
        match item.kind.as_deref() {
            Some("Service") => services.push((i, item)),
            Some("EndpointSlice") => {
                let at = describe(item, i);
                let Some(owner) = item
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                else {
                    continue;
                };
                match slice(item, &at) {
                    Ok(Some(s)) => slices
                        .entry((item.metadata.namespace.as_str(), owner.as_str()))
                        .or_default()
                        .push(s),
                    Ok(None) => {}
                    Err(e) => {
                        bad(&mut out, e)?;
                        // Its Service, short of these endpoints, would close their
                        // connections: it is left out too (the running one stays).
                        unread_slices.insert((item.metadata.namespace.as_str(), owner.as_str()));
                    }
                }
            }
            Some(other) => bad(
                &mut out,
                format!("items[{i}]: kind {other:?} is neither Service nor EndpointSlice"),
            )?,
            None => bad(&mut out, format!("items[{i}]: kind is missing"))?,
        }
    }
    // Service fronts taken so far: (ip, port, proto) and (node port, proto).
    let mut fronts = Fronts::default();
    for (i, item) in services {
        let key = (
            item.metadata.namespace.as_str(),
            item.metadata.name.as_str(),
        );
        let ns_name = format!("{}/{}", key.0, key.1);
        if unread_slices.contains(&key) {
            out.left_out.push(ns_name);
            continue;
        }
        let own_slices = slices.get(&key).map(Vec::as_slice).unwrap_or_default();
        // Read on its own and taken in whole: a Service goes whole or not at all.
        let mut read = Translated::default();
        let result = service(item, i, own_slices, node, &fronts, &mut read);
        // Its endpoints keep their connections either way (a left-out Service keeps running).
        out.listed.extend(read.listed);
        match result {
            Ok(()) => {
                fronts.take(&read.services);
                out.services.extend(read.services);
                out.skipped.extend(read.skipped);
                out.endpoints += read.endpoints;
            }
            Err(e) => {
                bad(&mut out, e)?;
                out.left_out.push(ns_name);
            }
        }
    }
    out.services
        .sort_by(|a, b| a.name.cmp(&b.name).then(a.proto.cmp(&b.proto)));
    Ok(out)
}

/// The service fronts taken, by service name: (cluster IP, port, protocol) and (NodePort,
/// protocol).
#[derive(Default)]
struct Fronts {
    vips: HashMap<(Ipv4Addr, u16, u8), String>,
    node_ports: HashMap<(u16, u8), String>,
}

impl Fronts {
    /// Refuses `s` if another Service, or a port of its own read before (`own`), has one of
    /// its fronts.
    fn check(&self, s: &ServiceConfig, own: &[ServiceConfig], pat: &str) -> Result<(), String> {
        let vip = (s.cluster_ip, s.port, s.proto);
        let holder = self.vips.get(&vip).cloned().or_else(|| {
            own.iter()
                .find(|o| (o.cluster_ip, o.port, o.proto) == vip)
                .map(|o| o.name.clone())
        });
        if let Some(other) = holder {
            return Err(format!(
                "{pat}: {}:{} is already service {other:?}",
                s.cluster_ip, s.port
            ));
        }
        let Some(np) = s.node_port else {
            return Ok(());
        };
        let holder = self.node_ports.get(&(np, s.proto)).cloned().or_else(|| {
            own.iter()
                .find(|o| (o.node_port, o.proto) == (Some(np), s.proto))
                .map(|o| o.name.clone())
        });
        match holder {
            Some(other) => Err(format!("{pat}: nodePort {np} is already service {other:?}")),
            None => Ok(()),
        }
    }

    /// The fronts of a Service read whole.
    fn take(&mut self, services: &[ServiceConfig]) {
        for s in services {
            self.vips
                .insert((s.cluster_ip, s.port, s.proto), s.name.clone());
            if let Some(np) = s.node_port {
                self.node_ports.insert((np, s.proto), s.name.clone());
            }
        }
    }
}

/// One Service's ports into `out`, its fronts checked against those `fronts` has.
fn service(
    item: &Item,
    i: usize,
    own_slices: &[Slice],
    node: &Node,
    fronts: &Fronts,
    out: &mut Translated,
) -> Result<(), String> {
    let at = describe(item, i);
    let ns_name = format!("{}/{}", item.metadata.namespace, item.metadata.name);
    if item.metadata.name.is_empty() {
        return Err(format!("{at}: metadata.name is missing"));
    }
    let Some(spec) = &item.spec else {
        return Err(format!("{at}: spec is missing"));
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        out.skipped.push(format!("{ns_name}: ExternalName"));
        return Ok(());
    }
    if let Some(proxy) =
        (item.metadata.labels.as_ref()).and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL))
    {
        out.skipped.push(format!(
            "{ns_name}: another proxy's ({SERVICE_PROXY_NAME_LABEL}={proxy})"
        ));
        return Ok(());
    }
    let Some(vip) = cluster_ip(spec, &at)? else {
        out.skipped
            .push(format!("{ns_name}: headless or IPv6-only"));
        return Ok(());
    };
    // As the config file refuses: it would take the traffic of a pod or of the node's subnet.
    if node.pod_cidr.contains(vip) || node.uplink.is_some_and(|u| u.contains(vip)) {
        return Err(format!(
            "{at}: spec.clusterIP {vip} is inside the pod or uplink subnet"
        ));
    }
    let affinity = affinity(spec, &at)?;
    let etp_local = local_policy(
        spec.external_traffic_policy.as_deref(),
        &at,
        "externalTrafficPolicy",
    )?;
    let itp_local = local_policy(
        spec.internal_traffic_policy.as_deref(),
        &at,
        "internalTrafficPolicy",
    )?;
    for (j, port) in spec.ports.iter().flatten().enumerate() {
        let pat = format!("{at}: spec.ports[{j}]");
        let Some(proto) =
            proto_number(port.protocol.as_deref()).map_err(|e| format!("{pat}: {e}"))?
        else {
            out.skipped
                .push(format!("{ns_name}: port {} SCTP", port.port));
            continue;
        };
        let number = port_number(port.port, "port").map_err(|e| format!("{pat}: {e}"))?;
        let node_port = match port.node_port {
            None | Some(0) => None,
            Some(np) => Some(port_number(np, "nodePort").map_err(|e| format!("{pat}: {e}"))?),
        };
        let port_name = port.name.as_deref().unwrap_or("");
        let name = if port_name.is_empty() {
            format!("{ns_name}:{number}")
        } else {
            format!("{ns_name}:{port_name}")
        };
        // Every endpoint of every slice at the matching port, once (a slice being
        // replaced may repeat another's; any ready copy makes it ready).
        let mut found: BTreeMap<SocketAddrV4, Candidate> = BTreeMap::new();
        for s in own_slices {
            let Some(&(_, _, target)) = s
                .ports
                .iter()
                .find(|(n, p, _)| *n == port_name && *p == proto)
            else {
                continue;
            };
            for (ip, e) in &s.endpoints {
                let c = e.conditions.as_ref();
                let addr = SocketAddrV4::new(*ip, target);
                let ready = c.is_none_or(|c| c.ready());
                let st = c.is_some_and(|c| c.serving() && c.terminating());
                let entry = found.entry(addr).or_insert(Candidate {
                    addr,
                    ready: false,
                    serving_terminating: false,
                });
                entry.ready |= ready;
                entry.serving_terminating |= st;
            }
        }
        let candidates: Vec<Candidate> = found.into_values().collect();
        out.endpoints += candidates.len();
        out.listed.extend(candidates.iter().map(|c| c.addr));
        let local = |c: &Candidate| node.is_local(*c.addr.ip());
        let backends = if itp_local {
            usable(&candidates, local)
        } else {
            usable(&candidates, |_| true)
        };
        let external_local = (etp_local && node_port.is_some()).then(|| usable(&candidates, local));
        // ITP applies to the cluster IP only: the NodePort reaches all with ETP Cluster, and
        // with ETP Local this node's pods reach all through it (kube-proxy's short-circuit).
        let node_port_backends =
            (itp_local && node_port.is_some()).then(|| usable(&candidates, |_| true));
        let config = ServiceConfig {
            name,
            cluster_ip: vip,
            port: number,
            proto,
            node_port,
            backends,
            affinity_timeout_s: affinity,
            external_local,
            node_port_backends,
        };
        fronts.check(&config, &out.services, &pat)?;
        out.services.push(config);
    }
    Ok(())
}
