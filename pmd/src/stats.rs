//! Counters a worker publishes for the control thread; the worker is the only writer.

use pipeline::define_counters;
use pipeline::{GwCounter, L2Counter};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

define_counters! {
    /// Per-port traffic and drop counters, by reason.
    pub enum PortCounter, PortCounters {
        RxPackets => "rx_packets",
        RxBytes => "rx_bytes",
        TxPackets => "tx_packets",
        TxBytes => "tx_bytes",
        DropPipeline => "rx_drop_pipeline",
        DropTxRingFull => "tx_drop_ring_full",
        DropNoFrame => "tx_drop_no_free_frame",
        DropHandoffFull => "tx_drop_handoff_full",
        DropEmitTooLarge => "tx_drop_emit_too_large",
        DropHandoffTooLarge => "tx_drop_handoff_too_large",
        DropOverMtu => "tx_drop_over_mtu",
        DropBadChain => "rx_drop_bad_chain",
        KernelRxDropped => "kernel_rx_dropped",
        KernelRxRingFull => "kernel_rx_ring_full",
        KernelFillRingEmpty => "kernel_fill_ring_empty",
        KernelTxInvalid => "kernel_tx_invalid_descs",
        FastPathTxPackets => "tx_fast_path_packets",
    }
}

impl PortCounter {
    /// Packet and byte counts, as opposed to drops and events.
    pub fn is_traffic(self) -> bool {
        matches!(
            self,
            PortCounter::RxPackets
                | PortCounter::RxBytes
                | PortCounter::TxPackets
                | PortCounter::TxBytes
        )
    }

    /// Counters that count lost frames.
    pub fn is_drop(self) -> bool {
        !matches!(
            self,
            PortCounter::RxPackets
                | PortCounter::RxBytes
                | PortCounter::TxPackets
                | PortCounter::TxBytes
                | PortCounter::KernelFillRingEmpty
                | PortCounter::FastPathTxPackets
        )
    }
}

define_counters! {
    /// Per-worker cost and frame accounting.
    pub enum WorkerCounter, WorkerCounters {
        Passes => "passes",
        Packets => "packets",
        BusyCycles => "busy_cycles",
        IdleCycles => "idle_cycles",
        Sleeps => "sleeps",
        TxKicks => "tx_kicks",
        FloodTransmits => "flood_transmits",
        HandoffsOut => "handoffs_out",
        HandoffsIn => "handoffs_in",
        LearnEventsLost => "learn_events_lost",
        LearnResyncs => "learn_resyncs",
        HandoffsBadPort => "handoffs_bad_port",
        FramesRefused => "frames_refused",
        FramesTotal => "frames_total",
        FramesFree => "frames_free",
        FramesInFill => "frames_in_fill",
        FramesInTx => "frames_in_tx",
        Sockets => "sockets",
        Segments => "segments",
        SegmentCopies => "segment_copies",
        KernelFrameRefs => "kernel_frame_refs",
        DropPortAbsent => "drop_port_absent",
        LongestGapUs => "longest_gap_us",
        LongestCommandsUs => "longest_commands_us",
        GapsOver1ms => "gaps_over_1ms",
        GapsOver1msWorking => "gaps_over_1ms_working",
        LongestPassUs => "longest_pass_us",
        PassesOver20us => "passes_over_20us",
        PassesOver100us => "passes_over_100us",
        KicksOver20us => "kicks_over_20us",
        KicksOver100us => "kicks_over_100us",
        FullBatches => "full_batches",
        LongestHousekeepingUs => "longest_housekeeping_us",
        Preemptions => "preemptions",
        CoreStealMs => "core_steal_ms",
        WaitedForCoreUs => "waited_for_core_us",
        CoreSoftirqThreadUs => "core_softirq_thread_us",
        CoreSoftirqThreadWaitedUs => "core_softirq_thread_waited_us",
        FastPathFlows => "fast_path_flows",
        FastPathInstalled => "fast_path_installed",
        FastPathRemoved => "fast_path_removed",
        FastPathFull => "fast_path_full",
        FastPathErrors => "fast_path_errors",
        FastPathPackets => "fast_path_packets",
    }
}

/// A counter array written by one thread and read by others.
pub struct AtomicCounters<const N: usize>([AtomicU64; N]);

impl<const N: usize> Default for AtomicCounters<N> {
    fn default() -> Self {
        AtomicCounters(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl<const N: usize> AtomicCounters<N> {
    #[inline]
    pub fn add(&self, index: usize, n: u64) {
        if n != 0 {
            self.0[index].fetch_add(n, Relaxed);
        }
    }

    #[inline]
    pub fn set(&self, index: usize, v: u64) {
        self.0[index].store(v, Relaxed);
    }

    /// Raises the value to `v` if lower (one writer: no lost update).
    #[inline]
    pub fn max(&self, index: usize, v: u64) {
        if v > self.0[index].load(Relaxed) {
            self.0[index].store(v, Relaxed);
        }
    }

    pub fn get(&self, index: usize) -> u64 {
        self.0[index].load(Relaxed)
    }
}

/// Everything one worker publishes.
pub struct WorkerStats {
    pub ports: Vec<AtomicCounters<{ PortCounter::COUNT }>>,
    pub worker: AtomicCounters<{ WorkerCounter::COUNT }>,
    pub l2: AtomicCounters<{ L2Counter::COUNT }>,
    pub gateway: AtomicCounters<{ GwCounter::COUNT }>,
    /// Entries in this worker's forwarding database.
    pub fdb_entries: AtomicU64,
    /// Tracked connections (published by the leader worker).
    pub conntrack_entries: AtomicU64,
}

impl Default for WorkerStats {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerStats {
    /// Counters for every port slot a switch can have (`MAX_PORTS`): ports come and go.
    pub fn new() -> WorkerStats {
        WorkerStats {
            ports: (0..pipeline::MAX_PORTS)
                .map(|_| AtomicCounters::default())
                .collect(),
            worker: AtomicCounters::default(),
            l2: AtomicCounters::default(),
            gateway: AtomicCounters::default(),
            fdb_entries: AtomicU64::new(0),
            conntrack_entries: AtomicU64::new(0),
        }
    }

    pub fn port(&self, port: usize, c: PortCounter) -> u64 {
        self.ports[port].get(c as usize)
    }

    pub fn worker(&self, c: WorkerCounter) -> u64 {
        self.worker.get(c as usize)
    }

    pub fn l2(&self, c: L2Counter) -> u64 {
        self.l2.get(c as usize)
    }

    pub fn gateway(&self, c: GwCounter) -> u64 {
        self.gateway.get(c as usize)
    }
}
