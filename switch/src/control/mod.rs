//! The control socket (`--ctl PATH`) and its client (`vswitch ctl`).
//!
//! Protocol: the client sends one line, a JSON object `{"args": ["show", "ports"]}`, and reads
//! one line back: `{"ok": true, "result": {...}}` or `{"ok": false, "error": "..."}`. `import`
//! carries a body: its line says `"body_len": N` and N bytes follow it (the JSON to import, as
//! it is, so no escaping and no size limit of a line), at most `MAX_BODY`.
//! Connections are served by their own threads; what needs the datapath goes to the main
//! thread as a `Request` over a bounded channel, and the workers are reached only through
//! their own bounded command channels, so no client can stall a worker.

pub mod client;
pub mod commands;
pub mod server;
pub mod table;

use crossbeam_channel::{Receiver, Sender};
use pmd::Captured;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_SOCKET: &str = "/run/vswitch/vswitch.sock";
/// Longest request line.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Largest request body (an import): `kubectl ... -o json` of 10,000 Services and 100,000
/// endpoints is about 78 MiB (scripts/k8s_scale.py); room for larger objects than those.
pub const MAX_BODY: usize = 128 << 20;

/// What a connection asks of the main thread.
pub enum RequestKind {
    Ctl(Vec<String>),
    /// `import`, its JSON already parsed.
    /// The list, and what to do with an item that cannot be read.
    Import(Box<crate::k8s::List>, crate::k8s::Invalid),
    Metrics,
}

pub struct Request {
    pub kind: RequestKind,
    pub reply: Sender<Outcome>,
}

/// The main thread's answer.
pub enum Outcome {
    Json(serde_json::Value),
    Text(String),
    Error(String),
    /// Frames of a captured port arrive on `frames`; the connection writes them, then says
    /// it `ended` in `state` (whose `lost` counts frames the workers had no room for).
    Capture {
        frames: Receiver<Captured>,
        state: std::sync::Arc<pmd::CaptureState>,
        count: usize,
        out: PathBuf,
        timeout: Duration,
        port: String,
    },
}
