//! The running switch's control socket: one JSON line `{"args": [...]}` per connection, one
//! line back, `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`.

use crate::error::{code, CniError, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Longer than the switch's own bound on a port change (20 s), so its answer arrives.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(25);
/// Longest answer read (a `show ports` of 256 ports is far below).
const MAX_ANSWER: u64 = 4 << 20;

/// What went wrong talking to the switch.
#[derive(Debug)]
pub enum SwitchError {
    /// Nothing answers on the socket: the switch is not running (or not yet).
    Unreachable(String),
    /// It answered, busy or too slow: worth trying again.
    Busy(String),
    /// It answered no.
    Refused(String),
}

impl SwitchError {
    pub fn into_cni(self, doing: &str) -> CniError {
        match self {
            SwitchError::Unreachable(e) => CniError::new(
                code::TRY_AGAIN_LATER,
                format!("{doing}: the switch is not running: {e}"),
            ),
            SwitchError::Busy(e) => CniError::new(
                code::TRY_AGAIN_LATER,
                format!("{doing}: the switch is busy: {e}"),
            ),
            SwitchError::Refused(e) => CniError::new(
                code::SWITCH_REFUSED,
                format!("{doing}: the switch refused: {e}"),
            ),
        }
    }
}

/// How long a request keeps asking while the switch has no connection to spare: it serves
/// 16 at once, each held while its port change runs, and a node's pods all start together
/// after a reboot.
const BUSY_RETRY: Duration = Duration::from_secs(30);
/// The switch's answer when it has no connection to spare (server.rs): the request never
/// reached it, so asking again is always safe.
const NO_CONNECTION_TO_SPARE: &str = "too many control connections";

/// Sends one request and returns its `result`.
pub fn request(socket: &Path, args: &[&str]) -> std::result::Result<Value, SwitchError> {
    request_within(socket, args, BUSY_RETRY)
}

/// `request`, asked again after a growing, jittered pause while the switch has no connection
/// to spare, for up to `budget`.
fn request_within(
    socket: &Path,
    args: &[&str],
    budget: Duration,
) -> std::result::Result<Value, SwitchError> {
    let deadline = Instant::now() + budget;
    let mut pause = Duration::from_millis(10);
    loop {
        match request_once(socket, args) {
            Err(SwitchError::Busy(e))
                if e.contains(NO_CONNECTION_TO_SPARE) && Instant::now() + pause < deadline =>
            {
                // Jittered, so a burst of plugins does not come back at once.
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                std::thread::sleep(pause.mul_f64(0.5 + f64::from(nanos % 1000) / 1000.0));
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            answer => return answer,
        }
    }
}

/// Whether the switch runs and answers (STATUS): busy with other requests counts, it only
/// has no connection to spare this instant; no answer at all does not.
pub fn answers(socket: &Path) -> std::result::Result<(), SwitchError> {
    match request_once(socket, &["show", "ports"]) {
        Ok(_) | Err(SwitchError::Refused(_)) => Ok(()),
        Err(SwitchError::Busy(e)) if e.contains(NO_CONNECTION_TO_SPARE) => Ok(()),
        Err(e) => Err(e),
    }
}

fn request_once(socket: &Path, args: &[&str]) -> std::result::Result<Value, SwitchError> {
    let where_ = socket.display();
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| SwitchError::Unreachable(format!("control socket {where_}: {e}")))?;
    let busy = |e: std::io::Error| SwitchError::Busy(format!("control socket {where_}: {e}"));
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(busy)?;
    stream
        .set_write_timeout(Some(ANSWER_TIMEOUT))
        .map_err(busy)?;
    let mut line = json!({ "args": args }).to_string();
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(busy)?;
    let mut answer = String::new();
    BufReader::new(std::io::Read::take(&stream, MAX_ANSWER))
        .read_line(&mut answer)
        .map_err(busy)?;
    let v: Value = serde_json::from_str(answer.trim()).map_err(|e| {
        SwitchError::Busy(format!("control socket {where_}: unreadable answer: {e}"))
    })?;
    if v.get("ok").and_then(Value::as_bool) == Some(true) {
        return Ok(v.get("result").cloned().unwrap_or(Value::Null));
    }
    let error = v
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("no reason given")
        .to_string();
    // The switch's words for conditions that pass (server.rs).
    if error.contains("try again") || error.contains("busy") || error.contains("did not answer") {
        Err(SwitchError::Busy(error))
    } else {
        Err(SwitchError::Refused(error))
    }
}

/// `port add NAME --mac MAC --ip IP`: attached, bound to the pod's addresses.
pub fn port_add(socket: &Path, name: &str, mac: &str, ip: &str) -> Result<()> {
    request(socket, &["port", "add", name, "--mac", mac, "--ip", ip])
        .map(|_| ())
        .map_err(|e| e.into_cni(&format!("attaching {name} to the switch")))
}

/// `port del NAME`; a port that is not attached is already gone. `Ok(false)`: nothing to do.
pub fn port_del(socket: &Path, name: &str) -> std::result::Result<bool, SwitchError> {
    match request(socket, &["port", "del", name]) {
        Ok(_) => Ok(true),
        Err(SwitchError::Refused(e)) if e.contains("is attached") => Ok(false),
        Err(e) => Err(e),
    }
}

/// A port as `show ports` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub name: String,
    pub mac: Option<String>,
    pub ip: Option<String>,
}

pub fn ports(socket: &Path) -> std::result::Result<Vec<Port>, SwitchError> {
    let v = request(socket, &["show", "ports"])?;
    let list = v
        .get("ports")
        .and_then(Value::as_array)
        .ok_or_else(|| SwitchError::Busy("show ports: no port list in the answer".into()))?;
    let text = |p: &Value, k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
    Ok(list
        .iter()
        .filter_map(|p| {
            Some(Port {
                name: text(p, "name")?,
                mac: text(p, "mac"),
                ip: text(p, "ip"),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A one-shot fake switch that answers `answer` and returns the request it read.
    fn fake(answer: &'static str) -> (tempfile::TempDir, std::thread::JoinHandle<String>) {
        fake_answering(&[answer])
    }

    /// A fake switch that answers its connections with `answers`, one each, and returns the
    /// last request it read.
    fn fake_answering(
        answers: &[&'static str],
    ) -> (tempfile::TempDir, std::thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("s")).unwrap();
        let answers = answers.to_vec();
        let t = std::thread::spawn(move || {
            let mut line = String::new();
            for answer in answers {
                let (mut s, _) = listener.accept().unwrap();
                line.clear();
                BufReader::new(&s).read_line(&mut line).unwrap();
                s.write_all(answer.as_bytes()).unwrap();
            }
            line
        });
        (dir, t)
    }

    /// `port add vsw0` with a binding, to the fake switch in `dir`.
    fn add_vsw0(dir: &tempfile::TempDir) -> Result<()> {
        port_add(
            &dir.path().join("s"),
            "vsw0",
            "02:00:00:00:00:01",
            "10.244.1.5",
        )
    }

    const NO_CONNECTION: &str =
        "{\"ok\": false, \"error\": \"too many control connections; try again\"}\n";

    /// A burst of pod starts finds the switch's connections taken: the plugin asks again.
    #[test]
    fn a_switch_with_no_connection_to_spare_is_asked_again() {
        let (dir, t) = fake_answering(&[NO_CONNECTION, NO_CONNECTION, "{\"ok\": true}\n"]);
        add_vsw0(&dir).unwrap();
        assert!(t.join().unwrap().contains("vsw0"));
        // Not past the budget.
        let (dir, t) = fake(NO_CONNECTION);
        let e = request_within(&dir.path().join("s"), &["show", "ports"], Duration::ZERO);
        assert!(matches!(e, Err(SwitchError::Busy(_))), "{e:?}");
        t.join().unwrap();
    }

    /// STATUS: a switch that answers runs, busy or not; one that is not there does not.
    #[test]
    fn a_busy_switch_still_answers() {
        let (dir, t) = fake(NO_CONNECTION);
        assert!(answers(&dir.path().join("s")).is_ok());
        t.join().unwrap();
        let missing = tempfile::tempdir().unwrap();
        assert!(matches!(
            answers(&missing.path().join("none")),
            Err(SwitchError::Unreachable(_))
        ));
    }

    #[test]
    fn port_add_sends_the_binding() {
        let (dir, t) = fake("{\"ok\": true, \"result\": {}}\n");
        add_vsw0(&dir).unwrap();
        let sent: Value = serde_json::from_str(&t.join().unwrap()).unwrap();
        assert_eq!(
            sent,
            json!({"args": ["port", "add", "vsw0", "--mac", "02:00:00:00:00:01", "--ip", "10.244.1.5"]})
        );
    }

    #[test]
    fn errors_map_to_codes() {
        let (dir, t) = fake("{\"ok\": false, \"error\": \"more than 256 ports\"}\n");
        let e = add_vsw0(&dir);
        assert_eq!(e.unwrap_err().code, code::SWITCH_REFUSED);
        t.join().unwrap();

        let (dir, t) = fake("{\"ok\": false, \"error\": \"the switch did not answer in time\"}\n");
        let e = add_vsw0(&dir);
        assert_eq!(e.unwrap_err().code, code::TRY_AGAIN_LATER);
        t.join().unwrap();

        let missing = tempfile::tempdir().unwrap();
        let e = port_add(
            &missing.path().join("none"),
            "vsw0",
            "02:00:00:00:00:01",
            "10.244.1.5",
        );
        assert_eq!(e.unwrap_err().code, code::TRY_AGAIN_LATER);
    }

    #[test]
    fn deleting_an_unknown_port_is_fine() {
        let (dir, t) = fake("{\"ok\": false, \"error\": \"no port \\\"vsw0\\\" is attached\"}\n");
        assert!(!port_del(&dir.path().join("s"), "vsw0").unwrap());
        t.join().unwrap();
    }

    #[test]
    fn lists_ports() {
        let (dir, t) = fake(
            "{\"ok\": true, \"result\": {\"ports\": [{\"name\": \"vsw0\", \"mac\": \"02:00:00:00:00:01\", \"ip\": \"10.244.1.5\"}, {\"name\": \"up\", \"mac\": null, \"ip\": null}]}}\n",
        );
        let p = ports(&dir.path().join("s")).unwrap();
        t.join().unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].ip.as_deref(), Some("10.244.1.5"));
        assert_eq!(p[1].mac, None);
    }
}
