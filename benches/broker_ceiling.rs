//! A broker's own ceiling for taphook's messages: a plain client loop
//! that publishes `N` event-sized messages the way taphook does (the same
//! client crate, headers, acknowledgement and concurrency), with nothing
//! of taphook's in the way. `benches/load/destinations.sh` runs it beside
//! taphook's drain to the same broker and prints the ratio.
//!
//! ```text
//! KIND=nats|amqp|redis URL=... N=20000 CONCURRENCY=16 \
//!   cargo bench --bench broker_ceiling
//! ```
//!
//! - `nats`: a JetStream publish with `Nats-Msg-Id` and `content-type`,
//!   each ack awaited (the stream `IMPORTER` on `importer.>` is made when
//!   missing); `URL` is the server's.
//! - `amqp`: a persistent, mandatory publish with `message_id`,
//!   `content_type` and a header, on one channel in confirm mode, each
//!   confirm awaited (exchange `importer`, queue `events` bound to `#`, both
//!   durable, made when missing).
//! - `redis`: `XADD importer-events * id .. content_type .. body ..` on one
//!   multiplexed connection, each reply awaited.
//!
//! `SETUP=1` only makes the stream, or the exchange and queue, and exits.
//! Prints one line: `<kind> <messages> <seconds> <messages/s>`. Without
//! `--bench` (as `cargo test --all-targets` runs it), a smoke run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;

/// What taphook sends for one `embed_initialized` (OneSchema's format).
const BODY: &str = r#"{"uuid":"event-6f1c2a9e-4b7d-4e21-9a53-0c8d7e5f1b2a","embed_id":"abc","environment_name":"Production","event_type":"embed_initialized","trigger_type":"user","data":{"template_key":"contacts","embed_id":"abc","session":"0123456789abcdef0123456789abcdef"},"created_at":1706112805.5}"#;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo test --all-targets` runs this without `--bench`: then a smoke
    // run (200 messages to a redis-server and a nats-server started here)
    // so the loop cannot rot unnoticed.
    if !std::env::args().any(|a| a == "--bench") {
        return smoke().await;
    }
    let kind = env("KIND", "nats");
    let url = std::env::var("URL").context("URL: the broker's URL")?;
    let n: usize = env("N", "20000").parse().context("N")?;
    let concurrency: usize = env("CONCURRENCY", "16").parse().context("CONCURRENCY")?;
    if std::env::var("SETUP").is_ok() {
        connect(&kind, &url).await?;
        return Ok(());
    }
    let secs = run(connect(&kind, &url).await?, n, concurrency).await?;
    println!("{kind} {n} {secs:.3} {:.0}", n as f64 / secs);
    Ok(())
}

/// The publisher of `kind`, its stream or queue made.
async fn connect(kind: &str, url: &str) -> anyhow::Result<Arc<dyn Publish>> {
    Ok(match kind {
        "nats" => Arc::new(Nats::connect(url).await?),
        "amqp" => Arc::new(Amqp::connect(url).await?),
        "redis" => Arc::new(Redis::connect(url).await?),
        other => anyhow::bail!("KIND={other}: nats, amqp or redis"),
    })
}

/// `n` acknowledged publishes, `concurrency` at a time: the seconds taken.
async fn run(publisher: Arc<dyn Publish>, n: usize, concurrency: usize) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (publisher, next) = (publisher.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                publisher.publish(format!("bench-{i:012}")).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// 200 messages to each of a redis-server and a nats-server on free
/// loopback ports (`make test` installs both).
async fn smoke() -> anyhow::Result<()> {
    let free = || -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let store = tempfile::tempdir()?;
    let (redis_port, nats_port) = (free()?, free()?);
    let servers = [
        std::process::Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("redis-server")?,
        std::process::Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &nats_port.to_string(),
                "-sd",
            ])
            .arg(store.path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("nats-server")?,
    ];
    let _servers = Children(servers);
    for (kind, url, port) in [
        (
            "redis",
            format!("redis://127.0.0.1:{redis_port}/0"),
            redis_port,
        ),
        ("nats", format!("nats://127.0.0.1:{nats_port}"), nats_port),
    ] {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "{kind} did not start");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        run(connect(kind, &url).await?, 200, 4).await?;
        println!("smoke: 200 acknowledged publishes to {kind}");
    }
    Ok(())
}

/// Children killed when dropped (an early return included).
struct Children([std::process::Child; 2]);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An acknowledged publish, or why not.
type Published<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send + 'a>>;

/// One acknowledged publish of [`BODY`] with message id `id`.
trait Publish: Send + Sync {
    fn publish(&self, id: String) -> Published<'_>;
}

struct Nats(async_nats::jetstream::Context);

impl Nats {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let js = async_nats::jetstream::new(async_nats::connect(url).await?);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "IMPORTER".into(),
            subjects: vec!["importer.>".into()],
            ..Default::default()
        })
        .await?;
        Ok(Self(js))
    }
}

impl Publish for Nats {
    fn publish(&self, id: String) -> Published<'_> {
        Box::pin(async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            headers.insert("content-type", "application/json");
            self.0
                .publish_with_headers("importer.embed_initialized", headers, BODY.into())
                .await?
                .await?;
            Ok(())
        })
    }
}

struct Amqp(lapin::Channel);

impl Amqp {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions};
        use lapin::types::FieldTable;
        let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        let durable = |durable| ExchangeDeclareOptions {
            durable,
            ..Default::default()
        };
        ch.exchange_declare(
            "importer".into(),
            lapin::ExchangeKind::Topic,
            durable(true),
            FieldTable::default(),
        )
        .await?;
        ch.queue_declare(
            "events".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        ch.queue_bind(
            "events".into(),
            "importer".into(),
            "#".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        // The connection lives as long as the process.
        std::mem::forget(conn);
        Ok(Self(ch))
    }
}

impl Publish for Amqp {
    fn publish(&self, id: String) -> Published<'_> {
        use lapin::types::{AMQPValue, FieldTable, LongString};
        Box::pin(async move {
            let mut headers = FieldTable::default();
            headers.insert(
                "content-type".into(),
                AMQPValue::LongString(LongString::from("application/json")),
            );
            let properties = lapin::BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(id.as_str().into())
                .with_content_type("application/json".into())
                .with_headers(headers);
            let confirm = self
                .0
                .basic_publish(
                    "importer".into(),
                    "importer.embed_initialized".into(),
                    lapin::options::BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    BODY.as_bytes(),
                    properties,
                )
                .await?
                .await?;
            anyhow::ensure!(
                matches!(confirm, lapin::Confirmation::Ack(None)),
                "not confirmed: {confirm:?}"
            );
            Ok(())
        })
    }
}

struct Redis(redis::aio::MultiplexedConnection);

impl Redis {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        Ok(Self(client.get_multiplexed_async_connection().await?))
    }
}

impl Publish for Redis {
    fn publish(&self, id: String) -> Published<'_> {
        Box::pin(async move {
            let mut conn = self.0.clone();
            let _: String = redis::cmd("XADD")
                .arg("importer-events")
                .arg("*")
                .arg("id")
                .arg(id)
                .arg("content_type")
                .arg("application/json")
                .arg("body")
                .arg(BODY)
                .query_async(&mut conn)
                .await?;
            Ok(())
        })
    }
}
