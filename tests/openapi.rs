//! The admin API's OpenAPI document is served, and every operation it
//! lists is a route the admin listener really serves.

mod common;

use common::*;
use serde_json::Value;

/// Whether the listener routed `method path` to a handler: not the
/// fallback (`no such route`) and not 405 (path known, method not).
async fn routed(stack: &Stack, method: &str, path: &str) -> bool {
    let resp = stack
        .client
        .request(
            method.parse().unwrap(),
            format!("http://{}{}", stack.admin, path),
        )
        .bearer_auth("t0k")
        .send()
        .await
        .unwrap();
    if resp.status() == 405 {
        return false;
    }
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    body["error"]["message"] != "no such route"
}

fn concrete(path: &str) -> String {
    path.replace("{embed_id}", "1")
        .replace("{key}", "nope")
        .replace("{id}", "1")
        .replace("{topic}", "entity")
        .replace("{name}", "nope")
        .replace("{format}", "oneschema")
        .replace("{file}", "nope.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served() {
    let stack = Stack::start(Setup {
        config: "admin_token: t0k\n",
        ..Default::default()
    })
    .await;
    let served: Value = stack
        .client
        .get(format!("http://{}/openapi.json", stack.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string("docs/openapi.json").unwrap()).unwrap();
    assert_eq!(served, file, "the served document is docs/openapi.json");
    assert_eq!(file["openapi"], "3.1.0");
    let mut checked = 0;
    for (path, ops) in file["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            assert!(
                routed(&stack, &method.to_uppercase(), &concrete(path)).await,
                "{method} {path} is documented but not served"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 40);
    // Every route the admin router serves under /v1 is documented.
    let router = std::fs::read_to_string("src/admin/mod.rs").unwrap();
    let mut routes = 0;
    for piece in router.split(".route(").skip(1) {
        let path = piece.trim_start().trim_start_matches('"');
        let path = path.split('"').next().unwrap();
        if path.starts_with("/v1/") {
            routes += 1;
            assert!(
                file["paths"].get(path).is_some(),
                "{path} is served but not documented"
            );
        }
    }
    assert!(
        routes >= 25,
        "the router's routes were not found ({routes})"
    );
    // The check can fail: undocumented routes are not served.
    assert!(!routed(&stack, "GET", "/v1/nope").await);
    assert!(!routed(&stack, "PATCH", "/v1/apps/x").await);
}
