//! Logging through `tracing` (`RUST_LOG`, default `info`) to stderr, without ever blocking the
//! switch: lines go through a bounded queue to a thread of their own, and when stderr is not
//! read (a full pipe) they are dropped rather than stalling the control thread.

use crossbeam_channel::{bounded, Sender, TrySendError};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const QUEUE: usize = 1024;

#[derive(Clone)]
struct Queue {
    lines: Sender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

impl Write for Queue {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Err(TrySendError::Full(_)) = self.lines.try_send(buf.to_vec()) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn init() {
    let (lines, rx) = bounded::<Vec<u8>>(QUEUE);
    let queue = Queue {
        lines,
        dropped: Arc::new(AtomicU64::new(0)),
    };
    let dropped = queue.dropped.clone();
    let _ = std::thread::Builder::new()
        .name("vswitch-log".into())
        .spawn(move || {
            let mut seen = 0;
            for line in rx {
                let mut err = std::io::stderr().lock();
                let now = dropped.load(Ordering::Relaxed);
                if now > seen {
                    let _ = writeln!(
                        err,
                        "vswitch: {} log lines dropped (stderr not read)",
                        now - seen
                    );
                    seen = now;
                }
                let _ = err.write_all(&line);
            }
        });
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || queue.clone())
        .with_ansi(false)
        .with_target(false)
        .init();
    // A panicking worker is reported where the operator looks, then the process exits non-zero.
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("?"), "panic: {info}");
        default(info);
    }));
}
