//! `--metrics ADDR:PORT`: `GET /metrics` in the Prometheus text format. Each connection gets
//! its own thread (a few at once), a deadline to send its request, and an answer rendered by
//! the main thread from the counters the workers publish.

use crate::control::commands;
use crate::control::server::{ask, timed_out, Slot};
use crate::control::{Outcome, Request, RequestKind};
use crate::live::Live;
use crossbeam_channel::Sender;
use pipeline::{GwCounter, L2Counter};
use pmd::{PortCounter, WorkerCounter};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAX_CLIENTS: usize = 8;
const MAX_REQUEST_HEAD: usize = 8192;
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

pub fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).map_err(|e| format!("--metrics {addr}: {e}"))
}

pub fn serve(listener: TcpListener, requests: Sender<Request>) {
    let clients = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("metrics: accept: {e}");
                std::thread::sleep(crate::control::server::ACCEPT_RETRY);
                continue;
            }
        };
        let Some(slot) = Slot::take(&clients, MAX_CLIENTS) else {
            continue;
        };
        let requests = requests.clone();
        let _ = std::thread::Builder::new()
            .name("vswitch-metrics".into())
            .spawn(move || {
                let _slot = slot;
                connection(stream, &requests);
            });
    }
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
}

fn connection(mut stream: TcpStream, requests: &Sender<Request>) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    // One deadline for the whole request: a client trickling a byte at a time would
    // otherwise hold one of the few slots for hours.
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            respond(&mut stream, "408 Request Timeout", "request timed out\n");
            return;
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if timed_out(&e) => {
                respond(&mut stream, "408 Request Timeout", "request timed out\n");
                return;
            }
            Err(_) => break,
        }
        if head.len() > MAX_REQUEST_HEAD {
            respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "request too large\n",
            );
            return;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut first = text.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    if method != "GET" {
        respond(&mut stream, "405 Method Not Allowed", "only GET\n");
        return;
    }
    if path != "/metrics" && !path.starts_with("/metrics?") {
        respond(&mut stream, "404 Not Found", "try /metrics\n");
        return;
    }
    match ask(requests, RequestKind::Metrics) {
        Outcome::Text(body) => respond(&mut stream, "200 OK", &body),
        _ => respond(
            &mut stream,
            "503 Service Unavailable",
            "the switch did not answer\n",
        ),
    }
}

/// Label values escaped as the text format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
            return;
        }
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        let _ = writeln!(self.0, "{name}{{{}}} {value}", l.join(","));
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// The whole exposition, from the workers' published counters.
pub fn render(live: &Live) -> String {
    let dp = &live.dp;
    dp.refresh_stats();
    let mut o = Out(String::new());
    let ports: Vec<(u16, String)> = dp
        .ports()
        .map(|(id, p)| (id, p.info.name.clone()))
        .collect();
    let port_sum =
        |id: u16, c: PortCounter| dp.stats.iter().map(|s| s.port(id as usize, c)).sum::<u64>();
    for (name, c, help) in [
        (
            "vswitch_port_rx_packets_total",
            PortCounter::RxPackets,
            "Frames received on the port.",
        ),
        (
            "vswitch_port_tx_packets_total",
            PortCounter::TxPackets,
            "Frames sent out of the port.",
        ),
        (
            "vswitch_port_rx_bytes_total",
            PortCounter::RxBytes,
            "Bytes received on the port.",
        ),
        (
            "vswitch_port_tx_bytes_total",
            PortCounter::TxBytes,
            "Bytes sent out of the port.",
        ),
    ] {
        o.family(name, "counter", help);
        for (id, port) in &ports {
            o.sample(name, &[("port", port)], port_sum(*id, c));
        }
    }
    o.family(
        "vswitch_port_drops_total",
        "counter",
        "Frames lost on the port, by reason.",
    );
    for (id, port) in &ports {
        for &c in PortCounter::ALL.iter().filter(|c| c.is_drop()) {
            o.sample(
                "vswitch_port_drops_total",
                &[("port", port), ("reason", c.name())],
                port_sum(*id, c),
            );
        }
    }
    o.one("vswitch_ports", "gauge", "Ports attached.", ports.len());
    o.one(
        "vswitch_ports_lost_total",
        "counter",
        "Ports taken down because their interface disappeared.",
        live.ports_lost,
    );
    let fdb = dp
        .stats
        .iter()
        .map(|s| s.fdb_entries.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    o.one(
        "vswitch_fdb_entries",
        "gauge",
        "MAC addresses in the forwarding table.",
        fdb,
    );
    o.family(
        "vswitch_bridge_frames_total",
        "counter",
        "What the bridge did with frames, by event.",
    );
    for &c in L2Counter::ALL {
        let v: u64 = dp.stats.iter().map(|s| s.l2(c)).sum();
        o.sample("vswitch_bridge_frames_total", &[("event", c.name())], v);
    }
    o.family(
        "vswitch_worker_busy_ratio",
        "gauge",
        "Share of a worker's polling cycles that found frames, over the last second.",
    );
    for (w, ratio) in live.load.ratio.iter().enumerate() {
        let core = dp.cores[w].map_or_else(|| "any".to_string(), |c| c.to_string());
        o.sample(
            "vswitch_worker_busy_ratio",
            &[("core", &core)],
            format!("{ratio:.4}"),
        );
    }
    o.family(
        "vswitch_worker_packets_total",
        "counter",
        "Frames a worker processed.",
    );
    for (w, s) in dp.stats.iter().enumerate() {
        let core = dp.cores[w].map_or_else(|| "any".to_string(), |c| c.to_string());
        o.sample(
            "vswitch_worker_packets_total",
            &[("core", &core)],
            s.worker(WorkerCounter::Packets),
        );
    }
    let fast_path = [
        (
            "vswitch_fast_path_flows",
            "gauge",
            "Flows installed in the XDP fast path (L2, or the gateway's 5-tuple entries).",
            WorkerCounter::FastPathFlows,
        ),
        (
            "vswitch_fast_path_packets_total",
            "counter",
            "Frames the XDP fast path forwarded (read back once a second).",
            WorkerCounter::FastPathPackets,
        ),
        (
            "vswitch_fast_path_installed_total",
            "counter",
            "Flows the workers installed in the XDP fast path.",
            WorkerCounter::FastPathInstalled,
        ),
        (
            "vswitch_fast_path_removed_total",
            "counter",
            "Fast-path flows taken out because the switch would no longer decide them the same way.",
            WorkerCounter::FastPathRemoved,
        ),
        (
            "vswitch_fast_path_full_total",
            "counter",
            "Flows left in userspace because the fast path's flow map was full.",
            WorkerCounter::FastPathFull,
        ),
    ];
    for (name, kind, help, counter) in fast_path {
        let total: u64 = dp.stats.iter().map(|s| s.worker(counter)).sum();
        o.one(name, kind, help, total);
    }
    o.one(
        "vswitch_fast_path_overlay_legs",
        "gauge",
        "Distinct outer VXLAN headers the fast path's flows into and out of the overlay use.",
        dp.fast_path_overlay_legs(),
    );
    let mem = commands::memory(live);
    let n = |k: &str| mem[k].as_u64().unwrap_or(0);
    o.one(
        "vswitch_frame_memory_bytes",
        "gauge",
        "Frame memory (UMEM) pinned.",
        n("bytes_pinned"),
    );
    o.one(
        "vswitch_frame_memory_segments",
        "gauge",
        "Frame memory segments mapped (a worker maps one per so many ports).",
        n("segments"),
    );
    o.one(
        "vswitch_frame_memory_segment_copies_total",
        "counter",
        "Frames copied into another segment to leave by a port of that segment.",
        n("segment_copies"),
    );
    o.one(
        "vswitch_frame_memory_kernel_bytes",
        "gauge",
        "Estimate of the kernel's bookkeeping for the sockets registered on the frame memory.",
        n("kernel_bytes_estimate"),
    );
    o.one(
        "vswitch_frames_free",
        "gauge",
        "Frames free in the workers' pools.",
        n("frames_free"),
    );
    o.one(
        "vswitch_frames_in_fill_rings",
        "gauge",
        "Frames lent to the kernel for receiving.",
        n("frames_in_fill_rings"),
    );
    if dp.gateway.is_some() {
        let ct = commands::conntrack_counters(live);
        let c = |k: &str| ct[k].as_u64().unwrap_or(0);
        o.one(
            "vswitch_conntrack_entries",
            "gauge",
            "Tracked connections.",
            c("entries"),
        );
        o.one(
            "vswitch_conntrack_limit",
            "gauge",
            "Most tracked connections.",
            c("limit"),
        );
        o.one(
            "vswitch_conntrack_inserts_total",
            "counter",
            "Connections tracked.",
            c("inserts"),
        );
        o.one(
            "vswitch_conntrack_evictions_total",
            "counter",
            "Unestablished connections evicted to make room.",
            c("evictions"),
        );
        o.one(
            "vswitch_conntrack_timeouts_total",
            "counter",
            "Connections that timed out.",
            c("timeouts"),
        );
        o.one(
            "vswitch_conntrack_refused_total",
            "counter",
            "New connections refused: the table was full.",
            c("refused_full"),
        );
        let gw = |c: GwCounter| dp.stats.iter().map(|s| s.gateway(c)).sum::<u64>();
        o.one(
            "vswitch_nat_port_exhaustion_total",
            "counter",
            "New connections dropped: no NAT source port was free.",
            gw(GwCounter::DropNatPortsExhausted),
        );
        o.family(
            "vswitch_gateway_frames_total",
            "counter",
            "What the gateway did with frames, by event.",
        );
        for &c in GwCounter::ALL {
            o.sample(
                "vswitch_gateway_frames_total",
                &[("event", c.name())],
                gw(c),
            );
        }
    } else {
        o.one(
            "vswitch_conntrack_entries",
            "gauge",
            "Tracked connections.",
            0,
        );
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_labels_follow_the_text_format() {
        let mut o = Out(String::new());
        o.family("x_total", "counter", "An x.");
        o.sample("x_total", &[("port", "a\"b")], 3);
        assert_eq!(
            o.0,
            "# HELP x_total An x.\n# TYPE x_total counter\nx_total{port=\"a\\\"b\"} 3\n"
        );
    }
}
