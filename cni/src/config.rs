//! The network configuration (stdin) and the runtime's environment variables.

use crate::error::{code, CniError, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0", "1.1.0"];
pub const DEFAULT_SOCKET: &str = "/run/vswitch/vswitch.sock";
pub const DEFAULT_MTU: u32 = 1500;
/// The switch refuses larger MTUs (its largest multi-buffer packet).
pub const MAX_MTU: u32 = 9216;
/// IPv4's minimum.
pub const MIN_MTU: u32 = 68;

/// What the plugin reads from its network configuration. `raw` is kept whole: the IPAM plugin
/// gets the same configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    /// The network's name, unique on a node: it tells this network's veths from another's.
    pub name: String,
    pub ctl: PathBuf,
    pub mtu: u32,
    pub ipam_type: String,
    pub prev_result: Option<Value>,
    pub raw: Value,
}

/// The `cniVersion` of a configuration, if it has one, for error results: an error is written
/// in the config's version whenever that can be read.
pub fn version_of(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf> {
        let raw: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(code::DECODE, "failed to decode the network configuration")
                .with_details(e.to_string())
        })?;
        let obj = raw.as_object().ok_or_else(|| {
            CniError::new(
                code::DECODE,
                "failed to decode the network configuration: not a JSON object",
            )
        })?;
        let invalid = |msg: String| CniError::new(code::INVALID_CONFIG, msg);
        let string = |key: &str| -> Result<Option<String>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(invalid(format!("{key}: expected a string, got {other}"))),
            }
        };
        let cni_version =
            string("cniVersion")?.ok_or_else(|| invalid("cniVersion is missing".into()))?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(
                CniError::new(code::INCOMPATIBLE_VERSION, "incompatible CNI versions")
                    .with_details(format!(
                        "config is {cni_version:?}, plugin supports {SUPPORTED_VERSIONS:?}"
                    )),
            );
        }
        let name = string("name")?.ok_or_else(|| invalid("name is missing".into()))?;
        if name.is_empty() {
            return Err(invalid("name is empty".into()));
        }
        let ctl = PathBuf::from(string("ctl")?.unwrap_or_else(|| DEFAULT_SOCKET.into()));
        if ctl.as_os_str().is_empty() {
            return Err(invalid(
                "ctl is empty: the switch's control socket path".into(),
            ));
        }
        let mtu = match obj.get("mtu") {
            None | Some(Value::Null) => DEFAULT_MTU,
            Some(v) => match v.as_u64() {
                Some(m) if (MIN_MTU as u64..=MAX_MTU as u64).contains(&m) => m as u32,
                _ => {
                    return Err(invalid(format!(
                        "mtu: {v} is not a number from {MIN_MTU} to {MAX_MTU}"
                    )))
                }
            },
        };
        let ipam = obj
            .get("ipam")
            .and_then(Value::as_object)
            .ok_or_else(|| invalid("ipam is missing: vswitch-cni needs an IPAM plugin".into()))?;
        let ipam_type = match ipam.get("type") {
            Some(Value::String(t)) if valid_plugin_name(t) => t.clone(),
            Some(Value::String(t)) => {
                return Err(invalid(format!("ipam.type {t:?} is not a plugin name")))
            }
            _ => return Err(invalid("ipam.type is missing".into())),
        };
        Ok(NetConf {
            cni_version,
            name,
            ctl,
            mtu,
            ipam_type,
            prev_result: obj.get("prevResult").filter(|v| !v.is_null()).cloned(),
            raw,
        })
    }
}

/// A plugin is looked up by name in `CNI_PATH`: no paths, nothing hidden.
fn valid_plugin_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && !name.starts_with('.')
}

/// The runtime's `CNI_*` variables.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Reads and checks what `command` needs. `get` stands for `std::env::var`.
    pub fn read(get: impl Fn(&str) -> Option<String>, command: &str) -> Result<Env> {
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        // DEL may come without a namespace (the pod is gone); ADD and CHECK need one.
        let needs_netns = matches!(command, "ADD" | "CHECK");
        // GC, STATUS and VERSION concern no container.
        let per_container = matches!(command, "ADD" | "DEL" | "CHECK");
        let mut missing = Vec::new();
        for (var, needed) in [
            ("CNI_CONTAINERID", per_container),
            ("CNI_NETNS", needs_netns),
            ("CNI_IFNAME", per_container),
            ("CNI_PATH", per_container || command == "GC"),
        ] {
            if needed && get(var).is_none() {
                missing.push(var);
            }
        }
        if !missing.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "required environment variables missing: {}",
                    missing.join(", ")
                ),
            ));
        }
        let container_id = get("CNI_CONTAINERID").unwrap_or_default();
        let ifname = get("CNI_IFNAME").unwrap_or_default();
        if per_container {
            check_container_id(&container_id)?;
            check_ifname(&ifname)?;
        }
        // Checked, not used: the plugin needs none of them.
        parse_args(&get("CNI_ARGS").unwrap_or_default())?;
        let path = get("CNI_PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        Ok(Env {
            container_id,
            netns: get("CNI_NETNS").map(PathBuf::from),
            ifname,
            path,
        })
    }
}

fn bad_env(msg: String) -> CniError {
    CniError::new(code::INVALID_ENV, msg)
}

/// As the spec says: alphanumerics, then also `_`, `.` and `-`.
fn check_container_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(bad_env(format!(
            "CNI_CONTAINERID {id:?}: must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"
        )))
    }
}

/// What Linux accepts as an interface name.
fn check_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(bad_env(format!(
            "CNI_IFNAME {name:?}: not a valid interface name (1-15 characters, no '/', ':' or spaces)"
        )))
    }
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;` (`IgnoreUnknown=1;K8S_POD_NAME=web-0`). The
/// plugin needs none of them and accepts any key.
pub fn parse_args(text: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in text.split(';').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            _ => {
                return Err(bad_env(format!(
                    "CNI_ARGS: {pair:?} is not KEY=VALUE (pairs are separated by ';')"
                )))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{ "cniVersion": "1.0.0", "name": "vswitch", "type": "vswitch-cni",
        "ctl": "/run/vswitch/vswitch.sock", "mtu": 1450,
        "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.244.1.0/24" }]] } }"#;

    fn with(key: &str, value: Value) -> Vec<u8> {
        let mut v: Value = serde_json::from_str(GOOD).unwrap();
        if value.is_null() {
            v.as_object_mut().unwrap().remove(key);
        } else {
            v[key] = value;
        }
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn reads_a_good_config() {
        let c = NetConf::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(c.cni_version, "1.0.0");
        assert_eq!(c.mtu, 1450);
        assert_eq!(c.ipam_type, "host-local");
        assert_eq!(c.ctl, PathBuf::from("/run/vswitch/vswitch.sock"));
        assert!(c.prev_result.is_none());
    }

    #[test]
    fn defaults() {
        let c = NetConf::parse(&with("mtu", Value::Null)).unwrap();
        assert_eq!(c.mtu, DEFAULT_MTU);
        let c = NetConf::parse(&with("ctl", Value::Null)).unwrap();
        assert_eq!(c.ctl, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn bad_configs_get_the_spec_codes() {
        let code_of = |b: &[u8]| NetConf::parse(b).unwrap_err().code;
        assert_eq!(code_of(b"{not json"), code::DECODE);
        assert_eq!(code_of(b"[1, 2]"), code::DECODE);
        assert_eq!(code_of(b""), code::DECODE);
        assert_eq!(
            code_of(&with("cniVersion", "0.4.0".into())),
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            code_of(&with("cniVersion", Value::Null)),
            code::INVALID_CONFIG
        );
        assert_eq!(code_of(&with("name", Value::Null)), code::INVALID_CONFIG);
        assert_eq!(code_of(&with("mtu", 9217.into())), code::INVALID_CONFIG);
        assert_eq!(code_of(&with("mtu", "big".into())), code::INVALID_CONFIG);
        assert_eq!(code_of(&with("ipam", Value::Null)), code::INVALID_CONFIG);
        assert_eq!(
            code_of(&with("ipam", serde_json::json!({}))),
            code::INVALID_CONFIG
        );
        assert_eq!(
            code_of(&with("ipam", serde_json::json!({"type": "../evil"}))),
            code::INVALID_CONFIG
        );
        assert_eq!(code_of(&with("ctl", 5.into())), code::INVALID_CONFIG);
    }

    #[test]
    fn version_1_1_0_is_supported() {
        let c = NetConf::parse(&with("cniVersion", "1.1.0".into())).unwrap();
        assert_eq!(c.cni_version, "1.1.0");
        assert_eq!(
            version_of(&with("cniVersion", "1.1.0".into())).as_deref(),
            Some("1.1.0")
        );
        assert_eq!(version_of(b"garbage"), None);
    }

    fn env_of<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn environment() {
        let vars = [
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/var/run/netns/p1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
            ),
        ];
        let env = Env::read(env_of(&vars), "ADD").unwrap();
        assert_eq!(env.path.len(), 2);
        let args = parse_args(vars[4].1).unwrap();
        assert_eq!(args["K8S_POD_NAME"], "web-0");
        assert_eq!(args.len(), 3);

        // DEL without a namespace is fine; ADD is not.
        let no_netns: Vec<_> = vars
            .iter()
            .copied()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .collect();
        assert!(Env::read(env_of(&no_netns), "DEL").unwrap().netns.is_none());
        let e = Env::read(env_of(&no_netns), "ADD").unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("CNI_NETNS"), "{e}");
    }

    #[test]
    fn bad_environment_is_code_4() {
        let base = [
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/var/run/netns/p1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ];
        for (var, value) in [
            ("CNI_CONTAINERID", "-leading-dash"),
            ("CNI_CONTAINERID", "a/b"),
            ("CNI_IFNAME", "much-too-long-name"),
            ("CNI_IFNAME", "a/b"),
            ("CNI_IFNAME", ".."),
            ("CNI_ARGS", "novalue"),
            ("CNI_ARGS", "=x"),
        ] {
            let mut vars: Vec<_> = base.iter().copied().filter(|(k, _)| *k != var).collect();
            vars.push((var, value));
            let e = Env::read(env_of(&vars), "ADD").unwrap_err();
            assert_eq!(e.code, code::INVALID_ENV, "{var}={value}: {e}");
        }
    }
}
