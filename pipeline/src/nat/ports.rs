//! Choosing the source port (for ICMP echo, the identifier) of a translated flow so that its
//! reply tuple is unique, and inserting the flow with it.
//!
//! The reply tuple is reserved atomically by `Conntrack::insert`, so two workers never pick
//! the same port. Protocols whose ports we do not rewrite get one try: their reply tuple is
//! what it is.

use crate::conntrack::{Conntrack, FlowState, InsertError, Tuple};
use crate::wire::ipv4::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

/// Random probes before falling back to a full scan of the port range.
const RANDOM_PROBES: u64 = 64;

/// Why a flow could not be inserted with a unique reply tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// Every port of the range is taken towards this destination.
    Exhausted,
    /// The protocol has no port we can change, and its reply tuple is taken.
    Clash,
    /// The table is full.
    Full,
    /// Another worker tracked this very flow first.
    OrigTaken,
}

/// Whether NAT may rewrite this protocol's ports (ICMP: the echo identifier).
pub fn ports_translatable(proto: u8) -> bool {
    matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_ICMP)
}

/// `reply` with its destination port (ICMP: the identifier, which replies carry as both
/// ports) set to `port`.
fn with_port(reply: &Tuple, port: u16) -> Tuple {
    let mut r = *reply;
    r.dport = port;
    if r.proto == PROTO_ICMP {
        r.sport = port;
    }
    r
}

fn insert(
    ct: &Conntrack,
    orig: &Tuple,
    reply: Tuple,
    state: FlowState,
    now_ms: u64,
) -> Result<Tuple, InsertError> {
    ct.insert(*orig, reply, state, now_ms).map(|f| f.reply)
}

fn fatal(e: InsertError) -> AllocError {
    match e {
        InsertError::Full => AllocError::Full,
        InsertError::OrigTaken => AllocError::OrigTaken,
        InsertError::ReplyTaken => AllocError::Clash,
    }
}

/// Inserts `orig` with `reply`, changing the reply's destination port within `range` (both
/// ends inclusive) if needed: the flow's own port first when it is in the range, then
/// pseudo-random probes seeded by `hash`, then a scan. Returns the reply tuple inserted.
pub fn insert_with_unique_reply(
    ct: &Conntrack,
    orig: &Tuple,
    reply: Tuple,
    state: FlowState,
    range: (u16, u16),
    hash: u64,
    now_ms: u64,
) -> Result<Tuple, AllocError> {
    if !ports_translatable(orig.proto) {
        return insert(ct, orig, reply, state, now_ms).map_err(fatal);
    }
    let (first, last) = range;
    let span = (last.saturating_sub(first)) as u64 + 1;
    let try_port = |port: u16| -> Option<Result<Tuple, AllocError>> {
        match insert(ct, orig, with_port(&reply, port), state, now_ms) {
            Ok(r) => Some(Ok(r)),
            Err(InsertError::ReplyTaken) => None,
            Err(e) => Some(Err(fatal(e))),
        }
    };
    if (first..=last).contains(&reply.dport) {
        if let Some(r) = try_port(reply.dport) {
            return r;
        }
    }
    for probe in 0..RANDOM_PROBES {
        let port = first + (super::maglev_mix(hash.wrapping_add(probe)) % span) as u16;
        if let Some(r) = try_port(port) {
            return r;
        }
    }
    let start = hash % span;
    for i in 0..span {
        let port = first + ((start + i) % span) as u16;
        if ct.reply_free(&with_port(&reply, port)) {
            if let Some(r) = try_port(port) {
                return r;
            }
        }
    }
    Err(AllocError::Exhausted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const EXT: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);

    fn masq(orig: &Tuple) -> Tuple {
        Tuple {
            src: orig.dst,
            dst: NODE,
            sport: orig.dport,
            dport: orig.sport,
            proto: orig.proto,
            zone: 0,
        }
    }

    #[test]
    fn an_icmp_id_outside_the_range_is_remapped_in_both_reply_ports() {
        let ct = Conntrack::new(1024);
        let orig = Tuple {
            src: POD,
            dst: EXT,
            sport: 7,
            dport: 7,
            proto: PROTO_ICMP,
            zone: 0,
        };
        let reply = insert_with_unique_reply(
            &ct,
            &orig,
            masq(&orig),
            FlowState::Icmp,
            (1024, 65535),
            99,
            0,
        )
        .unwrap();
        assert!(reply.dport >= 1024);
        assert_eq!(
            reply.sport, reply.dport,
            "echo replies carry the id as both ports"
        );
        // The reply as it will arrive (id as both ports) finds the flow.
        assert!(ct.track(&reply, 0, 1).is_some());
    }

    #[test]
    fn the_range_runs_out_and_says_so() {
        let ct = Conntrack::new(1024);
        for sport in 0..4u16 {
            let orig = Tuple {
                src: POD,
                dst: EXT,
                sport: 40000 + sport,
                dport: 53,
                proto: PROTO_UDP,
                zone: 0,
            };
            let r = insert_with_unique_reply(
                &ct,
                &orig,
                masq(&orig),
                FlowState::Udp { replied: false },
                (2000, 2002),
                sport as u64,
                0,
            );
            if sport < 3 {
                assert!((2000..=2002).contains(&r.unwrap().dport));
            } else {
                assert_eq!(r, Err(AllocError::Exhausted));
            }
        }
    }

    #[test]
    fn protocols_without_ports_clash_instead_of_remapping() {
        let ct = Conntrack::new(1024);
        let gre = |src| Tuple {
            src,
            dst: EXT,
            sport: 0,
            dport: 0,
            proto: 47,
            zone: 0,
        };
        let a = gre(POD);
        let b = gre(Ipv4Addr::new(10, 244, 1, 3));
        assert!(
            insert_with_unique_reply(&ct, &a, masq(&a), FlowState::Generic, (1, 9), 0, 0).is_ok()
        );
        assert_eq!(
            insert_with_unique_reply(&ct, &b, masq(&b), FlowState::Generic, (1, 9), 0, 0),
            Err(AllocError::Clash)
        );
    }
}
