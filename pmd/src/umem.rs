//! UMEM: one memory area per worker, cut into equal frames, shared by every socket the worker
//! polls, so a frame received on one port is transmitted on another by descriptor.
//!
//! Ownership: a frame is either in the worker's [`FramePool`], lent to the kernel (fill or tx
//! ring), or held as a [`Frame`] handle. A `Frame` is move-only; handing it to a ring consumes
//! it, so one frame cannot be given to two rings.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// Bytes per frame: a page, as the kernel's aligned chunk mode wants a power of two.
pub const FRAME_SIZE: u32 = 4096;
const FRAME_SHIFT: u32 = FRAME_SIZE.trailing_zeros();
/// Room the kernel keeps before received data (XDP_PACKET_HEADROOM).
pub const KERNEL_HEADROOM: u32 = 256;
/// Largest frame that fits a UMEM frame after the kernel's headroom.
pub const MAX_FRAME_LEN: u32 = FRAME_SIZE - KERNEL_HEADROOM;

static NEXT_UMEM_ID: AtomicU32 = AtomicU32::new(1);

/// A frame of one UMEM: its index, where the data starts and how long it is.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    umem: u32,
    index: u32,
    offset: u16,
    len: u16,
}

impl Frame {
    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
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

/// The memory area, mapped anonymously and unmapped on drop.
struct Area {
    ptr: NonNull<u8>,
    len: usize,
}

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
        // SAFETY: unmaps exactly the mapping made in `map`; `Umem` drops its sockets (which
        // reference the area) before the area itself, by field order.
        unsafe {
            libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len);
        }
    }
}

/// A registered UMEM.
pub struct Umem {
    // Field order matters: the kernel registration goes before the memory it registers.
    xsk: xdpilone::Umem,
    area: Area,
    id: u32,
    frames: u32,
}

// SAFETY: the area is plain memory owned by this value; moving the Umem to the worker thread
// that uses it moves that ownership with it. It is not `Sync`: one thread uses it.
unsafe impl Send for Umem {}

/// Ring sizes of each socket; all powers of two.
#[derive(Debug, Clone, Copy)]
pub struct RingSizes {
    pub fill: u32,
    pub completion: u32,
    pub rx: u32,
    pub tx: u32,
}

impl Default for RingSizes {
    fn default() -> Self {
        RingSizes {
            fill: 8192,
            completion: 4096,
            rx: 4096,
            tx: 2048,
        }
    }
}

impl Umem {
    /// Maps and registers `frames` frames; the pool returned is the only source of its frames.
    pub fn new(frames: u32, rings: RingSizes) -> io::Result<(Umem, FramePool)> {
        let len = frames as usize * FRAME_SIZE as usize;
        let area = Area::map(len)?;
        let config = xdpilone::UmemConfig {
            fill_size: rings.fill,
            complete_size: rings.completion,
            frame_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
        };
        let slice = NonNull::slice_from_raw_parts(area.ptr, len);
        // SAFETY: `slice` is our page-aligned mapping of `len` bytes, which lives as long as the
        // returned Umem (the `area` field outlives `xsk` by drop order).
        let xsk = unsafe { xdpilone::Umem::new(config, slice) }
            .map_err(|e| io::Error::from_raw_os_error(e.get_raw()))
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("registering UMEM of {frames} frames: {e}"),
                )
            })?;
        let id = NEXT_UMEM_ID.fetch_add(1, Ordering::Relaxed);
        let pool = FramePool {
            umem: id,
            free: (0..frames).rev().collect(),
            total: frames,
        };
        Ok((
            Umem {
                xsk,
                area,
                id,
                frames,
            },
            pool,
        ))
    }

    pub(crate) fn xsk(&self) -> &xdpilone::Umem {
        &self.xsk
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

    /// The frame's data.
    #[inline]
    pub fn data<'a>(&'a self, frame: &'a Frame) -> &'a [u8] {
        self.check(frame);
        let start = frame.addr() as usize;
        debug_assert!(start + frame.len() <= self.area.len);
        // SAFETY: `start + len` lies inside frame `index` (offset + len <= FRAME_SIZE by
        // construction), which is inside the area; only the holder of the unique `Frame` handle
        // reaches these bytes, and the kernel does not write a frame while a handle exists.
        unsafe { std::slice::from_raw_parts(self.area.ptr.as_ptr().add(start), frame.len()) }
    }

    /// The frame's data, writable. Several frames can be borrowed at once: each handle is unique.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub fn data_mut<'a>(&'a self, frame: &'a mut Frame) -> &'a mut [u8] {
        self.check(frame);
        let start = frame.addr() as usize;
        debug_assert!(start + frame.len() <= self.area.len);
        // SAFETY: as in `data`; the `&mut Frame` borrow guarantees no other slice of this frame
        // exists while this one lives.
        unsafe { std::slice::from_raw_parts_mut(self.area.ptr.as_ptr().add(start), frame.len()) }
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

    /// Re-creates the handle for a descriptor the kernel returned (rx or completion). `None`
    /// for an address outside this UMEM.
    pub(crate) fn frame_at(&self, addr: u64, len: u32) -> Option<Frame> {
        let index = (addr >> FRAME_SHIFT) as u32;
        let offset = (addr & (FRAME_SIZE as u64 - 1)) as u32;
        if index >= self.frames || offset + len > FRAME_SIZE {
            return None;
        }
        Some(Frame {
            umem: self.id,
            index,
            offset: offset as u16,
            len: len as u16,
        })
    }

    /// The ring descriptor for a frame handed to the kernel.
    pub(crate) fn desc(&self, frame: Frame) -> xdpilone::xdp::XdpDesc {
        self.check(&frame);
        xdpilone::xdp::XdpDesc {
            addr: frame.addr(),
            len: frame.len as u32,
            options: 0,
        }
    }

    /// The chunk address given to the fill ring.
    pub(crate) fn fill_addr(&self, frame: Frame) -> u64 {
        self.check(&frame);
        (frame.index as u64) << FRAME_SHIFT
    }
}

/// The worker's free frames.
pub struct FramePool {
    umem: u32,
    free: Vec<u32>,
    total: u32,
}

impl FramePool {
    /// A free frame with room for `KERNEL_HEADROOM` in front of its data, as received frames have.
    #[inline]
    pub fn alloc(&mut self) -> Option<Frame> {
        let index = self.free.pop()?;
        Some(Frame {
            umem: self.umem,
            index,
            offset: KERNEL_HEADROOM as u16,
            len: 0,
        })
    }

    #[inline]
    pub fn put(&mut self, frame: Frame) {
        debug_assert_eq!(frame.umem, self.umem);
        debug_assert!(self.free.len() < self.total as usize);
        self.free.push(frame.index);
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }

    pub fn total(&self) -> u32 {
        self.total
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
        };
        frame.set_len(100_000);
        assert_eq!(frame.len(), MAX_FRAME_LEN as usize);
    }
}
