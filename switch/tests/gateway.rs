//! End to end: the node's L3 gateway (service VIP, NodePort, masquerade, a host-gw route to
//! another node, the inbound policy, hairpin, fragmented UDP through masquerade and a service,
//! reload) over veth in network namespaces, on two
//! dataplanes: the Linux kernel set up the way Kubernetes sets up a node today (a bridge and
//! nftables rules like kube-proxy's), and vswitch with a config file. One scenario runs on both
//! and gives a [`Reachability`]; the kernel's is the reference the vswitch must match.
//!
//! Topology (every name carries a per-process prefix; nothing is created in the root namespace):
//!
//! ```text
//!  p1 10.244.1.2 ─ vp1 ┐                                   ┌ n2 ── n2 pod 10.244.2.5
//!  p2 10.244.1.3 ─ vp2 ├ sw (node) vup ═══ up  rt (router) ┤       (node 2, via 198.18.0.2)
//!  p3 10.244.1.4 ─ vp3 ┘   198.18.0.1     198.18.0.254     └ ext ─ ex 198.19.0.10 (external)
//!                                          198.18.0.2
//! ```

mod common;

use common::{exec_bounded, must, network_test, unique_prefix, vswitch_bin, Namespaces};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Every connection attempt gives up after this many seconds.
const CONNECT_TIMEOUT_S: f64 = 2.0;
/// The service's backends: (pod name the server answers with, address:port).
const BACKENDS: [(&str, &str); 3] = [
    ("p1", "10.244.1.2:8080"),
    ("p2", "10.244.1.3:8080"),
    ("n2", "10.244.2.5:8080"),
];
/// The backend the reload removes (pod p2).
const REMOVED: (&str, &str) = ("p2", "10.244.1.3:8080");
const VIP_URL: &str = "http://10.96.0.10:80/";
/// The UDP echo service: its VIP and port, and its one backend (on pod p2).
const ECHO_VIP: &str = "10.96.0.11";
const ECHO_PORT: &str = "7";
const ECHO_BACKEND: &str = "10.244.1.3:7007";
/// Larger than a 1500-byte MTU: every UDP check below is sent and answered in fragments.
const BIG_DATAGRAM: &str = "4000";
const NODE_PORT_URL: &str = "http://198.18.0.1:30080/";
/// A service for bulk transfers: its VIP, port 5001 on pod p1.
const BULK_VIP: &str = "10.96.0.12";
const BULK_BACKEND: &str = "10.244.1.2:5001";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dataplane {
    /// A Linux bridge with the gateway address, routing and nftables rules like kube-proxy's.
    Kernel,
    /// `vswitch --config node.toml` on the same ports, nothing configured in the kernel.
    Vswitch,
    /// The same with two workers (`--cores 0,1`): shared conntrack and neighbours, frames
    /// handed between workers.
    VswitchTwoWorkers,
    /// One worker and the XDP fast path (`--fast-path xdp`): established flows, NAT included,
    /// forwarded by the ports' XDP programs (the pods' and the router's ends get GRO: NAPI).
    VswitchFastPath,
    /// The fast path with two workers: each installs what its gateway offers.
    VswitchFastPathTwoWorkers,
}

/// What the scenario saw. Equality compares the verdicts only, never the raw counts (which are
/// random draws): two dataplanes that behave alike are equal.
#[derive(Debug, Clone, Default)]
struct Reachability {
    /// 1. p3 → VIP, 100 connections: every one answered by a backend.
    vip_all_answered: bool,
    /// 1. ... and every backend got between 15 % and 50 % of them.
    vip_balanced: bool,
    /// 2. External host → NodePort on the node address: answered by backends.
    node_port_from_external: bool,
    /// 3. p3 → external host: answered.
    pod_to_external: bool,
    /// 3. ... and the external host saw the node address as the source (masquerade).
    external_saw_node_address: bool,
    /// 4. External host → a pod address directly: no answer (dropped inbound).
    external_to_pod_dropped: bool,
    /// 5. p3 → the pod on node 2, over the host-gw route: answered by it.
    pod_to_remote_node_pod: bool,
    /// 6. p1 → VIP, 20 connections: every one answered ...
    hairpin_all_answered: bool,
    /// 6. ... and some by p1 itself (the hairpin path was taken).
    hairpin_reached_self: bool,
    /// 7. p3 pings the gateway address.
    ping_gateway: bool,
    /// 8. p3 → external host, a 4000-byte UDP datagram (fragments): echoed back whole, and the
    ///    host saw the node address.
    udp_fragments_masqueraded: bool,
    /// 9. p3 → the UDP echo service, 4000 bytes: answered whole by its backend.
    udp_fragments_through_service: bool,
    /// 10. After the reload without p2: 30 connections p3 → VIP all answered ...
    reload_all_answered: bool,
    /// 10. ... and none by the removed backend.
    reload_removed_backend_unused: bool,
    /// Answers per backend name (and "ERR") in check 1.
    vip_counts: BTreeMap<String, usize>,
    /// Answers per backend name (and "ERR") in check 6.
    hairpin_counts: BTreeMap<String, usize>,
    /// Answers per backend name (and "ERR") in check 10.
    reload_counts: BTreeMap<String, usize>,
}

impl Reachability {
    /// What a correct gateway gives.
    fn expected() -> Reachability {
        Reachability {
            vip_all_answered: true,
            vip_balanced: true,
            node_port_from_external: true,
            pod_to_external: true,
            external_saw_node_address: true,
            external_to_pod_dropped: true,
            pod_to_remote_node_pod: true,
            hairpin_all_answered: true,
            hairpin_reached_self: true,
            ping_gateway: true,
            udp_fragments_masqueraded: true,
            udp_fragments_through_service: true,
            reload_all_answered: true,
            reload_removed_backend_unused: true,
            ..Reachability::default()
        }
    }

    /// The verdicts, in field order. Destructured without `..` so that a new field cannot be
    /// forgotten here.
    fn verdicts(&self) -> [bool; 14] {
        let Reachability {
            vip_all_answered,
            vip_balanced,
            node_port_from_external,
            pod_to_external,
            external_saw_node_address,
            external_to_pod_dropped,
            pod_to_remote_node_pod,
            hairpin_all_answered,
            hairpin_reached_self,
            ping_gateway,
            udp_fragments_masqueraded,
            udp_fragments_through_service,
            reload_all_answered,
            reload_removed_backend_unused,
            vip_counts: _,
            hairpin_counts: _,
            reload_counts: _,
        } = self;
        [
            *vip_all_answered,
            *vip_balanced,
            *node_port_from_external,
            *pod_to_external,
            *external_saw_node_address,
            *external_to_pod_dropped,
            *pod_to_remote_node_pod,
            *hairpin_all_answered,
            *hairpin_reached_self,
            *ping_gateway,
            *udp_fragments_masqueraded,
            *udp_fragments_through_service,
            *reload_all_answered,
            *reload_removed_backend_unused,
        ]
    }
}

impl PartialEq for Reachability {
    fn eq(&self, other: &Self) -> bool {
        self.verdicts() == other.verdicts()
    }
}

impl Eq for Reachability {}

/// The vswitch configuration for this topology, with these backends for service `web`.
fn node_toml(backends: &[&str]) -> String {
    let backends = backends
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"[node]
xdp_mode = "auto"

[pods]
ports = ["vp1", "vp2", "vp3"]
gateway = "10.244.1.1/24"

[uplink]
port = "vup"
address = "198.18.0.1/24"
next_hop = "198.18.0.254"
masquerade = true
cluster_cidrs = ["10.244.0.0/16", "10.96.0.0/12"]

[[route]]
cidr = "10.244.2.0/24"
via = "198.18.0.2"

[[service]]
name = "web"
cluster_ip = "10.96.0.10"
port = 80
protocol = "tcp"
node_port = 30080
backends = [{backends}]

[[service]]
name = "echo"
cluster_ip = "{ECHO_VIP}"
port = {ECHO_PORT}
protocol = "udp"
backends = ["{ECHO_BACKEND}"]

[[service]]
name = "bulk"
cluster_ip = "{BULK_VIP}"
port = 5001
protocol = "tcp"
backends = ["{BULK_BACKEND}"]
"#
    )
}

/// The kernel's equivalent of the service config: nftables rules in the style of kube-proxy's
/// nftables mode, replaced atomically as a whole (the first two lines make `nft -f` delete the
/// table if it exists, in the same transaction that recreates it).
///
/// - service VIP and NodePort: DNAT to a random backend (`numgen random mod N` into a map of
///   address . port); NodePort traffic is marked and masqueraded (externalTrafficPolicy Cluster);
/// - hairpin: a pod that reaches itself through the VIP is masqueraded (else it would answer
///   itself from its own address and drop the reply);
/// - pod traffic leaving the uplink for a non-cluster destination is masqueraded;
/// - a NEW connection from the uplink to a local pod address is dropped unless its source is a
///   pod (established/related and DNATed NodePort traffic pass: the drop looks at the original
///   destination).
fn kube_proxy_rules(backends: &[&str]) -> String {
    let elements = backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let (ip, port) = b.split_once(':').unwrap();
            format!("{i} : {ip} . {port}")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let hairpin = backends
        .iter()
        .map(|b| b.split_once(':').unwrap().0)
        .filter(|ip| ip.starts_with("10.244.1."))
        .map(|ip| format!("{ip} . {ip}"))
        .collect::<Vec<_>>()
        .join(", ");
    let n = backends.len();
    format!(
        r#"table ip kube-proxy
delete table ip kube-proxy
table ip kube-proxy {{
	map web-endpoints {{
		typeof numgen random mod {n} : ip daddr . tcp dport
		elements = {{ {elements} }}
	}}
	set hairpin {{
		type ipv4_addr . ipv4_addr
		elements = {{ {hairpin} }}
	}}
	chain services {{
		ip daddr 10.96.0.10 tcp dport 80 dnat ip to numgen random mod {n} map @web-endpoints
		ip daddr 198.18.0.1 tcp dport 30080 meta mark set meta mark | 0x4000 dnat ip to numgen random mod {n} map @web-endpoints
		ip daddr {ECHO_VIP} udp dport {ECHO_PORT} dnat ip to {ECHO_BACKEND}
		ip daddr {BULK_VIP} tcp dport 5001 dnat ip to {BULK_BACKEND}
	}}
	chain prerouting {{
		type nat hook prerouting priority dstnat; policy accept;
		jump services
	}}
	chain output {{
		type nat hook output priority -100; policy accept;
		jump services
	}}
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		meta mark & 0x4000 == 0x4000 masquerade
		ct status dnat ip saddr . ip daddr @hairpin masquerade
		oifname "vup" ip saddr 10.244.0.0/16 ip daddr != {{ 10.244.0.0/16, 10.96.0.0/12 }} masquerade
	}}
	chain forward {{
		type filter hook forward priority filter; policy accept;
		ct state established,related accept
		iifname "vup" ct state new ip saddr != 10.244.0.0/16 ct original ip daddr 10.244.1.0/24 drop
	}}
}}
"#
    )
}

/// A running `vswitch --config`; killed on drop if not stopped.
struct VswitchProcess {
    child: Option<Child>,
    config: PathBuf,
    ctl: String,
}

impl Drop for VswitchProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The topology above, with one dataplane in the node namespace and the HTTP servers running.
/// Fields drop in order: the vswitch, the servers, the scratch directory, then the namespaces
/// (which kills whatever else still runs in them).
struct Gateway {
    dataplane: Dataplane,
    prefix: String,
    vswitch: Option<VswitchProcess>,
    servers: Servers,
    dir: ScratchDir,
    namespaces: Namespaces,
}

/// The HTTP servers, killed and reaped on drop.
#[derive(Default)]
struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A directory for config files and logs, removed on drop.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ip(ns: &str, args: &[&str]) {
    let mut full = vec!["ip", "-n", ns];
    full.extend_from_slice(args);
    must(&full);
}

fn in_ns(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    must(&full)
}

fn probe_script() -> String {
    common::repo_root()
        .join("scripts")
        .join("http_probe.py")
        .to_string_lossy()
        .into_owned()
}

impl Gateway {
    fn new(dataplane: Dataplane) -> Gateway {
        let prefix = unique_prefix("vgw");
        let dir = std::env::temp_dir().join(format!("{prefix}-gateway"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut gw = Gateway {
            dataplane,
            prefix,
            vswitch: None,
            servers: Servers::default(),
            dir: ScratchDir(dir),
            namespaces: Namespaces::default(),
        };
        common::cable_gateway_node(&gw.prefix, &mut gw.namespaces);
        match dataplane {
            Dataplane::Kernel => gw.kernel_node(),
            Dataplane::Vswitch | Dataplane::VswitchTwoWorkers => gw.start_vswitch(),
            Dataplane::VswitchFastPath | Dataplane::VswitchFastPathTwoWorkers => {
                for (host, dev) in [("p1", "eth0"), ("p2", "eth0"), ("p3", "eth0"), ("rt", "up")] {
                    in_ns(&gw.ns(host), &["ethtool", "-K", dev, "gro", "on"]);
                }
                gw.start_vswitch()
            }
        }
        for (name, host) in [
            ("p1", "p1"),
            ("p2", "p2"),
            ("n2", "n2"),
            ("client-ip", "ex"),
        ] {
            gw.serve(host, name);
        }
        gw.serve_udp("ex", "8080");
        gw.serve_udp("p2", ECHO_BACKEND.split_once(':').unwrap().1);
        gw
    }

    fn ns(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    /// The node as Kubernetes builds it today: bridge br0 with the pod gateway address,
    /// hairpin on the pod ports, bridged traffic through netfilter (so that a reply a pod sends
    /// straight to another pod is un-DNATed), routes, forwarding, and kube-proxy-like rules.
    fn kernel_node(&mut self) {
        let sw = self.ns("sw");
        assert!(
            Command::new("nft").arg("--version").output().is_ok(),
            "nft is missing: run scripts/install-deps.sh (Debian package nftables)"
        );
        ip(&sw, &["link", "add", "br0", "type", "bridge"]);
        for port in ["vp1", "vp2", "vp3"] {
            ip(&sw, &["link", "set", port, "master", "br0"]);
            must(&[
                "bridge", "-n", &sw, "link", "set", "dev", port, "hairpin", "on",
            ]);
        }
        ip(&sw, &["addr", "add", "10.244.1.1/24", "dev", "br0"]);
        ip(&sw, &["link", "set", "br0", "up"]);
        ip(&sw, &["addr", "add", "198.18.0.1/24", "dev", "vup"]);
        ip(&sw, &["route", "add", "default", "via", "198.18.0.254"]);
        ip(&sw, &["route", "add", "10.244.2.0/24", "via", "198.18.0.2"]);
        in_ns(
            &sw,
            &[
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.bridge.bridge-nf-call-iptables=1",
            ],
        );
        let all: Vec<&str> = BACKENDS.iter().map(|b| b.1).collect();
        self.load_rules(&all);
    }

    fn load_rules(&self, backends: &[&str]) {
        let file = self.dir.0.join("rules.nft");
        std::fs::write(&file, kube_proxy_rules(backends)).unwrap();
        in_ns(&self.ns("sw"), &["nft", "-f", file.to_str().unwrap()]);
    }

    fn write_config(&self, backends: &[&str]) -> PathBuf {
        let file = self.dir.0.join("node.toml");
        let tmp = self.dir.0.join("node.toml.tmp");
        std::fs::write(&tmp, node_toml(backends)).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        file
    }

    fn xdp_attached(&self, port: &str) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.ns("sw"), "-d", "link", "show", "dev", port])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.0.join(name)).unwrap_or_default()
    }

    /// Starts vswitch with the full config and waits until every port carries its program.
    fn start_vswitch(&mut self) {
        let config = self.write_config(&BACKENDS.map(|b| b.1));
        let stdout = std::fs::File::create(self.dir.0.join("vswitch.out")).unwrap();
        let stderr = std::fs::File::create(self.dir.0.join("vswitch.err")).unwrap();
        let ctl = common::ctl_path();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns("sw"), vswitch_bin()])
            .args(["--ctl", &ctl, "--config"])
            .arg(&config)
            .args(match self.dataplane {
                Dataplane::VswitchTwoWorkers => &["--fast-path", "off", "--cores", "0,1"][..],
                Dataplane::VswitchFastPath => &["--fast-path", "xdp"][..],
                Dataplane::VswitchFastPathTwoWorkers => {
                    &["--fast-path", "xdp", "--cores", "0,1"][..]
                }
                _ => &["--fast-path", "off"][..],
            })
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawning vswitch");
        // Killed on drop if it fails to start.
        let mut vswitch = VswitchProcess {
            child: Some(child),
            config,
            ctl,
        };
        let child = vswitch.child.as_mut().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "vswitch exited at start ({status}):\n{}{}",
                    self.log("vswitch.out"),
                    self.log("vswitch.err")
                );
            }
            if ["vp1", "vp2", "vp3", "vup"]
                .iter()
                .all(|p| self.xdp_attached(p))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "vswitch did not attach to vp1..vp3 and vup within 10 s:\n{}",
                self.log("vswitch.err")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.vswitch = Some(vswitch);
    }

    /// Removes backend p2 (10.244.1.3:8080) from service web.
    fn reload_without_p2(&mut self) {
        let rest: Vec<&str> = BACKENDS
            .iter()
            .map(|b| b.1)
            .filter(|b| *b != REMOVED.1)
            .collect();
        match self.dataplane {
            Dataplane::Kernel => self.load_rules(&rest),
            Dataplane::Vswitch
            | Dataplane::VswitchTwoWorkers
            | Dataplane::VswitchFastPath
            | Dataplane::VswitchFastPathTwoWorkers => {
                let config = self.write_config(&rest);
                let vswitch = self.vswitch.as_ref().expect("vswitch running");
                assert_eq!(config, vswitch.config);
                let pid = vswitch.child.as_ref().unwrap().id().to_string();
                let applied = || self.ctl_json(&["show", "stats"])["reloads"]["applied"].clone();
                let before = applied();
                must(&["kill", "-HUP", &pid]);
                let deadline = Instant::now() + Duration::from_secs(10);
                while applied() == before {
                    assert!(Instant::now() < deadline, "the reload was not applied");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Starts `http_probe.py serve 8080 NAME` in namespace `host` and waits until it listens.
    fn serve(&mut self, host: &str, name: &str) {
        let ns = self.ns(host);
        let script = probe_script();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", &script, "serve", "8080"])
            .args([name, "300"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning http_probe.py serve");
        let stdout = child.stdout.take().unwrap();
        self.servers.0.push(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        assert_eq!(line.trim(), "ready", "HTTP server {name} in {host}");
    }

    /// Starts `http_probe.py udp-serve PORT` (a UDP echo) in namespace `host`.
    fn serve_udp(&mut self, host: &str, port: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(host), "python3", &probe_script()])
            .args(["udp-serve", port, "300"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning http_probe.py udp-serve");
        let stdout = child.stdout.take().unwrap();
        self.servers.0.push(child);
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        assert_eq!(line.trim(), "ready", "UDP echo in {host}");
    }

    /// One `BIG_DATAGRAM`-byte UDP datagram from `from` to `host:port`: the address the echo
    /// server saw when the whole datagram came back intact, else "ERR".
    fn udp_echo(&self, from: &str, host: &str, port: &str) -> String {
        let out = exec_bounded(
            &self.ns(from),
            &[
                "python3",
                &probe_script(),
                "udp-get",
                host,
                port,
                BIG_DATAGRAM,
                &CONNECT_TIMEOUT_S.to_string(),
            ],
            Duration::from_secs_f64(CONNECT_TIMEOUT_S + 5.0),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `count` GETs of `url` from namespace `from`, each on a new connection: one answer per
    /// connection ("ERR" for none). Bounded: 2 s per connection, 2 s + 100 ms per connection
    /// for the whole run.
    fn get(&self, from: &str, url: &str, count: usize) -> Vec<String> {
        let total = CONNECT_TIMEOUT_S + 0.1 * count as f64;
        let out = exec_bounded(
            &self.ns(from),
            &[
                "python3",
                &probe_script(),
                "get",
                url,
                &count.to_string(),
                &CONNECT_TIMEOUT_S.to_string(),
                &total.to_string(),
            ],
            Duration::from_secs_f64(total + 5.0),
        );
        let mut answers: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        answers.resize(count, "ERR".to_string());
        answers
    }

    /// `vswitch ctl ... --json`, parsed.
    fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let vswitch = self.vswitch.as_ref().expect("vswitch running");
        let out = Command::new(vswitch_bin())
            .args(["ctl", "--socket", &vswitch.ctl])
            .args(args)
            .arg("--json")
            .output()
            .unwrap();
        assert!(out.status.success(), "ctl {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A worker counter summed over the workers.
    fn worker_counter(&self, name: &str) -> u64 {
        self.ctl_json(&["show", "stats"])["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w[name].as_u64().unwrap_or_else(|| panic!("no {name}: {w}")))
            .sum()
    }

    /// `bytes` over TCP from `from` to `to_ip:5001`, served in `server` (SHA-256 checked).
    fn transfer(&self, from: &str, server: &str, to_ip: &str, bytes: u64) {
        common::tcp_transfer(&self.ns(from), &self.ns(server), to_ip, bytes);
    }

    fn ping(&self, from: &str, to: &str) -> bool {
        exec_bounded(
            &self.ns(from),
            &["ping", "-c", "3", "-i", "0.2", "-W", "1", "-w", "3", to],
            Duration::from_secs(6),
        )
        .status
        .success()
    }

    /// Stops the dataplane: vswitch gets SIGTERM and must exit 0 and detach within 10 s.
    fn finish(mut self) {
        let Some(mut vswitch) = self.vswitch.take() else {
            // Only the kernel path runs without a vswitch; a vswitch dataplane must have one to
            // stop, or this check would pass without looking.
            assert!(
                matches!(self.dataplane, Dataplane::Kernel),
                "{:?}: no vswitch running at the end of the scenario",
                self.dataplane
            );
            return;
        };
        let mut child = vswitch.child.take().unwrap();
        must(&["kill", "-TERM", &child.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "vswitch did not exit within 10 s of SIGTERM:\n{}",
                    self.log("vswitch.err")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(
            status.code(),
            Some(0),
            "vswitch exit status; stdout:\n{}\nstderr:\n{}",
            self.log("vswitch.out"),
            self.log("vswitch.err")
        );
        for port in ["vp1", "vp2", "vp3", "vup"] {
            assert!(!self.xdp_attached(port), "XDP program left on {port}");
        }
    }
}

fn tally(answers: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for a in answers {
        *counts.entry(a.clone()).or_insert(0) += 1;
    }
    counts
}

fn is_backend(answer: &str) -> bool {
    BACKENDS.iter().any(|b| b.0 == answer)
}

/// The ten checks, in order (the reload last: it changes the service).
fn scenario(gw: &mut Gateway) -> Reachability {
    let mut r = Reachability::default();

    // 1. Service VIP from a pod: spread over the three backends.
    let answers = gw.get("p3", VIP_URL, 100);
    r.vip_all_answered = answers.iter().all(|a| is_backend(a));
    r.vip_counts = tally(&answers);
    r.vip_balanced = BACKENDS.iter().all(|(name, _)| {
        let n = r.vip_counts.get(*name).copied().unwrap_or(0);
        (15..=50).contains(&n)
    });

    // 2. NodePort from outside the cluster.
    let answers = gw.get("ex", NODE_PORT_URL, 12);
    r.node_port_from_external = answers.iter().all(|a| is_backend(a));

    // 3. A pod to the outside world, masqueraded to the node address.
    let answers = gw.get("p3", "http://198.19.0.10:8080/", 1);
    r.pod_to_external = answers[0] != "ERR";
    r.external_saw_node_address = answers[0] == "198.18.0.1";

    // 4. Unsolicited inbound straight to a pod address.
    let answers = gw.get("ex", "http://10.244.1.2:8080/", 1);
    r.external_to_pod_dropped = answers[0] == "ERR";

    // 5. The other node's pod, over the host-gw route.
    let answers = gw.get("p3", "http://10.244.2.5:8080/", 1);
    r.pod_to_remote_node_pod = answers[0] == "n2";

    // 6. Hairpin: p1 through the VIP, sometimes to itself.
    let answers = gw.get("p1", VIP_URL, 20);
    r.hairpin_all_answered = answers.iter().all(|a| is_backend(a));
    r.hairpin_reached_self = answers.iter().any(|a| a == "p1");
    r.hairpin_counts = tally(&answers);

    // 7. The gateway answers ICMP echo.
    r.ping_gateway = gw.ping("p3", "10.244.1.1");

    // 8. Fragmented UDP out through masquerade, and the fragmented answer back.
    r.udp_fragments_masqueraded = gw.udp_echo("p3", "198.19.0.10", "8080") == "198.18.0.1";

    // 9. Fragmented UDP through a service to a pod on this node.
    r.udp_fragments_through_service = gw.udp_echo("p3", ECHO_VIP, ECHO_PORT) == "10.244.1.4";

    // 10. Reload without p2: new connections never reach it.
    gw.reload_without_p2();
    let answers = gw.get("p3", VIP_URL, 30);
    r.reload_all_answered = answers.iter().all(|a| is_backend(a));
    r.reload_removed_backend_unused = answers.iter().all(|a| a != REMOVED.0);
    r.reload_counts = tally(&answers);

    r
}

/// Builds the topology on `dataplane`, runs the scenario, tears down (a vswitch must exit 0).
fn reachability(dataplane: Dataplane) -> Reachability {
    let started = Instant::now();
    let mut gw = Gateway::new(dataplane);
    let r = scenario(&mut gw);
    gw.finish();
    eprintln!(
        "{dataplane:?}: {:.1} s: {r:?}",
        started.elapsed().as_secs_f64()
    );
    r
}

#[test]
fn kernel_path_reachability() {
    let Some(_net) = network_test() else { return };
    let r = reachability(Dataplane::Kernel);
    assert_eq!(r, Reachability::expected(), "kernel path");
}

#[test]
fn vswitch_gateway_reachability() {
    let Some(_net) = network_test() else { return };
    let r = reachability(Dataplane::Vswitch);
    assert_eq!(r, Reachability::expected(), "vswitch");
}

#[test]
fn vswitch_gateway_reachability_two_workers() {
    let Some(_net) = network_test() else { return };
    let r = reachability(Dataplane::VswitchTwoWorkers);
    assert_eq!(r, Reachability::expected(), "vswitch with two workers");
}

#[test]
fn vswitch_gateway_reachability_fast_path() {
    let Some(_net) = network_test() else { return };
    let r = reachability(Dataplane::VswitchFastPath);
    assert_eq!(
        r,
        Reachability::expected(),
        "vswitch with the XDP fast path"
    );
}

#[test]
fn vswitch_gateway_reachability_fast_path_two_workers() {
    let Some(_net) = network_test() else { return };
    let r = reachability(Dataplane::VswitchFastPathTwoWorkers);
    assert_eq!(
        r,
        Reachability::expected(),
        "vswitch, fast path, two workers"
    );
}

/// Bulk TCP through the fast path: to a service (DNAT routed one way, the backend's direct
/// reply un-DNATed on the segment the other), masqueraded to an external host, and pod to pod
/// on the segment (untracked). Intact, mostly carried by the XDP programs, counted on the
/// ports, and tracked flows leave the fast path once their connections close.
#[test]
fn vswitch_fast_path_carries_service_and_masqueraded_bulk_traffic() {
    let Some(_net) = network_test() else { return };
    bulk_by_the_fast_path(Dataplane::VswitchFastPath);
}

#[test]
fn vswitch_fast_path_carries_bulk_traffic_with_two_workers() {
    let Some(_net) = network_test() else { return };
    bulk_by_the_fast_path(Dataplane::VswitchFastPathTwoWorkers);
}

fn bulk_by_the_fast_path(dataplane: Dataplane) {
    let gw = Gateway::new(dataplane);
    let rx_before = port_rx_bytes(&gw, "vp3");
    gw.transfer("p3", "p1", BULK_VIP, 30_000_000);
    gw.transfer("p3", "ex", "198.19.0.10", 30_000_000);
    // The workers read the programs' counters once a second.
    std::thread::sleep(Duration::from_millis(1500));
    let fast = gw.worker_counter("fast_path_packets");
    eprintln!("fast path: {}", gw.ctl_json(&["show", "stats"])["workers"]);
    assert!(fast > 20_000, "fast_path_packets = {fast}");
    assert!(gw.worker_counter("fast_path_installed") >= 4);
    let rx = port_rx_bytes(&gw, "vp3") - rx_before;
    assert!(
        rx > 60_000_000,
        "vp3 rx_bytes grew by {rx}: the fast path's are counted"
    );
    // Closed connections (FIN through the switch) leave the fast path.
    assert_eq!(gw.worker_counter("fast_path_flows"), 0);
    // Pod to pod on the segment, untracked: carried as it is, like the bridge's L2 flows.
    gw.transfer("p3", "p1", "10.244.1.2", 30_000_000);
    std::thread::sleep(Duration::from_millis(1500));
    let more = gw.worker_counter("fast_path_packets") - fast;
    assert!(more > 10_000, "pod-to-pod fast_path_packets grew by {more}");
    gw.finish();
}

/// A Kubernetes List of one Service, `bulk` (BULK_VIP:5001) backed by `backends`.
fn bulk_service_list(backends: &[&str]) -> String {
    let endpoints: Vec<String> = backends
        .iter()
        .map(|a| format!(r#"{{"addresses": ["{a}"], "conditions": {{"ready": true}}}}"#))
        .collect();
    format!(
        r#"{{"kind": "List", "items": [
  {{"apiVersion": "v1", "kind": "Service", "metadata": {{"name": "bulk", "namespace": "default"}},
    "spec": {{"type": "ClusterIP", "clusterIP": "{BULK_VIP}", "ports": [{{"port": 5001, "protocol": "TCP", "targetPort": 5001}}]}}}},
  {{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
    "metadata": {{"name": "bulk-1", "namespace": "default", "labels": {{"kubernetes.io/service-name": "bulk"}}}},
    "endpoints": [{}], "ports": [{{"port": 5001, "protocol": "TCP"}}]}}
]}}"#,
        endpoints.join(", ")
    )
}

/// The agent sends the whole cluster on any change and every minute: an import that changes
/// nothing must not be a reload, which would take every flow off the fast path.
#[test]
fn an_import_that_changes_nothing_leaves_the_fast_path_alone() {
    let Some(_serial) = network_test() else {
        return;
    };
    let gw = Gateway::new(Dataplane::VswitchFastPath);
    let import = |backends: &[&str]| {
        let file = gw.dir.0.join("cluster.json");
        std::fs::write(&file, bulk_service_list(backends)).unwrap();
        gw.ctl_json(&["import", file.to_str().unwrap()])
    };
    assert_eq!(import(&["10.244.1.2"])["unchanged"], false);
    // A connection that stays open, idle, once both sides have spoken.
    const SERVER: &str = "import socket, time\n\
s = socket.create_server(('0.0.0.0', 5001))\n\
c, _ = s.accept()\n\
c.sendall(c.recv(1))\n\
time.sleep(30)\n";
    const CLIENT: &str = "import socket, sys, time\n\
c = socket.create_connection((sys.argv[1], 5001), timeout=5)\n\
c.sendall(b'x')\n\
print(c.recv(1).decode(), flush=True)\n\
time.sleep(30)\n";
    let mut server = Command::new("ip")
        .args(["netns", "exec", &gw.ns("p1"), "python3", "-c", SERVER])
        .spawn()
        .unwrap();
    common::wait_listening(&gw.ns("p1"), 5001);
    let mut client = Command::new("ip")
        .args([
            "netns",
            "exec",
            &gw.ns("p3"),
            "python3",
            "-c",
            CLIENT,
            BULK_VIP,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut answer = String::new();
    BufReader::new(client.stdout.take().unwrap())
        .read_line(&mut answer)
        .unwrap();
    assert_eq!(answer.trim(), "x");
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.worker_counter("fast_path_flows") == 0 {
        assert!(
            Instant::now() < deadline,
            "the connection never took the fast path"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let removed = gw.worker_counter("fast_path_removed");

    let same = import(&["10.244.1.2"]);
    assert_eq!(same["unchanged"], true, "{same}");
    // The workers check their entries at least every second after a reload.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(gw.worker_counter("fast_path_removed"), removed);
    assert!(gw.worker_counter("fast_path_flows") > 0);
    // A change is a reload: the entries go (the workers put them back as traffic comes).
    assert_eq!(import(&["10.244.1.2", "10.244.1.3"])["unchanged"], false);
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.worker_counter("fast_path_removed") == removed {
        assert!(
            Instant::now() < deadline,
            "a reload left the fast path as it was"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = (client.kill(), server.kill(), client.wait(), server.wait());
    gw.finish();
}

fn port_rx_bytes(gw: &Gateway, port: &str) -> u64 {
    gw.ctl_json(&["show", "ports"])["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == port)
        .and_then(|p| p["rx_bytes"].as_u64())
        .unwrap_or_else(|| panic!("no {port} in show ports"))
}

#[test]
fn vswitch_matches_kernel_path() {
    let Some(_net) = network_test() else { return };
    let kernel = reachability(Dataplane::Kernel);
    let vswitch = reachability(Dataplane::Vswitch);
    assert_eq!(
        vswitch, kernel,
        "vswitch (left) against the kernel path (right)"
    );
}
