//! Builds the datapath from a port list: checks everything first, then opens sockets, loads and
//! attaches the XDP programs, and starts the workers. Stopping detaches and reports.

use crate::bpf::{RedirectProgram, XdpLink, XdpMode, XskMap};
use crate::netdev;
use crate::socket::PortSocket;
use crate::stats::WorkerStats;
use crate::umem::{RingSizes, Umem, MAX_FRAME_LEN};
use crate::worker::{Egress, Handoff, PollMode, Worker, WorkerReport, WorkerSetup};
use crossbeam_channel::{bounded, Receiver, Sender};
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
use std::time::Instant;

/// Ethernet header plus one VLAN tag and the FCS-less trailer room the MTU does not include.
const L2_OVERHEAD: u32 = 18;
/// The largest MTU whose frames fit a UMEM frame.
pub const MAX_MTU: u32 = MAX_FRAME_LEN - L2_OVERHEAD;
const HANDOFF_QUEUE: usize = 8192;
const BUSY_POLL_USECS: i32 = 20;
const BUSY_POLL_BUDGET: i32 = 64;
const LEARN_QUEUE: usize = 4096;

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
                "port {port:?} has MTU {mtu}, above the {MAX_MTU} a frame can hold (jumbo frames are not supported yet); lower it with `ip link set dev {port} mtu 1500`"
            ),
            DatapathError::MtuTooLargeForNative { port, mtu } => write!(
                f,
                "port {port:?}: the driver refuses native XDP at MTU {mtu} (ERANGE); lower the MTU or use --xdp-mode generic"
            ),
            DatapathError::NoWorkers => write!(f, "no worker cores given"),
            DatapathError::CoreNotAvailable { core, available } => {
                write!(f, "core {core} is not available to this process (available: {available:?})")
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

/// Checks ports and cores without changing anything.
pub fn validate(config: &DatapathConfig) -> Result<Vec<PortInfo>, DatapathError> {
    if config.ports.is_empty() {
        return Err(DatapathError::NoPorts);
    }
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
    let available: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut cores = HashSet::new();
    for core in config.workers.iter().flatten() {
        if !available.contains(core) {
            return Err(DatapathError::CoreNotAvailable {
                core: *core,
                available,
            });
        }
        if !cores.insert(*core) {
            return Err(DatapathError::DuplicateCore(*core));
        }
    }
    let mut ports = Vec::new();
    for name in &config.ports {
        let ifindex =
            netdev::ifindex(name).map_err(|_| DatapathError::PortNotFound(name.clone()))?;
        let mtu = netdev::mtu(name).map_err(setup(format!("reading the MTU of {name}")))?;
        if mtu > MAX_MTU {
            return Err(DatapathError::MtuTooLarge {
                port: name.clone(),
                mtu,
            });
        }
        let queues =
            netdev::rx_queues(name).map_err(setup(format!("reading the queues of {name}")))?;
        ports.push(PortInfo {
            name: name.clone(),
            ifindex,
            queues,
            mtu,
        });
    }
    let queues: usize = ports.iter().map(|p| p.queues as usize).sum();
    if config.workers.len() > queues {
        return Err(DatapathError::TooManyWorkers {
            workers: config.workers.len(),
            queues,
        });
    }
    Ok(ports)
}

/// Which worker polls each queue of each port. With as many queues as workers, worker `w`
/// gets queue `w` of every port, so every worker can transmit on every port without a copy;
/// with fewer, the ports are spread round-robin.
pub fn assign_queues(ports: &[PortInfo], workers: usize) -> Vec<Vec<usize>> {
    ports
        .iter()
        .enumerate()
        .map(|(p, info)| {
            (0..info.queues as usize)
                .map(|q| {
                    if info.queues as usize >= workers {
                        q % workers
                    } else {
                        (p + q) % workers
                    }
                })
                .collect()
        })
        .collect()
}

/// A running datapath.
pub struct Datapath {
    pub ports: Vec<PortInfo>,
    /// The mode each port's program ended up attached in.
    pub modes: Vec<XdpMode>,
    pub stats: Vec<Arc<WorkerStats>>,
    /// The tables the gateway's workers share (for reloads), in gateway mode.
    pub gateway: Option<Arc<GatewayShared>>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<WorkerReport>>,
    // Dropping these detaches the programs.
    links: Vec<XdpLink>,
    _maps: Vec<XskMap>,
}

struct WorkerParts {
    // Sockets first: they drop before the UMEM (see `WorkerSetup`).
    sockets: Vec<(PortId, PortSocket)>,
    umem: Umem,
    pool: crate::umem::FramePool,
}

impl Datapath {
    pub fn start(config: &DatapathConfig) -> Result<Datapath, DatapathError> {
        let ports = validate(config)?;
        netdev::raise_memlock_limit();
        let nworkers = config.workers.len();
        let owner = assign_queues(&ports, nworkers);

        // Sockets first: each worker's UMEM and the queues it owns.
        let mut parts = Vec::new();
        for w in 0..nworkers {
            let owned: Vec<(usize, u32)> = owner
                .iter()
                .enumerate()
                .flat_map(|(p, qs)| {
                    qs.iter()
                        .enumerate()
                        .filter(move |(_, &o)| o == w)
                        .map(move |(q, _)| (p, q as u32))
                })
                .collect();
            let rings = config.rings;
            let frames = owned.len() as u32 * (rings.fill + rings.rx + rings.tx) + 4096;
            let (umem, pool) = Umem::new(frames, rings)
                .map_err(setup(format!("worker {w}: creating its UMEM")))?;
            let mut sockets = Vec::new();
            for (i, &(p, q)) in owned.iter().enumerate() {
                let name = &ports[p].name;
                let sock = PortSocket::open(&umem, name, q, i == 0, rings).map_err(setup(
                    format!("opening an AF_XDP socket on {name} queue {q}"),
                ))?;
                if config.busy_poll {
                    sock.enable_busy_poll(BUSY_POLL_USECS, BUSY_POLL_BUDGET)
                        .map_err(setup(format!("enabling busy polling on {name} queue {q}")))?;
                }
                sockets.push((p as PortId, sock));
            }
            parts.push(WorkerParts {
                sockets,
                umem,
                pool,
            });
        }

        // Then the programs: each port's XSKMAP points its queues at their sockets.
        let mut maps = Vec::new();
        let mut links = Vec::new();
        let mut modes = Vec::new();
        for (p, info) in ports.iter().enumerate() {
            let map = XskMap::create(info.queues)
                .map_err(setup(format!("creating the XSKMAP of {}", info.name)))?;
            for part in &parts {
                for (port, sock) in &part.sockets {
                    if *port as usize == p {
                        map.insert(sock.queue, sock.raw_fd())
                            .map_err(setup(format!(
                                "registering {} queue {}",
                                info.name, sock.queue
                            )))?;
                    }
                }
            }
            let prog = RedirectProgram::load(&map)
                .map_err(setup(format!("loading the XDP program for {}", info.name)))?;
            let link = attach(&prog, info, config.xdp_mode)?;
            modes.push(link.mode);
            links.push(link);
            maps.push(map);
        }

        // Channels between workers: frame handoffs and learned addresses.
        let (handoff_tx, handoff_rx): (Vec<Sender<Handoff>>, Vec<Receiver<Handoff>>) =
            (0..nworkers).map(|_| bounded(HANDOFF_QUEUE)).unzip();
        let (learn_tx, learn_rx): (Vec<Sender<LearnEvent>>, Vec<Receiver<LearnEvent>>) =
            (0..nworkers).map(|_| bounded(LEARN_QUEUE)).unzip();

        let stop = Arc::new(AtomicBool::new(false));
        // One clock for every worker: they stamp entries of the tables they share.
        let epoch = Instant::now();
        let mut stats = Vec::new();
        let mut workers = Vec::new();
        let mut bridge_config = match &config.gateway {
            Some(gw) => gw.pod_bridge(&config.bridge),
            None => config.bridge.clone(),
        };
        bridge_config.announce_learning = nworkers > 1;
        let gateway = config.gateway.as_ref().map(GatewayShared::new);
        for (w, (part, (handoff_in, learn_in))) in parts
            .into_iter()
            .zip(handoff_rx.into_iter().zip(learn_rx))
            .enumerate()
        {
            let egress = (0..ports.len())
                .map(|p| {
                    match part
                        .sockets
                        .iter()
                        .position(|(port, _)| *port as usize == p)
                    {
                        Some(index) => Egress::Local(index),
                        None => Egress::Remote(handoff_tx[owner[p][0]].clone()),
                    }
                })
                .collect();
            let worker_stats = Arc::new(WorkerStats::new(ports.len()));
            stats.push(worker_stats.clone());
            let worker_setup = WorkerSetup {
                id: w,
                core: config.workers[w],
                poll: config.poll,
                busy_poll: config.busy_poll,
                umem: part.umem,
                pool: part.pool,
                sockets: part.sockets,
                egress,
                handoff_in,
                learn_out: learn_tx
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != w)
                    .map(|(_, s)| s.clone())
                    .collect(),
                learn_in,
                pipeline: match &gateway {
                    Some(shared) => Pipeline::Gateway(Box::new(Gateway::new(
                        shared.clone(),
                        Bridge::new(&bridge_config),
                    ))),
                    None => Pipeline::Bridge(Bridge::new(&bridge_config)),
                },
                leader: w == 0,
                stats: worker_stats,
                stop: stop.clone(),
                epoch,
            };
            let handle = std::thread::Builder::new()
                .name(format!("pmd{w}"))
                .spawn(move || Worker::new(worker_setup).run())
                .map_err(setup(format!("starting worker {w}")))?;
            workers.push(handle);
        }
        Ok(Datapath {
            ports,
            modes,
            stats,
            gateway,
            stop,
            workers,
            links,
            _maps: maps,
        })
    }

    /// Whether every worker thread is still running.
    pub fn workers_alive(&self) -> bool {
        self.workers.iter().all(|w| !w.is_finished())
    }

    /// Stops the workers, detaches the programs and reports each worker's frames.
    pub fn stop(mut self) -> Vec<WorkerReport> {
        self.stop.store(true, Ordering::Relaxed);
        // Detach first so nothing new arrives while the workers drain.
        self.links.clear();
        self.workers
            .drain(..)
            .filter_map(|w| w.join().ok())
            .collect()
    }
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

    fn port(name: &str, queues: u32) -> PortInfo {
        PortInfo {
            name: name.into(),
            ifindex: 1,
            queues,
            mtu: 1500,
        }
    }

    #[test]
    fn single_queue_ports_are_spread_over_workers() {
        let ports = [port("a", 1), port("b", 1), port("c", 1)];
        assert_eq!(assign_queues(&ports, 1), vec![vec![0], vec![0], vec![0]]);
        assert_eq!(assign_queues(&ports, 2), vec![vec![0], vec![1], vec![0]]);
    }

    #[test]
    fn multi_queue_ports_give_every_worker_a_queue_on_every_port() {
        let ports = [port("a", 4), port("b", 4)];
        assert_eq!(
            assign_queues(&ports, 4),
            vec![vec![0, 1, 2, 3], vec![0, 1, 2, 3]]
        );
        assert_eq!(
            assign_queues(&ports, 2),
            vec![vec![0, 1, 0, 1], vec![0, 1, 0, 1]]
        );
    }

    #[test]
    fn bad_configs_name_the_value() {
        let mut config = DatapathConfig::default();
        assert!(matches!(validate(&config), Err(DatapathError::NoPorts)));
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
