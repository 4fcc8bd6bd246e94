//! A worker's side of the gateway's fast path: installing what the gateway offered (a
//! decision for an established flow, see `pipeline::gateway::FlowOffer`) as a 5-tuple entry
//! with its rewrite, taking entries out when the gateway would no longer decide the same way,
//! and reading back what the program counted (port counters, conntrack and FDB liveness).
//!
//! The gateway stays the authority: every entry is re-checked against it (`offer_holds`)
//! whenever something it depends on may have changed (its generation moved), after commands,
//! and each second; a reload takes them all.

use crate::fastpath::{
    FastPath, HashWalk, TupleFlow, TupleKey, FLOW_CAPACITY, INNER, OUTER, OUTER_LEN,
};
use crate::flowcache::{
    count_forwarded, counted_install, counts_since, new_counts, remove_unbacked, take_out, Entry,
    Installing,
};
use crate::stats::{WorkerCounter, WorkerStats};
use pipeline::gateway::{FlowOffer, Gateway, OverlayLeg};
use pipeline::{PortId, PortMask};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// At most this often a changed generation re-checks the entries (flows expire all the time
/// on a busy node; each check walks every entry).
const REVALIDATE_MS: u64 = 5;

/// Entries one step of a harvest reads (one system call): a harvest of the whole table at
/// once (65,536 entries, a call each) held a worker for 90 ms of every second.
const HARVEST_STEP: usize = 256;

/// Entries one step of a validation checks (about 0.2 µs each): a validation of the whole
/// table at once held a worker for 12 ms with 60,000 entries.
const VALIDATE_STEP: usize = 1024;

struct Installed {
    offer: FlowOffer,
    /// The ports' interfaces when installed (a port id may come back as another interface).
    ifindex: (u32, u32),
    /// What the program had counted (packets, bytes) when last read.
    seen: (u64, u64),
    /// The overlay leg's slot, for a flow into or out of the overlay.
    leg: Option<u16>,
}

impl Entry for Installed {
    fn ports(&self) -> (PortId, PortId) {
        (self.offer.ingress, self.offer.egress)
    }

    fn seen(&mut self) -> &mut (u64, u64) {
        &mut self.seen
    }

    fn growth(&self) -> i64 {
        match self.offer.leg {
            Some(OverlayLeg::Encap { .. }) => OUTER_LEN as i64,
            Some(OverlayLeg::Decap { .. }) => -(OUTER_LEN as i64),
            None => 0,
        }
    }

    fn leg(&self) -> Option<u16> {
        self.leg
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
    /// Keys not tried again until the next validation: another worker installed them first
    /// (it reads their counters), or they were refused (an error, no overlay leg free), where
    /// trying again for every packet would cost a failing system call each.
    passed_over: HashSet<TupleKey>,
    /// The map refused a key for want of room: none is tried until the next validation.
    full: bool,
    generation: u64,
    epoch: u64,
    validated_ms: u64,
    /// The harvest under way, a step per worker pass (`harvest_step`).
    harvest: Option<HashWalk>,
    /// A step's entries, kept for its allocation.
    harvested: Vec<(TupleKey, TupleFlow)>,
    /// The entries a validation under way has still to check (`validation_step`).
    unchecked: Vec<TupleKey>,
}

impl TupleCache {
    pub fn new(fast: Arc<FastPath>, gateway: &Gateway) -> TupleCache {
        TupleCache {
            fast,
            installed: HashMap::new(),
            passed_over: HashSet::new(),
            full: false,
            generation: gateway.offer_generation(),
            epoch: gateway.policy_epoch(),
            validated_ms: 0,
            harvest: None,
            harvested: Vec::new(),
            unchecked: Vec::new(),
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
                || self.passed_over.contains(&key)
                || !gateway.offer_holds(&offer, now_ms)
            {
                continue;
            }
            if self.installed.len() >= FLOW_CAPACITY as usize || self.full {
                w.add(WorkerCounter::FastPathFull as usize, 1);
                continue;
            }
            let (value, leg) = match self.value_of(&offer, &key) {
                Ok(Some(v)) => v,
                Ok(None) => {
                    w.add(WorkerCounter::FastPathFull as usize, 1);
                    self.passed_over.insert(key);
                    continue;
                }
                Err(_) => {
                    w.add(WorkerCounter::FastPathErrors as usize, 1);
                    self.passed_over.insert(key);
                    continue;
                }
            };
            let installed = counted_install(self.fast.install_tuple(&key, value), stats);
            if installed != Installing::Done {
                if let Some(slot) = leg {
                    self.fast.release_leg(slot);
                }
            }
            match installed {
                Installing::Done => {
                    self.installed.insert(
                        key,
                        Installed {
                            offer,
                            ifindex: (in_if, out_if),
                            seen: (0, 0),
                            leg,
                        },
                    );
                }
                Installing::Foreign | Installing::Failed => {
                    self.passed_over.insert(key);
                }
                Installing::Full => self.full = true,
            }
        }
        // Its room is kept for the next batch's offers.
        if let Some(empty) = gateway.offers_mut() {
            *empty = offers;
        }
    }

    /// Re-checks the entries if the gateway's generation moved (at most every few ms), in
    /// steps: one step per call while a validation is under way. A change during one is
    /// followed by another once it ends.
    pub fn revalidate_if_changed(&mut self, gateway: &mut Gateway, ports: &Ports<'_>, now_ms: u64) {
        if self.installed.is_empty() && self.passed_over.is_empty() && !self.full {
            self.generation = gateway.offer_generation();
            self.epoch = gateway.policy_epoch();
            self.unchecked.clear();
            return;
        }
        if gateway.policy_epoch() != self.epoch {
            // A reload takes every entry at once, also during a validation in steps.
            self.validate(gateway, ports, now_ms);
        } else if self.validating() {
            self.validation_step(gateway, ports, now_ms);
        } else if gateway.offer_generation() != self.generation
            && now_ms >= self.validated_ms + REVALIDATE_MS
        {
            self.start_validation(gateway, ports, now_ms);
        }
    }

    /// Begins a validation done in steps (`validation_step`, from `revalidate_if_changed`):
    /// what `validate` does, spread over the worker's passes. After a reload every entry goes
    /// at once, as `validate` takes them.
    pub fn start_validation(&mut self, gateway: &mut Gateway, ports: &Ports<'_>, now_ms: u64) {
        // The generation first, as `validate` reads them: a reload moves the epoch after it.
        let generation = gateway.offer_generation();
        if gateway.policy_epoch() != self.epoch {
            return self.validate(gateway, ports, now_ms);
        }
        self.generation = generation;
        self.validated_ms = now_ms;
        self.unchecked.clear();
        self.unchecked.extend(self.installed.keys().copied());
        self.passed_over.clear();
        self.full = false;
        self.validation_step(gateway, ports, now_ms);
    }

    /// Whether a validation is under way.
    pub fn validating(&self) -> bool {
        !self.unchecked.is_empty()
    }

    /// Checks the next `VALIDATE_STEP` entries of the validation under way, taking out those
    /// the gateway no longer backs.
    fn validation_step(&mut self, gateway: &mut Gateway, ports: &Ports<'_>, now_ms: u64) {
        let from = self.unchecked.len().saturating_sub(VALIDATE_STEP);
        for key in self.unchecked.drain(from..) {
            let Some(f) = self.installed.get_mut(&key) else {
                continue;
            };
            if backed(f, gateway, ports, now_ms) {
                continue;
            }
            if take_out(&self.fast, ports.stats, &key, f) {
                self.installed.remove(&key);
            }
        }
        if self.unchecked.is_empty() {
            // Keys refused during the walk may fit in what it freed.
            self.passed_over.clear();
            self.full = false;
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
        remove_unbacked(&mut self.installed, &self.fast, stats, |_, f| {
            !reloaded && backed(f, gateway, ports, now_ms)
        });
        // Whatever a validation under way had still to check is checked.
        self.unchecked.clear();
        self.passed_over.clear();
        self.full = false;
    }

    /// Reads what the program counted since the last read: the ports' counters include it,
    /// and the flows (and bridged sources) it forwarded stay alive in the gateway's tables.
    /// At once, an entry at a time (stop, or where the kernel cannot read in batches).
    pub fn harvest(&mut self, gateway: &mut Gateway, stats: &WorkerStats, now_ms: u64) {
        self.harvest = None;
        for (key, f) in self.installed.iter_mut() {
            let Some((packets, bytes)) = new_counts(&self.fast, key, &mut f.seen) else {
                continue;
            };
            count_forwarded(stats, f.ports(), packets, bytes, f.growth());
            gateway.offer_used(&f.offer, now_ms);
        }
    }

    /// Begins a harvest done in steps (`harvest_step`), the same reading as `harvest`
    /// spread over the worker's passes, unless one is under way.
    pub fn start_harvest(&mut self) {
        // One under way goes on: started over each second, a slow one would never reach the
        // map's last buckets.
        if self.harvest.is_none() && !self.installed.is_empty() {
            self.harvest = Some(HashWalk::default());
        }
    }

    /// Whether a harvest is under way.
    pub fn harvesting(&self) -> bool {
        self.harvest.is_some()
    }

    /// The harvest's next `HARVEST_STEP` entries of the map (the other workers' too, which
    /// are passed over). A kernel without batch reads gets the rest of it at once.
    pub fn harvest_step(&mut self, gateway: &mut Gateway, stats: &WorkerStats, now_ms: u64) {
        let Some(walk) = self.harvest.as_mut() else {
            return;
        };
        if self
            .fast
            .read_hashed_batch(walk, HARVEST_STEP, &mut self.harvested)
            .is_err()
        {
            return self.harvest(gateway, stats, now_ms);
        }
        if walk.is_done() {
            self.harvest = None;
        }
        for (key, now) in &self.harvested {
            let Some(f) = self.installed.get_mut(key) else {
                continue;
            };
            let Some((packets, bytes)) = counts_since(now, &mut f.seen) else {
                continue;
            };
            count_forwarded(stats, f.ports(), packets, bytes, f.growth());
            gateway.offer_used(&f.offer, now_ms);
        }
    }

    /// Takes out every entry (stop).
    pub fn clear(&mut self) {
        for (key, f) in &self.installed {
            if self.fast.remove(key).is_ok() {
                if let Some(slot) = f.leg {
                    self.fast.release_leg(slot);
                }
            }
        }
        self.installed.clear();
        self.passed_over.clear();
        self.full = false;
    }
}

/// Whether the gateway still decides `f`'s flow as installed, through the same ports.
fn backed(f: &Installed, gateway: &mut Gateway, ports: &Ports<'_>, now_ms: u64) -> bool {
    let o = &f.offer;
    ports.attached(o.ingress) == Some(f.ifindex.0)
        && ports.attached(o.egress) == Some(f.ifindex.1)
        && gateway.offer_holds(o, now_ms)
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
        layer: match o.leg {
            Some(OverlayLeg::Decap { .. }) => INNER,
            _ => OUTER,
        },
        pad: [0; 2],
    }
}

impl TupleCache {
    /// The program's value for an offer, and the overlay leg slot it holds (acquired here);
    /// `None` when the overlay legs are all taken.
    fn value_of(
        &self,
        o: &FlowOffer,
        key: &TupleKey,
    ) -> std::io::Result<Option<(TupleFlow, Option<u16>)>> {
        let (src, sport, dst, dport) = o.to;
        let flow = TupleFlow::rewrite(
            key,
            o.egress as u32,
            o.max_len,
            (o.new_dst_mac.0, o.new_src_mac.0),
            (
                src.octets(),
                sport.to_be_bytes(),
                dst.octets(),
                dport.to_be_bytes(),
            ),
            o.next_hop.is_some(),
        );
        let outer = match &o.leg {
            None => return Ok(Some((flow, None))),
            Some(OverlayLeg::Encap { outer, .. } | OverlayLeg::Decap { outer, .. }) => outer,
        };
        let Some(slot) = self.fast.acquire_leg(outer)? else {
            return Ok(None);
        };
        let flow = match o.leg {
            Some(OverlayLeg::Encap { src_port, .. }) => flow.into_overlay(slot, src_port),
            _ => flow.out_of_overlay(slot),
        };
        Ok(Some((flow, Some(slot))))
    }
}
