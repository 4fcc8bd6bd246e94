//! A frame whose start can move: encapsulation pushes headers into the room in front of the
//! data (the headroom a UMEM frame keeps, as `bpf_xdp_adjust_head` uses), decapsulation pulls
//! them off. Stages that only rewrite in place see plain bytes.

/// A frame the pipeline may grow or shrink at the front.
pub trait Packet: AsRef<[u8]> + AsMut<[u8]> {
    /// Bytes that can be pushed in front of the data.
    fn headroom(&self) -> usize;

    /// Extends the data `n` bytes to the front (their contents are unspecified). Returns false,
    /// changing nothing, without the room.
    fn push_front(&mut self, n: usize) -> bool;

    /// Removes `n` bytes from the front. Returns false, changing nothing, if shorter.
    fn pull_front(&mut self, n: usize) -> bool;
}

/// A borrowed slice: it can shrink, never grow.
impl Packet for &mut [u8] {
    fn headroom(&self) -> usize {
        0
    }

    fn push_front(&mut self, _n: usize) -> bool {
        false
    }

    fn pull_front(&mut self, n: usize) -> bool {
        if n > self.len() {
            return false;
        }
        let bytes = std::mem::take(self);
        *self = &mut bytes[n..];
        true
    }
}

/// An owned buffer (tests, frames the pipeline makes): grows by copying.
impl Packet for Vec<u8> {
    fn headroom(&self) -> usize {
        usize::MAX
    }

    fn push_front(&mut self, n: usize) -> bool {
        self.splice(0..0, std::iter::repeat_n(0, n));
        true
    }

    fn pull_front(&mut self, n: usize) -> bool {
        if n > self.len() {
            return false;
        }
        self.drain(..n);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_shrink_and_vectors_grow() {
        let mut bytes = [1u8, 2, 3, 4];
        let mut slice: &mut [u8] = &mut bytes[..];
        assert!(!slice.push_front(2));
        assert!(slice.pull_front(1));
        assert_eq!(slice, &[2, 3, 4]);
        assert!(!slice.pull_front(4));
        let mut v = vec![7u8, 8];
        assert!(v.push_front(2));
        assert_eq!(v.len(), 4);
        assert_eq!(&v[2..], &[7, 8]);
        assert!(v.pull_front(3));
        assert_eq!(v, vec![8]);
    }
}

/// An owned frame with room in front of it, as a UMEM frame has (benchmarks, fuzzing, tests).
#[derive(Debug, Clone)]
pub struct HeadroomBuf {
    buf: Vec<u8>,
    head: usize,
}

impl HeadroomBuf {
    /// `frame` with `headroom` free bytes in front of it.
    pub fn new(frame: &[u8], headroom: usize) -> HeadroomBuf {
        let mut buf = vec![0; headroom + frame.len()];
        buf[headroom..].copy_from_slice(frame);
        HeadroomBuf {
            buf,
            head: headroom,
        }
    }
}

impl AsRef<[u8]> for HeadroomBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.head..]
    }
}

impl AsMut<[u8]> for HeadroomBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.head..]
    }
}

impl Packet for HeadroomBuf {
    fn headroom(&self) -> usize {
        self.head
    }

    fn push_front(&mut self, n: usize) -> bool {
        if n > self.head {
            return false;
        }
        self.head -= n;
        true
    }

    fn pull_front(&mut self, n: usize) -> bool {
        if n > self.buf.len() - self.head {
            return false;
        }
        self.head += n;
        true
    }
}

#[cfg(test)]
mod headroom_tests {
    use super::*;

    #[test]
    fn headroom_is_used_then_refused() {
        let mut p = HeadroomBuf::new(&[1, 2, 3], 2);
        assert!(p.push_front(2));
        assert_eq!(p.as_ref(), &[0, 0, 1, 2, 3]);
        assert!(!p.push_front(1));
        assert!(p.pull_front(4));
        assert_eq!(p.as_ref(), &[3]);
        assert!(!p.pull_front(2));
    }
}
