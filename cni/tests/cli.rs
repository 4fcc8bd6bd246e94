//! The plugin's command-line contract, without privileges: what a runtime sees on stdout and
//! in the exit status for VERSION and for requests refused before anything is touched.

use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

fn run(env: &[(&str, &str)], stdin: &str) -> (bool, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vswitch-cni"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
    (out.status.success(), v)
}

type Env<'a> = Vec<(&'a str, &'a str)>;

const CONF: &str = r#"{"cniVersion": "1.0.0", "name": "vswitch", "type": "vswitch-cni",
  "ctl": "/nonexistent/vswitch.sock", "ipam": {"type": "host-local"}}"#;

fn add_env<'a>(skip: &str) -> Env<'a> {
    [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/nonexistent/netns"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/nonexistent"),
    ]
    .into_iter()
    .filter(|(k, _)| *k != skip)
    .collect()
}

#[test]
fn version() {
    let (ok, v) = run(&[("CNI_COMMAND", "VERSION")], CONF);
    assert!(ok);
    assert_eq!(
        v,
        json!({"cniVersion": "1.0.0", "supportedVersions": ["1.0.0", "1.1.0"]})
    );
    let (ok, v) = run(&[("CNI_COMMAND", "VERSION")], "");
    assert!(ok);
    assert_eq!(v["cniVersion"], "1.1.0");
}

#[test]
fn refusals_carry_the_spec_codes() {
    let old = CONF.replace("1.0.0", "0.4.0");
    let nameless = CONF.replace("\"name\": \"vswitch\",", "");
    let cases: Vec<(Env, &str, u64)> = vec![
        (add_env(""), "{\"cniVersion\": ", 6),
        (add_env("CNI_NETNS"), CONF, 4),
        (add_env("CNI_CONTAINERID"), CONF, 4),
        (add_env("CNI_COMMAND"), CONF, 4),
        (vec![("CNI_COMMAND", "FROB")], CONF, 4),
        (add_env(""), &old, 1),
        (add_env(""), &nameless, 7),
        // The namespace is looked at before anything else is done.
        (add_env(""), CONF, 3),
    ];
    for (env, stdin, code) in cases {
        let (ok, v) = run(&env, stdin);
        assert!(!ok, "{env:?} {stdin}: succeeded");
        assert_eq!(v["code"], code, "{env:?} {stdin}: {v}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(v["cniVersion"].is_string(), "{v}");
    }
}

#[test]
fn status_without_a_switch_is_not_available() {
    let (ok, v) = run(
        &[("CNI_COMMAND", "STATUS")],
        &CONF.replace("1.0.0", "1.1.0"),
    );
    assert!(!ok);
    assert_eq!(v["code"], 50, "{v}");
    assert_eq!(v["cniVersion"], "1.1.0");
}
