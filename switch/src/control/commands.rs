//! Carries out one control command against the running switch (on the main thread) and
//! answers in JSON; the client turns that into a table.

use super::Outcome;
use crate::live::Live;
use pipeline::conntrack::{Flow, FlowState, TcpState};
use pipeline::l2::PortBinding;
use pipeline::l3::{NextHop, Segment};
use pipeline::{GwCounter, L2Counter, MacAddr, PortId};
use pmd::{PortCounter, WorkerCounter, FRAME_SIZE};
use serde_json::{json, Map, Value};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const DEFAULT_CONNTRACK_LIMIT: usize = 1000;
const MAX_CONNTRACK_LIMIT: usize = 1_000_000;
const MAX_CAPTURE: usize = 1_000_000;
/// The kernel's bookkeeping per UMEM frame for every socket registered on it (its buffer
/// pool's per-chunk head and free-list slot), for the memory estimate.
const KERNEL_BYTES_PER_FRAME_PER_SOCKET: usize = 136;

/// The words of a command, with `--flag value` options taken out.
struct Words {
    words: Vec<String>,
    options: Vec<(String, String)>,
}

fn split(args: &[String], flags: &[&str]) -> Result<Words, String> {
    let mut words = Vec::new();
    let mut options = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(name) = a.strip_prefix("--") {
            if !flags.contains(&name) {
                return Err(format!("unknown option {a:?}"));
            }
            let value = it
                .next()
                .ok_or_else(|| format!("option {a} needs a value"))?;
            options.push((name.to_string(), value.clone()));
        } else {
            words.push(a.clone());
        }
    }
    Ok(Words { words, options })
}

impl Words {
    fn opt(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn number(&self, name: &str, default: usize, max: usize) -> Result<usize, String> {
        match self.opt(name) {
            None => Ok(default),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(format!("--{name} {v:?}: expected a number from 1 to {max}")),
            },
        }
    }
}

pub const USAGE: &str = "commands: show ports | show stats | show fdb | show neigh | show routes | show services | show conntrack [--limit N] | port add IF [--mac MAC [--ip ADDR]] | port del IF | fdb flush | conntrack flush | reload | import FILE|- [--skip-invalid] | capture PORT --count N --out FILE [--timeout SECS]";

/// `import`: the services of a Kubernetes List replace the running ones.
pub fn import(live: &mut Live, list: &crate::k8s::List, invalid: crate::k8s::Invalid) -> Outcome {
    match live.import(list, invalid) {
        Ok(report) => {
            tracing::info!(
                services = report["services"].as_u64(),
                endpoints = report["endpoints"].as_u64(),
                flows_closed = report["flows_closed"].as_u64(),
                ms = report["ms"].as_f64(),
                "services imported"
            );
            Outcome::Json(report)
        }
        Err(e) => {
            tracing::warn!("import refused: {e}");
            Outcome::Error(e)
        }
    }
}

pub fn execute(live: &mut Live, args: &[String]) -> Outcome {
    match run(live, args) {
        Ok(o) => o,
        Err(e) => Outcome::Error(e),
    }
}

fn run(live: &mut Live, args: &[String]) -> Result<Outcome, String> {
    let w = split(args, &["limit", "mac", "ip", "count", "out", "timeout"])?;
    let words: Vec<&str> = w.words.iter().map(|s| s.as_str()).collect();
    let json = match words.as_slice() {
        ["show", "ports"] => json!({ "ports": ports(live) }),
        ["show", "stats"] => stats(live),
        ["show", "fdb"] => fdb(live)?,
        ["show", "neigh"] => neigh(live),
        ["show", "routes"] => routes(live),
        ["show", "services"] => services(live),
        ["show", "conntrack"] => conntrack(
            live,
            w.number("limit", DEFAULT_CONNTRACK_LIMIT, MAX_CONNTRACK_LIMIT)?,
        ),
        ["port", "add", name] => port_add(live, name, w.opt("mac"), w.opt("ip"))?,
        ["port", "del", name] => {
            let start = Instant::now();
            let f = live.del_port(name)?;
            json!({
                "removed": name,
                "fdb_entries": f.fdb_entries,
                "neighbors": f.neighbors,
                "flows": f.flows,
                "ms": ms(start),
            })
        }
        ["fdb", "flush"] => {
            let n = live
                .dp
                .on_workers(|p, _| p.bridge_mut().flush_fdb())
                .map_err(|e| e.to_string())?;
            json!({ "flushed": n.into_iter().max().unwrap_or(0) })
        }
        ["conntrack", "flush"] => {
            let n = live
                .dp
                .gateway
                .as_ref()
                .map_or(0, |g| g.conntrack.remove_where(|_| true));
            json!({ "flushed": n })
        }
        ["reload"] => {
            let text = live.reload()?;
            crate::emit(&format!("vswitch: {text}\n"));
            json!({ "reloaded": text })
        }
        ["capture", port] => return capture(live, port, &w),
        [] => return Err(format!("no command; {USAGE}")),
        _ => return Err(format!("unknown command {:?}; {USAGE}", words.join(" "))),
    };
    Ok(Outcome::Json(json))
}

fn ms(start: Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 1e5).round() / 100.0
}

/// A port's binding from `port add`'s `--mac` and `--ip` (and from the records of ports
/// added so, which keep them as given).
pub fn port_binding(mac: Option<&str>, ip: Option<&str>) -> Result<Option<PortBinding>, String> {
    Ok(match (mac, ip) {
        (None, None) => None,
        (None, Some(_)) => return Err("--ip needs --mac (a port is bound to both)".into()),
        (Some(mac), ip) => {
            let mac: MacAddr = mac
                .parse()
                .map_err(|_| format!("--mac {mac:?} is not a MAC address"))?;
            if mac.is_multicast() || mac.is_zero() {
                return Err(format!("--mac {mac} is not a unicast address"));
            }
            let ip = match ip {
                Some(ip) => Some(ip.parse::<Ipv4Addr>().map_err(|_| {
                    format!("--ip {ip:?} is not an IPv4 address (a bare address, no prefix)")
                })?),
                None => None,
            };
            Some(PortBinding { mac, ip })
        }
    })
}

fn port_add(
    live: &mut Live,
    name: &str,
    mac: Option<&str>,
    ip: Option<&str>,
) -> Result<Value, String> {
    let binding = port_binding(mac, ip)?;
    let start = Instant::now();
    let id = live.add_port(name, binding)?;
    let port = live.dp.port(id).ok_or("port vanished while being added")?;
    Ok(json!({
        "port": {
            "name": name,
            "id": id,
            "queues": port.info.queues,
            "xdp_mode": port.mode.to_string(),
            "mac": binding.map(|b| b.mac.to_string()),
            "ip": binding.and_then(|b| b.ip).map(|ip| ip.to_string()),
        },
        "ms": ms(start),
    }))
}

/// A port's counters summed over the workers.
fn counters(live: &Live, id: PortId) -> [u64; PortCounter::COUNT] {
    let mut out = [0; PortCounter::COUNT];
    for s in &live.dp.stats {
        for &c in PortCounter::ALL {
            out[c as usize] += s.port(id as usize, c);
        }
    }
    out
}

pub fn ports(live: &Live) -> Vec<Value> {
    live.dp
        .ports()
        .map(|(id, p)| {
            let c = counters(live, id);
            let drops: Map<String, Value> = PortCounter::ALL
                .iter()
                .filter(|k| k.is_drop())
                .map(|&k| (k.name().to_string(), json!(c[k as usize])))
                .collect();
            let binding = live.bindings.get(&id);
            json!({
                "name": p.info.name,
                "id": id,
                "rx_packets": c[PortCounter::RxPackets as usize],
                "tx_packets": c[PortCounter::TxPackets as usize],
                "rx_bytes": c[PortCounter::RxBytes as usize],
                "tx_bytes": c[PortCounter::TxBytes as usize],
                "drops": drops,
                "kernel_fill_ring_empty": c[PortCounter::KernelFillRingEmpty as usize],
                "tx_fast_path_packets": c[PortCounter::FastPathTxPackets as usize],
                "queues": p.info.queues,
                "xdp_mode": p.mode.to_string(),
                "fast_path": p.fast_egress,
                "workers": p.owners,
                "mac": binding.map(|b| b.mac.to_string()),
                "ip": binding.and_then(|b| b.ip).map(|ip| ip.to_string()),
                "up_s": p.since.elapsed().as_secs(),
            })
        })
        .collect()
}

/// Frame memory: the UMEM segments (pinned), and an estimate of the kernel's bookkeeping for
/// the sockets registered on them.
pub fn memory(live: &Live) -> Value {
    let dp = &live.dp;
    let sum = |c| dp.stats.iter().map(|s| s.worker(c)).sum::<u64>();
    let frames = sum(WorkerCounter::FramesTotal);
    json!({
        "bytes_pinned": frames * FRAME_SIZE as u64,
        "frames": frames,
        "segments": sum(WorkerCounter::Segments),
        "frames_free": sum(WorkerCounter::FramesFree),
        "frames_in_fill_rings": sum(WorkerCounter::FramesInFill),
        "frames_in_tx": sum(WorkerCounter::FramesInTx),
        "sockets": sum(WorkerCounter::Sockets),
        "segment_copies": sum(WorkerCounter::SegmentCopies),
        "kernel_bytes_estimate": sum(WorkerCounter::KernelFrameRefs)
            * KERNEL_BYTES_PER_FRAME_PER_SOCKET as u64,
    })
}

fn counter_map<C: Copy>(
    all: &[C],
    name: impl Fn(C) -> &'static str,
    value: impl Fn(C) -> u64,
) -> Value {
    Value::Object(
        all.iter()
            .map(|&c| (name(c).to_string(), json!(value(c))))
            .collect(),
    )
}

fn stats(live: &Live) -> Value {
    let dp = &live.dp;
    dp.refresh_stats();
    let workers: Vec<Value> = dp
        .stats
        .iter()
        .enumerate()
        .map(|(w, s)| {
            let busy = s.worker(WorkerCounter::BusyCycles);
            let packets = s.worker(WorkerCounter::Packets);
            json!({
                "worker": w,
                "core": dp.cores[w],
                "packets": packets,
                "cycles_per_packet": busy.checked_div(packets).unwrap_or(0),
                "busy_percent": (live.load.ratio[w] * 1000.0).round() / 10.0,
                "sockets": s.worker(WorkerCounter::Sockets),
                "frames_total": s.worker(WorkerCounter::FramesTotal),
                "frames_free": s.worker(WorkerCounter::FramesFree),
                "frames_in_fill": s.worker(WorkerCounter::FramesInFill),
                "handoffs_out": s.worker(WorkerCounter::HandoffsOut),
                "drop_port_absent": s.worker(WorkerCounter::DropPortAbsent),
                "longest_gap_us": s.worker(WorkerCounter::LongestGapUs),
                "longest_commands_us": s.worker(WorkerCounter::LongestCommandsUs),
                "gaps_over_1ms": s.worker(WorkerCounter::GapsOver1ms),
                "gaps_over_1ms_working": s.worker(WorkerCounter::GapsOver1msWorking),
                "longest_pass_us": s.worker(WorkerCounter::LongestPassUs),
                "passes": s.worker(WorkerCounter::Passes),
                "passes_over_20us": s.worker(WorkerCounter::PassesOver20us),
                "passes_over_100us": s.worker(WorkerCounter::PassesOver100us),
                "kicks_over_20us": s.worker(WorkerCounter::KicksOver20us),
                "kicks_over_100us": s.worker(WorkerCounter::KicksOver100us),
                "full_batches": s.worker(WorkerCounter::FullBatches),
                "flood_transmits": s.worker(WorkerCounter::FloodTransmits),
                "longest_housekeeping_us": s.worker(WorkerCounter::LongestHousekeepingUs),
                "preemptions": s.worker(WorkerCounter::Preemptions),
                "core_steal_ms": s.worker(WorkerCounter::CoreStealMs),
                "waited_for_core_us": s.worker(WorkerCounter::WaitedForCoreUs),
                "core_softirq_thread_us": s.worker(WorkerCounter::CoreSoftirqThreadUs),
                "core_softirq_thread_waited_us": s.worker(WorkerCounter::CoreSoftirqThreadWaitedUs),
                "fast_path_flows": s.worker(WorkerCounter::FastPathFlows),
                "fast_path_packets": s.worker(WorkerCounter::FastPathPackets),
                "fast_path_installed": s.worker(WorkerCounter::FastPathInstalled),
                "fast_path_removed": s.worker(WorkerCounter::FastPathRemoved),
                "fast_path_full": s.worker(WorkerCounter::FastPathFull),
                "fast_path_errors": s.worker(WorkerCounter::FastPathErrors),
            })
        })
        .collect();
    let bridge = counter_map(
        L2Counter::ALL,
        |c| c.name(),
        |c| dp.stats.iter().map(|s| s.l2(c)).sum(),
    );
    let gateway = dp.gateway.as_ref().map(|_| {
        counter_map(
            GwCounter::ALL,
            |c| c.name(),
            |c| dp.stats.iter().map(|s| s.gateway(c)).sum(),
        )
    });
    let fdb = dp
        .stats
        .iter()
        .map(|s| s.fdb_entries.load(std::sync::atomic::Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    json!({
        "ports": ports(live),
        "workers": workers,
        "bridge": bridge,
        "fdb_entries": fdb,
        "gateway": gateway,
        "conntrack": conntrack_counters(live),
        "frame_memory": memory(live),
        "fast_path_overlay_legs": live.dp.fast_path_overlay_legs(),
        "ports_lost": live.ports_lost,
        "reloads": { "applied": live.reloads.0, "refused": live.reloads.1 },
    })
}

pub fn conntrack_counters(live: &Live) -> Value {
    let Some(g) = &live.dp.gateway else {
        return Value::Null;
    };
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let c = &g.conntrack.counters;
    json!({
        "entries": g.conntrack.len(),
        "limit": live.node.as_ref().map_or(0, |n| n.gateway.conntrack_capacity),
        "inserts": load(&c.created),
        "evictions": load(&c.evicted),
        "timeouts": load(&c.expired),
        "refused_full": load(&c.refused_full),
        "removed": load(&c.removed),
    })
}

fn port_name(live: &Live, id: PortId) -> String {
    live.dp
        .port(id)
        .map_or_else(|| format!("#{id}"), |p| p.info.name.clone())
}

fn fdb(live: &Live) -> Result<Value, String> {
    // Every worker has its own copy; together they are the table (the freshest entry wins).
    let tables = live
        .dp
        .on_workers(|p, now| {
            p.bridge()
                .fdb()
                .entries()
                .map(|(mac, e)| (mac, e.port, now.saturating_sub(e.last_seen_ms)))
                .collect::<Vec<_>>()
        })
        .map_err(|e| e.to_string())?;
    let mut merged: std::collections::BTreeMap<u64, (MacAddr, PortId, u64)> = Default::default();
    for (mac, port, age) in tables.into_iter().flatten() {
        let e = merged.entry(mac.to_u64()).or_insert((mac, port, age));
        if age < e.2 {
            *e = (mac, port, age);
        }
    }
    let entries: Vec<Value> = merged
        .into_values()
        .map(|(mac, port, age)| {
            json!({ "mac": mac.to_string(), "port": port_name(live, port), "age_s": age / 1000 })
        })
        .collect();
    Ok(json!({ "fdb": entries }))
}

fn neigh(live: &Live) -> Value {
    let Some(g) = &live.dp.gateway else {
        return json!({ "neigh": [] });
    };
    let now = live.dp.now_ms();
    let (mut rows, pending): (Vec<_>, Vec<_>) = {
        let table = g.neighbors.read();
        (
            table
                .entries()
                .map(|(ip, n)| (ip, n, table.is_live(n.updated_ms, now)))
                .collect(),
            table.pending().collect(),
        )
    };
    rows.sort_by_key(|(ip, _, _)| *ip);
    let mut out: Vec<Value> = rows
        .into_iter()
        .map(|(ip, n, live_entry)| {
            json!({
                "ip": ip.to_string(),
                "mac": n.mac.to_string(),
                "port": port_name(live, n.port),
                "state": if live_entry { "reachable" } else { "stale" },
                "age_s": now.saturating_sub(n.updated_ms) / 1000,
            })
        })
        .collect();
    for ip in pending {
        out.push(json!({ "ip": ip.to_string(), "mac": null, "port": null, "state": "incomplete" }));
    }
    json!({ "neigh": out })
}

fn segment_name(s: Segment) -> &'static str {
    match s {
        Segment::Pods => "pods",
        Segment::Uplink => "uplink",
        Segment::Overlay => "vxlan",
    }
}

fn routes(live: &Live) -> Value {
    let Some(g) = &live.dp.gateway else {
        return json!({ "routes": [] });
    };
    let policy = g.policy();
    let routes: Vec<Value> = policy
        .routes
        .routes()
        .iter()
        .map(|r| {
            let (via, segment) = match r.next_hop {
                NextHop::Connected(s) => (None, s),
                NextHop::Via(ip, s) => (Some(ip.to_string()), s),
            };
            // The network, not the gateway's own address the pod subnet is written with.
            let mask = u32::MAX.checked_shl(32 - r.prefix.len as u32).unwrap_or(0);
            let net = Ipv4Addr::from(u32::from(r.prefix.addr) & mask);
            json!({
                "prefix": format!("{net}/{}", r.prefix.len),
                "via": via,
                "segment": segment_name(segment),
            })
        })
        .collect();
    json!({ "routes": routes })
}

fn proto_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        p => p.to_string(),
    }
}

fn services(live: &Live) -> Value {
    let Some(node) = &live.node else {
        return json!({ "services": [] });
    };
    let services: Vec<Value> = node
        .gateway
        .services
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "cluster_ip": s.cluster_ip.to_string(),
                "port": s.port,
                "protocol": proto_name(s.proto),
                "node_port": s.node_port,
                "backends": s.backends.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
                "affinity_s": s.affinity_timeout_s,
                "node_port_local": s.external_local.as_ref().map(|l| l.iter().map(|b| b.to_string()).collect::<Vec<_>>()),
                "node_port_backends": s.node_port_backends.as_ref().map(|l| l.iter().map(|b| b.to_string()).collect::<Vec<_>>()),
            })
        })
        .collect();
    json!({ "services": services })
}

fn state_name(s: &FlowState) -> &'static str {
    match s {
        FlowState::Tcp(t) => match t {
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::PickedUp => "ESTABLISHED_UNREPLIED",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait { .. } => "FIN_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
        },
        FlowState::Udp { replied: false } => "UNREPLIED",
        FlowState::Udp { replied: true } => "REPLIED",
        FlowState::Icmp => "ICMP",
        FlowState::Generic => "GENERIC",
    }
}

fn flow_json(f: &Flow, now: u64) -> Value {
    let at = |ip: Ipv4Addr, port: u16| format!("{ip}:{port}");
    json!({
        "proto": proto_name(f.orig.proto),
        "orig_src": at(f.orig.src, f.orig.sport),
        "orig_dst": at(f.orig.dst, f.orig.dport),
        "reply_src": at(f.reply.src, f.reply.sport),
        "reply_dst": at(f.reply.dst, f.reply.dport),
        "state": state_name(&f.state),
        "expires_s": f.expires_in_ms(now) / 1000,
    })
}

fn conntrack(live: &Live, limit: usize) -> Value {
    let Some(g) = &live.dp.gateway else {
        return json!({ "conntrack": [], "total": 0 });
    };
    let now = live.dp.now_ms();
    let flows = g.conntrack.snapshot(limit);
    json!({
        "conntrack": flows.iter().map(|f| flow_json(f, now)).collect::<Vec<_>>(),
        "total": g.conntrack.len(),
    })
}

fn capture(live: &Live, port: &str, w: &Words) -> Result<Outcome, String> {
    let id = live
        .dp
        .port_id(port)
        .ok_or_else(|| format!("no port {port:?} is attached"))?;
    let count = match w.opt("count") {
        Some(_) => w.number("count", 0, MAX_CAPTURE)?,
        None => return Err("capture needs --count N".into()),
    };
    let out = PathBuf::from(w.opt("out").ok_or("capture needs --out FILE.pcap")?);
    if !out.is_absolute() {
        return Err(format!(
            "--out {}: the path must be absolute",
            out.display()
        ));
    }
    let timeout = Duration::from_secs(w.number("timeout", 60, 3600)? as u64);
    let (tx, frames) = crossbeam_channel::bounded(4096);
    let state = std::sync::Arc::default();
    live.dp
        .capture(id, tx, std::sync::Arc::clone(&state))
        .map_err(|e| e.to_string())?;
    Ok(Outcome::Capture {
        frames,
        state,
        count,
        out,
        timeout,
        port: port.to_string(),
    })
}
