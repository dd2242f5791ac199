//! Delivery controls with real sockets: a webhook's rate limit (its own,
//! or `delivery.rate_limit`) and `ordering: session`, against receivers
//! on loopback that record when each delivery arrived.

mod common;

use std::time::{Duration, Instant};

use common::ordered::{step_by_step, Recorder};
use common::*;
use futures::StreamExt as _;
use serde_json::{json, Value};

const TOKEN: &str = "t0k";

/// Pushes events through the admin API, `parallel` at a time, in order
/// of the list when `parallel` is 1.
async fn push_all(stack: &Stack, events: Vec<Value>, parallel: usize) {
    let url = format!("http://{}/v1/events", stack.admin);
    futures::stream::iter(events)
        .map(|event| {
            let (client, url) = (stack.client.clone(), url.clone());
            async move {
                let r = client
                    .post(url)
                    .bearer_auth(TOKEN)
                    .json(&event)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202, "{event}");
            }
        })
        .buffered(parallel)
        .collect::<Vec<_>>()
        .await;
}

/// The most arrivals within any `window` (arrival times sorted).
fn busiest(times: &[Instant], window: Duration) -> usize {
    let mut most = 0;
    let mut start = 0;
    for (end, t) in times.iter().enumerate() {
        while *t - times[start] >= window {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_spreads_a_backlog_over_time_and_spends_no_attempt() {
    let hooks = [
        webhook(
            "limited",
            "/hooks/limited",
            "    events: [embed_initialized]\n    rate_limit: { per_second: 100, burst: 10 }\n",
        ),
        webhook(
            "by_default",
            "/hooks/by_default",
            "    events: [file_uploaded]\n",
        ),
    ];
    let stack = Stack::start(Setup {
        config: &format!(
            "admin_token: {TOKEN}\ndelivery:\n  rate_limit: {{ per_second: 50, burst: 5 }}\n"
        ),
        rules: vec![("hooks.yaml", format!("webhooks:\n{}", hooks.concat()))],
        ..Default::default()
    })
    .await;
    let mut events: Vec<Value> = (0..500)
        .map(|i| json!({"event_type": "embed_initialized", "embed_id": format!("s{i}")}))
        .collect();
    events.extend(
        (0..100).map(|i| json!({"event_type": "file_uploaded", "embed_id": format!("s{i}")})),
    );
    push_all(&stack, events, 16).await;

    let limited = stack
        .receiver
        .wait_for("/hooks/limited", 500, Duration::from_secs(30))
        .await;
    let by_default = stack
        .receiver
        .wait_for("/hooks/by_default", 100, Duration::from_secs(30))
        .await;
    settle(Duration::from_millis(300)).await;
    assert_eq!(stack.receiver.received_on("/hooks/limited").len(), 500);
    assert_eq!(stack.receiver.received_on("/hooks/by_default").len(), 100);

    // 10 at once, then 100 a second: 490 more take 4.9 s; no 1 s window
    // holds more than the burst and a second's worth (a little more:
    // arrival times jitter on a shared machine).
    let times: Vec<Instant> = limited.iter().map(|r| r.at).collect();
    let span = *times.last().unwrap() - times[0];
    assert!(span >= Duration::from_millis(4500), "{span:?}");
    let most = busiest(&times, Duration::from_secs(1));
    assert!(most <= 110 + 3, "{most} in one second");
    // The default limit, 5 then 50 a second: 95 more take 1.9 s.
    let times: Vec<Instant> = by_default.iter().map(|r| r.at).collect();
    let span = *times.last().unwrap() - times[0];
    assert!(span >= Duration::from_millis(1700), "{span:?}");
    assert!(busiest(&times, Duration::from_secs(1)) <= 55 + 3);

    // Held back is neither an attempt nor a failure.
    let m = stack.metrics().await;
    let sample = |s: &str| metric_value(&m, s);
    assert_eq!(
        sample("taphook_delivery_attempts_total{status_class=\"2xx\",webhook=\"limited\"}"),
        500.0
    );
    assert_eq!(
        sample("taphook_deliveries_total{outcome=\"delivered\",webhook=\"limited\"}"),
        500.0
    );
    assert!(sample("taphook_webhook_rate_limited_total{webhook=\"limited\"}") > 0.0);
    assert!(sample("taphook_webhook_rate_limited_total{webhook=\"by_default\"}") > 0.0);
    assert_eq!(
        sample("taphook_webhook_rate_limit_wait_seconds{webhook=\"limited\"}"),
        0.0,
        "nothing waits once the backlog is gone"
    );

    // The webhook views show the limits.
    let (_, view) = stack
        .api(TOKEN, "GET", "/v1/event-webhooks/limited", None)
        .await;
    assert_eq!(
        view["rate_limit"],
        json!({"per_second": 100.0, "burst": 10})
    );
    assert_eq!(view["ordering"], "none");
    let (_, view) = stack
        .api(TOKEN, "GET", "/v1/event-webhooks/by_default", None)
        .await;
    assert_eq!(view["rate_limit"], Value::Null);
    assert_eq!(
        view["effective_rate_limit"],
        json!({"per_second": 50.0, "burst": 5})
    );
}

/// The steps of an importer session, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_by_session_keeps_each_sessions_order_through_retries_and_a_restart() {
    let (rec, url) = Recorder::start().await;
    let hooks = format!(
        "webhooks:\n  - key: ordered\n    url: {url}\n    events: [\"*\"]\n    ordering: session\n    retry: {{ on: [503, timeout, error], max_retries: 10, backoff: [300ms] }}\n"
    );
    let mut stack = Stack::start(Setup {
        config: &format!("admin_token: {TOKEN}\n"),
        rules: vec![("hooks.yaml", hooks)],
        ..Default::default()
    })
    .await;
    let sessions: Vec<String> = (0..20).map(|s| format!("session-{s}")).collect();
    push_all(&stack, step_by_step(&sessions), 1).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    while rec.delivered() < 40 {
        assert!(Instant::now() < deadline, "{}", stack.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Killed mid-way: what is pending stays, in order.
    stack.restart().await;
    rec.wait_done(&sessions, Duration::from_secs(60), || stack.log())
        .await;
    rec.assert_in_order(&sessions);
}

#[test]
fn malformed_controls_are_rules_errors_with_file_and_line() {
    let (code, out) = check_rules(&[(
        "hooks.yaml",
        "webhooks:\n  - key: a\n    url: http://127.0.0.1:9/a\n    events: [\"*\"]\n    rate_limit: { per_second: 0 }\n  - key: b\n    url: http://127.0.0.1:9/b\n    events: [\"*\"]\n    ordering: chaos\n",
    )]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("hooks.yaml:5"), "{out}");
    assert!(out.contains("`per_second` must be above 0"), "{out}");
    assert!(out.contains("hooks.yaml:9"), "{out}");
    assert!(
        out.contains("unknown ordering `chaos` (expected `none` or `session`)"),
        "{out}"
    );
}
