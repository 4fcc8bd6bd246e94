//! Network-namespace topologies for end-to-end tests: a switch namespace and pod namespaces
//! cabled to it by veth pairs. Every name carries the process id; everything is deleted on drop,
//! also when the test fails. Nothing is created in the root namespace.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Network tests share two cores: run them one at a time. Returns `None` (skip) when not root
/// outside CI; in CI a missing privilege is a failure, never a skip.
pub fn network_test() -> Option<MutexGuard<'static, ()>> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if !root {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("network tests need root, and CI must run them");
        }
        // Straight to the process's stderr: the test harness captures `eprintln!` of passing
        // tests, and a skip nobody sees reads as a pass.
        let test = std::thread::current()
            .name()
            .unwrap_or("a network test")
            .to_string();
        let line = format!("SKIPPED {test}: network-namespace tests need root\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn vswitch_bin() -> &'static str {
    env!("CARGO_BIN_EXE_vswitch")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    out
}

/// Runs a command and panics with its output if it fails.
pub fn must(args: &[&str]) -> String {
    let out = run(Command::new(args[0]).args(&args[1..]));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Pod {
    pub ns: String,
    pub mac: String,
    pub ip: String,
    pub port: String,
}

pub struct Topology {
    pub sw: String,
    pub pods: Vec<Pod>,
    namespaces: Namespaces,
}

impl Topology {
    /// A switch namespace with `pods` pods: pod i (from 1) has MAC 02:00:00:00:00:0i,
    /// address 10.244.1.1i/24, and is cabled to port vpi.
    pub fn new(pods: usize) -> Topology {
        let prefix = format!(
            "vst{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut topo = Topology {
            sw: format!("{prefix}sw"),
            pods: Vec::new(),
            namespaces: Namespaces::default(),
        };
        topo.add_namespace(&topo.sw.clone());
        for i in 1..=pods {
            topo.add_pod(&prefix, i);
        }
        topo
    }

    fn add_namespace(&mut self, ns: &str) {
        self.namespaces.add(ns);
    }

    fn add_pod(&mut self, prefix: &str, i: usize) {
        let pod = Pod {
            ns: format!("{prefix}p{i}"),
            mac: format!("02:00:00:00:00:{i:02x}"),
            ip: format!("10.244.1.{}", 10 + i),
            port: format!("vp{i}"),
        };
        self.add_namespace(&pod.ns);
        self.cable(&pod);
        self.pods.push(pod);
    }

    /// Deletes pod `i`'s veth pair (both ends), as a pod that goes away does.
    pub fn unplug(&self, i: usize) {
        let pod = &self.pods[i];
        must(&["ip", "-n", &self.sw, "link", "del", &pod.port]);
    }

    /// Cables pod `i` again after `unplug`.
    pub fn replug(&self, i: usize) {
        self.cable(&self.pods[i]);
    }

    fn cable(&self, pod: &Pod) {
        must(&[
            "ip", "-n", &pod.ns, "link", "add", "eth0", "type", "veth", "peer", "name", &pod.port,
            "netns", &self.sw,
        ]);
        must(&[
            "ip", "-n", &pod.ns, "link", "set", "eth0", "address", &pod.mac,
        ]);
        must(&[
            "ip",
            "-n",
            &pod.ns,
            "addr",
            "add",
            &format!("{}/24", pod.ip),
            "dev",
            "eth0",
        ]);
        must(&["ip", "-n", &pod.ns, "link", "set", "eth0", "up"]);
        // GRO gives the pod's end NAPI, which frames the XDP fast path redirects into it need
        // (README); otherwise pods keep the kernel's default offloads: the switch finishes the
        // checksums they leave to "hardware".
        must(&[
            "ip", "netns", "exec", &pod.ns, "ethtool", "-K", "eth0", "gro", "on",
        ]);
        must(&["ip", "-n", &self.sw, "link", "set", &pod.port, "up"]);
    }

    /// A default route via the gateway address 10.244.1.1 in every pod (gateway-mode tests).
    #[allow(dead_code)]
    pub fn add_default_routes(&self) {
        for pod in &self.pods {
            must(&[
                "ip",
                "-n",
                &pod.ns,
                "route",
                "add",
                "default",
                "via",
                "10.244.1.1",
            ]);
        }
    }

    pub fn ports(&self) -> String {
        self.pods
            .iter()
            .map(|p| p.port.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs a command inside a namespace.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        run(Command::new("ip").args(["netns", "exec", ns]).args(args))
    }

    pub fn spawn(&self, ns: &str, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {args:?} in {ns}: {e}"))
    }

    /// Starts `vswitch` in the switch namespace and waits until it forwards.
    pub fn start_switch(&self, extra: &[&str]) -> Switch {
        self.start_switch_on(&self.ports(), extra)
    }

    /// Starts `vswitch` on some ports only (comma-separated).
    pub fn start_switch_on(&self, ports: &str, extra: &[&str]) -> Switch {
        let mut args = vec!["--ports", ports];
        args.extend_from_slice(extra);
        self.start_switch_with(&args, ports)
    }

    /// Starts `vswitch ARGS` and waits until every port in `ports` (comma-separated; may be
    /// empty) has its XDP program and the control socket answers. Without `--ctl` in `ARGS`
    /// it gets a socket of its own (`Switch::ctl`).
    ///
    /// The XDP fast path (the switch's default) is turned off unless `ARGS` or the config
    /// file says otherwise: the suites that test it ask for it, the rest test the workers.
    pub fn start_switch_with(&self, args: &[&str], ports: &str) -> Switch {
        let config_says = args
            .iter()
            .position(|a| *a == "--config")
            .and_then(|i| std::fs::read_to_string(args[i + 1]).ok())
            .is_some_and(|text| text.contains("fast_path"));
        let mut args = args.to_vec();
        if !args.contains(&"--fast-path") && !config_says {
            args.extend_from_slice(&["--fast-path", "off"]);
        }
        self.start_switch_as_given(&args, ports)
    }

    /// `start_switch_with` with exactly these arguments (the switch's own defaults).
    pub fn start_switch_as_given(&self, args: &[&str], ports: &str) -> Switch {
        let ctl = match args.iter().position(|a| *a == "--ctl") {
            Some(i) => args[i + 1].to_string(),
            None => ctl_path(),
        };
        let mut full = vec![vswitch_bin()];
        full.extend_from_slice(args);
        if !args.contains(&"--ctl") {
            full.extend_from_slice(&["--ctl", &ctl]);
        }
        let child = self.spawn(&self.sw, &full);
        let records = {
            let path = Path::new(&ctl);
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            stem.starts_with("vswitch-test-")
                .then(|| path.with_file_name(format!("{stem}-ports")))
        };
        let switch = Switch {
            child: Some(child),
            ctl,
            records,
        };
        // Attached once every port shows an XDP program and the control socket is there.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ports
            .split(',')
            .filter(|p| !p.is_empty())
            .all(|p| self.xdp_attached(p))
            || !Path::new(&switch.ctl).exists()
        {
            assert!(
                Instant::now() < deadline,
                "vswitch did not attach within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        switch
    }

    pub fn xdp_attached(&self, port: &str) -> bool {
        let out = run(Command::new("ip").args(["-n", &self.sw, "-d", "link", "show", "dev", port]));
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }

    pub fn ping(&self, from: usize, to: usize) -> bool {
        let target = &self.pods[to].ip;
        self.exec(
            &self.pods[from].ns,
            &["ping", "-c", "2", "-i", "0.2", "-W", "2", target],
        )
        .status
        .success()
    }

    /// Every pod finishes its own checksums (transmit offload off), so none reach the switch
    /// partial.
    #[allow(dead_code)]
    pub fn pods_finish_checksums(&self) {
        for pod in &self.pods {
            must(&[
                "ip", "netns", "exec", &pod.ns, "ethtool", "-K", "eth0", "tx", "off",
            ]);
        }
    }

    /// `bytes` of random data over TCP from pod `from` to pod `to` (port 5001), checked by
    /// SHA-256 at the receiver.
    #[allow(dead_code)]
    pub fn transfer(&self, from: usize, to: usize, bytes: u64) {
        let to = &self.pods[to];
        tcp_transfer(&self.pods[from].ns, &to.ns, &to.ip, bytes);
    }

    /// UDP datagrams from pod `from` to pod `to`'s port 7777 on a raw socket, with their
    /// checksum `good`, `partial` (left to offload) or `wrong`, then what pod `to` accepted
    /// within `secs` ("good=N partial=M", by payload).
    #[allow(dead_code)]
    pub fn udp_accepted(
        &self,
        from: usize,
        to: usize,
        sends: &[(&str, u32)],
        secs: &str,
    ) -> String {
        let script = Topology::script("rawframe.py");
        let mut counter = self.spawn(
            &self.pods[to].ns,
            &["python3", &script, "udp-count", "7777", secs],
        );
        let mut out = std::io::BufReader::new(counter.stdout.take().unwrap());
        let mut ready = String::new();
        std::io::BufRead::read_line(&mut out, &mut ready).unwrap();
        assert_eq!(ready.trim(), "ready");
        for (mode, count) in sends {
            let sent = self.exec(
                &self.pods[from].ns,
                &[
                    "python3",
                    &script,
                    "udp",
                    "eth0",
                    &self.pods[to].mac,
                    &self.pods[from].mac,
                    &self.pods[from].ip,
                    &self.pods[to].ip,
                    "7777",
                    mode,
                    &count.to_string(),
                ],
            );
            assert!(
                sent.status.success(),
                "{}",
                String::from_utf8_lossy(&sent.stderr)
            );
        }
        let mut counts = String::new();
        std::io::BufRead::read_line(&mut out, &mut counts).unwrap();
        counter.wait().unwrap();
        counts.trim().to_string()
    }

    pub fn script(name: &str) -> String {
        repo_root()
            .join("scripts")
            .join(name)
            .to_string_lossy()
            .into_owned()
    }
}

/// A control socket path of its own for a test's switch (under the temporary directory).
pub fn ctl_path() -> String {
    std::env::temp_dir()
        .join(format!("{}.sock", unique_prefix("vswitch-test-")))
        .to_string_lossy()
        .into_owned()
}

/// A running `vswitch`; killed if the test ends without stopping it.
pub struct Switch {
    child: Option<Child>,
    /// Its control socket.
    pub ctl: String,
    /// Where it records the ports `port add` attached, beside a socket `ctl_path` named
    /// (removed on drop: a later run with the same name must not find them).
    records: Option<std::path::PathBuf>,
}

/// What `vswitch` printed when it stopped.
pub struct Stopped {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Stopped {
    /// A counter from the per-port table.
    pub fn port_counter(&self, port: &str, column: &str) -> u64 {
        let mut lines = self.stdout.lines().skip_while(|l| !l.starts_with("port "));
        let header: Vec<&str> = lines
            .next()
            .expect("no port table")
            .split_whitespace()
            .collect();
        let col = header
            .iter()
            .position(|h| *h == column)
            .unwrap_or_else(|| panic!("no column {column}"));
        let row = lines
            .find(|l| l.split_whitespace().next() == Some(port))
            .unwrap_or_else(|| panic!("no row for {port}:\n{}", self.stdout));
        row.split_whitespace().nth(col).unwrap().parse().unwrap()
    }
}

impl Switch {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Runs `vswitch ctl --socket <its socket> ARGS` (the client bounds its own wait).
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(vswitch_bin())
            .args(["ctl", "--socket", &self.ctl])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running vswitch ctl {args:?}: {e}"))
    }

    /// `ctl ARGS` that must succeed; its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "vswitch ctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctl ARGS --json`, parsed.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = args.to_vec();
        full.push("--json");
        let text = self.ctl_ok(&full);
        assert_eq!(text.lines().count(), 1, "one JSON object: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// SIGKILL, as a crash would; nothing is cleaned up.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops, and checks it exited 0 with every frame home; returns its report.
    pub fn stop_clean(self) -> Stopped {
        let stopped = self.stop();
        assert_eq!(stopped.code, Some(0), "{}", stopped.stderr);
        assert!(
            stopped.stdout.contains("all frames home"),
            "{}",
            stopped.stdout
        );
        stopped
    }

    /// SIGTERM, then wait (at most 10 s) and collect the output.
    pub fn stop(mut self) -> Stopped {
        let mut child = self.child.take().unwrap();
        must(&["kill", "-TERM", &child.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("vswitch did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        Stopped {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = &self.records {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A name prefix unique to this process and call: `<tag><pid>x<n>`.
pub fn unique_prefix(tag: &str) -> String {
    format!(
        "{tag}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Network namespaces created one by one and deleted (after killing what runs in them) on
/// drop, in reverse order, also when the test fails.
#[derive(Default)]
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    /// Creates `ns` with loopback up and IPv6 off (no chatter on the wire).
    pub fn add(&mut self, ns: &str) {
        must(&["ip", "netns", "add", ns]);
        self.names.push(ns.to_string());
        must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        must(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.names.drain(..).rev() {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// Waits (up to 5 s) until something in namespace `ns` listens on TCP port `port`.
#[allow(dead_code)]
pub fn wait_listening(ns: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while must(&[
        "ip",
        "netns",
        "exec",
        ns,
        "ss",
        "-Hltn",
        &format!("sport = :{port}"),
    ])
    .trim()
    .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {ns} port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `bytes` of random data over TCP from namespace `from` to `to_ip:5001`, served in
/// namespace `to`; checked by SHA-256 at the receiver.
#[allow(dead_code)]
pub fn tcp_transfer(from: &str, to: &str, to_ip: &str, bytes: u64) {
    let script = Topology::script("tcp_transfer.py");
    let receiver = std::process::Command::new("ip")
        .args(["netns", "exec", to, "python3", &script, "serve", "5001"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_listening(to, 5001);
    let sent = exec_bounded(
        from,
        &[
            "python3",
            &script,
            "send",
            to_ip,
            "5001",
            &bytes.to_string(),
        ],
        Duration::from_secs(60),
    );
    let received = receiver.wait_with_output().unwrap();
    let sent = String::from_utf8_lossy(&sent.stdout).trim().to_string();
    assert!(
        sent.starts_with(&format!("{bytes} ")),
        "sender said {sent:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&received.stdout).trim(),
        sent,
        "bytes and SHA-256 at the receiver in {to}"
    );
}

/// Runs a command inside a namespace with a deadline: past it the command is killed and the
/// output so far is returned with a failed status. For commands whose output is small (it is
/// read once the command has ended).
pub fn exec_bounded(ns: &str, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {args:?} in {ns}: {e}"));
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// The gateway suites' node (namespaces `PREFIX` + sw, p1..p3, rt, n2, ex): veth pairs, pod
/// and router addresses, everything but the node's dataplane.
///
/// ```text
///  p1 10.244.1.2 ─ vp1 ┐                                   ┌ n2 ── n2 pod 10.244.2.5
///  p2 10.244.1.3 ─ vp2 ├ sw (node) vup ═══ up  rt (router) ┤       (node 2, via 198.18.0.2)
///  p3 10.244.1.4 ─ vp3 ┘   198.18.0.1     198.18.0.254     └ ext ─ ex 198.19.0.10 (external)
/// ```
#[allow(dead_code)]
pub fn cable_gateway_node(prefix: &str, namespaces: &mut Namespaces) {
    let ns = |short: &str| format!("{prefix}{short}");
    let ip = |ns: &str, args: &[&str]| {
        let mut full = vec!["ip", "-n", ns];
        full.extend_from_slice(args);
        must(&full);
    };
    let (sw, rt, n2, ex) = (ns("sw"), ns("rt"), ns("n2"), ns("ex"));
    for short in ["sw", "p1", "p2", "p3", "rt", "n2", "ex"] {
        namespaces.add(&ns(short));
    }
    // Pods: eth0 ↔ vpN in the node namespace.
    for i in 1..=3 {
        let pod = ns(&format!("p{i}"));
        let port = format!("vp{i}");
        ip(
            &pod,
            &[
                "link", "add", "name", "eth0", "type", "veth", "peer", "name", &port, "netns", &sw,
            ],
        );
        ip(
            &pod,
            &[
                "link",
                "set",
                "eth0",
                "address",
                &format!("02:00:00:00:01:{i:02x}"),
            ],
        );
        ip(
            &pod,
            &[
                "addr",
                "add",
                &format!("10.244.1.{}/24", i + 1),
                "dev",
                "eth0",
            ],
        );
        ip(&pod, &["link", "set", "eth0", "up"]);
        ip(&pod, &["route", "add", "default", "via", "10.244.1.1"]);
        ip(&sw, &["link", "set", &port, "up"]);
    }
    // Router: `up` ↔ vup (it is also node 2 at 198.18.0.2), `n2` ↔ node 2's pod, `ext` ↔
    // the external host. It routes and does no NAT.
    ip(
        &rt,
        &[
            "link", "add", "name", "up", "type", "veth", "peer", "name", "vup", "netns", &sw,
        ],
    );
    ip(&rt, &["addr", "add", "198.18.0.254/24", "dev", "up"]);
    ip(&rt, &["addr", "add", "198.18.0.2/24", "dev", "up"]);
    ip(&rt, &["link", "set", "dev", "up", "up"]);
    ip(&sw, &["link", "set", "vup", "up"]);
    for (side, host, host_addr, gw_addr, gw_cidr) in [
        ("n2", &n2, "10.244.2.5/24", "10.244.2.1", "10.244.2.1/24"),
        ("ext", &ex, "198.19.0.10/24", "198.19.0.1", "198.19.0.1/24"),
    ] {
        ip(
            &rt,
            &[
                "link", "add", "name", side, "type", "veth", "peer", "name", "eth0", "netns", host,
            ],
        );
        ip(&rt, &["addr", "add", gw_cidr, "dev", side]);
        ip(&rt, &["link", "set", side, "up"]);
        ip(host, &["addr", "add", host_addr, "dev", "eth0"]);
        ip(host, &["link", "set", "eth0", "up"]);
        ip(host, &["route", "add", "default", "via", gw_addr]);
    }
    must(&[
        "ip",
        "netns",
        "exec",
        &rt,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    ip(&rt, &["route", "add", "10.244.1.0/24", "via", "198.18.0.1"]);
}
