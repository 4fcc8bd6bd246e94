//! NAT: what a new connection is translated to (`decide`), service load balancing (Maglev),
//! ClientIP session affinity (`affinity`) and the service table, unique reply tuples (`ports`), and ICMP errors about translated flows
//! (`related`).

mod affinity;
mod decide;
mod maglev;
mod ports;
mod related;
mod services;

pub use affinity::{Affinity, AffinityCounters, AffinityKey, DEFAULT_AFFINITY_CAPACITY};
pub use decide::{flow_hash, plan, NatKind, NatPlan, Refusal};
pub use maglev::{mix as maglev_mix, Maglev};
pub use ports::{insert_with_unique_reply, ports_translatable, AllocError};
pub use related::translate_icmp_error;
pub use services::{Front, Service, ServiceTable};
