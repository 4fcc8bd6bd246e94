//! `vswitch`: runs in the network namespace that holds its ports, forwarding among them until
//! SIGINT or SIGTERM, then detaches and prints its counters. With `--config`, SIGHUP reloads
//! the config file; a bad file is refused and the running config stays.
#![deny(unsafe_code)]

mod cli;
mod config;
mod report;

use clap::Parser;
use config::NodeConfig;
use pmd::Datapath;
use report::Snapshot;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn port_exists(name: &str) -> bool {
    pmd::netdev::ifindex(name).is_ok()
}

fn main() -> ExitCode {
    let args = cli::Args::parse();
    let mut node: Option<NodeConfig> = match &args.config {
        Some(path) => match config::load(path, &port_exists) {
            Ok(n) => Some(with_uplink_mtu(n)),
            Err(e) => {
                eprintln!("vswitch: error: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let config = args.datapath_config(node.as_ref());

    let terminate = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    let handlers = [
        (signal_hook::consts::SIGINT, &terminate),
        (signal_hook::consts::SIGTERM, &terminate),
        (signal_hook::consts::SIGHUP, &reload),
    ];
    for (signal, flag) in handlers {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(flag)) {
            eprintln!("vswitch: error: installing the handler for signal {signal}: {e}");
            return ExitCode::FAILURE;
        }
    }

    let dp = match Datapath::start(&config) {
        Ok(dp) => dp,
        Err(e) => {
            eprintln!("vswitch: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ports: Vec<String> = dp
        .ports
        .iter()
        .zip(&dp.modes)
        .map(|(p, mode)| {
            format!(
                "{} ({mode}, {} queue{})",
                p.name,
                p.queues,
                if p.queues == 1 { "" } else { "s" }
            )
        })
        .collect();
    let cores: Vec<String> = config
        .workers
        .iter()
        .map(|c| c.map_or("any".into(), |c| c.to_string()))
        .collect();
    let mode = match &node {
        Some(n) => format!(
            "as node gateway {} ({} services, {} routes)",
            n.gateway.gateway,
            n.gateway.services.len(),
            n.gateway.routes.len()
        ),
        None => "as a learning bridge".into(),
    };
    let mode = match node.as_ref().and_then(|n| n.gateway.vxlan.as_ref()) {
        Some(v) => format!(
            "{mode}, VXLAN VNI {} from {} to {} peer{}",
            v.vni,
            v.local,
            v.peers.len(),
            if v.peers.len() == 1 { "" } else { "s" }
        ),
        None => mode,
    };
    emit(&format!(
        "vswitch: forwarding among {} {mode} with {} worker{} (cores: {}), poll {:?}\n",
        ports.join(", "),
        config.workers.len(),
        if config.workers.len() == 1 { "" } else { "s" },
        cores.join(","),
        config.poll
    ));

    let interval = Duration::from_secs(args.stats_interval);
    let mut last = (Instant::now(), Snapshot::take(&dp.stats, dp.ports.len()));
    let mut failed = false;
    while !terminate.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if !dp.workers_alive() {
            eprintln!("vswitch: error: a worker stopped unexpectedly; shutting down");
            failed = true;
            break;
        }
        if reload.swap(false, Ordering::Relaxed) {
            reload_config(&args, &dp, &mut node);
        }
        if !interval.is_zero() && last.0.elapsed() >= interval {
            let now = (Instant::now(), Snapshot::take(&dp.stats, dp.ports.len()));
            let secs = now.0.duration_since(last.0).as_secs_f64();
            emit(&report::rate_lines(&dp, &last.1, &now.1, secs));
            last = now;
        }
    }

    let stats = dp.stats.clone();
    let nports = dp.ports.len();
    let names = dp.ports.clone();
    let gateway = dp.gateway.clone();
    let reports = dp.stop();
    emit("vswitch: stopped; XDP programs detached\n");
    let snap = Snapshot::take(&stats, nports);
    emit(&report::port_table_for(&names, &snap));
    if let Some(shared) = &gateway {
        emit(&report::gateway_lines(&stats, &shared.conntrack.counters));
    }
    emit(&report::worker_lines(&stats));
    emit(&report::frame_lines(&reports));
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// SIGHUP: re-read the config file; apply it if it is valid and changes only what a reload may
/// change, else say why and keep running as before.
fn reload_config(args: &cli::Args, dp: &Datapath, node: &mut Option<NodeConfig>) {
    let (Some(path), Some(current), Some(shared)) = (&args.config, node.as_ref(), &dp.gateway)
    else {
        eprintln!("vswitch: SIGHUP ignored: no --config to reload");
        return;
    };
    let new = match config::load(path, &port_exists) {
        Ok(n) => with_uplink_mtu(n),
        Err(e) => {
            eprintln!("vswitch: reload refused, running config kept: {e}");
            return;
        }
    };
    if let Err(why) = current.reload_compatible(&new) {
        eprintln!(
            "vswitch: reload refused, running config kept: {}: {why}; restart to change it",
            path.display()
        );
        return;
    }
    let r = shared.reload(&new.gateway);
    emit(&format!(
        "vswitch: reloaded {}: {} services, {} routes, {} VXLAN peers; {} connections to removed backends closed\n",
        path.display(),
        r.services,
        r.routes,
        r.peers,
        r.flows_closed
    ));
    *node = Some(new);
}

/// The uplink port's MTU, which encapsulated packets must fit, from the kernel.
fn with_uplink_mtu(mut node: NodeConfig) -> NodeConfig {
    if let Some(up) = node.gateway.uplink.as_mut() {
        if let Ok(mtu) = pmd::netdev::mtu(&node.ports[up.port as usize]) {
            up.mtu = mtu;
        }
    }
    node
}

/// Writes to stdout; a closed stdout (e.g. piped to `head`) must not stop the switch.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
