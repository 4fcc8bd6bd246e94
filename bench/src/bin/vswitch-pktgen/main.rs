//! vswitch-pktgen: sends IPv4/UDP frames through the kernel's live-frame XDP runner into an
//! interface, and counts what arrives on another.
//!
//!   vswitch-pktgen send  --dev IF --src-mac M --dst-mac M [--size 64] [--flows N]
//!                        [--rate PPS] [--duration SECS] [--count N]
//!   vswitch-pktgen count --dev IF [--duration SECS]
//!
//! Each prints a stats line per second and a final `result:` line.

mod recv;

use bench::{link_counter, test_frame, FrameSpec, Transport};
use clap::{Parser, Subcommand};
use pipeline::MacAddr;
use pmd::bpf::{DropProgram, LiveFrameSender, XdpMode, MAX_PROGRAM_FLOWS};
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "vswitch-pktgen",
    about = "Traffic generator and counter for vswitch benchmarks"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send frames out of an interface.
    Send {
        #[arg(long)]
        dev: String,
        #[arg(long)]
        src_mac: MacAddr,
        #[arg(long)]
        dst_mac: MacAddr,
        #[arg(long, default_value = "198.18.0.1")]
        src_ip: Ipv4Addr,
        #[arg(long, default_value = "198.18.0.2")]
        dst_ip: Ipv4Addr,
        #[arg(long, default_value_t = 9)]
        dst_port: u16,
        /// udp, tcp-syn (every frame opens a connection) or tcp-ack.
        #[arg(long, default_value = "udp")]
        transport: Transport,
        /// Frame size with FCS, 64 to 1518.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(64..=1518))]
        size: u16,
        /// Flows: distinct UDP source ports, then source addresses (60000 ports each).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4_000_000))]
        flows: u32,
        /// Frames of one flow per send call before moving to the next flow (1 visits every
        /// flow once in turn, to fill a connection table). Without it, up to 60,000 flows
        /// (not with --stamp) are made by the sender's program, which
        /// gives each frame it sends the next flow's source port: full speed with many
        /// flows; otherwise 8 frames of a flow per call.
        #[arg(long)]
        burst: Option<u64>,
        /// Packets per second (0: as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// With --rate: the most frames sent ahead of schedule after the sender lost its core
        /// (catching up); what the rate allowed beyond that is forgone (reported). A small
        /// value keeps the stream smooth for latency (a burst's last frame waits for the
        /// others in the switch), at the cost of sending less than the rate on a busy core.
        #[arg(long, default_value_t = RATE_BUCKET, value_parser = clap::value_parser!(u64).range(1..))]
        max_burst: u64,
        /// Seconds to send.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Stop after this many packets (0: no limit).
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// Pin the sender to this core.
        #[arg(long, conflicts_with = "cores")]
        core: Option<usize>,
        /// One sending thread per core of this list (e.g. 2,3 or 4-7), one program for all,
        /// held in the XDP dispatcher (refused when it cannot be: the other threads' sends
        /// would rewrite the dispatcher and stall). Rate and count are shared out.
        #[arg(long, value_parser = parse_cores)]
        cores: Option<CoreList>,
        /// Write a sequence number and the send time into each frame (for `recv`).
        #[arg(long)]
        stamp: bool,
        /// Write each frame's headers (first 56 bytes) back before every send: the kernel
        /// recycles the sender's pages as they are, so a forwarder that rewrites frames in
        /// place (an XDP fast path doing NAT) would otherwise be sent its own output.
        #[arg(long, conflicts_with = "stamp")]
        restore_headers: bool,
    },
    /// Receive frames on an AF_XDP socket and measure loss, reordering and latency from the
    /// sequence numbers and send times `send --stamp` wrote (the sender must be pinned to one
    /// core: the sequence is per CPU).
    Recv {
        #[arg(long)]
        dev: String,
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Only UDP frames to this destination port count.
        #[arg(long)]
        port: Option<u16>,
        /// Pin the receiver to this core.
        #[arg(long)]
        core: Option<usize>,
    },
    /// Forward every frame arriving on `dev` out of `to` in native XDP (`bpf_redirect`), for
    /// `duration` seconds: the kernel's bare XDP path, the limit of any XDP forwarder.
    Redirect {
        #[arg(long)]
        dev: String,
        #[arg(long)]
        to: String,
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
    },
    /// Count frames received on an interface (its rx_packets counter).
    Count {
        #[arg(long)]
        dev: String,
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Drop what arrives in a native XDP program first (the cheapest sink), counting the
        /// program's runs instead of rx_packets.
        #[arg(long)]
        xdp_drop: bool,
    },
}

/// Packets per kernel call: large enough to amortise the syscall.
const CALL_PACKETS: u64 = 1 << 16;
const XDP_BATCH: u32 = 64;
/// With `--rate`, by default: at most this many frames ahead of schedule after a stall (the
/// rest is forgone and reported), so the offered load stays smooth (`--max-burst`).
const RATE_BUCKET: u64 = 256;
/// With `--rate`, a next frame due sooner than this is waited for on the core (yielding it to
/// anything else runnable there), not slept for: a sleep returns tens of microseconds late and
/// the frames due meanwhile would leave as one burst, whose last frame then waits for all the
/// others in the switch (what a latency measurement must not add). Longer waits sleep.
const PACE_SPIN: Duration = Duration::from_millis(1);

fn main() -> ExitCode {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(signal, stop.clone());
    }
    let result = match args.command {
        Command::Send {
            dev,
            src_mac,
            dst_mac,
            src_ip,
            dst_ip,
            dst_port,
            transport,
            size,
            flows,
            burst,
            rate,
            max_burst,
            duration,
            count,
            core,
            cores,
            stamp,
            restore_headers,
        } => {
            let spec = FrameSpec {
                src_mac,
                dst_mac,
                src_ip,
                dst_ip,
                src_port: 1024,
                dst_port,
                size: size as usize,
                transport,
            };
            if stamp && transport != Transport::Udp {
                eprintln!(
                    "vswitch-pktgen: error: --stamp writes into a UDP payload; use --transport udp"
                );
                return ExitCode::FAILURE;
            }
            if restore_headers && core.is_none() && cores.is_none() {
                eprintln!(
                    "vswitch-pktgen: error: --restore-headers keeps a template per CPU; pin the sender with --core or --cores"
                );
                return ExitCode::FAILURE;
            }
            if let Some(core) = core {
                core_affinity::set_for_current(core_affinity::CoreId { id: core });
            }
            let flows_in_program =
                flows > 1 && flows <= MAX_PROGRAM_FLOWS && burst.is_none() && !stamp;
            let plan = SendPlan {
                flows,
                flows_in_program,
                burst: burst
                    .unwrap_or(if flows > 1 && !flows_in_program {
                        8
                    } else {
                        CALL_PACKETS
                    })
                    .max(1),
                rate,
                max_burst,
                duration: Duration::from_secs_f64(duration),
                limit: count,
                stamp,
                restore_headers,
            };
            match cores {
                Some(cores) => send_on_cores(&dev, &spec, &plan, &cores.0, &stop),
                None => send(&dev, &spec, &plan, &stop),
            }
        }
        Command::Recv {
            dev,
            duration,
            port,
            core,
        } => {
            if let Some(core) = core {
                core_affinity::set_for_current(core_affinity::CoreId { id: core });
            }
            recv::run(&dev, Duration::from_secs_f64(duration), port, &stop)
        }
        Command::Count {
            dev,
            duration,
            xdp_drop,
        } => count(&dev, Duration::from_secs_f64(duration), xdp_drop, &stop),
        Command::Redirect { dev, to, duration } => {
            redirect(&dev, &to, Duration::from_secs_f64(duration), &stop)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vswitch-pktgen: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How much to send, how fast, over which flows.
#[derive(Clone, Copy)]
struct SendPlan {
    flows: u32,
    /// The sender's program varies the flows (`LiveFrameSender::load_flows`): one frame is
    /// prepared, and a call's frames go to every flow in turn.
    flows_in_program: bool,
    /// Frames of one flow per kernel call.
    burst: u64,
    /// Packets per second; 0 for as fast as possible.
    rate: u64,
    /// With a rate: the most frames sent ahead of schedule at once.
    max_burst: u64,
    duration: Duration,
    /// Packets in all; 0 for no limit.
    limit: u64,
    stamp: bool,
    restore_headers: bool,
}

impl SendPlan {
    /// The frames the sending loop sends, a flow's each in turn.
    fn frames(&self, spec: &FrameSpec) -> Vec<Vec<u8>> {
        match self.flows_in_program {
            true => vec![test_frame(spec, 0)],
            false => (0..self.flows).map(|f| test_frame(spec, f)).collect(),
        }
    }
}

/// The sender for `plan`; `first` is the first frame it sends (the one the program makes the
/// flows of, when it does).
fn load_sender(dev: &str, first: &[u8], plan: &SendPlan) -> Result<LiveFrameSender, String> {
    let ifindex = pmd::netdev::ifindex(dev).map_err(|e| e.to_string())?;
    let loaded = if plan.flows_in_program {
        LiveFrameSender::load_flows(ifindex, plan.flows, first, plan.restore_headers)
    } else if plan.stamp {
        LiveFrameSender::load_stamped(ifindex, first)
    } else if plan.restore_headers {
        LiveFrameSender::load_restoring(ifindex)
    } else {
        LiveFrameSender::load(ifindex)
    };
    loaded.map_err(|e| format!("loading the sender program: {e}"))
}

/// Holds the program in the XDP dispatcher on the namespace's loopback (which carries
/// nothing): a program the dispatcher does not hold is swapped in for every send call, which
/// interrupts every core and sleeps.
fn hold(sender: &mut LiveFrameSender) -> Result<(), String> {
    let lo = pmd::netdev::ifindex("lo").map_err(|e| e.to_string())?;
    sender
        .hold_in_dispatcher(lo)
        .map_err(|e| format!("holding the program in the XDP dispatcher on lo: {e}"))
}

fn send(dev: &str, spec: &FrameSpec, plan: &SendPlan, stop: &AtomicBool) -> Result<(), String> {
    let frames = plan.frames(spec);
    let mut sender = load_sender(dev, &frames[0], plan)?;
    // Said in the result, for whoever reads the numbers.
    let disturbed = match hold(&mut sender) {
        Ok(()) => false,
        Err(e) => {
            eprintln!("vswitch-pktgen: warning: {e}; small sends will disturb other cores");
            true
        }
    };
    let Sent {
        sent,
        secs,
        forgone,
        calls,
        largest_call,
    } = send_loop(&sender, &frames, plan, dev, stop, true)?;
    println!(
        "result: sent={sent} seconds={secs:.3} pps={:.0} forgone={forgone} calls={calls} largest_call={largest_call}{}",
        sent as f64 / secs,
        if disturbed { " disturbed=yes" } else { "" }
    );
    Ok(())
}

/// One program, held once; one sending thread per core, each with its share of rate and count.
fn send_on_cores(
    dev: &str,
    spec: &FrameSpec,
    plan: &SendPlan,
    cores: &[usize],
    stop: &AtomicBool,
) -> Result<(), String> {
    let frames = plan.frames(spec);
    let mut sender = load_sender(dev, &frames[0], plan)?;
    hold(&mut sender).map_err(|e| format!("{e}: refusing to send from several cores"))?;
    let n = cores.len() as u64;
    let share = SendPlan {
        rate: plan.rate / n,
        limit: plan.limit.div_ceil(n),
        ..*plan
    };
    let results: Vec<Result<Sent, String>> = std::thread::scope(|scope| {
        let threads: Vec<_> = cores
            .iter()
            .map(|&core| {
                let (sender, frames) = (&sender, &frames);
                scope.spawn(move || {
                    core_affinity::set_for_current(core_affinity::CoreId { id: core });
                    send_loop(sender, frames, &share, dev, stop, false)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("a sending thread panicked".into()))
            })
            .collect()
    });
    let (mut sent, mut secs, mut forgone, mut calls, mut largest_call) = (0, 0f64, 0, 0, 0);
    for (core, r) in cores.iter().zip(results) {
        let r = r?;
        println!(
            "core {core}: sent={} pps={:.0}",
            r.sent,
            r.sent as f64 / r.secs
        );
        sent += r.sent;
        secs = secs.max(r.secs);
        forgone += r.forgone;
        calls += r.calls;
        largest_call = largest_call.max(r.largest_call);
    }
    println!(
        "result: sent={sent} seconds={secs:.3} pps={:.0} forgone={forgone} calls={calls} largest_call={largest_call} cores={}",
        sent as f64 / secs,
        cores.len()
    );
    Ok(())
}

/// What a sending loop did.
struct Sent {
    sent: u64,
    secs: f64,
    /// Frames the rate allowed but that were never sent (see `--max-burst`).
    forgone: u64,
    /// Kernel calls, and the most frames one sent at once: with `--rate`, how smooth the
    /// offered load was (a call's frames arrive together).
    calls: u64,
    largest_call: u64,
}

/// Sends until the plan's duration or count is reached.
fn send_loop(
    sender: &LiveFrameSender,
    frames: &[Vec<u8>],
    plan: &SendPlan,
    dev: &str,
    stop: &AtomicBool,
    report_each_second: bool,
) -> Result<Sent, String> {
    let SendPlan {
        burst,
        rate,
        duration,
        limit,
        ..
    } = *plan;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut last = (start, 0u64);
    let mut flow = 0usize;
    let mut template = None;
    // Frames the rate allowed but that were never sent: time the sender lost (descheduled)
    // is not caught up in one burst, which would measure the burst, not the rate.
    let mut forgone = 0u64;
    let (mut calls, mut largest_call) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed)
        && start.elapsed() < duration
        && (limit == 0 || sent < limit)
    {
        let mut n = CALL_PACKETS;
        if limit > 0 {
            n = n.min(limit - sent);
        }
        if rate > 0 {
            // Send only what the rate allows by now.
            let mut allowed = (start.elapsed().as_secs_f64() * rate as f64) as u64 - forgone;
            if allowed > sent + plan.max_burst {
                forgone += allowed - sent - plan.max_burst;
                allowed = sent + plan.max_burst;
            }
            if allowed <= sent {
                let due = Duration::from_secs_f64((sent + forgone + 1) as f64 / rate as f64);
                match due.checked_sub(start.elapsed()) {
                    // In pieces, so the stop flag and the duration are seen at low rates too.
                    Some(wait) if wait > PACE_SPIN => {
                        std::thread::sleep((wait - PACE_SPIN / 2).min(Duration::from_millis(10)))
                    }
                    _ => std::thread::yield_now(),
                }
                continue;
            }
            n = n.min(allowed - sent);
        }
        // Flows round-robin, `burst` frames of each per call.
        let per_flow = n.min(burst);
        if plan.restore_headers && template != Some(flow) {
            sender
                .set_template(&frames[flow])
                .map_err(|e| format!("setting the header template: {e}"))?;
            template = Some(flow);
        }
        sender
            .send(&frames[flow], per_flow as u32, XDP_BATCH)
            .map_err(|e| format!("sending into {dev}: {e}"))?;
        sent += per_flow;
        calls += 1;
        largest_call = largest_call.max(per_flow);
        flow = (flow + 1) % frames.len();
        if report_each_second && last.0.elapsed() >= Duration::from_secs(1) {
            let secs = last.0.elapsed().as_secs_f64();
            println!("tx {dev}: {:.0} pps", (sent - last.1) as f64 / secs);
            last = (Instant::now(), sent);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if rate > 0 && limit == 0 {
        // What the rate allowed to the end and was not sent is forgone too: sent + forgone
        // is what the rate offered.
        let allowed = (secs * rate as f64) as u64;
        forgone = forgone.max(allowed.saturating_sub(sent));
    }
    Ok(Sent {
        sent,
        secs,
        forgone,
        calls,
        largest_call,
    })
}

#[derive(Clone, Debug)]
struct CoreList(Vec<usize>);

/// A core list: numbers and ranges, comma-separated (2,3 or 4-7).
fn parse_cores(s: &str) -> Result<CoreList, String> {
    let mut cores = Vec::new();
    for part in s.split(',') {
        let bad = || format!("bad core list {s:?} (e.g. 2,3 or 4-7)");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                );
                if a > b {
                    return Err(bad());
                }
                cores.extend(a..=b);
            }
            None => cores.push(part.trim().parse().map_err(|_| bad())?),
        }
    }
    if cores.is_empty() {
        return Err(format!("empty core list {s:?}"));
    }
    Ok(CoreList(cores))
}

fn redirect(dev: &str, to: &str, duration: Duration, stop: &AtomicBool) -> Result<(), String> {
    let ifindex = |d: &str| pmd::netdev::ifindex(d).map_err(|e| format!("{d}: {e}"));
    let prog = LiveFrameSender::load(ifindex(to)?).map_err(|e| format!("loading: {e}"))?;
    let _link = prog
        .attach_native(ifindex(dev)?)
        .map_err(|e| format!("attaching to {dev}: {e}"))?;
    println!("redirecting {dev} -> {to}");
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) && start.elapsed() < duration {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn count(dev: &str, duration: Duration, xdp_drop: bool, stop: &AtomicBool) -> Result<(), String> {
    let _drop = if xdp_drop {
        let ifindex = pmd::netdev::ifindex(dev).map_err(|e| e.to_string())?;
        let prog = DropProgram::load().map_err(|e| format!("loading the drop program: {e}"))?;
        Some(
            prog.attach(ifindex, XdpMode::Native)
                .map_err(|e| format!("attaching the drop program to {dev}: {e}"))?,
        )
    } else {
        None
    };
    let read = || {
        link_counter(dev, "rx_packets").map_err(|e| format!("reading the counters of {dev}: {e}"))
    };
    let first = read()?;
    let start = Instant::now();
    let mut last = (start, first);
    while !stop.load(Ordering::Relaxed) && start.elapsed() < duration {
        std::thread::sleep(
            Duration::from_millis(100).min(duration.saturating_sub(start.elapsed())),
        );
        if last.0.elapsed() >= Duration::from_secs(1) {
            let now = read()?;
            println!(
                "rx {dev}: {:.0} pps",
                (now - last.1) as f64 / last.0.elapsed().as_secs_f64()
            );
            last = (Instant::now(), now);
        }
    }
    let total = read()? - first;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "result: received={total} seconds={secs:.3} pps={:.0}",
        total as f64 / secs
    );
    Ok(())
}
