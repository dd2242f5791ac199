//! The OS1 publisher registry: apps, registered events with filterLogic,
//! permissions, write-back, and hot reload.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "t0k";

async fn api(stack: &Stack, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    stack.api(TOKEN, method, path, body).await
}

fn config() -> String {
    format!("admin_token: {TOKEN}\n")
}

fn names(page: &Value) -> Vec<String> {
    page["data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_and_events_round_trip_through_the_api_and_a_restart() {
    let mut stack = Stack::start(Setup {
        config: &config(),
        ..Default::default()
    })
    .await;
    let unauthenticated = stack
        .client
        .post(format!("http://{}/v1/apps", stack.admin))
        .json(&json!({"permissions": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);

    let (status, body) = api(
        &stack,
        "POST",
        "/v1/apps",
        Some(json!({"id": "app:importer", "name": "Importer", "permissions": ["read-imports"]})),
    )
    .await;
    assert_eq!(
        (status, body.clone()),
        (201, json!({"data": {"id": "app:importer"}}))
    );
    let (status, body) = api(
        &stack,
        "POST",
        "/v1/apps",
        Some(json!({"permissions": ["get users"]})),
    )
    .await;
    assert_eq!(status, 201);
    assert!(body["data"]["id"].as_str().unwrap().starts_with("app:"));
    let (_, app) = api(
        &stack,
        "PUT",
        "/v1/apps/app:importer",
        Some(json!({"name": "The importer"})),
    )
    .await;
    assert_eq!(
        app["data"],
        json!({"id": "app:importer", "name": "The importer", "permissions": ["read-imports"]})
    );

    let events: Vec<Value> = (1..=5)
        .map(|i| json!({"name": format!("e{i}"), "description": format!("event {i}"), "eventType": "columns_mapped", "type": "imports",
            "filterLogic": {"===": ["$eventtype", "columns_mapped"]}}))
        .collect();
    let (status, body) = api(&stack, "POST", "/v1/topics/entity/events", Some(json!({"appId": "app:importer", "getApiPath": "/v1/embeds/{embed_id}", "events": events}))).await;
    assert_eq!(status, 201, "{body}");

    // Pages of 2 over 5, in a stable order, with an opaque cursor.
    let mut pages = Vec::new();
    let mut path = "/v1/topics/entity/events?limit=2".to_string();
    loop {
        let (status, page) = api(&stack, "GET", &path, None).await;
        assert_eq!(status, 200);
        pages.push(names(&page));
        match page["data"]["meta"]["nextPage"].as_str() {
            Some(next) => {
                assert_eq!(page["data"]["meta"]["hasNextPage"], true);
                path = format!("/v1/topics/entity/events?limit=2&nextPage={next}");
            }
            None => {
                assert_eq!(page["data"]["meta"]["hasNextPage"], false);
                break;
            }
        }
    }
    assert_eq!(pages, [vec!["e1", "e2"], vec!["e3", "e4"], vec!["e5"]]);
    let (_, first) = api(&stack, "GET", "/v1/topics/entity/events?limit=1", None).await;
    assert_eq!(
        first["data"]["events"][0],
        json!({"name": "e1", "type": "imports", "appId": "app:importer", "description": "event 1", "eventType": "columns_mapped",
            "filterLogic": {"===": ["$eventtype", "columns_mapped"]}, "getApiPath": "/v1/embeds/{embed_id}", "topic": "entity"})
    );

    let (status, updated) = api(
        &stack,
        "PUT",
        "/v1/topics/entity/events/e1",
        Some(json!({"events": [{"description": "changed"}]})),
    )
    .await;
    assert_eq!(
        (status, updated["data"]["description"].clone()),
        (200, json!("changed"))
    );

    // Errors name what is wrong.
    let one = |name: &str, extra: Value| {
        let mut e = json!({"name": name, "eventType": "columns_mapped", "appId": "app:importer"});
        e.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"events": [e]})
    };
    assert_eq!(
        api(
            &stack,
            "POST",
            "/v1/topics/galaxy/events",
            Some(one("x", json!({})))
        )
        .await
        .0,
        404
    );
    assert_eq!(
        api(
            &stack,
            "POST",
            "/v1/topics/entity/events",
            Some(one("e2", json!({})))
        )
        .await
        .0,
        409
    );
    let (status, body) = api(
        &stack,
        "POST",
        "/v1/topics/entity/events",
        Some(one("bad", json!({"filterLogic": {"lenght": [1]}}))),
    )
    .await;
    assert_eq!(status, 422);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown operator `lenght`"),
        "{body}"
    );
    let (status, body) = api(
        &stack,
        "POST",
        "/v1/topics/entity/events",
        Some(one("orphan", json!({"appId": "app:nobody"}))),
    )
    .await;
    assert_eq!(status, 422);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown app `app:nobody`"),
        "{body}"
    );

    // Bulk delete: at most 25 per request.
    let more: Vec<Value> = (1..=26)
        .map(|i| json!({"name": format!("b{i:02}"), "eventType": "columns_mapped"}))
        .collect();
    assert_eq!(
        api(
            &stack,
            "POST",
            "/v1/topics/entity/events",
            Some(json!({"appId": "app:importer", "events": more}))
        )
        .await
        .0,
        201
    );
    let all: Vec<String> = (1..=26).map(|i| format!("b{i:02}")).collect();
    let (status, body) = api(
        &stack,
        "POST",
        "/v1/topics/entity/events/bulk-delete",
        Some(json!({"events": all})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 to 25 events"),
        "{body}"
    );
    let (status, _) = api(
        &stack,
        "POST",
        "/v1/topics/entity/events/bulk-delete",
        Some(json!({"events": all[..25]})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = api(
        &stack,
        "POST",
        "/v1/topics/entity/events/bulk-delete",
        Some(json!({"action": "remove", "events": ["b26", "e5"]})),
    )
    .await;
    assert_eq!(status, 200);
    let (_, left) = api(&stack, "GET", "/v1/topics/entity/events", None).await;
    assert_eq!(names(&left), ["e1", "e2", "e3", "e4"]);

    // Everything is in the rules directory: a restart keeps it.
    stack.restart().await;
    let (_, left) = api(&stack, "GET", "/v1/topics/entity/events", None).await;
    assert_eq!(names(&left), ["e1", "e2", "e3", "e4"]);
    assert_eq!(left["data"]["events"][0]["description"], "changed");
    assert_eq!(
        api(&stack, "GET", "/v1/apps/app:importer", None).await.1["data"]["name"],
        "The importer"
    );
}

const REGISTRY: &str = r#"
apps:
  - id: app:importer
    name: Importer
    permissions: [read-imports]
events:
  - app: app:importer
    topic: entity
    name: contacts_import_with_errors
    description: Columns mapped on the contacts template with validation errors
    event_type: columns_mapped
    filter: {">": ["$data.validation_error_counts.total", 0]}
    get_api_path: /v1/embeds/{embed_id}
  - app: app:importer
    topic: entity
    name: any_mapping
    event_type: columns_mapped
    filter: {"===": ["$eventtype", "columns_mapped"]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_event_reaches_a_permitted_webhook_when_its_filter_holds() {
    let hooks = format!(
        "webhooks:\n{}{}",
        webhook(
            "errors",
            "/hooks/errors",
            "    events: [contacts_import_with_errors]\n    permissions: [read-imports]\n"
        ),
        webhook(
            "all",
            "/hooks/all",
            "    events: [any_mapping]\n    permissions: [read-imports, other]\n"
        )
    );
    let stack = Stack::start(Setup {
        config: &config(),
        rules: vec![
            ("registry.yaml", REGISTRY.to_string()),
            ("hooks.yaml", hooks),
        ],
        ..Default::default()
    })
    .await;
    let with_errors = stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    let clean = stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    let (ct, bad_csv) = taphook::demo::multipart_file("c.csv", "name,email\nBob,bob-at-example\n");
    let (_, good_csv) = taphook::demo::multipart_file("c.csv", "name,email\nAda,ada@example.com\n");
    for (id, csv) in [(with_errors, bad_csv), (clean, good_csv)] {
        stack
            .post(&format!("/v1/embeds/{id}/upload"), &ct, csv)
            .await;
        stack
            .post_json(&format!("/v1/embeds/{id}/map"), json!({}))
            .await;
    }
    let all = stack
        .receiver
        .wait_for("/hooks/all", 2, Duration::from_secs(10))
        .await;
    assert_eq!(all.len(), 2, "$eventtype filters as in OS1's example");
    let errors = stack
        .receiver
        .wait_for("/hooks/errors", 1, Duration::from_secs(10))
        .await;
    settle(Duration::from_millis(300)).await;
    assert_eq!(
        stack.receiver.received_on("/hooks/errors").len(),
        1,
        "the filter keeps the clean import out"
    );
    let event = errors[0].json();
    assert_eq!(event["embed_id"], with_errors);
    assert_eq!(
        event["registered_event"],
        json!({"name": "contacts_import_with_errors", "topic": "entity", "app": "app:importer", "get_api_path": format!("/v1/embeds/{with_errors}")})
    );

    // A subscriber without the app's permission: 403 through the API.
    let (status, body) = api(&stack, "POST", "/v1/event-webhooks", Some(json!({
        "webhook_key": "intruder", "url": stack.receiver.url("/hooks/x"), "events": ["contacts_import_with_errors"], "permissions": ["other"]
    })))
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("holds none of app `app:importer`'s permissions"));
}

#[test]
fn a_webhook_without_the_apps_permission_is_a_load_error() {
    let (code, text) = check_rules(&[
        ("registry.yaml", REGISTRY),
        (
            "hooks.yaml",
            "webhooks:\n  - key: intruder\n    url: http://127.0.0.1:1/\n    events: [contacts_import_with_errors]\n    permissions: [other]\n",
        ),
    ]);
    assert_eq!(code, Some(1));
    assert!(
        text.contains("hooks.yaml:4: webhook `intruder` lists registered event `contacts_import_with_errors` but holds none of app `app:importer`'s permissions (read-imports); it holds other"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_traffic_loses_nothing_and_a_broken_edit_keeps_the_old_rules() {
    let first = format!(
        "webhooks:\n{}",
        webhook("first", "/hooks/first", "    events: [embed_initialized]\n")
    );
    let stack = Stack::start(Setup {
        config: &config(),
        rules: vec![("first.yaml", first)],
        ..Default::default()
    })
    .await;
    let stack = Arc::new(stack);
    // Requests flow until the reloads are done.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stack, stop) = (stack.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut sent, mut ok) = (0usize, 0usize);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || sent < 50 {
                let r = stack
                    .client
                    .post(stack.url("/v1/embeds"))
                    .json(&json!({"template_key": "contacts"}))
                    .send()
                    .await
                    .unwrap();
                sent += 1;
                ok += usize::from(r.status() == 200);
            }
            (sent, ok)
        })
    };
    let rules = stack.rules_dir();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A new file: picked up by the watcher.
    let second = format!(
        "webhooks:\n{}",
        webhook(
            "second",
            "/hooks/second",
            "    events: [embed_initialized]\n"
        )
    )
    .replace("{receiver}", &stack.receiver.url(""));
    std::fs::write(rules.join("second.yaml"), second).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while api(&stack, "GET", "/v1/event-webhooks/second", None)
        .await
        .0
        != 200
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the new file was never loaded"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // A SIGHUP while requests flow: one more successful reload.
    let reloads = "taphook_rules_reloads_total{result=\"success\"}";
    let before = stack.metric(reloads).await;
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &stack.pid().to_string()])
        .status();
    assert_eq!(stack.wait_metric(reloads, before + 1.0).await, before + 1.0);
    // A broken edit: the old rules stay, the failure is counted.
    std::fs::write(rules.join("broken.yaml"), "webhooks:\n  - key: [unclosed\n").unwrap();
    assert_eq!(
        stack
            .wait_metric("taphook_rules_reloads_total{result=\"error\"}", 1.0)
            .await,
        1.0
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, ok) = traffic.await.unwrap();
    assert_eq!(ok, sent, "every request was answered");
    let got = stack
        .receiver
        .wait_for("/hooks/first", sent, Duration::from_secs(30))
        .await;
    assert_eq!(got.len(), sent, "no event lost across reloads");
    assert_eq!(
        api(&stack, "GET", "/v1/event-webhooks/second", None)
            .await
            .0,
        200,
        "a failed reload keeps the rules that were loaded"
    );
    assert!(
        stack.log().contains("rules reload failed"),
        "{}",
        stack.log()
    );
}
