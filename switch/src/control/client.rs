//! `vswitch ctl [--socket PATH] COMMAND [--json]`: sends the command to a running switch and
//! prints its answer, as tables or (with `--json`) as one JSON object.

use super::{commands::USAGE, server::read_line, table, DEFAULT_SOCKET, MAX_BODY};
use serde_json::{json, Value};
use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Longest answer read (a `show conntrack` of a million flows fits).
const MAX_ANSWER: usize = 512 << 20;

fn fail(text: impl std::fmt::Display) -> ExitCode {
    eprintln!("vswitch ctl: {text}");
    ExitCode::FAILURE
}

/// `args` are what follows `ctl`.
pub fn main(args: &[String]) -> ExitCode {
    let mut socket = PathBuf::from(DEFAULT_SOCKET);
    let mut json_out = false;
    let mut words = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json_out = true,
            "--socket" => match it.next() {
                Some(p) => socket = PathBuf::from(p),
                None => return fail("--socket needs a path"),
            },
            "-h" | "--help" => {
                println!("usage: vswitch ctl [--socket PATH] COMMAND [--json]\n{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => words.push(a.clone()),
        }
    }
    if words.is_empty() {
        return fail(format!(
            "no command\nusage: vswitch ctl [--socket PATH] COMMAND [--json]\n{USAGE}"
        ));
    }
    // The switch writes the capture file: give it a path that means the same there.
    let mut wait = Duration::from_secs(30);
    if words.first().map(String::as_str) == Some("capture") {
        if let Some(i) = words.iter().position(|w| w == "--out") {
            if let Some(out) = words.get_mut(i + 1) {
                match std::path::absolute(&*out) {
                    Ok(p) => *out = p.display().to_string(),
                    Err(e) => return fail(format!("--out {out}: {e}")),
                }
            }
        }
        let secs = words
            .iter()
            .position(|w| w == "--timeout")
            .and_then(|i| words.get(i + 1))
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(60)
            .min(3600);
        wait = Duration::from_secs(secs + 30);
    }
    // `import FILE|-`: the file (or stdin) goes as the request's body, as it is.
    let mut body = None;
    if words.first().map(String::as_str) == Some("import") {
        let (source, skip) = match words.as_slice() {
            [_, source] => (source.clone(), false),
            [_, source, flag] | [_, flag, source] if flag == "--skip-invalid" => {
                (source.clone(), true)
            }
            _ => return fail("usage: vswitch ctl import FILE|- [--skip-invalid]  (kubectl get services,endpointslices -A -o json)"),
        };
        match read_body(&source) {
            Ok(b) => body = Some(b),
            Err(e) => return fail(e),
        }
        words.truncate(1);
        if skip {
            words.push("--skip-invalid".into());
        }
        wait = Duration::from_secs(120);
    }
    let answer = match ask(&socket, &words, body.as_deref(), wait) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    if answer.get("ok").and_then(Value::as_bool) != Some(true) {
        let why = answer
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("malformed answer from the switch");
        return fail(why);
    }
    let result = answer.get("result").cloned().unwrap_or(Value::Null);
    let text = if json_out {
        let mut s = result.to_string();
        s.push('\n');
        s
    } else {
        table::render(&words, &result)
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    ExitCode::SUCCESS
}

/// The JSON to import, from a file or (`-`) stdin, at most `MAX_BODY` bytes.
fn read_body(source: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut body = Vec::new();
    let limit = MAX_BODY as u64 + 1;
    let read = if source == "-" {
        std::io::stdin().lock().take(limit).read_to_end(&mut body)
    } else {
        std::fs::File::open(source).and_then(|f| f.take(limit).read_to_end(&mut body))
    };
    let name = if source == "-" { "stdin" } else { source };
    read.map_err(|e| format!("{name}: {e}"))?;
    if body.len() > MAX_BODY {
        return Err(format!(
            "{name}: more than {} MiB, the most one import takes",
            MAX_BODY >> 20
        ));
    }
    Ok(body)
}

fn ask(
    socket: &PathBuf,
    words: &[String],
    body: Option<&[u8]>,
    wait: Duration,
) -> Result<Value, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        let hint = match e.kind() {
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
                " (is vswitch running with this --ctl?)"
            }
            ErrorKind::PermissionDenied => " (only the user running vswitch may use it)",
            _ => "",
        };
        format!("cannot connect to {}: {e}{hint}", socket.display())
    })?;
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut line = match body {
        Some(b) => json!({ "args": words, "body_len": b.len() }),
        None => json!({ "args": words }),
    }
    .to_string();
    line.push('\n');
    let sent = stream
        .write_all(line.as_bytes())
        .and_then(|_| stream.write_all(body.unwrap_or_default()));
    // A switch that refuses a body early says why before it stops reading.
    let answer = read_line(&stream, MAX_ANSWER, wait);
    let answer = match (sent, answer) {
        (_, Ok(a)) if !a.is_empty() => a,
        (Err(e), _) => return Err(format!("sending to {}: {e}", socket.display())),
        (Ok(()), a) => {
            a.map_err(|e| format!("reading the answer from {}: {e}", socket.display()))?
        }
    };
    if answer.is_empty() {
        return Err(format!(
            "{} closed the connection without answering",
            socket.display()
        ));
    }
    serde_json::from_str(answer.trim()).map_err(|e| format!("malformed answer: {e}"))
}
