//! The measuring receiver: an AF_XDP socket on every queue of the sink interface, reading the
//! sequence number and send time the stamped sender wrote into each frame, and the time of
//! arrival its own XDP program wrote there. Latency is arrival minus send: what the dataplane
//! took up to the sink interface, not how soon this thread got a core to read it (on a
//! machine whose cores are all taken, that was milliseconds); the read latency is reported
//! beside it.

use hdrhistogram::Histogram;
use pmd::bpf::{
    RedirectProgram, XdpLink, XdpMode, XskMap, ARRIVAL_OFFSET, STAMP_SEQ_OFFSET, STAMP_TIME_OFFSET,
};
use pmd::netdev;
use pmd::socket::PortSocket;
use pmd::umem::{RingSizes, Umem};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The receiver lends half its fill ring, 16,384 frames: 40 ms at 400 kpps, time for it to get
/// a core it shares with the generator (on a 2-core machine) before the ring runs dry.
const RINGS: RingSizes = RingSizes {
    fill: 32768,
    completion: 64,
    rx: 32768,
    tx: 64,
};
/// All lent at once (half the ring): received frames go back to the pool and are lent again.
const FRAMES_PER_QUEUE: u32 = 16384;
const BURST: u32 = 64;
/// How long the reader pauses when it found less than a burst waiting.
const IDLE_READ_PAUSE: Duration = Duration::from_micros(100);

/// What the stamps say.
#[derive(Default)]
struct Tally {
    received: u64,
    unstamped: u64,
    reordered: u64,
    /// Stamped frames whose arrival time is not after their send time (left out of the
    /// latency; a sign of a frame this receiver's program did not stamp).
    bad_arrival: u64,
    first_seq: Option<u64>,
    last_seq: u64,
    max_seq: u64,
}

impl Tally {
    fn lost(&self) -> u64 {
        match self.first_seq {
            Some(first) => {
                (self.max_seq - first + 1).saturating_sub(self.received - self.unstamped)
            }
            None => 0,
        }
    }
}

fn read_u64(frame: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&frame[at..at + 8]);
    u64::from_le_bytes(b)
}

/// A stamped IPv4/UDP frame (to `port`, if given): its (sequence, send time, arrival time).
fn stamp(frame: &[u8], port: Option<u16>) -> Option<(u64, u64, u64)> {
    if frame.len() < STAMP_TIME_OFFSET + 8
        || frame[12..14] != [0x08, 0x00]
        || frame[14] != 0x45
        || frame[23] != 17
    {
        return None;
    }
    if port.is_some_and(|p| frame[36..38] != p.to_be_bytes()) {
        return None;
    }
    Some((
        read_u64(frame, STAMP_SEQ_OFFSET),
        read_u64(frame, STAMP_TIME_OFFSET),
        read_u64(frame, ARRIVAL_OFFSET),
    ))
}

pub fn run(
    dev: &str,
    duration: Duration,
    port: Option<u16>,
    stop: &AtomicBool,
) -> Result<(), String> {
    let ifindex = netdev::ifindex(dev).map_err(|e| e.to_string())?;
    let queues = netdev::rx_queues(dev).map_err(|e| format!("{dev}: {e}"))?;
    let (umem, mut pool) = Umem::new(FRAMES_PER_QUEUE * queues).map_err(|e| e.to_string())?;
    let mut sockets = Vec::new();
    for q in 0..queues {
        sockets.push(PortSocket::open(&umem.handle(), dev, q, RINGS).map_err(|e| e.to_string())?);
    }
    let map = XskMap::create(queues).map_err(|e| e.to_string())?;
    for s in &sockets {
        map.insert(s.queue, s.raw_fd()).map_err(|e| e.to_string())?;
    }
    // Lent before the program sends anything here: a frame now would find no room.
    // Its share is all it may lend (half the ring): the receiver must not drop a burst.
    for s in sockets.iter_mut() {
        s.set_fill_share(u32::MAX, u32::MAX);
        s.refill(&umem, &mut pool, 0);
    }
    let prog = RedirectProgram::load_arrival_stamped(&map).map_err(|e| e.to_string())?;
    let _link = XdpLink::attach(&prog, ifindex, XdpMode::Native)
        .map_err(|e| format!("attaching to {dev}: {e}"))?;
    // The orchestrator starts the sender only after this line.
    println!("ready");
    let _ = std::io::Write::flush(&mut std::io::stdout());

    let mut latency =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    let mut read_latency = latency.clone();
    let mut t = Tally::default();
    let start = Instant::now();
    let mut last = (start, 0u64);
    let mut frames = Vec::with_capacity(BURST as usize);
    while !stop.load(Ordering::Relaxed) && start.elapsed() < duration {
        let mut got = 0;
        for s in sockets.iter_mut() {
            frames.clear();
            got += s.receive(&umem, &mut pool, BURST, &mut frames);
            let now = netdev::monotonic_ns();
            for frame in frames.drain(..) {
                t.received += 1;
                match stamp(umem.data(&frame), port) {
                    Some((seq, sent, arrived)) => {
                        if t.first_seq.is_none() {
                            t.first_seq = Some(seq);
                        }
                        if seq < t.last_seq {
                            t.reordered += 1;
                        }
                        t.last_seq = seq;
                        t.max_seq = t.max_seq.max(seq);
                        if arrived > sent {
                            let _ = latency.record(arrived - sent);
                        } else {
                            t.bad_arrival += 1;
                        }
                        let _ = read_latency.record(now.saturating_sub(sent).max(1));
                    }
                    None => t.unstamped += 1,
                }
                pool.put(frame);
            }
            s.refill(&umem, &mut pool, 0);
        }
        if got < BURST {
            // Read in bulk, woken by nothing: the frames carry their time of arrival, so
            // reading late costs no accuracy, while a reader waiting on its sockets is woken
            // (an IPI, a VM exit in a guest) from the transmitting core for every few frames
            // and takes turns with the sender where they share a core. The ring holds what
            // arrives meanwhile (16,384 frames lent: 5 ms at 3 Mpps).
            std::thread::sleep(IDLE_READ_PAUSE);
            // A driver in zero-copy mode stops when its fill ring ran dry and waits to be
            // woken (need_wakeup); veth in copy mode does not, and the call is cheap.
            for s in &sockets {
                s.busy_poll();
            }
        }
        if last.0.elapsed() >= Duration::from_secs(1) {
            let secs = last.0.elapsed().as_secs_f64();
            println!(
                "rx {dev}: {:.0} pps, lost so far {}",
                (t.received - last.1) as f64 / secs,
                t.lost()
            );
            last = (Instant::now(), t.received);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let us = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    let read_us = |q: f64| read_latency.value_at_quantile(q) as f64 / 1000.0;
    // Frames the kernel could not hand to the receiver itself: losses of the measurement, not
    // of the switch. Unreadable statistics read as 0: the result line comes anyway.
    let mut own = pmd::socket::SocketKernelStats::default();
    for s in &sockets {
        let k = s.kernel_stats().unwrap_or_default();
        own.rx_dropped += k.rx_dropped;
        own.rx_ring_full += k.rx_ring_full;
        own.rx_fill_ring_empty += k.rx_fill_ring_empty;
    }
    println!(
        "result: received={} lost={} reordered={} unstamped={} seconds={secs:.3} latency_us_p50={:.1} p99={:.1} p999={:.1} max={:.1} receiver_dropped={} receiver_ring_full={} receiver_fill_empty={} read_latency_us_p50={:.1} read_p99={:.1} bad_arrival={}",
        t.received,
        t.lost(),
        t.reordered,
        t.unstamped,
        us(0.5),
        us(0.99),
        us(0.999),
        latency.max() as f64 / 1000.0,
        own.rx_dropped,
        own.rx_ring_full,
        own.rx_fill_ring_empty,
        read_us(0.5),
        read_us(0.99),
        t.bad_arrival,
    );
    Ok(())
}
