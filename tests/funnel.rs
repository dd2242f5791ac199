//! The importer funnel and stalled sessions, end to end: sessions driven
//! through taphook in front of the reference importer, funnel metrics read
//! from /metrics, `session_stalled` events at a recording receiver.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use taphook::demo::multipart_file;

/// Stall after 2 s idle (checked every second); three template keys at
/// most; every event to `/all`, and only stalls of `orders` to `/stuck`.
fn setup_rules() -> Vec<(&'static str, String)> {
    let hooks = [
        webhook("all", "/all", "    events: [\"*\"]\n"),
        webhook(
            "stuck",
            "/stuck",
            "    events: [session_stalled]\n    filter: {\"==\": [\"$template_key\", \"orders\"]}\n",
        ),
    ];
    vec![("hooks.yaml", format!("webhooks:\n{}", hooks.join("")))]
}

const CONFIG: &str = "funnel:\n  stall_after: 2s\n  max_template_keys: 2\n";

async fn embed(stack: &Stack, template: &str) -> u64 {
    stack
        .create_embed(
            json!({"template_key": template, "embed_user_jwt": "x.y.z"}),
            false,
        )
        .await
}

async fn upload(stack: &Stack, id: u64) {
    let (ct, body) = multipart_file("a.csv", "name\nAda\n");
    stack
        .post(&format!("/v1/embeds/{id}/upload"), &ct, body)
        .await;
}

async fn set_header(stack: &Stack, id: u64) {
    stack
        .post_json(&format!("/v1/embeds/{id}/set-header"), json!({"index": 0}))
        .await;
}

fn stalls_of(stack: &Stack, path: &str, id: u64) -> Vec<Value> {
    stack
        .receiver
        .received_on(path)
        .iter()
        .map(|r| r.json())
        .filter(|e| e["event_type"] == "session_stalled" && e["embed_id"] == id)
        .collect()
}

/// Waits until `id` has `n` stalls at `/all` (up to 10 s).
async fn wait_stalls(stack: &Stack, id: u64, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = stalls_of(stack, "/all", id);
        if got.len() >= n || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sample(template: &str, stage: &str) -> String {
    format!("taphook_funnel_sessions_total{{stage=\"{stage}\",template_key=\"{template}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funnel_counts_each_session_once_per_stage_and_stalls_once_per_idle_period() {
    let stack = Stack::start(Setup {
        rules: setup_rules(),
        config: CONFIG,
        ..Default::default()
    })
    .await;

    // contacts: the whole way (then resumed: not a stage).
    let done = embed(&stack, "contacts").await;
    stack.finish_session(done).await;
    // orders: uploaded, then nothing.
    let stuck = embed(&stack, "orders").await;
    upload(&stack, stuck).await;
    let uploaded_at = std::time::SystemTime::now();
    // A third template key is past max_template_keys: `other`.
    let third = embed(&stack, "invoices").await;
    stack
        .client
        .delete(stack.url(&format!("/v1/embeds/{third}")))
        .send()
        .await
        .unwrap();

    for stage in [
        "initialized",
        "uploaded",
        "header_selected",
        "mapped",
        "submitted",
        "closed",
    ] {
        assert_eq!(
            stack.wait_metric(&sample("contacts", stage), 1.0).await,
            1.0,
            "contacts {stage}"
        );
    }
    // The last request: wait for its event before reading the others.
    assert_eq!(
        stack.wait_metric(&sample("other", "closed"), 1.0).await,
        1.0
    );
    assert_eq!(stack.metric(&sample("orders", "initialized")).await, 1.0);
    assert_eq!(stack.metric(&sample("orders", "uploaded")).await, 1.0);
    assert_eq!(
        stack.metric(&sample("orders", "header_selected")).await,
        0.0
    );
    assert_eq!(stack.metric(&sample("other", "initialized")).await, 1.0);
    assert_eq!(stack.metric(&sample("invoices", "initialized")).await, 0.0);
    // One time-to-stage observation per stage reached after the first.
    assert_eq!(
        stack
            .metric("taphook_funnel_stage_duration_seconds_count{stage=\"uploaded\",template_key=\"contacts\"}")
            .await,
        1.0
    );
    assert_eq!(
        stack
            .metric("taphook_funnel_stage_duration_seconds_count{stage=\"initialized\",template_key=\"contacts\"}")
            .await,
        0.0
    );

    // orders stalls once, with its session's envelope.
    let stalls = wait_stalls(&stack, stuck, 1).await;
    assert_eq!(stalls.len(), 1, "{}", stack.log());
    let stall = &stalls[0];
    assert!(uploaded_at.elapsed().unwrap() >= Duration::from_secs(2));
    assert_eq!(stall["template_key"], "orders");
    assert_eq!(stall["embed_jwt"], "x.y.z");
    assert_eq!(stall["environment_name"], "Production");
    assert_eq!(stall["trigger_type"], "automation");
    assert_eq!(stall["data"]["stage"], "uploaded");
    assert_eq!(stall["data"]["last_event_type"], "file_uploaded");
    assert!(
        stall["data"]["idle_seconds"].as_i64().unwrap() >= 2,
        "{stall}"
    );
    assert!(stall["uuid"].as_str().unwrap().starts_with("event-"));
    // The filtered webhook got it too (delivered concurrently with /all:
    // waited for); nothing else reached it.
    let stuck_hook = stack
        .receiver
        .wait_for("/stuck", 1, Duration::from_secs(10))
        .await;
    assert_eq!(stuck_hook.len(), 1);
    assert_eq!(stuck_hook[0].json(), *stall);
    assert_eq!(
        stack
            .metric("taphook_sessions_stalled_total{stage=\"uploaded\",template_key=\"orders\"}")
            .await,
        1.0
    );

    // Idle for two more periods: still one stall for orders, none for the
    // sessions that submitted or closed.
    settle(Duration::from_secs(5)).await;
    assert_eq!(stalls_of(&stack, "/all", stuck).len(), 1);
    assert!(stalls_of(&stack, "/all", done).is_empty());
    assert!(stalls_of(&stack, "/all", third).is_empty());
    assert_eq!(stack.metric("taphook_funnel_open_sessions").await, 0.0);

    // A new step starts a new idle period: a second stall, a new UUID.
    // The step sent twice counts once.
    set_header(&stack, stuck).await;
    set_header(&stack, stuck).await;
    let stalls = wait_stalls(&stack, stuck, 2).await;
    assert_eq!(stalls.len(), 2, "{}", stack.log());
    assert_eq!(stalls[1]["data"]["stage"], "header_selected");
    assert_ne!(stalls[0]["uuid"], stalls[1]["uuid"]);
    let durations = stack
        .metric("taphook_funnel_stage_duration_seconds_sum{stage=\"header_selected\",template_key=\"orders\"}")
        .await;
    assert!(durations >= 2.0, "time from upload to header: {durations}");
    assert_eq!(
        stack.metric(&sample("orders", "header_selected")).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalls_survive_restarts_and_are_not_reported_twice() {
    let mut stack = Stack::start(Setup {
        rules: setup_rules(),
        config: CONFIG,
        ..Default::default()
    })
    .await;
    let reported = embed(&stack, "orders").await;
    assert_eq!(wait_stalls(&stack, reported, 1).await.len(), 1);

    // Idle across a crash: reported after the restart, once.
    let pending = embed(&stack, "orders").await;
    stack.wait_metric("taphook_funnel_open_sessions", 1.0).await;
    stack.restart().await;
    assert_eq!(
        wait_stalls(&stack, pending, 1).await.len(),
        1,
        "{}",
        stack.log()
    );
    settle(Duration::from_secs(4)).await;
    assert_eq!(stalls_of(&stack, "/all", pending).len(), 1);
    // The one reported before the crash is not reported again.
    assert_eq!(stalls_of(&stack, "/all", reported).len(), 1);

    // A session's stages survive too: initialized is not counted again.
    upload(&stack, pending).await;
    stack.wait_metric(&sample("orders", "uploaded"), 1.0).await;
    assert_eq!(stack.metric(&sample("orders", "initialized")).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_detection_can_be_turned_off() {
    let stack = Stack::start(Setup {
        rules: setup_rules(),
        config: "funnel:\n  stall_after: 0s\n",
        ..Default::default()
    })
    .await;
    let id = embed(&stack, "orders").await;
    stack
        .wait_metric(&sample("orders", "initialized"), 1.0)
        .await;
    settle(Duration::from_secs(3)).await;
    assert!(stalls_of(&stack, "/all", id).is_empty());
}
