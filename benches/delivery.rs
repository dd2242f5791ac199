//! Delivery throughput and end-to-end latency (issue 6, part 3), with the
//! real `taphook` binary, the reference importer and a keep-alive
//! receiver on loopback:
//!
//! 1. the receiver's own ceiling: `wrk` POSTing an event body to it;
//! 2. 100,000 events (`POST /v1/embeds` through taphook, 32 at a time):
//!    events/s delivered, first arrival to last;
//! 3. requests paced at 1,000/s for 10 s: latency from the client's
//!    receipt of the upstream's response to the event's arrival at the
//!    receiver (one clock: the same process), p50/p99.
//!
//! `cargo bench --bench delivery` (part of `make bench`); writes
//! `target/bench/delivery.md`. Environment: `EVENTS` (default 100000),
//! `RATE` (1000), `SECONDS` (10), `CONCURRENCY` (taphook's
//! `delivery.concurrency_per_webhook`, its default when unset).

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;

/// Arrivals at the receiver: (embed id, arrival time in µs since the epoch).
#[derive(Default)]
struct Arrivals(Mutex<Vec<(i64, u64)>>);

fn micros_now() -> u64 {
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn status_kib(pid: u32, field: &str) -> u64 {
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
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (11 and 12 after the name).
    (ticks(11) + ticks(12)) / 100.0
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> Killed {
    Killed(
        Command::new(env!("CARGO_BIN_EXE_taphook"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("taphook binary"),
    )
}

async fn wait_ready(client: &reqwest::Client, url: &str) {
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
async fn create(client: &reqwest::Client, proxy: &str) -> Option<(i64, u64)> {
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
async fn wait_for(arrivals: &Arrivals, want: usize, limit: Duration) -> usize {
    let started = Instant::now();
    loop {
        let n = arrivals.0.lock().unwrap().len();
        if n >= want || started.elapsed() > limit {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The receiver's ceiling: wrk POSTing a delivered body to it.
fn receiver_ceiling(addr: SocketAddr, body: &str, dir: &std::path::Path) -> Option<f64> {
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

fn main() {
    // `cargo test --all-targets` runs this without `--bench`: then a
    // smoke run (small, no wrk, nothing written) that must deliver every
    // event, so the bench cannot rot unnoticed.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (events, rate, seconds) = if smoke {
        (300, 200, 1)
    } else {
        (
            env_or("EVENTS", 100_000),
            env_or("RATE", 1000u64),
            env_or("SECONDS", 10u64),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let arrivals = Arc::new(Arrivals::default());
    let receiver: SocketAddr = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(arrivals.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    });

    let (up, proxy_port, admin) = (free_port(), free_port(), free_port());
    let _importer = spawn(&["importer", "--listen", &format!("127.0.0.1:{up}")]);
    let rules = dir.path().join("rules");
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
    let config = dir.path().join("taphook.yaml");
    let mut f = std::fs::File::create(&config).unwrap();
    writeln!(
        f,
        "listen: 127.0.0.1:{proxy_port}\nupstream: http://127.0.0.1:{up}\nadmin_listen: 127.0.0.1:{admin}\nrules_dir: rules\ndata_dir: data"
    )
    .unwrap();
    // The receiver is on loopback, which the SSRF guard refuses by default.
    writeln!(f, "delivery:\n  allow_private_networks: [127.0.0.0/8]").unwrap();
    // CONCURRENCY: delivery.concurrency_per_webhook (taphook's default if unset).
    if let Ok(n) = std::env::var("CONCURRENCY") {
        writeln!(f, "  concurrency_per_webhook: {n}").unwrap();
    }
    drop(f);
    let taphook = spawn(&["run", "--config", config.to_str().unwrap()]);
    let pid = taphook.0.id();
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    rt.block_on(wait_ready(
        &client,
        &format!("http://127.0.0.1:{admin}/readyz"),
    ));
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", up)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // A body as taphook delivers it, for the receiver's ceiling.
    rt.block_on(create(&client, &proxy))
        .expect("a session through taphook");
    rt.block_on(wait_for(&arrivals, 1, Duration::from_secs(10)));
    let sample = r#"{"uuid":"event-a616c250-e9c0-5719-818e-9486b14ce0b0","embed_id":53511,"embed_jwt":null,"environment_name":"Production","template_key":"contacts","event_type":"embed_initialized","trigger_type":"api","data":{},"created_at":1795345626.3582406}"#;
    let ceiling = if smoke {
        None
    } else {
        receiver_ceiling(receiver, sample, dir.path())
    };
    arrivals.0.lock().unwrap().clear();

    // 2. Throughput: `events` sessions, 32 clients.
    let cpu_before = cpu_seconds(pid);
    let started_us = micros_now();
    let sent = rt.block_on(async {
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (client, proxy, next) = (client.clone(), proxy.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let mut ok = 0usize;
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < events {
                    ok += usize::from(create(&client, &proxy).await.is_some());
                }
                ok
            }));
        }
        let mut ok = 0;
        for t in tasks {
            ok += t.await.unwrap_or(0);
        }
        ok
    });
    let sent_us = micros_now();
    let arrived = rt.block_on(wait_for(&arrivals, sent, Duration::from_secs(600)));
    let cpu = cpu_seconds(pid) - cpu_before;
    let (first, last) = {
        let a = arrivals.0.lock().unwrap();
        (
            a.iter().map(|x| x.1).min().unwrap_or(0),
            a.iter().map(|x| x.1).max().unwrap_or(0),
        )
    };
    let ingest_rate = sent as f64 / ((sent_us - started_us) as f64 / 1e6);
    let delivery_rate = arrived as f64 / ((last - first).max(1) as f64 / 1e6);
    let hwm_throughput = status_kib(pid, "VmHWM:") / 1024;
    arrivals.0.lock().unwrap().clear();

    // 3. Latency at `rate` events/s.
    let responses: Arc<Mutex<HashMap<i64, u64>>> = Arc::default();
    let total = (rate * seconds) as usize;
    rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        let mut tasks = Vec::with_capacity(total);
        for _ in 0..total {
            tick.tick().await;
            let (client, proxy, responses) = (client.clone(), proxy.clone(), responses.clone());
            tasks.push(tokio::spawn(async move {
                if let Some((id, at)) = create(&client, &proxy).await {
                    responses.lock().unwrap().insert(id, at);
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let paced = responses.lock().unwrap().len();
    rt.block_on(wait_for(&arrivals, paced, Duration::from_secs(120)));
    let mut latencies: Vec<f64> = {
        let responses = responses.lock().unwrap();
        let a = arrivals.0.lock().unwrap();
        a.iter()
            .filter_map(|(id, at)| {
                let sent = *responses.get(id)?;
                Some(at.saturating_sub(sent) as f64 / 1000.0)
            })
            .collect()
    };
    latencies.sort_by(f64::total_cmp);
    let rss = status_kib(pid, "VmRSS:") / 1024;
    let hwm = status_kib(pid, "VmHWM:") / 1024;

    let mut lines = vec![
        "| measure | value |".to_string(),
        "| --- | --- |".to_string(),
    ];
    if let Some(c) = ceiling {
        lines.push(format!(
            "| receiver ceiling (wrk -t2 -c32 POSTs of an event body) | {c:.0} requests/s |"
        ));
    }
    lines.push(format!(
        "| {sent} events through taphook (32 clients): accepted | {ingest_rate:.0} requests/s |"
    ));
    lines.push(format!(
        "| delivered, first to last arrival | {arrived} events, {delivery_rate:.0} events/s{} |",
        ceiling.map_or(String::new(), |c| format!(
            " ({:.0}% of the ceiling)",
            delivery_rate / c * 100.0
        ))
    ));
    lines.push(format!(
        "| taphook CPU per event (proxy + derive + store + delivery) | {:.0} µs |",
        cpu / sent.max(1) as f64 * 1e6
    ));
    lines.push(format!(
        "| taphook peak RSS after the {sent} events | {hwm_throughput} MiB |"
    ));
    lines.push(format!(
        "| end-to-end latency at {rate} events/s for {seconds} s ({} events) | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms |",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    ));
    lines.push(format!(
        "| taphook RSS at the end (peak) | {rss} MiB ({hwm} MiB) |"
    ));
    let table = lines.join("\n") + "\n";
    print!("{table}");
    if smoke {
        assert_eq!((sent, arrived), (events, events), "every event delivered");
        assert_eq!(latencies.len(), paced, "every paced event delivered");
        return;
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("delivery.md"), table);
    // For the plots: the latency distribution as percentiles.
    let cdf: Vec<(f64, f64)> = (0..=200)
        .map(|i| {
            let p = i as f64 / 200.0;
            (p, percentile(&latencies, p))
        })
        .collect();
    let summary = serde_json::json!({
        "receiver_ceiling": ceiling,
        "events": sent,
        "accepted_per_s": ingest_rate,
        "delivered": arrived,
        "delivered_per_s": delivery_rate,
        "cpu_us_per_event": cpu / sent.max(1) as f64 * 1e6,
        "rate": rate,
        "latency_ms": {
            "p50": percentile(&latencies, 0.5),
            "p99": percentile(&latencies, 0.99),
            "max": latencies.last(),
            "cdf": cdf,
        },
        "rss_mib": rss,
        "peak_rss_mib": hwm,
    });
    let _ = std::fs::write(out.join("delivery.json"), summary.to_string());
    drop(taphook);
}
