//! Redis Streams destinations:
//! `redis://[:password@]host[:6379]/0?stream=importer-events&maxlen=~1000000`
//! (`rediss://` for TLS).
//! Each attempt appends one entry (`XADD`, with `MAXLEN ~ n` when given):
//! `id` (the message id: the event's UUID), `content_type`, `body`, and one
//! `header:<name>` field per header (the signature, `traceparent`). The
//! entry is written when Redis answers with its id; no answer is a failed
//! attempt. Redis has no dedup of its own: a receiver dedups on `id`.
//!
//! A connection is multiplexed, kept while it works and made again after a
//! failed attempt: each (re)connection goes through the SSRF guard. (The
//! crate's connection manager reconnects by itself, resolving the name
//! again past the guard.)

use std::net::SocketAddr;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::destination::{self, acknowledged, within, Message, Pool};
use super::guard::Guard;
use super::retry::Attempt;
use crate::rules::model::Webhook;

/// Checks a `redis://` URL as written: a `stream` (placeholders allowed),
/// an optional `maxlen` (`n` or `~n`), the database in the path.
pub fn check_url(url: &reqwest::Url) -> Result<(), String> {
    for (k, _) in url.query_pairs() {
        if !matches!(&*k, "stream" | "maxlen") {
            return Err(format!("unknown parameter `{k}` (stream, maxlen)"));
        }
    }
    let Some(stream) = destination::param(url, "stream") else {
        return Err("a stream is needed: redis://host:6379/0?stream=importer-events".into());
    };
    destination::check_template("stream", &stream, &[])?;
    if let Some(m) = destination::param(url, "maxlen") {
        maxlen(&m).ok_or_else(|| format!("maxlen `{m}`: a number, or ~number"))?;
    }
    let db = destination::path(url);
    if !db.is_empty() && db.parse::<i64>().is_err() {
        return Err(format!("the path is the database number, not `{db}`"));
    }
    Ok(())
}

/// `~n` (approximate) or `n`.
fn maxlen(text: &str) -> Option<(bool, usize)> {
    match text.strip_prefix('~') {
        Some(n) => n.trim().parse().ok().map(|n| (true, n)),
        None => text.trim().parse().ok().map(|n| (false, n)),
    }
}

/// The stream's template.
pub fn target(url: &reqwest::Url) -> String {
    destination::param(url, "stream").unwrap_or_default()
}

/// The connections to Redis.
pub struct Publishers {
    pool: Pool<MultiplexedConnection>,
    /// `delivery.ca`: for `rediss://`, the only CA trusted when set (the
    /// client's rule), else the system's roots.
    ca: Option<destination::Ca>,
}

impl Publishers {
    pub fn new(ca: Option<destination::Ca>) -> Self {
        Self {
            pool: Pool::default(),
            ca,
        }
    }

    pub async fn publish(
        &self,
        guard: &Guard,
        webhook: &Webhook,
        message: Message<'_>,
        timeout: Duration,
    ) -> Attempt {
        let key = Pool::<MultiplexedConnection>::key(&webhook.url);
        let mut conn = match self.connection(guard, webhook, &key, timeout).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let cmd = xadd(&webhook.url, &message);
        let attempt = within(timeout, async move {
            match cmd.query_async::<String>(&mut conn).await {
                Ok(_) => acknowledged(),
                Err(e) => Attempt::Error(format!("Redis XADD: {e}")),
            }
        })
        .await;
        self.pool.keep_if_acknowledged(&key, attempt)
    }

    async fn connection(
        &self,
        guard: &Guard,
        webhook: &Webhook,
        key: &str,
        timeout: Duration,
    ) -> Result<MultiplexedConnection, Attempt> {
        if let Some(c) = self.pool.get(key, |_| true) {
            return Ok(c);
        }
        let addr = destination::vetted(guard, webhook).await?;
        let url = &webhook.url;
        let host = url.host_str().unwrap_or_default().to_string();
        let client = self
            .client(url, &host, addr.port())
            .map_err(|e| Attempt::Error(format!("Redis at {host}: {e}")))?;
        // The name resolves to the vetted address only.
        let config = redis::AsyncConnectionConfig::new()
            .set_dns_resolver(Pinned(addr))
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let c = destination::connect(
            "Redis",
            &host,
            timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await?;
        self.pool.put(key.to_string(), c.clone());
        Ok(c)
    }

    /// A client for `url`'s database and credentials, TLS for `rediss://`.
    fn client(
        &self,
        url: &reqwest::Url,
        host: &str,
        port: u16,
    ) -> redis::RedisResult<redis::Client> {
        let (user, pass) = destination::credentials(url);
        let db = destination::path(url).parse::<i64>().unwrap_or(0);
        let mut settings = redis::RedisConnectionInfo::default().set_db(db);
        if !user.is_empty() {
            settings = settings.set_username(user);
        }
        if let Some(p) = pass {
            settings = settings.set_password(p);
        }
        let tls = url.scheme() == "rediss";
        let addr = if tls {
            redis::ConnectionAddr::TcpTls {
                host: host.to_string(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            redis::ConnectionAddr::Tcp(host.to_string(), port)
        };
        let info =
            redis::IntoConnectionInfo::into_connection_info(addr)?.set_redis_settings(settings);
        match (&self.ca, tls) {
            (Some(ca), true) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.pem().as_bytes().to_vec()),
                },
            ),
            _ => redis::Client::open(info),
        }
    }
}

/// `XADD` of `message` to its stream.
fn xadd(url: &reqwest::Url, message: &Message<'_>) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(&message.target);
    if let Some((approx, n)) = destination::param(url, "maxlen").and_then(|m| maxlen(&m)) {
        cmd.arg("MAXLEN");
        if approx {
            cmd.arg("~");
        }
        cmd.arg(n);
    }
    cmd.arg("*").arg("id").arg(message.id);
    if let Some(ct) = message.content_type() {
        cmd.arg("content_type").arg(ct);
    }
    for (name, value) in message.text_headers() {
        if name != "content-type" {
            cmd.arg(format!("header:{name}")).arg(value);
        }
    }
    cmd.arg("body").arg(message.body.as_ref());
    cmd
}

/// A resolver that answers with the address the SSRF guard vetted, so
/// the client connects there whatever the name resolves to now.
struct Pinned(SocketAddr);

impl redis::io::AsyncDNSResolver for Pinned {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        _host: &'b str,
        _port: u16,
    ) -> redis::RedisFuture<'a, Box<dyn Iterator<Item = SocketAddr> + Send + 'a>> {
        let addr = self.0;
        Box::pin(async move {
            Ok(Box::new(std::iter::once(addr)) as Box<dyn Iterator<Item = _> + Send>)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    #[test]
    fn the_stream_is_needed_and_maxlen_read() {
        assert!(check_url(&url(
            "redis://r:6379/0?stream=importer-events&maxlen=~1000000"
        ))
        .is_ok());
        assert!(check_url(&url("redis://r/0"))
            .unwrap_err()
            .contains("stream is needed"));
        assert!(check_url(&url("redis://r/x?stream=s"))
            .unwrap_err()
            .contains("database"));
        assert!(check_url(&url("redis://r/?stream=s&maxlen=lots")).is_err());
        assert_eq!(maxlen("~10"), Some((true, 10)));
        assert_eq!(maxlen("10"), Some((false, 10)));
    }
}
