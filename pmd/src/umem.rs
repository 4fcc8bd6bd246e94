//! UMEM: a worker's frame memory, cut into equal frames, shared by the sockets the worker
//! polls, so a frame received on one port is transmitted on another by descriptor.
//!
//! The memory comes in segments, each its own mapping: a worker starts with one and is given
//! another as ports come (see `datapath`), so what is pinned follows what is attached. A socket
//! registers one segment; a frame leaving by a socket of another segment is copied into that
//! segment first (`Umem::copy_frame`). A segment goes when its ports have gone and every
//! frame of it is home.
//!
//! Each socket registers the area itself (its own `XDP_UMEM_REG` of the same pages), so a
//! socket can be opened and closed while the others run: no socket owns a registration the
//! rest depend on. Frames lent to the kernel carry the tag of the socket they were lent
//! through; when a socket closes, what it still held comes home by that tag.
//!
//! Ownership: a frame is either in the worker's [`FramePool`], lent to the kernel (fill or tx
//! ring), or held as a [`Frame`] handle. A `Frame` is move-only; handing it to a ring consumes
//! it, so one frame cannot be given to two rings.

use std::cell::Cell;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Bytes per frame: a page, as the kernel's aligned chunk mode wants a power of two.
pub const FRAME_SIZE: u32 = 4096;
const FRAME_SHIFT: u32 = FRAME_SIZE.trailing_zeros();
/// Room the kernel keeps before received data (XDP_PACKET_HEADROOM).
pub const KERNEL_HEADROOM: u32 = 256;
/// Largest frame that fits a UMEM frame after the kernel's headroom.
pub const MAX_FRAME_LEN: u32 = FRAME_SIZE - KERNEL_HEADROOM;
/// What a frame holds beyond its MTU: the Ethernet header and a VLAN tag (the kernel's
/// `is_skb_forwardable`, and its devmap's check).
pub const L2_OVERHEAD: u32 = 18;
/// Largest packet, as a chain of UMEM frames (multi-buffer): a 9216-byte MTU with its
/// Ethernet header and a VLAN tag.
pub const MAX_PACKET_LEN: u32 = 9216 + L2_OVERHEAD;

/// Descriptor option: the packet continues in the next descriptor.
pub(crate) const XDP_PKT_CONTD: u32 = 1;

static NEXT_UMEM_ID: AtomicU32 = AtomicU32::new(1);

/// A frame of one UMEM: its index, where the data starts and how long it is.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    umem: u32,
    index: u32,
    offset: u16,
    len: u16,
    /// The packet goes on in the next frame (multi-buffer: `XDP_PKT_CONTD`).
    more: bool,
}

impl Frame {
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The segment (UMEM id) the frame belongs to.
    #[inline]
    pub fn umem(&self) -> u32 {
        self.umem
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the packet goes on in the next frame of its chain.
    pub fn more(&self) -> bool {
        self.more
    }

    pub fn set_more(&mut self, more: bool) {
        self.more = more;
    }

    /// A frame handle with no memory behind it, for tests of chain bookkeeping.
    #[cfg(test)]
    pub(crate) fn for_test(index: u32, more: bool) -> Frame {
        Frame {
            umem: 0,
            index,
            offset: 0,
            len: 0,
            more,
        }
    }

    /// Sets the data length; clamped to what fits after the data offset.
    pub fn set_len(&mut self, len: usize) {
        let room = FRAME_SIZE as usize - self.offset as usize;
        self.len = len.min(room) as u16;
    }

    /// The UMEM address of the data, as rings carry it.
    fn addr(&self) -> u64 {
        ((self.index as u64) << FRAME_SHIFT) + self.offset as u64
    }
}

/// A frame's whole chunk, with the handle whose offset and length say where its data is.
pub struct FrameBuf<'a> {
    chunk: &'a mut [u8],
    frame: &'a mut Frame,
}

impl FrameBuf<'_> {
    fn span(&self) -> std::ops::Range<usize> {
        let start = self.frame.offset as usize;
        start..start + self.frame.len as usize
    }
}

impl AsRef<[u8]> for FrameBuf<'_> {
    fn as_ref(&self) -> &[u8] {
        let span = self.span();
        &self.chunk[span]
    }
}

impl AsMut<[u8]> for FrameBuf<'_> {
    fn as_mut(&mut self) -> &mut [u8] {
        let span = self.span();
        &mut self.chunk[span]
    }
}

impl pipeline::Packet for FrameBuf<'_> {
    fn headroom(&self) -> usize {
        self.frame.offset as usize
    }

    fn push_front(&mut self, n: usize) -> bool {
        if n > self.frame.offset as usize {
            return false;
        }
        self.frame.offset -= n as u16;
        self.frame.len += n as u16;
        true
    }

    fn pull_front(&mut self, n: usize) -> bool {
        if n > self.frame.len as usize {
            return false;
        }
        self.frame.offset += n as u16;
        self.frame.len -= n as u16;
        true
    }
}

/// The memory area, mapped anonymously and unmapped on drop.
///
/// Shared (`Arc`) by the [`Umem`] and every socket bound to it, so the mapping outlives the
/// last socket whose kernel-side registration still refers to it, whatever order their owners
/// drop in.
pub(crate) struct Area {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `Area` only owns the mapping; it gives no access to the bytes itself (the `Umem` does,
// through unique `Frame` handles), so moving it to, or sharing it with, another thread cannot
// create a data race. Dropping it from any thread is a plain `munmap`.
unsafe impl Send for Area {}
// SAFETY: as above: a shared `&Area` exposes only the address and length, never the bytes.
unsafe impl Sync for Area {}

impl Area {
    fn map(len: usize) -> io::Result<Area> {
        // SAFETY: anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr as *mut u8).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Area { ptr, len })
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`. The area is dropped when the last
        // `Arc<Area>` goes: the `Umem`'s (after its kernel registration, by field order) and each
        // socket's (after its rings and descriptor, by field order), so no registration or ring
        // of ours still refers to it; no `&[u8]` into it can exist either, as those borrow the
        // `Umem`.
        unsafe {
            libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len);
        }
    }
}

/// The UMEM's memory and frame bookkeeping, without the kernel registration (so it can be
/// exercised without privileges).
///
/// Invariant: every frame index is in exactly one place: the [`FramePool`] (its `in_pool` bit),
/// lent to the kernel (its `lent` bit here), or one live [`Frame`] handle. Handles are made only
/// by `FramePool::alloc` (from the pool) and `frame_at` (from a frame lent to the kernel, whose
/// bit it clears), and consumed by `FramePool::put`, `desc` and `fill_addr`; so two handles to
/// the same frame never exist, which is what makes `data_mut` sound.
pub(crate) struct Memory {
    area: Arc<Area>,
    id: u32,
    frames: u32,
    /// One bit per frame: lent to the kernel (fill or tx ring) and not yet taken back.
    lent: Box<[Cell<u64>]>,
    /// Per frame: the socket it was lent through (meaningful while its `lent` bit is set).
    owner: Box<[Cell<u32>]>,
}

impl Memory {
    fn new(frames: u32) -> io::Result<(Memory, SegmentPool)> {
        let len = frames as usize * FRAME_SIZE as usize;
        let area = Area::map(len)?;
        let id = NEXT_UMEM_ID.fetch_add(1, Ordering::Relaxed);
        let words = (frames as usize).div_ceil(64);
        let pool = SegmentPool {
            umem: id,
            free: (0..frames).rev().collect(),
            in_pool: vec![u64::MAX; words].into_boxed_slice(),
            total: frames,
            refused_foreign: 0,
            refused_twice: 0,
        };
        let memory = Memory {
            area: Arc::new(area),
            id,
            frames,
            lent: (0..words).map(|_| Cell::new(0)).collect(),
            owner: (0..frames).map(|_| Cell::new(0)).collect(),
        };
        Ok((memory, pool))
    }

    #[inline]
    fn check(&self, frame: &Frame) {
        // Frames of another worker's UMEM would alias this one's memory.
        assert_eq!(
            frame.umem, self.id,
            "frame of UMEM {} used with UMEM {}",
            frame.umem, self.id
        );
    }

    #[inline]
    fn data<'a>(&'a self, frame: &'a Frame) -> &'a [u8] {
        self.check(frame);
        let start = frame.addr() as usize;
        debug_assert!(start + frame.len() <= self.area.len);
        // SAFETY: `start + len` lies inside frame `index` (index < frames, checked where the
        // handle was made; offset + len <= FRAME_SIZE by construction), which is inside the area;
        // only the holder of the unique `Frame` handle reaches these bytes (see the invariant on
        // `Memory`), and the kernel does not write a frame while a handle exists.
        unsafe { std::slice::from_raw_parts(self.area.ptr.as_ptr().add(start), frame.len()) }
    }

    #[inline]
    fn data_mut<'a>(&'a self, frame: &'a mut Frame) -> &'a mut [u8] {
        self.check(frame);
        let start = frame.addr() as usize;
        debug_assert!(start + frame.len() <= self.area.len);
        // SAFETY: as in `data`; the `&mut Frame` borrow guarantees no other slice of this frame
        // exists while this one lives, and no other handle to the frame exists at all.
        unsafe { std::slice::from_raw_parts_mut(self.area.ptr.as_ptr().add(start), frame.len()) }
    }

    #[inline]
    fn buf_mut<'a>(&'a self, frame: &'a mut Frame) -> FrameBuf<'a> {
        self.check(frame);
        let start = (frame.index as usize) << FRAME_SHIFT;
        debug_assert!(start + FRAME_SIZE as usize <= self.area.len);
        // SAFETY: the whole chunk of frame `index` (index < frames, checked where the handle
        // was made) lies inside the area; as in `data_mut`, the `&mut Frame` borrow, kept by the
        // returned value, is the only way to these bytes while it lives.
        let chunk = unsafe {
            std::slice::from_raw_parts_mut(self.area.ptr.as_ptr().add(start), FRAME_SIZE as usize)
        };
        FrameBuf { chunk, frame }
    }

    #[inline]
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    #[inline]
    fn bit(index: u32) -> (usize, u64) {
        ((index / 64) as usize, 1u64 << (index % 64))
    }

    /// Marks a frame lent to the kernel through socket `tag`; consumes its handle.
    #[inline]
    fn lend(&self, frame: Frame, tag: u32) -> Frame {
        self.check(&frame);
        let (word, bit) = Self::bit(frame.index);
        let cell = &self.lent[word];
        debug_assert_eq!(cell.get() & bit, 0, "frame {} lent twice", frame.index);
        cell.set(cell.get() | bit);
        self.owner[frame.index as usize].set(tag);
        frame
    }

    /// Re-creates the handle for a descriptor socket `tag` returned (rx or completion). `None`
    /// for an address outside this UMEM or a frame that is not lent to the kernel through that
    /// socket (it is in the pool, held as a handle, or another socket's: a second handle would
    /// alias it).
    #[inline]
    pub(crate) fn frame_at(&self, addr: u64, len: u32, tag: u32) -> Option<Frame> {
        let index = addr >> FRAME_SHIFT;
        let offset = (addr & (FRAME_SIZE as u64 - 1)) as u32;
        if index >= self.frames as u64 || offset as u64 + len as u64 > FRAME_SIZE as u64 {
            return None;
        }
        let index = index as u32;
        let (word, bit) = Self::bit(index);
        let cell = &self.lent[word];
        if cell.get() & bit == 0 || self.owner[index as usize].get() != tag {
            return None;
        }
        cell.set(cell.get() & !bit);
        Some(Frame {
            umem: self.id,
            index,
            offset: offset as u16,
            len: len as u16,
            more: false,
        })
    }

    /// Every frame still lent through socket `tag`, as handles: only once that socket is
    /// closed (the kernel no longer writes or reads them).
    pub(crate) fn take_back(&self, tag: u32) -> Vec<Frame> {
        let mut out = Vec::new();
        for index in 0..self.frames {
            let (word, bit) = Self::bit(index);
            let cell = &self.lent[word];
            if cell.get() & bit != 0 && self.owner[index as usize].get() == tag {
                cell.set(cell.get() & !bit);
                out.push(Frame {
                    umem: self.id,
                    index,
                    offset: KERNEL_HEADROOM as u16,
                    len: 0,
                    more: false,
                });
            }
        }
        out
    }

    /// The ring descriptor for a frame handed to the kernel through socket `tag` (tx).
    pub(crate) fn desc(&self, frame: Frame, tag: u32) -> xdpilone::xdp::XdpDesc {
        let frame = self.lend(frame, tag);
        xdpilone::xdp::XdpDesc {
            addr: frame.addr(),
            len: frame.len as u32,
            options: if frame.more { XDP_PKT_CONTD } else { 0 },
        }
    }

    /// The chunk address of a frame handed to socket `tag`'s fill ring.
    pub(crate) fn fill_addr(&self, frame: Frame, tag: u32) -> u64 {
        let frame = self.lend(frame, tag);
        (frame.index as u64) << FRAME_SHIFT
    }

    fn handle(&self) -> UmemHandle {
        UmemHandle {
            id: self.id,
            area: self.area.clone(),
        }
    }

    /// The memory, if `binding` was made from it; panics otherwise (a socket used with another
    /// worker's UMEM would hand the kernel frames that user code still holds).
    #[inline]
    fn bound(&self, binding: &UmemHandle) -> &Memory {
        assert_eq!(
            binding.id, self.id,
            "socket bound to UMEM {} used with UMEM {}",
            binding.id, self.id
        );
        self
    }
}

/// What opening a socket needs of a UMEM, from any thread: its id, checked on every ring
/// operation, and a reference to its memory, so the mapping lives as long as every socket
/// (and kernel registration) made from it. It gives no access to the frames' bytes.
#[derive(Clone)]
pub struct UmemHandle {
    id: u32,
    area: Arc<Area>,
}

impl UmemHandle {
    /// Registers the area with the kernel on a fresh AF_XDP socket (one per port socket).
    pub(crate) fn register(&self, rings: RingSizes) -> io::Result<xdpilone::Umem> {
        let config = xdpilone::UmemConfig {
            fill_size: rings.fill,
            complete_size: rings.completion,
            frame_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
        };
        let slice = NonNull::slice_from_raw_parts(self.area.ptr, self.area.len);
        // SAFETY: `slice` is our page-aligned mapping of whole frames, which stays mapped as long
        // as this registration's user: the socket that holds it also holds a `UmemHandle` (the
        // `Arc<Area>`), declared after the registration so it drops later.
        unsafe { xdpilone::Umem::new(config, slice) }
            .map_err(|e| io::Error::from_raw_os_error(e.get_raw().abs()))
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("registering a UMEM of {} bytes: {e}", self.area.len),
                )
            })
    }

    pub fn bytes(&self) -> usize {
        self.area.len
    }

    /// The segment's id, as its frames carry it.
    pub fn id(&self) -> u32 {
        self.id
    }
}

/// A worker's frame memory: its segments and their bookkeeping. Not `Sync` (the `Cell`
/// bitmaps): one thread uses it; sockets reach the memory through their `UmemHandle`.
pub struct Umem {
    /// The first is the one the worker started with, and stays.
    segments: Vec<Memory>,
}

/// A segment made on another thread (the control thread), to be handed to the worker that
/// will poll the sockets registered on it (`Umem::add_segment`).
pub struct Segment {
    mem: Memory,
    pool: SegmentPool,
}

impl Segment {
    /// Maps `frames` frames.
    pub fn new(frames: u32) -> io::Result<Segment> {
        let (mem, pool) = Memory::new(frames)?;
        Ok(Segment { mem, pool })
    }

    /// What opening a socket on this segment needs.
    pub fn handle(&self) -> UmemHandle {
        self.mem.handle()
    }
}

/// Ring sizes of each socket; all powers of two.
#[derive(Debug, Clone, Copy)]
pub struct RingSizes {
    pub fill: u32,
    pub completion: u32,
    pub rx: u32,
    pub tx: u32,
}

impl Default for RingSizes {
    // Rings cost 8-16 bytes a slot. A socket lends at most half its fill ring (and its share
    // of the segment, `PortSocket::set_fill_share`): up to 4,096 frames ride out a 3 ms stall
    // of the worker at 1.2 Mpps; with 2,048 lent, NDR over AF_XDP was 0.84x the most
    // delivered, with 4,096 1.03-1.10x (dev-2c). The receive ring holds all that is lent.
    fn default() -> Self {
        RingSizes {
            fill: 8192,
            completion: 2048,
            rx: 4096,
            tx: 2048,
        }
    }
}

impl Umem {
    /// Maps `frames` frames as the first segment; the pool returned is the only source of its
    /// frames. Sockets register the memory with the kernel as they are opened
    /// (`PortSocket::open`).
    pub fn new(frames: u32) -> io::Result<(Umem, FramePool)> {
        let (mem, pool) = Memory::new(frames)?;
        Ok((
            Umem {
                segments: vec![mem],
            },
            FramePool {
                segments: vec![pool],
                refused_foreign: 0,
            },
        ))
    }

    /// What opening a socket on the first segment needs; `Send + Sync`, for the control thread.
    pub fn handle(&self) -> UmemHandle {
        self.segments[0].handle()
    }

    /// Frames in all segments.
    pub fn frames(&self) -> u32 {
        self.segments.iter().map(|m| m.frames).sum()
    }

    /// The segments: (id, frames).
    pub fn segments(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.segments.iter().map(|m| (m.id, m.frames))
    }

    /// The first segment's id (the one that stays).
    pub fn first_segment(&self) -> u32 {
        self.segments[0].id
    }

    /// Frames of segment `id` (0 if it is not one of ours).
    pub fn segment_frames(&self, id: u32) -> u32 {
        self.segments
            .iter()
            .find(|m| m.id == id)
            .map_or(0, |m| m.frames)
    }

    /// A memory of two segments, `first` and `second` frames: (memory, pool, first's id,
    /// second's id). For tests.
    #[cfg(test)]
    pub(crate) fn two_segments(first: u32, second: u32) -> (Umem, FramePool, u32, u32) {
        let (mut umem, mut pool) = Umem::new(first).unwrap();
        let segment = Segment::new(second).unwrap();
        let id = segment.handle().id();
        umem.add_segment(segment, &mut pool);
        let first = umem.first_segment();
        (umem, pool, first, id)
    }

    /// Takes in a segment made for this worker; its frames join `pool`.
    pub fn add_segment(&mut self, segment: Segment, pool: &mut FramePool) {
        self.segments.push(segment.mem);
        pool.segments.push(segment.pool);
    }

    /// Unmaps segment `id` (never the first) if every frame of it is in `pool`: then no
    /// socket, ring or handle holds one. Returns whether it went (or was not there).
    pub fn remove_segment(&mut self, id: u32, pool: &mut FramePool) -> bool {
        let Some(i) = self.segments.iter().position(|m| m.id == id) else {
            return true;
        };
        if i == 0 || pool.available_in(id) != self.segments[i].frames as usize {
            return false;
        }
        self.segments.remove(i);
        pool.segments.retain(|p| p.umem != id);
        true
    }

    /// The segment a frame belongs to; panics for a frame of another worker's memory (it
    /// would alias this one's).
    #[inline]
    fn memory(&self, id: u32) -> &Memory {
        // A few segments at most (one per 64 ports): a short scan, the first compare for
        // a worker with one.
        match self.segments.iter().find(|m| m.id == id) {
            Some(m) => m,
            None => panic!("frame of UMEM {id} used with another worker's UMEM"),
        }
    }

    /// The frame bookkeeping, for a socket bound to one of our segments; panics for any other
    /// socket.
    #[inline]
    pub(crate) fn bound(&self, binding: &UmemHandle) -> &Memory {
        match self.segments.iter().find(|m| m.id == binding.id) {
            Some(m) => m.bound(binding),
            None => panic!(
                "socket bound to UMEM {} used with another worker's UMEM",
                binding.id
            ),
        }
    }

    /// A copy of `frame` (same place in its chunk, length and chain flag) in a frame of
    /// segment `to`; `None` when that segment has no free frame.
    pub fn copy_frame(&self, frame: &Frame, pool: &mut FramePool, to: u32) -> Option<Frame> {
        let mut copy = pool.alloc_in(to)?;
        copy.offset = frame.offset;
        copy.len = frame.len;
        copy.more = frame.more;
        self.data_mut(&mut copy).copy_from_slice(self.data(frame));
        Some(copy)
    }

    /// Returns to `pool` every frame still lent through a socket that is now closed; returns
    /// how many.
    pub fn reclaim(&self, tag: u32, pool: &mut FramePool) -> usize {
        let mut n = 0;
        for mem in &self.segments {
            let frames = mem.take_back(tag);
            n += frames.len();
            for frame in frames {
                pool.put(frame);
            }
        }
        n
    }

    /// The frame's data.
    #[inline]
    pub fn data<'a>(&'a self, frame: &'a Frame) -> &'a [u8] {
        self.memory(frame.umem).data(frame)
    }

    /// The frame's data, writable. Several frames can be borrowed at once: each handle is unique.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub fn data_mut<'a>(&'a self, frame: &'a mut Frame) -> &'a mut [u8] {
        self.memory(frame.umem).data_mut(frame)
    }

    /// The frame as a packet whose start can move into the room in front of it (VXLAN pushes
    /// its headers there); the handle follows where the data ends up.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub fn buf_mut<'a>(&'a self, frame: &'a mut Frame) -> FrameBuf<'a> {
        self.memory(frame.umem).buf_mut(frame)
    }

    /// Asks the CPU to start loading the frame's first cache line: the kernel wrote it on
    /// another core, and the pipeline's first read of every header would otherwise stall.
    #[inline]
    pub fn prefetch(&self, frame: &Frame) {
        #[cfg(target_arch = "x86_64")]
        {
            let ptr = self.data(frame).as_ptr();
            // SAFETY: a prefetch is only a hint; it never faults, even for a bad address, and
            // this one points into our own mapping.
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                    ptr as *const i8,
                )
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = frame;
    }
}

/// The worker's free frames, by segment.
pub struct FramePool {
    segments: Vec<SegmentPool>,
    /// Frames of no segment of ours put back (a bug if not zero).
    refused_foreign: u64,
}

impl FramePool {
    #[inline]
    fn segment(&mut self, id: u32) -> Option<&mut SegmentPool> {
        self.segments.iter_mut().find(|p| p.umem == id)
    }

    /// A free frame of segment `id`, with room for `KERNEL_HEADROOM` in front of its data, as
    /// received frames have.
    #[inline]
    pub fn alloc_in(&mut self, id: u32) -> Option<Frame> {
        self.segment(id)?.alloc()
    }

    /// Returns a frame to its segment's pool; a frame of no segment of ours, or one already
    /// in the pool, is refused and counted (see `SegmentPool::put`).
    #[inline]
    pub fn put(&mut self, frame: Frame) {
        match self.segment(frame.umem) {
            Some(pool) => pool.put(frame),
            None => self.refused_foreign += 1,
        }
    }

    /// Whether this pool holds the frames of `mem`.
    pub(crate) fn belongs_to(&self, mem: &Memory) -> bool {
        self.segments.iter().any(|p| p.umem == mem.id)
    }

    /// Free frames in all segments.
    pub fn available(&self) -> usize {
        self.segments.iter().map(SegmentPool::available).sum()
    }

    /// Free frames of segment `id`.
    pub fn available_in(&self, id: u32) -> usize {
        self.segments
            .iter()
            .find(|p| p.umem == id)
            .map_or(0, SegmentPool::available)
    }

    /// Frames in all segments.
    pub fn total(&self) -> u32 {
        self.segments.iter().map(SegmentPool::total).sum()
    }

    /// Frames refused by `put`: (of no segment of ours, already in the pool).
    pub fn refused(&self) -> (u64, u64) {
        self.segments
            .iter()
            .map(SegmentPool::refused)
            .fold((self.refused_foreign, 0), |(f, t), (sf, st)| {
                (f + sf, t + st)
            })
    }
}

/// One segment's free frames.
pub(crate) struct SegmentPool {
    umem: u32,
    free: Vec<u32>,
    /// One bit per frame: in `free`. Guards against a frame index entering the pool twice.
    in_pool: Box<[u64]>,
    total: u32,
    refused_foreign: u64,
    refused_twice: u64,
}

impl SegmentPool {
    /// A free frame with room for `KERNEL_HEADROOM` in front of its data, as received frames have.
    #[inline]
    pub(crate) fn alloc(&mut self) -> Option<Frame> {
        let index = self.free.pop()?;
        let (word, bit) = Memory::bit(index);
        self.in_pool[word] &= !bit;
        Some(Frame {
            umem: self.umem,
            index,
            offset: KERNEL_HEADROOM as u16,
            len: 0,
            more: false,
        })
    }

    /// Returns a frame to the pool.
    ///
    /// A frame of another UMEM, or one already in the pool, is refused: the handle is dropped
    /// (the frame is lost, never duplicated) and counted in [`SegmentPool::refused`]. Either is a
    /// bug, but refusing keeps a production switch forwarding (a panic would take the worker,
    /// and with it every port's queue it polls, down), while the counters, reported at exit and
    /// by the frame accounting, make the bug visible.
    #[inline]
    pub(crate) fn put(&mut self, frame: Frame) {
        if frame.umem != self.umem || frame.index >= self.total {
            self.refused_foreign += 1;
            return;
        }
        let (word, bit) = Memory::bit(frame.index);
        if self.in_pool[word] & bit != 0 {
            self.refused_twice += 1;
            return;
        }
        self.in_pool[word] |= bit;
        self.free.push(frame.index);
    }

    pub(crate) fn available(&self) -> usize {
        self.free.len()
    }

    pub(crate) fn total(&self) -> u32 {
        self.total
    }

    /// Frames refused by `put`: (of another UMEM, already in the pool).
    pub(crate) fn refused(&self) -> (u64, u64) {
        (self.refused_foreign, self.refused_twice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_address_their_own_bytes() {
        let umem_area = Area::map(4 * FRAME_SIZE as usize).unwrap();
        // Exercise the address arithmetic without registering (no privileges needed).
        let frame = Frame {
            umem: 1,
            index: 3,
            offset: 256,
            len: 60,
            more: false,
        };
        assert_eq!(frame.addr(), 3 * 4096 + 256);
        drop(umem_area);
    }

    #[test]
    fn set_len_is_clamped_to_the_frame() {
        let mut frame = Frame {
            umem: 1,
            index: 0,
            offset: KERNEL_HEADROOM as u16,
            len: 0,
            more: false,
        };
        frame.set_len(100_000);
        assert_eq!(frame.len(), MAX_FRAME_LEN as usize);
    }

    // `Memory` is the UMEM without its kernel registration: no privileges needed.

    #[test]
    fn a_frame_of_another_umem_is_refused_by_the_pool_not_duplicated() {
        let (_a, mut pool_a) = Memory::new(4).unwrap();
        let (_b, mut pool_b) = Memory::new(4).unwrap();
        let foreign = pool_b.alloc().unwrap();
        let index = foreign.index();
        assert_eq!(pool_a.available(), 4);
        pool_a.put(foreign);
        assert_eq!(pool_a.available(), 4, "not taken");
        assert_eq!(pool_a.refused(), (1, 0));
        // Every frame pool A hands out is distinct: the foreign index was not added.
        let mut got: Vec<u32> = std::iter::from_fn(|| pool_a.alloc().map(|f| f.index())).collect();
        got.sort();
        assert_eq!(got, [0, 1, 2, 3]);
        assert!(got.contains(&index));
    }

    #[test]
    fn a_frame_put_twice_is_refused() {
        let (mem, mut pool) = Memory::new(4).unwrap();
        let frame = pool.alloc().unwrap();
        let index = frame.index();
        // The kernel hands back a frame it was lent; a forged second handle to a frame in the
        // pool cannot be made (see below), so make the duplicate the only way safe code can:
        // lend the frame, take it back twice.
        let addr = mem.fill_addr(frame, 7);
        let again = mem.frame_at(addr, 0, 7).unwrap();
        assert!(mem.frame_at(addr, 0, 7).is_none(), "taken back once only");
        pool.put(again);
        assert_eq!(pool.available(), 4);
        let dup = Frame {
            umem: mem.id,
            index,
            offset: 0,
            len: 0,
            more: false,
        };
        pool.put(dup);
        assert_eq!(pool.available(), 4, "the second put is refused");
        assert_eq!(pool.refused(), (0, 1));
        let mut got: Vec<u32> = std::iter::from_fn(|| pool.alloc().map(|f| f.index())).collect();
        got.sort();
        assert_eq!(got, [0, 1, 2, 3]);
    }

    #[test]
    fn only_frames_lent_to_the_kernel_come_back_as_handles() {
        let (mem, mut pool) = Memory::new(4).unwrap();
        // Frames in the pool: a descriptor naming one makes no handle (it would alias the
        // frame the pool hands out next).
        for index in 0..4u64 {
            assert!(mem.frame_at(index << FRAME_SHIFT, 60, 7).is_none());
        }
        let mut held = pool.alloc().unwrap();
        let held_addr = held.addr();
        assert!(mem.frame_at(held_addr, 60, 7).is_none(), "held as a handle");
        held.set_len(60);
        let desc = mem.desc(held, 7);
        assert_eq!(desc.addr, held_addr);
        let back = mem.frame_at(desc.addr, desc.len, 7).unwrap();
        assert_eq!(back.len(), 60);
        assert!(mem.frame_at(desc.addr, desc.len, 7).is_none());
        // Outside the UMEM or past the frame's end.
        assert!(mem.frame_at(4 << FRAME_SHIFT, 0, 7).is_none());
        assert!(mem.frame_at(u64::MAX, 0, 7).is_none());
        let fill = pool.alloc().unwrap();
        let addr = mem.fill_addr(fill, 7);
        assert!(mem.frame_at(addr + 256, FRAME_SIZE - 255, 7).is_none());
        assert!(mem.frame_at(addr + 256, 1500, 7).is_some());
        pool.put(back);
    }

    #[test]
    fn frames_come_back_only_through_their_own_socket_or_its_closing() {
        let (mem, mut pool) = Memory::new(4).unwrap();
        let a = mem.fill_addr(pool.alloc().unwrap(), 1);
        let b = mem.fill_addr(pool.alloc().unwrap(), 2);
        let _c = mem.fill_addr(pool.alloc().unwrap(), 2);
        assert!(
            mem.frame_at(a, 60, 2).is_none(),
            "not lent through socket 2"
        );
        assert!(mem.frame_at(b, 60, 2).is_some());
        // Socket 2 closed: what it still held is ours again, socket 1's is not touched.
        let back = mem.take_back(2);
        assert_eq!(back.len(), 1);
        for f in back {
            pool.put(f);
        }
        assert!(mem.take_back(2).is_empty());
        assert_eq!(pool.available(), 2);
        assert!(mem.frame_at(a, 60, 1).is_some());
    }

    #[test]
    fn frames_of_one_memory_write_their_own_bytes() {
        let (mem, mut pool) = Memory::new(2).unwrap();
        let mut a = pool.alloc().unwrap();
        let mut b = pool.alloc().unwrap();
        a.set_len(10);
        b.set_len(10);
        mem.data_mut(&mut a).fill(1);
        mem.data_mut(&mut b).fill(2);
        assert_eq!(mem.data(&a), [1; 10]);
        assert_eq!(mem.data(&b), [2; 10]);
    }

    #[test]
    #[should_panic(expected = "frame of UMEM")]
    fn a_frame_of_another_umem_has_no_bytes_here() {
        let (a, _pool_a) = Memory::new(1).unwrap();
        let (_b, mut pool_b) = Memory::new(1).unwrap();
        let frame = pool_b.alloc().unwrap();
        a.data(&frame);
    }

    #[test]
    #[should_panic(expected = "socket bound to UMEM")]
    fn a_socket_is_used_with_its_own_umem_only() {
        // What every ring operation of `PortSocket` checks first (a socket itself needs
        // privileges to open).
        let (a, _) = Memory::new(1).unwrap();
        let (b, _) = Memory::new(1).unwrap();
        let binding = a.handle();
        assert!(std::ptr::eq(a.bound(&binding), &a));
        b.bound(&binding);
    }

    #[test]
    fn a_binding_keeps_the_memory_mapped() {
        let (mem, _pool) = Memory::new(1).unwrap();
        let binding = mem.handle();
        let area = Arc::downgrade(&mem.area);
        drop(mem);
        assert!(area.upgrade().is_some(), "a socket still refers to it");
        drop(binding);
        assert!(area.upgrade().is_none(), "unmapped with the last owner");
    }

    #[test]
    fn a_segment_goes_only_when_all_its_frames_are_home_and_never_the_first() {
        let (mut umem, mut pool, first, id) = Umem::two_segments(8, 16);
        assert_eq!(
            (umem.frames(), pool.total(), pool.available()),
            (24, 24, 24)
        );
        let mut out = pool.alloc_in(id).unwrap();
        out.set_len(4);
        umem.data_mut(&mut out).copy_from_slice(&[9; 4]);
        let copy = umem.copy_frame(&out, &mut pool, first).unwrap();
        assert_eq!((copy.umem(), umem.data(&copy)), (first, &[9u8; 4][..]));
        assert!(!umem.remove_segment(id, &mut pool), "a frame of it is out");
        pool.put(out);
        pool.put(copy);
        assert!(!umem.remove_segment(first, &mut pool));
        assert!(umem.remove_segment(id, &mut pool));
        assert_eq!((umem.frames(), pool.total(), pool.available()), (8, 8, 8));
        assert!(pool.alloc_in(id).is_none());
        assert_eq!(pool.refused(), (0, 0));
    }

    #[test]
    fn a_closed_socket_gives_back_its_frames_of_every_segment() {
        let (umem, mut pool, first, id) = Umem::two_segments(4, 4);
        for seg in [first, id] {
            let frame = pool.alloc_in(seg).unwrap();
            umem.segments[umem.segments.iter().position(|m| m.id == seg).unwrap()]
                .fill_addr(frame, 5);
        }
        assert_eq!(pool.available(), 6);
        assert_eq!(umem.reclaim(5, &mut pool), 2);
        assert_eq!(pool.available(), 8);
    }
}
