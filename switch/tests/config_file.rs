//! End to end: `vswitch --config` refuses bad files by file, key and reason, and a bad reload
//! keeps the running config.

mod common;

use common::{network_test, vswitch_bin, Topology};

fn config(ports: &str) -> String {
    format!("[pods]\nports = [{ports}]\ngateway = \"10.244.1.1/24\"\n")
}

#[test]
fn a_bad_config_is_refused_at_start_with_file_key_and_reason() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    let cases = [
        (config("\"vp1\", \"vp9\""), "pods.ports: port \"vp9\" does not exist"),
        (config("\"vp1\", \"vp2\"").replace("10.244.1.1/24", "10.244.1.1/99"), "pods.gateway"),
        (format!("{}colour = 1\n", config("\"vp1\"")), "unknown field `colour`"),
        (format!("{}\n[[service]]\nname = \"a\"\ncluster_ip = \"10.96.0.1\"\nport = 80\n[[service]]\nname = \"a\"\ncluster_ip = \"10.96.0.2\"\nport = 80\n", config("\"vp1\"")), "service[1].name: duplicate service \"a\""),
    ];
    for (text, needle) in cases {
        std::fs::write(&path, &text).unwrap();
        let out = topo.exec(
            &topo.sw,
            &[vswitch_bin(), "--config", path.to_str().unwrap()],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{text}");
        assert!(
            stderr.contains(path.to_str().unwrap()),
            "no file name in {stderr:?}"
        );
        assert!(
            stderr.contains(needle),
            "{stderr:?} does not say {needle:?}"
        );
        for pod in &topo.pods {
            assert!(
                !topo.xdp_attached(&pod.port),
                "a refused start left a program on {}",
                pod.port
            );
        }
    }
    let missing = dir.path().join("absent.toml");
    let out = topo.exec(
        &topo.sw,
        &[vswitch_bin(), "--config", missing.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("absent.toml: cannot read"));
}

#[test]
fn a_bad_reload_keeps_the_running_config() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, config("\"vp1\", \"vp2\"")).unwrap();
    let switch = topo.start_switch_with(&["--config", path.to_str().unwrap()], "vp1,vp2");
    let ping_gateway = |pod: usize| {
        topo.exec(
            &topo.pods[pod].ns,
            &["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.244.1.1"],
        )
        .status
        .success()
    };
    assert!(ping_gateway(0), "the gateway answers ping");
    assert!(
        topo.ping(0, 1),
        "pods reach each other over the pod segment"
    );

    // An unknown key, then a changed port list: both refused, the switch keeps going.
    // Each SIGHUP waited for: the switch counts its reloads, applied and refused.
    let reloads = || {
        let r = switch.ctl_json(&["show", "stats"])["reloads"].clone();
        (
            r["applied"].as_u64().unwrap(),
            r["refused"].as_u64().unwrap(),
        )
    };
    let hup = |want: (u64, u64)| {
        common::must(&["kill", "-HUP", &switch.pid().to_string()]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while reloads() != want {
            assert!(std::time::Instant::now() < deadline, "{:?}", reloads());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    for (i, bad) in [
        format!("{}colour = 1\n", config("\"vp1\", \"vp2\"")),
        config("\"vp1\""),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&path, bad).unwrap();
        hup((0, i as u64 + 1));
        assert!(ping_gateway(1), "still answering after a refused reload");
    }
    // A good reload is applied.
    std::fs::write(&path, config("\"vp1\", \"vp2\"")).unwrap();
    hup((1, 2));
    assert!(ping_gateway(0));

    let stopped = switch.stop();
    assert_eq!(stopped.code, Some(0), "{}", stopped.stderr);
    assert_eq!(
        stopped
            .stderr
            .matches("reload refused, running config kept")
            .count(),
        2,
        "{}",
        stopped.stderr
    );
    assert!(
        stopped.stderr.contains("unknown field `colour`"),
        "{}",
        stopped.stderr
    );
    assert!(
        stopped.stderr.contains("pods.ports / uplink.port changed"),
        "{}",
        stopped.stderr
    );
    assert!(
        stopped.stdout.contains("vswitch: reloaded"),
        "{}",
        stopped.stdout
    );
    assert!(
        stopped.stdout.contains("icmp_echo_replied="),
        "{}",
        stopped.stdout
    );
}

/// What the switch prints while it runs (here: each reload) never holds up its control
/// thread when nobody reads its stdout (the harness reads it only once the switch exits):
/// lines beyond the pipe's room are dropped, counted, and it still exits when told.
#[test]
fn an_unread_stdout_does_not_stop_the_switch() {
    let Some(_net) = network_test() else { return };
    let topo = Topology::new(2);
    let dir = tempfile::tempdir().unwrap();
    // A long name makes each reload's line long (about 350 bytes): 600 are 200 KiB, past the
    // pipe's 64 KiB and the switch's queue of 256.
    let long = dir.path().join("n".repeat(200));
    std::fs::create_dir(&long).unwrap();
    let path = long.join("node.toml");
    std::fs::write(&path, config("\"vp1\", \"vp2\"")).unwrap();
    let switch = topo.start_switch_with(&["--config", path.to_str().unwrap()], "vp1,vp2");
    for i in 0..600 {
        let reload = common::exec_bounded(
            &topo.sw,
            &[vswitch_bin(), "ctl", "--socket", &switch.ctl, "reload"],
            std::time::Duration::from_secs(5),
        );
        assert!(reload.status.success(), "reload {i}: {reload:?}");
    }
    let stopped = switch.stop();
    assert_eq!(stopped.code, Some(0), "{}", stopped.stderr);
    assert!(
        stopped.stderr.contains("lines of output dropped"),
        "{}",
        stopped.stderr
    );
}
