//! Layer 2: the learning bridge.

mod bridge;
mod fdb;

pub use bridge::{Bridge, BridgeConfig, L2Counter, L2Counters, DEFAULT_FDB_PORT_LIMIT};
pub use fdb::{Fdb, FdbEntry, LearnEvent, LearnOutcome};
