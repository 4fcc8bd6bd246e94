//! Jumbo frames: pods and ports at MTU 9000. A frame longer than one UMEM frame crosses the
//! switch as a multi-buffer chain (XDP_USE_SG sockets, a frags-aware XDP program); one longer
//! than the egress port's MTU is dropped and counted there.

mod common;

use common::{must, network_test, Stopped, Switch, Topology};

fn set_mtu(topo: &Topology, pod: usize, mtu: u32) {
    let mtu = mtu.to_string();
    let p = &topo.pods[pod];
    must(&["ip", "-n", &p.ns, "link", "set", "eth0", "mtu", &mtu]);
    must(&["ip", "-n", &topo.sw, "link", "set", &p.port, "mtu", &mtu]);
}

/// Each record's captured length in a classic pcap file.
fn pcap_lengths(file: &[u8]) -> Vec<u32> {
    let mut lengths = Vec::new();
    let mut at = 24;
    while at + 16 <= file.len() {
        let len = u32::from_le_bytes(file[at + 8..at + 12].try_into().unwrap());
        lengths.push(len);
        at += 16 + len as usize;
    }
    lengths
}

fn stop(switch: Switch, workers: usize) -> Stopped {
    let stopped = switch.stop_clean();
    assert_eq!(
        stopped.stdout.matches("all frames home").count(),
        workers,
        "frame accounting:\n{}",
        stopped.stdout
    );
    stopped
}

fn jumbo_both_ways(extra: &[&str], workers: usize) {
    let topo = Topology::new(2);
    set_mtu(&topo, 0, 9000);
    set_mtu(&topo, 1, 9000);
    let mut args = vec!["--xdp-mode", "native"];
    args.extend_from_slice(extra);
    let switch = topo.start_switch(&args);
    // 8972 bytes of ICMP payload: a 9000-byte IP packet, not fragmented (DF).
    let ping = topo.exec(
        &topo.pods[0].ns,
        &[
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            "8972",
            &topo.pods[1].ip,
        ],
    );
    assert!(
        ping.status.success(),
        "9000-byte ping with DF: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    topo.transfer(0, 1, 50_000_000);
    topo.transfer(1, 0, 50_000_000);
    let stats = switch.ctl_json(&["show", "ports", "--json"]);
    for port in stats["ports"].as_array().unwrap() {
        for (reason, n) in port["drops"].as_object().unwrap() {
            assert!(
                !reason.starts_with("rx_drop") && !reason.starts_with("tx_drop") || n == 0,
                "{}: {reason} = {n}",
                port["name"]
            );
        }
    }
    let stopped = stop(switch, workers);
    assert!(
        stopped.port_counter("vp1", "rx_bytes") > 50_000_000,
        "{}",
        stopped.stdout
    );
}

#[test]
fn mtu_9000_ping_with_df_and_50mb_tcp_both_ways() {
    let Some(_net) = network_test() else { return };
    jumbo_both_ways(&[], 1);
}

#[test]
fn mtu_9000_across_two_workers() {
    let Some(_net) = network_test() else { return };
    jumbo_both_ways(&["--cores", "0,1"], 2);
}

#[test]
fn a_frame_above_the_egress_mtu_is_dropped_and_counted() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(2);
    set_mtu(&topo, 0, 9000);
    // Pod 2 keeps 1500.
    let switch = topo.start_switch(&[]);
    let ping = |size: &str| {
        topo.exec(
            &topo.pods[0].ns,
            &[
                "ping",
                "-c",
                "2",
                "-i",
                "0.2",
                "-W",
                "1",
                "-s",
                size,
                &topo.pods[1].ip,
            ],
        )
        .status
        .success()
    };
    assert!(ping("1400"), "a frame that fits goes through");
    // A capture of vp2 shows what leaves it, not what is dropped at its MTU.
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("vp2.pcap");
    let capture = std::process::Command::new(common::vswitch_bin())
        .args([
            "ctl",
            "--socket",
            &switch.ctl,
            "capture",
            "vp2",
            "--count",
            "2",
        ])
        .arg("--out")
        .arg(&pcap)
        .args(["--timeout", "10"])
        .spawn()
        .unwrap();
    // Pod 1's route says 9000: a 4028-byte packet leaves it whole.
    assert!(
        !ping("4000"),
        "a frame above the egress MTU must not arrive"
    );
    assert!(ping("1400"));
    assert!(capture.wait_with_output().unwrap().status.success());
    let lengths = pcap_lengths(&std::fs::read(&pcap).unwrap());
    assert_eq!(lengths, [1442, 1442], "{lengths:?}");
    let drops = switch.ctl_json(&["show", "ports", "--json"]);
    let vp2 = drops["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "vp2")
        .unwrap()
        .clone();
    assert_eq!(vp2["drops"]["tx_drop_over_mtu"], 2, "{vp2}");
    stop(switch, 1);
}

/// Datagrams from pod 0 to pod 1 alternating between a chain (6,000 bytes) and a single frame
/// (64 bytes), as fast as one socket sends them: how many arrived, and how many arrived
/// after a later one.
fn mixed_sizes_arrival(topo: &Topology, count: u32) -> (u32, u32) {
    const RECEIVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
s.bind(("0.0.0.0", 7778))
s.settimeout(3)
print("ready", flush=True)
got = late = high = 0
try:
    while got < int(sys.argv[1]):
        seq = int.from_bytes(s.recv(9000)[:4], "big")
        got += 1
        if seq < high:
            late += 1
        high = max(high, seq)
except socket.timeout:
    pass
print(got, late, flush=True)
"#;
    const SENDER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 24)
for i in range(int(sys.argv[2])):
    s.sendto(i.to_bytes(4, "big") * (1500 if i % 2 else 16), (sys.argv[1], 7778))
"#;
    let count = count.to_string();
    let mut receiver = topo.spawn(&topo.pods[1].ns, &["python3", "-c", RECEIVER, &count]);
    let mut out = std::io::BufReader::new(receiver.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let sent = topo.exec(
        &topo.pods[0].ns,
        &["python3", "-c", SENDER, &topo.pods[1].ip, &count],
    );
    assert!(sent.status.success(), "{sent:?}");
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    receiver.wait().unwrap();
    let mut numbers = line.split_whitespace().map(|n| n.parse().unwrap());
    (numbers.next().unwrap(), numbers.next().unwrap())
}

#[test]
fn chained_and_single_frames_of_one_burst_keep_their_order() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(2);
    set_mtu(&topo, 0, 9000);
    set_mtu(&topo, 1, 9000);
    let switch = topo.start_switch(&["--xdp-mode", "native"]);
    assert!(topo.ping(0, 1));
    let (got, late) = mixed_sizes_arrival(&topo, 2000);
    assert!(got > 0, "nothing arrived");
    assert_eq!(
        late, 0,
        "{late} of {got} datagrams overtaken by a later one"
    );
    stop(switch, 1);
}
