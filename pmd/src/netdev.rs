//! What the kernel says about a network interface: index, MTU, queue count.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GCHANNELS: u32 = 0x3c;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;
const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETH_SS_STATS: u32 = 1;
const ETH_GSTRING_LEN: usize = 32;
/// Room for the driver statistics we read: the kernel writes as many as the driver counts
/// during the call, whatever length we give; a veth has about ten per queue, so this is far
/// more than one with the few thousand queues it could have. A driver that counts more than
/// half of it is refused before the kernel writes anything.
const MAX_STATS: usize = 65_536;

#[repr(C)]
struct IfreqInt {
    name: [libc::c_char; libc::IFNAMSIZ],
    value: libc::c_int,
    _pad: [u8; 20],
}

#[repr(C)]
struct IfreqPtr {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

fn ifname_array(name: &str) -> io::Result<[libc::c_char; libc::IFNAMSIZ]> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', '\0', ' ']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid interface name"),
        ));
    }
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    for (o, b) in out.iter_mut().zip(name.bytes()) {
        *o = b as libc::c_char;
    }
    Ok(out)
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before being owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The interface index of `name` in the current network namespace. `ErrorKind::NotFound` only
/// when there is no such interface: any other error (out of descriptors, say) says nothing
/// of it, and must not read as an interface gone.
pub fn ifindex(name: &str) -> io::Result<u32> {
    ifreq_int(name, libc::SIOCGIFINDEX).map_err(|e| match e.raw_os_error() {
        Some(libc::ENODEV) => io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface named {name:?} in this network namespace"),
        ),
        _ => e,
    })
}

/// The interface's MTU.
pub fn mtu(name: &str) -> io::Result<u32> {
    ifreq_int(name, libc::SIOCGIFMTU)
}

/// The int a `SIOCGIF*` request answers for `name` (its index, its MTU).
fn ifreq_int(name: &str, request: libc::c_ulong) -> io::Result<u32> {
    let sock = control_socket()?;
    let mut req = IfreqInt {
        name: ifname_array(name)?,
        value: 0,
        _pad: [0; 20],
    };
    // SAFETY: the SIOCGIF* requests passed here read the name and write one int into the
    // ifreq we own.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), request, &mut req as *mut IfreqInt) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(req.value as u32)
}

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// One SIOCETHTOOL request on `name`: `command` is the ethtool struct for the command its
/// first field names (`ethtool_value`, `ethtool_channels`), read and written by the kernel.
fn ethtool<T>(name: &str, command: &mut T) -> io::Result<()> {
    ethtool_ptr(name, command as *mut T as *mut libc::c_void)
}

/// SIOCETHTOOL with `data` pointing to the command and room for its answer.
fn ethtool_ptr(name: &str, data: *mut libc::c_void) -> io::Result<()> {
    let sock = control_socket()?;
    let mut req = IfreqPtr {
        name: ifname_array(name)?,
        data,
        _pad: [0; 16],
    };
    // SAFETY: SIOCETHTOOL reads the command from, and writes its answer into, the memory
    // `req.data` points to; every caller passes memory it owns for the call, of the layout
    // the command's `cmd` names and large enough for the answer (see each caller).
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req as *mut IfreqPtr) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn ethtool_value(name: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let mut value = EthtoolValue { cmd, data };
    ethtool(name, &mut value)?;
    Ok(value.data)
}

#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// The interface's driver ("veth", "mlx5_core", ...).
pub fn driver(name: &str) -> io::Result<String> {
    let info = drvinfo(name)?;
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

fn drvinfo(name: &str) -> io::Result<EthtoolDrvinfo> {
    let mut info = EthtoolDrvinfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved2: [0; 12],
        n_priv_flags: 0,
        n_stats: 0,
        testinfo_len: 0,
        eedump_len: 0,
        regdump_len: 0,
    };
    ethtool(name, &mut info)?;
    Ok(info)
}

#[repr(C)]
struct IfreqHwaddr {
    name: [libc::c_char; libc::IFNAMSIZ],
    family: libc::c_ushort,
    data: [u8; 14],
    _pad: [u8; 8],
}

/// The interface's MAC address.
pub fn mac(name: &str) -> io::Result<[u8; 6]> {
    let sock = control_socket()?;
    let mut req = IfreqHwaddr {
        name: ifname_array(name)?,
        family: 0,
        data: [0; 14],
        _pad: [0; 8],
    };
    // SAFETY: SIOCGIFHWADDR reads the name and writes a sockaddr into the ifreq we own.
    let ret = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCGIFHWADDR,
            &mut req as *mut IfreqHwaddr,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&req.data[..6]);
    Ok(mac)
}

/// Two u32 fields laid out as the kernel's struct has them, in one u64.
fn header(first: u32, second: u32) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&first.to_ne_bytes());
    bytes[4..].copy_from_slice(&second.to_ne_bytes());
    u64::from_ne_bytes(bytes)
}

/// The driver's statistics (`ethtool -S`), by name.
pub fn driver_stats(name: &str) -> io::Result<Vec<(String, u64)>> {
    // `struct ethtool_gstrings`: cmd, string_set, len, then the strings.
    let mut strings = vec![0u32; 3 + MAX_STATS * ETH_GSTRING_LEN / 4];
    strings[0] = ETHTOOL_GSTRINGS;
    strings[1] = ETH_SS_STATS;
    strings[2] = MAX_STATS as u32;
    // `struct ethtool_stats`: cmd, n_stats (two u32 in the first u64), then the values.
    let mut values = vec![0u64; 1 + MAX_STATS];
    values[0] = header(ETHTOOL_GSTATS, 0);
    // The two buffers hold MAX_STATS entries each; the count must fit, checked before the
    // kernel writes them (it could only grow between the two calls by a queue count change).
    let mut info = drvinfo(name)?;
    if info.n_stats as usize > MAX_STATS / 2 {
        return Err(io::Error::other(format!(
            "{name}: {} driver statistics, more than we read",
            info.n_stats
        )));
    }
    strings[2] = info.n_stats;
    ethtool_ptr(name, strings.as_mut_ptr() as *mut libc::c_void)?;
    ethtool_ptr(name, values.as_mut_ptr() as *mut libc::c_void)?;
    // What the kernel wrote: the fewer of the two counts, within what both buffers hold.
    let n_values = u32::from_ne_bytes(values[0].to_ne_bytes()[4..8].try_into().unwrap_or([0; 4]));
    info.n_stats = strings[2].min(n_values).min(MAX_STATS as u32);
    // Only what was written is read: the buffers are sized for any count (the kernel writes
    // as many as it has at the call), nearly all of them untouched pages.
    let words = info.n_stats as usize * ETH_GSTRING_LEN / 4;
    let bytes: Vec<u8> = strings[3..3 + words]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect();
    Ok((0..info.n_stats as usize)
        .map(|i| {
            let raw = &bytes[i * ETH_GSTRING_LEN..(i + 1) * ETH_GSTRING_LEN];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(ETH_GSTRING_LEN);
            (
                String::from_utf8_lossy(&raw[..end]).into_owned(),
                values[1 + i],
            )
        })
        .collect())
}

/// Frames this veth end's XDP transmit (`ndo_xdp_xmit`, all queues) handed to its peer, or
/// found its peer's ring full for: all it was given, except what it drops uncounted because
/// the peer has no NAPI.
pub fn veth_xdp_taken(name: &str) -> io::Result<u64> {
    Ok(driver_stats(name)?
        .iter()
        .filter(|(n, _)| {
            n.starts_with("tx_queue_")
                && (n.ends_with("_xdp_xmit") || n.ends_with("_xdp_xmit_errors"))
        })
        .map(|(_, v)| v)
        .sum())
}

/// Turns GRO on or off on `name` (in the current network namespace). On a veth end it also
/// gives that end NAPI, which frames an XDP program redirects into its peer need.
pub fn set_gro(name: &str, on: bool) -> io::Result<()> {
    ethtool_value(name, ETHTOOL_SGRO, on as u32).map(|_| ())
}

pub fn gro(name: &str) -> io::Result<bool> {
    ethtool_value(name, ETHTOOL_GGRO, 0).map(|v| v != 0)
}

/// How many receive queues the interface has in use (1 where the driver does not say).
pub fn rx_queues(name: &str) -> io::Result<u32> {
    let mut channels = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    if let Err(err) = ethtool(name, &mut channels) {
        return match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) => Ok(1),
            _ => Err(err),
        };
    }
    let veth = driver(name).is_ok_and(|d| d == "veth");
    Ok(queues_of(&channels, veth))
}

/// Receive queues from ethtool's channels: the combined ones and those only for receiving
/// (`rx` counts the latter, beside the combined ones). A veth's `rx` is all its queues, and
/// before Linux 5.14 it also reported them as combined.
fn queues_of(channels: &EthtoolChannels, veth: bool) -> u32 {
    match veth {
        true => channels.rx_count,
        false => channels.rx_count + channels.combined_count,
    }
    .max(1)
}

/// Lifts RLIMIT_MEMLOCK for UMEM registration; best effort, as root registers anyway.
pub fn raise_memlock_limit() -> bool {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) == 0 }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock XDP programs read with `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The CPU's time-stamp counter, for cycle accounting.
#[inline]
pub fn cycles() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC has no preconditions on x86-64.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        use std::sync::OnceLock;
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos() as u64
    }
}

/// Waits until one of `fds` is readable or `timeout_ms` passes; EINTR counts as a wake-up.
pub fn poll_fds(fds: &mut [libc::pollfd], timeout_ms: i32) -> usize {
    // SAFETY: `fds` is a valid, exclusively borrowed slice of pollfd for the call's duration.
    let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    ret.max(0) as usize
}

/// Whether the other end of connected socket `fd` closed (not only its writing half: a
/// client that half-closes still waits for its answer).
pub fn peer_hung_up(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    let mut fds = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events: 0,
        revents: 0,
    }];
    poll_fds(&mut fds, 0) > 0 && fds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_queues_are_the_combined_channels_and_the_receive_only_ones() {
        let channels = |rx_count, combined_count| EthtoolChannels {
            rx_count,
            combined_count,
            ..Default::default()
        };
        assert_eq!(queues_of(&channels(4, 4), false), 8);
        assert_eq!(queues_of(&channels(0, 8), false), 8);
        assert_eq!(queues_of(&channels(0, 0), false), 1);
        assert_eq!(queues_of(&channels(1, 0), true), 1, "veth");
        assert_eq!(queues_of(&channels(2, 2), true), 2, "veth before 5.14");
    }

    #[test]
    fn a_peer_that_closed_is_told_from_one_that_only_stopped_writing() {
        use std::os::fd::AsFd;
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!peer_hung_up(a.as_fd()));
        b.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(!peer_hung_up(a.as_fd()), "half-closed: still waiting");
        drop(b);
        assert!(peer_hung_up(a.as_fd()));
    }

    #[test]
    fn loopback_is_known_and_missing_names_are_named() {
        assert!(ifindex("lo").unwrap() > 0);
        assert!(mtu("lo").unwrap() > 0);
        assert_eq!(ifindex("lo").unwrap(), 1, "loopback is always index 1");
        let err = ifindex("nope-not-here").unwrap_err();
        assert!(err.to_string().contains("\"nope-not-here\""), "{err}");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(ifindex("").is_err());
        // Not a name an interface can have: an error, but not "gone".
        let long = ifindex("a-name-that-is-far-too-long").unwrap_err();
        assert_ne!(long.kind(), io::ErrorKind::NotFound);
    }
}
