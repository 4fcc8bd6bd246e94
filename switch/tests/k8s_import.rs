//! End to end: `vswitch ctl import` of recorded `kubectl get services,endpointslices -A -o
//! json` output (switch/tests/fixtures/k8s/) into a running node gateway with pods, then of a
//! changed version: the right backends answer, a removed endpoint gets no new connections
//! while connections to kept ones stay tracked, ClientIP affinity holds, an ETP Local NodePort
//! reaches only this node's endpoint and keeps the client's address, and the terminating
//! fallback is used.
//!
//! ```text
//!  p1 10.244.1.2 ─ vp1 ┐                                   ┌ n2 ── n2 pod 10.244.2.5
//!  p2 10.244.1.3 ─ vp2 ├ sw (node) vup ═══ up  rt (router) ┤       (node 2, via 198.18.0.2)
//!  p3 10.244.1.4 ─ vp3 ┘   198.18.0.1     198.18.0.254     └ ext ─ ex 198.19.0.10 (external)
//! ```

mod common;

use common::{exec_bounded, network_test, unique_prefix, vswitch_bin, Namespaces};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NODE_TOML: &str = r#"[pods]
ports = ["vp1", "vp2", "vp3"]
gateway = "10.244.1.1/24"

[uplink]
port = "vup"
address = "198.18.0.1/24"
next_hop = "198.18.0.254"
cluster_cidrs = ["10.244.0.0/16", "10.96.0.0/12"]

[[route]]
cidr = "10.244.2.0/24"
via = "198.18.0.2"
"#;

fn fixture(name: &str) -> PathBuf {
    common::repo_root()
        .join("switch/tests/fixtures/k8s")
        .join(name)
}

fn probe() -> String {
    common::repo_root()
        .join("scripts/http_probe.py")
        .to_string_lossy()
        .into_owned()
}

/// Children killed and reaped on drop.
#[derive(Default)]
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The topology with vswitch running in `sw`. Fields drop in order: processes, then the
/// scratch directory, then the namespaces.
struct Node {
    prefix: String,
    ctl: String,
    procs: Children,
    dir: tempfile::TempDir,
    _namespaces: Namespaces,
}

impl Node {
    fn ns(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    fn new() -> Node {
        let prefix = unique_prefix("vk8s");
        let mut namespaces = Namespaces::default();
        common::cable_gateway_node(&prefix, &mut namespaces);
        let sw = format!("{prefix}sw");

        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("node.toml");
        std::fs::write(&config, NODE_TOML).unwrap();
        let mut node = Node {
            prefix,
            ctl: common::ctl_path(),
            procs: Children::default(),
            dir,
            _namespaces: namespaces,
        };
        let err = std::fs::File::create(node.dir.path().join("vswitch.err")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &sw, vswitch_bin(), "--ctl", &node.ctl])
            .args(["--fast-path", "off"])
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        node.procs.0.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !node.ctl_raw(&["show", "ports"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "vswitch did not start: {}",
                std::fs::read_to_string(node.dir.path().join("vswitch.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        for (host, port, name) in [
            ("p1", "8080", "p1"),
            ("p2", "8080", "p2"),
            ("p3", "8080", "p3"),
            ("n2", "8080", "n2"),
            ("p1", "8081", "client-ip"),
        ] {
            node.serve(host, port, name);
        }
        node
    }

    fn serve(&mut self, host: &str, port: &str, name: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(host), "python3", &probe()])
            .args(["serve", port, name, "300"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        self.procs.0.push(child);
        assert_eq!(line.trim(), "ready", "server {name} in {host}");
    }

    fn ctl_raw(&self, args: &[&str]) -> std::process::Output {
        Command::new(vswitch_bin())
            .args(["ctl", "--socket", &self.ctl])
            .args(args)
            .output()
            .unwrap()
    }

    fn ctl(&self, args: &[&str]) -> String {
        let out = self.ctl_raw(args);
        assert!(
            out.status.success(),
            "vswitch ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn import(&self, file: &str) -> serde_json::Value {
        let text = self.ctl(&["import", fixture(file).to_str().unwrap(), "--json"]);
        serde_json::from_str(&text).unwrap()
    }

    /// Answers to `count` GETs of `url` from `from`, each on a new connection, by body.
    fn get(&self, from: &str, url: &str, count: usize) -> BTreeMap<String, usize> {
        let total = 2.0 + 0.1 * count as f64;
        let out = exec_bounded(
            &self.ns(from),
            &[
                "python3",
                &probe(),
                "get",
                url,
                &count.to_string(),
                "2",
                &total.to_string(),
            ],
            Duration::from_secs_f64(total + 5.0),
        );
        let mut seen = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            *seen.entry(line.trim().to_string()).or_insert(0) += 1;
        }
        seen
    }
}

fn only(seen: &BTreeMap<String, usize>) -> Vec<&str> {
    seen.keys().map(String::as_str).collect()
}

#[test]
fn kubectl_json_imports_into_a_running_switch() {
    let Some(_serial) = network_test() else {
        return;
    };
    let node = Node::new();
    let r = node.import("cluster-v1.json");
    assert_eq!(r["services"], 10, "{r}");
    assert!(r["skipped"].to_string().contains("ExternalName"), "{r}");

    // ClusterIP: every ready backend, none of the terminating one (p3).
    let web = node.get("p3", "http://10.96.0.10:80/", 60);
    assert_eq!(only(&web), ["n2", "p1", "p2"], "{web:?}");
    // NodePort (ETP Cluster) from outside: every backend.
    let np = node.get("ex", "http://198.18.0.1:30080/", 40);
    assert!(!np.contains_key("ERR") && np.len() >= 2, "{np:?}");

    // ClientIP affinity: many connections from one client, one backend; another client may
    // get another, and sticks too.
    let sticky = node.get("p3", "http://10.96.0.20:80/", 40);
    assert_eq!(sticky.len(), 1, "{sticky:?}");
    assert!(!sticky.contains_key("ERR"));
    let sticky_p2 = node.get("p2", "http://10.96.0.20:80/", 30);
    assert_eq!(sticky_p2.len(), 1, "{sticky_p2:?}");

    // ETP Local: the NodePort reaches this node's endpoint (p1) only, and p1 sees the client;
    // the cluster IP of the same Service reaches node 2's endpoint too.
    let local = node.get("ex", "http://198.18.0.1:30081/", 30);
    assert_eq!(only(&local), ["p1"], "{local:?}");
    let whoami = node.get("ex", "http://198.18.0.1:30082/", 3);
    assert_eq!(only(&whoami), ["198.19.0.10"], "{whoami:?}");
    let local_vip = node.get("p3", "http://10.96.0.30:80/", 60);
    assert_eq!(only(&local_vip), ["n2", "p1"], "{local_vip:?}");

    // No endpoint ready: the serving terminating one (p2), never the non-serving one.
    let draining = node.get("p3", "http://10.96.0.40:80/", 20);
    assert_eq!(only(&draining), ["p2"], "{draining:?}");

    // The tables show what was imported.
    let services: serde_json::Value =
        serde_json::from_str(&node.ctl(&["show", "services", "--json"])).unwrap();
    let list = services["services"].as_array().unwrap();
    let sticky_row = list
        .iter()
        .find(|s| s["name"] == "default/sticky:80")
        .unwrap();
    assert_eq!(sticky_row["affinity_s"], 60);
    let local_row = list
        .iter()
        .find(|s| s["name"] == "default/local:web")
        .unwrap();
    assert_eq!(
        local_row["node_port_local"],
        serde_json::json!(["10.244.1.2:8080"])
    );

    // The changed cluster: p2 left web. Connections to the kept backends stay tracked (those
    // to p2 too, as kube-proxy leaves established TCP alone, since p2 still backs other
    // Services); new connections never reach p2; a new Service works.
    let conntrack = || -> Vec<serde_json::Value> {
        let v: serde_json::Value =
            serde_json::from_str(&node.ctl(&["show", "conntrack", "--json"])).unwrap();
        v["conntrack"].as_array().unwrap().clone()
    };
    let to_web = |flows: &[serde_json::Value], backend: &str| {
        flows
            .iter()
            .filter(|f| f["orig_dst"] == "10.96.0.10:80" && f["reply_src"] == backend)
            .count()
    };
    let before = conntrack();
    let kept_before = to_web(&before, "10.244.1.2:8080");
    assert!(kept_before > 0 && to_web(&before, "10.244.1.3:8080") > 0);
    // From a file on stdin this time (`-`).
    let mut child = Command::new(vswitch_bin())
        .args(["ctl", "--socket", &node.ctl, "import", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(fixture("cluster-v2.json")).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("imported 11 services"), "{text}");
    let after = conntrack();
    assert_eq!(to_web(&after, "10.244.1.2:8080"), kept_before);
    let web = node.get("p3", "http://10.96.0.10:80/", 60);
    assert_eq!(only(&web), ["n2", "p1"], "{web:?}");
    assert_eq!(only(&node.get("p3", "http://10.96.0.70:80/", 5)), ["p2"]);

    // Bad input changes nothing and says why.
    let bad = node.dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"kind": "List", "items": [{"kind": "Pod"}]}"#).unwrap();
    let out = node.ctl_raw(&["import", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("items[0]: kind \"Pod\""), "{err}");
    assert_eq!(only(&node.get("p3", "http://10.96.0.70:80/", 3)), ["p2"]);
    let out = node.ctl_raw(&["import", "/nonexistent/file.json"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/file.json"));

    // Thousands skipped (headless Services): the answer names the first 1,000 and counts all,
    // so it stays small for the agent, which reads at most 1 MiB of it.
    let headless: Vec<String> = (0..1500)
        .map(|i| {
            format!(
                r#"{{"apiVersion": "v1", "kind": "Service", "metadata": {{"name": "h{i}", "namespace": "default"}}, "spec": {{"clusterIP": "None", "ports": [{{"port": 80, "protocol": "TCP"}}]}}}}"#
            )
        })
        .collect();
    let many = node.dir.path().join("headless.json");
    std::fs::write(
        &many,
        format!(r#"{{"kind": "List", "items": [{}]}}"#, headless.join(", ")),
    )
    .unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&node.ctl(&["import", many.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(r["skipped_count"], 1500);
    assert_eq!(r["skipped"].as_array().unwrap().len(), 1000);
    let table = node.ctl(&["import", many.to_str().unwrap()]);
    assert!(table.contains("skipped 500 more"), "{table}");
}
