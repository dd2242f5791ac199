//! `log.format: json`: one JSON object per line, and every line about an
//! event names the event's UUID and the id of the request it came from.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn with_message<'a>(lines: &'a [Value], message: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["message"] == message).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_the_event_uuid_and_the_request_id() {
    let hooks = [
        webhook("ok", "/ok", "    events: [embed_initialized]\n"),
        webhook(
            "gone",
            "/gone",
            "    events: [embed_initialized]\n    retry: { on: [500], max_retries: 0 }\n",
        ),
    ];
    let stack = Stack::start(Setup {
        rules: vec![("hooks.yaml", format!("webhooks:\n{}", hooks.join("")))],
        config: "log:\n  format: json\n",
        ..Default::default()
    })
    .await;
    stack.receiver.default_reply("/gone", Reply::Status(500));

    // One request with the client's id, one without.
    let resp = stack
        .client
        .post(stack.url("/v1/embeds"))
        .header("x-request-id", "req-42")
        .json(&json!({"template_key": "contacts"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let with_id = resp.json::<Value>().await.unwrap()["id"].clone();
    let without_id = stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    let got = stack
        .receiver
        .wait_for("/ok", 2, Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), 2);
    stack
        .receiver
        .wait_for("/gone", 2, Duration::from_secs(10))
        .await;
    stack
        .wait_metric(
            "taphook_deliveries_total{outcome=\"dead\",webhook=\"gone\"}",
            2.0,
        )
        .await;
    settle(Duration::from_millis(200)).await;

    let uuid_of = |id: &Value| {
        got.iter()
            .map(|r| r.json())
            .find(|e| e["embed_id"] == *id)
            .unwrap()["uuid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (uuid_with, uuid_without) = (uuid_of(&with_id), uuid_of(&json!(without_id)));
    let log = lines(&stack.log());
    assert!(log
        .iter()
        .all(|l| l["timestamp"].is_string() && l["level"].is_string()));

    // The pipeline's lines: the event, its type and the request id.
    let derived = with_message(&log, "event derived");
    assert_eq!(derived.len(), 2, "{log:#?}");
    let span_of = |uuid: &str, lines: &[&Value]| -> Value {
        lines
            .iter()
            .find(|l| l["span"]["event"] == uuid)
            .unwrap_or_else(|| panic!("no line for {uuid}"))["span"]
            .clone()
    };
    let span = span_of(&uuid_with, &derived);
    assert_eq!(span["request_id"], "req-42");
    assert_eq!(span["event_type"], "embed_initialized");
    let generated = span_of(&uuid_without, &derived)["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(generated.len(), 32, "{generated}");
    assert!(generated.bytes().all(|b| b.is_ascii_hexdigit()));

    // The deliverer's lines: the same event and request ids, and the webhook.
    let delivered = with_message(&log, "delivered");
    let span = span_of(&uuid_with, &delivered);
    assert_eq!(span["request_id"], "req-42");
    assert_eq!(span["webhook"], "ok");
    let dead = with_message(&log, "delivery failed; dead letter");
    assert_eq!(dead.len(), 2);
    let span = span_of(&uuid_without, &dead);
    assert_eq!(span["request_id"], generated.as_str());
    assert_eq!(span["webhook"], "gone");
}
