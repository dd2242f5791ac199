//! Destinations beyond HTTP (issue 28), against real `nats-server`,
//! `rabbitmq-server` and `redis-server` started on loopback. For each:
//! every event arrives once with its headers (the signature verifying); a
//! broker that is down, then up, gets everything from the outbox; a broker
//! killed and restarted mid-run loses nothing; `ordering: session` holds
//! while a step fails and is retried; a refused (NATS), unroutable or nacked
//! (RabbitMQ) message is retried and dead-lettered as the policy says.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::nats::Nats;
use common::*;
use futures::StreamExt as _;
use serde_json::json;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WAIT: Duration = Duration::from_secs(15);

/// A stream bound to `importer.>`, and what it holds after `n` messages.
async fn stream(nats: &Nats) -> async_nats::jetstream::stream::Stream {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "IMPORTER".into(),
        subjects: vec!["importer.>".into()],
        ..Default::default()
    })
    .await
    .unwrap()
}

/// The stream's messages, once it holds `n` (at most `WAIT`).
async fn messages(
    stream: &mut async_nats::jetstream::stream::Stream,
    n: u64,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let held = stream.info().await.unwrap().state.messages;
        if held >= n {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{held} of {n} messages in the stream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut out = Vec::new();
    for seq in 1..=stream.info().await.unwrap().state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}

/// What `read` returns once it holds `n` items: read every 50 ms, for at
/// most `WAIT` (then a panic showing the last read).
async fn holding<T: std::fmt::Debug, F: std::future::Future<Output = Vec<T>>>(
    n: usize,
    read: impl Fn() -> F,
) -> Vec<T> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got = read().await;
        if got.len() >= n {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n}: {got:?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `taphook_deliveries_total` of `webhook` with `outcome`.
fn deliveries(webhook: &str, outcome: &str) -> String {
    format!("taphook_deliveries_total{{outcome=\"{outcome}\",webhook=\"{webhook}\"}}")
}

/// `taphook_delivery_attempts_total` of `webhook` with `status_class`.
fn attempts(webhook: &str, status_class: &str) -> String {
    format!(
        "taphook_delivery_attempts_total{{status_class=\"{status_class}\",webhook=\"{webhook}\"}}"
    )
}

fn nats_webhook(nats: &Nats, extra: &str) -> Vec<(&'static str, String)> {
    vec![(
        "hooks.yaml",
        format!(
            "webhooks:\n  - key: bus\n    url: nats://127.0.0.1:{}/importer.{{event_type}}\n    events: [\"*\"]\n{extra}",
            nats.port
        ),
    )]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_a_nats_stream_once_with_its_headers() {
    let nats = Nats::start();
    let mut stream = stream(&nats).await;
    let stack = Stack::with_rules(nats_webhook(
        &nats,
        &format!("    signing: {{ scheme: standard-webhooks, secrets: [{SECRET}] }}\n"),
    ))
    .await;
    let id = stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    stack.finish_session(id).await;
    let got = messages(&mut stream, 8).await;
    assert_eq!(got.len(), 8, "{}", stack.log());
    let mut subjects = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for m in &got {
        let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let uuid = body["uuid"].as_str().unwrap().to_string();
        let event_type = body["event_type"].as_str().unwrap().to_string();
        assert_eq!(m.subject.as_str(), format!("importer.{event_type}"));
        subjects.insert(event_type.clone());
        let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_string());
        assert_eq!(
            header("Nats-Msg-Id").as_deref(),
            Some(uuid.as_str()),
            "the event's UUID"
        );
        assert_eq!(header("content-type").as_deref(), Some("application/json"));
        // The Standard Webhooks signature verifies over the message.
        let mut headers = http::HeaderMap::new();
        for n in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            headers.insert(
                n,
                header(n).unwrap_or_else(|| panic!("{n}")).parse().unwrap(),
            );
        }
        standardwebhooks::Webhook::new(SECRET)
            .unwrap()
            .verify(&m.payload, &headers)
            .expect("the signature verifies");
        // The payload is the format's, as the catalog publishes it.
        assert_in_catalog(&stack, "oneschema", &event_type, &body);
        ids.insert(uuid);
    }
    assert_eq!(ids.len(), 8, "once each");
    assert_eq!(subjects.len(), 8);
    // The metrics say what the webhook is.
    assert_eq!(
        stack
            .metric("taphook_webhook_info{format=\"oneschema\",kind=\"nats\",webhook=\"bus\"}")
            .await,
        1.0
    );
    assert_eq!(
        stack
            .wait_metric(&deliveries("bus", "delivered"), 8.0)
            .await,
        8.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_no_stream_is_bound_to_gets_a_core_publish() {
    let nats = Nats::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = client.subscribe("plain.>").await.unwrap();
    client.flush().await.unwrap();
    let rules = vec![(
        "hooks.yaml",
        format!(
            "webhooks:\n  - key: plain\n    url: nats://127.0.0.1:{}/plain.{{webhook}}.{{event_type}}\n    events: [embed_initialized]\n",
            nats.port
        ),
    )];
    let stack = Stack::with_rules(rules).await;
    stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a message")
        .unwrap();
    assert_eq!(m.subject.as_str(), "plain.plain.embed_initialized");
    let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(body["event_type"], "embed_initialized");
    assert_eq!(
        m.headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_string()),
        body["uuid"].as_str().map(str::to_string)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_then_up_gets_everything_from_the_outbox() {
    let mut nats = Nats::start();
    let mut stream = stream(&nats).await;
    let stack = Stack::with_rules(nats_webhook(
        &nats,
        "    retry: { on: [error, timeout], max_retries: 100, backoff: [200ms] }\n    timeout: 1s\n",
    ))
    .await;
    nats.kill9();
    for _ in 0..3 {
        stack
            .create_embed(json!({"template_key": "contacts"}), false)
            .await;
    }
    // Attempts fail while NATS is down ...
    stack
        .wait_metric_at_least(&attempts("bus", "error"), 3.0)
        .await;
    // ... and once it is back (same store), every event arrives, once.
    nats.restart();
    let got = messages(&mut stream, 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: BTreeSet<String> = got
        .iter()
        .map(|m| m.headers.get("Nats-Msg-Id").unwrap().as_str().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        3,
        "nothing twice"
    );
    assert_eq!(
        stack
            .wait_metric(&deliveries("bus", "delivered"), 3.0)
            .await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ssrf_guard_applies_to_a_nats_host() {
    let nats = Nats::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = client.subscribe("importer.>").await.unwrap();
    client.flush().await.unwrap();
    let stack = Stack::start(Setup {
        rules: nats_webhook(&nats, "    events: [embed_initialized]\n")
            .into_iter()
            .map(|(n, t)| (n, t.replace("    events: [\"*\"]\n", "")))
            .collect(),
        allow_private_networks: Some("[]"),
        ..Default::default()
    })
    .await;
    stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    let dead = &deliveries("bus", "dead");
    let deadline = std::time::Instant::now() + WAIT;
    while stack
        .metric("taphook_delivery_refused_total{reason=\"private_address\",webhook=\"bus\"}")
        .await
        < 1.0
        && stack.metric(dead).await < 1.0
    {
        assert!(std::time::Instant::now() < deadline, "{}", stack.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sub.next())
            .await
            .is_err(),
        "nothing was published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_stream_refuses_is_retried_then_dead_lettered() {
    let nats = Nats::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    // Room for one message: the second is refused (a negative ack).
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "FULL".into(),
        subjects: vec!["importer.>".into()],
        max_messages: 1,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .unwrap();
    let stack = Stack::with_rules(nats_webhook(
        &nats,
        "    retry: { on: [error], max_retries: 2, backoff: [100ms] }\n",
    ))
    .await;
    for _ in 0..2 {
        stack
            .create_embed(json!({"template_key": "contacts"}), false)
            .await;
    }
    let dead = &deliveries("bus", "dead");
    assert_eq!(stack.wait_metric(dead, 1.0).await, 1.0, "{}", stack.log());
    let delivered = &deliveries("bus", "delivered");
    assert_eq!(stack.wait_metric(delivered, 1.0).await, 1.0);
    // The refused one: its first attempt and two retries.
    assert_eq!(stack.metric(&attempts("bus", "error")).await, 3.0);
}

// ---------------------------------------------------------------- RabbitMQ

/// A durable topic exchange `importer` with a durable queue `events`
/// bound to each of `keys` (declared again after a restart: the same).
async fn rabbit_queue(rabbit: &common::brokers::Rabbit, keys: &[&str]) -> lapin::Channel {
    use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let conn = lapin::Connection::connect(&rabbit.url(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        "importer".into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        "events".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    for key in keys {
        rabbit_bind(&ch, key).await;
    }
    std::mem::forget(conn);
    ch
}

async fn rabbit_bind(ch: &lapin::Channel, key: &str) {
    ch.queue_bind(
        "events".into(),
        "importer".into(),
        key.into(),
        lapin::options::QueueBindOptions::default(),
        lapin::types::FieldTable::default(),
    )
    .await
    .unwrap();
}

/// The queue's messages, once it holds `n`.
async fn rabbit_messages(ch: &lapin::Channel, n: usize) -> Vec<lapin::message::BasicGetMessage> {
    let deadline = std::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} messages",
            got.len()
        );
        match ch
            .basic_get(
                "events".into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            Some(m) => got.push(m),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    got
}

fn amqp_webhook(
    rabbit: &common::brokers::Rabbit,
    key: &str,
    extra: &str,
) -> Vec<(&'static str, String)> {
    vec![(
        "hooks.yaml",
        format!(
            "webhooks:\n  - key: rabbit\n    url: amqp://guest:guest@127.0.0.1:{}/%2f?exchange=importer&routing_key={key}\n    events: [\"*\"]\n{extra}",
            rabbit.port
        ),
    )]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_a_rabbitmq_queue_once_with_its_headers() {
    let rabbit = common::brokers::Rabbit::start();
    let ch = rabbit_queue(&rabbit, &["#"]).await;
    let stack = Stack::with_rules(amqp_webhook(
        &rabbit,
        "importer.{event_type}",
        &format!("    signing: {{ scheme: standard-webhooks, secrets: [{SECRET}] }}\n"),
    ))
    .await;
    let id = stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    stack.finish_session(id).await;
    let got = rabbit_messages(&ch, 8).await;
    let mut ids = BTreeSet::new();
    for m in &got {
        let body: serde_json::Value = serde_json::from_slice(&m.delivery.data).unwrap();
        let uuid = body["uuid"].as_str().unwrap().to_string();
        let event_type = body["event_type"].as_str().unwrap();
        assert_eq!(
            m.delivery.routing_key.as_str(),
            format!("importer.{event_type}")
        );
        let p = &m.delivery.properties;
        assert_eq!(
            p.message_id().as_ref().map(|s| s.as_str()),
            Some(uuid.as_str())
        );
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(*p.delivery_mode(), Some(2), "persistent");
        let headers = p.headers().as_ref().expect("headers");
        let header = |n: &str| match headers.inner().get(n) {
            Some(lapin::types::AMQPValue::LongString(s)) => s.to_string(),
            other => panic!("{n}: {other:?}"),
        };
        let mut h = http::HeaderMap::new();
        for n in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            h.insert(n, header(n).parse().unwrap());
        }
        standardwebhooks::Webhook::new(SECRET)
            .unwrap()
            .verify(&m.delivery.data, &h)
            .expect("the signature verifies");
        ids.insert(uuid);
    }
    assert_eq!(ids.len(), 8, "once each");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        ch.basic_get(
            "events".into(),
            lapin::options::BasicGetOptions { no_ack: true }
        )
        .await
        .unwrap()
        .is_none(),
        "nothing twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_message_is_retried_then_dead_lettered() {
    let rabbit = common::brokers::Rabbit::start();
    let _ch = rabbit_queue(&rabbit, &["#"]).await;
    // A direct exchange with no queue bound: every message is returned.
    let stack = Stack::with_rules(vec![(
        "hooks.yaml",
        format!(
            "webhooks:\n  - key: rabbit\n    url: amqp://guest:guest@127.0.0.1:{}/%2f?exchange=amq.direct&routing_key=nobody.{{event_type}}\n    events: [embed_initialized]\n    retry: {{ on: [error], max_retries: 2, backoff: [100ms] }}\n",
            rabbit.port
        ),
    )])
    .await;
    stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    let dead = &deliveries("rabbit", "dead");
    assert_eq!(stack.wait_metric(dead, 1.0).await, 1.0, "{}", stack.log());
    assert_eq!(stack.metric(&attempts("rabbit", "error")).await, 3.0);
}

/// A queue that is full and rejects publishes (`x-overflow:
/// reject-publish`): RabbitMQ nacks the second message, which is retried
/// and dead-lettered; the first is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_message_is_retried_then_dead_lettered() {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let rabbit = common::brokers::Rabbit::start();
    let conn = lapin::Connection::connect(&rabbit.url(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    ch.queue_declare("one".into(), Default::default(), args)
        .await
        .unwrap();
    // The default exchange routes by queue name.
    let stack = Stack::with_rules(vec![(
        "hooks.yaml",
        format!(
            "webhooks:\n  - key: rabbit\n    url: amqp://guest:guest@127.0.0.1:{}/%2f?exchange=&routing_key=one\n    events: [embed_initialized]\n    retry: {{ on: [error], max_retries: 2, backoff: [100ms] }}\n",
            rabbit.port
        ),
    )])
    .await;
    for _ in 0..2 {
        stack
            .create_embed(json!({"template_key": "contacts"}), false)
            .await;
    }
    let dead = &deliveries("rabbit", "dead");
    assert_eq!(stack.wait_metric(dead, 1.0).await, 1.0, "{}", stack.log());
    let delivered = &deliveries("rabbit", "delivered");
    assert_eq!(stack.metric(delivered).await, 1.0);
    assert_eq!(
        stack.metric(&attempts("rabbit", "error")).await,
        3.0,
        "the nacked one: its first attempt and two retries"
    );
    assert!(stack.log().contains("nack"), "the reason: {}", stack.log());
}

// ---------------------------------------------------------------- Redis

/// Webhook `stream` to `redis_server`, with `query` (the stream and
/// `maxlen`) and `extra` lines.
fn redis_webhook(
    redis_server: &common::brokers::Redis,
    query: &str,
    extra: &str,
) -> Vec<(&'static str, String)> {
    vec![(
        "hooks.yaml",
        format!(
            "webhooks:\n  - key: stream\n    url: redis://127.0.0.1:{}/0?{query}\n    events: [\"*\"]\n{extra}",
            redis_server.port
        ),
    )]
}

/// A stream's entries, on a new connection (servers restart in these
/// tests); none when Redis does not answer.
async fn xrange(url: &str, stream: &str) -> Vec<redis::streams::StreamId> {
    let client = redis::Client::open(url).unwrap();
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return Vec::new();
    };
    let got: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    got.ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_a_redis_stream_even_across_an_outage() {
    let mut redis_server = common::brokers::Redis::start();
    let stack = Stack::with_rules(redis_webhook(
        &redis_server,
        "stream=importer-{template_key}&maxlen=~1000",
        &format!("{PATIENT}    signing: {{ scheme: standard-webhooks, secrets: [{SECRET}] }}\n"),
    ))
    .await;
    let id = stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    stack.finish_session(id).await;
    // The stream's entries once it holds `n`.
    let url = redis_server.url();
    let entries = |n: usize| holding(n, || xrange(&url, "importer-contacts"));
    let got = entries(8).await;
    let mut ids = BTreeSet::new();
    for e in &got {
        let field = |n: &str| -> String { e.get(n).unwrap_or_else(|| panic!("{n}")) };
        let body: serde_json::Value = serde_json::from_str(&field("body")).unwrap();
        assert_eq!(
            field("id"),
            body["uuid"].as_str().unwrap(),
            "the event's UUID in the entry"
        );
        assert_eq!(field("content_type"), "application/json");
        let mut h = http::HeaderMap::new();
        for n in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            h.insert(n, field(&format!("header:{n}")).parse().unwrap());
        }
        standardwebhooks::Webhook::new(SECRET)
            .unwrap()
            .verify(field("body").as_bytes(), &h)
            .expect("the signature verifies");
        ids.insert(field("id"));
    }
    assert_eq!(ids.len(), 8);
    // Redis down: the attempts fail and wait in the outbox; back up
    // (empty, no persistence), the next session's events all arrive.
    redis_server.kill9();
    stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    stack
        .wait_metric_at_least(&attempts("stream", "error"), 1.0)
        .await;
    redis_server.restart();
    let got = entries(1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        stack
            .wait_metric(&deliveries("stream", "delivered"), 9.0)
            .await,
        9.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_session_holds_on_a_nats_destination() {
    let nats = Nats::start();
    let mut stream = stream(&nats).await;
    let stack = Stack::with_rules(nats_webhook(&nats, "    ordering: session\n")).await;
    // Two sessions' eight steps each, interleaved.
    let a = stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    let b = stack
        .create_embed(json!({"template_key": "orders"}), false)
        .await;
    tokio::join!(stack.finish_session(a), stack.finish_session(b));
    let got = messages(&mut stream, 16).await;
    let order = |session: u64| -> Vec<String> {
        got.iter()
            .map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap())
            .filter(|b| b["embed_id"] == json!(session))
            .map(|b| b["event_type"].as_str().unwrap().to_string())
            .collect()
    };
    let expected = taphook::demo::EVENT_TYPES;
    assert_eq!(order(a), expected, "session {a} in the stream's order");
    assert_eq!(order(b), expected, "session {b} in the stream's order");
}

// ------------------------------------- every destination: restart, ordering

/// What a restart test produces: six sessions, eight events each.
const SESSIONS: usize = 6;

/// A webhook that retries through an outage.
const PATIENT: &str =
    "    retry: { on: [error, timeout], max_retries: 200, backoff: [200ms] }\n    timeout: 2s\n";

/// Six sessions' events, with the broker killed (`kill -9`) and started
/// again on the same store once the first session has arrived: the rest
/// are produced while it is down and coming back. Returns the broker
/// when taphook says every event was delivered.
async fn run_across_a_restart<B: Send + 'static>(
    stack: &Stack,
    webhook: &str,
    broker: B,
    restart: fn(&mut B),
) -> B {
    let delivered = deliveries(webhook, "delivered");
    let produce = async {
        for i in 0..SESSIONS {
            let id = stack
                .create_embed(json!({"template_key": format!("t{i}")}), false)
                .await;
            stack.finish_session(id).await;
        }
    };
    let restarting = async {
        stack.wait_metric_at_least(&delivered, 8.0).await;
        tokio::task::spawn_blocking(move || {
            let mut broker = broker;
            restart(&mut broker);
            broker
        })
        .await
        .unwrap()
    };
    let ((), broker) = tokio::join!(produce, restarting);
    stack
        .wait_metric_at_least(&delivered, (SESSIONS * 8) as f64)
        .await;
    // The outage was in the run: attempts failed, and were retried.
    assert!(
        stack.metric(&attempts(webhook, "error")).await
            + stack.metric(&attempts(webhook, "timeout")).await
            >= 1.0,
        "no attempt failed: the restart missed the run"
    );
    broker
}

/// Every event of the six sessions is among `bodies`, each session's
/// eight steps; how many arrived twice (a publish whose acknowledgement
/// the restart lost is published again: at least once).
fn assert_nothing_lost(bodies: &[serde_json::Value]) -> usize {
    let uuids: BTreeSet<&str> = bodies.iter().filter_map(|b| b["uuid"].as_str()).collect();
    assert_eq!(uuids.len(), SESSIONS * 8, "every event arrived");
    let sessions: BTreeSet<String> = bodies.iter().map(|b| b["embed_id"].to_string()).collect();
    assert_eq!(sessions.len(), SESSIONS);
    for s in &sessions {
        let steps: BTreeSet<&str> = bodies
            .iter()
            .filter(|b| &b["embed_id"].to_string() == s)
            .filter_map(|b| b["event_type"].as_str())
            .collect();
        assert_eq!(steps.len(), 8, "session {s}'s eight steps");
    }
    bodies.len() - uuids.len()
}

fn restart_nats(n: &mut Nats) {
    n.kill9();
    n.restart();
}

fn restart_rabbit(r: &mut common::brokers::Rabbit) {
    r.kill9();
    r.restart();
}

fn restart_redis(r: &mut common::brokers::Redis) {
    r.kill9();
    r.restart();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_broker_restarted_mid_run_loses_nothing() {
    let nats = Nats::start();
    stream(&nats).await;
    let stack = Stack::with_rules(nats_webhook(&nats, PATIENT)).await;
    let nats = run_across_a_restart(&stack, "bus", nats, restart_nats).await;
    let mut stream = stream(&nats).await;
    let bodies: Vec<serde_json::Value> = messages(&mut stream, (SESSIONS * 8) as u64)
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    // JetStream drops a publish repeated within its window (`Nats-Msg-Id`).
    assert_eq!(assert_nothing_lost(&bodies), 0, "nothing twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_broker_restarted_mid_run_loses_nothing() {
    let rabbit = common::brokers::Rabbit::start();
    rabbit_queue(&rabbit, &["#"]).await;
    let stack = Stack::with_rules(amqp_webhook(&rabbit, "importer.{event_type}", PATIENT)).await;
    let rabbit = run_across_a_restart(&stack, "rabbit", rabbit, restart_rabbit).await;
    // The durable queue kept every persistent message it confirmed.
    let ch = rabbit_queue(&rabbit, &["#"]).await;
    let held = ch
        .queue_declare(
            "events".into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count() as usize;
    let bodies: Vec<serde_json::Value> = rabbit_messages(&ch, held)
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.delivery.data).unwrap())
        .collect();
    let twice = assert_nothing_lost(&bodies);
    eprintln!("{twice} message(s) published again after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_server_restarted_mid_run_loses_nothing() {
    let redis_server = common::brokers::Redis::durable();
    let stack = Stack::with_rules(redis_webhook(
        &redis_server,
        "stream=importer-events",
        PATIENT,
    ))
    .await;
    let redis_server = run_across_a_restart(&stack, "stream", redis_server, restart_redis).await;
    let bodies: Vec<serde_json::Value> = xrange(&redis_server.url(), "importer-events")
        .await
        .iter()
        .map(|e| serde_json::from_str(&e.get::<String>("body").unwrap()).unwrap())
        .collect();
    let twice = assert_nothing_lost(&bodies);
    eprintln!("{twice} entries written again after the restart");
}

/// A webhook that keeps a session's order and retries a failed step.
const ORDERED: &str =
    "    ordering: session\n    retry: { on: [error, timeout], max_retries: 200, backoff: [100ms] }\n";

/// The session's third step fails (the test arranged it) and is retried:
/// once `failing` attempts failed, only the first two steps arrived
/// (`arrived` says which, in order), the rest held behind the third.
async fn assert_held_behind_the_failure<F: std::future::Future<Output = Vec<String>>>(
    stack: &Stack,
    webhook: &str,
    arrived: impl Fn() -> F,
) {
    let failing = attempts(webhook, "error");
    stack.wait_metric_at_least(&failing, 3.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        arrived().await,
        taphook::demo::EVENT_TYPES[..2],
        "only the steps before the failing one; {}",
        stack.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_session_holds_on_nats_when_a_step_fails() {
    use async_nats::jetstream::stream::{Config, DiscardPolicy};
    let nats = Nats::start();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let steps = taphook::demo::EVENT_TYPES;
    let subject = |t: &str| format!("importer.{t}");
    // Every step's subject is bound to IMPORTER but the third's, bound to
    // a full stream that refuses it.
    let mut importer = js
        .create_stream(Config {
            name: "IMPORTER".into(),
            subjects: steps
                .iter()
                .filter(|t| **t != steps[2])
                .map(|t| subject(t))
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    js.create_stream(Config {
        name: "FULL".into(),
        subjects: vec![subject(steps[2])],
        max_messages: 1,
        discard: DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish(subject(steps[2]), "filler".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let stack = Stack::with_rules(nats_webhook(&nats, ORDERED)).await;
    let id = stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    stack.finish_session(id).await;
    let order = |got: Vec<async_nats::jetstream::message::StreamMessage>| -> Vec<String> {
        got.iter()
            .map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap())
            .map(|b| b["event_type"].as_str().unwrap().to_string())
            .collect()
    };
    assert_held_behind_the_failure(&stack, "bus", || {
        let mut s = importer.clone();
        async move { order(messages(&mut s, 0).await) }
    })
    .await;
    // The third step's subject moves to IMPORTER: it arrives, then the rest.
    js.delete_stream("FULL").await.unwrap();
    js.update_stream(Config {
        name: "IMPORTER".into(),
        subjects: steps.iter().map(|t| subject(t)).collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(order(messages(&mut importer, 8).await), steps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_session_holds_on_rabbitmq_when_a_step_fails() {
    let rabbit = common::brokers::Rabbit::start();
    let steps = taphook::demo::EVENT_TYPES;
    // Every step's routing key is bound but the third's: it is returned.
    let keys: Vec<String> = steps.iter().map(|t| format!("importer.{t}")).collect();
    let bound: Vec<&str> = keys
        .iter()
        .filter(|k| **k != keys[2])
        .map(String::as_str)
        .collect();
    let ch = rabbit_queue(&rabbit, &bound).await;
    let stack = Stack::with_rules(amqp_webhook(&rabbit, "importer.{event_type}", ORDERED)).await;
    let id = stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    stack.finish_session(id).await;
    let arrived = std::sync::Mutex::new(Vec::new());
    let drain = || async {
        while let Some(m) = ch
            .basic_get(
                "events".into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            let b: serde_json::Value = serde_json::from_slice(&m.delivery.data).unwrap();
            arrived
                .lock()
                .unwrap()
                .push(b["event_type"].as_str().unwrap().to_string());
        }
        arrived.lock().unwrap().clone()
    };
    assert_held_behind_the_failure(&stack, "rabbit", drain).await;
    rabbit_bind(&ch, &keys[2]).await;
    assert_eq!(holding(8, drain).await, steps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_session_holds_on_redis_when_a_step_fails() {
    let redis_server = common::brokers::Redis::start();
    let client = redis::Client::open(redis_server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let steps = taphook::demo::EVENT_TYPES;
    // One stream per step; the third's key holds a string: XADD fails
    // (WRONGTYPE). The server announces each append, in its order.
    let blocked = format!("importer-{}", steps[2]);
    let _: () = redis::cmd("SET")
        .arg(&blocked)
        .arg("in the way")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("__keyevent@0__:xadd").await.unwrap();
    let appended = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = appended.clone();
    tokio::spawn(async move {
        let mut messages = pubsub.on_message();
        while let Some(m) = messages.next().await {
            let key: String = m.get_payload().unwrap();
            log.lock()
                .unwrap()
                .push(key.trim_start_matches("importer-").to_string());
        }
    });
    let stack = Stack::with_rules(redis_webhook(
        &redis_server,
        "stream=importer-{event_type}",
        ORDERED,
    ))
    .await;
    let id = stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    stack.finish_session(id).await;
    let appended_now = || async { appended.lock().unwrap().clone() };
    assert_held_behind_the_failure(&stack, "stream", appended_now).await;
    let _: () = redis::cmd("DEL")
        .arg(&blocked)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(holding(8, appended_now).await, steps);
}

// ---------------------------------------------------------------- TLS

/// A stack whose SSRF guard allows 127.0.0.0/8 only (`localhost` is also
/// ::1, where the test brokers do not listen), trusting `ca` when given,
/// after one embed session was created (one `embed_initialized`).
async fn one_event_trusting(rules: Vec<(&str, String)>, ca: Option<&common::pki::Pki>) -> Stack {
    let config = ca
        .map(|pki| format!("delivery:\n  ca: {}\n", pki.ca_path()))
        .unwrap_or_default();
    let stack = Stack::start(Setup {
        rules,
        config: &config,
        allow_private_networks: Some("[127.0.0.0/8]"),
        ..Default::default()
    })
    .await;
    stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    stack
}

/// `amqps://` and `rediss://` to brokers whose certificates a private CA
/// signed for `localhost`: verified against `delivery.ca`, the socket at
/// the address the guard vetted; without the CA, refused (nothing sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_and_rediss_are_verified_against_the_delivery_ca() {
    let pki = common::pki::Pki::new("brokers");
    pki.leaf("server", &["localhost"], None);
    let rabbit = common::brokers::Rabbit::start_tls(&pki);
    let ch = rabbit_queue(&rabbit, &["#"]).await;
    let redis_server = common::brokers::Redis::start_tls(&pki, taphook::demo::free_port().unwrap());
    let rules = || {
        vec![(
            "hooks.yaml",
            format!(
                "webhooks:\n  - key: tls-rabbit\n    url: amqps://guest:guest@localhost:{}/%2f?exchange=importer&routing_key=importer.{{event_type}}\n    events: [embed_initialized]\n    retry: {{ on: [error], max_retries: 2, backoff: [100ms] }}\n  - key: tls-redis\n    url: rediss://localhost:{}/0?stream=importer-events\n    events: [embed_initialized]\n    retry: {{ on: [error], max_retries: 2, backoff: [100ms] }}\n",
                rabbit.tls_port.unwrap(),
                redis_server.tls_port().unwrap()
            ),
        )]
    };
    let verified = one_event_trusting(rules(), Some(&pki)).await;
    for webhook in ["tls-rabbit", "tls-redis"] {
        let delivered = deliveries(webhook, "delivered");
        assert_eq!(
            verified.wait_metric(&delivered, 1.0).await,
            1.0,
            "{webhook}: {}",
            verified.log()
        );
    }
    let got = rabbit_messages(&ch, 1).await;
    let body: serde_json::Value = serde_json::from_slice(&got[0].delivery.data).unwrap();
    assert_eq!(body["event_type"], "embed_initialized");
    let entries = xrange(&redis_server.url(), "importer-events").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].get::<String>("id").as_deref(),
        body["uuid"].as_str()
    );
    drop(verified);

    // Without the CA, the brokers' certificates are not trusted.
    let refused = one_event_trusting(rules(), None).await;
    for webhook in ["tls-rabbit", "tls-redis"] {
        let dead = deliveries(webhook, "dead");
        assert_eq!(refused.wait_metric(&dead, 1.0).await, 1.0, "{webhook}");
    }
    assert!(
        refused.log().contains("certificate") || refused.log().contains("UnknownIssuer"),
        "the log says why: {}",
        refused.log()
    );
    assert_eq!(
        xrange(&redis_server.url(), "importer-events").await.len(),
        1,
        "nothing more"
    );
}

/// A NATS server that requires TLS, its certificate from a private CA for
/// `localhost` only, though taphook dials 127.0.0.1: a `tls://`
/// destination is verified for `localhost` against `delivery.ca` and
/// delivered; without the CA, refused and nothing published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_over_tls_is_verified_against_the_delivery_ca() {
    let pki = common::pki::Pki::new("nats");
    pki.leaf("server", &["localhost"], None);
    let nats = Nats::start_tls(&pki);
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.path("ca.pem"))
        .require_tls(true)
        .connect(format!("tls://localhost:{}", nats.port))
        .await
        .unwrap();
    let mut sub = client.subscribe("importer.>").await.unwrap();
    client.flush().await.unwrap();
    let rules = || {
        vec![(
            "hooks.yaml",
            format!(
                "webhooks:\n  - key: bus\n    url: tls://localhost:{}/importer.{{event_type}}\n    events: [embed_initialized]\n    retry: {{ on: [error, timeout], max_retries: 1, backoff: [100ms] }}\n",
                nats.port
            ),
        )]
    };
    let verified = one_event_trusting(rules(), Some(&pki)).await;
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap_or_else(|_| panic!("nothing published: {}", verified.log()))
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(m.subject.as_str(), "importer.embed_initialized");
    assert_eq!(
        m.headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_string()),
        body["uuid"].as_str().map(str::to_string)
    );
    drop(verified);

    let refused = one_event_trusting(rules(), None).await;
    let dead = &deliveries("bus", "dead");
    assert_eq!(
        refused.wait_metric(dead, 1.0).await,
        1.0,
        "{}",
        refused.log()
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "nothing published without the CA"
    );
}

/// A destination's credentials come from the environment (`${VAR}` in the
/// rules) and reach no log, metric, API answer, catalog or console page;
/// a wrong one is an attempt's error that does not repeat it either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destinations_credentials_are_shown_nowhere() {
    const PASSWORD: &str = "nats-pw-5c81e0d2a7";
    const WRONG: &str = "wrong-pw-93b1f6c4e2";
    let nats = Nats::start_auth("taphook", PASSWORD);
    let client =
        async_nats::ConnectOptions::with_user_and_password("taphook".into(), PASSWORD.into())
            .connect(nats.url())
            .await
            .unwrap();
    let mut sub = client.subscribe("importer.>").await.unwrap();
    client.flush().await.unwrap();
    let stack = Stack::start(Setup {
        rules: vec![(
            "hooks.yaml",
            format!(
                "webhooks:\n  - key: bus\n    url: nats://taphook:${{BUS_PASSWORD}}@127.0.0.1:{0}/importer.{{event_type}}\n    events: [embed_initialized]\n  - key: wrong\n    url: nats://taphook:${{WRONG_PASSWORD}}@127.0.0.1:{0}/importer.{{event_type}}\n    events: [embed_initialized]\n",
                nats.port
            ),
        )],
        env: vec![("BUS_PASSWORD", PASSWORD.into()), ("WRONG_PASSWORD", WRONG.into())],
        config: "admin_token: dest-t0ken\n",
        ..Default::default()
    })
    .await;
    stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap_or_else(|_| panic!("nothing published: {}", stack.log()))
        .unwrap();
    assert_eq!(m.subject.as_str(), "importer.embed_initialized");
    let dead = &deliveries("wrong", "dead");
    assert_eq!(stack.wait_metric(dead, 1.0).await, 1.0, "{}", stack.log());
    let mut seen = vec![
        ("the log", stack.log()),
        ("the metrics", stack.metrics().await),
    ];
    // What the API answers (the console shows nothing else).
    for path in [
        "/v1/event-webhooks",
        "/v1/event-webhooks/bus",
        "/v1/event-webhooks/wrong/history",
        "/v1/deliveries?state=dead",
        "/v1/catalog/asyncapi.json",
    ] {
        let (status, body) = stack.api("dest-t0ken", "GET", path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        seen.push((path, body.to_string()));
    }
    // The dead delivery's attempts, with the broker's reason.
    let dead: serde_json::Value = serde_json::from_str(&seen[5].1).unwrap();
    let id = &dead["deliveries"][0]["id"];
    let id = id.as_str().map_or_else(|| id.to_string(), str::to_string);
    let (_, attempts) = stack
        .api("dest-t0ken", "GET", &format!("/v1/deliveries/{id}"), None)
        .await;
    assert!(
        attempts.to_string().contains("NATS"),
        "the attempt says why: {attempts}"
    );
    seen.push(("the attempts", attempts.to_string()));
    for (what, text) in &seen {
        for secret in [PASSWORD, WRONG] {
            assert!(!text.contains(secret), "{what} shows a password: {text}");
        }
    }
}
