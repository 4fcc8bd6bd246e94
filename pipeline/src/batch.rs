//! What a stage decides for each frame of a batch.

/// Index of a switch port, dense from 0 in the order the ports were given.
pub type PortId = u16;

/// The largest burst a worker hands to the pipeline at once.
pub const MAX_BATCH: usize = 64;

/// The fate of one frame, written by a stage and carried out once per batch by the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Send out of exactly this port.
    Forward(PortId),
    /// Send out of every port except the ingress port.
    Flood,
    /// Drop; the reason has already been counted by the stage.
    Drop,
}
