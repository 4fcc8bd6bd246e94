//! Ethernet II header view.

use super::WireError;
use std::fmt;
use std::str::FromStr;

mod field {
    use std::ops::{Range, RangeFrom};
    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: RangeFrom<usize> = 14..;
}

/// Bytes in an Ethernet II header (no VLAN tag).
pub const ETHERNET_HEADER_LEN: usize = field::PAYLOAD.start;

/// A 48-bit MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    pub fn from_bytes(bytes: &[u8]) -> MacAddr {
        let mut mac = [0; 6];
        mac.copy_from_slice(&bytes[..6]);
        MacAddr(mac)
    }

    pub const fn is_broadcast(&self) -> bool {
        u64::from_be_bytes([
            0, 0, self.0[0], self.0[1], self.0[2], self.0[3], self.0[4], self.0[5],
        ]) == 0xffff_ffff_ffff
    }

    /// Group bit set: multicast or broadcast.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub const fn is_zero(&self) -> bool {
        u64::from_be_bytes([
            0, 0, self.0[0], self.0[1], self.0[2], self.0[3], self.0[4], self.0[5],
        ]) == 0
    }

    /// The address packed into the low 48 bits, for table keys.
    pub const fn to_u64(&self) -> u64 {
        u64::from_be_bytes([
            0, 0, self.0[0], self.0[1], self.0[2], self.0[3], self.0[4], self.0[5],
        ])
    }

    pub const fn from_u64(v: u64) -> MacAddr {
        let b = v.to_be_bytes();
        MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in mac.iter_mut() {
            let part = parts
                .next()
                .ok_or_else(|| format!("MAC address {s:?} has fewer than 6 octets"))?;
            if part.len() != 2 {
                return Err(format!(
                    "MAC address {s:?}: octet {part:?} is not two hex digits"
                ));
            }
            *byte = u8::from_str_radix(part, 16)
                .map_err(|_| format!("MAC address {s:?}: octet {part:?} is not hex"))?;
        }
        if parts.next().is_some() {
            return Err(format!("MAC address {s:?} has more than 6 octets"));
        }
        Ok(MacAddr(mac))
    }
}

/// The EtherType field; unknown values stay representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EtherType {
    Ipv4,
    Arp,
    Vlan,
    Ipv6,
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(v: u16) -> Self {
        match v {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x8100 => EtherType::Vlan,
            0x86dd => EtherType::Ipv6,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(v: EtherType) -> u16 {
        match v {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Vlan => 0x8100,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Unknown(other) => other,
        }
    }
}

/// A view of an Ethernet II frame over a byte buffer.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps without checking; accessors may panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps untrusted bytes: after this, no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        let got = self.buffer.as_ref().len();
        if got < ETHERNET_HEADER_LEN {
            return Err(WireError::Truncated {
                needed: ETHERNET_HEADER_LEN,
                got,
            });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn dst_addr(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::DESTINATION])
    }

    #[inline]
    pub fn src_addr(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::SOURCE])
    }

    #[inline]
    pub fn ethertype(&self) -> EtherType {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        EtherType::from(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst_addr(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&mac.0);
    }

    pub fn set_src_addr(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&mac.0);
    }

    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&u16::from(ethertype).to_be_bytes());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // dst ff:ff:ff:ff:ff:ff, src 02:00:00:00:00:01, ARP, 2 payload bytes
    const ARP_BROADCAST: [u8; 16] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0xaa,
        0xbb,
    ];

    #[test]
    fn parses_fixture() {
        let frame = EthernetFrame::new_checked(&ARP_BROADCAST[..]).unwrap();
        assert_eq!(frame.dst_addr(), MacAddr::BROADCAST);
        assert!(frame.dst_addr().is_broadcast());
        assert_eq!(frame.src_addr(), "02:00:00:00:00:01".parse().unwrap());
        assert_eq!(frame.ethertype(), EtherType::Arp);
        assert_eq!(frame.payload(), &[0xaa, 0xbb]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for len in 0..ETHERNET_HEADER_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&ARP_BROADCAST[..len]).unwrap_err(),
                WireError::Truncated {
                    needed: 14,
                    got: len
                }
            );
        }
        assert!(EthernetFrame::new_checked(&ARP_BROADCAST[..14]).is_ok());
    }

    #[test]
    fn setters_round_trip() {
        let mut bytes = ARP_BROADCAST;
        let mut frame = EthernetFrame::new_checked(&mut bytes[..]).unwrap();
        let mac: MacAddr = "0a:0b:0c:0d:0e:0f".parse().unwrap();
        frame.set_dst_addr(mac);
        frame.set_src_addr(MacAddr::BROADCAST);
        frame.set_ethertype(EtherType::Unknown(0x88b5));
        assert_eq!(frame.dst_addr(), mac);
        assert_eq!(frame.src_addr(), MacAddr::BROADCAST);
        assert_eq!(frame.ethertype(), EtherType::Unknown(0x88b5));
    }

    #[test]
    fn mac_parsing_names_the_problem() {
        assert!("02:00:00:00:00"
            .parse::<MacAddr>()
            .unwrap_err()
            .contains("fewer than 6"));
        assert!("02:00:00:00:00:0g"
            .parse::<MacAddr>()
            .unwrap_err()
            .contains("\"0g\""));
        assert!("02:00:00:00:00:00:00"
            .parse::<MacAddr>()
            .unwrap_err()
            .contains("more than 6"));
        let mac: MacAddr = "de:ad:be:ef:00:01".parse().unwrap();
        assert_eq!(MacAddr::from_u64(mac.to_u64()), mac);
        assert!(!mac.is_multicast());
        assert!("01:00:5e:00:00:01"
            .parse::<MacAddr>()
            .unwrap()
            .is_multicast());
    }
}
