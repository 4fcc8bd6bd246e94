//! `vswitch`: runs in the network namespace that holds its ports, forwarding among them until
//! SIGINT or SIGTERM, then detaches and prints its counters.
#![deny(unsafe_code)]

mod cli;
mod report;

use clap::Parser;
use pmd::Datapath;
use report::Snapshot;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args = cli::Args::parse();
    let config = args.datapath_config();

    let terminate = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, terminate.clone()) {
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
    emit(&format!(
        "vswitch: forwarding among {} with {} worker{} (cores: {}), poll {:?}\n",
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
    let reports = dp.stop();
    emit("vswitch: stopped; XDP programs detached\n");
    let snap = Snapshot::take(&stats, nports);
    emit(&report::port_table_for(&names, &snap));
    emit(&report::worker_lines(&stats));
    emit(&report::frame_lines(&reports));
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Writes to stdout; a closed stdout (e.g. piped to `head`) must not stop the switch.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
