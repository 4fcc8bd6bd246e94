//! Services from the Kubernetes API: `vswitch ctl import` takes what `kubectl get
//! services,endpointslices -A -o json` prints (`model`) and turns it into the gateway's
//! services as kube-proxy would program them (`translate`).

pub mod model;
pub mod translate;

#[cfg(test)]
mod tests;

pub use model::{parse, List};
pub use translate::{translate, Invalid, Node};
