//! A worker's side of the gateway's fast path: installing what the gateway offered (a
//! decision for an established flow, see `pipeline::gateway::FlowOffer`) as a 5-tuple entry
//! with its rewrite, taking entries out when the gateway would no longer decide the same way,
//! and reading back what the program counted (port counters, conntrack and FDB liveness).
//!
//! The gateway stays the authority: every entry is re-checked against it (`offer_holds`)
//! whenever something it depends on may have changed (its generation moved), after commands,
//! and each second; a reload takes them all.

use crate::fastpath::{FastPath, TupleFlow, TupleKey, FLOW_CAPACITY};
use crate::flowcache::{count_forwarded, counted_install, new_counts, remove_unbacked, Entry};
use crate::stats::{WorkerCounter, WorkerStats};
use pipeline::gateway::{FlowOffer, Gateway};
use pipeline::{PortId, PortMask};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// At most this often a changed generation re-checks the entries (flows expire all the time
/// on a busy node; each check walks every entry).
const REVALIDATE_MS: u64 = 5;

struct Installed {
    offer: FlowOffer,
    /// The ports' interfaces when installed (a port id may come back as another interface).
    ifindex: (u32, u32),
    /// What the program had counted (packets, bytes) when last read.
    seen: (u64, u64),
}

impl Entry for Installed {
    fn ports(&self) -> (PortId, PortId) {
        (self.offer.ingress, self.offer.egress)
    }

    fn seen(&mut self) -> &mut (u64, u64) {
        &mut self.seen
    }
}

/// The worker's view of its ports, as the cache needs it.
pub struct Ports<'a> {
    /// Per port: its interface index (0: absent).
    pub ifindex: &'a [u32],
    pub present: PortMask,
    pub stats: &'a WorkerStats,
}

impl Ports<'_> {
    /// The interface of a port that is attached now.
    fn attached(&self, port: PortId) -> Option<u32> {
        let ifindex = *self.ifindex.get(port as usize)?;
        (ifindex != 0 && self.present.contains(port)).then_some(ifindex)
    }
}

pub struct TupleCache {
    fast: Arc<FastPath>,
    installed: HashMap<TupleKey, Installed>,
    /// Keys another worker installed first (it reads their counters).
    foreign: HashSet<TupleKey>,
    generation: u64,
    epoch: u64,
    validated_ms: u64,
}

impl TupleCache {
    pub fn new(fast: Arc<FastPath>, gateway: &Gateway) -> TupleCache {
        TupleCache {
            fast,
            installed: HashMap::new(),
            foreign: HashSet::new(),
            generation: gateway.offer_generation(),
            epoch: gateway.policy_epoch(),
            validated_ms: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.installed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.installed.is_empty()
    }

    /// Installs what the gateway offered in the last batch, each offer re-checked (a later
    /// frame of the batch may have closed its flow or moved its addresses).
    pub fn install(&mut self, gateway: &mut Gateway, ports: &Ports<'_>, now_ms: u64) {
        let Some(offers) = gateway.offers_mut().filter(|o| !o.is_empty()) else {
            return;
        };
        let mut offers = std::mem::take(offers);
        let stats = ports.stats;
        let w = &stats.worker;
        for offer in offers.drain(..) {
            let (Some(in_if), Some(out_if)) =
                (ports.attached(offer.ingress), ports.attached(offer.egress))
            else {
                continue;
            };
            let key = key_of(&offer, in_if);
            if self.installed.contains_key(&key)
                || self.foreign.contains(&key)
                || !gateway.offer_holds(&offer, now_ms)
            {
                continue;
            }
            if self.installed.len() >= FLOW_CAPACITY as usize {
                w.add(WorkerCounter::FastPathFull as usize, 1);
                continue;
            }
            match counted_install(self.fast.install_tuple(&key, value_of(&offer, &key)), stats) {
                Some(true) => {
                    self.installed.insert(
                        key,
                        Installed {
                            offer,
                            ifindex: (in_if, out_if),
                            seen: (0, 0),
                        },
                    );
                }
                Some(false) => {
                    self.foreign.insert(key);
                }
                None => {}
            }
        }
        // Its room is kept for the next batch's offers.
        if let Some(empty) = gateway.offers_mut() {
            *empty = offers;
        }
    }

    /// Re-checks the entries if the gateway's generation moved (at most every few ms).
    pub fn revalidate_if_changed(&mut self, gateway: &mut Gateway, ports: &Ports<'_>, now_ms: u64) {
        if self.installed.is_empty() && self.foreign.is_empty() {
            self.generation = gateway.offer_generation();
            self.epoch = gateway.policy_epoch();
            return;
        }
        if gateway.offer_generation() != self.generation
            && now_ms >= self.validated_ms + REVALIDATE_MS
        {
            self.validate(gateway, ports, now_ms);
        }
    }

    /// Takes out every entry the gateway would no longer decide the same way; all of them
    /// after a reload.
    pub fn validate(&mut self, gateway: &mut Gateway, ports: &Ports<'_>, now_ms: u64) {
        self.generation = gateway.offer_generation();
        self.validated_ms = now_ms;
        let reloaded = gateway.policy_epoch() != self.epoch;
        self.epoch = gateway.policy_epoch();
        let stats = ports.stats;
        remove_unbacked::<_, _, TupleFlow>(&mut self.installed, &self.fast, stats, |_, f| {
            let o = &f.offer;
            !reloaded
                && ports.attached(o.ingress) == Some(f.ifindex.0)
                && ports.attached(o.egress) == Some(f.ifindex.1)
                && gateway.offer_holds(o, now_ms)
        });
        self.foreign.clear();
    }

    /// Reads what the program counted since the last read: the ports' counters include it,
    /// and the flows (and bridged sources) it forwarded stay alive in the gateway's tables.
    pub fn harvest(&mut self, gateway: &mut Gateway, stats: &WorkerStats, now_ms: u64) {
        for (key, f) in self.installed.iter_mut() {
            let Some((packets, bytes)) = new_counts::<_, TupleFlow>(&self.fast, key, &mut f.seen)
            else {
                continue;
            };
            count_forwarded(stats, f.offer.ingress, f.offer.egress, packets, bytes);
            gateway.offer_used(&f.offer, now_ms);
        }
    }

    /// Takes out every entry (stop).
    pub fn clear(&mut self) {
        for key in self.installed.keys() {
            let _ = self.fast.remove(key);
        }
        self.installed.clear();
        self.foreign.clear();
    }
}

fn key_of(o: &FlowOffer, ingress_ifindex: u32) -> TupleKey {
    let t = &o.tuple;
    TupleKey {
        ifindex: ingress_ifindex,
        dst: o.dst_mac.0,
        src: o.src_mac.0,
        saddr: t.src.octets(),
        daddr: t.dst.octets(),
        sport: t.sport.to_be_bytes(),
        dport: t.dport.to_be_bytes(),
        proto: t.proto,
        pad: [0; 3],
    }
}

fn value_of(o: &FlowOffer, key: &TupleKey) -> TupleFlow {
    let (src, sport, dst, dport) = o.to;
    // An unknown MTU is not checked by the gateway either.
    let max_len = match o.mtu {
        0 => u16::MAX,
        mtu => mtu.min(u16::MAX as u32) as u16,
    };
    TupleFlow::rewrite(
        key,
        o.egress as u32,
        max_len,
        (o.new_dst_mac.0, o.new_src_mac.0),
        (
            src.octets(),
            sport.to_be_bytes(),
            dst.octets(),
            dport.to_be_bytes(),
        ),
        o.next_hop.is_some(),
    )
}
