//! The switch's control socket, as `vswitch ctl import` uses it: one JSON line
//! `{"args": ["import"], "body_len": N}`, the N bytes of the List, then one JSON line back.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Longest answer read back (an import's summary is small).
const MAX_ANSWER: u64 = 1 << 20;

/// Sends `body` (a List of Services and EndpointSlices) to the switch; its summary, or why not.
pub fn import(socket: &Path, body: &[u8]) -> Result<Value, String> {
    let at = |e: std::io::Error| format!("{}: {e}", socket.display());
    let mut stream = UnixStream::connect(socket).map_err(at)?;
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .map_err(at)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(at)?;
    // One object of the cluster that cannot be read must not stop every update: it is left
    // out (and named in the answer's `skipped`).
    let mut line =
        json!({ "args": ["import", "--skip-invalid"], "body_len": body.len() }).to_string();
    line.push('\n');
    let sent = stream
        .write_all(line.as_bytes())
        .and_then(|_| stream.write_all(body));
    let mut answer = String::new();
    let read = BufReader::new((&stream).take(MAX_ANSWER)).read_line(&mut answer);
    if answer.is_empty() {
        sent.map_err(at)?;
        read.map_err(at)?;
        return Err(format!("{}: no answer", socket.display()));
    }
    let v: Value = serde_json::from_str(answer.trim())
        .map_err(|e| format!("{}: malformed answer: {e}", socket.display()))?;
    if v["ok"] == true {
        Ok(v["result"].clone())
    } else {
        Err(v["error"].as_str().unwrap_or("refused").to_string())
    }
}
