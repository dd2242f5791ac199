//! The store backends compared (issue 9), in one run: the embedded store
//! (one instance) against NATS JetStream with 1, 2 and 3 replicas sharing
//! one delivery pipeline, with the real `taphook` binary, the reference
//! importer, one `nats-server -js` (a free loopback port, its own store
//! directory, started fresh for every measurement) and a keep-alive
//! receiver in this process. Traffic is spread round-robin over the
//! replicas' proxy ports. For each setup:
//!
//! 1. throughput: `EVENTS` sessions created by `CLIENTS` concurrent
//!    clients, as fast as they go; events/s delivered from the first
//!    arrival at the receiver to the last, and every event must arrive
//!    exactly once;
//! 2. latency: sessions paced at `RATE`/s for `SECONDS` s; from the
//!    client's receipt of the upstream's response to the event's arrival
//!    at the receiver (one process, one clock), p50/p99; again exactly
//!    once.
//!
//! The setups are interleaved (every run measures each of them, in a
//! rotating order), `RUNS` times; the report gives medians, and ratios
//! against the embedded store measured in the same run. While the
//! throughput phase runs, each instance's `/metrics` is sampled for the
//! JetStream write buffer (`taphook_store_buffered`: writes accepted but
//! not yet acknowledged by NATS) and the outbox (`taphook_outbox_pending`).
//!
//! `cargo bench --bench jetstream` (part of `make bench`); writes
//! `target/bench/jetstream.md` and `jetstream.json`. Environment: `EVENTS`
//! (default 10000: the tap queue, 10,000 exchanges per
//! instance, absorbs the burst; a longer one at more than the pipeline's
//! rate is dropped at the tap, counted, and fails the exactly-once check), `CLIENTS` (32), `RATE` (500), `SECONDS` (10), `RUNS`
//! (3), `SETUPS` (e.g. `embedded,js1,js3`; all four by default;
//! `js1-ordered` and `js3-ordered` add JetStream with the webhook's
//! `ordering: session`),
//! `BASELINE_BIN` (another build's `taphook`: adds setup `base-js1`, that
//! binary on JetStream with 1 replica, to compare two builds in one run),
//! `CONCURRENCY` (taphook's `delivery.concurrency_per_webhook`). Without
//! `--bench` (`cargo test --all-targets`): a smoke run of a few events per
//! setup that asserts exactly-once delivery, and fails if `nats-server` is
//! not installed (`make test` installs it).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Embedded,
    /// JetStream with this many replicas.
    JetStream(usize),
    /// JetStream with this many replicas, the webhook `ordering: session`.
    Ordered(usize),
    /// JetStream, 1 replica, with the binary `BASELINE_BIN` names (an
    /// earlier build, measured in the same run as this one).
    Baseline,
}

impl Backend {
    fn key(self) -> String {
        match self {
            Backend::Embedded => "embedded".into(),
            Backend::JetStream(n) => format!("js{n}"),
            Backend::Ordered(n) => format!("js{n}-ordered"),
            Backend::Baseline => "base-js1".into(),
        }
    }

    fn label(self) -> String {
        match self {
            Backend::Embedded => "embedded (SQLite), 1 instance".into(),
            Backend::JetStream(1) => "JetStream, 1 replica".into(),
            Backend::JetStream(n) => format!("JetStream, {n} replicas"),
            Backend::Ordered(1) => "JetStream, 1 replica, ordering: session".into(),
            Backend::Ordered(n) => format!("JetStream, {n} replicas, ordering: session"),
            Backend::Baseline => "JetStream, 1 replica, BASELINE_BIN".into(),
        }
    }
}

/// `nats-server -js` on a free loopback port with its own store.
struct Nats {
    process: Killed,
    port: u16,
    _store: tempfile::TempDir,
}

impl Nats {
    fn start() -> Nats {
        let store = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start nats-server ({e}): the JetStream bench needs it \
                     (make test installs it: apt-get install nats-server)"
                )
            });
        let nats = Nats {
            process: Killed(child),
            port,
            _store: store,
        };
        wait_tcp(port);
        nats
    }
}

/// The instances of one setup (and its NATS), stopped when dropped.
struct Running {
    // Declared first: the instances stop before NATS does.
    replicas: Vec<Killed>,
    proxies: Vec<String>,
    admins: Vec<String>,
    nats: Option<Nats>,
    _dir: tempfile::TempDir,
}

impl Running {
    fn pids(&self) -> Vec<u32> {
        self.replicas.iter().map(Killed::id).collect()
    }
}

fn start(
    backend: Backend,
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    receiver: std::net::SocketAddr,
    upstream: u16,
) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(dir.path(), receiver);
    if let Backend::Ordered(_) = backend {
        let hooks = rules.join("hooks.yaml");
        let text = std::fs::read_to_string(&hooks).unwrap();
        std::fs::write(&hooks, format!("{text}    ordering: session\n")).unwrap();
    }
    let (n, nats) = match backend {
        Backend::Embedded => (1, None),
        Backend::JetStream(n) | Backend::Ordered(n) => (n, Some(Nats::start())),
        Backend::Baseline => (1, Some(Nats::start())),
    };
    let bin = match backend {
        Backend::Baseline => std::env::var("BASELINE_BIN").expect("BASELINE_BIN"),
        _ => env!("CARGO_BIN_EXE_taphook").to_string(),
    };
    let store = nats.as_ref().map_or(String::new(), |nats| {
        format!(
            "store:\n  backend: jetstream\n  url: nats://127.0.0.1:{}\n",
            nats.port
        )
    });
    let mut running = Running {
        replicas: Vec::new(),
        proxies: Vec::new(),
        admins: Vec::new(),
        nats,
        _dir: dir,
    };
    for i in 0..n {
        let home = running._dir.path().join(format!("replica-{i}"));
        std::fs::create_dir_all(&home).unwrap();
        let (proxy, admin) = (free_port(), free_port());
        let config = home.join("taphook.yaml");
        write_config(
            &config,
            proxy,
            admin,
            upstream,
            &rules,
            &home.join("data"),
            &store,
        );
        running.replicas.push(spawn_bin(
            &bin,
            &["run", "--config", config.to_str().unwrap()],
        ));
        running.proxies.push(format!("http://127.0.0.1:{proxy}"));
        running.admins.push(format!("http://127.0.0.1:{admin}"));
    }
    rt.block_on(async {
        for admin in &running.admins {
            wait_ready(client, &format!("{admin}/readyz")).await;
        }
    });
    running
}

/// Each metric of `names` summed over its series and over the instances.
async fn scrape(client: &reqwest::Client, admins: &[String], names: &[&str]) -> Vec<f64> {
    let mut totals = vec![0.0; names.len()];
    for admin in admins {
        let Ok(r) = client.get(format!("{admin}/metrics")).send().await else {
            continue;
        };
        let text = r.text().await.unwrap_or_default();
        for line in text.lines() {
            for (name, total) in names.iter().zip(totals.iter_mut()) {
                let series = line
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'));
                if let (true, Some(v)) = (series, line.rsplit(' ').next()) {
                    *total += v.parse::<f64>().unwrap_or(0.0);
                }
            }
        }
    }
    totals
}

/// What the instances' `/metrics` showed during a throughput phase.
#[derive(Default)]
struct Samples {
    peak_buffered: f64,
    peak_pending: f64,
    /// (seconds since the start, events derived, deliveries the store
    /// accepted), summed over the instances.
    series: Vec<(f64, f64, f64)>,
    dropped: f64,
}

impl Samples {
    /// The rate of column `f` while it moved: from its first sample to
    /// the first one with its final value.
    fn rate(&self, f: impl Fn(&(f64, f64, f64)) -> f64) -> f64 {
        let (Some(first), Some(last)) = (self.series.first(), self.series.last()) else {
            return f64::NAN;
        };
        let end = self.series.iter().find(|s| f(s) >= f(last)).unwrap_or(last);
        (f(end) - f(first)) / (end.0 - first.0).max(1e-3)
    }
}

/// One setup, one run.
#[derive(Default, Clone, serde::Serialize)]
struct Measure {
    /// Requests/s while the clients created the sessions.
    accepted_per_s: f64,
    /// Events/s from the first arrival to the last.
    delivered_per_s: f64,
    /// From the last response to the last arrival.
    drain_s: f64,
    taphook_cpu_us_per_event: f64,
    nats_cpu_us_per_event: f64,
    /// CPU of everything in the stack (instances, NATS, importer, this
    /// process: load generator and receiver) over the phase's wall time.
    stack_cores: f64,
    /// Peak of the JetStream write buffer, summed over the instances.
    peak_store_buffered: f64,
    /// Peak of the outbox (the embedded store's rows, or the deliveries
    /// stream: every instance reports the same count, so the max).
    peak_outbox_pending: f64,
    /// Events/s the instances derived (the pipeline), and deliveries/s
    /// their store accepted (for JetStream: acknowledged by NATS), while
    /// each moved (from `/metrics`).
    derived_per_s: f64,
    stored_per_s: f64,
    /// Exchanges dropped before derivation or events dropped
    /// (`taphook_events_dropped_total`, all reasons).
    dropped: f64,
    throughput: Tally,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_max_ms: f64,
    latency: Tally,
}

#[allow(clippy::too_many_arguments)]
fn measure(
    backend: Backend,
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    receiver: std::net::SocketAddr,
    arrivals: &Arrivals,
    (importer, upstream): (u32, u16),
    (events, clients, rate, seconds): (usize, usize, u64, u64),
    smoke: bool,
) -> Measure {
    let running = start(backend, rt, client, receiver, upstream);
    let proxies = running.proxies.clone();
    let (stall, settle) = if smoke {
        (Duration::from_secs(15), Duration::from_millis(300))
    } else {
        (Duration::from_secs(30), Duration::from_secs(1))
    };

    // Warm-up: one event through each instance.
    arrivals.clear();
    for proxy in &proxies {
        rt.block_on(create(client, proxy))
            .expect("a session through taphook");
    }
    let warm = rt.block_on(wait_for(arrivals, proxies.len(), Duration::from_secs(30)));
    assert_eq!(
        warm,
        proxies.len(),
        "{}: warm-up events delivered",
        backend.key()
    );
    std::thread::sleep(settle);
    arrivals.clear();

    // 1. Throughput.
    let pids = running.pids();
    let nats_pid = running.nats.as_ref().map(|n| n.process.id());
    let stack: Vec<u32> = pids
        .iter()
        .copied()
        .chain(nats_pid)
        .chain([importer, std::process::id()])
        .collect();
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let (taphook_before, nats_before, stack_before) =
        (cpu(&pids), nats_pid.map_or(0.0, cpu_seconds), cpu(&stack));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (client, admins, sampling) = (client.clone(), running.admins.clone(), sampling.clone());
        rt.spawn(async move {
            let names = [
                "taphook_store_buffered",
                "taphook_outbox_pending",
                "taphook_events_derived_total",
                "taphook_outbox_accepted_total",
                "taphook_events_dropped_total",
            ];
            let started = Instant::now();
            let mut s = Samples::default();
            let base = scrape(&client, &admins, &names).await;
            loop {
                let stop = !sampling.load(Ordering::Relaxed);
                let v = scrape(&client, &admins, &names).await;
                s.peak_buffered = s.peak_buffered.max(v[0]);
                // Every JetStream instance reports the stream's count.
                s.peak_pending = s.peak_pending.max(v[1] / admins.len() as f64);
                s.series.push((
                    started.elapsed().as_secs_f64(),
                    v[2] - base[2],
                    v[3] - base[3],
                ));
                s.dropped = v[4] - base[4];
                if stop {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let started_us = micros_now();
    let ids = rt.block_on(flood(client, &proxies, events, clients));
    let sent_us = micros_now();
    let arrived = rt.block_on(wait_until_stalled(arrivals, ids.len(), stall));
    sampling.store(false, Ordering::Relaxed);
    let samples = rt.block_on(sampler).unwrap();
    let taphook_cpu = cpu(&pids) - taphook_before;
    let nats_cpu = nats_pid.map_or(0.0, cpu_seconds) - nats_before;
    let stack_cpu = cpu(&stack) - stack_before;
    std::thread::sleep(settle);
    let (first, last) = arrivals.span();
    let mut m = Measure {
        accepted_per_s: ids.len() as f64 / ((sent_us - started_us) as f64 / 1e6),
        delivered_per_s: arrived as f64 / ((last - first).max(1) as f64 / 1e6),
        drain_s: last.saturating_sub(sent_us) as f64 / 1e6,
        taphook_cpu_us_per_event: taphook_cpu / ids.len().max(1) as f64 * 1e6,
        nats_cpu_us_per_event: nats_cpu / ids.len().max(1) as f64 * 1e6,
        stack_cores: stack_cpu / (last.max(sent_us) - started_us).max(1) as f64 * 1e6,
        peak_store_buffered: samples.peak_buffered,
        peak_outbox_pending: samples.peak_pending,
        derived_per_s: samples.rate(|s| s.1),
        stored_per_s: samples.rate(|s| s.2),
        dropped: samples.dropped,
        throughput: tally(arrivals, ids.iter().copied()),
        ..Default::default()
    };
    m.throughput.missing += events - ids.len();
    m.throughput.sent = events;
    arrivals.clear();

    // 2. Latency at `rate` events/s.
    let responses = rt.block_on(paced(client, &proxies, rate, seconds));
    rt.block_on(wait_until_stalled(arrivals, responses.len(), stall));
    std::thread::sleep(settle);
    let latencies = latencies(arrivals, &responses);
    m.latency_p50_ms = percentile(&latencies, 0.5);
    m.latency_p99_ms = percentile(&latencies, 0.99);
    m.latency_max_ms = latencies.last().copied().unwrap_or(f64::NAN);
    m.latency = tally(arrivals, responses.keys().copied());
    let total = (rate * seconds) as usize;
    m.latency.missing += total - responses.len();
    m.latency.sent = total;
    arrivals.clear();
    drop(running);
    m
}

/// NATS alone, on a fresh server: JetStream publishes of an event-sized
/// body with a `Nats-Msg-Id`, `n` waiting for each ack before the next
/// (as the JetStream backend's one publishing task does), then `n` with
/// up to 64 acks outstanding. Publishes/s of each.
async fn nats_probe(n: usize) -> (f64, f64) {
    use async_nats::jetstream;
    let nats = Nats::start();
    let client = async_nats::connect(format!("127.0.0.1:{}", nats.port))
        .await
        .expect("connect to nats-server");
    let js = jetstream::new(client);
    js.get_or_create_stream(jetstream::stream::Config {
        name: "PROBE".into(),
        subjects: vec!["probe.>".into()],
        ..Default::default()
    })
    .await
    .expect("a stream");
    let body = axum::body::Bytes::from_static(SAMPLE_EVENT.as_bytes());
    let headers = |i: usize| {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("probe-{i}").as_str());
        h
    };
    let started = Instant::now();
    for i in 0..n {
        js.publish_with_headers("probe.serial", headers(i), body.clone())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let serial = n as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut acks = std::collections::VecDeque::new();
    for i in n..2 * n {
        acks.push_back(
            js.publish_with_headers("probe.pipelined", headers(i), body.clone())
                .await
                .expect("publish"),
        );
        if acks.len() >= 64 {
            acks.pop_front().unwrap().await.expect("ack");
        }
    }
    while let Some(ack) = acks.pop_front() {
        ack.await.expect("ack");
    }
    let pipelined = n as f64 / started.elapsed().as_secs_f64();
    (serial, pipelined)
}

fn fmt_ms(v: f64) -> String {
    format!("{v:.2} ms")
}

fn main() {
    // `cargo test --all-targets` runs this without `--bench`: a smoke run.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (events, clients, rate, seconds, runs) = if smoke {
        (20usize, 8usize, 40u64, 1u64, 1usize)
    } else {
        (
            env_or("EVENTS", 10_000),
            env_or("CLIENTS", 32),
            env_or("RATE", 500),
            env_or("SECONDS", 10),
            env_or("RUNS", 3),
        )
    };
    let all = [
        Backend::Embedded,
        Backend::JetStream(1),
        Backend::JetStream(2),
        Backend::JetStream(3),
        Backend::Ordered(1),
        Backend::Ordered(3),
        Backend::Baseline,
    ];
    let wanted = std::env::var("SETUPS").unwrap_or_default();
    let baseline = std::env::var_os("BASELINE_BIN").is_some();
    let setups: Vec<Backend> = all
        .into_iter()
        .filter(|b| *b != Backend::Baseline || baseline)
        .filter(|b| match wanted.as_str() {
            // Opt-in, but the smoke run checks one: the default is the
            // four setups of the table.
            "" => !matches!(b, Backend::Ordered(_)) || (smoke && *b == Backend::Ordered(1)),
            _ => wanted.split(',').any(|w| w.trim() == b.key()),
        })
        .collect();
    assert!(
        !setups.is_empty(),
        "SETUPS={wanted}: none of embedded, js1, js2, js3, js1-ordered, js3-ordered (base-js1 with BASELINE_BIN)"
    );

    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (receiver, arrivals) = start_receiver(&rt);
    let (importer, up) = start_importer();
    let client = client();
    let ceiling = if smoke {
        None
    } else {
        receiver_ceiling(receiver, SAMPLE_EVENT, dir.path())
    };

    let mut results: HashMap<String, Vec<Measure>> = HashMap::new();
    let mut probes: Vec<(f64, f64)> = Vec::new();
    for run in 0..runs {
        let (serial, pipelined) = rt.block_on(nats_probe(if smoke { 50 } else { 3000 }));
        eprintln!(
            "run {}/{runs}: NATS alone: {serial:.0} publishes/s one ack at a time, {pipelined:.0} with 64 outstanding",
            run + 1
        );
        probes.push((serial, pipelined));
        for k in 0..setups.len() {
            // A rotating order, so no setup always runs first or last.
            let backend = setups[(run + k) % setups.len()];
            eprintln!("run {}/{runs}: {}", run + 1, backend.label());
            let m = measure(
                backend,
                &rt,
                &client,
                receiver,
                &arrivals,
                (importer.id(), up),
                (events, clients, rate, seconds),
                smoke,
            );
            eprintln!(
                "  {:.0} events/s delivered ({:.0} accepted/s, {:.0} derived/s, {:.0} stored/s, {:.0} dropped, drain {:.1} s), p50 {:.2} ms, p99 {:.2} ms, peak buffer {:.0}, peak outbox {:.0}, {:.2} cores busy; throughput {:?}, latency {:?}",
                m.delivered_per_s,
                m.accepted_per_s,
                m.derived_per_s,
                m.stored_per_s,
                m.dropped,
                m.drain_s,
                m.latency_p50_ms,
                m.latency_p99_ms,
                m.peak_store_buffered,
                m.peak_outbox_pending,
                m.stack_cores,
                m.throughput,
                m.latency
            );
            if smoke {
                assert!(
                    m.throughput.exactly_once() && m.latency.exactly_once(),
                    "{}: not exactly once: throughput {:?}, latency {:?}",
                    backend.label(),
                    m.throughput,
                    m.latency
                );
            }
            results.entry(backend.key()).or_default().push(m);
        }
    }

    // Medians per setup, ratios against the embedded store's medians.
    let med = |key: &str, f: &dyn Fn(&Measure) -> f64| -> f64 {
        let v: Vec<f64> = results
            .get(key)
            .map_or(Vec::new(), |ms| ms.iter().map(f).collect());
        median(&v)
    };
    let base_rate = med("embedded", &|m| m.delivered_per_s);
    let base_p50 = med("embedded", &|m| m.latency_p50_ms);
    let base_p99 = med("embedded", &|m| m.latency_p99_ms);
    let ratio = |v: f64, base: f64| {
        if base.is_nan() || base == 0.0 {
            "-".to_string()
        } else {
            format!("{:.2}×", v / base)
        }
    };
    let mut lines = vec![
        format!(
            "{events} events by {clients} clients, then {rate} events/s for {seconds} s; medians of {runs} run(s), setups interleaved."
        ),
        String::new(),
        "| setup | delivered events/s | vs embedded | e2e p50 | e2e p99 | p50, p99 vs embedded | lost / duplicated |".into(),
        "| --- | --- | --- | --- | --- | --- | --- |".into(),
    ];
    let mut detail = vec![
        "| setup | accepted requests/s | derived events/s | stored events/s | peak store buffer (writes) | peak outbox | taphook CPU per event | nats-server CPU per event | stack CPU (cores of 2) |".to_string(),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |".into(),
    ];
    let mut json_setups = Vec::new();
    let mut failures = Vec::new();
    for backend in &setups {
        let key = backend.key();
        let ms = &results[&key];
        let rate_m = med(&key, &|m| m.delivered_per_s);
        let p50 = med(&key, &|m| m.latency_p50_ms);
        let p99 = med(&key, &|m| m.latency_p99_ms);
        let lost: usize = ms
            .iter()
            .map(|m| m.throughput.missing + m.latency.missing)
            .sum();
        let dup: usize = ms
            .iter()
            .map(|m| {
                m.throughput.duplicates
                    + m.throughput.unexpected
                    + m.latency.duplicates
                    + m.latency.unexpected
            })
            .sum();
        let delivered: usize = ms.iter().map(|m| m.throughput.sent + m.latency.sent).sum();
        if lost + dup > 0 {
            failures.push(format!(
                "{}: {lost} lost, {dup} duplicated",
                backend.label()
            ));
        }
        let is_js = !matches!(backend, Backend::Embedded);
        lines.push(format!(
            "| {} | {:.0} | {} | {} | {} | {}, {} | {lost} / {dup} of {delivered} |",
            backend.label(),
            rate_m,
            ratio(rate_m, base_rate),
            fmt_ms(p50),
            fmt_ms(p99),
            ratio(p50, base_p50),
            ratio(p99, base_p99),
        ));
        let js_only = |v: String| if is_js { v } else { "-".to_string() };
        detail.push(format!(
            "| {} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.0} µs | {} | {:.2} |",
            backend.label(),
            med(&key, &|m| m.accepted_per_s),
            med(&key, &|m| m.derived_per_s),
            med(&key, &|m| m.stored_per_s),
            js_only(format!("{:.0}", med(&key, &|m| m.peak_store_buffered))),
            med(&key, &|m| m.peak_outbox_pending),
            med(&key, &|m| m.taphook_cpu_us_per_event),
            js_only(format!("{:.0} µs", med(&key, &|m| m.nats_cpu_us_per_event))),
            med(&key, &|m| m.stack_cores),
        ));
        json_setups.push(json!({
            "setup": key,
            "label": backend.label(),
            "replicas": match backend { Backend::Embedded | Backend::Baseline => 1, Backend::JetStream(n) | Backend::Ordered(n) => *n },
            "median": {
                "delivered_per_s": rate_m,
                "accepted_per_s": med(&key, &|m| m.accepted_per_s),
                "drain_s": med(&key, &|m| m.drain_s),
                "latency_p50_ms": p50,
                "latency_p99_ms": p99,
                "latency_max_ms": med(&key, &|m| m.latency_max_ms),
                "taphook_cpu_us_per_event": med(&key, &|m| m.taphook_cpu_us_per_event),
                "nats_cpu_us_per_event": med(&key, &|m| m.nats_cpu_us_per_event),
                "stack_cores": med(&key, &|m| m.stack_cores),
                "peak_store_buffered": med(&key, &|m| m.peak_store_buffered),
                "peak_outbox_pending": med(&key, &|m| m.peak_outbox_pending),
                "derived_per_s": med(&key, &|m| m.derived_per_s),
                "stored_per_s": med(&key, &|m| m.stored_per_s),
                "dropped": med(&key, &|m| m.dropped),
            },
            "vs_embedded": {
                "delivered_per_s": rate_m / base_rate,
                "latency_p50": p50 / base_p50,
                "latency_p99": p99 / base_p99,
            },
            "lost": lost,
            "duplicated": dup,
            "runs": ms,
        }));
    }
    lines.push(String::new());
    lines.append(&mut detail);
    let serial = median(&probes.iter().map(|p| p.0).collect::<Vec<_>>());
    let pipelined = median(&probes.iter().map(|p| p.1).collect::<Vec<_>>());
    lines.push(String::new());
    lines.push(format!(
        "NATS alone (a fresh nats-server, same runs): JetStream publishes of an event body with a Nats-Msg-Id, waiting for each ack: {serial:.0}/s ({:.0} µs each); with up to 64 acks outstanding: {pipelined:.0}/s ({:.1}×). An event costs the JetStream backend three such writes (session, event, delivery), up to 64 on the wire at once: a ceiling of {:.0} events/s per instance at that rate, {:.0} if each waited for its ack.",
        1e6 / serial,
        pipelined / serial,
        pipelined / 3.0,
        serial / 3.0
    ));
    if let Some(c) = ceiling {
        lines.push(String::new());
        lines.push(format!(
            "Receiver ceiling (wrk -t2 -c32 POSTs of an event body): {c:.0} requests/s."
        ));
    }
    let table = lines.join("\n") + "\n";
    print!("{table}");
    if !smoke {
        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
        let _ = std::fs::create_dir_all(&out);
        let _ = std::fs::write(out.join("jetstream.md"), &table);
        let summary = json!({
            "events": events,
            "clients": clients,
            "rate": rate,
            "seconds": seconds,
            "runs": runs,
            "concurrency_per_webhook": std::env::var("CONCURRENCY").ok(),
            "receiver_ceiling": ceiling,
            "nats_alone": {
                "serial_publishes_per_s": serial,
                "pipelined_64_publishes_per_s": pipelined,
                "runs": probes,
            },
            "setups": json_setups,
        });
        let _ = std::fs::write(out.join("jetstream.json"), summary.to_string());
    }
    assert!(
        failures.is_empty(),
        "not exactly once: {}",
        failures.join("; ")
    );
}
