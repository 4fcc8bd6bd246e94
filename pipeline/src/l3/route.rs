//! Longest-prefix-match routes.

use super::Ipv4Cidr;
use std::net::Ipv4Addr;

/// Which side of the node a next hop is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Segment {
    /// The pod segment (the bridge the pods share).
    Pods,
    /// The uplink to other nodes and the outside.
    Uplink,
    /// Other nodes' pods behind their VTEPs, VXLAN-encapsulated over the uplink; a route's next
    /// hop is the peer's VTEP address.
    Overlay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// The destination is on the segment itself.
    Connected(Segment),
    /// Through a router on the segment.
    Via(Ipv4Addr, Segment),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub prefix: Ipv4Cidr,
    pub next_hop: NextHop,
}

/// Routes kept longest prefix first; the first match wins.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(mut routes: Vec<Route>) -> RouteTable {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len));
        RouteTable { routes }
    }

    /// The segment and the address to resolve for `dst`.
    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<(Segment, Ipv4Addr)> {
        let route = self.routes.iter().find(|r| r.prefix.contains(dst))?;
        Some(match route.next_hop {
            NextHop::Connected(seg) => (seg, dst),
            NextHop::Via(gw, seg) => (seg, gw),
        })
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let table = RouteTable::new(vec![
            Route {
                prefix: "0.0.0.0/0".parse().unwrap(),
                next_hop: NextHop::Via(Ipv4Addr::new(198, 18, 0, 254), Segment::Uplink),
            },
            Route {
                prefix: "10.244.1.0/24".parse().unwrap(),
                next_hop: NextHop::Connected(Segment::Pods),
            },
            Route {
                prefix: "10.244.2.0/24".parse().unwrap(),
                next_hop: NextHop::Via(Ipv4Addr::new(198, 18, 0, 2), Segment::Uplink),
            },
            Route {
                prefix: "198.18.0.0/24".parse().unwrap(),
                next_hop: NextHop::Connected(Segment::Uplink),
            },
        ]);
        assert_eq!(
            table.lookup(Ipv4Addr::new(10, 244, 1, 9)),
            Some((Segment::Pods, Ipv4Addr::new(10, 244, 1, 9)))
        );
        assert_eq!(
            table.lookup(Ipv4Addr::new(10, 244, 2, 5)),
            Some((Segment::Uplink, Ipv4Addr::new(198, 18, 0, 2)))
        );
        assert_eq!(
            table.lookup(Ipv4Addr::new(198, 18, 0, 7)),
            Some((Segment::Uplink, Ipv4Addr::new(198, 18, 0, 7)))
        );
        assert_eq!(
            table.lookup(Ipv4Addr::new(8, 8, 8, 8)),
            Some((Segment::Uplink, Ipv4Addr::new(198, 18, 0, 254)))
        );
        assert_eq!(
            RouteTable::new(vec![]).lookup(Ipv4Addr::new(8, 8, 8, 8)),
            None
        );
    }
}
