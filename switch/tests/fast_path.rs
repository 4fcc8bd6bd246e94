//! The XDP fast path (issue 10, L2 flows): what the pods see is the same with it and without
//! it; it carries what it may (TCP and UDP, checksums finished where pods left them to offload,
//! no connection changes) and counts it on the ports; and its flows go when the bridge's view
//! changes.

mod common;

use common::{network_test, Switch, Topology};

const FAST: &[&str] = &["--fast-path", "xdp"];

fn worker_counter(switch: &Switch, name: &str) -> u64 {
    let stats = switch.ctl_json(&["show", "stats", "--json"]);
    stats["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w[name].as_u64().unwrap_or_else(|| panic!("no {name}: {w}")))
        .sum()
}

fn stop(switch: Switch) -> String {
    switch.stop_clean().stdout
}

/// Each port's `fast_path` in `show ports` (`None` while it is being probed), by name.
fn fast_path_of_ports(switch: &Switch) -> Vec<(String, Option<bool>)> {
    let ports = switch.ctl_json(&["show", "ports"]);
    ports["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["fast_path"].as_bool(),
            )
        })
        .collect()
}

/// A counter of port `name` in `show ports`, at `path` (e.g. `["drops", "tx_drop_over_mtu"]`).
fn port_count(switch: &Switch, name: &str, path: &[&str]) -> u64 {
    let ports = switch.ctl_json(&["show", "ports"]);
    let port = ports["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no port {name}: {ports}"));
    path.iter()
        .fold(port, |v, k| &v[*k])
        .as_u64()
        .unwrap_or_else(|| panic!("no {path:?} for {name}: {ports}"))
}

/// What the fast path has sent out of port `name` (`tx_fast_path_packets`).
fn fast_path_sent_to(switch: &Switch, name: &str) -> u64 {
    port_count(switch, name, &["tx_fast_path_packets"])
}

/// The same once every port is probed (each is, beside its attachment).
fn probed(switch: &Switch) -> Vec<(String, Option<bool>)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let fast = fast_path_of_ports(switch);
        if fast.iter().all(|(_, f)| f.is_some()) || std::time::Instant::now() > deadline {
            return fast;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// What `read` gives once it is above `floor`, or as it is after 10 s: the workers read the
/// program's counters once a second, later on a loaded machine.
fn once_above(floor: u64, read: impl Fn() -> u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let value = read();
        if value > floor || std::time::Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Takes NAPI from pod `pod`'s end of its veth (the tests' pods have GRO on), or gives it back.
fn set_gro(topo: &Topology, pod: usize, on: bool) {
    let ns = &topo.pods[pod].ns;
    let gro = if on { "on" } else { "off" };
    common::must(&[
        "ip", "netns", "exec", ns, "ethtool", "-K", "eth0", "gro", gro,
    ]);
}

fn gro_off(topo: &Topology, pod: usize) {
    set_gro(topo, pod, false);
}

/// The ports' fast-path states once they are `want`, or as they are after `secs` seconds.
fn fast_path_within(
    switch: &Switch,
    want: &[(String, Option<bool>)],
    secs: u64,
) -> Vec<(String, Option<bool>)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let fast = fast_path_of_ports(switch);
        if fast == want || std::time::Instant::now() > deadline {
            return fast;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn named(ports: &[(&str, bool)]) -> Vec<(String, Option<bool>)> {
    ports
        .iter()
        .map(|(n, f)| (n.to_string(), Some(*f)))
        .collect()
}

/// Pods that finish their own checksums (transmit offload off): their TCP data goes by the
/// fast path, intact, and the ports count it.
#[test]
fn tcp_with_complete_checksums_goes_by_the_fast_path_and_is_counted() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(2);
    topo.pods_finish_checksums();
    let switch = topo.start_switch(FAST);
    assert!(topo.ping(0, 1));
    topo.transfer(0, 1, 50_000_000);
    // The workers read the program's counters once a second.
    let fast = once_above(20_000, || worker_counter(&switch, "fast_path_packets"));
    assert!(fast > 20_000, "fast_path_packets = {fast}");
    assert!(worker_counter(&switch, "fast_path_flows") >= 2);
    let out = stop(switch);
    let rx: u64 = out
        .lines()
        .find(|l| l.starts_with("vp1 "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(rx > 50_000_000, "vp1 rx_bytes {rx} include the fast path's");
}

/// A capture sees a port's frames as the workers do: while it runs, the port's flows stay
/// off the fast path (it would see a connection's handshake and nothing after); they come
/// back once it ends.
#[test]
fn a_capture_sees_the_flows_the_fast_path_would_carry() {
    let Some(_net) = network_test() else { return };
    capture_then_fast_path(FAST);
}

/// The same with the two ports on two workers: the one that never captured for the port
/// (it polls none of its queues) learns that the capture ended too.
#[test]
fn a_capture_sees_the_flows_the_fast_path_would_carry_two_workers() {
    let Some(_net) = network_test() else { return };
    capture_then_fast_path(&["--fast-path", "xdp", "--cores", "0,1"]);
}

fn capture_then_fast_path(args: &[&str]) {
    let topo = Topology::new(2);
    topo.pods_finish_checksums();
    let switch = topo.start_switch(args);
    assert!(topo.ping(0, 1));
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("vp2.pcap");
    let capture = {
        let (ctl, pcap) = (switch.ctl.clone(), pcap.clone());
        std::thread::spawn(move || {
            std::process::Command::new(common::vswitch_bin())
                .args(["ctl", "--socket", &ctl, "capture", "vp2", "--count", "200"])
                .arg("--out")
                .arg(&pcap)
                .args(["--timeout", "10"])
                .output()
                .unwrap()
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !capture.is_finished() && std::time::Instant::now() < deadline {
        topo.transfer(0, 1, 5_000_000);
    }
    let out = capture.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = common::must(&["tcpdump", "-nn", "-r", pcap.to_str().unwrap()]);
    let data = read
        .lines()
        .filter(|l| l.contains("10.244.1.11.") && !l.ends_with("length 0"))
        .count();
    assert!(data > 100, "{data} data segments of 200 frames:\n{read}");
    // Over: the fast path carries the port's flows again (every worker learns it within a
    // second; its counters are read once a second).
    // Into the captured port too: every worker learns it within a second (its counters are
    // read once a second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let carried = loop {
        let before = fast_path_sent_to(&switch, "vp2");
        topo.transfer(0, 1, 5_000_000);
        let after = once_above(before + 1_000, || fast_path_sent_to(&switch, "vp2"));
        if after > before + 1_000 || std::time::Instant::now() > deadline {
            break after - before;
        }
    };
    assert!(
        carried > 1_000,
        "{carried} frames into vp2 by the fast path"
    );
    stop(switch);
}

/// Pods with the kernel's default offloads leave TCP checksums partial: the fast path finishes
/// them as the switch does, and the data arrives intact.
#[test]
fn offloaded_checksums_are_finished_by_the_fast_path() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(2);
    let switch = topo.start_switch(FAST);
    assert!(topo.ping(0, 1));
    topo.transfer(0, 1, 50_000_000);
    topo.transfer(1, 0, 20_000_000);
    let fast = once_above(20_000, || worker_counter(&switch, "fast_path_packets"));
    assert!(fast > 20_000, "fast_path_packets = {fast}");
    stop(switch);
}

/// What pod 2 accepts of UDP datagrams from pod 1 with complete, partial and wrong checksums.
fn udp_seen(extra: &[&str]) -> String {
    let topo = Topology::new(2);
    let switch = topo.start_switch(extra);
    // Both addresses learned, so the flow qualifies at once.
    assert!(topo.ping(1, 0));
    let counts = topo.udp_accepted(
        0,
        1,
        &[("good", 50), ("partial", 50), ("wrong", 50), ("good", 50)],
        "3",
    );
    if extra == FAST {
        assert!(
            once_above(0, || worker_counter(&switch, "fast_path_packets")) > 0,
            "the good datagrams after the first went by the fast path"
        );
    }
    stop(switch);
    counts
}

#[test]
fn the_pods_see_the_same_with_and_without_the_fast_path() {
    let Some(_net) = network_test() else { return };
    let slow = udp_seen(&[]);
    let fast = udp_seen(FAST);
    assert_eq!(slow, "good=100 partial=50");
    assert_eq!(fast, slow);
}

/// Flows go with their port, and with the addresses they were learned from.
#[test]
fn flows_go_when_their_port_or_addresses_go() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(3);
    topo.pods_finish_checksums();
    let switch = topo.start_switch(FAST);
    assert!(topo.ping(0, 1) && topo.ping(0, 2));
    topo.transfer(0, 1, 2_000_000);
    let flows = || worker_counter(&switch, "fast_path_flows");
    assert!(flows() >= 2, "pod 1 <-> pod 2 installed");
    switch.ctl_ok(&["fdb", "flush"]);
    assert_eq!(flows(), 0, "fdb flush takes every flow out");
    topo.transfer(0, 1, 2_000_000);
    assert!(flows() >= 2);
    switch.ctl_ok(&["port", "del", "vp2"]);
    assert_eq!(flows(), 0, "port del takes its flows out");
    assert!(topo.ping(0, 2), "the others still reach each other");
    stop(switch);
}

/// A pod whose end has no NAPI (GRO off, no XDP program) would lose every frame the fast path
/// redirects to it: the switch probes each port when it attaches it and leaves such a port's
/// traffic to the workers, while the others keep the fast path.
#[test]
fn a_pod_without_napi_is_served_by_the_workers() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(2);
    gro_off(&topo, 1);
    let switch = topo.start_switch(FAST);
    assert_eq!(probed(&switch), named(&[("vp1", true), ("vp2", false)]));
    assert!(topo.ping(0, 1) && topo.ping(1, 0));
    // Both directions whole: pod 2's direction by the workers, pod 1's by the fast path.
    topo.transfer(0, 1, 20_000_000);
    topo.transfer(1, 0, 20_000_000);
    let fast_packets = once_above(5_000, || worker_counter(&switch, "fast_path_packets"));
    assert!(
        fast_packets > 5_000,
        "pod 1's direction still goes by the fast path: {fast_packets}"
    );
    stop(switch);
}

/// With every port in generic XDP mode the fast path's redirects go out through the ports'
/// ordinary transmit, which needs no NAPI at the other end: a pod without GRO takes it too.
#[test]
fn in_generic_mode_a_pod_without_napi_takes_the_fast_path() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(2);
    topo.pods_finish_checksums();
    gro_off(&topo, 1);
    let switch = topo.start_switch(&["--fast-path", "xdp", "--xdp-mode", "generic"]);
    assert_eq!(probed(&switch), named(&[("vp1", true), ("vp2", true)]));
    assert!(topo.ping(0, 1));
    topo.transfer(0, 1, 10_000_000);
    let sent = once_above(3_000, || fast_path_sent_to(&switch, "vp2"));
    assert!(sent > 3_000, "to pod 2 by the fast path: {sent}");
    assert_eq!(
        fast_path_of_ports(&switch),
        named(&[("vp1", true), ("vp2", true)]),
        "still on it: generic redirects are not counted by the veth's XDP transmit"
    );
    stop(switch);
}

/// A port whose driver has no `ndo_xdp_xmit` (a Linux bridge device, in generic XDP mode,
/// with pod 2's veth behind it) would drop whatever the fast path redirected into it: the
/// kernel's XDP features keep it with the workers, and pod 2 gets everything.
#[test]
fn a_port_whose_driver_cannot_take_redirects_is_served_by_the_workers() {
    let Some(_net) = network_test() else { return };
    // Kernels before 6.3 cannot say what a driver takes: there the switch trusts it.
    if matches!(pmd::xdp_features::of(1), Ok(None)) {
        assert!(std::env::var("CI").is_err(), "CI kernels have the family");
        eprintln!("skipped: this kernel has no netdev netlink family");
        return;
    }
    let topo = Topology::new(3);
    topo.pods_finish_checksums();
    for args in [
        &["ip", "link", "add", "b0", "type", "bridge"][..],
        &["ip", "link", "set", "vp2", "master", "b0"],
        // Frames for pod 1 cross the bridge up to its own device, where the switch reads them.
        &["ip", "link", "set", "b0", "promisc", "on", "up"],
    ] {
        let out = topo.exec(&topo.sw, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let switch = topo.start_switch_on("vp1,b0,vp3", FAST);
    let with_b0 = named(&[("vp1", true), ("b0", false), ("vp3", true)]);
    assert_eq!(probed(&switch), with_b0);
    assert!(topo.ping(0, 1) && topo.ping(1, 0));
    topo.transfer(0, 1, 10_000_000);
    topo.transfer(1, 0, 10_000_000);
    // What b0's generic program redirected to vp1 went by vp1's ordinary transmit, which its
    // XDP transmit count does not see: that is no sign of a pod without NAPI.
    assert!(once_above(1_000, || fast_path_sent_to(&switch, "vp1")) > 1_000);
    assert_eq!(fast_path_sent_to(&switch, "b0"), 0);
    assert_eq!(fast_path_of_ports(&switch), with_b0);
    // With b0 gone the watch is back: pod 1 losing NAPI takes vp1 off the fast path.
    switch.ctl_json(&["port", "del", "b0"]);
    std::thread::sleep(std::time::Duration::from_millis(1000));
    gro_off(&topo, 0);
    topo.transfer(2, 0, 10_000_000);
    let after = named(&[("vp1", false), ("vp3", true)]);
    assert_eq!(fast_path_within(&switch, &after, 3), after);
    let log = switch.stop_clean().stderr;
    assert_eq!(log.matches("stops sending").count(), 1, "{log}");
}

/// The switch's own default is the fast path, on every port that takes it.
#[test]
fn the_fast_path_is_the_default() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(2);
    topo.pods_finish_checksums();
    let ports = topo.ports();
    let switch = topo.start_switch_as_given(&["--ports", &ports], &ports);
    assert!(topo.ping(0, 1));
    topo.transfer(0, 1, 20_000_000);
    let fast = once_above(5_000, || worker_counter(&switch, "fast_path_packets"));
    assert!(fast > 5_000, "fast_path_packets = {fast}");
    assert_eq!(probed(&switch), named(&[("vp1", true), ("vp2", true)]));
    stop(switch);
}

/// A pod that loses its NAPI after its port joined the fast path (GRO turned off) would lose
/// what the fast path sends it: the switch sees its XDP transmit fall behind, takes the port
/// out of the fast path, and the workers carry its frames. Once it has NAPI again, a later
/// probe finds it and the port joins again.
#[test]
fn a_pod_that_loses_napi_falls_back_to_the_workers() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(2);
    topo.pods_finish_checksums();
    let switch = topo.start_switch(FAST);
    assert_eq!(probed(&switch), named(&[("vp1", true), ("vp2", true)]));
    assert!(topo.ping(0, 1));
    topo.transfer(0, 1, 10_000_000);
    gro_off(&topo, 1);
    // Whole, though the first of it went where nothing arrives.
    topo.transfer(0, 1, 20_000_000);
    let out = named(&[("vp1", true), ("vp2", false)]);
    assert_eq!(fast_path_within(&switch, &out, 10), out);
    topo.transfer(1, 0, 10_000_000);
    set_gro(&topo, 1, true);
    let both = named(&[("vp1", true), ("vp2", true)]);
    assert_eq!(fast_path_within(&switch, &both, 20), both, "probed again");
    let before = fast_path_sent_to(&switch, "vp2");
    topo.transfer(0, 1, 10_000_000);
    let more = once_above(3_000, || fast_path_sent_to(&switch, "vp2") - before);
    assert!(more > 3_000, "to pod 2 by the fast path again: {more}");
    stop(switch);
}

/// Sets the MTU of both ends of pod `pod`'s veth.
fn set_mtu(topo: &Topology, pod: usize, mtu: &str) {
    let p = &topo.pods[pod];
    common::must(&["ip", "-n", &p.ns, "link", "set", "eth0", "mtu", mtu]);
    common::must(&["ip", "-n", &topo.sw, "link", "set", &p.port, "mtu", mtu]);
}

/// Whether all of 3 pings with `size` bytes of payload, not to be fragmented, come back (ICMP
/// always goes by the workers).
fn big_pings(topo: &Topology, from: usize, to: usize, size: &str) -> bool {
    topo.exec(
        &topo.pods[from].ns,
        &[
            "ping",
            "-c",
            "3",
            "-w",
            "6",
            "-i",
            "0.2",
            "-M",
            "do",
            "-s",
            size,
            &topo.pods[to].ip,
        ],
    )
    .status
    .success()
}

/// The switch's `tx_drop_over_mtu` on port `name`.
fn over_mtu_drops(switch: &Switch, name: &str) -> u64 {
    port_count(switch, name, &["drops", "tx_drop_over_mtu"])
}

/// Ports' MTUs raised while the switch runs, just after fast-path traffic: the workers forward
/// by the new MTU, and each port leaves the fast path and is probed again before it sends to
/// it (a driver may take redirected frames of one buffer only), then rejoins; what the fast
/// path sent before does not read as lost to it (no "stops sending" removal).
#[test]
fn ports_whose_mtu_changes_are_followed() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(2);
    topo.pods_finish_checksums();
    let switch = topo.start_switch(FAST);
    assert_eq!(probed(&switch), named(&[("vp1", true), ("vp2", true)]));
    topo.transfer(0, 1, 10_000_000);
    set_mtu(&topo, 0, "2000");
    set_mtu(&topo, 1, "2000");
    let out = named(&[("vp1", false), ("vp2", false)]);
    assert_eq!(
        fast_path_within(&switch, &out, 2),
        out,
        "left to be probed again"
    );
    let both = named(&[("vp1", true), ("vp2", true)]);
    assert_eq!(fast_path_within(&switch, &both, 10), both, "rejoined");
    assert!(
        big_pings(&topo, 0, 1, "1800"),
        "1828-byte packets both ways"
    );
    assert_eq!(
        over_mtu_drops(&switch, "vp1") + over_mtu_drops(&switch, "vp2"),
        0
    );
    let before = fast_path_sent_to(&switch, "vp2");
    topo.transfer(0, 1, 10_000_000);
    let more = once_above(3_000, || fast_path_sent_to(&switch, "vp2") - before);
    assert!(more > 3_000, "to pod 2 by the fast path again: {more}");
    assert_eq!(fast_path_of_ports(&switch), both, "still on the fast path");
    let log = switch.stop_clean().stderr;
    let changed: Vec<&str> = log.lines().filter(|l| l.contains("MTU changed")).collect();
    assert_eq!(changed.len(), 2, "{log}");
    assert!(
        changed
            .iter()
            .all(|l| l.contains("old=1500") && l.contains("new=2000")),
        "{log}"
    );
    assert!(!log.contains("stops sending"), "{log}");
}

/// Pods of different MTUs on one flow: what the 9000-byte pod sends too long for the
/// 1500-byte pod's port goes to the workers, which drop and count it. Redirected, the kernel
/// would drop it without a trace, and the port would look as if its pod had lost NAPI.
#[test]
fn a_frame_too_long_for_its_egress_port_is_dropped_and_counted_by_the_workers() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(2);
    topo.pods_finish_checksums();
    set_mtu(&topo, 0, "9000");
    let switch = topo.start_switch(FAST);
    let both = named(&[("vp1", true), ("vp2", true)]);
    assert_eq!(probed(&switch), both);
    // TCP takes the smaller MSS: its flow goes by the fast path.
    topo.transfer(0, 1, 10_000_000);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let sent_before = fast_path_sent_to(&switch, "vp2");
    assert!(sent_before > 1_000, "{sent_before}");
    // 4028-byte datagrams, not to be fragmented: one frame each, on the same MACs.
    let send = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.IPPROTO_IP, 10, 2)\n\
         for _ in range(20):\n    s.sendto(b'x' * 4000, ('{}', 9))\n",
        topo.pods[1].ip
    );
    common::must(&[
        "ip",
        "netns",
        "exec",
        &topo.pods[0].ns,
        "python3",
        "-c",
        &send,
    ]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(over_mtu_drops(&switch, "vp2"), 20);
    assert_eq!(fast_path_sent_to(&switch, "vp2"), sent_before);
    assert_eq!(
        fast_path_of_ports(&switch),
        both,
        "vp2 stays on the fast path"
    );
    let log = switch.stop_clean().stderr;
    assert!(!log.contains("stops sending"), "{log}");
}
