//! Writes captured frames as a classic pcap file (what `tcpdump -r` reads).

use pmd::Captured;
use std::io::{self, Write};
use std::time::UNIX_EPOCH;

const MAGIC: u32 = 0xa1b2_c3d4;
const SNAPLEN: u32 = 65_535;
const LINKTYPE_ETHERNET: u32 = 1;

pub fn write_header(out: &mut impl Write) -> io::Result<()> {
    out.write_all(&MAGIC.to_le_bytes())?;
    out.write_all(&2u16.to_le_bytes())?;
    out.write_all(&4u16.to_le_bytes())?;
    out.write_all(&0i32.to_le_bytes())?;
    out.write_all(&0u32.to_le_bytes())?;
    out.write_all(&SNAPLEN.to_le_bytes())?;
    out.write_all(&LINKTYPE_ETHERNET.to_le_bytes())
}

pub fn write_frame(out: &mut impl Write, frame: &Captured) -> io::Result<()> {
    let t = frame.time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let len = frame.data.len() as u32;
    out.write_all(&(t.as_secs() as u32).to_le_bytes())?;
    out.write_all(&t.subsec_micros().to_le_bytes())?;
    out.write_all(&len.min(SNAPLEN).to_le_bytes())?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&frame.data[..frame.data.len().min(SNAPLEN as usize)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_the_classic_header_then_records() {
        let mut out = Vec::new();
        write_header(&mut out).unwrap();
        let frame = Captured {
            port: 0,
            time: UNIX_EPOCH + std::time::Duration::from_micros(5_000_007),
            data: vec![0xaa; 60],
        };
        write_frame(&mut out, &frame).unwrap();
        assert_eq!(out.len(), 24 + 16 + 60);
        assert_eq!(&out[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(u32::from_le_bytes(out[20..24].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(out[24..28].try_into().unwrap()), 5);
        assert_eq!(u32::from_le_bytes(out[28..32].try_into().unwrap()), 7);
        assert_eq!(u32::from_le_bytes(out[32..36].try_into().unwrap()), 60);
    }
}
