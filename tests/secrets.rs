//! Secrets never leave taphook: a full run with every kind of secret
//! (the admin token, a webhook's Basic auth secret, credentials and a
//! token in webhook URLs, Standard Webhooks signing keys, the JWT HS256
//! secret, JWTs in requests and sessions), logging at debug (taphook at
//! trace), retries, a dead letter and a failed rules reload; then the
//! process's stdout and stderr, `/metrics`, every admin API answer and
//! `taphook check` are searched for each secret.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const ADMIN_TOKEN: &str = "adm1n-T0ken-zq7Hd2";
const BASIC_SECRET: &str = "b4sic-S3cret-Kp9wX1";
const URL_USER: &str = "hookuser";
const URL_PASSWORD: &str = "urlP4ss-Wd8fQ3";
const URL_QUERY_TOKEN: &str = "qu3ryT0ken-Lm5vB7";
const DEAD_PASSWORD: &str = "deadP4ss-Rt6yU2";
const DEAD_QUERY_TOKEN: &str = "deadT0ken-Hn3jK8";
const API_SECRET: &str = "ap1-S3cret-Gy4tE6";
const API_URL_PASSWORD: &str = "ap1UrlP4ss-Cv2nM5";
const API_NEW_SECRET: &str = "ap1-N3wSecret-Qa8sD4";
const JWT_HS256_SECRET: &str = "jwtHS256-S3cret-Zx1cV9";
/// A secret written as a YAML number, refused by a reload.
const NUMERIC_SECRET: &str = "424242424242";
/// The key material of the signing secrets, and the secrets themselves.
const SIGNING_KEY: &str = "signing-key-material-Jb7";
const SIGNING_KEY_API: &str = "api-signing-key-material-Py3";

fn whsec(key: &str) -> String {
    format!("whsec_{}", STANDARD.encode(key))
}

/// An HS256 JWT signed with `secret`.
fn jwt(secret: &str, claims: Value) -> String {
    let part = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let signing_input = format!(
        "{}.{}",
        part(json!({"alg": "HS256", "typ": "JWT"})),
        part(claims)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// Every string that must not appear anywhere taphook shows.
fn secrets(jwts: &[&str]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vec![
        ("admin token".into(), ADMIN_TOKEN.into()),
        ("webhook secret".into(), BASIC_SECRET.into()),
        ("URL password".into(), URL_PASSWORD.into()),
        ("URL query token".into(), URL_QUERY_TOKEN.into()),
        ("dead URL password".into(), DEAD_PASSWORD.into()),
        ("dead URL query token".into(), DEAD_QUERY_TOKEN.into()),
        ("API webhook secret".into(), API_SECRET.into()),
        ("API URL password".into(), API_URL_PASSWORD.into()),
        ("API new secret".into(), API_NEW_SECRET.into()),
        ("JWT HS256 secret".into(), JWT_HS256_SECRET.into()),
        ("numeric secret".into(), NUMERIC_SECRET.into()),
        ("signing key".into(), SIGNING_KEY.into()),
        ("signing secret".into(), whsec(SIGNING_KEY)),
        ("API signing key".into(), SIGNING_KEY_API.into()),
        ("API signing secret".into(), whsec(SIGNING_KEY_API)),
        (
            "Basic auth header (secret)".into(),
            STANDARD.encode(format!(":{BASIC_SECRET}")),
        ),
        (
            "Basic auth header (URL)".into(),
            STANDARD.encode(format!("{URL_USER}:{URL_PASSWORD}")),
        ),
    ];
    for (i, t) in jwts.iter().enumerate() {
        out.push((format!("JWT {i}"), t.to_string()));
        // The signature alone is enough to replay nothing, but a whole
        // token is recognised by it.
        let signature = t.rsplit('.').next().unwrap();
        out.push((format!("JWT {i} signature"), signature.to_string()));
    }
    out
}

fn rules(dead_port: u16) -> Vec<(&'static str, String)> {
    let signing = whsec(SIGNING_KEY);
    vec![(
        "hooks.yaml",
        format!(
            r#"webhooks:
  - key: basic
    url: http://{URL_USER}:{URL_PASSWORD}@{{receiver_addr}}/hooks/basic?token={URL_QUERY_TOKEN}
    events: ["*"]
    secret: {BASIC_SECRET}
    signing: {{ scheme: standard-webhooks, secrets: [{signing}] }}
    retry: {{ on: [500, timeout], max_retries: 2, backoff: [200ms] }}
  - key: dromo-signed
    url: {{receiver}}/hooks/dromo
    format: dromo
    events: [import_completed, headless_import_needs_review, headless_import_failed]
    signing: {{ scheme: standard-webhooks, secrets: [{signing}] }}
    retry: {{ on: [429], max_retries: 2, backoff: [200ms] }}
  - key: unreachable
    url: http://deaduser:{DEAD_PASSWORD}@127.0.0.1:{dead_port}/x?token={DEAD_QUERY_TOKEN}
    events: [embed_initialized]
    secret: {BASIC_SECRET}
    retry: {{ on: [error], max_retries: 1, backoff: [100ms] }}
"#
        ),
    )]
}

/// An admin API call; the status and the body as text.
async fn call(stack: &Stack, token: &str, method: &str, path: &str, body: Option<Value>) -> String {
    let mut req = stack
        .client
        .request(
            method.parse().unwrap(),
            format!("http://{}{path}", stack.admin),
        )
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = format!("{:?}", resp.headers());
    format!(
        "{method} {path} -> {status} {headers}\n{}\n",
        resp.text().await.unwrap()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_logs_metrics_or_the_admin_api() {
    let dead_port = taphook::demo::free_port().unwrap();
    let config = format!(
        "admin_token: {ADMIN_TOKEN}\njwt:\n  hs256_secret: {JWT_HS256_SECRET}\ndelivery:\n  timeout: 2s\n"
    );
    let stack = Stack::start(Setup {
        rules: rules(dead_port),
        config: &config,
        log_filter: Some("debug,taphook=trace"),
        ..Default::default()
    })
    .await;
    // Each receiver fails once, so retries get logged.
    stack.receiver.script("/hooks/basic", &[Reply::Status(500)]);
    stack.receiver.script("/hooks/dromo", &[Reply::Status(429)]);
    let mut shown = String::new();

    // A webhook created through the API, with credentials in its URL, a
    // secret and a signing key; then its secret is changed.
    let api_url = format!(
        "http://apiuser:{API_URL_PASSWORD}@{}/hooks/api?token={URL_QUERY_TOKEN}",
        stack.receiver.addr
    );
    shown += &call(
        &stack,
        ADMIN_TOKEN,
        "POST",
        "/v1/event-webhooks",
        Some(
            json!({"webhook_key": "api-hook", "url": api_url, "events": ["embed_initialized"],
            "secret_key": API_SECRET,
            "signing": {"scheme": "standard-webhooks", "secrets": [whsec(SIGNING_KEY_API)]}}),
        ),
    )
    .await;
    shown += &call(
        &stack,
        ADMIN_TOKEN,
        "PUT",
        "/v1/event-webhooks/api-hook",
        Some(json!({"secret_key": API_NEW_SECRET})),
    )
    .await;
    // Invalid changes carrying secrets: the 422 must not echo them.
    shown += &call(
        &stack,
        ADMIN_TOKEN,
        "POST",
        "/v1/event-webhooks",
        Some(
            json!({"webhook_key": "bad-1", "url": api_url, "events": ["embed_initialized"],
            "secret_key": NUMERIC_SECRET.parse::<u64>().unwrap()}),
        ),
    )
    .await;
    shown += &call(
        &stack,
        ADMIN_TOKEN,
        "POST",
        "/v1/event-webhooks",
        Some(
            json!({"webhook_key": "bad-2", "url": api_url, "events": ["nope"],
            "secret_key": API_SECRET}),
        ),
    )
    .await;
    // The file the API wrote holds the secret, so only taphook's user
    // may read it.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let file = stack.rules_dir().join("event-webhooks/api-hook.json");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{}: mode {mode:o}", file.display());
    }
    // Wrong tokens.
    shown += &call(&stack, "not-the-token", "GET", "/v1/event-webhooks", None).await;
    shown += &call(
        &stack,
        &format!("{ADMIN_TOKEN}x"),
        "GET",
        "/v1/event-webhooks",
        None,
    )
    .await;

    // A OneSchema session whose requests carry a JWT, and whose embed
    // remembers another one.
    let bearer = jwt(
        JWT_HS256_SECRET,
        json!({"sub": "user-1", "org": "acme", "iat": 1}),
    );
    let embed_jwt = jwt(
        JWT_HS256_SECRET,
        json!({"sub": "embed-user", "org": "acme", "iat": 2}),
    );
    let r = stack
        .client
        .post(stack.url("/v1/embeds"))
        .bearer_auth(&bearer)
        .json(&json!({"template_key": "contacts", "embed_user_jwt": embed_jwt}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().await.unwrap()["id"].as_u64().unwrap();
    for step in ["set-header", "map", "import"] {
        let r = stack
            .client
            .post(stack.url(&format!("/v1/embeds/{id}/{step}")))
            .bearer_auth(&bearer)
            .json(&json!({"index": 0}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{step}: {}", r.status());
    }
    // A Dromo headless import, polled to its end, with the JWT too.
    let r = stack
        .client
        .post(stack.url("/api/v1/headless/imports/"))
        .bearer_auth(&bearer)
        .json(
            &json!({"schema_id": "schema-1", "original_filename": "contacts.csv",
            "user": {"id": "user-123", "name": "Ada", "email": "ada@example.com"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let import = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = stack
        .client
        .put(stack.url(&format!("/api/v1/headless/imports/{import}/upload")))
        .bearer_auth(&bearer)
        .body("name,email\nAda,ada@example.com\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..3 {
        let r = stack
            .client
            .get(stack.url(&format!("/api/v1/headless/imports/{import}/")))
            .bearer_auth(&bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    // Every delivery settles: retried ones delivered, the unreachable
    // one dead.
    for (outcome, webhook) in [
        ("dead", "unreachable"),
        ("delivered", "dromo-signed"),
        ("delivered", "api-hook"),
    ] {
        let metric =
            format!(r#"taphook_deliveries_total{{outcome="{outcome}",webhook="{webhook}"}}"#);
        assert_eq!(
            stack.wait_metric(&metric, 1.0).await,
            1.0,
            "{}",
            stack.log()
        );
    }
    assert!(
        stack
            .wait_metric(
                r#"taphook_deliveries_total{outcome="delivered",webhook="basic"}"#,
                4.0
            )
            .await
            >= 4.0,
        "{}",
        stack.log()
    );
    // The signed, authenticated requests did carry the secrets: the
    // search below would find them if taphook showed what it sends.
    let basic = stack.receiver.received_on("/hooks/basic");
    assert!(basic.len() >= 5, "one failure and its retry at least");
    assert!(basic[0].header("webhook-signature").is_some());
    assert!(basic[0].header("authorization").is_some());

    // A rules reload that fails on a secret written as a number.
    std::fs::write(
        stack.rules_dir().join("broken.yaml"),
        format!(
            "webhooks:\n  - key: numeric\n    url: http://127.0.0.1:1/n\n    events: [\"*\"]\n    secret: {NUMERIC_SECRET}\n"
        ),
    )
    .unwrap();
    assert_eq!(
        stack
            .wait_metric(r#"taphook_rules_reloads_total{result="error"}"#, 1.0)
            .await,
        1.0,
        "{}",
        stack.log()
    );
    std::fs::remove_file(stack.rules_dir().join("broken.yaml")).unwrap();

    // What the admin API shows.
    for path in [
        "/v1/event-webhooks".to_string(),
        "/v1/event-webhooks/basic".to_string(),
        "/v1/event-webhooks/api-hook".to_string(),
        "/v1/event-webhooks/unreachable".to_string(),
        format!("/v1/embeds/{id}/events"),
        "/v1/deliveries?state=delivered&limit=1000".to_string(),
        "/v1/deliveries?state=dead".to_string(),
        "/v1/deliveries?state=pending".to_string(),
        "/v1/deliveries?state=failed".to_string(),
    ] {
        shown += &call(&stack, ADMIN_TOKEN, "GET", &path, None).await;
    }
    let (_, all) = stack
        .api(
            ADMIN_TOKEN,
            "GET",
            "/v1/deliveries?state=delivered&limit=1000",
            None,
        )
        .await;
    let (_, dead) = stack
        .api(ADMIN_TOKEN, "GET", "/v1/deliveries?state=dead", None)
        .await;
    let ids: Vec<i64> = all["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .chain(dead["deliveries"].as_array().unwrap())
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert!(ids.len() >= 8, "{all} {dead}");
    for id in ids {
        shown += &call(
            &stack,
            ADMIN_TOKEN,
            "GET",
            &format!("/v1/deliveries/{id}"),
            None,
        )
        .await;
    }
    // The events API shows the session's JWT masked.
    let (_, events) = stack
        .api(ADMIN_TOKEN, "GET", &format!("/v1/embeds/{id}/events"), None)
        .await;
    let first = &events["events"][0];
    assert_eq!(first["event_type"], "embed_initialized", "{events}");
    assert_eq!(first["embed_jwt"], "********", "{events}");
    // The webhooks, with their secrets masked and URLs stripped.
    let (_, basic_view) = stack
        .api(ADMIN_TOKEN, "GET", "/v1/event-webhooks/basic", None)
        .await;
    assert_eq!(basic_view["secret_key"], "********");
    assert_eq!(basic_view["signed"], true);
    assert_eq!(
        basic_view["url"],
        format!("http://{}/hooks/basic?…", stack.receiver.addr)
    );
    let (_, api_view) = stack
        .api(ADMIN_TOKEN, "GET", "/v1/event-webhooks/api-hook", None)
        .await;
    assert_eq!(api_view["secret_key"], "********");

    let metrics = stack.metrics().await;
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_taphook"))
        .args(["check", "--config"])
        .arg(stack.dir.path().join("taphook.yaml"))
        .output()
        .unwrap();
    let check = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.starts_with("ok:"), "{check}");

    // Let the last log lines be written, then read the log.
    settle(Duration::from_millis(300)).await;
    let log = stack.log();
    assert!(log.contains("attempt failed; retrying"), "{log}");
    assert!(log.contains("dead letter"), "{log}");
    assert!(log.contains("rules reload failed"), "{log}");
    assert!(log.contains("DEBUG"), "debug logging was on");

    let mut leaks = Vec::new();
    for (what, secret) in secrets(&[&bearer, &embed_jwt]) {
        for (place, text) in [
            ("the log", &log),
            ("/metrics", &metrics),
            ("the admin API", &shown),
            ("taphook check", &check),
        ] {
            if let Some(at) = text.find(&secret) {
                let from = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let to = text[at..].find('\n').map_or(text.len(), |i| at + i);
                leaks.push(format!("{what} in {place}: {}", &text[from..to]));
            }
        }
    }
    assert!(leaks.is_empty(), "leaks:\n{}", leaks.join("\n"));
}

/// Config errors never echo a secret's value, even a malformed one.
#[test]
fn config_errors_do_not_echo_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    for (config, secret, line) in [
        (
            format!("admin_token: {NUMERIC_SECRET}\n"),
            NUMERIC_SECRET,
            3,
        ),
        (
            format!("jwt:\n  hs256_secret: [{JWT_HS256_SECRET}]\n"),
            JWT_HS256_SECRET,
            4,
        ),
        (
            format!("admin_token: {{{ADMIN_TOKEN}: 1}}\n"),
            ADMIN_TOKEN,
            3,
        ),
    ] {
        let path = dir.path().join("taphook.yaml");
        std::fs::write(
            &path,
            format!("upstream: http://127.0.0.1:9000\nrules_dir: rules\n{config}"),
        )
        .unwrap();
        for args in [vec!["check", "--config"], vec!["run", "--config"]] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_taphook"))
                .args(&args)
                .arg(&path)
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.status.code(), Some(1), "{args:?} {config}: {text}");
            assert!(
                text.contains(&format!("taphook.yaml:{line}: ")),
                "{args:?}: {text}"
            );
            assert!(!text.contains(secret), "{args:?} echoes the secret: {text}");
        }
    }
}
