//! Keeps the process's other threads (control socket, metrics, logging, stats) off the cores
//! the workers are pinned to, as OVS keeps non-PMD threads off PMD cores: a control command
//! that runs on a busy-polling worker's core preempts it, and its ports' rings overflow.

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// Moves every thread of this process, and so every thread they start later, to the allowed
/// cores that no worker is pinned to. Returns those cores; empty (and nothing changed) when
/// the workers take every allowed core or none is pinned.
pub fn keep_off_worker_cores(worker_cores: &[usize]) -> Vec<usize> {
    let Some((spare, cores)) = spare_cores(worker_cores) else {
        return Vec::new();
    };
    let threads = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok());
    for tid in threads {
        // A thread that exited meanwhile is no error.
        let _ = sched_setaffinity(Pid::from_raw(tid), &spare);
    }
    cores
}

/// The cores this process may run on that no worker is pinned to, if any.
fn spare_cores(worker_cores: &[usize]) -> Option<(CpuSet, Vec<usize>)> {
    if worker_cores.is_empty() {
        return None;
    }
    let allowed = sched_getaffinity(Pid::from_raw(0)).ok()?;
    let mut spare = CpuSet::new();
    let mut cores = Vec::new();
    for core in 0..CpuSet::count() {
        if allowed.is_set(core).unwrap_or(false)
            && !worker_cores.contains(&core)
            && spare.set(core).is_ok()
        {
            cores.push(core);
        }
    }
    (!cores.is_empty()).then_some((spare, cores))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<usize> {
        let set = sched_getaffinity(Pid::from_raw(0)).unwrap();
        (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap())
            .collect()
    }

    #[test]
    fn no_pinned_workers_leaves_the_threads_alone() {
        assert!(keep_off_worker_cores(&[]).is_empty());
    }

    #[test]
    fn the_spare_cores_are_the_allowed_ones_without_the_workers() {
        let all = allowed();
        match spare_cores(&all[..1]) {
            Some((_, spare)) => assert_eq!(spare, all[1..]),
            None => assert_eq!(all.len(), 1),
        }
        assert!(spare_cores(&all).is_none());
    }
}
