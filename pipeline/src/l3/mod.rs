//! Layer 3: prefixes, the route table and the neighbour table.

mod cidr;
mod neigh;
mod route;

pub use cidr::Ipv4Cidr;
pub use neigh::{Chores, Neighbor, NeighborCache, NeighborTable, Resolve, SharedNeighbors};
pub use route::{NextHop, Route, RouteTable, Segment};
