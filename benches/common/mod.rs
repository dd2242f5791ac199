//! What the end-to-end benches share (`benches/delivery.rs`,
//! `benches/jetstream.rs`): the real `taphook` binary as child processes,
//! the reference importer (`taphook importer`), a keep-alive receiver in
//! this process that timestamps each arrival, the load (sessions created
//! through taphook, as fast as possible or paced), and the figures.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;

/// Arrivals at the receiver: (embed id, arrival time in µs since the epoch).
#[derive(Default)]
pub struct Arrivals(pub Mutex<Vec<(i64, u64)>>);

impl Arrivals {
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }

    /// First and last arrival (µs since the epoch).
    pub fn span(&self) -> (u64, u64) {
        let a = self.0.lock().unwrap();
        (
            a.iter().map(|x| x.1).min().unwrap_or(0),
            a.iter().map(|x| x.1).max().unwrap_or(0),
        )
    }
}

pub fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn receive(State(arrivals): State<Arc<Arrivals>>, body: Bytes) -> StatusCode {
    let at = micros_now();
    #[derive(serde::Deserialize)]
    struct Envelope {
        embed_id: i64,
    }
    let id = serde_json::from_slice::<Envelope>(&body).map_or(-1, |e| e.embed_id);
    arrivals.0.lock().unwrap().push((id, at));
    StatusCode::OK
}

/// The receiver (axum, answering 200 to anything), on a loopback port, in
/// `rt`.
pub fn start_receiver(rt: &tokio::runtime::Runtime) -> (SocketAddr, Arc<Arrivals>) {
    let arrivals = Arc::new(Arrivals::default());
    let addr = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(arrivals.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    });
    (addr, arrivals)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (11 and 12 after the name).
    (ticks(11) + ticks(12)) / 100.0
}

/// A child process, killed when dropped.
pub struct Killed(pub Child);

impl Killed {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `taphook` binary with these arguments (`RUST_LOG=warn`): this
/// build's, or the one `TAPHOOK_BIN` names (another build, to compare
/// against in the same session).
pub fn spawn(args: &[&str]) -> Killed {
    let bin = std::env::var("TAPHOOK_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_taphook").into());
    spawn_bin(&bin, args)
}

/// A `taphook` binary (another build: a baseline) with these arguments.
pub fn spawn_bin(bin: &str, args: &[&str]) -> Killed {
    Killed(
        Command::new(bin)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("taphook binary"),
    )
}

/// The reference importer (`taphook importer`) on a free port: the
/// process and its port, once it accepts connections.
pub fn start_importer() -> (Killed, u16) {
    let up = free_port();
    let importer = spawn(&["importer", "--listen", &format!("127.0.0.1:{up}")]);
    wait_tcp(up);
    (importer, up)
}

/// Waits (up to 10 s) until something accepts connections on `port`.
pub fn wait_tcp(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on 127.0.0.1:{port}");
}

/// `dir/rules`: the OneSchema profile and one webhook, `event_webhook`,
/// delivering every event to the receiver.
pub fn write_rules(dir: &Path, receiver: SocketAddr) -> std::path::PathBuf {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/rules/oneschema.yaml"),
        rules.join("oneschema.yaml"),
    )
    .unwrap();
    std::fs::write(
        rules.join("hooks.yaml"),
        format!("webhooks:\n  - key: event_webhook\n    url: http://{receiver}/hooks\n    events: [\"*\"]\n"),
    )
    .unwrap();
    rules
}

/// Writes `config` for one instance: its ports, the importer upstream, the
/// rules directory, its data directory, loopback deliveries allowed,
/// `CONCURRENCY` if set, then `extra` (e.g. a `store:` block).
pub fn write_config(
    config: &Path,
    proxy_port: u16,
    admin_port: u16,
    upstream_port: u16,
    rules_dir: &Path,
    data_dir: &Path,
    extra: &str,
) {
    let mut f = std::fs::File::create(config).unwrap();
    writeln!(
        f,
        "listen: 127.0.0.1:{proxy_port}\nupstream: http://127.0.0.1:{upstream_port}\nadmin_listen: 127.0.0.1:{admin_port}\nrules_dir: {}\ndata_dir: {}",
        rules_dir.display(),
        data_dir.display()
    )
    .unwrap();
    // The receiver is on loopback, which the SSRF guard refuses by default.
    writeln!(f, "delivery:\n  allow_private_networks: [127.0.0.0/8]").unwrap();
    // CONCURRENCY: delivery.concurrency_per_webhook (taphook's default if unset).
    if let Ok(n) = std::env::var("CONCURRENCY") {
        writeln!(f, "  concurrency_per_webhook: {n}").unwrap();
    }
    f.write_all(extra.as_bytes()).unwrap();
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

pub async fn wait_ready(client: &reqwest::Client, url: &str) {
    for _ in 0..200 {
        if client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never became ready");
}

/// Creates one embed session through taphook; its id and when the
/// response arrived.
pub async fn create(client: &reqwest::Client, proxy: &str) -> Option<(i64, u64)> {
    let response = client
        .post(format!("{proxy}/v1/embeds"))
        .header("content-type", "application/json")
        .body(r#"{"template_key":"contacts","event_webhook_keys":["event_webhook"],"dev_mode":false}"#)
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = response.json().await.ok()?;
    Some((body["id"].as_i64()?, micros_now()))
}

/// Waits until `want` events have arrived (or `limit` passed).
pub async fn wait_for(arrivals: &Arrivals, want: usize, limit: Duration) -> usize {
    let started = Instant::now();
    loop {
        let n = arrivals.len();
        if n >= want || started.elapsed() > limit {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `want` events have arrived, or none arrived for `stall`.
pub async fn wait_until_stalled(arrivals: &Arrivals, want: usize, stall: Duration) -> usize {
    let (mut last, mut since) = (arrivals.len(), Instant::now());
    loop {
        let n = arrivals.len();
        if n >= want {
            return n;
        }
        if n != last {
            (last, since) = (n, Instant::now());
        } else if since.elapsed() > stall {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `events` sessions created by `clients` concurrent clients, as fast as
/// they go, request `i` through `proxies[i % len]`: the embed ids created
/// (a failed request is left out).
pub async fn flood(
    client: &reqwest::Client,
    proxies: &[String],
    events: usize,
    clients: usize,
) -> Vec<i64> {
    let next = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(Mutex::new(Vec::with_capacity(events)));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, proxies, next, ids) =
            (client.clone(), proxies.to_vec(), next.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= events {
                    break;
                }
                if let Some((id, _)) = create(&client, &proxies[i % proxies.len()]).await {
                    ids.lock().unwrap().push(id);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let ids = std::mem::take(&mut *ids.lock().unwrap());
    ids
}

/// Sessions created at `rate` per second for `seconds`, request `i`
/// through `proxies[i % len]`: embed id → when the client had the
/// response (µs since the epoch).
pub async fn paced(
    client: &reqwest::Client,
    proxies: &[String],
    rate: u64,
    seconds: u64,
) -> HashMap<i64, u64> {
    let responses: Arc<Mutex<HashMap<i64, u64>>> = Arc::default();
    let total = (rate * seconds) as usize;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        tick.tick().await;
        let (client, proxy, responses) = (
            client.clone(),
            proxies[i % proxies.len()].clone(),
            responses.clone(),
        );
        tasks.push(tokio::spawn(async move {
            if let Some((id, at)) = create(&client, &proxy).await {
                responses.lock().unwrap().insert(id, at);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let responses = std::mem::take(&mut *responses.lock().unwrap());
    responses
}

/// End-to-end latencies (ms, sorted) of the arrivals whose id is in
/// `responses`: arrival minus the client's receipt of the response.
pub fn latencies(arrivals: &Arrivals, responses: &HashMap<i64, u64>) -> Vec<f64> {
    let a = arrivals.0.lock().unwrap();
    let mut out: Vec<f64> = a
        .iter()
        .filter_map(|(id, at)| {
            let sent = *responses.get(id)?;
            Some(at.saturating_sub(sent) as f64 / 1000.0)
        })
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

/// Exactly once? Against the ids sent: how many never arrived, how many
/// arrived more than once (extra copies), and arrivals of ids not sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    pub sent: usize,
    pub missing: usize,
    pub duplicates: usize,
    pub unexpected: usize,
}

impl Tally {
    pub fn exactly_once(&self) -> bool {
        self.missing == 0 && self.duplicates == 0 && self.unexpected == 0
    }
}

pub fn tally(arrivals: &Arrivals, sent: impl IntoIterator<Item = i64>) -> Tally {
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for (id, _) in arrivals.0.lock().unwrap().iter() {
        *counts.entry(*id).or_default() += 1;
    }
    let mut t = Tally::default();
    for id in sent {
        t.sent += 1;
        match counts.remove(&id) {
            None | Some(0) => t.missing += 1,
            Some(n) => t.duplicates += n - 1,
        }
    }
    t.unexpected = counts.values().sum();
    t
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// A body as taphook delivers it, for the receiver's ceiling.
pub const SAMPLE_EVENT: &str = r#"{"uuid":"event-a616c250-e9c0-5719-818e-9486b14ce0b0","embed_id":53511,"embed_jwt":null,"environment_name":"Production","template_key":"contacts","event_type":"embed_initialized","trigger_type":"api","data":{},"created_at":1795345626.3582406}"#;

/// The receiver's ceiling: wrk POSTing a delivered body to it.
pub fn receiver_ceiling(addr: SocketAddr, body: &str, dir: &Path) -> Option<f64> {
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk not found (make bench installs it): receiver ceiling skipped");
        return None;
    }
    let script = dir.join("event.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = {}\n",
            serde_json::to_string(body).ok()?
        ),
    )
    .ok()?;
    let out = Command::new("wrk")
        .args(["-t2", "-c32", "-d5s", "-s"])
        .arg(&script)
        .arg(format!("http://{addr}/hooks"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}
