//! A minimal loader over the `bpf()` syscall: an XSKMAP, a six-instruction redirect program and
//! its attachment by BPF link.
//!
//! A BPF link is owned by its file descriptor, so the program is detached when the process
//! exits, even on SIGKILL; a netlink-attached program would stay on the port.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub(crate) const BPF_MAP_CREATE: libc::c_long = 0;
pub(crate) const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
pub(crate) const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
pub(crate) const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
pub(crate) const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_PROG_LOAD: libc::c_long = 5;
/// The XDP program handles multi-buffer packets.
pub(crate) const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_FUNC_REDIRECT: i32 = 23;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_FUNC_KTIME_GET_NS: i32 = 5;
const BPF_FUNC_GET_SMP_PROCESSOR_ID: i32 = 8;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
pub(crate) const BPF_PSEUDO_MAP_FD: u8 = 1;
const XDP_PASS: i32 = 2;

const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// How the XDP program runs on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (veth supports it): fastest.
    Native,
    /// On the generic skb path: works everywhere, slower.
    Generic,
    /// Native, falling back to generic where the driver lacks it.
    Auto,
}

impl std::str::FromStr for XdpMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(XdpMode::Native),
            "generic" => Ok(XdpMode::Generic),
            "auto" => Ok(XdpMode::Auto),
            other => Err(format!(
                "unknown XDP mode {other:?} (expected auto, native or generic)"
            )),
        }
    }
}

impl std::fmt::Display for XdpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
            XdpMode::Auto => "auto",
        })
    }
}

#[repr(C)]
#[derive(Default)]
pub(crate) struct MapCreateAttr {
    pub(crate) map_type: u32,
    pub(crate) key_size: u32,
    pub(crate) value_size: u32,
    pub(crate) max_entries: u32,
    pub(crate) map_flags: u32,
    pub(crate) inner_map_fd: u32,
    pub(crate) numa_node: u32,
    pub(crate) map_name: [u8; 16],
}

/// `bpf_attr` of the map batch commands.
#[repr(C)]
#[derive(Default)]
pub(crate) struct MapBatchAttr {
    pub(crate) in_batch: u64,
    pub(crate) out_batch: u64,
    pub(crate) keys: u64,
    pub(crate) values: u64,
    pub(crate) count: u32,
    pub(crate) map_fd: u32,
    pub(crate) elem_flags: u64,
    pub(crate) flags: u64,
}

#[repr(C)]
#[derive(Default)]
pub(crate) struct MapElemAttr {
    pub(crate) map_fd: u32,
    pub(crate) _pad: u32,
    pub(crate) key: u64,
    pub(crate) value: u64,
    pub(crate) flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    // Zeroed tail of the link_create union, which the kernel checks is unused.
    _rest: [u64; 4],
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Insn {
    pub(crate) code: u8,
    pub(crate) regs: u8,
    pub(crate) off: i16,
    pub(crate) imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// Issues one `bpf()` command; returns the non-negative result or the errno.
///
/// # Safety
///
/// `T` is the `#[repr(C)]` prefix of `union bpf_attr` that `cmd` uses. Every user pointer in
/// it (a `u64` field holding an address, e.g. a map key, the instructions, a log buffer) must
/// point to memory that stays valid, for the length the attribute gives it, until this call
/// returns: readable for what the kernel reads, writable for what it writes (a log buffer,
/// output data). The kernel copies or fills those buffers during the call and keeps no pointer
/// to them afterwards; null with length 0 is always allowed.
pub(crate) unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is a live, initialised `#[repr(C)]` bpf_attr prefix of exactly
    // `size_of::<T>()` bytes; the kernel reads (and for some commands writes) only that range,
    // and the pointers inside it are valid for the call, as the caller guarantees.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub(crate) fn fd_from(ret: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(ret as RawFd) }
}

/// A map of `map_type` named `name` (at most 15 bytes are kept).
pub(crate) fn create_map(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_name: name16(name),
        ..Default::default()
    };
    // SAFETY: a map-create attribute holds no user pointers.
    let fd = unsafe { bpf(BPF_MAP_CREATE, &mut attr)? };
    Ok(fd_from(fd))
}

/// Sets `key` to `value` in `map`; `K` and `V` must be the map's key and value types.
pub(crate) fn update<K, V>(map: &OwnedFd, key: &K, value: &V, flags: u64) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as *const K as u64,
        value: value as *const V as u64,
        flags,
        ..Default::default()
    };
    // SAFETY: `key` and `value` are live references to the map's key and value types (the
    // callers pass the types the map was created with), read by the kernel during the call.
    unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }.map(|_| ())
}

/// One more than the highest CPU number the kernel may bring up
/// (`/sys/devices/system/cpu/possible`, e.g. "0-15"): room for a map indexed by CPU number.
pub(crate) fn possible_cpus() -> io::Result<usize> {
    Ok(possible_cpu_list()?.1 + 1)
}

/// How many CPUs the kernel may bring up: the count a per-CPU map's value has a copy for
/// (`num_possible_cpus`), smaller than `possible_cpus` where the list has gaps.
pub(crate) fn possible_cpu_count() -> io::Result<usize> {
    Ok(possible_cpu_list()?.0)
}

fn possible_cpu_list() -> io::Result<(usize, usize)> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    cpu_list(text.trim()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("possible CPUs {text:?}"),
        )
    })
}

/// A kernel CPU list ("0-3,8-11"): how many CPUs it names, and the highest.
fn cpu_list(text: &str) -> Option<(usize, usize)> {
    let (mut count, mut highest) = (0, 0);
    for part in text.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
            None => {
                let n = part.parse::<usize>().ok()?;
                (n, n)
            }
        };
        if last < first {
            return None;
        }
        count += last - first + 1;
        highest = highest.max(last);
    }
    Some((count, highest))
}

pub(crate) fn name16(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (o, b) in out.iter_mut().zip(name.bytes().take(15)) {
        *o = b;
    }
    out
}

/// An XSKMAP: receive queue index → AF_XDP socket.
pub struct XskMap {
    pub(crate) fd: OwnedFd,
}

impl XskMap {
    pub fn create(entries: u32) -> io::Result<XskMap> {
        Ok(XskMap {
            fd: create_map(BPF_MAP_TYPE_XSKMAP, 4, 4, entries, "vswitch_xsks")?,
        })
    }

    /// Directs frames received on `queue` to the socket `xsk_fd`.
    pub fn insert(&self, queue: u32, xsk_fd: RawFd) -> io::Result<()> {
        update(&self.fd, &queue, &(xsk_fd as u32), 0)
    }
}

/// The XDP program: redirect to the socket of the receive queue, or pass to the kernel stack
/// when no socket is registered for that queue.
pub struct RedirectProgram {
    fd: OwnedFd,
}

impl RedirectProgram {
    /// A loaded program: the fast path's, which falls back to the XSKMAP as this one does.
    pub(crate) fn from_fd(fd: OwnedFd) -> RedirectProgram {
        RedirectProgram { fd }
    }

    /// Runs the program once on a copy of `frame` (`BPF_PROG_TEST_RUN`, nothing sent): its
    /// verdict and the frame as it left it. For tests of what a program does to frames.
    pub fn test_run(&self, frame: &[u8]) -> io::Result<(u32, Vec<u8>)> {
        test_run(&self.fd, frame)
    }

    pub fn load(map: &XskMap) -> io::Result<RedirectProgram> {
        // Frags-aware (it reads no packet bytes), so veth and drivers allow MTUs above a page.
        Ok(RedirectProgram {
            fd: load_xdp_flags(
                &redirect_by_queue(1, map),
                "vswitch_redir",
                BPF_F_XDP_HAS_FRAGS,
            )?,
        })
    }

    /// `load`'s program that first writes the time of arrival (`bpf_ktime_get_ns`, u64
    /// little-endian) over the first 8 bytes (the destination MAC and part of the source's)
    /// of every frame long enough to carry a stamp (`STAMP_TIME_OFFSET + 8` bytes): for a
    /// measuring receiver, latency up to the interface, whenever its thread gets to read.
    pub fn load_arrival_stamped(map: &XskMap) -> io::Result<RedirectProgram> {
        let mut insns = vec![
            insn(0xbf, 6, 1, 0, 0),         // r6 = ctx
            insn(0x61, 7, 6, 0, 0),         // r7 = ctx->data
            insn(0x61, 3, 6, 4, 0),         // r3 = ctx->data_end
            insn(0xbf, 4, 7, 0, 0),         // r4 = data
            insn(0x07, 4, 0, 0, STAMP_END), // r4 += 58
            insn(0x2d, 4, 3, 2, 0),         // if r4 > data_end: just redirect
            insn(0x85, 0, 0, 0, BPF_FUNC_KTIME_GET_NS),
            insn(0x7b, 7, 0, ARRIVAL_OFFSET as i16, 0), // frame[0..8] = now
        ];
        insns.extend(redirect_by_queue(6, map));
        Ok(RedirectProgram {
            fd: load_xdp_flags(&insns, "vswitch_rxstamp", BPF_F_XDP_HAS_FRAGS)?,
        })
    }
}

/// The end of a program that hands each frame to the socket of its receive queue in `map`,
/// or to the kernel stack when the queue has none; `ctx` is the register holding the context.
fn redirect_by_queue(ctx: u8, map: &XskMap) -> [Insn; 6] {
    [
        // r2 = ctx->rx_queue_index
        insn(0x61, 2, ctx, 16, 0),
        // r1 = map (64-bit immediate, two slots)
        insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map.fd.as_raw_fd()),
        insn(0, 0, 0, 0, 0),
        // r3 = action when the map has no entry
        insn(0xb7, 3, 0, 0, XDP_PASS),
        // r0 = bpf_redirect_map(r1, r2, r3)
        insn(0x85, 0, 0, 0, BPF_FUNC_REDIRECT_MAP),
        insn(0x95, 0, 0, 0, 0),
    ]
}

fn load_xdp(insns: &[Insn], name: &str) -> io::Result<OwnedFd> {
    load_xdp_flags(insns, name, 0)
}

pub(crate) fn load_xdp_flags(insns: &[Insn], name: &str, prog_flags: u32) -> io::Result<OwnedFd> {
    let license = b"Dual MIT/GPL\0";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        prog_flags,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name16(name),
        ..Default::default()
    };
    // SAFETY: `insns` points to `insn_cnt` 8-byte instructions of the borrowed slice and
    // `license` to a NUL-terminated static string, both read by the kernel during the call
    // only; there is no log buffer (null, size 0).
    match unsafe { bpf(BPF_PROG_LOAD, &mut attr) } {
        Ok(fd) => Ok(fd_from(fd)),
        Err(first) => {
            // Load again with the verifier log, to say why.
            let mut log = vec![0u8; 64 * 1024];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            // SAFETY: as above, and `log_buf` points to `log`, `log_size` writable bytes that
            // live until after the call; the kernel writes at most `log_size` bytes there.
            let _ = unsafe { bpf(BPF_PROG_LOAD, &mut attr) };
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            Err(io::Error::new(
                first.kind(),
                format!(
                    "loading the XDP program: {first}; verifier: {}",
                    text.trim()
                ),
            ))
        }
    }
}

/// Runs a program once on a copy of `frame` (`BPF_PROG_TEST_RUN`, nothing sent): its verdict
/// and the frame as it left it.
fn test_run(prog: &OwnedFd, frame: &[u8]) -> io::Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_size_out: out.len() as u32,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    // SAFETY: `data_in` points to the borrowed `frame` (`data_size_in` bytes, read during
    // the call) and `data_out` to `out`, `data_size_out` writable bytes alive until after
    // the call; the kernel writes at most that many and sets `data_size_out` to the length.
    unsafe { bpf(BPF_PROG_TEST_RUN, &mut attr) }?;
    out.truncate(attr.data_size_out as usize);
    Ok((attr.retval, out))
}

/// A traffic source: an XDP program that redirects every frame to one interface, run by the
/// kernel on prepared frames (`BPF_PROG_TEST_RUN` with live frames, as xdp-trafficgen does).
/// The frames leave through the interface's `ndo_xdp_xmit`; on veth the peer must have NAPI
/// (an XDP program, or GRO enabled).
pub struct LiveFrameSender {
    fd: OwnedFd,
    _pin: Option<XdpLink>,
    /// The restoring sender's header templates, one slot per CPU.
    templates: Option<OwnedFd>,
}

impl LiveFrameSender {
    pub fn load(ifindex: u32) -> io::Result<LiveFrameSender> {
        Ok(LiveFrameSender {
            fd: load_xdp(
                &SenderProgram::default().redirect_to(ifindex),
                "vswitch_pktgen",
            )?,
            _pin: None,
            templates: None,
        })
    }

    /// Attaches the program to `ifindex` in native mode: every frame arriving there is
    /// redirected out of the sender's interface (the kernel's bare XDP forwarding, a peer in
    /// the benchmarks).
    pub fn attach_native(&self, ifindex: u32) -> io::Result<XdpLink> {
        XdpLink::attach_fd(&self.fd, ifindex, XdpMode::Native)
    }

    /// Keeps the program attached (generic mode) to `ifindex` while the sender lives. Every
    /// test run of a program the kernel's XDP dispatcher does not hold yet rewrites the
    /// dispatcher, which interrupts every core (text poke IPIs); an attached program is held.
    pub fn hold_in_dispatcher(&mut self, ifindex: u32) -> io::Result<()> {
        let link = XdpLink::attach_fd(&self.fd, ifindex, XdpMode::Generic)?;
        self._pin = Some(link);
        Ok(())
    }

    /// Sends `repeat` copies of `frame`, `batch` at a time.
    pub fn send(&self, frame: &[u8], repeat: u32, batch: u32) -> io::Result<()> {
        let mut attr = TestRunAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat,
            flags: BPF_F_TEST_XDP_LIVE_FRAMES,
            batch_size: batch,
            ..Default::default()
        };
        // SAFETY: `data_in` points to the borrowed `frame`, `data_size_in` bytes, read by the
        // kernel during the call; `data_out`, `ctx_in` and `ctx_out` are null with size 0, so
        // the kernel writes back nothing but the attribute's own counters.
        unsafe { bpf(BPF_PROG_TEST_RUN, &mut attr) }.map(|_| ())
    }
}

/// An XDP program that drops every frame: a sink that costs the kernel as little as possible.
pub struct DropProgram {
    fd: OwnedFd,
}

impl DropProgram {
    pub fn load() -> io::Result<DropProgram> {
        const XDP_DROP: i32 = 1;
        let insns = [insn(0xb7, 0, 0, 0, XDP_DROP), insn(0x95, 0, 0, 0, 0)];
        Ok(DropProgram {
            fd: load_xdp(&insns, "vswitch_drop")?,
        })
    }

    pub fn attach(&self, ifindex: u32, mode: XdpMode) -> io::Result<XdpLink> {
        XdpLink::attach_fd(&self.fd, ifindex, mode)
    }
}

/// Where a stamped frame carries its sequence number and send time (both u64, little-endian,
/// the time in CLOCK_MONOTONIC nanoseconds): the start of an IPv4/UDP payload.
pub const STAMP_SEQ_OFFSET: usize = 42;
pub const STAMP_TIME_OFFSET: usize = 50;
/// Where `RedirectProgram::load_arrival_stamped` writes the time of arrival.
pub const ARRIVAL_OFFSET: usize = 0;
const STAMP_END: i32 = 58;

impl LiveFrameSender {
    /// A sender whose program writes a per-CPU sequence number and the send time into every
    /// frame it redirects (frames shorter than 58 bytes go unstamped), for loss, reordering and
    /// latency at the receiver. It first writes back the 8 bytes at `ARRIVAL_OFFSET` from
    /// `frame` (the frame sent): the receiver's program writes the time of arrival there, and
    /// where a dataplane forwards the sender's own pages (an XDP redirect), the kernel
    /// recycles them into the next send with that time over the destination MAC.
    pub fn load_stamped(ifindex: u32, frame: &[u8]) -> io::Result<LiveFrameSender> {
        let head: [u8; 8] = frame
            .get(ARRIVAL_OFFSET..ARRIVAL_OFFSET + 8)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "a frame of 8 bytes or more")
            })?;
        let head = u64::from_ne_bytes(head);
        let map = create_map(BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 1, "vswitch_seq")?;
        let mut program = SenderProgram::default();
        program.frame_of(STAMP_END);
        program.insns.extend([
            insn(0x18, 1, 0, 0, head as u32 as i32),
            insn(0, 0, 0, 0, (head >> 32) as u32 as i32), // r1 = head
            insn(0x7b, 7, 1, ARRIVAL_OFFSET as i16, 0),   // frame[0..8] = r1
        ]);
        program.lookup_first(&map);
        program.insns.extend([
            insn(0x79, 1, 0, 0, 0),                       // r1 = *seq
            insn(0x07, 1, 0, 0, 1),                       // r1 += 1
            insn(0x7b, 0, 1, 0, 0),                       // *seq = r1 (per-CPU: no atomics needed)
            insn(0x7b, 7, 1, STAMP_SEQ_OFFSET as i16, 0), // frame[42..50] = r1
            insn(0x85, 0, 0, 0, BPF_FUNC_KTIME_GET_NS),
            insn(0x7b, 7, 0, STAMP_TIME_OFFSET as i16, 0), // frame[50..58] = now
        ]);
        let insns = program.redirect_to(ifindex);
        let fd = load_xdp(&insns, "vswitch_pktstmp")?;
        // The program holds its own reference to the map.
        drop(map);
        Ok(LiveFrameSender {
            fd,
            _pin: None,
            templates: None,
        })
    }

    /// A sender whose program first writes the frame's first `RESTORED_LEN` bytes back from
    /// the template of the CPU it runs on (`set_template`). The kernel recycles a sender's
    /// pages without copying the frame in again, so a frame that a forwarder rewrote in place
    /// (an XDP fast path doing NAT) would otherwise come back rewritten. Each sending thread
    /// must stay on one CPU (pinned).
    pub fn load_restoring(ifindex: u32) -> io::Result<LiveFrameSender> {
        let mut program = SenderProgram::default();
        let templates = program.restore_headers()?;
        Ok(LiveFrameSender {
            fd: load_xdp(&program.redirect_to(ifindex), "vswitch_pktrst")?,
            _pin: None,
            templates: Some(templates),
        })
    }

    /// The frame the calling thread sends next, for the restoring sender to write back (a
    /// no-op for the others). The slot is the CPU the thread runs on now.
    pub fn set_template(&self, frame: &[u8]) -> io::Result<()> {
        let Some(map) = &self.templates else {
            return Ok(());
        };
        // SAFETY: sched_getcpu has no arguments and only returns a number.
        let cpu = unsafe { libc::sched_getcpu() };
        if cpu < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut slot = [0u8; TEMPLATE_SLOT];
        let n = frame.len().min(RESTORED_LEN);
        slot[..n].copy_from_slice(&frame[..n]);
        slot[RESTORED_LEN] = 1;
        update(map, &(cpu as u32), &slot, 0)
    }
}

/// The most flows `LiveFrameSender::load_flows` varies in the program: source ports only (a
/// generator's flow `i` moves to the next source address after this many ports).
pub const MAX_PROGRAM_FLOWS: u32 = 60_000;
/// Where an option-less IPv4 frame carries its TCP/UDP source port.
const SOURCE_PORT_OFFSET: usize = 34;

impl LiveFrameSender {
    /// A sender that makes `flows` flows of one prepared frame: its program gives the i-th
    /// frame it sends on a CPU the source port `port + i % flows` (the frame's own port being
    /// `port`) and corrects the TCP/UDP checksum by the change (RFC 1624), so one send call
    /// carries every flow in turn. Sending each flow's frame in calls of its own costs a
    /// system call per few frames and bounded the generator at about 0.8 Mpps with 1,000
    /// flows. The frame must be IPv4 without options, carrying TCP or UDP. With `restore`,
    /// the program first writes the headers back as `load_restoring`'s does (the frame given
    /// here is then the template to set).
    pub fn load_flows(
        ifindex: u32,
        flows: u32,
        frame: &[u8],
        restore: bool,
    ) -> io::Result<LiveFrameSender> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        if !(1..=MAX_PROGRAM_FLOWS).contains(&flows) {
            return Err(bad("the program varies 1 to 60,000 flows"));
        }
        if frame.len() < 54 || frame[12..14] != [0x08, 0x00] || frame[14] != 0x45 {
            return Err(bad("not an IPv4 frame without options"));
        }
        // More fragments, or an offset: no transport header to rewrite (or not the whole).
        if u16::from_be_bytes([frame[20], frame[21]]) & 0x3fff != 0 {
            return Err(bad("an IPv4 fragment"));
        }
        let checksum_at: usize = match frame[23] {
            6 => 50,
            17 => 40,
            _ => return Err(bad("neither TCP nor UDP")),
        };
        let be16 = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]) as i32;
        let mut program = SenderProgram::default();
        let templates = match restore {
            true => Some(program.restore_headers()?),
            false => None,
        };
        let counter = program.vary_source_port(
            flows,
            be16(SOURCE_PORT_OFFSET),
            checksum_at,
            be16(checksum_at),
        )?;
        let fd = load_xdp(&program.redirect_to(ifindex), "vswitch_pktflow")?;
        // The program holds its own reference to the map.
        drop(counter);
        Ok(LiveFrameSender {
            fd,
            _pin: None,
            templates,
        })
    }
}

/// A sender's XDP program, built in steps that each may end it early with the redirect (a
/// frame too short for the step, a missing map value): the redirect is its last instructions,
/// and the jumps to it are patched once its place is known. r6 holds the context throughout.
struct SenderProgram {
    insns: Vec<Insn>,
    to_redirect: Vec<usize>,
}

impl Default for SenderProgram {
    fn default() -> Self {
        SenderProgram {
            insns: vec![insn(0xbf, 6, 1, 0, 0)], // r6 = ctx
            to_redirect: Vec::new(),
        }
    }
}

impl SenderProgram {
    /// A conditional jump (offset to be patched) to the redirect.
    fn or_redirect(&mut self, jump: Insn) {
        self.to_redirect.push(self.insns.len());
        self.insns.push(jump);
    }

    /// r7 = data; to the redirect unless the frame has `len` bytes.
    fn frame_of(&mut self, len: i32) {
        self.insns.extend([
            insn(0x61, 2, 6, 0, 0),   // r2 = ctx->data
            insn(0x61, 3, 6, 4, 0),   // r3 = ctx->data_end
            insn(0xbf, 7, 2, 0, 0),   // r7 = data
            insn(0x07, 2, 0, 0, len), // r2 += len
        ]);
        self.or_redirect(insn(0x2d, 2, 3, 0, 0)); // if r2 > data_end
    }

    /// r0 = the value of `map` at key 0 (a one-entry array); to the redirect if none.
    fn lookup_first(&mut self, map: &OwnedFd) {
        self.insns.extend([
            insn(0x62, 10, 0, -4, 0), // *(u32 *)(fp - 4) = 0 (the key)
            insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map.as_raw_fd()),
            insn(0, 0, 0, 0, 0),     // r1 = &map
            insn(0xbf, 2, 10, 0, 0), // r2 = fp
            insn(0x07, 2, 0, 0, -4), // r2 = &key
            insn(0x85, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM),
        ]);
        self.or_redirect(insn(0x15, 0, 0, 0, 0)); // if !r0
    }

    /// Writes the frame's first `RESTORED_LEN` bytes from this CPU's template, once one is
    /// set; returns the templates' map.
    fn restore_headers(&mut self) -> io::Result<OwnedFd> {
        let slots = possible_cpus()? as u32;
        let map = create_map(
            BPF_MAP_TYPE_ARRAY,
            4,
            TEMPLATE_SLOT as u32,
            slots,
            "vswitch_tmpl",
        )?;
        let len = RESTORED_LEN as i16;
        // A frame this step cannot restore skips it, not the steps after it.
        let mut skips = Vec::new();
        self.insns.extend([
            insn(0x85, 0, 0, 0, BPF_FUNC_GET_SMP_PROCESSOR_ID),
            insn(0x63, 10, 0, -4, 0), // *(u32 *)(fp - 4) = cpu (the key)
            insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map.as_raw_fd()),
            insn(0, 0, 0, 0, 0),     // r1 = &templates
            insn(0xbf, 2, 10, 0, 0), // r2 = fp
            insn(0x07, 2, 0, 0, -4), // r2 = &key
            insn(0x85, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM),
        ]);
        skips.push(self.insns.len());
        self.insns.extend([
            insn(0x15, 0, 0, 0, 0),   // if !r0: skip
            insn(0x79, 1, 0, len, 0), // r1 = the slot's "set" word
        ]);
        skips.push(self.insns.len());
        self.insns.extend([
            insn(0x15, 1, 0, 0, 0),          // if never set: skip
            insn(0x61, 2, 6, 0, 0),          // r2 = ctx->data
            insn(0x61, 3, 6, 4, 0),          // r3 = ctx->data_end
            insn(0xbf, 4, 2, 0, 0),          // r4 = data
            insn(0x07, 4, 0, 0, len as i32), // r4 += RESTORED_LEN
        ]);
        skips.push(self.insns.len());
        self.insns.push(insn(0x2d, 4, 3, 0, 0)); // if r4 > data_end: skip
        for word in 0..len / 8 {
            self.insns.push(insn(0x79, 5, 0, word * 8, 0)); // r5 = template[word]
            self.insns.push(insn(0x7b, 2, 5, word * 8, 0)); // frame[word] = r5
        }
        let after = self.insns.len();
        for at in skips {
            self.insns[at].off = (after - at - 1) as i16;
        }
        Ok(map)
    }

    /// Gives the i-th frame on this CPU the source port `port + i % flows` and corrects the
    /// TCP/UDP checksum (`checksum`, at `checksum_at`) by the change, unless it is a UDP frame
    /// sent without one (0); returns the counter's map.
    fn vary_source_port(
        &mut self,
        flows: u32,
        port: i32,
        checksum_at: usize,
        checksum: i32,
    ) -> io::Result<OwnedFd> {
        let map = create_map(BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 1, "vswitch_flow")?;
        self.frame_of(checksum_at as i32 + 2);
        self.lookup_first(&map);
        self.insns.extend([
            insn(0x79, 1, 0, 0, 0),            // r1 = *counter
            insn(0xbf, 2, 1, 0, 0),            // r2 = r1
            insn(0x07, 2, 0, 0, 1),            // r2 += 1
            insn(0x7b, 0, 2, 0, 0),            // *counter = r2 (per-CPU: no atomics needed)
            insn(0x97, 1, 0, 0, flows as i32), // r1 %= flows
            insn(0x07, 1, 0, 0, port),         // r1 += port
            insn(0x57, 1, 0, 0, 0xffff),       // r1 &= 0xffff (ports wrap, as the generator's do)
        ]);
        let udp = checksum_at == 40;
        if !(udp && checksum == 0) {
            // new = ~(~old + ~port + new port), folded: the frame's own terms are constants.
            let constant = (!checksum & 0xffff) + (!port & 0xffff);
            self.insns.extend([
                insn(0xbf, 2, 1, 0, 0),        // r2 = new port
                insn(0x07, 2, 0, 0, constant), // r2 += ~old + ~port
            ]);
            for _ in 0..2 {
                self.insns.extend([
                    insn(0xbf, 3, 2, 0, 0),      // r3 = r2
                    insn(0x77, 3, 0, 0, 16),     // r3 >>= 16
                    insn(0x57, 2, 0, 0, 0xffff), // r2 &= 0xffff
                    insn(0x0f, 2, 3, 0, 0),      // r2 += r3
                ]);
            }
            self.insns.push(insn(0xa7, 2, 0, 0, 0xffff)); // r2 ^= 0xffff
            if udp {
                // UDP sends a computed 0 as 0xffff (0 says "no checksum").
                self.insns.extend([
                    insn(0x55, 2, 0, 1, 0),      // if r2 != 0: skip the next
                    insn(0xb7, 2, 0, 0, 0xffff), // r2 = 0xffff
                ]);
            }
            self.insns.extend([
                insn(0xdc, 2, 0, 0, 16),                 // r2 = htons(r2)
                insn(0x6b, 7, 2, checksum_at as i16, 0), // checksum = r2
            ]);
        }
        self.insns.extend([
            insn(0xdc, 1, 0, 0, 16),                        // r1 = htons(r1)
            insn(0x6b, 7, 1, SOURCE_PORT_OFFSET as i16, 0), // source port = r1
        ]);
        Ok(map)
    }

    /// The program's instructions, ending with the redirect to `ifindex`.
    fn redirect_to(mut self, ifindex: u32) -> Vec<Insn> {
        let redirect = self.insns.len();
        for at in std::mem::take(&mut self.to_redirect) {
            self.insns[at].off = (redirect - at - 1) as i16;
        }
        self.insns.extend([
            insn(0xb7, 1, 0, 0, ifindex as i32), // redirect to ifindex
            insn(0xb7, 2, 0, 0, 0),
            insn(0x85, 0, 0, 0, BPF_FUNC_REDIRECT),
            insn(0x95, 0, 0, 0, 0),
        ]);
        self.insns
    }
}

/// Bytes of a frame the restoring sender writes back: Ethernet, IPv4 and a TCP header.
pub const RESTORED_LEN: usize = 56;
/// A template slot: the bytes, then a word that says the slot was set.
const TEMPLATE_SLOT: usize = RESTORED_LEN + 8;

/// The program attached to one interface; detached when dropped (or when the process dies).
pub struct XdpLink {
    _fd: OwnedFd,
    pub ifindex: u32,
    pub mode: XdpMode,
}

impl XdpLink {
    /// Attaches in `Native` or `Generic` mode (`Auto` is resolved by the caller).
    pub fn attach(prog: &RedirectProgram, ifindex: u32, mode: XdpMode) -> io::Result<XdpLink> {
        Self::attach_fd(&prog.fd, ifindex, mode)
    }

    fn attach_fd(prog: &OwnedFd, ifindex: u32, mode: XdpMode) -> io::Result<XdpLink> {
        let flags = match mode {
            XdpMode::Generic => XDP_FLAGS_SKB_MODE,
            XdpMode::Native | XdpMode::Auto => XDP_FLAGS_DRV_MODE,
        };
        let mut attr = LinkCreateAttr {
            prog_fd: prog.as_raw_fd() as u32,
            target_ifindex: ifindex,
            attach_type: BPF_XDP,
            flags,
            ..Default::default()
        };
        // SAFETY: a link-create attribute for XDP holds no user pointers (the tail is zero).
        let fd = unsafe { bpf(BPF_LINK_CREATE, &mut attr)? };
        Ok(XdpLink {
            _fd: fd_from(fd),
            ifindex,
            mode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As root (false, skipped, elsewhere; CI runs as root): this thread stays on the CPU it
    /// runs on, for programs that keep per-CPU state.
    fn pinned_as_root() -> bool {
        if nix::unistd::geteuid().as_raw() != 0 {
            assert!(std::env::var("CI").is_err(), "CI runs this as root");
            return false;
        }
        let cpu = nix::sched::sched_getcpu().unwrap();
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).unwrap();
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
        true
    }

    #[test]
    fn the_restoring_sender_writes_the_template_back_into_every_frame() {
        // The template slot is this thread's CPU: stay on it.
        if !pinned_as_root() {
            return;
        }
        let sender = LiveFrameSender::load_restoring(1).unwrap();
        let original: Vec<u8> = (0..100u8).collect();
        let rewritten: Vec<u8> = (0..100u8).map(|b| b ^ 0x5a).collect();
        const XDP_REDIRECT: u32 = 4;
        // Before a template is set, frames go as they are.
        assert_eq!(
            test_run(&sender.fd, &rewritten).unwrap(),
            (XDP_REDIRECT, rewritten.clone())
        );
        sender.set_template(&original).unwrap();
        let (verdict, out) = test_run(&sender.fd, &rewritten).unwrap();
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out[..RESTORED_LEN], original[..RESTORED_LEN]);
        assert_eq!(out[RESTORED_LEN..], rewritten[RESTORED_LEN..]);
        // A frame too short to hold the headers is left alone.
        let short = &rewritten[..RESTORED_LEN - 1];
        assert_eq!(test_run(&sender.fd, short).unwrap().1, short);
    }

    /// The one's complement sum of a TCP/UDP segment of `frame` with its pseudo-header:
    /// 0xffff when the checksum in it is right.
    fn transport_sum(frame: &[u8]) -> u16 {
        let ip = &frame[14..34];
        let segment = &frame[34..];
        let mut words: Vec<u32> = Vec::new();
        let mut push = |b: &[u8]| {
            for pair in b.chunks(2) {
                words.push(((pair[0] as u32) << 8) | *pair.get(1).unwrap_or(&0) as u32);
            }
        };
        push(&ip[12..20]);
        push(&[0, ip[9]]);
        push(&(segment.len() as u16).to_be_bytes());
        push(segment);
        let mut sum: u32 = words.iter().sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    /// `frame` with its last two bytes chosen so that with source port `port` its right
    /// checksum is 0, then its checksum set right for its own port.
    fn checksum_zero_at(mut frame: Vec<u8>, checksum_at: usize, port: u16) -> Vec<u8> {
        let own = [frame[34], frame[35]];
        let n = frame.len();
        frame[34..36].copy_from_slice(&port.to_be_bytes());
        frame[checksum_at..checksum_at + 2].fill(0);
        let rest = (0..=0xffffu16).find(|w| {
            frame[n - 2..].copy_from_slice(&w.to_be_bytes());
            transport_sum(&frame) == 0xffff
        });
        assert!(rest.is_some(), "some last word makes the sum");
        frame[34..36].copy_from_slice(&own);
        let mut checksum = !transport_sum(&frame);
        if checksum == 0 && checksum_at == 40 {
            checksum = 0xffff;
        }
        frame[checksum_at..checksum_at + 2].copy_from_slice(&checksum.to_be_bytes());
        frame
    }

    #[test]
    fn the_flow_sender_walks_the_source_ports_with_right_checksums() {
        // The counter is per CPU: stay on one.
        if !pinned_as_root() {
            return;
        }
        const XDP_REDIRECT: u32 = 4;
        let payload = [0xa5u8; 18];
        let ip = || {
            etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ipv4(
                [198, 18, 0, 1],
                [198, 18, 0, 2],
                64,
            )
        };
        // Ports near the top, so the walk wraps past 65535 as the generator's ports do.
        let mut udp = Vec::new();
        ip().udp(65534, 9).write(&mut udp, &payload).unwrap();
        let mut tcp = Vec::new();
        ip().tcp(65534, 9, 1, 64_000)
            .ack(1)
            .write(&mut tcp, &payload)
            .unwrap();
        // The edges: a UDP frame whose next flow's checksum computes to 0 (sent as 0xffff),
        // a TCP frame whose own checksum is 0 (still corrected).
        let udp_zero_next = checksum_zero_at(udp.clone(), 40, 65535);
        let tcp_zero = checksum_zero_at(tcp.clone(), 50, 65534);
        let ip_frame = tcp.clone();
        assert_eq!(tcp_zero[50..52], [0, 0]);
        for ((frame, checksum_at), restore) in
            [(udp, 40), (tcp, 50), (udp_zero_next, 40), (tcp_zero, 50)]
                .into_iter()
                .flat_map(|f| [(f.clone(), false), (f, true)])
        {
            let sender = LiveFrameSender::load_flows(1, 3, &frame, restore).unwrap();
            // With `restore`, what is sent is a frame a forwarder rewrote: the program writes
            // the headers back first, then makes the flow.
            let sent: Vec<u8> = match restore {
                true => {
                    sender.set_template(&frame).unwrap();
                    let mut rewritten = frame.clone();
                    rewritten[..RESTORED_LEN]
                        .iter_mut()
                        .for_each(|b| *b ^= 0x5a);
                    rewritten
                }
                false => frame.clone(),
            };
            let mut ports = Vec::new();
            for _ in 0..7 {
                let (verdict, out) = test_run(&sender.fd, &sent).unwrap();
                assert_eq!(verdict, XDP_REDIRECT);
                assert_eq!(transport_sum(&out), 0xffff, "checksum of {out:02x?}");
                if checksum_at == 40 {
                    assert_ne!(
                        out[40..42],
                        [0, 0],
                        "a UDP checksum of 0 says there is none"
                    );
                }
                // Only the source port and the checksum change.
                assert_eq!(out[..34], frame[..34]);
                assert_eq!(out[36..checksum_at], frame[36..checksum_at]);
                assert_eq!(out[checksum_at + 2..], frame[checksum_at + 2..]);
                ports.push(u16::from_be_bytes([out[34], out[35]]));
            }
            assert_eq!(ports, [65534, 65535, 0, 65534, 65535, 0, 65534]);
        }
        let mut not_ip = vec![0u8; 64];
        not_ip[12] = 0x86;
        assert!(LiveFrameSender::load_flows(1, 3, &not_ip, false).is_err());
        let mut fragment = ip_frame;
        fragment[20] |= 0x20; // more fragments
        assert!(LiveFrameSender::load_flows(1, 3, &fragment, false).is_err());
    }

    #[test]
    fn cpu_lists_are_counted_with_their_gaps() {
        assert_eq!(cpu_list("0"), Some((1, 0)));
        assert_eq!(cpu_list("0-15"), Some((16, 15)));
        assert_eq!(cpu_list("0-3,8-11"), Some((8, 11)));
        assert_eq!(cpu_list("0,2,4-5"), Some((4, 5)));
        assert_eq!(cpu_list("3-1"), None);
        assert_eq!(cpu_list("x"), None);
    }

    #[test]
    fn the_stamped_sender_writes_back_what_the_receiver_wrote_over_the_frame() {
        if nix::unistd::geteuid().as_raw() != 0 {
            assert!(std::env::var("CI").is_err(), "CI runs this as root");
            return;
        }
        let frame: Vec<u8> = (0..64u8).collect();
        const XDP_REDIRECT: u32 = 4;
        let sender = LiveFrameSender::load_stamped(1, &frame).unwrap();
        // A page the receiver's program stamped, recycled into the next send as it is.
        let mut recycled = frame.clone();
        recycled[ARRIVAL_OFFSET..ARRIVAL_OFFSET + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let before = crate::netdev::monotonic_ns();
        let (verdict, out) = test_run(&sender.fd, &recycled).unwrap();
        let after = crate::netdev::monotonic_ns();
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out[..STAMP_SEQ_OFFSET], frame[..STAMP_SEQ_OFFSET]);
        let word = |at: usize| u64::from_le_bytes(out[at..at + 8].try_into().unwrap());
        assert!(word(STAMP_SEQ_OFFSET) >= 1);
        assert!((before..=after).contains(&word(STAMP_TIME_OFFSET)));
        assert_eq!(out[STAMP_END as usize..], frame[STAMP_END as usize..]);
        assert!(LiveFrameSender::load_stamped(1, &frame[..7]).is_err());
    }

    #[test]
    fn the_receivers_program_writes_the_arrival_time_over_the_first_8_bytes() {
        if nix::unistd::geteuid().as_raw() != 0 {
            assert!(std::env::var("CI").is_err(), "CI runs this as root");
            return;
        }
        let map = XskMap::create(1).unwrap();
        let prog = RedirectProgram::load_arrival_stamped(&map).unwrap();
        let frame: Vec<u8> = (0..64u8).collect();
        let before = crate::netdev::monotonic_ns();
        let (verdict, out) = prog.test_run(&frame).unwrap();
        let after = crate::netdev::monotonic_ns();
        // No socket on the queue: the kernel stack gets it, stamped.
        assert_eq!(verdict, XDP_PASS as u32);
        let arrived =
            u64::from_le_bytes(out[ARRIVAL_OFFSET..ARRIVAL_OFFSET + 8].try_into().unwrap());
        assert!(
            (before..=after).contains(&arrived),
            "{before} <= {arrived} <= {after}"
        );
        assert_eq!(out[8..], frame[8..]);
        // Too short to carry a stamp: left alone.
        let short = &frame[..STAMP_END as usize - 1];
        assert_eq!(
            prog.test_run(short).unwrap(),
            (XDP_PASS as u32, short.to_vec())
        );
    }

    #[test]
    fn modes_parse_and_name_bad_values() {
        assert_eq!("native".parse::<XdpMode>().unwrap(), XdpMode::Native);
        assert_eq!("generic".parse::<XdpMode>().unwrap(), XdpMode::Generic);
        assert!("turbo"
            .parse::<XdpMode>()
            .unwrap_err()
            .contains("\"turbo\""));
    }

    #[test]
    fn instruction_registers_pack_dst_low_src_high() {
        let i = insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, 7);
        assert_eq!(i.regs, 0x11);
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }
}
