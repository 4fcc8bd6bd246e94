//! vswitch ports and poll-mode workers.
//!
//! The only crate with `unsafe`: the UMEM mapping, ring access (through `xdpilone`), and the
//! few syscalls (`bpf`, ioctl, poll) that have no safe wrapper. Every block says why it is sound
//! (enforced by the lint below).

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod bpf;
pub mod core_share;
pub mod datapath;
pub mod fastpath;
pub mod fastpath_front;
pub mod flowcache;
pub mod housekeeping;
pub mod napi_probe;
pub mod netdev;
pub mod socket;
pub mod stats;
pub mod tuplecache;
pub mod umem;
pub mod worker;
pub mod xdp_features;

pub use bpf::XdpMode;
pub use datapath::{
    Datapath, DatapathConfig, DatapathError, LivePort, PortInfo, SharedJob, WorkerEnd,
    DEFAULT_MAX_FRAMES_PER_WORKER, DEFAULT_SEGMENT_FRAMES, MAX_MTU,
};
pub use stats::{PortCounter, WorkerCounter, WorkerStats};
pub use umem::{RingSizes, FRAME_SIZE};
pub use worker::{CaptureState, Captured, PollMode, WorkerReport};
