//! The measuring receiver (`vswitch-pktgen recv`) must not be a place frames are lost: NDR
//! counts every lost frame against the switch. Runs in a network namespace of its own (root).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const PKTGEN: &str = env!("CARGO_BIN_EXE_vswitch-pktgen");

/// Whether `test` can run here (network namespaces need root); CI must run it.
fn can_run(test: &str) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    if !root {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "the {test} test needs root, and CI must run it"
        );
        eprintln!("SKIPPED the {test} test: network namespaces need root");
    }
    root
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace deleted on drop, also when the test fails.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{name} in {line:?}"))
}

fn float_field(line: &str, name: &str) -> f64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}

/// A namespace of its own with a veth pair txa (the sender's) and rxb (02:00:00:00:00:0b).
fn veth_pair(tag: &str) -> Netns {
    let ns = Netns(format!("{tag}{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
    ip(&[
        "-n", &ns.0, "link", "add", "txa", "type", "veth", "peer", "name", "rxb",
    ]);
    ip(&[
        "-n",
        &ns.0,
        "link",
        "set",
        "rxb",
        "address",
        "02:00:00:00:00:0b",
    ]);
    ip(&["-n", &ns.0, "link", "set", "txa", "up"]);
    ip(&["-n", &ns.0, "link", "set", "rxb", "up"]);
    ns
}

/// `vswitch-pktgen send` from txa to rxb's MAC with `extra` options, which must succeed; its
/// result line.
fn send(ns: &Netns, extra: &[&str]) -> String {
    let send = Command::new("ip")
        .args(["netns", "exec", &ns.0, PKTGEN, "send", "--dev", "txa"])
        .args([
            "--src-mac",
            "02:00:00:00:00:0a",
            "--dst-mac",
            "02:00:00:00:00:0b",
        ])
        .args(extra)
        .output()
        .expect("running the sender");
    assert!(send.status.success(), "{send:?}");
    String::from_utf8_lossy(&send.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_string()
}

/// `send` with `--stamp`.
fn send_stamped(ns: &Netns, extra: &[&str]) -> String {
    send(ns, &[&["--stamp"], extra].concat())
}

/// GRO on rxb: frames redirected into txa need NAPI there to be received.
fn gro_on_rxb(ns: &Netns) {
    let gro = Command::new("ip")
        .args(["netns", "exec", &ns.0, "ethtool", "-K", "rxb", "gro", "on"])
        .output()
        .expect("running ethtool");
    assert!(gro.status.success(), "{gro:?}");
}

#[test]
fn the_receiver_loses_no_frame_of_a_burst_its_ring_holds() {
    if !can_run("receiver") {
        return;
    }
    let ns = veth_pair("vsrecv");
    let mut recv = Command::new("ip")
        .args(["netns", "exec", &ns.0, PKTGEN, "recv", "--dev", "rxb"])
        .args(["--port", "9", "--duration", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the receiver");
    let mut lines = BufReader::new(recv.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    // 1,000 frames as fast as the sender goes: bursts as a switch's transmit batches arrive
    // after it paused, bigger than the 32 frames a rate-following fill ring lends at first,
    // well within what the receiver's ring holds.
    let sent_line = send_stamped(
        &ns,
        &["--dst-port", "9", "--count", "1000", "--duration", "1"],
    );
    let result = lines
        .map(Result::unwrap)
        .find(|l| l.starts_with("result:"))
        .expect("the receiver's result");
    assert!(recv.wait().unwrap().success());
    let sent = field(&sent_line, "sent");
    assert_eq!(sent, 1000, "{sent_line}");
    assert_eq!(field(&result, "receiver_dropped"), 0, "{result}");
    assert_eq!(field(&result, "receiver_fill_empty"), 0, "{result}");
    assert_eq!(field(&result, "lost"), 0, "{result}");
    let stamped = field(&result, "received") - field(&result, "unstamped");
    assert_eq!(stamped, sent, "{result} after {sent_line}");
    // Latency up to the arrival at the interface: after the send, and before this receiver's
    // thread read the frame.
    assert_eq!(field(&result, "bad_arrival"), 0, "{result}");
    let arrival_p50 = float_field(&result, "latency_us_p50");
    assert!(arrival_p50 > 0.0, "{result}");
    assert!(
        arrival_p50 <= float_field(&result, "read_latency_us_p50"),
        "{result}"
    );
}

/// With `--rate`, the generator paces frame by frame and, when it catches up after losing its
/// core, sends at most `--max-burst` frames at once: a latency trial must not measure bursts.
#[test]
fn the_paced_sender_never_sends_more_than_its_burst_at_once() {
    if !can_run("sender") {
        return;
    }
    let ns = veth_pair("vspace");
    gro_on_rxb(&ns);
    let line = send_stamped(
        &ns,
        &["--rate", "100000", "--max-burst", "8", "--duration", "1"],
    );
    let (sent, forgone, calls) = (
        field(&line, "sent"),
        field(&line, "forgone"),
        field(&line, "calls"),
    );
    assert!(field(&line, "largest_call") <= 8, "{line}");
    assert!(calls > 0, "{line}");
    // Every frame the rate allowed in the time it ran was sent or said forgone (the time is
    // printed to the millisecond: 100 frames at this rate); some were sent.
    let offered = float_field(&line, "seconds") * 100_000.0;
    assert!(
        ((sent + forgone) as f64 - offered).abs() <= 100.0 + 8.0,
        "{line}"
    );
    assert!(sent > 0, "{line}");
}

/// With many flows and no `--burst`, the sender's program gives each frame the next flow's
/// source port and corrects its checksum: every flow is sent, equally, with a checksum
/// tcpdump (not our code) finds right.
#[test]
fn the_sender_makes_each_flow_in_its_program_with_a_right_checksum() {
    if !can_run("flows") {
        return;
    }
    let ns = veth_pair("vsflows");
    gro_on_rxb(&ns);
    const FLOWS: u64 = 100;
    const EACH: u64 = 4;
    let mut dump = Command::new("ip")
        // Bounded: a lost frame fails the count below instead of leaving tcpdump waiting.
        .args([
            "netns", "exec", &ns.0, "timeout", "10", "tcpdump", "-i", "rxb",
        ])
        .args(["-nn", "-vv", "-l"])
        .args(["-c", &(FLOWS * EACH).to_string(), "udp"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting tcpdump");
    let mut said = String::new();
    BufReader::new(dump.stderr.take().unwrap())
        .read_line(&mut said)
        .unwrap();
    assert!(said.contains("listening on"), "{said}");
    // The program counts frames per CPU: one CPU sends them all in turn.
    let (flows, count) = (FLOWS.to_string(), (FLOWS * EACH).to_string());
    send(
        &ns,
        &[
            "--flows",
            &flows,
            "--core",
            "0",
            "--count",
            &count,
            "--duration",
            "2",
        ],
    );
    let out = dump.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut per_port = std::collections::BTreeMap::<u16, u64>::new();
    for line in text.lines().filter(|l| l.contains(" > ")) {
        assert!(line.contains("[udp sum ok]"), "{line}");
        let source = line.split_whitespace().next().unwrap();
        let port = source.rsplit('.').next().unwrap().parse().unwrap();
        *per_port.entry(port).or_default() += 1;
    }
    let expected: std::collections::BTreeMap<u16, u64> =
        (0..FLOWS as u16).map(|i| (1024 + i, EACH)).collect();
    assert_eq!(per_port, expected, "{text}");
}
