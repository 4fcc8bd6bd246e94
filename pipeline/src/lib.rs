//! The vswitch packet pipeline.
//!
//! Pure packet processing: no I/O, no syscalls, no clocks. Every stage is a function over a batch
//! of frames that writes one [`Disposition`] per frame; the caller (the poll-mode worker) performs
//! the dispositions. Time is passed in, so aging is testable with an injected clock.
#![deny(unsafe_code)]

pub mod batch;
pub mod counters;
pub mod l2;
pub mod wire;

pub use batch::{Disposition, PortId, MAX_BATCH};
pub use l2::{Bridge, BridgeConfig, L2Counter, LearnEvent};
pub use wire::{EtherType, EthernetFrame, MacAddr, WireError};
