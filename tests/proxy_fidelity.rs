//! The proxied exchange is the upstream's exchange: same status, headers
//! and body bytes, for every kind of body, and whatever the input.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use taphook::demo::multipart_file;

/// A route that taps every fixture and a webhook that receives it.
fn fixture_rules() -> Vec<(&'static str, String)> {
    vec![(
        "fixtures.yaml",
        r#"
routes:
  - name: fixture
    event: fixture_seen
    method: "*"
    path: /_fixtures/{name}
    status: [2xx, 4xx]
    data:
      name: $params.name
      status: $response.status
      request_body: $request.body
      request_truncated: $request.truncated
      response_body: $response.body
      files: $request.files
      jwt: $jwt
webhooks:
  - key: fixtures
    url: "{receiver}/hooks/fixtures"
    events: [fixture_seen]
"#
        .to_string(),
    )]
}

struct Answer {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

async fn send(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> Answer {
    let mut req = client
        .request(method.parse().unwrap(), url)
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, reqwest::header::HeaderValue::from_bytes(v).unwrap());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let mut headers: Vec<(String, Vec<u8>)> = resp
        .headers()
        .iter()
        // `date` differs by the second; `connection` / `keep-alive` are
        // hop-by-hop (RFC 9110 7.6.1): each connection has its own.
        .filter(|(k, _)| !matches!(k.as_str(), "date" | "connection" | "keep-alive"))
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    headers.sort();
    Answer {
        status,
        headers,
        body: resp.bytes().await.unwrap().to_vec(),
    }
}

/// Sends the same request directly and through taphook; asserts the
/// answers are identical.
async fn same_both_ways(
    stack: &Stack,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> Answer {
    let direct = send(
        &stack.client,
        method,
        &stack.direct_url(path),
        headers,
        body,
    )
    .await;
    let proxied = send(&stack.client, method, &stack.url(path), headers, body).await;
    assert_eq!(proxied.status, direct.status, "{method} {path}: status");
    assert_eq!(proxied.headers, direct.headers, "{method} {path}: headers");
    assert_eq!(proxied.body, direct.body, "{method} {path}: body");
    proxied
}

async fn fixture_events(stack: &Stack, n: usize) -> Vec<Value> {
    let got = stack
        .receiver
        .wait_for("/hooks/fixtures", n, Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), n, "{}", stack.log());
    got.iter().map(|r| r.json()["data"].clone()).collect()
}

fn event_named<'a>(events: &'a [Value], name: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no event for {name}: {events:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_identical_to_the_upstreams() {
    let stack = Stack::with_rules(fixture_rules()).await;
    let gz = same_both_ways(
        &stack,
        "GET",
        "/_fixtures/gzip",
        &[("accept-encoding", b"gzip")],
        b"",
    )
    .await;
    assert!(gz
        .headers
        .iter()
        .any(|(k, v)| k == "content-encoding" && v == b"gzip"));
    let chunked = same_both_ways(&stack, "GET", "/_fixtures/chunked", &[], b"").await;
    assert!(
        chunked
            .headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v == b"chunked"),
        "{:?}",
        chunked.headers
    );
    let empty = same_both_ways(&stack, "GET", "/_fixtures/empty", &[], b"").await;
    assert_eq!((empty.status, empty.body.len()), (204, 0));
    same_both_ways(
        &stack,
        "POST",
        "/_fixtures/echo",
        &[("content-type", b"application/json")],
        br#"{"a":[1,2,{"b":null}]}"#,
    )
    .await;
    let (ct, multipart) = multipart_file("contacts.csv", "name,email\nAda,ada@example.com\n");
    same_both_ways(
        &stack,
        "POST",
        "/_fixtures/echo",
        &[("content-type", ct.as_bytes())],
        &multipart,
    )
    .await;
    same_both_ways(
        &stack,
        "POST",
        "/v1/embeds",
        &[("content-type", b"application/json")],
        b"{}",
    )
    .await;
    same_both_ways(&stack, "GET", "/v1/embeds/999999", &[], b"").await;
    same_both_ways(&stack, "GET", "/not/a/route", &[], b"").await;

    // The tap saw the decoded bodies: one event per tapped fixture request.
    let events = fixture_events(&stack, 5).await;
    assert_eq!(
        event_named(&events, "gzip")["response_body"],
        json!({"fixture": "gzip", "items": [1, 2, 3]})
    );
    assert_eq!(
        event_named(&events, "chunked")["response_body"],
        json!({"fixture": "chunked", "n": 3})
    );
    assert_eq!(event_named(&events, "empty")["status"], 204);
    let echoes: Vec<&Value> = events.iter().filter(|e| e["name"] == "echo").collect();
    assert!(echoes
        .iter()
        .any(|e| e["request_body"] == json!({"a": [1, 2, {"b": null}]})));
    let upload = echoes
        .iter()
        .find(|e| e["files"].as_array().is_some_and(|f| !f.is_empty()))
        .unwrap();
    assert_eq!(
        upload["files"],
        json!([{"field": "file", "filename": "contacts.csv", "content_type": "text/csv"}])
    );
    assert_eq!(
        upload["request_body"],
        Value::Null,
        "multipart bodies are never buffered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_502_and_no_event() {
    let rules = vec![(
        "hooks.yaml",
        // A route that would match any answer, a 502 included: the
        // proxy's own error response must still derive nothing.
        format!(
            "routes:\n  - name: any-answer\n    event: answered\n    method: POST\n    path: /v1/embeds\n    status: [2xx, 4xx, 5xx]\nwebhooks:\n{}",
            webhook("all", "/hooks/all", "    events: [\"*\"]\n")
        ),
    )];
    let stack = Stack::start(Setup {
        rules,
        upstream_down: true,
        ..Default::default()
    })
    .await;
    let r = stack
        .client
        .post(stack.url("/v1/embeds"))
        .json(&json!({"template_key": "contacts"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    settle(Duration::from_millis(500)).await;
    assert!(stack.receiver.received().is_empty());
    let m = stack.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "taphook_proxy_requests_total{route=\"any-answer\",status_class=\"5xx\"}"
        ),
        1.0
    );
    assert!(
        !m.contains("taphook_events_derived_total{"),
        "no event may be derived:\n{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_proxied_unchanged_and_never_breaks_the_tap() {
    let mut stack = Stack::start(Setup {
        rules: fixture_rules(),
        config: "capture:\n  max_body_bytes: 256KiB\n",
        ..Default::default()
    })
    .await;
    let json = &[("content-type", b"application/json".as_slice())];
    same_both_ways(
        &stack,
        "POST",
        "/_fixtures/echo",
        json,
        b"{\"unterminated\": [1, 2",
    )
    .await;
    let big = format!("{{\"rows\": [{}]}}", vec!["\"x\""; 80_000].join(","));
    same_both_ways(&stack, "POST", "/_fixtures/echo", json, big.as_bytes()).await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    same_both_ways(
        &stack,
        "POST",
        "/_fixtures/echo",
        &[("content-type", b"text/json")],
        deep.as_bytes(),
    )
    .await;
    same_both_ways(
        &stack,
        "POST",
        "/_fixtures/echo",
        json,
        b"{\"name\": \"\xff\xfe\xc3\x28\"}",
    )
    .await;
    same_both_ways(
        &stack,
        "POST",
        "/_fixtures/echo",
        &[
            ("content-type", b"application/json"),
            ("x-odd", b"caf\xe9 \xff"),
        ],
        b"{}",
    )
    .await;
    let bad_jwt = &[
        ("content-type", b"application/json".as_slice()),
        ("authorization", b"Bearer not.a.jwt!!".as_slice()),
    ];
    same_both_ways(
        &stack,
        "POST",
        "/_fixtures/echo",
        bad_jwt,
        b"{\"jwt\": \"bad\"}",
    )
    .await;
    same_both_ways(
        &stack,
        "POST",
        "/_fixtures/echo",
        &[("content-type", b"multipart/form-data; boundary=")],
        b"--\r\n\r\n--",
    )
    .await;
    same_both_ways(
        &stack,
        "POST",
        "/_fixtures/echo",
        &[
            ("content-type", b"application/json"),
            ("content-encoding", b"gzip"),
        ],
        b"not gzip",
    )
    .await;

    // Each pair above went through taphook once: 8 events, the tap intact.
    let events = fixture_events(&stack, 8).await;
    let over_cap = events
        .iter()
        .find(|e| e["request_truncated"] == true)
        .expect("a truncated capture");
    assert_eq!(over_cap["request_body"], Value::Null);
    assert!(events
        .iter()
        .any(|e| e["request_body"] == json!({"jwt": "bad"}) && e["jwt"] == json!({})));
    assert!(events.iter().all(|e| e["name"] == "echo"));
    // A panic in a Pingora task would not end the process: read the log.
    assert!(!stack.log().contains("panicked"), "{}", stack.log());
    assert!(stack.alive());
    assert_eq!(stack.admin_status("/healthz").await, 200);
    assert_eq!(
        stack
            .wait_metric(
                "taphook_events_dropped_total{reason=\"tap_queue_full\"}",
                0.0
            )
            .await,
        0.0
    );
}
