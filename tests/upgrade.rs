//! Restarts that drop nothing (issue 25): `taphook run --upgrade` takes
//! the listening sockets from the running process while requests keep
//! coming (from the test, and from `wrk` over kept-alive and new
//! connections), and while a 512 MiB upload and a WebSocket are in
//! flight: no request fails, the upload and the WebSocket complete, the
//! old process exits cleanly, and every event is delivered once.

mod common;

use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const PING_RULES: &str = "routes:\n  - name: ping\n    event: ping\n    method: GET\n    path: /_fixtures/empty\n    dedup_key: [\"ping\", \"$query.i\"]\n    data:\n      i: $query.i\nwebhooks:\n  - key: p\n    url: {receiver}/hooks/p\n    events: [ping]\n";

/// Kills the new process when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `taphook run --upgrade` on the stack's config, logging beside it.
fn upgrade(stack: &Stack) -> Killed {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(stack.dir.path().join("taphook.log"))
        .unwrap();
    Killed(
        Command::new(env!("CARGO_BIN_EXE_taphook"))
            .args(["run", "--upgrade", "--config"])
            .arg(stack.dir.path().join("taphook.yaml"))
            .env("RUST_LOG", "info,taphook=debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// A body of `chunks` chunks of `size` bytes, one every `every`; from
/// chunk `hold_at` on, only once `gate` is open. Its length too.
fn paced_body(
    chunks: usize,
    size: usize,
    every: Duration,
    hold_at: usize,
    gate: tokio::sync::watch::Receiver<bool>,
) -> (reqwest::Body, usize) {
    let chunk = bytes::Bytes::from(vec![b'x'; size]);
    let stream = futures::stream::unfold((0usize, gate), move |(i, mut gate)| {
        let chunk = chunk.clone();
        async move {
            if i == chunks {
                return None;
            }
            if i == hold_at {
                let _ = gate.wait_for(|open| *open).await;
            }
            tokio::time::sleep(every).await;
            Some((
                Ok::<_, std::io::Error>(http_body::Frame::data(chunk)),
                (i + 1, gate),
            ))
        }
    });
    (
        reqwest::Body::wrap(http_body_util::StreamBody::new(stream)),
        chunks * size,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_under_load_drops_nothing() {
    let _turn = HEAVY.lock().await;
    let mut stack = Stack::start(Setup {
        rules: vec![("ping.yaml", PING_RULES.to_string())],
        ..Default::default()
    })
    .await;
    let old_pid = stack.pid();
    let pid_file = stack.dir.path().join("data").join("taphook.pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        old_pid.to_string()
    );

    // Requests all along: half on one kept-alive client, half each on a
    // new connection.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for worker in 0..2 {
        let (stop, sent, failures) = (stop.clone(), sent.clone(), failures.clone());
        let base = stack.url("/_fixtures/empty");
        load.push(tokio::spawn(async move {
            let kept = reqwest::Client::builder().no_proxy().build().unwrap();
            while !stop.load(Ordering::Acquire) {
                let i = sent.fetch_add(1, Ordering::AcqRel);
                let client = if worker == 0 {
                    kept.clone()
                } else {
                    reqwest::Client::builder()
                        .no_proxy()
                        .pool_max_idle_per_host(0)
                        .build()
                        .unwrap()
                };
                match client.get(format!("{base}?i={i}")).send().await {
                    Ok(r) if r.status() == 204 => {}
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{i}: {}", r.status())),
                    Err(e) => failures.lock().unwrap().push(format!("{i}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // An upload in flight across the upgrade.
    // 30 chunks of 64 KiB over 3 s.
    let (open, _) = tokio::sync::watch::channel(true);
    let (body, total) = paced_body(
        30,
        64 * 1024,
        Duration::from_millis(100),
        0,
        open.subscribe(),
    );
    let upload = {
        let client = stack.client.clone();
        let url = stack.url("/_fixtures/count");
        tokio::spawn(async move { client.post(url).body(body).send().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut new = upgrade(&stack);
    // The old process hands over, drains and exits on its own.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = stack.exit_status() {
            break status;
        }
        assert!(
            matches!(new.0.try_wait(), Ok(None)),
            "the new process exited:\n{}",
            stack.log()
        );
        assert!(
            Instant::now() < deadline,
            "the old process did not exit:\n{}",
            stack.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.success(),
        "the old process: {status}\n{}",
        stack.log()
    );
    // Some more requests served by the new process alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    for task in load {
        task.await.unwrap();
    }
    let response = upload
        .await
        .unwrap()
        .expect("the upload in flight completes");
    assert_eq!(response.status(), 200);
    let counted: serde_json::Value = response.json().await.unwrap();
    assert_eq!(counted["bytes"], total);
    let failures = failures.lock().unwrap().clone();
    let sent = sent.load(Ordering::Acquire);
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {failures:?}\n{}",
        failures.len(),
        stack.log()
    );
    assert!(sent > 100, "only {sent} requests were sent");

    // Every request's event delivered, once (the old process's and the
    // new one's, through one store).
    let got = stack
        .receiver
        .wait_for("/hooks/p", sent, Duration::from_secs(30))
        .await;
    let mut seen: Vec<String> = got
        .iter()
        .map(|r| r.json()["data"]["i"].as_str().unwrap().to_string())
        .collect();
    seen.sort();
    let before = seen.len();
    seen.dedup();
    assert_eq!(before, seen.len(), "an event was delivered twice");
    assert_eq!(seen.len(), sent, "{}", stack.log());
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        new.0.id().to_string(),
        "the new process serves data_dir now"
    );
    assert_eq!(stack.admin_status("/readyz").await, 200);
    // The new process served its share: the admin listener is its alone now.
    let metrics = stack.metrics().await;
    let served: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("taphook_proxy_requests_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(served > 0.0, "the new process served nothing:\n{metrics}");
    assert!(
        stack
            .log()
            .contains("SIGQUIT: handing the listening sockets"),
        "{}",
        stack.log()
    );
    let _ = new.0.kill();
}

#[test]
fn an_upgrade_without_a_running_taphook_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = hand_config(dir.path(), "http://127.0.0.1:9", "");
    let (ok, text) = taphook_output(&["run", "--upgrade", "--config"], &config.path);
    assert!(!ok, "{text}");
    assert!(text.contains("no running taphook found"), "{text}");
}

/// `taphook upgrade` (what the systemd unit's reload runs) returns once the
/// new process serves, and the old one exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_command_returns_once_the_new_process_serves() {
    let mut stack = Stack::start(Setup {
        rules: vec![("ping.yaml", PING_RULES.to_string())],
        ..Default::default()
    })
    .await;
    // The new process inherits the command's output (the journal under
    // systemd): a file here, not a pipe a test would wait on forever.
    let printed = stack.dir.path().join("upgrade.out");
    let status = Command::new(env!("CARGO_BIN_EXE_taphook"))
        .args(["upgrade", "--config"])
        .arg(stack.dir.path().join("taphook.yaml"))
        .stdout(std::fs::File::create(&printed).unwrap())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    let text = std::fs::read_to_string(&printed).unwrap();
    assert!(status.success(), "{text}\n{}", stack.log());
    let pid: u32 = text
        .split("(pid ")
        .nth(1)
        .and_then(|t| t.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text:?}"));
    // Killed at the end, whatever happens (it runs in its own group).
    let _new = scopeguard(pid);
    let pid_file = stack.dir.path().join("data").join("taphook.pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );
    stack.ping(1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack.exit_status().is_none() {
        assert!(Instant::now() < deadline, "the old process did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.ping(2).await;
    stack
        .receiver
        .wait_for("/hooks/p", 2, Duration::from_secs(15))
        .await;
}

/// Kills `pid` when dropped.
fn scopeguard(pid: u32) -> impl Drop {
    struct Guard(u32);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
    Guard(pid)
}

/// Under systemd (`Type=notify`), taphook says when it is ready and that it
/// is the main process (after an upgrade, the new one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_and_the_main_pid() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let config = hand_config(dir.path(), "http://127.0.0.1:9", "");
    let child = Killed(
        Command::new(env!("CARGO_BIN_EXE_taphook"))
            .args(["run", "--config"])
            .arg(&config.path)
            .env("NOTIFY_SOCKET", &socket_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("a notification");
    let message = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(message.contains("READY=1"), "{message}");
    assert!(
        message.contains(&format!("MAINPID={}", child.0.id())),
        "{message}"
    );
}

const UPLOAD_RULES: &str = "routes:\n  - name: upload\n    event: uploaded\n    method: POST\n    path: /upload\n    data:\n      bytes: $response.body.bytes\nwebhooks:\n  - key: u\n    url: {receiver}/hooks/u\n    events: [uploaded]\n";

/// The tests that load the machine take turns: two at once on two cores
/// would time each other out.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for the old process (the stack's) to exit, at most `within`, and
/// asserts it exited 0.
async fn old_process_exits_cleanly(stack: &mut Stack, within: Duration) {
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = stack.exit_status() {
            break status;
        }
        assert!(Instant::now() < deadline, "the old process did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.success(),
        "the old process: {status}\n{}",
        stack.log()
    );
}

/// A gate that opens once the old process's proxy listener has stopped
/// (Pingora hands the sockets over, gives the new process 5 s, then stops
/// the old one's accept loop, which taphook logs).
fn old_listener_stopped(stack: &Stack) -> tokio::sync::watch::Receiver<bool> {
    let (open, gate) = tokio::sync::watch::channel(false);
    let log = stack.dir.path().join("taphook.log");
    tokio::spawn(async move {
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("listener stopped") {
                let _ = open.send(true);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    gate
}

/// An open WebSocket through the proxy: the upgrade request written by
/// hand, the `101` read.
async fn open_websocket(stack: &Stack) -> tokio::io::BufReader<tokio::net::TcpStream> {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let tcp = tokio::net::TcpStream::connect(stack.proxy).await.unwrap();
    let mut ws = tokio::io::BufReader::new(tcp);
    ws.get_mut()
        .write_all(b"GET /socket HTTP/1.1\r\nHost: importer\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .unwrap();
    let mut status = String::new();
    ws.read_line(&mut status).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    loop {
        let mut line = String::new();
        ws.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            return ws;
        }
    }
}

/// One message over the WebSocket and its echo.
async fn echo(ws: &mut tokio::io::BufReader<tokio::net::TcpStream>, stack: &Stack, i: usize) {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let message = format!("message {i}\n");
    ws.get_mut().write_all(message.as_bytes()).await.unwrap();
    let mut echoed = String::new();
    tokio::time::timeout(Duration::from_secs(10), ws.read_line(&mut echoed))
        .await
        .expect("an echo")
        .unwrap();
    assert_eq!(
        echoed,
        message,
        "the socket broke at message {i}:\n{}",
        stack.log()
    );
}

/// A 512 MiB upload and an open WebSocket, both in flight from before the
/// upgrade until after the old process stopped accepting: both complete
/// through the old process within `shutdown_grace`, the old process exits
/// cleanly, and the upload's event is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_big_upload_and_a_websocket_live_through_an_upgrade() {
    let _turn = HEAVY.lock().await;
    let upstream = format!("http://{}", upstream::spawn(None).await);
    let mut stack = Stack::start(Setup {
        upstream: Some(&upstream),
        config: "shutdown_grace: 20s\n",
        rules: vec![("upload.yaml", UPLOAD_RULES.to_string())],
        ..Default::default()
    })
    .await;
    let mut ws = open_websocket(&stack).await;
    let stopped = old_listener_stopped(&stack);
    // 448 MiB at 100 MiB/s, the last 64 MiB once the old listener stopped.
    const MIB: usize = 1 << 20;
    let (body, total) = paced_body(512, MIB, Duration::from_millis(10), 448, stopped.clone());
    let upload = {
        let request = stack.client.post(stack.url("/upload")).body(body);
        tokio::spawn(async move { request.send().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new = upgrade(&stack);
    // The WebSocket talks on until well after the old listener stopped.
    let mut i = 0;
    while !*stopped.borrow() {
        echo(&mut ws, &stack, i).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !upload.is_finished(),
        "the upload ended before the old listener stopped"
    );
    for _ in 0..10 {
        echo(&mut ws, &stack, i).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(ws);
    let response = upload
        .await
        .unwrap()
        .expect("the upload in flight completes");
    assert_eq!(response.status(), 200, "{}", stack.log());
    let counted: serde_json::Value = response.json().await.unwrap();
    assert_eq!(counted["bytes"], total);
    old_process_exits_cleanly(&mut stack, Duration::from_secs(40)).await;
    let got = stack
        .receiver
        .wait_for("/hooks/u", 1, Duration::from_secs(20))
        .await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["data"]["bytes"], total);
    // New connections go to the new process.
    assert!(tokio::net::TcpStream::connect(stack.proxy).await.is_ok());
    drop(new);
}

/// `wrk` on kept-alive connections and, beside it, on a new connection
/// per request: the upgrade in the middle of both is unseen (no socket
/// error, no non-2xx answer), and the old process exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_wrk_drops_nothing() {
    let _turn = HEAVY.lock().await;
    let mut stack = Stack::start(Setup::default()).await;
    let url = stack.url("/_fixtures/empty");
    let wrk = |connections: &str, extra: &[&str]| {
        let mut command = Command::new("wrk");
        command
            .args(["-t1", "-c", connections, "-d9s"])
            .args(extra)
            .arg(&url);
        std::thread::spawn(move || {
            command
                .output()
                .expect("wrk runs (make test-prereqs installs it)")
        })
    };
    let kept = wrk("4", &[]);
    let fresh = wrk("2", &["-H", "Connection: close"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let new = upgrade(&stack);
    old_process_exits_cleanly(&mut stack, Duration::from_secs(30)).await;
    for (name, run) in [("kept-alive", kept), ("new connections", fresh)] {
        let out = run.join().unwrap();
        let report = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "wrk ({name}): {report}");
        assert!(!report.contains("Socket errors"), "wrk ({name}): {report}");
        assert!(!report.contains("Non-2xx"), "wrk ({name}): {report}");
        let requests: u64 = report
            .split(" requests in ")
            .next()
            .and_then(|s| s.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(requests > 100, "wrk ({name}): {report}");
    }
    assert!(stack
        .log()
        .contains("SIGQUIT: handing the listening sockets"));
    drop(new);
}
