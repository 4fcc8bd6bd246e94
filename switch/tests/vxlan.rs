//! End to end: a VXLAN overlay between Kubernetes nodes, flannel-style (VNI 1, UDP port 4789,
//! one VTEP per node, a static FDB/neighbour entry and an onlink route per peer), with nodes
//! that are either vswitch (`[vxlan]` in the node config) or the Linux kernel set up exactly as
//! flannel's vxlan backend sets a node up. The kernel-only tests are the reference: they check
//! the harness itself and must pass whatever the state of vswitch's VXLAN support.
//!
//! Topology (every name carries a per-process prefix; nothing is created in the root namespace):
//!
//! ```text
//!  node i (namespace n<i>), i = 1..N, on one underlay 198.18.0.0/24:
//!
//!   n<i>p<j> eth0 10.244.i.(10+j)/24 ── vp<j> ┐
//!            MTU 1450, via 10.244.i.1        ├ n<i>: vswitch, or cni0 + flannel.1 ── vup 198.18.0.i/24
//!                                            ┘
//!  two nodes:   n1 vup ════════════ vup n2              (one veth pair)
//!  three nodes: n<i> vup ══ u<i> ─ br0 (namespace ul)   (a bridge, a veth per node)
//! ```
//!
//! Node i's VTEP MAC is 0e:00:00:00:00:0i, its uplink's MAC 02:00:c6:12:00:0i, pod j's MAC
//! 02:00:0a:f4:0i:(10+j) (the last two address bytes, as hex).

mod common;

use common::{exec_bounded, must, network_test, unique_prefix, vswitch_bin, Namespaces};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The overlay's VNI and UDP port (flannel's defaults on Linux).
const VNI: u32 = 1;
const VXLAN_PORT: u16 = 4789;
/// Pods' MTU on an overlay node: the underlay's 1500 less VXLAN's 50 bytes.
const POD_MTU: &str = "1450";
/// The service the service test puts on every node.
const VIP: &str = "10.96.0.10";
const BACKEND_PORT: &str = "8080";
/// Every HTTP connection gives up after this many seconds.
const CONNECT_TIMEOUT_S: f64 = 2.0;
/// Bytes per bulk TCP transfer.
const BIG: u64 = 50_000_000;
const MEDIUM: u64 = 20_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `vswitch --config` with `[vxlan]`, nothing configured in the kernel.
    Vswitch,
    /// The same with `[node] fast_path = "xdp"` (its pods get GRO: NAPI for redirects).
    VswitchFastPath,
    /// The same with two workers (`cores = [0, 1]`): offers from either, legs shared.
    VswitchFastPathTwoWorkers,
    /// A bridge `cni0`, IP forwarding and `flannel.1`, as flannel's vxlan backend does it.
    Kernel,
}

impl Kind {
    fn fast(self) -> bool {
        matches!(
            self,
            Kind::VswitchFastPath | Kind::VswitchFastPathTwoWorkers
        )
    }
}

fn node_addr(i: usize) -> String {
    format!("198.18.0.{i}")
}

fn vtep_mac(i: usize) -> String {
    format!("0e:00:00:00:00:{i:02x}")
}

fn uplink_mac(i: usize) -> String {
    format!("02:00:c6:12:00:{i:02x}")
}

fn pod_cidr(i: usize) -> String {
    format!("10.244.{i}.0/24")
}

fn gateway_addr(i: usize) -> String {
    format!("10.244.{i}.1")
}

fn pod_ip(i: usize, j: usize) -> String {
    format!("10.244.{i}.{}", 10 + j)
}

fn pod_mac(i: usize, j: usize) -> String {
    format!("02:00:0a:f4:{i:02x}:{:02x}", 10 + j)
}

fn script(name: &str) -> String {
    common::repo_root()
        .join("scripts")
        .join(name)
        .to_string_lossy()
        .into_owned()
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

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[derive(Clone, Debug)]
struct Pod {
    /// The node's index (from 1).
    node: usize,
    /// "n<i>p<j>": what its HTTP server answers with.
    name: String,
    ns: String,
    ip: String,
    /// Its veth end in the node namespace.
    port: String,
    /// Its number on the node (from 1).
    j: usize,
}

/// A node: its namespace, and its vswitch while one runs (killed on drop).
struct Node {
    index: usize,
    kind: Kind,
    ns: String,
    ports: Vec<String>,
    vswitch: Option<Child>,
    /// Its vswitch's control socket.
    ctl: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.vswitch.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Long-running helpers (HTTP servers), killed and reaped on drop.
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

/// Kills a child on drop unless it was taken back.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// N nodes on one underlay. Fields drop in order: the vswitches, the servers, the scratch
/// directory, then the namespaces (which kills whatever else still runs in them).
struct Cluster {
    nodes: Vec<Node>,
    servers: Servers,
    dir: tempfile::TempDir,
    namespaces: Namespaces,
    prefix: String,
    pods: Vec<Pod>,
}

impl Cluster {
    /// Builds the topology with `pods` pods per node; vswitch nodes get `extra` appended to
    /// their config (e.g. services) and are started.
    fn new(kinds: &[Kind], pods: usize, extra: &str) -> Cluster {
        Self::build(kinds, pods, extra, |_| {})
    }

    /// As [`Cluster::new`], with `tweak` run after the cabling and before any dataplane starts.
    fn build(kinds: &[Kind], pods: usize, extra: &str, tweak: impl FnOnce(&Cluster)) -> Cluster {
        assert!((2..=9).contains(&kinds.len()) && (1..=9).contains(&pods));
        let prefix = unique_prefix("vxl");
        let mut c = Cluster {
            nodes: Vec::new(),
            servers: Servers::default(),
            dir: tempfile::Builder::new()
                .prefix(&format!("{prefix}-"))
                .tempdir()
                .unwrap(),
            namespaces: Namespaces::default(),
            prefix,
            pods: Vec::new(),
        };
        for (n, &kind) in kinds.iter().enumerate() {
            let i = n + 1;
            let ns = format!("{}n{i}", c.prefix);
            c.namespaces.add(&ns);
            c.nodes.push(Node {
                index: i,
                kind,
                ns,
                ports: (1..=pods).map(|j| format!("vp{j}")).collect(),
                vswitch: None,
                ctl: common::ctl_path(),
            });
            for j in 1..=pods {
                let pod = Pod {
                    node: i,
                    name: format!("n{i}p{j}"),
                    ns: format!("{}n{i}p{j}", c.prefix),
                    ip: pod_ip(i, j),
                    port: format!("vp{j}"),
                    j,
                };
                c.namespaces.add(&pod.ns);
                c.pods.push(pod);
            }
        }
        c.cable_underlay();
        for p in 0..c.pods.len() {
            c.cable_pod(p);
        }
        tweak(&c);
        for n in 0..c.nodes.len() {
            match c.nodes[n].kind {
                Kind::Kernel => c.kernel_node(n),
                Kind::Vswitch | Kind::VswitchFastPath | Kind::VswitchFastPathTwoWorkers => {
                    c.start_vswitch(n, extra)
                }
            }
        }
        c.wait_for_fast_path();
        c
    }

    fn node(&self, i: usize) -> &Node {
        &self.nodes[i - 1]
    }

    /// Two nodes: one veth pair between the uplinks. More: a bridge in namespace `ul`.
    fn cable_underlay(&mut self) {
        if self.nodes.len() == 2 {
            let (a, b) = (self.nodes[0].ns.clone(), self.nodes[1].ns.clone());
            ip(
                &a,
                &[
                    "link", "add", "vup", "type", "veth", "peer", "name", "vup", "netns", &b,
                ],
            );
        } else {
            let ul = format!("{}ul", self.prefix);
            self.namespaces.add(&ul);
            ip(&ul, &["link", "add", "br0", "type", "bridge"]);
            ip(&ul, &["link", "set", "br0", "up"]);
            for n in &self.nodes {
                let side = format!("u{}", n.index);
                ip(
                    &ul,
                    &[
                        "link", "add", &side, "type", "veth", "peer", "name", "vup", "netns", &n.ns,
                    ],
                );
                ip(&ul, &["link", "set", &side, "master", "br0", "up"]);
            }
        }
        for n in &self.nodes {
            ip(
                &n.ns,
                &["link", "set", "vup", "address", &uplink_mac(n.index)],
            );
            ip(&n.ns, &["link", "set", "vup", "up"]);
        }
    }

    fn cable_pod(&self, p: usize) {
        let pod = &self.pods[p];
        let node = self.node(pod.node);
        let j = pod.j;
        ip(
            &pod.ns,
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", &pod.port, "netns", &node.ns,
            ],
        );
        ip(
            &pod.ns,
            &["link", "set", "eth0", "address", &pod_mac(pod.node, j)],
        );
        ip(&pod.ns, &["link", "set", "eth0", "mtu", POD_MTU]);
        ip(
            &pod.ns,
            &["addr", "add", &format!("{}/24", pod.ip), "dev", "eth0"],
        );
        ip(&pod.ns, &["link", "set", "eth0", "up"]);
        ip(
            &pod.ns,
            &["route", "add", "default", "via", &gateway_addr(pod.node)],
        );
        // Pods keep the kernel's default offloads (the switch finishes their checksums).
        if node.kind.fast() {
            in_ns(&pod.ns, &["ethtool", "-K", "eth0", "gro", "on"]);
        }
        if node.kind == Kind::Kernel {
            // The CNI plugin gives both veth ends the pod MTU.
            ip(&node.ns, &["link", "set", &pod.port, "mtu", POD_MTU]);
        }
        ip(&node.ns, &["link", "set", &pod.port, "up"]);
    }

    /// The node as flannel's vxlan backend (and the bridge CNI plugin) set it up.
    fn kernel_node(&self, n: usize) {
        let node = &self.nodes[n];
        let (ns, i) = (&node.ns, node.index);
        ip(
            ns,
            &["addr", "add", &format!("{}/24", node_addr(i)), "dev", "vup"],
        );
        ip(ns, &["link", "add", "cni0", "type", "bridge"]);
        for port in &node.ports {
            ip(ns, &["link", "set", port, "master", "cni0"]);
        }
        ip(
            ns,
            &[
                "addr",
                "add",
                &format!("{}/24", gateway_addr(i)),
                "dev",
                "cni0",
            ],
        );
        ip(ns, &["link", "set", "cni0", "up"]);
        in_ns(ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let (id, port) = (VNI.to_string(), VXLAN_PORT.to_string());
        ip(
            ns,
            &[
                "link",
                "add",
                "flannel.1",
                "type",
                "vxlan",
                "id",
                &id,
                "dstport",
                &port,
                "local",
                &node_addr(i),
                "dev",
                "vup",
                "nolearning",
            ],
        );
        ip(
            ns,
            &[
                "link",
                "set",
                "flannel.1",
                "address",
                &vtep_mac(i),
                "mtu",
                POD_MTU,
            ],
        );
        ip(ns, &["link", "set", "flannel.1", "up"]);
        for peer in self.nodes.iter().filter(|p| p.index != i) {
            let p = peer.index;
            let net = format!("10.244.{p}.0");
            must(&[
                "bridge",
                "-n",
                ns,
                "fdb",
                "append",
                &vtep_mac(p),
                "dev",
                "flannel.1",
                "dst",
                &node_addr(p),
            ]);
            ip(
                ns,
                &[
                    "neigh",
                    "replace",
                    &net,
                    "lladdr",
                    &vtep_mac(p),
                    "dev",
                    "flannel.1",
                    "nud",
                    "permanent",
                ],
            );
            ip(
                ns,
                &[
                    "route",
                    "add",
                    &pod_cidr(p),
                    "via",
                    &net,
                    "dev",
                    "flannel.1",
                    "onlink",
                ],
            );
        }
    }

    fn vswitch_toml(&self, n: usize, extra: &str) -> String {
        let node = &self.nodes[n];
        let i = node.index;
        let ports = node
            .ports
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let next_hop = node_addr(if i == 1 { 2 } else { 1 });
        let fast_path = if node.kind.fast() { "xdp" } else { "off" };
        let cores = match node.kind {
            Kind::VswitchFastPathTwoWorkers => "cores = [0, 1]",
            _ => "",
        };
        let mut toml = format!(
            r#"[node]
xdp_mode = "auto"
fast_path = "{fast_path}"
{cores}

[pods]
ports = [{ports}]
gateway = "{gw}/24"

[uplink]
port = "vup"
address = "{addr}/24"
next_hop = "{next_hop}"
masquerade = true
cluster_cidrs = ["10.244.0.0/16", "10.96.0.0/12"]

[vxlan]
vni = {VNI}
udp_port = {VXLAN_PORT}
mac = "{mac}"
"#,
            gw = gateway_addr(i),
            addr = node_addr(i),
            mac = vtep_mac(i),
        );
        for peer in self.nodes.iter().filter(|p| p.index != i) {
            toml += &format!(
                "\n[[vxlan.peer]]\ncidr = \"{}\"\nvtep = \"{}\"\nmac = \"{}\"\n",
                pod_cidr(peer.index),
                node_addr(peer.index),
                vtep_mac(peer.index)
            );
        }
        toml + extra
    }

    fn log_path(&self, i: usize, what: &str) -> PathBuf {
        self.dir.path().join(format!("vswitch{i}.{what}"))
    }

    fn log(&self, i: usize, what: &str) -> String {
        std::fs::read_to_string(self.log_path(i, what)).unwrap_or_default()
    }

    fn xdp_attached(ns: &str, port: &str) -> bool {
        let out = Command::new("ip")
            .args(["-n", ns, "-d", "link", "show", "dev", port])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }

    /// Starts vswitch on node `n` and waits until every port carries its program.
    fn start_vswitch(&mut self, n: usize, extra: &str) {
        let i = self.nodes[n].index;
        let config = self.dir.path().join(format!("node{i}.toml"));
        std::fs::write(&config, self.vswitch_toml(n, extra)).unwrap();
        let stdout = std::fs::File::create(self.log_path(i, "out")).unwrap();
        let stderr = std::fs::File::create(self.log_path(i, "err")).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.nodes[n].ns,
                vswitch_bin(),
                "--ctl",
                &self.nodes[n].ctl,
                "--config",
            ])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawning vswitch");
        self.nodes[n].vswitch = Some(child);
        let ns = self.nodes[n].ns.clone();
        let mut ports = self.nodes[n].ports.clone();
        ports.push("vup".into());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let child = self.nodes[n].vswitch.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "node {i}: vswitch exited at start ({status}); config {}:\n{}\nstdout:\n{}\nstderr:\n{}",
                    config.display(),
                    std::fs::read_to_string(&config).unwrap_or_default(),
                    self.log(i, "out"),
                    self.log(i, "err")
                );
            }
            if ports.iter().all(|p| Self::xdp_attached(&ns, p)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {i}: vswitch did not attach to {ports:?} within 10 s:\n{}",
                self.log(i, "err")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops every vswitch: SIGTERM, exit 0 within 10 s, programs detached. Returns each
    /// vswitch node's stdout (its counters) by node index.
    fn finish(mut self) -> BTreeMap<usize, String> {
        let mut outputs = BTreeMap::new();
        for n in 0..self.nodes.len() {
            let Some(status) = self.stop(n) else { continue };
            let i = self.nodes[n].index;
            assert_eq!(
                status,
                Some(0),
                "node {i}: vswitch exit status; stdout:\n{}\nstderr:\n{}",
                self.log(i, "out"),
                self.log(i, "err")
            );
            let node = &self.nodes[n];
            for port in node.ports.iter().map(String::as_str).chain(["vup"]) {
                assert!(
                    !Self::xdp_attached(&node.ns, port),
                    "node {i}: XDP program left on {port}"
                );
            }
            outputs.insert(i, self.log(i, "out"));
        }
        outputs
    }

    /// `vswitch ctl show WHAT --json` of node `n` (null while it does not answer).
    fn show(&self, n: usize, what: &str) -> serde_json::Value {
        let out = Command::new(vswitch_bin())
            .args([
                "ctl",
                "--socket",
                &self.nodes[n].ctl,
                "show",
                what,
                "--json",
            ])
            .output()
            .expect("running vswitch ctl");
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// Node `n`'s overlay legs in use (`show stats`), once 0 or after `wait`.
    fn overlay_legs_within(&self, n: usize, wait: Duration) -> u64 {
        let deadline = Instant::now() + wait;
        loop {
            let legs = self.show(n, "stats")["fast_path_overlay_legs"]
                .as_u64()
                .unwrap_or(u64::MAX);
            if legs == 0 || Instant::now() > deadline {
                return legs;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every port of every fast-path node is on the fast path (a node's uplink
    /// joins once the other node's switch runs: its XDP program gives the veth NAPI; a kernel
    /// node's end needs GRO).
    fn wait_for_fast_path(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        for n in 0..self.nodes.len() {
            if !self.nodes[n].kind.fast() {
                continue;
            }
            loop {
                let ports = self.show(n, "ports");
                let states: Vec<_> = ports["ports"]
                    .as_array()
                    .map(|a| a.iter().map(|p| p["fast_path"].as_bool()).collect())
                    .unwrap_or_default();
                if !states.is_empty() && states.iter().all(|s| *s == Some(true)) {
                    break;
                }
                if Instant::now() > deadline {
                    let msg = format!("node {n}: ports not on the fast path: {ports}");
                    self.fail(&msg);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// SIGTERM to node `n`'s vswitch and wait (10 s at most, then SIGKILL). `None` when no
    /// vswitch runs there; else its exit code (`Some(None)`: killed).
    fn stop(&mut self, n: usize) -> Option<Option<i32>> {
        let mut child = self.nodes[n].vswitch.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status.code());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Some(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails the test with `msg`, after stopping every vswitch so that its counters are shown.
    fn fail(&mut self, msg: &str) -> ! {
        let mut report = String::new();
        for n in 0..self.nodes.len() {
            if let Some(code) = self.stop(n) {
                let i = self.nodes[n].index;
                report += &format!(
                    "\n--- node {i}: vswitch exit {code:?}; stdout:\n{}--- stderr:\n{}",
                    self.log(i, "out"),
                    self.log(i, "err")
                );
            }
        }
        panic!("{msg}{report}");
    }

    fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            let msg = msg();
            self.fail(&msg);
        }
    }

    fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Pings `to` from `from`: three answers within 4 s (ping sends more while waiting).
    fn ping_args(to: &str) -> Vec<String> {
        ["ping", "-c", "3", "-i", "0.2", "-W", "1", "-w", "4", to]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Pings every (from, to) pair at once; returns the pairs that failed, with ping's output.
    fn ping_pairs(&self, pairs: &[(&Pod, &Pod)]) -> Vec<String> {
        std::thread::scope(|s| {
            let handles: Vec<_> = pairs
                .iter()
                .map(|(from, to)| {
                    s.spawn(move || {
                        let args = Self::ping_args(&to.ip);
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        let out = exec_bounded(&from.ns, &args, Duration::from_secs(7));
                        (out.status.success(), text(&out))
                    })
                })
                .collect();
            handles
                .into_iter()
                .zip(pairs)
                .filter_map(|(h, (from, to))| {
                    let (ok, out) = h.join().unwrap();
                    (!ok).then(|| format!("{} -> {} ({}): {out}", from.name, to.name, to.ip))
                })
                .collect()
        })
    }

    /// Every pod pings every other pod (`across_only`: only pods on other nodes).
    fn ping_all(&mut self, across_only: bool) {
        let pods = self.pods.clone();
        let pairs: Vec<(&Pod, &Pod)> = pods
            .iter()
            .flat_map(|a| pods.iter().map(move |b| (a, b)))
            .filter(|(a, b)| a.name != b.name && (!across_only || a.node != b.node))
            .collect();
        let failed = self.ping_pairs(&pairs);
        self.check(failed.is_empty(), || {
            format!(
                "{} of {} pod pairs do not ping:\n{}",
                failed.len(),
                pairs.len(),
                failed.join("\n")
            )
        });
    }

    /// `bytes` of random data from pod `from` to pod `to` over TCP port `port`; the receiver
    /// must count the same bytes and SHA-256. Bounded: 5 s for the server to listen, 120 s for
    /// the transfer.
    fn transfer(&self, from: &str, to: &str, bytes: u64, port: u16) -> Result<(), String> {
        let (from, to) = (self.pod(from), self.pod(to));
        let script = script("tcp_transfer.py");
        let port = port.to_string();
        let server = Command::new("ip")
            .args(["netns", "exec", &to.ns, "python3", &script, "serve", &port])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning tcp_transfer.py serve");
        let mut server = Guard(Some(server));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = in_ns(&to.ns, &["ss", "-Hltn", &format!("sport = :{port}")]);
            if !out.trim().is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{}: server not listening within 5 s", to.name));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let started = Instant::now();
        let sent = exec_bounded(
            &from.ns,
            &[
                "python3",
                &script,
                "send",
                &to.ip,
                &port,
                &bytes.to_string(),
            ],
            Duration::from_secs(120),
        );
        let what = format!("{} -> {} ({bytes} bytes)", from.name, to.name);
        if !sent.status.success() {
            return Err(format!(
                "{what}: sender failed after {:.1} s: {}",
                started.elapsed().as_secs_f64(),
                text(&sent)
            ));
        }
        let mut child = server.0.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let received = child.wait_with_output().unwrap();
        let sent = String::from_utf8_lossy(&sent.stdout).trim().to_string();
        let got = String::from_utf8_lossy(&received.stdout).trim().to_string();
        if !sent.starts_with(&format!("{bytes} ")) || got != sent {
            return Err(format!(
                "{what}: sender said {sent:?}, receiver {got:?} {}",
                String::from_utf8_lossy(&received.stderr)
            ));
        }
        eprintln!("{what}: {:.1} s", started.elapsed().as_secs_f64());
        Ok(())
    }

    fn must_transfer(&mut self, from: &str, to: &str, bytes: u64, port: u16) {
        if let Err(e) = self.transfer(from, to, bytes, port) {
            self.fail(&e);
        }
    }

    /// Starts `http_probe.py serve 8080 NAME` in every pod and waits until each listens.
    fn serve_http(&mut self) {
        let probe = script("http_probe.py");
        for pod in &self.pods {
            let mut child = Command::new("ip")
                .args(["netns", "exec", &pod.ns, "python3", &probe, "serve"])
                .args([BACKEND_PORT, &pod.name, "300"])
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
            assert_eq!(line.trim(), "ready", "HTTP server in {}", pod.name);
        }
    }

    /// `count` GETs of `url` from pod `from`, each on a new connection: one answer per
    /// connection ("ERR" for none).
    fn get(&self, from: &str, url: &str, count: usize) -> Vec<String> {
        let total = CONNECT_TIMEOUT_S + 0.2 * count as f64;
        let out = exec_bounded(
            &self.pod(from).ns,
            &[
                "python3",
                &script("http_probe.py"),
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
}

/// The counters on vswitch's `gateway:` lines (only those that moved are printed).
fn gateway_counter(stdout: &str, name: &str) -> u64 {
    stdout
        .lines()
        .filter(|l| l.starts_with("gateway:"))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map_or(0, |(_, v)| v.parse().unwrap_or(0))
}

/// Stops the cluster (every vswitch exits 0) and checks that each vswitch node encapsulated
/// and decapsulated, and each fast-path node did some of it by XDP.
fn finish_overlay(cluster: Cluster) {
    let fast: Vec<usize> = (cluster.nodes.iter())
        .filter(|n| n.kind.fast())
        .map(|n| n.index)
        .collect();
    for (i, out) in cluster.finish() {
        let enc = gateway_counter(&out, "vxlan_encapsulated");
        let dec = gateway_counter(&out, "vxlan_decapsulated");
        assert!(
            enc > 0 && dec > 0,
            "node {i}: vxlan_encapsulated={enc} vxlan_decapsulated={dec}; stdout:\n{out}"
        );
        if fast.contains(&i) {
            let by_xdp = port_counter(&out, "vup", "tx_fast_path_packets");
            assert!(
                by_xdp > 0,
                "node {i}: nothing into the overlay by XDP; stdout:\n{out}"
            );
        }
    }
}

/// Two nodes of these kinds, two pods each: every pod pings every pod on the other node, and
/// `bytes` go each way between pods on different nodes.
fn ping_and_transfer(kinds: [Kind; 2], bytes: u64) {
    let started = Instant::now();
    let mut c = Cluster::new(&kinds, 2, "");
    c.ping_all(true);
    c.must_transfer("n1p1", "n2p1", bytes, 5001);
    c.must_transfer("n2p2", "n1p2", bytes, 5002);
    eprintln!("{kinds:?}: {:.1} s", started.elapsed().as_secs_f64());
    finish_overlay(c);
}

/// Raises a pod's MTU to 1500 and, on a kernel node, its bridge port's too (the kernel drops
/// frames larger than the receiving veth end's MTU; a vswitch port keeps the default 1500).
fn raise_mtu(c: &Cluster, pod: &str) {
    let pod = c.pod(pod);
    ip(&pod.ns, &["link", "set", "eth0", "mtu", "1500"]);
    let node = c.node(pod.node);
    if node.kind == Kind::Kernel {
        ip(&node.ns, &["link", "set", &pod.port, "mtu", "1500"]);
    }
}

/// The path MTU to `to` that pod `from` has cached ("" when none).
fn cached_mtu(c: &Cluster, from: &str, to: &str) -> String {
    let out = in_ns(&c.pod(from).ns, &["ip", "route", "get", &c.pod(to).ip]);
    out.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .unwrap_or("")
        .to_string()
}

/// Pod n1p1 has MTU 1500 (and so has n2p1, so that TCP's MSS does not hide the overlay's
/// smaller MTU): a 1500-byte DF ping to n2p2 is answered with fragmentation needed (MTU 1450)
/// by node 1, a 1450-byte DF ping passes, and 20 MB of TCP n1p1 → n2p1 arrive after path MTU
/// discovery (n1p1 caches MTU 1450 for n2p1).
fn pmtu(kinds: [Kind; 2]) {
    let mut c = Cluster::build(&kinds, 2, "", |c| {
        raise_mtu(c, "n1p1");
        raise_mtu(c, "n2p1");
    });
    c.ping_all(true);
    let (a, b2) = (c.pod("n1p1").ns.clone(), c.pod("n2p2").ip.clone());
    let fits = exec_bounded(
        &a,
        &[
            "ping", "-M", "do", "-s", "1422", "-c", "3", "-i", "0.2", "-W", "1", "-w", "4", &b2,
        ],
        Duration::from_secs(7),
    );
    c.check(fits.status.success(), || {
        format!("1450-byte DF ping n1p1 -> n2p2: {}", text(&fits))
    });
    let big = exec_bounded(
        &a,
        &[
            "ping", "-M", "do", "-s", "1472", "-c", "3", "-i", "0.2", "-W", "1", "-w", "3", &b2,
        ],
        Duration::from_secs(6),
    );
    let out = text(&big);
    let told = out.contains("Frag needed") || out.contains("message too long");
    c.check(
        !big.status.success() && told && out.contains("1450"),
        || format!("1500-byte DF ping n1p1 -> n2p2: no fragmentation needed with MTU 1450:\n{out}"),
    );
    let cached = cached_mtu(&c, "n1p1", "n2p2");
    c.check(cached == "1450", || {
        format!("n1p1's path MTU to n2p2 is {cached:?} after the DF ping, not 1450:\n{out}")
    });
    // Nothing cached yet towards n2p1: TCP starts with 1500-byte segments.
    let before = cached_mtu(&c, "n1p1", "n2p1");
    c.check(before.is_empty(), || {
        format!("n1p1 already has path MTU {before} to n2p1")
    });
    c.must_transfer("n1p1", "n2p1", MEDIUM, 5003);
    let after = cached_mtu(&c, "n1p1", "n2p1");
    c.check(after == "1450", || {
        format!("n1p1's path MTU to n2p1 after the transfer is {after:?}, not 1450")
    });
    finish_overlay(c);
}

/// The underlay's MTU lowered while the switches run: what fits the overlay follows it, and a
/// pod's DF packet that no longer fits is answered with the new inner MTU.
#[test]
fn the_overlay_follows_an_uplink_mtu_change() {
    let Some(_net) = network_test() else { return };
    let mut c = Cluster::new(&[Kind::Vswitch, Kind::Vswitch], 2, "");
    c.ping_all(true);
    let (a, b2) = (c.pod("n1p1").ns.clone(), c.pod("n2p2").ip.clone());
    let df_ping = |size: &str| {
        let args = [
            "ping", "-M", "do", "-s", size, "-c", "3", "-i", "0.2", "-W", "1", "-w", "3", &b2,
        ];
        exec_bounded(&a, &args, Duration::from_secs(6))
    };
    // 1,428 bytes of IP: fits 1450 (the pods' MTU, the underlay's 1500 less 50).
    let before = df_ping("1400");
    c.check(before.status.success(), || {
        format!("1428-byte DF ping before: {}", text(&before))
    });
    for node in [1, 2] {
        ip(&c.node(node).ns, &["link", "set", "vup", "mtu", "1400"]);
    }
    // The switches check their ports' MTUs twice a second: tried until they have seen it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let after = df_ping("1400");
        if text(&after).contains("1350") || Instant::now() > deadline {
            break after;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let out = text(&after);
    let told = out.contains("Frag needed") || out.contains("message too long");
    c.check(!after.status.success() && told && out.contains("1350"), || {
        format!("1428-byte DF ping after the underlay went to 1400: no fragmentation needed with MTU 1350:\n{out}")
    });
    let fits = df_ping("1322");
    c.check(fits.status.success(), || {
        format!("1350-byte DF ping after: {}", text(&fits))
    });
    finish_overlay(c);
}

#[test]
fn kernel_flannel_two_nodes() {
    let Some(_net) = network_test() else { return };
    ping_and_transfer([Kind::Kernel, Kind::Kernel], BIG);
}

#[test]
fn kernel_flannel_pmtu() {
    let Some(_net) = network_test() else { return };
    pmtu([Kind::Kernel, Kind::Kernel]);
}

#[test]
fn kernel_flannel_three_nodes() {
    let Some(_net) = network_test() else { return };
    let mut c = Cluster::new(&[Kind::Kernel; 3], 2, "");
    c.ping_all(false);
    finish_overlay(c);
}

#[test]
fn two_vswitch_nodes_ping_and_transfer() {
    let Some(_net) = network_test() else { return };
    ping_and_transfer([Kind::Vswitch, Kind::Vswitch], BIG);
}

/// With the fast path on, the same traffic works as without, and the bulk of it is carried by
/// XDP both ways: encapsulated into the uplink, decapsulated into the pods.
#[test]
fn two_vswitch_nodes_on_the_fast_path_ping_and_transfer() {
    let Some(_net) = network_test() else { return };
    bulk_by_the_overlay_fast_path(Kind::VswitchFastPath);
}

#[test]
fn two_vswitch_nodes_on_the_fast_path_with_two_workers_each() {
    let Some(_net) = network_test() else { return };
    bulk_by_the_overlay_fast_path(Kind::VswitchFastPathTwoWorkers);
}

fn bulk_by_the_overlay_fast_path(kind: Kind) {
    let mut c = Cluster::new(&[kind, kind], 2, "");
    c.ping_all(true);
    c.must_transfer("n1p1", "n2p1", BIG, 5001);
    c.must_transfer("n2p2", "n1p2", BIG, 5002);
    // Once the connections closed, their flows leave the fast path with their overlay legs.
    for n in 0..2 {
        let legs = c.overlay_legs_within(n, Duration::from_secs(10));
        c.check(legs == 0, || {
            format!("node {n}: {legs} overlay legs still in use")
        });
    }
    let outputs = c.finish();
    for (i, out) in &outputs {
        // 50 MB is about 34,000 full segments each way; most must have taken XDP.
        let encapsulated = port_counter(out, "vup", "tx_fast_path_packets");
        let decapsulated: u64 = ["vp1", "vp2"]
            .iter()
            .map(|p| port_counter(out, p, "tx_fast_path_packets"))
            .sum();
        assert!(
            encapsulated > 20_000 && decapsulated > 20_000,
            "node {i}: into the overlay by XDP {encapsulated}, out of it {decapsulated}; stdout:\n{out}"
        );
        if kind == Kind::VswitchFastPathTwoWorkers {
            assert!(out.contains("with 2 workers"), "node {i}: {out}");
        }
        let by_workers = gateway_counter(out, "vxlan_encapsulated");
        assert!(
            by_workers < encapsulated,
            "node {i}: the workers encapsulated {by_workers}, XDP {encapsulated}"
        );
    }
}

/// What node 2's pod accepts of UDP datagrams from node 1's pod across the overlay (complete,
/// partial and wrong checksums) and the TTLs they arrive with, two nodes of `kind`.
fn udp_across_the_overlay(kind: Kind) -> String {
    let mut c = Cluster::new(&[kind, kind], 1, "");
    c.ping_all(true);
    let (from, to) = (c.pod("n1p1"), c.pod("n2p1"));
    let (from_ns, from_ip, to_ns, to_ip) = (
        from.ns.clone(),
        from.ip.clone(),
        to.ns.clone(),
        to.ip.clone(),
    );
    let neigh = in_ns(&from_ns, &["ip", "neigh", "show", &gateway_addr(1)]);
    let gateway_mac = neigh
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or_else(|| panic!("no gateway MAC in {neigh:?}"))
        .to_string();
    let rawframe = script("rawframe.py");
    let mut counter = Command::new("ip")
        .args([
            "netns",
            "exec",
            &to_ns,
            "python3",
            &rawframe,
            "udp-count",
            "7777",
            "3",
            "ttl",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning the counter");
    let mut out = std::io::BufReader::new(counter.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    for (mode, n) in [("good", 50), ("partial", 50), ("wrong", 50), ("good", 50)] {
        in_ns(
            &from_ns,
            &[
                "python3",
                &rawframe,
                "udp",
                "eth0",
                &gateway_mac,
                &pod_mac(1, 1),
                &from_ip,
                &to_ip,
                "7777",
                mode,
                &n.to_string(),
            ],
        );
    }
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    counter.wait().unwrap();
    let outputs = c.finish();
    if kind.fast() {
        let encapsulated = port_counter(&outputs[&1], "vup", "tx_fast_path_packets");
        let decapsulated = port_counter(&outputs[&2], "vp1", "tx_fast_path_packets");
        assert!(
            encapsulated >= 100 && decapsulated >= 100,
            "the datagrams after the first went by XDP: {encapsulated} in, {decapsulated} out"
        );
    }
    line.trim().to_string()
}

/// The pods see the same across the overlay with the fast path and without: the datagrams
/// whose checksums are complete or left to offload, none of the wrong ones, each routed twice.
#[test]
fn pods_see_the_same_across_the_overlay_with_and_without_the_fast_path() {
    let Some(_net) = network_test() else { return };
    let slow = udp_across_the_overlay(Kind::Vswitch);
    let fast = udp_across_the_overlay(Kind::VswitchFastPath);
    assert_eq!(slow, "good=100 partial=50 ttls=62");
    assert_eq!(fast, slow);
}

/// A port's non-traffic counter as vswitch prints it at exit (`drops on PORT: name=N ...`,
/// `also on PORT: ...`).
fn port_counter(stdout: &str, port: &str, name: &str) -> u64 {
    let prefixes = [format!("drops on {port}: "), format!("also on {port}: ")];
    stdout
        .lines()
        .filter_map(|l| prefixes.iter().find_map(|p| l.strip_prefix(p.as_str())))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map_or(0, |(_, v)| v.parse().unwrap_or(0))
}

#[test]
fn service_backends_spread_over_two_nodes() {
    let Some(_net) = network_test() else { return };
    services_over_two_nodes(Kind::Vswitch);
}

#[test]
fn service_backends_spread_over_two_fast_path_nodes() {
    let Some(_net) = network_test() else { return };
    services_over_two_nodes(Kind::VswitchFastPath);
}

fn services_over_two_nodes(kind: Kind) {
    // Pods 1 and 2 of each node are backends; pod 3 of each node is a client.
    let backends = [(1, 1), (1, 2), (2, 1), (2, 2)]
        .map(|(i, j)| format!("\"{}:{BACKEND_PORT}\"", pod_ip(i, j)))
        .join(", ");
    let service = format!(
        "\n[[service]]\nname = \"web\"\ncluster_ip = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\nbackends = [{backends}]\n"
    );
    let mut c = Cluster::new(&[kind, kind], 3, &service);
    c.serve_http();
    let url = format!("http://{VIP}:80/");
    for client in ["n1p3", "n2p3"] {
        let answers = c.get(client, &url, 24);
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for a in &answers {
            *counts.entry(a.as_str()).or_default() += 1;
        }
        let is_backend = |a: &str| ["n1p1", "n1p2", "n2p1", "n2p2"].contains(&a);
        let all = answers.iter().all(|a| is_backend(a));
        let both = ["n1", "n2"]
            .iter()
            .all(|n| answers.iter().any(|a| is_backend(a) && a.starts_with(n)));
        c.check(all && both, || {
            format!("{client} -> {VIP}:80, 24 connections: answers {counts:?} (want every one answered, by backends on both nodes)")
        });
    }
    finish_overlay(c);
}

#[test]
fn pmtu_discovery_over_the_overlay() {
    let Some(_net) = network_test() else { return };
    pmtu([Kind::Vswitch, Kind::Vswitch]);
}

/// Packets too long for the overlay are not the fast path's: the switch answers them.
#[test]
fn pmtu_discovery_over_the_overlay_on_the_fast_path() {
    let Some(_net) = network_test() else { return };
    pmtu([Kind::VswitchFastPath, Kind::VswitchFastPath]);
}

#[test]
fn interop_vswitch_and_kernel_flannel() {
    let Some(_net) = network_test() else { return };
    ping_and_transfer([Kind::Vswitch, Kind::Kernel], MEDIUM);
}

/// A fast-path node and a kernel flannel node: the kernel's VXLAN is taken apart by XDP, and
/// ours goes out by it once the kernel node's end of the underlay has NAPI (GRO, as a NIC's
/// driver has). The kernel node's pod 1 leaves its checksums to offload (the kernel's VXLAN
/// then computes the outer checksum as for the finished segment), pod 2 finishes its own.
#[test]
fn interop_vswitch_fast_path_and_kernel_flannel() {
    let Some(_net) = network_test() else { return };
    let mut c = Cluster::build(&[Kind::VswitchFastPath, Kind::Kernel], 2, "", |c| {
        in_ns(&c.node(2).ns, &["ethtool", "-K", "vup", "gro", "on"]);
        in_ns(&c.pod("n2p2").ns, &["ethtool", "-K", "eth0", "tx", "off"]);
    });
    c.ping_all(true);
    c.must_transfer("n1p1", "n2p1", MEDIUM, 5001);
    c.must_transfer("n2p2", "n1p2", MEDIUM, 5002);
    c.must_transfer("n2p1", "n1p1", MEDIUM, 5003);
    let out = c.finish().remove(&1).expect("node 1 is a vswitch");
    let encapsulated = port_counter(&out, "vup", "tx_fast_path_packets");
    for pod in ["vp1", "vp2"] {
        let decapsulated = port_counter(&out, pod, "tx_fast_path_packets");
        assert!(
            encapsulated > 2_000 && decapsulated > 2_000,
            "into the overlay by XDP {encapsulated}, out of it to {pod} {decapsulated}; stdout:\n{out}"
        );
    }
}

#[test]
fn three_nodes_two_vswitch_one_kernel() {
    let Some(_net) = network_test() else { return };
    let mut c = Cluster::new(&[Kind::Vswitch, Kind::Vswitch, Kind::Kernel], 2, "");
    c.ping_all(false);
    finish_overlay(c);
}

/// Three nodes on an underlay bridge, two with the fast path (the bridge's ports get GRO: NAPI
/// for what XDP redirects into the uplinks): each fast-path node has a leg to each peer, and
/// TCP between every pair of nodes goes by them.
#[test]
fn three_nodes_two_fast_path_one_kernel() {
    let Some(_net) = network_test() else { return };
    let kinds = [Kind::VswitchFastPath, Kind::VswitchFastPath, Kind::Kernel];
    let mut c = Cluster::build(&kinds, 2, "", |c| {
        let ul = format!("{}ul", c.prefix);
        for i in 1..=3 {
            in_ns(&ul, &["ethtool", "-K", &format!("u{i}"), "gro", "on"]);
        }
    });
    c.ping_all(false);
    c.must_transfer("n1p1", "n2p1", MEDIUM, 5001);
    c.must_transfer("n1p2", "n3p1", MEDIUM, 5002);
    c.must_transfer("n3p2", "n2p2", MEDIUM, 5003);
    finish_overlay(c);
}

/// The committed capture of the kernel's VXLAN encapsulation (see its header) matches this
/// harness's addressing: outer 198.18.0.1 → 198.18.0.2 between the fixed uplink MACs, UDP to
/// 4789, VNI 1, inner frame between the VTEP MACs carrying an echo request n1p1 → n2p1.
#[test]
fn kernel_capture_fixture_matches_the_topology() {
    let path = common::repo_root().join("pipeline/tests/fixtures/kernel_vxlan_icmp.hex");
    let frame = read_hex_fixture(&path);
    let mac = |s: String| -> Vec<u8> {
        s.split(':')
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    };
    let ipv4 = |s: String| -> Vec<u8> { s.split('.').map(|b| b.parse().unwrap()).collect() };
    assert_eq!(frame[0..6], mac(uplink_mac(2)), "outer destination MAC");
    assert_eq!(frame[6..12], mac(uplink_mac(1)), "outer source MAC");
    assert_eq!(frame[12..14], [0x08, 0x00], "outer ethertype");
    let outer = &frame[14..34];
    assert_eq!(outer[0], 0x45, "outer IPv4 without options");
    assert_eq!(outer[9], 17, "outer protocol UDP");
    assert_eq!(outer[12..16], ipv4(node_addr(1)), "outer source");
    assert_eq!(outer[16..20], ipv4(node_addr(2)), "outer destination");
    let udp = &frame[34..42];
    assert_eq!(
        u16::from_be_bytes([udp[2], udp[3]]),
        VXLAN_PORT,
        "UDP destination port"
    );
    assert_eq!(
        usize::from(u16::from_be_bytes([udp[4], udp[5]])),
        frame.len() - 34,
        "UDP length"
    );
    let vxlan = &frame[42..50];
    assert_eq!(vxlan[0], 0x08, "VXLAN flags: I");
    assert_eq!(
        u32::from_be_bytes([0, vxlan[4], vxlan[5], vxlan[6]]),
        VNI,
        "VNI"
    );
    let inner = &frame[50..];
    assert_eq!(inner[0..6], mac(vtep_mac(2)), "inner destination MAC");
    assert_eq!(inner[6..12], mac(vtep_mac(1)), "inner source MAC");
    assert_eq!(inner[12..14], [0x08, 0x00], "inner ethertype");
    assert_eq!(inner[14 + 9], 1, "inner protocol ICMP");
    assert_eq!(inner[14 + 12..14 + 16], ipv4(pod_ip(1, 1)), "inner source");
    assert_eq!(
        inner[14 + 16..14 + 20],
        ipv4(pod_ip(2, 1)),
        "inner destination"
    );
    assert_eq!(inner[14 + 20], 8, "inner ICMP echo request");
}

/// A fixture file: `#` comment lines, then the frame as hex (whitespace ignored).
fn read_hex_fixture(path: &Path) -> Vec<u8> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let hex: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    assert!(hex.len().is_multiple_of(2), "odd number of hex digits");
    (0..hex.len())
        .step_by(2)
        .map(|k| u8::from_str_radix(&hex[k..k + 2], 16).expect("hex"))
        .collect()
}

/// A 9000-byte underlay carries pods at 8950: jumbo frames (multi-buffer chains) are
/// encapsulated and decapsulated whole, with DF, both ways.
#[test]
fn jumbo_underlay_carries_8950_byte_pods() {
    let Some(_net) = network_test() else { return };
    jumbo_underlay(Kind::Vswitch);
}

/// Frames of several buffers into and out of the overlay by XDP (the pods finish their own
/// checksums: a segment left to offload longer than the program sums goes to the workers).
#[test]
fn jumbo_underlay_carries_8950_byte_pods_on_the_fast_path() {
    let Some(_net) = network_test() else { return };
    jumbo_underlay(Kind::VswitchFastPath);
}

fn jumbo_underlay(kind: Kind) {
    let mut c = Cluster::build(&[kind, kind], 1, "", |c| {
        for n in &c.nodes {
            ip(&n.ns, &["link", "set", "vup", "mtu", "9000"]);
        }
        for p in &c.pods {
            ip(&p.ns, &["link", "set", "eth0", "mtu", "8950"]);
            ip(&c.node(p.node).ns, &["link", "set", &p.port, "mtu", "8950"]);
            if kind.fast() {
                in_ns(&p.ns, &["ethtool", "-K", "eth0", "tx", "off"]);
            }
        }
    });
    let (from, to) = (c.pod("n1p1").clone(), c.pod("n2p1").clone());
    // 8922 bytes of ICMP payload: an 8950-byte packet, DF set.
    let out = in_ns(
        &from.ns,
        &[
            "ping", "-c", "2", "-W", "2", "-M", "do", "-s", "8922", &to.ip,
        ],
    );
    if !out.contains(" 0% packet loss") {
        c.fail(&format!("8950-byte DF ping over a 9000 underlay:\n{out}"));
    }
    c.must_transfer("n1p1", "n2p1", 20_000_000, 5001);
    c.must_transfer("n2p1", "n1p1", 20_000_000, 5002);
    if kind.fast() {
        let outputs = c.finish();
        for (i, out) in &outputs {
            // 20 MB is about 2,300 full 8,950-byte packets each way.
            let into = port_counter(out, "vup", "tx_fast_path_packets");
            let out_of = port_counter(out, "vp1", "tx_fast_path_packets");
            assert!(
                into > 1_000 && out_of > 1_000,
                "node {i}: jumbo frames by XDP {into} in, {out_of} out; stdout:\n{out}"
            );
        }
        return;
    }
    finish_overlay(c);
}
