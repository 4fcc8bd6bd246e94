//! Builds the datapath: checks everything first, starts the workers (each with its UMEM and
//! no ports), then adds the ports one by one. Ports are added and removed while the workers
//! run: the control thread opens and closes sockets, programs and maps, and tells the workers
//! through their command channels. Stopping detaches and reports.

use crate::bpf::{RedirectProgram, XdpLink, XdpMode, XskMap};
use crate::fastpath::{FastPath, FlowTable};
use crate::napi_probe;
use crate::netdev;
use crate::socket::PortSocket;
use crate::stats::{PortCounter, WorkerStats};
use crate::umem::{RingSizes, Segment, Umem, UmemHandle, L2_OVERHEAD, MAX_PACKET_LEN};
use crate::worker::{Command, Handoff, PollMode, Worker, WorkerReport, WorkerSetup};
use crossbeam_channel::{bounded, Receiver, Sender};
use pipeline::gateway::ForgottenPort;
use pipeline::{
    Bridge, BridgeConfig, Gateway, GatewayConfig, GatewayShared, LearnEvent, Pipeline, PortId,
    MAX_PORTS,
};
use std::collections::HashSet;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The largest MTU whose frames fit a UMEM frame.
pub const MAX_MTU: u32 = MAX_PACKET_LEN - L2_OVERHEAD;
const HANDOFF_QUEUE: usize = 8192;
const BUSY_POLL_USECS: i32 = 20;
const BUSY_POLL_BUDGET: i32 = 64;
const LEARN_QUEUE: usize = 4096;
const COMMAND_QUEUE: usize = 64;
/// How long the control thread waits for a worker to answer (it answers between two passes,
/// so within a millisecond or two unless it is stuck).
const WORKER_ANSWER: Duration = Duration::from_secs(2);
/// Frames in a segment of a worker's frame memory by default (32 MiB). The kernel keeps about
/// 136 bytes per frame for every socket registered on a segment, so this also bounds what
/// each port costs it (about 1.1 MB).
pub const DEFAULT_SEGMENT_FRAMES: u32 = 8_192;
/// The most frames a worker maps by default, in all its segments (256 MiB).
pub const DEFAULT_MAX_FRAMES_PER_WORKER: u32 = 65_536;
/// Frames a segment sets aside per socket (a port's queue polled by a worker): about what a
/// quiet socket keeps lent to its fill ring (124 of them, the pool's reserve set apart). A
/// segment of 8,192 frames takes 64 sockets; the next port gets a new segment.
const FRAMES_PER_SOCKET: u32 = 128;

/// The sockets a segment of `segment_frames` takes before the next port gets a new one; the
/// workers size what quiet sockets keep lent by it.
pub(crate) fn sockets_per_segment(segment_frames: u32) -> u32 {
    (segment_frames / FRAMES_PER_SOCKET).max(1)
}

#[derive(Debug, Clone)]
pub struct DatapathConfig {
    pub ports: Vec<String>,
    /// One entry per worker: the core it is pinned to, or `None` for unpinned.
    pub workers: Vec<Option<usize>>,
    pub xdp_mode: XdpMode,
    pub poll: PollMode,
    /// Preferred busy polling: the worker runs its receive queues' NAPI itself.
    pub busy_poll: bool,
    pub bridge: BridgeConfig,
    pub rings: RingSizes,
    /// The node gateway's configuration (`--config`); `None` for a plain learning bridge.
    pub gateway: Option<GatewayConfig>,
    /// Frames in each segment of a worker's frame memory (UMEM): a worker maps its first at
    /// start and another when its ports fill the ones it has.
    pub segment_frames: u32,
    /// The most frames a worker maps, in all its segments; past it ports share the segments
    /// there are.
    pub max_frames_per_worker: u32,
    /// The XDP fast path: established L2 flows forwarded by the ports' XDP programs.
    pub fast_path: bool,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            ports: Vec::new(),
            workers: vec![None],
            xdp_mode: XdpMode::Auto,
            poll: PollMode::Adaptive,
            busy_poll: false,
            bridge: BridgeConfig::default(),
            rings: RingSizes::default(),
            gateway: None,
            segment_frames: DEFAULT_SEGMENT_FRAMES,
            max_frames_per_worker: DEFAULT_MAX_FRAMES_PER_WORKER,
            fast_path: false,
        }
    }
}

/// Why the datapath did not start; every variant names the value at fault.
#[derive(Debug)]
pub enum DatapathError {
    NoPorts,
    TooManyPorts { ports: usize, limit: usize },
    DuplicatePort(String),
    PortNotFound(String),
    MtuTooLarge { port: String, mtu: u32 },
    MtuTooLargeForNative { port: String, mtu: u32 },
    NoWorkers,
    CoreNotAvailable { core: usize, available: Vec<usize> },
    DuplicateCore(usize),
    TooManyWorkers { workers: usize, queues: usize },
    XdpProgramPresent { port: String },
    PortPresent(String),
    NoSuchPort(String),
    WorkerGone(usize),
    Setup { what: String, source: io::Error },
}

impl fmt::Display for DatapathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatapathError::NoPorts => write!(f, "no ports given: --ports needs at least one interface"),
            DatapathError::TooManyPorts { ports, limit } => write!(
                f,
                "{ports} ports given, more than the {limit} one switch supports (a flood set is one bit per port)"
            ),
            DatapathError::DuplicatePort(p) => write!(f, "port {p:?} is listed twice"),
            DatapathError::PortNotFound(p) => {
                write!(f, "port {p:?} does not exist in this network namespace")
            }
            DatapathError::MtuTooLarge { port, mtu } => write!(
                f,
                "port {port:?} has MTU {mtu}, above the largest supported, {MAX_MTU}; lower it with `ip link set dev {port} mtu 9000`"
            ),
            DatapathError::MtuTooLargeForNative { port, mtu } => write!(
                f,
                "port {port:?}: the driver refuses native XDP at MTU {mtu} (ERANGE); lower the MTU or use --xdp-mode generic"
            ),
            DatapathError::NoWorkers => write!(f, "no worker cores given"),
            DatapathError::CoreNotAvailable { core, available } => {
                write!(f, "core {core} is not available to this process: not online or outside its cpuset (it runs on {available:?} now)")
            }
            DatapathError::DuplicateCore(c) => write!(f, "core {c} is listed twice"),
            DatapathError::TooManyWorkers { workers, queues } => write!(
                f,
                "{workers} workers but only {queues} port queues to poll: use at most {queues} cores"
            ),
            DatapathError::XdpProgramPresent { port } => write!(
                f,
                "port {port:?} already has an XDP program attached outside vswitch (by netlink, e.g. `ip link set dev {port} xdp ...`); remove it with `ip link set dev {port} xdp off` (or `xdpgeneric off`) and start again"
            ),
            DatapathError::PortPresent(p) => write!(f, "port {p:?} is already attached"),
            DatapathError::NoSuchPort(p) => write!(f, "no port {p:?} is attached"),
            DatapathError::WorkerGone(w) => write!(f, "worker {w} did not answer (stopped?)"),
            DatapathError::Setup { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for DatapathError {}

fn setup(what: impl Into<String>) -> impl FnOnce(io::Error) -> DatapathError {
    let what = what.into();
    move |source| DatapathError::Setup { what, source }
}

/// A port as the kernel describes it.
#[derive(Debug, Clone)]
pub struct PortInfo {
    pub name: String,
    pub ifindex: u32,
    pub queues: u32,
    pub mtu: u32,
}

/// A port as the kernel describes it now.
pub fn port_info(name: &str) -> Result<PortInfo, DatapathError> {
    let ifindex = netdev::ifindex(name).map_err(|_| DatapathError::PortNotFound(name.into()))?;
    let mtu = netdev::mtu(name).map_err(setup(format!("reading the MTU of {name}")))?;
    if mtu > MAX_MTU {
        return Err(DatapathError::MtuTooLarge {
            port: name.into(),
            mtu,
        });
    }
    let queues = netdev::rx_queues(name).map_err(setup(format!("reading the queues of {name}")))?;
    Ok(PortInfo {
        name: name.into(),
        ifindex,
        queues,
        mtu,
    })
}

/// Checks ports and cores without changing anything. No ports is fine: they can be added
/// later (`Datapath::add_port`).
pub fn validate(config: &DatapathConfig) -> Result<Vec<PortInfo>, DatapathError> {
    if config.ports.len() > MAX_PORTS {
        return Err(DatapathError::TooManyPorts {
            ports: config.ports.len(),
            limit: MAX_PORTS,
        });
    }
    let mut seen = HashSet::new();
    for name in &config.ports {
        if !seen.insert(name.as_str()) {
            return Err(DatapathError::DuplicatePort(name.clone()));
        }
    }
    for name in &config.ports {
        netdev::ifindex(name).map_err(|_| DatapathError::PortNotFound(name.clone()))?;
    }
    if config.workers.is_empty() {
        return Err(DatapathError::NoWorkers);
    }
    let mut cores = HashSet::new();
    for core in config.workers.iter().flatten() {
        if !can_pin_to(*core) {
            return Err(DatapathError::CoreNotAvailable {
                core: *core,
                available: core_affinity::get_core_ids()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| c.id)
                    .collect(),
            });
        }
        if !cores.insert(*core) {
            return Err(DatapathError::DuplicateCore(*core));
        }
    }
    let mut ports = Vec::new();
    for name in &config.ports {
        ports.push(port_info(name)?);
    }
    let queues: usize = ports.iter().map(|p| p.queues as usize).sum();
    if !ports.is_empty() && config.workers.len() > queues {
        return Err(DatapathError::TooManyWorkers {
            workers: config.workers.len(),
            queues,
        });
    }
    Ok(ports)
}

/// Which worker polls each of a port's `queues`: with as many queues as workers, worker w
/// gets queue w, so every worker transmits on the port without a copy; with fewer, the
/// workers from `first` (the least loaded) on.
pub fn queue_owners(queues: u32, workers: usize, first: usize) -> Vec<usize> {
    (0..queues as usize)
        .map(|q| {
            if queues as usize >= workers {
                q % workers
            } else {
                (first + q) % workers
            }
        })
        .collect()
}

/// The baselines a veth on the fast path is watched from (what the fast path has sent it,
/// what its XDP transmit has taken); `None` for what cannot be watched: generic redirects do
/// not go through a veth's XDP transmit.
fn napi_watch(
    stats: &[Arc<WorkerStats>],
    mode: XdpMode,
    port: usize,
    live: &LivePort,
) -> Option<(u64, u64)> {
    if mode == XdpMode::Generic || netdev::driver(&live.info.name).ok().as_deref() != Some("veth") {
        return None;
    }
    let sent = stats
        .iter()
        .map(|w| w.port(port, PortCounter::FastPathTxPackets))
        .sum();
    netdev::veth_xdp_taken(&live.info.name)
        .ok()
        .map(|taken| (sent, taken))
}

/// A port the datapath has attached.
pub struct LivePort {
    pub info: PortInfo,
    /// The mode its program ended up attached in.
    pub mode: XdpMode,
    /// The worker polling each of its queues.
    pub owners: Vec<usize>,
    /// When it was attached, for the operator.
    pub since: Instant,
    /// The frame memory segment its sockets registered, per worker with a queue of it.
    segments: Vec<(usize, u32)>,
    /// Whether the fast path forwards to it (the port takes redirected frames); `None` while
    /// that is being probed, or with the fast path off.
    pub fast_egress: Option<bool>,
    /// Tells this attachment from an earlier one of the same interface (a probe's answer
    /// belongs to one).
    attachment: u64,
    /// For a veth the fast path forwards to: what the fast path had sent it and what its
    /// XDP transmit had taken when it joined (see `check_fast_egress`).
    fast_watch: Option<(u64, u64)>,
    /// Off the fast path with no probe out: when it is probed again (`reprobe_due`).
    reprobe: Option<Instant>,
    /// The wait before the next probe after this one fails, or after it is taken out again.
    probe_wait: Duration,
    /// When it last joined the fast path.
    joined_at: Option<Instant>,
    // Dropping the link detaches the program; the map goes after it.
    link: Option<XdpLink>,
    map: Option<XskMap>,
}

impl LivePort {
    /// The next probe after the current wait, which doubles for the one after (up to
    /// `REPROBE_MAX`).
    fn schedule_probe(&mut self) {
        self.reprobe = Some(Instant::now() + self.probe_wait);
        self.probe_wait = (self.probe_wait * 2).min(REPROBE_MAX);
    }
}

/// Code run on every worker's pipeline, between passes (a port's binding, a flood domain).
pub type SharedJob = Arc<dyn Fn(&mut Pipeline, u64) + Send + Sync>;

struct WorkerHandle {
    commands: Sender<Command>,
    handoff: Sender<Handoff>,
    /// The worker's frame memory segments, the first first, with the ports on each.
    segments: Vec<SegmentSlot>,
    thread: Option<JoinHandle<WorkerReport>>,
}

/// The fast path's program for the next port, loaded ahead (the verifier takes a tenth of a
/// second over it), with the XSKMAP it redirects to.
struct Spare {
    map: XskMap,
    prog: RedirectProgram,
}

/// Frames the fast path must have sent a veth without its XDP transmit taking them before the
/// port is taken out of the fast path. Few: a TCP connection whose frames vanish backs off to
/// one retransmission at a time; and none go missing while the peer has NAPI (what the
/// harvest says was sent was flushed to the veth before the control thread reads its count).
const LOST_NAPI_FRAMES: u64 = 8;

/// A port off the fast path is probed again after this, then after twice as long each time
/// it fails, up to `REPROBE_MAX`: a pod that turns GRO on (or a peer node whose switch starts
/// after ours) joins by itself, and one that never does costs a netlink query now and then
/// (8 probe frames where the kernel cannot say: `napi_probe`).
const REPROBE_FIRST: Duration = Duration::from_secs(1);
const REPROBE_MAX: Duration = Duration::from_secs(30);
/// How long a port that left the fast path for an MTU change waits for its probe: past the
/// workers' next harvest (once a second), so that what the fast path sent it before it left
/// is counted before `check_fast_egress` takes its baseline again.
const MTU_REPROBE: Duration = Duration::from_millis(1500);

/// Queues the spare's XSKMAP has room for; a port with more loads its own program.
const SPARE_QUEUES: u32 = 64;

/// A probe's answer: whether port `port`, as attached by `attachment`, takes redirected frames.
struct Probed {
    port: PortId,
    attachment: u64,
    takes: bool,
    /// The port's MTU when the probe began.
    mtu: Option<u32>,
}

struct SegmentSlot {
    handle: UmemHandle,
    /// The sockets placed on it (a port's queues on this worker, one each).
    sockets: u32,
}

/// The sockets worker `w` opens for a port whose queues `owners` poll.
fn sockets_on(owners: &[usize], w: usize) -> u32 {
    owners.iter().filter(|&&o| o == w).count() as u32
}

/// What became of a worker, at stop.
pub enum WorkerEnd {
    Stopped(WorkerReport),
    /// It panicked; the panic's message.
    Panicked(String),
}

/// The workers `start` has spawned so far: stopped and joined if it gives up half way.
struct Started {
    stop: Arc<AtomicBool>,
    workers: Vec<WorkerHandle>,
}

impl Drop for Started {
    fn drop(&mut self) {
        // Empty when `start` succeeded: the workers are the datapath's, and so is the flag.
        if !self.workers.is_empty() {
            stop_workers(&self.stop, &mut self.workers);
        }
    }
}

/// Tells every worker to stop and waits for those still running.
fn stop_workers(stop: &AtomicBool, workers: &mut [WorkerHandle]) -> Vec<WorkerEnd> {
    stop.store(true, Ordering::Relaxed);
    workers
        .iter_mut()
        .filter_map(|w| w.thread.take())
        .map(|t| match t.join() {
            Ok(report) => WorkerEnd::Stopped(report),
            Err(payload) => WorkerEnd::Panicked(
                payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".into()),
            ),
        })
        .collect()
}

/// A running datapath. Dropped without `stop` (a `start` that failed attaching its ports), its
/// workers are stopped all the same.
pub struct Datapath {
    pub stats: Vec<Arc<WorkerStats>>,
    /// The tables the gateway's workers share (for reloads), in gateway mode.
    pub gateway: Option<Arc<GatewayShared>>,
    /// The time base of every worker (`now_ms` counts from it).
    pub epoch: Instant,
    /// Worker cores, as configured (`None`: unpinned).
    pub cores: Vec<Option<usize>>,
    segment_frames: u32,
    max_segments: usize,
    /// Where the process's other threads run (empty: anywhere).
    pub housekeeping_cores: Vec<usize>,
    xdp_mode: XdpMode,
    /// The NAPI-loss watches are off (a port attached in generic mode): taken afresh when it
    /// is gone.
    watches_off: bool,
    rings: RingSizes,
    busy_poll: bool,
    /// The fast path's maps (`None`: off).
    fast: Option<Arc<FastPath>>,
    ports: Vec<Option<LivePort>>,
    /// Ids no new port gets (`reserve_id`).
    reserved: Vec<PortId>,
    workers: Vec<WorkerHandle>,
    stop: Arc<AtomicBool>,
    probes: (Sender<Probed>, Receiver<Probed>),
    next_attachment: u64,
    spare: Option<JoinHandle<io::Result<Spare>>>,
}

impl Datapath {
    pub fn start(config: &DatapathConfig) -> Result<Datapath, DatapathError> {
        let ports = validate(config)?;
        netdev::raise_memlock_limit();
        // Before the workers start: they pin themselves, everything else stays off their cores.
        let pinned: Vec<usize> = config.workers.iter().flatten().copied().collect();
        let housekeeping_cores = crate::housekeeping::keep_off_worker_cores(&pinned);
        let nworkers = config.workers.len();
        // Channels between workers: frame handoffs and learned addresses.
        let (handoff_tx, handoff_rx): (Vec<Sender<Handoff>>, Vec<Receiver<Handoff>>) =
            (0..nworkers).map(|_| bounded(HANDOFF_QUEUE)).unzip();
        let (learn_tx, learn_rx): (Vec<Sender<LearnEvent>>, Vec<Receiver<LearnEvent>>) =
            (0..nworkers).map(|_| bounded(LEARN_QUEUE)).unzip();
        let stop = Arc::new(AtomicBool::new(false));
        // One clock for every worker: they stamp entries of the tables they share.
        let epoch = Instant::now();
        let mut bridge_config = match &config.gateway {
            Some(gw) => gw.pod_bridge(&config.bridge),
            None => config.bridge.clone(),
        };
        bridge_config.announce_learning = nworkers > 1;
        let gateway = config.gateway.as_ref().map(GatewayShared::new);
        let mut stats = Vec::new();
        let mut started = Started {
            stop: stop.clone(),
            workers: Vec::new(),
        };
        // The budget bounds the first segment too.
        let frames = config
            .segment_frames
            .min(config.max_frames_per_worker)
            .max(1024);
        let fast = match config.fast_path {
            true => Some(Arc::new(
                FastPath::new(match config.gateway {
                    Some(_) => FlowTable::Tuple,
                    None => FlowTable::L2,
                })
                .map_err(setup("creating the fast path's maps"))?,
            )),
            false => None,
        };
        for (w, (handoff_in, learn_in)) in handoff_rx.into_iter().zip(learn_rx).enumerate() {
            let (umem, pool) =
                Umem::new(frames).map_err(setup(format!("worker {w}: mapping its UMEM")))?;
            let (commands_tx, commands) = bounded(COMMAND_QUEUE);
            let worker_stats = Arc::new(WorkerStats::new());
            stats.push(worker_stats.clone());
            let handle = umem.handle();
            let worker_setup = WorkerSetup {
                id: w,
                core: config.workers[w],
                poll: config.poll,
                busy_poll: config.busy_poll,
                umem,
                pool,
                handoff_in,
                learn_out: learn_tx
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != w)
                    .map(|(_, s)| s.clone())
                    .collect(),
                learn_in,
                commands,
                pipeline: match &gateway {
                    Some(shared) => Pipeline::Gateway(Box::new(Gateway::new(
                        shared.clone(),
                        Bridge::new(&bridge_config),
                    ))),
                    None => Pipeline::Bridge(Bridge::new(&bridge_config)),
                },
                leader: w == 0,
                stats: worker_stats,
                fast: fast.clone(),
                stop: stop.clone(),
                epoch,
            };
            let thread = std::thread::Builder::new()
                .name(format!("vswitch-pmd{w}"))
                .spawn(move || Worker::new(worker_setup).run())
                .map_err(setup(format!("starting worker {w}")))?;
            started.workers.push(WorkerHandle {
                commands: commands_tx,
                handoff: handoff_tx[w].clone(),
                segments: vec![SegmentSlot { handle, sockets: 0 }],
                thread: Some(thread),
            });
        }
        let mut dp = Datapath {
            stats,
            gateway,
            epoch,
            cores: config.workers.clone(),
            segment_frames: frames,
            max_segments: (config.max_frames_per_worker / frames).max(1) as usize,
            housekeeping_cores,
            xdp_mode: config.xdp_mode,
            watches_off: false,
            rings: config.rings,
            busy_poll: config.busy_poll,
            fast,
            ports: (0..MAX_PORTS).map(|_| None).collect(),
            reserved: Vec::new(),
            workers: std::mem::take(&mut started.workers),
            stop,
            probes: crossbeam_channel::unbounded(),
            next_attachment: 0,
            spare: None,
        };
        dp.prepare_spare();
        // Initial ports get the ids 0, 1, ... in order (the config file's uplink id relies on it).
        for info in ports {
            dp.add_port_info(info, |_| None)?;
        }
        Ok(dp)
    }

    /// Milliseconds since the workers' epoch, as they stamp their tables.
    pub fn now_ms(&self) -> u64 {
        crate::worker::now_ms(self.epoch)
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Whether the XDP fast path is on.
    pub fn fast_path(&self) -> bool {
        self.fast.is_some()
    }

    /// The attached ports, by id.
    pub fn ports(&self) -> impl Iterator<Item = (PortId, &LivePort)> {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i as PortId, p)))
    }

    pub fn port(&self, id: PortId) -> Option<&LivePort> {
        self.ports.get(id as usize).and_then(|p| p.as_ref())
    }

    pub fn port_id(&self, name: &str) -> Option<PortId> {
        self.ports()
            .find(|(_, p)| p.info.name == name)
            .map(|(id, _)| id)
    }

    /// Attaches the interface `name` as a new port (the lowest free id) while the workers
    /// run. `setup` is called with the id before the port's program is attached; the job it
    /// returns runs on every worker first (a binding, a flood domain).
    pub fn add_port(
        &mut self,
        name: &str,
        setup: impl FnOnce(PortId) -> Option<SharedJob>,
    ) -> Result<PortId, DatapathError> {
        if self.port_id(name).is_some() {
            return Err(DatapathError::PortPresent(name.into()));
        }
        let info = port_info(name)?;
        self.add_port_info(info, setup)
    }

    fn least_loaded_worker(&self) -> usize {
        let mut load = vec![0usize; self.workers.len()];
        for (_, p) in self.ports() {
            for &w in &p.owners {
                load[w] += 1;
            }
        }
        (0..load.len()).min_by_key(|&w| (load[w], w)).unwrap_or(0)
    }

    fn add_port_info(
        &mut self,
        info: PortInfo,
        setup_job: impl FnOnce(PortId) -> Option<SharedJob>,
    ) -> Result<PortId, DatapathError> {
        let free = |(i, p): &(usize, &Option<LivePort>)| {
            p.is_none() && !self.reserved.contains(&(*i as PortId))
        };
        let Some(id) = self.ports.iter().enumerate().find(free).map(|(i, _)| i) else {
            return Err(DatapathError::TooManyPorts {
                ports: MAX_PORTS + 1,
                limit: MAX_PORTS,
            });
        };
        let port = id as PortId;
        let nworkers = self.workers.len();
        // With as many queues as workers, worker w gets queue w (every worker transmits on
        // the port without a copy); with fewer, the least loaded workers get them.
        let owners = queue_owners(info.queues, nworkers, self.least_loaded_worker());
        // Each worker polling a queue of it puts its sockets on a segment with room (a new one
        // if none has any and the budget allows).
        let mut workers: Vec<usize> = owners.clone();
        workers.sort_unstable();
        workers.dedup();
        let mut placed = Vec::new();
        let mut new_segments: Vec<Option<Segment>> = (0..nworkers).map(|_| None).collect();
        for &w in &workers {
            match self.place(w, sockets_on(&owners, w)) {
                Ok((handle, segment)) => {
                    new_segments[w] = segment;
                    placed.push((w, handle));
                }
                Err(e) => {
                    self.unplace_all(&placed, &owners);
                    return Err(setup(format!("worker {w}: mapping a frame memory segment"))(e));
                }
            }
        }
        // Sockets and the program first; nothing reaches them until the program is attached.
        let spare = self.take_spare(info.queues);
        let opened = match spare {
            Some(spare) => Ok((spare.map, Some(spare.prog))),
            None => XskMap::create(info.queues)
                .map(|map| (map, None))
                .map_err(setup(format!("creating the XSKMAP of {}", info.name))),
        }
        .and_then(|(map, prog)| {
            let sockets = self.open_sockets(&info, &owners, &placed, &map)?;
            let prog = match (prog, &self.fast) {
                (Some(prog), _) => prog,
                (None, Some(fast)) => fast
                    .program(&map)
                    .map_err(setup(format!("loading the XDP program for {}", info.name)))?,
                (None, None) => RedirectProgram::load(&map)
                    .map_err(setup(format!("loading the XDP program for {}", info.name)))?,
            };
            Ok((map, sockets, prog))
        });
        let (map, sockets, prog) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                self.unplace_all(&placed, &owners);
                return Err(e);
            }
        };
        // The workers learn of the port (and run `setup`'s job) before any frame arrives.
        let job = setup_job(port);
        let mut acks = Vec::new();
        let mut failed = None;
        for (w, (socks, segment)) in sockets.into_iter().zip(new_segments).enumerate() {
            let (done, ack) = bounded(1);
            let remote = socks
                .is_empty()
                .then(|| self.workers[owners[0]].handoff.clone());
            let job = job.clone();
            let sent = match job {
                Some(job) => self.send(w, Command::Pipeline(Box::new(move |p, now| job(p, now)))),
                None => Ok(()),
            }
            .and_then(|()| {
                self.send(
                    w,
                    Command::AddPort {
                        port,
                        ifindex: info.ifindex,
                        mtu: info.mtu,
                        segment,
                        sockets: socks,
                        remote,
                        done,
                    },
                )
            });
            if let Err(e) = sent {
                failed = Some(e);
                break;
            }
            acks.push((w, ack));
        }
        if failed.is_none() {
            failed = acks
                .iter()
                .find(|(_, ack)| ack.recv_timeout(WORKER_ANSWER).is_err())
                .map(|(w, _)| DatapathError::WorkerGone(*w));
        }
        let told: Vec<usize> = acks.iter().map(|(w, _)| *w).collect();
        if failed.is_some() {
            // The workers not told never got their segment: forget it here too, or the next
            // port would open sockets on memory no worker has.
            let untold: Vec<(usize, UmemHandle)> = placed
                .iter()
                .filter(|(pw, _)| !told.contains(pw))
                .cloned()
                .collect();
            self.unplace_all(&untold, &owners);
        }
        self.next_attachment += 1;
        self.ports[id] = Some(LivePort {
            info,
            mode: self.xdp_mode,
            owners,
            since: Instant::now(),
            segments: placed
                .iter()
                .filter(|(w, _)| told.contains(w))
                .map(|(w, h)| (*w, h.id()))
                .collect(),
            fast_egress: None,
            attachment: self.next_attachment,
            fast_watch: None,
            reprobe: None,
            probe_wait: REPROBE_FIRST,
            joined_at: None,
            link: None,
            map: Some(map),
        });
        if let Some(e) = failed {
            // The workers told have the port's sockets (or will, in order): take it out again
            // as a port that came, or its sockets keep the queues and its id goes to the next.
            let _ = self.del_port(port, |_| None);
            return Err(e);
        }
        let live = self.ports[id].as_ref().expect("just set");
        match attach(&prog, &live.info, self.xdp_mode) {
            Ok(link) => {
                let live = self.ports[id].as_mut().expect("just set");
                live.mode = link.mode;
                live.link = Some(link);
                if self.fast.is_some() {
                    self.probe(port);
                }
                Ok(port)
            }
            Err(e) => {
                let _ = self.del_port(port, |_| None);
                Err(e)
            }
        }
    }

    /// Finds out, beside everything else, whether the port takes frames the fast path would
    /// redirect into it; `apply_probes` acts on the answer.
    fn probe(&mut self, port: PortId) {
        let Some(live) = self.ports.get_mut(port as usize).and_then(|l| l.as_mut()) else {
            return;
        };
        // Not due again while this one is out: its answer schedules the next.
        live.reprobe = None;
        let (name, ifindex, attachment) =
            (live.info.name.clone(), live.info.ifindex, live.attachment);
        let all_generic = self.xdp_mode == XdpMode::Generic;
        let answer = self.probes.0.clone();
        let spawned = std::thread::Builder::new()
            .name("vswitch-probe".into())
            .spawn(move || {
                // Read first: a change during the probe is a change since it.
                let mtu = netdev::mtu(&name).ok();
                let takes = napi_probe::takes_redirected_frames(&name, ifindex, all_generic)
                    .unwrap_or(false);
                let _ = answer.send(Probed {
                    port,
                    attachment,
                    takes,
                    mtu,
                });
            });
        if spawned.is_err() {
            // No thread: a failed probe, tried again later.
            let _ = self.probes.0.send(Probed {
                port,
                attachment,
                takes: false,
                mtu: None,
            });
        }
    }

    /// Overlay legs (distinct outer VXLAN headers) the fast path's flows use now.
    pub fn fast_path_overlay_legs(&self) -> usize {
        self.fast.as_ref().map_or(0, |f| f.legs_in_use())
    }

    /// Probes again the ports off the fast path whose time has come (see `REPROBE_FIRST`).
    pub fn reprobe_due(&mut self) {
        if self.fast.is_none() {
            return;
        }
        let now = Instant::now();
        let due: Vec<PortId> = self
            .ports
            .iter()
            .enumerate()
            .filter_map(|(id, slot)| {
                let at = slot.as_ref()?.reprobe?;
                (now >= at).then_some(id as PortId)
            })
            .collect();
        for port in due {
            self.probe(port);
        }
    }

    /// Ports probed since the last call join the fast path's egress ports if they take
    /// redirected frames; returns each (name, whether it joined) whose state changed (a port
    /// that fails again is probed later, quietly). An answer about an earlier attachment (the
    /// port was removed, maybe added again, meanwhile) is dropped.
    pub fn apply_probes(&mut self) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        while let Ok(p) = self.probes.1.try_recv() {
            let Some(fast) = &self.fast else { continue };
            let Some(live) = self.ports.get_mut(p.port as usize).and_then(|l| l.as_mut()) else {
                continue;
            };
            if live.attachment != p.attachment || live.fast_egress == Some(true) {
                continue;
            }
            // Given for an MTU the port no longer has (`check_mtus` saw the change): asked again
            // at the next round. An answer without an MTU is a failed probe.
            if p.mtu.is_some_and(|m| m != live.info.mtu) {
                live.reprobe = Some(Instant::now());
                continue;
            }
            // Baselines first: nothing is redirected to it before it joins.
            let watch = napi_watch(&self.stats, self.xdp_mode, p.port as usize, live);
            // The workers' limit (the kernel's devmap check is the same).
            let max_frame = live.info.mtu.min(MAX_MTU) + L2_OVERHEAD;
            let joined = p.takes
                && p.mtu.is_some()
                && fast
                    .add_port(p.port as u32, live.info.ifindex, max_frame)
                    .is_ok();
            let changed = live.fast_egress != Some(joined);
            live.fast_egress = Some(joined);
            live.fast_watch = watch.filter(|_| joined);
            if joined {
                live.joined_at = Some(Instant::now());
            } else {
                live.schedule_probe();
            }
            if changed {
                out.push((live.info.name.clone(), joined));
            }
        }
        out
    }

    /// Takes out of the fast path's egress ports a veth whose other end lost its NAPI since it
    /// joined (GRO turned off, its XDP program removed): the fast path has sent it clearly
    /// more than its XDP transmit took, the rest dropped uncounted. Its frames go by the
    /// workers from then on. Returns the ports taken out. (What the fast path sent is read
    /// from the workers' harvest, which lags what the transmit counts: it can only look
    /// smaller, never larger, so a port that takes everything is never taken out.)
    pub fn check_fast_egress(&mut self) -> Vec<String> {
        let Some(fast) = &self.fast else {
            return Vec::new();
        };
        // A port attached in generic mode (auto mode's fallback) redirects through the veth's
        // ordinary transmit, which its XDP transmit count does not see: nothing to compare
        // while one is attached (and the baselines taken meanwhile would be wrong after).
        if self
            .ports
            .iter()
            .flatten()
            .any(|p| p.mode == XdpMode::Generic)
        {
            for live in self.ports.iter_mut().flatten() {
                live.fast_watch = None;
            }
            self.watches_off = true;
            return Vec::new();
        }
        if std::mem::take(&mut self.watches_off) {
            for (id, slot) in self.ports.iter_mut().enumerate() {
                if let Some(live) = slot.as_mut().filter(|l| l.fast_egress == Some(true)) {
                    live.fast_watch = napi_watch(&self.stats, self.xdp_mode, id, live);
                }
            }
        }
        let mut out = Vec::new();
        for (id, slot) in self.ports.iter_mut().enumerate() {
            let Some(live) = slot.as_mut() else { continue };
            let Some((sent0, taken0)) = live.fast_watch else {
                continue;
            };
            let sent: u64 = self
                .stats
                .iter()
                .map(|w| w.port(id, PortCounter::FastPathTxPackets))
                .sum::<u64>()
                .saturating_sub(sent0);
            if sent < LOST_NAPI_FRAMES {
                continue;
            }
            let Ok(taken) = netdev::veth_xdp_taken(&live.info.name) else {
                continue;
            };
            if taken < taken0 {
                // The count went back (the peer's receive queues shrank: their counts go with
                // them): judged from here on, not as frames lost.
                live.fast_watch = Some((sent0 + sent, taken));
                continue;
            }
            let missing = sent.saturating_sub(taken - taken0);
            if missing >= LOST_NAPI_FRAMES {
                let _ = fast.del_port(id as u32);
                live.fast_egress = Some(false);
                live.fast_watch = None;
                // Taken out soon after joining: it is flapping, so the waits keep growing.
                if live.joined_at.is_none_or(|t| t.elapsed() >= REPROBE_MAX) {
                    live.probe_wait = REPROBE_FIRST;
                }
                live.schedule_probe();
                out.push(live.info.name.clone());
            }
        }
        out
    }

    /// Follows changes of the ports' MTUs: the workers transmit and the pipeline answers by
    /// the new one, and whether a port takes the fast path's redirects is probed again, since
    /// a driver's answer depends on the MTU (frames of several buffers need `NDO_XMIT_SG`).
    /// A port on the fast path leaves it and is probed after `MTU_REPROBE` (its frames go by
    /// the workers meanwhile); one off it is probed at the next round. Returns each changed
    /// port with its old and new MTU. Above `MAX_MTU` the workers forward frames of at most
    /// `MAX_MTU` (the caller says so).
    pub fn check_mtus(&mut self) -> Vec<(String, u32, u32)> {
        let changed: Vec<(usize, u32)> = (self.ports.iter().enumerate())
            .filter_map(|(id, slot)| {
                let live = slot.as_ref()?;
                let mtu = netdev::mtu(&live.info.name).ok()?;
                (mtu != live.info.mtu).then_some((id, mtu))
            })
            .collect();
        let mut out = Vec::new();
        for (id, new) in changed {
            let mtu = new.min(MAX_MTU);
            let port = id as PortId;
            let told = (0..self.workers.len())
                .filter(|&w| self.send(w, Command::SetPortMtu { port, mtu }).is_ok())
                .count();
            let Some(live) = self.ports[id].as_mut() else {
                continue;
            };
            if told < self.workers.len() {
                // Left as it was: seen as a change again at the next check.
                continue;
            }
            let old = std::mem::replace(&mut live.info.mtu, new);
            out.push((live.info.name.clone(), old, new));
            let Some(fast) = &self.fast else { continue };
            live.probe_wait = REPROBE_FIRST;
            if live.fast_egress == Some(true) {
                let _ = fast.del_port(id as u32);
                live.fast_egress = Some(false);
                live.fast_watch = None;
                live.reprobe = Some(Instant::now() + MTU_REPROBE);
            } else if live.reprobe.is_some() {
                live.reprobe = Some(Instant::now());
            }
            // Else a probe is out: its answer, given for the old MTU, asks again.
        }
        out
    }

    /// The segment worker `w` puts a new port's `sockets` on, and the segment itself when it
    /// is a new one (to be handed to the worker with the port). Segments count sockets, not
    /// ports: each socket keeps frames lent to its fill ring even while quiet.
    fn place(&mut self, w: usize, sockets: u32) -> io::Result<(UmemHandle, Option<Segment>)> {
        let per_segment = sockets_per_segment(self.segment_frames);
        let slots = &mut self.workers[w].segments;
        if let Some(slot) = slots
            .iter_mut()
            .find(|s| s.sockets + sockets <= per_segment)
        {
            slot.sockets += sockets;
            return Ok((slot.handle.clone(), None));
        }
        if slots.len() < self.max_segments {
            let segment = Segment::new(self.segment_frames)?;
            let handle = segment.handle();
            slots.push(SegmentSlot {
                handle: handle.clone(),
                sockets,
            });
            return Ok((handle, Some(segment)));
        }
        // The budget is reached: the least used segment takes them.
        let slot = slots
            .iter_mut()
            .min_by_key(|s| s.sockets)
            .ok_or_else(|| io::Error::other("the worker has no frame memory"))?;
        slot.sockets += sockets;
        Ok((slot.handle.clone(), None))
    }

    /// A port's `sockets` left segment `id` of worker `w`; returns whether the segment is now
    /// unused and forgotten here (never the first), for the worker to unmap.
    fn unplace(&mut self, w: usize, id: u32, sockets: u32) -> bool {
        let slots = &mut self.workers[w].segments;
        let Some(i) = slots.iter().position(|s| s.handle.id() == id) else {
            return false;
        };
        slots[i].sockets = slots[i].sockets.saturating_sub(sockets);
        if i > 0 && slots[i].sockets == 0 {
            slots.remove(i);
            return true;
        }
        false
    }

    /// Undoes `place` for a port that did not come (its new segments were never handed over).
    fn unplace_all(&mut self, placed: &[(usize, UmemHandle)], owners: &[usize]) {
        for (w, handle) in placed {
            self.unplace(*w, handle.id(), sockets_on(owners, *w));
        }
    }

    /// The port's sockets, per worker, each on the segment placed for it, in its XSKMAP.
    fn open_sockets(
        &self,
        info: &PortInfo,
        owners: &[usize],
        placed: &[(usize, UmemHandle)],
        map: &XskMap,
    ) -> Result<Vec<Vec<PortSocket>>, DatapathError> {
        let mut sockets: Vec<Vec<PortSocket>> =
            (0..self.workers.len()).map(|_| Vec::new()).collect();
        for (q, &w) in owners.iter().enumerate() {
            let q = q as u32;
            let name = &info.name;
            let Some((_, segment)) = placed.iter().find(|(pw, _)| *pw == w) else {
                continue;
            };
            let sock = PortSocket::open(segment, name, q, self.rings).map_err(setup(format!(
                "opening an AF_XDP socket on {name} queue {q}"
            )))?;
            if self.busy_poll {
                sock.enable_busy_poll(BUSY_POLL_USECS, BUSY_POLL_BUDGET)
                    .map_err(setup(format!("enabling busy polling on {name} queue {q}")))?;
            }
            map.insert(q, sock.raw_fd())
                .map_err(setup(format!("registering {name} queue {q}")))?;
            sockets[w].push(sock);
        }
        Ok(sockets)
    }

    /// Loads the fast path's program for the next port on a thread of its own.
    fn prepare_spare(&mut self) {
        let Some(fast) = self.fast.clone() else {
            return;
        };
        self.spare = std::thread::Builder::new()
            .name("vswitch-spare".into())
            .spawn(move || {
                let map = XskMap::create(SPARE_QUEUES)?;
                let prog = fast.program(&map)?;
                Ok(Spare { map, prog })
            })
            .ok();
    }

    /// The program loaded ahead, if it fits a port of `queues` queues (waiting for it if it
    /// is still being loaded); the next one starts loading.
    fn take_spare(&mut self, queues: u32) -> Option<Spare> {
        if queues > SPARE_QUEUES {
            return None;
        }
        let spare = self.spare.take()?.join().ok()?.ok();
        self.prepare_spare();
        spare
    }

    fn send(&self, w: usize, command: Command) -> Result<(), DatapathError> {
        self.workers[w]
            .commands
            .send_timeout(command, WORKER_ANSWER)
            .map_err(|_| DatapathError::WorkerGone(w))
    }

    /// Runs `job` on every worker's pipeline between two of its passes; returns once each
    /// has (or a worker failed to answer in time).
    pub fn on_workers<R: Send + 'static>(
        &self,
        job: impl Fn(&mut Pipeline, u64) -> R + Send + Sync + 'static,
    ) -> Result<Vec<R>, DatapathError> {
        let job = Arc::new(job);
        self.ask_workers(|tx| {
            let job = job.clone();
            Command::Pipeline(Box::new(move |p, now| {
                let _ = tx.try_send(job(p, now));
            }))
        })
    }

    /// Has every worker publish its counters now (they do once a second by themselves).
    pub fn refresh_stats(&self) {
        let _ = self.ask_workers(|done| Command::Publish { done });
    }

    /// Sends every worker the command `command` makes of an answer channel, then waits for
    /// each answer (or a worker failed to take or answer it in time).
    fn ask_workers<R>(
        &self,
        command: impl Fn(Sender<R>) -> Command,
    ) -> Result<Vec<R>, DatapathError> {
        let mut answers = Vec::new();
        // Every worker is asked, also past one that cannot be: the others must not miss it.
        let mut unsent = None;
        for w in 0..self.workers.len() {
            let (tx, rx) = bounded(1);
            match self.send(w, command(tx)) {
                Ok(()) => answers.push((w, rx)),
                Err(e) => {
                    unsent.get_or_insert(e);
                }
            }
        }
        let answered: Result<Vec<R>, DatapathError> = answers
            .into_iter()
            .map(|(w, rx)| {
                rx.recv_timeout(WORKER_ANSWER)
                    .map_err(|_| DatapathError::WorkerGone(w))
            })
            .collect();
        match unsent {
            Some(e) => Err(e),
            None => answered,
        }
    }

    /// Asks worker `w` alone (e.g. its forwarding table).
    pub fn on_worker<R: Send + 'static>(
        &self,
        w: usize,
        job: impl FnOnce(&mut Pipeline, u64) -> R + Send + 'static,
    ) -> Result<R, DatapathError> {
        let (tx, rx) = bounded(1);
        self.send(
            w,
            Command::Pipeline(Box::new(move |p, now| {
                let _ = tx.try_send(job(p, now));
            })),
        )?;
        rx.recv_timeout(WORKER_ANSWER)
            .map_err(|_| DatapathError::WorkerGone(w))
    }

    /// Copies of port `port`'s frames, both directions, to `to`, until `to`'s receiver goes.
    pub fn capture(
        &self,
        port: PortId,
        to: Sender<crate::worker::Captured>,
        state: Arc<crate::worker::CaptureState>,
    ) -> Result<(), DatapathError> {
        for w in 0..self.workers.len() {
            let sent = self.send(
                w,
                Command::Capture(crate::worker::Capture {
                    port,
                    to: to.clone(),
                    state: state.clone(),
                }),
            );
            if sent.is_err() {
                // The workers told so far let it go.
                state.ended.store(true, Ordering::Relaxed);
            }
            sent?;
        }
        Ok(())
    }

    /// Removes a port while the workers run: its program is detached, every worker stops
    /// using it and forgets what it learned there (FDB entries; for the gateway its
    /// neighbours and their connections), `teardown`'s job runs on every worker, and once
    /// the owners have their transmitted frames home the sockets are closed and the frames
    /// they still held return to the pools.
    pub fn del_port(
        &mut self,
        port: PortId,
        teardown: impl FnOnce(PortId) -> Option<SharedJob>,
    ) -> Result<ForgottenPort, DatapathError> {
        let Some(mut live) = self.ports.get_mut(port as usize).and_then(|p| p.take()) else {
            return Err(DatapathError::NoSuchPort(port.to_string()));
        };
        // Nothing leaves by the fast path any more.
        if let Some(fast) = &self.fast {
            let _ = fast.del_port(port as u32);
        }
        // Detaching the program waits for an RCU grace period (veth takes down its NAPI), and
        // so does closing a socket: the detach runs beside the workers' retirement and the
        // sockets' close. A closed socket is out of the XSKMAP before its close returns (what
        // the still-attached program gets meanwhile goes to the stack), but the frames come
        // home only after the detach too: in zero-copy mode the driver gives up the frames
        // posted to its rings when the program goes, not when the socket closes.
        let link = live.link.take();
        // Without a thread (none could be made) the closure is dropped at once, and with it
        // the link: the detach then runs here first, only slower.
        let detach = std::thread::Builder::new()
            .name("vswitch-detach".into())
            .spawn(move || drop(link))
            .ok();
        let (forgotten, to_reclaim, mut result) = self.retire_port(port, &mut live, teardown);
        if let Some(detach) = detach {
            let _ = detach.join();
        }
        for (w, tags) in to_reclaim {
            let (done, reclaimed) = bounded(1);
            let answered = self
                .send(w, Command::Reclaim { tags, done })
                .and_then(|()| {
                    reclaimed
                        .recv_timeout(WORKER_ANSWER)
                        .map_err(|_| DatapathError::WorkerGone(w))
                });
            if let Err(e) = answered {
                result = Err(e);
            }
        }
        // A segment whose last port this was goes (the worker unmaps it once its frames are
        // all home: they are, unless a copy is still on its way out).
        for &(w, id) in &live.segments {
            if self.unplace(w, id, sockets_on(&live.owners, w)) {
                if let Err(e) = self.send(w, Command::DropSegment { id }) {
                    result = Err(e);
                }
            }
        }
        result?;
        Ok(forgotten
            .iter()
            .fold(ForgottenPort::default(), |a, f| ForgottenPort {
                fdb_entries: a.fdb_entries.max(f.fdb_entries),
                neighbors: a.neighbors + f.neighbors,
                flows: a.flows + f.flows,
            }))
    }

    /// `del_port` while the program's detach runs: the workers stop using the port and forget
    /// it, and its sockets are closed. Returns what each worker forgot, per worker the tags of
    /// the closed sockets whose frames are to come home, and whether every worker answered.
    /// A worker that does not take a step does not stop the others from taking it (each
    /// would keep the port's sockets, or its addresses and flows, otherwise).
    #[allow(clippy::type_complexity)]
    fn retire_port(
        &mut self,
        port: PortId,
        live: &mut LivePort,
        teardown: impl FnOnce(PortId) -> Option<SharedJob>,
    ) -> (
        Vec<ForgottenPort>,
        Vec<(usize, Vec<u32>)>,
        Result<(), DatapathError>,
    ) {
        let mut answered = Ok(());
        let mut waits = Vec::new();
        for w in 0..self.workers.len() {
            let (done, back) = bounded(1);
            match self.send(w, Command::DelPort { port, done }) {
                Ok(()) => waits.push((w, back)),
                Err(e) => answered = Err(e),
            }
        }
        let forgotten = match self.on_workers(move |p, _| p.forget_port(port)) {
            Ok(forgotten) => forgotten,
            Err(e) => {
                answered = Err(e);
                Vec::new()
            }
        };
        if let Some(job) = teardown(port) {
            if let Err(e) = self.on_workers(move |p, now| job(p, now)) {
                answered = Err(e);
            }
        }
        let mut to_reclaim = Vec::new();
        for (w, back) in waits {
            let Ok(sockets) = back.recv_timeout(WORKER_ANSWER + Duration::from_secs(1)) else {
                answered = Err(DatapathError::WorkerGone(w));
                continue;
            };
            let tags: Vec<u32> = sockets.iter().map(|s| s.tag()).collect();
            // Our map descriptor goes, then the sockets close (the kernel stops using their
            // frames for receive and transmit when `close` returns).
            live.map = None;
            drop(sockets);
            if !tags.is_empty() {
                to_reclaim.push((w, tags));
            }
        }
        (forgotten, to_reclaim, answered)
    }

    /// Keeps `id` from new ports: a port whose id the pipeline's configuration names (the
    /// gateway's uplink) that went away; another port under its id would be taken for it.
    pub fn reserve_id(&mut self, id: PortId) {
        if !self.reserved.contains(&id) {
            self.reserved.push(id);
        }
    }

    /// Ports whose interface is gone (or was replaced by another of the same name) since it
    /// was attached.
    pub fn vanished_ports(&self) -> Vec<PortId> {
        // A lookup that fails for another reason than "no such interface" (out of
        // descriptors) says nothing: asked again at the next check.
        let gone = |p: &LivePort| match netdev::ifindex(&p.info.name) {
            Ok(index) => index != p.info.ifindex,
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        };
        self.ports()
            .filter(|(_, p)| gone(p))
            .map(|(id, _)| id)
            .collect()
    }

    /// Whether every worker thread is still running.
    pub fn workers_alive(&self) -> bool {
        self.workers
            .iter()
            .all(|w| w.thread.as_ref().is_some_and(|t| !t.is_finished()))
    }

    /// Stops the workers, detaches the programs and reports each worker's frames.
    pub fn stop(mut self) -> Vec<WorkerEnd> {
        self.shut_down()
    }

    /// Stops the workers and waits for them (those still running: a second call finds none).
    fn shut_down(&mut self) -> Vec<WorkerEnd> {
        self.stop.store(true, Ordering::Relaxed);
        // Detach first so nothing new arrives while the workers drain.
        for p in self.ports.iter_mut().flatten() {
            p.link = None;
        }
        stop_workers(&self.stop, &mut self.workers)
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Whether a thread of this process may run on `core`: tried on a thread of its own, as the
/// worker will pin itself. The kernel checks the core against the process's cpuset, not its
/// current affinity: cores kept from the scheduler (`isolcpus`, or a `taskset` the switch was
/// started under) are outside the latter, and are what a poll-mode worker is best given.
fn can_pin_to(core: usize) -> bool {
    // Beyond what an affinity mask holds (the pinning crate would index past it).
    if core >= libc::CPU_SETSIZE as usize {
        return false;
    }
    std::thread::Builder::new()
        .name("vswitch-pin-try".into())
        .spawn(move || core_affinity::set_for_current(core_affinity::CoreId { id: core }))
        .ok()
        .and_then(|t| t.join().ok())
        .unwrap_or(false)
}

fn attach(
    prog: &RedirectProgram,
    port: &PortInfo,
    mode: XdpMode,
) -> Result<XdpLink, DatapathError> {
    let explain = |e: io::Error, mode: XdpMode| {
        match e.raw_os_error() {
        Some(libc::EBUSY) | Some(libc::EEXIST) => DatapathError::XdpProgramPresent {
            port: port.name.clone(),
        },
        Some(libc::ENOSPC) => DatapathError::Setup {
            what: format!(
                "attaching the XDP program to {} in {mode} mode (a veth needs at least as many receive queues as its peer has transmit queues: see `ethtool -l`)",
                port.name
            ),
            source: e,
        },
        Some(libc::ERANGE) => DatapathError::MtuTooLargeForNative {
            port: port.name.clone(),
            mtu: port.mtu,
        },
        _ => DatapathError::Setup {
            what: format!("attaching the XDP program to {} in {mode} mode", port.name),
            source: e,
        },
    }
    };
    match mode {
        XdpMode::Native | XdpMode::Generic => {
            XdpLink::attach(prog, port.ifindex, mode).map_err(|e| explain(e, mode))
        }
        XdpMode::Auto => match XdpLink::attach(prog, port.ifindex, XdpMode::Native) {
            Ok(link) => Ok(link),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
                ) =>
            {
                XdpLink::attach(prog, port.ifindex, XdpMode::Generic)
                    .map_err(|e| explain(e, XdpMode::Generic))
            }
            Err(e) => Err(explain(e, XdpMode::Native)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A worker that spins until told to stop, then counts itself in `ended`.
    fn spinning(stop: &Arc<AtomicBool>, ended: &Arc<AtomicUsize>) -> WorkerHandle {
        let (stop, ended) = (stop.clone(), ended.clone());
        WorkerHandle {
            commands: bounded(1).0,
            handoff: bounded(1).0,
            segments: Vec::new(),
            thread: Some(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::yield_now();
                }
                ended.fetch_add(1, Ordering::Relaxed);
                WorkerReport {
                    worker: 0,
                    frames_total: 0,
                    frames_free: 0,
                    frames_in_fill: 0,
                    frames_in_tx: 0,
                    frames_refused: 0,
                }
            })),
        }
    }

    #[test]
    fn a_start_that_gives_up_stops_the_workers_it_spawned_and_only_then() {
        let stop = Arc::new(AtomicBool::new(false));
        let ended = Arc::new(AtomicUsize::new(0));
        let mut started = Started {
            stop: stop.clone(),
            workers: vec![spinning(&stop, &ended), spinning(&stop, &ended)],
        };
        // What a start that succeeds does: the workers become the datapath's.
        let handed_over = std::mem::take(&mut started.workers);
        drop(started);
        assert!(!stop.load(Ordering::Relaxed), "its workers keep running");
        let given_up = Started {
            stop: stop.clone(),
            workers: handed_over,
        };
        drop(given_up);
        assert_eq!(ended.load(Ordering::Relaxed), 2, "stopped and joined");
    }

    #[test]
    fn queues_go_to_the_least_loaded_worker_or_one_per_worker() {
        assert_eq!(queue_owners(1, 1, 0), [0]);
        assert_eq!(queue_owners(1, 2, 1), [1]);
        assert_eq!(queue_owners(4, 4, 2), [0, 1, 2, 3]);
        assert_eq!(queue_owners(4, 2, 1), [0, 1, 0, 1]);
        assert_eq!(queue_owners(2, 3, 2), [2, 0]);
    }

    #[test]
    fn bad_configs_name_the_value() {
        let mut config = DatapathConfig::default();
        assert!(
            validate(&config).unwrap().is_empty(),
            "ports can come later"
        );
        config.ports = vec!["lo".into(), "lo".into()];
        assert_eq!(
            validate(&config).unwrap_err().to_string(),
            "port \"lo\" is listed twice"
        );
        config.ports = vec!["lo".into(), "nosuch0".into()];
        assert!(validate(&config)
            .unwrap_err()
            .to_string()
            .contains("\"nosuch0\""));
        config.ports = (0..=MAX_PORTS).map(|i| format!("nosuch{i}")).collect();
        assert_eq!(
            validate(&config).unwrap_err().to_string(),
            "257 ports given, more than the 256 one switch supports (a flood set is one bit per port)"
        );
        config.ports = vec!["lo".into()];
        config.workers = vec![Some(100_000)];
        assert!(validate(&config)
            .unwrap_err()
            .to_string()
            .contains("core 100000"));
    }
}
