//! Never lose an event: the outbox survives kill -9, sessions and retry
//! schedules survive restarts, 410 disables, dead letters can be retried
//! and replayed, and SIGTERM lets in-flight deliveries finish.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "t0k";

/// A route that turns `GET /_fixtures/empty?i=N` into a `ping` event
/// (one per N), and one webhook for it with `extra` settings.
fn ping_rules(key: &str, extra: &str) -> Vec<(&'static str, String)> {
    vec![(
        "ping.yaml",
        format!(
            "routes:\n  - name: ping\n    event: ping\n    method: GET\n    path: /_fixtures/empty\n    dedup_key: [\"ping\", \"$query.i\"]\n    data:\n      i: $query.i\nwebhooks:\n{}",
            webhook(key, &format!("/hooks/{key}"), &format!("    events: [ping]\n{extra}"))
        ),
    )]
}

fn pings(received: &[taphook::demo::receiver::Recorded]) -> Vec<String> {
    received
        .iter()
        .map(|r| r.json()["data"]["i"].as_str().unwrap_or("?").to_string())
        .collect()
}

async fn api(stack: &Stack, method: &str, path: &str) -> (u16, Value) {
    stack.api(TOKEN, method, path, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_delivery_loses_no_accepted_event() {
    const N: usize = 5_000;
    let stack = Stack::start(Setup {
        rules: ping_rules("sink", ""),
        config: "delivery:\n  concurrency_per_webhook: 16\n",
        ..Default::default()
    })
    .await;
    let mut stack = stack;
    stack
        .receiver
        .default_reply("/hooks/sink", Reply::Slow(20, 200));
    let started = Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..N {
        let (client, url, permit) = (
            stack.client.clone(),
            stack.url(&format!("/_fixtures/empty?i={i}")),
            limit.clone().acquire_owned().await.unwrap(),
        );
        tasks.push(tokio::spawn(async move {
            let r = client.get(url).send().await.unwrap();
            drop(permit);
            r.status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 204);
    }
    // Every event is in the outbox (committed) before the crash.
    assert_eq!(
        stack
            .wait_metric("taphook_outbox_accepted_total", N as f64)
            .await,
        N as f64,
        "{}",
        stack.log()
    );
    stack
        .receiver
        .wait_for("/hooks/sink", 200, Duration::from_secs(30))
        .await;
    stack.kill9();
    let before = stack.receiver.received_on("/hooks/sink").len();
    assert!(before < N, "the crash came after every delivery ({before})");
    println!(
        "{N} events accepted in {:?}; {before} deliveries received before kill -9",
        started.elapsed()
    );

    stack.relaunch().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got: BTreeSet<String> = pings(&stack.receiver.received_on("/hooks/sink"))
            .into_iter()
            .collect();
        if got.len() == N {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {N} events arrived after the restart",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = stack.receiver.received_on("/hooks/sink");
    let uuids: BTreeSet<String> = all
        .iter()
        .map(|r| r.json()["uuid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(uuids.len(), N, "every UUID arrived");
    println!(
        "crash test: all {N} UUIDs arrived; {} duplicates (at-least-once)",
        all.len() - N
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_sessions() {
    let hooks = format!(
        "webhooks:\n{}{}",
        webhook(
            "created",
            "/hooks/created",
            "    events: [embed_initialized]\n"
        ),
        webhook(
            "assigned",
            "/hooks/assigned",
            "    events: [import_submitted]\n    assignment: session\n"
        )
    );
    let mut stack = Stack::with_rules(vec![("hooks.yaml", hooks)]).await;
    let jwt = taphook::demo::demo_jwt();
    let id = stack.create_embed(json!({"template_key": "contacts", "embed_user_jwt": jwt, "event_webhook_keys": ["assigned"]}), false).await;
    // Delivered means committed, and the session was written before it.
    stack
        .receiver
        .wait_for("/hooks/created", 1, Duration::from_secs(10))
        .await;
    stack.restart().await;
    stack
        .post_json(&format!("/v1/embeds/{id}/import"), json!({}))
        .await;
    let got = stack
        .receiver
        .wait_for("/hooks/assigned", 1, Duration::from_secs(10))
        .await;
    assert_eq!(
        got.len(),
        1,
        "the session's webhook_keys survived the restart"
    );
    let event = got[0].json();
    assert_eq!(
        (
            event["embed_id"].clone(),
            event["template_key"].clone(),
            event["embed_jwt"].clone()
        ),
        (json!(id), json!("contacts"), json!(jwt))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_schedule_survives_a_restart() {
    let mut stack = Stack::start(Setup {
        rules: ping_rules("later", "    retry: { backoff: [3s] }\n"),
        config: &format!("admin_token: {TOKEN}\n"),
        ..Default::default()
    })
    .await;
    stack.receiver.script("/hooks/later", &[Reply::Status(429)]);
    stack.ping(1).await;
    let first = stack
        .receiver
        .wait_for("/hooks/later", 1, Duration::from_secs(10))
        .await;
    // Wait until the failed attempt and its schedule are on disk.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, failed) = api(&stack, "GET", "/v1/deliveries?state=failed&webhook=later").await;
        if failed["deliveries"]
            .as_array()
            .is_some_and(|d| d.len() == 1 && d[0]["attempts"] == 1)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{failed}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stack.restart().await;
    let got = stack
        .receiver
        .wait_for("/hooks/later", 2, Duration::from_secs(15))
        .await;
    assert_eq!(got.len(), 2);
    let gap = got[1].at.duration_since(first[0].at);
    assert!(
        gap >= Duration::from_millis(2900),
        "retried after {gap:?}, before its backoff"
    );
    settle(Duration::from_millis(500)).await;
    assert_eq!(stack.receiver.received_on("/hooks/later").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_webhook_until_it_is_enabled() {
    let stack = Stack::start(Setup {
        rules: ping_rules("gone", ""),
        config: &format!("admin_token: {TOKEN}\n"),
        ..Default::default()
    })
    .await;
    stack.receiver.script("/hooks/gone", &[Reply::Status(410)]);
    stack.ping(1).await;
    stack
        .receiver
        .wait_for("/hooks/gone", 1, Duration::from_secs(10))
        .await;
    assert_eq!(
        stack
            .wait_metric("taphook_webhook_disabled{webhook=\"gone\"}", 1.0)
            .await,
        1.0
    );
    stack.ping(2).await;
    stack.ping(3).await;
    settle(Duration::from_millis(1500)).await;
    assert_eq!(
        stack.receiver.received_on("/hooks/gone").len(),
        1,
        "nothing is sent to a disabled webhook"
    );
    let (_, view) = api(&stack, "GET", "/v1/event-webhooks/gone").await;
    assert!(
        view["disabled"].as_str().unwrap().starts_with("410 Gone"),
        "{view}"
    );
    assert_eq!(
        api(&stack, "POST", "/v1/event-webhooks/gone/enable")
            .await
            .0,
        200
    );
    let got = stack
        .receiver
        .wait_for("/hooks/gone", 4, Duration::from_secs(10))
        .await;
    let mut seen = pings(&got[1..]);
    seen.sort();
    assert_eq!(
        seen,
        ["1", "2", "3"],
        "the waiting deliveries go out once enabled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_kept_and_retried_through_the_api() {
    let stack = Stack::start(Setup {
        rules: ping_rules("dl", ""),
        config: &format!("admin_token: {TOKEN}\n"),
        ..Default::default()
    })
    .await;
    stack.receiver.script("/hooks/dl", &[Reply::Status(500)]);
    stack.ping(1).await;
    assert_eq!(
        stack
            .wait_metric(
                "taphook_deliveries_total{outcome=\"dead\",webhook=\"dl\"}",
                1.0
            )
            .await,
        1.0
    );
    let (status, dead) = api(&stack, "GET", "/v1/deliveries?state=dead&webhook=dl").await;
    assert_eq!(status, 200);
    let rows = dead["deliveries"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{dead}");
    assert_eq!(
        (
            rows[0]["attempts"].clone(),
            rows[0]["last_status"].clone(),
            rows[0]["event_type"].clone()
        ),
        (json!(1), json!("500"), json!("ping"))
    );
    let id = rows[0]["id"].as_i64().unwrap();
    let (_, detail) = api(&stack, "GET", &format!("/v1/deliveries/{id}")).await;
    let attempts = detail["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["outcome"], "500");
    assert!(attempts[0]["duration_ms"].as_i64().unwrap() >= 0);
    let (status, _) = api(&stack, "POST", &format!("/v1/deliveries/{id}/retry")).await;
    assert_eq!(status, 202);
    let got = stack
        .receiver
        .wait_for("/hooks/dl", 2, Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].body, got[1].body, "the same event, sent again");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, delivered) = api(&stack, "GET", "/v1/deliveries?state=delivered&webhook=dl").await;
        if delivered["deliveries"]
            .as_array()
            .is_some_and(|d| d.len() == 1)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{delivered}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        api(&stack, "GET", "/v1/deliveries?state=dead").await.1["deliveries"],
        json!([])
    );
    assert_eq!(
        api(&stack, "POST", "/v1/deliveries/999999/retry").await.0,
        404
    );
    assert_eq!(api(&stack, "GET", "/v1/deliveries?state=lost").await.0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_requeues_dead_letters_since_a_time() {
    let stack = Stack::with_rules(ping_rules("rp", "")).await;
    stack
        .receiver
        .default_reply("/hooks/rp", Reply::Status(500));
    stack.ping(1).await;
    stack.ping(2).await;
    assert_eq!(
        stack
            .wait_metric(
                "taphook_deliveries_total{outcome=\"dead\",webhook=\"rp\"}",
                2.0
            )
            .await,
        2.0
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let since = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    stack.ping(3).await;
    stack.ping(4).await;
    assert_eq!(
        stack
            .wait_metric(
                "taphook_deliveries_total{outcome=\"dead\",webhook=\"rp\"}",
                4.0
            )
            .await,
        4.0
    );
    stack
        .receiver
        .default_reply("/hooks/rp", Reply::Status(200));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_taphook"))
        .args(["replay", "--webhook", "rp", "--since", &since, "--config"])
        .arg(stack.dir.path().join("taphook.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "re-queued 2 deliveries for webhook `rp`"
    );
    let got = stack
        .receiver
        .wait_for("/hooks/rp", 6, Duration::from_secs(10))
        .await;
    settle(Duration::from_millis(500)).await;
    assert_eq!(stack.receiver.received_on("/hooks/rp").len(), 6);
    let mut replayed = pings(&got[4..]);
    replayed.sort();
    assert_eq!(replayed, ["3", "4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_deliveries_finish_and_keeps_the_rest() {
    let mut stack = Stack::start(Setup {
        rules: ping_rules("slow", ""),
        config: "delivery:\n  concurrency_per_webhook: 2\n  shutdown_timeout: 5s\n",
        ..Default::default()
    })
    .await;
    stack
        .receiver
        .default_reply("/hooks/slow", Reply::Slow(1000, 200));
    for i in 0..6 {
        stack.ping(i).await;
    }
    stack
        .receiver
        .wait_for("/hooks/slow", 2, Duration::from_secs(10))
        .await;
    let (took, ok) = stack.sigterm(Duration::from_secs(10)).await;
    assert!(ok, "{}", stack.log());
    assert!(took < Duration::from_secs(5), "exited after {took:?}");
    assert_eq!(
        stack.receiver.received_on("/hooks/slow").len(),
        2,
        "nothing new starts after SIGTERM"
    );
    stack.relaunch().await;
    let got = stack
        .receiver
        .wait_for("/hooks/slow", 6, Duration::from_secs(20))
        .await;
    settle(Duration::from_millis(1500)).await;
    let all = pings(&stack.receiver.received_on("/hooks/slow"));
    assert_eq!(
        all.len(),
        6,
        "the two that finished before the exit are not sent again: {all:?}"
    );
    assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), 6, "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_failing_continuously_is_paused_and_probed() {
    let stack = Stack::start(Setup {
        rules: ping_rules(
            "flaky",
            "    retry: { on: [5xx], max_retries: 1000, backoff: [100ms] }\n",
        ),
        config: "delivery:\n  pause_after: 500ms\n  probe_interval: 1s\n",
        ..Default::default()
    })
    .await;
    stack
        .receiver
        .default_reply("/hooks/flaky", Reply::Status(503));
    stack.ping(1).await;
    assert_eq!(
        stack
            .wait_metric("taphook_webhook_paused{webhook=\"flaky\"}", 1.0)
            .await,
        1.0
    );
    let paused_at = stack.receiver.received_on("/hooks/flaky").len();
    settle(Duration::from_millis(3500)).await;
    let probes = stack.receiver.received_on("/hooks/flaky").len() - paused_at;
    // Unpaused it would have tried about 30 times in 3.5 s; paused, about 3.
    assert!((1..=6).contains(&probes), "{probes} attempts while paused");
    stack
        .receiver
        .default_reply("/hooks/flaky", Reply::Status(200));
    assert_eq!(
        stack
            .wait_metric(
                "taphook_deliveries_total{outcome=\"delivered\",webhook=\"flaky\"}",
                1.0
            )
            .await,
        1.0
    );
    assert_eq!(
        stack
            .wait_metric("taphook_webhook_paused{webhook=\"flaky\"}", 0.0)
            .await,
        0.0
    );
}

/// More deliveries wait than the outbox's in-memory hand-off holds (a
/// webhook disabled by a 410): once enabled, the backlog is read from the
/// outbox and the hand-off takes over again, and every event arrives
/// exactly once, before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_beyond_the_hand_off_arrives_once_each() {
    use futures::StreamExt as _;
    const WAITING: usize = 1500; // more than the hand-off's 1024 a webhook
    let stack = Stack::start(Setup {
        rules: ping_rules("big", ""),
        config: &format!("admin_token: {TOKEN}\n"),
        log_filter: Some("info"),
        ..Default::default()
    })
    .await;
    stack.receiver.script("/hooks/big", &[Reply::Status(410)]);
    stack.ping(0).await;
    assert_eq!(
        stack
            .wait_metric("taphook_webhook_disabled{webhook=\"big\"}", 1.0)
            .await,
        1.0
    );
    let stack = &stack;
    let ping_all = |range: std::ops::RangeInclusive<usize>| {
        futures::stream::iter(range)
            .for_each_concurrent(16, move |i| async move { stack.ping(i).await })
    };
    ping_all(1..=WAITING).await;
    assert_eq!(stack.receiver.received_on("/hooks/big").len(), 1);
    assert_eq!(
        api(stack, "POST", "/v1/event-webhooks/big/enable").await.0,
        200
    );
    // The 410'd ping 0 again, and every other one, once.
    let got = stack
        .receiver
        .wait_for("/hooks/big", WAITING + 2, Duration::from_secs(60))
        .await;
    let mut seen = pings(&got[1..]);
    seen.sort_by_key(|p| p.parse::<usize>().unwrap_or(usize::MAX));
    let want: Vec<String> = (0..=WAITING).map(|i| i.to_string()).collect();
    assert_eq!(seen, want);
    // Fresh deliveries after the backlog, from memory: once each too.
    ping_all(WAITING + 1..=WAITING + 100).await;
    stack
        .receiver
        .wait_for("/hooks/big", WAITING + 102, Duration::from_secs(30))
        .await;
    // Anything sent twice would arrive about now.
    settle(Duration::from_millis(500)).await;
    let got = stack.receiver.received_on("/hooks/big");
    let mut seen = pings(&got[1..]);
    seen.sort_by_key(|p| p.parse::<usize>().unwrap_or(usize::MAX));
    let want: Vec<String> = (0..=WAITING + 100).map(|i| i.to_string()).collect();
    assert_eq!(seen, want, "no event lost or sent twice");
    assert_eq!(
        stack
            .metric("taphook_deliveries_total{outcome=\"delivered\",webhook=\"big\"}")
            .await,
        (WAITING + 101) as f64
    );
}

/// A webhook renamed while its deliveries wait for the receiver: they
/// follow the new key (read from the outbox, not lost in the hand-off)
/// and arrive once the receiver is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_webhook_keeps_its_backlog() {
    // The route from a file; the webhook through the API (only those can
    // be renamed).
    let route = "routes:\n  - name: ping\n    event: ping\n    method: GET\n    path: /_fixtures/empty\n    dedup_key: [\"ping\", \"$query.i\"]\n    data:\n      i: $query.i\n";
    let stack = Stack::start(Setup {
        rules: vec![("ping.yaml", route.to_string())],
        config: &format!("admin_token: {TOKEN}\n"),
        ..Default::default()
    })
    .await;
    let url = format!("http://{}/hooks/c", stack.receiver.addr);
    let hook = json!({"webhook_key": "c", "url": url, "events": ["ping"]});
    let hold = json!({"retry": {"on": [503], "max_retries": 50, "backoff": ["300ms"]}});
    for (method, path, body) in [
        ("POST", "/v1/event-webhooks", hook),
        ("PUT", "/v1/event-webhooks/c", hold),
    ] {
        let (status, answer) = stack.api(TOKEN, method, path, Some(body)).await;
        assert!(status < 300, "{status} {answer}");
    }
    stack.receiver.default_reply("/hooks/c", Reply::Status(503));
    for i in 1..=5 {
        stack.ping(i).await;
    }
    let failed = stack
        .receiver
        .wait_for("/hooks/c", 5, Duration::from_secs(10))
        .await;
    assert_eq!(failed.len(), 5);
    let renamed = json!({"new_webhook_key": "d"});
    let (status, body) = stack
        .api(TOKEN, "PUT", "/v1/event-webhooks/c", Some(renamed))
        .await;
    assert_eq!(status, 200, "{body}");
    let before = stack.receiver.received_on("/hooks/c").len();
    stack.receiver.default_reply("/hooks/c", Reply::Status(200));
    let delivered = "taphook_deliveries_total{outcome=\"delivered\",webhook=\"d\"}";
    assert_eq!(
        stack.wait_metric(delivered, 5.0).await,
        5.0,
        "{}",
        stack.log()
    );
    let after: BTreeSet<String> = pings(&stack.receiver.received_on("/hooks/c")[before..])
        .into_iter()
        .collect();
    assert_eq!(after, (1..=5).map(|i| i.to_string()).collect());
}
