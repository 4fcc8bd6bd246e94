//! The import body: the watched objects as one `List`, the shape `kubectl get
//! services,endpointslices -A -o json` prints (each item with its `apiVersion` and `kind`).

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Serialize;
use std::sync::Arc;

#[derive(Serialize)]
#[serde(untagged)]
enum Item<'a> {
    Service(&'a Service),
    Slice(&'a EndpointSlice),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct List<'a> {
    api_version: &'static str,
    kind: &'static str,
    items: Vec<Item<'a>>,
}

fn key(m: &kube::api::ObjectMeta) -> (&str, &str) {
    (
        m.namespace.as_deref().unwrap_or(""),
        m.name.as_deref().unwrap_or(""),
    )
}

/// Services then slices, each sorted by namespace and name (the same state gives the same
/// bytes).
pub fn body(services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) -> Vec<u8> {
    let mut services: Vec<&Service> = services.iter().map(|s| &**s).collect();
    services.sort_by(|a, b| key(&a.metadata).cmp(&key(&b.metadata)));
    let mut slices: Vec<&EndpointSlice> = slices.iter().map(|s| &**s).collect();
    slices.sort_by(|a, b| key(&a.metadata).cmp(&key(&b.metadata)));
    let list = List {
        api_version: "v1",
        kind: "List",
        items: services
            .into_iter()
            .map(Item::Service)
            .chain(slices.into_iter().map(Item::Slice))
            .collect(),
    };
    // Serializing plain API objects cannot fail.
    serde_json::to_vec(&list).unwrap_or_default()
}
