//! The XDP fast path's kernel side (issue 10): the maps the workers fill and the per-port
//! program that reads them, built from `bpf/fastpath.c` (bridge) or `bpf/fastpath_tuple.c`
//! (gateway) by `build.rs` and loaded by our own ELF reader (no libbpf, no BTF).
//!
//! The bridge's program looks up (ingress ifindex, destination MAC, source MAC) in its front
//! array, then in `l2_flows` (`fastpath_front`);
//! the gateway's looks up the same plus protocol, addresses and ports in `tuple_flows` and
//! rewrites the frame as the entry says. A hit is counted, stamped and redirected through the
//! `ports` devmap; a miss goes to the port's XSKMAP exactly as the plain redirect program does.
//! Only workers write the flow maps.

use crate::bpf::{
    bpf, create_map, load_xdp_flags, possible_cpu_count, update, Insn, MapBatchAttr, MapElemAttr,
    RedirectProgram, XskMap, BPF_F_XDP_HAS_FRAGS, BPF_MAP_DELETE_ELEM, BPF_MAP_LOOKUP_BATCH,
    BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_PSEUDO_MAP_FD,
};
use crate::fastpath_front::{front_slot, L2Slot, Place, Places, FRONT_SLOTS};
use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};
use pipeline::wire::checksum::fold;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

#[cfg(fastpath_object)]
static L2_OBJECT: Option<&[u8]> = Some(include_bytes!(concat!(env!("OUT_DIR"), "/fastpath.o")));
#[cfg(fastpath_object)]
static TUPLE_OBJECT: Option<&[u8]> = Some(include_bytes!(concat!(
    env!("OUT_DIR"),
    "/fastpath_tuple.o"
)));
#[cfg(not(fastpath_object))]
static L2_OBJECT: Option<&[u8]> = None;
#[cfg(not(fastpath_object))]
static TUPLE_OBJECT: Option<&[u8]> = None;

const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_DEVMAP: u32 = 14;
/// Map update flag: create only (an installed flow keeps its counters).
const BPF_NOEXIST: u64 = 1;
/// Flows the map holds; beyond, flows stay in userspace (counted).
pub const FLOW_CAPACITY: u32 = 65_536;
const PORT_CAPACITY: u32 = pipeline::MAX_PORTS as u32;

/// Whether this build carries the program (clang was there when pmd was built).
pub fn available() -> bool {
    L2_OBJECT.is_some() && TUPLE_OBJECT.is_some()
}

/// Which flows the fast path holds: the bridge's (by MACs) or the gateway's (by 5-tuple, with
/// rewrites).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowTable {
    L2,
    Tuple,
}

impl FlowTable {
    fn object(self) -> Option<&'static [u8]> {
        match self {
            FlowTable::L2 => L2_OBJECT,
            FlowTable::Tuple => TUPLE_OBJECT,
        }
    }

    fn map_name(self) -> &'static str {
        match self {
            FlowTable::L2 => "l2_flows",
            FlowTable::Tuple => "tuple_flows",
        }
    }

    fn sizes(self) -> (u32, u32) {
        match self {
            FlowTable::L2 => (size_of::<L2Key>() as u32, size_of::<L2Flow>() as u32),
            FlowTable::Tuple => (size_of::<TupleKey>() as u32, size_of::<TupleFlow>() as u32),
        }
    }
}

/// What the program counts in a flow's value, per CPU.
pub trait Counted: Copy + Default {
    fn packets(&self) -> u64;
    fn bytes(&self) -> u64;
    /// The per-CPU copies summed into the first.
    fn merge(copies: &[Self]) -> Self;
}

/// A flow map's key: where its flow is read and removed.
pub trait FlowKey: Sized {
    type Flow: Counted;
    fn read_from(&self, fast: &FastPath) -> io::Result<Option<Self::Flow>>;
    fn remove_from(&self, fast: &FastPath) -> io::Result<()>;
}

/// The key of an L2 flow, as the program builds it (16 bytes, no padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct L2Key {
    pub ifindex: u32,
    pub dst: [u8; 6],
    pub src: [u8; 6],
}

/// An L2 flow's value: where it goes, and what the program counted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L2Flow {
    /// The switch's port id of the egress port (the `ports` devmap's index).
    pub egress_port: u32,
    /// `front_tag` of the key, read with `egress_port` as one word: the map gives a deleted
    /// element to the next install at once, while a program on another CPU may still be
    /// reading it; another key's tag there is a miss, not that key's egress.
    pub tag: u32,
    pub packets: u64,
    pub bytes: u64,
    pub reserved2: u64,
}

impl FlowKey for L2Key {
    type Flow = L2Flow;

    fn read_from(&self, fast: &FastPath) -> io::Result<Option<L2Flow>> {
        fast.read_l2(self)
    }

    fn remove_from(&self, fast: &FastPath) -> io::Result<()> {
        fast.remove_l2(self)
    }
}

impl Counted for L2Flow {
    fn packets(&self) -> u64 {
        self.packets
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn merge(copies: &[L2Flow]) -> L2Flow {
        L2Flow {
            packets: copies.iter().map(|f| f.packets).sum(),
            bytes: copies.iter().map(|f| f.bytes).sum(),
            ..copies[0]
        }
    }
}

/// The key of a gateway flow, as the program builds it from the frame (32 bytes): addresses
/// and ports in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TupleKey {
    pub ifindex: u32,
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    /// `OUTER` or `INNER`.
    pub layer: u8,
    pub pad: [u8; 2],
}

/// The tag of a gateway flow's key, as the program computes it from the key's bytes read as
/// four native words: never 0 (a zeroed value never matches).
pub fn tuple_tag(key: &TupleKey) -> u32 {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&key.ifindex.to_ne_bytes());
    b[4..10].copy_from_slice(&key.dst);
    b[10..16].copy_from_slice(&key.src);
    b[16..20].copy_from_slice(&key.saddr);
    b[20..24].copy_from_slice(&key.daddr);
    b[24..26].copy_from_slice(&key.sport);
    b[26..28].copy_from_slice(&key.dport);
    b[28] = key.proto;
    b[29] = key.layer;
    b[30..32].copy_from_slice(&key.pad);
    let d = |i: usize| u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    (d(0)
        .wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
        .wrapping_add(d(1).wrapping_mul(0x1656_67b1_9e37_79f9))
        .wrapping_add(d(2).wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add(d(3).wrapping_mul(0xff51_afd7_ed55_8ccd))
        >> 32) as u32
        | 1
}

/// `TupleKey::layer`: the frame as it came on the port.
pub const OUTER: u8 = 0;
/// `TupleKey::layer`: the inner frame of VXLAN that came on the port.
pub const INNER: u8 = 1;

/// `TupleFlow::flags`: the packet is routed (its TTL goes down by one).
pub const DECREMENT_TTL: u8 = 1;
/// `TupleFlow::flags`: the frame goes into the overlay (the leg's outer headers in front).
pub const ENCAP: u8 = 2;
/// `TupleFlow::flags`: the key is an inner frame; the outer headers must match the leg's.
pub const DECAP: u8 = 4;
/// Outer Ethernet, IPv4, UDP and VXLAN headers.
pub const OUTER_LEN: usize = pipeline::wire::vxlan::ENCAP_OVERHEAD;
/// Overlay legs the program's array holds (distinct outer headers: peers and next hops).
pub const LEG_CAPACITY: u32 = 1024;

/// A gateway flow's value: the egress port, the frame's new MACs, addresses and ports (network
/// byte order), the checksum deltas, and what the program counted (72 bytes). The program
/// copies what it decides by (`tag` to `tag_end`) last word first and uses it only when both
/// tags are its key's: the map gives a deleted element to the next install at once, written
/// first word first, while the program on another CPU may still be reading it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TupleFlow {
    /// `tuple_tag` of the key.
    pub tag: u32,
    pub egress_port: u32,
    pub max_len: u16,
    pub flags: u8,
    pub pad: u8,
    pub new_dst: [u8; 6],
    pub new_src: [u8; 6],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// RFC 1624 deltas (one's complement sums of ~old + new), stored as the packet holds them.
    pub ip_delta: [u8; 2],
    pub l4_delta: [u8; 2],
    /// ENCAP, DECAP: the slot of the overlay leg (`FastPath::acquire_leg`).
    pub leg: u16,
    /// ENCAP: the outer UDP source port (network byte order).
    pub udp_sport: [u8; 2],
    /// `tag` again.
    pub tag_end: u32,
    pub packets: u64,
    pub bytes: u64,
    /// CLOCK_MONOTONIC nanoseconds (coarse: jiffies resolution) of the last hit (0: none yet).
    pub last_ns: u64,
}

impl TupleFlow {
    /// The value that turns frames of `key` into frames with these MACs, addresses and ports;
    /// `routed` also decrements the TTL. The checksum deltas follow from old and new.
    pub fn rewrite(
        key: &TupleKey,
        egress_port: u32,
        max_len: u16,
        new_macs: ([u8; 6], [u8; 6]),
        new_tuple: ([u8; 4], [u8; 2], [u8; 4], [u8; 2]),
        routed: bool,
    ) -> TupleFlow {
        let (saddr, sport, daddr, dport) = new_tuple;
        let mut addresses = 0u32;
        for (old, new) in [(key.saddr, saddr), (key.daddr, daddr)] {
            addresses += delta(&old, &new);
        }
        let ports = delta(&key.sport, &sport) + delta(&key.dport, &dport);
        // The TTL shares a word with the protocol; one less is ~m + (m - 0x100) = 0xfeff,
        // whatever m is (the program leaves TTL 1 and 0 to the switch).
        let ttl = if routed { 0xfeff } else { 0 };
        let tag = tuple_tag(key);
        TupleFlow {
            tag,
            tag_end: tag,
            egress_port,
            max_len,
            flags: if routed { DECREMENT_TTL } else { 0 },
            new_dst: new_macs.0,
            new_src: new_macs.1,
            saddr,
            daddr,
            sport,
            dport,
            ip_delta: fold(addresses + ttl).to_be_bytes(),
            // The pseudo-header holds the addresses; the TTL is not in it.
            l4_delta: fold(addresses + ports).to_be_bytes(),
            ..Default::default()
        }
    }
}

impl TupleFlow {
    /// The flow goes into the overlay: the leg in `slot` in front, from UDP port `udp_sport`.
    pub fn into_overlay(self, slot: u16, udp_sport: u16) -> TupleFlow {
        TupleFlow {
            flags: self.flags | ENCAP,
            leg: slot,
            udp_sport: udp_sport.to_be_bytes(),
            ..self
        }
    }

    /// The flow's key is an inner frame whose outer headers must match the leg in `slot`.
    pub fn out_of_overlay(self, slot: u16) -> TupleFlow {
        TupleFlow {
            flags: self.flags | DECAP,
            leg: slot,
            ..self
        }
    }
}

/// Sum of ~old + new over the 16-bit big-endian words of a field.
fn delta(old: &[u8], new: &[u8]) -> u32 {
    old.chunks(2)
        .zip(new.chunks(2))
        .map(|(o, n)| {
            (!u16::from_be_bytes([o[0], o[1]])) as u32 + u16::from_be_bytes([n[0], n[1]]) as u32
        })
        .sum()
}

impl FlowKey for TupleKey {
    type Flow = TupleFlow;

    fn read_from(&self, fast: &FastPath) -> io::Result<Option<TupleFlow>> {
        fast.read_hashed(self)
    }

    fn remove_from(&self, fast: &FastPath) -> io::Result<()> {
        fast.remove_hashed(self)
    }
}

impl Counted for TupleFlow {
    fn packets(&self) -> u64 {
        self.packets
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn merge(copies: &[TupleFlow]) -> TupleFlow {
        TupleFlow {
            packets: copies.iter().map(|f| f.packets).sum(),
            bytes: copies.iter().map(|f| f.bytes).sum(),
            last_ns: copies.iter().map(|f| f.last_ns).max().unwrap_or(0),
            ..copies[0]
        }
    }
}

/// An overlay leg as the program's array holds it.
#[repr(C)]
#[derive(Clone, Copy)]
struct OverlayLeg {
    outer: [u8; OUTER_LEN],
    pad: [u8; 2],
}

/// The overlay legs in the program's array: each distinct outer header once, shared by the
/// flows (of every worker) that use it, its slot freed when the last of them goes. Freed slots
/// are reused last, so a program still running on a flow just removed reads its leg unchanged.
struct LegSlots {
    by_outer: HashMap<[u8; OUTER_LEN], (u16, u32)>,
    outer_of: Vec<Option<[u8; OUTER_LEN]>>,
    free: VecDeque<u16>,
}

impl LegSlots {
    fn new() -> LegSlots {
        LegSlots {
            by_outer: HashMap::new(),
            outer_of: vec![None; LEG_CAPACITY as usize],
            free: (0..LEG_CAPACITY as u16).collect(),
        }
    }
}

/// The maps every port's program shares.
pub struct FastPath {
    table: FlowTable,
    ports: OwnedFd,
    /// The longest frame each egress port takes, by port id (the bridge's program checks it;
    /// the gateway's entries carry their own).
    port_max_len: OwnedFd,
    flows: OwnedFd,
    /// The gateway's overlay legs (`None` for the bridge's table).
    legs: Option<(OwnedFd, Mutex<LegSlots>)>,
    /// The bridge's front array and where each of its flows lives (`None` for the gateway's).
    front: Option<(OwnedFd, Mutex<Places>)>,
    /// The flow map is per CPU: a value is one flow value per possible CPU.
    cpus: usize,
}

impl FastPath {
    pub fn new(table: FlowTable) -> io::Result<FastPath> {
        if table.object().is_none() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this vswitch was built without clang, so without the XDP fast path (scripts/install-deps.sh installs clang; rebuild)",
            ));
        }
        let (key_size, value_size) = table.sizes();
        Ok(FastPath {
            table,
            cpus: possible_cpu_count()?,
            ports: create_map(BPF_MAP_TYPE_DEVMAP, 4, 4, PORT_CAPACITY, "vswitch_ports")?,
            port_max_len: create_map(BPF_MAP_TYPE_ARRAY, 4, 4, PORT_CAPACITY, "vswitch_maxlen")?,
            flows: create_map(
                BPF_MAP_TYPE_PERCPU_HASH,
                key_size,
                value_size,
                FLOW_CAPACITY,
                "vswitch_flows",
            )?,
            legs: match table {
                FlowTable::L2 => None,
                FlowTable::Tuple => Some((
                    create_map(
                        BPF_MAP_TYPE_ARRAY,
                        4,
                        size_of::<OverlayLeg>() as u32,
                        LEG_CAPACITY,
                        "vswitch_legs",
                    )?,
                    Mutex::new(LegSlots::new()),
                )),
            },
            front: match table {
                FlowTable::L2 => Some((
                    create_map(
                        BPF_MAP_TYPE_PERCPU_ARRAY,
                        4,
                        size_of::<L2Slot>() as u32,
                        FRONT_SLOTS,
                        "vswitch_front",
                    )?,
                    Mutex::new(Places::default()),
                )),
                FlowTable::Tuple => None,
            },
        })
    }

    /// The slot of the overlay leg with these outer headers, written into the program's array
    /// if it is new; `None` when every slot is taken (the flow stays with the workers). Each
    /// acquired slot is released once (`release_leg`).
    pub fn acquire_leg(&self, outer: &[u8; OUTER_LEN]) -> io::Result<Option<u16>> {
        let Some((map, slots)) = &self.legs else {
            return Ok(None);
        };
        let mut slots = slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((slot, users)) = slots.by_outer.get_mut(outer) {
            *users += 1;
            return Ok(Some(*slot));
        }
        let Some(slot) = slots.free.pop_front() else {
            return Ok(None);
        };
        let leg = OverlayLeg {
            outer: *outer,
            pad: [0; 2],
        };
        if let Err(e) = update(map, &(slot as u32), &leg, 0) {
            slots.free.push_front(slot);
            return Err(e);
        }
        slots.by_outer.insert(*outer, (slot, 1));
        slots.outer_of[slot as usize] = Some(*outer);
        Ok(Some(slot))
    }

    /// A flow that used the leg in `slot` is gone.
    pub fn release_leg(&self, slot: u16) {
        let Some((_, slots)) = &self.legs else {
            return;
        };
        let mut slots = slots.lock().unwrap_or_else(|e| e.into_inner());
        let Some(outer) = slots.outer_of.get(slot as usize).copied().flatten() else {
            return;
        };
        let Some((_, users)) = slots.by_outer.get_mut(&outer) else {
            return;
        };
        *users -= 1;
        if *users == 0 {
            slots.by_outer.remove(&outer);
            slots.outer_of[slot as usize] = None;
            slots.free.push_back(slot);
        }
    }

    /// Overlay legs in use.
    pub fn legs_in_use(&self) -> usize {
        self.legs.as_ref().map_or(0, |(_, slots)| {
            slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .by_outer
                .len()
        })
    }

    pub fn table(&self) -> FlowTable {
        self.table
    }

    /// The program for one port: its own XSKMAP, the shared maps.
    pub fn program(&self, xsks: &XskMap) -> io::Result<RedirectProgram> {
        let object =
            (self.table.object()).ok_or_else(|| io::Error::from(io::ErrorKind::Unsupported))?;
        let flows = self.table.map_name();
        let insns = link(object, |name| match name {
            "xsks" => Some(xsks.fd.as_raw_fd()),
            "ports" => Some(self.ports.as_raw_fd()),
            "port_max_len" => Some(self.port_max_len.as_raw_fd()),
            "overlay_legs" => self.legs.as_ref().map(|(map, _)| map.as_raw_fd()),
            "l2_front" => self.front.as_ref().map(|(map, _)| map.as_raw_fd()),
            n if n == flows => Some(self.flows.as_raw_fd()),
            _ => None,
        })?;
        let fd = load_xdp_flags(&insns, "vswitch_fast", BPF_F_XDP_HAS_FRAGS)?;
        Ok(RedirectProgram::from_fd(fd))
    }

    /// Lets flows leave through port `port` (interface `ifindex`), with frames of at most
    /// `max_frame` bytes (its MTU + 18: Ethernet header and a VLAN tag).
    pub fn add_port(&self, port: u32, ifindex: u32, max_frame: u32) -> io::Result<()> {
        update(&self.port_max_len, &port, &max_frame, 0)?;
        update(&self.ports, &port, &ifindex, 0)
    }

    pub fn del_port(&self, port: u32) -> io::Result<()> {
        delete(&self.ports, &port)
    }

    /// Installs a bridge flow: in its front slot if that is free, else in the hash map;
    /// `false` when the key was there already (left as it is).
    pub fn install(&self, key: &L2Key, egress_port: u32) -> io::Result<bool> {
        let Some((front, places)) = &self.front else {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        };
        let mut places = places.lock().unwrap_or_else(|e| e.into_inner());
        if places.of(key).is_some() {
            return Ok(false);
        }
        let place = places.for_new(key);
        match place {
            Place::Front(slot) => {
                let per_cpu = vec![L2Slot::new(key, egress_port); self.cpus];
                update_slice(front, &slot, &per_cpu, 0)?;
            }
            Place::Hashed => {
                let flow = L2Flow {
                    egress_port,
                    tag: crate::fastpath_front::front_tag(key),
                    ..Default::default()
                };
                if !self.install_value(key, flow)? {
                    return Ok(false);
                }
            }
        }
        places.taken(key, place);
        Ok(true)
    }

    /// Installs a gateway flow; `false` when the key was there already.
    pub fn install_tuple(&self, key: &TupleKey, flow: TupleFlow) -> io::Result<bool> {
        self.install_value(key, flow)
    }

    fn install_value<K, V: Counted>(&self, key: &K, flow: V) -> io::Result<bool> {
        self.check_types::<K, V>();
        let per_cpu = vec![flow; self.cpus];
        match update_slice(&self.flows, key, &per_cpu, BPF_NOEXIST) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The map's key and value types are the ones it was created with.
    fn check_types<K, V>(&self) {
        let (key_size, value_size) = self.table.sizes();
        assert_eq!(
            (size_of::<K>(), size_of::<V>()),
            (key_size as usize, value_size as usize),
            "a flow of another table"
        );
    }

    /// Takes the flow out (nothing when it is not installed).
    pub fn remove<K: FlowKey>(&self, key: &K) -> io::Result<()> {
        key.remove_from(self)
    }

    /// The flow's value now, its counters summed over the CPUs (`None`: not installed).
    pub fn read<K: FlowKey>(&self, key: &K) -> io::Result<Option<K::Flow>> {
        key.read_from(self)
    }

    fn remove_l2(&self, key: &L2Key) -> io::Result<()> {
        let Some((front, places)) = &self.front else {
            return Ok(());
        };
        let mut places = places.lock().unwrap_or_else(|e| e.into_inner());
        let Some(place) = places.of(key) else {
            return Ok(());
        };
        match place {
            Place::Front(slot) => {
                update_slice(front, &slot, &vec![L2Slot::default(); self.cpus], 0)?
            }
            Place::Hashed => self.remove_hashed(key)?,
        }
        places.freed(key, place);
        Ok(())
    }

    /// Without the placement lock: only the installing worker reads or removes its key, and
    /// the front slot holds that key exactly when the flow lives there.
    fn read_l2(&self, key: &L2Key) -> io::Result<Option<L2Flow>> {
        let Some((front, _)) = &self.front else {
            return Ok(None);
        };
        let slot = front_slot(key);
        match lookup_per_cpu::<_, L2Slot>(front, &slot, self.cpus)? {
            Some(copies) if copies[0].key == *key => Ok(Some(L2Slot::merge(&copies))),
            _ => self.read_hashed(key),
        }
    }

    fn remove_hashed<K>(&self, key: &K) -> io::Result<()> {
        assert_eq!(
            size_of::<K>(),
            self.table.sizes().0 as usize,
            "a key of another table"
        );
        match delete(&self.flows, key) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    fn read_hashed<K, V: Counted>(&self, key: &K) -> io::Result<Option<V>> {
        self.check_types::<K, V>();
        Ok(lookup_per_cpu::<K, V>(&self.flows, key, self.cpus)?.map(|copies| V::merge(&copies)))
    }

    /// The next hashed flows of `walk` (at most `max`, fewer at the map's end), each with
    /// its per-CPU copies merged, into `out` (cleared first): one system call for many flows
    /// where reading each costs one. Flows installed or removed meanwhile may be missed or
    /// read twice (the kernel walks its buckets).
    pub fn read_hashed_batch<K: Copy + Default, V: Counted>(
        &self,
        walk: &mut HashWalk,
        max: usize,
        out: &mut Vec<(K, V)>,
    ) -> io::Result<()> {
        self.check_types::<K, V>();
        assert_eq!(size_of::<V>() % 8, 0, "the kernel's per-CPU stride");
        out.clear();
        if walk.done || max == 0 {
            return Ok(());
        }
        let mut keys = vec![K::default(); max];
        let mut values = vec![V::default(); max * self.cpus];
        // The kernel's position: a bucket index.
        let mut next = 0u32;
        let mut attr = MapBatchAttr {
            in_batch: walk.next.as_ref().map_or(0, |b| b as *const u32 as u64),
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: max as u32,
            map_fd: self.flows.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: `in_batch` (when set) and `out_batch` point to u32s, the hash map's batch
        // position; `keys` has room for `count` Ks and `values` for `count` times `cpus` Vs,
        // the map's key and per-CPU value types (checked above; V a multiple of 8 bytes, the
        // kernel's per-CPU stride); all alive until after the call, which writes at most that.
        let result = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        let read = (attr.count as usize).min(max);
        match result {
            Ok(_) => walk.next = Some(next),
            // The end: what it read before it is valid.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => walk.done = true,
            Err(e) => return Err(e),
        }
        out.extend((0..read).map(|i| {
            (
                keys[i],
                V::merge(&values[i * self.cpus..(i + 1) * self.cpus]),
            )
        }));
        Ok(())
    }
}

/// Where a walk over a flow map stands (`FastPath::read_hashed_batch`).
#[derive(Debug, Default)]
pub struct HashWalk {
    next: Option<u32>,
    done: bool,
}

impl HashWalk {
    pub fn is_done(&self) -> bool {
        self.done
    }
}

/// A per-CPU map's element: one value per possible CPU (`None`: no such key).
fn lookup_per_cpu<K, V: Copy + Default>(
    map: &OwnedFd,
    key: &K,
    cpus: usize,
) -> io::Result<Option<Vec<V>>> {
    assert_eq!(size_of::<V>() % 8, 0, "the kernel's per-CPU stride");
    let mut per_cpu = vec![V::default(); cpus];
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as *const K as u64,
        value: per_cpu.as_mut_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: `key` points to a K and `per_cpu` to `cpus` Vs, the map's key and per-CPU value
    // types (callers pass the types the map was created with; V is a multiple of 8 bytes, so
    // the kernel's per-CPU stride is its size), alive until after the call; the kernel reads
    // the key and writes the values.
    match unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) } {
        Ok(_) => Ok(Some(per_cpu)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// As `update`, for a per-CPU map: one value per possible CPU.
fn update_slice<K, V>(map: &OwnedFd, key: &K, values: &[V], flags: u64) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as *const K as u64,
        value: values.as_ptr() as u64,
        flags,
        ..Default::default()
    };
    // SAFETY: `key` is a live reference to the map's key type and `values` a live slice of one
    // value per possible CPU, what the kernel reads for a per-CPU map, during the call only.
    unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }.map(|_| ())
}

fn delete<K>(map: &OwnedFd, key: &K) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as *const K as u64,
        ..Default::default()
    };
    // SAFETY: `key` is a live reference to the map's key type, read during the call only.
    unsafe { bpf(BPF_MAP_DELETE_ELEM, &mut attr) }.map(|_| ())
}

/// The instructions of the object's `xdp` section with each map reference (a 64-bit
/// immediate load the relocation names) pointed at the descriptor `map_fd` gives for it.
fn link(object: &[u8], map_fd: impl Fn(&str) -> Option<RawFd>) -> io::Result<Vec<Insn>> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let file = object::File::parse(object).map_err(|e| bad(format!("fast path object: {e}")))?;
    let section = file
        .section_by_name("xdp")
        .ok_or_else(|| bad("fast path object: no xdp section".into()))?;
    let data = section
        .data()
        .map_err(|e| bad(format!("fast path object: {e}")))?;
    let mut insns: Vec<Insn> = data
        .chunks_exact(8)
        .map(|c| Insn {
            code: c[0],
            regs: c[1],
            off: i16::from_le_bytes([c[2], c[3]]),
            imm: i32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    for (offset, reloc) in section.relocations() {
        let RelocationTarget::Symbol(index) = reloc.target() else {
            return Err(bad(format!("relocation at {offset} not to a symbol")));
        };
        let name = file
            .symbol_by_index(index)
            .and_then(|s| s.name().map(str::to_string))
            .map_err(|e| bad(format!("relocation at {offset}: {e}")))?;
        let fd = map_fd(&name).ok_or_else(|| bad(format!("unknown map {name:?}")))?;
        let insn = insns
            .get_mut((offset / 8) as usize)
            .filter(|i| i.code == 0x18)
            .ok_or_else(|| bad(format!("relocation at {offset} is not a map load")))?;
        insn.regs = (insn.regs & 0x0f) | (BPF_PSEUDO_MAP_FD << 4);
        insn.imm = fd;
    }
    Ok(insns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_and_value_have_the_programs_layout() {
        assert_eq!(std::mem::size_of::<L2Key>(), 16);
        assert_eq!(std::mem::size_of::<L2Flow>(), 32);
        assert_eq!(std::mem::size_of::<TupleKey>(), 32);
        assert_eq!(std::mem::size_of::<TupleFlow>(), 72);
    }

    #[test]
    fn every_map_reference_is_linked() {
        for table in [FlowTable::L2, FlowTable::Tuple] {
            let Some(object) = table.object() else {
                assert!(
                    std::env::var("CI").is_err(),
                    "CI builds with clang: the fast path must be there"
                );
                return;
            };
            let insns = link(object, |name| match name {
                "xsks" => Some(101),
                "ports" => Some(102),
                "port_max_len" => Some(106),
                n if n == table.map_name() => Some(103),
                "overlay_legs" if table == FlowTable::Tuple => Some(104),
                "l2_front" if table == FlowTable::L2 => Some(105),
                _ => None,
            })
            .unwrap();
            let mut fds: Vec<i32> = insns
                .iter()
                .filter(|i| i.code == 0x18 && i.regs >> 4 == BPF_PSEUDO_MAP_FD)
                .map(|i| i.imm)
                .collect();
            fds.sort();
            fds.dedup();
            let expected: &[i32] = match table {
                FlowTable::L2 => &[101, 102, 103, 105, 106],
                FlowTable::Tuple => &[101, 102, 103, 104],
            };
            assert_eq!(fds, expected, "{table:?}");
            assert!(link(object, |_| None).is_err(), "an unknown map is refused");
        }
    }

    /// The bridge's maps and a port's program over them; `None` where they cannot be made
    /// (not root, or built without clang: never in CI).
    fn l2_rig() -> Option<(FastPath, XskMap, RedirectProgram)> {
        if !available() || nix::unistd::geteuid().as_raw() != 0 {
            assert!(
                std::env::var("CI").is_err(),
                "CI runs this as root, with clang"
            );
            return None;
        }
        let fast = FastPath::new(FlowTable::L2).unwrap();
        let xsks = XskMap::create(1).unwrap();
        let prog = fast.program(&xsks).unwrap();
        Some((fast, xsks, prog))
    }

    #[test]
    fn the_verifier_accepts_the_program_and_flows_install_and_read_back() {
        let Some((fast, _xsks, _prog)) = l2_rig() else {
            return;
        };
        let key = L2Key {
            ifindex: 7,
            dst: [2, 0, 0, 0, 0, 2],
            src: [2, 0, 0, 0, 0, 1],
        };
        assert_eq!(fast.read(&key).unwrap(), None);
        assert!(fast.install(&key, 9).unwrap());
        assert!(!fast.install(&key, 10).unwrap());
        let flow = fast.read(&key).unwrap().unwrap();
        assert_eq!(flow.egress_port, 9, "a second install keeps the first");
        fast.remove(&key).unwrap();
        fast.remove(&key).unwrap();
        assert_eq!(fast.read(&key).unwrap(), None);
    }

    #[test]
    fn bridge_flows_are_found_in_the_front_and_in_the_hash_and_a_torn_slot_is_a_miss() {
        use super::tuple_tests::{frame, EGRESS, LOOPBACK, TCP_ACK, XDP_PASS, XDP_REDIRECT};
        use crate::fastpath_front::front_tag;
        let Some((fast, _xsks, prog)) = l2_rig() else {
            return;
        };
        fast.add_port(EGRESS, LOOPBACK, 1518).unwrap();
        let tuple = ([10, 0, 0, 1], 40000, [10, 0, 0, 2], 80);
        let key_of = |f: &[u8]| L2Key {
            ifindex: LOOPBACK,
            dst: f[..6].try_into().unwrap(),
            src: f[6..12].try_into().unwrap(),
        };
        let a_frame = frame(&TCP_ACK, ([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]), tuple);
        let a = key_of(&a_frame);
        // A flow from another source whose front slot is a's.
        let b_frame = (0..=u16::MAX)
            .map(|i| {
                let [hi, lo] = i.to_be_bytes();
                frame(&TCP_ACK, ([2, 0, 0, 0, 0, 2], [2, 0, 0, 9, hi, lo]), tuple)
            })
            .find(|f| front_slot(&key_of(f)) == front_slot(&a))
            .expect("a source whose slot is a's");
        let b = key_of(&b_frame);
        assert_eq!(
            prog.test_run(&a_frame).unwrap().0,
            XDP_PASS,
            "not installed"
        );
        assert!(fast.install(&a, EGRESS).unwrap());
        assert!(fast.install(&b, EGRESS).unwrap());
        assert!(!fast.install(&b, EGRESS).unwrap(), "installed once");
        for (f, key) in [(&a_frame, &a), (&b_frame, &b)] {
            assert_eq!(prog.test_run(f).unwrap().0, XDP_REDIRECT);
            let flow = fast.read(key).unwrap().unwrap();
            assert_eq!((flow.egress_port, flow.packets), (EGRESS, 1));
            assert_eq!(flow.bytes, f.len() as u64);
        }
        let (front, _) = fast.front.as_ref().unwrap();
        let slot = front_slot(&a);
        // The route of another key's entry with a's key words.
        let torn = L2Slot {
            route: EGRESS as u64 | ((front_tag(&a) ^ 2) as u64) << 32,
            ..L2Slot::new(&a, EGRESS)
        };
        update_slice(front, &slot, &vec![torn; fast.cpus], 0).unwrap();
        assert_eq!(prog.test_run(&a_frame).unwrap().0, XDP_PASS, "a torn slot");
        // b's hashed element given to another key as it is read (the map reuses a deleted
        // element at once): that key's tag with b's key words is a miss.
        let reused = L2Flow {
            egress_port: EGRESS,
            tag: front_tag(&b) ^ 2,
            ..Default::default()
        };
        update_slice(&fast.flows, &b, &vec![reused; fast.cpus], 0).unwrap();
        assert_eq!(
            prog.test_run(&b_frame).unwrap().0,
            XDP_PASS,
            "a reused element"
        );
        // b as it was: one frame counted.
        let mut b_again = vec![
            L2Flow {
                egress_port: EGRESS,
                tag: front_tag(&b),
                ..Default::default()
            };
            fast.cpus
        ];
        b_again[0].packets = 1;
        update_slice(&fast.flows, &b, &b_again, 0).unwrap();
        fast.remove(&a).unwrap();
        assert_eq!(fast.read(&a).unwrap(), None);
        assert_eq!(prog.test_run(&a_frame).unwrap().0, XDP_PASS);
        assert_eq!(prog.test_run(&b_frame).unwrap().0, XDP_REDIRECT, "b stays");
        assert_eq!(fast.read(&b).unwrap().unwrap().packets, 2);
        assert!(fast.install(&a, EGRESS).unwrap(), "a's slot is free again");
        assert_eq!(prog.test_run(&a_frame).unwrap().0, XDP_REDIRECT);
        assert_eq!(fast.read(&a).unwrap().unwrap().packets, 1, "counting anew");
        fast.remove(&b).unwrap();
        assert_eq!(prog.test_run(&b_frame).unwrap().0, XDP_PASS);
        // A frame longer than its egress port takes goes to the workers (which drop and
        // count it), uncounted here: the devmap would drop it without a trace.
        let sent = fast.read(&a).unwrap().unwrap().packets;
        fast.add_port(EGRESS, LOOPBACK, a_frame.len() as u32 - 1)
            .unwrap();
        assert_eq!(prog.test_run(&a_frame).unwrap().0, XDP_PASS, "too long");
        assert_eq!(fast.read(&a).unwrap().unwrap().packets, sent);
        fast.add_port(EGRESS, LOOPBACK, a_frame.len() as u32)
            .unwrap();
        assert_eq!(
            prog.test_run(&a_frame).unwrap().0,
            XDP_REDIRECT,
            "just fits"
        );
    }
}

#[cfg(test)]
#[path = "fastpath_tuple_tests.rs"]
mod tuple_tests;

#[cfg(test)]
#[path = "fastpath_overlay_tests.rs"]
mod overlay_tests;
