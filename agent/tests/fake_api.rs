//! `vswitch-agent` against a fake API server on loopback that serves recorded list and watch
//! responses: a first list, a watch that delivers an event and then breaks, a `410 Gone` on
//! the resumed watch, a re-list that lost a Service, then quiet watches with a bookmark. A
//! fake control socket (which appears only after the agent started, so the first import
//! must be retried) records every import. Everything is bounded in time; the agent is killed
//! at the end.

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn service(name: &str, ip: &str, rv: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "default", "resourceVersion": rv,
                     "managedFields": [{"manager": "kubectl", "operation": "Update"}],
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "type": "ClusterIP",
                 "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}
    })
}

fn slice(service: &str, ip: &str) -> Value {
    json!({
        "metadata": {"name": format!("{service}-1"), "namespace": "default", "resourceVersion": "90",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
        "ports": [{"port": 8080, "protocol": "TCP", "name": ""}]
    })
}

fn with_kind(mut v: Value, kind: &str, api: &str) -> Value {
    v["kind"] = json!(kind);
    v["apiVersion"] = json!(api);
    v
}

#[derive(Default)]
struct Api {
    /// Request lines ("GET /path?query"), in order.
    log: Mutex<Vec<String>>,
    service_lists: Mutex<u32>,
    service_watches: Mutex<u32>,
    /// Every watch of Services is answered `410 Gone`.
    always_gone: bool,
    /// Nothing changes: every watch of Services stays open without an event.
    quiet: bool,
    stop: AtomicBool,
}

const GONE: &str = r#"{"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410}"#;

fn respond(s: &mut TcpStream, status: &str, body: &str) {
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Waits `d`, or less if the test stops.
fn pause(api: &Api, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !api.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A watch response: headers, after `before` the `events` one per line, then it stays open
/// for `hold` (or until the test stops) and ends, as a broken or timed-out watch does.
fn stream(s: &mut TcpStream, api: &Api, before: Duration, events: &[Value], hold: Duration) {
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
    );
    let _ = s.flush();
    pause(api, before);
    for e in events {
        let _ = writeln!(s, "{e}");
    }
    let _ = s.flush();
    pause(api, hold);
}

fn serve(mut s: TcpStream, api: &Api) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => {}
        }
    }
    let target = first.split_whitespace().nth(1).unwrap_or("").to_string();
    api.log.lock().unwrap().push(target.clone());
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let watching = query
        .split('&')
        .any(|q| q == "watch=true" || q == "watch=1");
    match (path, watching) {
        ("/api/v1/services", false) => {
            let mut n = api.service_lists.lock().unwrap();
            *n += 1;
            let a = || service("a", "10.96.0.10", "90");
            let c = || service("c", "10.96.0.12", "101");
            let (rv, items) = match *n {
                1 => ("100", vec![a(), service("b", "10.96.0.11", "95")]),
                // Re-listed after the 410 answer: b was deleted meanwhile, c is there.
                2 => ("200", vec![a(), c()]),
                // Re-listed after the 410 event: d came.
                _ => ("300", vec![a(), c(), service("d", "10.96.0.13", "250")]),
            };
            let body = json!({"kind": "ServiceList", "apiVersion": "v1",
                              "metadata": {"resourceVersion": rv}, "items": items});
            respond(&mut s, "200 OK", &body.to_string());
        }
        ("/api/v1/services", true) if api.always_gone => respond(&mut s, "410 Gone", GONE),
        ("/api/v1/services", true) if api.quiet => {
            stream(&mut s, api, Duration::ZERO, &[], Duration::from_secs(20))
        }
        ("/api/v1/services", true) => {
            let n = {
                let mut n = api.service_watches.lock().unwrap();
                *n += 1;
                *n
            };
            match n {
                // An event (once the switch has the first list), then the connection breaks.
                1 => stream(
                    &mut s,
                    api,
                    Duration::from_millis(3000),
                    &[json!({"type": "ADDED", "object": with_kind(service("c", "10.96.0.12", "101"), "Service", "v1")})],
                    Duration::from_millis(1000),
                ),
                // The resumed watch is too old: the answer to the request is 410.
                2 => respond(
                    &mut s,
                    "410 Gone",
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": "too old resource version: 101 (150)", "reason": "Expired", "code": 410})
                    .to_string(),
                ),
                // After the re-list: too old again, now as an ERROR event in the stream.
                3 => stream(
                    &mut s,
                    api,
                    Duration::from_millis(500),
                    &[json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                             "status": "Failure", "message": "too old resource version: 200 (280)",
                             "reason": "Expired", "code": 410}})],
                    Duration::from_secs(20),
                ),
                _ => stream(
                    &mut s,
                    api,
                    Duration::ZERO,
                    &[json!({"type": "BOOKMARK", "object": {"kind": "Service", "apiVersion": "v1",
                             "metadata": {"resourceVersion": "201"}}})],
                    Duration::from_secs(20),
                ),
            }
        }
        ("/apis/discovery.k8s.io/v1/endpointslices", false) => {
            let body = json!({"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                              "metadata": {"resourceVersion": "100"},
                              "items": [slice("a", "10.244.1.2"), slice("b", "10.244.1.3")]});
            respond(&mut s, "200 OK", &body.to_string());
        }
        ("/apis/discovery.k8s.io/v1/endpointslices", true) => {
            stream(&mut s, api, Duration::ZERO, &[], Duration::from_secs(20))
        }
        _ => respond(
            &mut s,
            "404 Not Found",
            r#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":404}"#,
        ),
    }
}

/// The fake control socket: records each import's body, answers ok.
fn control(listener: UnixListener, imports: Arc<Mutex<Vec<Value>>>, stop: Arc<Api>) {
    control_answering(listener, imports, stop, None)
}

/// The fake control socket, answering each import ok, or with `answer`.
fn control_answering(
    listener: UnixListener,
    imports: Arc<Mutex<Vec<Value>>>,
    stop: Arc<Api>,
    answer: Option<Value>,
) {
    listener.set_nonblocking(true).unwrap();
    while !stop.stop.load(Ordering::Relaxed) {
        let Ok((s, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reader = BufReader::new(&s);
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        let header: Value = serde_json::from_str(&header).unwrap();
        // What cannot be read is left out, not the whole import refused.
        assert_eq!(header["args"], json!(["import", "--skip-invalid"]));
        let len = header["body_len"].as_u64().unwrap() as usize;
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        let list: Value = serde_json::from_slice(&body).unwrap();
        let n = list["items"].as_array().unwrap().len();
        imports.lock().unwrap().push(list);
        let answer = answer.clone().unwrap_or_else(
            || json!({"ok": true, "result": {"services": n, "endpoints": 0, "flows_closed": 0}}),
        );
        (&s).write_all(format!("{answer}\n").as_bytes()).unwrap();
    }
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn services_in(list: &Value) -> BTreeSet<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "Service")
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn kubeconfig(dir: &Path, port: u16) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             users:\n- name: agent\n  user:\n    token: fake-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: agent\n\
             current-context: fake\n"
        ),
    )
    .unwrap();
    path
}

/// The fake API server on a port of its own, until `api.stop`.
fn fake_api_server(api: Arc<Api>) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let server = {
        let api = api.clone();
        std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !api.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        let api = api.clone();
                        conns.push(std::thread::spawn(move || serve(s, &api)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        })
    };
    (port, server)
}

/// The agent against the fake API server on `port`, importing into `socket`; its log in
/// `dir`'s `agent.err`.
fn start_agent(dir: &Path, port: u16, socket: &Path) -> Kill {
    Kill(
        Command::new(env!("CARGO_BIN_EXE_vswitch-agent"))
            .arg("--kubeconfig")
            .arg(kubeconfig(dir, port))
            .arg("--ctl")
            .arg(socket)
            .args(["--debounce-ms", "50"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.err")).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// An API server that answers every watch `410 Gone` (a misbehaving proxy in front of it):
/// the agent lists again after growing pauses, not in a loop on every node.
#[test]
fn a_watch_always_gone_is_listed_again_after_growing_pauses() {
    let api = Arc::new(Api {
        always_gone: true,
        ..Default::default()
    });
    let (port, server) = fake_api_server(api.clone());
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(dir.path(), port, &dir.path().join("vswitch.sock"));
    std::thread::sleep(Duration::from_secs(8));
    drop(agent);
    api.stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    let lists = *api.service_lists.lock().unwrap();
    let err = std::fs::read_to_string(dir.path().join("agent.err")).unwrap_or_default();
    // 0 s, then after 1, 2 and 4 s.
    assert!((2..=6).contains(&lists), "{lists} lists in 8 s\n{err}");
}

/// A quiet API server, a fake switch that answers every import with `answer`, and the agent
/// between them.
struct Rig {
    api: Arc<Api>,
    server: std::thread::JoinHandle<()>,
    ctl: std::thread::JoinHandle<()>,
    agent: Kill,
    imports: Arc<Mutex<Vec<Value>>>,
    dir: tempfile::TempDir,
}

impl Rig {
    fn new(answer: Value) -> Rig {
        let api = Arc::new(Api {
            quiet: true,
            ..Default::default()
        });
        let (port, server) = fake_api_server(api.clone());
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vswitch.sock");
        let imports = Arc::new(Mutex::new(Vec::new()));
        let ctl = {
            let (imports, api) = (imports.clone(), api.clone());
            let l = UnixListener::bind(&socket).unwrap();
            std::thread::spawn(move || control_answering(l, imports, api, Some(answer)))
        };
        let agent = start_agent(dir.path(), port, &socket);
        Rig {
            api,
            server,
            ctl,
            agent,
            imports,
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.err")).unwrap_or_default()
    }

    /// Stops the agent and the fakes; how many imports the switch got, and the agent's log.
    fn stop(self) -> (usize, String) {
        drop(self.agent);
        self.api.stop.store(true, Ordering::Relaxed);
        let _ = self.server.join();
        self.ctl.join().unwrap();
        let asked = self.imports.lock().unwrap().len();
        let log = std::fs::read_to_string(self.dir.path().join("agent.err"));
        (asked, log.unwrap_or_default())
    }
}

/// A switch that refuses every import (one without --config) is asked again after growing
/// pauses, not every second.
#[test]
fn refused_imports_are_retried_after_growing_pauses() {
    let rig = Rig::new(json!({"ok": false,
        "error": "import needs the node gateway: the switch runs without --config"}));
    // Imports at about 0, 1, 3 and 7 s (every second: 9).
    std::thread::sleep(Duration::from_secs(9));
    let (asked, log) = rig.stop();
    assert!((2..=5).contains(&asked), "{asked} imports in 9 s\n{log}");
}

/// What an import left out (an object it could not read) is said in the agent's log: its
/// running service stays as it was, so nothing else would tell.
#[test]
fn what_an_import_left_out_is_logged() {
    let rig = Rig::new(
        json!({"ok": true, "result": {"services": 1, "endpoints": 1, "flows_closed": 0,
        "skipped": ["items[3] (Service default/odd): spec.clusterIP 10.244.1.9 is inside the pod or uplink subnet (left out)",
                    "default/db: headless or IPv6-only"]}}),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rig.log().contains("imported") {
        assert!(Instant::now() < deadline, "no import:\n{}", rig.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, log) = rig.stop();
    assert!(log.contains("Service default/odd"), "{log}");
    assert!(
        !log.contains("default/db"),
        "skipped by design, not left out: {log}"
    );
}

#[test]
fn the_agent_lists_watches_survives_a_broken_watch_and_relists_after_410() {
    let api = Arc::new(Api::default());
    let (port, server) = fake_api_server(api.clone());
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vswitch.sock");
    let agent = start_agent(dir.path(), port, &socket);
    // The switch is not there yet: the agent retries.
    std::thread::sleep(Duration::from_millis(1500));
    let imports = Arc::new(Mutex::new(Vec::new()));
    let ctl = {
        let (imports, api) = (imports.clone(), api.clone());
        let l = UnixListener::bind(&socket).unwrap();
        std::thread::spawn(move || control(l, imports, api))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let want_final = set(&["a", "c", "d"]);
    loop {
        let done = imports
            .lock()
            .unwrap()
            .last()
            .is_some_and(|l| services_in(l) == want_final);
        if done || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The switch restarts (a new control socket, no services): imported again at once, not
    // at the next resync (a minute).
    let restarted = Arc::new(Mutex::new(Vec::new()));
    std::fs::remove_file(&socket).unwrap();
    let ctl2 = {
        let (restarted, api) = (restarted.clone(), api.clone());
        let l = UnixListener::bind(&socket).unwrap();
        std::thread::spawn(move || control(l, restarted, api))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while restarted.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(agent);
    api.stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    ctl.join().expect("the fake switch's control socket");
    ctl2.join()
        .expect("the restarted fake switch's control socket");
    assert_eq!(
        restarted.lock().unwrap().first().map(services_in),
        Some(set(&["a", "c", "d"])),
        "the restarted switch got the cluster's services"
    );
    let log = api.log.lock().unwrap().clone();
    let err = std::fs::read_to_string(dir.path().join("agent.err")).unwrap_or_default();
    let seen: Vec<BTreeSet<String>> = imports.lock().unwrap().iter().map(services_in).collect();
    let context = format!("imports {seen:?}\nrequests {log:#?}\nagent:\n{err}");

    // The states the switch was given, in order: the first list, the watched addition, the
    // re-list after the 410 answer (b gone), the re-list after the 410 event (d came).
    let pos = |names: &[&str]| seen.iter().position(|s| *s == set(names));
    let states = [
        pos(&["a", "b"]),
        pos(&["a", "b", "c"]),
        pos(&["a", "c"]),
        pos(&["a", "c", "d"]),
    ];
    assert!(states.iter().all(Option::is_some), "{context}");
    assert!(states.windows(2).all(|w| w[0] < w[1]), "{context}");
    // Every item carries its kind and apiVersion, and slices came along; managed fields not.
    let imports = imports.lock().unwrap();
    let last = imports.last().unwrap();
    for item in last["items"].as_array().unwrap() {
        assert!(
            item["apiVersion"].is_string() && item["kind"].is_string(),
            "{item}"
        );
        assert!(item["metadata"].get("managedFields").is_none(), "{item}");
        assert!(item["metadata"].get("annotations").is_none(), "{item}");
    }
    assert!(last["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["kind"] == "EndpointSlice" && i["apiVersion"] == "discovery.k8s.io/v1"));
    // The protocol: list, watch from its resourceVersion with bookmarks, resume from the
    // event's resourceVersion after the break, 410, list again, watch from the new one.
    // Another proxy's objects and headless Services' slices are not asked for (kube-proxy's
    // selector).
    for request in log.iter().filter(|l| l.starts_with("/api")) {
        assert!(
            request.contains(
                "labelSelector=%21service.kubernetes.io%2Fservice-proxy-name%2C%21service.kubernetes.io%2Fheadless"
            ),
            "{request}\n{context}"
        );
    }
    let services: Vec<&String> = log
        .iter()
        .filter(|l| l.starts_with("/api/v1/services"))
        .collect();
    let watch_at = |rv: &str| {
        services.iter().position(|l| {
            l.contains("watch=")
                && l.contains("allowWatchBookmarks=true")
                && l.contains(&format!("resourceVersion={rv}&"))
                || l.contains("watch=") && l.ends_with(&format!("resourceVersion={rv}"))
        })
    };
    let lists: Vec<usize> = services
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.contains("watch="))
        .map(|(i, _)| i)
        .collect();
    assert!(lists.len() >= 2, "{context}");
    let (w100, w101, w200) = (watch_at("100"), watch_at("101"), watch_at("200"));
    assert!(
        w100.is_some() && w101.is_some() && w200.is_some(),
        "{context}"
    );
    assert!(lists[0] < w100.unwrap() && w100 < w101, "{context}");
    assert!(
        w101.unwrap() < lists[1] && lists[1] < w200.unwrap(),
        "{context}"
    );
}
