//! Links, addresses and routes over rtnetlink, in this namespace or in a pod's.
//!
//! A netlink socket belongs to the namespace it was opened in, so a pod's socket is opened by a
//! short-lived thread that has entered the pod's namespace; the socket then serves this thread.
//! The plugin's own threads never change namespace.

use crate::error::{CniError, Result};
use crate::result::Ipv4Net;
use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use nix::sched::CloneFlags;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;
use tokio::runtime::Runtime;

const ENODEV: i32 = nix::errno::Errno::ENODEV as i32;
const EEXIST: i32 = nix::errno::Errno::EEXIST as i32;
const RT_TABLE_MAIN: u32 = 254;

/// A netlink connection to one namespace.
pub struct Netlink {
    rt: Runtime,
    handle: Handle,
}

/// A link as the plugin looks at it.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_IFALIAS`: the network a host-side veth belongs to.
    pub alias: Option<String>,
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
    pub veth: bool,
}

/// A route of the main table.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub dst: Ipv4Net,
    pub gw: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

fn nl_err(doing: &str, e: rtnetlink::Error) -> CniError {
    CniError::internal(format!("{doing}: {e}"))
}

fn errno(e: &rtnetlink::Error) -> i32 {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.raw_code().abs(),
        _ => 0,
    }
}

fn runtime() -> Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::internal(format!("starting the netlink runtime: {e}")))
}

/// Opens a network namespace file (`CNI_NETNS`).
pub fn open_netns(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

impl Netlink {
    /// This process's namespace (the node's, where the switch runs).
    pub fn here() -> Result<Netlink> {
        let rt = runtime()?;
        let (conn, handle, _) = {
            let _guard = rt.enter();
            rtnetlink::new_connection()
                .map_err(|e| CniError::internal(format!("opening netlink: {e}")))?
        };
        rt.spawn(conn);
        Ok(Netlink { rt, handle })
    }

    /// The namespace `netns` (an open namespace file).
    pub fn inside(netns: &File) -> Result<Netlink> {
        let rt = runtime()?;
        let rt_handle = rt.handle().clone();
        let opened = std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(netns, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("entering the pod's network namespace: {e}"))?;
                let _guard = rt_handle.enter();
                rtnetlink::new_connection()
                    .map_err(|e| format!("opening netlink in the pod's namespace: {e}"))
            })
            .join()
        });
        let (conn, handle, _) = match opened {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(CniError::internal(e)),
            Err(_) => return Err(CniError::internal("the namespace thread failed")),
        };
        rt.spawn(conn);
        Ok(Netlink { rt, handle })
    }

    /// A veth pair: `host` here, `peer` created straight inside `netns` with `peer_mac`; both
    /// with `mtu`. The pod's name never exists here, so it cannot clash with the node's.
    pub fn add_veth(
        &self,
        host: &str,
        peer: &str,
        mtu: u32,
        peer_mac: [u8; 6],
        netns: &File,
    ) -> Result<()> {
        let peer_msg = LinkUnspec::new_with_name(peer)
            .mtu(mtu)
            .address(peer_mac.to_vec())
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(host, peer)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.rt
            .block_on(self.handle.link().add(msg).execute())
            .map_err(|e| {
                if errno(&e) == EEXIST {
                    CniError::internal(format!(
                        "creating veth {host} / {peer}: an interface of that name exists already (on the node or in the pod)"
                    ))
                } else {
                    nl_err(&format!("creating veth {host} / {peer}"), e)
                }
            })
    }

    /// Sets `name` up, with `alias` as its alias where given (`ip link` shows it; set on a
    /// link that exists: the kernel does not take an alias when it creates one).
    pub fn set_up(&self, name: &str, alias: Option<&str>) -> Result<()> {
        let mut msg = LinkUnspec::new_with_name(name).up();
        if let Some(alias) = alias {
            msg = msg.append_extra_attribute(LinkAttribute::IfAlias(alias.to_string()));
        }
        self.rt
            .block_on(self.handle.link().set(msg.build()).execute())
            .map_err(|e| nl_err(&format!("setting {name} up"), e))
    }

    /// Deletes a link by name; `Ok(false)` when there is none.
    pub fn del_link(&self, name: &str) -> Result<bool> {
        let msg = LinkUnspec::new_with_name(name).build();
        match self
            .rt
            .block_on(self.handle.link().del_with_message(msg).execute())
        {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == ENODEV => Ok(false),
            Err(e) => Err(nl_err(&format!("deleting {name}"), e)),
        }
    }

    /// The link named `name`, if there is one.
    pub fn link(&self, name: &str) -> Result<Option<Link>> {
        let found = self.rt.block_on(async {
            self.handle
                .link()
                .get()
                .match_name(name.to_string())
                .execute()
                .try_next()
                .await
        });
        match found {
            Ok(Some(m)) => Ok(Some(link_of(&m))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == ENODEV => Ok(None),
            Err(e) => Err(nl_err(&format!("looking up {name}"), e)),
        }
    }

    /// Every link (for GC).
    pub fn links(&self) -> Result<Vec<Link>> {
        self.rt
            .block_on(async {
                self.handle
                    .link()
                    .get()
                    .execute()
                    .try_collect::<Vec<_>>()
                    .await
            })
            .map(|links| links.iter().map(link_of).collect())
            .map_err(|e| nl_err("listing links", e))
    }

    pub fn add_addr(&self, index: u32, net: Ipv4Net) -> Result<()> {
        self.rt
            .block_on(
                self.handle
                    .address()
                    .add(index, IpAddr::V4(net.addr), net.prefix)
                    .execute(),
            )
            .map_err(|e| nl_err(&format!("adding address {net}"), e))
    }

    /// The IPv4 addresses on link `index`.
    pub fn addrs(&self, index: u32) -> Result<Vec<Ipv4Net>> {
        let msgs = self
            .rt
            .block_on(async {
                self.handle
                    .address()
                    .get()
                    .set_link_index_filter(index)
                    .execute()
                    .try_collect::<Vec<_>>()
                    .await
            })
            .map_err(|e| nl_err("listing addresses", e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Some(Ipv4Net {
                        addr: *ip,
                        prefix: m.header.prefix_len,
                    }),
                    _ => None,
                })
            })
            .collect())
    }

    /// A route to `dst` via `gw` (none: on-link) out of link `oif`.
    pub fn add_route(&self, dst: Ipv4Net, gw: Option<Ipv4Addr>, oif: u32) -> Result<()> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix)
            .output_interface(oif);
        if let Some(gw) = gw {
            b = b.gateway(gw);
        }
        self.rt
            .block_on(self.handle.route().add(b.build()).execute())
            .map_err(|e| {
                let via = gw.map(|g| format!(" via {g}")).unwrap_or_default();
                nl_err(&format!("adding route {dst}{via}"), e)
            })
    }

    /// The main table's IPv4 routes.
    pub fn routes(&self) -> Result<Vec<Route>> {
        let msgs = self
            .rt
            .block_on(async {
                self.handle
                    .route()
                    .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                    .execute()
                    .try_collect::<Vec<_>>()
                    .await
            })
            .map_err(|e| nl_err("listing routes", e))?;
        Ok(msgs.iter().filter_map(route_of).collect())
    }
}

fn link_of(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        alias: None,
        mac: String::new(),
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        veth: false,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::IfAlias(alias) => link.alias = Some(alias.clone()),
            LinkAttribute::Address(mac) => link.mac = format_mac(mac),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::LinkInfo(infos) => {
                link.veth = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            _ => {}
        }
    }
    link
}

fn route_of(m: &RouteMessage) -> Option<Route> {
    let mut table = u32::from(m.header.table);
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gw = None;
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    (table == RT_TABLE_MAIN).then_some(Route {
        dst: Ipv4Net {
            addr: dst,
            prefix: m.header.destination_prefix_length,
        },
        gw,
        oif,
    })
}

pub fn format_mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A random, locally administered unicast MAC for a pod.
pub fn random_mac() -> Result<[u8; 6]> {
    let mut b = [0u8; 6];
    std::io::Read::read_exact(
        &mut File::open("/dev/urandom")
            .map_err(|e| CniError::internal(format!("/dev/urandom: {e}")))?,
        &mut b,
    )
    .map_err(|e| CniError::internal(format!("/dev/urandom: {e}")))?;
    b[0] = (b[0] & 0xfe) | 0x02;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(format_mac(&[2, 0, 0xab, 0, 0, 1]), "02:00:ab:00:00:01");
        for _ in 0..32 {
            let m = random_mac().unwrap();
            assert_eq!(m[0] & 1, 0, "unicast");
            assert_eq!(m[0] & 2, 2, "locally administered");
        }
    }
}
