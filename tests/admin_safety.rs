//! The admin API's defences: 401 with a Bearer challenge for a missing or
//! wrong token, JSON bodies only (415) and at most 1 MiB (413), no admin
//! route on the proxy listener, and a warning at start when the admin
//! listener is reachable from other hosts without a token.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "s4fety-T0ken-9f2k";

async fn stack_with_token() -> Stack {
    Stack::start(Setup {
        config: &format!("admin_token: {TOKEN}\n"),
        ..Default::default()
    })
    .await
}

/// Status, `WWW-Authenticate` and JSON body of a request to the admin
/// listener.
async fn send(
    stack: &Stack,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, Option<String>, Value) {
    let mut req = stack
        .client
        .request(
            method.parse().unwrap(),
            format!("http://{}{path}", stack.admin),
        )
        .body(body);
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, challenge, body)
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// Routes that take a JSON body.
const JSON_ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/event-webhooks"),
    ("PUT", "/v1/event-webhooks/nope"),
    ("POST", "/v1/apps"),
    ("PUT", "/v1/apps/nope"),
    ("POST", "/v1/topics/entity/events"),
    ("PUT", "/v1/topics/entity/events/nope"),
    ("POST", "/v1/topics/entity/events/bulk-delete"),
    ("POST", "/v1/deliveries/replay"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_token_is_a_401_with_a_bearer_challenge() {
    let stack = stack_with_token().await;
    let wrong = [
        (None, None),
        (
            Some("Bearer n0t-the-t0ken".to_string()),
            Some("invalid_token"),
        ),
        // A prefix of the token, the token and one more byte, another case.
        (
            Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
            Some("invalid_token"),
        ),
        (Some(format!("Bearer {TOKEN}x")), Some("invalid_token")),
        (
            Some(format!("Bearer {}", TOKEN.to_uppercase())),
            Some("invalid_token"),
        ),
        // The right token under another scheme, or no token at all.
        (Some(format!("Token {TOKEN}")), None),
        (Some(format!("Basic {TOKEN}")), None),
        (Some("Bearer".to_string()), None),
        (Some("Bearer ".to_string()), None),
    ];
    for (method, path) in [
        ("GET", "/v1/event-webhooks"),
        ("GET", "/v1/deliveries"),
        ("DELETE", "/v1/event-webhooks/nope"),
        ("POST", "/v1/deliveries/1/retry"),
    ] {
        for (auth, reason) in &wrong {
            let (status, challenge, body) =
                send(&stack, method, path, auth.as_deref(), None, Vec::new()).await;
            assert_eq!(status, 401, "{method} {path} {auth:?}");
            let challenge = challenge.expect("WWW-Authenticate");
            assert!(challenge.starts_with("Bearer realm="), "{challenge}");
            match reason {
                Some(r) => assert!(challenge.contains(&format!("error=\"{r}\"")), "{challenge}"),
                None => assert!(!challenge.contains("error="), "{challenge}"),
            }
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
            // What was sent is not echoed.
            if let Some(a) = auth {
                let sent = a.split_once(' ').map_or("", |(_, t)| t);
                assert!(
                    sent.is_empty() || !body.to_string().contains(sent),
                    "{body}"
                );
            }
        }
    }
    // Authentication comes before the body checks: an unauthenticated
    // request learns nothing about them.
    for (method, path) in JSON_ROUTES {
        let (status, challenge, _) = send(
            &stack,
            method,
            path,
            None,
            Some("text/plain"),
            b"x".to_vec(),
        )
        .await;
        assert_eq!(
            (status, challenge.is_some()),
            (401, true),
            "{method} {path}"
        );
    }
    // The scheme is case-insensitive (RFC 7235); the token is not.
    let (status, _, _) = send(
        &stack,
        "GET",
        "/v1/event-webhooks",
        Some(&format!("bearer {TOKEN}")),
        None,
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    // Health, readiness, metrics and the OpenAPI document need no token.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let (status, _, _) = send(&stack, "GET", path, None, None, Vec::new()).await;
        assert_eq!(status, 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_token_every_api_route_is_a_401() {
    let stack = Stack::start(Setup::default()).await;
    for (method, path) in [("GET", "/v1/event-webhooks"), ("POST", "/v1/apps")] {
        for auth in [None, Some("Bearer anything"), Some("Bearer ")] {
            let (status, challenge, body) = send(
                &stack,
                method,
                path,
                auth,
                Some("application/json"),
                b"{}".to_vec(),
            )
            .await;
            assert_eq!(status, 401, "{method} {path} {auth:?}");
            assert!(challenge.unwrap().starts_with("Bearer"));
            assert!(body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("admin_token"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_must_be_json_and_at_most_1_mib() {
    let stack = stack_with_token().await;
    let auth = bearer();
    let hook = |key: &str, description: &str| {
        serde_json::to_vec(&json!({"webhook_key": key, "url": "http://127.0.0.1:1/x",
            "events": ["embed_initialized"], "description": description}))
        .unwrap()
    };
    for (method, path) in JSON_ROUTES {
        // Not JSON by its content type: 415, whatever the bytes.
        for ct in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("not a content type"),
        ] {
            let (status, _, body) =
                send(&stack, method, path, Some(&auth), ct, hook("ct", "")).await;
            assert_eq!(status, 415, "{method} {path} {ct:?}: {body}");
            assert_eq!(body["error"]["code"], "unsupported_media_type");
        }
        // Over 1 MiB: 413, in the API's error shape.
        let (status, _, body) = send(
            &stack,
            method,
            path,
            Some(&auth),
            Some("application/json"),
            hook("big", &"x".repeat((1 << 20) + 1)),
        )
        .await;
        assert_eq!(status, 413, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "payload_too_large");
    }
    // Nothing of that was written.
    assert!(!stack.rules_dir().join("event-webhooks").exists());
    let (status, _, body) = send(
        &stack,
        "GET",
        "/v1/event-webhooks",
        Some(&auth),
        None,
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["event_webhooks"].as_array().unwrap().len(), 0);

    // JSON with parameters, or a +json type, and just under the limit:
    // accepted.
    let (status, _, body) = send(
        &stack,
        "POST",
        "/v1/event-webhooks",
        Some(&auth),
        Some("application/json; charset=utf-8"),
        hook("near-the-limit", &"x".repeat((1 << 20) - 200)),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, _, body) = send(
        &stack,
        "POST",
        "/v1/event-webhooks",
        Some(&auth),
        Some("application/merge-patch+json"),
        hook("plus-json", ""),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // Malformed JSON with the right type is a 400, not a 415.
    let (status, _, body) = send(
        &stack,
        "POST",
        "/v1/event-webhooks",
        Some(&auth),
        Some("application/json"),
        b"{\"webhook_key\": ".to_vec(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
    // Routes without a body take none, whatever the content type.
    let (status, _, _) = send(
        &stack,
        "POST",
        "/v1/event-webhooks/plus-json/enable",
        Some(&auth),
        None,
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_listener_passes_admin_paths_to_the_importer() {
    let stack = stack_with_token().await;
    let paths = [
        "/metrics",
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/v1/event-webhooks",
        "/v1/deliveries?state=dead",
        "/v1/embeds/53511/events",
    ];
    for path in paths {
        let via_proxy = stack
            .client
            .get(stack.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let direct = stack
            .client
            .get(stack.direct_url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let (status, direct_status) = (via_proxy.status(), direct.status());
        let (text, direct_text) = (
            via_proxy.text().await.unwrap(),
            direct.text().await.unwrap(),
        );
        assert_eq!(
            (status, &text),
            (direct_status, &direct_text),
            "{path}: the importer's answer"
        );
        assert_eq!(
            status, 404,
            "{path}: the reference importer has no such route"
        );
        assert!(!text.contains("taphook_"), "{path}: {text}");
        assert!(!text.contains("\"error\""), "{path}: {text}");
    }
    // A write through the proxy reaches the importer, not the rules.
    let r = stack
        .client
        .post(stack.url("/v1/event-webhooks"))
        .bearer_auth(TOKEN)
        .json(&json!({"webhook_key": "via-proxy", "url": "http://127.0.0.1:1/x", "events": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(!stack.rules_dir().join("event-webhooks").exists());
    // Each was proxied (no route matches them).
    assert_eq!(
        stack
            .wait_metric(
                r#"taphook_proxy_requests_total{route="none",status_class="4xx"}"#,
                paths.len() as f64 + 1.0
            )
            .await,
        paths.len() as f64 + 1.0
    );
}

/// Starts `taphook run` with this config, waits until it runs (or
/// exits), stops it, and returns what it printed.
fn start_and_stop(dir: &Path, config: &str) -> String {
    std::fs::write(dir.join("taphook.yaml"), config).unwrap();
    let log_path = dir.join("taphook.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_taphook"))
        .args(["run", "--config"])
        .arg(dir.join("taphook.yaml"))
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if text.contains("taphook running") || exited || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return std::fs::read_to_string(&log_path).unwrap_or_default();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_public_admin_listener_without_a_token_is_warned_about_at_start() {
    const WARNING: &str = "admin listener binds a non-loopback address without admin_token";
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    let port = || taphook::demo::free_port().unwrap();
    for (admin_host, token, warned) in [
        ("0.0.0.0", "", true),
        ("0.0.0.0", "admin_token: t0k\n", false),
        ("127.0.0.1", "", false),
    ] {
        // A free port can be taken by a parallel test before taphook binds it.
        let mut out = String::new();
        for _attempt in 0..3 {
            let config = format!(
                "listen: 127.0.0.1:{}\nupstream: http://127.0.0.1:{}\nadmin_listen: {admin_host}:{}\nrules_dir: rules\ndata_dir: data\nthreads: 1\n{token}",
                port(),
                port(),
                port()
            );
            out = start_and_stop(dir.path(), &config);
            if !out.contains("cannot listen") {
                break;
            }
        }
        assert!(out.contains("taphook running"), "{out}");
        assert_eq!(
            out.contains(WARNING),
            warned,
            "{admin_host} {token:?}:\n{out}"
        );
        if warned {
            let line = out.lines().find(|l| l.contains(WARNING)).unwrap();
            assert!(line.contains("WARN"), "{line}");
            assert!(line.contains(&format!("{admin_host}:")), "{line}");
        }
    }
}
