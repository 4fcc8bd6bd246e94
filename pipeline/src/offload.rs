//! Checksums left to offload. A pod with transmit checksum offload on (the kernel's default on
//! veth) hands over TCP and UDP segments whose checksum is only the pseudo-header sum: the kernel
//! would finish it in "hardware", but a frame that crosses an AF_XDP switch never reaches that
//! point. This stage finishes such checksums first, so every later stage (NAT's incremental
//! updates included) and the receiver see a complete one.

use crate::wire::l4::{self, PartialChecksum};
use crate::wire::{EtherType, EthernetFrame, ETHERNET_HEADER_LEN};

/// Finishes the checksum of an IPv4 TCP/UDP frame left to offload; returns whether it did.
#[inline]
pub fn complete(frame: &mut [u8]) -> bool {
    let ipv4 = EthernetFrame::new_checked(&*frame).is_ok_and(|e| e.ethertype() == EtherType::Ipv4);
    ipv4 && l4::complete_partial_checksum(&mut frame[ETHERNET_HEADER_LEN..])
        == PartialChecksum::Completed
}
