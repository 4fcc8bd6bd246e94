//! Pods keep the kernel's default offloads: a segment a pod leaves to transmit checksum offload
//! (the pseudo-header sum in the checksum field) is finished by the switch, and one whose
//! checksum is simply wrong is not "repaired": the receiver's stack drops it. (Every other
//! end-to-end test runs with the pods' default offloads too: TCP, ping, the gateway's NAT, the
//! overlay.)

mod common;

use common::{network_test, Topology};
use std::io::{BufRead, BufReader};

#[test]
fn partial_udp_checksums_are_finished_and_wrong_ones_are_not() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(2);
    let switch = topo.start_switch(&[]);
    let script = Topology::script("rawframe.py");
    let mut counter = topo.spawn(
        &topo.pods[1].ns,
        &["python3", &script, "udp-count", "7777", "4"],
    );
    let mut out = BufReader::new(counter.stdout.take().unwrap());
    let mut ready = String::new();
    out.read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    for mode in ["good", "partial", "wrong"] {
        let sent = topo.exec(
            &topo.pods[0].ns,
            &[
                "python3",
                &script,
                "udp",
                "eth0",
                &topo.pods[1].mac,
                &topo.pods[0].mac,
                &topo.pods[0].ip,
                &topo.pods[1].ip,
                "7777",
                mode,
                "20",
            ],
        );
        assert!(
            sent.status.success(),
            "{}",
            String::from_utf8_lossy(&sent.stderr)
        );
    }
    let mut counts = String::new();
    out.read_line(&mut counts).unwrap();
    counter.wait().unwrap();
    assert_eq!(
        counts.trim(),
        "good=20 partial=20",
        "what the receiving pod's stack accepted"
    );
    let stopped = switch.stop();
    assert_eq!(stopped.code, Some(0));
    assert!(
        stopped.stdout.contains("checksums_completed="),
        "{}",
        stopped.stdout
    );
}
