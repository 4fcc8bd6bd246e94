//! Who else ran on a worker's core, from /proc.
//!
//! A busy-polling worker serves its rings only while it runs: every millisecond another task
//! holds its core, frames wait and rings overflow. On veth the usual other task is the core's
//! softirq thread (`ksoftirqd/N`): a frame the worker transmits is received by the peer's NAPI
//! on the same core, and once that work outlasts the kernel's softirq budget the rest is handed
//! to the thread, which then competes with the worker for the core.

/// Counters of the calling thread and its core, each `None` where /proc cannot say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreShare {
    /// Times the kernel took the thread off its core for another task.
    pub preemptions: Option<u64>,
    /// Nanoseconds the thread was runnable but waited for its core (schedstat's run delay).
    pub waited_ns: Option<u64>,
    /// Milliseconds the hypervisor ran something else while the core wanted to run (steal).
    pub steal_ms: Option<u64>,
    /// Nanoseconds the core's softirq thread ran.
    pub softirq_thread_ns: Option<u64>,
    /// Nanoseconds the core's softirq thread was runnable but waited for the core: the work
    /// handed to it (a pod's receive, on veth) waited that long, though the worker ran.
    pub softirq_thread_waited_ns: Option<u64>,
}

/// Reads the counters of the calling thread on `core` and tells what grew since it started.
pub struct CoreWatch {
    core: Option<usize>,
    softirq_thread: Option<u32>,
    start: CoreShare,
}

impl CoreWatch {
    /// Call from the thread to watch, after pinning it to `core` (if any).
    pub fn start(core: Option<usize>) -> Self {
        let mut watch = CoreWatch {
            core,
            softirq_thread: core.and_then(softirq_thread_of),
            start: CoreShare::default(),
        };
        watch.start = watch.read();
        watch
    }

    fn read(&self) -> CoreShare {
        let (_, waited_ns) = thread_schedstat("/proc/thread-self/schedstat").unzip();
        let (softirq_thread_ns, softirq_thread_waited_ns) = self
            .softirq_thread
            .and_then(|pid| thread_schedstat(&format!("/proc/{pid}/schedstat")))
            .unzip();
        CoreShare {
            preemptions: involuntary_switches(),
            waited_ns,
            steal_ms: self.core.and_then(steal_ms),
            softirq_thread_ns,
            softirq_thread_waited_ns,
        }
    }

    /// What grew since `start` (preemptions: since the thread began).
    pub fn since_start(&self) -> CoreShare {
        let now = self.read();
        let grew = |now: Option<u64>, then: Option<u64>| Some(now?.saturating_sub(then?));
        CoreShare {
            preemptions: now.preemptions,
            waited_ns: grew(now.waited_ns, self.start.waited_ns),
            steal_ms: grew(now.steal_ms, self.start.steal_ms),
            softirq_thread_ns: grew(now.softirq_thread_ns, self.start.softirq_thread_ns),
            softirq_thread_waited_ns: grew(
                now.softirq_thread_waited_ns,
                self.start.softirq_thread_waited_ns,
            ),
        }
    }
}

/// How often the kernel took the calling thread off its core for another (preemptions).
fn involuntary_switches() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
}

/// A thread's (time on a CPU, time runnable waiting for one) in nanoseconds, from a
/// schedstat file.
fn thread_schedstat(path: &str) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    Some((fields.next()??, fields.next()??))
}

/// Milliseconds of steal time of `core`, from /proc/stat (USER_HZ = 100 ticks, the ABI).
fn steal_ms(core: usize) -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{core}");
    let mut fields = stat
        .lines()
        .map(str::split_whitespace)
        .find_map(|mut f| (f.next() == Some(name.as_str())).then_some(f))?;
    let ticks: u64 = fields.nth(7)?.parse().ok()?;
    Some(ticks * 10)
}

/// The pid of `ksoftirqd/<core>`, found by name once.
fn softirq_thread_of(core: usize) -> Option<u32> {
    let name = format!("ksoftirqd/{core}");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim_end() == name).then_some(pid)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threads_own_counters_and_its_cores_softirq_thread_are_read_from_proc() {
        let watch = CoreWatch::start(Some(0));
        let grew = watch.since_start();
        assert!(grew.preemptions.is_some());
        assert!(grew.waited_ns.is_some(), "schedstat of this thread");
        assert!(grew.steal_ms.is_some());
        // Kernel threads are seen where /proc is the host's (pid 2 is kthreadd), not in a
        // container's own pid namespace.
        let host = std::fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd");
        if host {
            assert!(watch.softirq_thread.is_some(), "ksoftirqd/0 exists");
            assert!(grew.softirq_thread_ns.is_some(), "schedstat of ksoftirqd/0");
            assert!(grew.softirq_thread_waited_ns.is_some());
        }
    }

    #[test]
    fn a_core_without_a_softirq_thread_reads_as_unknown() {
        let watch = CoreWatch::start(Some(1 << 20));
        assert_eq!(watch.since_start().softirq_thread_ns, None);
        assert_eq!(watch.since_start().steal_ms, None);
    }
}
