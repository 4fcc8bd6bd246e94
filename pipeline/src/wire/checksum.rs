//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

/// One's-complement sum of 16-bit words, partly folded (at most 0xffff, so sums of a few such
/// values never overflow). Eight bytes at a time: a big-endian 32-bit word is its two 16-bit
/// halves modulo 0xffff, as 2^16 ≡ 1.
pub fn sum(data: &[u8]) -> u32 {
    let mut acc = 0u64;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_be_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        acc += (w >> 32) + (w & 0xffff_ffff);
    }
    let mut pairs = words.remainder().chunks_exact(2);
    for c in &mut pairs {
        acc += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = pairs.remainder() {
        acc += (*last as u64) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u32
}

/// Folds a sum to 16 bits.
pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field value for `data` (with its checksum field zeroed).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// The IPv4 pseudo-header sum for TCP/UDP.
pub fn pseudo_header(src: [u8; 4], dst: [u8; 4], protocol: u8, length: u16) -> u32 {
    sum(&src) + sum(&dst) + protocol as u32 + length as u32
}

/// RFC 1624 eqn. 3: the new checksum after a 16-bit word changes from `old` to `new`.
#[inline]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    // HC' = ~(~HC + ~m + m')
    !fold((!check) as u32 + (!old) as u32 + new as u32)
}

/// As `update16`, for a 32-bit field (an address).
#[inline]
pub fn update32(check: u16, old: u32, new: u32) -> u16 {
    let c = update16(check, (old >> 16) as u16, (new >> 16) as u16);
    update16(c, old as u16, new as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain RFC 1071 loop, to check the wide one against.
    fn sum_by_words(data: &[u8]) -> u16 {
        let mut acc = 0u64;
        for c in data.chunks(2) {
            acc += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64;
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn the_wide_sum_equals_the_word_by_word_sum() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in (0..70).chain([1499, 1500, 8999, 9000]) {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            assert_eq!(fold(sum(&data)), sum_by_words(&data), "{len} bytes");
        }
        assert_eq!(sum(&[0xff; 9000]), 0xffff);
        assert_eq!(sum(&[]), 0);
    }

    #[test]
    fn rfc1071_example() {
        // The example words from RFC 1071 section 3.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let mut data = [
            0x45u8, 0x00, 0x00, 0x54, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0, 0, 10, 0, 0, 1, 10, 0,
            0, 2,
        ];
        let c = checksum(&data);
        data[10..12].copy_from_slice(&c.to_be_bytes());
        // Change the destination address and the TTL.
        let old_dst = u32::from_be_bytes([10, 0, 0, 2]);
        let new_dst = u32::from_be_bytes([198, 18, 7, 9]);
        let c2 = update32(c, old_dst, new_dst);
        let c3 = update16(
            c2,
            u16::from_be_bytes([0x40, 0x01]),
            u16::from_be_bytes([0x3f, 0x01]),
        );
        data[16..20].copy_from_slice(&new_dst.to_be_bytes());
        data[8] = 0x3f;
        data[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(c3, checksum(&data));
    }
}
