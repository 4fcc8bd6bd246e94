//! The running switch: the datapath plus what changed since it started (ports the operator
//! attached or removed, their bindings, ports whose interface vanished), and the config file
//! it reloads. Owned by the main thread; the control socket and the metrics endpoint reach it
//! only through requests the main thread answers.

use crate::cli::Args;
use crate::config::{self, NodeConfig};
use crate::port_records::{PortRecords, Record};
use pipeline::gateway::{ForgottenPort, GatewayConfig};
use pipeline::l2::PortBinding;
use pipeline::{Pipeline, PortId, PortMask};
use pmd::{Datapath, SharedJob, WorkerCounter};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn port_exists(name: &str) -> bool {
    pmd::netdev::ifindex(name).is_ok()
}

/// The uplink port's MTU, which encapsulated packets must fit, from the kernel (at most what
/// the workers forward, as when it changes while the switch runs).
pub fn with_uplink_mtu(mut node: NodeConfig) -> NodeConfig {
    if let Some(up) = node.gateway.uplink.as_mut() {
        if let Some(name) = node.ports.get(up.port as usize) {
            if let Ok(mtu) = pmd::netdev::mtu(name) {
                up.mtu = mtu.min(pmd::MAX_MTU);
            }
        }
    }
    node
}

/// Each worker's share of busy polling over the last second or so.
pub struct Load {
    at: Instant,
    last: Vec<(u64, u64)>,
    pub ratio: Vec<f64>,
}

impl Load {
    fn new(workers: usize) -> Load {
        Load {
            at: Instant::now(),
            last: vec![(0, 0); workers],
            ratio: vec![0.0; workers],
        }
    }

    pub fn update(&mut self, dp: &Datapath) {
        if self.at.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.at = Instant::now();
        for (w, s) in dp.stats.iter().enumerate() {
            let now = (
                s.worker(WorkerCounter::BusyCycles),
                s.worker(WorkerCounter::IdleCycles),
            );
            let (busy, idle) = (now.0 - self.last[w].0, now.1 - self.last[w].1);
            self.ratio[w] = if busy + idle > 0 {
                busy as f64 / (busy + idle) as f64
            } else {
                0.0
            };
            self.last[w] = now;
        }
    }
}

pub struct Live {
    pub dp: Datapath,
    pub args: Args,
    /// The config file as loaded (what a reload is compared with).
    pub node: Option<NodeConfig>,
    /// Gateway mode: the pod ports now (the file's, then what `port add` / `port del` did).
    pub pods: Vec<PortId>,
    pub bindings: HashMap<PortId, PortBinding>,
    /// Ports taken down because their interface disappeared.
    pub ports_lost: u64,
    /// Reloads of the file (SIGHUP, `ctl reload`): applied, refused.
    pub reloads: (u64, u64),
    /// Services came from `import` (Kubernetes): a reload of the file keeps them.
    pub imported: bool,
    /// The endpoints the last import listed (terminating ones included): an import that
    /// changes neither them nor the services is no reload (which would take every flow off
    /// the fast path; the agent sends the whole cluster on any change, and every minute).
    import_listed: Option<std::collections::HashSet<std::net::SocketAddrV4>>,
    /// Gateway mode: the uplink's interface, attached at start only (its id is in the
    /// gateway's configuration).
    uplink_name: Option<String>,
    /// Ports `port add` attached, attached again when the switch starts.
    records: PortRecords,
    pub load: Load,
}

/// Items an import's answer names in `skipped` (`skipped_count` says how many there were).
const MAX_SKIPPED_NAMED: usize = 1000;

impl Live {
    pub fn new(dp: Datapath, args: Args, node: Option<NodeConfig>) -> Live {
        let pods = node
            .as_ref()
            .map(|n| n.gateway.pod_ports.clone())
            .unwrap_or_default();
        let load = Load::new(dp.workers());
        let uplink_name = node
            .as_ref()
            .and_then(|n| n.gateway.uplink.as_ref())
            .and_then(|u| dp.port(u.port))
            .map(|p| p.info.name.clone());
        // The file's bindings, as `port add --mac --ip` records its own (for `show ports`).
        let bindings = node
            .as_ref()
            .map(|n| n.bindings.iter().copied().collect())
            .unwrap_or_default();
        let records = PortRecords::beside(&args.ctl);
        Live {
            dp,
            args,
            node,
            pods,
            bindings,
            ports_lost: 0,
            reloads: (0, 0),
            imported: false,
            import_listed: None,
            uplink_name,
            records,
            load,
        }
    }

    fn uplink(&self) -> Option<PortId> {
        self.node
            .as_ref()
            .and_then(|n| n.gateway.uplink.as_ref())
            .map(|u| u.port)
    }

    /// What changing the pod segment needs, detached from `self` (so it can run while the
    /// datapath is borrowed mutably).
    fn segment(&self) -> Segment {
        Segment {
            shared: self.dp.gateway.clone(),
            config: self.node.as_ref().map(|n| n.gateway.clone()),
        }
    }

    /// Attaches `name` (a pod, in gateway mode), optionally bound to a MAC and IPv4 address.
    pub fn add_port(&mut self, name: &str, binding: Option<PortBinding>) -> Result<PortId, String> {
        // An interface of this name replaced the attached one before the vanished-port check
        // saw it (a pod recreated at once): the old port goes first.
        if let Some(old) = self.dp.port_id(name) {
            let stale = self.dp.port(old).map(|p| p.info.ifindex);
            if stale.is_some_and(|i| pmd::netdev::ifindex(name).is_ok_and(|now| now != i))
                && Some(old) != self.uplink()
            {
                self.ports_lost += 1;
                self.remove(old)?;
                tracing::warn!(
                    port = name,
                    id = old,
                    "its interface was replaced: the old port removed"
                );
            }
        }
        if let Some(b) = binding {
            self.check_binding(name, b)?;
        }
        if self.uplink_name.as_deref() == Some(name) && self.dp.port_id(name).is_none() {
            // Added now it would be a pod port, on the pod segment, under another id.
            return Err(format!(
                "{name} is the node's uplink, attached only at start: restart the switch to attach it again"
            ));
        }
        let segment = self.segment();
        let pods = self.pods.clone();
        // The new port's segment and binding are in place before its first frame.
        let result = self.dp.add_port(name, |id| {
            let mut now = pods.clone();
            now.push(id);
            let flood = segment.set(&now);
            Some(Arc::new(move |p: &mut Pipeline, t| {
                if let Some(job) = &flood {
                    job(p, t);
                }
                p.set_port_binding(id, binding);
            }))
        });
        match result {
            Ok(id) => {
                if segment.shared.is_some() {
                    self.pods.push(id);
                }
                if let Some(b) = binding {
                    self.bindings.insert(id, b);
                }
                let record = Record {
                    binding,
                    ifindex: self.dp.port(id).map(|p| p.info.ifindex),
                };
                if let Err(e) = self.records.record(name, record) {
                    tracing::warn!(port = name, dir = %self.records.dir().display(), "not recorded: a restarted switch will not attach it again: {e}");
                }
                tracing::info!(port = name, id, ?binding, "port added");
                Ok(id)
            }
            Err(e) => {
                // Back to the segment as it was.
                if let Some(job) = segment.set(&self.pods) {
                    let _ = self.dp.on_workers(move |p, t| job(p, t));
                }
                tracing::warn!(port = name, "port add failed: {e}");
                Err(e.to_string())
            }
        }
    }

    /// What `port add` binds a port to: in gateway mode a pod address of the pod subnet (never
    /// the gateway's: a pod bound to it could answer for the gateway), and a MAC and address
    /// nobody else is bound to (port security would let both send as them).
    fn check_binding(&self, name: &str, binding: PortBinding) -> Result<(), String> {
        if let (Some(node), Some(ip)) = (&self.node, binding.ip) {
            let pods = node.gateway.gateway;
            if !config::is_pod_address(&pods, ip) {
                return Err(format!("--ip {ip} is not a pod address in {pods}"));
            }
        }
        for (&id, b) in &self.bindings {
            let Some(other) = self.dp.port(id).map(|p| p.info.name.as_str()) else {
                continue;
            };
            if other == name {
                continue;
            }
            if let Some((what, address)) = binding.shared_with(b) {
                return Err(format!(
                    "--{what} {address} is bound to port {other} already"
                ));
            }
        }
        Ok(())
    }

    /// Removes a port (by the operator: never the uplink).
    pub fn del_port(&mut self, name: &str) -> Result<ForgottenPort, String> {
        let id = self
            .dp
            .port_id(name)
            .ok_or_else(|| format!("no port {name:?} is attached"))?;
        if Some(id) == self.uplink() {
            return Err(format!(
                "{name} is the uplink; it stays as long as the switch runs"
            ));
        }
        let forgotten = self.remove(id)?;
        tracing::info!(
            port = name,
            id,
            fdb_entries = forgotten.fdb_entries,
            neighbors = forgotten.neighbors,
            flows = forgotten.flows,
            "port removed"
        );
        Ok(forgotten)
    }

    fn remove(&mut self, id: PortId) -> Result<ForgottenPort, String> {
        if let Some(port) = self.dp.port(id) {
            if let Err(e) = self.records.forget(&port.info.name) {
                tracing::warn!(port = port.info.name.as_str(), "its record stays: {e}");
            }
        }
        let segment = self.segment();
        self.pods.retain(|&p| p != id);
        self.bindings.remove(&id);
        let pods = self.pods.clone();
        self.dp
            .del_port(id, |_| segment.set(&pods))
            .map_err(|e| e.to_string())
    }

    /// Attaches again the ports `port add` attached before the switch restarted (pods: the
    /// runtime does not call the CNI plugin again for them), where their interface still
    /// exists; a record whose interface is gone goes (the pod was deleted meanwhile).
    pub fn restore_ports(&mut self) {
        for (name, record) in self.records.list() {
            if self.dp.port_id(&name).is_some() {
                continue;
            }
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(port = name.as_str(), "record not readable, left alone: {e}");
                    continue;
                }
            };
            let ifindex = match pmd::netdev::ifindex(&name) {
                Ok(i) => i,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::info!(
                        port = name.as_str(),
                        "recorded port's interface is gone: record removed"
                    );
                    let _ = self.records.forget(&name);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(
                        port = name.as_str(),
                        "recorded port not attached again: {e}"
                    );
                    continue;
                }
            };
            if record.ifindex.is_some_and(|i| i != ifindex) {
                tracing::warn!(
                    port = name.as_str(),
                    "recorded port's interface was replaced while the switch was down: not attached (its record is for the one before), record removed"
                );
                let _ = self.records.forget(&name);
                continue;
            }
            match self.add_port(&name, record.binding) {
                Ok(id) => tracing::info!(
                    port = name.as_str(),
                    id,
                    "attached again (recorded before a restart)"
                ),
                Err(e) => tracing::warn!(
                    port = name.as_str(),
                    "recorded port not attached again: {e}"
                ),
            }
        }
    }

    /// Takes down the ports whose interface disappeared (each alone; logged and counted).
    pub fn check_vanished(&mut self) {
        for id in self.dp.vanished_ports() {
            let name = self
                .dp
                .port(id)
                .map(|p| p.info.name.clone())
                .unwrap_or_default();
            self.ports_lost += 1;
            let uplink = Some(id) == self.uplink();
            if uplink {
                // The gateway's configuration names its id: no other port may take it.
                self.dp.reserve_id(id);
            }
            match self.remove(id) {
                Ok(_) if uplink => tracing::error!(
                    port = name.as_str(),
                    id,
                    "the uplink's interface disappeared: port removed; restart the switch once it exists again"
                ),
                Ok(_) => tracing::warn!(
                    port = name.as_str(),
                    id,
                    "interface disappeared: port removed; `vswitch ctl port add {name}` brings it back once it exists again"
                ),
                Err(e) if uplink => tracing::error!(port = name.as_str(), id, "the uplink's interface disappeared; removing the port: {e}"),
                Err(e) => tracing::error!(port = name.as_str(), id, "interface disappeared; removing the port: {e}"),
            }
        }
    }

    /// Port `port`'s MTU is now `mtu`: if it is the uplink, what encapsulated packets must fit
    /// follows (the gateway's policy is rebuilt from the running config, as a reload does).
    /// Returns what to log.
    pub fn follow_uplink_mtu(&mut self, port: &str, mtu: u32) -> Option<String> {
        let (Some(node), Some(shared)) = (self.node.as_mut(), &self.dp.gateway) else {
            return None;
        };
        let up = node.gateway.uplink.as_mut()?;
        let mtu = mtu.min(pmd::MAX_MTU);
        if node.ports.get(up.port as usize).map(String::as_str) != Some(port) || up.mtu == mtu {
            return None;
        }
        let old = std::mem::replace(&mut up.mtu, mtu);
        let mut live = node.gateway.clone();
        live.pod_ports = self.pods.clone();
        shared.reload(&live);
        Some(format!(
            "uplink {port}: MTU {old} -> {mtu}: packets into the overlay must fit {}",
            pipeline::overlay::encap::inner_mtu(mtu)
        ))
    }

    /// SIGHUP or `ctl reload`: re-read the config file; apply it if it is valid and changes
    /// only what a reload may change, else say why and keep running as before.
    pub fn reload(&mut self) -> Result<String, String> {
        let result = self.apply_file();
        match result {
            Ok(_) => self.reloads.0 += 1,
            Err(_) => self.reloads.1 += 1,
        }
        result
    }

    fn apply_file(&mut self) -> Result<String, String> {
        let (Some(path), Some(current), Some(shared)) =
            (&self.args.config, self.node.as_ref(), &self.dp.gateway)
        else {
            return Err("nothing to reload: the switch runs without --config".into());
        };
        // A listed pod whose interface went (and whose port with it) is still the file's:
        // only the running config's ports may change nothing, and they are compared below.
        let listed = |p: &str| port_exists(p) || current.ports.iter().any(|q| q == p);
        let new = match config::load(path, &listed) {
            Ok(n) => with_uplink_mtu(n),
            Err(e) => return Err(format!("reload refused, running config kept: {e}")),
        };
        if let Err(why) = current.reload_compatible(&new) {
            return Err(format!(
                "reload refused, running config kept: {}: {why}; restart to change it",
                path.display()
            ));
        }
        let mut new = new;
        if self.imported {
            new.gateway.services = current.gateway.services.clone();
        }
        let mut live = new.gateway.clone();
        live.pod_ports = self.pods.clone();
        let r = shared.reload(&live);
        let text = format!(
            "reloaded {}: {} services, {} routes, {} VXLAN peers; {} connections to removed backends closed",
            path.display(),
            r.services,
            r.routes,
            r.peers,
            r.flows_closed
        );
        self.node = Some(new);
        Ok(text)
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

impl Live {
    /// `vswitch ctl import`: the services of a Kubernetes List replace the running ones (the
    /// file's, or the last import's); connections to backends that remain keep them, the
    /// others are closed, as a reload does.
    pub fn import(
        &mut self,
        list: &crate::k8s::List,
        invalid: crate::k8s::Invalid,
    ) -> Result<serde_json::Value, String> {
        let start = std::time::Instant::now();
        let (Some(node), Some(shared)) = (self.node.as_mut(), &self.dp.gateway) else {
            return Err("import needs the node gateway: the switch runs without --config".into());
        };
        let facts = crate::k8s::Node {
            pod_cidr: node.gateway.gateway,
            uplink: node.gateway.uplink.as_ref().map(|u| u.address),
        };
        let t = crate::k8s::translate(list, &facts, invalid)
            .map_err(|e| format!("import refused, services kept: {e}"))?;
        let translated = start.elapsed();
        let mut config = node.gateway.clone();
        config.services = t.services;
        keep_running(&mut config.services, &node.gateway.services, &t.left_out);
        config.pod_ports = self.pods.clone();
        let unchanged = config.services == node.gateway.services
            && self.import_listed.as_ref() == Some(&t.listed);
        let (services, flows_closed) = if unchanged {
            (config.services.len(), 0)
        } else {
            // An endpoint still listed (terminating, not ready) keeps its connections.
            let r = shared.reload_keeping(&config, |b| t.listed.contains(b));
            (r.services, r.flows_closed)
        };
        node.gateway.services = config.services;
        self.imported = true;
        self.import_listed = Some(t.listed);
        // A cluster may skip tens of thousands (headless Services): the answer names the
        // first, so it stays small enough for its reader (the agent reads 1 MiB).
        if t.skipped.len() > MAX_SKIPPED_NAMED {
            tracing::info!(
                skipped = t.skipped.len(),
                "import: more skipped than the answer names"
            );
        }
        Ok(serde_json::json!({
            "services": services,
            "endpoints": t.endpoints,
            "unchanged": unchanged,
            "skipped": t.skipped.iter().take(MAX_SKIPPED_NAMED).collect::<Vec<_>>(),
            "skipped_count": t.skipped.len(),
            "flows_closed": flows_closed,
            "ms": ms(start.elapsed()),
            "translate_ms": ms(translated),
        }))
    }
}

/// The gateway's pod segment, for changing it while the datapath is borrowed.
struct Segment {
    shared: Option<Arc<pipeline::GatewayShared>>,
    config: Option<GatewayConfig>,
}

impl Segment {
    /// Gateway mode: the pod segment becomes `pods` (the policy now; the flood domain on the
    /// workers, through the returned job).
    fn set(&self, pods: &[PortId]) -> Option<SharedJob> {
        let (Some(shared), Some(config)) = (&self.shared, &self.config) else {
            return None;
        };
        shared.set_pod_ports(&GatewayConfig {
            pod_ports: pods.to_vec(),
            ..config.clone()
        });
        let flood = PortMask::of(pods);
        Some(Arc::new(move |p: &mut Pipeline, _| {
            p.set_flood_domain(flood)
        }))
    }
}

/// The running ports of the Services an import left out (`namespace/name`, their ports named
/// `namespace/name:port`) stay, where no imported Service took their fronts meanwhile.
fn keep_running(
    services: &mut Vec<pipeline::gateway::ServiceConfig>,
    running: &[pipeline::gateway::ServiceConfig],
    left_out: &[String],
) {
    let taken = |s: &pipeline::gateway::ServiceConfig,
                 others: &[pipeline::gateway::ServiceConfig]| {
        others.iter().any(|o| {
            (o.cluster_ip, o.port, o.proto) == (s.cluster_ip, s.port, s.proto)
                || (s.node_port.is_some() && (o.node_port, o.proto) == (s.node_port, s.proto))
        })
    };
    let kept: Vec<_> = running
        .iter()
        .filter(|s| {
            left_out.iter().any(|n| {
                s.name
                    .strip_prefix(n.as_str())
                    .is_some_and(|r| r.starts_with(':'))
            })
        })
        .filter(|s| !taken(s, services))
        .cloned()
        .collect();
    services.extend(kept);
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::gateway::ServiceConfig;
    use std::net::Ipv4Addr;

    fn svc(name: &str, vip: [u8; 4], node_port: Option<u16>) -> ServiceConfig {
        ServiceConfig {
            name: name.into(),
            cluster_ip: Ipv4Addr::from(vip),
            port: 80,
            proto: 6,
            node_port,
            backends: Vec::new(),
            affinity_timeout_s: None,
            external_local: None,
            node_port_backends: None,
        }
    }

    #[test]
    fn a_left_out_service_keeps_its_running_ports_unless_their_fronts_are_taken() {
        let running = [
            svc("n/a:80", [10, 96, 0, 1], None),
            svc("n/a:81", [10, 96, 0, 2], Some(30000)),
            svc("n/ab:80", [10, 96, 0, 3], None),
            svc("n/b:80", [10, 96, 0, 4], None),
        ];
        let mut imported = vec![svc("n/c:80", [10, 96, 0, 9], Some(30000))];
        keep_running(&mut imported, &running, &["n/a".to_string()]);
        let names: Vec<&str> = imported.iter().map(|s| s.name.as_str()).collect();
        // n/a:81's NodePort went to n/c; n/ab is another Service.
        assert_eq!(names, ["n/c:80", "n/a:80"]);
    }
}
