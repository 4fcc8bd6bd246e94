//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table in which each backend
//! owns an almost equal share of slots, and which changes little when a backend comes or goes.

use std::net::SocketAddrV4;

/// Table sizes: primes, the smallest at least 100× the backend count is used.
const SIZES: [usize; 6] = [251, 1021, 4093, 16381, 65521, 262139];

#[derive(Debug, Clone)]
pub struct Maglev {
    backends: Vec<SocketAddrV4>,
    table: Vec<u32>,
}

fn hash64(data: &[u8], seed: u64) -> u64 {
    // FNV-1a folded through a SplitMix64 finaliser: stable across runs and platforms.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// SplitMix64's finaliser.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Maglev {
    pub fn new(backends: &[SocketAddrV4]) -> Maglev {
        let mut backends = backends.to_vec();
        // The table must not depend on the order the config lists backends in.
        backends.sort();
        backends.dedup();
        let n = backends.len();
        if n == 0 {
            return Maglev {
                backends,
                table: Vec::new(),
            };
        }
        let m = SIZES
            .iter()
            .copied()
            .find(|&s| s >= 100 * n)
            .unwrap_or(SIZES[SIZES.len() - 1]);
        let perms: Vec<(usize, usize)> = backends
            .iter()
            .map(|b| {
                let name = b.to_string();
                let offset = (hash64(name.as_bytes(), 0x5eed_0001) % m as u64) as usize;
                let skip = (hash64(name.as_bytes(), 0x5eed_0002) % (m as u64 - 1)) as usize + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0usize; n];
        let mut table = vec![u32::MAX; m];
        let mut filled = 0;
        'fill: loop {
            for i in 0..n {
                let (offset, skip) = perms[i];
                let mut c = (offset + next[i] * skip) % m;
                while table[c] != u32::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                table[c] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Maglev { backends, table }
    }

    pub fn backends(&self) -> &[SocketAddrV4] {
        &self.backends
    }

    pub fn contains(&self, backend: SocketAddrV4) -> bool {
        self.backends.binary_search(&backend).is_ok()
    }

    /// The backend for a flow hash.
    #[inline]
    pub fn pick(&self, flow_hash: u64) -> Option<SocketAddrV4> {
        if self.table.is_empty() {
            return None;
        }
        let slot = self.table[(flow_hash % self.table.len() as u64) as usize];
        Some(self.backends[slot as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn backends(n: u8) -> Vec<SocketAddrV4> {
        (1..=n)
            .map(|i| SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, i), 8080))
            .collect()
    }

    fn shares(m: &Maglev) -> Vec<usize> {
        let mut count = vec![0; m.backends().len()];
        for &slot in &m.table {
            count[slot as usize] += 1;
        }
        count
    }

    #[test]
    fn slots_are_spread_evenly() {
        for n in [1u8, 3, 7, 50] {
            let m = Maglev::new(&backends(n));
            let s = shares(&m);
            let (min, max) = (*s.iter().min().unwrap(), *s.iter().max().unwrap());
            assert!(max - min <= 1, "{n} backends: shares {min}..{max}");
        }
        assert_eq!(Maglev::new(&[]).pick(1), None);
    }

    #[test]
    fn removing_a_backend_moves_few_other_flows() {
        let before = Maglev::new(&backends(10));
        let mut fewer = backends(10);
        let gone = fewer.remove(3);
        let after = Maglev::new(&fewer);
        let mut moved = 0;
        for h in 0..10_000u64 {
            let flow = mix(h);
            let (a, b) = (before.pick(flow).unwrap(), after.pick(flow).unwrap());
            if a != gone && a != b {
                moved += 1;
            }
            assert_ne!(b, gone);
        }
        assert!(
            moved < 1_000,
            "{moved} of ~9000 flows to remaining backends moved"
        );
    }

    #[test]
    fn order_of_backends_does_not_matter() {
        let mut reversed = backends(5);
        reversed.reverse();
        assert_eq!(
            Maglev::new(&backends(5)).table,
            Maglev::new(&reversed).table
        );
    }
}
