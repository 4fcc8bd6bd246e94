//! Command-line arguments, checked into a datapath configuration.

use crate::config::NodeConfig;
use clap::Parser;
use pipeline::l2::DEFAULT_FDB_PORT_LIMIT;
use pipeline::BridgeConfig;
use pmd::{DatapathConfig, PollMode, RingSizes, XdpMode};

#[derive(Debug, Parser)]
#[command(name = "vswitch", version, about = "A userspace AF_XDP virtual switch for a Kubernetes node", long_about = None)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["ports", "config"])))]
pub struct Args {
    /// Interfaces to switch between as one learning bridge, comma-separated (e.g. vp1,vp2,vp3).
    #[arg(long, value_name = "IF1,IF2,...", value_parser = parse_ports)]
    pub ports: Option<PortList>,

    /// A node config file: pod segment, gateway, uplink, routes, services (see
    /// examples/node.toml). SIGHUP reloads it.
    #[arg(long, value_name = "FILE", conflicts_with = "ports")]
    pub config: Option<std::path::PathBuf>,

    /// Cores for the poll-mode workers, one worker per core: a list and/or ranges (0,2-3).
    /// Default: one unpinned worker.
    #[arg(long, value_name = "LIST", value_parser = parse_cores)]
    pub cores: Option<CoreList>,

    /// Where the XDP program runs: native (in the driver), generic (skb path), or auto
    /// (native, falling back to generic). Default: auto.
    #[arg(long, value_name = "MODE")]
    pub xdp_mode: Option<XdpMode>,

    /// Idle policy: busy spins always; adaptive waits on the sockets after a run of empty polls.
    /// Default: adaptive.
    #[arg(long, value_name = "POLICY")]
    pub poll: Option<PollMode>,

    /// Preferred busy polling (SO_PREFER_BUSY_POLL): the worker runs its ports' receive NAPI
    /// itself, on its own core, instead of leaving it to softirq wherever it was raised.
    #[arg(long)]
    pub busy_poll: bool,

    /// Seconds before an unrefreshed MAC address is forgotten.
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=crate::config::MAX_FDB_AGE_S))]
    pub fdb_age: u64,

    /// Most MAC addresses learned; beyond it, frames to new addresses are flooded.
    #[arg(long, value_name = "N", default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    pub fdb_size: u64,

    /// Most MAC addresses learned on one port, so one pod cannot fill the table; beyond it,
    /// frames to new addresses from that port are flooded. Default: the config file's
    /// `fdb_port_limit`, else 1024.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    pub fdb_port_limit: Option<u64>,

    /// Print per-port rates every SECS seconds (0: only at exit).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub stats_interval: u64,

    /// The control socket `vswitch ctl` talks to (mode 0600: only this user, and root).
    #[arg(long, value_name = "PATH", default_value = crate::control::DEFAULT_SOCKET)]
    pub ctl: std::path::PathBuf,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (off by default).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,

    /// The XDP fast path: `xdp` lets the ports' XDP programs forward the flows the switch has
    /// decided (L2 flows; in gateway mode established conntrack flows, NAT included), to the
    /// ports that take redirected frames (probed: a veth needs GRO or an XDP program at its
    /// other end; see README). `off` sends every frame through the workers. Default: xdp, or
    /// `[node] fast_path`.
    #[arg(long, value_name = "MODE", value_parser = parse_fast_path)]
    pub fast_path: Option<bool>,

    /// The most frame memory a worker pins, in MiB: it maps it in segments as ports come
    /// (at least one segment).
    #[arg(long, value_name = "MIB", default_value_t = 256, value_parser = clap::value_parser!(u32).range(4..=16_384))]
    pub frame_memory: u32,

    /// The size of one frame memory segment, in MiB: a worker maps one at start and another
    /// when its segments hold 2 sockets per MiB each (a port has one per queue a worker polls;
    /// 64 on 32 MiB).
    #[arg(long, value_name = "MIB", default_value_t = 32, value_parser = clap::value_parser!(u32).range(4..=1_024))]
    pub frame_segment: u32,
}

#[derive(Debug, Clone)]
pub struct PortList(pub Vec<String>);

#[derive(Debug, Clone)]
pub struct CoreList(pub Vec<usize>);

fn mib_to_frames(mib: u32) -> u32 {
    (mib as u64 * (1 << 20) / pmd::FRAME_SIZE as u64) as u32
}

fn parse_fast_path(s: &str) -> Result<bool, String> {
    match s {
        "xdp" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("unknown fast path {other:?} (expected xdp or off)")),
    }
}

fn parse_ports(s: &str) -> Result<PortList, String> {
    if s.trim().is_empty() {
        return Err("the port list is empty".into());
    }
    let ports: Vec<String> = s.split(',').map(|p| p.trim().to_string()).collect();
    if let Some(i) = ports.iter().position(|p| p.is_empty()) {
        return Err(format!("port {} of {s:?} is empty", i + 1));
    }
    if let Some(p) = ports.iter().find(|p| p.len() > 15) {
        return Err(format!(
            "{p:?} is longer than an interface name can be (15 characters)"
        ));
    }
    Ok(PortList(ports))
}

/// Linux's most CPUs (`NR_CPUS` at its largest): a bound before a range is expanded.
const MAX_CORE: usize = 8191;

fn parse_core(s: &str, list: &str) -> Result<usize, String> {
    s.trim()
        .parse()
        .ok()
        .filter(|&c| c <= MAX_CORE)
        .ok_or_else(|| {
            format!("{s:?} in core list {list:?} is not a core number (0 to {MAX_CORE})")
        })
}

fn parse_cores(s: &str) -> Result<CoreList, String> {
    if s.trim().is_empty() {
        return Err("the core list is empty".into());
    }
    let mut cores = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse_core(a, s)?, parse_core(b, s)?);
                if a > b {
                    return Err(format!("range {part:?} in core list {s:?} runs backwards"));
                }
                cores.extend(a..=b);
            }
            None => cores.push(parse_core(part, s)?),
        }
    }
    Ok(CoreList(cores))
}

impl Args {
    /// The datapath for `--ports` (a plain bridge) or for a checked node config; command-line
    /// options override the file's `[node]` section.
    pub fn datapath_config(&self, node: Option<&NodeConfig>) -> DatapathConfig {
        let cores = self
            .cores
            .as_ref()
            .map(|c| c.0.clone())
            .or_else(|| node.and_then(|n| n.cores.clone()));
        DatapathConfig {
            ports: match node {
                Some(n) => n.ports.clone(),
                None => self.ports.as_ref().map(|p| p.0.clone()).unwrap_or_default(),
            },
            workers: match cores {
                Some(cores) => cores.iter().map(|&c| Some(c)).collect(),
                None => vec![None],
            },
            xdp_mode: self
                .xdp_mode
                .or(node.and_then(|n| n.xdp_mode))
                .unwrap_or(XdpMode::Auto),
            poll: self
                .poll
                .or(node.and_then(|n| n.poll))
                .unwrap_or(PollMode::Adaptive),
            busy_poll: self.busy_poll,
            bridge: BridgeConfig {
                fdb_capacity: self.fdb_size as usize,
                fdb_port_limit: self
                    .fdb_port_limit
                    .map(|n| n as usize)
                    .or(node.map(|n| n.fdb_port_limit))
                    .unwrap_or(DEFAULT_FDB_PORT_LIMIT),
                fdb_age_ms: node.map_or(self.fdb_age * 1000, |n| n.fdb_age_ms),
                bindings: node.map(|n| n.bindings.clone()).unwrap_or_default(),
                ..Default::default()
            },
            rings: RingSizes::default(),
            gateway: node.map(|n| n.gateway.clone()),
            segment_frames: mib_to_frames(self.frame_segment),
            max_frames_per_worker: mib_to_frames(self.frame_memory),
            fast_path: self
                .fast_path
                .or(node.and_then(|n| n.fast_path))
                // A build without clang has no fast path: off by default there, refused
                // (by the datapath, naming it) only when asked for.
                .unwrap_or(pmd::fastpath::available()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::try_parse_from(std::iter::once("vswitch").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn good_arguments() {
        let a = parse(&[
            "--ports",
            "vp1,vp2,vp3",
            "--cores",
            "0,2-3",
            "--xdp-mode",
            "generic",
        ])
        .unwrap();
        assert_eq!(a.ports.as_ref().unwrap().0, ["vp1", "vp2", "vp3"]);
        let dp = a.datapath_config(None);
        assert_eq!(dp.workers, [Some(0), Some(2), Some(3)]);
        assert_eq!(dp.xdp_mode, XdpMode::Generic);
        assert_eq!(dp.poll, PollMode::Adaptive);
        assert_eq!(a.fdb_age, 300);
        assert_eq!(dp.bridge.fdb_port_limit, 1024);
        let a = parse(&["--ports", "vp1", "--fdb-port-limit", "8"]).unwrap();
        assert_eq!(a.datapath_config(None).bridge.fdb_port_limit, 8);
    }

    #[test]
    fn bad_arguments_name_the_value() {
        assert!(parse(&["--ports", ""]).unwrap_err().contains("empty"));
        assert!(parse(&["--ports", "vp1,,vp2"])
            .unwrap_err()
            .contains("port 2 of \"vp1,,vp2\" is empty"));
        assert!(parse(&["--ports", "vp1", "--cores", "0,x"])
            .unwrap_err()
            .contains("\"x\""));
        assert!(parse(&["--ports", "vp1", "--cores", "3-1"])
            .unwrap_err()
            .contains("\"3-1\""));
        // A huge range is refused before it is expanded.
        for huge in ["0-18446744073709551615", "0-4000000000", "9000"] {
            assert!(parse(&["--ports", "vp1", "--cores", huge])
                .unwrap_err()
                .contains("0 to 8191"));
        }
        assert!(parse(&["--ports", "vp1", "--xdp-mode", "turbo"])
            .unwrap_err()
            .contains("turbo"));
        assert!(parse(&["--ports", "vp1", "--poll", "lazy"])
            .unwrap_err()
            .contains("lazy"));
        assert!(parse(&["--ports", "vp1", "--fdb-age", "0"])
            .unwrap_err()
            .contains("0"));
        assert!(parse(&["--ports", "vp1", "--fdb-port-limit", "0"])
            .unwrap_err()
            .contains("0"));
        assert!(parse(&["--ports", "vp1", "--fdb-port-limit", "many"])
            .unwrap_err()
            .contains("many"));
        assert!(parse(&[]).unwrap_err().contains("--ports"));
        assert!(parse(&["--ports", "vp1", "--config", "x.toml"])
            .unwrap_err()
            .contains("--config"));
    }
}
