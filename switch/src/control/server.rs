//! The control socket: a Unix stream socket, mode 0600, served one thread per connection
//! (at most `MAX_CLIENTS` at once). A request is one bounded line read under a deadline (an
//! import's body follows it, bounded too); a malformed, oversized or slow request gets an error
//! and touches nothing.

use super::{Outcome, Request, RequestKind, MAX_BODY, MAX_REQUEST};
use crate::capture;
use crossbeam_channel::Sender;
use serde_json::{json, Value};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAX_CLIENTS: usize = 16;
const READ_TIMEOUT: Duration = Duration::from_secs(2);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request body (an import) may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request may wait for the main thread (port changes wait on workers, bounded).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// The listening socket; its file is removed when this is dropped.
pub struct ControlSocket {
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Binds `path` with mode 0600, so only its owner (the user running the switch) and root can
/// connect. A socket file left by a switch that was killed is replaced; one that answers
/// belongs to a running switch and is refused.
pub fn bind(path: &Path) -> Result<(UnixListener, ControlSocket), String> {
    let what =
        |e: io::Error, doing: &str| format!("control socket {}: {doing}: {e}", path.display());
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| what(e, "creating its directory"))?;
    if let Ok(meta) = fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(format!(
                "control socket {}: exists and is not a socket; remove it or choose another --ctl",
                path.display()
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(format!(
                "control socket {}: another vswitch is listening there",
                path.display()
            ));
        }
        fs::remove_file(path).map_err(|e| what(e, "removing a stale socket"))?;
    }
    // Bound in a private directory, made 0600, then moved into place: nobody else can reach
    // it while its mode is still the umask's.
    let private = dir.join(format!(".vswitch-ctl-{}", std::process::id()));
    let _ = fs::remove_dir_all(&private);
    fs::create_dir(&private).map_err(|e| what(e, "creating a private directory"))?;
    let result: Result<UnixListener, String> = (|| {
        fs::set_permissions(&private, fs::Permissions::from_mode(0o700))
            .map_err(|e| what(e, "securing a private directory"))?;
        let tmp = private.join("s");
        let listener = UnixListener::bind(&tmp).map_err(|e| what(e, "binding"))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
            .map_err(|e| what(e, "setting its mode"))?;
        fs::rename(&tmp, path).map_err(|e| what(e, "moving it into place"))?;
        Ok(listener)
    })();
    let _ = fs::remove_dir_all(&private);
    let listener = result?;
    Ok((
        listener,
        ControlSocket {
            path: path.to_path_buf(),
        },
    ))
}

/// One of a server's connection slots, given back when dropped: also when the connection's
/// thread could not be made (the closure that holds it is dropped) or panicked, which would
/// otherwise lose the slot for good.
pub struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// One of `max` slots counted in `taken`, if one is free.
    pub fn take(taken: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        if taken.fetch_add(1, Ordering::AcqRel) >= max {
            taken.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(taken.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// After a failed accept (out of descriptors: the connection stays queued and the next
/// accept fails at once): a pause, so the accepting thread does not spin on a core.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serves connections forever (the thread ends with the process).
pub fn serve(listener: UnixListener, requests: Sender<Request>) {
    let clients = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("control: accept: {e}");
                std::thread::sleep(ACCEPT_RETRY);
                continue;
            }
        };
        let Some(slot) = Slot::take(&clients, MAX_CLIENTS) else {
            let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
            let _ = reply(
                &mut stream,
                Err("too many control connections; try again".into()),
            );
            continue;
        };
        let requests = requests.clone();
        let spawned = std::thread::Builder::new()
            .name("vswitch-ctl".into())
            .spawn(move || {
                let _slot = slot;
                connection(stream, &requests);
            });
        if spawned.is_err() {
            tracing::warn!("control: cannot start a thread for a connection");
        }
    }
}

fn reply(stream: &mut UnixStream, result: Result<Value, String>) -> io::Result<()> {
    let body = match result {
        Ok(v) => json!({ "ok": true, "result": v }),
        Err(e) => json!({ "ok": false, "error": e }),
    };
    let mut line = body.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes())
}

/// Reads one request line: at most `MAX_REQUEST` bytes, before `READ_TIMEOUT` runs out.
pub fn read_line(stream: &UnixStream, limit: usize, timeout: Duration) -> Result<String, String> {
    let mut reader = BufReader::new(stream);
    read_line_from(&mut reader, stream, limit, Instant::now() + timeout)
}

/// Reads one line of at most `limit` bytes from `reader` (buffered over `stream`) before
/// `deadline`; what follows the line stays in `reader`.
fn read_line_from(
    reader: &mut BufReader<&UnixStream>,
    stream: &UnixStream,
    limit: usize,
    deadline: Instant,
) -> Result<String, String> {
    let mut buf = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("request timed out".into());
        }
        let _ = stream.set_read_timeout(Some(left));
        let room = (limit + 1 - buf.len()) as u64;
        match reader.by_ref().take(room).read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) if buf.ends_with(b"\n") => break,
            Ok(_) => {}
            Err(e) if timed_out(&e) => return Err("request timed out".into()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the request: {e}")),
        }
        if buf.len() > limit {
            break;
        }
    }
    if buf.len() > limit {
        return Err(format!("request longer than {limit} bytes"));
    }
    String::from_utf8(buf).map_err(|_| "request is not UTF-8".into())
}

/// A read that ran past its timeout (the kernel says either).
pub fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads a request's body: exactly `len` bytes, before `deadline`.
fn read_body(
    reader: &mut BufReader<&UnixStream>,
    stream: &UnixStream,
    len: usize,
    deadline: Instant,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::with_capacity(len);
    while body.len() < len {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "request body timed out after {} of {len} bytes",
                body.len()
            ));
        }
        let _ = stream.set_read_timeout(Some(left));
        let want = (len - body.len()) as u64;
        match reader.by_ref().take(want).read_to_end(&mut body) {
            Ok(0) => {
                return Err(format!(
                    "request body ended after {} of {len} bytes",
                    body.len()
                ))
            }
            Ok(_) => {}
            Err(e) if timed_out(&e) => {
                return Err(format!(
                    "request body timed out after {} of {len} bytes",
                    body.len()
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the request body: {e}")),
        }
    }
    Ok(body)
}

/// A request: its words, and the length of the body that follows its line, if any.
fn parse(line: &str) -> Result<(Vec<String>, Option<usize>), String> {
    let v: Value =
        serde_json::from_str(line.trim()).map_err(|e| format!("malformed request: {e}"))?;
    let args = v
        .get("args")
        .and_then(|a| a.as_array())
        .ok_or("malformed request: expected {\"args\": [...]}")?;
    let args = args
        .iter()
        .map(|a| {
            a.as_str()
                .map(str::to_string)
                .ok_or_else(|| "malformed request: args must be strings".to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let body_len = match v.get("body_len") {
        None => None,
        Some(n) => Some(
            n.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or("malformed request: body_len must be a byte count")?,
        ),
    };
    Ok((args, body_len))
}

/// What a request asks for, its body read and parsed here (off the main thread).
fn request(
    reader: &mut BufReader<&UnixStream>,
    stream: &UnixStream,
) -> Result<RequestKind, String> {
    let line = read_line_from(reader, stream, MAX_REQUEST, Instant::now() + READ_TIMEOUT)?;
    let (args, body_len) = parse(&line)?;
    let takes_body = args.first().map(String::as_str) == Some("import");
    // `import --skip-invalid` (the agent's): items that cannot be read are left out.
    let invalid = match args.get(1).map(String::as_str) {
        Some("--skip-invalid") if takes_body => crate::k8s::Invalid::Skip,
        _ => crate::k8s::Invalid::Refuse,
    };
    let plain = args.len() == 1 || (args.len() == 2 && invalid == crate::k8s::Invalid::Skip);
    match body_len {
        None if takes_body => {
            Err("import needs the JSON to import: vswitch ctl import FILE|-".into())
        }
        None => Ok(RequestKind::Ctl(args)),
        Some(_) if !takes_body || !plain => {
            Err(format!("{:?} takes no request body", args.join(" ")))
        }
        Some(len) if len > MAX_BODY => Err(format!(
            "import of {len} bytes refused: at most {MAX_BODY} bytes ({} MiB)",
            MAX_BODY >> 20
        )),
        Some(len) => {
            let start = Instant::now();
            let body = read_body(reader, stream, len, Instant::now() + BODY_TIMEOUT)?;
            let read = start.elapsed();
            let list = crate::k8s::parse(&body)?;
            tracing::info!(
                bytes = len,
                read_ms = read.as_millis() as u64,
                parse_ms = (start.elapsed() - read).as_millis() as u64,
                "import received"
            );
            Ok(RequestKind::Import(Box::new(list), invalid))
        }
    }
}

/// Asks the main thread; never waits on it for more than `ANSWER_TIMEOUT`.
pub fn ask(requests: &Sender<Request>, kind: RequestKind) -> Outcome {
    let (tx, rx) = crossbeam_channel::bounded(1);
    if requests
        .send_timeout(Request { kind, reply: tx }, ANSWER_TIMEOUT)
        .is_err()
    {
        return Outcome::Error("the switch is busy or stopping".into());
    }
    rx.recv_timeout(ANSWER_TIMEOUT)
        .unwrap_or_else(|_| Outcome::Error("the switch did not answer in time".into()))
}

fn connection(mut stream: UnixStream, requests: &Sender<Request>) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let kind = {
        let mut reader = BufReader::new(&stream);
        request(&mut reader, &stream)
    };
    let kind = match kind {
        Ok(kind) => kind,
        Err(e) => {
            tracing::debug!("control: refused a request: {e}");
            let _ = reply(&mut stream, Err(e));
            return;
        }
    };
    if let RequestKind::Ctl(args) = &kind {
        tracing::debug!(?args, "control request");
    }
    let result = match ask(requests, kind) {
        Outcome::Json(v) => Ok(v),
        Outcome::Text(t) => Ok(Value::String(t)),
        Outcome::Error(e) => Err(e),
        Outcome::Capture {
            frames,
            state,
            count,
            out,
            timeout,
            port,
        } => {
            let capture = CaptureRequest {
                count,
                out: &out,
                timeout,
                port: &port,
            };
            let written = write_capture(&frames, &state.lost, &capture, || peer_gone(&stream));
            state.ended.store(true, Ordering::Relaxed);
            written
        }
    };
    let _ = reply(&mut stream, result);
}

/// How often a running capture looks whether its client is still there.
const CLIENT_CHECK: Duration = Duration::from_millis(250);

fn peer_gone(stream: &UnixStream) -> bool {
    pmd::netdev::peer_hung_up(std::os::fd::AsFd::as_fd(stream))
}

struct CaptureRequest<'a> {
    count: usize,
    out: &'a Path,
    timeout: Duration,
    port: &'a str,
}

/// Writes what arrives on `frames` until `count` frames, the timeout, the port's end (its
/// removal, the switch stopping) or the client's (`gone`): a capture left behind by a client
/// that went would copy the port's frames, keep its flows off the fast path and grow its file
/// for up to an hour.
fn write_capture(
    frames: &crossbeam_channel::Receiver<pmd::Captured>,
    lost: &std::sync::atomic::AtomicU64,
    c: &CaptureRequest<'_>,
    gone: impl Fn() -> bool,
) -> Result<Value, String> {
    let out = c.out;
    let file = fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut file = io::BufWriter::new(file);
    let io_err = |e: io::Error| format!("{}: {e}", out.display());
    capture::write_header(&mut file).map_err(io_err)?;
    let start = Instant::now();
    let deadline = start + c.timeout;
    let mut checked = start;
    let mut written = 0;
    let ended = loop {
        if written == c.count {
            break None;
        }
        let now = Instant::now();
        if now >= deadline {
            break Some(format!("seen on {} in {} s", c.port, c.timeout.as_secs()));
        }
        if now >= checked + CLIENT_CHECK {
            checked = now;
            if gone() {
                break Some("written before the client went".to_string());
            }
        }
        match frames.recv_timeout((deadline - now).min(CLIENT_CHECK)) {
            Ok(frame) => {
                capture::write_frame(&mut file, &frame).map_err(io_err)?;
                written += 1;
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                break Some(format!(
                    "seen on {} before it went (removed, or the switch is stopping) after {} s",
                    c.port,
                    start.elapsed().as_secs()
                ));
            }
        }
    };
    file.flush().map_err(io_err)?;
    let lost = lost.load(std::sync::atomic::Ordering::Relaxed);
    if let Some(why) = ended {
        return Err(format!(
            "only {written} of {} frames {why}; those are in {}{}",
            c.count,
            out.display(),
            match lost {
                0 => String::new(),
                n => format!(" ({n} more not captured: the file's writer fell behind)"),
            }
        ));
    }
    Ok(
        json!({ "captured": written, "lost": lost, "port": c.port, "file": out.display().to_string() }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> pmd::Captured {
        pmd::Captured {
            port: 1,
            time: std::time::SystemTime::now(),
            data: vec![0xff; 60],
        }
    }

    /// Runs a capture of 3 frames, `timeout` long, with `sent` frames waiting and the
    /// workers' end of the queue kept (`keep`) or dropped.
    fn capture_of(
        sent: usize,
        keep: bool,
        lost: u64,
        gone: impl Fn() -> bool,
    ) -> (Result<Value, String>, Duration) {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("c.pcap");
        let (tx, rx) = crossbeam_channel::bounded(8);
        for _ in 0..sent {
            tx.send(frame()).unwrap();
        }
        let tx = keep.then_some(tx);
        let request = CaptureRequest {
            count: 3,
            out: &out,
            timeout: Duration::from_secs(3),
            port: "vp1",
        };
        let start = Instant::now();
        let lost = std::sync::atomic::AtomicU64::new(lost);
        let r = write_capture(&rx, &lost, &request, gone);
        drop(tx);
        (r, start.elapsed())
    }

    #[test]
    fn a_connection_slot_comes_back_whatever_becomes_of_its_thread() {
        let taken = Arc::new(AtomicUsize::new(0));
        let a = Slot::take(&taken, 2).unwrap();
        let b = Slot::take(&taken, 2).unwrap();
        assert!(Slot::take(&taken, 2).is_none(), "all taken");
        drop(a);
        // A thread that could not be made: its closure, and the slot in it, dropped unrun.
        let never_run = move || drop(b);
        drop(never_run);
        assert_eq!(taken.load(Ordering::Acquire), 0);
        // One whose connection panicked.
        let c = Slot::take(&taken, 2).unwrap();
        let _ = std::thread::spawn(move || {
            let _slot = c;
            panic!("a connection's bug");
        })
        .join();
        assert_eq!(taken.load(Ordering::Acquire), 0);
        assert!(Slot::take(&taken, 2).is_some());
    }

    #[test]
    fn a_capture_ends_with_its_count_its_port_or_its_client_and_says_which() {
        let (r, _) = capture_of(3, true, 2, || false);
        let r = r.unwrap();
        assert_eq!(
            (r["captured"].as_u64(), r["lost"].as_u64()),
            (Some(3), Some(2))
        );
        // The port went (removed, or the switch stopping): at once, and said so.
        let (r, took) = capture_of(1, false, 0, || false);
        let e = r.unwrap_err();
        assert!(
            e.starts_with("only 1 of 3 frames seen on vp1 before it went"),
            "{e}"
        );
        assert!(took < Duration::from_secs(1), "{took:?}");
        // The client went: within a check.
        let (r, took) = capture_of(0, true, 5, || true);
        let e = r.unwrap_err();
        assert!(e.contains("before the client went"), "{e}");
        assert!(e.contains("5 more not captured"), "{e}");
        assert!(took < Duration::from_secs(1), "{took:?}");
        // Nothing came.
        let (r, took) = capture_of(0, true, 0, || false);
        assert!(r.unwrap_err().contains("seen on vp1 in 3 s"));
        assert!(took >= Duration::from_secs(3));
    }

    /// What the server makes of `bytes` sent by a client that then stops writing.
    fn request_of(bytes: &[u8]) -> Result<RequestKind, String> {
        let (mut client, server) = UnixStream::pair().unwrap();
        client.write_all(bytes).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reader = BufReader::new(&server);
        request(&mut reader, &server)
    }

    fn error_of(bytes: &[u8]) -> String {
        match request_of(bytes) {
            Ok(_) => panic!("accepted {:?}", String::from_utf8_lossy(bytes)),
            Err(e) => e,
        }
    }

    #[test]
    fn an_import_body_follows_its_line_and_is_bounded() {
        let body = br#"{"kind": "List", "items": []}"#;
        let mut bytes =
            format!("{{\"args\": [\"import\"], \"body_len\": {}}}\n", body.len()).into_bytes();
        bytes.extend_from_slice(body);
        assert!(matches!(
            request_of(&bytes),
            Ok(RequestKind::Import(l, crate::k8s::Invalid::Refuse)) if l.items.is_empty()
        ));
        let mut skipping = format!(
            "{{\"args\": [\"import\", \"--skip-invalid\"], \"body_len\": {}}}\n",
            body.len()
        )
        .into_bytes();
        skipping.extend_from_slice(body);
        assert!(matches!(
            request_of(&skipping),
            Ok(RequestKind::Import(_, crate::k8s::Invalid::Skip))
        ));
        assert!(matches!(
            request_of(b"{\"args\": [\"show\", \"ports\"]}\n"),
            Ok(RequestKind::Ctl(a)) if a == ["show", "ports"]
        ));
        let cases: [(&[u8], &str); 7] = [
            (b"{\"args\": [\"import\"]}\n", "import needs the JSON"),
            (
                b"{\"args\": [\"import\", \"--lenient\"], \"body_len\": 3}\nabc",
                "takes no request body",
            ),
            (
                b"{\"args\": [\"show\", \"ports\"], \"body_len\": 3}\nabc",
                "takes no request body",
            ),
            (
                b"{\"args\": [\"import\"], \"body_len\": -1}\n",
                "body_len must be a byte count",
            ),
            (
                b"{\"args\": [\"import\"], \"body_len\": 200000000}\n",
                "at most 134217728 bytes (128 MiB)",
            ),
            (
                b"{\"args\": [\"import\"], \"body_len\": 100}\n{\"items\"",
                "ended after 8 of 100 bytes",
            ),
            (
                b"{\"args\": [\"import\"], \"body_len\": 4}\n[1]\n",
                "not a Kubernetes List",
            ),
        ];
        for (bytes, needle) in cases {
            let e = error_of(bytes);
            assert!(e.contains(needle), "expected {needle:?} in {e:?}");
        }
    }
}
