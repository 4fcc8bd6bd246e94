//! One AF_XDP socket: a port's receive queue with its fill, completion, rx and tx rings, bound
//! into the worker's UMEM, which it registers itself (see `umem`), so it opens and closes
//! without disturbing the worker's other sockets.

use crate::umem::{Frame, FramePool, RingSizes, Umem, UmemHandle, XDP_PKT_CONTD};
use std::ffi::CString;
use std::io;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, User};

fn errno(e: xdpilone::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.get_raw().abs())
}

/// Kernel-side counters of one socket (XDP_STATISTICS).
#[derive(Debug, Default, Clone, Copy)]
pub struct SocketKernelStats {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty: u64,
    pub tx_ring_empty: u64,
}

const MAX_KICKS_PER_PASS: u32 = 16;
const SEND_BUFFER_BYTES: libc::c_int = 8 << 20;

/// Best effort: SO_SNDBUFFORCE needs CAP_NET_ADMIN, SO_SNDBUF is capped by wmem_max.
fn set_send_buffer(fd: i32, bytes: libc::c_int) {
    for option in [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF] {
        // SAFETY: setsockopt reads one c_int from the pointer for the given length.
        let ret = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                &bytes as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if ret == 0 {
            return;
        }
    }
}

/// Frames one `sendto` may send in copy mode (kernel default 32); kernels before 6.17 lack the
/// option and keep the default, which costs only more kicks.
const TX_BUDGET: u32 = 256;
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;

fn raise_tx_budget(fd: i32, budget: u32) -> bool {
    // SAFETY: setsockopt reads one u32 from the pointer for the given length.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            crate::socket::SOL_XDP,
            XDP_MAX_TX_SKB_BUDGET,
            &budget as *const u32 as *const libc::c_void,
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    ret == 0
}

const SOL_XDP: libc::c_int = 283;
/// Bind flag: multi-buffer packets (chains of descriptors).
const XDP_USE_SG: u16 = 1 << 4;
/// The fewest frames a socket keeps lent to its fill ring, however small its segment's share.
pub const FILL_MIN: u32 = 32;
static NEXT_TAG: AtomicU32 = AtomicU32::new(1);
const SO_PREFER_BUSY_POLL: libc::c_int = 69;
const SO_BUSY_POLL_BUDGET: libc::c_int = 70;

/// One AF_XDP socket, tied to the UMEM it was bound with: every ring operation takes that UMEM
/// and panics if given another one (its frames would be handed to a kernel that does not know
/// them, or taken back as handles to frames user code still holds).
pub struct PortSocket {
    pub ifname: String,
    pub queue: u32,
    // Field order is drop order: rings first, then the socket they map, then the UMEM memory
    // the socket's registration refers to.
    rx: RingRx,
    tx: RingTx,
    device: DeviceQueue,
    user: User,
    /// This socket's registration of the UMEM's memory (the descriptor the rings belong to).
    _registration: xdpilone::Umem,
    /// The UMEM this socket is bound with; keeps its memory mapped while the socket lives.
    umem: UmemHandle,
    /// Names this socket in the UMEM's record of lent frames.
    tag: u32,
    /// Frames lent to the kernel through the fill ring and not yet received back.
    lent_to_fill: u32,
    /// Frames queued for transmit and not yet completed.
    in_flight_tx: u32,
    /// Frames to keep lent to the fill ring: from `fill_floor`, kept even while the port is
    /// quiet (its first burst arrives faster than any refill, and what finds the fill ring
    /// empty the kernel drops), up to `fill_share` while the port is busy.
    fill_target: u32,
    /// What a quiet socket keeps lent: what its segment can give every socket it may take,
    /// so quiet sockets never hold the frames a new one needs (frames lent come back only as
    /// the socket receives).
    fill_floor: u32,
    /// Its share of its segment, at most half the ring (the kernel publishes how far it has
    /// consumed only when its cached batch runs out; a ring kept full would look full to us
    /// until the kernel has run dry).
    fill_share: u32,
    fill_ring_half: u32,
    /// Frames received since the last `tick`.
    received: u64,
    /// The start of a chain whose rest was not on the rx ring yet (a kernel publishes a chain
    /// at once, so never in practice): given out with its rest at the next receive, so a
    /// chain's rest is never taken for a packet of its own.
    held: Vec<Frame>,
    /// A held start was given out cut: frames continuing it, should they come after all, are
    /// dropped up to its end, never read as a packet of their own.
    rest_unwanted: bool,
    /// Frames of such rests dropped, for the port's `rx_drop_bad_chain` (`take_rests_dropped`).
    chain_rests_dropped: u64,
    /// The last descriptor committed to the tx ring continues (the kernel holds a chain's
    /// start until its rest comes).
    tx_open_chain: bool,
}

// SAFETY: the only part that is not `Send` is the registration's `xdpilone::Umem`, for its
// pointer to our area, which it never dereferences (we do not call its `frame`); the area is
// kept mapped by `umem` (an `Arc`) wherever the socket goes. The rings are used by one thread
// at a time: the socket is opened on the control thread, then moved to the worker that polls
// it, and back to be closed.
unsafe impl Send for PortSocket {}

impl PortSocket {
    /// Opens a socket on `ifname` queue `queue`, registering `umem`'s memory for it. Callable
    /// from any thread; the worker that owns `umem` polls it.
    pub fn open(
        umem: &UmemHandle,
        ifname: &str,
        queue: u32,
        rings: RingSizes,
    ) -> io::Result<PortSocket> {
        let cname =
            CString::new(ifname).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut info = IfInfo::invalid();
        info.from_name(&cname).map_err(errno)?;
        info.set_queue(queue);
        let xsk = umem.register(rings)?;
        let socket = Socket::with_shared(&info, &xsk).map_err(errno)?;
        let device = xsk.fq_cq(&socket).map_err(errno)?;
        let config = SocketConfig {
            rx_size: NonZeroU32::new(rings.rx),
            tx_size: NonZeroU32::new(rings.tx),
            // Multi-buffer: a frame longer than one UMEM frame arrives (and leaves) as a chain.
            bind_flags: SocketConfig::XDP_BIND_NEED_WAKEUP | XDP_USE_SG,
        };
        let user = xsk.rx_tx(&socket, &config).map_err(errno)?;
        let rx = user.map_rx().map_err(errno)?;
        let tx = user.map_tx().map_err(errno)?;
        // A socket of a process that just died can hold the queue for a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match xsk.bind(&user) {
                Ok(()) => break,
                Err(e) if e.get_raw() == libc::EBUSY && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    let e = errno(e);
                    return Err(io::Error::new(
                        e.kind(),
                        format!("binding AF_XDP socket to {ifname} queue {queue}: {e}"),
                    ));
                }
            }
        }
        // In copy mode every frame in transmit is an skb charged to the socket's send buffer;
        // the default (~200 KiB) stalls the tx ring long before it is full.
        set_send_buffer(user.as_raw_fd(), SEND_BUFFER_BYTES);
        raise_tx_budget(user.as_raw_fd(), TX_BUDGET);
        // Until it is given its share.
        let least = FILL_MIN.min(rings.fill / 2);
        Ok(PortSocket {
            ifname: ifname.to_string(),
            queue,
            rx,
            tx,
            device,
            user,
            _registration: xsk,
            umem: umem.clone(),
            tag: NEXT_TAG.fetch_add(1, Ordering::Relaxed),
            lent_to_fill: 0,
            in_flight_tx: 0,
            fill_target: least,
            fill_floor: least,
            fill_share: least,
            fill_ring_half: rings.fill / 2,
            received: 0,
            held: Vec::new(),
            rest_unwanted: false,
            chain_rests_dropped: 0,
            tx_open_chain: false,
        })
    }

    /// Names this socket's frames in the UMEM (see `Umem::reclaim`).
    pub fn tag(&self) -> u32 {
        self.tag
    }

    /// The UMEM segment this socket registered: the frames it receives into and sends from.
    pub fn segment(&self) -> u32 {
        self.umem.id()
    }

    /// The most frames this socket's fill ring may hold (`share`: its share of its segment,
    /// so the ports on a segment cannot lend each other's frames away) and the fewest it keeps
    /// lent while quiet (`floor`, at most `share`). Both at least `FILL_MIN`, at most half the
    /// ring.
    pub fn set_fill_share(&mut self, share: u32, floor: u32) {
        let bounded = |n: u32| {
            n.min(self.fill_ring_half)
                .max(FILL_MIN.min(self.fill_ring_half))
        };
        self.fill_share = bounded(share);
        self.fill_floor = bounded(floor).min(self.fill_share);
        self.fill_target = self.fill_target.clamp(self.fill_floor, self.fill_share);
    }

    /// Once a second: a quiet port gives back what it lent beyond its floor (its fill target
    /// halves while it received less than that in the second).
    pub fn tick(&mut self) {
        if self.received < self.fill_target as u64 {
            self.fill_target = (self.fill_target / 2).max(self.fill_floor);
        }
        self.received = 0;
    }

    /// Asks the kernel to let this socket's reader run the receive queue's NAPI itself
    /// (preferred busy polling: SO_PREFER_BUSY_POLL, SO_BUSY_POLL, SO_BUSY_POLL_BUDGET), so
    /// the copy into the UMEM happens on the worker's core when it calls `busy_poll`.
    pub fn enable_busy_poll(&self, usecs: i32, budget: i32) -> io::Result<()> {
        for (option, value) in [
            (SO_PREFER_BUSY_POLL, 1),
            (libc::SO_BUSY_POLL, usecs),
            (SO_BUSY_POLL_BUDGET, budget),
        ] {
            // SAFETY: setsockopt reads one c_int from the pointer for the given length.
            let ret = unsafe {
                libc::setsockopt(
                    self.raw_fd(),
                    libc::SOL_SOCKET,
                    option,
                    &value as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if ret != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Drives the receive queue's NAPI from this thread (with `enable_busy_poll`).
    pub fn busy_poll(&self) {
        // SAFETY: a zero-length, non-blocking recvfrom on our own socket; nothing is written.
        unsafe {
            libc::recvfrom(
                self.raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
        }
    }

    pub fn raw_fd(&self) -> i32 {
        self.user.as_raw_fd()
    }

    pub fn lent_to_fill(&self) -> u32 {
        self.lent_to_fill
    }

    pub fn in_flight_tx(&self) -> u32 {
        self.in_flight_tx
    }

    /// Tops the fill ring up from its segment's pool, leaving `reserve` frames there (half of
    /// it while this port holds less than `FILL_MIN`: it must not starve behind frames that
    /// quiet ports' fill rings hold).
    pub fn refill(&mut self, umem: &Umem, pool: &mut FramePool, reserve: usize) -> u32 {
        let reserve = match self.lent_to_fill < FILL_MIN {
            true => reserve / 2,
            false => reserve,
        };
        let umem = umem.bound(&self.umem);
        assert!(
            pool.belongs_to(umem),
            "refilling from the pool of another UMEM"
        );
        let mut filled = 0;
        // As in `transmit`: the first reservation may see a stale view of the ring.
        for _ in 0..2 {
            let want = self.fill_target.saturating_sub(self.lent_to_fill);
            let can = pool.available_in(umem.id()).saturating_sub(reserve) as u32;
            let n = want.min(can);
            if n == 0 {
                break;
            }
            let mut writer = self.device.fill(n);
            let room = writer.capacity() as usize;
            if room == 0 {
                break;
            }
            let frames = (0..room)
                .map_while(|_| pool.alloc_in(umem.id()))
                .map(|f| umem.fill_addr(f, self.tag));
            let n = writer.insert(frames);
            writer.commit();
            self.lent_to_fill += n;
            filled += n;
        }
        // A zero-copy driver whose fill ring ran dry stops until it is woken (need_wakeup;
        // copy mode never asks).
        if filled > 0 && self.device.needs_wakeup() {
            self.device.wake();
        }
        filled
    }

    /// Receives up to `max` frames into `out` (and the rest of a chain cut by `max`); returns
    /// how many came off the ring. Chains come whole: a chain's start whose rest is not there
    /// is held back for the next call (then given out even if the rest is still missing: the
    /// worker drops a chain cut short; a rest coming later still goes to `pool`, counted in
    /// `chain_rests_dropped`).
    pub fn receive(
        &mut self,
        umem: &Umem,
        pool: &mut FramePool,
        max: u32,
        out: &mut Vec<Frame>,
    ) -> u32 {
        let umem = umem.bound(&self.umem);
        let held = !self.held.is_empty();
        out.append(&mut self.held);
        let first_new = out.len();
        let tag = self.tag;
        // The kernel only returns frames we lent it; anything else is skipped (a handle to a
        // frame in the pool or held elsewhere would alias it).
        let frame_of = |desc: &XdpDesc| {
            umem.frame_at(desc.addr, desc.len, tag).map(|mut frame| {
                frame.set_more(desc.options & XDP_PKT_CONTD != 0);
                frame
            })
        };
        let mut n = 0;
        // As in `transmit`: a peek is served from a cached view of the kernel's producer while
        // that shows anything; a second peek reads the real one.
        for _ in 0..2 {
            if n >= max {
                break;
            }
            let mut reader = self.rx.receive(max - n);
            let mut got = 0;
            while let Some(desc) = reader.read() {
                got += 1;
                out.extend(frame_of(&desc));
            }
            reader.release();
            if got == 0 {
                break;
            }
            n += got;
        }
        // The kernel publishes a chain at once: the rest of one cut by `max` is there, however
        // long (a port's MTU may be above what the switch forwards).
        while out.last().is_some_and(|f| f.more()) {
            let mut reader = self.rx.receive(1);
            let Some(desc) = reader.read() else {
                break;
            };
            n += 1;
            out.extend(frame_of(&desc));
            reader.release();
        }
        if self.rest_unwanted && out.len() > first_new {
            // The ring's first frames continue a chain given out cut: up to its end, dropped.
            let (rest, ended) = late_rest(out, first_new);
            self.chain_rests_dropped += rest.len() as u64;
            for frame in rest {
                pool.put(frame);
            }
            self.rest_unwanted = !ended;
        }
        if n > 0 || !held {
            self.held = cut_chain(out);
        } else {
            // Given out cut this time.
            self.rest_unwanted = out.last().is_some_and(Frame::more);
        }
        self.lent_to_fill -= n.min(self.lent_to_fill);
        self.received += n as u64;
        // The kernel ate most of what it was lent since the last refill, or filled a whole
        // burst (more is waiting): lend more, fast — an empty fill ring drops in the kernel.
        let starved = self.lent_to_fill < self.fill_target / 4 || n >= max;
        if n > 0 && starved && self.fill_target < self.fill_share {
            self.fill_target = (self.fill_target * 4).min(self.fill_share);
        }
        n
    }

    /// Frames of a chain's late rest dropped since the last call.
    pub fn take_rests_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.chain_rests_dropped)
    }

    /// Queues frames from the front of `frames` for transmit; what does not fit stays in it.
    /// Returns whether the last frame queued continues in one that did not fit (a chain cut
    /// by the ring's end: the kernel holds its start until the rest comes).
    pub fn transmit(&mut self, umem: &Umem, frames: &mut Vec<Frame>) -> bool {
        let umem = umem.bound(&self.umem);
        let mut sent = 0;
        // A reservation is served from a cached view of the kernel's consumer while that shows
        // any room; once it is used up, the next reservation reads the real one. So: twice.
        for _ in 0..2 {
            if frames.is_empty() {
                break;
            }
            let mut writer = self.tx.transmit(frames.len() as u32);
            let room = (writer.capacity() as usize).min(frames.len());
            if room == 0 {
                break;
            }
            // Still open after a pass that queued nothing (the ring full again): the caller
            // must keep the rest first.
            self.tx_open_chain = frames[room - 1].more();
            // Exactly `room` frames, no more than reserved: `insert` polls the iterator before
            // checking for a slot, so an extra frame would be marked lent and lost.
            let tag = self.tag;
            sent += writer.insert(frames.drain(..room).map(|f| umem.desc(f, tag)));
            writer.commit();
        }
        self.in_flight_tx += sent;
        self.tx_open_chain
    }

    /// Tells the kernel to send what it has not taken from the tx ring yet, only when it asked
    /// to be woken (need_wakeup). In copy mode one `sendto` sends a bounded batch (32 frames by
    /// default) and answers EAGAIN while more remain, so it is repeated until the kernel says
    /// it is done (the consumer index the kernel publishes lags, so it cannot tell us).
    /// Returns the calls made.
    pub fn kick_tx(&mut self) -> u32 {
        if self.tx.pending() == 0 || !self.tx.needs_wakeup() {
            return 0;
        }
        let mut calls = 0;
        while calls < MAX_KICKS_PER_PASS {
            calls += 1;
            // SAFETY: a zero-length sendto on our own socket; no buffer is read.
            let ret = unsafe {
                libc::sendto(
                    self.raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if ret >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
                break;
            }
        }
        calls
    }

    /// Returns completed transmit frames to the pool.
    pub fn reap_completions(&mut self, umem: &Umem, pool: &mut FramePool) -> u32 {
        let umem = umem.bound(&self.umem);
        let mut n = 0;
        // As in `receive`: the second peek sees what the first one's cached view missed.
        for _ in 0..2 {
            if self.in_flight_tx == 0 {
                break;
            }
            let mut reader = self.device.complete(self.in_flight_tx);
            let mut got = 0;
            while let Some(addr) = reader.read() {
                got += 1;
                if let Some(frame) = umem.frame_at(addr, 0, self.tag) {
                    pool.put(frame);
                }
            }
            reader.release();
            if got == 0 {
                break;
            }
            self.in_flight_tx -= got.min(self.in_flight_tx);
            n += got;
        }
        n
    }

    pub fn kernel_stats(&self) -> io::Result<SocketKernelStats> {
        let s = self.device.statistics_v2().map_err(errno)?;
        Ok(SocketKernelStats {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty: s.rx_fill_ring_empty_descs,
            tx_ring_empty: s.tx_ring_empty_descs,
        })
    }
}

/// Takes off the end of `out` a chain whose last frame continues (its rest has not come).
fn cut_chain(out: &mut Vec<Frame>) -> Vec<Frame> {
    if !out.last().is_some_and(Frame::more) {
        return Vec::new();
    }
    let start = out.iter().rposition(|f| !f.more()).map_or(0, |end| end + 1);
    out.split_off(start)
}

/// Takes off `out[from..]` the frames that continue a chain given out before, up to and with
/// its last; returns them, and whether its last was among them.
fn late_rest(out: &mut Vec<Frame>, from: usize) -> (Vec<Frame>, bool) {
    let last = out[from..].iter().position(|f| !f.more());
    let end = last.map_or(out.len(), |i| from + i + 1);
    (out.drain(from..end).collect(), last.is_some())
}

#[cfg(test)]
mod chain_tests {
    use super::*;

    fn frames(more: &[bool]) -> Vec<Frame> {
        more.iter()
            .enumerate()
            .map(|(i, &m)| Frame::for_test(i as u32, m))
            .collect()
    }

    fn indexes(frames: &[Frame]) -> Vec<u32> {
        frames.iter().map(Frame::index).collect()
    }

    #[test]
    fn a_chain_without_its_end_is_taken_off_whole() {
        // Two packets, then the start of a long chain.
        let mut out = frames(&[false, true, false, true, true, true]);
        let held = cut_chain(&mut out);
        assert_eq!(indexes(&out), [0, 1, 2]);
        assert_eq!(indexes(&held), [3, 4, 5]);
        // Nothing but a chain's start.
        let mut out = frames(&[true, true]);
        assert_eq!(indexes(&cut_chain(&mut out)), [0, 1]);
        assert!(out.is_empty());
        // Complete packets stay.
        let mut out = frames(&[true, false, false]);
        assert!(cut_chain(&mut out).is_empty());
        assert_eq!(out.len(), 3);
        assert!(cut_chain(&mut Vec::new()).is_empty());
    }

    #[test]
    fn a_late_rest_is_taken_off_up_to_its_end() {
        // Frames 0-1 came before this call; 2-3 end the chain given out cut, 4-5 are packets.
        let mut out = frames(&[false, false, true, false, false, true]);
        let (rest, ended) = late_rest(&mut out, 2);
        assert_eq!((indexes(&rest), ended), (vec![2, 3], true));
        assert_eq!(indexes(&out), [0, 1, 4, 5]);
        // Its end not here yet: everything new goes, and the next call goes on.
        let mut out = frames(&[true, true]);
        let (rest, ended) = late_rest(&mut out, 0);
        assert_eq!((rest.len(), ended), (2, false));
        assert!(out.is_empty());
    }
}
