//! `vswitch-cni` driven as a container runtime drives a CNI plugin (exec with `CNI_*`
//! variables and the configuration on stdin, a conflist's plugins chained with `prevResult`),
//! against Debian's reference plugins (`host-local` for addresses, `portmap` chained after
//! it), beside the reference `bridge` plugin on the same scenario.
//!
//! The plugins run inside a node namespace (`ip netns exec NODE ...`), so the host-side veths
//! and the switch live there; each pod is a namespace the test makes. `vswitch-cni` is found
//! next to `vswitch` in the target directory: `cargo test --workspace` builds both.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NET: &str = "vswitch";
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

fn cni_bin() -> PathBuf {
    let bin = Path::new(vswitch_bin()).with_file_name("vswitch-cni");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p vswitch-cni` (`cargo test --workspace` does)",
        bin.display()
    );
    bin
}

/// Which plugin attaches the pods.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Dataplane {
    Vswitch,
    Bridge,
}

/// GC and STATUS are about no attachment: libcni runs them without these.
const AS_LIBCNI: &[(&str, &str)] = &[
    ("CNI_CONTAINERID", ""),
    ("CNI_IFNAME", ""),
    ("CNI_NETNS", ""),
    ("CNI_ARGS", ""),
];

/// One attachment, as a runtime names it.
struct Attachment {
    id: String,
    netns: String,
    ns: String,
    ifname: String,
    args: String,
}

/// What a plugin run gave: its parsed stdout and whether it exited 0.
struct Ran {
    ok: bool,
    out: Value,
    stdout: String,
    stderr: String,
}

/// A node namespace with a CNI_PATH (the reference plugins and ours), a host-local data
/// directory, and the switch when it is the dataplane.
struct Node {
    topo: Topology,
    pods: Namespaces,
    switch: Option<Switch>,
    bin: tempfile::TempDir,
    data: tempfile::TempDir,
    ctl: String,
    prefix: String,
}

impl Node {
    fn new(dataplane: Dataplane) -> Node {
        Node::with_switch_args(dataplane, &[])
    }

    fn with_switch_args(dataplane: Dataplane, switch_args: &[&str]) -> Node {
        assert!(
            Path::new(REFERENCE_PLUGINS).join("host-local").exists(),
            "Debian's containernetworking-plugins are missing: run scripts/install-deps.sh"
        );
        let topo = Topology::new(0);
        let bin = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(REFERENCE_PLUGINS).unwrap() {
            let entry = entry.unwrap();
            std::os::unix::fs::symlink(entry.path(), bin.path().join(entry.file_name())).unwrap();
        }
        std::os::unix::fs::symlink(cni_bin(), bin.path().join("vswitch-cni")).unwrap();
        let data = tempfile::tempdir().unwrap();
        let mut node = Node {
            topo,
            pods: Namespaces::default(),
            switch: None,
            bin,
            data,
            ctl: ctl_path(),
            prefix: unique_prefix("vsc"),
        };
        match dataplane {
            Dataplane::Vswitch => node.start_switch(switch_args),
            // A bridge without a MAC of its own takes its lowest port's, so the MAC in the
            // results of earlier ADDs goes stale and their CHECK fails (a known quirk of the
            // reference plugin); it adopts a bridge that exists, so give it one with a fixed MAC.
            Dataplane::Bridge => {
                let sw = node.topo.sw.clone();
                must(&["ip", "-n", &sw, "link", "add", "cni0", "type", "bridge"]);
                must(&[
                    "ip",
                    "-n",
                    &sw,
                    "link",
                    "set",
                    "cni0",
                    "address",
                    "02:76:0a:f4:01:01",
                ]);
                must(&["ip", "-n", &sw, "link", "set", "cni0", "up"]);
            }
        }
        node
    }

    fn start_switch(&mut self, extra: &[&str]) {
        let config = self.data.path().join("node.toml");
        std::fs::write(&config, "[pods]\nports = []\ngateway = \"10.244.1.1/24\"\n").unwrap();
        let config = config.to_string_lossy().into_owned();
        let mut args = vec!["--config", &config, "--ctl", &self.ctl];
        args.extend_from_slice(extra);
        self.switch = Some(self.topo.start_switch_with(&args, ""));
    }

    fn switch(&self) -> &Switch {
        self.switch.as_ref().expect("the switch runs")
    }

    fn ipam(&self) -> Value {
        json!({
            "type": "host-local",
            "ranges": [[{ "subnet": "10.244.1.0/24", "gateway": "10.244.1.1" }]],
            "dataDir": self.data.path().join("leases"),
        })
    }

    fn conflist(&self, dataplane: Dataplane, version: &str) -> Value {
        let first = match dataplane {
            Dataplane::Vswitch => json!({
                "type": "vswitch-cni", "ctl": self.ctl, "mtu": 1500, "ipam": self.ipam(),
            }),
            Dataplane::Bridge => json!({
                "type": "bridge", "bridge": "cni0", "isGateway": true, "mtu": 1500, "ipam": self.ipam(),
            }),
        };
        json!({
            "cniVersion": version,
            "name": NET,
            "plugins": [first, { "type": "portmap", "capabilities": { "portMappings": true } }],
        })
    }

    /// A pod namespace and its attachment.
    fn pod(&mut self, i: usize) -> Attachment {
        let ns = format!("{}p{i}", self.prefix);
        self.pods.add(&ns);
        self.pod_attachment(i)
    }

    /// Pod `i`'s attachment (its namespace made by `pod`).
    fn pod_attachment(&self, i: usize) -> Attachment {
        let ns = format!("{}p{i}", self.prefix);
        Attachment {
            id: format!("{}c{i}", self.prefix),
            netns: format!("/var/run/netns/{ns}"),
            ns,
            ifname: "eth0".into(),
            args: format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-{i}"),
        }
    }

    /// Runs one plugin as a runtime does: in the node namespace, a clean environment.
    fn exec(&self, command: &str, att: &Attachment, conf: &Value, env: &[(&str, &str)]) -> Ran {
        let plugin = conf["type"].as_str().unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.topo.sw])
            .arg(self.bin.path().join(plugin))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &att.id)
            .env("CNI_NETNS", &att.netns)
            .env("CNI_IFNAME", &att.ifname)
            .env("CNI_ARGS", &att.args)
            .env("CNI_PATH", self.bin.path());
        for (k, v) in env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        run_with_stdin(cmd, conf.to_string().as_bytes())
    }

    /// The conflist's plugin `i` as the runtime hands it over.
    fn plugin_conf(list: &Value, i: usize, prev: Option<&Value>) -> Value {
        let mut conf = list["plugins"][i].clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    /// ADD through the chain; the last plugin's result, or the first error.
    fn add(&self, list: &Value, att: &Attachment) -> Result<Value, Ran> {
        let mut prev: Option<Value> = None;
        for i in 0..list["plugins"].as_array().unwrap().len() {
            let ran = self.exec("ADD", att, &Self::plugin_conf(list, i, prev.as_ref()), &[]);
            if !ran.ok {
                return Err(ran);
            }
            prev = Some(ran.out);
        }
        Ok(prev.unwrap())
    }

    fn check(&self, list: &Value, att: &Attachment, result: &Value) -> Result<(), Ran> {
        for i in 0..list["plugins"].as_array().unwrap().len() {
            let ran = self.exec("CHECK", att, &Self::plugin_conf(list, i, Some(result)), &[]);
            if !ran.ok {
                return Err(ran);
            }
        }
        Ok(())
    }

    /// DEL in reverse order, with the cached result when there is one.
    fn del(&self, list: &Value, att: &Attachment, result: Option<&Value>) -> Result<(), Ran> {
        for i in (0..list["plugins"].as_array().unwrap().len()).rev() {
            let ran = self.exec("DEL", att, &Self::plugin_conf(list, i, result), &[]);
            if !ran.ok {
                return Err(ran);
            }
        }
        Ok(())
    }

    /// Addresses host-local still holds.
    fn leases(&self) -> Vec<String> {
        let dir = self.data.path().join("leases").join(NET);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
            .collect()
    }

    /// veth interfaces in the node namespace.
    fn veths(&self) -> Vec<String> {
        must(&[
            "ip",
            "-n",
            &self.topo.sw,
            "-o",
            "link",
            "show",
            "type",
            "veth",
        ])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .collect()
    }

    fn switch_ports(&self) -> Vec<Value> {
        self.switch().ctl_json(&["show", "ports"])["ports"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Nothing of `att` is left: no veth, no lease, no interface in the pod.
    fn assert_clean(&self, att: &Attachment) {
        assert_eq!(self.veths(), Vec::<String>::new(), "veths left on the node");
        assert_eq!(self.leases(), Vec::<String>::new(), "leases left");
        let links = must(&["ip", "-n", &att.ns, "-o", "link", "show"]);
        assert!(
            !links.contains(&format!(": {}", att.ifname)),
            "{} left in the pod: {links}",
            att.ifname
        );
        if self.switch.is_some() {
            assert_eq!(self.switch_ports().len(), 0, "switch ports left");
        }
    }
}

fn run_with_stdin(mut cmd: Command, input: &[u8]) -> Ran {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Ran {
        ok: out.status.success(),
        out: serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn unwrap_ran<T>(r: Result<T, Ran>, what: &str) -> T {
    r.unwrap_or_else(|ran| panic!("{what} failed: {}{}", ran.stdout, ran.stderr))
}

/// The pod's address in a result: the ips entry whose interface is in `netns`.
fn pod_address(result: &Value, att: &Attachment) -> String {
    let interfaces = result["interfaces"].as_array().expect("interfaces");
    let idx = interfaces
        .iter()
        .position(|i| i["sandbox"] == att.netns.as_str() && i["name"] == att.ifname.as_str())
        .unwrap_or_else(|| panic!("no pod interface in {result}"));
    let ip = result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ip| ip["interface"] == idx)
        .unwrap_or_else(|| panic!("no address on the pod interface in {result}"));
    ip["address"].as_str().unwrap().to_string()
}

fn ping(ns: &str, ip: &str) -> bool {
    (0..3).any(|_| {
        exec_bounded(
            ns,
            &["ping", "-c", "1", "-W", "2", ip],
            Duration::from_secs(5),
        )
        .status
        .success()
    })
}

/// 10 pods ADDed in parallel through a conflist (plugin, then portmap), all pairs ping, CHECK
/// passes, DEL (twice) leaves nothing. The same for vswitch-cni and the reference bridge.
fn ten_pods(dataplane: Dataplane) {
    let Some(_guard) = network_test() else { return };
    // As `deploy/` runs it: the XDP fast path on (the plugin gives every pod GRO).
    let mut node = Node::with_switch_args(dataplane, &["--fast-path", "xdp"]);
    let list = node.conflist(dataplane, "1.0.0");
    let pods: Vec<Attachment> = (1..=10).map(|i| node.pod(i)).collect();
    let mut node = node;

    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|att| s.spawn(|| node.add(&list, att)))
            .collect();
        handles
            .into_iter()
            .map(|h| unwrap_ran(h.join().unwrap(), "ADD"))
            .collect()
    });

    let mut addresses = BTreeSet::new();
    for (att, result) in pods.iter().zip(&results) {
        assert_eq!(result["cniVersion"], "1.0.0", "{result}");
        let address = pod_address(result, att);
        assert!(
            address.starts_with("10.244.1.") && address.ends_with("/24"),
            "{address}"
        );
        addresses.insert(address);
        if dataplane == Dataplane::Vswitch {
            assert_eq!(
                result["interfaces"].as_array().unwrap().len(),
                2,
                "{result}"
            );
            assert_eq!(
                result["routes"],
                json!([{ "dst": "0.0.0.0/0", "gw": "10.244.1.1" }]),
                "{result}"
            );
            let host = result["interfaces"][0]["name"].as_str().unwrap();
            assert!(host.len() <= 15 && host.starts_with("vsw"), "{host}");
            // NAPI on the pod's end, for the XDP fast path's redirects.
            let features = common::must(&["ip", "netns", "exec", &att.ns, "ethtool", "-k", "eth0"]);
            assert!(
                features.contains("generic-receive-offload: on"),
                "{}: {features}",
                att.ns
            );
        }
    }
    assert_eq!(addresses.len(), 10, "10 different addresses: {addresses:?}");

    let ips: Vec<String> = addresses
        .iter()
        .map(|a| a.split('/').next().unwrap().to_string())
        .collect();
    for (att, result) in pods.iter().zip(&results) {
        let mine = pod_address(result, att);
        for ip in &ips {
            if !mine.starts_with(&format!("{ip}/")) {
                assert!(
                    ping(&att.ns, ip),
                    "{dataplane:?}: {} cannot ping {ip}",
                    att.ns
                );
            }
        }
    }
    if dataplane == Dataplane::Vswitch {
        assert!(ping(&pods[0].ns, "10.244.1.1"), "the gateway answers");
        let ports = node.switch_ports();
        assert_eq!(ports.len(), 10, "{ports:?}");
        let table = node.switch().ctl_ok(&["show", "ports"]);
        for result in &results {
            let host = result["interfaces"][0]["name"].as_str().unwrap();
            let pod_mac = result["interfaces"][1]["mac"].as_str().unwrap();
            let port = ports.iter().find(|p| p["name"] == host).expect(host);
            assert_eq!(port["mac"], pod_mac, "bound to the pod's MAC");
            let ip = result["ips"][0]["address"].as_str().unwrap();
            assert_eq!(format!("{}/24", port["ip"].as_str().unwrap()), ip);
            assert!(table.contains(host), "{table}");
        }
        // TCP between two of them: intact, and carried by the fast path.
        let address = pod_address(&results[1], &pods[1]);
        let server_ip = address.split('/').next().unwrap();
        common::tcp_transfer(&pods[0].ns, &pods[1].ns, server_ip, 10_000_000);
        // The workers read the fast path's counters once a second (later when loaded).
        let fast_packets = || -> u64 {
            node.switch().ctl_json(&["show", "stats"])["workers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w["fast_path_packets"].as_u64().unwrap())
                .sum()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut fast = fast_packets();
        while fast <= 2_000 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            fast = fast_packets();
        }
        assert!(fast > 2_000, "fast_path_packets = {fast}");
    }
    assert_eq!(node.leases().len(), 10);

    for (att, result) in pods.iter().zip(&results) {
        unwrap_ran(node.check(&list, att, result), "CHECK");
    }

    for (att, result) in pods.iter().zip(&results) {
        unwrap_ran(node.del(&list, att, Some(result)), "DEL");
    }
    for att in &pods {
        unwrap_ran(node.del(&list, att, None), "a second DEL");
    }
    for att in &pods {
        node.assert_clean(att);
    }
    if let Some(switch) = node.switch.take() {
        let stopped = switch.stop();
        assert_eq!(stopped.code, Some(0), "{}", stopped.stderr);
    }
}

#[test]
fn cni_ten_pods_on_vswitch() {
    ten_pods(Dataplane::Vswitch);
}

#[test]
fn cni_ten_pods_on_the_reference_bridge() {
    ten_pods(Dataplane::Bridge);
}

/// Each error has the spec's code and leaves nothing behind.
#[test]
fn cni_errors_leave_nothing_behind() {
    let Some(_guard) = network_test() else { return };
    let mut node = Node::new(Dataplane::Vswitch);
    let list = node.conflist(Dataplane::Vswitch, "1.0.0");
    let att = node.pod(1);
    let conf = Node::plugin_conf(&list, 0, None);

    let expect = |node: &Node, ran: Ran, code: u64, what: &str| {
        assert!(!ran.ok, "{what}: succeeded: {}", ran.stdout);
        assert_eq!(
            ran.out["code"], code,
            "{what}: {}{}",
            ran.stdout, ran.stderr
        );
        assert!(
            ran.out["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}"
        );
        assert!(ran.out.get("cniVersion").is_some(), "{what}");
        node.assert_clean(&att);
    };

    // Bad JSON: code 6.
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.topo.sw])
        .arg(node.bin.path().join("vswitch-cni"))
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", &att.id)
        .env("CNI_NETNS", &att.netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", node.bin.path());
    expect(
        &node,
        run_with_stdin(cmd, b"{\"cniVersion\": "),
        6,
        "bad JSON",
    );

    // No CNI_NETNS: code 4.
    expect(
        &node,
        node.exec("ADD", &att, &conf, &[("CNI_NETNS", "")]),
        4,
        "missing CNI_NETNS",
    );

    // An IPAM plugin that is not in CNI_PATH: code 7.
    let mut unknown = conf.clone();
    unknown["ipam"]["type"] = json!("no-such-ipam");
    expect(
        &node,
        node.exec("ADD", &att, &unknown, &[]),
        7,
        "unknown IPAM type",
    );

    // A version we do not speak: code 1.
    let mut old = conf.clone();
    old["cniVersion"] = json!("0.3.1");
    expect(
        &node,
        node.exec("ADD", &att, &old, &[]),
        1,
        "old cniVersion",
    );

    // The pod already has the interface: fails after IPAM, which is undone.
    must(&[
        "ip", "-n", &att.ns, "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let ran = node.exec("ADD", &att, &conf, &[]);
    assert!(
        !ran.ok,
        "ADD onto an existing eth0 succeeded: {}",
        ran.stdout
    );
    must(&["ip", "-n", &att.ns, "link", "del", "eth0"]);
    node.assert_clean(&att);

    // A second ADD of a running attachment fails and leaves the first as it was, its address
    // lease too (IPAM refused the duplicate: the second holds nothing to release).
    let first = node.exec("ADD", &att, &conf, &[]);
    assert!(first.ok, "{}{}", first.stdout, first.stderr);
    let leases = node.leases();
    assert_eq!(leases.len(), 1);
    let ran = node.exec("ADD", &att, &conf, &[]);
    assert!(!ran.ok, "a second ADD succeeded: {}", ran.stdout);
    assert_eq!(node.leases(), leases);
    assert!(ping(&att.ns, "10.244.1.1"));
    let mut del = conf.clone();
    del["prevResult"] = first.out;
    let ran = node.exec("DEL", &att, &del, &[]);
    assert!(ran.ok, "{}{}", ran.stdout, ran.stderr);
    node.assert_clean(&att);

    // The switch not running: code 11.
    let stopped = node.switch.take().unwrap().stop();
    assert_eq!(stopped.code, Some(0));
    expect(
        &node,
        node.exec("ADD", &att, &conf, &[]),
        11,
        "switch not running",
    );
    let status = node.exec("STATUS", &att, &conf, AS_LIBCNI);
    assert!(!status.ok);
    assert_eq!(status.out["code"], 50, "{}", status.stdout);

    // DEL of something never added succeeds, switch or not.
    unwrap_ran(node.del(&list, &att, None), "DEL of nothing");
}

/// 1.1.0: STATUS, VERSION, ADD (host-local is 1.0.0: the plugin asks it in 1.0.0), CHECK,
/// GC of an attachment the runtime no longer knows, DEL.
#[test]
fn cni_version_1_1_0_status_and_gc() {
    let Some(_guard) = network_test() else { return };
    let mut node = Node::new(Dataplane::Vswitch);
    let list = node.conflist(Dataplane::Vswitch, "1.1.0");
    let att = node.pod(1);
    let conf = Node::plugin_conf(&list, 0, None);

    let version = node.exec("VERSION", &att, &conf, &[]);
    assert!(version.ok);
    assert_eq!(
        version.out,
        json!({"cniVersion": "1.1.0", "supportedVersions": ["1.0.0", "1.1.0"]})
    );
    let status = node.exec("STATUS", &att, &conf, AS_LIBCNI);
    assert!(status.ok, "{}{}", status.stdout, status.stderr);
    assert_eq!(status.stdout, "");

    let ran = node.exec("ADD", &att, &conf, &[]);
    assert!(ran.ok, "{}{}", ran.stdout, ran.stderr);
    let result = ran.out;
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(result["interfaces"][1]["mtu"], 1500);
    assert_eq!(result["interfaces"][1]["sandbox"], att.netns.as_str());
    let mut check = conf.clone();
    check["prevResult"] = result.clone();
    let ran = node.exec("CHECK", &att, &check, &[]);
    assert!(ran.ok, "{}{}", ran.stdout, ran.stderr);
    assert!(ping(&att.ns, "10.244.1.1"));

    // Port security: the switch drops what the pod sends from another address.
    must(&[
        "ip",
        "-n",
        &att.ns,
        "addr",
        "add",
        "10.244.1.77/24",
        "dev",
        "eth0",
    ]);
    let spoofed = exec_bounded(
        &att.ns,
        &[
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "-I",
            "10.244.1.77",
            "10.244.1.1",
        ],
        Duration::from_secs(3),
    );
    assert!(!spoofed.status.success(), "a spoofed source got through");
    must(&[
        "ip",
        "-n",
        &att.ns,
        "addr",
        "del",
        "10.244.1.77/24",
        "dev",
        "eth0",
    ]);

    // CHECK notices a change.
    must(&["ip", "-n", &att.ns, "route", "del", "default"]);
    let ran = node.exec("CHECK", &att, &check, &[]);
    assert!(!ran.ok);
    assert!(
        ran.out["details"]
            .as_str()
            .unwrap()
            .contains("no route 0.0.0.0/0"),
        "{}",
        ran.stdout
    );

    // A second network of this plugin on the node (Multus), its pod on the same switch.
    let mut other_conf = conf.clone();
    other_conf["name"] = json!(format!("{NET}-other"));
    other_conf["ipam"]["ranges"][0][0]["rangeStart"] = json!("10.244.1.100");
    let other = node.pod(2);
    let ran = node.exec("ADD", &other, &other_conf, &[]);
    assert!(ran.ok, "{}{}", ran.stdout, ran.stderr);
    let other_result = ran.out;
    let other_host = other_result["interfaces"][0]["name"].as_str().unwrap();
    let shown = must(&["ip", "-n", &node.topo.sw, "link", "show", other_host]);
    assert!(
        shown.contains(&format!("alias vswitch-cni network {NET}-other")),
        "{shown}"
    );
    // CHECK notices a host-side veth claimed by another network.
    let host = result["interfaces"][0]["name"].as_str().unwrap();
    let set_alias = |dev: &str, to: &str| {
        must(&["ip", "-n", &node.topo.sw, "link", "set", dev, "alias", to]);
    };
    set_alias(host, &format!("vswitch-cni network {NET}-other"));
    let ran = node.exec("CHECK", &att, &check, &[]);
    assert!(!ran.ok);
    assert!(
        ran.out["details"]
            .as_str()
            .unwrap()
            .contains("belongs to another network"),
        "{}",
        ran.stdout
    );
    set_alias(host, &format!("vswitch-cni network {NET}"));
    must(&[
        "ip",
        "-n",
        &att.ns,
        "route",
        "add",
        "default",
        "via",
        "10.244.1.1",
    ]);
    let ran = node.exec("CHECK", &att, &check, &[]);
    assert!(ran.ok, "{}{}", ran.stdout, ran.stderr);

    // The first pod on the second network too (Multus' net1): it keeps its default route.
    let net1 = Attachment {
        ifname: "net1".into(),
        ..node.pod_attachment(1)
    };
    let ran = node.exec("ADD", &net1, &other_conf, &[]);
    assert!(ran.ok, "{}{}", ran.stdout, ran.stderr);
    let net1_result = ran.out;
    assert!(
        net1_result["routes"]
            .as_array()
            .is_none_or(|r| r.is_empty()),
        "{net1_result}"
    );
    let defaults = must(&["ip", "-n", &att.ns, "route", "show", "default"]);
    assert_eq!(
        defaults.trim(),
        "default via 10.244.1.1 dev eth0",
        "{defaults}"
    );
    let mut net1_check = other_conf.clone();
    net1_check["prevResult"] = net1_result;
    let ran = node.exec("CHECK", &net1, &net1_check, &[]);
    assert!(ran.ok, "{}{}", ran.stdout, ran.stderr);
    let ran = node.exec("DEL", &net1, &net1_check, &[]);
    assert!(ran.ok, "{}{}", ran.stdout, ran.stderr);

    // Veths from before aliases say no network: one the switch has a port for may be another
    // network's running pod, one it has none for is a leak.
    set_alias(other_host, "");
    must(&[
        "ip",
        "-n",
        &node.topo.sw,
        "link",
        "add",
        "vsw0123456789ab",
        "type",
        "veth",
        "peer",
        "name",
        "leakpeer0",
    ]);

    // GC keeps what is valid...
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{ "containerID": att.id, "ifname": "eth0" }]);
    let ran = node.exec("GC", &att, &gc, AS_LIBCNI);
    assert!(ran.ok, "{}{}", ran.stdout, ran.stderr);
    assert_eq!(node.veths().len(), 2, "the leak went");
    assert_eq!(node.switch_ports().len(), 2);
    // ...and removes what is not, of its own network only.
    gc["cni.dev/valid-attachments"] = json!([]);
    let ran = node.exec("GC", &att, &gc, AS_LIBCNI);
    assert!(ran.ok, "{}{}", ran.stdout, ran.stderr);
    assert_eq!(node.veths(), vec![other_host.to_string()]);
    assert_eq!(node.switch_ports().len(), 1);
    assert!(ping(&other.ns, "10.244.1.1"));
    set_alias(other_host, &format!("vswitch-cni network {NET}-other"));
    let mut other_gc = other_conf.clone();
    other_gc["cni.dev/valid-attachments"] = json!([]);
    let ran = node.exec("GC", &other, &other_gc, AS_LIBCNI);
    assert!(ran.ok, "{}{}", ran.stdout, ran.stderr);
    assert_eq!(node.veths().len(), 0);
    assert_eq!(node.switch_ports().len(), 0);
    let mut other_del = other_conf.clone();
    other_del["prevResult"] = other_result;
    let ran = node.exec("DEL", &other, &other_del, &[]);
    assert!(ran.ok, "{}{}", ran.stdout, ran.stderr);

    // DEL releases the address (Debian's host-local has no GC of its own).
    let mut del = conf.clone();
    del["prevResult"] = result;
    let ran = node.exec("DEL", &att, &del, &[]);
    assert!(ran.ok, "{}{}", ran.stdout, ran.stderr);
    node.assert_clean(&att);
}

/// Timings for docs/PERFORMANCE.md (not asserted): ADD to the first packet through the
/// dataplane and DEL, vswitch-cni beside the reference bridge, in one run; then 100 pods ADDed
/// back to back. `cargo test --release -p switch --test cni -- --ignored --nocapture`
#[test]
#[ignore]
fn cni_timings() {
    let Some(_guard) = network_test() else { return };
    const PODS: usize = 100;
    for dataplane in [Dataplane::Bridge, Dataplane::Vswitch] {
        let mut node = Node::with_switch_args(dataplane, &[]);
        let list = node.conflist(dataplane, "1.0.0");
        let conf = Node::plugin_conf(&list, 0, None);
        let pods: Vec<Attachment> = (1..=PODS).map(|i| node.pod(i)).collect();
        let (mut add_ms, mut first_ms, mut del_ms) = (Vec::new(), Vec::new(), Vec::new());
        let start_all = Instant::now();
        let mut results = Vec::new();
        for att in &pods {
            let start = Instant::now();
            let ran = node.exec("ADD", att, &conf, &[]);
            assert!(ran.ok, "{}{}", ran.stdout, ran.stderr);
            add_ms.push(start.elapsed().as_secs_f64() * 1e3);
            // The first packet: a ping from the new pod to the first pod (to the gateway for
            // the first), retried until it is answered.
            let target = results
                .first()
                .map(|r: &Value| {
                    let a = r["ips"][0]["address"].as_str().unwrap();
                    a.split('/').next().unwrap().to_string()
                })
                .unwrap_or_else(|| "10.244.1.1".into());
            let deadline = Instant::now() + Duration::from_secs(5);
            while !exec_bounded(
                &att.ns,
                &["ping", "-c", "1", "-W", "1", &target],
                Duration::from_secs(2),
            )
            .status
            .success()
            {
                assert!(
                    Instant::now() < deadline,
                    "{dataplane:?}: no first packet from {} to {target} within 5 s: {}",
                    att.ns,
                    node.switch
                        .as_ref()
                        .map(|s| s.ctl_ok(&["show", "stats"]))
                        .unwrap_or_default()
                );
            }
            first_ms.push(start.elapsed().as_secs_f64() * 1e3);
            results.push(ran.out);
        }
        let all_add = start_all.elapsed();
        for (att, result) in pods.iter().zip(&results) {
            let mut del = conf.clone();
            del["prevResult"] = result.clone();
            let start = Instant::now();
            let ran = node.exec("DEL", att, &del, &[]);
            assert!(ran.ok, "{}{}", ran.stdout, ran.stderr);
            del_ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
        let stats = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            format!(
                "median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
                v[v.len() / 2],
                v[v.len() * 9 / 10],
                v[v.len() - 1]
            )
        };
        println!(
            "{dataplane:?}: {PODS} pods back to back in {:.2} s (ADD + first packet each)\n  ADD                 {}\n  ADD to first packet {}\n  DEL                 {}",
            all_add.as_secs_f64(),
            stats(&mut add_ms),
            stats(&mut first_ms),
            stats(&mut del_ms)
        );
        if let Some(switch) = node.switch.take() {
            switch.stop();
        }
    }
}
