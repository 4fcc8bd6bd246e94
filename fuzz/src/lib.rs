//! The fuzz target: bytes become a sequence of operations on one gateway configured with every
//! feature (pod segment with bound and unbound ports, uplink with masquerade, host-gw route,
//! services with NodePorts, a VXLAN peer): batches of frames on any port — templates of real
//! traffic with mutations, or raw bytes —, the clock moving with housekeeping, reloads and
//! ports forgotten. After every batch the invariants a worker relies on are checked; a
//! violation is an `Err`, a panic is a crash.
#![deny(unsafe_code)]

use pipeline::gateway::{
    FlowOffer, GatewayConfig, OverlayLeg, ServiceConfig, UplinkConfig, VxlanConfig, VxlanPeer,
    DECAP_COMPARED, ENCAP_FILLED,
};
use pipeline::l2::{BridgeConfig, PortBinding};
use pipeline::wire::vxlan::ENCAP_OVERHEAD;
use pipeline::{Bridge, Disposition, Gateway, GatewayShared, HeadroomBuf, MacAddr, PortId};
use std::net::{Ipv4Addr, SocketAddrV4};

pub mod templates;

/// Ports of the fuzzed switch: pods 0..=2, the uplink 3; 4 and 5 are in no segment.
pub const PODS: [PortId; 3] = [0, 1, 2];
pub const UPLINK: PortId = 3;
const PORTS: PortId = 6;
/// As a UMEM frame keeps in front of received data.
const HEADROOM: usize = 256;
/// What a UMEM frame holds after the headroom.
const MAX_FRAME: usize = 4096 - HEADROOM;

pub const GW_MAC: MacAddr = MacAddr([0x02, 0x76, 10, 244, 1, 1]);
pub const VTEP_MAC: MacAddr = MacAddr([0x0e, 0, 0, 0, 0, 1]);
pub const PEER_VTEP_MAC: MacAddr = MacAddr([0x0e, 0, 0, 0, 0, 3]);
pub const POD_IPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 244, 1, 2),
    Ipv4Addr::new(10, 244, 1, 3),
    Ipv4Addr::new(10, 244, 1, 4),
];
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
pub const PEER_VTEP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
pub const PEER_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 7);
pub const HOST_GW_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
pub const EXT: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

pub fn pod_mac(i: usize) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 1, i as u8 + 2])
}

pub fn router_mac() -> MacAddr {
    MacAddr([0x02, 0xbb, 0, 0, 0, 0xfe])
}

fn config(with_peer: bool) -> GatewayConfig {
    let service = |name: &str, cluster_ip, port, proto, node_port, backends: &[(Ipv4Addr, u16)]| {
        ServiceConfig {
            name: name.into(),
            cluster_ip,
            port,
            proto,
            node_port,
            backends: backends
                .iter()
                .map(|(ip, p)| SocketAddrV4::new(*ip, *p))
                .collect(),
            affinity_timeout_s: None,
            external_local: None,
            node_port_backends: None,
        }
    };
    GatewayConfig {
        mac: GW_MAC,
        pod_ports: PODS.to_vec(),
        gateway: "10.244.1.1/24".parse().unwrap(),
        uplink: Some(UplinkConfig {
            port: UPLINK,
            address: "198.18.0.1/24".parse().unwrap(),
            next_hop: ROUTER,
            masquerade: true,
            cluster_cidrs: vec![
                "10.244.0.0/16".parse().unwrap(),
                "10.96.0.0/12".parse().unwrap(),
            ],
            nat_ports: (1024, 65535),
            mtu: 1500,
        }),
        routes: vec![(
            "10.244.2.0/24".parse().unwrap(),
            Ipv4Addr::new(198, 18, 0, 2),
        )],
        services: vec![
            service(
                "web",
                VIP,
                80,
                6,
                Some(30080),
                &[(POD_IPS[0], 8080), (HOST_GW_POD, 8080), (PEER_POD, 8080)],
            ),
            service("dns", VIP, 53, 17, Some(30053), &[(POD_IPS[1], 5353)]),
            service("empty", Ipv4Addr::new(10, 96, 0, 11), 80, 6, None, &[]),
        ],
        vxlan: Some(VxlanConfig {
            vni: 1,
            udp_port: 4789,
            local: NODE_IP,
            mac: VTEP_MAC,
            peers: if with_peer {
                vec![VxlanPeer {
                    cidr: "10.244.3.0/24".parse().unwrap(),
                    vtep: PEER_VTEP,
                    mac: PEER_VTEP_MAC,
                }]
            } else {
                Vec::new()
            },
        }),
        conntrack_capacity: 256,
        neighbor_age_ms: 60_000,
    }
}

/// Reads the case's bytes; past the end, zeros.
struct Bytes<'a> {
    data: &'a [u8],
}

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// One frame: a template with mutations, or raw bytes.
fn frame(b: &mut Bytes<'_>, templates: &[(PortId, Vec<u8>)]) -> Vec<u8> {
    let choice = b.byte() as usize;
    if choice % 8 == 7 {
        let len = b.byte() as usize;
        return b.take(len).to_vec();
    }
    let mut f = templates[choice % templates.len()].1.clone();
    for _ in 0..b.byte() % 6 {
        let at = b.u16() as usize;
        let value = b.byte();
        if !f.is_empty() {
            let at = at % f.len();
            f[at] = value;
        }
    }
    match b.byte() % 8 {
        0 => f.truncate(b.u16() as usize % (f.len() + 1)),
        1 => f.extend_from_slice(b.take(16)),
        // Keep the IPv4 header checksum valid so the mutation reaches the deeper stages.
        2 | 3 => templates::refill_ipv4_checksum(&mut f),
        _ => {}
    }
    f
}

/// The checks a worker relies on, for one batch received on `ingress`.
/// Every offer the fast path would install describes a frame of the batch as it left: forwarded
/// to the offer's egress, with the offer's MACs, addresses and ports (else the fast path would
/// send something the switch did not); and its key a frame as it came (`raw`): MACs, protocol,
/// addresses and ports, and for one out of the overlay the outer headers the program compares.
fn check_offers(
    ingress: PortId,
    raw: &[Vec<u8>],
    frames: &[HeadroomBuf],
    next: &[Disposition],
    offers: &[FlowOffer],
) -> Result<(), String> {
    for o in offers {
        let came = |f: &Vec<u8>| {
            let mut f = f.as_slice();
            if let Some(OverlayLeg::Decap { outer, .. }) = o.leg {
                if f.len() < ENCAP_OVERHEAD
                    || DECAP_COMPARED
                        .iter()
                        .any(|r| f[r.clone()] != outer[r.clone()])
                {
                    return false;
                }
                f = &f[ENCAP_OVERHEAD..];
            }
            let t = &o.tuple;
            headers(f).is_some_and(|h| {
                h == (
                    o.dst_mac.0,
                    o.src_mac.0,
                    t.proto,
                    (t.src, t.sport, t.dst, t.dport),
                )
            })
        };
        if !raw.iter().any(came) {
            return Err(format!(
                "an offer whose key no frame of the batch had as it came: {o:?}"
            ));
        }
        let matches = |f: &HeadroomBuf, d: &Disposition| {
            let mut f = f.as_ref();
            // Into the overlay: the outer headers are the offer's (but for the lengths, the
            // IPv4 checksum and the UDP source port, filled in per packet), the inner frame
            // follows.
            if let Some(OverlayLeg::Encap { outer, src_port }) = o.leg {
                let fixed = |at: usize| !ENCAP_FILLED.contains(&at);
                if f.len() < ENCAP_OVERHEAD
                    || (0..ENCAP_OVERHEAD).any(|at| fixed(at) && f[at] != outer[at])
                    || f[34..36] != src_port.to_be_bytes()
                {
                    return false;
                }
                f = &f[ENCAP_OVERHEAD..];
            }
            *d == Disposition::Forward(o.egress)
                && headers(f).is_some_and(|(dst, src, _, tuple)| {
                    (dst, src, tuple) == (o.new_dst_mac.0, o.new_src_mac.0, o.to)
                })
        };
        if o.ingress != ingress || !frames.iter().zip(next).any(|(f, d)| matches(f, d)) {
            return Err(format!("an offer no frame of the batch matches: {o:?}"));
        }
    }
    Ok(())
}

/// (source, port, destination, port) of a frame.
type Endpoints = (Ipv4Addr, u16, Ipv4Addr, u16);

/// An IPv4 frame's destination and source MAC, protocol, and endpoints, as the fast path keys
/// and rewrites them; `None` if it is too short to hold them.
fn headers(f: &[u8]) -> Option<([u8; 6], [u8; 6], u8, Endpoints)> {
    let f = f.get(..38)?;
    let port = |at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
    let addr = |at: usize| Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3]);
    Some((
        f[0..6].try_into().ok()?,
        f[6..12].try_into().ok()?,
        f[23],
        (addr(26), port(34), addr(30), port(36)),
    ))
}

fn check(
    ingress: PortId,
    before: &[usize],
    frames: &[HeadroomBuf],
    next: &[Disposition],
    emit: &[pipeline::Emit],
) -> Result<(), String> {
    for ((len, frame), d) in before.iter().zip(frames).zip(next) {
        let now = frame.as_ref().len();
        match *d {
            Disposition::Forward(p) if p > UPLINK => {
                return Err(format!("forwarded to port {p}, which is not a segment's"))
            }
            Disposition::Flood(mask) if mask.contains(ingress) => {
                return Err("flooded back out of the ingress port".into())
            }
            Disposition::Flood(mask) if mask.ports(PORTS as usize).any(|p| !PODS.contains(&p)) => {
                return Err("flooded outside the pod segment".into())
            }
            Disposition::Recirculate => return Err("a recirculated frame left the stage".into()),
            Disposition::Forward(_) | Disposition::Flood(_) => {
                if now > len + ENCAP_OVERHEAD || now > MAX_FRAME {
                    return Err(format!("a {len}-byte frame grew to {now}"));
                }
                if now < 14 {
                    return Err(format!("a {now}-byte frame was sent"));
                }
            }
            Disposition::Drop | Disposition::Consumed => {}
        }
    }
    for e in emit {
        if e.frame.len() < 14 || e.frame.len() > MAX_FRAME {
            return Err(format!("emitted a {}-byte frame", e.frame.len()));
        }
        if e.to.is_empty() || e.to.ports(PORTS as usize).any(|p| p > UPLINK) {
            return Err("emitted to no port, or to a port in no segment".into());
        }
    }
    Ok(())
}

/// What a case did, for the fuzzer's feedback: each gateway counter that moved, with the
/// order of magnitude it reached.
pub type Signature = Vec<(usize, u32)>;

/// Beyond the gateway's counters in a signature: offers made, by kind (routed or bridged, into
/// the overlay, out of it), so cases that reach the fast path's decisions are kept too.
pub const OFFER_KINDS: [&str; 3] = ["offers", "offers_into_overlay", "offers_out_of_overlay"];

/// The name of a signature entry.
pub fn signature_name(i: usize) -> &'static str {
    pipeline::GwCounter::ALL.get(i).map_or_else(
        || OFFER_KINDS[i - pipeline::GwCounter::ALL.len()],
        |c| c.name(),
    )
}

/// Runs one case. `Err` names a broken invariant; a panic is a crash.
pub fn run_case(data: &[u8]) -> Result<Signature, String> {
    let templates = templates::all();
    let initial = config(true);
    let shared = GatewayShared::new(&initial);
    let bridge = BridgeConfig {
        bindings: vec![(
            2,
            PortBinding {
                mac: pod_mac(2),
                ip: Some(POD_IPS[2]),
            },
        )],
        fdb_capacity: 64,
        fdb_port_limit: 16,
        ..Default::default()
    };
    let mut gw = Gateway::new(shared.clone(), Bridge::new(&initial.pod_bridge(&bridge)));
    gw.enable_offers();
    let mut now = 0u64;
    let mut emit = Vec::new();
    // Everyone's neighbours known first, so frames reach the deep paths.
    for (port, frame) in templates::announcements() {
        let mut batch = vec![HeadroomBuf::new(&frame, HEADROOM)];
        let mut next = [Disposition::Drop];
        gw.process(&mut batch, port, now, &mut next, &mut emit);
    }
    emit.clear();
    let mut b = Bytes { data };
    let mut batches = 0;
    let mut offered = [0u64; 3];
    while !b.is_empty() && batches < 64 {
        match b.byte() % 8 {
            0..=4 => {
                batches += 1;
                let ingress = b.byte() as PortId % PORTS;
                let n = 1 + b.byte() as usize % 8;
                let headroom = if b.byte().is_multiple_of(4) {
                    0
                } else {
                    HEADROOM
                };
                let raw: Vec<Vec<u8>> = (0..n).map(|_| frame(&mut b, &templates)).collect();
                let before: Vec<usize> = raw.iter().map(Vec::len).collect();
                let mut frames: Vec<HeadroomBuf> =
                    raw.iter().map(|f| HeadroomBuf::new(f, headroom)).collect();
                let mut next = vec![Disposition::Drop; n];
                gw.process(&mut frames, ingress, now, &mut next, &mut emit);
                check(ingress, &before, &frames, &next, &emit)?;
                emit.clear();
                let offers = std::mem::take(gw.offers_mut().expect("enabled"));
                check_offers(ingress, &raw, &frames, &next, &offers)?;
                for o in &offers {
                    offered[match o.leg {
                        None => 0,
                        Some(OverlayLeg::Encap { .. }) => 1,
                        Some(OverlayLeg::Decap { .. }) => 2,
                    }] += 1;
                }
                // What a worker does with them later: re-check and refresh.
                for o in &offers {
                    if gw.offer_holds(o, now) {
                        gw.offer_used(o, now);
                    }
                }
            }
            5 => {
                now += b.byte() as u64 * 250;
                gw.housekeeping(now, true, &mut emit);
                check(0, &[], &[], &[], &emit)?;
                emit.clear();
            }
            6 => {
                shared.reload(&config(b.byte().is_multiple_of(2)));
            }
            _ => {
                gw.forget_port(b.byte() as PortId % PORTS);
            }
        }
    }
    let counts = gw.counters().iter().map(|(_, v)| v);
    Ok(counts
        .chain(offered)
        .enumerate()
        .filter(|(_, v)| *v > 0)
        .map(|(i, v)| (i, 64 - v.leading_zeros()))
        .collect())
}

/// A case that sends template `index` once, unmutated, on its own port: the seed corpus.
pub fn seed(index: usize) -> Vec<u8> {
    let port = templates::all()[index].0;
    seed_batches(&[(port, &[index])])
}

/// A case of batches of unmutated templates (by index), each batch on its port: seeds that
/// need an earlier packet (a first fragment, the flow an ICMP error is about).
pub fn seed_batches(batches: &[(PortId, &[usize])]) -> Vec<u8> {
    let len = templates::all().len();
    let mut case = Vec::new();
    for (port, indices) in batches {
        case.extend_from_slice(&[0, *port as u8, indices.len() as u8 - 1, 1]);
        for &index in indices.iter() {
            // The chooser is a byte taken modulo the count; 7 modulo 8 means raw bytes.
            let choice = (0..4)
                .map(|k| index + k * len)
                .find(|c| c % 8 != 7 && *c < 256)
                .unwrap_or(index);
            case.extend_from_slice(&[choice as u8, 0, 4]);
        }
    }
    case
}

/// Seeds of two steps: a datagram's fragments in order, an ICMP error after its flow, and two
/// datagrams of a flow (masqueraded; into and out of the overlay): the second is offered.
pub fn compound_seeds() -> Vec<Vec<u8>> {
    let all = templates::all();
    let ipv4 = |f: &[u8]| f.len() > 38 && f[12..14] == [0x08, 0x00];
    let find = |pred: &dyn Fn(&[u8]) -> bool| {
        all.iter()
            .position(|(_, f)| ipv4(f) && pred(f))
            .expect("a template for a compound seed")
    };
    let frag = |f: &[u8]| u16::from_be_bytes([f[20], f[21]]);
    let first = find(&|f| frag(f) == 0x2000);
    let later = find(&|f| frag(f) & 0x1fff != 0);
    let flow =
        find(&|f| f[23] == 17 && f[30..34] == EXT.octets() && f[34..36] == 5353u16.to_be_bytes());
    let error = find(&|f| f[23] == 1 && f[34] == 3);
    // UDP across the overlay both ways: offered from each flow's second datagram.
    let into = find(&|f| f[23] == 17 && f[30..34] == PEER_POD.octets());
    let out_of = find(&|f| {
        f.len() > 50 + 38 && f[50 + 23] == 17 && f[50 + 26..50 + 30] == PEER_POD.octets()
    });
    vec![
        seed_batches(&[(0, &[first, later])]),
        seed_batches(&[(0, &[flow]), (UPLINK, &[error])]),
        seed_batches(&[(0, &[into, into]), (UPLINK, &[out_of, out_of])]),
        seed_batches(&[(0, &[flow, flow])]),
    ]
}
