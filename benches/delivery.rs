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

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;

/// One throughput run: what was sent and delivered, how fast, and
/// taphook's CPU meanwhile.
struct Throughput {
    sent: usize,
    arrived: usize,
    ingest_rate: f64,
    delivery_rate: f64,
    cpu: f64,
}

async fn throughput(
    client: &reqwest::Client,
    proxies: &[String],
    events: usize,
    arrivals: &Arrivals,
    pid: u32,
) -> Throughput {
    arrivals.clear();
    let cpu_before = cpu_seconds(pid);
    let started_us = micros_now();
    let sent = flood(client, proxies, events, 32).await.len();
    let sent_us = micros_now();
    let arrived = wait_for(arrivals, sent, Duration::from_secs(600)).await;
    let cpu = cpu_seconds(pid) - cpu_before;
    let (first, last) = arrivals.span();
    arrivals.clear();
    Throughput {
        sent,
        arrived,
        ingest_rate: sent as f64 / ((sent_us - started_us) as f64 / 1e6),
        delivery_rate: arrived as f64 / ((last - first).max(1) as f64 / 1e6),
        cpu,
    }
}

/// The bench's webhook again, with `extra` settings.
fn set_webhook(rules: &Path, receiver: SocketAddr, extra: &str) {
    std::fs::write(
        rules.join("hooks.yaml"),
        format!("webhooks:\n  - key: event_webhook\n    url: http://{receiver}/hooks\n    events: [\"*\"]\n{extra}"),
    )
    .unwrap();
}

fn signal_hup(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status();
}

/// Waits until taphook has loaded its rules `n` times.
async fn wait_reloaded(client: &reqwest::Client, admin: u16, n: f64) {
    let url = format!("http://127.0.0.1:{admin}/metrics");
    for _ in 0..500 {
        if let Ok(r) = client.get(&url).send().await {
            let text = r.text().await.unwrap_or_default();
            let loaded = text
                .lines()
                .find(|l| l.starts_with("taphook_rules_reloads_total{result=\"success\"}"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            if loaded >= n {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("taphook did not reload its rules");
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
    let (receiver, arrivals) = start_receiver(&rt);

    let (_importer, up) = start_importer();
    let (proxy_port, admin) = (free_port(), free_port());
    let rules = write_rules(dir.path(), receiver);
    let config = dir.path().join("taphook.yaml");
    write_config(
        &config,
        proxy_port,
        admin,
        up,
        &rules,
        &dir.path().join("data"),
        "",
    );
    let taphook = spawn(&["run", "--config", config.to_str().unwrap()]);
    let pid = taphook.id();
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let client = client();
    rt.block_on(wait_ready(
        &client,
        &format!("http://127.0.0.1:{admin}/readyz"),
    ));

    rt.block_on(create(&client, &proxy))
        .expect("a session through taphook");
    rt.block_on(wait_for(&arrivals, 1, Duration::from_secs(10)));
    let ceiling = if smoke {
        None
    } else {
        receiver_ceiling(receiver, SAMPLE_EVENT, dir.path())
    };
    arrivals.clear();

    // 2. Throughput: `events` sessions, 32 clients, with today's
    // delivery (no rate limit, `ordering: none`).
    let proxies = [proxy];
    let plain = rt.block_on(throughput(&client, &proxies, events, &arrivals, pid));
    let (sent, arrived, ingest_rate, delivery_rate, cpu, hwm_throughput) = (
        plain.sent,
        plain.arrived,
        plain.ingest_rate,
        plain.delivery_rate,
        plain.cpu,
        status_kib(pid, "VmHWM:") / 1024,
    );
    // 2b. The same with each delivery control, in the same run (rules
    // reloaded with SIGHUP): `ordering: session` (each session here is
    // one event: the cost of the order check alone), and a rate limit
    // at half the rate just measured.
    let limit = (delivery_rate / 2.0).max(1.0).round();
    let controls = [
        ("ordering: session", "    ordering: session\n".to_string()),
        (
            "rate_limit at half that rate",
            format!("    rate_limit: {{ per_second: {limit}, burst: 100 }}\n"),
        ),
    ];
    let mut controlled = Vec::new();
    for (reloads, (name, extra)) in controls.iter().enumerate() {
        set_webhook(&rules, receiver, extra);
        signal_hup(pid);
        rt.block_on(wait_reloaded(&client, admin, reloads as f64 + 2.0));
        let events = if smoke { events } else { events / 2 };
        let t = rt.block_on(throughput(&client, &proxies, events, &arrivals, pid));
        if smoke {
            assert_eq!(
                (t.sent, t.arrived),
                (events, events),
                "{name}: every event delivered"
            );
        }
        controlled.push((*name, t));
    }
    set_webhook(&rules, receiver, "");
    signal_hup(pid);
    rt.block_on(wait_reloaded(&client, admin, controls.len() as f64 + 2.0));

    // 3. Latency at `rate` events/s.
    let responses = rt.block_on(paced(&client, &proxies, rate, seconds));
    let paced = responses.len();
    rt.block_on(wait_for(&arrivals, paced, Duration::from_secs(120)));
    let latencies = latencies(&arrivals, &responses);
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
    for (name, t) in &controlled {
        lines.push(format!(
            "| with {name}: {} events delivered | {:.0} events/s ({:.2}× ordering none), {:.0} µs CPU per event |",
            t.arrived,
            t.delivery_rate,
            t.delivery_rate / delivery_rate,
            t.cpu / t.sent.max(1) as f64 * 1e6
        ));
    }
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
        "controls": controlled.iter().map(|(name, t)| serde_json::json!({
            "setting": name,
            "delivered_per_s": t.delivery_rate,
            "ratio_to_plain": t.delivery_rate / delivery_rate,
            "cpu_us_per_event": t.cpu / t.sent.max(1) as f64 * 1e6,
        })).collect::<Vec<_>>(),
    });
    let _ = std::fs::write(out.join("delivery.json"), summary.to_string());
    drop(taphook);
}
