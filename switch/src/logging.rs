//! Logging through `tracing` (`RUST_LOG`, default `info`) to stderr, without ever blocking the
//! switch: lines go through a bounded queue to a thread of their own, and when stderr is not
//! read (a full pipe) they are dropped rather than stalling the control thread. What the
//! switch prints on stdout while it runs (the start line, reloads, `--stats-interval` rates)
//! goes the same way (`print`), the exit report too, waited for at exit (`finish_printing`).

use crossbeam_channel::{bounded, Sender, TrySendError};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const QUEUE: usize = 1024;
const PRINT_QUEUE: usize = 256;

/// Lines on their way to a writer thread; what found the queue full is counted, not waited
/// for.
#[derive(Clone)]
struct Queue {
    lines: Sender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

impl Queue {
    fn new(capacity: usize) -> (Queue, crossbeam_channel::Receiver<Vec<u8>>) {
        let (lines, rx) = bounded(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        (Queue { lines, dropped }, rx)
    }

    fn send(&self, buf: &[u8]) {
        if let Err(TrySendError::Full(_)) = self.lines.try_send(buf.to_vec()) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Write for Queue {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.send(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn init() {
    let (queue, rx) = Queue::new(QUEUE);
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

/// The running switch's stdout: a queue to its writer thread.
struct Printer {
    queue: Queue,
    writer: std::thread::JoinHandle<()>,
}

static PRINTER: std::sync::Mutex<Option<Printer>> = std::sync::Mutex::new(None);

/// Starts the stdout writer thread (`print` writes directly until then).
pub fn start_printing() {
    // Whole reports (a `--stats-interval` round is one): fewer than the log's lines.
    let (queue, rx) = Queue::new(PRINT_QUEUE);
    let Ok(writer) = std::thread::Builder::new()
        .name("vswitch-out".into())
        .spawn(move || {
            for text in rx {
                write_out(&text);
            }
        })
    else {
        return;
    };
    let printer = Printer { queue, writer };
    *PRINTER.lock().unwrap_or_else(|e| e.into_inner()) = Some(printer);
}

/// Prints `text` on stdout without waiting for it: a stdout nobody reads (a full pipe) costs
/// the switch lines, counted, never its control thread.
pub fn print(text: &str) {
    let printer = PRINTER.lock().unwrap_or_else(|e| e.into_inner());
    match printer.as_ref() {
        Some(p) => p.queue.send(text.as_bytes()),
        None => write_out(text.as_bytes()),
    }
}

/// At exit: waits up to `patience` until what `print` queued (the exit report last) is
/// written. A stdout nobody reads must not keep the switch from exiting: what is still queued
/// then is lost.
pub fn finish_printing(patience: std::time::Duration) {
    let printer = PRINTER.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(p) = printer else { return };
    let dropped = p.queue.dropped.load(Ordering::Relaxed);
    if dropped > 0 {
        // Said on stderr (its own queue): stdout is what was not read.
        tracing::warn!(dropped, "lines of output dropped while stdout was not read");
    }
    drop(p.queue);
    let deadline = std::time::Instant::now() + patience;
    while !p.writer.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A closed stdout (piped to `head`) must not stop the switch.
fn write_out(text: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text);
    let _ = out.flush();
}
