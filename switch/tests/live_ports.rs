//! End to end: ports attached and removed while the switch runs and traffic flows; a veth
//! that disappears under it; hundreds of ports without leaks; a restart after SIGKILL; port
//! security for bound pods.

mod common;

use common::{must, network_test, Switch, Topology};
use serde_json::Value;
use std::time::{Duration, Instant};

/// `n` veth pairs lpN/lqN, both ends in the switch's namespace and up: cheap to make, and
/// enough to attach.
fn idle_ports(topo: &Topology, n: usize) {
    let batch: String = (0..n)
        .map(|i| {
            format!(
                "link add lp{i} type veth peer name lq{i}\nlink set lp{i} up\nlink set lq{i} up\n"
            )
        })
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), batch).unwrap();
    must(&[
        "ip",
        "-n",
        &topo.sw,
        "-batch",
        file.path().to_str().unwrap(),
    ]);
}

/// A gateway config without pods (they come by `port add`), in a directory of its own.
fn gateway_config() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, "[pods]\ngateway = \"10.244.1.1/24\"\n").unwrap();
    (dir, path)
}

/// Frames dropped for port security, by the bridge and at the gateway's entry.
fn spoofed_drops(switch: &Switch) -> u64 {
    let stats = switch.ctl_json(&["show", "stats"]);
    stats["bridge"]["drop_spoofed"].as_u64().unwrap()
        + stats["gateway"]["drop_spoofed"].as_u64().unwrap()
}

/// Attaches every pod by `port add`, bound to its MAC and address.
fn bind_all(topo: &Topology, switch: &Switch) {
    for pod in &topo.pods {
        switch.ctl_json(&["port", "add", &pod.port, "--mac", &pod.mac, "--ip", &pod.ip]);
    }
}

fn ping_all_pairs(topo: &Topology, pods: &[usize]) {
    for &a in pods {
        for &b in pods {
            if a != b {
                assert!(topo.ping(a, b), "ping pod {} → pod {}", a + 1, b + 1);
            }
        }
    }
}

fn port_names(switch: &Switch) -> Vec<String> {
    switch.ctl_json(&["show", "ports"])["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

/// Port `name` as `show ports` lists it, if attached.
fn port_entry(switch: &Switch, name: &str) -> Option<serde_json::Value> {
    switch.ctl_json(&["show", "ports"])["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
}

/// Waits (5 s at most) until the switch no longer lists `name`: its interface went.
fn wait_until_unlisted(switch: &Switch, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while port_entry(switch, name).is_some() {
        assert!(Instant::now() < deadline, "{name} still listed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn finish(switch: Switch) {
    let stopped = switch.stop_clean();
    assert!(
        !stopped.stdout.contains("FRAMES MISSING"),
        "{}",
        stopped.stdout
    );
}

#[test]
fn ports_come_and_go_while_traffic_flows() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(3);
    let (_dir, path) = gateway_config();
    let switch = topo.start_switch_with(&["--config", path.to_str().unwrap()], "");
    assert!(port_names(&switch).is_empty());
    for pod in &topo.pods {
        let added = switch.ctl_json(&["port", "add", &pod.port]);
        eprintln!("port add {}: {} ms", pod.port, added["ms"]);
    }
    ping_all_pairs(&topo, &[0, 1, 2]);

    // A 50 MB transfer between pods 1 and 2 while pod 3's port goes.
    let mut server = topo.spawn(
        &topo.pods[1].ns,
        &[
            "python3",
            &Topology::script("tcp_transfer.py"),
            "serve",
            "5001",
        ],
    );
    common::wait_listening(&topo.pods[1].ns, 5001);
    let sender = {
        let ns = topo.pods[0].ns.clone();
        let script = Topology::script("tcp_transfer.py");
        std::thread::spawn(move || {
            common::exec_bounded(
                &ns,
                &[
                    "python3",
                    &script,
                    "send",
                    "10.244.1.12",
                    "5001",
                    "50000000",
                ],
                Duration::from_secs(120),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let del = switch.ctl_json(&["port", "del", "vp3"]);
    eprintln!("port del vp3 during the transfer: {} ms", del["ms"]);
    let sent = sender.join().unwrap();
    let received = {
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = server.kill();
        server.wait_with_output().unwrap()
    };
    let sent = String::from_utf8_lossy(&sent.stdout).trim().to_string();
    let received = String::from_utf8_lossy(&received.stdout).trim().to_string();
    assert!(sent.starts_with("50000000 "), "sender: {sent:?}");
    assert_eq!(sent, received, "the transfer arrived whole");
    assert!(!topo.ping(0, 2), "a removed port forwards nothing");
    switch.ctl_json(&["port", "add", "vp3"]);
    assert!(topo.ping(0, 2), "added again");

    // The veth of pod 2 disappears under the switch: only its port goes.
    topo.unplug(1);
    wait_until_unlisted(&switch, "vp2");
    assert!(
        topo.ping(0, 2) && topo.ping(2, 0),
        "the others keep forwarding"
    );
    let stats = switch.ctl_json(&["show", "stats"]);
    assert_eq!(stats["ports_lost"], 1, "{stats}");
    topo.replug(1);
    switch.ctl_json(&["port", "add", "vp2"]);
    ping_all_pairs(&topo, &[0, 1, 2]);
    finish(switch);
}

#[test]
fn pods_on_different_frame_segments_reach_each_other() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(3);
    // 4 MiB segments take 8 ports each: pod 1 and seven idle ports fill the first, pods 2
    // and 3 go on a second.
    idle_ports(&topo, 7);
    let (_dir, path) = gateway_config();
    let switch = topo.start_switch_with(
        &["--config", path.to_str().unwrap(), "--frame-segment", "4"],
        "",
    );
    switch.ctl_json(&["port", "add", "vp1"]);
    for i in 0..7 {
        switch.ctl_json(&["port", "add", &format!("lp{i}")]);
    }
    switch.ctl_json(&["port", "add", "vp2"]);
    switch.ctl_json(&["port", "add", "vp3"]);
    let segments = |switch: &Switch| {
        switch.ctl_json(&["show", "stats"])["frame_memory"]["segments"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(segments(&switch), 2);
    ping_all_pairs(&topo, &[0, 1, 2]);
    // Both ways across the segments, whole, with what the pods send in bulk copied over.
    common::tcp_transfer(
        &topo.pods[0].ns,
        &topo.pods[1].ns,
        "10.244.1.12",
        10_000_000,
    );
    common::tcp_transfer(
        &topo.pods[2].ns,
        &topo.pods[0].ns,
        "10.244.1.11",
        10_000_000,
    );
    let stats = switch.ctl_json(&["show", "stats"]);
    let copies = stats["frame_memory"]["segment_copies"].as_u64().unwrap();
    assert!(
        copies > 10_000,
        "the transfers' frames were copied across: {stats}"
    );
    // The second segment goes with its last port, the first stays.
    switch.ctl_json(&["port", "del", "vp2"]);
    assert_eq!(segments(&switch), 2, "vp3 is still on it");
    switch.ctl_json(&["port", "del", "vp3"]);
    assert_eq!(segments(&switch), 1);
    switch.ctl_json(&["port", "add", "vp2"]);
    assert_eq!(segments(&switch), 2, "a new one for the next port");
    assert!(topo.ping(0, 1) && topo.ping(1, 0));
    finish(switch);
}

/// A segment is sized in sockets (one per queue a worker polls), each of which keeps frames
/// lent while quiet: 4-queue ports fill a segment four times sooner than 1-queue ones, and the
/// frames its quiet sockets keep lent never exceed what it has.
#[test]
fn segments_count_sockets_so_multi_queue_ports_fill_them_sooner() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(1);
    for i in 0..3 {
        must(&[
            "ip",
            "-n",
            &topo.sw,
            "link",
            "add",
            &format!("mq{i}"),
            "numtxqueues",
            "4",
            "numrxqueues",
            "4",
            "type",
            "veth",
            "peer",
            "name",
            &format!("mr{i}"),
            "numtxqueues",
            "4",
            "numrxqueues",
            "4",
        ]);
        must(&["ip", "-n", &topo.sw, "link", "set", &format!("mq{i}"), "up"]);
        must(&["ip", "-n", &topo.sw, "link", "set", &format!("mr{i}"), "up"]);
    }
    let (_dir, path) = gateway_config();
    // 4 MiB segments: 1,024 frames, 8 sockets each.
    let switch = topo.start_switch_with(
        &["--config", path.to_str().unwrap(), "--frame-segment", "4"],
        "",
    );
    let memory = |switch: &Switch| switch.ctl_json(&["show", "stats"])["frame_memory"].clone();
    switch.ctl_json(&["port", "add", "mq0"]);
    switch.ctl_json(&["port", "add", "mq1"]);
    assert_eq!(memory(&switch)["segments"], 1, "8 sockets fill the first");
    switch.ctl_json(&["port", "add", "mq2"]);
    assert_eq!(memory(&switch)["segments"], 2, "the next 4 need a second");
    // Each quiet socket keeps (1,024 - 256 reserved) / 8 = 96 frames lent: 12 x 96.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = memory(&switch);
        if m["frames_in_fill_rings"] == 12 * 96 {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 0..3 {
        switch.ctl_json(&["port", "del", &format!("mq{i}")]);
    }
    assert_eq!(memory(&switch)["segments"], 1);
    finish(switch);
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The switch's own process (the child is `ip netns exec`, which execs it: the same pid).
fn memory_of(stats: &Value) -> (u64, u64, u64, u64) {
    let m = &stats["frame_memory"];
    (
        m["bytes_pinned"].as_u64().unwrap(),
        m["frames"].as_u64().unwrap(),
        m["frames_free"].as_u64().unwrap(),
        m["sockets"].as_u64().unwrap(),
    )
}

/// The switch's defaults: 32 MiB segments of 64 ports each.
const SEGMENT_BYTES: u64 = 32 << 20;
const PORTS_PER_SEGMENT: usize = 64;

#[test]
fn two_hundred_fifty_ports_come_and_go_without_leaks() {
    let Some(_net) = network_test() else { return };
    const PORTS: usize = 250;
    let topo = Topology::new(0);
    idle_ports(&topo, PORTS);
    let (_dir, path) = gateway_config();
    let switch = topo.start_switch_with(&["--config", path.to_str().unwrap()], "");
    let pid = switch.pid();
    let (fds0, rss0) = (fd_count(pid), rss_kib(pid));
    let mut rss_after_first = 0;
    for round in 0..2 {
        let start = Instant::now();
        let mut slowest = 0.0f64;
        for i in 0..PORTS {
            let added = switch.ctl_json(&["port", "add", &format!("lp{i}")]);
            slowest = slowest.max(added["ms"].as_f64().unwrap());
        }
        let attach = start.elapsed();
        let stats = switch.ctl_json(&["show", "stats"]);
        let (pinned, frames, free, sockets) = memory_of(&stats);
        eprintln!(
            "round {round}: {PORTS} ports attached in {attach:?} (slowest port add {slowest} ms); pinned {} MiB, kernel estimate {} MiB, {free} of {frames} frames free",
            pinned >> 20,
            stats["frame_memory"]["kernel_bytes_estimate"].as_u64().unwrap() >> 20
        );
        assert_eq!(sockets, PORTS as u64);
        let segments = stats["frame_memory"]["segments"].as_u64().unwrap();
        eprintln!(
            "round {round}: {segments} segments, {} MiB resident",
            rss_kib(pid) >> 10
        );
        assert_eq!(
            segments,
            PORTS.div_ceil(PORTS_PER_SEGMENT) as u64,
            "{stats}"
        );
        assert_eq!(pinned, segments * SEGMENT_BYTES);
        assert!(
            pinned
                + stats["frame_memory"]["kernel_bytes_estimate"]
                    .as_u64()
                    .unwrap()
                < 1 << 30
        );
        let start = Instant::now();
        for i in 0..PORTS {
            switch.ctl_json(&["port", "del", &format!("lp{i}")]);
        }
        eprintln!(
            "round {round}: {PORTS} ports removed in {:?}",
            start.elapsed()
        );
        // A segment goes once its frames are home: at the latest at the worker's next
        // housekeeping (each second) when the kernel was still giving them back.
        let deadline = Instant::now() + Duration::from_secs(5);
        let stats = loop {
            let stats = switch.ctl_json(&["show", "stats"]);
            if stats["frame_memory"]["segments"] == 1 || Instant::now() > deadline {
                break stats;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let (_, frames, free, sockets) = memory_of(&stats);
        assert_eq!(sockets, 0);
        assert_eq!(free, frames, "every frame home: {stats}");
        assert_eq!(
            stats["frame_memory"]["segments"].as_u64().unwrap(),
            1,
            "the segments of the ports that went are unmapped: {stats}"
        );
        assert_eq!(frames * 4096, SEGMENT_BYTES);
        // The last client's connection may still be closing on the switch's side.
        let deadline = Instant::now() + Duration::from_secs(2);
        while fd_count(pid) != fds0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            fd_count(pid),
            fds0,
            "file descriptors back to where they were"
        );
        let rss = rss_kib(pid);
        eprintln!("round {round}: {} MiB resident after", rss >> 10);
        assert!(
            rss < rss0 + (SEGMENT_BYTES >> 10),
            "the unmapped segments' memory is given back: {rss0} KiB at start, {rss} KiB now"
        );
        if round == 0 {
            rss_after_first = rss;
        } else {
            let rss = rss_kib(pid);
            assert!(
                rss <= rss_after_first + 8 * 1024,
                "memory grows with each round: {rss0} KiB at start, {rss_after_first} KiB after the first, {rss} KiB after the second"
            );
        }
    }
    finish(switch);
}

#[test]
fn a_killed_switch_restarts_on_the_same_ports() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(3);
    let ctl = common::ctl_path();
    let args = ["--ports", "vp1,vp2,vp3", "--ctl", &ctl];
    let switch = topo.start_switch_with(&args, "vp1,vp2,vp3");
    assert!(topo.ping(0, 1));
    switch.kill9();
    assert!(
        std::path::Path::new(&ctl).exists(),
        "a killed switch leaves its socket file"
    );
    let switch = topo.start_switch_with(&args, "vp1,vp2,vp3");
    ping_all_pairs(&topo, &[0, 1, 2]);
    finish(switch);
}

#[test]
fn a_bound_pod_cannot_spoof_its_neighbours_or_the_gateway() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(3);
    topo.add_default_routes();
    let (_dir, path) = gateway_config();
    let switch = topo.start_switch_with(&["--config", path.to_str().unwrap()], "");
    bind_all(&topo, &switch);
    ping_all_pairs(&topo, &[0, 1, 2]);
    // Nobody else's address: both ports could send as it.
    let attacker = &topo.pods[2];
    switch.ctl_json(&["port", "del", &attacker.port]);
    let taken = switch.ctl(&[
        "port",
        "add",
        &attacker.port,
        "--mac",
        &attacker.mac,
        "--ip",
        &topo.pods[0].ip,
    ]);
    assert!(!taken.status.success());
    let err = String::from_utf8_lossy(&taken.stderr);
    assert!(err.contains("is bound to port vp1 already"), "{err}");
    let taken = switch.ctl(&[
        "port",
        "add",
        &attacker.port,
        "--mac",
        &topo.pods[1].mac,
        "--ip",
        &attacker.ip,
    ]);
    assert!(!taken.status.success());
    let err = String::from_utf8_lossy(&taken.stderr);
    assert!(err.contains("is bound to port vp2 already"), "{err}");
    switch.ctl_json(&[
        "port",
        "add",
        &attacker.port,
        "--mac",
        &attacker.mac,
        "--ip",
        &attacker.ip,
    ]);
    let ping_gateway = |i: usize| {
        topo.exec(
            &topo.pods[i].ns,
            &["ping", "-c", "1", "-W", "1", "10.244.1.1"],
        )
        .status
        .success()
    };
    assert!(ping_gateway(0) && ping_gateway(1));
    let gateway_mac = {
        let out = must(&["ip", "-n", &topo.pods[0].ns, "neigh", "show", "10.244.1.1"]);
        out.split_whitespace()
            .nth(4)
            .unwrap_or_default()
            .to_string()
    };
    let fdb_of = |mac: &str| -> Option<String> {
        switch.ctl_json(&["show", "fdb"])["fdb"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["mac"] == mac)
            .map(|e| e["port"].as_str().unwrap().to_string())
    };
    let spoofed = || spoofed_drops(&switch);
    let spoofed_before = spoofed();
    let attacker = &topo.pods[2];
    let attacker_reaches_pod2 = || {
        topo.exec(
            &attacker.ns,
            &["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.244.1.12"],
        )
        .status
        .success()
    };

    // Pod 3 takes pod 1's address.
    must(&["ip", "-n", &attacker.ns, "addr", "flush", "dev", "eth0"]);
    must(&[
        "ip",
        "-n",
        &attacker.ns,
        "addr",
        "add",
        "10.244.1.11/24",
        "dev",
        "eth0",
    ]);
    assert!(!attacker_reaches_pod2());
    // Pod 3 takes pod 1's MAC.
    must(&[
        "ip",
        "-n",
        &attacker.ns,
        "link",
        "set",
        "eth0",
        "address",
        &topo.pods[0].mac,
    ]);
    assert!(!attacker_reaches_pod2());
    must(&[
        "ip",
        "-n",
        &attacker.ns,
        "link",
        "set",
        "eth0",
        "address",
        &attacker.mac,
    ]);
    // Pod 3 claims the gateway's address by gratuitous ARP.
    must(&[
        "ip",
        "netns",
        "exec",
        &attacker.ns,
        "python3",
        &Topology::script("rawframe.py"),
        "garp",
        "eth0",
        &attacker.mac,
        "10.244.1.1",
        "5",
    ]);
    std::thread::sleep(Duration::from_millis(200));

    // Nothing changed for the others.
    assert_eq!(
        fdb_of(&topo.pods[0].mac).as_deref(),
        Some("vp1"),
        "pod 1's MAC stays on vp1"
    );
    let out = must(&["ip", "-n", &topo.pods[0].ns, "neigh", "show", "10.244.1.1"]);
    assert!(
        out.contains(&gateway_mac),
        "pod 1 still has the gateway's MAC: {out}"
    );
    assert!(!out.contains(&attacker.mac), "{out}");
    assert!(ping_gateway(0) && ping_gateway(1));
    ping_all_pairs(&topo, &[0, 1]);
    let spoofed = spoofed();
    assert!(
        spoofed >= spoofed_before + 4,
        "counted: {spoofed_before} → {spoofed}"
    );
    finish(switch);
}

/// IPv6 on the link (the switch gives pods IPv4 only, their kernels speak IPv6 all the
/// same): a bound pod's router advertisements would make it every other pod's IPv6 router
/// (CVE-2020-10749); its link-local traffic still flows.
#[test]
fn a_bound_pod_cannot_advertise_itself_as_an_ipv6_router() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(3);
    let (_dir, path) = gateway_config();
    let switch = topo.start_switch_with(&["--config", path.to_str().unwrap()], "");
    bind_all(&topo, &switch);
    for pod in &topo.pods {
        must(&[
            "ip",
            "netns",
            "exec",
            &pod.ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.eth0.disable_ipv6=0",
        ]);
    }
    let link_local = |i: usize| {
        let mac: Vec<u8> = topo.pods[i]
            .mac
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        let mac = pipeline::MacAddr(mac.try_into().unwrap());
        format!("{}%eth0", pipeline::link_local_of(mac))
    };
    // Link-local addresses pass duplicate address detection first (about a second).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !topo
        .exec(
            &topo.pods[0].ns,
            &["ping", "-6", "-c", "1", "-W", "1", &link_local(1)],
        )
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "pod 1 never reached pod 2 over IPv6: {} {} {}",
            must(&["ip", "-n", &topo.pods[0].ns, "-6", "addr"]),
            must(&["ip", "-n", &topo.pods[1].ns, "-d", "link"]),
            switch.ctl_ok(&["show", "stats"])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let drops = || spoofed_drops(&switch);
    let before = drops();
    let attacker = &topo.pods[2];
    must(&[
        "ip",
        "netns",
        "exec",
        &attacker.ns,
        "python3",
        &Topology::script("rawframe.py"),
        "ra",
        "eth0",
        &attacker.mac,
        "3",
    ]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while drops() < before + 3 {
        assert!(
            Instant::now() < deadline,
            "the advertisements were not dropped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for pod in &topo.pods[..2] {
        let addresses = must(&["ip", "-n", &pod.ns, "-6", "addr", "show", "dev", "eth0"]);
        assert!(!addresses.contains("2001:db8:1:"), "{addresses}");
        let routes = must(&["ip", "-n", &pod.ns, "-6", "route", "show", "default"]);
        assert!(routes.trim().is_empty(), "{routes}");
    }
    assert!(topo
        .exec(
            &attacker.ns,
            &["ping", "-6", "-c", "1", "-W", "1", &link_local(0)],
        )
        .status
        .success());
    finish(switch);
}

/// The gateway's configuration names the uplink by its port id: when its interface
/// disappears, no pod may take that id (the gateway would send the node's traffic to it), and
/// `port add` of the uplink is refused (it would join the pod segment), with the reason.
#[test]
fn a_vanished_uplink_keeps_its_id_and_is_not_added_back_as_a_pod() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(
        &path,
        "[pods]\ngateway = \"10.244.1.1/24\"\n\n[uplink]\nport = \"vp1\"\naddress = \"198.18.0.1/24\"\nnext_hop = \"198.18.0.254\"\n",
    )
    .unwrap();
    let switch = topo.start_switch_with(&["--config", path.to_str().unwrap()], "vp1");
    let id_of = |name: &str| port_entry(&switch, name).map(|p| p["id"].as_u64().unwrap());
    let uplink = id_of("vp1").expect("the uplink is attached");
    topo.unplug(0);
    wait_until_unlisted(&switch, "vp1");
    switch.ctl_json(&["port", "add", "vp2"]);
    assert_ne!(id_of("vp2"), Some(uplink), "a pod under the uplink's id");
    topo.replug(0);
    let refused = switch.ctl(&["port", "add", "vp1"]);
    assert!(!refused.status.success(), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("uplink"), "{said}");
    finish(switch);
}

/// The runtime does not call the CNI plugin again for running pods: a restarted switch must
/// attach again, with their bindings, the ports `port add` attached (recorded beside its
/// control socket), but not one `port del` removed or whose interface went meanwhile.
#[test]
fn a_restarted_switch_attaches_its_pods_again() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(3);
    let (dir, path) = gateway_config();
    let ctl = dir.path().join("vswitch.sock");
    let args = [
        "--config",
        path.to_str().unwrap(),
        "--ctl",
        ctl.to_str().unwrap(),
    ];
    let switch = topo.start_switch_with(&args, "");
    bind_all(&topo, &switch);
    ping_all_pairs(&topo, &[0, 1, 2]);
    finish(switch);

    let switch = topo.start_switch_with(&args, "vp1,vp2,vp3");
    let vp1 = port_entry(&switch, "vp1").expect("vp1 attached again");
    assert_eq!(vp1["mac"], topo.pods[0].mac.as_str(), "{vp1}");
    assert_eq!(vp1["ip"], topo.pods[0].ip.as_str(), "{vp1}");
    ping_all_pairs(&topo, &[0, 1, 2]);
    switch.ctl_json(&["port", "del", "vp2"]);
    finish(switch);

    // Pod 3 goes while the switch is down.
    topo.unplug(2);
    let switch = topo.start_switch_with(&args, "vp1");
    assert_eq!(port_names(&switch), ["vp1"]);
    assert_eq!(
        std::fs::read_dir(dir.path().join("vswitch-ports"))
            .unwrap()
            .count(),
        1,
        "vp3's record went with its interface"
    );
    finish(switch);

    // Pod 1's interface is made again under its name while the switch is down: another
    // interface, whose pod the record's binding is not for.
    topo.unplug(0);
    topo.replug(0);
    let switch = topo.start_switch_with(&args, "");
    assert_eq!(port_names(&switch), Vec::<String>::new());
    assert!(
        !dir.path().join("vswitch-ports").exists(),
        "vp1's record went with its interface"
    );
    finish(switch);
}

/// A pod recreated at once under the same interface name: `port add` takes the new
/// interface, whether or not the switch noticed the old one go.
#[test]
fn a_port_added_again_for_a_replaced_interface_takes_the_new_one() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(2);
    let (_dir, path) = gateway_config();
    let switch = topo.start_switch_with(&["--config", path.to_str().unwrap()], "");
    for pod in &topo.pods {
        switch.ctl_json(&["port", "add", &pod.port]);
    }
    assert!(topo.ping(0, 1));
    topo.unplug(1);
    topo.replug(1);
    switch.ctl_json(&["port", "add", &topo.pods[1].port]);
    assert!(topo.ping(0, 1), "through the new interface");
    finish(switch);
}

/// An address sweep through the gateway (a scan of the pod range): it asks the whole pod
/// segment for each address, and again each second. On a full segment (quiet ports keep most
/// of its frames lent) a pass's requests need more copies than the pool keeps; the worker
/// sends what is queued to get frames back, as for floods, and no pod misses a request.
#[test]
fn the_gateway_s_requests_reach_every_pod_of_a_full_segment() {
    let Some(_net) = network_test() else { return };
    const PODS: usize = 8;
    // Fewer than a quiet port keeps lent (124), so that none is lost on the way in.
    const SWEPT: u64 = 90;
    let topo = Topology::new(PODS);
    let (_dir, path) = gateway_config();
    let switch = topo.start_switch_with(
        &["--config", path.to_str().unwrap(), "--frame-segment", "4"],
        "",
    );
    bind_all(&topo, &switch);
    let sender = &topo.pods[0];
    assert!(topo
        .exec(&sender.ns, &["ping", "-c", "1", "-W", "1", "10.244.1.1"])
        .status
        .success());
    let gateway_mac = must(&["ip", "-n", &sender.ns, "neigh", "show", "10.244.1.1"])
        .split_whitespace()
        .nth(4)
        .unwrap_or_default()
        .to_string();
    let rx_packets = |pod: &common::Pod| -> u64 {
        let out = must(&["ip", "-n", &pod.ns, "-s", "-j", "link", "show", "eth0"]);
        let link: Value = serde_json::from_str(&out).unwrap();
        link[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
    };
    let before: Vec<u64> = topo.pods.iter().map(rx_packets).collect();
    let requests_before = switch.ctl_json(&["show", "stats"])["gateway"]["arp_requests_sent"]
        .as_u64()
        .unwrap();
    must(&[
        "ip",
        "netns",
        "exec",
        &sender.ns,
        "python3",
        &Topology::script("rawframe.py"),
        "sweep",
        "eth0",
        &gateway_mac,
        &sender.mac,
        &sender.ip,
        "10.244.1.100",
        &SWEPT.to_string(),
    ]);
    // The first requests, then the second round a second later.
    let deadline = Instant::now() + Duration::from_secs(5);
    let requests = loop {
        let sent = switch.ctl_json(&["show", "stats"])["gateway"]["arp_requests_sent"]
            .as_u64()
            .unwrap()
            - requests_before;
        if sent >= 2 * SWEPT || Instant::now() > deadline {
            break sent;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(requests >= 2 * SWEPT, "{requests} requests sent");
    // Each pod gets every request (its kernel counts them; the last may still be on its way).
    let deadline = Instant::now() + Duration::from_secs(5);
    while topo
        .pods
        .iter()
        .zip(&before)
        .any(|(pod, before)| rx_packets(pod) - before < requests)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let ports = switch.ctl_json(&["show", "ports", "--json"]);
    for port in ports["ports"].as_array().unwrap() {
        for (reason, n) in port["drops"].as_object().unwrap() {
            assert!(
                !reason.starts_with("tx_drop") || n == 0,
                "{}: {reason} = {n}",
                port["name"]
            );
        }
    }
    for (pod, before) in topo.pods.iter().zip(before) {
        let got = rx_packets(pod) - before;
        assert!(got >= requests, "{}: {got} of {requests} requests", pod.ns);
    }
    let stats = switch.ctl_json(&["show", "stats", "--json"]);
    assert!(
        stats["workers"][0]["flood_transmits"].as_u64() > Some(0),
        "{stats}"
    );
    finish(switch);
}
