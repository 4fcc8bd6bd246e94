//! The TCP state machine, simplified from Linux's nf_conntrack_proto_tcp: enough to give each
//! connection the right timeout.

use super::Direction;
use crate::wire::l4::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    SynSent,
    SynRecv,
    /// First seen mid-stream (no SYN), nothing seen back yet: a connection that outlived the
    /// switch's table, or packets nobody answers. Short-lived and evictable until a reply.
    PickedUp,
    Established,
    /// One side has sent FIN (`orig` says which).
    FinWait {
        orig: bool,
    },
    /// Both sides have sent FIN; waiting for the last ACK.
    LastAck,
    TimeWait,
    Close,
}

impl TcpState {
    /// The state of a flow first seen with these flags. A mid-stream pickup is taken up, as
    /// Linux's `nf_conntrack_tcp_loose` does, but counts as established only once the other
    /// side answers: until then it could hold a table slot (and a NAT port) for five days
    /// for every packet anyone sends without a SYN.
    pub fn initial(flags: u8) -> TcpState {
        if flags & TCP_RST != 0 {
            TcpState::Close
        } else if flags & TCP_SYN != 0 && flags & TCP_ACK == 0 {
            TcpState::SynSent
        } else {
            TcpState::PickedUp
        }
    }

    /// Linux's default timeouts (net.netfilter.nf_conntrack_tcp_timeout_*).
    pub fn timeout_ms(&self) -> u64 {
        match self {
            TcpState::SynSent => 120_000,
            TcpState::SynRecv => 60_000,
            // Linux's timeout for data nobody acknowledges.
            TcpState::PickedUp => 300_000,
            TcpState::Established => 432_000_000,
            TcpState::FinWait { .. } => 120_000,
            TcpState::LastAck => 30_000,
            TcpState::TimeWait => 120_000,
            TcpState::Close => 10_000,
        }
    }

    pub fn established(&self) -> bool {
        !matches!(
            self,
            TcpState::SynSent | TcpState::SynRecv | TcpState::PickedUp | TcpState::Close
        )
    }

    pub fn next(self, dir: Direction, flags: u8) -> TcpState {
        let from_orig = dir == Direction::Original;
        if flags & TCP_RST != 0 {
            return TcpState::Close;
        }
        match self {
            TcpState::SynSent if !from_orig && flags & TCP_SYN != 0 && flags & TCP_ACK != 0 => {
                TcpState::SynRecv
            }
            TcpState::SynRecv if from_orig && flags & TCP_ACK != 0 && flags & TCP_SYN == 0 => {
                TcpState::Established
            }
            TcpState::Established | TcpState::PickedUp if flags & TCP_FIN != 0 => {
                TcpState::FinWait { orig: from_orig }
            }
            TcpState::PickedUp if !from_orig => TcpState::Established,
            TcpState::FinWait { orig } if flags & TCP_FIN != 0 && orig != from_orig => {
                TcpState::LastAck
            }
            TcpState::LastAck if flags & TCP_ACK != 0 && flags & TCP_FIN == 0 => TcpState::TimeWait,
            // A new SYN on a closed or finished connection reuses the tuple.
            TcpState::TimeWait | TcpState::Close
                if from_orig && flags & TCP_SYN != 0 && flags & TCP_ACK == 0 =>
            {
                TcpState::SynSent
            }
            s => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_and_teardown() {
        let s = TcpState::initial(TCP_SYN);
        let s = s.next(Direction::Reply, TCP_SYN | TCP_ACK);
        assert_eq!(s, TcpState::SynRecv);
        let s = s.next(Direction::Original, TCP_ACK);
        assert_eq!(s, TcpState::Established);
        let s = s.next(Direction::Reply, TCP_FIN | TCP_ACK);
        assert_eq!(s, TcpState::FinWait { orig: false });
        // A second FIN from the same side changes nothing.
        assert_eq!(s.next(Direction::Reply, TCP_FIN | TCP_ACK), s);
        let s = s.next(Direction::Original, TCP_FIN | TCP_ACK);
        assert_eq!(s, TcpState::LastAck);
        assert_eq!(s.next(Direction::Reply, TCP_ACK), TcpState::TimeWait);
        assert_eq!(
            TcpState::TimeWait.next(Direction::Original, TCP_SYN),
            TcpState::SynSent
        );
        assert_eq!(
            TcpState::Established.next(Direction::Reply, TCP_RST),
            TcpState::Close
        );
    }

    #[test]
    fn a_mid_stream_pickup_is_established_once_answered() {
        for first in [TCP_ACK, TCP_ACK | TCP_FIN, TCP_SYN | TCP_ACK, 0] {
            let s = TcpState::initial(first);
            assert_eq!(s, TcpState::PickedUp, "{first:#x}");
            assert!(!s.established());
            assert_eq!(s.timeout_ms(), 300_000);
            assert_eq!(s.next(Direction::Original, TCP_ACK), TcpState::PickedUp);
            assert_eq!(s.next(Direction::Reply, TCP_ACK), TcpState::Established);
            assert_eq!(
                s.next(Direction::Original, TCP_FIN | TCP_ACK),
                TcpState::FinWait { orig: true }
            );
            assert_eq!(s.next(Direction::Reply, TCP_RST), TcpState::Close);
        }
    }
}
