//! The part of the Kubernetes API objects an import reads: `Service` (core/v1) and
//! `EndpointSlice` (discovery.k8s.io/v1), as `kubectl get services,endpointslices -A -o json`
//! prints them. Everything else in the objects is ignored. Numbers are read wide and checked by
//! the translation, so a bad value gets a message that names it.

use serde::Deserialize;
use std::collections::BTreeMap;

/// A `List` (or `ServiceList`, `EndpointSliceList`): its items, each a Service or an
/// EndpointSlice. One struct holds the fields of both kinds (they share no top-level name),
/// so a large list parses without buffering each item first.
#[derive(Debug, Deserialize)]
pub struct List {
    pub kind: Option<String>,
    pub items: Vec<Item>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: Metadata,
    /// Service.
    pub spec: Option<ServiceSpec>,
    /// EndpointSlice.
    pub address_type: Option<String>,
    pub endpoints: Option<Vec<Endpoint>>,
    pub ports: Option<Vec<EndpointPort>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Option<Vec<String>>,
    pub ports: Option<Vec<ServicePort>>,
    pub session_affinity: Option<String>,
    pub session_affinity_config: Option<SessionAffinityConfig>,
    pub external_traffic_policy: Option<String>,
    pub internal_traffic_policy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub port: i64,
    pub node_port: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct SessionAffinityConfig {
    #[serde(rename = "clientIP")]
    pub client_ip: Option<ClientIpConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpConfig {
    pub timeout_seconds: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default)]
    pub addresses: Vec<String>,
    pub conditions: Option<Conditions>,
}

/// Unset conditions mean what the API says: `ready` unknown counts as ready, `serving`
/// follows `ready`, `terminating` unknown is false.
#[derive(Debug, Default, Deserialize)]
pub struct Conditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

impl Conditions {
    pub fn ready(&self) -> bool {
        self.ready.unwrap_or(true)
    }

    pub fn serving(&self) -> bool {
        self.serving.unwrap_or_else(|| self.ready())
    }

    pub fn terminating(&self) -> bool {
        self.terminating.unwrap_or(false)
    }
}

#[derive(Debug, Deserialize)]
pub struct EndpointPort {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub port: Option<i64>,
}

/// Parses `kubectl ... -o json` output; the error names the JSON path of a bad value.
pub fn parse(bytes: &[u8]) -> Result<List, String> {
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err("not a Kubernetes List: expected a JSON object".into());
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let list: List = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            format!("not a Kubernetes List: {}", e.inner())
        } else {
            format!("{path}: {}", e.inner())
        }
    })?;
    Ok(list)
}
