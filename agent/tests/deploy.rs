//! deploy/: the manifests parse, the DaemonSet asks for what XDP needs, and every binary the
//! manifests and the image recipe name is one the workspace builds (a `[[bin]]`).

use serde_yaml::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn documents() -> Vec<Value> {
    let text = std::fs::read_to_string(root().join("deploy/daemonset.yaml")).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("deploy/daemonset.yaml parses"))
        .collect()
}

/// `[[bin]]` names of the workspace's crates.
fn workspace_bins() -> BTreeSet<String> {
    let mut bins = BTreeSet::new();
    for entry in std::fs::read_dir(root()).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let mut in_bin = false;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_bin = line == "[[bin]]";
            } else if let Some(name) = in_bin.then(|| line.strip_prefix("name = ")).flatten() {
                bins.insert(name.trim_matches('"').to_string());
            }
        }
    }
    bins
}

/// Binaries named as /usr/local/bin/NAME or target/release/NAME in `text`.
fn named_binaries(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in ["/usr/local/bin/", "target/release/", "/out/"] {
        for (i, _) in text.match_indices(prefix) {
            let name: String = text[i + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || *c == '.')
                .collect();
            if !name.is_empty() && !name.ends_with(".sh") {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn the_daemonset_runs_the_switch_and_the_agent_with_what_xdp_needs() {
    let docs = documents();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet"
        ]
    );
    let ds = &docs[3];
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], Value::Bool(true));
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"],
        ds["spec"]["template"]["metadata"]["labels"]
    );
    let containers = pod["containers"].as_sequence().unwrap();
    let switch = containers.iter().find(|c| c["name"] == "vswitch").unwrap();
    let caps: BTreeSet<&str> = switch["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for needed in ["NET_ADMIN", "SYS_ADMIN", "BPF", "IPC_LOCK", "SYS_RESOURCE"] {
        assert!(caps.contains(needed), "vswitch lacks {needed}: {caps:?}");
    }
    assert!(containers.iter().any(|c| c["name"] == "agent"));
    // Without kube-proxy the API server's cluster IP answers nobody on the host network: what
    // talks to it is given its real address.
    let inits = pod["initContainers"].as_sequence().unwrap();
    for c in containers
        .iter()
        .filter(|c| c["name"] == "agent")
        .chain(inits)
    {
        let env = c["env"].as_sequence().unwrap();
        assert!(
            env.iter().any(|e| e["name"] == "KUBERNETES_SERVICE_HOST"),
            "{:?} lacks KUBERNETES_SERVICE_HOST",
            c["name"]
        );
    }
    // The CNI plugin and conflist land in the host's directories.
    let host_paths: BTreeSet<&str> = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    for p in ["/opt/cni/bin", "/etc/cni/net.d", "/run/vswitch"] {
        assert!(host_paths.contains(p), "{p} not mounted from the host");
    }
    // The agent may read what it watches.
    let rules = docs[1]["rules"].as_sequence().unwrap();
    for resource in ["services", "endpointslices"] {
        assert!(rules.iter().any(|r| {
            r["resources"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|x| x == resource)
                && r["verbs"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .any(|v| v == "watch")
        }));
    }
}

#[test]
fn every_binary_deploy_names_is_built_by_the_workspace() {
    let bins = workspace_bins();
    assert!(
        bins.contains("vswitch") && bins.contains("vswitch-agent"),
        "{bins:?}"
    );
    let mut named = BTreeSet::new();
    for file in ["deploy/daemonset.yaml", "deploy/Containerfile"] {
        named.extend(named_binaries(
            &std::fs::read_to_string(root().join(file)).unwrap(),
        ));
    }
    assert!(named.contains("vswitch-cni") && named.contains("vswitch-agent"));
    for name in &named {
        assert!(
            bins.contains(name),
            "deploy names {name}, which no crate builds: {bins:?}"
        );
    }
    // The script the image copies exists and is executable.
    let script = root().join("deploy/render-node-config.sh");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&script).unwrap().permissions());
    assert!(mode & 0o111 != 0);
}
