//! The node gateway: what a Kubernetes node's kernel does for its pods — the `cni0` bridge with
//! its gateway address, ARP, IP forwarding, host-gw routes, and kube-proxy's service DNAT, SNAT
//! masquerade and NodePort — as one pipeline stage over a batch.
//!
//! Per frame: ARP (`arp.rs`) and frames to our MAC (`forward.rs`: conntrack, NAT, routing,
//! neighbour resolution, `icmp.rs` for echo and errors); other frames on pod ports go through the
//! pod segment's L2 bridge; other frames on the uplink are dropped.
//!
//! Sharing: `GatewayShared` (conntrack, neighbours, session affinity, the current `Policy`) is
//! one per switch; each worker has its own `Gateway` with its own bridge, counters and a cached `Arc<Policy>` that it
//! refreshes when `GatewayShared::epoch` moves (a reload).

mod arp;
mod config;
mod forward;
mod icmp;
mod icmp_limit;
mod offers;

pub use config::{GatewayConfig, Policy, ServiceConfig, UplinkConfig, VxlanConfig, VxlanPeer};
pub use offers::{
    decap_pattern, encap_template, offloadable, FlowOffer, OverlayLeg, DECAP_COMPARED, ENCAP_FILLED,
};

use crate::batch::{Disposition, PortId, PortMask};
use crate::conntrack::{Conntrack, FragmentTable};
use crate::define_counters;
use crate::l2::Bridge;
use crate::l3::{NeighborCache, SharedNeighbors};
use crate::nat::{Affinity, DEFAULT_AFFINITY_CAPACITY};
use crate::overlay::encap;
use crate::packet::Packet;
use crate::wire::{EtherType, EthernetFrame};
use icmp_limit::IcmpErrorLimiter;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

define_counters! {
    /// What the gateway did with each frame, and why it dropped what it dropped.
    pub enum GwCounter, GwCounters {
        RxFrames => "rx_frames",
        Bridged => "bridged",
        ChecksumsCompleted => "checksums_completed",
        ArpReplied => "arp_replied",
        ArpLearned => "arp_learned",
        ArpRequestsSent => "arp_requests_sent",
        ArpIgnored => "arp_ignored",
        IcmpEchoReplied => "icmp_echo_replied",
        Routed => "routed",
        NeighborQueued => "neighbor_queued",
        NeighborReleased => "neighbor_released",
        NatService => "nat_service",
        NatNodePort => "nat_node_port",
        NatMasquerade => "nat_masquerade",
        NatHairpin => "nat_hairpin",
        NatBridged => "nat_bridged",
        NatClashRemapped => "nat_clash_source_port_remapped",
        FragmentsTranslated => "fragments_followed_first",
        IcmpRelatedTranslated => "icmp_related_translated",
        IcmpErrorsSent => "icmp_errors_sent",
        IcmpErrorsRateLimited => "icmp_errors_rate_limited",
        VxlanEncapsulated => "vxlan_encapsulated",
        VxlanDecapsulated => "vxlan_decapsulated",
        Recirculated => "recirculated",
        DropRunt => "drop_runt",
        DropSpoofed => "drop_spoofed",
        DropBadArp => "drop_bad_arp",
        DropArpClaimsOurAddress => "drop_arp_claims_our_address",
        DropPodSourceOutsideSubnet => "drop_pod_source_outside_subnet",
        DropMartianDestination => "drop_martian_destination",
        DropIpv4Truncated => "drop_ipv4_truncated",
        DropIpv4Version => "drop_ipv4_not_version_4",
        DropIpv4HeaderLength => "drop_ipv4_bad_header_length",
        DropIpv4TotalLength => "drop_ipv4_bad_total_length",
        DropIpv4Checksum => "drop_ipv4_bad_checksum",
        DropL4Truncated => "drop_l4_truncated",
        DropUplinkNotForUs => "drop_uplink_not_for_us",
        DropNotInSegment => "drop_port_not_in_a_segment",
        DropLocalUnhandled => "drop_local_unhandled",
        DropUnsolicited => "drop_unsolicited_inbound",
        DropNoBackend => "drop_service_without_backends",
        DropNatPortsExhausted => "drop_nat_ports_exhausted",
        DropNatClash => "drop_nat_reply_tuple_taken",
        DropFragmentWithoutFirst => "drop_fragment_without_first",
        DropFragmentTableFull => "drop_fragment_table_full",
        DropConntrackFull => "drop_conntrack_full",
        DropTtlExceeded => "drop_ttl_exceeded",
        DropNoRoute => "drop_no_route",
        DropNeighborQueueFull => "drop_neighbor_queue_full",
        DropNeighborUnresolved => "drop_neighbor_unresolved",
        DropIcmpRelatedUnknown => "drop_icmp_error_without_flow",
        DropVxlanFragmented => "drop_vxlan_fragmented",
        DropVxlanTruncated => "drop_vxlan_truncated",
        DropVxlanBadChecksum => "drop_vxlan_bad_udp_checksum",
        DropVxlanNoVni => "drop_vxlan_no_vni_flag",
        DropVxlanWrongVni => "drop_vxlan_wrong_vni",
        DropVxlanUnknownPeer => "drop_vxlan_unknown_peer",
        DropVxlanInnerNotForUs => "drop_vxlan_inner_not_for_our_vtep",
        DropVxlanInnerNotIpv4 => "drop_vxlan_inner_not_ipv4",
        DropVxlanInnerNotLocal => "drop_vxlan_inner_not_a_local_pod",
        DropOverlayTooBig => "drop_overlay_too_big",
        DropTooBig => "drop_too_big",
        DropNoHeadroom => "drop_no_headroom",
        DropRecirculationLimit => "drop_recirculation_limit",
    }
}

/// Conntrack shards the leader worker sweeps for expired flows each housekeeping tick.
const CONNTRACK_SHARDS_PER_SWEEP: usize = 8;
/// Datagrams whose fragments are followed at once (Linux's reassembly memory holds a few
/// thousand).
const FRAGMENT_TABLE_CAPACITY: usize = 8192;

/// What a frame's pass decided, before the frame is moved.
pub(super) enum Step {
    Out(Disposition),
    /// To a peer's VTEP: push the outer headers (UDP from `src_port`), then to its next hop;
    /// with what the fast path may be offered once it is known where the frame goes.
    Encap {
        vtep: Ipv4Addr,
        src_port: u16,
        pending: Option<(offers::Pending, (Ipv4Addr, u16, Ipv4Addr, u16))>,
    },
    /// VXLAN for us from the VTEP `peer`: strip `outer_len` bytes and route the inner frame in
    /// a second pass.
    Decap {
        outer_len: usize,
        peer: Ipv4Addr,
    },
}

impl From<Disposition> for Step {
    fn from(d: Disposition) -> Step {
        Step::Out(d)
    }
}

/// A frame the pipeline made (an ARP request, an ICMP error, a frame released from the
/// neighbour queue), to be sent out of the ports in `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emit {
    pub to: PortMask,
    pub frame: Vec<u8>,
}

/// State every worker shares.
pub struct GatewayShared {
    pub conntrack: Conntrack,
    pub neighbors: SharedNeighbors,
    pub fragments: FragmentTable,
    /// ClientIP session affinity, for services that ask for it.
    pub affinity: Affinity,
    policy: RwLock<Arc<Policy>>,
    epoch: AtomicU64,
    /// Moves on reloads only (not when pods come and go): what the fast path's entries hang on.
    reloads: AtomicU64,
    /// Tracked TCP packets with FIN or RST: a connection leaving the state the fast path may
    /// carry; also new flows that take over the tuple of an untracked bridged offer.
    closings: AtomicU64,
    /// Tuples of untracked pod-to-pod traffic offered to the fast path (`offers.rs`).
    untracked: offers::UntrackedOffers,
    /// Policies the workers let go of, freed by the control thread (`reap_retired`): freeing
    /// 10,000 services' tables takes milliseconds a worker must not spend.
    retired: Mutex<Vec<Arc<Policy>>>,
}

/// What forgetting a port removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ForgottenPort {
    pub fdb_entries: usize,
    pub neighbors: usize,
    pub flows: usize,
}

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub services: usize,
    pub routes: usize,
    pub peers: usize,
    pub flows_closed: usize,
}

impl GatewayShared {
    pub fn new(config: &GatewayConfig) -> Arc<GatewayShared> {
        Arc::new(GatewayShared {
            conntrack: Conntrack::new(config.conntrack_capacity),
            neighbors: SharedNeighbors::new(config.neighbor_age_ms),
            fragments: FragmentTable::new(FRAGMENT_TABLE_CAPACITY),
            affinity: Affinity::new(DEFAULT_AFFINITY_CAPACITY),
            policy: RwLock::new(Arc::new(Policy::new(config))),
            epoch: AtomicU64::new(1),
            reloads: AtomicU64::new(0),
            closings: AtomicU64::new(0),
            untracked: offers::UntrackedOffers::default(),
            retired: Mutex::new(Vec::new()),
        })
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Frees the policies the workers have replaced (call it from the control thread, now and
    /// then); returns how many.
    pub fn reap_retired(&self) -> usize {
        let old = std::mem::take(&mut *self.retired.lock().unwrap_or_else(|e| e.into_inner()));
        old.len()
    }

    /// Changes the pod ports (a pod attached or removed while the switch runs): the policy is
    /// rebuilt from `config` (which must differ from the running one in `pod_ports` only)
    /// and swapped in; tracked connections are left alone.
    pub fn set_pod_ports(&self, config: &GatewayConfig) {
        let policy = Arc::new(Policy::new(config));
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
        self.epoch.fetch_add(1, Ordering::Release);
    }

    /// Applies a new configuration to new connections, and closes tracked connections whose
    /// backend is gone. Ports, addresses and the MAC are fixed for the switch's life (checked
    /// by the caller).
    pub fn reload(&self, config: &GatewayConfig) -> ReloadReport {
        self.reload_keeping(config, |_| false)
    }

    /// `reload`, keeping also the connections to the backends `still_there` names: endpoints
    /// new connections no longer get but that still serve theirs (a Kubernetes endpoint
    /// terminating or not ready, still listed: a pod's graceful termination).
    pub fn reload_keeping(
        &self,
        config: &GatewayConfig,
        still_there: impl Fn(&std::net::SocketAddrV4) -> bool,
    ) -> ReloadReport {
        let policy = Arc::new(Policy::new(config));
        let backends: std::collections::HashSet<_> = policy.services.all_backends().collect();
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = policy.clone();
        // The reload first: a worker that sees the new epoch must see it as a reload.
        self.reloads.fetch_add(1, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::Release);
        let flows_closed = self.conntrack.remove_where(|f| {
            let dnat = f.orig.dst != f.reply.src || f.orig.dport != f.reply.sport;
            let backend = std::net::SocketAddrV4::new(f.reply.src, f.reply.sport);
            // A finished connection is not kept: a new SYN on its tuple would reuse it (and
            // its backend) instead of being balanced anew.
            let finished = matches!(
                f.state,
                crate::conntrack::FlowState::Tcp(
                    crate::conntrack::TcpState::TimeWait
                        | crate::conntrack::TcpState::LastAck
                        | crate::conntrack::TcpState::Close
                )
            );
            dnat && !backends.contains(&backend) && (finished || !still_there(&backend))
        });
        ReloadReport {
            services: policy.services.len(),
            routes: policy.routes.routes().len(),
            peers: policy.overlay.as_ref().map_or(0, |o| o.peers()),
            flows_closed,
        }
    }
}

/// One worker's gateway.
pub struct Gateway {
    shared: Arc<GatewayShared>,
    policy: Arc<Policy>,
    epoch: u64,
    bridge: Bridge,
    counters: GwCounters,
    neighbor_cache: NeighborCache,
    icmp_limit: IcmpErrorLimiter,
    /// Each port's MTU as the worker knows it (0: unknown, nothing checked).
    port_mtu: Vec<u32>,
    /// The smallest of them: shorter packets skip the check.
    smallest_mtu: u32,
    /// Decisions the fast path may repeat (`None`: there is no fast path).
    offers: Option<Vec<FlowOffer>>,
    /// Per frame of the batch being decided: the VTEP of the peer it was decapsulated from.
    decap_peers: Vec<Ipv4Addr>,
}

impl Gateway {
    pub fn new(shared: Arc<GatewayShared>, bridge: Bridge) -> Gateway {
        let policy = shared.policy();
        let epoch = shared.epoch.load(Ordering::Acquire);
        Gateway {
            shared,
            policy,
            epoch,
            bridge,
            counters: GwCounters::default(),
            neighbor_cache: NeighborCache::default(),
            icmp_limit: IcmpErrorLimiter::default(),
            port_mtu: vec![0; crate::MAX_PORTS],
            smallest_mtu: u32::MAX,
            offers: None,
            decap_peers: Vec::new(),
        }
    }

    /// A port's MTU: a routed packet larger than its egress port's is answered with
    /// fragmentation-needed (DF) and dropped either way.
    pub fn set_port_mtu(&mut self, port: PortId, mtu: u32) {
        if let Some(m) = self.port_mtu.get_mut(port as usize) {
            *m = mtu;
        }
        self.smallest_mtu = self
            .port_mtu
            .iter()
            .copied()
            .filter(|&m| m != 0)
            .min()
            .unwrap_or(u32::MAX);
    }

    pub fn counters(&self) -> &GwCounters {
        &self.counters
    }

    pub fn bridge(&self) -> &Bridge {
        &self.bridge
    }

    pub fn bridge_mut(&mut self) -> &mut Bridge {
        &mut self.bridge
    }

    pub fn shared(&self) -> &Arc<GatewayShared> {
        &self.shared
    }

    fn refresh_policy(&mut self) {
        let epoch = self.shared.epoch.load(Ordering::Acquire);
        if epoch != self.epoch {
            let old = std::mem::replace(&mut self.policy, self.shared.policy());
            self.epoch = epoch;
            self.shared
                .retired
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(old);
        }
    }

    /// Decides every frame of a batch received on `ingress`; frames may be rewritten in place,
    /// and grow or shrink at the front (VXLAN). Frames decapsulated in the first pass over the
    /// batch are routed in a second pass (`Disposition::Recirculate` between the two); a frame
    /// gets at most one extra pass.
    pub fn process<P: Packet>(
        &mut self,
        frames: &mut [P],
        ingress: PortId,
        now_ms: u64,
        next: &mut [Disposition],
        emit: &mut Vec<Emit>,
    ) {
        self.refresh_policy();
        self.counters.add(GwCounter::RxFrames, frames.len() as u64);
        let mut peers = std::mem::take(&mut self.decap_peers);
        peers.clear();
        peers.resize(frames.len(), Ipv4Addr::UNSPECIFIED);
        for ((frame, slot), peer) in frames.iter_mut().zip(next.iter_mut()).zip(&mut peers) {
            let step = self.handle(frame.as_mut(), ingress, now_ms, emit);
            if let Step::Decap { peer: from, .. } = step {
                *peer = from;
            }
            *slot = self.apply(frame, step, ingress, now_ms, emit, false);
        }
        for ((frame, slot), peer) in frames.iter_mut().zip(next.iter_mut()).zip(&peers) {
            if *slot != Disposition::Recirculate {
                continue;
            }
            self.counters.add(GwCounter::Recirculated, 1);
            let step = self.handle_inner(frame.as_mut(), ingress, *peer, now_ms, emit);
            *slot = self.apply(frame, step, ingress, now_ms, emit, true);
        }
        self.decap_peers = peers;
    }

    /// Carries out what the frame's pass decided that needs the frame to move.
    fn apply<P: Packet>(
        &mut self,
        frame: &mut P,
        step: Step,
        ingress: PortId,
        now_ms: u64,
        emit: &mut Vec<Emit>,
        second_pass: bool,
    ) -> Disposition {
        match step {
            Step::Out(d) => d,
            Step::Decap { outer_len, .. } => {
                if second_pass {
                    self.counters.add(GwCounter::DropRecirculationLimit, 1);
                    return Disposition::Drop;
                }
                if !frame.pull_front(outer_len) {
                    self.counters.add(GwCounter::DropVxlanTruncated, 1);
                    return Disposition::Drop;
                }
                self.counters.add(GwCounter::VxlanDecapsulated, 1);
                Disposition::Recirculate
            }
            Step::Encap {
                vtep,
                src_port,
                pending,
            } => {
                let Some(overlay) = self.policy.overlay.as_ref() else {
                    self.counters.add(GwCounter::DropNoRoute, 1);
                    return Disposition::Drop;
                };
                if let Err(e) = encap::push_outer(frame, overlay, vtep, src_port) {
                    self.counters.add(
                        match e {
                            encap::EncapError::UnknownPeer => GwCounter::DropNoRoute,
                            encap::EncapError::NoHeadroom => GwCounter::DropNoHeadroom,
                        },
                        1,
                    );
                    return Disposition::Drop;
                }
                self.counters.add(GwCounter::VxlanEncapsulated, 1);
                let d = forward::deliver_encapsulated(self, frame.as_mut(), vtep, now_ms, emit);
                if let (Disposition::Forward(egress), Some((p, to))) = (d, pending) {
                    self.offer_encapsulated(frame.as_ref(), p, ingress, egress, to, vtep, src_port);
                }
                d
            }
        }
    }

    fn handle(
        &mut self,
        frame: &mut [u8],
        ingress: PortId,
        now_ms: u64,
        emit: &mut Vec<Emit>,
    ) -> Step {
        let Ok(eth) = EthernetFrame::new_checked(&*frame) else {
            self.counters.add(GwCounter::DropRunt, 1);
            return Step::Out(Disposition::Drop);
        };
        let from_uplink = self.policy.uplink_port == Some(ingress);
        let on_pods = self.policy.pod_ports.contains(ingress);
        if !from_uplink && !on_pods {
            self.counters.add(GwCounter::DropNotInSegment, 1);
            return Step::Out(Disposition::Drop);
        }
        if on_pods && !self.bridge.security().allows(ingress, frame) {
            self.counters.add(GwCounter::DropSpoofed, 1);
            return Step::Out(Disposition::Drop);
        }
        let ethertype = eth.ethertype();
        let to_us = eth.dst_addr() == self.policy.mac;
        if ethertype == EtherType::Ipv4 && crate::offload::complete(frame) {
            self.counters.add(GwCounter::ChecksumsCompleted, 1);
        }
        match ethertype {
            EtherType::Arp => {
                return Step::Out(arp::handle(self, frame, ingress, from_uplink, now_ms, emit))
            }
            EtherType::Ipv4 if to_us => {
                if on_pods {
                    // As the kernel's bridge does: a pod that only talks through the gateway
                    // stays known, so replies straight to it are not flooded.
                    self.bridge.learn_from(frame, ingress, now_ms);
                }
                return forward::handle(self, frame, ingress, from_uplink, None, now_ms, emit);
            }
            _ => {}
        }
        Step::Out(self.not_routed(frame, ingress, from_uplink, ethertype, now_ms))
    }

    /// A frame decapsulated in the first pass: its inner frame (addressed to our VTEP MAC,
    /// checked by the decapsulation) is routed like a routed frame from the uplink.
    fn handle_inner(
        &mut self,
        frame: &mut [u8],
        ingress: PortId,
        peer: Ipv4Addr,
        now_ms: u64,
        emit: &mut Vec<Emit>,
    ) -> Step {
        let inner_ipv4 =
            EthernetFrame::new_checked(&*frame).is_ok_and(|eth| eth.ethertype() == EtherType::Ipv4);
        if !inner_ipv4 {
            self.counters.add(GwCounter::DropVxlanInnerNotIpv4, 1);
            return Step::Out(Disposition::Drop);
        }
        // A peer that left the inner checksum to offload (its outer one was finished first).
        if crate::offload::complete(frame) {
            self.counters.add(GwCounter::ChecksumsCompleted, 1);
        }
        forward::handle(self, frame, ingress, true, Some(peer), now_ms, emit)
    }

    /// Frames neither ARP nor routed: bridged on the pod segment, dropped from the uplink.
    fn not_routed(
        &mut self,
        frame: &mut [u8],
        ingress: PortId,
        from_uplink: bool,
        ethertype: EtherType,
        now_ms: u64,
    ) -> Disposition {
        if from_uplink {
            self.counters.add(GwCounter::DropUplinkNotForUs, 1);
            return Disposition::Drop;
        }
        let mut pending = None;
        if ethertype == EtherType::Ipv4 {
            // A backend answering a client on its own segment sends straight to the client's
            // MAC: undo the service's DNAT here, as the kernel's bridge netfilter does.
            pending = forward::translate_bridged(self, frame, now_ms);
        }
        let disposition = self.bridge_frame(frame, ingress, now_ms);
        if let (Some((p, to)), Disposition::Forward(egress)) = (pending, disposition) {
            if let Some(offers) = self.offers.as_mut() {
                let max_len = offers::max_len_out(&self.port_mtu, egress);
                offers.push(p.offer(frame, ingress, egress, to, None, max_len, None));
                if p.untracked {
                    self.shared
                        .untracked
                        .register(p.tuple, &self.shared.closings);
                }
            }
        }
        disposition
    }

    fn bridge_frame(&mut self, frame: &[u8], ingress: PortId, now_ms: u64) -> Disposition {
        self.counters.add(GwCounter::Bridged, 1);
        self.bridge.decide(frame, ingress, now_ms)
    }

    /// A port went away: its MAC addresses, its neighbours and their tracked connections are
    /// forgotten, and its binding dropped.
    pub fn forget_port(&mut self, port: PortId) -> ForgottenPort {
        let fdb_entries = self.bridge.forget_port(port);
        let addresses = self.shared.neighbors.update(|t| t.remove_port(port));
        let flows = if addresses.is_empty() {
            0
        } else {
            self.shared.conntrack.remove_where(|f| {
                addresses.contains(&f.orig.src) || addresses.contains(&f.reply.src)
            })
        };
        ForgottenPort {
            fdb_entries,
            neighbors: addresses.len(),
            flows,
        }
    }

    /// Periodic work: conntrack expiry (one worker does it), neighbour aging and ARP retries.
    pub fn housekeeping(&mut self, now_ms: u64, expire_conntrack: bool, emit: &mut Vec<Emit>) {
        self.bridge.housekeeping(now_ms);
        if expire_conntrack {
            // A slice of the table per second: a full pass every 8 s, never a long stall.
            self.shared
                .conntrack
                .expire_some(now_ms, CONNTRACK_SHARDS_PER_SWEEP);
            self.shared.fragments.expire(now_ms);
            self.shared
                .affinity
                .expire_some(now_ms, CONNTRACK_SHARDS_PER_SWEEP);
            let chores = self.shared.neighbors.update(|t| t.housekeeping(now_ms));
            self.counters
                .add(GwCounter::DropNeighborUnresolved, chores.dropped as u64);
            let policy = self.policy.clone();
            let asks = chores.ask.iter().map(|&ip| arp::request_for(&policy, ip));
            let probes = (chores.probe.iter()).map(|&(ip, n)| arp::probe_for(&policy, ip, n));
            for request in asks.chain(probes).flatten() {
                self.counters.add(GwCounter::ArpRequestsSent, 1);
                emit.push(request);
            }
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_drops;
#[cfg(test)]
mod tests_offers;
#[cfg(test)]
mod tests_offers_vxlan;
#[cfg(test)]
mod tests_services;
#[cfg(test)]
mod tests_vxlan;
