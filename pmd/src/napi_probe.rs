//! Whether a port takes the frames an XDP program redirects into it. A veth hands them to its
//! peer only when the peer has NAPI (GRO on, or an XDP program of its own); without it the
//! kernel drops them and counts them nowhere. So before the fast path sends a veth anything,
//! a few probe frames are sent into it the same way (`ndo_xdp_xmit`), and the port joins the
//! fast path's egress ports only if its XDP transmit count shows they went through. The probe
//! runs beside the port's attachment (a program run the kernel's XDP dispatcher does not hold
//! costs tens of milliseconds), so the fast path takes the port a moment after it is added.

use crate::bpf::LiveFrameSender;
use crate::netdev;
use crate::xdp_features;
use std::io;
use std::time::{Duration, Instant};

const PROBES: u32 = 8;
/// The peer's NAPI runs at once on the sending CPU; this is slack for a loaded machine.
const PROBE_WAIT: Duration = Duration::from_millis(20);
/// IEEE 802 local experimental EtherType: no protocol takes it, so the pod drops the probes.
const PROBE_ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// The largest MTU whose frames always fit one XDP buffer (a page, less the headroom and the
/// kernel's shared info): a port no larger is never sent a frame of several buffers.
const SINGLE_BUFFER_MTU: u32 = 3_400;

/// `true` if frames redirected into `name` by XDP leave it. With every port in generic mode
/// (`all_generic`) they do: a generic redirect transmits through the device's ordinary path.
/// Otherwise a driver other than veth needs nothing from a peer but must implement
/// `ndo_xdp_xmit` (a bridge, say, does not: what XDP redirects there is dropped), and for
/// frames of several buffers (a port with an MTU above `SINGLE_BUFFER_MTU`) its multi-buffer
/// variant: the kernel's XDP features say so (kernels from 6.3; on older ones, with no such
/// family, the driver is trusted; a failed query fails the probe, which is retried). A veth
/// reports `ndo_xdp_xmit` only while its other end has NAPI: without it, no frame is sent (a
/// port off the fast path is asked again and again); with it, or on older kernels, probes
/// are sent, which reach the pod as frames addressed to the switch's own end that its stack
/// discards, and the veth's counters must show them.
pub fn takes_redirected_frames(name: &str, ifindex: u32, all_generic: bool) -> io::Result<bool> {
    if all_generic {
        return Ok(true);
    }
    let features = xdp_features::of(ifindex);
    if netdev::driver(name)? != "veth" {
        let Some(features) = features? else {
            return Ok(true);
        };
        let needed = if netdev::mtu(name)? > SINGLE_BUFFER_MTU {
            xdp_features::NDO_XMIT | xdp_features::NDO_XMIT_SG
        } else {
            xdp_features::NDO_XMIT
        };
        return Ok(features & needed == needed);
    }
    if matches!(features, Ok(Some(f)) if f & xdp_features::NDO_XMIT == 0) {
        return Ok(false);
    }
    let mac = netdev::mac(name)?;
    let mut frame = [0u8; 60];
    frame[..6].copy_from_slice(&mac);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&PROBE_ETHERTYPE);
    frame[14..38].copy_from_slice(b"vswitch fast-path probe\0");
    // Moved only by XDP transmit into this end, and not at all without NAPI at the other.
    let before = netdev::veth_xdp_taken(name)?;
    LiveFrameSender::load(ifindex)?.send(&frame, PROBES, PROBES)?;
    let deadline = Instant::now() + PROBE_WAIT;
    loop {
        if netdev::veth_xdp_taken(name)? >= before + PROBES as u64 {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
