//! IPv4 header view.

use super::checksum;

use std::net::Ipv4Addr;

mod field {
    pub const VER_IHL: usize = 0;
    pub const TOTAL_LEN: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

pub const IPV4_MIN_HEADER_LEN: usize = 20;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Why an IPv4 header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv4Error {
    Truncated,
    NotVersion4,
    BadHeaderLength,
    BadTotalLength,
    BadChecksum,
}

#[derive(Debug)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Checks version, header length, total length and the header checksum.
    pub fn new_checked(buffer: T) -> Result<Self, Ipv4Error> {
        let p = Ipv4Packet { buffer };
        let b = p.buffer.as_ref();
        if b.len() < IPV4_MIN_HEADER_LEN {
            return Err(Ipv4Error::Truncated);
        }
        if b[field::VER_IHL] >> 4 != 4 {
            return Err(Ipv4Error::NotVersion4);
        }
        let hl = p.header_len();
        if hl < IPV4_MIN_HEADER_LEN || hl > b.len() {
            return Err(Ipv4Error::BadHeaderLength);
        }
        let total = p.total_len();
        if total < hl || total > b.len() {
            return Err(Ipv4Error::BadTotalLength);
        }
        if checksum::fold(checksum::sum(&b[..hl])) != 0xffff {
            return Err(Ipv4Error::BadChecksum);
        }
        Ok(p)
    }

    /// Wraps without the checksum check (for headers quoted inside ICMP errors, which may be
    /// cut short): only the fixed 20 bytes must be there.
    pub fn new_quoted(buffer: T) -> Result<Self, Ipv4Error> {
        let p = Ipv4Packet { buffer };
        let b = p.buffer.as_ref();
        if b.len() < IPV4_MIN_HEADER_LEN {
            return Err(Ipv4Error::Truncated);
        }
        if b[field::VER_IHL] >> 4 != 4
            || p.header_len() < IPV4_MIN_HEADER_LEN
            || p.header_len() > b.len()
        {
            return Err(Ipv4Error::BadHeaderLength);
        }
        Ok(p)
    }

    pub fn header_len(&self) -> usize {
        ((self.buffer.as_ref()[field::VER_IHL] & 0x0f) as usize) * 4
    }

    pub fn total_len(&self) -> usize {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::TOTAL_LEN], b[field::TOTAL_LEN + 1]]) as usize
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    pub fn checksum(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::CHECKSUM], b[field::CHECKSUM + 1]])
    }

    /// The identification field, shared by a datagram's fragments.
    pub fn ident(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::IDENT], b[field::IDENT + 1]])
    }

    /// Don't fragment: the sender wants ICMP fragmentation-needed rather than fragments.
    pub fn dont_fragment(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS_FRAG] & 0x40 != 0
    }

    /// The first or a later fragment of a larger datagram (MF set, or a fragment offset).
    pub fn is_fragment(&self) -> bool {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::FLAGS_FRAG], b[field::FLAGS_FRAG + 1]]) & 0x3fff != 0
    }

    /// A fragment other than the first has no transport header.
    pub fn is_later_fragment(&self) -> bool {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::FLAGS_FRAG], b[field::FLAGS_FRAG + 1]]) & 0x1fff != 0
    }

    pub fn src(&self) -> Ipv4Addr {
        let b = self.buffer.as_ref();
        Ipv4Addr::new(
            b[field::SRC],
            b[field::SRC + 1],
            b[field::SRC + 2],
            b[field::SRC + 3],
        )
    }

    pub fn dst(&self) -> Ipv4Addr {
        let b = self.buffer.as_ref();
        Ipv4Addr::new(
            b[field::DST],
            b[field::DST + 1],
            b[field::DST + 2],
            b[field::DST + 3],
        )
    }

    /// The payload up to the total length (a quoted header may be cut short: up to the end).
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let end = self.total_len().min(b.len()).max(self.header_len());
        &b[self.header_len()..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn put_checksum(&mut self, c: u16) {
        self.buffer.as_mut()[field::CHECKSUM..field::CHECKSUM + 2]
            .copy_from_slice(&c.to_be_bytes());
    }

    pub fn set_ttl(&mut self, ttl: u8) {
        let b = self.buffer.as_mut();
        let old = u16::from_be_bytes([b[field::TTL], b[field::PROTOCOL]]);
        b[field::TTL] = ttl;
        let new = u16::from_be_bytes([b[field::TTL], b[field::PROTOCOL]]);
        let c = checksum::update16(self.checksum(), old, new);
        self.put_checksum(c);
    }

    /// Decrements the TTL, updating the checksum incrementally.
    pub fn decrement_ttl(&mut self) {
        let b = self.buffer.as_mut();
        let old = u16::from_be_bytes([b[field::TTL], b[field::PROTOCOL]]);
        b[field::TTL] = b[field::TTL].wrapping_sub(1);
        let new = u16::from_be_bytes([b[field::TTL], b[field::PROTOCOL]]);
        let c = checksum::update16(self.checksum(), old, new);
        self.put_checksum(c);
    }

    pub fn set_src(&mut self, addr: Ipv4Addr) {
        let old = u32::from(self.src());
        self.buffer.as_mut()[field::SRC..field::SRC + 4].copy_from_slice(&addr.octets());
        let c = checksum::update32(self.checksum(), old, u32::from(addr));
        self.put_checksum(c);
    }

    pub fn set_dst(&mut self, addr: Ipv4Addr) {
        let old = u32::from(self.dst());
        self.buffer.as_mut()[field::DST..field::DST + 4].copy_from_slice(&addr.octets());
        let c = checksum::update32(self.checksum(), old, u32::from(addr));
        self.put_checksum(c);
    }

    pub fn fill_checksum(&mut self) {
        self.put_checksum(0);
        let hl = self.header_len();
        let c = checksum::checksum(&self.buffer.as_ref()[..hl]);
        self.put_checksum(c);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        let end = self.total_len().min(self.buffer.as_ref().len()).max(hl);
        &mut self.buffer.as_mut()[hl..end]
    }
}

/// Writes a 20-byte IPv4 header (no options) into `out[..20]`.
pub fn emit_header(
    out: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    ttl: u8,
    payload_len: usize,
) {
    let total = (IPV4_MIN_HEADER_LEN + payload_len) as u16;
    out[..20].copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, ttl, protocol, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    out[2..4].copy_from_slice(&total.to_be_bytes());
    out[12..16].copy_from_slice(&src.octets());
    out[16..20].copy_from_slice(&dst.octets());
    let c = checksum::checksum(&out[..20]);
    out[10..12].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet() -> Vec<u8> {
        let mut bytes = Vec::new();
        etherparse::PacketBuilder::ipv4([10, 244, 1, 2], [10, 96, 0, 10], 64)
            .tcp(40000, 80, 1, 1000)
            .write(&mut bytes, b"GET /")
            .unwrap();
        bytes
    }

    #[test]
    fn parses_and_rewrites_with_valid_checksums() {
        let mut bytes = packet();
        let mut p = Ipv4Packet::new_checked(&mut bytes[..]).unwrap();
        assert_eq!(p.src(), Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(p.protocol(), PROTO_TCP);
        p.set_dst(Ipv4Addr::new(10, 244, 1, 3));
        p.set_src(Ipv4Addr::new(198, 18, 0, 1));
        p.decrement_ttl();
        let p = Ipv4Packet::new_checked(&bytes[..]).expect("checksum still valid");
        assert_eq!(p.ttl(), 63);
        assert_eq!(p.dst(), Ipv4Addr::new(10, 244, 1, 3));
    }

    #[test]
    fn malformed_headers_are_refused_by_reason() {
        let good = packet();
        for len in 0..20 {
            assert_eq!(
                Ipv4Packet::new_checked(&good[..len]).unwrap_err(),
                Ipv4Error::Truncated
            );
        }
        let mut v6 = good.clone();
        v6[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&v6[..]).unwrap_err(),
            Ipv4Error::NotVersion4
        );
        let mut ihl = good.clone();
        ihl[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&ihl[..]).unwrap_err(),
            Ipv4Error::BadHeaderLength
        );
        let mut total = good.clone();
        total[2..4].copy_from_slice(&9999u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::new_checked(&total[..]).unwrap_err(),
            Ipv4Error::BadTotalLength
        );
        let mut sum = good.clone();
        sum[8] ^= 1;
        assert_eq!(
            Ipv4Packet::new_checked(&sum[..]).unwrap_err(),
            Ipv4Error::BadChecksum
        );
    }
}
