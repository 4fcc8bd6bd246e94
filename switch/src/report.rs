//! Turns the workers' counters into what the operator reads.

use pipeline::conntrack::ConntrackCounters;
use pipeline::{GwCounter, L2Counter, PortId};
use pmd::{PortCounter, PortInfo, WorkerCounter, WorkerReport, WorkerStats};
use std::fmt::Write;
use std::sync::Arc;

/// Counters summed over workers, per port.
pub struct Snapshot {
    pub ports: Vec<[u64; PortCounter::COUNT]>,
    pub l2: [u64; L2Counter::COUNT],
    pub fdb_entries: Vec<u64>,
}

impl Snapshot {
    /// The counters of `ports` (by id), in that order.
    pub fn take(stats: &[Arc<WorkerStats>], ports: &[PortId]) -> Snapshot {
        let mut snap = Snapshot {
            ports: vec![[0; PortCounter::COUNT]; ports.len()],
            l2: [0; L2Counter::COUNT],
            fdb_entries: Vec::new(),
        };
        for w in stats {
            for (counters, &id) in snap.ports.iter_mut().zip(ports) {
                for &c in PortCounter::ALL {
                    counters[c as usize] += w.port(id as usize, c);
                }
            }
            for &c in L2Counter::ALL {
                snap.l2[c as usize] += w.l2(c);
            }
            snap.fdb_entries
                .push(w.fdb_entries.load(std::sync::atomic::Ordering::Relaxed));
        }
        snap
    }

    pub fn port(&self, p: usize, c: PortCounter) -> u64 {
        self.ports[p][c as usize]
    }

    pub fn drops(&self, p: usize) -> u64 {
        PortCounter::ALL
            .iter()
            .filter(|c| c.is_drop())
            .map(|&c| self.port(p, c))
            .sum()
    }
}

/// The per-port table printed at exit (and by the stats interval, with rates).
pub fn port_table_for(ports: &[PortInfo], snap: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:>12} {:>14} {:>12} {:>14} {:>10}",
        "port", "rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "drops"
    );
    for (p, info) in ports.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:<16} {:>12} {:>14} {:>12} {:>14} {:>10}",
            info.name,
            snap.port(p, PortCounter::RxPackets),
            snap.port(p, PortCounter::RxBytes),
            snap.port(p, PortCounter::TxPackets),
            snap.port(p, PortCounter::TxBytes),
            snap.drops(p)
        );
    }
    for (p, info) in ports.iter().enumerate() {
        // Every non-traffic counter that moved: drops by reason, then the others (kernel ring
        // events, what the fast path sent).
        let moved = |drop: bool| -> Vec<String> {
            PortCounter::ALL
                .iter()
                .filter(|c| !c.is_traffic() && c.is_drop() == drop && snap.port(p, **c) > 0)
                .map(|&c| format!("{}={}", c.name(), snap.port(p, c)))
                .collect()
        };
        for (label, names) in [("drops on", moved(true)), ("also on", moved(false))] {
            if !names.is_empty() {
                let _ = writeln!(out, "{label} {}: {}", info.name, names.join(" "));
            }
        }
    }
    let bridge: Vec<String> = L2Counter::ALL
        .iter()
        .filter(|c| snap.l2[**c as usize] > 0)
        .map(|&c| format!("{}={}", c.name(), snap.l2[c as usize]))
        .collect();
    let _ = writeln!(
        out,
        "bridge: {} fdb_entries={:?}",
        bridge.join(" "),
        snap.fdb_entries
    );
    out
}

/// The gateway's counters summed over workers (those that moved), and conntrack's size and
/// its table counters.
pub fn gateway_lines(stats: &[Arc<WorkerStats>], conntrack: &ConntrackCounters) -> String {
    let moved: Vec<String> = GwCounter::ALL
        .iter()
        .map(|&c| (c, stats.iter().map(|s| s.gateway(c)).sum::<u64>()))
        .filter(|(_, v)| *v > 0)
        .map(|(c, v)| format!("{}={v}", c.name()))
        .collect();
    let flows = stats.first().map_or(0, |s| {
        s.conntrack_entries
            .load(std::sync::atomic::Ordering::Relaxed)
    });
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    format!(
        "gateway: {}\nconntrack: {flows} flows created={} expired={} evicted={} refused_full={} removed_by_reload={}\n",
        moved.join(" "),
        load(&conntrack.created),
        load(&conntrack.expired),
        load(&conntrack.evicted),
        load(&conntrack.refused_full),
        load(&conntrack.removed),
    )
}

/// Cycles per packet and load per worker, as `pmd-stats-show` reports them.
pub fn worker_lines(stats: &[Arc<WorkerStats>]) -> String {
    let mut out = String::new();
    for (w, s) in stats.iter().enumerate() {
        let busy = s.worker(WorkerCounter::BusyCycles);
        let idle = s.worker(WorkerCounter::IdleCycles);
        let packets = s.worker(WorkerCounter::Packets);
        let per_packet = busy.checked_div(packets).unwrap_or(0);
        let load = if busy + idle > 0 {
            100.0 * busy as f64 / (busy + idle) as f64
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "worker {w}: packets={packets} processing_cycles_per_packet={per_packet} busy={load:.1}% of polling cycles, sleeps={} tx_kicks={} handoffs_out={} handoffs_in={} handoffs_bad_port={} learn_events_lost={} learn_resyncs={}",
            s.worker(WorkerCounter::Sleeps),
            s.worker(WorkerCounter::TxKicks),
            s.worker(WorkerCounter::HandoffsOut),
            s.worker(WorkerCounter::HandoffsIn),
            s.worker(WorkerCounter::HandoffsBadPort),
            s.worker(WorkerCounter::LearnEventsLost),
            s.worker(WorkerCounter::LearnResyncs),
        );
    }
    out
}

pub fn frame_lines(reports: &[WorkerReport]) -> String {
    let mut out = String::new();
    for r in reports {
        let verdict = if r.all_frames_home() {
            "all frames home"
        } else {
            "FRAMES MISSING"
        };
        let _ = writeln!(
            out,
            "worker {}: frames total={} free={} in_fill_ring={} in_tx={} refused_by_pool={}: {verdict}",
            r.worker,
            r.frames_total,
            r.frames_free,
            r.frames_in_fill,
            r.frames_in_tx,
            r.frames_refused
        );
    }
    out
}

/// One line per port with rates since the previous snapshot (of the same ports).
pub fn rate_lines(ports: &[PortInfo], before: &Snapshot, after: &Snapshot, secs: f64) -> String {
    let mut out = String::new();
    for (p, info) in ports.iter().enumerate() {
        // A port removed and added again meanwhile starts from zero: no rate for that interval.
        let rate = |c| after.port(p, c).saturating_sub(before.port(p, c)) as f64 / secs;
        let _ = writeln!(
            out,
            "{}: rx {:.0} pps {:.1} Mbit/s, tx {:.0} pps {:.1} Mbit/s, drops {}",
            info.name,
            rate(PortCounter::RxPackets),
            rate(PortCounter::RxBytes) * 8.0 / 1e6,
            rate(PortCounter::TxPackets),
            rate(PortCounter::TxBytes) * 8.0 / 1e6,
            after.drops(p)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_lines_show_lost_learning_announcements_and_resyncs() {
        let stats = Arc::new(WorkerStats::new());
        stats.worker.set(WorkerCounter::LearnEventsLost as usize, 7);
        stats.worker.set(WorkerCounter::LearnResyncs as usize, 2);
        stats.worker.set(WorkerCounter::HandoffsBadPort as usize, 3);
        let line = worker_lines(&[stats]);
        assert!(line.contains("learn_events_lost=7"), "{line}");
        assert!(line.contains("learn_resyncs=2"), "{line}");
        assert!(line.contains("handoffs_bad_port=3"), "{line}");
    }

    /// Port vp1's table after its counters were set to `counts`.
    fn vp1_table(counts: &[(PortCounter, u64)]) -> (String, Snapshot) {
        let stats = Arc::new(WorkerStats::new());
        for &(c, n) in counts {
            stats.ports[0].set(c as usize, n);
        }
        let snap = Snapshot::take(&[stats], &[0]);
        let ports = [PortInfo {
            name: "vp1".into(),
            ifindex: 1,
            queues: 1,
            mtu: 1500,
        }];
        (port_table_for(&ports, &snap), snap)
    }

    /// `port del X; port add X` within one interval: X's counters start from zero again.
    #[test]
    fn a_port_counted_from_zero_again_has_no_rate_not_a_wrapped_one() {
        let (_, before) = vp1_table(&[(PortCounter::RxPackets, 1_000)]);
        let (_, after) = vp1_table(&[(PortCounter::RxPackets, 10)]);
        let ports = [PortInfo {
            name: "vp1".into(),
            ifindex: 1,
            queues: 1,
            mtu: 1500,
        }];
        let line = rate_lines(&ports, &before, &after, 1.0);
        assert!(line.starts_with("vp1: rx 0 pps"), "{line}");
    }

    #[test]
    fn new_drop_reasons_are_shown_per_port() {
        let (table, snap) = vp1_table(&[
            (PortCounter::DropEmitTooLarge, 4),
            (PortCounter::DropHandoffTooLarge, 5),
        ]);
        assert!(
            table.contains("drops on vp1: tx_drop_emit_too_large=4 tx_drop_handoff_too_large=5"),
            "{table}"
        );
        assert_eq!(snap.drops(0), 9);
    }

    #[test]
    fn what_the_fast_path_sent_is_not_a_drop() {
        let (table, _) = vp1_table(&[(PortCounter::FastPathTxPackets, 7)]);
        assert!(
            table.contains("also on vp1: tx_fast_path_packets=7"),
            "{table}"
        );
        assert!(!table.contains("drops on"), "{table}");
    }

    #[test]
    fn refused_frames_are_not_home() {
        let report = WorkerReport {
            worker: 0,
            frames_total: 4,
            frames_free: 4,
            frames_in_fill: 0,
            frames_in_tx: 0,
            frames_refused: 1,
        };
        let line = frame_lines(&[report]);
        assert!(line.contains("refused_by_pool=1: FRAMES MISSING"), "{line}");
    }
}
