//! ADD, DEL, CHECK, STATUS, GC and VERSION.

use crate::config::{Env, NetConf, SUPPORTED_VERSIONS};
use crate::error::{code, CniError, Result};
use crate::ipam;
use crate::netlink::{format_mac, open_netns, random_mac, Link, Netlink};
use crate::result::{CniResult, Interface, IpConfig, Ipv4Net, Route};
use crate::switch::{self, SwitchError};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Host-side veth names: this prefix and 12 hex digits of a hash of the container id and the
/// pod's interface name, so DEL finds the veth from what it is given alone (15 characters,
/// Linux's limit).
pub const HOST_PREFIX: &str = "vsw";

pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let h = fnv1a(container_id.bytes().chain([0]).chain(ifname.bytes()));
    format!("{HOST_PREFIX}{:012x}", h >> 16)
}

/// FNV-1a: stable across releases and platforms, unlike std's hasher.
fn fnv1a(bytes: impl Iterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The alias a host-side veth gets: the network it belongs to, so that GC of one network of
/// this plugin (Multus) leaves another's attachments alone. Names too long for an alias
/// (255 bytes) are hashed.
pub fn owner_alias(network: &str) -> String {
    const MAX_NAME: usize = 200;
    if network.len() <= MAX_NAME {
        format!("{ALIAS_PREFIX}{network}")
    } else {
        format!("{ALIAS_PREFIX}#{:016x}", fnv1a(network.bytes()))
    }
}

const ALIAS_PREFIX: &str = "vswitch-cni network ";

/// Whose a host-side veth is, by its alias, as `network` sees it.
#[derive(Debug, PartialEq, Eq)]
enum Owner {
    This,
    Another,
    /// No owner said: made by a plugin from before aliases (or an alias someone else set).
    Unsaid,
}

fn owner(network: &str, alias: Option<&str>) -> Owner {
    match alias {
        Some(a) if a == owner_alias(network) => Owner::This,
        Some(a) if a.starts_with(ALIAS_PREFIX) => Owner::Another,
        _ => Owner::Unsaid,
    }
}

/// Whether `name` is one of ours (for GC).
pub fn is_host_ifname(name: &str) -> bool {
    name.len() == 15
        && name.starts_with(HOST_PREFIX)
        && name[HOST_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// GRO on the pod's end of the veth: it gives that end NAPI, which frames the switch's XDP
/// fast path redirects to the pod need (without it the kernel drops them).
fn give_napi(netns: &File, ifname: &str) -> Result<()> {
    let done = std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("entering the pod's network namespace: {e}"))?;
            pmd::netdev::set_gro(ifname, true)
                .map_err(|e| format!("turning GRO on for {ifname} in the pod: {e}"))
        })
        .join()
    });
    match done {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(CniError::internal(e)),
        Err(_) => Err(CniError::internal("the namespace thread failed")),
    }
}

fn open_pod_netns(env: &Env) -> Result<(File, String)> {
    let path = env
        .netns
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_NETNS is missing"))?;
    let file = open_netns(path).map_err(|e| {
        CniError::new(
            code::CONTAINER_UNKNOWN,
            format!("CNI_NETNS {}: {e}", path.display()),
        )
    })?;
    Ok((file, path.to_string_lossy().into_owned()))
}

/// What a failed ADD has made so far, undone in reverse.
#[derive(Default)]
struct Made {
    ipam: bool,
    veth: Option<String>,
    port: Option<String>,
}

pub fn add(env: &Env, conf: &NetConf) -> Result<CniResult> {
    let (netns, sandbox) = open_pod_netns(env)?;
    let ipam_plugin = ipam::find(&conf.ipam_type, &env.path)?;
    // Nothing is made for a switch that is not there.
    if let Err(e) = UnixStream::connect(&conf.ctl) {
        return Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "the switch is not running: control socket {}: {e}",
                conf.ctl.display()
            ),
        ));
    }
    let mut made = Made::default();
    let result = add_steps(env, conf, &netns, &sandbox, &ipam_plugin, &mut made);
    if result.is_err() {
        undo(env, conf, &ipam_plugin, made);
    }
    result
}

fn add_steps(
    env: &Env,
    conf: &NetConf,
    netns: &File,
    sandbox: &str,
    ipam_plugin: &Path,
    made: &mut Made,
) -> Result<CniResult> {
    // IPAM runs while the veth is made (it needs no address), then the address goes on. It
    // is waited for whatever happens meanwhile, and released only once it gave an address: a
    // failed IPAM ADD (a second ADD of a running attachment) holds nothing of ours, and its
    // DEL would release the running one's.
    let pending = ipam::start(ipam_plugin, "ADD", env, conf)?;
    let host = host_ifname(&env.container_id, &env.ifname);
    let made_veth = random_mac().and_then(|mac| {
        let node = Netlink::here()?;
        node.add_veth(&host, &env.ifname, conf.mtu, mac, netns)?;
        made.veth = Some(host.clone());
        node.set_up(&host, Some(&owner_alias(&conf.name)))?;
        Ok((mac, node))
    });
    let ipam_result = pending.wait(env, conf)?;
    made.ipam = true;
    let ipam_result =
        ipam_result.ok_or_else(|| CniError::internal("the IPAM plugin returned no result"))?;
    let (mac, node) = made_veth?;
    let (ip, gateway) = pod_address(&ipam_result)?;

    let pod = Netlink::inside(netns)?;
    let link = pod.link(&env.ifname)?.ok_or_else(|| {
        CniError::internal(format!(
            "{} vanished from the pod after creation",
            env.ifname
        ))
    })?;
    pod.add_addr(link.index, ip)?;
    pod.set_up(&env.ifname, None)?;
    give_napi(netns, &env.ifname)?;
    // A pod attached before (Multus: this is its net1) keeps the default route it has.
    let has_default = pod.routes()?.iter().any(|r| r.dst.prefix == 0);
    let routes = pod_routes(&ipam_result, gateway, has_default);
    for r in &routes {
        let dst = Ipv4Net::parse(&r.dst).ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("route {:?}: not an IPv4 prefix", r.dst),
            )
        })?;
        let gw = r.gw.as_deref().map(parse_ip).transpose()?;
        pod.add_route(dst, gw, link.index)?;
    }

    let pod_mac = format_mac(&mac);
    // Undone even when the answer does not come: the switch may have attached it anyway (a
    // `port del` of a port it does not have is harmless).
    made.port = Some(host.clone());
    switch::port_add(&conf.ctl, &host, &pod_mac, &ip.addr.to_string())?;

    // Gone meanwhile (a GC that ran beside this ADD): the pod would have no network.
    let host_mac = node
        .link(&host)?
        .ok_or_else(|| CniError::internal(format!("{host} vanished during ADD")))?
        .mac;
    let mtu = (conf.cni_version != "1.0.0").then_some(conf.mtu);
    let ips = vec![IpConfig {
        address: ip.to_string(),
        gateway: gateway.map(|g| g.to_string()),
        interface: Some(1),
        ..Default::default()
    }];
    Ok(CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![
            Interface {
                name: host,
                mac: host_mac,
                mtu,
                ..Default::default()
            },
            Interface {
                name: env.ifname.clone(),
                mac: pod_mac,
                mtu,
                sandbox: Some(sandbox.to_string()),
                ..Default::default()
            },
        ],
        ips,
        routes,
        dns: ipam_result.dns.clone(),
        other: Default::default(),
    })
}

fn undo(env: &Env, conf: &NetConf, ipam_plugin: &Path, made: Made) {
    if let Some(port) = &made.port {
        let _ = switch::port_del(&conf.ctl, port);
    }
    if let Some(veth) = &made.veth {
        if let Ok(node) = Netlink::here() {
            let _ = node.del_link(veth);
        }
    }
    if made.ipam {
        let _ = ipam::run(ipam_plugin, "DEL", env, conf);
    }
}

fn parse_ip(text: &str) -> Result<Ipv4Addr> {
    text.parse().map_err(|_| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("{text:?}: not an IPv4 address (vswitch is IPv4 only)"),
        )
    })
}

/// The pod's one IPv4 address and its gateway: the switch binds a port to one address.
fn pod_address(r: &CniResult) -> Result<(Ipv4Net, Option<Ipv4Addr>)> {
    let invalid = |m: String| CniError::new(code::INVALID_CONFIG, m);
    let [ip] = r.ips.as_slice() else {
        return Err(invalid(format!(
            "IPAM gave {} addresses; vswitch-cni needs exactly one IPv4 address (IPv6 is not supported)",
            r.ips.len()
        )));
    };
    let net = Ipv4Net::parse(&ip.address).ok_or_else(|| {
        invalid(format!(
            "IPAM gave {:?}: not an IPv4 address with a prefix (vswitch is IPv4 only)",
            ip.address
        ))
    })?;
    let gateway = ip.gateway.as_deref().map(parse_ip).transpose()?;
    Ok((net, gateway))
}

/// IPAM's routes (a route without `gw` goes via the gateway), and a default route via the
/// gateway unless IPAM gave one or the pod `has_default` already.
fn pod_routes(r: &CniResult, gateway: Option<Ipv4Addr>, has_default: bool) -> Vec<Route> {
    let mut routes: Vec<Route> = r
        .routes
        .iter()
        .map(|route| Route {
            dst: route.dst.clone(),
            gw: route.gw.clone().or_else(|| gateway.map(|g| g.to_string())),
            other: route.other.clone(),
        })
        .collect();
    let has_default = has_default
        || routes
            .iter()
            .any(|r| Ipv4Net::parse(&r.dst).is_some_and(|n| n.prefix == 0));
    if let (false, Some(gw)) = (has_default, gateway) {
        routes.push(Route {
            dst: "0.0.0.0/0".into(),
            gw: Some(gw.to_string()),
            ..Default::default()
        });
    }
    routes
}

/// DEL: whatever is there goes; what is not is fine. The IPAM plugin is always asked to
/// release, so a lease outlives no failed step.
pub fn del(env: &Env, conf: &NetConf) -> Result<()> {
    let host = host_ifname(&env.container_id, &env.ifname);
    let mut first: Option<CniError> = None;
    // The address is released while the port and veth go (they do not depend on it).
    let releasing =
        ipam::find(&conf.ipam_type, &env.path).and_then(|p| ipam::start(&p, "DEL", env, conf));
    match switch::port_del(&conf.ctl, &host) {
        // A switch that is not running has no ports: nothing to detach.
        Ok(_) | Err(SwitchError::Unreachable(_)) => {}
        Err(e) => first = Some(e.into_cni(&format!("detaching {host}"))),
    }
    // Deleting the host end deletes the pod's end too.
    if let Err(e) = Netlink::here().and_then(|n| n.del_link(&host)) {
        first.get_or_insert(e);
    }
    if let Err(e) = releasing.and_then(|p| p.wait(env, conf)) {
        first.get_or_insert(e);
    }
    first.map_or(Ok(()), Err)
}

/// CHECK: the attachment still matches `prevResult`; every difference is reported.
pub fn check(env: &Env, conf: &NetConf) -> Result<()> {
    let prev = conf.prev_result.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs prevResult in the configuration",
        )
    })?;
    let prev = CniResult::from_value(prev, "prevResult")?;
    let (netns, sandbox) = open_pod_netns(env)?;
    let ipam_plugin = ipam::find(&conf.ipam_type, &env.path)?;
    ipam::run(&ipam_plugin, "CHECK", env, conf)?;

    let host = host_ifname(&env.container_id, &env.ifname);
    let mut diffs = Vec::new();
    let Some(pod_idx) = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && i.sandbox.is_some())
    else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("prevResult has no interface {} in a sandbox", env.ifname),
        ));
    };
    let want = &prev.interfaces[pod_idx];
    if want.sandbox.as_deref() != Some(sandbox.as_str()) {
        diffs.push(format!(
            "prevResult puts {} in {:?}, CNI_NETNS is {sandbox}",
            env.ifname, want.sandbox
        ));
    }
    let ips: Vec<Ipv4Net> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(pod_idx))
        .filter_map(|ip| Ipv4Net::parse(&ip.address))
        .collect();

    let pod = Netlink::inside(&netns)?;
    match pod.link(&env.ifname)? {
        None => diffs.push(format!("no interface {} in {sandbox}", env.ifname)),
        Some(link) => {
            if !want.mac.is_empty() && !link.mac.eq_ignore_ascii_case(&want.mac) {
                diffs.push(format!(
                    "{}: MAC {} (want {})",
                    env.ifname, link.mac, want.mac
                ));
            }
            if link.mtu != conf.mtu {
                diffs.push(format!(
                    "{}: MTU {} (want {})",
                    env.ifname, link.mtu, conf.mtu
                ));
            }
            if !link.up {
                diffs.push(format!("{} is down", env.ifname));
            }
            let have = pod.addrs(link.index)?;
            for ip in &ips {
                if !have.contains(ip) {
                    diffs.push(format!("{}: no address {ip}", env.ifname));
                }
            }
            let routes = pod.routes()?;
            for r in &prev.routes {
                let Some(dst) = Ipv4Net::parse(&r.dst) else {
                    continue;
                };
                let gw = r.gw.as_deref().and_then(|g| g.parse::<Ipv4Addr>().ok());
                let found = routes.iter().any(|have| {
                    have.dst.prefix == dst.prefix
                        && have.dst.network() == dst.network()
                        && (gw.is_none() || have.gw == gw)
                        && have.oif == Some(link.index)
                });
                if !found {
                    let via =
                        r.gw.as_deref()
                            .map(|g| format!(" via {g}"))
                            .unwrap_or_default();
                    diffs.push(format!("no route {}{via} on {}", r.dst, env.ifname));
                }
            }
        }
    }

    let node = Netlink::here()?;
    match node.link(&host)? {
        None => diffs.push(format!("no host-side veth {host}")),
        Some(l) => {
            if !l.veth {
                diffs.push(format!("{host} is not a veth"));
            }
            if !l.up {
                diffs.push(format!("{host} is down"));
            }
            if l.mtu != conf.mtu {
                diffs.push(format!("{host}: MTU {} (want {})", l.mtu, conf.mtu));
            }
            if owner(&conf.name, l.alias.as_deref()) == Owner::Another {
                diffs.push(format!(
                    "{host} belongs to another network: alias {:?} (want {:?})",
                    l.alias.unwrap_or_default(),
                    owner_alias(&conf.name)
                ));
            }
        }
    }

    let ports = switch::ports(&conf.ctl).map_err(|e| e.into_cni("CHECK"))?;
    match ports.iter().find(|p| p.name == host) {
        None => diffs.push(format!("the switch has no port {host}")),
        Some(p) => {
            if !p
                .mac
                .as_deref()
                .is_some_and(|m| m.eq_ignore_ascii_case(&want.mac))
            {
                diffs.push(format!(
                    "switch port {host} is bound to MAC {:?} (want {})",
                    p.mac, want.mac
                ));
            }
            let want_ip = ips.first().map(|n| n.addr.to_string());
            if p.ip != want_ip {
                diffs.push(format!(
                    "switch port {host} is bound to IP {:?} (want {want_ip:?})",
                    p.ip
                ));
            }
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::CHECK_FAILED,
            format!("{} differs from prevResult", env.ifname),
        )
        .with_details(diffs.join("; ")))
    }
}

/// STATUS: ready when the switch answers on its control socket.
pub fn status(conf: &NetConf) -> Result<()> {
    switch::answers(&conf.ctl).map_err(|e| {
        let why = match e {
            SwitchError::Unreachable(e) | SwitchError::Busy(e) | SwitchError::Refused(e) => e,
        };
        CniError::new(
            code::NOT_AVAILABLE,
            "plugin not available: the switch does not answer",
        )
        .with_details(why)
    })
}

/// GC (1.1.0): this network's host-side veths (and their switch ports) of attachments not in
/// `cni.dev/valid-attachments` go; then the IPAM plugin collects its own. A list that is
/// missing or malformed is refused: read as empty, it would take down every pod of the node.
/// A port the switch refuses to detach, or a veth that cannot be deleted, is reported once the
/// rest is collected.
pub fn gc(env: &Env, conf: &NetConf) -> Result<()> {
    let valid = valid_attachments(&conf.raw)?;
    let node = Netlink::here()?;
    // A veth without an owner (from before aliases) may be another network's running pod:
    // collected only when the switch has no port for it (a leak). Unknown: left alone.
    let attached: Option<BTreeSet<String>> = switch::ports(&conf.ctl)
        .ok()
        .map(|ports| ports.into_iter().map(|p| p.name).collect());
    let leaked = |name: &str| attached.as_ref().is_some_and(|a| !a.contains(name));
    // The first failure is reported once everything else is collected (the spec: GC goes on).
    let mut failed = None;
    let candidates = node
        .links()?
        .into_iter()
        .filter(|l| is_host_ifname(&l.name) && !valid.contains(&l.name));
    for Link { name, alias, .. } in candidates {
        let collect = match owner(&conf.name, alias.as_deref()) {
            Owner::This => true,
            Owner::Another => false,
            Owner::Unsaid => leaked(&name),
        };
        if collect {
            let collected = match switch::port_del(&conf.ctl, &name) {
                Ok(_) | Err(SwitchError::Unreachable(_)) => node.del_link(&name).map(|_| ()),
                Err(e) => Err(e.into_cni(&format!("detaching {name}"))),
            };
            if let Err(e) = collected {
                failed.get_or_insert(e);
            }
        }
    }
    let ipam_plugin = ipam::find(&conf.ipam_type, &env.path)?;
    // An IPAM plugin older than 1.1.0 has no GC.
    let ipam = match ipam::supports(&ipam_plugin, "1.1.0", env, conf) {
        Ok(true) => ipam::run(&ipam_plugin, "GC", env, conf).map(|_| ()),
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    };
    match failed {
        Some(e) => Err(e),
        None => ipam,
    }
}

/// The host-side names of `cni.dev/valid-attachments`.
fn valid_attachments(raw: &Value) -> Result<BTreeSet<String>> {
    let invalid = |why: &str| {
        CniError::new(
            code::INVALID_CONFIG,
            "invalid GC request: cni.dev/valid-attachments",
        )
        .with_details(why.to_string())
    };
    let list = raw
        .get("cni.dev/valid-attachments")
        .ok_or_else(|| invalid("missing"))?
        .as_array()
        .ok_or_else(|| invalid("not a list"))?;
    list.iter()
        .map(|a| {
            let field = |k: &str| a.get(k).and_then(Value::as_str);
            match (field("containerID"), field("ifname")) {
                (Some(id), Some(ifname)) => Ok(host_ifname(id, ifname)),
                _ => Err(invalid(&format!(
                    "an attachment without a containerID and an ifname: {a}"
                ))),
            }
        })
        .collect()
}

/// VERSION, written in the config's version when it names one we speak.
pub fn version(config_version: Option<&str>) -> Value {
    let v = config_version
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .unwrap_or(SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.len() - 1]);
    json!({ "cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_short_and_ours() {
        let a = host_ifname("8f2a1c0e7b", "eth0");
        assert_eq!(a.len(), 15);
        assert_eq!(a, host_ifname("8f2a1c0e7b", "eth0"));
        assert_ne!(a, host_ifname("8f2a1c0e7b", "eth1"));
        assert_ne!(a, host_ifname("8f2a1c0e7c", "eth0"));
        assert!(is_host_ifname(&a));
        for other in ["eth0", "vsw", "vswABCDEF012345", "vsw0000000000000", "cni0"] {
            assert!(!is_host_ifname(other), "{other}");
        }
        // No collisions over many pods.
        let names: BTreeSet<String> = (0..10_000)
            .map(|i| host_ifname(&format!("container{i}"), "eth0"))
            .collect();
        assert_eq!(names.len(), 10_000);
    }

    #[test]
    fn a_veth_s_alias_names_its_network() {
        let ours = owner_alias("pods");
        assert_eq!(ours, "vswitch-cni network pods");
        assert_eq!(owner("pods", Some(&ours)), Owner::This);
        assert_eq!(owner("pods", Some(&owner_alias("storage"))), Owner::Another);
        assert_eq!(owner("pods", Some(&owner_alias("pods-2"))), Owner::Another);
        // Made before veths had an owner, or an alias set by someone else.
        assert_eq!(owner("pods", None), Owner::Unsaid);
        assert_eq!(owner("pods", Some("uplink to rack 4")), Owner::Unsaid);
        // Long names fit an alias (255 bytes) and stay apart.
        let long_a = "a".repeat(300);
        let long_b = format!("{}b", "a".repeat(299));
        assert!(owner_alias(&long_a).len() < 255);
        assert_ne!(owner_alias(&long_a), owner_alias(&long_b));
        assert_eq!(owner(&long_a, Some(&owner_alias(&long_a))), Owner::This);
        assert_eq!(owner(&long_a, Some(&owner_alias(&long_b))), Owner::Another);
    }

    /// A GC request without its list (or with a broken one) must not read as "nothing is
    /// valid": that would take down every pod of the node.
    #[test]
    fn gc_refuses_a_missing_or_malformed_attachment_list() {
        let with = |list: Option<Value>| {
            let mut raw = serde_json::json!({ "cniVersion": "1.1.0", "name": "pods" });
            if let Some(l) = list {
                raw["cni.dev/valid-attachments"] = l;
            }
            valid_attachments(&raw)
        };
        for bad in [
            None,
            Some(serde_json::json!({})),
            Some(serde_json::json!([{ "containerID": "a" }])),
            Some(serde_json::json!([{ "containerID": "a", "ifname": 3 }])),
        ] {
            let e = with(bad.clone()).expect_err(&format!("{bad:?}"));
            assert_eq!(e.code, code::INVALID_CONFIG, "{bad:?}");
        }
        assert!(with(Some(serde_json::json!([]))).unwrap().is_empty());
        let valid = with(Some(serde_json::json!([
            { "containerID": "a", "ifname": "eth0" }
        ])))
        .unwrap();
        assert!(valid.contains(&host_ifname("a", "eth0")));
    }

    fn ipam(v: Value) -> CniResult {
        CniResult::from_value(v, "test").unwrap()
    }

    #[test]
    fn one_ipv4_address() {
        let r = ipam(
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1"}]}),
        );
        let (ip, gw) = pod_address(&r).unwrap();
        assert_eq!(ip.to_string(), "10.244.1.5/24");
        assert_eq!(gw, Some(Ipv4Addr::new(10, 244, 1, 1)));
        for bad in [
            json!({"cniVersion": "1.0.0", "ips": []}),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "fd00::5/64"}]}),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.5/24"}, {"address": "10.244.1.6/24"}]}),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.5/24", "gateway": "fd00::1"}]}),
        ] {
            assert_eq!(
                pod_address(&ipam(bad)).unwrap_err().code,
                code::INVALID_CONFIG
            );
        }
    }

    #[test]
    fn routes_get_a_default_via_the_gateway() {
        let gw = Some(Ipv4Addr::new(10, 244, 1, 1));
        let r = ipam(json!({"cniVersion": "1.0.0"}));
        let routes = pod_routes(&r, gw, false);
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].dst, "0.0.0.0/0");
        assert_eq!(routes[0].gw.as_deref(), Some("10.244.1.1"));

        let r = ipam(
            json!({"cniVersion": "1.0.0", "routes": [{"dst": "10.96.0.0/12"}, {"dst": "0.0.0.0/0", "gw": "10.244.1.254"}]}),
        );
        let routes = pod_routes(&r, gw, false);
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].gw.as_deref(), Some("10.244.1.1"));
        assert_eq!(routes[1].gw.as_deref(), Some("10.244.1.254"));

        assert!(pod_routes(&ipam(json!({"cniVersion": "1.0.0"})), None, false).is_empty());
        assert!(
            pod_routes(&ipam(json!({"cniVersion": "1.0.0"})), gw, true).is_empty(),
            "the pod has a default route already"
        );
    }

    #[test]
    fn version_output() {
        assert_eq!(
            version(Some("1.0.0")),
            json!({"cniVersion": "1.0.0", "supportedVersions": ["1.0.0", "1.1.0"]})
        );
        assert_eq!(version(None)["cniVersion"], "1.1.0");
        assert_eq!(version(Some("0.3.1"))["cniVersion"], "1.1.0");
    }
}
