//! Layer 2: the learning bridge and port security.

mod bridge;
mod fdb;
mod security;

pub use bridge::{Bridge, BridgeConfig, L2Counter, L2Counters, DEFAULT_FDB_PORT_LIMIT};
pub use fdb::{Fdb, FdbEntry, LearnEvent, LearnOutcome};
pub use security::{link_local_of, PortBinding, PortSecurity};
