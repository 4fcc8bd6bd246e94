//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

/// One's-complement sum of 16-bit words, not yet folded.
pub fn sum(data: &[u8]) -> u32 {
    let mut acc = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u32) << 8;
    }
    acc
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
