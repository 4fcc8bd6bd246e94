//! `vswitch`: runs in the network namespace that holds its ports, forwarding among them until
//! SIGINT or SIGTERM, then detaches and prints its counters. With `--config`, SIGHUP reloads
//! the config file; a bad file is refused and the running config stays. A control socket
//! (`--ctl`) lets `vswitch ctl` read its tables and attach or remove ports while it runs.
#![deny(unsafe_code)]

mod capture;
mod cli;
mod config;
mod control;
mod k8s;
mod live;
mod logging;
mod metrics;
mod port_records;
mod report;

use clap::Parser;
use config::NodeConfig;
use control::{Outcome, Request, RequestKind};
use live::{port_exists, with_uplink_mtu, Live};
use pmd::{Datapath, PortInfo, WorkerEnd};
use report::Snapshot;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the ports' interfaces are checked for having disappeared.
const VANISHED_CHECK: Duration = Duration::from_millis(500);

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("ctl") {
        return control::client::main(&argv[2..]);
    }
    let args = cli::Args::parse();
    logging::init();
    let node: Option<NodeConfig> = match &args.config {
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

    // Everything that can be refused is, before anything is attached.
    if let Err(e) = pmd::datapath::validate(&config) {
        eprintln!("vswitch: error: {e}");
        return ExitCode::FAILURE;
    }
    let (ctl_listener, _ctl_socket) = match control::server::bind(&args.ctl) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vswitch: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics_listener = match args.metrics.map(metrics::bind).transpose() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("vswitch: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dp = match Datapath::start(&config) {
        Ok(dp) => dp,
        Err(e) => {
            eprintln!("vswitch: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    logging::start_printing();
    emit(&start_line(&dp, &config, node.as_ref()));
    if !dp.housekeeping_cores.is_empty() {
        tracing::info!(cores = ?dp.housekeeping_cores, "other threads kept off the worker cores");
    }
    let (requests_tx, requests) = crossbeam_channel::bounded::<Request>(16);
    {
        let tx = requests_tx.clone();
        let _ = std::thread::Builder::new()
            .name("vswitch-ctl-accept".into())
            .spawn(move || control::server::serve(ctl_listener, tx));
    }
    if let Some(listener) = metrics_listener {
        let tx = requests_tx.clone();
        let _ = std::thread::Builder::new()
            .name("vswitch-metrics-accept".into())
            .spawn(move || metrics::serve(listener, tx));
    }
    tracing::info!(socket = %args.ctl.display(), metrics = ?args.metrics, "control socket ready");
    let interval = Duration::from_secs(args.stats_interval);
    let mut live = Live::new(dp, args, node);
    live.restore_ports();

    let mut last = rates_snapshot(&live.dp);
    let mut last_check = Instant::now();
    let mut failed = false;
    while !terminate.load(Ordering::Relaxed) {
        if let Ok(request) = requests.recv_timeout(Duration::from_millis(50)) {
            let outcome = match request.kind {
                RequestKind::Ctl(args) => control::commands::execute(&mut live, &args),
                RequestKind::Metrics => Outcome::Text(metrics::render(&live)),
                RequestKind::Import(list, invalid) => {
                    control::commands::import(&mut live, &list, invalid)
                }
            };
            let _ = request.reply.try_send(outcome);
        }
        for (port, joined) in live.dp.apply_probes() {
            match joined {
                true => tracing::debug!(port = %port, "the fast path forwards to this port"),
                false => tracing::warn!(
                    port = %port,
                    "the fast path sends this port nothing: frames redirected into it would not leave it (a veth whose other end has no NAPI: turn GRO on or attach an XDP program there; or a driver without ndo_xdp_xmit); it is probed again after 1 s, then up to every 30 s"
                ),
            }
        }
        if !live.dp.workers_alive() {
            tracing::error!("a worker stopped unexpectedly; shutting down");
            eprintln!("vswitch: error: a worker stopped unexpectedly; shutting down");
            failed = true;
            break;
        }
        if reload.swap(false, Ordering::Relaxed) {
            match live.reload() {
                Ok(text) => emit(&format!("vswitch: {text}\n")),
                // Said once, as before tracing: on stderr.
                Err(e) => eprintln!("vswitch: {e}"),
            }
        }
        if last_check.elapsed() >= VANISHED_CHECK {
            last_check = Instant::now();
            live.check_vanished();
            live.dp.reprobe_due();
            for (port, old, new) in live.dp.check_mtus() {
                if let Some(text) = live.follow_uplink_mtu(&port, new) {
                    tracing::info!("{text}");
                }
                if new > pmd::MAX_MTU {
                    tracing::warn!(
                        port = %port,
                        old,
                        new,
                        "this port's MTU changed above the largest the switch supports ({}): it forwards frames of at most that",
                        pmd::MAX_MTU
                    );
                } else {
                    tracing::info!(
                        port = %port,
                        old,
                        new,
                        "this port's MTU changed: the switch forwards by the new one, and probes again whether the port takes the fast path's redirects (a driver may take frames of one buffer only); on the fast path, it leaves it until then"
                    );
                }
            }
            for port in live.dp.check_fast_egress() {
                tracing::warn!(
                    port = %port,
                    "the fast path stops sending to this port: frames it redirected there were dropped (its other end lost NAPI: GRO turned off, or its XDP program removed); its frames go by the workers until a probe finds NAPI again (after 1 s, then up to every 30 s)"
                );
            }
            if let Some(g) = &live.dp.gateway {
                g.reap_retired();
            }
        }
        live.load.update(&live.dp);
        if !interval.is_zero() && last.0.elapsed() >= interval {
            let now = rates_snapshot(&live.dp);
            if now
                .1
                .iter()
                .map(|p| p.ifindex)
                .eq(last.1.iter().map(|p| p.ifindex))
            {
                let secs = now.0.duration_since(last.0).as_secs_f64();
                emit(&report::rate_lines(&now.1, &last.2, &now.2, secs));
            }
            last = now;
        }
    }

    let stats = live.dp.stats.clone();
    let gateway = live.dp.gateway.clone();
    let (ids, names): (Vec<_>, Vec<PortInfo>) =
        live.dp.ports().map(|(id, p)| (id, p.info.clone())).unzip();
    let ends = live.dp.stop();
    emit("vswitch: stopped; XDP programs detached\n");
    let snap = Snapshot::take(&stats, &ids);
    emit(&report::port_table_for(&names, &snap));
    if let Some(shared) = &gateway {
        emit(&report::gateway_lines(&stats, &shared.conntrack.counters));
    }
    emit(&report::worker_lines(&stats));
    let mut reports = Vec::new();
    for (w, end) in ends.into_iter().enumerate() {
        match end {
            WorkerEnd::Stopped(r) => reports.push(r),
            WorkerEnd::Panicked(why) => {
                failed = true;
                eprintln!("vswitch: error: worker {w} panicked: {why}");
            }
        }
    }
    emit(&report::frame_lines(&reports));
    logging::finish_printing(EXIT_REPORT_PATIENCE);
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

type Rates = (Instant, Vec<PortInfo>, Snapshot);

fn rates_snapshot(dp: &Datapath) -> Rates {
    let (ids, infos): (Vec<_>, Vec<_>) = dp.ports().map(|(id, p)| (id, p.info.clone())).unzip();
    (Instant::now(), infos, Snapshot::take(&dp.stats, &ids))
}

fn start_line(dp: &Datapath, config: &pmd::DatapathConfig, node: Option<&NodeConfig>) -> String {
    let ports: Vec<String> = dp
        .ports()
        .map(|(_, p)| {
            format!(
                "{} ({}, {} queue{})",
                p.info.name,
                p.mode,
                p.info.queues,
                if p.info.queues == 1 { "" } else { "s" }
            )
        })
        .collect();
    let cores: Vec<String> = config
        .workers
        .iter()
        .map(|c| c.map_or("any".into(), |c| c.to_string()))
        .collect();
    let mode = match node {
        Some(n) => format!(
            "as node gateway {} ({} services, {} routes)",
            n.gateway.gateway,
            n.gateway.services.len(),
            n.gateway.routes.len()
        ),
        None => "as a learning bridge".into(),
    };
    let mode = match node.and_then(|n| n.gateway.vxlan.as_ref()) {
        Some(v) => format!(
            "{mode}, VXLAN VNI {} from {} to {} peer{}",
            v.vni,
            v.local,
            v.peers.len(),
            if v.peers.len() == 1 { "" } else { "s" }
        ),
        None => mode,
    };
    format!(
        "vswitch: forwarding among {} {mode} with {} worker{} (cores: {}), poll {:?}{}\n",
        if ports.is_empty() {
            "no ports yet".to_string()
        } else {
            ports.join(", ")
        },
        config.workers.len(),
        if config.workers.len() == 1 { "" } else { "s" },
        cores.join(","),
        config.poll,
        if config.fast_path {
            ", fast path xdp"
        } else {
            ""
        }
    )
}

/// How long the exit waits for stdout to take the exit report.
const EXIT_REPORT_PATIENCE: Duration = Duration::from_secs(2);

/// Writes to stdout without waiting for it (`logging::print`).
pub fn emit(text: &str) {
    logging::print(text);
}
