//! The watch loop: two reflectors (Services, EndpointSlices) keep the cluster's state; an
//! applier imports it into the switch once both have listed, after each change (debounced),
//! and every `resync` anyway.
//!
//! Lost watches: kube-runtime's `watcher` resumes a watch that ends from the last
//! resourceVersion seen (bookmarks on) and retries errors with backoff; on `410 Gone`, in the
//! stream or as the answer to the watch request, a fresh watcher lists again and the store is
//! replaced by the new list.

use crate::{ctl, list};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;

use std::time::Duration;
use tokio::sync::Notify;

/// What kube-proxy leaves out, left out of the watches: another proxy's Services and
/// EndpointSlices, and headless Services' slices (nothing to proxy; each change would be an
/// import). The switch skips another proxy's Services in any import too.
const NOT_OURS: &str = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";
/// Pauses while something keeps failing: the first, doubling up to the last. Before a fresh
/// watcher after `410 Gone` (a source of 410s that does not stop must not make every node
/// list in a loop: each list succeeds, so only a watcher that lasted `HEALTHY_WATCH` starts
/// them afresh), and after a failed import.
const PAUSES: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));
const HEALTHY_WATCH: Duration = Duration::from_secs(60);

/// The pause after `last` (`None`: the first).
fn next_pause(last: Option<Duration>) -> Duration {
    last.map_or(PAUSES.0, |p| (p * 2).min(PAUSES.1))
}

pub struct Options {
    pub ctl: PathBuf,
    pub debounce: Duration,
    pub resync: Duration,
    pub max_imports: Option<u64>,
}

/// A watch error that means our resourceVersion is gone and the watcher will not list again
/// by itself: a `410 Gone` answer to the watch request (retried with the same
/// resourceVersion forever). An ERROR event with 410 it answers with a list of its own.
fn gone(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchStartFailed(kube::Error::Api(r))
        | watcher::Error::WatchFailed(kube::Error::Api(r)) => r.code == 410,
        _ => false,
    }
}

/// Watches one kind into a store; `changed` is told after every change that counts. After
/// `410 Gone` a fresh watcher lists again, and the store is replaced when that list is done.
fn watch<K>(api: Api<K>, changed: Arc<Notify>) -> Store<K>
where
    K: Resource + Clone + Debug + Send + Sync + serde::de::DeserializeOwned + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, mut writer) = reflector::store();
    let kind = K::kind(&Default::default()).into_owned();
    tokio::spawn(async move {
        let mut pause: Option<Duration> = None;
        let mut started: Option<std::time::Instant> = None;
        loop {
            if let Some(at) = started {
                if at.elapsed() >= HEALTHY_WATCH {
                    pause = None;
                }
                let now = next_pause(pause);
                tokio::time::sleep(now).await;
                pause = Some(now);
            }
            started = Some(std::time::Instant::now());
            // Managed fields and annotations (`kubectl apply` keeps a whole copy of the object
            // there) are most of an object's size and nothing the switch reads: kept out of
            // memory and of every import.
            let stream = watcher(api.clone(), watcher::Config::default().labels(NOT_OURS))
                .modify(|o| {
                    let meta = o.meta_mut();
                    meta.managed_fields = None;
                    meta.annotations = None;
                })
                .default_backoff();
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(e) if gone(&e) => {
                        tracing::warn!(kind, "watch: {e}; listing again");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(kind, "watch: {e}; retrying");
                        continue;
                    }
                };
                writer.apply_watcher_event(&event);
                match event {
                    watcher::Event::Init => tracing::info!(kind, "listing"),
                    watcher::Event::InitApply(_) => {}
                    watcher::Event::InitDone => {
                        tracing::info!(kind, "listed");
                        changed.notify_one();
                    }
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) => changed.notify_one(),
                }
            }
        }
    });
    reader
}

/// The identity of the switch's control socket: a restarted switch makes a new one. Its
/// inode, device and change time: a file system may give a new file the inode just freed.
type SocketId = (u64, u64, i64, i64);

fn socket_id(path: &std::path::Path) -> Option<SocketId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

/// Whether a socket seen now is another than the one seen before (`None`: none there).
fn new_socket(before: Option<SocketId>, now: Option<SocketId>) -> bool {
    now.is_some() && now != before
}

/// A restarted switch has no services until the next import: its new control socket asks for
/// one at once, not at the next resync.
fn watch_switch(socket: PathBuf, changed: Arc<Notify>) {
    tokio::spawn(async move {
        let mut seen = socket_id(&socket);
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = socket_id(&socket);
            if new_socket(seen, now) {
                tracing::info!("the switch's control socket is new (a restart): importing");
                changed.notify_one();
            }
            seen = now;
        }
    });
}

pub async fn run(client: Client, opts: Options) -> Result<(), String> {
    let changed = Arc::new(Notify::new());
    watch_switch(opts.ctl.clone(), changed.clone());
    let services: Store<Service> = watch(Api::all(client.clone()), changed.clone());
    let slices: Store<EndpointSlice> = watch(Api::all(client), changed.clone());
    services
        .wait_until_ready()
        .await
        .map_err(|e| format!("Services: {e}"))?;
    slices
        .wait_until_ready()
        .await
        .map_err(|e| format!("EndpointSlices: {e}"))?;
    let mut imports = 0u64;
    // After a failed import: the pause before the next, doubling while they fail (a switch
    // that refuses every import, one without --config, must not be asked every second); a
    // change, or a new control socket (a restarted switch), asks at once all the same.
    let mut retry: Option<Duration> = None;
    loop {
        let wait = retry.unwrap_or(opts.resync);
        let _ = tokio::time::timeout(wait, changed.notified()).await;
        // Let a burst of changes (a rollout) land in one import.
        tokio::time::sleep(opts.debounce).await;
        let body = list::body(&services.state(), &slices.state());
        let socket = opts.ctl.clone();
        let bytes = body.len();
        let result = tokio::task::spawn_blocking(move || ctl::import(&socket, &body))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        match result {
            Ok(summary) => {
                retry = None;
                imports += 1;
                tracing::info!(
                    bytes,
                    services = summary["services"].as_u64(),
                    endpoints = summary["endpoints"].as_u64(),
                    flows_closed = summary["flows_closed"].as_u64(),
                    unchanged = summary["unchanged"].as_bool(),
                    "imported"
                );
                // Objects that could not be read keep their running services, unsaid otherwise.
                for left_out in summary["skipped"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str())
                    .filter(|s| s.ends_with("(left out)"))
                {
                    tracing::warn!("import left out {left_out}");
                }
                if opts.max_imports.is_some_and(|m| imports >= m) {
                    return Ok(());
                }
            }
            Err(e) => {
                let pause = next_pause(retry);
                retry = Some(pause);
                tracing::warn!(
                    "import into {}: {e}; retrying in {} s",
                    opts.ctl.display(),
                    pause.as_secs()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_from_the_first_to_the_last() {
        let mut seen = Vec::new();
        let mut pause = None;
        for _ in 0..7 {
            let now = next_pause(pause);
            seen.push(now.as_secs());
            pause = Some(now);
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn a_new_control_socket_is_a_restarted_switch() {
        let (a, b) = (Some((1, 7, 100, 5)), Some((1, 8, 100, 5)));
        assert!(!new_socket(a, a));
        assert!(new_socket(a, b), "replaced");
        assert!(
            new_socket(a, Some((1, 7, 101, 0))),
            "replaced by a file of the same inode"
        );
        assert!(new_socket(None, b), "came back after being gone");
        assert!(!new_socket(a, None), "gone: nothing to import into");
        assert!(!new_socket(None, None));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        assert_eq!(socket_id(&path), None);
        std::fs::write(&path, "").unwrap();
        assert!(socket_id(&path).is_some());
    }
}
