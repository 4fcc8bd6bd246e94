//! The CNI result (1.0.0 / 1.1.0 format): what ADD prints, and what CHECK and DEL get back as
//! `prevResult`. Fields this plugin does not use are kept, so they pass through.

use crate::error::{code, CniError, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CniResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub dns: Value,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct IpConfig {
    /// `ADDRESS/PREFIX`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl CniResult {
    /// A result a plugin printed, or a `prevResult`.
    pub fn from_value(v: Value, what: &str) -> Result<CniResult> {
        serde_json::from_value(v).map_err(|e| {
            CniError::new(code::DECODE, format!("failed to decode {what}"))
                .with_details(e.to_string())
        })
    }
}

/// An IPv4 address with its prefix length, as results write it (`10.244.1.5/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub fn parse(text: &str) -> Option<Ipv4Net> {
        let (a, p) = text.split_once('/')?;
        let prefix: u8 = p.parse().ok()?;
        (prefix <= 32).then_some(())?;
        Some(Ipv4Net {
            addr: a.parse().ok()?,
            prefix,
        })
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        };
        Ipv4Addr::from(u32::from(self.addr) & mask)
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_and_keeps_unknown_fields() {
        let v = json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "vsw1", "mac": "02:00:00:00:00:01"},
                           {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/var/run/netns/p", "socketPath": "/x"}],
            "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1", "mtu": 1400}],
            "dns": {"nameservers": ["10.96.0.10"]},
            "future": true
        });
        let r = CniResult::from_value(v.clone(), "a result").unwrap();
        assert_eq!(r.ips[0].interface, Some(1));
        assert_eq!(serde_json::to_value(&r).unwrap(), v);
    }

    #[test]
    fn ipam_result_without_optional_fields() {
        let r = CniResult::from_value(
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.2/24", "gateway": "10.244.1.1"}], "dns": {}}),
            "IPAM's result",
        )
        .unwrap();
        assert!(r.interfaces.is_empty());
        assert_eq!(r.ips[0].interface, None);
        assert!(CniResult::from_value(json!({"ips": 5}), "x").is_err());
    }

    #[test]
    fn prefixes() {
        let n = Ipv4Net::parse("10.244.1.5/24").unwrap();
        assert_eq!(n.network(), Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(n.to_string(), "10.244.1.5/24");
        assert_eq!(
            Ipv4Net::parse("0.0.0.0/0").unwrap().network(),
            Ipv4Addr::UNSPECIFIED
        );
        for bad in [
            "10.244.1.5",
            "10.244.1.5/33",
            "fe80::1/64",
            "x/24",
            "10.1/8",
        ] {
            assert!(Ipv4Net::parse(bad).is_none(), "{bad}");
        }
    }
}
