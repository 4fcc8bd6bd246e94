//! A device's XDP features as the kernel reports them (the generic netlink family "netdev",
//! `NETDEV_CMD_DEV_GET`, kernels from 6.3): whether a driver implements `ndo_xdp_xmit`, the
//! transmit XDP redirects into it use. A device without it drops what the fast path would
//! send there, so such a port must not join the fast path's egress ports.

use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::{TimeVal, TimeValLike};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// `NETDEV_XDP_ACT_NDO_XMIT`: the device implements `ndo_xdp_xmit`.
pub const NDO_XMIT: u64 = 4;
/// `NETDEV_XDP_ACT_NDO_XMIT_SG`: ... for frames of several buffers too.
pub const NDO_XMIT_SG: u64 = 64;

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HEADER: usize = 16;
const GENL_HEADER: usize = 4;
/// The attribute type without its nested / byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// The XDP features of interface `ifindex` (`NETDEV_XDP_ACT_*` bits); `None` where the kernel
/// has no "netdev" family (older than 6.3: nothing to ask).
pub fn of(ifindex: u32) -> io::Result<Option<u64>> {
    let sock = open()?;
    let Some(family) = family_id(&sock, b"netdev\0")? else {
        return Ok(None);
    };
    let reply = request(
        &sock,
        family,
        NETDEV_CMD_DEV_GET,
        &attribute(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes()),
    )?;
    let features = find(&reply, NETDEV_A_DEV_XDP_FEATURES)
        .and_then(|v| v.get(..8))
        .map(|v| u64::from_ne_bytes(v.try_into().expect("8 bytes")));
    Ok(Some(features.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "no xdp-features in the netdev reply",
        )
    })?))
}

fn open() -> io::Result<OwnedFd> {
    let sock = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkGeneric,
    )?;
    bind(sock.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    // A kernel that never answers must not hold a probe thread forever.
    setsockopt(&sock, sockopt::ReceiveTimeout, &TimeVal::seconds(2))?;
    Ok(sock)
}

/// The id of generic netlink family `name` (NUL-terminated); `None` if there is none.
fn family_id(sock: &OwnedFd, name: &[u8]) -> io::Result<Option<u16>> {
    match request(
        sock,
        GENL_ID_CTRL,
        CTRL_CMD_GETFAMILY,
        &attribute(CTRL_ATTR_FAMILY_NAME, name),
    ) {
        Ok(reply) => Ok(find(&reply, CTRL_ATTR_FAMILY_ID)
            .and_then(|v| v.get(..2))
            .map(|v| u16::from_ne_bytes([v[0], v[1]]))),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut a = Vec::with_capacity(len.next_multiple_of(4));
    a.extend_from_slice(&(len as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(payload);
    a.resize(len.next_multiple_of(4), 0);
    a
}

/// Sends one request and returns the attributes of its answer.
fn request(sock: &OwnedFd, family: u16, cmd: u8, attrs: &[u8]) -> io::Result<Vec<u8>> {
    let len = NLMSG_HEADER + GENL_HEADER + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&family.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[cmd, 1, 0, 0]);
    m.extend_from_slice(attrs);
    send(sock.as_raw_fd(), &m, MsgFlags::empty())?;
    let mut buf = vec![0u8; 8192];
    let n = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    answer(&buf[..n])
}

/// The attributes of a reply message, or the error it carries.
fn answer(reply: &[u8]) -> io::Result<Vec<u8>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "a short netlink reply");
    let header = reply.get(..NLMSG_HEADER).ok_or_else(bad)?;
    let len = u32::from_ne_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let kind = u16::from_ne_bytes([header[4], header[5]]);
    let body = reply
        .get(NLMSG_HEADER..len.min(reply.len()))
        .ok_or_else(bad)?;
    if kind == NLMSG_ERROR {
        let code = i32::from_ne_bytes(body.get(..4).ok_or_else(bad)?.try_into().expect("4"));
        return Err(io::Error::from_raw_os_error(-code));
    }
    Ok(body.get(GENL_HEADER..).ok_or_else(bad)?.to_vec())
}

/// The payload of the first attribute of type `kind` in `attrs`.
fn find(mut attrs: &[u8], kind: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let this = u16::from_ne_bytes([attrs[2], attrs[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if this == kind {
            return Some(&attrs[4..len]);
        }
        attrs = attrs.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_found_past_others() {
        let mut attrs = attribute(7, b"abc");
        assert_eq!(attrs.len(), 8, "4 + 3, padded to 8");
        attrs.extend(attribute(NETDEV_A_DEV_XDP_FEATURES, &5u64.to_ne_bytes()));
        assert_eq!(
            find(&attrs, NETDEV_A_DEV_XDP_FEATURES),
            Some(&5u64.to_ne_bytes()[..])
        );
        assert_eq!(find(&attrs, 7), Some(&b"abc"[..]));
        assert_eq!(find(&attrs, 9), None);
        assert_eq!(
            find(&attrs[..6], 9),
            None,
            "a cut attribute is not read past"
        );
    }

    #[test]
    fn an_error_reply_is_its_errno() {
        let mut reply = Vec::new();
        reply.extend_from_slice(&20u32.to_ne_bytes());
        reply.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        reply.extend_from_slice(&[0; 10]);
        reply.extend_from_slice(&(-libc::ENODEV).to_ne_bytes());
        let e = answer(&reply).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
        assert!(answer(&reply[..10]).is_err(), "too short");
    }

    #[test]
    fn the_kernel_answers_for_loopback() {
        // Loopback (ifindex 1, in every namespace) has no XDP driver support at all; read
        // only. On kernels without the family there is nothing to ask.
        match of(1) {
            Ok(Some(features)) => assert_eq!(features & NDO_XMIT, 0, "{features:#x}"),
            Ok(None) => assert!(std::env::var("CI").is_err(), "CI kernels have the family"),
            Err(e) => panic!("netdev family: {e}"),
        }
        assert!(of(u32::MAX).is_err(), "no such interface");
    }
}
