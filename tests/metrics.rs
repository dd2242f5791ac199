//! `/metrics` exports every metric of the contract, and the exposition
//! passes `promtool check metrics` (installed by `make test`).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

const CONTRACT: &[&str] = &[
    "taphook_proxy_requests_total",
    "taphook_events_derived_total",
    "taphook_events_duplicate_total",
    "taphook_events_dropped_total",
    "taphook_filter_rejected_total",
    "taphook_deliveries_total",
    "taphook_delivery_attempts_total",
    "taphook_delivery_duration_seconds",
    "taphook_event_delivery_latency_seconds",
    "taphook_outbox_pending",
    "taphook_rules_reloads_total",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_contract_and_pass_promtool() {
    let rules = vec![(
        "hooks.yaml",
        format!(
            "webhooks:\n{}",
            webhook("all", "/hooks/all", "    events: [\"*\"]\n")
        ),
    )];
    let stack = Stack::with_rules(rules).await;
    let before = stack.metrics().await;
    assert_eq!(
        metric_value(&before, "taphook_outbox_pending{webhook=\"all\"}"),
        0.0
    );
    assert!(
        before.contains("taphook_events_dropped_total{reason=\"tap_queue_full\"} 0"),
        "{before}"
    );
    for reason in ["private_address", "scheme"] {
        let sample =
            format!("taphook_delivery_refused_total{{reason=\"{reason}\",webhook=\"all\"}} 0");
        assert!(before.contains(&sample), "{sample}:\n{before}");
    }
    let id = stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    stack
        .post_json(&format!("/v1/embeds/{id}/import"), json!({}))
        .await;
    stack
        .client
        .get(stack.url("/elsewhere"))
        .send()
        .await
        .unwrap();
    stack
        .receiver
        .wait_for("/hooks/all", 2, Duration::from_secs(10))
        .await;
    let latency = "taphook_event_delivery_latency_seconds_count";
    assert_eq!(stack.wait_metric(latency, 2.0).await, 2.0);
    let text = stack.metrics().await;
    for name in CONTRACT {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    assert_eq!(
        metric_value(
            &text,
            "taphook_proxy_requests_total{route=\"none\",status_class=\"4xx\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(&text, "taphook_event_delivery_latency_seconds_count"),
        2.0
    );

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed (make test installs it)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
