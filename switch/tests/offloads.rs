//! Pods keep the kernel's default offloads: a segment a pod leaves to transmit checksum offload
//! (the pseudo-header sum in the checksum field) is finished by the switch, and one whose
//! checksum is simply wrong is not "repaired": the receiver's stack drops it. (Every other
//! end-to-end test runs with the pods' default offloads too: TCP, ping, the gateway's NAT, the
//! overlay.)

mod common;

use common::{network_test, Topology};

#[test]
fn partial_udp_checksums_are_finished_and_wrong_ones_are_not() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(2);
    let switch = topo.start_switch(&[]);
    let counts = topo.udp_accepted(0, 1, &[("good", 20), ("partial", 20), ("wrong", 20)], "4");
    assert_eq!(
        counts, "good=20 partial=20",
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
