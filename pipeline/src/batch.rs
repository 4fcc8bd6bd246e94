//! What a stage decides for each frame of a batch.

/// Index of a switch port, dense from 0 in the order the ports were given.
pub type PortId = u16;

/// The largest burst a worker hands to the pipeline at once.
pub const MAX_BATCH: usize = 64;

/// Most ports a switch has (one bit each in a `PortMask`): a node's pods (Kubernetes allows up
/// to 250 per node when raised from its default of 110) and its uplink.
pub const MAX_PORTS: usize = 256;

const MASK_WORDS: usize = MAX_PORTS / 64;

/// A set of ports: a fixed-size bitset, so it stays `Copy` and a flood costs a few words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PortMask([u64; MASK_WORDS]);

impl PortMask {
    pub const ALL: PortMask = PortMask([u64::MAX; MASK_WORDS]);
    pub const NONE: PortMask = PortMask([0; MASK_WORDS]);

    /// The set of `ports`; a port at or past `MAX_PORTS` has no bit and is left out (never
    /// folded onto a low port). The datapath refuses more ports than that.
    pub fn of(ports: &[PortId]) -> PortMask {
        let mut mask = PortMask::NONE;
        for &p in ports {
            mask = mask.with(p);
        }
        mask
    }

    pub fn single(port: PortId) -> PortMask {
        PortMask::NONE.with(port)
    }

    #[inline]
    fn bit(port: PortId) -> Option<(usize, u64)> {
        ((port as usize) < MAX_PORTS).then(|| (port as usize / 64, 1u64 << (port % 64)))
    }

    #[inline]
    pub fn contains(&self, port: PortId) -> bool {
        Self::bit(port).is_some_and(|(w, b)| self.0[w] & b != 0)
    }

    /// The set with `port` added (unchanged for a port past `MAX_PORTS`).
    #[inline]
    pub fn with(mut self, port: PortId) -> PortMask {
        if let Some((w, b)) = Self::bit(port) {
            self.0[w] |= b;
        }
        self
    }

    #[inline]
    pub fn without(mut self, port: PortId) -> PortMask {
        if let Some((w, b)) = Self::bit(port) {
            self.0[w] &= !b;
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The ports in both sets.
    #[inline]
    pub fn and(mut self, other: PortMask) -> PortMask {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a &= b;
        }
        self
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The ports in the set, below `limit`, in order.
    pub fn ports(self, limit: usize) -> impl Iterator<Item = PortId> {
        let limit = limit.min(MAX_PORTS);
        self.0
            .into_iter()
            .enumerate()
            .flat_map(move |(w, mut word)| {
                std::iter::from_fn(move || {
                    if word == 0 {
                        return None;
                    }
                    let bit = word.trailing_zeros() as usize;
                    word &= word - 1;
                    Some(w * 64 + bit)
                })
                .take_while(move |&p| p < limit)
                .map(|p| p as PortId)
            })
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
    fn every_port_of_a_node_has_its_own_bit() {
        let ports: Vec<PortId> = (0..MAX_PORTS as PortId).collect();
        let all = PortMask::of(&ports);
        assert_eq!(all.ports(usize::MAX).collect::<Vec<_>>(), ports);
        for p in [0, 63, 64, 65, 127, 128, 250, 255] {
            let one = PortMask::single(p);
            assert!(one.contains(p));
            assert_eq!(one.ports(usize::MAX).collect::<Vec<_>>(), [p]);
            assert!(!all.without(p).contains(p));
            assert!(all.without(p).contains((p + 1) % MAX_PORTS as PortId));
        }
        assert!(!PortMask::single(64).contains(0), "no aliasing");
        assert_eq!(PortMask::of(&[3, 200]).ports(100).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn ports_past_the_mask_are_left_out_not_aliased() {
        let past = MAX_PORTS as PortId;
        assert_eq!(PortMask::of(&[past]), PortMask::NONE);
        assert_eq!(PortMask::of(&[0, past, past + 64]), PortMask::single(0));
        assert_eq!(PortMask::single(PortId::MAX), PortMask::NONE);
        assert!(PortMask::NONE.is_empty() && !PortMask::single(9).is_empty());
        assert_eq!(
            PortMask::of(&[1, 70, 200]).and(PortMask::of(&[70, 200, 201])),
            PortMask::of(&[70, 200])
        );
        assert_eq!(PortMask::of(&[1, 70, 200]).len(), 3);
    }
}
