//! The L2 learning-bridge stage: learn the source, decide by the destination.

use super::fdb::{Fdb, LearnEvent, LearnOutcome};
use super::security::{PortBinding, PortSecurity};
use crate::batch::{Disposition, PortId, PortMask};
use crate::define_counters;
use crate::wire::{EthernetFrame, MacAddr};

define_counters! {
    /// Why the bridge did what it did with each frame.
    pub enum L2Counter, L2Counters {
        RxFrames => "rx_frames",
        Forwarded => "forwarded",
        FloodBroadcast => "flood_broadcast",
        FloodMulticast => "flood_multicast",
        FloodUnknown => "flood_unknown_unicast",
        Learned => "learned",
        Moved => "moved",
        LearnTableFull => "learn_table_full",
        LearnPortLimit => "learn_port_limit",
        Aged => "aged",
        DropRunt => "drop_runt",
        DropSourceMulticast => "drop_src_multicast",
        DropSourceZero => "drop_src_zero",
        DropSpoofed => "drop_spoofed",
        ChecksumsCompleted => "checksums_completed",
        FilteredSamePort => "filtered_same_port",
    }
}

/// Default most MAC addresses on one port: far more than a pod has, far fewer than the table.
pub const DEFAULT_FDB_PORT_LIMIT: usize = 1024;

#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Most MAC addresses learned; beyond it frames from new sources are flooded to, not learned.
    pub fdb_capacity: usize,
    /// Most MAC addresses learned on one port; beyond it, as at capacity, new sources on that
    /// port are not learned (frames to them flood) and `learn_port_limit` counts them.
    pub fdb_port_limit: usize,
    /// An entry not refreshed for this long is forgotten.
    pub fdb_age_ms: u64,
    /// Record [`LearnEvent`]s for other workers' tables (only needed with several workers).
    pub announce_learning: bool,
    /// The ports this bridge floods to (all by default).
    pub flood_domain: PortMask,
    /// Ports bound to the addresses they may send from.
    pub bindings: Vec<(PortId, PortBinding)>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            fdb_capacity: 65_536,
            fdb_port_limit: DEFAULT_FDB_PORT_LIMIT,
            fdb_age_ms: 300_000,
            announce_learning: false,
            flood_domain: PortMask::ALL,
            bindings: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Bridge {
    fdb: Fdb,
    counters: L2Counters,
    announce_learning: bool,
    announce_interval_ms: u64,
    events: Vec<LearnEvent>,
    /// Addresses still to re-announce after `reannounce_all`, taken in chunks.
    reannounce: Vec<MacAddr>,
    flood_domain: PortMask,
    security: PortSecurity,
    /// Entries that moved or went (learned here or from a peer, aged, forgotten, flushed):
    /// what a decision taken from the table, such as a fast-path entry, must be checked on.
    entries_changed: u64,
}

impl Bridge {
    pub fn new(config: &BridgeConfig) -> Bridge {
        Bridge {
            fdb: Fdb::new(
                config.fdb_capacity,
                config.fdb_port_limit,
                config.fdb_age_ms,
            ),
            counters: L2Counters::default(),
            announce_learning: config.announce_learning,
            // Often enough that a peer's copy never ages out while traffic flows.
            announce_interval_ms: (config.fdb_age_ms / 4).max(1),
            events: Vec::new(),
            reannounce: Vec::new(),
            flood_domain: config.flood_domain,
            entries_changed: 0,
            security: {
                let mut s = PortSecurity::default();
                for (port, binding) in &config.bindings {
                    s.set(*port, Some(*binding));
                }
                s
            },
        }
    }

    pub fn security(&self) -> &PortSecurity {
        &self.security
    }

    /// Frames whose checksum was finished for the sender (`offload`) before they were bridged.
    pub fn count_checksums_completed(&mut self, n: u64) {
        self.counters.add(L2Counter::ChecksumsCompleted, n);
    }

    /// Binds a port to the addresses it may send from (`None`: unchecked).
    pub fn set_binding(&mut self, port: PortId, binding: Option<PortBinding>) {
        self.security.set(port, binding);
    }

    /// A port went away: its addresses are forgotten and its binding dropped. Returns the
    /// entries removed.
    pub fn forget_port(&mut self, port: PortId) -> usize {
        self.security.set(port, None);
        let removed = self.fdb.remove_port(port);
        self.entries_changed += removed as u64;
        removed
    }

    /// Moves whenever an entry moved or went, also by another worker's announcement: each
    /// worker keeps its own copy of the table, and its fast-path entries follow that copy.
    pub fn fdb_changes(&self) -> u64 {
        self.entries_changed
    }

    pub fn fdb(&self) -> &Fdb {
        &self.fdb
    }

    /// `mac` was seen on `port` where the switch did not see it (the XDP fast path): its entry
    /// stays alive. Only an entry already pointing there is refreshed, never moved.
    /// Announced to the other workers as a frame's source is: their copies of the entry must
    /// not age out while the fast path carries its traffic.
    pub fn refresh(&mut self, mac: MacAddr, port: PortId, now_ms: u64) {
        if self.fdb.lookup(mac, now_ms) == Some(port) {
            self.fdb.learn(mac, port, now_ms);
            self.announce_if_due(mac, port, now_ms);
        }
    }

    /// Forgets every learned address (the operator's `fdb flush`); returns how many.
    pub fn flush_fdb(&mut self) -> usize {
        self.reannounce.clear();
        let removed = self.fdb.clear();
        self.entries_changed += removed as u64;
        removed
    }

    /// The ports floods go to (ports come and go while the switch runs).
    pub fn set_flood_domain(&mut self, ports: PortMask) {
        self.flood_domain = ports;
    }

    pub fn counters(&self) -> &L2Counters {
        &self.counters
    }

    /// Decides every frame of a batch received on `ingress`.
    pub fn process<B: AsRef<[u8]>>(
        &mut self,
        frames: &[B],
        ingress: PortId,
        now_ms: u64,
        next: &mut [Disposition],
    ) {
        debug_assert!(next.len() >= frames.len());
        for (frame, slot) in frames.iter().zip(next.iter_mut()) {
            *slot = self.decide(frame.as_ref(), ingress, now_ms);
        }
        self.counters.add(L2Counter::RxFrames, frames.len() as u64);
    }

    /// Learns a frame's source without forwarding it: a pod's frame to the gateway's MAC, which
    /// the kernel's bridge also learns from before it hands the frame to its own stack.
    pub fn learn_from(&mut self, bytes: &[u8], ingress: PortId, now_ms: u64) {
        if bytes.len() < 12 {
            return;
        }
        let src = MacAddr::from_bytes(&bytes[6..12]);
        if !src.is_multicast() && !src.is_zero() {
            self.learn(src, ingress, now_ms);
        }
    }

    /// Decides one frame (counted in `rx_frames` by `process`, not here).
    #[inline]
    pub fn decide(&mut self, bytes: &[u8], ingress: PortId, now_ms: u64) -> Disposition {
        let Ok(frame) = EthernetFrame::new_checked(bytes) else {
            self.counters.add(L2Counter::DropRunt, 1);
            return Disposition::Drop;
        };
        if !self.security.allows(ingress, bytes) {
            self.counters.add(L2Counter::DropSpoofed, 1);
            return Disposition::Drop;
        }
        let src = frame.src_addr();
        if src.is_multicast() {
            self.counters.add(L2Counter::DropSourceMulticast, 1);
            return Disposition::Drop;
        }
        if src.is_zero() {
            self.counters.add(L2Counter::DropSourceZero, 1);
            return Disposition::Drop;
        }
        self.learn(src, ingress, now_ms);

        let dst = frame.dst_addr();
        if dst.is_multicast() {
            let counter = if dst.is_broadcast() {
                L2Counter::FloodBroadcast
            } else {
                L2Counter::FloodMulticast
            };
            self.counters.add(counter, 1);
            return self.flood(ingress);
        }
        match self.fdb.lookup(dst, now_ms) {
            Some(port) if port == ingress => {
                self.counters.add(L2Counter::FilteredSamePort, 1);
                Disposition::Drop
            }
            Some(port) if !self.flood_domain.contains(port) => {
                // Learned outside this bridge's ports (a stale entry after a reconfiguration).
                self.counters.add(L2Counter::FloodUnknown, 1);
                self.flood(ingress)
            }
            Some(port) => {
                self.counters.add(L2Counter::Forwarded, 1);
                Disposition::Forward(port)
            }
            None => {
                self.counters.add(L2Counter::FloodUnknown, 1);
                self.flood(ingress)
            }
        }
    }

    #[inline]
    fn flood(&self, ingress: PortId) -> Disposition {
        Disposition::Flood(self.flood_domain.without(ingress))
    }

    #[inline]
    fn learn(&mut self, src: MacAddr, ingress: PortId, now_ms: u64) {
        match self.fdb.learn(src, ingress, now_ms) {
            LearnOutcome::Refreshed => {}
            LearnOutcome::New => self.counters.add(L2Counter::Learned, 1),
            LearnOutcome::Moved { .. } => {
                self.counters.add(L2Counter::Moved, 1);
                self.entries_changed += 1;
            }
            LearnOutcome::TableFull => {
                self.counters.add(L2Counter::LearnTableFull, 1);
                return;
            }
            LearnOutcome::PortLimit => {
                self.counters.add(L2Counter::LearnPortLimit, 1);
                return;
            }
            LearnOutcome::ForgottenAtPortLimit { .. } => {
                self.counters.add(L2Counter::LearnPortLimit, 1);
                self.entries_changed += 1;
                return;
            }
        }
        self.announce_if_due(src, ingress, now_ms);
    }

    #[inline]
    fn announce_if_due(&mut self, mac: MacAddr, port: PortId, now_ms: u64) {
        if self.announce_learning
            && self
                .fdb
                .announce_due(mac, now_ms, self.announce_interval_ms)
        {
            self.events.push(LearnEvent { mac, port });
        }
    }

    /// Periodic work: forget expired entries.
    pub fn housekeeping(&mut self, now_ms: u64) {
        let aged = self.fdb.age(now_ms);
        self.counters.add(L2Counter::Aged, aged as u64);
        self.entries_changed += aged as u64;
    }

    /// Learn events since the last call, for the other workers.
    pub fn take_learn_events(&mut self) -> std::vec::Drain<'_, LearnEvent> {
        self.events.drain(..)
    }

    /// Applies an event announced by another worker.
    /// A move counts as a change here too (not in `moved`, which the worker that saw the
    /// frame counts).
    pub fn apply_learn_event(&mut self, event: LearnEvent, now_ms: u64) {
        match self.fdb.apply(event, now_ms) {
            LearnOutcome::TableFull => self.counters.add(L2Counter::LearnTableFull, 1),
            LearnOutcome::PortLimit => self.counters.add(L2Counter::LearnPortLimit, 1),
            LearnOutcome::ForgottenAtPortLimit { .. } => {
                self.counters.add(L2Counter::LearnPortLimit, 1);
                self.entries_changed += 1;
            }
            LearnOutcome::Moved { .. } => self.entries_changed += 1,
            LearnOutcome::Refreshed | LearnOutcome::New => {}
        }
    }

    /// Starts announcing the whole table again, for peers that lost announcements (their
    /// channel was full). Entries are marked unannounced, so traffic announces them at once,
    /// and the rest go out through `reannounce_step`, a bounded chunk at a time, so the
    /// resynchronisation cannot overflow the channel it repairs. Restarts one in progress.
    pub fn reannounce_all(&mut self) {
        if self.announce_learning {
            self.reannounce = self.fdb.reannounce_all();
        }
    }

    /// Queues announcements for up to `max` entries of a resynchronisation in progress (to be
    /// taken with `take_learn_events`); returns how many. Entries gone or expired meanwhile
    /// are skipped.
    pub fn reannounce_step(&mut self, now_ms: u64, max: usize) -> usize {
        let mut queued = 0;
        while queued < max {
            let Some(mac) = self.reannounce.pop() else {
                break;
            };
            if let Some(port) = self.fdb.take_for_announcement(mac, now_ms) {
                self.events.push(LearnEvent { mac, port });
                queued += 1;
            }
        }
        queued
    }

    /// Entries a resynchronisation still has to announce.
    pub fn reannounce_pending(&self) -> usize {
        self.reannounce.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::MacAddr;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x02, 0, 0, 0, 0, n])
    }

    fn flood_from(ingress: PortId) -> Disposition {
        Disposition::Flood(PortMask::ALL.without(ingress))
    }

    fn frame(dst: MacAddr, src: MacAddr) -> Vec<u8> {
        let mut bytes = Vec::new();
        etherparse::PacketBuilder::ethernet2(src.0, dst.0)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1000, 2000)
            .write(&mut bytes, b"hello")
            .unwrap();
        bytes
    }

    fn run(bridge: &mut Bridge, frames: &[Vec<u8>], ingress: PortId, now: u64) -> Vec<Disposition> {
        let mut next = vec![Disposition::Drop; frames.len()];
        bridge.process(frames, ingress, now, &mut next);
        next
    }

    #[test]
    fn unknown_unicast_floods_then_learned_destination_forwards() {
        let mut b = Bridge::new(&BridgeConfig::default());
        assert_eq!(run(&mut b, &[frame(mac(2), mac(1))], 0, 0), [flood_from(0)]);
        assert_eq!(b.counters().get(L2Counter::FloodUnknown), 1);
        assert_eq!(
            run(&mut b, &[frame(mac(1), mac(2))], 1, 1),
            [Disposition::Forward(0)]
        );
        assert_eq!(
            run(&mut b, &[frame(mac(2), mac(1))], 0, 2),
            [Disposition::Forward(1)]
        );
        assert_eq!(b.counters().get(L2Counter::Learned), 2);
        assert_eq!(b.counters().get(L2Counter::Forwarded), 2);
        assert_eq!(b.counters().get(L2Counter::RxFrames), 3);
    }

    #[test]
    fn broadcast_and_multicast_flood() {
        let mut b = Bridge::new(&BridgeConfig::default());
        b.fdb.learn(mac(9), 3, 0);
        let group: MacAddr = "01:00:5e:00:00:fb".parse().unwrap();
        let next = run(
            &mut b,
            &[frame(MacAddr::BROADCAST, mac(1)), frame(group, mac(1))],
            0,
            0,
        );
        assert_eq!(next, [flood_from(0), flood_from(0)]);
        assert_eq!(b.counters().get(L2Counter::FloodBroadcast), 1);
        assert_eq!(b.counters().get(L2Counter::FloodMulticast), 1);
    }

    #[test]
    fn never_back_out_of_the_ingress_port() {
        let mut b = Bridge::new(&BridgeConfig::default());
        run(&mut b, &[frame(MacAddr::BROADCAST, mac(2))], 1, 0);
        assert_eq!(
            run(&mut b, &[frame(mac(2), mac(3))], 1, 1),
            [Disposition::Drop]
        );
        assert_eq!(b.counters().get(L2Counter::FilteredSamePort), 1);
    }

    #[test]
    fn mac_move_is_followed() {
        let mut b = Bridge::new(&BridgeConfig::default());
        run(&mut b, &[frame(MacAddr::BROADCAST, mac(5))], 0, 0);
        run(&mut b, &[frame(MacAddr::BROADCAST, mac(5))], 2, 10);
        assert_eq!(b.counters().get(L2Counter::Moved), 1);
        assert_eq!(
            run(&mut b, &[frame(mac(5), mac(6))], 1, 20),
            [Disposition::Forward(2)]
        );
    }

    #[test]
    fn aging_with_an_injected_clock() {
        let config = BridgeConfig {
            fdb_age_ms: 300_000,
            ..Default::default()
        };
        let mut b = Bridge::new(&config);
        run(&mut b, &[frame(MacAddr::BROADCAST, mac(1))], 0, 1_000);
        assert_eq!(
            run(&mut b, &[frame(mac(1), mac(2))], 1, 300_999),
            [Disposition::Forward(0)]
        );
        // 300 s after the last frame from mac(1): forgotten, flooded again.
        assert_eq!(
            run(&mut b, &[frame(mac(1), mac(2))], 1, 301_000),
            [flood_from(1)]
        );
        b.housekeeping(301_000);
        assert_eq!(b.counters().get(L2Counter::Aged), 1);
        assert_eq!(b.fdb().len(), 1, "mac(2) was refreshed and stays");
    }

    #[test]
    fn capacity_overflow_floods_and_counts() {
        let config = BridgeConfig {
            fdb_capacity: 2,
            ..Default::default()
        };
        let mut b = Bridge::new(&config);
        let frames: Vec<_> = (1..=3).map(|n| frame(MacAddr::BROADCAST, mac(n))).collect();
        run(&mut b, &frames, 0, 0);
        assert_eq!(b.counters().get(L2Counter::Learned), 2);
        assert_eq!(b.counters().get(L2Counter::LearnTableFull), 1);
        // mac(3) was never learned, so traffic to it floods.
        assert_eq!(run(&mut b, &[frame(mac(3), mac(1))], 1, 1), [flood_from(1)]);
    }

    #[test]
    fn malformed_frames_are_dropped_by_reason() {
        let mut b = Bridge::new(&BridgeConfig::default());
        let runt = vec![0u8; 13];
        let src_multicast = frame(mac(1), MacAddr::BROADCAST);
        let src_zero = frame(mac(1), MacAddr::ZERO);
        let next = run(&mut b, &[runt, src_multicast, src_zero, Vec::new()], 0, 0);
        assert_eq!(next, [Disposition::Drop; 4]);
        assert_eq!(b.counters().get(L2Counter::DropRunt), 2);
        assert_eq!(b.counters().get(L2Counter::DropSourceMulticast), 1);
        assert_eq!(b.counters().get(L2Counter::DropSourceZero), 1);
        assert!(b.fdb().is_empty());
    }

    #[test]
    fn learn_events_keep_two_workers_consistent() {
        let config = BridgeConfig {
            announce_learning: true,
            ..Default::default()
        };
        let mut w0 = Bridge::new(&config);
        let mut w1 = Bridge::new(&config);
        run(&mut w0, &[frame(MacAddr::BROADCAST, mac(1))], 0, 0);
        let events: Vec<_> = w0.take_learn_events().collect();
        assert_eq!(
            events,
            [LearnEvent {
                mac: mac(1),
                port: 0
            }]
        );
        for e in events {
            w1.apply_learn_event(e, 0);
        }
        assert_eq!(
            run(&mut w1, &[frame(mac(1), mac(2))], 1, 1),
            [Disposition::Forward(0)]
        );
        // A refresh inside the interval is not announced again.
        run(&mut w0, &[frame(MacAddr::BROADCAST, mac(1))], 0, 10);
        assert_eq!(w0.take_learn_events().count(), 0);
    }

    #[test]
    fn port_limit_floods_to_unlearned_addresses_and_counts() {
        let config = BridgeConfig {
            fdb_port_limit: 2,
            ..Default::default()
        };
        let mut b = Bridge::new(&config);
        let frames: Vec<_> = (1..=3).map(|n| frame(MacAddr::BROADCAST, mac(n))).collect();
        run(&mut b, &frames, 0, 0);
        assert_eq!(b.counters().get(L2Counter::Learned), 2);
        assert_eq!(b.counters().get(L2Counter::LearnPortLimit), 1);
        assert_eq!(b.counters().get(L2Counter::LearnTableFull), 0);
        // mac(3) was not learned: frames to it flood. Another port still learns.
        assert_eq!(run(&mut b, &[frame(mac(3), mac(9))], 1, 1), [flood_from(1)]);
        assert_eq!(
            run(&mut b, &[frame(mac(9), mac(1))], 0, 2),
            [Disposition::Forward(1)]
        );
    }

    /// The fast path keeps a source alive by `refresh` (the worker never sees its frames):
    /// the other workers' copies must hear of it as they would of a frame, or they age it
    /// out and flood to it.
    #[test]
    fn a_refreshed_source_is_announced_when_its_announcement_is_due() {
        let config = BridgeConfig {
            announce_learning: true,
            fdb_age_ms: 4_000,
            ..Default::default()
        };
        let mut w0 = Bridge::new(&config);
        let mut w1 = Bridge::new(&config);
        run(&mut w0, &[frame(MacAddr::BROADCAST, mac(1))], 0, 0);
        for e in w0.take_learn_events().collect::<Vec<_>>() {
            w1.apply_learn_event(e, 0);
        }
        // Within the announcement interval (a quarter of the age): nothing to say.
        w0.refresh(mac(1), 0, 500);
        assert_eq!(w0.take_learn_events().count(), 0);
        // Past it, on every refresh the fast path's counters cause, as a frame would.
        for now in [1_001, 2_001, 3_001, 4_001, 5_001] {
            w0.refresh(mac(1), 0, now);
            let events: Vec<_> = w0.take_learn_events().collect();
            assert_eq!(events.len(), 1, "at {now}");
            for e in events {
                w1.apply_learn_event(e, now);
            }
        }
        // Long past the first learning, w1 still forwards to it.
        assert_eq!(
            run(&mut w1, &[frame(mac(1), mac(2))], 1, 5_500),
            [Disposition::Forward(0)]
        );
        // A refresh from another port is no move, and says nothing.
        w0.refresh(mac(1), 3, 9_000);
        assert_eq!(w0.take_learn_events().count(), 0);
    }

    /// A worker's fast-path entries follow its own copy of the table, which also changes by
    /// other workers' announcements: those changes must move `fdb_changes` too.
    #[test]
    fn entries_moved_or_forgotten_by_a_peer_s_announcement_count_as_changes() {
        let config = BridgeConfig {
            announce_learning: true,
            fdb_port_limit: 1,
            ..Default::default()
        };
        let mut b = Bridge::new(&config);
        let at = |mac, port| LearnEvent { mac, port };
        b.apply_learn_event(at(mac(1), 0), 0);
        b.apply_learn_event(at(mac(2), 2), 0);
        assert_eq!(b.fdb_changes(), 0, "new entries change no decision taken");
        b.apply_learn_event(at(mac(1), 0), 1);
        assert_eq!(b.fdb_changes(), 0, "a refresh neither");
        b.apply_learn_event(at(mac(1), 1), 2);
        assert_eq!(b.fdb_changes(), 1, "moved");
        // Port 2 holds its one address: mac(1) moving there is forgotten, a change too.
        b.apply_learn_event(at(mac(1), 2), 3);
        assert_eq!(b.fdb_changes(), 2, "forgotten at the port limit");
        assert_eq!(run(&mut b, &[frame(mac(1), mac(3))], 0, 4), [flood_from(0)]);
        // And by this worker's own frames, aging and flushing.
        run(&mut b, &[frame(MacAddr::BROADCAST, mac(2))], 1, 5);
        assert_eq!(b.fdb_changes(), 3, "mac(2) moved from 2 to 1");
        b.housekeeping(10_000_000);
        assert_eq!(b.fdb_changes(), 5, "mac(2) and mac(3) aged");
    }

    #[test]
    fn a_worker_that_lost_announcements_resynchronises_in_bounded_chunks() {
        let config = BridgeConfig {
            announce_learning: true,
            ..Default::default()
        };
        let mut w0 = Bridge::new(&config);
        let mut w1 = Bridge::new(&config);
        let frames: Vec<_> = (1..=10)
            .map(|n| frame(MacAddr::BROADCAST, mac(n)))
            .collect();
        run(&mut w0, &frames, 0, 0);
        // The channel was full: every announcement was lost, w1 knows nothing.
        assert_eq!(w0.take_learn_events().count(), 10);
        assert_eq!(
            run(&mut w1, &[frame(mac(5), mac(20))], 1, 1),
            [flood_from(1)]
        );

        w0.reannounce_all();
        assert_eq!(w0.reannounce_pending(), 10);
        let mut chunks = Vec::new();
        while w0.reannounce_pending() > 0 {
            let n = w0.reannounce_step(2, 4);
            let events: Vec<_> = w0.take_learn_events().collect();
            assert_eq!(events.len(), n);
            chunks.push(n);
            for e in events {
                w1.apply_learn_event(e, 2);
            }
        }
        assert_eq!(chunks, [4, 4, 2], "at most 4 per step");
        for n in 1..=10 {
            assert_eq!(
                run(&mut w1, &[frame(mac(n), mac(20))], 1, 3),
                [Disposition::Forward(0)],
                "mac({n})"
            );
        }
        assert_eq!(w0.reannounce_step(3, 4), 0, "done");
    }

    #[test]
    fn a_resynchronisation_skips_forgotten_entries_and_marks_the_rest_unannounced() {
        let config = BridgeConfig {
            announce_learning: true,
            fdb_age_ms: 1000,
            ..Default::default()
        };
        let mut b = Bridge::new(&config);
        run(&mut b, &[frame(MacAddr::BROADCAST, mac(1))], 0, 0);
        run(&mut b, &[frame(MacAddr::BROADCAST, mac(2))], 0, 600);
        b.take_learn_events().for_each(drop);
        b.reannounce_all();
        // The next frame from a known source is announced at once, inside the interval.
        run(&mut b, &[frame(MacAddr::BROADCAST, mac(2))], 0, 700);
        assert_eq!(b.take_learn_events().count(), 1);
        // mac(1) expired meanwhile and is skipped; mac(2) is still live and goes out (again:
        // harmless, it is current).
        let n = b.reannounce_step(1100, 100);
        let events: Vec<_> = b.take_learn_events().collect();
        assert_eq!(n, 1);
        assert_eq!(
            events,
            [LearnEvent {
                mac: mac(2),
                port: 0
            }]
        );
    }

    #[test]
    fn a_bound_port_sending_from_another_mac_is_dropped_and_forgotten_ports_are() {
        let config = BridgeConfig {
            bindings: vec![(
                1,
                PortBinding {
                    mac: mac(1),
                    ip: None,
                },
            )],
            ..Default::default()
        };
        let mut b = Bridge::new(&config);
        assert_eq!(
            run(&mut b, &[frame(MacAddr::BROADCAST, mac(9))], 1, 0),
            [Disposition::Drop]
        );
        assert_eq!(b.counters().get(L2Counter::DropSpoofed), 1);
        assert!(
            b.fdb().lookup(mac(9), 0).is_none(),
            "a spoofed source is not learned"
        );
        assert_eq!(
            run(&mut b, &[frame(MacAddr::BROADCAST, mac(1))], 1, 0),
            [flood_from(1)]
        );
        // Another (unbound) port cannot take the bound MAC: its traffic would go there.
        assert_eq!(
            run(&mut b, &[frame(MacAddr::BROADCAST, mac(1))], 2, 0),
            [Disposition::Drop]
        );
        assert_eq!(b.counters().get(L2Counter::DropSpoofed), 2);
        assert_eq!(b.fdb().lookup(mac(1), 0), Some(1));
        run(&mut b, &[frame(MacAddr::BROADCAST, mac(2))], 2, 0);
        assert_eq!(b.forget_port(1), 1);
        assert!(b.fdb().lookup(mac(1), 1).is_none());
        assert_eq!(b.fdb().lookup(mac(2), 1), Some(2));
        assert!(b.security().get(1).is_none());
    }
}
