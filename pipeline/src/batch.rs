//! What a stage decides for each frame of a batch.

/// Index of a switch port, dense from 0 in the order the ports were given.
pub type PortId = u16;

/// The largest burst a worker hands to the pipeline at once.
pub const MAX_BATCH: usize = 64;

/// Most ports a switch has (one bit each in a `PortMask`).
pub const MAX_PORTS: usize = 64;

/// A set of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PortMask(pub u64);

impl PortMask {
    pub const ALL: PortMask = PortMask(u64::MAX);
    pub const NONE: PortMask = PortMask(0);

    /// The set of `ports`; a port at or past `MAX_PORTS` has no bit and is left out (never
    /// folded onto a low port). The datapath refuses more ports than that at start.
    pub fn of(ports: &[PortId]) -> PortMask {
        PortMask(
            ports
                .iter()
                .filter(|&&p| (p as usize) < MAX_PORTS)
                .fold(0, |m, &p| m | (1u64 << p)),
        )
    }

    pub fn single(port: PortId) -> PortMask {
        PortMask::of(&[port])
    }

    #[inline]
    pub fn contains(&self, port: PortId) -> bool {
        (port as usize) < MAX_PORTS && self.0 & (1 << port) != 0
    }

    #[inline]
    pub fn without(self, port: PortId) -> PortMask {
        if (port as usize) < MAX_PORTS {
            PortMask(self.0 & !(1 << port))
        } else {
            self
        }
    }

    /// The ports in the set, below `limit`.
    pub fn ports(self, limit: usize) -> impl Iterator<Item = PortId> {
        (0..limit.min(MAX_PORTS) as PortId).filter(move |&p| self.contains(p))
    }
}

/// The fate of one frame, written by a stage and carried out once per batch by the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Send out of exactly this port.
    Forward(PortId),
    /// Send out of each of these ports (never includes the ingress port).
    Flood(PortMask),
    /// Drop; the reason has already been counted by the stage.
    Drop,
    /// The stage kept a copy (e.g. queued until a neighbour resolves); free the frame.
    Consumed,
    /// Between the passes of one batch: decapsulated, to go through the pipeline once more.
    /// The stage resolves it before it returns; a worker that sees it drops the frame.
    Recirculate,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_past_the_mask_are_left_out_not_aliased() {
        assert_eq!(PortMask::of(&[64]), PortMask::NONE);
        assert_eq!(PortMask::of(&[0, 64, 65, 127, 128]), PortMask::single(0));
        let mask = PortMask::of(&[1, 63, 64, 65]);
        assert!(!mask.contains(0) && !mask.contains(1 + 64));
        assert_eq!(mask.ports(usize::MAX).collect::<Vec<_>>(), [1, 63]);
        assert_eq!(PortMask::single(PortId::MAX), PortMask::NONE);
    }
}
