//! A rate limit on the ICMP errors the gateway originates, as Linux's `icmp_ratelimit` does: a
//! token bucket per destination (a burst of 6, then one per second) under a global one (a burst
//! of 50, then 1000 per second, `icmp_msgs_per_sec`), so a flood of unroutable or expiring
//! packets cannot make us a flood of ICMP.
//!
//! Ownership: one per worker; no sharing.

use rustc_hash::FxHashMap;
use std::net::Ipv4Addr;

/// Per destination: one error per this many ms, with a burst of `PEER_BURST`.
const PEER_INTERVAL_MS: u64 = 1000;
const PEER_BURST: u64 = 6;
/// Everyone together: 1000 per second, with a burst of `GLOBAL_BURST`.
const GLOBAL_INTERVAL_US: u64 = 1000;
const GLOBAL_BURST: u64 = 50;
/// Destinations remembered; beyond it, idle ones are forgotten, else errors are refused.
const MAX_PEERS: usize = 4096;

/// Credit in time units: an error costs one interval; credit grows with time up to a burst.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    credit: u64,
    last: u64,
}

impl Bucket {
    fn full(interval: u64, burst: u64, now: u64) -> Bucket {
        Bucket {
            credit: interval * burst,
            last: now,
        }
    }

    fn refill(&mut self, interval: u64, burst: u64, now: u64) {
        self.credit = (self.credit + now.saturating_sub(self.last)).min(interval * burst);
        self.last = now;
    }
}

#[derive(Debug)]
pub struct IcmpErrorLimiter {
    peers: FxHashMap<Ipv4Addr, Bucket>,
    global: Bucket,
}

impl Default for IcmpErrorLimiter {
    fn default() -> Self {
        IcmpErrorLimiter {
            peers: FxHashMap::default(),
            global: Bucket::full(GLOBAL_INTERVAL_US, GLOBAL_BURST, 0),
        }
    }
}

impl IcmpErrorLimiter {
    /// Whether an error to `to` may be sent now; takes the tokens when it may.
    pub fn allow(&mut self, to: Ipv4Addr, now_ms: u64) -> bool {
        let now_us = now_ms.saturating_mul(1000);
        self.global.refill(GLOBAL_INTERVAL_US, GLOBAL_BURST, now_us);
        if self.global.credit < GLOBAL_INTERVAL_US {
            return false;
        }
        if !self.peers.contains_key(&to) && self.peers.len() >= MAX_PEERS {
            // Forget peers whose bucket has refilled: they are back to a fresh start anyway.
            self.peers.retain(|_, b| {
                now_ms.saturating_sub(b.last) + b.credit < PEER_INTERVAL_MS * PEER_BURST
            });
            if self.peers.len() >= MAX_PEERS {
                return false;
            }
        }
        let peer = self
            .peers
            .entry(to)
            .or_insert_with(|| Bucket::full(PEER_INTERVAL_MS, PEER_BURST, now_ms));
        peer.refill(PEER_INTERVAL_MS, PEER_BURST, now_ms);
        if peer.credit < PEER_INTERVAL_MS {
            return false;
        }
        peer.credit -= PEER_INTERVAL_MS;
        self.global.credit -= GLOBAL_INTERVAL_US;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);

    #[test]
    fn a_burst_then_one_per_second_per_destination() {
        let mut l = IcmpErrorLimiter::default();
        let allowed = (0..100).filter(|_| l.allow(A, 0)).count();
        assert_eq!(allowed, PEER_BURST as usize);
        assert!(l.allow(B, 0), "another destination has its own bucket");
        assert!(!l.allow(A, 999));
        assert!(l.allow(A, 1000));
        assert!(!l.allow(A, 1500));
        // Ten idle seconds refill only up to the burst.
        let allowed = (0..100).filter(|_| l.allow(A, 11_000)).count();
        assert_eq!(allowed, PEER_BURST as usize);
    }

    #[test]
    fn the_global_bucket_caps_errors_to_many_destinations() {
        let mut l = IcmpErrorLimiter::default();
        let allowed = (0..1000u32)
            .filter(|i| l.allow(Ipv4Addr::from(0x0a00_0000 + i), 0))
            .count();
        assert_eq!(allowed, GLOBAL_BURST as usize);
        // A second later the burst is back, and no more: the rate is spread over time.
        let allowed = (1000..3000u32)
            .filter(|i| l.allow(Ipv4Addr::from(0x0a00_0000 + i), 1000))
            .count();
        assert_eq!(allowed, GLOBAL_BURST as usize);
    }
}
