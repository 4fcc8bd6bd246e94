//! A worker's side of the XDP fast path: which L2 flows it installed, installing new ones as
//! the bridge forwards their first frames, taking them out when the bridge's view changes,
//! and reading back what the program counted (port counters, FDB liveness).
//!
//! The bridge stays the authority: a flow is installed only when both its addresses are
//! learned where the frame came from and goes to, and removed as soon as either entry moves,
//! ages or is flushed, or a port goes.

use crate::fastpath::{Counted, FastPath, FlowKey, L2Key, FLOW_CAPACITY};
use crate::stats::{PortCounter, WorkerCounter, WorkerStats};
use pipeline::l2::Bridge;
use pipeline::wire::MacAddr;
use pipeline::PortId;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

struct Installed {
    ingress: PortId,
    egress: PortId,
    /// What the program had counted (packets, bytes) when last read.
    seen: (u64, u64),
}

pub struct FlowCache {
    fast: Arc<FastPath>,
    installed: HashMap<L2Key, Installed>,
    /// Keys not tried again until the next validation: another worker installed them first
    /// (it reads their counters), or the map refused them with an error, where trying again
    /// for every packet would cost a failing system call each.
    passed_over: HashSet<L2Key>,
    /// The map refused a key for want of room: none is tried until the next validation.
    full: bool,
}

impl FlowCache {
    pub fn new(fast: Arc<FastPath>) -> FlowCache {
        FlowCache {
            fast,
            installed: HashMap::new(),
            passed_over: HashSet::new(),
            full: false,
        }
    }

    pub fn len(&self) -> usize {
        self.installed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.installed.is_empty()
    }

    /// The bridge forwarded `frame` from `ingress` to `egress`: install its flow if it
    /// qualifies (unicast both ways, both addresses learned where they are, no port security
    /// on the ingress port, which checks every frame's addresses).
    #[allow(clippy::too_many_arguments)]
    pub fn consider(
        &mut self,
        frame: &[u8],
        ingress: PortId,
        egress: PortId,
        ifindex: &[u32],
        bridge: &Bridge,
        stats: &WorkerStats,
        now_ms: u64,
    ) {
        if frame.len() < 12 {
            return;
        }
        let (dst, src) = (
            MacAddr::from_bytes(&frame[..6]),
            MacAddr::from_bytes(&frame[6..12]),
        );
        let (Some(&in_if), Some(&out_if)) =
            (ifindex.get(ingress as usize), ifindex.get(egress as usize))
        else {
            return;
        };
        let key = L2Key {
            ifindex: in_if,
            dst: dst.0,
            src: src.0,
        };
        if in_if == 0
            || out_if == 0
            || self.installed.contains_key(&key)
            || self.passed_over.contains(&key)
            || dst.0[0] & 1 != 0
            || src.0[0] & 1 != 0
            || bridge.security().get(ingress).is_some()
            || bridge.fdb().lookup(src, now_ms) != Some(ingress)
            || bridge.fdb().lookup(dst, now_ms) != Some(egress)
        {
            return;
        }
        let w = &stats.worker;
        if self.installed.len() >= FLOW_CAPACITY as usize || self.full {
            w.add(WorkerCounter::FastPathFull as usize, 1);
            return;
        }
        match counted_install(self.fast.install(&key, egress as u32), stats) {
            Installing::Done => {
                self.installed.insert(
                    key,
                    Installed {
                        ingress,
                        egress,
                        seen: (0, 0),
                    },
                );
            }
            Installing::Foreign | Installing::Failed => {
                self.passed_over.insert(key);
            }
            Installing::Full => self.full = true,
        }
    }

    /// Takes out every flow the bridge no longer backs (an address moved, aged or was flushed;
    /// a port went). Cheap enough to run after every change of the worker's view.
    pub fn validate(
        &mut self,
        bridge: &Bridge,
        present: impl Fn(PortId) -> bool,
        stats: &WorkerStats,
        now_ms: u64,
    ) {
        remove_unbacked(&mut self.installed, &self.fast, stats, |key, f| {
            present(f.ingress)
                && present(f.egress)
                && bridge.fdb().lookup(MacAddr(key.src), now_ms) == Some(f.ingress)
                && bridge.fdb().lookup(MacAddr(key.dst), now_ms) == Some(f.egress)
        });
        // Keys passed over (another worker's, refused) can be looked at again.
        self.passed_over.clear();
        self.full = false;
    }

    /// Reads what the program counted since the last read: the ports' counters include it,
    /// and a source address that is sending keeps its FDB entry alive.
    pub fn harvest(&mut self, bridge: &mut Bridge, stats: &WorkerStats, now_ms: u64) {
        for (key, f) in self.installed.iter_mut() {
            let Some((packets, bytes)) = new_counts(&self.fast, key, &mut f.seen) else {
                continue;
            };
            count_forwarded(stats, (f.ingress, f.egress), packets, bytes, 0);
            bridge.refresh(MacAddr(key.src), f.ingress, now_ms);
        }
    }

    /// Takes out every flow (stop, or the fast path turned off).
    pub fn clear(&mut self) {
        for key in self.installed.keys() {
            let _ = self.fast.remove(key);
        }
        self.installed.clear();
        self.passed_over.clear();
        self.full = false;
    }
}

/// Counts an install's outcome.
pub(crate) fn counted_install(result: std::io::Result<bool>, stats: &WorkerStats) -> Installing {
    let w = &stats.worker;
    match result {
        Ok(true) => {
            w.add(WorkerCounter::FastPathInstalled as usize, 1);
            Installing::Done
        }
        Ok(false) => Installing::Foreign,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::E2BIG | libc::ENOMEM | libc::ENOSPC)
            ) =>
        {
            w.add(WorkerCounter::FastPathFull as usize, 1);
            Installing::Full
        }
        Err(_) => {
            w.add(WorkerCounter::FastPathErrors as usize, 1);
            Installing::Failed
        }
    }
}

/// What an install came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Installing {
    Done,
    /// Another worker installed the key first.
    Foreign,
    /// The map has no room: no key is tried again until the next validation.
    Full,
    Failed,
}

/// What the program counted for `key` since `seen` (packets, bytes), which moves on; `None`
/// when nothing new.
pub(crate) fn new_counts<K: FlowKey>(
    fast: &FastPath,
    key: &K,
    seen: &mut (u64, u64),
) -> Option<(u64, u64)> {
    counts_since(&fast.read(key).ok()??, seen)
}

/// What `now` counted beyond `seen` (packets, bytes), which moves on; `None` when nothing new.
pub(crate) fn counts_since<V: Counted>(now: &V, seen: &mut (u64, u64)) -> Option<(u64, u64)> {
    let new = (
        now.packets().saturating_sub(seen.0),
        now.bytes().saturating_sub(seen.1),
    );
    if new.0 == 0 {
        return None;
    }
    *seen = (now.packets(), now.bytes());
    Some(new)
}

/// Traffic the fast path carried, counted as the ports' and the worker's own: `bytes` as they
/// came, each packet `growth` bytes longer (VXLAN in) or shorter (out) as it left.
pub(crate) fn count_forwarded(
    stats: &WorkerStats,
    (ingress, egress): (PortId, PortId),
    packets: u64,
    bytes: u64,
    growth: i64,
) {
    let rx = &stats.ports[ingress as usize];
    rx.add(PortCounter::RxPackets as usize, packets);
    rx.add(PortCounter::RxBytes as usize, bytes);
    let tx = &stats.ports[egress as usize];
    tx.add(PortCounter::TxPackets as usize, packets);
    let sent = bytes as i64 + growth * packets as i64;
    tx.add(PortCounter::TxBytes as usize, sent.max(0) as u64);
    tx.add(PortCounter::FastPathTxPackets as usize, packets);
    stats
        .worker
        .add(WorkerCounter::FastPathPackets as usize, packets);
}

/// An installed entry as the caches' shared code sees it.
pub(crate) trait Entry {
    /// Its ingress and egress ports.
    fn ports(&self) -> (PortId, PortId);
    /// What the program had counted (packets, bytes) when last read.
    fn seen(&mut self) -> &mut (u64, u64);
    /// How much longer each packet leaves than it came.
    fn growth(&self) -> i64 {
        0
    }
    /// The overlay leg slot it holds, released when it goes.
    fn leg(&self) -> Option<u16> {
        None
    }
}

impl Entry for Installed {
    fn ports(&self) -> (PortId, PortId) {
        (self.ingress, self.egress)
    }

    fn seen(&mut self) -> &mut (u64, u64) {
        &mut self.seen
    }
}

/// Takes out of the map (and counts) every installed entry `keep` rejects; what the program
/// counted for it since the last read still goes to its ports. An entry the kernel would not
/// delete stays installed (counted as an error) and is tried again at the next validation:
/// forgotten, it would go on forwarding by a decision the switch no longer makes.
pub(crate) fn remove_unbacked<K: std::hash::Hash + Eq + FlowKey, I: Entry>(
    installed: &mut HashMap<K, I>,
    fast: &FastPath,
    stats: &WorkerStats,
    mut keep: impl FnMut(&K, &I) -> bool,
) {
    installed.retain(|key, f| keep(key, f) || !take_out(fast, stats, key, f));
}

/// Takes one entry out of the map, its last counts added to its ports first; `false` (and
/// counted as an error) when the map refused, the entry then staying installed.
pub(crate) fn take_out<K: FlowKey, I: Entry>(
    fast: &FastPath,
    stats: &WorkerStats,
    key: &K,
    f: &mut I,
) -> bool {
    if let Some((packets, bytes)) = new_counts(fast, key, f.seen()) {
        count_forwarded(stats, f.ports(), packets, bytes, f.growth());
    }
    if fast.remove(key).is_err() {
        stats.worker.add(WorkerCounter::FastPathErrors as usize, 1);
        return false;
    }
    // A leg stays taken while an entry that names it may still be in the map.
    if let Some(slot) = f.leg() {
        fast.release_leg(slot);
    }
    stats.worker.add(WorkerCounter::FastPathRemoved as usize, 1);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fastpath::{available, FlowTable, L2Flow};
    use std::cell::Cell;

    thread_local! {
        /// Deletes still to be refused.
        static REFUSALS: Cell<u32> = const { Cell::new(0) };
    }

    /// A key whose deletes fail while `REFUSALS` lasts, as the kernel's may (rarely, for
    /// reasons of its own); it never reaches the fast path's real maps.
    #[derive(PartialEq, Eq, Hash)]
    struct Refused;

    impl FlowKey for Refused {
        type Flow = L2Flow;
        fn read_from(&self, _: &FastPath) -> std::io::Result<Option<L2Flow>> {
            Ok(None)
        }
        fn remove_from(&self, _: &FastPath) -> std::io::Result<()> {
            match REFUSALS.get() {
                0 => Ok(()),
                n => {
                    REFUSALS.set(n - 1);
                    Err(std::io::Error::from_raw_os_error(libc::EBUSY))
                }
            }
        }
    }

    struct Installed {
        seen: (u64, u64),
    }

    impl Entry for Installed {
        fn ports(&self) -> (PortId, PortId) {
            (0, 1)
        }
        fn seen(&mut self) -> &mut (u64, u64) {
            &mut self.seen
        }
    }

    #[test]
    fn an_entry_the_kernel_would_not_delete_stays_installed_until_it_goes() {
        if !available() || nix::unistd::geteuid().as_raw() != 0 {
            assert!(
                std::env::var("CI").is_err(),
                "CI runs this as root, with clang"
            );
            return;
        }
        let fast = FastPath::new(FlowTable::L2).unwrap();
        let stats = WorkerStats::default();
        let mut installed = HashMap::new();
        REFUSALS.set(1);
        installed.insert(Refused, Installed { seen: (0, 0) });
        let counter = |c: WorkerCounter| stats.worker.get(c as usize);
        remove_unbacked(&mut installed, &fast, &stats, |_, _| false);
        assert_eq!(installed.len(), 1, "kept, to be removed at the next try");
        assert_eq!(counter(WorkerCounter::FastPathErrors), 1);
        assert_eq!(counter(WorkerCounter::FastPathRemoved), 0);
        remove_unbacked(&mut installed, &fast, &stats, |_, _| false);
        assert!(installed.is_empty());
        assert_eq!(counter(WorkerCounter::FastPathRemoved), 1);
    }
}
