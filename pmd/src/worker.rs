//! The poll-mode worker: poll every rx queue, run the pipeline on each burst, carry out the
//! dispositions, flush tx, reap completions, refill; housekeeping once a second; an idle policy.
//!
//! Ownership: the worker thread owns its UMEM, pool, sockets and bridge outright. It talks to the
//! other workers only through bounded channels (frames handed off for ports it has no queue on,
//! learned MAC addresses), and to the control thread through `WorkerStats`, the stop flag and
//! its command channel, which it reads at one point of its loop (before each pass): ports come
//! and go, and tables are read or changed, between passes, never under a lock on the packet
//! path.

use crate::core_share::CoreWatch;
use crate::datapath::sockets_per_segment;
use crate::fastpath::{FastPath, FlowTable};
use crate::flowcache::FlowCache;
use crate::netdev::cycles;
use crate::socket::PortSocket;
use crate::stats::{PortCounter, WorkerCounter, WorkerStats};
use crate::tuplecache::{Ports, TupleCache};
use crate::umem::{
    Frame, FrameBuf, FramePool, Segment, Umem, KERNEL_HEADROOM, L2_OVERHEAD, MAX_FRAME_LEN,
    MAX_PACKET_LEN,
};
use arrayvec::ArrayVec;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use pipeline::packet::HeadroomBuf;
use pipeline::{Disposition, Emit, LearnEvent, Pipeline, PortId, PortMask, MAX_BATCH, MAX_PORTS};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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
/// How often a change of the FDB may re-check the bridge's fast-path flows.
const FDB_REVALIDATE_MS: u64 = 5;
/// How long a removed port's socket may take to get its transmitted frames back.
const RETIRE_DEADLINE: Duration = Duration::from_millis(500);
/// FDB entries re-announced per pass during a resynchronisation: a peer drains its whole
/// learning channel (4,096 slots) every pass, so this cannot fill it on its own.
const REANNOUNCE_PER_PASS: usize = 256;

/// Counts a stretch of `us` microseconds of the worker's own work in `over_20us` and
/// `over_100us`: how often frames waited that long behind it.
fn count_long(
    w: &crate::stats::AtomicCounters<{ WorkerCounter::COUNT }>,
    us: u64,
    (over_20us, over_100us): (WorkerCounter, WorkerCounter),
) {
    if us > 20 {
        w.add(over_20us as usize, 1);
    }
    if us > 100 {
        w.add(over_100us as usize, 1);
    }
}

/// Milliseconds since the workers' shared epoch.
fn micros(d: std::time::Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

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
    /// Not attached (never was, or removed).
    Absent,
    /// Through this worker's own socket (index into its sockets).
    Local(usize),
    /// Copied to the worker owning the port's queue.
    Remote(Sender<Handoff>),
}

/// A frame seen on a captured port, as it arrived or as it left.
pub struct Captured {
    pub port: PortId,
    pub time: SystemTime,
    pub data: Vec<u8>,
}

/// Copies of a port's frames, both directions, sent (never waited on) to `to`. A port may
/// have several.
pub struct Capture {
    pub port: PortId,
    pub to: Sender<Captured>,
    pub state: Arc<CaptureState>,
}

/// What a capture's workers and its writer share.
#[derive(Debug, Default)]
pub struct CaptureState {
    /// Frames that found the capture's channel full.
    pub lost: AtomicU64,
    /// Set by the writer when it stops: a worker that never captures for the port (it polls
    /// none of its queues) would not otherwise learn it, and would keep the port off the
    /// fast path.
    pub ended: AtomicBool,
}

/// Code the control thread runs against a worker's pipeline, between two passes.
pub type PipelineJob = Box<dyn FnOnce(&mut Pipeline, u64) + Send>;

/// What the control thread asks of a worker; each carries a bounded channel for the answer,
/// which the worker never waits on.
pub enum Command {
    /// A port now exists: its queues this worker owns (maybe none), or the owner to hand its
    /// frames to.
    AddPort {
        port: PortId,
        ifindex: u32,
        mtu: u32,
        /// A new frame memory segment, which `sockets` registered.
        segment: Option<Segment>,
        sockets: Vec<PortSocket>,
        remote: Option<Sender<Handoff>>,
        done: Sender<()>,
    },
    /// A port's MTU changed: what it may transmit, and what the pipeline tells senders.
    SetPortMtu {
        port: PortId,
        mtu: u32,
    },
    /// The ports of that segment are gone: unmap it once every frame of it is home.
    DropSegment {
        id: u32,
    },
    /// Stop using a port (its program is already detached). Its sockets come back on `done`
    /// once their transmitted frames are home (or after a deadline), to be closed.
    DelPort {
        port: PortId,
        done: Sender<Vec<PortSocket>>,
    },
    /// Those sockets are closed: the frames still lent through them are ours again.
    Reclaim {
        tags: Vec<u32>,
        done: Sender<usize>,
    },
    Pipeline(PipelineJob),
    /// Start copying a port's frames (replaces an earlier capture of the same port).
    Capture(Capture),
    /// Publish the counters now, for a reader who wants them fresh; changes nothing, so the
    /// installed flows are not validated for it.
    Publish {
        done: Sender<()>,
    },
}

struct Retiring {
    sockets: Vec<PortSocket>,
    deadline: Instant,
    done: Sender<Vec<PortSocket>>,
}

pub struct WorkerSetup {
    pub id: usize,
    pub core: Option<usize>,
    pub poll: PollMode,
    /// Drive the receive queues' NAPI from the worker (preferred busy polling).
    pub busy_poll: bool,
    pub umem: Umem,
    pub pool: FramePool,
    pub handoff_in: Receiver<Handoff>,
    pub learn_out: Vec<Sender<LearnEvent>>,
    pub learn_in: Receiver<LearnEvent>,
    pub commands: Receiver<Command>,
    pub pipeline: Pipeline,
    /// Ages the tables all workers share (exactly one worker is the leader).
    pub leader: bool,
    pub stats: Arc<WorkerStats>,
    pub stop: Arc<AtomicBool>,
    /// The XDP fast path's maps, when it is on.
    pub fast: Option<Arc<FastPath>>,
    /// The time base of every worker: `now_ms` is milliseconds since this instant, so the
    /// timestamps workers write into shared tables (conntrack, neighbours) compare.
    pub epoch: Instant,
}

pub struct Worker {
    // The sockets drop before `s` (which holds the UMEM); each also keeps the UMEM's memory
    // mapped through its handle, so no field order can unmap it under a live socket.
    /// The sockets this worker polls, with the port each belongs to.
    sockets: Vec<(PortId, PortSocket)>,
    retiring: Vec<Retiring>,
    /// Who else ran on its core since it started (read whenever it publishes).
    core_watch: Option<CoreWatch>,
    s: WorkerSetup,
    /// Indexed by port.
    egress: Vec<Egress>,
    present: PortMask,
    staged: Vec<Vec<Frame>>,
    /// Per port: how many of its staged frames, at the head, are the rest of a chain whose
    /// start the transmit ring took last time (captured then, with the whole chain).
    staged_tail: Vec<usize>,
    /// Per port: the segment its frames leave from (its socket's; the first for others).
    segment: Vec<u32>,
    /// Segments to unmap once their frames are home.
    dropping: Vec<u32>,
    /// The fast path's flows this worker installed: the bridge's (by MACs) or the gateway's
    /// (by 5-tuple, with rewrites).
    flows: Option<FlowCache>,
    tuples: Option<TupleCache>,
    /// Per port: its interface index (0: absent).
    ifindex: Vec<u32>,
    /// The bridge's `fdb_changes` when the flows were last checked against it.
    fdb_changes: u64,
    /// When the bridge's flows were last validated.
    fdb_validated_ms: u64,
    rx_batch: Vec<Frame>,
    /// Per port: the longest frame it takes.
    max_frame: Vec<u32>,
    emitted: Vec<Emit>,
    captures: Vec<Capture>,
    pollfds: Vec<libc::pollfd>,
    /// The cycle counter's rate, measured since the start (0 until the first housekeeping).
    cycles_per_us: u64,
}

impl Worker {
    pub fn new(mut setup: WorkerSetup) -> Worker {
        let fast = setup.fast.clone();
        let flows = fast
            .clone()
            .filter(|f| f.table() == FlowTable::L2 && setup.pipeline.gateway().is_none())
            .map(FlowCache::new);
        let tuples = match (fast, setup.pipeline.gateway_mut()) {
            (Some(f), Some(gateway)) if f.table() == FlowTable::Tuple => {
                gateway.enable_offers();
                Some(TupleCache::new(f, gateway))
            }
            _ => None,
        };
        let first = setup.umem.first_segment();
        Worker {
            sockets: Vec::new(),
            retiring: Vec::new(),
            core_watch: None,
            segment: vec![first; MAX_PORTS],
            dropping: Vec::new(),
            s: setup,
            flows,
            tuples,
            ifindex: vec![0; MAX_PORTS],
            fdb_changes: 0,
            fdb_validated_ms: 0,
            egress: (0..MAX_PORTS).map(|_| Egress::Absent).collect(),
            present: PortMask::NONE,
            staged: (0..MAX_PORTS).map(|_| Vec::new()).collect(),
            staged_tail: vec![0; MAX_PORTS],
            rx_batch: Vec::with_capacity(MAX_BATCH),
            max_frame: vec![MAX_PACKET_LEN; MAX_PORTS],
            emitted: Vec::new(),
            captures: Vec::new(),
            pollfds: Vec::new(),
            cycles_per_us: 0,
        }
    }

    fn now_ms(&self) -> u64 {
        now_ms(self.s.epoch)
    }

    /// Runs until the stop flag is set, then drains and reports.
    pub fn run(mut self) -> WorkerReport {
        if let Some(core) = self.s.core {
            // `start` tried this core already (`can_pin_to`).
            core_affinity::set_for_current(core_affinity::CoreId { id: core });
        }
        self.core_watch = Some(CoreWatch::start(self.s.core));
        let mut empty_passes = 0u32;
        let mut last_housekeeping = Instant::now();
        let mut passes = 0u64;
        let mut last_poll = Instant::now();
        // Microseconds of the last round spent in the worker's own work (pass, housekeeping,
        // commands): a gap mostly not spent there is time the thread did not run. Passes are
        // timed by the cycle counter (a second clock read per pass was a fifth of an idle
        // busy-polling loop), converted at the rate measured since the start.
        let mut working_us = 0u64;
        let calibration = (Instant::now(), cycles());
        while !self.s.stop.load(Ordering::Relaxed) {
            // The one point where the worker's view of ports and tables changes.
            if !self.s.commands.is_empty() {
                let t = Instant::now();
                self.apply_commands();
                working_us += self.longest(WorkerCounter::LongestCommandsUs, t);
            }
            if !self.retiring.is_empty() {
                self.service_retiring();
            }
            // How long the rings went unserved: what a stall costs in drops and latency.
            let polled = Instant::now();
            let gap = micros(polled - last_poll);
            last_poll = polled;
            let w = &self.s.stats.worker;
            w.max(WorkerCounter::LongestGapUs as usize, gap);
            if gap > 1000 {
                w.add(WorkerCounter::GapsOver1ms as usize, 1);
                if working_us * 2 >= gap {
                    w.add(WorkerCounter::GapsOver1msWorking as usize, 1);
                }
            }
            let start = cycles();
            // The same clock reading: one per pass.
            let now_ms = polled.saturating_duration_since(self.s.epoch).as_millis() as u64;
            let packets = self.poll_once(now_ms);
            self.revalidate_tuples(now_ms);
            passes += 1;
            let spent = cycles().wrapping_sub(start);
            working_us = self.cycles_to_us(spent);
            let w = &self.s.stats.worker;
            w.max(WorkerCounter::LongestPassUs as usize, working_us);
            count_long(
                w,
                working_us,
                (
                    WorkerCounter::PassesOver20us,
                    WorkerCounter::PassesOver100us,
                ),
            );
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
                    let since = micros(calibration.0.elapsed());
                    self.cycles_per_us = cycles().wrapping_sub(calibration.1) / since.max(1);
                    self.housekeeping(now_ms);
                    working_us +=
                        self.longest(WorkerCounter::LongestHousekeepingUs, last_housekeeping);
                }
            }
            if self.s.poll == PollMode::Adaptive
                && empty_passes >= EMPTY_PASSES_BEFORE_WAIT
                && self.quiet()
            {
                self.wait_for_traffic();
                // A wait with nothing to serve is no stall.
                last_poll = Instant::now();
                working_us = 0;
            }
        }
        self.drain()
    }

    /// Cycles of the cycle counter in microseconds (0 until its rate is measured).
    fn cycles_to_us(&self, spent: u64) -> u64 {
        spent.checked_div(self.cycles_per_us).unwrap_or(0)
    }

    /// Microseconds since `started`, kept in `counter` if the longest yet.
    fn longest(&self, counter: WorkerCounter, started: Instant) -> u64 {
        let spent = micros(started.elapsed());
        self.s.stats.worker.max(counter as usize, spent);
        spent
    }

    fn set_port_mtu(&mut self, port: PortId, mtu: u32) {
        if let Some(m) = self.max_frame.get_mut(port as usize) {
            // The kernel's rule (is_skb_forwardable): Ethernet header and a VLAN tag.
            *m = mtu + L2_OVERHEAD;
        }
        self.s.pipeline.set_port_mtu(port, mtu);
    }

    fn apply_commands(&mut self) {
        let mut changed = false;
        let mut published = Vec::new();
        while let Ok(command) = self.s.commands.try_recv() {
            changed |= !matches!(command, Command::Publish { .. });
            match command {
                Command::AddPort {
                    port,
                    ifindex,
                    mtu,
                    segment,
                    sockets,
                    remote,
                    done,
                } => {
                    if let Some(segment) = segment {
                        self.s.umem.add_segment(segment, &mut self.s.pool);
                    }
                    if let Some(i) = self.ifindex.get_mut(port as usize) {
                        *i = ifindex;
                    }
                    self.set_port_mtu(port, mtu);
                    self.add_port(port, sockets, remote);
                    let _ = done.try_send(());
                }
                Command::SetPortMtu { port, mtu } => self.set_port_mtu(port, mtu),
                Command::DelPort { port, done } => self.del_port(port, done),
                Command::Reclaim { tags, done } => {
                    let n = tags
                        .iter()
                        .map(|&t| self.s.umem.reclaim(t, &mut self.s.pool))
                        .sum();
                    let _ = done.try_send(n);
                    self.drop_segments();
                }
                Command::DropSegment { id } => {
                    self.dropping.push(id);
                    self.drop_segments();
                }
                Command::Pipeline(job) => {
                    let now_ms = self.now_ms();
                    job(&mut self.s.pipeline, now_ms);
                }
                Command::Capture(c) => self.captures.push(c),
                Command::Publish { done } => published.push(done),
            }
        }
        // Ports, tables or bindings may have changed under the installed flows.
        if changed {
            self.validate_flows(true);
        }
        // Whoever asked reads fresh counters.
        self.publish();
        for done in published {
            let _ = done.try_send(());
        }
    }

    fn add_port(
        &mut self,
        port: PortId,
        sockets: Vec<PortSocket>,
        remote: Option<Sender<Handoff>>,
    ) {
        let p = port as usize;
        if p >= MAX_PORTS {
            return;
        }
        // A new port starts from zero, whatever its slot counted before.
        for c in PortCounter::ALL {
            self.s.stats.ports[p].set(*c as usize, 0);
        }
        self.segment[p] = sockets
            .first()
            .map_or(self.s.umem.first_segment(), PortSocket::segment);
        let first_new = self.sockets.len();
        self.sockets
            .extend(sockets.into_iter().map(|sock| (port, sock)));
        self.egress[p] = match remote {
            Some(owner) => Egress::Remote(owner),
            None => Egress::Absent,
        };
        // Shares first: a socket lends what its share allows.
        self.reindex();
        for (_, sock) in &mut self.sockets[first_new..] {
            sock.refill(&self.s.umem, &mut self.s.pool, POOL_RESERVE);
        }
        if !matches!(self.egress[p], Egress::Absent) {
            self.present = self.present.with(port);
        }
    }

    fn del_port(&mut self, port: PortId, done: Sender<Vec<PortSocket>>) {
        let p = port as usize;
        if p >= MAX_PORTS {
            let _ = done.try_send(Vec::new());
            return;
        }
        self.egress[p] = Egress::Absent;
        self.present = self.present.without(port);
        for frame in self.staged[p].drain(..) {
            self.s.pool.put(frame);
        }
        self.staged_tail[p] = 0;
        self.captures.retain(|c| c.port != port);
        let (gone, keep): (Vec<_>, Vec<_>) = self
            .sockets
            .drain(..)
            .partition(|(owner, _)| *owner == port);
        self.sockets = keep;
        self.reindex();
        self.retiring.push(Retiring {
            sockets: gone.into_iter().map(|(_, s)| s).collect(),
            deadline: Instant::now() + RETIRE_DEADLINE,
            done,
        });
    }

    /// Unmaps the segments asked to go whose frames are all home (else tried again later).
    fn drop_segments(&mut self) {
        let in_use: Vec<u32> = self.all_sockets().map(PortSocket::segment).collect();
        let (umem, pool) = (&mut self.s.umem, &mut self.s.pool);
        self.dropping
            .retain(|id| in_use.contains(id) || !umem.remove_segment(*id, pool));
    }

    /// Each socket's share of its segment (after sockets came or went): what the segment has
    /// beyond the pool's reserve, split evenly.
    fn share_segments(&mut self) {
        let umem = &self.s.umem;
        let counts: Vec<(u32, u32)> = umem
            .segments()
            .map(|(id, _)| {
                let n = self
                    .sockets
                    .iter()
                    .filter(|(_, s)| s.segment() == id)
                    .count();
                (id, n as u32)
            })
            .collect();
        for (_, sock) in self.sockets.iter_mut() {
            let id = sock.segment();
            let n = counts
                .iter()
                .find(|(s, _)| *s == id)
                .map_or(1, |c| c.1.max(1));
            let segment_frames = umem.segment_frames(id);
            let frames = segment_frames.saturating_sub(POOL_RESERVE as u32);
            // What every socket the segment may take can keep lent while quiet.
            let floor = frames / n.max(sockets_per_segment(segment_frames));
            sock.set_fill_share(frames / n, floor);
        }
    }

    /// Points each local port's egress at its first socket (after sockets came or went).
    fn reindex(&mut self) {
        self.share_segments();
        for e in self.egress.iter_mut() {
            if matches!(e, Egress::Local(_)) {
                *e = Egress::Absent;
            }
        }
        for (i, (port, _)) in self.sockets.iter().enumerate() {
            let e = &mut self.egress[*port as usize];
            if !matches!(e, Egress::Local(_)) {
                *e = Egress::Local(i);
            }
        }
    }

    /// Removed ports' sockets: their transmitted frames come home, what they received is put
    /// back; then they go back to be closed.
    fn service_retiring(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.retiring.len() {
            let r = &mut self.retiring[i];
            let mut busy = false;
            for sock in r.sockets.iter_mut() {
                sock.kick_tx();
                sock.reap_completions(&self.s.umem, &mut self.s.pool);
                take_back_received(sock, &self.s.umem, &mut self.s.pool);
                busy |= sock.in_flight_tx() > 0;
            }
            if busy && now < r.deadline {
                i += 1;
                continue;
            }
            let r = self.retiring.swap_remove(i);
            let tags: Vec<u32> = r.sockets.iter().map(|s| s.tag()).collect();
            if let Err(TrySendError::Full(sockets) | TrySendError::Disconnected(sockets)) =
                r.done.try_send(r.sockets)
            {
                // Nobody waits to close them any more: close them here, and take back their
                // frames at once.
                drop(sockets);
                for tag in tags {
                    self.s.umem.reclaim(tag, &mut self.s.pool);
                }
            }
        }
    }

    /// One pass over every queue; returns the frames received.
    fn poll_once(&mut self, now_ms: u64) -> usize {
        let mut received = 0;
        for i in 0..self.sockets.len() {
            received += self.receive_burst(i, now_ms);
        }
        received += self.accept_handoffs();
        self.exchange_learning(now_ms);
        // Lent again before the transmit kicks, the slow part of a pass in copy mode (each
        // frame becomes an skb, and the receiving veth's work runs inside the call): a burst
        // still arriving meanwhile finds frames.
        if received > 0 {
            for (_, sock) in self.sockets.iter_mut() {
                sock.refill(&self.s.umem, &mut self.s.pool, POOL_RESERVE);
            }
        }
        self.transmit_staged();
        for (_, sock) in self.sockets.iter_mut() {
            sock.refill(&self.s.umem, &mut self.s.pool, POOL_RESERVE);
        }
        received
    }

    /// Sends what is queued for every port and takes back the frames the kernel is done with
    /// (in copy mode, all it was given).
    fn transmit_staged(&mut self) {
        self.flush();
        let mut kicks = 0;
        let kicking = cycles();
        for (_, sock) in self.sockets.iter_mut() {
            kicks += sock.kick_tx() as u64;
        }
        if kicks > 0 {
            count_long(
                &self.s.stats.worker,
                self.cycles_to_us(cycles().wrapping_sub(kicking)),
                (WorkerCounter::KicksOver20us, WorkerCounter::KicksOver100us),
            );
        }
        for (_, sock) in self.sockets.iter_mut() {
            sock.reap_completions(&self.s.umem, &mut self.s.pool);
        }
        self.s
            .stats
            .worker
            .add(WorkerCounter::TxKicks as usize, kicks);
    }

    /// Before flooding a frame to `to`: when a target's segment has no frame left for each of
    /// its copies, what is queued goes out first to bring frames back. Quiet ports keep most
    /// of a full segment lent, so a burst of floods would otherwise outgrow the pool's reserve.
    /// Returns false when the segments are still short after sending: frames are lent to fill
    /// rings or still with the kernel (zero copy), and sending again for every later flood
    /// of the burst would cost a system call per port each time without bringing any back.
    fn make_room_to_flood(&mut self, to: PortMask) -> bool {
        if !self.short_of_copies(to) {
            return true;
        }
        self.transmit_for_copies();
        !self.short_of_copies(to)
    }

    /// Sends what is queued early, to bring frames back for copies (counted).
    fn transmit_for_copies(&mut self) {
        self.transmit_staged();
        self.s
            .stats
            .worker
            .add(WorkerCounter::FloodTransmits as usize, 1);
    }

    /// Whether a segment lacks a frame for one of the copies a flood to `to` makes (all its
    /// targets but the last, which takes the frame itself).
    fn short_of_copies(&self, to: PortMask) -> bool {
        let mut last = None;
        // Copies per segment, for the few segments a worker has; with more, every target's
        // segment must have a frame for every copy.
        let mut need: ArrayVec<(u32, usize), 8> = ArrayVec::new();
        let mut copies = 0;
        for port in to.ports(MAX_PORTS) {
            let Some(prev) = last.replace(port) else {
                continue;
            };
            copies += 1;
            let segment = self.segment[prev as usize];
            match need.iter_mut().find(|(s, _)| *s == segment) {
                Some((_, n)) => *n += 1,
                None => {
                    if need.try_push((segment, 1)).is_err() {
                        need.clear();
                        break;
                    }
                }
            }
        }
        let pool = &self.s.pool;
        if need.is_empty() && copies > 0 {
            return to
                .ports(MAX_PORTS)
                .any(|p| pool.available_in(self.segment[p as usize]) < copies);
        }
        need.iter().any(|&(s, n)| pool.available_in(s) < n)
    }

    fn capture(&mut self, port: PortId, frames: &[Frame]) {
        // No copy for a port nobody captures, nor when its captures have no room (counted
        // here then; else each capture counts what it could not take).
        let of_port = || self.captures.iter().filter(|c| c.port == port);
        if of_port().all(|c| c.to.is_full()) {
            for c in of_port() {
                c.state
                    .lost
                    .fetch_add(chains(frames).count() as u64, Ordering::Relaxed);
            }
            return;
        }
        let packets = chains(frames)
            .map(|chain| {
                let mut data = Vec::new();
                for frame in chain {
                    data.extend_from_slice(self.s.umem.data(frame));
                }
                data
            })
            .collect();
        self.capture_packets(port, packets);
    }

    fn capture_packets(&mut self, port: PortId, packets: Vec<Vec<u8>>) {
        let time = SystemTime::now();
        let of_port = self.captures.iter().filter(|c| c.port == port).count();
        for data in packets {
            // The last capture of the port takes the copy, the others copy it again.
            let mut data = Some(data);
            for (k, c) in self.captures.iter().filter(|c| c.port == port).enumerate() {
                let copy = match k + 1 == of_port {
                    true => data.take().unwrap_or_default(),
                    false => data.clone().unwrap_or_default(),
                };
                match c.to.try_send(Captured {
                    port,
                    time,
                    data: copy,
                }) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        c.state.lost.fetch_add(1, Ordering::Relaxed);
                    }
                    // Its writer is gone: the port's flows may take the fast path again.
                    Err(TrySendError::Disconnected(_)) => {
                        c.state.ended.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
        self.drop_ended_captures();
    }

    /// Forgets the captures whose writer stopped.
    fn drop_ended_captures(&mut self) {
        self.captures
            .retain(|c| !c.state.ended.load(Ordering::Relaxed));
    }

    /// A burst with multi-buffer packets: each chain copied into one buffer and processed in
    /// its place, the single frames around it in runs, so that what leaves for a port keeps
    /// the order it came in. A chain cut short or longer than any packet is dropped.
    fn process_mixed(&mut self, ingress: PortId, now_ms: u64) {
        let mut burst = std::mem::take(&mut self.rx_batch);
        // Whether the segments had room for the chains' copies: once not, not tried again in
        // this burst (each try sends what is queued).
        let mut room = true;
        let mut building: Option<Vec<u8>> = None;
        let mut bad = 0;
        for frame in burst.drain(..) {
            match building.as_mut() {
                None if !frame.more() => {
                    self.rx_batch.push(frame);
                    continue;
                }
                None => building = Some(self.s.umem.data(&frame).to_vec()),
                Some(data) => data.extend_from_slice(self.s.umem.data(&frame)),
            }
            let ends = !frame.more();
            self.s.pool.put(frame);
            if ends {
                let data = building.take().unwrap_or_default();
                if data.len() > MAX_PACKET_LEN as usize {
                    bad += 1;
                } else {
                    self.process_singles(ingress, now_ms);
                    self.process_chained(ingress, now_ms, data, &mut room);
                }
            }
        }
        bad += building.is_some() as u64;
        self.process_singles(ingress, now_ms);
        // The emptied burst, sized for a whole one, serves the next receive.
        self.rx_batch = burst;
        self.s.stats.ports[ingress as usize].add(PortCounter::DropBadChain as usize, bad);
    }

    /// A multi-buffer packet through the pipeline in a buffer of its own, then copied into
    /// chains for the ports it goes to (`room` as `stage_copies` keeps it).
    fn process_chained(&mut self, ingress: PortId, now_ms: u64, data: Vec<u8>, room: &mut bool) {
        if !self.captures.is_empty() {
            self.capture_packets(ingress, vec![data.clone()]);
        }
        let counters = &self.s.stats.ports[ingress as usize];
        counters.add(PortCounter::RxPackets as usize, 1);
        counters.add(PortCounter::RxBytes as usize, data.len() as u64);
        let mut packet = [HeadroomBuf::new(&data, KERNEL_HEADROOM as usize)];
        let mut next = [Disposition::Drop];
        self.s
            .pipeline
            .process(&mut packet, ingress, now_ms, &mut next, &mut self.emitted);
        let out = packet[0].as_ref();
        let to = match next[0] {
            Disposition::Forward(port) if self.present.contains(port) => PortMask::single(port),
            Disposition::Flood(mask) => mask.and(self.present).without(ingress),
            Disposition::Consumed => PortMask::NONE,
            Disposition::Forward(port) if (port as usize) < MAX_PORTS => {
                self.s
                    .stats
                    .worker
                    .add(WorkerCounter::DropPortAbsent as usize, 1);
                PortMask::NONE
            }
            Disposition::Forward(_) | Disposition::Drop | Disposition::Recirculate => {
                self.s.stats.ports[ingress as usize].add(PortCounter::DropPipeline as usize, 1);
                PortMask::NONE
            }
        };
        self.stage_copies(to, out, room);
    }

    fn receive_burst(&mut self, socket: usize, now_ms: u64) -> usize {
        let (ingress, sock) = &mut self.sockets[socket];
        let ingress = *ingress;
        self.rx_batch.clear();
        sock.receive(
            &self.s.umem,
            &mut self.s.pool,
            MAX_BATCH as u32,
            &mut self.rx_batch,
        );
        if self.rx_batch.is_empty() && self.s.busy_poll {
            sock.busy_poll();
            sock.receive(
                &self.s.umem,
                &mut self.s.pool,
                MAX_BATCH as u32,
                &mut self.rx_batch,
            );
        }
        let rests = sock.take_rests_dropped();
        if rests > 0 {
            self.s.stats.ports[ingress as usize].add(PortCounter::DropBadChain as usize, rests);
        }
        let received = self.rx_batch.len();
        if received == 0 {
            return 0;
        }
        if received >= MAX_BATCH {
            // More was waiting: the ring holds a backlog.
            self.s
                .stats
                .worker
                .add(WorkerCounter::FullBatches as usize, 1);
        }
        if self.rx_batch.iter().any(Frame::more) {
            self.process_mixed(ingress, now_ms);
        } else {
            self.process_singles(ingress, now_ms);
        }
        let fast = self.fast_present();
        if let (Some(tuples), Some(gateway)) = (self.tuples.as_mut(), self.s.pipeline.gateway_mut())
        {
            let stats = &self.s.stats;
            let ports = Ports {
                ifindex: &self.ifindex,
                present: fast,
                stats,
            };
            tuples.install(gateway, &ports, now_ms);
        }
        self.follow_fdb_changes();
        received
    }

    /// The single-frame packets in `rx_batch` through the pipeline as one batch, staged for
    /// the ports they go to (with what the pipeline made on the way).
    fn process_singles(&mut self, ingress: PortId, now_ms: u64) {
        let n = self.rx_batch.len();
        if n == 0 {
            self.stage_emitted();
            return;
        }
        if !self.captures.is_empty() {
            let batch = std::mem::take(&mut self.rx_batch);
            self.capture(ingress, &batch);
            self.rx_batch = batch;
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
        let present = self.present;
        let fast = self.fast_present();
        let mut batch = std::mem::take(&mut self.rx_batch);
        let mut room_to_flood = true;
        for (frame, disposition) in batch.drain(..).zip(next) {
            match disposition {
                Disposition::Forward(port) if present.contains(port) => {
                    if let Some(flows) = self
                        .flows
                        .as_mut()
                        .filter(|_| fast.contains(ingress) && fast.contains(port))
                    {
                        flows.consider(
                            self.s.umem.data(&frame),
                            ingress,
                            port,
                            &self.ifindex,
                            self.s.pipeline.bridge(),
                            &self.s.stats,
                            now_ms,
                        );
                    }
                    self.staged[port as usize].push(frame)
                }
                Disposition::Flood(mask) => {
                    let to = mask.and(present).without(ingress);
                    if room_to_flood {
                        room_to_flood = self.make_room_to_flood(to);
                    }
                    flood(
                        &self.s.umem,
                        &mut self.s.pool,
                        &mut self.staged,
                        &self.segment,
                        &self.s.stats,
                        to,
                        frame,
                    )
                }
                Disposition::Consumed => self.s.pool.put(frame),
                Disposition::Forward(port) if (port as usize) < MAX_PORTS => {
                    // To a port that is gone (or not attached yet).
                    self.s
                        .stats
                        .worker
                        .add(WorkerCounter::DropPortAbsent as usize, 1);
                    self.s.pool.put(frame);
                }
                Disposition::Forward(_) | Disposition::Drop | Disposition::Recirculate => {
                    self.s.stats.ports[ingress as usize].add(PortCounter::DropPipeline as usize, 1);
                    self.s.pool.put(frame);
                }
            }
        }
        self.rx_batch = batch;
        self.stage_emitted();
    }

    /// Re-checks the bridge's fast-path entries when an address moved or went in this
    /// worker's table (by its own frames or another worker's announcement).
    /// At most every `FDB_REVALIDATE_MS` (each worker validates every flow it installed: a
    /// MAC flapping between ports, announced to all workers, must not make each of them do
    /// that on every pass).
    fn follow_fdb_changes(&mut self) {
        if self.flows.is_some() {
            // The clock is read only when the table changed: this runs every pass.
            if self.s.pipeline.bridge().fdb_changes() != self.fdb_changes
                && self.now_ms() >= self.fdb_validated_ms + FDB_REVALIDATE_MS
            {
                self.validate_flows(true);
            }
        }
    }

    /// Re-checks the gateway's fast-path entries when something they depend on changed (a
    /// few atomic loads when nothing did): also while the fast path carries everything and the
    /// workers receive nothing, and for changes made by the control thread. And reads the
    /// next step of a harvest under way.
    fn revalidate_tuples(&mut self, now_ms: u64) {
        let present = self.fast_present();
        if let (Some(tuples), Some(gateway)) = (self.tuples.as_mut(), self.s.pipeline.gateway_mut())
        {
            let ports = Ports {
                ifindex: &self.ifindex,
                present,
                stats: &self.s.stats,
            };
            tuples.revalidate_if_changed(gateway, &ports, now_ms);
            tuples.harvest_step(gateway, &self.s.stats, now_ms);
        }
    }

    /// The ports the fast path may carry frames of: not a captured one (a capture sees what
    /// the workers see, so its port's flows stay with them while it runs).
    fn fast_present(&self) -> PortMask {
        self.captures
            .iter()
            .fold(self.present, |ports, c| ports.without(c.port))
    }

    /// Takes out the installed flows the bridge (or gateway) no longer backs: at once, or
    /// the gateway's in steps over the next passes (`TupleCache::start_validation`).
    fn validate_flows(&mut self, at_once: bool) {
        let now_ms = self.now_ms();
        self.fdb_changes = self.s.pipeline.bridge().fdb_changes();
        self.fdb_validated_ms = now_ms;
        let present = self.fast_present();
        if let Some(flows) = self.flows.as_mut() {
            flows.validate(
                self.s.pipeline.bridge(),
                |p| present.contains(p),
                &self.s.stats,
                now_ms,
            );
        }
        if let (Some(tuples), Some(gateway)) = (self.tuples.as_mut(), self.s.pipeline.gateway_mut())
        {
            let ports = Ports {
                ifindex: &self.ifindex,
                present,
                stats: &self.s.stats,
            };
            match at_once {
                true => tuples.validate(gateway, &ports, now_ms),
                false => tuples.start_validation(gateway, &ports, now_ms),
            }
        }
    }

    /// Frames the pipeline made: each copied into a frame (or chain) of ours for every port
    /// it goes to.
    fn stage_emitted(&mut self) {
        // Taken out while staging (which borrows the worker), put back to keep its allocation.
        let mut emitted = std::mem::take(&mut self.emitted);
        let mut room = true;
        for e in emitted.drain(..) {
            let to = e.to.and(self.present);
            if e.frame.len() > MAX_PACKET_LEN as usize {
                for port in to.ports(MAX_PORTS) {
                    self.s.stats.ports[port as usize]
                        .add(PortCounter::DropEmitTooLarge as usize, 1);
                }
                continue;
            }
            self.stage_copies(to, &e.frame, &mut room);
        }
        self.emitted = emitted;
    }

    /// Copies `data` into a frame (or chain) of ours for each port of `to`. A segment short
    /// of frames for a copy gets what is queued sent first, as for floods; `room` turns false
    /// when that did not help, for the rest of the caller's packets.
    fn stage_copies(&mut self, to: PortMask, data: &[u8], room: &mut bool) {
        let pieces = data.len().div_ceil(MAX_FRAME_LEN as usize);
        for port in to.ports(MAX_PORTS) {
            let segment = self.segment[port as usize];
            if *room && self.s.pool.available_in(segment) < pieces {
                self.transmit_for_copies();
                *room = self.s.pool.available_in(segment) >= pieces;
            }
            stage_copy(
                &self.s.umem,
                &mut self.s.pool,
                self.segment[port as usize],
                &mut self.staged[port as usize],
                &self.s.stats.ports[port as usize],
                data,
            );
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
            if port >= MAX_PORTS || !matches!(self.egress[port], Egress::Local(_)) {
                // Out of range, or removed while the frame was on its way.
                self.s
                    .stats
                    .worker
                    .add(WorkerCounter::HandoffsBadPort as usize, 1);
                continue;
            }
            if handoff.data.len() > MAX_PACKET_LEN as usize {
                self.s.stats.ports[port].add(PortCounter::DropHandoffTooLarge as usize, 1);
                continue;
            }
            stage_copy(
                &self.s.umem,
                &mut self.s.pool,
                self.segment[port],
                &mut self.staged[port],
                &self.s.stats.ports[port],
                &handoff.data,
            );
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
            // An entry for a port this worker no longer has would only be flooded around.
            if self.present.contains(event.port) {
                self.s
                    .pipeline
                    .bridge_mut()
                    .apply_learn_event(event, now_ms);
            }
        }
        // A move another worker saw: this worker's entries to the old port go now, not at
        // its next housekeeping (while the fast path carries everything it receives nothing).
        self.follow_fdb_changes();
        self.s
            .stats
            .worker
            .add(WorkerCounter::LearnEventsLost as usize, lost);
    }

    /// Sends every staged frame: by descriptor on our own sockets, by copy to other workers.
    fn flush(&mut self) {
        for port in self.present.ports(MAX_PORTS) {
            let p = port as usize;
            if self.staged[p].is_empty() {
                continue;
            }
            let fresh_from = std::mem::take(&mut self.staged_tail[p]);
            if matches!(self.egress[p], Egress::Local(_)) {
                // The rest of a chain whose start the kernel holds (from the last pass) goes
                // whatever the MTU is now: without it the next packet would be taken for its
                // rest. What is new is checked, then captured: a capture shows what leaves.
                let held = fresh_from.min(self.staged[p].len());
                let mut fresh = self.staged[p].split_off(held);
                let over = drop_over(&mut fresh, self.max_frame[p], &mut self.s.pool);
                self.s.stats.ports[p].add(PortCounter::DropOverMtu as usize, over);
                if !self.captures.is_empty() {
                    self.capture(port, &fresh);
                }
                self.staged[p].append(&mut fresh);
            }
            let counters = &self.s.stats.ports[p];
            let staged = &mut self.staged[p];
            match &self.egress[p] {
                Egress::Local(index) => {
                    let sock = &mut self.sockets[*index].1;
                    let segment = sock.segment();
                    if staged.iter().any(|f| f.umem() != segment) {
                        let copied =
                            rehome(&self.s.umem, &mut self.s.pool, staged, segment, counters);
                        self.s
                            .stats
                            .worker
                            .add(WorkerCounter::SegmentCopies as usize, copied);
                    }
                    let bytes: usize = staged.iter().map(|f| f.len()).sum();
                    let packets = packets_in(staged);
                    let cut = sock.transmit(&self.s.umem, staged);
                    // The rest of a chain whose start is queued (in this pass or, the ring
                    // still full, an earlier one) goes first in the next pass.
                    let tail = if cut {
                        staged
                            .iter()
                            .position(|f| !f.more())
                            .map_or(0, |end| end + 1)
                    } else {
                        0
                    };
                    let tail: Vec<Frame> = staged.drain(..tail).collect();
                    let unsent_bytes: usize = staged.iter().map(|f| f.len()).sum::<usize>()
                        + tail.iter().map(|f| f.len()).sum::<usize>();
                    let unsent = packets_in(staged);
                    counters.add(
                        PortCounter::TxPackets as usize,
                        packets - unsent - packets_in(&tail),
                    );
                    counters.add(PortCounter::TxBytes as usize, (bytes - unsent_bytes) as u64);
                    counters.add(PortCounter::DropTxRingFull as usize, unsent);
                    for frame in staged.drain(..) {
                        self.s.pool.put(frame);
                    }
                    self.staged_tail[p] = tail.len();
                    staged.extend(tail);
                }
                Egress::Remote(owner) => {
                    let mut handed = 0;
                    let mut data = Vec::new();
                    for frame in staged.drain(..) {
                        data.extend_from_slice(self.s.umem.data(&frame));
                        let ends = !frame.more();
                        self.s.pool.put(frame);
                        if !ends {
                            continue;
                        }
                        let data = std::mem::take(&mut data);
                        match owner.try_send(Handoff { port, data }) {
                            Ok(()) => handed += 1,
                            Err(_) => counters.add(PortCounter::DropHandoffFull as usize, 1),
                        }
                    }
                    self.s
                        .stats
                        .worker
                        .add(WorkerCounter::HandoffsOut as usize, handed);
                }
                Egress::Absent => {
                    for frame in staged.drain(..) {
                        self.s.pool.put(frame);
                    }
                }
            }
        }
    }

    /// Nothing queued anywhere: safe to wait.
    fn quiet(&self) -> bool {
        self.sockets.iter().all(|(_, s)| s.in_flight_tx() == 0)
            && !self
                .tuples
                .as_ref()
                .is_some_and(|t| t.harvesting() || t.validating())
            && self.s.handoff_in.is_empty()
            && self.s.commands.is_empty()
            && self.retiring.is_empty()
    }

    fn wait_for_traffic(&mut self) {
        self.pollfds.clear();
        for (_, sock) in self.sockets.iter() {
            self.pollfds.push(libc::pollfd {
                fd: sock.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // Time spent waiting is neither busy nor idle polling, so it is not counted as cycles.
        crate::netdev::poll_fds(&mut self.pollfds, WAIT_TIMEOUT_MS);
        self.s.stats.worker.add(WorkerCounter::Sleeps as usize, 1);
    }

    fn housekeeping(&mut self, now_ms: u64) {
        // Also those this worker never captured for (it polls none of their port's queues).
        self.drop_ended_captures();
        // What the fast path forwarded keeps its sources alive before the bridge ages them.
        if let Some(flows) = self.flows.as_mut() {
            flows.harvest(self.s.pipeline.bridge_mut(), &self.s.stats, now_ms);
        }
        // The gateway's entries in steps, over the next passes (`revalidate_tuples`).
        if let Some(tuples) = self.tuples.as_mut() {
            tuples.start_harvest();
        }
        self.s
            .pipeline
            .housekeeping(now_ms, self.s.leader, &mut self.emitted);
        self.validate_flows(false);
        self.stage_emitted();
        for (_, sock) in self.sockets.iter_mut() {
            sock.tick();
        }
        if !self.dropping.is_empty() {
            self.drop_segments();
        }
        self.publish();
    }

    /// What the control thread reads about this worker's ports and frames.
    fn publish_ports(&self) {
        let w = &self.s.stats.worker;
        w.set(WorkerCounter::Sockets as usize, self.sockets.len() as u64);
        w.set(
            WorkerCounter::Segments as usize,
            self.s.umem.segments().count() as u64,
        );
        // The kernel keeps per-frame state for each socket's registration of its segment.
        w.set(
            WorkerCounter::KernelFrameRefs as usize,
            self.all_sockets()
                .map(|s| self.s.umem.segment_frames(s.segment()) as u64)
                .sum(),
        );
        w.set(
            WorkerCounter::FramesInFill as usize,
            self.sockets
                .iter()
                .map(|(_, s)| s.lent_to_fill() as u64)
                .sum(),
        );
        w.set(
            WorkerCounter::FramesFree as usize,
            self.s.pool.available() as u64,
        );
    }

    /// Who else ran on its core, from /proc: read when it publishes (each second, and after
    /// control commands, so `show stats` is current).
    fn publish_core_share(&self) {
        let Some(watch) = &self.core_watch else {
            return;
        };
        let share = watch.since_start();
        let w = &self.s.stats.worker;
        let set = |counter: WorkerCounter, value: Option<u64>| {
            if let Some(v) = value {
                w.set(counter as usize, v);
            }
        };
        set(WorkerCounter::Preemptions, share.preemptions);
        set(WorkerCounter::CoreStealMs, share.steal_ms);
        set(
            WorkerCounter::WaitedForCoreUs,
            share.waited_ns.map(|ns| ns / 1000),
        );
        set(
            WorkerCounter::CoreSoftirqThreadUs,
            share.softirq_thread_ns.map(|ns| ns / 1000),
        );
        set(
            WorkerCounter::CoreSoftirqThreadWaitedUs,
            share.softirq_thread_waited_ns.map(|ns| ns / 1000),
        );
    }

    fn publish(&self) {
        self.publish_core_share();
        let stats = &self.s.stats;
        let installed = self.flows.as_ref().map_or(0, FlowCache::len)
            + self.tuples.as_ref().map_or(0, TupleCache::len);
        stats
            .worker
            .set(WorkerCounter::FastPathFlows as usize, installed as u64);
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
        for (port, kernel) in kernel_counts_by_port(
            self.sockets
                .iter()
                .map(|(port, sock)| (*port, sock.kernel_stats().ok())),
        ) {
            let c = &stats.ports[port as usize];
            for (counter, value) in KERNEL_COUNTERS.iter().zip(kernel) {
                c.set(*counter as usize, value);
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
            WorkerCounter::FramesInTx as usize,
            report.frames_in_tx as u64,
        );
        self.publish_ports();
    }

    fn all_sockets(&self) -> impl Iterator<Item = &PortSocket> {
        self.sockets
            .iter()
            .map(|(_, s)| s)
            .chain(self.retiring.iter().flat_map(|r| r.sockets.iter()))
    }

    fn report(&self) -> WorkerReport {
        WorkerReport {
            worker: self.s.id,
            frames_total: self.s.pool.total(),
            frames_free: self.s.pool.available() as u32,
            frames_in_fill: self.all_sockets().map(|s| s.lent_to_fill()).sum(),
            frames_in_tx: self.all_sockets().map(|s| s.in_flight_tx()).sum(),
            frames_refused: {
                let (foreign, twice) = self.s.pool.refused();
                (foreign + twice) as u32
            },
        }
    }

    /// Stops: sends what is staged, waits for every transmit to complete, takes back what the
    /// rx rings still hold, and reports where every frame is.
    fn drain(mut self) -> WorkerReport {
        let now_ms = self.now_ms();
        if let Some(flows) = self.flows.as_mut() {
            flows.harvest(self.s.pipeline.bridge_mut(), &self.s.stats, now_ms);
            flows.clear();
        }
        if let (Some(tuples), Some(gateway)) = (self.tuples.as_mut(), self.s.pipeline.gateway_mut())
        {
            tuples.harvest(gateway, &self.s.stats, now_ms);
            tuples.clear();
        }
        self.flush();
        for r in std::mem::take(&mut self.retiring) {
            // Kept to the end: their frames are counted like any socket's.
            self.sockets
                .extend(r.sockets.into_iter().map(|s| (PortId::MAX, s)));
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            for (_, sock) in self.sockets.iter_mut() {
                sock.kick_tx();
                sock.reap_completions(&self.s.umem, &mut self.s.pool);
            }
            if self.sockets.iter().all(|(_, s)| s.in_flight_tx() == 0) || Instant::now() >= deadline
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // The rest of a chain the ring had no room for (its start stays with the kernel).
        for staged in self.staged.iter_mut() {
            for frame in staged.drain(..) {
                self.s.pool.put(frame);
            }
        }
        for (_, sock) in self.sockets.iter_mut() {
            take_back_received(sock, &self.s.umem, &mut self.s.pool);
        }
        self.publish();
        self.report()
    }
}

/// Everything waiting on a socket's receive ring (a socket being closed), back to the pool.
fn take_back_received(sock: &mut PortSocket, umem: &Umem, pool: &mut FramePool) {
    let mut frames = Vec::new();
    while sock.receive(umem, pool, MAX_BATCH as u32, &mut frames) > 0 {}
    for frame in frames {
        pool.put(frame);
    }
}

/// The kernel's drop counters of a socket, in `kernel_counts_by_port`'s order.
const KERNEL_COUNTERS: [PortCounter; 4] = [
    PortCounter::KernelRxDropped,
    PortCounter::KernelRxRingFull,
    PortCounter::KernelFillRingEmpty,
    PortCounter::KernelTxInvalid,
];

/// Each port's kernel drop counters, summed over this worker's sockets of it (one per queue
/// it owns). A port whose counters could not all be read is left out this time: published
/// short of a socket, its counts would go back.
fn kernel_counts_by_port(
    sockets: impl Iterator<Item = (PortId, Option<crate::socket::SocketKernelStats>)>,
) -> Vec<(PortId, [u64; 4])> {
    let mut sums: Vec<(PortId, Option<[u64; 4]>)> = Vec::new();
    for (port, read) in sockets {
        let at = match sums.iter().position(|(p, _)| *p == port) {
            Some(at) => at,
            None => {
                sums.push((port, Some([0; 4])));
                sums.len() - 1
            }
        };
        sums[at].1 = match (sums[at].1, read) {
            (Some(sum), Some(k)) => Some([
                sum[0] + k.rx_dropped,
                sum[1] + k.rx_ring_full,
                sum[2] + k.rx_fill_ring_empty,
                sum[3] + k.tx_invalid_descs,
            ]),
            _ => None,
        };
    }
    sums.into_iter()
        .filter_map(|(port, sum)| Some((port, sum?)))
        .collect()
}

/// The packets in a run of frames: each chain is one.
fn chains(frames: &[Frame]) -> impl Iterator<Item = &[Frame]> {
    frames.split_inclusive(|f| !f.more())
}

fn packets_in(frames: &[Frame]) -> u64 {
    frames.iter().filter(|f| !f.more()).count() as u64
}

/// Copies the frames of other segments into `segment` (a socket sends only its own); a packet
/// the segment has no room for is dropped and counted. Returns the frames copied.
fn rehome(
    umem: &Umem,
    pool: &mut FramePool,
    staged: &mut Vec<Frame>,
    segment: u32,
    counters: &crate::stats::AtomicCounters<{ PortCounter::COUNT }>,
) -> u64 {
    let mut kept = Vec::with_capacity(staged.len());
    let mut copied = 0;
    let mut chain: Vec<Frame> = Vec::new();
    let mut frames = staged.drain(..).peekable();
    while let Some(frame) = frames.next() {
        let ends = !frame.more() || frames.peek().is_none();
        chain.push(frame);
        if !ends {
            continue;
        }
        let mut short = false;
        let start = kept.len();
        for f in chain.drain(..) {
            if short {
                pool.put(f);
            } else if f.umem() == segment {
                kept.push(f);
            } else {
                match umem.copy_frame(&f, pool, segment) {
                    Some(copy) => {
                        kept.push(copy);
                        copied += 1;
                    }
                    None => short = true,
                }
                pool.put(f);
            }
        }
        if short {
            counters.add(PortCounter::DropNoFrame as usize, 1);
            for f in kept.drain(start..) {
                pool.put(f);
            }
        }
    }
    drop(frames);
    *staged = kept;
    copied
}

/// Removes (to the pool) the packets longer than `max_frame`; returns how many.
fn drop_over(staged: &mut Vec<Frame>, max_frame: u32, pool: &mut FramePool) -> u64 {
    let mut len = 0;
    let mut over = false;
    for f in staged.iter() {
        len += f.len();
        if !f.more() {
            over |= len > max_frame as usize;
            len = 0;
        }
    }
    if !over {
        return 0;
    }
    let mut kept = Vec::with_capacity(staged.len());
    let mut dropped = 0;
    let mut chain: Vec<Frame> = Vec::new();
    let mut len = 0;
    for frame in staged.drain(..) {
        len += frame.len();
        let ends = !frame.more();
        chain.push(frame);
        if ends {
            if len <= max_frame as usize {
                kept.append(&mut chain);
            } else {
                dropped += 1;
                for f in chain.drain(..) {
                    pool.put(f);
                }
            }
            len = 0;
        }
    }
    *staged = kept;
    dropped
}

/// Copies `data` into a new frame, or a chain of them when it is longer than one, queued for
/// a port; counted as dropped when the pool cannot give them all.
fn stage_copy(
    umem: &Umem,
    pool: &mut FramePool,
    segment: u32,
    staged: &mut Vec<Frame>,
    counters: &crate::stats::AtomicCounters<{ PortCounter::COUNT }>,
    data: &[u8],
) {
    let pieces: Vec<&[u8]> = data.chunks(MAX_FRAME_LEN as usize).collect();
    if pool.available_in(segment) < pieces.len() {
        counters.add(PortCounter::DropNoFrame as usize, 1);
        return;
    }
    let last = pieces.len().saturating_sub(1);
    for (i, piece) in pieces.into_iter().enumerate() {
        let Some(mut frame) = pool.alloc_in(segment) else {
            return;
        };
        frame.set_len(piece.len());
        frame.set_more(i < last);
        umem.data_mut(&mut frame).copy_from_slice(piece);
        staged.push(frame);
    }
}

/// Sends a flooded frame out of every port in `to`: copies for all but the last port, the
/// original frame for the last.
fn flood(
    umem: &Umem,
    pool: &mut FramePool,
    staged: &mut [Vec<Frame>],
    segment: &[u32],
    stats: &WorkerStats,
    to: PortMask,
    frame: Frame,
) {
    let targets = to.ports(staged.len());
    let mut last = None;
    for port in targets {
        if let Some(prev) = last.replace(port) {
            match umem.copy_frame(&frame, pool, segment[prev as usize]) {
                Some(copy) => staged[prev as usize].push(copy),
                None => stats.ports[prev as usize].add(PortCounter::DropNoFrame as usize, 1),
            }
        }
    }
    match last {
        Some(port) => staged[port as usize].push(frame),
        None => pool.put(frame),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_drops_are_summed_over_a_ports_queues() {
        use crate::socket::SocketKernelStats;
        let k = |d: u64| {
            Some(SocketKernelStats {
                rx_dropped: d,
                rx_ring_full: 1,
                rx_fill_ring_empty: 2,
                tx_invalid_descs: 3,
                ..Default::default()
            })
        };
        // Port 4 has three queues on this worker, port 9 one whose counters could not be read.
        let sums = kernel_counts_by_port(
            [(4, k(10)), (9, None), (4, k(20)), (4, k(5)), (7, k(1))].into_iter(),
        );
        assert_eq!(sums, vec![(4, [35, 3, 6, 9]), (7, [1, 1, 2, 3])]);
    }
    use crate::stats::AtomicCounters;

    fn staged_packets(umem: &Umem, pool: &mut FramePool, lens: &[usize]) -> Vec<Frame> {
        let counters = AtomicCounters::<{ PortCounter::COUNT }>::default();
        let mut staged = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            let first = umem.first_segment();
            stage_copy(
                umem,
                pool,
                first,
                &mut staged,
                &counters,
                &vec![i as u8; len],
            );
        }
        staged
    }

    #[test]
    fn a_long_packet_becomes_a_chain_with_its_bytes_in_order() {
        let (umem, mut pool) = Umem::new(64).unwrap();
        let data: Vec<u8> = (0..9014u32).map(|i| (i % 251) as u8).collect();
        let counters = AtomicCounters::<{ PortCounter::COUNT }>::default();
        let mut staged = Vec::new();
        let first = umem.first_segment();
        stage_copy(&umem, &mut pool, first, &mut staged, &counters, &data);
        assert_eq!(staged.len(), 3);
        assert_eq!(
            staged.iter().map(Frame::more).collect::<Vec<_>>(),
            [true, true, false]
        );
        let joined: Vec<u8> = staged.iter().flat_map(|f| umem.data(f).to_vec()).collect();
        assert_eq!(joined, data);
        assert_eq!(chains(&staged).count(), 1);
        assert_eq!(packets_in(&staged), 1);
    }

    #[test]
    fn packets_over_the_mtu_go_whole_and_the_rest_stay_in_order() {
        let (umem, mut pool) = Umem::new(64).unwrap();
        let free = pool.available();
        let mut staged = staged_packets(&umem, &mut pool, &[100, 9014, 1514, 4000, 60]);
        assert_eq!(drop_over(&mut staged, 1518, &mut pool), 2);
        let firsts: Vec<u8> = chains(&staged).map(|c| umem.data(&c[0])[0]).collect();
        assert_eq!(firsts, [0, 2, 4], "the packets that fit, in order");
        assert_eq!(drop_over(&mut staged, 1518, &mut pool), 0);
        for f in staged.drain(..) {
            pool.put(f);
        }
        assert_eq!(
            pool.available(),
            free,
            "every frame of a dropped chain is home"
        );
    }

    #[test]
    fn no_frame_is_taken_when_the_pool_cannot_hold_the_whole_chain() {
        let (umem, mut pool) = Umem::new(1024).unwrap();
        let first = umem.first_segment();
        let mut hoard = Vec::new();
        while pool.available() > 2 {
            hoard.push(pool.alloc_in(first).unwrap());
        }
        let counters = AtomicCounters::<{ PortCounter::COUNT }>::default();
        let mut staged = Vec::new();
        stage_copy(&umem, &mut pool, first, &mut staged, &counters, &[7; 9000]);
        assert!(staged.is_empty());
        assert_eq!(pool.available(), 2);
        assert_eq!(counters.get(PortCounter::DropNoFrame as usize), 1);
    }

    #[test]
    fn frames_of_another_segment_are_copied_in_before_they_leave() {
        let (mut umem, mut pool, own, other_id) = Umem::two_segments(64, 64);
        let counters = AtomicCounters::<{ PortCounter::COUNT }>::default();
        let mut staged = Vec::new();
        let long: Vec<u8> = (0..9014u32).map(|i| (i % 251) as u8).collect();
        stage_copy(&umem, &mut pool, other_id, &mut staged, &counters, &[1; 60]);
        stage_copy(&umem, &mut pool, own, &mut staged, &counters, &[2; 60]);
        stage_copy(&umem, &mut pool, other_id, &mut staged, &counters, &long);
        let copied = rehome(&umem, &mut pool, &mut staged, own, &counters);
        assert_eq!(copied, 4, "one short frame and a chain of three");
        assert!(staged.iter().all(|f| f.umem() == own));
        let packets: Vec<Vec<u8>> = chains(&staged)
            .map(|c| c.iter().flat_map(|f| umem.data(f).to_vec()).collect())
            .collect();
        assert_eq!(packets, [vec![1; 60], vec![2; 60], long]);
        assert_eq!(pool.available_in(other_id), 64, "the originals went home");
        for f in staged.drain(..) {
            pool.put(f);
        }
        assert_eq!(pool.available(), 128);
        assert!(umem.remove_segment(other_id, &mut pool));
        assert_eq!(umem.frames(), 64);
    }

    #[test]
    fn a_packet_the_segment_has_no_room_for_goes_whole() {
        let (umem, mut pool, own, other_id) = Umem::two_segments(64, 64);
        let mut hoard = Vec::new();
        while pool.available_in(own) > 2 {
            hoard.push(pool.alloc_in(own).unwrap());
        }
        let counters = AtomicCounters::<{ PortCounter::COUNT }>::default();
        let mut staged = Vec::new();
        stage_copy(&umem, &mut pool, other_id, &mut staged, &counters, &[3; 60]);
        stage_copy(
            &umem,
            &mut pool,
            other_id,
            &mut staged,
            &counters,
            &[4; 9000],
        );
        rehome(&umem, &mut pool, &mut staged, own, &counters);
        assert_eq!(
            staged.len(),
            1,
            "the short packet fits, the chain of three does not"
        );
        assert_eq!(umem.data(&staged[0]), [3; 60]);
        assert_eq!(counters.get(PortCounter::DropNoFrame as usize), 1);
        assert_eq!(pool.available_in(own), 1);
        assert_eq!(
            pool.available_in(other_id),
            64,
            "nothing of the other segment is lost"
        );
        for f in staged.drain(..).chain(hoard) {
            pool.put(f);
        }
        assert_eq!(pool.refused(), (0, 0));
    }
}
