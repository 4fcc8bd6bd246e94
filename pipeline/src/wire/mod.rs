//! Typed views over frame bytes.
//!
//! A view is created with `new_checked` from untrusted bytes; after that check no accessor
//! panics. Setters rewrite fields in place and keep checksums valid.

pub mod arp;
pub mod checksum;
mod ethernet;
pub mod ipv4;
pub mod l4;
pub mod vxlan;

pub use ethernet::{EtherType, EthernetFrame, MacAddr, ETHERNET_HEADER_LEN};

/// Why bytes could not be viewed as a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the header needs.
    Truncated { needed: usize, got: usize },
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Truncated { needed, got } => {
                write!(f, "truncated: {got} bytes, header needs {needed}")
            }
        }
    }
}

impl std::error::Error for WireError {}
