//! IPv4 prefixes.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An address with a prefix length; the address may have host bits (a gateway's own address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Ipv4Cidr {
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Ipv4Cidr> {
        (len <= 32).then_some(Ipv4Cidr { addr, len })
    }

    pub fn mask(&self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - self.len)
        }
    }

    pub fn network(&self) -> u32 {
        u32::from(self.addr) & self.mask()
    }

    #[inline]
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.network()
    }

    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        let len = self.len.min(other.len);
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        self.network() & mask == other.network() & mask
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX-LENGTH"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} in {s:?} is not an IPv4 address"))?;
        let len: u8 = len
            .parse()
            .map_err(|_| format!("prefix length {len:?} in {s:?} is not a number"))?;
        Ipv4Cidr::new(addr, len).ok_or_else(|| format!("prefix length {len} in {s:?} is above 32"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_and_overlaps() {
        let pods: Ipv4Cidr = "10.244.1.1/24".parse().unwrap();
        assert!(pods.contains(Ipv4Addr::new(10, 244, 1, 200)));
        assert!(!pods.contains(Ipv4Addr::new(10, 244, 2, 1)));
        let cluster: Ipv4Cidr = "10.244.0.0/16".parse().unwrap();
        assert!(cluster.overlaps(&pods) && pods.overlaps(&cluster));
        assert!(!pods.overlaps(&"10.244.2.0/24".parse().unwrap()));
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)));
        assert!("10.0.0.0/33"
            .parse::<Ipv4Cidr>()
            .unwrap_err()
            .contains("above 32"));
        assert!("10.0.0/8"
            .parse::<Ipv4Cidr>()
            .unwrap_err()
            .contains("\"10.0.0\""));
    }
}
