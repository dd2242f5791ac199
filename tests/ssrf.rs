//! The SSRF guard end to end: with the default config a webhook URL that
//! is, or resolves to, a loopback address is refused (nothing reaches the
//! receiver, the refusal is counted, recorded as the attempt's outcome and
//! logged without the URL's secrets), and nothing is lost: once the
//! allow-list covers the address, the delivery goes out.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const TOKEN: &str = "t0k";
const PASSWORD: &str = "pw-ssrf-3c1d9e";
const QUERY_TOKEN: &str = "qt-ssrf-8f27ab";

/// A route that turns `GET /_fixtures/empty?i=N` into a `ping` event,
/// and one webhook for it at `url`.
fn ping_rules(hooks: &[(&str, &str)]) -> Vec<(&'static str, String)> {
    let mut text = "routes:\n  - name: ping\n    event: ping\n    method: GET\n    path: /_fixtures/empty\n    dedup_key: [\"ping\", \"$query.i\"]\n    data:\n      i: $query.i\nwebhooks:\n".to_string();
    for (key, url) in hooks {
        text.push_str(&format!(
            "  - key: {key}\n    url: \"{url}\"\n    events: [ping]\n"
        ));
    }
    vec![("ping.yaml", text)]
}

async fn start(hooks: &[(&str, &str)], allow: &str) -> Stack {
    Stack::start(Setup {
        rules: ping_rules(hooks),
        config: &format!("admin_token: {TOKEN}\n"),
        allow_private_networks: Some(allow),
        log_filter: Some("debug,taphook=trace"),
        ..Default::default()
    })
    .await
}

fn refused_metric(key: &str, reason: &str) -> String {
    format!("taphook_delivery_refused_total{{reason=\"{reason}\",webhook=\"{key}\"}}")
}

/// The webhook's one dead delivery (an error is final under the default
/// retry policy) with its attempts, once it is there.
async fn dead_delivery(stack: &Stack, key: &str) -> (Value, Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = stack
            .api(
                TOKEN,
                "GET",
                &format!("/v1/deliveries?state=dead&webhook={key}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        if let Some(row) = body["deliveries"].as_array().and_then(|r| r.first()) {
            let id = row["id"].as_i64().unwrap();
            let (_, detail) = stack
                .api(TOKEN, "GET", &format!("/v1/deliveries/{id}"), None)
                .await;
            let attempts = detail["attempts"].as_array().cloned().unwrap_or_default();
            return (row.clone(), attempts);
        }
        assert!(
            Instant::now() < deadline,
            "no dead delivery for {key}:\n{}",
            stack.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The log without terminal colour codes.
fn plain_log(stack: &Stack) -> String {
    let log = stack.log();
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Asserts a refused delivery of `key`: nothing received, counted, the
/// attempt's outcome says why (and contains `why`).
async fn assert_refused(stack: &Stack, key: &str, why: &str) {
    assert_eq!(
        stack
            .wait_metric(&refused_metric(key, "private_address"), 1.0)
            .await,
        1.0,
        "{}",
        stack.log()
    );
    let (row, attempts) = dead_delivery(stack, key).await;
    let outcome = attempts[0]["outcome"].as_str().unwrap_or_default();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert!(
        outcome.starts_with("error: refused by the SSRF guard: ") && outcome.contains(why),
        "{outcome}"
    );
    assert_eq!(row["last_status"], outcome, "{row}");
    assert_eq!(
        stack
            .metric(&format!(
                "taphook_delivery_attempts_total{{status_class=\"error\",webhook=\"{key}\"}}"
            ))
            .await,
        1.0
    );
    assert_eq!(stack.metric(&refused_metric(key, "scheme")).await, 0.0);
    assert_eq!(
        stack.metric(&refused_metric(key, "private_address")).await,
        1.0
    );
    assert!(
        stack.receiver.received().is_empty(),
        "the receiver got {:?}",
        stack.receiver.received()
    );
}

/// (a) A literal loopback address, with credentials and a token in the
/// URL, under the default config: refused, counted, recorded and logged
/// (webhook and host, no secret); after the allow-list is set and taphook
/// restarted, the dead delivery is retried and arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_receiver_is_refused_by_default_and_kept_for_later() {
    let url = format!("http://hook:{PASSWORD}@{{receiver_addr}}/hooks/a?token={QUERY_TOKEN}");
    let mut stack = start(&[("a", &url)], "[]").await;
    stack.ping(1).await;
    assert_refused(
        &stack,
        "a",
        "127.0.0.1 is a refused address (loopback; not in delivery.allow_private_networks)",
    )
    .await;
    settle(Duration::from_millis(300)).await;
    assert!(stack.receiver.received().is_empty());

    let log = plain_log(&stack);
    let line = log
        .lines()
        .find(|l| l.contains("delivery refused by the SSRF guard"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("webhook=a"), "{line}");
    assert!(line.contains("host=127.0.0.1"), "{line}");
    assert!(line.contains("reason=\"private_address\""), "{line}");
    for secret in [PASSWORD, QUERY_TOKEN] {
        assert!(!log.contains(secret), "the log shows {secret}:\n{log}");
    }

    // Fix the config, restart, retry the dead delivery: it arrives.
    let (row, _) = dead_delivery(&stack, "a").await;
    let path = stack.dir.path().join("taphook.yaml");
    let config = std::fs::read_to_string(&path).unwrap();
    let fixed = config.replace(
        "allow_private_networks: []",
        "allow_private_networks: [127.0.0.0/8]",
    );
    assert_ne!(config, fixed);
    std::fs::write(&path, fixed).unwrap();
    stack.restart().await;
    let id = row["id"].as_i64().unwrap();
    let (status, _) = stack
        .api(TOKEN, "POST", &format!("/v1/deliveries/{id}/retry"), None)
        .await;
    assert_eq!(status, 202);
    let got = stack
        .receiver
        .wait_for("/hooks/a", 1, Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), 1, "{}", stack.log());
    assert_eq!(got[0].json()["data"]["i"], "1");
}

/// (b) The same receiver, by address and by name, with the allow-list:
/// delivered. `localhost` may also resolve to ::1, which 127.0.0.0/8
/// does not cover: that address is dropped and 127.0.0.1 is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allow_list_lets_a_loopback_receiver_through() {
    let stack = start(
        &[
            ("literal", "{receiver}/hooks/literal"),
            ("named", "http://localhost:{receiver_port}/hooks/named"),
        ],
        "[127.0.0.0/8]",
    )
    .await;
    stack.ping(1).await;
    for path in ["/hooks/literal", "/hooks/named"] {
        let got = stack
            .receiver
            .wait_for(path, 1, Duration::from_secs(10))
            .await;
        assert_eq!(got.len(), 1, "{path}:\n{}", stack.log());
    }
    for key in ["literal", "named"] {
        assert_eq!(
            stack
                .wait_metric(
                    &format!("taphook_deliveries_total{{outcome=\"delivered\",webhook=\"{key}\"}}"),
                    1.0
                )
                .await,
            1.0
        );
        assert_eq!(
            stack.metric(&refused_metric(key, "private_address")).await,
            0.0
        );
    }
}

/// (c) A name that resolves to loopback (the DNS-rebinding shape: the
/// check is on the resolved address, the one connected to) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_loopback_is_refused() {
    let stack = start(
        &[("named", "http://localhost:{receiver_port}/hooks/named")],
        "[]",
    )
    .await;
    stack.ping(1).await;
    assert_refused(
        &stack,
        "named",
        "localhost resolved only to refused addresses: 127.0.0.1 (loopback)",
    )
    .await;
    let log = plain_log(&stack);
    assert!(
        log.lines()
            .any(|l| l.contains("delivery refused by the SSRF guard")
                && l.contains("webhook=named")
                && l.contains("host=localhost")),
        "{log}"
    );
}

/// (d) Loopback written as an IPv4-mapped IPv6 literal is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_mapped_loopback_literal_is_refused() {
    let stack = start(
        &[(
            "mapped",
            "http://[::ffff:127.0.0.1]:{receiver_port}/hooks/mapped",
        )],
        "[]",
    )
    .await;
    stack.ping(1).await;
    assert_refused(
        &stack,
        "mapped",
        "::ffff:127.0.0.1 is a refused address (IPv4-mapped loopback;",
    )
    .await;
}
