//! The vswitch packet pipeline.
//!
//! Pure packet processing: no I/O, no syscalls, no clocks. Every stage is a function over a batch
//! of frames that writes one [`Disposition`] per frame; the caller (the poll-mode worker) performs
//! the dispositions. Time is passed in, so aging is testable with an injected clock.
#![deny(unsafe_code)]

pub mod batch;
pub mod conntrack;
pub mod counters;
pub mod gateway;
pub mod l2;
pub mod l3;
pub mod nat;
pub mod offload;
pub mod overlay;
pub mod packet;
pub mod wire;

pub use batch::{Disposition, PortId, PortMask, MAX_BATCH, MAX_PORTS};
pub use gateway::{Emit, Gateway, GatewayConfig, GatewayShared, GwCounter};
pub use l2::{link_local_of, Bridge, BridgeConfig, L2Counter, LearnEvent};
pub use packet::{HeadroomBuf, Packet};
pub use wire::{EtherType, EthernetFrame, MacAddr, WireError};

/// The pipeline a worker runs: a plain learning bridge (`--ports`), or the node gateway
/// (`--config`).
// One per worker, made once and never moved on the packet path: the bridge stays inline (no
// pointer to chase per batch) even though it is much larger than the boxed gateway.
#[allow(clippy::large_enum_variant)]
pub enum Pipeline {
    Bridge(Bridge),
    Gateway(Box<Gateway>),
}

impl Pipeline {
    /// A port's MTU, for the gateway's routed packets (the bridge leaves it to the egress).
    pub fn set_port_mtu(&mut self, port: PortId, mtu: u32) {
        if let Pipeline::Gateway(g) = self {
            g.set_port_mtu(port, mtu);
        }
    }

    /// Decides a batch received on `ingress`; frames may be rewritten in place and new frames
    /// may be pushed to `emit`.
    pub fn process<P: Packet>(
        &mut self,
        frames: &mut [P],
        ingress: PortId,
        now_ms: u64,
        next: &mut [Disposition],
        emit: &mut Vec<Emit>,
    ) {
        match self {
            Pipeline::Bridge(b) => {
                let mut completed = 0;
                for f in frames.iter_mut() {
                    completed += offload::complete(f.as_mut()) as usize;
                }
                b.count_checksums_completed(completed as u64);
                b.process(frames, ingress, now_ms, next)
            }
            Pipeline::Gateway(g) => g.process(frames, ingress, now_ms, next, emit),
        }
    }

    /// Periodic work; `leader` is set on exactly one worker (shared tables are aged once).
    pub fn housekeeping(&mut self, now_ms: u64, leader: bool, emit: &mut Vec<Emit>) {
        match self {
            Pipeline::Bridge(b) => b.housekeeping(now_ms),
            Pipeline::Gateway(g) => g.housekeeping(now_ms, leader, emit),
        }
    }

    /// The learning bridge (the pod segment's, for the gateway).
    pub fn bridge(&self) -> &Bridge {
        match self {
            Pipeline::Bridge(b) => b,
            Pipeline::Gateway(g) => g.bridge(),
        }
    }

    pub fn bridge_mut(&mut self) -> &mut Bridge {
        match self {
            Pipeline::Bridge(b) => b,
            Pipeline::Gateway(g) => g.bridge_mut(),
        }
    }

    /// The ports floods go to.
    pub fn set_flood_domain(&mut self, ports: PortMask) {
        self.bridge_mut().set_flood_domain(ports);
    }

    /// Binds a port to the addresses it may send from (`None`: unchecked).
    pub fn set_port_binding(&mut self, port: PortId, binding: Option<l2::PortBinding>) {
        self.bridge_mut().set_binding(port, binding);
    }

    /// A port went away: everything learned on it is forgotten (for the gateway also its
    /// neighbours and their tracked connections).
    pub fn forget_port(&mut self, port: PortId) -> gateway::ForgottenPort {
        match self {
            Pipeline::Bridge(b) => gateway::ForgottenPort {
                fdb_entries: b.forget_port(port),
                ..Default::default()
            },
            Pipeline::Gateway(g) => g.forget_port(port),
        }
    }

    pub fn gateway(&self) -> Option<&Gateway> {
        match self {
            Pipeline::Gateway(g) => Some(g),
            Pipeline::Bridge(_) => None,
        }
    }

    pub fn gateway_mut(&mut self) -> Option<&mut Gateway> {
        match self {
            Pipeline::Gateway(g) => Some(g),
            Pipeline::Bridge(_) => None,
        }
    }
}
