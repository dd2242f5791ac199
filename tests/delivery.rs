//! Delivery: attempt counts under the default OneSchema retry policy,
//! timeouts, Retry-After, and isolation between receivers.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// One webhook per path, all on `embed_initialized`, with `extra` settings.
fn rules(paths: &[(&str, &str)]) -> Vec<(&'static str, String)> {
    let entries: String = paths
        .iter()
        .map(|(key, extra)| {
            webhook(
                key,
                &format!("/hooks/{key}"),
                &format!("    events: [embed_initialized]\n{extra}"),
            )
        })
        .collect();
    vec![("hooks.yaml", format!("webhooks:\n{entries}"))]
}

const FAST_BACKOFF: &str = "    retry: { backoff: [50ms] }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_twice_then_ok_takes_exactly_three_attempts() {
    let stack = Stack::start(Setup {
        rules: rules(&[("throttled", FAST_BACKOFF)]),
        ..Default::default()
    })
    .await;
    stack.receiver.script(
        "/hooks/throttled",
        &[Reply::Status(429), Reply::Status(429), Reply::Status(200)],
    );
    stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    let got = stack
        .receiver
        .wait_for("/hooks/throttled", 3, Duration::from_secs(10))
        .await;
    settle(Duration::from_millis(400)).await;
    assert_eq!(stack.receiver.received_on("/hooks/throttled").len(), 3);
    // Every attempt carries the same event.
    assert!(got.iter().all(|r| r.body == got[0].body));
    let done = "taphook_deliveries_total{outcome=\"delivered\",webhook=\"throttled\"}";
    assert_eq!(stack.wait_metric(done, 1.0).await, 1.0);
    let m = stack.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "taphook_delivery_attempts_total{status_class=\"4xx\",webhook=\"throttled\"}"
        ),
        2.0
    );
    assert_eq!(
        metric_value(
            &m,
            "taphook_delivery_attempts_total{status_class=\"2xx\",webhook=\"throttled\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            "taphook_deliveries_total{outcome=\"delivered\",webhook=\"throttled\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_is_not_retried() {
    let stack = Stack::start(Setup {
        rules: rules(&[("broken", FAST_BACKOFF)]),
        ..Default::default()
    })
    .await;
    stack
        .receiver
        .script("/hooks/broken", &[Reply::Status(500), Reply::Status(200)]);
    stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    stack
        .receiver
        .wait_for("/hooks/broken", 1, Duration::from_secs(10))
        .await;
    settle(Duration::from_millis(500)).await;
    assert_eq!(stack.receiver.received_on("/hooks/broken").len(), 1);
    assert_eq!(
        stack
            .wait_metric(
                "taphook_deliveries_total{outcome=\"dead\",webhook=\"broken\"}",
                1.0
            )
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_gets_three_attempts_bounded_by_the_timeout() {
    let extra = "    timeout: 300ms\n    retry: { backoff: [50ms] }\n";
    let stack = Stack::start(Setup {
        rules: rules(&[("silent", extra)]),
        ..Default::default()
    })
    .await;
    stack.receiver.script(
        "/hooks/silent",
        &[Reply::Hang, Reply::Hang, Reply::Hang, Reply::Hang],
    );
    let started = Instant::now();
    stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    let got = stack
        .receiver
        .wait_for("/hooks/silent", 3, Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), 3);
    // Each attempt waited for its timeout before the next began.
    assert!(got[1].at.duration_since(got[0].at) >= Duration::from_millis(300));
    assert!(got[2].at.duration_since(got[1].at) >= Duration::from_millis(300));
    settle(Duration::from_millis(800)).await;
    assert_eq!(stack.receiver.received_on("/hooks/silent").len(), 3);
    let dead = "taphook_deliveries_total{outcome=\"dead\",webhook=\"silent\"}";
    assert_eq!(stack.wait_metric(dead, 1.0).await, 1.0);
    let m = stack.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "taphook_delivery_attempts_total{status_class=\"timeout\",webhook=\"silent\"}"
        ),
        3.0
    );
    assert_eq!(
        metric_value(
            &m,
            "taphook_deliveries_total{outcome=\"dead\",webhook=\"silent\"}"
        ),
        1.0
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let stack = Stack::start(Setup {
        rules: rules(&[("later", FAST_BACKOFF)]),
        ..Default::default()
    })
    .await;
    stack
        .receiver
        .script("/hooks/later", &[Reply::RetryAfter(429, 1)]);
    stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    let got = stack
        .receiver
        .wait_for("/hooks/later", 2, Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), 2);
    assert!(
        got[1].at.duration_since(got[0].at) >= Duration::from_millis(950),
        "waited {:?}",
        got[1].at.duration_since(got[0].at)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_does_not_hold_back_another() {
    let stack = Stack::start(Setup {
        rules: rules(&[
            ("stuck", "    timeout: 5s\n    retry: { max_retries: 0 }\n"),
            ("fast", ""),
        ]),
        config: "delivery:\n  concurrency_per_webhook: 2\n",
        ..Default::default()
    })
    .await;
    stack.receiver.script("/hooks/stuck", &[Reply::Hang; 10]);
    let started = Instant::now();
    for _ in 0..5 {
        stack
            .create_embed(json!({"template_key": "contacts"}), false)
            .await;
    }
    let fast = stack
        .receiver
        .wait_for("/hooks/fast", 5, Duration::from_secs(10))
        .await;
    assert_eq!(fast.len(), 5);
    assert!(
        fast[4].at.duration_since(started) < Duration::from_secs(3),
        "the fast receiver waited for the stuck one"
    );
    // The stuck one has at most its concurrency in flight.
    assert_eq!(stack.receiver.received_on("/hooks/stuck").len(), 2);
    assert_eq!(
        stack
            .wait_metric("taphook_outbox_pending{webhook=\"stuck\"}", 5.0)
            .await,
        5.0
    );
}
