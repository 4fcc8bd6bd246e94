//! The poll-mode worker: poll every rx queue, run the pipeline on each burst, carry out the
//! dispositions, flush tx, reap completions, refill; housekeeping once a second; an idle policy.
//!
//! Ownership: the worker thread owns its UMEM, pool, sockets and bridge outright. It talks to the
//! other workers only through bounded channels (frames handed off for ports it has no queue on,
//! learned MAC addresses), and to the control thread through `WorkerStats` and the stop flag.

use crate::netdev::cycles;
use crate::socket::PortSocket;
use crate::stats::{PortCounter, WorkerCounter, WorkerStats};
use crate::umem::{Frame, FrameBuf, FramePool, Umem, MAX_FRAME_LEN};
use arrayvec::ArrayVec;
use crossbeam_channel::{Receiver, Sender};
use pipeline::{Disposition, Emit, LearnEvent, Pipeline, PortId, PortMask, MAX_BATCH};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the worker does when there is no traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    /// Spin on the rings all the time: lowest latency, one core always at 100%.
    Busy,
    /// After a run of empty passes, wait on the sockets (up to a millisecond at a time) and
    /// return to spinning as soon as a frame arrives: leaves the core to the kernel's veth and
    /// TCP work when idle.
    Adaptive,
}

impl std::str::FromStr for PollMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "busy" => Ok(PollMode::Busy),
            "adaptive" => Ok(PollMode::Adaptive),
            other => Err(format!(
                "unknown poll mode {other:?} (expected busy or adaptive)"
            )),
        }
    }
}

/// Empty passes before an adaptive worker starts waiting.
const EMPTY_PASSES_BEFORE_WAIT: u32 = 256;
const WAIT_TIMEOUT_MS: i32 = 1;
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
/// Frames kept back from the fill rings for flood copies and handoffs.
const POOL_RESERVE: usize = 4 * MAX_BATCH;
const MAX_HANDOFFS_PER_PASS: usize = 4 * MAX_BATCH;
/// FDB entries re-announced per pass during a resynchronisation: a peer drains its whole
/// learning channel (4,096 slots) every pass, so this cannot fill it on its own.
const REANNOUNCE_PER_PASS: usize = 256;

/// Milliseconds since the workers' shared epoch.
pub fn now_ms(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// A frame copied to the worker that owns the egress port's queue.
pub struct Handoff {
    pub port: PortId,
    pub data: Vec<u8>,
}

/// The frame accounting a worker reports when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerReport {
    pub worker: usize,
    pub frames_total: u32,
    pub frames_free: u32,
    pub frames_in_fill: u32,
    pub frames_in_tx: u32,
    /// Frames the pool refused (of another UMEM, or returned twice): a bug if not zero.
    pub frames_refused: u32,
}

impl WorkerReport {
    /// Every frame is in the pool or lent to a fill ring (reclaimed when the socket closes),
    /// and none was refused by the pool.
    pub fn all_frames_home(&self) -> bool {
        self.frames_in_tx == 0
            && self.frames_refused == 0
            && self.frames_free + self.frames_in_fill == self.frames_total
    }
}

/// Where a port's frames go from this worker.
pub enum Egress {
    /// Through this worker's own socket (index into `sockets`).
    Local(usize),
    /// Copied to the worker owning the port's queue.
    Remote(Sender<Handoff>),
}

pub struct WorkerSetup {
    pub id: usize,
    pub core: Option<usize>,
    pub poll: PollMode,
    /// Drive the receive queues' NAPI from the worker (preferred busy polling).
    pub busy_poll: bool,
    /// The sockets this worker polls, with the port each belongs to. Declared before `umem`, so
    /// they drop first; each also keeps the UMEM's memory mapped through its binding, so no
    /// field order can unmap it under a live socket.
    pub sockets: Vec<(PortId, PortSocket)>,
    pub umem: Umem,
    pub pool: FramePool,
    /// Indexed by port.
    pub egress: Vec<Egress>,
    pub handoff_in: Receiver<Handoff>,
    pub learn_out: Vec<Sender<LearnEvent>>,
    pub learn_in: Receiver<LearnEvent>,
    pub pipeline: Pipeline,
    /// Ages the tables all workers share (exactly one worker is the leader).
    pub leader: bool,
    pub stats: Arc<WorkerStats>,
    pub stop: Arc<AtomicBool>,
    /// The time base of every worker: `now_ms` is milliseconds since this instant, so the
    /// timestamps workers write into shared tables (conntrack, neighbours) compare.
    pub epoch: Instant,
}

pub struct Worker {
    s: WorkerSetup,
    staged: Vec<Vec<Frame>>,
    rx_batch: Vec<Frame>,
    emitted: Vec<Emit>,
}

impl Worker {
    pub fn new(setup: WorkerSetup) -> Worker {
        let ports = setup.egress.len();
        Worker {
            s: setup,
            staged: (0..ports)
                .map(|_| Vec::with_capacity(2 * MAX_BATCH))
                .collect(),
            rx_batch: Vec::with_capacity(MAX_BATCH),
            emitted: Vec::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        now_ms(self.s.epoch)
    }

    /// Runs until the stop flag is set, then drains and reports.
    pub fn run(mut self) -> WorkerReport {
        if let Some(core) = self.s.core {
            core_affinity::set_for_current(core_affinity::CoreId { id: core });
        }
        for i in 0..self.s.sockets.len() {
            let (_, sock) = &mut self.s.sockets[i];
            sock.refill(&self.s.umem, &mut self.s.pool, POOL_RESERVE);
        }
        let mut empty_passes = 0u32;
        let mut last_housekeeping = Instant::now();
        let mut passes = 0u64;
        while !self.s.stop.load(Ordering::Relaxed) {
            let start = cycles();
            let now_ms = self.now_ms();
            let packets = self.poll_once(now_ms);
            passes += 1;
            let spent = cycles().wrapping_sub(start);
            let w = &self.s.stats.worker;
            if packets > 0 {
                w.add(WorkerCounter::BusyCycles as usize, spent);
                w.add(WorkerCounter::Packets as usize, packets as u64);
                empty_passes = 0;
            } else {
                w.add(WorkerCounter::IdleCycles as usize, spent);
                empty_passes = empty_passes.saturating_add(1);
            }
            if passes.is_multiple_of(64) {
                w.add(WorkerCounter::Passes as usize, 64);
                if last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL {
                    last_housekeeping = Instant::now();
                    self.housekeeping(now_ms);
                }
            }
            if self.s.poll == PollMode::Adaptive
                && empty_passes >= EMPTY_PASSES_BEFORE_WAIT
                && self.quiet()
            {
                self.wait_for_traffic();
            }
        }
        self.drain()
    }

    /// One pass over every queue; returns the frames received.
    fn poll_once(&mut self, now_ms: u64) -> usize {
        let mut received = 0;
        for i in 0..self.s.sockets.len() {
            received += self.receive_burst(i, now_ms);
        }
        received += self.accept_handoffs();
        self.exchange_learning(now_ms);
        self.flush();
        let mut kicks = 0;
        for (_, sock) in self.s.sockets.iter_mut() {
            kicks += sock.kick_tx() as u64;
            sock.reap_completions(&self.s.umem, &mut self.s.pool);
            sock.refill(&self.s.umem, &mut self.s.pool, POOL_RESERVE);
        }
        self.s
            .stats
            .worker
            .add(WorkerCounter::TxKicks as usize, kicks);
        received
    }

    fn receive_burst(&mut self, socket: usize, now_ms: u64) -> usize {
        let (ingress, sock) = &mut self.s.sockets[socket];
        let ingress = *ingress;
        self.rx_batch.clear();
        sock.receive(&self.s.umem, MAX_BATCH as u32, &mut self.rx_batch);
        if self.rx_batch.is_empty() && self.s.busy_poll {
            sock.busy_poll();
            sock.receive(&self.s.umem, MAX_BATCH as u32, &mut self.rx_batch);
        }
        let n = self.rx_batch.len();
        if n == 0 {
            return 0;
        }
        let umem = &self.s.umem;
        for frame in &self.rx_batch {
            umem.prefetch(frame);
        }
        let mut next = [Disposition::Drop; MAX_BATCH];
        {
            let bytes: usize = self.rx_batch.iter().map(|f| f.len()).sum();
            let mut views: ArrayVec<FrameBuf<'_>, MAX_BATCH> =
                self.rx_batch.iter_mut().map(|f| umem.buf_mut(f)).collect();
            let counters = &self.s.stats.ports[ingress as usize];
            counters.add(PortCounter::RxPackets as usize, n as u64);
            counters.add(PortCounter::RxBytes as usize, bytes as u64);
            self.s.pipeline.process(
                &mut views,
                ingress,
                now_ms,
                &mut next[..n],
                &mut self.emitted,
            );
        }
        let ports = self.staged.len() as PortId;
        for (frame, disposition) in self.rx_batch.drain(..).zip(next) {
            match disposition {
                Disposition::Forward(port) if port < ports => {
                    self.staged[port as usize].push(frame)
                }
                Disposition::Flood(mask) => flood(
                    umem,
                    &mut self.s.pool,
                    &mut self.staged,
                    &self.s.stats,
                    mask.without(ingress),
                    frame,
                ),
                Disposition::Consumed => self.s.pool.put(frame),
                Disposition::Forward(_) | Disposition::Drop | Disposition::Recirculate => {
                    self.s.stats.ports[ingress as usize].add(PortCounter::DropPipeline as usize, 1);
                    self.s.pool.put(frame);
                }
            }
        }
        self.stage_emitted();
        n
    }

    /// Frames the pipeline made: each copied into a frame of ours for every port it goes to.
    fn stage_emitted(&mut self) {
        let ports = self.staged.len();
        for e in self.emitted.drain(..) {
            if e.frame.len() > MAX_FRAME_LEN as usize {
                for port in e.to.ports(ports) {
                    self.s.stats.ports[port as usize]
                        .add(PortCounter::DropEmitTooLarge as usize, 1);
                }
                continue;
            }
            for port in e.to.ports(ports) {
                match self.s.pool.alloc() {
                    Some(mut frame) => {
                        frame.set_len(e.frame.len());
                        self.s.umem.data_mut(&mut frame).copy_from_slice(&e.frame);
                        self.staged[port as usize].push(frame);
                    }
                    None => {
                        self.s.stats.ports[port as usize].add(PortCounter::DropNoFrame as usize, 1)
                    }
                }
            }
        }
    }

    /// Frames other workers copied to us for ports whose queue we own.
    fn accept_handoffs(&mut self) -> usize {
        let mut n = 0;
        while n < MAX_HANDOFFS_PER_PASS {
            let Ok(handoff) = self.s.handoff_in.try_recv() else {
                break;
            };
            n += 1;
            let port = handoff.port as usize;
            if port >= self.staged.len() {
                self.s
                    .stats
                    .worker
                    .add(WorkerCounter::HandoffsBadPort as usize, 1);
                continue;
            }
            if handoff.data.len() > MAX_FRAME_LEN as usize {
                self.s.stats.ports[port].add(PortCounter::DropHandoffTooLarge as usize, 1);
                continue;
            }
            match self.s.pool.alloc() {
                Some(mut frame) => {
                    frame.set_len(handoff.data.len());
                    self.s
                        .umem
                        .data_mut(&mut frame)
                        .copy_from_slice(&handoff.data);
                    self.staged[port].push(frame);
                }
                None => self.s.stats.ports[port].add(PortCounter::DropNoFrame as usize, 1),
            }
        }
        self.s
            .stats
            .worker
            .add(WorkerCounter::HandoffsIn as usize, n as u64);
        n
    }

    fn exchange_learning(&mut self, now_ms: u64) {
        if self.s.learn_out.is_empty() {
            return;
        }
        let mut lost = 0;
        let bridge = self.s.pipeline.bridge_mut();
        // A resynchronisation in progress adds a bounded chunk of the table per pass.
        bridge.reannounce_step(now_ms, REANNOUNCE_PER_PASS);
        for event in bridge.take_learn_events() {
            for peer in &self.s.learn_out {
                if peer.try_send(event).is_err() {
                    lost += 1;
                }
            }
        }
        if lost > 0 {
            // A peer missed some of our entries: announce the whole table again, gradually.
            bridge.reannounce_all();
            self.s
                .stats
                .worker
                .add(WorkerCounter::LearnResyncs as usize, 1);
        }
        while let Ok(event) = self.s.learn_in.try_recv() {
            self.s
                .pipeline
                .bridge_mut()
                .apply_learn_event(event, now_ms);
        }
        self.s
            .stats
            .worker
            .add(WorkerCounter::LearnEventsLost as usize, lost);
    }

    /// Sends every staged frame: by descriptor on our own sockets, by copy to other workers.
    fn flush(&mut self) {
        for port in 0..self.staged.len() {
            if self.staged[port].is_empty() {
                continue;
            }
            let counters = &self.s.stats.ports[port];
            let staged = &mut self.staged[port];
            match &self.s.egress[port] {
                Egress::Local(index) => {
                    let sock = &mut self.s.sockets[*index].1;
                    let bytes: usize = staged.iter().map(|f| f.len()).sum();
                    let sent = sock.transmit(&self.s.umem, staged);
                    let unsent_bytes: usize = staged.iter().map(|f| f.len()).sum();
                    counters.add(PortCounter::TxPackets as usize, sent as u64);
                    counters.add(PortCounter::TxBytes as usize, (bytes - unsent_bytes) as u64);
                    counters.add(PortCounter::DropTxRingFull as usize, staged.len() as u64);
                    for frame in staged.drain(..) {
                        self.s.pool.put(frame);
                    }
                }
                Egress::Remote(owner) => {
                    let mut handed = 0;
                    for frame in staged.drain(..) {
                        let data = self.s.umem.data(&frame).to_vec();
                        self.s.pool.put(frame);
                        match owner.try_send(Handoff {
                            port: port as PortId,
                            data,
                        }) {
                            Ok(()) => handed += 1,
                            Err(_) => counters.add(PortCounter::DropHandoffFull as usize, 1),
                        }
                    }
                    self.s
                        .stats
                        .worker
                        .add(WorkerCounter::HandoffsOut as usize, handed);
                }
            }
        }
    }

    /// Nothing queued anywhere: safe to wait.
    fn quiet(&self) -> bool {
        self.s.sockets.iter().all(|(_, s)| s.in_flight_tx() == 0) && self.s.handoff_in.is_empty()
    }

    fn wait_for_traffic(&mut self) {
        let mut fds: ArrayVec<libc::pollfd, 64> = ArrayVec::new();
        for (_, sock) in self.s.sockets.iter().take(64) {
            fds.push(libc::pollfd {
                fd: sock.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // Time spent waiting is neither busy nor idle polling, so it is not counted as cycles.
        crate::netdev::poll_fds(&mut fds, WAIT_TIMEOUT_MS);
        self.s.stats.worker.add(WorkerCounter::Sleeps as usize, 1);
    }

    fn housekeeping(&mut self, now_ms: u64) {
        self.s
            .pipeline
            .housekeeping(now_ms, self.s.leader, &mut self.emitted);
        self.stage_emitted();
        self.publish();
    }

    fn publish(&self) {
        let stats = &self.s.stats;
        let bridge = self.s.pipeline.bridge();
        for (counter, value) in bridge.counters().iter() {
            stats.l2.set(counter as usize, value);
        }
        stats
            .fdb_entries
            .store(bridge.fdb().len() as u64, Ordering::Relaxed);
        if let Some(gw) = self.s.pipeline.gateway() {
            for (counter, value) in gw.counters().iter() {
                stats.gateway.set(counter as usize, value);
            }
            if self.s.leader {
                stats
                    .conntrack_entries
                    .store(gw.shared().conntrack.len() as u64, Ordering::Relaxed);
            }
        }
        for (port, sock) in &self.s.sockets {
            if let Ok(k) = sock.kernel_stats() {
                let c = &stats.ports[*port as usize];
                c.set(PortCounter::KernelRxDropped as usize, k.rx_dropped);
                c.set(PortCounter::KernelRxRingFull as usize, k.rx_ring_full);
                c.set(
                    PortCounter::KernelFillRingEmpty as usize,
                    k.rx_fill_ring_empty,
                );
                c.set(PortCounter::KernelTxInvalid as usize, k.tx_invalid_descs);
            }
        }
        let report = self.report();
        let w = &stats.worker;
        w.set(
            WorkerCounter::FramesRefused as usize,
            report.frames_refused as u64,
        );
        w.set(
            WorkerCounter::FramesTotal as usize,
            report.frames_total as u64,
        );
        w.set(
            WorkerCounter::FramesFree as usize,
            report.frames_free as u64,
        );
        w.set(
            WorkerCounter::FramesInFill as usize,
            report.frames_in_fill as u64,
        );
        w.set(
            WorkerCounter::FramesInTx as usize,
            report.frames_in_tx as u64,
        );
    }

    fn report(&self) -> WorkerReport {
        WorkerReport {
            worker: self.s.id,
            frames_total: self.s.pool.total(),
            frames_free: self.s.pool.available() as u32,
            frames_in_fill: self.s.sockets.iter().map(|(_, s)| s.lent_to_fill()).sum(),
            frames_in_tx: self.s.sockets.iter().map(|(_, s)| s.in_flight_tx()).sum(),
            frames_refused: {
                let (foreign, twice) = self.s.pool.refused();
                (foreign + twice) as u32
            },
        }
    }

    /// Stops: sends what is staged, waits for every transmit to complete, takes back what the
    /// rx rings still hold, and reports where every frame is.
    fn drain(mut self) -> WorkerReport {
        self.flush();
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            for (_, sock) in self.s.sockets.iter_mut() {
                sock.kick_tx();
                sock.reap_completions(&self.s.umem, &mut self.s.pool);
            }
            if self.s.sockets.iter().all(|(_, s)| s.in_flight_tx() == 0)
                || Instant::now() >= deadline
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        for (_, sock) in self.s.sockets.iter_mut() {
            let mut frames = Vec::new();
            while sock.receive(&self.s.umem, MAX_BATCH as u32, &mut frames) > 0 {}
            for frame in frames {
                self.s.pool.put(frame);
            }
        }
        self.publish();
        self.report()
    }
}

/// Sends a flooded frame out of every port in `to`: copies for all but the last port, the
/// original frame for the last.
fn flood(
    umem: &Umem,
    pool: &mut FramePool,
    staged: &mut [Vec<Frame>],
    stats: &WorkerStats,
    to: PortMask,
    frame: Frame,
) {
    let targets = to.ports(staged.len());
    let mut last = None;
    for port in targets {
        if let Some(prev) = last.replace(port) {
            match pool.alloc() {
                Some(mut copy) => {
                    copy.set_len(frame.len());
                    umem.data_mut(&mut copy).copy_from_slice(umem.data(&frame));
                    staged[prev as usize].push(copy);
                }
                None => stats.ports[prev as usize].add(PortCounter::DropNoFrame as usize, 1),
            }
        }
    }
    match last {
        Some(port) => staged[port as usize].push(frame),
        None => pool.put(frame),
    }
}
