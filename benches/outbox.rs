//! The outbox: how fast deliveries are accepted (group commit against one
//! commit per delivery, measured in the same run), how long a restart
//! takes to find its work with 1,000,000 deliveries pending, and taphook's
//! peak memory with its receiver down and those 1,000,000 pending.
//!
//! Run: `cargo bench --bench outbox` (about two minutes; prints a table).
//! `OUTBOX_BENCH_PENDING` changes the pending count.

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use taphook::event::Event;
use taphook::store::sqlite::{now_ms, Store};
use taphook::store::StoredEvent;

fn event(i: usize) -> StoredEvent {
    StoredEvent {
        trace: None,
        event: Event {
            uuid: format!("event-{i:032}"),
            embed_id: json!(i),
            embed_jwt: json!(null),
            environment_name: "Production".into(),
            template_key: json!("contacts"),
            event_type: "columns_mapped".into(),
            trigger_type: "user".into(),
            data: json!({"validation_error_counts": {"total": 3, "by_column": {"email": {"invalid_email": 3}}}}),
            created_at: now_ms() as f64 / 1000.0,
        },
        session: Some(
            serde_json::from_value(
                json!({"webhook_keys": ["event_webhook"], "template_key": "contacts"}),
            )
            .unwrap(),
        ),
        registered: None,
        request_id: None,
        test: false,
    }
}

fn accept(store: &Store, from: usize, n: usize, commit_each: bool) -> f64 {
    let t = Instant::now();
    for i in from..from + n {
        store.insert_delivery("event_webhook", event(i)).unwrap();
        if commit_each {
            store.flush().unwrap();
        }
    }
    store.flush().unwrap();
    n as f64 / t.elapsed().as_secs_f64()
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("outbox: run with `cargo bench --bench outbox`");
        return;
    }
    let pending: usize = std::env::var("OUTBOX_BENCH_PENDING")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir_in(std::env::current_dir().unwrap()).unwrap();
    let data = dir.path().join("data");

    // 1. Accept throughput, group commit against one commit each.
    let store = Store::open(&data).unwrap();
    let single = accept(&store, 0, 2_000, true);
    let grouped = accept(&store, 2_000, 100_000, false);
    // 2. Fill to `pending`, then measure a restart finding its work.
    let mut i = 102_000;
    while i < pending {
        let n = (pending - i).min(100_000);
        accept(&store, i, n, false);
        i += n;
    }
    store.close();
    drop(store);
    let t = Instant::now();
    let store = Store::open(&data).unwrap();
    let first = store
        .due("event_webhook", now_ms() + 1, 16, &HashSet::new())
        .unwrap();
    let recovery = t.elapsed();
    assert_eq!(first.len(), 16);
    let t = Instant::now();
    let counts = store.counts(&["event_webhook"]).unwrap();
    let count_time = t.elapsed();
    assert_eq!(
        counts.iter().map(|c| c.2).sum::<i64>() as usize,
        pending.max(102_000)
    );
    store.close();
    drop(store);

    // 3. taphook itself on that data directory, the receiver down.
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        rules.join("hooks.yaml"),
        format!(
            "routes:\n  - name: r\n    event: columns_mapped\n    path: /r\nwebhooks:\n  - key: event_webhook\n    url: http://127.0.0.1:{closed}/down\n    events: [\"*\"]\n    retry: {{ on: [error, timeout], max_retries: 1000, backoff: [60s] }}\n"
        ),
    )
    .unwrap();
    let port = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let config = dir.path().join("taphook.yaml");
    let mut f = std::fs::File::create(&config).unwrap();
    writeln!(f, "listen: 127.0.0.1:{}\nupstream: http://127.0.0.1:{closed}\nadmin_listen: 127.0.0.1:{}\nrules_dir: rules\ndata_dir: data\nthreads: 2\ndelivery:\n  allow_private_networks: [127.0.0.0/8]", port(()), port(())).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_taphook"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut peak = 0;
    let mut samples = Vec::new();
    for s in 0..30 {
        std::thread::sleep(Duration::from_secs(1));
        let hwm = vm_hwm_kib(child.id()).unwrap_or(0);
        peak = peak.max(hwm);
        if s % 10 == 9 {
            samples.push(hwm / 1024);
        }
    }
    let _ = child.kill();
    let _ = child.wait();

    println!("| measure | value |");
    println!("| --- | --- |");
    println!("| accept, one commit per delivery (baseline) | {single:.0} deliveries/s |");
    println!(
        "| accept, group commit | {grouped:.0} deliveries/s ({:.0}x the baseline) |",
        grouped / single
    );
    println!(
        "| restart with {pending} pending: open + first due batch | {:.0} ms |",
        recovery.as_secs_f64() * 1000.0
    );
    println!(
        "| counting {pending} deliveries by webhook and state (gauges) | {:.0} ms |",
        count_time.as_secs_f64() * 1000.0
    );
    println!("| taphook peak RSS, receiver down, {pending} pending, 30 s (at 10/20/30 s) | {} MiB ({} MiB) |", peak / 1024,
        samples.iter().map(ToString::to_string).collect::<Vec<_>>().join(" / "));
}
