//! End to end: `vswitch ctl` against a running switch with traffic flowing, in both output
//! formats; the control socket's permissions and its handling of bad clients; `/metrics`.

mod common;

use common::{must, network_test, Switch, Topology};
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

const SERVICE: &str = "10.96.0.10";
const METRICS: &str = "127.0.0.1:9464";

fn node_toml(ports: &str) -> String {
    format!(
        "[pods]\nports = [{ports}]\ngateway = \"10.244.1.1/24\"\n\n[[service]]\nname = \"web\"\ncluster_ip = \"{SERVICE}\"\nport = 80\nbackends = [\"10.244.1.12:8080\"]\n"
    )
}

/// `GET /metrics` from inside the switch's namespace (where the endpoint listens).
fn scrape(topo: &Topology) -> String {
    let code = format!(
        "import urllib.request; print(urllib.request.urlopen('http://{METRICS}/metrics', timeout=5).read().decode())"
    );
    let out = common::exec_bounded(&topo.sw, &["python3", "-c", &code], Duration::from_secs(10));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sample(metrics: &str, line_start: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{metrics}")) as u64
}

fn names(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v[key].as_str().unwrap_or("").to_string())
        .collect()
}

/// Sends raw bytes to the control socket; returns the answer line.
fn raw_request(switch: &Switch, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(&switch.ctl).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

#[test]
fn every_command_answers_in_both_formats_while_traffic_flows() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(3);
    topo.add_default_routes();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, node_toml("\"vp1\", \"vp2\"")).unwrap();
    let switch = topo.start_switch_with(
        &["--config", path.to_str().unwrap(), "--metrics", METRICS],
        "vp1,vp2",
    );
    let port_add = switch.ctl_json(&["port", "add", "vp3"]);
    assert_eq!(port_add["port"]["name"], "vp3");
    assert!(topo.ping(0, 1) && topo.ping(0, 2) && topo.ping(1, 2));
    // A service flow: pod 1 → 10.96.0.10:80 → pod 2's 8080.
    let mut server = topo.spawn(
        &topo.pods[1].ns,
        &[
            "python3",
            &Topology::script("http_probe.py"),
            "serve",
            "8080",
            "backend",
            "60",
        ],
    );
    let mut ready = [0u8; 6];
    server
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    let got = topo.exec(
        &topo.pods[0].ns,
        &[
            "python3",
            &Topology::script("http_probe.py"),
            "get",
            &format!("http://{SERVICE}:80/"),
            "2",
            "2",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "backend\nbackend"
    );

    // Text tables.
    let text = switch.ctl_ok(&["show", "ports"]);
    for p in ["vp1", "vp2", "vp3", "rx_packets"] {
        assert!(text.contains(p), "{text}");
    }
    let text = switch.ctl_ok(&["show", "stats"]);
    assert!(
        text.contains("cycles_per_packet") && text.contains("frame memory"),
        "{text}"
    );
    let text = switch.ctl_ok(&["show", "fdb"]);
    assert!(
        text.contains(&topo.pods[0].mac) && text.contains("age_s"),
        "{text}"
    );
    let text = switch.ctl_ok(&["show", "neigh"]);
    assert!(
        text.contains("10.244.1.11") && text.contains("reachable"),
        "{text}"
    );
    let text = switch.ctl_ok(&["show", "routes"]);
    assert!(
        text.contains("10.244.1.0/24") && text.contains("pods"),
        "{text}"
    );
    let text = switch.ctl_ok(&["show", "services"]);
    assert!(
        text.contains("web") && text.contains("10.244.1.12:8080"),
        "{text}"
    );
    let text = switch.ctl_ok(&["show", "conntrack"]);
    assert!(text.contains(&format!("{SERVICE}:80")), "{text}");

    // JSON: what the traffic implies.
    let ports = switch.ctl_json(&["show", "ports"]);
    assert_eq!(names(&ports["ports"], "name"), ["vp1", "vp2", "vp3"]);
    for p in ports["ports"].as_array().unwrap() {
        assert!(p["rx_packets"].as_u64().unwrap() > 0, "{p}");
        assert!(p["tx_packets"].as_u64().unwrap() > 0, "{p}");
        assert!(p["drops"].is_object() && p["rx_bytes"].is_u64() && p["tx_bytes"].is_u64());
    }
    let stats = switch.ctl_json(&["show", "stats"]);
    let w = &stats["workers"][0];
    for k in ["core", "packets", "cycles_per_packet", "busy_percent"] {
        assert!(w.get(k).is_some(), "{k} in {w}");
    }
    assert!(w["packets"].as_u64().unwrap() > 0);
    assert!(
        stats["frame_memory"]["bytes_pinned"].as_u64().unwrap() > 0,
        "{stats}"
    );
    assert!(stats["bridge"]["learned"].as_u64().unwrap() >= 3, "{stats}");
    assert!(
        stats["gateway"]["nat_service"].as_u64().unwrap() >= 2,
        "{stats}"
    );
    assert!(
        stats["conntrack"]["entries"].as_u64().unwrap() >= 2,
        "{stats}"
    );
    let fdb = switch.ctl_json(&["show", "fdb"]);
    let macs = names(&fdb["fdb"], "mac");
    for (i, pod) in topo.pods.iter().enumerate() {
        let e = fdb["fdb"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["mac"] == pod.mac.as_str())
            .unwrap_or_else(|| panic!("pod {} not in {macs:?}", i + 1));
        assert_eq!(e["port"], pod.port.as_str());
        assert!(e["age_s"].is_u64());
    }
    let neigh = switch.ctl_json(&["show", "neigh"]);
    let backend = neigh["neigh"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["ip"] == "10.244.1.12")
        .unwrap_or_else(|| panic!("{neigh}"));
    assert_eq!(backend["mac"], topo.pods[1].mac.as_str());
    assert_eq!(backend["port"], "vp2");
    assert!(backend["state"].is_string());
    let routes = switch.ctl_json(&["show", "routes"]);
    assert!(names(&routes["routes"], "prefix").contains(&"10.244.1.0/24".to_string()));
    let services = switch.ctl_json(&["show", "services"]);
    assert_eq!(services["services"][0]["backends"][0], "10.244.1.12:8080");
    let ct = switch.ctl_json(&["show", "conntrack"]);
    let flow = ct["conntrack"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["orig_dst"] == format!("{SERVICE}:80").as_str())
        .unwrap_or_else(|| panic!("no service flow in {ct}"));
    assert_eq!(flow["proto"], "tcp");
    assert_eq!(
        flow["reply_src"], "10.244.1.12:8080",
        "the translated reply address"
    );
    assert!(flow["orig_src"]
        .as_str()
        .unwrap()
        .starts_with("10.244.1.11:"));
    assert_eq!(flow["reply_dst"], flow["orig_src"]);
    assert!(flow["state"].is_string() && flow["expires_s"].is_u64());
    let one = switch.ctl_json(&["show", "conntrack", "--limit", "1"]);
    assert_eq!(one["conntrack"].as_array().unwrap().len(), 1);

    // A capture of both directions while pod 1 pings pod 2.
    let pcap = dir.path().join("vp1.pcap");
    let capture = {
        let ctl = switch.ctl.clone();
        let pcap = pcap.clone();
        std::thread::spawn(move || {
            Command::new(common::vswitch_bin())
                .args([
                    "ctl", "--socket", &ctl, "capture", "vp1", "--count", "4", "--out",
                ])
                .arg(&pcap)
                .args(["--timeout", "20"])
                .output()
                .unwrap()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !capture.is_finished() && Instant::now() < deadline {
        topo.ping(0, 1);
    }
    let out = capture.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("wrote 4 frames"));
    let read = must(&["tcpdump", "-nn", "-r", pcap.to_str().unwrap()]);
    assert_eq!(read.lines().count(), 4, "{read}");
    assert!(
        read.contains("ICMP echo request") && read.contains("ICMP echo reply"),
        "{read}"
    );
    assert!(read.contains("10.244.1.11 > 10.244.1.12"), "{read}");

    // Metrics grow with traffic.
    let before = scrape(&topo);
    let rx = "vswitch_port_rx_packets_total{port=\"vp1\"}";
    for name in [
        "vswitch_port_tx_packets_total{port=\"vp1\"}",
        "vswitch_port_drops_total{port=\"vp1\",reason=\"tx_drop_ring_full\"}",
        "vswitch_fdb_entries",
        "vswitch_conntrack_entries",
        "vswitch_worker_busy_ratio{core=\"any\"}",
        "vswitch_frame_memory_bytes",
        "vswitch_frame_memory_segments",
        "vswitch_conntrack_inserts_total",
        "vswitch_nat_port_exhaustion_total",
    ] {
        sample(&before, name);
    }
    assert!(topo.ping(0, 1));
    let after = scrape(&topo);
    assert!(
        sample(&after, rx) >= sample(&before, rx) + 2,
        "{before}\n{after}"
    );

    // Changes.
    let flushed = switch.ctl_json(&["fdb", "flush"]);
    assert!(flushed["flushed"].as_u64().unwrap() >= 3, "{flushed}");
    assert!(switch.ctl_ok(&["fdb", "flush"]).contains("flushed"));
    let flushed = switch.ctl_json(&["conntrack", "flush"]);
    assert!(flushed["flushed"].as_u64().unwrap() >= 2, "{flushed}");
    assert_eq!(switch.ctl_json(&["show", "conntrack"])["total"], 0);
    assert!(switch.ctl_ok(&["conntrack", "flush"]).contains("flushed 0"));
    assert!(switch.ctl_json(&["reload"])["reloaded"]
        .as_str()
        .unwrap()
        .contains("1 services"));
    assert!(switch.ctl_ok(&["reload"]).contains("reloaded"));
    let del = switch.ctl_json(&["port", "del", "vp3"]);
    assert_eq!(del["removed"], "vp3");
    assert!(switch.ctl_ok(&["port", "add", "vp3"]).contains("added vp3"));
    assert!(switch
        .ctl_ok(&["port", "del", "vp3"])
        .contains("removed vp3"));

    // Failures: non-zero, the reason on stderr.
    for (args, reason) in [
        (&["port", "del", "vp9"][..], "no port \"vp9\""),
        (&["port", "add", "vp9"][..], "does not exist"),
        (&["port", "add", "vp1"][..], "already attached"),
        (
            &["port", "add", "vp3", "--ip", "10.244.1.13"][..],
            "--ip needs --mac",
        ),
        (
            &["port", "add", "vp3", "--mac", "nope"][..],
            "not a MAC address",
        ),
        (
            &[
                "port",
                "add",
                "vp3",
                "--mac",
                "02:00:00:00:00:33",
                "--ip",
                "10.244.1.1",
            ][..],
            "--ip 10.244.1.1 is not a pod address in 10.244.1.1/24",
        ),
        (
            &[
                "port",
                "add",
                "vp3",
                "--mac",
                "02:00:00:00:00:33",
                "--ip",
                "10.245.0.3",
            ][..],
            "is not a pod address",
        ),
        (&["show", "colours"][..], "unknown command"),
        (
            &["capture", "vp9", "--count", "1", "--out", "/tmp/x.pcap"][..],
            "no port",
        ),
        (&["show", "conntrack", "--limit", "0"][..], "--limit"),
    ] {
        let out = switch.ctl(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(reason), "{args:?}: {err}");
    }
    let out = Command::new(common::vswitch_bin())
        .args([
            "ctl",
            "--socket",
            "/nonexistent/vswitch.sock",
            "show",
            "ports",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));

    // Bad clients get an error and disturb nothing.
    assert!(raw_request(&switch, b"not json\n").contains("malformed request"));
    assert!(raw_request(&switch, b"{\"args\": [1]}\n").contains("malformed request"));
    let mut big = vec![b'x'; 100_000];
    big.push(b'\n');
    assert!(raw_request(&switch, &big).contains("longer than"));
    let slow = UnixStream::connect(&switch.ctl).unwrap();
    assert!(topo.ping(0, 1), "forwarding goes on while a client stalls");
    assert!(
        switch.ctl_ok(&["show", "ports"]).contains("vp1"),
        "other clients are served"
    );
    let mut answer = String::new();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = (&slow).read_to_string(&mut answer);
    // (Not waited out: the client's own timeout, 10 s, would leave the answer empty.)
    assert!(answer.contains("timed out"), "{answer}");
    // So is a metrics client that trickles its request a byte at a time (one of a few slots).
    let trickle = format!(
        "import socket, time\n\
         s = socket.create_connection(('{}', {}))\n\
         try:\n    for c in b'GET /metrics HTTP/1.0\\r\\n':\n        s.send(bytes([c]))\n        time.sleep(0.3)\n\
         except OSError:\n    pass\n\
         s.settimeout(5)\n\
         try:\n    print(s.recv(100).decode(errors='replace'))\n\
         except OSError as e:\n    print('no answer', e)\n",
        METRICS.split(':').next().unwrap(),
        METRICS.split(':').nth(1).unwrap()
    );
    let out = common::exec_bounded(
        &topo.sw,
        &["python3", "-c", &trickle],
        Duration::from_secs(20),
    );
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // A pod the file lists goes away: its port goes, and the file still reloads.
    topo.unplug(1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while switch.ctl_ok(&["show", "ports"]).contains("vp2") {
        assert!(Instant::now() < deadline, "vp2 still listed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(switch.ctl_ok(&["reload"]).contains("reloaded"));

    let _ = server.kill();
    let _ = server.wait();
    switch.stop_clean();
}

/// Removes the user it made, also when the test fails.
struct TestUser(String);

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").args(["-r", &self.0]).output();
    }
}

#[test]
fn another_user_cannot_connect_to_the_control_socket() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(2);
    let dir = tempfile::tempdir().unwrap();
    // The directory lets anyone through: only the socket's own mode keeps them out.
    must(&["chmod", "0755", dir.path().to_str().unwrap()]);
    let sock = dir.path().join("ctl.sock");
    let switch = topo.start_switch_with(
        &["--ports", "vp1,vp2", "--ctl", sock.to_str().unwrap()],
        "vp1,vp2",
    );
    let meta = std::fs::metadata(&sock).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), 0, "owned by the user running the switch");
    let name = format!("vswt{}", std::process::id());
    must(&[
        "useradd",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        &name,
    ]);
    let _user = TestUser(name.clone());
    let code = format!(
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect({:?})\nexcept PermissionError:\n print('refused'); sys.exit(0)\nprint('connected')",
        sock.to_str().unwrap()
    );
    let out = Command::new("runuser")
        .args(["-u", &name, "--", "python3", "-c", &code])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "refused",
        "{out:?}"
    );
    let out = Command::new("runuser")
        .args(["-u", &name, "--", common::vswitch_bin(), "ctl", "--socket"])
        .arg(&sock)
        .args(["show", "ports"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect") || err.contains("denied"),
        "{err}"
    );
    assert!(
        switch.ctl_ok(&["show", "ports"]).contains("vp1"),
        "the owner can"
    );
    let stopped = switch.stop();
    assert_eq!(stopped.code, Some(0), "{}", stopped.stderr);
    assert!(!sock.exists(), "the socket file goes with the switch");
}

/// Captures of one port run side by side, each sees its frames; one whose client went stops
/// at once (it would copy the port's frames and grow its file for up to an hour).
#[test]
fn captures_of_a_port_run_side_by_side_and_end_with_their_client() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(2);
    let switch = topo.start_switch(&[]);
    let dir = tempfile::tempdir().unwrap();
    let capture = |name: &str, count: &str, timeout: &str| {
        Command::new(common::vswitch_bin())
            .args([
                "ctl",
                "--socket",
                &switch.ctl,
                "capture",
                "vp1",
                "--count",
                count,
            ])
            .arg("--out")
            .arg(dir.path().join(name))
            .args(["--timeout", timeout])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (capture("a.pcap", "4", "20"), capture("b.pcap", "4", "20"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while [&mut a, &mut b]
        .iter_mut()
        .any(|c| c.try_wait().unwrap().is_none())
        && Instant::now() < deadline
    {
        topo.ping(0, 1);
    }
    for c in [a, b] {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("wrote 4 frames"));
    }

    let mut endless = capture("c.pcap", "1000000", "3600");
    let pcap = dir.path().join("c.pcap");
    let size = || std::fs::metadata(&pcap).map_or(0, |m| m.len());
    // The pcap header is 24 bytes; frames follow once the writer flushes (8 KiB).
    let deadline = Instant::now() + Duration::from_secs(20);
    while size() <= 24 {
        assert!(Instant::now() < deadline, "nothing captured");
        topo.ping(0, 1);
    }
    endless.kill().unwrap();
    endless.wait().unwrap();
    // Ended within a check (250 ms): the connection's thread is gone, the file written out.
    let connections = || {
        std::fs::read_dir(format!("/proc/{}/task", switch.pid()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim() == "vswitch-ctl")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while connections() > 0 {
        assert!(
            Instant::now() < deadline,
            "the capture went on without its client"
        );
        topo.ping(0, 1);
    }
    // What it wrote is a whole pcap.
    let read = must(&["tcpdump", "-nn", "-r", pcap.to_str().unwrap()]);
    assert!(read.contains("ICMP echo"), "{read}");
    switch.stop_clean();
}
